//! `weft uninstall`: removes what `kubectl delete -k config/default` does not know about, the
//! root ConfigMaps the operator published into every namespace and, with `--ca`, the CA
//! Secret. It refuses while the operator runs, which would publish the ConfigMaps again at once.

use clap::Args;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{DeleteParams, ListParams};
use kube::{Api, Client};

use super::check::OPERATOR_DEPLOYMENT;
use super::error::CliError;
use super::inventory::{self, MeshArgs};
use crate::contract;
use crate::pki;

#[derive(Debug, Args)]
pub struct UninstallArgs {
    /// Also delete Secret weft-ca, the mesh root and its key: a later install starts a new
    /// root. A plug-in CA (Secret cacerts) is yours and is never deleted.
    #[arg(long)]
    pub ca: bool,
    /// Remove even while the operator's Deployment exists (it publishes the ConfigMaps again).
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub mesh: MeshArgs,
}

/// One object `weft uninstall` deletes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Removal {
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for Removal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}/{} in namespace {}",
            self.kind, self.name, self.namespace
        )
    }
}

/// Whether to go ahead: not while the operator is installed, unless forced.
pub fn may_uninstall(
    operator_installed: bool,
    force: bool,
    namespace: &str,
) -> Result<(), CliError> {
    if operator_installed && !force {
        return Err(CliError::OperatorStillInstalled {
            namespace: namespace.to_string(),
        });
    }
    Ok(())
}

/// The objects to delete, sorted by namespace: every root ConfigMap, and the CA Secret when
/// asked for and present.
pub fn removals(
    root_configmaps: &[ObjectMeta],
    ca_secret_exists: bool,
    with_ca: bool,
    weft_namespace: &str,
) -> Vec<Removal> {
    let mut out: Vec<Removal> = root_configmaps
        .iter()
        .filter(|cm| cm.name.as_deref() == Some(contract::ROOT_CERT_CONFIGMAP))
        .filter_map(|cm| {
            Some(Removal {
                kind: "configmap",
                namespace: cm.namespace.clone()?,
                name: contract::ROOT_CERT_CONFIGMAP.to_string(),
            })
        })
        .collect();
    out.sort_by(|a, b| a.namespace.cmp(&b.namespace));
    if with_ca && ca_secret_exists {
        out.push(Removal {
            kind: "secret",
            namespace: weft_namespace.to_string(),
            name: pki::WEFT_CA_SECRET.to_string(),
        });
    }
    out
}

pub async fn run(args: UninstallArgs) -> Result<(), CliError> {
    let client = inventory::client().await?;
    let ns = args.mesh.weft_namespace.as_str();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let installed = deployments
        .get_opt(OPERATOR_DEPLOYMENT)
        .await
        .map_err(CliError::kube(format!(
            "reading Deployment {ns}/{OPERATOR_DEPLOYMENT}"
        )))?
        .is_some();
    may_uninstall(installed, args.force, ns)?;

    let configmaps: Api<ConfigMap> = Api::all(client.clone());
    let roots = configmaps
        .list_metadata(
            &ListParams::default()
                .fields(&format!("metadata.name={}", contract::ROOT_CERT_CONFIGMAP)),
        )
        .await
        .map_err(CliError::kube("listing the root ConfigMaps"))?
        .items
        .into_iter()
        .map(|cm| cm.metadata)
        .collect::<Vec<_>>();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let ca_secret_exists = secrets
        .get_metadata_opt(pki::WEFT_CA_SECRET)
        .await
        .map_err(CliError::kube(format!(
            "reading Secret {ns}/{}",
            pki::WEFT_CA_SECRET
        )))?
        .is_some();

    let plan = removals(&roots, ca_secret_exists, args.ca, ns);
    if plan.is_empty() {
        println!("Nothing to remove.");
    }
    for removal in &plan {
        if delete(&client, removal).await? {
            println!("deleted {removal}");
        }
    }
    if ca_secret_exists && !args.ca {
        eprintln!(
            "kept Secret {ns}/{} (the mesh root and its key); pass --ca to delete it too",
            pki::WEFT_CA_SECRET
        );
    }
    Ok(())
}

/// Deletes one object; false when it was already gone.
async fn delete(client: &Client, removal: &Removal) -> Result<bool, CliError> {
    let action = format!("deleting {removal}");
    let result = match removal.kind {
        "secret" => Api::<Secret>::namespaced(client.clone(), &removal.namespace)
            .delete(&removal.name, &DeleteParams::default())
            .await
            .map(|_| ()),
        _ => Api::<ConfigMap>::namespaced(client.clone(), &removal.namespace)
            .delete(&removal.name, &DeleteParams::default())
            .await
            .map(|_| ()),
    };
    match result {
        Ok(()) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(false),
        Err(source) => Err(CliError::Kube { action, source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn configmap(namespace: &str, name: &str) -> ObjectMeta {
        ObjectMeta {
            namespace: Some(namespace.into()),
            name: Some(name.into()),
            ..Default::default()
        }
    }

    #[test]
    fn refuses_while_the_operator_would_recreate_the_configmaps() {
        let err = may_uninstall(true, false, "weft-system").unwrap_err();
        assert_eq!(err.metric_label(), "operator_still_installed");
        assert!(
            err.to_string().contains("kubectl delete -k config/default"),
            "{err}"
        );
        assert!(err.to_string().contains("--force"), "{err}");
        assert!(may_uninstall(true, true, "weft-system").is_ok());
        assert!(may_uninstall(false, false, "weft-system").is_ok());
    }

    #[test]
    fn removes_every_root_configmap_and_the_ca_secret_only_on_request() {
        let found = [
            configmap("shop", "weft-ca-root-cert"),
            configmap("pets", "weft-ca-root-cert"),
            configmap("pets", "istio-ca-root-cert"),
        ];
        let plan = removals(&found, true, false, "weft-system");
        let shown: Vec<String> = plan.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "configmap/weft-ca-root-cert in namespace pets",
                "configmap/weft-ca-root-cert in namespace shop"
            ]
        );
        let with_ca = removals(&found, true, true, "weft-system");
        assert_eq!(
            with_ca.last().map(ToString::to_string).as_deref(),
            Some("secret/weft-ca in namespace weft-system")
        );
        assert_eq!(removals(&found, false, true, "weft-system").len(), 2);
        assert!(removals(&[], false, true, "weft-system").is_empty());
    }
}
