//! Applies the root-rotation state machine (`super::rotation`) on the cluster. Every replica:
//! reads the state (ConfigMap `weft-ca-rotation`) and the new root (Secret `weft-ca-next`) into
//! a [`RotationView`] that the CA-bundle controller turns into the CA it signs and trusts with,
//! answers proxies' trust polls (`POST /v1/trust`, [`trust_router`]) and, while a rotation is
//! under way, publishes what its proxies reported under its own key of ConfigMap
//! `weft-ca-rotation-acks`. The leader alone observes the bundles and the reports, decides, and
//! writes: the next phase, the promotion of the new root into Secret `weft-ca`, and at the end
//! an emptied `weft-ca-next`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::extract::{Extension, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use tokio::sync::watch;

use super::ca_bundle::{MUTATING_WEBHOOK, RESET_ANNOTATION, VALIDATING_WEBHOOK};
use super::rotation::{
    self, ACKS_CONFIGMAP, Decision, NEXT_CA_SECRET, Observed, Phase, ProxySeen, ROTATION_CONFIGMAP,
    RotationState, STATE_KEY,
};
use crate::contract;
use crate::discovery::PeerCert;
use crate::pki::rotation::{
    CONNECTED_WITHIN, MAX_TRUST_BYTES, TrustAnswer, TrustReport, fingerprints_of_pem,
};
use crate::pki::{self, Issuer, MeshCa};

const PERIOD: Duration = Duration::from_secs(2);
/// Most pods one replica remembers (a report is a few hundred bytes).
const MAX_REMEMBERED: usize = 20_000;

/// What every replica knows of the rotation: the state and, while a phase signs with it, the
/// new root's CA.
#[derive(Debug, Clone, Default)]
pub struct RotationView {
    pub state: Option<RotationState>,
    pub next: Option<Arc<MeshCa>>,
    /// Why the view could not be read (kept as the last good one meanwhile).
    pub problem: Option<String>,
    /// The state ConfigMap's resourceVersion: the leader writes only over what it read.
    pub resource_version: Option<String>,
}

impl RotationView {
    /// The active rotation's state, None when none is under way.
    pub fn active(&self) -> Option<&RotationState> {
        self.state.as_ref().filter(|s| s.phase.active())
    }
}

/// Proxies' reports heard by this replica, by pod.
pub type Acks = Arc<Mutex<BTreeMap<String, ProxySeen>>>;

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn rfc3339_now() -> String {
    k8s_openapi::jiff::Timestamp::now().to_string()
}

// === the trust poll ===

/// What `POST /v1/trust` answers from.
#[derive(Clone)]
pub struct TrustState {
    pub ca: watch::Receiver<Option<Arc<MeshCa>>>,
    pub issuer: Option<watch::Receiver<Option<Arc<dyn Issuer>>>>,
    pub view: watch::Receiver<RotationView>,
    pub acks: Acks,
}

/// `POST /v1/trust` (merged into the :15012 router).
pub fn trust_router(state: TrustState) -> Router {
    Router::new()
        .route(pki::rotation::PATH_TRUST, post(trust))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_TRUST_BYTES))
        .with_state(state)
}

async fn trust(
    State(state): State<TrustState>,
    peer: Option<Extension<PeerCert>>,
    body: axum::body::Bytes,
) -> Response {
    let Some(ca) = state.ca.borrow().clone() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "the mesh CA is not loaded yet",
        )
            .into_response();
    };
    let report: TrustReport = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("the body must be a trust report (pod, bundle, leafRoot): {e}"),
            )
                .into_response();
        }
    };
    let external = state.issuer.as_ref().and_then(|rx| rx.borrow().clone());
    let rotating = state.view.borrow().active().map(|s| s.renew_within_seconds);
    let answer = answer_for(&ca, external.map(|i| i.roots_pem()), rotating);
    // Only a proxy that proved an identity with its certificate is counted; one whose
    // certificate no longer verifies still gets the bundle (roots are public) and renews.
    if let Some(identity) = peer.as_ref().and_then(|p| p.spiffe_id.clone())
        && !report.pod.is_empty()
        && report.pod.len() <= 253
        && let Ok(mut acks) = state.acks.lock()
    {
        let now = now_unix();
        if acks.len() >= MAX_REMEMBERED {
            acks.retain(|_, s| now - s.seen <= CONNECTED_WITHIN.as_secs() as i64);
        }
        if acks.len() < MAX_REMEMBERED || acks.contains_key(&report.pod) {
            acks.insert(
                report.pod.clone(),
                ProxySeen {
                    identity,
                    bundle: report.bundle.iter().cloned().collect(),
                    leaf_root: report.leaf_root.clone(),
                    seen: now,
                },
            );
        }
    }
    Json(answer).into_response()
}

/// The answer to a trust poll, with `ca` (the CA this replica serves with, trusting what the
/// phase says), the roots of an external issuer that signs (if any), and the renewal spread of
/// a rotation under way (None: none is). During a rotation a certificate not from the current
/// signer is renewed early: the phases guarantee every bundle already trusts that signer.
/// Otherwise only a certificate that chains to nothing trusted any more is (a proxy that was
/// away while a rotation ended, or after `weft ca reset`): switching issuer does not make every
/// proxy renew at once, before its peers trust the new issuer.
pub fn answer_for(
    ca: &MeshCa,
    external_roots: Option<Vec<String>>,
    rotating: Option<u64>,
) -> TrustAnswer {
    let signer_roots = match (rotating, external_roots) {
        (Some(_), Some(roots)) => roots,
        (Some(_), None) => vec![ca.own_roots_pem()],
        (None, _) => ca.root_certs_pem(),
    };
    TrustAnswer {
        roots: ca.root_certs_pem(),
        signer_roots,
        renew_within_seconds: rotating.unwrap_or(0),
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::pki::WorkloadKey;
    use crate::pki::rotation::proxy_action;

    const ID: &str = "spiffe://cluster.local/ns/a/sa/b";

    fn root() -> MeshCa {
        MeshCa::generate_root("cluster.local", Duration::from_secs(86_400)).unwrap()
    }

    fn leaf(ca: &MeshCa) -> Vec<Vec<u8>> {
        let key = WorkloadKey::generate().unwrap();
        let issued = ca
            .sign_workload_csr(
                &key.csr_pem(ID).unwrap(),
                ID,
                Duration::from_secs(3600),
                SystemTime::now(),
            )
            .unwrap();
        pki::certificates_from_pem(&issued.cert_chain_pem.concat()).unwrap()
    }

    #[test]
    fn only_a_rotation_makes_proxies_renew_from_the_signer_otherwise_only_untrusted_leaves() {
        let (mesh, other) = (root(), root());
        let now = SystemTime::now();
        // An issuer switch (another root trusted beside the mesh root, no rotation): a proxy
        // holding a mesh-root certificate learns the bundle but does not renew early.
        let trusting = mesh.also_trusting(&[other.own_roots_pem()]).unwrap();
        let held = pki::certificates_from_pem(&mesh.own_roots_pem()).unwrap();
        let switch = answer_for(&trusting, Some(vec![other.own_roots_pem()]), None);
        let act = proxy_action(&leaf(&mesh), &held, &switch, now);
        assert_eq!(act.new_roots.map(|r| r.len()), Some(2));
        assert_eq!(act.renew_within, None);
        // During a rotation the same certificate is renewed within the rotation's spread.
        let rotating = answer_for(&trusting, Some(vec![other.own_roots_pem()]), Some(9));
        let act = proxy_action(&leaf(&mesh), &held, &rotating, now);
        assert_eq!(act.renew_within, Some(Duration::from_secs(9)));
        // After a rotation: a certificate from a root no longer trusted is renewed.
        let after = answer_for(&other, None, None);
        let act = proxy_action(&leaf(&mesh), &held, &after, now);
        assert_eq!(act.renew_within, Some(pki::rotation::DEFAULT_RENEW_WITHIN));
    }
}

// === the controller ===

pub struct RotationController {
    pub client: Client,
    pub namespace: String,
    /// This replica's name: its key in [`ACKS_CONFIGMAP`].
    pub instance: String,
    pub view: watch::Sender<RotationView>,
    pub acks: Acks,
    /// The CA this replica serves with (the leader checks its bundle is published).
    pub ca: watch::Receiver<Option<Arc<MeshCa>>>,
    /// The issuer controller's view: in an issuer switch, whether the new issuer is ready.
    pub issuer: watch::Receiver<super::issuer::IssuerStatus>,
    pub leading: Arc<AtomicBool>,
}

/// The new root's Secret as last loaded, so it is parsed once.
#[derive(Default)]
struct Loaded {
    next_data: Option<BTreeMap<String, Vec<u8>>>,
    next: Option<Arc<MeshCa>>,
    published_acks: Option<String>,
}

/// Empties Secret [`NEXT_CA_SECRET`] for the rotation `state` ended, with its marker. Emptied,
/// not deleted (the operator deletes nothing, config/rbac): its key is weft-ca's now, or was
/// abandoned; the next `weft ca rotate` replaces it. A Secret already gone is fine.
pub async fn empty_next(secrets: &Api<Secret>, state: &RotationState) -> Result<(), kube::Error> {
    let empty = serde_json::json!({
        "metadata": {"annotations": {rotation::RETIRED_ANNOTATION: state.marker()}},
        "data": null,
    });
    match secrets
        .patch(
            NEXT_CA_SECRET,
            &PatchParams::default(),
            &Patch::Merge(&empty),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}

impl RotationController {
    pub async fn run(self) {
        let mut loaded = Loaded::default();
        // The ended rotation whose leftovers this leader has checked ([`Self::retire_leftover`]).
        let mut retired: Option<String> = None;
        loop {
            match self.read(&mut loaded).await {
                Ok(view) => {
                    self.view.send_replace(view);
                }
                Err(problem) => {
                    tracing::warn!("root rotation: {problem}");
                    self.view.send_modify(|v| v.problem = Some(problem.clone()));
                }
            }
            let (active, rv) = {
                let view = self.view.borrow();
                (view.active().cloned(), view.resource_version.clone())
            };
            if let Some(state) = active {
                if let Err(e) = self.publish_acks(&mut loaded).await {
                    tracing::debug!("root rotation: cannot publish proxy reports: {e}");
                }
                if self.leading.load(Ordering::Acquire)
                    && let Err(e) = self.lead(&state, rv.as_deref()).await
                {
                    tracing::warn!("root rotation: {e}");
                }
            } else {
                let ended = self.view.borrow().state.clone();
                if let Some(state) = ended
                    && self.leading.load(Ordering::Acquire)
                    && retired.as_ref() != Some(&state.id)
                {
                    match self.retire_leftover(&state).await {
                        Ok(()) => retired = Some(state.id.clone()),
                        Err(e) => tracing::warn!("root rotation: {e}"),
                    }
                }
            }
            tokio::time::sleep(PERIOD).await;
        }
    }

    fn configmaps(&self) -> Api<ConfigMap> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    fn secrets(&self) -> Api<Secret> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    async fn read(&self, loaded: &mut Loaded) -> Result<RotationView, String> {
        let cm = self
            .configmaps()
            .get_opt(ROTATION_CONFIGMAP)
            .await
            .map_err(|e| format!("reading ConfigMap {ROTATION_CONFIGMAP}: {e}"))?;
        let resource_version = cm
            .as_ref()
            .and_then(|c| c.metadata.resource_version.clone());
        let state = match cm {
            None => None,
            Some(cm) => RotationState::from_data(&cm.data.unwrap_or_default())?,
        };
        let needs_next = state
            .as_ref()
            .and_then(rotation::plan)
            .is_some_and(|p| p.signer == rotation::Signer::Next);
        if !needs_next {
            return Ok(RotationView {
                state,
                next: None,
                problem: None,
                resource_version,
            });
        }
        let secret = self
            .secrets()
            .get_opt(NEXT_CA_SECRET)
            .await
            .map_err(|e| format!("reading Secret {NEXT_CA_SECRET}: {e}"))?;
        let Some(secret) = secret else {
            return Err(format!(
                "the rotation signs with the new root but Secret {}/{NEXT_CA_SECRET} is gone; \
                 restore it, or `weft ca rotate --abort`",
                self.namespace
            ));
        };
        let data = secret_bytes(&secret);
        if loaded.next_data.as_ref() != Some(&data) || loaded.next.is_none() {
            // A plug-in CA's material keeps Istio's keys (`weft ca rotate --cacerts`).
            let plugin = state.as_ref().is_some_and(|s| s.to_plugin.is_some());
            let loaded_ca = if plugin {
                MeshCa::from_cacerts_secret(&data)
            } else {
                MeshCa::from_weft_ca_secret(&data)
            };
            let ca = loaded_ca.map_err(|e| {
                format!(
                    "Secret {}/{NEXT_CA_SECRET} does not hold a usable root ({e}); \
                     `weft ca rotate --abort` while in phase (a) or (b)",
                    self.namespace
                )
            })?;
            loaded.next = Some(Arc::new(ca));
            loaded.next_data = Some(data);
        }
        Ok(RotationView {
            state,
            next: loaded.next.clone(),
            problem: None,
            resource_version,
        })
    }

    /// This replica's reports, under its own key (server-side apply: replicas never conflict).
    async fn publish_acks(&self, loaded: &mut Loaded) -> Result<(), kube::Error> {
        let now = now_unix();
        let recent: BTreeMap<String, ProxySeen> = match self.acks.lock() {
            Ok(acks) => acks
                .iter()
                .filter(|(_, s)| now - s.seen <= CONNECTED_WITHIN.as_secs() as i64)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            Err(_) => return Ok(()),
        };
        let text = serde_json::to_string(&recent).unwrap_or_default();
        if loaded.published_acks.as_ref() == Some(&text) {
            return Ok(());
        }
        let cm = serde_json::json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": ACKS_CONFIGMAP, "namespace": self.namespace,
                         "labels": {"app.kubernetes.io/managed-by": "weft"}},
            "data": {self.instance.clone(): text},
        });
        let manager = format!("{}-{}", contract::FIELD_MANAGER, self.instance);
        let manager: String = manager.chars().take(128).collect();
        self.configmaps()
            .patch(
                ACKS_CONFIGMAP,
                &PatchParams::apply(&manager).force(),
                &Patch::Apply(&cm),
            )
            .await?;
        loaded.published_acks = Some(text);
        Ok(())
    }

    /// The leader's pass: observe, decide, apply.
    /// For a rotation that ended (done or aborted): if [`NEXT_CA_SECRET`] still holds its new
    /// root, whoever wrote the end (a leader, or `weft ca rotate --abort` in (a)) stopped before
    /// emptying it, and the key is emptied now. A Secret holding another root (a rotation
    /// being started writes it before its state) is left alone.
    async fn retire_leftover(&self, state: &RotationState) -> Result<(), String> {
        let secret = self
            .secrets()
            .get_opt(NEXT_CA_SECRET)
            .await
            .map_err(|e| format!("reading Secret {NEXT_CA_SECRET}: {e}"))?;
        let held: Vec<String> = secret
            .and_then(|s| s.data)
            .unwrap_or_default()
            .values()
            .map(|b| String::from_utf8_lossy(&b.0).into_owned())
            .collect();
        let ours = fingerprints_of_pem(&state.new_roots);
        if fingerprints_of_pem(&held).is_disjoint(&ours) {
            return Ok(());
        }
        empty_next(&self.secrets(), state).await.map_err(|e| {
            format!(
                "rotation {} ended ({}) but Secret {NEXT_CA_SECRET} still holds its new root's key, and emptying it failed: {e}",
                state.id, state.phase
            )
        })?;
        tracing::info!(rotation = %state.id, "root rotation: emptied Secret {NEXT_CA_SECRET}, left holding the ended rotation's key");
        Ok(())
    }

    async fn lead(&self, state: &RotationState, rv: Option<&str>) -> Result<(), String> {
        // In (c) the new root (and issuer) must be promoted before anything else: entering (c)
        // does it, and a failure there (or a leader change) is made up for here.
        if state.phase == Phase::Dropping {
            self.promote(state).await?;
        }
        let observed = self.observe(state).await?;
        let decision = rotation::decide(state, &observed);
        match decision {
            Decision::Wait(why) => {
                if why != state.waiting_for {
                    let mut next = state.clone();
                    next.waiting_for = why;
                    write_state(&self.configmaps(), &next, rv).await?;
                }
                Ok(())
            }
            Decision::IssuerReady(roots) => {
                write_state(&self.configmaps(), &state.with_issuer_roots(roots), rv).await?;
                tracing::info!(rotation = %state.id, "root rotation: the new issuer passed a dry signing; its roots join every trust bundle");
                Ok(())
            }
            Decision::Enter {
                to,
                promote,
                retire_next,
            } => {
                // The phase first, over the version read, then the promotion: an abort written
                // meanwhile makes this write fail, so nothing is promoted for a rotation going
                // back (promoting first let a concurrent abort leave `weft-ca` on the new root
                // while RollingBack waited for the old one, for ever). Once in (c) no abort is
                // possible, and every (c) pass promotes again until it took ([`Self::lead`]).
                let next = state.entering(to, rfc3339_now());
                write_state(&self.configmaps(), &next, rv).await?;
                tracing::info!(rotation = %state.id, from = %state.phase, to = %to, "root rotation: {}", to.describe());
                if promote {
                    self.promote(&next).await?;
                }
                if retire_next {
                    empty_next(&self.secrets(), state)
                        .await
                        .map_err(|e| format!("emptying Secret {NEXT_CA_SECRET}: {e}"))?;
                }
                Ok(())
            }
        }
    }

    async fn observe(&self, state: &RotationState) -> Result<Observed, String> {
        let old = fingerprints_of_pem(&state.old_roots);
        let new = fingerprints_of_pem(&state.new_roots);
        // What every bundle must hold, and must not, in this phase.
        let (required, forbidden): (BTreeSet<String>, BTreeSet<String>) = match state.phase {
            Phase::Dropping => (new.clone(), state.leaving()),
            _ => (old.union(&new).cloned().collect(), BTreeSet::new()),
        };
        let judge = |what: String, pem: Option<&str>| -> Option<String> {
            let held = fingerprints_of_pem(&[pem.unwrap_or_default()]);
            if !held.is_superset(&required) {
                Some(format!("{what} lacks a root of this phase"))
            } else if !held.is_disjoint(&forbidden) {
                Some(format!("{what} still holds the old root"))
            } else {
                None
            }
        };
        let mut unpublished = Vec::new();
        // This replica's own CA first: the CA-bundle controller follows the view within a pass.
        let own = self.ca.borrow().as_ref().map(|ca| ca.roots_pem());
        unpublished.extend(judge("this replica's trust bundle".into(), own.as_deref()));
        let root_cm = self
            .configmaps()
            .get_opt(contract::ROOT_CERT_CONFIGMAP)
            .await
            .map_err(|e| e.to_string())?;
        let root_pem = root_cm
            .and_then(|cm| cm.data)
            .and_then(|d| d.get(contract::ROOT_CERT_KEY).cloned());
        unpublished.extend(judge(
            format!(
                "ConfigMap {}/{}",
                self.namespace,
                contract::ROOT_CERT_CONFIGMAP
            ),
            root_pem.as_deref(),
        ));
        let mutating: Api<MutatingWebhookConfiguration> = Api::all(self.client.clone());
        if let Some(config) = mutating
            .get_opt(MUTATING_WEBHOOK)
            .await
            .map_err(|e| e.to_string())?
        {
            for w in config.webhooks.iter().flatten() {
                let pem = w
                    .client_config
                    .ca_bundle
                    .as_ref()
                    .map(|b| String::from_utf8_lossy(&b.0).into_owned());
                unpublished.extend(judge(
                    format!("the caBundle of webhook {}", w.name),
                    pem.as_deref(),
                ));
            }
        }
        let validating: Api<ValidatingWebhookConfiguration> = Api::all(self.client.clone());
        if let Some(config) = validating
            .get_opt(VALIDATING_WEBHOOK)
            .await
            .map_err(|e| e.to_string())?
        {
            for w in config.webhooks.iter().flatten() {
                let pem = w
                    .client_config
                    .ca_bundle
                    .as_ref()
                    .map(|b| String::from_utf8_lossy(&b.0).into_owned());
                unpublished.extend(judge(
                    format!("the caBundle of webhook {}", w.name),
                    pem.as_deref(),
                ));
            }
        }
        let acks_cm = self
            .configmaps()
            .get_opt(ACKS_CONFIGMAP)
            .await
            .map_err(|e| e.to_string())?;
        let replicas: Vec<BTreeMap<String, ProxySeen>> = acks_cm
            .and_then(|cm| cm.data)
            .unwrap_or_default()
            .values()
            .filter_map(|text| serde_json::from_str(text).ok())
            .collect();
        Ok(Observed {
            now: now_unix(),
            connected_within: CONNECTED_WITHIN.as_secs() as i64,
            unpublished: (!unpublished.is_empty()).then(|| unpublished.join("; ")),
            proxies: rotation::merge_acks(&replicas),
            next_issuer: self.issuer.borrow().next.clone(),
        })
    }

    /// Writes the new root into the Secret the mesh CA is loaded from, with this rotation's
    /// marker: Secret `weft-ca` (and a `cacerts` in force is retired, so `weft-ca` is loaded),
    /// or Secret `cacerts` for a plug-in CA. Every replica adopts it as its base CA, and a
    /// restarted replica loads it. Each part is skipped once it took, so every (c) pass may
    /// call this.
    async fn promote(&self, state: &RotationState) -> Result<(), String> {
        let marker_of = |s: &Secret| {
            s.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(RESET_ANNOTATION).cloned())
        };
        let secrets = self.secrets();
        let plugin = secrets
            .get_opt(pki::PLUGIN_CA_SECRET)
            .await
            .map_err(|e| e.to_string())?;
        if state.to_plugin.is_some() {
            let promoted = plugin
                .as_ref()
                .is_some_and(|s| !rotation::retired(s) && marker_of(s) == Some(state.marker()));
            if !promoted {
                self.promote_into(state, pki::PLUGIN_CA_SECRET, plugin.is_some())
                    .await?;
            }
        } else {
            let own = secrets
                .get_opt(pki::WEFT_CA_SECRET)
                .await
                .map_err(|e| e.to_string())?;
            if own.as_ref().and_then(marker_of) != Some(state.marker()) {
                self.promote_into(state, pki::WEFT_CA_SECRET, own.is_some())
                    .await?;
            }
            // From a plug-in CA to a self-signed root: `cacerts` would win over `weft-ca` at
            // the next load, so it is emptied (the operator deletes nothing) and marked.
            if plugin.as_ref().is_some_and(|s| !rotation::retired(s)) {
                let retire = serde_json::json!({
                    "metadata": {"annotations": {rotation::RETIRED_ANNOTATION: state.marker()}},
                    "data": null,
                });
                secrets
                    .patch(
                        pki::PLUGIN_CA_SECRET,
                        &PatchParams::default(),
                        &Patch::Merge(&retire),
                    )
                    .await
                    .map_err(|e| format!("retiring Secret {}: {e}", pki::PLUGIN_CA_SECRET))?;
                tracing::info!(rotation = %state.id, "root rotation: Secret cacerts is retired (emptied); weft-ca's new root is the mesh root");
            }
        }
        if let Some(to) = &state.to_issuer {
            self.promote_issuer(to).await?;
        }
        Ok(())
    }

    /// Writes Secret `weft-ca-next`'s material into Secret `target` (`weft-ca`: `ca.crt`,
    /// `ca.key`; `cacerts`: Istio's four keys, `cert-chain.pem` removed when the new material
    /// has none), with the marker; created when it does not exist (`exists` false).
    async fn promote_into(
        &self,
        state: &RotationState,
        target: &str,
        exists: bool,
    ) -> Result<(), String> {
        let next = self
            .secrets()
            .get_opt(NEXT_CA_SECRET)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| {
                format!(
                    "Secret {NEXT_CA_SECRET} is gone: the new root cannot be promoted; restore it"
                )
            })?;
        let data = secret_bytes(&next);
        let (required, optional): (&[&str], &[&str]) = if state.to_plugin.is_some() {
            (
                &[
                    pki::PLUGIN_CA_CERT_KEY,
                    pki::PLUGIN_CA_KEY_KEY,
                    pki::PLUGIN_ROOT_CERT_KEY,
                ],
                &[pki::PLUGIN_CERT_CHAIN_KEY],
            )
        } else {
            (&[pki::WEFT_CA_CERT_KEY, pki::WEFT_CA_KEY_KEY], &[])
        };
        let mut patch_data = serde_json::Map::new();
        for &key in required.iter().chain(optional) {
            let value = match data.get(key) {
                Some(value) => {
                    serde_json::to_value(ByteString(value.clone())).map_err(|e| e.to_string())?
                }
                None if optional.contains(&key) => serde_json::Value::Null,
                None => return Err(format!("Secret {NEXT_CA_SECRET} has no key {key}")),
            };
            patch_data.insert(key.to_string(), value);
        }
        let failed = |e: kube::Error| format!("writing the new root into Secret {target}: {e}");
        if exists {
            // Merge: the user's labels and other annotations on `cacerts` stay; the retired
            // mark (if any) goes.
            let patch = serde_json::json!({
                "metadata": {"annotations": {RESET_ANNOTATION: state.marker(),
                                             rotation::RETIRED_ANNOTATION: null}},
                "data": patch_data,
            });
            self.secrets()
                .patch(target, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map_err(failed)?;
        } else {
            let secret: Secret = serde_json::from_value(serde_json::json!({
                "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                "metadata": {"name": target, "namespace": self.namespace,
                             "labels": {"app.kubernetes.io/managed-by": "weft"},
                             "annotations": {RESET_ANNOTATION: state.marker()}},
                "data": patch_data.into_iter().filter(|(_, v)| !v.is_null()).collect::<serde_json::Map<_, _>>(),
            }))
            .map_err(|e| e.to_string())?;
            self.secrets()
                .create(&PostParams::default(), &secret)
                .await
                .map_err(failed)?;
        }
        tracing::info!(rotation = %state.id, "root rotation: the new root is now Secret {target}'s");
        Ok(())
    }

    /// Writes the new issuer into ConfigMap `weft-ca-issuer` (its whole data, as `weft ca
    /// issuer set` does), so it signs after the rotation as during (b) and (c).
    async fn promote_issuer(&self, to: &BTreeMap<String, String>) -> Result<(), String> {
        let configmaps = self.configmaps();
        let failed = |e: kube::Error| format!("writing ConfigMap {}: {e}", pki::ISSUER_CONFIGMAP);
        match configmaps
            .get_opt(pki::ISSUER_CONFIGMAP)
            .await
            .map_err(failed)?
        {
            Some(cm) if cm.data.as_ref() != Some(to) => {
                // A merge patch (the operator may patch ConfigMaps, not update them): the new
                // issuer's keys, and null for every other key, so no stale key lingers.
                let mut data = serde_json::Map::new();
                for key in cm.data.iter().flat_map(|d| d.keys()) {
                    data.insert(key.clone(), serde_json::Value::Null);
                }
                for (key, value) in to {
                    data.insert(key.clone(), serde_json::Value::String(value.clone()));
                }
                configmaps
                    .patch(
                        pki::ISSUER_CONFIGMAP,
                        &PatchParams::default(),
                        &Patch::Merge(serde_json::json!({"data": data})),
                    )
                    .await
                    .map_err(failed)?;
                tracing::info!(
                    "root rotation: ConfigMap {} now names the new issuer",
                    pki::ISSUER_CONFIGMAP
                );
            }
            Some(_) => {}
            None => {
                let cm = ConfigMap {
                    metadata: kube::api::ObjectMeta {
                        name: Some(pki::ISSUER_CONFIGMAP.into()),
                        labels: Some(BTreeMap::from([(
                            "app.kubernetes.io/managed-by".into(),
                            "weft".into(),
                        )])),
                        ..Default::default()
                    },
                    data: Some(to.clone()),
                    ..Default::default()
                };
                configmaps
                    .create(&PostParams::default(), &cm)
                    .await
                    .map_err(failed)?;
            }
        }
        Ok(())
    }
}

/// Reads the state ConfigMap; None when absent.
pub async fn read_state(
    configmaps: &Api<ConfigMap>,
) -> Result<Option<(RotationState, Option<String>)>, String> {
    let Some(cm) = configmaps
        .get_opt(ROTATION_CONFIGMAP)
        .await
        .map_err(|e| format!("reading ConfigMap {ROTATION_CONFIGMAP}: {e}"))?
    else {
        return Ok(None);
    };
    let rv = cm.metadata.resource_version.clone();
    Ok(RotationState::from_data(&cm.data.unwrap_or_default())?.map(|s| (s, rv)))
}

/// Writes the state ConfigMap: over `resource_version` (the version read; a concurrent write,
/// such as `weft ca rotate --abort`, makes this fail with a conflict instead of being lost),
/// or creates it when None (fails if one exists: one rotation at a time).
pub async fn write_state(
    configmaps: &Api<ConfigMap>,
    state: &RotationState,
    resource_version: Option<&str>,
) -> Result<(), String> {
    let text = serde_json::to_string_pretty(state).map_err(|e| e.to_string())?;
    let cm = ConfigMap {
        metadata: kube::api::ObjectMeta {
            name: Some(ROTATION_CONFIGMAP.into()),
            resource_version: resource_version.map(String::from),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/managed-by".into(),
                "weft".into(),
            )])),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(STATE_KEY.to_string(), text)])),
        ..Default::default()
    };
    let result = match resource_version {
        // A merge patch carrying the resourceVersion is refused (409) if the object changed
        // since: optimistic concurrency with the `patch` verb the operator holds.
        Some(rv) => configmaps
            .patch(
                ROTATION_CONFIGMAP,
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({
                    "metadata": {"resourceVersion": rv},
                    "data": {STATE_KEY: cm.data.as_ref().and_then(|d| d.get(STATE_KEY))},
                })),
            )
            .await
            .map(|_| ()),
        None => configmaps
            .create(&PostParams::default(), &cm)
            .await
            .map(|_| ()),
    };
    result.map_err(|e| format!("writing ConfigMap {ROTATION_CONFIGMAP}: {e}"))
}

pub(crate) fn secret_bytes(secret: &Secret) -> BTreeMap<String, Vec<u8>> {
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

/// The leader's writes against a fake API server: what it writes, in which order, and what it
/// leaves alone when a write is refused.
#[cfg(test)]
mod controller_tests {
    use std::time::Duration;

    use super::*;
    use crate::pki::rotation::fingerprint;

    const NS: &str = "weft-system";
    const CM: &str = "/api/v1/namespaces/weft-system/configmaps";
    const SECRETS: &str = "/api/v1/namespaces/weft-system/secrets";

    type Calls = Arc<Mutex<Vec<(String, String, String)>>>;

    /// A client whose API server answers `respond(method, path)` with (status, body) and
    /// records (method, path, request body) of every request.
    fn fake_client(
        respond: impl Fn(&str, &str) -> (u16, serde_json::Value) + Send + Sync + Clone + 'static,
    ) -> (Client, Calls) {
        let calls: Calls = Arc::default();
        let recorded = calls.clone();
        let service = tower::service_fn(move |req: hyper::Request<kube::client::Body>| {
            let (method, path) = (req.method().to_string(), req.uri().path().to_string());
            let (status, body) = respond(&method, &path);
            let recorded = recorded.clone();
            async move {
                let sent = req.into_body().collect_bytes().await.unwrap_or_default();
                if let Ok(mut calls) = recorded.lock() {
                    calls.push((method, path, String::from_utf8_lossy(&sent).into_owned()));
                }
                hyper::Response::builder()
                    .status(status)
                    .header("content-type", "application/json")
                    .body(kube::client::Body::from(body.to_string().into_bytes()))
            }
        });
        (Client::new(service, "default"), calls)
    }

    fn status(code: u16, reason: &str) -> (u16, serde_json::Value) {
        (
            code,
            serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                "message": reason, "reason": reason, "code": code}),
        )
    }

    fn root() -> MeshCa {
        MeshCa::generate_root("cluster.local", Duration::from_secs(86_400)).unwrap()
    }

    fn fp(ca: &MeshCa) -> String {
        fingerprint(&pki::certificates_from_pem(&ca.own_roots_pem()).unwrap()[0])
    }

    fn secret_json(
        name: &str,
        data: &BTreeMap<String, String>,
        marker: Option<&str>,
    ) -> serde_json::Value {
        let data: serde_json::Map<String, serde_json::Value> = data
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    serde_json::to_value(ByteString(v.clone().into_bytes())).unwrap(),
                )
            })
            .collect();
        let annotations = marker
            .map(|m| serde_json::json!({RESET_ANNOTATION: m}))
            .unwrap_or_else(|| serde_json::json!({}));
        serde_json::json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": name, "namespace": NS, "annotations": annotations},
            "data": data})
    }

    fn controller(client: Client, ca: Arc<MeshCa>) -> RotationController {
        RotationController {
            client,
            namespace: NS.into(),
            instance: "weft-operator-0".into(),
            view: watch::channel(RotationView::default()).0,
            acks: Acks::default(),
            ca: watch::channel(Some(ca)).1,
            issuer: watch::channel(super::super::issuer::IssuerStatus::default()).1,
            leading: Arc::new(AtomicBool::new(true)),
        }
    }

    fn writes(calls: &Calls) -> Vec<(String, String, String)> {
        calls
            .lock()
            .map(|c| c.clone())
            .unwrap_or_default()
            .into_iter()
            .filter(|(m, _, _)| m != "GET")
            .collect()
    }

    /// The end of (b) as the leader sees it: every bundle holds both roots and the one proxy
    /// holds a new-root certificate, so it enters (c) and promotes. `rotation_write` answers
    /// the leader's write of the state ConfigMap.
    fn end_of_b(
        rotation_write: (u16, serde_json::Value),
    ) -> (RotationController, RotationState, Calls) {
        let (old, new) = (root(), root());
        let state = RotationState::new(
            "r1".into(),
            vec![old.own_roots_pem()],
            vec![new.own_roots_pem()],
            10,
            "2026-12-06T08:00:00Z".into(),
        )
        .entering(Phase::Reissuing, "2026-12-06T08:00:20Z".into());
        let both = format!("{}{}", old.own_roots_pem(), new.own_roots_pem());
        let seen = ProxySeen {
            identity: "spiffe://cluster.local/ns/a/sa/b".into(),
            bundle: [fp(&old), fp(&new)].into_iter().collect(),
            leaf_root: Some(fp(&new)),
            seen: now_unix(),
        };
        let acks = serde_json::to_string(&BTreeMap::from([("p".to_string(), seen)])).unwrap();
        let next_data = new.to_secret_data();
        let (client, calls) = fake_client(move |method, path| {
            let root_cm = format!("{CM}/{}", contract::ROOT_CERT_CONFIGMAP);
            let acks_cm = format!("{CM}/{ACKS_CONFIGMAP}");
            let state_cm = format!("{CM}/{ROTATION_CONFIGMAP}");
            let next = format!("{SECRETS}/{NEXT_CA_SECRET}");
            match method {
                "GET" if path == root_cm => (
                    200,
                    serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap",
                        "metadata": {"name": contract::ROOT_CERT_CONFIGMAP, "namespace": NS},
                        "data": {contract::ROOT_CERT_KEY: both}}),
                ),
                "GET" if path == acks_cm => (
                    200,
                    serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap",
                        "metadata": {"name": ACKS_CONFIGMAP, "namespace": NS},
                        "data": {"weft-operator-0": acks}}),
                ),
                "GET" if path == next => (200, secret_json(NEXT_CA_SECRET, &next_data, None)),
                "PATCH" if path == state_cm => rotation_write.clone(),
                "PATCH" | "POST" if path.starts_with(SECRETS) => (
                    200,
                    secret_json(pki::WEFT_CA_SECRET, &next_data, Some("rotation-r1")),
                ),
                _ => status(404, "NotFound"),
            }
        });
        let trusting = Arc::new(old.also_trusting(&[new.own_roots_pem()]).unwrap());
        (controller(client, trusting), state, calls)
    }

    /// The reviewer's #13: `weft ca rotate --abort` in (a) writes Aborted, then empties
    /// weft-ca-next; a CLI that stops in between left the abandoned root's key there. The
    /// leader empties it for any ended rotation whose new root the Secret still holds, and
    /// leaves a Secret with another root alone (a `weft ca rotate` writes it before its state).
    #[tokio::test]
    async fn the_leader_empties_the_key_an_ended_rotation_left_in_weft_ca_next() {
        let (old, new, other) = (root(), root(), root());
        let state = RotationState::new(
            "r4".into(),
            vec![old.own_roots_pem()],
            vec![new.own_roots_pem()],
            10,
            "t".into(),
        )
        .entering(Phase::Aborted, "t".into());
        for (held, expect_emptied) in [
            (Some(new.to_secret_data()), true),
            (Some(other.to_secret_data()), false),
            (Some(BTreeMap::new()), false),
            (None, false),
        ] {
            let (client, calls) = fake_client(move |method, path| {
                match (method, path.strip_prefix(SECRETS).unwrap_or(path), &held) {
                    ("GET", "/weft-ca-next", Some(data)) => {
                        (200, secret_json(NEXT_CA_SECRET, data, None))
                    }
                    ("PATCH", "/weft-ca-next", _) => {
                        (200, secret_json(NEXT_CA_SECRET, &BTreeMap::new(), None))
                    }
                    _ => status(404, "NotFound"),
                }
            });
            let leader = controller(client, Arc::new(old.also_trusting(&[]).unwrap()));
            leader.retire_leftover(&state).await.unwrap();
            let writes = writes(&calls);
            if !expect_emptied {
                assert!(writes.is_empty(), "{writes:?}");
                continue;
            }
            assert_eq!(writes.len(), 1, "{writes:?}");
            let body: serde_json::Value = serde_json::from_str(&writes[0].2).unwrap();
            assert!(body["data"].is_null(), "{body}");
            assert_eq!(
                body["metadata"]["annotations"][rotation::RETIRED_ANNOTATION],
                "rotation-r4"
            );
        }
    }

    /// Commit 1d8141f: an abort written while the leader ends (b) makes the leader's write of
    /// (c) fail (409 over the version it read), and then nothing is promoted: `weft-ca` keeps
    /// the old root that RollingBack goes back to. Promoting before writing the phase left
    /// `weft-ca` on the new root while RollingBack waited for the old one, for ever.
    #[tokio::test]
    async fn an_abort_racing_the_end_of_b_leaves_weft_ca_on_the_old_root() {
        let (leader, state, calls) = end_of_b(status(409, "Conflict"));
        let outcome = leader.lead(&state, Some("41")).await;
        let err = outcome.expect_err("the phase write was refused");
        assert!(err.contains(ROTATION_CONFIGMAP), "{err}");
        let writes = writes(&calls);
        assert_eq!(writes.len(), 1, "only the refused phase write: {writes:?}");
        assert_eq!(writes[0].0, "PATCH");
        assert!(writes[0].1.ends_with(ROTATION_CONFIGMAP), "{writes:?}");
        assert!(
            writes[0].2.contains("\"resourceVersion\":\"41\"") && writes[0].2.contains("Dropping"),
            "the write is over the version read: {}",
            writes[0].2
        );
        assert!(
            !writes.iter().any(|(_, path, _)| path.starts_with(SECRETS)),
            "a Secret was written for a rotation going back: {writes:?}"
        );
    }

    /// The same pass when no abort came: the phase is written first, then `weft-ca` gets the
    /// new root with the rotation's marker (so the test above would see a promotion).
    #[tokio::test]
    async fn without_an_abort_the_end_of_b_writes_the_phase_then_promotes() {
        let (leader, state, calls) = end_of_b((
            200,
            serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": ROTATION_CONFIGMAP, "namespace": NS}}),
        ));
        leader.lead(&state, Some("41")).await.unwrap();
        let writes = writes(&calls);
        let order: Vec<String> = writes
            .iter()
            .map(|(m, p, _)| format!("{m} {}", p.rsplit('/').next().unwrap_or_default()))
            .collect();
        // weft-ca did not exist in this fake API: it is created, with the marker.
        assert_eq!(
            order,
            ["PATCH weft-ca-rotation", "POST secrets"],
            "{writes:?}"
        );
        assert!(writes[1].2.contains("rotation-r1"), "{}", writes[1].2);
    }

    /// `weft ca rotate --cacerts`: the new plug-in CA (Istio's keys, in weft-ca-next) goes into
    /// Secret cacerts with the marker, chain removed when the new material has none; once it
    /// carries the marker, a later (c) pass writes nothing.
    #[tokio::test]
    async fn a_new_plug_in_ca_is_promoted_into_cacerts_once() {
        let (old, new) = (root(), root());
        let plugin_data = |ca: &MeshCa| {
            let pem = ca.own_roots_pem();
            let key = ca.to_secret_data()[pki::WEFT_CA_KEY_KEY].clone();
            BTreeMap::from([
                (pki::PLUGIN_CA_CERT_KEY.to_string(), pem.clone()),
                (pki::PLUGIN_CA_KEY_KEY.to_string(), key),
                (pki::PLUGIN_ROOT_CERT_KEY.to_string(), pem),
            ])
        };
        let (old_data, new_data) = (plugin_data(&old), plugin_data(&new));
        assert!(
            MeshCa::from_cacerts_secret(
                &new_data
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone().into_bytes()))
                    .collect()
            )
            .is_ok()
        );
        let mut state = RotationState::new(
            "r2".into(),
            vec![old.own_roots_pem()],
            vec![new.own_roots_pem()],
            10,
            "t".into(),
        )
        .entering(Phase::Dropping, "t".into());
        state.to_plugin = Some("cacerts-next".into());
        for (cacerts_marker, expect_write) in [(None, true), (Some("rotation-r2"), false)] {
            let (old_data, new_served) = (old_data.clone(), new_data.clone());
            let (client, calls) = fake_client(move |method, path| {
                let new_data = &new_served;
                match (method, path.strip_prefix(SECRETS).unwrap_or(path)) {
                    ("GET", "/cacerts") => (200, secret_json("cacerts", &old_data, cacerts_marker)),
                    ("GET", "/weft-ca-next") => (200, secret_json(NEXT_CA_SECRET, new_data, None)),
                    ("PATCH", "/cacerts") => {
                        (200, secret_json("cacerts", new_data, Some("rotation-r2")))
                    }
                    _ => status(404, "NotFound"),
                }
            });
            let leader = controller(client, Arc::new(old.also_trusting(&[]).unwrap()));
            leader.promote(&state).await.unwrap();
            let writes = writes(&calls);
            if !expect_write {
                assert!(writes.is_empty(), "promoted twice: {writes:?}");
                continue;
            }
            assert_eq!(writes.len(), 1, "{writes:?}");
            let (method, path, body) = &writes[0];
            assert_eq!(
                (method.as_str(), path.as_str()),
                ("PATCH", "/api/v1/namespaces/weft-system/secrets/cacerts")
            );
            let body: serde_json::Value = serde_json::from_str(body).unwrap();
            assert_eq!(
                body["metadata"]["annotations"][RESET_ANNOTATION],
                "rotation-r2"
            );
            assert!(body["metadata"]["annotations"][rotation::RETIRED_ANNOTATION].is_null());
            assert!(
                body["data"]["cert-chain.pem"].is_null(),
                "the old chain goes: {body}"
            );
            let written = |key: &str| {
                body["data"][key]
                    .as_str()
                    .and_then(|b| {
                        use base64::Engine;
                        base64::engine::general_purpose::STANDARD.decode(b).ok()
                    })
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .unwrap_or_default()
            };
            for key in [
                pki::PLUGIN_CA_CERT_KEY,
                pki::PLUGIN_CA_KEY_KEY,
                pki::PLUGIN_ROOT_CERT_KEY,
            ] {
                assert_eq!(written(key), new_data[key], "{key}");
            }
        }
    }

    /// From a plug-in CA to a self-signed root: `weft-ca` gets the new root with the marker,
    /// then `cacerts` is retired (data removed, marked), because it would win at the next load.
    #[tokio::test]
    async fn rotating_off_a_plug_in_ca_promotes_weft_ca_then_retires_cacerts() {
        let (old, new) = (root(), root());
        let state = RotationState::new(
            "r3".into(),
            vec![old.own_roots_pem()],
            vec![new.own_roots_pem()],
            10,
            "t".into(),
        )
        .entering(Phase::Dropping, "t".into());
        let new_data = new.to_secret_data();
        let old_plugin = BTreeMap::from([
            (pki::PLUGIN_CA_CERT_KEY.to_string(), old.own_roots_pem()),
            (pki::PLUGIN_ROOT_CERT_KEY.to_string(), old.own_roots_pem()),
        ]);
        let (client, calls) = fake_client(move |method, path| {
            match (method, path.strip_prefix(SECRETS).unwrap_or(path)) {
                ("GET", "/cacerts") => (200, secret_json("cacerts", &old_plugin, None)),
                ("GET", "/weft-ca") => (200, secret_json("weft-ca", &BTreeMap::new(), None)),
                ("GET", "/weft-ca-next") => (200, secret_json(NEXT_CA_SECRET, &new_data, None)),
                ("PATCH", _) => (200, secret_json("x", &BTreeMap::new(), None)),
                _ => status(404, "NotFound"),
            }
        });
        let leader = controller(client, Arc::new(old.also_trusting(&[]).unwrap()));
        leader.promote(&state).await.unwrap();
        let writes = writes(&calls);
        let order: Vec<&str> = writes
            .iter()
            .map(|(_, p, _)| p.rsplit('/').next().unwrap_or_default())
            .collect();
        assert_eq!(order, ["weft-ca", "cacerts"], "{writes:?}");
        let retire: serde_json::Value = serde_json::from_str(&writes[1].2).unwrap();
        assert!(retire["data"].is_null(), "{retire}");
        assert_eq!(
            retire["metadata"]["annotations"][rotation::RETIRED_ANNOTATION],
            "rotation-r3"
        );
        // What the retired Secret then looks like counts as absent.
        let retired: Secret = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "cacerts", "annotations": {rotation::RETIRED_ANNOTATION: "rotation-r3"}}
        }))
        .unwrap();
        assert!(rotation::retired(&retired));
    }
}
