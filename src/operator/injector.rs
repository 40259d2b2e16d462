//! The admission webhook server on :15017 (TLS): `POST /inject` (the sidecar injector),
//! `POST /validate` (`weft-validator`) and `POST /default-meshconfig`. Reflectors keep the
//! namespaces, tags, revisions, injected pods and other meshes' injectors in memory, and every
//! review is answered by a pure function of `webhook` from a snapshot of them. No API call is
//! made on the request path, so a review costs microseconds and never waits on the API server.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::post;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::runtime::reflector::Store;
use kube::{Api, Client};

use super::ca_bundle::MUTATING_WEBHOOK;
use super::serving::{DRAIN_MAX_BYTES, DRAIN_MAX_TIME};
use crate::api::{MeshConfig, RevisionTag};
use crate::contract;
use crate::kube::events;
use crate::kube::metrics::{Endpoint, OperatorMetrics};
use crate::kube::reflect::{is_ready, ready, reflect};
use crate::webhook::{self, ForeignInjector, InjectorSettings, MeshState};

/// In-memory views of what injection decisions read.
#[derive(Clone)]
pub struct InjectorState {
    namespaces: Store<Namespace>,
    tags: Store<RevisionTag>,
    revisions: Store<MeshConfig>,
    injectors: Store<MutatingWebhookConfiguration>,
    /// Only pods labelled `weft.dev/revision`, trimmed to name, that label and phase: a
    /// revision is not deleted while pods run it.
    pods: Store<Pod>,
    settings: Arc<InjectorSettings>,
    mesh_name: String,
    metrics: Arc<OperatorMetrics>,
    /// Records the skip Events (off the request path).
    client: Client,
    /// This replica's name, the Events' reporting instance.
    instance: String,
    /// Names of the skip Events already recorded by this replica, so a Deployment's pods
    /// cost one API call, not one each.
    reported: Arc<Mutex<HashSet<String>>>,
}

/// Bound on remembered skip Events; past it the memory starts over (the API server still
/// answers AlreadyExists for repeats).
const REPORTED_LIMIT: usize = 10_000;

impl InjectorState {
    /// `pods` is the shared store of meshed pods ([`crate::kube::reflect::meshed_pods`]).
    pub fn start(
        client: &Client,
        settings: InjectorSettings,
        mesh_name: String,
        instance: String,
        pods: Store<Pod>,
        metrics: Arc<OperatorMetrics>,
    ) -> Self {
        let ns = settings.operator_namespace.clone();
        Self {
            namespaces: reflect(Api::<Namespace>::all(client.clone()), None),
            tags: reflect(Api::<RevisionTag>::namespaced(client.clone(), &ns), None),
            revisions: reflect(Api::<MeshConfig>::namespaced(client.clone(), &ns), None),
            injectors: reflect(
                Api::<MutatingWebhookConfiguration>::all(client.clone()),
                None,
            ),
            pods,
            settings: Arc::new(settings),
            mesh_name,
            metrics,
            client: client.clone(),
            instance,
            reported: Arc::default(),
        }
    }

    /// The kinds whose first list has not arrived yet (empty once synced).
    pub fn pending(&self) -> Vec<&'static str> {
        [
            ("Namespaces", is_ready(&self.namespaces)),
            ("RevisionTags", is_ready(&self.tags)),
            ("MeshConfigs", is_ready(&self.revisions)),
            ("MutatingWebhookConfigurations", is_ready(&self.injectors)),
            ("meshed Pods", is_ready(&self.pods)),
        ]
        .into_iter()
        .filter(|(_, ready)| !ready)
        .map(|(kind, _)| kind)
        .collect()
    }

    /// Ready once every store has its initial list.
    pub async fn wait_synced(&self) {
        tokio::join!(
            ready(&self.namespaces),
            ready(&self.tags),
            ready(&self.revisions),
            ready(&self.injectors),
            ready(&self.pods),
        );
    }

    /// The mesh as decisions see it now.
    pub fn snapshot(&self) -> MeshState {
        let name = |m: &kube::api::ObjectMeta| m.name.clone().unwrap_or_default();
        MeshState {
            mesh_name: self.mesh_name.clone(),
            tags: self
                .tags
                .state()
                .iter()
                .map(|t| (name(&t.metadata), t.spec.revision.clone()))
                .collect(),
            meshconfigs: self
                .revisions
                .state()
                .iter()
                .map(|m| (name(&m.metadata), m.spec.clone()))
                .collect(),
            foreign_injectors: self
                .injectors
                .state()
                .iter()
                .filter(|c| name(&c.metadata) != MUTATING_WEBHOOK)
                .flat_map(|c| {
                    let config = name(&c.metadata);
                    c.webhooks
                        .clone()
                        .unwrap_or_default()
                        .into_iter()
                        .map(move |w| ForeignInjector {
                            name: format!("{config}/{}", w.name),
                            namespace_selector: w.namespace_selector,
                            object_selector: w.object_selector,
                        })
                })
                .collect(),
            // Only validation reads pods; `snapshot_with_pods` fills them.
            revision_pods: BTreeMap::new(),
        }
    }

    /// As `snapshot`, with the running pods of each revision.
    pub fn snapshot_with_pods(&self) -> MeshState {
        let mut mesh = self.snapshot();
        mesh.revision_pods = revision_pods(self.pods.state().iter().map(|p| p.as_ref()));
        mesh
    }
}

/// Revision → `namespace/name` of its running pods (by their `weft.dev/revision` label).
fn revision_pods<'a>(pods: impl Iterator<Item = &'a Pod>) -> BTreeMap<String, Vec<String>> {
    let mut by_revision: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for pod in pods {
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        if matches!(phase, Some("Succeeded" | "Failed")) {
            continue;
        }
        let revision = pod
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(contract::LABEL_REVISION));
        if let (Some(revision), Some(name)) = (revision, pod.metadata.name.as_deref()) {
            let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
            by_revision
                .entry(revision.clone())
                .or_default()
                .push(format!("{namespace}/{name}"));
        }
    }
    by_revision.values_mut().for_each(|pods| pods.sort());
    by_revision
}

pub fn router(state: InjectorState) -> Router {
    Router::new()
        .route(contract::PATH_INJECT, post(inject))
        .route(contract::PATH_VALIDATE, post(validate))
        .route(contract::PATH_DEFAULT_MESHCONFIG, post(default_meshconfig))
        // No DefaultBodyLimit: `read_review` reads each body with the review's own cap.
        .with_state(state)
}

async fn inject(
    State(state): State<InjectorState>,
    headers: HeaderMap,
    body: Body,
) -> impl IntoResponse {
    let started = Instant::now();
    let answer = match read_review(&headers, body).await {
        Ok(body) => {
            let mesh = state.snapshot();
            let namespaces = state.namespaces.clone();
            let lookup =
                move |name: &str| namespaces.find(|n| n.metadata.name.as_deref() == Some(name));
            let reviewed = webhook::review_detailed(&body, lookup, &mesh, &state.settings);
            state.report_skip(&reviewed);
            (reviewed.status, reviewed.body)
        }
        Err(refused) => refused,
    };
    state.answered(Endpoint::Inject, answer, started)
}

async fn validate(
    State(state): State<InjectorState>,
    headers: HeaderMap,
    body: Body,
) -> impl IntoResponse {
    let started = Instant::now();
    let answer = read_review(&headers, body)
        .await
        .map(|body| webhook::validate(&body, &state.snapshot_with_pods(), &state.settings))
        .unwrap_or_else(|refused| refused);
    state.answered(Endpoint::Validate, answer, started)
}

async fn default_meshconfig(
    State(state): State<InjectorState>,
    headers: HeaderMap,
    body: Body,
) -> impl IntoResponse {
    let started = Instant::now();
    let answer = read_review(&headers, body)
        .await
        .map(|body| webhook::default_meshconfig(&body, &state.snapshot(), &state.settings))
        .unwrap_or_else(|refused| refused);
    state.answered(Endpoint::Default, answer, started)
}

/// The request body, or the answer to one that could not be read. A body over the review's
/// cap is read no further than the cap (no further than the beginning that holds the request's
/// uid when Content-Length already says it is over) and answered with an AdmissionReview that
/// denies it, naming the limit (`webhook::error_body`), so the API server shows the user why.
async fn read_review(headers: &HeaderMap, body: Body) -> Result<Bytes, (u16, Vec<u8>)> {
    use futures::StreamExt as _;
    let declared_over = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&size| size > webhook::MAX_REVIEW_BODY_BYTES);
    let keep = match declared_over {
        Some(_) => webhook::review::UID_PREFIX_BYTES,
        None => webhook::MAX_REVIEW_BODY_BYTES + 1,
    };
    let mut stream = body.into_data_stream();
    let mut read = Vec::new();
    while read.len() < keep {
        match stream.next().await {
            Some(Ok(chunk)) => read.extend_from_slice(&chunk),
            Some(Err(e)) => {
                let message = format!("the request body could not be read ({e}): send it again");
                let body = serde_json::to_vec(&serde_json::json!({ "error": message }))
                    .unwrap_or_default();
                return Err((StatusCode::BAD_REQUEST.as_u16(), body));
            }
            None => break,
        }
    }
    if declared_over.is_some() || read.len() > webhook::MAX_REVIEW_BODY_BYTES {
        let prefix = &read[..read.len().min(webhook::review::UID_PREFIX_BYTES)];
        let error = webhook::ReviewError::too_large(prefix, declared_over);
        // The rest is read and thrown away before answering, within the bounds of the
        // server's drain of unread bodies: the answer is a 200, and a client still uploading
        // when a 2xx arrives may not stop as it does after a 4xx (curl 7.88 over HTTP/2 stalls
        // its upload). Past the bounds the server's drain takes over after the answer.
        let mut taken = read.len() as u64;
        let discard = async {
            while let Some(Ok(chunk)) = stream.next().await {
                taken += chunk.len() as u64;
                if taken > DRAIN_MAX_BYTES {
                    return;
                }
            }
        };
        let _ = tokio::time::timeout(DRAIN_MAX_TIME, discard).await;
        return Err((error.http_status(), webhook::review::error_body(&error)));
    }
    Ok(Bytes::from(read))
}

impl InjectorState {
    /// A pod left to another mesh's injector gets a Normal Event in its namespace (SPEC §4:
    /// skipped, not denied, and said so), once per pod or ReplicaSet and cause; never for a
    /// dry run (the webhook declares sideEffects NoneOnDryRun).
    fn report_skip(&self, reviewed: &webhook::Reviewed) {
        let (Some(webhook::Decision::Skip { reason, .. }), Some((namespace, pod))) =
            (&reviewed.decision, &reviewed.pod)
        else {
            return;
        };
        if reviewed.dry_run || !reason.emits_event() {
            return;
        }
        let message = format!("weft did not inject pod {pod}: {reason}");
        let event = events::normal(
            events::Regarding {
                api_version: "v1",
                kind: "Pod",
                namespace: Some(namespace),
                name: pod,
                uid: None,
            },
            "InjectionSkipped",
            "Inject",
            &message,
            &self.instance,
        );
        let Some(name) = event.metadata.name.clone() else {
            return;
        };
        match self.reported.lock() {
            Ok(mut reported) => {
                if reported.len() >= REPORTED_LIMIT {
                    reported.clear();
                }
                if !reported.insert(name) {
                    return;
                }
            }
            Err(_) => return,
        }
        let client = self.client.clone();
        tokio::spawn(async move {
            if let Err(e) = events::publish(&client, event).await {
                tracing::warn!("cannot record that a pod was left to another injector: {e}");
            }
        });
    }

    /// Records the answer in the metrics and turns it into the HTTP response.
    fn answered(
        &self,
        endpoint: Endpoint,
        (status, body): (u16, Vec<u8>),
        started: Instant,
    ) -> impl IntoResponse + use<> {
        self.metrics
            .webhook_answered(endpoint, status, &body, started.elapsed());
        json((status, body))
    }
}

fn json((status, body): (u16, Vec<u8>)) -> impl IntoResponse {
    (
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::PodStatus;
    use kube::api::ObjectMeta;

    fn pod(namespace: &str, name: &str, revision: &str, phase: &str) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(namespace.into()),
                labels: Some([(contract::LABEL_REVISION.to_string(), revision.into())].into()),
                ..Default::default()
            },
            status: Some(PodStatus {
                phase: Some(phase.into()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn running_pods_are_listed_per_revision_and_finished_ones_left_out() {
        let pods = [
            pod("shop", "b", "stable", "Running"),
            pod("pets", "a", "stable", "Pending"),
            pod("pets", "job", "stable", "Succeeded"),
            pod("pets", "crashed", "canary", "Failed"),
            pod("pets", "c", "canary", "Running"),
        ];
        let listed = revision_pods(pods.iter());
        assert_eq!(listed["stable"], ["pets/a", "shop/b"]);
        assert_eq!(listed["canary"], ["pets/c"]);
    }
}
