//! Istio's `Gateway` (`networking.istio.io/v1`), read-only: which gateway pods (by label)
//! serve which ports and hosts. The spec is watched as raw JSON and read strictly per object
//! by [`crate::route::gateway`]. For clusters without Istio, `config/istio-api` ships the CRD.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Ports and hosts a set of gateway pods serves (Istio's Gateway).
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "networking.istio.io",
    version = "v1",
    kind = "Gateway",
    plural = "gateways",
    namespaced
)]
#[serde(transparent)]
pub struct GatewaySpec {
    /// The spec as stored; `route::gateway::GatewaySpec` is its strict reading.
    pub raw: serde_json::Value,
}
