//! One AdmissionReview in, one HTTP answer out: the pure heart of the `/inject` handler. The
//! server around it only reads the body (at most `MAX_REVIEW_BODY_BYTES`, or the beginning of
//! a longer one, answered by [`error_body`] as a denial naming the limit), looks namespaces up
//! in its cache and writes events; everything that can be decided from bytes is decided here,
//! and no input makes it panic.

use std::collections::BTreeMap;
use std::sync::Arc;

use base64::Engine as _;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::core::admission::{AdmissionRequest, AdmissionReview, Operation};
use kube::core::{DynamicObject, Status};
use serde::Serialize;

use super::decision::{Decision, decide};
use super::inject::inject;
use super::state::{InjectorSettings, MeshState};

/// Bodies above this are denied unread (an AdmissionReview with `allowed: false` and a 413
/// status). The API server stores objects of at most 1.5 MiB in etcd; a pod CREATE review is
/// that plus the envelope, so 3 MiB leaves room.
pub const MAX_REVIEW_BODY_BYTES: usize = 3 * 1024 * 1024;

const API_VERSION: &str = "admission.k8s.io/v1";
const KIND: &str = "AdmissionReview";
/// Key of the audit annotation (the API server prefixes it with the webhook's name).
const AUDIT_KEY: &str = "injection";

/// A request the webhook cannot review: no AdmissionReview (answered `{"error": ...}`) or too
/// large to read (answered with a denying AdmissionReview).
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    /// Over [`MAX_REVIEW_BODY_BYTES`]; `size` when known (declared or read whole), `uid` the
    /// request's as read from the body's beginning (empty when it was not there).
    #[error("{}", too_large_message(*size))]
    TooLarge { size: Option<usize>, uid: String },
    #[error("the request body is empty: POST an admission.k8s.io/v1 AdmissionReview as JSON")]
    Empty,
    #[error(
        "the request body is not an admission.k8s.io/v1 AdmissionReview: {0}. POST the JSON the \
         API server sends to admission webhooks"
    )]
    Malformed(serde_json::Error),
    #[error(
        "expected apiVersion {API_VERSION} and kind {KIND}, got {api_version:?} and {kind:?}: \
         list only v1 in the webhook's admissionReviewVersions"
    )]
    WrongVersion { api_version: String, kind: String },
    #[error("the AdmissionReview carries no request")]
    NoRequest,
}

impl ReviewError {
    pub fn metric_label(&self) -> &'static str {
        match self {
            ReviewError::TooLarge { .. } => "too_large",
            ReviewError::Empty => "empty",
            ReviewError::Malformed(_) => "malformed",
            ReviewError::WrongVersion { .. } => "wrong_version",
            ReviewError::NoRequest => "no_request",
        }
    }

    /// 200 for an oversized review, answered with an AdmissionReview that denies it (see
    /// [`error_body`]); 400 for a body that is no AdmissionReview at all.
    pub fn http_status(&self) -> u16 {
        match self {
            ReviewError::TooLarge { .. } => 200,
            _ => 400,
        }
    }

    /// An oversized review of which the server read `prefix` (its beginning) and knows the
    /// size if `size`.
    pub fn too_large(prefix: &[u8], size: Option<usize>) -> Self {
        ReviewError::TooLarge {
            size,
            uid: uid_from_prefix(prefix).unwrap_or_default(),
        }
    }
}

fn too_large_message(size: Option<usize>) -> String {
    let size = match size {
        Some(size) => format!("is {size} bytes"),
        None => format!("is over {MAX_REVIEW_BODY_BYTES} bytes"),
    };
    format!(
        "the AdmissionReview {size}; weft accepts at most {MAX_REVIEW_BODY_BYTES} bytes (3 MiB), \
         more than the API server stores for one object: shrink the object"
    )
}

/// How much of an oversized body the server reads to find the request's uid: the API server
/// writes `request.uid` first, so it is within the first few hundred bytes.
pub const UID_PREFIX_BYTES: usize = 64 * 1024;
/// Longest uid echoed (Kubernetes uids are 36 characters).
const MAX_UID_BYTES: usize = 128;

/// Everything the handler needs to answer and to report.
#[derive(Debug)]
pub struct Reviewed {
    /// HTTP status of the answer: 200 whenever the body is an AdmissionReview response.
    pub status: u16,
    /// JSON: an AdmissionReview response, or `{"error": "..."}` for 4xx.
    pub body: Vec<u8>,
    /// What was decided for a pod (for events and metrics); `None` when no pod was decided.
    pub decision: Option<Decision>,
    /// Namespace and name (or generateName) of the pod, for events.
    pub pod: Option<(String, String)>,
    /// Why the request could not be read, when it could not.
    pub error: Option<ReviewError>,
    /// A dry run (`kubectl --dry-run=server`): no side effect such as an Event may follow.
    pub dry_run: bool,
}

/// `(HTTP status, body)` for one request body. Namespaces come from the caller's cache.
pub fn review<F>(
    body: &[u8],
    namespaces: F,
    state: &MeshState,
    settings: &InjectorSettings,
) -> (u16, Vec<u8>)
where
    F: Fn(&str) -> Option<Arc<Namespace>>,
{
    let reviewed = review_detailed(body, namespaces, state, settings);
    (reviewed.status, reviewed.body)
}

/// As `review`, with the decision and pod kept for events and metrics.
pub fn review_detailed<F>(
    body: &[u8],
    namespaces: F,
    state: &MeshState,
    settings: &InjectorSettings,
) -> Reviewed
where
    F: Fn(&str) -> Option<Arc<Namespace>>,
{
    let request = match read_request(body) {
        Ok(request) => request,
        Err(error) => {
            return Reviewed {
                status: error.http_status(),
                body: error_body(&error),
                decision: None,
                pod: None,
                error: Some(error),
                dry_run: false,
            };
        }
    };
    let mut answer = Answer::allow(&request.uid);
    let (decision, pod) = admit(&request, &namespaces, state, settings, &mut answer);
    Reviewed {
        status: 200,
        body: answer.into_body(),
        decision,
        pod,
        error: None,
        dry_run: request.dry_run,
    }
}

/// The answer to a request that could not be read: `{"error": "..."}` (with a 4xx) for one
/// that is no AdmissionReview; for an oversized one an AdmissionReview that denies it with a
/// 413 status naming the limit, under the request's uid when it could be read, so the API
/// server shows the user `admission webhook "..." denied the request: <the limit>` instead of
/// a failed call.
pub fn error_body(error: &ReviewError) -> Vec<u8> {
    if let ReviewError::TooLarge { uid, .. } = error {
        let mut answer = Answer::allow(uid);
        answer.refuse(413, "RequestEntityTooLarge", error.to_string());
        return answer.into_body();
    }
    serde_json::to_vec(&serde_json::json!({ "error": error.to_string() })).unwrap_or_default()
}

/// `request.uid` of an AdmissionReview of which only the beginning is at hand: a scan of the
/// top-level object for `"request"` and, in it, for `"uid"`, skipping every other value
/// without building it. `None` when the prefix ends first or is no JSON object.
pub fn uid_from_prefix(prefix: &[u8]) -> Option<String> {
    let mut scan = PrefixScan {
        bytes: prefix,
        at: 0,
    };
    scan.enter_object()?;
    loop {
        let key = scan.key()?;
        if key == "request" {
            scan.enter_object()?;
            loop {
                let key = scan.key()?;
                if key == "uid" {
                    let uid = scan.string()?;
                    return (uid.len() <= MAX_UID_BYTES).then_some(uid);
                }
                scan.skip_value()?;
                scan.next_member()?;
            }
        }
        scan.skip_value()?;
        scan.next_member()?;
    }
}

/// A cursor over possibly truncated JSON; every step returns `None` at its end.
struct PrefixScan<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl PrefixScan<'_> {
    fn peek(&mut self) -> Option<u8> {
        while let Some(&b) = self.bytes.get(self.at) {
            if !b.is_ascii_whitespace() {
                return Some(b);
            }
            self.at += 1;
        }
        None
    }

    fn expect(&mut self, byte: u8) -> Option<()> {
        (self.peek()? == byte).then(|| self.at += 1)
    }

    fn enter_object(&mut self) -> Option<()> {
        self.expect(b'{')
    }

    /// A member's key and its colon.
    fn key(&mut self) -> Option<String> {
        let key = self.string()?;
        self.expect(b':')?;
        Some(key)
    }

    /// After a value: a comma and another member, or `None` at the object's end (the
    /// member looked for is not in it).
    fn next_member(&mut self) -> Option<()> {
        self.expect(b',')
    }

    /// A string, its escapes decoded (by serde_json, from its exact source).
    fn string(&mut self) -> Option<String> {
        let start = self.at;
        self.expect(b'"')?;
        loop {
            match *self.bytes.get(self.at)? {
                b'\\' => self.at += 2,
                b'"' => {
                    self.at += 1;
                    return serde_json::from_slice(self.bytes.get(start..self.at)?).ok();
                }
                _ => self.at += 1,
            }
        }
    }

    /// Skips one value of any kind: strings whole, brackets counted outside strings.
    fn skip_value(&mut self) -> Option<()> {
        match self.peek()? {
            b'"' => self.string().map(|_| ()),
            b'{' | b'[' => {
                let mut depth = 0usize;
                loop {
                    match *self.bytes.get(self.at)? {
                        b'"' => {
                            self.string()?;
                            continue;
                        }
                        b'{' | b'[' => depth += 1,
                        b'}' | b']' => {
                            depth -= 1;
                            if depth == 0 {
                                self.at += 1;
                                return Some(());
                            }
                        }
                        _ => {}
                    }
                    self.at += 1;
                }
            }
            _ => {
                // A number or a literal: up to the next delimiter.
                while !matches!(*self.bytes.get(self.at)?, b',' | b'}' | b']')
                    && !self.bytes[self.at].is_ascii_whitespace()
                {
                    self.at += 1;
                }
                Some(())
            }
        }
    }
}

/// The request of an `admission.k8s.io/v1` AdmissionReview, or why there is none. Every
/// endpoint reads its body through this, so all share the size cap and the error answers.
pub(super) fn read_request(body: &[u8]) -> Result<AdmissionRequest<DynamicObject>, ReviewError> {
    if body.len() > MAX_REVIEW_BODY_BYTES {
        return Err(ReviewError::too_large(
            &body[..UID_PREFIX_BYTES.min(body.len())],
            Some(body.len()),
        ));
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ReviewError::Empty);
    }
    let review: AdmissionReview<DynamicObject> =
        serde_json::from_slice(body).map_err(ReviewError::Malformed)?;
    if review.types.api_version != API_VERSION || review.types.kind != KIND {
        return Err(ReviewError::WrongVersion {
            api_version: review.types.api_version,
            kind: review.types.kind,
        });
    }
    review.try_into().map_err(|_| ReviewError::NoRequest)
}

/// Decides for the request and fills `answer`. Only pod creations are injected: the webhook is
/// registered for those, and anything else routed here by mistake passes untouched.
fn admit<F>(
    request: &AdmissionRequest<DynamicObject>,
    namespaces: &F,
    state: &MeshState,
    settings: &InjectorSettings,
    answer: &mut Answer,
) -> (Option<Decision>, Option<(String, String)>)
where
    F: Fn(&str) -> Option<Arc<Namespace>>,
{
    let is_pod = request.kind.group.is_empty()
        && request.kind.version == "v1"
        && request.kind.kind == "Pod"
        && request.resource.resource == "pods"
        && request.sub_resource.as_deref().is_none_or(str::is_empty);
    if !is_pod || request.operation != Operation::Create {
        return (None, None);
    }
    let Some(object) = &request.object else {
        answer.refuse(
            400,
            "BadRequest",
            "the pod CREATE request carries no object".into(),
        );
        return (None, None);
    };
    let pod: Pod = match serde_json::to_value(object).and_then(serde_json::from_value) {
        Ok(pod) => pod,
        Err(e) => {
            answer.refuse(
                400,
                "BadRequest",
                format!("the object is not a valid v1 Pod: {e}"),
            );
            return (None, None);
        }
    };
    let Some(namespace_name) = request
        .namespace
        .clone()
        .or_else(|| pod.metadata.namespace.clone())
        .filter(|n| !n.is_empty())
    else {
        answer.refuse(
            400,
            "BadRequest",
            "the pod CREATE request names no namespace".into(),
        );
        return (None, None);
    };
    let pod_name = pod
        .metadata
        .name
        .clone()
        .filter(|n| !n.is_empty())
        .or_else(|| pod.metadata.generate_name.clone())
        .unwrap_or_default();
    let subject = Some((namespace_name.clone(), pod_name));

    let namespace = if settings.never_injects(&namespace_name) {
        // System namespaces are decided by name alone; no need to have them cached.
        Arc::new(Namespace {
            metadata: kube::core::ObjectMeta {
                name: Some(namespace_name.clone()),
                ..Default::default()
            },
            ..Default::default()
        })
    } else if let Some(namespace) = namespaces(&namespace_name) {
        namespace
    } else {
        // Admitting without the namespace's labels could silently skip an enrolled pod;
        // refusing makes the pod's controller retry once the cache has caught up.
        answer.refuse(
            503,
            "ServiceUnavailable",
            format!(
                "weft has not seen namespace {namespace_name} yet (its cache is still syncing); \
                 retry in a few seconds. If this persists, run `weft check`: the operator may \
                 lack permission to watch namespaces"
            ),
        );
        return (None, subject);
    };

    let decision = decide(&pod, &namespace, state, settings);
    if let Some(conflict) = decision.conflict() {
        answer.warnings.push(conflict.to_string());
    }
    match &decision {
        Decision::Skip { reason, .. } => {
            answer.audit(format!("skipped: {reason}"));
        }
        Decision::Deny { message } => {
            answer.refuse(403, "Forbidden", message.clone());
        }
        Decision::Inject(injection) => match inject(&pod, injection, settings) {
            Ok(injected) => {
                answer.audit(format!(
                    "injected revision {} via {}",
                    injection.revision, injection.via
                ));
                answer.warnings.extend(injected.warnings);
                answer.set_patch(&injected.patch);
            }
            Err(e) => answer.refuse(400, "BadRequest", e.to_string()),
        },
    }
    (Some(decision), subject)
}

// === The response ===

/// The AdmissionReview response as the API server reads it (the patch base64-encoded, as Go
/// encodes `[]byte`). Shared by every endpoint of the webhook server.
pub(super) struct Answer {
    uid: String,
    allowed: bool,
    status: Option<Status>,
    patch: Option<String>,
    pub(super) warnings: Vec<String>,
    audit_annotations: BTreeMap<&'static str, String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ReviewOut<'a> {
    api_version: &'static str,
    kind: &'static str,
    response: ResponseOut<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ResponseOut<'a> {
    uid: &'a str,
    allowed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<&'a Status>,
    #[serde(skip_serializing_if = "Option::is_none")]
    patch_type: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    patch: Option<&'a str>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    warnings: &'a [String],
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    audit_annotations: &'a BTreeMap<&'static str, String>,
}

impl Answer {
    pub(super) fn allow(uid: &str) -> Self {
        Self {
            uid: uid.to_string(),
            allowed: true,
            status: None,
            patch: None,
            warnings: Vec::new(),
            audit_annotations: BTreeMap::new(),
        }
    }

    /// `kubectl` shows `admission webhook "..." denied the request: <message>`.
    pub(super) fn refuse(&mut self, code: u16, reason: &str, message: String) {
        self.allowed = false;
        self.patch = None;
        self.status = Some(Status::failure(&message, reason).with_code(code));
    }

    fn audit(&mut self, value: String) {
        self.audit_as(AUDIT_KEY, value);
    }

    /// An audit annotation under `key` (the API server prefixes it with the webhook's name).
    pub(super) fn audit_as(&mut self, key: &'static str, value: String) {
        self.audit_annotations.insert(key, value);
    }

    /// A JSON Patch to apply to the object, unless the answer is (or later becomes) a refusal.
    pub(super) fn set_patch(&mut self, patch: &json_patch::Patch) {
        match serde_json::to_vec(patch) {
            Ok(bytes) if self.allowed => {
                self.patch = Some(base64::engine::general_purpose::STANDARD.encode(bytes))
            }
            Ok(_) => {}
            Err(e) => self.refuse(
                500,
                "InternalError",
                format!("cannot encode the patch (a weft bug; please report it): {e}"),
            ),
        }
    }

    pub(super) fn into_body(self) -> Vec<u8> {
        let out = ReviewOut {
            api_version: API_VERSION,
            kind: KIND,
            response: ResponseOut {
                uid: &self.uid,
                allowed: self.allowed,
                status: self.status.as_ref(),
                patch_type: self.patch.as_ref().map(|_| "JSONPatch"),
                patch: self.patch.as_deref(),
                warnings: &self.warnings,
                audit_annotations: &self.audit_annotations,
            },
        };
        // Serializing these plain structs cannot fail; an empty body would still be a clear
        // failure at the API server rather than a panic here.
        serde_json::to_vec(&out).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::MeshConfigSpec;
    use serde_json::{Value, json};

    fn body(namespace: &str, labels: Value, dry_run: bool) -> Vec<u8> {
        let review = json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "u-1",
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "namespace": namespace,
                "operation": "CREATE",
                "userInfo": {"username": "alice"},
                "dryRun": dry_run,
                "object": {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": {"name": "web", "labels": labels},
                    "spec": {"containers": [{"name": "web", "image": "web"}]}
                }
            }
        });
        serde_json::to_vec(&review).unwrap()
    }

    fn world() -> MeshState {
        MeshState {
            tags: [("default".to_string(), "stable".to_string())].into(),
            meshconfigs: [("stable".to_string(), MeshConfigSpec::default())].into(),
            ..Default::default()
        }
    }

    fn plain_namespace(name: &str) -> Option<Arc<Namespace>> {
        Some(Arc::new(Namespace {
            metadata: kube::core::ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            ..Default::default()
        }))
    }

    fn run(body: &[u8]) -> Reviewed {
        review_detailed(
            body,
            plain_namespace,
            &world(),
            &InjectorSettings::default(),
        )
    }

    fn response(reviewed: &Reviewed) -> Value {
        let out: Value = serde_json::from_slice(&reviewed.body).unwrap();
        out["response"].clone()
    }

    #[test]
    fn injection_answers_with_a_base64_json_patch() {
        let reviewed = run(&body(
            "pets",
            json!({"sidecar.istio.io/inject": "true"}),
            false,
        ));
        assert_eq!(reviewed.status, 200);
        let response = response(&reviewed);
        assert_eq!(response["uid"], "u-1");
        assert_eq!(response["allowed"], true);
        assert_eq!(response["patchType"], "JSONPatch");
        let patch = base64::engine::general_purpose::STANDARD
            .decode(response["patch"].as_str().unwrap())
            .unwrap();
        let patch: json_patch::Patch = serde_json::from_slice(&patch).unwrap();
        assert!(!patch.is_empty());
        assert!(matches!(reviewed.decision, Some(Decision::Inject(_))));
        assert_eq!(reviewed.pod, Some(("pets".into(), "web".into())));
    }

    #[test]
    fn dry_run_is_answered_like_a_real_request() {
        let real = run(&body(
            "pets",
            json!({"sidecar.istio.io/inject": "true"}),
            false,
        ));
        let dry = run(&body(
            "pets",
            json!({"sidecar.istio.io/inject": "true"}),
            true,
        ));
        assert_eq!(real.body, dry.body);
    }

    #[test]
    fn denial_carries_a_403_status_with_the_message() {
        let reviewed = run(&body("pets", json!({"istio.io/rev": "nope"}), false));
        let response = response(&reviewed);
        assert_eq!(response["allowed"], false);
        assert_eq!(response["status"]["code"], 403);
        assert!(
            response["status"]["message"]
                .as_str()
                .unwrap()
                .contains("istio.io/rev=nope")
        );
        assert!(response.get("patch").is_none());
    }

    #[test]
    fn unknown_namespace_is_refused_for_a_retry_but_system_ones_pass() {
        let reviewed = review_detailed(
            &body("pets", json!({"sidecar.istio.io/inject": "true"}), false),
            |_| None,
            &world(),
            &InjectorSettings::default(),
        );
        assert_eq!(response(&reviewed)["status"]["code"], 503);
        let reviewed = review_detailed(
            &body(
                "kube-system",
                json!({"sidecar.istio.io/inject": "true"}),
                false,
            ),
            |_| None,
            &world(),
            &InjectorSettings::default(),
        );
        assert_eq!(response(&reviewed)["allowed"], true);
    }

    #[test]
    fn unreadable_bodies_say_why_with_a_4xx() {
        let cases: [(&[u8], u16, &str); 2] = [(b"", 400, "empty"), (b"{]", 400, "malformed")];
        for (input, status, label) in cases {
            let reviewed = run(input);
            assert_eq!(reviewed.status, status);
            assert_eq!(
                reviewed.error.as_ref().map(ReviewError::metric_label),
                Some(label)
            );
            let out: Value = serde_json::from_slice(&reviewed.body).unwrap();
            assert!(out["error"].as_str().is_some_and(|e| !e.is_empty()));
        }
    }

    #[test]
    fn an_oversized_review_is_denied_by_a_well_formed_review_under_its_uid() {
        let mut big = body("pets", json!({"istio-injection": "enabled"}), false);
        big.resize(MAX_REVIEW_BODY_BYTES + 1, b' ');
        let reviewed = run(&big);
        assert_eq!(reviewed.status, 200);
        assert_eq!(
            reviewed.error.as_ref().map(ReviewError::metric_label),
            Some("too_large")
        );
        let out: Value = serde_json::from_slice(&reviewed.body).unwrap();
        assert_eq!(out["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(out["kind"], "AdmissionReview");
        assert_eq!(out["response"]["uid"], "u-1");
        assert_eq!(out["response"]["allowed"], false);
        assert_eq!(out["response"]["status"]["code"], 413);
        let message = out["response"]["status"]["message"].as_str().unwrap();
        assert!(
            message.contains(&format!("is {} bytes", MAX_REVIEW_BODY_BYTES + 1))
                && message.contains(&format!("at most {MAX_REVIEW_BODY_BYTES} bytes")),
            "{message}"
        );

        // Without a readable uid the answer still has the shape, with an empty uid.
        let junk = vec![b'{'; MAX_REVIEW_BODY_BYTES + 1];
        let out: Value = serde_json::from_slice(&run(&junk).body).unwrap();
        assert_eq!(out["response"]["uid"], "");
        assert_eq!(out["response"]["allowed"], false);
    }

    #[test]
    fn the_uid_is_read_from_the_beginning_of_a_review_whatever_comes_first() {
        let uid = |text: &str| uid_from_prefix(text.as_bytes());
        let id = "u-1";
        // A whole review (its uid after the object here), cut anywhere after the uid.
        let review = String::from_utf8(body("pets", json!({}), false)).unwrap();
        let end = review.find(id).unwrap() + id.len() + 1;
        for cut in [end, end + 10, review.len()] {
            assert_eq!(uid(&review[..cut]).as_deref(), Some(id), "cut at {cut}");
        }
        assert_eq!(uid(&review[..end - 2]), None, "cut inside the uid");
        // Other members first, with strings holding brackets, quotes and keys named uid.
        let text = r#" { "kind" : "AdmissionReview", "x": {"uid": "no", "a": ["}", "\"{"]},
            "n": -1.5e3, "t": true, "request": {"kind": {"uid": "no"}, "uid": "u\u002d1", "object": {"#;
        assert_eq!(uid(text).as_deref(), Some("u-1"));
        for text in [
            "",
            "[",
            r#"{"request": "#,
            r#"{"request": {"kind": {}}}"#,
            r#"{"request": {"uid": 7}}"#,
            r#"{"request": []}"#,
            r#"{"uid": "top-level-is-not-the-request"}"#,
        ] {
            assert_eq!(uid(text), None, "{text}");
        }
        let long = format!(r#"{{"request": {{"uid": "{}"}}}}"#, "a".repeat(200));
        assert_eq!(uid(&long), None, "an absurd uid is not echoed");
    }
}
