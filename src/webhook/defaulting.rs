//! The MeshConfig defaulting webhook (`POST /default-meshconfig`, SPEC §3): a revision created
//! without some field gets it from the revision the `default` tag points at, written into its
//! spec by a JSON Patch, so a canary never silently downgrades security and `kubectl get -o
//! yaml` shows what it runs. Creation only; pure like `review`.

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, Patch, PatchOperation};
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, Operation};
use serde_json::{Map, Value};

use super::review::{Answer, error_body, read_request};
use super::state::{InjectorSettings, MeshState};
use super::validate::Kind;
use crate::contract;

/// Key of the audit annotation (the API server prefixes it with the webhook's name).
const AUDIT_KEY: &str = "defaulting";
/// Fields copied whole even when the user set part of them: a user who writes a resources
/// block means exactly those requests and limits.
const ATOMIC: &[&[&str]] = &[&["proxy", "resources"]];

/// What a new MeshConfig gets from the default revision.
#[derive(Clone, Debug, PartialEq)]
pub struct Defaults {
    /// The revision the fields came from (where the `default` tag points).
    pub revision: String,
    /// The copied fields, as dotted paths under `spec` (`mtls`, `proxy.logLevel`).
    pub fields: Vec<String>,
    /// Adds the fields and the `weft.dev/defaulted-from` and `weft.dev/defaulted-fields`
    /// annotations.
    pub patch: Patch,
}

/// `(HTTP status, body)` for one request body sent to `/default-meshconfig`.
pub fn default_meshconfig(
    body: &[u8],
    mesh: &MeshState,
    settings: &InjectorSettings,
) -> (u16, Vec<u8>) {
    let request = match read_request(body) {
        Ok(request) => request,
        Err(error) => return (error.http_status(), error_body(&error)),
    };
    let mut answer = Answer::allow(&request.uid);
    if let Some(defaults) = defaults(&request, mesh, settings) {
        let fields = defaults.fields.join(", ");
        answer.audit_as(
            AUDIT_KEY,
            format!("copied {fields} from revision {}", defaults.revision),
        );
        answer.warnings.push(format!(
            "fields left out were copied from revision {} (tag {}): {fields}",
            defaults.revision,
            contract::DEFAULT_TAG
        ));
        answer.set_patch(&defaults.patch);
    }
    (200, answer.into_body())
}

/// The defaults for a MeshConfig CREATE in the operator's namespace; None when there is nothing
/// to copy: no `default` tag, its revision missing, every field already set, another kind or
/// operation, or a spec that is not an object (the schema refuses it next).
pub fn defaults(
    request: &AdmissionRequest<DynamicObject>,
    mesh: &MeshState,
    settings: &InjectorSettings,
) -> Option<Defaults> {
    if Kind::of(request) != Some(Kind::MeshConfig)
        || request.operation != Operation::Create
        || request.namespace.as_deref() != Some(settings.operator_namespace.as_str())
    {
        return None;
    }
    let object = request.object.as_ref()?;
    let revision = mesh.tags.get(contract::DEFAULT_TAG)?;
    let source = serde_json::to_value(mesh.meshconfigs.get(revision)?).ok()?;
    let Value::Object(source) = source else {
        return None;
    };

    let mut copies: Vec<(Vec<String>, Value)> = Vec::new();
    match object.data.get("spec") {
        None | Some(Value::Null) => {
            if !source.is_empty() {
                copies.push((Vec::new(), Value::Object(source)));
            }
        }
        Some(Value::Object(spec)) => missing(spec, &source, &[], &mut copies),
        Some(_) => return None,
    }
    if copies.is_empty() {
        return None;
    }
    let fields: Vec<String> = copies
        .iter()
        .flat_map(|(path, value)| match (path.is_empty(), value) {
            // The whole spec was missing: name its top-level fields.
            (true, Value::Object(whole)) => whole.keys().cloned().collect(),
            _ => vec![path.join(".")],
        })
        .collect();

    let mut ops: Vec<PatchOperation> = copies
        .into_iter()
        .map(|(path, value)| {
            let tokens = std::iter::once("spec").chain(path.iter().map(String::as_str));
            add(PointerBuf::from_tokens(tokens), value)
        })
        .collect();
    let from = (contract::ANNOTATION_DEFAULTED_FROM, revision.clone());
    let copied = (contract::ANNOTATION_DEFAULTED_FIELDS, fields.join(","));
    if object.metadata.annotations.is_none() {
        let annotations: Map<String, Value> = [from, copied]
            .into_iter()
            .map(|(k, v)| (k.to_string(), Value::String(v)))
            .collect();
        ops.push(add(
            PointerBuf::from_tokens(["metadata", "annotations"]),
            Value::Object(annotations),
        ));
    } else {
        for (key, value) in [from, copied] {
            ops.push(add(
                PointerBuf::from_tokens(["metadata", "annotations", key]),
                Value::String(value),
            ));
        }
    }
    Some(Defaults {
        revision: revision.clone(),
        fields,
        patch: Patch(ops),
    })
}

fn add(path: PointerBuf, value: Value) -> PatchOperation {
    PatchOperation::Add(AddOperation { path, value })
}

/// Deep merge, user first: every field of `source` the user left out (or set to null) is
/// copied; objects the user started are filled field by field, except `ATOMIC` ones; a value
/// the user set, of whatever type, stays.
fn missing(
    user: &Map<String, Value>,
    source: &Map<String, Value>,
    at: &[String],
    out: &mut Vec<(Vec<String>, Value)>,
) {
    for (key, value) in source {
        if value.is_null() {
            continue;
        }
        let path: Vec<String> = at.iter().cloned().chain([key.clone()]).collect();
        match (user.get(key), value) {
            (None | Some(Value::Null), _) => out.push((path, value.clone())),
            (Some(Value::Object(mine)), Value::Object(theirs)) if !is_atomic(&path) => {
                missing(mine, theirs, &path, out)
            }
            _ => {}
        }
    }
}

fn is_atomic(path: &[String]) -> bool {
    ATOMIC
        .iter()
        .any(|atomic| atomic.iter().copied().eq(path.iter().map(String::as_str)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controllers::bootstrap::built_in_spec;
    use base64::Engine as _;
    use serde_json::json;

    fn mesh() -> MeshState {
        MeshState {
            tags: [("default".to_string(), "stable".to_string())].into(),
            meshconfigs: [(
                "stable".to_string(),
                built_in_spec("ghcr.io/weft-mesh/weft:0.1.0", "cluster.local"),
            )]
            .into(),
            ..Default::default()
        }
    }

    fn review(operation: &str, namespace: &str, object: Value) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "u-2",
                "kind": {"group": "mesh.weft.dev", "version": "v1alpha1", "kind": "MeshConfig"},
                "resource": {"group": "mesh.weft.dev", "version": "v1alpha1",
                             "resource": "meshconfigs"},
                "name": "canary",
                "namespace": namespace,
                "operation": operation,
                "userInfo": {"username": "alice"},
                "object": object,
            }
        }))
        .unwrap()
    }

    fn canary(spec: Value) -> Value {
        json!({
            "apiVersion": "mesh.weft.dev/v1alpha1",
            "kind": "MeshConfig",
            "metadata": {"name": "canary", "namespace": "weft-system"},
            "spec": spec,
        })
    }

    /// The object as the API server stores it after the webhook's patch.
    fn admitted(world: &MeshState, object: Value) -> (Value, Value) {
        let (status, body) = default_meshconfig(
            &review("CREATE", "weft-system", object.clone()),
            world,
            &InjectorSettings::default(),
        );
        assert_eq!(status, 200);
        let out: Value = serde_json::from_slice(&body).unwrap();
        let response = out["response"].clone();
        assert_eq!(response["allowed"], true);
        let mut object = object;
        if let Some(patch) = response["patch"].as_str() {
            assert_eq!(response["patchType"], "JSONPatch");
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(patch)
                .unwrap();
            let patch: Patch = serde_json::from_slice(&bytes).unwrap();
            json_patch::patch(&mut object, &patch).unwrap();
        }
        (object, response)
    }

    #[test]
    fn a_canary_with_only_an_image_gets_everything_else_from_the_default_revision() {
        let (object, response) = admitted(
            &mesh(),
            canary(json!({"proxy": {"image": "ghcr.io/weft-mesh/weft-canary:0.2.0"}})),
        );
        let spec = &object["spec"];
        assert_eq!(
            spec["proxy"]["image"],
            "ghcr.io/weft-mesh/weft-canary:0.2.0"
        );
        assert_eq!(spec["proxy"]["logLevel"], "info");
        assert_eq!(spec["mtls"]["mode"], "PERMISSIVE");
        assert_eq!(spec["certificate"]["trustDomain"], "cluster.local");
        assert_eq!(spec["certificate"]["workloadCertTTL"], "24h");
        let annotations = &object["metadata"]["annotations"];
        assert_eq!(annotations["weft.dev/defaulted-from"], "stable");
        let fields: Vec<&str> = annotations["weft.dev/defaulted-fields"]
            .as_str()
            .unwrap()
            .split(',')
            .collect();
        assert!(
            fields.contains(&"mtls") && fields.contains(&"proxy.logLevel"),
            "{fields:?}"
        );
        assert!(!fields.contains(&"proxy.image"), "{fields:?}");
        assert!(
            response["warnings"][0].as_str().unwrap().contains("stable"),
            "{response}"
        );
        assert!(
            response["auditAnnotations"]["defaulting"]
                .as_str()
                .unwrap()
                .contains("from revision stable")
        );
        // The result is a valid MeshConfig.
        let typed: crate::api::MeshConfig = serde_json::from_value(object).unwrap();
        assert!(typed.spec.access_log.is_some());
    }

    #[test]
    fn fields_the_user_set_stay_even_inside_a_copied_section() {
        let (object, _) = admitted(
            &mesh(),
            canary(json!({
                "mtls": {"mode": "STRICT"},
                "certificate": {"workloadCertTTL": "12h"},
                "traffic": {"excludeInboundPorts": [9090]},
                "proxy": {"resources": {"requests": {"cpu": "100m"}}},
            })),
        );
        let spec = &object["spec"];
        assert_eq!(spec["mtls"]["mode"], "STRICT");
        assert_eq!(spec["certificate"]["workloadCertTTL"], "12h");
        assert_eq!(spec["certificate"]["trustDomain"], "cluster.local");
        assert_eq!(spec["certificate"]["renewAt"], 0.5);
        assert_eq!(spec["traffic"]["excludeInboundPorts"], json!([9090]));
        assert_eq!(spec["traffic"]["outboundTrafficPolicy"], "ALLOW_ANY");
        // A resources block is the user's whole answer: no memory request merged in.
        assert_eq!(
            spec["proxy"]["resources"],
            json!({"requests": {"cpu": "100m"}})
        );
        assert_eq!(spec["proxy"]["concurrency"], 2);
    }

    #[test]
    fn a_missing_or_null_spec_gets_the_whole_default_spec() {
        for object in [
            json!({"apiVersion": "mesh.weft.dev/v1alpha1", "kind": "MeshConfig",
                   "metadata": {"name": "canary", "annotations": {"team": "mesh"}}}),
            canary(Value::Null),
        ] {
            let (object, _) = admitted(&mesh(), object);
            let expected = serde_json::to_value(built_in_spec(
                "ghcr.io/weft-mesh/weft:0.1.0",
                "cluster.local",
            ))
            .unwrap();
            assert_eq!(object["spec"], expected);
            assert_eq!(
                object["metadata"]["annotations"]["weft.dev/defaulted-from"],
                "stable"
            );
        }
    }

    #[test]
    fn existing_annotations_are_kept() {
        let mut object = canary(json!({}));
        object["metadata"]["annotations"] = json!({"team": "mesh"});
        let (object, _) = admitted(&mesh(), object);
        let annotations = &object["metadata"]["annotations"];
        assert_eq!(annotations["team"], "mesh");
        assert_eq!(annotations["weft.dev/defaulted-from"], "stable");
    }

    #[test]
    fn nothing_changes_without_a_default_revision_or_anything_to_copy() {
        let no_tag = MeshState {
            tags: Default::default(),
            ..mesh()
        };
        let tag_to_nowhere = MeshState {
            tags: [("default".to_string(), "gone".to_string())].into(),
            ..mesh()
        };
        let full = serde_json::to_value(built_in_spec("x", "cluster.local")).unwrap();
        for (world, spec) in [
            (no_tag, json!({})),
            (tag_to_nowhere, json!({})),
            (mesh(), full),
            (mesh(), json!("not an object")),
        ] {
            let (object, response) = admitted(&world, canary(spec.clone()));
            assert!(response.get("patch").is_none(), "{response}");
            assert_eq!(object["spec"], spec);
        }
    }

    #[test]
    fn updates_and_other_namespaces_are_left_alone() {
        for (operation, namespace) in [("UPDATE", "weft-system"), ("CREATE", "pets")] {
            let (status, body) = default_meshconfig(
                &review(operation, namespace, canary(json!({}))),
                &mesh(),
                &InjectorSettings::default(),
            );
            assert_eq!(status, 200);
            let out: Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(out["response"]["allowed"], true);
            assert!(out["response"].get("patch").is_none());
        }
    }

    #[test]
    fn unreadable_bodies_get_the_same_4xx_as_the_injector() {
        let too_big = vec![b' '; crate::webhook::MAX_REVIEW_BODY_BYTES + 1];
        for (input, want) in [(&b"nope"[..], 400), (&b"  "[..], 400)] {
            let (status, body) = default_meshconfig(input, &mesh(), &InjectorSettings::default());
            assert_eq!(status, want);
            let out: Value = serde_json::from_slice(&body).unwrap();
            assert!(out["error"].is_string());
        }
        // Too large: denied by an AdmissionReview naming the limit, as the injector does.
        let (status, body) = default_meshconfig(&too_big, &mesh(), &InjectorSettings::default());
        assert_eq!(status, 200);
        let out: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(out["response"]["allowed"], false);
        assert_eq!(out["response"]["status"]["code"], 413);
    }
}
