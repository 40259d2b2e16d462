//! `weft operator`: the control-plane process. Every replica serves the CSR endpoint (15012),
//! the injector (15017), health and metrics (15014) and, on loopback only, `/debug/proxies`
//! (15000); the CA-bundle controller keeps the CA, root ConfigMaps and caBundles.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::routing::get;
use tokio::sync::watch;

use super::ca_bundle::CaBundleController;
use super::csr;
use super::injector::{self, InjectorState};
use super::readiness::{self, Readiness};
use super::serving::{
    ServingCertResolver, ServingLimits, keep_serving_cert, serve_plain_on, serve_tls,
};
use crate::contract;
use crate::discovery::server::StreamLimits;
use crate::discovery::{self, DiscoverySettings, DiscoveryState};
use crate::kube::metrics::{self, OperatorMetrics};

#[derive(Debug, Clone, clap::Args)]
pub struct OperatorArgs {
    /// Namespace of the operator (its CA Secret, Services and webhooks live there).
    #[arg(long, env = "POD_NAMESPACE", default_value = contract::DEFAULT_OPERATOR_NAMESPACE)]
    pub namespace: String,
    /// SPIFFE trust domain used when weft creates its root.
    #[arg(long, env = "WEFT_TRUST_DOMAIN", default_value = contract::DEFAULT_TRUST_DOMAIN)]
    pub trust_domain: String,
    /// Longest workload certificate lifetime, as a Go duration (MeshConfig `workloadCertTTL`
    /// takes over once the mesh-config controller lands).
    #[arg(long, env = "WEFT_WORKLOAD_CERT_TTL", default_value = "24h")]
    pub workload_cert_ttl: String,
    /// Address of the CSR and config-stream endpoint (TLS).
    #[arg(long, env = "WEFT_DISCOVERY_ADDR", default_value = "0.0.0.0:15012")]
    pub discovery_addr: SocketAddr,
    /// Address of the admission webhook (the weft-webhook Service maps 443 here).
    #[arg(long, env = "WEFT_WEBHOOK_ADDR", default_value = "0.0.0.0:15017")]
    pub webhook_addr: SocketAddr,
    /// Proxy image for revisions whose MeshConfig names none.
    #[arg(long, env = "WEFT_PROXY_IMAGE", default_value = crate::webhook::state::DEFAULT_PROXY_IMAGE)]
    pub proxy_image: String,
    /// Mesh name matched against `openservicemesh.io/monitored-by` (OSM migrants set `osm`).
    #[arg(long, env = "WEFT_MESH_NAME", default_value = contract::DEFAULT_MESH_NAME)]
    pub mesh_name: String,
    /// Name of the first revision, created with the `default` tag on the very first start.
    #[arg(long, env = "WEFT_DEFAULT_REVISION", default_value = "stable")]
    pub default_revision: String,
    /// Name of this replica (its pod), reported in Events.
    #[arg(long, env = "POD_NAME", default_value = "weft-operator")]
    pub instance: String,
    /// Namespace whose selector-less PeerAuthentication is mesh-wide (Istio's root
    /// namespace; Istio migrants point it at `istio-system`).
    #[arg(long, env = "WEFT_ROOT_NAMESPACE", default_value = contract::DEFAULT_OPERATOR_NAMESPACE)]
    pub root_namespace: String,
    /// DNS suffix of Service host names in metrics and snapshots.
    #[arg(long, env = "WEFT_CLUSTER_DOMAIN", default_value = "cluster.local")]
    pub cluster_domain: String,
    /// Address of /healthz, /readyz and /metrics.
    #[arg(long, env = "WEFT_MONITORING_ADDR", default_value = "0.0.0.0:15014")]
    pub monitoring_addr: SocketAddr,
    /// Address of the admin port (`/debug/proxies`, unauthenticated): a loopback address,
    /// reached by `weft proxy-status` through `kubectl exec`.
    #[arg(long, env = "WEFT_ADMIN_ADDR", default_value = discovery::server::ADMIN_ADDR, value_parser = parse_admin_addr)]
    pub admin_addr: SocketAddr,
    /// After SIGTERM, how long to go on serving (not ready) before exiting: long enough for
    /// the endpoints to drop this replica, shorter than the pod's grace period.
    #[arg(long, env = "WEFT_SHUTDOWN_DELAY", default_value = "5s", value_parser = parse_duration)]
    pub shutdown_delay: Duration,
    #[command(flatten)]
    pub limits: ServingLimitArgs,
}

/// Limits of the three served ports (README, "Security"); the HTTP/2 limits are constants of
/// `operator::serving`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServingLimitArgs {
    /// Time a client has to send a request head (and its first request after connecting);
    /// also how long an HTTP/1.1 keep-alive connection waits for its next request.
    #[arg(long, env = "WEFT_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub header_read_timeout: Duration,
    /// A connection on which no byte moved for this long is closed (the config stream's
    /// heartbeat keeps proxies' streams busy).
    #[arg(long, env = "WEFT_IDLE_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub idle_timeout: Duration,
    /// Time a client has to send a request's whole body (slow uploads are answered with an
    /// error then).
    #[arg(long, env = "WEFT_BODY_READ_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub body_read_timeout: Duration,
    /// Most open connections on :15012 (CSR endpoint and config stream).
    #[arg(long, env = "WEFT_DISCOVERY_MAX_CONNECTIONS", default_value_t = ServingLimits::DISCOVERY_MAX_CONNECTIONS)]
    pub discovery_max_connections: usize,
    /// Most open connections on :15012 from one source address (IPv6: one /64).
    #[arg(long, env = "WEFT_DISCOVERY_MAX_CONNECTIONS_PER_SOURCE", default_value_t = ServingLimits::DISCOVERY_MAX_CONNECTIONS_PER_SOURCE)]
    pub discovery_max_connections_per_source: usize,
    /// Most open connections on :15017 (admission webhook).
    #[arg(long, env = "WEFT_WEBHOOK_MAX_CONNECTIONS", default_value_t = ServingLimits::WEBHOOK_MAX_CONNECTIONS)]
    pub webhook_max_connections: usize,
    /// Most open connections on :15017 from one source address.
    #[arg(long, env = "WEFT_WEBHOOK_MAX_CONNECTIONS_PER_SOURCE", default_value_t = ServingLimits::WEBHOOK_MAX_CONNECTIONS_PER_SOURCE)]
    pub webhook_max_connections_per_source: usize,
    /// Most open connections on :15014 (metrics, health).
    #[arg(long, env = "WEFT_MONITORING_MAX_CONNECTIONS", default_value_t = ServingLimits::MONITORING_MAX_CONNECTIONS)]
    pub monitoring_max_connections: usize,
    /// Most open connections on :15014 from one source address.
    #[arg(long, env = "WEFT_MONITORING_MAX_CONNECTIONS_PER_SOURCE", default_value_t = ServingLimits::MONITORING_MAX_CONNECTIONS_PER_SOURCE)]
    pub monitoring_max_connections_per_source: usize,
    /// Most open config streams of one workload identity (namespace and service account;
    /// shared by all replicas of a workload).
    #[arg(long, env = "WEFT_CONFIG_STREAMS_PER_IDENTITY", default_value_t = StreamLimits::PER_IDENTITY)]
    pub config_streams_per_identity: usize,
    /// Most open config streams naming one pod (its proxy needs one, two while reconnecting).
    #[arg(long, env = "WEFT_CONFIG_STREAMS_PER_POD", default_value_t = StreamLimits::PER_POD)]
    pub config_streams_per_pod: usize,
    /// A config stream (and its acks) must come from an address of the pod it names, so a
    /// sibling pod with the same service account cannot read another pod's config. Turn off
    /// only where proxies reach the operator through source NAT.
    #[arg(long, env = "WEFT_CONFIG_STREAM_BIND_POD_IP", default_value_t = true, action = clap::ArgAction::Set)]
    pub config_stream_bind_pod_ip: bool,
}

impl ServingLimitArgs {
    fn limits(&self, max_connections: usize, per_source: usize) -> ServingLimits {
        ServingLimits {
            header_read_timeout: self.header_read_timeout,
            idle_timeout: self.idle_timeout,
            body_read_timeout: self.body_read_timeout,
            ..ServingLimits::with_caps(max_connections, per_source)
        }
    }

    fn discovery(&self) -> ServingLimits {
        self.limits(
            self.discovery_max_connections,
            self.discovery_max_connections_per_source,
        )
    }

    fn webhook(&self) -> ServingLimits {
        self.limits(
            self.webhook_max_connections,
            self.webhook_max_connections_per_source,
        )
    }

    fn monitoring(&self) -> ServingLimits {
        self.limits(
            self.monitoring_max_connections,
            self.monitoring_max_connections_per_source,
        )
    }

    fn config_streams(&self) -> StreamLimits {
        StreamLimits {
            per_identity: self.config_streams_per_identity,
            per_pod: self.config_streams_per_pod,
        }
    }
}

/// The admin port answers without authentication: anything but loopback would hand every
/// pod in the cluster the list of proxies, their identities and versions.
fn parse_admin_addr(s: &str) -> Result<SocketAddr, String> {
    let addr: SocketAddr = s.parse().map_err(|e| format!("{e}"))?;
    if !addr.ip().is_loopback() {
        return Err(format!(
            "{addr} is not a loopback address: the admin port serves /debug/proxies without authentication, so it listens on 127.0.0.1 or ::1 only"
        ));
    }
    Ok(addr)
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    crate::duration::parse(s).map_err(|e| e.to_string())
}

pub async fn run(args: OperatorArgs) -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = kube::Client::try_default().await?;
    let max_ttl = crate::duration::parse(&args.workload_cert_ttl)?;
    let metrics = Arc::new(OperatorMetrics::new());
    let (ca_tx, ca_rx) = watch::channel(None);
    let (problem_tx, problem_rx) = watch::channel(None);
    // Only the replica holding the Lease runs the controllers and the CA-bundle writes.
    let election = super::leader::LeaderElection::new(
        client.clone(),
        &args.namespace,
        &args.instance,
        metrics.clone(),
    );
    // Every replica reads ConfigMap weft-ca-issuer: who signs workload certificates (issue 24).
    let (issuer_tx, issuer_rx) = watch::channel(None);
    let (issuer_status_tx, issuer_status_rx) = watch::channel(Default::default());
    // The rotation's view is made first: during a switch of issuer its phase decides who signs.
    let (rotation_tx, rotation_rx) = watch::channel(Default::default());
    tokio::spawn(
        super::issuer::IssuerController {
            client: client.clone(),
            namespace: args.namespace.clone(),
            trust_domain: args.trust_domain.clone(),
            active: issuer_tx,
            status: issuer_status_tx,
            leading: election.leading(),
            rotation: rotation_rx.clone(),
        }
        .run(),
    );
    // Every replica follows ConfigMap weft-ca-rotation: a root rotation under way (issue 24).
    let trust_acks: super::rotation_controller::Acks = Default::default();
    tokio::spawn(
        super::rotation_controller::RotationController {
            client: client.clone(),
            namespace: args.namespace.clone(),
            instance: args.instance.clone(),
            view: rotation_tx,
            acks: trust_acks.clone(),
            ca: ca_rx.clone(),
            issuer: issuer_status_rx.clone(),
            leading: election.leading(),
        }
        .run(),
    );
    tokio::spawn(
        CaBundleController {
            client: client.clone(),
            namespace: args.namespace.clone(),
            trust_domain: args.trust_domain.clone(),
            ca: ca_tx,
            problem: problem_tx,
            metrics: metrics.clone(),
            leading: election.leading(),
            publish_failures: Default::default(),
            issuer: issuer_status_rx,
            rotation: rotation_rx.clone(),
        }
        .run(),
    );
    let resolver = Arc::new(ServingCertResolver::default());
    tokio::spawn(keep_serving_cert(
        resolver.clone(),
        ca_rx.clone(),
        args.namespace.clone(),
    ));

    let trust_domain = args.trust_domain.clone();
    let mut csr_state = csr::CsrState::new(
        ca_rx.clone(),
        Arc::new(csr::KubeTokenReviewer::new(client.clone())),
        Arc::new(move |_ns: &str| csr::CertPolicy {
            trust_domain: trust_domain.clone(),
            max_ttl,
        }),
    );
    csr_state.on_outcome = Some(metrics.certificate_outcome());
    let trust = super::rotation_controller::trust_router(super::rotation_controller::TrustState {
        ca: ca_rx.clone(),
        issuer: Some(issuer_rx.clone()),
        view: rotation_rx.clone(),
        acks: trust_acks,
    });
    csr_state.issuer = Some(issuer_rx);
    csr_state.on_issuer = Some(metrics.issuer_outcome());
    // One watch of the meshed pods feeds the config server and the validator.
    let mesh_changed = Arc::new(tokio::sync::Notify::new());
    let meshed_pods = crate::kube::reflect::meshed_pods(&client, Some(mesh_changed.clone()));
    let config_server = DiscoveryState::start(
        &client,
        DiscoverySettings {
            trust_domain: args.trust_domain.clone(),
            operator_namespace: args.namespace.clone(),
            root_namespace: args.root_namespace.clone(),
            cluster_domain: args.cluster_domain.clone(),
        },
        meshed_pods.clone(),
        mesh_changed,
        metrics.clone(),
    )
    .with_stream_limits(args.limits.config_streams())
    .with_pod_address_binding(args.limits.config_stream_bind_pod_ip);
    // The WeftAccepted condition on each Istio policy and route, written by the leader.
    tokio::spawn(discovery::status::run(
        client.clone(),
        election.leading(),
        config_server.index_updates(),
    ));
    let discovery = csr::router(csr_state)
        .merge(discovery::server::router(config_server.clone()))
        .merge(trust);
    tokio::spawn(serve_tls(
        args.discovery_addr,
        resolver.clone(),
        discovery,
        Some(ca_rx.clone()),
        args.limits.discovery(),
    ));

    let settings = crate::webhook::InjectorSettings {
        operator_namespace: args.namespace.clone(),
        proxy_image: args.proxy_image.clone(),
        discovery_address: format!(
            "weft-operator.{}.svc:{}",
            args.namespace,
            contract::PORT_DISCOVERY
        ),
        trust_domain: args.trust_domain.clone(),
    };
    let injector = InjectorState::start(
        &client,
        settings,
        args.mesh_name.clone(),
        args.instance.clone(),
        meshed_pods,
        metrics.clone(),
    );
    {
        let injector = injector.clone();
        tokio::spawn(async move {
            injector.wait_synced().await;
            tracing::info!("injector: caches hold their first lists");
        });
    }
    tokio::spawn(serve_tls(
        args.webhook_addr,
        resolver.clone(),
        injector::router(injector.clone()),
        None,
        args.limits.webhook(),
    ));

    let controller_settings = crate::controllers::ControllerSettings {
        namespace: args.namespace.clone(),
        mesh_name: args.mesh_name.clone(),
        default_revision: args.default_revision.clone(),
        proxy_image: args.proxy_image.clone(),
        trust_domain: args.trust_domain.clone(),
        instance: args.instance.clone(),
    };
    let ca_health: crate::controllers::CaHealthProbe = {
        let (ca_rx, problem_rx) = (ca_rx.clone(), problem_rx.clone());
        let rotation_rx = rotation_rx.clone();
        Arc::new(move || crate::controllers::CaHealth {
            loaded: ca_rx.borrow().is_some(),
            problem: problem_rx
                .borrow()
                .as_ref()
                .and_then(super::ca_bundle::CaProblem::issue),
            rotation: rotation_rx
                .borrow()
                .active()
                .map(|s| crate::controllers::RotationPhase {
                    reason: s.phase.to_string(),
                    message: format!(
                        "root rotation {}: {}; `weft ca rotate status` shows what it waits for",
                        s.id,
                        s.phase.describe()
                    ),
                }),
        })
    };
    // Only the replica holding the Lease runs the controllers and writes (SPEC §11).
    let controller_metrics = metrics.clone();
    tokio::spawn(election.run(move |client| {
        crate::controllers::run_all(
            client,
            controller_settings.clone(),
            ca_health.clone(),
            controller_metrics.clone(),
        )
    }));

    // Ready: the CA is loaded, a serving certificate is installed and the injector's and the
    // config server's caches hold their first lists (`waiting_for` names what is missing), and
    // the CA still agrees with its Secret and the published root (`readiness`).
    let draining = Arc::new(AtomicBool::new(false));
    let waiting_for = {
        let (ca_rx, resolver) = (ca_rx.clone(), resolver.clone());
        let (config_server, injector) = (config_server.clone(), injector.clone());
        let draining = draining.clone();
        move || -> Vec<String> {
            if draining.load(Ordering::Relaxed) {
                return vec!["nothing: shutting down (SIGTERM)".into()];
            }
            let mut missing = Vec::new();
            if ca_rx.borrow().is_none() {
                missing.push("the mesh CA".to_string());
            }
            if !resolver.is_loaded() {
                missing.push("a serving certificate".to_string());
            }
            missing.extend(
                injector
                    .pending()
                    .into_iter()
                    .map(|k| format!("the injector's first list of {k}")),
            );
            if !config_server.is_synced() {
                missing.push("the config server's first index".to_string());
            }
            missing
        }
    };
    // Say it in the log too when readiness takes long: a replica that never gets ready
    // otherwise only shows in the Deployment's status.
    {
        let waiting_for = waiting_for.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(30)).await;
            let missing = waiting_for();
            if !missing.is_empty() {
                tracing::warn!("not ready after 30 s; waiting for {}", missing.join(", "));
            }
        });
    }
    let admin = tokio::net::TcpListener::bind(args.admin_addr).await?;
    tokio::spawn(serve_plain_on(
        admin,
        discovery::server::debug_router(config_server, args.instance.clone()),
        args.limits.monitoring(),
    ));
    let readiness = Readiness {
        waiting_for: Arc::new(waiting_for),
        ca_problem: problem_rx,
        ca_material: readiness::watch_ca_material(
            client.clone(),
            args.namespace.clone(),
            ca_rx.clone(),
            readiness::CHECK_PERIOD,
            readiness::MISMATCH_GRACE,
        ),
    };
    let monitoring = monitoring_router(readiness, metrics);
    let listener = tokio::net::TcpListener::bind(args.monitoring_addr).await?;
    tracing::info!(discovery = %args.discovery_addr, monitoring = %args.monitoring_addr, admin = %args.admin_addr, "operator serving");
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let serving = tokio::spawn(serve_plain_on(
        listener,
        monitoring,
        args.limits.monitoring(),
    ));
    tokio::select! {
        served = serving => served?,
        _ = sigterm.recv() => {
            // Keep answering (webhook, CSR, config) while the API server and kube-proxy take
            // this pod out of the Services' endpoints, so no pod creation fails during a
            // rollout restart or a failover; /readyz says we are going.
            draining.store(true, Ordering::Relaxed);
            tracing::info!(delay = ?args.shutdown_delay, "SIGTERM: not ready; serving until the endpoints drop this replica, then exiting");
            tokio::time::sleep(args.shutdown_delay).await;
            tracing::info!("exiting");
        }
    }
    Ok(())
}

/// What the monitoring port (15014) serves: `/healthz`, `/readyz`, `/metrics`, and a pointer
/// from `/debug/proxies` to the admin port.
pub fn monitoring_router(readiness: Readiness, metrics: Arc<OperatorMetrics>) -> axum::Router {
    discovery::server::debug_moved_router()
        .merge(readiness::router(readiness))
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(move || serve_metrics(metrics.clone())))
}

/// `GET /metrics`: the Prometheus text exposition.
async fn serve_metrics(metrics: Arc<OperatorMetrics>) -> axum::response::Response {
    use axum::response::IntoResponse;
    match metrics.encode() {
        Ok(text) => (
            [(axum::http::header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
            text,
        )
            .into_response(),
        Err(e) => (axum::http::StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}
