//! SMI's `TrafficSplit` (`split.smi-spec.io/v1alpha2`), spec kept raw and read strictly by
//! [`crate::route::smi`]; see the module doc.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A root Service's traffic spread over backend Services by weight.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "split.smi-spec.io",
    version = "v1alpha2",
    kind = "TrafficSplit",
    plural = "trafficsplits",
    namespaced
)]
#[serde(transparent)]
pub struct TrafficSplitSpec {
    /// The spec as stored; `crate::route::smi` reads it strictly.
    pub raw: serde_json::Value,
}
