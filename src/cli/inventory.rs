//! What the user CLI knows about the mesh: its tags and revisions (`Catalog`), and for the list
//! commands every namespace and pod (`Inventory`). The questions asked of it — which label
//! enrols a namespace, what a value resolves to, which pods run a revision other than the one
//! they would get now — are pure functions; loading from the cluster is one thin layer.

use std::collections::{BTreeMap, BTreeSet};

use clap::Args;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{ListParams, ObjectList};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;

use super::error::CliError;
use crate::api::{MeshConfig, RevisionTag};
use crate::contract;
use crate::webhook::{Decision, InjectionStatus, InjectorSettings, MeshState, decide};

/// Where weft's objects live and which mesh name `openservicemesh.io/monitored-by` uses; both
/// must match the operator's `--namespace` and `--mesh-name`.
#[derive(Clone, Debug, Args)]
pub struct MeshArgs {
    /// Namespace of weft's control plane, its MeshConfigs and RevisionTags.
    #[arg(long, env = "WEFT_NAMESPACE", default_value = contract::DEFAULT_OPERATOR_NAMESPACE)]
    pub weft_namespace: String,
    /// Value of `openservicemesh.io/monitored-by` that means weft (the operator's --mesh-name).
    #[arg(long, env = "WEFT_MESH_NAME", default_value = contract::DEFAULT_MESH_NAME)]
    pub mesh_name: String,
}

impl Default for MeshArgs {
    fn default() -> Self {
        Self {
            weft_namespace: contract::DEFAULT_OPERATOR_NAMESPACE.to_string(),
            mesh_name: contract::DEFAULT_MESH_NAME.to_string(),
        }
    }
}

// === Catalog: the tags and revisions ===

/// The names a value such as `istio.io/rev=<value>` can resolve to.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Catalog {
    /// Tag name → the revision its spec points at.
    pub tags: BTreeMap<String, String>,
    /// Revision (MeshConfig) names.
    pub revisions: BTreeSet<String>,
}

/// What a tag-or-revision value resolves to, as the injector resolves it (SPEC §4).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolution {
    /// A revision, reached through the tag if `tag` is set.
    Revision {
        revision: String,
        tag: Option<String>,
    },
    /// A tag whose revision does not exist: pods asking for it are refused.
    TagToMissingRevision { tag: String, revision: String },
    /// Neither a tag nor a revision.
    Unknown,
}

impl Catalog {
    pub fn from_objects(tags: &[RevisionTag], revisions: &[MeshConfig]) -> Self {
        Self {
            tags: tags
                .iter()
                .filter_map(|t| Some((t.metadata.name.clone()?, t.spec.revision.clone())))
                .collect(),
            revisions: revisions
                .iter()
                .filter_map(|r| r.metadata.name.clone())
                .collect(),
        }
    }

    /// A tag of that name first, else a revision of that name (the injector's order).
    pub fn resolve(&self, value: &str) -> Resolution {
        if let Some(revision) = self.tags.get(value) {
            return if self.revisions.contains(revision) {
                Resolution::Revision {
                    revision: revision.clone(),
                    tag: Some(value.to_string()),
                }
            } else {
                Resolution::TagToMissingRevision {
                    tag: value.to_string(),
                    revision: revision.clone(),
                }
            };
        }
        if self.revisions.contains(value) {
            return Resolution::Revision {
                revision: value.to_string(),
                tag: None,
            };
        }
        Resolution::Unknown
    }

    /// `known tags: default (revision stable); known revisions: stable, canary`, for refusals.
    pub fn describe(&self) -> String {
        format!(
            "Known tags: {}; known revisions: {}",
            self.describe_tags(),
            self.describe_revisions()
        )
    }

    pub fn describe_tags(&self) -> String {
        if self.tags.is_empty() {
            return "none".into();
        }
        self.tags
            .iter()
            .map(|(tag, revision)| format!("{tag} (revision {revision})"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    pub fn describe_revisions(&self) -> String {
        if self.revisions.is_empty() {
            return "none".into();
        }
        self.revisions
            .iter()
            .cloned()
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn mesh_state(&self, mesh_name: &str, revisions: &[MeshConfig]) -> MeshState {
        MeshState {
            mesh_name: mesh_name.to_string(),
            tags: self.tags.clone(),
            meshconfigs: revisions
                .iter()
                .filter_map(|r| Some((r.metadata.name.clone()?, r.spec.clone())))
                .collect(),
            ..Default::default()
        }
    }
}

// === Enrolment of a namespace ===

/// How a namespace's own labels and annotations place it in the mesh (SPEC §4, the namespace
/// rules; pod labels come on top, per pod).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Enrolment {
    NotEnrolled,
    /// An opt-out on the namespace, which beats any enrolment label.
    OptedOut {
        by: String,
    },
    /// `openservicemesh.io/monitored-by` names another mesh.
    OtherMesh {
        mesh: String,
    },
    /// The first enrolment label by precedence, and the tag-or-revision value it asks for.
    Enrolled {
        label: String,
        value: String,
    },
}

impl Enrolment {
    /// The label or annotation a user would look for, as `key=value`.
    pub fn label(&self) -> Option<String> {
        match self {
            Enrolment::NotEnrolled => None,
            Enrolment::OptedOut { by } => Some(by.clone()),
            Enrolment::OtherMesh { mesh } => {
                Some(format!("{}={mesh}", contract::LABEL_OSM_MONITORED_BY))
            }
            Enrolment::Enrolled { label, .. } => Some(label.clone()),
        }
    }

    /// The tag-or-revision value the namespace asks for.
    pub fn value(&self) -> Option<&str> {
        match self {
            Enrolment::Enrolled { value, .. } => Some(value),
            _ => None,
        }
    }
}

/// The namespace rules of the injection decision, in its order: opt-outs win, then
/// `istio-injection=enabled`, `istio.io/rev`, `openservicemesh.io/monitored-by`.
pub fn namespace_enrolment(namespace: &ObjectMeta, mesh_name: &str) -> Enrolment {
    let labels = namespace.labels.as_ref();
    let label = |key: &str| labels.and_then(|l| l.get(key));
    let osm_injection = namespace
        .annotations
        .as_ref()
        .and_then(|a| a.get(contract::ANNOTATION_OSM_INJECTION));

    if let Some(v) = osm_injection.filter(|v| is_osm_opt_out(v)) {
        return Enrolment::OptedOut {
            by: format!("{}={v} (annotation)", contract::ANNOTATION_OSM_INJECTION),
        };
    }
    if let Some(v) = label(contract::LABEL_ISTIO_INJECTION) {
        if v.eq_ignore_ascii_case("disabled") {
            return Enrolment::OptedOut {
                by: format!("{}={v}", contract::LABEL_ISTIO_INJECTION),
            };
        }
        if v == "enabled" {
            return Enrolment::Enrolled {
                label: format!("{}={v}", contract::LABEL_ISTIO_INJECTION),
                value: contract::DEFAULT_TAG.to_string(),
            };
        }
    }
    if let Some(v) = label(contract::LABEL_ISTIO_REV) {
        return Enrolment::Enrolled {
            label: format!("{}={v}", contract::LABEL_ISTIO_REV),
            value: v.clone(),
        };
    }
    if let Some(v) = label(contract::LABEL_OSM_MONITORED_BY) {
        return if v == mesh_name {
            Enrolment::Enrolled {
                label: format!("{}={v}", contract::LABEL_OSM_MONITORED_BY),
                value: contract::DEFAULT_TAG.to_string(),
            }
        } else {
            Enrolment::OtherMesh { mesh: v.clone() }
        };
    }
    Enrolment::NotEnrolled
}

/// OSM reads `disabled` and `no` as off, in any case (as the injector does).
pub fn is_osm_opt_out(value: &str) -> bool {
    value.eq_ignore_ascii_case("disabled") || value.eq_ignore_ascii_case("no")
}

// === Pods ===

/// How a pod was injected, read from its `weft.dev/status` annotation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Injected {
    /// `None` when the annotation cannot be read and the pod has no `weft.dev/revision` label.
    pub revision: Option<String>,
    pub tag: Option<String>,
}

/// `Some` for pods weft injected. An unreadable status annotation still marks the pod as
/// injected; its revision then comes from the `weft.dev/revision` label, if any.
pub fn injected(pod: &ObjectMeta) -> Option<Injected> {
    let status = pod.annotations.as_ref()?.get(contract::ANNOTATION_STATUS)?;
    Some(match serde_json::from_str::<InjectionStatus>(status) {
        Ok(status) => Injected {
            revision: Some(status.revision),
            tag: status.tag,
        },
        Err(_) => Injected {
            revision: pod
                .labels
                .as_ref()
                .and_then(|l| l.get(contract::LABEL_REVISION))
                .cloned(),
            tag: None,
        },
    })
}

// === Inventory: everything the list commands show ===

/// A snapshot of the mesh: tags, revisions, namespaces and pods (metadata only).
#[derive(Clone, Debug, Default)]
pub struct Inventory {
    pub mesh: MeshArgs,
    pub tags: Vec<RevisionTag>,
    pub revisions: Vec<MeshConfig>,
    pub namespaces: Vec<ObjectMeta>,
    pub pods: Vec<ObjectMeta>,
}

/// One namespace, as the list commands see it.
#[derive(Clone, Debug, PartialEq)]
pub struct NamespaceFacts {
    pub name: String,
    pub enrolment: Enrolment,
    /// What the enrolment value resolves to now (`None` when not enrolled).
    pub resolution: Option<Resolution>,
}

/// One pod, as the list commands see it.
#[derive(Clone, Debug, PartialEq)]
pub struct PodFacts {
    pub namespace: String,
    pub name: String,
    pub injected: Option<Injected>,
    /// The revision the pod would get if it were created now (`None`: no proxy, or refused).
    pub revision_now: Option<String>,
}

impl PodFacts {
    /// Injected by a revision other than the one it would get now: it moves on restart.
    pub fn is_stale(&self) -> bool {
        self.injected
            .as_ref()
            .is_some_and(|i| i.revision != self.revision_now)
    }
}

/// The inventory with every namespace and pod placed.
#[derive(Clone, Debug, Default)]
pub struct Analysis {
    pub catalog: Catalog,
    pub namespaces: Vec<NamespaceFacts>,
    pub pods: Vec<PodFacts>,
}

impl Inventory {
    pub fn catalog(&self) -> Catalog {
        Catalog::from_objects(&self.tags, &self.revisions)
    }

    /// Places every namespace and pod. A pod's current revision comes from the injector's own
    /// `decide()` on the pod without its status annotation, so pod labels count as they do at
    /// admission.
    pub fn analyse(&self) -> Analysis {
        let catalog = self.catalog();
        let state = catalog.mesh_state(&self.mesh.mesh_name, &self.revisions);
        let settings = InjectorSettings {
            operator_namespace: self.mesh.weft_namespace.clone(),
            ..Default::default()
        };
        let namespaces: BTreeMap<&str, &ObjectMeta> = self
            .namespaces
            .iter()
            .filter_map(|ns| Some((ns.name.as_deref()?, ns)))
            .collect();

        let namespace_facts = self
            .namespaces
            .iter()
            .filter_map(|ns| {
                let name = ns.name.clone()?;
                let enrolment = namespace_enrolment(ns, &self.mesh.mesh_name);
                let resolution = enrolment.value().map(|v| catalog.resolve(v));
                Some(NamespaceFacts {
                    name,
                    enrolment,
                    resolution,
                })
            })
            .collect();

        let pods = self
            .pods
            .iter()
            .map(|pod| {
                let namespace = pod.namespace.clone().unwrap_or_default();
                let injected = injected(pod);
                let revision_now = injected.as_ref().and_then(|_| {
                    let ns = namespaces
                        .get(namespace.as_str())
                        .map(|m| (*m).clone())
                        .unwrap_or_else(|| ObjectMeta {
                            name: Some(namespace.clone()),
                            ..Default::default()
                        });
                    revision_now(pod, ns, &state, &settings)
                });
                PodFacts {
                    namespace,
                    name: pod.name.clone().unwrap_or_default(),
                    injected,
                    revision_now,
                }
            })
            .collect();

        Analysis {
            catalog,
            namespaces: namespace_facts,
            pods,
        }
    }
}

/// The revision `decide()` would give this pod if it were created now.
fn revision_now(
    pod: &ObjectMeta,
    namespace: ObjectMeta,
    state: &MeshState,
    settings: &InjectorSettings,
) -> Option<String> {
    let mut metadata = pod.clone();
    if let Some(annotations) = metadata.annotations.as_mut() {
        annotations.remove(contract::ANNOTATION_STATUS);
    }
    let pod = Pod {
        metadata,
        ..Default::default()
    };
    let namespace = Namespace {
        metadata: namespace,
        ..Default::default()
    };
    match decide(&pod, &namespace, state, settings) {
        Decision::Inject(injection) => Some(injection.revision),
        Decision::Skip { .. } | Decision::Deny { .. } => None,
    }
}

// === Loading (the thin cluster layer) ===

pub async fn client() -> Result<Client, CliError> {
    Client::try_default().await.map_err(CliError::kube(
        "connecting to the cluster named by the kubeconfig",
    ))
}

/// The tags and revisions in the weft namespace.
pub async fn load_catalog_objects(
    client: &Client,
    mesh: &MeshArgs,
) -> Result<(Vec<RevisionTag>, Vec<MeshConfig>), CliError> {
    let tags: Api<RevisionTag> = Api::namespaced(client.clone(), &mesh.weft_namespace);
    let revisions: Api<MeshConfig> = Api::namespaced(client.clone(), &mesh.weft_namespace);
    let tags = tags
        .list(&ListParams::default())
        .await
        .map_err(not_installed("RevisionTag", &mesh.weft_namespace))?;
    let revisions = revisions
        .list(&ListParams::default())
        .await
        .map_err(not_installed("MeshConfig", &mesh.weft_namespace))?;
    Ok((tags.items, revisions.items))
}

/// Everything; `with_pods: false` skips the cluster-wide pod list.
pub async fn load(
    client: &Client,
    mesh: &MeshArgs,
    with_pods: bool,
) -> Result<Inventory, CliError> {
    let (tags, revisions) = load_catalog_objects(client, mesh).await?;
    let namespaces = list_metadata(&Api::<Namespace>::all(client.clone()))
        .await
        .map_err(CliError::kube("listing namespaces"))?;
    let pods = if with_pods {
        list_metadata(&Api::<Pod>::all(client.clone()))
            .await
            .map_err(CliError::kube("listing pods"))?
    } else {
        Vec::new()
    };
    Ok(Inventory {
        mesh: mesh.clone(),
        tags,
        revisions,
        namespaces,
        pods,
    })
}

/// Metadata of every object of a kind, page by page (a big cluster has many pods).
async fn list_metadata<K>(api: &Api<K>) -> Result<Vec<ObjectMeta>, kube::Error>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    let mut out = Vec::new();
    let mut params = ListParams::default().limit(500);
    loop {
        let page: ObjectList<_> = api.list_metadata(&params).await?;
        out.extend(page.items.into_iter().map(|item| item.metadata));
        match page.metadata.continue_.as_deref() {
            Some(token) if !token.is_empty() => params = params.continue_token(token),
            _ => return Ok(out),
        }
    }
}

/// A 404 on listing weft's kinds means the CRDs are missing, which deserves its own advice.
fn not_installed(kind: &'static str, namespace: &str) -> impl FnOnce(kube::Error) -> CliError {
    let action = format!("listing {kind}s in {namespace}");
    move |source| match &source {
        kube::Error::Api(status) if status.is_not_found() => CliError::NotInstalled { kind },
        _ => CliError::Kube { action, source },
    }
}

#[cfg(test)]
pub(crate) mod fixtures {
    //! Builders for tests of the CLI modules: a mesh with revisions `stable` and `canary` and
    //! tags `default` → stable, `prod` → canary, `broken` → gone.

    use super::*;
    use crate::api::{MeshConfigSpec, RevisionTagSpec};

    pub fn pairs(p: &[(&str, &str)]) -> Option<BTreeMap<String, String>> {
        (!p.is_empty()).then(|| {
            p.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        })
    }

    pub fn namespace(name: &str, labels: &[(&str, &str)]) -> ObjectMeta {
        namespace_with(name, labels, &[])
    }

    pub fn namespace_with(
        name: &str,
        labels: &[(&str, &str)],
        annotations: &[(&str, &str)],
    ) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.into()),
            labels: pairs(labels),
            annotations: pairs(annotations),
            ..Default::default()
        }
    }

    /// A pod; `injected_by` = (revision, tag) writes the status annotation the injector writes.
    pub fn pod(
        namespace: &str,
        name: &str,
        labels: &[(&str, &str)],
        injected_by: Option<(&str, Option<&str>)>,
    ) -> ObjectMeta {
        let annotations = injected_by.map(|(revision, tag)| {
            let status = InjectionStatus {
                revision: revision.into(),
                via: "test".into(),
                tag: tag.map(Into::into),
                init_containers: vec![contract::CONTAINER_PROXY.into()],
                containers: Vec::new(),
                volumes: Vec::new(),
            };
            BTreeMap::from([(
                contract::ANNOTATION_STATUS.to_string(),
                serde_json::to_string(&status).unwrap(),
            )])
        });
        ObjectMeta {
            name: Some(name.into()),
            namespace: Some(namespace.into()),
            labels: pairs(labels),
            annotations,
            ..Default::default()
        }
    }

    pub fn tag(name: &str, revision: &str) -> RevisionTag {
        RevisionTag::new(
            name,
            RevisionTagSpec {
                revision: revision.into(),
            },
        )
    }

    pub fn revision(name: &str, spec: MeshConfigSpec) -> MeshConfig {
        MeshConfig::new(name, spec)
    }

    pub fn inventory(namespaces: Vec<ObjectMeta>, pods: Vec<ObjectMeta>) -> Inventory {
        Inventory {
            mesh: MeshArgs::default(),
            tags: vec![
                tag("default", "stable"),
                tag("prod", "canary"),
                tag("broken", "gone"),
            ],
            revisions: vec![
                revision("stable", MeshConfigSpec::default()),
                revision("canary", MeshConfigSpec::default()),
            ],
            namespaces,
            pods,
        }
    }

    pub fn catalog() -> Catalog {
        inventory(Vec::new(), Vec::new()).catalog()
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::*;
    use super::*;
    use crate::webhook::SkipReason;

    #[test]
    fn values_resolve_through_tags_first_then_revisions() {
        let catalog = catalog();
        assert_eq!(
            catalog.resolve("prod"),
            Resolution::Revision {
                revision: "canary".into(),
                tag: Some("prod".into())
            }
        );
        assert_eq!(
            catalog.resolve("stable"),
            Resolution::Revision {
                revision: "stable".into(),
                tag: None
            }
        );
        assert_eq!(
            catalog.resolve("broken"),
            Resolution::TagToMissingRevision {
                tag: "broken".into(),
                revision: "gone".into()
            }
        );
        assert_eq!(catalog.resolve("asm-1-27"), Resolution::Unknown);
        assert_eq!(
            catalog.describe(),
            "Known tags: broken (revision gone), default (revision stable), prod (revision \
             canary); known revisions: canary, stable"
        );
        assert_eq!(
            Catalog::default().describe(),
            "Known tags: none; known revisions: none"
        );
    }

    /// The CLI's reading of namespace labels must agree with the injector's: for each label
    /// set, `namespace_enrolment` + `resolve` and `decide()` on a label-less pod say the same.
    type Pairs<'a> = &'a [(&'a str, &'a str)];

    #[test]
    fn namespace_enrolment_agrees_with_the_injector() {
        let cases: &[(Pairs, Pairs)] = &[
            (&[], &[]),
            (&[("istio-injection", "enabled")], &[]),
            (&[("istio-injection", "disabled")], &[]),
            (
                &[("istio-injection", "Disabled"), ("istio.io/rev", "prod")],
                &[],
            ),
            (
                &[("istio-injection", "enabled"), ("istio.io/rev", "prod")],
                &[],
            ),
            (
                &[("istio-injection", "bogus"), ("istio.io/rev", "prod")],
                &[],
            ),
            (&[("istio.io/rev", "prod")], &[]),
            (&[("istio.io/rev", "stable")], &[]),
            (&[("istio.io/rev", "broken")], &[]),
            (&[("istio.io/rev", "asm-1-27")], &[]),
            (&[("openservicemesh.io/monitored-by", "weft")], &[]),
            (&[("openservicemesh.io/monitored-by", "osm")], &[]),
            (
                &[
                    ("openservicemesh.io/monitored-by", "osm"),
                    ("istio.io/rev", "canary"),
                ],
                &[],
            ),
            (
                &[("openservicemesh.io/monitored-by", "weft")],
                &[("openservicemesh.io/sidecar-injection", "disabled")],
            ),
            (
                &[("istio.io/rev", "prod")],
                &[("openservicemesh.io/sidecar-injection", "No")],
            ),
            (
                &[("istio.io/rev", "prod")],
                &[("openservicemesh.io/sidecar-injection", "enabled")],
            ),
        ];
        let inventory = inventory(Vec::new(), Vec::new());
        let catalog = inventory.catalog();
        let state = catalog.mesh_state("weft", &inventory.revisions);
        let settings = InjectorSettings::default();
        for (labels, annotations) in cases {
            let ns = namespace_with("pets", labels, annotations);
            let enrolment = namespace_enrolment(&ns, "weft");
            let pod = Pod {
                metadata: ObjectMeta {
                    name: Some("web".into()),
                    ..Default::default()
                },
                ..Default::default()
            };
            let decision = decide(
                &pod,
                &Namespace {
                    metadata: ns.clone(),
                    ..Default::default()
                },
                &state,
                &settings,
            );
            let agrees = match (&enrolment, &decision) {
                (Enrolment::NotEnrolled, Decision::Skip { reason, .. }) => {
                    *reason == SkipReason::NotEnrolled
                }
                (Enrolment::OptedOut { .. }, Decision::Skip { reason, .. }) => {
                    matches!(reason, SkipReason::OptedOut { .. })
                }
                (Enrolment::OtherMesh { .. }, Decision::Skip { reason, .. }) => {
                    matches!(reason, SkipReason::OtherMesh { .. })
                }
                (Enrolment::Enrolled { value, .. }, Decision::Inject(injection)) => {
                    catalog.resolve(value)
                        == Resolution::Revision {
                            revision: injection.revision.clone(),
                            tag: injection.tag.clone(),
                        }
                }
                (Enrolment::Enrolled { value, .. }, Decision::Deny { .. }) => {
                    !matches!(catalog.resolve(value), Resolution::Revision { .. })
                }
                _ => false,
            };
            assert!(
                agrees,
                "labels {labels:?} annotations {annotations:?}: CLI says {enrolment:?}, \
                 injector says {decision:?}"
            );
        }
    }

    #[test]
    fn enrolment_names_the_winning_label() {
        let e = |labels: &[(&str, &str)]| namespace_enrolment(&namespace("pets", labels), "weft");
        assert_eq!(
            e(&[("istio-injection", "enabled"), ("istio.io/rev", "prod")]),
            Enrolment::Enrolled {
                label: "istio-injection=enabled".into(),
                value: "default".into()
            }
        );
        assert_eq!(
            e(&[("openservicemesh.io/monitored-by", "osm")])
                .label()
                .as_deref(),
            Some("openservicemesh.io/monitored-by=osm")
        );
        assert_eq!(e(&[("app", "web")]), Enrolment::NotEnrolled);
    }

    #[test]
    fn injected_reads_the_status_annotation() {
        let p = pod("pets", "web-1", &[], Some(("stable", Some("default"))));
        assert_eq!(
            injected(&p),
            Some(Injected {
                revision: Some("stable".into()),
                tag: Some("default".into())
            })
        );
        assert_eq!(injected(&pod("pets", "web-2", &[], None)), None);

        let mut garbled = pod("pets", "web-3", &[("weft.dev/revision", "canary")], None);
        garbled.annotations = pairs(&[("weft.dev/status", "{not json")]);
        assert_eq!(
            injected(&garbled),
            Some(Injected {
                revision: Some("canary".into()),
                tag: None
            })
        );
    }

    #[test]
    fn a_pod_is_stale_when_it_would_get_another_revision_now() {
        let inv = inventory(
            vec![
                namespace("pets", &[("istio.io/rev", "prod")]),
                namespace("gone", &[]),
            ],
            vec![
                // prod → canary now: injected by stable is stale, by canary is current.
                pod("pets", "old", &[], Some(("stable", Some("prod")))),
                pod("pets", "new", &[], Some(("canary", Some("prod")))),
                // pod label wins over nothing; matches its own label's revision.
                pod(
                    "pets",
                    "pinned",
                    &[("istio.io/rev", "stable")],
                    Some(("canary", None)),
                ),
                // namespace no longer enrolled: a restart removes the proxy.
                pod("gone", "left", &[], Some(("stable", None))),
                pod("pets", "plain", &[], None),
            ],
        );
        let analysis = inv.analyse();
        let stale: Vec<(&str, bool)> = analysis
            .pods
            .iter()
            .map(|p| (p.name.as_str(), p.is_stale()))
            .collect();
        assert_eq!(
            stale,
            vec![
                ("old", true),
                ("new", false),
                // the namespace label (rule 2) beats the pod label (rule 4): canary is current
                ("pinned", false),
                ("left", true),
                ("plain", false),
            ]
        );
    }
}

/// The TLS Secrets of the namespaces with gateway pods, as the operator watches them, with
/// each private key replaced by an empty PEM block before anything else sees it: the CLI
/// only needs to know the Secret is there and well formed. A namespace whose Secrets this
/// user may not list is named on stderr (its credentials would look missing).
async fn gateway_tls_secrets(
    client: &Client,
    pods: &[Pod],
) -> Vec<k8s_openapi::api::core::v1::Secret> {
    use k8s_openapi::api::core::v1::Secret;
    let namespaces: std::collections::BTreeSet<&str> = pods
        .iter()
        .filter(|p| crate::discovery::routes::is_gateway_pod(p))
        .filter_map(|p| p.metadata.namespace.as_deref())
        .collect();
    let placeholder = pem::encode(&pem::Pem::new("PRIVATE KEY", Vec::new()));
    let mut out = Vec::new();
    for ns in namespaces {
        let params = ListParams::default().fields("type=kubernetes.io/tls");
        match Api::<Secret>::namespaced(client.clone(), ns)
            .list(&params)
            .await
        {
            Ok(list) => out.extend(list.items.into_iter().map(|mut s| {
                if let Some(key) = s.data.as_mut().and_then(|d| d.get_mut("tls.key")) {
                    key.0 = placeholder.clone().into_bytes();
                }
                s
            })),
            Err(e) => eprintln!(
                "warning: cannot list the TLS Secrets of gateway namespace {ns} ({e}); its HTTPS servers' credentials are not checked"
            ),
        }
    }
    out
}

/// The whole mesh as the operator's index reads it (every pod, Service, slice, revision and
/// policy or route the cluster has), for commands that compute what the operator computes.
pub async fn mesh_view(
    client: &Client,
    root_namespace: &str,
    weft_namespace: &str,
) -> Result<crate::discovery::MeshView, kube::Error> {
    use crate::api::smi::{HTTPRouteGroup, TCPRoute, TrafficSplit, TrafficTarget};
    use crate::api::{
        AuthorizationPolicy, DestinationRule, PeerAuthentication, ServiceEntry, VirtualService,
    };
    use k8s_openapi::api::core::v1::Service;
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    let list = ListParams::default();
    let pods: Vec<Pod> = Api::<Pod>::all(client.clone()).list(&list).await?.items;
    let services = Api::<Service>::all(client.clone()).list(&list).await?.items;
    let slices = Api::<EndpointSlice>::all(client.clone())
        .list(&list)
        .await?
        .items;
    let revisions = Api::<MeshConfig>::namespaced(client.clone(), weft_namespace)
        .list(&list)
        .await?
        .items;
    // Istio's and SMI's APIs may be absent (404): no such policies then. Any other error is
    // reported, since skipping the policies silently would pass checks that were not made.
    async fn optional<K>(api: Api<K>) -> Result<Vec<K>, kube::Error>
    where
        K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    {
        match api.list(&ListParams::default()).await {
            Ok(l) => Ok(l.items),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }
    fn arcs<T>(v: Vec<T>) -> Vec<std::sync::Arc<T>> {
        v.into_iter().map(std::sync::Arc::new).collect()
    }
    let tls_secrets = gateway_tls_secrets(client, &pods).await;
    Ok(crate::discovery::MeshView {
        trust_domain: contract::DEFAULT_TRUST_DOMAIN.into(),
        root_namespace: root_namespace.to_string(),
        cluster_domain: "cluster.local".into(),
        // A pod being deleted is no finding (as for the other checks).
        pods: pods
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .map(std::sync::Arc::new)
            .collect(),
        // Endpoint workload metadata of unmeshed pods only labels metrics; no check reads it.
        unmeshed_pods: Vec::new(),
        services: arcs(services),
        slices: arcs(slices),
        revisions: arcs(revisions),
        authorization_policies: arcs(
            optional(Api::<AuthorizationPolicy>::all(client.clone())).await?,
        ),
        traffic_targets: arcs(optional(Api::<TrafficTarget>::all(client.clone())).await?),
        http_route_groups: arcs(optional(Api::<HTTPRouteGroup>::all(client.clone())).await?),
        tcp_routes: arcs(optional(Api::<TCPRoute>::all(client.clone())).await?),
        peer_authentications: arcs(optional(Api::<PeerAuthentication>::all(client.clone())).await?),
        destination_rules: arcs(optional(Api::<DestinationRule>::all(client.clone())).await?),
        virtual_services: arcs(optional(Api::<VirtualService>::all(client.clone())).await?),
        traffic_splits: arcs(optional(Api::<TrafficSplit>::all(client.clone())).await?),
        service_entries: arcs(optional(Api::<ServiceEntry>::all(client.clone())).await?),
        istio_gateways: arcs(optional(Api::<crate::api::Gateway>::all(client.clone())).await?),
        tls_secrets: arcs(tls_secrets),
        http_routes: arcs(
            optional(Api::<crate::api::gateway_api::HTTPRoute>::all(
                client.clone(),
            ))
            .await?,
        ),
        grpc_routes: arcs(
            optional(Api::<crate::api::gateway_api::GRPCRoute>::all(
                client.clone(),
            ))
            .await?,
        ),
        tls_routes: arcs(
            optional(Api::<crate::api::gateway_api::TLSRoute>::all(
                client.clone(),
            ))
            .await?,
        ),
        gateway_tcp_routes: arcs(
            optional(Api::<crate::api::gateway_api::TCPRoute>::all(
                client.clone(),
            ))
            .await?,
        ),
        gateway_api_gateways: arcs(
            optional(Api::<crate::api::gateway_api::Gateway>::all(client.clone())).await?,
        ),
        gateway_classes: arcs(
            optional(Api::<crate::api::gateway_api::GatewayClass>::all(
                client.clone(),
            ))
            .await?,
        ),
        // Only a Gateway listener's namespace Selector reads them; the CLI shows no Gateways.
        namespaces: Vec::new(),
        reference_grants: arcs(
            optional(Api::<crate::api::gateway_api::ReferenceGrant>::all(
                client.clone(),
            ))
            .await?,
        ),
    })
}
