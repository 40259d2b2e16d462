//! Generated files are committed; this fails when they are not what the code generates now.
//! Fix with `make generate`.

use std::path::Path;

#[test]
fn crds_directory_is_what_weft_crds_writes() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("crds");
    let expected = weft::api::crd_files().unwrap();
    for (name, contents) in &expected {
        let path = dir.join(name);
        let committed = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e}; run `make generate`", path.display()));
        assert!(
            committed == *contents,
            "{} is stale; run `make generate`",
            path.display()
        );
    }
    let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    on_disk.sort();
    let mut names: Vec<String> = expected.into_iter().map(|(n, _)| n).collect();
    names.sort();
    assert_eq!(
        on_disk, names,
        "crds/ holds files weft does not generate; run `make generate`"
    );
}

/// The documents of a multi-document YAML file, as JSON values with whole numbers as integers
/// (kustomize writes the `64.0` of a generated schema bound as `64`).
fn yaml_documents(text: &str) -> Vec<serde_json::Value> {
    use serde::Deserialize;
    fn whole_numbers(v: serde_json::Value) -> serde_json::Value {
        use serde_json::Value;
        match v {
            Value::Number(n) => match n.as_f64() {
                Some(f) if n.is_f64() && f.fract() == 0.0 => Value::from(f as i64),
                _ => Value::Number(n),
            },
            Value::Array(a) => Value::Array(a.into_iter().map(whole_numbers).collect()),
            Value::Object(o) => {
                Value::Object(o.into_iter().map(|(k, v)| (k, whole_numbers(v))).collect())
            }
            other => other,
        }
    }
    serde_yaml::Deserializer::from_str(text)
        .map(|doc| serde_json::Value::deserialize(doc).unwrap())
        .filter(|v| !v.is_null())
        .map(whole_numbers)
        .collect()
}

/// The byte-for-byte check of manifests/install.yaml against `kubectl kustomize config/default`
/// needs kubectl, which a fresh machine builds only with the cluster components: that is
/// `make check-install-yaml`, run by `make test` before the cluster tests. This test catches the
/// commonest drift without kubectl: CRDs changed in the code but not in the bundle.
#[test]
fn install_bundle_carries_the_crds_weft_generates() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests/install.yaml");
    let bundle = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}; run `make generate`", path.display()));
    let in_bundle: Vec<serde_json::Value> = yaml_documents(&bundle)
        .into_iter()
        .filter(|d| d["kind"] == "CustomResourceDefinition")
        .collect();
    let generated: Vec<serde_json::Value> = weft::api::crd_files()
        .unwrap()
        .into_iter()
        .filter(|(name, _)| name != "kustomization.yaml")
        .flat_map(|(_, text)| yaml_documents(&text))
        .collect();
    assert_eq!(
        in_bundle.len(),
        generated.len(),
        "manifests/install.yaml has {} CRDs, the code {}; run `make generate`",
        in_bundle.len(),
        generated.len()
    );
    for crd in &generated {
        assert!(
            in_bundle.contains(crd),
            "the CRD {:?} in manifests/install.yaml is stale; run `make generate`",
            crd["metadata"]["name"]
        );
    }
}
