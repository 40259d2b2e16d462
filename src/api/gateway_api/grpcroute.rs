//! `GRPCRoute` (`gateway.networking.k8s.io/v1`): watched with its spec as raw JSON, read
//! strictly by [`Spec::parse`] one rule at a time, so an error names the rule and the field.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::common::{
    BackendRef, HeaderFilter, HeaderMatch, LocalObjectReference, MirrorFilter, ParentReference,
};
use super::strict;

/// gRPC routing rules for a Gateway's listeners or, with a Service parent, for the mesh.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "gateway.networking.k8s.io",
    version = "v1",
    kind = "GRPCRoute",
    plural = "grpcroutes",
    namespaced
)]
#[serde(transparent)]
pub struct GRPCRouteSpec {
    /// The spec as stored; [`Spec`] is its strict reading.
    pub raw: Value,
}

/// `GRPCRouteSpec`, strictly.
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

/// `GRPCRouteRule`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rule {
    #[serde(default)]
    pub name: Option<String>,
    /// None or empty: every call.
    #[serde(default)]
    pub matches: Vec<Match>,
    #[serde(default)]
    pub filters: Vec<Filter>,
    #[serde(default)]
    pub backend_refs: Vec<BackendRef>,
}

/// `GRPCRouteMatch`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Match {
    #[serde(default)]
    pub method: Option<MethodMatch>,
    #[serde(default)]
    pub headers: Vec<HeaderMatch>,
}

/// `GRPCMethodMatch`: `type` `Exact` (the default) or `RegularExpression`, on the
/// `/service/method` path.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MethodMatch {
    #[serde(default, rename = "type")]
    pub type_: Option<String>,
    #[serde(default)]
    pub service: Option<String>,
    #[serde(default)]
    pub method: Option<String>,
}

/// `GRPCRouteFilter`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Filter {
    #[serde(rename = "type")]
    pub type_: String,
    #[serde(default)]
    pub request_header_modifier: Option<HeaderFilter>,
    #[serde(default)]
    pub response_header_modifier: Option<HeaderFilter>,
    #[serde(default)]
    pub request_mirror: Option<MirrorFilter>,
    #[serde(default)]
    pub extension_ref: Option<LocalObjectReference>,
}
