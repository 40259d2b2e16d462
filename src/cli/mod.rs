//! The `weft` command line: the operator (`weft operator`) and the user CLI that talks to a
//! cluster through the kubeconfig, like kubectl. Each subcommand lives in its own module.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

/// weft: a service mesh for Kubernetes.
#[derive(Debug, Parser)]
#[command(name = "weft", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the control plane (in the weft-operator Deployment).
    Operator(crate::operator::run::OperatorArgs),
    /// Print the CustomResourceDefinitions of weft's API as YAML, or write them as the files
    /// that `crds/` holds.
    Crds {
        /// Write one file per CRD plus a kustomization.yaml into this directory.
        #[arg(long)]
        out_dir: Option<PathBuf>,
    },
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Operator(args) => crate::operator::run::run(args).await,
        Command::Crds { out_dir: None } => {
            print!("{}", crate::api::crds_yaml()?);
            Ok(())
        }
        Command::Crds { out_dir: Some(dir) } => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            for (name, contents) in crate::api::crd_files()? {
                let path = dir.join(name);
                std::fs::write(&path, contents)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            Ok(())
        }
    }
}
