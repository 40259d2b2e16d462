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
    let mut sources = Vec::new();
    for (kind, meta, spec, created) in http.chain(grpc) {
        let (Some(namespace), Some(name)) = (meta.namespace.as_deref(), meta.name.as_deref())
        else {
            continue;
        };
        sources.push(RouteSource {
            kind,
            generation: meta.generation,
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
        let compiled = gateway_api::compile(registry, &source, &sources, credential, &no_labels);
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
