//! Istio's `networking.istio.io/v1` Gateway, read strictly, and the listener table of one
//! gateway proxy compiled from the Gateways that select it and the VirtualServices bound to
//! them (`gateways:`); plus the pure per-request choice the proxy makes on that table (which
//! virtual host a `Host` header names). Kube-free: the control plane, the proxy and the CLI
//! share it.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::compile::{Problem, Registry, Source, SubsetLabels, by_age};
use super::istio::{Refusal, gateway_l4_routes, gateway_routes, read_virtual_service};
use super::l4::L4Table;
use super::model::HttpRoute;
use crate::snapshot::{Protocol, Service};

pub const GATEWAY: &str = "Gateway";

/// Listeners per gateway proxy, and virtual hosts per listener, accepted at most: a bound
/// on what one snapshot carries, far above any real gateway.
pub const MAX_LISTENERS: usize = 64;
pub const MAX_VIRTUAL_HOSTS: usize = 1024;

/// Ports the gateway proxy itself uses (admin, capture, stats, health, Envoy's stats port
/// Istio reserves): a Gateway server may not take them.
pub const RESERVED_PORTS: [u16; 6] = [15000, 15001, 15006, 15020, 15021, 15090];

// === The Gateway resource ===

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatewaySpec {
    #[serde(default)]
    pub selector: BTreeMap<String, String>,
    #[serde(default)]
    pub servers: Vec<ServerSpec>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServerSpec {
    pub port: PortSpec,
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default)]
    pub tls: Option<ServerTlsSpec>,
    #[serde(default)]
    pub bind: Option<Value>,
    #[serde(default)]
    pub default_endpoint: Option<Value>,
    #[serde(default)]
    pub name: Option<String>,
}

/// Istio's `ServerTLSSettings`: the fields weft serves, and the others kept to be named.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServerTlsSpec {
    #[serde(default)]
    pub https_redirect: Option<bool>,
    #[serde(default)]
    pub mode: Option<String>,
    #[serde(default)]
    pub credential_name: Option<String>,
    #[serde(default)]
    pub credential_names: Option<Value>,
    #[serde(default)]
    pub tls_certificates: Option<Value>,
    #[serde(default)]
    pub server_certificate: Option<Value>,
    #[serde(default)]
    pub private_key: Option<Value>,
    #[serde(default)]
    pub ca_certificates: Option<Value>,
    #[serde(default)]
    pub ca_crl: Option<Value>,
    #[serde(default)]
    pub subject_alt_names: Option<Value>,
    #[serde(default)]
    pub verify_certificate_spki: Option<Value>,
    #[serde(default)]
    pub verify_certificate_hash: Option<Value>,
    #[serde(default)]
    pub min_protocol_version: Option<Value>,
    #[serde(default)]
    pub max_protocol_version: Option<Value>,
    #[serde(default)]
    pub cipher_suites: Option<Value>,
}

impl ServerTlsSpec {
    fn unsupported(&self) -> Vec<&'static str> {
        [
            ("credentialNames", self.credential_names.is_some()),
            ("tlsCertificates", self.tls_certificates.is_some()),
            ("serverCertificate", self.server_certificate.is_some()),
            ("privateKey", self.private_key.is_some()),
            ("caCertificates", self.ca_certificates.is_some()),
            ("caCrl", self.ca_crl.is_some()),
            ("subjectAltNames", self.subject_alt_names.is_some()),
            (
                "verifyCertificateSpki",
                self.verify_certificate_spki.is_some(),
            ),
            (
                "verifyCertificateHash",
                self.verify_certificate_hash.is_some(),
            ),
            ("minProtocolVersion", self.min_protocol_version.is_some()),
            ("maxProtocolVersion", self.max_protocol_version.is_some()),
            ("cipherSuites", self.cipher_suites.is_some()),
        ]
        .iter()
        .filter(|(_, set)| *set)
        .map(|(f, _)| *f)
        .collect()
    }
}

/// A `credentialName` Secret's content (a `kubernetes.io/tls` Secret in the gateway pods'
/// namespace, as Istio requires): the certificate chain, its key, and for MUTUAL the CA that
/// client certificates must chain to (`ca.crt`).
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    pub cert_chain: String,
    pub private_key: String,
    pub ca: Option<String>,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("private_key", &"(redacted)")
            .finish_non_exhaustive()
    }
}

/// Looks up a `credentialName` in the gateway pods' namespace: the Secret, or why not.
pub type Credentials<'a> = &'a dyn Fn(&str) -> Result<Credential, String>;

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortSpec {
    pub number: i64,
    #[serde(default)]
    pub name: Option<String>,
    pub protocol: String,
    #[serde(default)]
    pub target_port: Option<Value>,
}

/// Whether a Gateway's `selector` picks a pod with these labels. An empty selector picks
/// every gateway pod, as Istio's does.
pub fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// A Gateway's selector, if its spec can be read (an unreadable one selects nothing; its
/// problem is reported by [`compile`]).
pub fn selector_of(spec: &Value) -> Option<BTreeMap<String, String>> {
    serde_json::from_value::<GatewaySpec>(spec.clone())
        .ok()
        .map(|s| s.selector)
}

// === The listener table (in the snapshot) ===

/// What a gateway proxy serves: one listener per port.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewayConfig {
    #[serde(default)]
    pub listeners: Vec<Listener>,
    /// The ServiceEntry hosts this gateway's routes send requests to (an egress gateway), as
    /// Services whose endpoints are the entry's STATIC endpoints: the proxy routes to them as
    /// to any Service ([`crate::snapshot::SnapshotIndex`] adds them to its table). Only in
    /// a gateway's snapshot, so no sidecar learns a direct route to the external host.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub external: Vec<Service>,
    /// The `resolution: DNS` ones among `external` (sent without endpoints): the names the
    /// gateway proxy resolves, as Envoy's STRICT_DNS cluster does, to fill their endpoints in.
    /// An older proxy ignores the field and answers 503 (no endpoints) for them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resolve: Vec<DnsDestination>,
}

/// A ServiceEntry host with `resolution: DNS` an egress gateway sends to: the Service
/// (`host`, `port`) of [`GatewayConfig::external`] whose endpoints are the addresses `name`
/// resolves to, each on `target_port`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DnsDestination {
    pub host: String,
    pub port: u16,
    /// The name resolved: the entry's host (Istio's DNS entry without endpoints), else one of
    /// its endpoints' addresses (an IP stands for itself); the destinations of one host and
    /// port together are its endpoints.
    pub name: String,
    /// The port dialled on each address: the entry port's `targetPort`, else its number.
    pub target_port: u16,
}

/// One port the gateway binds, and the virtual hosts its requests are routed by.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Listener {
    pub port: u16,
    /// The Gateway servers that opened it (`<namespace>/<name>`), for the CLI.
    #[serde(default)]
    pub gateways: Vec<String>,
    #[serde(default)]
    pub virtual_hosts: Vec<VirtualHost>,
    /// Non-empty: the port terminates TLS (HTTPS servers), then serves HTTP.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tls: Vec<ServedTls>,
    /// A TLS PASSTHROUGH or TCP port: connections are relayed by the VirtualServices' `tls`
    /// or `tcp` routes, never terminated; `virtual_hosts` and `tls` are then empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub l4: Option<L4Listener>,
    /// Non-empty: an `ISTIO_MUTUAL` port. Mesh mTLS is terminated with the gateway's own
    /// workload certificate (a client certificate of the mesh required, as a sidecar's
    /// inbound requires it), then HTTP is served for these hosts (the servers' hosts).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mesh_mtls: Vec<String>,
}

/// How a relayed (L4) gateway port picks where a connection goes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct L4Listener {
    /// PASSTHROUGH: the server names (the servers' hosts) a client's SNI must fit, else the
    /// connection is closed; empty on a TCP port, where SNI is not read.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sni_hosts: Vec<String>,
    /// The bound VirtualServices' `tls` routes (PASSTHROUGH) or `tcp` routes (TCP), oldest
    /// VirtualService first, first match wins ([`super::l4::choose`]).
    pub routes: L4Table,
}

/// The routes of requests whose host is one of `domains` (exact names, `*.suffix`, or `*`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VirtualHost {
    pub domains: Vec<String>,
    pub routes: Vec<HttpRoute>,
    /// The server asks for `tls.httpsRedirect`: every request gets a 301 to `https://`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub https_redirect: bool,
}

/// One HTTPS server's certificate on a TLS listener, chosen by the client's SNI among
/// `hosts` ([`Listener::tls_choice`]).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServedTls {
    /// `<namespace>/<name>` of the Gateway, and the server's hosts (namespace part dropped).
    pub gateway: String,
    pub hosts: Vec<String>,
    /// MUTUAL: a client certificate chaining to `client_ca` is required.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub mutual: bool,
    /// PEM, from the `credentialName` Secret (`tls.crt`, `tls.key`, `ca.crt`).
    pub cert_chain: String,
    pub private_key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ca: Option<String>,
    /// Set: once TLS is terminated the connection is relayed by these routes, never served
    /// as HTTP (Istio: protocol `TLS` with mode SIMPLE or MUTUAL, routed by its
    /// VirtualServices' `tcp` routes; the Gateway API: a `TLS` listener in mode `Terminate`,
    /// routed by its TLSRoutes). An older proxy ignores the field and would serve HTTP on
    /// such a port, which no TCP client completes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay: Option<L4Table>,
}

impl std::fmt::Debug for ServedTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServedTls")
            .field("gateway", &self.gateway)
            .field("hosts", &self.hosts)
            .field("mutual", &self.mutual)
            .field("relay", &self.relay)
            .field("private_key", &"(redacted)")
            .finish_non_exhaustive()
    }
}

impl ServedTls {
    /// The same with the private key blanked, for config dumps.
    pub fn redacted(&self) -> ServedTls {
        ServedTls {
            private_key: "(redacted)".into(),
            ..self.clone()
        }
    }
}

impl GatewayConfig {
    pub fn listener(&self, port: u16) -> Option<&Listener> {
        self.listeners.iter().find(|l| l.port == port)
    }
}

/// How well `host` (lowercase) fits `pattern`: exact beats the longest `*.` suffix beats `*`;
/// None: it does not.
fn fit(pattern: &str, host: &str) -> Option<usize> {
    if pattern.eq_ignore_ascii_case(host) {
        Some(usize::MAX)
    } else if pattern == "*" {
        Some(0)
    } else if let Some(suffix) = pattern.strip_prefix('*') {
        // `*.example.com` matches `a.example.com`, never `example.com` itself.
        let fits = host.len() > suffix.len()
            && host
                .get(host.len() - suffix.len()..)
                .is_some_and(|t| t.eq_ignore_ascii_case(suffix));
        fits.then_some(suffix.len())
    } else {
        None
    }
}

/// What a TLS port does with a connection, by the server name its ClientHello carries
/// ([`Listener::tls_choice`]).
#[derive(Debug, PartialEq, Eq)]
pub enum TlsChoice<'a> {
    /// A PASSTHROUGH server's name fits best: relay the bytes as they come.
    Passthrough,
    /// A terminating server's name fits best: its certificate, then HTTP or its relay routes.
    Terminate(&'a ServedTls),
    /// No server of the port has the name: the connection is closed.
    Refuse,
}

impl Listener {
    /// The terminating server whose certificate a client's SNI picks, with its fit: the best
    /// fit of the servers' hosts; without SNI, a server for `*`. None: no terminating server
    /// has the name (Envoy's filter chains match on server names the same way).
    fn best_served(&self, sni: Option<&str>) -> Option<(usize, &ServedTls)> {
        let host = sni.map(|s| s.trim_end_matches('.').to_ascii_lowercase());
        match host.as_deref() {
            Some(h) => self
                .tls
                .iter()
                .flat_map(|t| t.hosts.iter().filter_map(move |p| Some((fit(p, h)?, t))))
                .max_by_key(|(rank, _)| *rank),
            None => self
                .tls
                .iter()
                .find(|t| t.hosts.iter().any(|h| h == "*"))
                .map(|t| (0, t)),
        }
    }

    /// Whether connections to this port must show their ClientHello before anything else is
    /// decided: a port with PASSTHROUGH servers (its routes and, beside terminating servers,
    /// the choice between them go by SNI).
    pub fn reads_sni_first(&self) -> bool {
        self.l4.as_ref().is_some_and(|l4| !l4.sni_hosts.is_empty())
    }

    /// Where a TLS connection whose ClientHello named `sni` goes on a port that mixes
    /// PASSTHROUGH and terminating servers (or has one kind only): the server whose host
    /// fits the name best, as Envoy picks a filter chain by server name (exact, then the
    /// longest `*.` suffix, then `*`). Two servers never claim one host on a port
    /// ([`compile`] serves the older one), so there is no tie to break.
    pub fn tls_choice(&self, sni: Option<&str>) -> TlsChoice<'_> {
        let passthrough = self.l4.as_ref().and_then(|l4| {
            let host = sni?.trim_end_matches('.').to_ascii_lowercase();
            l4.sni_hosts.iter().filter_map(|p| fit(p, &host)).max()
        });
        match (passthrough, self.best_served(sni)) {
            (Some(p), Some((t, served))) if t > p => TlsChoice::Terminate(served),
            (Some(_), _) => TlsChoice::Passthrough,
            (None, Some((_, served))) => TlsChoice::Terminate(served),
            (None, None) => TlsChoice::Refuse,
        }
    }

    /// The virtual host of a request on a connection whose TLS handshake picked the server
    /// with `server_hosts`: only that server's hosts are routed on it (a MUTUAL server's
    /// routes are never reached through another server's handshake), as Istio gives each
    /// server its own route table.
    pub fn virtual_host_within(
        &self,
        server_hosts: &[String],
        authority: &str,
    ) -> Option<&VirtualHost> {
        let host = host_of(authority);
        if !server_hosts.iter().any(|p| fit(p, &host).is_some()) {
            return None;
        }
        self.virtual_host(authority)
    }

    /// The virtual host of a request's `Host` (its port and a trailing dot ignored, case
    /// folded): an exact domain first, then the longest `*.` suffix, then `*`, as Envoy picks.
    pub fn virtual_host(&self, authority: &str) -> Option<&VirtualHost> {
        let host = host_of(authority);
        let mut best: Option<(usize, &VirtualHost)> = None;
        for vh in &self.virtual_hosts {
            for rank in vh.domains.iter().filter_map(|d| fit(d, &host)) {
                if best.is_none_or(|(r, _)| rank > r) {
                    best = Some((rank, vh));
                }
            }
        }
        best.map(|(_, vh)| vh)
    }
}

/// `authority` without its port and trailing dot, lowercased.
fn host_of(authority: &str) -> String {
    host_without_port(authority).to_ascii_lowercase()
}

/// `authority` without its port and a trailing dot (`shop.example.com.:443` is
/// `shop.example.com`; an IPv6 literal keeps its brackets): the host a gateway routes by,
/// and so the host its AuthorizationPolicies' `hosts` judge (proxy and `weft authz explain`).
pub fn host_without_port(authority: &str) -> &str {
    let host = if authority.starts_with('[') {
        // An IPv6 literal keeps its brackets.
        authority
            .find(']')
            .map_or(authority, |end| &authority[..=end])
    } else {
        authority
            .rsplit_once(':')
            .filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit()))
            .map_or(authority, |(h, _)| h)
    };
    host.trim_end_matches('.')
}

// === ServiceEntry hosts as route hosts and destinations (egress gateways) ===

/// The exact hosts of the accepted ServiceEntries with who sees them: Istio's egress-gateway
/// pattern names them as a VirtualService's `hosts` (the sidecars' route to the egress gateway)
/// and as a route destination (the gateway's route out). Several entries may declare one host:
/// each keeps its own `exportTo`, and a gateway takes what its namespace sees as
/// [`super::se_merge`] picks and merges it (as a sidecar's egress table does); what cannot
/// merge is named in [`Self::problems`], never dropped silently.
#[derive(Debug, Default)]
pub struct ExternalHosts {
    /// Per host, one entry per ServiceEntry declaring it, oldest first.
    hosts: BTreeMap<String, Vec<HostEntry>>,
    problems: Vec<Problem>,
}

/// One ServiceEntry's declaration of a host.
#[derive(Debug, Clone)]
struct HostEntry {
    export: super::egress::Export,
    selector: Option<BTreeMap<String, String>>,
    service: super::egress::ExternalService,
    /// Port number -> `targetPort` (else the number): where a DNS host is dialled.
    target_ports: BTreeMap<u16, u16>,
}

impl HostEntry {
    fn declaration(&self) -> super::se_merge::Declaration<'_> {
        super::se_merge::Declaration {
            export: &self.export,
            selector: self.selector.as_ref(),
            service: &self.service,
        }
    }
}

impl ExternalHosts {
    /// From compiled entries in age order (oldest first); wildcard hosts are left out (they
    /// cannot be a destination, and a VirtualService host pattern matches exact hosts), but
    /// their merge conflicts are named too.
    pub fn new(entries: impl IntoIterator<Item = super::egress::CompiledEntry>) -> Self {
        let all: Vec<HostEntry> = entries
            .into_iter()
            .flat_map(|entry| {
                entry.services.into_iter().map(move |service| HostEntry {
                    export: entry.export.clone(),
                    selector: entry.selector.clone(),
                    target_ports: entry.target_ports.clone(),
                    service,
                })
            })
            .collect();
        let decls: Vec<_> = all.iter().map(HostEntry::declaration).collect();
        let mut out = ExternalHosts::default();
        for (i, message) in super::se_merge::conflicts(&decls) {
            let source = &all[i].service.source;
            let (ns, name) = source.split_once('/').unwrap_or(("", source));
            let p = Problem {
                kind: super::egress::SERVICE_ENTRY,
                namespace: ns.to_string(),
                name: name.to_string(),
                message,
            };
            if !out.problems.contains(&p) {
                out.problems.push(p);
            }
        }
        for e in all.into_iter().filter(|e| !e.service.host.starts_with('*')) {
            out.hosts.entry(e.service.host.clone()).or_default().push(e);
        }
        out
    }

    /// What could not be merged, on the newer ServiceEntry.
    pub fn problems(&self) -> &[Problem] {
        &self.problems
    }

    /// The declaration of `host` a proxy of `namespace` uses, its namespace's entries merged
    /// ([`super::se_merge::pick`]): its own namespace's, else one exported to it.
    fn seen_from(&self, host: &str, namespace: &str) -> Option<HostEntry> {
        let list = self.hosts.get(host)?;
        let decls: Vec<_> = list.iter().map(HostEntry::declaration).collect();
        let picked = super::se_merge::pick(&decls, namespace)
            .into_iter()
            .next()?;
        let service = super::se_merge::merge(&decls, &picked)?;
        let mut target_ports = BTreeMap::new();
        for e in picked.iter().filter_map(|&i| list.get(i)) {
            for p in &e.service.ports {
                if let Some(t) = e.target_ports.get(&p.number) {
                    target_ports.entry(p.number).or_insert(*t);
                }
            }
        }
        let first = list.get(*picked.first()?)?;
        Some(HostEntry {
            export: first.export.clone(),
            selector: first.selector.clone(),
            service,
            target_ports,
        })
    }

    /// Adds each host's ports to the registry, so VirtualServices may name them; a host that
    /// is a Service already keeps the Service's ports.
    pub fn register(&self, registry: &mut Registry) {
        let known: BTreeSet<String> = registry.hosts().map(str::to_string).collect();
        for (host, list) in &self.hosts {
            if known.contains(host) {
                continue;
            }
            for p in list.iter().flat_map(|e| &e.service.ports) {
                registry.add(
                    host,
                    p.number,
                    p.protocol == super::egress::PortProtocol::Http,
                );
            }
        }
    }

    /// The sidecars' side: each ServiceEntry host port a mesh VirtualService routes (`http`,
    /// `tls`, `tcp`, compiled on the registry [`Self::register`] filled) becomes an
    /// address-less Service holding those routes, which the proxy applies to a request it
    /// matched to the host by its `Host`, or a connection it matched by address or SNI
    /// (`proxy::egress`). Only routes whose every destination is a Service (the egress
    /// gateway) are applied: a route back to the external host itself is named in `problems`
    /// and not applied (the host stays as its ServiceEntry says). `is_service`: whether a
    /// host is a Kubernetes Service.
    pub fn mesh_services(
        &self,
        http: &BTreeMap<(String, u16), Vec<HttpRoute>>,
        l4: &BTreeMap<(String, u16), L4Table>,
        is_service: &dyn Fn(&str) -> bool,
        problems: &mut Vec<Problem>,
    ) -> Vec<Service> {
        let mut note = |vs: &str, message: String| {
            let (namespace, name) = vs.split_once('/').unwrap_or(("", vs));
            let p = Problem {
                kind: super::istio::VIRTUAL_SERVICE,
                namespace: namespace.to_string(),
                name: name.to_string(),
                message,
            };
            if !problems.contains(&p) {
                problems.push(p);
            }
        };
        let mut out = Vec::new();
        for ((host, port), routes) in http {
            if !self.hosts.contains_key(host) || is_service(host) {
                continue;
            }
            let outside: Vec<&HttpRoute> = routes
                .iter()
                .filter(|r| {
                    r.destinations.iter().any(|d| !is_service(&d.service))
                        || r.actions
                            .mirrors
                            .iter()
                            .any(|m| !is_service(&m.destination.service))
                })
                .collect();
            if let Some(r) = outside.first() {
                note(
                    &r.name,
                    format!(
                        "routes for ServiceEntry host {host} port {port} are applied by sidecars only when every destination is a mesh Service (an egress gateway); a destination outside the mesh (the host itself) is not supported yet, so this host's requests go as its ServiceEntry says"
                    ),
                );
                continue;
            }
            out.push(Service {
                http: routes.clone(),
                ..Service::bare(host.clone(), *port, Protocol::Http)
            });
        }
        for ((host, port), table) in l4 {
            if !self.hosts.contains_key(host) || is_service(host) || table.is_empty() {
                continue;
            }
            let outside = table
                .tls
                .iter()
                .chain(&table.tcp)
                .find(|r| r.destinations.iter().any(|d| !is_service(&d.service)));
            if let Some(r) = outside {
                note(
                    &r.name,
                    format!(
                        "tls/tcp routes for ServiceEntry host {host} port {port} are applied by sidecars only when every destination is a mesh Service (an egress gateway); a destination outside the mesh (the host itself) is not supported yet, so this host's connections go as its ServiceEntry says"
                    ),
                );
                continue;
            }
            match out.iter_mut().find(|s| s.name == *host && s.port == *port) {
                Some(s) => s.l4 = table.clone(),
                None => out.push(Service {
                    l4: table.clone(),
                    ..Service::bare(host.clone(), *port, Protocol::Tcp)
                }),
            }
        }
        out
    }

    /// The gateway's side: every ServiceEntry host a route of `config` sends to (on the port
    /// it names) becomes one of `config.external`, if an entry of the host is exported to the
    /// gateway's `namespace` ([`Self::seen_from`]): STATIC with the entry's endpoints; DNS
    /// with none, and the name to resolve in `config.resolve` (the proxy resolves it as
    /// Envoy's STRICT_DNS cluster does and fills the endpoints in, `proxy::external_dns`). A
    /// host the gateway cannot reach (NONE, no endpoints, not exported there) is named in
    /// `problems` on the VirtualService; its requests get 503 (NR / UH) as for a missing
    /// Service.
    pub fn fill_gateway(
        &self,
        namespace: &str,
        config: &mut GatewayConfig,
        problems: &mut Vec<Problem>,
    ) {
        use super::egress::Resolution;
        let mut wanted: BTreeMap<(String, u16), String> = BTreeMap::new();
        for l in &config.listeners {
            for r in l.virtual_hosts.iter().flat_map(|v| &v.routes) {
                for d in &r.destinations {
                    wanted
                        .entry((d.service.clone(), d.port))
                        .or_insert(r.name.clone());
                }
            }
            for r in
                l.l4.iter()
                    .flat_map(|l4| l4.routes.tls.iter().chain(&l4.routes.tcp))
            {
                for d in &r.destinations {
                    wanted
                        .entry((d.service.clone(), d.port))
                        .or_insert(r.name.clone());
                }
            }
        }
        for ((host, port), vs) in wanted {
            let Some(list) = self.hosts.get(&host) else {
                continue;
            };
            let entry = self.seen_from(&host, namespace);
            let entry = entry.as_ref();
            let declared = entry.and_then(|e| e.service.ports.iter().find(|p| p.number == port));
            let why = match (entry, declared) {
                (None, _) => Some(format!(
                    "no ServiceEntry of host {host} ({}) is exported to the gateway's namespace {namespace}",
                    list.iter()
                        .map(|e| e.service.source.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )),
                (Some(e), _) if e.service.resolution == Resolution::None => Some(format!(
                    "a gateway cannot send to ServiceEntry host {host} with resolution NONE (its entry {}): it would go where the gateway dialled, which is the gateway itself; use DNS or STATIC",
                    e.service.source
                )),
                (Some(e), None) => Some(format!(
                    "ServiceEntry {} declares no port {port} for host {host}",
                    e.service.source
                )),
                (Some(e), Some(p))
                    if e.service.resolution == Resolution::Static && p.endpoints.is_empty() =>
                {
                    Some(format!(
                        "ServiceEntry {} declares no endpoints for host {host} port {port}",
                        e.service.source
                    ))
                }
                _ => None,
            };
            if let Some(why) = why {
                let (ns, name) = vs.split_once('/').unwrap_or(("", &vs));
                let p = Problem {
                    kind: super::istio::VIRTUAL_SERVICE,
                    namespace: ns.to_string(),
                    name: name.to_string(),
                    message: format!("{why}; requests the gateway routes there get 503"),
                };
                if !problems.contains(&p) {
                    problems.push(p);
                }
                continue;
            }
            let (Some(entry), Some(declared)) = (entry, declared) else {
                continue;
            };
            if entry.service.resolution == Resolution::Dns && declared.dns_endpoints.is_empty() {
                config.resolve.push(DnsDestination {
                    host: host.clone(),
                    port,
                    name: host.clone(),
                    target_port: entry.target_ports.get(&port).copied().unwrap_or(port),
                });
            }
            // With endpoints, they are resolved instead of the host (an IP one stands for itself).
            if entry.service.resolution == Resolution::Dns {
                config
                    .resolve
                    .extend(declared.dns_endpoints.iter().map(|ep| DnsDestination {
                        host: host.clone(),
                        port,
                        name: ep.address.clone(),
                        target_port: ep.port,
                    }));
            }
            config.external.push(Service {
                endpoints: declared.endpoints.clone(),
                ..Service::bare(host.clone(), port, Protocol::Http)
            });
        }
    }

    /// The exact hosts declared.
    pub fn hosts(&self) -> impl Iterator<Item = &str> {
        self.hosts.keys().map(String::as_str)
    }
}

// === Compiling ===

/// A Gateway server's host: `[namespace/]dnsName`; the namespace (`*` any, `.` the Gateway's
/// own) limits which VirtualServices may bind to it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ServerHost {
    namespace: Option<String>,
    name: String,
}

fn server_host(gateway_ns: &str, raw: &str) -> Result<ServerHost, String> {
    let (ns, name) = match raw.split_once('/') {
        Some((ns, name)) => (Some(ns), name),
        None => (None, raw),
    };
    if name.is_empty() || name.contains('/') || !name.is_ascii() {
        return Err(format!(
            "host {raw:?} is not [namespace/]dnsName (ASCII; an internationalized name in its xn-- form)"
        ));
    }
    if name != "*"
        && (name[1..].contains('*') || (name.starts_with('*') && !name.starts_with("*.")))
    {
        return Err(format!(
            "host {raw:?}: a wildcard is allowed only as the leftmost label (*.example.com) or alone (*)"
        ));
    }
    let namespace = match ns {
        None | Some("*") => None,
        Some(".") => Some(gateway_ns.to_string()),
        Some(ns) => Some(ns.to_string()),
    };
    Ok(ServerHost {
        namespace,
        name: name.to_ascii_lowercase(),
    })
}

/// Whether two host patterns (names, `*.suffix`, `*`) have a name in common, and the more
/// specific of the two (Istio's virtual host for a VirtualService host on a server host).
fn intersect(a: &str, b: &str) -> Option<String> {
    let covers = |wide: &str, narrow: &str| -> bool {
        wide == "*"
            || wide == narrow
            || wide
                .strip_prefix('*')
                .is_some_and(|suffix| narrow.len() > suffix.len() && narrow.ends_with(suffix))
    };
    if covers(a, b) {
        Some(b.to_string())
    } else if covers(b, a) {
        Some(a.to_string())
    } else {
        None
    }
}

/// How a server's port is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// HTTP, HTTP2 and GRPC: plaintext HTTP (both versions on one port, as Envoy's gateway
    /// listeners are).
    Http,
    /// HTTPS: TLS terminated with the server's credential, then HTTP.
    Https,
    /// TLS with `tls.mode: PASSTHROUGH`: relayed by SNI (the `tls` routes), not terminated.
    Passthrough,
    /// TCP (and the protocols Istio treats as TCP): relayed by the `tcp` routes.
    Tcp,
    /// HTTPS with `tls.mode: ISTIO_MUTUAL`: mesh mTLS terminated with the gateway's own
    /// identity, then HTTP (an egress gateway's port for sidecars).
    MeshMtls,
    /// TLS with `tls.mode: SIMPLE` or `MUTUAL`: TLS terminated with the server's credential,
    /// then the bytes relayed by the `tcp` routes (Istio's TLS-terminated TCP).
    TlsTerminated,
}

/// What may share a port: servers of one kind. HTTPS, PASSTHROUGH and terminated TLS servers
/// all start with a ClientHello, so one port takes all three, told apart by SNI
/// ([`Listener::tls_choice`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PortKind {
    Http,
    Tls,
    Tcp,
    MeshMtls,
}

impl PortKind {
    fn name(self) -> &'static str {
        match self {
            PortKind::Http => "plaintext HTTP",
            PortKind::Tls => "TLS (HTTPS, PASSTHROUGH, SIMPLE or MUTUAL)",
            PortKind::Tcp => "TCP",
            PortKind::MeshMtls => "HTTPS with ISTIO_MUTUAL",
        }
    }
}

impl Framing {
    fn name(self) -> &'static str {
        match self {
            Framing::Http => "plaintext HTTP",
            Framing::Https => "HTTPS",
            Framing::Passthrough => "TLS PASSTHROUGH",
            Framing::Tcp => "TCP",
            Framing::MeshMtls => "HTTPS with ISTIO_MUTUAL",
            Framing::TlsTerminated => "TLS (SIMPLE or MUTUAL)",
        }
    }

    /// Its connections are relayed as bytes (by `tls` or `tcp` routes), not served as HTTP.
    fn relayed(self) -> bool {
        matches!(
            self,
            Framing::Passthrough | Framing::Tcp | Framing::TlsTerminated
        )
    }

    fn port_kind(self) -> PortKind {
        match self {
            Framing::Http => PortKind::Http,
            Framing::Https | Framing::Passthrough | Framing::TlsTerminated => PortKind::Tls,
            Framing::Tcp => PortKind::Tcp,
            Framing::MeshMtls => PortKind::MeshMtls,
        }
    }
}

/// Istio's protocols a gateway server may name, and how weft serves each. TLS is decided by
/// its mode ([`read_servers`]).
fn framing(protocol: &str) -> Result<Framing, String> {
    match protocol.to_ascii_uppercase().as_str() {
        "HTTP" | "HTTP2" | "GRPC" => Ok(Framing::Http),
        "HTTPS" => Ok(Framing::Https),
        "TLS" => Ok(Framing::Passthrough),
        // Istio serves these as TCP on a gateway.
        "TCP" | "MONGO" | "REDIS" | "MYSQL" => Ok(Framing::Tcp),
        other => Err(format!("protocol {other:?} is not one of Istio's")),
    }
}

/// One server of a selected Gateway, read.
struct Server {
    gateway: String,
    port: u16,
    hosts: Vec<ServerHost>,
    framing: Framing,
    https_redirect: bool,
    /// HTTPS: the certificate and mode (None while credentials are not looked up).
    tls: Option<(bool, Credential)>,
}

/// The TLS of an HTTPS server: (mutual, credential), or why it cannot be served.
fn server_tls(
    at: &str,
    tls: Option<&ServerTlsSpec>,
    credentials: Option<Credentials<'_>>,
) -> Result<Option<(bool, Credential)>, String> {
    let Some(tls) = tls else {
        return Err(format!(
            "{at}.tls is required for protocol HTTPS (mode SIMPLE or MUTUAL with credentialName)"
        ));
    };
    let mutual = match tls.mode.as_deref().unwrap_or("SIMPLE") {
        "SIMPLE" => false,
        "MUTUAL" => true,
        m @ ("AUTO_PASSTHROUGH" | "OPTIONAL_MUTUAL") => {
            return Err(format!(
                "{at}.tls.mode {m} is not supported yet (SIMPLE, MUTUAL, ISTIO_MUTUAL and PASSTHROUGH are)"
            ));
        }
        m => return Err(format!("{at}.tls.mode {m:?} is not one of Istio's")),
    };
    let Some(name) = tls.credential_name.as_deref().filter(|n| !n.is_empty()) else {
        return Err(format!(
            "{at}.tls.credentialName is required (weft reads certificates from Secrets only)"
        ));
    };
    let Some(lookup) = credentials else {
        return Ok(None);
    };
    let credential = lookup(name).map_err(|e| format!("{at}.tls.credentialName {name}: {e}"))?;
    if mutual && credential.ca.is_none() {
        return Err(format!(
            "{at}.tls.credentialName {name}: mode MUTUAL needs the client CA in the Secret's ca.crt"
        ));
    }
    Ok(Some((mutual, credential)))
}

fn read_servers(
    src: &Source<'_>,
    credentials: Option<Credentials<'_>>,
    problems: &mut Vec<Problem>,
) -> Vec<Server> {
    let spec: GatewaySpec = match serde_json::from_value(src.spec.clone()) {
        Ok(s) => s,
        Err(e) => {
            problems.push(Problem::new(
                GATEWAY,
                src,
                format!("spec: {e}; the Gateway is not applied"),
            ));
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    let mut notes = Vec::new();
    for (i, server) in spec.servers.iter().enumerate() {
        let at = format!("servers[{i}]");
        let mut unsupported: Vec<String> = [
            ("bind", server.bind.is_some()),
            ("defaultEndpoint", server.default_endpoint.is_some()),
            ("port.targetPort", server.port.target_port.is_some()),
        ]
        .iter()
        .filter(|(_, set)| *set)
        .map(|(f, _)| format!("{at}.{f}"))
        .collect();
        if let Some(tls) = &server.tls {
            unsupported.extend(tls.unsupported().iter().map(|f| format!("{at}.tls.{f}")));
        }
        if !unsupported.is_empty() {
            notes.push(format!(
                "{} {} not supported yet; this server is not served",
                unsupported.join(", "),
                if unsupported.len() == 1 { "is" } else { "are" }
            ));
            continue;
        }
        let Some(port) = u16::try_from(server.port.number).ok().filter(|p| *p != 0) else {
            notes.push(format!(
                "{at}.port.number {} is not a port; this server is not served",
                server.port.number
            ));
            continue;
        };
        if RESERVED_PORTS.contains(&port) {
            notes.push(format!(
                "{at}.port.number {port} is one of the proxy's own ports ({}); this server is not served",
                RESERVED_PORTS.map(|p| p.to_string()).join(", ")
            ));
            continue;
        }
        // Istio: an HTTPS server in PASSTHROUGH mode is a passthrough server (its
        // "ingress gateway without TLS termination" task writes it so).
        let passthrough = server
            .tls
            .as_ref()
            .is_some_and(|t| t.mode.as_deref() == Some("PASSTHROUGH"));
        let mesh_mtls = server
            .tls
            .as_ref()
            .is_some_and(|t| t.mode.as_deref() == Some("ISTIO_MUTUAL"));
        let terminated = server
            .tls
            .as_ref()
            .is_some_and(|t| matches!(t.mode.as_deref(), Some("SIMPLE" | "MUTUAL")));
        let framing = match framing(&server.port.protocol) {
            Ok(Framing::Https) if passthrough => Framing::Passthrough,
            Ok(Framing::Https) if mesh_mtls => Framing::MeshMtls,
            Ok(Framing::Passthrough) if terminated => Framing::TlsTerminated,
            Ok(f) => f,
            Err(e) => {
                notes.push(format!("{at}.port.{e}; this server is not served"));
                continue;
            }
        };
        // Only a plaintext server redirects (on an HTTPS one the client is there already).
        let https_redirect = framing == Framing::Http
            && server
                .tls
                .as_ref()
                .and_then(|t| t.https_redirect)
                .unwrap_or(false);
        let tls = match framing {
            // An HTTPS server that cannot be served still makes its port a TLS port: a
            // plaintext server never takes it over when a Secret goes missing.
            Framing::Https | Framing::TlsTerminated => {
                match server_tls(&at, server.tls.as_ref(), credentials) {
                    Ok(tls) => tls,
                    Err(e) => {
                        notes.push(format!("{e}; this server is not served"));
                        None
                    }
                }
            }
            Framing::Passthrough => {
                let tls = server.tls.as_ref();
                let credential = tls.is_some_and(|t| t.credential_name.is_some());
                match tls.and_then(|t| t.mode.as_deref()) {
                    Some("PASSTHROUGH") if !credential => None,
                    Some("PASSTHROUGH") => {
                        notes.push(format!(
                            "{at}.tls.credentialName does not apply to PASSTHROUGH (the backend holds the certificate); this server is not served"
                        ));
                        continue;
                    }
                    Some(m @ ("AUTO_PASSTHROUGH" | "ISTIO_MUTUAL" | "OPTIONAL_MUTUAL")) => {
                        notes.push(format!(
                            "{at}.tls.mode {m} is not supported yet on protocol TLS (PASSTHROUGH, SIMPLE and MUTUAL are); this server is not served"
                        ));
                        continue;
                    }
                    Some(m) => {
                        notes.push(format!(
                            "{at}.tls.mode {m:?} is not one of Istio's; this server is not served"
                        ));
                        continue;
                    }
                    None => {
                        notes.push(format!(
                            "{at}.tls.mode is required for protocol TLS (PASSTHROUGH, or SIMPLE / MUTUAL to terminate); this server is not served"
                        ));
                        continue;
                    }
                }
            }
            // Istio: ISTIO_MUTUAL takes the proxy's own certificate, never a Secret.
            Framing::MeshMtls => {
                if server
                    .tls
                    .as_ref()
                    .is_some_and(|t| t.credential_name.is_some())
                {
                    notes.push(format!(
                        "{at}.tls.credentialName must be empty with mode ISTIO_MUTUAL (the gateway's own mesh certificate is used, as in Istio); this server is not served"
                    ));
                    continue;
                }
                None
            }
            Framing::Tcp => {
                if server.tls.is_some() {
                    notes.push(format!(
                        "{at}.tls applies to HTTPS and TLS servers; protocol {} relays bytes as they come; this server is not served",
                        server.port.protocol
                    ));
                    continue;
                }
                None
            }
            Framing::Http => {
                // On a plaintext server only httpsRedirect means something.
                let extra = server
                    .tls
                    .as_ref()
                    .is_some_and(|t| t.mode.is_some() || t.credential_name.is_some());
                if extra {
                    notes.push(format!(
                        "{at}.tls.mode and credentialName apply to HTTPS servers; protocol {} serves plaintext (only tls.httpsRedirect applies); this server is not served",
                        server.port.protocol
                    ));
                    continue;
                }
                None
            }
        };
        if server.hosts.is_empty() {
            notes.push(format!(
                "{at}.hosts is empty (Istio requires at least one); this server is not served"
            ));
            continue;
        }
        let hosts: Result<Vec<ServerHost>, String> = server
            .hosts
            .iter()
            .map(|h| server_host(src.namespace, h))
            .collect();
        match hosts {
            Ok(hosts) => out.push(Server {
                gateway: src.id(),
                port,
                hosts,
                framing,
                https_redirect,
                tls,
            }),
            Err(e) => notes.push(format!("{at}.hosts: {e}; this server is not served")),
        }
    }
    if !notes.is_empty() {
        problems.push(Problem::new(GATEWAY, src, notes.join(". ")));
    }
    out
}

/// A passthrough server takes only the names it lists: each `tls` route match keeps the
/// part of its `sniHosts` that falls within `server`'s hosts open to `vs_namespace` (as
/// Istio builds a filter chain per server), a match left with none is dropped, and so is a
/// route left without matches. So a VirtualService bound to one server never captures the
/// names another server on the same port admits.
fn within_server(routes: &mut Vec<super::l4::L4Route>, server: &Server, vs_namespace: &str) {
    let names: Vec<&str> = server
        .hosts
        .iter()
        .filter(|h| h.namespace.as_deref().is_none_or(|ns| ns == vs_namespace))
        .map(|h| h.name.as_str())
        .collect();
    for route in routes.iter_mut() {
        for m in route.matches.iter_mut() {
            let mut kept: Vec<String> = m
                .sni_hosts
                .iter()
                .flat_map(|sni| names.iter().filter_map(|n| intersect(n, sni)))
                .collect();
            kept.sort();
            kept.dedup();
            m.sni_hosts = kept;
        }
        route.matches.retain(|m| !m.sni_hosts.is_empty());
    }
    routes.retain(|r| !r.matches.is_empty());
}

/// Whether a VirtualService of `vs_namespace` with `hosts` binds to `server`: a host of it
/// intersects a server host open to that namespace.
fn binds(server: &Server, vs_namespace: &str, hosts: &[String]) -> bool {
    hosts.iter().any(|h| {
        server.hosts.iter().any(|sh| {
            sh.namespace.as_deref().is_none_or(|ns| ns == vs_namespace)
                && intersect(&sh.name, &h.to_ascii_lowercase()).is_some()
        })
    })
}

/// Where a VirtualService's routes are laid: `mesh` (the sidecars) or a Gateway
/// (`<namespace>/<name>`).
pub const MESH: &str = "mesh";

/// A `match[].gateways` entry as a context name: `mesh`, `namespace/name`, or a name of the
/// VirtualService's own namespace.
fn gateway_name(vs_namespace: &str, g: &str) -> String {
    if g == MESH || g.contains('/') {
        g.to_string()
    } else {
        format!("{vs_namespace}/{g}")
    }
}

/// The `match[].gateways` of one match, read: None when absent.
fn match_gateways(at: &str, raw: Option<&Value>) -> Result<Option<Vec<String>>, String> {
    let Some(raw) = raw else { return Ok(None) };
    let list: Vec<String> = serde_json::from_value(raw.clone())
        .map_err(|_| format!("{at}.gateways must be a list of gateway names"))?;
    if list.is_empty() {
        // Istio: an empty list is as if the field were absent.
        return Ok(None);
    }
    Ok(Some(list))
}

/// A VirtualService's routes for one context (Istio's `match[].gateways`): a match that names
/// gateways holds only in those (overriding the top-level `gateways`), a match that names
/// none holds wherever the VirtualService is bound; a route whose every match names other
/// contexts is left out. The kept matches lose their `gateways`, so the compilers (which
/// refuse the field) see plain matches. Err: a `gateways` that is not a list of names.
pub fn routes_for(
    spec: &super::istio::VirtualServiceSpec,
    vs_namespace: &str,
    context: &str,
) -> Result<super::istio::VirtualServiceSpec, String> {
    let mut out = spec.clone();
    let holds = |at: &str, raw: Option<&Value>| -> Result<bool, String> {
        Ok(match match_gateways(at, raw)? {
            None => true,
            Some(list) => list
                .iter()
                .any(|g| gateway_name(vs_namespace, g) == context),
        })
    };
    let mut http = Vec::new();
    for (i, route) in spec.http.iter().enumerate() {
        let mut kept = Vec::new();
        for (j, m) in route.matches.iter().enumerate() {
            if holds(&format!("http[{i}].match[{j}]"), m.gateways.as_ref())? {
                let mut m = m.clone();
                m.gateways = None;
                kept.push(m);
            }
        }
        if route.matches.is_empty() || !kept.is_empty() {
            let mut route = route.clone();
            route.matches = kept;
            http.push(route);
        }
    }
    out.http = http;
    for (field, routes, from) in [
        ("tls", &mut out.tls, &spec.tls),
        ("tcp", &mut out.tcp, &spec.tcp),
    ] {
        routes.clear();
        for (i, route) in from.iter().enumerate() {
            let mut kept = Vec::new();
            for (j, m) in route.matches.iter().enumerate() {
                if holds(&format!("{field}[{i}].match[{j}]"), m.gateways.as_ref())? {
                    let mut m = m.clone();
                    m.gateways = None;
                    kept.push(m);
                }
            }
            if route.matches.is_empty() || !kept.is_empty() {
                let mut route = route.clone();
                route.matches = kept;
                routes.push(route);
            }
        }
    }
    Ok(out)
}

/// The gateway pods a table is compiled for: their namespace and labels, which a match's
/// `sourceLabels` and `sourceNamespace` are held against (Istio's `sourceMatchHTTP` takes
/// the proxy's own labels and namespace, a gateway's included).
#[derive(Debug, Clone, Copy)]
pub struct Workload<'a> {
    pub namespace: &'a str,
    pub labels: &'a BTreeMap<String, String>,
}

impl Workload<'_> {
    fn holds(&self, labels: &BTreeMap<String, String>, namespace: &Option<String>) -> bool {
        super::source::selects(labels, self.labels)
            && namespace.as_deref().is_none_or(|n| n == self.namespace)
    }
}

/// `spec` as the gateway pods of `workload` take it: matches whose `sourceLabels` /
/// `sourceNamespace` do not hold of them left out (and a route with none left), the others
/// kept without the condition, which holds.
/// Err: a `sourceNamespace` that is not a namespace name, named as the sidecars' compiler
/// names it.
fn for_workload(
    mut spec: super::istio::VirtualServiceSpec,
    workload: Workload<'_>,
) -> Result<super::istio::VirtualServiceSpec, String> {
    keep_held(&mut spec.http, "http", workload, |r| &mut r.matches)?;
    keep_held(&mut spec.tls, "tls", workload, |r| &mut r.matches)?;
    keep_held(&mut spec.tcp, "tcp", workload, |r| &mut r.matches)?;
    Ok(spec)
}

/// A VirtualService match with a client condition (`http`, or `tls`/`tcp`).
trait SourceCondition {
    fn condition(&mut self) -> (&mut BTreeMap<String, String>, &mut Option<String>);
}

impl SourceCondition for super::istio::MatchSpec {
    fn condition(&mut self) -> (&mut BTreeMap<String, String>, &mut Option<String>) {
        (&mut self.source_labels, &mut self.source_namespace)
    }
}

impl SourceCondition for super::istio::L4MatchSpec {
    fn condition(&mut self) -> (&mut BTreeMap<String, String>, &mut Option<String>) {
        (&mut self.source_labels, &mut self.source_namespace)
    }
}

/// [`for_workload`] on one list of routes.
fn keep_held<R, M: SourceCondition>(
    routes: &mut Vec<R>,
    field: &str,
    workload: Workload<'_>,
    matches: impl Fn(&mut R) -> &mut Vec<M>,
) -> Result<(), String> {
    for (i, route) in routes.iter_mut().enumerate() {
        for (j, m) in matches(route).iter_mut().enumerate() {
            let at = format!("{field}[{i}].match[{j}]");
            super::istio::source_namespace(&at, m.condition().1.as_deref())?;
        }
    }
    routes.retain_mut(|route| {
        let list = matches(route);
        let had = !list.is_empty();
        list.retain_mut(|m| {
            let (labels, namespace) = m.condition();
            let held = workload.holds(labels, namespace);
            labels.clear();
            *namespace = None;
            held
        });
        !had || !list.is_empty()
    });
    Ok(())
}

/// The ports on which the Gateways selecting a pod with `labels` serve `ISTIO_MUTUAL`: the
/// pod's endpoints there want mesh mTLS (auto-mTLS), where its other ports are plaintext.
/// Decided as [`compile`] decides a port (the oldest server's protocol wins).
pub fn mesh_mtls_ports(
    gateways: &[Source<'_>],
    labels: &BTreeMap<String, String>,
) -> BTreeSet<u16> {
    let selecting: Vec<Source<'_>> = gateways
        .iter()
        .filter(|g| selector_of(g.spec).is_some_and(|s| selects(&s, labels)))
        .copied()
        .collect();
    if selecting.is_empty() {
        return BTreeSet::new();
    }
    let mut ignored = Vec::new();
    let config = compile(
        &super::compile::Registry::new("cluster.local"),
        &BTreeMap::new(),
        &selecting,
        &[],
        None,
        &mut ignored,
    );
    config
        .listeners
        .iter()
        .filter(|l| !l.mesh_mtls.is_empty())
        .map(|l| l.port)
        .collect()
}

/// The `<namespace>/<name>` of each Gateway a VirtualService binds to (`mesh` left out).
fn bound_gateways(vs_namespace: &str, gateways: &[String]) -> Vec<String> {
    gateways
        .iter()
        .filter(|g| *g != "mesh")
        .map(|g| match g.split_once('/') {
            Some(_) => g.clone(),
            None => format!("{vs_namespace}/{g}"),
        })
        .collect()
}

/// The listener table of one gateway proxy: `gateways` are the Gateways that select it,
/// `virtual_services` every VirtualService the pods see, in the caller's order (Istio's for a
/// gateway: private to the pods' namespace, exported to it, public; oldest first in each;
/// those bound to one of these Gateways are used), `subsets` the DestinationRule subsets by host. Problems name what is not served.
pub fn compile(
    registry: &Registry,
    subsets: &BTreeMap<String, SubsetLabels>,
    gateways: &[Source<'_>],
    virtual_services: &[Source<'_>],
    credentials: Option<Credentials<'_>>,
    problems: &mut Vec<Problem>,
) -> GatewayConfig {
    compile_for(
        registry,
        subsets,
        gateways,
        virtual_services,
        credentials,
        None,
        problems,
    )
}

/// [`compile`] for the gateway pods of `workload`: a match's `sourceLabels` and
/// `sourceNamespace` are held against them ([`for_workload`]). Without a workload, a
/// VirtualService with such a match is refused by name.
pub fn compile_for(
    registry: &Registry,
    subsets: &BTreeMap<String, SubsetLabels>,
    gateways: &[Source<'_>],
    virtual_services: &[Source<'_>],
    credentials: Option<Credentials<'_>>,
    workload: Option<Workload<'_>>,
    problems: &mut Vec<Problem>,
) -> GatewayConfig {
    let read: Vec<Server> = by_age(gateways)
        .into_iter()
        .flat_map(|g| read_servers(g, credentials, problems))
        .collect();
    // A port is of one kind (plaintext HTTP, TLS, TCP, ISTIO_MUTUAL): the oldest server on
    // it decides; a later one of another kind is not served, and says so. On a TLS port the
    // SNI picks the server, so a later server that claims a host an older one of another
    // framing has (PASSTHROUGH against terminating) is not served either.
    let mut kinds: BTreeMap<u16, (PortKind, String)> = BTreeMap::new();
    let mut servers: Vec<Server> = Vec::new();
    for s in read {
        let (kind, first) = kinds
            .entry(s.port)
            .or_insert((s.framing.port_kind(), s.gateway.clone()))
            .clone();
        let clash = servers
            .iter()
            .filter(|o| o.port == s.port && o.framing != s.framing)
            .find_map(|o| {
                let host = o
                    .hosts
                    .iter()
                    .find(|h| s.hosts.iter().any(|n| n.name.eq_ignore_ascii_case(&h.name)))?;
                Some((o, host.name.clone()))
            });
        let message = if kind != s.framing.port_kind() {
            format!(
                "port {} is already served as {} by Gateway {first} (older); a server of another protocol cannot share it and is not served",
                s.port,
                kind.name(),
            )
        } else if let Some((o, host)) = clash {
            format!(
                "port {}: Gateway {} (older) serves host {host} as {}; a {} server cannot share the host (the SNI could not tell them apart) and is not served",
                s.port,
                o.gateway,
                o.framing.name(),
                s.framing.name(),
            )
        } else {
            servers.push(s);
            continue;
        };
        let (namespace, name) = s.gateway.split_once('/').unwrap_or(("", &s.gateway));
        let p = Problem {
            kind: GATEWAY,
            namespace: namespace.to_string(),
            name: name.to_string(),
            message,
        };
        if !problems.contains(&p) {
            problems.push(p);
        }
    }
    let selected: BTreeSet<&str> = servers.iter().map(|s| s.gateway.as_str()).collect();
    // Relayed ports (PASSTHROUGH, TCP): port -> SNI names and routes. Terminated TLS servers
    // relay by routes of their own (`relay`, by index into `servers`).
    let mut l4_ports: BTreeMap<u16, L4Listener> = BTreeMap::new();
    for s in servers
        .iter()
        .filter(|s| matches!(s.framing, Framing::Passthrough | Framing::Tcp))
    {
        let l = l4_ports.entry(s.port).or_default();
        if s.framing == Framing::Passthrough {
            l.sni_hosts.extend(s.hosts.iter().map(|h| h.name.clone()));
        }
    }
    let mut relay: BTreeMap<usize, L4Table> = BTreeMap::new();
    // Port -> domain -> (routes, httpsRedirect).
    let mut ports: BTreeMap<u16, BTreeMap<String, (Vec<HttpRoute>, bool)>> = BTreeMap::new();
    let mut opened: BTreeMap<u16, BTreeSet<String>> = BTreeMap::new();
    for s in &servers {
        opened.entry(s.port).or_default().insert(s.gateway.clone());
        if s.https_redirect {
            // Istio redirects every host of such a server, routed or not.
            let table = ports.entry(s.port).or_default();
            for h in &s.hosts {
                table.entry(h.name.clone()).or_default().1 = true;
            }
        }
    }
    for vs in virtual_services {
        let Ok(spec) = read_virtual_service(vs) else {
            // Unreadable: the mesh compiler reports it once.
            continue;
        };
        let bound = bound_gateways(vs.namespace, &spec.gateways);
        if !bound.iter().any(|g| selected.contains(g.as_str())) {
            continue;
        }
        // What this VirtualService lays, applied only once all of it compiled: a
        // VirtualService refused on one server lays nothing on any (Istio refuses a resource
        // whole, too).
        let mut http_adds: Vec<(u16, String, Vec<HttpRoute>, bool)> = Vec::new();
        // (port, server index for a terminated TLS server, tls routes?, routes)
        let mut l4_adds: Vec<(u16, Option<usize>, bool, Vec<super::l4::L4Route>)> = Vec::new();
        let mut notes = Vec::new();
        let mut refused = false;
        for (index, server) in servers
            .iter()
            .enumerate()
            .filter(|(_, s)| bound.contains(&s.gateway))
        {
            // Only the routes whose `match.gateways` (if any) name this Gateway.
            // Then, at a known workload, the matches whose client conditions hold of it.
            let held =
                routes_for(&spec, vs.namespace, &server.gateway).and_then(|s| match workload {
                    Some(w) => for_workload(s, w),
                    None => Ok(s),
                });
            let spec = match held {
                Ok(s) => s,
                Err(m) => {
                    notes.push(format!("{m}; the VirtualService is not applied"));
                    refused = true;
                    break;
                }
            };
            if server.framing.relayed() {
                let tls = server.framing == Framing::Passthrough;
                if (tls && spec.tls.is_empty()) || (!tls && spec.tcp.is_empty()) {
                    continue;
                }
                if !binds(server, vs.namespace, &spec.hosts) {
                    continue;
                }
                match gateway_l4_routes(registry, subsets, vs, &spec, server.port, tls) {
                    Ok((mut routes, dangling)) => {
                        if tls {
                            within_server(&mut routes, server, vs.namespace);
                        }
                        if !dangling.is_empty() {
                            notes.push(format!(
                                "{}; connections routed there are closed (NR) until it exists",
                                dangling.join("; ")
                            ));
                        }
                        let own = (server.framing == Framing::TlsTerminated).then_some(index);
                        l4_adds.push((server.port, own, tls, routes));
                    }
                    Err(Refusal::Invalid(m)) => {
                        notes.push(m);
                        refused = true;
                        break;
                    }
                    Err(Refusal::GatewaysOnly) => {}
                }
                continue;
            }
            if spec.http.is_empty() {
                continue;
            }
            let (routes, dangling) = match gateway_routes(registry, subsets, vs, &spec, server.port)
            {
                Ok(r) => r,
                Err(Refusal::Invalid(m)) => {
                    notes.push(m);
                    refused = true;
                    break;
                }
                Err(Refusal::GatewaysOnly) => continue,
            };
            if !dangling.is_empty() {
                notes.push(format!(
                    "{}; requests routed there get 503 (NR) until it exists",
                    dangling.join("; ")
                ));
            }
            for vs_host in &spec.hosts {
                let vs_host = vs_host.to_ascii_lowercase();
                for sh in &server.hosts {
                    if sh.namespace.as_deref().is_some_and(|ns| ns != vs.namespace) {
                        continue;
                    }
                    if let Some(domain) = intersect(&sh.name, &vs_host) {
                        http_adds.push((
                            server.port,
                            domain,
                            routes.clone(),
                            server.https_redirect,
                        ));
                    }
                }
            }
        }
        if !refused {
            for (port, own, tls, routes) in l4_adds {
                let table = match own {
                    Some(index) => relay.entry(index).or_default(),
                    None => &mut l4_ports.entry(port).or_default().routes,
                };
                let list = if tls { &mut table.tls } else { &mut table.tcp };
                if !list.iter().any(|r| r.name == vs.id()) {
                    list.extend(routes);
                }
            }
            for (port, domain, routes, https_redirect) in http_adds {
                let table = ports.entry(port).or_default();
                if let Some((t, redirect)) = table.get_mut(&domain) {
                    // Istio merges the routes of several VirtualServices for one gateway
                    // host in that order: the earlier one's routes come first.
                    if !t.iter().any(|r| r.name == vs.id()) {
                        t.extend(routes);
                        *redirect |= https_redirect;
                    }
                } else if table.len() < MAX_VIRTUAL_HOSTS {
                    table.insert(domain, (routes, https_redirect));
                } else {
                    notes.push(format!(
                        "port {port}: more than {MAX_VIRTUAL_HOSTS} hosts; {domain} is not served"
                    ));
                }
            }
        }
        if !refused
            && !servers
                .iter()
                .any(|s| bound.contains(&s.gateway) && binds(s, vs.namespace, &spec.hosts))
        {
            notes.push(format!(
                "no host of {:?} is among the hosts of the Gateway servers it binds to ({}); nothing is routed",
                spec.hosts,
                bound.join(", ")
            ));
        }
        if !notes.is_empty() {
            problems.push(Problem::new(
                super::istio::VIRTUAL_SERVICE,
                vs,
                notes.join(". "),
            ));
        }
    }
    let mut listeners: Vec<Listener> = opened
        .into_iter()
        .map(|(port, gateways)| Listener {
            port,
            gateways: gateways.into_iter().collect(),
            virtual_hosts: ports
                .remove(&port)
                .unwrap_or_default()
                .into_iter()
                .map(|(domain, (routes, https_redirect))| VirtualHost {
                    domains: vec![domain],
                    routes,
                    https_redirect,
                })
                .collect(),
            tls: servers
                .iter()
                .enumerate()
                .filter(|(_, s)| s.port == port)
                .filter_map(|(index, s)| {
                    let (mutual, c) = s.tls.as_ref()?;
                    Some(ServedTls {
                        gateway: s.gateway.clone(),
                        hosts: s.hosts.iter().map(|h| h.name.clone()).collect(),
                        mutual: *mutual,
                        cert_chain: c.cert_chain.clone(),
                        private_key: c.private_key.clone(),
                        client_ca: c.ca.clone(),
                        // No route yet: connections are closed (NR) until one binds.
                        relay: (s.framing == Framing::TlsTerminated)
                            .then(|| relay.remove(&index).unwrap_or_default()),
                    })
                })
                .collect(),
            l4: l4_ports.remove(&port).map(|mut l| {
                l.sni_hosts.sort();
                l.sni_hosts.dedup();
                l
            }),
            mesh_mtls: {
                let mut hosts: Vec<String> = servers
                    .iter()
                    .filter(|s| s.port == port && s.framing == Framing::MeshMtls)
                    .flat_map(|s| s.hosts.iter().map(|h| h.name.clone()))
                    .collect();
                hosts.sort();
                hosts.dedup();
                hosts
            },
        })
        // A TLS port whose terminating servers all lack their certificate and that has no
        // PASSTHROUGH server serves nothing (never plaintext in their place).
        .filter(|l| {
            kinds.get(&l.port).is_none_or(|(k, _)| *k != PortKind::Tls)
                || !l.tls.is_empty()
                || l.l4.is_some()
        })
        .collect();
    if listeners.len() > MAX_LISTENERS {
        listeners.truncate(MAX_LISTENERS);
        if let Some(g) = gateways.first() {
            problems.push(Problem::new(
                GATEWAY,
                g,
                format!("the gateway pods these Gateways select would listen on more than {MAX_LISTENERS} ports; only the lowest {MAX_LISTENERS} are served"),
            ));
        }
    }
    GatewayConfig {
        listeners,
        ..GatewayConfig::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::compile::Registry;
    use serde_json::json;

    /// The host gateway routing, the gateway's policies and `weft authz explain` read.
    #[test]
    fn host_without_port_drops_its_port_and_trailing_dot() {
        assert_eq!(
            host_without_port("shop.example.com:443"),
            "shop.example.com"
        );
        assert_eq!(host_without_port("Shop.Example.com."), "Shop.Example.com");
        assert_eq!(
            host_without_port("Web.example.test.:80"),
            "Web.example.test"
        );
        assert_eq!(host_without_port("[2001:db8::1]:443"), "[2001:db8::1]");
        assert_eq!(host_without_port("shop"), "shop");
        assert_eq!(host_without_port(""), "");
    }

    fn registry() -> Registry {
        let mut r = Registry::new("cluster.local");
        r.add("productpage.payments.svc.cluster.local", 9080, true);
        r.add("reviews.payments.svc.cluster.local", 9080, true);
        r
    }

    fn src<'a>(ns: &'a str, name: &'a str, created: &'a str, spec: &'a Value) -> Source<'a> {
        Source {
            namespace: ns,
            name,
            created,
            spec,
        }
    }

    /// Seed 003, section 4, verbatim (the specs).
    fn seed_003() -> (Value, Value) {
        let gw = json!({"selector": {"istio": "aks-istio-ingressgateway-internal"},
            "servers": [{"port": {"number": 80, "name": "http", "protocol": "HTTP"},
                         "hosts": ["shop.internal.contoso.com"]}]});
        let vs = json!({"hosts": ["shop.internal.contoso.com"],
            "gateways": ["storefront-internal"],
            "http": [{"route": [{"destination": {"host": "productpage", "port": {"number": 9080}}}]}]});
        (gw, vs)
    }

    /// Istio's `sourceLabels` / `sourceNamespace` at a gateway: held against the gateway
    /// pods' own labels and namespace (`sourceMatchHTTP`), so each workload gets the routes
    /// that name it; a route whose every match names another workload is left out.
    #[test]
    fn source_labels_and_namespace_are_held_against_the_gateway_pods() {
        let (gw, _) = seed_003();
        let vs = json!({"hosts": ["shop.internal.contoso.com"],
            "gateways": ["storefront-internal"],
            "http": [
                {"match": [{"sourceLabels": {"istio": "aks-istio-ingressgateway-internal"},
                            "uri": {"prefix": "/reviews"}}],
                 "route": [{"destination": {"host": "reviews", "port": {"number": 9080}}}]},
                {"match": [{"sourceNamespace": "elsewhere"}],
                 "route": [{"destination": {"host": "reviews", "port": {"number": 9080}}}]},
                {"route": [{"destination": {"host": "productpage", "port": {"number": 9080}}}]}]});
        let compiled_for = |labels: &BTreeMap<String, String>, namespace: &str| {
            let mut problems = Vec::new();
            let config = compile_for(
                &registry(),
                &BTreeMap::new(),
                &[src("payments", "storefront-internal", "1", &gw)],
                &[src("payments", "storefront", "1", &vs)],
                None,
                Some(Workload { namespace, labels }),
                &mut problems,
            );
            assert!(problems.is_empty(), "{problems:?}");
            let vh = config
                .listener(80)
                .and_then(|l| l.virtual_host("shop.internal.contoso.com"))
                .cloned()
                .expect("the seed's host");
            vh.routes
                .iter()
                .map(|r| {
                    let m = r.matches.first();
                    assert!(
                        m.is_none_or(|m| m.source_labels.is_empty() && m.source_namespace.is_none()),
                        "the condition is decided here, not sent: {r:?}"
                    );
                    r.destinations[0].service.split('.').next().unwrap().to_string()
                })
                .collect::<Vec<_>>()
        };
        let ours = BTreeMap::from([(
            "istio".to_string(),
            "aks-istio-ingressgateway-internal".to_string(),
        )]);
        assert_eq!(
            compiled_for(&ours, "aks-istio-ingress"),
            ["reviews", "productpage"]
        );
        let other = BTreeMap::from([("istio".to_string(), "ingressgateway".to_string())]);
        assert_eq!(compiled_for(&other, "aks-istio-ingress"), ["productpage"]);
        assert_eq!(
            compiled_for(&other, "elsewhere"),
            ["reviews", "productpage"],
            "sourceNamespace names the gateway pods' namespace"
        );
        // A value that is no namespace name is refused by name, as on sidecars, not left
        // to never hold.
        let bad = json!({"hosts": ["shop.internal.contoso.com"],
            "gateways": ["storefront-internal"],
            "http": [{"route": [{"destination": {"host": "productpage", "port": {"number": 9080}}}]},
                {"match": [{"uri": {"prefix": "/a"}}, {"sourceNamespace": "Not_A_Namespace"}],
                 "route": [{"destination": {"host": "reviews", "port": {"number": 9080}}}]}]});
        let mut problems = Vec::new();
        let config = compile_for(
            &registry(),
            &BTreeMap::new(),
            &[src("payments", "storefront-internal", "1", &gw)],
            &[src("payments", "storefront", "1", &bad)],
            None,
            Some(Workload {
                namespace: "aks-istio-ingress",
                labels: &ours,
            }),
            &mut problems,
        );
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].message.contains(
                "http[1].match[1].sourceNamespace \"Not_A_Namespace\" is not a namespace name"
            ),
            "{}",
            problems[0].message
        );
        assert!(
            config
                .listener(80)
                .and_then(|l| l.virtual_host("shop.internal.contoso.com"))
                .is_none_or(|vh| vh.routes.is_empty()),
            "a refused VirtualService lays nothing"
        );
    }

    /// Istio's egress-gateway task (the mTLS variant): a ServiceEntry for the external host,
    /// a Gateway with an ISTIO_MUTUAL server for it, and one VirtualService bound to `mesh` and
    /// the Gateway whose `match.gateways` split the two hops. Host and addresses are the test
    /// ones (the node at 198.18.0.1).
    fn egress_task() -> (Value, Value, Value) {
        let se = json!({"hosts": ["partner.weft.test"], "location": "MESH_EXTERNAL",
            "resolution": "STATIC",
            "ports": [{"number": 80, "name": "http", "protocol": "HTTP"}],
            "endpoints": [{"address": "198.18.0.1", "ports": {"http": 18080}}]});
        let gw = json!({"selector": {"istio": "egressgateway"}, "servers": [
            {"port": {"number": 443, "name": "https", "protocol": "HTTPS"},
             "hosts": ["partner.weft.test"], "tls": {"mode": "ISTIO_MUTUAL"}}]});
        let vs = json!({"hosts": ["partner.weft.test"],
            "gateways": ["istio-egress/egressgateway", "mesh"],
            "http": [
                {"match": [{"gateways": ["mesh"], "port": 80}],
                 "route": [{"destination": {"host": "egressgateway.istio-egress.svc.cluster.local",
                            "subset": "partner", "port": {"number": 443}}}]},
                {"match": [{"gateways": ["istio-egress/egressgateway"], "port": 443}],
                 "route": [{"destination": {"host": "partner.weft.test", "port": {"number": 80}}}]}]});
        (se, gw, vs)
    }

    fn egress_registry(external: &ExternalHosts) -> Registry {
        let mut r = registry();
        r.add("egressgateway.istio-egress.svc.cluster.local", 443, false);
        external.register(&mut r);
        r
    }

    fn external_of(se: &Value) -> ExternalHosts {
        ExternalHosts::new([super::super::egress::compile("shop", "partner", se).unwrap()])
    }

    #[test]
    fn match_gateways_split_one_virtual_service_between_sidecars_and_the_gateway() {
        let (_, _, vs) = egress_task();
        let spec: super::super::istio::VirtualServiceSpec = serde_json::from_value(vs).unwrap();
        let mesh = routes_for(&spec, "shop", MESH).unwrap();
        assert_eq!(mesh.http.len(), 1);
        assert!(mesh.http[0].matches[0].gateways.is_none());
        assert_eq!(mesh.http[0].matches[0].port, Some(80));
        let gw = routes_for(&spec, "shop", "istio-egress/egressgateway").unwrap();
        assert_eq!(gw.http.len(), 1);
        assert_eq!(gw.http[0].route[0].destination.host, "partner.weft.test");
        // A bare name is a Gateway of the VirtualService's namespace, not another's.
        let bare: super::super::istio::VirtualServiceSpec = serde_json::from_value(json!({
            "hosts": ["a"], "gateways": ["gw", "mesh"], "http": [
                {"match": [{"gateways": ["gw"]}, {"uri": {"prefix": "/x"}}],
                 "route": [{"destination": {"host": "a"}}]},
                {"route": [{"destination": {"host": "b"}}]}]}))
        .unwrap();
        let other = routes_for(&bare, "shop", "other/gw").unwrap();
        assert_eq!(
            other.http.len(),
            2,
            "the unconditioned match and route still hold"
        );
        assert_eq!(other.http[0].matches.len(), 1);
        let own = routes_for(&bare, "shop", "shop/gw").unwrap();
        assert_eq!(own.http[0].matches.len(), 2);
        let bad: super::super::istio::VirtualServiceSpec = serde_json::from_value(json!({
            "hosts": ["a"], "http": [{"match": [{"gateways": [1]}],
            "route": [{"destination": {"host": "a"}}]}]}))
        .unwrap();
        assert!(
            routes_for(&bad, "shop", MESH)
                .unwrap_err()
                .contains("http[0].match[0].gateways must be a list")
        );
    }

    #[test]
    fn the_egress_gateway_terminates_mesh_mtls_and_routes_to_the_entrys_endpoints() {
        let (se, gw, vs) = egress_task();
        let external = external_of(&se);
        let registry = egress_registry(&external);
        let mut problems = Vec::new();
        let mut config = compile(
            &registry,
            &BTreeMap::new(),
            &[src("istio-egress", "egressgateway", "1", &gw)],
            &[src("shop", "direct-partner", "1", &vs)],
            None,
            &mut problems,
        );
        external.fill_gateway("istio-egress", &mut config, &mut problems);
        assert!(problems.is_empty(), "{problems:?}");
        let l = config.listener(443).unwrap();
        assert_eq!(l.mesh_mtls, ["partner.weft.test"]);
        assert!(l.tls.is_empty() && l.l4.is_none());
        let vh = l.virtual_host("partner.weft.test").unwrap();
        assert_eq!(vh.routes.len(), 1, "only the gateway's route: {vh:?}");
        let d = &vh.routes[0].destinations[0];
        assert_eq!((d.service.as_str(), d.port), ("partner.weft.test", 80));
        // The gateway's snapshot holds the host as a Service with the STATIC endpoint.
        assert_eq!(config.external.len(), 1);
        let ext = &config.external[0];
        assert_eq!((ext.name.as_str(), ext.port), ("partner.weft.test", 80));
        assert_eq!(ext.endpoints.len(), 1);
        assert_eq!(ext.endpoints[0].addr().to_string(), "198.18.0.1:18080");
        assert!(!ext.endpoints[0].meshed);
        // The pod's port 443 is mesh mTLS; a pod the Gateway does not select has none.
        let labels = BTreeMap::from([("istio".to_string(), "egressgateway".to_string())]);
        let gws = [src("istio-egress", "egressgateway", "1", &gw)];
        assert_eq!(mesh_mtls_ports(&gws, &labels), BTreeSet::from([443]));
        assert!(mesh_mtls_ports(&gws, &BTreeMap::new()).is_empty());
    }

    #[test]
    fn sidecars_get_the_hosts_mesh_routes_and_a_route_out_of_the_mesh_is_named() {
        let (se, _, vs) = egress_task();
        let external = external_of(&se);
        let registry = egress_registry(&external);
        let mut problems = Vec::new();
        let compiled = crate::route::istio::compile_virtual_service(
            &registry,
            &BTreeMap::new(),
            &src("shop", "direct-partner", "1", &vs),
        )
        .unwrap();
        let http: BTreeMap<(String, u16), Vec<HttpRoute>> = compiled.routes;
        let is_service = |h: &str| h.ends_with(".svc.cluster.local");
        let services = external.mesh_services(&http, &BTreeMap::new(), &is_service, &mut problems);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(services.len(), 1);
        let s = &services[0];
        assert_eq!(
            (s.name.as_str(), s.port, s.cluster_ip),
            ("partner.weft.test", 80, None)
        );
        assert!(s.endpoints.is_empty(), "no direct route out: {s:?}");
        let d = &s.http[0].destinations[0];
        assert_eq!(d.service, "egressgateway.istio-egress.svc.cluster.local");
        assert_eq!((d.port, d.subset.as_deref()), (443, Some("partner")));
        // A mesh route back to the external host itself is not applied, and said.
        let direct = json!({"hosts": ["partner.weft.test"], "http": [
            {"timeout": "3s", "route": [{"destination": {"host": "partner.weft.test"}}]}]});
        let compiled = crate::route::istio::compile_virtual_service(
            &registry,
            &BTreeMap::new(),
            &src("shop", "timeout", "1", &direct),
        )
        .unwrap();
        let services = external.mesh_services(
            &compiled.routes,
            &BTreeMap::new(),
            &is_service,
            &mut problems,
        );
        assert!(services.is_empty());
        assert!(
            problems[0].message.contains("not supported yet"),
            "{problems:?}"
        );
        assert_eq!(problems[0].name, "timeout");
    }

    /// Istio's egress gateway task, HTTPS variant (TLS passthrough): the sidecars' `tls`
    /// route for the entry's TLS port sends connections by SNI to the egress gateway; a
    /// `tcp` route back to the host itself is named and not applied.
    #[test]
    fn sidecars_get_the_hosts_tls_routes_to_the_egress_gateway() {
        let se = json!({"hosts": ["partner.weft.test"], "location": "MESH_EXTERNAL",
            "resolution": "DNS", "ports": [{"number": 443, "name": "tls", "protocol": "TLS"}]});
        let vs = json!({"hosts": ["partner.weft.test"],
            "gateways": ["istio-egress/egressgateway", "mesh"],
            "tls": [
                {"match": [{"gateways": ["mesh"], "port": 443, "sniHosts": ["partner.weft.test"]}],
                 "route": [{"destination": {"host": "egressgateway.istio-egress.svc.cluster.local",
                            "subset": "partner", "port": {"number": 443}}}]},
                {"match": [{"gateways": ["istio-egress/egressgateway"], "port": 443,
                            "sniHosts": ["partner.weft.test"]}],
                 "route": [{"destination": {"host": "partner.weft.test", "port": {"number": 443}}}]}]});
        let external = external_of(&se);
        let registry = egress_registry(&external);
        let compiled = crate::route::istio::compile_virtual_service(
            &registry,
            &BTreeMap::new(),
            &src("shop", "direct-partner", "1", &vs),
        )
        .unwrap();
        let is_service = |h: &str| h.ends_with(".svc.cluster.local");
        let mut problems = Vec::new();
        let services =
            external.mesh_services(&compiled.routes, &compiled.l4, &is_service, &mut problems);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(services.len(), 1, "{services:?}");
        let s = &services[0];
        assert_eq!(
            (s.name.as_str(), s.port, s.cluster_ip),
            ("partner.weft.test", 443, None)
        );
        assert!(s.http.is_empty() && s.endpoints.is_empty() && s.l4.tcp.is_empty());
        assert_eq!(s.l4.tls.len(), 1, "only the mesh's route: {s:?}");
        let d = &s.l4.tls[0].destinations[0];
        assert_eq!(d.service, "egressgateway.istio-egress.svc.cluster.local");
        assert_eq!((d.port, d.subset.as_deref()), (443, Some("partner")));
        // A tcp route back to the host itself is not applied, and said.
        let direct = json!({"hosts": ["partner.weft.test"], "tcp": [
            {"route": [{"destination": {"host": "partner.weft.test", "port": {"number": 443}}}]}]});
        let compiled = crate::route::istio::compile_virtual_service(
            &registry,
            &BTreeMap::new(),
            &src("shop", "direct", "1", &direct),
        )
        .unwrap();
        let services =
            external.mesh_services(&compiled.routes, &compiled.l4, &is_service, &mut problems);
        assert!(services.is_empty(), "{services:?}");
        assert!(
            problems[0]
                .message
                .contains("tls/tcp routes for ServiceEntry host partner.weft.test port 443"),
            "{problems:?}"
        );
        assert_eq!(problems[0].name, "direct");
    }

    #[test]
    fn a_gateway_names_an_entry_it_cannot_reach_and_a_virtual_service_refused_on_one_server_lays_nothing()
     {
        let (se, gw, vs) = egress_task();
        let mut none = se.clone();
        none["resolution"] = json!("NONE");
        none.as_object_mut().unwrap().remove("endpoints");
        let external = external_of(&none);
        let registry = egress_registry(&external);
        let mut problems = Vec::new();
        let mut config = compile(
            &registry,
            &BTreeMap::new(),
            &[src("istio-egress", "egressgateway", "1", &gw)],
            &[src("shop", "direct-partner", "1", &vs)],
            None,
            &mut problems,
        );
        external.fill_gateway("istio-egress", &mut config, &mut problems);
        assert!(config.external.is_empty());
        assert!(
            problems[0].message.contains("resolution NONE"),
            "{problems:?}"
        );
        // Bound to two Gateways: refused on the second (sourceLabels), so the first gets none
        // of its routes either.
        let plain = json!({"selector": {"istio": "egressgateway"}, "servers": [
            {"port": {"number": 80, "name": "http", "protocol": "HTTP"}, "hosts": ["*"]}]});
        let two = json!({"hosts": ["partner.weft.test"], "gateways": ["a", "b"], "http": [
            {"match": [{"gateways": ["a"]}], "route": [{"destination": {"host": "productpage", "port": {"number": 9080}}}]},
            {"match": [{"gateways": ["b"], "sourceLabels": {"app": "x"}}],
             "route": [{"destination": {"host": "productpage", "port": {"number": 9080}}}]}]});
        let mut problems = Vec::new();
        let config = compile(
            &registry,
            &BTreeMap::new(),
            &[src("shop", "a", "1", &plain), src("shop", "b", "2", &plain)],
            &[src("shop", "two", "1", &two)],
            None,
            &mut problems,
        );
        assert!(
            config.listener(80).unwrap().virtual_hosts.is_empty(),
            "{config:?}"
        );
        assert!(
            problems
                .iter()
                .any(|p| p.name == "two" && p.message.contains("sourceLabels")),
            "{problems:?}"
        );
    }

    /// Istio's own task: the external host with `resolution: DNS` and no endpoints.
    #[test]
    fn a_dns_entry_reaches_the_gateway_as_a_name_to_resolve_on_its_target_port() {
        let (se, gw, vs) = egress_task();
        let mut dns = se.clone();
        dns["resolution"] = json!("DNS");
        dns["ports"][0]["targetPort"] = json!(18080);
        dns.as_object_mut().unwrap().remove("endpoints");
        let external = external_of(&dns);
        let registry = egress_registry(&external);
        let mut problems = Vec::new();
        let mut config = compile(
            &registry,
            &BTreeMap::new(),
            &[src("istio-egress", "egressgateway", "1", &gw)],
            &[src("shop", "direct-partner", "1", &vs)],
            None,
            &mut problems,
        );
        external.fill_gateway("istio-egress", &mut config, &mut problems);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(config.external.len(), 1);
        let ext = &config.external[0];
        assert_eq!((ext.name.as_str(), ext.port), ("partner.weft.test", 80));
        assert!(ext.endpoints.is_empty(), "the proxy fills them in");
        assert_eq!(
            config.resolve,
            [DnsDestination {
                host: "partner.weft.test".into(),
                port: 80,
                name: "partner.weft.test".into(),
                target_port: 18080,
            }]
        );
        // Without targetPort the port's number is dialled; the field survives the wire.
        dns["ports"][0]
            .as_object_mut()
            .unwrap()
            .remove("targetPort");
        let external = external_of(&dns);
        let mut config = compile(
            &registry,
            &BTreeMap::new(),
            &[src("istio-egress", "egressgateway", "1", &gw)],
            &[src("shop", "direct-partner", "1", &vs)],
            None,
            &mut problems,
        );
        external.fill_gateway("istio-egress", &mut config, &mut problems);
        assert_eq!(config.resolve[0].target_port, 80);
        let wire = serde_json::to_value(&config).unwrap();
        assert_eq!(wire["resolve"][0]["targetPort"], 80);
        let back: GatewayConfig = serde_json::from_value(wire).unwrap();
        assert_eq!(back, config);
        // With endpoints, they are resolved instead of the host, each on its port.
        dns["endpoints"] = json!([{"address": "eu.partner.weft.test", "ports": {"http": 18081}},
                                  {"address": "198.18.0.1"}]);
        let external = external_of(&dns);
        let mut config = compile(
            &registry,
            &BTreeMap::new(),
            &[src("istio-egress", "egressgateway", "1", &gw)],
            &[src("shop", "direct-partner", "1", &vs)],
            None,
            &mut problems,
        );
        external.fill_gateway("istio-egress", &mut config, &mut problems);
        let named: Vec<(&str, u16, &str, u16)> = config
            .resolve
            .iter()
            .map(|d| (d.host.as_str(), d.port, d.name.as_str(), d.target_port))
            .collect();
        assert_eq!(
            named,
            [
                ("partner.weft.test", 80, "eu.partner.weft.test", 18081),
                ("partner.weft.test", 80, "198.18.0.1", 80)
            ]
        );
    }

    /// Several ServiceEntries for one host: those of one namespace merge (ports and
    /// endpoints, as Istio merges them); what cannot merge is named on the newer entry; another
    /// namespace's entry is used only where it is seen, its own namespace's first.
    #[test]
    fn entries_for_one_host_merge_per_namespace_and_conflicts_are_named() {
        let entry = |ns: &str, name: &str, spec: Value| {
            super::super::egress::compile(ns, name, &spec).unwrap()
        };
        let a = entry(
            "shop",
            "a",
            json!({"hosts": ["partner.weft.test"], "resolution": "STATIC",
                "ports": [{"number": 80, "name": "http", "protocol": "HTTP"}],
                "endpoints": [{"address": "198.18.0.1", "ports": {"http": 18080}}]}),
        );
        let b = entry(
            "shop",
            "b",
            json!({"hosts": ["partner.weft.test"], "resolution": "STATIC",
                "ports": [{"number": 80, "name": "http", "protocol": "HTTP"},
                          {"number": 8080, "name": "alt", "protocol": "HTTP"}],
                "endpoints": [{"address": "198.18.0.2", "ports": {"http": 18080, "alt": 18081}}]}),
        );
        let c = entry(
            "shop",
            "c",
            json!({"hosts": ["partner.weft.test"], "resolution": "DNS",
                "ports": [{"number": 9090, "name": "http", "protocol": "HTTP"}]}),
        );
        let d = entry(
            "shop",
            "d",
            json!({"hosts": ["partner.weft.test"], "resolution": "STATIC",
                "ports": [{"number": 80, "name": "tcp", "protocol": "TCP"}],
                "endpoints": [{"address": "198.18.0.3"}]}),
        );
        let other = entry(
            "partners",
            "own",
            json!({"hosts": ["partner.weft.test"], "resolution": "STATIC", "exportTo": ["."],
                "ports": [{"number": 80, "name": "http", "protocol": "HTTP"}],
                "endpoints": [{"address": "198.18.0.9", "ports": {"http": 18080}}]}),
        );
        let external = ExternalHosts::new([a, b, c, d, other]);
        let named: Vec<(&str, &str)> = external
            .problems()
            .iter()
            .map(|p| (p.name.as_str(), p.message.as_str()))
            .collect();
        assert_eq!(named.len(), 2, "{named:?}");
        assert_eq!(named[0].0, "c");
        assert!(
            named[0].1.contains("resolution STATIC, this one says DNS"),
            "{named:?}"
        );
        assert_eq!(named[1].0, "d");
        assert!(
            named[1].1.contains("protocol HTTP, this one says TCP"),
            "{named:?}"
        );
        assert!(
            external
                .problems()
                .iter()
                .all(|p| p.kind == super::super::egress::SERVICE_ENTRY && p.namespace == "shop")
        );
        // Both ports reach the registry, so a VirtualService may route either.
        let registry = egress_registry(&external);
        let (_, gw, _) = egress_task();
        let vs = json!({"hosts": ["partner.weft.test"], "gateways": ["istio-egress/egressgateway"],
            "http": [
                {"match": [{"uri": {"prefix": "/alt"}}],
                 "route": [{"destination": {"host": "partner.weft.test", "port": {"number": 8080}}}]},
                {"route": [{"destination": {"host": "partner.weft.test", "port": {"number": 80}}}]}]});
        let gateway_in = |ns: &str| {
            let mut problems = Vec::new();
            let mut config = compile(
                &registry,
                &BTreeMap::new(),
                &[src("istio-egress", "egressgateway", "1", &gw)],
                &[src("shop", "vs", "1", &vs)],
                None,
                &mut problems,
            );
            external.fill_gateway(ns, &mut config, &mut problems);
            assert!(problems.is_empty(), "{problems:?}");
            let mut out: Vec<(u16, Vec<String>)> = config
                .external
                .iter()
                .map(|s| {
                    (
                        s.port,
                        s.endpoints.iter().map(|e| e.addr().to_string()).collect(),
                    )
                })
                .collect();
            out.sort();
            out
        };
        assert_eq!(
            gateway_in("istio-egress"),
            [
                (
                    80,
                    vec!["198.18.0.1:18080".to_string(), "198.18.0.2:18080".into()]
                ),
                (8080, vec!["198.18.0.2:18081".to_string()]),
            ],
            "shop's entries merged; the private entry of partners is not seen"
        );
        // A gateway in `partners` takes its own namespace's entry (it declares no 8080).
        let mut problems = Vec::new();
        let mut config = compile(
            &registry,
            &BTreeMap::new(),
            &[src("istio-egress", "egressgateway", "1", &gw)],
            &[src("shop", "vs", "1", &vs)],
            None,
            &mut problems,
        );
        external.fill_gateway("partners", &mut config, &mut problems);
        let eps: Vec<String> = config
            .external
            .iter()
            .flat_map(|s| s.endpoints.iter().map(|e| e.addr().to_string()))
            .collect();
        assert_eq!(eps, ["198.18.0.9:18080"]);
        assert!(
            problems
                .iter()
                .any(|p| p.message.contains("declares no port 8080")),
            "{problems:?}"
        );
    }

    /// Two entries of one namespace for one host with different exportTo: the gateway of
    /// another namespace sees only the one exported to it (the private entry's endpoints were
    /// merged in and its exportTo unioned before: a private entry reached every gateway); a
    /// gateway of the entries' own namespace sees both and uses the older one alone (Istio
    /// merges only entries with equal exportTo), and the newer entry is named.
    #[test]
    fn a_private_entry_of_a_host_is_not_merged_into_what_other_namespaces_see() {
        let entry =
            |name: &str, spec: Value| super::super::egress::compile("shop", name, &spec).unwrap();
        let private = entry(
            "private",
            json!({"hosts": ["partner.weft.test"], "resolution": "STATIC", "exportTo": ["."],
                "ports": [{"number": 80, "name": "http", "protocol": "HTTP"}],
                "endpoints": [{"address": "198.18.0.1", "ports": {"http": 18080}}]}),
        );
        let public = entry(
            "public",
            json!({"hosts": ["partner.weft.test"], "resolution": "STATIC",
                "ports": [{"number": 80, "name": "http", "protocol": "HTTP"}],
                "endpoints": [{"address": "198.18.0.2", "ports": {"http": 18080}}]}),
        );
        let external = ExternalHosts::new([private, public]);
        assert_eq!(external.problems().len(), 1, "{:?}", external.problems());
        assert_eq!(external.problems()[0].name, "public");
        assert!(
            external.problems()[0]
                .message
                .contains("exportTo shop, this one says *"),
            "{:?}",
            external.problems()
        );
        let registry = egress_registry(&external);
        let (_, gw, _) = egress_task();
        let vs = json!({"hosts": ["partner.weft.test"], "gateways": ["istio-egress/egressgateway"],
            "http": [{"route": [{"destination": {"host": "partner.weft.test", "port": {"number": 80}}}]}]});
        let endpoints_in = |ns: &str| {
            let mut problems = Vec::new();
            let mut config = compile(
                &registry,
                &BTreeMap::new(),
                &[src("istio-egress", "egressgateway", "1", &gw)],
                &[src("shop", "vs", "1", &vs)],
                None,
                &mut problems,
            );
            external.fill_gateway(ns, &mut config, &mut problems);
            assert!(problems.is_empty(), "{problems:?}");
            config
                .external
                .iter()
                .flat_map(|s| s.endpoints.iter().map(|e| e.addr().to_string()))
                .collect::<Vec<_>>()
        };
        assert_eq!(endpoints_in("istio-egress"), ["198.18.0.2:18080"]);
        assert_eq!(endpoints_in("shop"), ["198.18.0.1:18080"]);
    }

    #[test]
    fn istio_mutual_takes_no_secret_and_keeps_its_port() {
        let gw = json!({"selector": {"istio": "egressgateway"}, "servers": [
            {"port": {"number": 443, "name": "a", "protocol": "HTTPS"}, "hosts": ["a.com"],
             "tls": {"mode": "ISTIO_MUTUAL", "credentialName": "x"}},
            {"port": {"number": 8443, "name": "b", "protocol": "HTTPS"}, "hosts": ["b.com"],
             "tls": {"mode": "ISTIO_MUTUAL"}},
            {"port": {"number": 8443, "name": "c", "protocol": "HTTPS"}, "hosts": ["c.com"],
             "tls": {"mode": "SIMPLE", "credentialName": "shop-cert"}},
            {"port": {"number": 9443, "name": "d", "protocol": "TLS"}, "hosts": ["d.com"],
             "tls": {"mode": "ISTIO_MUTUAL"}}]});
        let mut problems = Vec::new();
        let config = compile(
            &registry(),
            &BTreeMap::new(),
            &[src("ns", "g", "1", &gw)],
            &[],
            Some(&credential),
            &mut problems,
        );
        let ports: Vec<u16> = config.listeners.iter().map(|l| l.port).collect();
        assert_eq!(ports, [8443]);
        assert_eq!(config.listeners[0].mesh_mtls, ["b.com"]);
        assert!(
            config.listeners[0].tls.is_empty(),
            "the SIMPLE server does not share it"
        );
        let all: String = problems.iter().map(|p| p.message.clone()).collect();
        for needle in [
            "servers[0].tls.credentialName must be empty with mode ISTIO_MUTUAL",
            "servers[3].tls.mode ISTIO_MUTUAL is not supported yet",
            "port 8443 is already served as HTTPS with ISTIO_MUTUAL",
        ] {
            assert!(all.contains(needle), "{needle} in {all}");
        }
    }

    #[test]
    fn seed_003_storefront_is_one_listener_with_one_host() {
        let (gw, vs) = seed_003();
        let mut problems = Vec::new();
        let config = compile(
            &registry(),
            &BTreeMap::new(),
            &[src("payments", "storefront-internal", "1", &gw)],
            &[src("payments", "storefront", "1", &vs)],
            None,
            &mut problems,
        );
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(config.listeners.len(), 1);
        let l = &config.listeners[0];
        assert_eq!(l.port, 80);
        let vh = l.virtual_host("shop.internal.contoso.com:80").unwrap();
        assert_eq!(vh.routes.len(), 1);
        let d = &vh.routes[0].destinations[0];
        assert_eq!(
            (d.service.as_str(), d.port),
            ("productpage.payments.svc.cluster.local", 9080)
        );
        assert!(l.virtual_host("other.contoso.com").is_none());
        assert!(selects(
            &selector_of(&gw).unwrap(),
            &BTreeMap::from([(
                "istio".to_string(),
                "aks-istio-ingressgateway-internal".to_string()
            )])
        ));
        assert!(!selects(&selector_of(&gw).unwrap(), &BTreeMap::new()));
    }

    #[test]
    fn a_virtual_service_bound_elsewhere_or_in_another_namespace_is_not_used() {
        let (gw, vs) = seed_003();
        let mut problems = Vec::new();
        // `storefront-internal` from namespace `shop` means shop/storefront-internal.
        let config = compile(
            &registry(),
            &BTreeMap::new(),
            &[src("payments", "storefront-internal", "1", &gw)],
            &[src("shop", "storefront", "1", &vs)],
            None,
            &mut problems,
        );
        assert!(config.listeners[0].virtual_hosts.is_empty());
        // Explicit ns/name binds across namespaces, unless the server host limits it.
        let vs2 = json!({"hosts": ["shop.internal.contoso.com"],
            "gateways": ["payments/storefront-internal"],
            "http": [{"route": [{"destination": {"host": "productpage.payments.svc.cluster.local", "port": {"number": 9080}}}]}]});
        let config = compile(
            &registry(),
            &BTreeMap::new(),
            &[src("payments", "storefront-internal", "1", &gw)],
            &[src("shop", "storefront", "1", &vs2)],
            None,
            &mut problems,
        );
        assert_eq!(config.listeners[0].virtual_hosts.len(), 1);
        let mut gw_local = gw.clone();
        gw_local["servers"][0]["hosts"] = json!(["./shop.internal.contoso.com"]);
        let config = compile(
            &registry(),
            &BTreeMap::new(),
            &[src("payments", "storefront-internal", "1", &gw_local)],
            &[src("shop", "storefront", "1", &vs2)],
            None,
            &mut problems,
        );
        assert!(config.listeners[0].virtual_hosts.is_empty());
        assert!(
            problems
                .iter()
                .any(|p| p.message.contains("no host of") && p.name == "storefront")
        );
    }

    #[test]
    fn hosts_pick_exact_then_longest_wildcard_then_star() {
        let l = Listener {
            port: 80,
            gateways: vec![],
            virtual_hosts: [
                "*",
                "*.contoso.com",
                "*.internal.contoso.com",
                "a.contoso.com",
            ]
            .iter()
            .map(|d| VirtualHost {
                domains: vec![d.to_string()],
                routes: vec![],
                https_redirect: false,
            })
            .collect(),
            tls: vec![],
            l4: None,
            mesh_mtls: vec![],
        };
        let pick = |h: &str| l.virtual_host(h).unwrap().domains[0].clone();
        assert_eq!(pick("A.Contoso.com:8080"), "a.contoso.com");
        assert_eq!(pick("shop.internal.contoso.com."), "*.internal.contoso.com");
        assert_eq!(pick("b.contoso.com"), "*.contoso.com");
        assert_eq!(pick("contoso.com"), "*");
        assert_eq!(pick("[::1]:80"), "*");
    }

    /// Istio's TLS passthrough and TCP ingress: a TLS server relaying by SNI, a TCP server
    /// relaying by port, each with the bound VirtualService's `tls` / `tcp` routes.
    #[test]
    fn passthrough_and_tcp_servers_relay_by_the_bound_tls_and_tcp_routes() {
        let mut r = registry();
        r.add("nginx.shop.svc.cluster.local", 443, false);
        r.add("db.shop.svc.cluster.local", 5432, false);
        let gw = json!({"selector": {"istio": "ingressgateway"}, "servers": [
            {"port": {"number": 443, "name": "tls", "protocol": "TLS"},
             "hosts": ["nginx.example.com", "*.pass.example.com"], "tls": {"mode": "PASSTHROUGH"}},
            {"port": {"number": 31400, "name": "tcp", "protocol": "TCP"}, "hosts": ["*"]}]});
        let tls_vs = json!({"hosts": ["nginx.example.com"], "gateways": ["edge"],
            "tls": [{"match": [{"port": 443, "sniHosts": ["nginx.example.com"]}],
                     "route": [{"destination": {"host": "nginx", "port": {"number": 443}}}]}]});
        let tcp_vs = json!({"hosts": ["*"], "gateways": ["edge"],
            "tcp": [{"match": [{"port": 31400}], "route": [{"destination": {"host": "db"}}]}]});
        let mut problems = Vec::new();
        let config = compile(
            &r,
            &BTreeMap::new(),
            &[src("shop", "edge", "1", &gw)],
            &[
                src("shop", "nginx", "1", &tls_vs),
                src("shop", "db", "2", &tcp_vs),
            ],
            None,
            &mut problems,
        );
        assert!(problems.is_empty(), "{problems:?}");
        let tls = config.listener(443).unwrap();
        assert!(tls.virtual_hosts.is_empty() && tls.tls.is_empty());
        let l4 = tls.l4.as_ref().unwrap();
        assert_eq!(l4.sni_hosts, ["*.pass.example.com", "nginx.example.com"]);
        assert_eq!(l4.routes.tls.len(), 1);
        assert!(l4.routes.tcp.is_empty());
        let d = &l4.routes.tls[0].destinations[0];
        assert_eq!(
            (d.service.as_str(), d.port),
            ("nginx.shop.svc.cluster.local", 443)
        );
        // Only the servers' names pass (case and a trailing dot folded); no SNI, none.
        assert!(tls.reads_sni_first());
        assert_eq!(
            tls.tls_choice(Some("NGINX.example.com.")),
            TlsChoice::Passthrough
        );
        assert_eq!(
            tls.tls_choice(Some("a.pass.example.com")),
            TlsChoice::Passthrough
        );
        assert_eq!(tls.tls_choice(Some("other.example.com")), TlsChoice::Refuse);
        assert_eq!(tls.tls_choice(None), TlsChoice::Refuse);
        // A TCP port reads no SNI: every client is relayed.
        let tcp_port = config.listener(31400).unwrap();
        assert!(!tcp_port.reads_sni_first());
        let tcp = tcp_port.l4.as_ref().unwrap();
        assert!(tcp.sni_hosts.is_empty());
        // A destination without a port takes the Service's only one.
        let d = &tcp.routes.tcp[0].destinations[0];
        assert_eq!(
            (d.service.as_str(), d.port),
            ("db.shop.svc.cluster.local", 5432)
        );
    }

    /// Two teams' passthrough servers on port 443: a VirtualService bound to one server
    /// never takes the names only the other admits, whatever its own sniHosts say. And
    /// Istio's task form (protocol HTTPS, mode PASSTHROUGH) is a passthrough server.
    #[test]
    fn a_tls_route_takes_only_the_names_of_the_server_it_is_bound_to() {
        let mut r = registry();
        r.add("a.team-a.svc.cluster.local", 443, false);
        r.add("v.team-v.svc.cluster.local", 443, false);
        let gw_a = json!({"selector": {"istio": "edge"}, "servers": [
            {"port": {"number": 443, "name": "tls", "protocol": "HTTPS"},
             "hosts": ["a.example.com"], "tls": {"mode": "PASSTHROUGH"}}]});
        let gw_v = json!({"selector": {"istio": "edge"}, "servers": [
            {"port": {"number": 443, "name": "tls", "protocol": "TLS"},
             "hosts": ["victim.example.com"], "tls": {"mode": "PASSTHROUGH"}}]});
        let greedy = json!({"hosts": ["*.example.com"], "gateways": ["a"],
            "tls": [{"match": [{"sniHosts": ["a.example.com", "victim.example.com"]}],
                     "route": [{"destination": {"host": "a", "port": {"number": 443}}}]}]});
        let victim = json!({"hosts": ["victim.example.com"], "gateways": ["team-v/v"],
            "tls": [{"match": [{"sniHosts": ["victim.example.com"]}],
                     "route": [{"destination": {"host": "v", "port": {"number": 443}}}]}]});
        let mut problems = Vec::new();
        let config = compile(
            &r,
            &BTreeMap::new(),
            &[
                src("team-a", "a", "1", &gw_a),
                src("team-v", "v", "2", &gw_v),
            ],
            // The greedy VirtualService is the older one: first match would win.
            &[
                src("team-a", "greedy", "1", &greedy),
                src("team-v", "victim", "2", &victim),
            ],
            None,
            &mut problems,
        );
        assert!(problems.is_empty(), "{problems:?}");
        let l4 = config.listener(443).unwrap().l4.as_ref().unwrap();
        assert_eq!(l4.sni_hosts, ["a.example.com", "victim.example.com"]);
        let dst: std::net::SocketAddr = "198.18.0.10:443".parse().unwrap();
        let to = |sni: &str| {
            let (route, _) = crate::route::l4::choose(&l4.routes, dst, Some(sni)).unwrap();
            route.destinations[0].service.clone()
        };
        assert_eq!(to("a.example.com"), "a.team-a.svc.cluster.local");
        assert_eq!(to("victim.example.com"), "v.team-v.svc.cluster.local");
    }

    #[test]
    fn tls_servers_weft_cannot_relay_are_named_and_ports_keep_one_protocol() {
        let gw = json!({"selector": {"istio": "ingressgateway"}, "servers": [
            {"port": {"number": 443, "name": "a", "protocol": "TLS"}, "hosts": ["a.com"],
             "tls": {"mode": "SIMPLE", "credentialName": "a"}},
            {"port": {"number": 444, "name": "b", "protocol": "TLS"}, "hosts": ["b.com"]},
            {"port": {"number": 445, "name": "c", "protocol": "HTTPS"}, "hosts": ["c.com"],
             "tls": {"mode": "PASSTHROUGH", "credentialName": "c"}},
            {"port": {"number": 446, "name": "d", "protocol": "TCP"}, "hosts": ["*"],
             "tls": {"mode": "PASSTHROUGH"}},
            {"port": {"number": 80, "name": "e", "protocol": "HTTP"}, "hosts": ["*"]},
            {"port": {"number": 80, "name": "f", "protocol": "TCP"}, "hosts": ["*"]}]});
        let mut problems = Vec::new();
        let config = compile(
            &registry(),
            &BTreeMap::new(),
            &[src("shop", "edge", "1", &gw)],
            &[],
            None,
            &mut problems,
        );
        let all: String = problems.iter().map(|p| p.message.clone()).collect();
        for expected in [
            "servers[1].tls.mode is required for protocol TLS (PASSTHROUGH",
            "servers[2].tls.credentialName does not apply to PASSTHROUGH",
            "servers[3].tls applies to HTTPS and TLS servers",
            "port 80 is already served as plaintext HTTP",
        ] {
            assert!(all.contains(expected), "{expected:?} not in {all}");
        }
        let ports: Vec<u16> = config.listeners.iter().map(|l| l.port).collect();
        assert_eq!(ports, [80]);
        assert!(config.listeners[0].l4.is_none());
    }

    #[test]
    fn wildcard_server_takes_the_virtual_service_host() {
        assert_eq!(
            intersect("*.contoso.com", "shop.contoso.com").as_deref(),
            Some("shop.contoso.com")
        );
        assert_eq!(intersect("*", "*.a.com").as_deref(), Some("*.a.com"));
        assert_eq!(intersect("a.com", "b.com"), None);
        assert_eq!(intersect("*.a.com", "a.com"), None);
    }

    #[test]
    fn servers_weft_cannot_serve_are_named() {
        let gw = json!({"selector": {"istio": "gw"}, "servers": [
            {"port": {"number": 443, "name": "https", "protocol": "HTTPS"}, "hosts": ["*"],
             "tls": {"mode": "SIMPLE", "credentialName": "c"}},
            {"port": {"number": 9000, "name": "udp", "protocol": "UDP"}, "hosts": ["*"]},
            {"port": {"number": 70000, "name": "x", "protocol": "HTTP"}, "hosts": ["*"]},
            {"port": {"number": 81, "name": "x", "protocol": "HTTP"}, "hosts": ["a.*.com"]},
            {"port": {"number": 80, "name": "http", "protocol": "HTTP"}, "hosts": ["*"]}]});
        let mut problems = Vec::new();
        let config = compile(
            &registry(),
            &BTreeMap::new(),
            &[src("ns", "g", "1", &gw)],
            &[],
            Some(&credential),
            &mut problems,
        );
        assert_eq!(config.listeners.len(), 1);
        assert_eq!(config.listeners[0].port, 80);
        let m = &problems[0].message;
        for needle in [
            "servers[0].tls.credentialName c: no Secret c",
            "servers[1].port.protocol \"UDP\" is not one of Istio's",
            "70000",
            "servers[3].hosts",
        ] {
            assert!(m.contains(needle), "{needle} in {m}");
        }
        let bad = json!({"servers": [], "selectr": {}});
        compile(
            &registry(),
            &BTreeMap::new(),
            &[src("ns", "bad", "1", &bad)],
            &[],
            None,
            &mut problems,
        );
        assert!(problems[1].message.contains("selectr"));
    }

    #[test]
    fn two_virtual_services_for_one_host_merge_in_the_callers_order() {
        let (gw, _) = seed_003();
        let older = json!({"hosts": ["shop.internal.contoso.com"], "gateways": ["storefront-internal"],
            "http": [{"match": [{"uri": {"prefix": "/api"}}],
                      "route": [{"destination": {"host": "reviews", "port": {"number": 9080}}}]}]});
        let newer = json!({"hosts": ["shop.internal.contoso.com"], "gateways": ["storefront-internal"],
            "http": [{"route": [{"destination": {"host": "productpage", "port": {"number": 9080}}}]}]});
        let mut problems = Vec::new();
        let config = compile(
            &registry(),
            &BTreeMap::new(),
            &[src("payments", "storefront-internal", "1", &gw)],
            &[
                src("payments", "a-older", "1", &older),
                src("payments", "b-newer", "2", &newer),
            ],
            None,
            &mut problems,
        );
        let vh = config.listeners[0]
            .virtual_host("shop.internal.contoso.com")
            .unwrap();
        let names: Vec<&str> = vh.routes.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["payments/a-older", "payments/b-newer"]);
        // The caller's order wins over age (a VirtualService private to the pods' namespace
        // comes before an older public one in Istio's order).
        let config = compile(
            &registry(),
            &BTreeMap::new(),
            &[src("payments", "storefront-internal", "1", &gw)],
            &[
                src("payments", "b-newer", "2", &newer),
                src("payments", "a-older", "1", &older),
            ],
            None,
            &mut problems,
        );
        let vh = config.listeners[0]
            .virtual_host("shop.internal.contoso.com")
            .unwrap();
        let names: Vec<&str> = vh.routes.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["payments/b-newer", "payments/a-older"]);
    }

    fn credential(name: &str) -> Result<Credential, String> {
        match name {
            "shop-cert" => Ok(Credential {
                cert_chain: "CHAIN".into(),
                private_key: "KEY".into(),
                ca: None,
            }),
            "mtls-cert" => Ok(Credential {
                cert_chain: "CHAIN2".into(),
                private_key: "KEY2".into(),
                ca: Some("CA".into()),
            }),
            other => Err(format!("no Secret {other}")),
        }
    }

    #[test]
    fn https_servers_carry_their_certificate_and_missing_ones_are_named() {
        let gw = json!({"selector": {"istio": "gw"}, "servers": [
            {"port": {"number": 443, "name": "https", "protocol": "HTTPS"},
             "hosts": ["shop.internal.contoso.com"],
             "tls": {"mode": "SIMPLE", "credentialName": "shop-cert"}},
            {"port": {"number": 443, "name": "https-b", "protocol": "HTTPS"},
             "hosts": ["*.partners.contoso.com"],
             "tls": {"mode": "MUTUAL", "credentialName": "mtls-cert"}},
            {"port": {"number": 8443, "name": "https-c", "protocol": "HTTPS"},
             "hosts": ["*"], "tls": {"mode": "SIMPLE", "credentialName": "gone"}},
            {"port": {"number": 9443, "name": "https-d", "protocol": "HTTPS"},
             "hosts": ["*"], "tls": {"mode": "MUTUAL", "credentialName": "shop-cert"}},
            {"port": {"number": 80, "name": "http", "protocol": "HTTP"},
             "hosts": ["shop.internal.contoso.com"], "tls": {"httpsRedirect": true}}]});
        let vs = json!({"hosts": ["shop.internal.contoso.com"], "gateways": ["g"],
            "http": [{"route": [{"destination": {"host": "productpage", "port": {"number": 9080}}}]}]});
        let mut problems = Vec::new();
        let config = compile(
            &registry(),
            &BTreeMap::new(),
            &[src("payments", "g", "1", &gw)],
            &[src("payments", "vs", "1", &vs)],
            Some(&credential),
            &mut problems,
        );
        let ports: Vec<u16> = config.listeners.iter().map(|l| l.port).collect();
        assert_eq!(ports, [80, 443], "8443 and 9443 have no usable certificate");
        let https = config.listener(443).unwrap();
        assert_eq!(https.tls.len(), 2);
        // What the proxy asks on a handshake: the terminating server the SNI picks.
        let served = |sni: Option<&str>| match https.tls_choice(sni) {
            TlsChoice::Terminate(t) => Some(t),
            TlsChoice::Passthrough | TlsChoice::Refuse => None,
        };
        let pick = |sni: Option<&str>| served(sni).unwrap().cert_chain.clone();
        assert_eq!(pick(Some("shop.internal.contoso.com")), "CHAIN");
        assert_eq!(pick(Some("a.partners.contoso.com")), "CHAIN2");
        assert!(served(Some("a.partners.contoso.com")).unwrap().mutual);
        // No SNI, or a name no server has: no certificate (no `*` server on this port).
        assert_eq!(https.tls_choice(None), TlsChoice::Refuse);
        assert_eq!(https.tls_choice(Some("other.com")), TlsChoice::Refuse);
        // A connection whose handshake picked the SIMPLE server never reaches the MUTUAL
        // server's hosts, whatever its Host header says.
        let simple = served(Some("shop.internal.contoso.com")).unwrap();
        let mutual = served(Some("a.partners.contoso.com")).unwrap();
        assert!(
            https
                .virtual_host_within(&simple.hosts, "shop.internal.contoso.com")
                .is_some()
        );
        assert!(
            https
                .virtual_host_within(&simple.hosts, "a.partners.contoso.com")
                .is_none()
        );
        assert!(
            https
                .virtual_host_within(&mutual.hosts, "shop.internal.contoso.com")
                .is_none()
        );
        assert_eq!(
            https
                .virtual_host("shop.internal.contoso.com")
                .unwrap()
                .routes
                .len(),
            1
        );
        let plain = config.listener(80).unwrap();
        assert!(plain.tls.is_empty());
        let vh = plain.virtual_host("shop.internal.contoso.com").unwrap();
        assert!(vh.https_redirect && vh.routes.len() == 1);
        let m = &problems[0].message;
        assert!(
            m.contains("servers[2].tls.credentialName gone: no Secret gone"),
            "{m}"
        );
        assert!(
            m.contains("servers[3].tls.credentialName shop-cert: mode MUTUAL needs"),
            "{m}"
        );
        // The key never shows in Debug output.
        assert!(!format!("{:?}", https.tls[0]).contains("KEY"));
        assert_eq!(https.tls[0].redacted().private_key, "(redacted)");
    }

    /// Istio's servers of every TLS framing on one port: HTTPS (then HTTP), PASSTHROUGH (relayed
    /// as is) and TLS SIMPLE / MUTUAL (terminated, then relayed by the `tcp` routes of the
    /// VirtualServices bound to that server), told apart by the ClientHello's SNI. A newer
    /// server that claims a host an older one of another framing has is not served.
    #[test]
    fn https_passthrough_and_terminated_tls_servers_share_a_port_by_sni() {
        let mut r = registry();
        r.add("nginx.shop.svc.cluster.local", 443, false);
        r.add("db.shop.svc.cluster.local", 5432, false);
        r.add("productpage.shop.svc.cluster.local", 9080, false);
        let gw = json!({"selector": {"istio": "gw"}, "servers": [
            {"port": {"number": 443, "name": "https", "protocol": "HTTPS"},
             "hosts": ["shop.example.com"], "tls": {"mode": "SIMPLE", "credentialName": "shop-cert"}},
            {"port": {"number": 443, "name": "pass", "protocol": "TLS"},
             "hosts": ["nginx.example.com"], "tls": {"mode": "PASSTHROUGH"}},
            {"port": {"number": 443, "name": "db", "protocol": "TLS"},
             "hosts": ["db.example.com"], "tls": {"mode": "SIMPLE", "credentialName": "shop-cert"}},
            {"port": {"number": 443, "name": "partners", "protocol": "TLS"},
             "hosts": ["*.partners.example.com"],
             "tls": {"mode": "MUTUAL", "credentialName": "mtls-cert"}}]});
        let clash = json!({"selector": {"istio": "gw"}, "servers": [
            {"port": {"number": 443, "name": "pass", "protocol": "TLS"},
             "hosts": ["shop.example.com"], "tls": {"mode": "PASSTHROUGH"}}]});
        let web = json!({"hosts": ["shop.example.com"], "gateways": ["edge"],
            "http": [{"route": [{"destination": {"host": "productpage", "port": {"number": 9080}}}]}]});
        let nginx = json!({"hosts": ["nginx.example.com"], "gateways": ["edge"],
            "tls": [{"match": [{"port": 443, "sniHosts": ["nginx.example.com"]}],
                     "route": [{"destination": {"host": "nginx", "port": {"number": 443}}}]}]});
        let db = json!({"hosts": ["db.example.com"], "gateways": ["edge"],
            "tcp": [{"match": [{"port": 443}], "route": [{"destination": {"host": "db"}}]}]});
        let mut problems = Vec::new();
        let config = compile(
            &r,
            &BTreeMap::new(),
            &[
                src("shop", "edge", "1", &gw),
                src("shop", "clash", "2", &clash),
            ],
            &[
                src("shop", "web", "1", &web),
                src("shop", "nginx", "2", &nginx),
                src("shop", "db", "3", &db),
            ],
            Some(&credential),
            &mut problems,
        );
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].name, "clash");
        assert!(
            problems[0]
                .message
                .contains("Gateway shop/edge (older) serves host shop.example.com as HTTPS"),
            "{}",
            problems[0].message
        );
        let l = config.listener(443).unwrap();
        assert_eq!(l.tls.len(), 3);
        assert_eq!(l.l4.as_ref().unwrap().sni_hosts, ["nginx.example.com"]);
        assert!(l.reads_sni_first());
        assert_eq!(
            l.tls_choice(Some("nginx.example.com")),
            TlsChoice::Passthrough
        );
        let terminated = |sni: &str| match l.tls_choice(Some(sni)) {
            TlsChoice::Terminate(t) => t,
            other => panic!("{sni}: {other:?}"),
        };
        let https = terminated("shop.example.com");
        assert!(https.relay.is_none());
        assert!(
            l.virtual_host_within(&https.hosts, "shop.example.com")
                .is_some()
        );
        let db = terminated("DB.example.com.");
        assert!(!db.mutual);
        let relay = db.relay.as_ref().expect("terminated, then relayed");
        let dst: std::net::SocketAddr = "198.18.0.10:443".parse().unwrap();
        let (route, _) = crate::route::l4::choose(relay, dst, Some("db.example.com")).unwrap();
        assert_eq!(route.destinations[0].service, "db.shop.svc.cluster.local");
        // MUTUAL: the client CA comes along; no VirtualService binds its hosts, so nothing is
        // relayed (NR), never another server's routes.
        let partners = terminated("a.partners.example.com");
        assert!(partners.mutual && partners.client_ca.as_deref() == Some("CA"));
        assert!(partners.relay.as_ref().is_some_and(|r| r.tcp.is_empty()));
        assert_eq!(l.tls_choice(Some("other.example.com")), TlsChoice::Refuse);
        assert_eq!(l.tls_choice(None), TlsChoice::Refuse);
    }

    #[test]
    fn a_port_is_plaintext_or_tls_and_the_newer_server_that_differs_is_named() {
        let older = json!({"selector": {"istio": "gw"}, "servers": [
            {"port": {"number": 8000, "name": "http", "protocol": "HTTP"}, "hosts": ["*"]}]});
        let newer = json!({"selector": {"istio": "gw"}, "servers": [
            {"port": {"number": 8000, "name": "https", "protocol": "HTTPS"}, "hosts": ["*"],
             "tls": {"credentialName": "shop-cert"}}]});
        let mut problems = Vec::new();
        let config = compile(
            &registry(),
            &BTreeMap::new(),
            &[
                src("ns", "newer", "2", &newer),
                src("ns", "older", "1", &older),
            ],
            &[],
            Some(&credential),
            &mut problems,
        );
        assert!(config.listener(8000).unwrap().tls.is_empty());
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].name, "newer");
        assert!(
            problems[0]
                .message
                .contains("already served as plaintext HTTP by Gateway ns/older")
        );
    }

    #[test]
    fn an_https_port_whose_secret_is_gone_never_turns_plaintext() {
        let older = json!({"selector": {"istio": "gw"}, "servers": [
            {"port": {"number": 443, "name": "https", "protocol": "HTTPS"}, "hosts": ["*"],
             "tls": {"credentialName": "deleted"}}]});
        let newer = json!({"selector": {"istio": "gw"}, "servers": [
            {"port": {"number": 443, "name": "http", "protocol": "HTTP"}, "hosts": ["*"]}]});
        let mut problems = Vec::new();
        let config = compile(
            &registry(),
            &BTreeMap::new(),
            &[
                src("ns", "older", "1", &older),
                src("ns", "newer", "2", &newer),
            ],
            &[],
            Some(&credential),
            &mut problems,
        );
        assert!(config.listener(443).is_none(), "{config:?}");
        assert!(
            problems
                .iter()
                .any(|p| p.name == "newer" && p.message.contains("already served as TLS"))
        );
    }

    #[test]
    fn reserved_ports_and_non_ascii_hosts_are_refused_without_a_panic() {
        let gw = json!({"selector": {"istio": "gw"}, "servers": [
            {"port": {"number": 15021, "name": "http", "protocol": "HTTP"}, "hosts": ["*"]},
            {"port": {"number": 80, "name": "http", "protocol": "HTTP"}, "hosts": ["é.com", "*é.com"]}]});
        let mut problems = Vec::new();
        let config = compile(
            &registry(),
            &BTreeMap::new(),
            &[src("ns", "g", "1", &gw)],
            &[],
            Some(&credential),
            &mut problems,
        );
        assert!(config.listeners.is_empty());
        let m = &problems[0].message;
        assert!(m.contains("15021 is one of the proxy's own ports"), "{m}");
        assert!(m.contains("servers[1].hosts"), "{m}");
    }

    #[test]
    fn tls_fields_weft_does_not_serve_are_named() {
        let gw = json!({"servers": [
            {"port": {"number": 443, "name": "https", "protocol": "HTTPS"}, "hosts": ["*"],
             "tls": {"mode": "SIMPLE", "credentialName": "shop-cert", "minProtocolVersion": "TLSV1_3", "subjectAltNames": ["a"]}},
            {"port": {"number": 444, "name": "https", "protocol": "HTTPS"}, "hosts": ["*"],
             "tls": {"mode": "AUTO_PASSTHROUGH"}},
            {"port": {"number": 81, "name": "http", "protocol": "HTTP"}, "hosts": ["*"],
             "tls": {"mode": "SIMPLE", "credentialName": "shop-cert"}}]});
        let mut problems = Vec::new();
        let config = compile(
            &registry(),
            &BTreeMap::new(),
            &[src("ns", "g", "1", &gw)],
            &[],
            Some(&credential),
            &mut problems,
        );
        assert!(config.listeners.is_empty());
        let m = &problems[0].message;
        for needle in [
            "servers[0].tls.subjectAltNames, servers[0].tls.minProtocolVersion are not supported yet",
            "servers[1].tls.mode AUTO_PASSTHROUGH is not supported yet",
            "servers[2].tls.mode and credentialName apply to HTTPS servers",
        ] {
            assert!(m.contains(needle), "{needle} in {m}");
        }
    }
}
