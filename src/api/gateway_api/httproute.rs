//! `HTTPRoute` (`gateway.networking.k8s.io/v1`): watched with its spec as raw JSON, read
//! strictly by [`Spec::parse`] one rule at a time, so an error names the rule and the field.

use serde::Deserialize;

use super::common::{BackendRef, HeaderFilter, HeaderMatch, LocalObjectReference, MirrorFilter};
use super::route::{RouteSpec, raw_route_resource};

raw_route_resource!(
    /// HTTP routing rules for a Gateway's listeners or, with a Service parent, for the mesh.
    HTTPRouteSpec,
    kind = "HTTPRoute",
    plural = "httproutes"
);

/// `HTTPRouteSpec`, strictly.
pub type Spec = RouteSpec<Rule>;

/// `HTTPRouteRule`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rule {
    #[serde(default)]
    pub name: Option<String>,
    /// The CRD defaults it to one `PathPrefix /` match; absent means the same.
    #[serde(default)]
    pub matches: Option<Vec<Match>>,
    #[serde(default)]
    pub filters: Vec<Filter>,
    #[serde(default)]
    pub backend_refs: Vec<BackendRef>,
    #[serde(default)]
    pub timeouts: Option<Timeouts>,
}

/// `HTTPRouteMatch`: every condition given must hold.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Match {
    #[serde(default)]
    pub path: Option<PathMatch>,
    #[serde(default)]
    pub headers: Vec<HeaderMatch>,
    #[serde(default)]
    pub query_params: Vec<HeaderMatch>,
    #[serde(default)]
    pub method: Option<String>,
}

/// `HTTPPathMatch`: `type` `Exact`, `PathPrefix` (the default) or `RegularExpression`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathMatch {
    #[serde(default, rename = "type")]
    pub type_: Option<String>,
    #[serde(default)]
    pub value: Option<String>,
}

/// `HTTPRouteFilter`: `type` names which one of the other fields is set.
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
    pub request_redirect: Option<RedirectFilter>,
    #[serde(default)]
    pub url_rewrite: Option<UrlRewriteFilter>,
    #[serde(default)]
    pub extension_ref: Option<LocalObjectReference>,
    #[serde(default)]
    pub cors: Option<CorsFilter>,
}

/// `HTTPCORSFilter` (read by `route::gamma`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CorsFilter {
    /// `<scheme>://<host>[:<port>]`, the host may hold `*` (any labels to its left); `*`
    /// alone: every origin.
    #[serde(default)]
    pub allow_origins: Vec<String>,
    #[serde(default)]
    pub allow_credentials: Option<bool>,
    #[serde(default)]
    pub allow_methods: Vec<String>,
    #[serde(default)]
    pub allow_headers: Vec<String>,
    #[serde(default)]
    pub expose_headers: Vec<String>,
    /// Seconds; the CRD defaults it to 5.
    #[serde(default)]
    pub max_age: Option<i64>,
}

/// `HTTPRequestRedirectFilter`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RedirectFilter {
    #[serde(default)]
    pub scheme: Option<String>,
    #[serde(default)]
    pub hostname: Option<String>,
    #[serde(default)]
    pub path: Option<PathModifier>,
    #[serde(default)]
    pub port: Option<i32>,
    /// The CRD defaults it to 302.
    #[serde(default)]
    pub status_code: Option<i32>,
}

/// `HTTPURLRewriteFilter`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UrlRewriteFilter {
    #[serde(default)]
    pub hostname: Option<String>,
    #[serde(default)]
    pub path: Option<PathModifier>,
}

/// `HTTPPathModifier`: `type` `ReplaceFullPath` or `ReplacePrefixMatch`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PathModifier {
    #[serde(rename = "type")]
    pub type_: String,
    #[serde(default)]
    pub replace_full_path: Option<String>,
    #[serde(default)]
    pub replace_prefix_match: Option<String>,
}

/// `HTTPRouteTimeouts`: Gateway API durations (`1h2m3s4ms`, a Go duration subset).
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Timeouts {
    #[serde(default)]
    pub request: Option<String>,
    #[serde(default)]
    pub backend_request: Option<String>,
}
