//! The routing resources of the mesh laid onto the outbound Service tables: DestinationRule
//! subsets become endpoint indexes (by the pod labels of each endpoint's IP) and
//! VirtualService / TrafficSplit routes become each Service port's `http` table; Gateways and
//! the VirtualServices bound to them become each gateway pod's listeners. The
//! compilers are kube-free ([`crate::route::compile`]); this file only adapts the watched
//! objects and reports what is not applied as [`PolicyProblem`]s.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use kube::api::ObjectMeta;

use super::model::MeshView;
use super::policy::PolicyProblem;
use k8s_openapi::api::core::v1::Pod;

use crate::contract;
use crate::route::compile::{self, Registry, Resources, Source, subset_members};
use crate::route::gateway::{self, GatewayConfig};
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
    /// Gateway pod (namespace, name) -> its listeners.
    pub gateways: HashMap<(String, String), GatewayConfig>,
    /// What each GAMMA route's `status.parents` should say.
    pub gamma: Vec<crate::route::gamma::RouteStatus>,
    /// Gateway API Gateways of weft's classes ([`super::gateway_api`]).
    pub gateway_api: super::gateway_api::GatewayApi,
    /// Client namespace -> its proxies' Service tables (ClusterIP, headless), where they
    /// differ from the shared ones: `exportTo` and Istio's DestinationRule lookup make what a
    /// client sees depend on its namespace ([`crate::route::compile::compile_for`]).
    pub namespaces: BTreeMap<String, (Vec<Service>, Vec<Service>)>,
    /// Which DestinationRules apply to each host for the proxies of a namespace that is not
    /// in `client_rules` (the shared tables' lookup).
    pub rules: RulesByHost,
    /// Client namespace -> the same, where Istio's client-namespace lookup (own namespace,
    /// then the Service's, then the root namespace; `exportTo`) makes it differ.
    pub client_rules: BTreeMap<String, RulesByHost>,
    /// Proxy namespace -> the `credentialName` Secrets of that namespace that the
    /// DestinationRules visible there name for SIMPLE/MUTUAL ([`origination_credentials`]):
    /// each proxy's snapshot carries its own namespace's only.
    pub credentials: BTreeMap<String, BTreeMap<String, crate::snapshot::TlsCredential>>,
}

/// Host -> the DestinationRules a client's proxy applies to it, as `weft check` and `weft
/// describe pod` name them.
pub type RulesByHost = BTreeMap<String, HostRules>;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostRules {
    /// The rule whose TLS mode (or, without one, traffic policy) applies; empty when the
    /// rules only define subsets.
    pub tls: String,
    /// Every rule merged for the host, oldest first.
    pub all: Vec<String>,
}

fn rules_by_host(tls: &BTreeMap<String, crate::route::model::HostPolicy>) -> RulesByHost {
    tls.iter()
        .map(|(host, p)| {
            let r = HostRules {
                tls: p.rule.clone(),
                all: p.rules.clone(),
            };
            (host.clone(), r)
        })
        .collect()
}

/// Whether a pod is a gateway (Istio's injection template `gateway`): only gateway pods get
/// listeners from Gateways, as only Istio's gateway proxies do.
pub fn is_gateway_pod(pod: &Pod) -> bool {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(contract::ANNOTATION_INJECT_TEMPLATES))
        .is_some_and(|t| t.split(',').any(|t| t.trim() == contract::TEMPLATE_GATEWAY))
}

/// The namespaces whose TLS Secrets gateways need: those of gateway pods an Istio Gateway
/// with a `credentialName` server selects (Istio reads the Secret in the gateway pod's
/// namespace), and of Gateway API Gateways with a TLS listener (their automated gateway runs
/// there). Only these are watched, so the operator never asks for Secrets where no gateway
/// names a certificate (nor, then, where it was granted none).
pub fn credential_namespaces(
    pods: &[std::sync::Arc<Pod>],
    istio_gateways: &[std::sync::Arc<crate::api::Gateway>],
    gateway_api_gateways: &[std::sync::Arc<crate::api::gateway_api::Gateway>],
) -> std::collections::BTreeSet<String> {
    let selectors: Vec<BTreeMap<String, String>> = istio_gateways
        .iter()
        .filter(|g| {
            g.spec
                .raw
                .get("servers")
                .and_then(serde_json::Value::as_array)
                .is_some_and(|servers| {
                    servers
                        .iter()
                        .any(|s| s.pointer("/tls/credentialName").is_some())
                })
        })
        .filter_map(|g| gateway::selector_of(&g.spec.raw))
        .collect();
    let mut out: std::collections::BTreeSet<String> = pods
        .iter()
        .filter(|p| is_gateway_pod(p))
        .filter(|p| {
            let labels = p.metadata.labels.clone().unwrap_or_default();
            selectors.iter().any(|s| gateway::selects(s, &labels))
        })
        .filter_map(|p| p.metadata.namespace.clone())
        .collect();
    out.extend(
        gateway_api_gateways
            .iter()
            .filter(|g| g.spec.listeners.iter().any(|l| l.tls.is_some()))
            .filter_map(|g| g.metadata.namespace.clone()),
    );
    out
}

/// The accepted ServiceEntries' exact hosts, oldest entry first (their problems are the egress
/// index's to report).
fn external_hosts(view: &MeshView) -> gateway::ExternalHosts {
    let mut sorted: Vec<_> = view
        .service_entries
        .iter()
        .filter_map(|se| {
            let m = &se.metadata;
            Some((
                created(m),
                m.namespace.as_deref()?,
                m.name.as_deref()?,
                &se.spec.raw,
            ))
        })
        .collect();
    sorted.sort_by(|a, b| (&a.0, a.1, a.2).cmp(&(&b.0, b.1, b.2)));
    gateway::ExternalHosts::new(
        sorted
            .into_iter()
            .filter_map(|(_, ns, name, raw)| crate::route::egress::compile(ns, name, raw).ok()),
    )
}

/// The ports of a gateway pod with `labels` that Istio Gateways serve as `ISTIO_MUTUAL`: mesh
/// mTLS there (auto-mTLS towards them), plaintext on its other ports.
pub fn mesh_mtls_ports(
    view: &MeshView,
    labels: &BTreeMap<String, String>,
) -> std::collections::BTreeSet<u16> {
    let times: Vec<String> = view
        .istio_gateways
        .iter()
        .map(|o| created(&o.metadata))
        .collect();
    let all: Vec<Source> = view
        .istio_gateways
        .iter()
        .zip(&times)
        .filter_map(|(o, t)| source(&o.metadata, &o.spec.raw, t))
        .collect();
    gateway::mesh_mtls_ports(&all, labels)
}

/// Fills `subsets`, `http` and the client TLS modes of every Service entry.
pub fn apply(view: &MeshView, services: &mut [Service], headless: &mut Vec<Service>) -> Applied {
    if view.destination_rules.is_empty()
        && view.virtual_services.is_empty()
        && view.traffic_splits.is_empty()
        && view.istio_gateways.is_empty()
        && view.http_routes.is_empty()
        && view.grpc_routes.is_empty()
        && view.gateway_classes.is_empty()
    {
        return Applied::default();
    }
    let mut registry =
        Registry::new(&view.cluster_domain).with_root_namespace(&view.root_namespace);
    for s in services.iter().chain(headless.iter()) {
        registry.add(
            &s.name,
            s.port,
            s.protocol == Protocol::Http || s.detect_protocol,
        );
    }
    // Port names, which a GAMMA parent's sectionName gives.
    for svc in &view.services {
        let (Some(ns), Some(name)) = (
            svc.metadata.namespace.as_deref(),
            svc.metadata.name.as_deref(),
        ) else {
            continue;
        };
        let host = format!("{name}.{ns}.svc.{}", view.cluster_domain);
        let ports = svc.spec.as_ref().and_then(|s| s.ports.as_ref());
        for p in ports.into_iter().flatten() {
            if let (Some(port_name), Ok(port)) = (p.name.as_deref(), u16::try_from(p.port)) {
                registry.name_port(&host, port_name, port);
            }
        }
    }
    // ServiceEntry hosts as VirtualService hosts and destinations (egress gateways).
    let kube_hosts: std::collections::HashSet<String> =
        registry.hosts().map(String::from).collect();
    let external = external_hosts(view);
    external.register(&mut registry);
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
    // HTTPRouteGroups, which TrafficSplits' `matches` name (creation time is not used).
    let hrgs: Vec<Source> = view
        .http_route_groups
        .iter()
        .filter_map(|o| source(&o.metadata, &o.spec.raw, ""))
        .collect();
    let resources = Resources {
        destination_rules: &drs,
        virtual_services: &vss,
        traffic_splits: &tss,
        http_route_groups: &hrgs,
    };
    let mut tables = compile::compile(&registry, resources);
    // The shared lookup's findings hold for the sidecars that get the shared tables: those of
    // namespaces outside `clients`. When there is none (every meshed namespace has its own
    // lookup, compiled below, which names every invalid resource again), a finding of the
    // shared lookup alone (a subset only a namespace's own rule defines, for a VirtualService
    // exported everywhere) concerns no proxy and is not reported. Gateway pods do not count:
    // they bind only the VirtualServices naming their Gateway.
    let clients = client_namespaces(view, &drs, &vss);
    let shared_used = view
        .pods
        .iter()
        .filter(|p| !is_gateway_pod(p))
        .filter(|p| {
            p.metadata
                .labels
                .as_ref()
                .is_some_and(|l| l.contains_key(contract::LABEL_REVISION))
        })
        .filter_map(|p| p.metadata.namespace.as_deref())
        .any(|ns| !clients.contains(ns));
    if !clients.is_empty() && !shared_used {
        tables.problems.clear();
    }
    // GAMMA routes onto the same tables (a VirtualService's host keeps its own).
    let gamma = super::gamma::apply(view, &registry, &mut tables, None);
    // Pod labels by pod IP: an endpoint is a pod's IP (the view holds the meshed pods).
    let labels: HashMap<IpAddr, &BTreeMap<String, String>> = view
        .pods
        .iter()
        .filter_map(|p| {
            let ip = p.status.as_ref()?.pod_ip.as_ref()?.parse().ok()?;
            Some((ip, p.metadata.labels.as_ref()?))
        })
        .collect();
    // The tables before routing, for the namespaces that see other routes.
    let plain = (!clients.is_empty()).then(|| (services.to_vec(), headless.to_vec()));
    lay(&tables, &labels, services, headless);
    // A sidecar's routes for ServiceEntry hosts (the egress-gateway pattern): address-less
    // Services holding them, which the proxy applies to requests it matched by Host.
    let is_service = |h: &str| kube_hosts.contains(h);
    let mut external_problems = Vec::new();
    headless.extend(external.mesh_services(
        &tables.http,
        &tables.l4,
        &is_service,
        &mut external_problems,
    ));
    originating_external(&tables.tls, &registry, &is_service, headless);
    let mut namespaces = BTreeMap::new();
    let rules = rules_by_host(&tables.tls);
    let mut client_rules = BTreeMap::new();
    if let Some((plain_services, plain_headless)) = &plain {
        let with_pods: std::collections::BTreeSet<&str> = view
            .pods
            .iter()
            .filter_map(|p| p.metadata.namespace.as_deref())
            .collect();
        for ns in &clients {
            let mut own = compile::compile_for(&registry, resources, Some(ns.as_str()));
            super::gamma::apply(view, &registry, &mut own, Some(ns.as_str()));
            for p in std::mem::take(&mut own.problems) {
                if !tables.problems.contains(&p) {
                    tables.problems.push(p);
                }
            }
            if !with_pods.contains(ns.as_str()) {
                continue;
            }
            let own_rules = rules_by_host(&own.tls);
            if own_rules != rules {
                client_rules.insert(ns.clone(), own_rules);
            }
            let (mut ns_services, mut ns_headless) =
                (plain_services.clone(), plain_headless.clone());
            lay(&own, &labels, &mut ns_services, &mut ns_headless);
            ns_headless.extend(external.mesh_services(
                &own.http,
                &own.l4,
                &is_service,
                &mut external_problems,
            ));
            originating_external(&own.tls, &registry, &is_service, &mut ns_headless);
            if ns_services[..] != services[..] || ns_headless[..] != headless[..] {
                namespaces.insert(ns.clone(), (ns_services, ns_headless));
            }
        }
    }
    for p in external_problems
        .into_iter()
        .chain(external.problems().iter().cloned())
    {
        if !tables.problems.contains(&p) {
            tables.problems.push(p);
        }
    }
    let mut gateways = gateway_configs(
        view,
        &registry,
        resources,
        &clients,
        &tables.subsets,
        &vss,
        &external,
    );
    // An egress gateway's hop out: the external host's DestinationRule (TLS origination
    // SIMPLE/MUTUAL, Istio's egress-gateway TLS-origination task; balancing) on the Service
    // the gateway sends to, as the gateway pods' namespace looks it up (a rule private to
    // that namespace, `exportTo: ["."]`, included): the shared lookup's unless the namespace
    // is a client with its own, looked up once per namespace.
    let mut own_policies: HashMap<String, BTreeMap<String, crate::route::model::HostPolicy>> =
        HashMap::new();
    for ((ns, _), config) in gateways.0.iter_mut() {
        let policies = if clients.contains(ns) {
            &*own_policies.entry(ns.clone()).or_insert_with(|| {
                compile::policies_for(&registry, resources.destination_rules, Some(ns))
            })
        } else {
            &tables.tls
        };
        for s in &mut config.external {
            if let Some(tls) = policies.get(&s.name) {
                lay_policy(tls, s);
            }
        }
    }
    let mut gamma = gamma;
    let lookup = |ns: &str, name: &str| credential(view, ns, name);
    let gateway_api =
        super::gateway_api::apply(view, &registry, &lookup, &mut gateways.0, &mut gamma);
    let credentials = origination_credentials(view, &mut tables.problems);
    let mut problems = tables.problems;
    for p in gateways.1 {
        if !problems.contains(&p) {
            problems.push(p);
        }
    }
    // A rule checked alone (by a client that does not see it) and within a merge (by one
    // that does) gives a shorter and a longer message: the longer one says it all.
    let all = problems.clone();
    problems.retain(|p| {
        !all.iter().any(|q| {
            q != p
                && (q.kind, &q.namespace, &q.name) == (p.kind, &p.namespace, &p.name)
                && q.message.contains(&p.message)
        })
    });
    let problems = problems
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
        gateways: gateways.0,
        gamma,
        gateway_api,
        namespaces,
        rules,
        client_rules,
        credentials,
    }
}

/// The `credentialName`s of SIMPLE/MUTUAL policies (anywhere in a DestinationRule), with the
/// rule and whether the mode is MUTUAL, per namespace whose proxies see the rule (its own;
/// `exportTo`, default every one).
fn origination_names<'a>(
    destination_rules: &'a [std::sync::Arc<crate::api::DestinationRule>],
    pods: &[std::sync::Arc<Pod>],
) -> Vec<(String, String, &'a ObjectMeta, bool)> {
    let mut out = Vec::new();
    for dr in destination_rules {
        let spec = &dr.spec.raw;
        let tops = spec.get("trafficPolicy").into_iter().chain(
            spec.get("subsets")
                .and_then(serde_json::Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|sub| sub.get("trafficPolicy")),
        );
        let mut policies: Vec<&serde_json::Value> = Vec::new();
        for p in tops {
            policies.push(p);
            policies.extend(
                p.get("portLevelSettings")
                    .and_then(serde_json::Value::as_array)
                    .into_iter()
                    .flatten(),
            );
        }
        let Some(ns) = dr.metadata.namespace.as_deref() else {
            continue;
        };
        let export: Vec<&str> = spec
            .get("exportTo")
            .and_then(serde_json::Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(serde_json::Value::as_str)
            .collect();
        let mut seen_by: std::collections::BTreeSet<String> = Default::default();
        let everywhere = export.is_empty() || export.contains(&"*");
        if everywhere {
            seen_by.extend(pods.iter().filter_map(|p| p.metadata.namespace.clone()));
        } else {
            for e in &export {
                match *e {
                    "." => {
                        seen_by.insert(ns.to_string());
                    }
                    "~" => {}
                    other => {
                        seen_by.insert(other.to_string());
                    }
                }
            }
        }
        // Only namespaces with meshed pods: their proxies are the ones that need it (and
        // the operator is not sent to read Secrets where no proxy is).
        seen_by.retain(|n| {
            pods.iter()
                .any(|p| p.metadata.namespace.as_deref() == Some(n))
        });
        for p in policies {
            let Some(tls) = p.get("tls") else { continue };
            let mutual = match tls.get("mode").and_then(serde_json::Value::as_str) {
                Some("SIMPLE") => false,
                Some("MUTUAL") => true,
                _ => continue,
            };
            let Some(name) = tls
                .get("credentialName")
                .and_then(serde_json::Value::as_str)
                .filter(|n| !n.is_empty())
            else {
                continue;
            };
            for client in &seen_by {
                out.push((client.clone(), name.to_string(), &dr.metadata, mutual));
            }
        }
    }
    out
}

/// The namespaces whose `kubernetes.io/tls` Secrets the operator must read for TLS
/// origination: those of meshed pods (sidecars and gateways) that see a DestinationRule
/// naming a `credentialName` for SIMPLE/MUTUAL (Istio reads it in the proxy's namespace).
pub fn origination_namespaces(
    destination_rules: &[std::sync::Arc<crate::api::DestinationRule>],
    pods: &[std::sync::Arc<Pod>],
) -> std::collections::BTreeSet<String> {
    origination_names(destination_rules, pods)
        .into_iter()
        .map(|(ns, _, _, _)| ns)
        .collect()
}

/// Per proxy namespace, the Secrets its DestinationRules name for SIMPLE/MUTUAL, read in that
/// namespace as Istio's SDS reads them for a proxy (so a MUTUAL key reaches only the proxies
/// of the Secret's own namespace). Only what the mode needs is sent: SIMPLE verifies the
/// server with `ca.crt` alone, so a Secret only SIMPLE rules name never ships its private key;
/// MUTUAL also presents `tls.crt`/`tls.key`. A Secret missing or unusable is named on the
/// rule; its connections are refused by the proxy (it has no credentials by that name).
fn origination_credentials(
    view: &MeshView,
    problems: &mut Vec<compile::Problem>,
) -> BTreeMap<String, BTreeMap<String, crate::snapshot::TlsCredential>> {
    let names = origination_names(&view.destination_rules, &view.pods);
    let mutual: std::collections::BTreeSet<(&str, &str)> = names
        .iter()
        .filter(|(_, _, _, m)| *m)
        .map(|(ns, name, _, _)| (ns.as_str(), name.as_str()))
        .collect();
    let mut out: BTreeMap<String, BTreeMap<String, crate::snapshot::TlsCredential>> =
        BTreeMap::new();
    for (ns, name, rule, _) in &names {
        if out.get(ns).is_some_and(|m| m.contains_key(name)) {
            continue;
        }
        let read = if mutual.contains(&(ns.as_str(), name.as_str())) {
            credential(view, ns, name).map(|c| crate::snapshot::TlsCredential {
                ca: c.ca,
                cert_chain: Some(c.cert_chain),
                private_key: Some(c.private_key),
            })
        } else {
            server_ca(view, ns, name).map(|ca| crate::snapshot::TlsCredential {
                ca: Some(ca),
                cert_chain: None,
                private_key: None,
            })
        };
        match read {
            Ok(c) => {
                out.entry(ns.clone()).or_default().insert(name.clone(), c);
            }
            Err(e) => {
                let p = compile::Problem {
                    kind: crate::route::istio::DESTINATION_RULE,
                    namespace: rule.namespace.clone().unwrap_or_default(),
                    name: rule.name.clone().unwrap_or_default(),
                    message: format!(
                        "tls.credentialName {name} for the proxies of namespace {ns} (read in the proxy's namespace, as Istio does): {}; their TLS origination is refused until it is there",
                        e.replace(
                            "the gateway pods' namespace, where Istio reads it too",
                            "the client proxy's namespace"
                        )
                        .replace(
                            "`weft gateway install` grants",
                            "a Role and RoleBinding grant"
                        )
                    ),
                };
                if !problems.contains(&p) {
                    problems.push(p);
                }
            }
        }
    }
    out
}

/// The client namespaces that may see other routes than the shared tables: those holding a
/// DestinationRule or VirtualService (their own rules come first, private ones included),
/// those an `exportTo` names, and those holding a GAMMA consumer route. Empty when no such
/// namespace differs: every proxy then shares one table.
fn client_namespaces(
    view: &MeshView,
    drs: &[Source<'_>],
    vss: &[Source<'_>],
) -> std::collections::BTreeSet<String> {
    let mut out = istio_client_namespaces(view, drs, vss);
    out.extend(super::gamma::consumer_namespaces(view));
    out
}

/// [`client_namespaces`] for DestinationRules and VirtualServices.
fn istio_client_namespaces(
    view: &MeshView,
    drs: &[Source<'_>],
    vss: &[Source<'_>],
) -> std::collections::BTreeSet<String> {
    let restricted = drs.iter().chain(vss).any(|s| {
        s.spec
            .get("exportTo")
            .and_then(serde_json::Value::as_array)
            .is_some_and(|e| e.iter().any(|x| x.as_str() != Some("*")))
    });
    // A rule of one namespace for a Service of another applies only to its own clients.
    let foreign = drs.iter().any(|s| {
        s.namespace != view.root_namespace
            && s.spec
                .get("host")
                .and_then(serde_json::Value::as_str)
                .is_some_and(|h| {
                    h.starts_with('*')
                        || (h.contains('.') && h.split('.').nth(1) != Some(s.namespace))
                })
    });
    if !restricted && !foreign {
        return Default::default();
    }
    let mut out: std::collections::BTreeSet<String> = drs
        .iter()
        .chain(vss)
        .map(|s| s.namespace.to_string())
        .collect();
    for s in drs.iter().chain(vss) {
        let named = s.spec.get("exportTo").and_then(serde_json::Value::as_array);
        out.extend(
            named
                .into_iter()
                .flatten()
                .filter_map(serde_json::Value::as_str)
                .filter(|n| !matches!(*n, "*" | "." | "~"))
                .map(String::from),
        );
    }
    out
}

/// Lays compiled route tables onto the Service entries: subsets as endpoint indexes (by the
/// pod labels of each endpoint's IP), client TLS and traffic policy, `http` and L4 routes.
fn lay(
    tables: &compile::RouteTables,
    labels: &HashMap<IpAddr, &BTreeMap<String, String>>,
    services: &mut [Service],
    headless: &mut [Service],
) {
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
            lay_policy(tls, s);
        }
        if let Some(routes) = tables.http.get(&(s.name.clone(), s.port)) {
            s.http = routes.clone();
        }
        // tcp/tls routes apply to connections relayed as bytes: never on a declared HTTP port.
        if let Some(l4) = tables.l4.get(&(s.name.clone(), s.port))
            && s.protocol != Protocol::Http
        {
            s.l4 = l4.clone();
        }
    }
}

/// A host's DestinationRule policy on one Service entry: TLS mode (with SIMPLE/MUTUAL's
/// settings in the traffic policy) and traffic policy, `portLevelSettings` naming the entry's
/// port replacing the host-wide policy.
fn lay_policy(tls: &crate::route::model::HostPolicy, s: &mut Service) {
    match tls.ports.get(&s.port) {
        Some(p) => {
            s.tls = p.mode;
            s.subset_tls = p.subsets.clone();
            s.traffic = p.traffic.clone();
            s.subset_traffic = p.subset_traffic.clone();
        }
        None => {
            s.tls = tls.mode;
            s.subset_tls = tls.subsets.clone();
            s.traffic = tls.traffic.clone();
            s.subset_traffic = tls.subset_traffic.clone();
        }
    }
}

/// TLS origination for ServiceEntry hosts at sidecars (issue 20, docs/egress.md): each port
/// of a declared host whose DestinationRule says SIMPLE or MUTUAL there becomes an
/// address-less Service holding that policy (unless one exists already, holding the host's
/// mesh routes to an egress gateway), which the proxy applies to the requests (HTTP ports)
/// and connections (TCP, TLS and undeclared ports: the relayed stream goes inside the TLS
/// it originates, as Envoy's cluster does) it matched to the host (`proxy::egress`).
/// Kubernetes Service hosts are laid by [`lay`].
fn originating_external(
    tls: &BTreeMap<String, crate::route::model::HostPolicy>,
    registry: &Registry,
    is_service: &dyn Fn(&str) -> bool,
    headless: &mut Vec<Service>,
) {
    for (host, policy) in tls {
        if is_service(host) {
            continue;
        }
        for port in registry.ports(host).into_iter().flatten() {
            let mode = policy.ports.get(&port.port).map_or(policy.mode, |p| p.mode);
            if !mode.is_some_and(crate::route::model::ClientTls::originates)
                || headless
                    .iter()
                    .any(|s| s.name == *host && s.port == port.port)
            {
                continue;
            }
            let protocol = if port.http {
                Protocol::Http
            } else {
                Protocol::Tcp
            };
            let mut s = Service::bare(host.clone(), port.port, protocol);
            lay_policy(policy, &mut s);
            headless.push(s);
        }
    }
}

/// The `ca.crt` of the `credentialName` Secret `name` of namespace `ns`, for a SIMPLE
/// origination (the server is verified with it; the Secret's key is not read), or what is
/// wrong with it.
fn server_ca(view: &MeshView, ns: &str, name: &str) -> Result<String, String> {
    let secret = view
        .tls_secrets
        .iter()
        .find(|s| s.metadata.namespace.as_deref() == Some(ns) && s.metadata.name.as_deref() == Some(name))
        .ok_or_else(|| {
            format!("no Secret of type kubernetes.io/tls named {name} in namespace {ns} (the gateway pods' namespace, where Istio reads it too), or weft may not read it: `weft gateway install` grants the operator reading TLS Secrets there (Role and RoleBinding {})", contract::GATEWAY_SECRETS_ROLE)
        })?;
    let ca = secret
        .data
        .as_ref()
        .and_then(|d| d.get("ca.crt"))
        .map(|b| {
            String::from_utf8(b.0.clone())
                .map_err(|_| format!("Secret {ns}/{name} key ca.crt is not PEM text"))
        })
        .transpose()?
        .filter(|c| !c.trim().is_empty())
        .ok_or_else(|| {
            format!("Secret {ns}/{name} has no ca.crt: mode SIMPLE verifies the server with it (put the server's CA there)")
        })?;
    let blocks =
        ::pem::parse_many(&ca).map_err(|e| format!("Secret {ns}/{name} key ca.crt: {e}"))?;
    if !blocks.iter().any(|b| b.tag().ends_with("CERTIFICATE")) {
        return Err(format!(
            "Secret {ns}/{name} key ca.crt holds no CERTIFICATE PEM block"
        ));
    }
    Ok(ca)
}

/// The `credentialName` Secret `name` of namespace `ns` (a `kubernetes.io/tls` Secret, from
/// the operator's watch of those), or what is wrong with it.
fn credential(view: &MeshView, ns: &str, name: &str) -> Result<gateway::Credential, String> {
    let secret = view
        .tls_secrets
        .iter()
        .find(|s| s.metadata.namespace.as_deref() == Some(ns) && s.metadata.name.as_deref() == Some(name))
        .ok_or_else(|| {
            format!("no Secret of type kubernetes.io/tls named {name} in namespace {ns} (the gateway pods' namespace, where Istio reads it too), or weft may not read it: `weft gateway install` grants the operator reading TLS Secrets there (Role and RoleBinding {})", contract::GATEWAY_SECRETS_ROLE)
        })?;
    let data = secret.data.clone().unwrap_or_default();
    let text = |key: &str| -> Result<Option<String>, String> {
        data.get(key)
            .map(|b| {
                String::from_utf8(b.0.clone())
                    .map_err(|_| format!("Secret {ns}/{name} key {key} is not PEM text"))
            })
            .transpose()
    };
    let pem_blocks = |key: &str, pem: &str, want: &str| -> Result<(), String> {
        let blocks =
            ::pem::parse_many(pem).map_err(|e| format!("Secret {ns}/{name} key {key}: {e}"))?;
        if blocks.iter().any(|b| b.tag().ends_with(want)) {
            Ok(())
        } else {
            Err(format!(
                "Secret {ns}/{name} key {key} holds no {want} PEM block"
            ))
        }
    };
    let cert_chain = text("tls.crt")?.ok_or(format!("Secret {ns}/{name} has no tls.crt"))?;
    let private_key = text("tls.key")?.ok_or(format!("Secret {ns}/{name} has no tls.key"))?;
    pem_blocks("tls.crt", &cert_chain, "CERTIFICATE")?;
    pem_blocks("tls.key", &private_key, "PRIVATE KEY")?;
    let ca = text("ca.crt")?.filter(|c| !c.trim().is_empty());
    if let Some(ca) = &ca {
        pem_blocks("ca.crt", ca, "CERTIFICATE")?;
    }
    Ok(gateway::Credential {
        cert_chain,
        private_key,
        ca,
    })
}

/// The listeners of every gateway pod, compiled once per distinct set of Gateways selecting
/// (replicas share theirs), and what the Gateways and their VirtualServices do not apply.
#[allow(clippy::type_complexity)]
fn gateway_configs(
    view: &MeshView,
    registry: &Registry,
    resources: compile::Resources<'_>,
    clients: &std::collections::BTreeSet<String>,
    subsets: &BTreeMap<String, crate::route::compile::SubsetLabels>,
    virtual_services: &[Source<'_>],
    external: &gateway::ExternalHosts,
) -> (
    HashMap<(String, String), GatewayConfig>,
    Vec<compile::Problem>,
) {
    let mut problems = Vec::new();
    let mut out = HashMap::new();
    if view.istio_gateways.is_empty() && !view.pods.iter().any(|p| is_gateway_pod(p)) {
        return (out, problems);
    }
    let times: Vec<String> = view
        .istio_gateways
        .iter()
        .map(|o| created(&o.metadata))
        .collect();
    let all: Vec<Source> = view
        .istio_gateways
        .iter()
        .zip(&times)
        .filter_map(|(o, t)| source(&o.metadata, &o.spec.raw, t))
        .collect();
    // Every Gateway's own problems, whether or not a pod serves it yet.
    gateway::compile(registry, subsets, &all, &[], None, &mut problems);
    let selectors: Vec<Option<BTreeMap<String, String>>> =
        all.iter().map(|g| gateway::selector_of(g.spec)).collect();
    // A match's sourceLabels / sourceNamespace are held against the gateway pods' own labels
    // (Istio's sourceMatchHTTP): when some VirtualService has one, pods with other labels
    // get tables of their own.
    let labelled = virtual_services.iter().any(|vs| names_source(vs.spec));
    type Key = (String, Vec<usize>, Option<BTreeMap<String, String>>);
    let mut compiled: HashMap<Key, GatewayConfig> = HashMap::new();
    // Subsets as the DestinationRules visible in the pods' namespace define them, as Istio's
    // gateway looks them up (its namespace's private rules in, others' out): the shared
    // lookup's unless the namespace is a client with its own, looked up once per namespace.
    let mut own_subsets: HashMap<&str, BTreeMap<String, crate::route::compile::SubsetLabels>> =
        HashMap::new();
    for pod in view.pods.iter().filter(|p| is_gateway_pod(p)) {
        let (Some(ns), Some(name)) = (&pod.metadata.namespace, &pod.metadata.name) else {
            continue;
        };
        let labels = pod.metadata.labels.clone().unwrap_or_default();
        let chosen: Vec<usize> = selectors
            .iter()
            .enumerate()
            .filter(|(_, s)| s.as_ref().is_some_and(|s| gateway::selects(s, &labels)))
            .map(|(i, _)| i)
            .collect();
        let key = (ns.clone(), chosen.clone(), labelled.then(|| labels.clone()));
        let config = compiled.entry(key).or_insert_with(|| {
            let selected: Vec<Source> = chosen.iter().map(|i| all[*i]).collect();
            let mut found = Vec::new();
            // Istio reads `credentialName` in the gateway pods' namespace.
            let lookup = |name: &str| credential(view, ns, name);
            // Istio binds a gateway's routes from the VirtualServices visible in its pods'
            // namespace (`exportTo`), in `VirtualServicesForGateway`'s order: private to
            // that namespace, exported to it by name, then public; oldest first in each.
            let visible: Vec<Source> =
                compile::visible_virtual_services(virtual_services, Some(ns))
                    .into_iter()
                    .map(|(_, src)| *src)
                    .collect();
            // Istio drops the rest silently; weft says so on each one that names a Gateway
            // these pods serve.
            let names: Vec<String> = selected
                .iter()
                .map(|g| format!("{}/{}", g.namespace, g.name))
                .collect();
            for vs in virtual_services {
                if visible.iter().any(|v| v.namespace == vs.namespace && v.name == vs.name) {
                    continue;
                }
                if let Some(gw) = names.iter().find(|g| binds_gateway(vs, g)) {
                    let export = vs.spec.get("exportTo").map_or_else(String::new, |e| e.to_string());
                    let message = format!(
                        "Gateway {gw} does not serve it: its pods' namespace {ns} is not in exportTo {export}; add \"{ns}\" or \"*\" to exportTo"
                    );
                    let p = compile::Problem::new(crate::route::istio::VIRTUAL_SERVICE, vs, message);
                    if !problems.contains(&p) {
                        problems.push(p);
                    }
                }
            }
            let subsets = if clients.contains(ns) {
                &*own_subsets.entry(ns.as_str()).or_insert_with(|| {
                    compile::subsets_for(registry, resources.destination_rules, Some(ns))
                })
            } else {
                subsets
            };
            let workload = gateway::Workload {
                namespace: ns,
                labels: &labels,
            };
            let mut config = gateway::compile_for(
                registry,
                subsets,
                &selected,
                &visible,
                Some(&lookup),
                Some(workload),
                &mut found,
            );
            external.fill_gateway(ns, &mut config, &mut found);
            for p in found {
                if !problems.contains(&p) {
                    problems.push(p);
                }
            }
            config
        });
        out.insert((ns.clone(), name.clone()), config.clone());
    }
    (out, problems)
}

/// Whether a VirtualService spec has a match with `sourceLabels` or `sourceNamespace`.
fn names_source(spec: &serde_json::Value) -> bool {
    ["http", "tls", "tcp"].iter().any(|field| {
        spec.get(field)
            .and_then(|r| r.as_array())
            .into_iter()
            .flatten()
            .filter_map(|r| r.get("match").and_then(|m| m.as_array()))
            .flatten()
            .any(|m| m.get("sourceLabels").is_some() || m.get("sourceNamespace").is_some())
    })
}

/// Whether VirtualService `vs` names Gateway `gateway` ("namespace/name") in its `gateways`
/// (a bare name is a Gateway of the VirtualService's own namespace, as Istio reads it).
fn binds_gateway(vs: &Source<'_>, gateway: &str) -> bool {
    let Some(list) = vs.spec.get("gateways").and_then(|g| g.as_array()) else {
        return false;
    };
    list.iter()
        .filter_map(|g| g.as_str())
        .any(|g| match g.split_once('/') {
            Some(_) => g == gateway,
            None => format!("{}/{g}", vs.namespace) == gateway,
        })
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

    /// A pets proxy's snapshot with ServiceEntry partner.weft.test (HTTP 80, TCP 5432, TLS
    /// 443 and a port without protocol, 6379), the Secret `partner` of pets, and these
    /// DestinationRules.
    fn originating(rules: &[serde_json::Value]) -> crate::snapshot::ProxySnapshot {
        let mut v = view();
        v.service_entries = vec![obj(json!({
            "apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
            "metadata": {"namespace": "pets", "name": "partner"},
            "spec": {"hosts": ["partner.weft.test"], "resolution": "DNS", "ports": [
                {"number": 80, "name": "http", "protocol": "HTTP"},
                {"number": 5432, "name": "pg", "protocol": "TCP"},
                {"number": 443, "name": "tls", "protocol": "TLS"},
                {"number": 6379, "name": "redis-undeclared"}]}
        }))];
        v.tls_secrets = vec![obj(json!({
            "metadata": {"namespace": "pets", "name": "partner"},
            "type": "kubernetes.io/tls",
            "data": {
                "ca.crt": "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tClkyRT0KLS0tLS1FTkQgQ0VSVElGSUNBVEUtLS0tLQo=",
                "tls.crt": "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tClkzSjAKLS0tLS1FTkQgQ0VSVElGSUNBVEUtLS0tLQo=",
                "tls.key": "LS0tLS1CRUdJTiBQUklWQVRFIEtFWS0tLS0tCmEyVjUKLS0tLS1FTkQgUFJJVkFURSBLRVktLS0tLQo="
            }
        }))];
        v.destination_rules = rules.iter().cloned().map(obj).collect();
        let index = MeshIndex::build(&v);
        let (_, bytes) = index.snapshot_for("pets", "web-1").unwrap();
        decode_snapshot(&bytes).unwrap()
    }

    fn rule(name: &str, tls: serde_json::Value) -> serde_json::Value {
        json!({
            "apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
            "metadata": {"namespace": "pets", "name": name},
            "spec": {"host": "partner.weft.test", "trafficPolicy": {"tls": tls}}
        })
    }

    /// The reviewer's high (#2): TLS modes were laid only on a ServiceEntry's HTTP ports, and
    /// its TCP/TLS ports were relayed in plaintext. Now every port of the host carries the
    /// mode (HTTP ones as HTTP, the others as TCP, which the proxy wraps in TLS). And (#7)
    /// SIMPLE ships only the Secret's ca.crt: the private key reaches the proxy only when a
    /// MUTUAL rule it sees names the Secret.
    #[test]
    fn every_port_of_an_originated_entry_carries_the_mode_and_simple_ships_no_key() {
        let simple = originating(&[rule(
            "partner",
            json!({"mode": "SIMPLE", "credentialName": "partner"}),
        )]);
        let ports: Vec<(
            u16,
            crate::snapshot::Protocol,
            Option<crate::snapshot::ClientTls>,
        )> = simple
            .outbound
            .headless
            .iter()
            .filter(|s| s.name == "partner.weft.test")
            .map(|s| (s.port, s.protocol, s.tls))
            .collect();
        use crate::snapshot::{ClientTls::Simple, Protocol};
        for want in [
            (80, Protocol::Http, Some(Simple)),
            (5432, Protocol::Tcp, Some(Simple)),
            (443, Protocol::Tcp, Some(Simple)),
            (6379, Protocol::Tcp, Some(Simple)),
        ] {
            assert!(ports.contains(&want), "{want:?} not in {ports:?}");
        }
        let cred = &simple.credentials["partner"];
        assert!(cred.ca.as_deref().is_some_and(|c| c.contains("Y2E=")));
        assert_eq!(cred.cert_chain, None);
        assert_eq!(cred.private_key, None);
        // A MUTUAL rule naming the same Secret: its certificate and key are sent.
        let mutual = originating(&[
            rule(
                "partner",
                json!({"mode": "SIMPLE", "credentialName": "partner"}),
            ),
            json!({
                "apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
                "metadata": {"namespace": "pets", "name": "partner-mtls"},
                "spec": {"host": "other.weft.test", "trafficPolicy": {"tls":
                    {"mode": "MUTUAL", "credentialName": "partner"}}}
            }),
        ]);
        let cred = &mutual.credentials["partner"];
        assert!(
            cred.cert_chain
                .as_deref()
                .is_some_and(|c| c.contains("Y3J0"))
        );
        assert!(
            cred.private_key
                .as_deref()
                .is_some_and(|k| k.contains("a2V5"))
        );
    }

    /// route-l4 (issue 19): `sourceLabels` make per-proxy tables; tcp routes reach TCP ports.
    #[test]
    fn source_labelled_routes_reach_only_the_labelled_clients_and_tcp_routes_the_tcp_port() {
        let mut v = view();
        v.virtual_services = vec![
            obj(json!({
                "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
                "metadata": {"namespace": "pets", "name": "db"},
                "spec": {"hosts": ["db"], "http": [
                    {"match": [{"sourceLabels": {"app": "web"}}],
                     "route": [{"destination": {"host": "legacy"}}]},
                    {"route": [{"destination": {"host": "db"}}]}]}
            })),
            obj(json!({
                "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
                "metadata": {"namespace": "pets", "name": "legacy"},
                "spec": {"hosts": ["legacy"], "tcp": [
                    {"match": [{"port": 80, "sourceLabels": {"app": "web"}}],
                     "route": [{"destination": {"host": "db"}}]}]}
            })),
        ];
        let index = MeshIndex::build(&v);
        assert!(
            index.problems.iter().all(|p| p.kind != "VirtualService"),
            "{:?}",
            index.problems
        );
        let tables = |pod: &str| {
            let (version, bytes) = index.snapshot_for("pets", pod).unwrap();
            let snap = decode_snapshot(&bytes).expect("the proxy accepts the tables");
            let find = |name: &str| {
                snap.outbound
                    .services
                    .iter()
                    .find(|s| s.name == format!("{name}.pets.svc.cluster.local"))
                    .cloned()
                    .unwrap()
            };
            (version, find("db"), find("legacy"))
        };
        let (web_version, web_db, web_legacy) = tables("web-1");
        let (db_version, db_db, db_legacy) = tables("db-1");
        // web-1 carries app=web: both http routes and the tcp route.
        assert_eq!(web_db.http.len(), 2);
        assert_eq!(
            web_db.http[0].destinations[0].service,
            "legacy.pets.svc.cluster.local"
        );
        assert_eq!(web_legacy.l4.tcp.len(), 1);
        assert_eq!(
            web_legacy.l4.tcp[0].destinations[0].service,
            "db.pets.svc.cluster.local"
        );
        // db-1 does not: only the catch-all, and no tcp route.
        assert_eq!(db_db.http.len(), 1);
        assert_eq!(
            db_db.http[0].destinations[0].service,
            "db.pets.svc.cluster.local"
        );
        assert!(db_legacy.l4.is_empty());
        assert_ne!(web_version, db_version);
        // The same mesh gives the same versions (the per-proxy tables are deterministic).
        let again = MeshIndex::build(&v);
        assert_eq!(again.snapshot_for("pets", "web-1").unwrap().0, web_version);
        // tcp routes never land on a declared HTTP port (db's port is named http).
        assert!(web_db.l4.is_empty());
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
                "trafficPolicy": {"loadBalancer": {"simple": "RANDOM"}, "tunnel": {"protocol": "CONNECT"}}}
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
            .expect("tunnel is reported");
        assert_eq!((p.namespace.as_str(), p.name.as_str()), ("pets", "reviews"));
        assert!(p.message.contains("trafficPolicy.tunnel"), "{p:?}");
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

    /// Gateway pod `gw/ingress-1` (labels `istio: ingress`) and the Istio Gateway `gw/ingress`
    /// selecting it, one HTTP server on port 80 for `hosts`.
    fn ingress_gateway(v: &mut super::super::model::MeshView, hosts: &str) {
        v.pods.push(obj(json!({
            "metadata": {"namespace": "gw", "name": "ingress-1",
                "labels": {"istio": "ingress", "weft.dev/revision": "stable"},
                "annotations": {(crate::contract::ANNOTATION_INJECT_TEMPLATES): crate::contract::TEMPLATE_GATEWAY}},
            "spec": {"serviceAccountName": "ingress", "containers": [{"name": "istio-proxy"}]},
            "status": {"podIP": "198.18.3.1"}
        })));
        v.istio_gateways = vec![obj(json!({
            "apiVersion": "networking.istio.io/v1", "kind": "Gateway",
            "metadata": {"namespace": "gw", "name": "ingress"},
            "spec": {"selector": {"istio": "ingress"}, "servers": [
                {"port": {"number": 80, "name": "http", "protocol": "HTTP"}, "hosts": [hosts]}]}
        }))];
    }

    /// A gateway binds only the VirtualServices exported to its pods' namespace (Istio's
    /// visibility): one private to `pets` never reaches the gateway in `gw`, one exported to
    /// `gw` or everywhere does.
    #[test]
    fn a_gateway_binds_only_the_virtual_services_exported_to_its_namespace() {
        let mut v = view();
        ingress_gateway(&mut v, "*");
        let vs = |name: &str, export: serde_json::Value| {
            obj(json!({
                "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
                "metadata": {"namespace": "pets", "name": name},
                "spec": {"hosts": [format!("{name}.example.com")], "gateways": ["gw/ingress"],
                         "exportTo": export,
                         "http": [{"route": [{"destination": {"host": "db", "port": {"number": 80}}}]}]}
            }))
        };
        v.virtual_services = vec![
            vs("private", json!(["."])),
            vs("granted", json!(["gw"])),
            vs("public", json!(["*"])),
        ];
        let index = MeshIndex::build(&v);
        let (_, bytes) = index.snapshot_for("gw", "ingress-1").unwrap();
        let snap = decode_snapshot(&bytes).expect("the proxy accepts the tables");
        let gateway = snap.gateway.expect("a gateway pod gets listeners");
        let domains: Vec<&str> = gateway
            .listeners
            .iter()
            .flat_map(|l| &l.virtual_hosts)
            .flat_map(|h| &h.domains)
            .map(String::as_str)
            .collect();
        assert!(domains.contains(&"granted.example.com"), "{domains:?}");
        assert!(domains.contains(&"public.example.com"), "{domains:?}");
        assert!(
            !domains.iter().any(|d| d.starts_with("private")),
            "{domains:?}"
        );
        // Not silently: the private one's status names the gateway and its exportTo; the
        // bound ones are accepted.
        let about = |name: &str| -> Vec<&str> {
            index
                .problems
                .iter()
                .filter(|p| p.kind == "VirtualService" && p.name == name)
                .map(|p| p.message.as_str())
                .collect()
        };
        let private = about("private");
        assert_eq!(private.len(), 1, "{private:?}");
        assert!(
            private[0].contains("Gateway gw/ingress does not serve it")
                && private[0].contains("namespace gw is not in exportTo [\".\"]"),
            "{private:?}"
        );
        assert!(about("granted").is_empty() && about("public").is_empty());
        let verdict = index
            .verdicts()
            .iter()
            .find(|(k, _)| k.kind == "VirtualService" && k.name == "private")
            .map(|(_, v)| v.clone())
            .unwrap();
        assert!(!verdict.accepted && verdict.message.contains("gw/ingress"));
    }

    /// A gateway looks DestinationRule subsets up as a proxy of its pods' namespace does: a
    /// rule of that namespace for another's Service defines the subset its routes name (the
    /// shared table, which leaves such a rule to its own namespace, does not have it).
    #[test]
    fn a_gateway_takes_subsets_from_the_rules_its_namespace_sees() {
        let mut v = view();
        ingress_gateway(&mut v, "*");
        v.destination_rules = vec![obj(json!({
            "apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
            "metadata": {"namespace": "gw", "name": "db-versions"},
            "spec": {"host": "db.pets.svc.cluster.local",
                     "subsets": [{"name": "v1", "labels": {"version": "v1"}}]}
        }))];
        v.virtual_services = vec![obj(json!({
            "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"namespace": "gw", "name": "db-v1"},
            "spec": {"hosts": ["db.example.com"], "gateways": ["ingress"],
                     "http": [{"route": [{"destination": {"host": "db.pets.svc.cluster.local",
                                "subset": "v1", "port": {"number": 80}}}]}]}
        }))];
        let index = MeshIndex::build(&v);
        let (_, bytes) = index.snapshot_for("gw", "ingress-1").unwrap();
        let snap = decode_snapshot(&bytes).expect("the proxy accepts the tables");
        let gateway = snap.gateway.expect("a gateway pod gets listeners");
        let routes: Vec<_> = gateway
            .listeners
            .iter()
            .flat_map(|l| &l.virtual_hosts)
            .flat_map(|h| &h.routes)
            .collect();
        assert_eq!(routes.len(), 1, "{routes:?}");
        assert_eq!(routes[0].destinations[0].subset.as_deref(), Some("v1"));
        let about: Vec<&str> = index
            .problems
            .iter()
            .filter(|p| p.name == "db-v1")
            .map(|p| p.message.as_str())
            .collect();
        assert!(about.is_empty(), "the subset is defined for gw: {about:?}");
    }

    /// A VirtualService exported everywhere naming a subset that only its own namespace's
    /// rule (for another namespace's Service) defines: the shared lookup's "no such subset"
    /// is reported while sidecars of another namespace get the shared tables (they would get
    /// NR), and not once no such sidecar is left (a gateway pod does not count).
    #[test]
    fn a_subset_missing_only_from_the_shared_lookup_is_reported_while_a_sidecar_uses_it() {
        use super::super::model::tests::pod;
        let mut v = view();
        v.pods
            .push(pod("front", "shop-1", "198.18.2.2", "shop", true));
        v.destination_rules = vec![obj(json!({
            "apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
            "metadata": {"namespace": "front", "name": "db-v1"},
            "spec": {"host": "db.pets.svc.cluster.local",
                     "subsets": [{"name": "v1", "labels": {"app": "db"}}]}
        }))];
        v.virtual_services = vec![obj(json!({
            "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"namespace": "front", "name": "db"},
            "spec": {"hosts": ["db.pets.svc.cluster.local"], "http": [
                {"route": [{"destination": {"host": "db.pets.svc.cluster.local", "subset": "v1"}}]}]}
        }))];
        let about_vs = |v: &super::super::MeshView| -> Vec<String> {
            MeshIndex::build(v)
                .problems
                .iter()
                .filter(|p| p.kind == "VirtualService" && p.name == "db")
                .map(|p| p.message.clone())
                .collect()
        };
        // pets' sidecars (web-1, db-1) get the shared tables: for them the subset is missing.
        let found = about_vs(&v);
        assert!(
            found.len() == 1 && found[0].contains("subset \"v1\""),
            "{found:?}"
        );
        // Without a meshed pod in pets (only an unmeshed one and a gateway pod), no sidecar
        // uses the shared lookup: front's own sees the subset, nothing is reported.
        for p in v
            .pods
            .iter_mut()
            .filter(|p| p.metadata.namespace.as_deref() == Some("pets"))
        {
            let mut plain = (**p).clone();
            if let Some(l) = plain.metadata.labels.as_mut() {
                l.remove(crate::contract::LABEL_REVISION);
            }
            *p = Arc::new(plain);
        }
        v.pods.push(obj(json!({
            "metadata": {"namespace": "pets", "name": "ingress-1",
                "labels": {"istio": "ingress", "weft.dev/revision": "stable"},
                "annotations": {(crate::contract::ANNOTATION_INJECT_TEMPLATES): crate::contract::TEMPLATE_GATEWAY}},
            "spec": {"serviceAccountName": "ingress", "containers": [{"name": "istio-proxy"}]},
            "status": {"podIP": "198.18.1.8"}
        })));
        assert_eq!(about_vs(&v), Vec::<String>::new());
        // An invalid resource is still named (each client namespace's lookup checks it).
        v.virtual_services.push(obj(json!({
            "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"namespace": "front", "name": "bad"},
            "spec": {"hosts": ["db.pets.svc.cluster.local"], "http": [{"delegate": {},
                "route": [{"destination": {"host": "db.pets.svc.cluster.local"}}]}]}
        })));
        let index = MeshIndex::build(&v);
        assert!(
            index
                .problems
                .iter()
                .any(|p| p.name == "bad" && p.message.contains("delegate")),
            "{:?}",
            index.problems
        );
    }

    /// Issue 19's convergence target ("only the affected proxies get a weight change"): in a
    /// mesh of 100 namespaces × 10 proxies (the config-stream bench's shape, two versions
    /// of each app), moving the weights of a VirtualService exported only to its own
    /// namespace changes the snapshot version of that namespace's 10 proxies and no other;
    /// the same change to a public VirtualService reaches all 1,000, as every proxy sees
    /// every Service (no Sidecar scoping). What a changed proxy receives is its whole
    /// snapshot (printed: the bytes-per-change figure; no speed is asserted).
    #[test]
    fn a_weight_change_reaches_only_the_proxies_that_see_the_route() {
        use super::super::model::tests::pod;
        let mut v = view();
        v.pods.clear();
        v.services.clear();
        v.slices.clear();
        for n in 0..100u8 {
            let ns = format!("shop-{n:03}");
            let mut eps = Vec::new();
            for i in 0..10u8 {
                let ip = format!("198.18.{n}.{}", i + 1);
                let name = format!("app-{i}");
                let mut p = (*pod(&ns, &name, &ip, "app", true)).clone();
                let labels = p.metadata.labels.get_or_insert_with(Default::default);
                labels.insert(
                    "version".into(),
                    if i % 2 == 0 { "v1" } else { "v2" }.into(),
                );
                v.pods.push(Arc::new(p));
                eps.push((ip, name));
            }
            v.services
                .push(service(&ns, "app", &format!("198.19.{n}.1"), "http"));
            let eps: Vec<(&str, &str, bool)> = eps
                .iter()
                .map(|(ip, name)| (ip.as_str(), name.as_str(), true))
                .collect();
            v.slices.push(slice(&ns, "app", "http", &eps));
        }
        let rule = |export: &str| {
            obj(json!({
                "apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
                "metadata": {"namespace": "shop-000", "name": "app"},
                "spec": {"host": "app", "exportTo": [export], "subsets": [
                    {"name": "v1", "labels": {"version": "v1"}},
                    {"name": "v2", "labels": {"version": "v2"}}]}
            }))
        };
        let route = |export: &str, v1: u32| {
            obj(json!({
                "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
                "metadata": {"namespace": "shop-000", "name": "app"},
                "spec": {"hosts": ["app"], "exportTo": [export], "http": [{"route": [
                    {"destination": {"host": "app", "subset": "v1"}, "weight": v1},
                    {"destination": {"host": "app", "subset": "v2"}, "weight": 100 - v1}]}]}
            }))
        };
        let versions = |v: &super::super::MeshView| -> Vec<(String, usize)> {
            let index = MeshIndex::build(v);
            v.pods
                .iter()
                .map(|p| {
                    let (ns, name) = (p.metadata.namespace.clone(), p.metadata.name.clone());
                    let (version, bytes) =
                        index.snapshot_for(&ns.unwrap(), &name.unwrap()).unwrap();
                    (version, bytes.len())
                })
                .collect()
        };
        for (export, reached) in [(".", 10), ("*", 1000)] {
            let mut before = v.clone();
            before.destination_rules = vec![rule(export)];
            before.virtual_services = vec![route(export, 90)];
            let mut after = before.clone();
            after.virtual_services = vec![route(export, 100)];
            let (old, new) = (versions(&before), versions(&after));
            let changed: Vec<usize> = (0..old.len()).filter(|i| old[*i].0 != new[*i].0).collect();
            assert_eq!(changed.len(), reached, "exportTo {export}");
            if export == "." {
                assert!(changed.iter().all(|i| *i < 10), "only shop-000's proxies");
            }
            let bytes: usize = changed.iter().map(|i| new[*i].1).sum();
            eprintln!(
                "weight 90/10 -> 100/0, exportTo {export}: {} of 1000 proxies get a new snapshot, {} bytes each on average",
                changed.len(),
                bytes / changed.len().max(1)
            );
        }
    }

    /// Istio's `VirtualServicesForGateway` order at a gateway: the VirtualServices private to
    /// the gateway pods' namespace first, then those exported to it by name, then public
    /// ones, oldest first within each; so a younger private route comes before an older
    /// public one for the same host (age order alone would put it last).
    #[test]
    fn a_gateway_takes_its_namespaces_private_routes_before_older_public_ones() {
        let mut v = view();
        ingress_gateway(&mut v, "*/*");
        let vs = |ns: &str, name: &str, created: &str, export: &str| {
            obj(json!({
                "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
                "metadata": {"namespace": ns, "name": name, "creationTimestamp": created},
                "spec": {"hosts": ["shop.example.com"], "gateways": ["gw/ingress"],
                         "exportTo": [export],
                         "http": [{"match": [{"uri": {"prefix": format!("/{name}")}}],
                                   "route": [{"destination": {"host": "db.pets.svc.cluster.local",
                                                              "port": {"number": 80}}}]}]}
            }))
        };
        v.virtual_services = vec![
            vs("pets", "public-old", "2026-01-01T00:00:00Z", "*"),
            vs("pets", "named-mid", "2026-01-02T00:00:00Z", "gw"),
            vs("gw", "private-new", "2026-01-03T00:00:00Z", "."),
        ];
        let index = MeshIndex::build(&v);
        let (_, bytes) = index.snapshot_for("gw", "ingress-1").unwrap();
        let snap = decode_snapshot(&bytes).expect("the proxy accepts the tables");
        let gateway = snap.gateway.expect("a gateway pod gets listeners");
        let host = gateway
            .listeners
            .iter()
            .flat_map(|l| &l.virtual_hosts)
            .find(|h| h.domains.iter().any(|d| d == "shop.example.com"))
            .expect("the host is served");
        let order: Vec<&str> = host.routes.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(
            order,
            ["gw/private-new", "pets/named-mid", "pets/public-old"],
            "{order:?}"
        );
    }

    /// issue 19: `exportTo` and the client-namespace DestinationRule lookup make per-namespace
    /// tables; `sourceNamespace` per-proxy matches. A client in `front` gets front's rule for
    /// pets' db and pets' VirtualService exported to it; the pets clients get neither front's
    /// rule nor the route exported elsewhere, and share one table.
    #[test]
    fn export_to_and_the_client_namespace_rule_reach_only_that_namespaces_proxies() {
        use super::super::model::tests::pod;
        let mut v = view();
        v.pods
            .push(pod("front", "shop-1", "198.18.2.2", "shop", true));
        v.destination_rules = vec![obj(json!({
            "apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
            "metadata": {"namespace": "front", "name": "db-plain"},
            "spec": {"host": "db.pets.svc.cluster.local",
                     "trafficPolicy": {"tls": {"mode": "DISABLE"}}}
        }))];
        v.virtual_services = vec![
            obj(json!({
                "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
                "metadata": {"namespace": "pets", "name": "db-for-front"},
                "spec": {"hosts": ["db"], "exportTo": ["front"], "http": [
                    {"route": [{"destination": {"host": "legacy"}}]}]}
            })),
            obj(json!({
                "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
                "metadata": {"namespace": "pets", "name": "legacy"},
                "spec": {"hosts": ["legacy"], "tcp": [
                    {"match": [{"sourceNamespace": "pets"}],
                     "route": [{"destination": {"host": "db"}}]}]}
            })),
        ];
        let index = MeshIndex::build(&v);
        assert!(index.problems.is_empty(), "{:?}", index.problems);
        let tables = |ns: &str, pod: &str| {
            let (version, bytes) = index.snapshot_for(ns, pod).unwrap();
            let snap = decode_snapshot(&bytes).expect("the proxy accepts the tables");
            let find = |name: &str| {
                snap.outbound
                    .services
                    .iter()
                    .find(|s| s.name == format!("{name}.pets.svc.cluster.local"))
                    .cloned()
                    .unwrap()
            };
            (version, find("db"), find("legacy"))
        };
        let (_, front_db, front_legacy) = tables("front", "shop-1");
        assert_eq!(front_db.tls, Some(crate::route::model::ClientTls::Disable));
        assert_eq!(front_db.http.len(), 1);
        assert_eq!(
            front_db.http[0].destinations[0].service,
            "legacy.pets.svc.cluster.local"
        );
        assert!(
            front_legacy.l4.is_empty(),
            "sourceNamespace pets is not front"
        );
        let (_, web_db, web_legacy) = tables("pets", "web-1");
        assert_eq!(web_db.tls, None, "front's rule is not pets'");
        assert!(web_db.http.is_empty(), "exported to front only");
        assert_eq!(web_legacy.l4.tcp.len(), 1);
        // Without the exportTo, pets sees the route too.
        let mut open = v.clone();
        let mut vs = (*open.virtual_services[0]).clone();
        vs.spec.raw["exportTo"] = json!(["*"]);
        open.virtual_services[0] = Arc::new(vs);
        let index = MeshIndex::build(&open);
        let (_, bytes) = index.snapshot_for("pets", "web-1").unwrap();
        let snap = decode_snapshot(&bytes).unwrap();
        let db = snap
            .outbound
            .services
            .iter()
            .find(|s| s.name == "db.pets.svc.cluster.local")
            .unwrap();
        assert_eq!(db.http.len(), 1);
        assert_eq!(db.tls, None, "front's rule is still not pets'");
    }
}
