//! The `weft` command line: the operator (`weft operator`) and the user CLI that talks to a
//! cluster through the kubeconfig, like kubectl. Each subcommand lives in its own module.

pub mod authz;
pub mod ca;
pub mod ca_issuer;
pub mod ca_rotate;
pub mod check;
pub mod check_authz;
pub mod check_egress;
pub mod check_issuer;
pub mod check_traffic;
pub mod describe;
pub mod error;
pub mod gateway;
pub mod inventory;
pub mod namespace;
pub mod output;
pub mod proxy_config;
pub mod proxy_status;
pub mod revision;
pub mod tag;
pub mod uninstall;

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

/// weft: a service mesh for Kubernetes.
#[derive(Debug, Parser)]
#[command(name = "weft", version, about, propagate_version = true)]
pub struct Cli {
    /// Log lines as text, or as JSON objects (for log collectors; the operator's Deployment
    /// uses json).
    #[arg(
        long,
        global = true,
        value_enum,
        default_value_t,
        env = "WEFT_LOG_FORMAT"
    )]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the control plane (in the weft-operator Deployment).
    Operator(Box<crate::operator::run::OperatorArgs>),
    /// Print the CustomResourceDefinitions of weft's API as YAML, or write them as the files
    /// that `crds/` holds.
    Crds {
        /// Write one file per CRD plus a kustomization.yaml into this directory.
        #[arg(long)]
        out_dir: Option<PathBuf>,
    },
    /// Enrol namespaces in the mesh, take them out, list them.
    #[command(subcommand)]
    Namespace(namespace::NamespaceCommand),
    /// Revision tags: stable names (`default`, `prod`) that point at a revision.
    #[command(subcommand)]
    Tag(tag::TagCommand),
    /// Revisions (MeshConfigs) and what uses them.
    #[command(subcommand)]
    Revision(revision::RevisionCommand),
    /// Each meshed pod's config (SYNCED/STALE), operator replica and certificate expiry.
    ProxyStatus(proxy_status::ProxyStatusArgs),
    /// Authorization: `weft authz explain` says which policy and rule decide a request.
    #[command(subcommand)]
    Authz(authz::AuthzCommand),
    /// Show how weft sees an object.
    #[command(subcommand)]
    Describe(DescribeCommand),
    /// A pod proxy's outbound tables: `routes`, `clusters` (Service ports), `endpoints`.
    #[command(subcommand)]
    ProxyConfig(proxy_config::ProxyConfigCommand),
    /// Check the installation: API server, CRDs, operator, leader, injector, CA; exits
    /// non-zero when a check fails.
    Check(check::CheckArgs),
    /// The mesh CA: `weft ca reset` replaces the root (the explicit way out of a corrupted or
    /// lost CA Secret).
    #[command(subcommand)]
    Ca(ca::CaCommand),
    /// Ingress gateways: `weft gateway install` creates an Istio-style gateway Deployment and
    /// LoadBalancer Service.
    #[command(subcommand)]
    Gateway(gateway::GatewayCommand),
    /// Remove what `kubectl delete -k config/default` leaves: the root ConfigMaps in every
    /// namespace and, with --ca, the CA Secret.
    Uninstall(uninstall::UninstallArgs),
}

#[derive(Debug, Subcommand)]
pub enum DescribeCommand {
    /// A pod's revision, identity, effective mTLS mode per port with the policy behind it, the
    /// routes, subsets and client policies of the Services it calls, the authorization
    /// policies it enforces and DestinationRule/PeerAuthentication conflicts (503 UC).
    Pod(proxy_status::DescribePodArgs),
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Operator(args) => crate::operator::run::run(*args).await,
        Command::Namespace(command) => Ok(namespace::run(command).await?),
        Command::Tag(command) => Ok(tag::run(command).await?),
        Command::Revision(command) => Ok(revision::run(command).await?),
        Command::ProxyStatus(args) => Ok(proxy_status::proxy_status(args).await?),
        Command::Describe(DescribeCommand::Pod(args)) => Ok(describe::describe_pod(args).await?),
        Command::Authz(command) => Ok(authz::run(command).await?),
        Command::ProxyConfig(command) => Ok(proxy_config::run(command).await?),
        Command::Check(args) => Ok(check::run(args).await?),
        Command::Ca(command) => Ok(ca::run(command).await?),
        Command::Uninstall(args) => Ok(uninstall::run(args).await?),
        Command::Gateway(command) => Ok(gateway::run(command).await?),
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
