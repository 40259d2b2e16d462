//! In-memory caches of API objects (kube-runtime reflectors), shared by the injector and the
//! config server. Managed fields are dropped on the way in: nothing reads them and on pods
//! they are a large share of the bytes; a caller may trim more.

use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::{Container, Pod, PodSpec, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Resource, ResourceExt};
use tokio::sync::Notify;

/// How often an absent optional API (Istio's CRDs) is looked up again.
pub const OPTIONAL_API_RECHECK: Duration = Duration::from_secs(20);

/// Watches every object of `api` into a store; each change wakes `changed`, if given.
/// Watch errors are retried with backoff.
pub fn reflect<K>(api: Api<K>, changed: Option<Arc<Notify>>) -> Store<K>
where
    K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    Reflect::new(api).changed(changed).start()
}

/// Like [`reflect`] for an API that may not be installed: while it answers 404 the store stays
/// empty and the API is looked up again every [`OPTIONAL_API_RECHECK`], quietly; once it
/// exists the watch starts.
pub fn reflect_optional<K>(api: Api<K>, changed: Option<Arc<Notify>>) -> Store<K>
where
    K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    Reflect::new(api).changed(changed).optional().start()
}

type Trim<K> = Box<dyn FnMut(&mut K) + Send>;

/// A reflector with options: a watch selector, a trim applied to every object, a change
/// notification, an optional API.
pub struct Reflect<K> {
    api: Api<K>,
    config: watcher::Config,
    trim: Trim<K>,
    changed: Option<Arc<Notify>>,
    optional: bool,
}

impl<K> Reflect<K>
where
    K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    pub fn new(api: Api<K>) -> Self {
        Reflect {
            api,
            config: watcher::Config::default(),
            trim: Box::new(|_| {}),
            changed: None,
            optional: false,
        }
    }

    pub fn config(mut self, config: watcher::Config) -> Self {
        self.config = config;
        self
    }

    pub fn trim(mut self, trim: impl FnMut(&mut K) + Send + 'static) -> Self {
        self.trim = Box::new(trim);
        self
    }

    pub fn changed(mut self, changed: Option<Arc<Notify>>) -> Self {
        self.changed = changed;
        self
    }

    pub fn optional(mut self) -> Self {
        self.optional = true;
        self
    }

    pub fn start(self) -> Store<K> {
        self.start_abortable().0
    }

    /// As [`Self::start`], with the handle that stops the watch.
    pub fn start_abortable(self) -> (Store<K>, tokio::task::AbortHandle) {
        let Reflect {
            api,
            config,
            mut trim,
            changed,
            optional,
        } = self;
        let (reader, writer) = reflector::store();
        let task = tokio::spawn(async move {
            let kind = K::kind(&Default::default()).to_string();
            if optional {
                let mut logged = false;
                while let Err(kube::Error::Api(e)) = api
                    .list_metadata(&kube::api::ListParams::default().limit(1))
                    .await
                    && e.code == 404
                {
                    if !logged {
                        tracing::info!(%kind, "API not installed; it is read once it appears");
                        logged = true;
                    }
                    tokio::time::sleep(OPTIONAL_API_RECHECK).await;
                }
            }
            let stream = watcher(api, config)
                .default_backoff()
                .modify(move |o: &mut K| {
                    o.managed_fields_mut().clear();
                    trim(o);
                });
            let stream = reflector::reflector(writer, stream);
            futures::pin_mut!(stream);
            while let Some(event) = stream.next().await {
                match event {
                    Ok(_) => {
                        if let Some(n) = &changed {
                            n.notify_one();
                        }
                    }
                    Err(e) => tracing::debug!(%kind, "watch: {e}"),
                }
            }
        });
        (reader, task.abort_handle())
    }
}

/// The meshed pods (label `weft.dev/revision`), trimmed to what the injector's validator and
/// the config server read: name, namespace, labels, the controller (the workload's name),
/// service account, container ports, phase and IP. One watch serves both.
pub fn meshed_pods(client: &kube::Client, changed: Option<Arc<Notify>>) -> Store<Pod> {
    Reflect::new(Api::<Pod>::all(client.clone()))
        .config(watcher::Config::default().labels(crate::contract::LABEL_REVISION))
        .trim(trim_pod)
        .changed(changed)
        .start()
}

/// Secrets of type `kubernetes.io/tls` (a field selector: no other Secret is ever read) in
/// the namespaces that have gateway pods, trimmed to name, namespace and the three keys a
/// gateway's `credentialName` uses (`tls.crt`, `tls.key`, `ca.crt`). The operator has no
/// cluster-wide Secret grant: `weft gateway install` grants it these reads in the gateway's
/// namespace only (Role `weft-gateway-secrets`), as Istio's gateway chart grants its gateway.
/// Without that grant the watch retries and the Gateway's condition says what is missing.
pub struct GatewaySecrets {
    client: kube::Client,
    changed: Arc<Notify>,
    stores: std::collections::BTreeMap<
        String,
        (
            Store<k8s_openapi::api::core::v1::Secret>,
            tokio::task::AbortHandle,
        ),
    >,
}

impl GatewaySecrets {
    pub fn new(client: kube::Client, changed: Arc<Notify>) -> Self {
        GatewaySecrets {
            client,
            changed,
            stores: Default::default(),
        }
    }

    /// The TLS Secrets of `namespaces` (those whose gateways name a certificate): watches
    /// start for the namespaces seen the first time (their first list wakes `changed`) and
    /// stop for those no longer given, so a namespace whose grant went away with its
    /// gateways is not asked again (the operator is never refused, tests/lifecycle step 5).
    pub fn state<'a>(
        &mut self,
        namespaces: impl IntoIterator<Item = &'a str>,
    ) -> Vec<Arc<k8s_openapi::api::core::v1::Secret>> {
        let wanted: std::collections::BTreeSet<&str> = namespaces.into_iter().collect();
        self.stores.retain(|ns, (_, task)| {
            let keep = wanted.contains(ns.as_str());
            if !keep {
                task.abort();
            }
            keep
        });
        for ns in wanted {
            if !self.stores.contains_key(ns) {
                let watch = tls_secrets(&self.client, ns, Some(self.changed.clone()));
                self.stores.insert(ns.to_string(), watch);
            }
        }
        self.stores.values().flat_map(|(s, _)| s.state()).collect()
    }
}

fn tls_secrets(
    client: &kube::Client,
    namespace: &str,
    changed: Option<Arc<Notify>>,
) -> (
    Store<k8s_openapi::api::core::v1::Secret>,
    tokio::task::AbortHandle,
) {
    Reflect::new(Api::<k8s_openapi::api::core::v1::Secret>::namespaced(
        client.clone(),
        namespace,
    ))
    .config(watcher::Config::default().fields("type=kubernetes.io/tls"))
    .trim(|s: &mut k8s_openapi::api::core::v1::Secret| {
        s.metadata = ObjectMeta {
            name: s.metadata.name.take(),
            namespace: s.metadata.namespace.take(),
            resource_version: s.metadata.resource_version.take(),
            ..ObjectMeta::default()
        };
        if let Some(data) = s.data.as_mut() {
            data.retain(|k, _| ["tls.crt", "tls.key", "ca.crt"].contains(&k.as_str()));
        }
        s.string_data = None;
    })
    .changed(changed)
    .start_abortable()
}

/// The pods WITHOUT `weft.dev/revision` (not meshed), metadata only (the API server sends no
/// spec or status), trimmed to what an endpoint's workload metadata needs
/// ([`UNMESHED_POD_LABELS`], the controller, name, namespace, generateName): a meshed client's
/// metrics name an unmeshed server from it, as Istio's endpoint metadata does. Nothing else
/// reads these pods; the meshed pods' store is unchanged.
pub fn unmeshed_pods(
    client: &kube::Client,
    changed: Option<Arc<Notify>>,
) -> Store<PartialObjectMeta<Pod>> {
    let not_meshed = format!("!{}", crate::contract::LABEL_REVISION);
    Reflect::new(Api::<PartialObjectMeta<Pod>>::all(client.clone()))
        .config(watcher::Config::default().labels(&not_meshed))
        .trim(|p: &mut PartialObjectMeta<Pod>| trim_unmeshed_pod(&mut p.metadata))
        .changed(changed)
        .start()
}

/// The labels an unmeshed pod keeps: those `WorkloadMeta::from_labels` reads for app, version
/// and the canonical service and revision, and the one `kube::workload` strips from a
/// ReplicaSet's name.
pub const UNMESHED_POD_LABELS: [&str; 7] = [
    "app",
    "app.kubernetes.io/name",
    "version",
    "app.kubernetes.io/version",
    "service.istio.io/canonical-name",
    "service.istio.io/canonical-revision",
    crate::contract::LABEL_POD_TEMPLATE_HASH,
];

fn trim_unmeshed_pod(meta: &mut ObjectMeta) {
    *meta = ObjectMeta {
        name: meta.name.take(),
        namespace: meta.namespace.take(),
        generate_name: meta.generate_name.take(),
        labels: meta
            .labels
            .take()
            .map(|l| {
                l.into_iter()
                    .filter(|(k, _)| UNMESHED_POD_LABELS.contains(&k.as_str()))
                    .collect::<std::collections::BTreeMap<_, _>>()
            })
            .filter(|l| !l.is_empty()),
        // The controller's kind and name are all `kube::workload` reads.
        owner_references: meta
            .owner_references
            .take()
            .and_then(|refs| refs.into_iter().find(|o| o.controller == Some(true)))
            .map(|o| {
                vec![OwnerReference {
                    kind: o.kind,
                    name: o.name,
                    controller: Some(true),
                    ..Default::default()
                }]
            }),
        ..Default::default()
    };
}

fn trim_pod(pod: &mut Pod) {
    // Only the controller stays: it names the pod's workload (`kube::workload`).
    pod.metadata.owner_references = pod
        .metadata
        .owner_references
        .take()
        .map(|refs| {
            refs.into_iter()
                .filter(|o| o.controller == Some(true))
                .take(1)
                .collect::<Vec<_>>()
        })
        .filter(|refs| !refs.is_empty());
    // Only the injection template stays: it says whether the pod is a gateway.
    pod.metadata.annotations = pod
        .metadata
        .annotations
        .take()
        .map(|a| {
            a.into_iter()
                .filter(|(k, _)| k == crate::contract::ANNOTATION_INJECT_TEMPLATES)
                .collect::<std::collections::BTreeMap<_, _>>()
        })
        .filter(|a| !a.is_empty());
    pod.spec = pod.spec.take().map(|s| PodSpec {
        service_account_name: s.service_account_name,
        containers: s
            .containers
            .into_iter()
            .map(|c| Container {
                name: c.name,
                ports: c.ports,
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    });
    pod.status = pod.status.take().map(|s| PodStatus {
        phase: s.phase,
        pod_ip: s.pod_ip,
        // A dual-stack pod's proxy may reach the config stream over either address.
        pod_ips: s.pod_ips,
        ..Default::default()
    });
}

/// Whether `store` holds its first list.
pub fn is_ready<K>(store: &Store<K>) -> bool
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    store.wait_until_ready().now_or_never().is_some()
}

/// Waits until `store` holds its first list. Polls instead of awaiting
/// `Store::wait_until_ready`, whose future keeps one waker per store (a oneshot receiver): of
/// two tasks waiting on a shared store (the meshed pods are shared by the injector and the
/// config server) only the last to poll would be woken, and the other replica-readiness
/// waiter would hang for good.
pub async fn ready<K>(store: &Store<K>)
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    while !is_ready(store) {
        tokio::time::sleep(READY_POLL).await;
    }
}

const READY_POLL: Duration = Duration::from_millis(50);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unmeshed_pod_keeps_only_what_its_workload_metadata_reads() {
        let mut pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"namespace": "legacy", "name": "web-7f9c6-x2k4p",
                "generateName": "web-7f9c6-", "uid": "u1", "resourceVersion": "42",
                "labels": {"app": "web", "version": "v2", "app.kubernetes.io/name": "shop",
                    "app.kubernetes.io/version": "2.1", "service.istio.io/canonical-name": "store",
                    "service.istio.io/canonical-revision": "r7", "pod-template-hash": "7f9c6",
                    "team": "x".repeat(500)},
                "annotations": {"big": "x".repeat(1000)},
                "finalizers": ["example.dev/keep"],
                "ownerReferences": [
                    {"apiVersion": "v1", "kind": "ConfigMap", "name": "not-a-controller", "uid": "c"},
                    {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-7f9c6",
                     "uid": "u", "controller": true, "blockOwnerDeletion": true}]}
        }))
        .unwrap();
        let meta = |p: &Pod| {
            crate::snapshot::WorkloadMeta::from_labels(
                &crate::kube::workload::workload_name(p),
                p.metadata.namespace.as_deref().unwrap_or_default(),
                p.metadata.labels.as_ref().unwrap(),
                "Kubernetes",
            )
        };
        let before = meta(&pod);
        trim_unmeshed_pod(&mut pod.metadata);
        // The same workload metadata from the trimmed pod ...
        assert_eq!(meta(&pod), before);
        assert_eq!(
            (before.name.as_str(), before.canonical_service.as_str()),
            ("web", "store")
        );
        // ... and nothing else.
        let m = &pod.metadata;
        assert_eq!(m.labels.as_ref().map(|l| l.len()), Some(7));
        assert!(m.annotations.is_none() && m.finalizers.is_none() && m.uid.is_none());
        let owners = m.owner_references.as_deref().unwrap_or_default();
        assert_eq!(owners.len(), 1);
        assert_eq!(
            (owners[0].kind.as_str(), owners[0].name.as_str()),
            ("ReplicaSet", "web-7f9c6")
        );
        assert!(owners[0].uid.is_empty() && owners[0].api_version.is_empty());
        // A bare pod: its name names the workload.
        let mut bare = ObjectMeta {
            name: Some("debug".into()),
            namespace: Some("legacy".into()),
            ..Default::default()
        };
        trim_unmeshed_pod(&mut bare);
        assert_eq!((bare.labels, bare.owner_references), (None, None));
    }

    fn rss_kib() -> Option<u64> {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }

    /// What the unmeshed pods' store costs per pod: 50,000 Deployment pods, trimmed as the
    /// reflector trims them, applied to a store. Resident memory is process-wide, so this runs
    /// alone: `cargo test --lib -- --ignored unmeshed_pods_store_cost --test-threads=1`.
    #[test]
    #[ignore]
    fn unmeshed_pods_store_cost() {
        const N: usize = 50_000;
        // Resident bytes per pod of a store of N such pods, trimmed or not.
        let per_pod = |trim: bool| {
            let (reader, mut writer) = reflector::store::<PartialObjectMeta<Pod>>();
            let before = rss_kib().unwrap_or_default();
            for i in 0..N {
                let mut p: PartialObjectMeta<Pod> = serde_json::from_value(serde_json::json!({
                    "apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
                    "metadata": {"namespace": format!("team-{}", i % 200),
                        "name": format!("checkout-api-7f9c6d5b8-{i:05}"),
                        "generateName": "checkout-api-7f9c6d5b8-", "uid": format!("{i:036}"),
                        "resourceVersion": "123456789",
                        "labels": {"app": "checkout-api", "version": "v2",
                            "pod-template-hash": "7f9c6d5b8", "team": "payments",
                            "app.kubernetes.io/part-of": "shop"},
                        "annotations": {"kubectl.kubernetes.io/restartedAt": "2026-12-06T10:00:00Z"},
                        "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                            "name": "checkout-api-7f9c6d5b8", "uid": format!("{i:036}"),
                            "controller": true, "blockOwnerDeletion": true}]}
                }))
                .unwrap();
                if trim {
                    trim_unmeshed_pod(&mut p.metadata);
                }
                writer.apply_watcher_event(&watcher::Event::Apply(p));
            }
            let after = rss_kib().unwrap_or_default();
            assert_eq!(reader.state().len(), N);
            (after.saturating_sub(before) * 1024 / N as u64, reader)
        };
        let (trimmed, _keep) = per_pod(true);
        let (untrimmed, _keep2) = per_pod(false);
        eprintln!(
            "unmeshed pods' store, {N} pods: {trimmed} bytes per pod trimmed, {untrimmed} untrimmed"
        );
        assert!(trimmed < 4096, "{trimmed} bytes per pod");
    }

    #[test]
    fn trimming_keeps_what_the_validator_and_the_config_server_read() {
        let mut pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"namespace": "pets", "name": "a",
                "labels": {"weft.dev/revision": "stable", "app": "web"},
                "annotations": {"big": "x".repeat(1000)},
                "ownerReferences": [
                    {"apiVersion": "v1", "kind": "ConfigMap", "name": "not-a-controller", "uid": "c"},
                    {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "r", "uid": "u",
                     "controller": true}]},
            "spec": {"serviceAccountName": "web", "containers": [
                {"name": "app", "image": "app:1", "env": [{"name": "A", "value": "b"}],
                 "ports": [{"containerPort": 8080}]}]},
            "status": {"phase": "Running", "podIP": "198.18.1.2", "hostIP": "198.18.0.1"}
        }))
        .unwrap();
        trim_pod(&mut pod);
        assert_eq!(pod.metadata.labels.as_ref().map(|l| l.len()), Some(2));
        assert!(pod.metadata.annotations.is_none());
        // A gateway pod keeps the annotation that says so.
        let mut gateway = Pod::default();
        gateway.metadata.annotations = Some(
            [("big", "x"), ("inject.istio.io/templates", "gateway")]
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        trim_pod(&mut gateway);
        assert_eq!(
            gateway
                .metadata
                .annotations
                .unwrap()
                .keys()
                .collect::<Vec<_>>(),
            ["inject.istio.io/templates"]
        );
        // The controller names the workload; other owners are dropped.
        let owners = pod.metadata.owner_references.as_deref().unwrap_or_default();
        assert_eq!(
            owners.iter().map(|o| o.name.as_str()).collect::<Vec<_>>(),
            ["r"]
        );
        let spec = pod.spec.as_ref().unwrap();
        assert_eq!(spec.service_account_name.as_deref(), Some("web"));
        assert_eq!(
            spec.containers[0].ports.as_ref().unwrap()[0].container_port,
            8080
        );
        assert!(spec.containers[0].image.is_none() && spec.containers[0].env.is_none());
        let status = pod.status.as_ref().unwrap();
        assert_eq!(status.phase.as_deref(), Some("Running"));
        assert_eq!(status.pod_ip.as_deref(), Some("198.18.1.2"));
        assert!(status.host_ip.is_none());
    }
}
