//! The bookstore app of the stories (seed 000's bookstore and bookbuyer, reduced to what the
//! tests need) and the two things every story does with it: roll it out and buy from it.

use super::{Cluster, Namespace, weft};

/// The stories' app: bookstore (two replicas of the echo app behind a Service on port 80)
/// and a bookbuyer client (busybox, for `wget`).
pub const APP: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: bookstore}
spec:
  replicas: 2
  selector: {matchLabels: {app: bookstore}}
  template:
    metadata: {labels: {app: bookstore}}
    spec:
      containers:
      - name: bookstore
        image: weft.dev/echo:dev
        ports: [{name: http, containerPort: 8080}]
        env: [{name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}]
        readinessProbe: {httpGet: {path: /healthz, port: 8080}, periodSeconds: 1}
---
apiVersion: v1
kind: Service
metadata: {name: bookstore}
spec:
  selector: {app: bookstore}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: bookbuyer}
spec:
  replicas: 1
  selector: {matchLabels: {app: bookbuyer}}
  template:
    metadata: {labels: {app: bookbuyer}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: bookbuyer
        image: busybox
        command: [sh, -c, "sleep 86400"]
"#;

/// The revision the `default` tag points at (`stable` unless a test moved it).
pub fn default_revision(c: &Cluster) -> String {
    c.ok(&[
        "-n",
        "weft-system",
        "get",
        "revisiontag",
        "default",
        "-o",
        "jsonpath={.spec.revision}",
    ])
}

/// The setting of the mTLS stories: `name` enrolled with `weft namespace add` and
/// `<name>-outside` left alone, each running [`APP`] and rolled out. The bookbuyer of the
/// first is the meshed client, the one of the second the unmeshed client.
pub fn meshed_and_outside(c: &'static Cluster, name: &str) -> (Namespace, Namespace) {
    let ns = c.namespace(name);
    assert!(weft(&["namespace", "add", &ns.name]).status.success());
    ns.apply(APP);
    rollout(&ns);
    let outside = c.namespace(&format!("{name}-outside"));
    outside.apply(APP);
    rollout(&outside);
    (ns, outside)
}

/// Waits until both Deployments of [`APP`] are rolled out.
pub fn rollout(ns: &Namespace) {
    for d in ["bookstore", "bookbuyer"] {
        ns.ok(&[
            "rollout",
            "status",
            &format!("deployment/{d}"),
            "--timeout=180s",
        ]);
    }
}

/// The bookbuyer `wget`s `url`: the body, or what failed.
pub fn buy(ns: &Namespace, url: &str) -> Result<String, String> {
    let pod = ns.jsonpath("pods -l app=bookbuyer", "{.items[0].metadata.name}");
    ns.wget(&pod, "bookbuyer", url)
}
