//! `RevisionTag`: a stable name (`prod`, `default`) that points at a revision (a MeshConfig),
//! so namespaces move to a new data plane by moving the tag, not by relabelling (SPEC §3).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A name that namespaces use in `istio.io/rev=<tag>` and that points at a revision. The tag
/// named `default` also serves `istio-injection=enabled`, `sidecar.istio.io/inject=true` and
/// `openservicemesh.io/monitored-by=<mesh name>`.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "mesh.weft.dev",
    version = "v1alpha1",
    kind = "RevisionTag",
    plural = "revisiontags",
    singular = "revisiontag",
    shortname = "wtag",
    namespaced,
    status = "RevisionTagStatus",
    printcolumn = r#"{"name":"Revision","type":"string","jsonPath":".spec.revision"}"#,
    printcolumn = r#"{"name":"Resolved","type":"string","jsonPath":".status.conditions[?(@.type==\"Resolved\")].status"}"#,
    printcolumn = r#"{"name":"In Use","type":"string","jsonPath":".status.conditions[?(@.type==\"InUse\")].status"}"#,
    printcolumn = r#"{"name":"Pods","type":"integer","jsonPath":".status.pods"}"#,
    printcolumn = r#"{"name":"Stale","type":"integer","jsonPath":".status.stalePods"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct RevisionTagSpec {
    /// Name of the MeshConfig (revision) this tag points at, in the operator's namespace.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub revision: String,
}

/// Observed state of a tag, written by the revision-tag controller. Counts are always present.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RevisionTagStatus {
    /// The revision the tag resolved to (empty while Resolved is False).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// Resolved: spec.revision names an existing MeshConfig. InUse: namespaces or pods use it.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// Namespaces whose labels select this tag.
    #[serde(default)]
    pub namespaces: Vec<String>,
    /// Pods injected through this tag.
    #[serde(default)]
    pub pods: i32,
    /// Pods injected through this tag by a revision other than the one it now points at; they
    /// move on their next restart.
    #[serde(default)]
    pub stale_pods: i32,
}
