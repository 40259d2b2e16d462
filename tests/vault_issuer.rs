//! The Vault issuer against a real Vault (v1.21.0 from e2e/scripts/install-vault.sh): a `vault
//! server -dev` on loopback, configured as seed 002's script does plus the two role settings
//! weft needs, signs real weft CSRs, through `pki::issue` and through the CSR endpoint; and each
//! way a Vault setup goes wrong comes back as the error that names its fix.
//! Ignored in `make unit` (a cold Vault build takes ~7 minutes): `make e2e-issuers` runs it.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch;
use weft::pki::{
    self, Issuer, IssuerError, IssuerKind, VaultAuth, VaultConfig, VaultCredentials, VaultIssuer,
    WorkloadCsr, WorkloadKey, certificates_from_pem, spiffe_id_of, verify_chain,
};

const ROOT_TOKEN: &str = "weft-e2e-root-token";
const TRUST_DOMAIN: &str = "cluster.local";
const WEB: &str = "spiffe://cluster.local/ns/pets/sa/web";
const TTL: Duration = Duration::from_secs(3600);

/// A `vault server -dev` on 127.0.0.1 (loopback only), killed when dropped.
struct DevVault {
    child: Child,
    bin: PathBuf,
    address: String,
}

impl DevVault {
    fn start() -> DevVault {
        let bin = vault_binary();
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free loopback port")
            .port();
        let listen = format!("127.0.0.1:{port}");
        let child = Command::new(&bin)
            .args([
                "server",
                "-dev",
                &format!("-dev-listen-address={listen}"),
                &format!("-dev-root-token-id={ROOT_TOKEN}"),
            ])
            // The dev server writes the root token here unless told otherwise.
            .env("HOME", std::env::temp_dir())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("vault server -dev starts");
        let vault = DevVault {
            child,
            bin,
            address: format!("http://{listen}"),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while vault.cli(&["status"]).is_err() {
            assert!(Instant::now() < deadline, "vault -dev not up in 30 s");
            std::thread::sleep(Duration::from_millis(200));
        }
        vault
    }

    /// Runs the vault CLI against this server as root; stdout, or stderr as the error.
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

    /// Seed 002's script, then role `weft` as weft needs it, and a token whose policy allows
    /// only signing with that role. Returns Vault's root (PEM) and that token.
    fn configure_as_seed_002(&self) -> (String, String) {
        self.must(&["secrets", "enable", "pki"]);
        self.must(&["secrets", "tune", "-max-lease-ttl=87600h", "pki"]);
        self.must(&[
            "write",
            "pki/config/urls",
            "issuing_certificates=",
            "crl_distribution_points=",
        ]);
        // Seed 002's role as written, which refuses weft's CSRs (tested below), plus the two
        // settings weft needs: P-256 keys and SPIFFE URI SANs.
        self.must(&[
            "write",
            "pki/roles/weft",
            "allow_any_name=true",
            "allow_subdomains=true",
            "key_type=any",
            "allowed_uri_sans=spiffe://cluster.local/*",
        ]);
        let root = self.must(&[
            "write",
            "-field=certificate",
            "pki/root/generate/internal",
            "common_name=osm.root",
            "ttl=87600h",
        ]);
        // One file per Vault: this file's tests run in parallel in one process, and one
        // removing a shared name raced another's `policy write`.
        let port = self.address.rsplit(':').next().unwrap_or("0");
        let policy = std::env::temp_dir().join(format!(
            "weft-vault-policy-{}-{port}.hcl",
            std::process::id()
        ));
        std::fs::write(
            &policy,
            "path \"pki/sign/weft\" { capabilities = [\"update\"] }\n",
        )
        .expect("policy file");
        self.must(&[
            "policy",
            "write",
            "weft-issuer",
            &policy.display().to_string(),
        ]);
        let _ = std::fs::remove_file(&policy);
        let token = self.must(&["token", "create", "-policy=weft-issuer", "-field=token"]);
        (root, token.trim().to_string())
    }

    fn config(&self, role: &str) -> VaultConfig {
        VaultConfig {
            address: self.address.clone(),
            mount: "pki".into(),
            role: role.into(),
            auth: VaultAuth::TokenSecret("weft-vault-token".into()),
            ca_cert_secret: None,
        }
    }

    async fn issuer(&self, role: &str, token: watch::Receiver<Option<String>>) -> VaultIssuer {
        let config = self.config(role);
        let credentials = VaultCredentials::from_config(&config, token);
        VaultIssuer::connect(config, credentials, None, TRUST_DOMAIN, "weft-system")
            .await
            .expect("the Vault issuer connects and reads Vault's CA chain")
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
    }
}

impl Drop for DevVault {
    fn drop(&mut self) {
        self.signal("-CONT");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// WEFT_VAULT_BIN, or the install script's cached build (it builds on first use).
fn vault_binary() -> PathBuf {
    if let Some(bin) = std::env::var_os("WEFT_VAULT_BIN") {
        return PathBuf::from(bin);
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("e2e/scripts/install-vault.sh");
    let out = Command::new("bash")
        .arg(&script)
        .stderr(Stdio::inherit())
        .output()
        .expect("install-vault.sh runs");
    assert!(out.status.success(), "install-vault.sh failed");
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

fn web_csr<'a>(csr_pem: &'a str) -> WorkloadCsr<'a> {
    WorkloadCsr {
        csr_pem,
        spiffe_id: WEB,
        namespace: "pets",
        service_account: "web",
        ttl: TTL,
    }
}

async fn sign(issuer: &VaultIssuer) -> Result<pki::IssuedCert, IssuerError> {
    let key = WorkloadKey::generate().expect("key");
    let csr = key.csr_pem(WEB).expect("csr");
    pki::issue(issuer, &web_csr(&csr), &[], SystemTime::now()).await
}

fn refusal_label(result: Result<pki::IssuedCert, IssuerError>) -> (&'static str, String) {
    match result {
        Ok(_) => panic!("Vault signed what it should have refused"),
        Err(e) => (e.metric_label(), e.to_string()),
    }
}

#[tokio::test]
#[ignore = "needs a Vault binary (a cold build takes ~7 minutes): make e2e-issuers"]
async fn vault_signs_a_weft_csr_with_exactly_the_spiffe_identity_and_chains_to_its_root() {
    let vault = DevVault::start();
    let (root, token) = vault.configure_as_seed_002();
    let (_token_tx, token_rx) = watch::channel(Some(token));
    let issuer = vault.issuer("weft", token_rx).await;
    assert_eq!(issuer.kind(), IssuerKind::Vault);
    assert_eq!(issuer.roots_pem(), vec![root.trim().to_string() + "\n"]);

    let key = WorkloadKey::generate().expect("key");
    let csr = key.csr_pem(WEB).expect("csr");
    let issued = pki::issue(&issuer, &web_csr(&csr), &[], SystemTime::now())
        .await
        .expect("Vault signs");
    assert_eq!(spiffe_id_of(&issued.leaf_der).as_deref(), Some(WEB));
    assert!(key.matches_certificate(&issued.leaf_der));
    let roots = certificates_from_pem(&root).expect("root");
    let chain: Vec<Vec<u8>> = issued
        .cert_chain_pem
        .iter()
        .flat_map(|p| certificates_from_pem(p).expect("chain"))
        .collect();
    verify_chain(&chain[0], &chain[1..], &roots, SystemTime::now())
        .expect("the leaf chains to Vault's root");
    let (_, leaf) = x509_parser::parse_x509_certificate(&issued.leaf_der).expect("leaf");
    assert_eq!(leaf.issuer().to_string(), "CN=osm.root");
    let san = leaf
        .subject_alternative_name()
        .expect("SAN parses")
        .expect("a SAN");
    assert_eq!(
        san.value.general_names.len(),
        1,
        "the common name stays out of the SANs"
    );
    let lifetime = leaf.validity().not_after.timestamp() - leaf.validity().not_before.timestamp();
    // Vault backdates NotBefore by 30 s.
    assert!(
        (3600..=3600 + 60).contains(&lifetime),
        "ttl = workload cert TTL: {lifetime}"
    );
    assert_eq!(issued.roots_pem, issuer.roots_pem());
}

#[tokio::test]
#[ignore = "needs a Vault binary (a cold build takes ~7 minutes): make e2e-issuers"]
async fn each_misconfigured_vault_is_refused_naming_the_fix() {
    let vault = DevVault::start();
    let (_root, token) = vault.configure_as_seed_002();

    // A wrong token, then the right one written to the Secret: used without a restart.
    let (token_tx, token_rx) = watch::channel(Some("not-a-vault-token".to_string()));
    let issuer = vault.issuer("weft", token_rx).await;
    let (label, message) = refusal_label(sign(&issuer).await);
    assert_eq!(label, "vault_permission_denied", "{message}");
    assert!(
        message.contains("Secret weft-system/weft-vault-token"),
        "{message}"
    );
    token_tx.send_replace(None);
    let (label, message) = refusal_label(sign(&issuer).await);
    assert_eq!(label, "vault_token_missing", "{message}");
    assert!(
        message.contains("kubectl -n weft-system create secret generic weft-vault-token"),
        "{message}"
    );
    token_tx.send_replace(Some(token.clone()));
    sign(&issuer).await.expect("the rotated token signs");

    let token_rx = || watch::channel(Some(token.clone())).1;
    // A role that does not exist.
    let (label, message) = refusal_label(sign(&vault.issuer("nope", token_rx()).await).await);
    assert_eq!(
        label, "vault_permission_denied",
        "the policy only allows pki/sign/weft: {message}"
    );
    let root_rx = watch::channel(Some(ROOT_TOKEN.to_string())).1;
    let (label, message) = refusal_label(sign(&vault.issuer("nope", root_rx).await).await);
    assert_eq!(label, "vault_unknown_role", "{message}");
    assert!(message.contains("vault write pki/roles/nope"), "{message}");

    // Seed 002's role as written: RSA keys only.
    let root = || watch::channel(Some(ROOT_TOKEN.to_string())).1;
    vault.must(&[
        "write",
        "pki/roles/seed",
        "allow_any_name=true",
        "allow_subdomains=true",
    ]);
    let (label, message) = refusal_label(sign(&vault.issuer("seed", root()).await).await);
    assert_eq!(label, "vault_role_key_type", "{message}");
    assert!(
        message.contains("vault write pki/roles/seed key_type=any"),
        "{message}"
    );

    // P-256 allowed, URI SANs not.
    vault.must(&[
        "write",
        "pki/roles/nouri",
        "allow_any_name=true",
        "key_type=any",
    ]);
    let (label, message) = refusal_label(sign(&vault.issuer("nouri", root()).await).await);
    assert_eq!(label, "vault_role_uri_sans", "{message}");
    assert!(
        message
            .contains("vault write pki/roles/nouri allowed_uri_sans=\"spiffe://cluster.local/*\""),
        "{message}"
    );

    // URI SANs of another trust domain only.
    vault.must(&[
        "write",
        "pki/roles/otheruri",
        "allow_any_name=true",
        "key_type=any",
        "allowed_uri_sans=spiffe://other.domain/*",
    ]);
    let (label, _) = refusal_label(sign(&vault.issuer("otheruri", root()).await).await);
    assert_eq!(label, "vault_role_uri_sans");

    // The common name weft sends is not allowed.
    vault.must(&[
        "write",
        "pki/roles/cn",
        "allowed_domains=example.com",
        "key_type=any",
        "allowed_uri_sans=spiffe://cluster.local/*",
    ]);
    let (label, message) = refusal_label(sign(&vault.issuer("cn", root()).await).await);
    assert_eq!(label, "vault_role_common_name", "{message}");
    assert!(message.contains("allow_any_name=true"), "{message}");

    // A mount that does not exist: connecting already fails, naming the fix.
    let config = VaultConfig {
        mount: "nomount".into(),
        ..vault.config("weft")
    };
    let credentials = VaultCredentials::from_config(&config, root());
    let Err(e) = VaultIssuer::connect(config, credentials, None, TRUST_DOMAIN, "weft-system").await
    else {
        panic!("a missing mount connected")
    };
    assert_eq!(e.metric_label(), "vault_no_mount", "{e}");
    assert!(
        e.to_string()
            .contains("vault secrets enable -path=nomount pki"),
        "{e}"
    );
}

#[tokio::test]
#[ignore = "needs a Vault binary (a cold build takes ~7 minutes): make e2e-issuers"]
async fn a_paused_vault_is_unavailable_within_the_call_timeout_and_signs_again_when_resumed() {
    let vault = DevVault::start();
    let (_root, token) = vault.configure_as_seed_002();
    let issuer = vault.issuer("weft", watch::channel(Some(token)).1).await;
    sign(&issuer).await.expect("signs before the pause");

    vault.signal("-STOP");
    let started = Instant::now();
    let result = sign(&issuer).await;
    let took = started.elapsed();
    vault.signal("-CONT");
    let (label, message) = refusal_label(result);
    assert_eq!(label, "issuer_unavailable", "{message}");
    assert!(
        message.contains("issued certificates keep working"),
        "{message}"
    );
    assert!(
        took <= pki::VAULT_CALL_TIMEOUT + Duration::from_secs(1),
        "gave up after {took:?}"
    );
    assert!(issuer.fetch_roots().await.is_ok());
    sign(&issuer).await.expect("signs again once resumed");
}

/// A token reviewer that knows one token: the CSR endpoint's authentication is unit-tested in
/// src/operator/csr.rs; here it only has to let web through.
struct OneToken;

impl weft::operator::csr::TokenReviewer for OneToken {
    fn review<'a>(
        &'a self,
        token: &'a str,
    ) -> std::pin::Pin<
        Box<
            dyn std::future::Future<
                    Output = Result<
                        weft::operator::csr::Reviewed,
                        weft::operator::csr::ReviewError,
                    >,
                > + Send
                + 'a,
        >,
    > {
        Box::pin(async move {
            if token == "web-token" {
                Ok(weft::operator::csr::Reviewed {
                    namespace: "pets".into(),
                    service_account: "web".into(),
                    pod: Some("web-0".into()),
                })
            } else {
                Err(weft::operator::csr::ReviewError::Unauthenticated {
                    reason: "unknown token".into(),
                })
            }
        })
    }
}

#[tokio::test]
#[ignore = "needs a Vault binary (a cold build takes ~7 minutes): make e2e-issuers"]
async fn the_csr_endpoint_hands_a_proxys_csr_to_vault_and_answers_both_roots() {
    use tower::ServiceExt;
    use weft::operator::csr;

    let vault = DevVault::start();
    let (vault_root, token) = vault.configure_as_seed_002();
    let vault_issuer: Arc<dyn Issuer> =
        Arc::new(vault.issuer("weft", watch::channel(Some(token)).1).await);
    let mesh = Arc::new(
        pki::MeshCa::generate_root(TRUST_DOMAIN, pki::DEFAULT_ROOT_VALIDITY).expect("mesh CA"),
    );
    let (_ca_tx, ca_rx) = watch::channel(Some(mesh.clone()));
    let (_issuer_tx, issuer_rx) = watch::channel(Some(vault_issuer));
    let mut state = csr::CsrState::new(
        ca_rx,
        Arc::new(OneToken),
        Arc::new(|_ns: &str| csr::CertPolicy {
            trust_domain: TRUST_DOMAIN.into(),
            max_ttl: TTL,
        }),
    );
    state.issuer = Some(issuer_rx);
    let key = WorkloadKey::generate().expect("key");
    let body = serde_json::json!({"csr": key.csr_pem(WEB).expect("csr")}).to_string();
    let request = axum::http::Request::post(weft::contract::PATH_CERTIFICATES)
        .header("authorization", "Bearer web-token")
        .header("content-type", "application/json")
        .body(axum::body::Body::from(body))
        .expect("request");
    let response = csr::router(state).oneshot(request).await.expect("answer");
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .expect("body");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&bytes));
    let answer: pki::CertificateResponse = serde_json::from_slice(&bytes).expect("JSON");
    let leaf = certificates_from_pem(&answer.cert_chain[0]).expect("leaf");
    let roots = certificates_from_pem(&vault_root).expect("root");
    verify_chain(&leaf[0], &[] as &[Vec<u8>], &roots, SystemTime::now())
        .expect("the proxy's leaf chains to Vault's root");
    assert_eq!(spiffe_id_of(&leaf[0]).as_deref(), Some(WEB));
    assert_eq!(
        answer.roots,
        vec![mesh.roots_pem(), vault_root.trim().to_string() + "\n"],
        "the mesh root (it signs the operator's serving certificates) and Vault's"
    );
}

/// A man in the middle in front of Vault (loopback): forwards every request as it is, except
/// that each `POST /v1/<mount>/sign/<role>` carries `other_csr` instead of weft's CSR. Vault
/// then really signs a leaf for another identity (and another key): what a compromised or
/// misconfigured Vault would hand back. Returns its address.
async fn tampering_front(vault: &str, other_csr: String) -> String {
    let upstream = vault.trim_start_matches("http://").to_string();
    let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
        let upstream = upstream.clone();
        let other_csr = other_csr.clone();
        async move {
            // A failure of the front itself is a 502 naming it (never a silent close), so a
            // test failure says whether the front or weft went wrong.
            forward_tampered(req, &upstream, &other_csr)
                .await
                .unwrap_or_else(|e| {
                    axum::response::Response::builder()
                        .status(502)
                        .body(axum::body::Body::from(format!("tampering front: {e}")))
                        .expect("response")
                })
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    address
}

async fn forward_tampered(
    req: axum::extract::Request,
    upstream: &str,
    other_csr: &str,
) -> Result<axum::response::Response, String> {
    use http_body_util::BodyExt as _;
    let (parts, body) = req.into_parts();
    let mut bytes = axum::body::to_bytes(body, 1 << 20)
        .await
        .map_err(|e| format!("reading the request: {e}"))?
        .to_vec();
    if parts.method == axum::http::Method::POST && parts.uri.path().contains("/sign/") {
        let mut json: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| format!("request JSON: {e}"))?;
        json["csr"] = other_csr.into();
        bytes = serde_json::to_vec(&json).map_err(|e| e.to_string())?;
    }
    let tcp = tokio::net::TcpStream::connect(upstream)
        .await
        .map_err(|e| format!("connecting to Vault: {e}"))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .map_err(|e| format!("handshake with Vault: {e}"))?;
    tokio::spawn(conn);
    let mut forward = hyper::Request::builder()
        .method(parts.method.clone())
        .uri(parts.uri.path_and_query().map_or("/", |p| p.as_str()));
    for (name, value) in &parts.headers {
        if name != axum::http::header::CONTENT_LENGTH && name != axum::http::header::HOST {
            forward = forward.header(name, value);
        }
    }
    let forward = forward
        .header(axum::http::header::HOST, upstream)
        .body(http_body_util::Full::new(hyper::body::Bytes::from(bytes)))
        .map_err(|e| e.to_string())?;
    let answer = sender
        .send_request(forward)
        .await
        .map_err(|e| format!("Vault's answer: {e}"))?;
    let (mut parts, body) = answer.into_parts();
    // The body is collected and sent whole: Vault's framing (its sign answers are chunked)
    // is not this answer's; hyper sets the length.
    parts.headers.remove(axum::http::header::TRANSFER_ENCODING);
    parts.headers.remove(axum::http::header::CONTENT_LENGTH);
    let body = body
        .collect()
        .await
        .map_err(|e| format!("Vault's body: {e}"))?
        .to_bytes();
    Ok(axum::response::Response::from_parts(
        parts,
        axum::body::Body::from(body),
    ))
}

/// Bad input of issue 24: Vault returning a certificate for another identity. The real Vault
/// signs (through a tampering front) a leaf for `kube-system/admin` when weft asked for
/// `pets/web`: `pki::issue` refuses it naming both identities, and through the CSR endpoint
/// the proxy gets a 503 saying so, with no certificate in the answer.
#[tokio::test]
#[ignore = "needs a Vault binary (a cold build takes ~7 minutes): make e2e-issuers"]
async fn a_certificate_vault_signs_for_another_identity_is_refused_and_never_handed_out() {
    use tower::ServiceExt;
    use weft::operator::csr;

    const ADMIN: &str = "spiffe://cluster.local/ns/kube-system/sa/admin";
    let vault = DevVault::start();
    let (_root, token) = vault.configure_as_seed_002();
    let other = WorkloadKey::generate().expect("key");
    let front = tampering_front(&vault.address, other.csr_pem(ADMIN).expect("csr")).await;
    let config = VaultConfig {
        address: front,
        ..vault.config("weft")
    };
    let credentials = VaultCredentials::from_config(&config, watch::channel(Some(token)).1);
    let issuer = VaultIssuer::connect(config, credentials, None, TRUST_DOMAIN, "weft-system")
        .await
        .expect("the CA chain passes the front untouched");

    let (label, message) = refusal_label(sign(&issuer).await);
    assert_eq!(label, "issuer_bad_leaf", "{message}");
    assert!(
        message.contains(&format!("URI:{ADMIN}")) && message.contains(&format!("URI:{WEB}")),
        "the refusal names what Vault signed and what was asked: {message}"
    );
    assert!(
        message.starts_with("Vault at http://127.0.0.1:"),
        "{message}"
    );

    // Through the CSR endpoint: the proxy gets a 503 naming it, and no certificate.
    let mesh = Arc::new(
        pki::MeshCa::generate_root(TRUST_DOMAIN, pki::DEFAULT_ROOT_VALIDITY).expect("mesh CA"),
    );
    let (_ca_tx, ca_rx) = watch::channel(Some(mesh));
    let issuer: Arc<dyn Issuer> = Arc::new(issuer);
    let (_issuer_tx, issuer_rx) = watch::channel(Some(issuer));
    let mut state = csr::CsrState::new(
        ca_rx,
        Arc::new(OneToken),
        Arc::new(|_ns: &str| csr::CertPolicy {
            trust_domain: TRUST_DOMAIN.into(),
            max_ttl: TTL,
        }),
    );
    state.issuer = Some(issuer_rx);
    let key = WorkloadKey::generate().expect("key");
    let body = serde_json::json!({"csr": key.csr_pem(WEB).expect("csr")}).to_string();
    let request = axum::http::Request::post(weft::contract::PATH_CERTIFICATES)
        .header("authorization", "Bearer web-token")
        .header("content-type", "application/json")
        .body(axum::body::Body::from(body))
        .expect("request");
    let response = csr::router(state).oneshot(request).await.expect("answer");
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .expect("body");
    let text = String::from_utf8_lossy(&bytes);
    assert_eq!(status, 503, "{text}");
    assert!(text.contains(ADMIN), "{text}");
    assert!(
        !text.contains("BEGIN CERTIFICATE") && !text.contains("certChain"),
        "a certificate reached the answer: {text}"
    );
}
