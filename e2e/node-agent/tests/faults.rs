//! SPEC §15 faults on the local cluster (issue 21 item 9), through the real API server:
//! - an invalid MeshConfig is refused by the CRD's schema or by weft-validator, with a message
//!   naming the field, and one weft accepts but does not implement says so in its status;
//! - with the webhook down (no operator replica), pods of enrolled namespaces are refused
//!   (failurePolicy Fail) and their Deployment's ReplicaSet shows users why in a FailedCreate
//!   Event; unenrolled namespaces are not affected; once the operator is back the same
//!   Deployment's pod is created, injected;
//! - the leader cut off from the API server (iptables in its pod's network namespace drops
//!   what it sends to the API server's Service address; the API server still reaches its
//!   webhook) stops its controllers and the other replica takes the Lease over, while every
//!   pod creation of a loop is admitted and injected.
//!
//! These tests take the operator away for everyone: run this binary alone under the cluster
//! lock (`--test faults`), one test at a time.

mod support;

use std::ops::Not;
use std::process::Command;
use std::time::{Duration, Instant};

use support::creations::{CreationLoop, assert_all_injected};
use support::{Cluster, deployed, eventually, wait_for};

const NS: &str = "weft-system";
const MINUTE: Duration = Duration::from_secs(60);
const POD: &str = r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"probe"},
    "spec":{"containers":[{"name":"app","image":"busybox"}]}}"#;

fn meshconfig(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: mesh.weft.dev/v1alpha1\nkind: MeshConfig\nmetadata: {{name: {name}, namespace: {NS}}}\nspec: {spec}\n"
    )
}

#[test]
fn an_invalid_meshconfig_is_refused_by_schema_or_validator_and_an_unimplemented_one_says_so() {
    let c = deployed();
    let dry_run = |yaml: &str| {
        let out = c.kubectl_stdin(&["apply", "--dry-run=server", "-f", "-"], yaml);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };

    // The CRD's schema: a mode that does not exist.
    let (ok, why) = dry_run(&meshconfig("t-fault-schema", "{mtls: {mode: SOMETIMES}}"));
    assert!(!ok, "accepted");
    assert!(
        why.contains("spec.mtls.mode") && why.contains("Unsupported value: \"SOMETIMES\""),
        "{why}"
    );
    // Schema again: the wrong type (a list where a string belongs).
    let (ok, why) = dry_run(&meshconfig("t-fault-type", "{mtls: {mode: [STRICT]}}"));
    assert!(!ok, "accepted");
    assert!(why.contains("spec.mtls.mode"), "{why}");

    // weft-validator: a trust domain other than the mesh's would split the mesh.
    let (ok, why) = dry_run(&meshconfig(
        "t-fault-td",
        "{certificate: {trustDomain: other.example}}",
    ));
    assert!(!ok, "accepted");
    assert!(
        why.contains("spec.certificate.trustDomain")
            && why.contains("\"other.example\"")
            && why.contains("leave it out"),
        "{why}"
    );

    // Accepted, but not implemented: the revision's status says so instead of ignoring it.
    let name = "t-fault-unimplemented";
    let _ = c.kubectl(&["-n", NS, "delete", "meshconfig", name, "--ignore-not-found"]);
    c.apply(&meshconfig(
        name,
        "{traffic: {outboundTrafficPolicy: REGISTRY_ONLY}}",
    ));
    let condition = wait_for(
        MINUTE,
        || {
            c.ok(&[
                "-n",
                NS,
                "get",
                "meshconfig",
                name,
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Unsupported\")].status} {.status.conditions[?(@.type==\"Unsupported\")].message}",
            ])
        },
        |s| s.starts_with("True "),
    );
    assert!(
        condition.contains("traffic.outboundTrafficPolicy=REGISTRY_ONLY"),
        "{condition}"
    );
    c.ok(&["-n", NS, "delete", "meshconfig", name]);
}

#[test]
fn with_the_webhook_down_enrolled_pods_are_refused_and_the_deployment_says_why() {
    let c = deployed();
    let enrolled = c.namespace("t-fault-webhook-down");
    enrolled.ok(&[
        "label",
        "namespace",
        &enrolled.name,
        "istio-injection=enabled",
    ]);
    let plain = c.namespace("t-fault-not-enrolled");

    c.ok(&[
        "-n",
        NS,
        "scale",
        "deployment/weft-operator",
        "--replicas=0",
    ]);
    // Until the last replica is gone the webhook may still answer.
    wait_for(
        MINUTE,
        || {
            c.ok(&[
                "-n",
                NS,
                "get",
                "pods",
                "-l",
                "app.kubernetes.io/name=weft-operator",
                "-o",
                "name",
            ])
        },
        |pods| pods.trim().is_empty(),
    );
    let restore = Restore(c);

    // A pod of an enrolled namespace is refused: failurePolicy Fail, never created without
    // its proxy.
    let refused = c.dry_run_pod(&enrolled.name, POD).unwrap_err();
    assert!(
        refused.contains("failed calling webhook") && refused.contains("weft"),
        "{refused}"
    );
    // Unenrolled namespaces do not call the webhook at all.
    let created = c.dry_run_pod(&plain.name, POD).unwrap();
    assert!(!support::has_proxy(&created));

    // What users see for a Deployment: the ReplicaSet's FailedCreate Event says why.
    enrolled.apply(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n  replicas: 1\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    spec:\n      terminationGracePeriodSeconds: 1\n      containers: [{name: web, image: busybox, command: [sh, -c, 'sleep 3600']}]\n",
    );
    let events = wait_for(
        MINUTE,
        || {
            enrolled.ok(&[
                "get",
                "events",
                "--field-selector",
                "reason=FailedCreate,involvedObject.kind=ReplicaSet",
                "-o",
                "jsonpath={range .items[*]}{.type}: {.message}{\"\\n\"}{end}",
            ])
        },
        |e| e.contains("failed calling webhook"),
    );
    println!(
        "FailedCreate: {}",
        events.lines().next().unwrap_or_default()
    );
    assert!(events.starts_with("Warning: "), "{events}");
    assert_eq!(
        enrolled.ok(&["get", "pods", "-o", "name"]).trim(),
        "",
        "no pod was created without the webhook"
    );

    // The operator comes back: the ReplicaSet's retry creates the pod, with its proxy.
    drop(restore);
    eventually(3 * MINUTE, || {
        enrolled
            .ok(&[
                "get",
                "pods",
                "-l",
                "app=web",
                "-o",
                "jsonpath={.items[*].metadata.annotations.weft\\.dev/status}",
            ])
            .trim()
            .is_empty()
            .not()
    });
}

/// Scales the operator back to its two replicas and waits for them, also when the test fails.
struct Restore(&'static support::Cluster);

impl Drop for Restore {
    fn drop(&mut self) {
        let c = self.0;
        let _ = c.kubectl(&[
            "-n",
            NS,
            "scale",
            "deployment/weft-operator",
            "--replicas=2",
        ]);
        let _ = c.kubectl(&[
            "-n",
            NS,
            "rollout",
            "status",
            "deployment/weft-operator",
            "--timeout=180s",
        ]);
    }
}

fn lease_holder(c: &Cluster) -> String {
    let out = c.kubectl(&[
        "-n",
        NS,
        "get",
        "lease",
        "weft-operator",
        "-o",
        "jsonpath={.spec.holderIdentity}",
    ]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The process of `weft operator` running as pod `pod` on this node (the node agent runs pods
/// as processes, each in its pod's network namespace).
fn operator_pid(pod: &str) -> u32 {
    let wanted = format!("POD_NAME={pod}");
    for entry in std::fs::read_dir("/proc").expect("/proc") {
        let Ok(entry) = entry else { continue };
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let environ = std::fs::read(entry.path().join("environ")).unwrap_or_default();
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let has = |bytes: &[u8], what: &str| bytes.split(|b| *b == 0).any(|p| p == what.as_bytes());
        if has(&environ, &wanted) && has(&cmdline, "operator") {
            return pid;
        }
    }
    panic!("no weft operator process of pod {pod} on this node");
}

/// The iptables rule that cuts a pod off from the API server's Service address (what the
/// operator's in-cluster client dials), added in the pod's network namespace.
fn api_server_rule(pid: u32, action: &str) -> std::process::Output {
    Command::new("nsenter")
        .args(["-t", &pid.to_string(), "-n", "iptables", action, "OUTPUT"])
        .args([
            "-d",
            KUBERNETES_SERVICE,
            "-p",
            "tcp",
            "--dport",
            "443",
            "-j",
            "DROP",
        ])
        .output()
        .expect("nsenter")
}

/// The `kubernetes` Service's address on the local cluster (e2e/cluster/env.sh).
const KUBERNETES_SERVICE: &str = "198.19.0.1";

/// Takes the rule out again, also when the test fails.
struct Reconnect(u32);

impl Drop for Reconnect {
    fn drop(&mut self) {
        let _ = api_server_rule(self.0, "-D");
    }
}

#[test]
fn a_leader_cut_off_from_the_api_server_hands_over_and_no_pod_creation_fails() {
    let c = deployed();
    c.ok(&[
        "-n",
        NS,
        "rollout",
        "status",
        "deployment/weft-operator",
        "--timeout=180s",
    ]);
    let ns = c.namespace("t-fault-partition");
    ns.ok(&["label", "namespace", &ns.name, "istio-injection=enabled"]);
    let leader = wait_for(MINUTE, || lease_holder(c), |h| !h.is_empty());
    let pid = operator_pid(&leader);

    let creations = CreationLoop::start(c, &ns.name);
    std::thread::sleep(Duration::from_secs(3));
    let cut = api_server_rule(pid, "-I");
    assert!(
        cut.status.success(),
        "{}",
        String::from_utf8_lossy(&cut.stderr)
    );
    let reconnect = Reconnect(pid);
    let cut_at = Instant::now();

    let successor = wait_for(MINUTE, || lease_holder(c), |h| !h.is_empty() && h != leader);
    let failover = cut_at.elapsed();
    println!(
        "{leader} cut off from the API server; {successor} took the Lease over after {failover:?}"
    );
    // The old leader said it stopped its controllers (its logs come through the node, not the
    // cut-off network).
    let logs = c.ok(&["-n", NS, "logs", &leader, "--since=2m"]);
    assert!(
        logs.contains("could not renew Lease weft-operator"),
        "{leader} did not say it stepped down:\n{}",
        logs.lines().rev().take(20).collect::<Vec<_>>().join("\n")
    );
    // Some creations after the handover too, then the verdict over the whole run.
    std::thread::sleep(Duration::from_secs(3));
    drop(reconnect);
    assert_all_injected(
        &creations.stop(),
        "the leader's partition from the API server",
        20,
    );
    // Bound: the lease (15 s) after the successor's first look at the last renewal, which
    // came at most a renew period (5 s) before the cut, plus a look (2 s) and this poll.
    assert!(
        failover <= Duration::from_secs(22),
        "failover took {failover:?}"
    );

    // Reconnected, the old leader follows.
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(lease_holder(c), successor);
}
