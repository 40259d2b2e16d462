//! A DestinationRule's traffic policy for one host or subset beyond TLS, as the snapshot
//! carries it: how the client proxy balances ([`super::balance`]), ejects
//! ([`super::outlier`]) and limits ([`ConnectionPool`], Envoy's circuit breakers). A subset's
//! policy is already merged over its host's (Istio: the subset's settings override the
//! rule's, field by field).

use serde::{Deserialize, Serialize};

use super::balance::{HashOn, LoadBalancer};
use super::outlier::OutlierDetection;

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TrafficPolicy {
    /// None: round robin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<LoadBalancer>,
    /// None: no endpoint is ever ejected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
    /// None: no limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_pool: Option<ConnectionPool>,
    /// `tls` SIMPLE/MUTUAL: how TLS is originated (read only when the Service's mode for the
    /// request is one of those, [`crate::snapshot::Service::security_of`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origination: Option<super::model::Origination>,
}

/// `connectionPool`'s limits for one destination, as the client proxy enforces them (Envoy's
/// circuit breakers): a request over a limit is answered 503 with flag `UO` at once.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionPool {
    /// `tcp.maxConnections`: HTTP/1.1 requests in flight at once (on HTTP/1.1 each holds a
    /// connection); more wait in the pending queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    /// `http.http1MaxPendingRequests`: HTTP/1.1 requests waiting for a connection; beyond it,
    /// 503 `UO`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_pending: Option<u32>,
    /// `http.http2MaxRequests`: requests in flight at once, any protocol; beyond it, 503 `UO`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests: Option<u32>,
    /// `tcp.connectTimeout`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_timeout_ms: Option<u64>,
    /// `http.maxRequestsPerConnection`: requests one upstream connection carries before the
    /// client proxy retires it (1: no keep-alive); None: unlimited (Istio's 0 or unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests_per_connection: Option<u32>,
    /// `http.idleTimeout`: an upstream connection with no request for this long is closed;
    /// None: the proxy's own idle timeout (1 h, Istio's default); 0: none (Envoy's 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout_ms: Option<u64>,
}

impl ConnectionPool {
    pub fn summary(&self) -> String {
        let limits = [
            ("connections", self.max_connections.map(u64::from)),
            ("pending", self.max_pending.map(u64::from)),
            ("requests", self.max_requests.map(u64::from)),
            ("connect ms", self.connect_timeout_ms),
            (
                "requests/connection",
                self.max_requests_per_connection.map(u64::from),
            ),
            ("idle ms", self.idle_timeout_ms),
        ];
        let parts: Vec<String> = limits
            .iter()
            .filter_map(|(name, v)| v.map(|v| format!("{name} {v}")))
            .collect();
        format!("limit {}", parts.join(", "))
    }
}

impl TrafficPolicy {
    pub fn is_empty(&self) -> bool {
        self.load_balancer.is_none()
            && self.outlier_detection.is_none()
            && self.connection_pool.is_none()
            && self.origination.is_none()
    }

    /// This policy's settings, and `base`'s where this one sets none.
    pub fn over(&self, base: &TrafficPolicy) -> TrafficPolicy {
        fn pick<T: Clone>(own: &Option<T>, base: &Option<T>) -> Option<T> {
            own.clone().or_else(|| base.clone())
        }
        TrafficPolicy {
            load_balancer: pick(&self.load_balancer, &base.load_balancer),
            outlier_detection: pick(&self.outlier_detection, &base.outlier_detection),
            connection_pool: pick(&self.connection_pool, &base.connection_pool),
            origination: pick(&self.origination, &base.origination),
        }
    }

    /// One line for `weft proxy-config clusters`: `-` for the defaults.
    pub fn summary(&self) -> String {
        let lb = self.load_balancer.as_ref().map(|lb| match lb {
            LoadBalancer::RoundRobin => "ROUND_ROBIN".to_string(),
            LoadBalancer::Random => "RANDOM".to_string(),
            LoadBalancer::LeastRequest => "LEAST_REQUEST".to_string(),
            LoadBalancer::ConsistentHash(on) => format!(
                "hash({})",
                match on {
                    HashOn::Header(h) => format!("header {h}"),
                    HashOn::Cookie(c) => format!("cookie {c}"),
                    HashOn::SourceIp => "source ip".to_string(),
                    HashOn::QueryParameter(q) => format!("query {q}"),
                }
            ),
        });
        let od = self
            .outlier_detection
            .as_ref()
            .map(OutlierDetection::summary);
        let pool = self.connection_pool.as_ref().map(ConnectionPool::summary);
        let parts: Vec<String> = lb.into_iter().chain(od).chain(pool).collect();
        if parts.is_empty() {
            "-".into()
        } else {
            parts.join("; ")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_subset_policy_overrides_its_hosts_field_by_field() {
        let host = TrafficPolicy {
            load_balancer: Some(LoadBalancer::Random),
            outlier_detection: Some(OutlierDetection::istio_default()),
            connection_pool: Some(ConnectionPool {
                max_connections: Some(1),
                max_pending: Some(1),
                ..Default::default()
            }),
            origination: None,
        };
        let subset = TrafficPolicy {
            load_balancer: Some(LoadBalancer::LeastRequest),
            ..Default::default()
        };
        let merged = subset.over(&host);
        assert_eq!(merged.load_balancer, Some(LoadBalancer::LeastRequest));
        assert_eq!(merged.outlier_detection, host.outlier_detection);
        assert_eq!(merged.connection_pool, host.connection_pool);
        assert_eq!(TrafficPolicy::default().summary(), "-");
        assert_eq!(
            merged.summary(),
            "LEAST_REQUEST; eject 5×5xx for 30s×n, ≤10%; limit connections 1, pending 1"
        );
        let json = serde_json::to_value(&merged).unwrap();
        assert_eq!(json["loadBalancer"], "leastRequest");
        assert_eq!(json["connectionPool"]["maxConnections"], 1);
        let back: TrafficPolicy = serde_json::from_value(json).unwrap();
        assert_eq!(back, merged);
    }
}
