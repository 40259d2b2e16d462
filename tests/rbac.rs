//! The operator's RBAC (config/rbac) stays least-privilege: no wildcard anywhere, no verb that
//! deletes or escalates, Secrets only in its own namespace, and writes to cluster-scoped
//! objects only by name. The cluster test `e2e/node-agent/tests/check.rs` proves the same
//! rules against a real API server with `kubectl auth can-i`.

use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Debug, Deserialize)]
struct Object {
    kind: String,
    metadata: Metadata,
    #[serde(default)]
    rules: Vec<Rule>,
}

#[derive(Debug, Deserialize)]
struct Metadata {
    name: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Rule {
    #[serde(default)]
    api_groups: Vec<String>,
    #[serde(default)]
    resources: Vec<String>,
    #[serde(default)]
    resource_names: Vec<String>,
    #[serde(default)]
    verbs: Vec<String>,
    #[serde(default)]
    non_resource_urls: Vec<String>,
}

fn rbac_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config/rbac")
}

/// Every Role and ClusterRole in config/rbac/*.yaml.
fn roles() -> Vec<Object> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(rbac_dir())
        .expect("config/rbac")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    let mut roles = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("readable");
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let value = serde_yaml::Value::deserialize(doc)
                .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            let kind = value.get("kind").and_then(|k| k.as_str()).unwrap_or("");
            if kind == "Role" || kind == "ClusterRole" {
                roles.push(
                    serde_yaml::from_value(value)
                        .unwrap_or_else(|e| panic!("{}: {e}", file.display())),
                );
            }
        }
    }
    roles
}

/// What a write is, for RBAC.
const WRITE_VERBS: [&str; 4] = ["create", "update", "patch", "delete"];
/// Verbs weft never needs: it deletes nothing (owner references and namespace deletion clean
/// up) and never grants or assumes rights.
const FORBIDDEN_VERBS: [&str; 5] = [
    "delete",
    "deletecollection",
    "escalate",
    "bind",
    "impersonate",
];
/// Cluster-scoped resources weft reads; writing them is allowed only by resourceNames.
const CLUSTER_SCOPED: [&str; 3] = [
    "namespaces",
    "mutatingwebhookconfigurations",
    "validatingwebhookconfigurations",
];

#[test]
fn config_rbac_holds_the_operator_roles() {
    let names: Vec<(String, String)> = roles()
        .into_iter()
        .map(|r| (r.kind, r.metadata.name))
        .collect();
    assert_eq!(
        names,
        [
            ("ClusterRole".to_string(), "weft-operator".to_string()),
            ("Role".to_string(), "weft-operator".to_string())
        ]
    );
}

#[test]
fn no_rule_uses_a_wildcard() {
    for role in roles() {
        for rule in &role.rules {
            for value in rule
                .api_groups
                .iter()
                .chain(&rule.resources)
                .chain(&rule.resource_names)
                .chain(&rule.verbs)
            {
                assert!(
                    !value.contains('*'),
                    "{} {} has a wildcard in {rule:?}",
                    role.kind,
                    role.metadata.name
                );
            }
            assert!(rule.non_resource_urls.is_empty(), "{rule:?}");
            assert!(
                !rule.verbs.is_empty() && !rule.resources.is_empty(),
                "empty rule: {rule:?}"
            );
        }
    }
}

#[test]
fn nothing_is_deleted_and_cluster_objects_are_written_only_by_name() {
    for role in roles() {
        for rule in &role.rules {
            for verb in &rule.verbs {
                // The one exception: the cert-manager issuer deletes the CertificateRequest it
                // created once it has the certificate (docs/pki.md), in weft's own namespace
                // (a Role, never the ClusterRole).
                let own_requests = verb == "delete"
                    && role.kind == "Role"
                    && rule.api_groups == ["cert-manager.io"]
                    && rule.resources == ["certificaterequests"];
                assert!(
                    !FORBIDDEN_VERBS.contains(&verb.as_str()) || own_requests,
                    "{} grants {verb}: {rule:?}",
                    role.kind
                );
            }
            let writes = rule.verbs.iter().any(|v| WRITE_VERBS.contains(&v.as_str()));
            let cluster_scoped = rule
                .resources
                .iter()
                .any(|r| CLUSTER_SCOPED.contains(&r.as_str()));
            if writes && cluster_scoped {
                assert!(
                    !rule.resource_names.is_empty(),
                    "writes to cluster-scoped objects must name them: {rule:?}"
                );
            }
        }
    }
}

#[test]
fn secrets_are_reachable_only_in_the_operator_namespace() {
    for role in roles() {
        let touches_secrets = role
            .rules
            .iter()
            .any(|r| r.resources.iter().any(|res| res == "secrets"));
        if role.kind == "ClusterRole" {
            assert!(!touches_secrets, "the ClusterRole must not grant Secrets");
        }
        for rule in role
            .rules
            .iter()
            .filter(|r| r.resources.iter().any(|res| res == "secrets"))
        {
            for verb in &rule.verbs {
                // Root rotation: the leader patches the CA Secret (the new root; cacerts for
                // a plug-in CA) and empties the rotation's weft-ca-next, by name only.
                let rotation = verb == "patch"
                    && !rule.resource_names.is_empty()
                    && rule
                        .resource_names
                        .iter()
                        .all(|n| n == "weft-ca" || n == "weft-ca-next" || n == "cacerts");
                assert!(
                    ["get", "list", "watch", "create"].contains(&verb.as_str()) || rotation,
                    "Secrets: {verb} is more than the CA needs"
                );
            }
        }
    }
}
