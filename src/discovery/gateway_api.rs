//! Gateway API Gateways of a class weft implements (`controllerName: weft.dev/gateway-controller`)
//! served by the gateway pods the operator deploys for them ([`super::gateway_api_deploy`]):
//! each Gateway compiled once ([`crate::route::gateway_api`]), its listener table given to the
//! pods labelled `gateway.networking.k8s.io/gateway-name=<name>` in its namespace, and the
//! statuses (Gateway, listeners, route parents) kept for the leader to write.

use std::collections::{BTreeMap, HashMap};

use kube::Resource;

use super::model::MeshView;
use crate::api::gateway_api::CONTROLLER_NAME;
use crate::route::compile::{Registry, Source};
use crate::route::gamma::{Condition, RouteKind, RouteSource, RouteStatus};
use crate::route::gateway::GatewayConfig;
use crate::route::gateway_api::{self, GatewaySource, ListenerStatus};
use crate::route::reference_grant::{Grant, ReferenceGrants};

/// The label of the pods serving a Gateway (Istio's automated deployment uses the same).
pub const LABEL_GATEWAY_NAME: &str = "gateway.networking.k8s.io/gateway-name";

/// What the leader writes for one Gateway (its address and `Programmed` come from the
/// Service the deployer made).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayStatus {
    pub namespace: String,
    pub name: String,
    pub class: String,
    pub generation: Option<i64>,
    pub accepted: Condition,
    pub listeners: Vec<ListenerStatus>,
    /// (port, protocol) of each listener, for the gateway's Service.
    pub ports: Vec<(u16, String)>,
    /// The Gateway's uid, for the owner references of what is deployed for it.
    pub uid: String,
}

/// The Gateway API side of an index: the classes weft implements and their Gateways.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GatewayApi {
    /// (name, generation) of each GatewayClass naming weft's controller.
    pub classes: Vec<(String, Option<i64>)>,
    pub gateways: Vec<GatewayStatus>,
}

/// Compiles the Gateways of weft's classes: listener tables into `configs` (gateway pod ->
/// config, replacing what Istio Gateways gave the same pod), route parent statuses merged into
/// `routes` (beside the GAMMA parents, so one writer owns weft's `status.parents` entries).
pub fn apply(
    view: &MeshView,
    registry: &Registry,
    credential: &dyn Fn(&str, &str) -> Result<crate::route::gateway::Credential, String>,
    configs: &mut HashMap<(String, String), GatewayConfig>,
    routes: &mut Vec<RouteStatus>,
) -> GatewayApi {
    let classes: Vec<(String, Option<i64>)> = view
        .gateway_classes
        .iter()
        .filter(|c| c.spec.controller_name == CONTROLLER_NAME)
        .filter_map(|c| Some((c.metadata.name.clone()?, c.metadata.generation)))
        .collect();
    let mut out = GatewayApi {
        classes,
        gateways: Vec::new(),
    };
    if out.classes.is_empty() {
        return out;
    }
    let created = |m: &kube::api::ObjectMeta| {
        m.creation_timestamp
            .as_ref()
            .map(|t| t.0.to_string())
            .unwrap_or_default()
    };
    let http_times: Vec<String> = view.http_routes.iter().map(|o| created(o.meta())).collect();
    let grpc_times: Vec<String> = view.grpc_routes.iter().map(|o| created(o.meta())).collect();
    let tls_times: Vec<String> = view.tls_routes.iter().map(|o| created(o.meta())).collect();
    let tcp_times: Vec<String> = view
        .gateway_tcp_routes
        .iter()
        .map(|o| created(o.meta()))
        .collect();
    let http = view
        .http_routes
        .iter()
        .zip(&http_times)
        .map(|(o, t)| (RouteKind::Http, o.meta(), &o.spec.raw, t));
    let grpc = view
        .grpc_routes
        .iter()
        .zip(&grpc_times)
        .map(|(o, t)| (RouteKind::Grpc, o.meta(), &o.spec.raw, t));
    let tls = view
        .tls_routes
        .iter()
        .zip(&tls_times)
        .map(|(o, t)| (RouteKind::Tls, o.meta(), &o.spec.raw, t));
    let tcp = view
        .gateway_tcp_routes
        .iter()
        .zip(&tcp_times)
        .map(|(o, t)| (RouteKind::Tcp, o.meta(), &o.spec.raw, t));
    let mut sources = Vec::new();
    for (kind, meta, spec, created) in http.chain(grpc).chain(tls).chain(tcp) {
        let (Some(namespace), Some(name)) = (meta.namespace.as_deref(), meta.name.as_deref())
        else {
            continue;
        };
        sources.push(RouteSource {
            kind,
            generation: meta.generation,
            uid: meta.uid.as_deref(),
            source: Source {
                namespace,
                name,
                created,
                spec,
            },
        });
    }
    // A namespace's labels for a `Selector` listener (None: no such namespace).
    let no_labels = |ns: &str| -> Option<BTreeMap<String, String>> {
        view.namespaces
            .iter()
            .find(|n| n.metadata.name.as_deref() == Some(ns))
            .map(|n| n.metadata.labels.clone().unwrap_or_default())
    };
    let grants = reference_grants(&view.reference_grants);
    for gw in &view.gateway_api_gateways {
        let class = &gw.spec.gateway_class_name;
        if !out.classes.iter().any(|(c, _)| c == class) {
            continue;
        }
        let (Some(namespace), Some(name)) = (
            gw.metadata.namespace.as_deref(),
            gw.metadata.name.as_deref(),
        ) else {
            continue;
        };
        let Ok(spec) = serde_json::to_value(&gw.spec) else {
            continue;
        };
        let created_at = created(&gw.metadata);
        let source = GatewaySource {
            source: Source {
                namespace,
                name,
                created: &created_at,
                spec: &spec,
            },
            generation: gw.metadata.generation,
        };
        let cluster = gateway_api::Cluster {
            registry,
            secrets: credential,
            namespaces: &no_labels,
            grants: &grants,
        };
        let compiled = gateway_api::compile(&cluster, &source, &sources);
        for pod in view.pods.iter().filter(|p| {
            super::routes::is_gateway_pod(p)
                && p.metadata.namespace.as_deref() == Some(namespace)
                && p.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(LABEL_GATEWAY_NAME))
                    .is_some_and(|n| n == name)
        }) {
            if let Some(pod_name) = &pod.metadata.name {
                configs.insert(
                    (namespace.to_string(), pod_name.clone()),
                    compiled.config.clone(),
                );
            }
        }
        for status in compiled.routes {
            match routes.iter_mut().find(|r| {
                r.kind == status.kind && r.namespace == status.namespace && r.name == status.name
            }) {
                Some(r) => r.parents.extend(status.parents),
                None => routes.push(status),
            }
        }
        let mut ports: Vec<(u16, String)> = gw
            .spec
            .listeners
            .iter()
            .filter_map(|l| Some((u16::try_from(l.port).ok()?, l.protocol.clone())))
            .collect();
        ports.sort();
        ports.dedup_by_key(|p| p.0);
        out.gateways.push(GatewayStatus {
            namespace: namespace.to_string(),
            name: name.to_string(),
            class: class.clone(),
            generation: gw.metadata.generation,
            accepted: compiled.accepted,
            listeners: compiled.listeners,
            ports,
            uid: gw.metadata.uid.clone().unwrap_or_default(),
        });
    }
    out
}

/// The watched ReferenceGrants as the compilers ask them.
pub fn reference_grants(
    grants: &[std::sync::Arc<crate::api::gateway_api::ReferenceGrant>],
) -> ReferenceGrants {
    ReferenceGrants(
        grants
            .iter()
            .filter_map(|g| {
                Some(Grant {
                    namespace: g.metadata.namespace.clone()?,
                    from: g
                        .spec
                        .from
                        .iter()
                        .map(|f| (f.group.clone(), f.kind.clone(), f.namespace.clone()))
                        .collect(),
                    to: g
                        .spec
                        .to
                        .iter()
                        .map(|t| (t.group.clone(), t.kind.clone(), t.name.clone()))
                        .collect(),
                })
            })
            .collect(),
    )
}

/// The namespaces whose Secrets a ReferenceGrant lets Gateways use: the operator watches
/// their TLS Secrets beside those of the gateways' own namespaces (it reads them only where
/// it was granted Secrets, as for a gateway's namespace).
pub fn secret_grant_namespaces(
    grants: &[std::sync::Arc<crate::api::gateway_api::ReferenceGrant>],
) -> Vec<String> {
    let mut out: Vec<String> = grants
        .iter()
        .filter(|g| {
            g.spec
                .from
                .iter()
                .any(|f| f.group == crate::api::gateway_api::GROUP && f.kind == "Gateway")
                && g.spec
                    .to
                    .iter()
                    .any(|t| t.group.is_empty() && t.kind == "Secret")
        })
        .filter_map(|g| g.metadata.namespace.clone())
        .collect();
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::gateway_api::ReferenceGrant;
    use crate::api::gateway_api::gateway::{
        ReferenceGrantFrom, ReferenceGrantSpec, ReferenceGrantTo,
    };
    use std::sync::Arc;

    fn grant(ns: &str, from_kind: &str, to_kind: &str) -> Arc<ReferenceGrant> {
        let mut g = ReferenceGrant::new(
            "g",
            ReferenceGrantSpec {
                from: vec![ReferenceGrantFrom {
                    group: crate::api::gateway_api::GROUP.into(),
                    kind: from_kind.into(),
                    namespace: "infra".into(),
                }],
                to: vec![ReferenceGrantTo {
                    group: String::new(),
                    kind: to_kind.into(),
                    name: None,
                }],
            },
        );
        g.metadata.namespace = Some(ns.into());
        Arc::new(g)
    }

    #[test]
    fn only_grants_of_secrets_to_gateways_widen_the_secret_watch() {
        let grants = vec![
            grant("certs", "Gateway", "Secret"),
            grant("certs", "Gateway", "Secret"),
            grant("backends", "HTTPRoute", "Service"),
            grant("other", "HTTPRoute", "Secret"),
        ];
        assert_eq!(secret_grant_namespaces(&grants), vec!["certs".to_string()]);
        let read = reference_grants(&grants);
        assert_eq!(read.0.len(), 4);
        assert_eq!(read.0[2].namespace, "backends");
        assert_eq!(
            read.0[2].to,
            vec![(String::new(), "Service".to_string(), None)]
        );
    }
}

#[cfg(test)]
mod conformance_shapes {
    //! The conformance suite's objects as the API server stores them (defaults filled in),
    //! through the same path the operator takes.
    use super::*;
    use serde_json::json;
    use std::sync::Arc;

    fn ns(name: &str, labels: serde_json::Value) -> Arc<k8s_openapi::api::core::v1::Namespace> {
        let mut l = labels;
        l["kubernetes.io/metadata.name"] = json!(name);
        Arc::new(serde_json::from_value(json!({"metadata": {"name": name, "labels": l}})).unwrap())
    }

    #[test]
    fn selector_listeners_attach_routes_of_the_selected_namespaces() {
        let gateway = |name: &str, listener: serde_json::Value| {
            Arc::new(
                serde_json::from_value::<crate::api::gateway_api::Gateway>(json!({
                    "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
                    "metadata": {"name": name, "namespace": "gateway-conformance-infra",
                                 "generation": 1, "uid": "u",
                                 "creationTimestamp": "2026-12-06T13:00:00Z"},
                    "spec": {"gatewayClassName": "weft", "listeners": [listener]}}))
                .unwrap(),
            )
        };
        let route = |ns: &str, name: &str, gw: &str| {
            Arc::new(
                serde_json::from_value::<crate::api::gateway_api::HTTPRoute>(json!({
                    "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
                    "metadata": {"name": name, "namespace": ns, "generation": 1,
                                 "creationTimestamp": "2026-12-06T13:01:00Z"},
                    "spec": {"parentRefs": [{"group": "gateway.networking.k8s.io", "kind": "Gateway",
                                             "name": gw, "namespace": "gateway-conformance-infra"}],
                             "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                                        "backendRefs": [{"group": "", "kind": "Service",
                                                         "name": "web-backend", "port": 8080, "weight": 1}]}]}}))
                .unwrap(),
            )
        };
        let class = Arc::new(
            serde_json::from_value::<crate::api::gateway_api::GatewayClass>(json!({
                "apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
                "metadata": {"name": "weft", "generation": 1},
                "spec": {"controllerName": CONTROLLER_NAME}}))
            .unwrap(),
        );
        let view = MeshView {
            cluster_domain: "cluster.local".into(),
            gateway_classes: vec![class],
            gateway_api_gateways: vec![
                gateway(
                    "backend-namespaces",
                    json!({"name": "http", "port": 80, "protocol": "HTTP",
                    "allowedRoutes": {"namespaces": {"from": "Selector",
                        "selector": {"matchLabels": {"gateway-conformance": "backend"}}}}}),
                ),
                gateway(
                    "gateway-with-one-attached-route",
                    json!({"name": "http", "port": 80, "protocol": "HTTP",
                    "allowedRoutes": {"kinds": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute"}],
                        "namespaces": {"from": "Selector", "selector": {"matchLabels":
                            {"kubernetes.io/metadata.name": "gateway-conformance-web-backend"}}}}}),
                ),
            ],
            http_routes: vec![
                route(
                    "gateway-conformance-web-backend",
                    "cross-namespace",
                    "backend-namespaces",
                ),
                route(
                    "gateway-conformance-web-backend",
                    "one",
                    "gateway-with-one-attached-route",
                ),
            ],
            namespaces: vec![
                ns(
                    "gateway-conformance-infra",
                    json!({"gateway-conformance": "infra"}),
                ),
                ns(
                    "gateway-conformance-web-backend",
                    json!({"gateway-conformance": "backend",
                    "istio-injection": "enabled"}),
                ),
            ],
            ..Default::default()
        };
        let mut registry = Registry::new("cluster.local");
        registry.add(
            "web-backend.gateway-conformance-web-backend.svc.cluster.local",
            8080,
            true,
        );
        let mut configs = HashMap::new();
        let mut routes = Vec::new();
        let out = apply(
            &view,
            &registry,
            &|_, _| Err("none".into()),
            &mut configs,
            &mut routes,
        );
        assert_eq!(out.gateways.len(), 2);
        for g in &out.gateways {
            assert_eq!(
                g.listeners[0].attached_routes, 1,
                "{}: {:?}",
                g.name, g.listeners[0]
            );
        }
        assert_eq!(routes.len(), 2);
        for r in &routes {
            assert!(
                r.parents[0].accepted.status,
                "{}: {:?}",
                r.name, r.parents[0]
            );
        }
    }
}
