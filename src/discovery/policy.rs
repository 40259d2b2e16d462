//! The effective inbound mTLS mode of a pod, per port, and why (SPEC §1.3, §9): Istio's
//! `PeerAuthentication` precedence on top of the revision's `MeshConfig.spec.mtls.mode`.
//!
//! | level (strongest first)                               | applies to                 |
//! |-------------------------------------------------------|----------------------------|
//! | `portLevelMtls` of the workload policy                 | that container port        |
//! | policy with a selector matching the pod, pod's ns      | the pod                    |
//! | policy without a selector in the pod's namespace       | every pod of the namespace |
//! | policy without a selector in the root namespace        | the mesh                   |
//! | `MeshConfig.spec.mtls.mode` of the pod's revision      | that revision's pods       |
//! | PERMISSIVE                                             | default                    |
//!
//! `UNSET` (or no `mtls`) at a level inherits the level below, as in Istio. When two policies
//! compete at one level the oldest wins (then the name, so every replica agrees). A policy
//! with a mode weft does not know is skipped and reported, never guessed.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::api::PeerAuthentication;
use crate::snapshot::MtlsMode;

/// A pod's inbound modes with the reason for each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Effective {
    pub default_mode: MtlsMode,
    /// Where `default_mode` comes from, e.g. `PeerAuthentication pets/strict (namespace)`.
    pub source: String,
    /// Container ports whose mode differs from the default (portLevelMtls).
    pub ports: BTreeMap<u16, (MtlsMode, String)>,
}

impl Effective {
    pub fn mode_for(&self, port: u16) -> MtlsMode {
        self.ports
            .get(&port)
            .map(|(m, _)| *m)
            .unwrap_or(self.default_mode)
    }
}

/// A policy the resolver had to skip, with what to change.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PolicyProblem {
    /// `PeerAuthentication`, `AuthorizationPolicy`, an SMI kind, `DestinationRule`,
    /// `VirtualService` or `TrafficSplit`.
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
    pub message: String,
}

/// Istio's mode names; `Ok(None)` is UNSET (inherit).
pub fn parse_mode(mode: Option<&str>) -> Result<Option<MtlsMode>, String> {
    match mode.unwrap_or("UNSET") {
        "UNSET" | "" => Ok(None),
        "DISABLE" => Ok(Some(MtlsMode::Disable)),
        "PERMISSIVE" => Ok(Some(MtlsMode::Permissive)),
        "STRICT" => Ok(Some(MtlsMode::Strict)),
        other => Err(format!(
            "mtls mode {other:?} is not one of UNSET, DISABLE, PERMISSIVE, STRICT"
        )),
    }
}

/// The policies of the mesh, checked once and grouped by namespace, oldest first.
#[derive(Debug, Default)]
pub struct Policies {
    root_namespace: String,
    by_namespace: BTreeMap<String, Vec<Checked>>,
    pub problems: Vec<PolicyProblem>,
}

#[derive(Debug)]
struct Checked {
    name: String,
    selector: Option<BTreeMap<String, String>>,
    mode: Option<MtlsMode>,
    ports: BTreeMap<u16, MtlsMode>,
}

impl Policies {
    pub fn new(root_namespace: &str, all: &[Arc<PeerAuthentication>]) -> Self {
        let mut sorted: Vec<&Arc<PeerAuthentication>> = all.iter().collect();
        sorted.sort_by(|a, b| {
            let key = |p: &PeerAuthentication| {
                (
                    p.metadata.creation_timestamp.clone().map(|t| t.0),
                    p.metadata.namespace.clone(),
                    p.metadata.name.clone(),
                )
            };
            key(a).cmp(&key(b))
        });
        let mut policies = Policies {
            root_namespace: root_namespace.to_string(),
            ..Default::default()
        };
        for pa in sorted {
            let namespace = pa.metadata.namespace.clone().unwrap_or_default();
            let name = pa.metadata.name.clone().unwrap_or_default();
            match check(pa) {
                Ok(checked) => policies
                    .by_namespace
                    .entry(namespace)
                    .or_default()
                    .push(Checked { name, ..checked }),
                Err(message) => policies.problems.push(PolicyProblem {
                    kind: "PeerAuthentication",
                    namespace,
                    name,
                    message,
                }),
            }
        }
        policies
    }

    /// The effective modes of a pod of `namespace` with `labels`, given its revision's mode.
    pub fn effective(
        &self,
        namespace: &str,
        labels: &BTreeMap<String, String>,
        revision: Option<(&str, Option<MtlsMode>)>,
    ) -> Effective {
        let mut eff = match revision {
            Some((rev, Some(mode))) => Effective {
                default_mode: mode,
                source: format!("MeshConfig {rev} spec.mtls.mode"),
                ports: BTreeMap::new(),
            },
            _ => Effective {
                default_mode: MtlsMode::Permissive,
                source: "default (no policy applies)".into(),
                ports: BTreeMap::new(),
            },
        };
        let no_selector = |ns: &str| {
            self.by_namespace
                .get(ns)
                .and_then(|list| list.iter().find(|p| p.selector.is_none()))
        };
        if let Some(p) = no_selector(&self.root_namespace)
            && let Some(mode) = p.mode
        {
            eff.default_mode = mode;
            eff.source = format!(
                "PeerAuthentication {}/{} (mesh-wide)",
                self.root_namespace, p.name
            );
        }
        if namespace != self.root_namespace
            && let Some(p) = no_selector(namespace)
            && let Some(mode) = p.mode
        {
            eff.default_mode = mode;
            eff.source = format!("PeerAuthentication {namespace}/{} (namespace)", p.name);
        }
        let workload = self.by_namespace.get(namespace).and_then(|list| {
            list.iter().find(|p| {
                p.selector
                    .as_ref()
                    .is_some_and(|sel| sel.iter().all(|(k, v)| labels.get(k) == Some(v)))
            })
        });
        if let Some(p) = workload {
            let source = format!("PeerAuthentication {namespace}/{} (workload)", p.name);
            if let Some(mode) = p.mode {
                eff.default_mode = mode;
                eff.source = source.clone();
            }
            for (&port, &mode) in &p.ports {
                eff.ports
                    .insert(port, (mode, format!("{source} portLevelMtls {port}")));
            }
        }
        eff
    }
}

fn check(pa: &PeerAuthentication) -> Result<Checked, String> {
    let spec = &pa.spec;
    let mode = parse_mode(spec.mtls.as_ref().and_then(|m| m.mode.as_deref()))?;
    // An empty matchLabels selects every pod, like no selector (Istio does the same).
    let selector = spec
        .selector
        .as_ref()
        .and_then(|s| s.match_labels.clone())
        .filter(|m| !m.is_empty());
    let mut ports = BTreeMap::new();
    if let Some(levels) = &spec.port_level_mtls {
        if selector.is_none() && !levels.is_empty() {
            return Err(
                "portLevelMtls needs a selector (Istio ignores it without one); add spec.selector.matchLabels or move the ports to a workload policy".into(),
            );
        }
        for (key, level) in levels {
            let port: u16 = key
                .parse()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("portLevelMtls key {key:?} is not a port (1-65535)"))?;
            // UNSET at the port level inherits the workload's mode: no entry needed.
            if let Some(m) = parse_mode(level.mode.as_deref())
                .map_err(|e| format!("portLevelMtls {port}: {e}"))?
            {
                ports.insert(port, m);
            }
        }
    }
    Ok(Checked {
        name: String::new(),
        selector,
        mode,
        ports,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::peerauthentication::{PeerAuthenticationSpec, PeerMtls, WorkloadSelector};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn pa(ns: &str, name: &str, age: i64, spec: PeerAuthenticationSpec) -> Arc<PeerAuthentication> {
        let mut p = PeerAuthentication::new(name, spec);
        p.metadata.namespace = Some(ns.into());
        p.metadata.creation_timestamp = Some(Time(
            k8s_openapi::jiff::Timestamp::from_second(1_700_000_000 - age).unwrap(),
        ));
        Arc::new(p)
    }

    fn mode(m: &str) -> Option<PeerMtls> {
        Some(PeerMtls {
            mode: Some(m.into()),
        })
    }

    fn selector(k: &str, v: &str) -> Option<WorkloadSelector> {
        Some(WorkloadSelector {
            match_labels: Some([(k.to_string(), v.to_string())].into()),
        })
    }

    fn labels(k: &str, v: &str) -> BTreeMap<String, String> {
        [(k.to_string(), v.to_string())].into()
    }

    #[test]
    fn without_policies_the_revision_mode_then_permissive_applies() {
        let p = Policies::new("weft-system", &[]);
        let e = p.effective("pets", &BTreeMap::new(), Some(("stable", None)));
        assert_eq!(e.default_mode, MtlsMode::Permissive);
        let e = p.effective(
            "pets",
            &BTreeMap::new(),
            Some(("stable", Some(MtlsMode::Strict))),
        );
        assert_eq!(e.default_mode, MtlsMode::Strict);
        assert_eq!(e.source, "MeshConfig stable spec.mtls.mode");
    }

    #[test]
    fn istio_precedence_workload_over_namespace_over_mesh() {
        let all = vec![
            pa(
                "weft-system",
                "mesh",
                10,
                PeerAuthenticationSpec {
                    mtls: mode("STRICT"),
                    ..Default::default()
                },
            ),
            pa(
                "pets",
                "ns",
                10,
                PeerAuthenticationSpec {
                    mtls: mode("PERMISSIVE"),
                    ..Default::default()
                },
            ),
            pa(
                "pets",
                "db",
                10,
                PeerAuthenticationSpec {
                    selector: selector("app", "db"),
                    mtls: mode("DISABLE"),
                    port_level_mtls: Some(
                        [(
                            "9090".to_string(),
                            PeerMtls {
                                mode: Some("STRICT".into()),
                            },
                        )]
                        .into(),
                    ),
                },
            ),
        ];
        let p = Policies::new("weft-system", &all);
        assert!(p.problems.is_empty(), "{:?}", p.problems);
        // Another namespace: mesh-wide STRICT beats the revision's PERMISSIVE.
        let e = p.effective(
            "shop",
            &BTreeMap::new(),
            Some(("stable", Some(MtlsMode::Permissive))),
        );
        assert_eq!(e.default_mode, MtlsMode::Strict);
        assert_eq!(e.source, "PeerAuthentication weft-system/mesh (mesh-wide)");
        // The namespace policy beats the mesh one.
        let e = p.effective("pets", &labels("app", "web"), None);
        assert_eq!(e.default_mode, MtlsMode::Permissive);
        assert_eq!(e.source, "PeerAuthentication pets/ns (namespace)");
        // The workload policy beats both, and its port level beats it.
        let e = p.effective("pets", &labels("app", "db"), None);
        assert_eq!(e.default_mode, MtlsMode::Disable);
        assert_eq!(e.mode_for(8080), MtlsMode::Disable);
        assert_eq!(e.mode_for(9090), MtlsMode::Strict);
    }

    #[test]
    fn unset_inherits_and_the_oldest_policy_wins_a_tie() {
        let all = vec![
            pa(
                "pets",
                "newer",
                1,
                PeerAuthenticationSpec {
                    mtls: mode("DISABLE"),
                    ..Default::default()
                },
            ),
            pa(
                "pets",
                "older",
                5,
                PeerAuthenticationSpec {
                    mtls: mode("STRICT"),
                    ..Default::default()
                },
            ),
            pa(
                "pets",
                "unset",
                9,
                PeerAuthenticationSpec {
                    selector: selector("app", "db"),
                    mtls: mode("UNSET"),
                    ..Default::default()
                },
            ),
        ];
        let p = Policies::new("weft-system", &all);
        let e = p.effective("pets", &labels("app", "db"), None);
        assert_eq!(e.default_mode, MtlsMode::Strict);
        assert_eq!(e.source, "PeerAuthentication pets/older (namespace)");
    }

    #[test]
    fn bad_policies_are_reported_and_skipped_not_guessed() {
        let all = vec![
            pa(
                "pets",
                "typo",
                5,
                PeerAuthenticationSpec {
                    mtls: mode("STRICTT"),
                    ..Default::default()
                },
            ),
            pa(
                "pets",
                "ports-without-selector",
                5,
                PeerAuthenticationSpec {
                    port_level_mtls: Some(
                        [(
                            "80".to_string(),
                            PeerMtls {
                                mode: Some("STRICT".into()),
                            },
                        )]
                        .into(),
                    ),
                    ..Default::default()
                },
            ),
            pa(
                "pets",
                "bad-port",
                5,
                PeerAuthenticationSpec {
                    selector: selector("app", "db"),
                    port_level_mtls: Some([("http".to_string(), PeerMtls::default())].into()),
                    ..Default::default()
                },
            ),
        ];
        let p = Policies::new("weft-system", &all);
        let mut names: Vec<_> = p.problems.iter().map(|x| x.name.as_str()).collect();
        names.sort();
        assert_eq!(names, ["bad-port", "ports-without-selector", "typo"]);
        assert!(p.problems.iter().any(|x| x.message.contains("\"STRICTT\"")));
        let e = p.effective("pets", &labels("app", "db"), None);
        assert_eq!(e.default_mode, MtlsMode::Permissive);
    }
}
