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
use std::time::Duration;

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
