//! The mesh as the status controllers see it: which revision each namespace's labels resolve
//! to (SPEC §4, namespace rules only), which pods run which revision (their `weft.dev/status`),
//! and which namespaces carry labels that disagree. Pure: plain data in, plain data out.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{Namespace, Pod};
use serde::Deserialize;

use crate::contract;

/// How a namespace's labels resolve (the first matching namespace rule of SPEC §4).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolution {
    /// The label that decided, as `istio.io/rev=prod`.
    pub label: String,
    /// The tag the value went through (`default` for `istio-injection=enabled` and
    /// `monitored-by=<mesh>`), if it named one.
    pub tag: Option<String>,
    /// The revision it resolves to; None when the value names no revision, or names a tag that
    /// points at a missing one.
    pub revision: Option<String>,
}

/// What a namespace rule asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Target {
    Value(String),
    /// `openservicemesh.io/monitored-by` naming another mesh.
    OtherMesh,
}

/// Namespace rules 1-3 that match, in precedence order (rules 4-5 are pod labels).
fn namespace_requests(labels: &BTreeMap<String, String>, mesh_name: &str) -> Vec<(String, Target)> {
    let mut requests = Vec::new();
    let label = |key: &str, value: &str| format!("{key}={value}");
    if let Some(v) = labels
        .get(contract::LABEL_ISTIO_INJECTION)
        .filter(|v| *v == "enabled")
    {
        requests.push((
            label(contract::LABEL_ISTIO_INJECTION, v),
            Target::Value(contract::DEFAULT_TAG.into()),
        ));
    }
    if let Some(v) = labels.get(contract::LABEL_ISTIO_REV) {
        requests.push((
            label(contract::LABEL_ISTIO_REV, v),
            Target::Value(v.clone()),
        ));
    }
    if let Some(v) = labels.get(contract::LABEL_OSM_MONITORED_BY) {
        let target = if v == mesh_name {
            Target::Value(contract::DEFAULT_TAG.into())
        } else {
            Target::OtherMesh
        };
        requests.push((label(contract::LABEL_OSM_MONITORED_BY, v), target));
    }
    requests
}

/// Namespace-level opt-outs: `istio-injection=disabled`, or the OSM annotation
/// `openservicemesh.io/sidecar-injection: disabled|no` (read case-insensitively, as the
/// injector does).
fn opted_out(labels: &BTreeMap<String, String>, annotations: &BTreeMap<String, String>) -> bool {
    labels
        .get(contract::LABEL_ISTIO_INJECTION)
        .is_some_and(|v| v.eq_ignore_ascii_case("disabled"))
        || annotations
            .get(contract::ANNOTATION_OSM_INJECTION)
            .is_some_and(|v| v.eq_ignore_ascii_case("disabled") || v.eq_ignore_ascii_case("no"))
}

/// The revision a namespace's labels select, per SPEC §4: `istio-injection=enabled` → tag
/// `default`; `istio.io/rev=X`; `openservicemesh.io/monitored-by=<mesh>` → tag `default`. X is a
/// RevisionTag name (→ its revision) before it is a MeshConfig name. None when the namespace
/// is not enrolled, opted out, or belongs to another mesh. `tags` maps tag → spec.revision.
pub fn resolve_namespace(
    labels: &BTreeMap<String, String>,
    annotations: &BTreeMap<String, String>,
    tags: &BTreeMap<String, String>,
    revisions: &BTreeSet<String>,
    mesh_name: &str,
) -> Option<Resolution> {
    if opted_out(labels, annotations) {
        return None;
    }
    let (label, target) = namespace_requests(labels, mesh_name).into_iter().next()?;
    let Target::Value(value) = target else {
        return None;
    };
    Some(match tags.get(&value) {
        Some(revision) => Resolution {
            label,
            revision: revisions.contains(revision).then(|| revision.clone()),
            tag: Some(value),
        },
        None => Resolution {
            label,
            revision: revisions.contains(&value).then_some(value),
            tag: None,
        },
    })
}

/// A description of a namespace's enrolment labels disagreeing (`istio-injection=enabled` with
/// `istio.io/rev=canary`, `monitored-by` naming another mesh next to an `istio.io/rev`), or None.
/// Labels that ask for the same thing (`istio-injection=enabled` and `istio.io/rev=default`)
/// are no conflict.
pub fn namespace_conflict(labels: &BTreeMap<String, String>, mesh_name: &str) -> Option<String> {
    let requests = namespace_requests(labels, mesh_name);
    let ((winner, target), rest) = requests.split_first()?;
    let losers: Vec<&str> = rest
        .iter()
        .filter(|(_, t)| t != target)
        .map(|(label, _)| label.as_str())
        .collect();
    if losers.is_empty() {
        return None;
    }
    Some(format!(
        "the namespace's injection labels disagree: {winner} takes precedence over {}; new pods \
         follow {winner}. Remove the label you do not mean.",
        losers.join(", ")
    ))
}

/// What the `weft.dev/status` annotation says about a pod (only the fields counted here; the
/// rest of `webhook::InjectionStatus` is ignored, so older or newer injectors still count).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct PodInjection {
    pub revision: String,
    #[serde(default)]
    pub tag: Option<String>,
    /// The pod's `weft-proxy` container is ready: it holds a certificate and the config
    /// server's first snapshot. Read from the pod's status, not the annotation.
    #[serde(skip)]
    pub proxy_ready: bool,
}

impl PodInjection {
    /// None for pods without the annotation, with an unreadable one, or that have finished
    /// (a completed Job's pod runs nothing).
    pub fn of(pod: &Pod) -> Option<Self> {
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        if matches!(phase, Some("Succeeded" | "Failed")) {
            return None;
        }
        let raw = pod
            .metadata
            .annotations
            .as_ref()?
            .get(contract::ANNOTATION_STATUS)?;
        let mut injection: PodInjection = serde_json::from_str(raw).ok()?;
        injection.proxy_ready = proxy_ready(pod);
        Some(injection)
    }
}

/// Whether the pod's proxy container (a native sidecar, a plain container on older
/// injections, or a gateway's) reports ready.
pub fn proxy_ready(pod: &Pod) -> bool {
    let Some(status) = pod.status.as_ref() else {
        return false;
    };
    status
        .init_container_statuses
        .iter()
        .chain(status.container_statuses.iter())
        .flatten()
        .any(|c| is_proxy_container(&c.name) && c.ready)
}

/// The proxy's container: a sidecar's `weft-proxy`, or a gateway pod's `istio-proxy` (the
/// container Istio's gateway template fills, docs/gateway.md).
pub fn is_proxy_container(name: &str) -> bool {
    name == contract::CONTAINER_PROXY || name == contract::CONTAINER_GATEWAY_PROXY
}

/// The mesh at one instant: everything the status functions need.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    /// MeshConfig names.
    pub revisions: BTreeSet<String>,
    /// RevisionTag name → spec.revision.
    pub tags: BTreeMap<String, String>,
    /// Enrolled namespaces (never-injected ones left out) → how they resolve.
    pub namespaces: BTreeMap<String, Resolution>,
    /// Injected pods that are still running.
    pub pods: Vec<PodInjection>,
}

impl Snapshot {
    pub fn build<'a>(
        mesh_name: &str,
        operator_namespace: &str,
        revisions: impl IntoIterator<Item = String>,
        tags: impl IntoIterator<Item = (String, String)>,
        namespaces: impl IntoIterator<Item = &'a Namespace>,
        pods: impl IntoIterator<Item = &'a Pod>,
    ) -> Self {
        let revisions: BTreeSet<String> = revisions.into_iter().collect();
        let tags: BTreeMap<String, String> = tags.into_iter().collect();
        let empty = BTreeMap::new();
        let namespaces = namespaces
            .into_iter()
            .filter_map(|ns| {
                let name = ns.metadata.name.as_deref()?;
                if name == operator_namespace || contract::NEVER_INJECTED_NAMESPACES.contains(&name)
                {
                    return None;
                }
                let resolution = resolve_namespace(
                    ns.metadata.labels.as_ref().unwrap_or(&empty),
                    ns.metadata.annotations.as_ref().unwrap_or(&empty),
                    &tags,
                    &revisions,
                    mesh_name,
                )?;
                Some((name.to_string(), resolution))
            })
            .collect();
        let pods = pods.into_iter().filter_map(PodInjection::of).collect();
        Self {
            revisions,
            tags,
            namespaces,
            pods,
        }
    }

    /// Tags whose spec points at `revision`, sorted.
    pub fn tags_of(&self, revision: &str) -> Vec<String> {
        self.tags
            .iter()
            .filter(|(_, r)| *r == revision)
            .map(|(t, _)| t.clone())
            .collect()
    }
}

/// Saturating count for the `int32` status fields.
pub fn count(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::PodStatus;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    pub fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// Revisions stable and canary; tags default → stable, prod → canary, broken → gone.
    pub fn tags() -> BTreeMap<String, String> {
        map(&[
            ("default", "stable"),
            ("prod", "canary"),
            ("broken", "gone"),
        ])
    }

    pub fn revisions() -> BTreeSet<String> {
        ["stable", "canary"].iter().map(|s| s.to_string()).collect()
    }

    pub fn namespace(name: &str, labels: &[(&str, &str)]) -> Namespace {
        Namespace {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some(map(labels)),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    pub fn pod(status: Option<&str>, phase: &str) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("web".into()),
                namespace: Some("pets".into()),
                annotations: status.map(|s| map(&[("weft.dev/status", s)])),
                ..Default::default()
            },
            status: Some(PodStatus {
                phase: Some(phase.into()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// `pod` with its proxy container reported ready, as the node agent reports it.
    pub fn with_ready_proxy(mut pod: Pod) -> Pod {
        if let Some(status) = pod.status.as_mut() {
            status.init_container_statuses = Some(vec![
                k8s_openapi::api::core::v1::ContainerStatus {
                    name: "weft-init".into(),
                    ready: false,
                    ..Default::default()
                },
                k8s_openapi::api::core::v1::ContainerStatus {
                    name: "weft-proxy".into(),
                    ready: true,
                    ..Default::default()
                },
            ]);
        }
        pod
    }

    /// A pod injected by `revision` through `tag`, as the injector writes it.
    pub fn injected(revision: &str, tag: Option<&str>) -> Pod {
        let status = serde_json::json!({
            "revision": revision, "tag": tag, "via": "namespace label",
            "initContainers": ["weft-init", "weft-proxy"], "containers": [], "volumes": []
        });
        pod(Some(&status.to_string()), "Running")
    }

    #[test]
    fn a_gateway_pods_istio_proxy_counts_as_its_proxy() {
        let mut pod = injected("stable", None);
        assert!(!proxy_ready(&pod));
        if let Some(status) = pod.status.as_mut() {
            status.container_statuses = Some(vec![k8s_openapi::api::core::v1::ContainerStatus {
                name: "istio-proxy".into(),
                ready: true,
                ..Default::default()
            }]);
        }
        assert!(proxy_ready(&pod));
        assert!(proxy_ready(&with_ready_proxy(injected("stable", None))));
    }

    fn resolve(labels: &[(&str, &str)]) -> Option<(String, Option<String>, Option<String>)> {
        resolve_namespace(&map(labels), &map(&[]), &tags(), &revisions(), "weft")
            .map(|r| (r.label, r.tag, r.revision))
    }

    type Labels = &'static [(&'static str, &'static str)];

    #[test]
    fn namespace_labels_resolve_in_spec_order() {
        // (labels, deciding label, tag, revision)
        let some = |s: &str| Some(s.to_string());
        let table: [(Labels, &str, Option<String>, Option<String>); 10] = [
            (
                &[("istio-injection", "enabled")],
                "istio-injection=enabled",
                some("default"),
                some("stable"),
            ),
            (
                &[("istio.io/rev", "canary")],
                "istio.io/rev=canary",
                None,
                some("canary"),
            ),
            (
                &[("istio.io/rev", "prod")],
                "istio.io/rev=prod",
                some("prod"),
                some("canary"),
            ),
            (
                &[("istio.io/rev", "broken")],
                "istio.io/rev=broken",
                some("broken"),
                None,
            ),
            (&[("istio.io/rev", "nope")], "istio.io/rev=nope", None, None),
            (
                &[("openservicemesh.io/monitored-by", "weft")],
                "openservicemesh.io/monitored-by=weft",
                some("default"),
                some("stable"),
            ),
            // 1 beats 2
            (
                &[("istio-injection", "enabled"), ("istio.io/rev", "canary")],
                "istio-injection=enabled",
                some("default"),
                some("stable"),
            ),
            // 2 beats 3
            (
                &[
                    ("openservicemesh.io/monitored-by", "weft"),
                    ("istio.io/rev", "canary"),
                ],
                "istio.io/rev=canary",
                None,
                some("canary"),
            ),
            // 2 beats 3 even when 3 names another mesh
            (
                &[
                    ("openservicemesh.io/monitored-by", "osm"),
                    ("istio.io/rev", "prod"),
                ],
                "istio.io/rev=prod",
                some("prod"),
                some("canary"),
            ),
            // a tag wins over a revision of the same name
            (
                &[("istio.io/rev", "stable")],
                "istio.io/rev=stable",
                None,
                some("stable"),
            ),
        ];
        for (labels, label, tag, revision) in table {
            assert_eq!(
                resolve(labels),
                Some((label.to_string(), tag, revision)),
                "{labels:?}"
            );
        }
    }

    #[test]
    fn tag_shadows_a_revision_of_the_same_name() {
        let mut t = tags();
        t.insert("canary".into(), "stable".into());
        let r = resolve_namespace(
            &map(&[("istio.io/rev", "canary")]),
            &map(&[]),
            &t,
            &revisions(),
            "weft",
        );
        assert_eq!(r.and_then(|r| r.revision), Some("stable".into()));
    }

    #[test]
    fn unenrolled_opted_out_and_foreign_namespaces_resolve_to_nothing() {
        let none: [Labels; 5] = [
            &[],
            &[("istio-injection", "true")],
            &[("istio-injection", "disabled"), ("istio.io/rev", "stable")],
            &[("openservicemesh.io/monitored-by", "osm")],
            &[("app", "web")],
        ];
        for labels in none {
            assert_eq!(resolve(labels), None, "{labels:?}");
        }
        let osm_off = map(&[("openservicemesh.io/sidecar-injection", "Disabled")]);
        assert_eq!(
            resolve_namespace(
                &map(&[("istio-injection", "enabled")]),
                &osm_off,
                &tags(),
                &revisions(),
                "weft"
            ),
            None
        );
    }

    #[test]
    fn mesh_name_is_configurable() {
        let labels = map(&[("openservicemesh.io/monitored-by", "osm")]);
        let r = resolve_namespace(&labels, &map(&[]), &tags(), &revisions(), "osm");
        assert_eq!(r.and_then(|r| r.revision), Some("stable".into()));
    }

    #[test]
    fn conflicting_labels_are_described_once_agreeing_ones_are_not() {
        // (labels, expected substring or None)
        let table: [(Labels, Option<&str>); 7] = [
            (
                &[("istio-injection", "enabled"), ("istio.io/rev", "canary")],
                Some("istio-injection=enabled takes precedence over istio.io/rev=canary"),
            ),
            (
                &[("istio-injection", "enabled"), ("istio.io/rev", "default")],
                None,
            ),
            (
                &[
                    ("istio-injection", "enabled"),
                    ("openservicemesh.io/monitored-by", "weft"),
                ],
                None,
            ),
            (
                &[
                    ("istio-injection", "enabled"),
                    ("openservicemesh.io/monitored-by", "osm"),
                ],
                Some("over openservicemesh.io/monitored-by=osm"),
            ),
            (
                &[
                    ("istio.io/rev", "canary"),
                    ("openservicemesh.io/monitored-by", "weft"),
                ],
                Some(
                    "istio.io/rev=canary takes precedence over openservicemesh.io/monitored-by=weft",
                ),
            ),
            (&[("istio.io/rev", "canary")], None),
            (
                &[
                    ("istio-injection", "enabled"),
                    ("istio.io/rev", "canary"),
                    ("openservicemesh.io/monitored-by", "osm"),
                ],
                Some("over istio.io/rev=canary, openservicemesh.io/monitored-by=osm"),
            ),
        ];
        for (labels, expected) in table {
            let got = namespace_conflict(&map(labels), "weft");
            match expected {
                None => assert_eq!(got, None, "{labels:?}"),
                Some(needle) => assert!(
                    got.as_deref().is_some_and(|g| g.contains(needle)),
                    "{labels:?}: {got:?}"
                ),
            }
        }
    }

    #[test]
    fn pods_count_by_their_status_annotation_while_running() {
        assert_eq!(
            PodInjection::of(&injected("stable", Some("prod"))),
            Some(PodInjection {
                revision: "stable".into(),
                tag: Some("prod".into()),
                proxy_ready: false,
            })
        );
        assert_eq!(
            PodInjection::of(&pod(Some(r#"{"revision":"canary"}"#), "Pending")),
            Some(PodInjection {
                revision: "canary".into(),
                tag: None,
                proxy_ready: false,
            })
        );
        let ready = with_ready_proxy(injected("stable", None));
        assert!(PodInjection::of(&ready).is_some_and(|p| p.proxy_ready));
        assert_eq!(PodInjection::of(&pod(None, "Running")), None);
        assert_eq!(PodInjection::of(&pod(Some("not json"), "Running")), None);
        assert_eq!(
            PodInjection::of(&pod(Some(r#"{"revision":"stable"}"#), "Succeeded")),
            None
        );
        assert_eq!(
            PodInjection::of(&pod(Some(r#"{"revision":"stable"}"#), "Failed")),
            None
        );
    }

    #[test]
    fn snapshot_leaves_out_never_injected_namespaces() {
        let namespaces = [
            namespace("pets", &[("istio-injection", "enabled")]),
            namespace("kube-system", &[("istio-injection", "enabled")]),
            namespace("weft-system", &[("istio.io/rev", "stable")]),
            namespace("plain", &[]),
        ];
        let pods = [injected("stable", None)];
        let s = Snapshot::build(
            "weft",
            "weft-system",
            revisions(),
            tags(),
            namespaces.iter(),
            pods.iter(),
        );
        assert_eq!(s.namespaces.keys().collect::<Vec<_>>(), ["pets"]);
        assert_eq!(s.pods.len(), 1);
        assert_eq!(s.tags_of("canary"), ["prod"]);
        assert_eq!(s.tags_of("gone"), ["broken"]);
    }
}
