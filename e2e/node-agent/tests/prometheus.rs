//! Istio's standard metrics as a real Prometheus sees them (issue 25): Prometheus (Debian's
//! build, `e2e/scripts/install-prometheus.sh`) runs Istio's `kubernetes-pods` scrape job from
//! istio/istio `samples/addons/prometheus.yaml` with its relabelling unchanged; only the
//! discovery is `file_sd_configs` (Debian's build has no `kubernetes_sd_configs`), whose
//! targets carry the `__meta_kubernetes_pod_*` labels Kubernetes discovery would give, written
//! from the pods as the API server returns them. Meshed TCP and HTTP servers, a meshed client
//! and a plaintext caller make traffic; the test then asks Prometheus the questions of Istio's
//! Mesh, Service and Workload dashboards, Istio's telemetry tests (`buildQuery`,
//! `buildTCPQuery`) and istio.io's "Querying Metrics from Prometheus", and checks the series,
//! their labels and the exact byte counts of a fixed TCP exchange (istio/proxy's: the client
//! writes `world\n`, 6 bytes, and reads `hello world\n`, 12 bytes).

mod grafana;
mod support;

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use support::{Namespace, deployed, repo_root, wait_for};

const REVISION: &str = "metrics-e2e";
/// TCP connections the client makes, each one `world\n` out and `hello world\n` back.
const TCP_CALLS: u64 = 3;
const HTTP_CALLS: u64 = 4;
/// tcp-server, http-server, http-failing, grpc-echo, client, grpc-client.
const MESHED_PODS: usize = 6;

/// Istio's `kubernetes-pods` job, relabelling unchanged; the discovery is a file and the
/// interval 1s so the test need not wait 15s per scrape.
const KUBERNETES_PODS_JOB: &str = r#"
- honor_labels: true
  job_name: kubernetes-pods
  scrape_interval: 1s
  scrape_timeout: 1s
  file_sd_configs:
  - files: [TARGETS]
    refresh_interval: 1s
  relabel_configs:
  - action: keep
    regex: true
    source_labels:
    - __meta_kubernetes_pod_annotation_prometheus_io_scrape
  - action: drop
    regex: true
    source_labels:
    - __meta_kubernetes_pod_annotation_prometheus_io_scrape_slow
  - action: replace
    regex: (https?)
    source_labels:
    - __meta_kubernetes_pod_annotation_prometheus_io_scheme
    target_label: __scheme__
  - action: replace
    regex: (.+)
    source_labels:
    - __meta_kubernetes_pod_annotation_prometheus_io_path
    target_label: __metrics_path__
  - action: replace
    regex: (\d+);(([A-Fa-f0-9]{1,4}::?){1,7}[A-Fa-f0-9]{1,4})
    replacement: '[$2]:$1'
    source_labels:
    - __meta_kubernetes_pod_annotation_prometheus_io_port
    - __meta_kubernetes_pod_ip
    target_label: __address__
  - action: replace
    regex: (\d+);((([0-9]+?)(\.|$)){4})
    replacement: $2:$1
    source_labels:
    - __meta_kubernetes_pod_annotation_prometheus_io_port
    - __meta_kubernetes_pod_ip
    target_label: __address__
  - action: labelmap
    regex: __meta_kubernetes_pod_annotation_prometheus_io_param_(.+)
    replacement: __param_$1
  - action: labelmap
    regex: __meta_kubernetes_pod_label_(.+)
  - action: replace
    source_labels:
    - __meta_kubernetes_namespace
    target_label: namespace
  - action: replace
    source_labels:
    - __meta_kubernetes_pod_name
    target_label: pod
  - action: drop
    regex: Pending|Succeeded|Failed|Completed
    source_labels:
    - __meta_kubernetes_pod_phase
  - action: replace
    source_labels:
    - __meta_kubernetes_pod_node_name
    target_label: node
"#;

/// The meshed apps: `tcp-server` answers each line with `hello <line>` (istio/proxy's TCP
/// test server), `http-server` is the echo app behind a port named `http`, `client` is a
/// busybox pod. All carry `app` and `version` labels, as Istio's samples do.
fn apps(ns: &Namespace) {
    ns.apply(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: tcp-server}
spec:
  replicas: 1
  selector: {matchLabels: {app: tcp-server}}
  template:
    metadata: {labels: {app: tcp-server, version: v1}}
    spec:
      terminationGracePeriodSeconds: 1
      volumes: [{name: work, emptyDir: {}}]
      containers:
      - name: server
        image: busybox
        volumeMounts: [{name: work, mountPath: /work}]
        command: [sh, -c, "printf '#!/bin/sh\\nread l\\necho \"hello $l\"\\n' > /work/hello && chmod +x /work/hello && exec nc -ll -p 9000 -e /work/hello"]
        ports: [{containerPort: 9000, name: tcp}]
        readinessProbe: {tcpSocket: {port: 9000}, periodSeconds: 1}
---
apiVersion: v1
kind: Service
metadata: {name: tcp-server}
spec:
  selector: {app: tcp-server}
  ports: [{name: tcp, port: 9000, targetPort: 9000}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: http-server}
spec:
  replicas: 1
  selector: {matchLabels: {app: http-server}}
  template:
    metadata: {labels: {app: http-server, version: v2}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: echo
        image: weft.dev/echo:dev
        ports: [{containerPort: 8080, name: http}]
        readinessProbe: {httpGet: {path: /healthz, port: 8080}, periodSeconds: 1}
---
apiVersion: v1
kind: Service
metadata: {name: http-server}
spec:
  selector: {app: http-server}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Pod
metadata: {name: client, labels: {app: client, version: v1}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: client
    image: busybox
    command: [sh, -c, "sleep 3600"]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: http-failing}
spec:
  replicas: 1
  selector: {matchLabels: {app: http-failing}}
  template:
    metadata: {labels: {app: http-failing, version: v1}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: echo
        image: weft.dev/echo:dev
        env: [{name: FAIL_EVERY, value: "1"}]
        ports: [{containerPort: 8080, name: http}]
        readinessProbe: {httpGet: {path: /healthz, port: 8080}, periodSeconds: 1}
---
apiVersion: v1
kind: Service
metadata: {name: http-failing}
spec:
  selector: {app: http-failing}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: grpc-echo}
spec:
  replicas: 1
  selector: {matchLabels: {app: grpc-echo}}
  template:
    metadata: {labels: {app: grpc-echo, version: v1}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: echo
        image: registry.k8s.io/gateway-api/echo-advanced
        args: [--grpc=7070, --port=8080, --version=v1]
        ports: [{name: grpc, containerPort: 7070}, {name: http, containerPort: 8080}]
        readinessProbe: {tcpSocket: {port: 7070}, periodSeconds: 1}
---
apiVersion: v1
kind: Service
metadata: {name: grpc-echo}
spec:
  selector: {app: grpc-echo}
  ports: [{name: grpc, port: 7070}]
---
# The same echo server's HTTP port (HTTP/1.1 and h2c), for h2 requests.
apiVersion: v1
kind: Service
metadata: {name: h2-echo}
spec:
  selector: {app: grpc-echo}
  ports: [{name: http2, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Pod
metadata: {name: grpc-client, labels: {app: grpc-client, version: v1}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: client
    image: registry.k8s.io/gateway-api/echo-advanced
    command: [sleep, "86400"]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-forbidden}
spec:
  selector: {matchLabels: {app: http-server}}
  action: DENY
  rules: [{to: [{operation: {paths: ["/forbidden"]}}]}]
"#,
    );
    for deployment in ["tcp-server", "http-server", "http-failing", "grpc-echo"] {
        ns.ok(&[
            "rollout",
            "status",
            &format!("deployment/{deployment}"),
            "--timeout=120s",
        ]);
    }
    for pod in ["pod/client", "pod/grpc-client"] {
        ns.ok(&["wait", "--for=condition=Ready", pod, "--timeout=120s"]);
    }
}

/// The unmeshed namespace: a plaintext `caller` and an `outside-http` server (weft-echo)
/// that the meshed client calls without mTLS. Its pods' canonical-name and version labels
/// differ from the Deployment's name, so the source reporter's labels show which it read.
fn outside_apps(outside: &Namespace) {
    outside.apply(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: caller}
spec:
  terminationGracePeriodSeconds: 1
  containers: [{name: caller, image: busybox, command: [sh, -c, 'sleep 3600']}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: outside-http}
spec:
  replicas: 1
  selector: {matchLabels: {app: outside-http}}
  template:
    metadata:
      labels: {app: outside-http, version: v1, service.istio.io/canonical-name: outside-web}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: echo
        image: weft.dev/echo:dev
        ports: [{containerPort: 8080, name: http}]
        readinessProbe: {httpGet: {path: /healthz, port: 8080}, periodSeconds: 1}
---
apiVersion: v1
kind: Service
metadata: {name: outside-http}
spec:
  selector: {app: outside-http}
  ports: [{name: http, port: 80, targetPort: 8080}]
"#,
    );
    outside.ok(&[
        "rollout",
        "status",
        "deployment/outside-http",
        "--timeout=120s",
    ]);
    outside.ok(&[
        "wait",
        "--for=condition=Ready",
        "pod/caller",
        "--timeout=120s",
    ]);
}

/// A namespace enrolled in this file's revision (its own, so other files' changes to
/// `stable` do not matter).
fn enrolled(name: &str) -> Namespace {
    let c = deployed();
    c.apply_server_side(&format!(
        r#"
apiVersion: mesh.weft.dev/v1alpha1
kind: MeshConfig
metadata: {{name: {REVISION}, namespace: weft-system}}
spec:
  proxy: {{image: "ghcr.io/weft-mesh/weft:0.1.0"}}
  mtls: {{mode: PERMISSIVE}}
"#
    ));
    let ns = c.namespace(name);
    ns.cluster.ok(&[
        "label",
        "namespace",
        &ns.name,
        &format!("istio.io/rev={REVISION}"),
    ]);
    ns
}

// === Prometheus ===

/// A Prometheus server of this test, stopped (its own process, by pid) when dropped.
struct Prometheus {
    child: Child,
    binary: PathBuf,
    url: String,
    targets: PathBuf,
    _dir: TempDir,
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    fn start() -> Prometheus {
        let install = Command::new("bash")
            .arg(repo_root().join("e2e/scripts/install-prometheus.sh"))
            .stderr(Stdio::inherit())
            .output()
            .expect("install-prometheus.sh");
        assert!(install.status.success(), "installing Prometheus failed");
        let binary = PathBuf::from(String::from_utf8_lossy(&install.stdout).trim());
        let dir = std::env::temp_dir().join(format!("weft-prometheus-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("data")).expect("prometheus dir");
        let dir = TempDir(dir);
        let targets = dir.0.join("targets.json");
        std::fs::write(&targets, "[]").expect("targets file");
        let config = format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\nscrape_configs:{}",
            KUBERNETES_PODS_JOB.replace("TARGETS", &targets.display().to_string())
        );
        std::fs::write(dir.0.join("prometheus.yml"), config).expect("config");
        // A free port: bound and released (a race with another process is possible but would
        // show up as Prometheus failing to start, not as a wrong answer).
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let log = std::fs::File::create(dir.0.join("prometheus.log")).expect("log file");
        let child = Command::new(&binary)
            .arg(format!(
                "--config.file={}",
                dir.0.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.0.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting prometheus");
        let p = Prometheus {
            child,
            binary,
            url: format!("http://127.0.0.1:{port}"),
            targets,
            _dir: dir,
        };
        wait_for(
            Duration::from_secs(30),
            || p.get("/-/ready").unwrap_or_else(|e| e),
            |r| r.contains("Ready"),
        );
        p
    }

    /// `promtool check metrics` (shipped beside the server) on a text exposition.
    fn promtool_check_metrics(&self, text: &str) -> Result<(), String> {
        use std::io::Write;
        let mut child = Command::new(self.binary.with_file_name("promtool"))
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| e.to_string())?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(text.as_bytes())
                .map_err(|e| e.to_string())?;
        }
        let out = child.wait_with_output().map_err(|e| e.to_string())?;
        let said = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        if out.status.success() {
            Ok(())
        } else {
            Err(said)
        }
    }

    fn get(&self, path: &str) -> Result<String, String> {
        curl(&[&format!("{}{path}", self.url)])
    }

    /// An instant query's result vector, as (labels, value) pairs.
    fn query(&self, promql: &str) -> Vec<(Value, f64)> {
        let out = curl(&[
            "--data-urlencode",
            &format!("query={promql}"),
            &format!("{}/api/v1/query", self.url),
        ])
        .unwrap_or_else(|e| panic!("query {promql}: {e}"));
        let answer: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
        assert_eq!(answer["status"], "success", "{promql}: {answer}");
        answer["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .map(|s| {
                let value = s["value"][1]
                    .as_str()
                    .and_then(|v| v.parse::<f64>().ok())
                    .unwrap_or(f64::NAN);
                (s["metric"].clone(), value)
            })
            .collect()
    }

    /// An instant query's raw result (Grafana's `query_result()` reads it so).
    fn instant(&self, promql: &str) -> Vec<Value> {
        let out = curl(&[
            "--data-urlencode",
            &format!("query={promql}"),
            &format!("{}/api/v1/query", self.url),
        ])
        .unwrap_or_else(|e| panic!("query {promql}: {e}"));
        let answer: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
        assert_eq!(answer["status"], "success", "{promql}: {answer}");
        answer["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// A range query as a Grafana panel sends it: the last `range_s` seconds at `step_s`
    /// (start and end aligned to the step, as Grafana aligns them). Returns the series.
    fn range(&self, promql: &str, range_s: u64, step_s: u64) -> Vec<Value> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let end = now - now % step_s;
        let start = end - range_s;
        let out = curl(&[
            "--data-urlencode",
            &format!("query={promql}"),
            "--data-urlencode",
            &format!("start={start}"),
            "--data-urlencode",
            &format!("end={end}"),
            "--data-urlencode",
            &format!("step={step_s}"),
            &format!("{}/api/v1/query_range", self.url),
        ])
        .unwrap_or_else(|e| panic!("query_range {promql}: {e}"));
        let answer: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
        assert_eq!(answer["status"], "success", "{promql}: {answer}");
        answer["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Waits until `promql` answers what `want` accepts (series appear a scrape after the
    /// traffic) and returns that answer.
    fn eventually(
        &self,
        promql: &str,
        want: impl Fn(&[(Value, f64)]) -> bool,
    ) -> Vec<(Value, f64)> {
        let mut last = Vec::new();
        for _ in 0..120 {
            last = self.query(promql);
            if want(&last) {
                return last;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        panic!("{promql}: last answer {last:?}");
    }

    /// Writes the file_sd targets: every pod of `namespaces`, labelled as Prometheus's
    /// Kubernetes pod discovery labels a pod without declared ports.
    fn discover(&self, ns: &[&Namespace]) {
        let mut groups = Vec::new();
        for n in ns {
            let pods: Value =
                serde_json::from_str(&n.ok(&["get", "pods", "-o", "json"])).expect("pods as JSON");
            for pod in pods["items"].as_array().into_iter().flatten() {
                groups.extend(target_group(pod));
            }
        }
        let tmp = self.targets.with_extension("tmp");
        std::fs::write(&tmp, Value::Array(groups).to_string()).expect("targets");
        // Renamed into place: Prometheus never reads a half-written file.
        std::fs::rename(&tmp, &self.targets).expect("targets");
    }
}

fn curl(args: &[&str]) -> Result<String, String> {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10"])
        .args(args)
        .output()
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        Ok(text)
    } else {
        Err(text + &String::from_utf8_lossy(&out.stderr))
    }
}

/// Prometheus's label-name sanitizing (`strutil.SanitizeLabelName`), as Kubernetes discovery
/// applies it to label and annotation keys.
fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// One pod's file_sd target group with the labels Kubernetes pod discovery would attach.
fn target_group(pod: &Value) -> Option<Value> {
    let meta = &pod["metadata"];
    let ip = pod["status"]["podIP"].as_str()?;
    let mut labels = serde_json::Map::new();
    let mut put = |k: String, v: &str| {
        labels.insert(k, Value::String(v.to_string()));
    };
    put(
        "__meta_kubernetes_namespace".into(),
        meta["namespace"].as_str()?,
    );
    put("__meta_kubernetes_pod_name".into(), meta["name"].as_str()?);
    put("__meta_kubernetes_pod_ip".into(), ip);
    put(
        "__meta_kubernetes_pod_phase".into(),
        pod["status"]["phase"].as_str().unwrap_or(""),
    );
    put(
        "__meta_kubernetes_pod_node_name".into(),
        pod["spec"]["nodeName"].as_str().unwrap_or(""),
    );
    for (kind, map) in [
        ("label", &meta["labels"]),
        ("annotation", &meta["annotations"]),
    ] {
        for (k, v) in map.as_object().into_iter().flatten() {
            let k = sanitize(k);
            put(
                format!("__meta_kubernetes_pod_{kind}_{k}"),
                v.as_str().unwrap_or(""),
            );
            put(format!("__meta_kubernetes_pod_{kind}present_{k}"), "true");
        }
    }
    Some(json!({ "targets": [ip], "labels": labels }))
}

// === the test ===

fn one(answer: &[(Value, f64)]) -> f64 {
    assert_eq!(answer.len(), 1, "one series expected: {answer:?}");
    answer[0].1
}

#[test]
fn prometheus_answers_istios_dashboards_with_exact_tcp_bytes() {
    let ns = enrolled("metrics-e2e");
    let outside = deployed().namespace("metrics-e2e-outside");
    apps(&ns);
    outside_apps(&outside);

    let prometheus = Prometheus::start();
    prometheus.discover(&[&ns, &outside]);
    // Istio's job keeps the pods its injector annotated: the six meshed ones, not the
    // plaintext caller nor the unmeshed server.
    let up = prometheus.eventually(&format!("up{{namespace=~\"{}.*\"}} == 1", ns.name), |a| {
        a.len() == MESHED_PODS
    });
    for (labels, _) in &up {
        assert_eq!(labels["job"], "kubernetes-pods", "{labels}");
        assert_eq!(labels["namespace"], ns.name.as_str(), "{labels}");
        assert!(
            labels["instance"]
                .as_str()
                .is_some_and(|i| i.ends_with(":15020"))
        );
    }

    // A scraper that asks for the older text format gets it, valid for Prometheus' own
    // checker (promtool, from the same package).
    let instance = up[0].0["instance"].as_str().unwrap_or_default().to_string();
    let text = curl(&[
        "-H",
        "Accept: text/plain;version=0.0.4",
        "-D",
        "-",
        &format!("http://{instance}/stats/prometheus"),
    ])
    .expect("the stats port");
    assert!(
        text.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{text}"
    );
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let verdict = prometheus.promtool_check_metrics(body);
    assert!(
        verdict.is_ok(),
        "promtool check metrics: {verdict:?}\n{body}"
    );

    // The fixed TCP exchange, TCP_CALLS times. kubectl exec can fail on its own (the stream
    // to the node), so a call is retried; the byte counts are then checked per connection
    // the proxies saw, and every attempt is at most one connection.
    let mut attempts = 0u64;
    for _ in 0..TCP_CALLS {
        let answered = (0..3).any(|_| {
            attempts += 1;
            let out = ns.kubectl(&[
                "exec",
                "client",
                "-c",
                "client",
                "--",
                "sh",
                "-c",
                "printf 'world\\n' | timeout 10 nc tcp-server 9000",
            ]);
            out.status.success() && out.stdout == b"hello world\n"
        });
        assert!(answered, "the TCP server did not answer hello world");
    }
    for _ in 0..HTTP_CALLS {
        let answered = (0..3).any(|_| {
            ns.wget("client", "client", "http://http-server/hello")
                .is_ok()
        });
        assert!(answered, "meshed HTTP call");
    }
    let http_host = format!("http-server.{}.svc.cluster.local", ns.name);
    outside
        .wget(
            "caller",
            "caller",
            &format!("http://http-server.{}/plain", ns.name),
        )
        .expect("plaintext call");
    let tcp_host = format!("tcp-server.{}.svc.cluster.local", ns.name);
    let n = &ns.name;

    // Istio's buildTCPQuery: connections opened with app/version on both sides; then the
    // Workload dashboard's inbound TCP bytes by source: exactly 6 and 12 per connection.
    let received = |reporter: &str| {
        format!(
            "sum(istio_tcp_received_bytes_total{{reporter=\"{reporter}\", destination_workload_namespace=\"{n}\", destination_workload=\"tcp-server\"}}) by (source_workload, source_workload_namespace)"
        )
    };
    let sent = |reporter: &str| received(reporter).replace("received", "sent");
    for reporter in ["source", "destination"] {
        let q = format!(
            "sum(istio_tcp_connections_opened_total{{reporter=\"{reporter}\", destination_app=\"tcp-server\", destination_version=\"v1\", destination_service=\"{tcp_host}\", source_app=\"client\", source_version=\"v1\", source_workload=\"client\", source_canonical_service=\"client\", source_canonical_revision=\"v1\", destination_canonical_service=\"tcp-server\", destination_canonical_revision=\"v1\", source_cluster=\"Kubernetes\", destination_cluster=\"Kubernetes\"}})"
        );
        let got = prometheus.eventually(&q, |a| a.first().is_some_and(|s| s.1 >= TCP_CALLS as f64));
        let opened = one(&got);
        assert!(
            opened <= attempts as f64,
            "{reporter}: {opened} connections, {attempts} attempts"
        );

        let got = prometheus.eventually(&received(reporter), |a| {
            a.first().is_some_and(|s| s.1 == 6.0 * opened)
        });
        assert_eq!(got[0].0["source_workload"], "client", "{reporter}: {got:?}");
        assert_eq!(got[0].0["source_workload_namespace"], n.as_str());
        assert_eq!(one(&got), 6.0 * opened, "{reporter}");
        let got = prometheus.eventually(&sent(reporter), |a| {
            a.first().is_some_and(|s| s.1 == 12.0 * opened)
        });
        assert_eq!(one(&got), 12.0 * opened, "{reporter}");
    }
    // Istio's source reporter cannot know the server's policy; the destination says mTLS.
    let policy = prometheus.query(&format!(
        "sum(istio_tcp_connections_opened_total{{destination_service=\"{tcp_host}\"}}) by (reporter, connection_security_policy)"
    ));
    let mut policy: Vec<(String, String)> = policy
        .iter()
        .map(|(l, _)| {
            (
                l["reporter"].as_str().unwrap_or("").to_string(),
                l["connection_security_policy"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
            )
        })
        .collect();
    policy.sort();
    assert_eq!(
        policy,
        [
            ("destination".to_string(), "mutual_tls".to_string()),
            ("source".to_string(), "unknown".to_string())
        ]
    );

    // Istio's buildQuery: HTTP requests with app/version on both sides, both reporters.
    for reporter in ["source", "destination"] {
        let q = format!(
            "sum(istio_requests_total{{request_protocol=\"http\", response_code=\"200\", reporter=\"{reporter}\", destination_app=\"http-server\", destination_version=\"v2\", destination_service=\"{http_host}\", source_app=\"client\", source_version=\"v1\", source_workload=\"client\", source_workload_namespace=\"{n}\"}})"
        );
        let got =
            prometheus.eventually(&q, |a| a.first().is_some_and(|s| s.1 >= HTTP_CALLS as f64));
        assert!(one(&got) >= HTTP_CALLS as f64, "{reporter}");
    }

    // Mesh dashboard: HTTP workloads (source reporter) and TCP workloads (destination).
    let http_workloads = prometheus.eventually(
        &format!(
            "sum(rate(istio_requests_total{{reporter=~\"source|waypoint\", response_code=\"200\", destination_workload_namespace=\"{n}\"}}[1m])) by (destination_workload, destination_workload_namespace, destination_service)"
        ),
        |a| !a.is_empty(),
    );
    assert_eq!(http_workloads.len(), 1, "{http_workloads:?}");
    assert_eq!(http_workloads[0].0["destination_workload"], "http-server");
    let tcp_workloads = prometheus.eventually(
        &format!(
            "sum(rate(istio_tcp_sent_bytes_total{{reporter=~\"destination|waypoint\", destination_workload_namespace=\"{n}\"}}[1m])) by (destination_workload, destination_workload_namespace, destination_service)"
        ),
        |a| !a.is_empty(),
    );
    let tcp_listed: Vec<&str> = tcp_workloads
        .iter()
        .filter_map(|(l, _)| l["destination_workload"].as_str())
        .collect();
    assert_eq!(
        tcp_listed,
        ["tcp-server"],
        "an HTTP service is no TCP workload"
    );
    // Mesh dashboard: component versions, one proxy per meshed pod.
    let builds = prometheus.query(&format!(
        "sum(istio_build{{namespace=\"{n}\"}}) by (component, tag)"
    ));
    assert_eq!(builds.len(), 1, "{builds:?}");
    assert_eq!(builds[0].0["component"], "proxy");
    assert!(builds[0].0["tag"].as_str().is_some_and(|t| !t.is_empty()));
    assert_eq!(builds[0].1, MESHED_PODS as f64);

    // Service dashboard: its $dstcluster variable (the size panels are checked last).
    let clusters = prometheus.query(&format!(
        "sum(istio_requests_total{{reporter=\"destination\", destination_service=\"{http_host}\"}}) by (destination_cluster) or sum(istio_tcp_sent_bytes_total{{reporter=\"destination\", destination_service=\"{http_host}\"}}) by (destination_cluster)"
    ));
    assert_eq!(clusters.len(), 1, "{clusters:?}");
    assert_eq!(clusters[0].0["destination_cluster"], "Kubernetes");

    // istio.io "Querying Metrics from Prometheus": requests to a service, by every label;
    // the plaintext caller is there, unknown and without mTLS.
    let all = prometheus.query(&format!(
        "istio_requests_total{{destination_service=\"{http_host}\"}}"
    ));
    let plaintext = all
        .iter()
        .find(|(l, _)| l["reporter"] == "destination" && l["connection_security_policy"] == "none");
    let (labels, count) = plaintext.unwrap_or_else(|| panic!("no plaintext series: {all:?}"));
    assert_eq!(*count, 1.0, "{labels}");
    for (k, v) in [
        ("source_workload", "unknown"),
        ("source_app", "unknown"),
        ("source_canonical_revision", "latest"),
        ("source_cluster", "unknown"),
        ("destination_canonical_service", "http-server"),
        ("destination_canonical_revision", "v2"),
        ("destination_cluster", "Kubernetes"),
    ] {
        assert_eq!(labels[k], v, "{k}: {labels}");
    }
    let rate = prometheus.query(&format!(
        "rate(istio_requests_total{{destination_service=~\"http-server.{n}.*\", response_code=\"200\"}}[5m])"
    ));
    assert!(!rate.is_empty(), "{all:?}");

    // Service dashboard: the request sizes in that cluster. Istio measures every request (a
    // proxy that only watched an HTTP connection go by would record none). The panel is a
    // rate over the last minute, so it needs requests within it: a few more first.
    for _ in 0..HTTP_CALLS {
        let answered = (0..3).any(|_| {
            ns.wget("client", "client", "http://http-server/sized")
                .is_ok()
        });
        assert!(answered, "meshed HTTP call");
    }
    for reporter in ["source", "destination"] {
        let measured = prometheus.eventually(
            &format!(
                "sum(istio_request_bytes_count{{reporter=\"{reporter}\", destination_service=\"{http_host}\"}})"
            ),
            |a| a.first().is_some_and(|s| s.1 >= 2.0 * HTTP_CALLS as f64),
        );
        assert!(one(&measured) >= 2.0 * HTTP_CALLS as f64, "{reporter}");
    }
    let size = prometheus.eventually(
        &format!(
            "histogram_quantile(0.50, sum(rate(istio_request_bytes_bucket{{reporter=\"destination\", destination_service=~\"{http_host}\", destination_cluster=~\"Kubernetes\"}}[1m])) by (le))"
        ),
        |a| a.first().is_some_and(|s| s.1.is_finite() && s.1 > 0.0),
    );
    assert!(one(&size) > 0.0);

    // Every protocol, both ways, every answer class, spread over a few seconds so that
    // Grafana's irate over $__rate_interval sees each series grow (a series' first sample
    // alone shows no rate, with Istio's sidecars as with weft's).
    traffic(&ns, &outside);
    let grpc_host = format!("grpc-echo.{n}.svc.cluster.local");

    // gRPC: Istio labels its calls request_protocol="grpc" with grpc_response_status, on
    // both reporters, and counts the messages each way.
    for reporter in ["source", "destination"] {
        let q = format!(
            "sum(istio_requests_total{{reporter=\"{reporter}\", request_protocol=\"grpc\", response_code=\"200\", grpc_response_status=\"0\", destination_service=\"{grpc_host}\", destination_workload=\"grpc-echo\", destination_app=\"grpc-echo\", destination_version=\"v1\", source_workload=\"grpc-client\", source_app=\"grpc-client\", source_canonical_service=\"grpc-client\"}})"
        );
        let got =
            prometheus.eventually(&q, |a| a.first().is_some_and(|s| s.1 >= GRPC_CALLS as f64));
        assert!(one(&got) >= GRPC_CALLS as f64, "{reporter}: {got:?}");
        for messages in [
            "istio_request_messages_total",
            "istio_response_messages_total",
        ] {
            let q = format!(
                "sum({messages}{{reporter=\"{reporter}\", request_protocol=\"grpc\", destination_service=\"{grpc_host}\", source_workload=\"grpc-client\"}})"
            );
            let got =
                prometheus.eventually(&q, |a| a.first().is_some_and(|s| s.1 >= GRPC_CALLS as f64));
            assert!(
                one(&got) >= GRPC_CALLS as f64,
                "{messages} {reporter}: {got:?}"
            );
        }
    }
    // h2 requests: request_protocol "http" (Istio's value for HTTP/1.1 and HTTP/2 alike), both
    // reporters.
    let h2_host = format!("h2-echo.{n}.svc.cluster.local");
    for reporter in ["source", "destination"] {
        let q = format!(
            "sum(istio_requests_total{{reporter=\"{reporter}\", request_protocol=\"http\", response_code=\"200\", destination_service=\"{h2_host}\", destination_workload=\"grpc-echo\", source_workload=\"grpc-client\"}})"
        );
        let got =
            prometheus.eventually(&q, |a| a.first().is_some_and(|s| s.1 >= GRPC_CALLS as f64));
        assert!(one(&got) >= GRPC_CALLS as f64, "h2 {reporter}: {got:?}");
    }
    // A meshed client calling an unmeshed server: only the source reporter counts it. As
    // Istio's, it names the server from the control plane's endpoint metadata (pilot's
    // `workload;namespace;canonical service;canonical revision;cluster`, read by istio/proxy's
    // convertEndpointMetadata): the Deployment, its namespace, the canonical service and
    // revision from the pod's labels, the cluster; that encoding has no app or version, and
    // without a certificate there is no principal, so those stay unknown.
    let o = &outside.name;
    let unmeshed = prometheus.eventually(
        &format!(
            "sum(istio_requests_total{{destination_service=\"outside-http.{o}.svc.cluster.local\"}}) by (reporter, source_workload, destination_workload, destination_workload_namespace, destination_app, destination_version, destination_canonical_service, destination_canonical_revision, destination_cluster, destination_principal, connection_security_policy)"
        ),
        |a| a.first().is_some_and(|s| s.1 >= 8.0),
    );
    assert_eq!(unmeshed.len(), 1, "{unmeshed:?}");
    for (k, v) in [
        ("reporter", "source"),
        ("source_workload", "client"),
        ("destination_workload", "outside-http"),
        ("destination_workload_namespace", o.as_str()),
        ("destination_canonical_service", "outside-web"),
        ("destination_canonical_revision", "v1"),
        ("destination_cluster", "Kubernetes"),
        ("destination_app", "unknown"),
        ("destination_version", "unknown"),
        ("destination_principal", "unknown"),
        ("connection_security_policy", "unknown"),
    ] {
        assert_eq!(unmeshed[0].0[k], v, "{k}: {unmeshed:?}");
    }
    // A gRPC service is no TCP workload either.
    let grpc_tcp = prometheus.query(&format!(
        "istio_tcp_connections_opened_total{{destination_service=\"{grpc_host}\"}}"
    ));
    assert!(grpc_tcp.is_empty(), "{grpc_tcp:?}");
    // The answer classes the stat panels count: 403 from the server's DENY policy, 503 from
    // the failing app (after the client's default retries), on the source reporter.
    for (code, host) in [
        ("403", http_host.clone()),
        ("503", format!("http-failing.{n}.svc.cluster.local")),
    ] {
        let q = format!(
            "sum(istio_requests_total{{reporter=\"source\", response_code=\"{code}\", destination_service=\"{host}\"}})"
        );
        prometheus.eventually(&q, |a| a.first().is_some_and(|s| s.1 >= 1.0));
    }
    // Two scrapes after the last call, so the panels' last step sees the final counts.
    std::thread::sleep(Duration::from_secs(3));

    istio_io_queries(&prometheus, &http_host, n);
    let checked = dashboards(
        &prometheus,
        &ns,
        &outside,
        &[
            (http_host.as_str(), "http"),
            (tcp_host.as_str(), "tcp"),
            (grpc_host.as_str(), "grpc"),
            (h2_host.as_str(), "http"),
        ],
    );
    eprintln!(
        "Istio dashboards: {} panel queries checked ({} answered, {} empty as with Istio's sidecars)",
        checked.0 + checked.1,
        checked.0,
        checked.1
    );
}

/// gRPC calls the grpc client makes per burst.
const GRPC_CALLS: u64 = 20;

/// One command per kind of traffic, run together for a few seconds: meshed TCP, plaintext
/// TCP from outside, meshed HTTP (200, 403 from a DENY policy, 503 from a failing app),
/// plaintext HTTP from outside, a meshed client calling an unmeshed server, and gRPC.
fn traffic(ns: &Namespace, outside: &Namespace) {
    let n = ns.name.clone();
    let o = outside.name.clone();
    let repeat = |body: &str| format!("for i in 1 2 3 4 5 6 7 8; do {body}; sleep 0.5; done");
    let runs: Vec<(&Namespace, &str, &str, String)> = vec![
        (
            ns,
            "client",
            "client",
            repeat("printf 'world\\n' | timeout 5 nc tcp-server 9000 >/dev/null"),
        ),
        (
            outside,
            "caller",
            "caller",
            repeat(&format!(
                "printf 'world\\n' | timeout 5 nc tcp-server.{n} 9000 >/dev/null"
            )),
        ),
        (
            ns,
            "client",
            "client",
            repeat(
                "wget -q -O /dev/null http://http-server/hello; wget -q -O /dev/null http://http-server/forbidden; wget -q -O /dev/null http://http-failing/",
            ),
        ),
        (
            outside,
            "caller",
            "caller",
            repeat(&format!(
                "wget -q -O /dev/null http://http-server.{n}/plain"
            )),
        ),
        (
            ns,
            "client",
            "client",
            repeat(&format!("wget -q -O /dev/null http://outside-http.{o}/out")),
        ),
    ];
    std::thread::scope(|scope| {
        for (where_, pod, container, script) in &runs {
            scope.spawn(move || {
                let out = where_.kubectl(&["exec", pod, "-c", container, "--", "sh", "-c", script]);
                // The loops go on past failing calls (403 and 503 are wanted) and end with
                // a sleep: only the exec itself can fail.
                assert!(
                    out.status.success(),
                    "{pod}: {script}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            });
        }
        scope.spawn(|| {
            let out = ns.kubectl(&[
                "exec",
                "grpc-client",
                "-c",
                "client",
                "--",
                "client",
                &format!("grpc://grpc-echo.{n}:7070"),
                "--count",
                &GRPC_CALLS.to_string(),
                "--qps",
                "5",
                "--timeout",
                "5s",
            ]);
            let said = String::from_utf8_lossy(&out.stdout);
            let answers = said.matches("body] Hostname=").count() as u64;
            assert_eq!(
                answers,
                GRPC_CALLS,
                "gRPC calls: {said}{}",
                String::from_utf8_lossy(&out.stderr)
            );
        });
        // h2 with prior knowledge (Istio's echo client, --http2) to the echo server's HTTP
        // port.
        scope.spawn(|| {
            let out = ns.kubectl(&[
                "exec",
                "grpc-client",
                "-c",
                "client",
                "--",
                "client",
                &format!("http://h2-echo.{n}/h2"),
                "--http2",
                "--count",
                &GRPC_CALLS.to_string(),
                "--qps",
                "5",
                "--timeout",
                "5s",
            ]);
            let said = String::from_utf8_lossy(&out.stdout);
            let answers = said.matches("body] Hostname=").count() as u64;
            assert_eq!(
                answers,
                GRPC_CALLS,
                "h2 calls: {said}{}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(said.contains("Proto=HTTP/2.0"), "not h2: {said}");
        });
    });
}

/// istio.io's "Querying Metrics from Prometheus" queries, vendored verbatim, with Bookinfo's
/// names replaced by the test's: productpage and reviews are the HTTP server, reviews' v3 its
/// version v2. Each answers, and only with that service's series.
fn istio_io_queries(prometheus: &Prometheus, http_host: &str, n: &str) {
    let path = repo_root().join("e2e/metrics/istio-dashboards/istio-io-querying-metrics.json");
    let doc: Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("istio.io queries"))
            .expect("istio.io queries as JSON");
    let queries = doc["queries"].as_array().cloned().unwrap_or_default();
    assert_eq!(queries.len(), 4, "{doc}");
    for q in queries {
        let expr = q["expr"]
            .as_str()
            .unwrap_or_default()
            .replace("productpage.default.svc.cluster.local", http_host)
            .replace("reviews.default.svc.cluster.local", http_host)
            .replace("destination_version=\"v3\"", "destination_version=\"v2\"")
            .replace("productpage.*", &format!("http-server.{n}.*"));
        let got = prometheus.query(&expr);
        assert!(!got.is_empty(), "istio.io: {expr}");
        if expr.contains("destination_service") {
            for (labels, _) in &got {
                assert_eq!(labels["destination_service"], http_host, "{expr}: {labels}");
            }
        }
    }
}

/// The panels that stay empty for any traffic, with Istio's sidecars as with weft's:
/// (dashboard, panel, refId). Each filters `reporter="source"` and
/// `connection_security_policy="mutual_tls"`, but Istio's source reporter always labels
/// `connection_security_policy="unknown"` (istio/proxy testdata/metric/client_*.yaml.tmpl;
/// the client's sidecar does not know the server's policy). Their `!="mutual_tls"` twins
/// (refId B, or E-H) carry that traffic and are checked like every other panel.
const EMPTY_WITH_ISTIO: [(&str, &str, &str); 15] = [
    (
        W,
        "Outgoing Success Rate (non-5xx responses) By Destination",
        "A",
    ),
    (W, "Outgoing Request Duration By Destination", "A"),
    (W, "Outgoing Request Duration By Destination", "B"),
    (W, "Outgoing Request Duration By Destination", "C"),
    (W, "Outgoing Request Duration By Destination", "D"),
    (W, "Outgoing Request Size By Destination", "A"),
    (W, "Outgoing Request Size By Destination", "B"),
    (W, "Outgoing Request Size By Destination", "C"),
    (W, "Outgoing Request Size By Destination", "D"),
    (W, "Response Size By Destination", "A"),
    (W, "Response Size By Destination", "B"),
    (W, "Response Size By Destination", "C"),
    (W, "Response Size By Destination", "D"),
    (W, "Bytes Sent on Outgoing TCP Connection", "A"),
    (W, "Bytes Received from Outgoing TCP Connection", "A"),
];
const W: &str = "Istio Workload Dashboard";

/// Runs every panel query of Istio's Mesh, Service and Workload dashboards as Grafana would,
/// for each view a user would open on the test's workloads: each of its Services (Service
/// dashboard) and workloads (Workload dashboard), with the reporter variable at its default
/// (destination) and with both reporters. A query "answers" when some series has a positive
/// sample in the dashboard's time range. Asserts that every query answers in some view,
/// except EMPTY_WITH_ISTIO, which must answer in none; that in the TCP service's views no
/// request metric answers and in the HTTP and gRPC services' views no TCP metric does.
/// Returns (answered, empty as listed).
fn dashboards(
    prometheus: &Prometheus,
    ns: &Namespace,
    outside: &Namespace,
    services: &[(&str, &'static str)],
) -> (usize, usize) {
    use grafana::{Dashboard, Pick};
    // The values each grouping label can take for the test's traffic, as Istio's sidecars
    // label it (unknown: the plaintext caller).
    let owned = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<String>>();
    let vocabulary: BTreeMap<&str, Vec<String>> = BTreeMap::from([
        (
            "source_workload",
            owned(&["client", "grpc-client", "unknown"]),
        ),
        (
            "source_workload_namespace",
            // The plaintext caller: no certificate, no metadata, as Istio reports it.
            owned(&[&ns.name, "unknown"]),
        ),
        (
            "destination_workload",
            owned(&[
                "http-server",
                "http-failing",
                "tcp-server",
                "grpc-echo",
                // The unmeshed server, named from its endpoint metadata as Istio does.
                "outside-http",
            ]),
        ),
        (
            "destination_workload_namespace",
            owned(&[&ns.name, &outside.name]),
        ),
        ("response_code", owned(&["200", "403", "503"])),
        ("source_cluster", owned(&["Kubernetes", "unknown"])),
        ("destination_cluster", owned(&["Kubernetes"])),
        (
            "destination_service",
            services
                .iter()
                .map(|(h, _)| h.to_string())
                .chain([
                    format!("http-failing.{}.svc.cluster.local", ns.name),
                    format!("outside-http.{}.svc.cluster.local", outside.name),
                ])
                .collect(),
        ),
    ]);
    let dir = repo_root().join("e2e/metrics/istio-dashboards");
    let both = || Pick::Many(vec!["source".to_string(), "destination".to_string()]);
    let mut answered = 0;
    let mut empty = 0;
    let mut failures = Vec::new();
    let mut queries = 0;
    for file in [
        "istio-mesh-dashboard.gen.json",
        "istio-service-dashboard.json",
        "istio-workload-dashboard.json",
    ] {
        let d = Dashboard::load(&dir.join(file));
        // (view name, picks, protocol of the viewed service: which metrics must stay empty)
        let mut views: Vec<(String, BTreeMap<&str, Pick>, Option<&str>)> = Vec::new();
        match file {
            "istio-mesh-dashboard.gen.json" => views.push(("mesh".into(), BTreeMap::new(), None)),
            "istio-service-dashboard.json" => {
                for &(host, proto) in services {
                    for (q, qrep) in [("destination", None), ("both", Some(both()))] {
                        let mut picks = BTreeMap::from([("service", Pick::One(host.to_string()))]);
                        if let Some(qrep) = qrep {
                            picks.insert("qrep", qrep);
                        }
                        views.push((format!("service={host} qrep={q}"), picks, Some(proto)));
                    }
                }
            }
            _ => {
                for (wl, proto) in [
                    ("http-server", Some("http")),
                    ("tcp-server", Some("tcp")),
                    ("grpc-echo", Some("grpc")),
                    ("client", None),
                    ("grpc-client", None),
                ] {
                    for (q, qrep) in [("destination", None), ("both", Some(both()))] {
                        let mut picks = BTreeMap::from([
                            ("namespace", Pick::One(ns.name.clone())),
                            ("workload", Pick::One(wl.to_string())),
                        ]);
                        if let Some(qrep) = qrep {
                            picks.insert("qrep", qrep);
                        }
                        views.push((format!("workload={wl} qrep={q}"), picks, proto));
                    }
                }
            }
        }
        let targets = d.targets();
        assert!(!targets.is_empty(), "{file} has no panel queries");
        let range = d.range_s();
        let step = grafana::interval_s(range);
        let mut answers: Vec<Vec<String>> = vec![Vec::new(); targets.len()];
        for (view, picks, proto) in &views {
            let vars = grafana::resolve(&d, picks, &|q| prometheus.instant(q));
            for (i, t) in targets.iter().enumerate() {
                let expr = grafana::interpolate(&t.expr, &vars);
                queries += 1;
                let series = prometheus.range(&expr, range, step);
                let positive = series.iter().any(|s| {
                    s["values"].as_array().into_iter().flatten().any(|v| {
                        v[1].as_str()
                            .and_then(|x| x.parse::<f64>().ok())
                            .is_some_and(|x| x.is_finite() && x > 0.0)
                    })
                });
                // Outside the Mesh dashboard (which sees the whole cluster) every series is
                // one of the test's: its labels take only the values the traffic can give.
                if file != "istio-mesh-dashboard.gen.json" {
                    for s in &series {
                        for (label, value) in s["metric"].as_object().into_iter().flatten() {
                            let value = value.as_str().unwrap_or("");
                            if let Some(allowed) = vocabulary.get(label.as_str())
                                && !allowed.iter().any(|a| a == value)
                            {
                                failures.push(format!(
                                    "{} ({view}): {label}=\"{value}\" is not one the test's traffic gives: {}",
                                    t.name(),
                                    s["metric"]
                                ));
                            }
                        }
                    }
                }
                if positive {
                    answers[i].push(view.clone());
                    // Istio's sidecars give an HTTP or gRPC port no TCP series, and a TCP
                    // port no request series.
                    let tcp_metric = t.expr.contains("istio_tcp_");
                    let wrong = match proto {
                        Some("tcp") => !tcp_metric && !t.expr.contains("istio_build"),
                        Some(_) => tcp_metric,
                        None => false,
                    };
                    // Only panels about the viewed service or workload itself: the Workload
                    // dashboard's outbound panels are about what the workload calls.
                    let about_it = !t.panel.contains("Outgoing")
                        && t.panel != "Response Size By Destination"
                        && t.panel != "TCP Client Traffic";
                    if wrong && about_it {
                        failures.push(format!(
                            "{} answers for a {} view ({view}): {expr}",
                            t.name(),
                            proto.unwrap_or("")
                        ));
                    }
                }
            }
        }
        for (i, t) in targets.iter().enumerate() {
            let listed = EMPTY_WITH_ISTIO
                .iter()
                .any(|(d, p, r)| *d == t.dashboard && *p == t.panel && *r == t.ref_id);
            match (listed, answers[i].is_empty()) {
                (false, false) => answered += 1,
                (true, true) => {
                    assert!(
                        t.expr.contains("reporter=\"source\"")
                            && t.expr.contains("connection_security_policy=\"mutual_tls\""),
                        "{} is listed as empty with Istio but is not a source-reporter mTLS query",
                        t.name()
                    );
                    empty += 1;
                }
                (false, true) => {
                    failures.push(format!("{} answers in no view: {}", t.name(), t.expr))
                }
                (true, false) => failures.push(format!(
                    "{} answers in {:?}, where Istio's sidecars give nothing",
                    t.name(),
                    answers[i]
                )),
            }
        }
    }
    eprintln!("Istio dashboards: {queries} queries run over all views");
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(
        answered + empty,
        159,
        "the vendored dashboards hold 159 panel queries"
    );
    (answered, empty)
}
