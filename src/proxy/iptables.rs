//! Traffic capture for `weft-proxy init` (SPEC §5): the nat-table rules that send a pod's
//! inbound TCP to 15006 and its outbound TCP to 15001, with Istio's loopback and owner rules,
//! for IPv4 (`iptables`) and IPv6 (`ip6tables`) alike, and (opt-in) the pod's DNS to the
//! resolv.conf nameservers to the proxy's DNS port. `rules()` is pure (the table tests pin its
//! text); `apply()` feeds it to `iptables-restore` / `ip6tables-restore`.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::process::{Command, Stdio};

use crate::contract::{
    INBOUND_PASSTHROUGH_SOURCE, INBOUND_PASSTHROUGH_SOURCE_V6, PORT_DNS, PORT_INBOUND,
    PORT_OUTBOUND, PROXY_GID, PROXY_PORTS, PROXY_UID,
};

pub const CHAIN_INBOUND: &str = "WEFT_INBOUND";
pub const CHAIN_IN_REDIRECT: &str = "WEFT_IN_REDIRECT";
pub const CHAIN_OUTPUT: &str = "WEFT_OUTPUT";
pub const CHAIN_REDIRECT: &str = "WEFT_REDIRECT";
/// DNS capture (`--capture-dns`): the app's queries to its nameservers go to the proxy.
pub const CHAIN_DNS: &str = "WEFT_DNS";

/// The jumps from the built-in chains into ours; `apply` removes old copies before adding.
/// Written as `iptables-save` prints them, so an earlier run's copies are found by their text.
const JUMP_PREROUTING: &str = "-A PREROUTING -p tcp -j WEFT_INBOUND";
const JUMP_OUTPUT: &str = "-A OUTPUT -p tcp -j WEFT_OUTPUT";
const JUMP_DNS_UDP: &str = "-A OUTPUT -p udp -m udp --dport 53 -j WEFT_DNS";
const JUMP_DNS_TCP: &str = "-A OUTPUT -p tcp -m tcp --dport 53 -j WEFT_DNS";

/// CAP_NET_ADMIN's bit in `/proc/self/status` `CapEff`.
const CAP_NET_ADMIN_BIT: u32 = 12;

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("{flag}: {value:?} is not a port (1-65535)")]
    BadPort { flag: &'static str, value: String },
    #[error(
        "{flag}: {value:?} is not a CIDR such as 198.18.0.0/15 or fd00::/8 (an address alone means one host)"
    )]
    BadCidr { flag: &'static str, value: String },
    #[error(
        "{flag}: {value:?} is not an interface name (1-15 characters: a letter or digit, then letters, digits, '.', '_' or '-', optionally ending in '+' for a prefix)"
    )]
    BadInterface { flag: &'static str, value: String },
    #[error("{flag}: {value:?} is not one of auto, true, false")]
    BadIpv6 { flag: &'static str, value: String },
    #[error(
        "weft-init lacks the NET_ADMIN capability: the init container must run as UID 0 with capabilities NET_ADMIN and NET_RAW (check the pod's securityContext and Pod Security level)"
    )]
    MissingNetAdmin,
    #[error("could not run {program}: {source} (is iptables installed in the proxy image?)")]
    Spawn {
        program: &'static str,
        source: std::io::Error,
    },
    #[error("{program} failed: {stderr}")]
    Failed {
        program: &'static str,
        stderr: String,
    },
    #[error(
        "cannot add {address} to lo for the IPv6 inbound passthrough: {source} (set --ipv6=false if the pod has no IPv6)"
    )]
    LoopbackAddress {
        address: Ipv6Addr,
        source: std::io::Error,
    },
}

impl InitError {
    pub fn metric_label(&self) -> &'static str {
        match self {
            InitError::BadPort { .. } => "bad_port",
            InitError::BadCidr { .. } => "bad_cidr",
            InitError::BadInterface { .. } => "bad_interface",
            InitError::BadIpv6 { .. } => "bad_ipv6",
            InitError::MissingNetAdmin => "missing_net_admin",
            InitError::Spawn { .. } => "spawn",
            InitError::Failed { .. } => "failed",
            InitError::LoopbackAddress { .. } => "loopback_address",
        }
    }
}

/// Which inbound ports are captured (Istio's `includeInboundPorts`: `*`, empty, or a list).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InboundPorts {
    All,
    List(Vec<u16>),
}

/// Which outbound destinations are captured (Istio's `includeOutboundIPRanges`: `*`, empty, or
/// a list, each family taking its own CIDRs from it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutboundRanges {
    All,
    List(Vec<Cidr>),
}

/// An IPv4 or IPv6 network, normalised to its network address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// The two rule sets `apply` programs: `iptables` and `ip6tables`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    /// The loopback address of the app's own calls that are never captured.
    fn loopback(self) -> &'static str {
        match self {
            Family::V4 => "127.0.0.1/32",
            Family::V6 => "::1/128",
        }
    }

    fn passthrough_source(self) -> String {
        match self {
            Family::V4 => format!("{INBOUND_PASSTHROUGH_SOURCE}/32"),
            Family::V6 => format!("{INBOUND_PASSTHROUGH_SOURCE_V6}/128"),
        }
    }

    fn holds(self, cidr: &Cidr) -> bool {
        self.holds_ip(&cidr.addr)
    }

    fn holds_ip(self, ip: &IpAddr) -> bool {
        matches!(
            (self, ip),
            (Family::V4, IpAddr::V4(_)) | (Family::V6, IpAddr::V6(_))
        )
    }

    fn save(self) -> &'static str {
        match self {
            Family::V4 => "iptables-save",
            Family::V6 => "ip6tables-save",
        }
    }

    fn restore(self) -> &'static str {
        match self {
            Family::V4 => "iptables-restore",
            Family::V6 => "ip6tables-restore",
        }
    }
}

impl std::fmt::Display for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        })
    }
}

/// Whether `init` programs IPv6 capture too. `Auto` does when the kernel gives the pod IPv6:
/// left uncaptured, a pod's IPv6 traffic would bypass the proxy and its policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ipv6Capture {
    Auto,
    On,
    Off,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitOptions {
    pub proxy_uid: u32,
    pub proxy_gid: u32,
    pub inbound_capture_port: u16,
    pub outbound_capture_port: u16,
    pub include_inbound_ports: InboundPorts,
    pub exclude_inbound_ports: Vec<u16>,
    pub exclude_outbound_ports: Vec<u16>,
    pub exclude_outbound_ip_ranges: Vec<Cidr>,
    pub include_outbound_ip_ranges: OutboundRanges,
    pub include_outbound_ports: Vec<u16>,
    pub exclude_interfaces: Vec<String>,
    pub kubevirt_interfaces: Vec<String>,
    pub ipv6: Ipv6Capture,
    /// `--capture-dns`: the nameservers of the pod's resolv.conf whose port-53 traffic (UDP
    /// and TCP) from the app goes to `dns_capture_port`; empty: DNS is not captured.
    pub dns_servers: Vec<IpAddr>,
    pub dns_capture_port: u16,
}

impl Default for InitOptions {
    fn default() -> Self {
        InitOptions {
            proxy_uid: PROXY_UID,
            proxy_gid: PROXY_GID,
            inbound_capture_port: PORT_INBOUND,
            outbound_capture_port: PORT_OUTBOUND,
            include_inbound_ports: InboundPorts::All,
            exclude_inbound_ports: Vec::new(),
            exclude_outbound_ports: Vec::new(),
            exclude_outbound_ip_ranges: Vec::new(),
            include_outbound_ip_ranges: OutboundRanges::All,
            include_outbound_ports: Vec::new(),
            exclude_interfaces: Vec::new(),
            kubevirt_interfaces: Vec::new(),
            ipv6: Ipv6Capture::Auto,
            dns_servers: Vec::new(),
            dns_capture_port: PORT_DNS,
        }
    }
}

// === parsing the annotation values ===

/// A comma-separated port list as the annotations carry it; blanks are ignored.
pub fn parse_ports(flag: &'static str, value: &str) -> Result<Vec<u16>, InitError> {
    let mut ports = Vec::new();
    for item in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        match item.parse::<u16>() {
            Ok(p) if p != 0 => {
                if !ports.contains(&p) {
                    ports.push(p);
                }
            }
            _ => {
                return Err(InitError::BadPort {
                    flag,
                    value: item.to_string(),
                });
            }
        }
    }
    Ok(ports)
}

/// `*` captures every port, an empty value none, otherwise the listed ports.
pub fn parse_include_inbound(flag: &'static str, value: &str) -> Result<InboundPorts, InitError> {
    if value.trim() == "*" {
        Ok(InboundPorts::All)
    } else {
        Ok(InboundPorts::List(parse_ports(flag, value)?))
    }
}

/// `*` captures every destination, an empty value none, otherwise the listed ranges.
pub fn parse_include_outbound_ranges(
    flag: &'static str,
    value: &str,
) -> Result<OutboundRanges, InitError> {
    if value.trim() == "*" {
        Ok(OutboundRanges::All)
    } else {
        Ok(OutboundRanges::List(parse_cidrs(flag, value)?))
    }
}

/// Comma-separated CIDRs of either family; an address alone is one host.
pub fn parse_cidrs(flag: &'static str, value: &str) -> Result<Vec<Cidr>, InitError> {
    let mut out = Vec::new();
    for item in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let bad = || InitError::BadCidr {
            flag,
            value: item.to_string(),
        };
        let (addr, prefix) = match item.split_once('/') {
            Some((a, p)) => (a, Some(p.parse::<u8>().map_err(|_| bad())?)),
            None => (item, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| bad())?;
        // Normalise to the network address: iptables would, and the printed rules then match
        // what iptables-save shows.
        let cidr = match addr {
            IpAddr::V4(a) => {
                let prefix = prefix.unwrap_or(32);
                if prefix > 32 {
                    return Err(bad());
                }
                let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
                Cidr {
                    addr: IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask)),
                    prefix,
                }
            }
            IpAddr::V6(a) => {
                let prefix = prefix.unwrap_or(128);
                if prefix > 128 {
                    return Err(bad());
                }
                let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
                Cidr {
                    addr: IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask)),
                    prefix,
                }
            }
        };
        if !out.contains(&cidr) {
            out.push(cidr);
        }
    }
    Ok(out)
}

/// Comma-separated interface names.
pub fn parse_interfaces(flag: &'static str, value: &str) -> Result<Vec<String>, InitError> {
    let mut out: Vec<String> = Vec::new();
    for item in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        if !crate::contract::is_interface_name(item) {
            return Err(InitError::BadInterface {
                flag,
                value: item.to_string(),
            });
        }
        if !out.iter().any(|i| i == item) {
            out.push(item.to_string());
        }
    }
    Ok(out)
}

pub fn parse_ipv6(flag: &'static str, value: &str) -> Result<Ipv6Capture, InitError> {
    match value.trim() {
        "auto" | "" => Ok(Ipv6Capture::Auto),
        "true" => Ok(Ipv6Capture::On),
        "false" => Ok(Ipv6Capture::Off),
        other => Err(InitError::BadIpv6 {
            flag,
            value: other.to_string(),
        }),
    }
}

// === the rules ===

/// The nat table of one family in `iptables-restore` format. Chain declarations flush our own
/// chains when restored with `--noflush`, so applying the same text twice leaves one copy.
/// IPv6 mirrors IPv4 with `::1` for `127.0.0.1`, `::6` for `127.0.0.6` and the IPv6 ranges.
pub fn rules(opts: &InitOptions, family: Family) -> String {
    let mut r = String::new();
    let uid = opts.proxy_uid;
    let gid = opts.proxy_gid;
    let loopback = family.loopback();
    let _ = writeln!(r, "*nat");
    let dns_servers: Vec<&IpAddr> = opts
        .dns_servers
        .iter()
        .filter(|ip| family.holds_ip(ip))
        .collect();
    for chain in [
        CHAIN_INBOUND,
        CHAIN_IN_REDIRECT,
        CHAIN_OUTPUT,
        CHAIN_REDIRECT,
    ] {
        let _ = writeln!(r, ":{chain} - [0:0]");
    }
    if !dns_servers.is_empty() {
        let _ = writeln!(r, ":{CHAIN_DNS} - [0:0]");
    }
    let _ = writeln!(
        r,
        "-A {CHAIN_IN_REDIRECT} -p tcp -j REDIRECT --to-ports {}",
        opts.inbound_capture_port
    );
    let _ = writeln!(
        r,
        "-A {CHAIN_REDIRECT} -p tcp -j REDIRECT --to-ports {}",
        opts.outbound_capture_port
    );

    // Inbound: the proxy's own ports are never captured; then either every port but the
    // excluded ones, or only the listed ones.
    let inbound_capture =
        !matches!(&opts.include_inbound_ports, InboundPorts::List(l) if l.is_empty());
    if inbound_capture || !opts.kubevirt_interfaces.is_empty() {
        let _ = writeln!(r, "{JUMP_PREROUTING}");
    }
    for iface in &opts.exclude_interfaces {
        let _ = writeln!(r, "-A {CHAIN_INBOUND} -i {iface} -j RETURN");
    }
    // A VM inside the pod (KubeVirt) sends its traffic in through these interfaces: it is the
    // pod's outbound traffic, captured as the pod's own would be (Istio's rules); what the
    // include ranges leave out goes on uncaptured instead of into inbound capture.
    for iface in &opts.kubevirt_interfaces {
        match &opts.include_outbound_ip_ranges {
            OutboundRanges::All => {
                let _ = writeln!(r, "-A {CHAIN_INBOUND} -i {iface} -j {CHAIN_REDIRECT}");
            }
            OutboundRanges::List(cidrs) => {
                for cidr in cidrs.iter().filter(|c| family.holds(c)) {
                    let _ = writeln!(
                        r,
                        "-A {CHAIN_INBOUND} -d {cidr} -i {iface} -j {CHAIN_REDIRECT}"
                    );
                }
                let _ = writeln!(r, "-A {CHAIN_INBOUND} -i {iface} -j RETURN");
            }
        }
    }
    if inbound_capture {
        match &opts.include_inbound_ports {
            InboundPorts::All => {
                let mut excluded: Vec<u16> = PROXY_PORTS.to_vec();
                for p in &opts.exclude_inbound_ports {
                    if !excluded.contains(p) {
                        excluded.push(*p);
                    }
                }
                for p in excluded {
                    let _ = writeln!(r, "-A {CHAIN_INBOUND} -p tcp -m tcp --dport {p} -j RETURN");
                }
                let _ = writeln!(r, "-A {CHAIN_INBOUND} -p tcp -j {CHAIN_IN_REDIRECT}");
            }
            InboundPorts::List(ports) => {
                for p in ports {
                    if PROXY_PORTS.contains(p) || opts.exclude_inbound_ports.contains(p) {
                        continue;
                    }
                    let _ = writeln!(
                        r,
                        "-A {CHAIN_INBOUND} -p tcp -m tcp --dport {p} -j {CHAIN_IN_REDIRECT}"
                    );
                }
            }
        }
    }

    // DNS (Istio's ISTIO_META_DNS_CAPTURE rules): the app's queries to the resolv.conf
    // nameservers, UDP and TCP, go to the proxy's DNS port; the proxy's own queries (its uid
    // or gid) and DNS to any other server go on as before. Before the TCP jump, so a TCP
    // query is redirected here and not to the outbound listener.
    if !dns_servers.is_empty() {
        let _ = writeln!(r, "{JUMP_DNS_UDP}");
        let _ = writeln!(r, "{JUMP_DNS_TCP}");
        let _ = writeln!(r, "-A {CHAIN_DNS} -m owner --uid-owner {uid} -j RETURN");
        let _ = writeln!(r, "-A {CHAIN_DNS} -m owner --gid-owner {gid} -j RETURN");
        for ip in &dns_servers {
            let host = match ip {
                IpAddr::V4(_) => 32,
                IpAddr::V6(_) => 128,
            };
            for proto in ["udp", "tcp"] {
                let _ = writeln!(
                    r,
                    "-A {CHAIN_DNS} -d {ip}/{host} -p {proto} -j REDIRECT --to-ports {}",
                    opts.dns_capture_port
                );
            }
        }
    }

    // Outbound, in Istio's order: excluded interfaces and ports first, then the loopback
    // rules, then the proxy's own traffic, then excluded ranges, then the included ports and
    // ranges.
    let _ = writeln!(r, "{JUMP_OUTPUT}");
    for iface in &opts.exclude_interfaces {
        let _ = writeln!(r, "-A {CHAIN_OUTPUT} -o {iface} -j RETURN");
    }
    for p in &opts.exclude_outbound_ports {
        let _ = writeln!(r, "-A {CHAIN_OUTPUT} -p tcp -m tcp --dport {p} -j RETURN");
    }
    // Connections the proxy forwards inbound to the app come from 127.0.0.6 (::6).
    let _ = writeln!(
        r,
        "-A {CHAIN_OUTPUT} -s {} -o lo -j RETURN",
        family.passthrough_source()
    );
    // The proxy calling its own pod (a Service that resolves to itself) goes through inbound
    // capture, so the pod's inbound policy applies to its own calls too.
    if inbound_capture {
        let _ = writeln!(
            r,
            "-A {CHAIN_OUTPUT} ! -d {loopback} -o lo -m owner --uid-owner {uid} -j {CHAIN_IN_REDIRECT}"
        );
    }
    let _ = writeln!(
        r,
        "-A {CHAIN_OUTPUT} -o lo -m owner ! --uid-owner {uid} -j RETURN"
    );
    let _ = writeln!(r, "-A {CHAIN_OUTPUT} -m owner --uid-owner {uid} -j RETURN");
    if inbound_capture {
        let _ = writeln!(
            r,
            "-A {CHAIN_OUTPUT} ! -d {loopback} -o lo -m owner --gid-owner {gid} -j {CHAIN_IN_REDIRECT}"
        );
    }
    let _ = writeln!(
        r,
        "-A {CHAIN_OUTPUT} -o lo -m owner ! --gid-owner {gid} -j RETURN"
    );
    let _ = writeln!(r, "-A {CHAIN_OUTPUT} -m owner --gid-owner {gid} -j RETURN");
    let _ = writeln!(r, "-A {CHAIN_OUTPUT} -d {loopback} -j RETURN");
    for cidr in opts
        .exclude_outbound_ip_ranges
        .iter()
        .filter(|c| family.holds(c))
    {
        let _ = writeln!(r, "-A {CHAIN_OUTPUT} -d {cidr} -j RETURN");
    }
    // Included ports are captured whatever the destination (Istio's includeOutboundPorts).
    for p in &opts.include_outbound_ports {
        let _ = writeln!(
            r,
            "-A {CHAIN_OUTPUT} -p tcp -m tcp --dport {p} -j {CHAIN_REDIRECT}"
        );
    }
    match &opts.include_outbound_ip_ranges {
        OutboundRanges::All => {
            let _ = writeln!(r, "-A {CHAIN_OUTPUT} -j {CHAIN_REDIRECT}");
        }
        // Only the listed ranges; the rest falls off the chain's end, uncaptured.
        OutboundRanges::List(cidrs) => {
            for cidr in cidrs.iter().filter(|c| family.holds(c)) {
                let _ = writeln!(r, "-A {CHAIN_OUTPUT} -d {cidr} -j {CHAIN_REDIRECT}");
            }
        }
    }
    let _ = writeln!(r, "COMMIT");
    r
}

/// The text given to `iptables-restore --noflush`: deletes of any jumps a previous run left
/// in PREROUTING/OUTPUT (found in `current`, the output of `iptables-save -t nat`), then the
/// rules. Our chains are flushed by their declarations.
pub fn restore_input(rules: &str, current: &str) -> String {
    let mut deletes = String::new();
    for line in current.lines().map(str::trim) {
        if [JUMP_PREROUTING, JUMP_OUTPUT, JUMP_DNS_UDP, JUMP_DNS_TCP].contains(&line) {
            let _ = writeln!(deletes, "-D{}", &line[2..]);
        }
    }
    match rules.split_once("*nat\n") {
        Some((before, after)) if !deletes.is_empty() => {
            // Declarations must come first in a table block; deletes of built-in chain rules
            // are fine right after them.
            let (decls, body): (Vec<&str>, Vec<&str>) =
                after.lines().partition(|l| l.starts_with(':'));
            let mut out = format!("{before}*nat\n");
            for d in decls {
                let _ = writeln!(out, "{d}");
            }
            out.push_str(&deletes);
            for b in body {
                let _ = writeln!(out, "{b}");
            }
            out
        }
        _ => rules.to_string(),
    }
}

/// The `nameserver` addresses of resolv.conf text, in order (what `--capture-dns` captures and
/// the proxy forwards to). Lines that are not a nameserver with an IP are skipped, as the C
/// library skips them; a link-local IPv6 zone (`fe80::1%eth0`) is not capturable and skipped.
pub fn resolv_conf_nameservers(text: &str) -> Vec<IpAddr> {
    let mut out = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        if words.next() != Some("nameserver") {
            continue;
        }
        if let Some(ip) = words.next().and_then(|w| w.parse::<IpAddr>().ok())
            && !out.contains(&ip)
        {
            out.push(ip);
        }
    }
    out
}

/// Whether `/proc/self/status` text shows CAP_NET_ADMIN in the effective set.
pub fn has_net_admin(proc_status: &str) -> Option<bool> {
    let hex = proc_status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))?
        .trim();
    let caps = u64::from_str_radix(hex, 16).ok()?;
    Some(caps & (1 << CAP_NET_ADMIN_BIT) != 0)
}

/// Whether this network namespace has IPv6: the kernel was built and booted with it, and it is
/// not switched off on `lo`.
pub fn ipv6_available() -> bool {
    std::path::Path::new("/proc/net/if_inet6").exists()
        && std::fs::read_to_string("/proc/sys/net/ipv6/conf/lo/disable_ipv6")
            .map(|v| v.trim() != "1")
            .unwrap_or(false)
}

/// The families `apply` programs, IPv4 first.
pub fn families(opts: &InitOptions) -> Vec<Family> {
    let v6 = match opts.ipv6 {
        Ipv6Capture::On => true,
        Ipv6Capture::Off => false,
        Ipv6Capture::Auto => ipv6_available(),
    };
    let mut families = vec![Family::V4];
    if v6 {
        families.push(Family::V6);
    }
    families
}

/// Programs the rules into the current network namespace, idempotently; for IPv6 also puts
/// `::6` on `lo` (the source of the proxy's inbound passthrough, which IPv6 lacks by itself).
/// Returns the rules applied, per family.
pub fn apply(opts: &InitOptions) -> Result<Vec<(Family, String)>, InitError> {
    if let Ok(status) = std::fs::read_to_string("/proc/self/status")
        && has_net_admin(&status) == Some(false)
    {
        return Err(InitError::MissingNetAdmin);
    }
    let mut applied = Vec::new();
    for family in families(opts) {
        if family == Family::V6 {
            let address: Ipv6Addr = INBOUND_PASSTHROUGH_SOURCE_V6
                .parse()
                .unwrap_or(Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 6));
            super::net::add_loopback_address(address).map_err(|source| {
                if source.kind() == std::io::ErrorKind::PermissionDenied {
                    InitError::MissingNetAdmin
                } else {
                    InitError::LoopbackAddress { address, source }
                }
            })?;
        }
        let current = run(family.save(), &["-t", "nat"], None)?;
        let text = rules(opts, family);
        run(
            family.restore(),
            &["--noflush"],
            Some(&restore_input(&text, &current)),
        )?;
        applied.push((family, text));
    }
    Ok(applied)
}

fn run(program: &'static str, args: &[&str], stdin: Option<&str>) -> Result<String, InitError> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| InitError::Spawn { program, source })?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes())
            .map_err(|source| InitError::Spawn { program, source })?;
    }
    let out = child
        .wait_with_output()
        .map_err(|source| InitError::Spawn { program, source })?;
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    if !out.status.success() {
        let lower = stderr.to_lowercase();
        if lower.contains("permission denied") || lower.contains("operation not permitted") {
            return Err(InitError::MissingNetAdmin);
        }
        return Err(InitError::Failed { program, stderr });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(opts: &InitOptions) -> Vec<String> {
        rules(opts, Family::V4)
            .lines()
            .map(str::to_string)
            .collect()
    }

    fn has(opts: &InitOptions, rule: &str) -> bool {
        lines(opts).iter().any(|l| l == rule)
    }

    fn position(opts: &InitOptions, rule: &str) -> usize {
        lines(opts)
            .iter()
            .position(|l| l == rule)
            .unwrap_or_else(|| panic!("missing rule {rule:?} in\n{}", rules(opts, Family::V4)))
    }

    #[test]
    fn default_rules_match_the_istio_shape() {
        let expected = "\
*nat
:WEFT_INBOUND - [0:0]
:WEFT_IN_REDIRECT - [0:0]
:WEFT_OUTPUT - [0:0]
:WEFT_REDIRECT - [0:0]
-A WEFT_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006
-A WEFT_REDIRECT -p tcp -j REDIRECT --to-ports 15001
-A PREROUTING -p tcp -j WEFT_INBOUND
-A WEFT_INBOUND -p tcp -m tcp --dport 15001 -j RETURN
-A WEFT_INBOUND -p tcp -m tcp --dport 15006 -j RETURN
-A WEFT_INBOUND -p tcp -m tcp --dport 15020 -j RETURN
-A WEFT_INBOUND -p tcp -m tcp --dport 15021 -j RETURN
-A WEFT_INBOUND -p tcp -m tcp --dport 15000 -j RETURN
-A WEFT_INBOUND -p tcp -j WEFT_IN_REDIRECT
-A OUTPUT -p tcp -j WEFT_OUTPUT
-A WEFT_OUTPUT -s 127.0.0.6/32 -o lo -j RETURN
-A WEFT_OUTPUT ! -d 127.0.0.1/32 -o lo -m owner --uid-owner 1337 -j WEFT_IN_REDIRECT
-A WEFT_OUTPUT -o lo -m owner ! --uid-owner 1337 -j RETURN
-A WEFT_OUTPUT -m owner --uid-owner 1337 -j RETURN
-A WEFT_OUTPUT ! -d 127.0.0.1/32 -o lo -m owner --gid-owner 1337 -j WEFT_IN_REDIRECT
-A WEFT_OUTPUT -o lo -m owner ! --gid-owner 1337 -j RETURN
-A WEFT_OUTPUT -m owner --gid-owner 1337 -j RETURN
-A WEFT_OUTPUT -d 127.0.0.1/32 -j RETURN
-A WEFT_OUTPUT -j WEFT_REDIRECT
COMMIT
";
        assert_eq!(rules(&InitOptions::default(), Family::V4), expected);
    }

    #[test]
    fn ipv6_rules_mirror_the_ipv4_ones() {
        let expected = "\
*nat
:WEFT_INBOUND - [0:0]
:WEFT_IN_REDIRECT - [0:0]
:WEFT_OUTPUT - [0:0]
:WEFT_REDIRECT - [0:0]
-A WEFT_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006
-A WEFT_REDIRECT -p tcp -j REDIRECT --to-ports 15001
-A PREROUTING -p tcp -j WEFT_INBOUND
-A WEFT_INBOUND -p tcp -m tcp --dport 15001 -j RETURN
-A WEFT_INBOUND -p tcp -m tcp --dport 15006 -j RETURN
-A WEFT_INBOUND -p tcp -m tcp --dport 15020 -j RETURN
-A WEFT_INBOUND -p tcp -m tcp --dport 15021 -j RETURN
-A WEFT_INBOUND -p tcp -m tcp --dport 15000 -j RETURN
-A WEFT_INBOUND -p tcp -j WEFT_IN_REDIRECT
-A OUTPUT -p tcp -j WEFT_OUTPUT
-A WEFT_OUTPUT -s ::6/128 -o lo -j RETURN
-A WEFT_OUTPUT ! -d ::1/128 -o lo -m owner --uid-owner 1337 -j WEFT_IN_REDIRECT
-A WEFT_OUTPUT -o lo -m owner ! --uid-owner 1337 -j RETURN
-A WEFT_OUTPUT -m owner --uid-owner 1337 -j RETURN
-A WEFT_OUTPUT ! -d ::1/128 -o lo -m owner --gid-owner 1337 -j WEFT_IN_REDIRECT
-A WEFT_OUTPUT -o lo -m owner ! --gid-owner 1337 -j RETURN
-A WEFT_OUTPUT -m owner --gid-owner 1337 -j RETURN
-A WEFT_OUTPUT -d ::1/128 -j RETURN
-A WEFT_OUTPUT -j WEFT_REDIRECT
COMMIT
";
        assert_eq!(rules(&InitOptions::default(), Family::V6), expected);
        // Each family takes its own ranges from a mixed list.
        let opts = InitOptions {
            exclude_outbound_ip_ranges: parse_cidrs("x", "198.18.0.0/16,fd00:7765:6674::/48")
                .unwrap(),
            ..InitOptions::default()
        };
        let v4 = rules(&opts, Family::V4);
        let v6 = rules(&opts, Family::V6);
        assert!(
            v4.contains("-A WEFT_OUTPUT -d 198.18.0.0/16 -j RETURN\n"),
            "{v4}"
        );
        assert!(!v4.contains("fd00"), "{v4}");
        assert!(
            v6.contains("-A WEFT_OUTPUT -d fd00:7765:6674::/48 -j RETURN\n"),
            "{v6}"
        );
        assert!(!v6.contains("198.18"), "{v6}");
    }

    #[test]
    fn include_outbound_ranges_and_ports_capture_only_what_they_name() {
        let opts = InitOptions {
            include_outbound_ip_ranges: parse_include_outbound_ranges(
                "x",
                "198.18.2.0/24, fd00:7765:6674::/64",
            )
            .unwrap(),
            include_outbound_ports: vec![8443],
            exclude_outbound_ip_ranges: parse_cidrs("x", "198.18.2.9").unwrap(),
            ..InitOptions::default()
        };
        let v4 = lines(&opts);
        let tail: Vec<&str> = v4
            .iter()
            .map(String::as_str)
            .skip_while(|l| *l != "-A WEFT_OUTPUT -d 127.0.0.1/32 -j RETURN")
            .collect();
        // Excludes first, then the included port, then the included range; no catch-all.
        assert_eq!(
            tail,
            [
                "-A WEFT_OUTPUT -d 127.0.0.1/32 -j RETURN",
                "-A WEFT_OUTPUT -d 198.18.2.9/32 -j RETURN",
                "-A WEFT_OUTPUT -p tcp -m tcp --dport 8443 -j WEFT_REDIRECT",
                "-A WEFT_OUTPUT -d 198.18.2.0/24 -j WEFT_REDIRECT",
                "COMMIT",
            ]
        );
        let v6 = rules(&opts, Family::V6);
        assert!(
            v6.contains("-A WEFT_OUTPUT -d fd00:7765:6674::/64 -j WEFT_REDIRECT\n")
                && !v6.contains("-A WEFT_OUTPUT -j WEFT_REDIRECT"),
            "{v6}"
        );
        // An empty include list captures no outbound traffic but the included ports.
        let none = InitOptions {
            include_outbound_ip_ranges: parse_include_outbound_ranges("x", "").unwrap(),
            include_outbound_ports: vec![8080],
            ..InitOptions::default()
        };
        let text = rules(&none, Family::V4);
        assert!(!text.contains("-A WEFT_OUTPUT -j WEFT_REDIRECT"), "{text}");
        assert!(!text.contains("-d 198"), "{text}");
        assert!(text.contains("-A WEFT_OUTPUT -p tcp -m tcp --dport 8080 -j WEFT_REDIRECT"));
        assert_eq!(
            parse_include_outbound_ranges("x", " * ").unwrap(),
            OutboundRanges::All
        );
    }

    #[test]
    fn excluded_interfaces_return_first_and_kubevirt_interfaces_are_outbound() {
        let opts = InitOptions {
            exclude_interfaces: parse_interfaces("x", "eth1, net+").unwrap(),
            kubevirt_interfaces: parse_interfaces("x", "vif0").unwrap(),
            ..InitOptions::default()
        };
        let first_inbound = position(&opts, "-A WEFT_INBOUND -i eth1 -j RETURN");
        assert!(first_inbound < position(&opts, "-A WEFT_INBOUND -i vif0 -j WEFT_REDIRECT"));
        assert!(
            position(&opts, "-A WEFT_INBOUND -i vif0 -j WEFT_REDIRECT")
                < position(
                    &opts,
                    "-A WEFT_INBOUND -p tcp -m tcp --dport 15001 -j RETURN"
                )
        );
        assert!(has(&opts, "-A WEFT_INBOUND -i net+ -j RETURN"));
        assert!(
            position(&opts, "-A WEFT_OUTPUT -o eth1 -j RETURN")
                < position(&opts, "-A WEFT_OUTPUT -s 127.0.0.6/32 -o lo -j RETURN")
        );
        // KubeVirt traffic follows the include ranges; the rest leaves uncaptured.
        let ranged = InitOptions {
            include_outbound_ip_ranges: parse_include_outbound_ranges("x", "198.18.2.0/24")
                .unwrap(),
            ..opts.clone()
        };
        assert!(has(
            &ranged,
            "-A WEFT_INBOUND -d 198.18.2.0/24 -i vif0 -j WEFT_REDIRECT"
        ));
        assert!(
            position(
                &ranged,
                "-A WEFT_INBOUND -d 198.18.2.0/24 -i vif0 -j WEFT_REDIRECT"
            ) < position(&ranged, "-A WEFT_INBOUND -i vif0 -j RETURN")
        );
        // With no inbound capture, the PREROUTING jump stays for the VM's traffic alone.
        let vm_only = InitOptions {
            include_inbound_ports: InboundPorts::List(vec![]),
            kubevirt_interfaces: vec!["vif0".into()],
            ..InitOptions::default()
        };
        assert!(has(&vm_only, JUMP_PREROUTING));
        assert!(!has(&vm_only, "-A WEFT_INBOUND -p tcp -j WEFT_IN_REDIRECT"));
        assert!(!has(
            &InitOptions {
                include_inbound_ports: InboundPorts::List(vec![]),
                ..InitOptions::default()
            },
            JUMP_PREROUTING
        ));
    }

    #[test]
    fn interface_names_and_the_ipv6_switch_are_validated() {
        assert_eq!(
            parse_interfaces("f", "eth0,,veth+ ,eth0").unwrap(),
            vec!["eth0".to_string(), "veth+".to_string()]
        );
        for bad in [
            "a b",
            "eth0/1",
            "..",
            "+eth",
            "abcdefghijklmnop",
            "eth:0",
            "-j",
        ] {
            assert!(
                matches!(
                    parse_interfaces("f", bad),
                    Err(InitError::BadInterface { .. })
                ),
                "{bad}"
            );
        }
        assert_eq!(parse_ipv6("f", "auto").unwrap(), Ipv6Capture::Auto);
        assert_eq!(parse_ipv6("f", "false").unwrap(), Ipv6Capture::Off);
        assert_eq!(parse_ipv6("f", "true").unwrap(), Ipv6Capture::On);
        assert!(parse_ipv6("f", "yes").is_err());
        let off = InitOptions {
            ipv6: Ipv6Capture::Off,
            ..InitOptions::default()
        };
        assert_eq!(families(&off), vec![Family::V4]);
        let on = InitOptions {
            ipv6: Ipv6Capture::On,
            ..InitOptions::default()
        };
        assert_eq!(families(&on), vec![Family::V4, Family::V6]);
        assert_eq!(
            parse_cidrs("f", "fd00:7765:6674::1/64").unwrap(),
            vec![Cidr {
                addr: "fd00:7765:6674::".parse().unwrap(),
                prefix: 64
            }]
        );
    }

    #[test]
    fn annotation_flags_shape_the_rules() {
        struct Case {
            name: &'static str,
            opts: InitOptions,
            present: &'static [&'static str],
            absent: &'static [&'static str],
        }
        let d = InitOptions::default;
        let cases = [
            Case {
                name: "excluded inbound ports return before capture",
                opts: InitOptions {
                    exclude_inbound_ports: vec![8080, 9090],
                    ..d()
                },
                present: &[
                    "-A WEFT_INBOUND -p tcp -m tcp --dport 8080 -j RETURN",
                    "-A WEFT_INBOUND -p tcp -m tcp --dport 9090 -j RETURN",
                ],
                absent: &[],
            },
            Case {
                name: "an include list captures only those ports",
                opts: InitOptions {
                    include_inbound_ports: InboundPorts::List(vec![80, 15020, 8080]),
                    exclude_inbound_ports: vec![8080],
                    ..d()
                },
                present: &["-A WEFT_INBOUND -p tcp -m tcp --dport 80 -j WEFT_IN_REDIRECT"],
                absent: &[
                    "-A WEFT_INBOUND -p tcp -j WEFT_IN_REDIRECT",
                    "-A WEFT_INBOUND -p tcp -m tcp --dport 15020 -j WEFT_IN_REDIRECT",
                    "-A WEFT_INBOUND -p tcp -m tcp --dport 8080 -j WEFT_IN_REDIRECT",
                ],
            },
            Case {
                name: "an empty include list captures no inbound traffic",
                opts: InitOptions {
                    include_inbound_ports: InboundPorts::List(vec![]),
                    ..d()
                },
                present: &["-A OUTPUT -p tcp -j WEFT_OUTPUT"],
                absent: &[
                    "-A PREROUTING -p tcp -j WEFT_INBOUND",
                    "-A WEFT_OUTPUT ! -d 127.0.0.1/32 -o lo -m owner --uid-owner 1337 -j WEFT_IN_REDIRECT",
                ],
            },
            Case {
                name: "excluded outbound ports and ranges return",
                opts: InitOptions {
                    exclude_outbound_ports: vec![5432],
                    exclude_outbound_ip_ranges: parse_cidrs("x", "198.18.0.0/16, 198.19.3.4")
                        .unwrap(),
                    ..d()
                },
                present: &[
                    "-A WEFT_OUTPUT -p tcp -m tcp --dport 5432 -j RETURN",
                    "-A WEFT_OUTPUT -d 198.18.0.0/16 -j RETURN",
                    "-A WEFT_OUTPUT -d 198.19.3.4/32 -j RETURN",
                ],
                absent: &[],
            },
            Case {
                name: "another proxy uid",
                opts: InitOptions {
                    proxy_uid: 2000,
                    ..d()
                },
                present: &["-A WEFT_OUTPUT -m owner --uid-owner 2000 -j RETURN"],
                absent: &["-A WEFT_OUTPUT -m owner --uid-owner 1337 -j RETURN"],
            },
        ];
        for case in cases {
            for rule in case.present {
                assert!(has(&case.opts, rule), "{}: missing {rule}", case.name);
            }
            for rule in case.absent {
                assert!(!has(&case.opts, rule), "{}: unexpected {rule}", case.name);
            }
        }
    }

    #[test]
    fn exclusions_come_before_the_catch_all_redirects() {
        let opts = InitOptions {
            exclude_inbound_ports: vec![8080],
            exclude_outbound_ports: vec![5432],
            exclude_outbound_ip_ranges: parse_cidrs("x", "198.18.0.0/16").unwrap(),
            ..InitOptions::default()
        };
        assert!(
            position(
                &opts,
                "-A WEFT_INBOUND -p tcp -m tcp --dport 8080 -j RETURN"
            ) < position(&opts, "-A WEFT_INBOUND -p tcp -j WEFT_IN_REDIRECT")
        );
        let catch_all = position(&opts, "-A WEFT_OUTPUT -j WEFT_REDIRECT");
        assert!(position(&opts, "-A WEFT_OUTPUT -p tcp -m tcp --dport 5432 -j RETURN") < catch_all);
        assert!(position(&opts, "-A WEFT_OUTPUT -d 198.18.0.0/16 -j RETURN") < catch_all);
        // The passthrough source must return before the proxy-UID loopback redirect.
        assert!(
            position(&opts, "-A WEFT_OUTPUT -s 127.0.0.6/32 -o lo -j RETURN")
                < position(
                    &opts,
                    "-A WEFT_OUTPUT ! -d 127.0.0.1/32 -o lo -m owner --uid-owner 1337 -j WEFT_IN_REDIRECT"
                )
        );
    }

    #[test]
    fn annotation_values_are_validated() {
        assert_eq!(parse_ports("f", " 80, 443,,80 ").unwrap(), vec![80, 443]);
        assert_eq!(parse_ports("f", "").unwrap(), Vec::<u16>::new());
        for bad in ["0", "65536", "http", "-1"] {
            assert!(
                matches!(parse_ports("f", bad), Err(InitError::BadPort { .. })),
                "{bad}"
            );
        }
        assert_eq!(parse_include_inbound("f", "*").unwrap(), InboundPorts::All);
        assert_eq!(
            parse_include_inbound("f", "").unwrap(),
            InboundPorts::List(vec![])
        );
        assert_eq!(
            parse_cidrs("f", "198.18.2.3/15").unwrap(),
            vec![Cidr {
                addr: IpAddr::V4(Ipv4Addr::new(198, 18, 0, 0)),
                prefix: 15
            }]
        );
        for bad in [
            "198.18.0.0/33",
            "fd00::/129",
            "nope",
            "198.18.0/15",
            "fd00::/x",
        ] {
            assert!(
                matches!(parse_cidrs("f", bad), Err(InitError::BadCidr { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn restore_input_deletes_jumps_left_by_an_earlier_run() {
        let text = rules(&InitOptions::default(), Family::V4);
        assert_eq!(restore_input(&text, "*nat\nCOMMIT\n"), text);
        let current =
            format!("*nat\n:PREROUTING ACCEPT [0:0]\n{JUMP_PREROUTING}\n{JUMP_OUTPUT}\nCOMMIT\n");
        let input = restore_input(&text, &current);
        let l: Vec<&str> = input.lines().collect();
        let del_pre = l
            .iter()
            .position(|x| *x == "-D PREROUTING -p tcp -j WEFT_INBOUND")
            .unwrap();
        let del_out = l
            .iter()
            .position(|x| *x == "-D OUTPUT -p tcp -j WEFT_OUTPUT")
            .unwrap();
        let last_decl = l.iter().rposition(|x| x.starts_with(':')).unwrap();
        let add_pre = l.iter().position(|x| *x == JUMP_PREROUTING).unwrap();
        assert!(last_decl < del_pre && del_pre < add_pre && del_out < add_pre);
        assert_eq!(l.last(), Some(&"COMMIT"));
    }

    #[test]
    fn dns_capture_redirects_the_apps_queries_to_its_nameservers_only() {
        let ns = resolv_conf_nameservers(
            "search payments.svc.cluster.local svc.cluster.local\nnameserver 198.19.0.10\n\
             nameserver fd00:7765::a\nnameserver bogus\n# nameserver 198.19.0.99\n\
             nameserver 198.19.0.10\noptions ndots:5\n",
        );
        assert_eq!(
            ns,
            vec![
                "198.19.0.10".parse::<IpAddr>().unwrap(),
                "fd00:7765::a".parse().unwrap()
            ]
        );
        let opts = InitOptions {
            dns_servers: ns,
            ..InitOptions::default()
        };
        let dns: Vec<String> = lines(&opts)
            .into_iter()
            .filter(|l| l.contains("WEFT_DNS") || l.contains("--dport 53"))
            .collect();
        assert_eq!(
            dns,
            [
                ":WEFT_DNS - [0:0]",
                "-A OUTPUT -p udp -m udp --dport 53 -j WEFT_DNS",
                "-A OUTPUT -p tcp -m tcp --dport 53 -j WEFT_DNS",
                "-A WEFT_DNS -m owner --uid-owner 1337 -j RETURN",
                "-A WEFT_DNS -m owner --gid-owner 1337 -j RETURN",
                "-A WEFT_DNS -d 198.19.0.10/32 -p udp -j REDIRECT --to-ports 15053",
                "-A WEFT_DNS -d 198.19.0.10/32 -p tcp -j REDIRECT --to-ports 15053",
            ]
        );
        // TCP DNS is decided before the outbound capture's jump.
        assert!(position(&opts, JUMP_DNS_TCP) < position(&opts, JUMP_OUTPUT));
        // Each family redirects its own nameservers; none of a family: no DNS rules there.
        let v6 = rules(&opts, Family::V6);
        assert!(
            v6.contains("-A WEFT_DNS -d fd00:7765::a/128 -p udp -j REDIRECT --to-ports 15053\n")
                && !v6.contains("198.19"),
            "{v6}"
        );
        let v4_only = InitOptions {
            dns_servers: vec!["198.19.0.10".parse().unwrap()],
            ..InitOptions::default()
        };
        assert!(!rules(&v4_only, Family::V6).contains("WEFT_DNS"));
        // Off by default: the golden default rules above have no DNS line.
        assert!(!rules(&InitOptions::default(), Family::V4).contains("53"));
        // A second run removes the first run's DNS jumps before adding its own.
        let text = rules(&opts, Family::V4);
        let current = format!("*nat\n{JUMP_DNS_UDP}\n{JUMP_DNS_TCP}\n{JUMP_OUTPUT}\nCOMMIT\n");
        let input = restore_input(&text, &current);
        assert!(input.contains("-D OUTPUT -p udp -m udp --dport 53 -j WEFT_DNS\n"));
        assert!(input.contains("-D OUTPUT -p tcp -m tcp --dport 53 -j WEFT_DNS\n"));
    }

    #[test]
    fn net_admin_is_read_from_the_effective_capabilities() {
        assert_eq!(
            has_net_admin("Name:\tx\nCapEff:\t000001ffffffffff\n"),
            Some(true)
        );
        assert_eq!(has_net_admin("CapEff:\t0000000000000000\n"), Some(false));
        assert_eq!(has_net_admin("CapEff:\t0000000000001000\n"), Some(true));
        assert_eq!(has_net_admin("nothing"), None);
    }
}
