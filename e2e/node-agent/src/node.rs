//! The node: registration (as `system:node:<name>`, so the Node authorizer lets the agent
//! request tokens for its pods), its Lease, its status, and the dispatch of bound pods to
//! pod workers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use futures::StreamExt;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{
    DaemonEndpoint, Node, NodeAddress, NodeCondition, NodeDaemonEndpoints, NodeSpec, NodeStatus,
    NodeSystemInfo, Pod, Service,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::watcher;
use kube::{Api, Client};
use tokio::sync::watch;

use crate::config::Config;
use crate::images::ImageTable;
use crate::netns::Ipam;
use crate::pod::{self, NodeContext, PodRuntime};

pub type PodTable = Arc<Mutex<HashMap<String, (Arc<PodRuntime>, watch::Sender<Option<Pod>>)>>>;

pub async fn run(config: Config) -> anyhow::Result<()> {
    let kubeconfig = Kubeconfig::read_from(&config.kubeconfig)?;
    let client_config =
        kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
    let client = Client::try_from(client_config)?;
    let images = ImageTable::load(&config.images_file, &config.images_dir)?;
    std::fs::create_dir_all(config.state_dir.join("pods"))?;

    register(&client, &config)
        .await
        .context("registering the node")?;
    tokio::spawn(keep_lease(client.clone(), config.node_name.clone()));
    tokio::spawn(heartbeat(client.clone(), config.clone()));

    let kubernetes_service = kubernetes_service(&client).await;
    let ctx = Arc::new(NodeContext {
        client: client.clone(),
        node_ip: config.node_ip,
        dns_ip: config.dns_ip,
        cluster_domain: config.cluster_domain.clone(),
        state_dir: config.state_dir.clone(),
        images,
        ipam: Mutex::new(Ipam::new(&config.pod_cidr)?),
        self_exe: std::env::current_exe()?,
        kubernetes_service,
    });
    let pods: PodTable = Arc::new(Mutex::new(HashMap::new()));
    tokio::spawn(crate::server::serve(
        config.clone(),
        ctx.clone(),
        pods.clone(),
    ));

    let api: Api<Pod> = Api::all(client.clone());
    let selector =
        watcher::Config::default().fields(&format!("spec.nodeName={}", config.node_name));
    let mut events = watcher(api, selector).boxed();
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tracing::info!(node = %config.node_name, "node agent running");
    loop {
        tokio::select! {
            _ = sigterm.recv() => break,
            event = events.next() => match event {
                Some(Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod))) => dispatch(&ctx, &pods, pod),
                Some(Ok(watcher::Event::Delete(pod))) => gone(&pods, &pod),
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    tracing::warn!("pod watch: {e}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                None => break,
            }
        }
    }
    tracing::info!("stopping: killing pod processes");
    // Node shutdown (cluster-down): processes and sandboxes go, pod objects stay.
    if let Ok(table) = pods.lock() {
        for (rt, _) in table.values() {
            if let Ok(st) = rt.state.lock() {
                for pid in st.containers.values().filter_map(|s| s.pid) {
                    let _ = nix::sys::signal::killpg(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        }
    }
    Ok(())
}

fn dispatch(ctx: &Arc<NodeContext>, pods: &PodTable, pod: Pod) {
    let Some(uid) = pod.metadata.uid.clone() else {
        return;
    };
    let Ok(mut table) = pods.lock() else { return };
    if let Some((_, tx)) = table.get(&uid) {
        let _ = tx.send(Some(pod));
        return;
    }
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    if matches!(phase, Some("Succeeded" | "Failed")) && pod.metadata.deletion_timestamp.is_none() {
        return; // finished before this agent started
    }
    let rt = Arc::new(PodRuntime {
        namespace: pod.metadata.namespace.clone().unwrap_or_default(),
        name: pod.metadata.name.clone().unwrap_or_default(),
        uid: uid.clone(),
        dir: ctx.state_dir.join("pods").join(&uid),
        state: Mutex::new(Default::default()),
        changed: tokio::sync::Notify::new(),
    });
    let (tx, rx) = watch::channel(Some(pod));
    table.insert(uid.clone(), (rt.clone(), tx));
    let (ctx, pods) = (ctx.clone(), pods.clone());
    tokio::spawn(async move {
        pod::run(ctx, rt, rx).await;
        if let Ok(mut table) = pods.lock() {
            table.remove(&uid);
        }
    });
}

fn gone(pods: &PodTable, pod: &Pod) {
    let Some(uid) = pod.metadata.uid.as_deref() else {
        return;
    };
    if let Ok(table) = pods.lock()
        && let Some((_, tx)) = table.get(uid)
    {
        let _ = tx.send(None);
    }
}

async fn kubernetes_service(client: &Client) -> (String, u16) {
    let api: Api<Service> = Api::namespaced(client.clone(), "default");
    for _ in 0..60 {
        if let Ok(svc) = api.get("kubernetes").await {
            let ip = svc
                .spec
                .as_ref()
                .and_then(|s| s.cluster_ip.clone())
                .unwrap_or_default();
            let port = svc
                .spec
                .and_then(|s| s.ports)
                .and_then(|p| p.first().map(|p| p.port))
                .unwrap_or(443);
            return (ip, port as u16);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    (String::new(), 443)
}

fn node_status(config: &Config) -> NodeStatus {
    let q = |s: &str| Quantity(s.to_string());
    let resources = [
        ("cpu", q("2")),
        ("memory", q("24Gi")),
        ("pods", q("110")),
        ("ephemeral-storage", q("100Gi")),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect::<std::collections::BTreeMap<_, _>>();
    let now = Time(Timestamp::now());
    let condition = |type_: &str, status: &str, reason: &str, message: &str| NodeCondition {
        type_: type_.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_heartbeat_time: Some(now.clone()),
        last_transition_time: Some(now.clone()),
    };
    NodeStatus {
        capacity: Some(resources.clone()),
        allocatable: Some(resources),
        conditions: Some(vec![
            condition(
                "MemoryPressure",
                "False",
                "KubeletHasSufficientMemory",
                "weft node agent has sufficient memory available",
            ),
            condition(
                "DiskPressure",
                "False",
                "KubeletHasNoDiskPressure",
                "weft node agent has no disk pressure",
            ),
            condition(
                "PIDPressure",
                "False",
                "KubeletHasSufficientPID",
                "weft node agent has sufficient PID available",
            ),
            condition(
                "Ready",
                "True",
                "KubeletReady",
                "weft node agent is posting ready status",
            ),
        ]),
        addresses: Some(vec![
            NodeAddress {
                type_: "InternalIP".into(),
                address: config.node_ip.to_string(),
            },
            NodeAddress {
                type_: "Hostname".into(),
                address: config.node_name.clone(),
            },
        ]),
        daemon_endpoints: Some(NodeDaemonEndpoints {
            kubelet_endpoint: Some(DaemonEndpoint {
                port: config.port.into(),
            }),
        }),
        node_info: Some(NodeSystemInfo {
            architecture: std::env::consts::ARCH
                .replace("x86_64", "amd64")
                .replace("aarch64", "arm64"),
            operating_system: "linux".into(),
            os_image: "weft local cluster".into(),
            kernel_version: nix::sys::utsname::uname()
                .map(|u| u.release().to_string_lossy().into_owned())
                .unwrap_or_default(),
            container_runtime_version: "weft-node-agent://0.1.0".into(),
            kubelet_version: "v1.37.2".into(),
            machine_id: "weft-e2e".into(),
            system_uuid: "weft-e2e".into(),
            boot_id: "weft-e2e".into(),
            ..Default::default()
        }),
        // The API server then proxies exec/attach WebSockets straight to this agent.
        declared_features: Some(vec!["ExtendWebSocketsToKubelet".into()]),
        ..Default::default()
    }
}

async fn register(client: &Client, config: &Config) -> anyhow::Result<()> {
    let api: Api<Node> = Api::all(client.clone());
    let node = Node {
        metadata: ObjectMeta {
            name: Some(config.node_name.clone()),
            labels: Some(
                [
                    ("kubernetes.io/hostname", config.node_name.as_str()),
                    ("kubernetes.io/os", "linux"),
                    ("kubernetes.io/arch", "amd64"),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ),
            ..Default::default()
        },
        spec: Some(NodeSpec {
            pod_cidr: Some(config.pod_cidr.clone()),
            pod_cidrs: Some(vec![config.pod_cidr.clone()]),
            ..Default::default()
        }),
        status: None,
    };
    match api.create(&PostParams::default(), &node).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => return Err(e.into()),
    }
    patch_status(&api, config).await
}

async fn patch_status(api: &Api<Node>, config: &Config) -> anyhow::Result<()> {
    let patch = serde_json::json!({ "status": node_status(config) });
    api.patch_status(
        &config.node_name,
        &PatchParams::default(),
        &Patch::Strategic(&patch),
    )
    .await?;
    Ok(())
}

async fn heartbeat(client: Client, config: Config) {
    let api: Api<Node> = Api::all(client);
    loop {
        tokio::time::sleep(Duration::from_secs(20)).await;
        if let Err(e) = patch_status(&api, &config).await {
            tracing::warn!("node status: {e:#}");
        }
    }
}

async fn keep_lease(client: Client, node: String) {
    let api: Api<Lease> = Api::namespaced(client, "kube-node-lease");
    loop {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(node.clone()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(node.clone()),
                lease_duration_seconds: Some(40),
                renew_time: Some(MicroTime(Timestamp::now())),
                ..Default::default()
            }),
        };
        let params = PatchParams::apply("weft-node-agent").force();
        if let Err(e) = api.patch(&node, &params, &Patch::Apply(&lease)).await {
            tracing::warn!("lease: {e}");
        }
        tokio::time::sleep(Duration::from_secs(10)).await;
    }
}
