//! The operator's HTTPS serving: its TLS certificate (webhook and discovery names) from the mesh
//! CA, swapped in place through a rustls resolver (renewed at half its lifetime or when the CA
//! changes, no restart, no dropped connection), and the accept loop [`serve_tls`] (also the
//! benchmark's) with its limits ([`ServingLimits`]: connection caps, header and idle
//! timeouts, HTTP/2 limits), which reads on past the answer any request body a handler
//! leaves unread.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use axum::Router;
use hyper::Request;
use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};
use hyper::service::Service as _;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::sync::watch;

use crate::discovery::PeerCert;
use crate::discovery::server::ConnectionId;
use crate::pki::MeshCa;

pub const SERVING_TTL: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, Default)]
pub struct ServingCertResolver {
    current: RwLock<Option<Arc<CertifiedKey>>>,
}

impl ResolvesServerCert for ServingCertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.read().ok()?.clone()
    }
}

impl ServingCertResolver {
    pub fn is_loaded(&self) -> bool {
        self.current.read().map(|c| c.is_some()).unwrap_or(false)
    }

    fn install(&self, chain_pem: &str, key_pem: &str) -> anyhow::Result<()> {
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(chain_pem.as_bytes()).collect::<Result<_, _>>()?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())?;
        let provider = rustls::crypto::ring::default_provider();
        let certified = CertifiedKey::from_der(chain, key, &provider)?;
        if let Ok(mut current) = self.current.write() {
            *current = Some(Arc::new(certified));
        }
        Ok(())
    }
}

/// DNS names of the operator's Services in `namespace`.
pub fn dns_names(namespace: &str) -> Vec<String> {
    ["weft-webhook", "weft-operator"]
        .iter()
        .flat_map(|svc| {
            [
                format!("{svc}.{namespace}.svc"),
                format!("{svc}.{namespace}.svc.cluster.local"),
            ]
        })
        .collect()
}

/// Keeps `resolver` holding a certificate from the current CA.
pub async fn keep_serving_cert(
    resolver: Arc<ServingCertResolver>,
    mut ca: watch::Receiver<Option<Arc<MeshCa>>>,
    namespace: String,
) {
    let names = dns_names(&namespace);
    loop {
        let current = ca.borrow_and_update().clone();
        let mut renew_in = Duration::from_secs(5);
        if let Some(ca) = current {
            match ca.sign_serving(&names, SERVING_TTL) {
                Ok(cert) => match resolver.install(&cert.cert_chain_pem, &cert.key_pem) {
                    Ok(()) => {
                        let lifetime = cert
                            .not_after
                            .duration_since(SystemTime::now())
                            .unwrap_or_default();
                        renew_in = (lifetime / 2).max(Duration::from_secs(60));
                        tracing::info!(
                            renew_in_s = renew_in.as_secs(),
                            "serving certificate issued for {names:?}"
                        );
                    }
                    Err(e) => tracing::error!("serving certificate: {e:#}"),
                },
                Err(e) => tracing::error!("serving certificate: {e}"),
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(renew_in) => {}
            changed = ca.changed() => if changed.is_err() { return },
        }
    }
}

// === the accept loop ===

/// The TLS acceptor: the hot-swapped serving certificate and, when `client_roots` is
/// given, optional client certificates verified against the mesh roots (the CSR endpoint
/// is reached without one; the config stream needs one).
pub fn acceptor(
    resolver: &Arc<ServingCertResolver>,
    client_roots: Option<&MeshCa>,
) -> tokio_rustls::TlsAcceptor {
    let builder = rustls::ServerConfig::builder();
    let verifier = client_roots.and_then(|ca| {
        let mut roots = rustls::RootCertStore::empty();
        for der in crate::pki::certificates_from_pem(&ca.roots_pem()).ok()? {
            roots.add(der.into()).ok()?;
        }
        rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
            .allow_unauthenticated()
            .build()
            .ok()
    });
    let mut config = match verifier {
        Some(v) => builder.with_client_cert_verifier(v),
        None => builder.with_no_client_auth(),
    }
    .with_cert_resolver(resolver.clone());
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

/// What the client certificate of an accepted connection proves.
pub fn peer_cert(certs: Option<&[rustls::pki_types::CertificateDer<'_>]>) -> PeerCert {
    let Some(leaf) = certs.and_then(|c| c.first()) else {
        return PeerCert::default();
    };
    let expires = x509_parser::parse_x509_certificate(leaf)
        .ok()
        .and_then(|(_, c)| {
            k8s_openapi::jiff::Timestamp::from_second(c.validity().not_after.timestamp()).ok()
        })
        .map(|t| t.to_string());
    PeerCert {
        spiffe_id: crate::pki::spiffe_id_of(leaf),
        expires,
        // Called once per accepted connection: every request on it carries this one.
        connection: ConnectionId::new(),
        // The accept loop knows it; see `serve_tls_limited`.
        address: None,
    }
}

/// HTTPS on `addr` with the hot-swapped serving certificate (and, with `client_roots`, the
/// peer's proven identity as a [`PeerCert`] request extension), within `limits`.
pub async fn serve_tls(
    addr: SocketAddr,
    resolver: Arc<ServingCertResolver>,
    app: Router,
    client_roots: Option<watch::Receiver<Option<Arc<MeshCa>>>>,
    limits: ServingLimits,
) {
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(%addr, "cannot listen: {e}");
            return;
        }
    };
    serve_tls_limited(listener, resolver, app, client_roots, limits).await;
}

/// [`serve_tls`] on a listener the caller bound (an ephemeral port in tests and benchmarks),
/// with the default [`ServingLimits`].
pub async fn serve_tls_on(
    listener: tokio::net::TcpListener,
    resolver: Arc<ServingCertResolver>,
    app: Router,
    client_roots: Option<watch::Receiver<Option<Arc<MeshCa>>>>,
) {
    serve_tls_limited(
        listener,
        resolver,
        app,
        client_roots,
        ServingLimits::default(),
    )
    .await;
}

/// [`serve_tls_on`] within `limits`.
pub async fn serve_tls_limited(
    listener: tokio::net::TcpListener,
    resolver: Arc<ServingCertResolver>,
    app: Router,
    mut client_roots: Option<watch::Receiver<Option<Arc<MeshCa>>>>,
    limits: ServingLimits,
) {
    let current = |roots: &mut Option<watch::Receiver<Option<Arc<MeshCa>>>>| {
        let ca = roots.as_mut().and_then(|r| r.borrow_and_update().clone());
        acceptor(&resolver, ca.as_deref())
    };
    let mut acceptor = current(&mut client_roots);
    let admission = Arc::new(ConnectionLimiter::new(&limits));
    let limits = Arc::new(limits);
    loop {
        let Some((tcp, peer, slot)) = accept(&listener, &admission).await else {
            continue;
        };
        if client_roots
            .as_ref()
            .is_some_and(|r| r.has_changed().unwrap_or(false))
        {
            acceptor = current(&mut client_roots);
        }
        let (acceptor, mut app, limits) = (acceptor.clone(), app.clone(), limits.clone());
        let with_peer = client_roots.is_some();
        tokio::spawn(async move {
            let _slot = slot;
            let activity = Activity::new();
            let tcp = Watched::new(tcp, activity.clone());
            let Ok(Ok(tls)) =
                tokio::time::timeout(limits.tls_handshake_timeout, acceptor.accept(tcp)).await
            else {
                return;
            };
            if with_peer {
                let mut proven = peer_cert(tls.get_ref().1.peer_certificates());
                // The config stream binds a pod's stream to the pod's own address.
                proven.address = Some(peer.ip());
                app = app.layer(axum::Extension(proven));
            }
            serve_connection(tls, peer, app, &limits, activity).await;
        });
    }
}

/// Plain HTTP on a listener the caller bound, within `limits`: the monitoring port (kubelet
/// probes and Prometheus scrapes speak plain HTTP to it).
pub async fn serve_plain_on(listener: tokio::net::TcpListener, app: Router, limits: ServingLimits) {
    let admission = Arc::new(ConnectionLimiter::new(&limits));
    let limits = Arc::new(limits);
    loop {
        let Some((tcp, peer, slot)) = accept(&listener, &admission).await else {
            continue;
        };
        let (app, limits) = (app.clone(), limits.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let activity = Activity::new();
            let tcp = Watched::new(tcp, activity.clone());
            serve_connection(tcp, peer, app, &limits, activity).await;
        });
    }
}

/// The next connection within the caps, with its slot; `None` when accepting failed (out of
/// file descriptors: wait a little) or the connection was over a cap (closed at once).
async fn accept(
    listener: &tokio::net::TcpListener,
    admission: &Arc<ConnectionLimiter>,
) -> Option<(tokio::net::TcpStream, SocketAddr, ConnectionSlot)> {
    let Ok((tcp, peer)) = listener.accept().await else {
        tokio::time::sleep(Duration::from_millis(50)).await;
        return None;
    };
    match admission.admit(peer.ip()) {
        Ok(slot) => Some((tcp, peer, slot)),
        Err(refused) => {
            // Dropping the stream closes it before any TLS work is spent on it.
            admission.report(&refused, peer);
            None
        }
    }
}

/// Serves HTTP/1.1 or HTTP/2 on one connection until it ends, its first request is late
/// (slowloris), or it is idle for [`ServingLimits::idle_timeout`].
async fn serve_connection<IO>(
    io: IO,
    peer: SocketAddr,
    app: Router,
    limits: &ServingLimits,
    activity: Activity,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let app = TowerToHyperService::new(app);
    let requests = activity.clone();
    let body_read_timeout = limits.body_read_timeout;
    let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
        requests.request_started();
        request.extensions_mut().insert(ClientAddr(peer));
        app.call(request.map(|body| UnreadBody::new(body, body_read_timeout)))
    });
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // Also bounds the wait for the next request on a keep-alive connection: hyper starts
        // the timer whenever it waits for a request head.
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(H1_MAX_BUF_BYTES);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.h2_max_concurrent_streams)
        .max_header_list_size(limits.h2_max_header_list_bytes)
        .max_pending_accept_reset_streams(limits.h2_max_pending_accept_reset_streams)
        .max_local_error_reset_streams(limits.h2_max_local_error_reset_streams);
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(connection);
    tokio::select! {
        _ = connection.as_mut() => return,
        why = activity.expired(limits) => match why {
            Expired::NoRequest => {
                tracing::debug!("closing a connection that sent no request within the header timeout");
                return;
            }
            Expired::Idle => {}
        },
    }
    // Idle: a GOAWAY on HTTP/2 (a close on HTTP/1.1) lets the client know not to reuse it.
    connection.as_mut().graceful_shutdown();
    let _ = tokio::time::timeout(Duration::from_secs(1), connection).await;
}

/// The address a request came from, a request extension on every port served here (the
/// CSR endpoint rate-limits by it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub SocketAddr);

impl ClientAddr {
    /// What the address is counted as: see [`source_key`].
    pub fn source(&self) -> IpAddr {
        source_key(self.0.ip())
    }
}

// === limits of the served ports ===

/// Time a client has to complete the TLS handshake.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a client has to send a complete request head (HTTP/1.1, also between keep-alive
/// requests) and, on any connection, its first request.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection on which no byte moved either way for this long is closed. The config
/// stream writes a heartbeat every [`crate::snapshot::stream::HEARTBEAT`], so a proxy's
/// stream is never idle.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
const _: () = assert!(IDLE_TIMEOUT.as_secs() >= 3 * crate::snapshot::stream::HEARTBEAT.as_secs());
/// Time a client has to send a request's whole body, from the request's start: a client
/// trickling a body (the slow-POST attack) is answered with an error then. Longer than the
/// API server's longest webhook timeout (30 s).
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// HTTP/2 streams one connection may have open at once (a proxy uses one for its config
/// stream plus short ones for acks and certificates).
pub const H2_MAX_CONCURRENT_STREAMS: u32 = 100;
/// Largest HTTP/2 header list (decoded) a request may carry: room for the longest bearer
/// token the CSR endpoint accepts ([`super::csr::MAX_TOKEN_BYTES`]) and ordinary headers.
pub const H2_MAX_HEADER_LIST_BYTES: u32 = 32 * 1024;
/// Streams a client may reset before the server has accepted them, before the connection
/// is closed with GOAWAY(ENHANCE_YOUR_CALM): the 2023 "rapid reset" defence.
pub const H2_MAX_PENDING_ACCEPT_RESET_STREAMS: usize = 20;
/// Streams the server may reset for protocol errors on one connection before closing it
/// (RUSTSEC-2024-0003).
pub const H2_MAX_LOCAL_ERROR_RESET_STREAMS: usize = 256;
/// HTTP/1.1 read buffer, which bounds a request head (request line and headers).
pub const H1_MAX_BUF_BYTES: usize = 64 * 1024;

/// What one served port tolerates from its clients. `weft operator` flags set the connection
/// caps and timeouts per port (README, "Security"); the HTTP/2 limits are the constants above.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServingLimits {
    pub tls_handshake_timeout: Duration,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub body_read_timeout: Duration,
    /// Open connections on the port, from all sources together.
    pub max_connections: usize,
    /// Open connections from one source address (an IPv6 source counts by its /64).
    pub max_connections_per_source: usize,
    pub h2_max_concurrent_streams: u32,
    pub h2_max_header_list_bytes: u32,
    pub h2_max_pending_accept_reset_streams: usize,
    pub h2_max_local_error_reset_streams: usize,
}

impl ServingLimits {
    /// :15012, the CSR endpoint and config stream: one long-lived connection per proxy,
    /// several per source only behind NAT.
    pub const DISCOVERY_MAX_CONNECTIONS: usize = 16_384;
    pub const DISCOVERY_MAX_CONNECTIONS_PER_SOURCE: usize = 1_024;
    /// :15017, the webhook: the API servers are its only clients.
    pub const WEBHOOK_MAX_CONNECTIONS: usize = 1_024;
    pub const WEBHOOK_MAX_CONNECTIONS_PER_SOURCE: usize = 256;
    /// :15014, monitoring: kubelet probes and Prometheus.
    pub const MONITORING_MAX_CONNECTIONS: usize = 256;
    pub const MONITORING_MAX_CONNECTIONS_PER_SOURCE: usize = 32;

    /// The timeouts and HTTP/2 limits above with the given connection caps.
    pub fn with_caps(max_connections: usize, max_connections_per_source: usize) -> Self {
        ServingLimits {
            tls_handshake_timeout: TLS_HANDSHAKE_TIMEOUT,
            header_read_timeout: HEADER_READ_TIMEOUT,
            idle_timeout: IDLE_TIMEOUT,
            body_read_timeout: BODY_READ_TIMEOUT,
            max_connections: max_connections.max(1),
            max_connections_per_source: max_connections_per_source.max(1),
            h2_max_concurrent_streams: H2_MAX_CONCURRENT_STREAMS,
            h2_max_header_list_bytes: H2_MAX_HEADER_LIST_BYTES,
            h2_max_pending_accept_reset_streams: H2_MAX_PENDING_ACCEPT_RESET_STREAMS,
            h2_max_local_error_reset_streams: H2_MAX_LOCAL_ERROR_RESET_STREAMS,
        }
    }
}

impl Default for ServingLimits {
    /// The discovery port's caps (the most generous).
    fn default() -> Self {
        ServingLimits::with_caps(
            Self::DISCOVERY_MAX_CONNECTIONS,
            Self::DISCOVERY_MAX_CONNECTIONS_PER_SOURCE,
        )
    }
}

// === connection caps ===

/// Counts a port's open connections, in all and per source, and refuses those over a cap.
#[derive(Debug)]
pub struct ConnectionLimiter {
    max: usize,
    per_source: usize,
    open: Mutex<OpenConnections>,
    /// When a refusal was last logged (ms since `started`), so a flood logs once a period.
    last_report_ms: AtomicU64,
    started: Instant,
}

#[derive(Debug, Default)]
struct OpenConnections {
    total: usize,
    by_source: HashMap<IpAddr, usize>,
}

/// Why a connection was closed unserved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CapReached {
    Port(usize),
    Source(usize),
}

/// An admitted connection's place; freed when dropped.
#[derive(Debug)]
pub struct ConnectionSlot {
    limiter: Arc<ConnectionLimiter>,
    source: IpAddr,
}

/// Refusals are logged at most once in this period (with how many there were).
const REFUSAL_REPORT_PERIOD: Duration = Duration::from_secs(10);

impl ConnectionLimiter {
    pub fn new(limits: &ServingLimits) -> Self {
        ConnectionLimiter {
            max: limits.max_connections.max(1),
            per_source: limits.max_connections_per_source.max(1),
            open: Mutex::new(OpenConnections::default()),
            last_report_ms: AtomicU64::new(0),
            started: Instant::now(),
        }
    }

    /// A slot for a connection from `source`, or which cap it would exceed.
    pub fn admit(self: &Arc<Self>, source: IpAddr) -> Result<ConnectionSlot, CapReached> {
        let source = source_key(source);
        // Plain counters: a poisoned lock (a panic elsewhere mid-update) leaves them usable.
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if open.total >= self.max {
            return Err(CapReached::Port(self.max));
        }
        let from_source = open.by_source.entry(source).or_insert(0);
        if *from_source >= self.per_source {
            return Err(CapReached::Source(self.per_source));
        }
        *from_source += 1;
        open.total += 1;
        Ok(ConnectionSlot {
            limiter: self.clone(),
            source,
        })
    }

    /// Open connections in all and from `source`.
    pub fn open(&self, source: IpAddr) -> (usize, usize) {
        let open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let from = open.by_source.get(&source_key(source)).copied();
        (open.total, from.unwrap_or(0))
    }

    fn report(&self, refused: &CapReached, peer: SocketAddr) {
        let now = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let last = self.last_report_ms.load(Ordering::Relaxed);
        let period = u64::try_from(REFUSAL_REPORT_PERIOD.as_millis()).unwrap_or(u64::MAX);
        if last != 0 && now.saturating_sub(last) < period {
            return;
        }
        if self
            .last_report_ms
            .compare_exchange(last, now.max(1), Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            return;
        }
        match refused {
            CapReached::Port(max) => tracing::warn!(
                %peer,
                "connection closed unserved: the port holds its maximum of {max} connections \
                 (raise it with the --*-max-connections flag if clients are legitimate); \
                 further refusals in the next {} s are not logged",
                REFUSAL_REPORT_PERIOD.as_secs()
            ),
            CapReached::Source(max) => tracing::warn!(
                %peer,
                "connection closed unserved: its source holds the maximum of {max} connections \
                 per source (raise it with the --*-max-connections-per-source flag if many \
                 clients share this address); further refusals in the next {} s are not logged",
                REFUSAL_REPORT_PERIOD.as_secs()
            ),
        }
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut open = self
            .limiter
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        open.total = open.total.saturating_sub(1);
        if let Some(count) = open.by_source.get_mut(&self.source) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.by_source.remove(&self.source);
            }
        }
    }
}

/// The address a source is counted by: IPv4 as is (also when mapped into IPv6), IPv6 by its
/// /64, the smallest block one host is usually given, so one host cannot take a fresh address
/// per connection.
fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let bits = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(std::net::Ipv6Addr::from(bits))
            }
        },
    }
}

// === connection deadlines ===

/// When a connection last moved a byte and whether it has sent a request, shared by its
/// socket ([`Watched`]), its service and its watchdog ([`Activity::expired`]). Tokio's clock,
/// so tests can pause it.
#[derive(Debug, Clone)]
struct Activity(Arc<ActivityState>);

#[derive(Debug)]
struct ActivityState {
    started: tokio::time::Instant,
    /// Nanoseconds after `started` a byte was last read or written.
    last_nanos: AtomicU64,
    requests: AtomicU64,
}

/// Why a connection's watchdog closed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expired {
    NoRequest,
    Idle,
}

impl Activity {
    fn new() -> Self {
        Activity(Arc::new(ActivityState {
            started: tokio::time::Instant::now(),
            last_nanos: AtomicU64::new(0),
            requests: AtomicU64::new(0),
        }))
    }

    fn touch(&self) {
        let nanos = u64::try_from(self.0.started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.0.last_nanos.fetch_max(nanos, Ordering::Relaxed);
    }

    fn request_started(&self) {
        self.0.requests.fetch_add(1, Ordering::Relaxed);
    }

    fn last_moved(&self) -> tokio::time::Instant {
        self.0.started + Duration::from_nanos(self.0.last_nanos.load(Ordering::Relaxed))
    }

    /// Resolves when the connection has sent no request within the TLS handshake and header
    /// timeouts from its accept (a slowloris still in the TLS or protocol preface, or an
    /// HTTP/2 client that never asks), or has been idle for the idle timeout.
    async fn expired(&self, limits: &ServingLimits) -> Expired {
        let first_request_by =
            self.0.started + limits.tls_handshake_timeout + limits.header_read_timeout;
        loop {
            let now = tokio::time::Instant::now();
            let waiting_first = self.0.requests.load(Ordering::Relaxed) == 0;
            if waiting_first && now >= first_request_by {
                return Expired::NoRequest;
            }
            let idle_at = self.last_moved() + limits.idle_timeout;
            if now >= idle_at {
                return Expired::Idle;
            }
            let next = if waiting_first {
                idle_at.min(first_request_by)
            } else {
                idle_at
            };
            tokio::time::sleep_until(next).await;
        }
    }
}

/// A socket that records in its [`Activity`] when bytes move.
struct Watched<S> {
    inner: S,
    activity: Activity,
}

impl<S> Watched<S> {
    fn new(inner: S, activity: Activity) -> Self {
        Watched { inner, activity }
    }
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

// === request bodies a handler leaves unread ===

/// Most of an unread request body read (and thrown away) after the answer.
pub const DRAIN_MAX_BYTES: u64 = 16 * 1024 * 1024;
/// Longest time spent reading it.
pub const DRAIN_MAX_TIME: Duration = Duration::from_secs(10);

/// A request body that must end within [`ServingLimits::body_read_timeout`] (else reading it
/// fails with [`BodyTimeout`]) and that, when a handler drops it before its end (a body over
/// a route's limit is refused once the limit's worth is read), is read on to its end in the
/// background and thrown away. Every route of every port served here gets it.
///
/// Why: without it, h2 ends such a stream with RST_STREAM(NO_ERROR) right after the complete
/// answer, as RFC 9113 §8.1 allows, but a client still uploading may take the reset for a
/// failure: curl 7.88 (nghttp2 1.52) reports "Stream error in the HTTP/2 framing layer" (exit
/// 92) and loses the 413 it had received. On HTTP/1.1, hyper closes the connection with the
/// rest unread, and the kernel answers the bytes still arriving with a TCP reset that in some
/// runs overtakes the 413 (curl: "Send failure: Broken pipe", exit 55). Reading on lets the
/// client read the answer and then finish or abandon its upload itself (curl stops sending and
/// resets the stream with STREAM_CLOSED); the connection keeps serving. Past
/// [`DRAIN_MAX_BYTES`] or [`DRAIN_MAX_TIME`] the body is dropped after all, and h2 sends its
/// RST_STREAM(NO_ERROR) then, never before the answer's last frame: the response half holds
/// the stream open until it is sent.
struct UnreadBody {
    body: Option<Incoming>,
    /// When the body must have ended ([`ServingLimits::body_read_timeout`]); `None` for a
    /// request without one.
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    read_timeout: Duration,
}

/// A body not received within [`ServingLimits::body_read_timeout`].
#[derive(Debug, thiserror::Error)]
#[error("the request body was not received within {} s: send it at once", .0.as_secs())]
pub struct BodyTimeout(pub Duration);

impl UnreadBody {
    fn new(body: Incoming, read_timeout: Duration) -> Self {
        let deadline = (!body.is_end_stream()).then(|| Box::pin(tokio::time::sleep(read_timeout)));
        Self {
            body: Some(body),
            deadline,
            read_timeout,
        }
    }
}

impl Body for UnreadBody {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::BoxError>>> {
        let this = &mut *self;
        let Some(body) = this.body.as_mut() else {
            return Poll::Ready(None);
        };
        if let Some(deadline) = this.deadline.as_mut()
            && deadline.as_mut().poll(cx).is_ready()
        {
            this.deadline = None;
            return Poll::Ready(Some(Err(Box::new(BodyTimeout(this.read_timeout)))));
        }
        Pin::new(body).poll_frame(cx).map_err(Into::into)
    }

    fn is_end_stream(&self) -> bool {
        self.body.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.body
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

impl Drop for UnreadBody {
    fn drop(&mut self) {
        let Some(body) = self.body.take() else {
            return;
        };
        if body.is_end_stream() {
            return;
        }
        // Handlers and connections run on the runtime, so one is there; without one the body
        // is simply dropped (the RST_STREAM or connection close described above).
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(drain(body));
        }
    }
}

/// Reads `body` to its end, at most [`DRAIN_MAX_BYTES`] within [`DRAIN_MAX_TIME`].
async fn drain(mut body: Incoming) {
    let read_all = async {
        let mut read: u64 = 0;
        while let Some(Ok(frame)) =
            std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
        {
            read += frame.data_ref().map_or(0, |data| data.len() as u64);
            if read > DRAIN_MAX_BYTES {
                return;
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_MAX_TIME, read_all).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(max: usize, per_source: usize) -> Arc<ConnectionLimiter> {
        Arc::new(ConnectionLimiter::new(&ServingLimits::with_caps(
            max, per_source,
        )))
    }

    #[test]
    fn a_source_is_capped_and_others_still_get_in_until_the_port_is_full() {
        let limiter = limiter(5, 2);
        let (a, b, c) = (
            "198.18.0.1".parse().unwrap(),
            "198.18.0.2".parse().unwrap(),
            "198.18.0.3".parse().unwrap(),
        );
        let held_a: Vec<_> = (0..2).map(|_| limiter.admit(a).unwrap()).collect();
        assert_eq!(limiter.admit(a).unwrap_err(), CapReached::Source(2));
        let held_b: Vec<_> = (0..2).map(|_| limiter.admit(b).unwrap()).collect();
        let last = limiter.admit(c).unwrap();
        assert_eq!(limiter.admit(c).unwrap_err(), CapReached::Port(5));
        assert_eq!(limiter.open(a), (5, 2));

        // A closed connection frees its place in both counts.
        drop(last);
        drop(held_a);
        assert_eq!(limiter.open(a), (2, 0));
        assert!(limiter.admit(a).is_ok());
        drop(held_b);
        assert_eq!(limiter.open(b), (0, 0));
    }

    #[test]
    fn ipv6_sources_count_by_their_64_and_mapped_ipv4_as_ipv4() {
        let limiter = limiter(100, 1);
        let _first = limiter.admit("2001:db8:1:2::1".parse().unwrap()).unwrap();
        assert_eq!(
            limiter
                .admit("2001:db8:1:2:ffff::9".parse().unwrap())
                .unwrap_err(),
            CapReached::Source(1),
            "another address of the same /64"
        );
        assert!(limiter.admit("2001:db8:1:3::1".parse().unwrap()).is_ok());
        let _v4 = limiter.admit("198.18.0.7".parse().unwrap()).unwrap();
        assert_eq!(
            limiter
                .admit("::ffff:198.18.0.7".parse().unwrap())
                .unwrap_err(),
            CapReached::Source(1)
        );
    }

    #[tokio::test]
    async fn a_connection_expires_without_a_first_request_or_when_idle() {
        let limits = ServingLimits {
            tls_handshake_timeout: Duration::from_millis(100),
            header_read_timeout: Duration::from_millis(200),
            idle_timeout: Duration::from_millis(300),
            ..ServingLimits::default()
        };
        // Bytes trickling in keep it from being idle but do not buy time for a first request
        // that never comes.
        let silent = Activity::new();
        let trickle = {
            let silent = silent.clone();
            async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    silent.touch();
                }
            }
        };
        let started = tokio::time::Instant::now();
        tokio::select! {
            why = silent.expired(&limits) => assert_eq!(why, Expired::NoRequest),
            () = trickle => unreachable!(),
        }
        assert!(started.elapsed() >= Duration::from_millis(300));

        // After a request only silence counts, and a byte starts it over.
        let active = Activity::new();
        active.request_started();
        tokio::time::sleep(Duration::from_millis(200)).await;
        active.touch();
        let touched = tokio::time::Instant::now();
        assert_eq!(active.expired(&limits).await, Expired::Idle);
        assert!(touched.elapsed() >= Duration::from_millis(300) - Duration::from_millis(5));
    }
}
