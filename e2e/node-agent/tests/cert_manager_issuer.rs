//! The cert-manager issuer on the local cluster (issue 24 item 3): cert-manager's own CA issuer
//! and default approver controllers (v1.21.2, built from the Go module proxy with a hand-written
//! main: e2e/cert-manager/README.md) over its vendored CRDs sign weft's CertificateRequests.
//! A missing ca-bundle Secret and a Denied request are each named by `weft check` while the
//! builtin CA (before) or issued certificates (after) keep the mesh working; meshed pods hold
//! certificates from the CA Issuer (checked with openssl from outside the pod) and talk mTLS.
//! Changes mesh-wide state (the issuer): run it alone; it always restores builtin.

mod support;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use support::ca::{rand_suffix, request_certificate, token_of};
use support::{Cluster, deployed, repo_root, wait_for, weft};

const MINUTE: Duration = Duration::from_secs(60);
const NS: &str = "weft-system";
const ISSUER: &str = "osm-ca";
const CA_SECRET: &str = "weft-e2e-cm-ca";
const BUNDLE: &str = "osm-ca-bundle";
const CA_CN: &str = "weft-e2e cert-manager CA";

/// cert-manager's controllers as a child process; `approve`: run its default approver too.
struct CertManager {
    child: Child,
}

impl CertManager {
    fn start(c: &Cluster, approve: bool) -> CertManager {
        let out = Command::new("bash")
            .arg(repo_root().join("e2e/scripts/install-cert-manager.sh"))
            .stderr(Stdio::inherit())
            .output()
            .expect("install-cert-manager.sh");
        assert!(out.status.success(), "install-cert-manager.sh failed");
        let bin = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        let mut controllers = "certificaterequests-issuer-ca,issuers,clusterissuers".to_string();
        if approve {
            controllers.push_str(",certificaterequests-approver");
        }
        let log = std::fs::File::create(std::env::temp_dir().join("weft-e2e-cert-manager.log"))
            .expect("log file");
        let child = Command::new(bin)
            .arg("-kubeconfig")
            .arg(&c.kubeconfig)
            .args(["-namespace", NS, "-cluster-resource-namespace", NS])
            .arg(format!("-controllers={controllers}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("cert-manager-controller");
        CertManager { child }
    }
}

impl Drop for CertManager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Puts the builtin CA back and removes what the test made, however it ends.
struct Restore(&'static Cluster);

impl Drop for Restore {
    fn drop(&mut self) {
        // A switch left half-way goes back first (one in (c) finishes by itself).
        let _ = weft(&["ca", "rotate", "--abort"]);
        let _ = weft(&[
            "ca",
            "issuer",
            "set",
            "builtin",
            "--without-rotation",
            "--yes",
        ]);
        for what in [
            format!("secret/{CA_SECRET}"),
            format!("secret/{BUNDLE}"),
            format!("issuers.cert-manager.io/{ISSUER}"),
        ] {
            let _ = self
                .0
                .kubectl(&["-n", NS, "delete", &what, "--ignore-not-found"]);
        }
    }
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn issuer_status() -> String {
    text(&weft(&["ca", "issuer"]))
}

fn issuer_check_line() -> String {
    text(&weft(&["check"]))
        .lines()
        .filter(|l| l.contains("issuer"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn sh(dir: &std::path::Path, script: &str) -> String {
    let out = Command::new("bash")
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .output()
        .expect("bash");
    assert!(out.status.success(), "{script}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Denies every weft CertificateRequest nobody decided on yet, as approver-policy does when no
/// CertificateRequestPolicy allows a request (the Denied condition, on the status subresource).
fn deny_until(c: &'static Cluster, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<usize> {
    std::thread::spawn(move || {
        let mut denied = 0;
        while !stop.load(Ordering::Acquire) {
            let listed = c.ok(&[
                "-n",
                NS,
                "get",
                "certificaterequests",
                "-l",
                "app.kubernetes.io/managed-by=weft",
                "-o",
                "json",
            ]);
            let listed: serde_json::Value = serde_json::from_str(&listed).unwrap_or_default();
            let undecided: Vec<String> = listed["items"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|cr| {
                    cr["status"]["conditions"]
                        .as_array()
                        .is_none_or(|c| c.is_empty())
                })
                .filter_map(|cr| cr["metadata"]["name"].as_str().map(str::to_string))
                .collect();
            for name in &undecided {
                let patch = serde_json::json!({"status": {"conditions": [{
                    "type": "Denied", "status": "True", "reason": "weft-e2e",
                    "message": "no CertificateRequestPolicy allows this request",
                    "lastTransitionTime": "2026-12-06T12:00:00Z",
                }]}});
                let out = c.kubectl(&[
                    "-n",
                    NS,
                    "patch",
                    "certificaterequest",
                    name.as_str(),
                    "--subresource=status",
                    "--type=merge",
                    "-p",
                    &patch.to_string(),
                ]);
                if out.status.success() {
                    denied += 1;
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        denied
    })
}

/// Both tests of this file set the mesh's issuer and use the same Issuer and Secrets.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// cert-manager's CRDs, a CA of the test's own in the CA Issuer's shape (Secret tls.crt,
/// tls.key), the Issuer, and cert-manager's controllers with its approver, the Issuer Ready.
/// Returns the controllers (stopped on drop) and the CA's certificate file.
fn cert_manager_with_a_ca_issuer(c: &'static Cluster) -> (CertManager, PathBuf) {
    c.ok(&[
        "apply",
        "--server-side",
        "-f",
        repo_root()
            .join("e2e/cert-manager/crds")
            .to_str()
            .expect("path"),
    ]);
    c.ok(&[
        "wait",
        "--for=condition=Established",
        "crd/certificaterequests.cert-manager.io",
        "crd/issuers.cert-manager.io",
    ]);
    let dir = std::env::temp_dir().join(format!("weft-cm-{}", rand_suffix()));
    std::fs::create_dir_all(&dir).expect("dir");
    sh(
        &dir,
        &format!(
            "openssl ecparam -name prime256v1 -genkey -noout -out ca.key && \
             openssl req -x509 -new -key ca.key -subj '/CN={CA_CN}' -days 30 \
               -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign -out ca.crt"
        ),
    );
    let ca_crt = dir.join("ca.crt");
    c.ok(&[
        "-n",
        NS,
        "create",
        "secret",
        "tls",
        CA_SECRET,
        &format!("--cert={}", ca_crt.display()),
        &format!("--key={}", dir.join("ca.key").display()),
    ]);
    c.apply(&format!(
        "apiVersion: cert-manager.io/v1\nkind: Issuer\nmetadata: {{name: {ISSUER}, namespace: {NS}}}\nspec: {{ca: {{secretName: {CA_SECRET}}}}}\n"
    ));
    let manager = CertManager::start(c, true);
    wait_for(
        MINUTE,
        || {
            c.ok(&[
                "-n",
                NS,
                "get",
                "issuers.cert-manager.io",
                ISSUER,
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
            ])
        },
        |s| s.trim() == "True",
    );
    (manager, ca_crt)
}

/// The meshed client of the switch test: one `wget` every 200 ms, each a new connection (a
/// new mTLS handshake), each line `<unix seconds> ok|FAIL`.
const LOADGEN: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: loadgen, labels: {app: loadgen}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: loadgen
    image: busybox
    command: [sh, -c, "while true; do if timeout 10 wget -qO- http://bookstore/ >/dev/null; then echo \"$(date +%s) ok\"; else echo \"$(date +%s) FAIL\"; fi; sleep 0.2; done"]
"#;

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Whether the PEM bundle `bundle` holds the certificate `pem` (compared without line breaks).
fn holds(bundle: &str, pem: &str) -> bool {
    let flat = |p: &str| -> String { p.lines().filter(|l| !l.starts_with("-----")).collect() };
    flat(bundle).contains(&flat(pem))
}

/// Follows `weft ca rotate status` to Done or Aborted; returns the last status.
fn rotation_to_the_end() -> String {
    let mut seen = String::new();
    wait_for(
        Duration::from_secs(420),
        || {
            let status = text(&weft(&["ca", "rotate", "status"]));
            let first = status.lines().next().unwrap_or_default().to_string();
            if first != seen {
                eprintln!("{}", status.trim());
                seen = first;
            }
            status
        },
        |s| s.contains("phase Done") || s.contains("phase Aborted"),
    )
}

/// The loadgen's answers between `from` and `to`: (ok, failed lines).
fn answers(mesh: &support::Namespace, from: i64, to: i64) -> (usize, Vec<String>) {
    let log = mesh.ok(&["logs", "loadgen", "-c", "loadgen"]);
    let mut ok = 0;
    let mut failed = Vec::new();
    for line in log.lines() {
        let Some((t, r)) = line.split_once(' ') else {
            continue;
        };
        let Ok(t) = t.parse::<i64>() else { continue };
        if t < from || t > to {
            continue;
        }
        if r == "ok" {
            ok += 1;
        } else {
            failed.push(line.to_string());
        }
    }
    (ok, failed)
}

/// Whether every meshed pod of `mesh` presents a certificate `openssl verify` chains to the
/// root in `root_file` and not to `not` (PEM); Err names the first that does not.
fn every_proxy_chains_to(
    mesh: &support::Namespace,
    root_file: &std::path::Path,
    not: &str,
) -> Result<(), String> {
    let dir = std::env::temp_dir().join(format!("weft-cm-switch-{}", rand_suffix()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    std::fs::write(dir.join("not.pem"), not).map_err(|e| e.to_string())?;
    let pods = mesh.jsonpath("pods", "{range .items[*]}{.status.podIP}{\"\\n\"}{end}");
    for ip in pods.lines().filter(|l| !l.trim().is_empty()) {
        let leaf = dir.join(format!("{ip}.pem"));
        let script = format!(
            "openssl s_client -connect {ip}:8080 -alpn weft/1 </dev/null 2>/dev/null \
             | openssl x509 -out {leaf} && openssl verify -CAfile {root} {leaf} && \
             ! openssl verify -CAfile {not} {leaf} >/dev/null 2>&1",
            leaf = leaf.display(),
            root = root_file.display(),
            not = dir.join("not.pem").display(),
        );
        let out = Command::new("bash")
            .arg("-c")
            .arg(&script)
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(format!("the proxy at {ip}: {}", text(&out)));
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Item 4 of issue 24 for cert-manager: a switch from the builtin CA to cert-manager (its own
/// CA issuer and approver controllers) and back, each a root rotation under steady traffic:
/// no failed request, and at the end every proxy's certificate chains to the new signer's root
/// and not to the old, and the published roots no longer hold the old one.
#[test]
fn a_switch_to_cert_manager_and_back_is_a_rotation_with_no_failed_request() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let c = deployed();
    let _restore = Restore(c);
    let (_manager, ca_crt) = cert_manager_with_a_ca_issuer(c);
    c.ok(&[
        "-n",
        NS,
        "create",
        "secret",
        "generic",
        BUNDLE,
        &format!("--from-file=ca.crt={}", ca_crt.display()),
    ]);
    let cm_root = std::fs::read_to_string(&ca_crt).expect("ca.crt");
    let old_root = support::ca::root_pem(c);
    let mesh = c.namespace("t-issuer-cm-switch");
    assert!(weft(&["namespace", "add", &mesh.name]).status.success());
    mesh.apply(support::bookstore::APP);
    support::bookstore::rollout(&mesh);
    mesh.apply(LOADGEN);
    mesh.ok(&[
        "wait",
        "--for=condition=Ready",
        "pod/loadgen",
        "--timeout=180s",
    ]);
    wait_for(
        MINUTE,
        || mesh.ok(&["logs", "loadgen", "-c", "loadgen", "--tail=5"]),
        |log| log.lines().filter(|l| l.ends_with(" ok")).count() >= 5,
    );

    // builtin -> cert-manager, a rotation.
    let started = unix_now();
    let go = weft(&[
        "ca",
        "issuer",
        "set",
        "cert-manager",
        "--issuer",
        ISSUER,
        "--ca-bundle-secret",
        BUNDLE,
        "--renew-within",
        "10s",
        "--yes",
    ]);
    assert!(go.status.success(), "{}", text(&go));
    let last = rotation_to_the_end();
    let finished = unix_now();
    assert!(last.contains("phase Done"), "{last}");
    assert!(last.contains("Switching issuer to: cert-manager"), "{last}");
    std::thread::sleep(Duration::from_secs(5));
    let (ok, failed) = answers(&mesh, started - 2, finished + 5);
    eprintln!(
        "builtin -> cert-manager: {}s, {ok} requests answered, {} failed",
        finished - started,
        failed.len()
    );
    assert!(failed.is_empty(), "failed requests: {failed:?}");
    assert!(ok as i64 >= finished - started, "only {ok} requests");
    let status = issuer_status();
    assert!(status.contains("Signing:  cert-manager"), "{status}");
    wait_for(
        MINUTE,
        || support::ca::root_pem(c),
        |r| !holds(r, &old_root) && holds(r, &cm_root),
    );
    every_proxy_chains_to(&mesh, &ca_crt, &old_root).unwrap_or_else(|e| panic!("{e}"));
    // No CertificateRequest is left behind by the rotation's renewals.
    let left = c.ok(&[
        "-n",
        NS,
        "get",
        "certificaterequests",
        "-l",
        "app.kubernetes.io/managed-by=weft",
        "-o",
        "name",
    ]);
    assert!(left.trim().is_empty(), "left behind: {left}");

    // cert-manager -> builtin, a rotation too: cert-manager's root leaves.
    let started = unix_now();
    let back = weft(&[
        "ca",
        "issuer",
        "set",
        "builtin",
        "--renew-within",
        "10s",
        "--yes",
    ]);
    assert!(back.status.success(), "{}", text(&back));
    let last = rotation_to_the_end();
    let finished = unix_now();
    assert!(last.contains("phase Done"), "{last}");
    std::thread::sleep(Duration::from_secs(5));
    let (ok, failed) = answers(&mesh, started - 2, finished + 5);
    eprintln!(
        "cert-manager -> builtin: {}s, {ok} requests answered, {} failed",
        finished - started,
        failed.len()
    );
    assert!(failed.is_empty(), "failed requests: {failed:?}");
    let new_root = wait_for(MINUTE, || support::ca::root_pem(c), |r| !holds(r, &cm_root));
    let root_file = std::env::temp_dir().join(format!("weft-cm-builtin-{}.pem", rand_suffix()));
    std::fs::write(&root_file, &new_root).expect("write");
    every_proxy_chains_to(&mesh, &root_file, &cm_root).unwrap_or_else(|e| panic!("{e}"));
    let _ = std::fs::remove_file(&root_file);
}

#[test]
fn cert_manager_signs_the_meshs_workload_certificates_and_its_refusals_are_named() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let c = deployed();
    c.ok(&[
        "apply",
        "--server-side",
        "-f",
        repo_root()
            .join("e2e/cert-manager/crds")
            .to_str()
            .expect("path"),
    ]);
    c.ok(&[
        "wait",
        "--for=condition=Established",
        "crd/certificaterequests.cert-manager.io",
        "crd/issuers.cert-manager.io",
    ]);
    let _restore = Restore(c);

    // A CA of the test's own, in cert-manager's CA Issuer shape (tls.crt, tls.key).
    let dir = std::env::temp_dir().join(format!("weft-cm-{}", rand_suffix()));
    std::fs::create_dir_all(&dir).expect("dir");
    sh(
        &dir,
        &format!(
            "openssl ecparam -name prime256v1 -genkey -noout -out ca.key && \
             openssl req -x509 -new -key ca.key -subj '/CN={CA_CN}' -days 30 \
               -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign -out ca.crt"
        ),
    );
    let ca_crt = dir.join("ca.crt");
    c.ok(&[
        "-n",
        NS,
        "create",
        "secret",
        "tls",
        CA_SECRET,
        &format!("--cert={}", ca_crt.display()),
        &format!("--key={}", dir.join("ca.key").display()),
    ]);
    c.apply(&format!(
        "apiVersion: cert-manager.io/v1\nkind: Issuer\nmetadata: {{name: {ISSUER}, namespace: {NS}}}\nspec: {{ca: {{secretName: {CA_SECRET}}}}}\n"
    ));
    let manager = CertManager::start(c, true);
    // cert-manager's issuers controller checks the CA Secret and marks the Issuer Ready.
    wait_for(
        MINUTE,
        || {
            c.ok(&[
                "-n",
                NS,
                "get",
                "issuers.cert-manager.io",
                ISSUER,
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
            ])
        },
        |s| s.trim() == "True",
    );

    // Meshed pods with builtin certificates, so a working mesh is there to be kept.
    let mesh = c.namespace("t-issuer-cm");
    assert!(weft(&["namespace", "add", &mesh.name]).status.success());
    mesh.apply(support::bookstore::APP);
    support::bookstore::rollout(&mesh);

    // Bad input 1: the ca-bundle Secret does not exist. Without --yes nothing changes.
    let set = [
        "ca",
        "issuer",
        "set",
        "cert-manager",
        "--issuer",
        ISSUER,
        "--ca-bundle-secret",
        BUNDLE,
        // This test proves the direct switch; tests/rotation.rs the switch as a rotation.
        "--without-rotation",
    ];
    let dry = weft(&set);
    assert!(!dry.status.success());
    let said = text(&dry);
    assert!(
        said.contains("This sets ConfigMap weft-system/weft-ca-issuer to: cert-manager Issuer/osm-ca (cert-manager.io)"),
        "{said}"
    );
    assert!(
        said.contains("Secret weft-system/osm-ca-bundle does not exist yet"),
        "{said}"
    );
    assert!(issuer_status().contains("builtin"), "{}", issuer_status());
    let yes = weft(&[&set[..], &["--yes"]].concat());
    assert!(yes.status.success(), "{}", text(&yes));
    let line = wait_for(MINUTE, issuer_check_line, |l| {
        l.contains("osm-ca-bundle") && l.contains("is missing")
    });
    println!("weft check, no ca-bundle Secret: {line}");
    let status = issuer_status();
    assert!(
        status.contains("Signing:  builtin (configured: cert-manager)")
            && status.contains("UNHEALTHY"),
        "{status}"
    );
    // The mesh keeps working on the builtin CA meanwhile.
    support::bookstore::buy(&mesh, "http://bookstore/")
        .unwrap_or_else(|e| panic!("meshed traffic while the ca-bundle Secret is missing: {e}"));

    // The Secret appears (OSM's osm-ca-bundle shape): cert-manager signs from then on.
    c.ok(&[
        "-n",
        NS,
        "create",
        "secret",
        "generic",
        BUNDLE,
        &format!("--from-file=ca.crt={}", ca_crt.display()),
    ]);
    let status = wait_for(MINUTE, issuer_status, |s| {
        s.contains("Signing:  cert-manager")
            && s.contains("healthy since")
            && s.contains("Trusted roots (2")
    });
    assert!(
        status.contains(CA_CN),
        "the CA Issuer's root is trusted: {status}"
    );
    let line = issuer_check_line();
    assert!(
        line.contains("cert-manager Issuer/osm-ca") && line.contains("dry signing passed"),
        "{line}"
    );

    // A pod's token gets a certificate the CA Issuer signed, checked with openssl from outside.
    let ns = c.namespace("t-issuer-cm-csr");
    let token = token_of(&ns, "web", "weft-ca");
    let me = format!("spiffe://cluster.local/ns/{}/sa/web", ns.name);
    let answer = request_certificate(c, &token, &me, Some(3600));
    assert_eq!(answer.status, 200, "{}", answer.body);
    let response: serde_json::Value = serde_json::from_str(&answer.body).expect("JSON");
    let leaf = response["certChain"][0].as_str().expect("a leaf");
    std::fs::write(answer.dir.join("leaf.pem"), leaf).expect("leaf.pem");
    std::fs::copy(&ca_crt, answer.dir.join("cm-ca.pem")).expect("cm-ca.pem");
    sh(&answer.dir, "openssl verify -CAfile cm-ca.pem leaf.pem");
    let shown = sh(
        &answer.dir,
        "openssl x509 -in leaf.pem -noout -issuer -ext subjectAltName,extendedKeyUsage -dates",
    );
    assert!(shown.contains(CA_CN), "{shown}");
    assert!(shown.contains(&format!("URI:{me}")), "{shown}");
    assert!(!shown.contains("DNS:"), "{shown}");
    assert!(
        shown.contains("TLS Web Server Authentication")
            && shown.contains("TLS Web Client Authentication"),
        "{shown}"
    );
    println!("leaf from cert-manager: {shown}");
    assert_eq!(
        response["roots"].as_array().map(Vec::len),
        Some(2),
        "mesh root and the CA Issuer's"
    );
    // Each request is deleted once answered: none is left behind.
    wait_for(
        Duration::from_secs(10),
        || c.ok(&["-n", NS, "get", "certificaterequests", "-o", "name"]),
        |s| s.trim().is_empty(),
    );

    // Meshed pods started now hold cert-manager-signed certificates and talk over mTLS.
    c.ok(&[
        "-n",
        &mesh.name,
        "rollout",
        "restart",
        "deployment/bookstore",
        "deployment/bookbuyer",
    ]);
    support::bookstore::rollout(&mesh);
    for _ in 0..5 {
        let body = support::bookstore::buy(&mesh, "http://bookstore/")
            .unwrap_or_else(|e| panic!("meshed bookbuyer -> bookstore under cert-manager: {e}"));
        assert!(!body.is_empty(), "an empty answer");
    }
    let store_ip = mesh.jsonpath("pods -l app=bookstore", "{.items[0].status.podIP}");
    let presented = text(
        &Command::new("bash")
            .arg("-c")
            .arg(format!(
                "openssl s_client -connect {store_ip}:8080 -alpn weft/1 -showcerts </dev/null 2>/dev/null \
                 | openssl x509 -noout -issuer -ext subjectAltName"
            ))
            .output()
            .expect("openssl s_client"),
    );
    assert!(
        presented.contains(CA_CN),
        "the bookstore's proxy presents a cert-manager-signed certificate: {presented}"
    );

    // Bad input 2: requests are Denied (cert-manager without its default approver, and a policy
    // that allows nothing). A new CSR is refused naming the denial, `weft check` names it, every
    // revision is Degraded, and the proxies keep their working certificates.
    drop(manager);
    let manager = CertManager::start(c, false);
    let stop = Arc::new(AtomicBool::new(false));
    let denier = deny_until(c, stop.clone());
    let refused = request_certificate(c, &token, &me, Some(3600));
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert!(refused.body.contains("was denied"), "{}", refused.body);
    println!("CSR answer while denied: {}", refused.body);
    let line = wait_for(MINUTE, issuer_check_line, |l| {
        l.contains("was denied") && l.contains("approver-policy")
    });
    println!("weft check, denied: {line}");
    let revisions = || {
        c.ok(&[
            "-n",
            NS,
            "get",
            "meshconfigs",
            "-o",
            "jsonpath={range .items[*]}{.metadata.name} {.status.conditions[?(@.type==\"Degraded\")].status} {.status.conditions[?(@.type==\"Degraded\")].reason} {.status.conditions[?(@.type==\"Degraded\")].message}{\"\\n\"}{end}",
        ])
    };
    let degraded = |want: &'static str| {
        move |conditions: &str| {
            !conditions.trim().is_empty() && conditions.lines().all(|l| l.contains(want))
        }
    };
    let seen = wait_for(MINUTE, revisions, degraded("True IssuerUnavailable"));
    assert!(seen.contains("denied"), "{seen}");
    support::bookstore::buy(&mesh, "http://bookstore/")
        .unwrap_or_else(|e| panic!("existing traffic while cert-manager denies: {e}"));
    stop.store(true, Ordering::Release);
    let denied = denier.join().expect("denier");
    assert!(
        denied >= 2,
        "the CSR and at least one dry signing were denied: {denied}"
    );

    // The approver back: healthy again without a restart of weft.
    drop(manager);
    let _manager = CertManager::start(c, true);
    wait_for(MINUTE, issuer_status, |s| {
        s.contains("Signing:  cert-manager") && s.contains("healthy since")
    });
    wait_for(MINUTE, revisions, degraded("False CaHealthy"));
    let again = request_certificate(c, &token, &me, Some(3600));
    assert_eq!(again.status, 200, "{}", again.body);

    // Bad input 3: an Issuer that does not exist. The dry signing waits its 8 s for cert-manager
    // (the request stays Pending: "Referenced "Issuer" not found"), `weft check` names it, and
    // the issuer that signed before (osm-ca) keeps signing.
    let nope = weft(&[
        "ca",
        "issuer",
        "set",
        "cert-manager",
        "--issuer",
        "no-such-issuer",
        "--ca-bundle-secret",
        BUNDLE,
        "--yes",
    ]);
    assert!(nope.status.success(), "{}", text(&nope));
    let line = wait_for(MINUTE, issuer_check_line, |l| {
        l.contains("not found") && l.contains("create Issuer no-such-issuer")
    });
    println!("weft check, no such Issuer: {line}");
    let status = issuer_status();
    assert!(status.contains("Signing:  cert-manager"), "{status}");
    let still = request_certificate(c, &token, &me, Some(3600));
    assert_eq!(still.status, 200, "osm-ca keeps signing: {}", still.body);

    // Back to builtin: the next certificate chains to the mesh root again.
    let back = weft(&[
        "ca",
        "issuer",
        "set",
        "builtin",
        "--without-rotation",
        "--yes",
    ]);
    assert!(back.status.success(), "{}", text(&back));
    wait_for(MINUTE, issuer_status, |s| {
        s.contains("Signing:  builtin") && s.contains("Trusted roots (1")
    });
}

/// The CN of the second CA of the re-sync test (not containing [`CA_CN`]).
const SECOND_CN: &str = "weft-e2e second CA";

/// Writes `pem` into the ca-bundle Secret's `ca.crt`, in place (a patch, as a person or
/// trust-manager changes it).
fn set_ca_bundle(c: &Cluster, pem: &str) {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(pem);
    c.ok(&[
        "-n",
        NS,
        "patch",
        "secret",
        BUNDLE,
        "--type=merge",
        "-p",
        &serde_json::json!({"data": {"ca.crt": b64}}).to_string(),
    ]);
}

/// The root ConfigMap of namespace `ns`.
fn root_configmap(c: &Cluster, ns: &str) -> String {
    c.ok(&[
        "-n",
        ns,
        "get",
        "configmap",
        "weft-ca-root-cert",
        "-o",
        "jsonpath={.data.root-cert\\.pem}",
    ])
}

/// Whether each pod of `ips` accepts the client certificate `cert`: `<ip> yes|no|<error>`.
fn acceptance(ips: &[String], cert: &(String, String)) -> String {
    ips.iter()
        .map(|ip| {
            let verdict = match support::ca::proxy_accepts_client_cert(ip, &cert.0, &cert.1) {
                Ok(true) => "yes".to_string(),
                Ok(false) => "no".to_string(),
                Err(e) => e,
            };
            format!("{ip} {verdict}")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn all_say(answers: &str, word: &str) -> bool {
    !answers.is_empty() && answers.lines().all(|l| l.ends_with(&format!(" {word}")))
}

fn operator_pods(c: &Cluster) -> String {
    c.ok(&[
        "-n",
        NS,
        "get",
        "pods",
        "-l",
        "app.kubernetes.io/name=weft-operator",
        "-o",
        "jsonpath={range .items[*]}{.metadata.name} {.status.containerStatuses[*].restartCount}{\"\\n\"}{end}",
    ])
}

/// The ca-bundle Secret changed in place is followed (issue 24 item 3, "kept in sync when it
/// changes"), under steady meshed traffic, without a restart of the operator: a second root B
/// added to `ca.crt` shows in `weft ca issuer`, in the root ConfigMaps (weft-system and the
/// meshed namespace) and in every proxy's trust bundle (each accepts a client certificate of B,
/// which each refused before); taken out again, it leaves all of them (each proxy refuses B's
/// certificate again). A `ca.crt` the Issuer does not sign for (B alone while osm-ca signs with
/// A) fails the dry signing naming the Secret, and osm-ca keeps signing with A trusted. No
/// request fails throughout.
#[test]
fn a_changed_ca_bundle_is_followed_by_every_trust_bundle_without_a_restart() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let c = deployed();
    let _restore = Restore(c);
    let (_manager, ca_crt) = cert_manager_with_a_ca_issuer(c);
    let root_a = std::fs::read_to_string(&ca_crt).expect("ca.crt");
    c.ok(&[
        "-n",
        NS,
        "create",
        "secret",
        "generic",
        BUNDLE,
        &format!("--from-file=ca.crt={}", ca_crt.display()),
    ]);
    let set = weft(&[
        "ca",
        "issuer",
        "set",
        "cert-manager",
        "--issuer",
        ISSUER,
        "--ca-bundle-secret",
        BUNDLE,
        "--without-rotation",
        "--yes",
    ]);
    assert!(set.status.success(), "{}", text(&set));
    wait_for(MINUTE, issuer_status, |s| {
        s.contains("Signing:  cert-manager")
            && s.contains("healthy since")
            && s.contains("Trusted roots (2")
    });
    // Every replica reads the ConfigMap every 5 s: let the other one follow too.
    std::thread::sleep(Duration::from_secs(7));
    let operators = operator_pods(c);

    let mesh = c.namespace("t-issuer-cm-resync");
    assert!(weft(&["namespace", "add", &mesh.name]).status.success());
    mesh.apply(support::bookstore::APP);
    support::bookstore::rollout(&mesh);
    mesh.apply(LOADGEN);
    mesh.ok(&[
        "wait",
        "--for=condition=Ready",
        "pod/loadgen",
        "--timeout=180s",
    ]);
    wait_for(
        MINUTE,
        || mesh.ok(&["logs", "loadgen", "-c", "loadgen", "--tail=5"]),
        |log| log.lines().filter(|l| l.ends_with(" ok")).count() >= 5,
    );
    let started = unix_now();
    let ips: Vec<String> = mesh
        .jsonpath("pods", "{range .items[*]}{.status.podIP}{\"\\n\"}{end}")
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(String::from)
        .collect();
    assert_eq!(ips.len(), 4, "bookstore x2, bookbuyer, loadgen: {ips:?}");

    // A second CA, B, with a client certificate of its own: no proxy trusts it yet.
    let dir = std::env::temp_dir().join(format!("weft-cm-b-{}", rand_suffix()));
    std::fs::create_dir_all(&dir).expect("dir");
    sh(
        &dir,
        &format!(
            "openssl ecparam -name prime256v1 -genkey -noout -out b.key && \
             openssl req -x509 -new -key b.key -subj '/CN={SECOND_CN}' -days 30 \
               -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign -out b.crt"
        ),
    );
    let root_b = std::fs::read_to_string(dir.join("b.crt")).expect("b.crt");
    let key_b = std::fs::read_to_string(dir.join("b.key")).expect("b.key");
    let probe = support::ca::client_cert_from(
        &root_b,
        &key_b,
        &format!("spiffe://cluster.local/ns/{}/sa/probe", mesh.name),
    );
    let before = acceptance(&ips, &probe);
    assert!(
        all_say(&before, "no"),
        "B is trusted before it is in ca.crt:\n{before}"
    );

    // ca.crt = A + B: B is trusted everywhere within a pass or two, no restart.
    let clock = std::time::Instant::now();
    set_ca_bundle(c, &format!("{}\n{}", root_a.trim(), root_b.trim()));
    let status = wait_for(MINUTE, issuer_status, |s| {
        s.contains("Trusted roots (3") && s.contains(SECOND_CN) && s.contains("healthy since")
    });
    assert!(status.contains("Signing:  cert-manager"), "{status}");
    for ns in [NS, mesh.name.as_str()] {
        wait_for(
            MINUTE,
            || root_configmap(c, ns),
            |pem| holds(pem, &root_a) && holds(pem, &root_b),
        );
    }
    let trusted = wait_for(MINUTE, || acceptance(&ips, &probe), |a| all_say(a, "yes"));
    eprintln!(
        "[{:>5.1}s] B added: every proxy trusts it:\n{trusted}",
        clock.elapsed().as_secs_f64()
    );

    // ca.crt = A again: B leaves every bundle.
    let clock = std::time::Instant::now();
    set_ca_bundle(c, &root_a);
    wait_for(MINUTE, issuer_status, |s| {
        s.contains("Trusted roots (2") && !s.contains(SECOND_CN) && s.contains("healthy since")
    });
    for ns in [NS, mesh.name.as_str()] {
        wait_for(
            MINUTE,
            || root_configmap(c, ns),
            |pem| holds(pem, &root_a) && !holds(pem, &root_b),
        );
    }
    let refused = wait_for(MINUTE, || acceptance(&ips, &probe), |a| all_say(a, "no"));
    eprintln!(
        "[{:>5.1}s] B taken out: every proxy refuses it again:\n{refused}",
        clock.elapsed().as_secs_f64()
    );

    // Bad input: ca.crt = B alone while osm-ca signs with A. The dry signing's leaf does not
    // chain to B: refused, naming the Secret; osm-ca keeps signing, A stays trusted.
    set_ca_bundle(c, &root_b);
    let line = wait_for(MINUTE, issuer_check_line, |l| {
        l.contains("does not chain") && l.contains(&format!("Secret {NS}/{BUNDLE}"))
    });
    eprintln!("weft check, a ca.crt the Issuer does not sign for: {line}");
    let status = issuer_status();
    assert!(
        status.contains("Signing:  cert-manager") && status.contains("UNHEALTHY"),
        "{status}"
    );
    let token = token_of(&mesh, "web", "weft-ca");
    let me = format!("spiffe://cluster.local/ns/{}/sa/web", mesh.name);
    let answer = request_certificate(c, &token, &me, Some(3600));
    assert_eq!(answer.status, 200, "osm-ca keeps signing: {}", answer.body);
    support::bookstore::buy(&mesh, "http://bookstore/")
        .unwrap_or_else(|e| panic!("meshed traffic with a wrong ca.crt: {e}"));
    set_ca_bundle(c, &root_a);
    wait_for(MINUTE, issuer_status, |s| {
        s.contains("healthy since") && s.contains("Trusted roots (2") && !s.contains(SECOND_CN)
    });

    // No request failed, and the operator was never restarted.
    let finished = unix_now();
    std::thread::sleep(Duration::from_secs(5));
    let (ok, failed) = answers(&mesh, started, finished + 5);
    eprintln!(
        "requests while ca.crt changed ({}s): {ok} ok, {} failed",
        finished - started,
        failed.len()
    );
    assert!(failed.is_empty(), "failed requests: {failed:?}");
    assert!(ok as i64 >= finished - started, "only {ok} requests");
    assert_eq!(operator_pods(c), operators, "the operator was restarted");
    let _ = std::fs::remove_dir_all(&dir);
}
