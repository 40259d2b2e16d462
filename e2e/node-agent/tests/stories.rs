//! The user stories of SPEC §1, one test each, written as they read, with kubectl and the
//! weft CLI only. The deeper cases live beside them: failover and rollout under load in
//! `operate.rs`, revision bookkeeping in `revisions.rs`, seeds 001/004 and tcpdump in
//! `mesh.rs`. Names here are prefixed `t-story-` so other test files on the shared cluster
//! (which use `stable`, `canary`, `prod`) are not disturbed; the mesh-wide switches of story 3
//! (root-namespace policy, `MeshConfig.spec.mtls.mode`) would change every parallel test's
//! traffic, so they are tested in `lifecycle.rs`, which runs alone after all the others
//! (`step4b_...`), and their precedence is unit-tested in `discovery/policy.rs`.

mod support;

use std::time::Duration;

use support::bookstore::{APP, buy, default_revision, meshed_and_outside, rollout};
use support::{Namespace, deployed, eventually, wait_for, weft};

const TWO_MINUTES: Duration = Duration::from_secs(120);

/// `READY` of every running pod of the namespace, as `kubectl get pods` shows it ("2/2").
fn ready_columns(ns: &Namespace) -> Vec<String> {
    ns.ok(&[
        "get",
        "pods",
        "--no-headers",
        "--field-selector=status.phase=Running",
    ])
    .lines()
    .filter_map(|l| l.split_whitespace().nth(1).map(String::from))
    .collect()
}

#[test]
fn story_1_install_brings_up_two_replicas_one_leader_the_ca_and_the_first_revision() {
    let c = deployed();
    let sys = |args: &[&str]| {
        let mut all = vec!["-n", "weft-system"];
        all.extend_from_slice(args);
        c.ok(&all)
    };
    // `kubectl apply -k config/default` (deploy.sh) left two Ready replicas, one of which
    // holds the Lease. (Waited for: operate.rs restarts and kills replicas meanwhile.)
    wait_for(
        TWO_MINUTES,
        || {
            let ready = sys(&[
                "get",
                "deployment",
                "weft-operator",
                "-o",
                "jsonpath={.status.readyReplicas}",
            ]);
            let holder = sys(&[
                "get",
                "lease",
                "weft-operator",
                "-o",
                "jsonpath={.spec.holderIdentity}",
            ]);
            let pods = sys(&[
                "get",
                "pods",
                "-l",
                "app.kubernetes.io/name=weft-operator",
                "--field-selector=status.phase=Running",
                "-o",
                "jsonpath={.items[*].metadata.name}",
            ]);
            let leads = pods.split_whitespace().any(|p| p == holder);
            format!("ready={ready} leader={holder} of [{pods}] leads={leads}")
        },
        |state| state.starts_with("ready=2 ") && state.ends_with("leads=true"),
    );
    // The mesh CA: its root is published into namespaces and is the webhooks' caBundle.
    use base64::Engine as _;
    let root = support::ca::root_pem(c);
    let ns = c.namespace("t-story-install");
    wait_for(
        TWO_MINUTES,
        || {
            ns.ok(&[
                "get",
                "configmap",
                "weft-ca-root-cert",
                "-o",
                "jsonpath={.data.root-cert\\.pem}",
                "--ignore-not-found",
            ])
        },
        |published| published == root,
    );
    for (kind, name) in [
        ("mutatingwebhookconfiguration", "weft-sidecar-injector"),
        ("validatingwebhookconfiguration", "weft-validator"),
    ] {
        let bundle = c.ok(&[
            "get",
            kind,
            name,
            "-o",
            "jsonpath={.webhooks[0].clientConfig.caBundle}",
        ]);
        let bundle = base64::engine::general_purpose::STANDARD
            .decode(bundle.trim())
            .expect("caBundle is base64");
        assert_eq!(
            String::from_utf8_lossy(&bundle).trim(),
            root.trim(),
            "{name}'s caBundle is the mesh root"
        );
    }
    // The first start made the first revision and the `default` tag, and recorded it.
    let marked = sys(&[
        "get",
        "namespace",
        "weft-system",
        "-o",
        "jsonpath={.metadata.annotations.weft\\.dev/bootstrapped}",
    ]);
    assert_eq!(
        marked, "stable",
        "the bootstrap annotation names the first revision"
    );
    assert!(!default_revision(c).is_empty(), "the default tag exists");
    sys(&[
        "wait",
        "--for=condition=Ready",
        "meshconfig/stable",
        "--timeout=60s",
    ]);
}

#[test]
fn story_3_secure_permissive_then_strict_then_a_port_level_exception() {
    let c = deployed();
    // A meshed client, and an unmeshed one: the same app in a namespace nobody enrolled.
    let (ns, outside) = meshed_and_outside(c, "t-story-secure");
    let url = format!("http://bookstore.{}/story-3", ns.name);

    // PERMISSIVE by default: plaintext and mTLS are both accepted.
    buy(&outside, &url).expect("unmeshed client under the default PERMISSIVE");
    buy(&ns, &url).expect("meshed client under the default PERMISSIVE");

    // STRICT for the namespace: the unmeshed client is refused, the meshed one answered,
    // and no application changed.
    ns.apply(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default}\nspec: {mtls: {mode: STRICT}}\n",
    );
    support::eventually(Duration::from_secs(30), || buy(&outside, &url).is_err());
    buy(&ns, &url).expect("meshed client under STRICT");

    // Port level beats namespace (Istio's precedence): PERMISSIVE on 8080 of bookstore only.
    ns.apply(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: bookstore-8080}\nspec:\n  selector: {matchLabels: {app: bookstore}}\n  mtls: {mode: STRICT}\n  portLevelMtls: {\"8080\": {mode: PERMISSIVE}}\n",
    );
    support::eventually(Duration::from_secs(30), || buy(&outside, &url).is_ok());
    buy(&ns, &url).expect("meshed client with the port-level exception");
    let pod = ns.jsonpath("pods -l app=bookstore", "{.items[0].metadata.name}");
    let describe = weft(&["describe", "pod", &pod, "-n", &ns.name]);
    let text = String::from_utf8_lossy(&describe.stdout);
    assert!(
        text.contains("8080   PERMISSIVE") && text.contains(&format!("{}/bookstore-8080", ns.name)),
        "{text}"
    );

    // The exception removed: STRICT again.
    ns.ok(&["delete", "peerauthentication", "bookstore-8080"]);
    support::eventually(Duration::from_secs(30), || buy(&outside, &url).is_err());
    buy(&ns, &url).expect("meshed client under STRICT again");
}

#[test]
fn story_2_enrol_a_namespace_and_every_restarted_pod_runs_a_proxy() {
    let c = deployed();
    let ns = c.namespace("t-story-enrol");
    // The app runs before the namespace is enrolled: no proxies.
    ns.apply(APP);
    rollout(&ns);
    assert!(
        ready_columns(&ns).iter().all(|r| r == "1/1"),
        "{:?}",
        ready_columns(&ns)
    );

    let out = weft(&["namespace", "add", &ns.name]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    ns.ok(&["rollout", "restart", "deployment"]);
    rollout(&ns);
    wait_for(
        TWO_MINUTES,
        || ready_columns(&ns).join(" "),
        |r| !r.is_empty() && r.split(' ').all(|x| x == "2/2") && r.split(' ').count() == 3,
    );
    // `weft namespace list` counts them as injected.
    let list = weft(&["namespace", "list", "-o", "json"]);
    let rows: serde_json::Value = serde_json::from_slice(&list.stdout).expect("json rows");
    let row = rows
        .as_array()
        .and_then(|r| r.iter().find(|r| r["namespace"] == ns.name.as_str()))
        .unwrap_or_else(|| panic!("{rows}"))
        .clone();
    assert_eq!(row["revision"], default_revision(c).as_str(), "{row}");
    assert_eq!(row["injectedPods"], 3, "{row}");
}

#[test]
fn story_4_canary_upgrade_moves_namespaces_with_a_tag() {
    let c = deployed();
    // A canary revision with only its image; the rest comes from the default revision.
    c.apply(
        "apiVersion: mesh.weft.dev/v1alpha1\nkind: MeshConfig\nmetadata: {name: t-story-canary, namespace: weft-system}\nspec:\n  proxy: {image: \"ghcr.io/weft-mesh/weft-canary:0.2.0\"}\n",
    );
    let copied = c.ok(&[
        "-n",
        "weft-system",
        "get",
        "meshconfig",
        "t-story-canary",
        "-o",
        "jsonpath={.spec.certificate.trustDomain}",
    ]);
    assert_eq!(
        copied, "cluster.local",
        "fields copied from the default revision"
    );
    let tag = "t-story-prod";
    let _ = weft(&["tag", "remove", tag, "--force"]);
    let out = weft(&["tag", "set", tag, "--revision", "stable"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let a = c.namespace("t-story-a");
    let b = c.namespace("t-story-b");
    assert!(
        weft(&["namespace", "add", &a.name, "--revision", tag])
            .status
            .success()
    );
    assert!(
        weft(&["namespace", "add", &b.name, "--revision", "t-story-canary"])
            .status
            .success()
    );
    a.apply(APP);
    b.apply(APP);
    rollout(&a);
    rollout(&b);
    let images = |ns: &Namespace| {
        ns.jsonpath(
            "pods -l app=bookstore",
            "{range .items[*]}{.spec.initContainers[?(@.name==\"weft-proxy\")].image} {end}",
        )
    };
    assert!(images(&b).contains("weft-canary"), "{}", images(&b));
    assert!(!images(&a).contains("weft-canary"), "{}", images(&a));
    // The two revisions share the mesh CA: A's client reaches B's service over mTLS.
    let answer =
        buy(&a, &format!("http://bookstore.{}/cross-revision", b.name)).expect("stable → canary");
    assert!(answer.contains("path=/cross-revision"), "{answer}");

    // Move the tag: A's running pods are stale until restarted; nothing restarts by itself.
    let out = weft(&[
        "tag",
        "set",
        tag,
        "--revision",
        "t-story-canary",
        "--overwrite",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stale = || {
        c.ok(&[
            "-n",
            "weft-system",
            "get",
            "revisiontag",
            tag,
            "-o",
            "jsonpath={.status.revision} {.status.stalePods}",
        ])
    };
    wait_for(TWO_MINUTES, stale, |s| s == "t-story-canary 3");
    assert!(!images(&a).contains("weft-canary"));

    a.ok(&["rollout", "restart", "deployment"]);
    rollout(&a);
    wait_for(TWO_MINUTES, stale, |s| s == "t-story-canary 0");
    eventually(TWO_MINUTES, || {
        images(&a).split_whitespace().count() == 2 && !images(&a).contains("weft:0.1.0")
    });
    let answer = buy(&b, &format!("http://bookstore.{}/after-upgrade", a.name)).expect("canary");
    assert!(answer.contains("path=/after-upgrade"), "{answer}");
    let _ = weft(&["tag", "remove", tag, "--force"]);
}

#[test]
fn story_5_observe_istio_metrics_and_proxy_status() {
    let c = deployed();
    let ns = c.namespace("t-story-observe");
    assert!(weft(&["namespace", "add", &ns.name]).status.success());
    ns.apply(APP);
    rollout(&ns);
    for i in 0..3 {
        buy(&ns, &format!("http://bookstore/book-{i}")).expect("meshed call");
    }
    // Istio's request metrics on the server side, with the client's SPIFFE identity.
    let principal = format!(
        "source_principal=\"spiffe://cluster.local/ns/{}/sa/default\"",
        ns.name
    );
    let pods = ns.jsonpath("pods -l app=bookstore", "{.items[*].metadata.name}");
    let total: u64 = pods
        .split_whitespace()
        .map(|pod| {
            let text = c.ok(&[
                "get",
                "--raw",
                &format!(
                    "/api/v1/namespaces/{}/pods/{pod}:15020/proxy/stats/prometheus",
                    ns.name
                ),
            ]);
            text.lines()
                .filter(|l| {
                    l.starts_with("istio_requests_total{")
                        && l.contains("reporter=\"destination\"")
                        && l.contains(&principal)
                        && l.contains("response_code=\"200\"")
                        && l.contains("connection_security_policy=\"mutual_tls\"")
                })
                .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
                .sum::<u64>()
        })
        .sum();
    assert_eq!(total, 3, "istio_requests_total over the bookstore pods");
    // Every proxy runs the config the operator would send now, with a certificate.
    let out = wait_for(
        TWO_MINUTES,
        || {
            let out = weft(&["proxy-status", "-n", &ns.name, "-o", "json"]);
            String::from_utf8_lossy(&out.stdout).into_owned()
        },
        |text| {
            serde_json::from_str::<serde_json::Value>(text)
                .ok()
                .and_then(|v| v.as_array().cloned())
                .is_some_and(|rows| {
                    rows.len() == 3
                        && rows
                            .iter()
                            .all(|r| r["config"] == "SYNCED" && r["certExpires"].is_string())
                })
        },
    );
    let revision = format!("\"revision\": \"{}\"", default_revision(c));
    assert!(out.contains(&revision), "{out}");
}
