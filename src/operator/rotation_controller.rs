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

impl RotationController {
    pub async fn run(self) {
        let mut loaded = Loaded::default();
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
            let ca = MeshCa::from_weft_ca_secret(&data).map_err(|e| {
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
                    // Emptied, not deleted (the operator deletes nothing, config/rbac): its key
                    // is weft-ca's now, or was abandoned; the next `weft ca rotate` replaces it.
                    let empty = serde_json::json!({
                        "metadata": {"annotations": {"weft.dev/retired-by": state.marker()}},
                        "data": null,
                    });
                    match self
                        .secrets()
                        .patch(
                            NEXT_CA_SECRET,
                            &PatchParams::default(),
                            &Patch::Merge(&empty),
                        )
                        .await
                    {
                        Ok(_) => {}
                        Err(kube::Error::Api(e)) if e.code == 404 => {}
                        Err(e) => return Err(format!("emptying Secret {NEXT_CA_SECRET}: {e}")),
                    }
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
            Phase::Dropping => (new.clone(), old.clone()),
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

    /// Writes the new root into Secret `weft-ca` with this rotation's marker: every replica
    /// adopts it as its base CA, and a restarted replica loads it.
    async fn promote(&self, state: &RotationState) -> Result<(), String> {
        let promoted = self
            .secrets()
            .get_metadata_opt(pki::WEFT_CA_SECRET)
            .await
            .map_err(|e| e.to_string())?
            .and_then(|m| m.metadata.annotations?.get(RESET_ANNOTATION).cloned())
            .is_some_and(|marker| marker == state.marker());
        if !promoted {
            self.promote_root(state).await?;
        }
        if let Some(to) = &state.to_issuer {
            self.promote_issuer(to).await?;
        }
        Ok(())
    }

    /// Writes Secret `weft-ca-next`'s root and key into Secret `weft-ca`, with the marker.
    async fn promote_root(&self, state: &RotationState) -> Result<(), String> {
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
        let mut patch_data = serde_json::Map::new();
        for key in [pki::WEFT_CA_CERT_KEY, pki::WEFT_CA_KEY_KEY] {
            let value = data
                .get(key)
                .ok_or_else(|| format!("Secret {NEXT_CA_SECRET} has no key {key}"))?;
            patch_data.insert(
                key.to_string(),
                serde_json::to_value(ByteString(value.clone())).map_err(|e| e.to_string())?,
            );
        }
        let patch = serde_json::json!({
            "metadata": {"annotations": {RESET_ANNOTATION: state.marker()}},
            "data": patch_data,
        });
        self.secrets()
            .patch(
                pki::WEFT_CA_SECRET,
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
            .map_err(|e| {
                format!(
                    "writing the new root into Secret {}: {e}",
                    pki::WEFT_CA_SECRET
                )
            })?;
        tracing::info!(rotation = %state.id, "root rotation: the new root is now Secret weft-ca's");
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
