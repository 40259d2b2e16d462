//! The Gateway API's `Gateway` (`gateway.networking.k8s.io/v1`) compiled, with the HTTPRoutes,
//! GRPCRoutes, TLSRoutes and TCPRoutes attached to it, into the listener table a gateway proxy
//! already serves for Istio Gateways ([`super::gateway::GatewayConfig`]): HTTP(S) listeners get
//! virtual hosts with rules compiled by the GAMMA compiler ([`super::gamma`]); TLS
//! (Passthrough) and TCP listeners get the relayed [`super::gateway::L4Listener`] Istio's
//! PASSTHROUGH and TCP servers get. The Gateway's listener conditions and each route's parent
//! status are computed here as data, for the operator to write. Kube-free (raw specs in).

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;

use super::compile::Registry;
use super::gamma::{
    Condition, Key, ParentStatus, REASON_ACCEPTED, REASON_NO_MATCHING_PARENT, REASON_RESOLVED_REFS,
    REASON_UNSUPPORTED_VALUE, RouteKind, RouteSource, RouteStatus, compile_for_listener,
};
use super::gateway::{
    Credential, GatewayConfig, L4Listener, Listener, MAX_VIRTUAL_HOSTS, ServedTls, VirtualHost,
};
use super::l4::{L4Match, L4Route, L4Table};
use super::model::{Destination, HttpRoute, MAX_DESTINATIONS, MAX_ROUTES};
use super::reference_grant::{Ref, ReferenceGrants};
use crate::api::gateway_api::common::ParentReference;
use crate::api::gateway_api::gateway::GatewaySpec;
use crate::api::gateway_api::l4route;
use crate::api::gateway_api::{GROUP, strict};

pub const GATEWAY: &str = "Gateway";

/// Condition types and reasons of Gateways and listeners, as the spec names them.
pub const PROGRAMMED: &str = "Programmed";
pub const CONFLICTED: &str = "Conflicted";
pub const RESOLVED_REFS: &str = super::gamma::RESOLVED_REFS;
pub const REASON_PROGRAMMED: &str = "Programmed";
pub const REASON_INVALID: &str = "Invalid";
pub const REASON_PENDING: &str = "Pending";
pub const REASON_ADDRESS_NOT_ASSIGNED: &str = "AddressNotAssigned";
pub const REASON_LISTENERS_NOT_VALID: &str = "ListenersNotValid";
pub const REASON_UNSUPPORTED_PROTOCOL: &str = "UnsupportedProtocol";
pub const REASON_NO_CONFLICTS: &str = "NoConflicts";
pub const REASON_HOSTNAME_CONFLICT: &str = "HostnameConflict";
pub const REASON_PROTOCOL_CONFLICT: &str = "ProtocolConflict";
pub const REASON_INVALID_CERTIFICATE_REF: &str = "InvalidCertificateRef";
pub const REASON_INVALID_ROUTE_KINDS: &str = "InvalidRouteKinds";
pub const REASON_REF_NOT_PERMITTED: &str = super::gamma::REASON_REF_NOT_PERMITTED;
pub const REASON_NOT_ALLOWED_BY_LISTENERS: &str = "NotAllowedByListeners";
pub const REASON_NO_MATCHING_LISTENER_HOSTNAME: &str = "NoMatchingListenerHostname";

/// One Gateway as watched (its spec raw).
#[derive(Debug, Clone, Copy)]
pub struct GatewaySource<'a> {
    pub source: super::compile::Source<'a>,
    pub generation: Option<i64>,
}

/// Looks up a `kubernetes.io/tls` Secret by (namespace, name): its content, or why not.
pub type SecretLookup<'a> = &'a dyn Fn(&str, &str) -> Result<Credential, String>;
/// A namespace's labels (None: no such namespace), for `allowedRoutes.namespaces.selector`.
pub type NamespaceLabels<'a> = &'a dyn Fn(&str) -> Option<BTreeMap<String, String>>;

/// `status.listeners[]` of the Gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerStatus {
    pub name: String,
    /// Route kinds the listener takes (group `gateway.networking.k8s.io`).
    pub supported_kinds: Vec<&'static str>,
    pub attached_routes: i32,
    pub accepted: Condition,
    pub programmed: Condition,
    pub resolved_refs: Condition,
    pub conflicted: Condition,
}

/// What one Gateway compiles to.
#[derive(Debug, Clone, PartialEq)]
pub struct Compiled {
    pub config: GatewayConfig,
    /// The Gateway's `Accepted` (`Programmed` needs its Service's address: the operator's).
    pub accepted: Condition,
    pub listeners: Vec<ListenerStatus>,
    /// Routes with a parent reference to this Gateway; `parents` holds only those.
    pub routes: Vec<RouteStatus>,
}

// === Reading a listener ===

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ListenerTls {
    #[serde(default)]
    mode: Option<String>,
    #[serde(default)]
    certificate_refs: Vec<SecretRef>,
    #[serde(default)]
    options: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SecretRef {
    #[serde(default)]
    group: Option<String>,
    #[serde(default)]
    kind: Option<String>,
    name: String,
    #[serde(default)]
    namespace: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct AllowedRoutes {
    #[serde(default)]
    namespaces: Option<RouteNamespaces>,
    #[serde(default)]
    kinds: Option<Vec<RouteGroupKind>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RouteNamespaces {
    #[serde(default)]
    from: Option<String>,
    #[serde(default)]
    selector: Option<LabelSelector>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct LabelSelector {
    #[serde(default)]
    match_labels: BTreeMap<String, String>,
    #[serde(default)]
    match_expressions: Vec<LabelExpression>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct LabelExpression {
    key: String,
    operator: String,
    #[serde(default)]
    values: Vec<String>,
}

impl LabelSelector {
    fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|e| {
                let v = labels.get(&e.key);
                match e.operator.as_str() {
                    "In" => v.is_some_and(|v| e.values.contains(v)),
                    "NotIn" => v.is_none_or(|v| !e.values.contains(v)),
                    "Exists" => v.is_some(),
                    "DoesNotExist" => v.is_none(),
                    // An operator Kubernetes does not know selects nothing.
                    _ => false,
                }
            })
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RouteGroupKind {
    #[serde(default)]
    group: Option<String>,
    kind: String,
}

/// Which namespaces' routes a listener takes.
#[derive(Debug, Clone)]
enum FromNamespaces {
    Same,
    All,
    Selector(LabelSelector),
}

/// What a listener speaks, as weft serves it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Protocol {
    Http,
    /// `HTTPS`, `tls.mode: Terminate`: a certificate, then HTTP.
    Https,
    /// `TLS`, `tls.mode: Passthrough`: relayed by the ClientHello's SNI, never terminated.
    TlsPassthrough,
    /// `TLS`, `tls.mode: Terminate` (the spec's default): a certificate, then the bytes
    /// relayed by the TLSRoutes (TLSRouteModeTerminate).
    TlsTerminate,
    /// `TCP`: bytes relayed.
    Tcp,
}

impl Protocol {
    /// The route kinds it takes, and takes by default when `allowedRoutes.kinds` is unset.
    fn kinds(self) -> Vec<RouteKind> {
        match self {
            Protocol::Http | Protocol::Https => vec![RouteKind::Http, RouteKind::Grpc],
            Protocol::TlsPassthrough | Protocol::TlsTerminate => vec![RouteKind::Tls],
            Protocol::Tcp => vec![RouteKind::Tcp],
        }
    }

    /// Which listeners may share a port: HTTPS and both TLS modes all begin with a
    /// ClientHello and are told apart by its SNI (TLSRouteModeMixed), so they share one
    /// family; HTTP and TCP each stand alone.
    fn family(self) -> u8 {
        match self {
            Protocol::Http => 0,
            Protocol::Https | Protocol::TlsPassthrough | Protocol::TlsTerminate => 1,
            Protocol::Tcp => 2,
        }
    }
}

/// One listener, read and judged.
struct Read {
    name: String,
    port: u16,
    protocol: Protocol,
    hostname: Option<String>,
    kinds: Vec<RouteKind>,
    from: FromNamespaces,
    credential: Option<Credential>,
    status: ListenerStatus,
}

impl Read {
    /// Routes may attach (accepted, not conflicted); `Programmed` may still be false.
    fn open(&self) -> bool {
        self.status.accepted.status && !self.status.conflicted.status
    }
}

/// The route kind `k` names if a listener of `protocol` serves it.
fn supported_kind(protocol: Protocol, k: &RouteGroupKind) -> Option<RouteKind> {
    if k.group.as_deref().unwrap_or(GROUP) != GROUP {
        return None;
    }
    protocol
        .kinds()
        .into_iter()
        .find(|kind| kind.kind() == k.kind)
}

fn read_listener(
    gw_ns: &str,
    l: &crate::api::gateway_api::gateway::Listener,
    secrets: SecretLookup<'_>,
    grants: &ReferenceGrants,
) -> Read {
    let yes = |reason, m: &str| Condition::yes(reason, m);
    let no = |reason, m: String| Condition::no(reason, m);
    let mut status = ListenerStatus {
        name: l.name.clone(),
        supported_kinds: Vec::new(),
        attached_routes: 0,
        accepted: yes(REASON_ACCEPTED, "the listener is served by weft"),
        programmed: yes(REASON_PROGRAMMED, "the listener is in the gateway's config"),
        resolved_refs: yes(REASON_RESOLVED_REFS, "every reference resolved"),
        conflicted: Condition::no(REASON_NO_CONFLICTS, "no conflicts"),
    };
    let mut read = Read {
        name: l.name.clone(),
        port: u16::try_from(l.port).unwrap_or(0),
        protocol: Protocol::Http,
        hostname: l.hostname.as_ref().map(|h| h.to_ascii_lowercase()),
        kinds: Vec::new(),
        from: FromNamespaces::Same,
        credential: None,
        status: status.clone(),
    };
    let invalid = |status: &mut ListenerStatus, reason, m: String| {
        status.accepted = no(reason, m.clone());
        status.programmed = no(REASON_INVALID, m);
    };
    read.protocol = match l.protocol.as_str() {
        "HTTP" => Protocol::Http,
        "HTTPS" => Protocol::Https,
        // Its tls.mode is read below: Passthrough, or Terminate.
        "TLS" => Protocol::TlsPassthrough,
        "TCP" => Protocol::Tcp,
        p => {
            invalid(
                &mut status,
                REASON_UNSUPPORTED_PROTOCOL,
                format!(
                    "protocol {p} is not supported by weft's gateway (HTTP, HTTPS, TLS and TCP are)"
                ),
            );
            read.status = status;
            return read;
        }
    };
    let protocol = read.protocol;
    if read.port == 0 {
        invalid(
            &mut status,
            REASON_UNSUPPORTED_VALUE,
            format!("port {} is not a port", l.port),
        );
        read.status = status;
        return read;
    }
    // Route kinds: the protocol's by default; named ones weft does not serve are refused.
    match l
        .allowed_routes
        .as_ref()
        .map(|a| strict::<AllowedRoutes>("allowedRoutes", a))
        .transpose()
    {
        Err(e) => {
            invalid(&mut status, REASON_UNSUPPORTED_VALUE, e);
            read.status = status;
            return read;
        }
        Ok(allowed) => {
            let allowed = allowed.unwrap_or_default();
            read.kinds = match &allowed.kinds {
                None => protocol.kinds(),
                Some(kinds) => {
                    let bad: Vec<&str> = kinds
                        .iter()
                        .filter(|k| supported_kind(protocol, k).is_none())
                        .map(|k| k.kind.as_str())
                        .collect();
                    if !bad.is_empty() {
                        let served: Vec<&str> = protocol.kinds().iter().map(|k| k.kind()).collect();
                        status.resolved_refs = no(
                            REASON_INVALID_ROUTE_KINDS,
                            format!(
                                "route kinds {bad:?} are not served on a {} listener ({served:?} are)",
                                l.protocol
                            ),
                        );
                    }
                    let mut k: Vec<RouteKind> = kinds
                        .iter()
                        .filter_map(|k| supported_kind(protocol, k))
                        .collect();
                    k.sort();
                    k.dedup();
                    k
                }
            };
            read.from = match allowed.namespaces.unwrap_or_default() {
                RouteNamespaces { from: None, .. } => FromNamespaces::Same,
                RouteNamespaces {
                    from: Some(f),
                    selector,
                } => match (f.as_str(), selector) {
                    ("Same", _) => FromNamespaces::Same,
                    ("All", _) => FromNamespaces::All,
                    ("Selector", Some(s)) => FromNamespaces::Selector(s),
                    ("Selector", None) => {
                        invalid(
                            &mut status,
                            REASON_UNSUPPORTED_VALUE,
                            "allowedRoutes.namespaces.from Selector needs a selector".into(),
                        );
                        read.status = status;
                        return read;
                    }
                    (other, _) => {
                        invalid(
                            &mut status,
                            REASON_UNSUPPORTED_VALUE,
                            format!(
                                "allowedRoutes.namespaces.from {other:?} is not Same, All or Selector"
                            ),
                        );
                        read.status = status;
                        return read;
                    }
                },
            };
        }
    }
    status.supported_kinds = read.kinds.iter().map(|k| k.kind()).collect();
    let tls = l
        .tls
        .as_ref()
        .map(|t| strict::<ListenerTls>("tls", t))
        .transpose();
    if protocol == Protocol::TlsPassthrough {
        // The spec's default mode is Terminate (TLSRouteModeTerminate): a certificate, then
        // the TLSRoutes relay the bytes; Passthrough relays the TLS itself.
        match &tls {
            // certificateRefs are optional there and not used (the backend's certificate
            // is the client's); docs/gateway.md says so.
            Ok(Some(t)) if t.mode.as_deref() == Some("Passthrough") => {}
            Ok(Some(t)) if t.mode.as_deref().is_none_or(|m| m == "Terminate") => {
                read.protocol = Protocol::TlsTerminate;
            }
            Ok(Some(t)) => invalid(
                &mut status,
                REASON_UNSUPPORTED_VALUE,
                format!(
                    "tls.mode {} is not one of the spec's (Terminate, Passthrough)",
                    t.mode.as_deref().unwrap_or_default()
                ),
            ),
            Ok(None) => invalid(
                &mut status,
                REASON_UNSUPPORTED_VALUE,
                "a TLS listener needs tls (mode Passthrough, or Terminate with certificateRefs)"
                    .into(),
            ),
            Err(e) => invalid(&mut status, REASON_UNSUPPORTED_VALUE, e.clone()),
        }
        // A listener weft does not serve takes no route kind.
        if !status.accepted.status {
            status.supported_kinds.clear();
        }
    }
    if matches!(read.protocol, Protocol::Https | Protocol::TlsTerminate) {
        match tls {
            Err(e) => invalid(&mut status, REASON_UNSUPPORTED_VALUE, e),
            Ok(None) => invalid(
                &mut status,
                REASON_UNSUPPORTED_VALUE,
                "an HTTPS listener needs tls.certificateRefs".into(),
            ),
            Ok(Some(tls)) => match tls.mode.as_deref().unwrap_or("Terminate") {
                "Terminate" if !tls.options.is_empty() => invalid(
                    &mut status,
                    REASON_UNSUPPORTED_VALUE,
                    format!(
                        "tls.options {:?} are not supported by weft",
                        tls.options.keys().collect::<Vec<_>>()
                    ),
                ),
                "Terminate" => match certificate(gw_ns, &tls.certificate_refs, secrets, grants) {
                    Ok(c) => read.credential = Some(c),
                    Err(c) => {
                        // The listener is understood but has no certificate: it serves
                        // nothing (never plaintext in its place); other listeners serve.
                        status.programmed = Condition::no(REASON_INVALID, c.message.clone());
                        status.resolved_refs = c;
                    }
                },
                m => invalid(
                    &mut status,
                    REASON_UNSUPPORTED_VALUE,
                    format!("tls.mode {m} is not supported on an HTTPS listener (Terminate is)"),
                ),
            },
        }
    }
    read.status = status;
    read
}

/// The first certificate reference of a listener, resolved; Err: its `ResolvedRefs=False`.
fn certificate(
    gw_ns: &str,
    refs: &[SecretRef],
    secrets: SecretLookup<'_>,
    grants: &ReferenceGrants,
) -> Result<Credential, Condition> {
    let Some(r) = refs.first() else {
        return Err(Condition::no(
            REASON_INVALID_CERTIFICATE_REF,
            "tls.certificateRefs is empty",
        ));
    };
    if !r.group.as_deref().unwrap_or("").is_empty()
        || r.kind.as_deref().unwrap_or("Secret") != "Secret"
    {
        return Err(Condition::no(
            REASON_INVALID_CERTIFICATE_REF,
            format!(
                "certificateRefs[0] is a {}/{}; weft reads core Secrets only",
                r.group.as_deref().unwrap_or(""),
                r.kind.as_deref().unwrap_or("Secret")
            ),
        ));
    }
    let ns = r.namespace.as_deref().unwrap_or(gw_ns);
    let from = Ref {
        group: GROUP,
        kind: GATEWAY,
        namespace: gw_ns,
    };
    let to = Ref {
        group: "",
        kind: "Secret",
        namespace: ns,
    };
    if !grants.permits(from, to, &r.name) {
        return Err(Condition::no(
            REASON_REF_NOT_PERMITTED,
            format!(
                "certificateRefs[0] is Secret {ns}/{}: no ReferenceGrant in {ns} permits Gateways of {gw_ns} to use it",
                r.name
            ),
        ));
    }
    secrets(ns, &r.name).map_err(|e| {
        Condition::no(
            REASON_INVALID_CERTIFICATE_REF,
            format!("certificateRefs[0] Secret {ns}/{}: {e}", r.name),
        )
    })
}

/// Listeners sharing a port must share a protocol family (HTTPS and TLS in either mode
/// share one: the SNI tells them apart), and then differ by hostname.
fn mark_conflicts(listeners: &mut [Read]) {
    let mut by_port: BTreeMap<u16, Vec<usize>> = BTreeMap::new();
    for (i, l) in listeners.iter().enumerate() {
        if l.status.accepted.status {
            by_port.entry(l.port).or_default().push(i);
        }
    }
    for (port, ids) in by_port {
        let protocols: BTreeSet<Protocol> = ids.iter().map(|&i| listeners[i].protocol).collect();
        let families: BTreeSet<u8> = protocols.iter().map(|p| p.family()).collect();
        for &i in &ids {
            let conflict = if families.len() > 1 {
                Some((
                    REASON_PROTOCOL_CONFLICT,
                    format!(
                        "port {port} is used by listeners of several protocols ({protocols:?})"
                    ),
                ))
            } else {
                let same = ids
                    .iter()
                    .filter(|&&j| listeners[j].hostname == listeners[i].hostname)
                    .count();
                (same > 1).then(|| {
                    (
                        REASON_HOSTNAME_CONFLICT,
                        format!(
                            "another listener on port {port} has the same hostname {}",
                            listeners[i].hostname.as_deref().unwrap_or("(none)")
                        ),
                    )
                })
            };
            if let Some((reason, m)) = conflict {
                let s = &mut listeners[i].status;
                s.conflicted = Condition::yes(reason, m.clone());
                s.programmed = Condition::no(REASON_INVALID, m);
            }
        }
    }
}

// === Hostnames ===

/// Whether host pattern `wide` covers `narrow` (`*.example.com` covers `a.b.example.com`,
/// never `example.com`).
fn covers(wide: &str, narrow: &str) -> bool {
    wide == narrow
        || wide
            .strip_prefix('*')
            .is_some_and(|suffix| narrow.len() > suffix.len() && narrow.ends_with(suffix))
}

/// The hostnames a route serves on a listener (its virtual hosts there): the spec's
/// intersection of the listener's hostname and the route's; empty: none in common.
fn effective_hostnames(listener: Option<&str>, route: &[String]) -> Vec<String> {
    let route: Vec<String> = route.iter().map(|h| h.to_ascii_lowercase()).collect();
    match (listener, route.is_empty()) {
        (None, true) => vec!["*".into()],
        (Some(l), true) => vec![l.to_string()],
        (None, false) => route,
        (Some(l), false) => {
            let mut out: Vec<String> = route
                .iter()
                .filter_map(|r| {
                    if covers(l, r) {
                        Some(r.clone())
                    } else if covers(r, l) {
                        Some(l.to_string())
                    } else {
                        None
                    }
                })
                .collect();
            out.sort();
            out.dedup();
            out
        }
    }
}

// === Compiling ===

fn is_this_gateway(p: &ParentReference, route_ns: &str, gw: &GatewaySource<'_>) -> bool {
    p.group.as_deref().unwrap_or(GROUP) == GROUP
        && p.kind.as_deref().unwrap_or(GATEWAY) == GATEWAY
        && p.name == gw.source.name
        && p.namespace.as_deref().unwrap_or(route_ns) == gw.source.namespace
}

fn route_hostnames(r: &RouteSource<'_>) -> Vec<String> {
    r.source
        .spec
        .get("hostnames")
        .and_then(|h| serde_json::from_value::<Vec<String>>(h.clone()).ok())
        .unwrap_or_default()
}

/// What a Gateway's compile reads besides the Gateway and its routes: the Services, the
/// certificate Secrets, the namespaces' labels (for a `Selector` listener) and the
/// ReferenceGrants (for a Secret or a backend in another namespace).
#[derive(Clone, Copy)]
pub struct Cluster<'a> {
    pub registry: &'a Registry,
    pub secrets: SecretLookup<'a>,
    pub namespaces: NamespaceLabels<'a>,
    pub grants: &'a ReferenceGrants,
}

/// Compiles one Gateway (of a class weft implements) and the routes of `routes` that name it
/// as a parent.
pub fn compile(
    cluster: &Cluster<'_>,
    gateway: &GatewaySource<'_>,
    routes: &[RouteSource<'_>],
) -> Compiled {
    let gw = &gateway.source;
    let id = gw.id();
    let spec: GatewaySpec = match strict("spec", gw.spec) {
        Ok(s) => s,
        Err(e) => {
            return Compiled {
                config: GatewayConfig::default(),
                accepted: Condition::no(REASON_UNSUPPORTED_VALUE, e),
                listeners: Vec::new(),
                routes: Vec::new(),
            };
        }
    };
    let mut listeners: Vec<Read> = spec
        .listeners
        .iter()
        .map(|l| read_listener(gw.namespace, l, cluster.secrets, cluster.grants))
        .collect();
    mark_conflicts(&mut listeners);

    // Oldest route first, then namespace/name (the spec's tie-breakers).
    let mut sorted: Vec<&RouteSource> = routes.iter().collect();
    sorted.sort_by(|a, b| {
        (a.source.created, a.source.namespace, a.source.name, a.kind).cmp(&(
            b.source.created,
            b.source.namespace,
            b.source.name,
            b.kind,
        ))
    });
    let mut tables = Tables::default();
    let mut statuses = Vec::new();
    for (age, r) in sorted.into_iter().enumerate() {
        let refs: Vec<ParentReference> =
            crate::api::gateway_api::common::parent_refs(r.source.spec)
                .into_iter()
                .filter(|p| is_this_gateway(p, r.source.namespace, gateway))
                .collect();
        if refs.is_empty() {
            continue;
        }
        let hostnames = route_hostnames(r);
        let mut parents = Vec::new();
        for p in refs {
            parents.push(attach(
                cluster,
                r,
                age,
                &id,
                &p,
                &hostnames,
                &mut listeners,
                &mut tables,
            ));
        }
        statuses.push(RouteStatus {
            kind: r.kind,
            namespace: r.source.namespace.to_string(),
            name: r.source.name.to_string(),
            generation: r.generation,
            uid: r.uid.map(str::to_string),
            parents,
        });
    }

    let config = config_of(&id, &listeners, tables);
    // A listener whose references do not resolve is still valid (accepted, not programmed):
    // the Gateway is accepted unless no listener is.
    let valid = listeners
        .iter()
        .filter(|l| l.status.accepted.status)
        .count();
    let accepted = if valid == listeners.len() {
        Condition::yes(REASON_ACCEPTED, "the Gateway is served by weft")
    } else if valid > 0 || listeners.is_empty() {
        Condition::yes(
            REASON_LISTENERS_NOT_VALID,
            "some listeners are not valid (see status.listeners); the others are served",
        )
    } else {
        Condition::no(
            REASON_LISTENERS_NOT_VALID,
            "no listener is valid (see status.listeners)",
        )
    };
    Compiled {
        config,
        accepted,
        listeners: listeners.into_iter().map(|l| l.status).collect(),
        routes: statuses,
    }
}

/// What the attached routes compiled to, before the listener table is laid out.
#[derive(Default)]
struct Tables {
    /// (port, hostname) -> HTTP entries with their precedence keys.
    http: BTreeMap<(u16, String), Vec<(Key, HttpRoute)>>,
    /// (port, the name of a Terminate listener; None: the port's Passthrough or TCP
    /// listeners) -> relayed routes with their precedence keys.
    l4: BTreeMap<(u16, Option<String>), Vec<Keyed>>,
}

/// A relayed route with its precedence key.
type Keyed = (L4Key, L4Route);

/// The order of relayed routes on one port, first match wins: an exact SNI before any
/// wildcard, a longer wildcard before a shorter one (the spec's most specific hostname
/// first), then the oldest route.
type L4Key = (bool, std::cmp::Reverse<usize>, usize);

fn l4_key(hostname: &str, age: usize) -> L4Key {
    (
        hostname.starts_with('*'),
        std::cmp::Reverse(hostname.len()),
        age,
    )
}

/// Attaches one route to the listeners one of its parent references selects: its entries go
/// into `tables`, attached routes are counted, and the reference's status is returned.
#[allow(clippy::too_many_arguments)]
fn attach(
    cluster: &Cluster<'_>,
    r: &RouteSource<'_>,
    age: usize,
    gateway_id: &str,
    p: &ParentReference,
    hostnames: &[String],
    listeners: &mut [Read],
    tables: &mut Tables,
) -> ParentStatus {
    let status = |accepted: Condition, resolved: Condition| ParentStatus {
        parent_ref: p.clone(),
        accepted,
        resolved_refs: resolved,
        partially_invalid: None,
    };
    let unchecked = || {
        Condition::yes(
            REASON_RESOLVED_REFS,
            "the route is not accepted; its references were not checked",
        )
    };
    let named: Vec<usize> = listeners
        .iter()
        .enumerate()
        .filter(|(_, l)| {
            p.section_name.as_ref().is_none_or(|s| *s == l.name)
                && p.port.is_none_or(|port| i32::from(l.port) == port)
        })
        .map(|(i, _)| i)
        .collect();
    let open: Vec<usize> = named
        .iter()
        .copied()
        .filter(|&i| listeners[i].open())
        .collect();
    if open.is_empty() {
        return status(
            Condition::no(
                REASON_NO_MATCHING_PARENT,
                format!(
                    "Gateway {gateway_id} has no valid listener{}{}",
                    p.section_name
                        .as_ref()
                        .map(|s| format!(" named {s}"))
                        .unwrap_or_default(),
                    p.port.map(|x| format!(" on port {x}")).unwrap_or_default()
                ),
            ),
            unchecked(),
        );
    }
    let route_ns = r.source.namespace;
    let allowed: Vec<usize> = open
        .iter()
        .copied()
        .filter(|&i| {
            let l = &listeners[i];
            l.kinds.contains(&r.kind)
                && match &l.from {
                    FromNamespaces::Same => route_ns == gateway_id.split('/').next().unwrap_or(""),
                    FromNamespaces::All => true,
                    FromNamespaces::Selector(s) => {
                        (cluster.namespaces)(route_ns).is_some_and(|labels| s.matches(&labels))
                    }
                }
        })
        .collect();
    if allowed.is_empty() {
        return status(
            Condition::no(
                REASON_NOT_ALLOWED_BY_LISTENERS,
                format!(
                    "no listener of Gateway {gateway_id} it names allows an {} from namespace {route_ns}",
                    r.kind.kind()
                ),
            ),
            unchecked(),
        );
    }
    let fitting: Vec<(usize, Vec<String>)> = allowed
        .iter()
        .map(|&i| {
            (
                i,
                effective_hostnames(listeners[i].hostname.as_deref(), hostnames),
            )
        })
        .filter(|(_, h)| !h.is_empty())
        .collect();
    if fitting.is_empty() {
        return status(
            Condition::no(
                REASON_NO_MATCHING_LISTENER_HOSTNAME,
                format!(
                    "no hostname of {hostnames:?} is within the hostname of a listener it names"
                ),
            ),
            unchecked(),
        );
    }
    if matches!(r.kind, RouteKind::Tls | RouteKind::Tcp) {
        let compiled = match relayed(cluster, r) {
            Ok(c) => c,
            Err(e) => return status(Condition::no(REASON_UNSUPPORTED_VALUE, e), unchecked()),
        };
        let name = format!("{}/{}", r.source.namespace, r.source.name);
        for (i, hosts) in &fitting {
            let l = &mut listeners[*i];
            l.status.attached_routes += 1;
            // A listener that serves nothing, or a rule without a valid backend: nothing to
            // relay to, its connections are closed (the spec's rejection).
            let (true, Some(destinations)) =
                (l.status.programmed.status, compiled.destinations.as_ref())
            else {
                continue;
            };
            let own = (l.protocol == Protocol::TlsTerminate).then(|| l.name.clone());
            let entries = tables.l4.entry((l.port, own)).or_default();
            if r.kind == RouteKind::Tls {
                for h in hosts {
                    let m = L4Match {
                        sni_hosts: vec![h.clone()],
                        ..Default::default()
                    };
                    entries.push((
                        l4_key(h, age),
                        L4Route {
                            name: name.clone(),
                            matches: vec![m],
                            destinations: destinations.clone(),
                        },
                    ));
                }
            } else {
                entries.push((
                    l4_key("", age),
                    L4Route {
                        name: name.clone(),
                        matches: Vec::new(),
                        destinations: destinations.clone(),
                    },
                ));
            }
        }
        return ParentStatus {
            parent_ref: p.clone(),
            accepted: Condition::yes(REASON_ACCEPTED, format!("attached to Gateway {gateway_id}")),
            resolved_refs: compiled.unresolved.unwrap_or_else(|| {
                Condition::yes(REASON_RESOLVED_REFS, "every backend reference resolved")
            }),
            partially_invalid: None,
        };
    }
    let mut dropped: Vec<String> = Vec::new();
    let mut unresolved: Option<Condition> = None;
    let mut compiled_any = false;
    for (i, hosts) in &fitting {
        let port = listeners[*i].port;
        let compiled = match compile_for_listener(
            cluster.registry,
            cluster.grants,
            r.kind,
            &r.source,
            age,
            port,
        ) {
            Ok(c) => c,
            Err(e) => return status(Condition::no(REASON_UNSUPPORTED_VALUE, e), unchecked()),
        };
        for d in compiled.dropped {
            if !dropped.contains(&d) {
                dropped.push(d);
            }
        }
        if unresolved.is_none() {
            unresolved = compiled.unresolved;
        }
        if compiled.entries.is_empty() && compiled.rules > 0 {
            continue;
        }
        compiled_any = true;
        listeners[*i].status.attached_routes += 1;
        // A listener without its certificate serves nothing; its routes wait for it.
        if !listeners[*i].status.programmed.status {
            continue;
        }
        for h in hosts {
            tables
                .http
                .entry((port, h.clone()))
                .or_default()
                .extend(compiled.entries.iter().cloned());
        }
    }
    if !compiled_any {
        return status(
            Condition::no(
                REASON_UNSUPPORTED_VALUE,
                format!("no rule can be applied: {}", dropped.join("; ")),
            ),
            unresolved.unwrap_or_else(unchecked),
        );
    }
    ParentStatus {
        parent_ref: p.clone(),
        accepted: Condition::yes(REASON_ACCEPTED, format!("attached to Gateway {gateway_id}")),
        resolved_refs: unresolved.unwrap_or_else(|| {
            Condition::yes(REASON_RESOLVED_REFS, "every backend reference resolved")
        }),
        partially_invalid: (!dropped.is_empty()).then(|| {
            Condition::yes(
                REASON_UNSUPPORTED_VALUE,
                format!("Dropped Rule(s): {}", dropped.join("; ")),
            )
        }),
    }
}

/// A TLSRoute's or TCPRoute's backends, checked as an HTTPRoute's are.
struct Relayed {
    /// The valid backends with a weight; None: none, so nothing is relayed.
    destinations: Option<Vec<Destination>>,
    /// The first backend that did not resolve (the route's `ResolvedRefs=False`).
    unresolved: Option<Condition>,
}

/// Reads a TLSRoute or TCPRoute's rule. A backend that does not resolve gets no share (the
/// relay has no 500 to answer with; its connections would be closed either way); Err: the
/// spec cannot be applied (`Accepted=False`, `UnsupportedValue`).
fn relayed(cluster: &Cluster<'_>, r: &RouteSource<'_>) -> Result<Relayed, String> {
    let spec = l4route::Spec::parse(r.source.spec)?;
    let [rule] = spec.rules.as_slice() else {
        return Err(format!(
            "a {} needs exactly one rule; it has {}",
            r.kind.kind(),
            spec.rules.len()
        ));
    };
    if rule.backend_refs.len() > MAX_DESTINATIONS {
        return Err(format!("more than {MAX_DESTINATIONS} backendRefs"));
    }
    let route_ns = r.source.namespace;
    let mut unresolved = None;
    let mut out = Vec::new();
    for (i, b) in rule.backend_refs.iter().enumerate() {
        let weight = u32::try_from(b.weight.unwrap_or(1))
            .map_err(|_| format!("backendRefs[{i}].weight is negative"))?;
        if !b.filters.is_empty() {
            return Err(format!(
                "backendRefs[{i}].filters: a {} backend has none",
                r.kind.kind()
            ));
        }
        let namespace = b.namespace.as_deref().unwrap_or(route_ns);
        let host = format!(
            "{}.{namespace}.svc.{}",
            b.name, cluster.registry.cluster_domain
        );
        let from = Ref {
            group: GROUP,
            kind: r.kind.kind(),
            namespace: route_ns,
        };
        let to = Ref {
            group: "",
            kind: "Service",
            namespace,
        };
        let problem = if !b.is_service() {
            Some(Condition::no(
                super::gamma::REASON_INVALID_KIND,
                format!(
                    "backendRefs[{i}] is a {}/{}; weft relays to core Services only",
                    b.group.as_deref().unwrap_or(""),
                    b.kind.as_deref().unwrap_or("Service")
                ),
            ))
        } else if !cluster.grants.permits(from, to, &b.name) {
            Some(Condition::no(
                REASON_REF_NOT_PERMITTED,
                format!(
                    "backendRefs[{i}] is Service {namespace}/{}: no ReferenceGrant in {namespace} permits it",
                    b.name
                ),
            ))
        } else {
            let not_found =
                |m: String| Some(Condition::no(super::gamma::REASON_BACKEND_NOT_FOUND, m));
            match (cluster.registry.ports(&host), b.port) {
                (None, _) => not_found(format!(
                    "backendRefs[{i}]: Service {namespace}/{} does not exist",
                    b.name
                )),
                (Some(_), None) => {
                    not_found(format!("backendRefs[{i}]: a Service backend needs a port"))
                }
                (Some(ports), Some(p)) if !ports.iter().any(|x| i32::from(x.port) == p) => {
                    not_found(format!(
                        "backendRefs[{i}]: Service {namespace}/{} has no port {p}",
                        b.name
                    ))
                }
                _ => None,
            }
        };
        match problem {
            Some(c) => {
                unresolved.get_or_insert(c);
            }
            None if weight > 0 => out.push(Destination {
                service: host,
                port: b.port.and_then(|p| u16::try_from(p).ok()).unwrap_or(0),
                weight,
                ..Default::default()
            }),
            None => {}
        }
    }
    Ok(Relayed {
        destinations: (!out.is_empty()).then_some(out),
        unresolved,
    })
}

/// The proxy's listener table: one listener per port of a programmed Gateway listener. An
/// HTTP(S) port gets a virtual host per hostname and an HTTPS listener its certificate by
/// listener hostname; a TLS Terminate listener its certificate and its relayed routes; TLS
/// Passthrough and TCP listeners the port's relayed routes, Passthrough admitting the SNIs
/// of its listeners' hostnames. HTTPS and both TLS modes share a port, told apart by SNI.
fn config_of(id: &str, listeners: &[Read], mut tables: Tables) -> GatewayConfig {
    let ports: BTreeSet<u16> = listeners
        .iter()
        .filter(|l| l.status.programmed.status)
        .map(|l| l.port)
        .collect();
    let mut out = Vec::new();
    for port in ports {
        let on_port: Vec<&Read> = listeners
            .iter()
            .filter(|l| l.port == port && l.status.programmed.status)
            .collect();
        let mut sorted_routes = |key: (u16, Option<String>)| {
            let mut entries = tables.l4.remove(&key).unwrap_or_default();
            entries.sort_by_key(|e| e.0);
            entries.truncate(MAX_ROUTES);
            entries
                .into_iter()
                .map(|(_, r)| r)
                .collect::<Vec<L4Route>>()
        };
        // Listeners of one port share a protocol family (else they are conflicted, not
        // programmed).
        let passthrough: Vec<&&Read> = on_port
            .iter()
            .filter(|l| l.protocol == Protocol::TlsPassthrough)
            .collect();
        let l4 = if on_port.iter().any(|l| l.protocol == Protocol::Tcp) {
            Some(L4Listener {
                sni_hosts: Vec::new(),
                routes: L4Table {
                    tcp: sorted_routes((port, None)),
                    ..L4Table::default()
                },
            })
        } else if !passthrough.is_empty() {
            let mut sni_hosts: Vec<String> = passthrough
                .iter()
                .map(|l| l.hostname.clone().unwrap_or_else(|| "*".into()))
                .collect();
            sni_hosts.sort();
            sni_hosts.dedup();
            Some(L4Listener {
                sni_hosts,
                routes: L4Table {
                    tls: sorted_routes((port, None)),
                    ..L4Table::default()
                },
            })
        } else {
            None
        };
        let tls = on_port
            .iter()
            .filter_map(|l| {
                let c = l.credential.as_ref()?;
                let relay = (l.protocol == Protocol::TlsTerminate).then(|| L4Table {
                    tls: sorted_routes((port, Some(l.name.clone()))),
                    ..L4Table::default()
                });
                Some(ServedTls {
                    gateway: id.to_string(),
                    hosts: vec![l.hostname.clone().unwrap_or_else(|| "*".into())],
                    mutual: false,
                    cert_chain: c.cert_chain.clone(),
                    private_key: c.private_key.clone(),
                    client_ca: None,
                    relay,
                })
            })
            .collect();
        let http = &mut tables.http;
        let mut virtual_hosts = Vec::new();
        let keys: Vec<(u16, String)> = http
            .range((port, String::new())..)
            .take_while(|((p, _), _)| *p == port)
            .map(|(k, _)| k.clone())
            .collect();
        for key in keys.into_iter().take(MAX_VIRTUAL_HOSTS) {
            let Some(mut list) = http.remove(&key) else {
                continue;
            };
            list.sort_by(|a, b| a.0.cmp(&b.0));
            list.truncate(MAX_ROUTES);
            virtual_hosts.push(VirtualHost {
                domains: vec![key.1],
                routes: list.into_iter().map(|(_, r)| r).collect(),
                https_redirect: false,
            });
        }
        out.push(Listener {
            port,
            gateways: vec![id.to_string()],
            virtual_hosts,
            tls,
            l4,
            mesh_mtls: Vec::new(),
        });
    }
    GatewayConfig {
        listeners: out,
        ..GatewayConfig::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::compile::Source;
    use crate::route::gamma::REASON_BACKEND_NOT_FOUND;
    use serde_json::{Value, json};

    fn registry() -> Registry {
        let mut r = Registry::new("cluster.local");
        r.add("echo.apps.svc.cluster.local", 8080, true);
        r.add("grpc.apps.svc.cluster.local", 9000, true);
        r.add("tls-backend.apps.svc.cluster.local", 443, true);
        r.add("tls-backend-2.apps.svc.cluster.local", 443, true);
        r.add("tls-backend.backends.svc.cluster.local", 443, true);
        r.add("tcp-backend.apps.svc.cluster.local", 3000, true);
        r.add("tcp-backend-2.apps.svc.cluster.local", 3000, true);
        r
    }

    fn secret(ns: &str, name: &str) -> Result<Credential, String> {
        if ns == "apps" && name == "shop-cert" {
            Ok(Credential {
                cert_chain: "CERT".into(),
                private_key: "KEY".into(),
                ca: None,
            })
        } else {
            Err("Secret not found".into())
        }
    }

    fn labels(ns: &str) -> Option<BTreeMap<String, String>> {
        (ns == "team").then(|| BTreeMap::from([("shared-gateway".into(), "yes".into())]))
    }

    struct Fixture {
        gateway: Value,
        routes: Vec<(RouteKind, &'static str, &'static str, &'static str, Value)>,
        grants: ReferenceGrants,
    }

    impl Fixture {
        fn compile(&self) -> Compiled {
            let routes: Vec<RouteSource> = self
                .routes
                .iter()
                .map(|(kind, ns, name, created, spec)| RouteSource {
                    kind: *kind,
                    generation: Some(1),
                    uid: None,
                    source: Source {
                        namespace: ns,
                        name,
                        created,
                        spec,
                    },
                })
                .collect();
            let gw = GatewaySource {
                source: Source {
                    namespace: "apps",
                    name: "shop",
                    created: "2026-01-01T00:00:00Z",
                    spec: &self.gateway,
                },
                generation: Some(1),
            };
            let registry = registry();
            let cluster = Cluster {
                registry: &registry,
                secrets: &secret,
                namespaces: &labels,
                grants: &self.grants,
            };
            compile(&cluster, &gw, &routes)
        }
    }

    fn http_and_https() -> Value {
        json!({"gatewayClassName": "weft", "listeners": [
            {"name": "http", "port": 80, "protocol": "HTTP"},
            {"name": "https", "port": 443, "protocol": "HTTPS", "hostname": "shop.example.com",
             "tls": {"certificateRefs": [{"name": "shop-cert"}]}},
            {"name": "broken", "port": 8443, "protocol": "HTTPS",
             "tls": {"mode": "Terminate", "certificateRefs": [{"kind": "Secret", "name": "missing"}]}}]})
    }

    fn echo_route(hostnames: Value) -> Value {
        json!({"parentRefs": [{"name": "shop"}], "hostnames": hostnames,
               "rules": [{"backendRefs": [{"name": "echo", "port": 8080}]}]})
    }

    fn listener<'a>(c: &'a Compiled, name: &str) -> &'a ListenerStatus {
        c.listeners
            .iter()
            .find(|l| l.name == name)
            .expect("listener status")
    }

    #[test]
    fn an_http_route_becomes_a_virtual_host_on_every_listener_it_fits() {
        let f = Fixture {
            grants: ReferenceGrants::default(),
            gateway: http_and_https(),
            routes: vec![(
                RouteKind::Http,
                "apps",
                "shop",
                "2026-01-02T00:00:00Z",
                echo_route(json!(["shop.example.com"])),
            )],
        };
        let c = f.compile();
        assert_eq!(c.accepted.reason, REASON_ACCEPTED, "{:?}", c.accepted);
        assert!(c.accepted.status);
        let ports: Vec<u16> = c.config.listeners.iter().map(|l| l.port).collect();
        assert_eq!(
            ports,
            vec![80, 443],
            "the listener without its Secret is not bound"
        );
        for l in &c.config.listeners {
            let vh = l.virtual_host("shop.example.com:80").expect("routed host");
            assert_eq!(
                vh.routes[0].destinations[0].service,
                "echo.apps.svc.cluster.local"
            );
            assert!(
                l.virtual_host("other.example.com").is_none(),
                "another host is 404"
            );
        }
        let tls = &c.config.listener(443).expect("443").tls;
        assert_eq!(tls.len(), 1);
        assert_eq!(tls[0].hosts, vec!["shop.example.com".to_string()]);
        assert_eq!(tls[0].cert_chain, "CERT");
        assert_eq!(listener(&c, "http").attached_routes, 1);
        assert_eq!(listener(&c, "https").attached_routes, 1);
        let parent = &c.routes[0].parents[0];
        assert!(
            parent.accepted.status && parent.resolved_refs.status,
            "{parent:?}"
        );
    }

    #[test]
    fn a_missing_certificate_ref_fails_only_its_listener() {
        let c = Fixture {
            grants: ReferenceGrants::default(),
            gateway: http_and_https(),
            routes: vec![],
        }
        .compile();
        let broken = listener(&c, "broken");
        assert!(!broken.resolved_refs.status);
        assert_eq!(broken.resolved_refs.reason, REASON_INVALID_CERTIFICATE_REF);
        assert!(
            broken.resolved_refs.message.contains("apps/missing"),
            "{broken:?}"
        );
        assert!(!broken.programmed.status);
        assert!(broken.accepted.status);
        let http = listener(&c, "http");
        assert!(http.programmed.status && http.resolved_refs.status);
        assert_eq!(http.supported_kinds, vec!["HTTPRoute", "GRPCRoute"]);
    }

    #[test]
    fn a_secret_in_another_namespace_is_not_permitted() {
        let c = Fixture {
            grants: ReferenceGrants::default(),
            gateway: json!({"gatewayClassName": "weft", "listeners": [
                {"name": "https", "port": 443, "protocol": "HTTPS",
                 "tls": {"certificateRefs": [{"name": "shop-cert", "namespace": "other"}]}}]}),
            routes: vec![],
        }
        .compile();
        assert_eq!(
            listener(&c, "https").resolved_refs.reason,
            REASON_REF_NOT_PERMITTED
        );
        assert!(c.accepted.status, "an unresolved listener is still valid");
        assert!(c.config.listeners.is_empty());
    }

    #[test]
    fn section_name_port_namespaces_and_hostnames_decide_attachment() {
        let gateway = json!({"gatewayClassName": "weft", "listeners": [
            {"name": "http", "port": 80, "protocol": "HTTP", "hostname": "*.example.com"},
            {"name": "shared", "port": 8080, "protocol": "HTTP",
             "allowedRoutes": {"namespaces": {"from": "Selector",
                "selector": {"matchLabels": {"shared-gateway": "yes"}}}}}]});
        let f = Fixture {
            grants: ReferenceGrants::default(),
            gateway,
            routes: vec![
                // sectionName picks one listener.
                (
                    RouteKind::Http,
                    "apps",
                    "a",
                    "2026-01-02T00:00:00Z",
                    json!({"parentRefs": [{"name": "shop", "sectionName": "http"}],
                        "rules": [{"backendRefs": [{"name": "echo", "port": 8080}]}]}),
                ),
                // No listener named so.
                (
                    RouteKind::Http,
                    "apps",
                    "b",
                    "2026-01-03T00:00:00Z",
                    json!({"parentRefs": [{"name": "shop", "sectionName": "nope"}]}),
                ),
                // Another namespace: only the Selector listener lets it in.
                (
                    RouteKind::Http,
                    "team",
                    "c",
                    "2026-01-04T00:00:00Z",
                    json!({"parentRefs": [{"name": "shop", "namespace": "apps", "port": 80}]}),
                ),
                (
                    RouteKind::Http,
                    "team",
                    "d",
                    "2026-01-05T00:00:00Z",
                    json!({"parentRefs": [{"name": "shop", "namespace": "apps", "port": 8080}],
                        "rules": [{"backendRefs": [{"name": "nope", "port": 1}]}]}),
                ),
                // A hostname outside the listener's.
                (
                    RouteKind::Http,
                    "apps",
                    "e",
                    "2026-01-06T00:00:00Z",
                    json!({"parentRefs": [{"name": "shop", "sectionName": "http"}],
                        "hostnames": ["shop.other.org"]}),
                ),
                // Another Gateway: not this one's business.
                (
                    RouteKind::Http,
                    "apps",
                    "f",
                    "2026-01-07T00:00:00Z",
                    json!({"parentRefs": [{"name": "elsewhere"}]}),
                ),
            ],
        };
        let c = f.compile();
        let reason = |name: &str| {
            let r = c
                .routes
                .iter()
                .find(|r| r.name == name)
                .expect("route status");
            (r.parents[0].accepted.reason, r.parents[0].accepted.status)
        };
        assert_eq!(reason("a"), (REASON_ACCEPTED, true));
        assert_eq!(reason("b"), (REASON_NO_MATCHING_PARENT, false));
        assert_eq!(reason("c"), (REASON_NOT_ALLOWED_BY_LISTENERS, false));
        assert_eq!(reason("d"), (REASON_ACCEPTED, true));
        assert_eq!(reason("e"), (REASON_NO_MATCHING_LISTENER_HOSTNAME, false));
        assert!(!c.routes.iter().any(|r| r.name == "f"));
        let d = c.routes.iter().find(|r| r.name == "d").expect("d");
        assert_eq!(d.parents[0].resolved_refs.reason, REASON_BACKEND_NOT_FOUND);
        assert_eq!(listener(&c, "http").attached_routes, 1);
        assert_eq!(listener(&c, "shared").attached_routes, 1);
        let l80 = c.config.listener(80).expect("80");
        assert_eq!(l80.virtual_hosts.len(), 1);
        assert_eq!(
            l80.virtual_hosts[0].domains,
            vec!["*.example.com".to_string()]
        );
        assert!(l80.virtual_host("a.example.com").is_some());
        assert!(l80.virtual_host("example.com").is_none());
    }

    #[test]
    fn routes_on_one_host_merge_in_the_specs_precedence() {
        let f = Fixture {
            grants: ReferenceGrants::default(),
            gateway: json!({"gatewayClassName": "weft", "listeners": [
                {"name": "http", "port": 80, "protocol": "HTTP"}]}),
            routes: vec![
                (
                    RouteKind::Http,
                    "apps",
                    "old-prefix",
                    "2026-01-02T00:00:00Z",
                    json!({"parentRefs": [{"name": "shop"}],
                        "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                                   "backendRefs": [{"name": "echo", "port": 8080}]}]}),
                ),
                (
                    RouteKind::Http,
                    "apps",
                    "new-exact",
                    "2026-01-03T00:00:00Z",
                    json!({"parentRefs": [{"name": "shop"}],
                        "rules": [{"matches": [{"path": {"type": "Exact", "value": "/v2"}}],
                                   "backendRefs": [{"name": "echo", "port": 8080}]}]}),
                ),
                (
                    RouteKind::Grpc,
                    "apps",
                    "grpc",
                    "2026-01-04T00:00:00Z",
                    json!({"parentRefs": [{"name": "shop"}],
                        "rules": [{"backendRefs": [{"name": "grpc", "port": 9000}]}]}),
                ),
            ],
        };
        let c = f.compile();
        let vh = &c.config.listener(80).expect("80").virtual_hosts;
        assert_eq!(vh.len(), 1);
        assert_eq!(vh[0].domains, vec!["*".to_string()]);
        let names: Vec<&str> = vh[0].routes.iter().map(|r| r.name.as_str()).collect();
        // gRPC entries first (they only take gRPC), then the exact path, then the prefix.
        assert_eq!(names.first(), Some(&"apps/grpc"));
        let exact = names.iter().position(|n| *n == "apps/new-exact");
        let prefix = names.iter().position(|n| *n == "apps/old-prefix");
        assert!(exact < prefix, "{names:?}");
        assert_eq!(listener(&c, "http").attached_routes, 3);
    }

    #[test]
    fn unsupported_protocols_and_conflicts_are_listener_conditions() {
        let c = Fixture {
            grants: ReferenceGrants::default(),
            gateway: json!({"gatewayClassName": "weft", "listeners": [
                {"name": "udp", "port": 9000, "protocol": "UDP"},
                {"name": "a", "port": 80, "protocol": "HTTP", "hostname": "x.example.com"},
                {"name": "b", "port": 80, "protocol": "HTTP", "hostname": "x.example.com"},
                {"name": "c", "port": 80, "protocol": "HTTP"},
                {"name": "kinds", "port": 81, "protocol": "HTTP",
                 "allowedRoutes": {"kinds": [{"kind": "TCPRoute"}, {"kind": "HTTPRoute"}]}}]}),
            routes: vec![],
        }
        .compile();
        assert_eq!(
            listener(&c, "udp").accepted.reason,
            REASON_UNSUPPORTED_PROTOCOL
        );
        assert_eq!(
            listener(&c, "a").conflicted.reason,
            REASON_HOSTNAME_CONFLICT
        );
        assert!(listener(&c, "b").conflicted.status);
        assert!(!listener(&c, "c").conflicted.status && listener(&c, "c").programmed.status);
        let kinds = listener(&c, "kinds");
        assert_eq!(kinds.resolved_refs.reason, REASON_INVALID_ROUTE_KINDS);
        assert_eq!(kinds.supported_kinds, vec!["HTTPRoute"]);
        let ports: Vec<u16> = c.config.listeners.iter().map(|l| l.port).collect();
        assert_eq!(ports, vec![80, 81]);
    }

    #[test]
    fn listeners_claiming_one_port_conflict_and_take_no_routes_while_the_others_serve() {
        let c = Fixture {
            gateway: json!({"gatewayClassName": "weft", "listeners": [
                // One port, two protocols: both conflicted.
                {"name": "plain", "port": 8443, "protocol": "HTTP"},
                {"name": "tls", "port": 8443, "protocol": "HTTPS",
                 "tls": {"certificateRefs": [{"name": "shop-cert"}]}},
                // One port and host twice: both conflicted.
                {"name": "a", "port": 80, "protocol": "HTTP", "hostname": "shop.example.com"},
                {"name": "b", "port": 80, "protocol": "HTTP", "hostname": "SHOP.example.com"},
                // Another host on the same port is fine.
                {"name": "c", "port": 80, "protocol": "HTTP", "hostname": "api.example.com"}]}),
            routes: vec![(
                RouteKind::Http,
                "apps",
                "r",
                "2026-01-02T00:00:00Z",
                echo_route(json!([])),
            )],
            grants: ReferenceGrants::default(),
        }
        .compile();
        for name in ["plain", "tls"] {
            let l = listener(&c, name);
            assert!(l.conflicted.status, "{name}: {l:?}");
            assert_eq!(l.conflicted.reason, REASON_PROTOCOL_CONFLICT);
            assert!(!l.programmed.status);
            assert_eq!(l.attached_routes, 0, "a conflicted listener takes no route");
        }
        for name in ["a", "b"] {
            let l = listener(&c, name);
            assert_eq!(l.conflicted.reason, REASON_HOSTNAME_CONFLICT, "{name}");
            assert_eq!(l.attached_routes, 0);
        }
        let ok = listener(&c, "c");
        assert!(!ok.conflicted.status && ok.programmed.status);
        assert_eq!(ok.attached_routes, 1);
        assert!(c.accepted.status, "the Gateway serves its other listeners");
        let ports: Vec<u16> = c.config.listeners.iter().map(|l| l.port).collect();
        assert_eq!(ports, vec![80], "nothing is bound for the conflicted port");
        let l80 = c.config.listener(80).expect("80");
        assert!(l80.virtual_host("api.example.com").is_some());
        assert!(l80.virtual_host("shop.example.com").is_none());
        assert!(c.routes[0].parents[0].accepted.status);
    }

    #[test]
    fn reference_grants_let_a_gateway_use_a_secret_and_a_route_a_backend_of_another_namespace() {
        use crate::route::reference_grant::Grant;
        let mut registry = registry();
        registry.add("web.backends.svc.cluster.local", 8080, true);
        let gateway = json!({"gatewayClassName": "weft", "listeners": [
            {"name": "http", "port": 80, "protocol": "HTTP"},
            {"name": "https", "port": 443, "protocol": "HTTPS",
             "tls": {"certificateRefs": [{"name": "shop-cert", "namespace": "certs"}]}}]});
        let route = json!({"parentRefs": [{"name": "shop", "sectionName": "http"}], "rules": [
            {"matches": [{"path": {"type": "PathPrefix", "value": "/web"}}],
             "backendRefs": [{"name": "web", "namespace": "backends", "port": 8080}]}]});
        let secret = |ns: &str, name: &str| -> Result<Credential, String> {
            secret(if ns == "certs" { "apps" } else { ns }, name)
        };
        let gw = GatewaySource {
            source: Source {
                namespace: "apps",
                name: "shop",
                created: "2026-01-01T00:00:00Z",
                spec: &gateway,
            },
            generation: Some(1),
        };
        let routes = [RouteSource {
            kind: RouteKind::Http,
            generation: Some(1),
            uid: None,
            source: Source {
                namespace: "apps",
                name: "web",
                created: "2026-01-02T00:00:00Z",
                spec: &route,
            },
        }];
        let run = |grants: &ReferenceGrants| {
            let cluster = Cluster {
                registry: &registry,
                secrets: &secret,
                namespaces: &labels,
                grants,
            };
            compile(&cluster, &gw, &routes)
        };
        // No grant: the Secret is not permitted (the listener serves nothing) and the rule's
        // only backend is invalid: the proxy answers 500 itself.
        let c = run(&ReferenceGrants::default());
        assert_eq!(
            listener(&c, "https").resolved_refs.reason,
            REASON_REF_NOT_PERMITTED
        );
        let parent = &c.routes[0].parents[0];
        assert!(parent.accepted.status);
        assert_eq!(parent.resolved_refs.reason, REASON_REF_NOT_PERMITTED);
        let vh = c
            .config
            .listener(80)
            .expect("80")
            .virtual_host("any")
            .expect("*");
        assert!(vh.routes[0].destinations.is_empty());
        assert_eq!(
            vh.routes[0]
                .actions
                .direct_response
                .as_ref()
                .map(|d| d.status),
            Some(500)
        );
        // Grants in the target namespaces: both resolve.
        let gw_kind = (GROUP.to_string(), GATEWAY.to_string(), "apps".to_string());
        let route_kind = (
            GROUP.to_string(),
            "HTTPRoute".to_string(),
            "apps".to_string(),
        );
        let grants = ReferenceGrants(vec![
            Grant {
                namespace: "certs".into(),
                from: vec![gw_kind],
                to: vec![(String::new(), "Secret".into(), Some("shop-cert".into()))],
            },
            Grant {
                namespace: "backends".into(),
                from: vec![route_kind],
                to: vec![(String::new(), "Service".into(), None)],
            },
        ]);
        let c = run(&grants);
        let https = listener(&c, "https");
        assert!(
            https.resolved_refs.status && https.programmed.status,
            "{https:?}"
        );
        let parent = &c.routes[0].parents[0];
        assert!(parent.resolved_refs.status, "{parent:?}");
        let vh = c
            .config
            .listener(80)
            .expect("80")
            .virtual_host("any")
            .expect("*");
        assert_eq!(
            vh.routes[0].destinations[0].service,
            "web.backends.svc.cluster.local"
        );
        assert!(vh.routes[0].actions.direct_response.is_none());
        assert_eq!(c.config.listener(443).expect("443").tls.len(), 1);
    }
    fn tls_route(parent: Value, hostnames: Value, backend: Value) -> Value {
        json!({"parentRefs": [parent], "hostnames": hostnames,
               "rules": [{"backendRefs": [backend]}]})
    }

    /// Where the gateway proxy relays a connection to `port` whose ClientHello named `sni`:
    /// a port that reads SNI first passes only what [`Listener::tls_choice`] passes through.
    fn relayed_to(c: &Compiled, port: u16, sni: Option<&str>) -> Option<String> {
        let listener = c.config.listener(port)?;
        let l4 = listener.l4.as_ref()?;
        if listener.reads_sni_first()
            && listener.tls_choice(sni) != crate::route::gateway::TlsChoice::Passthrough
        {
            return None;
        }
        let dst: std::net::SocketAddr = ([198, 18, 0, 9], port).into();
        let (route, _) = crate::route::l4::choose(&l4.routes, dst, sni)?;
        Some(route.destinations[0].service.clone())
    }

    #[test]
    fn a_passthrough_listener_relays_tls_routes_by_the_most_specific_hostname() {
        // The conformance suite's TLSRouteHostnameIntersection, second Gateway: the older
        // route's "*.com" narrows to the listener's "*.example.com" and must not take the
        // exact name the newer route claims.
        let c = Fixture {
            grants: ReferenceGrants::default(),
            gateway: json!({"gatewayClassName": "weft", "listeners": [
                {"name": "tls", "port": 443, "protocol": "TLS", "hostname": "*.example.com",
                 "allowedRoutes": {"kinds": [{"kind": "TLSRoute"}]},
                 "tls": {"mode": "Passthrough"}}]}),
            routes: vec![
                (
                    RouteKind::Tls,
                    "apps",
                    "wide",
                    "2026-01-02T00:00:00Z",
                    tls_route(
                        json!({"name": "shop"}),
                        json!(["*.com"]),
                        json!({"name": "tls-backend-2", "port": 443}),
                    ),
                ),
                (
                    RouteKind::Tls,
                    "apps",
                    "exact",
                    "2026-01-03T00:00:00Z",
                    tls_route(
                        json!({"name": "shop", "sectionName": "tls"}),
                        json!(["abc.example.com"]),
                        json!({"name": "tls-backend", "port": 443}),
                    ),
                ),
                // No hostname in common with the listener.
                (
                    RouteKind::Tls,
                    "apps",
                    "elsewhere",
                    "2026-01-04T00:00:00Z",
                    tls_route(
                        json!({"name": "shop"}),
                        json!(["www.nomatch.com", "*.nomatch.com"]),
                        json!({"name": "tls-backend", "port": 443}),
                    ),
                ),
            ],
        }
        .compile();
        assert!(c.accepted.status, "{:?}", c.accepted);
        let l = listener(&c, "tls");
        assert_eq!(l.supported_kinds, vec!["TLSRoute"]);
        assert_eq!(l.attached_routes, 2);
        assert!(l.programmed.status && l.resolved_refs.status, "{l:?}");
        let listener443 = c.config.listener(443).expect("443 bound");
        assert!(listener443.virtual_hosts.is_empty() && listener443.tls.is_empty());
        let l4 = listener443.l4.as_ref().expect("relayed");
        assert_eq!(l4.sni_hosts, vec!["*.example.com".to_string()]);
        assert!(l4.routes.tcp.is_empty());
        crate::route::l4::validate("gateway.443", &l4.routes).expect("valid for the proxy");
        let svc = |n: &str| format!("{n}.apps.svc.cluster.local");
        assert_eq!(
            relayed_to(&c, 443, Some("abc.example.com")),
            Some(svc("tls-backend"))
        );
        assert_eq!(
            relayed_to(&c, 443, Some("other.example.com")),
            Some(svc("tls-backend-2"))
        );
        assert_eq!(relayed_to(&c, 443, Some("non.matching.com")), None);
        assert_eq!(relayed_to(&c, 443, None), None, "no SNI, no relay");
        let parent = |name: &str| {
            c.routes
                .iter()
                .find(|r| r.name == name)
                .map(|r| r.parents[0].clone())
                .expect("route status")
        };
        for name in ["wide", "exact"] {
            let p = parent(name);
            assert!(p.accepted.status && p.resolved_refs.status, "{name}: {p:?}");
        }
        assert_eq!(
            parent("elsewhere").accepted.reason,
            REASON_NO_MATCHING_LISTENER_HOSTNAME
        );
    }

    #[test]
    fn a_tcp_listener_relays_its_oldest_tcp_route_with_weights() {
        let c = Fixture {
            grants: ReferenceGrants::default(),
            gateway: json!({"gatewayClassName": "weft", "listeners": [
                {"name": "tcp", "port": 5432, "protocol": "TCP"},
                {"name": "http", "port": 80, "protocol": "HTTP"}]}),
            routes: vec![
                (
                    RouteKind::Tcp,
                    "apps",
                    "split",
                    "2026-01-02T00:00:00Z",
                    json!({"parentRefs": [{"name": "shop", "port": 5432}], "rules": [{"backendRefs": [
                        {"name": "tcp-backend", "port": 3000, "weight": 3},
                        {"name": "tcp-backend-2", "port": 3000, "weight": 1}]}]}),
                ),
                (
                    RouteKind::Tcp,
                    "apps",
                    "later",
                    "2026-01-03T00:00:00Z",
                    json!({"parentRefs": [{"name": "shop", "sectionName": "tcp"}],
                           "rules": [{"backendRefs": [{"name": "tcp-backend", "port": 3000}]}]}),
                ),
                // A TCPRoute on the HTTP listener, an HTTPRoute on the TCP one: not allowed.
                (
                    RouteKind::Tcp,
                    "apps",
                    "on-http",
                    "2026-01-04T00:00:00Z",
                    json!({"parentRefs": [{"name": "shop", "sectionName": "http"}],
                           "rules": [{"backendRefs": [{"name": "tcp-backend", "port": 3000}]}]}),
                ),
                (
                    RouteKind::Http,
                    "apps",
                    "http-on-tcp",
                    "2026-01-05T00:00:00Z",
                    json!({"parentRefs": [{"name": "shop", "sectionName": "tcp"}],
                           "rules": [{"backendRefs": [{"name": "echo", "port": 8080}]}]}),
                ),
            ],
        }
        .compile();
        let tcp = listener(&c, "tcp");
        assert_eq!(tcp.supported_kinds, vec!["TCPRoute"]);
        assert_eq!(tcp.attached_routes, 2);
        assert_eq!(listener(&c, "http").attached_routes, 0);
        let l4 = c
            .config
            .listener(5432)
            .and_then(|l| l.l4.as_ref())
            .expect("relayed");
        assert!(l4.sni_hosts.is_empty(), "a TCP port reads no SNI");
        assert!(!c.config.listener(5432).unwrap().reads_sni_first());
        let names: Vec<&str> = l4.routes.tcp.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, vec!["apps/split", "apps/later"], "oldest first");
        let weights: Vec<u32> = l4.routes.tcp[0]
            .destinations
            .iter()
            .map(|d| d.weight)
            .collect();
        assert_eq!(weights, vec![3, 1]);
        assert_eq!(l4.routes.tcp[0].destinations[0].port, 3000);
        for name in ["on-http", "http-on-tcp"] {
            let r = c.routes.iter().find(|r| r.name == name).expect(name);
            assert_eq!(
                r.parents[0].accepted.reason, REASON_NOT_ALLOWED_BY_LISTENERS,
                "{name}"
            );
            assert!(
                r.parents[0].resolved_refs.status,
                "unchecked refs stay True"
            );
        }
        assert!(
            c.config.listener(80).expect("80").l4.is_none(),
            "the HTTP port stays HTTP"
        );
    }

    #[test]
    fn tls_listener_modes_kinds_and_shared_ports_are_listener_conditions() {
        let c = Fixture {
            grants: ReferenceGrants::default(),
            gateway: json!({"gatewayClassName": "weft", "listeners": [
                {"name": "terminate", "port": 8443, "protocol": "TLS", "hostname": "t.example.com",
                 "tls": {"mode": "Terminate", "certificateRefs": [{"name": "shop-cert"}]}},
                {"name": "no-tls", "port": 8444, "protocol": "TLS"},
                {"name": "kinds", "port": 443, "protocol": "TLS",
                 "allowedRoutes": {"kinds": [{"kind": "TCPRoute"}, {"kind": "TLSRoute"}]},
                 "tls": {"mode": "Passthrough"}},
                {"name": "tcp", "port": 9000, "protocol": "TCP"},
                {"name": "http", "port": 9000, "protocol": "HTTP"}]}),
            routes: vec![],
        }
        .compile();
        let l = listener(&c, "no-tls");
        assert!(!l.accepted.status);
        assert_eq!(l.accepted.reason, REASON_UNSUPPORTED_VALUE);
        assert!(l.supported_kinds.is_empty(), "{l:?}");
        // Terminate (TLSRouteModeTerminate) is served: a certificate, then TLSRoutes.
        let t = listener(&c, "terminate");
        assert!(t.accepted.status && t.programmed.status, "{t:?}");
        assert_eq!(t.supported_kinds, vec!["TLSRoute"]);
        let kinds = listener(&c, "kinds");
        assert_eq!(kinds.resolved_refs.reason, REASON_INVALID_ROUTE_KINDS);
        assert!(!kinds.resolved_refs.status);
        assert_eq!(kinds.supported_kinds, vec!["TLSRoute"]);
        assert!(kinds.accepted.status);
        for name in ["tcp", "http"] {
            assert_eq!(
                listener(&c, name).conflicted.reason,
                REASON_PROTOCOL_CONFLICT,
                "{name}"
            );
        }
        let ports: Vec<u16> = c.config.listeners.iter().map(|l| l.port).collect();
        assert_eq!(ports, vec![443, 8443]);
        let served = &c.config.listener(8443).unwrap().tls;
        assert_eq!(served.len(), 1);
        assert_eq!(served[0].hosts, ["t.example.com"]);
        assert!(served[0].relay.as_ref().is_some_and(|r| r.tls.is_empty()));
    }

    /// TLSRouteModeMixed: an HTTPS listener, a Passthrough and a Terminate TLS listener on one
    /// port, told apart by the ClientHello's SNI. Each TLSRoute relays only for the listener
    /// it attached to; the Terminate one's routes run after the handshake.
    #[test]
    fn https_passthrough_and_terminate_listeners_share_a_port_by_sni() {
        use crate::route::gateway::TlsChoice;
        let c = Fixture {
            grants: ReferenceGrants::default(),
            gateway: json!({"gatewayClassName": "weft", "listeners": [
                {"name": "web", "port": 443, "protocol": "HTTPS", "hostname": "web.example.com",
                 "tls": {"certificateRefs": [{"name": "shop-cert"}]}},
                {"name": "pass", "port": 443, "protocol": "TLS", "hostname": "pass.example.com",
                 "tls": {"mode": "Passthrough"}},
                {"name": "term", "port": 443, "protocol": "TLS", "hostname": "*.term.example.com",
                 "tls": {"mode": "Terminate", "certificateRefs": [{"name": "shop-cert"}]}}]}),
            routes: vec![
                (
                    RouteKind::Tls,
                    "apps",
                    "pass",
                    "2026-01-02T00:00:00Z",
                    tls_route(
                        json!({"name": "shop", "sectionName": "pass"}),
                        json!(["pass.example.com"]),
                        json!({"name": "tls-backend", "port": 443}),
                    ),
                ),
                (
                    RouteKind::Tls,
                    "apps",
                    "term",
                    "2026-01-03T00:00:00Z",
                    tls_route(
                        json!({"name": "shop", "sectionName": "term"}),
                        json!(["a.term.example.com"]),
                        json!({"name": "tcp-backend", "port": 3000}),
                    ),
                ),
            ],
        }
        .compile();
        for name in ["web", "pass", "term"] {
            let l = listener(&c, name);
            assert!(
                l.accepted.status && l.programmed.status && !l.conflicted.status,
                "{name}: {l:?}"
            );
        }
        assert_eq!(listener(&c, "term").attached_routes, 1);
        let l = c.config.listener(443).expect("443 bound");
        let pass = l.l4.as_ref().expect("the Passthrough listener's routes");
        assert_eq!(pass.sni_hosts, ["pass.example.com"]);
        assert_eq!(
            pass.routes.tls.len(),
            1,
            "only the Passthrough listener's route"
        );
        assert_eq!(
            l.tls_choice(Some("pass.example.com")),
            TlsChoice::Passthrough
        );
        let TlsChoice::Terminate(web) = l.tls_choice(Some("web.example.com")) else {
            panic!("web.example.com is terminated");
        };
        assert!(web.relay.is_none(), "HTTPS: HTTP after the handshake");
        let TlsChoice::Terminate(term) = l.tls_choice(Some("a.term.example.com")) else {
            panic!("a.term.example.com is terminated");
        };
        let relay = term.relay.as_ref().expect("Terminate relays");
        let dst: std::net::SocketAddr = ([198, 18, 0, 9], 443).into();
        let (route, _) =
            crate::route::l4::choose(relay, dst, Some("a.term.example.com")).expect("routed");
        assert_eq!(
            route.destinations[0].service,
            "tcp-backend.apps.svc.cluster.local"
        );
        // A name of the wildcard listener no route has: terminated, then no route (NR).
        assert!(crate::route::l4::choose(relay, dst, Some("b.term.example.com")).is_none());
        assert_eq!(l.tls_choice(Some("other.example.com")), TlsChoice::Refuse);
        assert_eq!(l.tls_choice(None), TlsChoice::Refuse);
    }

    #[test]
    fn relayed_backends_that_do_not_resolve_are_named_and_get_no_connection() {
        use crate::route::gamma::{REASON_BACKEND_NOT_FOUND, REASON_INVALID_KIND};
        use crate::route::reference_grant::Grant;
        let gateway = json!({"gatewayClassName": "weft", "listeners": [
            {"name": "tls", "port": 443, "protocol": "TLS", "tls": {"mode": "Passthrough"}}]});
        let routes = |grants: ReferenceGrants| Fixture {
            grants,
            gateway: gateway.clone(),
            routes: vec![
                (
                    RouteKind::Tls,
                    "apps",
                    "missing",
                    "2026-01-02T00:00:00Z",
                    tls_route(
                        json!({"name": "shop"}),
                        json!(["missing.example.com"]),
                        json!({"name": "nonexistent", "port": 443}),
                    ),
                ),
                (
                    RouteKind::Tls,
                    "apps",
                    "kind",
                    "2026-01-03T00:00:00Z",
                    tls_route(
                        json!({"name": "shop"}),
                        json!(["kind.example.com"]),
                        json!({"group": "unknownkind.example.com", "kind": "NonExistent",
                               "name": "tls-backend", "port": 443}),
                    ),
                ),
                (
                    RouteKind::Tls,
                    "apps",
                    "cross",
                    "2026-01-04T00:00:00Z",
                    tls_route(
                        json!({"name": "shop"}),
                        json!(["cross.example.com"]),
                        json!({"name": "tls-backend", "namespace": "backends", "port": 443}),
                    ),
                ),
            ],
        };
        let c = routes(ReferenceGrants::default()).compile();
        let resolved = |c: &Compiled, name: &str| {
            let p = &c
                .routes
                .iter()
                .find(|r| r.name == name)
                .expect(name)
                .parents[0];
            assert!(p.accepted.status, "{name}: accepted with a bad backend");
            p.resolved_refs.reason
        };
        assert_eq!(resolved(&c, "missing"), REASON_BACKEND_NOT_FOUND);
        assert_eq!(resolved(&c, "kind"), REASON_INVALID_KIND);
        assert_eq!(resolved(&c, "cross"), REASON_REF_NOT_PERMITTED);
        assert_eq!(listener(&c, "tls").attached_routes, 3);
        for sni in [
            "missing.example.com",
            "kind.example.com",
            "cross.example.com",
        ] {
            assert_eq!(relayed_to(&c, 443, Some(sni)), None, "{sni} is closed");
        }
        // A grant for TLSRoutes of apps opens the cross-namespace backend.
        let c = routes(ReferenceGrants(vec![Grant {
            namespace: "backends".into(),
            from: vec![(GROUP.into(), "TLSRoute".into(), "apps".into())],
            to: vec![(String::new(), "Service".into(), Some("tls-backend".into()))],
        }]))
        .compile();
        assert_eq!(resolved(&c, "cross"), REASON_RESOLVED_REFS);
        assert_eq!(
            relayed_to(&c, 443, Some("cross.example.com")),
            Some("tls-backend.backends.svc.cluster.local".into())
        );
    }
}
