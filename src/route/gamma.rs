//! Gateway API routes for the mesh (GAMMA): an `HTTPRoute` or `GRPCRoute` whose `parentRefs`
//! name a Service, compiled into the same per-Service-port tables VirtualServices fill
//! ([`super::model::HttpRoute`], first match wins), so the proxy has one matcher. The Gateway
//! API's match precedence across routes is applied here, by sorting; each parent's
//! `Accepted` / `ResolvedRefs` conditions are computed here too (pure), for the operator to
//! write. Compiled with the control plane (it reads [`crate::api::gateway_api`]).

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};

use super::action::{Actions, HeaderEdits, Redirect, Retries, Rewrite};
use super::compile::{Registry, Source};
use super::model::{
    Destination, HttpRoute, MAX_DESTINATIONS, MAX_ROUTES, Pattern, RequestMatch, StringMatch,
};
use super::reference_grant::{Ref, ReferenceGrants};
use crate::api::gateway_api::common::{
    BackendRef, HeaderFilter, HeaderMatch, MirrorFilter, ParentReference,
};
use crate::api::gateway_api::{grpcroute, httproute};

pub const HTTP_ROUTE: &str = "HTTPRoute";
pub const GRPC_ROUTE: &str = "GRPCRoute";
pub const TLS_ROUTE: &str = "TLSRoute";
pub const TCP_ROUTE: &str = "TCPRoute";

/// Condition types and reasons, as the Gateway API names them.
pub const ACCEPTED: &str = "Accepted";
pub const RESOLVED_REFS: &str = "ResolvedRefs";
pub const PARTIALLY_INVALID: &str = "PartiallyInvalid";
pub const REASON_ACCEPTED: &str = "Accepted";
pub const REASON_RESOLVED_REFS: &str = "ResolvedRefs";
pub const REASON_UNSUPPORTED_VALUE: &str = "UnsupportedValue";
pub const REASON_NO_MATCHING_PARENT: &str = "NoMatchingParent";
/// Not one of the spec's listed reasons (it allows others): the parent Service is routed by
/// a VirtualService, which weft applies instead.
pub const REASON_NOT_ALLOWED_BY_PARENTS: &str = "NotAllowedByParents";
pub const REASON_BACKEND_NOT_FOUND: &str = "BackendNotFound";
pub const REASON_INVALID_KIND: &str = "InvalidKind";
pub const REASON_REF_NOT_PERMITTED: &str = "RefNotPermitted";

/// Which kind of route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RouteKind {
    Http,
    Grpc,
    /// A Gateway's TLS (Passthrough) and TCP listeners only ([`super::gateway_api`]): never
    /// a mesh route, never compiled here.
    Tls,
    Tcp,
}

impl RouteKind {
    pub fn kind(self) -> &'static str {
        match self {
            RouteKind::Http => HTTP_ROUTE,
            RouteKind::Grpc => GRPC_ROUTE,
            RouteKind::Tls => TLS_ROUTE,
            RouteKind::Tcp => TCP_ROUTE,
        }
    }
}

/// One route as watched.
#[derive(Debug, Clone, Copy)]
pub struct RouteSource<'a> {
    pub kind: RouteKind,
    pub generation: Option<i64>,
    /// The object's uid: a route deleted and made again under its name is another object,
    /// whose status must be written although it says the same.
    pub uid: Option<&'a str>,
    pub source: Source<'a>,
}

/// One condition of a parent's status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    pub status: bool,
    pub reason: &'static str,
    pub message: String,
}

impl Condition {
    pub(crate) fn yes(reason: &'static str, message: impl Into<String>) -> Self {
        Condition {
            status: true,
            reason,
            message: message.into(),
        }
    }
    pub(crate) fn no(reason: &'static str, message: impl Into<String>) -> Self {
        Condition {
            status: false,
            reason,
            message: message.into(),
        }
    }
}

/// What weft says about one Service parent of a route (`status.parents[]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParentStatus {
    /// The parent reference as the route wrote it.
    pub parent_ref: ParentReference,
    pub accepted: Condition,
    pub resolved_refs: Condition,
    /// `PartiallyInvalid` (only ever `True`): the message names each dropped rule.
    pub partially_invalid: Option<Condition>,
}

/// The status of one route: one entry per Service parent weft serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteStatus {
    pub kind: RouteKind,
    pub namespace: String,
    pub name: String,
    pub generation: Option<i64>,
    pub uid: Option<String>,
    pub parents: Vec<ParentStatus>,
}

/// What the GAMMA routes of the mesh compile to.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Gamma {
    /// (Service FQDN, port) -> routes in the Gateway API's precedence order.
    pub http: BTreeMap<(String, u16), Vec<HttpRoute>>,
    pub statuses: Vec<RouteStatus>,
}

/// Compiles every route with a Service parent, as the proxies of client namespace `client`
/// take them (`None`: a namespace with no route of its own). `virtual_service_hosts` are the
/// Services a VirtualService routes: the VirtualService applies there and a route's parent on
/// them is not accepted (one route table per Service; see docs/traffic.md).
///
/// A producer route (its parent Service in its own namespace) applies to every client; a
/// consumer route (a parent Service in another namespace) only to the clients of its own
/// namespace, and there its routes replace the producer routes of that Service port
/// (GEP-1426: "requests from a namespace with consumer routes will utilize the set of routes
/// in the consumer namespace"). Every route is checked whoever `client` is, so the statuses
/// are the same from every call.
pub fn compile(
    registry: &Registry,
    routes: &[RouteSource<'_>],
    virtual_service_hosts: &BTreeSet<String>,
    client: Option<&str>,
) -> Gamma {
    // Oldest first, then by namespace and name (the spec's tie-breakers), so every replica
    // orders the same way.
    let mut sorted: Vec<&RouteSource> = routes.iter().collect();
    sorted.sort_by(|a, b| {
        (a.source.created, a.source.namespace, a.source.name, a.kind).cmp(&(
            b.source.created,
            b.source.namespace,
            b.source.name,
            b.kind,
        ))
    });
    // Entries of every table, with their precedence keys, before sorting.
    let mut entries = Entries::default();
    let mut statuses = Vec::new();
    for (age, r) in sorted.into_iter().enumerate() {
        let parents = compile_route(
            registry,
            r.kind,
            &r.source,
            age,
            virtual_service_hosts,
            client,
            &mut entries,
        );
        if !parents.is_empty() {
            statuses.push(RouteStatus {
                kind: r.kind,
                namespace: r.source.namespace.to_string(),
                name: r.source.name.to_string(),
                generation: r.generation,
                uid: r.uid.map(str::to_string),
                parents,
            });
        }
    }
    let ordered = |table: Table| {
        table.into_iter().map(|(at, mut list)| {
            list.sort_by(|a, b| a.0.cmp(&b.0));
            // The proxy refuses a larger table (and with it the whole snapshot).
            list.truncate(MAX_ROUTES);
            (at, list.into_iter().map(|(_, r)| r).collect::<Vec<_>>())
        })
    };
    let mut http: BTreeMap<(String, u16), Vec<HttpRoute>> = ordered(entries.producer).collect();
    // The client's consumer routes replace the producer routes of their Service ports.
    http.extend(ordered(entries.consumer));
    Gamma { http, statuses }
}

/// Route entries with their precedence keys, per (Service FQDN, port), before sorting.
type Table = BTreeMap<(String, u16), Vec<(Key, HttpRoute)>>;

/// The tables being filled: producer routes, and the consumer routes of the client's own
/// namespace.
#[derive(Default)]
struct Entries {
    producer: Table,
    consumer: Table,
}

// === Precedence ===

/// The Gateway API's order between matches of all routes on one parent: an exact path, then
/// the longest prefix (then a regex), a method match, more header matches, more query
/// matches; then the oldest route, its `namespace/name`, the rule and the match in order.
/// GRPCRoute matches come before HTTPRoute ones (they only take gRPC requests) and rank by
/// the characters of their service, then of their method, then header matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Key {
    grpc: bool,
    /// 3 exact, 2 prefix, 1 regex, 0 none (gRPC: characters of the service).
    rank: usize,
    /// Characters of the path (gRPC: of the method).
    length: usize,
    method: bool,
    headers: usize,
    queries: usize,
    age: usize,
    rule: usize,
    matched: usize,
}

impl Ord for Key {
    fn cmp(&self, o: &Self) -> Ordering {
        o.grpc
            .cmp(&self.grpc)
            .then(o.rank.cmp(&self.rank))
            .then(o.length.cmp(&self.length))
            .then(o.method.cmp(&self.method))
            .then(o.headers.cmp(&self.headers))
            .then(o.queries.cmp(&self.queries))
            .then(self.age.cmp(&o.age))
            .then(self.rule.cmp(&o.rule))
            .then(self.matched.cmp(&o.matched))
    }
}

impl PartialOrd for Key {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}

// === One route ===

/// A Service parent, resolved.
struct Parent {
    parent_ref: ParentReference,
    host: String,
    /// The Service is in another namespace than the route (a consumer route).
    consumer: bool,
    /// The HTTP ports the route attaches to; empty when it is not accepted.
    ports: Vec<u16>,
    refused: Option<Condition>,
}

/// A rule compiled once per parent port: `(match key, route)` entries.
type Compiled = Vec<(Key, HttpRoute)>;

fn compile_route(
    registry: &Registry,
    kind: RouteKind,
    src: &Source<'_>,
    age: usize,
    vs_hosts: &BTreeSet<String>,
    client: Option<&str>,
    entries: &mut Entries,
) -> Vec<ParentStatus> {
    let parent_refs = crate::api::gateway_api::common::parent_refs(src.spec);
    let mut parents: Vec<Parent> = parent_refs
        .into_iter()
        .filter(ParentReference::is_service)
        .filter_map(|p| resolve_parent(registry, kind, src, p, vs_hosts))
        .collect();
    if parents.is_empty() {
        return Vec::new();
    }
    let rules = match kind {
        RouteKind::Http => httproute::Spec::parse(src.spec).map(|s| {
            s.rules
                .into_iter()
                .map(|r| RuleSpec::Http(Box::new(r)))
                .collect::<Vec<_>>()
        }),
        RouteKind::Grpc => grpcroute::Spec::parse(src.spec).map(|s| {
            s.rules
                .into_iter()
                .map(|r| RuleSpec::Grpc(Box::new(r)))
                .collect::<Vec<_>>()
        }),
        RouteKind::Tls | RouteKind::Tcp => Err(format!(
            "a {} is not a mesh route (its parent must be a Gateway)",
            kind.kind()
        )),
    };
    let rules = match rules {
        Ok(r) => r,
        Err(e) => {
            return parents
                .into_iter()
                .map(|p| ParentStatus {
                    parent_ref: p.parent_ref,
                    accepted: p
                        .refused
                        .unwrap_or_else(|| Condition::no(REASON_UNSUPPORTED_VALUE, e.clone())),
                    resolved_refs: Condition::yes(
                        REASON_RESOLVED_REFS,
                        "the route is not accepted; its references were not checked",
                    ),
                    partially_invalid: None,
                })
                .collect();
        }
    };
    // Said in the Accepted message, so a user who wrote them knows they do nothing here.
    let has_hostnames = src
        .spec
        .get("hostnames")
        .and_then(|h| h.as_array())
        .is_some_and(|h| !h.is_empty());
    let mut out = Vec::new();
    for parent in parents.iter_mut() {
        let mut dropped: Vec<String> = Vec::new();
        let mut unresolved: Option<Condition> = None;
        let mut compiled_any = false;
        // A consumer route of another namespace is compiled for its status only.
        let mut table = match (parent.consumer, client == Some(src.namespace)) {
            (false, _) => Some(&mut entries.producer),
            (true, true) => Some(&mut entries.consumer),
            (true, false) => None,
        };
        for &port in &parent.ports {
            for (i, rule) in rules.iter().enumerate() {
                let ctx = RuleCtx {
                    registry,
                    backends: Backends::Mesh {
                        parent: &parent.host,
                    },
                    src,
                    kind,
                    parent_port: port,
                    age,
                    rule: i,
                };
                match compile_rule(&ctx, rule) {
                    Ok((compiled, refs)) => {
                        if unresolved.is_none() {
                            unresolved = refs;
                        }
                        compiled_any = true;
                        if let Some(t) = table.as_deref_mut() {
                            t.entry((parent.host.clone(), port))
                                .or_default()
                                .extend(compiled);
                        }
                    }
                    Err(e) => {
                        let m = format!("rule {i}{}: {e}", rule_name(rule));
                        if !dropped.contains(&m) {
                            dropped.push(m);
                        }
                    }
                }
            }
        }
        let accepted = match (&parent.refused, compiled_any || rules.is_empty()) {
            (Some(c), _) => c.clone(),
            (None, true) => {
                let mut m = if parent.consumer {
                    format!(
                        "routes applied by weft for this Service's clients in namespace {} (a consumer route: they replace the Service's own routes for those clients)",
                        src.namespace
                    )
                } else {
                    "routes applied by weft for this Service".to_string()
                };
                if has_hostnames {
                    m.push_str("; spec.hostnames are not used for a Service parent (GAMMA routes bind by Service)");
                }
                Condition::yes(REASON_ACCEPTED, m)
            }
            (None, false) => Condition::no(
                REASON_UNSUPPORTED_VALUE,
                format!("no rule can be applied: {}", dropped.join("; ")),
            ),
        };
        let partially_invalid = (accepted.status && !dropped.is_empty()).then(|| {
            Condition::yes(
                REASON_UNSUPPORTED_VALUE,
                format!("Dropped Rule(s): {}", dropped.join("; ")),
            )
        });
        out.push(ParentStatus {
            parent_ref: parent.parent_ref.clone(),
            resolved_refs: unresolved.unwrap_or_else(|| {
                Condition::yes(REASON_RESOLVED_REFS, "every backend reference resolved")
            }),
            accepted,
            partially_invalid,
        });
    }
    out
}

/// One route's rules compiled for one port of a Gateway listener (src/route/gateway_api.rs
/// reuses the mesh's rule compiler): entries with their precedence keys, the dropped rules,
/// the first unresolved backend. Err: the spec cannot be read.
pub(crate) struct ListenerRules {
    pub entries: Vec<(Key, HttpRoute)>,
    pub dropped: Vec<String>,
    pub unresolved: Option<Condition>,
    pub rules: usize,
}

pub(crate) fn compile_for_listener(
    registry: &Registry,
    grants: &ReferenceGrants,
    kind: RouteKind,
    src: &Source<'_>,
    age: usize,
    port: u16,
) -> Result<ListenerRules, String> {
    let rules: Vec<RuleSpec> = match kind {
        RouteKind::Http => httproute::Spec::parse(src.spec)?
            .rules
            .into_iter()
            .map(|r| RuleSpec::Http(Box::new(r)))
            .collect(),
        RouteKind::Grpc => grpcroute::Spec::parse(src.spec)?
            .rules
            .into_iter()
            .map(|r| RuleSpec::Grpc(Box::new(r)))
            .collect(),
        // Compiled by super::gateway_api onto the L4 path, never into HTTP routes.
        RouteKind::Tls | RouteKind::Tcp => {
            return Err(format!("a {} has no HTTP rules", kind.kind()));
        }
    };
    let mut out = ListenerRules {
        entries: Vec::new(),
        dropped: Vec::new(),
        unresolved: None,
        rules: rules.len(),
    };
    for (i, rule) in rules.iter().enumerate() {
        let ctx = RuleCtx {
            registry,
            backends: Backends::Granted(grants),
            src,
            kind,
            parent_port: port,
            age,
            rule: i,
        };
        match compile_rule(&ctx, rule) {
            Ok((compiled, refs)) => {
                if out.unresolved.is_none() {
                    out.unresolved = refs;
                }
                out.entries.extend(compiled);
            }
            Err(e) => out
                .dropped
                .push(format!("rule {i}{}: {e}", rule_name(rule))),
        }
    }
    Ok(out)
}

fn rule_name(rule: &RuleSpec) -> String {
    let name = match rule {
        RuleSpec::Http(r) => r.name.as_deref(),
        RuleSpec::Grpc(r) => r.name.as_deref(),
    };
    name.map(|n| format!(" ({n})")).unwrap_or_default()
}

/// The Service a parent reference names, and the ports the route attaches to; None when the
/// Service does not exist (weft writes status only for the Services it serves).
fn resolve_parent(
    registry: &Registry,
    kind: RouteKind,
    src: &Source<'_>,
    p: ParentReference,
    vs_hosts: &BTreeSet<String>,
) -> Option<Parent> {
    let namespace = p.namespace.as_deref().unwrap_or(src.namespace);
    let host = format!("{}.{namespace}.svc.{}", p.name, registry.cluster_domain);
    let ports = registry.ports(&host)?;
    let consumer = namespace != src.namespace;
    let refuse = |reason, message: String| Parent {
        parent_ref: p.clone(),
        host: host.clone(),
        consumer,
        ports: Vec::new(),
        refused: Some(Condition::no(reason, message)),
    };
    // sectionName is a port name of the Service; with `port` too, both must name one port.
    let want = match (p.section_name.as_deref(), p.port) {
        (Some(section), port) => match registry.port_named(&host, section) {
            Some(named) if port.is_none_or(|p| p == i32::from(named)) => Some(i32::from(named)),
            Some(named) => {
                return Some(refuse(
                    REASON_NO_MATCHING_PARENT,
                    format!(
                        "sectionName {section} is port {named} of Service {host}, not port {}",
                        port.unwrap_or_default()
                    ),
                ));
            }
            None => {
                return Some(refuse(
                    REASON_NO_MATCHING_PARENT,
                    format!("Service {host} has no port named {section}"),
                ));
            }
        },
        (None, port) => port,
    };
    if vs_hosts.contains(&host) {
        return Some(refuse(
            REASON_NOT_ALLOWED_BY_PARENTS,
            format!(
                "Service {host} is routed by a VirtualService, which weft applies instead of Gateway API routes for the same Service"
            ),
        ));
    }
    let http: Vec<u16> = match want {
        Some(want) => {
            let Some(info) = ports.iter().find(|i| i32::from(i.port) == want) else {
                return Some(refuse(
                    REASON_NO_MATCHING_PARENT,
                    format!("Service {host} has no port {want}"),
                ));
            };
            if !info.http {
                return Some(refuse(
                    REASON_UNSUPPORTED_VALUE,
                    format!(
                        "port {want} of Service {host} is declared for another protocol than HTTP; an {} needs an HTTP port (name http*/grpc* or appProtocol, or undeclared)",
                        kind.kind()
                    ),
                ));
            }
            vec![info.port]
        }
        None => ports.iter().filter(|i| i.http).map(|i| i.port).collect(),
    };
    if http.is_empty() {
        return Some(refuse(
            REASON_UNSUPPORTED_VALUE,
            format!(
                "Service {host} has no HTTP port (every port is declared for another protocol)"
            ),
        ));
    }
    Some(Parent {
        parent_ref: p,
        host,
        consumer,
        ports: http,
        refused: None,
    })
}

// === One rule ===

enum RuleSpec {
    Http(Box<httproute::Rule>),
    Grpc(Box<grpcroute::Rule>),
}

/// Which backends a rule may name, and where a rule without any sends its requests.
#[derive(Clone, Copy)]
enum Backends<'a> {
    /// A mesh route: a Service of any namespace, without a ReferenceGrant (GEP-1426: mesh
    /// routes augment Services, they expose nothing new); a rule without backendRefs goes to
    /// the parent Service itself (Istio's and Linkerd's reading, and the conformance suite's
    /// MeshConsumerRoute).
    Mesh { parent: &'a str },
    /// A Gateway listener's route: another namespace's Service only with a ReferenceGrant;
    /// a rule without backendRefs answers 500.
    Granted(&'a ReferenceGrants),
}

impl Backends<'_> {
    /// Whether the route may send to Service `name` of `to`.
    fn permits(&self, from: Ref<'_>, to: Ref<'_>, name: &str) -> bool {
        match self {
            Backends::Mesh { .. } => true,
            Backends::Granted(g) => g.permits(from, to, name),
        }
    }
}

struct RuleCtx<'a> {
    registry: &'a Registry,
    backends: Backends<'a>,
    src: &'a Source<'a>,
    kind: RouteKind,
    parent_port: u16,
    age: usize,
    rule: usize,
}

/// One rule's entries for one parent port, and a `ResolvedRefs=False` condition if one of its
/// backends does not resolve. Err: the rule cannot be applied (an unsupported filter or
/// value), and is dropped.
fn compile_rule(
    ctx: &RuleCtx<'_>,
    rule: &RuleSpec,
) -> Result<(Compiled, Option<Condition>), String> {
    let (filters, backend_refs) = match rule {
        RuleSpec::Http(r) => (
            r.filters.iter().map(FilterRef::Http).collect::<Vec<_>>(),
            &r.backend_refs,
        ),
        RuleSpec::Grpc(r) => (
            r.filters.iter().map(FilterRef::Grpc).collect::<Vec<_>>(),
            &r.backend_refs,
        ),
    };
    let mut actions = Actions::default();
    let mut path_edit: Option<PathEdit> = None;
    let mut redirect: Option<(httproute::RedirectFilter, Option<PathEdit>)> = None;
    let mut mirror_refs: Option<Condition> = None;
    for f in &filters {
        match apply_filter(f, &mut actions)? {
            FilterEffect::None => {}
            FilterEffect::Rewrite(edit) => path_edit = edit,
            FilterEffect::Redirect(r, edit) => redirect = Some((r, edit)),
            FilterEffect::Mirror(m) => match mirror(ctx, &m)? {
                Ok(m) => actions.mirrors.push(m),
                Err(c) => {
                    mirror_refs.get_or_insert(c);
                }
            },
        }
    }
    if redirect.is_some() && !actions.mirrors.is_empty() {
        return Err(
            "RequestMirror with RequestRedirect: a redirect is answered by the proxy, nothing is sent to mirror".into(),
        );
    }
    if let RuleSpec::Http(r) = rule
        && let Some(t) = &r.timeouts
    {
        apply_timeouts(t, &mut actions)?;
    }
    let (destinations, unresolved) = if redirect.is_some() {
        (Dests::None, None)
    } else {
        destinations(ctx, backend_refs)?
    };
    let unresolved = unresolved.or(mirror_refs);
    let matches: Vec<(Key, MatchShape)> = match rule {
        RuleSpec::Http(r) => http_matches(ctx, r)?,
        RuleSpec::Grpc(r) => grpc_matches(ctx, r)?,
    };
    let name = format!("{}/{}", ctx.src.namespace, ctx.src.name);
    let mut out = Vec::new();
    for (key, shape) in matches {
        for (mut m, path_kind) in shape.expand() {
            let mut actions = actions.clone();
            // A rewrite replaces what a prefix match matched (`rewritten_path`): for
            // ReplaceFullPath the prefix entry is matched as a regex instead, so the whole
            // path is replaced.
            if let (Some(PathEdit::Full(_)), Some(StringMatch::Prefix(p))) = (&path_edit, &m.uri) {
                m.uri = Some(regex("path", &format!("{}.*", regex_escape(p)))?);
            }
            if let Some(edit) = &path_edit {
                actions.rewrite.get_or_insert_with(Rewrite::default).uri =
                    Some(edit.target(path_kind));
            }
            if let Some((r, edit)) = &redirect {
                actions.redirect = Some(redirect_of(
                    r,
                    edit.as_ref(),
                    path_kind,
                    m.uri.as_ref(),
                    ctx.parent_port,
                )?);
            }
            let (destinations, actions) = match &destinations {
                Dests::Some(d) => (d.clone(), actions),
                // Every backend is invalid: the spec's 500, answered by the proxy itself.
                Dests::AllInvalid => (
                    Vec::new(),
                    Actions {
                        direct_response: Some(super::action::DirectResponse {
                            status: 500,
                            body: None,
                        }),
                        ..actions
                    },
                ),
                Dests::None => (Vec::new(), actions),
            };
            out.push((
                key.clone(),
                HttpRoute {
                    name: name.clone(),
                    matches: vec![m],
                    destinations,
                    actions,
                },
            ));
        }
    }
    super::model::validate(
        &name,
        &out.iter().map(|(_, r)| r.clone()).collect::<Vec<_>>(),
    )?;
    Ok((out, unresolved))
}

enum FilterRef<'a> {
    Http(&'a httproute::Filter),
    Grpc(&'a grpcroute::Filter),
}

enum FilterEffect {
    None,
    Rewrite(Option<PathEdit>),
    Redirect(httproute::RedirectFilter, Option<PathEdit>),
    Mirror(MirrorFilter),
}

/// A `RequestMirror` filter as the proxy's mirror action (the one VirtualService mirrors use):
/// the share (`percent`, or `fraction`; all requests when neither is given, as the spec
/// says) of the rule's requests copied to the backend Service's port, their answers dropped.
/// Ok(Err(condition)): the backend does not resolve, so nothing is mirrored and the route's
/// `ResolvedRefs` says why; Err: the filter is not valid (the rule is dropped).
fn mirror(
    ctx: &RuleCtx<'_>,
    m: &MirrorFilter,
) -> Result<Result<super::action::Mirror, Condition>, String> {
    let b: BackendRef =
        crate::api::gateway_api::strict("requestMirror.backendRef", &m.backend_ref)?;
    let per_million = match (m.percent, &m.fraction) {
        (Some(_), Some(_)) => {
            return Err("requestMirror: give percent or fraction, not both".into());
        }
        (Some(p), None) if (0..=100).contains(&p) => p as u32 * 10_000,
        (Some(p), None) => return Err(format!("requestMirror.percent {p} is not from 0 to 100")),
        (None, Some(f)) => {
            let numerator = f.get("numerator").and_then(serde_json::Value::as_u64);
            let denominator = match f.get("denominator") {
                None => Some(100),
                Some(d) => d.as_u64(),
            };
            match (numerator, denominator) {
                (Some(n), Some(d)) if d > 0 && n <= d => {
                    u32::try_from(n * 1_000_000 / d).unwrap_or(super::action::PER_MILLION)
                }
                _ => {
                    return Err(
                        "requestMirror.fraction needs numerator <= denominator (denominator > 0, default 100)".into(),
                    );
                }
            }
        }
        (None, None) => super::action::PER_MILLION,
    };
    let namespace = b.namespace.as_deref().unwrap_or(ctx.src.namespace);
    let host = format!("{}.{namespace}.svc.{}", b.name, ctx.registry.cluster_domain);
    let not_found = |message: String| Ok(Err(Condition::no(REASON_BACKEND_NOT_FOUND, message)));
    if !b.is_service() {
        return Ok(Err(Condition::no(
            REASON_INVALID_KIND,
            format!(
                "requestMirror.backendRef is a {}/{}; weft mirrors to core Services only",
                b.group.as_deref().unwrap_or(""),
                b.kind.as_deref().unwrap_or("Service")
            ),
        )));
    }
    let permitted = ctx.backends.permits(
        Ref {
            group: crate::api::gateway_api::GROUP,
            kind: ctx.kind.kind(),
            namespace: ctx.src.namespace,
        },
        Ref {
            group: "",
            kind: "Service",
            namespace,
        },
        &b.name,
    );
    if !permitted {
        return Ok(Err(Condition::no(
            REASON_REF_NOT_PERMITTED,
            format!(
                "requestMirror.backendRef is Service {namespace}/{}: no ReferenceGrant in {namespace} permits it",
                b.name
            ),
        )));
    }
    let Some(ports) = ctx.registry.ports(&host) else {
        return not_found(format!(
            "requestMirror.backendRef: Service {namespace}/{} does not exist; nothing is mirrored",
            b.name
        ));
    };
    let port = match b.port.and_then(|p| u16::try_from(p).ok()) {
        Some(p) if ports.iter().any(|x| x.port == p) => p,
        Some(p) => {
            return not_found(format!(
                "requestMirror.backendRef: Service {namespace}/{} has no port {p}; nothing is mirrored",
                b.name
            ));
        }
        None => {
            return not_found("requestMirror.backendRef: a Service backend needs a port".into());
        }
    };
    Ok(Ok(super::action::Mirror {
        destination: Destination {
            service: host,
            port,
            ..Default::default()
        },
        per_million,
    }))
}

/// A path modifier: the whole path, or the matched prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
enum PathEdit {
    Full(String),
    Prefix(String),
}

impl PathEdit {
    /// What `rewrite.uri` must say for an entry whose path match is `kind`: a prefix entry
    /// matches `<prefix>/`, so the replacement keeps the separator; any other entry has its
    /// whole path replaced ([`super::action::rewritten_path`]).
    fn target(&self, kind: PathKind) -> String {
        match (self, kind) {
            (PathEdit::Full(p), _) => p.clone(),
            (PathEdit::Prefix(p), PathKind::Prefix) => {
                if p.ends_with('/') {
                    p.clone()
                } else {
                    format!("{p}/")
                }
            }
            (PathEdit::Prefix(p), _) => {
                if p.is_empty() {
                    "/".into()
                } else {
                    p.clone()
                }
            }
        }
    }
}

fn path_edit(m: &httproute::PathModifier, what: &str) -> Result<PathEdit, String> {
    match (
        m.type_.as_str(),
        &m.replace_full_path,
        &m.replace_prefix_match,
    ) {
        ("ReplaceFullPath", Some(p), _) => Ok(PathEdit::Full(p.clone())),
        ("ReplacePrefixMatch", _, Some(p)) => Ok(PathEdit::Prefix(p.clone())),
        (t, _, _) => Err(format!(
            "{what}.path.type {t:?} without its value is not supported (ReplaceFullPath with replaceFullPath, ReplacePrefixMatch with replacePrefixMatch)"
        )),
    }
}

fn apply_filter(f: &FilterRef<'_>, actions: &mut Actions) -> Result<FilterEffect, String> {
    let (type_, req, resp) = match f {
        FilterRef::Http(f) => (
            f.type_.as_str(),
            &f.request_header_modifier,
            &f.response_header_modifier,
        ),
        FilterRef::Grpc(f) => (
            f.type_.as_str(),
            &f.request_header_modifier,
            &f.response_header_modifier,
        ),
    };
    match type_ {
        "RequestHeaderModifier" => {
            actions.request_headers = header_edits(req.as_ref(), "RequestHeaderModifier")?;
            Ok(FilterEffect::None)
        }
        "ResponseHeaderModifier" => {
            actions.response_headers = header_edits(resp.as_ref(), "ResponseHeaderModifier")?;
            Ok(FilterEffect::None)
        }
        "URLRewrite" => {
            let FilterRef::Http(f) = f else {
                return Err("filter URLRewrite is not a GRPCRoute filter".into());
            };
            let r = f
                .url_rewrite
                .as_ref()
                .ok_or("filter URLRewrite without urlRewrite")?;
            if let Some(h) = &r.hostname {
                actions
                    .rewrite
                    .get_or_insert_with(Rewrite::default)
                    .authority = Some(h.clone());
            }
            let edit = r
                .path
                .as_ref()
                .map(|p| path_edit(p, "urlRewrite"))
                .transpose()?;
            if edit.is_some() {
                actions.rewrite.get_or_insert_with(Rewrite::default);
            }
            Ok(FilterEffect::Rewrite(edit))
        }
        "RequestRedirect" => {
            let FilterRef::Http(f) = f else {
                return Err("filter RequestRedirect is not a GRPCRoute filter".into());
            };
            let r = f
                .request_redirect
                .clone()
                .ok_or("filter RequestRedirect without requestRedirect")?;
            let edit = r
                .path
                .as_ref()
                .map(|p| path_edit(p, "requestRedirect"))
                .transpose()?;
            Ok(FilterEffect::Redirect(r, edit))
        }
        "RequestMirror" => {
            let m = match f {
                FilterRef::Http(f) => f.request_mirror.clone(),
                FilterRef::Grpc(f) => f.request_mirror.clone(),
            };
            Ok(FilterEffect::Mirror(
                m.ok_or("filter RequestMirror without requestMirror")?,
            ))
        }
        "CORS" => {
            let FilterRef::Http(f) = f else {
                return Err("filter CORS is not a GRPCRoute filter".into());
            };
            let c = f.cors.as_ref().ok_or("filter CORS without cors")?;
            actions.cors = Some(cors_policy(c)?);
            Ok(FilterEffect::None)
        }
        "ExtensionRef" => Err("filter ExtensionRef: weft implements no extension filters".into()),
        other => Err(format!("filter type {other:?} is not supported")),
    }
}

/// The Gateway API's default `maxAge` (the CRD's default, which the spec says a gateway
/// applies when it is unset).
const CORS_DEFAULT_MAX_AGE_SECS: u64 = 5;

/// A `CORS` filter as the route's CORS policy ([`super::cors`]), the way Envoy serves it: an
/// origin holding `*` in its host is a whole-value regex in which `*` takes any labels
/// (`https://*.example.com` allows `https://a.b.example.com`, not `https://example.com`), `*`
/// alone allows every origin; a matching origin is echoed (the spec's choice when
/// `allowCredentials` is true, allowed when it is not). `*` in `allowMethods` and
/// `allowHeaders` echoes what the preflight asks; `*` in `exposeHeaders` with credentials
/// (which the spec forbids sending) is refused.
fn cors_policy(c: &httproute::CorsFilter) -> Result<super::cors::CorsPolicy, String> {
    let allow_origins = c
        .allow_origins
        .iter()
        .enumerate()
        .map(|(i, o)| match o.as_str() {
            "" => Err(format!("cors.allowOrigins[{i}] is empty")),
            "*" => Ok(StringMatch::Exact("*".into())),
            o if o.contains('*') => {
                let pieces: Vec<String> = o.split('*').map(regex_escape).collect();
                regex(&format!("cors.allowOrigins[{i}]"), &pieces.join("[^/:]+"))
            }
            o => Ok(StringMatch::Exact(o.to_string())),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let allow_credentials = c.allow_credentials.unwrap_or(false);
    if allow_credentials && c.expose_headers.iter().any(|h| h == "*") {
        return Err(
            "cors.exposeHeaders * with allowCredentials true is not supported by weft (the response may not carry *): list the header names to expose".into(),
        );
    }
    let max_age_secs = match c.max_age {
        None => CORS_DEFAULT_MAX_AGE_SECS,
        Some(n) => u64::try_from(n)
            .ok()
            .filter(|n| *n >= 1)
            .ok_or(format!("cors.maxAge {n} is not a number of seconds >= 1"))?,
    };
    let policy = super::cors::CorsPolicy {
        allow_origins,
        allow_methods: c.allow_methods.clone(),
        allow_headers: c.allow_headers.clone(),
        expose_headers: c.expose_headers.clone(),
        max_age_secs: Some(max_age_secs),
        allow_credentials,
        // The Gateway API's filter answers every preflight itself: one from an origin it
        // does not allow gets no Access-Control-Allow-Origin and never reaches the backend
        // (the conformance test HTTPRouteCORS checks it). Istio's corsPolicy forwards it.
        unmatched_preflights: super::cors::UnmatchedPreflights::Ignore,
    };
    super::cors::validate("cors", &policy)?;
    Ok(policy)
}

/// A header modifier: names lowercased (HTTP names are case-insensitive; the proxy's edits
/// take lowercase tokens).
fn header_edits(f: Option<&HeaderFilter>, what: &str) -> Result<HeaderEdits, String> {
    let f = f.ok_or_else(|| format!("filter {what} without its settings"))?;
    let mut e = HeaderEdits::default();
    for h in &f.set {
        e.set.insert(h.name.to_ascii_lowercase(), h.value.clone());
    }
    for h in &f.add {
        e.add.insert(h.name.to_ascii_lowercase(), h.value.clone());
    }
    e.remove = f.remove.iter().map(|n| n.to_ascii_lowercase()).collect();
    super::action::validate_edits(&e).map_err(|m| format!("{what}: {m}"))?;
    Ok(e)
}

/// `timeouts.request` is the whole request's deadline; `timeouts.backendRequest` each try's
/// (with Istio's default retries, which a GAMMA route keeps). `0s` turns a timeout off.
fn apply_timeouts(t: &httproute::Timeouts, actions: &mut Actions) -> Result<(), String> {
    let ms = |what: &str, v: &str| {
        crate::duration::parse(v)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .map_err(|e| format!("timeouts.{what}: {e}"))
    };
    if let Some(r) = &t.request {
        let v = ms("request", r)?;
        actions.timeout_ms = (v > 0).then_some(v);
    }
    if let Some(b) = &t.backend_request {
        let v = ms("backendRequest", b)?;
        if let (Some(total), true) = (actions.timeout_ms, v > 0)
            && v > total
        {
            return Err(format!(
                "timeouts.backendRequest {b} is longer than timeouts.request"
            ));
        }
        if v > 0 {
            actions.retries = Some(Retries {
                per_try_timeout_ms: Some(v),
                ..Retries::istio_default()
            });
        }
    }
    Ok(())
}

fn redirect_of(
    r: &httproute::RedirectFilter,
    edit: Option<&PathEdit>,
    kind: PathKind,
    matched: Option<&StringMatch>,
    parent_port: u16,
) -> Result<Redirect, String> {
    let code = match r.status_code.unwrap_or(302) {
        c @ (301 | 302 | 303 | 307 | 308) => c as u16,
        c => return Err(format!("requestRedirect.statusCode {c} is not supported")),
    };
    let scheme = r.scheme.clone();
    // The spec's port: as given; else the scheme's well-known port when a scheme is given;
    // else the parent's port (the Service port the client dialled).
    let port = match (r.port, scheme.as_deref()) {
        (Some(p), _) => {
            Some(u16::try_from(p).map_err(|_| format!("requestRedirect.port {p} is not a port"))?)
        }
        (None, Some("https")) => Some(443),
        (None, Some("http")) => Some(80),
        (None, Some(s)) => {
            return Err(format!("requestRedirect.scheme {s:?} is not http or https"));
        }
        (None, None) => Some(parent_port),
    };
    let uri = match edit {
        None => None,
        Some(PathEdit::Full(p)) => Some(p.clone()),
        Some(e @ PathEdit::Prefix(_)) => Some(e.target(kind)),
    };
    // ReplacePrefixMatch on a prefix entry replaces what it matched, the rest of the path
    // kept (the entry matches `<prefix>/`; its target keeps the separator).
    let prefix = match (edit, kind, matched) {
        (Some(PathEdit::Prefix(_)), PathKind::Prefix, Some(StringMatch::Prefix(p))) => {
            Some(p.clone())
        }
        _ => None,
    };
    Ok(Redirect {
        uri,
        authority: r.hostname.clone(),
        scheme,
        port,
        code,
        prefix,
    })
}

enum Dests {
    Some(Vec<Destination>),
    /// Every backend is invalid: 500.
    AllInvalid,
    /// No backends: the rule only redirects.
    None,
}

/// The rule's weighted backends. A backend that does not resolve keeps its share, which the
/// proxy answers 503 (`NR`, the destination is not in its config); when none resolves the
/// rule answers 500, as the spec says.
fn destinations(
    ctx: &RuleCtx<'_>,
    refs: &[BackendRef],
) -> Result<(Dests, Option<Condition>), String> {
    if refs.len() > MAX_DESTINATIONS {
        return Err(format!("more than {MAX_DESTINATIONS} backendRefs"));
    }
    if let (true, Backends::Mesh { parent }) = (refs.is_empty(), ctx.backends) {
        return Ok((
            Dests::Some(vec![Destination {
                service: parent.to_string(),
                port: ctx.parent_port,
                weight: 1,
                ..Default::default()
            }]),
            None,
        ));
    }
    let mut out = Vec::new();
    let mut unresolved: Option<Condition> = None;
    let mut valid = 0;
    for (i, b) in refs.iter().enumerate() {
        let weight = u32::try_from(b.weight.unwrap_or(1))
            .map_err(|_| format!("backendRefs[{i}].weight is negative"))?;
        let namespace = b.namespace.as_deref().unwrap_or(ctx.src.namespace);
        let host = format!("{}.{namespace}.svc.{}", b.name, ctx.registry.cluster_domain);
        let mut request_headers = HeaderEdits::default();
        let mut response_headers = HeaderEdits::default();
        for f in &b.filters {
            let parsed: Result<(String, Option<HeaderFilter>, Option<HeaderFilter>), String> =
                match ctx.kind {
                    RouteKind::Http => crate::api::gateway_api::strict::<httproute::Filter>(
                        &format!("backendRefs[{i}].filters"),
                        f,
                    )
                    .map(|f| {
                        (
                            f.type_,
                            f.request_header_modifier,
                            f.response_header_modifier,
                        )
                    }),
                    RouteKind::Grpc => crate::api::gateway_api::strict::<grpcroute::Filter>(
                        &format!("backendRefs[{i}].filters"),
                        f,
                    )
                    .map(|f| {
                        (
                            f.type_,
                            f.request_header_modifier,
                            f.response_header_modifier,
                        )
                    }),
                    RouteKind::Tls | RouteKind::Tcp => Err(format!(
                        "backendRefs[{i}].filters: not on a {}",
                        ctx.kind.kind()
                    )),
                };
            let (type_, req, resp) = parsed?;
            match type_.as_str() {
                "RequestHeaderModifier" => {
                    request_headers = header_edits(req.as_ref(), "RequestHeaderModifier")?
                }
                "ResponseHeaderModifier" => {
                    response_headers = header_edits(resp.as_ref(), "ResponseHeaderModifier")?
                }
                other => {
                    return Err(format!(
                        "backendRefs[{i}].filters: filter {other} on a backend is not supported by weft yet (RequestHeaderModifier and ResponseHeaderModifier are)"
                    ));
                }
            }
        }
        let problem = if !b.is_service() {
            Some(Condition::no(
                REASON_INVALID_KIND,
                format!(
                    "backendRefs[{i}] is a {}/{}; weft routes to core Services only",
                    b.group.as_deref().unwrap_or(""),
                    b.kind.as_deref().unwrap_or("Service")
                ),
            ))
        } else if !ctx.backends.permits(
            Ref {
                group: crate::api::gateway_api::GROUP,
                kind: ctx.kind.kind(),
                namespace: ctx.src.namespace,
            },
            Ref {
                group: "",
                kind: "Service",
                namespace,
            },
            &b.name,
        ) {
            Some(Condition::no(
                REASON_REF_NOT_PERMITTED,
                format!(
                    "backendRefs[{i}] is Service {namespace}/{}: no ReferenceGrant in {namespace} permits it",
                    b.name
                ),
            ))
        } else {
            match (ctx.registry.ports(&host), b.port) {
                (None, _) => Some(Condition::no(
                    REASON_BACKEND_NOT_FOUND,
                    format!(
                        "backendRefs[{i}]: Service {namespace}/{} does not exist",
                        b.name
                    ),
                )),
                (Some(_), None) => Some(Condition::no(
                    REASON_BACKEND_NOT_FOUND,
                    format!("backendRefs[{i}]: a Service backend needs a port"),
                )),
                (Some(ports), Some(p)) if !ports.iter().any(|x| i32::from(x.port) == p) => {
                    Some(Condition::no(
                        REASON_BACKEND_NOT_FOUND,
                        format!(
                            "backendRefs[{i}]: Service {namespace}/{} has no port {p}",
                            b.name
                        ),
                    ))
                }
                _ => None,
            }
        };
        let port = b.port.and_then(|p| u16::try_from(p).ok()).unwrap_or(0);
        match problem {
            Some(c) => {
                unresolved.get_or_insert(c);
                // Its share stays, answered 503 NR by the proxy (see docs/traffic.md).
                if weight > 0 {
                    out.push(Destination {
                        service: host,
                        port,
                        weight,
                        request_headers,
                        response_headers,
                        ..Default::default()
                    });
                }
            }
            None => {
                valid += 1;
                out.push(Destination {
                    service: host,
                    port,
                    weight,
                    request_headers,
                    response_headers,
                    ..Default::default()
                });
            }
        }
    }
    if refs.is_empty() || valid == 0 || out.iter().all(|d| d.weight == 0) {
        return Ok((Dests::AllInvalid, unresolved));
    }
    Ok((Dests::Some(out), unresolved))
}

// === Matches ===

/// How an entry's path is matched, which decides how a path modifier applies to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PathKind {
    Exact,
    Prefix,
    Other,
}

/// One Gateway API match, before a `PathPrefix` is expanded into the model's matches.
struct MatchShape {
    base: RequestMatch,
    /// A `PathPrefix` without its trailing `/` (empty for `/`): matches the path itself or
    /// anything under it, element by element (`/abc` takes `/abc/x`, not `/abcd`).
    prefix: Option<String>,
}

impl MatchShape {
    fn expand(self) -> Vec<(RequestMatch, PathKind)> {
        match self.prefix {
            None => {
                let kind = match &self.base.uri {
                    Some(StringMatch::Exact(_)) => PathKind::Exact,
                    _ => PathKind::Other,
                };
                vec![(self.base, kind)]
            }
            Some(p) if p.is_empty() => vec![(
                RequestMatch {
                    uri: Some(StringMatch::Prefix("/".into())),
                    ..self.base
                },
                PathKind::Prefix,
            )],
            Some(p) => vec![
                (
                    RequestMatch {
                        uri: Some(StringMatch::Exact(p.clone())),
                        ..self.base.clone()
                    },
                    PathKind::Exact,
                ),
                (
                    RequestMatch {
                        uri: Some(StringMatch::Prefix(format!("{p}/"))),
                        ..self.base
                    },
                    PathKind::Prefix,
                ),
            ],
        }
    }
}

fn regex(what: &str, source: &str) -> Result<StringMatch, String> {
    Pattern::new(source)
        .map(StringMatch::Regex)
        .map_err(|e| format!("{what}: {e}"))
}

fn header_matches(
    list: &[HeaderMatch],
    what: &str,
    lowercase: bool,
) -> Result<BTreeMap<String, StringMatch>, String> {
    let mut out = BTreeMap::new();
    for h in list {
        let name = if lowercase {
            h.name.to_ascii_lowercase()
        } else {
            h.name.clone()
        };
        let m = match h.type_.as_deref().unwrap_or("Exact") {
            "Exact" => StringMatch::Exact(h.value.clone()),
            "RegularExpression" => regex(&format!("{what} {}", h.name), &h.value)?,
            t => return Err(format!("{what} type {t:?} is not supported")),
        };
        // The spec: only the first match of a name counts.
        out.entry(name).or_insert(m);
    }
    Ok(out)
}

fn http_matches(ctx: &RuleCtx<'_>, r: &httproute::Rule) -> Result<Vec<(Key, MatchShape)>, String> {
    let default = [httproute::Match {
        path: Some(httproute::PathMatch {
            type_: Some("PathPrefix".into()),
            value: Some("/".into()),
        }),
        ..Default::default()
    }];
    let list: &[httproute::Match] = match &r.matches {
        Some(m) if !m.is_empty() => m,
        _ => &default,
    };
    let mut out = Vec::new();
    for (j, m) in list.iter().enumerate() {
        let mut base = RequestMatch {
            headers: header_matches(&m.headers, "headers", true)?,
            query_params: header_matches(&m.query_params, "queryParams", false)?,
            method: m.method.clone().map(StringMatch::Exact),
            port: None,
            ..Default::default()
        };
        let mut prefix = None;
        let (rank, length) = match &m.path {
            None => {
                prefix = Some(String::new());
                (2, 1)
            }
            Some(p) => {
                let value = p.value.clone().unwrap_or_else(|| "/".into());
                match p.type_.as_deref().unwrap_or("PathPrefix") {
                    "Exact" => {
                        base.uri = Some(StringMatch::Exact(value.clone()));
                        (3, value.len())
                    }
                    "PathPrefix" => {
                        if !value.starts_with('/') {
                            return Err(format!("path {value:?} does not start with /"));
                        }
                        prefix = Some(value.trim_end_matches('/').to_string());
                        (2, value.len())
                    }
                    "RegularExpression" => {
                        base.uri = Some(regex("path", &value)?);
                        (1, value.len())
                    }
                    t => return Err(format!("path type {t:?} is not supported")),
                }
            }
        };
        out.push((
            Key {
                grpc: false,
                rank,
                length,
                method: base.method.is_some(),
                headers: base.headers.len(),
                queries: base.query_params.len(),
                age: ctx.age,
                rule: ctx.rule,
                matched: j,
            },
            MatchShape { base, prefix },
        ));
    }
    Ok(out)
}

/// gRPC's method match is a match on the `/service/method` path; every entry also requires a
/// gRPC content type, so GRPCRoute entries never take plain HTTP requests.
fn grpc_matches(ctx: &RuleCtx<'_>, r: &grpcroute::Rule) -> Result<Vec<(Key, MatchShape)>, String> {
    let all = [grpcroute::Match::default()];
    let list: &[grpcroute::Match] = if r.matches.is_empty() {
        &all
    } else {
        &r.matches
    };
    let mut out = Vec::new();
    for (j, m) in list.iter().enumerate() {
        let mut headers = header_matches(&m.headers, "headers", true)?;
        let counted = headers.len();
        headers.insert(
            "content-type".into(),
            StringMatch::Prefix("application/grpc".into()),
        );
        let (uri, service_len, method_len) = match &m.method {
            None => (None, 0, 0),
            Some(mm) => {
                let service = mm.service.as_deref().filter(|s| !s.is_empty());
                let method = mm.method.as_deref().filter(|s| !s.is_empty());
                let lens = (service.map_or(0, str::len), method.map_or(0, str::len));
                let uri = match (mm.type_.as_deref().unwrap_or("Exact"), service, method) {
                    (_, None, None) => {
                        return Err("method without service or method".into());
                    }
                    ("Exact", Some(s), Some(m)) => StringMatch::Exact(format!("/{s}/{m}")),
                    ("Exact", Some(s), None) => StringMatch::Prefix(format!("/{s}/")),
                    ("Exact", None, Some(m)) => {
                        regex("method", &format!("/[^/]+/{}", regex_escape(m)))?
                    }
                    ("RegularExpression", s, m) => regex(
                        "method",
                        &format!("/(?:{})/(?:{})", s.unwrap_or("[^/]+"), m.unwrap_or("[^/]+")),
                    )?,
                    (t, _, _) => return Err(format!("method type {t:?} is not supported")),
                };
                (Some(uri), lens.0, lens.1)
            }
        };
        out.push((
            Key {
                grpc: true,
                rank: service_len,
                length: method_len,
                method: false,
                headers: counted,
                queries: 0,
                age: ctx.age,
                rule: ctx.rule,
                matched: j,
            },
            MatchShape {
                base: RequestMatch {
                    uri,
                    headers,
                    ..Default::default()
                },
                prefix: None,
            },
        ));
    }
    Ok(out)
}

fn regex_escape(s: &str) -> String {
    regex::escape(s)
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::route::action::rewritten_path;
    use crate::route::select::{Choice, RequestView, choose_route};

    fn registry() -> Registry {
        let mut r = Registry::new("cluster.local");
        for svc in ["reviews", "reviews-v1", "reviews-v2", "echo"] {
            r.add(&format!("{svc}.shop.svc.cluster.local"), 9080, true);
        }
        r.add("db.shop.svc.cluster.local", 5432, false);
        r.add("grpc.shop.svc.cluster.local", 7070, true);
        r
    }

    fn parent(name: &str) -> Value {
        json!({"group": "", "kind": "Service", "name": name, "port": 9080})
    }

    struct Route {
        kind: RouteKind,
        name: &'static str,
        created: &'static str,
        spec: Value,
    }

    fn http(name: &'static str, created: &'static str, spec: Value) -> Route {
        Route {
            kind: RouteKind::Http,
            name,
            created,
            spec,
        }
    }

    fn run(routes: &[Route], vs: &[&str]) -> Gamma {
        let sources: Vec<RouteSource> = routes
            .iter()
            .map(|r| RouteSource {
                kind: r.kind,
                generation: Some(1),
                uid: None,
                source: Source {
                    namespace: "shop",
                    name: r.name,
                    created: r.created,
                    spec: &r.spec,
                },
            })
            .collect();
        let vs: BTreeSet<String> = vs.iter().map(|s| s.to_string()).collect();
        compile(&registry(), &sources, &vs, None)
    }

    fn table<'a>(g: &'a Gamma, svc: &str, port: u16) -> &'a [HttpRoute] {
        g.http
            .get(&(format!("{svc}.shop.svc.cluster.local"), port))
            .map_or(&[], Vec::as_slice)
    }

    /// The route (`name` of the resource, and the first destination's Service short name)
    /// that takes a request.
    fn taken(
        routes: &[HttpRoute],
        method: &str,
        path: &str,
        query: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Option<String> {
        let headers: Vec<(&str, &str)> = headers.to_vec();
        let view = RequestView {
            method,
            path,
            query,
            port: 9080,
            headers: &headers,
        };
        match choose_route(routes, &view) {
            Choice::Route { route, .. } => Some(
                route
                    .destinations
                    .first()
                    .map(|d| d.service.split('.').next().unwrap_or("").to_string())
                    .unwrap_or_else(|| "redirect".into()),
            ),
            Choice::NoRoute => None,
        }
    }

    fn status<'a>(g: &'a Gamma, name: &str) -> &'a ParentStatus {
        &g.statuses
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no status for {name}: {:?}", g.statuses))
            .parents[0]
    }

    #[test]
    fn a_split_and_a_header_match_fill_the_parent_services_table_and_are_accepted() {
        let g = run(
            &[http(
                "reviews",
                "2026-01-01T00:00:00Z",
                json!({"parentRefs": [parent("reviews")], "hostnames": ["reviews.example"], "rules": [
                    {"backendRefs": [{"name": "reviews-v1", "port": 9080, "weight": 90},
                                     {"name": "reviews-v2", "port": 9080, "weight": 10}]},
                    {"matches": [{"headers": [{"name": "End-User", "value": "jason"}]}],
                     "backendRefs": [{"name": "reviews-v2", "port": 9080}]}]}),
            )],
            &[],
        );
        let t = table(&g, "reviews", 9080);
        // The header rule comes first although written second: more header matches win.
        assert_eq!(
            taken(t, "GET", "/", None, &[("end-user", "jason")]).as_deref(),
            Some("reviews-v2")
        );
        assert_eq!(
            taken(t, "GET", "/x", None, &[]).as_deref(),
            Some("reviews-v1")
        );
        let split = t.iter().find(|r| r.destinations.len() == 2).unwrap();
        assert_eq!(
            split
                .destinations
                .iter()
                .map(|d| d.weight)
                .collect::<Vec<_>>(),
            [90, 10]
        );
        assert_eq!(split.name, "shop/reviews");
        let s = status(&g, "reviews");
        assert!(s.accepted.status && s.resolved_refs.status, "{s:?}");
        assert_eq!(s.accepted.reason, REASON_ACCEPTED);
        assert!(
            s.accepted.message.contains("hostnames are not used"),
            "{s:?}"
        );
        assert_eq!(s.parent_ref.name, "reviews");
        // Only the parent's table: the backends' own tables are untouched.
        assert!(table(&g, "reviews-v1", 9080).is_empty());
    }

    #[test]
    fn matches_across_routes_follow_the_gateway_api_precedence() {
        let to = |svc: &str| json!([{"name": svc, "port": 9080}]);
        let g = run(
            &[
                // Oldest: a short prefix, and a prefix tie with the younger route.
                http(
                    "old",
                    "2026-01-01T00:00:00Z",
                    json!({"parentRefs": [parent("echo")], "rules": [
                    {"matches": [{"path": {"type": "PathPrefix", "value": "/api"}}], "backendRefs": to("reviews")},
                    {"matches": [{"path": {"type": "PathPrefix", "value": "/same"}}], "backendRefs": to("reviews")}]}),
                ),
                http(
                    "young",
                    "2026-02-01T00:00:00Z",
                    json!({"parentRefs": [parent("echo")], "rules": [
                    {"matches": [{"path": {"type": "PathPrefix", "value": "/same"}}], "backendRefs": to("echo")},
                    {"matches": [{"path": {"type": "Exact", "value": "/api/login"}}], "backendRefs": to("reviews-v1")},
                    {"matches": [{"path": {"type": "PathPrefix", "value": "/api/v2"}}], "backendRefs": to("reviews-v2")},
                    {"matches": [{"path": {"type": "PathPrefix", "value": "/api"}, "method": "POST"}], "backendRefs": to("echo")},
                    {"matches": [{"path": {"type": "PathPrefix", "value": "/api"},
                                  "queryParams": [{"name": "v", "value": "2"}]}], "backendRefs": to("reviews-v2")}]}),
                ),
            ],
            &[],
        );
        let t = table(&g, "echo", 9080);
        let cases: &[(&str, &str, Option<&str>, Option<&str>)] = &[
            // An exact path beats every prefix, even a younger route's.
            ("GET", "/api/login", None, Some("reviews-v1")),
            // The longest prefix wins.
            ("GET", "/api/v2/x", None, Some("reviews-v2")),
            // Same prefix: a method match wins, then more query matches, then the older route.
            ("POST", "/api/x", None, Some("echo")),
            ("GET", "/api/x", Some("v=2"), Some("reviews-v2")),
            ("GET", "/api/x", None, Some("reviews")),
            ("GET", "/same", None, Some("reviews")),
            // PathPrefix matches path elements: /api takes /api and /api/, not /apix.
            ("GET", "/api", None, Some("reviews")),
            ("GET", "/api/", None, Some("reviews")),
            ("GET", "/apix", None, None),
        ];
        for (method, path, query, want) in cases {
            assert_eq!(
                taken(t, method, path, *query, &[]).as_deref(),
                *want,
                "{method} {path} {query:?}"
            );
        }
    }

    #[test]
    fn a_missing_backend_is_unresolved_and_a_rule_with_no_valid_backend_answers_500() {
        let g = run(
            &[http(
                "r",
                "t",
                json!({"parentRefs": [parent("echo")], "rules": [
                {"matches": [{"path": {"type": "PathPrefix", "value": "/half"}}],
                 "backendRefs": [{"name": "echo", "port": 9080}, {"name": "nope", "port": 9080}]},
                {"matches": [{"path": {"type": "PathPrefix", "value": "/none"}}],
                 "backendRefs": [{"group": "example.com", "kind": "Thing", "name": "x"}]}]}),
            )],
            &[],
        );
        let s = status(&g, "r");
        assert!(
            s.accepted.status,
            "a dangling backend does not unaccept the route"
        );
        assert!(!s.resolved_refs.status);
        assert_eq!(s.resolved_refs.reason, REASON_BACKEND_NOT_FOUND);
        assert!(s.resolved_refs.message.contains("nope"), "{s:?}");
        let t = table(&g, "echo", 9080);
        let half = t.iter().find(|r| r.destinations.len() == 2).unwrap();
        assert!(
            half.actions.direct_response.is_none(),
            "half the requests still reach echo"
        );
        let none = t
            .iter()
            .find(|r| r.actions.direct_response.is_some())
            .expect("the rule with only an invalid backend");
        assert!(none.destinations.is_empty(), "answered, never forwarded");
        assert_eq!(
            none.actions.direct_response.as_ref().map(|d| d.status),
            Some(500)
        );
        // The kind is reported when it is the only problem.
        let g = run(
            &[http(
                "k",
                "t",
                json!({"parentRefs": [parent("echo")], "rules": [
                {"backendRefs": [{"group": "example.com", "kind": "Thing", "name": "x"}]}]}),
            )],
            &[],
        );
        assert_eq!(status(&g, "k").resolved_refs.reason, REASON_INVALID_KIND);
    }

    #[test]
    fn request_mirror_becomes_the_proxys_mirror_with_the_specs_share_and_resolved_refs() {
        let mirrored = |filter: Value| {
            let g = run(
                &[http(
                    "m",
                    "t",
                    json!({"parentRefs": [parent("reviews")], "rules": [
                    {"filters": [filter], "backendRefs": [{"name": "reviews-v1", "port": 9080}]}]}),
                )],
                &[],
            );
            let t = table(&g, "reviews", 9080).to_vec();
            let s = status(&g, "m").clone();
            (t, s)
        };
        for (mirror, share) in [
            (
                json!({"backendRef": {"name": "reviews-v2", "port": 9080}}),
                1_000_000,
            ),
            (
                json!({"backendRef": {"name": "reviews-v2", "port": 9080}, "percent": 50}),
                500_000,
            ),
            (
                json!({"backendRef": {"name": "reviews-v2", "port": 9080}, "fraction": {"numerator": 1, "denominator": 4}}),
                250_000,
            ),
            (
                json!({"backendRef": {"name": "reviews-v2", "port": 9080}, "fraction": {"numerator": 5}}),
                50_000,
            ),
        ] {
            let (t, s) = mirrored(json!({"type": "RequestMirror", "requestMirror": mirror}));
            assert!(s.accepted.status && s.resolved_refs.status, "{s:?}");
            assert!(s.partially_invalid.is_none(), "{s:?}");
            assert_eq!(t.len(), 1);
            let m = &t[0].actions.mirrors;
            assert_eq!(m.len(), 1, "{mirror}");
            assert_eq!(
                m[0].destination.service,
                "reviews-v2.shop.svc.cluster.local"
            );
            assert_eq!(
                (m[0].destination.port, m[0].per_million),
                (9080, share),
                "{mirror}"
            );
            assert_eq!(
                t[0].destinations[0].service,
                "reviews-v1.shop.svc.cluster.local"
            );
        }
        // A mirror backend that does not exist: the rule still routes, nothing is mirrored,
        // and ResolvedRefs says why.
        let (t, s) = mirrored(json!({"type": "RequestMirror",
            "requestMirror": {"backendRef": {"name": "gone", "port": 9080}}}));
        assert_eq!(t.len(), 1);
        assert!(t[0].actions.mirrors.is_empty());
        assert!(!s.resolved_refs.status);
        assert_eq!(s.resolved_refs.reason, REASON_BACKEND_NOT_FOUND);
        assert!(s.resolved_refs.message.contains("requestMirror"), "{s:?}");
        // Invalid filters drop the rule, named.
        for (mirror, says) in [
            (
                json!({"backendRef": {"name": "reviews-v2", "port": 9080}, "percent": 10, "fraction": {"numerator": 1}}),
                "not both",
            ),
            (
                json!({"backendRef": {"name": "reviews-v2", "port": 9080}, "percent": 101}),
                "percent 101",
            ),
            (
                json!({"backendRef": {"name": "reviews-v2", "port": 9080}, "fraction": {"numerator": 5, "denominator": 4}}),
                "numerator <= denominator",
            ),
        ] {
            let (t, s) = mirrored(json!({"type": "RequestMirror", "requestMirror": mirror}));
            assert!(t.is_empty(), "{mirror}");
            assert!(s.accepted.message.contains(says), "{mirror}: {s:?}");
        }
    }

    #[test]
    fn a_cors_filter_becomes_the_routes_cors_policy_as_the_spec_reads_it() {
        use crate::route::cors::{ALLOW_ORIGIN, CorsRequest, MAX_AGE};
        // The Gateway API conformance suite's `http-with-cors-exact` filter.
        let cors = json!({"type": "CORS", "cors": {
            "allowOrigins": ["https://www.foo.com", "https://www.bar.com", "https://*.foobar.com"],
            "allowMethods": ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"],
            "allowHeaders": ["x-header-1", "x-header-2"],
            "exposeHeaders": ["x-header-3", "x-header-4"],
            "allowCredentials": true,
            "maxAge": 3600}});
        let g = run(
            &[http(
                "c",
                "t",
                json!({"parentRefs": [parent("echo")], "rules": [
                {"filters": [cors], "backendRefs": [{"name": "echo", "port": 9080}]}]}),
            )],
            &[],
        );
        assert!(status(&g, "c").accepted.status, "{:?}", status(&g, "c"));
        let t = table(&g, "echo", 9080);
        let p = t[0]
            .actions
            .cors
            .as_ref()
            .expect("the route carries the policy");
        let cases = [
            ("https://www.foo.com", true),
            ("https://www.bar.com", true),
            ("https://a.foobar.com", true),
            ("https://a.b.foobar.com", true), // `*` takes any labels to its left
            ("https://foobar.com", false),    // but at least one
            ("http://a.foobar.com", false),   // another scheme
            ("https://a.foobar.com:8443", false), // another port
            ("https://a.foobar.com.evil", false),
            ("https://www.baz.com", false),
        ];
        for (origin, want) in cases {
            assert_eq!(p.allows_origin(origin), want, "{origin}");
        }
        assert!(p.allow_credentials);
        assert_eq!(p.max_age_secs, Some(3600));
        // A preflight from an origin not allowed is answered too, without Allow-Origin.
        let refused = p
            .preflight(&CorsRequest {
                method: "OPTIONS",
                origin: Some("https://foobar.com"),
                request_method: Some("GET"),
                request_headers: None,
            })
            .expect("answered by the proxy, never forwarded");
        assert!(
            refused
                .iter()
                .all(|(n, _)| *n != "access-control-allow-origin")
        );
        let answer = p
            .preflight(&CorsRequest {
                method: "OPTIONS",
                origin: Some("https://www.foo.com"),
                request_method: Some("GET"),
                request_headers: None,
            })
            .expect("a preflight from an allowed origin is answered");
        assert!(answer.contains(&(ALLOW_ORIGIN, "https://www.foo.com".to_string())));
        assert!(answer.contains(&(MAX_AGE, "3600".to_string())));

        // Unset maxAge: the spec's 5 s; `*` alone allows every origin.
        let g = run(
            &[http(
                "d",
                "t",
                json!({"parentRefs": [parent("echo")], "rules": [
                {"filters": [{"type": "CORS", "cors": {"allowOrigins": ["*"]}}],
                 "backendRefs": [{"name": "echo", "port": 9080}]}]}),
            )],
            &[],
        );
        let t = table(&g, "echo", 9080);
        let p = t[0].actions.cors.as_ref().unwrap();
        assert_eq!(p.max_age_secs, Some(5));
        assert!(p.allows_origin("https://anyone.example"));

        // Refused, naming what to change: the rule is dropped.
        for (bad, says) in [
            (
                json!({"allowOrigins": ["*"], "exposeHeaders": ["*"], "allowCredentials": true}),
                "exposeHeaders *",
            ),
            (json!({"allowOrigins": ["*"], "maxAge": 0}), "cors.maxAge 0"),
            (
                json!({"allowHeaders": ["bad header"]}),
                "cors.allowHeaders[0]",
            ),
            (json!({"allowOrigin": ["*"]}), "allowOrigin"),
        ] {
            let g = run(
                &[http(
                    "e",
                    "t",
                    json!({"parentRefs": [parent("echo")], "rules": [
                    {"filters": [{"type": "CORS", "cors": bad.clone()}],
                     "backendRefs": [{"name": "echo", "port": 9080}]}]}),
                )],
                &[],
            );
            let s = status(&g, "e");
            assert!(!s.accepted.status, "{bad}");
            assert!(s.accepted.message.contains(says), "{bad}: {s:?}");
            assert!(table(&g, "echo", 9080).is_empty(), "{bad}");
        }
    }

    #[test]
    fn unsupported_filters_drop_their_rule_by_name_and_unknown_fields_refuse_the_route() {
        let g = run(
            &[http(
                "m",
                "t",
                json!({"parentRefs": [parent("echo")], "rules": [
                {"filters": [{"type": "ExtensionRef", "extensionRef": {"group": "example.com", "kind": "Thing", "name": "x"}}],
                 "backendRefs": [{"name": "echo", "port": 9080}]},
                {"matches": [{"path": {"type": "Exact", "value": "/ok"}}],
                 "backendRefs": [{"name": "echo", "port": 9080}]}]}),
            )],
            &[],
        );
        let s = status(&g, "m");
        assert!(s.accepted.status, "the other rule applies: {s:?}");
        let partial = s.partially_invalid.as_ref().expect("PartiallyInvalid");
        assert!(
            partial.message.starts_with("Dropped Rule") && partial.message.contains("ExtensionRef"),
            "{partial:?}"
        );
        assert_eq!(table(&g, "echo", 9080).len(), 1);

        // CORS with a redirect: both kept (the proxy answers a preflight, then redirects).
        let g = run(
            &[http(
                "all",
                "t",
                json!({"parentRefs": [parent("echo")], "rules": [
                {"filters": [{"type": "CORS", "cors": {"allowOrigins": ["*"]}},
                             {"type": "RequestRedirect", "requestRedirect": {"hostname": "x.example"}}]}]}),
            )],
            &[],
        );
        assert!(status(&g, "all").accepted.status, "{:?}", g.statuses);
        let t = table(&g, "echo", 9080);
        assert!(
            t[0].actions.cors.is_some() && t[0].actions.redirect.is_some(),
            "{t:?}"
        );

        // An experimental-channel field weft does not implement is named, not ignored.
        let g = run(
            &[http(
                "x",
                "t",
                json!({"parentRefs": [parent("echo")], "rules": [
                {"retry": {"attempts": 3}, "backendRefs": [{"name": "echo", "port": 9080}]}]}),
            )],
            &[],
        );
        let s = status(&g, "x");
        assert!(!s.accepted.status);
        assert!(s.accepted.message.contains("retry"), "{s:?}");
    }

    #[test]
    fn parents_weft_does_not_serve_get_no_status_and_a_virtual_service_host_is_not_allowed() {
        let g = run(
            &[
                http(
                    "gw",
                    "t",
                    json!({"parentRefs": [{"name": "my-gateway"}],
                    "rules": [{"backendRefs": [{"name": "echo", "port": 9080}]}]}),
                ),
                http(
                    "ghost",
                    "t",
                    json!({"parentRefs": [parent("ghost")],
                    "rules": [{"backendRefs": [{"name": "echo", "port": 9080}]}]}),
                ),
                http(
                    "vs",
                    "t",
                    json!({"parentRefs": [parent("reviews")],
                    "rules": [{"backendRefs": [{"name": "echo", "port": 9080}]}]}),
                ),
                http(
                    "tcp",
                    "t",
                    json!({"parentRefs": [{"group": "", "kind": "Service", "name": "db"}],
                    "rules": [{"backendRefs": [{"name": "echo", "port": 9080}]}]}),
                ),
            ],
            &["reviews.shop.svc.cluster.local"],
        );
        let names: Vec<&str> = g.statuses.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            ["tcp", "vs"],
            "a Gateway parent and a missing Service get nothing"
        );
        let vs = status(&g, "vs");
        assert!(!vs.accepted.status);
        assert_eq!(vs.accepted.reason, REASON_NOT_ALLOWED_BY_PARENTS);
        assert!(!status(&g, "tcp").accepted.status);
        assert!(g.http.is_empty());
    }

    /// The conformance suite's HTTPRouteRedirectPath: ReplacePrefixMatch in a redirect
    /// replaces the matched prefix element-wise and keeps the rest of the path.
    #[test]
    fn a_redirect_replaces_the_matched_prefix_and_keeps_the_rest() {
        let g = run(
            &[http(
                "r",
                "t",
                json!({"parentRefs": [parent("echo")], "rules": [
                {"matches": [{"path": {"type": "PathPrefix", "value": "/original-prefix"}}],
                 "filters": [{"type": "RequestRedirect", "requestRedirect": {
                     "path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/replacement-prefix"}}}]}]}),
            )],
            &[],
        );
        assert!(status(&g, "r").accepted.status, "{:?}", g.statuses);
        let t = table(&g, "echo", 9080);
        let location = |path: &str| {
            let headers: Vec<(&str, &str)> = vec![];
            let view = RequestView {
                method: "GET",
                path,
                query: None,
                port: 9080,
                headers: &headers,
            };
            let Choice::Route { route, .. } = choose_route(t, &view) else {
                panic!("{path} is routed");
            };
            let r = route.actions.redirect.as_ref().expect("a redirect");
            crate::route::action::redirect_location(r, "http", "echo:9080", path, None)
        };
        assert_eq!(
            location("/original-prefix/lemon"),
            "http://echo:9080/replacement-prefix/lemon"
        );
        assert_eq!(
            location("/original-prefix"),
            "http://echo:9080/replacement-prefix"
        );
        assert_eq!(
            location("/original-prefix/a/b"),
            "http://echo:9080/replacement-prefix/a/b"
        );
    }

    #[test]
    fn rewrites_redirects_header_edits_and_timeouts_compile_to_route_actions() {
        let g = run(
            &[http(
                "a",
                "t",
                json!({"parentRefs": [parent("echo")], "rules": [
                {"matches": [{"path": {"type": "PathPrefix", "value": "/old"}}],
                 "filters": [{"type": "URLRewrite", "urlRewrite": {"hostname": "new.example",
                              "path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/new"}}},
                             {"type": "RequestHeaderModifier", "requestHeaderModifier": {
                                 "set": [{"name": "X-Set", "value": "1"}], "remove": ["X-Drop"]}}],
                 "backendRefs": [{"name": "echo", "port": 9080,
                     "filters": [{"type": "ResponseHeaderModifier", "responseHeaderModifier": {
                         "add": [{"name": "X-Backend", "value": "echo"}]}}]}],
                 "timeouts": {"request": "2s", "backendRequest": "500ms"}},
                {"matches": [{"path": {"type": "PathPrefix", "value": "/full/one"}}],
                 "filters": [{"type": "URLRewrite", "urlRewrite": {
                     "path": {"type": "ReplaceFullPath", "replaceFullPath": "/one"}}}],
                 "backendRefs": [{"name": "echo", "port": 9080}]},
                {"matches": [{"path": {"type": "PathPrefix", "value": "/strip"}}],
                 "filters": [{"type": "URLRewrite", "urlRewrite": {
                     "path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/"}}}],
                 "backendRefs": [{"name": "echo", "port": 9080}]},
                {"matches": [{"path": {"type": "Exact", "value": "/moved"}}],
                 "filters": [{"type": "RequestRedirect", "requestRedirect": {
                     "hostname": "example.com", "path": {"type": "ReplaceFullPath", "replaceFullPath": "/here"}}}]}]}),
            )],
            &[],
        );
        let t = table(&g, "echo", 9080);
        assert!(status(&g, "a").accepted.status, "{:?}", g.statuses);
        let rewrite_for = |path: &str| {
            let headers: Vec<(&str, &str)> = vec![];
            let view = RequestView {
                method: "GET",
                path,
                query: Some("q=1"),
                port: 9080,
                headers: &headers,
            };
            let Choice::Route { route, matched, .. } = choose_route(t, &view) else {
                panic!("{path} is routed");
            };
            let to = route
                .actions
                .rewrite
                .as_ref()
                .unwrap()
                .uri
                .as_ref()
                .unwrap();
            (
                rewritten_path(path, Some("q=1"), matched.and_then(|m| m.uri.as_ref()), to),
                route,
            )
        };
        assert_eq!(rewrite_for("/old").0, "/new?q=1");
        assert_eq!(rewrite_for("/old/").0, "/new/?q=1");
        // The conformance suite's cases (MeshHTTPRouteRewritePath).
        assert_eq!(rewrite_for("/full/one/two").0, "/one?q=1");
        assert_eq!(rewrite_for("/full/one").0, "/one?q=1");
        assert_eq!(rewrite_for("/strip/three").0, "/three?q=1");
        assert_eq!(rewrite_for("/strip").0, "/?q=1");
        let (path, route) = rewrite_for("/old/page");
        assert_eq!(path, "/new/page?q=1");
        assert_eq!(
            route.actions.rewrite.as_ref().unwrap().authority.as_deref(),
            Some("new.example")
        );
        assert_eq!(route.actions.request_headers.set["x-set"], "1");
        assert_eq!(route.actions.request_headers.remove, ["x-drop"]);
        assert_eq!(
            route.destinations[0].response_headers.add["x-backend"],
            "echo"
        );
        assert_eq!(route.actions.timeout_ms, Some(2000));
        assert_eq!(
            route.actions.retries.as_ref().unwrap().per_try_timeout_ms,
            Some(500)
        );
        let moved = t.iter().find(|r| r.actions.redirect.is_some()).unwrap();
        let r = moved.actions.redirect.as_ref().unwrap();
        assert_eq!(
            crate::route::action::redirect_location(r, "http", "echo:9080", "/moved", None),
            "http://example.com:9080/here",
            "the spec's default: 302 to the listener's (the Service's) port"
        );
        assert_eq!(r.code, 302);
        assert!(moved.destinations.is_empty());
    }

    #[test]
    fn grpc_method_matches_take_grpc_calls_before_http_routes() {
        let g = run(
            &[
                http(
                    "h",
                    "2026-01-01T00:00:00Z",
                    json!({"parentRefs": [{"group": "", "kind": "Service", "name": "grpc"}],
                    "rules": [{"backendRefs": [{"name": "grpc", "port": 7070}]}]}),
                ),
                Route {
                    kind: RouteKind::Grpc,
                    name: "g",
                    created: "2026-02-01T00:00:00Z",
                    spec: json!({"parentRefs": [{"group": "", "kind": "Service", "name": "grpc"}], "rules": [
                        {"matches": [{"method": {"service": "proto.EchoTestService", "method": "Echo"}}],
                         "backendRefs": [{"name": "echo", "port": 9080}]},
                        {"matches": [{"method": {"type": "RegularExpression", "method": "Forward.*"}},
                                     {"headers": [{"name": "x-user", "value": "jason"}]}],
                         "backendRefs": [{"name": "reviews", "port": 9080}]}]}),
                },
            ],
            &[],
        );
        let t = table(&g, "grpc", 7070);
        let grpc = [("content-type", "application/grpc")];
        let call = |path: &str, extra: &[(&str, &str)]| {
            let mut h: Vec<(&str, &str)> = grpc.to_vec();
            h.extend_from_slice(extra);
            let view = RequestView {
                method: "POST",
                path,
                query: None,
                port: 7070,
                headers: &h,
            };
            match choose_route(t, &view) {
                Choice::Route { route, .. } => route.destinations[0].service.clone(),
                Choice::NoRoute => "none".into(),
            }
        };
        assert!(call("/proto.EchoTestService/Echo", &[]).starts_with("echo."));
        assert!(call("/proto.EchoTestService/ForwardEcho", &[]).starts_with("reviews."));
        assert!(call("/other.Svc/Get", &[("x-user", "jason")]).starts_with("reviews."));
        // Other calls, and plain HTTP requests even to the gRPC path, fall to the HTTPRoute.
        assert!(call("/proto.EchoTestService/Other", &[]).starts_with("grpc."));
        assert_eq!(
            taken(t, "POST", "/proto.EchoTestService/Echo", None, &[]).as_deref(),
            Some("grpc")
        );
        assert!(status(&g, "g").accepted.status, "{:?}", g.statuses);
    }

    /// Routes of several namespaces, compiled for client namespace `client`.
    fn run_in(routes: &[(&'static str, Route)], client: Option<&str>) -> Gamma {
        let sources: Vec<RouteSource> = routes
            .iter()
            .map(|(ns, r)| RouteSource {
                kind: r.kind,
                generation: Some(1),
                uid: None,
                source: Source {
                    namespace: ns,
                    name: r.name,
                    created: r.created,
                    spec: &r.spec,
                },
            })
            .collect();
        let mut registry = registry();
        registry.add("echo.web.svc.cluster.local", 9080, true);
        compile(&registry, &sources, &BTreeSet::new(), client)
    }

    /// The conformance suite's MeshConsumerRoute, plus a producer route on the same port.
    fn consumer_and_producer() -> Vec<(&'static str, Route)> {
        vec![
            (
                "shop",
                http(
                    "producer",
                    "2026-01-01T00:00:00Z",
                    json!({"parentRefs": [parent("echo")],
                       "rules": [{"backendRefs": [{"name": "reviews-v1", "port": 9080}]}]}),
                ),
            ),
            (
                "web",
                http(
                    "consumer",
                    "2026-01-02T00:00:00Z",
                    json!({"parentRefs": [{"group": "", "kind": "Service", "name": "echo", "namespace": "shop"}],
                       "rules": [{"filters": [{"type": "ResponseHeaderModifier",
                           "responseHeaderModifier": {"set": [{"name": "X-Header-Set", "value": "set"}]}}]}]}),
                ),
            ),
        ]
    }

    #[test]
    fn a_consumer_route_replaces_the_producer_routes_for_its_own_namespace_only() {
        let routes = consumer_and_producer();
        // Other namespaces (and the shared table) take the producer route.
        for client in [None, Some("shop"), Some("other")] {
            let g = run_in(&routes, client);
            let t = table(&g, "echo", 9080);
            assert_eq!(t.len(), 1, "{client:?}: {t:?}");
            assert_eq!(t[0].name, "shop/producer", "{client:?}");
            assert_eq!(
                taken(t, "GET", "/", None, &[]).as_deref(),
                Some("reviews-v1")
            );
            // The statuses are the same whoever the client is.
            let c = status(&g, "consumer");
            assert!(c.accepted.status, "{c:?}");
            assert!(c.accepted.message.contains("namespace web"), "{c:?}");
            assert!(c.resolved_refs.status, "{c:?}");
            assert!(status(&g, "producer").accepted.status);
        }
        // web's clients take the consumer route alone: no backendRefs sends to the parent
        // Service itself, with the response header set.
        let g = run_in(&routes, Some("web"));
        let t = table(&g, "echo", 9080);
        assert_eq!(t.len(), 1, "{t:?}");
        assert_eq!(t[0].name, "web/consumer");
        assert_eq!(t[0].destinations.len(), 1);
        assert_eq!(t[0].destinations[0].service, "echo.shop.svc.cluster.local");
        assert_eq!(t[0].destinations[0].port, 9080);
        assert_eq!(
            t[0].actions.response_headers.set.get("x-header-set"),
            Some(&"set".to_string()),
            "{:?}",
            t[0].actions
        );
        // A Service web has of the same name is not the consumer route's parent.
        assert!(
            !g.http
                .contains_key(&("echo.web.svc.cluster.local".to_string(), 9080))
        );
    }

    #[test]
    fn a_mesh_route_sends_to_any_namespace_without_a_reference_grant_and_a_rule_without_backends_goes_to_its_parent()
     {
        let g = run_in(
            &[(
                "web",
                http(
                    "r",
                    "t",
                    json!({"parentRefs": [{"group": "", "kind": "Service", "name": "echo", "port": 9080}],
                       "rules": [
                        {"matches": [{"path": {"type": "PathPrefix", "value": "/v2"}}],
                         "backendRefs": [{"name": "reviews-v2", "namespace": "shop", "port": 9080}]},
                        {}]}),
                ),
            )],
            None,
        );
        let s = status(&g, "r");
        assert!(s.accepted.status && s.resolved_refs.status, "{s:?}");
        let t = g
            .http
            .get(&("echo.web.svc.cluster.local".to_string(), 9080))
            .expect("the producer route's table");
        assert_eq!(
            taken(t, "GET", "/v2/x", None, &[]).as_deref(),
            Some("reviews-v2")
        );
        let rest = t
            .iter()
            .find(|r| r.matches[0].uri == Some(StringMatch::Prefix("/".into())))
            .expect("the rule without matches or backends");
        assert_eq!(rest.destinations[0].service, "echo.web.svc.cluster.local");
        assert!(rest.actions.direct_response.is_none(), "{rest:?}");
    }

    #[test]
    fn a_section_name_attaches_to_the_named_port_and_an_unknown_or_mismatched_one_is_no_matching_parent()
     {
        let mut registry = registry();
        registry.add("echo.shop.svc.cluster.local", 8080, true);
        registry.name_port("echo.shop.svc.cluster.local", "http-alt", 8080);
        let specs = [
            json!({"parentRefs": [{"group": "", "kind": "Service", "name": "echo", "sectionName": "http-alt"}],
                   "rules": [{"backendRefs": [{"name": "reviews", "port": 9080}]}]}),
            json!({"parentRefs": [{"group": "", "kind": "Service", "name": "echo", "sectionName": "nope"}],
                   "rules": [{"backendRefs": [{"name": "reviews", "port": 9080}]}]}),
            json!({"parentRefs": [{"group": "", "kind": "Service", "name": "echo", "sectionName": "http-alt", "port": 9080}],
                   "rules": [{"backendRefs": [{"name": "reviews", "port": 9080}]}]}),
        ];
        let names = ["named", "unknown", "mismatched"];
        let sources: Vec<RouteSource> = specs
            .iter()
            .zip(names)
            .map(|(spec, name)| RouteSource {
                kind: RouteKind::Http,
                generation: Some(1),
                uid: None,
                source: Source {
                    namespace: "shop",
                    name,
                    created: "t",
                    spec,
                },
            })
            .collect();
        let g = compile(&registry, &sources, &BTreeSet::new(), None);
        assert!(status(&g, "named").accepted.status);
        assert_eq!(table(&g, "echo", 8080).len(), 1);
        assert!(table(&g, "echo", 9080).is_empty(), "only the named port");
        for (name, says) in [
            ("unknown", "no port named nope"),
            ("mismatched", "is port 8080"),
        ] {
            let s = status(&g, name);
            assert!(!s.accepted.status, "{s:?}");
            assert_eq!(s.accepted.reason, REASON_NO_MATCHING_PARENT);
            assert!(s.accepted.message.contains(says), "{s:?}");
        }
    }
}
