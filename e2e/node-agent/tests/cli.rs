//! The `weft` CLI against the local cluster, in the order of the canary story (SPEC §1.2, §1.4,
//! §10): tags are created, refused and moved as with istioctl, namespaces enrolled as with
//! `osm namespace add`, and `namespace list` tells where each namespace resolves.

mod support;

use std::process::Output;
use std::time::Duration;

use support::{deployed, eventually, weft};

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn tags_and_namespaces_follow_the_canary_story() {
    let c = deployed();
    eventually(Duration::from_secs(60), || {
        c.kubectl(&["-n", "weft-system", "get", "meshconfig", "stable"])
            .status
            .success()
    });
    let canary = c.kubectl_stdin(&["apply", "-f", "-"], "apiVersion: mesh.weft.dev/v1alpha1\nkind: MeshConfig\nmetadata: {name: canary, namespace: weft-system}\nspec:\n  proxy: {image: ghcr.io/weft-mesh/weft-canary:0.2.0}\n");
    assert!(canary.status.success(), "{}", text(&canary));
    let a = c.namespace("t-cli-a");
    let b = c.namespace("t-cli-b");

    // Enrolling through a tag that does not exist yet is refused, naming what exists.
    let refused = weft(&["namespace", "add", &a.name, "--revision", "prod"]);
    assert!(!refused.status.success());
    assert!(
        text(&refused).contains("prod") && text(&refused).contains("stable"),
        "{}",
        text(&refused)
    );

    assert!(
        weft(&["tag", "set", "prod", "--revision", "stable"])
            .status
            .success()
    );
    let same_name = weft(&["tag", "set", "stable", "--revision", "canary"]);
    assert!(
        !same_name.status.success(),
        "a tag may not shadow a revision: {}",
        text(&same_name)
    );
    let unknown = weft(&["tag", "set", "x", "--revision", "nope"]);
    assert!(
        !unknown.status.success() && text(&unknown).contains("nope"),
        "{}",
        text(&unknown)
    );
    assert!(
        weft(&["tag", "set", "x", "--revision", "nope", "--force"])
            .status
            .success()
    );
    let no_overwrite = weft(&["tag", "set", "prod", "--revision", "canary"]);
    assert!(
        !no_overwrite.status.success() && text(&no_overwrite).contains("--overwrite"),
        "{}",
        text(&no_overwrite)
    );

    let added = weft(&["namespace", "add", &a.name, "--revision", "prod"]);
    assert!(added.status.success(), "{}", text(&added));
    assert_eq!(
        c.ok(&[
            "get",
            "namespace",
            &a.name,
            "-o",
            "jsonpath={.metadata.labels.istio\\.io/rev}"
        ]),
        "prod"
    );
    let osm = weft(&["namespace", "add", &b.name, "--osm"]);
    assert!(osm.status.success(), "{}", text(&osm));
    assert_eq!(
        c.ok(&[
            "get",
            "namespace",
            &b.name,
            "-o",
            "jsonpath={.metadata.labels.openservicemesh\\.io/monitored-by}"
        ]),
        "weft"
    );
    assert_eq!(
        c.ok(&[
            "get",
            "namespace",
            &b.name,
            "-o",
            "jsonpath={.metadata.annotations.openservicemesh\\.io/sidecar-injection}"
        ]),
        "enabled"
    );

    // Moving the tag moves the namespace's resolution; the table shows it.
    assert!(
        weft(&["tag", "set", "prod", "--revision", "canary", "--overwrite"])
            .status
            .success()
    );
    let list = weft(&["namespace", "list", "-o", "json"]);
    assert!(list.status.success(), "{}", text(&list));
    let listed = String::from_utf8_lossy(&list.stdout);
    assert!(
        listed.contains(&a.name) && listed.contains("canary"),
        "{listed}"
    );

    // A tag a namespace uses is not removed without --force.
    let in_use = weft(&["tag", "remove", "prod"]);
    assert!(!in_use.status.success(), "{}", text(&in_use));
    assert!(weft(&["namespace", "remove", &a.name]).status.success());
    // The tag's status (which also counts as use) catches up with the removal within seconds.
    eventually(Duration::from_secs(30), || {
        weft(&["tag", "remove", "prod"]).status.success()
    });
    assert!(weft(&["tag", "remove", "x", "--force"]).status.success());
    let revisions = weft(&["revision", "list"]);
    assert!(
        text(&revisions).contains("canary") && text(&revisions).contains("stable"),
        "{}",
        text(&revisions)
    );
}
