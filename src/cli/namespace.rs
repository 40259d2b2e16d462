//! `weft namespace add|remove|list`: enrol namespaces with the labels Istio and OSM users
//! already know (SPEC §1 story 2, §4). The plans are pure (labels in, label changes out); the
//! write is one JSON merge patch by field manager `weft`, guarded by the resourceVersion read.

use std::collections::{BTreeMap, BTreeSet};

use clap::{Args, Subcommand};
use k8s_openapi::api::core::v1::Namespace;
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde::Serialize;
use serde_json::{Map, Value, json};

use super::error::{CliError, check_name};
use super::inventory::{self, Analysis, Catalog, Enrolment, MeshArgs, Resolution, is_osm_opt_out};
use super::output::{self, Row};
use crate::contract;

pub use crate::contract::FIELD_MANAGER;

#[derive(Debug, Subcommand)]
pub enum NamespaceCommand {
    /// Enrol a namespace: new pods get weft's proxy. Without flags it uses
    /// `istio-injection=enabled` (the `default` tag).
    Add(AddArgs),
    /// Remove the enrolment labels weft reads; running pods keep their proxy until restarted.
    Remove(RemoveArgs),
    /// Enrolled namespaces, the revision each resolves to, and pods still on another one.
    List(ListArgs),
}

// `--force` and `--overwrite` deliberately have no environment variable: a standing
// WEFT_FORCE would silently defeat every refusal.
#[derive(Debug, Args)]
pub struct AddArgs {
    /// The namespace to enrol.
    pub namespace: String,
    /// Enrol through this tag or revision (`istio.io/rev=<value>`) instead of the `default`
    /// tag.
    #[arg(long, conflicts_with = "osm")]
    pub revision: Option<String>,
    /// Enrol the OSM way, like `osm namespace add`: label
    /// `openservicemesh.io/monitored-by=<mesh name>` and annotation
    /// `openservicemesh.io/sidecar-injection: enabled`.
    #[arg(long)]
    pub osm: bool,
    /// Label the namespace even if the value resolves to no revision, or another mesh
    /// monitors it.
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub mesh: MeshArgs,
}

#[derive(Debug, Args)]
pub struct RemoveArgs {
    /// The namespace to take out of the mesh.
    pub namespace: String,
    #[command(flatten)]
    pub mesh: MeshArgs,
}

pub use super::output::ListArgs;

pub async fn run(command: NamespaceCommand) -> Result<(), CliError> {
    match command {
        NamespaceCommand::Add(args) => add(args).await,
        NamespaceCommand::Remove(args) => remove(args).await,
        NamespaceCommand::List(args) => list(args).await,
    }
}

// === Plans ===

/// What `weft namespace add` asks for.
#[derive(Clone, Debug, Default)]
pub struct AddRequest {
    pub revision: Option<String>,
    pub osm: bool,
    pub force: bool,
    pub mesh: MeshArgs,
}

/// Changes to a namespace's labels and annotations, and what to tell the user about them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LabelChanges {
    pub set_labels: BTreeMap<String, String>,
    pub remove_labels: BTreeSet<String>,
    pub set_annotations: BTreeMap<String, String>,
    pub remove_annotations: BTreeSet<String>,
    /// One line per change (and why), or why nothing changes.
    pub notes: Vec<String>,
    /// Refusals overridden by --force, and risks the user should know.
    pub warnings: Vec<String>,
}

impl LabelChanges {
    pub fn is_empty(&self) -> bool {
        self.set_labels.is_empty()
            && self.remove_labels.is_empty()
            && self.set_annotations.is_empty()
            && self.remove_annotations.is_empty()
    }

    /// The JSON merge patch (null deletes a key). The resourceVersion makes the API server
    /// refuse it if the namespace changed since the plan was made.
    pub fn merge_patch(&self, resource_version: Option<&str>) -> Value {
        fn entries(
            set: &BTreeMap<String, String>,
            remove: &BTreeSet<String>,
        ) -> Map<String, Value> {
            set.iter()
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .chain(remove.iter().map(|k| (k.clone(), Value::Null)))
                .collect()
        }
        let mut metadata = Map::new();
        if !self.set_labels.is_empty() || !self.remove_labels.is_empty() {
            metadata.insert(
                "labels".into(),
                Value::Object(entries(&self.set_labels, &self.remove_labels)),
            );
        }
        if !self.set_annotations.is_empty() || !self.remove_annotations.is_empty() {
            metadata.insert(
                "annotations".into(),
                Value::Object(entries(&self.set_annotations, &self.remove_annotations)),
            );
        }
        if let Some(rv) = resource_version {
            metadata.insert("resourceVersion".into(), json!(rv));
        }
        json!({ "metadata": metadata })
    }

    fn set_label(&mut self, labels: &BTreeMap<String, String>, key: &str, value: &str) {
        match labels.get(key) {
            Some(current) if current == value => {}
            Some(current) => {
                self.set_labels.insert(key.into(), value.into());
                self.notes
                    .push(format!("label {key}={value} set (it was {key}={current})"));
            }
            None => {
                self.set_labels.insert(key.into(), value.into());
                self.notes.push(format!("label {key}={value} set"));
            }
        }
    }

    fn remove_label(&mut self, key: &str, value: &str, why: &str) {
        self.remove_labels.insert(key.into());
        self.notes
            .push(format!("label {key}={value} removed: {why}"));
    }
}

/// The label changes that enrol `namespace` as asked, or why not (SPEC §1 story 2). The
/// namespace ends with exactly one enrolment label; labels that would win over it or opt the
/// namespace out are removed, each with a note saying so.
pub fn plan_namespace_add(
    namespace: &str,
    labels: &BTreeMap<String, String>,
    annotations: &BTreeMap<String, String>,
    request: &AddRequest,
    catalog: &Catalog,
) -> Result<LabelChanges, CliError> {
    let mesh = &request.mesh;
    if namespace == mesh.weft_namespace || contract::NEVER_INJECTED_NAMESPACES.contains(&namespace)
    {
        return Err(CliError::NeverInjectedNamespace {
            namespace: namespace.into(),
        });
    }
    if let (Some(revision), true) = (&request.revision, request.osm) {
        return Err(CliError::RevisionWithOsm {
            revision: revision.clone(),
        });
    }
    let mut changes = LabelChanges::default();

    // What the namespace will ask for, and whether that resolves.
    let value = match &request.revision {
        Some(revision) => {
            check_name("revision or tag", revision)?;
            revision.as_str()
        }
        None => contract::DEFAULT_TAG,
    };
    match catalog.resolve(value) {
        Resolution::Revision { .. } => {}
        Resolution::Unknown => {
            let refusal = CliError::UnresolvedValue {
                value: value.into(),
                weft_namespace: mesh.weft_namespace.clone(),
                known: catalog.describe(),
            };
            if !request.force {
                return Err(refusal);
            }
            changes.warnings.push(format!(
                "{value:?} resolves to nothing yet; new pods of {namespace} are refused until \
                 a tag or revision of that name exists (--force)"
            ));
        }
        Resolution::TagToMissingRevision { tag, revision } => {
            if !request.force {
                return Err(CliError::TagWithoutRevision {
                    tag,
                    revision,
                    weft_namespace: mesh.weft_namespace.clone(),
                    known: catalog.describe(),
                });
            }
            changes.warnings.push(format!(
                "tag {tag:?} points at missing revision {revision:?}; new pods of {namespace} \
                 are refused until it exists (--force)"
            ));
        }
    }

    // Another mesh's OSM label: its injector would inject the same pods.
    let monitored_by = labels.get(contract::LABEL_OSM_MONITORED_BY);
    let foreign_mesh = monitored_by.filter(|v| **v != mesh.mesh_name);
    if let Some(other) = foreign_mesh {
        if !request.force {
            return Err(CliError::OtherMesh {
                namespace: namespace.into(),
                label: contract::LABEL_OSM_MONITORED_BY,
                mesh: other.clone(),
                force_does: if request.osm {
                    "replace the label with weft's"
                } else {
                    "enrol it in weft as well"
                },
            });
        }
        if !request.osm {
            changes.warnings.push(format!(
                "{namespace} stays monitored by mesh {other:?} ({}={other}); its injector may \
                 add its own proxy to the same pods (--force)",
                contract::LABEL_OSM_MONITORED_BY
            ));
        }
    }

    // The one label that will enrol the namespace.
    let (target_key, target_value) = match (&request.revision, request.osm) {
        (Some(revision), _) => (contract::LABEL_ISTIO_REV, revision.clone()),
        (None, true) => (contract::LABEL_OSM_MONITORED_BY, mesh.mesh_name.clone()),
        (None, false) => (contract::LABEL_ISTIO_INJECTION, "enabled".to_string()),
    };
    let target = format!("{target_key}={target_value}");

    // Labels it would otherwise leave behind: each either wins over the target or opts out.
    if target_key != contract::LABEL_ISTIO_INJECTION
        && let Some(v) = labels.get(contract::LABEL_ISTIO_INJECTION)
    {
        if v == "enabled" {
            changes.remove_label(
                contract::LABEL_ISTIO_INJECTION,
                v,
                &format!("it takes precedence over {target}"),
            );
        } else if v.eq_ignore_ascii_case("disabled") {
            changes.remove_label(
                contract::LABEL_ISTIO_INJECTION,
                v,
                "it opts the namespace out, and opt-outs always win",
            );
        }
    }
    if target_key != contract::LABEL_ISTIO_REV
        && let Some(v) = labels.get(contract::LABEL_ISTIO_REV)
    {
        let why = if target_key == contract::LABEL_ISTIO_INJECTION {
            format!("{target} takes precedence over it; one enrolment label is clearer")
        } else {
            format!("it takes precedence over {target}")
        };
        changes.remove_label(contract::LABEL_ISTIO_REV, v, &why);
    }
    let mut osm_annotation_goes = false;
    if target_key != contract::LABEL_OSM_MONITORED_BY
        && let Some(v) = monitored_by.filter(|v| **v == mesh.mesh_name)
    {
        changes.remove_label(
            contract::LABEL_OSM_MONITORED_BY,
            v,
            &format!("{target} replaces it as the namespace's enrolment label"),
        );
        osm_annotation_goes = true;
    }

    if target_key == contract::LABEL_ISTIO_INJECTION
        && let Some(v) = labels
            .get(contract::LABEL_ISTIO_INJECTION)
            .filter(|v| v.eq_ignore_ascii_case("disabled"))
    {
        changes.notes.push(format!(
            "label {target_key}={v} was an opt-out; it is replaced"
        ));
    }
    changes.set_label(labels, target_key, &target_value);

    // OSM's injection annotation: enabled with --osm, never left as an opt-out.
    let osm_annotation = annotations.get(contract::ANNOTATION_OSM_INJECTION);
    if request.osm {
        if osm_annotation.map(String::as_str) != Some("enabled") {
            changes
                .set_annotations
                .insert(contract::ANNOTATION_OSM_INJECTION.into(), "enabled".into());
            changes.notes.push(match osm_annotation {
                Some(v) => format!(
                    "annotation {}=enabled set (it was {v})",
                    contract::ANNOTATION_OSM_INJECTION
                ),
                None => format!(
                    "annotation {}=enabled set",
                    contract::ANNOTATION_OSM_INJECTION
                ),
            });
        }
    } else if let Some(v) = osm_annotation {
        if is_osm_opt_out(v) {
            changes
                .remove_annotations
                .insert(contract::ANNOTATION_OSM_INJECTION.into());
            changes.notes.push(format!(
                "annotation {}={v} removed: it opts the namespace out, and opt-outs always win",
                contract::ANNOTATION_OSM_INJECTION
            ));
        } else if osm_annotation_goes {
            changes
                .remove_annotations
                .insert(contract::ANNOTATION_OSM_INJECTION.into());
            changes.notes.push(format!(
                "annotation {}={v} removed along with {}",
                contract::ANNOTATION_OSM_INJECTION,
                contract::LABEL_OSM_MONITORED_BY
            ));
        }
    }

    if changes.is_empty() {
        changes.notes.push(format!(
            "namespace {namespace} is already enrolled with {target}"
        ));
    }
    Ok(changes)
}

/// The label changes that take `namespace` out of the mesh: every enrolment label weft reads
/// on a namespace, and OSM's annotation when it came with weft's `monitored-by`. Opt-outs and
/// another mesh's labels stay.
pub fn plan_namespace_remove(
    namespace: &str,
    labels: &BTreeMap<String, String>,
    annotations: &BTreeMap<String, String>,
    mesh: &MeshArgs,
) -> LabelChanges {
    let mut changes = LabelChanges::default();
    if let Some(v) = labels
        .get(contract::LABEL_ISTIO_INJECTION)
        .filter(|v| *v == "enabled")
    {
        changes.remove_label(
            contract::LABEL_ISTIO_INJECTION,
            v,
            "it enrols the namespace",
        );
    }
    if let Some(v) = labels.get(contract::LABEL_ISTIO_REV) {
        changes.remove_label(contract::LABEL_ISTIO_REV, v, "it enrols the namespace");
    }
    let mut other_mesh = false;
    match labels.get(contract::LABEL_OSM_MONITORED_BY) {
        Some(v) if *v == mesh.mesh_name => changes.remove_label(
            contract::LABEL_OSM_MONITORED_BY,
            v,
            "it enrols the namespace",
        ),
        Some(v) => {
            other_mesh = true;
            changes.notes.push(format!(
                "label {}={v} left alone: it belongs to another mesh",
                contract::LABEL_OSM_MONITORED_BY
            ));
        }
        None => {}
    }
    if let Some(v) = annotations.get(contract::ANNOTATION_OSM_INJECTION)
        && !is_osm_opt_out(v)
        && !other_mesh
    {
        changes
            .remove_annotations
            .insert(contract::ANNOTATION_OSM_INJECTION.into());
        changes.notes.push(format!(
            "annotation {}={v} removed",
            contract::ANNOTATION_OSM_INJECTION
        ));
    }
    if changes.is_empty() {
        changes.notes.push(format!(
            "namespace {namespace} has no label that enrols it in weft; nothing to remove"
        ));
    }
    changes
}

// === List ===

/// A row of `weft namespace list`.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NamespaceRow {
    pub namespace: String,
    /// The label (or annotation) that decides, as `key=value`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// The tag-or-revision value the namespace asks for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// The revision it resolves to now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// The tag it resolves through.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// Why it gets no revision: `unresolved`, `opted out`, `other mesh`, `not enrolled`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    pub pods: usize,
    pub injected_pods: usize,
    pub stale_pods: usize,
    /// Injected pods by the revision they run (`<unknown>` if unreadable).
    pub pod_revisions: BTreeMap<String, usize>,
}

impl Row for NamespaceRow {
    const HEADERS: &'static [&'static str] = &["namespace", "label", "revision", "pods", "stale"];

    fn cells(&self) -> Vec<String> {
        let revision = match (&self.revision, &self.problem) {
            (Some(revision), _) => revision.clone(),
            (None, Some(problem)) if problem == "unresolved" => {
                format!("<unresolved: {}>", self.value.as_deref().unwrap_or(""))
            }
            (None, Some(problem)) => format!("<{problem}>"),
            (None, None) => "<none>".into(),
        };
        vec![
            self.namespace.clone(),
            self.label.clone().unwrap_or_else(|| "<none>".into()),
            revision,
            format!("{}/{}", self.injected_pods, self.pods),
            self.stale_pods.to_string(),
        ]
    }
}

/// Namespaces with an enrolment label (or another mesh's), or with injected pods, by name.
pub fn namespace_rows(analysis: &Analysis) -> Vec<NamespaceRow> {
    let mut rows: Vec<NamespaceRow> = analysis
        .namespaces
        .iter()
        .map(|ns| {
            let (revision, tag, problem) = match (&ns.enrolment, &ns.resolution) {
                (_, Some(Resolution::Revision { revision, tag })) => {
                    (Some(revision.clone()), tag.clone(), None)
                }
                (_, Some(_)) => (None, None, Some("unresolved")),
                (Enrolment::OptedOut { .. }, _) => (None, None, Some("opted out")),
                (Enrolment::OtherMesh { .. }, _) => (None, None, Some("other mesh")),
                _ => (None, None, Some("not enrolled")),
            };
            NamespaceRow {
                namespace: ns.name.clone(),
                label: ns.enrolment.label(),
                value: ns.enrolment.value().map(Into::into),
                revision,
                tag,
                problem: problem.map(Into::into),
                pods: 0,
                injected_pods: 0,
                stale_pods: 0,
                pod_revisions: BTreeMap::new(),
            }
        })
        .collect();
    let mut index: BTreeMap<String, usize> = rows
        .iter()
        .enumerate()
        .map(|(i, r)| (r.namespace.clone(), i))
        .collect();
    for pod in &analysis.pods {
        let i = *index.entry(pod.namespace.clone()).or_insert_with(|| {
            rows.push(NamespaceRow {
                namespace: pod.namespace.clone(),
                label: None,
                value: None,
                revision: None,
                tag: None,
                problem: Some("not enrolled".into()),
                pods: 0,
                injected_pods: 0,
                stale_pods: 0,
                pod_revisions: BTreeMap::new(),
            });
            rows.len() - 1
        });
        let row = &mut rows[i];
        row.pods += 1;
        if let Some(injected) = &pod.injected {
            row.injected_pods += 1;
            let revision = injected.revision.as_deref().unwrap_or("<unknown>");
            *row.pod_revisions.entry(revision.into()).or_default() += 1;
        }
        if pod.is_stale() {
            row.stale_pods += 1;
        }
    }
    rows.retain(|r| r.label.is_some() || r.injected_pods > 0);
    rows.sort_by(|a, b| a.namespace.cmp(&b.namespace));
    rows
}

// === The cluster layer ===

async fn add(args: AddArgs) -> Result<(), CliError> {
    let client = inventory::client().await?;
    let (tags, revisions) = inventory::load_catalog_objects(&client, &args.mesh).await?;
    let catalog = Catalog::from_objects(&tags, &revisions);
    let request = AddRequest {
        revision: args.revision,
        osm: args.osm,
        force: args.force,
        mesh: args.mesh,
    };
    let namespace = args.namespace;
    let changed = apply_plan(&client, &namespace, |labels, annotations| {
        plan_namespace_add(&namespace, labels, annotations, &request, &catalog)
    })
    .await?;
    if changed {
        println!(
            "namespace/{namespace} enrolled; restart its workloads to inject them: kubectl \
             rollout restart deploy -n {namespace}"
        );
    }
    Ok(())
}

async fn remove(args: RemoveArgs) -> Result<(), CliError> {
    let client = inventory::client().await?;
    let namespace = args.namespace;
    let changed = apply_plan(&client, &namespace, |labels, annotations| {
        Ok(plan_namespace_remove(
            &namespace,
            labels,
            annotations,
            &args.mesh,
        ))
    })
    .await?;
    if changed {
        println!(
            "namespace/{namespace} removed from the mesh; running pods keep their proxy until \
             restarted: kubectl rollout restart deploy -n {namespace}"
        );
    }
    Ok(())
}

/// Reads the namespace, plans, and writes the plan with the read resourceVersion; on a
/// conflict (someone else changed it meanwhile) plans again from the new state.
async fn apply_plan(
    client: &kube::Client,
    namespace: &str,
    plan: impl Fn(
        &BTreeMap<String, String>,
        &BTreeMap<String, String>,
    ) -> Result<LabelChanges, CliError>,
) -> Result<bool, CliError> {
    const ATTEMPTS: u32 = 3;
    let api: Api<Namespace> = Api::all(client.clone());
    for _ in 0..ATTEMPTS {
        let current = api
            .get_opt(namespace)
            .await
            .map_err(CliError::kube(format!("reading namespace {namespace}")))?
            .ok_or_else(|| CliError::NamespaceNotFound {
                namespace: namespace.into(),
            })?;
        let labels = current.metadata.labels.clone().unwrap_or_default();
        let annotations = current.metadata.annotations.clone().unwrap_or_default();
        let changes = plan(&labels, &annotations)?;
        for warning in &changes.warnings {
            eprintln!("Warning: {warning}");
        }
        for note in &changes.notes {
            println!("{note}");
        }
        if changes.is_empty() {
            return Ok(false);
        }
        let patch = changes.merge_patch(current.metadata.resource_version.as_deref());
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..Default::default()
        };
        match api.patch(namespace, &params, &Patch::Merge(&patch)).await {
            Ok(_) => return Ok(true),
            Err(kube::Error::Api(status)) if status.is_conflict() => continue,
            Err(source) => {
                return Err(CliError::Kube {
                    action: format!("updating namespace {namespace}"),
                    source,
                });
            }
        }
    }
    Err(CliError::Conflict {
        namespace: namespace.into(),
        attempts: ATTEMPTS,
    })
}

async fn list(args: ListArgs) -> Result<(), CliError> {
    let client = inventory::client().await?;
    let inventory = inventory::load(&client, &args.mesh, true).await?;
    let rows = namespace_rows(&inventory.analyse());
    match output::render(&rows, args.output)? {
        Some(text) => print!("{text}"),
        None => eprintln!(
            "No namespace is enrolled in the mesh; enrol one with `weft namespace add <namespace>`."
        ),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::inventory::fixtures::{self, catalog, namespace, pod};

    fn map(p: &[(&str, &str)]) -> BTreeMap<String, String> {
        fixtures::pairs(p).unwrap_or_default()
    }

    fn add(labels: &[(&str, &str)], request: AddRequest) -> Result<LabelChanges, CliError> {
        add_with(labels, &[], request)
    }

    fn add_with(
        labels: &[(&str, &str)],
        annotations: &[(&str, &str)],
        request: AddRequest,
    ) -> Result<LabelChanges, CliError> {
        plan_namespace_add(
            "pets",
            &map(labels),
            &map(annotations),
            &request,
            &catalog(),
        )
    }

    fn revision(value: &str) -> AddRequest {
        AddRequest {
            revision: Some(value.into()),
            ..Default::default()
        }
    }

    fn osm() -> AddRequest {
        AddRequest {
            osm: true,
            ..Default::default()
        }
    }

    fn forced(mut request: AddRequest) -> AddRequest {
        request.force = true;
        request
    }

    fn set(p: &[(&str, &str)]) -> BTreeMap<String, String> {
        map(p)
    }

    fn keys(k: &[&str]) -> BTreeSet<String> {
        k.iter().map(|s| s.to_string()).collect()
    }

    // --- add: the plans ---

    #[test]
    fn add_without_flags_enrols_through_the_default_tag() {
        let changes = add(&[], AddRequest::default()).unwrap();
        assert_eq!(changes.set_labels, set(&[("istio-injection", "enabled")]));
        assert!(changes.remove_labels.is_empty() && changes.set_annotations.is_empty());
        assert_eq!(changes.notes, vec!["label istio-injection=enabled set"]);
        assert!(changes.warnings.is_empty());
    }

    #[test]
    fn add_with_revision_sets_istio_rev_and_drops_istio_injection_which_would_win() {
        let changes = add(&[("istio-injection", "enabled")], revision("prod")).unwrap();
        assert_eq!(changes.set_labels, set(&[("istio.io/rev", "prod")]));
        assert_eq!(changes.remove_labels, keys(&["istio-injection"]));
        assert!(
            changes.notes[0].contains(
                "istio-injection=enabled removed: it takes precedence over istio.io/rev=prod"
            ),
            "{:?}",
            changes.notes
        );
    }

    #[test]
    fn add_with_a_revision_name_works_as_with_a_tag() {
        let changes = add(&[("istio.io/rev", "prod")], revision("canary")).unwrap();
        assert_eq!(changes.set_labels, set(&[("istio.io/rev", "canary")]));
        assert_eq!(
            changes.notes,
            vec!["label istio.io/rev=canary set (it was istio.io/rev=prod)"]
        );
    }

    #[test]
    fn add_without_flags_drops_istio_rev_and_weft_osm_label() {
        let changes = add_with(
            &[
                ("istio.io/rev", "canary"),
                ("openservicemesh.io/monitored-by", "weft"),
            ],
            &[("openservicemesh.io/sidecar-injection", "enabled")],
            AddRequest::default(),
        )
        .unwrap();
        assert_eq!(changes.set_labels, set(&[("istio-injection", "enabled")]));
        assert_eq!(
            changes.remove_labels,
            keys(&["istio.io/rev", "openservicemesh.io/monitored-by"])
        );
        assert_eq!(
            changes.remove_annotations,
            keys(&["openservicemesh.io/sidecar-injection"])
        );
        assert_eq!(changes.notes.len(), 4, "{:?}", changes.notes);
    }

    #[test]
    fn add_osm_sets_label_and_annotation_like_osm_namespace_add() {
        let changes = add(&[("istio.io/rev", "prod")], osm()).unwrap();
        assert_eq!(
            changes.set_labels,
            set(&[("openservicemesh.io/monitored-by", "weft")])
        );
        assert_eq!(
            changes.set_annotations,
            set(&[("openservicemesh.io/sidecar-injection", "enabled")])
        );
        assert_eq!(changes.remove_labels, keys(&["istio.io/rev"]));
        assert!(
            changes.notes[0]
                .contains("it takes precedence over openservicemesh.io/monitored-by=weft")
        );
    }

    #[test]
    fn add_osm_uses_the_mesh_name() {
        let request = AddRequest {
            osm: true,
            mesh: MeshArgs {
                mesh_name: "osm".into(),
                ..Default::default()
            },
            ..Default::default()
        };
        let changes = add(&[], request).unwrap();
        assert_eq!(
            changes.set_labels,
            set(&[("openservicemesh.io/monitored-by", "osm")])
        );
    }

    #[test]
    fn add_removes_opt_outs_and_says_so() {
        let changes = add_with(
            &[("istio-injection", "disabled")],
            &[("openservicemesh.io/sidecar-injection", "disabled")],
            revision("stable"),
        )
        .unwrap();
        assert_eq!(changes.remove_labels, keys(&["istio-injection"]));
        assert_eq!(
            changes.remove_annotations,
            keys(&["openservicemesh.io/sidecar-injection"])
        );
        assert!(
            changes
                .notes
                .iter()
                .all(|n| !n.contains("removed") || n.contains("opt"))
        );

        // Without flags the opt-out label is replaced by the enrolment itself.
        let changes = add(&[("istio-injection", "disabled")], AddRequest::default()).unwrap();
        assert_eq!(changes.set_labels, set(&[("istio-injection", "enabled")]));
        assert!(changes.notes[0].contains("was an opt-out"));

        // With --osm the OSM opt-out annotation is turned on.
        let changes = add_with(
            &[],
            &[("openservicemesh.io/sidecar-injection", "disabled")],
            osm(),
        )
        .unwrap();
        assert_eq!(
            changes.set_annotations,
            set(&[("openservicemesh.io/sidecar-injection", "enabled")])
        );
    }

    #[test]
    fn add_is_a_no_op_when_already_enrolled() {
        let changes = add(&[("istio.io/rev", "prod")], revision("prod")).unwrap();
        assert!(changes.is_empty());
        assert_eq!(
            changes.notes,
            vec!["namespace pets is already enrolled with istio.io/rev=prod"]
        );
        let changes = add_with(
            &[("openservicemesh.io/monitored-by", "weft")],
            &[("openservicemesh.io/sidecar-injection", "enabled")],
            osm(),
        )
        .unwrap();
        assert!(changes.is_empty());
    }

    #[test]
    fn add_leaves_unrelated_labels_alone() {
        let changes = add(
            &[("team", "pets"), ("istio-injection", "something")],
            revision("prod"),
        )
        .unwrap();
        assert!(changes.remove_labels.is_empty());
    }

    // --- add: the refusals ---

    #[test]
    fn add_refuses_a_value_that_resolves_to_nothing_and_lists_what_exists() {
        let err = add(&[], revision("asm-1-27")).unwrap_err();
        assert_eq!(err.metric_label(), "unresolved_value");
        let message = err.to_string();
        for expected in [
            "\"asm-1-27\"",
            "default (revision stable)",
            "prod (revision canary)",
            "known revisions: canary, stable",
            "--force",
        ] {
            assert!(
                message.contains(expected),
                "{expected} missing in: {message}"
            );
        }
        let changes = add(&[], forced(revision("asm-1-27"))).unwrap();
        assert_eq!(changes.set_labels, set(&[("istio.io/rev", "asm-1-27")]));
        assert_eq!(changes.warnings.len(), 1);
    }

    #[test]
    fn add_refuses_a_tag_pointing_at_a_missing_revision() {
        let err = add(&[], revision("broken")).unwrap_err();
        assert_eq!(err.metric_label(), "tag_without_revision");
        assert!(
            err.to_string().contains("weft tag set broken --revision"),
            "{err}"
        );
        assert!(add(&[], forced(revision("broken"))).is_ok());
    }

    #[test]
    fn add_refuses_when_the_default_tag_is_gone() {
        let mut catalog = catalog();
        catalog.tags.remove("default");
        let err = plan_namespace_add(
            "pets",
            &map(&[]),
            &map(&[]),
            &AddRequest::default(),
            &catalog,
        )
        .unwrap_err();
        assert_eq!(err.metric_label(), "unresolved_value");
        assert!(err.to_string().contains("\"default\""));
    }

    #[test]
    fn add_refuses_system_and_weft_namespaces_even_with_force() {
        for ns in ["kube-system", "weft-system", "local-path-storage"] {
            let err = plan_namespace_add(
                ns,
                &map(&[]),
                &map(&[]),
                &forced(AddRequest::default()),
                &catalog(),
            )
            .unwrap_err();
            assert_eq!(err.metric_label(), "never_injected_namespace", "{ns}");
        }
    }

    #[test]
    fn add_refuses_revision_with_osm() {
        let request = AddRequest {
            revision: Some("prod".into()),
            osm: true,
            force: true,
            ..Default::default()
        };
        assert_eq!(
            add(&[], request).unwrap_err().metric_label(),
            "revision_with_osm"
        );
    }

    #[test]
    fn add_refuses_an_invalid_revision_value() {
        let err = add(&[], revision("Prod")).unwrap_err();
        assert_eq!(err.metric_label(), "invalid_name");
    }

    #[test]
    fn add_refuses_a_namespace_of_another_mesh_unless_forced() {
        let other = [("openservicemesh.io/monitored-by", "osm")];
        let err = add(&other, AddRequest::default()).unwrap_err();
        assert_eq!(err.metric_label(), "other_mesh");
        assert!(
            err.to_string().contains("osm namespace remove pets"),
            "{err}"
        );

        // Forced without --osm: enrolled in weft, the other mesh's label stays, with a warning.
        let changes = add(&other, forced(AddRequest::default())).unwrap();
        assert!(changes.remove_labels.is_empty());
        assert_eq!(changes.set_labels, set(&[("istio-injection", "enabled")]));
        assert_eq!(changes.warnings.len(), 1);

        // Forced with --osm: the label is taken over.
        let changes = add(&other, forced(osm())).unwrap();
        assert_eq!(
            changes.set_labels,
            set(&[("openservicemesh.io/monitored-by", "weft")])
        );
        assert!(changes.notes[0].contains("(it was openservicemesh.io/monitored-by=osm)"));
    }

    // --- remove ---

    #[test]
    fn remove_drops_every_enrolment_label_weft_reads() {
        let changes = plan_namespace_remove(
            "pets",
            &map(&[
                ("istio-injection", "enabled"),
                ("istio.io/rev", "prod"),
                ("openservicemesh.io/monitored-by", "weft"),
                ("team", "pets"),
            ]),
            &map(&[("openservicemesh.io/sidecar-injection", "enabled")]),
            &MeshArgs::default(),
        );
        assert_eq!(
            changes.remove_labels,
            keys(&[
                "istio-injection",
                "istio.io/rev",
                "openservicemesh.io/monitored-by"
            ])
        );
        assert_eq!(
            changes.remove_annotations,
            keys(&["openservicemesh.io/sidecar-injection"])
        );
        assert!(changes.set_labels.is_empty() && changes.set_annotations.is_empty());
    }

    #[test]
    fn remove_keeps_opt_outs_and_other_meshes() {
        let changes = plan_namespace_remove(
            "pets",
            &map(&[
                ("istio-injection", "disabled"),
                ("openservicemesh.io/monitored-by", "osm"),
            ]),
            &map(&[("openservicemesh.io/sidecar-injection", "enabled")]),
            &MeshArgs::default(),
        );
        assert!(changes.is_empty());
        assert!(changes.notes[0].contains("belongs to another mesh"));
        assert!(changes.notes[1].contains("nothing to remove"));
    }

    // --- the patch ---

    #[test]
    fn merge_patch_sets_removes_and_guards_the_resource_version() {
        let changes = add_with(
            &[("istio-injection", "enabled")],
            &[("openservicemesh.io/sidecar-injection", "disabled")],
            revision("prod"),
        )
        .unwrap();
        assert_eq!(
            changes.merge_patch(Some("42")),
            json!({"metadata": {
                "labels": {"istio.io/rev": "prod", "istio-injection": null},
                "annotations": {"openservicemesh.io/sidecar-injection": null},
                "resourceVersion": "42",
            }})
        );
        let only_labels = add(&[], AddRequest::default()).unwrap();
        assert_eq!(
            only_labels.merge_patch(None),
            json!({"metadata": {"labels": {"istio-injection": "enabled"}}})
        );
    }

    // --- list ---

    #[test]
    fn list_shows_label_revision_pods_and_stale_pods() {
        let inventory = fixtures::inventory(
            vec![
                namespace("pets", &[("istio.io/rev", "prod")]),
                namespace("shop", &[("istio-injection", "enabled")]),
                namespace("typo", &[("istio.io/rev", "prdo")]),
                namespace("legacy", &[("openservicemesh.io/monitored-by", "osm")]),
                namespace("plain", &[]),
                namespace("left", &[]),
            ],
            vec![
                pod("pets", "a", &[], Some(("stable", Some("prod")))),
                pod("pets", "b", &[], Some(("canary", Some("prod")))),
                pod("pets", "c", &[], None),
                pod("shop", "d", &[], Some(("stable", Some("default")))),
                pod("plain", "e", &[], None),
                pod("left", "f", &[], Some(("stable", None))),
            ],
        );
        let rows = namespace_rows(&inventory.analyse());
        let text = output::render(&rows, output::OutputFormat::Table)
            .unwrap()
            .unwrap();
        assert_eq!(
            text,
            "NAMESPACE   LABEL                                 REVISION             PODS   STALE\n\
             left        <none>                                <not enrolled>       1/1    1\n\
             legacy      openservicemesh.io/monitored-by=osm   <other mesh>         0/0    0\n\
             pets        istio.io/rev=prod                     canary               2/3    1\n\
             shop        istio-injection=enabled               stable               1/1    0\n\
             typo        istio.io/rev=prdo                     <unresolved: prdo>   0/0    0\n"
        );
        let pets = rows.iter().find(|r| r.namespace == "pets").unwrap();
        assert_eq!(pets.tag.as_deref(), Some("prod"));
        assert_eq!(
            pets.pod_revisions,
            BTreeMap::from([("canary".to_string(), 1), ("stable".to_string(), 1)])
        );
        let json = output::render(&rows, output::OutputFormat::Json)
            .unwrap()
            .unwrap();
        let parsed: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(parsed[2]["stalePods"], 1);
        assert_eq!(parsed[4]["problem"], "unresolved");
    }
}
