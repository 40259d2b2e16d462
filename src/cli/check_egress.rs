//! `weft check`'s egress-gateway check: which workloads reach a ServiceEntry host without the
//! egress gateway that a VirtualService sends that host through. Derived from what each proxy
//! is given (its snapshot, as the operator would build it), never from traffic: a host:port
//! is *gated* when some sidecar's table routes it to mesh Services (the egress gateway); a
//! meshed workload that sees the host (its ServiceEntry is exported to it) but has no such
//! route for it, and every pod without a sidecar, reaches it directly. Pure over a built
//! [`MeshIndex`] and the view's unmeshed pods.

use std::collections::{BTreeMap, BTreeSet};

use super::check::Verdict;
use crate::discovery::MeshIndex;
use crate::snapshot::{ProxySnapshot, decode_snapshot};

pub const EGRESS_BYPASS: &str = "egress gateway bypass";

/// Namespaces whose pods are the cluster's own, not workloads that call partners.
const SYSTEM_NAMESPACES: [&str; 3] = ["kube-system", "kube-public", "kube-node-lease"];

/// What one meshed proxy was given for the hosts of its egress table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyView {
    /// `<namespace>/<pod>`.
    pub pod: String,
    pub gateway: bool,
    /// The ServiceEntry hosts its table declares, with their ports.
    pub declared: BTreeMap<String, BTreeSet<u16>>,
    /// host:port -> the Services its routes send the host's requests to (address-less
    /// routed Services: the egress-gateway pattern).
    pub gated: Gated,
}

impl ProxyView {
    /// From a decoded snapshot.
    pub fn of(pod: String, snapshot: &ProxySnapshot) -> ProxyView {
        let declared = snapshot
            .outbound
            .egress
            .iter()
            .map(|s| (s.host.clone(), s.ports.iter().map(|p| p.number).collect()))
            .collect::<BTreeMap<String, BTreeSet<u16>>>();
        let gated = snapshot
            .outbound
            .headless
            .iter()
            .filter(|s| s.endpoints.is_empty() && !s.http.is_empty())
            .filter(|s| declared.contains_key(&s.name))
            .map(|s| {
                let to = s
                    .http
                    .iter()
                    .flat_map(|r| r.destinations.iter().map(|d| d.service.clone()))
                    .collect();
                ((s.name.clone(), s.port), to)
            })
            .collect();
        ProxyView {
            pod,
            gateway: snapshot.gateway.is_some(),
            declared,
            gated,
        }
    }
}

/// Gated host:ports and the Services their routes send to.
pub type Gated = BTreeMap<(String, u16), BTreeSet<String>>;

/// One workload that reaches a gated host:port directly, and why.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Bypass {
    pub pod: String,
    pub host: String,
    pub port: u16,
    pub why: &'static str,
}

pub const NO_SIDECAR: &str = "no sidecar";
pub const NO_ROUTE: &str = "its sidecar has no route to the gateway for it";

/// The rule: gated host:ports are the union over proxies; a meshed, non-gateway proxy that
/// declares a gated host but lacks the gated route for one of its gated ports bypasses it; so
/// does every unmeshed pod outside the system namespaces. Returns the gated host:ports (with
/// where they go) and the bypasses, sorted.
pub fn bypasses(proxies: &[ProxyView], unmeshed: &[String]) -> (Gated, Vec<Bypass>) {
    let mut gated = Gated::new();
    for p in proxies {
        for (key, to) in &p.gated {
            gated
                .entry(key.clone())
                .or_default()
                .extend(to.iter().cloned());
        }
    }
    let mut out = Vec::new();
    for p in proxies.iter().filter(|p| !p.gateway) {
        for (host, port) in gated.keys() {
            let sees = p
                .declared
                .get(host)
                .is_some_and(|ports| ports.contains(port));
            if sees && !p.gated.contains_key(&(host.clone(), *port)) {
                out.push(Bypass {
                    pod: p.pod.clone(),
                    host: host.clone(),
                    port: *port,
                    why: NO_ROUTE,
                });
            }
        }
    }
    for pod in unmeshed {
        let ns = pod.split('/').next().unwrap_or_default();
        if SYSTEM_NAMESPACES.contains(&ns) {
            continue;
        }
        for (host, port) in gated.keys() {
            out.push(Bypass {
                pod: pod.clone(),
                host: host.clone(),
                port: *port,
                why: NO_SIDECAR,
            });
        }
    }
    out.sort();
    (gated, out)
}

/// The verdict over the index the operator would build (`unmeshed`: `<namespace>/<pod>` of
/// the pods without a proxy; `weft_namespace` is left out, its pods are the mesh's own).
pub fn check(index: &MeshIndex, unmeshed: &[String], weft_namespace: &str) -> Verdict {
    let proxies: Vec<ProxyView> = index
        .meshed_pods()
        .filter_map(|p| {
            let (_, bytes) = index.snapshot_for(&p.namespace, &p.name).ok()?;
            let snapshot = decode_snapshot(&bytes).ok()?;
            Some(ProxyView::of(
                format!("{}/{}", p.namespace, p.name),
                &snapshot,
            ))
        })
        .collect();
    let unmeshed: Vec<String> = unmeshed
        .iter()
        .filter(|p| p.split('/').next() != Some(weft_namespace))
        .cloned()
        .collect();
    let (gated, found) = bypasses(&proxies, &unmeshed);
    if gated.is_empty() {
        return Verdict::pass(
            EGRESS_BYPASS,
            "no VirtualService sends a ServiceEntry host through an egress gateway",
        );
    }
    let through: Vec<String> = gated
        .iter()
        .map(|((h, p), to)| {
            format!(
                "{h}:{p} via {}",
                to.iter().cloned().collect::<Vec<_>>().join(",")
            )
        })
        .collect();
    if found.is_empty() {
        return Verdict::pass(
            EGRESS_BYPASS,
            format!(
                "every workload that sees them goes through the gateway: {}",
                through.join("; ")
            ),
        );
    }
    let named: Vec<String> = found
        .iter()
        .map(|b| {
            format!(
                "{} reaches {}:{} directly ({})",
                b.pod, b.host, b.port, b.why
            )
        })
        .collect();
    Verdict::warn(
        EGRESS_BYPASS,
        format!(
            "{} workload(s) bypass the egress gateway ({}): {}",
            found.iter().map(|b| &b.pod).collect::<BTreeSet<_>>().len(),
            through.join("; "),
            named.join("; ")
        ),
        "weft only routes what sidecars send: give those pods a sidecar (or a VirtualService \
         for their namespace), and block the rest outside the mesh (a NetworkPolicy allowing \
         egress to the host only from the gateway pods), as Istio's egress-gateway task says",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proxy(
        pod: &str,
        gateway: bool,
        declared: &[(&str, u16)],
        gated: &[(&str, u16)],
    ) -> ProxyView {
        let mut d: BTreeMap<String, BTreeSet<u16>> = BTreeMap::new();
        for (h, p) in declared {
            d.entry(h.to_string()).or_default().insert(*p);
        }
        ProxyView {
            pod: pod.into(),
            gateway,
            declared: d,
            gated: gated
                .iter()
                .map(|(h, p)| {
                    (
                        (h.to_string(), *p),
                        BTreeSet::from(
                            ["egressgateway.istio-egress.svc.cluster.local".to_string()],
                        ),
                    )
                })
                .collect(),
        }
    }

    #[test]
    fn unrouted_sidecars_and_unmeshed_pods_bypass_a_gated_host_and_the_gateway_does_not() {
        let proxies = [
            proxy(
                "apps/client",
                false,
                &[("partner.weft.test", 80), ("partner.weft.test", 443)],
                &[("partner.weft.test", 80)],
            ),
            // Sees the host, but its namespace's tables carry no route to the gateway.
            proxy("other/web", false, &[("partner.weft.test", 80)], &[]),
            // Does not see the host at all (exportTo): REGISTRY_ONLY or passthrough decides.
            proxy("hidden/job", false, &[], &[]),
            proxy(
                "istio-egress/egressgateway-1",
                true,
                &[("partner.weft.test", 80)],
                &[],
            ),
        ];
        let unmeshed = [
            "bypass/client".to_string(),
            "kube-system/coredns".to_string(),
        ];
        let (gated, found) = bypasses(&proxies, &unmeshed);
        assert_eq!(
            gated.len(),
            1,
            "only port 80 is routed through the gateway: {gated:?}"
        );
        let pods: Vec<(&str, &str)> = found.iter().map(|b| (b.pod.as_str(), b.why)).collect();
        assert_eq!(
            pods,
            [("bypass/client", NO_SIDECAR), ("other/web", NO_ROUTE)]
        );
        assert!(
            found
                .iter()
                .all(|b| b.host == "partner.weft.test" && b.port == 80)
        );
    }

    #[test]
    fn nothing_gated_names_nobody() {
        let proxies = [proxy(
            "apps/client",
            false,
            &[("partner.weft.test", 80)],
            &[],
        )];
        let (gated, found) = bypasses(&proxies, &["bypass/client".to_string()]);
        assert!(gated.is_empty() && found.is_empty());
    }
}
