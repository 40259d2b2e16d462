//! The operator's controllers (SPEC §1 stories 1 and 4, §3): first-start bootstrap of the
//! default revision, and the MeshConfig and RevisionTag status controllers. Every decision is a
//! pure function over a `Snapshot` of the mesh (`index`); the reconcilers only read the shared
//! reflector stores, call those functions and patch status.

pub mod bootstrap;
pub mod index;
pub mod meshconfig;
pub mod revisiontag;

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{ContainerStatus, Namespace, Pod, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::runtime::controller::Action;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{Controller, WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use tokio::sync::watch;

use crate::api::{MeshConfig, RevisionTag};
use crate::contract;
use crate::kube::metrics::OperatorMetrics;
use crate::kube::{events, reflect};
use index::Snapshot;

pub use crate::contract::FIELD_MANAGER;
/// Safety net: every object is reconciled at least this often, whatever the watches say.
pub const REQUEUE: Duration = Duration::from_secs(10);
/// Changes arriving within this window are folded into one reconcile of everything.
const COALESCE: Duration = Duration::from_secs(1);
/// How often the CA readiness probe is polled for changes.
const CA_POLL: Duration = Duration::from_secs(1);
/// Wait before retrying a failed reconcile or bootstrap.
const RETRY: Duration = Duration::from_secs(5);

/// Condition reasons (types are in `crate::api::conditions`).
pub mod reasons {
    pub const CA_READY: &str = "CaReady";
    pub const CA_NOT_READY: &str = "CaNotReady";
    pub const CA_HEALTHY: &str = "CaHealthy";
    pub const RECONCILED: &str = "Reconciled";
    pub const UNSUPPORTED_FIELDS: &str = "UnsupportedFields";
    pub const ALL_FIELDS_SUPPORTED: &str = "AllFieldsSupported";
    pub const REVISION_FOUND: &str = "RevisionFound";
    pub const REVISION_NOT_FOUND: &str = "RevisionNotFound";
    pub const IN_USE: &str = "InUse";
    pub const NOT_IN_USE: &str = "NotInUse";
    /// Event reason on a namespace whose enrolment labels disagree.
    pub const CONFLICTING_LABELS: &str = "ConflictingInjectionLabels";
}

/// What the controllers know of the mesh CA: whether one is loaded (Ready of every revision
/// hangs on it) and the persistent problem the CA-bundle controller reports, if any (a
/// corrupted or missing CA Secret: Degraded of every revision, and one Warning Event).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CaHealth {
    pub loaded: bool,
    pub problem: Option<CaIssue>,
    /// A root rotation under way (`weft ca rotate`): condition RootRotation on every revision.
    pub rotation: Option<RotationPhase>,
}

/// The phase of a root rotation under way, as the RootRotation condition shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RotationPhase {
    /// The phase (`Trusting`, `Reissuing`, `Dropping`, `RollingBack`): the condition's reason.
    pub reason: String,
    pub message: String,
}

/// A CA problem that needs a person (not a passing API error).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaIssue {
    /// The Event and condition reason, e.g. `CaSecretCorrupted`.
    pub reason: &'static str,
    /// The Secret the problem is about (in the operator's namespace).
    pub secret: String,
    /// What is wrong and what to do, shown as is.
    pub message: String,
}

/// Reads the current [`CaHealth`]; the operator builds it from the CA-bundle controller's
/// watch channels.
pub type CaHealthProbe = Arc<dyn Fn() -> CaHealth + Send + Sync>;

/// The operator's flags the controllers need.
#[derive(Clone, Debug)]
pub struct ControllerSettings {
    /// The operator's namespace: MeshConfigs and RevisionTags live there; never injected.
    pub namespace: String,
    /// The value of `openservicemesh.io/monitored-by` that means weft (`--mesh-name`).
    pub mesh_name: String,
    /// Revision created on the very first start (`--default-revision`).
    pub default_revision: String,
    /// Proxy image written into that revision (`--proxy-image`).
    pub proxy_image: String,
    /// Trust domain written into that revision (`--trust-domain`).
    pub trust_domain: String,
    /// Identity in Events (`reportingInstance`), normally the pod name.
    pub instance: String,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{action}: {source}")]
    Kube {
        action: String,
        #[source]
        source: kube::Error,
    },
    #[error("encoding {what}: {source}")]
    Encode {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("object has no name")]
    NoName,
}

impl Error {
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube { .. } => "kube",
            Error::Encode { .. } => "encode",
            Error::NoName => "no_name",
        }
    }

    pub(crate) fn kube(action: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
        let action = action.into();
        move |source| Error::Kube { action, source }
    }
}

/// Whether a kube error is the API server's 409 (AlreadyExists on create, Conflict on update).
pub(crate) use crate::kube::is_conflict;

// === Context ===

/// The reflector stores both controllers read; filled by `run_all`'s watches.
#[derive(Clone)]
pub struct Stores {
    pub meshconfigs: Store<MeshConfig>,
    pub tags: Store<RevisionTag>,
    pub namespaces: Store<Namespace>,
    /// Only pods labelled `weft.dev/revision` (injection adds it), trimmed to their
    /// `weft.dev/status` annotation and phase.
    pub pods: Store<Pod>,
}

impl Stores {
    /// The mesh as of now, for the pure status functions.
    pub fn snapshot(&self, settings: &ControllerSettings) -> Snapshot {
        let meshconfigs = self.meshconfigs.state();
        let tags = self.tags.state();
        let namespaces = self.namespaces.state();
        let pods = self.pods.state();
        Snapshot::build(
            &settings.mesh_name,
            &settings.namespace,
            meshconfigs
                .iter()
                .filter(|m| m.metadata.namespace.as_deref() == Some(settings.namespace.as_str()))
                .filter_map(|m| m.metadata.name.clone()),
            tags.iter()
                .filter(|t| t.metadata.namespace.as_deref() == Some(settings.namespace.as_str()))
                .filter_map(|t| Some((t.metadata.name.clone()?, t.spec.revision.clone()))),
            namespaces.iter().map(|n| n.as_ref()),
            pods.iter().map(|p| p.as_ref()),
        )
    }
}

/// Shared by the reconcilers (controller-rs shape).
pub struct Context {
    pub client: Client,
    pub settings: ControllerSettings,
    pub stores: Stores,
    pub ca_health: CaHealthProbe,
    /// Namespace → fingerprint of the label conflict last reported on it, so each conflict
    /// gets one Warning Event, not one per loop.
    pub reported_conflicts: Mutex<std::collections::HashMap<String, String>>,
    /// Reconcile counts, durations and errors per controller.
    pub metrics: Arc<OperatorMetrics>,
}

/// Runs one reconcile of `controller` and records it in the metrics.
pub(crate) async fn measured<T>(
    controller: &'static str,
    ctx: Arc<Context>,
    reconcile: impl Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    let started = std::time::Instant::now();
    let result = reconcile.await;
    ctx.metrics.reconciled(
        controller,
        started.elapsed(),
        result.as_ref().err().map(Error::metric_label),
    );
    result
}

// === Conditions ===

/// A condition with `lastTransitionTime` carried over from `existing` when the status did not
/// change (so `kubectl wait` and humans see when it really flipped).
pub fn condition(
    existing: &[Condition],
    type_: &str,
    status: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: &Time,
) -> Condition {
    let status = if status { "True" } else { "False" }.to_string();
    let last_transition_time = existing
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| now.clone());
    Condition {
        type_: type_.to_string(),
        status,
        reason: reason.to_string(),
        message,
        observed_generation: generation,
        last_transition_time,
    }
}

/// Writes `status` of the namespaced object `name` of kind `K` with server-side apply (field
/// manager `weft`) when it differs from `current`: one path for every controller's status.
pub(crate) async fn apply_status<K, S>(
    ctx: &Context,
    name: &str,
    current: Option<&S>,
    status: &S,
) -> Result<(), Error>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned,
    S: PartialEq + serde::Serialize,
{
    if current == Some(status) {
        return Ok(());
    }
    let api = Api::<K>::namespaced(ctx.client.clone(), &ctx.settings.namespace);
    let patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    api.patch_status(
        name,
        &kube::api::PatchParams::apply(FIELD_MANAGER).force(),
        &kube::api::Patch::Apply(&patch),
    )
    .await
    .map_err(Error::kube(format!(
        "patching the status of {} {name}",
        K::kind(&())
    )))?;
    Ok(())
}

pub(crate) fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}

// === Triggers ===

/// "Something in the mesh changed": bumped by every watch event; each controller folds the
/// bumps of a `COALESCE` window into one reconcile of all its objects.
#[derive(Clone)]
struct Trigger(Arc<watch::Sender<u64>>);

impl Trigger {
    fn new() -> Self {
        Self(Arc::new(watch::channel(0).0))
    }

    fn bump(&self) {
        self.0.send_modify(|n| *n = n.wrapping_add(1));
    }

    fn stream(&self) -> impl Stream<Item = ()> + Send + 'static {
        futures::stream::unfold(self.0.subscribe(), |mut rx| async move {
            rx.changed().await.ok()?;
            tokio::time::sleep(COALESCE).await;
            rx.borrow_and_update();
            Some(((), rx))
        })
    }
}

/// Watches `api` into a store, bumping `trigger` on every change; runs until the process ends
/// (the watcher retries with backoff, so errors are only logged).
fn spawn_reflector<K>(
    api: Api<K>,
    config: watcher::Config,
    trim: impl FnMut(&mut K) + Send + 'static,
    trigger: Trigger,
) -> Store<K>
where
    K: Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store();
    let kind = K::kind(&()).to_string();
    let stream = reflector::reflector(writer, watcher(api, config).default_backoff().modify(trim));
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(_) => trigger.bump(),
                Err(e) => tracing::warn!(%kind, "watch failed (retrying): {e}"),
            }
        }
    });
    reader
}

/// Keeps what the status functions read from a pod and drops the rest (a cluster's pods are
/// the biggest thing the operator caches).
fn trim_pod(pod: &mut Pod) {
    pod.metadata.managed_fields = None;
    pod.metadata.owner_references = None;
    pod.metadata.labels = None;
    if let Some(annotations) = pod.metadata.annotations.as_mut() {
        annotations.retain(|k, _| k == contract::ANNOTATION_STATUS);
    }
    pod.spec = None;
    // The phase, and the proxy container's readiness (MeshConfig status.proxies).
    let keep_proxy = |statuses: Option<Vec<ContainerStatus>>| {
        statuses.map(|all| {
            all.into_iter()
                .filter(|c| index::is_proxy_container(&c.name))
                .map(|c| ContainerStatus {
                    name: c.name,
                    ready: c.ready,
                    ..Default::default()
                })
                .collect::<Vec<_>>()
        })
    };
    pod.status = pod.status.take().map(|s| PodStatus {
        phase: s.phase,
        init_container_statuses: keep_proxy(s.init_container_statuses),
        container_statuses: keep_proxy(s.container_statuses),
        ..Default::default()
    });
}

fn trim_meta<K: Resource>(object: &mut K) {
    object.meta_mut().managed_fields = None;
}

/// Runs the controllers until the process ends: watches (MeshConfigs and RevisionTags in the
/// operator namespace, Namespaces, injected Pods), the first-start bootstrap, the MeshConfig
/// and RevisionTag status controllers and the namespace label-conflict warnings. Spawn it.
pub async fn run_all(
    client: Client,
    settings: ControllerSettings,
    ca_health: CaHealthProbe,
    metrics: Arc<OperatorMetrics>,
) {
    let trigger = Trigger::new();
    let ns = settings.namespace.as_str();
    let stores = Stores {
        meshconfigs: spawn_reflector(
            Api::<MeshConfig>::namespaced(client.clone(), ns),
            watcher::Config::default(),
            trim_meta,
            trigger.clone(),
        ),
        tags: spawn_reflector(
            Api::<RevisionTag>::namespaced(client.clone(), ns),
            watcher::Config::default(),
            trim_meta,
            trigger.clone(),
        ),
        namespaces: spawn_reflector(
            Api::<Namespace>::all(client.clone()),
            watcher::Config::default(),
            trim_meta,
            trigger.clone(),
        ),
        pods: spawn_reflector(
            Api::<Pod>::all(client.clone()),
            watcher::Config::default().labels(contract::LABEL_REVISION),
            trim_pod,
            trigger.clone(),
        ),
    };
    // The CA appearing, vanishing or going bad changes Ready and Degraded without any watch
    // event; a new problem also gets one Warning Event on the Secret it is about.
    tokio::spawn(watch_ca_health(
        client.clone(),
        settings.clone(),
        ca_health.clone(),
        trigger.clone(),
    ));
    tokio::spawn(bootstrap::first_start_with_retry(
        client.clone(),
        settings.clone(),
    ));

    // Statuses computed before every store has listed would count zero pods and namespaces.
    // One readiness mechanism for every store of the operator (reflect::ready).
    tokio::join!(
        reflect::ready(&stores.meshconfigs),
        reflect::ready(&stores.tags),
        reflect::ready(&stores.namespaces),
        reflect::ready(&stores.pods),
    );
    tracing::info!("controllers: caches synced");

    let ctx = Arc::new(Context {
        client: client.clone(),
        settings,
        stores,
        ca_health,
        reported_conflicts: Mutex::default(),
        metrics,
    });
    tokio::join!(
        run_controller::<MeshConfig, _>(
            "meshconfig",
            ctx.clone(),
            trigger.stream(),
            meshconfig::reconcile
        ),
        run_controller::<RevisionTag, _>(
            "revisiontag",
            ctx.clone(),
            trigger.stream(),
            revisiontag::reconcile
        ),
        meshconfig::warn_on_conflicts(ctx.clone(), trigger.stream()),
    );
}

/// Runs the status controller of `K` (objects in the operator's namespace): each object is
/// reconciled on its own changes and whenever `trigger` fires; failures are logged, counted and
/// retried after [`RETRY`].
async fn run_controller<K, Fut>(
    name: &'static str,
    ctx: Arc<Context>,
    trigger: impl Stream<Item = ()> + Send + 'static,
    reconcile: fn(Arc<K>, Arc<Context>) -> Fut,
) where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
    Fut: Future<Output = Result<Action, Error>> + Send + 'static,
{
    let api = Api::<K>::namespaced(ctx.client.clone(), &ctx.settings.namespace);
    Controller::new(api, watcher::Config::default())
        .reconcile_all_on(trigger)
        .run(
            move |object, ctx| measured(name, ctx.clone(), reconcile(object, ctx)),
            move |object: Arc<K>, error: &Error, _ctx: Arc<Context>| {
                tracing::warn!(
                    controller = name,
                    object = %object.name_any(),
                    reason = error.metric_label(),
                    "reconcile failed: {error}"
                );
                Action::requeue(RETRY)
            },
            ctx,
        )
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(controller = name, "{e}");
            }
        })
        .await;
}

/// Polls the CA health; bumps `trigger` on every change and reports each new problem once.
async fn watch_ca_health(
    client: Client,
    settings: ControllerSettings,
    probe: CaHealthProbe,
    trigger: Trigger,
) {
    let mut last = CaHealth::default();
    loop {
        let now = probe();
        if now != last {
            trigger.bump();
            if let Some(issue) = now
                .problem
                .as_ref()
                .filter(|p| Some(*p) != last.problem.as_ref())
            {
                let event = events::warning(
                    events::Regarding {
                        api_version: "v1",
                        kind: "Secret",
                        namespace: Some(&settings.namespace),
                        name: &issue.secret,
                        uid: None,
                    },
                    issue.reason,
                    "LoadMeshCA",
                    &issue.message,
                    &settings.instance,
                );
                if let Err(e) = events::publish(&client, event).await {
                    tracing::warn!("cannot record the CA problem as an Event: {e}");
                }
            }
            last = now;
        }
        tokio::time::sleep(CA_POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(s).unwrap_or_default())
    }

    #[test]
    fn last_transition_time_moves_only_when_the_status_flips() {
        let first = condition(
            &[],
            "Ready",
            false,
            "CaNotReady",
            "m".into(),
            Some(1),
            &at(10),
        );
        assert_eq!(first.last_transition_time, at(10));
        // Same status, new reason and message: the transition time stays.
        let same = condition(
            std::slice::from_ref(&first),
            "Ready",
            false,
            "Other",
            "n".into(),
            Some(2),
            &at(20),
        );
        assert_eq!(same.last_transition_time, at(10));
        assert_eq!(same.observed_generation, Some(2));
        let flipped = condition(
            &[same],
            "Ready",
            true,
            "CaReady",
            "".into(),
            Some(2),
            &at(30),
        );
        assert_eq!(flipped.last_transition_time, at(30));
        assert_eq!(flipped.status, "True");
    }

    #[test]
    fn trimmed_pods_keep_only_the_status_annotation_and_phase() {
        let mut pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "pets",
                "labels": {"app": "web"},
                "annotations": {"weft.dev/status": "{}", "other": "x"}},
            "spec": {"containers": [{"name": "app"}]},
            "status": {"phase": "Running", "podIP": "198.18.1.77"}
        }))
        .unwrap_or_default();
        trim_pod(&mut pod);
        assert!(pod.spec.is_none());
        assert_eq!(
            pod.metadata
                .annotations
                .map(|a| a.into_keys().collect::<Vec<_>>()),
            Some(vec!["weft.dev/status".to_string()])
        );
        let status = pod.status.unwrap_or_default();
        assert_eq!(status.phase.as_deref(), Some("Running"));
        assert!(status.pod_ip.is_none());
    }
}
