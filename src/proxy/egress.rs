//! Outbound connections to an address no Service owns: declared external services
//! (ServiceEntries, matched by [`crate::route::egress`]) go on with their host's labels,
//! the rest pass through under ALLOW_ANY (`PassthroughCluster`) or are refused under
//! REGISTRY_ONLY (`BlackHoleCluster`: HTTP 502, other connections closed), counted and logged.
//! The client's first bytes are read only when they can change the answer: a TLS server name
//! or an HTTP Host on a port some entry names, or anything under REGISTRY_ONLY. A `resolution:
//! DNS` host dialled at its allocated address (the proxy's DNS server gave it) goes to the
//! addresses the pod's nameservers give the name.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode, header};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::TcpStream;

use super::ProxyContext;
use super::access_log::{Entry, known};
use super::copy::relay;
use super::http::detect::{Detected, MAX_DETECT_BYTES, detect};
use super::http::exchange::{ConnLog, Exchange, Record, UpstreamLog, Why};
use super::http::server::{self, Counted, ResponseBody};
use super::http::upstream::{TcpConnector, Upstream as HttpUpstream, forward};
use super::metrics::TcpLabels;
use super::net::connect;
use super::originate::{Alpn, Asked, Originate};
use super::outbound::{
    Refusal, Upstream, l4_destination, open_endpoint, read_sni, relay_service, reporter_labels,
};
use super::sniff::{Prefixed, ServerName, server_name};
use crate::route::egress::{self, BLACK_HOLE, Declared, PASSTHROUGH, Resolution, Seen, Verdict};
use crate::route::model::Origination;
use crate::snapshot::{ClientTls, OutboundPolicy, OutboundRoute, SnapshotIndex};

/// What the client's first bytes said.
enum Opening {
    Http,
    Tls(Option<String>),
    Opaque,
}

/// Handles a connection to `orig`, which no Service owns, to its end.
pub async fn handle(
    ctx: &Arc<ProxyContext>,
    mut stream: TcpStream,
    orig: SocketAddr,
    peer: Option<SocketAddr>,
    snapshot: Arc<SnapshotIndex>,
) -> Result<(), Refusal> {
    let table = &snapshot.snapshot.outbound.egress;
    let policy = snapshot.snapshot.outbound.policy;
    // An entry's own address wins before any byte is read (Istio's `address:port` listener).
    if let Some(declared) = egress::by_address(table, orig) {
        // Unless a mesh VirtualService routes the host's HTTP port (to an egress gateway):
        // then its requests are routed (egress-gw helper's hunk).
        // Likewise when a DestinationRule originates TLS for it (SIMPLE/MUTUAL): its requests
        // must not be relayed as the app's plaintext bytes.
        if declared.port.protocol == egress::PortProtocol::Http
            && snapshot
                .service_named(&declared.service.host, orig.port())
                .is_some_and(|s| !s.http.is_empty() || s.tls.is_some_and(|m| m.originates()))
        {
            serve_http(ctx, stream, orig, peer, snapshot.clone()).await;
            return Ok(());
        }
        return relay_tcp(
            ctx,
            stream,
            Vec::new(),
            orig,
            peer,
            &snapshot,
            Verdict::Declared(declared),
            None,
        )
        .await;
    }
    let must_look =
        policy == OutboundPolicy::RegistryOnly || egress::names_port(table, orig.port());
    if !must_look {
        return relay_tcp(
            ctx,
            stream,
            Vec::new(),
            orig,
            peer,
            &snapshot,
            Verdict::Passthrough,
            None,
        )
        .await;
    }
    let mut prefix = Vec::new();
    let opening = read_opening(&mut stream, &mut prefix, ctx.settings.sniff_timeout).await;
    match opening {
        Opening::Http => {
            let io = Prefixed::new(prefix, stream);
            serve_http(ctx, io, orig, peer, snapshot.clone()).await;
            Ok(())
        }
        Opening::Tls(sni) => {
            let verdict = egress::decide(table, policy, orig, Seen::Tls(sni.as_deref()));
            relay_tcp(
                ctx,
                stream,
                prefix,
                orig,
                peer,
                &snapshot,
                verdict,
                sni.as_deref(),
            )
            .await
        }
        Opening::Opaque => {
            let verdict = egress::decide(table, policy, orig, Seen::Opaque);
            relay_tcp(ctx, stream, prefix, orig, peer, &snapshot, verdict, None).await
        }
    }
}

/// Reads until the opening is known: a ClientHello (and its SNI), an HTTP request line, or
/// neither (other bytes, a silent client past `timeout`, or too many bytes).
async fn read_opening<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    timeout: Duration,
) -> Opening {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if !buf.is_empty() {
            match server_name(buf) {
                ServerName::Hello(sni) => return Opening::Tls(sni),
                ServerName::NeedMore if buf.len() < super::sniff::MAX_SNIFF_BYTES => {}
                ServerName::NeedMore => return Opening::Tls(None),
                ServerName::NotTls if buf[0] == 0x16 => return Opening::Tls(None),
                ServerName::NotTls => match detect(buf) {
                    Detected::Http1 | Detected::Http2 => return Opening::Http,
                    Detected::NotHttp => return Opening::Opaque,
                    Detected::NeedMore if buf.len() >= MAX_DETECT_BYTES => return Opening::Opaque,
                    Detected::NeedMore => {}
                },
            }
        }
        let mut chunk = [0u8; 4096];
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => return Opening::Opaque,
        }
    }
}

/// The source reporter's labels of a connection or request to no Service: the declared
/// host's, or the passthrough / black hole cluster's (with the HTTP Host, if any).
fn labels_of(snapshot: &SnapshotIndex, verdict: &Verdict<'_>, host: Option<&str>) -> TcpLabels {
    let labels = reporter_labels(snapshot);
    match verdict {
        Verdict::Declared(d) => labels.with_external(&d.service.host, &d.service.namespace),
        Verdict::Passthrough => labels.with_cluster(PASSTHROUGH, host),
        Verdict::BlackHole => labels.with_cluster(BLACK_HOLE, host),
    }
}

/// Istio's cluster name of a declared host: `outbound|<port>||<host>`.
fn cluster_of(verdict: &Verdict<'_>, port: u16) -> String {
    match verdict {
        Verdict::Declared(d) => format!("outbound|{port}||{}", d.service.host),
        Verdict::Passthrough => PASSTHROUGH.to_string(),
        Verdict::BlackHole => BLACK_HOLE.to_string(),
    }
}

/// Opens the upstream of a declared or passed-through connection: the entry's endpoints in
/// turn for STATIC (mTLS to a meshed pod a `workloadSelector` picked), else where the app
/// dialled. With `originate` (a DestinationRule's SIMPLE/MUTUAL for the host's port) the
/// proxy opens TLS on it, as Envoy's cluster for the port does whatever its protocol: to the
/// STATIC endpoints, else on the port's `targetPort`; never the app's bytes in plaintext.
async fn open(
    ctx: &Arc<ProxyContext>,
    snapshot: &SnapshotIndex,
    orig: SocketAddr,
    declared: Option<&Declared<'_>>,
    originate: Option<&Originate>,
) -> Result<(Upstream, SocketAddr), Refusal> {
    let attempts = ctx.settings.connect_attempts.max(1);
    if let Some(d) = declared
        && d.service.resolution == Resolution::Static
        && !d.port.endpoints.is_empty()
    {
        let mut last = Refusal::UpstreamUnreachable;
        for ep in d.port.endpoints.iter().take(attempts) {
            let opened = match originate {
                Some(_) => dial(ctx, ep.addr(), originate).await,
                None => {
                    let security = ep.security();
                    open_endpoint(ctx, snapshot, ep, None, security, Alpn::Opaque, None).await
                }
            };
            match opened {
                Ok(up) => return Ok((up, ep.addr())),
                Err(r) => last = r,
            }
        }
        return Err(last);
    }
    let port = match originate {
        Some(_) => declared.and_then(|d| d.port.target_port),
        None => None,
    }
    .unwrap_or(orig.port());
    let mut lookups = declared
        .map(|d| lookups(d, orig, port))
        .into_iter()
        .flatten()
        .peekable();
    if lookups.peek().is_some() {
        // Each name in turn, looked up only when the ones before it gave no connection.
        let mut last = Refusal::UpstreamUnreachable;
        let mut tried = 0;
        for (name, port) in lookups {
            for addr in addrs(name, port).await {
                if tried == attempts {
                    return Err(last);
                }
                tried += 1;
                match dial(ctx, addr, originate).await {
                    Ok(up) => return Ok((up, addr)),
                    Err(r) => last = r,
                }
            }
        }
        return Err(last);
    }
    let addr = SocketAddr::new(orig.ip(), port);
    Ok((dial(ctx, addr, originate).await?, addr))
}

/// Dials `addr`, and opens TLS on it when `originate` says (fail closed: a failed handshake
/// is no connection).
async fn dial(
    ctx: &ProxyContext,
    addr: SocketAddr,
    originate: Option<&Originate>,
) -> Result<Upstream, Refusal> {
    let tcp = connect(addr, None, ctx.settings.connect_timeout)
        .await
        .map_err(|_| Refusal::UpstreamUnreachable)?;
    let Some(o) = originate else {
        return Ok(Upstream::Plain(tcp));
    };
    match super::originate::handshake(o, tcp, ctx.settings.handshake_timeout).await {
        Ok(tls) => Ok(Upstream::Tls(Box::new(tls))),
        Err(e) => {
            tracing::warn!(%addr, sni = ?o.server_name, error = %e, "TLS origination handshake failed (the server's certificate is checked against the credentialName's ca.crt or the system roots, and its name against subjectAltNames or the SNI)");
            Err(Refusal::Handshake)
        }
    }
}

/// The TLS origination a DestinationRule asks for on a declared host's port (SIMPLE or
/// MUTUAL, laid by the control plane on an address-less Service of the host): whether
/// MUTUAL, and its settings.
fn origination_of<'a>(
    snapshot: &'a SnapshotIndex,
    d: &Declared<'_>,
    port: u16,
) -> Option<(bool, &'a Origination)> {
    static NO_SETTINGS: Origination = Origination {
        credential_name: None,
        sni: None,
        subject_alt_names: Vec::new(),
        ca_certificates: None,
        client_certificate: None,
        private_key: None,
        ca_crl: None,
        refused: None,
    };
    let s = snapshot.service_named(&d.service.host, port)?;
    let mode = s.tls.filter(|m| m.originates())?;
    let settings = s.traffic.origination.as_ref().unwrap_or(&NO_SETTINGS);
    Some((mode == ClientTls::Mutual, settings))
}

/// What a declared `resolution: DNS` destination makes the proxy look up before it can send,
/// in order, each name with the port it is dialled on: the entry's endpoints (each on its own
/// port) whatever was dialled, or its host when dialled at its allocated address (on `port`,
/// the port dialled or the `targetPort` the proxy originates TLS to). Nothing: the address
/// dialled will do.
fn lookups<'d>(
    d: &'d Declared<'_>,
    orig: SocketAddr,
    port: u16,
) -> impl Iterator<Item = (&'d str, u16)> {
    let endpoints = d.dns_endpoints().unwrap_or_default();
    // `resolves` is None for an entry with endpoints: one of the two is empty.
    let host = d.resolves(orig).map(|h| (h, port));
    endpoints
        .iter()
        .map(|e| (e.address.as_str(), e.port))
        .chain(host)
}

/// Where a name of [`lookups`] leads: the addresses it resolves to (an IP: itself, as
/// `dns::lookup` answers one), on `port`.
async fn addrs(name: &str, port: u16) -> Vec<SocketAddr> {
    resolved(name)
        .await
        .into_iter()
        .map(|ip| SocketAddr::new(ip, port))
        .collect()
}

/// Where a declared request goes when the proxy has to look it up.
enum Looked {
    /// Nothing to look up: where the app dialled (or the STATIC endpoints).
    Dialled,
    /// The first address of the first name of [`lookups`] that resolves.
    Found(SocketAddr),
    /// Nothing resolved: no healthy upstream.
    Nothing,
}

impl Looked {
    async fn up(d: &Declared<'_>, orig: SocketAddr, originates: bool) -> Looked {
        let port = match originates {
            true => d.port.target_port.unwrap_or(orig.port()),
            false => orig.port(),
        };
        let mut lookups = lookups(d, orig, port).peekable();
        if lookups.peek().is_none() {
            return Looked::Dialled;
        }
        for (name, port) in lookups {
            if let Some(addr) = addrs(name, port).await.first() {
                return Looked::Found(*addr);
            }
        }
        Looked::Nothing
    }
}

/// The addresses the pod's nameservers give `host` (for a host dialled at its allocated
/// address, which leads nowhere itself).
async fn resolved(host: &str) -> Vec<std::net::IpAddr> {
    let ips = super::dns::resolve(&super::dns::upstreams(), host).await;
    if ips.is_empty() {
        tracing::info!(%host, "egress: the declared host does not resolve through the pod's nameservers; connection refused");
    }
    ips
}

/// A TCP (or TLS) connection to its end: relayed, or for the black hole counted, logged and
/// closed.
#[allow(clippy::too_many_arguments)]
async fn relay_tcp(
    ctx: &Arc<ProxyContext>,
    mut stream: TcpStream,
    mut prefix: Vec<u8>,
    orig: SocketAddr,
    peer: Option<SocketAddr>,
    snapshot: &SnapshotIndex,
    verdict: Verdict<'_>,
    sni: Option<&str>,
) -> Result<(), Refusal> {
    let start = SystemTime::now();
    // A mesh VirtualService's tls/tcp routes for the declared host's port (Istio's egress
    // gateway pattern with TLS passthrough): the connection goes where they say, as to a
    // Service; when none takes it, as the ServiceEntry says.
    let mut read = None;
    if let Verdict::Declared(d) = &verdict
        && let Some(l4) = snapshot
            .service_named(&d.service.host, orig.port())
            .map(|s| &s.l4)
            .filter(|l4| !l4.is_empty())
    {
        if sni.is_none() && prefix.is_empty() && !l4.tls.is_empty() {
            read = read_sni(&mut stream, &mut prefix, ctx.settings.sniff_timeout).await;
        }
        match l4_destination(snapshot, l4, orig, sni.or(read.as_deref())) {
            Some(Ok((service, endpoints, subset))) => {
                let route = OutboundRoute::Service { service, endpoints };
                let client = Prefixed::new(prefix, stream);
                return relay_service(ctx, snapshot, client, route, subset, orig, peer, start)
                    .await;
            }
            Some(Err(what)) => {
                tracing::debug!(%orig, host = %d.service.host, route = %what, "tcp/tls route destination not in the config (NR)");
                return Err(Refusal::NoRoute);
            }
            None => {}
        }
    }
    let sni = sni.or(read.as_deref());
    let started = tokio::time::Instant::now();
    let mut labels = labels_of(snapshot, &verdict, None);
    let cluster = cluster_of(&verdict, orig.port());
    let m = &ctx.metrics;
    let log = |labels: &TcpLabels,
               sent: u64,
               received: u64,
               upstream: Option<SocketAddr>,
               flags: &str| {
        if ctx.access_log_format().is_some() {
            ctx.log_access(&Entry {
                bytes_received: sent,
                bytes_sent: received,
                duration: started.elapsed(),
                response_flags: flags,
                upstream_host: upstream,
                upstream_cluster: Some(&cluster),
                downstream_local_address: Some(orig),
                downstream_remote_address: peer,
                requested_server_name: sni,
                source_principal: known(&labels.source_principal),
                destination_principal: known(&labels.destination_principal),
                ..Entry::new(start)
            });
        }
    };
    let declared = match &verdict {
        Verdict::BlackHole => {
            // Envoy's tcp_proxy to a cluster without hosts: no healthy upstream.
            labels.response_flags = "UH".into();
            m.tcp_opened.get_or_create(&labels).inc();
            m.tcp_closed.get_or_create(&labels).inc();
            log(&labels, 0, 0, None, "UH");
            if ctx.access_log_format().is_none() {
                tracing::info!(destination = %orig, sni = sni.unwrap_or("-"), "outbound connection refused: no ServiceEntry declares it and the outbound traffic policy is REGISTRY_ONLY (BlackHoleCluster)");
            }
            drop(stream);
            return Err(Refusal::RegistryOnly);
        }
        Verdict::Declared(d) => Some(d),
        Verdict::Passthrough => None,
    };
    // A DestinationRule SIMPLE/MUTUAL for the host's port: TLS on the relayed stream (the
    // app's bytes inside, whatever they are), or no connection; never plaintext.
    let asked = declared.and_then(|d| Some((d, origination_of(snapshot, d, orig.port())?)));
    let originate = match asked {
        Some((d, (mutual, settings))) => {
            let asked = Asked {
                host: &d.service.host,
                authority: sni,
                mutual,
                settings,
                credentials: &snapshot.snapshot.credentials,
            };
            match ctx.originations.prepare(&asked, Alpn::Opaque) {
                Ok(o) => Some(o),
                Err(why) => {
                    tracing::warn!(destination = %orig, host = %d.service.host, reason = %why, "TLS origination refused (DestinationRule tls SIMPLE/MUTUAL): connection closed");
                    // Envoy's answer when a cluster's TLS context is not ready: no healthy
                    // upstream.
                    labels.response_flags = "UH".into();
                    m.tcp_opened.get_or_create(&labels).inc();
                    m.tcp_closed.get_or_create(&labels).inc();
                    log(&labels, 0, 0, None, "UH");
                    return Err(Refusal::NoCertificate);
                }
            }
        }
        None => None,
    };
    let (upstream, addr) = open(ctx, snapshot, orig, declared, originate.as_ref()).await?;
    if let (Upstream::Mtls(_), Some(d)) = (&upstream, declared)
        && let Some(ep) = d.port.endpoints.iter().find(|e| e.addr() == addr)
    {
        if let Some(w) = &ep.workload {
            labels.fill_destination(w);
        }
        if let (Some(id), Some(tls)) = (&ep.identity, ctx.tls()) {
            labels.destination_principal = id.clone();
            labels.source_principal = tls.cert.identity.clone();
        }
    }
    m.tcp_opened.get_or_create(&labels).inc();
    let idle = ctx.settings.idle_timeout;
    let (moved, result) = relay(Prefixed::new(prefix, stream), upstream, idle).await;
    m.tcp_bytes(&labels, moved.sent, moved.received);
    m.tcp_closed.get_or_create(&labels).inc();
    log(&labels, moved.sent, moved.received, Some(addr), "-");
    if let Err(e) = result {
        tracing::debug!(%orig, error = %e, "egress connection ended with an error");
    }
    Ok(())
}

// === HTTP ===

/// An HTTP client connection to one address outside the mesh (plaintext, as the app sent it).
type PlainUpstream = HttpUpstream<TcpConnector, Counted<Incoming>>;

/// One downstream HTTP connection to no Service: each request is matched by its Host.
struct EgressHttp {
    ctx: Arc<ProxyContext>,
    orig: SocketAddr,
    snapshot: Arc<SnapshotIndex>,
    conn: Arc<ConnLog>,
    /// One upstream connection per address this connection's requests went to.
    upstreams: Mutex<Vec<(SocketAddr, Arc<PlainUpstream>)>>,
    /// The same for originated TLS, per address and settings.
    tls_upstreams: Mutex<Vec<(SocketAddr, String, Arc<TlsUpstream>)>>,
    recorders: Mutex<Vec<(TcpLabels, Arc<Mutex<super::metrics::RequestRecorder>>)>>,
}

async fn serve_http<I>(
    ctx: &Arc<ProxyContext>,
    io: I,
    orig: SocketAddr,
    peer: Option<SocketAddr>,
    snapshot: Arc<SnapshotIndex>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let state = Arc::new(EgressHttp {
        ctx: ctx.clone(),
        orig,
        snapshot,
        conn: Arc::new(ConnLog {
            peer: peer.unwrap_or(orig),
            destination: orig,
            sni: None,
            source_principal: None,
            destination_principal: None,
        }),
        upstreams: Mutex::new(Vec::new()),
        tls_upstreams: Mutex::new(Vec::new()),
        recorders: Mutex::new(Vec::new()),
    });
    server::serve_pipeline(ctx, io, state, "egress", None, Duration::ZERO).await;
}

impl EgressHttp {
    /// The proxy's own 503 `UH` (no healthy upstream), recorded under `labels` and
    /// `cluster` with `details` as the response-code details.
    fn unavailable(
        &self,
        exchange: Exchange,
        labels: TcpLabels,
        cluster: String,
        details: &'static str,
    ) -> Response<ResponseBody> {
        let record = self.record(
            labels,
            UpstreamLog {
                host: None,
                cluster,
            },
        );
        let why = Why {
            flags: "UH",
            details: Some(details),
            failure: None,
        };
        exchange.local(
            StatusCode::SERVICE_UNAVAILABLE,
            "no healthy upstream",
            &record,
            why,
        )
    }

    fn record(&self, labels: TcpLabels, upstream: UpstreamLog) -> Record {
        let recorder = {
            let mut recorders = self.recorders.lock().unwrap_or_else(|p| p.into_inner());
            match recorders.iter().find(|(l, _)| *l == labels) {
                Some((_, r)) => r.clone(),
                None => {
                    let r = Arc::new(Mutex::new(self.ctx.metrics.request_recorder(&labels)));
                    recorders.push((labels, r.clone()));
                    r
                }
            }
        };
        Record {
            recorder,
            conn: self.conn.clone(),
            upstream,
        }
    }

    fn upstream(&self, addr: SocketAddr) -> Arc<PlainUpstream> {
        let mut all = self.upstreams.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, u)) = all.iter().find(|(a, _)| *a == addr) {
            return u.clone();
        }
        let u = Arc::new(HttpUpstream::new(TcpConnector {
            addr,
            source: None,
            timeout: self.ctx.settings.connect_timeout,
        }));
        all.push((addr, u.clone()));
        u
    }
}

impl EgressHttp {
    fn tls_upstream(
        &self,
        addr: SocketAddr,
        key: String,
        o: super::originate::Originate,
    ) -> Arc<TlsUpstream> {
        let mut all = self.tls_upstreams.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, _, u)) = all.iter().find(|(a, k, _)| *a == addr && *k == key) {
            return u.clone();
        }
        let u = Arc::new(HttpUpstream::new(OriginateConnector {
            addr,
            timeout: self.ctx.settings.connect_timeout,
            handshake: self.ctx.settings.handshake_timeout,
            originate: o,
        }));
        all.push((addr, key, u.clone()));
        u
    }
}

/// An HTTP client connection to one address outside the mesh over TLS the proxy originates.
type TlsUpstream = HttpUpstream<OriginateConnector, Counted<Incoming>>;

/// Dials an address and opens TLS on it as a DestinationRule's SIMPLE/MUTUAL says.
struct OriginateConnector {
    addr: SocketAddr,
    timeout: Duration,
    handshake: Duration,
    originate: super::originate::Originate,
}

impl super::http::upstream::Connect for OriginateConnector {
    type Io = tokio_rustls::client::TlsStream<TcpStream>;
    async fn connect(&self) -> std::io::Result<Self::Io> {
        let tcp = connect(self.addr, None, self.timeout).await?;
        super::originate::handshake(&self.originate, tcp, self.handshake)
            .await
            .inspect_err(|e| {
                tracing::warn!(addr = %self.addr, sni = ?self.originate.server_name, error = %e, "TLS origination handshake failed (the server's certificate is checked against the credentialName's ca.crt or the system roots, and its name against subjectAltNames or the SNI)");
            })
    }
}

impl server::Pipeline for EgressHttp {
    /// Recorded before any host is decided: destination `unknown`, as Istio reports a
    /// request no route took.
    fn refuse_connect(&self, req: Request<Incoming>) -> Response<ResponseBody> {
        let (exchange, _, _) = Exchange::begin(&self.ctx, req);
        let snapshot = self.ctx.snapshot().unwrap_or_else(|| self.snapshot.clone());
        let upstream = UpstreamLog {
            host: None,
            cluster: "-".to_string(),
        };
        let record = self.record(reporter_labels(&snapshot).with_service("unknown"), upstream);
        exchange.refused_upgrade(&record)
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<ResponseBody> {
        let (exchange, parts, body) = Exchange::begin(&self.ctx, req);
        let host = parts
            .uri
            .authority()
            .map(|a| a.as_str().to_string())
            .or_else(|| {
                parts
                    .headers
                    .get(header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .map(str::to_string)
            })
            .unwrap_or_default();
        // The config of now: a ServiceEntry added while the connection is open applies.
        let snapshot = self.ctx.snapshot().unwrap_or_else(|| self.snapshot.clone());
        let out = &snapshot.snapshot.outbound;
        let verdict = egress::decide(&out.egress, out.policy, self.orig, Seen::Http(&host));
        // A mesh VirtualService routes this declared host (Istio's egress-gateway pattern):
        // its routes send the request, to the egress gateway, like a Service's.
        if let Verdict::Declared(d) = &verdict
            && let Some(service) = snapshot
                .service_named(&d.service.host, self.orig.port())
                .filter(|s| !s.http.is_empty())
        {
            return super::http::outbound::serve_routed(
                &self.ctx,
                exchange,
                parts,
                body,
                &snapshot,
                service,
                self.orig,
                self.conn.clone(),
            )
            .await;
        }
        // A DestinationRule SIMPLE/MUTUAL for the declared host's port: the proxy originates
        // TLS ([`super::originate`]); a setup that cannot be done as asked answers 503, never
        // plaintext.
        // A wildcard host's SNI is the request's Host (Istio's auto-SNI); HTTP/2 is
        // announced by ALPN.
        let alpn = Alpn::of_http(parts.version == hyper::Version::HTTP_2);
        let originate = match &verdict {
            Verdict::Declared(d) => {
                origination_of(&snapshot, d, self.orig.port()).map(|(mutual, settings)| {
                    let asked = Asked {
                        host: &d.service.host,
                        authority: Some(&host).filter(|h| !h.is_empty()).map(|h| h.as_str()),
                        mutual,
                        settings,
                        credentials: &snapshot.snapshot.credentials,
                    };
                    self.ctx.originations.prepare(&asked, alpn)
                })
            }
            _ => None,
        };
        let labels = labels_of(
            &snapshot,
            &verdict,
            Some(&host).filter(|h| !h.is_empty()).map(|h| h.as_str()),
        );
        let cluster = cluster_of(&verdict, self.orig.port());
        if let Some(Err(why)) = &originate {
            tracing::warn!(destination = %self.orig, %host, reason = %why, "TLS origination refused (DestinationRule tls SIMPLE/MUTUAL)");
            // Envoy's answer when a cluster's TLS context is not ready: no healthy upstream.
            return self.unavailable(exchange, labels, cluster, "tls_origination_not_ready");
        }
        let target = match &verdict {
            Verdict::BlackHole => {
                let record = self.record(
                    labels,
                    UpstreamLog {
                        host: None,
                        cluster,
                    },
                );
                if !exchange.logs() {
                    tracing::info!(destination = %self.orig, %host, "outbound request refused: no ServiceEntry declares it and the outbound traffic policy is REGISTRY_ONLY (BlackHoleCluster)");
                }
                // Istio's `block_all` route: a direct 502.
                let why = Why {
                    flags: "-",
                    details: Some("direct_response"),
                    failure: None,
                };
                return exchange.local(StatusCode::BAD_GATEWAY, "", &record, why);
            }
            Verdict::Declared(d) => match Looked::up(d, self.orig, originate.is_some()).await {
                Looked::Dialled => match &originate {
                    Some(_) => d
                        .tls_targets(self.orig)
                        .first()
                        .copied()
                        .unwrap_or(self.orig),
                    None => d.targets(self.orig).first().copied().unwrap_or(self.orig),
                },
                Looked::Found(addr) => addr,
                Looked::Nothing => {
                    // Envoy's answer for a cluster without a healthy host.
                    return self.unavailable(exchange, labels, cluster, "no_healthy_upstream");
                }
            },
            Verdict::Passthrough => self.orig,
        };
        let record = self.record(
            labels,
            UpstreamLog {
                host: Some(target),
                cluster,
            },
        );
        let request = Request::from_parts(parts, body);
        let idle = self.ctx.settings.idle_timeout;
        let sent = match originate {
            Some(Ok(o)) => {
                // Per origination (its credential's material included) and ALPN.
                let key = format!("{} {alpn:?}", o.key);
                let upstream = self.tls_upstream(target, key, o);
                forward(&*upstream, request, &host, idle).await
            }
            _ => forward(&*self.upstream(target), request, &host, idle).await,
        };
        match sent {
            Ok(resp) => exchange.respond(resp, record),
            Err(e) => {
                tracing::debug!(%target, error = %e, "egress request failed");
                exchange.failed(&e, &record)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    /// An "external" server on loopback: answers each HTTP request with `ok`, or echoes.
    async fn external(http: bool) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 {
                            return;
                        }
                        let reply: &[u8] = if http {
                            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
                        } else {
                            &buf[..n]
                        };
                        if s.write_all(reply).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    /// A proxy context holding a snapshot with `policy` and these ServiceEntries (in
    /// namespace `payments`), as the operator would send it.
    fn proxy(policy: &str, entries: &[serde_json::Value]) -> Arc<ProxyContext> {
        proxy_with(policy, compiled(entries))
    }

    fn compiled(entries: &[serde_json::Value]) -> Vec<egress::ExternalService> {
        entries
            .iter()
            .enumerate()
            .flat_map(|(i, e)| {
                egress::compile("payments", &format!("se-{i}"), e)
                    .unwrap()
                    .services
            })
            .collect()
    }

    fn proxy_with(policy: &str, egress: Vec<egress::ExternalService>) -> Arc<ProxyContext> {
        let (ctx, inputs) = ProxyContext::new(Default::default());
        let snapshot = json!({
            "schemaVersion": 1, "version": "v1",
            "identity": "spiffe://cluster.local/ns/payments/sa/productpage",
            "trustDomain": "cluster.local",
            "workload": {"name": "productpage", "namespace": "payments"},
            "inbound": {"defaultMode": "PERMISSIVE"},
            "outbound": {"policy": policy, "egress": egress}
        });
        inputs
            .snapshot
            .offer(snapshot.to_string().as_bytes())
            .unwrap();
        ctx
    }

    /// A client connection whose proxy side goes through the egress path as if iptables had
    /// redirected a connection to `orig`.
    async fn connect_via(ctx: &Arc<ProxyContext>, orig: SocketAddr) -> TcpStream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (accepted, peer) = listener.accept().await.unwrap();
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let snapshot = ctx.snapshot().unwrap();
            let _ = handle(&ctx, accepted, orig, Some(peer), snapshot).await;
        });
        client
    }

    async fn get(client: &mut TcpStream, host: &str) -> String {
        let req = format!("GET / HTTP/1.1\r\nhost: {host}\r\n\r\n");
        client.write_all(req.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), client.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    fn metrics(ctx: &ProxyContext) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &ctx.registry).unwrap();
        text
    }

    fn count(text: &str, metric: &str, labels: &[&str]) -> f64 {
        text.lines()
            .filter(|l| l.starts_with(&format!("{metric}{{")))
            .filter(|l| labels.iter().all(|want| l.contains(want)))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    #[tokio::test]
    async fn registry_only_forwards_a_declared_http_host_per_request_and_answers_502_otherwise() {
        let server = external(true).await;
        let ctx = proxy(
            "REGISTRY_ONLY",
            &[json!({"hosts": ["api.example.com"], "resolution": "DNS",
                     "ports": [{"number": server.port(), "name": "http", "protocol": "HTTP"}]})],
        );
        let mut client = connect_via(&ctx, server).await;
        assert!(get(&mut client, "api.example.com").await.ends_with("ok"));
        // The same keep-alive connection, another Host: refused on its own.
        let refused = get(&mut client, "other.example.com").await;
        assert!(refused.starts_with("HTTP/1.1 502"), "{refused}");
        assert!(get(&mut client, "API.example.com:80").await.ends_with("ok"));
        let text = metrics(&ctx);
        let declared = [
            "destination_service=\"api.example.com\"",
            "destination_service_name=\"api.example.com\"",
            "destination_service_namespace=\"payments\"",
            "response_code=\"200\"",
            "source_workload=\"productpage\"",
        ];
        assert_eq!(
            count(&text, "istio_requests_total", &declared),
            2.0,
            "{text}"
        );
        let blocked = [
            "destination_service=\"other.example.com\"",
            "destination_service_name=\"BlackHoleCluster\"",
            "destination_service_namespace=\"unknown\"",
            "response_code=\"502\"",
        ];
        assert_eq!(
            count(&text, "istio_requests_total", &blocked),
            1.0,
            "{text}"
        );
    }

    /// Istio's egress TLS-origination task: the app calls `http://partner.weft.test:80`, the
    /// ServiceEntry maps port 80 to targetPort 443-like (here the test server's port), and a
    /// DestinationRule SIMPLE (as the control plane lays it: an address-less Service with the
    /// mode, the CA from the proxy's `credentials`) makes the sidecar send TLS, verified.
    #[tokio::test]
    async fn a_declared_http_host_with_simple_or_mutual_gets_tls_originated_and_verified() {
        use crate::proxy::originate::test_support::{Ca, server};
        let ca = Ca::new("partner CA");
        let client_ca = Ca::new("our client CA");
        let simple = server(&ca, &["partner.weft.test"], None, true).await;
        let mutual = server(&ca, &["partner.weft.test"], Some(&client_ca), true).await;
        let (chain, key) = client_ca.leaf(&["client.weft.test"]);
        let run_with =
            |target: SocketAddr, tls: &str, credential: serde_json::Value, addresses: &[&str]| {
                let entries =
                    compiled(
                        &[json!({"hosts": ["partner.weft.test"], "resolution": "DNS",
                "addresses": addresses,
                "ports": [{"number": 80, "name": "http", "protocol": "HTTP",
                           "targetPort": target.port()}]})],
                    );
                let (ctx, inputs) = ProxyContext::new(Default::default());
                let snapshot = json!({
                    "schemaVersion": 1, "version": "v1",
                    "identity": "spiffe://cluster.local/ns/payments/sa/productpage",
                    "trustDomain": "cluster.local",
                    "workload": {"name": "productpage", "namespace": "payments"},
                    "inbound": {"defaultMode": "PERMISSIVE"},
                    "outbound": {"policy": "REGISTRY_ONLY", "egress": entries, "headless": [{
                        "port": 80, "name": "partner.weft.test", "protocol": "http",
                        "tls": tls, "traffic": {"origination": {"credentialName": "partner"}}}]},
                    "credentials": {"partner": credential}
                });
                inputs
                    .snapshot
                    .offer(snapshot.to_string().as_bytes())
                    .unwrap();
                ctx
            };
        let run = |target, tls, credential| run_with(target, tls, credential, &[]);
        let orig: SocketAddr = "127.0.0.1:80".parse().unwrap();
        // SIMPLE, the right CA: the server answers over TLS, no client certificate.
        let ctx = run(simple, "SIMPLE", json!({"ca": ca.pem}));
        let mut client = connect_via(&ctx, orig).await;
        let got = get(&mut client, "partner.weft.test").await;
        assert!(
            got.starts_with("HTTP/1.1 200") && got.ends_with("no-client-cert\n"),
            "{got}"
        );
        // Another CA: 503, nothing in plaintext.
        let other = Ca::new("not the partner's CA");
        let ctx = run(simple, "SIMPLE", json!({"ca": other.pem}));
        let mut client = connect_via(&ctx, orig).await;
        let got = get(&mut client, "partner.weft.test").await;
        assert!(got.starts_with("HTTP/1.1 503"), "{got}");
        // MUTUAL presents the Secret's client certificate.
        let cred = json!({"ca": ca.pem, "certChain": chain, "privateKey": key});
        let ctx = run(mutual, "MUTUAL", cred);
        let mut client = connect_via(&ctx, orig).await;
        let got = get(&mut client, "partner.weft.test").await;
        assert!(
            got.starts_with("HTTP/1.1 200")
                && got.ends_with("client-cert\n")
                && !got.ends_with("no-client-cert\n"),
            "{got}"
        );
        // An entry with addresses is matched by address before any byte is read: its HTTP is
        // still originated, not relayed as the app's plaintext bytes.
        let ctx = run_with(simple, "SIMPLE", json!({"ca": ca.pem}), &["127.0.0.1"]);
        let mut client = connect_via(&ctx, orig).await;
        let got = get(&mut client, "partner.weft.test").await;
        assert!(
            got.starts_with("HTTP/1.1 200") && got.ends_with("no-client-cert\n"),
            "{got}"
        );
        // MUTUAL whose Secret did not reach the proxy: 503 UH, never plaintext.
        let ctx = run(mutual, "MUTUAL", json!({"ca": ca.pem}));
        let mut client = connect_via(&ctx, orig).await;
        let got = get(&mut client, "partner.weft.test").await;
        assert!(got.starts_with("HTTP/1.1 503"), "{got}");
    }

    /// A proxy whose egress table holds `entries` and whose DestinationRule lays `tls` with
    /// credentialName `partner` on `host`:`port` (an address-less Service of `protocol`, as
    /// the control plane lays it), the Secret being `credential`.
    fn originating(
        entries: &[serde_json::Value],
        host: &str,
        port: u16,
        protocol: &str,
        tls: &str,
        credential: serde_json::Value,
    ) -> Arc<ProxyContext> {
        let (ctx, inputs) = ProxyContext::new(Default::default());
        let snapshot = json!({
            "schemaVersion": 1, "version": "v1",
            "identity": "spiffe://cluster.local/ns/payments/sa/productpage",
            "trustDomain": "cluster.local",
            "workload": {"name": "productpage", "namespace": "payments"},
            "inbound": {"defaultMode": "PERMISSIVE"},
            "outbound": {"policy": "REGISTRY_ONLY", "egress": compiled(entries), "headless": [{
                "port": port, "name": host, "protocol": protocol,
                "tls": tls, "traffic": {"origination": {"credentialName": "partner"}}}]},
            "credentials": {"partner": credential}
        });
        inputs
            .snapshot
            .offer(snapshot.to_string().as_bytes())
            .unwrap();
        ctx
    }

    /// Everything the proxy relays back until it closes (10 s at most).
    async fn all_of(client: &mut TcpStream) -> String {
        let mut got = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), client.read_to_end(&mut got)).await;
        String::from_utf8_lossy(&got).into_owned()
    }

    /// The reviewer's high: a ServiceEntry TCP port (or TLS, or one without protocol) whose
    /// host a DestinationRule gives SIMPLE/MUTUAL was relayed in plaintext. Now the relayed
    /// stream goes inside TLS the proxy originates and verifies (Envoy wraps a TCP cluster's
    /// stream the same way), on the port's targetPort; a server the CA does not vouch for gets
    /// nothing, and the client's connection is closed. The test servers speak first (their
    /// line), so the client reads what came through the originated TLS.
    #[tokio::test]
    async fn a_declared_tcp_or_tls_port_with_simple_or_mutual_is_relayed_inside_originated_tls() {
        use crate::proxy::originate::test_support::{Ca, server};
        let ca = Ca::new("partner CA");
        let client_ca = Ca::new("our client CA");
        let simple = server(&ca, &["partner.weft.test"], None, false).await;
        let mutual = server(&ca, &["partner.weft.test"], Some(&client_ca), false).await;
        let (chain, key) = client_ca.leaf(&["client.weft.test"]);
        // TCP, matched by the entry's address; and a port without protocol (TCP too).
        let tcp_entry = |target: SocketAddr, protocol: Option<&str>| {
            let mut port = json!({"number": 9000, "name": "db", "targetPort": target.port()});
            if let Some(p) = protocol {
                port["protocol"] = json!(p);
            }
            json!({"hosts": ["partner.weft.test"], "addresses": ["127.0.0.1"],
                   "resolution": "NONE", "ports": [port]})
        };
        let orig: SocketAddr = "127.0.0.1:9000".parse().unwrap();
        for protocol in [Some("TCP"), None] {
            let ctx = originating(
                &[tcp_entry(simple, protocol)],
                "partner.weft.test",
                9000,
                "tcp",
                "SIMPLE",
                json!({"ca": ca.pem}),
            );
            let mut client = connect_via(&ctx, orig).await;
            assert_eq!(
                all_of(&mut client).await,
                "no-client-cert\n",
                "{protocol:?}"
            );
        }
        // Another CA: closed, nothing relayed.
        let other = Ca::new("not the partner's CA");
        let ctx = originating(
            &[tcp_entry(simple, Some("TCP"))],
            "partner.weft.test",
            9000,
            "tcp",
            "SIMPLE",
            json!({"ca": other.pem}),
        );
        let mut client = connect_via(&ctx, orig).await;
        assert_eq!(all_of(&mut client).await, "");
        // MUTUAL presents the Secret's certificate; without one in the Secret: closed.
        let cred = json!({"ca": ca.pem, "certChain": chain, "privateKey": key});
        let ctx = originating(
            &[tcp_entry(mutual, Some("TCP"))],
            "partner.weft.test",
            9000,
            "tcp",
            "MUTUAL",
            cred,
        );
        let mut client = connect_via(&ctx, orig).await;
        assert_eq!(all_of(&mut client).await, "client-cert\n");
        let ctx = originating(
            &[tcp_entry(mutual, Some("TCP"))],
            "partner.weft.test",
            9000,
            "tcp",
            "MUTUAL",
            json!({"ca": ca.pem}),
        );
        let mut client = connect_via(&ctx, orig).await;
        assert_eq!(all_of(&mut client).await, "");
        // A TLS port picked by the ClientHello's server name, of a wildcard host: the outer
        // TLS names (and verifies) the server name the app sent, its ClientHello goes inside.
        let tls_entry = json!({"hosts": ["*.weft.test"], "resolution": "NONE",
            "ports": [{"number": 9443, "name": "tls", "protocol": "TLS",
                       "targetPort": simple.port()}]});
        let ctx = originating(
            &[tls_entry],
            "*.weft.test",
            9443,
            "tcp",
            "SIMPLE",
            json!({"ca": ca.pem}),
        );
        let mut client = connect_via(&ctx, "127.0.0.1:9443".parse().unwrap()).await;
        client
            .write_all(&client_hello("partner.weft.test"))
            .await
            .unwrap();
        assert_eq!(all_of(&mut client).await, "no-client-cert\n");
    }

    /// Istio's egress gateway task, TLS passthrough: a mesh VirtualService's `tls` route for
    /// a declared TLS host (laid by the control plane on an address-less Service of the
    /// host) sends the connection, ClientHello and all, to the egress gateway's endpoint; a
    /// declared host without such a route goes where the app dialled, as before.
    #[tokio::test]
    async fn a_declared_tls_host_with_a_mesh_tls_route_goes_to_the_egress_gateway() {
        let host = external(false).await;
        let gateway = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let gateway_addr = gateway.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = gateway.accept().await {
                let mut buf = vec![0u8; 4096];
                if s.read(&mut buf).await.is_ok_and(|n| n > 0) {
                    let _ = s.write_all(b"gateway").await;
                }
            }
        });
        let (ctx, inputs) = ProxyContext::new(Default::default());
        let entry = json!({"hosts": ["partner.weft.test", "other.weft.test"],
            "resolution": "DNS",
            "ports": [{"number": host.port(), "name": "tls", "protocol": "TLS"}]});
        let gw = "egressgateway.istio-egress.svc.cluster.local";
        let snapshot = json!({
            "schemaVersion": 1, "version": "v1",
            "identity": "spiffe://cluster.local/ns/payments/sa/productpage",
            "trustDomain": "cluster.local",
            "workload": {"name": "productpage", "namespace": "payments"},
            "inbound": {"defaultMode": "PERMISSIVE"},
            "outbound": {"policy": "REGISTRY_ONLY", "egress": compiled(&[entry]),
                "services": [{"clusterIp": "198.19.0.30", "port": 443, "name": gw,
                    "protocol": "tcp",
                    "endpoints": [{"ip": "127.0.0.1", "port": gateway_addr.port(), "meshed": false}]}],
                "headless": [{"port": host.port(), "name": "partner.weft.test", "protocol": "tcp",
                    "l4": {"tls": [{"name": "payments/direct-partner",
                        "matches": [{"sniHosts": ["partner.weft.test"]}],
                        "destinations": [{"service": gw, "port": 443, "weight": 100}]}]}}]}
        });
        inputs
            .snapshot
            .offer(snapshot.to_string().as_bytes())
            .unwrap();
        let hello = client_hello("partner.weft.test");
        let mut client = connect_via(&ctx, host).await;
        client.write_all(&hello).await.unwrap();
        assert_eq!(all_of(&mut client).await, "gateway");
        // Another declared host: to the address dialled (the echo returns the ClientHello).
        let other = client_hello("other.weft.test");
        let mut client = connect_via(&ctx, host).await;
        client.write_all(&other).await.unwrap();
        let mut echoed = vec![0u8; other.len()];
        client.read_exact(&mut echoed).await.unwrap();
        assert_eq!(echoed, other);
        let routed = [
            "reporter=\"source\"",
            "destination_service=\"egressgateway.istio-egress.svc.cluster.local\"",
        ];
        eventually(|| {
            count(
                &metrics(&ctx),
                "istio_tcp_connections_opened_total",
                &routed,
            ) == 1.0
        })
        .await;
    }

    /// A ClientHello as rustls writes it, naming `server`.
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

    /// A wildcard ServiceEntry host originated for HTTP: the request's Host is the SNI and
    /// the name verified (Istio's auto-SNI); before, the pattern was the SNI and every
    /// request got 503.
    #[tokio::test]
    async fn a_wildcard_http_host_is_originated_to_the_requests_host() {
        use crate::proxy::originate::test_support::{Ca, server};
        let ca = Ca::new("partner CA");
        let target = server(&ca, &["api.weft.test"], None, true).await;
        let entry = json!({"hosts": ["*.weft.test"], "resolution": "NONE",
            "ports": [{"number": 80, "name": "http", "protocol": "HTTP",
                       "targetPort": target.port()}]});
        let ctx = originating(
            &[entry],
            "*.weft.test",
            80,
            "http",
            "SIMPLE",
            json!({"ca": ca.pem}),
        );
        let orig: SocketAddr = "127.0.0.1:80".parse().unwrap();
        let mut client = connect_via(&ctx, orig).await;
        let got = get(&mut client, "api.weft.test").await;
        assert!(
            got.starts_with("HTTP/1.1 200") && got.ends_with("no-client-cert\n"),
            "{got}"
        );
        // A name the certificate does not hold: verified, refused (503), never plaintext.
        let mut client = connect_via(&ctx, orig).await;
        let got = get(&mut client, "www.weft.test").await;
        assert!(got.starts_with("HTTP/1.1 503"), "{got}");
    }

    #[tokio::test]
    async fn registry_only_closes_undeclared_tcp_and_a_static_entry_goes_to_its_endpoints() {
        let echo = external(false).await;
        let ctx = proxy(
            "REGISTRY_ONLY",
            &[
                json!({"hosts": ["legacy.example.com"], "resolution": "STATIC",
                     "addresses": ["127.0.0.2"],
                     "ports": [{"number": 9000, "name": "tcp", "protocol": "TCP",
                                "targetPort": echo.port()}],
                     "endpoints": [{"address": "127.0.0.1"}]}),
            ],
        );
        // Dialled at the entry's address (nothing listens there): relayed to its endpoint.
        let mut client = connect_via(&ctx, "127.0.0.2:9000".parse().unwrap()).await;
        echoed(&mut client).await;
        drop(client);
        // Not declared: closed without a byte, even though the echo would answer.
        let mut client = connect_via(&ctx, "127.0.0.3:9000".parse().unwrap()).await;
        closed(&mut client, Duration::from_secs(5)).await;
        let text = metrics(&ctx);
        let blocked = [
            "destination_service=\"unknown\"",
            "destination_service_name=\"BlackHoleCluster\"",
            "response_flags=\"UH\"",
        ];
        assert_eq!(
            count(&text, "istio_tcp_connections_opened_total", &blocked),
            1.0,
            "{text}"
        );
        assert_eq!(
            count(&text, "istio_tcp_connections_closed_total", &blocked),
            1.0,
            "{text}"
        );
        let declared = ["destination_service=\"legacy.example.com\""];
        eventually(|| {
            count(
                &metrics(&ctx),
                "istio_tcp_connections_opened_total",
                &declared,
            ) == 1.0
        })
        .await;
    }

    #[tokio::test]
    async fn allow_any_passes_undeclared_traffic_through_with_istios_passthrough_labels() {
        let echo = external(false).await;
        let ctx = proxy("ALLOW_ANY", &[]);
        let mut client = connect_via(&ctx, echo).await;
        client.write_all(b"hello").await.unwrap();
        let mut buf = [0u8; 5];
        client.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"hello");
        let passthrough = [
            "destination_service=\"unknown\"",
            "destination_service_name=\"PassthroughCluster\"",
        ];
        let text = metrics(&ctx);
        assert_eq!(
            count(&text, "istio_tcp_connections_opened_total", &passthrough),
            1.0,
            "{text}"
        );
    }

    #[tokio::test]
    async fn a_dns_host_dialled_at_its_allocated_address_goes_where_its_name_resolves() {
        super::super::dns::set_upstreams(vec![super::super::dns::test_upstream()]);
        let echo = external(false).await;
        let http = external(true).await;
        let mut table = compiled(&[
            // The test nameserver resolves loopback.* to 127.0.0.1, nx.* to nothing.
            json!({"hosts": ["loopback.partner.example"], "resolution": "DNS",
                   "ports": [{"number": echo.port(), "name": "tcp", "protocol": "TCP"},
                             {"number": http.port(), "name": "http", "protocol": "HTTP"}]}),
            json!({"hosts": ["nx.partner.example"], "resolution": "DNS",
                   "ports": [{"number": echo.port(), "name": "tcp", "protocol": "TCP"}]}),
        ]);
        let vip = std::net::Ipv4Addr::new(198, 19, 240, 3);
        let nx_vip = std::net::Ipv4Addr::new(198, 19, 240, 4);
        table[0].allocated = Some(vip);
        table[1].allocated = Some(nx_vip);
        let ctx = proxy_with("REGISTRY_ONLY", table);
        // TCP to the allocated address: relayed to 127.0.0.1 on the dialled port.
        let mut client = connect_via(&ctx, SocketAddr::new(vip.into(), echo.port())).await;
        echoed(&mut client).await;
        // HTTP too, by the same address (relayed as the address's TCP, as any entry matched by
        // address is).
        let mut client = connect_via(&ctx, SocketAddr::new(vip.into(), http.port())).await;
        assert!(
            get(&mut client, "loopback.partner.example")
                .await
                .ends_with("ok")
        );
        // A name that does not resolve: closed, nothing relayed.
        let mut client = connect_via(&ctx, SocketAddr::new(nx_vip.into(), echo.port())).await;
        closed(&mut client, Duration::from_secs(10)).await;
        let declared = ["destination_service=\"loopback.partner.example\""];
        eventually(|| {
            count(
                &metrics(&ctx),
                "istio_tcp_connections_opened_total",
                &declared,
            ) >= 2.0
        })
        .await;
    }

    /// Istio's `external-svc-dns` form: `resolution: DNS` with endpoints given by name, each
    /// on its own port. The connection goes to the first endpoint whose name resolves, on that
    /// endpoint's port, whatever address and port the app dialled; HTTP found by its Host.
    #[tokio::test]
    async fn a_dns_entry_with_endpoints_sends_to_the_endpoints_names_in_order() {
        super::super::dns::set_upstreams(vec![super::super::dns::test_upstream()]);
        let echo = external(false).await;
        let http = external(true).await;
        let mut table = compiled(&[
            // The test nameserver resolves loopback.* to 127.0.0.1, nx.* to nothing.
            json!({"hosts": ["partner.example"], "resolution": "DNS",
                   "ports": [{"number": 7001, "name": "tcp", "protocol": "TCP"},
                             {"number": 7002, "name": "http", "protocol": "HTTP"}],
                   "endpoints": [
                       {"address": "nx.partner.example", "ports": {"tcp": echo.port(), "http": http.port()}},
                       {"address": "loopback.partner.example", "ports": {"tcp": echo.port(), "http": http.port()}}]}),
        ]);
        let vip = std::net::Ipv4Addr::new(198, 19, 240, 5);
        table[0].allocated = Some(vip);
        let ctx = proxy_with("REGISTRY_ONLY", table);
        let mut client = connect_via(&ctx, SocketAddr::new(vip.into(), 7001)).await;
        echoed(&mut client).await;
        // HTTP dialled at another address of the pods' range: the Host names the entry, the
        // endpoints are where it goes (never the address dialled).
        let mut client = connect_via(&ctx, "198.18.0.250:7002".parse().unwrap()).await;
        let answer = get(&mut client, "partner.example").await;
        assert!(
            answer.starts_with("HTTP/1.1 200") && answer.ends_with("ok"),
            "{answer}"
        );
        let declared = ["destination_service=\"partner.example\""];
        eventually(|| {
            count(
                &metrics(&ctx),
                "istio_tcp_connections_opened_total",
                &declared,
            ) >= 1.0
                && count(&metrics(&ctx), "istio_requests_total", &declared) >= 1.0
        })
        .await;
    }

    /// The relay carries bytes both ways: "ping" comes back from the echo server.
    async fn echoed(client: &mut TcpStream) {
        client.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(5), client.read_exact(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&buf, b"ping");
    }

    /// The proxy closes the connection without relaying a byte, within `within`.
    async fn closed(client: &mut TcpStream, within: Duration) {
        client.write_all(b"ping").await.unwrap();
        let mut rest = Vec::new();
        let read = tokio::time::timeout(within, client.read_to_end(&mut rest));
        assert!(matches!(read.await, Ok(Ok(0)) | Ok(Err(_))), "{rest:?}");
    }

    async fn eventually(mut check: impl FnMut() -> bool) {
        for _ in 0..100 {
            if check() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("condition not met within 2 s");
    }
}
