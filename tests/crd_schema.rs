//! The CRD schemas as a user meets them: every spec field explained, bad values rejected.
//! These check the generated openAPIV3Schema itself (JSON Schema keywords and the CEL rules,
//! evaluated with a CEL interpreter); the same objects are applied to a real API server in the
//! cluster tests.

use serde_json::{Value, json};

fn crd_schema(kind: &str) -> Value {
    let crd = weft::api::crds()
        .into_iter()
        .find(|c| c.spec.names.kind == kind)
        .expect("kind is generated");
    let schema = crd.spec.versions[0]
        .schema
        .clone()
        .unwrap()
        .open_api_v3_schema
        .unwrap();
    serde_json::to_value(schema).unwrap()
}

/// Validates `object` against the structural schema (types, enums, patterns, bounds, required)
/// and then every `x-kubernetes-validations` rule, as the API server does. Returns the messages.
fn validate(kind: &str, object: &Value) -> Vec<String> {
    let schema = crd_schema(kind);
    let validator = jsonschema::validator_for(&schema).expect("schema compiles as JSON Schema");
    let mut errors: Vec<String> = validator
        .iter_errors(object)
        .map(|e| e.to_string())
        .collect();
    cel_rules(&schema, object, &mut errors);
    errors
}

fn cel_rules(schema: &Value, object: &Value, errors: &mut Vec<String>) {
    if let Some(rules) = schema
        .get("x-kubernetes-validations")
        .and_then(Value::as_array)
    {
        for rule in rules {
            let program = cel_interpreter::Program::compile(rule["rule"].as_str().unwrap())
                .expect("CEL rule compiles");
            let mut context = cel_interpreter::Context::default();
            context.add_variable("self", object.clone()).unwrap();
            match program.execute(&context) {
                Ok(cel_interpreter::Value::Bool(true)) => {}
                Ok(_) => errors.push(rule["message"].as_str().unwrap().to_string()),
                Err(e) => errors.push(format!("CEL error: {e}")),
            }
        }
    }
    if let (Some(props), Some(obj)) = (schema.get("properties"), object.as_object()) {
        for (name, sub) in props.as_object().unwrap() {
            if let Some(value) = obj.get(name) {
                cel_rules(sub, value, errors);
            }
        }
    }
}

fn meshconfig(spec: Value) -> Value {
    json!({"apiVersion": "mesh.weft.dev/v1alpha1", "kind": "MeshConfig",
           "metadata": {"name": "stable", "namespace": "weft-system"}, "spec": spec})
}

#[test]
fn every_spec_field_has_a_description() {
    fn walk(path: &str, schema: &Value, missing: &mut Vec<String>) {
        if let Some(props) = schema.get("properties").and_then(Value::as_object) {
            for (name, sub) in props {
                let here = format!("{path}.{name}");
                if sub
                    .get("description")
                    .and_then(Value::as_str)
                    .is_none_or(str::is_empty)
                {
                    missing.push(here.clone());
                }
                walk(&here, sub, missing);
            }
        }
        if let Some(items) = schema.get("items") {
            walk(&format!("{path}[]"), items, missing);
        }
    }
    for kind in ["MeshConfig", "RevisionTag"] {
        let mut missing = Vec::new();
        walk(kind, &crd_schema(kind)["properties"]["spec"], &mut missing);
        // Kubernetes' own types (resources) come with upstream descriptions only at top level.
        missing.retain(|p| !p.contains(".resources."));
        assert!(
            missing.is_empty(),
            "fields without a description: {missing:?}"
        );
    }
}

#[test]
fn every_meshconfig_default_is_named_in_its_description() {
    let spec = &crd_schema("MeshConfig")["properties"]["spec"]["properties"];
    for (group, sub) in spec.as_object().unwrap() {
        for (field, schema) in sub["properties"].as_object().unwrap() {
            let description = schema["description"].as_str().unwrap_or_default();
            assert!(
                description.contains("Default:"),
                "{group}.{field}: {description:?}"
            );
        }
    }
}

#[test]
fn a_full_meshconfig_is_accepted() {
    let object = meshconfig(json!({
        "proxy": {"image": "weft/proxy:0.1.0", "imagePullPolicy": "IfNotPresent", "logLevel": "debug",
                  "drainDuration": "5s", "concurrency": 2,
                  "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}},
        "mtls": {"mode": "STRICT"},
        "traffic": {"outboundTrafficPolicy": "REGISTRY_ONLY", "enablePermissiveTrafficPolicyMode": true,
                    "excludeOutboundIPRanges": ["198.18.0.0/16"], "excludeInboundPorts": [8080],
                    "excludeOutboundPorts": [5432]},
        "certificate": {"trustDomain": "cluster.local", "workloadCertTTL": "24h", "renewAt": 0.5},
        "accessLog": {"enabled": true, "format": "json"}
    }));
    assert_eq!(validate("MeshConfig", &object), Vec::<String>::new());
    let empty = meshconfig(json!({}));
    assert_eq!(validate("MeshConfig", &empty), Vec::<String>::new());
}

#[test]
fn a_misspelt_mtls_mode_is_rejected() {
    let errors = validate(
        "MeshConfig",
        &meshconfig(json!({"mtls": {"mode": "STRICTT"}})),
    );
    assert!(errors.iter().any(|e| e.contains("STRICTT")), "{errors:?}");
}

#[test]
fn workload_cert_ttl_must_be_a_go_duration_between_1h_and_2160h() {
    for (ttl, ok) in [
        ("24h", true),
        ("1h", true),
        ("2160h", true),
        ("90m", true),
        ("10m", false),
        ("2161h", false),
        ("59m59s", false),
        ("1d", false),
        ("24", false),
    ] {
        let errors = validate(
            "MeshConfig",
            &meshconfig(json!({"certificate": {"workloadCertTTL": ttl}})),
        );
        assert_eq!(errors.is_empty(), ok, "{ttl}: {errors:?}");
    }
    let errors = validate(
        "MeshConfig",
        &meshconfig(json!({"certificate": {"workloadCertTTL": "10m"}})),
    );
    assert!(
        errors.iter().any(|e| e.contains("between 1h and 2160h")),
        "{errors:?}"
    );
}

#[test]
fn out_of_range_values_are_rejected() {
    for spec in [
        json!({"certificate": {"renewAt": 0.95}}),
        json!({"certificate": {"trustDomain": "Not_A_Domain"}}),
        json!({"traffic": {"excludeInboundPorts": [0]}}),
        json!({"traffic": {"excludeOutboundIPRanges": ["everything"]}}),
        json!({"proxy": {"drainDuration": "five seconds"}}),
        json!({"proxy": {"logLevel": "loud"}}),
        json!({"accessLog": {"format": "xml"}}),
    ] {
        assert!(
            !validate("MeshConfig", &meshconfig(spec.clone())).is_empty(),
            "{spec} accepted"
        );
    }
}

#[test]
fn a_revision_tag_needs_a_revision() {
    let tag = |spec: Value| {
        json!({"apiVersion": "mesh.weft.dev/v1alpha1", "kind": "RevisionTag",
                                   "metadata": {"name": "prod"}, "spec": spec})
    };
    assert!(validate("RevisionTag", &tag(json!({"revision": "stable"}))).is_empty());
    let errors = validate("RevisionTag", &tag(json!({})));
    assert!(errors.iter().any(|e| e.contains("revision")), "{errors:?}");
    assert!(!validate("RevisionTag", &tag(json!({"revision": ""}))).is_empty());
}

#[test]
fn every_format_is_one_the_api_server_knows() {
    // Formats outside this list make the API server warn on every apply.
    const KNOWN: [&str; 8] = [
        "int32",
        "int64",
        "float",
        "double",
        "byte",
        "date",
        "date-time",
        "password",
    ];
    fn walk(path: &str, schema: &Value, unknown: &mut Vec<String>) {
        if let Some(f) = schema.get("format").and_then(Value::as_str)
            && !KNOWN.contains(&f)
        {
            unknown.push(format!("{path}: {f}"));
        }
        for (name, sub) in schema
            .get("properties")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            walk(&format!("{path}.{name}"), sub, unknown);
        }
        if let Some(items) = schema.get("items") {
            walk(&format!("{path}[]"), items, unknown);
        }
    }
    for kind in ["MeshConfig", "RevisionTag"] {
        let mut unknown = Vec::new();
        walk(kind, &crd_schema(kind), &mut unknown);
        assert!(
            unknown.is_empty(),
            "formats the API server does not know: {unknown:?}"
        );
    }
}

#[test]
fn the_samples_and_the_demo_revision_are_valid_objects_of_the_schema() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let files = [
        "config/samples/meshconfig_canary.yaml",
        "config/samples/revisiontag_prod.yaml",
        "manifests/demo/canary.yaml",
    ];
    for file in files {
        let text = std::fs::read_to_string(root.join(file)).expect(file);
        let object: Value = serde_yaml::from_str(&text).expect(file);
        let kind = object["kind"].as_str().expect("kind").to_string();
        let errors = validate(&kind, &object);
        assert!(errors.is_empty(), "{file}: {errors:?}");
    }
}
