//! The config server (SPEC §8): reflectors keep the objects snapshots are made from, a
//! debounce loop rebuilds the shared [`MeshIndex`] at most every [`DEBOUNCE`], and every
//! connected proxy's stream task sends its own snapshot when its version changes.
//! [`DiscoveryState::start`] wires the reflectors; [`DiscoveryState::from_index`] takes the
//! index from a `watch` channel instead (no Kubernetes), as the convergence benchmark does.
//!
//! Routes on the discovery port (15012, TLS, client certificate optional there because the
//! CSR endpoint shares it; these two routes require it):
//! - `GET /v1/config/stream?pod=<name>`: the snapshot stream ([`crate::snapshot::stream`]).
//! - `POST /v1/config/ack`: the proxy's acknowledgement, bound to the streams its own
//!   connection opened and to the versions they sent (a proxy cannot ack what it was never
//!   sent, nor the stream of another connection).
//!
//! Open streams are capped per workload identity and per pod ([`StreamLimits`]), and both
//! routes are bound to the pod's own address: the connection must come from one of the IPs
//! the API server reports for the pod it names, so a sibling pod holding the same service
//! account's certificate cannot read or ack another pod's snapshot (operator flag
//! `--config-stream-bind-pod-ip`, on by default; off only where proxies reach the operator
//! through source NAT).
//!
//! On the admin port (loopback only, [`ADMIN_ADDR`]): `GET /debug/proxies`, this replica's
//! connected proxies with the version sent, the version acknowledged and the version current
//! now. It answers without authentication, so only processes in the operator's pod reach it:
//! `weft proxy-status` runs [`fetch_proxies`] there through `kubectl exec` on every replica and
//! merges the answers.

use std::collections::{HashMap, HashSet, VecDeque};
use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Extension, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Client;
use kube::runtime::reflector::Store;
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, watch};

use super::model::{MeshIndex, MeshView};
use super::policy::PolicyProblem;
use crate::api::smi::{HTTPRouteGroup, TCPRoute, TrafficSplit, TrafficTarget};
use crate::api::{
    AuthorizationPolicy, DestinationRule, MeshConfig, PeerAuthentication, ServiceEntry,
    VirtualService,
};
use crate::contract;
use crate::kube::events;
use crate::kube::metrics::OperatorMetrics;
use crate::kube::reflect::{ready, reflect, reflect_optional};
use crate::snapshot::stream::{Ack, HEARTBEAT, MAX_ACK_BYTES, Rejected, encode_line};

/// Changes closer together than this are coalesced into one rebuild.
pub const DEBOUNCE: Duration = Duration::from_millis(100);
/// How long a stream waits for its pod to reach the operator's caches.
const POD_WAIT: Duration = Duration::from_secs(5);

/// How many versions sent on one stream an ack may name: a proxy acks the one it just got,
/// or one a little older when changes came quickly.
const SENT_HISTORY: usize = 16;
/// What a client refused for too many open streams is asked to wait.
const RETRY_AFTER_SECONDS: u64 = 5;

/// The identity a TLS connection proved with its client certificate (set per connection by
/// the operator's TLS server).
#[derive(Debug, Clone, Default)]
pub struct PeerCert {
    pub spiffe_id: Option<String>,
    /// NotAfter of the client certificate, RFC 3339.
    pub expires: Option<String>,
    /// The connection: an ack binds to the streams opened on its own connection.
    pub connection: ConnectionId,
    /// The address the connection came from, as the operator's socket sees it (set by the
    /// accept loop; `None` only for requests that did not come through one).
    pub address: Option<IpAddr>,
}

/// Names one connection: two values are equal only when cloned from the same
/// [`ConnectionId::new`] (each accepted connection makes one), and a default one equals no
/// other, so requests of unknown connections never match each other.
#[derive(Debug, Clone, Default)]
pub struct ConnectionId(Arc<()>);

impl ConnectionId {
    pub fn new() -> Self {
        Self::default()
    }
}

impl PartialEq for ConnectionId {
    fn eq(&self, other: &Self) -> bool {
        // Identity of the allocation, which lives as long as any clone: no counter to wrap or
        // to share between listeners.
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for ConnectionId {}

/// Caps on open config streams (README, "Security"). A proxy needs one stream (two briefly
/// while it reconnects); the caps keep one stolen workload certificate from holding the
/// operator's memory and snapshot work with thousands of streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamLimits {
    /// Most open streams of one workload identity (namespace and service account): all the
    /// replicas of a workload share it, so it must exceed the largest Deployment's replicas.
    pub per_identity: usize,
    /// Most open streams naming one pod.
    pub per_pod: usize,
}

impl StreamLimits {
    pub const PER_IDENTITY: usize = 1_024;
    pub const PER_POD: usize = 4;
}

impl Default for StreamLimits {
    fn default() -> Self {
        StreamLimits {
            per_identity: Self::PER_IDENTITY,
            per_pod: Self::PER_POD,
        }
    }
}

#[derive(Debug, Clone)]
pub struct DiscoverySettings {
    pub trust_domain: String,
    pub operator_namespace: String,
    pub root_namespace: String,
    pub cluster_domain: String,
}

/// One connected proxy as `weft proxy-status` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ProxyRecord {
    pub namespace: String,
    pub pod: String,
    pub identity: String,
    pub revision: String,
    pub connected_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acked: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejected: Option<Rejected>,
    /// The version the operator would send now (filled when listed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_expires: Option<String>,
    /// What the snapshot last sent left out for this proxy, lacking a feature the config uses
    /// ([`crate::snapshot::compat`]): one line per Service, saying what its requests get.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lowered: Vec<String>,
}

/// `GET /debug/proxies`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyList {
    pub instance: String,
    pub proxies: Vec<ProxyRecord>,
}

#[derive(Default)]
struct Registry {
    next: AtomicU64,
    streams: Mutex<Streams>,
    metrics: Arc<OperatorMetrics>,
}

/// The open streams, with their counts per identity and per pod (kept with the records under
/// one lock, so a cap is checked and taken at once).
#[derive(Default)]
struct Streams {
    open: HashMap<u64, OpenStream>,
    per_identity: HashMap<String, usize>,
    per_pod: HashMap<(String, String), usize>,
}

/// One open stream: what `weft proxy-status` shows, and what an ack is checked against.
struct OpenStream {
    record: ProxyRecord,
    connection: ConnectionId,
    /// The versions sent on this stream, newest last, at most [`SENT_HISTORY`].
    sent: VecDeque<String>,
}

/// Why a stream was not opened.
enum Capped {
    Identity(usize),
    Pod(usize),
}

impl Streams {
    fn open(&mut self, id: u64, stream: OpenStream, limits: StreamLimits) -> Result<(), Capped> {
        let identity = stream.record.identity.clone();
        let pod = (stream.record.namespace.clone(), stream.record.pod.clone());
        let by_identity = self.per_identity.get(&identity).copied().unwrap_or(0);
        if by_identity >= limits.per_identity {
            return Err(Capped::Identity(limits.per_identity));
        }
        let by_pod = self.per_pod.get(&pod).copied().unwrap_or(0);
        if by_pod >= limits.per_pod {
            return Err(Capped::Pod(limits.per_pod));
        }
        self.per_identity.insert(identity, by_identity + 1);
        self.per_pod.insert(pod, by_pod + 1);
        self.open.insert(id, stream);
        Ok(())
    }

    fn close(&mut self, id: u64) {
        let Some(stream) = self.open.remove(&id) else {
            return;
        };
        let pod = (stream.record.namespace, stream.record.pod);
        for count in [
            self.per_identity.get_mut(&stream.record.identity),
            self.per_pod.get_mut(&pod),
        ]
        .into_iter()
        .flatten()
        {
            *count = count.saturating_sub(1);
        }
        self.per_identity.retain(|_, n| *n > 0);
        self.per_pod.retain(|_, n| *n > 0);
    }
}

impl Registry {
    /// Notes `version` as sent on stream `id` (before it is sent: the proxy may ack it as
    /// soon as it arrives).
    fn sending(&self, id: u64, version: &str, lowered: Vec<String>) {
        if let Ok(mut m) = self.streams.lock()
            && let Some(s) = m.open.get_mut(&id)
        {
            s.record.sent = Some(version.to_string());
            s.record.lowered = lowered;
            if s.sent.len() == SENT_HISTORY {
                s.sent.pop_front();
            }
            s.sent.push_back(version.to_string());
        }
    }
}

/// Removes a stream's record when its task ends (the proxy went away).
struct Registered(Arc<Registry>, u64);

impl Drop for Registered {
    fn drop(&mut self) {
        if let Ok(mut m) = self.0.streams.lock() {
            m.close(self.1);
        }
        self.0.metrics.connected_proxies.dec();
    }
}

#[derive(Clone)]
pub struct DiscoveryState {
    index: watch::Receiver<Arc<MeshIndex>>,
    registry: Arc<Registry>,
    settings: Arc<DiscoverySettings>,
    synced: watch::Receiver<bool>,
    limits: StreamLimits,
    /// How long a stream or ack waits for its pod to reach the caches ([`POD_WAIT`]).
    pod_wait: Duration,
    /// Whether a stream or ack must come from its pod's own address (see the module doc).
    bind_pod_address: bool,
}

impl DiscoveryState {
    /// Starts the reflectors and the rebuild loop. `pods` is the shared store of meshed pods
    /// ([`crate::kube::reflect::meshed_pods`]), created to wake `changed`. Connected
    /// proxies and snapshots sent are counted in `metrics`.
    pub fn start(
        client: &Client,
        settings: DiscoverySettings,
        pods: Store<Pod>,
        changed: Arc<Notify>,
        metrics: Arc<OperatorMetrics>,
    ) -> Self {
        let n = || Some(changed.clone());
        let services: Store<Service> = reflect(kube::Api::all(client.clone()), n());
        let slices: Store<EndpointSlice> = reflect(kube::Api::all(client.clone()), n());
        // Pods without a proxy, metadata only: their endpoints' workload metadata.
        let unmeshed = crate::kube::reflect::unmeshed_pods(client, n());
        let revisions: Store<MeshConfig> = reflect(
            kube::Api::namespaced(client.clone(), &settings.operator_namespace),
            n(),
        );
        // Istio's API may be absent: this store then stays empty and the watch retries, so
        // installing the CRD later just works. It is not part of readiness.
        let policies: Store<PeerAuthentication> =
            reflect_optional(kube::Api::all(client.clone()), n());
        let authorization: Store<AuthorizationPolicy> =
            reflect_optional(kube::Api::all(client.clone()), n());
        // SMI's API likewise (OSM users bring it; config/smi-api ships it otherwise).
        let traffic_targets: Store<TrafficTarget> =
            reflect_optional(kube::Api::all(client.clone()), n());
        let http_route_groups: Store<HTTPRouteGroup> =
            reflect_optional(kube::Api::all(client.clone()), n());
        let tcp_routes: Store<TCPRoute> = reflect_optional(kube::Api::all(client.clone()), n());
        // Routing: Istio's networking API and SMI's TrafficSplit, optional likewise.
        let destination_rules: Store<DestinationRule> =
            reflect_optional(kube::Api::all(client.clone()), n());
        let virtual_services: Store<VirtualService> =
            reflect_optional(kube::Api::all(client.clone()), n());
        let traffic_splits: Store<TrafficSplit> =
            reflect_optional(kube::Api::all(client.clone()), n());
        // Egress: Istio's ServiceEntries, optional likewise.
        let istio_gateways: Store<crate::api::Gateway> =
            reflect_optional(kube::Api::all(client.clone()), n());
        // Gateway certificates (credentialName): a watch per namespace with gateway pods,
        // started as they appear; not part of readiness.
        let mut tls_secrets =
            crate::kube::reflect::GatewaySecrets::new(client.clone(), changed.clone());
        let service_entries: Store<ServiceEntry> =
            reflect_optional(kube::Api::all(client.clone()), n());
        // The Gateway API's routes (GAMMA: a Service parent), optional likewise
        // (config/gateway-api ships the CRDs for clusters without them).
        let http_routes: Store<crate::api::gateway_api::HTTPRoute> =
            reflect_optional(kube::Api::all(client.clone()), n());
        let grpc_routes: Store<crate::api::gateway_api::GRPCRoute> =
            reflect_optional(kube::Api::all(client.clone()), n());
        let tls_routes: Store<crate::api::gateway_api::TLSRoute> =
            reflect_optional(kube::Api::all(client.clone()), n());
        let gateway_tcp_routes: Store<crate::api::gateway_api::TCPRoute> =
            reflect_optional(kube::Api::all(client.clone()), n());
        let gateway_api_gateways: Store<crate::api::gateway_api::Gateway> =
            reflect_optional(kube::Api::all(client.clone()), n());
        let gateway_classes: Store<crate::api::gateway_api::GatewayClass> =
            reflect_optional(kube::Api::all(client.clone()), n());
        let namespaces: Store<k8s_openapi::api::core::v1::Namespace> =
            reflect_optional(kube::Api::all(client.clone()), n());
        let reference_grants: Store<crate::api::gateway_api::ReferenceGrant> =
            reflect_optional(kube::Api::all(client.clone()), n());

        let base = MeshView {
            trust_domain: settings.trust_domain.clone(),
            root_namespace: settings.root_namespace.clone(),
            cluster_domain: settings.cluster_domain.clone(),
            ..Default::default()
        };
        let (index_tx, index_rx) = watch::channel(Arc::new(MeshIndex::build(&base)));
        let (synced_tx, synced_rx) = watch::channel(false);
        let events_client = client.clone();
        tokio::spawn(async move {
            let mut reported: HashSet<PolicyProblem> = HashSet::new();
            tokio::join!(
                ready(&pods),
                ready(&services),
                ready(&slices),
                ready(&revisions),
                ready(&unmeshed),
            );
            loop {
                let pods = pods.state();
                let reference_grants = reference_grants.state();
                // A Gateway's certificate may live in another namespace when a ReferenceGrant
                // there lets Gateways use its Secrets: watch those namespaces too.
                let granted = super::gateway_api::secret_grant_namespaces(&reference_grants);
                let credentials = super::routes::credential_namespaces(
                    &pods,
                    &istio_gateways.state(),
                    &gateway_api_gateways.state(),
                );
                // TLS origination (DestinationRule SIMPLE/MUTUAL credentialName): the Secrets
                // of the namespaces whose proxies see such a rule (tlsorig's line).
                let originating =
                    super::routes::origination_namespaces(&destination_rules.state(), &pods);
                let gateway_namespaces = credentials
                    .iter()
                    .map(String::as_str)
                    .chain(granted.iter().map(String::as_str))
                    .chain(originating.iter().map(String::as_str));
                let view = MeshView {
                    tls_secrets: tls_secrets.state(gateway_namespaces),
                    pods,
                    unmeshed_pods: unmeshed.state(),
                    services: services.state(),
                    slices: slices.state(),
                    revisions: revisions.state(),
                    peer_authentications: policies.state(),
                    authorization_policies: authorization.state(),
                    traffic_targets: traffic_targets.state(),
                    http_route_groups: http_route_groups.state(),
                    tcp_routes: tcp_routes.state(),
                    destination_rules: destination_rules.state(),
                    virtual_services: virtual_services.state(),
                    traffic_splits: traffic_splits.state(),
                    service_entries: service_entries.state(),
                    istio_gateways: istio_gateways.state(),
                    http_routes: http_routes.state(),
                    grpc_routes: grpc_routes.state(),
                    tls_routes: tls_routes.state(),
                    gateway_tcp_routes: gateway_tcp_routes.state(),
                    gateway_api_gateways: gateway_api_gateways.state(),
                    gateway_classes: gateway_classes.state(),
                    namespaces: namespaces.state(),
                    reference_grants,
                    ..base.clone()
                };
                let index = MeshIndex::build(&view);
                let current: HashSet<PolicyProblem> = index.problems.iter().cloned().collect();
                for p in current.difference(&reported) {
                    report_problem(&events_client, p);
                }
                reported = current;
                index_tx.send_replace(Arc::new(index));
                synced_tx.send_replace(true);
                changed.notified().await;
                tokio::time::sleep(DEBOUNCE).await;
            }
        });
        DiscoveryState {
            synced: synced_rx,
            ..Self::from_index(index_rx, settings, metrics)
        }
    }

    /// A config server fed by whoever holds the sending side of `index` (no Kubernetes):
    /// every published index reaches the connected proxies whose snapshot it changes. The
    /// index is taken as complete, so the state counts as synced from the start. The
    /// convergence benchmark drives the routes this way.
    pub fn from_index(
        index: watch::Receiver<Arc<MeshIndex>>,
        settings: DiscoverySettings,
        metrics: Arc<OperatorMetrics>,
    ) -> Self {
        DiscoveryState {
            index,
            registry: Arc::new(Registry {
                metrics,
                ..Default::default()
            }),
            settings: Arc::new(settings),
            synced: watch::channel(true).1,
            limits: StreamLimits::default(),
            pod_wait: POD_WAIT,
            bind_pod_address: true,
        }
    }

    /// The same server with the pod-address binding on (the default) or off.
    pub fn with_pod_address_binding(self, bind_pod_address: bool) -> Self {
        DiscoveryState {
            bind_pod_address,
            ..self
        }
    }

    /// The same server with other caps on open streams.
    pub fn with_stream_limits(self, limits: StreamLimits) -> Self {
        DiscoveryState { limits, ..self }
    }

    /// True once the first index from full caches is built.
    pub fn is_synced(&self) -> bool {
        *self.synced.borrow()
    }

    /// The current index (for `weft describe pod` style questions and tests).
    pub fn index(&self) -> Arc<MeshIndex> {
        self.index.borrow().clone()
    }

    /// Every new index as it is built (the status writer follows it).
    pub fn index_updates(&self) -> watch::Receiver<Arc<MeshIndex>> {
        self.index.clone()
    }

    /// This replica's connected proxies, each with the version current now.
    pub fn proxies(&self, instance: &str) -> ProxyList {
        let index = self.index();
        let mut proxies: Vec<ProxyRecord> = self
            .registry
            .streams
            .lock()
            .map(|m| m.open.values().map(|s| s.record.clone()).collect())
            .unwrap_or_default();
        for p in &mut proxies {
            p.current = index
                .config_for(&p.namespace, &p.pod)
                .ok()
                .map(|c| c.version);
        }
        proxies.sort_by(|a, b| (&a.namespace, &a.pod).cmp(&(&b.namespace, &b.pod)));
        ProxyList {
            instance: instance.to_string(),
            proxies,
        }
    }
}

/// Tells a person once (per replica and problem) that a policy is not applied as written:
/// a warning in the log and a Warning Event on the policy (`kubectl describe` shows it; the
/// Event's name is derived from its content, so replicas do not repeat each other).
fn report_problem(client: &Client, p: &PolicyProblem) {
    tracing::warn!(kind = p.kind, namespace = %p.namespace, name = %p.name, "policy not applied as written: {}", p.message);
    let event = events::warning(
        events::Regarding {
            api_version: match p.kind {
                "TrafficTarget" => "access.smi-spec.io/v1alpha3",
                "HTTPRouteGroup" | "TCPRoute" => "specs.smi-spec.io/v1alpha4",
                "TrafficSplit" => "split.smi-spec.io/v1alpha2",
                "DestinationRule" | "VirtualService" | "ServiceEntry" | "Gateway" => {
                    "networking.istio.io/v1"
                }
                _ => "security.istio.io/v1",
            },
            kind: p.kind,
            namespace: Some(&p.namespace),
            name: &p.name,
            uid: None,
        },
        "PolicyNotApplied",
        "Compile",
        &p.message,
        "weft-operator",
    );
    let client = client.clone();
    tokio::spawn(async move {
        if let Err(e) = events::publish(&client, event).await {
            tracing::debug!(error = %e, "could not record a policy problem as an Event");
        }
    });
}

/// The config routes, merged into the discovery port's router.
pub fn router(state: DiscoveryState) -> Router {
    Router::new()
        .route(contract::PATH_CONFIG_STREAM, get(stream))
        .route(contract::PATH_CONFIG_ACK, post(ack))
        .layer(DefaultBodyLimit::max(MAX_ACK_BYTES))
        .with_state(state)
}

fn refuse(status: StatusCode, message: impl Into<String>) -> Response {
    let body = serde_json::json!({ "error": message.into() }).to_string();
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// `spiffe://<td>/ns/<ns>/sa/<sa>` of our trust domain → (ns, sa).
fn namespace_and_sa<'a>(id: &'a str, trust_domain: &str) -> Option<(&'a str, &'a str)> {
    let rest = id.strip_prefix("spiffe://")?.strip_prefix(trust_domain)?;
    let mut parts = rest.strip_prefix('/')?.split('/');
    match (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) {
        (Some("ns"), Some(ns), Some("sa"), Some(sa), None) if !ns.is_empty() && !sa.is_empty() => {
            Some((ns, sa))
        }
        _ => None,
    }
}

fn valid_pod_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
}

/// Checks who is asking: a workload certificate of our trust domain naming the namespace and
/// service account of `pod`, on a connection from one of `pod`'s addresses. Waits briefly for
/// a new pod (or its address) to reach the caches.
async fn authorize(
    state: &DiscoveryState,
    peer: &PeerCert,
    pod: &str,
) -> Result<(String, String), Response> {
    let Some(id) = peer.spiffe_id.as_deref() else {
        return Err(refuse(
            StatusCode::UNAUTHORIZED,
            "the config stream needs the proxy's workload certificate as TLS client certificate",
        ));
    };
    let Some((ns, sa)) = namespace_and_sa(id, &state.settings.trust_domain) else {
        return Err(refuse(
            StatusCode::FORBIDDEN,
            format!(
                "{id} is not a workload identity of trust domain {}",
                state.settings.trust_domain
            ),
        ));
    };
    if !valid_pod_name(pod) {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "query parameter pod must be the pod's name (POD_NAME)",
        ));
    }
    // An IPv4 client of a dual-stack listener shows as ::ffff:a.b.c.d.
    let source = peer.address.map(|a| a.to_canonical());
    let bound = state.bind_pod_address;
    let mut index = state.index.clone();
    let mut seen = Seen::Unknown;
    let _ = tokio::time::timeout(state.pod_wait, async {
        loop {
            let current = index.borrow_and_update().clone();
            if let Some(p) = current.pod(ns, pod) {
                if p.service_account != sa {
                    // Final: a pod does not change its service account.
                    seen = Seen::OtherAccount(p.service_account.clone());
                    return;
                }
                let addresses = current.pod_addresses(ns, pod);
                if !bound || source.is_some_and(|a| addresses.contains(&a)) {
                    seen = Seen::Authorized;
                    return;
                }
                seen = Seen::OtherAddress;
                // A pod keeps its addresses for life: once known, the answer is final. Until
                // then (a new pod whose address has not reached the caches), wait for them.
                if !addresses.is_empty() {
                    return;
                }
            }
            if index.changed().await.is_err() {
                return;
            }
        }
    })
    .await;
    match seen {
        Seen::Authorized => Ok((ns.to_string(), pod.to_string())),
        Seen::OtherAccount(owner) => Err(refuse(
            StatusCode::FORBIDDEN,
            format!("pod {ns}/{pod} runs as service account {owner}, not {sa}"),
        )),
        Seen::OtherAddress => {
            let from = source.map_or_else(|| "an unknown address".to_string(), |a| a.to_string());
            tracing::warn!(%ns, %pod, identity = %id, %from, "config stream refused: not from the pod's address");
            Err(refuse(
                StatusCode::FORBIDDEN,
                format!(
                    "this connection comes from {from}, which is not an address of pod {ns}/{pod}: a proxy reads and acks only its own pod's config, from inside that pod"
                ),
            ))
        }
        Seen::Unknown => Err(refuse(
            StatusCode::NOT_FOUND,
            format!(
                "pod {ns}/{pod} is not a meshed pod the operator knows (no {} label, or not created yet)",
                contract::LABEL_REVISION
            ),
        )),
    }
}

/// What [`authorize`] last saw of the pod a request names.
enum Seen {
    Unknown,
    OtherAccount(String),
    OtherAddress,
    Authorized,
}

#[derive(Deserialize)]
struct StreamQuery {
    pod: Option<String>,
    /// `delta=1`: the proxy reads delta lines ([`crate::snapshot::delta`]); without it (a
    /// proxy of an older revision) every line is a whole snapshot.
    delta: Option<String>,
    /// What the proxy implements ([`crate::snapshot::compat::Features`]); absent: a proxy of
    /// an older revision, which gets the config lowered where it uses newer features.
    features: Option<String>,
}

async fn stream(
    State(state): State<DiscoveryState>,
    peer: Option<Extension<PeerCert>>,
    Query(q): Query<StreamQuery>,
) -> Response {
    let peer = peer.map(|Extension(p)| p).unwrap_or_default();
    let pod = q.pod.unwrap_or_default();
    let deltas = q.delta.as_deref() == Some("1");
    let features = crate::snapshot::compat::Features::parse(q.features.as_deref());
    let (namespace, pod) = match authorize(&state, &peer, &pod).await {
        Ok(who) => who,
        Err(refused) => return refused,
    };
    let index = state.index();
    let Some(meshed) = index.pod(&namespace, &pod) else {
        return refuse(StatusCode::NOT_FOUND, "pod left the caches");
    };
    let id = state.registry.next.fetch_add(1, Ordering::Relaxed);
    let stream = OpenStream {
        record: ProxyRecord {
            namespace: namespace.clone(),
            pod: pod.clone(),
            identity: meshed.identity.clone(),
            revision: meshed.revision.clone(),
            connected_at: k8s_openapi::jiff::Timestamp::now().to_string(),
            sent: None,
            acked: None,
            rejected: None,
            current: None,
            cert_expires: peer.expires.clone(),
            lowered: Vec::new(),
        },
        connection: peer.connection.clone(),
        sent: VecDeque::new(),
    };
    let opened = match state.registry.streams.lock() {
        Ok(mut m) => m.open(id, stream, state.limits),
        Err(_) => {
            return refuse(
                StatusCode::INTERNAL_SERVER_ERROR,
                "stream registry poisoned",
            );
        }
    };
    if let Err(capped) = opened {
        let (what, limit, flag) = match capped {
            Capped::Identity(n) => (
                format!("identity {}", meshed.identity),
                n,
                "--config-streams-per-identity",
            ),
            Capped::Pod(n) => (
                format!("pod {namespace}/{pod}"),
                n,
                "--config-streams-per-pod",
            ),
        };
        tracing::warn!(%namespace, %pod, "config stream refused: {what} holds {limit} open streams");
        let mut refused = refuse(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "{what} already holds {limit} open config streams, the most allowed (operator flag {flag}); close one or retry later"
            ),
        );
        refused.headers_mut().insert(
            header::RETRY_AFTER,
            header::HeaderValue::from(RETRY_AFTER_SECONDS),
        );
        return refused;
    }
    // Counted down by `Registered`'s drop.
    state.registry.metrics.connected_proxies.inc();
    let guard = Registered(state.registry.clone(), id);
    // A tokio channel: its sender learns at once when the body is dropped (the proxy went
    // away), so the stream's slot under the caps comes back without waiting for a heartbeat.
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1);
    let mut index_rx = state.index.clone();
    tokio::spawn(async move {
        let guard = guard;
        // The version last sent and an index that holds it: the base of the next delta.
        let mut last: Option<(String, Arc<MeshIndex>)> = None;
        let mut told: Vec<String> = Vec::new();
        loop {
            let index = index_rx.borrow_and_update().clone();
            // A pod that left the caches keeps its last config until its proxy stops.
            if let Ok(config) = index.config_for(&namespace, &pod) {
                let sent = last.as_ref().map(|(v, _)| v);
                if sent != Some(&config.version) {
                    // A proxy that lacks a feature this config uses gets it lowered, whole.
                    let (bytes, lowered) = match config.lowered(features) {
                        Some((bytes, notes)) => {
                            // Logged when it changes, not on every send.
                            if notes != told {
                                for note in &notes {
                                    tracing::warn!(%namespace, %pod, "config lowered for an older proxy: {note}");
                                }
                                told.clone_from(&notes);
                            }
                            (bytes, notes)
                        }
                        None => {
                            let base = last
                                .as_ref()
                                .filter(|_| deltas)
                                .and_then(|(_, i)| i.config_for(&namespace, &pod).ok());
                            let bytes = base
                                .and_then(|b| config.delta(&b))
                                .unwrap_or_else(|| config.whole());
                            (bytes, Vec::new())
                        }
                    };
                    guard.0.sending(guard.1, &config.version, lowered);
                    if tx.send(Bytes::from(encode_line(&bytes))).await.is_err() {
                        return;
                    }
                    guard.0.metrics.snapshots_sent.inc();
                }
                // Same version, same content: this index is as good a base as the last.
                let version = config.version;
                last = Some((version, index.clone()));
            }
            tokio::select! {
                changed = index_rx.changed() => if changed.is_err() { return },
                () = tx.closed() => return,
                _ = tokio::time::sleep(HEARTBEAT) => {
                    if tx.send(Bytes::from_static(b"\n")).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    let body = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|line| (Ok::<_, Infallible>(line), rx))
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "application/x-ndjson")
        .header(header::CACHE_CONTROL, "no-store")
        .body(Body::from_stream(body))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// Why an ack was not recorded.
#[derive(Debug, PartialEq, Eq)]
enum AckRefused {
    /// This connection holds no stream of the pod.
    NoStream,
    /// The ack names a version that no stream of the pod on this connection sent.
    NotSent(String),
}

impl Streams {
    /// Records `ack` on the streams of `namespace/pod` opened on `connection`. Each version it
    /// names must be one such a stream sent; the version a proxy still runs after rejecting
    /// may come from an earlier stream, so it is kept only if this stream sent it too.
    fn ack(
        &mut self,
        connection: &ConnectionId,
        namespace: &str,
        pod: &str,
        ack: &Ack,
    ) -> Result<(), AckRefused> {
        let mut mine: Vec<&mut OpenStream> = self
            .open
            .values_mut()
            .filter(|s| {
                &s.connection == connection
                    && s.record.namespace == namespace
                    && s.record.pod == pod
            })
            .collect();
        if mine.is_empty() {
            return Err(AckRefused::NoStream);
        }
        let sent = |s: &OpenStream, v: &str| s.sent.iter().any(|x| x == v);
        for s in &mut mine {
            let version_sent = ack.version.as_deref().is_none_or(|v| sent(s, v));
            match &ack.rejected {
                Some(r) if sent(s, &r.version) => {
                    s.record.rejected = Some(r.clone());
                    s.record.acked = ack.version.clone().filter(|_| version_sent);
                    return Ok(());
                }
                None if version_sent => {
                    s.record.rejected = None;
                    s.record.acked = ack.version.clone();
                    return Ok(());
                }
                _ => {}
            }
        }
        let named = ack
            .rejected
            .as_ref()
            .map(|r| r.version.clone())
            .or_else(|| ack.version.clone())
            .unwrap_or_default();
        Err(AckRefused::NotSent(named))
    }
}

async fn ack(
    State(state): State<DiscoveryState>,
    peer: Option<Extension<PeerCert>>,
    body: Bytes,
) -> Response {
    let peer = peer.map(|Extension(p)| p).unwrap_or_default();
    let ack: Ack = match serde_json::from_slice(&body) {
        Ok(a) => a,
        Err(e) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                format!("ack must be JSON {{\"pod\", \"version\", \"rejected\"}}: {e}"),
            );
        }
    };
    let (namespace, pod) = match authorize(&state, &peer, &ack.pod).await {
        Ok(who) => who,
        Err(refused) => return refused,
    };
    let recorded = match state.registry.streams.lock() {
        Ok(mut m) => m.ack(&peer.connection, &namespace, &pod, &ack),
        Err(_) => {
            return refuse(
                StatusCode::INTERNAL_SERVER_ERROR,
                "stream registry poisoned",
            );
        }
    };
    match recorded {
        Ok(()) => {
            if let Some(r) = &ack.rejected {
                tracing::warn!(%namespace, %pod, version = %r.version, "proxy rejected its config: {}", r.reason);
            }
            StatusCode::NO_CONTENT.into_response()
        }
        Err(AckRefused::NoStream) => refuse(
            StatusCode::CONFLICT,
            format!(
                "this connection has no config stream of pod {namespace}/{pod}: post the ack on the connection of the stream that sent the snapshot"
            ),
        ),
        Err(AckRefused::NotSent(version)) => refuse(
            StatusCode::CONFLICT,
            format!(
                "version {version} was not sent to pod {namespace}/{pod} on this connection's stream: ack only a version the stream sent"
            ),
        ),
    }
}

/// Where the admin port listens by default: loopback only, in the operator's pod.
pub const ADMIN_ADDR: &str = "127.0.0.1:15000";
/// Largest `/debug/proxies` answer [`fetch_proxies`] reads (about 40,000 proxies).
const MAX_DEBUG_PROXIES_BYTES: usize = 16 * 1024 * 1024;
/// Bound on [`fetch_proxies`]: connecting to loopback and serializing the registry are quick.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// `GET /debug/proxies`, served on the admin port only (see the module doc).
pub fn debug_router(state: DiscoveryState, instance: String) -> Router {
    Router::new().route(
        contract::PATH_DEBUG_PROXIES,
        get(move || {
            let list = state.proxies(&instance);
            async move { axum::Json(list) }
        }),
    )
}

/// What the monitoring port (reachable by every pod) answers on `/debug/proxies` now: where
/// it went, for an older `weft proxy-status` or a person with curl.
pub fn debug_moved_router() -> Router {
    Router::new().route(
        contract::PATH_DEBUG_PROXIES,
        get(|| async {
            refuse(
                StatusCode::NOT_FOUND,
                format!(
                    "/debug/proxies is served only on the operator's loopback admin port ({ADMIN_ADDR}); run weft proxy-status (it reads every replica through kubectl exec)"
                ),
            )
        }),
    )
}

/// `GET /debug/proxies` of the replica whose admin port is `addr`, as served (JSON
/// [`ProxyList`]). Runs inside the operator's pod: `weft proxy-status --this-replica`.
pub async fn fetch_proxies(addr: std::net::SocketAddr) -> Result<Bytes, String> {
    let fetch = async {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connecting to the admin port {addr}: {e}"))?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
                .await
                .map_err(|e| format!("HTTP to {addr}: {e}"))?;
        tokio::spawn(connection);
        let request = axum::http::Request::get(contract::PATH_DEBUG_PROXIES)
            .header(header::HOST, addr.to_string())
            .body(Body::empty())
            .map_err(|e| e.to_string())?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("GET {}: {e}", contract::PATH_DEBUG_PROXIES))?;
        let status = response.status();
        let body = axum::body::to_bytes(Body::new(response.into_body()), MAX_DEBUG_PROXIES_BYTES)
            .await
            .map_err(|e| format!("reading {}: {e}", contract::PATH_DEBUG_PROXIES))?;
        if !status.is_success() {
            return Err(format!(
                "GET {} answered {status}: {}",
                contract::PATH_DEBUG_PROXIES,
                String::from_utf8_lossy(&body)
            ));
        }
        Ok(body)
    };
    tokio::time::timeout(FETCH_TIMEOUT, fetch)
        .await
        .unwrap_or_else(|_| Err(format!("{addr} did not answer within {FETCH_TIMEOUT:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_workload_identities_of_our_trust_domain_name_a_pod() {
        let td = "cluster.local";
        assert_eq!(
            namespace_and_sa("spiffe://cluster.local/ns/pets/sa/web", td),
            Some(("pets", "web"))
        );
        for bad in [
            "spiffe://other.local/ns/pets/sa/web",
            "spiffe://cluster.localx/ns/pets/sa/web",
            "spiffe://cluster.local/ns/pets/sa/web/extra",
            "spiffe://cluster.local/ns//sa/web",
            "spiffe://cluster.local/sa/web/ns/pets",
            "https://cluster.local/ns/pets/sa/web",
        ] {
            assert_eq!(namespace_and_sa(bad, td), None, "{bad}");
        }
        assert!(valid_pod_name("web-7d9f-abc12"));
        assert!(!valid_pod_name(""));
        assert!(!valid_pod_name("Web"));
        assert!(!valid_pod_name("a/b"));
    }

    // === the stream and ack routes, called as the TLS server calls them ===

    use super::super::model::tests::{pod, service, view};
    use axum::body::to_bytes;
    use axum::http::Request;
    use futures::StreamExt;
    use tower::ServiceExt;

    /// pets/web-1 and pets/web-2 run as `web`, pets/db-1 as `db`; shop/web-1 as shop's `web`.
    fn mesh() -> MeshView {
        let mut v = view();
        v.pods.push(pod("pets", "web-2", "198.18.1.5", "web", true));
        v.pods.push(pod("shop", "web-1", "198.18.2.2", "web", true));
        v
    }

    fn server(limits: StreamLimits) -> (DiscoveryState, watch::Sender<Arc<MeshIndex>>) {
        let (tx, rx) = watch::channel(Arc::new(MeshIndex::build(&mesh())));
        let state = DiscoveryState::from_index(
            rx,
            DiscoverySettings {
                trust_domain: "cluster.local".into(),
                operator_namespace: "weft-system".into(),
                root_namespace: "weft-system".into(),
                cluster_domain: "cluster.local".into(),
            },
            Arc::new(OperatorMetrics::new()),
        )
        .with_stream_limits(limits);
        (state, tx)
    }

    /// The addresses of [`mesh`]'s pods.
    const WEB_1: &str = "198.18.1.2";
    const DB_1: &str = "198.18.1.3";
    const WEB_2: &str = "198.18.1.5";
    const SHOP_WEB_1: &str = "198.18.2.2";

    /// One TLS connection from address `from` with a client certificate of `ns`/`sa` of our
    /// trust domain.
    fn connection_from(ns: &str, sa: &str, from: &str) -> PeerCert {
        PeerCert {
            spiffe_id: Some(format!("spiffe://cluster.local/ns/{ns}/sa/{sa}")),
            expires: None,
            connection: ConnectionId::new(),
            address: Some(from.parse().unwrap()),
        }
    }

    /// The connection of pets/web-1's proxy.
    fn web_1() -> PeerCert {
        connection_from("pets", "web", WEB_1)
    }

    async fn open(state: &DiscoveryState, peer: Option<&PeerCert>, pod: &str) -> Response {
        let mut request = Request::get(format!("{}?pod={pod}", contract::PATH_CONFIG_STREAM))
            .body(Body::empty())
            .unwrap();
        if let Some(p) = peer {
            request.extensions_mut().insert(p.clone());
        }
        router(state.clone()).oneshot(request).await.unwrap()
    }

    async fn post_ack(state: &DiscoveryState, peer: &PeerCert, ack: &Ack) -> (StatusCode, String) {
        let mut request = Request::post(contract::PATH_CONFIG_ACK)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(serde_json::to_vec(ack).unwrap()))
            .unwrap();
        request.extensions_mut().insert(peer.clone());
        let response = router(state.clone()).oneshot(request).await.unwrap();
        let status = response.status();
        let body = to_bytes(response.into_body(), 64 * 1024).await.unwrap();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    async fn refusal(response: Response) -> (StatusCode, String) {
        let status = response.status();
        let body = to_bytes(response.into_body(), 64 * 1024).await.unwrap();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    /// An open stream as the proxy reads it: the body, whose drop closes the stream.
    struct Stream(axum::body::BodyDataStream);

    impl Stream {
        fn of(response: Response) -> Stream {
            assert_eq!(response.status(), StatusCode::OK);
            Stream(response.into_body().into_data_stream())
        }

        /// The version of the next snapshot line.
        async fn next_version(&mut self) -> String {
            let line = self.next_line().await;
            let snapshot: serde_json::Value = serde_json::from_slice(&line).unwrap();
            snapshot["version"].as_str().unwrap().to_string()
        }

        /// The next non-empty line, with its newline.
        async fn next_line(&mut self) -> Vec<u8> {
            let mut line = Vec::new();
            while !line.ends_with(b"\n") || line == b"\n" {
                if line == b"\n" {
                    line.clear();
                }
                let chunk = tokio::time::timeout(Duration::from_secs(5), self.0.next())
                    .await
                    .expect("a snapshot within 5 s")
                    .expect("the stream is open")
                    .unwrap();
                line.extend_from_slice(&chunk);
            }
            line
        }
    }

    fn acked(state: &DiscoveryState, pod: &str) -> Vec<(Option<String>, Option<String>)> {
        state
            .proxies("test")
            .proxies
            .into_iter()
            .filter(|p| p.namespace == "pets" && p.pod == pod)
            .map(|p| (p.acked, p.rejected.map(|r| r.version)))
            .collect()
    }

    fn ack(pod: &str, version: Option<&str>, rejected: Option<&str>) -> Ack {
        Ack {
            pod: pod.into(),
            version: version.map(String::from),
            rejected: rejected.map(|v| Rejected {
                version: v.into(),
                reason: "unknown field".into(),
            }),
        }
    }

    /// [`mesh`] with 40 more Services (no endpoints), so the lists outweigh the rest as in a
    /// real mesh; `extra` adds one more Service and a pod.
    fn bigger_mesh(extra: bool) -> MeshView {
        let mut v = mesh();
        for i in 0..40 {
            v.services.push(service(
                "pets",
                &format!("svc-{i:02}"),
                &format!("198.19.1.{}", i + 10),
                "http",
            ));
        }
        if extra {
            v.services
                .push(service("pets", "svc-new", "198.19.2.10", "http"));
            v.pods.push(pod("pets", "web-3", "198.18.1.6", "web", true));
        }
        v
    }

    async fn open_delta(state: &DiscoveryState, peer: &PeerCert, pod: &str) -> Response {
        let mut request = Request::get(format!(
            "{}?pod={pod}&{}=1",
            contract::PATH_CONFIG_STREAM,
            crate::snapshot::stream::QUERY_DELTA
        ))
        .body(Body::empty())
        .unwrap();
        request.extensions_mut().insert(peer.clone());
        router(state.clone()).oneshot(request).await.unwrap()
    }

    #[tokio::test]
    async fn a_delta_stream_sends_a_whole_line_then_deltas_that_rebuild_the_new_snapshot() {
        use crate::snapshot::decode_snapshot;
        use crate::snapshot::delta::{DELTA_PREFIX, DeltaLine};
        let (state, index) = server(StreamLimits::default());
        index.send_replace(Arc::new(MeshIndex::build(&bigger_mesh(false))));
        let mut stream = Stream::of(open_delta(&state, &web_1(), "web-1").await);
        let first = stream.next_line().await;
        assert!(!first.starts_with(DELTA_PREFIX), "the first line is whole");
        let running = decode_snapshot(first.trim_ascii_end()).unwrap();
        let mut old = Stream::of(open(&state, Some(&web_1()), "web-1").await);
        assert_eq!(old.next_version().await, running.version);

        let changed = Arc::new(MeshIndex::build(&bigger_mesh(true)));
        let (version, whole) = changed.snapshot_for("pets", "web-1").unwrap();
        assert_ne!(version, running.version);
        index.send_replace(changed);
        let line = stream.next_line().await;
        assert!(
            line.starts_with(DELTA_PREFIX),
            "{}",
            String::from_utf8_lossy(&line)
        );
        assert!(
            line.len() * 4 < whole.len(),
            "delta {} bytes, whole {}",
            line.len(),
            whole.len()
        );
        let delta = serde_json::from_slice::<DeltaLine>(&line).unwrap().delta;
        assert_eq!(delta.base, running.version);
        let rebuilt = delta.rebuild(Some(&running)).unwrap();
        rebuilt.validate().unwrap();
        assert_eq!(
            serde_json::to_value(&rebuilt).unwrap(),
            serde_json::to_value(decode_snapshot(&whole).unwrap()).unwrap()
        );
        // A proxy of an older revision (no delta parameter) still gets whole lines.
        let line = old.next_line().await;
        assert_eq!(
            decode_snapshot(line.trim_ascii_end()).unwrap().version,
            version
        );

        // Another change on the same stream: a delta onto the version it sent last.
        let third = Arc::new(MeshIndex::build(&bigger_mesh(false)));
        let (v3, whole3) = third.snapshot_for("pets", "web-1").unwrap();
        index.send_replace(third);
        let line = stream.next_line().await;
        let delta = serde_json::from_slice::<DeltaLine>(&line).unwrap().delta;
        assert_eq!(
            (delta.base.as_str(), delta.version()),
            (version.as_str(), v3.as_str())
        );
        assert_eq!(
            serde_json::to_value(delta.rebuild(Some(&rebuilt)).unwrap()).unwrap(),
            serde_json::to_value(decode_snapshot(&whole3).unwrap()).unwrap()
        );
        // The same delta onto anything but its base is refused (the proxy resyncs).
        let delta = serde_json::from_slice::<DeltaLine>(&line).unwrap().delta;
        assert!(delta.rebuild(Some(&running)).is_err());
    }

    /// A stream of pets/web-1 opened with `query` after `pod=`.
    async fn open_with(state: &DiscoveryState, query: &str) -> Stream {
        let mut request =
            Request::get(format!("{}?pod=web-1{query}", contract::PATH_CONFIG_STREAM))
                .body(Body::empty())
                .unwrap();
        request.extensions_mut().insert(web_1());
        Stream::of(router(state.clone()).oneshot(request).await.unwrap())
    }

    #[tokio::test]
    async fn a_proxy_without_the_tls_origination_feature_gets_that_host_failing_closed() {
        use crate::snapshot::compat::Features;
        use crate::snapshot::{ClientTls, decode_snapshot};
        let (state, index) = server(StreamLimits::default());
        let mut v = mesh();
        v.destination_rules = vec![Arc::new(
            serde_json::from_value(serde_json::json!({
                "apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
                "metadata": {"namespace": "pets", "name": "legacy",
                             "creationTimestamp": "2026-01-01T00:00:00Z"},
                "spec": {"host": "legacy", "trafficPolicy": {"tls": {"mode": "SIMPLE"}}}
            }))
            .unwrap(),
        )];
        index.send_replace(Arc::new(MeshIndex::build(&v)));
        let legacy = |line: &[u8]| {
            decode_snapshot(line.trim_ascii_end())
                .unwrap()
                .outbound
                .services
                .into_iter()
                .find(|s| s.name == "legacy.pets.svc.cluster.local")
                .expect("legacy in the snapshot")
        };
        // A current proxy announces its features and gets the rule as it is.
        let features = format!("&features={}", Features::all().query_value());
        let current = legacy(&open_with(&state, &features).await.next_line().await);
        assert_eq!(current.tls, Some(ClientTls::Simple));
        assert!(!current.endpoints.is_empty());
        // An older one (no features) gets the host answering 503, with no endpoint to reach
        // in plaintext, and nothing it cannot decode.
        let line = open_with(&state, "").await.next_line().await;
        let text = String::from_utf8_lossy(&line);
        assert!(!text.contains("\"SIMPLE\""), "{text}");
        let lowered = legacy(&line);
        assert_eq!(lowered.tls, None);
        assert!(lowered.endpoints.is_empty());
        let answer = lowered.http[0].actions.direct_response.clone().unwrap();
        assert_eq!(answer.status, 503);
        // proxy-status names it for that stream only.
        let records = state.proxies("test").proxies;
        let notes: Vec<&Vec<String>> = records.iter().map(|p| &p.lowered).collect();
        assert_eq!(
            notes.iter().filter(|n| !n.is_empty()).count(),
            1,
            "{notes:?}"
        );
        assert!(
            notes.iter().any(|n| n
                .iter()
                .any(|l| l.contains("legacy.pets.svc.cluster.local"))),
            "{notes:?}"
        );
    }

    #[tokio::test]
    async fn every_refusal_of_authorize_is_a_refusal_naming_why() {
        let (mut state, _index) = server(StreamLimits::default());
        // The unknown pods would otherwise wait 5 s each for the caches.
        state.pod_wait = Duration::from_millis(50);
        let cases: [(Option<PeerCert>, &str, StatusCode, &str); 10] = [
            (
                None,
                "web-1",
                StatusCode::UNAUTHORIZED,
                "client certificate",
            ),
            (
                Some(PeerCert {
                    spiffe_id: Some("spiffe://other.example/ns/pets/sa/web".into()),
                    ..Default::default()
                }),
                "web-1",
                StatusCode::FORBIDDEN,
                "not a workload identity of trust domain cluster.local",
            ),
            (
                Some(web_1()),
                "Web-1/../db-1",
                StatusCode::BAD_REQUEST,
                "pod's name",
            ),
            // Wrong pod for the identity: db-1 runs as db.
            (
                Some(connection_from("pets", "web", DB_1)),
                "db-1",
                StatusCode::FORBIDDEN,
                "pod pets/db-1 runs as service account db, not web",
            ),
            // Unknown pod.
            (
                Some(web_1()),
                "web-9",
                StatusCode::NOT_FOUND,
                "pod pets/web-9 is not a meshed pod",
            ),
            // A pod of another namespace: shop's web identity cannot name pets' pods...
            (
                Some(connection_from("shop", "web", SHOP_WEB_1)),
                "web-2",
                StatusCode::NOT_FOUND,
                "pod shop/web-2 is not a meshed pod",
            ),
            // ...nor pets' web identity shop's web-1 (same names, other namespace).
            (
                Some(connection_from("pets", "db", WEB_1)),
                "web-1",
                StatusCode::FORBIDDEN,
                "pod pets/web-1 runs as service account web, not db",
            ),
            // A sibling pod: web-2 holds the same identity's certificate, but its connection
            // comes from web-2's address, not web-1's...
            (
                Some(connection_from("pets", "web", WEB_2)),
                "web-1",
                StatusCode::FORBIDDEN,
                "this connection comes from 198.18.1.5, which is not an address of pod pets/web-1",
            ),
            // ...nor from anywhere else (a stolen certificate used off the pod)...
            (
                Some(connection_from("pets", "web", "127.0.0.1")),
                "web-1",
                StatusCode::FORBIDDEN,
                "comes from 127.0.0.1, which is not an address of pod pets/web-1",
            ),
            // ...and a connection whose address is not known is not believed either.
            (
                Some(PeerCert {
                    address: None,
                    ..web_1()
                }),
                "web-1",
                StatusCode::FORBIDDEN,
                "comes from an unknown address",
            ),
        ];
        for (peer, pod, status, why) in cases {
            let (got, body) = refusal(open(&state, peer.as_ref(), pod).await).await;
            assert_eq!(
                (got, body.contains(why)),
                (status, true),
                "stream {pod}: {body}"
            );
            // The ack route asks the same questions (a connection without a certificate is
            // refused before anything else).
            let peer = peer.unwrap_or_default();
            let (got, body) = post_ack(&state, &peer, &ack(pod, Some("sha256:x"), None)).await;
            assert_eq!(
                (got, body.contains(why)),
                (status, true),
                "ack {pod}: {body}"
            );
        }
        assert!(state.proxies("test").proxies.is_empty(), "no stream opened");

        // From the pod's own address the same certificate is served; an IPv4 address seen
        // on a dual-stack listener (IPv4-mapped IPv6) is the same address.
        for from in [WEB_1, "::ffff:198.18.1.2"] {
            let response = open(&state, Some(&connection_from("pets", "web", from)), "web-1").await;
            assert_eq!(response.status(), StatusCode::OK, "from {from}");
        }
    }

    #[tokio::test]
    async fn a_stream_waits_for_its_pods_address_and_binding_can_be_turned_off() {
        // web-1 is in the caches without an address yet (the kubelet has not reported it).
        let mut early = mesh();
        let first = early.pods.remove(0);
        let mut no_ip: Pod = (*first).clone();
        if let Some(status) = no_ip.status.as_mut() {
            status.pod_ip = None;
            status.pod_ips = None;
        }
        early.pods.insert(0, Arc::new(no_ip));
        let (state, index) = server(StreamLimits::default());
        index.send_replace(Arc::new(MeshIndex::build(&early)));
        assert!(state.index().pod_addresses("pets", "web-1").is_empty());
        let opening = tokio::spawn({
            let state = state.clone();
            async move { open(&state, Some(&web_1()), "web-1").await }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        index.send_replace(Arc::new(MeshIndex::build(&mesh())));
        let response = opening.await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);

        // With the binding off (proxies behind source NAT), any address of a pod's own
        // identity is served, as before the binding.
        let (state, _index) = server(StreamLimits::default());
        let state = state.with_pod_address_binding(false);
        let sibling = connection_from("pets", "web", WEB_2);
        let response = open(&state, Some(&sibling), "web-1").await;
        assert_eq!(response.status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn an_ack_counts_only_on_its_streams_connection_and_for_versions_it_sent() {
        let (state, index) = server(StreamLimits::default());
        let web_1 = web_1();
        let mut stream = Stream::of(open(&state, Some(&web_1), "web-1").await);
        let v1 = stream.next_version().await;
        assert_eq!(acked(&state, "web-1"), vec![(None, None)]);

        // The proxy acks on its stream's connection what the stream sent it.
        let ok = (StatusCode::NO_CONTENT, String::new());
        assert_eq!(
            post_ack(&state, &web_1, &ack("web-1", Some(&v1), None)).await,
            ok
        );
        assert_eq!(acked(&state, "web-1"), vec![(Some(v1.clone()), None)]);

        // A version never sent is refused and changes nothing.
        let (status, body) =
            post_ack(&state, &web_1, &ack("web-1", Some("sha256:made-up"), None)).await;
        assert_eq!(status, StatusCode::CONFLICT, "{body}");
        assert!(body.contains("sha256:made-up was not sent"), "{body}");
        let (status, _) =
            post_ack(&state, &web_1, &ack("web-1", None, Some("sha256:made-up"))).await;
        assert_eq!(status, StatusCode::CONFLICT);
        assert_eq!(acked(&state, "web-1"), vec![(Some(v1.clone()), None)]);

        // web-2 runs as the same identity, on its own connection from its own address: it
        // cannot ack web-1's stream, even with the version web-1 was sent...
        let web_2 = connection_from("pets", "web", WEB_2);
        let _web_2_stream = Stream::of(open(&state, Some(&web_2), "web-2").await);
        let (status, body) = post_ack(&state, &web_2, &ack("web-1", None, Some(&v1))).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
        assert!(body.contains("not an address of pod pets/web-1"), "{body}");
        // ...and web-1's connection cannot ack web-2's stream.
        let (status, _) = post_ack(&state, &web_1, &ack("web-2", Some(&v1), None)).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        // Another connection from web-1's own address holds no stream: refused too.
        let other = connection_from("pets", "web", WEB_1);
        let (status, body) = post_ack(&state, &other, &ack("web-1", Some(&v1), None)).await;
        assert_eq!(status, StatusCode::CONFLICT, "{body}");
        assert!(
            body.contains("no config stream of pod pets/web-1"),
            "{body}"
        );
        assert_eq!(acked(&state, "web-1"), vec![(Some(v1.clone()), None)]);
        assert_eq!(acked(&state, "web-2"), vec![(None, None)]);

        // A new snapshot the proxy rejects: it reports the one it still runs, sent earlier on
        // this stream.
        let mut changed = mesh();
        changed
            .services
            .push(service("pets", "api", "198.19.0.22", "http"));
        index.send_replace(Arc::new(MeshIndex::build(&changed)));
        let v2 = stream.next_version().await;
        assert_ne!(v1, v2);
        assert_eq!(
            post_ack(&state, &web_1, &ack("web-1", Some(&v1), Some(&v2))).await,
            ok
        );
        assert_eq!(
            acked(&state, "web-1"),
            vec![(Some(v1.clone()), Some(v2.clone()))]
        );

        // On a new stream (a reconnect), a version the old stream sent but this one did not
        // is not believed as the one the proxy runs; the rejection of what it was sent is.
        drop(stream);
        let reconnected = connection_from("pets", "web", WEB_1);
        let mut stream = Stream::of(open(&state, Some(&reconnected), "web-1").await);
        assert_eq!(stream.next_version().await, v2);
        assert_eq!(
            post_ack(&state, &reconnected, &ack("web-1", Some(&v1), Some(&v2))).await,
            ok
        );
        tokio::time::timeout(Duration::from_secs(5), async {
            while acked(&state, "web-1").len() > 1 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the closed stream's record goes");
        assert_eq!(acked(&state, "web-1"), vec![(None, Some(v2.clone()))]);
        let (status, _) = post_ack(&state, &reconnected, &ack("web-1", Some(&v1), None)).await;
        assert_eq!(status, StatusCode::CONFLICT);
    }

    #[tokio::test]
    async fn open_streams_are_capped_per_pod_and_per_identity() {
        let (state, _index) = server(StreamLimits {
            per_identity: 3,
            per_pod: 2,
        });
        let web = web_1();
        let first = Stream::of(open(&state, Some(&web), "web-1").await);
        let _second = Stream::of(open(&state, Some(&web), "web-1").await);
        let refused = open(&state, Some(&web), "web-1").await;
        assert_eq!(
            refused
                .headers()
                .get(header::RETRY_AFTER)
                .map(|v| v.as_bytes()),
            Some(&b"5"[..])
        );
        let (status, body) = refusal(refused).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
        assert!(
            body.contains("pod pets/web-1 already holds 2 open config streams")
                && body.contains("--config-streams-per-pod"),
            "{body}"
        );

        // The identity's third stream, for its other pod, is its last.
        let web_2 = connection_from("pets", "web", WEB_2);
        let _third = Stream::of(open(&state, Some(&web_2), "web-2").await);
        let (status, body) = refusal(open(&state, Some(&web_2), "web-2").await).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
        assert!(
            body.contains("identity spiffe://cluster.local/ns/pets/sa/web already holds 3")
                && body.contains("--config-streams-per-identity"),
            "{body}"
        );
        // Other identities are not affected.
        let _db =
            Stream::of(open(&state, Some(&connection_from("pets", "db", DB_1)), "db-1").await);
        assert_eq!(state.proxies("test").proxies.len(), 4);

        // A proxy that goes away gives its slot back at once (no heartbeat needed).
        drop(first);
        let reopened = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                let r = open(&state, Some(&web_2), "web-2").await;
                if r.status() == StatusCode::OK {
                    return Stream::of(r);
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the slot comes back when the stream closes");
        drop(reopened);
    }

    #[test]
    fn a_connection_id_equals_only_its_own_clones() {
        let a = ConnectionId::new();
        assert_eq!(a, a.clone());
        assert_ne!(a, ConnectionId::new());
        assert_ne!(ConnectionId::default(), ConnectionId::default());
    }
}
