//! The Vault issuer: signs workload CSRs with HashiCorp Vault's PKI secrets engine
//! (`POST /v1/<mount>/sign/<role>`), so the CA key never enters the cluster. Its roots are
//! Vault's CA chain (`GET /v1/<mount>/ca_chain`). Every Vault refusal becomes an error that
//! names the `vault write <mount>/roles/<role> ...` setting or the token that fixes it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use axum::body::{Body, Bytes};
use hyper::{Method, Request, StatusCode, header};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{Mutex, watch};

use super::encoding;
use super::issuer::{
    IssuerError, IssuerKind, SignFuture, SignedChain, VAULT_CA_CERT_KEY, VAULT_TOKEN_KEY,
    VaultAuth, VaultConfig, WorkloadCsr,
};

/// Connecting to Vault; a Vault that takes longer is as good as down.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// One call to Vault, connection included: well inside the CSR endpoint's 10 s.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest Vault answer read (a signed chain is a few KiB).
const MAX_ANSWER_BYTES: usize = 1024 * 1024;
/// Where the operator's ServiceAccount token is, for Vault's Kubernetes auth method.
pub const SERVICE_ACCOUNT_TOKEN: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";
/// The system's CA bundle, used for HTTPS to Vault when no `--ca-cert-secret` is given.
const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// How weft proves itself to Vault.
pub enum VaultCredentials {
    /// The token Secret's `token`, as the operator last read it (`None`: Secret or key
    /// missing). A watch, so a rotated token is used from the next request on.
    Token {
        secret: String,
        token: watch::Receiver<Option<String>>,
    },
    /// Vault's Kubernetes auth method: logs in with the ServiceAccount token at `jwt_path`
    /// and reuses the Vault token until 80% of its lease.
    Kubernetes {
        role: String,
        mount: String,
        jwt_path: PathBuf,
        cached: Mutex<Option<(String, Instant)>>,
    },
}

impl VaultCredentials {
    /// From the configuration; `token` is the token Secret's watch (unused for Kubernetes auth).
    pub fn from_config(config: &VaultConfig, token: watch::Receiver<Option<String>>) -> Self {
        match &config.auth {
            VaultAuth::TokenSecret(secret) => Self::Token {
                secret: secret.clone(),
                token,
            },
            VaultAuth::Kubernetes { role, mount } => Self::Kubernetes {
                role: role.clone(),
                mount: mount.clone(),
                jwt_path: PathBuf::from(SERVICE_ACCOUNT_TOKEN),
                cached: Mutex::new(None),
            },
        }
    }
}

/// Signs through one Vault PKI role. Its roots are read once when it is built; the operator
/// builds a new one when Vault's CA chain changes.
pub struct VaultIssuer {
    config: VaultConfig,
    http: VaultHttp,
    credentials: VaultCredentials,
    roots: Vec<String>,
    trust_domain: String,
    namespace: String,
}

/// Where Vault listens and how to speak TLS to it.
#[derive(Clone)]
struct VaultHttp {
    host: String,
    port: u16,
    authority: String,
    tls: Option<(
        tokio_rustls::TlsConnector,
        rustls::pki_types::ServerName<'static>,
    )>,
    /// Where the CA that must sign Vault's HTTPS certificate comes from, named in a failed
    /// handshake so a wrong `--ca-cert-secret` is found from `weft check` alone.
    ca_source: String,
}

impl VaultIssuer {
    /// Connects to Vault as `config` says and reads its CA chain. `ca_cert_pem` is the
    /// `--ca-cert-secret`'s `ca.crt` (HTTPS); `namespace` is where the token Secret lives.
    pub async fn connect(
        config: VaultConfig,
        credentials: VaultCredentials,
        ca_cert_pem: Option<&str>,
        trust_domain: &str,
        namespace: &str,
    ) -> Result<Self, IssuerError> {
        let http = VaultHttp::new(&config, ca_cert_pem, namespace).map_err(|message| {
            IssuerError::Refused {
                issuer: describe(&config),
                message,
                label: "vault_config",
            }
        })?;
        let mut issuer = VaultIssuer {
            config,
            http,
            credentials,
            roots: Vec::new(),
            trust_domain: trust_domain.to_string(),
            namespace: namespace.to_string(),
        };
        issuer.roots = issuer.fetch_roots().await?;
        Ok(issuer)
    }

    pub fn config(&self) -> &VaultConfig {
        &self.config
    }

    /// Vault's CA chain now: the self-signed certificates in it, or its last one when Vault
    /// signs with an intermediate whose root it does not hold.
    pub async fn fetch_roots(&self) -> Result<Vec<String>, IssuerError> {
        let path = format!("/v1/{}/ca_chain", self.config.mount);
        // The CA chain is public, but Vault checks a token before it routes: without one, a
        // missing mount reads as "permission denied" instead of "no handler for route".
        let token = self.token().await.ok();
        let (status, body) = self
            .call(Method::GET, &path, token.as_deref(), None)
            .await?;
        if !status.is_success() {
            return Err(self.refusal(status, &body));
        }
        let text = String::from_utf8_lossy(&body);
        let ders = encoding::certificates_from_pem(&text).unwrap_or_default();
        let roots = chain_roots(&ders);
        if roots.is_empty() {
            return Err(IssuerError::Refused {
                issuer: self.describe_(),
                message: format!(
                    "{}/ca_chain holds no CA certificate: create one, e.g. `vault write {}/root/generate/internal common_name=weft.root ttl=87600h`",
                    self.config.mount, self.config.mount
                ),
                label: "vault_no_ca",
            });
        }
        Ok(roots
            .into_iter()
            .map(|der| encoding::to_pem(encoding::TAG_CERTIFICATE, &der))
            .collect())
    }

    fn describe_(&self) -> String {
        describe(&self.config)
    }

    /// The Vault token to send: the Secret's, or a Kubernetes-auth login's.
    async fn token(&self) -> Result<String, IssuerError> {
        match &self.credentials {
            VaultCredentials::Token { secret, token } => {
                token.borrow().clone().ok_or_else(|| IssuerError::Refused {
                    issuer: self.describe_(),
                    message: format!(
                        "Secret {ns}/{secret} with key `{VAULT_TOKEN_KEY}` is missing: create it, e.g. `kubectl -n {ns} create secret generic {secret} --from-literal={VAULT_TOKEN_KEY}=<vault token>`",
                        ns = self.namespace
                    ),
                    label: "vault_token_missing",
                })
            }
            VaultCredentials::Kubernetes {
                role,
                mount,
                jwt_path,
                cached,
            } => {
                let mut cached = cached.lock().await;
                if let Some((token, until)) = cached.as_ref()
                    && Instant::now() < *until
                {
                    return Ok(token.clone());
                }
                let jwt = std::fs::read_to_string(jwt_path).map_err(|e| IssuerError::Refused {
                    issuer: self.describe_(),
                    message: format!(
                        "cannot read the operator's ServiceAccount token at {} ({e}) for Vault's Kubernetes auth",
                        jwt_path.display()
                    ),
                    label: "vault_login",
                })?;
                let path = format!("/v1/auth/{mount}/login");
                let body = json!({"role": role, "jwt": jwt.trim()});
                let (status, answer) = self.call(Method::POST, &path, None, Some(body)).await?;
                if !status.is_success() {
                    let errors = vault_errors(&answer).join("; ");
                    return Err(IssuerError::Refused {
                        issuer: self.describe_(),
                        message: format!(
                            "Vault's Kubernetes auth at auth/{mount} refused role {role} ({status}: {errors}): check `vault read auth/{mount}/role/{role}` binds ServiceAccount weft-operator in {ns} and that auth/{mount}/config can reach the API server",
                            ns = self.namespace
                        ),
                        label: "vault_login",
                    });
                }
                let parsed: Value = serde_json::from_slice(&answer).unwrap_or_default();
                let token = parsed["auth"]["client_token"]
                    .as_str()
                    .filter(|t| !t.is_empty())
                    .ok_or_else(|| IssuerError::Unavailable {
                        issuer: self.describe_(),
                        message: "its login answer holds no auth.client_token".into(),
                    })?
                    .to_string();
                let lease = parsed["auth"]["lease_duration"].as_u64().unwrap_or(60);
                let until = Instant::now() + Duration::from_secs(lease.max(10) * 8 / 10);
                *cached = Some((token.clone(), until));
                Ok(token)
            }
        }
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Result<(StatusCode, Bytes), IssuerError> {
        let unavailable = |message: String| IssuerError::Unavailable {
            issuer: self.describe_(),
            message,
        };
        match tokio::time::timeout(CALL_TIMEOUT, self.http.call(method, path, token, body)).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(e)) => Err(unavailable(format!(
                "{e}; renewals retry, issued certificates keep working"
            ))),
            Err(_) => Err(unavailable(format!(
                "no answer within {} s; renewals retry, issued certificates keep working",
                CALL_TIMEOUT.as_secs()
            ))),
        }
    }

    fn refusal(&self, status: StatusCode, body: &[u8]) -> IssuerError {
        let source = match &self.credentials {
            VaultCredentials::Token { secret, .. } => {
                format!("the token in Secret {}/{secret}", self.namespace)
            }
            VaultCredentials::Kubernetes { role, mount, .. } => {
                format!("the token of Kubernetes auth role {role} at auth/{mount}")
            }
        };
        vault_refusal(
            status.as_u16(),
            &vault_errors(body),
            &RefusalContext {
                issuer: self.describe_(),
                mount: &self.config.mount,
                role: &self.config.role,
                token_source: &source,
                trust_domain: &self.trust_domain,
            },
        )
    }
}

impl super::issuer::Issuer for VaultIssuer {
    fn kind(&self) -> IssuerKind {
        IssuerKind::Vault
    }

    fn describe(&self) -> String {
        self.describe_()
    }

    fn roots_pem(&self) -> Vec<String> {
        self.roots.clone()
    }

    fn sign<'a>(&'a self, csr: &'a WorkloadCsr<'a>, _now: SystemTime) -> SignFuture<'a> {
        Box::pin(async move {
            let token = self.token().await?;
            let path = format!("/v1/{}/sign/{}", self.config.mount, self.config.role);
            // Vault's roles default to requiring a common name; weft sends one and keeps it
            // out of the SANs so the leaf's only name is the SPIFFE URI.
            let body = json!({
                "csr": csr.csr_pem,
                "common_name": csr.common_name(),
                "exclude_cn_from_sans": true,
                "uri_sans": csr.spiffe_id,
                "ttl": format!("{}s", csr.ttl.as_secs()),
                "format": "pem",
            });
            let (status, answer) = self
                .call(Method::POST, &path, Some(&token), Some(body))
                .await?;
            if !status.is_success() {
                if let VaultCredentials::Kubernetes { cached, .. } = &self.credentials
                    && status == StatusCode::FORBIDDEN
                {
                    // A revoked login token: log in again next time.
                    *cached.lock().await = None;
                }
                return Err(self.refusal(status, &answer));
            }
            signed_chain(&answer).map_err(|reason| IssuerError::BadLeaf {
                issuer: self.describe_(),
                reason,
            })
        })
    }
}

fn describe(config: &VaultConfig) -> String {
    format!(
        "Vault at {} ({}/sign/{})",
        config.base_url(),
        config.mount,
        config.role
    )
}

/// The leaf and chain of a `sign` answer: `data.certificate`, then `data.ca_chain` (or
/// `data.issuing_ca` when Vault sends no chain).
pub fn signed_chain(answer: &[u8]) -> Result<SignedChain, String> {
    let parsed: Value =
        serde_json::from_slice(answer).map_err(|e| format!("its answer is not JSON ({e})"))?;
    let data = &parsed["data"];
    let leaf = data["certificate"]
        .as_str()
        .filter(|c| !c.trim().is_empty())
        .ok_or("its answer holds no data.certificate")?;
    let mut chain_pem = vec![format!("{}\n", leaf.trim())];
    let chain: Vec<&str> = match data["ca_chain"].as_array() {
        Some(chain) if !chain.is_empty() => chain.iter().filter_map(Value::as_str).collect(),
        _ => data["issuing_ca"].as_str().into_iter().collect(),
    };
    chain_pem.extend(
        chain
            .into_iter()
            .filter(|c| !c.trim().is_empty())
            .map(|c| format!("{}\n", c.trim())),
    );
    Ok(SignedChain { chain_pem })
}

/// The roots of a CA chain: its self-signed certificates, or its last one.
fn chain_roots(ders: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let self_signed: Vec<Vec<u8>> = ders
        .iter()
        .filter(|der| {
            x509_parser::parse_x509_certificate(der)
                .map(|(_, c)| c.is_ca() && c.subject() == c.issuer())
                .unwrap_or(false)
        })
        .cloned()
        .collect();
    if self_signed.is_empty() {
        ders.last().cloned().into_iter().collect()
    } else {
        self_signed
    }
}

/// Vault's `{"errors": [...]}` (its multi-error texts folded onto one line), or the body's
/// text when it is not that.
pub fn vault_errors(body: &[u8]) -> Vec<String> {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    match parsed.as_ref().and_then(|v| v["errors"].as_array()) {
        Some(errors) => errors
            .iter()
            .filter_map(Value::as_str)
            .map(|e| e.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect(),
        None => {
            let text = String::from_utf8_lossy(body).trim().to_string();
            if text.is_empty() {
                Vec::new()
            } else {
                vec![text.chars().take(300).collect()]
            }
        }
    }
}

/// What a refusal message names.
pub struct RefusalContext<'a> {
    pub issuer: String,
    pub mount: &'a str,
    pub role: &'a str,
    /// Where the token came from, e.g. `the token in Secret weft-system/weft-vault-token`.
    pub token_source: &'a str,
    pub trust_domain: &'a str,
}

/// Turns Vault's status and `errors` into an error that says what to change. Pure: each
/// Vault message weft recognises is a unit test, with the words Vault 1.21.0 uses.
pub fn vault_refusal(status: u16, errors: &[String], ctx: &RefusalContext<'_>) -> IssuerError {
    let said = if errors.is_empty() {
        format!("HTTP {status}")
    } else {
        format!("HTTP {status}: {}", errors.join("; "))
    };
    let lower = said.to_lowercase();
    let (mount, role, td) = (ctx.mount, ctx.role, ctx.trust_domain);
    let fix_role = |setting: &str| format!("`vault write {mount}/roles/{role} {setting}`");
    let refused = |label: &'static str, message: String| IssuerError::Refused {
        issuer: ctx.issuer.clone(),
        message,
        label,
    };
    if lower.contains("sealed") || status >= 500 {
        let hint = if lower.contains("sealed") {
            "; unseal it (`vault operator unseal`)"
        } else {
            ""
        };
        return IssuerError::Unavailable {
            issuer: ctx.issuer.clone(),
            message: format!(
                "Vault says {said}{hint}; renewals retry, issued certificates keep working"
            ),
        };
    }
    if status == 403 || lower.contains("permission denied") {
        return refused(
            "vault_permission_denied",
            format!(
                "Vault says {said}: {} is wrong, expired or revoked, or its policy lacks `path \"{mount}/sign/{role}\" {{ capabilities = [\"update\"] }}`; put a valid token there (it is re-read when the Secret changes)",
                ctx.token_source
            ),
        );
    }
    if lower.contains("unknown role") || lower.contains("role not found") {
        return refused(
            "vault_unknown_role",
            format!(
                "Vault says {said}: create the role, e.g. {}",
                fix_role(&format!(
                    "allow_any_name=true key_type=any allowed_uri_sans=\"spiffe://{td}/*\""
                ))
            ),
        );
    }
    if lower.contains("requires keys of type") || lower.contains("key type") {
        return refused(
            "vault_role_key_type",
            format!(
                "Vault says {said}: weft's proxies send ECDSA P-256 CSRs; allow them with {} (or key_type=ec key_bits=256)",
                fix_role("key_type=any")
            ),
        );
    }
    if lower.contains("uri subject alternative names") || lower.contains("uri_sans") {
        return refused(
            "vault_role_uri_sans",
            format!(
                "Vault says {said}: the role must allow SPIFFE URI SANs: {}",
                fix_role(&format!("allowed_uri_sans=\"spiffe://{td}/*\""))
            ),
        );
    }
    if lower.contains("common name") || lower.contains("common_name") {
        return refused(
            "vault_role_common_name",
            format!(
                "Vault says {said}: weft sends common_name <sa>.<namespace>.svc (kept out of the SANs); allow it with {} (or allowed_domains=svc allow_subdomains=true allow_glob_domains=true)",
                fix_role("allow_any_name=true")
            ),
        );
    }
    if lower.contains("no handler for route") || lower.contains("unsupported path") || status == 404
    {
        return refused(
            "vault_no_mount",
            format!(
                "Vault says {said}: no PKI secrets engine at {mount}/; enable one with `vault secrets enable -path={mount} pki` and create a CA (`vault write {mount}/root/generate/internal common_name=weft.root ttl=87600h`)"
            ),
        );
    }
    if lower.contains("issuer") || lower.contains("no default") {
        return refused(
            "vault_no_ca",
            format!(
                "Vault says {said}: the mount has no CA to sign with; create one with `vault write {mount}/root/generate/internal common_name=weft.root ttl=87600h`"
            ),
        );
    }
    refused(
        "vault_refused",
        format!("Vault says {said}: check the role with `vault read {mount}/roles/{role}`"),
    )
}

// === HTTP ===

impl VaultHttp {
    fn new(
        config: &VaultConfig,
        ca_cert_pem: Option<&str>,
        namespace: &str,
    ) -> Result<Self, String> {
        let uri: hyper::Uri = config
            .base_url()
            .parse()
            .map_err(|e| format!("the address {:?} is not a URL ({e})", config.address))?;
        let https = uri.scheme_str() == Some("https");
        let host = uri
            .host()
            .ok_or_else(|| format!("the address {:?} has no host", config.address))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let authority = uri
            .authority()
            .map(|a| a.to_string())
            .unwrap_or_else(|| host.clone());
        let tls = if https {
            let pem = match (ca_cert_pem, &config.ca_cert_secret) {
                (Some(pem), _) => pem.to_string(),
                // Named but not read: never fall back to the public roots (fail closed).
                (None, Some(name)) => {
                    return Err(format!(
                        "no CA read from Secret {namespace}/{name} key {VAULT_CA_CERT_KEY} (--ca-cert-secret)"
                    ));
                }
                (None, None) => std::fs::read_to_string(SYSTEM_CA_BUNDLE).map_err(|e| {
                    format!(
                        "HTTPS to Vault needs its CA: give --ca-cert-secret (a Secret with ca.crt), or the operator image's {SYSTEM_CA_BUNDLE} ({e})"
                    )
                })?,
            };
            let mut roots = rustls::RootCertStore::empty();
            for der in encoding::certificates_from_pem(&pem).map_err(|e| e.to_string())? {
                roots
                    .add(der.into())
                    .map_err(|e| format!("Vault's CA certificate is unusable ({e})"))?;
            }
            if roots.is_empty() {
                return Err("the CA given for Vault holds no certificate".into());
            }
            let mut tls = rustls::ClientConfig::builder()
                .with_root_certificates(roots)
                .with_no_client_auth();
            tls.alpn_protocols = vec![b"http/1.1".to_vec()];
            let name = rustls::pki_types::ServerName::try_from(host.clone())
                .map_err(|e| format!("{host:?} is not a TLS server name ({e})"))?;
            Some((tokio_rustls::TlsConnector::from(Arc::new(tls)), name))
        } else {
            None
        };
        let ca_source = match &config.ca_cert_secret {
            Some(name) => format!(
                "the CA in Secret {namespace}/{name} key {VAULT_CA_CERT_KEY} (--ca-cert-secret)"
            ),
            None => format!("the operator image's {SYSTEM_CA_BUNDLE} (no --ca-cert-secret)"),
        };
        Ok(VaultHttp {
            host,
            port,
            authority,
            tls,
            ca_source,
        })
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Result<(StatusCode, Bytes), String> {
        let tcp = tokio::time::timeout(
            CONNECT_TIMEOUT,
            tokio::net::TcpStream::connect((self.host.as_str(), self.port)),
        )
        .await
        .map_err(|_| format!("connecting to {}:{} timed out", self.host, self.port))?
        .map_err(|e| format!("cannot connect to {}:{} ({e})", self.host, self.port))?;
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, &self.authority)
            .header(header::ACCEPT, "application/json");
        if let Some(token) = token {
            request = request.header("X-Vault-Token", token);
        }
        let request = match body {
            Some(body) => request
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(body.to_string())),
            None => request.body(Body::empty()),
        }
        .map_err(|e| e.to_string())?;
        match &self.tls {
            Some((connector, name)) => {
                let tls = connector.connect(name.clone(), tcp).await.map_err(|e| {
                    format!(
                        "TLS to {} failed ({e}): Vault's HTTPS certificate must chain to {}",
                        self.authority, self.ca_source
                    )
                })?;
                exchange(tls, request).await
            }
            None => exchange(tcp, request).await,
        }
    }
}

/// One HTTP/1.1 request on a fresh connection: Vault is asked once per certificate, so a pool
/// would save little and keep sockets to a Vault that may have moved.
async fn exchange<S>(io: S, request: Request<Body>) -> Result<(StatusCode, Bytes), String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| format!("HTTP handshake failed ({e})"))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("the request failed ({e})"))?;
    let status = response.status();
    let body = axum::body::to_bytes(Body::new(response.into_body()), MAX_ANSWER_BYTES)
        .await
        .map_err(|e| format!("reading the answer failed ({e})"))?;
    Ok((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> RefusalContext<'static> {
        RefusalContext {
            issuer: "Vault at http://127.0.0.1:8200 (pki/sign/weft)".into(),
            mount: "pki",
            role: "weft",
            token_source: "the token in Secret weft-system/weft-vault-token",
            trust_domain: "cluster.local",
        }
    }

    fn refusal(status: u16, error: &str) -> IssuerError {
        vault_refusal(status, &[error.to_string()], &ctx())
    }

    fn message_and_label(e: &IssuerError) -> (String, &'static str) {
        (e.to_string(), e.metric_label())
    }

    #[test]
    fn each_vault_refusal_names_what_fixes_it() {
        let cases = [
            (
                403,
                "permission denied",
                "vault_permission_denied",
                "Secret weft-system/weft-vault-token",
            ),
            (
                400,
                "unknown role: weft",
                "vault_unknown_role",
                "vault write pki/roles/weft",
            ),
            (
                400,
                "role requires keys of type rsa",
                "vault_role_key_type",
                "key_type=any",
            ),
            (
                400,
                "URI Subject Alternative Names are not allowed in this role, but were provided via CSR",
                "vault_role_uri_sans",
                "allowed_uri_sans=\"spiffe://cluster.local/*\"",
            ),
            (
                400,
                "URI Subject Alternative Names were provided via CSR which are not valid for this role",
                "vault_role_uri_sans",
                "allowed_uri_sans=\"spiffe://cluster.local/*\"",
            ),
            (
                400,
                "common name web.pets.svc not allowed by this role",
                "vault_role_common_name",
                "allow_any_name=true",
            ),
            (
                404,
                "no handler for route \"pki/sign/weft\". route entry not found.",
                "vault_no_mount",
                "vault secrets enable -path=pki pki",
            ),
        ];
        for (status, said, label, fix) in cases {
            let (message, got) = message_and_label(&refusal(status, said));
            assert_eq!(got, label, "{said}");
            assert!(message.contains(fix), "{said}: {message}");
            assert!(
                message.contains(said),
                "Vault's own words are kept: {message}"
            );
            assert!(
                message.contains("Vault at http://127.0.0.1:8200"),
                "{message}"
            );
        }
    }

    #[test]
    fn a_sealed_or_failing_vault_is_unavailable_not_refused() {
        for (status, said) in [(503, "Vault is sealed"), (500, "internal error")] {
            let e = refusal(status, said);
            assert!(matches!(e, IssuerError::Unavailable { .. }), "{e:?}");
            assert!(e.to_string().contains("issued certificates keep working"));
        }
        assert!(
            refusal(503, "Vault is sealed")
                .to_string()
                .contains("unseal")
        );
    }

    #[test]
    fn vault_errors_are_read_from_json_or_text() {
        assert_eq!(
            vault_errors(br#"{"errors":["permission denied"]}"#),
            vec!["permission denied".to_string()]
        );
        assert_eq!(
            vault_errors(b"plain words\n"),
            vec!["plain words".to_string()]
        );
        assert!(vault_errors(b"").is_empty());
    }

    #[test]
    fn a_sign_answer_becomes_leaf_then_chain() {
        let answer = json!({"data": {
            "certificate": "-----BEGIN CERTIFICATE-----\nA\n-----END CERTIFICATE-----",
            "issuing_ca": "-----BEGIN CERTIFICATE-----\nB\n-----END CERTIFICATE-----",
            "ca_chain": ["-----BEGIN CERTIFICATE-----\nB\n-----END CERTIFICATE-----"],
        }});
        let chain = signed_chain(answer.to_string().as_bytes()).unwrap();
        assert_eq!(chain.chain_pem.len(), 2);
        assert!(chain.chain_pem[0].contains("\nA\n"));
        assert!(
            signed_chain(br#"{"data":{}}"#)
                .unwrap_err()
                .contains("data.certificate")
        );
        assert!(signed_chain(b"<html>").unwrap_err().contains("not JSON"));
    }

    #[test]
    fn https_without_any_ca_is_refused_with_the_flag_to_use() {
        let config = VaultConfig {
            address: "https://vault.example:8200".into(),
            mount: "pki".into(),
            role: "weft".into(),
            auth: VaultAuth::TokenSecret("t".into()),
            ca_cert_secret: None,
        };
        match VaultHttp::new(&config, Some("not pem"), "weft-system") {
            Err(e) => assert!(e.contains("no certificate") || e.contains("PEM"), "{e}"),
            Ok(_) => panic!("a CA without certificates was accepted"),
        }
        // A named --ca-cert-secret that gave no CA never falls back to the public roots.
        let named = VaultConfig {
            ca_cert_secret: Some("vault-ca".into()),
            ..config.clone()
        };
        match VaultHttp::new(&named, None, "weft-system") {
            Err(e) => assert!(e.contains("weft-system/vault-ca"), "{e}"),
            Ok(_) => panic!("a named CA Secret that gave nothing fell back to the system roots"),
        }
        let plain = VaultConfig {
            address: "http://[::1]:8200".into(),
            ..config
        };
        let http = VaultHttp::new(&plain, None, "weft-system").unwrap();
        assert_eq!((http.host.as_str(), http.port), ("::1", 8200));
        assert!(http.tls.is_none());
    }
}
