//! Issue 21 item 8: the operator's `/readyz` (the monitoring router `weft operator` serves)
//! fails, naming the reason, when the root published to proxies is not the one the replica
//! signs under, and recovers when repaired; a CA Secret corrupted or replaced under a running
//! replica is named as a warning while the replica stays ready on the CA it loaded (SPEC §7:
//! the mesh keeps working on the root in memory). The Secret and ConfigMap come from a fake
//! API server.

mod operator_support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use operator_support::FakeApiServer;
use serde_json::json;
use tokio::sync::watch;
use tower::ServiceExt;
use weft::kube::metrics::OperatorMetrics;
use weft::operator::readiness::{Readiness, watch_ca_material};
use weft::operator::run::monitoring_router;
use weft::pki::MeshCa;

const SECRET: &str = "/api/v1/namespaces/weft-system/secrets/weft-ca";
const ROOT_CM: &str = "/api/v1/namespaces/weft-system/configmaps/weft-ca-root-cert";
const PERIOD: Duration = Duration::from_millis(100);
const GRACE: Duration = Duration::from_secs(1);

fn secret_of(data: BTreeMap<String, String>) -> serde_json::Value {
    let secret = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some("weft-ca".into()),
            namespace: Some("weft-system".into()),
            ..Default::default()
        },
        data: Some(
            data.into_iter()
                .map(|(k, v)| (k, ByteString(v.into_bytes())))
                .collect(),
        ),
        ..Default::default()
    };
    let mut v = serde_json::to_value(secret).unwrap();
    v["apiVersion"] = json!("v1");
    v["kind"] = json!("Secret");
    v
}

fn root_configmap(pem: &str) -> serde_json::Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap",
           "metadata": {"name": "weft-ca-root-cert", "namespace": "weft-system"},
           "data": {"root-cert.pem": pem}})
}

async fn get(app: &axum::Router, path: &str) -> (StatusCode, String) {
    let response = app
        .clone()
        .oneshot(Request::get(path).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let body = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Polls `/readyz` until `want` holds, for at most `within`; returns the last answer.
async fn readyz_until(
    app: &axum::Router,
    within: Duration,
    want: impl Fn(&(StatusCode, String)) -> bool,
) -> (StatusCode, String) {
    let start = Instant::now();
    loop {
        let answer = get(app, "/readyz").await;
        if want(&answer) || start.elapsed() > within {
            return answer;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn readyz_fails_when_the_published_root_is_not_ours_and_warns_of_a_changed_secret() {
    let ca = Arc::new(MeshCa::generate_root("cluster.local", Duration::from_secs(86_400)).unwrap());
    let other = MeshCa::generate_root("cluster.local", Duration::from_secs(86_400)).unwrap();
    let api = FakeApiServer::default();
    api.put(SECRET, secret_of(ca.to_secret_data()));
    api.put(ROOT_CM, root_configmap(&ca.roots_pem()));
    let client = api.listen().await.client;

    let (_ca_tx, ca_rx) = watch::channel(Some(ca.clone()));
    let readiness = Readiness {
        waiting_for: Arc::new(Vec::new),
        ca_problem: watch::channel(None).1,
        ca_material: watch_ca_material(client, "weft-system".into(), ca_rx, PERIOD, GRACE),
    };
    let app = monitoring_router(readiness, Arc::new(OperatorMetrics::new()));
    let ready = |a: &(StatusCode, String)| a.0 == StatusCode::OK;
    let not_ready = |a: &(StatusCode, String)| a.0 == StatusCode::SERVICE_UNAVAILABLE;
    // Give the check a few looks at the intact material: still ready.
    tokio::time::sleep(PERIOD * 3).await;
    assert_eq!(get(&app, "/readyz").await, (StatusCode::OK, "ready".into()));

    // Corrupted Secret (the certificate no longer parses): still ready, on the CA in memory,
    // and the answer says what is wrong and how to fix it.
    let mut broken = ca.to_secret_data();
    broken.insert(
        "ca.crt".into(),
        "-----BEGIN CERTIFICATE-----\nAAAA\n".into(),
    );
    api.put(SECRET, secret_of(broken));
    let warned = |a: &(StatusCode, String)| a.1.contains("warning:");
    let (status, body) = readyz_until(&app, Duration::from_secs(2), warned).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        body.starts_with(
            "ready\nwarning: Secret weft-system/weft-ca no longer holds usable CA material"
        ) && body.contains("still signs with the copy it loaded")
            && body.contains("weft ca reset"),
        "{body}"
    );

    // Replaced by another (valid) root: the same.
    api.put(SECRET, secret_of(other.to_secret_data()));
    let (status, body) = readyz_until(&app, Duration::from_secs(2), |a| {
        a.1.contains("holds a different root")
    })
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        body.contains("warning: Secret weft-system/weft-ca holds a different root than the one this replica signs under"),
        "{body}"
    );

    // Repaired: the warning goes.
    api.put(SECRET, secret_of(ca.to_secret_data()));
    let (status, body) = readyz_until(&app, Duration::from_secs(2), |a| a.1 == "ready").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "ready"));

    // The published root is another one: a republish in progress is ridden out, a lasting
    // mismatch is not.
    api.put(ROOT_CM, root_configmap(&other.roots_pem()));
    tokio::time::sleep(GRACE / 2).await;
    assert_eq!(get(&app, "/readyz").await.0, StatusCode::OK);
    let (status, why) = readyz_until(&app, Duration::from_secs(4), not_ready).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{why}");
    assert!(
        why.contains("ConfigMap weft-system/weft-ca-root-cert (the root proxies trust) holds 1 root(s) that are not the trust bundle"),
        "{why}"
    );
    api.put(ROOT_CM, root_configmap(&ca.roots_pem()));
    let (status, _) = readyz_until(&app, Duration::from_secs(2), ready).await;
    assert_eq!(status, StatusCode::OK);

    // The published root is unreadable, and the Secret corrupted too: not ready, for the
    // root (the Secret alone would not stop it).
    api.put(ROOT_CM, root_configmap("not a certificate"));
    let mut broken = ca.to_secret_data();
    broken.remove("ca.key");
    api.put(SECRET, secret_of(broken));
    let (status, why) = readyz_until(&app, Duration::from_secs(4), not_ready).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{why}");
    assert!(why.contains("is not a readable PEM bundle"), "{why}");
    api.put(ROOT_CM, root_configmap(&ca.roots_pem()));
    let (status, body) = readyz_until(&app, Duration::from_secs(2), ready).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        body.contains("warning: Secret weft-system/weft-ca no longer holds"),
        "{body}"
    );

    // The same port no longer lists proxies (item 5): it says where they went.
    let (status, body) = get(&app, "/debug/proxies").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body.contains("127.0.0.1:15000"), "{body}");
}
