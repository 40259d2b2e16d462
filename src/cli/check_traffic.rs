//! `weft check`'s traffic-management check: a DestinationRule that turns mTLS off (`tls.mode:
//! DISABLE`) towards a Service whose pods a PeerAuthentication (or the revision) makes STRICT
//! on the target port. Every request then fails with 503 `UC` (seed 003's warning); the check
//! names the DestinationRule and the policy that disagree, and the client namespaces whose
//! proxies apply that rule (Istio's client-namespace lookup: a namespace's own rule, then the
//! Service's namespace, then the root namespace, `exportTo`), from the same tables those
//! proxies get. Pure over a built [`MeshIndex`].

use std::collections::BTreeMap;

use super::check::Verdict;
use crate::discovery::MeshIndex;
use crate::discovery::model::MeshedPod;
use crate::discovery::routes::RulesByHost;
use crate::snapshot::{ClientTls, MtlsMode, Service, decode_snapshot};

pub const TLS_CONFLICT: &str = "DestinationRule TLS against PeerAuthentication";

/// One Service port whose DestinationRule sends plaintext to a STRICT pod port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub host: String,
    /// `<namespace>/<name>` of the DestinationRule.
    pub rule: String,
    /// The subset whose policy says DISABLE, when it is a subset's.
    pub subset: Option<String>,
    pub pod: String,
    pub target_port: u16,
    /// Where the STRICT mode comes from (`PeerAuthentication pay/strict (namespace)`).
    pub source: String,
    /// The client namespaces whose proxies apply the rule (and so get 503 `UC`).
    pub clients: Vec<String>,
}

/// The DestinationRules the proxies of client namespace `namespace` apply, per host.
pub fn rules_for<'a>(index: &'a MeshIndex, namespace: &str) -> &'a RulesByHost {
    index.client_rules.get(namespace).unwrap_or(&index.rules)
}

/// What the check found over the client namespaces.
#[derive(Debug, Default)]
pub struct ClientConflicts {
    pub found: Vec<Conflict>,
    /// `(namespace, error)`: a client namespace whose snapshot could not be built or read, so
    /// its proxies were not checked (the check says so; it never passes over one silently).
    pub unchecked: Vec<(String, String)>,
}

/// The conflicts of [`checked_client_conflicts`] (`weft describe pod` lists those it finds).
pub fn client_conflicts(index: &MeshIndex) -> Vec<Conflict> {
    checked_client_conflicts(index).found
}

/// The conflicts as the clients meet them: per client namespace with meshed pods, its
/// proxies' Service tables (a pod's snapshot: what its proxy runs) and the rules its lookup
/// finds; one conflict per rule, host, subset and server port, naming every namespace; and
/// the namespaces that could not be checked.
pub fn checked_client_conflicts(index: &MeshIndex) -> ClientConflicts {
    let pods: Vec<&MeshedPod> = index.meshed_pods().collect();
    let snapshot = |ns: &str, name: &str| {
        index
            .snapshot_for(ns, name)
            .map(|(_, bytes)| bytes)
            .map_err(|e| e.to_string())
    };
    let rules = |ns: &str| {
        rules_for(index, ns)
            .iter()
            .map(|(host, r)| (host.clone(), r.tls.clone()))
            .collect()
    };
    conflicts_over(&pods, &snapshot, &rules)
}

/// [`client_conflicts`] over `pods`, with each pod's snapshot bytes and its namespace's TLS
/// rules per host.
/// A pod's snapshot bytes by (namespace, pod name), or why there are none.
type SnapshotOf<'a> = &'a dyn Fn(&str, &str) -> Result<Vec<u8>, String>;

fn conflicts_over(
    pods: &[&MeshedPod],
    snapshot: SnapshotOf<'_>,
    rules_of: &dyn Fn(&str) -> BTreeMap<String, String>,
) -> ClientConflicts {
    // One pod per namespace: TLS modes and rules do not vary within a namespace (only
    // sourceLabels routes do).
    let mut first: BTreeMap<&str, &MeshedPod> = BTreeMap::new();
    for p in pods {
        first.entry(p.namespace.as_str()).or_insert(p);
    }
    let mut out = ClientConflicts::default();
    for (ns, pod) in first {
        let read = snapshot(ns, &pod.name).and_then(|bytes| {
            decode_snapshot(&bytes)
                .map_err(|e| format!("the snapshot of pod {ns}/{} cannot be read: {e}", pod.name))
        });
        let snapshot = match read {
            Ok(s) => s,
            Err(e) => {
                out.unchecked.push((ns.to_string(), e));
                continue;
            }
        };
        let services: Vec<Service> = snapshot
            .outbound
            .services
            .into_iter()
            .chain(snapshot.outbound.headless)
            .collect();
        let rules = rules_of(ns);
        for c in conflicts(&services, &rules, pods) {
            match out.found.iter_mut().find(|o| {
                (&o.host, &o.rule, &o.subset, &o.pod, o.target_port)
                    == (&c.host, &c.rule, &c.subset, &c.pod, c.target_port)
            }) {
                Some(o) => o.clients.push(ns.to_string()),
                None => out.found.push(Conflict {
                    clients: vec![ns.to_string()],
                    ..c
                }),
            }
        }
    }
    out
}

/// The conflicts of the index: for each Service with a DISABLE mode (its own or a
/// subset's), each meshed pod behind it whose port is STRICT.
pub fn conflicts(
    services: &[Service],
    tls_rules: &BTreeMap<String, String>,
    pods: &[&MeshedPod],
) -> Vec<Conflict> {
    let mut out = Vec::new();
    for s in services {
        let mut disabled: Vec<Option<String>> = Vec::new();
        if s.tls == Some(ClientTls::Disable) {
            disabled.push(None);
        }
        disabled.extend(
            s.subset_tls
                .iter()
                .filter(|(_, m)| **m == ClientTls::Disable)
                .map(|(name, _)| Some(name.clone())),
        );
        if disabled.is_empty() {
            continue;
        }
        let rule = tls_rules.get(&s.name).cloned().unwrap_or_default();
        for pod in pods {
            for (&port, hosts) in &pod.services {
                if !hosts.contains(&s.name) || pod.modes.mode_for(port) != MtlsMode::Strict {
                    continue;
                }
                let source = pod
                    .modes
                    .ports
                    .get(&port)
                    .map_or_else(|| pod.modes.source.clone(), |(_, src)| src.clone());
                for subset in &disabled {
                    let c = Conflict {
                        host: s.name.clone(),
                        rule: rule.clone(),
                        subset: subset.clone(),
                        pod: format!("{}/{}", pod.namespace, pod.name),
                        target_port: port,
                        source: source.clone(),
                        clients: Vec::new(),
                    };
                    if !out.contains(&c) {
                        out.push(c);
                    }
                }
            }
        }
    }
    out.sort_by(|a, b| (&a.host, &a.pod, a.target_port).cmp(&(&b.host, &b.pod, b.target_port)));
    out
}

/// The check's verdicts: one failure per conflict and per namespace it could not check, or a
/// pass.
pub fn check(index: &MeshIndex) -> Vec<Verdict> {
    verdicts(checked_client_conflicts(index))
}

fn verdicts(checked: ClientConflicts) -> Vec<Verdict> {
    let ClientConflicts { found, unchecked } = checked;
    let mut out: Vec<Verdict> = unchecked
        .into_iter()
        .map(|(ns, error)| {
            Verdict::fail(
                TLS_CONFLICT,
                format!("namespace {ns} was not checked: {error}"),
                format!(
                    "run weft check again; if namespace {ns} stays unchecked, the operator's log and `weft proxy-config` for a pod of {ns} show what its snapshot lacks"
                ),
            )
        })
        .collect();
    if found.is_empty() && out.is_empty() {
        return vec![Verdict::pass(
            TLS_CONFLICT,
            "no DestinationRule sends plaintext to a STRICT port",
        )];
    }
    out.extend(found.into_iter().map(|c| {
        let subset = c
            .subset
            .as_deref()
            .map(|s| format!(" (subset {s})"))
            .unwrap_or_default();
        Verdict::fail(
            TLS_CONFLICT,
            format!(
                "DestinationRule {} sets tls.mode DISABLE for {}{subset}, but {} port {} is STRICT ({}): every request from namespace {} gets 503 UC",
                c.rule,
                c.host,
                c.pod,
                c.target_port,
                c.source,
                c.clients.join(", ")
            ),
            format!(
                "remove the DestinationRule's tls block or set tls.mode ISTIO_MUTUAL (weft's auto-mTLS then applies), or make {} PERMISSIVE for port {}",
                c.source, c.target_port
            ),
        )
    }));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::policy::Effective;
    use crate::snapshot::{Protocol, WorkloadMeta};

    fn pod(name: &str, mode: MtlsMode, port_mode: Option<MtlsMode>) -> MeshedPod {
        MeshedPod {
            namespace: "pay".into(),
            name: name.into(),
            service_account: "api".into(),
            revision: "stable".into(),
            identity: "spiffe://cluster.local/ns/pay/sa/api".into(),
            workload: WorkloadMeta::default(),
            modes: Effective {
                default_mode: mode,
                source: "PeerAuthentication pay/strict (namespace)".into(),
                ports: port_mode
                    .map(|m| {
                        (
                            8080,
                            (
                                m,
                                "PeerAuthentication pay/api (workload) portLevelMtls 8080".into(),
                            ),
                        )
                    })
                    .into_iter()
                    .collect(),
            },
            ports: vec![8080],
            services: [(8080, vec!["api.pay.svc.cluster.local".to_string()])].into(),
            protocols: [(8080, Protocol::Http)].into(),
            authz: vec![],
            gateway: None,
        }
    }

    fn service(tls: Option<ClientTls>, subset: Option<(&str, ClientTls)>) -> Service {
        Service {
            cluster_ip: None,
            port: 80,
            name: "api.pay.svc.cluster.local".into(),
            protocol: Protocol::Http,
            detect_protocol: false,
            endpoints: vec![],
            subsets: BTreeMap::new(),
            http: vec![],
            tls,
            subset_tls: subset
                .map(|(n, m)| (n.to_string(), m))
                .into_iter()
                .collect(),
            traffic: Default::default(),
            subset_traffic: BTreeMap::new(),
            l4: Default::default(),
        }
    }

    #[test]
    fn disable_against_strict_names_both_resources_and_nothing_else_is_reported() {
        let rules: BTreeMap<String, String> = [(
            "api.pay.svc.cluster.local".to_string(),
            "pay/no-mtls".to_string(),
        )]
        .into();
        let strict = pod("api-1", MtlsMode::Strict, None);
        let found = conflicts(
            &[service(Some(ClientTls::Disable), None)],
            &rules,
            &[&strict],
        );
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].rule, "pay/no-mtls");
        assert_eq!(found[0].source, "PeerAuthentication pay/strict (namespace)");
        let v = check_of(&found);
        assert!(
            v.contains("DestinationRule pay/no-mtls") && v.contains("pay/api-1 port 8080"),
            "{v}"
        );
        assert!(v.contains("503 UC"), "{v}");

        // PERMISSIVE accepts plaintext; ISTIO_MUTUAL and auto-mTLS send mTLS: no finding.
        let permissive = pod("api-2", MtlsMode::Permissive, None);
        assert!(
            conflicts(
                &[service(Some(ClientTls::Disable), None)],
                &rules,
                &[&permissive]
            )
            .is_empty()
        );
        assert!(
            conflicts(
                &[service(Some(ClientTls::IstioMutual), None)],
                &rules,
                &[&strict]
            )
            .is_empty()
        );
        assert!(conflicts(&[service(None, None)], &rules, &[&strict]).is_empty());

        // A port-level STRICT under a PERMISSIVE namespace is named by its own policy; a
        // subset's DISABLE is named with the subset.
        let port_strict = pod("api-3", MtlsMode::Permissive, Some(MtlsMode::Strict));
        let found = conflicts(
            &[service(None, Some(("v2", ClientTls::Disable)))],
            &rules,
            &[&port_strict],
        );
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].subset.as_deref(), Some("v2"));
        assert!(found[0].source.contains("portLevelMtls 8080"), "{found:?}");
    }

    /// The proxy's lookup, not the shared table: a rule of `front` for pets' db applies to
    /// front's clients only; pets' private rule to pets' clients only; each namespace is
    /// named with the rule its proxies apply, and describe pod lists only that rule.
    /// A client namespace whose snapshot cannot be had or read is named as not checked, with
    /// the error (it was skipped silently, and the check could pass over it); the check then
    /// does not pass.
    #[test]
    fn a_namespace_whose_snapshot_fails_is_named_not_skipped() {
        let api = pod("api-1", MtlsMode::Strict, None);
        let mut shop = pod("web-1", MtlsMode::Strict, None);
        shop.namespace = "shop".into();
        let pods = [&api, &shop];
        let snapshot = |ns: &str, name: &str| match ns {
            "pay" => Err(format!(
                "pod {ns}/{name} is not a meshed pod the operator knows"
            )),
            _ => Ok(b"not a snapshot".to_vec()),
        };
        let checked = conflicts_over(&pods, &snapshot, &|_| BTreeMap::new());
        assert!(checked.found.is_empty());
        let unchecked: Vec<&str> = checked
            .unchecked
            .iter()
            .map(|(ns, _)| ns.as_str())
            .collect();
        assert_eq!(unchecked, ["pay", "shop"]);
        let verdicts = verdicts(checked);
        assert_eq!(verdicts.len(), 2, "{verdicts:?}");
        assert!(
            verdicts
                .iter()
                .all(|v| v.status == super::super::check::Status::Fail)
        );
        assert!(
            verdicts[0]
                .detail
                .contains("namespace pay was not checked: pod pay/api-1 is not a meshed pod"),
            "{verdicts:?}"
        );
        assert!(
            verdicts[1].detail.contains(
                "namespace shop was not checked: the snapshot of pod shop/web-1 cannot be read"
            ),
            "{verdicts:?}"
        );
    }

    #[test]
    fn the_rule_each_client_namespace_applies_is_the_one_named() {
        use std::sync::Arc;

        use serde_json::json;

        use crate::discovery::MeshIndex;
        use crate::discovery::model::tests::{pod, view};

        fn obj<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> Arc<T> {
            Arc::new(serde_json::from_value(v).expect("a test object"))
        }
        let dr = |ns: &str, name: &str, export: Option<&str>, mode: &str| {
            let mut spec = json!({"host": "db.pets.svc.cluster.local",
                                  "trafficPolicy": {"tls": {"mode": mode}}});
            if let Some(e) = export {
                spec["exportTo"] = json!([e]);
            }
            obj(json!({
                "apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
                "metadata": {"namespace": ns, "name": name},
                "spec": spec
            }))
        };
        let mut v = view();
        v.pods
            .push(pod("front", "shop-1", "198.18.2.2", "shop", true));
        v.pods
            .push(pod("back", "batch-1", "198.18.3.2", "batch", true));
        v.peer_authentications = vec![obj(json!({
            "apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
            "metadata": {"namespace": "pets", "name": "strict"},
            "spec": {"mtls": {"mode": "STRICT"}}
        }))];
        // front's own rule (Istio: a client's namespace first), pets' private one.
        v.destination_rules = vec![
            dr("front", "db-plain", None, "DISABLE"),
            dr("pets", "db-private", Some("."), "DISABLE"),
        ];
        let index = MeshIndex::build(&v);
        // The shared table (what the check read before) sees neither rule.
        let shared = conflicts(
            index.services(),
            &index.tls_rules,
            &index.meshed_pods().collect::<Vec<_>>(),
        );
        assert!(shared.is_empty(), "{shared:?}");
        let checked = checked_client_conflicts(&index);
        assert!(checked.unchecked.is_empty(), "{:?}", checked.unchecked);
        let found = checked.found;
        let named: Vec<(&str, &[String])> = found
            .iter()
            .map(|c| (c.rule.as_str(), c.clients.as_slice()))
            .collect();
        assert_eq!(
            named,
            [
                ("front/db-plain", &["front".to_string()][..]),
                ("pets/db-private", &["pets".to_string()][..]),
            ],
            "{found:?}"
        );
        assert!(found.iter().all(|c| c.pod == "pets/db-1"), "{found:?}");
        let verdicts = check(&index);
        assert_eq!(verdicts.len(), 2);
        let text = format!("{verdicts:?}");
        assert!(
            text.contains("every request from namespace front gets 503 UC"),
            "{text}"
        );
        assert!(!text.contains("namespace back"), "{text}");
        // describe pod: each client lists the one rule its proxy applies; back none.
        let rule_line = |ns: &str, pod: &str| {
            let text = super::super::describe::describe(&v, &index, ns, pod).unwrap();
            text.lines()
                // The outbound section's line (4 spaces in), not a conflict's.
                .filter(|l| l.starts_with("    DestinationRule "))
                .map(str::trim)
                .map(String::from)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            rule_line("front", "shop-1"),
            ["DestinationRule front/db-plain"]
        );
        assert_eq!(
            rule_line("pets", "web-1"),
            ["DestinationRule pets/db-private"]
        );
        assert!(rule_line("back", "batch-1").is_empty());
        let server = super::super::describe::describe(&v, &index, "pets", "db-1").unwrap();
        assert!(
            server.contains("clients in namespace front get 503 UC calling this pod")
                && server.contains("clients in namespace pets get 503 UC calling this pod"),
            "{server}"
        );
        let back = super::super::describe::describe(&v, &index, "back", "batch-1").unwrap();
        assert!(!back.contains("Conflicts:"), "{back}");
    }

    fn check_of(found: &[Conflict]) -> String {
        let c = &found[0];
        format!(
            "DestinationRule {} sets tls.mode DISABLE for {}, but {} port {} is STRICT ({}): 503 UC",
            c.rule, c.host, c.pod, c.target_port, c.source
        )
    }
}
