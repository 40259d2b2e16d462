//! Operating weft (issue: install and operate): the operator runs as two replicas, exactly one
//! of them holds the Lease `weft-operator` and runs the controllers, and when the leader's pod
//! is deleted another replica takes the Lease and the controllers carry on; pods created
//! meanwhile are all injected (every replica serves the webhook).

mod support;

use std::time::Duration;

use support::creations::{CreationLoop, assert_all_injected};
use support::{Cluster, deployed, wait_for};

const MINUTE: Duration = Duration::from_secs(60);
/// Issue 7: another replica leads within 15 s of the leader's pod being deleted.
const FAILOVER: Duration = Duration::from_secs(15);
const NS: &str = "weft-system";
const SELECTOR: &str = "app.kubernetes.io/name=weft-operator";

/// Names of the operator pods that are Ready and not being deleted, sorted.
fn ready_operators(c: &Cluster) -> Vec<String> {
    let out = c.ok(&["-n", NS, "get", "pods", "-l", SELECTOR, "-o", "json"]);
    let pods: serde_json::Value = serde_json::from_str(&out).expect("pod list JSON");
    let mut ready: Vec<String> = pods["items"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .filter(|p| {
            p["status"]["conditions"].as_array().is_some_and(|cs| {
                cs.iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            })
        })
        .filter_map(|p| p["metadata"]["name"].as_str().map(String::from))
        .collect();
    ready.sort();
    ready
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

fn logs(c: &Cluster, pod: &str) -> String {
    let out = c.kubectl(&["-n", NS, "logs", pod]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn two_ready_operators(c: &Cluster) -> Vec<String> {
    let ready = wait_for(
        2 * MINUTE,
        || ready_operators(c).join(" "),
        |names| names.split_whitespace().count() == 2,
    );
    ready.split_whitespace().map(String::from).collect()
}

#[test]
fn two_replicas_one_leader_and_the_controllers_survive_deleting_the_leader() {
    let c = deployed();

    // Two replicas serve; exactly one of them holds the Lease, and only it runs the controllers.
    let replicas = two_ready_operators(c);
    let leader = wait_for(
        MINUTE,
        || lease_holder(c),
        |h| replicas.iter().any(|r| r == h),
    );
    let follower = replicas
        .iter()
        .find(|r| **r != leader)
        .expect("a second replica");
    wait_for(
        MINUTE,
        || logs(c, &leader),
        |log| log.contains("starting the controllers"),
    );
    let follower_log = logs(c, follower);
    assert!(
        follower_log.contains("held by another replica")
            && !follower_log.contains("starting the controllers"),
        "the follower {follower} runs controllers too:\n{follower_log}"
    );

    // The leader's pod goes: another replica takes the Lease. Usually the standing follower;
    // the Deployment's replacement pod may win the race, which is just as good: what counts is
    // that a live replica other than the deleted one leads, promptly.
    let enrolled = c.namespace("t-operate-failover");
    enrolled.ok(&[
        "label",
        "namespace",
        &enrolled.name,
        "istio-injection=enabled",
    ]);
    let creations = CreationLoop::start(c, &enrolled.name);
    c.ok(&["-n", NS, "delete", "pod", &leader, "--wait=false"]);
    let started = std::time::Instant::now();
    let new_leader = wait_for(
        FAILOVER,
        || lease_holder(c),
        |h| !h.is_empty() && h != leader,
    );
    println!(
        "failover: {new_leader} holds the Lease {:?} after the leader's pod was deleted (follower was {follower})",
        started.elapsed()
    );
    // The old leader gave the Lease back on SIGTERM: its successor found it free instead of
    // waiting out the lease duration.
    let successor_log = wait_for(
        MINUTE,
        || logs(c, &new_leader),
        |log| log.contains("starting the controllers"),
    );
    assert!(
        successor_log.contains("was free; took it"),
        "the deleted leader did not release the Lease:\n{successor_log}"
    );

    // The controllers run again under the new leader: a new tag gets its status.
    let revision = wait_for(
        MINUTE,
        || {
            let out = c.kubectl(&["-n", NS, "get", "meshconfigs", "-o", "name"]);
            String::from_utf8_lossy(&out.stdout).into_owned()
        },
        |names| !names.trim().is_empty(),
    );
    // The first start's revision if it is there, any other otherwise.
    let names: Vec<&str> = revision
        .lines()
        .filter_map(|n| n.rsplit('/').next())
        .collect();
    let revision = names
        .iter()
        .find(|n| **n == "stable")
        .or(names.first())
        .expect("a MeshConfig name")
        .to_string();
    let _ = c.kubectl(&["-n", NS, "delete", "revisiontag", "t-operate-failover"]);
    let tag = format!(
        "apiVersion: mesh.weft.dev/v1alpha1\nkind: RevisionTag\n\
         metadata: {{name: t-operate-failover, namespace: {NS}}}\nspec: {{revision: {revision}}}\n"
    );
    c.apply(&tag);
    let resolved = wait_for(
        MINUTE,
        || {
            let out = c.kubectl(&[
                "-n",
                NS,
                "get",
                "revisiontag",
                "t-operate-failover",
                "-o",
                "jsonpath={.status.revision}",
            ]);
            String::from_utf8_lossy(&out.stdout).into_owned()
        },
        |r| !r.is_empty(),
    );
    assert_eq!(resolved, revision);
    c.ok(&["-n", NS, "delete", "revisiontag", "t-operate-failover"]);

    // The Deployment replaces the deleted pod; the newcomer follows.
    let replicas = two_ready_operators(c);
    assert_all_injected(&creations.stop(), "the leader's failover", 10);
    assert!(replicas.contains(&new_leader), "{replicas:?}");
    assert_eq!(lease_holder(c), new_leader);
}
