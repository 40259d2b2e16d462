//! Revisions and tags on the local cluster (issues: injection and revisions, validation and
//! defaulting): the operator's first start creates the first revision and the `default` tag,
//! records it, and the controllers keep MeshConfig and RevisionTag status true to the cluster;
//! a new revision gets the default revision's fields in its spec, and `weft-validator` refuses
//! what would break the mesh, saying what to change. Refusals are checked with
//! `--dry-run=server` (the real admission chain, nothing stored), so a regression can never
//! delete or shadow a revision the other tests on this shared cluster use.

mod support;

use std::process::Output;
use std::time::Duration;

use support::{Cluster, deployed, wait_for};

const MINUTE: Duration = Duration::from_secs(60);

fn get(c: &Cluster, what: &str, path: &str) -> String {
    let out = c.kubectl(&[
        "-n",
        "weft-system",
        "get",
        what,
        "-o",
        &format!("jsonpath={path}"),
    ]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The revision the `default` tag points at (the operator's first start makes it).
fn default_revision(c: &Cluster) -> String {
    wait_for(
        MINUTE,
        || {
            let revision = get(c, "revisiontag/default", "{.spec.revision}");
            let exists = !revision.is_empty()
                && !get(c, &format!("meshconfig/{revision}"), "{.metadata.name}").is_empty();
            if exists { revision } else { String::new() }
        },
        |r| !r.is_empty(),
    )
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn first_start_creates_stable_and_default_and_status_follows() {
    let c = deployed();
    let get = |what: &str, path: &str| get(c, what, path);
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

#[test]
fn a_new_revision_gets_the_default_revisions_fields_in_its_spec() {
    let c = deployed();
    let default = default_revision(c);
    // Its own name: `canary` belongs to the injection and CLI tests running beside this one.
    let name = "t-rev-canary";
    c.ok(&[
        "-n",
        "weft-system",
        "delete",
        "meshconfig",
        name,
        "--ignore-not-found",
    ]);
    let created = c.kubectl_stdin(
        &["create", "-f", "-"],
        &format!(
            r#"
apiVersion: mesh.weft.dev/v1alpha1
kind: MeshConfig
metadata: {{name: {name}, namespace: weft-system}}
spec:
  proxy: {{image: "ghcr.io/weft-mesh/weft-canary:0.2.0"}}
"#
        ),
    );
    assert!(created.status.success(), "{}", stderr(&created));
    assert!(
        stderr(&created).contains(&format!("copied from revision {default}")),
        "kubectl shows what was copied: {}",
        stderr(&created)
    );

    let mine = |path: &str| get(c, &format!("meshconfig/{name}"), path);
    let theirs = |path: &str| get(c, &format!("meshconfig/{default}"), path);
    assert_eq!(
        mine("{.spec.proxy.image}"),
        "ghcr.io/weft-mesh/weft-canary:0.2.0"
    );
    for path in [
        "{.spec.mtls.mode}",
        "{.spec.certificate.trustDomain}",
        "{.spec.certificate.workloadCertTTL}",
    ] {
        let copied = mine(path);
        assert!(!copied.is_empty(), "{path} was not copied");
        assert_eq!(copied, theirs(path), "{path}");
    }
    assert_eq!(
        mine("{.metadata.annotations.weft\\.dev/defaulted-from}"),
        default
    );
    let fields = mine("{.metadata.annotations.weft\\.dev/defaulted-fields}");
    assert!(
        fields.split(',').any(|f| f == "mtls") && !fields.split(',').any(|f| f == "proxy.image"),
        "{fields}"
    );

    // Nothing uses it: deleting it is allowed.
    c.ok(&["-n", "weft-system", "delete", "meshconfig", name]);
}

#[test]
fn deleting_the_revision_the_default_tag_points_at_is_refused_naming_the_tag() {
    let c = deployed();
    let default = default_revision(c);
    let refused = c.kubectl(&[
        "-n",
        "weft-system",
        "delete",
        "meshconfig",
        &default,
        "--dry-run=server",
    ]);
    assert!(!refused.status.success(), "deleting {default} was allowed");
    let message = stderr(&refused);
    assert!(
        message.contains("weft-validator") || message.contains("validator.weft.dev"),
        "{message}"
    );
    assert!(
        message.contains("RevisionTag default points at it"),
        "{message}"
    );
    assert!(
        message.contains("weft tag set default --revision") && message.contains("--overwrite"),
        "the message says what to change: {message}"
    );
    assert_eq!(
        get(c, &format!("meshconfig/{default}"), "{.metadata.name}"),
        default
    );
}

#[test]
fn a_tag_named_like_a_revision_is_refused() {
    let c = deployed();
    let default = default_revision(c);
    let tag = |name: &str| {
        c.kubectl_stdin(
            &["create", "--dry-run=server", "-f", "-"],
            &format!(
                "apiVersion: mesh.weft.dev/v1alpha1\nkind: RevisionTag\n\
                 metadata: {{name: {name}, namespace: weft-system}}\n\
                 spec: {{revision: {default}}}\n"
            ),
        )
    };
    let refused = tag(&default);
    assert!(
        !refused.status.success(),
        "a tag named {default} was accepted"
    );
    assert!(
        stderr(&refused).contains(&format!("has the name of revision (MeshConfig) {default}")),
        "{}",
        stderr(&refused)
    );
    let fine = tag("t-rev-tag");
    assert!(fine.status.success(), "{}", stderr(&fine));
}

#[test]
fn a_revision_with_another_trust_domain_is_refused_saying_which_to_use() {
    let c = deployed();
    let default = default_revision(c);
    let mesh_domain = match get(
        c,
        &format!("meshconfig/{default}"),
        "{.spec.certificate.trustDomain}",
    ) {
        d if d.is_empty() => "cluster.local".to_string(),
        d => d,
    };
    let create = |domain: &str| {
        c.kubectl_stdin(
            &["create", "--dry-run=server", "-f", "-"],
            &format!(
                "apiVersion: mesh.weft.dev/v1alpha1\nkind: MeshConfig\n\
                 metadata: {{name: t-rev-foreign, namespace: weft-system}}\n\
                 spec: {{certificate: {{trustDomain: {domain}}}}}\n"
            ),
        )
    };
    let refused = create("other.example");
    assert!(
        !refused.status.success(),
        "another trust domain was accepted"
    );
    let message = stderr(&refused);
    assert!(
        message.contains(&format!(
            "set spec.certificate.trustDomain to \"{mesh_domain}\""
        )),
        "{message}"
    );
    let same = create(&mesh_domain);
    assert!(same.status.success(), "{}", stderr(&same));
}
