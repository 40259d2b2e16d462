//! The kustomize components under config/components/ (issue 24): `kubectl kustomize` of an
//! overlay that installs config/default with a component (and patches it as the component's
//! comment tells users to) yields ConfigMap weft-system/weft-ca-issuer under its exact name,
//! which the operator's own parser (`IssuerConfig::from_data`) reads as the issuer asked for.
//! Needs kubectl (`make cluster-components`): ignored in `cargo test`, run by
//! `make check-install-yaml`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
use weft::pki::{IssuerConfig, VaultAuth};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn kubectl() -> PathBuf {
    if let Ok(k) = std::env::var("KUBECTL") {
        return PathBuf::from(k);
    }
    let versions = std::fs::read_to_string(repo().join("e2e/components/versions.env")).unwrap();
    let k8s = versions
        .lines()
        .find_map(|l| l.strip_prefix("K8S_VERSION="))
        .unwrap();
    let cache = std::env::var("WEFT_E2E_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/weft-e2e")
        });
    let path = cache.join(format!("kubernetes-v{k8s}/kubectl"));
    assert!(
        path.exists(),
        "{} is missing: run `make cluster-components` (or set KUBECTL)",
        path.display()
    );
    path
}

/// `kubectl kustomize` of an overlay (in a fresh directory under target/) made of config/default,
/// `component`, and `patch` (a strategic-merge patch, if any): every document, as JSON.
fn build(name: &str, component: &str, patch: Option<&str>) -> Vec<serde_json::Value> {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("kustomize-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // kustomize takes only relative paths to other kustomizations.
    let up = dir
        .components()
        .filter(|c| matches!(c, std::path::Component::Normal(_)))
        .map(|_| "..")
        .collect::<Vec<_>>()
        .join("/");
    let config = format!("{up}{}/config", repo().display());
    let mut text =
        format!("resources: [{config}/default]\ncomponents: [{config}/components/{component}]\n");
    if let Some(patch) = patch {
        text.push_str("patches:\n- patch: |-\n");
        for line in patch.lines() {
            text.push_str(&format!("    {line}\n"));
        }
    }
    std::fs::write(dir.join("kustomization.yaml"), text).unwrap();
    let out = Command::new(kubectl())
        .arg("kustomize")
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kubectl kustomize: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_yaml::Deserializer::from_str(&String::from_utf8_lossy(&out.stdout))
        .map(|doc| serde_json::Value::deserialize(doc).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

/// The issuer ConfigMap of a build (exactly one, under its exact name), parsed as the
/// operator parses it.
fn issuer(docs: &[serde_json::Value]) -> IssuerConfig {
    let found: Vec<&serde_json::Value> = docs
        .iter()
        .filter(|d| d["kind"] == "ConfigMap" && d["metadata"]["name"] == "weft-ca-issuer")
        .collect();
    assert_eq!(
        found.len(),
        1,
        "one ConfigMap weft-ca-issuer, no hash suffix"
    );
    assert_eq!(found[0]["metadata"]["namespace"], "weft-system");
    let data: BTreeMap<String, String> = serde_json::from_value(found[0]["data"].clone()).unwrap();
    IssuerConfig::from_data(&data).unwrap()
}

fn vault(config: IssuerConfig) -> weft::pki::VaultConfig {
    match config {
        IssuerConfig::Vault(v) => v,
        other => panic!("not Vault: {other:?}"),
    }
}

#[test]
#[ignore = "needs kubectl (make cluster-components); make check-install-yaml runs it"]
fn the_vault_component_installs_a_vault_issuer_and_users_patch_its_values() {
    let docs = build("vault-defaults", "issuer-vault", None);
    // The install is still all there.
    assert!(
        docs.iter()
            .any(|d| d["kind"] == "Deployment" && d["metadata"]["name"] == "weft-operator")
    );
    let v = vault(issuer(&docs));
    assert_eq!(v.address, "http://198.18.0.10:8200");
    assert_eq!((v.mount.as_str(), v.role.as_str()), ("pki", "weft"));
    assert_eq!(v.auth, VaultAuth::TokenSecret("weft-vault-token".into()));

    // The patch the component's comment shows.
    let patched = build(
        "vault-patched",
        "issuer-vault",
        Some(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: weft-ca-issuer, namespace: weft-system}\n\
             data: {vault.address: \"https://198.18.0.20:8200\", vault.role: mesh}",
        ),
    );
    let v = vault(issuer(&patched));
    assert_eq!(v.address, "https://198.18.0.20:8200");
    assert_eq!(v.role, "mesh");

    // Kubernetes auth instead of a token: the token key goes, the auth role comes.
    let k8s_auth = build(
        "vault-k8s-auth",
        "issuer-vault",
        Some(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: weft-ca-issuer, namespace: weft-system}\n\
             data: {vault.tokenSecret: null, vault.authRole: weft-operator}",
        ),
    );
    let v = vault(issuer(&k8s_auth));
    assert!(
        matches!(&v.auth, VaultAuth::Kubernetes { role, mount } if role == "weft-operator" && mount == "kubernetes"),
        "{:?}",
        v.auth
    );
}

#[test]
#[ignore = "needs kubectl (make cluster-components); make check-install-yaml runs it"]
fn the_builtin_component_says_builtin() {
    assert_eq!(
        issuer(&build("builtin", "issuer-builtin", None)),
        IssuerConfig::Builtin
    );
}

#[test]
#[ignore = "needs kubectl (make cluster-components); make check-install-yaml runs it"]
fn the_cert_manager_component_installs_osms_defaults_and_users_patch_its_values() {
    let osm = weft::pki::CertManagerConfig {
        issuer_name: "osm-ca".into(),
        issuer_kind: weft::pki::IssuerRefKind::Issuer,
        issuer_group: "cert-manager.io".into(),
        ca_bundle_secret: "osm-ca-bundle".into(),
    };
    assert_eq!(
        issuer(&build("cert-manager", "issuer-cert-manager", None)),
        IssuerConfig::CertManager(osm.clone())
    );
    // The patch the component's comment shows.
    let patched = build(
        "cert-manager-patched",
        "issuer-cert-manager",
        Some(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: weft-ca-issuer, namespace: weft-system}\n\
             data: {certManager.issuerName: mesh-ca, certManager.issuerKind: ClusterIssuer}",
        ),
    );
    assert_eq!(
        issuer(&patched),
        IssuerConfig::CertManager(weft::pki::CertManagerConfig {
            issuer_name: "mesh-ca".into(),
            issuer_kind: weft::pki::IssuerRefKind::ClusterIssuer,
            ..osm
        })
    );
}
