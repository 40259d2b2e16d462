//! Sidecar injection through the real API server (issue: injection): namespaces enrolled with
//! each label get the proxy, opt-outs and system namespaces do not, and an unknown revision is
//! refused with a message that says what to do. Pods are created with `--dry-run=server`, which
//! runs the real admission chain (our webhook has no side effects) and returns the pod as it
//! would be stored.

mod support;

use std::sync::OnceLock;
use std::time::Duration;

use support::{Cluster, Namespace, eventually};

fn deployed() -> &'static Cluster {
    static DEPLOYED: OnceLock<()> = OnceLock::new();
    let c = support::deployed();
    DEPLOYED.get_or_init(|| {
        // The first revision and the default tag, as a user (or the operator's first start) makes them.
        c.apply_server_side(
            r#"
apiVersion: mesh.weft.dev/v1alpha1
kind: MeshConfig
metadata: {name: stable, namespace: weft-system}
spec:
  proxy: {image: "ghcr.io/weft-mesh/weft:0.1.0"}
---
apiVersion: mesh.weft.dev/v1alpha1
kind: MeshConfig
metadata: {name: canary, namespace: weft-system}
spec:
  proxy: {image: "ghcr.io/weft-mesh/weft-canary:0.2.0"}
---
apiVersion: mesh.weft.dev/v1alpha1
kind: RevisionTag
metadata: {name: default, namespace: weft-system}
spec: {revision: stable}
"#,
        );
        // The operator's caBundle reaches the webhook configuration before it can be called.
        eventually(Duration::from_secs(60), || {
            !c.ok(&[
                "get",
                "mutatingwebhookconfiguration",
                "weft-sidecar-injector",
                "-o",
                "jsonpath={.webhooks[0].clientConfig.caBundle}",
            ])
            .is_empty()
        });
    });
    c
}

const POD: &str = r#"{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "app", "labels": {"app": "web"}},
 "spec": {"containers": [{"name": "web", "image": "weft.dev/echo:dev",
   "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8080}}}]}}"#;

/// Creates `pod` (JSON) in `ns` with a server-side dry run; returns the admitted pod or the error.
fn admit(ns: &Namespace, pod: &str) -> Result<serde_json::Value, String> {
    ns.cluster.dry_run_pod(&ns.name, pod)
}

fn injected(pod: &serde_json::Value) -> bool {
    support::has_proxy(pod)
}

fn labelled(name: &str, labels: &[&str]) -> Namespace {
    let ns = deployed().namespace(name);
    for l in labels {
        ns.cluster
            .ok(&["label", "namespace", &ns.name, l, "--overwrite"]);
    }
    ns
}

/// Admits until the injector has seen the namespace's labels (its caches are eventually
/// consistent), then returns the pod.
fn admit_enrolled(ns: &Namespace, pod: &str) -> serde_json::Value {
    let mut last = None;
    eventually(Duration::from_secs(30), || {
        last = Some(admit(ns, pod));
        matches!(&last, Some(Ok(p)) if injected(p))
    });
    last.unwrap().unwrap()
}

#[test]
fn each_enrol_label_injects_the_proxy_as_a_native_sidecar() {
    for (name, label, revision) in [
        ("t-inj-enabled", "istio-injection=enabled", "stable"),
        ("t-inj-rev", "istio.io/rev=canary", "canary"),
        ("t-inj-tag", "istio.io/rev=default", "stable"),
        (
            "t-inj-osm",
            "openservicemesh.io/monitored-by=weft",
            "stable",
        ),
    ] {
        let ns = labelled(name, &[label]);
        let pod = admit_enrolled(&ns, POD);
        let init: Vec<&str> = pod["spec"]["initContainers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(init, ["weft-init", "weft-proxy"], "{label}");
        let proxy = &pod["spec"]["initContainers"][1];
        assert_eq!(
            proxy["restartPolicy"], "Always",
            "the proxy is a native sidecar"
        );
        assert_eq!(proxy["securityContext"]["runAsUser"], 1337);
        assert_eq!(
            pod["metadata"]["annotations"]["istio.io/rev"], revision,
            "{label}"
        );
        assert_eq!(pod["metadata"]["labels"]["weft.dev/revision"], revision);
        let image = proxy["image"].as_str().unwrap();
        assert_eq!(
            image.contains("canary"),
            revision == "canary",
            "{label}: {image}"
        );
        // The app's probe now goes through the proxy's app-health endpoint.
        assert_eq!(
            pod["spec"]["containers"][0]["readinessProbe"]["httpGet"]["path"],
            "/app-health/web/readyz"
        );
        assert_eq!(
            pod["spec"]["containers"][0]["readinessProbe"]["httpGet"]["port"],
            15020
        );
    }
}

#[test]
fn opt_outs_system_namespaces_and_unenrolled_namespaces_are_untouched() {
    let ns = labelled("t-inj-optout", &["istio-injection=enabled"]);
    let _ = admit_enrolled(&ns, POD);
    let opted_out = POD.replace(
        r#""labels": {"app": "web"}"#,
        r#""labels": {"app": "web", "sidecar.istio.io/inject": "false"}"#,
    );
    assert!(!injected(&admit(&ns, &opted_out).unwrap()));

    let plain = deployed().namespace("t-inj-none");
    assert!(!injected(&admit(&plain, POD).unwrap()));

    let out = deployed().kubectl_stdin(
        &[
            "-n",
            "kube-system",
            "create",
            "--dry-run=server",
            "-o",
            "json",
            "-f",
            "-",
        ],
        POD,
    );
    assert!(out.status.success());
    let pod: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(!injected(&pod));

    let host = POD.replace(r#""spec": {"#, r#""spec": {"hostNetwork": true, "#);
    assert!(!injected(&admit(&ns, &host).unwrap()));
}

#[test]
fn an_unknown_revision_is_refused_with_a_message_naming_it_and_the_known_ones() {
    let ns = labelled("t-inj-typo", &["istio.io/rev=typo"]);
    let mut message = String::new();
    eventually(Duration::from_secs(30), || match admit(&ns, POD) {
        Err(e) => {
            message = e;
            message.contains("typo")
        }
        Ok(_) => false,
    });
    assert!(message.contains("istio.io/rev"), "{message}");
    assert!(
        message.contains("stable") && message.contains("default"),
        "lists known revisions and tags: {message}"
    );
}

/// Seed 003's migration: the AKS add-on's injector owns `istio.io/rev=asm-1-27`. weft does not
/// refuse such pods (they are the other mesh's) and says so with one Normal Event; a dry run
/// records nothing.
#[test]
fn a_revision_another_injector_claims_is_skipped_with_an_event() {
    let c = deployed();
    let config = "t-inj-istio-sidecar-injector-asm-1-27";
    // A stand-in for Istio's injector: same selector, nobody behind it, failurePolicy Ignore.
    c.apply(&format!(
        r#"
apiVersion: admissionregistration.k8s.io/v1
kind: MutatingWebhookConfiguration
metadata: {{name: {config}}}
webhooks:
- name: rev.namespace.sidecar-injector.istio.io
  admissionReviewVersions: [v1]
  sideEffects: None
  failurePolicy: Ignore
  timeoutSeconds: 2
  clientConfig:
    url: https://127.0.0.1:1/inject
  namespaceSelector:
    matchLabels: {{istio.io/rev: asm-1-27}}
  rules:
  - {{apiGroups: [""], apiVersions: [v1], operations: [CREATE], resources: [pods]}}
"#
    ));
    let ns = labelled("t-inj-other-injector", &["istio.io/rev=asm-1-27"]);
    // Dry runs first: admitted untouched (once the injector's caches hold the other
    // configuration), and no Event.
    eventually(
        Duration::from_secs(30),
        || matches!(admit(&ns, POD), Ok(p) if !injected(&p)),
    );
    let events = || {
        ns.ok(&[
            "get",
            "events",
            "--field-selector",
            "reason=InjectionSkipped",
            "-o",
            "jsonpath={range .items[*]}{.type} {.involvedObject.name}: {.message}{\"\\n\"}{end}",
        ])
    };
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(events().trim(), "", "a dry run recorded an Event");

    ns.cluster.ok(&[
        "-n",
        &ns.name,
        "run",
        "migrating",
        "--image=busybox",
        "--restart=Never",
        "--command",
        "--",
        "sleep",
        "5",
    ]);
    let said = support::wait_for(Duration::from_secs(30), events, |e| !e.trim().is_empty());
    assert!(
        said.starts_with("Normal migrating: ") && said.contains(config),
        "{said}"
    );
    let pod = ns.jsonpath("pod migrating", "{.spec.initContainers[*].name}");
    assert!(!pod.contains("weft-proxy"), "{pod}");
    let _ = c.kubectl(&["delete", "mutatingwebhookconfiguration", config]);
}
