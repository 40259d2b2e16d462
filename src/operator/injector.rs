//! The sidecar injector endpoint (`POST /inject` on :15017, TLS): reflectors keep the
//! namespaces, tags, revisions and other meshes' injectors in memory, and every admission
//! review is answered by the pure `webhook::review` from a snapshot of them. No API call is
//! made on the request path, so a review costs microseconds and never waits on the API server.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::post;
use futures::StreamExt;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Namespace;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};

use super::ca_bundle::MUTATING_WEBHOOK;
use crate::api::{MeshConfig, RevisionTag};
use crate::contract;
use crate::webhook::{self, ForeignInjector, InjectorSettings, MeshState};

/// In-memory views of what injection decisions read.
#[derive(Clone)]
pub struct InjectorState {
    namespaces: Store<Namespace>,
    tags: Store<RevisionTag>,
    revisions: Store<MeshConfig>,
    injectors: Store<MutatingWebhookConfiguration>,
    settings: Arc<InjectorSettings>,
    mesh_name: String,
}

fn reflect<K>(api: Api<K>) -> Store<K>
where
    K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    let (reader, writer) = reflector::store();
    let stream = reflector::reflector(writer, watcher(api, watcher::Config::default()))
        .default_backoff()
        .applied_objects();
    tokio::spawn(async move {
        futures::pin_mut!(stream);
        while let Some(event) = stream.next().await {
            if let Err(e) = event {
                tracing::debug!("injector watch: {e}");
            }
        }
    });
    reader
}

impl InjectorState {
    pub fn start(client: &Client, settings: InjectorSettings, mesh_name: String) -> Self {
        let ns = settings.operator_namespace.clone();
        Self {
            namespaces: reflect(Api::<Namespace>::all(client.clone())),
            tags: reflect(Api::<RevisionTag>::namespaced(client.clone(), &ns)),
            revisions: reflect(Api::<MeshConfig>::namespaced(client.clone(), &ns)),
            injectors: reflect(Api::<MutatingWebhookConfiguration>::all(client.clone())),
            settings: Arc::new(settings),
            mesh_name,
        }
    }

    /// Ready once every store has its initial list.
    pub async fn wait_synced(&self) {
        let _ = tokio::join!(
            self.namespaces.wait_until_ready(),
            self.tags.wait_until_ready(),
            self.revisions.wait_until_ready(),
            self.injectors.wait_until_ready(),
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
        }
    }
}

pub fn router(state: InjectorState) -> Router {
    Router::new()
        .route(contract::PATH_INJECT, post(inject))
        // The review itself answers oversized bodies with a JSON 413; let it see them.
        .layer(DefaultBodyLimit::max(webhook::MAX_REVIEW_BODY_BYTES + 1))
        .with_state(state)
}

async fn inject(State(state): State<InjectorState>, body: Bytes) -> impl IntoResponse {
    let mesh = state.snapshot();
    let namespaces = state.namespaces.clone();
    let lookup = move |name: &str| namespaces.find(|n| n.metadata.name.as_deref() == Some(name));
    let (status, body) = webhook::review(&body, lookup, &mesh, &state.settings);
    (
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
}
