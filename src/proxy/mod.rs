//! The data plane: weft's sidecar proxy (`weft-proxy run`) and its init step (`weft-proxy
//! init`). Kube-free by construction: it learns everything from its certificate and the
//! config snapshot, which reach it through the sinks in [`inputs`].
//!
//! | port  | listener                       | module      |
//! |-------|--------------------------------|-------------|
//! | 15001 | outbound capture               | `outbound`  |
//! | 15006 | inbound capture (mTLS/plain)   | `inbound`   |
//! | 15020 | `/stats/prometheus`, app probes| `admin`     |
//! | 15021 | `/healthz/ready`               | `admin`     |
//! | 15000 | admin, 127.0.0.1 only          | `admin`     |
//!
//! In gateway mode (`weft-proxy gateway`) 15001/15006 are not bound; the ports of the
//! Gateways that select the pod are (`gateway`).

pub mod access_log;
pub mod admin;
pub mod app_probe;
pub mod balance;
pub mod cli;
pub mod config_stream;
pub mod copy;
pub mod dns;
pub mod egress;
pub mod external_dns;
pub mod gateway;
pub mod http;
pub mod identity;
pub mod inbound;
pub mod inbound_labels;
pub mod inputs;
pub mod iptables;
pub mod metrics;
pub mod net;
pub mod originate;
pub mod outbound;
pub mod peer_meta;
pub mod run;
pub mod sniff;
pub mod tls;

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use prometheus_client::registry::Registry;
use tokio::sync::{Notify, watch};

use crate::snapshot::SnapshotIndex;
use metrics::Metrics;
use tls::TlsContext;

/// Timeouts and limits of the data path.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The pod's IP; inbound connections are forwarded to it. `None`: the original
    /// destination's IP (the same thing when iptables captured the connection).
    pub pod_ip: Option<IpAddr>,
    /// How long the inbound sniffer waits for a client's first bytes before it treats the
    /// connection as plaintext (server-first protocols send nothing first).
    pub sniff_timeout: Duration,
    pub connect_timeout: Duration,
    pub handshake_timeout: Duration,
    pub idle_timeout: Duration,
    pub drain_duration: Duration,
    /// Upstream endpoints tried per outbound connection before giving up.
    pub connect_attempts: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            pod_ip: None,
            sniff_timeout: Duration::from_millis(200),
            connect_timeout: Duration::from_secs(5),
            handshake_timeout: Duration::from_secs(5),
            // Istio's default TCP idle timeout.
            idle_timeout: Duration::from_secs(3600),
            drain_duration: Duration::from_secs(5),
            connect_attempts: 3,
        }
    }
}

/// The one context of a proxy process: settings, metrics, and the current certificate and
/// config (each a `watch` receiver, swapped by the sinks without touching live connections).
pub struct ProxyContext {
    pub settings: Settings,
    pub metrics: Arc<Metrics>,
    pub registry: Registry,
    /// Access log lines go here (stdout) when the current snapshot turns them on.
    pub access_log: access_log::Writer,
    /// Connections to outbound endpoints, reused across the app's connections.
    pub outbound_pool: http::pool::Pool<http::outbound::RequestBody>,
    /// Load balancing and outlier detection state of DestinationRule traffic policies.
    pub balancer: balance::Balancer,
    /// The client configs of TLS origination (DestinationRule SIMPLE / MUTUAL), built once
    /// per content.
    pub originations: originate::Originations,
    tls: watch::Receiver<Option<Arc<TlsContext>>>,
    snapshot: watch::Receiver<Option<Arc<SnapshotIndex>>>,
    draining: watch::Sender<bool>,
    active: AtomicUsize,
    idle: Notify,
}

impl ProxyContext {
    /// A context and the sinks that feed it its certificate and config.
    pub fn new(settings: Settings) -> (Arc<Self>, inputs::Inputs) {
        let mut registry = Registry::default();
        let metrics = Arc::new(Metrics::new(&mut registry));
        let (tls_tx, tls) = watch::channel(None);
        let (snap_tx, snapshot) = watch::channel(None);
        let outbound_pool = http::pool::Pool::new(settings.idle_timeout);
        let ctx = Arc::new(ProxyContext {
            settings,
            metrics: metrics.clone(),
            registry,
            access_log: access_log::Writer::stdout(),
            outbound_pool,
            balancer: balance::Balancer::default(),
            originations: originate::Originations::default(),
            tls,
            snapshot,
            draining: watch::Sender::new(false),
            active: AtomicUsize::new(0),
            idle: Notify::new(),
        });
        let inputs = inputs::Inputs {
            certs: inputs::CertSink::new(tls_tx, metrics.clone()),
            snapshot: inputs::SnapshotSink::new(snap_tx, metrics),
        };
        (ctx, inputs)
    }

    pub fn tls(&self) -> Option<Arc<TlsContext>> {
        self.tls.borrow().clone()
    }

    pub fn snapshot(&self) -> Option<Arc<SnapshotIndex>> {
        self.snapshot.borrow().clone()
    }

    /// A receiver that wakes on every new config (gateway mode binds its ports from it).
    pub fn snapshot_changes(&self) -> watch::Receiver<Option<Arc<SnapshotIndex>>> {
        self.snapshot.clone()
    }

    /// The access log format of the current config; None when access logs are off. Read per
    /// request and per connection end, so a new snapshot turns them on or off at once.
    pub fn access_log_format(&self) -> Option<crate::snapshot::AccessLogFormat> {
        let snapshot = self.snapshot.borrow();
        snapshot.as_ref()?.snapshot.access_log.map(|a| a.format)
    }

    /// Writes `entry` if access logs are on.
    pub fn log_access(&self, entry: &access_log::Entry<'_>) {
        if let Some(format) = self.access_log_format() {
            self.access_log.write(entry.format(format));
        }
    }

    /// Ready once it holds a certificate and a first config, and until it starts draining.
    pub fn readiness(&self) -> Result<(), &'static str> {
        if *self.draining.borrow() {
            return Err("draining");
        }
        if self.tls.borrow().is_none() {
            return Err("no workload certificate yet");
        }
        if self.snapshot.borrow().is_none() {
            return Err("no config snapshot yet");
        }
        Ok(())
    }

    pub fn start_draining(&self) {
        self.draining.send_replace(true);
    }

    pub fn is_draining(&self) -> bool {
        *self.draining.borrow()
    }

    /// Resolves when draining starts.
    pub async fn drained(&self) {
        let mut rx = self.draining.subscribe();
        let _ = rx.wait_for(|d| *d).await;
    }

    /// Counts a proxied connection until the guard drops.
    pub fn track(self: &Arc<Self>) -> ConnectionGuard {
        self.active.fetch_add(1, Ordering::AcqRel);
        self.metrics.active_connections.inc();
        ConnectionGuard { ctx: self.clone() }
    }

    pub fn active_connections(&self) -> usize {
        self.active.load(Ordering::Acquire)
    }

    /// Resolves when no connection is being proxied.
    pub async fn all_closed(&self) {
        loop {
            let notified = self.idle.notified();
            if self.active_connections() == 0 {
                return;
            }
            notified.await;
        }
    }
}

pub struct ConnectionGuard {
    ctx: Arc<ProxyContext>,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.ctx.metrics.active_connections.dec();
        if self.ctx.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.ctx.idle.notify_waiters();
        }
    }
}
