//! The proxy's metrics, in one `prometheus-client` registry owned by the process context.
//! TCP metrics carry Istio's names and labels so dashboards and alerts built for Istio keep
//! working (SPEC §9); weft's own counters are prefixed `weft_`.

use std::sync::Arc;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use crate::snapshot::WorkloadMeta;

/// The bucket boundaries of all four of Istio's request histograms (milliseconds for the
/// duration, bytes for the sizes). Istio sets no `histogram_bucket_settings` unless a pod
/// asks for them (`sidecar.istio.io/statsHistogramBuckets`), so its sidecars export Envoy's
/// defaults: envoyproxy/envoy `source/common/stats/histogram_impl.cc`,
/// `HistogramSettingsImpl::defaultBuckets()`. (Mixer-era Istio had 1, 10, 100, ... for sizes;
/// the Envoy-based telemetry since 1.5 does not.)
const ENVOY_DEFAULT_BUCKETS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];

fn request_histogram() -> Histogram {
    Histogram::new(ENVOY_DEFAULT_BUCKETS)
}

#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Reporter {
    source,
    destination,
}

#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum SecurityPolicy {
    mutual_tls,
    none,
    /// The source reporter's value: istio/proxy's client-side stats never know the server's
    /// authentication policy, so Istio labels every source-reported series `unknown`.
    unknown,
}

#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Direction {
    inbound,
    outbound,
}

#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum HandshakeResult {
    success,
    failure,
}

/// Istio's standard TCP labels, in the order istio/proxy emits them (`testdata/metric/`).
/// The request metrics carry the same set plus two ([`RequestLabels`]).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TcpLabels {
    pub reporter: Reporter,
    pub source_workload: String,
    pub source_canonical_service: String,
    pub source_canonical_revision: String,
    pub source_workload_namespace: String,
    pub source_principal: String,
    pub source_app: String,
    pub source_version: String,
    pub source_cluster: String,
    pub destination_workload: String,
    pub destination_workload_namespace: String,
    pub destination_principal: String,
    pub destination_app: String,
    pub destination_version: String,
    pub destination_service: String,
    pub destination_canonical_service: String,
    pub destination_canonical_revision: String,
    pub destination_service_name: String,
    pub destination_service_namespace: String,
    pub destination_cluster: String,
    pub request_protocol: String,
    pub response_flags: String,
    pub connection_security_policy: SecurityPolicy,
}

pub const UNKNOWN: &str = "unknown";
/// Istio's canonical revision of a peer it knows nothing about.
pub const LATEST: &str = "latest";

/// The labels of one side (source or destination) of a connection, from its workload
/// metadata; what the metadata does not know gets Istio's value for an unknown peer.
struct Side {
    workload: String,
    namespace: String,
    app: String,
    version: String,
    canonical_service: String,
    canonical_revision: String,
    cluster: String,
}

impl Side {
    fn of(w: &WorkloadMeta) -> Side {
        let or = |v: &str, unknown: &str| if v.is_empty() { unknown } else { v }.to_string();
        Side {
            workload: or(&w.name, UNKNOWN),
            namespace: or(&w.namespace, UNKNOWN),
            app: or(&w.app, UNKNOWN),
            version: or(&w.version, UNKNOWN),
            canonical_service: or(&w.canonical_service, UNKNOWN),
            canonical_revision: or(&w.canonical_revision, LATEST),
            cluster: or(&w.cluster, UNKNOWN),
        }
    }
}

impl TcpLabels {
    /// Labels with every peer field unknown (`unknown`; the canonical revisions `latest`), for
    /// the caller to fill in. The source reporter's `connection_security_policy` is always
    /// `unknown`, whatever `security` says, as Istio reports it.
    pub fn new(reporter: Reporter, security: SecurityPolicy) -> Self {
        let u = || UNKNOWN.to_string();
        TcpLabels {
            reporter,
            source_workload: u(),
            source_canonical_service: u(),
            source_canonical_revision: LATEST.into(),
            source_workload_namespace: u(),
            source_principal: u(),
            source_app: u(),
            source_version: u(),
            source_cluster: u(),
            destination_workload: u(),
            destination_workload_namespace: u(),
            destination_principal: u(),
            destination_app: u(),
            destination_version: u(),
            destination_service: u(),
            destination_canonical_service: u(),
            destination_canonical_revision: LATEST.into(),
            destination_service_name: u(),
            destination_service_namespace: u(),
            destination_cluster: u(),
            request_protocol: "tcp".into(),
            response_flags: "-".into(),
            connection_security_policy: match reporter {
                Reporter::source => SecurityPolicy::unknown,
                Reporter::destination => security,
            },
        }
    }

    /// Sets every `source_*` label a workload's metadata gives (workload, namespace, app,
    /// version, canonical service and revision, cluster); the principal is the caller's.
    pub fn fill_source(&mut self, w: &WorkloadMeta) {
        let s = Side::of(w);
        self.source_workload = s.workload;
        self.source_workload_namespace = s.namespace;
        self.source_app = s.app;
        self.source_version = s.version;
        self.source_canonical_service = s.canonical_service;
        self.source_canonical_revision = s.canonical_revision;
        self.source_cluster = s.cluster;
    }

    /// Sets every `destination_*` label a workload's metadata gives (as [`Self::fill_source`];
    /// the `destination_service*` labels come from [`Self::with_service`]).
    pub fn fill_destination(&mut self, w: &WorkloadMeta) {
        let s = Side::of(w);
        self.destination_workload = s.workload;
        self.destination_workload_namespace = s.namespace;
        self.destination_app = s.app;
        self.destination_version = s.version;
        self.destination_canonical_service = s.canonical_service;
        self.destination_canonical_revision = s.canonical_revision;
        self.destination_cluster = s.cluster;
    }

    /// The service labels of traffic no Service took, as istio/proxy's stats filter reports
    /// it: `destination_service_name` is the cluster (`PassthroughCluster`,
    /// `BlackHoleCluster`), `destination_service` the request's Host when it has one.
    pub fn with_cluster(mut self, cluster: &str, host: Option<&str>) -> Self {
        self.destination_service_name = cluster.to_string();
        if let Some(host) = host {
            self.destination_service = host.to_string();
        }
        self
    }

    /// The service labels of a ServiceEntry host: pilot names such a service by its host, in
    /// the entry's namespace.
    pub fn with_external(mut self, host: &str, namespace: &str) -> Self {
        self.destination_service = host.to_string();
        self.destination_service_name = host.to_string();
        self.destination_service_namespace = namespace.to_string();
        self
    }

    /// Fills the service labels from a host name `<name>.<namespace>.svc...`.
    pub fn with_service(mut self, host: &str) -> Self {
        self.destination_service = host.to_string();
        let mut parts = host.split('.');
        if let (Some(name), Some(ns)) = (parts.next(), parts.next()) {
            self.destination_service_name = name.to_string();
            self.destination_service_namespace = ns.to_string();
        }
        self
    }
}

/// Istio's request labels (the same set on `istio_requests_total` and all three request
/// histograms): the TCP ones plus the response code and the gRPC status.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    #[prometheus(flatten)]
    pub tcp: TcpLabels,
    pub response_code: String,
    /// The response's `grpc-status` for a gRPC request; empty for any other request, as
    /// istio/proxy's `istio_stats` filter emits it (the label is always present).
    pub grpc_response_status: String,
}

/// What distinguishes one request's series from another's on the same connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestOutcome {
    pub status: u16,
    /// `request_protocol`: `http` (HTTP/1.x and h2) or `grpc`, as Istio reports them.
    pub grpc: bool,
    /// `grpc_response_status` of a gRPC request (see [`grpc_status`]); None otherwise.
    pub grpc_status: Option<i32>,
    /// `response_flags`: Envoy's short form (`UF` upstream connect failure, `UC` upstream
    /// connection termination), `-` for none.
    pub flags: &'static str,
}

impl RequestOutcome {
    pub fn http(status: u16) -> Self {
        RequestOutcome {
            status,
            grpc: false,
            grpc_status: None,
            flags: "-",
        }
    }
}

/// Envoy's gRPC status of a `grpc-status` value (`Grpc::Common::getGrpcStatus`): the number,
/// or -1 (`InvalidCode`) when it is not a number or beyond the last known code (16).
pub fn grpc_status_value(value: &[u8]) -> i32 {
    std::str::from_utf8(value)
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
        .filter(|code| *code <= 16)
        .map_or(-1, |code| code as i32)
}

/// The gRPC status of a response that carried none, from its HTTP status
/// (`Grpc::Utility::httpToGrpcStatus`, gRPC's http-grpc-status-mapping.md).
pub fn grpc_status_from_http(status: u16) -> i32 {
    match status {
        400 => 13,                   // INTERNAL
        401 => 16,                   // UNAUTHENTICATED
        403 => 7,                    // PERMISSION_DENIED
        404 => 12,                   // UNIMPLEMENTED
        429 | 502 | 503 | 504 => 14, // UNAVAILABLE
        _ => 2,                      // UNKNOWN
    }
}

/// A gRPC response's status as Istio reports it (Envoy's order): the trailers' `grpc-status`,
/// else the headers' (a trailers-only response), else one inferred from the HTTP status.
pub fn grpc_status(trailers: Option<&[u8]>, headers: Option<&[u8]>, http_status: u16) -> i32 {
    trailers
        .or(headers)
        .map_or_else(|| grpc_status_from_http(http_status), grpc_status_value)
}

/// The sizes of one request and its response, in bytes, for `istio_request_bytes` and
/// `istio_response_bytes` (how they are counted: the HTTP layer, `server::head_size`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sizes {
    pub request: u64,
    pub response: u64,
    /// gRPC messages each way (`istio_request_messages_total`, `istio_response_messages_total`;
    /// counted only for a gRPC request).
    pub request_messages: u64,
    pub response_messages: u64,
}

/// One label set's handles: the counter and the three histograms.
struct Series {
    outcome: RequestOutcome,
    requests: Counter,
    duration: Histogram,
    request_bytes: Histogram,
    response_bytes: Histogram,
    /// gRPC only.
    messages: Option<(Counter, Counter)>,
}

/// `istio_requests_total` and the request histograms of one connection
/// (see [`Metrics::request_recorder`]).
pub struct RequestRecorder {
    metrics: Arc<Metrics>,
    labels: TcpLabels,
    series: Vec<Series>,
}

impl RequestRecorder {
    /// Records one request; `sizes` None (the passive L4 observer, which does not measure
    /// them) leaves the size histograms alone.
    pub fn record(
        &mut self,
        outcome: RequestOutcome,
        duration: std::time::Duration,
        sizes: Option<Sizes>,
    ) {
        let at = match self.series.iter().position(|s| s.outcome == outcome) {
            Some(at) => at,
            None => {
                let mut tcp = self.labels.clone();
                tcp.request_protocol = if outcome.grpc { "grpc" } else { "http" }.into();
                tcp.response_flags = outcome.flags.into();
                let labels = RequestLabels {
                    tcp,
                    response_code: outcome.status.to_string(),
                    grpc_response_status: outcome
                        .grpc_status
                        .map(|s| s.to_string())
                        .unwrap_or_default(),
                };
                let m = &self.metrics;
                self.series.push(Series {
                    outcome,
                    requests: m.requests.get_or_create(&labels).clone(),
                    duration: m.request_duration.get_or_create(&labels).clone(),
                    request_bytes: m.request_bytes.get_or_create(&labels).clone(),
                    response_bytes: m.response_bytes.get_or_create(&labels).clone(),
                    messages: outcome.grpc.then(|| {
                        (
                            m.request_messages.get_or_create(&labels).clone(),
                            m.response_messages.get_or_create(&labels).clone(),
                        )
                    }),
                });
                self.series.len() - 1
            }
        };
        let s = &self.series[at];
        s.requests.inc();
        s.duration.observe(duration.as_secs_f64() * 1000.0);
        if let Some(sizes) = sizes {
            s.request_bytes.observe(sizes.request as f64);
            s.response_bytes.observe(sizes.response as f64);
            if let Some((requests, responses)) = &s.messages {
                requests.inc_by(sizes.request_messages);
                responses.inc_by(sizes.response_messages);
            }
        }
    }
}

/// OpenMetrics, what the registry encodes and what Prometheus asks for first.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Prometheus' older text format, for a scraper that asks only for it.
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The registry in the format the scraper's `Accept` header asks for, with its content type:
/// the Prometheus text format when it names `text/plain` and not OpenMetrics (a scraper
/// configured for the old format), OpenMetrics otherwise (Prometheus' default, `*/*`, none).
pub fn exposition(
    registry: &Registry,
    accept: Option<&str>,
) -> Result<(&'static str, String), std::fmt::Error> {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry)?;
    let accept = accept.unwrap_or("").to_ascii_lowercase();
    if accept.contains("text/plain") && !accept.contains("application/openmetrics-text") {
        Ok((PROMETHEUS_TEXT, to_prometheus_text(&text)))
    } else {
        Ok((OPENMETRICS, text))
    }
}

/// OpenMetrics as the registry writes it, in the Prometheus text format: a counter family's
/// HELP and TYPE name its samples (`<name>_total`), `unknown` is `untyped`, and the UNIT and
/// EOF lines go (that format has neither).
fn to_prometheus_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| Some((p, line.strip_prefix(p)?)));
        match meta {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                let tail = if tail == "unknown" { "untyped" } else { tail };
                let suffix = if counters.contains(name) {
                    "_total"
                } else {
                    ""
                };
                out.push_str(&format!("{prefix}{name}{suffix} {tail}"));
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// `istio_build`'s labels: which component and which release, as the Mesh dashboard lists
/// them.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    pub component: String,
    pub tag: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HandshakeLabels {
    pub direction: Direction,
    pub result: HandshakeResult,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusedLabels {
    pub direction: Direction,
    pub reason: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: String,
}

/// Most distinct workloads one proxy reports from its peers' metadata; later ones are
/// reported `unknown`, as Istio reports a peer it has no metadata for. A peer chooses these
/// names, so without a bound a hostile one could grow the proxy's series (and memory) with
/// fabricated ones; 1,000 is far above the callers one workload really has.
pub const MAX_PEER_WORKLOADS: usize = 1_000;

/// The peer workloads reported so far (hashes of their metadata), up to a bound.
pub struct PeerBudget {
    seen: std::sync::Mutex<std::collections::HashSet<u64>>,
    max: usize,
    overflow: Counter,
}

impl PeerBudget {
    pub fn new(max: usize) -> Self {
        PeerBudget {
            seen: std::sync::Mutex::new(std::collections::HashSet::new()),
            max,
            overflow: Counter::default(),
        }
    }

    /// Whether the labels of this peer workload may be reported: one already reported, or a
    /// new one while there is room.
    pub fn admit(&self, w: &WorkloadMeta) -> bool {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (
            &w.name,
            &w.namespace,
            &w.app,
            &w.version,
            &w.canonical_service,
            &w.canonical_revision,
            &w.cluster,
        )
            .hash(&mut h);
        let key = h.finish();
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.contains(&key) {
            return true;
        }
        if seen.len() < self.max {
            seen.insert(key);
            return true;
        }
        self.overflow.inc();
        false
    }
}

pub struct Metrics {
    /// Bounds the peer-named label values ([`MAX_PEER_WORKLOADS`]).
    pub peers: PeerBudget,
    pub requests: Family<RequestLabels, Counter>,
    pub request_duration: Family<RequestLabels, Histogram, fn() -> Histogram>,
    pub request_bytes: Family<RequestLabels, Histogram, fn() -> Histogram>,
    pub response_bytes: Family<RequestLabels, Histogram, fn() -> Histogram>,
    pub request_messages: Family<RequestLabels, Counter>,
    pub response_messages: Family<RequestLabels, Counter>,
    pub tcp_opened: Family<TcpLabels, Counter>,
    pub tcp_closed: Family<TcpLabels, Counter>,
    pub tcp_sent_bytes: Family<TcpLabels, Counter>,
    pub tcp_received_bytes: Family<TcpLabels, Counter>,
    pub tls_handshakes: Family<HandshakeLabels, Counter>,
    pub refused: Family<RefusedLabels, Counter>,
    pub snapshots: Family<ResultLabels, Counter>,
    pub certificates: Family<ResultLabels, Counter>,
    pub active_connections: Gauge,
}

impl Metrics {
    /// Makes the metrics and registers them (the registry adds `_total` to counters).
    pub fn new(registry: &mut Registry) -> Self {
        let m = Metrics {
            requests: Family::default(),
            request_duration: Family::new_with_constructor(request_histogram),
            request_bytes: Family::new_with_constructor(request_histogram),
            response_bytes: Family::new_with_constructor(request_histogram),
            request_messages: Family::default(),
            response_messages: Family::default(),
            tcp_opened: Family::default(),
            tcp_closed: Family::default(),
            tcp_sent_bytes: Family::default(),
            tcp_received_bytes: Family::default(),
            tls_handshakes: Family::default(),
            refused: Family::default(),
            snapshots: Family::default(),
            certificates: Family::default(),
            active_connections: Gauge::default(),
            peers: PeerBudget::new(MAX_PEER_WORKLOADS),
        };
        registry.register(
            "istio_requests",
            "HTTP requests (HTTP/1.x, HTTP/2, gRPC), by response code",
            m.requests.clone(),
        );
        registry.register(
            "istio_request_duration_milliseconds",
            "HTTP request duration, first request byte (terminated HTTP: request head) to last response byte",
            m.request_duration.clone(),
        );
        // The unit makes the names `istio_request_bytes` / `istio_response_bytes` (the client
        // library appends it) and adds OpenMetrics' `# UNIT ... bytes`.
        registry.register_with_unit(
            "istio_request",
            "HTTP request size: the head (as HTTP/1.1 writes it) plus body and trailers",
            Unit::Bytes,
            m.request_bytes.clone(),
        );
        registry.register_with_unit(
            "istio_response",
            "HTTP response size: the head (as HTTP/1.1 writes it) plus body and trailers",
            Unit::Bytes,
            m.response_bytes.clone(),
        );
        registry.register(
            "istio_request_messages",
            "gRPC messages the client sent, by request",
            m.request_messages.clone(),
        );
        registry.register(
            "istio_response_messages",
            "gRPC messages the server sent back, by request",
            m.response_messages.clone(),
        );
        registry.register(
            "istio_tcp_connections_opened",
            "TCP connections opened",
            m.tcp_opened.clone(),
        );
        registry.register(
            "istio_tcp_connections_closed",
            "TCP connections closed",
            m.tcp_closed.clone(),
        );
        // Istio names the byte counters from the proxy's side of the client connection: it
        // receives the request and sends the response (istio/proxy's TCP metadata-exchange
        // test: a client writing 6 bytes and reading 12 gives received 6, sent 12), on both
        // reporters.
        registry.register(
            "istio_tcp_sent_bytes",
            "Bytes sent back to the client (response direction) on TCP connections",
            m.tcp_sent_bytes.clone(),
        );
        registry.register(
            "istio_tcp_received_bytes",
            "Bytes received from the client (request direction) on TCP connections",
            m.tcp_received_bytes.clone(),
        );
        // Istio's proxies export `istio_build{component="proxy",tag=<ISTIO_VERSION>} 1`; ours
        // names weft's release, so version panels show which proxies run which weft.
        let build = Family::<BuildLabels, Gauge>::default();
        build
            .get_or_create(&BuildLabels {
                component: "proxy".into(),
                tag: env!("CARGO_PKG_VERSION").into(),
            })
            .set(1);
        registry.register("istio_build", "Istio component build info", build);
        registry.register(
            "weft_tls_handshakes",
            "Mesh mTLS handshakes by direction and result",
            m.tls_handshakes.clone(),
        );
        registry.register(
            "weft_connections_refused",
            "Connections the proxy refused, by direction and reason",
            m.refused.clone(),
        );
        registry.register(
            "weft_config_snapshots",
            "Config snapshots offered to the proxy, by result (applied, unchanged, rejected)",
            m.snapshots.clone(),
        );
        registry.register(
            "weft_certificates",
            "Workload certificates offered to the proxy, by result (applied, rejected)",
            m.certificates.clone(),
        );
        registry.register(
            "weft_active_connections",
            "Connections being proxied now",
            m.active_connections.clone(),
        );
        registry.register(
            "weft_peer_workloads_overflow",
            "Connections whose peer named a workload beyond the proxy's bound (reported unknown)",
            m.peers.overflow.clone(),
        );
        m
    }

    pub fn handshake(&self, direction: Direction, ok: bool) {
        let result = if ok {
            HandshakeResult::success
        } else {
            HandshakeResult::failure
        };
        self.tls_handshakes
            .get_or_create(&HandshakeLabels { direction, result })
            .inc();
    }

    /// Records the requests of one connection under its labels. They differ only by response
    /// code (and protocol and flags) from request to request, so it resolves each
    /// combination's series once and keeps their handles (they share the registry's
    /// counters): a request then costs two atomic updates, not a label-set clone and two
    /// hashed map lookups.
    pub fn request_recorder(self: &Arc<Self>, labels: &TcpLabels) -> RequestRecorder {
        RequestRecorder {
            metrics: self.clone(),
            labels: labels.clone(),
            series: Vec::new(),
        }
    }

    /// Adds one connection's bytes: `from_client` (what the client sent, the request
    /// direction) to `istio_tcp_received_bytes_total`, `to_client` (what it was sent back) to
    /// `istio_tcp_sent_bytes_total`. The same on both reporters, as Istio counts them.
    pub fn tcp_bytes(&self, labels: &TcpLabels, from_client: u64, to_client: u64) {
        self.tcp_received_bytes
            .get_or_create(labels)
            .inc_by(from_client);
        self.tcp_sent_bytes.get_or_create(labels).inc_by(to_client);
    }

    pub fn refuse(&self, direction: Direction, reason: &str) {
        self.refused
            .get_or_create(&RefusedLabels {
                direction,
                reason: reason.to_string(),
            })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn istio_names_and_labels_are_exposed() {
        let mut registry = Registry::default();
        let m = Metrics::new(&mut registry);
        let mut labels = TcpLabels::new(Reporter::destination, SecurityPolicy::mutual_tls)
            .with_service("db.pets.svc.cluster.local");
        labels.source_principal = "spiffe://cluster.local/ns/pets/sa/web".into();
        m.tcp_opened.get_or_create(&labels).inc();
        m.tcp_sent_bytes.get_or_create(&labels).inc_by(42);
        m.handshake(Direction::inbound, true);
        let m = Arc::new(m);
        let ms = std::time::Duration::from_millis(1);
        let mut recorder = m.request_recorder(&labels);
        for code in [503, 200, 503, 200] {
            recorder.record(RequestOutcome::http(code), ms, None);
        }
        // A second connection with the same labels adds to the same series.
        let mut again = m.request_recorder(&labels);
        again.record(RequestOutcome::http(200), ms, None);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(text.contains("istio_tcp_connections_opened_total{reporter=\"destination\""));
        assert!(text.contains("source_principal=\"spiffe://cluster.local/ns/pets/sa/web\""));
        assert!(text.contains("connection_security_policy=\"mutual_tls\""));
        assert!(text.contains("destination_service_namespace=\"pets\""));
        assert!(
            text.contains("weft_tls_handshakes_total{direction=\"inbound\",result=\"success\"} 1")
        );
        let requests = |code: &str| {
            text.lines()
                .find(|l| {
                    l.starts_with("istio_requests_total{")
                        && l.contains(&format!("response_code=\"{code}\""))
                })
                .and_then(|l| l.rsplit(' ').next())
                .map(str::to_string)
        };
        assert_eq!(requests("503").as_deref(), Some("2"), "{text}");
        assert_eq!(requests("200").as_deref(), Some("3"), "{text}");
    }

    /// Every series of one metric in an exposition: its labels and its value.
    fn series(text: &str, name: &str) -> Vec<(BTreeMap<String, String>, String)> {
        text.lines()
            .filter_map(|l| {
                let rest = l.strip_prefix(name)?.strip_prefix('{')?;
                let (labels, value) = rest.rsplit_once("} ")?;
                let mut map = BTreeMap::new();
                // Values in these tests hold no quote, comma or backslash.
                for pair in labels.split("\",") {
                    let (k, v) = pair.split_once("=\"")?;
                    map.insert(k.to_string(), v.trim_end_matches('"').to_string());
                }
                Some((map, value.to_string()))
            })
            .collect()
    }

    fn labels_of(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// istio/proxy's test workloads (`testdata/client_node_metadata.json.tmpl`,
    /// `server_node_metadata.json.tmpl`), as weft's discovery derives them from the labels.
    fn productpage() -> WorkloadMeta {
        let labels = [
            ("app", "productpage"),
            ("version", "v1"),
            ("service.istio.io/canonical-name", "productpage-v1"),
            ("service.istio.io/canonical-revision", "version-1"),
            ("pod-template-hash", "84975bc778"),
        ];
        let labels = labels_of(&labels);
        WorkloadMeta::from_labels("productpage-v1", "default", &labels, "client-cluster")
    }

    fn ratings() -> WorkloadMeta {
        let labels = [
            ("app", "ratings"),
            ("version", "v1"),
            ("service.istio.io/canonical-name", "ratings"),
            ("service.istio.io/canonical-revision", "version-1"),
        ];
        let labels = labels_of(&labels);
        WorkloadMeta::from_labels("ratings-v1", "default", &labels, "server-cluster")
    }

    const CLIENT_ID: &str = "spiffe://cluster.local/ns/default/sa/client";
    const SERVER_ID: &str = "spiffe://cluster.local/ns/default/sa/server";
    const SERVICE: &str = "server.default.svc.cluster.local";

    /// The client sidecar's labels: from its own metadata and the endpoint's.
    fn client_side(mtls: bool) -> TcpLabels {
        let mut labels =
            TcpLabels::new(Reporter::source, SecurityPolicy::mutual_tls).with_service(SERVICE);
        labels.fill_source(&productpage());
        labels.fill_destination(&ratings());
        if mtls {
            labels.source_principal = CLIENT_ID.into();
            labels.destination_principal = SERVER_ID.into();
        }
        labels
    }

    /// The server sidecar's labels: its own metadata, and the client's as the peer-metadata
    /// frame carried it.
    fn server_side(mtls: bool) -> TcpLabels {
        let security = if mtls {
            SecurityPolicy::mutual_tls
        } else {
            SecurityPolicy::none
        };
        let mut labels = TcpLabels::new(Reporter::destination, security).with_service(SERVICE);
        let frame = super::super::peer_meta::PeerMeta::of(Some(&productpage()), None, None);
        let super::super::peer_meta::Parsed::Frame(Some(peer), _) =
            super::super::peer_meta::parse(&frame.encode())
        else {
            panic!("the frame parses")
        };
        labels.fill_source(&peer.workload());
        labels.fill_destination(&ratings());
        if mtls {
            labels.source_principal = CLIENT_ID.into();
            labels.destination_principal = SERVER_ID.into();
        }
        labels
    }

    /// istio/proxy `testdata/metric/tcp_client_*.yaml.tmpl`, label for label.
    const TCP_CLIENT: &[(&str, &str)] = &[
        ("reporter", "source"),
        ("source_workload", "productpage-v1"),
        ("source_canonical_service", "productpage-v1"),
        ("source_canonical_revision", "version-1"),
        ("source_workload_namespace", "default"),
        ("source_principal", CLIENT_ID),
        ("source_app", "productpage"),
        ("source_version", "v1"),
        ("source_cluster", "client-cluster"),
        ("destination_workload", "ratings-v1"),
        ("destination_workload_namespace", "default"),
        ("destination_principal", SERVER_ID),
        ("destination_app", "ratings"),
        ("destination_version", "v1"),
        ("destination_service", SERVICE),
        ("destination_canonical_service", "ratings"),
        ("destination_canonical_revision", "version-1"),
        ("destination_service_name", "server"),
        ("destination_service_namespace", "default"),
        ("destination_cluster", "server-cluster"),
        ("request_protocol", "tcp"),
        ("response_flags", "-"),
        ("connection_security_policy", "unknown"),
    ];

    /// istio/proxy `testdata/metric/tcp_server_*.yaml.tmpl`.
    const TCP_SERVER: &[(&str, &str)] = &[
        ("reporter", "destination"),
        ("source_workload", "productpage-v1"),
        ("source_canonical_service", "productpage-v1"),
        ("source_canonical_revision", "version-1"),
        ("source_workload_namespace", "default"),
        ("source_principal", CLIENT_ID),
        ("source_app", "productpage"),
        ("source_version", "v1"),
        ("source_cluster", "client-cluster"),
        ("destination_workload", "ratings-v1"),
        ("destination_workload_namespace", "default"),
        ("destination_principal", SERVER_ID),
        ("destination_app", "ratings"),
        ("destination_version", "v1"),
        ("destination_service", SERVICE),
        ("destination_canonical_service", "ratings"),
        ("destination_canonical_revision", "version-1"),
        ("destination_service_name", "server"),
        ("destination_service_namespace", "default"),
        ("destination_cluster", "server-cluster"),
        ("request_protocol", "tcp"),
        ("response_flags", "-"),
        ("connection_security_policy", "mutual_tls"),
    ];

    /// istio/proxy's TCP metadata-exchange test: 10 connections, each 6 bytes from the
    /// client and 12 back; both sidecars' four TCP series, every label and value.
    #[test]
    fn golden_tcp_series_of_both_reporters() {
        let mut registry = Registry::default();
        let m = Metrics::new(&mut registry);
        for labels in [client_side(true), server_side(true)] {
            for _ in 0..10 {
                m.tcp_opened.get_or_create(&labels).inc();
                m.tcp_bytes(&labels, 6, 12);
                m.tcp_closed.get_or_create(&labels).inc();
            }
        }
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for (name, value) in [
            ("istio_tcp_connections_opened_total", "10"),
            ("istio_tcp_connections_closed_total", "10"),
            ("istio_tcp_received_bytes_total", "60"),
            ("istio_tcp_sent_bytes_total", "120"),
        ] {
            let mut got = series(&text, name);
            got.sort();
            let mut want = vec![
                (labels_of(TCP_CLIENT), value.to_string()),
                (labels_of(TCP_SERVER), value.to_string()),
            ];
            want.sort();
            assert_eq!(got, want, "{name}\n{text}");
            let family = name.trim_end_matches("_total");
            assert!(text.contains(&format!("# TYPE {family} counter")), "{text}");
        }
    }

    /// istio/proxy `testdata/metric/tcp_server_connection_open_without_mx.yaml.tmpl`: a
    /// client that sent no metadata is unknown but for what its certificate proves.
    #[test]
    fn golden_tcp_series_of_a_client_without_metadata() {
        let mut registry = Registry::default();
        let m = Metrics::new(&mut registry);
        let mut labels =
            TcpLabels::new(Reporter::destination, SecurityPolicy::mutual_tls).with_service(SERVICE);
        labels.fill_destination(&ratings());
        labels.source_workload_namespace = "default".into();
        labels.source_principal = CLIENT_ID.into();
        labels.destination_principal = SERVER_ID.into();
        m.tcp_opened.get_or_create(&labels).inc();
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        let mut want = labels_of(TCP_SERVER);
        for (k, v) in [
            ("source_workload", "unknown"),
            ("source_canonical_service", "unknown"),
            ("source_canonical_revision", "latest"),
            ("source_app", "unknown"),
            ("source_version", "unknown"),
            ("source_cluster", "unknown"),
        ] {
            want.insert(k.into(), v.into());
        }
        assert_eq!(
            series(&text, "istio_tcp_connections_opened_total"),
            vec![(want, "1".to_string())]
        );
    }

    /// istio/proxy `testdata/metric/{client,server}_request_total.yaml.tmpl` (plaintext
    /// sidecars, so principals unknown): the TCP labels with protocol `http`, plus
    /// `response_code` and `grpc_response_status`, on the counter and the three histograms
    /// with Envoy's default buckets.
    #[test]
    fn golden_request_series_of_both_reporters() {
        let mut registry = Registry::default();
        let m = Arc::new(Metrics::new(&mut registry));
        for labels in [client_side(false), server_side(false)] {
            let mut recorder = m.request_recorder(&labels);
            for _ in 0..10 {
                let sizes = Some(Sizes {
                    request_messages: 0,
                    response_messages: 0,
                    request: 120,
                    response: 3000,
                });
                let took = std::time::Duration::from_millis(7);
                recorder.record(RequestOutcome::http(200), took, sizes);
            }
        }
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        let request = |tcp: &[(&str, &str)], security: &str| {
            let mut want = labels_of(tcp);
            for (k, v) in [
                ("source_principal", "unknown"),
                ("destination_principal", "unknown"),
                ("request_protocol", "http"),
                ("response_code", "200"),
                ("grpc_response_status", ""),
                ("connection_security_policy", security),
            ] {
                want.insert(k.into(), v.into());
            }
            want
        };
        let client = request(TCP_CLIENT, "unknown");
        let server = request(TCP_SERVER, "none");
        let mut got = series(&text, "istio_requests_total");
        got.sort();
        let mut want = vec![(client.clone(), "10".into()), (server.clone(), "10".into())];
        want.sort();
        assert_eq!(got, want, "{text}");

        let mut les: Vec<String> = ENVOY_DEFAULT_BUCKETS
            .iter()
            .map(|b| format!("{b:?}"))
            .collect();
        les.push("+Inf".into());
        for (name, sum, le_of_one) in [
            ("istio_request_duration_milliseconds", "70.0", "10.0"),
            ("istio_request_bytes", "1200.0", "250.0"),
            ("istio_response_bytes", "30000.0", "5000.0"),
        ] {
            assert!(text.contains(&format!("# TYPE {name} histogram")), "{text}");
            for labels in [&client, &server] {
                let count = series(&text, &format!("{name}_count"));
                assert!(
                    count.contains(&(labels.clone(), "10".into())),
                    "{name}\n{text}"
                );
                let sums = series(&text, &format!("{name}_sum"));
                assert!(
                    sums.contains(&(labels.clone(), sum.into())),
                    "{name}\n{text}"
                );
                // Exactly Envoy's boundaries, each observation in the first bucket that holds it.
                let buckets: Vec<(String, String)> = series(&text, &format!("{name}_bucket"))
                    .into_iter()
                    .filter_map(|(mut l, v)| {
                        let le = l.remove("le")?;
                        (&l == labels).then_some((le, v))
                    })
                    .collect();
                let got_les: Vec<&str> = buckets.iter().map(|(le, _)| le.as_str()).collect();
                assert_eq!(got_les, les, "{name}");
                let first = buckets.iter().position(|(_, v)| v == "10");
                assert_eq!(
                    first.map(|i| buckets[i].0.as_str()),
                    Some(le_of_one),
                    "{name}: {buckets:?}"
                );
            }
        }
    }

    /// istio/proxy `testdata/metric/client_request_total_endpoint_labels.yaml.tmpl`: a server
    /// without a sidecar (no metadata exchange, plaintext), named on the source reporter from
    /// its endpoint metadata (`ratings-v1;default;ratings;version-1;test-cluster`), which has
    /// no app or version. The endpoint is as the operator writes an unmeshed pod's, and the
    /// labels are the outbound path's own (`outbound::source_labels`).
    #[test]
    fn golden_request_series_of_a_server_without_a_sidecar() {
        let snapshot: crate::snapshot::ProxySnapshot = serde_json::from_value(serde_json::json!({
            "schemaVersion": 1, "version": "v", "identity": CLIENT_ID,
            "trustDomain": "cluster.local",
            "workload": {"name": "productpage-v1", "namespace": "default", "app": "productpage",
                         "version": "v1", "canonicalService": "productpage-v1",
                         "canonicalRevision": "version-1", "cluster": "test-cluster"},
            "inbound": {"defaultMode": "PERMISSIVE"},
            "outbound": {"policy": "ALLOW_ANY", "services": [{
                "clusterIp": "198.19.0.20", "port": 80, "name": SERVICE,
                "endpoints": [{"ip": "198.18.1.9", "port": 8080, "meshed": false,
                    "workload": {"name": "ratings-v1", "namespace": "default",
                                 "canonicalService": "ratings", "canonicalRevision": "version-1",
                                 "cluster": "test-cluster"}}]}]}
        }))
        .expect("a snapshot as the operator writes it");
        let index = crate::snapshot::SnapshotIndex::new(snapshot);
        let service = &index.snapshot.outbound.services[0];
        let (ctx, _inputs) = super::super::ProxyContext::new(super::super::Settings::default());
        let labels = super::super::outbound::source_labels(
            &ctx,
            &index,
            Some(service),
            Some(&service.endpoints[0]),
            false,
        );
        let mut registry = Registry::default();
        let m = Arc::new(Metrics::new(&mut registry));
        let took = std::time::Duration::from_millis(3);
        m.request_recorder(&labels)
            .record(RequestOutcome::http(200), took, None);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        let want = labels_of(&[
            ("reporter", "source"),
            ("source_workload", "productpage-v1"),
            ("source_canonical_service", "productpage-v1"),
            ("source_canonical_revision", "version-1"),
            ("source_workload_namespace", "default"),
            ("source_principal", "unknown"),
            ("source_app", "productpage"),
            ("source_version", "v1"),
            ("source_cluster", "test-cluster"),
            ("destination_workload", "ratings-v1"),
            ("destination_workload_namespace", "default"),
            ("destination_principal", "unknown"),
            ("destination_app", "unknown"),
            ("destination_version", "unknown"),
            ("destination_service", SERVICE),
            ("destination_canonical_service", "ratings"),
            ("destination_canonical_revision", "version-1"),
            ("destination_service_name", "server"),
            ("destination_service_namespace", "default"),
            ("destination_cluster", "test-cluster"),
            ("request_protocol", "http"),
            ("response_code", "200"),
            ("grpc_response_status", ""),
            ("response_flags", "-"),
            ("connection_security_policy", "unknown"),
        ]);
        assert_eq!(
            series(&text, "istio_requests_total"),
            vec![(want, "1".to_string())],
            "{text}"
        );
    }

    fn sample<'a>(text: &'a str, name: &str, needles: &[&str]) -> Option<&'a str> {
        let mut found = text.lines().filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{'))
                && needles.iter().all(|n| l.contains(n))
        });
        let one = found.next()?;
        found.next().is_none().then_some(one)?.rsplit(' ').next()
    }

    #[test]
    fn sizes_and_grpc_status_are_recorded_per_label_set() {
        let mut registry = Registry::default();
        let m = Arc::new(Metrics::new(&mut registry));
        let labels = TcpLabels::new(Reporter::destination, SecurityPolicy::mutual_tls);
        let mut recorder = m.request_recorder(&labels);
        let ms = std::time::Duration::from_millis(3);
        let grpc = |status| RequestOutcome {
            status: 200,
            grpc: true,
            grpc_status: Some(status),
            flags: "-",
        };
        let sizes = |request, response| {
            Some(Sizes {
                request,
                response,
                ..Sizes::default()
            })
        };
        recorder.record(grpc(0), ms, sizes(100, 2000));
        recorder.record(grpc(0), ms, sizes(20, 7));
        recorder.record(grpc(7), ms, sizes(90, 60));
        recorder.record(RequestOutcome::http(404), ms, sizes(4, 0));
        // The passive observer records no sizes: counted, not observed in the histograms.
        recorder.record(RequestOutcome::http(404), ms, None);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();

        let ok = ["request_protocol=\"grpc\"", "grpc_response_status=\"0\""];
        assert_eq!(
            sample(&text, "istio_requests_total", &ok),
            Some("2"),
            "{text}"
        );
        assert_eq!(sample(&text, "istio_request_bytes_count", &ok), Some("2"));
        assert_eq!(sample(&text, "istio_request_bytes_sum", &ok), Some("120.0"));
        assert_eq!(
            sample(&text, "istio_response_bytes_sum", &ok),
            Some("2007.0")
        );
        // Envoy's default buckets: 7 and 2000 fall in le=10 and le=2500, not le=1000.
        let bucket = |le: &str| {
            let le = format!("le=\"{le}\"");
            sample(&text, "istio_response_bytes_bucket", &[ok[1], &le]).map(str::to_string)
        };
        assert_eq!(bucket("5.0").as_deref(), Some("0"), "{text}");
        assert_eq!(bucket("10.0").as_deref(), Some("1"));
        assert_eq!(bucket("1000.0").as_deref(), Some("1"));
        assert_eq!(bucket("2500.0").as_deref(), Some("2"));
        assert_eq!(bucket("3600000.0").as_deref(), Some("2"));
        let denied = ["grpc_response_status=\"7\""];
        assert_eq!(sample(&text, "istio_requests_total", &denied), Some("1"));
        assert_eq!(
            sample(&text, "istio_response_bytes_sum", &denied),
            Some("60.0")
        );
        // Not gRPC: the label is there, empty, on the counter and every histogram.
        let http = ["request_protocol=\"http\"", "grpc_response_status=\"\""];
        assert_eq!(sample(&text, "istio_requests_total", &http), Some("2"));
        assert_eq!(
            sample(&text, "istio_request_duration_milliseconds_count", &http),
            Some("2")
        );
        assert_eq!(sample(&text, "istio_request_bytes_count", &http), Some("1"));
        assert_eq!(
            sample(&text, "istio_response_bytes_count", &http),
            Some("1")
        );
        assert!(
            text.contains("# TYPE istio_request_bytes histogram"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE istio_response_bytes histogram"),
            "{text}"
        );
        assert!(text.contains("# UNIT istio_request_bytes bytes"), "{text}");
    }

    /// istio/proxy's TCP metadata-exchange test, through the real relay: the client writes
    /// `world\n` (6 bytes) and reads the server's `hello world\n` (12 bytes). Both reporters
    /// count the request direction as received and the response as sent.
    #[tokio::test]
    async fn tcp_bytes_count_the_request_as_received_and_the_response_as_sent() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut client, downstream) = tokio::io::duplex(1024);
        let (upstream, mut server) = tokio::io::duplex(1024);
        let server = tokio::spawn(async move {
            let mut got = Vec::new();
            server.read_to_end(&mut got).await.unwrap();
            server.write_all(b"hello ").await.unwrap();
            server.write_all(&got).await.unwrap();
            server.shutdown().await.unwrap();
        });
        let relay = tokio::spawn(super::super::copy::relay(
            downstream,
            upstream,
            std::time::Duration::from_secs(5),
        ));
        client.write_all(b"world\n").await.unwrap();
        client.shutdown().await.unwrap();
        let mut answer = Vec::new();
        client.read_to_end(&mut answer).await.unwrap();
        assert_eq!(answer, b"hello world\n");
        server.await.unwrap();
        let (moved, result) = relay.await.unwrap();
        result.unwrap();

        let mut registry = Registry::default();
        let m = Metrics::new(&mut registry);
        for reporter in [Reporter::source, Reporter::destination] {
            let labels = TcpLabels::new(reporter, SecurityPolicy::none);
            m.tcp_bytes(&labels, moved.sent, moved.received);
        }
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for reporter in ["source", "destination"] {
            let r = format!("reporter=\"{reporter}\"");
            assert_eq!(
                sample(&text, "istio_tcp_received_bytes_total", &[&r]),
                Some("6"),
                "{text}"
            );
            assert_eq!(
                sample(&text, "istio_tcp_sent_bytes_total", &[&r]),
                Some("12"),
                "{text}"
            );
        }
    }

    #[test]
    fn the_scraper_gets_the_format_it_asks_for() {
        let mut registry = Registry::default();
        let m = Metrics::new(&mut registry);
        let labels = TcpLabels::new(Reporter::destination, SecurityPolicy::none);
        m.tcp_bytes(&labels, 6, 12);
        m.request_bytes
            .get_or_create(&RequestLabels {
                tcp: labels,
                response_code: "200".into(),
                grpc_response_status: String::new(),
            })
            .observe(7.0);
        // What Prometheus sends by default, curl's */*, nothing: OpenMetrics, as before.
        let prometheus_default = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        for accept in [Some(prometheus_default), Some("*/*"), None] {
            let (content_type, text) = exposition(&registry, accept).unwrap();
            assert_eq!(content_type, OPENMETRICS, "{accept:?}");
            assert!(text.ends_with("# EOF\n"));
            assert!(text.contains("# TYPE istio_tcp_sent_bytes counter\n"));
        }
        // A scraper that asks only for the text format gets it.
        let (content_type, text) =
            exposition(&registry, Some("text/plain;version=0.0.4;q=1,*/*;q=0.1")).unwrap();
        assert_eq!(content_type, PROMETHEUS_TEXT);
        assert!(
            !text.contains("# EOF") && !text.contains("# UNIT"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE istio_tcp_sent_bytes_total counter\n"),
            "{text}"
        );
        assert!(text.contains("# HELP istio_tcp_sent_bytes_total Bytes sent back"));
        assert!(text.contains("# TYPE istio_request_bytes histogram\n"));
        assert!(text.contains("# TYPE istio_build gauge\n"));
        // Samples are unchanged.
        let sample = text
            .lines()
            .find(|l| l.starts_with("istio_tcp_sent_bytes_total{"))
            .and_then(|l| l.rsplit(' ').next());
        assert_eq!(sample, Some("12"), "{text}");
    }

    #[test]
    fn the_build_gauge_names_the_proxy_and_its_release() {
        let mut registry = Registry::default();
        let _m = Metrics::new(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(text.contains("# TYPE istio_build gauge"), "{text}");
        let line = format!(
            "istio_build{{component=\"proxy\",tag=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        assert!(text.lines().any(|l| l == line), "{text}");
    }

    #[test]
    fn peer_named_workloads_are_bounded_and_the_rest_are_unknown() {
        let mut registry = Registry::default();
        let m = Metrics::new(&mut registry);
        let fabricated = |i: usize| WorkloadMeta {
            name: format!("fake-{i}"),
            namespace: "demo".into(),
            ..WorkloadMeta::default()
        };
        let admitted = (0..10_000)
            .filter(|i| m.peers.admit(&fabricated(*i)))
            .count();
        assert_eq!(admitted, MAX_PEER_WORKLOADS);
        // One already reported stays reported; a new one does not get in.
        assert!(m.peers.admit(&fabricated(7)));
        assert!(!m.peers.admit(&fabricated(123_456)));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains("weft_peer_workloads_overflow_total 9001"),
            "{text}"
        );
    }

    #[test]
    fn grpc_status_follows_envoy() {
        // Trailers first, then headers (trailers-only), then the HTTP status.
        assert_eq!(grpc_status(Some(b"0"), Some(b"7"), 200), 0);
        assert_eq!(grpc_status(None, Some(b"7"), 200), 7);
        assert_eq!(grpc_status(None, None, 503), 14);
        assert_eq!(grpc_status(None, None, 404), 12);
        assert_eq!(grpc_status(None, None, 200), 2);
        assert_eq!(grpc_status(Some(b"16"), None, 200), 16);
        // Beyond the known codes or not a number: Envoy's InvalidCode.
        assert_eq!(grpc_status(Some(b"17"), None, 200), -1);
        assert_eq!(grpc_status(Some(b"ok"), None, 200), -1);
        assert_eq!(grpc_status(Some(b"-1"), None, 200), -1);
    }
}
