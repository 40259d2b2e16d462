//! One pod on the node: its sandbox, volumes and containers, in the kubelet's order (init
//! containers one by one, native sidecars started and kept running, then the main containers),
//! with probes, restart policy and back-off, graceful termination, and the pod status.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use k8s_openapi::api::core::v1::{
    Container, ContainerState, ContainerStateRunning, ContainerStateTerminated,
    ContainerStateWaiting, ContainerStatus, EnvVar, HostIP, Pod, PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use kube::{Api, Client};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::sync::{Notify, watch};

use crate::images::ImageTable;
use crate::launch::{BindMount, DEFAULT_CAPABILITIES, LaunchSpec, SPEC_ENV};
use crate::netns::{Ipam, Sandbox};
use crate::probe::{self, Outcome};
use crate::volumes::{self, PodVolumes};

/// What every pod worker shares with the node.
pub struct NodeContext {
    pub client: Client,
    pub node_ip: Ipv4Addr,
    pub dns_ip: Ipv4Addr,
    pub cluster_domain: String,
    pub state_dir: PathBuf,
    pub images: ImageTable,
    pub ipam: Mutex<Ipam>,
    pub self_exe: PathBuf,
    /// `KUBERNETES_SERVICE_*` environment of every container.
    pub kubernetes_service: (String, u16),
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    Init,
    Sidecar,
    Main,
}

#[derive(Clone, Debug)]
pub struct Slot {
    pub kind: Kind,
    pub restart_count: i32,
    pub state: ContainerState,
    pub last_state: Option<ContainerState>,
    pub ready: bool,
    pub started: bool,
    pub pid: Option<i32>,
}

#[derive(Default)]
pub struct PodState {
    pub ip: Option<Ipv4Addr>,
    pub sandbox_ready: bool,
    pub initialized: bool,
    pub phase: Option<&'static str>,
    pub message: Option<String>,
    pub start_time: Option<Timestamp>,
    pub containers: BTreeMap<String, Slot>,
    pub launch: BTreeMap<String, LaunchSpec>,
}

/// The node's handle on a running pod; the kubelet API (logs, exec) reads it.
pub struct PodRuntime {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub dir: PathBuf,
    pub state: Mutex<PodState>,
    pub changed: Notify,
}

impl PodRuntime {
    pub fn log_path(&self, container: &str, restart: i32) -> PathBuf {
        self.dir
            .join("logs")
            .join(container)
            .join(format!("{restart}.log"))
    }

    fn update(&self, f: impl FnOnce(&mut PodState)) {
        if let Ok(mut st) = self.state.lock() {
            f(&mut st);
        }
        self.changed.notify_one();
    }

    fn slot(&self, name: &str, f: impl FnOnce(&mut Slot)) {
        self.update(|st| {
            if let Some(slot) = st.containers.get_mut(name) {
                f(slot);
            }
        });
    }

    fn snapshot(&self, name: &str) -> Option<Slot> {
        self.state.lock().ok()?.containers.get(name).cloned()
    }
}

fn now() -> Time {
    Time(Timestamp::now())
}

fn waiting(reason: &str, message: Option<String>) -> ContainerState {
    ContainerState {
        waiting: Some(ContainerStateWaiting {
            reason: Some(reason.into()),
            message,
        }),
        ..Default::default()
    }
}

/// Runs a pod until it is deleted. `pods` carries every newer version of the pod object.
pub async fn run(
    ctx: Arc<NodeContext>,
    rt: Arc<PodRuntime>,
    mut pods: watch::Receiver<Option<Pod>>,
) {
    let Some(pod) = pods.borrow().clone() else {
        return;
    };
    let spec = pod.spec.clone().unwrap_or_default();
    rt.update(|st| {
        st.start_time = Some(Timestamp::now());
        for (kind, c) in spec
            .init_containers
            .iter()
            .flatten()
            .map(|c| (init_kind(c), c))
            .chain(spec.containers.iter().map(|c| (Kind::Main, c)))
        {
            st.containers.insert(
                c.name.clone(),
                Slot {
                    kind,
                    restart_count: 0,
                    state: waiting("PodInitializing", None),
                    last_state: None,
                    ready: false,
                    started: false,
                    pid: None,
                },
            );
        }
    });
    let status_task = tokio::spawn(sync_status(ctx.clone(), rt.clone(), pods.clone()));

    // Sandbox and volumes, retried until they work or the pod goes away.
    let ip = match ctx
        .ipam
        .lock()
        .map_err(|_| anyhow::anyhow!("ipam poisoned"))
        .and_then(|mut i| i.allocate())
    {
        Ok(ip) => ip,
        Err(e) => {
            rt.update(|st| st.message = Some(format!("no pod IP: {e}")));
            return;
        }
    };
    let sandbox = Sandbox::for_pod(&rt.uid, ip);
    let volumes = Arc::new(tokio::sync::Mutex::new(PodVolumes::new(&rt.dir)));
    let (stop_main, stop_main_rx) = watch::channel(false);
    let (stop_sidecars, stop_sidecars_rx) = watch::channel(false);
    // Supervisors are detached tasks: they stop through the stop channels, never by being
    // dropped, so no container process is orphaned.
    let spawn_supervisor = |sup: Supervisor, policy: String, stop: watch::Receiver<bool>| {
        tokio::spawn(sup.run(policy, stop))
    };
    let work_pods = pods.clone();
    let pods_now = move || work_pods.borrow().clone();

    let work = async {
        loop {
            match sandbox.create(ctx.node_ip).await {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(pod = %rt.name, "sandbox: {e:#}");
                    rt.update(|st| st.message = Some(format!("creating the pod sandbox: {e:#}")));
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
            }
        }
        write_dns_files(&ctx, &rt, &pod, ip)?;
        rt.update(|st| {
            st.ip = Some(ip);
            st.sandbox_ready = true;
            st.message = None;
        });
        loop {
            let result = volumes.lock().await.sync(&ctx.client, &pod).await;
            match result {
                Ok(()) => break,
                Err(e) => {
                    let msg = format!("{e:#}");
                    for c in spec
                        .containers
                        .iter()
                        .chain(spec.init_containers.iter().flatten())
                    {
                        rt.slot(&c.name, |s| {
                            s.state = waiting("CreateContainerConfigError", Some(msg.clone()))
                        });
                    }
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
            }
        }
        // Keep volumes fresh (ConfigMaps, Secrets, tokens) while the pod lives.
        let refresher = {
            let (ctx, volumes, pods) = (ctx.clone(), volumes.clone(), pods_now.clone());
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_secs(3)).await;
                    let Some(pod) = pods() else { break };
                    if let Err(e) = volumes.lock().await.sync(&ctx.client, &pod).await {
                        tracing::debug!("volume refresh: {e:#}");
                    }
                }
            })
        };

        let policy = spec
            .restart_policy
            .clone()
            .unwrap_or_else(|| "Always".into());
        for c in spec.init_containers.iter().flatten() {
            let sup = Supervisor {
                ctx: ctx.clone(),
                rt: rt.clone(),
                pod: pod.clone(),
                container: c.clone(),
                volumes: volumes.clone(),
            };
            if init_kind(c) == Kind::Sidecar {
                let mut started = rt_started(&rt, &c.name);
                spawn_supervisor(sup, "Always".into(), stop_sidecars_rx.clone());
                while !started() {
                    if pods_now().as_ref().is_none_or(deleting) {
                        return Ok(());
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            } else {
                let init_policy = if policy == "Never" {
                    "Never"
                } else {
                    "OnFailure"
                };
                let exit = spawn_supervisor(sup, init_policy.into(), stop_main_rx.clone())
                    .await
                    .ok()
                    .flatten();
                if exit != Some(0) {
                    if pods_now().as_ref().is_none_or(deleting) {
                        return Ok(());
                    }
                    rt.update(|st| st.phase = Some("Failed"));
                    return Ok(());
                }
            }
        }
        rt.update(|st| st.initialized = true);
        let mains: Vec<_> = spec
            .containers
            .iter()
            .map(|c| {
                let sup = Supervisor {
                    ctx: ctx.clone(),
                    rt: rt.clone(),
                    pod: pod.clone(),
                    container: c.clone(),
                    volumes: volumes.clone(),
                };
                spawn_supervisor(sup, policy.clone(), stop_main_rx.clone())
            })
            .collect();
        let results = futures::future::join_all(mains).await;
        // Every main container is done for good (Never, or OnFailure with success): the pod
        // completes and its sidecars stop, as for a Job.
        let failed = results.iter().any(|r| !matches!(r, Ok(Some(0))));
        let _ = stop_sidecars.send(true);
        refresher.abort();
        if pods_now().as_ref().is_some_and(|p| !deleting(p)) {
            rt.update(|st| st.phase = Some(if failed { "Failed" } else { "Succeeded" }));
        }
        anyhow::Ok(())
    };

    tokio::pin!(work);
    tokio::select! {
        result = &mut work => {
            if let Err(e) = result {
                rt.update(|st| st.message = Some(format!("{e:#}")));
            }
            wait_deleted(&mut pods).await;
        }
        () = wait_deleted(&mut pods) => {}
    }
    // Termination: main and init containers first, then the sidecars, as the kubelet does.
    let grace = spec.termination_grace_period_seconds.unwrap_or(30).max(0) as u64;
    let limit = Duration::from_secs(grace + 5);
    let _ = stop_main.send(true);
    wait_stopped(&rt, |k| k != Kind::Sidecar, limit).await;
    let _ = stop_sidecars.send(true);
    wait_stopped(&rt, |_| true, limit).await;
    volumes.lock().await.teardown();
    sandbox.destroy().await;
    if let Ok(mut ipam) = ctx.ipam.lock() {
        ipam.release(ip);
    }
    status_task.abort();
    let still_there = pods.borrow().is_some();
    if still_there {
        let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &rt.namespace);
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some(rt.uid.clone()),
                resource_version: None,
            }),
            ..Default::default()
        };
        if let Err(e) = api.delete(&rt.name, &params).await {
            tracing::debug!(pod = %rt.name, "final delete: {e}");
        }
    }
    let _ = std::fs::remove_dir_all(&rt.dir);
}

/// Resolves once the pod is deleted (deletionTimestamp set, or gone from the API).
async fn wait_deleted(pods: &mut watch::Receiver<Option<Pod>>) {
    loop {
        if pods.borrow().as_ref().is_none_or(deleting) {
            return;
        }
        if pods.changed().await.is_err() {
            return;
        }
    }
}

/// Resolves once the stop signal is set (the watch guard is not held across awaits).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

fn deleting(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_some()
}

fn init_kind(c: &Container) -> Kind {
    if c.restart_policy.as_deref() == Some("Always") {
        Kind::Sidecar
    } else {
        Kind::Init
    }
}

fn rt_started(rt: &Arc<PodRuntime>, name: &str) -> impl FnMut() -> bool {
    let (rt, name) = (rt.clone(), name.to_string());
    move || rt.snapshot(&name).is_some_and(|s| s.started)
}

async fn wait_stopped(rt: &PodRuntime, which: impl Fn(Kind) -> bool, limit: Duration) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        let pids: Vec<i32> = rt
            .state
            .lock()
            .map(|st| {
                st.containers
                    .values()
                    .filter(|s| which(s.kind))
                    .filter_map(|s| s.pid)
                    .collect()
            })
            .unwrap_or_default();
        if pids.is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The pod's /etc/resolv.conf and /etc/hosts, bound over the host's in each container.
fn write_dns_files(
    ctx: &NodeContext,
    rt: &PodRuntime,
    pod: &Pod,
    ip: Ipv4Addr,
) -> anyhow::Result<()> {
    let spec = pod.spec.as_ref();
    let policy = spec
        .and_then(|s| s.dns_policy.clone())
        .unwrap_or_else(|| "ClusterFirst".into());
    let resolv = if policy == "Default" {
        std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default()
    } else {
        let d = &ctx.cluster_domain;
        format!(
            "search {ns}.svc.{d} svc.{d} {d}\nnameserver {dns}\noptions ndots:5\n",
            ns = rt.namespace,
            dns = ctx.dns_ip
        )
    };
    let etc = rt.dir.join("etc");
    std::fs::create_dir_all(&etc)?;
    std::fs::write(etc.join("resolv.conf"), resolv)?;
    let hostname = spec
        .and_then(|s| s.hostname.clone())
        .unwrap_or_else(|| rt.name.clone());
    std::fs::write(
        etc.join("hosts"),
        format!("127.0.0.1\tlocalhost\n::1\tlocalhost\n{ip}\t{hostname}\n"),
    )?;
    std::fs::write(etc.join("hostname"), format!("{hostname}\n"))?;
    Ok(())
}

/// Keeps one container running according to its restart policy.
struct Supervisor {
    ctx: Arc<NodeContext>,
    rt: Arc<PodRuntime>,
    pod: Pod,
    container: Container,
    volumes: Arc<tokio::sync::Mutex<PodVolumes>>,
}

impl Supervisor {
    /// Returns the last exit code once the container will not run again.
    async fn run(self, policy: String, mut stop: watch::Receiver<bool>) -> Option<i32> {
        let name = self.container.name.clone();
        let mut backoff = Duration::from_secs(10);
        let mut last_exit = None;
        loop {
            if *stop.borrow() {
                return last_exit;
            }
            let started_at = Instant::now();
            let exit = match self.start().await {
                Ok(child) => self.watch(child, &mut stop).await,
                Err((reason, message)) => {
                    tracing::info!(pod = %self.rt.name, container = %name, "{reason}: {message}");
                    let terminated = reason == "StartError";
                    self.rt.slot(&name, |s| {
                        if terminated {
                            s.last_state = Some(ContainerState {
                                terminated: Some(ContainerStateTerminated {
                                    exit_code: 128,
                                    reason: Some(reason.clone()),
                                    message: Some(message.clone()),
                                    finished_at: Some(now()),
                                    ..Default::default()
                                }),
                                ..Default::default()
                            });
                        }
                        s.state = waiting(&reason, Some(message.clone()));
                    });
                    if terminated { Some(128) } else { None }
                }
            };
            last_exit = exit.or(last_exit);
            let restart = match policy.as_str() {
                "Always" => true,
                "OnFailure" => exit != Some(0),
                _ => false,
            } && !*stop.borrow();
            if !restart {
                return last_exit;
            }
            if started_at.elapsed() > Duration::from_secs(600) {
                backoff = Duration::from_secs(10);
            }
            if exit.is_some() {
                self.rt.slot(&name, |s| {
                    s.restart_count += 1;
                    let message = format!(
                        "back-off {}s restarting failed container={name} pod={}",
                        backoff.as_secs(),
                        self.rt.name
                    );
                    let previous =
                        std::mem::replace(&mut s.state, waiting("CrashLoopBackOff", Some(message)));
                    if previous.terminated.is_some() {
                        s.last_state = Some(previous);
                    }
                });
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                () = stopped(&mut stop) => return last_exit,
            }
            backoff = (backoff * 2).min(Duration::from_secs(300));
        }
    }

    /// Builds the launch spec and starts the process; errors carry a waiting reason.
    async fn start(&self) -> Result<tokio::process::Child, (String, String)> {
        let c = &self.container;
        let image_ref = c.image.clone().unwrap_or_default();
        let image = self.ctx.images.resolve(&image_ref).map_err(|m| {
            (
                "ImagePullBackOff".to_string(),
                format!("Back-off pulling image {image_ref:?}: ErrImagePull: {m}"),
            )
        })?;
        let env = self
            .env(&image)
            .await
            .map_err(|e| ("CreateContainerConfigError".to_string(), format!("{e:#}")))?;
        let command = c.command.clone().unwrap_or_default();
        let args = c.args.clone().unwrap_or_default();
        let mut argv = image
            .argv(&command, &args, &env)
            .map_err(|m| ("CreateContainerError".to_string(), m))?;
        let program = argv.first().cloned().unwrap_or_default();
        let resolved = image.resolve_program(&program).ok_or_else(|| ("StartError".to_string(),
            format!("failed to create containerd task: exec: {program:?}: executable file not found in $PATH")))?;
        argv[0] = resolved.to_string_lossy().into_owned();

        let mut mounts = Vec::new();
        for m in c.volume_mounts.iter().flatten() {
            let source = self
                .volumes
                .lock()
                .await
                .source(&self.pod, &m.name)
                .ok_or_else(|| {
                    (
                        "CreateContainerConfigError".to_string(),
                        format!("volumeMount {:?} names no volume of the pod", m.name),
                    )
                })?;
            let source = match m.sub_path.as_deref() {
                Some(sub) if !sub.is_empty() => source.join(sub),
                _ => source,
            };
            mounts.push(BindMount {
                source,
                target: PathBuf::from(&m.mount_path),
                read_only: m.read_only.unwrap_or(false),
            });
        }
        let etc = self.rt.dir.join("etc");
        for f in ["resolv.conf", "hosts", "hostname"] {
            mounts.push(BindMount {
                source: etc.join(f),
                target: PathBuf::from("/etc").join(f),
                read_only: false,
            });
        }
        let (uid, gid, groups, capabilities, no_new_privs) = identity(&self.pod, c);
        let spec = LaunchSpec {
            netns: Sandbox::for_pod(&self.rt.uid, Ipv4Addr::UNSPECIFIED).path(),
            hostname: self
                .pod
                .spec
                .as_ref()
                .and_then(|s| s.hostname.clone())
                .unwrap_or_else(|| self.rt.name.clone()),
            mounts,
            image_dir: Some(image.bin_dir.clone()),
            join_pid: None,
            uid,
            gid,
            groups,
            capabilities,
            no_new_privs,
            cwd: PathBuf::from(c.working_dir.clone().unwrap_or_else(|| "/".into())),
            env,
            argv,
        };
        let restart = self.rt.snapshot(&c.name).map_or(0, |s| s.restart_count);
        let log_path = self.rt.log_path(&c.name, restart);
        let log = open_log(&log_path)
            .map_err(|e| ("RunContainerError".to_string(), format!("log file: {e}")))?;
        let log2 = log
            .try_clone()
            .map_err(|e| ("RunContainerError".to_string(), e.to_string()))?;
        let spec_json = serde_json::to_string(&spec)
            .map_err(|e| ("RunContainerError".to_string(), e.to_string()))?;
        let child = tokio::process::Command::new(&self.ctx.self_exe)
            .arg("launch")
            .env_clear()
            .env(SPEC_ENV, spec_json)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|e| ("RunContainerError".to_string(), e.to_string()))?;
        let pid = child.id().map(|p| p as i32);
        self.rt.update(|st| {
            st.launch.insert(c.name.clone(), spec);
            if let Some(s) = st.containers.get_mut(&c.name) {
                s.pid = pid;
                s.state = ContainerState {
                    running: Some(ContainerStateRunning {
                        started_at: Some(now()),
                    }),
                    ..Default::default()
                };
                s.ready = false;
                s.started = false;
            }
        });
        Ok(child)
    }

    /// Waits for the process, running its probes; stops it on request or failed liveness.
    async fn watch(
        &self,
        mut child: tokio::process::Child,
        stop: &mut watch::Receiver<bool>,
    ) -> Option<i32> {
        let c = &self.container;
        let pid = child.id().map(|p| p as i32);
        let (kill_tx, mut kill_rx) = tokio::sync::mpsc::channel::<String>(1);
        let probes = tokio::spawn(run_probes(
            self.ctx.clone(),
            self.rt.clone(),
            c.clone(),
            kill_tx,
        ));
        let grace = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.termination_grace_period_seconds)
            .unwrap_or(30)
            .max(0) as u64;
        let mut reason_override = None;
        let status = tokio::select! {
            status = child.wait() => status.ok(),
            () = stopped(stop) => terminate(&mut child, pid, grace).await,
            Some(why) = kill_rx.recv() => {
                tracing::info!(pod = %self.rt.name, container = %c.name, "{why}; restarting");
                reason_override = Some("Error");
                terminate(&mut child, pid, grace).await
            }
        };
        probes.abort();
        use std::os::unix::process::ExitStatusExt;
        let code = status.map(|s| s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(9)));
        let exit = code.unwrap_or(137);
        self.rt.slot(&c.name, |s| {
            let started_at = s.state.running.as_ref().and_then(|r| r.started_at.clone());
            s.state = ContainerState {
                terminated: Some(ContainerStateTerminated {
                    exit_code: exit,
                    reason: Some(
                        reason_override
                            .unwrap_or(if exit == 0 { "Completed" } else { "Error" })
                            .into(),
                    ),
                    started_at,
                    finished_at: Some(now()),
                    ..Default::default()
                }),
                ..Default::default()
            };
            s.pid = None;
            s.ready = false;
        });
        Some(exit)
    }

    async fn env(&self, image: &crate::images::Image) -> anyhow::Result<Vec<(String, String)>> {
        let pod = &self.pod;
        let c = &self.container;
        let ns = self.rt.namespace.clone();
        let (svc_ip, svc_port) = &self.ctx.kubernetes_service;
        let mut env: Vec<(String, String)> = vec![
            ("PATH".into(), image.path_env()),
            ("HOSTNAME".into(), self.rt.name.clone()),
            ("HOME".into(), "/".into()),
            ("KUBERNETES_SERVICE_HOST".into(), svc_ip.clone()),
            ("KUBERNETES_SERVICE_PORT".into(), svc_port.to_string()),
            ("KUBERNETES_SERVICE_PORT_HTTPS".into(), svc_port.to_string()),
            (
                "KUBERNETES_PORT".into(),
                format!("tcp://{svc_ip}:{svc_port}"),
            ),
            (
                "KUBERNETES_PORT_443_TCP".into(),
                format!("tcp://{svc_ip}:{svc_port}"),
            ),
            ("KUBERNETES_PORT_443_TCP_PROTO".into(), "tcp".into()),
            ("KUBERNETES_PORT_443_TCP_PORT".into(), svc_port.to_string()),
            ("KUBERNETES_PORT_443_TCP_ADDR".into(), svc_ip.clone()),
        ];
        let set = |env: &mut Vec<(String, String)>, k: String, v: String| {
            env.retain(|(name, _)| *name != k);
            env.push((k, v));
        };
        let mut live_pod = pod.clone();
        if let Ok(st) = self.rt.state.lock() {
            let status = live_pod.status.get_or_insert_with(Default::default);
            status.pod_ip = st.ip.map(|i| i.to_string());
            status.host_ip = Some(self.ctx.node_ip.to_string());
        }
        for from in c.env_from.iter().flatten() {
            let prefix = from.prefix.clone().unwrap_or_default();
            let data = if let Some(cm) = &from.config_map_ref {
                volumes::config_map_data(
                    &self.ctx.client,
                    &ns,
                    &cm.name,
                    cm.optional.unwrap_or(false),
                )
                .await?
            } else if let Some(s) = &from.secret_ref {
                volumes::secret_data(&self.ctx.client, &ns, &s.name, s.optional.unwrap_or(false))
                    .await?
            } else {
                BTreeMap::new()
            };
            for (k, v) in data {
                set(
                    &mut env,
                    format!("{prefix}{k}"),
                    String::from_utf8_lossy(&v).into_owned(),
                );
            }
        }
        for EnvVar {
            name,
            value,
            value_from,
        } in c.env.iter().flatten()
        {
            let value = match (value, value_from) {
                (Some(v), _) => expand(v, &env),
                (None, Some(from)) => {
                    if let Some(f) = &from.field_ref {
                        volumes::field_value(&live_pod, &f.field_path)?
                    } else if let Some(r) = &from.resource_field_ref {
                        volumes::resource_value(&r.resource)
                    } else if let Some(k) = &from.config_map_key_ref {
                        let data = volumes::config_map_data(
                            &self.ctx.client,
                            &ns,
                            &k.name,
                            k.optional.unwrap_or(false),
                        )
                        .await?;
                        match data.get(&k.key) {
                            Some(v) => String::from_utf8_lossy(v).into_owned(),
                            None if k.optional.unwrap_or(false) => continue,
                            None => anyhow::bail!(
                                "couldn't find key {} in ConfigMap {ns}/{}",
                                k.key,
                                k.name
                            ),
                        }
                    } else if let Some(k) = &from.secret_key_ref {
                        let data = volumes::secret_data(
                            &self.ctx.client,
                            &ns,
                            &k.name,
                            k.optional.unwrap_or(false),
                        )
                        .await?;
                        match data.get(&k.key) {
                            Some(v) => String::from_utf8_lossy(v).into_owned(),
                            None if k.optional.unwrap_or(false) => continue,
                            None => anyhow::bail!(
                                "couldn't find key {} in Secret {ns}/{}",
                                k.key,
                                k.name
                            ),
                        }
                    } else {
                        String::new()
                    }
                }
                (None, None) => String::new(),
            };
            set(&mut env, name.clone(), value);
        }
        Ok(env)
    }
}

/// `$(VAR)` references to earlier variables, as the kubelet expands them (`$$` escapes).
pub(crate) fn expand(input: &str, env: &[(String, String)]) -> String {
    let mut out = String::new();
    let mut rest = input;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let tail = &rest[i + 1..];
        if let Some(stripped) = tail.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some(body) = tail.strip_prefix('(') {
            match body.find(')') {
                Some(end) => {
                    let var = &body[..end];
                    match env.iter().rev().find(|(k, _)| k == var) {
                        Some((_, v)) => out.push_str(v),
                        None => out.push_str(&format!("$({var})")),
                    }
                    rest = &body[end + 1..];
                }
                None => {
                    out.push('$');
                    rest = tail;
                }
            }
        } else {
            out.push('$');
            rest = tail;
        }
    }
    out.push_str(rest);
    out
}

/// UID, GID, groups, capabilities and no_new_privs from the pod's and container's securityContext.
fn identity(pod: &Pod, c: &Container) -> (u32, u32, Vec<u32>, Vec<String>, bool) {
    let psc = pod
        .spec
        .as_ref()
        .and_then(|s| s.security_context.clone())
        .unwrap_or_default();
    let csc = c.security_context.clone().unwrap_or_default();
    let uid = csc.run_as_user.or(psc.run_as_user).unwrap_or(0) as u32;
    let gid = csc.run_as_group.or(psc.run_as_group).unwrap_or(0) as u32;
    let mut groups: Vec<u32> = psc
        .supplemental_groups
        .iter()
        .flatten()
        .map(|g| *g as u32)
        .collect();
    if let Some(fs) = psc.fs_group {
        groups.push(fs as u32);
    }
    let caps = csc.capabilities.clone().unwrap_or_default();
    let norm = |c: &String| c.to_lowercase().trim_start_matches("cap_").to_string();
    let drop: Vec<String> = caps.drop.iter().flatten().map(norm).collect();
    let mut set: Vec<String> = if csc.privileged == Some(true) {
        vec!["all".into()]
    } else if uid == 0 && !drop.iter().any(|d| d == "all") {
        DEFAULT_CAPABILITIES
            .iter()
            .map(|s| s.to_string())
            .filter(|c| !drop.contains(c))
            .collect()
    } else {
        Vec::new()
    };
    for add in caps.add.iter().flatten().map(norm) {
        if !set.contains(&add) {
            set.push(add);
        }
    }
    let no_new_privs = csc.allow_privilege_escalation == Some(false);
    (uid, gid, groups, set, no_new_privs)
}

fn open_log(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
}

/// SIGTERM to the container's process group, SIGKILL after the grace period.
async fn terminate(
    child: &mut tokio::process::Child,
    pid: Option<i32>,
    grace: u64,
) -> Option<std::process::ExitStatus> {
    if let Some(pid) = pid {
        let _ = killpg(Pid::from_raw(pid), Signal::SIGTERM);
    }
    match tokio::time::timeout(Duration::from_secs(grace), child.wait()).await {
        Ok(status) => status.ok(),
        Err(_) => {
            if let Some(pid) = pid {
                let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
            }
            child.wait().await.ok()
        }
    }
}

/// Startup, then liveness and readiness probes of one container run.
async fn run_probes(
    ctx: Arc<NodeContext>,
    rt: Arc<PodRuntime>,
    c: Container,
    kill: tokio::sync::mpsc::Sender<String>,
) {
    let Some(ip) = rt.state.lock().ok().and_then(|s| s.ip) else {
        return;
    };
    let exec = |rt: Arc<PodRuntime>, ctx: Arc<NodeContext>, name: String| {
        move |cmd: Vec<String>| {
            let (rt, ctx, name) = (rt.clone(), ctx.clone(), name.clone());
            async move { exec_in(&ctx, &rt, &name, cmd).await }
        }
    };
    if let Some(p) = &c.startup_probe {
        tokio::time::sleep(Duration::from_secs(
            p.initial_delay_seconds.unwrap_or(0).max(0) as u64,
        ))
        .await;
        let mut failures = 0;
        loop {
            match probe::check(p, &c, ip, exec(rt.clone(), ctx.clone(), c.name.clone())).await {
                Outcome::Success => break,
                Outcome::Failure(why) => {
                    failures += 1;
                    if failures >= p.failure_threshold.unwrap_or(3) {
                        let _ = kill.send(format!("startup probe failed: {why}")).await;
                        return;
                    }
                }
            }
            tokio::time::sleep(Duration::from_secs(
                p.period_seconds.unwrap_or(10).max(1) as u64
            ))
            .await;
        }
    }
    rt.slot(&c.name, |s| {
        s.started = true;
        if c.readiness_probe.is_none() {
            s.ready = true;
        }
    });
    let liveness = c.liveness_probe.clone().map(|p| {
        let (rt, ctx, c, kill) = (rt.clone(), ctx.clone(), c.clone(), kill.clone());
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(
                p.initial_delay_seconds.unwrap_or(0).max(0) as u64,
            ))
            .await;
            let mut failures = 0;
            loop {
                tokio::time::sleep(Duration::from_secs(
                    p.period_seconds.unwrap_or(10).max(1) as u64
                ))
                .await;
                match probe::check(&p, &c, ip, exec(rt.clone(), ctx.clone(), c.name.clone())).await
                {
                    Outcome::Success => failures = 0,
                    Outcome::Failure(why) => {
                        failures += 1;
                        if failures >= p.failure_threshold.unwrap_or(3) {
                            let _ = kill.send(format!("liveness probe failed: {why}")).await;
                            return;
                        }
                    }
                }
            }
        })
    });
    if let Some(p) = &c.readiness_probe {
        tokio::time::sleep(Duration::from_secs(
            p.initial_delay_seconds.unwrap_or(0).max(0) as u64,
        ))
        .await;
        let (mut ok, mut bad) = (0, 0);
        loop {
            let outcome =
                probe::check(p, &c, ip, exec(rt.clone(), ctx.clone(), c.name.clone())).await;
            match outcome {
                Outcome::Success => {
                    ok += 1;
                    bad = 0;
                }
                Outcome::Failure(_) => {
                    bad += 1;
                    ok = 0;
                }
            }
            if ok >= p.success_threshold.unwrap_or(1) {
                rt.slot(&c.name, |s| {
                    if !s.ready {
                        s.ready = true
                    }
                });
            } else if bad >= p.failure_threshold.unwrap_or(3) {
                rt.slot(&c.name, |s| {
                    if s.ready {
                        s.ready = false
                    }
                });
            }
            tokio::time::sleep(Duration::from_secs(
                p.period_seconds.unwrap_or(10).max(1) as u64
            ))
            .await;
        }
    }
    if let Some(l) = liveness {
        let _ = l.await;
    }
}

/// Runs a command inside a running container (exec probes); returns its exit code.
pub async fn exec_in(
    ctx: &NodeContext,
    rt: &PodRuntime,
    container: &str,
    argv: Vec<String>,
) -> anyhow::Result<i32> {
    let mut cmd = exec_command(ctx, rt, container, argv)?;
    let status = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await?;
    Ok(status.code().unwrap_or(137))
}

/// A command that enters a running container's namespaces with its identity.
pub fn exec_command(
    ctx: &NodeContext,
    rt: &PodRuntime,
    container: &str,
    argv: Vec<String>,
) -> anyhow::Result<tokio::process::Command> {
    let st = rt
        .state
        .lock()
        .map_err(|_| anyhow::anyhow!("pod state poisoned"))?;
    let pid = st
        .containers
        .get(container)
        .and_then(|s| s.pid)
        .context("container is not running")?;
    let mut spec = st
        .launch
        .get(container)
        .cloned()
        .context("container was never started")?;
    drop(st);
    spec.join_pid = Some(pid);
    spec.mounts.clear();
    let program = argv.first().cloned().context("empty command")?;
    // Resolve through the container's PATH (its image's programs first).
    let path = spec
        .env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    let resolved = if program.contains('/') {
        Some(PathBuf::from(&program))
    } else {
        path.split(':')
            .map(|d| PathBuf::from(d).join(&program))
            .find(|p| p.exists())
    };
    spec.argv = argv;
    spec.argv[0] = resolved
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or(program);
    let mut cmd = tokio::process::Command::new(&ctx.self_exe);
    cmd.arg("launch")
        .env_clear()
        .env(SPEC_ENV, serde_json::to_string(&spec)?);
    Ok(cmd)
}

/// Patches the pod status whenever the runtime state changes (and every few seconds).
async fn sync_status(
    ctx: Arc<NodeContext>,
    rt: Arc<PodRuntime>,
    pods: watch::Receiver<Option<Pod>>,
) {
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &rt.namespace);
    let mut last: Option<serde_json::Value> = None;
    loop {
        let Some(pod) = pods.borrow().clone() else {
            return;
        };
        let status = build_status(&ctx, &rt, &pod);
        let value = serde_json::json!({ "status": status });
        if last.as_ref() != Some(&value) {
            match api
                .patch_status(&rt.name, &PatchParams::default(), &Patch::Merge(&value))
                .await
            {
                Ok(_) => last = Some(value),
                Err(e) => tracing::debug!(pod = %rt.name, "status patch: {e}"),
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), rt.changed.notified()).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn build_status(ctx: &NodeContext, rt: &PodRuntime, pod: &Pod) -> PodStatus {
    let Ok(st) = rt.state.lock() else {
        return PodStatus::default();
    };
    let spec = pod.spec.clone().unwrap_or_default();
    let status_of = |c: &Container| -> ContainerStatus {
        let slot = st.containers.get(&c.name);
        ContainerStatus {
            name: c.name.clone(),
            image: c.image.clone().unwrap_or_default(),
            image_id: format!("weft-local://{}", c.image.clone().unwrap_or_default()),
            container_id: slot
                .filter(|s| s.state.waiting.is_none())
                .map(|s| format!("weft://{}-{}-{}", rt.uid, c.name, s.restart_count)),
            ready: slot.is_some_and(|s| s.ready),
            started: Some(slot.is_some_and(|s| s.started)),
            restart_count: slot.map_or(0, |s| s.restart_count),
            state: slot.map(|s| s.state.clone()),
            last_state: slot.and_then(|s| s.last_state.clone()),
            ..Default::default()
        }
    };
    let init: Vec<ContainerStatus> = spec
        .init_containers
        .iter()
        .flatten()
        .map(status_of)
        .collect();
    let mains: Vec<ContainerStatus> = spec.containers.iter().map(status_of).collect();
    let sidecars_ready = spec
        .init_containers
        .iter()
        .flatten()
        .filter(|c| init_kind(c) == Kind::Sidecar)
        .all(|c| st.containers.get(&c.name).is_some_and(|s| s.ready));
    let containers_ready = st.initialized && sidecars_ready && mains.iter().all(|c| c.ready);
    let any_running = mains
        .iter()
        .any(|c| c.state.as_ref().is_some_and(|s| s.running.is_some()));
    let phase = st.phase.unwrap_or(
        if st.initialized && (any_running || mains.iter().any(|c| c.restart_count > 0)) {
            "Running"
        } else {
            "Pending"
        },
    );
    let cond = |t: &str, ok: bool| PodCondition {
        type_: t.into(),
        status: if ok { "True" } else { "False" }.into(),
        last_transition_time: None,
        ..Default::default()
    };
    let ip = st.ip.map(|i| i.to_string());
    PodStatus {
        phase: Some(phase.into()),
        message: st.message.clone(),
        host_ip: Some(ctx.node_ip.to_string()),
        host_ips: Some(vec![HostIP {
            ip: ctx.node_ip.to_string(),
        }]),
        pod_ip: ip.clone(),
        pod_ips: ip.map(|ip| vec![PodIP { ip }]),
        start_time: st.start_time.map(Time),
        conditions: Some(vec![
            cond("PodReadyToStartContainers", st.sandbox_ready),
            cond("Initialized", st.initialized),
            cond("Ready", containers_ready && phase == "Running"),
            cond("ContainersReady", containers_ready),
            cond("PodScheduled", true),
        ]),
        init_container_statuses: Some(init),
        container_statuses: Some(mains),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::expand;

    #[test]
    fn expands_like_the_kubelet() {
        let env = vec![
            ("A".to_string(), "1".to_string()),
            ("B".to_string(), "x".to_string()),
        ];
        assert_eq!(expand("$(A)-$(B)", &env), "1-x");
        assert_eq!(expand("$$(A)", &env), "$(A)");
        assert_eq!(expand("$(MISSING)", &env), "$(MISSING)");
        assert_eq!(expand("cost $5", &env), "cost $5");
    }
}
