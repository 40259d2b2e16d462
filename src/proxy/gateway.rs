//! Gateway mode's listeners: the ports of the current config's gateway table
//! ([`crate::route::gateway::GatewayConfig`]) are bound as they appear and closed as they
//! leave it; on an HTTPS port TLS is terminated first with the certificate the client's SNI
//! picks (SIMPLE, or MUTUAL with a client certificate); then every connection is served as
//! HTTP (both versions) by the same request pipeline as a sidecar's outbound side
//! ([`super::http::outbound::serve_gateway`]). A TLS PASSTHROUGH or TCP port relays each
//! connection by its L4 routes, as a sidecar relays a routed connection. An ISTIO_MUTUAL port
//! (an egress gateway's) terminates mesh mTLS with the proxy's own workload certificate, as a
//! sidecar's inbound does, then serves HTTP. Every request (HTTP ports) or connection
//! (PASSTHROUGH and TCP ports) is authorized by the AuthorizationPolicies that select the
//! gateway's pod ([`super::http::authz::authorize_gateway`]). On SIGTERM the ports keep
//! accepting for the drain duration.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::LazyConfigAcceptor;

use super::ProxyContext;
use super::http::authz::ConnectionFacts;
use super::metrics::Direction;
use super::outbound::Refusal;
use super::sniff::Prefixed;
use crate::route::gateway::{ServedTls, TlsChoice};
use crate::route::l4::L4Table;
use crate::snapshot::{OutboundRoute, SnapshotIndex};

/// How long a client may take to send a request head before the gateway closes the
/// connection (slowloris). A sidecar has none: its clients are its own app.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// How soon a port that could not be bound is tried again.
const REBIND_AFTER: Duration = Duration::from_secs(5);

/// The ports the current config asks for.
fn wanted(ctx: &ProxyContext) -> BTreeSet<u16> {
    ctx.snapshot()
        .and_then(|s| {
            s.snapshot
                .gateway
                .as_ref()
                .map(|g| g.listeners.iter().map(|l| l.port).collect())
        })
        .unwrap_or_default()
}

/// Keeps the bound ports equal to the config's until the proxy has drained for the drain
/// duration.
pub async fn serve(ctx: Arc<ProxyContext>) {
    let mut changes = ctx.snapshot_changes();
    // Port -> the stop signal of its accept loops.
    let mut bound: BTreeMap<u16, watch::Sender<bool>> = BTreeMap::new();
    loop {
        let want = wanted(&ctx);
        bound.retain(|port, stop| {
            let keep = want.contains(port);
            if !keep {
                tracing::info!(port, "gateway port left the config: no longer accepting");
                stop.send_replace(true);
            }
            keep
        });
        let mut failed = false;
        let missing: Vec<u16> = want
            .iter()
            .filter(|p| !bound.contains_key(p))
            .copied()
            .collect();
        for port in &missing {
            let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), *port);
            match super::run::bind_dual("gateway", addr).await {
                Ok(listeners) => {
                    let (stop, stopped) = watch::channel(false);
                    for l in listeners {
                        tokio::spawn(accept(ctx.clone(), l, stopped.clone()));
                    }
                    tracing::info!(port, "gateway listening");
                    bound.insert(*port, stop);
                }
                Err(e) => {
                    // A port < 1024 needs NET_BIND_SERVICE; another process may hold it.
                    tracing::warn!(port, error = %e, "cannot listen on a gateway port; trying again");
                    ctx.metrics.refuse(Direction::outbound, "gateway_bind");
                    failed = true;
                }
            }
        }
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { return },
            () = tokio::time::sleep(REBIND_AFTER), if failed => {}
            () = ctx.drained() => {
                // Draining: the listeners keep accepting for the drain duration, because
                // the load balancer sends new connections here until the pod leaves the
                // Service's endpoints; each is served once, with `Connection: close` or a
                // GOAWAY (`server::serve_pipeline`). Then they close.
                tokio::time::sleep(ctx.settings.drain_duration).await;
                tracing::info!(ports = ?bound.keys().collect::<Vec<_>>(), "drain duration passed: gateway ports closed");
                for stop in bound.values() {
                    stop.send_replace(true);
                }
                return;
            }
        }
    }
}

/// The server configs built from the current config's certificates, by their PEM (a new
/// Secret gives new PEM, so a renewed certificate is used from the next handshake on).
#[derive(Default)]
struct TlsConfigs {
    built: Mutex<HashMap<ConfigKey, Arc<ServerConfig>>>,
}

/// What a server config is built from: certificate chain, client CA, MUTUAL, relayed.
type ConfigKey = (String, String, bool, bool);

impl TlsConfigs {
    fn get(&self, served: &ServedTls) -> Result<Arc<ServerConfig>, String> {
        let key = (
            served.cert_chain.clone(),
            served.client_ca.clone().unwrap_or_default(),
            served.mutual,
            served.relay.is_some(),
        );
        let mut built = self.built.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = built.get(&key) {
            return Ok(c.clone());
        }
        let config = Arc::new(server_config(served)?);
        // Old certificates go once enough new ones came (a bound, not an LRU).
        if built.len() >= 64 {
            built.clear();
        }
        built.insert(key, config.clone());
        Ok(config)
    }
}

/// A rustls server config for one terminating server: its certificate, TLS 1.2 and 1.3, for
/// MUTUAL a client certificate chaining to its CA, and for an HTTPS server ALPN h2 then
/// http/1.1. A server whose connections are relayed once terminated offers no ALPN, as
/// Istio's TLS servers do: the bytes inside go to a backend whose protocol the gateway does
/// not speak for it, so a client must not be told h2 (curl then sends HTTP/2 frames to an
/// HTTP/1.1 backend).
fn server_config(served: &ServedTls) -> Result<ServerConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(served.cert_chain.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| format!("certificate chain: {e}"))?;
    let key = PrivateKeyDer::from_pem_slice(served.private_key.as_bytes())
        .map_err(|e| format!("private key: {e}"))?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match (&served.client_ca, served.mutual) {
        (Some(ca), true) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_slice_iter(ca.as_bytes()) {
                let c = c.map_err(|e| format!("client CA: {e}"))?;
                roots.add(c).map_err(|e| format!("client CA: {e}"))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| format!("client CA: {e}"))?;
            builder.with_client_cert_verifier(verifier)
        }
        (None, true) => return Err("MUTUAL without a client CA".into()),
        (_, false) => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| format!("certificate and key: {e}"))?;
    if served.relay.is_none() {
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    }
    Ok(config)
}

/// Serves one accepted connection: TLS first on an HTTPS port, then HTTP.
async fn connection(
    ctx: &Arc<ProxyContext>,
    configs: &TlsConfigs,
    stream: TcpStream,
    peer: SocketAddr,
) {
    let _ = stream.set_nodelay(true);
    let (Ok(local), Some(snapshot)) = (stream.local_addr(), ctx.snapshot()) else {
        ctx.metrics.refuse(Direction::outbound, "no_config");
        return;
    };
    let listener = snapshot
        .snapshot
        .gateway
        .as_ref()
        .and_then(|g| g.listener(local.port()));
    let refused = |refusal: &'static str| {
        ctx.metrics.refuse(Direction::outbound, refusal);
        tracing::debug!(%peer, port = local.port(), reason = refusal, "gateway connection not relayed");
    };
    // A port with PASSTHROUGH servers reads the ClientHello first: its SNI picks a
    // PASSTHROUGH server (relay the bytes, replayed) or a terminating one (the handshake
    // then reads the same bytes).
    let mut stream = stream;
    let mut prefix = Vec::new();
    if let Some(l) = listener.filter(|l| l.reads_sni_first()) {
        let sni = super::outbound::read_sni(&mut stream, &mut prefix, HEADER_TIMEOUT).await;
        match (l.tls_choice(sni.as_deref()), &l.l4) {
            (TlsChoice::Passthrough, Some(l4)) => {
                let client = Prefixed::new(prefix, stream);
                let start = std::time::SystemTime::now();
                let relayed = relay(
                    ctx,
                    &snapshot,
                    &l4.routes,
                    client,
                    sni,
                    (local, peer),
                    start,
                );
                if let Err(refusal) = relayed.await {
                    refused(refusal);
                }
                return;
            }
            // The handshake below reads the same ClientHello and picks the same server.
            (TlsChoice::Terminate(_), _) => {}
            (TlsChoice::Refuse | TlsChoice::Passthrough, _) => return refused("gateway_sni"),
        }
    } else if let Some(l4) = listener.and_then(|l| l.l4.as_ref()) {
        // A TCP port: every connection is relayed, SNI unread.
        let start = std::time::SystemTime::now();
        let relayed = relay(
            ctx,
            &snapshot,
            &l4.routes,
            stream,
            None,
            (local, peer),
            start,
        );
        if let Err(refusal) = relayed.await {
            refused(refusal);
        }
        return;
    }
    let stream = Prefixed::new(prefix, stream);
    if let Some(l) = listener.filter(|l| !l.mesh_mtls.is_empty()) {
        let hosts: Arc<[String]> = l.mesh_mtls.clone().into();
        if let Err(refusal) = mesh_mtls(ctx, snapshot.clone(), hosts, stream, local, peer).await {
            ctx.metrics.refuse(Direction::outbound, refusal);
        }
        return;
    }
    let tls = listener.is_some_and(|l| !l.tls.is_empty());
    // A client must start talking within the header timeout (before HTTP/1 or HTTP/2 is
    // known, hyper's own header timeout does not run yet); TLS has the handshake timeout.
    if !tls
        && tokio::time::timeout(HEADER_TIMEOUT, stream.get_ref().readable())
            .await
            .is_err()
    {
        ctx.metrics.refuse(Direction::outbound, "gateway_silent");
        return;
    }
    if !tls {
        let facts = facts(peer, local, None, None);
        super::http::outbound::serve_gateway(ctx, stream, facts, snapshot, None).await;
        return;
    }
    let handshake = async {
        let start = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream)
            .await
            .map_err(|e| format!("client hello: {e}"))?;
        let sni = start.client_hello().server_name().map(str::to_string);
        let served = listener
            .and_then(|l| match l.tls_choice(sni.as_deref()) {
                TlsChoice::Terminate(served) => Some(served),
                TlsChoice::Passthrough | TlsChoice::Refuse => None,
            })
            .ok_or_else(|| format!("no terminating server of this port has the name {sni:?}"))?;
        let config = configs.get(served)?;
        start
            .into_stream(config)
            .await
            .map(|tls| (tls, served, sni))
            .map_err(|e| format!("handshake: {e}"))
    };
    match tokio::time::timeout(ctx.settings.handshake_timeout, handshake).await {
        Ok(Ok((tls, served, sni))) => {
            // SIMPLE or MUTUAL: a MUTUAL client's certificate chains to the server's
            // `credentialName` CA, not to the mesh's: it proves no mesh identity, so the
            // caller has no principal (a DENY on principals or notPrincipals never lets it
            // through).
            if let Some(routes) = &served.relay {
                // Terminated, then relayed by the server's own routes.
                let start = std::time::SystemTime::now();
                let relayed = relay(ctx, &snapshot, routes, tls, sni, (local, peer), start);
                if let Err(refusal) = relayed.await {
                    refused(refusal);
                }
                return;
            }
            let hosts: Arc<[String]> = served.hosts.clone().into();
            let facts = facts(peer, local, None, sni);
            super::http::outbound::serve_gateway(ctx, tls, facts, snapshot.clone(), Some(hosts))
                .await;
        }
        Ok(Err(e)) => {
            tracing::debug!(%peer, port = local.port(), error = %e, "gateway TLS refused");
            ctx.metrics.refuse(Direction::outbound, "gateway_tls");
        }
        Err(_) => {
            tracing::debug!(%peer, port = local.port(), "gateway TLS handshake timed out");
            ctx.metrics.refuse(Direction::outbound, "gateway_tls");
        }
    }
}

/// An ISTIO_MUTUAL port: the client is a sidecar (or another gateway) of the mesh. The
/// handshake is the mesh's (ALPN `weft/1`, TLS 1.3, a client certificate of the mesh's trust
/// domain required; [`super::tls::TlsContext::server_config`]), the peer metadata the client
/// sends first is read, and the requests are routed among `hosts` (the ISTIO_MUTUAL servers'
/// hosts of this port). Err: the refusal's metric label.
async fn mesh_mtls<S>(
    ctx: &Arc<ProxyContext>,
    snapshot: Arc<SnapshotIndex>,
    hosts: Arc<[String]>,
    stream: S,
    local: SocketAddr,
    peer: SocketAddr,
) -> Result<(), &'static str>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let Some(tls) = ctx.tls() else {
        tracing::info!(%peer, port = local.port(), "ISTIO_MUTUAL gateway port: no workload certificate yet; connection refused");
        return Err("no_certificate");
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.server_config());
    let mut tls_stream = match tokio::time::timeout(
        ctx.settings.handshake_timeout,
        acceptor.accept(stream),
    )
    .await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            ctx.metrics.handshake(Direction::inbound, false);
            tracing::info!(%peer, port = local.port(), error = %e, "ISTIO_MUTUAL gateway handshake failed");
            return Err("tls_handshake");
        }
        Err(_) => {
            ctx.metrics.handshake(Direction::inbound, false);
            return Err("tls_handshake");
        }
    };
    ctx.metrics.handshake(Direction::inbound, true);
    // The caller's principal is what its certificate proved (the handshake verified the
    // chain to the mesh's roots): never the metadata frame, which is the client's word and
    // is only skipped here.
    let principal =
        super::tls::peer_identity(tls_stream.get_ref().1.peer_certificates()).map(|id| {
            id.strip_prefix("spiffe://")
                .map(str::to_string)
                .unwrap_or(id)
        });
    let sni = tls_stream.get_ref().1.server_name().map(str::to_string);
    let (_meta, early) = super::peer_meta::read(&mut tls_stream, ctx.settings.sniff_timeout).await;
    let io = Prefixed::new(early, tls_stream);
    let facts = facts(peer, local, principal, sni);
    super::http::outbound::serve_gateway(ctx, io, facts, snapshot, Some(hosts)).await;
    Ok(())
}

/// What a gateway connection tells the authorization evaluator: the TCP peer (Istio's
/// `source.ip` and, since the gateway trusts no `X-Forwarded-For`, `remote.ip`), the gateway
/// pod's address and listener port (`destination.port` is the port the gateway bound, the
/// Gateway server's port number), the client's principal only when an ISTIO_MUTUAL handshake
/// proved one, and the SNI of a terminated or relayed TLS connection.
fn facts(
    peer: SocketAddr,
    local: SocketAddr,
    principal: Option<String>,
    sni: Option<String>,
) -> ConnectionFacts {
    ConnectionFacts {
        principal,
        peer,
        destination: local,
        sni,
    }
}

/// A connection relayed as bytes: on a PASSTHROUGH port (the client's ClientHello, already
/// read and replayed from `client`, named `sni`), a TCP port (no SNI read), or after a
/// terminated TLS server's handshake (`sni` from it). `routes` (`tls` routes by SNI, `tcp`
/// routes by port) pick the destination, relayed to as a sidecar relays a routed connection
/// (mTLS to meshed endpoints, Istio's TCP metrics with `reporter="source"`). Err: the
/// refusal's metric label.
async fn relay<S>(
    ctx: &Arc<ProxyContext>,
    snapshot: &SnapshotIndex,
    routes: &L4Table,
    client: S,
    sni: Option<String>,
    (local, peer): (SocketAddr, SocketAddr),
    start: std::time::SystemTime,
) -> Result<(), &'static str>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    // Authorized once per connection with its L4 fields (no principal: a PASSTHROUGH
    // client's TLS is not the gateway's, and a MUTUAL client's certificate proves no mesh
    // identity), before any route is looked up.
    if !super::http::authz::authorize_gateway_connection(
        &facts(peer, local, None, sni.clone()),
        snapshot,
    ) {
        return Err("rbac_denied");
    }
    let (service, endpoints, subset) =
        match super::outbound::l4_destination(snapshot, routes, local, sni.as_deref()) {
            Some(Ok(to)) => to,
            // No route takes it, or its destination is not in the config (Istio's NR).
            Some(Err(_)) | None => return Err(Refusal::NoRoute.metric_label()),
        };
    let route = OutboundRoute::Service { service, endpoints };
    super::outbound::relay_service(
        ctx,
        snapshot,
        client,
        route,
        subset,
        local,
        Some(peer),
        start,
    )
    .await
    .map_err(Refusal::metric_label)
}

/// Accepts on one listener until its port leaves the config or the drain duration passed.
async fn accept(ctx: Arc<ProxyContext>, listener: TcpListener, mut stopped: watch::Receiver<bool>) {
    let configs = Arc::new(TlsConfigs::default());
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let (ctx, configs) = (ctx.clone(), configs.clone());
                    tokio::spawn(async move {
                        let _guard = ctx.track();
                        connection(&ctx, &configs, stream, peer).await;
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "gateway accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            // Only `true` is ever sent: any change (or the sender gone) means stop. Draining
            // does not stop it at once ([`serve`]).
            _ = stopped.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn served(relay: Option<L4Table>) -> ServedTls {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["db.example.test".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        ServedTls {
            gateway: "edge/edge".into(),
            hosts: vec!["db.example.test".into()],
            mutual: false,
            cert_chain: cert.pem(),
            private_key: key.serialize_pem(),
            client_ca: None,
            relay,
        }
    }

    /// The e2e's TLS SIMPLE server: curl offered h2, the gateway chose it, and the HTTP/2
    /// frames were relayed to an HTTP/1.1 backend (503 from its sidecar).
    #[test]
    fn a_relayed_server_offers_no_alpn_and_an_https_server_offers_h2_and_http11() {
        let configs = TlsConfigs::default();
        let https = configs.get(&served(None)).unwrap();
        assert_eq!(https.alpn_protocols, [b"h2".to_vec(), b"http/1.1".to_vec()]);
        // Same certificate, relayed: another config, not the HTTPS one from the cache.
        let relayed = configs.get(&served(Some(L4Table::default()))).unwrap();
        assert!(relayed.alpn_protocols.is_empty());
    }
}
