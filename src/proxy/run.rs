//! `weft-proxy run` and `weft-proxy gateway`: binds the listeners (IPv4, and IPv6 beside them
//! when the kernel has it), starts the input sources, and drains on SIGTERM (stop accepting,
//! report not-ready, wait for connections to finish or the drain duration, then return). A
//! sidecar binds the capture ports; a gateway binds its Gateways' ports ([`super::gateway`]).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use tokio::net::{TcpListener, TcpSocket};
use tokio::signal::unix::{SignalKind, signal};

use super::admin::{self, Server};
use super::app_probe::AppProbers;
use super::config_stream::{ConfigStreamConfig, run_config_stream};
use super::identity::{CsrClientConfig, run_csr_client};
use super::inputs::{FileSources, Inputs};
use super::{ProxyContext, Settings, inbound, outbound};
use crate::contract::{PORT_ADMIN, PORT_DNS, PORT_HEALTH, PORT_INBOUND, PORT_OUTBOUND, PORT_STATS};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot listen on {addr} ({what}): {source}; is another proxy running in this pod?")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot install the signal handler: {0}")]
    Signal(std::io::Error),
    #[error(transparent)]
    Probers(#[from] super::app_probe::ProbersError),
}

impl RunError {
    pub fn metric_label(&self) -> &'static str {
        match self {
            RunError::Bind { .. } => "bind",
            RunError::Signal(_) => "signal",
            RunError::Probers(_) => "app_probers",
        }
    }
}

/// Where each listener binds. The defaults are the contract's ports (SPEC §6).
#[derive(Debug, Clone)]
pub struct Listeners {
    pub outbound: SocketAddr,
    pub inbound: SocketAddr,
    pub stats: SocketAddr,
    pub health: SocketAddr,
    pub admin: SocketAddr,
    /// The DNS server (UDP and TCP; a sidecar's only; `[::1]` beside it when the kernel has it).
    pub dns: SocketAddr,
}

impl Default for Listeners {
    fn default() -> Self {
        let any = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
        Listeners {
            outbound: SocketAddr::new(any, PORT_OUTBOUND),
            inbound: SocketAddr::new(any, PORT_INBOUND),
            stats: SocketAddr::new(any, PORT_STATS),
            health: SocketAddr::new(any, PORT_HEALTH),
            // Admin shows config and certificates: loopback only.
            admin: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), PORT_ADMIN),
            // Loopback only: reached through the capture rule (docs/egress.md), and a reply
            // must leave from the address the rule redirected to for the kernel to map it back.
            dns: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), PORT_DNS),
        }
    }
}

/// What the proxy is in its pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Beside the app, its traffic captured by iptables (15001/15006).
    Sidecar,
    /// The pod's only container: clients reach the ports its Gateways name.
    Gateway,
}

#[derive(Debug, Clone)]
pub struct RunOptions {
    pub mode: Mode,
    pub settings: Settings,
    pub listeners: Listeners,
    pub sources: FileSources,
    /// Ask the operator for the certificate (instead of `sources.cert_dir`).
    pub csr: Option<CsrClientConfig>,
    /// `WEFT_APP_PROBERS` as the injector wrote it (may be empty).
    pub app_probers: String,
    /// Follow the operator's config stream (instead of `sources.snapshot_file`).
    pub config_stream: Option<ConfigStreamConfig>,
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, RunError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| RunError::Bind { what, addr, source })
}

/// `addr`, and when it is the IPv4 wildcard also `[::]` on the same port (dual stack), unless
/// the kernel has no IPv6. Two sockets rather than one dual-stack `[::]`: the IPv6 one is
/// IPV6_V6ONLY, so IPv4 peers and original destinations stay IPv4 addresses (no
/// `::ffff:a.b.c.d`), and each family's original destination has its own socket option.
pub(crate) async fn bind_dual(
    what: &'static str,
    addr: SocketAddr,
) -> Result<Vec<TcpListener>, RunError> {
    let mut listeners = vec![bind(what, addr).await?];
    if addr.ip() != IpAddr::V4(Ipv4Addr::UNSPECIFIED) {
        return Ok(listeners);
    }
    let v6 = SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), addr.port());
    let err = |source| RunError::Bind {
        what,
        addr: v6,
        source,
    };
    let socket = match TcpSocket::new_v6() {
        Ok(s) => s,
        Err(e) if e.raw_os_error() == Some(nix::libc::EAFNOSUPPORT) => {
            tracing::info!(what, "no IPv6 in this kernel: listening on IPv4 only");
            return Ok(listeners);
        }
        Err(e) => return Err(err(e)),
    };
    nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::Ipv6V6Only, &true)
        .map_err(|e| err(e.into()))?;
    socket.set_reuseaddr(true).map_err(err)?;
    match socket.bind(v6) {
        Ok(()) => {}
        // IPv6 switched off in this namespace.
        Err(e) if e.raw_os_error() == Some(nix::libc::EADDRNOTAVAIL) => {
            tracing::info!(what, "IPv6 is off: listening on IPv4 only");
            return Ok(listeners);
        }
        Err(e) => return Err(err(e)),
    }
    listeners.push(socket.listen(1024).map_err(err)?);
    Ok(listeners)
}

/// Runs the proxy until SIGTERM or SIGINT, then drains.
pub async fn run(opts: RunOptions) -> Result<(), RunError> {
    let mut sigterm = signal(SignalKind::terminate()).map_err(RunError::Signal)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(RunError::Signal)?;
    let probers = Arc::new(AppProbers::from_json(&opts.app_probers)?);
    let (ctx, inputs) = ProxyContext::new(opts.settings.clone());

    let l = &opts.listeners;
    let (outbound_l, inbound_l) = match opts.mode {
        Mode::Sidecar => (
            bind_dual("outbound", l.outbound).await?,
            bind_dual("inbound", l.inbound).await?,
        ),
        Mode::Gateway => (Vec::new(), Vec::new()),
    };
    let stats_l = bind_dual("stats", l.stats).await?;
    let health_l = bind_dual("health", l.health).await?;
    let admin_l = bind("admin", l.admin).await?;
    let dual_stack = stats_l.len() > 1;
    let dns_l = match opts.mode {
        Mode::Sidecar => super::dns::bind(l.dns)
            .await
            .map_err(|source| RunError::Bind {
                what: "dns",
                addr: l.dns,
                source,
            })?,
        Mode::Gateway => Vec::new(),
    };

    let Inputs { certs, snapshot } = inputs;
    let republish = snapshot.republisher();
    let mut tasks = tokio::task::JoinSet::new();
    let file_snapshot = match opts.config_stream.clone() {
        Some(cfg) => {
            tracing::info!(address = %cfg.address, pod = %cfg.pod, "following the config stream");
            tasks.spawn(run_config_stream(cfg, certs.subscribe(), snapshot));
            None
        }
        None => Some(snapshot),
    };
    let (file_certs, csr_client) = match opts.csr.clone() {
        Some(cfg) => (None, Some(spawn_csr_client(cfg, certs))),
        None => (Some(certs), None),
    };
    let sources = tokio::spawn(opts.sources.clone().run(file_certs, file_snapshot));
    for listener in outbound_l {
        tasks.spawn(outbound::serve(ctx.clone(), listener));
    }
    // Pooled upstream connections a new config no longer names close soon after it comes.
    tasks.spawn(super::http::pool_retire::run(ctx.clone()));
    for listener in inbound_l {
        tasks.spawn(inbound::serve(ctx.clone(), listener));
    }
    if opts.mode == Mode::Gateway {
        tasks.spawn(super::gateway::serve(ctx.clone()));
        // An egress gateway's `resolution: DNS` destinations (docs/egress.md).
        tasks.spawn(super::external_dns::run(ctx.clone(), republish));
    }
    for (udp, tcp) in dns_l {
        tasks.spawn(super::dns::serve_udp(ctx.clone(), udp));
        tasks.spawn(super::dns::serve_tcp(ctx.clone(), tcp));
    }
    for listener in stats_l {
        tasks.spawn(admin::serve(
            ctx.clone(),
            listener,
            Server::Stats,
            probers.clone(),
        ));
    }
    for listener in health_l {
        tasks.spawn(admin::serve(
            ctx.clone(),
            listener,
            Server::Health,
            probers.clone(),
        ));
    }
    tasks.spawn(admin::serve(ctx.clone(), admin_l, Server::Admin, probers));
    match opts.mode {
        Mode::Sidecar => tracing::info!(
            outbound = %l.outbound, inbound = %l.inbound, stats = %l.stats,
            health = %l.health, admin = %l.admin, dual_stack, "weft-proxy listening"
        ),
        Mode::Gateway => tracing::info!(
            stats = %l.stats, health = %l.health, admin = %l.admin, dual_stack,
            "weft-proxy gateway listening (gateway ports follow the config)"
        ),
    }

    tokio::select! {
        _ = sigterm.recv() => tracing::info!("SIGTERM: draining"),
        _ = sigint.recv() => tracing::info!("SIGINT: draining"),
    }
    if opts.mode == Mode::Gateway {
        drain_gateway(&ctx).await;
    } else {
        drain(&ctx).await;
    }
    sources.abort();
    if let Some(client) = csr_client {
        client.abort();
    }
    tasks.abort_all();
    Ok(())
}

fn spawn_csr_client(
    cfg: CsrClientConfig,
    certs: super::inputs::CertSink,
) -> tokio::task::JoinHandle<()> {
    tracing::info!(address = %cfg.address, identity = %cfg.identity, "requesting the workload certificate");
    tokio::spawn(run_csr_client(cfg, certs))
}

/// A gateway's drain: not ready at once, but its ports go on accepting for the drain
/// duration, as Envoy's do (the load balancer sends new connections until the endpoint
/// update reaches it; each is served with `Connection: close` or a GOAWAY); then they close
/// and open requests get the drain duration again to finish.
async fn drain_gateway(ctx: &Arc<ProxyContext>) {
    ctx.start_draining();
    tokio::time::sleep(ctx.settings.drain_duration).await;
    drain(ctx).await;
}

/// Stops the listeners (they watch the drain signal) and waits for open connections, at most
/// the drain duration.
pub async fn drain(ctx: &Arc<ProxyContext>) {
    ctx.start_draining();
    let open = ctx.active_connections();
    let limit = ctx.settings.drain_duration;
    match tokio::time::timeout(limit, ctx.all_closed()).await {
        Ok(()) => tracing::info!(was_open = open, "drained: all connections closed"),
        Err(_) => tracing::info!(
            still_open = ctx.active_connections(),
            "drain duration {limit:?} passed; closing the rest"
        ),
    }
}
