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

mod support;

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
"#,
    );
    for deployment in ["tcp-server", "http-server"] {
        ns.ok(&[
            "rollout",
            "status",
            &format!("deployment/{deployment}"),
            "--timeout=120s",
        ]);
    }
    ns.ok(&[
        "wait",
        "--for=condition=Ready",
        "pod/client",
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
    outside.apply(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: caller}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers: [{name: caller, image: busybox, command: [sh, -c, 'sleep 3600']}]\n",
    );
    outside.ok(&[
        "wait",
        "--for=condition=Ready",
        "pod/caller",
        "--timeout=120s",
    ]);

    let prometheus = Prometheus::start();
    prometheus.discover(&[&ns, &outside]);
    // Istio's job keeps the pods its injector annotated: the three meshed ones, not the
    // plaintext caller.
    let up = prometheus.eventually(&format!("up{{namespace=~\"{}.*\"}} == 1", ns.name), |a| {
        a.len() == 3
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
    assert_eq!(builds[0].1, 3.0);

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
}
