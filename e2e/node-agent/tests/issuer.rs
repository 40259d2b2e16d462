//! The Vault issuer on the local cluster (issue 24): a real Vault v1.21.0 (`vault server -dev`
//! on the node address only, configured as seed 002's script plus the two role settings weft
//! needs) chosen with `weft ca issuer set vault`; the operator follows the ConfigMap without a
//! restart, the CSR endpoint answers Vault-signed certificates checked with openssl from
//! outside, meshed pods get them and talk over mTLS, a paused Vault fails `weft check` by
//! name and makes every revision Degraded while traffic keeps flowing, resumed it all clears,
//! and `set builtin` goes back.
//! Changes mesh-wide state (the issuer): run it alone, and it always restores builtin.

mod support;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use support::ca::{request_certificate, token_of};
use support::{Cluster, deployed, repo_root, wait_for, weft};

const MINUTE: Duration = Duration::from_secs(60);
/// The node's address (e2e/cluster/env.sh NODE_IP): pods reach the host there. Vault listens
/// on it and nowhere else.
const NODE_IP: &str = "198.18.0.1";
const VAULT_PORT: u16 = 18207;
const ROOT_TOKEN: &str = "weft-e2e-issuer-root";

struct DevVault {
    child: Child,
    bin: PathBuf,
    address: String,
}

impl DevVault {
    fn start() -> DevVault {
        let out = Command::new("bash")
            .arg(repo_root().join("e2e/scripts/install-vault.sh"))
            .stderr(Stdio::inherit())
            .output()
            .expect("install-vault.sh");
        assert!(out.status.success(), "install-vault.sh failed");
        let bin = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        let listen = format!("{NODE_IP}:{VAULT_PORT}");
        let child = Command::new(&bin)
            .args([
                "server",
                "-dev",
                &format!("-dev-listen-address={listen}"),
                &format!("-dev-root-token-id={ROOT_TOKEN}"),
            ])
            .env("HOME", std::env::temp_dir())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("vault server -dev");
        let vault = DevVault {
            child,
            bin,
            address: format!("http://{listen}"),
        };
        support::eventually(Duration::from_secs(30), || vault.cli(&["status"]).is_ok());
        vault
    }

    fn cli(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new(&self.bin)
            .args(args)
            .env("VAULT_ADDR", &self.address)
            .env("VAULT_TOKEN", ROOT_TOKEN)
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    fn must(&self, args: &[&str]) -> String {
        self.cli(args)
            .unwrap_or_else(|e| panic!("vault {}: {e}", args.join(" ")))
    }

    fn signal(&self, signal: &str) {
        let _ = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status();
    }
}

impl Drop for DevVault {
    fn drop(&mut self) {
        self.signal("-CONT");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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
            "--ignore-not-found",
        ]);
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

#[test]
fn vault_signs_the_meshs_workload_certificates_once_chosen_and_builtin_again_after() {
    let c = deployed();
    let vault = DevVault::start();
    vault.must(&["secrets", "enable", "pki"]);
    vault.must(&["secrets", "tune", "-max-lease-ttl=87600h", "pki"]);
    vault.must(&[
        "write",
        "pki/roles/weft",
        "allow_any_name=true",
        "allow_subdomains=true",
        "key_type=any",
        "allowed_uri_sans=spiffe://cluster.local/*",
    ]);
    let vault_root = vault.must(&[
        "write",
        "-field=certificate",
        "pki/root/generate/internal",
        "common_name=osm.root",
        "ttl=87600h",
    ]);
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
    // Issued certificates keep working: the meshed client is still answered.
    support::bookstore::buy(&mesh, "http://bookstore/")
        .unwrap_or_else(|e| panic!("existing traffic while Vault is paused: {e}"));
    vault.signal("-CONT");
    wait_for(MINUTE, issuer_status, |s| s.contains("healthy since"));
    wait_for(MINUTE, revisions, degraded("False CaHealthy"));

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
