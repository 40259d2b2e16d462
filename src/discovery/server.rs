//! The config server (SPEC §8): reflectors keep the objects snapshots are made from, a
//! debounce loop rebuilds the shared [`MeshIndex`] at most every [`DEBOUNCE`], and every
//! connected proxy's stream task sends its own snapshot when its version changes.
//! [`DiscoveryState::start`] wires the reflectors; [`DiscoveryState::from_index`] takes the
//! index from a `watch` channel instead (no Kubernetes), as the convergence benchmark does.
//!
//! Routes on the discovery port (15012, TLS, client certificate optional there because the
//! CSR endpoint shares it; these two routes require it):
//! - `GET /v1/config/stream?pod=<name>`: the snapshot stream ([`crate::snapshot::stream`]).
//! - `POST /v1/config/ack`: the proxy's acknowledgement.
//!
//! On the monitoring port: `GET /debug/proxies`, this replica's connected proxies with the
//! version sent, the version acknowledged and the version current now (`weft proxy-status`
//! merges the answers of every replica).

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Extension, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::{SinkExt, StreamExt};
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
    AuthorizationPolicy, DestinationRule, MeshConfig, PeerAuthentication, VirtualService,
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

/// The identity a TLS connection proved with its client certificate (set per connection by
/// the operator's TLS server).
#[derive(Debug, Clone, Default)]
pub struct PeerCert {
    pub spiffe_id: Option<String>,
    /// NotAfter of the client certificate, RFC 3339.
    pub expires: Option<String>,
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
    streams: Mutex<HashMap<u64, ProxyRecord>>,
    metrics: Arc<OperatorMetrics>,
}

impl Registry {
    fn update(&self, id: u64, f: impl FnOnce(&mut ProxyRecord)) {
        if let Ok(mut m) = self.streams.lock()
            && let Some(r) = m.get_mut(&id)
        {
            f(r);
        }
    }
}

/// Removes a stream's record when its task ends (the proxy went away).
struct Registered(Arc<Registry>, u64);

impl Drop for Registered {
    fn drop(&mut self) {
        if let Ok(mut m) = self.0.streams.lock() {
            m.remove(&self.1);
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
            );
            loop {
                let view = MeshView {
                    pods: pods.state(),
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
        }
    }

    /// True once the first index from full caches is built.
    pub fn is_synced(&self) -> bool {
        *self.synced.borrow()
    }

    /// The current index (for `weft describe pod` style questions and tests).
    pub fn index(&self) -> Arc<MeshIndex> {
        self.index.borrow().clone()
    }

    /// This replica's connected proxies, each with the version current now.
    pub fn proxies(&self, instance: &str) -> ProxyList {
        let index = self.index();
        let mut proxies: Vec<ProxyRecord> = self
            .registry
            .streams
            .lock()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default();
        for p in &mut proxies {
            p.current = index
                .snapshot_for(&p.namespace, &p.pod)
                .ok()
                .map(|(v, _)| v);
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
                "DestinationRule" | "VirtualService" => "networking.istio.io/v1",
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
/// service account of `pod`. Waits briefly for a new pod to reach the caches.
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
    let mut index = state.index.clone();
    let found = tokio::time::timeout(POD_WAIT, async {
        loop {
            if let Some(p) = index.borrow_and_update().pod(ns, pod) {
                return Some(p.service_account.clone());
            }
            if index.changed().await.is_err() {
                return None;
            }
        }
    })
    .await
    .ok()
    .flatten();
    match found {
        Some(owner) if owner == sa => Ok((ns.to_string(), pod.to_string())),
        Some(owner) => Err(refuse(
            StatusCode::FORBIDDEN,
            format!("pod {ns}/{pod} runs as service account {owner}, not {sa}"),
        )),
        None => Err(refuse(
            StatusCode::NOT_FOUND,
            format!(
                "pod {ns}/{pod} is not a meshed pod the operator knows (no {} label, or not created yet)",
                contract::LABEL_REVISION
            ),
        )),
    }
}

#[derive(Deserialize)]
struct StreamQuery {
    pod: Option<String>,
}

async fn stream(
    State(state): State<DiscoveryState>,
    peer: Option<Extension<PeerCert>>,
    Query(q): Query<StreamQuery>,
) -> Response {
    let peer = peer.map(|Extension(p)| p).unwrap_or_default();
    let pod = q.pod.unwrap_or_default();
    let (namespace, pod) = match authorize(&state, &peer, &pod).await {
        Ok(who) => who,
        Err(refused) => return refused,
    };
    let index = state.index();
    let Some(meshed) = index.pod(&namespace, &pod) else {
        return refuse(StatusCode::NOT_FOUND, "pod left the caches");
    };
    let id = state.registry.next.fetch_add(1, Ordering::Relaxed);
    // Counted down by `Registered`'s drop, whether or not the record made it into the map.
    state.registry.metrics.connected_proxies.inc();
    if let Ok(mut m) = state.registry.streams.lock() {
        m.insert(
            id,
            ProxyRecord {
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
            },
        );
    }
    let guard = Registered(state.registry.clone(), id);
    let (mut tx, rx) = futures::channel::mpsc::channel::<Bytes>(1);
    let mut index_rx = state.index.clone();
    tokio::spawn(async move {
        let _guard = guard;
        let mut last: Option<String> = None;
        loop {
            let index = index_rx.borrow_and_update().clone();
            // A pod that left the caches keeps its last config until its proxy stops.
            if let Ok((version, bytes)) = index.snapshot_for(&namespace, &pod)
                && last.as_ref() != Some(&version)
            {
                if tx.send(Bytes::from(encode_line(&bytes))).await.is_err() {
                    return;
                }
                guard_sent(&_guard, &version);
                last = Some(version);
            }
            tokio::select! {
                changed = index_rx.changed() => if changed.is_err() { return },
                _ = tokio::time::sleep(HEARTBEAT) => {
                    if tx.send(Bytes::from_static(b"\n")).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "application/x-ndjson")
        .header(header::CACHE_CONTROL, "no-store")
        .body(Body::from_stream(rx.map(Ok::<_, Infallible>)))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

fn guard_sent(guard: &Registered, version: &str) {
    guard.0.metrics.snapshots_sent.inc();
    guard
        .0
        .update(guard.1, |r| r.sent = Some(version.to_string()));
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
    if let Some(r) = &ack.rejected {
        tracing::warn!(%namespace, %pod, version = %r.version, "proxy rejected its config: {}", r.reason);
    }
    if let Ok(mut m) = state.registry.streams.lock() {
        for r in m
            .values_mut()
            .filter(|r| r.namespace == namespace && r.pod == pod)
        {
            r.acked = ack.version.clone();
            r.rejected = ack.rejected.clone();
        }
    }
    StatusCode::NO_CONTENT.into_response()
}

/// `GET /debug/proxies` on the monitoring port.
pub fn debug_router(state: DiscoveryState, instance: String) -> Router {
    Router::new().route(
        contract::PATH_DEBUG_PROXIES,
        get(move || {
            let list = state.proxies(&instance);
            async move { axum::Json(list) }
        }),
    )
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
}
