//! `GRPCRoute` (`gateway.networking.k8s.io/v1`): watched with its spec as raw JSON, read
//! strictly by [`Spec::parse`] one rule at a time, so an error names the rule and the field.

use serde::Deserialize;

use super::common::{BackendRef, HeaderFilter, HeaderMatch, LocalObjectReference, MirrorFilter};
use super::route::{RouteSpec, raw_route_resource};

raw_route_resource!(
    /// gRPC routing rules for a Gateway's listeners or, with a Service parent, for the mesh.
    GRPCRouteSpec,
    kind = "GRPCRoute",
    plural = "grpcroutes"
);

/// `GRPCRouteSpec`, strictly.
pub type Spec = RouteSpec<Rule>;

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
