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
    /// The mesh's root namespace (`--root-namespace`): its DestinationRules are the defaults
    /// that a rule of any other namespace replaces for a host.
    pub root_namespace: String,
    services: BTreeMap<String, Vec<PortInfo>>,
}

/// Istio's host matching: `*` takes every host, `*.suffix` every host ending in `.suffix`
/// (any number of labels before it, never `suffix` itself), any other name only itself.
pub fn host_matches(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix('*') {
        Some("") => true,
        Some(suffix) => {
            suffix.starts_with('.') && host.len() > suffix.len() && host.ends_with(suffix)
        }
        None => pattern == host,
    }
}

/// How specific a host pattern is, ordered: an exact name beats every wildcard, and a longer
/// wildcard suffix beats a shorter one (`*.shop.svc.cluster.local` over `*.cluster.local` over
/// `*`), as Envoy picks a virtual host and Istio a DestinationRule.
pub fn specificity(pattern: &str) -> (bool, usize) {
    (!pattern.starts_with('*'), pattern.len())
}

/// The most specific of `patterns` that matches `host`.
pub fn most_specific<'p>(
    patterns: impl IntoIterator<Item = &'p str>,
    host: &str,
) -> Option<&'p str> {
    patterns
        .into_iter()
        .filter(|p| host_matches(p, host))
        .max_by_key(|p| specificity(p))
}

impl Registry {
    pub fn new(cluster_domain: &str) -> Self {
        Registry {
            cluster_domain: cluster_domain.to_string(),
            root_namespace: String::new(),
            services: BTreeMap::new(),
        }
    }

    pub fn with_root_namespace(mut self, namespace: &str) -> Self {
        self.root_namespace = namespace.to_string();
        self
    }

    /// Every Service host known.
    pub fn hosts(&self) -> impl Iterator<Item = &str> {
        self.services.keys().map(String::as_str)
    }

    /// The Services a resource's `host` names: one (resolved in `namespace`), or every known
    /// Service a wildcard matches; Err with the resolved name when it names none.
    pub fn expand(&self, host: &str, namespace: &str) -> Result<Vec<String>, String> {
        let resolved = self.resolve(host, namespace);
        let found: Vec<String> = if resolved.starts_with('*') {
            self.hosts()
                .filter(|h| host_matches(&resolved, h))
                .map(String::from)
                .collect()
        } else if self.services.contains_key(&resolved) {
            vec![resolved.clone()]
        } else {
            Vec::new()
        };
        if found.is_empty() {
            Err(resolved)
        } else {
            Ok(found)
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
    /// (Service FQDN, port) -> VirtualService `tls`/`tcp` routes ([`super::l4`]).
    pub l4: BTreeMap<(String, u16), super::l4::L4Table>,
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
    /// SMI HTTPRouteGroups, which TrafficSplits' `matches` name.
    pub http_route_groups: &'a [Source<'a>],
}

/// Compiles every routing resource against the Services of the mesh. DestinationRules first
/// (VirtualServices name their subsets), then VirtualServices (one per host, the oldest, as
/// Istio does for sidecars), then TrafficSplits for the hosts no VirtualService routes.
pub fn compile(registry: &Registry, resources: Resources<'_>) -> RouteTables {
    let mut problems = Vec::new();
    let (subsets, tls) = destination_rules(registry, resources.destination_rules, &mut problems);
    let (mut http, l4) = istio::virtual_services_all(
        registry,
        &subsets,
        resources.virtual_services,
        &mut problems,
    );
    let vs_hosts: std::collections::BTreeSet<String> =
        http.keys().map(|(h, _)| h.clone()).collect();
    let groups = smi::route_groups(resources.http_route_groups);
    let splits = smi::traffic_splits(registry, &groups, resources.traffic_splits, &mut problems);
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
        // A split with `matches` has two routes per port (the split, then the root).
        for (port, route) in split.routes {
            http.entry((root.clone(), port)).or_default().push(route);
        }
    }
    RouteTables {
        subsets,
        tls,
        http,
        l4,
        virtual_service_hosts: vs_hosts,
        problems,
    }
}

/// The DestinationRules that apply to each Service, looked up as Istio does: the rules of
/// namespaces other than the root namespace first (when one of them names a Service, the root
/// namespace's rules do not apply to it), then the root namespace's (mesh-wide defaults);
/// within a level, the most specific host (exact, then the longest `*.` wildcard) decides,
/// and rules of that same host merge ([`istio::destination_rules_with_tls`], oldest first).
/// Istio looks in the client's namespace, then the Service's: weft has one table for every
/// client, so "namespace-local" is any namespace but the root one.
fn destination_rules(
    registry: &Registry,
    sources: &[Source<'_>],
    problems: &mut Vec<Problem>,
) -> (
    BTreeMap<String, SubsetLabels>,
    BTreeMap<String, super::model::HostPolicy>,
) {
    let (root, local): (Vec<Source>, Vec<Source>) = sources.iter().copied().partition(|s| {
        !registry.root_namespace.is_empty() && s.namespace == registry.root_namespace
    });
    let levels = [
        istio::destination_rules_with_tls(registry, &local, problems),
        istio::destination_rules_with_tls(registry, &root, problems),
    ];
    let mut subsets = BTreeMap::new();
    let mut tls = BTreeMap::new();
    let hosts: Vec<String> = registry
        .hosts()
        .map(String::from)
        // A rule's exact host that is no Service (yet) keeps its entry: its subsets name
        // nothing, and a destination to it is reported as missing, not as subset-less.
        .chain(levels.iter().flat_map(|(s, t)| {
            s.keys()
                .chain(t.keys())
                .filter(|h| !h.starts_with('*'))
                .cloned()
        }))
        .collect();
    for host in hosts {
        for (level_subsets, level_tls) in &levels {
            let patterns = level_subsets
                .keys()
                .chain(level_tls.keys())
                .map(String::as_str);
            if let Some(pattern) = most_specific(patterns, &host) {
                if let Some(x) = level_subsets.get(pattern) {
                    subsets.insert(host.clone(), x.clone());
                }
                if let Some(x) = level_tls.get(pattern) {
                    tls.insert(host.clone(), x.clone());
                }
                break;
            }
        }
    }
    (subsets, tls)
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

    #[test]
    fn wildcards_match_any_labels_before_their_suffix_and_the_most_specific_wins() {
        let table = [
            ("*", "reviews.shop.svc.cluster.local", true),
            (
                "*.shop.svc.cluster.local",
                "reviews.shop.svc.cluster.local",
                true,
            ),
            (
                "*.svc.cluster.local",
                "reviews.shop.svc.cluster.local",
                true,
            ),
            ("*.cluster.local", "reviews.shop.svc.cluster.local", true),
            ("*.shop.svc.cluster.local", "shop.svc.cluster.local", false),
            (
                "*.shop.svc.cluster.local",
                "reviews.myshop.svc.cluster.local",
                false,
            ),
            (
                "*shop.svc.cluster.local",
                "reviews.myshop.svc.cluster.local",
                false,
            ),
            (
                "reviews.shop.svc.cluster.local",
                "reviews.shop.svc.cluster.local",
                true,
            ),
            (
                "reviews.shop.svc.cluster.local",
                "ratings.shop.svc.cluster.local",
                false,
            ),
        ];
        for (pattern, host, want) in table {
            assert_eq!(host_matches(pattern, host), want, "{pattern} vs {host}");
        }
        let patterns = [
            "*",
            "*.cluster.local",
            "*.shop.svc.cluster.local",
            "reviews.shop.svc.cluster.local",
        ];
        let pick = |host: &str| most_specific(patterns.iter().copied(), host);
        assert_eq!(
            pick("reviews.shop.svc.cluster.local"),
            Some("reviews.shop.svc.cluster.local")
        );
        assert_eq!(
            pick("ratings.shop.svc.cluster.local"),
            Some("*.shop.svc.cluster.local")
        );
        assert_eq!(pick("db.pay.svc.cluster.local"), Some("*.cluster.local"));
        assert_eq!(pick("example.com"), Some("*"));
        assert_eq!(most_specific(["a.b"], "c.d"), None);
        let r = {
            let mut r = Registry::new("cluster.local");
            r.add("reviews.shop.svc.cluster.local", 80, true);
            r.add("ratings.shop.svc.cluster.local", 80, true);
            r.add("db.pay.svc.cluster.local", 80, true);
            r
        };
        assert_eq!(
            r.expand("*.shop.svc.cluster.local", "x"),
            Ok(vec![
                "ratings.shop.svc.cluster.local".to_string(),
                "reviews.shop.svc.cluster.local".to_string()
            ])
        );
        assert_eq!(
            r.expand("db", "pay"),
            Ok(vec!["db.pay.svc.cluster.local".to_string()])
        );
        assert_eq!(
            r.expand("db", "shop"),
            Err("db.shop.svc.cluster.local".into())
        );
        assert_eq!(r.expand("*.nowhere", "shop"), Err("*.nowhere".into()));
    }

    /// Istio's DestinationRule lookup, one row per Service: which rule's TLS mode it gets.
    #[test]
    fn destination_rules_resolve_by_specificity_and_namespace_local_before_root() {
        let mut r = Registry::new("cluster.local").with_root_namespace("istio-system");
        for h in [
            "reviews.shop.svc.cluster.local",
            "ratings.shop.svc.cluster.local",
            "db.pay.svc.cluster.local",
            "cache.pay.svc.cluster.local",
            "web.front.svc.cluster.local",
        ] {
            r.add(h, 80, true);
        }
        let dr = |host: &str, mode: &str| serde_json::json!({"host": host, "trafficPolicy": {"tls": {"mode": mode}}});
        let specs = [
            // Mesh-wide default in the root namespace: ISTIO_MUTUAL for everything.
            (
                "istio-system",
                "mesh-default",
                dr("*.cluster.local", "ISTIO_MUTUAL"),
            ),
            // A root rule for one host: replaced by pay's own wildcard (namespace-local first).
            (
                "istio-system",
                "db-root",
                dr("db.pay.svc.cluster.local", "ISTIO_MUTUAL"),
            ),
            ("pay", "pay-plain", dr("*.pay.svc.cluster.local", "DISABLE")),
            // shop: a wildcard for the namespace, and an exact rule beating it for reviews.
            (
                "shop",
                "shop-all",
                dr("*.shop.svc.cluster.local", "DISABLE"),
            ),
            ("shop", "reviews", dr("reviews", "ISTIO_MUTUAL")),
        ];
        let sources: Vec<Source> = specs
            .iter()
            .map(|(ns, name, spec)| Source {
                namespace: ns,
                name,
                created: "2026-01-01T00:00:00Z",
                spec,
            })
            .collect();
        let tables = compile(
            &r,
            Resources {
                destination_rules: &sources,
                ..Default::default()
            },
        );
        assert_eq!(tables.problems, []);
        let rule = |host: &str| tables.tls.get(host).map(|p| (p.rule.as_str(), p.mode));
        use super::super::model::ClientTls::{Disable, IstioMutual};
        let table = [
            (
                "reviews.shop.svc.cluster.local",
                ("shop/reviews", Some(IstioMutual)),
            ),
            (
                "ratings.shop.svc.cluster.local",
                ("shop/shop-all", Some(Disable)),
            ),
            ("db.pay.svc.cluster.local", ("pay/pay-plain", Some(Disable))),
            (
                "cache.pay.svc.cluster.local",
                ("pay/pay-plain", Some(Disable)),
            ),
            (
                "web.front.svc.cluster.local",
                ("istio-system/mesh-default", Some(IstioMutual)),
            ),
        ];
        for (host, want) in table {
            assert_eq!(rule(host), Some(want), "{host}");
        }
        // A wildcard that matches no Service is reported, not silently kept.
        let lone = [Source {
            namespace: "shop",
            name: "nothing",
            created: "t",
            spec: &dr("*.nowhere.example", "DISABLE"),
        }];
        let tables = compile(
            &r,
            Resources {
                destination_rules: &lone,
                ..Default::default()
            },
        );
        assert!(tables.tls.is_empty());
        assert!(
            tables.problems[0]
                .message
                .contains("*.nowhere.example is not a Service"),
            "{:?}",
            tables.problems
        );
    }

    /// VirtualServices: a wildcard host routes every Service it matches; an exact host (or a
    /// longer wildcard) takes its Service from it whatever their ages.
    #[test]
    fn a_wildcard_virtual_service_routes_the_services_it_matches_unless_a_more_specific_one_does() {
        let mut r = Registry::new("cluster.local");
        for h in [
            "reviews.shop.svc.cluster.local",
            "ratings.shop.svc.cluster.local",
            "db.pay.svc.cluster.local",
        ] {
            r.add(h, 80, true);
        }
        let vs = |host: &str, to: &str| serde_json::json!({"hosts": [host], "http": [{"route": [{"destination": {"host": to}}]}]});
        let specs = [
            (
                "all",
                "2026-01-01T00:00:00Z",
                vs("*.svc.cluster.local", "db.pay.svc.cluster.local"),
            ),
            (
                "shop",
                "2026-01-02T00:00:00Z",
                vs("*.shop.svc.cluster.local", "ratings"),
            ),
            ("reviews", "2026-01-03T00:00:00Z", vs("reviews", "reviews")),
        ];
        let sources: Vec<Source> = specs
            .iter()
            .map(|(name, created, spec)| Source {
                namespace: "shop",
                name,
                created,
                spec,
            })
            .collect();
        let tables = compile(
            &r,
            Resources {
                virtual_services: &sources,
                ..Default::default()
            },
        );
        assert_eq!(tables.problems, []);
        let by = |host: &str| tables.http[&(host.to_string(), 80)][0].name.clone();
        assert_eq!(by("reviews.shop.svc.cluster.local"), "shop/reviews");
        assert_eq!(by("ratings.shop.svc.cluster.local"), "shop/shop");
        assert_eq!(by("db.pay.svc.cluster.local"), "shop/all");
        // Two equally specific hosts: the oldest keeps it and the other is reported.
        let twin = [
            sources[1],
            Source {
                namespace: "shop",
                name: "twin",
                created: "2026-01-05T00:00:00Z",
                spec: &specs[1].2,
            },
        ];
        let tables = compile(
            &r,
            Resources {
                virtual_services: &twin,
                ..Default::default()
            },
        );
        assert_eq!(tables.problems.len(), 1, "{:?}", tables.problems);
        assert!(
            tables.problems[0]
                .message
                .contains("already routed by VirtualService shop/shop")
        );
        // `*` alone is refused for the mesh, as Istio's validation does.
        let star = vs("*", "reviews");
        let tables = compile(
            &r,
            Resources {
                virtual_services: &[Source {
                    namespace: "shop",
                    name: "star",
                    created: "t",
                    spec: &star,
                }],
                ..Default::default()
            },
        );
        assert!(tables.http.is_empty());
        assert!(
            tables.problems[0]
                .message
                .contains("the wildcard host * is not allowed"),
            "{:?}",
            tables.problems
        );
    }
}
