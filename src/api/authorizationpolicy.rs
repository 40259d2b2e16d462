//! Istio's `AuthorizationPolicy` (`security.istio.io/v1`), read-only like PeerAuthentication.
//! The spec is watched as raw JSON and read strictly per object by [`crate::authz::istio`], so
//! one policy weft cannot read (an unknown field, a CUSTOM action) is refused by name on its
//! own and never breaks the watch of the others. For clusters without Istio,
//! `config/istio-api` ships a CRD for this kind that keeps unknown fields for weft to refuse.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Who may do what on the selected workloads (Istio's ALLOW/DENY/AUDIT semantics).
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "security.istio.io",
    version = "v1",
    kind = "AuthorizationPolicy",
    plural = "authorizationpolicies",
    namespaced
)]
#[serde(transparent)]
pub struct AuthorizationPolicySpec {
    /// The spec as stored; `authz::istio::AuthorizationPolicySpec` is its strict reading.
    pub raw: serde_json::Value,
}
