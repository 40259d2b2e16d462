//! The config-stream client (SPEC §8): once the proxy holds its workload certificate it opens
//! `GET /v1/config/stream?pod=<POD_NAME>` on the operator over mTLS (HTTP/2), offers every
//! snapshot line to the [`SnapshotSink`], and acknowledges what it runs with
//! `POST /v1/config/ack` on the same connection. A broken, refused or silent stream is
//! reopened with capped backoff; the last good snapshot stays in force meanwhile.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::ServerName;
use tokio::sync::watch;

use super::inputs::SnapshotSink;
use super::tls::TlsContext;
use crate::contract::{PATH_CONFIG_ACK, PATH_CONFIG_STREAM};
use crate::snapshot::stream::{Ack, LineDecoder, QUERY_POD, Rejected, SILENCE_LIMIT};

const RETRY_MIN: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(15);
/// A stream that lived this long resets the backoff.
const HEALTHY_SESSION: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct ConfigStreamConfig {
    /// `host:port` of the operator's discovery port.
    pub address: String,
    /// TLS server name of the operator's certificate.
    pub server_name: String,
    /// This proxy's pod (POD_NAME).
    pub pod: String,
}

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("cannot reach the config server {address}: {detail}")]
    Connect { address: String, detail: String },
    #[error("config server answered {status}: {message}")]
    Refused { status: u16, message: String },
    #[error("config stream broke: {0}")]
    Broken(String),
    #[error("config stream was silent for {0:?}; reconnecting")]
    Silent(Duration),
    #[error("config stream ended")]
    Ended,
}

/// Keeps the stream open for the life of the proxy.
pub async fn run_config_stream(
    cfg: ConfigStreamConfig,
    mut certs: watch::Receiver<Option<Arc<TlsContext>>>,
    sink: SnapshotSink,
) {
    let mut backoff = RETRY_MIN;
    loop {
        // No certificate, no mTLS: wait for the CSR client's first one.
        let tls = loop {
            if let Some(tls) = certs.borrow_and_update().clone() {
                break tls;
            }
            if certs.changed().await.is_err() {
                return;
            }
        };
        let started = Instant::now();
        let err = session(&cfg, &tls, &sink).await;
        tracing::warn!(error = %err, "config stream closed; reconnecting");
        if started.elapsed() >= HEALTHY_SESSION {
            backoff = RETRY_MIN;
        }
        // ±20% jitter so proxies of a restarted operator do not reconnect in lockstep.
        let jitter = 1.0 + 0.2 * crate::pki::random_jitter();
        tokio::time::sleep(backoff.mul_f64(jitter)).await;
        backoff = (backoff * 2).min(RETRY_MAX);
    }
}

fn client_config(tls: &TlsContext) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    for root in &tls.cert.roots {
        roots.add(root.clone()).map_err(|e| e.to_string())?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_client_auth_cert(tls.cert.chain.clone(), tls.cert.key.clone_key())
        .map_err(|e| e.to_string())?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// One connection: runs until the stream fails; returns why.
async fn session(cfg: &ConfigStreamConfig, tls: &TlsContext, sink: &SnapshotSink) -> StreamError {
    let connect = |detail: String| StreamError::Connect {
        address: cfg.address.clone(),
        detail,
    };
    let config = match client_config(tls) {
        Ok(c) => c,
        Err(e) => return connect(e),
    };
    let name = match ServerName::try_from(cfg.server_name.clone()) {
        Ok(n) => n,
        Err(e) => return connect(format!("server name {:?}: {e}", cfg.server_name)),
    };
    let tcp = match tokio::time::timeout(
        CONNECT_TIMEOUT,
        tokio::net::TcpStream::connect(&cfg.address),
    )
    .await
    {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => return connect(e.to_string()),
        Err(_) => return connect("timed out".into()),
    };
    let _ = tcp.set_nodelay(true);
    let stream = match tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
    {
        Ok(s) => s,
        Err(e) => return connect(format!("TLS: {e}")),
    };
    let (sender, conn) = match hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(10))
        .handshake(TokioIo::new(stream))
        .await
    {
        Ok(pair) => pair,
        Err(e) => return connect(format!("HTTP/2: {e}")),
    };
    let conn = tokio::spawn(conn);
    let result = follow(cfg, sender, sink).await;
    conn.abort();
    result
}

fn request(
    method: Method,
    uri: String,
    host: &str,
    body: Bytes,
) -> Result<Request<Full<Bytes>>, StreamError> {
    Request::builder()
        .method(method)
        .uri(format!("https://{host}{uri}"))
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(body))
        .map_err(|e| StreamError::Broken(e.to_string()))
}

async fn refused(response: Response<Incoming>) -> StreamError {
    let status = response.status().as_u16();
    let body = Limited::new(response.into_body(), 64 * 1024)
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let message = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(String::from))
        .unwrap_or_else(|| String::from_utf8_lossy(&body).chars().take(200).collect());
    StreamError::Refused { status, message }
}

async fn follow(
    cfg: &ConfigStreamConfig,
    mut sender: hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    sink: &SnapshotSink,
) -> StreamError {
    let uri = format!("{PATH_CONFIG_STREAM}?{QUERY_POD}={}", cfg.pod);
    let req = match request(Method::GET, uri, &cfg.server_name, Bytes::new()) {
        Ok(r) => r,
        Err(e) => return e,
    };
    let response = match sender.send_request(req).await {
        Ok(r) => r,
        Err(e) => return StreamError::Broken(e.to_string()),
    };
    if response.status() != StatusCode::OK {
        return refused(response).await;
    }
    tracing::info!(address = %cfg.address, "config stream open");
    let mut body = response.into_body();
    let mut lines = LineDecoder::default();
    loop {
        let frame = match tokio::time::timeout(SILENCE_LIMIT, body.frame()).await {
            Err(_) => return StreamError::Silent(SILENCE_LIMIT),
            Ok(None) => return StreamError::Ended,
            Ok(Some(Err(e))) => return StreamError::Broken(e.to_string()),
            Ok(Some(Ok(frame))) => frame,
        };
        let Some(data) = frame.data_ref() else {
            continue;
        };
        let complete = match lines.push(data) {
            Ok(l) => l,
            Err(e) => return StreamError::Broken(e.to_string()),
        };
        for line in complete {
            let rejected = match sink.offer(&line) {
                Ok(_) => None,
                Err(e) => {
                    let version = serde_json::from_slice::<serde_json::Value>(&line)
                        .ok()
                        .and_then(|v| v.get("version")?.as_str().map(String::from))
                        .unwrap_or_default();
                    tracing::warn!(error = %e, %version, "config snapshot rejected; keeping the last good one");
                    Some(Rejected {
                        version,
                        reason: e.to_string(),
                    })
                }
            };
            let ack = Ack {
                pod: cfg.pod.clone(),
                version: sink.current_version(),
                rejected,
            };
            // Acks go out beside the stream; a lost one is repaired by the next.
            let body = Bytes::from(serde_json::to_vec(&ack).unwrap_or_default());
            if let Ok(req) = request(
                Method::POST,
                PATH_CONFIG_ACK.to_string(),
                &cfg.server_name,
                body,
            ) {
                let mut sender = sender.clone();
                tokio::spawn(async move {
                    match sender.send_request(req).await {
                        Ok(r) if r.status().is_success() => {}
                        Ok(r) => tracing::debug!(status = %r.status(), "config ack refused"),
                        Err(e) => tracing::debug!("config ack failed: {e}"),
                    }
                });
            }
        }
    }
}
