//! The issuer controller (issue 24): reads ConfigMap `weft-ca-issuer` and the Secrets it names,
//! builds the issuer it states, probes it with a dry signing, and hands it to the CSR endpoint
//! and its roots and health to the CA-bundle controller. Every replica runs it (each one
//! signs); only the leader records the health on the ConfigMap for `weft ca issuer`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::contract;
use crate::pki::{
    self, ISSUER_CONFIGMAP, Issuer, IssuerConfig, IssuerKind, VAULT_CA_CERT_KEY, VAULT_TOKEN_KEY,
    VaultAuth, VaultConfig, VaultCredentials, VaultIssuer, WorkloadCsr, WorkloadKey,
};

/// How often the ConfigMap and Secrets are read and Vault's CA chain is checked.
const PERIOD: Duration = Duration::from_secs(5);
/// How often a healthy issuer is test-signed; a failing one is retried every [`PERIOD`].
const PROBE_EVERY: Duration = Duration::from_secs(300);
/// Annotation on `weft-ca-issuer` where the leader records [`IssuerHealth`] as JSON.
pub const HEALTH_ANNOTATION: &str = "weft.dev/issuer-health";
/// The service account the dry signing asks for (in the operator's namespace; no pod has it).
pub const PROBE_SERVICE_ACCOUNT: &str = "weft-issuer-probe";
/// Lifetime asked for in the dry signing: the shortest a proxy may ask for.
const PROBE_TTL: Duration = pki::MIN_WORKLOAD_VALIDITY;

/// What the controllers and `weft ca issuer` know of the issuer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IssuerStatus {
    /// The issuer signing now (the builtin CA until a configured one is reachable).
    pub active: Option<IssuerKind>,
    /// Roots of the active external issuer, trusted beside the mesh CA's own.
    pub roots: Vec<String>,
    /// What needs a person, naming the issuer: configuration, Vault down, a refused dry signing.
    pub problem: Option<String>,
}

/// [`IssuerStatus`] as recorded on the ConfigMap ([`HEALTH_ANNOTATION`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IssuerHealth {
    /// What the ConfigMap asks for (`builtin`, `vault`).
    pub configured: String,
    /// What signs now.
    pub active: String,
    pub healthy: bool,
    pub message: String,
    /// RFC 3339, when this health was first seen (unchanged while it stays the same).
    pub since: String,
}

pub struct IssuerController {
    pub client: Client,
    pub namespace: String,
    pub trust_domain: String,
    /// The issuer the CSR endpoint signs with (`None`: the builtin CA).
    pub active: watch::Sender<Option<Arc<dyn Issuer>>>,
    pub status: watch::Sender<IssuerStatus>,
    pub leading: Arc<AtomicBool>,
}

/// What the controller keeps between passes.
#[derive(Default)]
struct Current {
    config: Option<IssuerConfig>,
    /// The token Secret's `token`, shared with the Vault issuer built from `config`.
    token: Option<watch::Sender<Option<String>>>,
    ca_cert: Option<String>,
    issuer: Option<Arc<VaultIssuer>>,
    last_probe: Option<Instant>,
    probe_problem: Option<String>,
    recorded: Option<IssuerHealth>,
}

impl IssuerController {
    pub async fn run(self) {
        let mut current = Current::default();
        loop {
            let status = self.reconcile(&mut current).await;
            if let Some(problem) = &status.problem {
                tracing::warn!("issuer: {problem}");
            }
            if self.leading.load(Ordering::Acquire)
                && let Err(e) = self.record(&mut current, &status).await
            {
                tracing::debug!("issuer: cannot record health on {ISSUER_CONFIGMAP}: {e}");
            }
            self.status.send_if_modified(|now| {
                let changed = *now != status;
                *now = status.clone();
                changed
            });
            tokio::time::sleep(PERIOD).await;
        }
    }

    async fn reconcile(&self, current: &mut Current) -> IssuerStatus {
        let configmaps: Api<ConfigMap> = Api::namespaced(self.client.clone(), &self.namespace);
        let config = match configmaps.get_opt(ISSUER_CONFIGMAP).await {
            Ok(None) => Ok(IssuerConfig::Builtin),
            Ok(Some(cm)) => IssuerConfig::from_data(&cm.data.unwrap_or_default()),
            // A passing API error changes nothing: keep signing as before.
            Err(e) => return self.keep(current, format!("cannot read {ISSUER_CONFIGMAP}: {e}")),
        };
        let config = match config {
            Ok(config) => config,
            // A broken ConfigMap never means "fall back to builtin" silently.
            Err(e) => return self.keep(current, e.to_string()),
        };
        let VaultLike::Vault(vault) = VaultLike::of(&config) else {
            if current.config.as_ref() != Some(&IssuerConfig::Builtin) {
                tracing::info!("issuer: the builtin CA signs workload certificates");
            }
            *current = Current {
                config: Some(IssuerConfig::Builtin),
                recorded: current.recorded.take(),
                ..Current::default()
            };
            self.active.send_replace(None);
            return IssuerStatus {
                active: Some(IssuerKind::Builtin),
                ..IssuerStatus::default()
            };
        };
        if current.config.as_ref() != Some(&config) {
            *current = Current {
                config: Some(config.clone()),
                recorded: current.recorded.take(),
                ..Current::default()
            };
        }
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), &self.namespace);
        // The token is re-read every pass: a rotated token is used from the next request on.
        if let VaultAuth::TokenSecret(name) = &vault.auth {
            let token = match secrets.get_opt(name).await {
                Ok(secret) => secret.and_then(|s| secret_value(&s, VAULT_TOKEN_KEY)),
                Err(e) => return self.keep(current, format!("cannot read Secret {name}: {e}")),
            };
            match &current.token {
                Some(tx) => {
                    tx.send_if_modified(|now| {
                        let changed = *now != token;
                        *now = token.clone();
                        changed
                    });
                }
                None => current.token = Some(watch::channel(token).0),
            }
        }
        let ca_cert = match &vault.ca_cert_secret {
            None => None,
            Some(name) => match secrets.get_opt(name).await {
                Ok(Some(secret)) => secret_value(&secret, VAULT_CA_CERT_KEY),
                Ok(None) => {
                    return self.keep(
                        current,
                        format!(
                            "Secret {}/{name} (--ca-cert-secret) is missing: create it with key {VAULT_CA_CERT_KEY} holding the CA of Vault's HTTPS certificate",
                            self.namespace
                        ),
                    );
                }
                Err(e) => return self.keep(current, format!("cannot read Secret {name}: {e}")),
            },
        };
        if current.ca_cert != ca_cert {
            current.ca_cert = ca_cert;
            current.issuer = None;
        }

        // (Re)connect when there is no issuer yet, and re-read Vault's roots every pass: a
        // Vault that stops answering shows here, and a changed CA chain makes a new issuer.
        let issuer = match &current.issuer {
            Some(issuer) => match issuer.fetch_roots().await {
                Ok(roots) if roots == issuer.roots_pem() => Ok(issuer.clone()),
                Ok(_) => self.connect(vault, current).await,
                Err(e) => Err(e),
            },
            None => self.connect(vault, current).await,
        };
        let issuer = match issuer {
            Ok(issuer) => issuer,
            Err(e) => return self.keep(current, e.to_string()),
        };
        if current
            .issuer
            .as_ref()
            .is_none_or(|old| !Arc::ptr_eq(old, &issuer))
        {
            tracing::info!("issuer: {} signs workload certificates", issuer.describe());
            current.issuer = Some(issuer.clone());
            current.last_probe = None;
            self.active
                .send_replace(Some(issuer.clone() as Arc<dyn Issuer>));
        }
        let due = current.probe_problem.is_some()
            || current
                .last_probe
                .is_none_or(|at| at.elapsed() >= PROBE_EVERY);
        if due {
            current.probe_problem = self.probe(&*issuer).await.err();
            current.last_probe = Some(Instant::now());
        }
        IssuerStatus {
            active: Some(IssuerKind::Vault),
            roots: issuer.roots_pem(),
            problem: current.probe_problem.clone(),
        }
    }

    async fn connect(
        &self,
        vault: &VaultConfig,
        current: &Current,
    ) -> Result<Arc<VaultIssuer>, pki::IssuerError> {
        let token = current
            .token
            .as_ref()
            .map(|tx| tx.subscribe())
            .unwrap_or_else(|| watch::channel(None).1);
        let credentials = VaultCredentials::from_config(vault, token);
        VaultIssuer::connect(
            vault.clone(),
            credentials,
            current.ca_cert.as_deref(),
            &self.trust_domain,
            &self.namespace,
        )
        .await
        .map(Arc::new)
    }

    /// Signs a throwaway CSR through `issuer` with every check a proxy's CSR gets: a role
    /// that would refuse proxies is found before any proxy asks.
    async fn probe(&self, issuer: &dyn Issuer) -> Result<(), String> {
        let identity =
            contract::spiffe_id(&self.trust_domain, &self.namespace, PROBE_SERVICE_ACCOUNT);
        let key = WorkloadKey::generate().map_err(|e| e.to_string())?;
        let csr = key.csr_pem(&identity).map_err(|e| e.to_string())?;
        let request = WorkloadCsr {
            csr_pem: &csr,
            spiffe_id: &identity,
            namespace: &self.namespace,
            service_account: PROBE_SERVICE_ACCOUNT,
            ttl: PROBE_TTL,
        };
        pki::issue(issuer, &request, &[], SystemTime::now())
            .await
            .map(|_| ())
            .map_err(|e| format!("a dry signing failed: {e}"))
    }

    /// Keeps whatever signs now and reports `problem`.
    fn keep(&self, current: &Current, problem: String) -> IssuerStatus {
        match &current.issuer {
            Some(issuer) => IssuerStatus {
                active: Some(IssuerKind::Vault),
                roots: issuer.roots_pem(),
                problem: Some(problem),
            },
            None => IssuerStatus {
                active: Some(IssuerKind::Builtin),
                roots: Vec::new(),
                problem: Some(problem),
            },
        }
    }

    /// Writes [`HEALTH_ANNOTATION`] when the health changed (only when the ConfigMap exists).
    async fn record(
        &self,
        current: &mut Current,
        status: &IssuerStatus,
    ) -> Result<(), kube::Error> {
        let configured = current
            .config
            .as_ref()
            .map_or("unreadable", |c| c.kind().as_str())
            .to_string();
        let mut health = IssuerHealth {
            configured,
            active: status.active.map_or("none", IssuerKind::as_str).to_string(),
            healthy: status.problem.is_none(),
            message: status.problem.clone().unwrap_or_else(|| "ok".into()),
            since: String::new(),
        };
        if let Some(recorded) = &current.recorded {
            let same = IssuerHealth {
                since: String::new(),
                ..recorded.clone()
            };
            if same == health {
                return Ok(());
            }
        }
        health.since = k8s_openapi::jiff::Timestamp::now().to_string();
        let configmaps: Api<ConfigMap> = Api::namespaced(self.client.clone(), &self.namespace);
        if configmaps.get_opt(ISSUER_CONFIGMAP).await?.is_none() {
            current.recorded = Some(health);
            return Ok(());
        }
        let value = serde_json::to_string(&health).unwrap_or_default();
        let patch = serde_json::json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": ISSUER_CONFIGMAP, "namespace": self.namespace,
                         "annotations": {HEALTH_ANNOTATION: value}},
        });
        configmaps
            .patch(
                ISSUER_CONFIGMAP,
                &PatchParams::apply(contract::FIELD_MANAGER).force(),
                &Patch::Apply(&patch),
            )
            .await?;
        current.recorded = Some(health);
        Ok(())
    }
}

/// Borrow of the Vault part of a configuration.
enum VaultLike<'a> {
    Builtin,
    Vault(&'a VaultConfig),
}

impl<'a> VaultLike<'a> {
    fn of(config: &'a IssuerConfig) -> Self {
        match config {
            IssuerConfig::Builtin => Self::Builtin,
            IssuerConfig::Vault(v) => Self::Vault(v),
        }
    }
}

/// A Secret's value at `key` as trimmed text (`data` or `stringData`), `None` when absent or
/// empty.
fn secret_value(secret: &Secret, key: &str) -> Option<String> {
    let from_data = secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|b| String::from_utf8_lossy(&b.0).trim().to_string());
    let from_string = secret
        .string_data
        .as_ref()
        .and_then(|d: &BTreeMap<String, String>| d.get(key))
        .map(|s| s.trim().to_string());
    from_data.or(from_string).filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;

    #[test]
    fn a_secret_value_is_trimmed_and_empty_means_none() {
        let secret = |value: &str| Secret {
            data: Some(BTreeMap::from([(
                "token".to_string(),
                ByteString(value.as_bytes().to_vec()),
            )])),
            ..Secret::default()
        };
        assert_eq!(
            secret_value(&secret("s.abc\n"), "token").as_deref(),
            Some("s.abc")
        );
        assert_eq!(secret_value(&secret("  "), "token"), None);
        assert_eq!(secret_value(&secret("x"), "other"), None);
    }

    #[test]
    fn health_round_trips_as_the_annotation_json() {
        let health = IssuerHealth {
            configured: "vault".into(),
            active: "builtin".into(),
            healthy: false,
            message: "Vault at http://198.18.0.1:8200 (pki/sign/weft) is unavailable".into(),
            since: "2026-12-06T06:00:00Z".into(),
        };
        let json = serde_json::to_string(&health).unwrap();
        assert!(json.contains("\"configured\":\"vault\""), "{json}");
        assert_eq!(serde_json::from_str::<IssuerHealth>(&json).unwrap(), health);
    }
}
