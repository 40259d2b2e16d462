//! GAMMA routes (Gateway API `HTTPRoute` / `GRPCRoute` with a Service parent) laid onto the
//! same per-Service-port route tables as VirtualServices and TrafficSplits: the watched
//! objects adapted for the kube-free compiler ([`crate::route::gamma`]), the precedence
//! between the three (VirtualService, then GAMMA, then TrafficSplit), and the statuses the
//! leader writes ([`super::gamma_status`]).

use kube::Resource;

use super::model::MeshView;
use crate::route::compile::{Problem, Registry, RouteTables, Source};
use crate::route::gamma::{self, RouteKind, RouteSource, RouteStatus};

/// Compiles the view's GAMMA routes and puts their tables into `tables`: a Service port a
/// VirtualService routes keeps the VirtualService's table (the route's parent is not
/// accepted); one a TrafficSplit routes takes the GAMMA routes, and the split is reported.
pub fn apply(view: &MeshView, registry: &Registry, tables: &mut RouteTables) -> Vec<RouteStatus> {
    if view.http_routes.is_empty() && view.grpc_routes.is_empty() {
        return Vec::new();
    }
    // Creation times as text, kept alive for the borrowed sources.
    let created = |m: &kube::api::ObjectMeta| {
        m.creation_timestamp
            .as_ref()
            .map(|t| t.0.to_string())
            .unwrap_or_default()
    };
    let http_times: Vec<String> = view.http_routes.iter().map(|o| created(o.meta())).collect();
    let grpc_times: Vec<String> = view.grpc_routes.iter().map(|o| created(o.meta())).collect();
    let mut sources = Vec::new();
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
    let compiled = gamma::compile(registry, &sources, &tables.virtual_service_hosts);
    for ((host, port), routes) in compiled.http {
        if let Some(split) = tables.http.get(&(host.clone(), port)) {
            // Only a TrafficSplit can be there: VirtualService hosts take no GAMMA routes.
            if let Some((namespace, name)) = split.first().and_then(|r| r.name.split_once('/')) {
                tables.problems.push(Problem {
                    kind: crate::route::smi::KIND,
                    namespace: namespace.to_string(),
                    name: name.to_string(),
                    message: format!(
                        "{host} port {port} is routed by Gateway API routes (GAMMA), which win over a TrafficSplit; this split is not applied there"
                    ),
                });
            }
        }
        tables.http.insert((host, port), routes);
    }
    compiled.statuses
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::json;

    use super::super::model::MeshIndex;
    use super::super::model::tests::{service, view};
    use crate::route::gamma::REASON_NOT_ALLOWED_BY_PARENTS;
    use crate::snapshot::decode_snapshot;

    fn obj<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> Arc<T> {
        Arc::new(serde_json::from_value(v).expect("a valid object"))
    }

    fn route_to(parent: &str, backend: &str) -> serde_json::Value {
        json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"namespace": "pets", "name": parent, "generation": 3,
                         "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": parent}],
                     "rules": [{"backendRefs": [{"name": backend, "port": 80}]}]},
            "status": {"parents": [{"controllerName": "other.example/mesh",
                                    "parentRef": {"name": parent}, "conditions": []}]}
        })
    }

    #[test]
    fn a_gamma_route_reaches_every_snapshot_and_a_virtual_service_keeps_its_host() {
        let mut v = view();
        v.services
            .push(service("pets", "db-v2", "198.19.0.40", "http"));
        v.services
            .push(service("pets", "shop", "198.19.0.41", "http"));
        v.http_routes = vec![obj(route_to("db", "db-v2")), obj(route_to("shop", "db-v2"))];
        v.virtual_services = vec![obj(json!({
            "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"namespace": "pets", "name": "shop"},
            "spec": {"hosts": ["shop"], "http": [{"route": [{"destination": {"host": "db"}}]}]}
        }))];
        let index = MeshIndex::build(&v);
        let (_, bytes) = index.snapshot_for("pets", "web-1").expect("a snapshot");
        let snap = decode_snapshot(&bytes).expect("the proxy accepts the GAMMA table");
        let table = |host: &str| {
            snap.outbound
                .services
                .iter()
                .find(|s| s.name == host)
                .map(|s| s.http.clone())
                .unwrap_or_default()
        };
        let db = table("db.pets.svc.cluster.local");
        assert_eq!(db.len(), 1, "{db:?}");
        assert_eq!(db[0].name, "pets/db");
        assert_eq!(
            db[0].destinations[0].service,
            "db-v2.pets.svc.cluster.local"
        );
        // The VirtualService's table stays; the route's parent there is not accepted.
        let shop = table("shop.pets.svc.cluster.local");
        assert_eq!(shop[0].destinations[0].service, "db.pets.svc.cluster.local");
        let statuses = index.gamma_statuses();
        let of = |name: &str| {
            statuses
                .iter()
                .find(|s| s.name == name)
                .unwrap_or_else(|| panic!("{name}: {statuses:?}"))
        };
        assert!(of("db").parents[0].accepted.status);
        assert_eq!(of("db").generation, Some(3));
        assert_eq!(
            of("shop").parents[0].accepted.reason,
            REASON_NOT_ALLOWED_BY_PARENTS
        );
    }
}
