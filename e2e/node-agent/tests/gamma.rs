//! Gateway API routes for the mesh (GAMMA) on the cluster: an HTTPRoute whose parent is the
//! `reviews` Service splits it 90/10 between `reviews-v1` and `reviews-v2` (measured over
//! 1,000 requests that went through the client's proxy) and sends one user to v2; a GRPCRoute
//! sends one gRPC method to v2 (Istio's echo client and server, real gRPC); the operator writes
//! each route's `status.parents` (Accepted, ResolvedRefs) as a Gateway API implementation does,
//! and a rule whose backend is missing answers 500 with `ResolvedRefs: False`. The vendored
//! Gateway API CRDs (config/gateway-api) are installed by deploy.sh. Part of `make
//! conformance` (the gRPC half needs the echo-advanced image).

mod support;

use std::time::Duration;

use serde_json::Value;
use support::{CURL_CLIENT, Namespace, wait_for, weft};

/// Requests per measurement (issue 19: at least 1,000).
const SAMPLE: usize = 1000;
/// Allowed distance of a measured share from its weight, in percentage points.
const TOLERANCE: f64 = 3.0;
const CONTROLLER: &str = "weft.dev/gateway-controller";

/// `reviews` (both versions), `reviews-v1`, `reviews-v2` and `broken` (a parent whose route
/// names a missing backend), each a Service on port 9080 over the echo app that answers its
/// version first.
fn reviews_app() -> String {
    let mut yaml = String::new();
    for v in ["v1", "v2"] {
        yaml.push_str(&format!(
            r#"
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: reviews-{v}}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: reviews, version: {v}}}}}
  template:
    metadata: {{labels: {{app: reviews, version: {v}}}}}
    spec:
      containers:
      - name: app
        image: weft.dev/echo:dev
        ports: [{{containerPort: 9080}}]
        env:
        - {{name: PORT, value: "9080"}}
        - {{name: MESSAGE, value: {v}}}
        - {{name: POD_NAME, valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}}}
        readinessProbe: {{httpGet: {{path: /healthz, port: 9080}}, periodSeconds: 1}}
"#
        ));
    }
    for (name, selector) in [
        ("reviews", "{app: reviews}"),
        ("reviews-v1", "{app: reviews, version: v1}"),
        ("reviews-v2", "{app: reviews, version: v2}"),
        ("broken", "{app: reviews}"),
    ] {
        yaml.push_str(&format!(
            r#"
---
apiVersion: v1
kind: Service
metadata: {{name: {name}}}
spec:
  selector: {selector}
  ports: [{{name: http, port: 9080}}]
"#
        ));
    }
    yaml
}

/// The HTTPRoute: `end-user: jason` to v2, everyone else 90/10.
const REVIEWS_ROUTE: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: reviews}
spec:
  parentRefs:
  - group: ""
    kind: Service
    name: reviews
    port: 9080
  rules:
  - matches:
    - headers:
      - name: end-user
        value: jason
    backendRefs:
    - name: reviews-v2
      port: 9080
  - backendRefs:
    - name: reviews-v1
      port: 9080
      weight: 90
    - name: reviews-v2
      port: 9080
      weight: 10
"#;

const BROKEN_ROUTE: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: broken}
spec:
  parentRefs:
  - {group: "", kind: Service, name: broken}
  rules:
  - backendRefs:
    - {name: missing, port: 9080}
"#;

/// `n` requests from the client pod in one curl (one connection kept alive), with extra curl
/// arguments; each answer's first word (the version), then curl's errors.
fn answers(ns: &Namespace, url: &str, n: usize, extra: &[&str]) -> Vec<String> {
    let target = format!("{url}?n=[1-{n}]");
    let mut argv = vec![
        "exec",
        "client",
        "-c",
        "client",
        "--",
        "curl",
        "-sS",
        "--max-time",
        "120",
        "-w",
        "\n",
    ];
    argv.extend_from_slice(extra);
    argv.push(&target);
    let out = ns.kubectl(&argv);
    let mut list: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.split_whitespace().next().unwrap_or_default().to_string())
        .collect();
    list.extend(
        String::from_utf8_lossy(&out.stderr)
            .lines()
            .map(|l| format!("error: {l}")),
    );
    list
}

/// weft's entry in `status.parents` of route `kind/name`: condition type -> (status, reason,
/// observedGeneration), and the parentRef it echoes; plus the route's generation.
fn weft_parent(ns: &Namespace, what: &str) -> Option<(Value, Value, i64)> {
    let out = ns.kubectl(&["get", what, "-o", "json"]);
    let route: Value = serde_json::from_slice(&out.stdout).ok()?;
    let generation = route["metadata"]["generation"].as_i64()?;
    let entry = route["status"]["parents"]
        .as_array()?
        .iter()
        .find(|p| p["controllerName"] == CONTROLLER)?
        .clone();
    Some((
        entry["conditions"].clone(),
        entry["parentRef"].clone(),
        generation,
    ))
}

fn condition<'a>(conditions: &'a Value, type_: &str) -> &'a Value {
    conditions
        .as_array()
        .and_then(|l| l.iter().find(|c| c["type"] == type_))
        .unwrap_or(&Value::Null)
}

/// Waits until weft's status entry of `what` has condition `type_` with `status`, at the
/// route's current generation; returns the conditions.
fn status_says(ns: &Namespace, what: &str, type_: &str, status: &str) -> Value {
    let seen = wait_for(
        Duration::from_secs(60),
        || match weft_parent(ns, what) {
            Some((conditions, _, generation)) => {
                let c = condition(&conditions, type_);
                if c["status"] == status && c["observedGeneration"].as_i64() == Some(generation) {
                    format!("ok {conditions}")
                } else {
                    format!("{what}: {conditions}")
                }
            }
            None => format!("{what}: no status entry of {CONTROLLER}"),
        },
        |s| s.starts_with("ok "),
    );
    serde_json::from_str(&seen[3..]).unwrap_or(Value::Null)
}

#[test]
fn an_httproute_splits_90_10_sends_one_user_to_v2_and_reports_its_status() {
    let c = support::deployed();
    let ns = c.namespace("t-gamma");
    ns.enrol();
    ns.apply(&reviews_app());
    ns.apply(CURL_CLIENT);
    ns.rolled_out(&["reviews-v1", "reviews-v2"]);
    let url = "http://reviews:9080/";
    ns.apply(REVIEWS_ROUTE);

    // The user's header rule is in force once every one of their requests reaches v2 (round
    // robin over the two versions would give v1 about half of them).
    let jason = ["-H", "end-user: jason"];
    wait_for(
        Duration::from_secs(60),
        || answers(&ns, url, 20, &jason).join(" "),
        |b| b.split(' ').all(|v| v == "v2"),
    );
    let theirs = answers(&ns, url, 50, &jason);
    assert_eq!(theirs.len(), 50, "{theirs:?}");
    assert!(
        theirs.iter().all(|v| v == "v2"),
        "jason always reaches v2: {theirs:?}"
    );

    // Everyone else: 90/10, measured.
    let all = answers(&ns, url, SAMPLE, &[]);
    assert_eq!(
        all.len(),
        SAMPLE,
        "{:?}",
        &all[all.len().saturating_sub(5)..]
    );
    let strangers: Vec<&String> = all.iter().filter(|v| *v != "v1" && *v != "v2").collect();
    assert!(
        strangers.is_empty(),
        "answers not from a version: {strangers:?}"
    );
    let v2 = 100.0 * all.iter().filter(|v| *v == "v2").count() as f64 / SAMPLE as f64;
    eprintln!("GAMMA HTTPRoute 90/10: v2 share {v2:.1}% over {SAMPLE} requests");
    assert!(
        (v2 - 10.0).abs() <= TOLERANCE,
        "v2 got {v2:.1}% under 90/10"
    );

    // status.parents as a Gateway API implementation writes it.
    let conditions = status_says(&ns, "httproute/reviews", "Accepted", "True");
    assert_eq!(condition(&conditions, "Accepted")["reason"], "Accepted");
    assert_eq!(condition(&conditions, "ResolvedRefs")["status"], "True");
    assert_eq!(
        condition(&conditions, "ResolvedRefs")["reason"],
        "ResolvedRefs"
    );
    let (_, parent_ref, _) = weft_parent(&ns, "httproute/reviews").expect("weft's entry");
    assert_eq!(parent_ref["kind"], "Service");
    assert_eq!(parent_ref["name"], "reviews");
    assert_eq!(parent_ref["port"], 9080);

    // The client's proxy config shows the GAMMA routes.
    let out = weft(&["proxy-config", "routes", "client", "-n", &ns.name]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        table.contains("t-gamma/reviews") && table.contains("reviews-v2"),
        "{table}"
    );

    // A rule whose only backend does not exist: ResolvedRefs False, BackendNotFound; its
    // requests are answered 500, as the spec says.
    ns.apply(BROKEN_ROUTE);
    let conditions = status_says(&ns, "httproute/broken", "ResolvedRefs", "False");
    assert_eq!(
        condition(&conditions, "ResolvedRefs")["reason"],
        "BackendNotFound"
    );
    assert_eq!(condition(&conditions, "Accepted")["status"], "True");
    let codes = wait_for(
        Duration::from_secs(60),
        || {
            answers(
                &ns,
                "http://broken:9080/",
                10,
                &["-o", "/dev/null", "-w", "%{http_code}\n"],
            )
            .join(" ")
        },
        |b| b.split(' ').all(|c| c == "500"),
    );
    assert_eq!(codes.split(' ').count(), 10, "{codes}");

    // Deleting the route gives the Service back its plain behaviour (both versions).
    ns.ok(&["delete", "httproute", "reviews"]);
    wait_for(
        Duration::from_secs(60),
        || answers(&ns, url, 20, &jason).join(" "),
        |b| b.contains("v1") && b.contains("v2"),
    );
}

const GRPC_APP: &str = r#"
apiVersion: v1
kind: ServiceAccount
metadata: {name: grpc-client}
---
apiVersion: v1
kind: Pod
metadata: {name: grpc-client, labels: {app: grpc-client}}
spec:
  serviceAccountName: grpc-client
  terminationGracePeriodSeconds: 1
  containers:
  - name: client
    image: registry.k8s.io/gateway-api/echo-advanced
    command: [sleep, "86400"]
"#;

fn grpc_version(v: &str) -> String {
    format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{name: grpc-echo-{v}}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: grpc-echo, version: {v}}}}}
  template:
    metadata: {{labels: {{app: grpc-echo, version: {v}}}}}
    spec:
      containers:
      - name: echo
        image: registry.k8s.io/gateway-api/echo-advanced
        args: [--grpc=7070, --port=8080, --version={v}]
        ports: [{{name: grpc, containerPort: 7070}}]
        readinessProbe: {{tcpSocket: {{port: 7070}}, periodSeconds: 1}}
---
apiVersion: v1
kind: Service
metadata: {{name: grpc-echo-{v}}}
spec:
  selector: {{app: grpc-echo, version: {v}}}
  ports: [{{name: grpc, port: 7070}}]
"#
    )
}

const GRPC_SERVICE: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: grpc-echo}
spec:
  selector: {app: grpc-echo}
  ports: [{name: grpc, port: 7070}]
"#;

/// The GRPCRoute: `method` of proto.EchoTestService to v2, every other call to v1.
fn grpc_route(method: &str) -> String {
    format!(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {{name: grpc-echo}}
spec:
  parentRefs:
  - {{group: "", kind: Service, name: grpc-echo, port: 7070}}
  rules:
  - matches:
    - method: {{service: proto.EchoTestService, method: {method}}}
    backendRefs:
    - {{name: grpc-echo-v2, port: 7070}}
  - backendRefs:
    - {{name: grpc-echo-v1, port: 7070}}
"#
    )
}

/// `count` Echo calls (`/proto.EchoTestService/Echo`) on one connection: the version of
/// each answer (Istio's client prints `[i body] ServiceVersion=v1`).
fn echo_versions(ns: &Namespace, count: usize) -> Vec<String> {
    let out = ns.kubectl(&[
        "exec",
        "grpc-client",
        "-c",
        "client",
        "--",
        "client",
        &format!("grpc://grpc-echo.{}:7070", ns.name),
        "--count",
        &count.to_string(),
        "--timeout",
        "5s",
    ]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            l.split_once("body] ServiceVersion=")
                .map(|(_, v)| v.trim().to_string())
        })
        .collect()
}

#[test]
fn a_grpcroute_sends_one_method_to_v2_and_the_rest_to_v1() {
    let c = support::deployed();
    let ns = c.namespace("t-gamma-grpc");
    ns.enrol();
    ns.apply(&grpc_version("v1"));
    ns.apply(&grpc_version("v2"));
    ns.apply(GRPC_SERVICE);
    ns.apply(GRPC_APP);
    for d in ["grpc-echo-v1", "grpc-echo-v2"] {
        ns.ok(&[
            "rollout",
            "status",
            &format!("deployment/{d}"),
            "--timeout=180s",
        ]);
    }
    ns.ok(&[
        "wait",
        "--for=condition=Ready",
        "pod/grpc-client",
        "--timeout=180s",
    ]);
    // Without a route both versions answer Echo.
    wait_for(
        Duration::from_secs(60),
        || echo_versions(&ns, 20).join(" "),
        |b| b.contains("v1") && b.contains("v2"),
    );

    // Echo matches the method rule: every call to v2.
    ns.apply(&grpc_route("Echo"));
    wait_for(
        Duration::from_secs(60),
        || echo_versions(&ns, 20).join(" "),
        |b| b.split(' ').count() == 20 && b.split(' ').all(|v| v == "v2"),
    );
    let calls = echo_versions(&ns, 50);
    assert_eq!(calls.len(), 50, "{calls:?}");
    assert!(calls.iter().all(|v| v == "v2"), "{calls:?}");
    let conditions = status_says(&ns, "grpcroute/grpc-echo", "Accepted", "True");
    assert_eq!(condition(&conditions, "ResolvedRefs")["status"], "True");

    // The rule names another method: Echo no longer matches it and falls to v1.
    ns.apply(&grpc_route("ForwardEcho"));
    wait_for(
        Duration::from_secs(60),
        || echo_versions(&ns, 20).join(" "),
        |b| b.split(' ').count() == 20 && b.split(' ').all(|v| v == "v1"),
    );
    // The status follows the new generation.
    status_says(&ns, "grpcroute/grpc-echo", "Accepted", "True");
}
