//! Revisions and tags on the local cluster (issue: injection and revisions): the operator's
//! first start creates the first revision and the `default` tag, records it, and the
//! controllers keep MeshConfig and RevisionTag status true to the cluster.

mod support;

use std::process::Command;
use std::time::Duration;

use support::{cluster, repo_root, wait_for};

const MINUTE: Duration = Duration::from_secs(60);

#[test]
fn first_start_creates_stable_and_default_and_status_follows() {
    let c = cluster();
    let status = Command::new("bash")
        .arg(repo_root().join("e2e/scripts/deploy.sh"))
        .status()
        .expect("deploy.sh");
    assert!(status.success(), "make deploy failed");
    let get = |what: &str, path: &str| {
        let out = c.kubectl(&[
            "-n",
            "weft-system",
            "get",
            what,
            "-o",
            &format!("jsonpath={path}"),
        ]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    wait_for(
        MINUTE,
        || {
            get(
                "meshconfig/stable",
                "{.status.conditions[?(@.type==\"Ready\")].status}",
            )
        },
        |s| s == "True",
    );
    // The built-in defaults are written into the spec, visibly.
    assert_eq!(get("meshconfig/stable", "{.spec.mtls.mode}"), "PERMISSIVE");
    assert_eq!(
        get("meshconfig/stable", "{.spec.certificate.workloadCertTTL}"),
        "24h"
    );
    wait_for(
        MINUTE,
        || {
            get(
                "revisiontag/default",
                "{.status.conditions[?(@.type==\"Resolved\")].status}",
            )
        },
        |s| s == "True",
    );
    assert_eq!(get("revisiontag/default", "{.status.revision}"), "stable");
    let marker = c.ok(&[
        "get",
        "namespace",
        "weft-system",
        "-o",
        "jsonpath={.metadata.annotations.weft\\.dev/bootstrapped}",
    ]);
    assert_eq!(marker, "stable");

    // A tag pointing at a missing revision is accepted but not resolved, and says why.
    let apply = c.kubectl_stdin(
        &["apply", "-f", "-"],
        r#"
apiVersion: mesh.weft.dev/v1alpha1
kind: RevisionTag
metadata: {name: ghost, namespace: weft-system}
spec: {revision: missing}
"#,
    );
    assert!(
        apply.status.success(),
        "{}",
        String::from_utf8_lossy(&apply.stderr)
    );
    wait_for(
        MINUTE,
        || {
            get(
                "revisiontag/ghost",
                "{.status.conditions[?(@.type==\"Resolved\")].reason}",
            )
        },
        |s| s == "RevisionNotFound",
    );
    let message = get(
        "revisiontag/ghost",
        "{.status.conditions[?(@.type==\"Resolved\")].message}",
    );
    assert!(message.contains("missing"), "{message}");
    assert_eq!(
        get("revisiontag/ghost", "{.status.stalePods}"),
        "0",
        "counts are always present"
    );

    // The printer columns make `kubectl get` useful.
    let table = c.ok(&["get", "meshconfigs,revisiontags", "-n", "weft-system"]);
    for column in ["IMAGE", "MTLS", "READY", "REVISION", "RESOLVED", "STALE"] {
        assert!(table.contains(column), "{column} missing from:\n{table}");
    }
    c.ok(&["-n", "weft-system", "delete", "revisiontag", "ghost"]);
}
