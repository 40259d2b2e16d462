//! SMI's `TCPRoute` (`specs.smi-spec.io/v1alpha4`), spec kept raw; see the module doc.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Ports that TrafficTargets allow.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "specs.smi-spec.io",
    version = "v1alpha4",
    kind = "TCPRoute",
    plural = "tcproutes",
    namespaced
)]
#[serde(transparent)]
pub struct TCPRouteSpec {
    /// The spec as stored; `crate::authz::smi` reads it strictly.
    pub raw: serde_json::Value,
}
