//! Which AuthorizationPolicies select which workload, each compiled once per index: the root
//! namespace's policies select across the mesh, a namespace's select its own workloads, by
//! `selector.matchLabels`, by `targetRefs` to Services whose endpoints are the pod, or all.
//! A policy weft cannot read fails closed for the workloads it selects: an ALLOW becomes an
//! ALLOW that matches nothing, a DENY (or CUSTOM) one that denies everything; an AUDIT is
//! dropped. Each such policy is a problem the operator reports with the fix.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::policy::PolicyProblem;
use crate::api::AuthorizationPolicy;
use crate::authz::istio::{self, AuthorizationPolicySpec};
use crate::authz::model::{Action, Policy, Rule};

/// The kind name problems and Events use.
pub const KIND: &str = "AuthorizationPolicy";

enum Scope {
    /// Every workload of the namespace (of the mesh, in the root namespace).
    All,
    Labels(BTreeMap<String, String>),
    /// Services by name in the policy's namespace.
    Services(Vec<String>),
}

struct Entry {
    namespace: String,
    scope: Scope,
    policy: Policy,
}

/// Every policy, compiled, with what it selects.
pub struct AuthzIndex {
    root_namespace: String,
    entries: Vec<Entry>,
    pub problems: Vec<PolicyProblem>,
}

impl AuthzIndex {
    pub fn new(root_namespace: &str, all: &[Arc<AuthorizationPolicy>]) -> Self {
        let mut sorted: Vec<&AuthorizationPolicy> = all.iter().map(Arc::as_ref).collect();
        sorted.sort_by(|a, b| {
            (&a.metadata.namespace, &a.metadata.name)
                .cmp(&(&b.metadata.namespace, &b.metadata.name))
        });
        let mut entries = Vec::new();
        let mut problems = Vec::new();
        for p in sorted {
            let (Some(namespace), Some(name)) = (&p.metadata.namespace, &p.metadata.name) else {
                continue;
            };
            let annotations = p.metadata.annotations.clone().unwrap_or_default();
            let spec: Result<AuthorizationPolicySpec, String> =
                serde_json::from_value(p.spec.raw.clone()).map_err(|e| e.to_string());
            let (scope, compiled) = match spec {
                Ok(spec) => (
                    scope_of(&spec),
                    istio::compile(namespace, name, &spec, &annotations).map_err(|errors| {
                        errors
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join("; ")
                    }),
                ),
                // Unreadable: the scope is unknown too, so the whole namespace fails closed.
                Err(e) => (Scope::All, Err(format!("spec: {e}"))),
            };
            let policy = match compiled {
                Ok(policy) => policy,
                Err(message) => {
                    let action = p.spec.raw.get("action").and_then(|a| a.as_str());
                    let fallback = fail_closed(namespace, name, action);
                    problems.push(PolicyProblem {
                        kind: KIND,
                        namespace: namespace.clone(),
                        name: name.clone(),
                        message: format!(
                            "{message}. Until it is fixed, weft {}",
                            match &fallback {
                                Some(f) if f.action == Action::Allow =>
                                    "treats it as an ALLOW policy that matches nothing",
                                Some(_) => "denies every request to the workloads it selects",
                                None => "ignores this AUDIT policy",
                            }
                        ),
                    });
                    match fallback {
                        Some(f) => f,
                        None => continue,
                    }
                }
            };
            entries.push(Entry {
                namespace: namespace.clone(),
                scope,
                policy,
            });
        }
        AuthzIndex {
            root_namespace: root_namespace.to_string(),
            entries,
            problems,
        }
    }

    /// The policies that select a pod, in the order they are evaluated (by namespace, name).
    /// `services` are the names of the Services (in the pod's namespace) it is an endpoint of.
    pub fn for_pod(
        &self,
        namespace: &str,
        labels: &BTreeMap<String, String>,
        services: &[&str],
    ) -> Vec<Policy> {
        self.entries
            .iter()
            .filter(|e| e.namespace == namespace || e.namespace == self.root_namespace)
            .filter(|e| match &e.scope {
                Scope::All => true,
                Scope::Labels(want) => want.iter().all(|(k, v)| labels.get(k) == Some(v)),
                Scope::Services(names) => {
                    e.namespace == namespace && names.iter().any(|n| services.contains(&n.as_str()))
                }
            })
            .map(|e| e.policy.clone())
            .collect()
    }
}

fn scope_of(spec: &AuthorizationPolicySpec) -> Scope {
    let services: Vec<String> = spec
        .target_ref
        .iter()
        .chain(&spec.target_refs)
        .map(|t| t.name.clone())
        .collect();
    if !services.is_empty() {
        return Scope::Services(services);
    }
    match &spec.selector {
        Some(s) => Scope::Labels(s.match_labels.clone()),
        None => Scope::All,
    }
}

/// What a policy weft cannot read is enforced as; None for AUDIT (no effect on traffic).
fn fail_closed(namespace: &str, name: &str, action: Option<&str>) -> Option<Policy> {
    let (action, rules) = match action {
        None | Some("ALLOW") => (Action::Allow, Vec::new()),
        Some("AUDIT") => return None,
        _ => (
            Action::Deny,
            vec![Rule {
                from: Vec::new(),
                to: Vec::new(),
                when: Vec::new(),
            }],
        ),
    };
    Some(Policy {
        name: format!("{namespace}/{name}"),
        action,
        dry_run: false,
        rules,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn policy(ns: &str, name: &str, spec: serde_json::Value) -> Arc<AuthorizationPolicy> {
        Arc::new(
            serde_json::from_value(json!({
                "apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
                "metadata": {"namespace": ns, "name": name}, "spec": spec
            }))
            .unwrap(),
        )
    }

    fn names(ps: &[Policy]) -> Vec<&str> {
        ps.iter().map(|p| p.name.as_str()).collect()
    }

    #[test]
    fn policies_select_as_istio_scopes_them() {
        let index = AuthzIndex::new(
            "weft-system",
            &[
                policy(
                    "weft-system",
                    "mesh",
                    json!({"action": "DENY", "rules": [{"to": [{"operation": {"paths": ["/debug"]}}]}]}),
                ),
                policy(
                    "weft-system",
                    "mesh-api",
                    json!({"selector": {"matchLabels": {"app": "api"}}}),
                ),
                policy("pay", "ns-wide", json!({"rules": [{}]})),
                policy(
                    "pay",
                    "api-only",
                    json!({"selector": {"matchLabels": {"app": "api"}}, "rules": [{}]}),
                ),
                policy(
                    "pay",
                    "by-service",
                    json!({"targetRefs": [{"kind": "Service", "group": "", "name": "api-svc"}], "rules": [{}]}),
                ),
                policy("other", "elsewhere", json!({"rules": [{}]})),
            ],
        );
        assert!(
            index.problems.is_empty(),
            "{:?}",
            index
                .problems
                .iter()
                .map(|p| &p.message)
                .collect::<Vec<_>>()
        );
        let api: BTreeMap<String, String> = [("app".to_string(), "api".to_string())].into();
        let web: BTreeMap<String, String> = [("app".to_string(), "web".to_string())].into();
        assert_eq!(
            names(&index.for_pod("pay", &api, &["api-svc"])),
            [
                "pay/api-only",
                "pay/by-service",
                "pay/ns-wide",
                "weft-system/mesh",
                "weft-system/mesh-api"
            ]
        );
        assert_eq!(
            names(&index.for_pod("pay", &web, &[])),
            ["pay/ns-wide", "weft-system/mesh"]
        );
        assert_eq!(
            names(&index.for_pod("dev", &web, &[])),
            ["weft-system/mesh"]
        );
    }

    #[test]
    fn a_policy_weft_cannot_read_fails_closed_and_is_reported() {
        let index = AuthzIndex::new(
            "weft-system",
            &[
                policy(
                    "pay",
                    "custom",
                    json!({"action": "CUSTOM", "provider": {"name": "opa"}, "rules": [{}]}),
                ),
                policy(
                    "pay",
                    "jwt",
                    json!({"rules": [{"from": [{"source": {"requestPrincipals": ["*"]}}]}]}),
                ),
                policy(
                    "pay",
                    "typo",
                    json!({"rules": [{"to": [{"operation": {"method": ["GET"]}}]}]}),
                ),
                policy(
                    "pay",
                    "audit",
                    json!({"action": "AUDIT", "rules": [{"when": [{"key": "bogus", "values": ["x"]}]}]}),
                ),
            ],
        );
        let ps = index.for_pod("pay", &BTreeMap::new(), &[]);
        assert_eq!(names(&ps), ["pay/custom", "pay/jwt", "pay/typo"]);
        assert_eq!(ps[0].action, Action::Deny);
        assert_eq!(ps[0].rules.len(), 1, "a DENY that matches everything");
        assert_eq!((ps[1].action, ps[1].rules.len()), (Action::Allow, 0));
        assert_eq!(index.problems.len(), 4);
        let typo = &index
            .problems
            .iter()
            .find(|p| p.name == "typo")
            .unwrap()
            .message;
        assert!(typo.contains("method"), "{typo}");
        assert!(index.problems.iter().all(|p| p.kind == KIND));
    }
}
