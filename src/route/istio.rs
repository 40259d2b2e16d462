//! Istio's `networking.istio.io/v1` DestinationRule and VirtualService, read strictly (an
//! unknown field is an error naming it) and compiled into route tables ([`super::model`]) for
//! mesh traffic. A field Istio has and weft does not implement yet is named in a
//! [`Problem`]: in a DestinationRule it is ignored and the subsets still apply (they change no
//! traffic by themselves); in a VirtualService the whole resource is not applied, since
//! routing without it would not be what the user wrote.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;
use serde_json::Value;

use super::action::{Actions, HeaderEdits};
use super::compile::{Problem, Registry, Source, SubsetLabels, by_age};
use super::istio_actions::{
    FaultSpec, HeadersSpec, RedirectSpec, RetrySpec, RewriteSpec, compile_actions, header_edits,
};
use super::l4::{L4Match, L4Route, L4Table};
use super::model::{
    ClientTls, Destination, HostPolicy, HttpRoute, MAX_DESTINATIONS, MAX_ROUTES, Origination,
    Pattern, RequestMatch, StringMatch,
};

pub const DESTINATION_RULE: &str = "DestinationRule";
pub const VIRTUAL_SERVICE: &str = "VirtualService";

// === DestinationRule ===

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DestinationRuleSpec {
    pub host: String,
    #[serde(default)]
    pub subsets: Vec<SubsetSpec>,
    #[serde(default)]
    pub traffic_policy: Option<TrafficPolicySpec>,
    #[serde(default)]
    pub export_to: Option<Vec<String>>,
    #[serde(default)]
    pub workload_selector: Option<Value>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SubsetSpec {
    pub name: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub traffic_policy: Option<TrafficPolicySpec>,
}

/// Only `tls.mode: ISTIO_MUTUAL` is implemented (it is what weft's auto-mTLS does to meshed
/// endpoints anyway); every other field is kept to be named.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrafficPolicySpec {
    #[serde(default)]
    pub tls: Option<TlsSpec>,
    #[serde(default)]
    pub load_balancer: Option<Value>,
    #[serde(default)]
    pub connection_pool: Option<Value>,
    #[serde(default)]
    pub outlier_detection: Option<Value>,
    #[serde(default)]
    pub port_level_settings: Option<Vec<PortTrafficPolicySpec>>,
    #[serde(default)]
    pub tunnel: Option<Value>,
    #[serde(default)]
    pub proxy_protocol: Option<Value>,
    #[serde(default)]
    pub retry_budget: Option<Value>,
}

/// One of `portLevelSettings`: the policy fields a port may set.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortTrafficPolicySpec {
    #[serde(default)]
    pub port: Option<PortSelector>,
    #[serde(default)]
    pub load_balancer: Option<Value>,
    #[serde(default)]
    pub connection_pool: Option<Value>,
    #[serde(default)]
    pub outlier_detection: Option<Value>,
    #[serde(default)]
    pub tls: Option<TlsSpec>,
}

impl TrafficPolicySpec {
    /// This policy at Service port `port`, as Istio's `MergeTrafficPolicy` makes it: a
    /// `portLevelSettings` entry for the port replaces `loadBalancer`, `connectionPool`,
    /// `outlierDetection` and `tls` as a whole ("port level policies do not inherit").
    fn at_port(&self, port: u16) -> TrafficPolicySpec {
        let mut out = self.clone();
        out.port_level_settings = None;
        if let Some(p) = self
            .port_level_settings
            .iter()
            .flatten()
            .find(|p| p.port.as_ref().is_some_and(|n| n.number == u32::from(port)))
        {
            out.load_balancer = p.load_balancer.clone();
            out.connection_pool = p.connection_pool.clone();
            out.outlier_detection = p.outlier_detection.clone();
            out.tls = p.tls.clone();
        }
        out
    }

    /// A subset's policy over the rule's (each field the subset sets wins).
    fn over(&self, base: &TrafficPolicySpec) -> TrafficPolicySpec {
        TrafficPolicySpec {
            tls: self.tls.clone().or_else(|| base.tls.clone()),
            load_balancer: self
                .load_balancer
                .clone()
                .or_else(|| base.load_balancer.clone()),
            connection_pool: self
                .connection_pool
                .clone()
                .or_else(|| base.connection_pool.clone()),
            outlier_detection: self
                .outlier_detection
                .clone()
                .or_else(|| base.outlier_detection.clone()),
            port_level_settings: self.port_level_settings.clone(),
            tunnel: self.tunnel.clone().or_else(|| base.tunnel.clone()),
            proxy_protocol: self
                .proxy_protocol
                .clone()
                .or_else(|| base.proxy_protocol.clone()),
            retry_budget: self
                .retry_budget
                .clone()
                .or_else(|| base.retry_budget.clone()),
        }
    }

    /// The ports its `portLevelSettings` name.
    fn ports(&self) -> impl Iterator<Item = u16> + '_ {
        self.port_level_settings
            .iter()
            .flatten()
            .filter_map(|p| u16::try_from(p.port.as_ref()?.number).ok())
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsSpec {
    #[serde(default)]
    pub mode: Option<String>,
    #[serde(default)]
    pub client_certificate: Option<Value>,
    #[serde(default)]
    pub private_key: Option<Value>,
    #[serde(default)]
    pub ca_certificates: Option<Value>,
    #[serde(default)]
    pub credential_name: Option<Value>,
    #[serde(default)]
    pub subject_alt_names: Option<Value>,
    #[serde(default)]
    pub sni: Option<Value>,
    #[serde(default)]
    pub insecure_skip_verify: Option<Value>,
    #[serde(default)]
    pub ca_crl: Option<Value>,
}

/// Names (with their path) of the traffic policy fields weft does not implement yet.
fn unsupported_policy(at: &str, p: &TrafficPolicySpec, out: &mut Vec<String>) {
    let fields: [(&str, bool); 3] = [
        ("tunnel", p.tunnel.is_some()),
        ("proxyProtocol", p.proxy_protocol.is_some()),
        ("retryBudget", p.retry_budget.is_some()),
    ];
    out.extend(set_fields(&fields).iter().map(|f| format!("{at}.{f}")));
    if let Some(tls) = &p.tls {
        let originates = matches!(tls.mode.as_deref(), Some("SIMPLE" | "MUTUAL"));
        match tls.mode.as_deref() {
            None | Some("ISTIO_MUTUAL" | "DISABLE" | "SIMPLE" | "MUTUAL") => {}
            Some(mode) => out.push(format!("{at}.tls.mode {mode}")),
        }
        let files: [(&str, bool); 4] = [
            ("clientCertificate", tls.client_certificate.is_some()),
            ("privateKey", tls.private_key.is_some()),
            ("caCertificates", tls.ca_certificates.is_some()),
            ("caCrl", tls.ca_crl.is_some()),
        ];
        if tls.insecure_skip_verify.is_some() {
            out.push(format!(
                "{at}.tls.insecureSkipVerify (weft always verifies the server's certificate)"
            ));
        }
        let named: [(&str, bool); 3] = [
            ("credentialName", tls.credential_name.is_some()),
            ("subjectAltNames", tls.subject_alt_names.is_some()),
            ("sni", tls.sni.is_some()),
        ];
        if !originates {
            out.extend(
                set_fields(&named)
                    .iter()
                    .map(|f| format!("{at}.tls.{f} (applies to mode SIMPLE and MUTUAL only)")),
            );
        } else if let Some(Origination {
            refused: Some(why), ..
        }) = origination(Some(p))
        {
            out.push(format!("{at}.tls: {why}"));
        }
        if !originates {
            out.extend(
                set_fields(&files)
                    .iter()
                    .map(|f| format!("{at}.tls.{f} (applies to mode SIMPLE and MUTUAL only)")),
            );
        }
    }
}

/// The SIMPLE/MUTUAL settings a traffic policy sets (None for other modes). What cannot be
/// honoured makes `refused` say why: the proxy then refuses the connections (fail closed),
/// never sends them with less protection than asked.
fn origination(p: Option<&TrafficPolicySpec>) -> Option<Origination> {
    let tls = p?.tls.as_ref()?;
    let mutual = match tls.mode.as_deref()? {
        "SIMPLE" => false,
        "MUTUAL" => true,
        _ => return None,
    };
    let text = |v: &Option<Value>| v.as_ref().and_then(Value::as_str).map(str::to_string);
    let file = |v: &Option<Value>| text(v).filter(|n| !n.is_empty());
    let mut out = Origination {
        credential_name: text(&tls.credential_name).filter(|n| !n.is_empty()),
        ca_certificates: file(&tls.ca_certificates),
        client_certificate: file(&tls.client_certificate),
        private_key: file(&tls.private_key),
        ca_crl: file(&tls.ca_crl),
        sni: text(&tls.sni).filter(|n| !n.is_empty()),
        subject_alt_names: tls
            .subject_alt_names
            .as_ref()
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default(),
        refused: None,
    };
    let files: Vec<(&str, &Option<Value>, &Option<String>)> = vec![
        ("caCertificates", &tls.ca_certificates, &out.ca_certificates),
        (
            "clientCertificate",
            &tls.client_certificate,
            &out.client_certificate,
        ),
        ("privateKey", &tls.private_key, &out.private_key),
        ("caCrl", &tls.ca_crl, &out.ca_crl),
    ];
    let any_file = files.iter().any(|(_, raw, _)| raw.is_some());
    let bad_file = files.iter().find(|(_, raw, read)| {
        raw.is_some() && !read.as_deref().is_some_and(|p| p.starts_with('/'))
    });
    let why = if tls.credential_name.is_some() && out.credential_name.is_none() {
        Some("credentialName must name a Secret".to_string())
    } else if out.credential_name.is_some() && any_file {
        // Istio's validation: "cannot specify client certificates or CA certificate or CA
        // CRL If credentialName is set".
        Some("credentialName and certificate files (caCertificates, clientCertificate, privateKey, caCrl) exclude each other: give one of them".to_string())
    } else if let Some((field, _, _)) = bad_file {
        Some(format!(
            "{field} must be an absolute path to a file in the proxy's container"
        ))
    } else if mutual
        && out.credential_name.is_none()
        && (out.client_certificate.is_none() || out.private_key.is_none())
    {
        Some("mode MUTUAL needs credentialName (a kubernetes.io/tls Secret with tls.crt, tls.key and ca.crt in the client's namespace), or clientCertificate and privateKey (files in the proxy's container); connections are refused until they are given".to_string())
    } else if tls.subject_alt_names.as_ref().is_some_and(|v| {
        !v.as_array()
            .is_some_and(|a| a.iter().all(|x| x.as_str().is_some_and(|s| !s.is_empty())))
    }) {
        Some("subjectAltNames must be a list of names".to_string())
    } else {
        None
    };
    out.refused = why;
    Some(out)
}

/// The names of the fields that are set, of `(name, is set)` pairs.
pub(super) fn set_fields(fields: &[(&'static str, bool)]) -> Vec<&'static str> {
    fields
        .iter()
        .filter(|(_, set)| *set)
        .map(|(f, _)| *f)
        .collect()
}

/// Subsets in the order a DestinationRule lists them: (name, pod labels).
pub type NamedSubsets = Vec<(String, BTreeMap<String, String>)>;

/// One DestinationRule: its host (FQDN) and subsets, or why none apply. Fields not
/// implemented go to `ignored`.
/// The TLS mode a traffic policy sets (DISABLE, ISTIO_MUTUAL, SIMPLE, MUTUAL; others are
/// reported by [`unsupported_policy`]).
fn client_tls(p: Option<&TrafficPolicySpec>) -> Option<ClientTls> {
    match p?.tls.as_ref()?.mode.as_deref()? {
        "DISABLE" => Some(ClientTls::Disable),
        "ISTIO_MUTUAL" => Some(ClientTls::IstioMutual),
        "SIMPLE" => Some(ClientTls::Simple),
        "MUTUAL" => Some(ClientTls::Mutual),
        _ => None,
    }
}

pub fn compile_destination_rule(
    registry: &Registry,
    src: &Source<'_>,
    ignored: &mut Vec<String>,
) -> Result<(String, NamedSubsets, HostPolicy), String> {
    let spec: DestinationRuleSpec =
        serde_json::from_value(src.spec.clone()).map_err(|e| format!("spec: {e}"))?;
    let host = registry.resolve(&spec.host, src.namespace);
    // A wildcard host (`*.shop.svc.cluster.local`) is kept as written: the compiler gives
    // each Service the most specific rule that matches it (`super::compile`).
    if let Some(p) = &spec.traffic_policy {
        unsupported_policy("trafficPolicy", p, ignored);
    }
    // Who sees the rule is the lookup's choice (`super::compile`); here only whether
    // `exportTo` is valid.
    super::compile::export_of(src.namespace, spec.export_to.as_deref())?;
    if spec.workload_selector.is_some() {
        ignored.push("workloadSelector".into());
    }
    let mut subsets: NamedSubsets = Vec::new();
    for (i, s) in spec.subsets.iter().enumerate() {
        if let Some(p) = &s.traffic_policy {
            unsupported_policy(&format!("subsets[{i}].trafficPolicy"), p, ignored);
        }
        if s.name.is_empty() {
            return Err(format!("subsets[{i}].name is empty"));
        }
        if subsets.iter().any(|(n, _)| *n == s.name) {
            return Err(format!("subsets[{i}].name {:?} is repeated", s.name));
        }
        subsets.push((s.name.clone(), s.labels.clone()));
    }
    let traffic = |at: &str, p: Option<&TrafficPolicySpec>, ignored: &mut Vec<String>| {
        p.map(|p| super::TrafficPolicy {
            // SIMPLE/MUTUAL settings ride with the policy (a subset's over the host's).
            origination: origination(Some(p)),
            ..super::istio_policy::traffic_policy(
                at,
                p.load_balancer.as_ref(),
                p.outlier_detection.as_ref(),
                p.connection_pool.as_ref(),
                ignored,
            )
        })
        .unwrap_or_default()
    };
    // `portLevelSettings`: each entry checked once (its refusals named at its path), then
    // the policy at each port it names computed below.
    let mut all_ports = BTreeSet::new();
    let policies = spec
        .traffic_policy
        .iter()
        .map(|p| ("trafficPolicy".to_string(), p))
        .chain(spec.subsets.iter().enumerate().filter_map(|(i, s)| {
            Some((
                format!("subsets[{i}].trafficPolicy"),
                s.traffic_policy.as_ref()?,
            ))
        }));
    for (at, p) in policies {
        for (k, entry) in p.port_level_settings.iter().flatten().enumerate() {
            let pat = format!("{at}.portLevelSettings[{k}]");
            let port = entry
                .port
                .as_ref()
                .and_then(|n| u16::try_from(n.number).ok())
                .filter(|n| *n != 0)
                .ok_or(format!("{pat}.port.number is required (a port)"))?;
            if !all_ports.insert((at.clone(), port)) {
                return Err(format!("{pat}: port {port} is given twice"));
            }
            let as_policy = TrafficPolicySpec {
                tls: entry.tls.clone(),
                load_balancer: entry.load_balancer.clone(),
                connection_pool: entry.connection_pool.clone(),
                outlier_detection: entry.outlier_detection.clone(),
                port_level_settings: None,
                tunnel: None,
                proxy_protocol: None,
                retry_budget: None,
            };
            unsupported_policy(&pat, &as_policy, ignored);
            traffic(&pat, Some(&as_policy), ignored);
        }
    }
    let host_traffic = traffic("trafficPolicy", spec.traffic_policy.as_ref(), ignored);
    let subset_traffic = spec
        .subsets
        .iter()
        .enumerate()
        .filter_map(|(i, s)| {
            let own = traffic(
                &format!("subsets[{i}].trafficPolicy"),
                s.traffic_policy.as_ref(),
                ignored,
            );
            let merged = own.over(&host_traffic);
            (!merged.is_empty()).then(|| (s.name.clone(), merged))
        })
        .collect();
    let tls = HostPolicy {
        traffic: host_traffic,
        subset_traffic,
        mode: client_tls(spec.traffic_policy.as_ref()),
        subsets: spec
            .subsets
            .iter()
            .filter_map(|s| Some((s.name.clone(), client_tls(s.traffic_policy.as_ref())?)))
            .collect(),

        rule: src.id(),
        rules: vec![src.id()],
        ports: port_policies(&spec, &traffic),
    };
    Ok((host, subsets, tls))
}

/// How a traffic policy spec compiles (at a path, refusals pushed to the list).
type TrafficOf = dyn Fn(&str, Option<&TrafficPolicySpec>, &mut Vec<String>) -> super::TrafficPolicy;

/// The policy at each port some `portLevelSettings` name (Istio's `MergeTrafficPolicy`): the
/// rule's policy at the port, then per subset its own fields over that, then the subset's own
/// entry for the port. Refusals were named when the entries were checked.
fn port_policies(
    spec: &DestinationRuleSpec,
    traffic: &TrafficOf,
) -> BTreeMap<u16, super::model::PortPolicy> {
    let none = TrafficPolicySpec {
        tls: None,
        load_balancer: None,
        connection_pool: None,
        outlier_detection: None,
        port_level_settings: None,
        tunnel: None,
        proxy_protocol: None,
        retry_budget: None,
    };
    let top = spec.traffic_policy.as_ref().unwrap_or(&none);
    let ports: BTreeSet<u16> = top
        .ports()
        .chain(
            spec.subsets
                .iter()
                .filter_map(|s| s.traffic_policy.as_ref())
                .flat_map(|p| p.ports()),
        )
        .collect();
    let mut scratch = Vec::new();
    ports
        .into_iter()
        .map(|port| {
            let at = top.at_port(port);
            let host = traffic("", Some(&at), &mut scratch);
            let mut policy = super::model::PortPolicy {
                mode: client_tls(Some(&at)),
                traffic: host.clone(),
                ..Default::default()
            };
            for s in &spec.subsets {
                let Some(own) = &s.traffic_policy else {
                    continue;
                };
                let merged = own.over(&at).at_port(port);
                if let Some(mode) = client_tls(Some(&merged)) {
                    policy.subsets.insert(s.name.clone(), mode);
                }

                let t = traffic("", Some(&merged), &mut scratch);
                if !t.is_empty() {
                    policy.subset_traffic.insert(s.name.clone(), t);
                }
            }
            (port, policy)
        })
        .collect()
}

/// Every DestinationRule's subsets by host, oldest first: a later rule adds subsets of new
/// names (Istio merges rules of one host) and the name a rule reuses is reported.
pub fn destination_rules(
    registry: &Registry,
    sources: &[Source<'_>],
    problems: &mut Vec<Problem>,
) -> BTreeMap<String, SubsetLabels> {
    destination_rules_with_tls(registry, sources, problems).0
}

/// [`destination_rules`] and the client TLS modes by host: the oldest rule that sets a mode
/// for a host (or a subset) decides it, as Istio merges the traffic policies of one host's
/// rules; a younger rule's different mode is reported.
pub fn destination_rules_with_tls(
    registry: &Registry,
    sources: &[Source<'_>],
    problems: &mut Vec<Problem>,
) -> (BTreeMap<String, SubsetLabels>, BTreeMap<String, HostPolicy>) {
    let mut tls_out: BTreeMap<String, HostPolicy> = BTreeMap::new();
    let mut out: BTreeMap<String, SubsetLabels> = BTreeMap::new();
    let mut owner: BTreeMap<(String, String), String> = BTreeMap::new();
    for src in by_age(sources) {
        let mut ignored = Vec::new();
        let compiled = compile_destination_rule(registry, src, &mut ignored);
        let mut notes = Vec::new();
        if !ignored.is_empty() {
            notes.push(format!(
                "{} not applied (not supported yet); the rest of the DestinationRule applies",
                ignored.join(", ")
            ));
        }
        match compiled {
            Err(e) => notes.push(format!("{e}; the DestinationRule is not applied")),
            Ok((host, subsets, tls)) => {
                let known = tls_out.entry(host.clone()).or_default();
                if !known.rules.contains(&src.id()) {
                    known.rules.push(src.id());
                }
                if let Some(mode) = tls.mode {
                    match known.mode {
                        None => {
                            known.mode = Some(mode);
                            // The settings of SIMPLE/MUTUAL come with the mode.
                            known.traffic.origination = tls.traffic.origination.clone();
                            known.rule = tls.rule.clone();
                        }
                        Some(first) if first != mode => notes.push(format!(
                            "trafficPolicy.tls.mode of {host} is already set by DestinationRule {} (older, which wins)",
                            known.rule
                        )),
                        Some(_) => {}
                    }
                }
                for (subset, mode) in tls.subsets {
                    if known.rule.is_empty() {
                        known.rule = tls.rule.clone();
                    }
                    known.subsets.entry(subset).or_insert(mode);
                }
                // Balancing and outlier detection: the oldest rule that sets them decides,
                // as for the TLS mode.
                // (The origination settings went with the mode above.)
                let without = |t: &super::TrafficPolicy| super::TrafficPolicy {
                    origination: None,
                    ..t.clone()
                };
                let (ours, theirs) = (without(&known.traffic), without(&tls.traffic));
                if !theirs.is_empty() {
                    if ours.is_empty() {
                        known.traffic = super::TrafficPolicy {
                            origination: known.traffic.origination.take(),
                            ..theirs
                        };
                        if known.rule.is_empty() {
                            known.rule = tls.rule.clone();
                        }
                    } else if ours != theirs {
                        notes.push(format!(
                            "the traffic policy of {host} is already set by DestinationRule {} (older, which wins)",
                            known.rule
                        ));
                    }
                }
                for (subset, policy) in tls.subset_traffic {
                    known.subset_traffic.entry(subset).or_insert(policy);
                }
                // Per port (portLevelSettings): the oldest rule naming a port decides it.
                for (port, policy) in tls.ports {
                    known.ports.entry(port).or_insert(policy);
                }
                if registry.expand(&host, src.namespace).is_err() {
                    notes.push(format!(
                        "host {host} is not a Service weft knows (yet); its subsets select nothing"
                    ));
                }
                let table = out.entry(host.clone()).or_default();
                for (name, labels) in subsets {
                    let key = (host.clone(), name.clone());
                    if let Some(first) = owner.get(&key) {
                        notes.push(format!(
                            "subset {name:?} of {host} is already defined by DestinationRule {first} (older, which wins)"
                        ));
                        continue;
                    }
                    owner.insert(key, src.id());
                    table.insert(name, labels);
                }
            }
        }
        if !notes.is_empty() {
            problems.push(Problem::new(DESTINATION_RULE, src, notes.join(". ")));
        }
    }
    tls_out.retain(|_, t| {
        t.mode.is_some()
            || !t.subsets.is_empty()
            || !t.traffic.is_empty()
            || !t.subset_traffic.is_empty()
            || !t.ports.is_empty()
            || !t.rules.is_empty()
    });
    (out, tls_out)
}

// === VirtualService ===

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VirtualServiceSpec {
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default)]
    pub gateways: Vec<String>,
    #[serde(default)]
    pub http: Vec<HttpRouteSpec>,
    #[serde(default)]
    pub tcp: Vec<L4RouteSpec>,
    #[serde(default)]
    pub tls: Vec<L4RouteSpec>,
    #[serde(default)]
    pub export_to: Option<Vec<String>>,
}

/// Istio's `TCPRoute` and `TLSRoute` (the same shape; their matches differ by `sniHosts`).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct L4RouteSpec {
    #[serde(default, rename = "match")]
    pub matches: Vec<L4MatchSpec>,
    #[serde(default)]
    pub route: Vec<L4DestinationSpec>,
}

/// `L4MatchAttributes` (`tcp`) and `TLSMatchAttributes` (`tls`, with `sniHosts`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct L4MatchSpec {
    #[serde(default)]
    pub sni_hosts: Option<Vec<String>>,
    #[serde(default)]
    pub destination_subnets: Vec<String>,
    #[serde(default)]
    pub port: Option<u32>,
    #[serde(default)]
    pub source_labels: BTreeMap<String, String>,
    #[serde(default)]
    pub gateways: Option<Value>,
    #[serde(default)]
    pub source_namespace: Option<String>,
    /// Deprecated in Istio's API (never implemented by Istio either).
    #[serde(default)]
    pub source_subnet: Option<Value>,
}

/// Istio's `RouteDestination` (an L4 route's: no header edits).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct L4DestinationSpec {
    pub destination: DestinationSpec,
    #[serde(default)]
    pub weight: Option<i64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRouteSpec {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default, rename = "match")]
    pub matches: Vec<MatchSpec>,
    #[serde(default)]
    pub route: Vec<RouteDestinationSpec>,
    #[serde(default)]
    pub redirect: Option<RedirectSpec>,
    #[serde(default)]
    pub direct_response: Option<Value>,
    #[serde(default)]
    pub delegate: Option<Value>,
    #[serde(default)]
    pub rewrite: Option<RewriteSpec>,
    #[serde(default)]
    pub timeout: Option<String>,
    #[serde(default)]
    pub retries: Option<RetrySpec>,
    #[serde(default)]
    pub fault: Option<FaultSpec>,
    #[serde(default)]
    pub mirror: Option<DestinationSpec>,
    #[serde(default)]
    pub mirrors: Option<Vec<MirrorSpec>>,
    /// Deprecated in Istio (an integer percent); `mirrorPercentage` replaces it.
    #[serde(default)]
    pub mirror_percent: Option<u32>,
    #[serde(default)]
    pub mirror_percentage: Option<super::istio_actions::PercentSpec>,
    #[serde(default)]
    pub cors_policy: Option<CorsPolicySpec>,
    #[serde(default)]
    pub headers: Option<HeadersSpec>,
}

/// Istio's `CorsPolicy` ([`cors_policy`] reads it).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CorsPolicySpec {
    /// Deprecated in Istio for `allowOrigins`: exact origins (`*`: all).
    #[serde(default)]
    pub allow_origin: Option<Vec<String>>,
    #[serde(default)]
    pub allow_origins: Option<Vec<StringMatchSpec>>,
    #[serde(default)]
    pub allow_methods: Vec<String>,
    #[serde(default)]
    pub allow_headers: Vec<String>,
    #[serde(default)]
    pub expose_headers: Vec<String>,
    #[serde(default)]
    pub max_age: Option<String>,
    #[serde(default)]
    pub allow_credentials: Option<bool>,
    #[serde(default)]
    pub unmatched_preflights: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MatchSpec {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub uri: Option<StringMatchSpec>,
    #[serde(default)]
    pub method: Option<StringMatchSpec>,
    #[serde(default)]
    pub headers: BTreeMap<String, StringMatchSpec>,
    #[serde(default)]
    pub without_headers: BTreeMap<String, StringMatchSpec>,
    #[serde(default)]
    pub query_params: BTreeMap<String, StringMatchSpec>,
    #[serde(default)]
    pub port: Option<u32>,
    #[serde(default)]
    pub scheme: Option<Value>,
    #[serde(default)]
    pub authority: Option<Value>,
    #[serde(default)]
    pub source_labels: BTreeMap<String, String>,
    #[serde(default)]
    pub gateways: Option<Value>,
    #[serde(default)]
    pub ignore_uri_case: Option<Value>,
    #[serde(default)]
    pub source_namespace: Option<String>,
    #[serde(default)]
    pub stat_prefix: Option<Value>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StringMatchSpec {
    #[serde(default)]
    pub exact: Option<String>,
    #[serde(default)]
    pub prefix: Option<String>,
    #[serde(default)]
    pub regex: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteDestinationSpec {
    pub destination: DestinationSpec,
    #[serde(default)]
    pub weight: Option<i64>,
    #[serde(default)]
    pub headers: Option<HeadersSpec>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DestinationSpec {
    pub host: String,
    #[serde(default)]
    pub subset: Option<String>,
    #[serde(default)]
    pub port: Option<PortSelector>,
}

/// One of Istio's `mirrors`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MirrorSpec {
    pub destination: DestinationSpec,
    #[serde(default)]
    pub percentage: Option<super::istio_actions::PercentSpec>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortSelector {
    pub number: u32,
}

/// A VirtualService compiled for the mesh: per host it routes, per HTTP port of that host, the
/// routes; plus what it refers to that does not exist (kept: the proxy answers 503 `NR`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CompiledVirtualService {
    pub routes: BTreeMap<(String, u16), Vec<HttpRoute>>,
    /// Per host and port (every port: the proxy reads them on connections it relays as
    /// bytes), the `tls` and `tcp` routes.
    pub l4: BTreeMap<(String, u16), L4Table>,
    /// Hosts in `hosts` that are not Services weft knows (reported, not routed).
    pub unknown_hosts: Vec<String>,
    /// Missing destination Services and subsets, as sentences.
    pub dangling: Vec<String>,
    /// Per Service routed, how specific the `hosts` entry that named it is
    /// ([`super::compile::specificity`]): a more specific VirtualService takes a Service.
    pub specificity: BTreeMap<String, (bool, usize)>,
}

/// Why a VirtualService is not applied at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Bound only to gateways: not for sidecars, ignored silently as Istio does.
    GatewaysOnly,
    Invalid(String),
}

fn string_match(at: &str, m: &StringMatchSpec) -> Result<StringMatch, String> {
    match (&m.exact, &m.prefix, &m.regex) {
        (Some(e), None, None) => Ok(StringMatch::Exact(e.clone())),
        (None, Some(p), None) => Ok(StringMatch::Prefix(p.clone())),
        (None, None, Some(r)) => Pattern::new(r)
            .map(StringMatch::Regex)
            .map_err(|e| format!("{at}.regex: {e}")),
        // Istio: an empty match on a header means "present" (on withoutHeaders: "absent").
        (None, None, None) => Ok(StringMatch::Prefix(String::new())),
        _ => Err(format!("{at}: give one of exact, prefix, regex")),
    }
}

/// A route's `corsPolicy` (`at`: `http[0].corsPolicy`) as Istio translates it for Envoy:
/// `allowOrigins` as string matches (a regex under the same limits as a route's); the
/// deprecated `allowOrigin` read as exact origins only when `allowOrigins` is not given;
/// `maxAge` in whole seconds; `unmatchedPreflights` FORWARD (the default) or IGNORE.
pub fn cors_policy(at: &str, c: &CorsPolicySpec) -> Result<super::cors::CorsPolicy, String> {
    use super::cors::{CorsPolicy, UnmatchedPreflights};
    let allow_origins = match (&c.allow_origins, &c.allow_origin) {
        (Some(matches), _) => matches
            .iter()
            .enumerate()
            .map(|(i, m)| string_match(&format!("{at}.allowOrigins[{i}]"), m))
            .collect::<Result<Vec<_>, _>>()?,
        (None, Some(exact)) => exact.iter().cloned().map(StringMatch::Exact).collect(),
        (None, None) => Vec::new(),
    };
    let max_age_secs = c
        .max_age
        .as_deref()
        .map(|t| {
            let d = crate::duration::parse(t).map_err(|e| format!("{at}.maxAge: {e}"))?;
            if d.subsec_nanos() != 0 {
                return Err(format!(
                    "{at}.maxAge {t:?} is not whole seconds; Istio takes it to the second"
                ));
            }
            Ok(d.as_secs())
        })
        .transpose()?;
    let unmatched_preflights = match c.unmatched_preflights.as_deref() {
        None | Some("UNSPECIFIED" | "FORWARD") => UnmatchedPreflights::Forward,
        Some("IGNORE") => UnmatchedPreflights::Ignore,
        Some(other) => {
            return Err(format!(
                "{at}.unmatchedPreflights {other:?} is not FORWARD or IGNORE"
            ));
        }
    };
    let policy = CorsPolicy {
        allow_origins,
        allow_methods: c.allow_methods.clone(),
        allow_headers: c.allow_headers.clone(),
        expose_headers: c.expose_headers.clone(),
        max_age_secs,
        allow_credentials: c.allow_credentials.unwrap_or(false),
        unmatched_preflights,
    };
    super::cors::validate(at, &policy)?;
    Ok(policy)
}

fn header_matches(
    at: &str,
    from: &BTreeMap<String, StringMatchSpec>,
) -> Result<BTreeMap<String, StringMatch>, String> {
    from.iter()
        .map(|(name, m)| {
            Ok((
                name.to_ascii_lowercase(),
                string_match(&format!("{at}.{name}"), m)?,
            ))
        })
        .collect()
}

fn compile_match(at: &str, m: &MatchSpec) -> Result<RequestMatch, String> {
    let unsupported = set_fields(&[
        ("scheme", m.scheme.is_some()),
        ("authority", m.authority.is_some()),
        ("gateways", m.gateways.is_some()),
        ("ignoreUriCase", m.ignore_uri_case.is_some()),
        ("statPrefix", m.stat_prefix.is_some()),
    ]);
    if !unsupported.is_empty() {
        return Err(not_supported(at, &unsupported));
    }
    let uri = m
        .uri
        .as_ref()
        .map(|u| string_match(&format!("{at}.uri"), u))
        .transpose()?;
    let method = m
        .method
        .as_ref()
        .map(|u| string_match(&format!("{at}.method"), u))
        .transpose()?;
    let port = m
        .port
        .map(|p| {
            u16::try_from(p)
                .ok()
                .filter(|p| *p != 0)
                .ok_or(format!("{at}.port {p} is not a port"))
        })
        .transpose()?;
    Ok(RequestMatch {
        uri,
        method,
        headers: header_matches(&format!("{at}.headers"), &m.headers)?,
        without_headers: header_matches(&format!("{at}.withoutHeaders"), &m.without_headers)?,
        query_params: m
            .query_params
            .iter()
            .map(|(k, v)| {
                Ok((
                    k.clone(),
                    string_match(&format!("{at}.queryParams.{k}"), v)?,
                ))
            })
            .collect::<Result<_, String>>()?,
        port,
        source_labels: m.source_labels.clone(),
        source_namespace: source_namespace(at, m.source_namespace.as_deref())?,
    })
}

/// `sourceNamespace`, a namespace name (Istio's validation).
pub(super) fn source_namespace(at: &str, ns: Option<&str>) -> Result<Option<String>, String> {
    match ns {
        None => Ok(None),
        Some(n) if super::compile::is_dns_label(n) => Ok(Some(n.to_string())),
        Some(n) => Err(format!(
            "{at}.sourceNamespace {n:?} is not a namespace name"
        )),
    }
}

fn not_supported(at: &str, fields: &[&str]) -> String {
    let named: Vec<String> = fields.iter().map(|f| format!("{at}.{f}")).collect();
    format!(
        "{} {} not supported yet; the VirtualService is not applied",
        named.join(", "),
        if named.len() == 1 { "is" } else { "are" }
    )
}

/// A route before it is laid on a port: matches, destinations with their port if given, and
/// what the route does besides.
struct Pending {
    matches: Vec<RequestMatch>,
    destinations: Vec<PendingDestination>,
    actions: Actions,
    /// Mirror destinations and their shares (parts per million).
    mirrors: Vec<(PendingDestination, u32)>,
}

struct PendingDestination {
    host: String,
    port: Option<u16>,
    subset: Option<String>,
    weight: u32,
    request_headers: HeaderEdits,
    response_headers: HeaderEdits,
}

/// One VirtualService, strictly: every field is implemented or the whole resource is
/// refused naming it. `subsets` are the DestinationRule subsets by host.
pub fn compile_virtual_service(
    registry: &Registry,
    subsets: &BTreeMap<String, SubsetLabels>,
    src: &Source<'_>,
) -> Result<CompiledVirtualService, Refusal> {
    let spec = read_virtual_service(src)?;
    if !spec.gateways.is_empty() && !spec.gateways.iter().any(|g| g == "mesh") {
        return Err(Refusal::GatewaysOnly);
    }
    // `match[].gateways`: only the routes that hold for sidecars (egress-gw helper's hunk).
    let routed = !(spec.http.is_empty() && spec.tcp.is_empty() && spec.tls.is_empty());
    let spec = super::gateway::routes_for(&spec, src.namespace, super::gateway::MESH)
        .map_err(|m| Refusal::Invalid(format!("{m}; the VirtualService is not applied")))?;
    if routed && spec.http.is_empty() && spec.tcp.is_empty() && spec.tls.is_empty() {
        // Every route is for gateways only: nothing for sidecars, as a gateways-only one.
        return Err(Refusal::GatewaysOnly);
    }
    // Istio's validation: `*` alone would take every Service of the mesh for sidecars.
    if spec.hosts.iter().any(|h| h == "*") {
        return Err(Refusal::Invalid(
            "spec.hosts: the wildcard host * is not allowed for a VirtualService bound to the mesh (Istio refuses it too); name the Services, or a *.<domain> wildcard; the VirtualService is not applied".into(),
        ));
    }
    // Who sees it is the compiler's choice ([`super::compile::visible_virtual_services`]);
    // here only whether `exportTo` is valid.
    super::compile::export_of(src.namespace, spec.export_to.as_deref())
        .map_err(|e| Refusal::Invalid(format!("spec.{e}; the VirtualService is not applied")))?;
    if spec.http.is_empty() && spec.tcp.is_empty() && spec.tls.is_empty() {
        return Err(Refusal::Invalid(
            "spec has no http, tcp or tls routes; the VirtualService is not applied".into(),
        ));
    }
    let pending = if spec.http.is_empty() {
        Vec::new()
    } else {
        pending_routes(registry, src, &spec)?
    };
    let (tls, tcp) = (
        pending_l4(registry, src, &spec, L4Kind::Tls)?,
        pending_l4(registry, src, &spec, L4Kind::Tcp)?,
    );
    let mut out = CompiledVirtualService::default();
    let mut dangling = BTreeSet::new();
    // Wildcard hosts take every Service they match; each Service keeps its most specific entry.
    for host in &spec.hosts {
        match registry.expand(host, src.namespace) {
            Err(unknown) => out.unknown_hosts.push(unknown),
            Ok(fqdns) => {
                let rank = super::compile::specificity(&registry.resolve(host, src.namespace));
                for fqdn in fqdns {
                    let known = out.specificity.entry(fqdn).or_insert(rank);
                    *known = (*known).max(rank);
                }
            }
        }
    }
    for fqdn in out.specificity.keys().cloned().collect::<Vec<_>>() {
        let Some(ports) = registry.ports(&fqdn) else {
            continue;
        };
        for entry in ports.iter().filter(|p| p.http) {
            let routes = lay_routes(registry, subsets, src, &pending, entry.port, &mut dangling);
            if !routes.is_empty() {
                out.routes.insert((fqdn.clone(), entry.port), routes);
            }
        }
        for entry in ports {
            let lay = |routes: &[PendingL4], dangling: &mut BTreeSet<String>| {
                lay_l4(registry, subsets, src, routes, entry.port, dangling)
            };
            let table = L4Table {
                tls: lay(&tls, &mut dangling),
                tcp: lay(&tcp, &mut dangling),
            };
            if !table.is_empty() {
                out.l4.insert((fqdn.clone(), entry.port), table);
            }
        }
    }
    out.dangling = dangling.into_iter().collect();
    Ok(out)
}

/// A VirtualService's spec, strictly.
pub fn read_virtual_service(src: &Source<'_>) -> Result<VirtualServiceSpec, Refusal> {
    serde_json::from_value(src.spec.clone())
        .map_err(|e| Refusal::Invalid(format!("spec: {e}; the VirtualService is not applied")))
}

/// A VirtualService bound to a gateway, compiled for one of the gateway's listener ports:
/// its `http` routes as that port's table (a destination without a port takes the
/// destination Service's only port, else the listener's), and what they name that does not
/// exist.
pub fn gateway_routes(
    registry: &Registry,
    subsets: &BTreeMap<String, SubsetLabels>,
    src: &Source<'_>,
    spec: &VirtualServiceSpec,
    listener_port: u16,
) -> Result<(Vec<HttpRoute>, Vec<String>), Refusal> {
    // A gateway's table holds client conditions against its own pods before this
    // (`gateway::compile_for`); one compiled for no pod cannot decide them. `tcp` and `tls`
    // routes serve the gateway's relayed ports ([`gateway_l4_routes`]).
    let mut unsupported: Vec<String> = Vec::new();
    for (i, h) in spec.http.iter().enumerate() {
        for (j, m) in h.matches.iter().enumerate() {
            if !m.source_labels.is_empty() {
                unsupported.push(format!("http[{i}].match[{j}].sourceLabels"));
            }
            if m.source_namespace.is_some() {
                unsupported.push(format!("http[{i}].match[{j}].sourceNamespace"));
            }
        }
    }
    if !unsupported.is_empty() {
        return Err(Refusal::Invalid(format!(
            "{} cannot be decided for a gateway table compiled for no pod; the VirtualService is not applied",
            unsupported.join(", ")
        )));
    }
    if spec.http.is_empty() {
        return Err(Refusal::Invalid(
            "spec.http is empty; the VirtualService is not applied".into(),
        ));
    }
    let pending = pending_routes(registry, src, spec)?;
    let mut dangling = BTreeSet::new();
    let routes = lay_routes(
        registry,
        subsets,
        src,
        &pending,
        listener_port,
        &mut dangling,
    );
    Ok((routes, dangling.into_iter().collect()))
}

/// A VirtualService bound to a gateway, compiled for one of the gateway's relayed ports:
/// its `tls` routes (`tls`: a TLS PASSTHROUGH port, picked by SNI) or its `tcp` routes (a TCP
/// port), laid on `listener_port` as [`gateway_routes`] lays `http` routes, and what they name
/// that does not exist. A client condition left (a table compiled for no pod) is refused.
pub fn gateway_l4_routes(
    registry: &Registry,
    subsets: &BTreeMap<String, SubsetLabels>,
    src: &Source<'_>,
    spec: &VirtualServiceSpec,
    listener_port: u16,
    tls: bool,
) -> Result<(Vec<L4Route>, Vec<String>), Refusal> {
    let (field, kind, routes) = if tls {
        ("tls", L4Kind::Tls, &spec.tls)
    } else {
        ("tcp", L4Kind::Tcp, &spec.tcp)
    };
    let labelled: Vec<String> = routes
        .iter()
        .enumerate()
        .flat_map(|(i, r)| {
            r.matches.iter().enumerate().flat_map(move |(j, m)| {
                let labels = (!m.source_labels.is_empty())
                    .then(|| format!("{field}[{i}].match[{j}].sourceLabels"));
                let namespace = m
                    .source_namespace
                    .is_some()
                    .then(|| format!("{field}[{i}].match[{j}].sourceNamespace"));
                labels.into_iter().chain(namespace)
            })
        })
        .collect();
    if !labelled.is_empty() {
        return Err(Refusal::Invalid(format!(
            "{} cannot be decided for a gateway table compiled for no pod; the VirtualService is not applied",
            labelled.join(", ")
        )));
    }
    let pending = pending_l4(registry, src, spec, kind)?;
    let mut dangling = BTreeSet::new();
    let routes = lay_l4(
        registry,
        subsets,
        src,
        &pending,
        listener_port,
        &mut dangling,
    );
    Ok((routes, dangling.into_iter().collect()))
}

/// The routes of `spec.http`, read and checked, before they are laid on a port.
fn pending_routes(
    registry: &Registry,
    src: &Source<'_>,
    spec: &VirtualServiceSpec,
) -> Result<Vec<Pending>, Refusal> {
    let invalid = |m: String| Refusal::Invalid(m);
    if spec.hosts.is_empty() {
        return Err(invalid(
            "spec.hosts is empty; the VirtualService is not applied".into(),
        ));
    }
    if spec.http.len() > MAX_ROUTES {
        return Err(invalid(format!(
            "spec.http has {} routes; at most {MAX_ROUTES} are accepted; the VirtualService is not applied",
            spec.http.len()
        )));
    }
    let mut pending = Vec::new();
    for (i, h) in spec.http.iter().enumerate() {
        let at = format!("http[{i}]");
        let fields = set_fields(&[
            ("directResponse", h.direct_response.is_some()),
            ("delegate", h.delegate.is_some()),
        ]);
        if !fields.is_empty() {
            return Err(invalid(not_supported(&at, &fields)));
        }
        let matches = h
            .matches
            .iter()
            .enumerate()
            .map(|(j, m)| compile_match(&format!("{at}.match[{j}]"), m))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| {
                invalid(if e.contains("not applied") {
                    e
                } else {
                    format!("{e}; the VirtualService is not applied")
                })
            })?;
        let actions = compile_actions(&at, h)
            .map_err(|e| invalid(format!("{e}; the VirtualService is not applied")))?;
        let mirrors = mirrors(registry, src, &at, h)
            .map_err(|e| invalid(format!("{e}; the VirtualService is not applied")))?;
        if actions.redirect.is_some() {
            if !mirrors.is_empty() {
                return Err(invalid(format!(
                    "{at} has both redirect and mirror; a redirect is answered, nothing is sent to mirror; the VirtualService is not applied"
                )));
            }
            pending.push(Pending {
                matches,
                destinations: Vec::new(),
                actions,
                mirrors,
            });
            continue;
        }
        let not_applied = |e: String| invalid(format!("{e}; the VirtualService is not applied"));
        let mut destinations = pending_destinations(
            registry,
            src,
            &at,
            h.route.iter().map(|r| (&r.destination, r.weight)),
        )
        .map_err(not_applied)?;
        for (j, (r, d)) in h.route.iter().zip(&mut destinations).enumerate() {
            if let Some(spec) = &r.headers {
                (d.request_headers, d.response_headers) =
                    header_edits(&format!("{at}.route[{j}].headers"), spec).map_err(not_applied)?;
            }
        }
        pending.push(Pending {
            matches,
            destinations,
            actions,
            mirrors,
        });
    }
    Ok(pending)
}

/// A destination's `port.number`, if given (`at`: the destination).
fn destination_port(at: &str, d: &DestinationSpec) -> Result<Option<u16>, String> {
    d.port
        .as_ref()
        .map(|p| {
            u16::try_from(p.number)
                .ok()
                .filter(|p| *p != 0)
                .ok_or(format!("{at}.port.number {} is not a port", p.number))
        })
        .transpose()
}

/// The weighted destinations of one `http`, `tcp` or `tls` route (`at`: `http[0]`), as Istio
/// validates them: 1 to [`MAX_DESTINATIONS`]; a lone destination may leave its weight out (it
/// takes everything), otherwise the weights sum to 100; never all 0. Header edits are the
/// caller's.
fn pending_destinations<'d>(
    registry: &Registry,
    src: &Source<'_>,
    at: &str,
    route: impl ExactSizeIterator<Item = (&'d DestinationSpec, Option<i64>)>,
) -> Result<Vec<PendingDestination>, String> {
    let count = route.len();
    if count == 0 || count > MAX_DESTINATIONS {
        return Err(format!(
            "{at}.route has {count} destinations; 1 to {MAX_DESTINATIONS} are accepted"
        ));
    }
    let mut out = Vec::with_capacity(count);
    for (j, (d, weight)) in route.enumerate() {
        let dat = format!("{at}.route[{j}]");
        let weight = match (weight, count) {
            (None, 1) => 100,
            (None, _) => 0,
            (Some(w), _) if (0..=i64::from(u32::MAX)).contains(&w) => w as u32,
            (Some(w), _) => return Err(format!("{dat}.weight {w} is negative or too large")),
        };
        out.push(PendingDestination {
            host: registry.resolve(&d.host, src.namespace),
            port: destination_port(&format!("{dat}.destination"), d)?,
            subset: d.subset.clone(),
            weight,
            request_headers: HeaderEdits::default(),
            response_headers: HeaderEdits::default(),
        });
    }
    let total: u64 = out.iter().map(|d| u64::from(d.weight)).sum();
    if count > 1 && total != 100 {
        return Err(format!(
            "{at}.route weights sum to {total}; Istio requires 100"
        ));
    }
    if total == 0 {
        return Err(format!("{at}.route gives every destination weight 0"));
    }
    Ok(out)
}

/// A route's `mirror` (with `mirrorPercentage`, or the deprecated `mirrorPercent`; 100 % by
/// default, as Istio) and `mirrors`, before they are laid on a port.
fn mirrors(
    registry: &Registry,
    src: &Source<'_>,
    at: &str,
    h: &HttpRouteSpec,
) -> Result<Vec<(PendingDestination, u32)>, String> {
    let pending = |at: &str, d: &DestinationSpec| -> Result<PendingDestination, String> {
        Ok(PendingDestination {
            host: registry.resolve(&d.host, src.namespace),
            port: destination_port(at, d)?,
            subset: d.subset.clone(),
            weight: 0,
            request_headers: HeaderEdits::default(),
            response_headers: HeaderEdits::default(),
        })
    };
    if h.mirror.is_some() && h.mirrors.is_some() {
        return Err(format!(
            "{at} has both mirror and mirrors; Istio takes one of them (mirrors for several)"
        ));
    }
    let mut out = Vec::new();
    if let Some(d) = &h.mirror {
        let share = match (&h.mirror_percentage, h.mirror_percent) {
            (Some(p), _) => {
                super::istio_actions::share(&format!("{at}.mirrorPercentage.value"), p.value)?
            }
            (None, Some(p)) => {
                super::istio_actions::share(&format!("{at}.mirrorPercent"), f64::from(p))?
            }
            (None, None) => super::action::PER_MILLION,
        };
        out.push((pending(&format!("{at}.mirror"), d)?, share));
    } else if h.mirror_percentage.is_some() || h.mirror_percent.is_some() {
        return Err(format!("{at}.mirrorPercentage needs {at}.mirror"));
    }
    for (i, m) in h.mirrors.iter().flatten().enumerate() {
        let mat = format!("{at}.mirrors[{i}]");
        let share = match &m.percentage {
            Some(p) => super::istio_actions::share(&format!("{mat}.percentage.value"), p.value)?,
            None => super::action::PER_MILLION,
        };
        out.push((
            pending(&format!("{mat}.destination"), &m.destination)?,
            share,
        ));
    }
    if out.len() > MAX_DESTINATIONS {
        return Err(format!(
            "{at} has {} mirrors; at most {MAX_DESTINATIONS} are accepted",
            out.len()
        ));
    }
    Ok(out)
}

/// A destination laid on a port: no port given takes the Service's only port, else
/// `entry_port` (Istio); what it names that does not exist goes to `dangling`.
fn lay_destination(
    registry: &Registry,
    subsets: &BTreeMap<String, SubsetLabels>,
    d: &PendingDestination,
    entry_port: u16,
    dangling: &mut BTreeSet<String>,
) -> Destination {
    let (host, port, subset) = (&d.host, d.port, &d.subset);
    let dest_ports = registry.ports(host);
    let port = port.unwrap_or(match dest_ports {
        Some([only]) => only.port,
        _ => entry_port,
    });
    match dest_ports {
        None => {
            dangling.insert(format!(
                "destination host {host} is not a Service weft knows"
            ));
        }
        Some(ps) if !ps.iter().any(|p| p.port == port) => {
            dangling.insert(format!("destination {host} has no port {port}"));
        }
        Some(_) => {}
    }
    if let Some(s) = subset
        && !subsets.get(host).is_some_and(|t| t.contains_key(s))
    {
        dangling.insert(format!(
            "subset {s:?} of {host} is defined by no DestinationRule"
        ));
    }
    Destination {
        service: host.clone(),
        port,
        subset: subset.clone(),
        weight: d.weight,
        request_headers: d.request_headers.clone(),
        response_headers: d.response_headers.clone(),
    }
}

/// The pending routes as the table of one port (`entry_port`: the Service port, or a
/// gateway's listener port): matches on other ports dropped, destination ports filled in.
fn lay_routes(
    registry: &Registry,
    subsets: &BTreeMap<String, SubsetLabels>,
    src: &Source<'_>,
    pending: &[Pending],
    entry_port: u16,
    dangling: &mut BTreeSet<String>,
) -> Vec<HttpRoute> {
    let mut routes = Vec::new();
    for p in pending {
        // A match on another port never holds on this one; a route whose matches all
        // name other ports is not part of this port's table (as Istio builds it).
        let matches: Vec<RequestMatch> = p
            .matches
            .iter()
            .filter(|m| m.port.is_none_or(|mp| mp == entry_port))
            .cloned()
            .collect();
        if !p.matches.is_empty() && matches.is_empty() {
            continue;
        }
        let destinations = p
            .destinations
            .iter()
            .map(|d| lay_destination(registry, subsets, d, entry_port, dangling))
            .collect();
        let mut actions = p.actions.clone();
        actions.mirrors = p
            .mirrors
            .iter()
            .map(|(d, per_million)| super::action::Mirror {
                destination: lay_destination(registry, subsets, d, entry_port, dangling),
                per_million: *per_million,
            })
            .collect();
        routes.push(HttpRoute {
            name: src.id(),
            matches,
            destinations,
            actions,
        });
    }
    routes
}

// === tcp[] and tls[] routes ===

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum L4Kind {
    Tls,
    Tcp,
}

/// An L4 route before it is laid on a port.
struct PendingL4 {
    matches: Vec<L4Match>,
    destinations: Vec<PendingDestination>,
}

/// Whether SNI `sni` falls within VirtualService host `host` (Istio requires every
/// `sniHosts` entry to): the same name, or under a `*.` host; `*` takes everything.
fn sni_within(sni: &str, host: &str) -> bool {
    if host == "*" || sni.eq_ignore_ascii_case(host) {
        return true;
    }
    let Some(suffix) = host.strip_prefix("*.") else {
        return false;
    };
    match sni.strip_prefix("*.") {
        Some(inner) => inner.eq_ignore_ascii_case(suffix) || super::l4::sni_matches(host, inner),
        None => super::l4::sni_matches(host, sni),
    }
}

/// The `tls` or `tcp` routes of a VirtualService, read and checked: matches (`port`,
/// `destinationSubnets`, `sourceLabels`, and `sniHosts` for `tls`), weighted destinations as
/// `http` routes have them (weights sum to 100 unless one destination leaves it out).
fn pending_l4(
    registry: &Registry,
    src: &Source<'_>,
    spec: &VirtualServiceSpec,
    kind: L4Kind,
) -> Result<Vec<PendingL4>, Refusal> {
    let (field, routes) = match kind {
        L4Kind::Tls => ("tls", &spec.tls),
        L4Kind::Tcp => ("tcp", &spec.tcp),
    };
    let invalid = |m: String| Refusal::Invalid(format!("{m}; the VirtualService is not applied"));
    if routes.is_empty() {
        return Ok(Vec::new());
    }
    if spec.hosts.is_empty() {
        return Err(invalid("spec.hosts is empty".into()));
    }
    if routes.len() > MAX_ROUTES {
        return Err(invalid(format!(
            "spec.{field} has {} routes; at most {MAX_ROUTES} are accepted",
            routes.len()
        )));
    }
    let hosts: Vec<String> = spec
        .hosts
        .iter()
        .flat_map(|h| [h.clone(), registry.resolve(h, src.namespace)])
        .collect();
    let mut out = Vec::new();
    for (i, r) in routes.iter().enumerate() {
        let at = format!("{field}[{i}]");
        if kind == L4Kind::Tls && r.matches.is_empty() {
            return Err(invalid(format!(
                "{at}.match is required for a tls route (sniHosts picks the connections)"
            )));
        }
        let mut matches = Vec::new();
        for (j, m) in r.matches.iter().enumerate() {
            let mat = format!("{at}.match[{j}]");
            let unsupported = set_fields(&[
                ("gateways", m.gateways.is_some()),
                ("sourceSubnet", m.source_subnet.is_some()),
            ]);
            if !unsupported.is_empty() {
                return Err(Refusal::Invalid(not_supported(&mat, &unsupported)));
            }
            let sni_hosts = match (kind, &m.sni_hosts) {
                (L4Kind::Tcp, Some(_)) => {
                    return Err(invalid(format!(
                        "{mat}.sniHosts is a tls match field; move the route to spec.tls"
                    )));
                }
                (L4Kind::Tls, None) => {
                    return Err(invalid(format!("{mat}.sniHosts is required")));
                }
                (L4Kind::Tls, Some(h)) if h.is_empty() => {
                    return Err(invalid(format!("{mat}.sniHosts is empty")));
                }
                (L4Kind::Tls, Some(h)) => h.iter().map(|h| h.to_ascii_lowercase()).collect(),
                (L4Kind::Tcp, None) => Vec::new(),
            };
            if let Some(sni) = sni_hosts
                .iter()
                .find(|sni| !hosts.iter().any(|h| sni_within(sni, h)))
            {
                return Err(invalid(format!(
                    "{mat}.sniHosts {sni:?} is not within the VirtualService's hosts (Istio requires it)"
                )));
            }
            let destination_subnets = m
                .destination_subnets
                .iter()
                .map(|n| {
                    n.parse::<ipnet::IpNet>()
                        .or_else(|_| n.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                        .map_err(|_| {
                            invalid(format!(
                                "{mat}.destinationSubnets {n:?} is not an address or a.b.c.d/xx"
                            ))
                        })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let port = m
                .port
                .map(|p| {
                    u16::try_from(p)
                        .ok()
                        .filter(|p| *p != 0)
                        .ok_or(invalid(format!("{mat}.port {p} is not a port")))
                })
                .transpose()?;
            matches.push(L4Match {
                port,
                destination_subnets,
                sni_hosts,
                source_labels: m.source_labels.clone(),
                source_namespace: source_namespace(&mat, m.source_namespace.as_deref())
                    .map_err(invalid)?,
            });
        }
        let destinations = pending_destinations(
            registry,
            src,
            &at,
            r.route.iter().map(|d| (&d.destination, d.weight)),
        )
        .map_err(invalid)?;
        out.push(PendingL4 {
            matches,
            destinations,
        });
    }
    Ok(out)
}

/// The pending L4 routes as the table of one Service port: matches on other ports dropped
/// (a route whose every match names another port is not in this port's table), destination
/// ports filled in as for `http` routes.
fn lay_l4(
    registry: &Registry,
    subsets: &BTreeMap<String, SubsetLabels>,
    src: &Source<'_>,
    pending: &[PendingL4],
    entry_port: u16,
    dangling: &mut BTreeSet<String>,
) -> Vec<L4Route> {
    let mut routes = Vec::new();
    for p in pending {
        let matches: Vec<L4Match> = p
            .matches
            .iter()
            .filter(|m| m.port.is_none_or(|mp| mp == entry_port))
            .cloned()
            .collect();
        if !p.matches.is_empty() && matches.is_empty() {
            continue;
        }
        routes.push(L4Route {
            name: src.id(),
            matches,
            destinations: p
                .destinations
                .iter()
                .map(|d| lay_destination(registry, subsets, d, entry_port, dangling))
                .collect(),
        });
    }
    routes
}

/// Every VirtualService for the mesh, oldest first; a host already routed by an older one is
/// not taken again (Istio uses one VirtualService per host for sidecars) and reported.
pub fn virtual_services(
    registry: &Registry,
    subsets: &BTreeMap<String, SubsetLabels>,
    sources: &[Source<'_>],
    problems: &mut Vec<Problem>,
) -> BTreeMap<(String, u16), Vec<HttpRoute>> {
    virtual_services_all(registry, subsets, sources, problems).0
}

/// The route tables of every VirtualService for the mesh ([`virtual_services`]): `http` per
/// HTTP Service port and `tls`/`tcp` per Service port.
#[allow(clippy::type_complexity)]
pub fn virtual_services_all(
    registry: &Registry,
    subsets: &BTreeMap<String, SubsetLabels>,
    sources: &[Source<'_>],
    problems: &mut Vec<Problem>,
) -> (
    BTreeMap<(String, u16), Vec<HttpRoute>>,
    BTreeMap<(String, u16), L4Table>,
) {
    let ordered: Vec<(u8, &Source)> = by_age(sources).into_iter().map(|s| (0, s)).collect();
    virtual_services_ordered(registry, subsets, &ordered, problems)
}

/// [`virtual_services_all`] of VirtualServices in the order given, each with its group (the
/// order and groups one client sees them in: [`super::compile::visible_virtual_services`]):
/// an earlier one keeps a host a later, equally specific one names. Within a group that is a
/// conflict and reported; across groups it is `exportTo`'s override (a client namespace's own
/// VirtualService over one exported everywhere), as intended, and not reported.
#[allow(clippy::type_complexity)]
pub fn virtual_services_ordered(
    registry: &Registry,
    subsets: &BTreeMap<String, SubsetLabels>,
    sources: &[(u8, &Source<'_>)],
    problems: &mut Vec<Problem>,
) -> (
    BTreeMap<(String, u16), Vec<HttpRoute>>,
    BTreeMap<(String, u16), L4Table>,
) {
    let mut out: BTreeMap<(String, u16), Vec<HttpRoute>> = BTreeMap::new();
    let mut out_l4: BTreeMap<(String, u16), L4Table> = BTreeMap::new();
    let mut owner: BTreeMap<String, ((bool, usize), String, u8)> = BTreeMap::new();
    for &(group, src) in sources {
        let compiled = match compile_virtual_service(registry, subsets, src) {
            Ok(c) => c,
            Err(Refusal::GatewaysOnly) => continue,
            Err(Refusal::Invalid(message)) => {
                problems.push(Problem::new(VIRTUAL_SERVICE, src, message));
                continue;
            }
        };
        let mut notes = Vec::new();
        for host in &compiled.unknown_hosts {
            notes.push(format!(
                "host {host} is not a Service weft knows (yet); nothing is routed for it"
            ));
        }
        let hosts: BTreeSet<&String> = compiled
            .routes
            .keys()
            .chain(compiled.l4.keys())
            .map(|(h, _)| h)
            .collect();
        let mut taken = BTreeSet::new();
        for host in hosts {
            let rank = compiled.specificity.get(host).copied().unwrap_or((true, 0));
            match owner.get(host) {
                // Istio: the most specific host entry wins a Service (exact over wildcard,
                // longer wildcard over shorter); equals: the oldest, the other reported.
                Some((first_rank, first, first_group))
                    if *first_rank == rank && *first_group == group =>
                {
                    notes.push(format!(
                        "host {host} is already routed by VirtualService {first} (older); for sidecars one VirtualService per host applies, so this one is ignored for {host}"
                    ))
                }
                Some((first_rank, _, _)) if *first_rank >= rank => {}
                Some(_) => {
                    out.retain(|(h, _), _| h != host);
                    out_l4.retain(|(h, _), _| h != host);
                    taken.insert(host.clone());
                }
                None => {
                    taken.insert(host.clone());
                }
            }
        }
        for host in &taken {
            let rank = compiled.specificity.get(host).copied().unwrap_or((true, 0));
            owner.insert(host.clone(), (rank, src.id(), group));
        }
        for ((host, port), routes) in compiled.routes {
            if taken.contains(&host) {
                out.insert((host, port), routes);
            }
        }
        for ((host, port), table) in compiled.l4 {
            if taken.contains(&host) {
                out_l4.insert((host, port), table);
            }
        }
        if !compiled.dangling.is_empty() {
            notes.push(format!(
                "{}; requests routed there get 503 (NR) until it exists",
                compiled.dangling.join("; ")
            ));
        }
        if !notes.is_empty() {
            problems.push(Problem::new(VIRTUAL_SERVICE, src, notes.join(". ")));
        }
    }
    (out, out_l4)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::RetryOn;
    use crate::route::compile::{Resources, compile};
    use serde_json::json;

    /// Seed 003's namespace: reviews (one HTTP port, 9080) and ratings (two ports).
    fn registry() -> Registry {
        let mut r = Registry::new("cluster.local");
        r.add("reviews.payments.svc.cluster.local", 9080, true);
        r.add("ratings.payments.svc.cluster.local", 9080, true);
        r.add("ratings.payments.svc.cluster.local", 5432, false);
        r
    }

    fn src<'a>(name: &'a str, created: &'a str, spec: &'a Value) -> Source<'a> {
        Source {
            namespace: "payments",
            name,
            created,
            spec,
        }
    }

    /// Seed 003, section 5, verbatim (the specs of both resources).
    #[cfg(feature = "control-plane")]
    fn seed_003() -> (Value, Value) {
        let docs: Vec<Value> = serde_yaml_docs(
            r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: reviews
  namespace: payments
spec:
  host: reviews
  subsets:
  - name: v1
    labels:
      version: v1
  - name: v2
    labels:
      version: v2
  trafficPolicy:
    tls:
      mode: ISTIO_MUTUAL   # use mesh-issued mTLS to the upstream
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
  namespace: payments
spec:
  hosts:
  - reviews
  http:
  - route:
    - destination:
        host: reviews
        subset: v1
      weight: 90
    - destination:
        host: reviews
        subset: v2
      weight: 10
"#,
        );
        (docs[0]["spec"].clone(), docs[1]["spec"].clone())
    }

    #[cfg(feature = "control-plane")]
    /// YAML documents as JSON values (serde_yaml comes with the control plane, which unit
    /// tests build).
    fn serde_yaml_docs(text: &str) -> Vec<Value> {
        text.split("\n---\n")
            .map(|d| serde_yaml::from_str(d).expect("test YAML"))
            .collect()
    }

    #[cfg(feature = "control-plane")]
    #[test]
    fn seed_003_subsets_and_90_10_split_compile_to_one_weighted_route() {
        let (dr, vs) = seed_003();
        let tables = compile(
            &registry(),
            Resources {
                destination_rules: &[src("reviews", "2026-01-01T00:00:00Z", &dr)],
                virtual_services: &[src("reviews", "2026-01-01T00:00:00Z", &vs)],
                traffic_splits: &[],
                http_route_groups: &[],
            },
        );
        assert_eq!(
            tables.problems,
            [],
            "ISTIO_MUTUAL is weft's default: nothing to report"
        );
        let host = "reviews.payments.svc.cluster.local";
        let subsets = &tables.subsets[host];
        assert_eq!(
            subsets["v1"],
            [("version".to_string(), "v1".to_string())].into()
        );
        assert_eq!(
            subsets["v2"],
            [("version".to_string(), "v2".to_string())].into()
        );
        let routes = &tables.http[&(host.to_string(), 9080)];
        let want = |subset: &str, weight| Destination {
            service: host.into(),
            port: 9080,
            subset: Some(subset.into()),
            weight,
            ..Default::default()
        };
        assert_eq!(
            routes,
            &[HttpRoute {
                name: "payments/reviews".into(),
                matches: vec![],
                destinations: vec![want("v1", 90), want("v2", 10)],
                ..Default::default()
            }]
        );
        crate::route::model::validate("reviews", routes).expect("the proxy accepts it");
    }

    #[test]
    fn destination_rule_fields_not_implemented_are_named_and_the_subsets_still_apply() {
        let dr = json!({
            "host": "reviews.payments.svc.cluster.local",
            "exportTo": ["."],
            "workloadSelector": {"matchLabels": {"app": "x"}},
            "trafficPolicy": {"loadBalancer": {"simple": "LEAST_REQUEST"},
                              "connectionPool": {"tcp": {"maxConnections": 1}},
                              "outlierDetection": {"consecutive5xxErrors": 1},
                              "tls": {"mode": "SIMPLE", "caCertificates": "/etc/ca.pem"}},
            "subsets": [{"name": "v1", "labels": {"version": "v1"},
                         "trafficPolicy": {"portLevelSettings": []}}]
        });
        let mut problems = Vec::new();
        let (subsets, policies) =
            destination_rules_with_tls(&registry(), &[src("r", "t", &dr)], &mut problems);
        assert!(subsets["reviews.payments.svc.cluster.local"].contains_key("v1"));
        // Balancing and outlier detection apply (src/route/istio_policy.rs), to the host and,
        // merged, to the subset.
        let host = &policies["reviews.payments.svc.cluster.local"];
        assert_eq!(
            host.traffic.load_balancer,
            Some(crate::route::balance::LoadBalancer::LeastRequest)
        );
        assert_eq!(
            host.traffic
                .outlier_detection
                .as_ref()
                .map(|o| o.consecutive_5xx),
            Some(1)
        );
        assert_eq!(
            host.traffic
                .connection_pool
                .as_ref()
                .and_then(|c| c.max_connections),
            Some(1)
        );
        assert_eq!(host.subset_traffic["v1"], host.traffic);
        assert_eq!(problems.len(), 1);
        let m = &problems[0].message;
        assert!(
            !m.contains("loadBalancer") && !m.contains("outlierDetection"),
            "{m}"
        );
        assert!(m.contains("workloadSelector"), "{m}");
        // A CA file in the proxy is applied (read by the proxy), not named.
        assert!(!m.contains("caCertificates"), "{m}");
        assert_eq!(
            host.traffic
                .origination
                .as_ref()
                .and_then(|o| o.ca_certificates.as_deref()),
            Some("/etc/ca.pem")
        );
        assert!(m.contains("not supported yet"), "{m}");
        // exportTo is applied by the lookup (route::compile), so not named here.
        assert!(!m.contains("exportTo"), "{m}");
        // An exportTo Istio's validation refuses refuses the rule, naming the entry.
        let tilde = json!({"host": "reviews", "exportTo": ["~"]});
        let mut problems = Vec::new();
        let subsets = destination_rules(&registry(), &[src("none", "t", &tilde)], &mut problems);
        assert!(subsets.is_empty());
        assert!(
            problems[0]
                .message
                .contains("exportTo[0]: ~ (none) is not allowed"),
            "{problems:?}"
        );
        // An unknown field is no Istio field: the rule is refused naming it.
        let bad = json!({"host": "reviews", "subsetz": []});
        let mut problems = Vec::new();
        let subsets = destination_rules(&registry(), &[src("bad", "t", &bad)], &mut problems);
        assert!(subsets.is_empty());
        assert!(problems[0].message.contains("subsetz"), "{problems:?}");
    }

    #[test]
    fn tls_modes_of_the_oldest_rule_apply_per_host_and_subset_and_a_conflict_is_reported() {
        // Seed 004's form: mTLS off for one host; a subset may say otherwise.
        let off = json!({"host": "reviews", "trafficPolicy": {"tls": {"mode": "DISABLE"}},
                         "subsets": [{"name": "v2", "labels": {"version": "v2"},
                                      "trafficPolicy": {"tls": {"mode": "ISTIO_MUTUAL"}}}]});
        let on = json!({"host": "reviews", "trafficPolicy": {"tls": {"mode": "ISTIO_MUTUAL"}}});
        let mut problems = Vec::new();
        let (_, tls) = destination_rules_with_tls(
            &registry(),
            &[src("on", "t2", &on), src("off", "t1", &off)],
            &mut problems,
        );
        let reviews = &tls["reviews.payments.svc.cluster.local"];
        assert_eq!(reviews.mode, Some(ClientTls::Disable));
        assert_eq!(reviews.subsets["v2"], ClientTls::IstioMutual);
        assert_eq!(reviews.rule, "payments/off");
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].name, "on");
        assert!(problems[0].message.contains("payments/off"), "{problems:?}");
        // The mode reaches the Service entry the proxy reads.
        let tables = compile(
            &registry(),
            Resources {
                destination_rules: &[src("off", "t1", &off)],
                ..Default::default()
            },
        );
        assert_eq!(
            tables.tls["reviews.payments.svc.cluster.local"].mode,
            Some(ClientTls::Disable)
        );
    }

    #[test]
    fn the_older_destination_rule_keeps_a_subset_name_and_new_names_merge() {
        let old =
            json!({"host": "reviews", "subsets": [{"name": "v1", "labels": {"version": "v1"}}]});
        let new = json!({"host": "reviews", "subsets": [{"name": "v1", "labels": {"version": "x"}},
                                                        {"name": "v2", "labels": {"version": "v2"}}]});
        let mut problems = Vec::new();
        let subsets = destination_rules(
            &registry(),
            &[
                src("new", "2026-02-01T00:00:00Z", &new),
                src("old", "2026-01-01T00:00:00Z", &old),
            ],
            &mut problems,
        );
        let t = &subsets["reviews.payments.svc.cluster.local"];
        assert_eq!(t["v1"]["version"], "v1");
        assert!(t.contains_key("v2"));
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].name, "new");
        assert!(problems[0].message.contains("payments/old"), "{problems:?}");
    }

    fn vs_error(spec: Value) -> String {
        match compile_virtual_service(&registry(), &BTreeMap::new(), &src("vs", "t", &spec)) {
            Err(Refusal::Invalid(m)) => m,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn mirrors_resolve_like_destinations_with_istios_default_share() {
        let spec = json!({"hosts": ["reviews"], "http": [{
            "match": [{"uri": {"prefix": "/a"}}],
            "route": [{"destination": {"host": "reviews"}}],
            "mirror": {"host": "ratings", "port": {"number": 9080}},
            "mirrorPercentage": {"value": 25.5}}, {
            "route": [{"destination": {"host": "reviews"}}],
            "mirrors": [{"destination": {"host": "reviews", "subset": "v2"}}]}]});
        let c =
            compile_virtual_service(&registry(), &BTreeMap::new(), &src("vs", "t", &spec)).unwrap();
        let routes = &c.routes[&("reviews.payments.svc.cluster.local".to_string(), 9080)];
        let m: Vec<&crate::route::action::Mirror> =
            routes.iter().flat_map(|r| &r.actions.mirrors).collect();
        assert_eq!(m.len(), 2);
        assert_eq!(
            (
                m[0].destination.service.as_str(),
                m[0].destination.port,
                m[0].per_million
            ),
            ("ratings.payments.svc.cluster.local", 9080, 255_000)
        );
        // No port: the destination's only one; no percentage: all requests (Istio).
        assert_eq!(
            (
                m[1].destination.port,
                m[1].destination.subset.as_deref(),
                m[1].per_million
            ),
            (9080, Some("v2"), 1_000_000)
        );
        // The missing subset is reported like a route destination's.
        assert!(
            c.dangling.iter().any(|d| d.contains("subset \"v2\"")),
            "{:?}",
            c.dangling
        );
        assert!(
            routes[0]
                .actions
                .summary()
                .contains("mirror ratings.payments.svc.cluster.local:9080 25.5%")
        );
        // Deprecated integer share, and refusals.
        let old = json!({"hosts": ["reviews"], "http": [{"route": [{"destination": {"host": "reviews"}}],
            "mirror": {"host": "ratings", "port": {"number": 9080}}, "mirrorPercent": 10}]});
        let c =
            compile_virtual_service(&registry(), &BTreeMap::new(), &src("vs", "t", &old)).unwrap();
        let routes = &c.routes[&("reviews.payments.svc.cluster.local".to_string(), 9080)];
        assert_eq!(routes[0].actions.mirrors[0].per_million, 100_000);
        let m = vs_error(
            json!({"hosts": ["reviews"], "http": [{"route": [{"destination": {"host": "reviews"}}],
            "mirrorPercentage": {"value": 5}}]}),
        );
        assert!(
            m.contains("http[0].mirrorPercentage needs http[0].mirror"),
            "{m}"
        );
        let m = vs_error(
            json!({"hosts": ["reviews"], "http": [{"route": [{"destination": {"host": "reviews"}}],
            "mirror": {"host": "ratings", "port": {"number": 9080}}, "mirrorPercentage": {"value": 150}}]}),
        );
        assert!(m.contains("http[0].mirrorPercentage.value 150"), "{m}");
        let m = vs_error(
            json!({"hosts": ["reviews"], "http": [{"redirect": {"uri": "/x"},
            "mirror": {"host": "ratings", "port": {"number": 9080}}}]}),
        );
        assert!(m.contains("both redirect and mirror"), "{m}");
        let m = vs_error(
            json!({"hosts": ["reviews"], "http": [{"route": [{"destination": {"host": "reviews"}}],
            "mirror": {"host": "ratings", "port": {"number": 9080}},
            "mirrors": [{"destination": {"host": "reviews"}}]}]}),
        );
        assert!(m.contains("both mirror and mirrors"), "{m}");
    }

    #[test]
    fn every_http_field_not_implemented_refuses_the_virtual_service_by_name() {
        for field in ["delegate", "directResponse"] {
            let mut route = json!({"route": [{"destination": {"host": "reviews"}}]});
            route[field] = json!({});
            let m = vs_error(json!({"hosts": ["reviews"], "http": [route]}));
            assert!(m.contains(&format!("http[0].{field}")), "{field}: {m}");
            assert!(m.contains("not supported yet"), "{m}");
        }
        // Fields inside implemented actions that are not implemented themselves.
        for (field, value, named) in [
            (
                "rewrite",
                json!({"uriRegexRewrite": {"match": "a", "rewrite": "b"}}),
                "http[0].rewrite.uriRegexRewrite",
            ),
            (
                "retries",
                json!({"attempts": 2, "backoff": "1s"}),
                "http[0].retries.backoff",
            ),
            (
                "fault",
                json!({"abort": {"http2Error": "x"}}),
                "http[0].fault.abort.http2Error",
            ),
        ] {
            let mut route = json!({"route": [{"destination": {"host": "reviews"}}]});
            route[field] = value;
            let m = vs_error(json!({"hosts": ["reviews"], "http": [route]}));
            assert!(m.contains(named), "{field}: {m}");
        }
        let m = vs_error(json!({"hosts": ["reviews"], "http": [{
            "redirect": {"uri": "/x", "derivePort": "FROM_REQUEST_PORT"}}]}));
        assert!(m.contains("http[0].redirect.derivePort"), "{m}");
        // The L4 match field weft does not implement (Istio neither), by name.
        let e = vs_error(json!({"hosts": ["ratings"], "tcp": [{
            "match": [{"sourceSubnet": "198.18.0.0/15"}],
            "route": [{"destination": {"host": "ratings"}}]}]}));
        assert!(e.contains("tcp[0].match[0].sourceSubnet"), "{e}");
        // match.gateways is read (route::gateway::routes_for); a malformed one is named.
        let m = vs_error(json!({"hosts": ["reviews"], "http": [{
            "match": [{"gateways": "mesh"}],
            "route": [{"destination": {"host": "reviews"}}]}]}));
        assert!(
            m.contains("http[0].match[0].gateways must be a list"),
            "{m}"
        );
        let m = vs_error(json!({"hosts": ["reviews"], "htp": []}));
        assert!(m.contains("htp"), "an unknown field is named: {m}");
    }

    #[test]
    fn cors_policy_compiles_as_istio_translates_it_for_envoy() {
        use crate::route::cors::{CorsPolicy, UnmatchedPreflights};
        // Istio's VirtualService reference example (ratings), with each kind of origin.
        let spec = json!({"hosts": ["ratings"], "http": [{
            "route": [{"destination": {"host": "ratings"}}],
            "corsPolicy": {
                "allowOrigins": [{"exact": "https://example.com"}, {"prefix": "https://dev."},
                                 {"regex": "https://.*\\.example\\.org"}],
                "allowMethods": ["POST", "GET"],
                "allowCredentials": false,
                "allowHeaders": ["X-Foo-Bar"],
                "exposeHeaders": ["X-Expose"],
                "maxAge": "24h",
                "unmatchedPreflights": "IGNORE"}}]});
        let c =
            compile_virtual_service(&registry(), &BTreeMap::new(), &src("vs", "t", &spec)).unwrap();
        let routes = &c.routes[&("ratings.payments.svc.cluster.local".to_string(), 9080)];
        let cors = routes[0]
            .actions
            .cors
            .as_ref()
            .expect("the route carries it");
        assert_eq!(
            *cors,
            CorsPolicy {
                allow_origins: vec![
                    StringMatch::Exact("https://example.com".into()),
                    StringMatch::Prefix("https://dev.".into()),
                    StringMatch::Regex(Pattern::new(r"https://.*\.example\.org").unwrap()),
                ],
                allow_methods: vec!["POST".into(), "GET".into()],
                allow_headers: vec!["X-Foo-Bar".into()],
                expose_headers: vec!["X-Expose".into()],
                max_age_secs: Some(86_400),
                allow_credentials: false,
                unmatched_preflights: UnmatchedPreflights::Ignore,
            }
        );
        assert!(cors.allows_origin("https://shop.example.org"));
        // Unset: FORWARD, no Max-Age; the deprecated allowOrigin is read as exact origins
        // when allowOrigins is not given, and left aside when it is.
        let old = json!({"hosts": ["ratings"], "http": [{
            "route": [{"destination": {"host": "ratings"}}],
            "corsPolicy": {"allowOrigin": ["https://old.example"]}}]});
        let c =
            compile_virtual_service(&registry(), &BTreeMap::new(), &src("vs", "t", &old)).unwrap();
        let cors = c.routes[&("ratings.payments.svc.cluster.local".to_string(), 9080)][0]
            .actions
            .cors
            .clone()
            .unwrap();
        assert_eq!(
            cors.allow_origins,
            vec![StringMatch::Exact("https://old.example".into())]
        );
        assert_eq!(cors.unmatched_preflights, UnmatchedPreflights::Forward);
        assert_eq!(cors.max_age_secs, None);
        let both = json!({"hosts": ["ratings"], "http": [{
            "route": [{"destination": {"host": "ratings"}}],
            "corsPolicy": {"allowOrigin": ["https://old.example"],
                           "allowOrigins": [{"exact": "https://new.example"}]}}]});
        let c =
            compile_virtual_service(&registry(), &BTreeMap::new(), &src("vs", "t", &both)).unwrap();
        let cors = c.routes[&("ratings.payments.svc.cluster.local".to_string(), 9080)][0]
            .actions
            .cors
            .clone()
            .unwrap();
        assert!(!cors.allows_origin("https://old.example"));
        assert!(cors.allows_origin("https://new.example"));
    }

    #[test]
    fn a_bad_cors_policy_refuses_the_virtual_service_naming_the_field() {
        let with = |cors: Value| {
            vs_error(json!({"hosts": ["ratings"], "http": [
                {"route": [{"destination": {"host": "ratings"}}]},
                {"route": [{"destination": {"host": "ratings"}}], "corsPolicy": cors}]}))
        };
        let cases = [
            (
                json!({"allowOrigins": [{"regex": "(a"}]}),
                "http[1].corsPolicy.allowOrigins[0].regex",
            ),
            (
                json!({"allowOrigins": [{"regex": "(((a{100}){100}){100})"}]}),
                "http[1].corsPolicy.allowOrigins[0].regex",
            ),
            (
                json!({"allowOrigins": [{}]}),
                "http[1].corsPolicy.allowOrigins[0] is empty",
            ),
            (
                json!({"allowMethods": ["FETCH"]}),
                "http[1].corsPolicy.allowMethods[0]",
            ),
            (
                json!({"allowHeaders": ["bad header"]}),
                "http[1].corsPolicy.allowHeaders[0]",
            ),
            (json!({"maxAge": "1.5s"}), "http[1].corsPolicy.maxAge"),
            (json!({"maxAge": "soon"}), "http[1].corsPolicy.maxAge"),
            (
                json!({"unmatchedPreflights": "DROP"}),
                "http[1].corsPolicy.unmatchedPreflights",
            ),
            (json!({"allowOrigns": []}), "allowOrigns"),
        ];
        for (cors, named) in cases {
            let m = with(cors.clone());
            assert!(m.contains(named), "{cors}: {m}");
            assert!(m.contains("not applied"), "{m}");
        }
    }

    #[test]
    fn route_actions_compile_as_istio_documents_them() {
        use crate::route::action::{Abort, Delay, Fault, Redirect, Rewrite};
        let spec = json!({"hosts": ["reviews"], "http": [
            {"match": [{"uri": {"prefix": "/old/"}}],
             "redirect": {"uri": "/new/", "authority": "ratings", "redirectCode": 308}},
            {"match": [{"uri": {"prefix": "/v1/"}}],
             "rewrite": {"uri": "/v2/", "authority": "reviews.internal"},
             "timeout": "2s",
             "retries": {"attempts": 3, "perTryTimeout": "500ms", "retryOn": "gateway-error,reset,409"},
             "fault": {"delay": {"fixedDelay": "50ms", "percentage": {"value": 12.5}},
                       "abort": {"httpStatus": 503, "percentage": {"value": 50}}},
             "headers": {"request": {"set": {"X-Route": "v1"}, "remove": ["x-debug"]},
                         "response": {"add": {"x-served-by": "weft"}}},
             "route": [{"destination": {"host": "reviews"},
                        "headers": {"request": {"set": {"x-dest": "a"}}}}]},
            {"route": [{"destination": {"host": "reviews"}}],
             "retries": {"attempts": 0}}
        ]});
        let c = compile_virtual_service(&registry(), &BTreeMap::new(), &src("vs", "t", &spec))
            .expect("compiles");
        let routes = &c.routes[&("reviews.payments.svc.cluster.local".to_string(), 9080)];
        assert_eq!(routes.len(), 3);
        assert!(routes[0].destinations.is_empty());
        assert_eq!(
            routes[0].actions.redirect,
            Some(Redirect {
                uri: Some("/new/".into()),
                authority: Some("ratings".into()),
                scheme: None,
                port: None,
                code: 308,
                prefix: None,
            })
        );
        let a = &routes[1].actions;
        assert_eq!(
            a.rewrite,
            Some(Rewrite {
                uri: Some("/v2/".into()),
                authority: Some("reviews.internal".into())
            })
        );
        assert_eq!(a.timeout_ms, Some(2000));
        let r = a.retries.as_ref().expect("retries");
        assert_eq!(r.attempts, 3);
        assert_eq!(r.per_try_timeout_ms, Some(500));
        assert_eq!(
            r.on,
            [
                RetryOn::GatewayError,
                RetryOn::Reset,
                RetryOn::RetriableStatusCodes
            ]
        );
        assert_eq!(r.status_codes, [409]);
        assert_eq!(
            a.fault,
            Some(Fault {
                delay: Some(Delay {
                    ms: 50,
                    per_million: 125_000
                }),
                abort: Some(Abort {
                    status: Some(503),
                    grpc_status: None,
                    per_million: 500_000
                }),
            })
        );
        assert_eq!(
            a.request_headers.set["x-route"], "v1",
            "names are lowercased"
        );
        assert_eq!(a.request_headers.remove, ["x-debug"]);
        assert_eq!(a.response_headers.add["x-served-by"], "weft");
        assert_eq!(routes[1].destinations[0].request_headers.set["x-dest"], "a");
        // attempts 0 turns retries off; a route without `retries` keeps Istio's default.
        assert_eq!(
            routes[2].actions.retries.as_ref().map(|r| r.attempts),
            Some(0)
        );
        assert_eq!(
            routes[0].actions.retry_policy(),
            crate::route::Retries::istio_default()
        );
    }

    #[test]
    fn bad_route_actions_are_refused_naming_what_to_change() {
        let route = |extra: Value| {
            let mut r = json!({"route": [{"destination": {"host": "reviews"}}]});
            for (k, v) in extra.as_object().unwrap() {
                r[k] = v.clone();
            }
            vs_error(json!({"hosts": ["reviews"], "http": [r]}))
        };
        for (extra, says) in [
            (
                json!({"retries": {"attempts": 2, "retryOn": "5xx,sometimes"}}),
                "retryOn \"sometimes\"",
            ),
            (json!({"retries": {"attempts": 100}}), "attempts 100"),
            (
                json!({"retries": {"attempts": 2, "retryOn": "999"}}),
                "not an HTTP status",
            ),
            (json!({"timeout": "soon"}), "http[0].timeout"),
            (
                json!({"fault": {"abort": {"httpStatus": 503, "percentage": {"value": 150}}}}),
                "from 0 to 100",
            ),
            (
                json!({"fault": {"abort": {"grpcStatus": "SOMETIMES"}}}),
                "grpcStatus",
            ),
            (
                json!({"fault": {"delay": {"percentage": {"value": 5}}}}),
                "fixedDelay is required",
            ),
            (json!({"fault": {}}), "give delay or abort"),
            (
                json!({"headers": {"request": {"set": {"x-a": "1\r\nx-b: 2"}}}}),
                "line break",
            ),
            (
                json!({"headers": {"request": {"set": {"bad name": "1"}}}}),
                "not a header name",
            ),
            (
                json!({"headers": {"request": {"set": {"host": "x"}}}}),
                "rewrite.authority",
            ),
            (json!({"rewrite": {"uri": "no-slash"}}), "not a path"),
            (
                json!({"redirect": {"uri": "/x"}}),
                "both redirect and route",
            ),
        ] {
            let m = route(extra.clone());
            assert!(m.contains(says), "{extra}: {m}");
            assert!(m.contains("not applied"), "{m}");
        }
        let m = vs_error(json!({"hosts": ["reviews"], "http": [{
            "redirect": {"uri": "/x", "redirectCode": 200}}]}));
        assert!(m.contains("redirectCode 200"), "{m}");
    }

    #[test]
    fn weights_must_sum_to_100_unless_one_destination_omits_its_weight() {
        let dests = |w1: Value, w2: Value| {
            json!({"hosts": ["reviews"], "http": [{"route": [
                {"destination": {"host": "reviews", "subset": "v1"}, "weight": w1},
                {"destination": {"host": "reviews", "subset": "v2"}, "weight": w2}]}]})
        };
        assert!(vs_error(dests(json!(90), json!(20))).contains("sum to 110"));
        assert!(vs_error(dests(json!(90), Value::Null)).contains("sum to 90"));
        assert!(vs_error(dests(json!(-10), json!(110))).contains("negative"));
        assert!(vs_error(dests(json!(0), json!(0))).contains("sum to 0"));
        // 100/0 is a valid drain of v2.
        let spec = dests(json!(100), json!(0));
        let c =
            compile_virtual_service(&registry(), &BTreeMap::new(), &src("vs", "t", &spec)).unwrap();
        let r = &c.routes[&("reviews.payments.svc.cluster.local".to_string(), 9080)][0];
        assert_eq!(
            r.destinations.iter().map(|d| d.weight).collect::<Vec<_>>(),
            [100, 0]
        );
        // A lone destination without weight takes everything.
        let spec = json!({"hosts": ["reviews"], "http": [{"route": [{"destination": {"host": "reviews"}}]}]});
        let c =
            compile_virtual_service(&registry(), &BTreeMap::new(), &src("vs", "t", &spec)).unwrap();
        assert_eq!(
            c.routes.values().next().unwrap()[0].destinations[0].weight,
            100
        );
    }

    #[test]
    fn a_regex_bomb_is_refused_and_a_sane_regex_compiles() {
        let with_uri = |regex: &str| {
            json!({"hosts": ["reviews"], "http": [{
                "match": [{"uri": {"regex": regex}}],
                "route": [{"destination": {"host": "reviews"}}]}]})
        };
        let m = vs_error(with_uri("(a{1000}){1000}"));
        assert!(m.contains("http[0].match[0].uri.regex"), "{m}");
        assert!(m.contains("simplify"), "{m}");
        let m = vs_error(with_uri("(unclosed"));
        assert!(m.contains("not a valid regular expression"), "{m}");
        let spec = with_uri("/api/v[0-9]+/.*");
        let c =
            compile_virtual_service(&registry(), &BTreeMap::new(), &src("vs", "t", &spec)).unwrap();
        let m = &c.routes.values().next().unwrap()[0].matches[0];
        assert!(m.uri.as_ref().unwrap().matches("/api/v2/x"));
        assert!(!m.uri.as_ref().unwrap().matches("/api/vx/x"));
    }

    #[test]
    fn matches_headers_query_and_ports_compile_as_istio_reads_them() {
        let spec = json!({"hosts": ["ratings.payments.svc.cluster.local"], "http": [
            {"name": "jason", "match": [{"headers": {"End-User": {"exact": "jason"}},
                                         "withoutHeaders": {"x-test": {}},
                                         "queryParams": {"v": {"prefix": "2"}},
                                         "method": {"exact": "GET"}}],
             "route": [{"destination": {"host": "reviews", "subset": "v2"}}]},
            {"match": [{"port": 5432}], "route": [{"destination": {"host": "ratings"}}]},
            {"route": [{"destination": {"host": "ratings", "port": {"number": 9080}}}]}
        ]});
        let subsets: BTreeMap<String, SubsetLabels> = [(
            "reviews.payments.svc.cluster.local".to_string(),
            [("v2".to_string(), BTreeMap::new())].into(),
        )]
        .into();
        let c = compile_virtual_service(&registry(), &subsets, &src("vs", "t", &spec)).unwrap();
        assert!(c.dangling.is_empty(), "{:?}", c.dangling);
        // Only ratings' HTTP port gets routes, and the port-5432 route is not among them.
        let keys: Vec<_> = c.routes.keys().cloned().collect();
        assert_eq!(
            keys,
            [("ratings.payments.svc.cluster.local".to_string(), 9080)]
        );
        let routes = &c.routes[&keys[0]];
        assert_eq!(routes.len(), 2);
        let m = &routes[0].matches[0];
        assert_eq!(m.headers["end-user"], StringMatch::Exact("jason".into()));
        assert_eq!(
            m.without_headers["x-test"],
            StringMatch::Prefix(String::new())
        );
        assert_eq!(m.query_params["v"], StringMatch::Prefix("2".into()));
        // reviews has one port: a destination without port goes there.
        assert_eq!(routes[0].destinations[0].port, 9080);
        assert_eq!(routes[1].destinations[0].port, 9080);
    }

    #[test]
    fn missing_subsets_and_services_keep_the_route_and_are_reported() {
        let spec = json!({"hosts": ["reviews", "nosuch"], "http": [{"route": [
            {"destination": {"host": "reviews", "subset": "v3"}, "weight": 50},
            {"destination": {"host": "gone"}, "weight": 50}]}]});
        let mut problems = Vec::new();
        let routes = virtual_services(
            &registry(),
            &BTreeMap::new(),
            &[src("vs", "t", &spec)],
            &mut problems,
        );
        let r = &routes[&("reviews.payments.svc.cluster.local".to_string(), 9080)][0];
        assert_eq!(
            r.destinations.len(),
            2,
            "the route stays: the proxy answers 503 NR"
        );
        assert_eq!(problems.len(), 1);
        let m = &problems[0].message;
        assert!(m.contains("subset \"v3\" of reviews.payments.svc.cluster.local is defined by no DestinationRule"), "{m}");
        assert!(
            m.contains("gone.payments.svc.cluster.local is not a Service"),
            "{m}"
        );
        assert!(
            m.contains("host nosuch.payments.svc.cluster.local is not a Service"),
            "{m}"
        );
        assert!(m.contains("503 (NR)"), "{m}");
    }

    #[test]
    fn one_virtual_service_per_host_the_oldest_and_gateway_only_ones_are_ignored_silently() {
        let route = |subset: &str| json!({"hosts": ["reviews"], "http": [{"route": [{"destination": {"host": "reviews", "subset": subset}}]}]});
        let (old, new) = (route("v1"), route("v2"));
        let gw = json!({"hosts": ["reviews"], "gateways": ["storefront-internal"],
                        "http": [{"route": [{"destination": {"host": "productpage"}}]}]});
        let mesh_too = json!({"hosts": ["ratings"], "gateways": ["storefront-internal", "mesh"],
                              "http": [{"route": [{"destination": {"host": "ratings"}}]}]});
        let mut problems = Vec::new();
        let routes = virtual_services(
            &registry(),
            &BTreeMap::new(),
            &[
                src("new", "2026-02-01T00:00:00Z", &new),
                src("gw", "2025-01-01T00:00:00Z", &gw),
                src("old", "2026-01-01T00:00:00Z", &old),
                src("both", "2026-03-01T00:00:00Z", &mesh_too),
            ],
            &mut problems,
        );
        let r = &routes[&("reviews.payments.svc.cluster.local".to_string(), 9080)][0];
        assert_eq!(r.name, "payments/old");
        assert!(routes.contains_key(&("ratings.payments.svc.cluster.local".to_string(), 9080)));
        let named: Vec<&str> = problems.iter().map(|p| p.name.as_str()).collect();
        // `new` for the conflict and the dangling subsets; never `gw`.
        assert!(named.iter().all(|n| *n != "gw"), "{problems:?}");
        let new_p = problems.iter().find(|p| p.name == "new").unwrap();
        assert!(
            new_p
                .message
                .contains("already routed by VirtualService payments/old"),
            "{new_p:?}"
        );
    }

    fn ratings_subsets() -> BTreeMap<String, SubsetLabels> {
        [(
            "ratings.payments.svc.cluster.local".to_string(),
            [
                ("v1".to_string(), BTreeMap::new()),
                ("v2".to_string(), BTreeMap::new()),
            ]
            .into(),
        )]
        .into()
    }

    #[test]
    fn tcp_routes_compile_per_port_with_matches_weights_and_subsets() {
        let spec = json!({"hosts": ["ratings"], "tcp": [
            {"match": [{"port": 5432, "destinationSubnets": ["198.19.0.0/17", "198.18.1.3"],
                        "sourceLabels": {"role": "tester"}}],
             "route": [{"destination": {"host": "ratings", "subset": "v2"}}]},
            {"match": [{"port": 9080}],
             "route": [{"destination": {"host": "ratings", "subset": "v1", "port": {"number": 9080}}}]},
            {"route": [
                {"destination": {"host": "ratings", "subset": "v1"}, "weight": 70},
                {"destination": {"host": "ratings", "subset": "v2"}, "weight": 30}]}
        ]});
        let c = compile_virtual_service(&registry(), &ratings_subsets(), &src("vs", "t", &spec))
            .expect("compiles");
        assert!(c.routes.is_empty(), "no http routes");
        assert!(c.dangling.is_empty(), "{:?}", c.dangling);
        let host = "ratings.payments.svc.cluster.local".to_string();
        let db = &c.l4[&(host.clone(), 5432)];
        assert!(db.tls.is_empty());
        // The port-9080 route is not in port 5432's table; the catch-all is.
        assert_eq!(db.tcp.len(), 2);
        let m = &db.tcp[0].matches[0];
        assert_eq!(m.port, Some(5432));
        assert_eq!(
            m.destination_subnets,
            [
                "198.19.0.0/17".parse::<ipnet::IpNet>().unwrap(),
                "198.18.1.3/32".parse().unwrap()
            ]
        );
        assert_eq!(m.source_labels["role"], "tester");
        // A destination without port on a two-port Service: the port dialled (Istio's rule).
        let d = &db.tcp[0].destinations[0];
        assert_eq!(
            (d.port, d.subset.as_deref(), d.weight),
            (5432, Some("v2"), 100)
        );
        let weights: Vec<_> = db.tcp[1]
            .destinations
            .iter()
            .map(|d| (d.subset.clone().unwrap_or_default(), d.weight))
            .collect();
        assert_eq!(weights, [("v1".to_string(), 70), ("v2".to_string(), 30)]);
        assert_eq!(
            c.l4[&(host, 9080)].tcp.len(),
            2,
            "port 9080: its route and the catch-all"
        );
        assert_eq!(crate::route::l4::validate("t", db), Ok(()));
    }

    #[test]
    fn tls_routes_need_sni_hosts_within_the_hosts_and_compile_lowercased() {
        let spec = json!({"hosts": ["ratings", "*.ratings.example.com"], "tls": [
            {"match": [{"port": 5432, "sniHosts": ["DB.ratings.example.com"]}],
             "route": [{"destination": {"host": "ratings", "subset": "v2"}}]},
            {"match": [{"sniHosts": ["ratings.payments.svc.cluster.local", "*.ratings.example.com"]}],
             "route": [{"destination": {"host": "ratings", "subset": "v1"}}]}
        ]});
        let c = compile_virtual_service(&registry(), &ratings_subsets(), &src("vs", "t", &spec))
            .expect("compiles");
        let t = &c.l4[&("ratings.payments.svc.cluster.local".to_string(), 5432)];
        assert_eq!(t.tls.len(), 2);
        assert_eq!(t.tls[0].matches[0].sni_hosts, ["db.ratings.example.com"]);
        assert!(t.tcp.is_empty());
        for (spec, says) in [
            (
                json!({"hosts": ["ratings"], "tls": [{"route": [{"destination": {"host": "ratings"}}]}]}),
                "tls[0].match is required",
            ),
            (
                json!({"hosts": ["ratings"], "tls": [{"match": [{"port": 5432}],
                    "route": [{"destination": {"host": "ratings"}}]}]}),
                "tls[0].match[0].sniHosts is required",
            ),
            (
                json!({"hosts": ["ratings"], "tls": [{"match": [{"sniHosts": ["evil.example.com"]}],
                    "route": [{"destination": {"host": "ratings"}}]}]}),
                "\"evil.example.com\" is not within",
            ),
            (
                json!({"hosts": ["ratings"], "tcp": [{"match": [{"sniHosts": ["ratings"]}],
                    "route": [{"destination": {"host": "ratings"}}]}]}),
                "move the route to spec.tls",
            ),
            (
                json!({"hosts": ["ratings"], "tcp": [{"route": [
                    {"destination": {"host": "ratings", "subset": "v1"}, "weight": 70},
                    {"destination": {"host": "ratings", "subset": "v2"}, "weight": 20}]}]}),
                "tcp[0].route weights sum to 90",
            ),
            (
                json!({"hosts": ["ratings"], "tcp": [{"match": [{"destinationSubnets": ["198.18.0.0/33"]}],
                    "route": [{"destination": {"host": "ratings"}}]}]}),
                "destinationSubnets \"198.18.0.0/33\"",
            ),
            (
                json!({"hosts": ["ratings"], "tcp": [{"route": []}]}),
                "tcp[0].route has 0 destinations",
            ),
            (json!({"hosts": ["ratings"]}), "no http, tcp or tls routes"),
        ] {
            let m = vs_error(spec.clone());
            assert!(m.contains(says), "{spec}: {m}");
            assert!(m.contains("not applied"), "{m}");
        }
    }

    #[test]
    fn one_virtual_service_per_host_counts_l4_routes_and_gateways_refuse_them_by_name() {
        let tcp = |subset: &str| json!({"hosts": ["ratings"], "tcp": [{"route": [{"destination": {"host": "ratings", "subset": subset}}]}]});
        let (old, new) = (tcp("v1"), tcp("v2"));
        let mut problems = Vec::new();
        let (http, l4) = virtual_services_all(
            &registry(),
            &ratings_subsets(),
            &[
                src("new", "2026-02-01T00:00:00Z", &new),
                src("old", "2026-01-01T00:00:00Z", &old),
            ],
            &mut problems,
        );
        assert!(http.is_empty());
        let t = &l4[&("ratings.payments.svc.cluster.local".to_string(), 5432)];
        assert_eq!(t.tcp[0].name, "payments/old");
        assert_eq!(t.tcp[0].destinations[0].subset.as_deref(), Some("v1"));
        assert!(
            problems.iter().any(|p| p.name == "new"
                && p.message
                    .contains("already routed by VirtualService payments/old")),
            "{problems:?}"
        );
        // Bound to a gateway: sourceLabels are refused by name there (the gateway is every
        // route's client), in http and in tcp routes; tcp routes lay on the listener port.
        let gw = json!({"hosts": ["ratings"], "gateways": ["gw"],
            "tcp": [{"match": [{"sourceLabels": {"app": "x"}}],
                     "route": [{"destination": {"host": "ratings"}}]}],
            "http": [{"match": [{"sourceLabels": {"app": "x"}}],
                      "route": [{"destination": {"host": "ratings"}}]}]});
        let s = src("gw", "t", &gw);
        let spec = read_virtual_service(&s).expect("reads");
        match gateway_routes(&registry(), &BTreeMap::new(), &s, &spec, 80) {
            Err(Refusal::Invalid(m)) => assert!(m.contains("http[0].match[0].sourceLabels"), "{m}"),
            other => panic!("expected a refusal, got {other:?}"),
        }
        match gateway_l4_routes(&registry(), &BTreeMap::new(), &s, &spec, 5432, false) {
            Err(Refusal::Invalid(m)) => assert!(m.contains("tcp[0].match[0].sourceLabels"), "{m}"),
            other => panic!("expected a refusal, got {other:?}"),
        }
        let tcp_gw = json!({"hosts": ["ratings"], "gateways": ["gw"],
            "tcp": [{"route": [{"destination": {"host": "ratings", "subset": "v2"}}]}]});
        let s = src("gw", "t", &tcp_gw);
        let spec = read_virtual_service(&s).expect("reads");
        let (routes, dangling) =
            gateway_l4_routes(&registry(), &ratings_subsets(), &s, &spec, 31400, false)
                .expect("compiles");
        // ratings has two ports: a destination without port takes the listener's (Istio),
        // which ratings lacks: reported.
        assert_eq!(
            dangling,
            ["destination ratings.payments.svc.cluster.local has no port 31400"]
        );
        assert_eq!(
            (
                routes[0].destinations[0].port,
                routes[0].destinations[0].subset.as_deref()
            ),
            (31400, Some("v2"))
        );
    }

    #[test]
    fn source_labels_of_http_matches_are_kept_for_the_control_plane_to_filter() {
        let spec = json!({"hosts": ["reviews"], "http": [
            {"match": [{"sourceLabels": {"role": "tester"}, "uri": {"prefix": "/"}}],
             "route": [{"destination": {"host": "reviews"}}]},
            {"route": [{"destination": {"host": "reviews"}}]}]});
        let c = compile_virtual_service(&registry(), &BTreeMap::new(), &src("vs", "t", &spec))
            .expect("sourceLabels compiles");
        let routes = &c.routes[&("reviews.payments.svc.cluster.local".to_string(), 9080)];
        assert_eq!(routes[0].matches[0].source_labels["role"], "tester");
        assert!(routes[1].matches.is_empty());
    }

    /// `sourceNamespace` (http, tcp and tls matches) is kept in the match for the control
    /// plane to filter per client ([`crate::route::source`]); a name that is no namespace is
    /// refused; gateways refuse it by name (the gateway is every route's client).
    #[test]
    fn source_namespace_compiles_into_http_and_l4_matches_and_gateways_refuse_it() {
        let spec = json!({"hosts": ["ratings"],
            "http": [{"match": [{"sourceNamespace": "front"}],
                      "route": [{"destination": {"host": "ratings", "port": {"number": 9080}}}]}],
            "tcp": [{"match": [{"sourceNamespace": "back", "port": 5432}],
                     "route": [{"destination": {"host": "ratings", "port": {"number": 5432}}}]}]});
        let s = src("vs", "t", &spec);
        let c = compile_virtual_service(&registry(), &BTreeMap::new(), &s).expect("compiles");
        let host = "ratings.payments.svc.cluster.local".to_string();
        assert_eq!(
            c.routes[&(host.clone(), 9080)][0].matches[0]
                .source_namespace
                .as_deref(),
            Some("front")
        );
        assert_eq!(
            c.l4[&(host, 5432)].tcp[0].matches[0]
                .source_namespace
                .as_deref(),
            Some("back")
        );
        for (at, m) in [("http", "Front_NS"), ("tcp", "a.b")] {
            let bad = if at == "http" {
                json!({"hosts": ["ratings"], "http": [{"match": [{"sourceNamespace": m}],
                    "route": [{"destination": {"host": "ratings"}}]}]})
            } else {
                json!({"hosts": ["ratings"], "tcp": [{"match": [{"sourceNamespace": m}],
                    "route": [{"destination": {"host": "ratings"}}]}]})
            };
            let e = vs_error(bad);
            assert!(
                e.contains(&format!(
                    "{at}[0].match[0].sourceNamespace {m:?} is not a namespace name"
                )),
                "{e}"
            );
        }
        let spec = read_virtual_service(&s).expect("reads");
        match gateway_routes(&registry(), &BTreeMap::new(), &s, &spec, 80) {
            Err(Refusal::Invalid(m)) => {
                assert!(m.contains("http[0].match[0].sourceNamespace"), "{m}")
            }
            other => panic!("a gateway applied sourceNamespace: {other:?}"),
        }
        match gateway_l4_routes(&registry(), &BTreeMap::new(), &s, &spec, 5432, false) {
            Err(Refusal::Invalid(m)) => {
                assert!(m.contains("tcp[0].match[0].sourceNamespace"), "{m}")
            }
            other => panic!("a gateway applied sourceNamespace: {other:?}"),
        }
    }

    /// Bad input (issue 19): 10,000 routes compile, pass the proxy's table check and are
    /// matched in order (the last one too); one more refuses that VirtualService by name and
    /// leaves the others applied.
    #[test]
    fn ten_thousand_routes_apply_and_one_more_is_refused_without_disturbing_others() {
        use crate::route::select::{Choice, RequestView, choose_route};
        let many = |n: usize| {
            let http: Vec<Value> = (0..n)
                .map(|i| {
                    json!({"match": [{"uri": {"exact": format!("/r{i}")}}],
                           "route": [{"destination": {"host": "reviews"}}]})
                })
                .collect();
            json!({"hosts": ["reviews"], "http": http})
        };
        let (ok, too_many) = (many(MAX_ROUTES), many(MAX_ROUTES + 1));
        let ratings = json!({"hosts": ["ratings"], "http": [
            {"route": [{"destination": {"host": "ratings", "port": {"number": 9080}}}]}]});
        let mut problems = Vec::new();
        let routes = virtual_services(
            &registry(),
            &BTreeMap::new(),
            &[src("many", "1", &ok)],
            &mut problems,
        );
        assert_eq!(problems, []);
        let table = &routes[&("reviews.payments.svc.cluster.local".to_string(), 9080)];
        assert_eq!(table.len(), 10_000);
        crate::route::model::validate("reviews", table).expect("the proxy accepts it");
        let headers: Vec<(&str, &str)> = Vec::new();
        for (path, want) in [("/r0", Some(0)), ("/r9999", Some(9_999)), ("/r10000", None)] {
            let view = RequestView {
                method: "GET",
                path,
                query: None,
                port: 9080,
                headers: &headers,
            };
            let got = match choose_route(table, &view) {
                Choice::Route { index, .. } => Some(index),
                Choice::NoRoute => None,
            };
            assert_eq!(got, want, "{path}");
        }
        let mut problems = Vec::new();
        let routes = virtual_services(
            &registry(),
            &BTreeMap::new(),
            &[
                src("too-many", "1", &too_many),
                src("ratings", "2", &ratings),
            ],
            &mut problems,
        );
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].name, "too-many");
        assert!(
            problems[0]
                .message
                .contains("spec.http has 10001 routes; at most 10000 are accepted"),
            "{problems:?}"
        );
        assert!(!routes.contains_key(&("reviews.payments.svc.cluster.local".to_string(), 9080)));
        assert_eq!(
            routes[&("ratings.payments.svc.cluster.local".to_string(), 9080)].len(),
            1,
            "the other VirtualService still applies"
        );
    }

    /// `portLevelSettings` (issue 19 item 1), as Istio's `MergeTrafficPolicy`: a port's entry
    /// replaces the four fields as a whole (no inheritance), a subset's fields override the
    /// rule's at that port, then the subset's own entry for the port; other ports keep the
    /// host-wide policy. A port entry's unsupported fields are named at its path.
    #[test]
    fn port_level_settings_replace_the_policy_at_their_port_and_subsets_merge_over_it() {
        use crate::route::balance::LoadBalancer;
        let dr = json!({
            "host": "ratings",
            "trafficPolicy": {
                "loadBalancer": {"simple": "ROUND_ROBIN"},
                "outlierDetection": {"consecutive5xxErrors": 3},
                "portLevelSettings": [{"port": {"number": 9080},
                    "loadBalancer": {"simple": "RANDOM"}, "tls": {"mode": "DISABLE"}}]},
            "subsets": [
                {"name": "v1", "labels": {"version": "v1"},
                 "trafficPolicy": {"outlierDetection": {"consecutive5xxErrors": 1}}},
                {"name": "v2", "labels": {"version": "v2"},
                 "trafficPolicy": {"portLevelSettings": [{"port": {"number": 5432},
                    "loadBalancer": {"simple": "LEAST_REQUEST"}}]}}]
        });
        let mut problems = Vec::new();
        let (_, policies) =
            destination_rules_with_tls(&registry(), &[src("r", "t", &dr)], &mut problems);
        assert_eq!(problems, []);
        let p = &policies["ratings.payments.svc.cluster.local"];
        let consecutive = |t: &crate::route::TrafficPolicy| {
            t.outlier_detection.as_ref().map(|o| o.consecutive_5xx)
        };
        // Host-wide: round robin, 3 consecutive 5xx.
        assert_eq!(p.traffic.load_balancer, Some(LoadBalancer::RoundRobin));
        assert_eq!(consecutive(&p.traffic), Some(3));
        assert_eq!(p.mode, None);
        // 9080: the entry replaces all four fields: random, no outlier detection, DISABLE.
        let at_9080 = &p.ports[&9080];
        assert_eq!(at_9080.traffic.load_balancer, Some(LoadBalancer::Random));
        assert_eq!(consecutive(&at_9080.traffic), None, "not inherited");
        assert_eq!(at_9080.mode, Some(ClientTls::Disable));
        // v1's own outlierDetection over the port's policy.
        assert_eq!(
            at_9080.subset_traffic["v1"].load_balancer,
            Some(LoadBalancer::Random)
        );
        assert_eq!(consecutive(&at_9080.subset_traffic["v1"]), Some(1));
        // 5432: only v2 names it; the rule's policy elsewhere, v2's entry for v2.
        let at_5432 = &p.ports[&5432];
        assert_eq!(
            at_5432.traffic.load_balancer,
            Some(LoadBalancer::RoundRobin)
        );
        assert_eq!(
            at_5432.subset_traffic["v2"].load_balancer,
            Some(LoadBalancer::LeastRequest)
        );
        assert_eq!(consecutive(&at_5432.subset_traffic["v2"]), None);
        assert_eq!(consecutive(&at_5432.subset_traffic["v1"]), Some(1));
        // What a port entry cannot apply is named at its path; a port given twice, or none,
        // refuses the rule.
        let named = json!({"host": "ratings", "trafficPolicy": {"portLevelSettings": [
            {"port": {"number": 9080}, "tls": {"mode": "SIMPLE", "insecureSkipVerify": true}}]}});
        let mut problems = Vec::new();
        destination_rules_with_tls(&registry(), &[src("n", "t", &named)], &mut problems);
        assert!(
            problems[0]
                .message
                .contains("trafficPolicy.portLevelSettings[0].tls.insecureSkipVerify"),
            "{problems:?}"
        );
        for (bad, says) in [
            (
                json!([{"port": {"number": 80}}, {"port": {"number": 80}}]),
                "portLevelSettings[1]: port 80 is given twice",
            ),
            (
                json!([{"loadBalancer": {"simple": "RANDOM"}}]),
                "portLevelSettings[0].port.number is required",
            ),
        ] {
            let dr = json!({"host": "ratings", "trafficPolicy": {"portLevelSettings": bad}});
            let mut problems = Vec::new();
            let (_, policies) =
                destination_rules_with_tls(&registry(), &[src("b", "t", &dr)], &mut problems);
            assert!(policies.is_empty());
            assert!(problems[0].message.contains(says), "{problems:?}");
        }
    }

    /// DestinationRule `tls.mode` SIMPLE / MUTUAL (TLS origination): the mode per host, port
    /// and subset, its settings in the traffic policy; what weft cannot honour is named and
    /// marks the settings refused (the proxy then refuses, never sends plaintext).
    #[test]
    fn simple_and_mutual_compile_to_origination_settings_per_host_port_and_subset() {
        use crate::route::model::Origination;
        let dr = json!({
            "host": "ratings",
            "trafficPolicy": {
                "tls": {"mode": "SIMPLE", "credentialName": "ratings-ca",
                        "sni": "ratings.example", "subjectAltNames": ["ratings.example"]},
                "portLevelSettings": [{"port": {"number": 9080},
                                       "tls": {"mode": "MUTUAL", "credentialName": "client"}}]},
            "subsets": [{"name": "v2", "labels": {"version": "v2"},
                         "trafficPolicy": {"tls": {"mode": "DISABLE"}}}]
        });
        let mut problems = Vec::new();
        let (_, policies) =
            destination_rules_with_tls(&registry(), &[src("o", "t", &dr)], &mut problems);
        assert!(problems.is_empty(), "{problems:?}");
        let p = &policies["ratings.payments.svc.cluster.local"];
        assert_eq!(p.mode, Some(ClientTls::Simple));
        assert_eq!(
            p.traffic.origination,
            Some(Origination {
                credential_name: Some("ratings-ca".into()),
                sni: Some("ratings.example".into()),
                subject_alt_names: vec!["ratings.example".into()],
                refused: None,
                ..Default::default()
            })
        );
        assert_eq!(p.subsets["v2"], ClientTls::Disable);
        let at_9080 = &p.ports[&9080];
        assert_eq!(at_9080.mode, Some(ClientTls::Mutual));
        assert_eq!(
            at_9080
                .traffic
                .origination
                .as_ref()
                .and_then(|o| o.credential_name.as_deref()),
            Some("client")
        );
        // Port level replaces the tls as a whole: no sni from the top level.
        assert_eq!(
            at_9080
                .traffic
                .origination
                .as_ref()
                .and_then(|o| o.sni.as_ref()),
            None
        );
        // Refused by name, settings marked refused (fail closed at the proxy).
        for (tls, says) in [
            (
                json!({"mode": "MUTUAL"}),
                "trafficPolicy.tls: mode MUTUAL needs credentialName",
            ),
            (
                json!({"mode": "SIMPLE", "caCertificates": "/etc/certs/ca.pem", "credentialName": "c"}),
                "credentialName and certificate files (caCertificates, clientCertificate, privateKey, caCrl) exclude each other",
            ),
            (
                json!({"mode": "MUTUAL", "clientCertificate": "/c.pem"}),
                "or clientCertificate and privateKey",
            ),
            (
                json!({"mode": "SIMPLE", "caCertificates": "certs/ca.pem"}),
                "caCertificates must be an absolute path",
            ),
            (
                json!({"mode": "SIMPLE", "caCrl": "/crl.pem", "credentialName": "c"}),
                "exclude each other",
            ),
            (
                json!({"mode": "SIMPLE", "caCrl": "crl.pem"}),
                "caCrl must be an absolute path",
            ),
        ] {
            let dr = json!({"host": "ratings", "trafficPolicy": {"tls": tls}});
            let mut problems = Vec::new();
            let (_, policies) =
                destination_rules_with_tls(&registry(), &[src("r", "t", &dr)], &mut problems);
            assert!(
                problems.iter().any(|p| p.message.contains(says)),
                "{says}: {problems:?}"
            );
            let p = &policies["ratings.payments.svc.cluster.local"];
            assert!(p.mode.is_some_and(ClientTls::originates));
            assert!(
                p.traffic
                    .origination
                    .as_ref()
                    .is_some_and(|o| o.refused.is_some()),
                "{tls}"
            );
        }
        // Settings of SIMPLE/MUTUAL with another mode are named, not applied.
        let dr = json!({"host": "ratings", "trafficPolicy": {"tls": {"mode": "ISTIO_MUTUAL", "sni": "x.example"}}});
        let mut problems = Vec::new();
        let (_, policies) =
            destination_rules_with_tls(&registry(), &[src("m", "t", &dr)], &mut problems);
        assert!(
            problems[0]
                .message
                .contains("trafficPolicy.tls.sni (applies to mode SIMPLE and MUTUAL only)"),
            "{problems:?}"
        );
        assert_eq!(
            policies["ratings.payments.svc.cluster.local"]
                .traffic
                .origination,
            None
        );
    }
}
