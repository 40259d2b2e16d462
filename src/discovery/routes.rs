//! The routing resources of the mesh laid onto the outbound Service tables: DestinationRule
//! subsets become endpoint indexes (by the pod labels of each endpoint's IP) and
//! VirtualService / TrafficSplit routes become each Service port's `http` table. The
//! compilers are kube-free ([`crate::route::compile`]); this file only adapts the watched
//! objects and reports what is not applied as [`PolicyProblem`]s.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use kube::api::ObjectMeta;

use super::model::MeshView;
use super::policy::PolicyProblem;
use crate::route::compile::{self, Registry, Resources, Source, subset_members};
use crate::snapshot::{Protocol, Service};

fn source<'a>(
    meta: &'a ObjectMeta,
    spec: &'a serde_json::Value,
    created: &'a str,
) -> Option<Source<'a>> {
    Some(Source {
        namespace: meta.namespace.as_deref()?,
        name: meta.name.as_deref()?,
        created,
        spec,
    })
}

fn created(meta: &ObjectMeta) -> String {
    meta.creation_timestamp
        .as_ref()
        .map(|t| t.0.to_string())
        .unwrap_or_default()
}

/// What applying the routing resources left beside the Service tables.
#[derive(Debug, Default)]
pub struct Applied {
    /// What was not applied, and why.
    pub problems: Vec<PolicyProblem>,
    /// Host -> the DestinationRule (`<namespace>/<name>`) whose TLS mode applies to it.
    pub tls_rules: BTreeMap<String, String>,
    /// What each GAMMA route's `status.parents` should say.
    pub gamma: Vec<crate::route::gamma::RouteStatus>,
}

/// Fills `subsets`, `http` and the client TLS modes of every Service entry.
pub fn apply(view: &MeshView, services: &mut [Service], headless: &mut [Service]) -> Applied {
    if view.destination_rules.is_empty()
        && view.virtual_services.is_empty()
        && view.traffic_splits.is_empty()
        && view.http_routes.is_empty()
        && view.grpc_routes.is_empty()
    {
        return Applied::default();
    }
    let mut registry = Registry::new(&view.cluster_domain);
    for s in services.iter().chain(headless.iter()) {
        registry.add(
            &s.name,
            s.port,
            s.protocol == Protocol::Http || s.detect_protocol,
        );
    }
    // Creation times as text, kept alive for the borrowed sources.
    let dr_times: Vec<String> = view
        .destination_rules
        .iter()
        .map(|o| created(&o.metadata))
        .collect();
    let vs_times: Vec<String> = view
        .virtual_services
        .iter()
        .map(|o| created(&o.metadata))
        .collect();
    let ts_times: Vec<String> = view
        .traffic_splits
        .iter()
        .map(|o| created(&o.metadata))
        .collect();
    let drs: Vec<Source> = view
        .destination_rules
        .iter()
        .zip(&dr_times)
        .filter_map(|(o, t)| source(&o.metadata, &o.spec.raw, t))
        .collect();
    let vss: Vec<Source> = view
        .virtual_services
        .iter()
        .zip(&vs_times)
        .filter_map(|(o, t)| source(&o.metadata, &o.spec.raw, t))
        .collect();
    let tss: Vec<Source> = view
        .traffic_splits
        .iter()
        .zip(&ts_times)
        .filter_map(|(o, t)| source(&o.metadata, &o.spec.raw, t))
        .collect();
    let mut tables = compile::compile(
        &registry,
        Resources {
            destination_rules: &drs,
            virtual_services: &vss,
            traffic_splits: &tss,
        },
    );
    // GAMMA routes onto the same tables (a VirtualService's host keeps its own).
    let gamma = super::gamma::apply(view, &registry, &mut tables);
    // Pod labels by pod IP: an endpoint is a pod's IP (the view holds the meshed pods).
    let labels: HashMap<IpAddr, &BTreeMap<String, String>> = view
        .pods
        .iter()
        .filter_map(|p| {
            let ip = p.status.as_ref()?.pod_ip.as_ref()?.parse().ok()?;
            Some((ip, p.metadata.labels.as_ref()?))
        })
        .collect();
    for s in services.iter_mut().chain(headless.iter_mut()) {
        if let Some(subsets) = tables.subsets.get(&s.name) {
            let endpoint_labels: Vec<_> = s
                .endpoints
                .iter()
                .map(|e| labels.get(&e.ip).copied())
                .collect();
            s.subsets = subset_members(subsets, &endpoint_labels);
        }
        if let Some(tls) = tables.tls.get(&s.name) {
            s.tls = tls.mode;
            s.subset_tls = tls.subsets.clone();
            s.traffic = tls.traffic.clone();
            s.subset_traffic = tls.subset_traffic.clone();
        }
        if let Some(routes) = tables.http.get(&(s.name.clone(), s.port)) {
            s.http = routes.clone();
        }
    }
    let problems = tables
        .problems
        .into_iter()
        .map(|p| PolicyProblem {
            kind: p.kind,
            namespace: p.namespace,
            name: p.name,
            message: p.message,
        })
        .collect();
    let tls_rules = tables
        .tls
        .into_iter()
        .map(|(host, t)| (host, t.rule))
        .collect();
    Applied {
        problems,
        tls_rules,
        gamma,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use k8s_openapi::api::core::v1::Pod;
    use serde_json::json;

    use super::super::model::MeshIndex;
    use super::super::model::tests::{service, slice, view};
    use crate::route::{Destination, HttpRoute};
    use crate::snapshot::decode_snapshot;

    fn obj<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> Arc<T> {
        Arc::new(serde_json::from_value(v).unwrap())
    }

    fn reviews_pod(name: &str, ip: &str, version: &str) -> Arc<Pod> {
        obj(json!({
            "metadata": {"namespace": "pets", "name": name, "labels": {
                "app": "reviews", "version": version, "weft.dev/revision": "stable"}},
            "spec": {"serviceAccountName": "reviews", "containers": [
                {"name": "app", "ports": [{"containerPort": 8080}]}]},
            "status": {"podIP": ip}
        }))
    }

    #[test]
    fn subsets_and_routes_reach_every_snapshot_and_problems_name_the_resource() {
        let mut v = view();
        v.pods.push(reviews_pod("reviews-v1", "198.18.2.1", "v1"));
        v.pods.push(reviews_pod("reviews-v2a", "198.18.2.2", "v2"));
        v.pods.push(reviews_pod("reviews-v2b", "198.18.2.3", "v2"));
        v.services
            .push(service("pets", "reviews", "198.19.0.30", "http"));
        v.slices.push(slice(
            "pets",
            "reviews",
            "http",
            &[
                ("198.18.2.3", "reviews-v2b", true),
                ("198.18.2.1", "reviews-v1", true),
                ("198.18.2.2", "reviews-v2a", true),
            ],
        ));
        v.destination_rules = vec![obj(json!({
            "apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
            "metadata": {"namespace": "pets", "name": "reviews",
                         "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"host": "reviews", "subsets": [
                {"name": "v1", "labels": {"version": "v1"}},
                {"name": "v2", "labels": {"version": "v2"}}],
                "trafficPolicy": {"loadBalancer": {"simple": "RANDOM"}, "portLevelSettings": []}}
        }))];
        v.virtual_services = vec![obj(json!({
            "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"namespace": "pets", "name": "reviews",
                         "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"hosts": ["reviews"], "http": [{"route": [
                {"destination": {"host": "reviews", "subset": "v1"}, "weight": 90},
                {"destination": {"host": "reviews", "subset": "v2"}, "weight": 10}]}]}
        }))];
        let index = MeshIndex::build(&v);
        let (version, bytes) = index.snapshot_for("pets", "web-1").unwrap();
        let snap = decode_snapshot(&bytes).expect("the proxy accepts the tables");
        let reviews = snap
            .outbound
            .services
            .iter()
            .find(|s| s.name == "reviews.pets.svc.cluster.local")
            .unwrap();
        // Endpoints are sorted by IP: .1 is v1, .2 and .3 are v2.
        assert_eq!(reviews.subsets["v1"], [0]);
        assert_eq!(reviews.subsets["v2"], [1, 2]);
        let d = |subset: &str, weight| Destination {
            service: "reviews.pets.svc.cluster.local".into(),
            port: 80,
            subset: Some(subset.into()),
            weight,
            ..Default::default()
        };
        assert_eq!(
            reviews.http,
            [HttpRoute {
                name: "pets/reviews".into(),
                matches: vec![],
                destinations: vec![d("v1", 90), d("v2", 10)],
                ..Default::default()
            }]
        );
        let p = index
            .problems
            .iter()
            .find(|p| p.kind == "DestinationRule")
            .expect("portLevelSettings is reported");
        assert_eq!((p.namespace.as_str(), p.name.as_str()), ("pets", "reviews"));
        assert!(
            p.message.contains("trafficPolicy.portLevelSettings"),
            "{p:?}"
        );
        // The rest of the rule applies: its load balancer reaches the snapshot.
        assert_eq!(
            reviews.traffic.load_balancer,
            Some(crate::route::balance::LoadBalancer::Random)
        );
        // A weight change moves every client's version.
        let mut drained = v.clone();
        drained.virtual_services = vec![obj(json!({
            "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"namespace": "pets", "name": "reviews"},
            "spec": {"hosts": ["reviews"], "http": [{"route": [
                {"destination": {"host": "reviews", "subset": "v1"}, "weight": 100},
                {"destination": {"host": "reviews", "subset": "v2"}, "weight": 0}]}]}
        }))];
        let moved = MeshIndex::build(&drained)
            .snapshot_for("pets", "web-1")
            .unwrap()
            .0;
        assert_ne!(moved, version);
    }
}
