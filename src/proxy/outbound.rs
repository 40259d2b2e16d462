//! Outbound (15001): connections the app opened, redirected here by iptables. The original
//! destination picks the route: a Service ClusterIP is balanced over its endpoints, meshed
//! endpoints get mTLS and must prove their SPIFFE identity, others get plaintext; unknown
//! destinations go to [`super::egress`] (declared by a ServiceEntry, passed through under
//! ALLOW_ANY, refused under REGISTRY_ONLY). A Service
//! port that speaks HTTP is handed to the HTTP layer ([`super::http::outbound`]), which picks
//! an endpoint per request; everything else is relayed byte for byte.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::client::TlsStream;

use super::ProxyContext;
use super::access_log::{Entry, known};
use super::copy::relay;
use super::http::detect::{Detected, read_until_detected};
use super::metrics::{Direction, Reporter, SecurityPolicy, TcpLabels};
use super::net::{connect, redirected_dst};
use super::peer_meta::PeerMeta;
use super::sniff::Prefixed;
use super::tls::upstream_server_name;
use crate::contract::{PORT_INBOUND, PORT_OUTBOUND};
use crate::snapshot::{
    Endpoint, OutboundRoute, Protocol, Service, SnapshotIndex, UpstreamSecurity, spiffe_namespace,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    NotRedirected,
    Loop,
    NoConfig,
    NoCertificate,
    RegistryOnly,
    NoEndpoints,
    UpstreamUnreachable,
    Handshake,
}

impl Refusal {
    pub fn metric_label(self) -> &'static str {
        match self {
            Refusal::NotRedirected => "not_redirected",
            Refusal::Loop => "loop",
            Refusal::NoConfig => "no_config",
            Refusal::NoCertificate => "no_certificate",
            Refusal::RegistryOnly => "registry_only",
            Refusal::NoEndpoints => "no_endpoints",
            Refusal::UpstreamUnreachable => "upstream_unreachable",
            Refusal::Handshake => "tls_handshake",
        }
    }
}

/// A connection to an upstream: plaintext or mTLS.
pub enum Upstream {
    Plain(TcpStream),
    Mtls(Box<TlsStream<TcpStream>>),
}

impl Upstream {
    pub fn is_mtls(&self) -> bool {
        matches!(self, Upstream::Mtls(_))
    }
}

impl AsyncRead for Upstream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Upstream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Upstream::Mtls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Upstream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Upstream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Upstream::Mtls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Upstream::Plain(s) => Pin::new(s).poll_flush(cx),
            Upstream::Mtls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Upstream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Upstream::Mtls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
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
                        if let Err(refusal) = handle(&ctx, stream).await {
                            ctx.metrics.refuse(Direction::outbound, refusal.metric_label());
                            tracing::debug!(%peer, reason = refusal.metric_label(), "outbound connection refused");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "outbound accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = ctx.drained() => return,
        }
    }
}

async fn handle(ctx: &Arc<ProxyContext>, mut stream: TcpStream) -> Result<(), Refusal> {
    let orig = redirected_dst(&stream).ok_or(Refusal::NotRedirected)?;
    // A connection aimed at the capture ports themselves would loop forever.
    if orig.ip().is_loopback() && [PORT_OUTBOUND, PORT_INBOUND].contains(&orig.port()) {
        return Err(Refusal::Loop);
    }
    let _ = stream.set_nodelay(true);
    let start = std::time::SystemTime::now();
    let started = tokio::time::Instant::now();
    let peer = stream.peer_addr().ok();
    let snapshot = ctx.snapshot().ok_or(Refusal::NoConfig)?;
    let route = snapshot.route(orig);
    // No Service owns the address: declared external, passthrough or black hole.
    if matches!(route, OutboundRoute::Passthrough | OutboundRoute::Refused) {
        return super::egress::handle(ctx, stream, orig, peer, snapshot.clone()).await;
    }

    // A Service port that speaks HTTP (declared, or detected from the client's first bytes)
    // gets the HTTP layer: an endpoint per request.
    let mut prefix = Vec::new();
    if let OutboundRoute::Service { service, .. } | OutboundRoute::Endpoint { service, .. } = &route
    {
        let http = match (service.protocol, service.detect_protocol) {
            (Protocol::Http, _) => true,
            (Protocol::Tcp, false) => false,
            (Protocol::Tcp, true) => {
                read_until_detected(&mut stream, &mut prefix, ctx.settings.sniff_timeout).await
                    != Detected::NotHttp
            }
        };
        if http {
            let io = Prefixed::new(prefix, stream);
            super::http::outbound::serve(ctx, io, orig, peer, snapshot.clone()).await;
            return Ok(());
        }
    }

    let (upstream, endpoint, service) = match route {
        // Handled above, by the egress path.
        OutboundRoute::Refused | OutboundRoute::Passthrough => return Err(Refusal::RegistryOnly),
        OutboundRoute::Endpoint { service, endpoint } => (
            open_endpoint(
                ctx,
                &snapshot,
                endpoint,
                Some(service),
                service.security_of(endpoint, None),
            )
            .await?,
            Some(endpoint),
            Some(service),
        ),
        OutboundRoute::Service { service, endpoints } => {
            if endpoints.is_empty() {
                return Err(Refusal::NoEndpoints);
            }
            let mut last = Refusal::UpstreamUnreachable;
            let mut connected = None;
            for ep in endpoints
                .into_iter()
                .take(ctx.settings.connect_attempts.max(1))
            {
                let security = service.security_of(ep, None);
                match open_endpoint(ctx, &snapshot, ep, Some(service), security).await {
                    Ok(up) => {
                        connected = Some((up, Some(ep), Some(service)));
                        break;
                    }
                    // The next endpoint may be fine; each failure is already counted.
                    Err(r) => last = r,
                }
            }
            connected.ok_or(last)?
        }
    };
    let labels = source_labels(ctx, &snapshot, service, endpoint, upstream.is_mtls());
    let m = &ctx.metrics;
    m.tcp_opened.get_or_create(&labels).inc();
    let idle = ctx.settings.idle_timeout;
    let (moved, result) = relay(Prefixed::new(prefix, stream), upstream, idle).await;
    m.tcp_bytes(&labels, moved.sent, moved.received);
    m.tcp_closed.get_or_create(&labels).inc();
    if ctx.access_log_format().is_some() {
        let cluster = match service {
            Some(s) => format!("outbound|{}||{}", orig.port(), s.name),
            None => "PassthroughCluster".to_string(),
        };
        ctx.log_access(&Entry {
            bytes_received: moved.sent,
            bytes_sent: moved.received,
            duration: started.elapsed(),
            upstream_host: Some(endpoint.map_or(orig, |ep| ep.addr())),
            upstream_cluster: Some(&cluster),
            downstream_local_address: Some(orig),
            downstream_remote_address: peer,
            source_principal: known(&labels.source_principal),
            destination_principal: known(&labels.destination_principal),
            ..Entry::new(start)
        });
    }
    if let Err(e) = result {
        tracing::debug!(%orig, error = %e, "outbound connection ended with an error");
    }
    Ok(())
}

/// The source reporter's labels for traffic to `endpoint` of `service` (None: passthrough),
/// over mTLS or not. The same for a TCP connection and for an HTTP request.
pub fn source_labels(
    ctx: &ProxyContext,
    snapshot: &SnapshotIndex,
    service: Option<&Service>,
    endpoint: Option<&Endpoint>,
    mtls: bool,
) -> TcpLabels {
    let mut labels = TcpLabels::new(Reporter::source, SecurityPolicy::none);
    if let Some(w) = &snapshot.snapshot.workload {
        labels.fill_source(w);
    } else if let Some(ns) = spiffe_namespace(&snapshot.snapshot.identity) {
        labels.source_workload_namespace = ns.to_string();
    }
    labels = match service {
        Some(s) => labels.with_service(&s.name),
        None => labels.with_cluster(crate::route::egress::PASSTHROUGH, None),
    };
    if let Some(ep) = endpoint {
        if let Some(w) = &ep.workload {
            labels.fill_destination(w);
        }
        // connection_security_policy stays `unknown`: Istio's source reporter says so.
        if let (true, Some(id)) = (mtls, &ep.identity) {
            labels.destination_principal = id.clone();
            if let Some(tls) = ctx.tls() {
                labels.source_principal = tls.cert.identity.clone();
            }
        }
    }
    labels
}

/// Opens a connection to an endpoint of `service` as its security requires; over mTLS it
/// first says who we are and what we dialled, for the server's metrics (peer_meta). That frame
/// is always sent, so the server never waits for it; without workload metadata it names
/// nobody.
pub async fn open_endpoint(
    ctx: &Arc<ProxyContext>,
    snapshot: &SnapshotIndex,
    ep: &Endpoint,
    service: Option<&Service>,
    security: UpstreamSecurity,
) -> Result<Upstream, Refusal> {
    let mut upstream = connect_endpoint(ctx, ep, security).await?;
    if let Upstream::Mtls(up) = &mut upstream {
        let meta = PeerMeta::of(
            snapshot.snapshot.workload.as_ref(),
            spiffe_namespace(&snapshot.snapshot.identity),
            // A headless Service's pod is dialled by IP, but through the Service's DNS name.
            service.map(|s| s.name.clone()),
        );
        if up.write_all(&meta.encode()).await.is_err() {
            return Err(Refusal::UpstreamUnreachable);
        }
    }
    Ok(upstream)
}

async fn connect_endpoint(
    ctx: &Arc<ProxyContext>,
    ep: &Endpoint,
    security: UpstreamSecurity,
) -> Result<Upstream, Refusal> {
    let addr: SocketAddr = ep.addr();
    match security {
        UpstreamSecurity::Plaintext => connect(addr, None, ctx.settings.connect_timeout)
            .await
            .map(Upstream::Plain)
            .map_err(|_| Refusal::UpstreamUnreachable),
        UpstreamSecurity::Mtls { identity } => {
            // Fail closed: without our certificate there is no mTLS, and no plaintext fallback.
            let tls = ctx.tls().ok_or(Refusal::NoCertificate)?;
            let config = tls
                .client_config(&identity)
                .map_err(|_| Refusal::NoCertificate)?;
            let tcp = connect(addr, None, ctx.settings.connect_timeout)
                .await
                .map_err(|_| Refusal::UpstreamUnreachable)?;
            let connector = tokio_rustls::TlsConnector::from(config);
            let handshake = tokio::time::timeout(
                ctx.settings.handshake_timeout,
                connector.connect(upstream_server_name(addr.ip()), tcp),
            )
            .await;
            match handshake {
                Ok(Ok(s)) => {
                    ctx.metrics.handshake(Direction::outbound, true);
                    Ok(Upstream::Mtls(Box::new(s)))
                }
                Ok(Err(e)) => {
                    ctx.metrics.handshake(Direction::outbound, false);
                    tracing::warn!(%addr, expected = %identity, error = %e, "outbound mTLS handshake failed");
                    Err(Refusal::Handshake)
                }
                Err(_) => {
                    ctx.metrics.handshake(Direction::outbound, false);
                    Err(Refusal::Handshake)
                }
            }
        }
    }
}
