//! Istio's `PeerAuthentication` (`security.istio.io/v1`), read-only: weft honours the mTLS
//! policies Istio users already have (SPEC §1.3, §9) and never writes them or their CRD.
//! For clusters without Istio, `config/istio-api` ships a CRD for this kind.
//!
//! Only the fields weft implements are typed. Modes are kept as strings so one policy with a
//! mode this version does not know cannot break the watch of all the others; the config
//! server reports such a policy instead of guessing (see `discovery::policy`).

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Which mTLS a workload accepts, with Istio's precedence: a policy with a selector in the
/// workload's namespace, then one without a selector in that namespace, then one without a
/// selector in the root namespace (mesh-wide), then the revision's `spec.mtls.mode`.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "security.istio.io",
    version = "v1",
    kind = "PeerAuthentication",
    plural = "peerauthentications",
    namespaced
)]
#[serde(rename_all = "camelCase")]
pub struct PeerAuthenticationSpec {
    /// Pods the policy applies to (by labels); absent means every pod of the namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<WorkloadSelector>,
    /// The mode for the selected workloads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtls: Option<PeerMtls>,
    /// Per-port modes (container port numbers), only honoured with a selector, as in Istio.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_level_mtls: Option<BTreeMap<String, PeerMtls>>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadSelector {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_labels: Option<BTreeMap<String, String>>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PeerMtls {
    /// UNSET, DISABLE, PERMISSIVE or STRICT.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
}
