//! The issuer controller (issue 24): reads ConfigMap `weft-ca-issuer` and the Secrets it names,
//! builds the issuer it states (Vault, cert-manager), probes it with a dry signing, and hands it
//! to the CSR endpoint and its roots and health to the CA-bundle controller. Every replica runs it (each one
//! signs); only the leader records the health on the ConfigMap for `weft ca issuer`. During a
//! switch of issuer (a root rotation, `super::rotation`) the phase decides which issuer is in
//! force, and in phase (a) the new one is built and dry-signed beside it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{
    ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams,
};
use kube::{Api, Client};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::rotation::{self, Phase};
use crate::contract;
use crate::pki::{
    self, ApiError, ApiFuture, CA_BUNDLE_KEY, CertManagerConfig, CertManagerIssuer,
    CertificateRequests, ISSUER_CONFIGMAP, Issuer, IssuerConfig, IssuerKind, VAULT_CA_CERT_KEY,
    VAULT_TOKEN_KEY, VaultAuth, VaultConfig, VaultCredentials, VaultIssuer, WorkloadCsr,
    WorkloadKey,
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
    /// During a switch of issuer (phase (a)): the new issuer's roots once its dry signing
    /// passed, or why it did not. None when no issuer is being prepared.
    pub next: Option<Result<Vec<String>, String>>,
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
    /// The root rotation under way: during a switch of issuer, its phase decides who signs.
    pub rotation: watch::Receiver<super::rotation_controller::RotationView>,
}

/// What the controller keeps between passes.
#[derive(Default)]
struct Current {
    config: Option<IssuerConfig>,
    /// The token Secret's `token`, shared with the Vault issuer built from `config`.
    token: Option<watch::Sender<Option<String>>>,
    ca_cert: Option<String>,
    /// The Vault issuer built from `config` (its CA chain is re-read every pass).
    vault: Option<Arc<VaultIssuer>>,
    /// The cert-manager issuer built from `config` and the `ca.crt` it was built with.
    cert_manager: Option<(Arc<CertManagerIssuer>, String)>,
    /// The issuer built from `config`, signing once its dry signing passed.
    candidate: Option<Arc<dyn Issuer>>,
    /// What the CSR endpoint signs with now (`None`: the builtin CA). Kept across configuration
    /// changes: whatever signed keeps signing until its successor passed a dry signing.
    signing: Option<Arc<dyn Issuer>>,
    last_probe: Option<Instant>,
    probe_problem: Option<String>,
    recorded: Option<IssuerHealth>,
}

impl IssuerController {
    pub async fn run(self) {
        let mut current = Current::default();
        let mut next = Current::default();
        let mut rotation = self.rotation.clone();
        loop {
            let status = self.reconcile_all(&mut current, &mut next).await;
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
            let seen = phase_of(&rotation.borrow_and_update());
            wait_period_or_phase_change(&mut rotation, seen).await;
        }
    }

    /// The issuer in force, and during a switch of issuer the one being prepared.
    async fn reconcile_all(&self, current: &mut Current, next: &mut Current) -> IssuerStatus {
        let rotating = self.rotation.borrow().active().cloned();
        let prepare = rotating
            .as_ref()
            .and_then(rotation::issuer_to_prepare)
            .cloned();
        let next_status = match prepare {
            Some(data) => Some(self.prepare(&data, next).await),
            None => {
                if rotating.is_none() {
                    *next = Current::default();
                }
                None
            }
        };
        let in_force = rotating
            .as_ref()
            .and_then(rotation::issuer_in_force)
            .cloned();
        let mut status = self.reconcile(current, next, in_force).await;
        status.next = next_status;
        status
    }

    /// Builds and dry-signs the issuer a rotation switches to (as [`Self::reconcile`] does the
    /// one in force, without signing with it): its roots, or why it cannot sign.
    async fn prepare(
        &self,
        data: &BTreeMap<String, String>,
        next: &mut Current,
    ) -> Result<Vec<String>, String> {
        let config = IssuerConfig::from_data(data).map_err(|e| e.to_string())?;
        if next.config.as_ref() != Some(&config) {
            *next = Current {
                config: Some(config.clone()),
                ..Current::default()
            };
        }
        let candidate = match &config {
            IssuerConfig::Vault(vault) => self.vault(vault, next).await?,
            IssuerConfig::CertManager(cm) => self.cert_manager(cm, next).await?,
            IssuerConfig::Builtin => return Ok(Vec::new()),
        };
        if next
            .candidate
            .as_ref()
            .is_none_or(|old| !Arc::ptr_eq(old, &candidate))
        {
            next.candidate = Some(candidate.clone());
            next.last_probe = None;
        }
        let due = next.probe_problem.is_some()
            || next.last_probe.is_none_or(|at| at.elapsed() >= PROBE_EVERY);
        if due {
            next.probe_problem = self.probe(&*candidate).await.err();
            next.last_probe = Some(Instant::now());
        }
        match &next.probe_problem {
            Some(problem) => Err(problem.clone()),
            None => Ok(candidate.roots_pem()),
        }
    }

    /// The issuer in force: `in_force` (a rotation's phase names it) or ConfigMap
    /// `weft-ca-issuer`. An issuer prepared in `next` is taken over as it is, already
    /// dry-signed, so the switch at phase (b) happens in this pass.
    async fn reconcile(
        &self,
        current: &mut Current,
        next: &mut Current,
        in_force: Option<BTreeMap<String, String>>,
    ) -> IssuerStatus {
        let configmaps: Api<ConfigMap> = Api::namespaced(self.client.clone(), &self.namespace);
        let config = match in_force {
            Some(data) => IssuerConfig::from_data(&data),
            None => match configmaps.get_opt(ISSUER_CONFIGMAP).await {
                Ok(None) => Ok(IssuerConfig::Builtin),
                Ok(Some(cm)) => IssuerConfig::from_data(&cm.data.unwrap_or_default()),
                // A passing API error changes nothing: keep signing as before.
                Err(e) => {
                    return self.keep(current, format!("cannot read {ISSUER_CONFIGMAP}: {e}"));
                }
            },
        };
        let config = match config {
            Ok(config) => config,
            // A broken ConfigMap never means "fall back to builtin" silently.
            Err(e) => return self.keep(current, e.to_string()),
        };
        if matches!(config, IssuerConfig::Builtin) {
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
            let prepared = if next.config.as_ref() == Some(&config) {
                std::mem::take(next)
            } else {
                Current::default()
            };
            *current = Current {
                config: Some(config.clone()),
                recorded: current.recorded.take(),
                signing: current.signing.take(),
                ..prepared
            };
        }
        let candidate = match &config {
            IssuerConfig::Vault(vault) => self.vault(vault, current).await,
            IssuerConfig::CertManager(cm) => self.cert_manager(cm, current).await,
            IssuerConfig::Builtin => return IssuerStatus::default(),
        };
        let candidate = match candidate {
            Ok(issuer) => issuer,
            Err(problem) => return self.keep(current, problem),
        };
        if current
            .candidate
            .as_ref()
            .is_none_or(|old| !Arc::ptr_eq(old, &candidate))
        {
            current.candidate = Some(candidate.clone());
            current.last_probe = None;
        }
        let due = current.probe_problem.is_some()
            || current
                .last_probe
                .is_none_or(|at| at.elapsed() >= PROBE_EVERY);
        if due {
            current.probe_problem = self.probe(&*candidate).await.err();
            current.last_probe = Some(Instant::now());
        }
        // The switch waits for a passing dry signing, so an issuer that would refuse every
        // proxy never replaces one that works.
        if current.probe_problem.is_none()
            && current
                .signing
                .as_ref()
                .is_none_or(|old| !Arc::ptr_eq(old, &candidate))
        {
            tracing::info!(
                "issuer: {} signs workload certificates",
                candidate.describe()
            );
            current.signing = Some(candidate.clone());
            self.active.send_replace(Some(candidate.clone()));
        }
        let mut status = self.keep(current, String::new());
        status.problem = current.probe_problem.clone();
        status
    }

    /// Builds (or keeps) the Vault issuer: re-reads the token Secret and Vault's CA chain.
    async fn vault(
        &self,
        vault: &VaultConfig,
        current: &mut Current,
    ) -> Result<Arc<dyn Issuer>, String> {
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), &self.namespace);
        // The token is re-read every pass: a rotated token is used from the next request on.
        if let VaultAuth::TokenSecret(name) = &vault.auth {
            let token = match secrets.get_opt(name).await {
                Ok(secret) => secret.and_then(|s| secret_value(&s, VAULT_TOKEN_KEY)),
                Err(e) => return Err(format!("cannot read Secret {name}: {e}")),
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
                // A Secret without the key must not fall back to the image's public roots:
                // that would ignore the user's setting and widen whom Vault's TLS trusts.
                Ok(Some(secret)) => match secret_value(&secret, VAULT_CA_CERT_KEY) {
                    Some(pem) => Some(pem),
                    None => {
                        return Err(format!(
                            "Secret {}/{name} (--ca-cert-secret) has no key {VAULT_CA_CERT_KEY} (or it is empty): put the PEM CA of Vault's HTTPS certificate under {VAULT_CA_CERT_KEY}",
                            self.namespace
                        ));
                    }
                },
                Ok(None) => {
                    return Err(format!(
                        "Secret {}/{name} (--ca-cert-secret) is missing: create it with key {VAULT_CA_CERT_KEY} holding the CA of Vault's HTTPS certificate",
                        self.namespace
                    ));
                }
                Err(e) => return Err(format!("cannot read Secret {name}: {e}")),
            },
        };
        if current.ca_cert != ca_cert {
            current.ca_cert = ca_cert;
            current.vault = None;
        }

        // (Re)connect when there is no issuer yet, and re-read Vault's roots every pass: a
        // Vault that stops answering shows here, and a changed CA chain makes a new issuer.
        let issuer = match &current.vault {
            Some(issuer) => match issuer.fetch_roots().await {
                Ok(roots) if roots == issuer.roots_pem() => Ok(issuer.clone()),
                Ok(_) => self.connect(vault, current).await,
                Err(e) => Err(e),
            },
            None => self.connect(vault, current).await,
        };
        let issuer = issuer.map_err(|e| e.to_string())?;
        current.vault = Some(issuer.clone());
        Ok(issuer)
    }

    /// Builds (or keeps) the cert-manager issuer: re-reads the ca-bundle Secret every pass, so
    /// a changed root makes a new issuer (and joins the trust bundle) within one period.
    async fn cert_manager(
        &self,
        config: &CertManagerConfig,
        current: &mut Current,
    ) -> Result<Arc<dyn Issuer>, String> {
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), &self.namespace);
        let name = &config.ca_bundle_secret;
        let ns = &self.namespace;
        let bundle = match secrets.get_opt(name).await {
            Ok(Some(secret)) => secret_value(&secret, CA_BUNDLE_KEY).ok_or_else(|| {
                format!(
                    "Secret {ns}/{name} (--ca-bundle-secret) has no key {CA_BUNDLE_KEY}: put the root of cert-manager {} in it",
                    config.issuer_ref()
                )
            })?,
            Ok(None) => {
                return Err(format!(
                    "Secret {ns}/{name} (--ca-bundle-secret) is missing: create it with key {CA_BUNDLE_KEY} holding the root of cert-manager {} (`kubectl -n {ns} create secret generic {name} --from-file={CA_BUNDLE_KEY}=root.pem`)",
                    config.issuer_ref()
                ));
            }
            Err(e) => return Err(format!("cannot read Secret {ns}/{name}: {e}")),
        };
        if let Some((issuer, seen)) = &current.cert_manager
            && *seen == bundle
        {
            // A proxy's CSR was refused since the last pass: probe now, so the health (and
            // `weft check`) say why within a period.
            if issuer.take_refusal() {
                current.last_probe = None;
            }
            return Ok(issuer.clone());
        }
        let roots = pki::roots_from_ca_bundle(&bundle)
            .map_err(|e| format!("Secret {ns}/{name} key {CA_BUNDLE_KEY}: {e}"))?;
        let requests = KubeCertificateRequests::new(self.client.clone(), ns);
        let issuer = Arc::new(CertManagerIssuer::new(
            config.clone(),
            roots,
            Arc::new(requests),
            ns,
        ));
        current.cert_manager = Some((issuer.clone(), bundle));
        Ok(issuer)
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

    /// Keeps whatever signs now and reports `problem`. The roots are the signing issuer's and
    /// the candidate's: peers trust the next issuer before it signs.
    fn keep(&self, current: &Current, problem: String) -> IssuerStatus {
        let mut roots: Vec<String> = Vec::new();
        for issuer in current.signing.iter().chain(current.candidate.iter()) {
            for root in issuer.roots_pem() {
                if !roots.contains(&root) {
                    roots.push(root);
                }
            }
        }
        IssuerStatus {
            active: Some(
                current
                    .signing
                    .as_ref()
                    .map_or(IssuerKind::Builtin, |issuer| issuer.kind()),
            ),
            roots,
            problem: Some(problem),
            next: None,
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

/// The rotation and phase a view is in (None: no rotation under way).
fn phase_of(view: &super::rotation_controller::RotationView) -> Option<(String, Phase)> {
    view.active().map(|s| (s.id.clone(), s.phase))
}

/// Sleeps one period, or less when a rotation enters another phase: the issuer in force
/// follows the phase within the rotation controller's pass, not a period later. (The view is
/// re-sent every pass; only a change of phase cuts the wait short.)
async fn wait_period_or_phase_change(
    rotation: &mut watch::Receiver<super::rotation_controller::RotationView>,
    seen: Option<(String, Phase)>,
) {
    let deadline = tokio::time::Instant::now() + PERIOD;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => return,
            changed = rotation.changed() => {
                if changed.is_err() {
                    tokio::time::sleep_until(deadline).await;
                    return;
                }
                if phase_of(&rotation.borrow_and_update()) != seen {
                    return;
                }
            }
        }
    }
}

// === impl CertificateRequests for the Kubernetes API ===

/// cert-manager's CertificateRequests in the operator's namespace, as untyped objects (weft
/// does not link cert-manager's types; `pki::certificate_request` writes the shape).
struct KubeCertificateRequests {
    api: Api<DynamicObject>,
}

/// cert-manager's CertificateRequests in `namespace` through the Kubernetes API (what the
/// cert-manager issuer signs through; public for `tests/issuer_bench.rs`).
pub fn certificate_requests_api(client: Client, namespace: &str) -> Arc<dyn CertificateRequests> {
    Arc::new(KubeCertificateRequests::new(client, namespace))
}

impl KubeCertificateRequests {
    fn new(client: Client, namespace: &str) -> Self {
        let gvk = GroupVersionKind::gvk(pki::CERT_MANAGER_GROUP, "v1", "CertificateRequest");
        let resource = ApiResource::from_gvk_with_plural(&gvk, "certificaterequests");
        KubeCertificateRequests {
            api: Api::namespaced_with(client, namespace, &resource),
        }
    }
}

fn api_error(e: kube::Error) -> ApiError {
    match e {
        kube::Error::Api(status) => ApiError {
            code: Some(status.code),
            message: status.message.clone(),
        },
        other => ApiError {
            code: None,
            message: other.to_string(),
        },
    }
}

fn json_error(e: serde_json::Error) -> ApiError {
    ApiError {
        code: None,
        message: format!("a CertificateRequest that is not one: {e}"),
    }
}

impl CertificateRequests for KubeCertificateRequests {
    fn create<'a>(&'a self, request: serde_json::Value) -> ApiFuture<'a, serde_json::Value> {
        Box::pin(async move {
            let object: DynamicObject = serde_json::from_value(request).map_err(json_error)?;
            let created = self
                .api
                .create(&PostParams::default(), &object)
                .await
                .map_err(api_error)?;
            serde_json::to_value(created).map_err(json_error)
        })
    }

    fn get<'a>(&'a self, name: &'a str) -> ApiFuture<'a, Option<serde_json::Value>> {
        Box::pin(async move {
            match self.api.get_opt(name).await.map_err(api_error)? {
                Some(object) => Ok(Some(serde_json::to_value(object).map_err(json_error)?)),
                None => Ok(None),
            }
        })
    }

    fn delete<'a>(&'a self, name: &'a str) -> ApiFuture<'a, ()> {
        Box::pin(async move {
            match self.api.delete(name, &DeleteParams::background()).await {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
                Err(e) => Err(api_error(e)),
            }
        })
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
