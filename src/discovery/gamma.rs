//! GAMMA routes (Gateway API `HTTPRoute` / `GRPCRoute` with a Service parent) laid onto the
//! same per-Service-port route tables as VirtualServices and TrafficSplits: the watched
//! objects adapted for the kube-free compiler ([`crate::route::gamma`]), the precedence
//! between the three (VirtualService, then GAMMA, then TrafficSplit), and the statuses the
//! leader writes ([`super::gamma_status`]).

use kube::Resource;

use super::model::MeshView;
use crate::route::compile::{Problem, Registry, RouteTables, Source};
use crate::route::gamma::{self, RouteKind, RouteSource, RouteStatus};

/// Compiles the view's GAMMA routes as the proxies of namespace `client` take them (`None`:
/// a namespace without consumer routes; see [`gamma::compile`]) and puts their tables into
/// `tables`: a Service port a VirtualService routes keeps the VirtualService's table (the
/// route's parent is not accepted); one a TrafficSplit routes takes the GAMMA routes, and the
/// split is reported.
pub fn apply(
    view: &MeshView,
    registry: &Registry,
    tables: &mut RouteTables,
    client: Option<&str>,
) -> Vec<RouteStatus> {
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
            uid: meta.uid.as_deref(),
            source: Source {
                namespace,
                name,
                created,
                spec,
            },
        });
    }
    let compiled = gamma::compile(registry, &sources, &tables.virtual_service_hosts, client);
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

/// The namespaces holding a consumer route (a parent Service in another namespace): their
/// proxies get tables of their own.
pub fn consumer_namespaces(view: &MeshView) -> std::collections::BTreeSet<String> {
    let http = view.http_routes.iter().map(|o| (o.meta(), &o.spec.raw));
    let grpc = view.grpc_routes.iter().map(|o| (o.meta(), &o.spec.raw));
    http.chain(grpc)
        .filter_map(|(meta, spec)| {
            let namespace = meta.namespace.as_deref()?;
            crate::api::gateway_api::common::parent_refs(spec)
                .iter()
                .any(|p| p.is_service() && p.namespace.as_deref().is_some_and(|n| n != namespace))
                .then(|| namespace.to_string())
        })
        .collect()
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

    #[test]
    fn a_consumer_route_reaches_only_its_namespaces_snapshots_and_section_name_is_the_port_name() {
        use super::super::model::tests::pod;
        let mut v = view();
        v.pods
            .push(pod("shop", "cart-1", "198.18.1.20", "cart", true));
        v.services
            .push(service("pets", "db-v2", "198.19.0.40", "http"));
        // pets' producer route: every client goes to db-v2; shop's consumer route names the
        // port by its name and sends its clients to db itself (no backendRefs).
        let producer = route_to("db", "db-v2");
        let consumer = json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"namespace": "shop", "name": "db-from-shop",
                         "creationTimestamp": "2026-01-02T00:00:00Z"},
            "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "db",
                                     "namespace": "pets", "sectionName": "http"}],
                     "rules": [{"filters": [{"type": "RequestHeaderModifier",
                         "requestHeaderModifier": {"set": [{"name": "x-from", "value": "shop"}]}}]}]}
        });
        v.http_routes = vec![obj(producer), obj(consumer)];
        let index = MeshIndex::build(&v);
        let routes_of = |ns: &str, pod: &str| {
            let (_, bytes) = index.snapshot_for(ns, pod).expect("a snapshot");
            let snap = decode_snapshot(&bytes).expect("the proxy accepts it");
            snap.outbound
                .services
                .iter()
                .find(|s| s.name == "db.pets.svc.cluster.local")
                .map(|s| s.http.clone())
                .unwrap_or_default()
        };
        let pets = routes_of("pets", "web-1");
        assert_eq!(pets.len(), 1, "{pets:?}");
        assert_eq!(pets[0].name, "pets/db");
        let shop = routes_of("shop", "cart-1");
        assert_eq!(shop.len(), 1, "{shop:?}");
        assert_eq!(shop[0].name, "shop/db-from-shop");
        assert_eq!(shop[0].destinations[0].service, "db.pets.svc.cluster.local");
        let statuses = index.gamma_statuses();
        let consumer = statuses
            .iter()
            .find(|s| s.name == "db-from-shop")
            .expect("the consumer route's status");
        assert!(
            consumer.parents[0].accepted.status,
            "{:?}",
            consumer.parents[0]
        );
    }

    /// A route deleted and made again under its name (the conformance suite does it within
    /// milliseconds, and the index may never see the gap) is another object: its status
    /// differs by uid, so the leader writes it although every condition is the same.
    #[test]
    fn a_route_made_again_under_its_name_gets_a_status_of_its_own() {
        let status_with_uid = |uid: &str| {
            let mut v = view();
            v.services
                .push(service("pets", "db-v2", "198.19.0.40", "http"));
            let mut route = route_to("db", "db-v2");
            route["metadata"]["uid"] = serde_json::json!(uid);
            v.http_routes = vec![obj(route)];
            let index = MeshIndex::build(&v);
            index.gamma_statuses()[0].clone()
        };
        let first = status_with_uid("uid-1");
        let again = status_with_uid("uid-2");
        assert_eq!(first.uid.as_deref(), Some("uid-1"));
        assert_eq!(first.parents, again.parents);
        assert_ne!(first, again, "the writer compares whole statuses");
    }
}
