//! A DestinationRule's traffic policy for one host or subset beyond TLS, as the snapshot
//! carries it: how the client proxy balances ([`super::balance`]) and ejects
//! ([`super::outlier`]). A subset's policy is already merged over its host's (Istio: the
//! subset's settings override the rule's, field by field).

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
}

impl TrafficPolicy {
    pub fn is_empty(&self) -> bool {
        self.load_balancer.is_none() && self.outlier_detection.is_none()
    }

    /// This policy's settings, and `base`'s where this one sets none.
    pub fn over(&self, base: &TrafficPolicy) -> TrafficPolicy {
        TrafficPolicy {
            load_balancer: self
                .load_balancer
                .clone()
                .or_else(|| base.load_balancer.clone()),
            outlier_detection: self
                .outlier_detection
                .clone()
                .or_else(|| base.outlier_detection.clone()),
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
        let parts: Vec<String> = lb.into_iter().chain(od).collect();
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
        };
        let subset = TrafficPolicy {
            load_balancer: Some(LoadBalancer::LeastRequest),
            outlier_detection: None,
        };
        let merged = subset.over(&host);
        assert_eq!(merged.load_balancer, Some(LoadBalancer::LeastRequest));
        assert_eq!(merged.outlier_detection, host.outlier_detection);
        assert_eq!(TrafficPolicy::default().summary(), "-");
        assert_eq!(
            merged.summary(),
            "LEAST_REQUEST; eject 5×5xx for 30s×n, ≤10%"
        );
        let json = serde_json::to_value(&merged).unwrap();
        assert_eq!(json["loadBalancer"], "leastRequest");
        let back: TrafficPolicy = serde_json::from_value(json).unwrap();
        assert_eq!(back, merged);
    }
}
