//! Istio's `VirtualService` (`networking.istio.io/v1`), read-only. The spec is watched as raw
//! JSON and read strictly per object by [`crate::route::istio`], so one VirtualService weft
//! cannot apply (a field not supported yet, a bad weight) is refused by name on its own and
//! never breaks the watch of the others. For clusters without Istio, `config/istio-api` ships
//! a CRD for this kind that keeps unknown fields for weft to refuse.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// How requests to some hosts are routed (Istio's VirtualService; weft applies mesh routes).
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "networking.istio.io",
    version = "v1",
    kind = "VirtualService",
    plural = "virtualservices",
    namespaced
)]
#[serde(transparent)]
pub struct VirtualServiceSpec {
    /// The spec as stored; `route::istio::VirtualServiceSpec` is its strict reading.
    pub raw: serde_json::Value,
}
