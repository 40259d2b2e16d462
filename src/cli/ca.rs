//! `weft ca reset`: the explicit way out when the mesh root must change (a corrupted or lost
//! `weft-ca`, a leaked key). It writes a new self-signed root into Secret `weft-ca` with the
//! reset annotation; every operator replica adopts it within seconds, republishes the root
//! ConfigMaps and the webhooks' `caBundle`. Meshed workloads then need a restart.
//! `weft ca issuer` (who signs workload certificates) lives in `super::ca_issuer`, `weft ca
//! rotate` (a new root under traffic) in `super::ca_rotate`.

use std::collections::BTreeSet;

use clap::{Args, Subcommand};
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{ListParams, PostParams};
use kube::{Api, Client};

use super::error::CliError;
use super::inventory::{self, MeshArgs};
use crate::api::MeshConfig;
use crate::contract;
use crate::operator::ca_bundle::weft_ca_secret;
use crate::pki::{self, MeshCa};

#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Replace the mesh root with a new self-signed one (Secret weft-ca). Meshed workloads
    /// must be restarted afterwards.
    Reset(ResetArgs),
    /// Show who signs workload certificates (builtin CA or Vault), its health and the roots the
    /// mesh trusts; `weft ca issuer set vault|builtin` changes it.
    Issuer(super::ca_issuer::IssuerArgs),
    /// Replace the mesh root with a new one under traffic, in phases no request notices
    /// (`weft ca rotate status`, `weft ca rotate --abort`).
    Rotate(super::ca_rotate::RotateArgs),
}

#[derive(Debug, Args)]
pub struct ResetArgs {
    /// Go ahead: without it, reset only says what it would do.
    #[arg(long)]
    pub yes: bool,
    /// Trust domain of the new root (default: the revisions' spec.trustDomain, else
    /// cluster.local).
    #[arg(long)]
    pub trust_domain: Option<String>,
    #[command(flatten)]
    pub mesh: MeshArgs,
}

pub async fn run(command: CaCommand) -> Result<(), CliError> {
    match command {
        CaCommand::Reset(args) => reset(args).await,
        CaCommand::Issuer(args) => super::ca_issuer::run(args).await,
        CaCommand::Rotate(args) => super::ca_rotate::run(args).await,
    }
}

async fn reset(args: ResetArgs) -> Result<(), CliError> {
    let client = inventory::client().await?;
    let ns = args.mesh.weft_namespace.as_str();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let read = |name: &str| format!("reading Secret {ns}/{name}");
    if secrets
        .get_opt(pki::PLUGIN_CA_SECRET)
        .await
        .map_err(CliError::kube(read(pki::PLUGIN_CA_SECRET)))?
        .is_some_and(|s| !crate::operator::rotation::retired(&s))
    {
        return Err(CliError::PluginCaInUse {
            namespace: ns.to_string(),
        });
    }
    let existing = secrets
        .get_opt(pki::WEFT_CA_SECRET)
        .await
        .map_err(CliError::kube(read(pki::WEFT_CA_SECRET)))?;
    let trust_domain = match args.trust_domain {
        Some(td) => td,
        None => revisions_trust_domain(&client, ns).await?,
    };
    let restart = meshed_namespaces(&client).await?;
    println!(
        "This replaces the mesh root in Secret {ns}/{} ({}) with a new self-signed root for \
         trust domain {trust_domain}.",
        pki::WEFT_CA_SECRET,
        if existing.is_some() {
            "it exists now"
        } else {
            "it is missing now"
        },
    );
    if !args.yes {
        return Err(CliError::ConfirmationNeeded);
    }

    let ca = MeshCa::generate_root(&trust_domain, pki::DEFAULT_ROOT_VALIDITY).map_err(|e| {
        CliError::NewRoot {
            message: e.to_string(),
        }
    })?;
    let marker = k8s_openapi::jiff::Timestamp::now().to_string();
    let mut secret = weft_ca_secret(&ca, ns, Some(&marker));
    let write = format!("writing Secret {ns}/{}", pki::WEFT_CA_SECRET);
    match existing {
        Some(old) => {
            // Replace, never delete and create: a running leader would restore the old root
            // from memory in between.
            secret.metadata.resource_version = old.metadata.resource_version;
            secrets
                .replace(pki::WEFT_CA_SECRET, &PostParams::default(), &secret)
                .await
                .map_err(CliError::kube(write))?;
        }
        None => {
            secrets
                .create(&PostParams::default(), &secret)
                .await
                .map_err(CliError::kube(write))?;
        }
    }
    println!(
        "wrote a new root into Secret {ns}/{} (expires {}); the operator adopts it within \
         seconds and republishes ConfigMap {} in every namespace.",
        pki::WEFT_CA_SECRET,
        k8s_openapi::jiff::Timestamp::try_from(ca.root_expiry())
            .map(|t| t.to_string())
            .unwrap_or_else(|_| "in 10 years".into()),
        contract::ROOT_CERT_CONFIGMAP,
    );
    if restart.is_empty() {
        println!("No meshed pods run now; nothing to restart.");
    } else {
        println!("Next, restart the meshed workloads so their proxies trust the new root:");
        for namespace in restart {
            println!("  kubectl rollout restart deployment -n {namespace}");
        }
    }
    Ok(())
}

/// The trust domain the revisions name (they all agree: the validator refuses another one).
pub(super) async fn revisions_trust_domain(client: &Client, ns: &str) -> Result<String, CliError> {
    let revisions: Api<MeshConfig> = Api::namespaced(client.clone(), ns);
    let list = revisions
        .list(&ListParams::default())
        .await
        .map_err(CliError::kube(format!("listing MeshConfigs in {ns}")))?;
    Ok(list
        .items
        .iter()
        .find_map(|mc| mc.spec.certificate.as_ref()?.trust_domain.clone())
        .unwrap_or_else(|| contract::DEFAULT_TRUST_DOMAIN.to_string()))
}

/// Namespaces with injected pods: the ones to restart after a reset.
async fn meshed_namespaces(client: &Client) -> Result<BTreeSet<String>, CliError> {
    let pods: Api<Pod> = Api::all(client.clone());
    let list = pods
        .list_metadata(&ListParams::default().labels(contract::LABEL_REVISION))
        .await
        .map_err(CliError::kube("listing meshed pods"))?;
    Ok(list
        .items
        .into_iter()
        .filter_map(|p| p.metadata.namespace)
        .collect())
}
