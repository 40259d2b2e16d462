//! From the routing resources (Istio DestinationRules and VirtualServices, SMI TrafficSplits)
//! to the route tables the snapshot carries, kube-free: what the compilers read about the
//! mesh's Services ([`Registry`]), one resource as stored ([`Source`]), and the precedence
//! between them ([`compile`]). Everything not applied as written is a [`Problem`].

use std::collections::BTreeMap;

use super::model::HttpRoute;
use super::{istio, smi};

/// One Service port as routing sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortInfo {
    pub port: u16,
    /// Declared HTTP, or undeclared (the proxy detects HTTP): HTTP routes apply to it.
    pub http: bool,
}

/// The Services routes may name, by FQDN (`name.namespace.svc.<cluster domain>`).
#[derive(Debug, Clone, Default)]
pub struct Registry {
    pub cluster_domain: String,
    services: BTreeMap<String, Vec<PortInfo>>,
}

impl Registry {
    pub fn new(cluster_domain: &str) -> Self {
        Registry {
            cluster_domain: cluster_domain.to_string(),
            services: BTreeMap::new(),
        }
    }

    /// Records one port of a Service (a port met twice keeps HTTP if either says so).
    pub fn add(&mut self, host: &str, port: u16, http: bool) {
        let ports = self.services.entry(host.to_string()).or_default();
        match ports.iter_mut().find(|p| p.port == port) {
            Some(p) => p.http |= http,
            None => ports.push(PortInfo { port, http }),
        }
    }

    pub fn ports(&self, host: &str) -> Option<&[PortInfo]> {
        self.services.get(host).map(Vec::as_slice)
    }

    /// Istio's host resolution: a name without a dot is a Service of `namespace`
    /// (`reviews` -> `reviews.<namespace>.svc.<domain>`); anything else is taken as written.
    pub fn resolve(&self, host: &str, namespace: &str) -> String {
        if host.contains('.') || host.starts_with('*') {
            host.to_string()
        } else {
            format!("{host}.{namespace}.svc.{}", self.cluster_domain)
        }
    }
}

/// One routing resource as stored: its spec is read strictly by its compiler.
#[derive(Debug, Clone, Copy)]
pub struct Source<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    /// `metadata.creationTimestamp` (RFC 3339, compared as text; Istio's "oldest wins").
    pub created: &'a str,
    pub spec: &'a serde_json::Value,
}

impl Source<'_> {
    pub fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// Oldest first, then by namespace and name, so every replica decides the same way.
pub(crate) fn by_age<'a>(sources: &'a [Source<'a>]) -> Vec<&'a Source<'a>> {
    let mut sorted: Vec<&Source> = sources.iter().collect();
    sorted.sort_by(|a, b| (a.created, a.namespace, a.name).cmp(&(b.created, b.namespace, b.name)));
    sorted
}

/// A resource (or part of one) weft does not apply as written, and why.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Problem {
    /// `DestinationRule`, `VirtualService` or `TrafficSplit`.
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
    pub message: String,
}

impl Problem {
    pub(crate) fn new(kind: &'static str, src: &Source<'_>, message: impl Into<String>) -> Self {
        Problem {
            kind,
            namespace: src.namespace.to_string(),
            name: src.name.to_string(),
            message: message.into(),
        }
    }
}

/// Subset name -> the pod labels that select its endpoints (all of them must match).
pub type SubsetLabels = BTreeMap<String, BTreeMap<String, String>>;

/// What the routing resources say, per Service.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RouteTables {
    /// Service FQDN -> its DestinationRule subsets.
    pub subsets: BTreeMap<String, SubsetLabels>,
    /// Service FQDN -> the client TLS its DestinationRules set.
    pub tls: BTreeMap<String, super::model::HostPolicy>,
    /// (Service FQDN, port) -> HTTP routes, first match wins.
    pub http: BTreeMap<(String, u16), Vec<HttpRoute>>,
    /// The Services a VirtualService routes (they win over TrafficSplits and GAMMA routes).
    pub virtual_service_hosts: std::collections::BTreeSet<String>,
    pub problems: Vec<Problem>,
}

/// The resources of the mesh, as watched.
#[derive(Debug, Clone, Copy, Default)]
pub struct Resources<'a> {
    pub destination_rules: &'a [Source<'a>],
    pub virtual_services: &'a [Source<'a>],
    pub traffic_splits: &'a [Source<'a>],
}

/// Compiles every routing resource against the Services of the mesh. DestinationRules first
/// (VirtualServices name their subsets), then VirtualServices (one per host, the oldest, as
/// Istio does for sidecars), then TrafficSplits for the hosts no VirtualService routes.
pub fn compile(registry: &Registry, resources: Resources<'_>) -> RouteTables {
    let mut problems = Vec::new();
    let (subsets, tls) =
        istio::destination_rules_with_tls(registry, resources.destination_rules, &mut problems);
    let mut http = istio::virtual_services(
        registry,
        &subsets,
        resources.virtual_services,
        &mut problems,
    );
    let vs_hosts: std::collections::BTreeSet<String> =
        http.keys().map(|(h, _)| h.clone()).collect();
    let splits = smi::traffic_splits(registry, resources.traffic_splits, &mut problems);
    for (root, split) in splits {
        if vs_hosts.contains(&root) {
            problems.push(Problem {
                kind: smi::KIND,
                namespace: split.namespace,
                name: split.name,
                message: format!(
                    "{root} is routed by a VirtualService, which wins over a TrafficSplit; this split is not applied"
                ),
            });
            continue;
        }
        for (port, route) in split.routes {
            http.insert((root.clone(), port), vec![route]);
        }
    }
    RouteTables {
        subsets,
        tls,
        http,
        virtual_service_hosts: vs_hosts,
        problems,
    }
}

/// Which endpoints each subset takes: indexes of the endpoints whose pod labels hold every
/// label of the subset (a subset without labels takes them all, as in Istio). An endpoint
/// whose pod weft does not know (`None`) is in no labelled subset.
pub fn subset_members(
    subsets: &SubsetLabels,
    endpoint_labels: &[Option<&BTreeMap<String, String>>],
) -> BTreeMap<String, Vec<usize>> {
    subsets
        .iter()
        .map(|(name, want)| {
            let members = endpoint_labels
                .iter()
                .enumerate()
                .filter(|(_, labels)| match labels {
                    Some(labels) => want.iter().all(|(k, v)| labels.get(k) == Some(v)),
                    None => want.is_empty(),
                })
                .map(|(i, _)| i)
                .collect();
            (name.clone(), members)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_are_services_of_the_resources_namespace_and_dotted_names_are_fqdns() {
        let r = Registry::new("cluster.local");
        assert_eq!(
            r.resolve("reviews", "payments"),
            "reviews.payments.svc.cluster.local"
        );
        assert_eq!(
            r.resolve("reviews.payments.svc.cluster.local", "other"),
            "reviews.payments.svc.cluster.local"
        );
        // Istio takes any dotted name as written: `reviews.payments` is not expanded.
        assert_eq!(r.resolve("reviews.payments", "x"), "reviews.payments");
        assert_eq!(
            r.resolve("*.payments.svc.cluster.local", "x"),
            "*.payments.svc.cluster.local"
        );
    }

    #[test]
    fn subsets_take_the_endpoints_whose_pods_carry_all_their_labels() {
        let v1: BTreeMap<String, String> =
            [("app".into(), "r".into()), ("version".into(), "v1".into())].into();
        let v2: BTreeMap<String, String> =
            [("app".into(), "r".into()), ("version".into(), "v2".into())].into();
        let subsets: SubsetLabels = [
            (
                "v1".to_string(),
                [("version".to_string(), "v1".to_string())].into(),
            ),
            (
                "v2".to_string(),
                [("version".to_string(), "v2".to_string())].into(),
            ),
            ("all".to_string(), BTreeMap::new()),
            (
                "v3".to_string(),
                [("version".to_string(), "v3".to_string())].into(),
            ),
        ]
        .into();
        let got = subset_members(&subsets, &[Some(&v2), Some(&v1), None, Some(&v2)]);
        assert_eq!(got["v1"], [1]);
        assert_eq!(got["v2"], [0, 3]);
        assert_eq!(got["all"], [0, 1, 2, 3]);
        assert!(
            got["v3"].is_empty(),
            "a subset no pod matches is known and empty"
        );
    }
}
