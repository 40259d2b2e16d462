//! Istio's `DestinationRule` (`networking.istio.io/v1`), read-only, spec kept raw and read
//! strictly per object by [`crate::route::istio`] (see `virtualservice.rs` for why). For
//! clusters without Istio, `config/istio-api` ships the CRD.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Subsets of a host's endpoints by pod labels, and the client-side policy towards it.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "networking.istio.io",
    version = "v1",
    kind = "DestinationRule",
    plural = "destinationrules",
    namespaced
)]
#[serde(transparent)]
pub struct DestinationRuleSpec {
    /// The spec as stored; `route::istio::DestinationRuleSpec` is its strict reading.
    pub raw: serde_json::Value,
}
