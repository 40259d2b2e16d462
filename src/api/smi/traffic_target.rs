//! SMI's `TrafficTarget` (`access.smi-spec.io/v1alpha3`), spec kept raw; see the module doc.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Which service accounts may reach a destination service account, on which routes.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "access.smi-spec.io",
    version = "v1alpha3",
    kind = "TrafficTarget",
    plural = "traffictargets",
    namespaced
)]
#[serde(transparent)]
pub struct TrafficTargetSpec {
    /// The spec as stored; `crate::authz::smi` reads it strictly.
    pub raw: serde_json::Value,
}
