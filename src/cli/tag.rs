//! `weft tag set|list|remove`: RevisionTags, the stable names (`prod`, `default`) that
//! namespaces use so a canary upgrade moves a tag instead of relabelling (SPEC §1 story 4, §3).
//! Behaves as `istioctl tag`: moving a tag needs `--overwrite`; refusals say what to change.

use clap::{Args, Subcommand};
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use serde::Serialize;

use super::error::{CliError, check_name};
use super::inventory::{self, Analysis, Catalog, Inventory, MeshArgs};
use super::namespace::FIELD_MANAGER;
use super::output::{self, Row, list_cell};
use crate::api::{RevisionTag, RevisionTagSpec};

#[derive(Debug, Subcommand)]
pub enum TagCommand {
    /// Create a tag pointing at a revision, or move one with --overwrite.
    Set(SetArgs),
    /// Tags, their revisions, and the namespaces and pods that use them.
    List(ListArgs),
    /// Delete a tag nothing uses (or, with --force, one something uses).
    Remove(RemoveArgs),
}

// `--force` and `--overwrite` deliberately have no environment variable: a standing
// WEFT_FORCE would silently defeat every refusal.
#[derive(Debug, Args)]
pub struct SetArgs {
    /// Name of the tag, as namespaces use it in `istio.io/rev=<tag>`.
    pub tag: String,
    /// The revision (MeshConfig) the tag points at.
    #[arg(long)]
    pub revision: String,
    /// Move the tag if it already exists.
    #[arg(long)]
    pub overwrite: bool,
    /// Point the tag at a revision that does not exist (yet).
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub mesh: MeshArgs,
}

pub use super::output::ListArgs;

#[derive(Debug, Args)]
pub struct RemoveArgs {
    /// The tag to delete.
    pub tag: String,
    /// Delete it even if namespaces or pods use it (their new pods are then refused).
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub mesh: MeshArgs,
}

pub async fn run(command: TagCommand) -> Result<(), CliError> {
    match command {
        TagCommand::Set(args) => set(args).await,
        TagCommand::List(args) => list(args).await,
        TagCommand::Remove(args) => remove(args).await,
    }
}

// === Plans ===

/// What `weft tag set` does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TagAction {
    Create,
    Move {
        from: String,
    },
    /// The tag already points there.
    Unchanged,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TagSetPlan {
    pub action: TagAction,
    /// Refusals overridden by --force.
    pub warnings: Vec<String>,
}

/// Decides `weft tag set <tag> --revision <revision>` against the existing tags and revisions.
pub fn plan_tag_set(
    tag: &str,
    revision: &str,
    overwrite: bool,
    force: bool,
    catalog: &Catalog,
    weft_namespace: &str,
) -> Result<TagSetPlan, CliError> {
    check_name("tag", tag)?;
    check_name("revision", revision)?;
    // Never forceable: the API's validating webhook refuses it too, and `istio.io/rev=<name>`
    // could not tell the tag from the revision.
    if catalog.revisions.contains(tag) {
        return Err(CliError::TagNameIsRevision {
            tag: tag.into(),
            weft_namespace: weft_namespace.into(),
        });
    }
    let action = match catalog.tags.get(tag) {
        None => TagAction::Create,
        Some(current) if current == revision => TagAction::Unchanged,
        Some(current) if !overwrite => {
            return Err(CliError::TagExists {
                tag: tag.into(),
                current: current.clone(),
                requested: revision.into(),
            });
        }
        Some(current) => TagAction::Move {
            from: current.clone(),
        },
    };
    let mut warnings = Vec::new();
    if !catalog.revisions.contains(revision) {
        if !force {
            return Err(CliError::UnknownRevision {
                revision: revision.into(),
                weft_namespace: weft_namespace.into(),
                revisions: catalog.describe_revisions(),
            });
        }
        warnings.push(format!(
            "revision {revision:?} does not exist; pods using tag {tag:?} are refused until it \
             does (--force)"
        ));
    }
    Ok(TagSetPlan { action, warnings })
}

/// Who uses a tag: namespaces whose labels ask for it, and pods injected through it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TagUsage {
    pub namespaces: Vec<String>,
    pub pods: usize,
    pub stale_pods: usize,
}

impl TagUsage {
    pub fn is_empty(&self) -> bool {
        self.namespaces.is_empty() && self.pods == 0
    }

    fn describe(&self) -> String {
        let mut parts = Vec::new();
        if !self.namespaces.is_empty() {
            parts.push(format!("namespaces {}", self.namespaces.join(", ")));
        }
        if self.pods > 0 {
            parts.push(format!("{} pods injected through it", self.pods));
        }
        parts.join(" and ")
    }
}

/// Computes the usage of `tag` from the namespaces and pods: a namespace uses it when its
/// enrolment label asks for the tag by name (`istio.io/rev=<tag>`, or for `default` also
/// `istio-injection=enabled` and weft's `monitored-by`), even while the tag resolves to nothing.
pub fn tag_usage(analysis: &Analysis, tag: &str) -> TagUsage {
    let revision = analysis.catalog.tags.get(tag);
    let mut namespaces: Vec<String> = analysis
        .namespaces
        .iter()
        .filter(|ns| ns.enrolment.value() == Some(tag))
        .map(|ns| ns.name.clone())
        .collect();
    namespaces.sort();
    let through_tag: Vec<_> = analysis
        .pods
        .iter()
        .filter_map(|p| p.injected.as_ref())
        .filter(|i| i.tag.as_deref() == Some(tag))
        .collect();
    TagUsage {
        namespaces,
        pods: through_tag.len(),
        stale_pods: through_tag
            .iter()
            .filter(|i| i.revision.as_ref() != revision)
            .count(),
    }
}

/// Decides `weft tag remove <tag>`: the warnings to print, or the refusal.
pub fn plan_tag_remove(
    tag: &str,
    usage: &TagUsage,
    force: bool,
    catalog: &Catalog,
    weft_namespace: &str,
) -> Result<Vec<String>, CliError> {
    if !catalog.tags.contains_key(tag) {
        return Err(CliError::TagNotFound {
            tag: tag.into(),
            weft_namespace: weft_namespace.into(),
            tags: catalog.describe_tags(),
        });
    }
    if usage.is_empty() {
        return Ok(Vec::new());
    }
    if !force {
        return Err(CliError::TagInUse {
            tag: tag.into(),
            users: usage.describe(),
        });
    }
    Ok(vec![format!(
        "tag {tag:?} is in use ({}); new pods that ask for it are refused from now on (--force)",
        usage.describe()
    )])
}

// === List ===

/// A row of `weft tag list`.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TagRow {
    pub tag: String,
    /// The revision the tag points at (`spec.revision`).
    pub revision: String,
    /// Whether that revision exists.
    pub resolved: bool,
    #[serde(flatten)]
    pub usage: TagUsage,
    /// `status` when the revision-tag controller has reported on the current spec, else
    /// `computed` (from the namespaces and pods just listed).
    pub source: &'static str,
}

impl Row for TagRow {
    const HEADERS: &'static [&'static str] = &["tag", "revision", "namespaces", "pods", "stale"];

    fn cells(&self) -> Vec<String> {
        let revision = if self.resolved {
            self.revision.clone()
        } else {
            format!("{} (missing)", self.revision)
        };
        vec![
            self.tag.clone(),
            revision,
            list_cell(&self.usage.namespaces),
            self.usage.pods.to_string(),
            self.usage.stale_pods.to_string(),
        ]
    }
}

/// One row per tag, by name. The controller's status is used when it describes the tag's
/// current revision; a status written before the tag moved would be wrong, so it is computed.
pub fn tag_rows(inventory: &Inventory, analysis: &Analysis) -> Vec<TagRow> {
    let mut rows: Vec<TagRow> = inventory
        .tags
        .iter()
        .filter_map(|tag| {
            let name = tag.metadata.name.clone()?;
            let revision = tag.spec.revision.clone();
            let current_status = tag
                .status
                .as_ref()
                .filter(|s| s.revision.as_deref() == Some(revision.as_str()));
            let (usage, source) = match current_status {
                Some(status) => (
                    TagUsage {
                        namespaces: status.namespaces.clone(),
                        pods: usize::try_from(status.pods).unwrap_or(0),
                        stale_pods: usize::try_from(status.stale_pods).unwrap_or(0),
                    },
                    "status",
                ),
                None => (tag_usage(analysis, &name), "computed"),
            };
            Some(TagRow {
                resolved: analysis.catalog.revisions.contains(&revision),
                tag: name,
                revision,
                usage,
                source,
            })
        })
        .collect();
    rows.sort_by(|a, b| a.tag.cmp(&b.tag));
    rows
}

// === The cluster layer ===

async fn set(args: SetArgs) -> Result<(), CliError> {
    let client = inventory::client().await?;
    let inventory = inventory::load(&client, &args.mesh, false).await?;
    let analysis = inventory.analyse();
    let ns = &args.mesh.weft_namespace;
    let plan = plan_tag_set(
        &args.tag,
        &args.revision,
        args.overwrite,
        args.force,
        &analysis.catalog,
        ns,
    )?;
    for warning in &plan.warnings {
        eprintln!("Warning: {warning}");
    }
    let api: Api<RevisionTag> = Api::namespaced(client, ns);
    let tag = RevisionTag::new(
        &args.tag,
        RevisionTagSpec {
            revision: args.revision.clone(),
        },
    );
    match &plan.action {
        TagAction::Unchanged => {
            println!(
                "revisiontag/{} already points at revision {}",
                args.tag, args.revision
            );
            return Ok(());
        }
        // A create, not an apply: a tag created meanwhile must not be moved without
        // --overwrite.
        TagAction::Create => {
            let params = PostParams {
                field_manager: Some(FIELD_MANAGER.into()),
                ..Default::default()
            };
            api.create(&params, &tag)
                .await
                .map_err(|source| match &source {
                    kube::Error::Api(status) if status.is_already_exists() => CliError::TagExists {
                        tag: args.tag.clone(),
                        current: "another revision (it was created meanwhile)".into(),
                        requested: args.revision.clone(),
                    },
                    _ => CliError::Kube {
                        action: format!("creating RevisionTag {} in {ns}", args.tag),
                        source,
                    },
                })?;
            println!(
                "revisiontag/{} created, pointing at revision {}",
                args.tag, args.revision
            );
        }
        TagAction::Move { from } => {
            let mut applied = serde_json::to_value(&tag).map_err(|e| CliError::Output {
                format: "json",
                message: e.to_string(),
            })?;
            // Server-side apply sends only what weft owns: apiVersion, kind, name, spec.
            if let Some(metadata) = applied.get_mut("metadata").and_then(|m| m.as_object_mut()) {
                metadata.retain(|k, _| k == "name");
            }
            let params = PatchParams::apply(FIELD_MANAGER).force();
            api.patch(&args.tag, &params, &Patch::Apply(&applied))
                .await
                .map_err(CliError::kube(format!(
                    "moving RevisionTag {} in {ns}",
                    args.tag
                )))?;
            println!(
                "revisiontag/{} moved from revision {from} to {}",
                args.tag, args.revision
            );
            let namespaces = tag_usage(&analysis, &args.tag).namespaces;
            if !namespaces.is_empty() {
                println!(
                    "Namespaces using it move on their next restart: {} (kubectl rollout \
                     restart deploy -n <namespace>)",
                    namespaces.join(", ")
                );
            }
        }
    }
    Ok(())
}

async fn list(args: ListArgs) -> Result<(), CliError> {
    let client = inventory::client().await?;
    let inventory = inventory::load(&client, &args.mesh, true).await?;
    let rows = tag_rows(&inventory, &inventory.analyse());
    match output::render(&rows, args.output)? {
        Some(text) => print!("{text}"),
        None => eprintln!(
            "No RevisionTags in {}; create one with `weft tag set <tag> --revision <revision>`.",
            args.mesh.weft_namespace
        ),
    }
    Ok(())
}

async fn remove(args: RemoveArgs) -> Result<(), CliError> {
    let client = inventory::client().await?;
    let inventory = inventory::load(&client, &args.mesh, true).await?;
    let analysis = inventory.analyse();
    let ns = &args.mesh.weft_namespace;
    // The controller's view counts too: it may know namespaces the listing raced past.
    let mut usage = tag_usage(&analysis, &args.tag);
    if let Some(status) = inventory
        .tags
        .iter()
        .find(|t| t.metadata.name.as_deref() == Some(args.tag.as_str()))
        .and_then(|t| t.status.as_ref())
    {
        for namespace in &status.namespaces {
            if !usage.namespaces.contains(namespace) {
                usage.namespaces.push(namespace.clone());
            }
        }
        usage.namespaces.sort();
    }
    let warnings = plan_tag_remove(&args.tag, &usage, args.force, &analysis.catalog, ns)?;
    for warning in &warnings {
        eprintln!("Warning: {warning}");
    }
    let api: Api<RevisionTag> = Api::namespaced(client, ns);
    api.delete(&args.tag, &DeleteParams::default())
        .await
        .map_err(CliError::kube(format!(
            "deleting RevisionTag {} in {ns}",
            args.tag
        )))?;
    println!("revisiontag/{} deleted", args.tag);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::RevisionTagStatus;
    use crate::cli::inventory::fixtures::{self, catalog, namespace, pod};

    fn set(
        tag: &str,
        revision: &str,
        overwrite: bool,
        force: bool,
    ) -> Result<TagSetPlan, CliError> {
        plan_tag_set(tag, revision, overwrite, force, &catalog(), "weft-system")
    }

    // --- set ---

    #[test]
    fn set_creates_a_new_tag() {
        assert_eq!(
            set("qa", "canary", false, false).unwrap(),
            TagSetPlan {
                action: TagAction::Create,
                warnings: vec![]
            }
        );
    }

    #[test]
    fn set_moves_an_existing_tag_only_with_overwrite() {
        let err = set("prod", "stable", false, false).unwrap_err();
        assert_eq!(err.metric_label(), "tag_exists");
        assert!(
            err.to_string()
                .contains("already points at revision \"canary\"; pass --overwrite"),
            "{err}"
        );
        assert_eq!(
            set("prod", "stable", true, false).unwrap().action,
            TagAction::Move {
                from: "canary".into()
            }
        );
        // --force is not --overwrite.
        assert!(set("prod", "stable", false, true).is_err());
    }

    #[test]
    fn set_to_the_same_revision_is_unchanged() {
        assert_eq!(
            set("prod", "canary", false, false).unwrap().action,
            TagAction::Unchanged
        );
    }

    #[test]
    fn set_refuses_a_tag_named_like_a_revision_even_with_force() {
        let err = set("canary", "stable", true, true).unwrap_err();
        assert_eq!(err.metric_label(), "tag_name_is_revision");
        assert!(err.to_string().contains("Pick another tag name"));
    }

    #[test]
    fn set_refuses_an_unknown_revision_unless_forced() {
        let err = set("qa", "asm-1-28", false, false).unwrap_err();
        assert_eq!(err.metric_label(), "unknown_revision");
        assert!(
            err.to_string().contains("known revisions: canary, stable"),
            "{err}"
        );
        let plan = set("qa", "asm-1-28", false, true).unwrap();
        assert_eq!(plan.action, TagAction::Create);
        assert_eq!(plan.warnings.len(), 1);
        // Overwrite checks still come first: moving to an unknown revision needs both flags.
        assert_eq!(
            set("prod", "asm-1-28", false, true)
                .unwrap_err()
                .metric_label(),
            "tag_exists"
        );
        assert!(set("prod", "asm-1-28", true, true).is_ok());
    }

    #[test]
    fn set_refuses_invalid_names() {
        assert_eq!(
            set("Prod", "canary", false, false)
                .unwrap_err()
                .metric_label(),
            "invalid_name"
        );
        assert_eq!(
            set("prod", "", true, false).unwrap_err().metric_label(),
            "invalid_name"
        );
    }

    // --- usage and remove ---

    fn mesh() -> Inventory {
        fixtures::inventory(
            vec![
                namespace("pets", &[("istio.io/rev", "prod")]),
                namespace("shop", &[("istio-injection", "enabled")]),
                namespace("osm", &[("openservicemesh.io/monitored-by", "weft")]),
                namespace("typo", &[("istio.io/rev", "broken")]),
            ],
            vec![
                pod("pets", "a", &[], Some(("stable", Some("prod")))),
                pod("pets", "b", &[], Some(("canary", Some("prod")))),
                pod("shop", "c", &[], Some(("stable", Some("default")))),
                pod("shop", "d", &[], Some(("stable", None))),
            ],
        )
    }

    #[test]
    fn usage_counts_namespaces_by_label_and_pods_by_status() {
        let analysis = mesh().analyse();
        assert_eq!(
            tag_usage(&analysis, "prod"),
            TagUsage {
                namespaces: vec!["pets".into()],
                pods: 2,
                stale_pods: 1
            }
        );
        assert_eq!(
            tag_usage(&analysis, "default"),
            TagUsage {
                namespaces: vec!["osm".into(), "shop".into()],
                pods: 1,
                stale_pods: 0
            }
        );
        // A tag to a missing revision is still used by the namespaces asking for it.
        assert_eq!(tag_usage(&analysis, "broken").namespaces, vec!["typo"]);
    }

    #[test]
    fn remove_refuses_a_tag_in_use_unless_forced() {
        let analysis = mesh().analyse();
        let usage = tag_usage(&analysis, "prod");
        let err =
            plan_tag_remove("prod", &usage, false, &analysis.catalog, "weft-system").unwrap_err();
        assert_eq!(err.metric_label(), "tag_in_use");
        assert!(
            err.to_string()
                .contains("namespaces pets and 2 pods injected through it"),
            "{err}"
        );
        let warnings =
            plan_tag_remove("prod", &usage, true, &analysis.catalog, "weft-system").unwrap();
        assert_eq!(warnings.len(), 1);
    }

    #[test]
    fn remove_of_an_unused_tag_goes_ahead() {
        let analysis = fixtures::inventory(vec![], vec![]).analyse();
        let usage = tag_usage(&analysis, "prod");
        assert_eq!(
            plan_tag_remove("prod", &usage, false, &analysis.catalog, "weft-system").unwrap(),
            Vec::<String>::new()
        );
    }

    #[test]
    fn remove_refuses_an_unknown_tag_and_lists_the_known_ones() {
        let err = plan_tag_remove("qa", &TagUsage::default(), true, &catalog(), "weft-system")
            .unwrap_err();
        assert_eq!(err.metric_label(), "tag_not_found");
        assert!(
            err.to_string().contains("default (revision stable)"),
            "{err}"
        );
    }

    // --- list ---

    #[test]
    fn list_uses_current_status_else_computes() {
        let mut inventory = mesh();
        // default: the controller reported on its current revision → status is shown.
        inventory.tags[0].status = Some(RevisionTagStatus {
            revision: Some("stable".into()),
            namespaces: vec!["shop".into()],
            pods: 7,
            stale_pods: 2,
            ..Default::default()
        });
        // prod: a status from before the tag moved → ignored.
        inventory.tags[1].status = Some(RevisionTagStatus {
            revision: Some("stable".into()),
            pods: 99,
            ..Default::default()
        });
        let rows = tag_rows(&inventory, &inventory.analyse());
        let text = output::render(&rows, output::OutputFormat::Table)
            .unwrap()
            .unwrap();
        assert_eq!(
            text,
            "TAG       REVISION         NAMESPACES   PODS   STALE\n\
             broken    gone (missing)   typo         0      0\n\
             default   stable           shop         7      2\n\
             prod      canary           pets         2      1\n"
        );
        assert_eq!(rows[1].source, "status");
        assert_eq!(rows[2].source, "computed");
        let json = output::render(&rows, output::OutputFormat::Json)
            .unwrap()
            .unwrap();
        let parsed: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(parsed[2]["stalePods"], 1);
        assert_eq!(parsed[2]["namespaces"][0], "pets");
    }
}
