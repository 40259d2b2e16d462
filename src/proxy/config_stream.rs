//! The config-stream client (SPEC §8): once the proxy holds its workload certificate it opens
//! `GET /v1/config/stream?pod=<POD_NAME>&delta=1&features=…` on the operator over mTLS (HTTP/2), offers
//! every snapshot line to the [`SnapshotSink`] (a delta line is spliced onto the running
//! snapshot first, [`crate::snapshot::delta`]), and acknowledges what it runs with
//! `POST /v1/config/ack` on the same connection. A delta that does not apply reopens the
//! stream on the same connection (its first line is whole); a broken, refused or silent
//! stream is reopened with capped backoff; the last good snapshot stays in force meanwhile.

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
use crate::snapshot::delta::{DELTA_PREFIX, DeltaLine};
use crate::snapshot::stream::{
    Ack, LineDecoder, QUERY_DELTA, QUERY_FEATURES, QUERY_POD, Rejected, SILENCE_LIMIT,
};

const RETRY_MIN: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(15);
/// A stream that lived this long resets the backoff.
const HEALTHY_SESSION: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Streams reopened on one connection for deltas that did not apply; past this the connection
/// is closed and reopened with backoff, so a server sending only bad deltas costs little.
const RESYNCS_PER_CONNECTION: usize = 8;

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
    #[error("{0}; asking for a whole snapshot")]
    Resync(String),
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
    let result = follow_resyncing(cfg, sender, sink).await;
    conn.abort();
    result
}

/// Follows the stream on one connection; when a delta does not apply, reopens it there (its
/// first line is whole), at most [`RESYNCS_PER_CONNECTION`] times.
async fn follow_resyncing(
    cfg: &ConfigStreamConfig,
    sender: hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    sink: &SnapshotSink,
) -> StreamError {
    let mut resyncs = 0;
    loop {
        match follow(cfg, sender.clone(), sink).await {
            StreamError::Resync(why) if resyncs < RESYNCS_PER_CONNECTION => {
                resyncs += 1;
                tracing::info!(reason = %why, "config delta did not apply; reopening the stream for a whole snapshot");
            }
            other => return other,
        }
    }
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
    let uri = format!(
        "{PATH_CONFIG_STREAM}?{QUERY_POD}={}&{QUERY_DELTA}=1&{QUERY_FEATURES}={}",
        cfg.pod,
        crate::snapshot::compat::Features::all().query_value()
    );
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
            let rejected = match offer_line(sink, &line) {
                Ok(r) => r,
                // The body's drop resets this stream; the caller opens another.
                Err(why) => return StreamError::Resync(why),
            };
            if let Some(r) = &rejected {
                tracing::warn!(error = %r.reason, version = %r.version, "config snapshot rejected; keeping the last good one");
            }
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

/// Offers one line, whole or delta, to `sink`: Ok with the rejection to acknowledge, if any;
/// Err (why) when a delta does not apply to the running snapshot and a whole one is needed.
fn offer_line(sink: &SnapshotSink, line: &[u8]) -> Result<Option<Rejected>, String> {
    if !line.starts_with(DELTA_PREFIX) {
        return Ok(sink.offer(line).err().map(|e| Rejected {
            version: serde_json::from_slice::<serde_json::Value>(line)
                .ok()
                .and_then(|v| v.get("version")?.as_str().map(String::from))
                .unwrap_or_default(),
            reason: e.to_string(),
        }));
    }
    let delta = serde_json::from_slice::<DeltaLine>(line)
        .map_err(|e| format!("config delta is not valid JSON of the delta schema: {e}"))?
        .delta;
    let version = delta.version().to_string();
    let snapshot = {
        let running = sink.current();
        delta
            .rebuild(running.as_ref().map(|r| &r.snapshot))
            .map_err(|e| e.to_string())?
    };
    Ok(sink.offer_snapshot(snapshot).err().map(|e| Rejected {
        version,
        reason: e.to_string(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::ProxyContext;
    use serde_json::{Value, json};

    /// A whole snapshot of `version` with one ClusterIP Service per port of `ports`.
    fn whole(version: &str, ports: &[u16]) -> Value {
        json!({
            "schemaVersion": 1, "version": version,
            "identity": "spiffe://cluster.local/ns/pets/sa/web",
            "trustDomain": "cluster.local",
            "inbound": {"defaultMode": "PERMISSIVE"},
            "outbound": {"services": ports.iter().map(|&p| service(p)).collect::<Vec<_>>()},
            "peers": [{"identity": "spiffe://cluster.local/ns/pets/sa/web",
                       "workload": {"name": "web", "namespace": "pets"}}]
        })
    }

    fn service(port: u16) -> Value {
        json!({"clusterIp": "198.19.0.10", "port": port, "name": "db.pets.svc.cluster.local",
               "endpoints": [{"ip": "198.18.0.7", "port": 8080, "meshed": false}]})
    }

    /// A delta line onto `base`: `snapshot` without its lists, and the lists' pieces.
    fn delta(base: &str, mut snapshot: Value, services: Value) -> Vec<u8> {
        snapshot["outbound"]["services"] = json!([]);
        let peers = snapshot
            .as_object_mut()
            .unwrap()
            .remove("peers")
            .map(|_| json!([{"keep": {"from": 0, "len": 1}}]));
        let mut body = json!({"base": base, "snapshot": snapshot, "services": services});
        if let Some(p) = peers {
            body["peers"] = p;
        }
        let line = serde_json::to_vec(&json!({ "delta": body })).unwrap();
        assert!(line.starts_with(DELTA_PREFIX));
        line
    }

    fn running(sink: &SnapshotSink) -> Value {
        serde_json::to_value(&sink.current().expect("a config").snapshot).unwrap()
    }

    #[test]
    fn a_delta_onto_the_running_version_applies_as_the_whole_snapshot_would() {
        let (_ctx, inputs) = ProxyContext::new(Default::default());
        let sink = &inputs.snapshot;
        let first = serde_json::to_vec(&whole("v1", &[80, 81, 82])).unwrap();
        assert_eq!(offer_line(sink, &first), Ok(None));
        // 81 replaced by 90, the rest kept.
        let want = whole("v2", &[80, 90, 82]);
        let pieces = json!([{"keep": {"from": 0, "len": 1}}, {"add": [service(90)]},
                            {"keep": {"from": 2, "len": 1}}]);
        assert_eq!(
            offer_line(sink, &delta("v1", want.clone(), pieces)),
            Ok(None)
        );
        let decoded = crate::snapshot::decode_snapshot(&serde_json::to_vec(&want).unwrap());
        assert_eq!(
            running(sink),
            serde_json::to_value(decoded.unwrap()).unwrap()
        );
    }

    #[test]
    fn a_delta_for_another_base_or_that_does_not_splice_asks_for_a_whole_snapshot() {
        let (_ctx, inputs) = ProxyContext::new(Default::default());
        let sink = &inputs.snapshot;
        let keep_all = json!([{"keep": {"from": 0, "len": 2}}]);
        // Before any whole snapshot.
        let early = delta("v1", whole("v2", &[80, 81]), keep_all.clone());
        assert!(
            offer_line(sink, &early)
                .unwrap_err()
                .contains("before any whole")
        );
        let first = serde_json::to_vec(&whole("v1", &[80, 81])).unwrap();
        assert_eq!(offer_line(sink, &first), Ok(None));
        let before = running(sink);
        // The proxy rejected (or never got) v0's successor: it runs v1, not v9.
        let other = delta("v9", whole("v2", &[80, 81]), keep_all);
        let why = offer_line(sink, &other).unwrap_err();
        assert!(why.contains("for version v9, this proxy runs v1"), "{why}");
        for (pieces, says) in [
            (
                json!([{"keep": {"from": 1, "len": 2}}]),
                "outside the base list",
            ),
            (
                json!([{"keep": {"from": 0, "len": 2}}, {"keep": {"from": 0, "len": 2}}]),
                "overlaps",
            ),
            (json!([{"keep": {"from": 0}}]), "delta schema"),
        ] {
            let bad = delta("v1", whole("v2", &[80, 81]), pieces);
            let why = offer_line(sink, &bad).unwrap_err();
            assert!(why.contains(says), "{why}");
        }
        // A list in the snapshot as well as in pieces.
        let mut doubled: Value =
            serde_json::from_slice(&delta("v1", whole("v2", &[80]), json!([]))).unwrap();
        doubled["delta"]["snapshot"]["outbound"]["services"] = json!([service(80)]);
        let why = offer_line(sink, &serde_json::to_vec(&doubled).unwrap()).unwrap_err();
        assert!(why.contains("outbound.services"), "{why}");
        assert_eq!(running(sink), before, "nothing applied");
    }

    #[test]
    fn deltas_cannot_grow_a_snapshot_past_the_limit_a_whole_line_has() {
        // One Service with 60,000 endpoints: well under the limit as a line, more than half
        // of it as the proxy writes it back.
        let big = |port: u16| {
            let endpoints: Vec<Value> = (0..60_000u32)
                .map(|i| {
                    json!({"ip": format!("198.18.{}.{}", i / 250, i % 250 + 1),
                                "port": 8080, "meshed": false})
                })
                .collect();
            json!({"clusterIp": "198.19.0.10", "port": port,
                   "name": "db.pets.svc.cluster.local", "endpoints": endpoints})
        };
        let (_ctx, inputs) = ProxyContext::new(Default::default());
        let sink = &inputs.snapshot;
        let mut first = whole("v1", &[]);
        first["outbound"]["services"] = json!([big(80)]);
        let first = serde_json::to_vec(&first).unwrap();
        assert!(first.len() < crate::snapshot::MAX_SNAPSHOT_BYTES);
        assert_eq!(offer_line(sink, &first), Ok(None));
        // Keep it and add as much again: each line is small, the result is not.
        let line = delta(
            "v1",
            whole("v2", &[]),
            json!([{"keep": {"from": 0, "len": 1}}, {"add": [big(81)]}]),
        );
        let rejected = offer_line(sink, &line).unwrap().expect("rejected");
        assert_eq!(rejected.version, "v2");
        assert!(
            rejected.reason.contains("byte limit"),
            "{}",
            rejected.reason
        );
        assert_eq!(sink.current_version().as_deref(), Some("v1"));
    }

    #[test]
    fn a_rebuilt_snapshot_that_is_invalid_is_rejected_and_acked_as_a_whole_one() {
        let (_ctx, inputs) = ProxyContext::new(Default::default());
        let sink = &inputs.snapshot;
        let first = serde_json::to_vec(&whole("v1", &[80])).unwrap();
        assert_eq!(offer_line(sink, &first), Ok(None));
        // Two Services on one clusterIp:port: decode_snapshot refuses that whole; so does the
        // delta path.
        let line = delta(
            "v1",
            whole("v2", &[80, 80]),
            json!([{"keep": {"from": 0, "len": 1}}, {"add": [service(80)]}]),
        );
        let rejected = offer_line(sink, &line).unwrap().expect("rejected");
        assert_eq!(rejected.version, "v2");
        assert!(
            rejected.reason.contains("both claim"),
            "{}",
            rejected.reason
        );
        assert_eq!(sink.current_version().as_deref(), Some("v1"));
        // A gateway's running lists are not what it was sent: no delta onto them.
        let mut gw = whole("g1", &[80]);
        gw["gateway"] = json!({});
        assert_eq!(
            offer_line(sink, &serde_json::to_vec(&gw).unwrap()),
            Ok(None)
        );
        let onto_gw = delta(
            "g1",
            whole("g2", &[80]),
            json!([{"keep": {"from": 0, "len": 1}}]),
        );
        assert!(offer_line(sink, &onto_gw).unwrap_err().contains("gateway"));
    }
}

/// The client against the operator's real config routes (HTTP/2 over an in-memory pipe).
#[cfg(all(test, feature = "control-plane"))]
mod against_the_operator {
    use super::*;
    use crate::discovery::model::tests::{pod, service, view};
    use crate::discovery::server::{ConnectionId, PeerCert, router};
    use crate::discovery::{DiscoverySettings, DiscoveryState, MeshIndex, MeshView};
    use crate::proxy::ProxyContext;
    use hyper_util::service::TowerToHyperService;

    /// The unit tests' mesh with 40 more Services; `n` more pods of `web` and a Service each.
    fn mesh(n: usize) -> MeshView {
        let mut v = view();
        for i in 0..40 {
            let name = format!("svc-{i:02}");
            let ip = format!("198.19.1.{}", i + 10);
            v.services.push(service("pets", &name, &ip, "http"));
        }
        for i in 0..n {
            let (name, ip) = (format!("more-{i}"), format!("198.19.2.{}", i + 10));
            v.services.push(service("pets", &name, &ip, "http"));
            let (p, ip) = (format!("web-{}", i + 10), format!("198.18.1.{}", i + 20));
            v.pods.push(pod("pets", &p, &ip, "web", true));
        }
        v
    }

    async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !done() {
            assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn a_proxy_that_runs_another_version_resyncs_and_then_follows_deltas() {
        let (index_tx, index_rx) = watch::channel(Arc::new(MeshIndex::build(&mesh(0))));
        let state = DiscoveryState::from_index(
            index_rx,
            DiscoverySettings {
                trust_domain: "cluster.local".into(),
                operator_namespace: "weft-system".into(),
                root_namespace: "weft-system".into(),
                cluster_domain: "cluster.local".into(),
            },
            Default::default(),
        );
        // One connection of pets/web-1's proxy, as the operator's TLS server would see it.
        let peer = PeerCert {
            spiffe_id: Some("spiffe://cluster.local/ns/pets/sa/web".into()),
            expires: None,
            connection: ConnectionId::new(),
            address: Some("198.18.1.2".parse().unwrap()),
        };
        let (client_io, server_io) = tokio::io::duplex(1 << 16);
        let app = TowerToHyperService::new(router(state.clone()).layer(axum::Extension(peer)));
        tokio::spawn(
            hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(server_io), app),
        );
        let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .handshake(TokioIo::new(client_io))
            .await
            .unwrap();
        tokio::spawn(conn);
        let cfg = ConfigStreamConfig {
            address: "in-memory".into(),
            server_name: "weft-operator.weft-system.svc".into(),
            pod: "web-1".into(),
        };
        let (_ctx, inputs) = ProxyContext::new(Default::default());
        let sink = &inputs.snapshot;
        let version = |n| {
            MeshIndex::build(&mesh(n))
                .snapshot_for("pets", "web-1")
                .unwrap()
        };
        let script = async {
            let (v0, _) = version(0);
            eventually("the first, whole snapshot", || {
                sink.current_version() == Some(v0.clone())
            })
            .await;
            // The proxy runs something else than what the stream sent last (as after
            // rejecting it): the next line, a delta onto v0, cannot apply.
            let (other, other_bytes) = version(3);
            sink.offer(&other_bytes).unwrap();
            assert_eq!(sink.current_version(), Some(other));
            let (v1, _) = version(1);
            index_tx.send_replace(Arc::new(MeshIndex::build(&mesh(1))));
            eventually("a whole v1 after the resync", || {
                sink.current_version() == Some(v1.clone())
            })
            .await;
            // The old stream is gone; the new one follows with deltas.
            eventually("one stream", || state.proxies("t").proxies.len() == 1).await;
            let (v2, whole) = version(2);
            index_tx.send_replace(Arc::new(MeshIndex::build(&mesh(2))));
            eventually("v2", || sink.current_version() == Some(v2.clone())).await;
            let running = sink.current().unwrap();
            assert_eq!(
                serde_json::to_value(&running.snapshot).unwrap(),
                serde_json::to_value(crate::snapshot::decode_snapshot(&whole).unwrap()).unwrap()
            );
            // The operator saw the acks of what the proxy runs.
            eventually("v2 acked", || {
                state.proxies("t").proxies[0].acked.as_deref() == Some(v2.as_str())
            })
            .await;
        };
        tokio::select! {
            () = script => {}
            err = follow_resyncing(&cfg, sender, sink) => panic!("the stream ended: {err}"),
        }
    }
}
