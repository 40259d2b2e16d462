//! `weft-proxy run`: binds the listeners, starts the input sources, and drains on SIGTERM
//! (stop accepting, report not-ready, wait for connections to finish or the drain duration,
//! then return).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};

use super::admin::{self, Server};
use super::app_probe::AppProbers;
use super::config_stream::{ConfigStreamConfig, run_config_stream};
use super::identity::{CsrClientConfig, run_csr_client};
use super::inputs::{FileSources, Inputs};
use super::{ProxyContext, Settings, inbound, outbound};
use crate::contract::{PORT_ADMIN, PORT_HEALTH, PORT_INBOUND, PORT_OUTBOUND, PORT_STATS};

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
        }
    }
}

#[derive(Debug, Clone)]
pub struct RunOptions {
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

/// Runs the proxy until SIGTERM or SIGINT, then drains.
pub async fn run(opts: RunOptions) -> Result<(), RunError> {
    let mut sigterm = signal(SignalKind::terminate()).map_err(RunError::Signal)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(RunError::Signal)?;
    let probers = Arc::new(AppProbers::from_json(&opts.app_probers)?);
    let (ctx, inputs) = ProxyContext::new(opts.settings.clone());

    let l = &opts.listeners;
    let outbound_l = bind("outbound", l.outbound).await?;
    let inbound_l = bind("inbound", l.inbound).await?;
    let stats_l = bind("stats", l.stats).await?;
    let health_l = bind("health", l.health).await?;
    let admin_l = bind("admin", l.admin).await?;

    let Inputs { certs, snapshot } = inputs;
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
    tasks.spawn(outbound::serve(ctx.clone(), outbound_l));
    tasks.spawn(inbound::serve(ctx.clone(), inbound_l));
    tasks.spawn(admin::serve(
        ctx.clone(),
        stats_l,
        Server::Stats,
        probers.clone(),
    ));
    tasks.spawn(admin::serve(
        ctx.clone(),
        health_l,
        Server::Health,
        probers.clone(),
    ));
    tasks.spawn(admin::serve(ctx.clone(), admin_l, Server::Admin, probers));
    tracing::info!(
        outbound = %l.outbound, inbound = %l.inbound, stats = %l.stats,
        health = %l.health, admin = %l.admin, "weft-proxy listening"
    );

    tokio::select! {
        _ = sigterm.recv() => tracing::info!("SIGTERM: draining"),
        _ = sigint.recv() => tracing::info!("SIGINT: draining"),
    }
    drain(&ctx).await;
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
