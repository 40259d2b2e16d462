//! The CA-bundle controller (SPEC §7): loads or creates the mesh CA, never silently replaces
//! a root, restores a deleted `weft-ca` Secret from memory, publishes the root ConfigMap into
//! every namespace that is not excluded, and keeps the webhooks' `caBundle` equal to the root.
//! It reconciles on a short period, so deletions and tampering are reverted within seconds.
//!
//! Every replica loads the CA (each one signs and serves with it); only the leader writes
//! (restores the Secret, publishes the ConfigMaps, patches the `caBundle`s). A root is
//! replaced only when `weft ca reset` says so: it writes a new root into `weft-ca` with the
//! annotation [`RESET_ANNOTATION`], and a replica adopts a Secret whose annotation differs from
//! the one its CA came from.
//!
//! When an external issuer signs (Vault, see `super::issuer`), its roots join the mesh CA's
//! own in every trust bundle (the mesh CA still signs the operator's serving certificates), and
//! its problems are reported as the CA's: a Degraded condition on every revision and an Event.
//!
//! During a root rotation (`super::rotation`) the phase decides which CA signs (the one of
//! `weft-ca`, or the new root of `weft-ca-next`) and which root is trusted beside it; the
//! leader promotes the new root into `weft-ca` with the reset annotation, which every replica
//! adopts as it adopts `weft ca reset`'s.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use tokio::sync::watch;

use super::rotation;
use crate::contract;
use crate::pki::{self, MeshCa};

pub use crate::contract::FIELD_MANAGER;
pub const MUTATING_WEBHOOK: &str = "weft-sidecar-injector";
pub const VALIDATING_WEBHOOK: &str = "weft-validator";
const PERIOD: Duration = Duration::from_secs(2);
/// Set by `weft ca reset` on the Secret it writes: the replicas adopt that root.
pub const RESET_ANNOTATION: &str = "weft.dev/ca-reset";

/// Why the operator holds no usable CA; reported in logs, `/readyz` and `weft check`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CaProblem {
    #[error(
        "Secret {namespace}/{secret} is corrupted ({reason}); weft will not overwrite it. Fix the Secret, or run `weft ca reset` to start a new root (every proxy then needs a restart)"
    )]
    Corrupted {
        namespace: String,
        secret: String,
        reason: String,
    },
    #[error(
        "Secret {namespace}/weft-ca is missing but a root is already published in ConfigMap {namespace}/weft-ca-root-cert; weft will not replace a root silently. Restore the Secret, or run `weft ca reset`"
    )]
    MissingButPublished { namespace: String },
    #[error("talking to the API server: {0}")]
    Api(String),
    /// The configured issuer cannot sign (Vault down, refusing, or misconfigured); issued
    /// certificates keep working and renewals retry.
    #[error("the certificate issuer: {0}; `weft ca issuer` shows its health")]
    Issuer(String),
    /// A root rotation cannot go on as its phase says (`weft ca rotate status`).
    #[error("root rotation: {0}")]
    Rotation(String),
}

impl CaProblem {
    /// The problem as the controllers report it (Degraded condition and a Warning Event);
    /// None for a passing API error.
    pub fn issue(&self) -> Option<crate::controllers::CaIssue> {
        let (reason, secret) = match self {
            Self::Corrupted { secret, .. } => ("CaSecretCorrupted", secret.clone()),
            Self::MissingButPublished { .. } => ("CaSecretMissing", pki::WEFT_CA_SECRET.into()),
            // The Event regards the mesh CA's Secret; the message names the issuer.
            Self::Issuer(_) => ("IssuerUnavailable", pki::WEFT_CA_SECRET.into()),
            Self::Rotation(_) => ("RootRotationStuck", pki::WEFT_CA_SECRET.into()),
            Self::Api(_) => return None,
        };
        Some(crate::controllers::CaIssue {
            reason,
            secret,
            message: self.to_string(),
        })
    }

    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Corrupted { .. } => "corrupted",
            Self::MissingButPublished { .. } => "missing_but_published",
            Self::Api(_) => "api",
            Self::Issuer(_) => "issuer",
            Self::Rotation(_) => "rotation",
        }
    }
}

pub struct CaBundleController {
    pub client: Client,
    pub namespace: String,
    pub trust_domain: String,
    /// Publishes the CA (None while there is none) to the CSR endpoint and the serving certs.
    pub ca: watch::Sender<Option<Arc<MeshCa>>>,
    pub problem: watch::Sender<Option<CaProblem>>,
    /// Counts each pass as a reconcile of controller `ca_bundle`.
    pub metrics: Arc<crate::kube::metrics::OperatorMetrics>,
    /// Set while this replica leads: only then does it write.
    pub leading: Arc<AtomicBool>,
    /// Namespaces whose root ConfigMap could not be written, with the last error: a failure
    /// is logged as a warning when it is new or different, then at debug on every later pass
    /// (it repeats each PERIOD) until a write succeeds.
    pub publish_failures: std::sync::Mutex<BTreeMap<String, String>>,
    /// The issuer controller's view: extra roots to trust and the issuer's problem.
    pub issuer: watch::Receiver<super::issuer::IssuerStatus>,
    /// The root rotation under way, if any: who signs and which root is trusted beside.
    pub rotation: watch::Receiver<super::rotation_controller::RotationView>,
}

/// The [`RESET_ANNOTATION`] of the Secret the CA in memory came from.
type ResetMarker = Option<String>;

/// What a replica holds between passes: the CA of its Secret (the base every phase starts
/// from) and the reset marker it came with.
#[derive(Default)]
struct Held {
    base: Option<Arc<MeshCa>>,
    marker: ResetMarker,
}

impl CaBundleController {
    pub async fn run(self) {
        let mut held = Held::default();
        loop {
            let started = std::time::Instant::now();
            let result = self.reconcile(&mut held).await;
            self.metrics.reconciled(
                "ca_bundle",
                started.elapsed(),
                result.as_ref().err().map(CaProblem::metric_label),
            );
            let issuer_problem = self.issuer.borrow().problem.clone();
            let problem = result.err().or(issuer_problem.map(CaProblem::Issuer));
            if let Some(p) = &problem {
                tracing::warn!(reason = p.metric_label(), "CA: {p}");
            }
            self.problem.send_if_modified(|current| {
                let changed = *current != problem;
                *current = problem.clone();
                changed
            });
            tokio::time::sleep(PERIOD).await;
        }
    }

    async fn reconcile(&self, held: &mut Held) -> Result<(), CaProblem> {
        let base = match held.base.clone() {
            Some(ca) => match self.keep_secret(&ca, held.marker.as_deref()).await? {
                None => ca,
                Some((reset, new_marker)) => {
                    if new_marker
                        .as_deref()
                        .is_some_and(|m| m.starts_with(rotation::PROMOTION_MARKER_PREFIX))
                    {
                        tracing::info!(
                            "Secret {}/{} holds the rotated root: it is this replica's mesh \
                             root from now on",
                            self.namespace,
                            reset.source().secret_name()
                        );
                    } else {
                        tracing::warn!(
                            "Secret {}/weft-ca holds a new root written by `weft ca reset`: \
                             signing with it from now on; meshed workloads need a restart to \
                             trust it",
                            self.namespace
                        );
                    }
                    held.marker = new_marker;
                    held.base = Some(reset.clone());
                    reset
                }
            },
            None => {
                let (ca, loaded_marker) = self.load_or_create().await?;
                tracing::info!(source = ?ca.source(), "mesh CA loaded");
                held.marker = loaded_marker;
                held.base = Some(ca.clone());
                ca
            }
        };
        // A rotation under way decides who signs and which root is trusted beside it.
        let view = self.rotation.borrow().clone();
        let (signer, mut extra) = match view.active().and_then(rotation::plan) {
            None => (base.clone(), Vec::new()),
            Some(plan) => {
                let signer = match plan.signer {
                    rotation::Signer::Current => base.clone(),
                    rotation::Signer::Next => view.next.clone().ok_or_else(|| {
                        CaProblem::Rotation(view.problem.clone().unwrap_or_else(|| {
                            format!(
                                "the new root (Secret {}/{}) is not loaded yet",
                                self.namespace,
                                rotation::NEXT_CA_SECRET
                            )
                        }))
                    })?,
                };
                (signer, plan.also_trust)
            }
        };
        // An external issuer's roots join the bundle before any proxy gets a leaf from it
        // through a published root (the CSR answer carries them from the first leaf on).
        extra.extend(self.issuer.borrow().roots.iter().cloned());
        let published = self.ca.borrow().clone();
        let ca = match published {
            Some(ca)
                if ca.own_roots_pem() == signer.own_roots_pem()
                    && !ca.trusts_other_than(&extra) =>
            {
                ca
            }
            _ => {
                let trusting = Arc::new(
                    signer
                        .also_trusting(&extra)
                        .map_err(|e| self.corrupted(signer.source().secret_name(), e))?,
                );
                tracing::info!(
                    extra_roots = trusting.also_trusted().len(),
                    rotation = view.active().map(|s| s.phase.to_string()),
                    "trust bundle: the signing root plus {} other root(s)",
                    trusting.also_trusted().len()
                );
                self.ca.send_replace(Some(trusting.clone()));
                trusting
            }
        };
        if !self.leading() {
            return Ok(());
        }
        // The webhooks first: until their caBundle is set, the API server refuses every write
        // they cover (failurePolicy Fail), including the first revision's creation.
        self.patch_ca_bundles(&ca).await?;
        self.publish_roots(&ca).await
    }

    fn leading(&self) -> bool {
        self.leading.load(Ordering::Acquire)
    }

    fn secrets(&self) -> Api<Secret> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    async fn load_or_create(&self) -> Result<(Arc<MeshCa>, ResetMarker), CaProblem> {
        let secrets = self.secrets();
        // A `cacerts` a rotation retired (emptied, marked) is as good as absent.
        if let Some(plugin) = secrets
            .get_opt(pki::PLUGIN_CA_SECRET)
            .await
            .map_err(api)?
            .filter(|s| !rotation::retired(s))
        {
            return MeshCa::from_cacerts_secret(&secret_bytes(&plugin))
                .map(|ca| (Arc::new(ca), reset_marker(&plugin)))
                .map_err(|e| self.corrupted(pki::PLUGIN_CA_SECRET, e));
        }
        if let Some(own) = secrets.get_opt(pki::WEFT_CA_SECRET).await.map_err(api)? {
            return MeshCa::from_weft_ca_secret(&secret_bytes(&own))
                .map(|ca| (Arc::new(ca), reset_marker(&own)))
                .map_err(|e| self.corrupted(pki::WEFT_CA_SECRET, e));
        }
        let configmaps: Api<ConfigMap> = Api::namespaced(self.client.clone(), &self.namespace);
        if configmaps
            .get_opt(contract::ROOT_CERT_CONFIGMAP)
            .await
            .map_err(api)?
            .is_some()
        {
            return Err(CaProblem::MissingButPublished {
                namespace: self.namespace.clone(),
            });
        }
        let ca = MeshCa::generate_root(&self.trust_domain, pki::DEFAULT_ROOT_VALIDITY)
            .map_err(|e| CaProblem::Api(e.to_string()))?;
        match secrets
            .create(&PostParams::default(), &self.secret_for(&ca))
            .await
        {
            Ok(_) => {
                tracing::info!(
                    "created a new self-signed root in Secret {}/weft-ca",
                    self.namespace
                );
                Ok((Arc::new(ca), None))
            }
            // Another replica created it first: use theirs, so every replica signs with one root.
            Err(kube::Error::Api(e)) if e.code == 409 => Box::pin(self.load_or_create()).await,
            Err(e) => Err(api(e)),
        }
    }

    fn corrupted(&self, secret: &str, e: pki::CaError) -> CaProblem {
        CaProblem::Corrupted {
            namespace: self.namespace.clone(),
            secret: secret.into(),
            reason: e.to_string(),
        }
    }

    fn secret_for(&self, ca: &MeshCa) -> Secret {
        weft_ca_secret(ca, &self.namespace, None)
    }

    /// A deleted `weft-ca` comes back from memory with the same root (by the leader); a
    /// changed one is left alone and reported, unless `weft ca reset` wrote it: then its root
    /// is returned, to be adopted.
    async fn keep_secret(
        &self,
        ca: &MeshCa,
        marker: Option<&str>,
    ) -> Result<Option<(Arc<MeshCa>, ResetMarker)>, CaProblem> {
        let secrets = self.secrets();
        // A root rotation promotes into `cacerts` (to a plug-in CA) or retires it (from one):
        // the Secret in force then carries the rotation's marker, which is adopted. Any other
        // change of `cacerts` is left for a restart, as before rotations existed.
        let plugin = secrets.get_opt(pki::PLUGIN_CA_SECRET).await.map_err(api)?;
        // The rotation that retired `cacerts`, if one did.
        let retired_by = plugin
            .as_ref()
            .filter(|s| rotation::retired(s))
            .and_then(|s| {
                s.metadata
                    .annotations
                    .as_ref()?
                    .get(rotation::RETIRED_ANNOTATION)
                    .cloned()
            });
        if let Some(plugin) = plugin.filter(|s| !rotation::retired(s)) {
            let promoted = reset_marker(&plugin).filter(|m| {
                Some(m.as_str()) != marker && m.starts_with(rotation::PROMOTION_MARKER_PREFIX)
            });
            match promoted {
                Some(new_marker) => {
                    return MeshCa::from_cacerts_secret(&secret_bytes(&plugin))
                        .map(|loaded| Some((Arc::new(loaded), Some(new_marker))))
                        .map_err(|e| self.corrupted(pki::PLUGIN_CA_SECRET, e));
                }
                None if ca.source() != pki::CaSource::SelfSigned => return Ok(None),
                // A `cacerts` made by hand beside a running self-signed CA: weft-ca is still
                // the one kept below.
                None => {}
            }
        } else if ca.source() != pki::CaSource::SelfSigned {
            // `cacerts` was in force and a rotation to a self-signed root retired it, after
            // marking `weft-ca` with the same marker. A `cacerts` merely deleted is not a
            // rotation: this replica keeps the plug-in CA it holds until restarted.
            let own = secrets.get_opt(pki::WEFT_CA_SECRET).await.map_err(api)?;
            let promoted = own
                .as_ref()
                .and_then(reset_marker)
                .filter(|m| Some(m.as_str()) != marker && Some(m) == retired_by.as_ref());
            return match (own, promoted) {
                (Some(own), Some(new_marker)) => MeshCa::from_weft_ca_secret(&secret_bytes(&own))
                    .map(|loaded| Some((Arc::new(loaded), Some(new_marker))))
                    .map_err(|e| self.corrupted(pki::WEFT_CA_SECRET, e)),
                _ => Ok(None),
            };
        }
        let Some(secret) = secrets.get_opt(pki::WEFT_CA_SECRET).await.map_err(api)? else {
            if !self.leading() {
                return Ok(None);
            }
            tracing::warn!(
                "Secret {}/weft-ca was deleted; restoring it with the same root",
                self.namespace
            );
            return match secrets
                .create(&PostParams::default(), &self.secret_for(ca))
                .await
            {
                Ok(_) => Ok(None),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(None),
                Err(e) => Err(api(e)),
            };
        };
        let loaded = MeshCa::from_weft_ca_secret(&secret_bytes(&secret))
            .map_err(|e| self.corrupted(pki::WEFT_CA_SECRET, e))?;
        if loaded.own_roots_pem() == ca.own_roots_pem() {
            return Ok(None);
        }
        let now = reset_marker(&secret);
        if now.is_some() && now.as_deref() != marker {
            return Ok(Some((Arc::new(loaded), now)));
        }
        Err(CaProblem::Corrupted {
            namespace: self.namespace.clone(),
            secret: pki::WEFT_CA_SECRET.into(),
            reason: "it now holds a different root than the one proxies trust; put the old one \
                     back, or replace the root on purpose with `weft ca reset`"
                .into(),
        })
    }

    /// ConfigMap `weft-ca-root-cert` in every namespace that is not excluded; server-side apply
    /// with force reverts edits and recreates deletions.
    async fn publish_roots(&self, ca: &MeshCa) -> Result<(), CaProblem> {
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        let roots = ca.roots_pem();
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let listed = namespaces.list(&ListParams::default()).await.map_err(api)?;
        // Forget failures of namespaces that are gone.
        if let Ok(mut failures) = self.publish_failures.lock() {
            failures.retain(|ns, _| {
                listed
                    .iter()
                    .any(|n| n.metadata.name.as_deref() == Some(ns))
            });
        }
        for ns in listed {
            let name = ns.metadata.name.clone().unwrap_or_default();
            if contract::NEVER_INJECTED_NAMESPACES.contains(&name.as_str())
                || ns.metadata.deletion_timestamp.is_some()
            {
                continue;
            }
            let api_cm: Api<ConfigMap> = Api::namespaced(self.client.clone(), &name);
            if let Some(cm) = api_cm
                .get_opt(contract::ROOT_CERT_CONFIGMAP)
                .await
                .map_err(api)?
                && cm
                    .data
                    .as_ref()
                    .and_then(|d| d.get(contract::ROOT_CERT_KEY))
                    == Some(&roots)
            {
                continue;
            }
            let cm = serde_json::json!({
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": contract::ROOT_CERT_CONFIGMAP, "namespace": name,
                             "labels": {"app.kubernetes.io/managed-by": "weft"}},
                "data": {contract::ROOT_CERT_KEY: roots},
            });
            match api_cm
                .patch(contract::ROOT_CERT_CONFIGMAP, &params, &Patch::Apply(&cm))
                .await
            {
                Ok(_) => self.publish_failed(&name, None),
                // Deleted since the list: nothing to publish into.
                Err(kube::Error::Api(e))
                    if e.code == 403 && e.message.contains("being terminated") =>
                {
                    tracing::debug!(namespace = %name, "namespace is terminating; root not published");
                }
                Err(e) => self.publish_failed(&name, Some(e.to_string())),
            }
        }
        Ok(())
    }

    /// Records the outcome of one namespace's root ConfigMap write and logs it: a warning once
    /// per distinct failure (see `publish_failures`), info when a failing namespace recovers.
    fn publish_failed(&self, namespace: &str, error: Option<String>) {
        let Ok(mut failures) = self.publish_failures.lock() else {
            return;
        };
        let e = error.as_deref().unwrap_or_default();
        match note_publish(&mut failures, namespace, error.clone()) {
            PublishNote::Quiet => {}
            PublishNote::Recovered => tracing::info!(%namespace, "root ConfigMap published again"),
            PublishNote::NewFailure => {
                tracing::warn!(%namespace, "cannot publish the root ConfigMap: {e}")
            }
            PublishNote::SameFailure => {
                tracing::debug!(%namespace, "still cannot publish the root ConfigMap: {e}")
            }
        }
    }

    /// Every webhook entry of both configurations (the injector's pod entries and the
    /// MeshConfig defaulting one in `weft-sidecar-injector`; all of `weft-validator`).
    async fn patch_ca_bundles(&self, ca: &MeshCa) -> Result<(), CaProblem> {
        let bundle = ByteString(ca.roots_pem().into_bytes());
        let mutating: Api<MutatingWebhookConfiguration> = Api::all(self.client.clone());
        if let Some(config) = mutating.get_opt(MUTATING_WEBHOOK).await.map_err(api)? {
            let stale: Vec<usize> = config
                .webhooks
                .iter()
                .flatten()
                .enumerate()
                .filter(|(_, w)| w.client_config.ca_bundle.as_ref() != Some(&bundle))
                .map(|(i, _)| i)
                .collect();
            patch_bundles(&mutating, MUTATING_WEBHOOK, &stale, &bundle).await?;
        }
        let validating: Api<ValidatingWebhookConfiguration> = Api::all(self.client.clone());
        if let Some(config) = validating.get_opt(VALIDATING_WEBHOOK).await.map_err(api)? {
            let stale: Vec<usize> = config
                .webhooks
                .iter()
                .flatten()
                .enumerate()
                .filter(|(_, w)| w.client_config.ca_bundle.as_ref() != Some(&bundle))
                .map(|(i, _)| i)
                .collect();
            patch_bundles(&validating, VALIDATING_WEBHOOK, &stale, &bundle).await?;
        }
        Ok(())
    }
}

/// How loud one root ConfigMap write's outcome is.
#[derive(Debug, PartialEq, Eq)]
enum PublishNote {
    Quiet,
    Recovered,
    NewFailure,
    SameFailure,
}

/// Updates the failures map (namespace → last error) with one write's outcome.
fn note_publish(
    failures: &mut BTreeMap<String, String>,
    namespace: &str,
    error: Option<String>,
) -> PublishNote {
    match error {
        None if failures.remove(namespace).is_some() => PublishNote::Recovered,
        None => PublishNote::Quiet,
        Some(e) if failures.get(namespace) == Some(&e) => PublishNote::SameFailure,
        Some(e) => {
            failures.insert(namespace.to_string(), e);
            PublishNote::NewFailure
        }
    }
}

async fn patch_bundles<K>(
    api_: &Api<K>,
    name: &str,
    stale: &[usize],
    bundle: &ByteString,
) -> Result<(), CaProblem>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    if stale.is_empty() {
        return Ok(());
    }
    let ops: Vec<serde_json::Value> = stale
        .iter()
        .map(|i| serde_json::json!({"op": "add", "path": format!("/webhooks/{i}/clientConfig/caBundle"), "value": bundle}))
        .collect();
    let patch: json_patch::Patch = serde_json::from_value(serde_json::Value::Array(ops))
        .map_err(|e| CaProblem::Api(e.to_string()))?;
    api_.patch(name, &PatchParams::default(), &Patch::<()>::Json(patch))
        .await
        .map_err(api)?;
    tracing::info!(
        webhook = name,
        count = stale.len(),
        "caBundle set to the mesh root"
    );
    Ok(())
}

/// Secret `weft-ca` holding `ca`'s root and key; `reset` is the [`RESET_ANNOTATION`] value
/// (`weft ca reset` sets it, the operator's own first root has none).
pub fn weft_ca_secret(ca: &MeshCa, namespace: &str, reset: Option<&str>) -> Secret {
    Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(pki::WEFT_CA_SECRET.into()),
            namespace: Some(namespace.into()),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/managed-by".into(),
                "weft".into(),
            )])),
            annotations: reset
                .map(|r| BTreeMap::from([(RESET_ANNOTATION.to_string(), r.to_string())])),
            ..Default::default()
        },
        type_: Some("Opaque".into()),
        string_data: Some(ca.to_secret_data()),
        ..Default::default()
    }
}

fn reset_marker(secret: &Secret) -> ResetMarker {
    secret
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(RESET_ANNOTATION))
        .cloned()
}

fn api(e: kube::Error) -> CaProblem {
    CaProblem::Api(e.to_string())
}

fn secret_bytes(secret: &Secret) -> BTreeMap<String, Vec<u8>> {
    let mut out: BTreeMap<String, Vec<u8>> = secret
        .data
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect();
    out.extend(
        secret
            .string_data
            .clone()
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.into_bytes())),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_publish_failure_warns_once_and_recovery_is_told() {
        let mut failures = BTreeMap::new();
        let forbidden = || Some("403 forbidden".to_string());
        assert_eq!(note_publish(&mut failures, "a", None), PublishNote::Quiet);
        assert_eq!(
            note_publish(&mut failures, "a", forbidden()),
            PublishNote::NewFailure
        );
        assert_eq!(
            note_publish(&mut failures, "a", forbidden()),
            PublishNote::SameFailure
        );
        // Another namespace, or another error, is news again.
        assert_eq!(
            note_publish(&mut failures, "b", forbidden()),
            PublishNote::NewFailure
        );
        assert_eq!(
            note_publish(&mut failures, "a", Some("timeout".into())),
            PublishNote::NewFailure
        );
        assert_eq!(
            note_publish(&mut failures, "a", None),
            PublishNote::Recovered
        );
        assert_eq!(note_publish(&mut failures, "a", None), PublishNote::Quiet);
        assert_eq!(failures.len(), 1);
    }
}
