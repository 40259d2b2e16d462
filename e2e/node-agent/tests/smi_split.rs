//! SMI TrafficSplit v1alpha4 `matches` on the cluster, in seed 000's bookstore: the SMI
//! spec's A/B example (an HTTPRouteGroup matching Firefox users sends them to bookstore-v2,
//! weights 0/100) leaves every other request to the root Service (both versions, round robin).
//! The client is a meshed curl pod; each version of the echo app answers with its version
//! first, so what is counted is real answers through the client's proxy. `weft describe pod`
//! names the split's routes for the client.

mod support;

use std::time::Duration;

use support::{CURL_CLIENT, Namespace, wait_for, weft};

const NS: &str = "bookstore-ab";

fn version(version: &str) -> String {
    format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{name: bookstore-{version}}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: bookstore, version: {version}}}}}
  template:
    metadata: {{labels: {{app: bookstore, version: {version}}}}}
    spec:
      containers:
      - name: app
        image: weft.dev/echo:dev
        ports: [{{containerPort: 14001}}]
        env:
        - {{name: PORT, value: "14001"}}
        - {{name: MESSAGE, value: {version}}}
        - {{name: POD_NAME, valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}}}
        readinessProbe: {{httpGet: {{path: /healthz, port: 14001}}, periodSeconds: 1}}
"#
    )
}

/// Seed 000's Services (the root selects both versions).
const SERVICES: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: bookstore}
spec:
  selector: {app: bookstore}
  ports: [{port: 14001}]
---
apiVersion: v1
kind: Service
metadata: {name: bookstore-v1}
spec:
  selector: {app: bookstore, version: v1}
  ports: [{port: 14001}]
---
apiVersion: v1
kind: Service
metadata: {name: bookstore-v2}
spec:
  selector: {app: bookstore, version: v2}
  ports: [{port: 14001}]
"#;

/// The SMI spec's A/B test example (TrafficSplit v1alpha4 + HTTPRouteGroup) on the bookstore.
const AB_TEST: &str = r#"
apiVersion: specs.smi-spec.io/v1alpha4
kind: HTTPRouteGroup
metadata:
  name: ab-test
spec:
  matches:
  - name: firefox-users
    headers:
      user-agent: ".*Firefox.*"
---
apiVersion: split.smi-spec.io/v1alpha4
kind: TrafficSplit
metadata:
  name: ab-test
spec:
  service: bookstore
  matches:
  - kind: HTTPRouteGroup
    name: ab-test
  backends:
  - service: bookstore-v1
    weight: 0
  - service: bookstore-v2
    weight: 100
"#;

const FIREFOX: &str = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0";

/// `n` requests with a user agent in one exec, each answer's first word (the version).
fn versions(ns: &Namespace, agent: &str, n: usize) -> Vec<String> {
    let url = format!("http://bookstore:14001/?n=[1-{n}]");
    let out = ns.kubectl(&[
        "exec",
        "client",
        "-c",
        "client",
        "--",
        "curl",
        "-sS",
        "--max-time",
        "120",
        "-A",
        agent,
        "-w",
        "\n",
        &url,
    ]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(String::from))
        .collect()
}

fn count(answers: &[String], v: &str) -> usize {
    answers.iter().filter(|a| *a == v).count()
}

#[test]
fn v1alpha4_matches_send_firefox_users_to_v2_and_everyone_else_to_the_root_service() {
    let c = support::deployed();
    let ns = c.namespace(NS);
    let out = weft(&["namespace", "add", NS]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    ns.apply(&version("v1"));
    ns.apply(&version("v2"));
    ns.apply(SERVICES);
    ns.apply(CURL_CLIENT);
    ns.rolled_out(&["bookstore-v1", "bookstore-v2"]);
    ns.apply(AB_TEST);
    // The split reached the client when a batch of Firefox requests is all v2.
    wait_for(
        Duration::from_secs(60),
        || {
            let b = versions(&ns, FIREFOX, 40);
            format!("{}/{}", count(&b, "v2"), b.len())
        },
        |s| s == "40/40",
    );
    let firefox = versions(&ns, FIREFOX, 300);
    assert_eq!(
        (count(&firefox, "v2"), firefox.len()),
        (300, 300),
        "Firefox users all go to bookstore-v2 (weights 0/100)"
    );
    // Everyone else is the root Service's: both versions, round robin (about half each).
    let others = versions(&ns, "curl/8", 300);
    assert_eq!(
        others.len(),
        300,
        "{:?}",
        &others[others.len().saturating_sub(5)..]
    );
    let v1 = count(&others, "v1");
    assert!(
        (100..=200).contains(&v1) && v1 + count(&others, "v2") == 300,
        "requests the group does not match go to the root Service (v1 and v2): v1 {v1} of 300"
    );
    eprintln!(
        "v1alpha4 matches: Firefox v2 {}/300; others v1 {v1}/300",
        count(&firefox, "v2")
    );
    // `weft describe pod` shows the client's table for the bookstore: the split, then the root.
    let out = weft(&["describe", "pod", "client", "-n", NS]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains(&format!("route #0 TrafficSplit {NS}/ab-test"))
            && text.contains(&format!(
                "route #1 TrafficSplit {NS}/ab-test: * -> bookstore.{NS}.svc.cluster.local:14001 1"
            )),
        "{text}"
    );
}
