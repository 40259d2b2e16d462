//! `weft ca issuer` (issue 24): shows who signs workload certificates, its health as the
//! operator last saw it, and the roots the mesh trusts; `weft ca issuer set vault|cert-manager|builtin`
//! switches issuer: when the roots change (another kind of issuer, another Vault or ca-bundle
//! Secret) as a root rotation under traffic (`super::ca_rotate::begin`), else by writing
//! ConfigMap `weft-ca-issuer`, which every operator replica follows without a restart.

use std::collections::BTreeMap;

use clap::{Args, Subcommand};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};

use super::error::CliError;
use super::inventory::{self, MeshArgs};
use crate::contract;
use crate::operator::issuer::{HEALTH_ANNOTATION, IssuerHealth};
use crate::pki::{
    self, CA_BUNDLE_KEY, CERT_MANAGER_GROUP, CertManagerConfig, DEFAULT_VAULT_AUTH_MOUNT,
    DEFAULT_VAULT_MOUNT, ISSUER_CONFIGMAP, IssuerConfig, IssuerRefKind, VaultAuth, VaultConfig,
};

#[derive(Debug, Args)]
pub struct IssuerArgs {
    #[command(subcommand)]
    pub command: Option<IssuerCommand>,
    #[command(flatten)]
    pub mesh: MeshArgs,
}

#[derive(Debug, Subcommand)]
pub enum IssuerCommand {
    /// Choose who signs workload certificates (ConfigMap weft-ca-issuer).
    #[command(subcommand)]
    Set(SetIssuer),
}

#[derive(Debug, Subcommand)]
pub enum SetIssuer {
    /// HashiCorp Vault's PKI secrets engine signs (`POST /v1/<mount>/sign/<role>`); the CA key
    /// stays in Vault.
    Vault(VaultArgs),
    /// cert-manager signs: a CertificateRequest per CSR in the weft namespace, for the named
    /// Issuer or ClusterIssuer; the mesh root comes from a Secret's `ca.crt` (OSM's
    /// osm-ca-bundle).
    CertManager(CertManagerArgs),
    /// weft's own CA signs (Secret weft-ca, or Istio's cacerts).
    Builtin(BuiltinArgs),
}

#[derive(Debug, Args)]
pub struct VaultArgs {
    /// Vault's address, e.g. https://vault.vault.svc:8200 (no path).
    #[arg(long)]
    pub address: String,
    /// The PKI role to sign with (it needs key_type=any or ec, allowed_uri_sans covering
    /// spiffe://<trust domain>/*, and a common name rule allowing <sa>.<ns>.svc).
    #[arg(long)]
    pub role: String,
    /// Mount path of the PKI secrets engine.
    #[arg(long, default_value = DEFAULT_VAULT_MOUNT)]
    pub mount: String,
    /// Secret in the weft namespace whose key `token` holds the Vault token (re-read when it
    /// changes).
    #[arg(
        long,
        conflicts_with = "auth_role",
        required_unless_present = "auth_role"
    )]
    pub token_secret: Option<String>,
    /// Log in with Vault's Kubernetes auth method as this role, with the operator's
    /// ServiceAccount token.
    #[arg(long)]
    pub auth_role: Option<String>,
    /// Mount path of Vault's Kubernetes auth method.
    #[arg(long)]
    pub auth_mount: Option<String>,
    /// Secret in the weft namespace whose key `ca.crt` verifies Vault's HTTPS certificate.
    #[arg(long)]
    pub ca_cert_secret: Option<String>,
    /// Go ahead: without it, the command only says what it would do.
    #[arg(long)]
    pub yes: bool,
    #[command(flatten)]
    pub switch: SwitchArgs,
    #[command(flatten)]
    pub mesh: MeshArgs,
}

#[derive(Debug, Args)]
pub struct CertManagerArgs {
    /// Name of the Issuer (in the weft namespace) or ClusterIssuer that signs.
    #[arg(long)]
    pub issuer: String,
    /// Issuer or ClusterIssuer.
    #[arg(long, default_value = "Issuer", value_parser = ["Issuer", "ClusterIssuer"])]
    pub kind: String,
    /// The issuer's API group: cert-manager.io for cert-manager's own (CA, Vault, ...), an
    /// external issuer's otherwise.
    #[arg(long, default_value = CERT_MANAGER_GROUP)]
    pub group: String,
    /// Secret in the weft namespace whose key `ca.crt` holds the root the issuer's
    /// certificates chain to (re-read when it changes).
    #[arg(long)]
    pub ca_bundle_secret: String,
    /// Go ahead: without it, the command only says what it would do.
    #[arg(long)]
    pub yes: bool,
    #[command(flatten)]
    pub switch: SwitchArgs,
    #[command(flatten)]
    pub mesh: MeshArgs,
}

impl CertManagerArgs {
    /// The configuration these flags state, validated as the operator will read it.
    pub fn config(&self) -> Result<IssuerConfig, CliError> {
        let config = IssuerConfig::CertManager(CertManagerConfig {
            issuer_name: self.issuer.clone(),
            issuer_kind: IssuerRefKind::parse(&self.kind).unwrap_or_default(),
            issuer_group: self.group.clone(),
            ca_bundle_secret: self.ca_bundle_secret.clone(),
        });
        IssuerConfig::from_data(&config.to_data()).map_err(|e| CliError::BadRequest {
            message: e.to_string(),
        })
    }
}

#[derive(Debug, Args)]
pub struct BuiltinArgs {
    /// Go ahead: without it, the command only says what it would do.
    #[arg(long)]
    pub yes: bool,
    #[command(flatten)]
    pub switch: SwitchArgs,
    #[command(flatten)]
    pub mesh: MeshArgs,
}

/// How a switch that changes the mesh's roots goes.
#[derive(Debug, Args)]
pub struct SwitchArgs {
    /// Write ConfigMap weft-ca-issuer at once instead of rotating: the new issuer's roots join
    /// every trust bundle beside the old ones, which stay; certificates move at their normal
    /// renewal. For a mesh without workloads yet, or an install-time choice.
    #[arg(long)]
    pub without_rotation: bool,
    /// In the rotation, proxies holding a certificate from the old issuer renew within this
    /// time, each at a random moment (Go duration: 30s, 5m).
    #[arg(long, default_value = "30s", value_parser = super::ca_rotate::parse_spread)]
    pub renew_within: std::time::Duration,
}

impl VaultArgs {
    /// The configuration these flags state, validated as the operator will read it.
    pub fn config(&self) -> Result<IssuerConfig, CliError> {
        let auth = match (&self.token_secret, &self.auth_role) {
            (Some(_), None) if self.auth_mount.is_some() => {
                return Err(CliError::BadRequest {
                    message: "--auth-mount goes with --auth-role, not --token-secret".into(),
                });
            }
            (Some(secret), None) => VaultAuth::TokenSecret(secret.clone()),
            (None, Some(role)) => VaultAuth::Kubernetes {
                role: role.clone(),
                mount: self
                    .auth_mount
                    .clone()
                    .unwrap_or_else(|| DEFAULT_VAULT_AUTH_MOUNT.into()),
            },
            _ => {
                return Err(CliError::BadRequest {
                    message: "give exactly one of --token-secret and --auth-role".into(),
                });
            }
        };
        let config = IssuerConfig::Vault(VaultConfig {
            address: self.address.clone(),
            mount: self.mount.clone(),
            role: self.role.clone(),
            auth,
            ca_cert_secret: self.ca_cert_secret.clone(),
        });
        // The operator reads it back through the same parser: refuse here what it would refuse.
        IssuerConfig::from_data(&config.to_data()).map_err(|e| CliError::BadRequest {
            message: e.to_string(),
        })
    }
}

pub async fn run(args: IssuerArgs) -> Result<(), CliError> {
    match args.command {
        None => show(&args.mesh).await,
        Some(IssuerCommand::Set(SetIssuer::Vault(vault))) => {
            let config = vault.config()?;
            set(&vault.mesh, config, vault.yes, &vault.switch).await
        }
        Some(IssuerCommand::Set(SetIssuer::CertManager(cm))) => {
            let config = cm.config()?;
            set(&cm.mesh, config, cm.yes, &cm.switch).await
        }
        Some(IssuerCommand::Set(SetIssuer::Builtin(builtin))) => {
            set(
                &builtin.mesh,
                IssuerConfig::Builtin,
                builtin.yes,
                &builtin.switch,
            )
            .await
        }
    }
}

async fn show(mesh: &MeshArgs) -> Result<(), CliError> {
    let client = inventory::client().await?;
    let ns = mesh.weft_namespace.as_str();
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let cm = configmaps
        .get_opt(ISSUER_CONFIGMAP)
        .await
        .map_err(CliError::kube(format!(
            "reading ConfigMap {ns}/{ISSUER_CONFIGMAP}"
        )))?;
    let roots = configmaps
        .get_opt(contract::ROOT_CERT_CONFIGMAP)
        .await
        .map_err(CliError::kube(format!(
            "reading ConfigMap {ns}/{}",
            contract::ROOT_CERT_CONFIGMAP
        )))?
        .and_then(|cm| cm.data?.get(contract::ROOT_CERT_KEY).cloned());
    let (configured, health) = match &cm {
        None => (
            format!("builtin (no ConfigMap {ns}/{ISSUER_CONFIGMAP})"),
            None,
        ),
        Some(cm) => {
            let configured = match IssuerConfig::from_data(&cm.data.clone().unwrap_or_default()) {
                Ok(config) => config.describe(),
                Err(e) => format!("unusable: {e}"),
            };
            let health = cm
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(HEALTH_ANNOTATION))
                .and_then(|json| serde_json::from_str::<IssuerHealth>(json).ok());
            (configured, health)
        }
    };
    print!("{}", render(&configured, health.as_ref(), roots.as_deref()));
    Ok(())
}

/// The text of `weft ca issuer`. Pure, so its lines are a unit test.
pub fn render(configured: &str, health: Option<&IssuerHealth>, roots_pem: Option<&str>) -> String {
    let mut out = format!("Issuer:   {configured}\n");
    match health {
        Some(h) => {
            out.push_str(&format!("Signing:  {} (configured: {})\n", h.active, h.configured));
            let state = if h.healthy { "healthy" } else { "UNHEALTHY" };
            out.push_str(&format!("Health:   {state} since {}: {}\n", h.since, h.message));
        }
        None => out.push_str(
            "Health:   not recorded (the builtin CA needs none; with a configured issuer, the operator's leader records it within seconds)\n",
        ),
    }
    match roots_pem {
        None => out.push_str(&format!(
            "Trusted roots: none published yet (ConfigMap {})\n",
            contract::ROOT_CERT_CONFIGMAP
        )),
        Some(pem) => {
            let ders = pki::certificates_from_pem(pem).unwrap_or_default();
            out.push_str(&format!(
                "Trusted roots ({} in ConfigMap {}):\n",
                ders.len(),
                contract::ROOT_CERT_CONFIGMAP
            ));
            for der in ders {
                out.push_str(&format!("  {}\n", describe_root(&der)));
            }
        }
    }
    out
}

fn describe_root(der: &[u8]) -> String {
    let fingerprint = ring::digest::digest(&ring::digest::SHA256, der);
    let short: String = fingerprint.as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    match x509_parser::parse_x509_certificate(der) {
        Ok((_, cert)) => format!(
            "{} (expires {}, sha256 {short}…)",
            cert.subject(),
            cert.validity().not_after
        ),
        Err(_) => format!("an unparseable certificate (sha256 {short}…)"),
    }
}

async fn set(
    mesh: &MeshArgs,
    config: IssuerConfig,
    yes: bool,
    switch: &SwitchArgs,
) -> Result<(), CliError> {
    let client = inventory::client().await?;
    let ns = mesh.weft_namespace.as_str();
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let now = match configmaps
        .get_opt(ISSUER_CONFIGMAP)
        .await
        .map_err(CliError::kube(format!(
            "reading ConfigMap {ns}/{ISSUER_CONFIGMAP}"
        )))? {
        None => Some(IssuerConfig::Builtin),
        // An unusable ConfigMap: nothing is known to rotate from; writing it repairs it.
        Some(cm) => IssuerConfig::from_data(&cm.data.unwrap_or_default()).ok(),
    };
    // Every root change goes through a rotation; a change that keeps the roots is a write.
    if !switch.without_rotation && now.as_ref().is_some_and(|now| !now.same_roots_as(&config)) {
        match &config {
            IssuerConfig::CertManager(cm) => {
                warn_missing(&client, ns, &cm.ca_bundle_secret, CA_BUNDLE_KEY).await?
            }
            IssuerConfig::Vault(vault) => warn_missing_secrets(&client, ns, vault).await?,
            IssuerConfig::Builtin => {}
        }
        return super::ca_rotate::begin(
            &client,
            mesh,
            Some(config),
            None,
            switch.renew_within,
            None,
            yes,
        )
        .await;
    }
    println!(
        "This sets ConfigMap {ns}/{ISSUER_CONFIGMAP} to: {}",
        config.describe()
    );
    match &config {
        IssuerConfig::Builtin => println!(
            "The operator then signs with the builtin CA again; an external issuer's root stays out of new trust bundles."
        ),
        IssuerConfig::CertManager(cm) => {
            warn_missing(&client, ns, &cm.ca_bundle_secret, CA_BUNDLE_KEY).await?;
            println!(
                "Every operator replica switches once a dry signing through {} passes (until then whatever signs now keeps signing and `weft ca issuer` says why). Each CSR becomes a CertificateRequest in {ns}; cert-manager must approve it (its default approver does; with approver-policy, a CertificateRequestPolicy must allow this issuerRef for ServiceAccount {ns}/weft-operator).",
                cm.issuer_ref()
            );
            println!(
                "The root in Secret {ns}/{} joins every trust bundle beside the mesh root; running proxies learn it within one trust poll, and get certificates from cert-manager at their next renewal.",
                cm.ca_bundle_secret
            );
        }
        IssuerConfig::Vault(vault) => {
            warn_missing_secrets(&client, ns, vault).await?;
            if vault.address.starts_with("http://") {
                println!(
                    "Warning: {} is plain HTTP; the Vault token and certificates cross the network unencrypted.",
                    vault.address
                );
            }
            println!(
                "Every operator replica switches once Vault answers and a dry signing passes (until then the builtin CA keeps signing and `weft ca issuer` says why). Vault's root joins every trust bundle beside the mesh root, which keeps signing the operator's serving certificates."
            );
            println!(
                "Running proxies trust Vault's root from their next certificate on (renewal); restart meshed workloads after the switch so none refuses a peer holding a Vault-signed certificate."
            );
        }
    }
    if !yes {
        return Err(CliError::ConfirmationNeeded);
    }
    let configmaps: Api<ConfigMap> = Api::namespaced(client, ns);
    let write = format!("writing ConfigMap {ns}/{ISSUER_CONFIGMAP}");
    let data: BTreeMap<String, String> = config.to_data();
    match configmaps
        .get_opt(ISSUER_CONFIGMAP)
        .await
        .map_err(CliError::kube(write.clone()))?
    {
        Some(mut cm) => {
            // The whole data is replaced: a stale key of another issuer must not linger.
            cm.data = Some(data);
            configmaps
                .replace(ISSUER_CONFIGMAP, &PostParams::default(), &cm)
                .await
                .map_err(CliError::kube(write))?;
        }
        None => {
            let cm = ConfigMap {
                metadata: ObjectMeta {
                    name: Some(ISSUER_CONFIGMAP.into()),
                    namespace: Some(ns.into()),
                    labels: Some(BTreeMap::from([(
                        "app.kubernetes.io/managed-by".into(),
                        "weft".into(),
                    )])),
                    ..ObjectMeta::default()
                },
                data: Some(data),
                ..ConfigMap::default()
            };
            configmaps
                .create(&PostParams::default(), &cm)
                .await
                .map_err(CliError::kube(write))?;
        }
    }
    println!(
        "wrote ConfigMap {ns}/{ISSUER_CONFIGMAP}; `weft ca issuer` shows when the operator signs with it."
    );
    Ok(())
}

/// Says which named Secrets do not exist yet (the operator waits for them; not an error).
async fn warn_missing_secrets(
    client: &Client,
    ns: &str,
    vault: &VaultConfig,
) -> Result<(), CliError> {
    let mut named = Vec::new();
    if let VaultAuth::TokenSecret(name) = &vault.auth {
        named.push((name.clone(), pki::VAULT_TOKEN_KEY));
    }
    if let Some(name) = &vault.ca_cert_secret {
        named.push((name.clone(), pki::VAULT_CA_CERT_KEY));
    }
    for (name, key) in named {
        warn_missing(client, ns, &name, key).await?;
    }
    Ok(())
}

/// Says when Secret `name` does not exist yet (the operator waits for it; not an error).
async fn warn_missing(client: &Client, ns: &str, name: &str, key: &str) -> Result<(), CliError> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let found = secrets
        .get_metadata_opt(name)
        .await
        .map_err(CliError::kube(format!("reading Secret {ns}/{name}")))?;
    if found.is_none() {
        println!(
            "Note: Secret {ns}/{name} does not exist yet; create it with key {key} (`kubectl -n {ns} create secret generic {name} --from-literal={key}=...`)."
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(subcommand)]
        command: Top,
    }

    #[derive(Debug, clap::Subcommand)]
    enum Top {
        Issuer(IssuerArgs),
    }

    fn parse(args: &[&str]) -> Result<IssuerArgs, clap::Error> {
        let mut argv = vec!["weft", "issuer"];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv).map(|cli| match cli.command {
            Top::Issuer(args) => args,
        })
    }

    fn vault_config(args: &[&str]) -> Result<IssuerConfig, String> {
        match parse(args).map_err(|e| e.to_string())?.command {
            Some(IssuerCommand::Set(SetIssuer::Vault(v))) => v.config().map_err(|e| e.to_string()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn set_vault_flags_become_the_configmaps_configuration() {
        let config = vault_config(&[
            "set",
            "vault",
            "--address",
            "https://vault:8200",
            "--role",
            "weft",
            "--token-secret",
            "vault-token",
            "--ca-cert-secret",
            "vault-ca",
        ])
        .unwrap();
        assert_eq!(
            config,
            IssuerConfig::Vault(VaultConfig {
                address: "https://vault:8200".into(),
                mount: "pki".into(),
                role: "weft".into(),
                auth: VaultAuth::TokenSecret("vault-token".into()),
                ca_cert_secret: Some("vault-ca".into()),
            })
        );
        let kubernetes = vault_config(&[
            "set",
            "vault",
            "--address",
            "http://198.18.0.1:8200",
            "--role",
            "weft",
            "--auth-role",
            "weft-operator",
        ])
        .unwrap();
        let IssuerConfig::Vault(v) = kubernetes else {
            panic!()
        };
        assert_eq!(
            v.auth,
            VaultAuth::Kubernetes {
                role: "weft-operator".into(),
                mount: "kubernetes".into()
            }
        );
    }

    #[test]
    fn a_switch_rotates_unless_told_not_to_and_its_spread_is_checked() {
        let switch = |args: &[&str]| match parse(args).map(|a| a.command) {
            Ok(Some(IssuerCommand::Set(SetIssuer::Builtin(b)))) => Ok(b.switch),
            Ok(other) => panic!("{other:?}"),
            Err(e) => Err(e.to_string()),
        };
        let default = switch(&["set", "builtin"]).unwrap();
        assert!(!default.without_rotation);
        assert_eq!(default.renew_within, std::time::Duration::from_secs(30));
        let direct = switch(&[
            "set",
            "builtin",
            "--without-rotation",
            "--renew-within",
            "5s",
        ])
        .unwrap();
        assert!(direct.without_rotation);
        assert_eq!(direct.renew_within, std::time::Duration::from_secs(5));
        let err = switch(&["set", "builtin", "--renew-within", "0s"]).unwrap_err();
        assert!(err.contains("between 1s and 24h"), "{err}");
    }

    #[test]
    fn set_cert_manager_flags_become_the_configmaps_configuration() {
        let config = |args: &[&str]| match parse(args).map_err(|e| e.to_string())?.command {
            Some(IssuerCommand::Set(SetIssuer::CertManager(c))) => {
                c.config().map_err(|e| e.to_string())
            }
            other => panic!("{other:?}"),
        };
        let osm = config(&[
            "set",
            "cert-manager",
            "--issuer",
            "osm-ca",
            "--ca-bundle-secret",
            "osm-ca-bundle",
        ])
        .unwrap();
        assert_eq!(
            osm,
            IssuerConfig::CertManager(CertManagerConfig {
                issuer_name: "osm-ca".into(),
                issuer_kind: IssuerRefKind::Issuer,
                issuer_group: "cert-manager.io".into(),
                ca_bundle_secret: "osm-ca-bundle".into(),
            })
        );
        let cluster = config(&[
            "set",
            "cert-manager",
            "--issuer",
            "mesh-ca",
            "--kind",
            "ClusterIssuer",
            "--group",
            "awspca.cert-manager.io",
            "--ca-bundle-secret",
            "b",
        ])
        .unwrap();
        let IssuerConfig::CertManager(c) = cluster else {
            panic!()
        };
        assert_eq!(c.issuer_kind, IssuerRefKind::ClusterIssuer);
        assert_eq!(c.issuer_group, "awspca.cert-manager.io");
        assert!(
            parse(&[
                "set",
                "cert-manager",
                "--issuer",
                "x",
                "--kind",
                "Other",
                "--ca-bundle-secret",
                "b"
            ])
            .is_err()
        );
        assert!(
            parse(&["set", "cert-manager", "--issuer", "x"]).is_err(),
            "--ca-bundle-secret is required"
        );
        let bad = config(&[
            "set",
            "cert-manager",
            "--issuer",
            "Osm_CA",
            "--ca-bundle-secret",
            "b",
        ])
        .unwrap_err();
        assert!(bad.contains("certManager.issuerName"), "{bad}");
    }

    #[test]
    fn set_vault_refuses_two_or_no_auth_methods_and_bad_values() {
        let base = [
            "set",
            "vault",
            "--address",
            "http://v:8200",
            "--role",
            "weft",
        ];
        assert!(vault_config(&base).is_err(), "no auth method");
        let both = [&base[..], &["--token-secret", "t", "--auth-role", "r"]].concat();
        assert!(vault_config(&both).is_err());
        let mount_without_role =
            [&base[..], &["--token-secret", "t", "--auth-mount", "k"]].concat();
        assert!(vault_config(&mount_without_role).is_err());
        let bad = vault_config(&[
            "set",
            "vault",
            "--address",
            "vault:8200",
            "--role",
            "weft",
            "--token-secret",
            "t",
        ])
        .unwrap_err();
        assert!(bad.contains("https://"), "{bad}");
    }

    #[test]
    fn show_names_the_issuer_its_health_and_each_trusted_root() {
        let mesh = pki::MeshCa::generate_root("cluster.local", pki::DEFAULT_ROOT_VALIDITY).unwrap();
        let other =
            pki::MeshCa::generate_root("cluster.local", pki::DEFAULT_ROOT_VALIDITY).unwrap();
        let bundle = format!("{}{}", mesh.roots_pem(), other.roots_pem());
        let health = IssuerHealth {
            configured: "vault".into(),
            active: "builtin".into(),
            healthy: false,
            message: "Vault at http://198.18.0.1:8200 (pki/sign/weft) is unavailable".into(),
            since: "2026-12-06T06:00:00Z".into(),
        };
        let text = render(
            "vault at http://198.18.0.1:8200",
            Some(&health),
            Some(&bundle),
        );
        assert!(
            text.contains("Signing:  builtin (configured: vault)"),
            "{text}"
        );
        assert!(
            text.contains("UNHEALTHY since 2026-12-06T06:00:00Z: Vault at"),
            "{text}"
        );
        assert!(
            text.contains("Trusted roots (2 in ConfigMap weft-ca-root-cert)"),
            "{text}"
        );
        assert_eq!(text.matches("sha256 ").count(), 2, "{text}");
        let none = render("builtin", None, None);
        assert!(none.contains("none published yet"), "{none}");
    }
}
