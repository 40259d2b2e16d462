//! `TLSRoute` and `TCPRoute` (`gateway.networking.k8s.io/v1`, standard channel since v1.6):
//! routes of a Gateway's `TLS` (mode `Passthrough`) and `TCP` listeners. Watched with their
//! spec as raw JSON and read strictly by [`Spec::parse`], so an error names the field.

use serde::Deserialize;

use super::common::BackendRef;
use super::route::{RouteSpec, raw_route_resource};

raw_route_resource!(
    /// TLS connections routed by their ClientHello's SNI, never terminated (Passthrough).
    TLSRouteSpec,
    kind = "TLSRoute",
    plural = "tlsroutes"
);

raw_route_resource!(
    /// TCP connections relayed as bytes.
    TCPRouteSpec,
    kind = "TCPRoute",
    plural = "tcproutes"
);

/// `TLSRouteSpec` / `TCPRouteSpec`, strictly.
pub type Spec = RouteSpec<Rule>;

/// `TLSRouteRule` / `TCPRouteRule`: weighted backends only (the CRD allows one rule).
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rule {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub backend_refs: Vec<BackendRef>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_route_reads_strictly_and_names_the_unknown_field() {
        let s = Spec::parse(&json!({
            "parentRefs": [{"name": "gw", "sectionName": "tls"}],
            "hostnames": ["abc.example.com"],
            "rules": [{"backendRefs": [{"name": "tls-backend", "port": 443, "weight": 1}]}]}))
        .expect("valid");
        assert_eq!(s.hostnames, vec!["abc.example.com".to_string()]);
        assert_eq!(s.rules[0].backend_refs[0].port, Some(443));
        let e = Spec::parse(&json!({"rules": [{"matches": [{}], "backendRefs": []}]}))
            .expect_err("TLSRoute rules have no matches");
        assert!(e.contains("spec.rules[0]") && e.contains("matches"), "{e}");
    }
}
