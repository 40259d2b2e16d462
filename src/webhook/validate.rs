//! The validating webhook `weft-validator` (SPEC §3): keeps the revisions and tags of the mesh
//! consistent. A revision in use is not deleted, a tag never hides a revision or points at
//! nothing, and every revision shares one trust domain. Pure, like `review`: the request body
//! and a `MeshState` snapshot in, an AdmissionReview response out.

use kube::Resource;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, Operation};
use serde_json::Value;

use super::decision::known_revisions;
use super::review::{Answer, error_body, read_request};
use super::state::{InjectorSettings, MeshState};
use crate::api::{MeshConfig, RevisionTag};

/// The namespace controller deletes everything in a terminating namespace; refusing it would
/// leave `weft-system` stuck in Terminating, so uninstall never waits on the validator.
pub const NAMESPACE_CONTROLLER: &str = "system:serviceaccount:kube-system:namespace-controller";
/// Pods named in a refusal; the rest are counted.
const PODS_NAMED: usize = 5;

/// What the validator says about one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// Allowed; kubectl prints the warning.
    Warn(String),
    /// Refused; the message names what is wrong and what to change.
    Refuse(String),
}

impl Verdict {
    pub fn metric_label(&self) -> &'static str {
        match self {
            Verdict::Allow => "allow",
            Verdict::Warn(_) => "warn",
            Verdict::Refuse(_) => "refuse",
        }
    }
}

/// `(HTTP status, body)` for one request body sent to `/validate`.
pub fn validate(body: &[u8], mesh: &MeshState, settings: &InjectorSettings) -> (u16, Vec<u8>) {
    let request = match read_request(body) {
        Ok(request) => request,
        Err(error) => return (error.http_status(), error_body(&error)),
    };
    let mut answer = Answer::allow(&request.uid);
    match judge(&request, mesh, settings) {
        Verdict::Allow => {}
        Verdict::Warn(warning) => answer.warnings.push(warning),
        Verdict::Refuse(message) => answer.refuse(403, "Forbidden", message),
    }
    (200, answer.into_body())
}

/// The kind of weft object a request is about, if any.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    MeshConfig,
    RevisionTag,
}

impl Kind {
    /// MeshConfig or RevisionTag itself (not a subresource such as `status`).
    pub(super) fn of(request: &AdmissionRequest<DynamicObject>) -> Option<Self> {
        if request
            .sub_resource
            .as_deref()
            .is_some_and(|s| !s.is_empty())
        {
            return None;
        }
        let resource = &request.resource;
        if resource.group == MeshConfig::group(&()) && resource.resource == MeshConfig::plural(&())
        {
            Some(Kind::MeshConfig)
        } else if resource.group == RevisionTag::group(&())
            && resource.resource == RevisionTag::plural(&())
        {
            Some(Kind::RevisionTag)
        } else {
            None
        }
    }
}

/// The verdict for one request. Anything the rules do not cover is allowed.
pub fn judge(
    request: &AdmissionRequest<DynamicObject>,
    mesh: &MeshState,
    settings: &InjectorSettings,
) -> Verdict {
    let Some(kind) = Kind::of(request) else {
        return Verdict::Allow;
    };
    if request.namespace.as_deref() != Some(settings.operator_namespace.as_str()) {
        // weft reads revisions and tags only in its own namespace; elsewhere they do nothing.
        return match request.operation {
            Operation::Create | Operation::Update => Verdict::Warn(format!(
                "weft reads MeshConfigs and RevisionTags only in namespace {}; this one has no \
                 effect",
                settings.operator_namespace
            )),
            _ => Verdict::Allow,
        };
    }
    let name = object_name(request);
    match (kind, &request.operation) {
        (Kind::MeshConfig, Operation::Delete) => {
            let user = request.user_info.username.as_deref().unwrap_or_default();
            if user == NAMESPACE_CONTROLLER {
                return Verdict::Allow;
            }
            meshconfig_delete(&name, mesh)
        }
        (Kind::MeshConfig, Operation::Create | Operation::Update) => {
            let Some(object) = &request.object else {
                return Verdict::Allow;
            };
            let old = request.old_object.as_ref().and_then(trust_domain_of);
            meshconfig_write(&name, trust_domain_of(object), old, mesh, settings)
        }
        (Kind::RevisionTag, Operation::Create | Operation::Update) => {
            let revision = request
                .object
                .as_ref()
                .and_then(|o| o.data.pointer("/spec/revision"))
                .and_then(Value::as_str)
                .unwrap_or_default();
            revisiontag_write(&name, revision, mesh, settings)
        }
        _ => Verdict::Allow,
    }
}

/// The object's name: the request carries it, except on CREATE with `generateName`, where the
/// object already holds the generated one by the time validating webhooks run.
fn object_name(request: &AdmissionRequest<DynamicObject>) -> String {
    request
        .object
        .as_ref()
        .and_then(|o| o.metadata.name.clone())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| request.name.clone())
}

fn trust_domain_of(object: &DynamicObject) -> Option<&str> {
    object
        .data
        .pointer("/spec/certificate/trustDomain")
        .and_then(Value::as_str)
}

// === MeshConfig ===

/// A revision is deleted only once no tag points at it and no pod runs it.
fn meshconfig_delete(name: &str, mesh: &MeshState) -> Verdict {
    let tags: Vec<&str> = mesh
        .tags
        .iter()
        .filter(|(_, revision)| *revision == name)
        .map(|(tag, _)| tag.as_str())
        .collect();
    let pods = mesh
        .revision_pods
        .get(name)
        .map(Vec::as_slice)
        .unwrap_or_default();
    if tags.is_empty() && pods.is_empty() {
        return Verdict::Allow;
    }
    let other = mesh
        .meshconfigs
        .keys()
        .find(|r| *r != name)
        .map_or("<other>", String::as_str);

    let mut users = Vec::new();
    let mut steps = Vec::new();
    if !tags.is_empty() {
        users.push(match tags.as_slice() {
            [tag] => format!("RevisionTag {tag} points at it"),
            _ => format!("RevisionTags {} point at it", tags.join(", ")),
        });
        let moves: Vec<String> = tags
            .iter()
            .map(|tag| format!("`weft tag set {tag} --revision {other} --overwrite`"))
            .collect();
        steps.push(format!(
            "move {} to another revision ({})",
            if tags.len() == 1 {
                "the tag"
            } else {
                "each tag"
            },
            moves.join(", ")
        ));
    }
    if !pods.is_empty() {
        let mut named = pods
            .iter()
            .take(PODS_NAMED)
            .cloned()
            .collect::<Vec<_>>()
            .join(", ");
        if pods.len() > PODS_NAMED {
            named.push_str(&format!(" and {} more", pods.len() - PODS_NAMED));
        }
        let count = match pods.len() {
            1 => "1 pod runs it".to_string(),
            n => format!("{n} pods run it"),
        };
        users.push(format!("{count} ({named})"));
        steps.push(format!(
            "restart the pods (`kubectl rollout restart`) once their namespace no longer \
             selects {name} (relabel any `istio.io/rev={name}`), so they run another revision"
        ));
    }
    Verdict::Refuse(format!(
        "MeshConfig {name} is still in use: {}. To retire it, {}, then delete {name}. \
         `weft namespace list` shows what uses each revision",
        users.join("; "),
        steps.join(", ")
    ))
}

/// Every revision shares one trust domain (the one the mesh CA issues identities in). An
/// update that leaves the trust domain as it was is not held against the rest of the mesh.
fn meshconfig_write(
    name: &str,
    trust_domain: Option<&str>,
    old_trust_domain: Option<&str>,
    mesh: &MeshState,
    settings: &InjectorSettings,
) -> Verdict {
    let shadowed = mesh.tags.get(name).map(|revision| {
        format!(
            "RevisionTag {name} (revision {revision}) has the same name and wins: \
             `istio.io/rev={name}` resolves to revision {revision}, not to this MeshConfig. \
             Give the revision another name to use it directly"
        )
    });
    let Some(trust_domain) = trust_domain else {
        return shadowed.map_or(Verdict::Allow, Verdict::Warn);
    };
    if old_trust_domain == Some(trust_domain) {
        return shadowed.map_or(Verdict::Allow, Verdict::Warn);
    }
    let (expected, source) = mesh_trust_domain(name, mesh, settings);
    if trust_domain == expected {
        return shadowed.map_or(Verdict::Allow, Verdict::Warn);
    }
    Verdict::Refuse(format!(
        "MeshConfig {name} sets spec.certificate.trustDomain to {trust_domain:?}, but the mesh's \
         trust domain is {expected:?} ({source}). Every revision must use the trust domain the \
         mesh CA issues identities in, or proxies of different revisions cannot verify each \
         other: set spec.certificate.trustDomain to {expected:?}, or leave it out"
    ))
}

/// The trust domain every revision other than `name` agrees on, with where it comes from; the
/// operator's `--trust-domain` when none names one, or when they disagree among themselves.
fn mesh_trust_domain(
    name: &str,
    mesh: &MeshState,
    settings: &InjectorSettings,
) -> (String, String) {
    let mut named: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
    for (revision, spec) in &mesh.meshconfigs {
        let domain = spec
            .certificate
            .as_ref()
            .and_then(|c| c.trust_domain.as_deref())
            .filter(|d| !d.is_empty());
        if let (true, Some(domain)) = (revision != name, domain) {
            named.entry(domain).or_default().push(revision);
        }
    }
    match named.into_iter().collect::<Vec<_>>().as_slice() {
        [(domain, revisions)] => {
            let which = match revisions.as_slice() {
                [one] => format!("MeshConfig {one} names it"),
                many => format!("MeshConfigs {} name it", many.join(", ")),
            };
            (domain.to_string(), which)
        }
        _ => (
            settings.trust_domain.clone(),
            "the operator's --trust-domain".into(),
        ),
    }
}

// === RevisionTag ===

fn revisiontag_write(
    name: &str,
    revision: &str,
    mesh: &MeshState,
    settings: &InjectorSettings,
) -> Verdict {
    if revision.is_empty() {
        return Verdict::Refuse(format!(
            "RevisionTag {name} has an empty spec.revision: set it to the revision (MeshConfig \
             name) the tag points at; known revisions: {}",
            known_revisions(mesh)
        ));
    }
    if mesh.meshconfigs.contains_key(name) {
        return Verdict::Refuse(format!(
            "RevisionTag {name} has the name of revision (MeshConfig) {name}: the tag would hide \
             the revision, as `istio.io/rev={name}` resolves tags first. Choose a tag name that \
             no MeshConfig has (revisions: {})",
            known_revisions(mesh)
        ));
    }
    if !mesh.meshconfigs.contains_key(revision) {
        // Accepted (the revision may be created next); the tag's status says Resolved=False.
        return Verdict::Warn(format!(
            "revision {revision} does not exist (yet): pods that ask for tag {name} are refused \
             until MeshConfig {revision} is created in {}. Known revisions: {}",
            settings.operator_namespace,
            known_revisions(mesh)
        ));
    }
    Verdict::Allow
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::MeshConfigSpec;
    use crate::api::meshconfig::CertificateSettings;
    use serde_json::json;

    fn spec(trust_domain: Option<&str>) -> MeshConfigSpec {
        MeshConfigSpec {
            certificate: trust_domain.map(|d| CertificateSettings {
                trust_domain: Some(d.into()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// stable (cluster.local) and canary (no trust domain); tag default → stable.
    fn mesh() -> MeshState {
        MeshState {
            tags: [("default".to_string(), "stable".to_string())].into(),
            meshconfigs: [
                ("stable".to_string(), spec(Some("cluster.local"))),
                ("canary".to_string(), spec(None)),
            ]
            .into(),
            ..Default::default()
        }
    }

    struct Req {
        resource: &'static str,
        kind: &'static str,
        operation: &'static str,
        name: String,
        namespace: &'static str,
        user: &'static str,
        object: Option<Value>,
        old: Option<Value>,
    }

    fn req(resource: &'static str, operation: &'static str, name: &str) -> Req {
        Req {
            resource,
            kind: if resource == "meshconfigs" {
                "MeshConfig"
            } else {
                "RevisionTag"
            },
            operation,
            name: name.into(),
            namespace: "weft-system",
            user: "alice",
            object: None,
            old: None,
        }
    }

    fn object(kind: &str, name: &str, spec: Value) -> Value {
        json!({
            "apiVersion": "mesh.weft.dev/v1alpha1",
            "kind": kind,
            "metadata": {"name": name, "namespace": "weft-system"},
            "spec": spec,
        })
    }

    impl Req {
        fn spec(mut self, spec: Value) -> Self {
            self.object = Some(object(self.kind, &self.name, spec));
            self
        }

        fn old_spec(mut self, spec: Value) -> Self {
            self.old = Some(object(self.kind, &self.name, spec));
            self
        }

        fn by(mut self, user: &'static str) -> Self {
            self.user = user;
            self
        }

        fn body(&self) -> Vec<u8> {
            serde_json::to_vec(&json!({
                "apiVersion": "admission.k8s.io/v1",
                "kind": "AdmissionReview",
                "request": {
                    "uid": "u-1",
                    "kind": {"group": "mesh.weft.dev", "version": "v1alpha1", "kind": self.kind},
                    "resource": {"group": "mesh.weft.dev", "version": "v1alpha1",
                                 "resource": self.resource},
                    "name": self.name,
                    "namespace": self.namespace,
                    "operation": self.operation,
                    "userInfo": {"username": self.user},
                    "object": self.object,
                    "oldObject": self.old,
                }
            }))
            .unwrap()
        }

        fn judged(&self, mesh: &MeshState) -> Verdict {
            let request = read_request(&self.body()).unwrap();
            judge(&request, mesh, &InjectorSettings::default())
        }
    }

    fn refused(verdict: Verdict) -> String {
        match verdict {
            Verdict::Refuse(message) => message,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    fn pods(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("pets/web-{i}")).collect()
    }

    #[test]
    fn deleting_a_revision_a_tag_points_at_is_refused_naming_the_tag_and_the_fix() {
        let message = refused(req("meshconfigs", "DELETE", "stable").judged(&mesh()));
        assert!(
            message.contains("RevisionTag default points at it"),
            "{message}"
        );
        assert!(
            message.contains("`weft tag set default --revision canary --overwrite`"),
            "{message}"
        );
        assert!(message.contains("then delete stable"), "{message}");
    }

    #[test]
    fn deleting_a_revision_pods_run_counts_them_and_names_five() {
        let mut world = mesh();
        world.revision_pods.insert("canary".into(), pods(7));
        let message = refused(req("meshconfigs", "DELETE", "canary").judged(&world));
        assert!(message.contains("7 pods run it"), "{message}");
        assert!(message.contains("pets/web-0, pets/web-1"), "{message}");
        assert!(message.contains("pets/web-4 and 2 more"), "{message}");
        assert!(!message.contains("pets/web-5"), "{message}");
        assert!(message.contains("rollout restart"), "{message}");
        assert!(
            !message.contains("weft tag set"),
            "no tag to move: {message}"
        );
    }

    #[test]
    fn tags_and_pods_are_both_listed() {
        let mut world = mesh();
        world.tags.insert("prod".into(), "stable".into());
        world.revision_pods.insert("stable".into(), pods(1));
        let message = refused(req("meshconfigs", "DELETE", "stable").judged(&world));
        assert!(
            message.contains("RevisionTags default, prod point at it; 1 pod runs it (pets/web-0)"),
            "{message}"
        );
        assert!(message.contains("weft tag set prod"), "{message}");
    }

    #[test]
    fn deleting_an_unused_revision_is_allowed() {
        assert_eq!(
            req("meshconfigs", "DELETE", "canary").judged(&mesh()),
            Verdict::Allow
        );
    }

    #[test]
    fn the_namespace_controller_may_delete_a_revision_in_use() {
        let mut world = mesh();
        world.revision_pods.insert("stable".into(), pods(3));
        let verdict = req("meshconfigs", "DELETE", "stable")
            .by(NAMESPACE_CONTROLLER)
            .judged(&world);
        assert_eq!(verdict, Verdict::Allow);
    }

    #[test]
    fn a_tag_named_like_a_revision_is_refused() {
        let message = refused(
            req("revisiontags", "CREATE", "stable")
                .spec(json!({"revision": "canary"}))
                .judged(&mesh()),
        );
        assert!(
            message.contains("name of revision (MeshConfig) stable"),
            "{message}"
        );
        let update = req("revisiontags", "UPDATE", "canary")
            .spec(json!({"revision": "stable"}))
            .judged(&mesh());
        assert!(matches!(update, Verdict::Refuse(_)), "{update:?}");
    }

    #[test]
    fn a_tag_without_a_revision_is_refused() {
        for spec in [
            json!({"revision": ""}),
            json!({}),
            json!({"revision": null}),
        ] {
            let message = refused(
                req("revisiontags", "CREATE", "prod")
                    .spec(spec)
                    .judged(&mesh()),
            );
            assert!(message.contains("empty spec.revision"), "{message}");
            assert!(message.contains("canary, stable"), "{message}");
        }
    }

    #[test]
    fn a_tag_to_a_missing_revision_is_accepted_with_a_warning() {
        let verdict = req("revisiontags", "CREATE", "prod")
            .spec(json!({"revision": "gone"}))
            .judged(&mesh());
        assert!(
            matches!(&verdict, Verdict::Warn(w) if w.contains("gone")),
            "{verdict:?}"
        );
        let verdict = req("revisiontags", "UPDATE", "default")
            .spec(json!({"revision": "canary"}))
            .judged(&mesh());
        assert_eq!(verdict, Verdict::Allow);
    }

    #[test]
    fn a_trust_domain_other_than_the_mesh_one_is_refused_saying_which_to_use() {
        let message = refused(
            req("meshconfigs", "CREATE", "next")
                .spec(json!({"certificate": {"trustDomain": "other.example"}}))
                .judged(&mesh()),
        );
        assert!(message.contains("\"other.example\""), "{message}");
        assert!(
            message.contains("set spec.certificate.trustDomain to \"cluster.local\""),
            "{message}"
        );
        assert!(message.contains("MeshConfig stable names it"), "{message}");
    }

    #[test]
    fn the_same_trust_domain_or_none_is_accepted() {
        for spec in [
            json!({"certificate": {"trustDomain": "cluster.local"}}),
            json!({"certificate": {"workloadCertTTL": "12h"}}),
            json!({}),
        ] {
            let verdict = req("meshconfigs", "CREATE", "next")
                .spec(spec)
                .judged(&mesh());
            assert_eq!(verdict, Verdict::Allow);
        }
    }

    #[test]
    fn with_no_revision_naming_one_the_operators_trust_domain_decides() {
        let world = MeshState {
            meshconfigs: [("canary".to_string(), spec(None))].into(),
            ..Default::default()
        };
        let settings = InjectorSettings {
            trust_domain: "corp.example".into(),
            ..Default::default()
        };
        let ask = |domain: &str| {
            let body = req("meshconfigs", "CREATE", "next")
                .spec(json!({"certificate": {"trustDomain": domain}}))
                .body();
            judge(&read_request(&body).unwrap(), &world, &settings)
        };
        assert_eq!(ask("corp.example"), Verdict::Allow);
        let message = refused(ask("cluster.local"));
        assert!(message.contains("operator's --trust-domain"), "{message}");
    }

    #[test]
    fn a_revision_alone_in_naming_a_trust_domain_must_keep_the_operators() {
        // Updating stable itself: the other revisions name none, so the operator's flag rules.
        let message = refused(
            req("meshconfigs", "UPDATE", "stable")
                .spec(json!({"certificate": {"trustDomain": "other.example"}}))
                .old_spec(json!({"certificate": {"trustDomain": "cluster.local"}}))
                .judged(&mesh()),
        );
        assert!(message.contains("operator's --trust-domain"), "{message}");
    }

    #[test]
    fn an_update_that_keeps_its_trust_domain_is_not_held_against_the_mesh() {
        let verdict = req("meshconfigs", "UPDATE", "legacy")
            .spec(
                json!({"certificate": {"trustDomain": "old.example"}, "mtls": {"mode": "STRICT"}}),
            )
            .old_spec(json!({"certificate": {"trustDomain": "old.example"}}))
            .judged(&mesh());
        assert_eq!(verdict, Verdict::Allow);
    }

    #[test]
    fn a_revision_named_like_a_tag_is_accepted_with_a_warning() {
        let verdict = req("meshconfigs", "CREATE", "default")
            .spec(json!({}))
            .judged(&mesh());
        assert!(
            matches!(&verdict, Verdict::Warn(w) if w.contains("RevisionTag default")),
            "{verdict:?}"
        );
    }

    #[test]
    fn other_namespaces_kinds_and_subresources_pass() {
        let mut elsewhere = req("meshconfigs", "DELETE", "stable");
        elsewhere.namespace = "pets";
        assert_eq!(elsewhere.judged(&mesh()), Verdict::Allow);

        let mut status =
            serde_json::from_slice::<Value>(&req("meshconfigs", "DELETE", "stable").body())
                .unwrap();
        status["request"]["subResource"] = json!("status");
        let request = read_request(&serde_json::to_vec(&status).unwrap()).unwrap();
        assert_eq!(
            judge(&request, &mesh(), &InjectorSettings::default()),
            Verdict::Allow
        );

        let mut pod = status;
        pod["request"]["subResource"] = Value::Null;
        pod["request"]["resource"] = json!({"group": "", "version": "v1", "resource": "pods"});
        let request = read_request(&serde_json::to_vec(&pod).unwrap()).unwrap();
        assert_eq!(
            judge(&request, &mesh(), &InjectorSettings::default()),
            Verdict::Allow
        );
    }

    #[test]
    fn the_answer_is_an_admission_review_with_a_403_for_refusals() {
        let (status, body) = validate(
            &req("meshconfigs", "DELETE", "stable").body(),
            &mesh(),
            &InjectorSettings::default(),
        );
        assert_eq!(status, 200);
        let out: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(out["kind"], "AdmissionReview");
        assert_eq!(out["response"]["uid"], "u-1");
        assert_eq!(out["response"]["allowed"], false);
        assert_eq!(out["response"]["status"]["code"], 403);
        assert!(
            out["response"]["status"]["message"]
                .as_str()
                .unwrap()
                .contains("default")
        );

        let (_, body) = validate(
            &req("revisiontags", "CREATE", "prod")
                .spec(json!({"revision": "gone"}))
                .body(),
            &mesh(),
            &InjectorSettings::default(),
        );
        let out: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(out["response"]["allowed"], true);
        assert!(
            out["response"]["warnings"][0]
                .as_str()
                .unwrap()
                .contains("gone")
        );
    }

    #[test]
    fn unreadable_bodies_get_the_same_4xx_as_the_injector() {
        let too_big = vec![b'{'; crate::webhook::MAX_REVIEW_BODY_BYTES + 1];
        let cases: [(&[u8], u16); 3] = [
            (b"", 400),
            (b"{]", 400),
            (
                br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#,
                400,
            ),
        ];
        for (input, want) in cases {
            let (status, body) = validate(input, &mesh(), &InjectorSettings::default());
            assert_eq!(status, want);
            let out: Value = serde_json::from_slice(&body).unwrap();
            assert!(out["error"].as_str().is_some_and(|e| !e.is_empty()));
        }
        // Too large: denied by an AdmissionReview naming the limit, as the injector does.
        let (status, body) = validate(&too_big, &mesh(), &InjectorSettings::default());
        assert_eq!(status, 200);
        let out: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(out["response"]["allowed"], false);
        assert_eq!(out["response"]["status"]["code"], 413);
    }

    #[test]
    fn no_object_shape_makes_it_panic() {
        let odd = [
            json!(null),
            json!("spec"),
            json!({"revision": 7}),
            json!({"certificate": "x"}),
            json!({"certificate": {"trustDomain": 3}}),
            json!([1, 2]),
        ];
        for spec in odd {
            for (resource, op) in [
                ("meshconfigs", "CREATE"),
                ("meshconfigs", "UPDATE"),
                ("meshconfigs", "DELETE"),
                ("revisiontags", "CREATE"),
            ] {
                let body = req(resource, op, "x").spec(spec.clone()).body();
                let (status, _) = validate(&body, &mesh(), &InjectorSettings::default());
                assert_eq!(status, 200);
            }
        }
    }
}
