//! What every route kind shares: the custom resource that keeps its spec as raw JSON, and
//! the strict reading of the parts all kinds have (parents, hostnames, rules read one by
//! one so an error names `spec.rules[i]`).

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::common::ParentReference;
use super::strict;

/// Declares a route kind's custom resource: its spec stored as raw JSON (`raw`), read
/// strictly per object by the kind's `Spec::parse`, so one route weft cannot apply is
/// refused in its own status and never breaks the watch of the others.
macro_rules! raw_route_resource {
    ($(#[$doc:meta])* $spec:ident, kind = $kind:literal, plural = $plural:literal) => {
        $(#[$doc])*
        #[derive(
            kube::CustomResource,
            serde::Serialize,
            serde::Deserialize,
            Clone,
            Debug,
            Default,
            PartialEq,
            schemars::JsonSchema,
        )]
        #[kube(
            group = "gateway.networking.k8s.io",
            version = "v1",
            kind = $kind,
            plural = $plural,
            namespaced
        )]
        #[serde(transparent)]
        pub struct $spec {
            /// The spec as stored; the kind's `Spec` is its strict reading.
            pub raw: serde_json::Value,
        }
    };
}
pub(crate) use raw_route_resource;

/// A route's spec, strictly, with the kind's rule type `R`. A kind without `hostnames`
/// (TCPRoute: its CRD refuses the field) always has it empty.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RouteSpec<R> {
    pub parent_refs: Vec<ParentReference>,
    pub hostnames: Vec<String>,
    pub rules: Vec<R>,
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

impl<R: DeserializeOwned> RouteSpec<R> {
    pub fn parse(raw: &Value) -> Result<Self, String> {
        let top: Top = strict("spec", raw)?;
        let rules = top
            .rules
            .iter()
            .enumerate()
            .map(|(i, r)| strict(&format!("spec.rules[{i}]"), r))
            .collect::<Result<_, _>>()?;
        Ok(RouteSpec {
            parent_refs: top.parent_refs,
            hostnames: top.hostnames,
            rules,
        })
    }
}
