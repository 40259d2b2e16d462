//! Whether a pod gets a proxy, and which revision (SPEC §4). Pure: the pod, its namespace and
//! the mesh state in, a `Decision` out, so the precedence table in `webhook/README.md` is a
//! table of tests here and in `webhook/cases/`.

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use serde::Serialize;

use super::annotations;
use super::selector;
use super::state::{EffectiveMeshConfig, InjectorSettings, MeshState};
use crate::contract;

/// What the injector does with a pod.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "outcome", rename_all = "camelCase")]
pub enum Decision {
    /// Add the proxy of this revision (boxed: it carries the whole effective MeshConfig).
    Inject(Box<Injection>),
    /// Admit the pod unchanged.
    Skip {
        reason: SkipReason,
        /// Labels that disagree about the revision (for a Warning Event on the namespace).
        #[serde(skip_serializing_if = "Option::is_none")]
        conflict: Option<String>,
    },
    /// Refuse the pod: it asks for a revision weft does not have, and nobody else claims it.
    Deny { message: String },
}

impl Decision {
    /// Labels that disagree about the revision, whatever the outcome.
    pub fn conflict(&self) -> Option<&str> {
        match self {
            Decision::Inject(injection) => injection.conflict.as_deref(),
            Decision::Skip { conflict, .. } => conflict.as_deref(),
            Decision::Deny { .. } => None,
        }
    }

    /// Short, stable label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Decision::Inject(_) => "inject",
            Decision::Skip { reason, .. } => reason.metric_label(),
            Decision::Deny { .. } => "deny",
        }
    }
}

/// A resolved request for a proxy.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Injection {
    /// The revision (MeshConfig name) whose proxy is injected.
    pub revision: String,
    /// The RevisionTag the request went through, if any (how tag status counts stale pods).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// The label that asked for it, for humans: `namespace label istio.io/rev=prod (tag prod)`.
    pub via: String,
    /// The revision's settings with every default filled in.
    pub meshconfig: EffectiveMeshConfig,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conflict: Option<String>,
}

/// Why a pod is admitted without a proxy.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum SkipReason {
    /// A system namespace or the operator's own.
    NeverInjectedNamespace { namespace: String },
    /// `hostNetwork: true`: iptables would capture the node's traffic.
    HostNetwork,
    /// Carries `weft.dev/status`: re-admission is a no-op.
    AlreadyInjected,
    /// Carries `sidecar.istio.io/status`: Istio injected it first.
    InjectedByIstio,
    /// An opt-out label or annotation, described in `by`.
    OptedOut { by: String },
    /// No label asks for a proxy.
    NotEnrolled,
    /// `openservicemesh.io/monitored-by` names another mesh.
    OtherMesh { label: String },
    /// The requested value is unknown to weft but another injector's selectors match the pod.
    ClaimedByOtherInjector { label: String, injector: String },
    /// `inject.istio.io/templates` names only Istio's proxyless gRPC templates, which put no
    /// proxy in the pod's traffic path.
    ProxylessTemplate { templates: String },
}

impl SkipReason {
    /// Whether the skip is news to the user (a Normal Event on the pod's owner); the routine
    /// skips (system namespaces, opt-outs, unenrolled namespaces) would only be noise.
    pub fn emits_event(&self) -> bool {
        matches!(
            self,
            SkipReason::OtherMesh { .. }
                | SkipReason::ClaimedByOtherInjector { .. }
                | SkipReason::ProxylessTemplate { .. }
        )
    }

    pub fn metric_label(&self) -> &'static str {
        match self {
            SkipReason::NeverInjectedNamespace { .. } => "skip_namespace",
            SkipReason::HostNetwork => "skip_host_network",
            SkipReason::AlreadyInjected => "skip_already_injected",
            SkipReason::InjectedByIstio => "skip_istio_injected",
            SkipReason::OptedOut { .. } => "skip_opted_out",
            SkipReason::NotEnrolled => "skip_not_enrolled",
            SkipReason::OtherMesh { .. } => "skip_other_mesh",
            SkipReason::ClaimedByOtherInjector { .. } => "skip_other_injector",
            SkipReason::ProxylessTemplate { .. } => "skip_proxyless",
        }
    }
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SkipReason::NeverInjectedNamespace { namespace } => {
                write!(f, "namespace {namespace} is never injected")
            }
            SkipReason::HostNetwork => write!(
                f,
                "the pod uses hostNetwork; a proxy would capture the node's traffic"
            ),
            SkipReason::AlreadyInjected => write!(
                f,
                "the pod already carries {}; it was injected before",
                contract::ANNOTATION_STATUS
            ),
            SkipReason::InjectedByIstio => write!(
                f,
                "the pod carries {}: Istio injected it",
                contract::ANNOTATION_ISTIO_STATUS
            ),
            SkipReason::OptedOut { by } => write!(f, "opted out by {by}"),
            SkipReason::NotEnrolled => write!(
                f,
                "neither the namespace nor the pod has a label that enrols it in the mesh"
            ),
            SkipReason::OtherMesh { label } => {
                write!(
                    f,
                    "{label} belongs to another mesh; weft leaves the pod to it"
                )
            }
            SkipReason::ClaimedByOtherInjector { label, injector } => write!(
                f,
                "{label} names no weft revision or tag, and the webhook {injector} of another \
                 injector selects this pod; weft leaves the pod to it"
            ),
            SkipReason::ProxylessTemplate { templates } => write!(
                f,
                "{key}={templates} asks for proxyless gRPC, where no proxy carries the pod's \
                 traffic and the app's gRPC library speaks xDS itself: weft adds no proxy and \
                 serves no xDS, so the pod's traffic is outside the mesh",
                key = contract::ANNOTATION_INJECT_TEMPLATES
            ),
        }
    }
}

/// Decides for one pod being created in `namespace` (SPEC §4). Order: never-inject rules,
/// then opt-outs (which always win), then the first of the five enrolment rules.
pub fn decide(
    pod: &Pod,
    namespace: &Namespace,
    world: &MeshState,
    settings: &InjectorSettings,
) -> Decision {
    let namespace_name = namespace
        .metadata
        .name
        .as_deref()
        .or(pod.metadata.namespace.as_deref())
        .unwrap_or_default();
    let skip = |reason| Decision::Skip {
        reason,
        conflict: None,
    };

    if settings.never_injects(namespace_name) {
        return skip(SkipReason::NeverInjectedNamespace {
            namespace: namespace_name.to_string(),
        });
    }
    if pod.spec.as_ref().and_then(|s| s.host_network) == Some(true) {
        return skip(SkipReason::HostNetwork);
    }
    let pod_annotations = map(&pod.metadata.annotations);
    if pod_annotations.contains_key(contract::ANNOTATION_STATUS) {
        return skip(SkipReason::AlreadyInjected);
    }
    if pod_annotations.contains_key(contract::ANNOTATION_ISTIO_STATUS) {
        return skip(SkipReason::InjectedByIstio);
    }
    if let Some(by) = opt_out(pod, namespace) {
        return skip(SkipReason::OptedOut { by });
    }

    let requests = enrolment_requests(pod, namespace, world);
    let Some(winner) = requests.first() else {
        return skip(SkipReason::NotEnrolled);
    };
    let conflict = conflict_note(namespace_name, &requests);

    let value = match &winner.target {
        Target::OtherMesh => {
            return Decision::Skip {
                reason: SkipReason::OtherMesh {
                    label: winner.label.to_string(),
                },
                conflict,
            };
        }
        Target::Value(value) => value.as_str(),
    };

    match resolve(value, world) {
        Ok((revision, tag)) => {
            // Istio's proxyless gRPC templates put no proxy in the traffic path; a pod that asks
            // only for them gets none from weft either (decided after resolving, so a mistyped
            // revision is still refused).
            if let Some(templates) = pod_annotations
                .get(contract::ANNOTATION_INJECT_TEMPLATES)
                .filter(|t| annotations::proxyless_only(t))
            {
                return Decision::Skip {
                    reason: SkipReason::ProxylessTemplate {
                        templates: templates.clone(),
                    },
                    conflict,
                };
            }
            let via = match &tag {
                Some(tag) => format!("{} (tag {tag})", winner.label),
                None => winner.label.to_string(),
            };
            let meshconfig = world
                .meshconfigs
                .get(&revision)
                .map(|spec| EffectiveMeshConfig::resolve(spec, settings));
            match meshconfig {
                Some(meshconfig) => Decision::Inject(Box::new(Injection {
                    revision,
                    tag,
                    via,
                    meshconfig,
                    conflict,
                })),
                // `resolve` only returns revisions that exist; keep the impossible case a
                // denial rather than a panic.
                None => Decision::Deny {
                    message: format!("revision {revision:?} disappeared while deciding; retry"),
                },
            }
        }
        Err(Unresolved::TagToMissingRevision { revision }) => Decision::Deny {
            message: with_conflict(
                format!(
                    "{label} selects RevisionTag {value:?}, which points at revision \
                     {revision:?}, but no MeshConfig {revision:?} exists in {ns} (known \
                     revisions: {revisions}). Point the tag at an existing revision (weft tag \
                     set {value} --revision <revision> --overwrite) or create MeshConfig \
                     {revision:?}.",
                    label = winner.label,
                    ns = settings.operator_namespace,
                    revisions = known_revisions(world),
                ),
                conflict,
            ),
        },
        Err(Unresolved::Unknown) => {
            if let Some(injector) = claiming_injector(pod, namespace, world, &winner.label) {
                return Decision::Skip {
                    reason: SkipReason::ClaimedByOtherInjector {
                        label: winner.label.to_string(),
                        injector: injector.to_string(),
                    },
                    conflict,
                };
            }
            Decision::Deny {
                message: with_conflict(
                    format!(
                        "{label} names {value:?}, which is neither a RevisionTag nor a revision \
                         (MeshConfig) in {ns}. Known tags: {tags}; known revisions: \
                         {revisions}. Set the label to one of them, create MeshConfig \
                         {value:?} or point a tag of that name at a revision (weft tag set \
                         {value} --revision <revision>), or opt the pod out with the label \
                         {optout}=false.",
                        label = winner.label,
                        ns = settings.operator_namespace,
                        tags = known_tags(world),
                        revisions = known_revisions(world),
                        optout = contract::LABEL_SIDECAR_INJECT,
                    ),
                    conflict,
                ),
            }
        }
    }
}

// === Opt-outs ===

/// The first opt-out that applies, described for the skip reason. Opt-out values are read
/// case-insensitively (an opt-out should never be lost to `False`); opt-in values are exact,
/// as the Kubernetes selectors of Istio's own webhooks are.
fn opt_out(pod: &Pod, namespace: &Namespace) -> Option<String> {
    let pod_labels = map(&pod.metadata.labels);
    let pod_annotations = map(&pod.metadata.annotations);
    let ns_labels = map(&namespace.metadata.labels);
    let ns_annotations = map(&namespace.metadata.annotations);
    let is_false = |v: &String| v.eq_ignore_ascii_case("false");
    // OSM reads "disabled" and "no" as off.
    let is_disabled =
        |v: &String| v.eq_ignore_ascii_case("disabled") || v.eq_ignore_ascii_case("no");

    let checks = [
        (
            pod_labels
                .get(contract::LABEL_SIDECAR_INJECT)
                .filter(|v| is_false(v)),
            "pod label",
            contract::LABEL_SIDECAR_INJECT,
        ),
        (
            pod_annotations
                .get(contract::LABEL_SIDECAR_INJECT)
                .filter(|v| is_false(v)),
            "pod annotation",
            contract::LABEL_SIDECAR_INJECT,
        ),
        (
            pod_annotations
                .get(contract::ANNOTATION_OSM_INJECTION)
                .filter(|v| is_disabled(v)),
            "pod annotation",
            contract::ANNOTATION_OSM_INJECTION,
        ),
        (
            ns_annotations
                .get(contract::ANNOTATION_OSM_INJECTION)
                .filter(|v| is_disabled(v)),
            "namespace annotation",
            contract::ANNOTATION_OSM_INJECTION,
        ),
        (
            ns_labels
                .get(contract::LABEL_ISTIO_INJECTION)
                .filter(|v| v.eq_ignore_ascii_case("disabled")),
            "namespace label",
            contract::LABEL_ISTIO_INJECTION,
        ),
    ];
    checks
        .into_iter()
        .find_map(|(value, place, key)| value.map(|v| format!("{place} {key}={v}")))
}

// === Enrolment rules ===

/// A label that took part in the decision, rendered as `namespace label istio.io/rev=prod`.
#[derive(Clone, Debug, PartialEq)]
struct LabelRef {
    on_namespace: bool,
    key: &'static str,
    value: String,
}

impl fmt::Display for LabelRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let place = if self.on_namespace {
            "namespace"
        } else {
            "pod"
        };
        write!(f, "{place} label {}={}", self.key, self.value)
    }
}

#[derive(Clone, Debug, PartialEq)]
enum Target {
    /// A tag or revision name to resolve.
    Value(String),
    /// `monitored-by` naming another mesh.
    OtherMesh,
}

#[derive(Clone, Debug)]
struct EnrolmentRequest {
    label: LabelRef,
    target: Target,
}

/// Every enrolment rule that matches, in precedence order; the first one decides.
fn enrolment_requests(
    pod: &Pod,
    namespace: &Namespace,
    world: &MeshState,
) -> Vec<EnrolmentRequest> {
    let ns_labels = map(&namespace.metadata.labels);
    let pod_labels = map(&pod.metadata.labels);
    let request = |on_namespace, key, value: &String, target| EnrolmentRequest {
        label: LabelRef {
            on_namespace,
            key,
            value: value.clone(),
        },
        target,
    };
    let default_tag = || Target::Value(contract::DEFAULT_TAG.to_string());
    let mut requests = Vec::new();

    // 1. namespace istio-injection=enabled → tag default
    if let Some(v) = ns_labels
        .get(contract::LABEL_ISTIO_INJECTION)
        .filter(|v| *v == "enabled")
    {
        requests.push(request(
            true,
            contract::LABEL_ISTIO_INJECTION,
            v,
            default_tag(),
        ));
    }
    // 2. namespace istio.io/rev=X
    if let Some(v) = ns_labels.get(contract::LABEL_ISTIO_REV) {
        requests.push(request(
            true,
            contract::LABEL_ISTIO_REV,
            v,
            Target::Value(v.clone()),
        ));
    }
    // 3. namespace openservicemesh.io/monitored-by=<mesh> → tag default; another mesh → skip
    if let Some(v) = ns_labels.get(contract::LABEL_OSM_MONITORED_BY) {
        let target = if *v == world.mesh_name {
            default_tag()
        } else {
            Target::OtherMesh
        };
        requests.push(request(true, contract::LABEL_OSM_MONITORED_BY, v, target));
    }
    // 4. pod istio.io/rev=X
    if let Some(v) = pod_labels.get(contract::LABEL_ISTIO_REV) {
        requests.push(request(
            false,
            contract::LABEL_ISTIO_REV,
            v,
            Target::Value(v.clone()),
        ));
    }
    // 5. pod sidecar.istio.io/inject=true → tag default
    if let Some(v) = pod_labels
        .get(contract::LABEL_SIDECAR_INJECT)
        .filter(|v| *v == "true")
    {
        requests.push(request(
            false,
            contract::LABEL_SIDECAR_INJECT,
            v,
            default_tag(),
        ));
    }
    requests
}

/// A note when lower-precedence labels ask for something else than the winner (labels that
/// agree, such as `istio-injection=enabled` and `istio.io/rev=default`, are no conflict).
fn conflict_note(namespace: &str, requests: &[EnrolmentRequest]) -> Option<String> {
    let (winner, rest) = requests.split_first()?;
    let losers: Vec<String> = rest
        .iter()
        .filter(|r| r.target != winner.target)
        .map(|r| r.label.to_string())
        .collect();
    if losers.is_empty() {
        return None;
    }
    Some(format!(
        "conflicting injection labels for a pod in namespace {namespace}: {winner} takes \
         precedence over {losers}; remove the label you do not mean",
        winner = winner.label,
        losers = losers.join(", "),
    ))
}

fn with_conflict(message: String, conflict: Option<String>) -> String {
    match conflict {
        Some(note) => format!("{message} Note: {note}."),
        None => message,
    }
}

// === Resolution ===

enum Unresolved {
    TagToMissingRevision { revision: String },
    Unknown,
}

/// A tag of that name first (→ the revision it points at), else a revision of that name.
/// Returns (revision, tag used).
fn resolve(value: &str, world: &MeshState) -> Result<(String, Option<String>), Unresolved> {
    if let Some(revision) = world.tags.get(value) {
        return if world.meshconfigs.contains_key(revision) {
            Ok((revision.clone(), Some(value.to_string())))
        } else {
            Err(Unresolved::TagToMissingRevision {
                revision: revision.clone(),
            })
        };
    }
    if world.meshconfigs.contains_key(value) {
        return Ok((value.to_string(), None));
    }
    Err(Unresolved::Unknown)
}

/// Another injector claims a value when the API server would call it for this pod (its
/// namespace and object selectors match) and one of its selectors looks at the label that
/// carried the value. The second condition keeps a selector-less webhook (which would see
/// every pod, such as a secrets injector) from hiding a typo in `istio.io/rev`.
fn claiming_injector<'w>(
    pod: &Pod,
    namespace: &Namespace,
    world: &'w MeshState,
    label: &LabelRef,
) -> Option<&'w str> {
    let ns_labels = map(&namespace.metadata.labels);
    let pod_labels = map(&pod.metadata.labels);
    world
        .foreign_injectors
        .iter()
        .find(|injector| {
            let ns_ok = injector
                .namespace_selector
                .as_ref()
                .is_none_or(|s| selector::matches(s, ns_labels));
            let pod_ok = injector
                .object_selector
                .as_ref()
                .is_none_or(|s| selector::matches(s, pod_labels));
            let relevant = if label.on_namespace {
                injector.namespace_selector.as_ref()
            } else {
                injector.object_selector.as_ref()
            }
            .is_some_and(|s| selector::keys(s).any(|k| k == label.key));
            ns_ok && pod_ok && relevant
        })
        .map(|injector| injector.name.as_str())
}

fn known_tags(world: &MeshState) -> String {
    if world.tags.is_empty() {
        return "none".into();
    }
    world
        .tags
        .iter()
        .map(|(tag, revision)| format!("{tag} (revision {revision})"))
        .collect::<Vec<_>>()
        .join(", ")
}

pub(super) fn known_revisions(world: &MeshState) -> String {
    if world.meshconfigs.is_empty() {
        return "none".into();
    }
    world
        .meshconfigs
        .keys()
        .cloned()
        .collect::<Vec<_>>()
        .join(", ")
}

static EMPTY: BTreeMap<String, String> = BTreeMap::new();

fn map(m: &Option<BTreeMap<String, String>>) -> &BTreeMap<String, String> {
    m.as_ref().unwrap_or(&EMPTY)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::MeshConfigSpec;
    use crate::webhook::state::ForeignInjector;
    use k8s_openapi::api::core::v1::PodSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
        LabelSelector, LabelSelectorRequirement, ObjectMeta,
    };

    fn pairs(p: &[(&str, &str)]) -> Option<BTreeMap<String, String>> {
        Some(
            p.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    fn namespace(name: &str, labels: &[(&str, &str)], annotations: &[(&str, &str)]) -> Namespace {
        Namespace {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: pairs(labels),
                annotations: pairs(annotations),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn pod(labels: &[(&str, &str)], annotations: &[(&str, &str)]) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("web".into()),
                labels: pairs(labels),
                annotations: pairs(annotations),
                ..Default::default()
            },
            spec: Some(PodSpec::default()),
            ..Default::default()
        }
    }

    /// stable and canary revisions; tags default → stable, prod → canary, broken → gone.
    fn world() -> MeshState {
        MeshState {
            tags: [
                ("default", "stable"),
                ("prod", "canary"),
                ("broken", "gone"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
            meshconfigs: ["stable", "canary"]
                .into_iter()
                .map(|r| (r.to_string(), MeshConfigSpec::default()))
                .collect(),
            ..Default::default()
        }
    }

    fn istio_injector() -> ForeignInjector {
        ForeignInjector {
            name: "istio-sidecar-injector-asm-1-22/rev.namespace.sidecar-injector.istio.io".into(),
            namespace_selector: Some(LabelSelector {
                match_expressions: Some(vec![LabelSelectorRequirement {
                    key: "istio.io/rev".into(),
                    operator: "In".into(),
                    values: Some(vec!["asm-1-22".into()]),
                }]),
                ..Default::default()
            }),
            object_selector: None,
        }
    }

    fn run(pod: &Pod, ns: &Namespace) -> Decision {
        decide(pod, ns, &world(), &InjectorSettings::default())
    }

    /// (revision, tag) when injected, else panics with the decision.
    fn injected(decision: &Decision) -> (&str, Option<&str>) {
        match decision {
            Decision::Inject(i) => (i.revision.as_str(), i.tag.as_deref()),
            other => panic!("expected injection, got {other:?}"),
        }
    }

    fn skipped(decision: &Decision) -> &SkipReason {
        match decision {
            Decision::Skip { reason, .. } => reason,
            other => panic!("expected skip, got {other:?}"),
        }
    }

    fn denied(decision: &Decision) -> &str {
        match decision {
            Decision::Deny { message } => message,
            other => panic!("expected denial, got {other:?}"),
        }
    }

    #[test]
    fn never_injects_system_and_operator_namespaces_even_when_labelled() {
        for ns in [
            "kube-system",
            "kube-public",
            "kube-node-lease",
            "local-path-storage",
            "weft-system",
        ] {
            let d = run(
                &pod(&[], &[]),
                &namespace(ns, &[("istio-injection", "enabled")], &[]),
            );
            assert_eq!(
                skipped(&d),
                &SkipReason::NeverInjectedNamespace {
                    namespace: ns.into()
                }
            );
        }
    }

    #[test]
    fn proxyless_grpc_templates_get_no_proxy_but_a_bad_revision_is_still_refused() {
        let enrolled = namespace("pets", &[("istio-injection", "enabled")], &[]);
        for templates in ["grpc-simple", "grpc-agent", "grpc-agent,grpc-simple"] {
            let d = run(
                &pod(&[], &[(contract::ANNOTATION_INJECT_TEMPLATES, templates)]),
                &enrolled,
            );
            let reason = skipped(&d);
            assert_eq!(
                reason,
                &SkipReason::ProxylessTemplate {
                    templates: templates.into()
                }
            );
            assert!(reason.emits_event());
            assert!(reason.to_string().contains("proxyless gRPC"));
        }
        // sidecar (alone or beside a proxyless one) is injected; inject() warns for the rest.
        for templates in ["sidecar", "sidecar,grpc-agent", "custom"] {
            let d = run(
                &pod(&[], &[(contract::ANNOTATION_INJECT_TEMPLATES, templates)]),
                &enrolled,
            );
            injected(&d);
        }
        let d = run(
            &pod(
                &[("istio.io/rev", "nope")],
                &[(contract::ANNOTATION_INJECT_TEMPLATES, "grpc-simple")],
            ),
            &namespace("pets", &[], &[]),
        );
        denied(&d);
    }

    #[test]
    fn never_injects_host_network_pods() {
        let mut p = pod(&[], &[]);
        p.spec = Some(PodSpec {
            host_network: Some(true),
            ..Default::default()
        });
        let d = run(
            &p,
            &namespace("pets", &[("istio-injection", "enabled")], &[]),
        );
        assert_eq!(skipped(&d), &SkipReason::HostNetwork);
    }

    #[test]
    fn injected_pods_are_left_alone() {
        let ns = namespace("pets", &[("istio-injection", "enabled")], &[]);
        let d = run(&pod(&[], &[("weft.dev/status", "{}")]), &ns);
        assert_eq!(skipped(&d), &SkipReason::AlreadyInjected);
        let d = run(&pod(&[], &[("sidecar.istio.io/status", "{}")]), &ns);
        assert_eq!(skipped(&d), &SkipReason::InjectedByIstio);
    }

    #[test]
    fn every_opt_out_wins_over_every_enrolment() {
        let enrolled = namespace("pets", &[("istio-injection", "enabled")], &[]);
        let cases: [(Pod, Namespace, &str); 6] = [
            (
                pod(&[("sidecar.istio.io/inject", "false")], &[]),
                enrolled.clone(),
                "pod label sidecar.istio.io/inject=false",
            ),
            (
                pod(&[], &[("sidecar.istio.io/inject", "False")]),
                enrolled.clone(),
                "pod annotation sidecar.istio.io/inject=False",
            ),
            (
                pod(&[], &[("openservicemesh.io/sidecar-injection", "disabled")]),
                enrolled.clone(),
                "pod annotation openservicemesh.io/sidecar-injection=disabled",
            ),
            (
                pod(&[("istio.io/rev", "stable")], &[]),
                namespace(
                    "pets",
                    &[],
                    &[("openservicemesh.io/sidecar-injection", "disabled")],
                ),
                "namespace annotation openservicemesh.io/sidecar-injection=disabled",
            ),
            (
                pod(&[("sidecar.istio.io/inject", "true")], &[]),
                namespace("pets", &[("istio-injection", "disabled")], &[]),
                "namespace label istio-injection=disabled",
            ),
            (
                pod(&[], &[]),
                namespace(
                    "pets",
                    &[("openservicemesh.io/monitored-by", "weft")],
                    &[("openservicemesh.io/sidecar-injection", "no")],
                ),
                "namespace annotation openservicemesh.io/sidecar-injection=no",
            ),
        ];
        for (p, ns, by) in cases {
            assert_eq!(
                skipped(&run(&p, &ns)),
                &SkipReason::OptedOut { by: by.into() },
                "{by}"
            );
        }
    }

    type Pairs = &'static [(&'static str, &'static str)];

    #[test]
    fn the_five_enrolment_rules() {
        // (namespace labels, pod labels, revision, tag, via)
        let table: [(Pairs, Pairs, &str, Option<&str>, &str); 7] = [
            (
                &[("istio-injection", "enabled")],
                &[],
                "stable",
                Some("default"),
                "namespace label istio-injection=enabled (tag default)",
            ),
            (
                &[("istio.io/rev", "canary")],
                &[],
                "canary",
                None,
                "namespace label istio.io/rev=canary",
            ),
            (
                &[("istio.io/rev", "prod")],
                &[],
                "canary",
                Some("prod"),
                "namespace label istio.io/rev=prod (tag prod)",
            ),
            (
                &[("openservicemesh.io/monitored-by", "weft")],
                &[],
                "stable",
                Some("default"),
                "namespace label openservicemesh.io/monitored-by=weft (tag default)",
            ),
            (
                &[],
                &[("istio.io/rev", "canary")],
                "canary",
                None,
                "pod label istio.io/rev=canary",
            ),
            (
                &[],
                &[("istio.io/rev", "prod")],
                "canary",
                Some("prod"),
                "pod label istio.io/rev=prod (tag prod)",
            ),
            (
                &[],
                &[("sidecar.istio.io/inject", "true")],
                "stable",
                Some("default"),
                "pod label sidecar.istio.io/inject=true (tag default)",
            ),
        ];
        for (ns_labels, pod_labels, revision, tag, via) in table {
            let d = run(&pod(pod_labels, &[]), &namespace("pets", ns_labels, &[]));
            assert_eq!(injected(&d), (revision, tag), "{via}");
            let Decision::Inject(injection) = &d else {
                unreachable!()
            };
            assert_eq!(injection.via, via);
            assert_eq!(injection.conflict, None);
        }
    }

    #[test]
    fn osm_mesh_name_is_configurable() {
        let mut w = world();
        w.mesh_name = "osm".into();
        let ns = namespace("pets", &[("openservicemesh.io/monitored-by", "osm")], &[]);
        let d = decide(&pod(&[], &[]), &ns, &w, &InjectorSettings::default());
        assert_eq!(injected(&d), ("stable", Some("default")));
    }

    #[test]
    fn unlabelled_pods_and_opt_in_typos_are_not_enrolled() {
        let d = run(&pod(&[], &[]), &namespace("pets", &[], &[]));
        assert_eq!(skipped(&d), &SkipReason::NotEnrolled);
        let d = run(
            &pod(&[], &[]),
            &namespace("pets", &[("istio-injection", "true")], &[]),
        );
        assert_eq!(skipped(&d), &SkipReason::NotEnrolled);
        // The annotation only opts out; opting in is the label's job.
        let d = run(
            &pod(&[], &[("sidecar.istio.io/inject", "true")]),
            &namespace("pets", &[], &[]),
        );
        assert_eq!(skipped(&d), &SkipReason::NotEnrolled);
    }

    #[test]
    fn another_meshs_namespace_is_skipped_never_denied() {
        let ns = namespace("pets", &[("openservicemesh.io/monitored-by", "osm")], &[]);
        let d = run(&pod(&[("istio.io/rev", "stable")], &[]), &ns);
        let reason = skipped(&d);
        assert_eq!(
            reason,
            &SkipReason::OtherMesh {
                label: "namespace label openservicemesh.io/monitored-by=osm".into()
            }
        );
        assert!(reason.emits_event());
        assert!(
            d.conflict()
                .is_some_and(|c| c.contains("pod label istio.io/rev=stable"))
        );
    }

    #[test]
    fn unknown_value_is_denied_with_what_to_do() {
        let d = run(
            &pod(&[], &[]),
            &namespace("pets", &[("istio.io/rev", "asm-1-22")], &[]),
        );
        let message = denied(&d);
        for needle in [
            "namespace label istio.io/rev=asm-1-22",
            "\"asm-1-22\"",
            "default (revision stable)",
            "prod (revision canary)",
            "known revisions: canary, stable",
            "create MeshConfig",
            "sidecar.istio.io/inject=false",
        ] {
            assert!(
                message.contains(needle),
                "{needle:?} missing from {message}"
            );
        }
    }

    #[test]
    fn tag_to_missing_revision_is_denied_naming_the_tag() {
        let d = run(
            &pod(&[], &[]),
            &namespace("pets", &[("istio.io/rev", "broken")], &[]),
        );
        let message = denied(&d);
        assert!(message.contains("RevisionTag \"broken\""), "{message}");
        assert!(message.contains("revision \"gone\""), "{message}");
        assert!(
            message.contains("weft tag set broken --revision"),
            "{message}"
        );
    }

    #[test]
    fn missing_default_tag_denies_istio_injection_enabled() {
        let mut w = world();
        w.tags.remove("default");
        let ns = namespace("pets", &[("istio-injection", "enabled")], &[]);
        let d = decide(&pod(&[], &[]), &ns, &w, &InjectorSettings::default());
        assert!(denied(&d).contains("names \"default\""));
    }

    #[test]
    fn value_claimed_by_another_injector_is_skipped_with_an_event() {
        let mut w = world();
        w.foreign_injectors.push(istio_injector());
        let ns = namespace("pets", &[("istio.io/rev", "asm-1-22")], &[]);
        let d = decide(&pod(&[], &[]), &ns, &w, &InjectorSettings::default());
        let reason = skipped(&d);
        assert!(
            matches!(reason, SkipReason::ClaimedByOtherInjector { injector, .. } if injector.contains("istio-sidecar-injector-asm-1-22"))
        );
        assert!(reason.emits_event());
        // A value the Istio webhook does not select is still denied.
        let ns = namespace("pets", &[("istio.io/rev", "asm-1-23")], &[]);
        denied(&decide(
            &pod(&[], &[]),
            &ns,
            &w,
            &InjectorSettings::default(),
        ));
    }

    #[test]
    fn selector_less_injectors_do_not_hide_typos() {
        let mut w = world();
        w.foreign_injectors.push(ForeignInjector {
            name: "vault-agent-injector-cfg/vault.hashicorp.com".into(),
            ..Default::default()
        });
        let ns = namespace("pets", &[("istio.io/rev", "stabel")], &[]);
        denied(&decide(
            &pod(&[], &[]),
            &ns,
            &w,
            &InjectorSettings::default(),
        ));
    }

    #[test]
    fn conflicting_labels_follow_the_order_and_say_so() {
        let ns = namespace(
            "pets",
            &[("istio-injection", "enabled"), ("istio.io/rev", "canary")],
            &[],
        );
        let d = run(&pod(&[], &[]), &ns);
        assert_eq!(injected(&d), ("stable", Some("default")));
        let note = d.conflict().unwrap_or_default();
        assert!(note.contains("namespace label istio-injection=enabled takes precedence over namespace label istio.io/rev=canary"), "{note}");

        // Namespace beats pod.
        let ns = namespace("pets", &[("istio.io/rev", "stable")], &[]);
        let d = run(&pod(&[("istio.io/rev", "canary")], &[]), &ns);
        assert_eq!(injected(&d), ("stable", None));
        assert!(d.conflict().is_some());

        // Labels that agree are no conflict.
        let ns = namespace(
            "pets",
            &[("istio-injection", "enabled"), ("istio.io/rev", "default")],
            &[],
        );
        let d = run(&pod(&[("sidecar.istio.io/inject", "true")], &[]), &ns);
        assert_eq!(injected(&d), ("stable", Some("default")));
        assert_eq!(d.conflict(), None);
    }

    #[test]
    fn denial_mentions_a_conflict() {
        let ns = namespace("pets", &[("istio.io/rev", "nope")], &[]);
        let d = run(&pod(&[("istio.io/rev", "stable")], &[]), &ns);
        assert!(denied(&d).contains("Note: conflicting injection labels"));
    }

    #[test]
    fn tag_wins_over_revision_of_the_same_name() {
        let mut w = world();
        w.tags.insert("canary".into(), "stable".into());
        let ns = namespace("pets", &[("istio.io/rev", "canary")], &[]);
        let d = decide(&pod(&[], &[]), &ns, &w, &InjectorSettings::default());
        assert_eq!(injected(&d), ("stable", Some("canary")));
    }
}
