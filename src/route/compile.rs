//! From the routing resources (Istio DestinationRules and VirtualServices, SMI TrafficSplits)
//! to the route tables the snapshot carries, kube-free: what the compilers read about the
//! mesh's Services ([`Registry`]), one resource as stored ([`Source`]), and the precedence
//! between them ([`compile_for`], per client namespace: `exportTo` and Istio's DestinationRule
//! lookup). Everything not applied as written is a [`Problem`].

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
    /// Named ports of Services, (host, name) -> port (a GAMMA parent's `sectionName`).
    port_names: BTreeMap<(String, String), u16>,
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
            port_names: BTreeMap::new(),
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

    /// Records the name of a Service port.
    pub fn name_port(&mut self, host: &str, name: &str, port: u16) {
        self.port_names
            .insert((host.to_string(), name.to_string()), port);
    }

    /// The port of Service `host` named `name`.
    pub fn port_named(&self, host: &str, name: &str) -> Option<u16> {
        self.port_names
            .get(&(host.to_string(), name.to_string()))
            .copied()
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

/// Which client namespaces see a VirtualService or DestinationRule (`exportTo`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Export {
    /// `*`, or no `exportTo` (Istio's default `defaultVirtualServiceExportTo` /
    /// `defaultDestinationRuleExportTo` is `*`, and weft keeps that default).
    All,
    /// `.` (the resource's own namespace) and namespace names.
    Namespaces(std::collections::BTreeSet<String>),
}

impl Export {
    pub fn visible_in(&self, namespace: &str) -> bool {
        match self {
            Export::All => true,
            Export::Namespaces(n) => n.contains(namespace),
        }
    }

    /// Whether only its own namespace sees it (Istio's "private" rule, which a client of
    /// the root namespace looks up first).
    fn private_to(&self, own: &str) -> bool {
        matches!(self, Export::Namespaces(n) if n.len() == 1 && n.contains(own))
    }
}

/// `exportTo` as Istio validates it for VirtualServices and DestinationRules: `*`, `.` (the
/// resource's namespace) or namespace names; `*` alone; `~` (no one) is refused, as Istio's
/// validation refuses it for these kinds (it is for ServiceEntries); no entry twice (`.` and
/// the own namespace count as one). Absent or empty: every namespace.
pub fn export_of(namespace: &str, export_to: Option<&[String]>) -> Result<Export, String> {
    let Some(list) = export_to.filter(|l| !l.is_empty()) else {
        return Ok(Export::All);
    };
    let mut set = std::collections::BTreeSet::new();
    for (i, e) in list.iter().enumerate() {
        let name = match e.as_str() {
            "*" if list.len() > 1 => {
                return Err(format!(
                    "exportTo[{i}]: cannot have both public (*) and non-public exportTo values"
                ));
            }
            "*" => return Ok(Export::All),
            "~" => {
                return Err(format!(
                    "exportTo[{i}]: ~ (none) is not allowed for VirtualServices and DestinationRules (Istio refuses it too)"
                ));
            }
            "." => namespace,
            ns if is_dns_label(ns) => ns,
            other => {
                return Err(format!(
                    "exportTo[{i}]: {other:?} is not '.', '*' or a namespace name"
                ));
            }
        };
        if !set.insert(name.to_string()) {
            return Err(format!(
                "exportTo[{i}]: {name} is named twice ('.' is the resource's namespace)"
            ));
        }
    }
    Ok(Export::Namespaces(set))
}

/// An RFC 1123 label (a namespace name).
pub(crate) fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// The `exportTo` of a stored resource; one that cannot be read counts as every namespace
/// here (its compiler refuses the resource, naming the field).
fn export_of_source(src: &Source<'_>) -> Export {
    let list: Option<Vec<String>> = src
        .spec
        .get("exportTo")
        .and_then(|v| serde_json::from_value(v.clone()).ok());
    export_of(src.namespace, list.as_deref()).unwrap_or(Export::All)
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

/// Compiles every routing resource against the Services of the mesh, as a client namespace
/// with no routing resources of its own, named by no `exportTo`, sees them
/// ([`compile_for`] with `None`).
pub fn compile(registry: &Registry, resources: Resources<'_>) -> RouteTables {
    compile_for(registry, resources, None)
}

/// Compiles every routing resource for the proxies of client namespace `client` (`None`: a
/// namespace that holds no routing resource and that no `exportTo` names, which sees what is
/// exported to every namespace). DestinationRules first, by Istio's lookup
/// ([`destination_rules`]; VirtualServices name their subsets), then the VirtualServices the
/// client sees (one per host, [`visible_virtual_services`] gives the order), then
/// TrafficSplits for the hosts no VirtualService routes. A resource the client does not see
/// is still checked, so what makes it invalid is named whoever sees it.
pub fn compile_for(
    registry: &Registry,
    resources: Resources<'_>,
    client: Option<&str>,
) -> RouteTables {
    let mut problems = Vec::new();
    let (subsets, tls) =
        destination_rules(registry, resources.destination_rules, client, &mut problems);
    let visible = visible_virtual_services(resources.virtual_services, client);
    let (mut http, l4) =
        istio::virtual_services_ordered(registry, &subsets, &visible, &mut problems);
    for src in resources
        .virtual_services
        .iter()
        .filter(|s| !visible.iter().any(|(_, v)| std::ptr::eq(*v, *s)))
    {
        if let Err(istio::Refusal::Invalid(message)) =
            istio::compile_virtual_service(registry, &subsets, src)
        {
            problems.push(Problem::new(istio::VIRTUAL_SERVICE, src, message));
        }
    }
    let vs_hosts: std::collections::BTreeSet<String> = http
        .keys()
        .chain(l4.keys())
        .map(|(h, _)| h.clone())
        .collect();
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
    let mut unique: Vec<Problem> = Vec::with_capacity(problems.len());
    for p in problems {
        if !unique.contains(&p) {
            unique.push(p);
        }
    }
    RouteTables {
        subsets,
        tls,
        http,
        l4,
        virtual_service_hosts: vs_hosts,
        problems: unique,
    }
}

/// The VirtualServices a client of namespace `client` sees, in the order Istio's sidecars
/// take them (`SelectVirtualServices`): those of its own namespace exported to it
/// ("private", group 0), then those of other namespaces naming it in `exportTo` (1), then
/// those exported everywhere (2); oldest first within each group.
pub fn visible_virtual_services<'a>(
    sources: &'a [Source<'a>],
    client: Option<&str>,
) -> Vec<(u8, &'a Source<'a>)> {
    let mut out: Vec<(u8, &Source)> = by_age(sources)
        .into_iter()
        .filter_map(|src| {
            let export = export_of_source(src);
            let group =
                match (&export, client) {
                    (Export::All, _) => 2,
                    (Export::Namespaces(_), Some(c)) if export.visible_in(c) => {
                        if src.namespace == c { 0 } else { 1 }
                    }
                    _ => return None,
                };
            Some((group, src))
        })
        .collect();
    // Stable: by_age's order holds within a group.
    out.sort_by_key(|(group, _)| *group);
    out
}

/// The namespace of a Service host `name.<namespace>.svc.<cluster domain>`.
fn service_namespace<'h>(registry: &Registry, host: &'h str) -> Option<&'h str> {
    let rest = host.strip_suffix(registry.cluster_domain.as_str())?;
    let rest = rest.strip_suffix(".svc.")?;
    let (_, namespace) = rest.split_once('.')?;
    (!namespace.contains('.')).then_some(namespace)
}

/// The DestinationRule subsets a proxy of namespace `client` sees ([`destination_rules`]'s
/// lookup), without compiling routes: what a gateway needs. Findings are left to
/// [`compile_for`], which names them for every client.
pub fn subsets_for(
    registry: &Registry,
    destination_rules: &[Source<'_>],
    client: Option<&str>,
) -> BTreeMap<String, SubsetLabels> {
    self::destination_rules(registry, destination_rules, client, &mut Vec::new()).0
}

/// The host policies (TLS mode, load balancing, connection pool, ...) of the DestinationRules
/// `client`'s proxies apply, by the same lookup as [`subsets_for`].
pub fn policies_for(
    registry: &Registry,
    destination_rules: &[Source<'_>],
    client: Option<&str>,
) -> BTreeMap<String, super::model::HostPolicy> {
    self::destination_rules(registry, destination_rules, client, &mut Vec::new()).1
}

/// One set of DestinationRules merged per host pattern ([`istio::destination_rules_with_tls`]).
type Level = (
    BTreeMap<String, SubsetLabels>,
    BTreeMap<String, super::model::HostPolicy>,
);

/// The DestinationRules that apply to each Service for a client of namespace `client`, looked
/// up as Istio does (`PushContext.destinationRule`):
/// 1. the rules of the client's own namespace that it sees (`exportTo` absent, `*`, `.` or
///    the namespace; for a client of the root namespace, only the root namespace's private
///    rules);
/// 2. the rules of the Service's namespace exported beyond it (not only to itself), if the
///    most specific of them is exported to the client;
/// 3. the same for the root namespace (`--root-namespace`: mesh-wide defaults).
///
/// The first level with a rule whose host matches decides; within it the most specific host
/// (exact, then the longest `*.` wildcard) wins and the rules of that same host merge (oldest
/// first). A rule of a third namespace never applies (Istio ignores it too).
fn destination_rules(
    registry: &Registry,
    sources: &[Source<'_>],
    client: Option<&str>,
    problems: &mut Vec<Problem>,
) -> Level {
    let root = registry.root_namespace.as_str();
    let exports: Vec<Export> = sources.iter().map(export_of_source).collect();
    let mut used = vec![false; sources.len()];
    let set = |keep: &dyn Fn(&Source, &Export) -> bool,
               used: &mut Vec<bool>,
               problems: &mut Vec<Problem>|
     -> Level {
        let chosen: Vec<Source> = sources
            .iter()
            .zip(&exports)
            .enumerate()
            .filter(|(_, (s, e))| keep(s, e))
            .map(|(i, (s, _))| {
                used[i] = true;
                *s
            })
            .collect();
        istio::destination_rules_with_tls(registry, &chosen, problems)
    };
    // Level 1.
    let own: Level = match client {
        Some(c) if !root.is_empty() && c == root => set(
            &|s, e| s.namespace == root && e.private_to(root),
            &mut used,
            problems,
        ),
        Some(c) => set(
            &|s, e| s.namespace == c && e.visible_in(c),
            &mut used,
            problems,
        ),
        None => Level::default(),
    };
    let visible = |e: &Export| client.map_or(*e == Export::All, |c| e.visible_in(c));
    // Levels 2 and 3, per owning namespace: every exported rule (the most specific host is
    // chosen among them) and those the client sees.
    let mut exported: BTreeMap<String, (Level, Level)> = BTreeMap::new();
    let hosts: Vec<String> = registry
        .hosts()
        .map(String::from)
        // A rule's exact host that is no Service (yet) keeps its entry: its subsets name
        // nothing, and a destination to it is reported as missing, not as subset-less.
        .chain(sources.iter().filter_map(|s| {
            let host = s.spec.get("host")?.as_str()?;
            let host = registry.resolve(host, s.namespace);
            (!host.starts_with('*')).then_some(host)
        }))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut subsets = BTreeMap::new();
    let mut tls = BTreeMap::new();
    for host in hosts {
        let mut take = |level: &Level, pattern: &str| {
            if let Some(x) = level.0.get(pattern) {
                subsets.insert(host.clone(), x.clone());
            }
            if let Some(x) = level.1.get(pattern) {
                tls.insert(host.clone(), x.clone());
            }
        };
        fn patterns(l: &Level) -> impl Iterator<Item = &str> {
            l.0.keys().chain(l.1.keys()).map(String::as_str)
        }
        if let Some(p) = most_specific(patterns(&own), &host) {
            take(&own, p);
            continue;
        }
        let owners = service_namespace(registry, &host)
            .into_iter()
            .chain((!root.is_empty()).then_some(root));
        for ns in owners.map(String::from).collect::<Vec<_>>() {
            if !exported.contains_key(&ns) {
                let all = set(
                    &|s, e| s.namespace == ns && !e.private_to(&ns),
                    &mut used,
                    problems,
                );
                let seen = set(
                    &|s, e| s.namespace == ns && !e.private_to(&ns) && visible(e),
                    &mut used,
                    problems,
                );
                exported.insert(ns.clone(), (all, seen));
            }
            let (all, seen) = &exported[&ns];
            let Some(p) = most_specific(patterns(all), &host) else {
                continue;
            };
            if seen.0.contains_key(p) || seen.1.contains_key(p) {
                take(seen, p);
                break;
            }
        }
    }
    // Every rule is checked once even if this client looks at none of it, so what is wrong
    // with it is named (the levels above report their merges' conflicts).
    let unused: Vec<Source> = sources
        .iter()
        .zip(&used)
        .filter(|(_, u)| !**u)
        .map(|(s, _)| *s)
        .collect();
    for src in unused {
        istio::destination_rules_with_tls(registry, &[src], problems);
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

    fn sources<'a>(specs: &'a [(&'a str, &'a str, serde_json::Value)]) -> Vec<Source<'a>> {
        specs
            .iter()
            .enumerate()
            .map(|(i, (ns, name, spec))| Source {
                namespace: ns,
                name,
                // Listed oldest first.
                created: [
                    "2026-01-01",
                    "2026-01-02",
                    "2026-01-03",
                    "2026-01-04",
                    "2026-01-05",
                ][i.min(4)],
                spec,
            })
            .collect()
    }

    /// Istio's DestinationRule lookup per client namespace (`PushContext.destinationRule`):
    /// the client's namespace, then the Service's (rules exported beyond it, if the most
    /// specific one is exported to the client), then the root namespace; a rule of a third
    /// namespace never applies.
    #[test]
    fn destination_rules_are_looked_up_in_the_client_then_the_service_then_the_root_namespace() {
        let mut r = Registry::new("cluster.local").with_root_namespace("istio-system");
        r.add("reviews.shop.svc.cluster.local", 9080, true);
        r.add("ratings.shop.svc.cluster.local", 9080, true);
        let dr = |host: &str, mode: &str, export: &[&str]| {
            let mut spec =
                serde_json::json!({"host": host, "trafficPolicy": {"tls": {"mode": mode}}});
            if !export.is_empty() {
                spec["exportTo"] = serde_json::json!(export);
            }
            spec
        };
        let specs = [
            (
                "istio-system",
                "mesh-default",
                dr("*.cluster.local", "ISTIO_MUTUAL", &[]),
            ),
            // Private to the root namespace: only its own clients look it up, and first.
            (
                "istio-system",
                "root-only",
                dr("ratings.shop.svc.cluster.local", "DISABLE", &["."]),
            ),
            ("shop", "reviews-shop", dr("reviews", "DISABLE", &[])),
            ("shop", "ratings-private", dr("ratings", "DISABLE", &["."])),
            // Exported to web only: the most specific of shop's exported rules for ratings.
            (
                "shop",
                "shop-for-web",
                dr("*.shop.svc.cluster.local", "ISTIO_MUTUAL", &["web"]),
            ),
            // A client-namespace rule for another namespace's Service.
        ];
        let mut all: Vec<(&str, &str, serde_json::Value)> = specs.to_vec();
        all.push((
            "front",
            "reviews-front",
            dr("reviews.shop.svc.cluster.local", "ISTIO_MUTUAL", &[]),
        ));
        let srcs = sources(&all);
        let rule = |client: Option<&str>, host: &str| {
            let t = compile_for(
                &r,
                Resources {
                    destination_rules: &srcs,
                    ..Default::default()
                },
                client,
            );
            assert_eq!(t.problems, [], "{client:?}");
            t.tls.get(host).map(|p| p.rule.clone()).unwrap_or_default()
        };
        let (reviews, ratings) = (
            "reviews.shop.svc.cluster.local",
            "ratings.shop.svc.cluster.local",
        );
        let table = [
            // The client's own namespace first.
            (Some("front"), reviews, "front/reviews-front"),
            (Some("shop"), reviews, "shop/reviews-shop"),
            (Some("shop"), ratings, "shop/ratings-private"),
            // front has no rule for ratings; shop's private one and its rule for web are
            // not front's: the root namespace's default.
            (Some("front"), ratings, "istio-system/mesh-default"),
            (Some("web"), ratings, "shop/shop-for-web"),
            // A third namespace's rule (front's) never applies to web.
            (Some("web"), reviews, "shop/reviews-shop"),
            (None, reviews, "shop/reviews-shop"),
            (None, ratings, "istio-system/mesh-default"),
            // A client of the root namespace: its private rules first, then the Service's.
            (Some("istio-system"), ratings, "istio-system/root-only"),
            (Some("istio-system"), reviews, "shop/reviews-shop"),
        ];
        for (client, host, want) in table {
            assert_eq!(rule(client, host), want, "{client:?} -> {host}");
        }
    }

    /// `exportTo` on VirtualServices: who sees one, and which one wins a host for a client
    /// (its own namespace's private ones, then those exported to it, then public ones).
    #[test]
    fn virtual_services_are_seen_where_export_to_says_and_a_clients_own_come_first() {
        let mut r = Registry::new("cluster.local");
        r.add("reviews.shop.svc.cluster.local", 9080, true);
        let vs = |export: &[&str]| {
            let mut spec = serde_json::json!({"hosts": ["reviews.shop.svc.cluster.local"],
                "http": [{"route": [{"destination": {"host": "reviews.shop.svc.cluster.local"}}]}]});
            if !export.is_empty() {
                spec["exportTo"] = serde_json::json!(export);
            }
            spec
        };
        let all = [
            ("shop", "public", vs(&[])),
            ("shop", "private", vs(&["."])),
            ("front", "for-web", vs(&["web", "."])),
        ];
        let srcs = sources(&all);
        let owner = |client: Option<&str>| {
            let t = compile_for(
                &r,
                Resources {
                    virtual_services: &srcs,
                    ..Default::default()
                },
                client,
            );
            let name = t.http[&("reviews.shop.svc.cluster.local".to_string(), 9080)][0]
                .name
                .clone();
            (name, t.problems)
        };
        let (name, problems) = owner(None);
        assert_eq!(name, "shop/public");
        assert_eq!(problems, [], "the others are not seen: no conflict");
        let (name, problems) = owner(Some("shop"));
        assert_eq!(name, "shop/private", "a private one wins though younger");
        assert_eq!(problems, [], "an override by exportTo is no conflict");
        // Two of one group are: the younger is named.
        let twins = [("shop", "public", vs(&[])), ("shop", "twin", vs(&[]))];
        let srcs2 = sources(&twins);
        let t = compile_for(
            &r,
            Resources {
                virtual_services: &srcs2,
                ..Default::default()
            },
            Some("shop"),
        );
        assert_eq!(t.problems.len(), 1, "{:?}", t.problems);
        assert_eq!(t.problems[0].name, "twin");
        assert_eq!(owner(Some("web")).0, "front/for-web");
        assert_eq!(owner(Some("front")).0, "front/for-web");
        assert_eq!(owner(Some("other")).0, "shop/public");
        // Invalid exportTo values, as Istio's validation refuses them, refuse the resource
        // for every client, named even where it would not be seen.
        for (export, says) in [
            (vec!["~"], "~ (none) is not allowed"),
            (vec!["*", "."], "cannot have both public (*) and non-public"),
            (vec![".", "shop"], "shop is named twice"),
            (
                vec!["Not_A_Namespace"],
                "is not '.', '*' or a namespace name",
            ),
        ] {
            let bad = [("shop", "bad", vs(&export))];
            let srcs = sources(&bad);
            let t = compile_for(
                &r,
                Resources {
                    virtual_services: &srcs,
                    ..Default::default()
                },
                Some("web"),
            );
            assert!(t.http.is_empty(), "{export:?}");
            assert!(
                t.problems.len() == 1 && t.problems[0].message.contains(says),
                "{export:?}: {:?}",
                t.problems
            );
        }
    }
}
