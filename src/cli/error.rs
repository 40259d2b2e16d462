//! Errors of the user CLI (`weft namespace|tag|revision`). Every refusal a user can cause says
//! what to change; the cluster errors keep the API server's message and name the action.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum CliError {
    #[error(
        "namespace {namespace} is never injected (system namespaces and weft's own namespace \
         are excluded from injection); enrol an application namespace instead"
    )]
    NeverInjectedNamespace { namespace: String },

    #[error(
        "--osm enrols the namespace through the `default` tag, and --revision {revision} names \
         another; pass one of them (--revision {revision} alone, or --osm alone)"
    )]
    RevisionWithOsm { revision: String },

    #[error(
        "{what} {name:?} is not a valid name: {reason}. Use at most 63 lowercase letters, digits \
         and '-', starting and ending with a letter or digit, such as \"canary\""
    )]
    InvalidName {
        what: &'static str,
        name: String,
        reason: &'static str,
    },

    #[error(
        "{value:?} is neither a RevisionTag nor a revision (MeshConfig) in {weft_namespace}, so \
         pods of the namespace would be refused. {known}. Pick one of them, create the \
         revision or the tag first (weft tag set {value} --revision <revision>), or pass \
         --force to label the namespace anyway"
    )]
    UnresolvedValue {
        value: String,
        weft_namespace: String,
        known: String,
    },

    #[error(
        "tag {tag:?} points at revision {revision:?}, which does not exist in {weft_namespace}, \
         so pods of the namespace would be refused. {known}. Point the tag at an existing \
         revision (weft tag set {tag} --revision <revision> --overwrite), or pass --force to \
         label the namespace anyway"
    )]
    TagWithoutRevision {
        tag: String,
        revision: String,
        weft_namespace: String,
        known: String,
    },

    #[error(
        "namespace {namespace} is monitored by another mesh ({label}={mesh}), whose injector \
         would add its own proxy to the same pods. Remove the namespace from that mesh first \
         (such as `osm namespace remove {namespace}`), or pass --force to {force_does}"
    )]
    OtherMesh {
        namespace: String,
        label: &'static str,
        mesh: String,
        force_does: &'static str,
    },

    #[error(
        "tag {tag:?} cannot be created: a revision (MeshConfig) of that name exists in \
         {weft_namespace}, and `istio.io/rev={tag}` would be ambiguous. Pick another tag name"
    )]
    TagNameIsRevision { tag: String, weft_namespace: String },

    #[error(
        "tag {tag:?} already points at revision {current:?}; pass --overwrite to move it to \
         {requested:?} (namespaces using it move on their next restart)"
    )]
    TagExists {
        tag: String,
        current: String,
        requested: String,
    },

    #[error(
        "revision {revision:?} does not exist in {weft_namespace} (known revisions: \
         {revisions}); create MeshConfig {revision:?} first, or pass --force to point the tag \
         at it anyway (pods using the tag are refused until it exists)"
    )]
    UnknownRevision {
        revision: String,
        weft_namespace: String,
        revisions: String,
    },

    #[error("tag {tag:?} does not exist in {weft_namespace} (known tags: {tags})")]
    TagNotFound {
        tag: String,
        weft_namespace: String,
        tags: String,
    },

    #[error(
        "tag {tag:?} is in use: {users}. Move them off it first (label the namespaces with \
         another tag or revision and restart their workloads), or pass --force to remove it \
         anyway (new pods using it are then refused)"
    )]
    TagInUse { tag: String, users: String },

    #[error(
        "namespace {namespace} not found; create it first (kubectl create namespace {namespace})"
    )]
    NamespaceNotFound { namespace: String },

    #[error(
        "weft's {kind} API is not served by this cluster; install weft first (kubectl apply \
         -k config/default)"
    )]
    NotInstalled { kind: &'static str },

    #[error(
        "namespace {namespace} kept changing while weft updated it ({attempts} attempts); \
         run the command again"
    )]
    Conflict { namespace: String, attempts: u32 },

    // The cause is the source, not part of the message: anyhow prints it as "Caused by".
    #[error("{action}")]
    Kube {
        action: String,
        #[source]
        source: kube::Error,
    },

    #[error("{failed} check(s) failed; the hints above say what to do")]
    ChecksFailed { failed: usize },

    #[error(
        "Deployment {namespace}/weft-operator still exists, and the operator would publish the \
         root ConfigMaps again at once. Remove weft first (kubectl delete -k config/default), \
         then run weft uninstall; or pass --force to remove them anyway"
    )]
    OperatorStillInstalled { namespace: String },

    #[error(
        "Secret {namespace}/cacerts (a plug-in CA) is what weft signs with, so there is no weft \
         root to reset. To change the root, replace Secret cacerts with your new intermediate \
         and restart the operator (kubectl rollout restart deployment/weft-operator -n \
         {namespace})"
    )]
    PluginCaInUse { namespace: String },

    #[error(
        "not reset: this replaces the mesh root, and every meshed workload then needs a restart \
         before its proxy trusts the new one (mTLS between old and new pods fails until then). \
         Run again with --yes to go ahead"
    )]
    ConfirmationNeeded,

    #[error("making a new root: {message}")]
    NewRoot { message: String },

    #[error("{message}")]
    BadRequest { message: String },

    #[error("writing {format} output: {message}")]
    Output {
        format: &'static str,
        message: String,
    },
}

impl CliError {
    /// Short, stable label for metrics and logs.
    pub fn metric_label(&self) -> &'static str {
        match self {
            CliError::NeverInjectedNamespace { .. } => "never_injected_namespace",
            CliError::RevisionWithOsm { .. } => "revision_with_osm",
            CliError::InvalidName { .. } => "invalid_name",
            CliError::UnresolvedValue { .. } => "unresolved_value",
            CliError::TagWithoutRevision { .. } => "tag_without_revision",
            CliError::OtherMesh { .. } => "other_mesh",
            CliError::TagNameIsRevision { .. } => "tag_name_is_revision",
            CliError::TagExists { .. } => "tag_exists",
            CliError::UnknownRevision { .. } => "unknown_revision",
            CliError::TagNotFound { .. } => "tag_not_found",
            CliError::TagInUse { .. } => "tag_in_use",
            CliError::NamespaceNotFound { .. } => "namespace_not_found",
            CliError::NotInstalled { .. } => "not_installed",
            CliError::Conflict { .. } => "conflict",
            CliError::Kube { .. } => "kube",
            CliError::ChecksFailed { .. } => "checks_failed",
            CliError::OperatorStillInstalled { .. } => "operator_still_installed",
            CliError::PluginCaInUse { .. } => "plugin_ca_in_use",
            CliError::ConfirmationNeeded => "confirmation_needed",
            CliError::NewRoot { .. } => "new_root",
            CliError::BadRequest { .. } => "bad_request",
            CliError::Output { .. } => "output",
        }
    }

    pub(crate) fn kube(action: impl Into<String>) -> impl FnOnce(kube::Error) -> CliError {
        let action = action.into();
        move |source| CliError::Kube { action, source }
    }
}

/// Checks a tag or revision name: it is both an object name and the value of an
/// `istio.io/rev` label, so it must be an RFC 1123 label.
pub fn check_name(what: &'static str, name: &str) -> Result<(), CliError> {
    let invalid = |reason| {
        Err(CliError::InvalidName {
            what,
            name: name.to_string(),
            reason,
        })
    };
    if name.is_empty() {
        return invalid("it is empty");
    }
    if name.len() > 63 {
        return invalid("it is longer than 63 characters");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return invalid("it holds characters other than lowercase letters, digits and '-'");
    }
    if name.starts_with('-') || name.ends_with('-') {
        return invalid("it starts or ends with '-'");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_must_be_rfc1123_labels() {
        for ok in ["stable", "asm-1-27", "a", &"x".repeat(63)] {
            assert!(check_name("tag", ok).is_ok(), "{ok}");
        }
        for bad in ["", "Canary", "-a", "a-", "a.b", "a_b", &"x".repeat(64)] {
            let err = check_name("tag", bad).expect_err(bad);
            assert_eq!(err.metric_label(), "invalid_name");
            assert!(err.to_string().contains("such as \"canary\""), "{err}");
        }
    }
}
