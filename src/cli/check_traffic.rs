//! `weft check`'s traffic-management check: a DestinationRule that turns mTLS off (`tls.mode:
//! DISABLE`) towards a Service whose pods a PeerAuthentication (or the revision) makes STRICT
//! on the target port. Every request then fails with 503 `UC` (seed 003's warning); the check
//! names the DestinationRule and the policy that disagree. Pure over a built [`MeshIndex`].

use std::collections::BTreeMap;

use super::check::Verdict;
use crate::discovery::MeshIndex;
use crate::discovery::model::MeshedPod;
use crate::snapshot::{ClientTls, MtlsMode, Service};

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

/// The check's verdicts: one failure per conflict, or a pass.
pub fn check(index: &MeshIndex) -> Vec<Verdict> {
    let pods: Vec<&MeshedPod> = index.meshed_pods().collect();
    let found = conflicts(index.services(), &index.tls_rules, &pods);
    if found.is_empty() {
        return vec![Verdict::pass(
            TLS_CONFLICT,
            "no DestinationRule sends plaintext to a STRICT port",
        )];
    }
    found
        .into_iter()
        .map(|c| {
            let subset = c
                .subset
                .as_deref()
                .map(|s| format!(" (subset {s})"))
                .unwrap_or_default();
            Verdict::fail(
                TLS_CONFLICT,
                format!(
                    "DestinationRule {} sets tls.mode DISABLE for {}{subset}, but {} port {} is STRICT ({}): every request from the mesh gets 503 UC",
                    c.rule, c.host, c.pod, c.target_port, c.source
                ),
                format!(
                    "remove the DestinationRule's tls block or set tls.mode ISTIO_MUTUAL (weft's auto-mTLS then applies), or make {} PERMISSIVE for port {}",
                    c.source, c.target_port
                ),
            )
        })
        .collect()
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

    fn check_of(found: &[Conflict]) -> String {
        let c = &found[0];
        format!(
            "DestinationRule {} sets tls.mode DISABLE for {}, but {} port {} is STRICT ({}): 503 UC",
            c.rule, c.host, c.pod, c.target_port, c.source
        )
    }
}
