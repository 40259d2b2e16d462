//! `TLSRoute` and `TCPRoute` (`gateway.networking.k8s.io/v1`, standard channel since v1.6):
//! routes of a Gateway's `TLS` (mode `Passthrough`) and `TCP` listeners. Watched with their
//! spec as raw JSON and read strictly by [`Spec::parse`], so an error names the field.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::common::{BackendRef, ParentReference};
use super::strict;

/// TLS connections routed by their ClientHello's SNI, never terminated (Passthrough).
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "gateway.networking.k8s.io",
    version = "v1",
    kind = "TLSRoute",
    plural = "tlsroutes",
    namespaced
)]
#[serde(transparent)]
pub struct TLSRouteSpec {
    /// The spec as stored; [`Spec`] is its strict reading.
    pub raw: Value,
}

/// TCP connections relayed as bytes.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "gateway.networking.k8s.io",
    version = "v1",
    kind = "TCPRoute",
    plural = "tcproutes",
    namespaced
)]
#[serde(transparent)]
pub struct TCPRouteSpec {
    /// The spec as stored; [`Spec`] is its strict reading.
    pub raw: Value,
}

/// `TLSRouteSpec` / `TCPRouteSpec`, strictly (a TCPRoute has no `hostnames`: the CRD refuses
/// it, so it is always empty there).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Spec {
    pub parent_refs: Vec<ParentReference>,
    pub hostnames: Vec<String>,
    pub rules: Vec<Rule>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Top {
    #[serde(default)]
    parent_refs: Vec<ParentReference>,
    #[serde(default)]
    hostnames: Vec<String>,
    #[serde(default)]
    rules: Vec<Value>,
}

/// `TLSRouteRule` / `TCPRouteRule`: weighted backends only (the CRD allows one rule).
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rule {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub backend_refs: Vec<BackendRef>,
}

impl Spec {
    pub fn parse(raw: &Value) -> Result<Spec, String> {
        let top: Top = strict("spec", raw)?;
        let rules = top
            .rules
            .iter()
            .enumerate()
            .map(|(i, r)| strict(&format!("spec.rules[{i}]"), r))
            .collect::<Result<_, _>>()?;
        Ok(Spec {
            parent_refs: top.parent_refs,
            hostnames: top.hostnames,
            rules,
        })
    }
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
