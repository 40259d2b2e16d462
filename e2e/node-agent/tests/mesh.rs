//! Traffic through the mesh on the local cluster (issue: proxy), the way seeds 001 and 004 check
//! it: injected pods become Ready with their proxy holding a certificate and its config from the
//! operator's stream; a meshed client reaches a meshed Service over mTLS and the server sees its
//! SPIFFE identity; PeerAuthentication STRICT shuts out an unmeshed client until PERMISSIVE
//! lets it back; a workload DISABLE turns the handshakes off; nothing of a request crosses the
//! node in plaintext between meshed pods; a pod reaches itself through its own Service.
//!
//! Every test has its own namespaces, enrolled with `istio.io/rev=mesh-e2e`, a revision this
//! file creates, so it does not depend on what other test files do to `stable` or `default`.

mod support;

use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use support::{Cluster, Namespace, deployed, eventually, weft};

const REVISION: &str = "mesh-e2e";

fn mesh() -> &'static Cluster {
    static REV: OnceLock<()> = OnceLock::new();
    let c = deployed();
    REV.get_or_init(|| {
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
    });
    c
}

/// A namespace enrolled in the test revision.
fn enrolled(name: &str) -> Namespace {
    let ns = mesh().namespace(name);
    ns.cluster.ok(&[
        "label",
        "namespace",
        &ns.name,
        &format!("istio.io/rev={REVISION}"),
    ]);
    ns
}

/// The echo server (Deployment `server`, Service `server` port 80 → 8080, named http) with a
/// busybox `shell` beside it, and a busybox `client` pod. Waits until all are Ready, which
/// for meshed pods needs the proxy ready: certificate and first config.
fn app(ns: &Namespace) {
    ns.apply(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: server}
spec:
  replicas: 1
  selector: {matchLabels: {app: server}}
  template:
    metadata: {labels: {app: server}}
    spec:
      containers:
      - name: echo
        image: weft.dev/echo:dev
        ports: [{containerPort: 8080, name: http}]
        env: [{name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}]
        readinessProbe: {httpGet: {path: /healthz, port: 8080}, periodSeconds: 1}
      - name: shell
        image: busybox
        command: [sh, -c, "sleep 3600"]
---
apiVersion: v1
kind: Service
metadata: {name: server}
spec:
  selector: {app: server}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Pod
metadata: {name: client, labels: {app: client}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: client
    image: busybox
    command: [sh, -c, "sleep 3600"]
"#,
    );
    ns.ok(&["rollout", "status", "deployment/server", "--timeout=120s"]);
    ns.ok(&[
        "wait",
        "--for=condition=Ready",
        "pod/client",
        "--timeout=120s",
    ]);
}

/// A namespace outside the mesh with a busybox `client` pod (an unmeshed caller).
fn outside_client(name: &str) -> Namespace {
    let outside = mesh().namespace(name);
    outside.apply(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: client}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers: [{name: client, image: busybox, command: [sh, -c, 'sleep 3600']}]\n",
    );
    outside.ok(&[
        "wait",
        "--for=condition=Ready",
        "pod/client",
        "--timeout=120s",
    ]);
    outside
}

fn server_pod(ns: &Namespace) -> String {
    ns.jsonpath("pods -l app=server", "{.items[0].metadata.name}")
}
fn peer_authentication(ns: &Namespace, name: &str, spec: &str) {
    ns.apply(&format!(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: {name}}}\nspec: {spec}\n"
    ));
}

#[test]
fn meshed_pods_are_ready_and_talk_mtls_with_their_identity() {
    let ns = enrolled("t-mesh-mtls");
    app(&ns);
    let server = server_pod(&ns);
    // Every container Ready, the proxy (a native sidecar, so an init container) among them.
    let ready = ns.jsonpath(
        &format!("pod {server}"),
        "{range .status.containerStatuses[*]}{.name}={.ready} {end}",
    );
    assert!(!ready.contains("=false"), "{ready}");
    let sidecars = ns.jsonpath(
        &format!("pod {server}"),
        "{range .status.initContainerStatuses[*]}{.name}={.ready} {end}",
    );
    assert!(sidecars.contains("weft-proxy=true"), "{sidecars}");
    // The revision counts the ready proxies (this namespace's client and server among them).
    let revision = ns.jsonpath(
        &format!("pod {server}"),
        "{.metadata.labels.weft\\.dev/revision}",
    );
    support::wait_for(
        Duration::from_secs(60),
        || {
            let out = ns.cluster.kubectl(&[
                "-n",
                "weft-system",
                "get",
                "meshconfig",
                &revision,
                "-o",
                "jsonpath={.status.proxies}",
            ]);
            String::from_utf8_lossy(&out.stdout).into_owned()
        },
        |n| n.parse::<u32>().is_ok_and(|n| n >= 2),
    );

    let body = ns
        .wget("client", "client", "http://server/hello")
        .expect("meshed call");
    assert!(body.contains(&format!("hello from {server}")), "{body}");

    let metrics = ns.proxy_metrics(&server);
    let principal = format!(
        "source_principal=\"spiffe://cluster.local/ns/{}/sa/default\"",
        ns.name
    );
    // The port is named `http`: Istio's sidecars count its traffic per request, not as TCP.
    let line = metrics
        .lines()
        .find(|l| {
            l.starts_with("istio_requests_total{")
                && l.contains(&principal)
                && l.contains("connection_security_policy=\"mutual_tls\"")
        })
        .unwrap_or_else(|| panic!("no mTLS request from the client in:\n{metrics}"));
    assert!(
        !metrics.contains("istio_tcp_connections_opened_total{"),
        "an HTTP port has no TCP series:\n{metrics}"
    );
    assert!(line.contains("reporter=\"destination\""), "{line}");
    // The client's proxy told the server who it is and what it dialled (peer metadata).
    assert!(line.contains("source_workload=\"client\""), "{line}");
    let host = |svc: &str| {
        format!(
            "destination_service=\"{svc}.{}.svc.cluster.local\"",
            ns.name
        )
    };
    assert!(line.contains(&host("server")), "{line}");

    // A headless Service's pods are dialled by IP: they are mesh endpoints all the same.
    ns.apply(
        "apiVersion: v1\nkind: Service\nmetadata: {name: server-peers}\nspec:\n  clusterIP: None\n  selector: {app: server}\n  ports: [{name: http, port: 8080}]\n",
    );
    // The probe keeps what a failure needs to be read: the call's outcome and, per request
    // series, its service, security and count.
    support::wait_for(
        Duration::from_secs(60),
        || {
            let call = ns.wget("client", "client", "http://server-peers:8080/headless");
            let series: Vec<String> = ns
                .proxy_metrics(&server)
                .lines()
                .filter(|l| l.starts_with("istio_requests_total{"))
                .map(|l| {
                    let label =
                        |name: &str| l.split(&format!("{name}=\"")).nth(1)?.split('"').next();
                    let count = l.rsplit(' ').next().unwrap_or("?");
                    format!(
                        "{} {} {count}",
                        label("destination_service").unwrap_or("?"),
                        label("connection_security_policy").unwrap_or("?"),
                    )
                })
                .collect();
            format!(
                "call: {:?}; series: {}",
                call.map(|_| "ok"),
                series.join(", ")
            )
        },
        |seen| {
            let wanted = format!("server-peers.{}.svc.cluster.local mutual_tls", ns.name);
            seen.contains(&wanted)
        },
    );
    assert!(
        metrics.contains("weft_tls_handshakes_total{direction=\"inbound\",result=\"success\"}"),
        "{metrics}"
    );

    // What the client's proxy knows, as `weft proxy-config` prints it.
    let config = |table: &str| {
        let out = weft(&["proxy-config", table, "client", "-n", &ns.name]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let server_host = format!("server.{}.svc.cluster.local", ns.name);
    let clusters = config("clusters");
    assert!(
        clusters
            .lines()
            .any(|l| l.starts_with(&server_host) && l.contains(" http ")),
        "{clusters}"
    );
    let endpoints = config("endpoints");
    let identity = format!("mtls spiffe://cluster.local/ns/{}/sa/default", ns.name);
    assert!(
        endpoints
            .lines()
            .any(|l| l.contains(&format!("{server_host}:80")) && l.contains(&identity)),
        "{endpoints}"
    );
    let routes = config("routes");
    assert!(routes.contains("(default)"), "{routes}");
}

#[test]
fn strict_refuses_unmeshed_clients_until_permissive_and_disable_stops_handshakes() {
    let ns = enrolled("t-mesh-pa");
    app(&ns);
    let outside = outside_client("t-mesh-pa-outside");
    let url = format!("http://server.{}/seed-001", ns.name);
    let server = server_pod(&ns);

    // PERMISSIVE (the revision's mode): both clients get through.
    outside
        .wget("client", "client", &url)
        .expect("unmeshed client under PERMISSIVE");
    ns.wget("client", "client", &url)
        .expect("meshed client under PERMISSIVE");

    // STRICT for the namespace: the unmeshed client is refused, the meshed one is not.
    peer_authentication(&ns, "default", "{mtls: {mode: STRICT}}");
    eventually(Duration::from_secs(30), || {
        outside.wget("client", "client", &url).is_err()
    });
    ns.wget("client", "client", &url)
        .expect("meshed client under STRICT");
    let refused = ns.proxy_metrics(&server);
    assert!(
        refused.contains("weft_connections_refused_total{direction=\"inbound\""),
        "the server's proxy counts the refusal:\n{refused}"
    );

    // The CLI explains it: the pod's mode per port and the policy behind it, and every proxy
    // of the namespace runs the config the operator would send now.
    let describe = weft(&["describe", "pod", &server, "-n", &ns.name]);
    let text = String::from_utf8_lossy(&describe.stdout);
    assert!(
        text.contains(&format!(
            "8080   STRICT      PeerAuthentication {}/default (namespace)",
            ns.name
        )),
        "{text}{}",
        String::from_utf8_lossy(&describe.stderr)
    );
    eventually(Duration::from_secs(30), || {
        let out = weft(&["proxy-status", "-n", &ns.name]);
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines().filter(|l| l.contains(" SYNCED ")).count() == 2
    });

    // PERMISSIVE again: both succeed.
    peer_authentication(&ns, "default", "{mtls: {mode: PERMISSIVE}}");
    eventually(Duration::from_secs(30), || {
        outside.wget("client", "client", &url).is_ok()
    });
    ns.wget("client", "client", &url)
        .expect("meshed client under PERMISSIVE again");

    // Seed 004: DISABLE on the server workload. Clients stop handshaking (auto-mTLS) and the
    // server's inbound handshake count stays put while requests keep succeeding.
    peer_authentication(
        &ns,
        "server-off",
        "{selector: {matchLabels: {app: server}}, mtls: {mode: DISABLE}}",
    );
    let handshakes = |m: &str| -> u64 {
        m.lines()
            .find(|l| {
                l.starts_with("weft_tls_handshakes_total{direction=\"inbound\",result=\"success\"}")
            })
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0)
    };
    // Wait until a request goes through without a new handshake (the client's config moved).
    eventually(Duration::from_secs(30), || {
        let before = handshakes(&ns.proxy_metrics(&server));
        ns.wget("client", "client", &url).is_ok()
            && handshakes(&ns.proxy_metrics(&server)) == before
    });
    let before = handshakes(&ns.proxy_metrics(&server));
    for _ in 0..3 {
        ns.wget("client", "client", &url)
            .expect("meshed client with DISABLE");
    }
    assert_eq!(handshakes(&ns.proxy_metrics(&server)), before);
    outside
        .wget("client", "client", &url)
        .expect("unmeshed client with DISABLE");
}

#[test]
fn a_pod_reaches_itself_through_its_own_service() {
    let ns = enrolled("t-mesh-self");
    app(&ns);
    let server = server_pod(&ns);
    let body = ns
        .wget(&server, "shell", "http://server/self")
        .expect("self call");
    assert!(
        body.contains(&format!("hello from {server} path=/self")),
        "{body}"
    );
}

#[test]
fn no_request_byte_crosses_the_node_in_plaintext_between_meshed_pods() {
    let ns = enrolled("t-mesh-wire");
    app(&ns);
    let server_ip = ns.jsonpath("pods -l app=server", "{.items[0].status.podIP}");
    // Capture on the node, on every interface (each pod has its own veth; packets between
    // pods are routed through the host).
    let capture = |marker: &str, call: &dyn Fn()| -> String {
        let mut tcpdump = Command::new("tcpdump")
            .args(["-i", "any", "-l", "-A", "-n", "-s", "0", "-U"])
            .args(["host", &server_ip, "and", "tcp", "port", "8080"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("tcpdump (installed by the cluster scripts)");
        std::thread::sleep(Duration::from_millis(800));
        call();
        std::thread::sleep(Duration::from_millis(800));
        let _ = tcpdump.kill();
        let out = tcpdump.wait_with_output().expect("tcpdump output");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(!text.is_empty(), "tcpdump captured nothing for {marker}");
        text
    };
    // The unmeshed path first, to prove the capture sees plaintext when there is some.
    let outside = outside_client("t-mesh-wire-outside");
    let plain = capture("plain-marker-7f3a", &|| {
        outside
            .wget(
                "client",
                "client",
                &format!("http://server.{}/plain-marker-7f3a", ns.name),
            )
            .expect("unmeshed call");
    });
    assert!(
        plain.contains("plain-marker-7f3a"),
        "capture sees plaintext"
    );

    let meshed = capture("secret-marker-9c1e", &|| {
        ns.wget("client", "client", "http://server/secret-marker-9c1e")
            .expect("meshed call");
    });
    assert!(
        !meshed.contains("secret-marker-9c1e"),
        "a meshed request crossed the node in plaintext"
    );
    assert!(
        !meshed.contains("hello from"),
        "a meshed response crossed in plaintext"
    );
}

#[test]
fn certificates_renew_under_continuous_traffic_without_a_failed_request() {
    let ns = enrolled("t-mesh-renew");
    // One-minute certificates (the CA's shortest), so both proxies renew about every 30 s.
    ns.apply(
        r#"
apiVersion: v1
kind: Pod
metadata:
  name: server
  labels: {app: renew-server}
  annotations: {proxy.weft.dev/cert-validity: 60s}
spec:
  containers:
  - name: echo
    image: weft.dev/echo:dev
    ports: [{containerPort: 8080, name: http}]
    env: [{name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}]
---
apiVersion: v1
kind: Service
metadata: {name: renew}
spec:
  selector: {app: renew-server}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Pod
metadata:
  name: client
  annotations: {proxy.weft.dev/cert-validity: 60s}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - {name: client, image: busybox, command: [sh, -c, "sleep 3600"]}
"#,
    );
    for pod in ["pod/server", "pod/client"] {
        ns.ok(&["wait", "--for=condition=Ready", pod, "--timeout=120s"]);
    }
    let applied = |pod: &str| -> u64 {
        ns.proxy_metrics(pod)
            .lines()
            .find(|l| l.starts_with("weft_certificates_total{result=\"applied\"}"))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0)
    };
    let (server_before, client_before) = (applied("server"), applied("client"));
    // 75 s of requests, 5 a second, each on a new connection (a new handshake each time).
    let script = "ok=0; fail=0; end=$(( $(date +%s) + 75 )); \
                  while [ $(date +%s) -lt $end ]; do \
                    if timeout 5 wget -qO- http://renew/tick >/dev/null 2>&1; then ok=$((ok+1)); else fail=$((fail+1)); fi; \
                    sleep 0.2; \
                  done; echo ok=$ok fail=$fail";
    let out = ns.ok(&["exec", "client", "-c", "client", "--", "sh", "-c", script]);
    let (server_after, client_after) = (applied("server"), applied("client"));
    println!(
        "renewal under traffic: {} ; certificates applied: server {server_before}->{server_after}, client {client_before}->{client_after}",
        out.trim()
    );
    assert!(
        out.contains(" fail=0"),
        "requests failed during renewal: {out}"
    );
    let ok: u64 = out
        .split_whitespace()
        .find_map(|w| w.strip_prefix("ok=")?.parse().ok())
        .unwrap_or(0);
    assert!(ok >= 100, "too few requests to mean anything: {out}");
    assert!(
        server_after > server_before,
        "the server proxy never renewed"
    );
    assert!(
        client_after > client_before,
        "the client proxy never renewed"
    );
}
