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
    gateway::ExternalHosts::new(sorted.into_iter().filter_map(|(_, ns, name, raw)| {
        let compiled = crate::route::egress::compile(ns, name, raw).ok()?;
        Some((compiled.export, compiled.services))
    }))
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
    // GAMMA routes onto the same tables (a VirtualService's host keeps its own).
    let gamma = super::gamma::apply(view, &registry, &mut tables);
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
    let clients = client_namespaces(view, &drs, &vss);
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
    let mut namespaces = BTreeMap::new();
    if let Some((plain_services, plain_headless)) = &plain {
        let with_pods: std::collections::BTreeSet<&str> = view
            .pods
            .iter()
            .filter_map(|p| p.metadata.namespace.as_deref())
            .collect();
        for ns in clients {
            let mut own = compile::compile_for(&registry, resources, Some(&ns));
            super::gamma::apply(view, &registry, &mut own);
            for p in std::mem::take(&mut own.problems) {
                if !tables.problems.contains(&p) {
                    tables.problems.push(p);
                }
            }
            if !with_pods.contains(ns.as_str()) {
                continue;
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
            if ns_services[..] != services[..] || ns_headless[..] != headless[..] {
                namespaces.insert(ns, (ns_services, ns_headless));
            }
        }
    }
    for p in external_problems {
        if !tables.problems.contains(&p) {
            tables.problems.push(p);
        }
    }
    let mut gateways = gateway_configs(view, &registry, &tables.subsets, &vss, &external);
    let mut gamma = gamma;
    let lookup = |ns: &str, name: &str| credential(view, ns, name);
    let gateway_api =
        super::gateway_api::apply(view, &registry, &lookup, &mut gateways.0, &mut gamma);
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
    }
}

/// The client namespaces that may see other routes than the shared tables: those holding a
/// DestinationRule or VirtualService (their own rules come first, private ones included), and
/// those an `exportTo` names. Empty when no such namespace differs: every proxy then shares
/// one table.
fn client_namespaces(
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
            // `portLevelSettings` naming this entry's port replace the host-wide policy.
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
    let mut compiled: HashMap<(String, Vec<usize>), GatewayConfig> = HashMap::new();
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
        let key = (ns.clone(), chosen.clone());
        let config = compiled.entry(key).or_insert_with(|| {
            let selected: Vec<Source> = chosen.iter().map(|i| all[*i]).collect();
            let mut found = Vec::new();
            // Istio reads `credentialName` in the gateway pods' namespace.
            let lookup = |name: &str| credential(view, ns, name);
            // Istio binds a gateway's routes from the VirtualServices visible in its pods'
            // namespace (`exportTo`), in the order a sidecar of that namespace sees them.
            let visible: Vec<Source> =
                compile::visible_virtual_services(virtual_services, Some(ns))
                    .into_iter()
                    .map(|(_, src)| *src)
                    .collect();
            let mut config = gateway::compile(
                registry,
                subsets,
                &selected,
                &visible,
                Some(&lookup),
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

    /// A gateway binds only the VirtualServices exported to its pods' namespace (Istio's
    /// visibility): one private to `pets` never reaches the gateway in `gw`, one exported to
    /// `gw` or everywhere does.
    #[test]
    fn a_gateway_binds_only_the_virtual_services_exported_to_its_namespace() {
        let mut v = view();
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
                {"port": {"number": 80, "name": "http", "protocol": "HTTP"}, "hosts": ["*"]}]}
        }))];
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
