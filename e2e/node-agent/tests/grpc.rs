//! gRPC through the mesh on the cluster, with real gRPC programs: Istio's echo `server` (a
//! grpc-go server, port named `grpc`) and its `client` (grpc-go) from the echo-advanced image
//! that `make conformance-images` builds. Proves that the client's proxy balances one gRPC
//! connection's calls over every endpoint, that an AuthorizationPolicy allows and denies per
//! method path with gRPC's own status (PERMISSION_DENIED), and that both proxies count the
//! calls with `grpc_response_status`. Part of `make conformance` (the images take minutes to
//! build cold), not of `make test`.

mod support;

use std::time::Duration;

use support::{Namespace, wait_for, weft};

const SERVER: &str = r#"
apiVersion: v1
kind: ServiceAccount
metadata: {name: grpc-echo}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: grpc-echo}
spec:
  replicas: 2
  selector: {matchLabels: {app: grpc-echo}}
  template:
    metadata: {labels: {app: grpc-echo, version: v1}}
    spec:
      serviceAccountName: grpc-echo
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

/// `count` Echo calls on one gRPC connection from the client pod: Istio's client's output
/// (`[i body] Hostname=...` per answer, or the call's error).
fn echo_calls(ns: &Namespace, count: usize) -> String {
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
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Hostnames that answered, one per successful call.
fn hostnames(output: &str) -> Vec<String> {
    output
        .lines()
        .filter_map(|l| {
            l.split_once("body] Hostname=")
                .map(|(_, h)| h.trim().to_string())
        })
        .collect()
}

fn allow_only(ns: &Namespace, method: &str) -> String {
    format!(
        r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: grpc-methods, namespace: {ns}}}
spec:
  selector: {{matchLabels: {{app: grpc-echo}}}}
  action: ALLOW
  rules:
  - from: [{{source: {{principals: ["cluster.local/ns/{ns}/sa/grpc-client"]}}}}]
    to: [{{operation: {{paths: ["/proto.EchoTestService/{method}"]}}}}]
"#,
        ns = ns.name
    )
}
fn sum(text: &str, name: &str, needles: &[&str]) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && needles.iter().all(|n| l.contains(n)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[test]
fn grpc_calls_are_balanced_per_call_and_authorized_per_method() {
    let c = support::deployed();
    let ns = c.namespace("t-grpc");
    assert!(weft(&["namespace", "add", &ns.name]).status.success());
    ns.apply(SERVER);
    ns.ok(&[
        "rollout",
        "status",
        "deployment/grpc-echo",
        "--timeout=180s",
    ]);
    ns.ok(&[
        "wait",
        "--for=condition=Ready",
        "pod/grpc-client",
        "--timeout=180s",
    ]);

    // One connection, ten calls: the client's proxy picks an endpoint per call, so both pods
    // answer (an L4 proxy would pin the connection, and every call, to one of them). Waits
    // for the second pod to be in the client's config.
    let distinct = |out: &str| {
        let mut names = hostnames(out);
        names.sort();
        names.dedup();
        names.len()
    };
    let output = wait_for(
        Duration::from_secs(60),
        || echo_calls(&ns, 10),
        |out| hostnames(out).len() == 10 && distinct(out) == 2,
    );
    assert_eq!(distinct(&output), 2, "both endpoints answer:\n{output}");

    // Allowed by method path.
    c.apply(&allow_only(&ns, "Echo"));
    wait_for(
        Duration::from_secs(60),
        || echo_calls(&ns, 1),
        |out| hostnames(out).len() == 1,
    );
    // Only another method allowed: Echo is refused with gRPC's PERMISSION_DENIED.
    c.apply(&allow_only(&ns, "ForwardEcho"));
    let denied = wait_for(
        Duration::from_secs(60),
        || echo_calls(&ns, 1),
        |out| out.contains("PermissionDenied"),
    );
    assert!(denied.contains("RBAC: access denied"), "{denied}");
    assert!(hostnames(&denied).is_empty(), "{denied}");

    // Both reporters count the calls as gRPC, with their status.
    let client = ns.proxy_metrics("grpc-client");
    let source = ["reporter=\"source\"", "request_protocol=\"grpc\""];
    assert!(
        sum(
            &client,
            "istio_requests_total",
            &[&source[..], &["grpc_response_status=\"0\""]].concat()
        ) >= 11,
        "{client}"
    );
    assert!(
        sum(
            &client,
            "istio_requests_total",
            &[&source[..], &["grpc_response_status=\"7\""]].concat()
        ) >= 1,
        "{client}"
    );
    // Each unary call is one message each way (gRPC's length-prefixed framing, counted).
    let ok = [&source[..], &["grpc_response_status=\"0\""]].concat();
    assert!(
        sum(&client, "istio_request_messages_total", &ok) >= 11,
        "{client}"
    );
    assert!(
        sum(&client, "istio_response_messages_total", &ok) >= 11,
        "{client}"
    );
    let pods = ns.jsonpath("pods -l app=grpc-echo", "{.items[*].metadata.name}");
    let destination: u64 = pods
        .split_whitespace()
        .map(|pod| {
            sum(
                &ns.proxy_metrics(pod),
                "istio_requests_total",
                &[
                    "reporter=\"destination\"",
                    "request_protocol=\"grpc\"",
                    "grpc_response_status=\"7\"",
                    "response_code=\"200\"",
                ],
            )
        })
        .sum();
    assert!(destination >= 1, "the denial is counted by the server side");
}
