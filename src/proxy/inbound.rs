//! Inbound (15006): connections iptables redirected to the pod. The first bytes decide:
//! mesh mTLS (ALPN `weft/1`) is terminated and the peer's SPIFFE identity learnt; anything
//! else is plaintext, allowed only where the port's mode is not STRICT. Either way the
//! connection goes to the app at `POD_IP:port` from 127.0.0.6, which the loopback rules let
//! through: as HTTP through [`super::http`] where the port carries HTTP ([`http_mode`]), else
//! as bytes (L4), authorized once per connection.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};

use super::ProxyContext;
use super::access_log::{Entry, denial_details, known};
use super::copy::{RelayError, relay_until};
use super::http::authz::ConnectionFacts;
use super::http::detect::{Detected, read_until_detected};
use super::http::upstream::TcpConnector;
use super::inbound_labels::{LabelSource, MtlsPeer};
use super::metrics::{Direction, TcpLabels};
use super::net::{connect, redirected_dst};
use super::peer_meta;
use super::sniff::{MAX_SNIFF_BYTES, Prefixed, Sniffed, sniff};
use super::tls::peer_identity;
use crate::authz::{Verdict, evaluate};
use crate::contract::{
    INBOUND_PASSTHROUGH_SOURCE, INBOUND_PASSTHROUGH_SOURCE_V6, PORT_INBOUND, PORT_OUTBOUND,
};
use crate::snapshot::{InboundConfig, MtlsMode, Protocol, SnapshotIndex};

/// Why an inbound connection was not forwarded; each is a `weft_connections_refused_total`
/// reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    NotRedirected,
    Loop,
    NoConfig,
    NoCertificate,
    PlaintextOnStrict,
    Handshake,
    AppUnreachable,
    /// An authorization policy denied the (TCP) connection.
    RbacDenied,
}

impl Refusal {
    pub fn metric_label(self) -> &'static str {
        match self {
            Refusal::NotRedirected => "not_redirected",
            Refusal::Loop => "loop",
            Refusal::NoConfig => "no_config",
            Refusal::NoCertificate => "no_certificate",
            Refusal::PlaintextOnStrict => "plaintext_on_strict",
            Refusal::Handshake => "tls_handshake",
            Refusal::AppUnreachable => "app_unreachable",
            Refusal::RbacDenied => "rbac_denied",
        }
    }
}

/// What to do with a sniffed connection, decided from its first bytes and the port's mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InboundDecision {
    TerminateMtls,
    ForwardPlaintext,
    Refuse(Refusal),
}

/// The inbound policy as a pure function (table-tested).
pub fn decide(sniffed: &Sniffed, mode: MtlsMode, have_cert: bool) -> InboundDecision {
    match sniffed {
        // mTLS is accepted whatever the mode: a DISABLE port only means clients need not.
        Sniffed::Weft if have_cert => InboundDecision::TerminateMtls,
        Sniffed::Weft => InboundDecision::Refuse(Refusal::NoCertificate),
        _ if mode.accepts_plaintext() => InboundDecision::ForwardPlaintext,
        _ => InboundDecision::Refuse(Refusal::PlaintextOnStrict),
    }
}

/// Resolves once the current config stops accepting plaintext on `port` (a PeerAuthentication
/// moved it to STRICT). A plaintext connection accepted before then is closed at that moment,
/// as Envoy closes the connections of a filter chain its listener update removed: STRICT holds
/// for open keep-alive and long-lived TCP connections too, not only for new ones (a keep-alive
/// connection opened while the port was PERMISSIVE would otherwise carry plaintext requests
/// for as long as the client kept it busy). Logs the closing of `peer`'s connection.
async fn plaintext_revoked(ctx: &ProxyContext, peer: SocketAddr, port: u16) {
    let mut changes = ctx.snapshot_changes();
    loop {
        let revoked = changes
            .borrow_and_update()
            .as_ref()
            .is_some_and(|s| !s.snapshot.inbound_mode(port).accepts_plaintext());
        if revoked {
            tracing::info!(%peer, port, "plaintext connection closed: the port no longer accepts plaintext (STRICT)");
            return;
        }
        if changes.changed().await.is_err() {
            // The config source is gone: the mode can no longer change.
            return std::future::pending().await;
        }
    }
}

/// Whether a connection to a port is served as HTTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpMode {
    /// L4: bytes relayed (and authorized once per connection if policies apply).
    Never,
    /// The port is declared HTTP: terminated whatever the bytes (hyper refuses non-HTTP).
    Always,
    /// Undeclared: terminated if the first bytes are an HTTP/1 request line or the h2 preface.
    Sniff,
}

/// HTTP is terminated on a port declared HTTP, and on an undeclared one whose first bytes
/// are HTTP, as Istio's sidecars do; a port declared TCP stays L4. Pure (table-tested).
pub fn http_mode(inbound: &InboundConfig, port: u16) -> HttpMode {
    match inbound.protocols.get(&port) {
        Some(Protocol::Http) => HttpMode::Always,
        Some(Protocol::Tcp) => HttpMode::Never,
        None => HttpMode::Sniff,
    }
}

pub async fn serve(ctx: Arc<ProxyContext>, listener: TcpListener) {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let ctx = ctx.clone();
                    tokio::spawn(async move {
                        let _guard = ctx.track();
                        if let Err(refusal) = handle(&ctx, stream, peer).await {
                            ctx.metrics.refuse(Direction::inbound, refusal.metric_label());
                            tracing::debug!(%peer, reason = refusal.metric_label(), "inbound connection refused");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "inbound accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = ctx.drained() => return,
        }
    }
}

/// Reads until the sniffer decides, the buffer is full, or the timeout passes (a silent
/// client is a server-first protocol: plaintext).
async fn read_prefix(stream: &mut TcpStream, timeout: Duration) -> (Vec<u8>, Sniffed) {
    let mut buf = Vec::with_capacity(1024);
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let verdict = sniff(&buf);
        if verdict != Sniffed::NeedMore {
            return (buf, verdict);
        }
        if buf.len() >= MAX_SNIFF_BYTES {
            return (buf, Sniffed::OtherTls);
        }
        let mut chunk = [0u8; 2048];
        let room = (MAX_SNIFF_BYTES - buf.len()).min(chunk.len());
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk[..room])).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => {
                let verdict = if buf.is_empty() {
                    Sniffed::Plaintext
                } else {
                    Sniffed::OtherTls
                };
                return (buf, verdict);
            }
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

async fn handle(
    ctx: &Arc<ProxyContext>,
    mut stream: TcpStream,
    peer: SocketAddr,
) -> Result<(), Refusal> {
    let orig = redirected_dst(&stream).ok_or(Refusal::NotRedirected)?;
    if orig.port() == PORT_INBOUND || orig.port() == PORT_OUTBOUND {
        return Err(Refusal::Loop);
    }
    let snapshot = ctx.snapshot().ok_or(Refusal::NoConfig)?;
    let mode = snapshot.snapshot.inbound_mode(orig.port());
    let _ = stream.set_nodelay(true);
    let (prefix, sniffed) = read_prefix(&mut stream, ctx.settings.sniff_timeout).await;
    let tls = ctx.tls();
    // POD_IP is one family; an IPv6 connection of a dual-stack pod goes to its own address.
    let app_ip = ctx
        .settings
        .pod_ip
        .filter(|ip| ip.is_ipv4() == orig.is_ipv4())
        .unwrap_or(orig.ip());
    let app = SocketAddr::new(app_ip, orig.port());

    let inbound = &snapshot.snapshot.inbound;

    match decide(&sniffed, mode, tls.is_some()) {
        InboundDecision::Refuse(r) => Err(r),
        InboundDecision::ForwardPlaintext => {
            let facts = ConnectionFacts {
                principal: None,
                peer,
                destination: orig,
                sni: None,
            };
            let mut prefix = prefix;
            let http = match http_mode(inbound, orig.port()) {
                HttpMode::Never => false,
                HttpMode::Always => true,
                // The client said nothing for the whole sniff timeout: a server-first
                // protocol, not worth a second wait.
                HttpMode::Sniff if prefix.is_empty() => false,
                HttpMode::Sniff => {
                    read_until_detected(&mut stream, &mut prefix, ctx.settings.sniff_timeout).await
                        != Detected::NotHttp
                }
            };
            let io = Prefixed::new(prefix, stream);
            let revoked = plaintext_revoked(ctx, peer, orig.port());
            let labels = LabelSource {
                port: orig.port(),
                mtls: None,
            };
            dispatch(ctx, &snapshot, io, http, facts, app, labels, revoked).await
        }
        InboundDecision::TerminateMtls => {
            let tls = tls.ok_or(Refusal::NoCertificate)?;
            let acceptor = tokio_rustls::TlsAcceptor::from(tls.server_config());
            let handshake = tokio::time::timeout(
                ctx.settings.handshake_timeout,
                acceptor.accept(Prefixed::new(prefix, stream)),
            )
            .await;
            let tls_stream = match handshake {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    ctx.metrics.handshake(Direction::inbound, false);
                    tracing::info!(%peer, error = %e, "inbound mTLS handshake failed");
                    return Err(Refusal::Handshake);
                }
                Err(_) => {
                    ctx.metrics.handshake(Direction::inbound, false);
                    return Err(Refusal::Handshake);
                }
            };
            ctx.metrics.handshake(Direction::inbound, true);
            let identity = peer_identity(tls_stream.get_ref().1.peer_certificates());
            let sni = tls_stream.get_ref().1.server_name().map(str::to_string);
            let mut tls_stream = tls_stream;
            let (meta, mut early) =
                peer_meta::read(&mut tls_stream, ctx.settings.sniff_timeout).await;
            let facts = ConnectionFacts {
                principal: identity
                    .as_deref()
                    .map(|id| id.strip_prefix("spiffe://").unwrap_or(id).to_string()),
                peer,
                destination: orig,
                sni,
            };
            let labels = LabelSource {
                port: orig.port(),
                mtls: Some(MtlsPeer {
                    own_identity: tls.cert.identity.clone(),
                    identity,
                    meta,
                }),
            };
            let http = match http_mode(inbound, orig.port()) {
                HttpMode::Never => false,
                HttpMode::Always => true,
                HttpMode::Sniff => {
                    read_until_detected(&mut tls_stream, &mut early, ctx.settings.sniff_timeout)
                        .await
                        != Detected::NotHttp
                }
            };
            let io = Prefixed::new(early, tls_stream);
            // mTLS is accepted in every mode: nothing revokes it.
            let revoked = std::future::pending();
            dispatch(ctx, &snapshot, io, http, facts, app, labels, revoked).await
        }
    }
}

/// Serves a connection as HTTP, or authorizes it once (TCP semantics: `http: None`) and
/// relays its bytes. HTTP connections get request metrics and no `istio_tcp_*` series, as
/// Istio reports them. The connection is closed when `revoked` resolves
/// ([`plaintext_revoked`]), counted as a `plaintext_on_strict` refusal.
#[allow(clippy::too_many_arguments)]
async fn dispatch<S>(
    ctx: &Arc<ProxyContext>,
    snapshot: &Arc<SnapshotIndex>,
    io: S,
    http: bool,
    facts: ConnectionFacts,
    app: SocketAddr,
    labels: LabelSource,
    revoked: impl Future<Output = ()>,
) -> Result<(), Refusal>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    if http {
        let connector = TcpConnector {
            addr: app,
            source: app_source(app),
            timeout: ctx.settings.connect_timeout,
        };
        // Request metrics are recorded per request: dropping the connection loses none.
        let served =
            super::http::inbound::serve(ctx, io, facts, connector, labels, snapshot.clone());
        tokio::select! {
            biased;
            () = served => return Ok(()),
            () = revoked => return Err(Refusal::PlaintextOnStrict),
        }
    }
    // A TCP connection is labelled once, by the config it was accepted with.
    let labels = labels.labels(ctx, snapshot);
    let policies = &snapshot.snapshot.inbound.authz;
    if !policies.is_empty() {
        let decision = evaluate(policies, &facts.tcp_request());
        let what = format!(
            "TCP connection from {} to port {}",
            facts.peer,
            facts.destination.port()
        );
        super::http::authz::log_decision(policies, &decision, &what);
        if decision.verdict == Verdict::Deny {
            if ctx.access_log_format().is_some() {
                let details = denial_details(policies, decision.reason);
                let cluster = inbound_cluster(app.port());
                ctx.log_access(&Entry {
                    connection_termination_details: details.as_deref(),
                    upstream_cluster: Some(&cluster),
                    ..tcp_entry(&facts, &labels, app, std::time::SystemTime::now())
                });
            }
            return Err(Refusal::RbacDenied);
        }
    }
    forward(ctx, io, app, labels, &facts, revoked).await
}

/// An inbound TCP connection's access log entry, before anything moved.
fn tcp_entry<'a>(
    facts: &'a ConnectionFacts,
    labels: &'a TcpLabels,
    app: SocketAddr,
    start: std::time::SystemTime,
) -> Entry<'a> {
    Entry {
        upstream_host: Some(app),
        downstream_local_address: Some(facts.destination),
        downstream_remote_address: Some(facts.peer),
        requested_server_name: facts.sni.as_deref(),
        source_principal: known(&labels.source_principal),
        destination_principal: known(&labels.destination_principal),
        ..Entry::new(start)
    }
}

/// Istio's name for the inbound cluster of a port.
fn inbound_cluster(port: u16) -> String {
    format!("inbound|{port}||")
}

/// The source address of connections to the app: 127.0.0.6, or `::6` for IPv6 (which
/// `weft-proxy init` puts on `lo`), which the capture rules let through.
fn app_source(app: SocketAddr) -> Option<IpAddr> {
    if app.is_ipv4() {
        INBOUND_PASSTHROUGH_SOURCE.parse().ok()
    } else {
        INBOUND_PASSTHROUGH_SOURCE_V6.parse().ok()
    }
}

async fn forward<S>(
    ctx: &Arc<ProxyContext>,
    downstream: S,
    app: SocketAddr,
    labels: TcpLabels,
    facts: &ConnectionFacts,
    revoked: impl Future<Output = ()>,
) -> Result<(), Refusal>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let start = std::time::SystemTime::now();
    let started = tokio::time::Instant::now();
    let cluster = inbound_cluster(app.port());
    let upstream = match connect(app, app_source(app), ctx.settings.connect_timeout).await {
        Ok(up) => up,
        Err(e) => {
            tracing::debug!(%app, error = %e, "app unreachable");
            if ctx.access_log_format().is_some() {
                let reason = e.to_string();
                ctx.log_access(&Entry {
                    response_flags: "UF",
                    upstream_transport_failure_reason: Some(&reason),
                    upstream_cluster: Some(&cluster),
                    duration: started.elapsed(),
                    ..tcp_entry(facts, &labels, app, start)
                });
            }
            return Err(Refusal::AppUnreachable);
        }
    };
    let m = &ctx.metrics;
    m.tcp_opened.get_or_create(&labels).inc();
    let (moved, result) =
        relay_until(downstream, upstream, ctx.settings.idle_timeout, revoked).await;
    m.tcp_bytes(&labels, moved.sent, moved.received);
    m.tcp_closed.get_or_create(&labels).inc();
    ctx.log_access(&Entry {
        bytes_received: moved.sent,
        bytes_sent: moved.received,
        duration: started.elapsed(),
        upstream_cluster: Some(&cluster),
        ..tcp_entry(facts, &labels, app, start)
    });
    match result {
        Err(RelayError::Revoked) => return Err(Refusal::PlaintextOnStrict),
        Err(e) => tracing::debug!(%app, error = %e, "inbound connection ended with an error"),
        Ok(()) => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_inbound_policy_table() {
        use InboundDecision::*;
        use MtlsMode::*;
        let cases = [
            (Sniffed::Weft, Strict, true, TerminateMtls),
            (Sniffed::Weft, Permissive, true, TerminateMtls),
            (Sniffed::Weft, Disable, true, TerminateMtls),
            (Sniffed::Weft, Strict, false, Refuse(Refusal::NoCertificate)),
            (
                Sniffed::Plaintext,
                Strict,
                true,
                Refuse(Refusal::PlaintextOnStrict),
            ),
            (
                Sniffed::OtherTls,
                Strict,
                true,
                Refuse(Refusal::PlaintextOnStrict),
            ),
            (Sniffed::Plaintext, Permissive, true, ForwardPlaintext),
            (Sniffed::OtherTls, Permissive, false, ForwardPlaintext),
            (Sniffed::Plaintext, Disable, true, ForwardPlaintext),
        ];
        for (sniffed, mode, cert, want) in cases {
            assert_eq!(
                decide(&sniffed, mode, cert),
                want,
                "{sniffed:?} {mode:?} {cert}"
            );
        }
    }

    #[test]
    fn http_is_terminated_where_the_port_may_carry_http_with_or_without_policies() {
        let mut inbound = InboundConfig {
            default_mode: MtlsMode::Permissive,
            ports: Default::default(),
            services: Default::default(),
            protocols: [(8080, Protocol::Http), (5432, Protocol::Tcp)].into(),
            authz: Vec::new(),
        };
        let table = |inbound: &InboundConfig| {
            assert_eq!(http_mode(inbound, 8080), HttpMode::Always);
            assert_eq!(http_mode(inbound, 5432), HttpMode::Never);
            assert_eq!(http_mode(inbound, 9000), HttpMode::Sniff);
        };
        table(&inbound);
        inbound.authz.push(crate::authz::Policy {
            kind: Default::default(),
            name: "demo/allow-nothing".into(),
            action: crate::authz::Action::Allow,
            dry_run: false,
            rules: Vec::new(),
        });
        table(&inbound);
    }
}
