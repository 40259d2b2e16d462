//! The config snapshot the operator streams to each proxy (SPEC §8), its validation, and the
//! index the data path reads. Shared by both planes (serde only, no kube, no I/O): the
//! operator's config server writes it, the proxy decodes it; [`stream`] is the wire framing.
//! A snapshot is decoded and checked whole before it is applied: a bad one is rejected and
//! the proxy keeps running on the last good one.
//!
//! # Schema (version [`SNAPSHOT_SCHEMA_VERSION`])
//!
//! JSON, camelCase. Unknown fields are ignored so an operator may add optional fields without
//! breaking older proxies during a canary; a change that older proxies must not misread bumps
//! `schemaVersion`, and a proxy rejects versions it does not know.
//!
//! ```json
//! {
//!   "schemaVersion": 1,
//!   "version": "sha256:3f1c…",                 // content hash; opaque, acknowledged as-is
//!   "identity": "spiffe://cluster.local/ns/pets/sa/web",
//!   "trustDomain": "cluster.local",
//!   "workload": { "name": "web", "namespace": "pets",            // optional, for metrics;
//!                 "app": "web", "version": "v1",                    // the rest optional too
//!                 "canonicalService": "web", "canonicalRevision": "v1", "cluster": "Kubernetes" },
//!   "inbound": {
//!     "defaultMode": "PERMISSIVE",              // PERMISSIVE | STRICT | DISABLE
//!     "ports": { "8080": "STRICT" },            // container port -> mode (overrides default)
//!     "services": { "8080": ["web.pets.svc.cluster.local"] }  // optional: Services that send
//!   },                                          // to this container port (destination_service)
//!   "outbound": {
//!     "policy": "ALLOW_ANY",                    // ALLOW_ANY | REGISTRY_ONLY (default ALLOW_ANY)
//!     "services": [{
//!       "clusterIp": "198.19.0.10", "port": 80,
//!       "name": "db.pets.svc.cluster.local",
//!       "protocol": "tcp",                      // tcp | http (default tcp): declared
//!       "detectProtocol": true,                 // optional: not declared, sniff HTTP
//!       "endpoints": [{
//!         "ip": "198.18.0.7", "port": 8080,
//!         "identity": "spiffe://cluster.local/ns/pets/sa/db",   // required when meshed
//!         "meshed": true,
//!         "mtlsModeForPort": "PERMISSIVE",      // the server's effective mode (default PERMISSIVE)
//!         "workload": { "name": "db", "namespace": "pets" }      // optional, for metrics
//!       }]
//!     }],
//!     // optional per Service: "subsets" and "http" routes (crate::route::model),
//!     // "l4" tls/tcp routes (crate::route::l4)
//!     "headless": [{                            // optional: Services without a ClusterIP, whose
//!       "port": 5432,                           // pods are dialled by IP; same shape, no clusterIp
//!       "name": "pg.pets.svc.cluster.local",
//!       "endpoints": [{ "ip": "198.18.0.9", "port": 5432, "meshed": false }]
//!     }]
//!   },
//!   "accessLog": { "format": "json" }           // optional: absent = off; json | text
//! }
//! ```
//!
//! `inbound.services`, `outbound.headless` and `detectProtocol` were added after the first proxies shipped:
//! older proxies ignore them (headless pods then pass through as before), so they did not
//! need a new `schemaVersion`; nor did `accessLog` (an older proxy writes no access log).
//! Nor did the workload's `app`, `version`, `canonicalService`, `canonicalRevision` and
//! `cluster`: an older proxy ignores them, a newer one reads their absence as not known.
//! Nor did `outbound.egress` (declared external services, docs/egress.md): an older proxy
//! treats them as unknown destinations, as before.
//! Nor did a Service's `l4` routes (VirtualService `tcp`/`tls`): an older proxy relays to the
//! Service's endpoints as before.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};

use serde::{Deserialize, Serialize};

pub mod compat;
pub mod delta;
pub mod stream;

/// The schema version this proxy reads and the operator writes.
pub const SNAPSHOT_SCHEMA_VERSION: u32 = 1;
/// Largest snapshot accepted. A proxy only receives what concerns it; 8 MiB is far above any
/// real one and keeps a misbehaving sender from making the proxy allocate without bound.
pub const MAX_SNAPSHOT_BYTES: usize = 8 * 1024 * 1024;
/// Longest `version` string accepted (a hash with a prefix fits easily).
pub const MAX_VERSION_LEN: usize = 128;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("config snapshot is {size} bytes, more than the {max} byte limit")]
    TooLarge { size: usize, max: usize },
    #[error("config snapshot is not valid JSON of the snapshot schema: {0}")]
    Json(#[from] serde_json::Error),
    #[error(
        "config snapshot has schemaVersion {got}, this proxy reads {supported}: upgrade the proxy or run an operator that speaks its version"
    )]
    UnsupportedSchema { got: u32, supported: u32 },
    #[error("config snapshot is invalid: {0}")]
    Invalid(String),
}

impl SnapshotError {
    pub fn metric_label(&self) -> &'static str {
        match self {
            SnapshotError::TooLarge { .. } => "too_large",
            SnapshotError::Json(_) => "json",
            SnapshotError::UnsupportedSchema { .. } => "schema_version",
            SnapshotError::Invalid(_) => "invalid",
        }
    }
}

/// mTLS mode of an inbound port, with PeerAuthentication's names and meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MtlsMode {
    /// mTLS and plaintext are both accepted.
    #[default]
    Permissive,
    /// Only mTLS from a peer whose certificate chains to the trust roots.
    Strict,
    /// No mTLS expected: clients send plaintext.
    Disable,
}

impl MtlsMode {
    pub fn accepts_plaintext(self) -> bool {
        !matches!(self, MtlsMode::Strict)
    }
}

/// What the proxy does with outbound connections to destinations the snapshot does not know.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OutboundPolicy {
    #[default]
    AllowAny,
    RegistryOnly,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Tcp,
    Http,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxySnapshot {
    pub schema_version: u32,
    pub version: String,
    pub identity: String,
    pub trust_domain: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<WorkloadMeta>,
    pub inbound: InboundConfig,
    #[serde(default)]
    pub outbound: OutboundConfig,
    /// Access logs (the revision's `accessLog`): absent when they are off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_log: Option<AccessLog>,
    /// Every meshed workload with the identity its pods run as, sorted by (identity, name):
    /// what a peer's metadata is checked against ([`crate::proxy::peer_meta::vouched`]).
    /// Absent: an operator from before the table; the proxy then checks the namespace only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peers: Option<Vec<KnownPeer>>,
    /// A gateway pod's listeners (Istio Gateways that select it, and the VirtualServices
    /// bound to them); absent for sidecars.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<crate::route::gateway::GatewayConfig>,
    /// The `credentialName` Secrets this proxy's DestinationRules name (SIMPLE/MUTUAL), read
    /// in the proxy's namespace as Istio's SDS reads them: only this proxy's snapshot carries
    /// them. Absent: none.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub credentials: BTreeMap<String, TlsCredential>,
}

/// A `credentialName` Secret's certificates (PEM), for TLS origination: `ca.crt` verifies
/// the server; `tls.crt`/`tls.key` are presented under MUTUAL.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TlsCredential {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_chain: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key: Option<String>,
}

impl std::fmt::Debug for TlsCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsCredential")
            .field("ca", &self.ca.is_some())
            .field("cert_chain", &self.cert_chain.is_some())
            .field("private_key", &"(redacted)")
            .finish()
    }
}

/// A workload the control plane knows, and the SPIFFE identity of its pods' service account.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KnownPeer {
    pub identity: String,
    pub workload: WorkloadMeta,
}

/// The proxy writes one access log line per HTTP request and per TCP connection to its
/// stdout, in this format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct AccessLog {
    #[serde(default)]
    pub format: AccessLogFormat,
}

/// Istio's two encodings: `json` (its default JSON keys) or `text` (its default format
/// string). JSON is the default, as the MeshConfig API says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AccessLogFormat {
    #[default]
    Json,
    Text,
}

/// What the metrics say about a workload: `*_workload`, `*_workload_namespace`, `*_app`,
/// `*_version`, `*_canonical_service`, `*_canonical_revision` and `*_cluster`. The
/// operator derives them from the pod's labels as Istio does ([`WorkloadMeta::from_labels`]).
/// The five later fields are optional in the schema (a snapshot from an operator that
/// predates them still decodes); empty means not known, which the metrics report as Istio
/// reports an unknown peer.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadMeta {
    pub name: String,
    pub namespace: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub app: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub version: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub canonical_service: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub canonical_revision: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cluster: String,
}

/// Istio's cluster name when none is configured (`CLUSTER_ID` defaults to `Kubernetes`): the
/// `source_cluster` / `destination_cluster` of a single-cluster mesh.
pub const DEFAULT_CLUSTER: &str = "Kubernetes";

/// The pod labels Istio reads, in its order (istio/istio `pkg/kube/labels/labels.go` for the
/// canonical service; istio/proxy's peer metadata for app and version).
const APP_LABELS: [&str; 2] = ["app.kubernetes.io/name", "app"];
const VERSION_LABELS: [&str; 2] = ["app.kubernetes.io/version", "version"];
const CANONICAL_NAME_LABELS: [&str; 3] = [
    "service.istio.io/canonical-name",
    "app.kubernetes.io/name",
    "app",
];
const CANONICAL_REVISION_LABELS: [&str; 3] = [
    "service.istio.io/canonical-revision",
    "app.kubernetes.io/version",
    "version",
];

impl WorkloadMeta {
    /// The metadata of workload `name` in `namespace` from its pod's labels: app from
    /// `app.kubernetes.io/name`, else `app`; version from `app.kubernetes.io/version`, else
    /// `version` (either may stay unknown); the canonical service from
    /// `service.istio.io/canonical-name`, `app.kubernetes.io/name`, `app`, else the workload
    /// name; the canonical revision from `service.istio.io/canonical-revision`,
    /// `app.kubernetes.io/version`, `version`, else `latest`.
    pub fn from_labels(
        name: &str,
        namespace: &str,
        labels: &BTreeMap<String, String>,
        cluster: &str,
    ) -> WorkloadMeta {
        let first = |keys: &[&str]| keys.iter().find_map(|k| labels.get(*k)).cloned();
        WorkloadMeta {
            name: name.to_string(),
            namespace: namespace.to_string(),
            app: first(&APP_LABELS).unwrap_or_default(),
            version: first(&VERSION_LABELS).unwrap_or_default(),
            canonical_service: first(&CANONICAL_NAME_LABELS).unwrap_or_else(|| name.to_string()),
            canonical_revision: first(&CANONICAL_REVISION_LABELS)
                .unwrap_or_else(|| "latest".to_string()),
            cluster: cluster.to_string(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InboundConfig {
    pub default_mode: MtlsMode,
    #[serde(default)]
    pub ports: BTreeMap<u16, MtlsMode>,
    /// Container port -> hosts of the Services that target it: the `destination_service` an
    /// inbound connection is reported under (a meshed client names the one it dialled).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub services: BTreeMap<u16, Vec<String>>,
    /// Container port -> the protocol a Service targeting it declares (`appProtocol`, or a port
    /// name prefix `http`, `http2`, `grpc`, `grpc-web`); absent: TCP, or sniffed.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub protocols: BTreeMap<u16, Protocol>,
    /// The authorization policies that select this workload, compiled ([`crate::authz`]); the
    /// proxy evaluates them as they are, in this order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub authz: Vec<crate::authz::Policy>,
}

impl InboundConfig {
    /// The Service an inbound connection to `port` is reported under: the one the client
    /// says it dialled if that Service really targets the port, else the only one that does.
    pub fn destination_service(&self, port: u16, claimed: Option<&str>) -> Option<&str> {
        let hosts = self.services.get(&port)?;
        if let Some(c) = claimed
            && let Some(h) = hosts.iter().find(|h| h.as_str() == c)
        {
            return Some(h);
        }
        match hosts.as_slice() {
            [only] => Some(only),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct OutboundConfig {
    #[serde(default)]
    pub services: Vec<Service>,
    /// Headless Services (no ClusterIP): only their endpoints are routes, dialled by pod IP.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headless: Vec<Service>,
    #[serde(default)]
    pub policy: OutboundPolicy,
    /// Declared external services (ServiceEntries visible to this proxy, [`crate::route::egress`]):
    /// optional, so an older proxy ignores it and keeps treating them as unknown destinations.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<crate::route::egress::ExternalService>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Service {
    /// Required in `outbound.services`, absent in `outbound.headless`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_ip: Option<IpAddr>,
    pub port: u16,
    /// Host name, `<name>.<namespace>.svc.<domain>`: the `destination_service` label.
    pub name: String,
    #[serde(default)]
    pub protocol: Protocol,
    /// The port declares no protocol: the proxy tells HTTP from the first bytes the client
    /// sends (`protocol` is then `tcp`, which is what an older proxy uses).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub detect_protocol: bool,
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
    /// DestinationRule subsets: name -> indexes into `endpoints` ([`crate::route::model`]).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub subsets: BTreeMap<String, Vec<usize>>,
    /// HTTP routes, first match wins; none: every request to all `endpoints`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub http: Vec<crate::route::HttpRoute>,
    /// The client-side TLS a DestinationRule sets for this host (`trafficPolicy.tls.mode`);
    /// none: auto-mTLS ([`Endpoint::security`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ClientTls>,
    /// The same, per subset (a subset's `trafficPolicy.tls.mode`), for requests routed to it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub subset_tls: BTreeMap<String, ClientTls>,
    /// A DestinationRule's load balancing and outlier detection for this host.
    #[serde(default, skip_serializing_if = "crate::route::TrafficPolicy::is_empty")]
    pub traffic: crate::route::TrafficPolicy,
    /// The same per subset, already merged over `traffic`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub subset_traffic: BTreeMap<String, crate::route::TrafficPolicy>,
    /// VirtualService `tls`/`tcp` routes, for connections the proxy relays as bytes
    /// ([`crate::route::l4`]); none: every connection to all `endpoints`.
    #[serde(default, skip_serializing_if = "crate::route::l4::L4Table::is_empty")]
    pub l4: crate::route::l4::L4Table,
}

pub use crate::route::model::ClientTls;

impl Service {
    /// A Service of `name` and `port` with no address, endpoints, routes or policy yet: what
    /// the control plane lays a ServiceEntry host's routes, TLS policy or endpoints on.
    pub fn bare(name: String, port: u16, protocol: Protocol) -> Service {
        Service {
            cluster_ip: None,
            port,
            name,
            protocol,
            detect_protocol: false,
            endpoints: Vec::new(),
            subsets: BTreeMap::new(),
            http: Vec::new(),
            tls: None,
            subset_tls: BTreeMap::new(),
            traffic: Default::default(),
            subset_traffic: BTreeMap::new(),
            l4: Default::default(),
        }
    }

    /// The traffic policy for requests routed to `subset` (or to the whole host).
    pub fn traffic_of(&self, subset: Option<&str>) -> &crate::route::TrafficPolicy {
        subset
            .and_then(|s| self.subset_traffic.get(s))
            .unwrap_or(&self.traffic)
    }

    /// Whether requests to `subset` (the host's own settings without one) originate TLS
    /// (a DestinationRule's SIMPLE or MUTUAL), as [`Service::security_of`] decides.
    pub fn originates(&self, subset: Option<&str>) -> bool {
        matches!(
            self.client_tls(subset).0,
            Some(ClientTls::Simple | ClientTls::Mutual)
        )
    }

    /// The DestinationRule's TLS mode for `subset` (the subset's first, else the host's) and
    /// the origination settings that travel beside it.
    fn client_tls(
        &self,
        subset: Option<&str>,
    ) -> (
        Option<&ClientTls>,
        Option<&crate::route::model::Origination>,
    ) {
        match subset.and_then(|s| self.subset_tls.get(s)) {
            Some(m) => (Some(m), self.traffic_of(subset).origination.as_ref()),
            None => (self.tls.as_ref(), self.traffic.origination.as_ref()),
        }
    }

    /// How the outbound side talks to `ep` of this Service, for a request routed to `subset`:
    /// the DestinationRule's mode if it sets one (the subset's first), else auto-mTLS. An
    /// endpoint without a mesh identity stays plaintext under ISTIO_MUTUAL: there is no
    /// identity to verify (Istio would fail the handshake; docs/traffic.md).
    pub fn security_of(&self, ep: &Endpoint, subset: Option<&str>) -> UpstreamSecurity {
        // SIMPLE/MUTUAL settings travel in the traffic policy (a subset's merged over the
        // host's), beside the mode that asks for them.
        let (mode, origination) = self.client_tls(subset);
        match (mode, &ep.identity) {
            (None, _) => ep.security(),
            (Some(m @ (ClientTls::Simple | ClientTls::Mutual)), _) => UpstreamSecurity::Originate {
                mutual: *m == ClientTls::Mutual,
                host: self.name.clone(),
                settings: origination.cloned().unwrap_or_default(),
            },
            (Some(ClientTls::Disable), _) | (Some(ClientTls::IstioMutual), None) => {
                UpstreamSecurity::Plaintext
            }
            (Some(ClientTls::IstioMutual), Some(identity)) => UpstreamSecurity::Mtls {
                identity: identity.clone(),
            },
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    pub ip: IpAddr,
    pub port: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    pub meshed: bool,
    /// The server's effective mode for this port; DISABLE turns auto-mTLS off towards it.
    #[serde(default)]
    pub mtls_mode_for_port: MtlsMode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<WorkloadMeta>,
}

/// How the outbound side talks to one endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamSecurity {
    /// mTLS with ALPN `weft/1`; the server must present exactly this SPIFFE identity.
    Mtls {
        identity: String,
    },
    Plaintext,
    /// TLS origination (DestinationRule SIMPLE / MUTUAL): TLS to the server of `host`,
    /// verified as `settings` say, with the client certificate when `mutual`.
    Originate {
        mutual: bool,
        host: String,
        settings: crate::route::model::Origination,
    },
}

impl Endpoint {
    /// Auto-mTLS as Istio computes it: meshed peers get mTLS unless their port is DISABLE.
    pub fn security(&self) -> UpstreamSecurity {
        match (&self.identity, self.meshed, self.mtls_mode_for_port) {
            (Some(identity), true, MtlsMode::Permissive | MtlsMode::Strict) => {
                UpstreamSecurity::Mtls {
                    identity: identity.clone(),
                }
            }
            _ => UpstreamSecurity::Plaintext,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.ip, self.port)
    }
}

/// The bytes `snapshot` takes as compact JSON, counted without writing them anywhere, or
/// [`SnapshotError::TooLarge`] once past [`MAX_SNAPSHOT_BYTES`] (counting stops there). A
/// snapshot rebuilt from deltas is held to the same limit as a whole line: without it, deltas
/// that keep everything and add more would grow a proxy's config past any bound.
pub fn check_encoded_size(snapshot: &ProxySnapshot) -> Result<usize, SnapshotError> {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            if self.0 > MAX_SNAPSHOT_BYTES {
                return Err(std::io::Error::other("over the snapshot limit"));
            }
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    match serde_json::to_writer(&mut count, snapshot) {
        Ok(()) => Ok(count.0),
        Err(_) => Err(SnapshotError::TooLarge {
            size: count.0,
            max: MAX_SNAPSHOT_BYTES,
        }),
    }
}

/// Decodes and validates a snapshot from untrusted bytes. Never panics.
pub fn decode_snapshot(bytes: &[u8]) -> Result<ProxySnapshot, SnapshotError> {
    if bytes.len() > MAX_SNAPSHOT_BYTES {
        return Err(SnapshotError::TooLarge {
            size: bytes.len(),
            max: MAX_SNAPSHOT_BYTES,
        });
    }
    // Read the schema version first so a future schema gets the clear error, not a field one.
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Versioned {
        schema_version: u32,
    }
    let versioned: Versioned = serde_json::from_slice(bytes)?;
    if versioned.schema_version != SNAPSHOT_SCHEMA_VERSION {
        return Err(SnapshotError::UnsupportedSchema {
            got: versioned.schema_version,
            supported: SNAPSHOT_SCHEMA_VERSION,
        });
    }
    let snapshot: ProxySnapshot = serde_json::from_slice(bytes)?;
    snapshot.validate()?;
    Ok(snapshot)
}

// === impl ProxySnapshot ===

impl ProxySnapshot {
    pub fn validate(&self) -> Result<(), SnapshotError> {
        let invalid = |msg: String| Err(SnapshotError::Invalid(msg));
        if self.version.is_empty()
            || self.version.len() > MAX_VERSION_LEN
            || !self.version.chars().all(|c| c.is_ascii_graphic())
        {
            return invalid(format!(
                "version must be 1 to {MAX_VERSION_LEN} printable ASCII characters, got {:?}",
                truncate(&self.version)
            ));
        }
        if !is_valid_trust_domain(&self.trust_domain) {
            return invalid(format!(
                "trustDomain {:?} is not a DNS-like name (lowercase letters, digits, '.', '-', '_')",
                truncate(&self.trust_domain)
            ));
        }
        match spiffe_trust_domain(&self.identity) {
            Some(td) if td == self.trust_domain => {}
            Some(td) => {
                return invalid(format!(
                    "identity {:?} is in trust domain {td:?}, not the snapshot's {:?}",
                    self.identity, self.trust_domain
                ));
            }
            None => {
                return invalid(format!(
                    "identity {:?} is not a SPIFFE ID (spiffe://<trust domain>/<path>)",
                    truncate(&self.identity)
                ));
            }
        }
        if self.inbound.ports.contains_key(&0) {
            return invalid("inbound.ports has port 0".into());
        }
        for (port, hosts) in &self.inbound.services {
            if *port == 0 {
                return invalid("inbound.services has port 0".into());
            }
            if let Some(h) = hosts.iter().find(|h| !is_valid_host(h)) {
                return invalid(format!(
                    "inbound.services[{port}] has {:?}, not a Service host name",
                    truncate(h)
                ));
            }
        }
        let mut seen = HashMap::new();
        for (i, svc) in self.outbound.services.iter().enumerate() {
            let at = format!("outbound.services[{i}]");
            let Some(ip) = svc.cluster_ip else {
                return invalid(format!(
                    "{at} ({}) has no clusterIp (headless Services go in outbound.headless)",
                    svc.name
                ));
            };
            if let Some(first) = seen.insert((ip, svc.port), i) {
                return invalid(format!(
                    "{at} and [{first}] both claim {}",
                    SocketAddr::new(ip, svc.port)
                ));
            }
            validate_service(&at, svc)?;
        }
        for (i, svc) in self.outbound.headless.iter().enumerate() {
            let at = format!("outbound.headless[{i}]");
            if svc.cluster_ip.is_some() {
                return invalid(format!(
                    "{at} ({}) has a clusterIp: it belongs in outbound.services",
                    svc.name
                ));
            }
            validate_service(&at, svc)?;
        }
        Ok(())
    }

    /// The mode of an inbound (container) port.
    pub fn inbound_mode(&self, port: u16) -> MtlsMode {
        self.inbound
            .ports
            .get(&port)
            .copied()
            .unwrap_or(self.inbound.default_mode)
    }
}

fn validate_service(at: &str, svc: &Service) -> Result<(), SnapshotError> {
    let invalid = |msg: String| Err(SnapshotError::Invalid(msg));
    if svc.port == 0 {
        return invalid(format!("{at} ({}) has port 0", svc.name));
    }
    for (name, members) in &svc.subsets {
        if let Some(i) = members.iter().find(|i| **i >= svc.endpoints.len()) {
            return invalid(format!(
                "{at}.subsets[{name}] names endpoint {i}; the Service has {}",
                svc.endpoints.len()
            ));
        }
    }
    if let Err(e) = crate::route::model::validate(at, &svc.http) {
        return invalid(e);
    }
    if let Err(e) = crate::route::l4::validate(at, &svc.l4) {
        return invalid(e);
    }
    for (j, ep) in svc.endpoints.iter().enumerate() {
        if ep.port == 0 {
            return invalid(format!("{at}.endpoints[{j}] has port 0"));
        }
        match &ep.identity {
            Some(id) if spiffe_trust_domain(id).is_none() => {
                return invalid(format!(
                    "{at}.endpoints[{j}].identity {:?} is not a SPIFFE ID",
                    truncate(id)
                ));
            }
            None if ep.meshed => {
                return invalid(format!(
                    "{at}.endpoints[{j}] is meshed but has no identity to verify"
                ));
            }
            _ => {}
        }
    }
    Ok(())
}

/// A Service host as the operator writes it: DNS labels, `<name>.<namespace>.svc.<domain>`.
pub fn is_valid_host(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        })
}

fn truncate(s: &str) -> String {
    s.chars().take(80).collect()
}

fn is_valid_trust_domain(td: &str) -> bool {
    !td.is_empty()
        && td.len() <= 255
        && td
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_'))
}

/// The trust domain of a SPIFFE ID, or `None` when it is not one.
pub fn spiffe_trust_domain(id: &str) -> Option<&str> {
    let rest = id.strip_prefix("spiffe://")?;
    let (td, path) = rest.split_once('/')?;
    if !is_valid_trust_domain(td) || path.is_empty() || id.len() > 2048 {
        return None;
    }
    Some(td)
}

/// The namespace of an Istio-shaped SPIFFE ID (`spiffe://td/ns/<ns>/sa/<sa>`).
pub fn spiffe_namespace(id: &str) -> Option<&str> {
    let rest = id.strip_prefix("spiffe://")?;
    let mut parts = rest.split('/').skip(1);
    match (parts.next(), parts.next()) {
        (Some("ns"), Some(ns)) if !ns.is_empty() => Some(ns),
        _ => None,
    }
}

// === impl SnapshotIndex ===

/// Where one HTTP request goes, after the Service's routes ([`SnapshotIndex::route_request`]).
#[derive(Debug)]
pub enum RequestRoute<'a> {
    /// The destination's Service and its endpoints (or its subset's) in the order to try
    /// them; empty: none is ready (503 `UH`). `routed`: the route and destination that led
    /// there, when the Service has routes.
    Endpoints {
        service: &'a Service,
        endpoints: Vec<&'a Endpoint>,
        routed: Option<Routed<'a>>,
    },
    /// The chosen route answers with this redirect, under its CORS policy if it has one.
    Redirect(
        &'a crate::route::action::Redirect,
        Option<&'a crate::route::cors::CorsPolicy>,
    ),
    /// The chosen route answers with this status itself (its `directResponse`).
    Direct(&'a crate::route::action::DirectResponse),
    /// The Service has routes and none takes the request (404 `NR`).
    NoRoute,
    /// The chosen route names a Service port or subset the snapshot does not have (503 `NR`).
    NoDestination(String),
}

/// The route that took a request, the condition that matched it and the destination picked.
#[derive(Debug, Clone, Copy)]
pub struct Routed<'a> {
    pub route: &'a crate::route::HttpRoute,
    pub matched: Option<&'a crate::route::RequestMatch>,
    pub destination: &'a crate::route::Destination,
}

/// Where an outbound connection goes, decided from the original destination alone.
#[derive(Debug)]
pub enum OutboundRoute<'a> {
    /// A Service ClusterIP: endpoints in the order to try them (round robin start).
    Service {
        service: &'a Service,
        endpoints: Vec<&'a Endpoint>,
    },
    /// A known endpoint addressed directly (pod IP): it still gets auto-mTLS.
    Endpoint {
        service: &'a Service,
        endpoint: &'a Endpoint,
    },
    /// Unknown destination under ALLOW_ANY: connect to it as the app asked.
    Passthrough,
    /// Unknown destination under REGISTRY_ONLY.
    Refused,
}

/// A subset of a Service: its name and its members (indexes into the Service's endpoints).
type Members<'a> = (&'a str, &'a [usize]);

/// A validated snapshot with the lookups the data path needs, built once per snapshot.
#[derive(Debug)]
pub struct SnapshotIndex {
    pub snapshot: ProxySnapshot,
    services: HashMap<SocketAddr, usize>,
    /// Pod IP:port -> (service, endpoint); services numbered over `outbound.services` then
    /// `outbound.headless`.
    endpoints: HashMap<SocketAddr, (usize, usize)>,
    /// (host, port) -> service, for route destinations.
    hosts: HashMap<String, Vec<(u16, usize)>>,
    /// Round-robin position per service, numbered as `endpoints` numbers them.
    next: Vec<AtomicUsize>,
    /// Round-robin position per subset (service number, subset name): a subset's requests
    /// must not share the service's counter, which every request to the Service address
    /// advances too (with two members, each request would advance it by two and land on
    /// the same pod every time).
    subset_next: HashMap<(usize, String), AtomicUsize>,
    /// Draws for weighted route destinations ([`crate::route::select::roll`]).
    rolls: std::sync::atomic::AtomicU64,
    /// The inbound policies' prefilter, made at the first request that needs it.
    inbound_prefilter: std::sync::OnceLock<crate::authz::Prefilter>,
}

impl SnapshotIndex {
    pub fn new(mut snapshot: ProxySnapshot) -> Self {
        // An egress gateway's ServiceEntry destinations are routed to as Services without an
        // address (route::gateway::GatewayConfig::external); they replace a sidecar's
        // address-less Service of the same host and port, whose routes a gateway never uses.
        if let Some(g) = snapshot.gateway.as_mut() {
            for ext in std::mem::take(&mut g.external) {
                let headless = &mut snapshot.outbound.headless;
                match headless
                    .iter_mut()
                    .find(|s| s.name == ext.name && s.port == ext.port)
                {
                    Some(s) => *s = ext,
                    None => headless.push(ext),
                }
            }
        }
        let mut services = HashMap::new();
        let mut endpoints = HashMap::new();
        let out = &snapshot.outbound;
        let numbered = || out.services.iter().chain(&out.headless).enumerate();
        for (i, svc) in numbered() {
            if let Some(ip) = svc.cluster_ip {
                services.insert(SocketAddr::new(ip, svc.port), i);
            }
        }
        // A pod address dialled directly came from a headless Service's DNS name more likely
        // than from anything else: a headless Service that lists it names the route, else the
        // first ClusterIP Service that does.
        let headless_first = numbered()
            .skip(out.services.len())
            .chain(numbered().take(out.services.len()));
        for (i, svc) in headless_first {
            for (j, ep) in svc.endpoints.iter().enumerate() {
                endpoints.entry(ep.addr()).or_insert((i, j));
            }
        }
        let mut hosts: HashMap<String, Vec<(u16, usize)>> = HashMap::new();
        for (i, svc) in numbered() {
            hosts
                .entry(svc.name.clone())
                .or_default()
                .push((svc.port, i));
        }
        let next = numbered().map(|_| AtomicUsize::new(0)).collect();
        let subset_next = numbered()
            .flat_map(|(i, svc)| {
                svc.subsets
                    .keys()
                    .map(move |name| ((i, name.clone()), AtomicUsize::new(0)))
            })
            .collect();
        SnapshotIndex {
            snapshot,
            services,
            endpoints,
            hosts,
            next,
            subset_next,
            rolls: std::sync::atomic::AtomicU64::new(0),
            inbound_prefilter: std::sync::OnceLock::new(),
        }
    }

    /// The [`crate::authz::Prefilter`] of the inbound policies: made once per config, read
    /// without a lock by every request after the first.
    pub fn inbound_prefilter(&self) -> &crate::authz::Prefilter {
        self.inbound_prefilter
            .get_or_init(|| crate::authz::Prefilter::new(&self.snapshot.inbound.authz))
    }

    pub fn version(&self) -> &str {
        &self.snapshot.version
    }

    /// The Service of host `name` on `port` (a route destination's lookup), if any.
    pub fn service_named(&self, name: &str, port: u16) -> Option<&Service> {
        let &(_, i) = self.hosts.get(name)?.iter().find(|(p, _)| *p == port)?;
        Some(self.service(i))
    }

    /// Service `i`'s endpoints, or the `members` of one subset (indexes into them), from the
    /// next round-robin position.
    fn rotated(&self, i: usize, members: Option<Members<'_>>) -> Vec<&Endpoint> {
        let svc = self.service(i);
        let counter = match members {
            Some((name, _)) => self.subset_next.get(&(i, name.to_string())),
            None => self.next.get(i),
        };
        let members = members.map(|(_, m)| m);
        let n = members.map_or(svc.endpoints.len(), <[usize]>::len);
        let start = match counter {
            Some(c) if n > 0 => c.fetch_add(1, Ordering::Relaxed) % n,
            _ => 0,
        };
        (0..n)
            .filter_map(|k| {
                let at = (start + k) % n;
                svc.endpoints.get(members.map_or(at, |m| m[at]))
            })
            .collect()
    }

    /// The Service a route destination names and its subset's members (None: every endpoint);
    /// None when the snapshot has no such Service port or subset.
    fn resolve<'a>(
        &'a self,
        d: &'a crate::route::Destination,
    ) -> Option<(usize, Option<Members<'a>>)> {
        let &(_, i) = self
            .hosts
            .get(d.service.as_str())?
            .iter()
            .find(|(port, _)| *port == d.port)?;
        let members = match &d.subset {
            Some(name) => Some((name.as_str(), self.service(i).subsets.get(name)?.as_slice())),
            None => None,
        };
        Some((i, members))
    }

    /// Routes one HTTP request to `service` (the Service the client dialled, with its
    /// endpoints from [`Self::route`]): through its routes if it has any, else as dialled.
    /// A uniform 64-bit draw for per-request choices (weights, fault shares, back-off).
    pub fn roll(&self) -> u64 {
        crate::route::select::roll(self.rolls.fetch_add(1, Ordering::Relaxed))
    }

    pub fn route_request<'a>(
        &'a self,
        service: &'a Service,
        endpoints: Vec<&'a Endpoint>,
        req: &crate::route::RequestView<'_>,
    ) -> RequestRoute<'a> {
        if service.http.is_empty() {
            return RequestRoute::Endpoints {
                service,
                endpoints,
                routed: None,
            };
        }
        self.route_on(&service.http, Some((service, endpoints)), req)
    }

    /// A request on a route table that belongs to no Service (a gateway's virtual host).
    pub fn route_table<'a>(
        &'a self,
        routes: &'a [crate::route::HttpRoute],
        req: &crate::route::RequestView<'_>,
    ) -> RequestRoute<'a> {
        if routes.is_empty() {
            return RequestRoute::NoRoute;
        }
        self.route_on(routes, None, req)
    }

    /// The first route of `routes` that takes the request, and its weighted destination.
    /// `dialled`: the Service whose table this is and its endpoints already rotated.
    fn route_on<'a>(
        &'a self,
        routes: &'a [crate::route::HttpRoute],
        dialled: Option<(&'a Service, Vec<&'a Endpoint>)>,
        req: &crate::route::RequestView<'_>,
    ) -> RequestRoute<'a> {
        use crate::route::{Choice, choose_route, pick_weighted, select::roll};
        let (route, matched) = match choose_route(routes, req) {
            Choice::Route { route, matched, .. } => (route, matched),
            Choice::NoRoute => return RequestRoute::NoRoute,
        };
        if let Some(redirect) = &route.actions.redirect {
            return RequestRoute::Redirect(redirect, route.actions.cors.as_ref());
        }
        if let Some(direct) = &route.actions.direct_response {
            return RequestRoute::Direct(direct);
        }
        let draw = roll(self.rolls.fetch_add(1, Ordering::Relaxed));
        let has_endpoints = |d: &crate::route::Destination| {
            self.resolve(d).is_some_and(|(i, members)| {
                members.map_or(self.service(i).endpoints.len(), |(_, m)| m.len()) > 0
            })
        };
        // A destination without endpoints gives its share to the others; with none left, the
        // first destination by weight decides what the client is told.
        let chosen = pick_weighted(&route.destinations, draw, has_endpoints)
            .or_else(|| pick_weighted(&route.destinations, draw, |_| true));
        let Some(d) = chosen else {
            return RequestRoute::NoDestination(route.name.clone());
        };
        match self.resolve(d) {
            Some((i, members)) => RequestRoute::Endpoints {
                service: self.service(i),
                // The dialled Service as a whole: its endpoints were rotated for this request
                // already (by `route`); rotating again would step its counter twice.
                endpoints: match dialled {
                    Some((service, endpoints))
                        if members.is_none() && std::ptr::eq(self.service(i), service) =>
                    {
                        endpoints
                    }
                    _ => self.rotated(i, members),
                },
                routed: Some(Routed {
                    route,
                    matched,
                    destination: d,
                }),
            },
            None => RequestRoute::NoDestination(format!(
                "{}: {}:{}{}",
                route.name,
                d.service,
                d.port,
                d.subset
                    .as_deref()
                    .map(|s| format!(" subset {s}"))
                    .unwrap_or_default()
            )),
        }
    }

    /// Whether a route destination names a Service port (and subset) of this snapshot with an
    /// endpoint, without stepping its round robin.
    pub fn has_endpoints(&self, d: &crate::route::Destination) -> bool {
        self.resolve(d).is_some_and(|(i, members)| {
            members.map_or(self.service(i).endpoints.len(), |(_, m)| m.len()) > 0
        })
    }

    /// A mirror's destination: its Service and the endpoints (of its subset) in the order to
    /// try them; None when the snapshot has no such Service port.
    pub fn mirror_endpoints<'a>(
        &'a self,
        d: &'a crate::route::Destination,
    ) -> Option<(&'a Service, Vec<&'a Endpoint>)> {
        let (i, members) = self.resolve(d)?;
        Some((self.service(i), self.rotated(i, members)))
    }

    fn service(&self, i: usize) -> &Service {
        let out = &self.snapshot.outbound;
        match out.services.get(i) {
            Some(svc) => svc,
            None => &out.headless[i - out.services.len()],
        }
    }

    pub fn route(&self, dst: SocketAddr) -> OutboundRoute<'_> {
        if let Some(&i) = self.services.get(&dst) {
            let svc = self.service(i);
            return OutboundRoute::Service {
                service: svc,
                endpoints: self.rotated(i, None),
            };
        }
        if let Some(&(i, j)) = self.endpoints.get(&dst) {
            let svc = self.service(i);
            return OutboundRoute::Endpoint {
                service: svc,
                endpoint: &svc.endpoints[j],
            };
        }
        match self.snapshot.outbound.policy {
            OutboundPolicy::AllowAny => OutboundRoute::Passthrough,
            OutboundPolicy::RegistryOnly => OutboundRoute::Refused,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn valid() -> serde_json::Value {
        json!({
            "schemaVersion": 1,
            "version": "sha256:abc",
            "identity": "spiffe://cluster.local/ns/pets/sa/web",
            "trustDomain": "cluster.local",
            "inbound": { "defaultMode": "PERMISSIVE", "ports": { "8080": "STRICT" } },
            "outbound": {
                "policy": "REGISTRY_ONLY",
                "services": [{
                    "clusterIp": "198.19.0.10", "port": 80, "name": "db.pets.svc.cluster.local",
                    "endpoints": [
                        { "ip": "198.18.0.7", "port": 8080, "meshed": true,
                          "identity": "spiffe://cluster.local/ns/pets/sa/db" },
                        { "ip": "198.18.0.8", "port": 8080, "meshed": false },
                        { "ip": "198.18.0.9", "port": 8080, "meshed": true,
                          "identity": "spiffe://cluster.local/ns/pets/sa/db",
                          "mtlsModeForPort": "DISABLE" }
                    ]
                }]
            }
        })
    }

    fn decode(v: &serde_json::Value) -> Result<ProxySnapshot, SnapshotError> {
        decode_snapshot(v.to_string().as_bytes())
    }

    #[test]
    fn a_destination_rules_tls_mode_overrides_auto_mtls_per_host_and_subset() {
        let ep = |identity: Option<&str>, mode: MtlsMode| Endpoint {
            ip: "198.18.0.9".parse().unwrap(),
            port: 8080,
            identity: identity.map(str::to_string),
            meshed: identity.is_some(),
            mtls_mode_for_port: mode,
            workload: None,
        };
        let id = "spiffe://cluster.local/ns/shop/sa/reviews";
        let strict = ep(Some(id), MtlsMode::Strict);
        let disabled_port = ep(Some(id), MtlsMode::Disable);
        let unmeshed = ep(None, MtlsMode::Permissive);
        let mut svc = Service {
            cluster_ip: None,
            port: 9080,
            name: "reviews.shop.svc.cluster.local".into(),
            protocol: Protocol::Http,
            detect_protocol: false,
            endpoints: vec![],
            subsets: BTreeMap::new(),
            http: vec![],
            tls: None,
            subset_tls: BTreeMap::new(),
            traffic: Default::default(),
            subset_traffic: BTreeMap::new(),
            l4: Default::default(),
        };
        let mtls = UpstreamSecurity::Mtls {
            identity: id.into(),
        };
        // No rule: auto-mTLS.
        assert_eq!(svc.security_of(&strict, None), mtls);
        assert_eq!(
            svc.security_of(&disabled_port, None),
            UpstreamSecurity::Plaintext
        );
        // DISABLE: plaintext even to a STRICT server (which refuses it).
        svc.tls = Some(ClientTls::Disable);
        assert_eq!(svc.security_of(&strict, None), UpstreamSecurity::Plaintext);
        // A subset's ISTIO_MUTUAL wins for requests routed to it.
        svc.subset_tls.insert("v2".into(), ClientTls::IstioMutual);
        assert_eq!(svc.security_of(&strict, Some("v2")), mtls);
        assert_eq!(svc.security_of(&disabled_port, Some("v2")), mtls);
        assert_eq!(
            svc.security_of(&strict, Some("v1")),
            UpstreamSecurity::Plaintext
        );
        // No identity to verify: plaintext.
        assert_eq!(
            svc.security_of(&unmeshed, Some("v2")),
            UpstreamSecurity::Plaintext
        );
        assert!(!svc.originates(None) && !svc.originates(Some("v2")));
        // SIMPLE on a subset: only its requests originate TLS.
        svc.subset_tls.insert("v3".into(), ClientTls::Simple);
        assert!(svc.originates(Some("v3")) && !svc.originates(Some("v1")));
        assert!(matches!(
            svc.security_of(&strict, Some("v3")),
            UpstreamSecurity::Originate { mutual: false, .. }
        ));
    }

    #[test]
    fn a_valid_snapshot_decodes_with_defaults_filled() {
        let s = decode(&valid()).unwrap();
        assert_eq!(s.inbound_mode(8080), MtlsMode::Strict);
        assert_eq!(s.inbound_mode(9090), MtlsMode::Permissive);
        assert_eq!(s.outbound.services[0].protocol, Protocol::Tcp);
        assert_eq!(
            s.outbound.services[0].endpoints[0].mtls_mode_for_port,
            MtlsMode::Permissive
        );
    }

    #[test]
    fn a_snapshot_round_trips_through_json() {
        let s = decode(&valid()).unwrap();
        let again = decode_snapshot(&serde_json::to_vec(&s).unwrap()).unwrap();
        assert_eq!(s, again);
    }

    #[test]
    fn bad_snapshots_are_rejected_with_a_reason() {
        type Edit = fn(&mut serde_json::Value);
        let cases: &[(&str, Edit, &str)] = &[
            (
                "future schema",
                |v| v["schemaVersion"] = json!(2),
                "schema_version",
            ),
            ("empty version", |v| v["version"] = json!(""), "invalid"),
            (
                "identity not spiffe",
                |v| v["identity"] = json!("web"),
                "invalid",
            ),
            (
                "identity in another trust domain",
                |v| v["identity"] = json!("spiffe://other.local/ns/a/sa/b"),
                "invalid",
            ),
            (
                "bad mode",
                |v| v["inbound"]["defaultMode"] = json!("LAX"),
                "json",
            ),
            (
                "port 0 inbound",
                |v| v["inbound"]["ports"] = json!({"0": "STRICT"}),
                "invalid",
            ),
            (
                "port out of range",
                |v| v["inbound"]["ports"] = json!({"70000": "STRICT"}),
                "json",
            ),
            (
                "meshed endpoint without identity",
                |v| {
                    v["outbound"]["services"][0]["endpoints"][0]
                        .as_object_mut()
                        .unwrap()
                        .remove("identity");
                },
                "invalid",
            ),
            (
                "duplicate service",
                |v| {
                    let svc = v["outbound"]["services"][0].clone();
                    v["outbound"]["services"].as_array_mut().unwrap().push(svc);
                },
                "invalid",
            ),
            (
                "service without clusterIp",
                |v| {
                    v["outbound"]["services"][0]
                        .as_object_mut()
                        .unwrap()
                        .remove("clusterIp");
                },
                "invalid",
            ),
            (
                "headless service with a clusterIp",
                |v| {
                    let svc = v["outbound"]["services"][0].clone();
                    v["outbound"]["headless"] = json!([svc]);
                },
                "invalid",
            ),
            (
                "inbound service that is not a host",
                |v| v["inbound"]["services"] = json!({"8080": ["Web Service"]}),
                "invalid",
            ),
            (
                "missing inbound",
                |v| {
                    v.as_object_mut().unwrap().remove("inbound");
                },
                "json",
            ),
        ];
        for (name, edit, label) in cases {
            let mut v = valid();
            edit(&mut v);
            let err = decode(&v).expect_err(name);
            assert_eq!(err.metric_label(), *label, "{name}: {err}");
        }
    }

    #[test]
    fn garbage_and_oversized_input_are_errors_not_panics() {
        for bytes in [
            &b""[..],
            b"{",
            b"null",
            b"[]",
            b"\xff\xfe",
            b"{\"schemaVersion\": -1}",
        ] {
            assert!(decode_snapshot(bytes).is_err());
        }
        let big = vec![b' '; MAX_SNAPSHOT_BYTES + 1];
        assert_eq!(
            decode_snapshot(&big).unwrap_err().metric_label(),
            "too_large"
        );
    }

    #[test]
    fn unknown_fields_are_ignored_for_forward_compatibility() {
        let mut v = valid();
        v["futureField"] = json!({"x": 1});
        assert!(decode(&v).is_ok());
    }

    #[test]
    fn auto_mtls_follows_mesh_membership_and_the_server_mode() {
        let s = decode(&valid()).unwrap();
        let eps = &s.outbound.services[0].endpoints;
        assert_eq!(
            eps[0].security(),
            UpstreamSecurity::Mtls {
                identity: "spiffe://cluster.local/ns/pets/sa/db".into()
            }
        );
        assert_eq!(eps[1].security(), UpstreamSecurity::Plaintext);
        assert_eq!(eps[2].security(), UpstreamSecurity::Plaintext);
    }

    #[test]
    fn routes_balance_services_and_honour_the_outbound_policy() {
        let index = SnapshotIndex::new(decode(&valid()).unwrap());
        let svc: SocketAddr = "198.19.0.10:80".parse().unwrap();
        let firsts: Vec<IpAddr> = (0..3)
            .map(|_| match index.route(svc) {
                OutboundRoute::Service { endpoints, .. } => endpoints[0].ip,
                other => panic!("expected a service route, got {other:?}"),
            })
            .collect();
        assert_eq!(
            firsts,
            ["198.18.0.7", "198.18.0.8", "198.18.0.9"]
                .map(|s| s.parse::<IpAddr>().unwrap())
                .to_vec()
        );
        assert!(matches!(
            index.route("198.18.0.7:8080".parse().unwrap()),
            OutboundRoute::Endpoint { .. }
        ));
        assert!(matches!(
            index.route("198.18.1.1:443".parse().unwrap()),
            OutboundRoute::Refused
        ));
        let mut allow = decode(&valid()).unwrap();
        allow.outbound.policy = OutboundPolicy::AllowAny;
        assert!(matches!(
            SnapshotIndex::new(allow).route("198.18.1.1:443".parse().unwrap()),
            OutboundRoute::Passthrough
        ));
    }

    /// Regression: a Service with routes (or a subset) of two endpoints sent every request to
    /// the same one, because each request stepped one round-robin counter twice.
    #[test]
    fn a_routed_request_steps_round_robin_once_for_the_service_and_for_each_subset() {
        let mut v = valid();
        let svc = &mut v["outbound"]["services"][0];
        svc["endpoints"] = json!([
            {"ip": "198.18.0.7", "port": 8080, "meshed": false},
            {"ip": "198.18.0.8", "port": 8080, "meshed": false},
            {"ip": "198.18.0.9", "port": 8080, "meshed": false},
            {"ip": "198.18.0.10", "port": 8080, "meshed": false}]);
        svc["subsets"] = json!({"pair": [1, 3]});
        let to = |subset: Option<&str>| {
            let mut d = json!({"service": "db.pets.svc.cluster.local", "port": 80, "weight": 100});
            if let Some(s) = subset {
                d["subset"] = json!(s);
            }
            d
        };
        svc["http"] = json!([
            {"name": "pets/db", "matches": [{"headers": {"x-pair": {"exact": "1"}}}],
             "destinations": [to(Some("pair"))]},
            {"name": "pets/db", "destinations": [to(None)]}]);
        let index = SnapshotIndex::new(decode(&v).unwrap());
        let addr: SocketAddr = "198.19.0.10:80".parse().unwrap();
        let pick = |pair: bool| {
            let headers: Vec<(String, String)> = if pair {
                vec![("x-pair".into(), "1".into())]
            } else {
                vec![]
            };
            let view = crate::route::RequestView {
                method: "GET",
                path: "/",
                query: None,
                port: 80,
                headers: &headers,
            };
            let OutboundRoute::Service { service, endpoints } = index.route(addr) else {
                panic!("a service route");
            };
            match index.route_request(service, endpoints, &view) {
                RequestRoute::Endpoints { endpoints, .. } => endpoints[0].ip.to_string(),
                other => panic!("{other:?}"),
            }
        };
        let whole: Vec<String> = (0..4).map(|_| pick(false)).collect();
        assert_eq!(
            whole,
            ["198.18.0.7", "198.18.0.8", "198.18.0.9", "198.18.0.10"]
        );
        let pair: Vec<String> = (0..4).map(|_| pick(true)).collect();
        assert_eq!(
            pair,
            ["198.18.0.8", "198.18.0.10", "198.18.0.8", "198.18.0.10"]
        );
    }

    #[test]
    fn headless_endpoints_are_routes_by_pod_ip_only() {
        let mut v = valid();
        v["outbound"]["headless"] = json!([{
            "port": 5432, "name": "pg.pets.svc.cluster.local",
            "endpoints": [{ "ip": "198.18.0.20", "port": 5432, "meshed": true,
                            "identity": "spiffe://cluster.local/ns/pets/sa/pg" }]
        }, {
            "port": 8080, "name": "db-peers.pets.svc.cluster.local",
            "endpoints": [{ "ip": "198.18.0.7", "port": 8080, "meshed": true,
                            "identity": "spiffe://cluster.local/ns/pets/sa/db" }]
        }]);
        let index = SnapshotIndex::new(decode(&v).unwrap());
        match index.route("198.18.0.20:5432".parse().unwrap()) {
            OutboundRoute::Endpoint { service, endpoint } => {
                assert_eq!(service.name, "pg.pets.svc.cluster.local");
                assert!(matches!(endpoint.security(), UpstreamSecurity::Mtls { .. }));
            }
            other => panic!("expected the headless endpoint, got {other:?}"),
        }
        // A pod behind both kinds of Service, dialled by IP: the headless one names it.
        match index.route("198.18.0.7:8080".parse().unwrap()) {
            OutboundRoute::Endpoint { service, .. } => {
                assert_eq!(service.name, "db-peers.pets.svc.cluster.local")
            }
            other => panic!("expected the headless endpoint, got {other:?}"),
        }
        // Still balanced: the ClusterIP table is unchanged by the headless one.
        assert!(matches!(
            index.route("198.19.0.10:80".parse().unwrap()),
            OutboundRoute::Service { .. }
        ));
        // Other pod IPs are still unknown (REGISTRY_ONLY here).
        assert!(matches!(
            index.route("198.18.0.21:5432".parse().unwrap()),
            OutboundRoute::Refused
        ));
    }

    #[test]
    fn the_inbound_destination_service_is_checked_against_the_port() {
        let mut v = valid();
        v["inbound"]["services"] = json!({
            "8080": ["db.pets.svc.cluster.local", "db-v2.pets.svc.cluster.local"],
            "9090": ["metrics.pets.svc.cluster.local"]
        });
        let s = decode(&v).unwrap();
        let inbound = &s.inbound;
        let db2 = "db-v2.pets.svc.cluster.local";
        assert_eq!(inbound.destination_service(8080, Some(db2)), Some(db2));
        // A claim of a Service that does not target the port is not believed.
        assert_eq!(
            inbound.destination_service(8080, Some("metrics.pets.svc.cluster.local")),
            None
        );
        assert_eq!(inbound.destination_service(8080, None), None);
        assert_eq!(
            inbound.destination_service(9090, None),
            Some("metrics.pets.svc.cluster.local")
        );
        assert_eq!(inbound.destination_service(7070, Some(db2)), None);
    }

    #[test]
    fn spiffe_ids_are_parsed_strictly() {
        assert_eq!(
            spiffe_trust_domain("spiffe://cluster.local/ns/a/sa/b"),
            Some("cluster.local")
        );
        assert_eq!(
            spiffe_namespace("spiffe://cluster.local/ns/a/sa/b"),
            Some("a")
        );
        for bad in [
            "spiffe://",
            "spiffe://td",
            "spiffe://td/",
            "http://td/x",
            "spiffe://TD/x",
        ] {
            assert_eq!(spiffe_trust_domain(bad), None, "{bad}");
        }
    }

    #[test]
    fn workload_metadata_comes_from_the_pod_labels_in_istios_order() {
        let labels = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        // (pod labels, app, version, canonical service, canonical revision)
        type Case<'a> = (&'a [(&'a str, &'a str)], &'a str, &'a str, &'a str, &'a str);
        let cases: &[Case] = &[
            (&[], "", "", "reviews-v2", "latest"),
            (
                &[("app", "reviews"), ("version", "v2")],
                "reviews",
                "v2",
                "reviews",
                "v2",
            ),
            (
                &[
                    ("app", "reviews"),
                    ("app.kubernetes.io/name", "reviews-k8s"),
                    ("version", "v2"),
                    ("app.kubernetes.io/version", "2.0.1"),
                ],
                "reviews-k8s",
                "2.0.1",
                "reviews-k8s",
                "2.0.1",
            ),
            // The canonical labels win for the canonical service only, not for app/version
            // (istio/proxy's productpage: app productpage, canonical productpage-v1).
            (
                &[
                    ("app", "productpage"),
                    ("version", "v1"),
                    ("service.istio.io/canonical-name", "productpage-v1"),
                    ("service.istio.io/canonical-revision", "version-1"),
                ],
                "productpage",
                "v1",
                "productpage-v1",
                "version-1",
            ),
            (
                &[("service.istio.io/canonical-name", "ratings")],
                "",
                "",
                "ratings",
                "latest",
            ),
        ];
        for (pairs, app, version, service, revision) in cases {
            let w = WorkloadMeta::from_labels("reviews-v2", "shop", &labels(pairs), "Kubernetes");
            assert_eq!(
                (
                    w.app.as_str(),
                    w.version.as_str(),
                    w.canonical_service.as_str(),
                    w.canonical_revision.as_str()
                ),
                (*app, *version, *service, *revision),
                "{pairs:?}"
            );
            assert_eq!(
                (w.name.as_str(), w.namespace.as_str()),
                ("reviews-v2", "shop")
            );
            assert_eq!(w.cluster, DEFAULT_CLUSTER);
        }
    }

    #[test]
    fn workload_metadata_without_the_later_fields_still_decodes() {
        let old: WorkloadMeta =
            serde_json::from_value(json!({ "name": "web", "namespace": "pets" })).unwrap();
        assert_eq!(
            old,
            WorkloadMeta {
                name: "web".into(),
                namespace: "pets".into(),
                ..Default::default()
            }
        );
        // Unknown fields stay out of the JSON, so an older operator's snapshot and a newer
        // one's for the same pod differ only where the newer one knows more.
        assert_eq!(
            serde_json::to_value(&old).unwrap(),
            json!({ "name": "web", "namespace": "pets" })
        );
        let full = WorkloadMeta::from_labels(
            "web",
            "pets",
            &[("app".to_string(), "web".to_string())].into(),
            DEFAULT_CLUSTER,
        );
        let json = serde_json::to_value(&full).unwrap();
        assert_eq!(json["canonicalService"], "web");
        assert_eq!(json["canonicalRevision"], "latest");
        assert_eq!(json["cluster"], "Kubernetes");
        assert_eq!(serde_json::from_value::<WorkloadMeta>(json).unwrap(), full);
    }
}
