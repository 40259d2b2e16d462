//! Test support for end-to-end tests on the local cluster: the cluster is brought up once
//! (`make cluster-up`, idempotent) and each test gets its own namespace, deleted when it ends.
//! Everything goes through the real kubectl, as a user would type it.

#![allow(dead_code)]

pub mod bookstore;
pub mod ca;
pub mod creations;
pub mod vault;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repo root")
}

fn kubectl_path() -> PathBuf {
    let versions = std::fs::read_to_string(repo_root().join("e2e/components/versions.env"))
        .expect("versions.env");
    let k8s = versions
        .lines()
        .find_map(|l| l.strip_prefix("K8S_VERSION="))
        .expect("K8S_VERSION");
    let cache = std::env::var("WEFT_E2E_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/weft-e2e")
        });
    cache.join(format!("kubernetes-v{k8s}/kubectl"))
}

/// Brings the cluster up once per test process.
pub fn cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        let root = repo_root();
        let status = Command::new("bash")
            .arg(root.join("e2e/cluster/up.sh"))
            .stdout(Stdio::null())
            .status()
            .expect("running up.sh");
        assert!(
            status.success(),
            "make cluster-up failed; see e2e/.cluster/logs/"
        );
        Cluster {
            kubectl: kubectl_path(),
            kubeconfig: root.join("e2e/.cluster/kubeconfig"),
        }
    })
}

pub struct Cluster {
    pub kubectl: PathBuf,
    pub kubeconfig: PathBuf,
}

/// The cluster with weft built and installed (`make deploy`), once per test process, with the
/// caBundle of every webhook entry set (until then the API server refuses the writes they
/// cover).
pub fn deployed() -> &'static Cluster {
    static DEPLOYED: OnceLock<()> = OnceLock::new();
    let c = cluster();
    DEPLOYED.get_or_init(|| {
        let status = Command::new("bash")
            .arg(repo_root().join("e2e/scripts/deploy.sh"))
            .status()
            .expect("deploy.sh");
        assert!(status.success(), "make deploy failed");
        for config in [
            "mutatingwebhookconfiguration/weft-sidecar-injector",
            "validatingwebhookconfiguration/weft-validator",
        ] {
            // Probes for the entries still without a caBundle; done when there are none.
            wait_for(
                Duration::from_secs(60),
                || {
                    let out = c.kubectl(&[
                        "get",
                        config,
                        "-o",
                        "jsonpath={range .webhooks[*]}{.name} {.clientConfig.caBundle}{\"\\n\"}{end}",
                    ]);
                    let entries = String::from_utf8_lossy(&out.stdout).into_owned();
                    if !out.status.success() || entries.trim().is_empty() {
                        return format!("{config}: not installed");
                    }
                    entries
                        .lines()
                        .filter(|e| e.split_once(' ').is_none_or(|(_, b)| b.is_empty()))
                        .map(|e| format!("{config}: {} has no caBundle", e.trim()))
                        .collect::<Vec<_>>()
                        .join("; ")
                },
                |missing| missing.is_empty(),
            );
        }
        // A fresh operator creates the default revision and its `default` tag on its first
        // start, a moment after its rollout: `weft namespace add` resolves that tag, so wait
        // for it (CI at c46b144 lost two authz tests to this race). Not an assertion: a test
        // may have moved the mesh on from the tag; after 60 s the tests decide.
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(60) {
            let out = c.kubectl(&[
                "-n",
                "weft-system",
                "get",
                "revisiontags.mesh.weft.dev",
                "-o",
                "name",
            ]);
            let tags = String::from_utf8_lossy(&out.stdout);
            if tags.lines().any(|t| t.trim().ends_with("/default")) {
                break;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    });
    c
}

impl Cluster {
    pub fn kubectl(&self, args: &[&str]) -> Output {
        Command::new(&self.kubectl)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .output()
            .expect("running kubectl")
    }

    pub fn kubectl_stdin(&self, args: &[&str], stdin: &str) -> Output {
        use std::io::Write;
        let mut child = Command::new(&self.kubectl)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("running kubectl");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(stdin.as_bytes())
            .expect("writing stdin");
        child.wait_with_output().expect("kubectl output")
    }

    /// kubectl that must succeed; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Creates `pod` (JSON) in `namespace` with a server-side dry run, which runs the whole
    /// admission chain and stores nothing: the pod as it would be stored, or kubectl's error.
    pub fn dry_run_pod(&self, namespace: &str, pod: &str) -> Result<serde_json::Value, String> {
        let out = self.kubectl_stdin(
            &[
                "-n",
                namespace,
                "create",
                "--dry-run=server",
                "-o",
                "json",
                "-f",
                "-",
            ],
            pod,
        );
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
        }
        serde_json::from_slice(&out.stdout).map_err(|e| format!("kubectl printed no pod: {e}"))
    }

    pub fn apply(&self, yaml: &str) {
        let out = self.kubectl_stdin(&["apply", "-f", "-"], yaml);
        assert!(
            out.status.success(),
            "kubectl apply failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Server-side apply as the field manager `test`, taking over fields others set (how the
    /// tests make their own revisions and tags next to what the operator made).
    pub fn apply_server_side(&self, yaml: &str) {
        let out = self.kubectl_stdin(
            &[
                "apply",
                "--server-side",
                "--force-conflicts",
                "--field-manager=test",
                "-f",
                "-",
            ],
            yaml,
        );
        assert!(
            out.status.success(),
            "kubectl apply --server-side failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn namespace(&'static self, name: &str) -> Namespace {
        let _ = self.kubectl(&["delete", "namespace", name, "--wait=true", "--timeout=60s"]);
        self.ok(&["create", "namespace", name]);
        // The service account controller creates `default` asynchronously.
        eventually(Duration::from_secs(30), || {
            self.kubectl(&["-n", name, "get", "serviceaccount", "default"])
                .status
                .success()
        });
        Namespace {
            cluster: self,
            name: name.to_string(),
        }
    }
}

pub struct Namespace {
    pub cluster: &'static Cluster,
    pub name: String,
}

/// A curl pod named `client` (label `app: client`) the tests exec into; meshed when its
/// namespace is enrolled.
pub const CURL_CLIENT: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: client, labels: {app: client}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: client
    image: curlimages/curl
    command: [sleep, "86400"]
"#;

impl Namespace {
    /// Enrols the namespace as a user does: `weft namespace add`.
    pub fn enrol(&self) {
        let out = weft(&["namespace", "add", &self.name]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Waits until each Deployment has rolled out and the [`CURL_CLIENT`] pod is Ready.
    pub fn rolled_out(&self, deployments: &[&str]) {
        for d in deployments {
            self.ok(&[
                "rollout",
                "status",
                &format!("deployment/{d}"),
                "--timeout=180s",
            ]);
        }
        self.ok(&[
            "wait",
            "--for=condition=Ready",
            "pod/client",
            "--timeout=180s",
        ]);
    }

    pub fn kubectl(&self, args: &[&str]) -> Output {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        self.cluster.kubectl(&all)
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        self.cluster.ok(&all)
    }

    pub fn apply(&self, yaml: &str) {
        let out = self
            .cluster
            .kubectl_stdin(&["-n", &self.name, "apply", "-f", "-"], yaml);
        assert!(
            out.status.success(),
            "kubectl apply failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `pod`'s proxy's Prometheus text, read through the API server's pod proxy (port 15020).
    pub fn proxy_metrics(&self, pod: &str) -> String {
        self.cluster.ok(&[
            "get",
            "--raw",
            &format!(
                "/api/v1/namespaces/{}/pods/{pod}:15020/proxy/stats/prometheus",
                self.name
            ),
        ])
    }

    /// `wget` from `pod`'s `container`: Ok(the body) or Err(what kubectl and wget printed).
    pub fn wget(&self, pod: &str, container: &str, url: &str) -> Result<String, String> {
        let script = format!("timeout 10 wget -qO- {url}");
        let out = self.kubectl(&["exec", pod, "-c", container, "--", "sh", "-c", &script]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() {
            Ok(text)
        } else {
            Err(text + &String::from_utf8_lossy(&out.stderr))
        }
    }

    /// `what` is what follows `kubectl get`, such as "pod web" or "pods -l app=web".
    pub fn jsonpath(&self, what: &str, path: &str) -> String {
        let mut args = vec!["get"];
        args.extend(what.split_whitespace());
        let output = format!("jsonpath={path}");
        args.extend(["-o", output.as_str()]);
        self.ok(&args)
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = self
            .cluster
            .kubectl(&["delete", "namespace", &self.name, "--wait=false"]);
    }
}

/// Whether weft's injector added its proxy to `pod` (as returned by the API server).
pub fn has_proxy(pod: &serde_json::Value) -> bool {
    pod["metadata"]["annotations"]["weft.dev/status"].is_string()
}

/// Polls `check` until it holds; panics after `limit` (a bound on waiting, not a speed claim).
pub fn eventually(limit: Duration, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while start.elapsed() < limit {
        if check() {
            return;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    panic!("condition not met within {limit:?}");
}

/// Like `eventually`, returning the last value seen for the assertion message.
pub fn wait_for(
    limit: Duration,
    mut probe: impl FnMut() -> String,
    want: impl Fn(&str) -> bool,
) -> String {
    let start = Instant::now();
    let mut last = String::new();
    while start.elapsed() < limit {
        last = probe();
        if want(&last) {
            return last;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    panic!("condition not met within {limit:?}; last value: {last:?}");
}

/// Runs the `weft` CLI built by `make e2e` against the local cluster.
pub fn weft(args: &[&str]) -> Output {
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo_root().join("target"));
    // A build running beside the tests replaces the binary (unlink, then rename): for a
    // moment it is not there; wait for it rather than fail the test.
    let mut tries = 0;
    loop {
        match Command::new(target.join("debug/weft"))
            .args(args)
            .env("KUBECONFIG", repo_root().join("e2e/.cluster/kubeconfig"))
            .output()
        {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && tries < 40 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(250));
            }
            result => return result.expect("running weft (make e2e builds it)"),
        }
    }
}
