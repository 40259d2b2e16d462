//! The proxy's metrics, in one `prometheus-client` registry owned by the process context.
//! TCP metrics carry Istio's names and labels so dashboards and alerts built for Istio keep
//! working (SPEC §9); weft's own counters are prefixed `weft_`.

use std::sync::{Arc, Mutex};

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use super::http_observe::{Exchange, HttpObserver};

/// Istio's buckets for `istio_request_duration_milliseconds`.
const DURATION_BUCKETS_MS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS_MS)
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

/// Istio's standard TCP labels.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TcpLabels {
    pub reporter: Reporter,
    pub source_workload: String,
    pub source_workload_namespace: String,
    pub source_principal: String,
    pub destination_workload: String,
    pub destination_workload_namespace: String,
    pub destination_principal: String,
    pub destination_service: String,
    pub destination_service_name: String,
    pub destination_service_namespace: String,
    pub request_protocol: String,
    pub response_flags: String,
    pub connection_security_policy: SecurityPolicy,
}

pub const UNKNOWN: &str = "unknown";

impl TcpLabels {
    /// Labels with every peer field `unknown`, for the caller to fill in.
    pub fn new(reporter: Reporter, security: SecurityPolicy) -> Self {
        let u = || UNKNOWN.to_string();
        TcpLabels {
            reporter,
            source_workload: u(),
            source_workload_namespace: u(),
            source_principal: u(),
            destination_workload: u(),
            destination_workload_namespace: u(),
            destination_principal: u(),
            destination_service: u(),
            destination_service_name: u(),
            destination_service_namespace: u(),
            request_protocol: "tcp".into(),
            response_flags: "-".into(),
            connection_security_policy: security,
        }
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

/// Istio's request labels: the TCP ones plus the response code.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    #[prometheus(flatten)]
    pub tcp: TcpLabels,
    pub response_code: String,
}

/// What distinguishes one request's series from another's on the same connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestOutcome {
    pub status: u16,
    /// `request_protocol`: `http` (HTTP/1.x and h2) or `grpc`, as Istio reports them.
    pub grpc: bool,
    /// `response_flags`: Envoy's short form (`UF` upstream connect failure, `UC` upstream
    /// connection termination), `-` for none.
    pub flags: &'static str,
}

impl RequestOutcome {
    pub fn http(status: u16) -> Self {
        RequestOutcome {
            status,
            grpc: false,
            flags: "-",
        }
    }
}

/// `istio_requests_total` and `istio_request_duration_milliseconds` of one connection
/// (see [`Metrics::request_recorder`]).
pub struct RequestRecorder {
    metrics: Arc<Metrics>,
    labels: TcpLabels,
    series: Vec<(RequestOutcome, Counter, Histogram)>,
}

impl RequestRecorder {
    pub fn record(&mut self, outcome: RequestOutcome, duration: std::time::Duration) {
        let at = match self.series.iter().position(|(o, ..)| *o == outcome) {
            Some(at) => at,
            None => {
                let mut tcp = self.labels.clone();
                tcp.request_protocol = if outcome.grpc { "grpc" } else { "http" }.into();
                tcp.response_flags = outcome.flags.into();
                let labels = RequestLabels {
                    tcp,
                    response_code: outcome.status.to_string(),
                };
                let counter = self.metrics.requests.get_or_create(&labels).clone();
                let histogram = self.metrics.request_duration.get_or_create(&labels).clone();
                self.series.push((outcome, counter, histogram));
                self.series.len() - 1
            }
        };
        let (_, counter, histogram) = &self.series[at];
        counter.inc();
        histogram.observe(duration.as_secs_f64() * 1000.0);
    }
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

pub struct Metrics {
    pub requests: Family<RequestLabels, Counter>,
    pub request_duration: Family<RequestLabels, Histogram, fn() -> Histogram>,
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
            request_duration: Family::new_with_constructor(duration_histogram),
            tcp_opened: Family::default(),
            tcp_closed: Family::default(),
            tcp_sent_bytes: Family::default(),
            tcp_received_bytes: Family::default(),
            tls_handshakes: Family::default(),
            refused: Family::default(),
            snapshots: Family::default(),
            certificates: Family::default(),
            active_connections: Gauge::default(),
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
        registry.register(
            "istio_tcp_sent_bytes",
            "Bytes sent by the downstream (client) side of TCP connections",
            m.tcp_sent_bytes.clone(),
        );
        registry.register(
            "istio_tcp_received_bytes",
            "Bytes received by the downstream (client) side of TCP connections",
            m.tcp_received_bytes.clone(),
        );
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

    /// An observer that records the connection's HTTP exchanges (if it carries HTTP/1.x)
    /// with these labels, through a [`RequestRecorder`].
    pub fn http_observer(self: &Arc<Self>, labels: &TcpLabels) -> Mutex<HttpObserver> {
        let mut recorder = self.request_recorder(labels);
        Mutex::new(HttpObserver::new(Box::new(move |e: Exchange| {
            recorder.record(RequestOutcome::http(e.status), e.duration);
        })))
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
        let observer = m.http_observer(&labels);
        let now = tokio::time::Instant::now();
        if let Ok(mut o) = observer.lock() {
            o.on_request(b"GET / HTTP/1.1\r\n\r\n", now);
            o.on_response(b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n", now);
            for code in ["200 OK", "503 Busy", "200 OK"] {
                o.on_request(b"GET / HTTP/1.1\r\n\r\n", now);
                o.on_response(
                    format!("HTTP/1.1 {code}\r\nContent-Length: 0\r\n\r\n").as_bytes(),
                    now,
                );
            }
        }
        // A second connection with the same labels adds to the same series.
        let again = m.http_observer(&labels);
        if let Ok(mut o) = again.lock() {
            o.on_request(b"GET / HTTP/1.1\r\n\r\n", now);
            o.on_response(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", now);
        }
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
}
