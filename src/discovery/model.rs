//! From the cluster's objects to each proxy's snapshot (SPEC §8), pure and synchronous.
//!
//! [`MeshIndex::build`] runs once per (debounced) change and does everything that is shared:
//! the effective mTLS modes of every meshed pod, and the outbound service table with each
//! endpoint's identity and mode. [`MeshIndex::snapshot_for`] is then cheap per proxy: its
//! identity and inbound modes, plus a reference to the shared table. The version is a content
//! hash, so every operator replica names the same config the same way.
//!
//! What a proxy gets: its own inbound modes, and every Service with a ClusterIP (any of them
//! may be dialled; Istio sends the same without a `Sidecar` resource), plus the endpoints of
//! headless Services (dialled by pod IP, they get auto-mTLS like any endpoint). Its inbound
//! side names the Services that target each of its ports, for `destination_service`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::{Pod, Service as KubeService};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::core::PartialObjectMeta;
use serde::Serialize;
use serde_json::value::RawValue;

use super::authz::{AuthzIndex, SmiObjects, Workload};
use super::policy::{Effective, Policies, PolicyProblem};
use super::status::{self, ObjectKey, Verdict};
use crate::api::smi::{HTTPRouteGroup, TCPRoute, TrafficSplit, TrafficTarget};
use crate::api::{
    AuthorizationPolicy, DestinationRule, MeshConfig, PeerAuthentication, ServiceEntry,
    VirtualService,
    meshconfig::{AccessLogFormat as ApiAccessLogFormat, OutboundTrafficPolicy},
};
use crate::authz::Policy;
use crate::contract;
use crate::snapshot::compat::{self, Features};
use crate::snapshot::{
    AccessLog, AccessLogFormat, DEFAULT_CLUSTER, Endpoint, InboundConfig, KnownPeer, MtlsMode,
    OutboundPolicy, Protocol, SNAPSHOT_SCHEMA_VERSION, Service, WorkloadMeta,
    delta::{self, Piece},
};

/// Everything the config server reads, as the reflectors hold it.
#[derive(Default, Clone)]
pub struct MeshView {
    pub trust_domain: String,
    /// Namespace of mesh-wide PeerAuthentications (`--root-namespace`).
    pub root_namespace: String,
    /// DNS suffix of Service names (`cluster.local`).
    pub cluster_domain: String,
    pub pods: Vec<Arc<Pod>>,
    /// Pods without a proxy, metadata only ([`crate::kube::reflect::unmeshed_pods`]): they
    /// only give their endpoints workload metadata, as Istio's endpoint metadata does.
    pub unmeshed_pods: Vec<Arc<PartialObjectMeta<Pod>>>,
    pub services: Vec<Arc<KubeService>>,
    pub slices: Vec<Arc<EndpointSlice>>,
    pub revisions: Vec<Arc<MeshConfig>>,
    pub peer_authentications: Vec<Arc<PeerAuthentication>>,
    pub authorization_policies: Vec<Arc<AuthorizationPolicy>>,
    pub traffic_targets: Vec<Arc<TrafficTarget>>,
    pub http_route_groups: Vec<Arc<HTTPRouteGroup>>,
    pub tcp_routes: Vec<Arc<TCPRoute>>,
    pub destination_rules: Vec<Arc<DestinationRule>>,
    pub virtual_services: Vec<Arc<VirtualService>>,
    pub traffic_splits: Vec<Arc<TrafficSplit>>,
    /// Gateway API routes; those with a Service parent are GAMMA routes ([`super::gamma`]).
    pub http_routes: Vec<Arc<crate::api::gateway_api::HTTPRoute>>,
    pub grpc_routes: Vec<Arc<crate::api::gateway_api::GRPCRoute>>,
    /// Gateway API TLSRoutes and TCPRoutes: a Gateway's TLS and TCP listeners only
    /// ([`super::gateway_api`]; `tcp_routes` above are SMI's).
    pub tls_routes: Vec<Arc<crate::api::gateway_api::TLSRoute>>,
    pub gateway_tcp_routes: Vec<Arc<crate::api::gateway_api::TCPRoute>>,
    /// Istio's ServiceEntries: the declared external services ([`super::egress`]).
    pub service_entries: Vec<Arc<ServiceEntry>>,
    /// Istio Gateways: the listeners of gateway pods ([`crate::route::gateway`]).
    pub istio_gateways: Vec<Arc<crate::api::Gateway>>,
    /// `kubernetes.io/tls` Secrets, trimmed to their keys: gateway `credentialName`s.
    pub tls_secrets: Vec<Arc<k8s_openapi::api::core::v1::Secret>>,
    /// Gateway API Gateways and GatewayClasses ([`super::gateway_api`]).
    pub gateway_api_gateways: Vec<Arc<crate::api::gateway_api::Gateway>>,
    pub gateway_classes: Vec<Arc<crate::api::gateway_api::GatewayClass>>,
    /// Namespaces: their labels, for a Gateway listener's `allowedRoutes` `Selector`.
    pub namespaces: Vec<Arc<k8s_openapi::api::core::v1::Namespace>>,
    /// Gateway API ReferenceGrants: a Gateway's Secret or a route's backend in another
    /// namespace ([`super::gateway_api`]).
    pub reference_grants: Vec<Arc<crate::api::gateway_api::ReferenceGrant>>,
}

/// A meshed pod, as its proxy and `weft describe pod` see it.
#[derive(Debug, Clone)]
pub struct MeshedPod {
    pub namespace: String,
    pub name: String,
    pub service_account: String,
    pub revision: String,
    pub identity: String,
    pub workload: WorkloadMeta,
    pub modes: Effective,
    /// Container ports, for per-port explanations.
    pub ports: Vec<u16>,
    /// Container port -> hosts of the Services whose ready endpoints include this pod.
    pub services: BTreeMap<u16, Vec<String>>,
    /// Container port -> HTTP where a Service targeting it declares HTTP.
    pub protocols: BTreeMap<u16, Protocol>,
    /// The AuthorizationPolicies that select this pod, compiled, in evaluation order.
    pub authz: Vec<Policy>,
    /// A gateway pod's listeners ([`super::routes::is_gateway_pod`]); none for sidecars.
    pub gateway: Option<crate::route::gateway::GatewayConfig>,
}

/// The shared part of every snapshot, computed once per change.
pub struct MeshIndex {
    pub trust_domain: String,
    pods: HashMap<(String, String), MeshedPod>,
    /// ClusterIP Services, and headless ones; each serialized once and embedded as is in
    /// every snapshot (the tables are most of a snapshot).
    services: Table,
    headless: Table,
    /// Outbound policy per revision name.
    policies: HashMap<String, OutboundPolicy>,
    /// Access log settings per revision name, for revisions with `accessLog.enabled: true`.
    access_logs: HashMap<String, AccessLog>,
    /// Every meshed workload and its identity (`ProxySnapshot::peers`), serialized.
    peers: Option<RawList>,
    /// Hash of both tables and the peers, folded into every version.
    services_hash: [u8; 32],
    pub problems: Vec<PolicyProblem>,
    /// Host -> the DestinationRule whose TLS mode its Service entry carries (for `weft check`).
    pub tls_rules: BTreeMap<String, String>,
    /// Proxy namespace -> the `credentialName` Secrets its DestinationRules name for TLS
    /// origination (SIMPLE/MUTUAL), carried only in that namespace's proxies' snapshots.
    credentials: BTreeMap<String, BTreeMap<String, crate::snapshot::TlsCredential>>,
    /// The DestinationRules each client's proxy applies per host: shared, and per client
    /// namespace where they differ ([`super::routes::Applied::client_rules`]).
    pub rules: super::routes::RulesByHost,
    pub client_rules: BTreeMap<String, super::routes::RulesByHost>,
    /// The `WeftAccepted` condition each Istio policy and route should carry.
    verdicts: BTreeMap<ObjectKey, Verdict>,
    /// The `status.parents` each GAMMA route should carry ([`super::gamma_status`]).
    gamma: Vec<crate::route::gamma::RouteStatus>,
    /// Gateway API classes and Gateways weft implements ([`super::gateway_api_deploy`]).
    gateway_api: super::gateway_api::GatewayApi,
    /// The addresses of each meshed pod (status.podIPs), which its proxy's config stream must
    /// come from (see `discovery::server`).
    addresses: HashMap<(String, String), Vec<IpAddr>>,
    /// The ServiceEntries, compiled: each proxy's egress table.
    egress: super::egress::EgressIndex,
    /// Per meshed pod, its own service tables when its namespace sees other routes
    /// (`exportTo`, the DestinationRule lookup) or some route names `sourceLabels` /
    /// `sourceNamespace` ([`crate::route::source`]); pods with the same answer share one.
    /// Empty otherwise.
    source_variants: HashMap<(String, String), Arc<SourceVariant>>,
}

/// The service tables of the client pods of one namespace's tables and one answer to the
/// `sourceLabels` / `sourceNamespace` selectors.
struct SourceVariant {
    services: Table,
    headless: Table,
    /// As `MeshIndex::services_hash`, of these tables.
    hash: [u8; 32],
}

/// Each meshed pod's tables when they are not the shared ones: its namespace's own tables
/// (`namespaced`: `exportTo`, Istio's DestinationRule lookup), and routes (matches) naming
/// other pods (`sourceLabels`, `sourceNamespace`) left out. Computed once per distinct
/// (namespace tables, answer to the selectors), not per pod.
fn source_variants(
    services: &Table,
    headless: &Table,
    namespaced: &HashMap<String, (Table, Table)>,
    pod_labels: &HashMap<(String, String), BTreeMap<String, String>>,
    peers_hash: &[u8],
) -> HashMap<(String, String), Arc<SourceVariant>> {
    use crate::route::source::{selectors, service_for, signature};
    let every = namespaced
        .values()
        .flat_map(|(s, h)| s.typed.iter().chain(&h.typed));
    let chosen = selectors(services.typed.iter().chain(&headless.typed).chain(every));
    if chosen.is_empty() && namespaced.is_empty() {
        return HashMap::new();
    }
    let mut by_signature: HashMap<(Option<&str>, Vec<bool>), Arc<SourceVariant>> = HashMap::new();
    let mut out = HashMap::new();
    for (key, labels) in pod_labels {
        let own = namespaced.get_key_value(&key.0);
        if own.is_none() && chosen.is_empty() {
            continue;
        }
        let (base_services, base_headless) = own.map_or((services, headless), |(_, (s, h))| (s, h));
        let variant = by_signature
            .entry((
                own.map(|(ns, _)| ns.as_str()),
                signature(&chosen, &key.0, labels),
            ))
            .or_insert_with(|| {
                let of = |t: &Table| {
                    Table::new(
                        t.typed
                            .iter()
                            .map(|s| service_for(s, &key.0, labels))
                            .collect(),
                    )
                };
                let (services, headless) = (of(base_services), of(base_headless));
                let mut material = services.hash().to_vec();
                material.extend_from_slice(&headless.hash());
                material.extend_from_slice(peers_hash);
                Arc::new(SourceVariant {
                    hash: sha256(&material),
                    services,
                    headless,
                })
            })
            .clone();
        out.insert(key.clone(), variant);
    }
    out
}

/// Why no snapshot can be made for a pod.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoSnapshot {
    #[error(
        "pod {0}/{1} is not a meshed pod the operator knows (not created yet, deleted, or without the weft.dev/revision label)"
    )]
    UnknownPod(String, String),
}

fn pod_key(pod: &Pod) -> Option<(String, String)> {
    Some((pod.metadata.namespace.clone()?, pod.metadata.name.clone()?))
}

/// A pod's IPs as the API server reports them (dual-stack pods have two).
fn pod_addresses(pod: &Pod) -> Vec<IpAddr> {
    let Some(status) = pod.status.as_ref() else {
        return Vec::new();
    };
    let listed = status.pod_ips.iter().flatten().map(|p| p.ip.as_str());
    let mut ips: Vec<IpAddr> = listed
        .chain(status.pod_ip.as_deref())
        .filter_map(|ip| ip.parse().ok())
        .collect();
    ips.sort();
    ips.dedup();
    ips
}

fn labels_of(pod: &Pod) -> BTreeMap<String, String> {
    pod.metadata.labels.clone().unwrap_or_default()
}

impl MeshIndex {
    pub fn build(view: &MeshView) -> MeshIndex {
        let policies = Policies::new(&view.root_namespace, &view.peer_authentications);
        let revisions: HashMap<String, &MeshConfig> = view
            .revisions
            .iter()
            .filter_map(|r| Some((r.metadata.name.clone()?, r.as_ref())))
            .collect();
        let revision_mode = |rev: &str| -> Option<MtlsMode> {
            let mode = revisions.get(rev)?.spec.mtls.as_ref()?.mode?;
            Some(match mode {
                crate::api::MtlsMode::Permissive => MtlsMode::Permissive,
                crate::api::MtlsMode::Strict => MtlsMode::Strict,
                crate::api::MtlsMode::Disable => MtlsMode::Disable,
            })
        };

        // Meshed pods: the injector labels them with their revision.
        let mut pods = HashMap::new();
        let mut pod_labels = HashMap::new();
        let mut addresses = HashMap::new();
        let mut gateway_pods = HashSet::new();
        for pod in &view.pods {
            let Some(key) = pod_key(pod) else { continue };
            let labels = labels_of(pod);
            let Some(revision) = labels.get(contract::LABEL_REVISION).cloned() else {
                continue;
            };
            addresses.insert(key.clone(), pod_addresses(pod));
            if super::routes::is_gateway_pod(pod) {
                gateway_pods.insert(key.clone());
            }
            let spec = pod.spec.as_ref();
            let service_account = spec
                .and_then(|s| s.service_account_name.clone())
                .unwrap_or_else(|| "default".into());
            // A gateway's ports take what its listeners serve, plaintext here: PeerAuthentication
            // governs sidecars' inbound only (as in Istio), so a meshed client calls a gateway
            // without mTLS unless a DestinationRule says otherwise.
            let modes = if super::routes::is_gateway_pod(pod) {
                Effective {
                    default_mode: MtlsMode::Disable,
                    source: "gateway pod: its listeners accept plaintext (PeerAuthentication applies to sidecars)".into(),
                    // An ISTIO_MUTUAL server's port takes only mesh mTLS (egress-gw hunk).
                    ports: super::routes::mesh_mtls_ports(view, &labels)
                        .into_iter()
                        .map(|p| {
                            let why = "gateway server tls.mode ISTIO_MUTUAL".to_string();
                            (p, (MtlsMode::Strict, why))
                        })
                        .collect(),
                }
            } else {
                policies.effective(
                    &key.0,
                    &labels,
                    Some((revision.as_str(), revision_mode(&revision))),
                )
            };
            let ports = spec
                .map(|s| {
                    s.containers
                        .iter()
                        .flat_map(|c| c.ports.iter().flatten())
                        .filter_map(|p| u16::try_from(p.container_port).ok())
                        .collect()
                })
                .unwrap_or_default();
            // App, version and the canonical service from the pod's labels as Istio reads
            // them; one cluster, named as Istio names it by default.
            // The workload is what created the pod (a Deployment's name), as Istio names it.
            let workload = WorkloadMeta::from_labels(
                &crate::kube::workload::workload_name(pod),
                &key.0,
                &labels,
                DEFAULT_CLUSTER,
            );
            let entry = MeshedPod {
                identity: contract::spiffe_id(&view.trust_domain, &key.0, &service_account),
                namespace: key.0.clone(),
                name: key.1.clone(),
                service_account,
                revision,
                workload,
                modes,
                ports,
                services: BTreeMap::new(),
                protocols: BTreeMap::new(),
                authz: Vec::new(),
                gateway: None,
            };
            pod_labels.insert(key.clone(), labels);
            pods.insert(key, entry);
        }

        let unmeshed = unmeshed_workloads(view);
        let (mut services, mut headless) = service_tables(view, &mut pods, &unmeshed);
        let mut routed = super::routes::apply(view, &mut services, &mut headless);
        for (key, config) in std::mem::take(&mut routed.gateways) {
            if let Some(pod) = pods.get_mut(&key) {
                pod.gateway = Some(config);
            }
        }
        let mut egress = super::egress::EgressIndex::build(view, &pods);
        let authz = AuthzIndex::new(
            &view.root_namespace,
            &view.authorization_policies,
            SmiObjects {
                traffic_targets: &view.traffic_targets,
                http_route_groups: &view.http_route_groups,
                tcp_routes: &view.tcp_routes,
            },
        );
        let restrictive: HashMap<&str, bool> = revisions
            .iter()
            .map(|(name, mc)| {
                let mode = mc.spec.traffic.as_ref();
                let permissive = mode.and_then(|t| t.enable_permissive_traffic_policy_mode);
                (name.as_str(), permissive == Some(false))
            })
            .collect();
        for (key, pod) in pods.iter_mut() {
            // The Services of the pod's namespace whose endpoints it is (`name.ns.svc.…`).
            let mut names: Vec<&str> = pod
                .services
                .values()
                .flatten()
                .filter_map(|host| host.split('.').next())
                .collect();
            names.sort_unstable();
            names.dedup();
            let labels = pod_labels.get(key).cloned().unwrap_or_default();
            // OSM's restrictive mode governs calls between mesh workloads' service accounts;
            // a gateway's callers (clients outside the mesh) have none a TrafficTarget could
            // name, so a gateway pod is not under it (else an ingress gateway of a restrictive
            // revision would refuse every request). Its AuthorizationPolicies still apply.
            let restrictive_revision = (!gateway_pods.contains(key)
                && restrictive
                    .get(pod.revision.as_str())
                    .copied()
                    .unwrap_or_default())
            .then_some(pod.revision.as_str());
            pod.authz = authz.for_pod(&Workload {
                namespace: &key.0,
                labels: &labels,
                services: &names,
                service_account: &pod.service_account,
                restrictive_revision,
            });
        }
        let (services, headless) = (Table::new(services), Table::new(headless));
        // Every meshed workload once, with its identity, sorted: what proxies check a peer's
        // metadata against (proxy::peer_meta::vouched). Serialized once, like the tables.
        let mut known: Vec<KnownPeer> = pods
            .values()
            .map(|p| KnownPeer {
                identity: p.identity.clone(),
                workload: p.workload.clone(),
            })
            .collect();
        known.sort();
        known.dedup();
        let peers = RawList::new(&known);
        let mut material = services.hash().to_vec();
        material.extend_from_slice(&headless.hash());
        let peers_hash = peers.as_ref().map(|p| p.hash.to_vec()).unwrap_or_default();
        material.extend_from_slice(&peers_hash);
        let services_hash = sha256(&material);
        let namespaced: HashMap<String, (Table, Table)> = std::mem::take(&mut routed.namespaces)
            .into_iter()
            .map(|(ns, (s, h))| (ns, (Table::new(s), Table::new(h))))
            .collect();
        let source_variants =
            source_variants(&services, &headless, &namespaced, &pod_labels, &peers_hash);
        let policies_by_rev = revisions
            .iter()
            .map(|(name, mc)| {
                let policy = match mc
                    .spec
                    .traffic
                    .as_ref()
                    .and_then(|t| t.outbound_traffic_policy)
                {
                    Some(OutboundTrafficPolicy::RegistryOnly) => OutboundPolicy::RegistryOnly,
                    _ => OutboundPolicy::AllowAny,
                };
                (name.clone(), policy)
            })
            .collect();
        let access_logs = revisions
            .iter()
            .filter_map(|(name, mc)| {
                let settings = mc.spec.access_log.as_ref()?;
                // Off unless asked for (the API's default), json unless text is asked for.
                (settings.enabled == Some(true)).then(|| {
                    let format = match settings.format {
                        Some(ApiAccessLogFormat::Text) => AccessLogFormat::Text,
                        Some(ApiAccessLogFormat::Json) | None => AccessLogFormat::Json,
                    };
                    (name.clone(), AccessLog { format })
                })
            })
            .collect();
        MeshIndex {
            trust_domain: view.trust_domain.clone(),
            pods,
            services,
            headless,
            policies: policies_by_rev,
            access_logs,
            peers,
            services_hash,
            problems: policies
                .problems
                .into_iter()
                .chain(authz.problems)
                .chain(routed.problems)
                .chain(std::mem::take(&mut egress.problems))
                .collect(),
            tls_rules: routed.tls_rules,
            credentials: routed.credentials,
            rules: routed.rules,
            client_rules: routed.client_rules,
            gamma: routed.gamma,
            gateway_api: routed.gateway_api,
            verdicts: BTreeMap::new(),
            addresses,
            egress,
            source_variants,
        }
        .with_verdicts(view)
    }

    /// The addresses `status.podIPs` (or `podIP`) gives meshed pod `namespace/name`; empty
    /// until the kubelet has reported them.
    pub fn pod_addresses(&self, namespace: &str, name: &str) -> &[IpAddr] {
        self.addresses
            .get(&(namespace.to_string(), name.to_string()))
            .map_or(&[], Vec::as_slice)
    }

    /// What each GAMMA route's `status.parents` should say.
    pub fn gamma_statuses(&self) -> &[crate::route::gamma::RouteStatus] {
        &self.gamma
    }

    /// The Gateway API classes and Gateways weft implements, with their statuses.
    pub fn gateway_api(&self) -> &super::gateway_api::GatewayApi {
        &self.gateway_api
    }

    fn with_verdicts(mut self, view: &MeshView) -> Self {
        self.verdicts = status::verdicts(&status::targets(view), &self.problems);
        self
    }

    /// What the `WeftAccepted` condition of each Istio policy and route should say.
    pub fn verdicts(&self) -> &BTreeMap<ObjectKey, Verdict> {
        &self.verdicts
    }

    pub fn pod(&self, namespace: &str, name: &str) -> Option<&MeshedPod> {
        self.pods.get(&(namespace.to_string(), name.to_string()))
    }

    pub fn meshed_pods(&self) -> impl Iterator<Item = &MeshedPod> {
        self.pods.values()
    }

    /// The compiled ServiceEntries (each proxy's egress table).
    pub fn egress(&self) -> &super::egress::EgressIndex {
        &self.egress
    }

    /// The ClusterIP Services (headless ones are only in the snapshots).
    pub fn services(&self) -> &[Service] {
        &self.services.typed
    }

    /// The snapshot of one proxy, serialized, with its version.
    pub fn snapshot_for(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<(String, Vec<u8>), NoSnapshot> {
        let config = self.config_for(namespace, name)?;
        let bytes = config.whole();
        Ok((config.version, bytes))
    }

    /// The config of one proxy in this index, with its version: written whole
    /// ([`ProxyConfig::whole`]) or as a delta of an earlier one ([`ProxyConfig::delta`]).
    pub fn config_for(&self, namespace: &str, name: &str) -> Result<ProxyConfig<'_>, NoSnapshot> {
        let pod = self
            .pod(namespace, name)
            .ok_or_else(|| NoSnapshot::UnknownPod(namespace.into(), name.into()))?;
        let inbound = InboundConfig {
            default_mode: pod.modes.default_mode,
            ports: pod
                .modes
                .ports
                .iter()
                .map(|(port, (mode, _))| (*port, *mode))
                .collect(),
            services: pod.services.clone(),
            protocols: pod.protocols.clone(),
            authz: pod.authz.clone(),
        };
        let policy = self
            .policies
            .get(&pod.revision)
            .copied()
            .unwrap_or_default();
        let access_log = self.access_logs.get(&pod.revision).copied();
        let egress = self.egress.table_for(namespace);
        let credentials = self.credentials.get(namespace);
        let variant = self
            .source_variants
            .get(&(namespace.to_string(), name.to_string()));
        // Version: hash of the per-proxy part (serialized without services) and the table's
        // hash.
        let own = serde_json::to_vec(&(
            &pod.identity,
            &self.trust_domain,
            &pod.workload,
            &inbound,
            policy,
            access_log,
            &egress,
            &pod.gateway,
            credentials,
        ))
        .unwrap_or_default();
        let mut material = own;
        material.extend_from_slice(variant.map_or(&self.services_hash, |v| &v.hash));
        Ok(ProxyConfig {
            peers: self.peers.as_ref(),
            trust_domain: &self.trust_domain,
            pod,
            inbound,
            policy,
            access_log,
            egress,
            credentials,
            services: variant.map_or(&self.services, |v| &v.services),
            headless: variant.map_or(&self.headless, |v| &v.headless),
            version: format!("sha256:{}", hex(&sha256(&material)[..16])),
        })
    }
}

/// One proxy's config in one [`MeshIndex`], borrowing the index's shared tables.
pub struct ProxyConfig<'a> {
    trust_domain: &'a str,
    pod: &'a MeshedPod,
    inbound: InboundConfig,
    policy: OutboundPolicy,
    access_log: Option<AccessLog>,
    egress: Vec<crate::route::egress::ExternalService>,
    credentials: Option<&'a BTreeMap<String, crate::snapshot::TlsCredential>>,
    services: &'a Table,
    headless: &'a Table,
    peers: Option<&'a RawList>,
    /// The content hash every replica computes alike.
    pub version: String,
}

impl ProxyConfig<'_> {
    fn snapshot(&self, with_lists: bool) -> SnapshotRef<'_> {
        let (services, headless, peers) = if with_lists {
            (self.services.as_ref(), self.headless.as_ref(), self.peers)
        } else {
            (ServiceTable::Typed(&[]), ServiceTable::Typed(&[]), None)
        };
        SnapshotRef {
            schema_version: SNAPSHOT_SCHEMA_VERSION,
            version: &self.version,
            identity: &self.pod.identity,
            trust_domain: self.trust_domain,
            workload: &self.pod.workload,
            inbound: &self.inbound,
            outbound: OutboundRef {
                policy: self.policy,
                services,
                headless,
                egress: &self.egress,
            },
            access_log: self.access_log,
            peers,
            gateway: self.pod.gateway.as_ref(),
            credentials: self.credentials,
        }
    }

    /// The whole snapshot, serialized.
    pub fn whole(&self) -> Vec<u8> {
        serde_json::to_vec(&self.snapshot(true)).unwrap_or_default()
    }

    /// For a proxy lacking some of the features this config uses ([`compat`]): the whole
    /// snapshot lowered for it (without origination credentials) and what lowering changed.
    /// None: the proxy reads the config as it is ([`Self::whole`] or [`Self::delta`]).
    pub fn lowered(&self, features: Features) -> Option<(Vec<u8>, Vec<String>)> {
        let services = self.services.for_features(features);
        let headless = self.headless.for_features(features);
        if services.is_none()
            && headless.is_none()
            && !compat::egress_needed(&self.egress).beyond(features)
        {
            return None;
        }
        let mut notes: Vec<String> = [&services, &headless]
            .into_iter()
            .flatten()
            .flat_map(|l| l.notes.iter().cloned())
            .collect();
        let mut egress = self.egress.clone();
        notes.extend(compat::lower_egress(
            features,
            &self.headless.typed,
            &mut egress,
        ));
        let mut snapshot = self.snapshot(true);
        snapshot.outbound.egress = &egress;
        if let Some(l) = &services {
            snapshot.outbound.services = ServiceTable::Typed(&l.typed);
        }
        if let Some(l) = &headless {
            snapshot.outbound.headless = ServiceTable::Typed(&l.typed);
        }
        snapshot.credentials = None;
        let bytes = serde_json::to_vec(&snapshot).unwrap_or_default();
        Some((bytes, notes))
    }

    /// The delta line's JSON ([`crate::snapshot::delta`]) that turns `base` (this proxy's
    /// config in an earlier index, the one the stream last sent) into this one; None when a
    /// whole snapshot is due instead: it would not be smaller, a table was not serialized,
    /// or the pod is a gateway (whose running lists are not what it was sent).
    pub fn delta(&self, base: &ProxyConfig<'_>) -> Option<Vec<u8>> {
        if self.pod.gateway.is_some() || base.pod.gateway.is_some() {
            return None;
        }
        let services = self.services.raw.as_ref()?;
        let headless = self.headless.raw.as_ref()?;
        let services_pieces = services.pieces_from(base.services.raw.as_ref()?);
        let headless_pieces = headless.pieces_from(base.headless.raw.as_ref()?);
        let peers_pieces = self.peers.map(|new| match base.peers {
            Some(old) => new.pieces_from(old),
            None => Arc::new(delta::diff::<[u8; 16]>(&[], &new.hashes)),
        });
        let whole_lists = services.len + headless.len + self.peers.map_or(0, |p| p.len);
        let estimate = services.estimate(&services_pieces)
            + headless.estimate(&headless_pieces)
            + self
                .peers
                .zip(peers_pieces.as_ref())
                .map_or(0, |(p, pieces)| p.estimate(pieces))
            + base.version.len()
            + 64;
        if estimate >= whole_lists {
            return None;
        }
        let line = DeltaOut {
            delta: DeltaBody {
                base: &base.version,
                snapshot: self.snapshot(false),
                services: services.pieces_ref(&services_pieces),
                headless: headless.pieces_ref(&headless_pieces),
                peers: self
                    .peers
                    .zip(peers_pieces.as_ref())
                    .map(|(p, pieces)| p.pieces_ref(pieces)),
            },
        };
        serde_json::to_vec(&line).ok()
    }
}

/// A delta line as the operator writes it (the proxy reads it as
/// [`crate::snapshot::delta::DeltaLine`]).
#[derive(Serialize)]
struct DeltaOut<'a> {
    delta: DeltaBody<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct DeltaBody<'a> {
    base: &'a str,
    /// The snapshot without `outbound.services`, `outbound.headless` and `peers`.
    snapshot: SnapshotRef<'a>,
    services: Vec<Piece<&'a RawValue>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    headless: Vec<Piece<&'a RawValue>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    peers: Option<Vec<Piece<&'a RawValue>>>,
}

/// A borrowing mirror of [`crate::snapshot::ProxySnapshot`]: the shared service table is
/// serialized straight from the index, never cloned per proxy. A test pins that it decodes
/// as the real schema.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SnapshotRef<'a> {
    schema_version: u32,
    version: &'a str,
    identity: &'a str,
    trust_domain: &'a str,
    workload: &'a WorkloadMeta,
    inbound: &'a InboundConfig,
    outbound: OutboundRef<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    access_log: Option<AccessLog>,
    #[serde(skip_serializing_if = "Option::is_none")]
    peers: Option<&'a RawList>,
    #[serde(skip_serializing_if = "Option::is_none")]
    gateway: Option<&'a crate::route::gateway::GatewayConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    credentials: Option<&'a BTreeMap<String, crate::snapshot::TlsCredential>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct OutboundRef<'a> {
    policy: OutboundPolicy,
    services: ServiceTable<'a>,
    #[serde(skip_serializing_if = "ServiceTable::is_empty")]
    headless: ServiceTable<'a>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    egress: &'a [crate::route::egress::ExternalService],
}

/// A service table as the index holds it: serialized once (the normal case), or typed if
/// that serialization ever failed.
#[derive(Serialize)]
#[serde(untagged)]
enum ServiceTable<'a> {
    Serialized(&'a RawList),
    Typed(&'a [Service]),
}

impl ServiceTable<'_> {
    fn is_empty(&self) -> bool {
        match self {
            ServiceTable::Serialized(raw) => raw.elements.is_empty(),
            ServiceTable::Typed(t) => t.is_empty(),
        }
    }
}

/// One table, typed and (normally) serialized.
struct Table {
    typed: Vec<Service>,
    raw: Option<RawList>,
    /// What a proxy must implement to read it as it is ([`compat`]).
    needs: Features,
    /// The lowered copies made so far, one per feature set asked for: every older proxy
    /// reading this table in this index shares one.
    lowered: Mutex<Vec<(Features, Arc<Lowered>)>>,
}

/// A table lowered for proxies that lack some features, and what lowering changed.
struct Lowered {
    typed: Vec<Service>,
    notes: Vec<String>,
}

impl Table {
    fn new(typed: Vec<Service>) -> Self {
        let raw = RawList::new(&typed);
        let needs = compat::needed(&typed);
        Table {
            typed,
            raw,
            needs,
            lowered: Mutex::new(Vec::new()),
        }
    }

    /// The table for a proxy with `features`: none when it reads the table as it is, else
    /// the table lowered ([`compat::lower`]), made once per feature set.
    fn for_features(&self, features: Features) -> Option<Arc<Lowered>> {
        if !self.needs.beyond(features) {
            return None;
        }
        let mut made = self.lowered.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, l)) = made.iter().find(|(f, _)| *f == features) {
            return Some(l.clone());
        }
        let mut typed = self.typed.clone();
        let notes = compat::lower(features, &mut typed);
        let lowered = Arc::new(Lowered { typed, notes });
        made.push((features, lowered.clone()));
        Some(lowered)
    }

    fn as_ref(&self) -> ServiceTable<'_> {
        match &self.raw {
            Some(raw) => ServiceTable::Serialized(raw),
            None => ServiceTable::Typed(&self.typed),
        }
    }

    fn hash(&self) -> [u8; 32] {
        match &self.raw {
            Some(raw) => raw.hash,
            None => sha256(&serde_json::to_vec(&self.typed).unwrap_or_default()),
        }
    }
}

/// Base lists a [`RawList`] remembers its pieces from: the previous index's, and a few more
/// (source variants, a proxy that skipped a change).
const DIFF_CACHE: usize = 8;

/// A list serialized once, element by element, with a hash per element: snapshots embed it
/// whole, deltas keep the elements a base list has ([`delta::diff`]).
struct RawList {
    elements: Vec<Box<RawValue>>,
    /// The first 16 bytes of each element's SHA-256.
    hashes: Vec<[u8; 16]>,
    /// SHA-256 of the list's JSON (`[a,b,…]`, as serde_json writes the whole list).
    hash: [u8; 32],
    /// Bytes of the list's JSON.
    len: usize,
    /// The pieces from recent base lists (by their `hash`) to this one, computed once for
    /// every stream that diffs the same pair.
    diffs: Mutex<Vec<DiffFrom>>,
}

/// The pieces from the base list with this hash to a list.
type DiffFrom = ([u8; 32], Arc<Vec<Piece<usize>>>);

impl Serialize for RawList {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.elements.serialize(s)
    }
}

impl RawList {
    /// None when an element does not serialize.
    fn new<T: Serialize>(items: &[T]) -> Option<RawList> {
        let mut elements = Vec::with_capacity(items.len());
        let mut hashes = Vec::with_capacity(items.len());
        let mut whole = ring::digest::Context::new(&ring::digest::SHA256);
        whole.update(b"[");
        let mut len = 2;
        for (i, item) in items.iter().enumerate() {
            let raw = serde_json::value::to_raw_value(item).ok()?;
            let json = raw.get().as_bytes();
            if i > 0 {
                whole.update(b",");
                len += 1;
            }
            whole.update(json);
            len += json.len();
            let mut short = [0u8; 16];
            short.copy_from_slice(&sha256(json)[..16]);
            hashes.push(short);
            elements.push(raw);
        }
        whole.update(b"]");
        let mut hash = [0u8; 32];
        hash.copy_from_slice(whole.finish().as_ref());
        Some(RawList {
            elements,
            hashes,
            hash,
            len,
            diffs: Mutex::new(Vec::new()),
        })
    }

    /// The pieces that rebuild this list from `base`.
    fn pieces_from(&self, base: &RawList) -> Arc<Vec<Piece<usize>>> {
        if base.hash == self.hash {
            let all = Piece::Keep {
                from: 0,
                len: self.elements.len(),
            };
            return Arc::new(if self.elements.is_empty() {
                vec![]
            } else {
                vec![all]
            });
        }
        let compute = || Arc::new(delta::diff(&base.hashes, &self.hashes));
        let Ok(mut cache) = self.diffs.lock() else {
            return compute();
        };
        if let Some((_, pieces)) = cache.iter().find(|(h, _)| *h == base.hash) {
            return pieces.clone();
        }
        let pieces = compute();
        if cache.len() >= DIFF_CACHE {
            cache.remove(0);
        }
        cache.push((base.hash, pieces.clone()));
        pieces
    }

    /// The pieces with their added elements' JSON, to serialize.
    fn pieces_ref(&self, pieces: &[Piece<usize>]) -> Vec<Piece<&RawValue>> {
        pieces
            .iter()
            .map(|p| match p {
                Piece::Keep { from, len } => Piece::Keep {
                    from: *from,
                    len: *len,
                },
                Piece::Add(at) => Piece::Add(
                    at.iter()
                        .filter_map(|&i| self.elements.get(i).map(|e| &**e))
                        .collect(),
                ),
            })
            .collect()
    }

    /// An upper bound of the serialized pieces' size.
    fn estimate(&self, pieces: &[Piece<usize>]) -> usize {
        pieces
            .iter()
            .map(|p| match p {
                // {"keep":{"from":N,"len":N}}, with the comma
                Piece::Keep { .. } => 64,
                Piece::Add(at) => {
                    16 + at
                        .iter()
                        .map(|&i| self.elements.get(i).map_or(0, |e| e.get().len() + 1))
                        .sum::<usize>()
                }
            })
            .sum()
    }
}

/// The workload metadata of each unmeshed pod, computed as for a meshed one, less what Istio's
/// endpoint metadata lacks (`workload;namespace;canonical service;canonical revision;cluster`,
/// pilot's `AppendLbEndpointMetadata`): app and version, which Istio's source reporter then
/// reports `unknown` for a server without a sidecar.
fn unmeshed_workloads(view: &MeshView) -> HashMap<(String, String), WorkloadMeta> {
    let mut out = HashMap::with_capacity(view.unmeshed_pods.len());
    for p in &view.unmeshed_pods {
        let (Some(ns), Some(name)) = (&p.metadata.namespace, &p.metadata.name) else {
            continue;
        };
        let labels = p.metadata.labels.clone().unwrap_or_default();
        if labels.contains_key(contract::LABEL_REVISION) {
            continue; // meshed after all: the meshed pods' entry is the one
        }
        let pod = Pod {
            metadata: p.metadata.clone(),
            ..Default::default()
        };
        let workload = crate::kube::workload::workload_name(&pod);
        let meta = WorkloadMeta {
            app: String::new(),
            version: String::new(),
            ..WorkloadMeta::from_labels(&workload, ns, &labels, DEFAULT_CLUSTER)
        };
        out.insert((ns.clone(), name.clone()), meta);
    }
    out
}

/// Every Service port with its ready endpoints: ClusterIP Services, then headless ones, each
/// sorted so the hash is stable. Records on each meshed pod which Services target its ports;
/// an unmeshed pod's endpoints carry its workload metadata from `unmeshed`.
fn service_tables(
    view: &MeshView,
    pods: &mut HashMap<(String, String), MeshedPod>,
    unmeshed: &HashMap<(String, String), WorkloadMeta>,
) -> (Vec<Service>, Vec<Service>) {
    // EndpointSlices by (namespace, service name).
    let mut slices: HashMap<(String, String), Vec<&EndpointSlice>> = HashMap::new();
    for slice in &view.slices {
        let ns = slice.metadata.namespace.clone().unwrap_or_default();
        if let Some(svc) = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("kubernetes.io/service-name"))
        {
            slices.entry((ns, svc.clone())).or_default().push(slice);
        }
    }
    let mut table = Vec::new();
    let mut headless = Vec::new();
    // (pod namespace, pod name) -> container port -> hosts.
    let mut targets: HashMap<(String, String), BTreeMap<u16, Vec<String>>> = HashMap::new();
    let mut target_protocols: HashMap<(String, String), BTreeMap<u16, Protocol>> = HashMap::new();
    for svc in &view.services {
        let (Some(ns), Some(name)) = (&svc.metadata.namespace, &svc.metadata.name) else {
            continue;
        };
        let Some(spec) = &svc.spec else { continue };
        let cluster_ip = match spec.cluster_ip.as_deref() {
            Some("None") => None,
            ip => match ip.and_then(|ip| ip.parse::<IpAddr>().ok()) {
                Some(ip) => Some(ip),
                None => continue, // not allocated yet
            },
        };
        let host = format!("{name}.{ns}.svc.{}", view.cluster_domain);
        let svc_slices = slices
            .get(&(ns.clone(), name.clone()))
            .map(Vec::as_slice)
            .unwrap_or_default();
        for port in spec.ports.iter().flatten() {
            let Ok(service_port) = u16::try_from(port.port) else {
                continue;
            };
            if port.protocol.as_deref().unwrap_or("TCP") != "TCP" {
                continue; // UDP/SCTP are not captured
            }
            let declared = declared_protocol(port.name.as_deref(), port.app_protocol.as_deref());
            let protocol = declared.unwrap_or(Protocol::Tcp);
            let mut endpoints = Vec::new();
            for slice in svc_slices {
                // The slice port with the Service port's name carries the target port.
                let Some(target) = slice
                    .ports
                    .iter()
                    .flatten()
                    // An unnamed Service port's slice port is named "" (the EndpointSlice
                    // controller writes it so), not left out.
                    .find(|p| p.name.as_deref().unwrap_or("") == port.name.as_deref().unwrap_or(""))
                    .and_then(|p| p.port)
                    .and_then(|p| u16::try_from(p).ok())
                else {
                    continue;
                };
                for ep in slice.endpoints.iter().flatten() {
                    if ep.conditions.as_ref().and_then(|c| c.ready) == Some(false) {
                        continue;
                    }
                    let pod_key = ep
                        .target_ref
                        .as_ref()
                        .filter(|r| r.kind.as_deref() == Some("Pod"))
                        .and_then(|r| {
                            Some((r.namespace.clone().unwrap_or(ns.clone()), r.name.clone()?))
                        });
                    let meshed = pod_key.as_ref().and_then(|k| pods.get(k));
                    if let (Some(k), Some(_)) = (&pod_key, meshed) {
                        // HTTP wins where Services disagree about one target port.
                        let protocols = target_protocols.entry(k.clone()).or_default();
                        match declared {
                            Some(Protocol::Http) => {
                                protocols.insert(target, Protocol::Http);
                            }
                            Some(Protocol::Tcp) => {
                                protocols.entry(target).or_insert(Protocol::Tcp);
                            }
                            None => {}
                        }
                        let hosts = targets
                            .entry(k.clone())
                            .or_default()
                            .entry(target)
                            .or_default();
                        if !hosts.contains(&host) {
                            hosts.push(host.clone());
                        }
                    }
                    for address in &ep.addresses {
                        let Ok(ip) = address.parse::<IpAddr>() else {
                            continue;
                        };
                        endpoints.push(Endpoint {
                            ip,
                            port: target,
                            identity: meshed.map(|p| p.identity.clone()),
                            meshed: meshed.is_some(),
                            mtls_mode_for_port: meshed
                                .map(|p| p.modes.mode_for(target))
                                .unwrap_or_default(),
                            workload: match meshed {
                                Some(p) => Some(p.workload.clone()),
                                None => pod_key.as_ref().and_then(|k| unmeshed.get(k)).cloned(),
                            },
                        });
                    }
                }
            }
            endpoints.sort_by_key(|e| (e.ip, e.port));
            endpoints.dedup_by_key(|e| (e.ip, e.port));
            let entry = Service {
                cluster_ip,
                detect_protocol: declared.is_none(),
                endpoints,
                ..Service::bare(host.clone(), service_port, protocol)
            };
            match cluster_ip {
                Some(_) => table.push(entry),
                None => headless.push(entry),
            }
        }
    }
    table.sort_by_key(|s| (s.cluster_ip, s.port));
    table.dedup_by_key(|s| (s.cluster_ip, s.port));
    headless.sort_by(|a, b| (&a.name, a.port).cmp(&(&b.name, b.port)));
    for (key, mut ports) in targets {
        if let Some(pod) = pods.get_mut(&key) {
            ports.values_mut().for_each(|hosts| hosts.sort());
            pod.services = ports;
        }
    }
    for (key, protocols) in target_protocols {
        if let Some(pod) = pods.get_mut(&key) {
            pod.protocols = protocols;
        }
    }
    (table, headless)
}

/// A Service port's protocol as Istio reads it: `appProtocol`, else the port name's
/// `<protocol>[-<suffix>]` prefix. HTTP: `http`, `http2`, `grpc`, `grpc-web` (and appProtocol
/// `kubernetes.io/h2c`, `kubernetes.io/ws`). Declared non-HTTP (`tcp`, `tls`, `https`, `mongo`,
/// `mysql`, `redis`, any other appProtocol): TCP, never sniffed. None: not declared, so the
/// proxy may detect HTTP from the first bytes, as Istio does.
pub fn declared_protocol(name: Option<&str>, app_protocol: Option<&str>) -> Option<Protocol> {
    const HTTP: [&str; 6] = [
        "http",
        "http2",
        "grpc",
        "grpc-web",
        "kubernetes.io/h2c",
        "kubernetes.io/ws",
    ];
    const TCP: [&str; 7] = ["tcp", "tls", "https", "mongo", "mysql", "redis", "udp"];
    if let Some(ap) = app_protocol {
        return Some(if HTTP.contains(&ap.to_ascii_lowercase().as_str()) {
            Protocol::Http
        } else {
            Protocol::Tcp
        });
    }
    let prefix = name
        .unwrap_or_default()
        .split('-')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    if ["http", "http2", "grpc"].contains(&prefix.as_str()) {
        Some(Protocol::Http)
    } else if TCP.contains(&prefix.as_str()) {
        Some(Protocol::Tcp)
    } else {
        None
    }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::snapshot::{UpstreamSecurity, decode_snapshot};
    use serde_json::json;

    fn obj<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> Arc<T> {
        Arc::new(serde_json::from_value(v).unwrap())
    }

    pub(crate) fn pod(ns: &str, name: &str, ip: &str, app: &str, meshed: bool) -> Arc<Pod> {
        let mut labels = json!({"app": app});
        if meshed {
            labels["weft.dev/revision"] = json!("stable");
            labels["service.istio.io/canonical-name"] = json!(app);
        }
        obj(json!({
            "metadata": {"namespace": ns, "name": name, "labels": labels},
            "spec": {"serviceAccountName": app, "containers": [
                {"name": "app", "ports": [{"containerPort": 8080}]}]},
            "status": {"podIP": ip}
        }))
    }

    pub(crate) fn service(ns: &str, name: &str, ip: &str, port_name: &str) -> Arc<KubeService> {
        obj(json!({
            "metadata": {"namespace": ns, "name": name},
            "spec": {"clusterIP": ip, "ports": [{"name": port_name, "port": 80, "targetPort": 8080}]}
        }))
    }

    pub(crate) fn slice(
        ns: &str,
        svc: &str,
        port_name: &str,
        eps: &[(&str, &str, bool)],
    ) -> Arc<EndpointSlice> {
        let endpoints: Vec<_> = eps
            .iter()
            .map(|(ip, pod, ready)| {
                json!({"addresses": [ip], "conditions": {"ready": ready},
                       "targetRef": {"kind": "Pod", "namespace": ns, "name": pod}})
            })
            .collect();
        obj(json!({
            "metadata": {"namespace": ns, "name": format!("{svc}-abc"),
                         "labels": {"kubernetes.io/service-name": svc}},
            "addressType": "IPv4",
            "endpoints": endpoints,
            "ports": [{"name": port_name, "port": 8080, "protocol": "TCP"}]
        }))
    }

    pub(crate) fn view() -> MeshView {
        MeshView {
            trust_domain: "cluster.local".into(),
            root_namespace: "weft-system".into(),
            cluster_domain: "cluster.local".into(),
            pods: vec![
                pod("pets", "web-1", "198.18.1.2", "web", true),
                pod("pets", "db-1", "198.18.1.3", "db", true),
                pod("pets", "legacy-1", "198.18.1.4", "legacy", false),
            ],
            services: vec![
                service("pets", "db", "198.19.0.20", "http"),
                service("pets", "legacy", "198.19.0.21", "tcp"),
                obj(
                    json!({"metadata": {"namespace": "pets", "name": "db-peers"},
                           "spec": {"clusterIP": "None",
                                    "ports": [{"name": "http", "port": 8080}]}}),
                ),
            ],
            slices: vec![
                slice(
                    "pets",
                    "db",
                    "http",
                    &[("198.18.1.3", "db-1", true), ("198.18.1.9", "db-2", false)],
                ),
                slice("pets", "legacy", "tcp", &[("198.18.1.4", "legacy-1", true)]),
                slice("pets", "db-peers", "http", &[("198.18.1.3", "db-1", true)]),
            ],
            revisions: vec![obj(json!({
                "apiVersion": "mesh.weft.dev/v1alpha1", "kind": "MeshConfig",
                "metadata": {"namespace": "weft-system", "name": "stable"},
                "spec": {"traffic": {"outboundTrafficPolicy": "REGISTRY_ONLY"}}
            }))],
            peer_authentications: vec![],
            authorization_policies: vec![],
            traffic_targets: vec![],
            http_route_groups: vec![],
            tcp_routes: vec![],
            ..Default::default()
        }
    }

    #[test]
    fn a_meshed_client_calls_a_gateway_pod_in_plaintext_whatever_peer_authentication_says() {
        let mut v = view();
        // A gateway pod (the injection template), in a namespace with a STRICT default.
        let mut gw = (*pod("pets", "gw-1", "198.18.1.7", "gw", true)).clone();
        gw.metadata.annotations = Some(
            [(
                contract::ANNOTATION_INJECT_TEMPLATES.to_string(),
                contract::TEMPLATE_GATEWAY.to_string(),
            )]
            .into(),
        );
        v.pods.push(Arc::new(gw));
        v.services
            .push(service("pets", "gw", "198.19.0.30", "http"));
        v.slices
            .push(slice("pets", "gw", "http", &[("198.18.1.7", "gw-1", true)]));
        v.peer_authentications = vec![obj(json!({
            "apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
            "metadata": {"namespace": "pets", "name": "strict"},
            "spec": {"mtls": {"mode": "STRICT"}}
        }))];
        let endpoint = |v: &MeshView, service: &str| {
            let index = MeshIndex::build(v);
            let (_, bytes) = index.snapshot_for("pets", "web-1").unwrap();
            let snap = decode_snapshot(&bytes).unwrap();
            let svc = snap
                .outbound
                .services
                .iter()
                .find(|s| s.name == format!("{service}.pets.svc.cluster.local"))
                .unwrap()
                .clone();
            let ep = svc.endpoints[0].clone();
            (ep.meshed, svc.security_of(&ep, None))
        };
        // Its listener speaks plaintext HTTP; the STRICT PeerAuthentication governs sidecars.
        let (meshed, security) = endpoint(&v, "gw");
        assert!(meshed, "still a meshed workload (metrics, identity)");
        assert_eq!(security, UpstreamSecurity::Plaintext);
        // A sidecar in the same namespace still gets mTLS.
        assert!(matches!(
            endpoint(&v, "db").1,
            UpstreamSecurity::Mtls { .. }
        ));
    }

    #[test]
    fn a_gateway_pod_is_not_under_osms_restrictive_mode_and_a_sidecar_is() {
        let mut v = view();
        v.revisions = vec![obj(json!({
            "apiVersion": "mesh.weft.dev/v1alpha1", "kind": "MeshConfig",
            "metadata": {"namespace": "weft-system", "name": "stable"},
            "spec": {"traffic": {"enablePermissiveTrafficPolicyMode": false}}
        }))];
        let mut gw = (*pod("pets", "gw-1", "198.18.1.7", "gw", true)).clone();
        gw.metadata.annotations = Some(
            [(
                contract::ANNOTATION_INJECT_TEMPLATES.to_string(),
                contract::TEMPLATE_GATEWAY.to_string(),
            )]
            .into(),
        );
        v.pods.push(Arc::new(gw));
        let index = MeshIndex::build(&v);
        let policies = |name: &str| -> Vec<String> {
            let key = ("pets".to_string(), name.to_string());
            index.pods[&key]
                .authz
                .iter()
                .map(|p| p.name.clone())
                .collect()
        };
        assert!(
            policies("web-1").iter().any(|n| n.contains("stable")),
            "a sidecar of a restrictive revision gets its implicit deny-all: {:?}",
            policies("web-1")
        );
        assert!(
            policies("gw-1").is_empty(),
            "an ingress gateway's outside callers have no service account a TrafficTarget names: {:?}",
            policies("gw-1")
        );
    }

    #[test]
    fn a_pod_gets_the_policies_that_select_it_and_its_http_ports() {
        let mut v = view();
        v.authorization_policies = vec![
            obj(
                json!({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
                "metadata": {"namespace": "pets", "name": "db-from-web"},
                "spec": {"targetRefs": [{"kind": "Service", "group": "", "name": "db"}],
                         "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/pets/sa/web"]}}]}]}}),
            ),
            obj(
                json!({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
                "metadata": {"namespace": "weft-system", "name": "mesh-deny-debug"},
                "spec": {"action": "DENY", "rules": [{"to": [{"operation": {"paths": ["/debug*"]}}]}]}}),
            ),
        ];
        let index = MeshIndex::build(&v);
        let policies = |pod: &str| {
            let (_, bytes) = index.snapshot_for("pets", pod).unwrap();
            let snap = decode_snapshot(&bytes).unwrap();
            let names: Vec<String> = snap.inbound.authz.iter().map(|p| p.name.clone()).collect();
            (names, snap.inbound.protocols)
        };
        let (db, db_protocols) = policies("db-1");
        assert_eq!(db, ["pets/db-from-web", "weft-system/mesh-deny-debug"]);
        assert_eq!(
            db_protocols.get(&8080),
            Some(&Protocol::Http),
            "db's Service port is named http"
        );
        let (web, web_protocols) = policies("web-1");
        assert_eq!(web, ["weft-system/mesh-deny-debug"]);
        assert!(web_protocols.is_empty());
        // A new policy moves the version of exactly the proxies it selects.
        let before = MeshIndex::build(&view());
        let moved = |pod: &str| {
            before.snapshot_for("pets", pod).unwrap().0
                != index.snapshot_for("pets", pod).unwrap().0
        };
        assert!(moved("db-1") && moved("web-1"));
    }

    #[test]
    fn an_unnamed_service_port_gets_its_endpoints_and_is_sniffed() {
        let mut v = view();
        // As the API server stores it: a one-port Service without a port name, and the
        // EndpointSlice controller's slice with the port named "".
        v.services.push(obj(json!({
            "metadata": {"namespace": "pets", "name": "bookstore"},
            "spec": {"clusterIP": "198.19.0.40", "ports": [{"port": 14001, "targetPort": 8080}]}
        })));
        v.slices.push(slice(
            "pets",
            "bookstore",
            "",
            &[("198.18.1.3", "db-1", true)],
        ));
        let index = MeshIndex::build(&v);
        let (_, bytes) = index.snapshot_for("pets", "web-1").unwrap();
        let snap = decode_snapshot(&bytes).unwrap();
        let svc = snap
            .outbound
            .services
            .iter()
            .find(|s| s.name == "bookstore.pets.svc.cluster.local")
            .expect("the Service is in the snapshot");
        assert_eq!(svc.endpoints.len(), 1, "{svc:?}");
        assert_eq!((svc.protocol, svc.detect_protocol), (Protocol::Tcp, true));
    }

    #[test]
    fn port_protocols_are_read_as_istio_names_them() {
        for (name, app, want) in [
            (Some("http"), None, Some(Protocol::Http)),
            (Some("http-web"), None, Some(Protocol::Http)),
            (Some("http2"), None, Some(Protocol::Http)),
            (Some("grpc"), None, Some(Protocol::Http)),
            (Some("grpc-web"), None, Some(Protocol::Http)),
            (Some("https"), None, Some(Protocol::Tcp)),
            (Some("tcp-db"), None, Some(Protocol::Tcp)),
            (Some("tcp"), None, Some(Protocol::Tcp)),
            (Some("TLS-x"), None, Some(Protocol::Tcp)),
            (Some("httpx"), None, None),
            (Some("web"), None, None),
            (None, None, None),
            (Some("tcp"), Some("http"), Some(Protocol::Http)),
            (Some("http"), Some("tcp"), Some(Protocol::Tcp)),
            (None, Some("kubernetes.io/h2c"), Some(Protocol::Http)),
            (None, Some("mysql"), Some(Protocol::Tcp)),
        ] {
            assert_eq!(declared_protocol(name, app), want, "{name:?} {app:?}");
        }
    }

    #[test]
    fn every_snapshot_carries_the_meshed_workloads_and_their_identities_sorted() {
        let index = MeshIndex::build(&view());
        let (_, bytes) = index.snapshot_for("pets", "db-1").unwrap();
        let peers = decode_snapshot(&bytes)
            .unwrap()
            .peers
            .expect("the peers table");
        // web is behind no Service: still a workload its callers' servers can vouch for.
        let web = peers
            .iter()
            .find(|p| p.workload.name.starts_with("web"))
            .unwrap_or_else(|| panic!("web in the table: {peers:?}"));
        assert_eq!(web.identity, "spiffe://cluster.local/ns/pets/sa/web");
        assert_eq!(web.workload.namespace, "pets");
        // Sorted by identity then workload, once each (proxies binary-search it).
        let mut sorted = peers.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(peers, sorted);
        // Only meshed pods' workloads.
        assert!(
            peers.iter().all(|p| p.workload.name != "legacy"),
            "{peers:?}"
        );
    }

    #[test]
    fn a_snapshot_decodes_as_the_proxy_schema_with_identities_and_modes() {
        let index = MeshIndex::build(&view());
        let (version, bytes) = index.snapshot_for("pets", "web-1").unwrap();
        let snap = decode_snapshot(&bytes).expect("the proxy accepts what the operator writes");
        assert_eq!(snap.version, version);
        assert_eq!(snap.identity, "spiffe://cluster.local/ns/pets/sa/web");
        assert_eq!(snap.outbound.policy, OutboundPolicy::RegistryOnly);
        assert_eq!(snap.inbound.default_mode, MtlsMode::Permissive);
        // db has only its ready endpoint, meshed with db's identity.
        assert_eq!(snap.outbound.services.len(), 2);
        let db = &snap.outbound.services[0];
        assert_eq!(db.name, "db.pets.svc.cluster.local");
        // Declared (the port is named `http`, legacy's `tcp`): nothing to detect.
        assert_eq!((db.protocol, db.detect_protocol), (Protocol::Http, false));
        assert_eq!(db.endpoints.len(), 1);
        assert_eq!(
            db.endpoints[0].security(),
            UpstreamSecurity::Mtls {
                identity: "spiffe://cluster.local/ns/pets/sa/db".into()
            }
        );
        let legacy = &snap.outbound.services[1];
        assert_eq!(
            (legacy.protocol, legacy.detect_protocol),
            (Protocol::Tcp, false)
        );
        assert_eq!(legacy.endpoints[0].security(), UpstreamSecurity::Plaintext);
        // The headless Service: no ClusterIP, its pod dialled by IP gets mTLS.
        assert_eq!(snap.outbound.headless.len(), 1);
        let peers = &snap.outbound.headless[0];
        assert_eq!(
            (peers.name.as_str(), peers.cluster_ip),
            ("db-peers.pets.svc.cluster.local", None)
        );
        assert!(matches!(
            peers.endpoints[0].security(),
            UpstreamSecurity::Mtls { .. }
        ));
        // web is behind no Service; db's port is the target of both of its Services.
        assert!(snap.inbound.services.is_empty());
        let (_, db_bytes) = index.snapshot_for("pets", "db-1").unwrap();
        let db_snap = decode_snapshot(&db_bytes).unwrap();
        assert_eq!(
            db_snap.inbound.services.get(&8080).map(Vec::as_slice),
            Some(
                &[
                    "db-peers.pets.svc.cluster.local".to_string(),
                    "db.pets.svc.cluster.local".to_string()
                ][..]
            )
        );
    }

    #[test]
    fn workload_metadata_for_metrics_comes_from_the_pod_labels() {
        let mut v = view();
        // A Deployment's pod: the workload is the Deployment (Istio's `*_workload`), not the
        // canonical service.
        let db = json!({
            "metadata": {"namespace": "pets", "name": "db-1", "labels": {
                "weft.dev/revision": "stable", "app": "db", "version": "v2",
                "app.kubernetes.io/name": "postgres",
                "pod-template-hash": "7f9c6",
                "service.istio.io/canonical-name": "db"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                                     "name": "db-v2-7f9c6", "uid": "u", "controller": true}]},
            "spec": {"serviceAccountName": "db", "containers": [
                {"name": "app", "ports": [{"containerPort": 8080}]}]},
            "status": {"podIP": "198.18.1.3"}
        });
        v.pods[1] = obj(db);
        let index = MeshIndex::build(&v);
        let want = WorkloadMeta {
            name: "db-v2".into(),
            namespace: "pets".into(),
            app: "postgres".into(),
            version: "v2".into(),
            canonical_service: "db".into(),
            canonical_revision: "v2".into(),
            cluster: "Kubernetes".into(),
        };
        // The pod's own snapshot (the destination reporter's labels) ...
        let (_, bytes) = index.snapshot_for("pets", "db-1").unwrap();
        assert_eq!(
            decode_snapshot(&bytes).unwrap().workload,
            Some(want.clone())
        );
        // ... and its endpoint in every client's (the source reporter's destination_*).
        let (_, bytes) = index.snapshot_for("pets", "web-1").unwrap();
        let web = decode_snapshot(&bytes).unwrap();
        assert_eq!(web.outbound.services[0].endpoints[0].workload, Some(want));
        let me = web.workload.unwrap();
        assert_eq!(
            (
                me.app.as_str(),
                me.version.as_str(),
                me.canonical_revision.as_str()
            ),
            ("web", "", "latest")
        );
    }

    #[test]
    fn an_unmeshed_pods_endpoint_carries_its_workload_metadata_and_nothing_else_changes() {
        let before = MeshIndex::build(&view());
        let mut v = view();
        // legacy-1 as the unmeshed pods' reflector holds it: metadata only, a Deployment's pod.
        v.unmeshed_pods = vec![obj(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"namespace": "pets", "name": "legacy-1", "labels": {
                "app": "legacy", "version": "v3", "pod-template-hash": "5d8f7"},
                "ownerReferences": [{"apiVersion": "", "kind": "ReplicaSet",
                                     "name": "legacy-db-5d8f7", "uid": "", "controller": true}]}
        }))];
        let index = MeshIndex::build(&v);
        let (_, bytes) = index.snapshot_for("pets", "web-1").unwrap();
        let web = decode_snapshot(&bytes).unwrap();
        let legacy = web
            .outbound
            .services
            .iter()
            .find(|s| s.name == "legacy.pets.svc.cluster.local")
            .expect("legacy's Service");
        let ep = &legacy.endpoints[0];
        // What Istio's endpoint metadata says: workload, namespace, canonical service and
        // revision (derived as for a meshed pod), cluster; no app or version.
        assert_eq!(
            ep.workload,
            Some(WorkloadMeta {
                name: "legacy-db".into(),
                namespace: "pets".into(),
                app: String::new(),
                version: String::new(),
                canonical_service: "legacy".into(),
                canonical_revision: "v3".into(),
                cluster: "Kubernetes".into(),
            })
        );
        // Still a plaintext, unmeshed endpoint with no identity ...
        assert!(!ep.meshed && ep.identity.is_none());
        assert_eq!(ep.security(), UpstreamSecurity::Plaintext);
        // ... and not a meshed pod: no snapshot, not a peer, not a proxy's inbound.
        assert!(index.snapshot_for("pets", "legacy-1").is_err());
        assert_eq!(index.meshed_pods().count(), before.meshed_pods().count());
        assert!(
            web.peers
                .iter()
                .flatten()
                .all(|p| p.workload.name != "legacy-db"),
            "{:?}",
            web.peers
        );
        // Only the endpoint metadata moved.
        let (_, old) = before.snapshot_for("pets", "web-1").unwrap();
        let mut old = decode_snapshot(&old).unwrap();
        let mut new = web.clone();
        for s in old
            .outbound
            .services
            .iter_mut()
            .chain(new.outbound.services.iter_mut())
        {
            if s.name.starts_with("legacy.") {
                s.endpoints.iter_mut().for_each(|e| e.workload = None);
            }
        }
        (old.version, new.version) = (String::new(), String::new());
        assert_eq!(old, new);
        // A pod listed as unmeshed that carries the revision label is left to the meshed store.
        let mut v2 = view();
        v2.unmeshed_pods = vec![obj(json!({
            "metadata": {"namespace": "pets", "name": "db-1",
                         "labels": {"weft.dev/revision": "stable", "app": "other"}}
        }))];
        let i2 = MeshIndex::build(&v2);
        let (_, b2) = i2.snapshot_for("pets", "web-1").unwrap();
        assert_eq!(
            decode_snapshot(&b2).unwrap().outbound.services[0].endpoints[0]
                .workload
                .as_ref()
                .map(|w| w.canonical_service.as_str()),
            Some("db")
        );
    }

    #[test]
    fn versions_are_content_hashes_that_move_only_with_content() {
        let a = MeshIndex::build(&view());
        let b = MeshIndex::build(&view());
        let v = |i: &MeshIndex, pod: &str| i.snapshot_for("pets", pod).unwrap().0;
        assert_eq!(v(&a, "web-1"), v(&b, "web-1"), "two replicas agree");
        assert_ne!(v(&a, "web-1"), v(&a, "db-1"), "identities differ");
        // A STRICT policy on db changes db's inbound and web's view of db's endpoint.
        let mut changed = view();
        changed.peer_authentications = vec![obj(json!({
            "apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
            "metadata": {"namespace": "pets", "name": "strict"},
            "spec": {"selector": {"matchLabels": {"app": "db"}}, "mtls": {"mode": "DISABLE"}}
        }))];
        let c = MeshIndex::build(&changed);
        assert_ne!(v(&a, "db-1"), v(&c, "db-1"));
        assert_ne!(v(&a, "web-1"), v(&c, "web-1"));
        let snap = decode_snapshot(&c.snapshot_for("pets", "web-1").unwrap().1).unwrap();
        assert_eq!(
            snap.outbound.services[0].endpoints[0].security(),
            UpstreamSecurity::Plaintext,
            "auto-mTLS follows the server's DISABLE"
        );
    }

    #[test]
    fn unknown_and_unmeshed_pods_get_no_snapshot() {
        let index = MeshIndex::build(&view());
        assert_eq!(
            index.snapshot_for("pets", "legacy-1").unwrap_err(),
            NoSnapshot::UnknownPod("pets".into(), "legacy-1".into())
        );
        assert!(index.snapshot_for("pets", "nope").is_err());
    }

    #[test]
    fn the_revisions_access_log_reaches_its_proxies_and_changes_the_version() {
        let off = MeshIndex::build(&view());
        let (v_off, bytes) = off.snapshot_for("pets", "web-1").unwrap();
        assert_eq!(decode_snapshot(&bytes).unwrap().access_log, None);
        for (settings, want) in [
            (json!({"enabled": true}), Some(AccessLogFormat::Json)),
            (
                json!({"enabled": true, "format": "text"}),
                Some(AccessLogFormat::Text),
            ),
            (json!({"enabled": false, "format": "text"}), None),
        ] {
            let mut v = view();
            v.revisions = vec![obj(json!({
                "apiVersion": "mesh.weft.dev/v1alpha1", "kind": "MeshConfig",
                "metadata": {"namespace": "weft-system", "name": "stable"},
                "spec": {"traffic": {"outboundTrafficPolicy": "REGISTRY_ONLY"},
                         "accessLog": settings}
            }))];
            let (version, bytes) = MeshIndex::build(&v).snapshot_for("pets", "web-1").unwrap();
            let snap = decode_snapshot(&bytes).unwrap();
            assert_eq!(snap.access_log.map(|a| a.format), want, "{settings}");
            assert_eq!(version == v_off, want.is_none(), "{settings}");
        }
    }

    /// Every older proxy reading a table in one index shares one lowered copy per feature
    /// set (it was cloned and lowered per stream per change); a proxy with the feature
    /// reads the table as it is.
    #[test]
    fn a_table_is_lowered_once_per_feature_set() {
        use crate::snapshot::{ClientTls, Service};
        let mut s: Service = serde_json::from_value(json!({
            "clusterIp": "198.19.0.10", "port": 443, "name": "api.pets.svc.cluster.local",
            "protocol": "http",
            "endpoints": [{"ip": "198.18.0.7", "port": 8443, "meshed": false}]
        }))
        .unwrap();
        s.tls = Some(ClientTls::Simple);
        let table = Table::new(vec![s]);
        assert!(table.for_features(Features::all()).is_none());
        let old = Features::default();
        let first = table.for_features(old).unwrap();
        assert!(first.typed[0].endpoints.is_empty(), "lowered fails closed");
        assert_eq!(first.notes.len(), 1, "{:?}", first.notes);
        let again = table.for_features(old).unwrap();
        assert!(Arc::ptr_eq(&first, &again));
        assert_eq!(
            table.typed[0].tls,
            Some(ClientTls::Simple),
            "the table is kept"
        );
    }
}
