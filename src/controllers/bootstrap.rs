//! First start (SPEC §1 story 1): create the default revision and the `default` tag once, and
//! remember that on the operator's Namespace, so a user's later deletion or edit stands.
//! Creates only (never updates), so two replicas racing both succeed and nothing is overwritten.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Namespace, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};

use super::{ControllerSettings, Error, FIELD_MANAGER, RETRY, is_conflict};
use crate::api::meshconfig::{
    AccessLogFormat, AccessLogSettings, CertificateSettings, ImagePullPolicy, LogLevel,
    MtlsSettings, OutboundTrafficPolicy, ProxySettings, TrafficSettings,
};
use crate::api::{MeshConfig, MeshConfigSpec, MtlsMode, RevisionTag, RevisionTagSpec};
use crate::contract;

/// On the operator's Namespace: the revision the operator created on its first start.
pub const ANNOTATION_BOOTSTRAPPED: &str = "weft.dev/bootstrapped";

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Bootstrap {
    /// This call created (or found already created) the revision and tag and recorded it.
    Done { revision: String },
    /// An earlier start did it; nothing was touched.
    AlreadyDone { revision: String },
}

/// The first revision's spec: every built-in default written out, so `kubectl get -o yaml`
/// shows what the revision does (and canaries copy it, SPEC §3).
pub fn built_in_spec(proxy_image: &str, trust_domain: &str) -> MeshConfigSpec {
    MeshConfigSpec {
        proxy: Some(ProxySettings {
            image: Some(proxy_image.to_string()),
            image_pull_policy: Some(ImagePullPolicy::IfNotPresent),
            resources: Some(ResourceRequirements {
                requests: Some(BTreeMap::from([
                    ("cpu".to_string(), Quantity("10m".into())),
                    ("memory".to_string(), Quantity("16Mi".into())),
                ])),
                ..Default::default()
            }),
            log_level: Some(LogLevel::Info),
            drain_duration: Some("5s".into()),
            concurrency: Some(2),
        }),
        mtls: Some(MtlsSettings {
            mode: Some(MtlsMode::Permissive),
        }),
        traffic: Some(TrafficSettings {
            outbound_traffic_policy: Some(OutboundTrafficPolicy::AllowAny),
            enable_permissive_traffic_policy_mode: Some(true),
            exclude_outbound_ip_ranges: Some(Vec::new()),
            exclude_inbound_ports: Some(Vec::new()),
            exclude_outbound_ports: Some(Vec::new()),
            dns_capture: Some(false),
        }),
        certificate: Some(CertificateSettings {
            trust_domain: Some(trust_domain.to_string()),
            workload_cert_ttl: Some("24h".into()),
            renew_at: Some(0.5),
        }),
        access_log: Some(AccessLogSettings {
            enabled: Some(false),
            format: Some(AccessLogFormat::Json),
        }),
    }
}

/// The revision an earlier start recorded on the operator's namespace, if any.
pub fn bootstrapped_revision(namespace: &Namespace) -> Option<&str> {
    namespace
        .metadata
        .annotations
        .as_ref()?
        .get(ANNOTATION_BOOTSTRAPPED)
        .map(String::as_str)
}

/// On the very first start only: create MeshConfig `default_revision` and RevisionTag
/// `default` pointing at it, then annotate the operator's Namespace. Existing objects
/// (AlreadyExists) are left as they are. A crash before the annotation is harmless: the next
/// start finds the objects and records them.
pub async fn first_start(
    client: Client,
    namespace: &str,
    default_revision: &str,
    proxy_image: &str,
    trust_domain: &str,
) -> Result<Bootstrap, Error> {
    let namespaces = Api::<Namespace>::all(client.clone());
    let ns = namespaces
        .get(namespace)
        .await
        .map_err(Error::kube(format!("reading namespace {namespace}")))?;
    if let Some(revision) = bootstrapped_revision(&ns) {
        return Ok(Bootstrap::AlreadyDone {
            revision: revision.to_string(),
        });
    }

    let create = PostParams {
        field_manager: Some(FIELD_MANAGER.to_string()),
        ..Default::default()
    };
    let meshconfig = MeshConfig {
        metadata: ObjectMeta {
            name: Some(default_revision.to_string()),
            namespace: Some(namespace.to_string()),
            ..Default::default()
        },
        spec: built_in_spec(proxy_image, trust_domain),
        status: None,
    };
    match Api::<MeshConfig>::namespaced(client.clone(), namespace)
        .create(&create, &meshconfig)
        .await
    {
        Ok(_) => tracing::info!(revision = default_revision, "created the first revision"),
        Err(e) if is_conflict(&e) => {}
        Err(e) => {
            return Err(Error::kube(format!(
                "creating MeshConfig {namespace}/{default_revision}"
            ))(e));
        }
    }
    let tag = RevisionTag {
        metadata: ObjectMeta {
            name: Some(contract::DEFAULT_TAG.to_string()),
            namespace: Some(namespace.to_string()),
            ..Default::default()
        },
        spec: RevisionTagSpec {
            revision: default_revision.to_string(),
        },
        status: None,
    };
    match Api::<RevisionTag>::namespaced(client.clone(), namespace)
        .create(&create, &tag)
        .await
    {
        Ok(_) => tracing::info!(revision = default_revision, "created the default tag"),
        Err(e) if is_conflict(&e) => {}
        Err(e) => {
            return Err(Error::kube(format!(
                "creating RevisionTag {namespace}/{}",
                contract::DEFAULT_TAG
            ))(e));
        }
    }

    // A merge patch of the one annotation, not server-side apply: an apply by manager `weft`
    // would drop any other field of the Namespace that `weft` applied elsewhere.
    let patch = serde_json::json!({
        "metadata": { "annotations": { ANNOTATION_BOOTSTRAPPED: default_revision } }
    });
    namespaces
        .patch(
            namespace,
            &PatchParams {
                field_manager: Some(FIELD_MANAGER.to_string()),
                ..Default::default()
            },
            &Patch::Merge(&patch),
        )
        .await
        .map_err(Error::kube(format!(
            "annotating namespace {namespace} with {ANNOTATION_BOOTSTRAPPED}"
        )))?;
    Ok(Bootstrap::Done {
        revision: default_revision.to_string(),
    })
}

/// `first_start` until it succeeds (the CRDs or RBAC may lag behind the operator at install).
pub async fn first_start_with_retry(client: Client, settings: ControllerSettings) {
    loop {
        match first_start(
            client.clone(),
            &settings.namespace,
            &settings.default_revision,
            &settings.proxy_image,
            &settings.trust_domain,
        )
        .await
        {
            Ok(outcome) => {
                tracing::info!(?outcome, "bootstrap");
                return;
            }
            Err(e) => {
                tracing::warn!(
                    reason = e.metric_label(),
                    "bootstrap failed (retrying): {e}"
                );
                tokio::time::sleep(RETRY).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::webhook::{EffectiveMeshConfig, InjectorSettings};
    use std::sync::{Arc, Mutex};

    #[test]
    fn built_in_spec_spells_out_what_the_injector_defaults_to() {
        let settings = InjectorSettings::default();
        let spec = built_in_spec(&settings.proxy_image, contract::DEFAULT_TRUST_DOMAIN);
        assert_eq!(
            EffectiveMeshConfig::resolve(&spec, &settings),
            EffectiveMeshConfig::resolve(&MeshConfigSpec::default(), &settings)
        );
        // Every section is present, so the spec shows it.
        let json = serde_json::to_value(&spec).unwrap_or_default();
        for section in ["proxy", "mtls", "traffic", "certificate", "accessLog"] {
            assert!(json.get(section).is_some(), "{section} missing: {json}");
        }
        assert_eq!(json["mtls"]["mode"], "PERMISSIVE");
        assert_eq!(json["certificate"]["workloadCertTTL"], "24h");
        assert!(crate::controllers::meshconfig::unsupported_settings(&spec).is_empty());
    }

    // === The exact API calls, against a fake API server ===

    type Calls = Arc<Mutex<Vec<String>>>;

    /// A client whose API server answers from `respond(method, path)` with (status, body), and
    /// records "METHOD path" of every request.
    fn fake_client(
        respond: impl Fn(&str, &str) -> (u16, serde_json::Value) + Send + Sync + Clone + 'static,
    ) -> (Client, Calls) {
        let calls: Calls = Arc::default();
        let recorded = calls.clone();
        let service = tower::service_fn(move |req: hyper::Request<kube::client::Body>| {
            let (method, path) = (req.method().to_string(), req.uri().path().to_string());
            if let Ok(mut calls) = recorded.lock() {
                calls.push(format!("{method} {path}"));
            }
            let (status, body) = respond(&method, &path);
            async move {
                hyper::Response::builder()
                    .status(status)
                    .header("content-type", "application/json")
                    .body(kube::client::Body::from(body.to_string().into_bytes()))
            }
        });
        (Client::new(service, "default"), calls)
    }

    fn namespace_json(annotations: serde_json::Value) -> serde_json::Value {
        serde_json::json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": "weft-system", "annotations": annotations}})
    }

    fn already_exists() -> (u16, serde_json::Value) {
        (
            409,
            serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                "message": "already exists", "reason": "AlreadyExists", "code": 409}),
        )
    }

    fn calls(c: &Calls) -> Vec<String> {
        c.lock().map(|c| c.clone()).unwrap_or_default()
    }

    const MC: &str = "/apis/mesh.weft.dev/v1alpha1/namespaces/weft-system/meshconfigs";
    const TAGS: &str = "/apis/mesh.weft.dev/v1alpha1/namespaces/weft-system/revisiontags";
    const NS: &str = "/api/v1/namespaces/weft-system";

    async fn bootstrap(client: Client) -> Result<Bootstrap, Error> {
        first_start(client, "weft-system", "stable", "img:1", "cluster.local").await
    }

    #[tokio::test]
    async fn first_start_creates_revision_and_tag_then_records_it() {
        let (client, c) = fake_client(|method, path| match (method, path) {
            ("GET", NS) => (200, namespace_json(serde_json::json!({}))),
            ("POST", MC) => (
                201,
                serde_json::json!({"apiVersion": "mesh.weft.dev/v1alpha1", "kind": "MeshConfig", "metadata": {"name": "stable"}, "spec": {}}),
            ),
            ("POST", TAGS) => (
                201,
                serde_json::json!({"apiVersion": "mesh.weft.dev/v1alpha1", "kind": "RevisionTag", "metadata": {"name": "default"}, "spec": {"revision": "stable"}}),
            ),
            ("PATCH", NS) => (
                200,
                namespace_json(serde_json::json!({"weft.dev/bootstrapped": "stable"})),
            ),
            _ => (404, serde_json::json!({})),
        });
        let outcome = bootstrap(client).await;
        assert!(
            matches!(outcome, Ok(Bootstrap::Done { ref revision }) if revision == "stable"),
            "{outcome:?}"
        );
        assert_eq!(
            calls(&c),
            [
                format!("GET {NS}"),
                format!("POST {MC}"),
                format!("POST {TAGS}"),
                format!("PATCH {NS}")
            ]
        );
    }

    #[tokio::test]
    async fn a_racing_replica_finds_the_objects_and_still_records_them() {
        let (client, c) = fake_client(|method, path| match (method, path) {
            ("GET", NS) => (200, namespace_json(serde_json::json!({}))),
            ("POST", MC) | ("POST", TAGS) => already_exists(),
            ("PATCH", NS) => (
                200,
                namespace_json(serde_json::json!({"weft.dev/bootstrapped": "stable"})),
            ),
            _ => (404, serde_json::json!({})),
        });
        assert!(matches!(
            bootstrap(client).await,
            Ok(Bootstrap::Done { .. })
        ));
        assert_eq!(calls(&c).len(), 4);
    }

    #[tokio::test]
    async fn once_recorded_nothing_is_recreated() {
        let (client, c) = fake_client(|method, path| match (method, path) {
            ("GET", NS) => (
                200,
                namespace_json(serde_json::json!({"weft.dev/bootstrapped": "stable"})),
            ),
            _ => (500, serde_json::json!({})),
        });
        let outcome = bootstrap(client).await;
        assert!(
            matches!(outcome, Ok(Bootstrap::AlreadyDone { ref revision }) if revision == "stable"),
            "{outcome:?}"
        );
        assert_eq!(calls(&c), [format!("GET {NS}")]);
    }

    #[tokio::test]
    async fn a_failed_create_is_an_error_and_records_nothing() {
        let (client, c) = fake_client(|method, path| match (method, path) {
            ("GET", NS) => (200, namespace_json(serde_json::json!({}))),
            _ => (
                403,
                serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                    "message": "forbidden", "reason": "Forbidden", "code": 403}),
            ),
        });
        assert!(bootstrap(client).await.is_err());
        assert!(!calls(&c).iter().any(|call| call.starts_with("PATCH")));
    }
}
