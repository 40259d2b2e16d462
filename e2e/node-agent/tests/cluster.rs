//! The local cluster's acceptance stories (issue: the local cluster), checked with kubectl
//! against real Kubernetes components and the node agent.

mod support;

use std::sync::OnceLock;
use std::time::Duration;

use support::{Cluster, Namespace, cluster, eventually, wait_for};

const ECHO: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: echo}
spec:
  replicas: 3
  selector: {matchLabels: {app: echo}}
  template:
    metadata: {labels: {app: echo}}
    spec:
      terminationGracePeriodSeconds: 5
      containers:
      - name: echo
        image: weft.dev/echo:dev
        env:
        - name: POD_NAME
          valueFrom: {fieldRef: {fieldPath: metadata.name}}
        ports: [{containerPort: 8080, name: http}]
        readinessProbe:
          httpGet: {path: /healthz, port: http}
          periodSeconds: 1
          failureThreshold: 1
---
apiVersion: v1
kind: Service
metadata: {name: echo}
spec:
  selector: {app: echo}
  ports: [{port: 80, targetPort: 8080, name: http}]
"#;

const MINUTE: Duration = Duration::from_secs(60);

#[test]
fn one_ready_node_runs_kubernetes_1_37() {
    let c = cluster();
    let ready = c.ok(&[
        "get",
        "node",
        "weft-node",
        "-o",
        "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
    ]);
    assert_eq!(ready, "True");
    let version = c.ok(&["version", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&version).unwrap();
    assert!(
        v["serverVersion"]["gitVersion"]
            .as_str()
            .unwrap()
            .starts_with("v1.37."),
        "{version}"
    );
    let ip = c.ok(&[
        "get",
        "node",
        "weft-node",
        "-o",
        "jsonpath={.status.addresses[?(@.type==\"InternalIP\")].address}",
    ]);
    assert!(ip.starts_with("198.18."), "node IP {ip}");
}

#[test]
fn a_deployment_behind_a_service_is_reachable_by_dns_from_a_job() {
    let ns = cluster().namespace("t-service");
    ns.apply(ECHO);
    ns.ok(&["rollout", "status", "deployment/echo", "--timeout=90s"]);
    let ips = ns.jsonpath("pods -l app=echo", "{.items[*].status.podIP}");
    let mut ips: Vec<&str> = ips.split_whitespace().collect();
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), 3, "three distinct pod IPs: {ips:?}");
    assert!(ips.iter().all(|ip| ip.starts_with("198.18.")), "{ips:?}");
    let slice = wait_for(
        MINUTE,
        || {
            ns.jsonpath(
                "endpointslices -l kubernetes.io/service-name=echo",
                "{.items[*].endpoints[*].addresses[*]}",
            )
        },
        |s| s.split_whitespace().count() == 3,
    );
    for ip in &ips {
        assert!(slice.contains(ip), "EndpointSlice {slice} lacks {ip}");
    }
    ns.apply(&format!(r#"
apiVersion: batch/v1
kind: Job
metadata: {{name: fetch}}
spec:
  backoffLimit: 0
  template:
    spec:
      restartPolicy: Never
      containers:
      - name: wget
        image: busybox:1.36
        command: [sh, -c, "wget -qO- http://echo.{ns}.svc.cluster.local:80/fqdn && wget -qO- http://echo/short"]
"#, ns = ns.name));
    ns.ok(&[
        "wait",
        "--for=condition=complete",
        "job/fetch",
        "--timeout=90s",
    ]);
    let logs = ns.ok(&["logs", "job/fetch"]);
    assert!(
        logs.contains("path=/fqdn") && logs.contains("path=/short"),
        "{logs}"
    );
    assert!(logs.contains("hello from echo-"), "{logs}");
}

#[test]
fn exec_runs_in_the_pod_with_stdin_and_exit_codes() {
    let ns = cluster().namespace("t-exec");
    ns.apply(ECHO);
    ns.ok(&["rollout", "status", "deployment/echo", "--timeout=90s"]);
    let pod = ns
        .ok(&["get", "pods", "-l", "app=echo", "-o", "name"])
        .lines()
        .next()
        .unwrap()
        .to_string();
    // kube-proxy programs a new Service within a moment of its endpoints becoming ready.
    let out = wait_for(
        MINUTE,
        || {
            String::from_utf8_lossy(
                &ns.kubectl(&["exec", &pod, "--", "wget", "-qO-", "http://echo/from-exec"])
                    .stdout,
            )
            .into_owned()
        },
        |out| out.contains("path=/from-exec"),
    );
    assert!(out.contains("hello from echo-"), "{out}");
    let hostname = ns.ok(&["exec", &pod, "--", "hostname"]);
    assert_eq!(hostname.trim(), pod.trim_start_matches("pod/"));
    let echoed = ns.cluster.kubectl_stdin(
        &["-n", &ns.name, "exec", "-i", &pod, "--", "cat"],
        "through stdin\n",
    );
    assert_eq!(String::from_utf8_lossy(&echoed.stdout), "through stdin\n");
    let failed = ns.kubectl(&["exec", &pod, "--", "sh", "-c", "exit 3"]);
    assert_eq!(failed.status.code(), Some(3));
}

#[test]
fn rollout_restart_replaces_every_pod_and_a_failing_readiness_probe_leaves_the_endpoints() {
    let ns = cluster().namespace("t-rollout");
    ns.apply(ECHO);
    ns.ok(&["rollout", "status", "deployment/echo", "--timeout=90s"]);
    let before = ns.jsonpath("pods -l app=echo", "{.items[*].metadata.uid}");
    ns.ok(&["rollout", "restart", "deployment/echo"]);
    ns.ok(&["rollout", "status", "deployment/echo", "--timeout=120s"]);
    let after = wait_for(
        MINUTE,
        || ns.jsonpath("pods -l app=echo", "{.items[*].metadata.uid}"),
        |uids| uids.split_whitespace().count() == 3,
    );
    for uid in before.split_whitespace() {
        assert!(!after.contains(uid), "pod {uid} survived the restart");
    }
    let pod = ns.ok(&[
        "get",
        "pods",
        "-l",
        "app=echo",
        "-o",
        "jsonpath={.items[0].metadata.name}",
    ]);
    let ip = ns.jsonpath(&format!("pod {pod}"), "{.status.podIP}");
    ns.ok(&[
        "exec",
        &pod,
        "--",
        "wget",
        "-qO-",
        "http://127.0.0.1:8080/set-ready?false",
    ]);
    wait_for(
        MINUTE,
        || {
            ns.jsonpath(
                "endpointslices -l kubernetes.io/service-name=echo",
                "{.items[*].endpoints[?(@.conditions.ready==true)].addresses[*]}",
            )
        },
        |s| !s.contains(&ip),
    );
}

#[test]
fn deleting_a_pod_sends_sigterm_and_waits() {
    let ns = cluster().namespace("t-delete");
    ns.apply(r#"
apiVersion: v1
kind: Pod
metadata: {name: trap}
spec:
  terminationGracePeriodSeconds: 30
  containers:
  - name: main
    image: busybox
    command: [sh, -c, "trap 'echo got SIGTERM; exit 0' TERM; echo started; while true; do sleep 0.2; done"]
"#);
    ns.ok(&["wait", "--for=condition=Ready", "pod/trap", "--timeout=60s"]);
    let start = std::time::Instant::now();
    ns.ok(&["delete", "pod", "trap", "--wait=true", "--timeout=60s"]);
    // The shell exits on SIGTERM at once: far sooner than the 30 s grace period.
    assert!(
        start.elapsed() < Duration::from_secs(25),
        "took {:?}: SIGTERM was not delivered",
        start.elapsed()
    );
}

#[test]
fn native_sidecars_start_first_count_in_ready_and_let_jobs_complete() {
    let ns = cluster().namespace("t-sidecar");
    ns.apply(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: with-sidecar}
spec:
  initContainers:
  - name: sidecar
    image: weft.dev/echo:dev
    restartPolicy: Always
    env: [{name: PORT, value: "9090"}]
    startupProbe: {tcpSocket: {port: 9090}, periodSeconds: 1}
  containers:
  - name: app
    image: busybox
    # The app fails unless the sidecar already answers when it starts.
    command: [sh, -c, "wget -qO- http://127.0.0.1:9090/first && sleep 3600"]
---
apiVersion: batch/v1
kind: Job
metadata: {name: job-with-sidecar}
spec:
  backoffLimit: 0
  template:
    spec:
      restartPolicy: Never
      initContainers:
      - name: sidecar
        image: weft.dev/echo:dev
        restartPolicy: Always
        env: [{name: PORT, value: "9090"}]
      containers:
      - name: work
        image: busybox
        command: [sh, -c, "echo done"]
"#,
    );
    ns.ok(&[
        "wait",
        "--for=condition=Ready",
        "pod/with-sidecar",
        "--timeout=60s",
    ]);
    let ready = ns.ok(&["get", "pod", "with-sidecar", "--no-headers"]);
    assert!(
        ready.split_whitespace().nth(1) == Some("2/2"),
        "READY column: {ready}"
    );
    let restarts = ns.jsonpath(
        "pod with-sidecar",
        "{.status.containerStatuses[0].restartCount}",
    );
    assert_eq!(
        restarts, "0",
        "the app started before its sidecar was serving"
    );
    ns.ok(&[
        "wait",
        "--for=condition=complete",
        "job/job-with-sidecar",
        "--timeout=90s",
    ]);
}

#[test]
fn a_projected_token_is_accepted_by_token_review_for_its_audience_only() {
    let ns = cluster().namespace("t-token");
    ns.apply(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: holder}
spec:
  containers:
  - name: main
    image: busybox
    command: [sh, -c, "sleep 3600"]
    volumeMounts: [{name: token, mountPath: /var/run/secrets/tokens}]
  volumes:
  - name: token
    projected:
      sources:
      - serviceAccountToken: {audience: weft-ca, expirationSeconds: 3600, path: weft-token}
"#,
    );
    ns.ok(&[
        "wait",
        "--for=condition=Ready",
        "pod/holder",
        "--timeout=60s",
    ]);
    let token = ns.ok(&[
        "exec",
        "holder",
        "--",
        "cat",
        "/var/run/secrets/tokens/weft-token",
    ]);
    let review = |audience: &str| {
        let body = serde_json::json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
            "spec": {"token": token.trim(), "audiences": [audience]}});
        let out = ns
            .cluster
            .kubectl_stdin(&["create", "-o", "json", "-f", "-"], &body.to_string());
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let ok = review("weft-ca");
    assert_eq!(ok["status"]["authenticated"], true, "{ok}");
    assert_eq!(
        ok["status"]["user"]["username"],
        format!("system:serviceaccount:{}:default", ns.name)
    );
    let other = review("someone-else");
    assert_ne!(other["status"]["authenticated"], true, "{other}");
}

#[test]
fn an_unknown_image_backs_off_and_a_crashing_container_loops_with_growing_backoff() {
    let ns = cluster().namespace("t-badinput");
    ns.apply(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: no-image}
spec:
  containers: [{name: main, image: example.invalid/nothing:1}]
---
apiVersion: v1
kind: Pod
metadata: {name: crasher}
spec:
  containers: [{name: main, image: busybox, command: [sh, -c, "echo failing; exit 1"]}]
---
apiVersion: v1
kind: Pod
metadata: {name: no-command}
spec:
  containers: [{name: main, image: busybox, command: [/does/not/exist]}]
"#,
    );
    wait_for(
        MINUTE,
        || {
            ns.jsonpath(
                "pod no-image",
                "{.status.containerStatuses[0].state.waiting.reason}",
            )
        },
        |r| r == "ImagePullBackOff",
    );
    wait_for(
        MINUTE,
        || {
            ns.jsonpath(
                "pod crasher",
                "{.status.containerStatuses[0].state.waiting.reason}",
            )
        },
        |r| r == "CrashLoopBackOff",
    );
    let message = ns.jsonpath(
        "pod crasher",
        "{.status.containerStatuses[0].state.waiting.message}",
    );
    assert!(message.contains("back-off 10s"), "{message}");
    // After the first back-off the container runs again, fails again, and waits twice as long.
    wait_for(
        Duration::from_secs(45),
        || {
            ns.jsonpath(
                "pod crasher",
                "{.status.containerStatuses[0].state.waiting.message}",
            )
        },
        |m| m.contains("back-off 20s"),
    );
    let exit = ns.jsonpath(
        "pod crasher",
        "{.status.containerStatuses[0].lastState.terminated.exitCode}",
    );
    assert_eq!(exit, "1");
    wait_for(
        MINUTE,
        || {
            ns.jsonpath(
                "pod no-command",
                "{.status.containerStatuses[0].lastState.terminated.reason}",
            )
        },
        |r| r == "StartError",
    );
    // The node agent is still serving other pods.
    eventually(MINUTE, || {
        ns.cluster
            .kubectl(&["get", "node", "weft-node"])
            .status
            .success()
    });
    let logs = ns.ok(&["logs", "crasher", "--previous"]);
    assert!(logs.contains("failing"), "{logs}");
}

/// The pod's READY and STATUS columns, as `kubectl get pod` prints them.
fn ready_and_status(ns: &Namespace, pod: &str) -> String {
    let row = ns.ok(&["get", "pod", pod, "--no-headers"]);
    row.split_whitespace()
        .skip(1)
        .take(2)
        .collect::<Vec<_>>()
        .join(" ")
}

/// `kubectl run p --image=busybox -- sleep 3600`: busybox has no ENTRYPOINT and CMD [sh], and
/// args replace the CMD, so the container runs `sleep 3600` (it ran `sh sleep 3600` and
/// crash-looped before issue 23). Also: `$(VAR)` in args is expanded, and curlimages/curl's
/// entrypoint script puts curl in front of args that start with a dash.
#[test]
fn kubectl_run_args_replace_the_images_cmd() {
    let ns = cluster().namespace("t-run-args");
    ns.ok(&["run", "p", "--image=busybox", "--", "sleep", "3600"]);
    ns.ok(&[
        "run",
        "said",
        "--image=busybox",
        "--restart=Never",
        "--env=WHO=you",
        "--",
        "echo",
        "hello $(WHO)",
    ]);
    ns.ok(&[
        "run",
        "curl",
        "--image=curlimages/curl",
        "--restart=Never",
        "--",
        "--version",
    ]);
    wait_for(
        MINUTE,
        || ready_and_status(&ns, "p"),
        |s| s == "1/1 Running",
    );
    for pod in ["said", "curl"] {
        wait_for(
            MINUTE,
            || ns.jsonpath(&format!("pod {pod}"), "{.status.phase}"),
            |p| p == "Succeeded" || p == "Failed",
        );
    }
    assert_eq!(ns.ok(&["logs", "said"]).trim(), "hello you");
    let version = ns.ok(&["logs", "curl"]);
    assert!(version.starts_with("curl "), "{version}");
    // `sh sleep 3600` exited at once; sleep is still there a while later.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(ready_and_status(&ns, "p"), "1/1 Running");
    assert_eq!(
        ns.jsonpath("pod p", "{.status.containerStatuses[0].restartCount}"),
        "0"
    );
    let logs = ns.ok(&["logs", "p"]);
    assert!(logs.trim().is_empty(), "sleep prints nothing: {logs}");
}

/// The revision the enrolled test namespaces of this file use (so nothing here depends on
/// what other test files do to `stable` or the `default` tag).
const REVISION: &str = "cluster-e2e";

fn mesh() -> &'static Cluster {
    static REV: OnceLock<()> = OnceLock::new();
    let c = support::deployed();
    REV.get_or_init(|| {
        c.apply_server_side(&format!(
                "apiVersion: mesh.weft.dev/v1alpha1\nkind: MeshConfig\nmetadata: {{name: {REVISION}, namespace: weft-system}}\nspec:\n  proxy: {{image: \"ghcr.io/weft-mesh/weft:0.1.0\"}}\n"
            ));
    });
    c
}

/// The same `kubectl run` in a namespace enrolled in the mesh: the injected proxy runs beside
/// sleep and the pod shows `2/2 Running`, as a newcomer trying weft would type it.
#[test]
fn kubectl_run_args_in_an_enrolled_namespace_is_2_of_2_running() {
    let ns = mesh().namespace("t-run-mesh");
    ns.cluster.ok(&[
        "label",
        "namespace",
        &ns.name,
        &format!("istio.io/rev={REVISION}"),
    ]);
    ns.ok(&["run", "p", "--image=busybox", "--", "sleep", "3600"]);
    let pod: serde_json::Value =
        serde_json::from_str(&ns.ok(&["get", "pod", "p", "-o", "json"])).unwrap();
    assert!(support::has_proxy(&pod), "the pod was not injected: {pod}");
    wait_for(
        Duration::from_secs(120),
        || ready_and_status(&ns, "p"),
        |s| s == "2/2 Running",
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(ready_and_status(&ns, "p"), "2/2 Running");
    assert_eq!(
        ns.jsonpath("pod p", "{.status.containerStatuses[0].restartCount}"),
        "0"
    );
}

/// emptyDir volumes over directories of the node's filesystem (pods run with it as their
/// root): the checkout's top directory, where the node agent keeps the pod directories that
/// every other mount's source lives in, `/tmp`, `/var` (the service-account token is mounted
/// inside it) and `/opt` (which holds the image's programs). The pod starts, reads its token
/// and writes to each volume, and what it writes stays in the pod.
#[test]
fn volumes_over_node_directories_hide_no_other_mount() {
    let root = support::repo_root();
    let top = root
        .ancestors()
        .filter(|a| a.parent().is_some())
        .last()
        .expect("the checkout is not /")
        .to_path_buf();
    let top = top.to_str().expect("a UTF-8 path");
    // The checkout's top directory may itself be /tmp or /var (a clone in /tmp): one volume
    // per distinct path, as Kubernetes requires.
    let mut dirs = vec![top, "/tmp", "/var", "/opt"];
    let mut seen = std::collections::BTreeSet::new();
    dirs.retain(|d| seen.insert(*d));
    let ns = cluster().namespace("t-shadow");
    let probe = format!("written-by-{}", ns.name);
    let mounts: String = dirs
        .iter()
        .enumerate()
        .map(|(i, d)| format!("    - {{name: v{i}, mountPath: {d}}}\n"))
        .collect();
    let volumes: String = (0..dirs.len())
        .map(|i| format!("  - {{name: v{i}, emptyDir: {{}}}}\n"))
        .collect();
    ns.apply(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: shadow}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: busybox
    command:
    - sh
    - -c
    - |
      set -e
      for d in {list}; do echo "$d" > "$d/{probe}"; cat "$d/{probe}"; done
      wc -c < /var/run/secrets/kubernetes.io/serviceaccount/token
      echo started
      exec sleep 3600
    volumeMounts:
{mounts}  volumes:
{volumes}"#,
        list = dirs.join(" "),
    ));
    let status = wait_for(
        MINUTE,
        || {
            ns.jsonpath(
                "pod shadow",
                "{.status.phase} {.status.containerStatuses[0].restartCount} {.status.containerStatuses[0].lastState.terminated.message}",
            )
        },
        |s| s.starts_with("Running "),
    );
    assert!(status.starts_with("Running 0"), "{status}");
    ns.ok(&[
        "wait",
        "--for=condition=Ready",
        "pod/shadow",
        "--timeout=60s",
    ]);
    let logs = wait_for(
        MINUTE,
        || ns.ok(&["logs", "shadow"]),
        |l| l.contains("started"),
    );
    for d in &dirs {
        assert!(logs.lines().any(|l| l == *d), "{d} not written: {logs}");
        // The file is in the pod's volume, not in the node's directory.
        assert!(
            !std::path::Path::new(d).join(&probe).exists(),
            "{d}/{probe} landed on the node"
        );
    }
    // The token (a JWT) through exec, which enters the container's mounts.
    let token = ns.ok(&[
        "exec",
        "shadow",
        "--",
        "cat",
        "/var/run/secrets/kubernetes.io/serviceaccount/token",
    ]);
    assert_eq!(token.trim().split('.').count(), 3, "{token}");
    let size = logs
        .lines()
        .find_map(|l| l.trim().parse::<usize>().ok())
        .unwrap_or(0);
    assert_eq!(size, token.len(), "{logs}");
}
