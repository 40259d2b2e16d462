//! The injection contract, pinned: every directory under `webhook/cases/` holds an
//! AdmissionReview (`review.json`) and the mesh it meets (`state.yaml`); the webhook's answer
//! must equal `expected.json`, and the patched pod `expected-pod.json`. With
//! `WEFT_UPDATE_GOLDEN=1` the expected files are rewritten from the code, to be reviewed in
//! the diff. Also here: the bad-input stories of SPEC §15 for the webhook.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use serde::Deserialize;
use serde_json::{Value, json};
use weft::webhook::{InjectorSettings, MAX_REVIEW_BODY_BYTES, MeshState, decide, review};

/// `state.yaml`: the pod's namespace as the webhook's cache holds it (absent: not cached yet)
/// and the mesh (tags, meshconfigs, foreignInjectors, meshName).
#[derive(Deserialize)]
struct CaseState {
    namespace: Option<Namespace>,
    #[serde(flatten)]
    mesh: MeshState,
}

/// A fixed image, so fixtures do not change with every release.
fn settings() -> InjectorSettings {
    InjectorSettings {
        proxy_image: "ghcr.io/weft-mesh/weft:golden".into(),
        ..Default::default()
    }
}

fn cases_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("webhook/cases")
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn write_json(path: &Path, value: &Value) {
    let mut text = serde_json::to_string_pretty(value).expect("JSON values serialize");
    text.push('\n');
    std::fs::write(path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

/// What the webhook answered, decoded for humans and for `json_patch`.
struct Answer {
    http_status: u16,
    response: Value,
    patch: Option<json_patch::Patch>,
}

fn answer(body: &[u8], case: &CaseState) -> Answer {
    let namespace = case.namespace.clone().map(Arc::new);
    let (http_status, out) = review(body, |_| namespace.clone(), &case.mesh, &settings());
    let out: Value = serde_json::from_slice(&out).expect("the webhook answers JSON");
    let response = out.get("response").cloned().unwrap_or(out);
    let patch = response["patch"].as_str().map(|b64| {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .expect("patch is base64");
        serde_json::from_slice(&bytes).expect("patch is a JSON Patch")
    });
    Answer {
        http_status,
        response,
        patch,
    }
}

struct Outcome {
    expected: Value,
    patched_pod: Option<Value>,
}

fn run_case(dir: &Path) -> Outcome {
    let review_json = read_json(&dir.join("review.json"));
    let state_text = std::fs::read_to_string(dir.join("state.yaml")).expect("state.yaml");
    let case: CaseState = serde_yaml::from_str(&state_text)
        .unwrap_or_else(|e| panic!("{}/state.yaml: {e}", dir.display()));
    let body = serde_json::to_vec(&review_json).expect("serializes");
    let answer = answer(&body, &case);

    // The decision as `decide` sees it, for pods the envelope let through.
    let object = &review_json["request"]["object"];
    let decision = match (&case.namespace, object["kind"].as_str()) {
        (Some(namespace), Some("Pod")) => {
            let pod: Pod = serde_json::from_value(object.clone()).expect("the case's pod");
            serde_json::to_value(decide(&pod, namespace, &case.mesh, &settings()))
                .expect("decision serializes")
        }
        _ => Value::Null,
    };

    let mut response = answer.response.clone();
    if let (Some(patch), Some(fields)) = (&answer.patch, response.as_object_mut()) {
        // The patch is pinned decoded, so a reviewer sees every path (and its escaping).
        fields.insert("patch".into(), serde_json::to_value(patch).expect("patch"));
    }
    let expected = json!({
        "httpStatus": answer.http_status,
        "decision": decision,
        "response": response,
    });

    let patched_pod = answer.patch.as_ref().map(|patch| {
        let mut pod = object.clone();
        json_patch::patch(&mut pod, patch)
            .unwrap_or_else(|e| panic!("{}: patch does not apply: {e}", dir.display()));
        assert_readmission_is_a_no_op(dir, &review_json, &pod, &case);
        pod
    });
    Outcome {
        expected,
        patched_pod,
    }
}

/// The pod as stored after injection, admitted again, comes back untouched.
fn assert_readmission_is_a_no_op(dir: &Path, review_json: &Value, pod: &Value, case: &CaseState) {
    let mut again = review_json.clone();
    again["request"]["object"] = pod.clone();
    let body = serde_json::to_vec(&again).expect("serializes");
    let second = answer(&body, case);
    assert_eq!(second.http_status, 200, "{}", dir.display());
    assert_eq!(second.response["allowed"], true, "{}", dir.display());
    assert!(
        second.patch.is_none(),
        "{}: second admission patched again",
        dir.display()
    );
}

fn check_or_update(path: &Path, actual: &Value, update: bool, failures: &mut Vec<String>) {
    if update {
        write_json(path, actual);
        return;
    }
    if !path.exists() {
        failures.push(format!("{} is missing", path.display()));
        return;
    }
    let expected = read_json(path);
    if &expected != actual {
        failures.push(format!(
            "{} differs; actual:\n{}",
            path.display(),
            serde_json::to_string_pretty(actual).unwrap_or_default()
        ));
    }
}

#[test]
fn golden_cases() {
    let update = std::env::var_os("WEFT_UPDATE_GOLDEN").is_some_and(|v| v == "1");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(cases_dir())
        .expect("webhook/cases exists")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.join("review.json").exists())
        .collect();
    dirs.sort();
    assert!(dirs.len() >= 30, "only {} cases found", dirs.len());

    let mut failures = Vec::new();
    for dir in &dirs {
        let outcome = run_case(dir);
        check_or_update(
            &dir.join("expected.json"),
            &outcome.expected,
            update,
            &mut failures,
        );
        let pod_path = dir.join("expected-pod.json");
        match &outcome.patched_pod {
            Some(pod) => check_or_update(&pod_path, pod, update, &mut failures),
            None if update && pod_path.exists() => {
                std::fs::remove_file(&pod_path).expect("remove stale expected-pod.json")
            }
            None if pod_path.exists() => failures.push(format!(
                "{}: no patch, but expected-pod.json exists",
                dir.display()
            )),
            None => {}
        }
    }
    assert!(
        failures.is_empty(),
        "{} golden mismatch(es); if the change is intended, run with WEFT_UPDATE_GOLDEN=1 and review the diff:\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

// === Bad input (SPEC §15) ===

fn enrolled_case() -> CaseState {
    let dir = cases_dir().join("rule1-namespace-istio-injection-enabled");
    serde_yaml::from_str(&std::fs::read_to_string(dir.join("state.yaml")).expect("state"))
        .expect("state.yaml")
}

fn enrolled_review() -> Value {
    read_json(
        &cases_dir()
            .join("rule1-namespace-istio-injection-enabled")
            .join("review.json"),
    )
}

fn error_message(answer: &Answer) -> String {
    answer.response["error"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn ten_mib_body_is_denied_by_an_admission_review_naming_the_limit() {
    // Whitespace only: no uid to echo, so the answer's uid is empty.
    let body = vec![b' '; 10 * 1024 * 1024];
    let blank = answer(&body, &enrolled_case());
    assert_eq!(blank.http_status, 200);
    assert_eq!(blank.response["uid"], "");
    assert_eq!(blank.response["allowed"], false);
    assert_eq!(blank.response["status"]["code"], 413);
    assert!(
        blank.response["status"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("at most") && m.contains("shrink the object")),
        "{}",
        blank.response
    );

    // A review padded past the cap is denied under its own uid.
    let mut body = serde_json::to_vec(&enrolled_review()).expect("serializes");
    body.resize(10 * 1024 * 1024, b' ');
    let padded = answer(&body, &enrolled_case());
    assert_eq!(padded.http_status, 200);
    assert_eq!(padded.response["uid"], enrolled_review()["request"]["uid"]);
    assert_eq!(padded.response["allowed"], false);
}

#[test]
fn body_just_under_the_cap_is_read() {
    // A valid review padded with whitespace to the limit is still answered.
    let mut body = serde_json::to_vec(&enrolled_review()).expect("serializes");
    body.resize(MAX_REVIEW_BODY_BYTES, b' ');
    let answer = answer(&body, &enrolled_case());
    assert_eq!(answer.http_status, 200);
    assert!(answer.patch.is_some());
}

#[test]
fn empty_body_is_a_400_saying_what_to_send() {
    for body in [&b""[..], b"  \n"] {
        let answer = answer(body, &enrolled_case());
        assert_eq!(answer.http_status, 400);
        assert!(error_message(&answer).contains("AdmissionReview"));
    }
}

#[test]
fn non_json_is_a_400() {
    for body in [
        &b"hello"[..],
        b"{\"apiVersion\":",
        b"\xff\xfe\x00",
        b"[[[[[[[[[[",
        b"null",
        b"42",
    ] {
        let answer = answer(body, &enrolled_case());
        assert_eq!(
            answer.http_status,
            400,
            "{:?}",
            String::from_utf8_lossy(body)
        );
    }
    // Deep nesting hits serde_json's recursion limit, not the stack.
    let deep = "[".repeat(200_000);
    assert_eq!(answer(deep.as_bytes(), &enrolled_case()).http_status, 400);
}

#[test]
fn wrong_review_version_is_a_400() {
    let mut review = enrolled_review();
    review["apiVersion"] = json!("admission.k8s.io/v1beta1");
    let answer = answer(
        &serde_json::to_vec(&review).expect("json"),
        &enrolled_case(),
    );
    assert_eq!(answer.http_status, 400);
    assert!(error_message(&answer).contains("admissionReviewVersions"));
}

#[test]
fn review_without_request_is_a_400() {
    let body = br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#;
    assert_eq!(answer(body, &enrolled_case()).http_status, 400);
}

#[test]
fn wrong_kind_is_allowed_untouched() {
    let mut review = enrolled_review();
    review["request"]["kind"] = json!({"group": "", "version": "v1", "kind": "ConfigMap"});
    review["request"]["resource"] = json!({"group": "", "version": "v1", "resource": "configmaps"});
    review["request"]["object"] = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "b"}});
    let answer = answer(
        &serde_json::to_vec(&review).expect("json"),
        &enrolled_case(),
    );
    assert_eq!(answer.http_status, 200);
    assert_eq!(answer.response["allowed"], true);
    assert!(answer.patch.is_none());
    assert_eq!(answer.response["uid"], review["request"]["uid"]);
}

#[test]
fn a_pod_that_is_not_a_pod_is_refused_not_panicked_on() {
    let mut review = enrolled_review();
    review["request"]["object"]["spec"] = json!({"containers": "not a list"});
    let answer = answer(
        &serde_json::to_vec(&review).expect("json"),
        &enrolled_case(),
    );
    assert_eq!(answer.http_status, 200);
    assert_eq!(answer.response["allowed"], false);
    assert_eq!(answer.response["status"]["code"], 400);
}

#[test]
fn double_admission_is_a_no_op() {
    let review = enrolled_review();
    let case = enrolled_case();
    let first = answer(&serde_json::to_vec(&review).expect("json"), &case);
    let mut pod = review["request"]["object"].clone();
    json_patch::patch(&mut pod, &first.patch.expect("first admission injects")).expect("applies");
    let mut again = review.clone();
    again["request"]["object"] = pod;
    let second = answer(&serde_json::to_vec(&again).expect("json"), &case);
    assert_eq!(second.response["allowed"], true);
    assert!(second.patch.is_none());
    assert!(
        second.response["auditAnnotations"]["injection"]
            .as_str()
            .unwrap_or_default()
            .contains("weft.dev/status")
    );
}

#[test]
fn two_hundred_container_pod_is_injected_and_every_probe_rewritten() {
    let mut review = enrolled_review();
    let template = review["request"]["object"]["spec"]["containers"][0].clone();
    let containers: Vec<Value> = (0..200)
        .map(|i| {
            let mut c = template.clone();
            c["name"] = json!(format!("c{i:03}"));
            c["ports"] = json!([{"name": "http", "containerPort": 8000 + i, "protocol": "TCP"}]);
            c["readinessProbe"] = json!({"httpGet": {"path": "/ready", "port": "http"}});
            c
        })
        .collect();
    review["request"]["object"]["spec"]["containers"] = Value::Array(containers);
    let body = serde_json::to_vec(&review).expect("json");
    let answer = answer(&body, &enrolled_case());
    assert_eq!(answer.http_status, 200);
    let patch = answer.patch.expect("injected");
    let mut pod = review["request"]["object"].clone();
    json_patch::patch(&mut pod, &patch).expect("applies");
    let containers = pod["spec"]["containers"].as_array().expect("containers");
    assert_eq!(containers.len(), 200);
    assert!(
        containers
            .iter()
            .all(|c| c["readinessProbe"]["httpGet"]["port"] == 15020)
    );
    let probers = pod["spec"]["initContainers"][1]["env"]
        .as_array()
        .and_then(|env| env.iter().find(|e| e["name"] == "WEFT_APP_PROBERS"))
        .and_then(|e| e["value"].as_str())
        .expect("WEFT_APP_PROBERS");
    let probers: Value = serde_json::from_str(probers).expect("JSON");
    assert_eq!(probers["c199"]["readyz"]["httpGet"]["port"], 8199);
}

#[test]
fn mangled_reviews_never_panic() {
    // A cheap, deterministic mutation fuzzer over a real review: flip, drop and duplicate
    // bytes; every answer must be an HTTP status the API server understands.
    let seed = serde_json::to_vec(&enrolled_review()).expect("json");
    let case = enrolled_case();
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..3000 {
        let mut body = seed.clone();
        for _ in 0..1 + next() % 8 {
            let at = (next() as usize) % body.len().max(1);
            match next() % 3 {
                0 => body[at] = next() as u8,
                1 => {
                    body.remove(at);
                }
                _ => body.insert(at, body[at]),
            }
        }
        let namespace = case.namespace.clone().map(Arc::new);
        let (status, out) = review(&body, |_| namespace.clone(), &case.mesh, &settings());
        assert!(matches!(status, 200 | 400 | 413), "status {status}");
        assert!(serde_json::from_slice::<Value>(&out).is_ok());
    }
}
