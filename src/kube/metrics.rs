//! The operator's metrics, served as Prometheus text on `:15014/metrics`: one
//! `prometheus-client` registry owned by the process, handed as `Arc<OperatorMetrics>` to the
//! webhook server, the CSR endpoint, the config server, the controllers and leader election.
//! Every family is `weft_`-prefixed; labels are short, stable `metric_label()` values.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Content type of the text exposition (Prometheus scrapes OpenMetrics).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Webhook reviews take microseconds when healthy; the API server gives up at 10 s.
const WEBHOOK_BUCKETS_SECONDS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 10.0,
];
/// Reconciles patch status through the API server: milliseconds to seconds.
const RECONCILE_BUCKETS_SECONDS: [f64; 10] =
    [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];

fn webhook_histogram() -> Histogram {
    Histogram::new(WEBHOOK_BUCKETS_SECONDS)
}

/// The builtin CA signs in about a millisecond, Vault over the network in tens; a Vault call
/// gives up after 5 s.
const ISSUER_BUCKETS_SECONDS: [f64; 11] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0,
];

fn issuer_histogram() -> Histogram {
    Histogram::new(ISSUER_BUCKETS_SECONDS)
}

fn reconcile_histogram() -> Histogram {
    Histogram::new(RECONCILE_BUCKETS_SECONDS)
}

/// The webhook endpoints (`/inject`, `/validate`, `/default-meshconfig`).
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum Endpoint {
    Inject,
    Validate,
    Default,
}

impl Endpoint {
    pub fn metric_label(self) -> &'static str {
        match self {
            Endpoint::Inject => "inject",
            Endpoint::Validate => "validate",
            Endpoint::Default => "default",
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WebhookLabels {
    pub endpoint: &'static str,
    /// `patched`, `allowed`, `denied` or `bad_request` ([`webhook_outcome`]).
    pub outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    pub endpoint: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IssuerLabels {
    pub issuer: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IssuerOutcomeLabels {
    pub issuer: &'static str,
    pub outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabels {
    pub controller: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerErrorLabels {
    pub controller: &'static str,
    pub error: &'static str,
}

pub struct OperatorMetrics {
    registry: Registry,
    pub webhook_requests: Family<WebhookLabels, Counter>,
    pub webhook_duration: Family<EndpointLabels, Histogram, fn() -> Histogram>,
    pub certificates_issued: Counter,
    pub certificates_refused: Family<ReasonLabels, Counter>,
    pub connected_proxies: Gauge,
    pub snapshots_sent: Counter,
    pub reconciles: Family<ControllerLabels, Counter>,
    pub reconcile_errors: Family<ControllerErrorLabels, Counter>,
    pub reconcile_duration: Family<ControllerLabels, Histogram, fn() -> Histogram>,
    pub leader: Gauge,
    pub issuer_requests: Family<IssuerOutcomeLabels, Counter>,
    pub issuer_duration: Family<IssuerLabels, Histogram, fn() -> Histogram>,
}

impl std::fmt::Debug for OperatorMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OperatorMetrics").finish_non_exhaustive()
    }
}

impl Default for OperatorMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl OperatorMetrics {
    /// Makes every family and registers it (the registry adds `_total` to counters).
    pub fn new() -> Self {
        let mut m = OperatorMetrics {
            registry: Registry::default(),
            webhook_requests: Family::default(),
            webhook_duration: Family::new_with_constructor(webhook_histogram),
            certificates_issued: Counter::default(),
            certificates_refused: Family::default(),
            connected_proxies: Gauge::default(),
            snapshots_sent: Counter::default(),
            reconciles: Family::default(),
            reconcile_errors: Family::default(),
            reconcile_duration: Family::new_with_constructor(reconcile_histogram),
            leader: Gauge::default(),
            issuer_requests: Family::default(),
            issuer_duration: Family::new_with_constructor(issuer_histogram),
        };
        let r = &mut m.registry;
        r.register(
            "weft_webhook_requests",
            "Admission reviews answered, by endpoint (inject, validate, default) and outcome",
            m.webhook_requests.clone(),
        );
        r.register(
            "weft_webhook_request_duration_seconds",
            "Time to answer an admission review, by endpoint",
            m.webhook_duration.clone(),
        );
        r.register(
            "weft_certificates_issued",
            "Workload certificates signed by the CSR endpoint",
            m.certificates_issued.clone(),
        );
        r.register(
            "weft_certificates_refused",
            "Certificate requests refused by the CSR endpoint, by reason",
            m.certificates_refused.clone(),
        );
        r.register(
            "weft_connected_proxies",
            "Proxies streaming their config from this replica",
            m.connected_proxies.clone(),
        );
        r.register(
            "weft_config_snapshots_sent",
            "Config snapshots sent to proxies by this replica",
            m.snapshots_sent.clone(),
        );
        r.register(
            "weft_reconciles",
            "Reconciles run, by controller",
            m.reconciles.clone(),
        );
        r.register(
            "weft_reconcile_errors",
            "Reconciles that failed, by controller and error",
            m.reconcile_errors.clone(),
        );
        r.register(
            "weft_reconcile_duration_seconds",
            "Time one reconcile took, by controller",
            m.reconcile_duration.clone(),
        );
        r.register(
            "weft_leader",
            "1 on the replica holding the Lease weft-operator (it runs the controllers), else 0",
            m.leader.clone(),
        );
        r.register(
            "weft_issuer_requests",
            "Workload CSRs handed to the issuer, by issuer (builtin, vault, cert-manager) and outcome (issued or the error)",
            m.issuer_requests.clone(),
        );
        r.register(
            "weft_issuer_request_duration_seconds",
            "Time the issuer took to sign (or refuse) one workload CSR, by issuer",
            m.issuer_duration.clone(),
        );
        m
    }

    /// The CSR endpoint's issuer hook (`operator::csr::IssuerHook`).
    pub fn issuer_outcome(
        self: &Arc<Self>,
    ) -> Arc<dyn Fn(crate::pki::IssuerKind, &'static str, Duration) + Send + Sync> {
        let metrics = self.clone();
        Arc::new(move |kind, outcome, took| {
            let issuer = kind.as_str();
            metrics
                .issuer_requests
                .get_or_create(&IssuerOutcomeLabels { issuer, outcome })
                .inc();
            metrics
                .issuer_duration
                .get_or_create(&IssuerLabels { issuer })
                .observe(took.as_secs_f64());
        })
    }

    /// The text exposition of every family.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }

    /// One admission review answered with `(status, body)` after `elapsed`.
    pub fn webhook_answered(
        &self,
        endpoint: Endpoint,
        status: u16,
        body: &[u8],
        elapsed: Duration,
    ) {
        let endpoint = endpoint.metric_label();
        self.webhook_requests
            .get_or_create(&WebhookLabels {
                endpoint,
                outcome: webhook_outcome(status, body),
            })
            .inc();
        self.webhook_duration
            .get_or_create(&EndpointLabels { endpoint })
            .observe(elapsed.as_secs_f64());
    }

    /// The CSR endpoint's outcome hook (`operator::csr::OutcomeHook`): `"issued"` or a
    /// refusal's `metric_label()`.
    pub fn certificate_outcome(self: &Arc<Self>) -> Arc<dyn Fn(&'static str) + Send + Sync> {
        let metrics = self.clone();
        Arc::new(move |label| {
            if label == "issued" {
                metrics.certificates_issued.inc();
            } else {
                metrics
                    .certificates_refused
                    .get_or_create(&ReasonLabels { reason: label })
                    .inc();
            }
        })
    }

    /// One reconcile of `controller` that took `elapsed`; `error` is the failure's
    /// `metric_label()`.
    pub fn reconciled(
        &self,
        controller: &'static str,
        elapsed: Duration,
        error: Option<&'static str>,
    ) {
        let labels = ControllerLabels { controller };
        self.reconciles.get_or_create(&labels).inc();
        self.reconcile_duration
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
        if let Some(error) = error {
            self.reconcile_errors
                .get_or_create(&ControllerErrorLabels { controller, error })
                .inc();
        }
    }

    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }
}

/// What an admission answer said: `bad_request` (no AdmissionReview could be read: 4xx),
/// `denied`, `patched` (allowed with a JSON Patch: a pod injected, a MeshConfig defaulted) or
/// `allowed` (unchanged).
pub fn webhook_outcome(status: u16, body: &[u8]) -> &'static str {
    if status != 200 {
        return "bad_request";
    }
    #[derive(serde::Deserialize)]
    struct Review {
        response: Option<Response>,
    }
    #[derive(serde::Deserialize)]
    struct Response {
        #[serde(default)]
        allowed: bool,
        #[serde(default)]
        patch: Option<String>,
    }
    match serde_json::from_slice::<Review>(body)
        .ok()
        .and_then(|r| r.response)
    {
        None => "bad_request",
        Some(Response { allowed: false, .. }) => "denied",
        Some(Response { patch: Some(_), .. }) => "patched",
        Some(_) => "allowed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_classified_by_what_they_said() {
        let allowed = br#"{"response": {"uid": "1", "allowed": true}}"#;
        let patched = br#"{"response": {"uid": "1", "allowed": true, "patchType": "JSONPatch", "patch": "W10="}}"#;
        let denied = br#"{"response": {"uid": "1", "allowed": false, "status": {"code": 403}}}"#;
        assert_eq!(webhook_outcome(200, allowed), "allowed");
        assert_eq!(webhook_outcome(200, patched), "patched");
        assert_eq!(webhook_outcome(200, denied), "denied");
        assert_eq!(
            webhook_outcome(413, br#"{"error": "too big"}"#),
            "bad_request"
        );
    }

    #[test]
    fn every_family_is_exposed_once_exercised() {
        let metrics = Arc::new(OperatorMetrics::new());
        metrics.webhook_answered(
            Endpoint::Inject,
            200,
            br#"{"response": {"allowed": true, "patch": "W10="}}"#,
            Duration::from_micros(300),
        );
        metrics.webhook_answered(Endpoint::Validate, 400, b"{}", Duration::from_micros(20));
        let hook = metrics.certificate_outcome();
        hook("issued");
        hook("issued");
        hook("wrong_audience");
        metrics.connected_proxies.inc();
        metrics.snapshots_sent.inc();
        metrics.reconciled("meshconfig", Duration::from_millis(3), None);
        metrics.reconciled("revisiontag", Duration::from_millis(3), Some("kube"));
        metrics.set_leader(true);
        let issuer = metrics.issuer_outcome();
        issuer(
            crate::pki::IssuerKind::Vault,
            "issued",
            Duration::from_millis(20),
        );
        issuer(
            crate::pki::IssuerKind::Vault,
            "vault_role_uri_sans",
            Duration::from_millis(20),
        );
        issuer(
            crate::pki::IssuerKind::Builtin,
            "issued",
            Duration::from_micros(800),
        );

        let text = metrics.encode().unwrap();
        for line in [
            "weft_webhook_requests_total{endpoint=\"inject\",outcome=\"patched\"} 1",
            "weft_webhook_requests_total{endpoint=\"validate\",outcome=\"bad_request\"} 1",
            "weft_webhook_request_duration_seconds_bucket{le=\"0.0005\",endpoint=\"inject\"} 1",
            "weft_webhook_request_duration_seconds_count{endpoint=\"validate\"} 1",
            "weft_certificates_issued_total 2",
            "weft_certificates_refused_total{reason=\"wrong_audience\"} 1",
            "weft_connected_proxies 1",
            "weft_config_snapshots_sent_total 1",
            "weft_reconciles_total{controller=\"meshconfig\"} 1",
            "weft_reconcile_errors_total{controller=\"revisiontag\",error=\"kube\"} 1",
            "weft_reconcile_duration_seconds_count{controller=\"meshconfig\"} 1",
            "weft_leader 1",
            "weft_issuer_requests_total{issuer=\"vault\",outcome=\"issued\"} 1",
            "weft_issuer_requests_total{issuer=\"vault\",outcome=\"vault_role_uri_sans\"} 1",
            "weft_issuer_requests_total{issuer=\"builtin\",outcome=\"issued\"} 1",
            "weft_issuer_request_duration_seconds_count{issuer=\"vault\"} 2",
            "weft_issuer_request_duration_seconds_bucket{le=\"0.001\",issuer=\"builtin\"} 1",
        ] {
            assert!(text.contains(line), "missing {line:?} in:\n{text}");
        }
        metrics.set_leader(false);
        assert!(metrics.encode().unwrap().contains("weft_leader 0"));
    }
}
