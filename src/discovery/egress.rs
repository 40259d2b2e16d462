//! The egress table of each proxy: the ServiceEntries of the cluster compiled once per change
//! ([`crate::route::egress::compile`]), each visible where its `exportTo` says, with the pods a
//! `workloadSelector` picks as its endpoints. What is refused becomes a [`PolicyProblem`] (and
//! so `WeftAccepted=False` on the entry).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Mutex;

use super::model::{MeshView, MeshedPod};
use super::policy::PolicyProblem;
use crate::route::egress::{self, Export, ExternalService, SERVICE_ENTRY};
use crate::snapshot::Endpoint;

/// One accepted ServiceEntry: who sees it, its `workloadSelector`, its services.
type Entry = (
    Export,
    Option<BTreeMap<String, String>>,
    Vec<ExternalService>,
);

/// Every accepted ServiceEntry's services with who sees them and its `workloadSelector`,
/// oldest entry first; a proxy's table merges what its namespace sees of one host as Istio's
/// SidecarScope does ([`crate::route::se_merge`]).
#[derive(Debug, Default)]
pub struct EgressIndex {
    entries: Vec<Entry>,
    pub problems: Vec<PolicyProblem>,
    /// Each namespace's merged table, made when a proxy of it first asks: the proxies of a
    /// namespace (one config stream each) share one merge per index version, rather than
    /// merging every entry again per stream.
    tables: Mutex<HashMap<String, Vec<ExternalService>>>,
}

impl EgressIndex {
    /// Compiles `view.service_entries`; `pods` are the meshed pods (a `workloadSelector`
    /// picks among them, by their labels in `view.pods`).
    pub fn build(view: &MeshView, pods: &HashMap<(String, String), MeshedPod>) -> Self {
        let mut sorted: Vec<_> = view
            .service_entries
            .iter()
            .filter_map(|se| {
                let m = &se.metadata;
                let created = m
                    .creation_timestamp
                    .as_ref()
                    .map(|t| t.0.to_string())
                    .unwrap_or_default();
                Some((created, m.namespace.clone()?, m.name.clone()?, &se.spec.raw))
            })
            .collect();
        sorted.sort_by(|a, b| (&a.0, &a.1, &a.2).cmp(&(&b.0, &b.1, &b.2)));
        let mut index = EgressIndex::default();
        for (_, namespace, name, raw) in sorted {
            match egress::compile(&namespace, &name, raw) {
                Ok(compiled) => {
                    let mut services = compiled.services;
                    if let Some(selector) = &compiled.selector {
                        let endpoints = selected(view, pods, &namespace, selector);
                        for s in &mut services {
                            for port in &mut s.ports {
                                let target = compiled
                                    .target_ports
                                    .get(&port.number)
                                    .copied()
                                    .unwrap_or(port.number);
                                port.endpoints = endpoints
                                    .iter()
                                    .map(|(ip, pod)| Endpoint {
                                        ip: *ip,
                                        port: target,
                                        identity: Some(pod.identity.clone()),
                                        meshed: true,
                                        mtls_mode_for_port: pod.modes.mode_for(target),
                                        workload: Some(pod.workload.clone()),
                                    })
                                    .collect();
                            }
                            // The pods are the entry's addresses too (dialled directly).
                            s.addresses
                                .extend(endpoints.iter().map(|(ip, _)| ipnet::IpNet::from(*ip)));
                        }
                    }
                    for s in &mut services {
                        // Marked now, given an address below once every host is known.
                        if egress::wants_allocation(s, compiled.has_addresses) {
                            s.allocated = Some(std::net::Ipv4Addr::UNSPECIFIED);
                        }
                    }
                    index
                        .entries
                        .push((compiled.export, compiled.selector, services));
                }
                Err(reasons) => {
                    index
                        .problems
                        .extend(reasons.into_iter().map(|message| PolicyProblem {
                            kind: SERVICE_ENTRY,
                            namespace: namespace.clone(),
                            name: name.clone(),
                            message,
                        }))
                }
            }
        }
        index.allocate();
        index
    }

    /// Istio's DNS auto-allocation: every host marked for it gets its address, computed over
    /// the whole cluster's hosts so a host has one address in every proxy's table.
    fn allocate(&mut self) {
        let hosts: BTreeSet<String> = self
            .entries
            .iter()
            .flat_map(|(_, _, services)| services.iter())
            .filter(|s| s.allocated.is_some())
            .map(|s| s.host.clone())
            .collect();
        let addresses = egress::allocate(&hosts);
        for (_, _, services) in &mut self.entries {
            for s in services.iter_mut().filter(|s| s.allocated.is_some()) {
                s.allocated = addresses.get(&s.host).copied();
            }
        }
    }

    /// The table of a proxy in `namespace`: one service per host it sees, as Istio's
    /// SidecarScope builds it ([`crate::route::se_merge::table`]): its own namespace's entries
    /// of the host first, else those exported to it; entries of that namespace merged when
    /// their resolution, `exportTo` and `workloadSelector` agree. (The oldest entry exported
    /// there won the host before, whatever its namespace, and same-namespace entries never
    /// merged their endpoints.)
    pub fn table_for(&self, namespace: &str) -> Vec<ExternalService> {
        let mut tables = self.tables.lock().unwrap_or_else(|p| p.into_inner());
        tables
            .entry(namespace.to_string())
            .or_insert_with(|| self.merged(namespace))
            .clone()
    }

    /// How many namespaces' tables were merged in this index version (for tests).
    #[cfg(test)]
    fn merged_tables(&self) -> usize {
        self.tables.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    fn merged(&self, namespace: &str) -> Vec<ExternalService> {
        let decls: Vec<crate::route::se_merge::Declaration<'_>> = self
            .entries
            .iter()
            .flat_map(|(export, selector, services)| {
                services
                    .iter()
                    .map(move |service| crate::route::se_merge::Declaration {
                        export,
                        selector: selector.as_ref(),
                        service,
                    })
            })
            .collect();
        crate::route::se_merge::table(&decls, namespace)
    }
}

/// The meshed pods of `namespace` whose labels hold every pair of `selector`, by IP.
fn selected<'a>(
    view: &MeshView,
    pods: &'a HashMap<(String, String), MeshedPod>,
    namespace: &str,
    selector: &BTreeMap<String, String>,
) -> Vec<(IpAddr, &'a MeshedPod)> {
    let mut out: Vec<(IpAddr, &MeshedPod)> = view
        .pods
        .iter()
        .filter(|p| p.metadata.namespace.as_deref() == Some(namespace))
        .filter(|p| {
            let labels = p.metadata.labels.as_ref();
            selector
                .iter()
                .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
        })
        .filter_map(|p| {
            let key = (namespace.to_string(), p.metadata.name.clone()?);
            let ip = p.status.as_ref()?.pod_ip.as_ref()?.parse().ok()?;
            Some((ip, pods.get(&key)?))
        })
        .collect();
    out.sort_by_key(|(ip, _)| *ip);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ServiceEntry;
    use crate::discovery::MeshIndex;
    use crate::discovery::model::tests::view;
    use serde_json::json;
    use std::sync::Arc;

    fn entry(ns: &str, name: &str, created: &str, spec: serde_json::Value) -> Arc<ServiceEntry> {
        Arc::new(
            serde_json::from_value(json!({
                "apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
                "metadata": {"namespace": ns, "name": name, "creationTimestamp": created},
                "spec": spec
            }))
            .unwrap(),
        )
    }

    #[test]
    fn each_proxy_sees_the_entries_exported_to_its_namespace_and_refusals_name_the_entry() {
        let mut v = view();
        v.service_entries = vec![
            // Seed 003 section 6, verbatim: exported everywhere.
            entry(
                "payments",
                "contoso-payments-api",
                "2026-01-01T00:00:00Z",
                json!({
                "hosts": ["api.payments-partner.com"],
                "ports": [{"number": 443, "name": "tls", "protocol": "TLS"}],
                "resolution": "DNS", "location": "MESH_EXTERNAL"}),
            ),
            entry(
                "pets",
                "local",
                "2026-01-02T00:00:00Z",
                json!({
                "hosts": ["vet.example.com"], "exportTo": ["."],
                "ports": [{"number": 80, "name": "http", "protocol": "HTTP"}]}),
            ),
            entry(
                "weft-system",
                "root-local",
                "2026-01-03T00:00:00Z",
                json!({
                "hosts": ["ops.example.com"], "exportTo": ["."],
                "ports": [{"number": 80, "name": "http", "protocol": "HTTP"}]}),
            ),
            entry(
                "pets",
                "bad",
                "2026-01-04T00:00:00Z",
                json!({
                "hosts": ["*.payments-partner.com"], "resolution": "DNS",
                "ports": [{"number": 443, "name": "tls", "protocol": "TLS"}]}),
            ),
            // Istio's workloadSelector picks the entry's endpoints (meshed pods here).
            entry(
                "pets",
                "db-vm",
                "2026-01-05T00:00:00Z",
                json!({
                "hosts": ["db.internal"], "location": "MESH_INTERNAL", "resolution": "STATIC",
                "addresses": ["198.19.9.9"],
                "ports": [{"number": 5432, "name": "pg", "protocol": "TCP", "targetPort": 8080}],
                "workloadSelector": {"labels": {"app": "db"}}}),
            ),
        ];
        let index = MeshIndex::build(&v);
        let egress = index.egress();
        let hosts = |ns: &str| -> Vec<String> {
            egress.table_for(ns).into_iter().map(|s| s.host).collect()
        };
        assert_eq!(
            hosts("pets"),
            ["api.payments-partner.com", "vet.example.com", "db.internal"]
        );
        // Namespace-local means local: a root-namespace entry with "." is not mesh-wide.
        assert_eq!(hosts("shop"), ["api.payments-partner.com", "db.internal"]);
        assert_eq!(
            hosts("weft-system"),
            ["api.payments-partner.com", "ops.example.com", "db.internal"]
        );
        let db = egress
            .table_for("pets")
            .into_iter()
            .find(|s| s.host == "db.internal")
            .unwrap();
        let ep = &db.ports[0].endpoints[0];
        assert_eq!((ep.ip.to_string(), ep.port), ("198.18.1.3".into(), 8080));
        assert_eq!(
            ep.identity.as_deref(),
            Some("spiffe://cluster.local/ns/pets/sa/db")
        );
        // The refusal is a problem of the entry, and its condition says so.
        let bad = index
            .verdicts()
            .iter()
            .find(|(k, _)| k.kind == SERVICE_ENTRY && k.name == "bad")
            .map(|(_, v)| v.clone())
            .unwrap();
        assert!(!bad.accepted);
        assert!(
            bad.message.contains("hosts must be FQDN"),
            "{}",
            bad.message
        );
        // The table reaches the proxies of pets, and changes their version.
        let (version, bytes) = index.snapshot_for("pets", "web-1").unwrap();
        let snapshot = crate::snapshot::decode_snapshot(&bytes).unwrap();
        assert_eq!(snapshot.outbound.egress.len(), 3);
        v.service_entries.truncate(1);
        let (fewer, _) = MeshIndex::build(&v).snapshot_for("pets", "web-1").unwrap();
        assert_ne!(version, fewer);
    }

    /// One host declared by entries of two namespaces: a proxy takes its own namespace's
    /// entry (the oldest exported to it won the host before, whatever its namespace); other
    /// namespaces get the older namespace's entries merged (ports 80 and 8080 in one service),
    /// and a private entry of that namespace with another exportTo stays out of their table.
    #[test]
    fn a_proxys_table_merges_one_hosts_entries_as_istios_sidecar_scope() {
        let mut v = view();
        let http = |n: u16| json!({"number": n, "name": format!("http-{n}"), "protocol": "HTTP"});
        v.service_entries = vec![
            entry(
                "shop",
                "partner",
                "2026-01-01T00:00:00Z",
                json!({"hosts": ["partner.weft.test"], "resolution": "STATIC",
                    "ports": [http(80)], "endpoints": [{"address": "198.18.0.1"}]}),
            ),
            entry(
                "pets",
                "partner",
                "2026-01-02T00:00:00Z",
                json!({"hosts": ["partner.weft.test"], "resolution": "STATIC", "exportTo": ["."],
                    "ports": [http(80)], "endpoints": [{"address": "198.18.0.2"}]}),
            ),
            entry(
                "shop",
                "partner-alt",
                "2026-01-03T00:00:00Z",
                json!({"hosts": ["partner.weft.test"], "resolution": "STATIC",
                    "ports": [http(8080)], "endpoints": [{"address": "198.18.0.3"}]}),
            ),
            entry(
                "shop",
                "partner-private",
                "2026-01-04T00:00:00Z",
                json!({"hosts": ["partner.weft.test"], "resolution": "STATIC", "exportTo": ["."],
                    "ports": [http(9090)], "endpoints": [{"address": "198.18.0.4"}]}),
            ),
        ];
        let index = MeshIndex::build(&v);
        let table = |ns: &str| -> Vec<(String, Vec<u16>, Vec<String>)> {
            index
                .egress()
                .table_for(ns)
                .into_iter()
                .map(|s| {
                    let eps = s
                        .ports
                        .iter()
                        .flat_map(|p| &p.endpoints)
                        .map(|e| e.ip.to_string())
                        .collect();
                    (s.source, s.ports.iter().map(|p| p.number).collect(), eps)
                })
                .collect()
        };
        assert_eq!(
            table("pets"),
            [(
                "pets/partner".to_string(),
                vec![80],
                vec!["198.18.0.2".to_string()]
            )]
        );
        assert_eq!(
            table("other"),
            [(
                "shop/partner".to_string(),
                vec![80, 8080],
                vec!["198.18.0.1".to_string(), "198.18.0.3".into()]
            )]
        );
        // shop's own proxies see its private entry too, but it has another exportTo: the
        // older entry's declaration is used alone there, and the private one is named.
        assert_eq!(table("shop")[0].1, vec![80, 8080]);
    }
    /// The reviewer's #8: the table was merged again for every proxy's config stream on
    /// every change. Now a namespace's table is merged once per index version and shared.
    #[test]
    fn a_namespaces_table_is_merged_once_per_index_version() {
        let mut v = view();
        v.service_entries = vec![entry(
            "pets",
            "partner",
            "2024-01-01T00:00:00Z",
            json!({"hosts": ["partner.weft.test"], "resolution": "DNS",
                   "ports": [{"number": 443, "name": "tls", "protocol": "TLS"}]}),
        )];
        let index = EgressIndex::build(&v, &HashMap::new());
        assert_eq!(index.merged_tables(), 0);
        let first = index.table_for("pets");
        assert_eq!(first.len(), 1);
        assert_eq!(index.table_for("pets"), first);
        assert_eq!(index.merged_tables(), 1, "the second ask merged again");
        assert_eq!(index.table_for("shop").len(), 1);
        assert_eq!(index.merged_tables(), 2);
    }
}
