//! `weft revision list`: each revision (MeshConfig) with its proxy image and mTLS mode, the
//! tags pointing at it and what runs it — what a user checks before deleting an old revision
//! after a canary upgrade (SPEC §1 story 4).

use std::collections::BTreeMap;

use clap::Subcommand;
use serde::Serialize;

use super::error::CliError;
use super::inventory::{self, Analysis, Inventory, Resolution};
use super::output::{self, Row, list_cell};
use crate::api::MtlsMode;

#[derive(Debug, Subcommand)]
pub enum RevisionCommand {
    /// Revisions with their image, mTLS mode, tags, namespaces and injected pods.
    List(ListArgs),
}

pub use super::output::ListArgs;

pub async fn run(command: RevisionCommand) -> Result<(), CliError> {
    match command {
        RevisionCommand::List(args) => list(args).await,
    }
}

/// A row of `weft revision list`.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RevisionRow {
    pub revision: String,
    /// `spec.proxy.image`; absent means the operator's `--proxy-image`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// `spec.mtls.mode`, PERMISSIVE when the spec leaves it out.
    pub mtls: MtlsMode,
    /// Tags pointing at this revision.
    pub tags: Vec<String>,
    /// Namespaces whose labels resolve to this revision now.
    pub namespaces: Vec<String>,
    /// Pods running a proxy of this revision.
    pub pods: usize,
}

impl Row for RevisionRow {
    const HEADERS: &'static [&'static str] =
        &["revision", "image", "mtls", "tags", "namespaces", "pods"];

    fn cells(&self) -> Vec<String> {
        let mtls = match self.mtls {
            MtlsMode::Permissive => "PERMISSIVE",
            MtlsMode::Strict => "STRICT",
            MtlsMode::Disable => "DISABLE",
        };
        vec![
            self.revision.clone(),
            self.image
                .clone()
                .unwrap_or_else(|| "<operator default>".into()),
            mtls.into(),
            list_cell(&self.tags),
            list_cell(&self.namespaces),
            self.pods.to_string(),
        ]
    }
}

/// One row per revision, by name; counts are computed from the namespaces and pods listed.
pub fn revision_rows(inventory: &Inventory, analysis: &Analysis) -> Vec<RevisionRow> {
    let mut namespaces: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for ns in &analysis.namespaces {
        if let Some(Resolution::Revision { revision, .. }) = &ns.resolution {
            namespaces
                .entry(revision.as_str())
                .or_default()
                .push(ns.name.clone());
        }
    }
    let mut pods: BTreeMap<&str, usize> = BTreeMap::new();
    for pod in &analysis.pods {
        if let Some(revision) = pod.injected.as_ref().and_then(|i| i.revision.as_deref()) {
            *pods.entry(revision).or_default() += 1;
        }
    }
    for names in namespaces.values_mut() {
        names.sort();
    }
    let mut rows: Vec<RevisionRow> = inventory
        .revisions
        .iter()
        .filter_map(|mc| {
            let name = mc.metadata.name.clone()?;
            let spec = &mc.spec;
            Some(RevisionRow {
                image: spec.proxy.as_ref().and_then(|p| p.image.clone()),
                mtls: spec
                    .mtls
                    .as_ref()
                    .and_then(|m| m.mode)
                    .unwrap_or(MtlsMode::Permissive),
                tags: analysis
                    .catalog
                    .tags
                    .iter()
                    .filter(|(_, revision)| **revision == name)
                    .map(|(tag, _)| tag.clone())
                    .collect(),
                namespaces: namespaces.remove(name.as_str()).unwrap_or_default(),
                pods: pods.get(name.as_str()).copied().unwrap_or(0),
                revision: name,
            })
        })
        .collect();
    rows.sort_by(|a, b| a.revision.cmp(&b.revision));
    rows
}

async fn list(args: ListArgs) -> Result<(), CliError> {
    let client = inventory::client().await?;
    let inventory = inventory::load(&client, &args.mesh, true).await?;
    let rows = revision_rows(&inventory, &inventory.analyse());
    match output::render(&rows, args.output)? {
        Some(text) => print!("{text}"),
        None => eprintln!(
            "No revisions (MeshConfigs) in {}; the operator creates the first one when it \
             starts.",
            args.mesh.weft_namespace
        ),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::MeshConfigSpec;
    use crate::api::meshconfig::{MtlsSettings, ProxySettings};
    use crate::cli::inventory::fixtures::{self, namespace, pod, revision};

    #[test]
    fn list_shows_image_mtls_tags_namespaces_and_pods() {
        let mut inventory = fixtures::inventory(
            vec![
                namespace("pets", &[("istio.io/rev", "prod")]),
                namespace("shop", &[("istio-injection", "enabled")]),
                namespace("pinned", &[("istio.io/rev", "stable")]),
            ],
            vec![
                pod("pets", "a", &[], Some(("stable", Some("prod")))),
                pod("pets", "b", &[], Some(("canary", Some("prod")))),
                pod("shop", "c", &[], Some(("stable", Some("default")))),
                pod("shop", "d", &[], None),
            ],
        );
        inventory.revisions[1] = revision(
            "canary",
            MeshConfigSpec {
                proxy: Some(ProxySettings {
                    image: Some("ghcr.io/weft-mesh/weft:0.2.0".into()),
                    ..Default::default()
                }),
                mtls: Some(MtlsSettings {
                    mode: Some(MtlsMode::Strict),
                }),
                ..Default::default()
            },
        );
        inventory
            .revisions
            .push(revision("old", MeshConfigSpec::default()));
        let rows = revision_rows(&inventory, &inventory.analyse());
        let text = output::render(&rows, output::OutputFormat::Table)
            .unwrap()
            .unwrap();
        assert_eq!(
            text,
            "REVISION   IMAGE                          MTLS         TAGS      NAMESPACES    PODS\n\
             canary     ghcr.io/weft-mesh/weft:0.2.0   STRICT       prod      pets          1\n\
             old        <operator default>             PERMISSIVE   <none>    <none>        0\n\
             stable     <operator default>             PERMISSIVE   default   pinned,shop   2\n"
        );
        let json = output::render(&rows, output::OutputFormat::Json)
            .unwrap()
            .unwrap();
        let parsed: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(parsed[0]["mtls"], "STRICT");
        assert_eq!(
            parsed[2]["namespaces"],
            serde_json::json!(["pinned", "shop"])
        );
    }
}
