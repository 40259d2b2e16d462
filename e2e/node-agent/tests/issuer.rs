//! The Vault issuer on the local cluster (issue 24): a real Vault v1.21.0 (`vault server -dev`
//! on the node address only, configured as seed 002's script plus the two role settings weft
//! needs) chosen with `weft ca issuer set vault`; the operator follows the ConfigMap without a
//! restart, the CSR endpoint answers Vault-signed certificates checked with openssl from
//! outside, meshed pods get them and talk over mTLS, a paused Vault fails `weft check` by
//! name and makes every revision Degraded while traffic keeps flowing, resumed it all clears,
//! and `set builtin` goes back. Then Vault's Kubernetes auth method (the operator logs in with
//! its ServiceAccount token, no Vault token in the cluster) and Vault over HTTPS with
//! `--ca-cert-secret` (a wrong CA named, the right one switching without a restart).
//! Changes mesh-wide state (the issuer): the file's tests take turns, each restores builtin.

mod support;

use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use support::ca::{request_certificate, token_of};
use support::vault::{DevVault, ROOT_TOKEN};
use support::{Cluster, Namespace, deployed, wait_for, weft};

const MINUTE: Duration = Duration::from_secs(60);
/// Vault listens on the node address (pods reach the host there) and nowhere else; one port
/// per test.
const VAULT_PORT: u16 = 18207;
const VAULT_K8S_AUTH_PORT: u16 = 18213;
const VAULT_TLS_PORT: u16 = 18215;

/// The issuer is mesh-wide: this file's tests take turns.
static MESH_WIDE: Mutex<()> = Mutex::new(());

fn mesh_wide() -> std::sync::MutexGuard<'static, ()> {
    MESH_WIDE
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Puts the builtin CA back however the test ends: the issuer is mesh-wide.
struct BackToBuiltin(&'static Cluster);

impl Drop for BackToBuiltin {
    fn drop(&mut self) {
        let _ = weft(&[
            "ca",
            "issuer",
            "set",
            "builtin",
            "--without-rotation",
            "--yes",
        ]);
        let _ = self.0.kubectl(&[
            "-n",
            "weft-system",
            "delete",
            "secret",
            "weft-vault-token",
            "weft-vault-ca",
            "--ignore-not-found",
        ]);
        // Wait (not assert: this runs while unwinding too) until the operator signs with the
        // builtin CA again, so the next test does not start from this one's Vault, which the
        // operator would keep signing with until a new issuer passes its dry signing.
        let start = std::time::Instant::now();
        while start.elapsed() < MINUTE && !issuer_status().contains("Signing:  builtin") {
            std::thread::sleep(Duration::from_millis(250));
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

/// Every operator replica runs its own issuer controller, each reading ConfigMap
/// `weft-ca-issuer` every 5 s; `weft ca issuer` shows the leader's. After the leader switched,
/// another replica's CSR endpoint may sign with the issuer before for one more period (a
/// certificate that still chains to a trusted root): wait that period out before asserting
/// who signed a new certificate.
fn replicas_follow() {
    std::thread::sleep(Duration::from_secs(7));
}

fn issuer_status() -> String {
    text(&weft(&["ca", "issuer"]))
}

#[test]
fn vault_signs_the_meshs_workload_certificates_once_chosen_and_builtin_again_after() {
    let _turn = mesh_wide();
    let c = deployed();
    let vault = DevVault::start(VAULT_PORT);
    let vault_root = vault.pki_as_seed_002();
    let _restore = BackToBuiltin(c);
    c.ok(&[
        "-n",
        "weft-system",
        "create",
        "secret",
        "generic",
        "weft-vault-token",
        &format!("--from-literal=token={ROOT_TOKEN}"),
    ]);

    let set = [
        "ca",
        "issuer",
        "set",
        "vault",
        "--address",
        &vault.address,
        "--role",
        "weft",
        "--token-secret",
        "weft-vault-token",
        // This test proves the direct switch; tests/rotation.rs the switch as a rotation.
        "--without-rotation",
    ];
    // Without --yes: says what it would do, changes nothing.
    let dry = weft(&set);
    assert!(!dry.status.success());
    assert!(
        text(&dry).contains("This sets ConfigMap weft-system/weft-ca-issuer to: vault at"),
        "{}",
        text(&dry)
    );
    assert!(issuer_status().contains("builtin"), "{}", issuer_status());
    let yes = weft(&[&set[..], &["--yes"]].concat());
    assert!(yes.status.success(), "{}", text(&yes));

    // The operator follows the ConfigMap without a restart, after a dry signing.
    // The root ConfigMaps follow within the CA-bundle controller's 2 s period.
    let status = wait_for(MINUTE, issuer_status, |s| {
        s.contains("Signing:  vault")
            && s.contains("healthy since")
            && s.contains("Trusted roots (2")
    });
    assert!(
        status.contains("CN=osm.root"),
        "Vault's root is trusted: {status}"
    );
    assert!(status.contains("Trusted roots (2"), "{status}");
    replicas_follow();

    // A pod's token gets a certificate Vault signed, checked from outside with openssl.
    let ns = c.namespace("t-issuer-vault");
    let token = token_of(&ns, "web", "weft-ca");
    let me = format!("spiffe://cluster.local/ns/{}/sa/web", ns.name);
    let answer = request_certificate(c, &token, &me, Some(3600));
    assert_eq!(answer.status, 200, "{}", answer.body);
    let response: serde_json::Value = serde_json::from_str(&answer.body).expect("JSON");
    let leaf = response["certChain"][0].as_str().expect("a leaf");
    std::fs::write(answer.dir.join("leaf.pem"), leaf).expect("leaf.pem");
    std::fs::write(answer.dir.join("vault-root.pem"), &vault_root).expect("vault-root.pem");
    let verify = Command::new("openssl")
        .args(["verify", "-CAfile", "vault-root.pem", "leaf.pem"])
        .current_dir(&answer.dir)
        .output()
        .expect("openssl");
    assert!(verify.status.success(), "{}", text(&verify));
    let shown = Command::new("openssl")
        .args([
            "x509",
            "-in",
            "leaf.pem",
            "-noout",
            "-issuer",
            "-ext",
            "subjectAltName",
        ])
        .current_dir(&answer.dir)
        .output()
        .expect("openssl");
    let shown = text(&shown);
    assert!(
        shown.contains("CN=osm.root") || shown.contains("CN = osm.root"),
        "{shown}"
    );
    assert!(shown.contains(&format!("URI:{me}")), "{shown}");
    assert!(
        !shown.contains("DNS:"),
        "the common name stays out of the SANs: {shown}"
    );
    let roots = response["roots"].as_array().expect("roots");
    assert_eq!(roots.len(), 2, "mesh root and Vault's: {roots:?}");

    // Meshed pods started now hold Vault-signed certificates, and traffic flows between them
    // over mTLS. The bookstore's proxy shows its certificate to anyone who speaks weft/1 to
    // the app port: checked from outside the pod with openssl.
    let mesh = c.namespace("t-issuer-mesh");
    assert!(weft(&["namespace", "add", &mesh.name]).status.success());
    mesh.apply(support::bookstore::APP);
    support::bookstore::rollout(&mesh);
    for _ in 0..5 {
        let body = support::bookstore::buy(&mesh, "http://bookstore/")
            .unwrap_or_else(|e| panic!("meshed bookbuyer -> bookstore under Vault: {e}"));
        assert!(!body.is_empty(), "an empty answer");
    }
    // The bookstores' proxies counted those requests as mutual TLS (the port is http).
    let stores = mesh.jsonpath("pods -l app=bookstore", "{.items[*].metadata.name}");
    let metrics: String = stores
        .split_whitespace()
        .map(|pod| mesh.proxy_metrics(pod))
        .collect();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("istio_requests_total{")
                && l.contains("reporter=\"destination\"")
                && l.contains("connection_security_policy=\"mutual_tls\"")),
        "no mutual_tls connection on the bookstores' proxies"
    );
    let store_ip = mesh.jsonpath("pods -l app=bookstore", "{.items[0].status.podIP}");
    let presented = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "openssl s_client -connect {store_ip}:8080 -alpn weft/1 -showcerts </dev/null 2>/dev/null \
             | openssl x509 -noout -issuer -ext subjectAltName"
        ))
        .output()
        .expect("openssl s_client");
    let presented = text(&presented);
    assert!(
        presented.contains("osm.root"),
        "the bookstore's proxy presents a Vault-signed certificate: {presented}"
    );
    assert!(
        presented.contains(&format!(
            "URI:spiffe://cluster.local/ns/{}/sa/default",
            mesh.name
        )),
        "{presented}"
    );

    // Vault paused: weft check fails naming Vault; resumed: it passes again.
    vault.signal("-STOP");
    let check = wait_for(
        MINUTE,
        || text(&weft(&["check"])),
        |out| {
            out.lines().any(|l| {
                l.contains("issuer") && l.contains("Vault at") && l.contains("unavailable")
            })
        },
    );
    assert!(check.contains(&vault.address), "{check}");
    // Every revision says so, with the reason and Vault's name.
    let degraded = |want: &'static str| {
        move |conditions: &str| {
            !conditions.trim().is_empty() && conditions.lines().all(|l| l.contains(want))
        }
    };
    let revisions = || {
        c.ok(&[
            "-n",
            "weft-system",
            "get",
            "meshconfigs",
            "-o",
            "jsonpath={range .items[*]}{.metadata.name} {.status.conditions[?(@.type==\"Degraded\")].status} {.status.conditions[?(@.type==\"Degraded\")].reason} {.status.conditions[?(@.type==\"Degraded\")].message}{\"\\n\"}{end}",
        ])
        .to_string()
    };
    let seen = wait_for(MINUTE, revisions, degraded("True IssuerUnavailable"));
    assert!(seen.contains("Vault at"), "{seen}");
    // A Warning Event on the mesh CA's Secret names Vault.
    let events = wait_for(
        MINUTE,
        || {
            c.ok(&[
                "-n",
                "weft-system",
                "get",
                "events",
                "--field-selector",
                "involvedObject.name=weft-ca,type=Warning",
                "-o",
                "jsonpath={range .items[*]}{.reason} {.message}{\"\\n\"}{end}",
            ])
            .to_string()
        },
        |e| e.lines().any(|l| l.contains("Vault at")),
    );
    assert!(events.contains(&vault.address), "{events}");
    // A new meshed pod waits: its proxy gets no certificate while Vault is paused.
    mesh.ok(&["scale", "deployment/bookstore", "--replicas=3"]);
    std::thread::sleep(Duration::from_secs(15));
    let ready = mesh.ok(&[
        "get",
        "deployment/bookstore",
        "-o",
        "jsonpath={.status.readyReplicas}",
    ]);
    assert_eq!(ready.trim(), "2", "a pod became ready with Vault paused");
    // Issued certificates keep working: the meshed client is still answered.
    support::bookstore::buy(&mesh, "http://bookstore/")
        .unwrap_or_else(|e| panic!("existing traffic while Vault is paused: {e}"));
    vault.signal("-CONT");
    let waited = std::time::Instant::now();
    wait_for(MINUTE, issuer_status, |s| s.contains("healthy since"));
    wait_for(MINUTE, revisions, degraded("False CaHealthy"));
    // Resumed: the waiting pod gets its certificate and becomes ready, no restart.
    support::bookstore::rollout(&mesh);
    eprintln!(
        "the third bookstore was ready {:?} after SIGCONT",
        waited.elapsed()
    );
    wait_for(
        MINUTE,
        || bookstores_present(&mesh).join("\n"),
        |shown| shown.matches("osm.root").count() == 3,
    );

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
    replicas_follow();
    let again = request_certificate(c, &token, &me, Some(3600));
    assert_eq!(again.status, 200, "{}", again.body);
    let response: serde_json::Value = serde_json::from_str(&again.body).expect("JSON");
    std::fs::write(
        again.dir.join("leaf.pem"),
        response["certChain"][0].as_str().expect("a leaf"),
    )
    .expect("leaf.pem");
    let verify = Command::new("openssl")
        .args(["verify", "-CAfile", "root.pem", "leaf.pem"])
        .current_dir(&again.dir)
        .output()
        .expect("openssl");
    assert!(verify.status.success(), "{}", text(&verify));
}

/// What each bookstore proxy that answers presents to a weft/1 client (its certificate's
/// issuer and SANs), seen from outside the pod with openssl.
fn bookstores_present(mesh: &Namespace) -> Vec<String> {
    let ips = mesh.jsonpath("pods -l app=bookstore", "{.items[*].status.podIP}");
    ips.split_whitespace()
        .map(|ip| {
            let out = Command::new("bash")
                .arg("-c")
                .arg(format!(
                    "timeout 5 openssl s_client -connect {ip}:8080 -alpn weft/1 -showcerts </dev/null 2>/dev/null \
                     | openssl x509 -noout -issuer -ext subjectAltName 2>/dev/null"
                ))
                .output()
                .expect("openssl s_client");
            String::from_utf8_lossy(&out.stdout).into_owned()
        })
        .filter(|shown| !shown.trim().is_empty())
        .collect()
}

/// Every answering bookstore proxy (at least two) presents a certificate from Vault's root
/// `osm.root` for the namespace's default ServiceAccount.
fn all_bookstores_vault_signed(mesh: &Namespace) -> bool {
    let shown = bookstores_present(mesh);
    let me = format!("URI:spiffe://cluster.local/ns/{}/sa/default", mesh.name);
    shown.len() >= 2
        && shown
            .iter()
            .all(|s| s.contains("osm.root") && s.contains(&me))
}

/// The issuer line of `weft check`.
fn check_issuer_line() -> String {
    text(&weft(&["check"]))
        .lines()
        .filter(|l| l.contains(" issuer: "))
        .collect::<Vec<_>>()
        .join("\n")
}

fn revisions_degraded(c: &Cluster) -> String {
    c.ok(&[
        "-n",
        "weft-system",
        "get",
        "meshconfigs",
        "-o",
        "jsonpath={range .items[*]}{.metadata.name} {.status.conditions[?(@.type==\"Degraded\")].status} {.status.conditions[?(@.type==\"Degraded\")].reason} {.status.conditions[?(@.type==\"Degraded\")].message}{\"\\n\"}{end}",
    ])
    .to_string()
}

fn buy_n(mesh: &Namespace, n: usize, what: &str) {
    for _ in 0..n {
        let body = support::bookstore::buy(mesh, "http://bookstore/")
            .unwrap_or_else(|e| panic!("meshed bookbuyer -> bookstore {what}: {e}"));
        assert!(!body.is_empty(), "an empty answer {what}");
    }
}

/// Vault's Kubernetes auth method (issue 24, `--auth-role`): no Vault token anywhere in the
/// cluster; the operator logs in with its own projected ServiceAccount token, which Vault
/// checks with a TokenReview against the local API server (the JWT as its own reviewer, so
/// the operator needs only its existing `tokenreviews` grant). A role not yet bound is named
/// by `weft check` while the builtin CA keeps signing; once bound, the mesh converges onto
/// Vault without a restart and new meshed pods talk with Vault-signed certificates.
#[test]
fn vault_kubernetes_auth_logs_the_operator_in_with_its_service_account_and_signs_the_mesh() {
    let _turn = mesh_wide();
    let c = deployed();
    let vault = DevVault::start(VAULT_K8S_AUTH_PORT);
    vault.pki_as_seed_002();
    vault.kubernetes_auth();
    let _restore = BackToBuiltin(c);
    // No token Secret: the login is the only credential.
    c.ok(&[
        "-n",
        "weft-system",
        "delete",
        "secret",
        "weft-vault-token",
        "--ignore-not-found",
    ]);

    let set = weft(&[
        "ca",
        "issuer",
        "set",
        "vault",
        "--address",
        &vault.address,
        "--role",
        "weft",
        "--auth-role",
        "weft-operator",
        "--without-rotation",
        "--yes",
    ]);
    assert!(set.status.success(), "{}", text(&set));

    // Vault's role weft-operator does not exist yet: its refusal is named, builtin keeps signing.
    let line = wait_for(MINUTE, check_issuer_line, |l| {
        l.contains("Kubernetes auth at auth/kubernetes refused role weft-operator")
    });
    assert!(line.contains("weft-operator in weft-system"), "{line}");
    eprintln!("role not bound yet: {line}");
    assert!(
        issuer_status().contains("Signing:  builtin"),
        "{}",
        issuer_status()
    );

    // Bound: the next pass logs in and switches, no restart.
    vault.bind_operator("weft-operator");
    let status = wait_for(2 * MINUTE, issuer_status, |s| {
        s.contains("Signing:  vault") && s.contains("healthy since")
    });
    assert!(status.contains("CN=osm.root"), "{status}");
    let line = check_issuer_line();
    assert!(line.contains("dry signing passed"), "{line}");
    replicas_follow();
    eprintln!("role bound: {line}");

    // Vault holds a token from that login: auth/kubernetes, ServiceAccount weft-operator.
    let accessors: Vec<String> =
        serde_json::from_str(&vault.must(&["list", "-format=json", "auth/token/accessors"]))
            .expect("accessors JSON");
    let logins: Vec<String> = accessors
        .iter()
        .filter_map(|a| {
            vault
                .cli(&["token", "lookup", "-format=json", "-accessor", a])
                .ok()
        })
        .filter(|t| t.contains("auth/kubernetes/login"))
        .collect();
    assert!(
        logins.iter().any(
            |t| t.contains("\"service_account_name\": \"weft-operator\"")
                && t.contains("\"service_account_namespace\": \"weft-system\"")
        ),
        "no Vault token from the operator's Kubernetes login: {logins:?}"
    );

    // Meshed pods started now hold Vault-signed certificates and talk over mTLS.
    let mesh = c.namespace("t-issuer-k8s-auth");
    assert!(weft(&["namespace", "add", &mesh.name]).status.success());
    mesh.apply(support::bookstore::APP);
    support::bookstore::rollout(&mesh);
    wait_for(
        MINUTE,
        || bookstores_present(&mesh).join("\n"),
        |_| all_bookstores_vault_signed(&mesh),
    );
    buy_n(&mesh, 5, "under Vault's Kubernetes auth");

    // The operator's metrics count Vault's signings (both replicas serve the CSR endpoint).
    let pods = c.ok(&[
        "-n",
        "weft-system",
        "get",
        "pods",
        "-l",
        "app.kubernetes.io/name=weft-operator",
        "-o",
        "jsonpath={.items[*].metadata.name}",
    ]);
    let issued: f64 = pods
        .split_whitespace()
        .filter_map(|pod| {
            let out = c.kubectl(&[
                "get",
                "--raw",
                &format!("/api/v1/namespaces/weft-system/pods/{pod}:15014/proxy/metrics"),
            ]);
            out.status
                .success()
                .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
        })
        .flat_map(|m| {
            m.lines()
                .filter(|l| {
                    l.starts_with("weft_issuer_requests_total{")
                        && l.contains("issuer=\"vault\"")
                        && l.contains("outcome=\"issued\"")
                })
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .collect::<Vec<_>>()
        })
        .sum();
    assert!(
        issued >= 3.0,
        "weft_issuer_requests_total{{issuer=vault,outcome=issued}} is {issued} over {pods}"
    );
    eprintln!("operator metrics: {issued} certificates issued by Vault");
}

/// HTTPS to Vault with `--ca-cert-secret` (issue 24): a real Vault serving TLS
/// (`-dev-tls`, its certificate for the node address). A Secret holding the wrong CA is
/// named by `weft check` and in every revision's Degraded condition while the builtin CA
/// keeps signing and meshed traffic keeps flowing; the right CA in the same Secret switches
/// the mesh to Vault without a restart, and restarted pods present Vault-signed certificates
/// to their builtin-signed clients.
#[test]
fn vault_over_https_trusts_the_ca_cert_secret_and_names_a_wrong_one() {
    let _turn = mesh_wide();
    let c = deployed();
    let certs = std::env::temp_dir().join(format!("weft-e2e-vault-tls-{}", std::process::id()));
    let vault = DevVault::start_tls(VAULT_TLS_PORT, &certs);
    assert!(vault.address.starts_with("https://"), "{}", vault.address);
    vault.pki_as_seed_002();
    let vault_ca = vault.ca_pem.clone().expect("-dev-tls wrote its CA");
    let _restore = BackToBuiltin(c);
    c.ok(&[
        "-n",
        "weft-system",
        "create",
        "secret",
        "generic",
        "weft-vault-token",
        &format!("--from-literal=token={ROOT_TOKEN}"),
    ]);
    // The wrong CA: the cluster's own, which never signed Vault's certificate.
    let wrong = support::repo_root().join("e2e/.cluster/pki/ca.crt");
    let ca_secret = |ca: &std::path::Path| {
        c.ok(&[
            "-n",
            "weft-system",
            "delete",
            "secret",
            "weft-vault-ca",
            "--ignore-not-found",
        ]);
        c.ok(&[
            "-n",
            "weft-system",
            "create",
            "secret",
            "generic",
            "weft-vault-ca",
            &format!("--from-file=ca.crt={}", ca.display()),
        ]);
    };
    ca_secret(&wrong);

    // Meshed traffic under the builtin CA first.
    let mesh = c.namespace("t-issuer-tls");
    assert!(weft(&["namespace", "add", &mesh.name]).status.success());
    mesh.apply(support::bookstore::APP);
    support::bookstore::rollout(&mesh);
    buy_n(&mesh, 2, "under the builtin CA");

    let set = weft(&[
        "ca",
        "issuer",
        "set",
        "vault",
        "--address",
        &vault.address,
        "--role",
        "weft",
        "--token-secret",
        "weft-vault-token",
        "--ca-cert-secret",
        "weft-vault-ca",
        "--without-rotation",
        "--yes",
    ]);
    assert!(set.status.success(), "{}", text(&set));
    let line = wait_for(MINUTE, check_issuer_line, |l| {
        l.contains("TLS to") && l.contains("weft-system/weft-vault-ca")
    });
    assert!(line.contains(&vault.address), "{line}");
    eprintln!("wrong CA: {line}");
    let seen = wait_for(
        MINUTE,
        || revisions_degraded(c),
        |r| {
            !r.trim().is_empty()
                && r.lines()
                    .all(|l| l.contains("True IssuerUnavailable") && l.contains("weft-vault-ca"))
        },
    );
    assert!(seen.contains("TLS to"), "{seen}");
    let status = issuer_status();
    assert!(
        status.contains("Signing:  builtin") && status.contains("UNHEALTHY"),
        "{status}"
    );
    // No proxy lost its certificate: meshed traffic flows while the CA is wrong.
    buy_n(&mesh, 3, "while Vault's CA is wrong");

    // The right CA in the same Secret: the operator re-reads it and switches.
    ca_secret(&vault_ca);
    wait_for(MINUTE, issuer_status, |s| {
        s.contains("Signing:  vault") && s.contains("healthy since") && s.contains("CN=osm.root")
    });
    wait_for(
        MINUTE,
        || revisions_degraded(c),
        |r| !r.trim().is_empty() && r.lines().all(|l| l.contains("False CaHealthy")),
    );
    replicas_follow();
    // Restarted bookstores get Vault-signed certificates over HTTPS; the builtin-signed
    // bookbuyer still reaches them (both roots are trusted).
    mesh.ok(&["rollout", "restart", "deployment/bookstore"]);
    support::bookstore::rollout(&mesh);
    wait_for(
        2 * MINUTE,
        || bookstores_present(&mesh).join("\n"),
        |_| all_bookstores_vault_signed(&mesh),
    );
    buy_n(&mesh, 5, "Vault-signed over HTTPS");
    eprintln!("right CA: {}", check_issuer_line());
    let _ = std::fs::remove_dir_all(&certs);
}

/// Where the Vault of the renewal test listens.
const VAULT_RENEWAL_PORT: u16 = 18217;

/// The renewal test's mesh: a server whose proxy asks for three-minute certificates (it renews
/// 81-99 s after each: half the lifetime, ±10 %), and a meshed client sending it a request every 200 ms, each a
/// new connection (a new mTLS handshake), each line `<unix seconds> ok|FAIL`.
const SHORT_LIVED: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: store
  labels: {app: store}
  annotations: {proxy.weft.dev/cert-validity: 180s}
spec:
  containers:
  - name: store
    image: weft.dev/echo:dev
    ports: [{containerPort: 8080, name: http}]
    env: [{name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}]
    readinessProbe: {httpGet: {path: /healthz, port: 8080}, periodSeconds: 1}
---
apiVersion: v1
kind: Service
metadata: {name: store}
spec:
  selector: {app: store}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Pod
metadata: {name: loadgen, labels: {app: loadgen}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: loadgen
    image: busybox
    command: [sh, -c, "while true; do if timeout 10 wget -qO- http://store/ >/dev/null; then echo \"$(date +%s) ok\"; else echo \"$(date +%s) FAIL\"; fi; sleep 0.2; done"]
"#;

/// The certificate a proxy presents to a weft/1 client, seen from outside with openssl.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Presented {
    serial: String,
    not_after: i64,
    issuer: String,
}

fn presented(ip: &str) -> Option<Presented> {
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "leaf=$(timeout 5 openssl s_client -connect {ip}:8080 -alpn weft/1 </dev/null 2>/dev/null | openssl x509 2>/dev/null) \
             && [ -n \"$leaf\" ] \
             && echo \"$leaf\" | openssl x509 -noout -serial -issuer \
             && date -u -d \"$(echo \"$leaf\" | openssl x509 -noout -enddate | cut -d= -f2)\" +notAfter=%s"
        ))
        .output()
        .ok()?;
    let shown = String::from_utf8_lossy(&out.stdout).into_owned();
    let field = |key: &str| {
        shown
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .map(|v| v.trim().to_string())
    };
    Some(Presented {
        serial: field("serial=")?,
        issuer: field("issuer=")?,
        not_after: field("notAfter=")?.parse().ok()?,
    })
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The loadgen's answers between `from` and `to` (unix seconds): (ok, the failed lines).
fn answers(mesh: &Namespace, from: i64, to: i64) -> (usize, Vec<String>) {
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

/// The store proxy's failed certificate requests, as logged (`retry_in_ms` is its backoff).
fn failed_renewals(mesh: &Namespace) -> Vec<String> {
    mesh.ok(&["logs", "store", "-c", "weft-proxy"])
        .lines()
        .filter(|l| l.contains("certificate request failed; retrying"))
        .map(String::from)
        .collect()
}

fn retry_in_ms(line: &str) -> Option<u64> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("retry_in_ms="))?
        .parse()
        .ok()
}

/// The operator pods and their restart counts: a restart of the operator would show here.
fn operator_pods(c: &Cluster) -> String {
    c.ok(&[
        "-n",
        "weft-system",
        "get",
        "pods",
        "-l",
        "app.kubernetes.io/name=weft-operator",
        "-o",
        "jsonpath={range .items[*]}{.metadata.name} {.status.containerStatuses[*].restartCount}{\"\\n\"}{end}",
    ])
}

/// A renewal that spans a Vault outage (issue 24, "Vault slow or down"): the store's proxy
/// holds three-minute Vault-signed certificates; right after one renewal Vault is paused
/// (SIGSTOP), so the next renewal falls in the outage. The proxy keeps presenting its working
/// certificate and the meshed client's requests keep being answered; its renewals fail with
/// the operator's 503 naming Vault and are retried with a doubling backoff; once Vault is
/// continued, the next retry gets a fresh Vault-signed certificate, before the old one expires,
/// without a restart of the proxy or the operator. No request fails throughout.
#[test]
fn a_renewal_during_a_vault_outage_keeps_the_working_certificate_and_retries_until_vault_is_back() {
    let _turn = mesh_wide();
    let c = deployed();
    let vault = DevVault::start(VAULT_RENEWAL_PORT);
    vault.pki_as_seed_002();
    let _restore = BackToBuiltin(c);
    c.ok(&[
        "-n",
        "weft-system",
        "create",
        "secret",
        "generic",
        "weft-vault-token",
        &format!("--from-literal=token={ROOT_TOKEN}"),
    ]);
    let set = weft(&[
        "ca",
        "issuer",
        "set",
        "vault",
        "--address",
        &vault.address,
        "--role",
        "weft",
        "--token-secret",
        "weft-vault-token",
        "--without-rotation",
        "--yes",
    ]);
    assert!(set.status.success(), "{}", text(&set));
    wait_for(MINUTE, issuer_status, |s| {
        s.contains("Signing:  vault") && s.contains("healthy since")
    });
    replicas_follow();
    let operators = operator_pods(c);

    let mesh = c.namespace("t-issuer-renew");
    assert!(weft(&["namespace", "add", &mesh.name]).status.success());
    mesh.apply(SHORT_LIVED);
    for pod in ["pod/store", "pod/loadgen"] {
        mesh.ok(&["wait", "--for=condition=Ready", pod, "--timeout=180s"]);
    }
    wait_for(
        MINUTE,
        || mesh.ok(&["logs", "loadgen", "-c", "loadgen", "--tail=5"]),
        |log| log.lines().filter(|l| l.ends_with(" ok")).count() >= 5,
    );
    let started = unix_now();
    let ip = mesh.jsonpath("pod store", "{.status.podIP}");
    let show = |p: &Option<Presented>| format!("{p:?}");
    let first = wait_for(MINUTE, || show(&presented(&ip)), |s| s.contains("osm.root"));
    let first = presented(&ip).unwrap_or_else(|| panic!("{first}"));

    // Wait for a renewal: the next one is then 81-99 s away, its certificate good for 180 s.
    let renewed = wait_for(
        Duration::from_secs(150),
        || show(&presented(&ip)),
        |s| s.contains("osm.root") && !s.contains(&format!("serial: \"{}\"", first.serial)),
    );
    let working = presented(&ip).unwrap_or_else(|| panic!("{renewed}"));
    assert!(
        working.not_after > first.not_after,
        "{working:?} after {first:?}"
    );
    let failures_before = failed_renewals(&mesh).len();
    vault.signal("-STOP");
    let paused_at = unix_now();
    eprintln!(
        "Vault paused; the store's certificate {} expires in {} s",
        working.serial,
        working.not_after - paused_at
    );

    // The renewal falls in the outage: it fails and is retried with a growing backoff, while the
    // proxy presents its working certificate all along.
    let limit = Duration::from_secs((working.not_after - paused_at - 30).max(1) as u64);
    let mut seen_while_paused = Vec::new();
    let retries = wait_for(
        limit,
        || {
            if let Some(p) = presented(&ip) {
                seen_while_paused.push(p);
            }
            failed_renewals(&mesh)[failures_before..].join("\n")
        },
        |lines| lines.lines().count() >= 3,
    );
    eprintln!("renewals during the outage:\n{retries}");
    assert!(
        seen_while_paused.iter().all(|p| *p == working) && !seen_while_paused.is_empty(),
        "the proxy changed or lost its certificate while Vault was paused: {seen_while_paused:?}"
    );
    let delays: Vec<u64> = retries.lines().filter_map(retry_in_ms).collect();
    assert_eq!(delays.len(), retries.lines().count(), "{retries}");
    assert!(
        delays.windows(2).all(|w| w[1] == (w[0] * 2).min(30_000)) && delays[0] <= 1000,
        "the retries do not back off by doubling: {delays:?}"
    );
    assert!(
        retries
            .lines()
            .all(|l| l.contains("503") && l.contains("Vault at")),
        "each failed renewal names Vault: {retries}"
    );
    assert!(
        unix_now() < working.not_after,
        "the certificate expired during the test's outage"
    );

    // Vault back: the next retry renews, before the working certificate expires.
    vault.signal("-CONT");
    let resumed = Instant::now();
    let fresh = wait_for(
        Duration::from_secs(60),
        || show(&presented(&ip)),
        |s| s.contains("osm.root") && !s.contains(&format!("serial: \"{}\"", working.serial)),
    );
    let renewed_at = unix_now();
    let fresh = presented(&ip).unwrap_or_else(|| panic!("{fresh}"));
    eprintln!(
        "renewed {:.1} s after SIGCONT, {} s before the old certificate expired: {fresh:?}",
        resumed.elapsed().as_secs_f64(),
        working.not_after - renewed_at
    );
    assert!(renewed_at < working.not_after, "renewed only after expiry");
    assert!(fresh.not_after > working.not_after, "{fresh:?}");
    assert!(fresh.issuer.contains("osm.root"), "{fresh:?}");

    // Nothing was restarted: the proxy, and the operator.
    let restarts = mesh.jsonpath(
        "pod store",
        "{.status.initContainerStatuses[*].restartCount} {.status.containerStatuses[*].restartCount}",
    );
    assert!(
        restarts.split_whitespace().all(|n| n == "0"),
        "restart counts of store's containers: {restarts}"
    );
    assert_eq!(operator_pods(c), operators, "the operator was restarted");

    // No request failed, from before the outage to after the renewal.
    std::thread::sleep(Duration::from_secs(3));
    let (ok, failed) = answers(&mesh, started, renewed_at + 3);
    eprintln!(
        "requests from before the outage to after the renewal ({} s): {ok} ok, {} failed",
        renewed_at + 3 - started,
        failed.len()
    );
    assert!(failed.is_empty(), "failed requests: {failed:?}");
    assert!(ok as i64 >= renewed_at - started, "only {ok} requests");
}

/// Where the Vault of the misconfiguration test listens.
const VAULT_MISCONFIGURED_PORT: u16 = 18219;

/// Bad input of issue 24 on the cluster: a wrong Vault token, a PKI role that does not exist,
/// and a role that refuses URI SANs, each chosen with `weft ca issuer set vault
/// --without-rotation --yes` under steady meshed traffic. Each is named by `weft check`'s
/// issuer line with its fix and by every revision's `Degraded=True IssuerUnavailable`
/// condition; the builtin CA keeps signing (`weft ca issuer`: builtin, configured vault,
/// UNHEALTHY), so the store's proxy, renewing its one-minute certificate meanwhile, keeps a
/// working certificate from the mesh root and no request fails. Fixed, Vault signs.
#[test]
fn each_misconfigured_vault_is_named_while_proxies_keep_renewing_from_the_builtin_ca() {
    let _turn = mesh_wide();
    let c = deployed();
    let vault = DevVault::start(VAULT_MISCONFIGURED_PORT);
    vault.pki_as_seed_002();
    // Seed 002's role with P-256 keys allowed but no URI SANs.
    vault.must(&[
        "write",
        "pki/roles/nouri",
        "allow_any_name=true",
        "allow_subdomains=true",
        "key_type=any",
    ]);
    let _restore = BackToBuiltin(c);
    c.ok(&[
        "-n",
        "weft-system",
        "create",
        "secret",
        "generic",
        "weft-vault-token",
        "--from-literal=token=not-a-vault-token",
    ]);
    let mesh_root = support::ca::root_pem(c);
    let mesh = c.namespace("t-issuer-misconfigured");
    assert!(weft(&["namespace", "add", &mesh.name]).status.success());
    mesh.apply(&SHORT_LIVED.replace("cert-validity: 180s", "cert-validity: 60s"));
    for pod in ["pod/store", "pod/loadgen"] {
        mesh.ok(&["wait", "--for=condition=Ready", pod, "--timeout=180s"]);
    }
    wait_for(
        MINUTE,
        || mesh.ok(&["logs", "loadgen", "-c", "loadgen", "--tail=5"]),
        |log| log.lines().filter(|l| l.ends_with(" ok")).count() >= 5,
    );
    let started = unix_now();
    let ip = mesh.jsonpath("pod store", "{.status.podIP}");
    let first = wait_for(
        MINUTE,
        || format!("{:?}", presented(&ip)),
        |s| s.starts_with("Some"),
    );
    let first = presented(&ip).unwrap_or_else(|| panic!("{first}"));
    let token = token_of(&mesh, "web", "weft-ca");
    let me = format!("spiffe://cluster.local/ns/{}/sa/web", mesh.name);

    let cases: [(&str, &str, &[&str]); 3] = [
        (
            "a wrong token",
            "weft",
            &["permission denied", "Secret weft-system/weft-vault-token"],
        ),
        (
            "a role that does not exist",
            "nope",
            &["unknown role", "vault write pki/roles/nope"],
        ),
        (
            "a role that refuses URI SANs",
            "nouri",
            &[
                "URI Subject Alternative Names",
                "vault write pki/roles/nouri allowed_uri_sans=\"spiffe://cluster.local/*\"",
            ],
        ),
    ];
    for (what, role, named) in cases {
        if role != "weft" {
            // The right token from here on: the role is what is wrong.
            c.ok(&[
                "-n",
                "weft-system",
                "patch",
                "secret",
                "weft-vault-token",
                "--type=merge",
                "-p",
                &format!("{{\"stringData\":{{\"token\":\"{ROOT_TOKEN}\"}}}}"),
            ]);
        }
        let set = weft(&[
            "ca",
            "issuer",
            "set",
            "vault",
            "--address",
            &vault.address,
            "--role",
            role,
            "--token-secret",
            "weft-vault-token",
            "--without-rotation",
            "--yes",
        ]);
        assert!(set.status.success(), "{what}: {}", text(&set));
        let line = wait_for(MINUTE, check_issuer_line, |l| {
            named.iter().all(|n| l.contains(n))
        });
        eprintln!("{what}: {line}");
        let seen = wait_for(
            MINUTE,
            || revisions_degraded(c),
            |r| {
                !r.trim().is_empty()
                    && r.lines()
                        .all(|l| l.contains("True IssuerUnavailable") && l.contains(named[1]))
            },
        );
        assert!(seen.contains("Vault at"), "{what}: {seen}");
        let status = issuer_status();
        assert!(
            status.contains("Signing:  builtin (configured: vault)")
                && status.contains("UNHEALTHY"),
            "{what}: {status}"
        );
        // A CSR now still gets a certificate, from the mesh root.
        replicas_follow();
        let answer = request_certificate(c, &token, &me, Some(3600));
        assert_eq!(answer.status, 200, "{what}: {}", answer.body);
        let response: serde_json::Value = serde_json::from_str(&answer.body).expect("JSON");
        std::fs::write(
            answer.dir.join("leaf.pem"),
            response["certChain"][0].as_str().expect("a leaf"),
        )
        .expect("leaf.pem");
        std::fs::write(answer.dir.join("mesh-root.pem"), &mesh_root).expect("mesh-root.pem");
        let verify = Command::new("openssl")
            .args(["verify", "-CAfile", "mesh-root.pem", "leaf.pem"])
            .current_dir(&answer.dir)
            .output()
            .expect("openssl");
        assert!(verify.status.success(), "{what}: {}", text(&verify));
    }

    // The store's proxy renewed its one-minute certificate during all this, from the mesh root.
    let renewed = wait_for(
        MINUTE,
        || format!("{:?}", presented(&ip)),
        |s| !s.contains(&format!("serial: \"{}\"", first.serial)) && s.starts_with("Some"),
    );
    let renewed = presented(&ip).unwrap_or_else(|| panic!("{renewed}"));
    assert_eq!(renewed.issuer, first.issuer, "{renewed:?} after {first:?}");
    assert!(!renewed.issuer.contains("osm.root"), "{renewed:?}");

    // Fixed (the seed's role as weft needs it): Vault signs, without a restart.
    let set = weft(&[
        "ca",
        "issuer",
        "set",
        "vault",
        "--address",
        &vault.address,
        "--role",
        "weft",
        "--token-secret",
        "weft-vault-token",
        "--without-rotation",
        "--yes",
    ]);
    assert!(set.status.success(), "{}", text(&set));
    wait_for(MINUTE, issuer_status, |s| {
        s.contains("Signing:  vault") && s.contains("healthy since")
    });
    wait_for(
        MINUTE,
        || revisions_degraded(c),
        |r| !r.trim().is_empty() && r.lines().all(|l| l.contains("False CaHealthy")),
    );
    let finished = unix_now();
    std::thread::sleep(Duration::from_secs(3));
    let (ok, failed) = answers(&mesh, started, finished + 3);
    eprintln!(
        "requests through the three misconfigurations ({} s): {ok} ok, {} failed",
        finished + 3 - started,
        failed.len()
    );
    assert!(failed.is_empty(), "failed requests: {failed:?}");
    assert!(ok as i64 >= finished - started, "only {ok} requests");
}
