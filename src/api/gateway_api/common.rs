//! The Gateway API types the route kinds share (`ParentReference`, `BackendRef`, header
//! matches and modifiers, `HTTPRequestMirrorFilter`), read strictly: every field the standard
//! channel has is named here, so what weft does not implement can be refused by its name.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `ParentReference`: what a route attaches to. The CRD defaults `group` to
/// `gateway.networking.k8s.io` and `kind` to `Gateway`; GAMMA's parent is `group: ""`,
/// `kind: Service`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ParentReference {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub section_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i32>,
}

impl ParentReference {
    /// A Service (core group, kind `Service`): the GAMMA binding.
    pub fn is_service(&self) -> bool {
        self.group.as_deref().unwrap_or(super::GROUP).is_empty()
            && self.kind.as_deref().unwrap_or("Gateway") == "Service"
    }
}

/// A route's parent references alone (`spec.parentRefs`), read leniently: they decide which
/// parents its status speaks to even when the rest of the spec cannot be read.
pub fn parent_refs(raw: &Value) -> Vec<ParentReference> {
    raw.get("parentRefs")
        .and_then(|p| Vec::<ParentReference>::deserialize(p).ok())
        .unwrap_or_default()
}

/// `HTTPBackendRef` / `GRPCBackendRef`: a backend with a weight and its own filters.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BackendRef {
    #[serde(default)]
    pub group: Option<String>,
    #[serde(default)]
    pub kind: Option<String>,
    pub name: String,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub port: Option<i32>,
    /// The CRD defaults it to 1.
    #[serde(default)]
    pub weight: Option<i32>,
    /// Backend-level filters, read as the rule's (`HTTPRouteFilter` / `GRPCRouteFilter`).
    #[serde(default)]
    pub filters: Vec<Value>,
}

impl BackendRef {
    /// A core Service (group `""`, kind `Service`, the CRD's defaults).
    pub fn is_service(&self) -> bool {
        self.group.as_deref().unwrap_or("").is_empty()
            && self.kind.as_deref().unwrap_or("Service") == "Service"
    }
}

/// `HTTPHeaderMatch` / `GRPCHeaderMatch`: `type` `Exact` (the default) or `RegularExpression`;
/// names are case-insensitive.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderMatch {
    #[serde(default, rename = "type")]
    pub type_: Option<String>,
    pub name: String,
    pub value: String,
}

/// `HTTPHeader`: one name and value of a modifier's `set` or `add`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpHeader {
    pub name: String,
    pub value: String,
}

/// `HTTPHeaderFilter`: `RequestHeaderModifier` / `ResponseHeaderModifier`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderFilter {
    #[serde(default)]
    pub set: Vec<HttpHeader>,
    #[serde(default)]
    pub add: Vec<HttpHeader>,
    #[serde(default)]
    pub remove: Vec<String>,
}

/// `HTTPRequestMirrorFilter`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MirrorFilter {
    #[serde(rename = "backendRef")]
    pub backend_ref: Value,
    #[serde(default)]
    pub percent: Option<i32>,
    #[serde(default)]
    pub fraction: Option<Value>,
}

/// `LocalObjectReference` of an `ExtensionRef` filter.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalObjectReference {
    pub group: String,
    pub kind: String,
    pub name: String,
}
