//! The workload identity client: makes a P-256 key that never leaves the pod, asks the
//! operator's CSR endpoint (`POST :15012/v1/certificates`, SPEC §7) to sign it with the pod's
//! projected token, offers the result to the [`CertSink`], and renews at `renewAt` of the
//! lifetime with jitter. Failures retry with capped backoff; the current certificate stays.
//! Between renewals it polls the operator's trust bundle (`POST /v1/trust`, issue 24 root
//! rotation): a new bundle is installed with the same certificate, and a certificate that is
//! not from the current signer is renewed early, at a moment drawn over the spread the
//! operator names.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

use tokio::sync::watch;

use super::inputs::CertSink;
use super::tls::{TlsContext, WorkloadCert};
use crate::contract::PATH_CERTIFICATES;
use crate::pki::rotation::{
    PATH_TRUST, POLL_EVERY, TrustAnswer, proxy_action, report as trust_report,
};
use crate::pki::{CertificateRequest, CertificateResponse, ErrorResponse, WorkloadKey};

/// Largest answer read from the CSR endpoint (a chain and roots are a few KiB).
const MAX_RESPONSE_BYTES: usize = 1024 * 1024;
const RETRY_MIN: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("cannot read {what} at {path}: {source}")]
    Read {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("the trust roots at {0} hold no certificate")]
    NoRoots(String),
    #[error("cannot make the workload key or CSR: {0}")]
    Key(String),
    #[error("cannot reach the CSR endpoint {address}: {detail}")]
    Connect { address: String, detail: String },
    #[error("CSR endpoint answered {status}: {message}")]
    Refused { status: u16, message: String },
    #[error("CSR endpoint answered something that is not a certificate response: {0}")]
    BadResponse(String),
    #[error("the CA issued {got}, not the requested {want}")]
    WrongIdentity { got: String, want: String },
}

impl IdentityError {
    pub fn metric_label(&self) -> &'static str {
        match self {
            IdentityError::Read { .. } => "read",
            IdentityError::NoRoots(_) => "no_roots",
            IdentityError::Key(_) => "key",
            IdentityError::Connect { .. } => "connect",
            // The operator or its issuer is down or busy (a Vault outage is a 503): worth
            // telling apart from a refusal of this proxy's request.
            IdentityError::Refused { status, .. } if *status >= 500 => "unavailable",
            IdentityError::Refused { .. } => "refused",
            IdentityError::BadResponse(_) => "bad_response",
            IdentityError::WrongIdentity { .. } => "wrong_identity",
        }
    }
}

/// Where and as whom the proxy asks for its certificate.
#[derive(Debug, Clone)]
pub struct CsrClientConfig {
    /// `host:port` of the operator (`weft-operator.weft-system.svc:15012`).
    pub address: String,
    /// TLS server name the operator's certificate carries.
    pub server_name: String,
    /// The projected service-account token (audience `weft-ca`); re-read for every request
    /// because the kubelet rotates it.
    pub token_file: PathBuf,
    /// The mesh root (the `weft-ca-root-cert` ConfigMap), which also signs the operator.
    pub root_cert_file: PathBuf,
    /// The SPIFFE ID to ask for.
    pub identity: String,
    /// Asked-for lifetime; `None` takes the revision's `workloadCertTTL`.
    pub validity: Option<Duration>,
    /// Fraction of the lifetime at which to renew (MeshConfig `renewAt`).
    pub renew_at: f64,
    /// This proxy's pod (POD_NAME), named in trust polls; no polls without it.
    pub pod: Option<String>,
}

/// Asks once for a certificate.
pub async fn request_certificate(cfg: &CsrClientConfig) -> Result<WorkloadCert, IdentityError> {
    request_certificate_trusting(cfg, &[]).await
}

/// Asks once for a certificate, verifying the operator with the roots file and `held` (the
/// bundle of the current certificate: during a root rotation the operator may serve under a
/// root the mounted ConfigMap does not show yet).
async fn request_certificate_trusting(
    cfg: &CsrClientConfig,
    held: &[CertificateDer<'static>],
) -> Result<WorkloadCert, IdentityError> {
    let read = |what: &'static str, path: &PathBuf| {
        std::fs::read(path).map_err(|source| IdentityError::Read {
            what,
            path: path.display().to_string(),
            source,
        })
    };
    let token = String::from_utf8_lossy(&read("service account token", &cfg.token_file)?)
        .trim()
        .to_string();
    let roots_pem = read("trust roots", &cfg.root_cert_file)?;

    let key = WorkloadKey::generate().map_err(|e| IdentityError::Key(e.to_string()))?;
    let csr = key
        .csr_pem(&cfg.identity)
        .map_err(|e| IdentityError::Key(e.to_string()))?;
    let body = serde_json::to_vec(&CertificateRequest {
        csr,
        validity_seconds: cfg.validity.map(|d| d.as_secs()),
    })
    .map_err(|e| IdentityError::Key(e.to_string()))?;

    let roots = root_store(cfg, &roots_pem, held)?;
    let (status, answer) = post(
        cfg,
        PATH_CERTIFICATES,
        roots,
        None,
        Some(&token),
        Full::new(Bytes::from(body)),
    )
    .await?;
    if status != StatusCode::OK {
        let message = serde_json::from_slice::<ErrorResponse>(&answer)
            .map(|e| e.error)
            .unwrap_or_else(|_| String::from_utf8_lossy(&answer).chars().take(200).collect());
        return Err(IdentityError::Refused {
            status: status.as_u16(),
            message,
        });
    }
    let response: CertificateResponse =
        serde_json::from_slice(&answer).map_err(|e| IdentityError::BadResponse(e.to_string()))?;
    let cert = WorkloadCert::from_pem(
        response.cert_chain.concat().as_bytes(),
        key.private_key_pem().as_bytes(),
        response.roots.concat().as_bytes(),
    )
    .map_err(|e| IdentityError::BadResponse(e.to_string()))?;
    if cert.identity != cfg.identity {
        return Err(IdentityError::WrongIdentity {
            got: cert.identity,
            want: cfg.identity.clone(),
        });
    }
    Ok(cert)
}

/// The roots the operator's serving certificate is verified with: the mounted file's, and
/// those of the certificate held now.
fn root_store(
    cfg: &CsrClientConfig,
    roots_pem: &[u8],
    held: &[CertificateDer<'static>],
) -> Result<rustls::RootCertStore, IdentityError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(roots_pem).flatten() {
        let _ = roots.add(cert);
    }
    for cert in held {
        let _ = roots.add(cert.clone());
    }
    if roots.is_empty() {
        return Err(IdentityError::NoRoots(
            cfg.root_cert_file.display().to_string(),
        ));
    }
    Ok(roots)
}

async fn post(
    cfg: &CsrClientConfig,
    path: &str,
    roots: rustls::RootCertStore,
    client_cert: Option<&WorkloadCert>,
    token: Option<&str>,
    body: Full<Bytes>,
) -> Result<(StatusCode, Bytes), IdentityError> {
    let connect_err = |detail: String| IdentityError::Connect {
        address: cfg.address.clone(),
        detail,
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| connect_err(e.to_string()))?
        .with_root_certificates(roots);
    let tls = match client_cert {
        Some(cert) => builder
            .with_client_auth_cert(cert.chain.clone(), cert.key.clone_key())
            .map_err(|e| connect_err(e.to_string()))?,
        None => builder.with_no_client_auth(),
    };
    let name = ServerName::try_from(cfg.server_name.clone())
        .map_err(|e| connect_err(format!("server name {:?}: {e}", cfg.server_name)))?;

    let tcp = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::net::TcpStream::connect(&cfg.address),
    )
    .await
    .map_err(|_| connect_err("timed out".into()))?
    .map_err(|e| connect_err(e.to_string()))?;
    let stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect(name, tcp)
        .await
        .map_err(|e| connect_err(format!("TLS: {e}")))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| connect_err(e.to_string()))?;
    tokio::spawn(conn);

    let mut request = Request::builder()
        .method(Method::POST)
        .uri(path)
        .header(hyper::header::HOST, cfg.server_name.as_str())
        .header(hyper::header::CONTENT_TYPE, "application/json");
    if let Some(token) = token {
        request = request.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let request = request.body(body).map_err(|e| connect_err(e.to_string()))?;
    let response = tokio::time::timeout(Duration::from_secs(10), sender.send_request(request))
        .await
        .map_err(|_| connect_err("no answer within 10s".into()))?
        .map_err(|e| connect_err(e.to_string()))?;
    let status = response.status();
    let answer = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
        .collect()
        .await
        .map_err(|e| IdentityError::BadResponse(e.to_string()))?
        .to_bytes();
    Ok((status, answer))
}

/// Keeps the proxy's certificate fresh: requests, offers, then follows the trust bundle
/// until the renewal point (or an earlier one a trust poll asks for). Runs until dropped.
pub async fn run_csr_client(cfg: CsrClientConfig, sink: CertSink) {
    let mut backoff = RETRY_MIN;
    let current = sink.subscribe();
    let mut polls = TrustPolls::default();
    loop {
        let held = held_cert(&current)
            .map(|c| c.roots.clone())
            .unwrap_or_default();
        let wait = match request_certificate_trusting(&cfg, &held).await {
            Ok(cert) => {
                let received = SystemTime::now();
                let due = crate::pki::renew_at(
                    received,
                    cert.not_after,
                    cfg.renew_at,
                    crate::pki::random_jitter(),
                );
                match sink.offer(cert) {
                    Ok(()) => {
                        backoff = RETRY_MIN;
                        // Report the new certificate soon: a rotation waits for it.
                        polls.soon();
                        due.duration_since(SystemTime::now())
                            .unwrap_or(Duration::ZERO)
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "issued certificate unusable; retrying");
                        next_backoff(&mut backoff)
                    }
                }
            }
            Err(e) => {
                let wait = next_backoff(&mut backoff);
                tracing::warn!(
                    error = %e,
                    reason = e.metric_label(),
                    retry_in_ms = wait.as_millis() as u64,
                    "certificate request failed; retrying"
                );
                wait
            }
        };
        follow_trust(&cfg, &sink, &current, &mut polls, Instant::now() + wait).await;
    }
}

fn held_cert(current: &watch::Receiver<Option<Arc<TlsContext>>>) -> Option<Arc<WorkloadCert>> {
    current.borrow().as_ref().map(|ctx| ctx.cert.clone())
}

/// When the next trust poll is due, and how many failed in a row.
#[derive(Debug)]
struct TrustPolls {
    next: Instant,
    failures: u32,
}

impl Default for TrustPolls {
    fn default() -> Self {
        TrustPolls {
            next: Instant::now() + jittered(POLL_EVERY),
            failures: 0,
        }
    }
}

impl TrustPolls {
    fn soon(&mut self) {
        self.next = self.next.min(Instant::now() + Duration::from_secs(1));
    }
}

/// `every` ±20 %, so proxies started together do not poll in lockstep.
fn jittered(every: Duration) -> Duration {
    every.mul_f64(1.0 + 0.2 * crate::pki::random_jitter())
}

/// Polls the trust bundle until `due` (the renewal point), or until a poll says the held
/// certificate is from an old signer and the drawn moment comes. After three failed polls in
/// a row it returns too: a certificate the operator no longer accepts is renewed.
async fn follow_trust(
    cfg: &CsrClientConfig,
    sink: &CertSink,
    current: &watch::Receiver<Option<Arc<TlsContext>>>,
    polls: &mut TrustPolls,
    mut due: Instant,
) {
    loop {
        let now = Instant::now();
        if now >= due {
            return;
        }
        let Some(pod) = cfg.pod.as_deref() else {
            tokio::time::sleep_until(due.into()).await;
            return;
        };
        if polls.next > now {
            tokio::time::sleep_until(polls.next.min(due).into()).await;
            continue;
        }
        polls.next = now + jittered(POLL_EVERY);
        let Some(cert) = held_cert(current) else {
            continue;
        };
        match poll_trust(cfg, pod, &cert).await {
            Ok(answer) => {
                polls.failures = 0;
                let action = proxy_action(&cert.chain, &cert.roots, &answer, SystemTime::now());
                if let Some(roots) = action.new_roots {
                    let swapped = WorkloadCert {
                        chain: cert.chain.clone(),
                        key: cert.key.clone_key(),
                        roots: roots.into_iter().map(CertificateDer::from).collect(),
                        identity: cert.identity.clone(),
                        not_after: cert.not_after,
                        serial: cert.serial.clone(),
                    };
                    let count = swapped.roots.len();
                    match sink.offer(swapped) {
                        Ok(()) => {
                            tracing::info!(roots = count, "trust bundle updated");
                            polls.soon();
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "trust bundle unusable; keeping the current one")
                        }
                    }
                }
                if let Some(within) = action.renew_within {
                    let at = now + within.mul_f64((crate::pki::random_jitter() + 1.0) / 2.0);
                    if at < due {
                        tracing::info!(
                            in_ms = at.saturating_duration_since(now).as_millis() as u64,
                            "certificate is not from the current signer; renewing early"
                        );
                        due = at;
                    }
                }
            }
            Err(e) => {
                polls.failures += 1;
                tracing::debug!(error = %e, failures = polls.failures, "trust poll failed");
                if polls.failures >= 3 {
                    polls.failures = 0;
                    tracing::warn!(error = %e, "trust polls keep failing; renewing the certificate");
                    return;
                }
            }
        }
    }
}

/// One trust poll: with the held certificate as client certificate (that proves who reports),
/// and without it when the operator refuses it (its root was dropped while this proxy was
/// away), so the answer still tells it to renew.
async fn poll_trust(
    cfg: &CsrClientConfig,
    pod: &str,
    cert: &WorkloadCert,
) -> Result<TrustAnswer, IdentityError> {
    let report = trust_report(pod, &cert.chain, &cert.roots, SystemTime::now());
    let body = serde_json::to_vec(&report).map_err(|e| IdentityError::Key(e.to_string()))?;
    let file = std::fs::read(&cfg.root_cert_file).unwrap_or_default();
    let payload = || Full::new(Bytes::from(body.clone()));
    let roots = || root_store(cfg, &file, &cert.roots);
    let (status, answer) = match post(cfg, PATH_TRUST, roots()?, Some(cert), None, payload()).await
    {
        Err(IdentityError::Connect { .. }) => {
            post(cfg, PATH_TRUST, roots()?, None, None, payload()).await?
        }
        other => other?,
    };
    if status != StatusCode::OK {
        return Err(IdentityError::Refused {
            status: status.as_u16(),
            message: String::from_utf8_lossy(&answer).chars().take(200).collect(),
        });
    }
    serde_json::from_slice(&answer).map_err(|e| IdentityError::BadResponse(e.to_string()))
}

fn next_backoff(backoff: &mut Duration) -> Duration {
    let now = *backoff;
    *backoff = (*backoff * 2).min(RETRY_MAX);
    now
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::DISCOVERY_SERVER_NAME;
    use crate::pki::MeshCa;
    use hyper::body::Incoming;

    const ID: &str = "spiffe://cluster.local/ns/pets/sa/web";
    const TOKEN: &str = "the-token";

    /// A stand-in for the operator's endpoint: checks the token, signs with a real MeshCa.
    async fn csr_endpoint(ca: Arc<MeshCa>) -> std::net::SocketAddr {
        let serving = ca
            .sign_serving(
                &[DISCOVERY_SERVER_NAME.to_string()],
                Duration::from_secs(3600),
            )
            .unwrap();
        let chain = CertificateDer::pem_slice_iter(serving.cert_chain_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key =
            rustls::pki_types::PrivateKeyDer::from_pem_slice(serving.key_pem.as_bytes()).unwrap();
        let tls = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let Ok(stream) = acceptor.accept(tcp).await else {
                    continue;
                };
                let ca = ca.clone();
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let ca = ca.clone();
                    async move {
                        let authorized = req
                            .headers()
                            .get(hyper::header::AUTHORIZATION)
                            .is_some_and(|v| v == format!("Bearer {TOKEN}").as_str());
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        let (status, json) = if !authorized {
                            (
                                403,
                                serde_json::to_vec(&ErrorResponse::new("token not accepted"))
                                    .unwrap(),
                            )
                        } else {
                            let r: CertificateRequest = serde_json::from_slice(&body).unwrap();
                            let issued = ca
                                .sign_workload_csr(
                                    &r.csr,
                                    ID,
                                    Duration::from_secs(3600),
                                    SystemTime::now(),
                                )
                                .unwrap();
                            (
                                200,
                                serde_json::to_vec(&CertificateResponse::from(issued)).unwrap(),
                            )
                        };
                        Ok::<_, std::convert::Infallible>(
                            hyper::Response::builder()
                                .status(status)
                                .body(Full::new(Bytes::from(json)))
                                .unwrap(),
                        )
                    }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service),
                );
            }
        });
        addr
    }

    fn config(
        dir: &std::path::Path,
        ca: &MeshCa,
        addr: std::net::SocketAddr,
        token: &str,
    ) -> CsrClientConfig {
        std::fs::write(dir.join("token"), token).unwrap();
        std::fs::write(dir.join("root-cert.pem"), ca.roots_pem()).unwrap();
        CsrClientConfig {
            address: addr.to_string(),
            server_name: DISCOVERY_SERVER_NAME.to_string(),
            token_file: dir.join("token"),
            root_cert_file: dir.join("root-cert.pem"),
            identity: ID.to_string(),
            validity: Some(Duration::from_secs(600)),
            renew_at: 0.5,
            pod: None,
        }
    }

    fn tempdir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("weft-identity-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[tokio::test]
    async fn a_certificate_is_issued_for_the_requested_identity() {
        let ca =
            Arc::new(MeshCa::generate_root("cluster.local", Duration::from_secs(86400)).unwrap());
        let addr = csr_endpoint(ca.clone()).await;
        let dir = tempdir("ok");
        let cert = request_certificate(&config(&dir, &ca, addr, TOKEN))
            .await
            .unwrap();
        assert_eq!(cert.identity, ID);
        assert!(!cert.roots.is_empty());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn a_refusal_carries_the_operators_message() {
        let ca =
            Arc::new(MeshCa::generate_root("cluster.local", Duration::from_secs(86400)).unwrap());
        let addr = csr_endpoint(ca.clone()).await;
        let dir = tempdir("refused");
        let err = request_certificate(&config(&dir, &ca, addr, "wrong"))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, IdentityError::Refused { status: 403, message } if message == "token not accepted"),
            "{err}"
        );
        assert_eq!(err.metric_label(), "refused");
        // An issuer outage (the operator's 503) is logged as one, not as a refusal.
        let outage = IdentityError::Refused {
            status: 503,
            message: "Vault at http://198.18.0.1:18217 (pki/sign/weft) is unavailable".into(),
        };
        assert_eq!(outage.metric_label(), "unavailable");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn the_client_feeds_the_sink_and_the_proxy_becomes_ready() {
        let ca =
            Arc::new(MeshCa::generate_root("cluster.local", Duration::from_secs(86400)).unwrap());
        let addr = csr_endpoint(ca.clone()).await;
        let dir = tempdir("sink");
        let (ctx, inputs) = super::super::ProxyContext::new(super::super::Settings::default());
        let client = tokio::spawn(run_csr_client(config(&dir, &ca, addr, TOKEN), inputs.certs));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while ctx.tls().is_none() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(
            ctx.tls().map(|t| t.cert.identity.clone()).as_deref(),
            Some(ID)
        );
        client.abort();
        let _ = std::fs::remove_dir_all(dir);
    }
}
