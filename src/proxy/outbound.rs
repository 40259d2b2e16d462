//! Outbound (15001): connections the app opened, redirected here by iptables. The original
//! destination picks the route: a Service ClusterIP is balanced over its endpoints, meshed
//! endpoints get mTLS and must prove their SPIFFE identity, others get plaintext; unknown
//! destinations go to [`super::egress`] (declared by a ServiceEntry, passed through under
//! ALLOW_ANY, refused under REGISTRY_ONLY). A Service
//! port that speaks HTTP is handed to the HTTP layer ([`super::http::outbound`]), which picks
//! an endpoint per request; everything else is relayed byte for byte, to the destination a
//! VirtualService `tls` route (by the ClientHello's SNI) or `tcp` route picks for the
//! connection ([`crate::route::l4`]), else to the Service's endpoints.

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
use super::originate::{Alpn, Asked};
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
    /// A `tcp`/`tls` route's destination is not in the snapshot (Istio's `NR`).
    NoRoute,
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
            Refusal::NoRoute => "no_route",
        }
    }
}

/// A connection to an upstream: plaintext, mesh mTLS, or TLS the proxy originated for a
/// DestinationRule's SIMPLE/MUTUAL ([`super::originate`]; no peer metadata on it).
pub enum Upstream {
    Plain(TcpStream),
    Mtls(Box<TlsStream<TcpStream>>),
    Tls(Box<TlsStream<TcpStream>>),
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
            Upstream::Mtls(s) | Upstream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
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
            Upstream::Mtls(s) | Upstream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    // Both streams take vectored writes: hyper then hands a request's head and body over in
    // one call (one TLS record) instead of copying the body behind the head first.
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Upstream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Upstream::Mtls(s) | Upstream::Tls(s) => {
                Pin::new(s.as_mut()).poll_write_vectored(cx, bufs)
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Upstream::Plain(s) => s.is_write_vectored(),
            Upstream::Mtls(s) | Upstream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Upstream::Plain(s) => Pin::new(s).poll_flush(cx),
            Upstream::Mtls(s) | Upstream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Upstream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Upstream::Mtls(s) | Upstream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
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

    // A relayed connection to a Service address goes where its tls/tcp routes say.
    let routed = match &route {
        OutboundRoute::Service { service, .. } if !service.l4.is_empty() => {
            let sni = if service.l4.tls.is_empty() {
                None
            } else {
                read_sni(&mut stream, &mut prefix, ctx.settings.sniff_timeout).await
            };
            match l4_destination(&snapshot, &service.l4, orig, sni.as_deref()) {
                Some(Ok(to)) => Some(to),
                Some(Err(what)) => {
                    tracing::debug!(%orig, route = %what, "tcp/tls route destination not in the config (NR)");
                    return Err(Refusal::NoRoute);
                }
                None => None,
            }
        }
        _ => None,
    };
    let mut subset: Option<&str> = None;
    let route = match routed {
        Some((service, endpoints, chosen)) => {
            subset = chosen;
            OutboundRoute::Service { service, endpoints }
        }
        None => route,
    };
    relay_service(
        ctx,
        &snapshot,
        Prefixed::new(prefix, stream),
        route,
        subset,
        orig,
        peer,
        start,
    )
    .await
}

/// Relays `client` to the `route` an L4 decision took (an endpoint, or a Service's endpoints
/// in the order to try them, of `subset`), counting it as Istio's source reporter does and
/// writing its access log line. `orig`: the address the client dialled (a sidecar's original
/// destination, a gateway's own port); `start`: when the connection was accepted.
#[allow(clippy::too_many_arguments)]
pub(super) async fn relay_service<S>(
    ctx: &Arc<ProxyContext>,
    snapshot: &SnapshotIndex,
    client: S,
    route: OutboundRoute<'_>,
    subset: Option<&str>,
    orig: SocketAddr,
    peer: Option<SocketAddr>,
    start: std::time::SystemTime,
) -> Result<(), Refusal>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (upstream, endpoint, service) = match route {
        // Handled above, by the egress path.
        OutboundRoute::Refused | OutboundRoute::Passthrough => return Err(Refusal::RegistryOnly),
        OutboundRoute::Endpoint { service, endpoint } => (
            open_endpoint(
                ctx,
                snapshot,
                endpoint,
                Some(service),
                service.security_of(endpoint, None),
                Alpn::Opaque,
                None,
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
                let security = service.security_of(ep, subset);
                let opened = open_endpoint(
                    ctx,
                    snapshot,
                    ep,
                    Some(service),
                    security,
                    Alpn::Opaque,
                    None,
                );
                match opened.await {
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
    let labels = source_labels(ctx, snapshot, service, endpoint, upstream.is_mtls());
    let m = &ctx.metrics;
    m.tcp_opened.get_or_create(&labels).inc();
    let idle = ctx.settings.idle_timeout;
    let (moved, result) = relay(client, upstream, idle).await;
    m.tcp_bytes(&labels, moved.sent, moved.received);
    m.tcp_closed.get_or_create(&labels).inc();
    if ctx.access_log_format().is_some() {
        let cluster = match service {
            Some(s) => format!("outbound|{}|{}|{}", s.port, subset.unwrap_or(""), s.name),
            None => "PassthroughCluster".to_string(),
        };
        ctx.log_access(&Entry {
            bytes_received: moved.sent,
            bytes_sent: moved.received,
            duration: start.elapsed().unwrap_or_default(),
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

/// What a Service's tls/tcp routes decide for a connection to `orig` whose ClientHello named
/// `sni`: None when no route takes it (the Service as dialled); else the chosen destination's
/// Service, its endpoints (of its subset) in the order to try them, and the subset, or the
/// destination the snapshot lacks. A destination without endpoints gives its share to the
/// others, as for HTTP routes.
#[allow(clippy::type_complexity)]
pub(super) fn l4_destination<'a>(
    snapshot: &'a SnapshotIndex,
    table: &'a crate::route::l4::L4Table,
    orig: SocketAddr,
    sni: Option<&str>,
) -> Option<Result<(&'a Service, Vec<&'a Endpoint>, Option<&'a str>), String>> {
    use crate::route::select::pick_weighted;
    let (route, _) = crate::route::l4::choose(table, orig, sni)?;
    let draw = snapshot.roll();
    let chosen = pick_weighted(&route.destinations, draw, |d| snapshot.has_endpoints(d))
        .or_else(|| pick_weighted(&route.destinations, draw, |_| true));
    let Some(d) = chosen else {
        return Some(Err(route.name.clone()));
    };
    Some(match snapshot.mirror_endpoints(d) {
        Some((svc, endpoints)) => Ok((svc, endpoints, d.subset.as_deref())),
        None => Err(format!(
            "{}: {}:{}{}",
            route.name,
            d.service,
            d.port,
            d.subset
                .as_deref()
                .map(|s| format!(" subset {s}"))
                .unwrap_or_default()
        )),
    })
}

/// Reads the client's first bytes (kept in `prefix`, replayed upstream) until they are a
/// ClientHello, or clearly not one, or `timeout` passes (a protocol where the server speaks
/// first): the SNI, if the client sent one.
pub(super) async fn read_sni<S: AsyncRead + Unpin>(
    stream: &mut S,
    prefix: &mut Vec<u8>,
    timeout: Duration,
) -> Option<String> {
    use super::sniff::{MAX_SNIFF_BYTES, ServerName, server_name};
    use tokio::io::AsyncReadExt;
    let deadline = tokio::time::Instant::now() + timeout;
    let mut buf = [0u8; 4096];
    loop {
        match server_name(prefix) {
            ServerName::Hello(name) => return name,
            ServerName::NotTls => return None,
            ServerName::NeedMore if prefix.len() >= MAX_SNIFF_BYTES => return None,
            ServerName::NeedMore => {}
        }
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => prefix.extend_from_slice(&buf[..n]),
            _ => return None,
        }
    }
}

/// This proxy's labels as the source reporter, before any destination is known.
pub(super) fn reporter_labels(snapshot: &SnapshotIndex) -> TcpLabels {
    let mut labels = TcpLabels::new(Reporter::source, SecurityPolicy::none);
    if let Some(w) = &snapshot.snapshot.workload {
        labels.fill_source(w);
    } else if let Some(ns) = spiffe_namespace(&snapshot.snapshot.identity) {
        labels.source_workload_namespace = ns.to_string();
    }
    labels
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
    let mut labels = reporter_labels(snapshot);
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
/// nobody. `alpn` and `authority` (the name the app asked for) serve a TLS origination.
pub async fn open_endpoint(
    ctx: &Arc<ProxyContext>,
    snapshot: &SnapshotIndex,
    ep: &Endpoint,
    service: Option<&Service>,
    security: UpstreamSecurity,
    alpn: Alpn,
    authority: Option<&str>,
) -> Result<Upstream, Refusal> {
    let originating = Originating {
        credentials: &snapshot.snapshot.credentials,
        alpn,
        authority,
    };
    let mut upstream = connect_endpoint(ctx, ep, security, originating).await?;
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

/// What a TLS origination to an endpoint needs besides its settings.
struct Originating<'a> {
    credentials: &'a std::collections::BTreeMap<String, crate::snapshot::TlsCredential>,
    alpn: Alpn,
    authority: Option<&'a str>,
}

async fn connect_endpoint(
    ctx: &Arc<ProxyContext>,
    ep: &Endpoint,
    security: UpstreamSecurity,
    originating: Originating<'_>,
) -> Result<Upstream, Refusal> {
    let addr: SocketAddr = ep.addr();
    match security {
        UpstreamSecurity::Plaintext => connect(addr, None, ctx.settings.connect_timeout)
            .await
            .map(Upstream::Plain)
            .map_err(|_| Refusal::UpstreamUnreachable),
        UpstreamSecurity::Originate {
            mutual,
            host,
            settings,
        } => {
            // Fail closed: a TLS the proxy cannot set up as asked is no connection at all.
            let asked = Asked {
                host: &host,
                authority: originating.authority,
                mutual,
                settings: &settings,
                credentials: originating.credentials,
            };
            let o = ctx
                .originations
                .prepare(&asked, originating.alpn)
                .map_err(|why| {
                    tracing::warn!(%addr, %host, reason = %why, "TLS origination refused (DestinationRule tls SIMPLE/MUTUAL)");
                    Refusal::NoCertificate
                })?;
            let tcp = connect(addr, None, ctx.settings.connect_timeout)
                .await
                .map_err(|_| Refusal::UpstreamUnreachable)?;
            match super::originate::handshake(&o, tcp, ctx.settings.handshake_timeout).await {
                Ok(s) => Ok(Upstream::Tls(Box::new(s))),
                Err(e) => {
                    tracing::warn!(%addr, %host, sni = ?o.server_name, error = %e, "TLS origination handshake failed (the server's certificate is checked against the credentialName's ca.crt or the system roots, and its name against subjectAltNames or the SNI)");
                    Err(Refusal::Handshake)
                }
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::decode_snapshot;

    /// db (two subsets, one endpoint each) with a tls route by SNI and a 0/100 tcp route, and
    /// cache, the other Service a route may name.
    fn index() -> SnapshotIndex {
        let ep = |ip: &str| serde_json::json!({"ip": ip, "port": 5432, "meshed": false});
        let to = |svc: &str, subset: Option<&str>, weight: u32| serde_json::json!({"service": svc, "port": 5432, "subset": subset, "weight": weight});
        let json = serde_json::json!({
            "schemaVersion": 1, "version": "v1",
            "identity": "spiffe://cluster.local/ns/shop/sa/web", "trustDomain": "cluster.local",
            "inbound": {"defaultMode": "PERMISSIVE"},
            "outbound": {"services": [{
                "clusterIp": "198.19.0.20", "port": 5432, "name": "db.shop.svc.cluster.local",
                "endpoints": [ep("198.18.1.5"), ep("198.18.1.6")],
                "subsets": {"v1": [0], "v2": [1], "none": []},
                "l4": {
                    "tls": [{"name": "shop/db", "matches": [{"sniHosts": ["*.cache.example"]}],
                             "destinations": [to("cache.shop.svc.cluster.local", None, 100)]},
                            {"name": "shop/db", "matches": [{"sniHosts": ["gone.example"]}],
                             "destinations": [to("gone.shop.svc.cluster.local", None, 100)]}],
                    "tcp": [{"name": "shop/db", "destinations": [
                        to("db.shop.svc.cluster.local", Some("none"), 50),
                        to("db.shop.svc.cluster.local", Some("v2"), 50)]}]
                }
            }, {
                "clusterIp": "198.19.0.21", "port": 5432, "name": "cache.shop.svc.cluster.local",
                "endpoints": [ep("198.18.1.9")]
            }]}
        });
        SnapshotIndex::new(decode_snapshot(json.to_string().as_bytes()).unwrap())
    }

    #[test]
    fn l4_routes_pick_the_destination_by_sni_then_weight_skipping_empty_subsets() {
        let snap = index();
        let dialled: SocketAddr = "198.19.0.20:5432".parse().unwrap();
        let OutboundRoute::Service { service, .. } = snap.route(dialled) else {
            panic!("db is a Service address");
        };
        let pick = |sni: Option<&str>| match l4_destination(&snap, &service.l4, dialled, sni) {
            Some(Ok((svc, eps, subset))) => Ok((
                svc.name.clone(),
                eps.iter().map(|e| e.ip.to_string()).collect::<Vec<_>>(),
                subset.map(str::to_string),
            )),
            Some(Err(e)) => Err(e),
            None => Err("no route".into()),
        };
        let cache = pick(Some("a.cache.example")).unwrap();
        assert_eq!(cache.0, "cache.shop.svc.cluster.local");
        assert_eq!(cache.1, ["198.18.1.9"]);
        // No SNI, or one no tls route takes: the tcp route; its empty subset gives its share
        // to v2, every time.
        for sni in [None, Some("other.example")] {
            for _ in 0..20 {
                let (svc, eps, subset) = pick(sni).unwrap();
                assert_eq!(
                    (svc.as_str(), subset.as_deref()),
                    ("db.shop.svc.cluster.local", Some("v2"))
                );
                assert_eq!(eps, ["198.18.1.6"]);
            }
        }
        // A destination the snapshot lacks is refused (NR), naming it.
        let e = pick(Some("gone.example")).unwrap_err();
        assert!(e.contains("gone.shop.svc.cluster.local:5432"), "{e}");
    }

    /// A real ClientHello as rustls writes it, naming `server`.
    fn client_hello(server: &str) -> Vec<u8> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from(server.to_string()).unwrap();
        let mut conn = rustls::ClientConnection::new(Arc::new(cfg), name).unwrap();
        let mut out = Vec::new();
        conn.write_tls(&mut out).unwrap();
        out
    }

    #[tokio::test]
    async fn the_sni_is_read_from_the_first_bytes_and_kept_for_the_upstream() {
        use tokio::io::AsyncWriteExt;
        let hello = client_hello("db.example.com");
        let (mut client, mut proxy) = tokio::io::duplex(64 * 1024);
        // In two writes: the reader waits for the whole ClientHello.
        let (a, b) = hello.split_at(hello.len() / 2);
        client.write_all(a).await.unwrap();
        let rest = b.to_vec();
        let writer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            client.write_all(&rest).await.unwrap();
            client
        });
        let mut prefix = Vec::new();
        let sni = read_sni(&mut proxy, &mut prefix, Duration::from_secs(5)).await;
        assert_eq!(sni.as_deref(), Some("db.example.com"));
        assert_eq!(prefix, hello, "every byte read is replayed upstream");
        let _client = writer.await.unwrap();
        // Plaintext is told at once; silence ends at the timeout with no name.
        let (mut client, mut proxy) = tokio::io::duplex(1024);
        client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let mut prefix = Vec::new();
        assert_eq!(
            read_sni(&mut proxy, &mut prefix, Duration::from_secs(5)).await,
            None
        );
        assert_eq!(prefix, b"GET / HTTP/1.1\r\n");
        let (_quiet, mut proxy) = tokio::io::duplex(1024);
        let mut prefix = Vec::new();
        assert_eq!(
            read_sni(&mut proxy, &mut prefix, Duration::from_millis(50)).await,
            None
        );
        assert!(prefix.is_empty());
    }
}
