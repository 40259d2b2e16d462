//! The mesh CA on the local cluster (issue: the mesh CA): weft installed with
//! `kubectl apply -k config/default`, then the CSR endpoint, root distribution and the
//! "never silently replace a root" rules, checked as a user would with kubectl, openssl and curl.
//! `make e2e` builds weft before running these (`make deploy` needs the binaries).

mod support;

use std::process::Command;
use std::time::Duration;

use support::ca::{expired_copy, request_certificate, root_pem, token_of};
use support::{deployed, eventually, wait_for};

const TEN_SECONDS: Duration = Duration::from_secs(10);
const MINUTE: Duration = Duration::from_secs(60);

#[test]
fn a_pod_token_gets_a_certificate_for_its_own_identity_only() {
    let c = deployed();
    let ns = c.namespace("t-csr");
    let token = token_of(&ns, "web", "weft-ca");
    let me = format!("spiffe://cluster.local/ns/{}/sa/web", ns.name);

    let ok = request_certificate(c, &token, &me, Some(3600));
    assert_eq!(ok.status, 200, "{}", ok.body);
    let response: serde_json::Value = serde_json::from_str(&ok.body).unwrap();
    let leaf = response["certChain"][0].as_str().unwrap();
    std::fs::write(ok.dir.join("leaf.pem"), leaf).unwrap();
    // The leaf verifies against the published root and names exactly the identity.
    let verify = Command::new("openssl")
        .args(["verify", "-CAfile", "root.pem", "leaf.pem"])
        .current_dir(&ok.dir)
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
    let text = Command::new("openssl")
        .args([
            "x509",
            "-in",
            "leaf.pem",
            "-noout",
            "-ext",
            "subjectAltName",
        ])
        .current_dir(&ok.dir)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&text.stdout).contains(&format!("URI:{me}")));

    let other = format!("spiffe://cluster.local/ns/{}/sa/admin", ns.name);
    let foreign = request_certificate(c, &token, &other, None);
    assert_eq!(foreign.status, 403, "{}", foreign.body);
    assert!(
        foreign.body.contains("sa/admin") && foreign.body.contains("sa/web"),
        "{}",
        foreign.body
    );

    let wrong_audience = token_of(&ns, "web", "not-weft");
    let refused = request_certificate(c, &wrong_audience, &me, None);
    assert_eq!(refused.status, 401, "{}", refused.body);

    let garbage = request_certificate(c, "not-a-token", &me, None);
    assert_eq!(garbage.status, 401, "{}", garbage.body);
}

#[test]
fn the_root_configmap_is_in_every_namespace_and_comes_back_when_deleted() {
    let c = deployed();
    let ns = c.namespace("t-root");
    let root = root_pem(c);
    let published = || {
        ns.kubectl(&[
            "get",
            "configmap",
            "weft-ca-root-cert",
            "-o",
            "jsonpath={.data.root-cert\\.pem}",
        ])
    };
    eventually(TEN_SECONDS, || {
        String::from_utf8_lossy(&published().stdout) == root
    });
    ns.ok(&["delete", "configmap", "weft-ca-root-cert"]);
    eventually(TEN_SECONDS, || {
        String::from_utf8_lossy(&published().stdout) == root
    });
    ns.ok(&[
        "patch",
        "configmap",
        "weft-ca-root-cert",
        "--type=merge",
        "-p",
        r#"{"data":{"root-cert.pem":"tampered"}}"#,
    ]);
    eventually(TEN_SECONDS, || {
        String::from_utf8_lossy(&published().stdout) == root
    });
    let system = c.kubectl(&["-n", "kube-system", "get", "configmap", "weft-ca-root-cert"]);
    assert!(!system.status.success(), "kube-system is excluded");
}

#[test]
fn a_deleted_ca_secret_is_restored_with_the_same_root() {
    let c = deployed();
    let secret = || {
        c.kubectl(&[
            "-n",
            "weft-system",
            "get",
            "secret",
            "weft-ca",
            "-o",
            "jsonpath={.data.ca\\.crt}",
        ])
    };
    let before = String::from_utf8_lossy(&wait_for_ok(secret)).into_owned();
    assert!(!before.is_empty());
    c.ok(&["-n", "weft-system", "delete", "secret", "weft-ca"]);
    eventually(TEN_SECONDS, || {
        let out = secret();
        out.status.success() && String::from_utf8_lossy(&out.stdout) == before
    });
}

fn wait_for_ok(f: impl Fn() -> std::process::Output) -> Vec<u8> {
    let mut last = Vec::new();
    eventually(MINUTE, || {
        let out = f();
        last = out.stdout;
        out.status.success() && !last.is_empty()
    });
    last
}

#[test]
fn an_expired_token_is_refused_though_its_signature_is_good() {
    let c = deployed();
    let ns = c.namespace("t-csr-expired");
    let token = token_of(&ns, "web", "weft-ca");
    let me = format!("spiffe://cluster.local/ns/{}/sa/web", ns.name);
    // The re-signing itself is sound: a copy that keeps the real expiry is still accepted...
    assert_eq!(request_certificate(c, &token, &me, None).status, 200);
    // ...and the expired copy is refused, with a message.
    let refused = request_certificate(c, &expired_copy(&token), &me, None);
    assert_eq!(refused.status, 401, "{}", refused.body);
    assert!(refused.body.contains("error"), "{}", refused.body);
}

#[test]
fn a_tampered_webhook_ca_bundle_is_put_back_within_ten_seconds() {
    let c = deployed();
    let bundle = |config: &str| {
        c.ok(&[
            "get",
            config,
            "-o",
            "jsonpath={.webhooks[0].clientConfig.caBundle}",
        ])
    };
    for config in [
        "mutatingwebhookconfiguration/weft-sidecar-injector",
        "validatingwebhookconfiguration/weft-validator",
    ] {
        let good = wait_for(MINUTE, || bundle(config), |b| !b.is_empty());
        c.ok(&[
            "patch",
            config,
            "--type=json",
            "-p",
            r#"[{"op": "replace", "path": "/webhooks/0/clientConfig/caBundle", "value": "dGFtcGVyZWQ="}]"#,
        ]);
        let started = std::time::Instant::now();
        wait_for(TEN_SECONDS, || bundle(config), |b| b == good);
        println!("{config}: caBundle restored after {:?}", started.elapsed());
    }
}
