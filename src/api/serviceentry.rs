//! Istio's `ServiceEntry` (`networking.istio.io/v1`), read-only: the spec is watched raw and
//! read strictly per object by [`crate::route::egress`], so one entry weft cannot apply is
//! refused by name on its own (`WeftAccepted=False`) and never breaks the watch of the others.
//! For clusters without Istio, `config/istio-api` ships the CRD.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A host outside the mesh's Services that workloads may reach (Istio's ServiceEntry).
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "networking.istio.io",
    version = "v1",
    kind = "ServiceEntry",
    plural = "serviceentries",
    namespaced
)]
#[serde(transparent)]
pub struct ServiceEntrySpec {
    /// The spec as stored; `route::egress::ServiceEntrySpec` is its strict reading.
    pub raw: serde_json::Value,
}
