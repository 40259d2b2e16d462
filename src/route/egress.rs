//! Egress, kube-free: Istio's `ServiceEntry` (`networking.istio.io/v1`) read strictly and
//! compiled into the table of declared external services a proxy carries, and the pure
//! decision the proxy makes for an outbound connection to an address no Service owns:
//! declared (by address, HTTP Host or TLS SNI), passed through (ALLOW_ANY) or black-holed
//! (REGISTRY_ONLY). docs/egress.md says which Istio semantics are followed and where not.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::snapshot::{Endpoint, OutboundPolicy};

pub const SERVICE_ENTRY: &str = "ServiceEntry";
/// Istio's cluster names for traffic to undeclared destinations, used as
/// `destination_service_name` and in the access log's `upstream_cluster`.
pub const BLACK_HOLE: &str = "BlackHoleCluster";
pub const PASSTHROUGH: &str = "PassthroughCluster";

// === The spec, read strictly ===

/// A ServiceEntry's spec as Istio defines it; every field is kept so one weft does not
/// implement is named, never dropped.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceEntrySpec {
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default)]
    pub addresses: Vec<String>,
    #[serde(default)]
    pub ports: Vec<PortSpec>,
    #[serde(default)]
    pub location: Option<String>,
    #[serde(default)]
    pub resolution: Option<String>,
    #[serde(default)]
    pub endpoints: Vec<EndpointSpec>,
    #[serde(default)]
    pub workload_selector: Option<WorkloadSelectorSpec>,
    #[serde(default)]
    pub export_to: Option<Vec<String>>,
    #[serde(default)]
    pub subject_alt_names: Option<Value>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortSpec {
    pub number: u32,
    #[serde(default)]
    pub protocol: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub target_port: Option<u32>,
}

/// A `WorkloadEntry` inline in `endpoints`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EndpointSpec {
    #[serde(default)]
    pub address: Option<String>,
    #[serde(default)]
    pub ports: BTreeMap<String, u32>,
    #[serde(default)]
    pub labels: Option<Value>,
    #[serde(default)]
    pub network: Option<Value>,
    #[serde(default)]
    pub locality: Option<Value>,
    #[serde(default)]
    pub weight: Option<Value>,
    #[serde(default)]
    pub service_account: Option<Value>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadSelectorSpec {
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

// === The table a proxy carries ===

/// How the proxy treats a port of a declared service: by Host header, by SNI, or by address
/// only (Istio's protocols folded into the three ways a listener can tell hosts apart).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PortProtocol {
    /// HTTP, HTTP2, GRPC, GRPC-Web.
    Http,
    /// TLS, HTTPS: the ClientHello's server name picks the host.
    Tls,
    /// TCP and every other protocol: the address picks the entry.
    Tcp,
}

/// Istio's `resolution`: where declared traffic goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Resolution {
    /// To the address the app dialled.
    None,
    /// To the entry's endpoints.
    Static,
    /// Where the host resolves: a sidecar sends to the address the app dialled (the app's own
    /// lookup), or resolves the host when it was dialled at its allocated address; an egress
    /// gateway resolves the host itself (`proxy::external_dns`). With `endpoints`, the
    /// endpoints' names (or IPs) instead, whatever was dialled. docs/egress.md.
    Dns,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Location {
    MeshExternal,
    MeshInternal,
}

/// One declared host with its ports: what one ServiceEntry host becomes (Istio makes a
/// service per host, too).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExternalService {
    /// As declared, lowercase; `*.example.com` matches any name below example.com.
    pub host: String,
    /// The ServiceEntry's namespace: `destination_service_namespace`.
    pub namespace: String,
    /// `<namespace>/<name>` of the ServiceEntry, for `weft proxy-config` and logs.
    pub source: String,
    /// IPs and CIDRs the entry claims (`addresses`, and STATIC endpoint IPs).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<IpNet>,
    /// The address the operator gave this host when its entry has no `addresses` (Istio's DNS
    /// auto-allocation), from [`AUTO_ALLOCATE_RANGE`]: the proxy's DNS server answers it, and
    /// a connection to it is this host's. Absent for NONE and wildcard hosts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocated: Option<Ipv4Addr>,
    pub ports: Vec<ExternalPort>,
    pub resolution: Resolution,
    pub location: Location,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExternalPort {
    pub number: u16,
    pub protocol: PortProtocol,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// STATIC: where this port's traffic goes (`endpoints`, or the pods `workloadSelector`
    /// picks); empty: to the address the app dialled.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<Endpoint>,
    /// `targetPort`, where it differs from `number`: the port a DNS or NONE host is dialled on
    /// when the proxy originates TLS for it (Istio's TLS-origination form: the app calls
    /// `http://host:80`, the proxy sends TLS to `host:443`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_port: Option<u16>,
    /// `resolution: DNS` with `endpoints`: where this port's traffic goes, each endpoint's
    /// address (a DNS name, or an IP) on its port for this one. The proxy resolves the names
    /// through the pod's nameservers when it connects, as Envoy's STRICT_DNS cluster of the
    /// endpoints does; the host itself is not resolved then.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns_endpoints: Vec<DnsEndpoint>,
}

/// One endpoint of a `resolution: DNS` entry on one of its ports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DnsEndpoint {
    /// A DNS name (resolved when used) or an IP address (used as is).
    pub address: String,
    pub port: u16,
}

impl DnsEndpoint {
    /// The address when it is an IP, which needs no lookup.
    pub fn ip(&self) -> Option<IpAddr> {
        self.address.parse().ok()
    }
}

/// Which namespaces see an entry (`exportTo`; default every namespace, as Istio's
/// `defaultServiceExportTo`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Export {
    All,
    Namespaces(BTreeSet<String>),
}

impl Export {
    pub fn visible_in(&self, namespace: &str) -> bool {
        match self {
            Export::All => true,
            Export::Namespaces(n) => n.contains(namespace),
        }
    }
}

/// One ServiceEntry compiled: its services (a host each), who sees them, and the pod labels
/// its `workloadSelector` names (the caller fills the selected pods in as endpoints).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompiledEntry {
    pub services: Vec<ExternalService>,
    pub export: Export,
    pub selector: Option<BTreeMap<String, String>>,
    /// Port number -> target port, for the pods `workloadSelector` picks.
    pub target_ports: BTreeMap<u16, u16>,
    /// The entry declares `addresses` (then its hosts get no allocated address).
    pub has_addresses: bool,
}

/// Reads and validates one ServiceEntry as Istio's validation does (plus what weft does not
/// implement, by name). `Err`: every reason it is refused, each naming its field.
pub fn compile(namespace: &str, name: &str, raw: &Value) -> Result<CompiledEntry, Vec<String>> {
    let spec: ServiceEntrySpec =
        serde_json::from_value(raw.clone()).map_err(|e| vec![format!("spec: {e}")])?;
    let mut errs = Vec::new();
    let unsupported = [("subjectAltNames", spec.subject_alt_names.is_some())];
    for (field, set) in unsupported {
        if set {
            errs.push(format!("{field} is not supported by weft yet"));
        }
    }
    if spec.hosts.is_empty() {
        errs.push("hosts: a ServiceEntry must have at least one host".into());
    }
    let mut hosts = Vec::new();
    for (i, h) in spec.hosts.iter().enumerate() {
        let host = h.to_ascii_lowercase();
        if host == "*" {
            errs.push(format!("hosts[{i}]: invalid host *"));
        } else if !is_wildcard_domain(&host) {
            errs.push(format!(
                "hosts[{i}]: {h:?} is not a DNS name or a *.suffix wildcard"
            ));
        } else {
            hosts.push(host);
        }
    }
    let resolution = match spec.resolution.as_deref() {
        None | Some("NONE") => Resolution::None,
        Some("STATIC") => Resolution::Static,
        Some("DNS") | Some("DNS_ROUND_ROBIN") => Resolution::Dns,
        Some(other) => {
            errs.push(format!("resolution: unsupported resolution type {other}"));
            Resolution::None
        }
    };
    let location = match spec.location.as_deref() {
        None | Some("MESH_EXTERNAL") => Location::MeshExternal,
        Some("MESH_INTERNAL") => Location::MeshInternal,
        Some(other) => {
            errs.push(format!("location: unknown location {other}"));
            Location::MeshExternal
        }
    };
    let mut addresses = Vec::new();
    let mut cidr = false;
    for (i, a) in spec.addresses.iter().enumerate() {
        match parse_address(a) {
            Some(net) => {
                cidr |= a.contains('/');
                addresses.push(net);
            }
            None => errs.push(format!(
                "addresses[{i}]: {a:?} is not an IP address or CIDR"
            )),
        }
    }
    if cidr && !matches!(resolution, Resolution::None | Resolution::Static) {
        errs.push(
            "addresses: CIDR addresses are allowed only for NONE/STATIC resolution types".into(),
        );
    }
    let mut ports = Vec::new();
    let mut names = BTreeSet::new();
    let mut numbers = BTreeSet::new();
    let mut target_ports = BTreeMap::new();
    for (i, p) in spec.ports.iter().enumerate() {
        let at = format!("ports[{i}]");
        let Some(number) = u16::try_from(p.number).ok().filter(|n| *n > 0) else {
            errs.push(format!(
                "{at}.number: {} is not a port number (1-65535)",
                p.number
            ));
            continue;
        };
        if !numbers.insert(number) {
            errs.push(format!(
                "{at}.number: service entry port {number} already defined"
            ));
        }
        let name = p.name.clone().unwrap_or_default();
        if !name.is_empty() {
            if !is_dns_label(&name) {
                errs.push(format!("{at}.name: invalid port name: {name}"));
            }
            if !names.insert(name.clone()) {
                errs.push(format!(
                    "{at}.name: service entry port name {name:?} already defined"
                ));
            }
        }
        let protocol = match p
            .protocol
            .as_deref()
            .map(str::to_ascii_uppercase)
            .as_deref()
        {
            Some("HTTP" | "HTTP2" | "GRPC" | "GRPC-WEB") => PortProtocol::Http,
            Some("HTTPS" | "TLS") => PortProtocol::Tls,
            Some("TCP" | "MONGO" | "MYSQL" | "REDIS") | None => PortProtocol::Tcp,
            Some("UDP") => {
                errs.push(format!(
                    "{at}.protocol: UDP is not proxied (weft captures TCP only)"
                ));
                PortProtocol::Tcp
            }
            Some(_) => {
                errs.push(format!(
                    "{at}.protocol: unsupported protocol: {}",
                    p.protocol.as_deref().unwrap_or_default()
                ));
                PortProtocol::Tcp
            }
        };
        let target = match p.target_port {
            None => number,
            Some(t) => match u16::try_from(t).ok().filter(|t| *t > 0) {
                Some(t) => t,
                None => {
                    errs.push(format!(
                        "{at}.targetPort: {t} is not a port number (1-65535)"
                    ));
                    number
                }
            },
        };
        target_ports.insert(number, target);
        ports.push(ExternalPort {
            number,
            protocol,
            name,
            endpoints: Vec::new(),
            target_port: (target != number).then_some(target),
            dns_endpoints: Vec::new(),
        });
    }
    match resolution {
        Resolution::None if !spec.endpoints.is_empty() => {
            errs.push("endpoints: no endpoints should be provided for resolution type none".into());
        }
        Resolution::Static if spec.endpoints.is_empty() && spec.workload_selector.is_none() => {
            errs.push(
                "endpoints: endpoints must be provided if service entry resolution mode is static"
                    .into(),
            );
        }
        Resolution::Dns if spec.endpoints.is_empty() => {
            for (i, h) in hosts.iter().enumerate() {
                if h.starts_with('*') {
                    errs.push(format!(
                        "hosts[{i}]: hosts must be FQDN if no endpoints are provided for resolution mode DNS ({h})"
                    ));
                }
            }
        }
        _ => {}
    }
    if spec.workload_selector.is_some() && !spec.endpoints.is_empty() {
        errs.push("workloadSelector: only one of workloadSelector or endpoints is allowed in a ServiceEntry".into());
    }
    if spec.workload_selector.is_some() && resolution != Resolution::Static {
        errs.push(
            "workloadSelector: weft sends to the selected pods only with resolution STATIC".into(),
        );
    }
    // Plain TCP cannot tell hosts apart: several hosts need HTTP or TLS ports, unless the
    // hosts are ignored (NONE), as Istio's validation says.
    if resolution != Resolution::None
        && spec.hosts.len() > 1
        && ports.iter().any(|p| p.protocol == PortProtocol::Tcp)
    {
        errs.push("hosts: multiple hosts provided with non-HTTP, non-TLS ports".into());
    }
    for (i, ep) in spec.endpoints.iter().enumerate() {
        let at = format!("endpoints[{i}]");
        let unsupported = [
            ("labels", ep.labels.is_some()),
            ("network", ep.network.is_some()),
            ("locality", ep.locality.is_some()),
            ("weight", ep.weight.is_some()),
            ("serviceAccount", ep.service_account.is_some()),
        ];
        for (field, set) in unsupported {
            if set {
                errs.push(format!("{at}.{field} is not supported by weft yet"));
            }
        }
        let address = ep.address.as_deref().unwrap_or_default();
        let ip = address.parse::<IpAddr>().ok();
        if address.is_empty() {
            errs.push(format!("{at}.address is required"));
            continue;
        }
        // DNS: a name (resolved by the proxy) or an IP; STATIC: an IP (Istio's validation).
        let named = ip.is_none() && resolution == Resolution::Dns;
        if named && (address.starts_with("*.") || !is_wildcard_domain(address)) {
            errs.push(format!(
                "{at}.address: {address:?} is neither an IP address nor a DNS name"
            ));
            continue;
        }
        if ip.is_none() && !named {
            errs.push(format!(
                "{at}.address: {address:?} is not an IP address (with resolution STATIC endpoints are IPs; a name needs resolution DNS; unix sockets are not supported by weft)"
            ));
            continue;
        }
        for (pname, pnum) in &ep.ports {
            if !names.contains(pname) {
                errs.push(format!(
                    "{at}.ports: endpoint port {pnum} ({pname}) is not defined by the service entry"
                ));
            }
            if u16::try_from(*pnum).ok().filter(|n| *n > 0).is_none() {
                errs.push(format!(
                    "{at}.ports.{pname}: {pnum} is not a port number (1-65535)"
                ));
            }
        }
        // STATIC endpoint IPs are the entry's addresses too (a connection to one is this
        // entry's); a DNS entry's endpoints are only where its traffic goes.
        if resolution == Resolution::Static {
            addresses.extend(ip.map(IpNet::from));
        }
        for port in &mut ports {
            let target = ep
                .ports
                .get(&port.name)
                .and_then(|p| u16::try_from(*p).ok())
                .unwrap_or_else(|| {
                    target_ports
                        .get(&port.number)
                        .copied()
                        .unwrap_or(port.number)
                });
            let Some(ip) = ip.filter(|_| resolution == Resolution::Static) else {
                port.dns_endpoints.push(DnsEndpoint {
                    address: address.to_ascii_lowercase(),
                    port: target,
                });
                continue;
            };
            port.endpoints.push(Endpoint {
                ip,
                port: target,
                identity: None,
                meshed: false,
                mtls_mode_for_port: Default::default(),
                workload: None,
            });
        }
    }
    let export = match export_of(namespace, spec.export_to.as_deref()) {
        Ok(e) => e,
        Err(e) => {
            errs.push(e);
            Export::All
        }
    };
    if !errs.is_empty() {
        return Err(errs);
    }
    addresses.sort();
    addresses.dedup();
    let services = hosts
        .into_iter()
        .map(|host| ExternalService {
            host,
            namespace: namespace.to_string(),
            source: format!("{namespace}/{name}"),
            addresses: addresses.clone(),
            allocated: None,
            ports: ports.clone(),
            resolution,
            location,
        })
        .collect();
    Ok(CompiledEntry {
        services,
        export,
        selector: spec.workload_selector.map(|s| s.labels),
        target_ports,
        has_addresses: !spec.addresses.is_empty(),
    })
}

// === Address allocation (Istio's DNS auto-allocation) ===

/// Where auto-allocated addresses come from: 198.19.240.0/21, a slice of the benchmarking range
/// 198.18.0.0/15 (RFC 2544, never a real network) that the local cluster leaves unused (its
/// ClusterIPs are 198.19.0.0/17, its LoadBalancer pool 198.19.255.0/24). Istio uses
/// 240.240.0.0/16; docs/egress.md says why weft does not.
pub const AUTO_ALLOCATE_RANGE: (Ipv4Addr, u8) = (Ipv4Addr::new(198, 19, 240, 0), 21);

/// Whether a host gets an allocated address: an exact host (a wildcard has no one address) of
/// an entry without `addresses` whose resolution is not NONE (Istio allocates for the same).
pub fn wants_allocation(service: &ExternalService, entry_has_addresses: bool) -> bool {
    !entry_has_addresses && service.resolution != Resolution::None && !service.host.starts_with('*')
}

/// Gives each host of `hosts` an address of [`AUTO_ALLOCATE_RANGE`], deterministically: the same
/// set of hosts always gets the same addresses, whichever operator replica computes it (their
/// snapshots are content-hashed). Each host starts at a hash of its name and probes upwards to
/// the first free address, hosts taken in name order; the range's first and last addresses are
/// never given. More hosts than addresses: the rest get none (and resolve as before).
pub fn allocate(hosts: &BTreeSet<String>) -> BTreeMap<String, Ipv4Addr> {
    let (base, prefix) = AUTO_ALLOCATE_RANGE;
    let size = 1u32 << (32 - u32::from(prefix));
    let usable = size - 2;
    let mut taken = BTreeSet::new();
    let mut out = BTreeMap::new();
    for host in hosts {
        if taken.len() as u32 >= usable {
            break;
        }
        let mut slot = fnv1a(host.as_bytes()) % usable;
        while taken.contains(&slot) {
            slot = (slot + 1) % usable;
        }
        taken.insert(slot);
        out.insert(host.clone(), Ipv4Addr::from(u32::from(base) + 1 + slot));
    }
    out
}

/// FNV-1a, 32 bits: a stable hash (std's hasher may change between Rust releases, and every
/// replica and release must agree).
fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    })
}

/// `exportTo` as Istio reads it: `*` every namespace, `.` the entry's own, `~` none, else
/// namespace names; absent: every namespace.
fn export_of(namespace: &str, export_to: Option<&[String]>) -> Result<Export, String> {
    let Some(list) = export_to.filter(|l| !l.is_empty()) else {
        return Ok(Export::All);
    };
    let mut set = BTreeSet::new();
    for (i, e) in list.iter().enumerate() {
        match e.as_str() {
            "*" | "~" if list.len() > 1 => {
                return Err(format!(
                    "exportTo[{i}]: {e} must be the only value of exportTo"
                ));
            }
            "*" => return Ok(Export::All),
            "~" => return Ok(Export::Namespaces(BTreeSet::new())),
            "." => {
                set.insert(namespace.to_string());
            }
            ns if is_dns_label(ns) => {
                set.insert(ns.to_string());
            }
            other => {
                return Err(format!(
                    "exportTo[{i}]: {other:?} is not a namespace, '.', '*' or '~'"
                ));
            }
        }
    }
    Ok(Export::Namespaces(set))
}

fn parse_address(a: &str) -> Option<IpNet> {
    if a.contains('/') {
        a.parse::<IpNet>().ok().map(|n| n.trunc())
    } else {
        a.parse::<IpAddr>().ok().map(IpNet::from)
    }
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// A DNS name, or `*.` followed by one (Istio's `ValidateWildcardDomain`).
fn is_wildcard_domain(host: &str) -> bool {
    let name = host.strip_prefix("*.").unwrap_or(host);
    !name.is_empty()
        && host.len() <= 255
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        })
}

// === The decision ===

/// What the proxy learned of an outbound connection before deciding where it goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen<'a> {
    /// An HTTP request with this Host (or `:authority`), port included or not.
    Http(&'a str),
    /// A TLS ClientHello, with its server name if it sent one.
    Tls(Option<&'a str>),
    /// Nothing that names a host (other bytes, or none yet).
    Opaque,
}

/// A declared destination: the service and the port of it the connection matched.
#[derive(Debug, Clone, Copy)]
pub struct Declared<'a> {
    pub service: &'a ExternalService,
    pub port: &'a ExternalPort,
}

impl Declared<'_> {
    /// Where the connection goes: the entry's endpoints for STATIC, else where the app dialled.
    pub fn targets(&self, dst: SocketAddr) -> Vec<SocketAddr> {
        match self.service.resolution {
            Resolution::Static if !self.port.endpoints.is_empty() => {
                self.port.endpoints.iter().map(Endpoint::addr).collect()
            }
            _ => vec![dst],
        }
    }

    /// Where a request the proxy originates TLS for goes: the STATIC endpoints (on their
    /// ports), else where the app dialled on the port's `targetPort`.
    pub fn tls_targets(&self, dst: SocketAddr) -> Vec<SocketAddr> {
        match self.service.resolution {
            Resolution::Static if !self.port.endpoints.is_empty() => self.targets(dst),
            _ => vec![SocketAddr::new(
                dst.ip(),
                self.port.target_port.unwrap_or(dst.port()),
            )],
        }
    }

    /// The name the proxy must resolve (through the pod's upstream DNS) before it can relay:
    /// `resolution: DNS` without endpoints dialled at the host's allocated address, which
    /// leads nowhere itself (Envoy's STRICT_DNS cluster of the host does the same).
    pub fn resolves(&self, dst: SocketAddr) -> Option<&str> {
        let allocated = self.service.allocated.map(IpAddr::V4);
        (self.service.resolution == Resolution::Dns
            && self.port.dns_endpoints.is_empty()
            && allocated == Some(dst.ip()))
        .then_some(self.service.host.as_str())
    }

    /// `resolution: DNS` with endpoints: they, and not the address dialled, are where the
    /// connection goes (names resolved by the caller), whatever address the app dialled.
    pub fn dns_endpoints(&self) -> Option<&[DnsEndpoint]> {
        (self.service.resolution == Resolution::Dns && !self.port.dns_endpoints.is_empty())
            .then_some(&self.port.dns_endpoints[..])
    }
}

/// What happens to a connection to an address no Service owns.
#[derive(Debug, Clone, Copy)]
pub enum Verdict<'a> {
    Declared(Declared<'a>),
    /// ALLOW_ANY: on to where the app dialled, as `PassthroughCluster`.
    Passthrough,
    /// REGISTRY_ONLY: refused, as `BlackHoleCluster`.
    BlackHole,
}

/// The entry whose addresses hold `dst` on a port of its with `dst`'s number; Istio gives
/// such an entry its own `address:port` listener, which wins over host matching.
pub fn by_address(table: &[ExternalService], dst: SocketAddr) -> Option<Declared<'_>> {
    table.iter().find_map(|service| {
        let allocated = service.allocated.map(IpAddr::V4) == Some(dst.ip());
        if !allocated && !service.addresses.iter().any(|net| net.contains(&dst.ip())) {
            return None;
        }
        let port = service.ports.iter().find(|p| p.number == dst.port())?;
        Some(Declared { service, port })
    })
}

/// The entry a Host header or SNI names on `dst`'s port: exact names before wildcards, the
/// longest wildcard first (Envoy's virtual host and server name order).
pub fn by_name<'a>(
    table: &'a [ExternalService],
    dst: SocketAddr,
    seen: Seen<'_>,
) -> Option<Declared<'a>> {
    let (name, protocol) = match seen {
        Seen::Http(host) => (strip_port(host), PortProtocol::Http),
        Seen::Tls(Some(sni)) => (sni, PortProtocol::Tls),
        Seen::Tls(None) | Seen::Opaque => return None,
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    let mut best: Option<(usize, Declared<'a>)> = None;
    for service in table {
        let Some(rank) = host_rank(&service.host, &name) else {
            continue;
        };
        let Some(port) = service
            .ports
            .iter()
            .find(|p| p.number == dst.port() && p.protocol == protocol)
        else {
            continue;
        };
        if best.as_ref().is_none_or(|(r, _)| rank > *r) {
            best = Some((rank, Declared { service, port }));
        }
    }
    best.map(|(_, d)| d)
}

/// Whether a connection to `dst` can be named by Host or SNI at all: some entry has an HTTP
/// or TLS port with its number. Without one, the proxy need not read the client's bytes.
pub fn names_port(table: &[ExternalService], port: u16) -> bool {
    table.iter().any(|s| {
        s.ports
            .iter()
            .any(|p| p.number == port && p.protocol != PortProtocol::Tcp)
    })
}

/// The whole decision: address first, then the name, then the mesh's policy.
pub fn decide<'a>(
    table: &'a [ExternalService],
    policy: OutboundPolicy,
    dst: SocketAddr,
    seen: Seen<'_>,
) -> Verdict<'a> {
    match by_address(table, dst).or_else(|| by_name(table, dst, seen)) {
        Some(d) => Verdict::Declared(d),
        None => match policy {
            OutboundPolicy::AllowAny => Verdict::Passthrough,
            OutboundPolicy::RegistryOnly => Verdict::BlackHole,
        },
    }
}

/// What the proxy's DNS server answers for a name of its table, per family (an empty family is
/// NODATA: the name exists, without records of that type).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DnsAnswer {
    pub v4: Vec<Ipv4Addr>,
    pub v6: Vec<std::net::Ipv6Addr>,
}

/// The addresses of `name` (any case, trailing dot or not) in the table: the allocated address
/// of an exact host, else the single addresses (not CIDRs) its entry claims; exact hosts before
/// wildcards, as [`by_name`] ranks them. None: the table has nothing to answer (the query goes
/// to the pod's upstream DNS).
pub fn dns_answer(table: &[ExternalService], name: &str) -> Option<DnsAnswer> {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    let mut best: Option<(usize, DnsAnswer)> = None;
    for service in table {
        let Some(rank) = host_rank(&service.host, &name) else {
            continue;
        };
        let mut answer = DnsAnswer::default();
        if let Some(a) = service.allocated {
            answer.v4.push(a);
        } else {
            for net in service
                .addresses
                .iter()
                .filter(|n| n.prefix_len() == n.max_prefix_len())
            {
                match net.addr() {
                    IpAddr::V4(a) => answer.v4.push(a),
                    IpAddr::V6(a) => answer.v6.push(a),
                }
            }
        }
        if answer.v4.is_empty() && answer.v6.is_empty() {
            continue;
        }
        if best.as_ref().is_none_or(|(r, _)| rank > *r) {
            best = Some((rank, answer));
        }
    }
    best.map(|(_, a)| a)
}

/// How well `pattern` matches `name`: exact beats any wildcard, a longer wildcard beats a
/// shorter one; None: no match.
fn host_rank(pattern: &str, name: &str) -> Option<usize> {
    if pattern == name {
        return Some(usize::MAX);
    }
    let suffix = pattern.strip_prefix('*')?; // ".example.com"
    (name.len() > suffix.len() && name.ends_with(suffix)).then_some(suffix.len())
}

/// `host[:port]` or `[v6]:port` without the port.
fn strip_port(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if port.chars().all(|c| c.is_ascii_digit()) => host,
        _ => authority,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Seed 003 section 6, verbatim.
    fn seed_entry() -> Value {
        json!({
            "hosts": ["api.payments-partner.com"],
            "ports": [{"number": 443, "name": "tls", "protocol": "TLS"}],
            "resolution": "DNS",
            "location": "MESH_EXTERNAL"
        })
    }

    fn table(specs: &[(&str, Value)]) -> Vec<ExternalService> {
        specs
            .iter()
            .flat_map(|(name, spec)| compile("payments", name, spec).unwrap().services)
            .collect()
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn refused(spec: Value) -> String {
        compile("payments", "se", &spec).unwrap_err().join("; ")
    }

    #[test]
    fn the_seed_entry_compiles_to_one_tls_host_passed_to_where_the_app_dialled() {
        let c = compile("payments", "contoso-payments-api", &seed_entry()).unwrap();
        assert_eq!(c.export, Export::All);
        let [s] = c.services.as_slice() else {
            panic!("one host")
        };
        assert_eq!(s.host, "api.payments-partner.com");
        assert_eq!(s.namespace, "payments");
        assert_eq!(s.resolution, Resolution::Dns);
        assert_eq!(s.location, Location::MeshExternal);
        assert_eq!(s.ports[0].protocol, PortProtocol::Tls);
        let d = by_name(
            &c.services,
            addr("198.18.0.1:443"),
            Seen::Tls(Some("api.payments-partner.com")),
        )
        .unwrap();
        assert_eq!(
            d.targets(addr("198.18.0.1:443")),
            vec![addr("198.18.0.1:443")]
        );
    }

    #[test]
    fn istio_validation_refuses_what_istio_refuses_and_names_the_field() {
        let cases: &[(Value, &str)] = &[
            // The bad input: a wildcard host cannot be resolved by DNS.
            (
                json!({"hosts": ["*.payments-partner.com"], "ports": [{"number": 443, "name": "tls", "protocol": "TLS"}], "resolution": "DNS"}),
                "hosts[0]: hosts must be FQDN if no endpoints are provided for resolution mode DNS",
            ),
            (
                json!({"hosts": ["*"], "resolution": "NONE"}),
                "hosts[0]: invalid host *",
            ),
            (
                json!({"ports": [{"number": 80}]}),
                "hosts: a ServiceEntry must have at least one host",
            ),
            (
                json!({"hosts": ["a.com"], "resolution": "STATIC"}),
                "endpoints must be provided if service entry resolution mode is static",
            ),
            (
                json!({"hosts": ["a.com"], "endpoints": [{"address": "198.18.0.1"}]}),
                "no endpoints should be provided for resolution type none",
            ),
            (
                json!({"hosts": ["a.com"], "addresses": ["198.18.0.0/24"], "resolution": "DNS"}),
                "CIDR addresses are allowed only for NONE/STATIC",
            ),
            (
                json!({"hosts": ["a.com", "b.com"], "ports": [{"number": 5432, "name": "pg", "protocol": "TCP"}], "resolution": "DNS"}),
                "multiple hosts provided with non-HTTP, non-TLS ports",
            ),
            (
                json!({"hosts": ["a.com"], "ports": [{"number": 80, "name": "http"}, {"number": 80, "name": "web"}]}),
                "service entry port 80 already defined",
            ),
            (
                json!({"hosts": ["a.com"], "ports": [{"number": 70000}]}),
                "ports[0].number: 70000",
            ),
            (
                json!({"hosts": ["a.com"], "ports": [{"number": 53, "protocol": "UDP"}]}),
                "ports[0].protocol: UDP",
            ),
            (
                json!({"hosts": ["a.com"], "resolution": "MAGIC"}),
                "resolution: unsupported resolution type MAGIC",
            ),
            (
                json!({"hosts": ["a.com"], "exportTo": ["*", "."]}),
                "exportTo[0]",
            ),
            // A field weft does not implement is named, never dropped.
            (
                json!({"hosts": ["a.com"], "subjectAltNames": ["spiffe://x"]}),
                "subjectAltNames is not supported",
            ),
            (
                json!({"hosts": ["a.com"], "resolution": "STATIC", "ports": [{"number": 80, "name": "http"}],
                       "endpoints": [{"address": "198.18.0.1", "locality": "eu"}]}),
                "endpoints[0].locality is not supported",
            ),
            (
                json!({"hosts": ["a.com"], "typo": 1}),
                "unknown field `typo`",
            ),
            (
                json!({"hosts": ["a.com"], "resolution": "STATIC", "ports": [{"number": 80, "name": "http"}],
                       "endpoints": [{"address": "198.18.0.1", "ports": {"web": 8080}}]}),
                "endpoint port 8080 (web) is not defined by the service entry",
            ),
            // STATIC endpoints are IPs; a name needs DNS, and must be one.
            (
                json!({"hosts": ["a.com"], "resolution": "STATIC", "ports": [{"number": 80, "name": "http"}],
                       "endpoints": [{"address": "us.a.com"}]}),
                "endpoints[0].address: \"us.a.com\" is not an IP address (with resolution STATIC",
            ),
            (
                json!({"hosts": ["a.com"], "resolution": "DNS", "ports": [{"number": 80, "name": "http"}],
                       "endpoints": [{"address": "198.18.0.1"}, {"address": "not a name"}]}),
                "endpoints[1].address: \"not a name\" is neither an IP address nor a DNS name",
            ),
            (
                json!({"hosts": ["a.com"], "resolution": "DNS", "ports": [{"number": 80, "name": "http"}],
                       "endpoints": [{"address": "*.a.com"}]}),
                "endpoints[0].address: \"*.a.com\" is neither",
            ),
            (
                json!({"hosts": ["a.com"], "resolution": "DNS", "ports": [{"number": 80, "name": "http"}],
                       "endpoints": [{}]}),
                "endpoints[0].address is required",
            ),
        ];
        for (spec, expected) in cases {
            let got = refused(spec.clone());
            assert!(
                got.contains(expected),
                "{spec}: expected {expected:?} in {got:?}"
            );
        }
    }

    /// Istio's `external-svc-dns` example: `resolution: DNS` with endpoints given by name,
    /// each on its own port; the names (and an IP endpoint) are where the traffic goes, in
    /// order, whatever address the app dialled, and they claim no address.
    #[test]
    fn dns_endpoints_are_where_a_dns_entry_sends_whatever_was_dialled() {
        let entry = compile(
            "egress",
            "external-svc-dns",
            &json!({"hosts": ["foo.bar.com"], "location": "MESH_EXTERNAL",
                "ports": [{"number": 80, "name": "http", "protocol": "HTTP"}],
                "resolution": "DNS",
                "endpoints": [{"address": "us.foo.bar.com", "ports": {"http": 8080}},
                              {"address": "UK.foo.bar.com", "ports": {"http": 9080}},
                              {"address": "198.18.0.1"}]}),
        )
        .unwrap();
        let service = &entry.services[0];
        assert!(service.addresses.is_empty(), "{:?}", service.addresses);
        let port = &service.ports[0];
        assert!(port.endpoints.is_empty());
        let eps: Vec<(&str, u16)> = port
            .dns_endpoints
            .iter()
            .map(|e| (e.address.as_str(), e.port))
            .collect();
        assert_eq!(
            eps,
            [
                ("us.foo.bar.com", 8080),
                ("uk.foo.bar.com", 9080),
                ("198.18.0.1", 80)
            ]
        );
        assert_eq!(port.dns_endpoints[2].ip(), Some([198, 18, 0, 1].into()));
        assert_eq!(port.dns_endpoints[0].ip(), None);
        let d = Declared { service, port };
        let dialled: SocketAddr = "198.18.0.250:80".parse().unwrap();
        assert_eq!(d.dns_endpoints().map(<[_]>::len), Some(3));
        assert_eq!(d.resolves(dialled), None, "the host itself is not resolved");
        // Without endpoints nothing changes: the host is resolved when dialled at its
        // allocated address, and no endpoint list stands in.
        let mut bare = compile(
            "egress",
            "bare",
            &json!({"hosts": ["foo.bar.com"], "ports": [{"number": 80, "name": "http", "protocol": "HTTP"}],
                "resolution": "DNS"}),
        )
        .unwrap();
        let vip = Ipv4Addr::new(198, 19, 240, 9);
        bare.services[0].allocated = Some(vip);
        let d = Declared {
            service: &bare.services[0],
            port: &bare.services[0].ports[0],
        };
        assert_eq!(d.dns_endpoints(), None);
        assert_eq!(
            d.resolves(SocketAddr::new(vip.into(), 80)),
            Some("foo.bar.com")
        );
    }

    #[test]
    fn export_to_follows_istio() {
        let with = |e: Value| {
            compile(
                "payments",
                "se",
                &json!({"hosts": ["a.com"], "exportTo": e}),
            )
            .unwrap()
            .export
        };
        assert_eq!(with(json!(["*"])), Export::All);
        assert!(with(json!(["."])).visible_in("payments"));
        assert!(!with(json!(["."])).visible_in("shop"));
        assert!(!with(json!(["~"])).visible_in("payments"));
        let named = with(json!([".", "shop"]));
        assert!(
            named.visible_in("shop") && named.visible_in("payments") && !named.visible_in("other")
        );
    }

    #[test]
    fn http_is_matched_by_host_tls_by_sni_and_tcp_by_address() {
        let t = table(&[
            (
                "api",
                json!({"hosts": ["api.example.com"], "ports": [{"number": 80, "name": "http", "protocol": "HTTP"}], "resolution": "DNS"}),
            ),
            (
                "wild",
                json!({"hosts": ["*.example.com"], "ports": [{"number": 443, "name": "tls", "protocol": "TLS"}, {"number": 80, "name": "http", "protocol": "HTTP"}]}),
            ),
            (
                "db",
                json!({"hosts": ["db.example.com"], "addresses": ["198.18.7.0/24"], "ports": [{"number": 5432, "name": "pg", "protocol": "TCP"}]}),
            ),
            (
                "static",
                json!({"hosts": ["legacy.example.com"], "resolution": "STATIC",
                              "ports": [{"number": 9000, "name": "tcp", "protocol": "TCP", "targetPort": 9001}],
                              "endpoints": [{"address": "198.18.9.9"}, {"address": "198.18.9.10", "ports": {"tcp": 9100}}]}),
            ),
        ]);
        let on80 = addr("198.18.0.9:80");
        // Exact beats the wildcard; the port's number must match; the Host's port is ignored.
        let d = by_name(&t, on80, Seen::Http("API.example.com:80")).unwrap();
        assert_eq!(
            (d.service.host.as_str(), d.service.source.as_str()),
            ("api.example.com", "payments/api")
        );
        assert_eq!(
            by_name(&t, on80, Seen::Http("www.example.com"))
                .unwrap()
                .service
                .host,
            "*.example.com"
        );
        assert!(
            by_name(&t, on80, Seen::Http("example.com")).is_none(),
            "a wildcard needs a label before it"
        );
        assert!(by_name(&t, addr("198.18.0.9:8080"), Seen::Http("api.example.com")).is_none());
        // SNI on a TLS port; an HTTP port does not take TLS, nor a TLS port a Host.
        assert_eq!(
            by_name(
                &t,
                addr("198.18.0.9:443"),
                Seen::Tls(Some("pay.example.com"))
            )
            .unwrap()
            .service
            .host,
            "*.example.com"
        );
        assert!(by_name(&t, addr("198.18.0.9:443"), Seen::Tls(None)).is_none());
        assert!(by_name(&t, addr("198.18.0.9:443"), Seen::Http("pay.example.com")).is_none());
        assert!(by_name(&t, addr("198.18.0.9:443"), Seen::Tls(Some("example.org"))).is_none());
        // TCP by address (a CIDR), whatever the bytes; the port must be declared.
        let pg = addr("198.18.7.42:5432");
        assert_eq!(by_address(&t, pg).unwrap().service.host, "db.example.com");
        assert!(by_address(&t, addr("198.18.7.42:5433")).is_none());
        assert!(by_address(&t, addr("198.18.8.1:5432")).is_none());
        // STATIC: its endpoints are its addresses, and the traffic goes to them, on the
        // endpoint's own port for the port's name, else the targetPort.
        let d = by_address(&t, addr("198.18.9.10:9000")).unwrap();
        assert_eq!(
            d.targets(addr("198.18.9.10:9000")),
            vec![addr("198.18.9.9:9001"), addr("198.18.9.10:9100")]
        );
        assert!(names_port(&t, 443) && names_port(&t, 80) && !names_port(&t, 5432));
    }

    #[test]
    fn the_policy_decides_what_nothing_declares() {
        let t = table(&[("seed", seed_entry())]);
        let dst = addr("198.18.0.1:443");
        let declared = Seen::Tls(Some("api.payments-partner.com"));
        let other = Seen::Tls(Some("example.com"));
        for policy in [OutboundPolicy::AllowAny, OutboundPolicy::RegistryOnly] {
            assert!(matches!(
                decide(&t, policy, dst, declared),
                Verdict::Declared(_)
            ));
        }
        assert!(matches!(
            decide(&t, OutboundPolicy::AllowAny, dst, other),
            Verdict::Passthrough
        ));
        assert!(matches!(
            decide(&t, OutboundPolicy::RegistryOnly, dst, other),
            Verdict::BlackHole
        ));
        assert!(matches!(
            decide(&t, OutboundPolicy::RegistryOnly, dst, Seen::Opaque),
            Verdict::BlackHole
        ));
        assert!(matches!(
            decide(&[], OutboundPolicy::RegistryOnly, dst, Seen::Http("x")),
            Verdict::BlackHole
        ));
    }

    #[test]
    fn allocation_is_deterministic_inside_its_slice_and_never_collides() {
        let hosts: BTreeSet<String> = (0..3000).map(|i| format!("h{i}.example.com")).collect();
        let a = allocate(&hosts);
        // 2046 usable addresses in the /21: the rest get none.
        assert_eq!(a.len(), 2046);
        let net: IpNet = "198.19.240.0/21".parse().unwrap();
        let distinct: BTreeSet<_> = a.values().collect();
        assert_eq!(distinct.len(), a.len(), "two hosts share an address");
        for ip in a.values() {
            assert!(net.contains(&IpAddr::V4(*ip)), "{ip} outside the slice");
            assert!(
                *ip != Ipv4Addr::new(198, 19, 240, 0) && *ip != Ipv4Addr::new(198, 19, 247, 255)
            );
        }
        // The same set, the same answer; a host's address does not depend on unrelated hosts
        // unless they collide.
        let few: BTreeSet<String> = ["api.payments-partner.com".to_string()].into();
        let one = allocate(&few)["api.payments-partner.com"];
        assert_eq!(allocate(&few)["api.payments-partner.com"], one);
        let more: BTreeSet<String> = [
            "api.payments-partner.com".to_string(),
            "b.example.com".to_string(),
        ]
        .into();
        let two = allocate(&more);
        assert_eq!(two.len(), 2);
        assert_ne!(two["api.payments-partner.com"], two["b.example.com"]);
    }

    #[test]
    fn dns_answers_allocated_then_declared_addresses_and_maps_them_back() {
        let mut t = table(&[
            ("seed", seed_entry()),
            (
                "vip",
                json!({"hosts": ["db.example.com"], "addresses": ["198.18.7.1", "198.18.8.0/24", "fd00::7"],
                       "ports": [{"number": 5432, "name": "pg", "protocol": "TCP"}]}),
            ),
            (
                "wild",
                json!({"hosts": ["*.wild.example.com"], "addresses": ["198.18.9.1"],
                       "ports": [{"number": 80, "name": "http", "protocol": "HTTP"}]}),
            ),
            (
                "none",
                json!({"hosts": ["plain.example.com"], "ports": [{"number": 80, "name": "http", "protocol": "HTTP"}]}),
            ),
        ]);
        let compiled = compile("payments", "seed", &seed_entry()).unwrap();
        assert!(wants_allocation(&t[0], compiled.has_addresses));
        assert!(
            !wants_allocation(&t[3], false),
            "NONE is passed through, not allocated"
        );
        let vip = Ipv4Addr::new(198, 19, 240, 9);
        t[0].allocated = Some(vip);
        assert_eq!(
            dns_answer(&t, "API.payments-partner.com.").unwrap(),
            DnsAnswer {
                v4: vec![vip],
                v6: vec![]
            }
        );
        // Declared single addresses, per family; a CIDR is not an answer.
        let db = dns_answer(&t, "db.example.com").unwrap();
        assert_eq!(db.v4, vec![Ipv4Addr::new(198, 18, 7, 1)]);
        assert_eq!(
            db.v6,
            vec!["fd00::7".parse::<std::net::Ipv6Addr>().unwrap()]
        );
        assert_eq!(
            dns_answer(&t, "a.wild.example.com").unwrap().v4,
            vec![Ipv4Addr::new(198, 18, 9, 1)]
        );
        // Nothing to answer: upstream decides.
        assert!(dns_answer(&t, "plain.example.com").is_none());
        assert!(dns_answer(&t, "wild.example.com").is_none());
        assert!(dns_answer(&t, "example.org").is_none());
        // A connection to the allocated address is the host's, and must be resolved first.
        let dst = SocketAddr::new(IpAddr::V4(vip), 443);
        let d = by_address(&t, dst).unwrap();
        assert_eq!(d.service.host, "api.payments-partner.com");
        assert_eq!(d.resolves(dst), Some("api.payments-partner.com"));
        assert!(by_address(&t, SocketAddr::new(IpAddr::V4(vip), 80)).is_none());
        let by_sni = by_name(
            &t,
            addr("198.18.0.1:443"),
            Seen::Tls(Some("api.payments-partner.com")),
        )
        .unwrap();
        assert_eq!(
            by_sni.resolves(addr("198.18.0.1:443")),
            None,
            "dialled its real address"
        );
    }

    #[test]
    fn host_headers_of_every_shape_lose_their_port() {
        assert_eq!(strip_port("a.com:8080"), "a.com");
        assert_eq!(strip_port("a.com"), "a.com");
        assert_eq!(strip_port("[::1]:80"), "::1");
        assert_eq!(strip_port(""), "");
    }
}
