//! Which authorization policies select which workload, each compiled once per index. Istio's
//! AuthorizationPolicies: the root namespace's select across the mesh, a namespace's select its
//! own workloads, by `selector.matchLabels`, by `targetRefs` to Services whose endpoints are the
//! pod or to Gateway API Gateways whose gateway pod it is, or all. Gateway pods (ingress and
//! egress) are selected exactly like sidecars' pods; their proxies enforce the result. SMI TrafficTargets select the workloads running as their destination service
//! account, and only where the pod's revision is in OSM's restrictive mode
//! (`traffic.enablePermissiveTrafficPolicyMode: false`), which also adds an ALLOW that matches
//! nothing, so what no policy allows is denied; in permissive mode OSM ignores them, and so
//! does weft.
//! A policy weft cannot read fails closed for the workloads it selects: an ALLOW becomes an
//! ALLOW that matches nothing, a DENY (or CUSTOM) one that denies everything; an AUDIT is
//! dropped. A target reference weft refuses (a kind it cannot target, another namespace)
//! selects nothing, as in Istio, so a policy whose every target is refused applies nowhere and
//! says so. Each such policy is a problem the operator reports with the fix.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::gateway_api::LABEL_GATEWAY_NAME;
use super::policy::PolicyProblem;
use crate::api::AuthorizationPolicy;
use crate::api::smi::{HTTPRouteGroup, TCPRoute, TrafficTarget};
use crate::authz::istio::{self, AuthorizationPolicySpec, GATEWAY_API_GROUP};
use crate::authz::model::{Action, Policy, PolicyKind, Rule};
use crate::authz::smi::{self as smi_spec, Routes};

/// The kind name problems and Events use.
pub const KIND: &str = "AuthorizationPolicy";

enum Scope {
    /// Every workload of the namespace (of the mesh, in the root namespace).
    All,
    Labels(BTreeMap<String, String>),
    /// `targetRefs` in the policy's namespace: the endpoints of these Services, and the
    /// gateway pods deployed for these Gateway API Gateways (labelled
    /// `gateway.networking.k8s.io/gateway-name: <name>`).
    Targets {
        services: Vec<String>,
        gateways: Vec<String>,
    },
    /// Pods running as this service account of the policy's namespace, in restrictive mode.
    ServiceAccount(String),
}

/// The SMI objects of the mesh, as watched.
#[derive(Default, Clone, Copy)]
pub struct SmiObjects<'a> {
    pub traffic_targets: &'a [Arc<TrafficTarget>],
    pub http_route_groups: &'a [Arc<HTTPRouteGroup>],
    pub tcp_routes: &'a [Arc<TCPRoute>],
}

/// The pod a selection is for.
pub struct Workload<'a> {
    pub namespace: &'a str,
    pub labels: &'a BTreeMap<String, String>,
    /// The Services (of its namespace) it is an endpoint of.
    pub services: &'a [&'a str],
    pub service_account: &'a str,
    /// The pod's revision when that revision is in OSM's restrictive mode.
    pub restrictive_revision: Option<&'a str>,
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
    pub fn new(
        root_namespace: &str,
        all: &[Arc<AuthorizationPolicy>],
        smi: SmiObjects<'_>,
    ) -> Self {
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
                    scope_of(namespace, &spec),
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
                    let selects_nothing = matches!(&scope, Scope::Targets { services, gateways }
                        if services.is_empty() && gateways.is_empty());
                    problems.push(PolicyProblem {
                        kind: KIND,
                        namespace: namespace.clone(),
                        name: name.clone(),
                        message: format!(
                            "{message}. Until it is fixed, weft {}",
                            match &fallback {
                                _ if selects_nothing =>
                                    "applies it to no workload: none of its targets is one weft can select (a Service, or a Gateway API Gateway, of the policy's namespace)",
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
        compile_smi(smi, &mut entries, &mut problems);
        AuthzIndex {
            root_namespace: root_namespace.to_string(),
            entries,
            problems,
        }
    }

    /// The policies that select a pod: Istio's by namespace and name, then the TrafficTargets,
    /// then restrictive mode's. The order never changes a verdict (see `authz::evaluate`).
    pub fn for_pod(&self, w: &Workload<'_>) -> Vec<Policy> {
        let mut selected: Vec<Policy> = self
            .entries
            .iter()
            .filter(|e| e.namespace == w.namespace || e.namespace == self.root_namespace)
            .filter(|e| match &e.scope {
                Scope::All => true,
                Scope::Labels(want) => want.iter().all(|(k, v)| w.labels.get(k) == Some(v)),
                Scope::Targets { services, gateways } => {
                    e.namespace == w.namespace
                        && (services.iter().any(|n| w.services.contains(&n.as_str()))
                            || w.labels
                                .get(LABEL_GATEWAY_NAME)
                                .is_some_and(|g| gateways.contains(g)))
                }
                Scope::ServiceAccount(sa) => {
                    w.restrictive_revision.is_some()
                        && e.namespace == w.namespace
                        && sa == w.service_account
                }
            })
            .map(|e| e.policy.clone())
            .collect();
        if let Some(revision) = w.restrictive_revision {
            selected.push(smi_spec::restrictive_mode(revision));
        }
        selected
    }
}

/// Compiles every TrafficTarget against the route groups of its namespace.
fn compile_smi(smi: SmiObjects<'_>, entries: &mut Vec<Entry>, problems: &mut Vec<PolicyProblem>) {
    fn read<T: serde::de::DeserializeOwned>(raw: &serde_json::Value) -> Result<T, String> {
        serde_json::from_value(raw.clone()).map_err(|e| format!("spec: {e}"))
    }
    let key = |m: &kube::api::ObjectMeta| Some((m.namespace.clone()?, m.name.clone()?));
    let mut report = |kind: &'static str, (namespace, name): (String, String), message: String| {
        problems.push(PolicyProblem {
            kind,
            namespace,
            name,
            message,
        })
    };
    let mut http = BTreeMap::new();
    for g in smi.http_route_groups {
        let Some(k) = key(&g.metadata) else { continue };
        match read::<smi_spec::HttpRouteGroupSpec>(&g.spec.raw) {
            Ok(spec) => {
                http.insert(k, spec);
            }
            Err(e) => report("HTTPRouteGroup", k, e),
        }
    }
    let mut tcp = BTreeMap::new();
    for r in smi.tcp_routes {
        let Some(k) = key(&r.metadata) else { continue };
        match read::<smi_spec::TcpRouteSpec>(&r.spec.raw) {
            Ok(spec) => {
                tcp.insert(k, spec);
            }
            Err(e) => report("TCPRoute", k, e),
        }
    }
    let mut targets: Vec<&TrafficTarget> = smi.traffic_targets.iter().map(Arc::as_ref).collect();
    targets.sort_by(|a, b| {
        (&a.metadata.namespace, &a.metadata.name).cmp(&(&b.metadata.namespace, &b.metadata.name))
    });
    for t in targets {
        let Some((namespace, name)) = key(&t.metadata) else {
            continue;
        };
        let routes = Routes {
            http: http
                .iter()
                .filter(|((ns, _), _)| *ns == namespace)
                .map(|((_, n), s)| (n.as_str(), s))
                .collect(),
            tcp: tcp
                .iter()
                .filter(|((ns, _), _)| *ns == namespace)
                .map(|((_, n), s)| (n.as_str(), s))
                .collect(),
        };
        let compiled = read::<smi_spec::TrafficTargetSpec>(&t.spec.raw).and_then(|spec| {
            smi_spec::compile_traffic_target(&namespace, &name, &spec, &routes).map_err(|errors| {
                errors
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; ")
            })
        });
        match compiled {
            Ok(c) => entries.push(Entry {
                namespace,
                scope: Scope::ServiceAccount(c.destination_service_account),
                policy: c.policy,
            }),
            // An allow that cannot be read allows nothing: restrictive mode already denies.
            Err(message) => report(
                "TrafficTarget",
                (namespace, name),
                format!("{message}. Until it is fixed it allows nothing"),
            ),
        }
    }
}

fn scope_of(namespace: &str, spec: &AuthorizationPolicySpec) -> Scope {
    let targets: Vec<_> = spec.target_ref.iter().chain(&spec.target_refs).collect();
    if !targets.is_empty() {
        // Only Services and Gateway API Gateways of the policy's namespace compile
        // (`istio::compile`). A refused reference selects nothing: which workloads it meant is
        // unknown (a Deployment `shop` is not the endpoints of a Service `shop`), and Istio
        // attaches a policy to nothing such a reference names. A policy refused for another
        // reason still fails closed on the targets it names rightly.
        let (gateways, services) = targets
            .into_iter()
            .filter(|t| !istio::target_refused(namespace, t))
            .partition::<Vec<_>, _>(|t| t.kind == "Gateway" && t.group == GATEWAY_API_GROUP);
        let names = |ts: Vec<&crate::authz::istio::PolicyTargetReference>| {
            ts.into_iter().map(|t| t.name.clone()).collect()
        };
        return Scope::Targets {
            services: names(services),
            gateways: names(gateways),
        };
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
        kind: PolicyKind::AuthorizationPolicy,
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

    fn pod<'a>(
        namespace: &'a str,
        labels: &'a BTreeMap<String, String>,
        services: &'a [&'a str],
    ) -> Workload<'a> {
        Workload {
            namespace,
            labels,
            services,
            service_account: "default",
            restrictive_revision: None,
        }
    }

    fn smi<K: serde::de::DeserializeOwned>(kind: &str, ns: &str, name: &str, spec: &str) -> Arc<K> {
        let spec: serde_json::Value = serde_yaml::from_str(spec).unwrap();
        let api = if kind == "TrafficTarget" {
            "access.smi-spec.io/v1alpha3"
        } else {
            "specs.smi-spec.io/v1alpha4"
        };
        Arc::new(
            serde_json::from_value(json!({
                "apiVersion": api, "kind": kind,
                "metadata": {"namespace": ns, "name": name}, "spec": spec
            }))
            .unwrap(),
        )
    }

    /// Seed 000 step 5, as printed.
    const BOOKSTORE_ACCESS: &str = r#"
  destination:
    kind: ServiceAccount
    name: default
    namespace: bookstore
  sources:
    - kind: ServiceAccount
      name: default
      namespace: bookbuyer
  rules:
    - kind: HTTPRouteGroup
      name: bookstore-routes
      matches:
        - buy-books
        - get-books
"#;
    const BOOKSTORE_ROUTES: &str = r#"
  matches:
    - name: buy-books
      pathRegex: /buy
      methods:
        - POST
    - name: get-books
      pathRegex: /books
      methods:
        - GET
"#;

    #[test]
    fn seed_000_restrictive_mode_allows_exactly_the_traffic_target_routes() {
        use crate::authz::{Http, Request, Verdict, evaluate};
        let targets = [smi(
            "TrafficTarget",
            "bookstore",
            "bookstore-access",
            BOOKSTORE_ACCESS,
        )];
        let groups = [smi(
            "HTTPRouteGroup",
            "bookstore",
            "bookstore-routes",
            BOOKSTORE_ROUTES,
        )];
        let objects = SmiObjects {
            traffic_targets: &targets,
            http_route_groups: &groups,
            tcp_routes: &[],
        };
        let index = AuthzIndex::new("weft-system", &[], objects);
        assert!(index.problems.is_empty(), "{:?}", index.problems);
        let labels = BTreeMap::new();
        let bookstore = |restrictive: Option<&'static str>| {
            index.for_pod(&Workload {
                restrictive_revision: restrictive,
                ..pod("bookstore", &labels, &[])
            })
        };
        // Permissive mode (OSM's default): TrafficTargets are ignored.
        assert!(bookstore(None).is_empty());
        let policies = bookstore(Some("stable"));
        assert_eq!(
            names(&policies),
            ["bookstore/bookstore-access", "revision stable"]
        );
        let headers: Vec<(String, String)> = Vec::new();
        let decide = |principal: Option<&str>, method: &str, path: &str| {
            let request = Request {
                principal,
                source_ip: [198, 18, 0, 4].into(),
                remote_ip: [198, 18, 0, 4].into(),
                destination_ip: [198, 18, 0, 5].into(),
                destination_port: 14001,
                sni: None,
                http: Some(Http {
                    method,
                    host: "bookstore.bookstore",
                    path,
                    headers: &headers,
                }),
            };
            evaluate(&policies, &request).verdict
        };
        let buyer = Some("cluster.local/ns/bookbuyer/sa/default");
        assert_eq!(decide(buyer, "POST", "/buy"), Verdict::Allow);
        assert_eq!(decide(buyer, "GET", "/books"), Verdict::Allow);
        assert_eq!(decide(buyer, "GET", "/buy"), Verdict::Deny);
        assert_eq!(
            decide(buyer, "POST", "/buy/now"),
            Verdict::Deny,
            "pathRegex matches the whole path"
        );
        assert_eq!(decide(buyer, "DELETE", "/books"), Verdict::Deny);
        assert_eq!(
            decide(Some("cluster.local/ns/thief/sa/default"), "POST", "/buy"),
            Verdict::Deny
        );
        assert_eq!(
            decide(None, "POST", "/buy"),
            Verdict::Deny,
            "a plaintext caller"
        );
        // Another service account of the bookstore namespace gets only restrictive mode.
        let other = index.for_pod(&Workload {
            service_account: "admin",
            restrictive_revision: Some("stable"),
            ..pod("bookstore", &labels, &[])
        });
        assert_eq!(names(&other), ["revision stable"]);
    }

    #[test]
    fn smi_objects_weft_cannot_read_are_reported_by_name() {
        let targets = [
            smi(
                "TrafficTarget",
                "shop",
                "missing-group",
                "destination: {kind: ServiceAccount, name: a}\nsources: [{kind: ServiceAccount, name: b}]\nrules: [{kind: HTTPRouteGroup, name: nope}]",
            ),
            smi(
                "TrafficTarget",
                "shop",
                "bomb",
                "destination: {kind: ServiceAccount, name: a}\nsources: [{kind: ServiceAccount, name: b}]\nrules: [{kind: HTTPRouteGroup, name: bomb}]",
            ),
            smi(
                "TrafficTarget",
                "shop",
                "typo",
                "destination: {kind: ServiceAccount, name: a}\nsource: []",
            ),
        ];
        let groups = [smi(
            "HTTPRouteGroup",
            "shop",
            "bomb",
            "matches: [{name: m, pathRegex: '((a{100}){100}){100}'}]",
        )];
        let index = AuthzIndex::new(
            "weft-system",
            &[],
            SmiObjects {
                traffic_targets: &targets,
                http_route_groups: &groups,
                tcp_routes: &[],
            },
        );
        let message = |name: &str| {
            index
                .problems
                .iter()
                .find(|p| p.name == name)
                .map(|p| p.message.clone())
                .unwrap_or_default()
        };
        assert!(
            message("missing-group").contains("HTTPRouteGroup shop/nope does not exist"),
            "{:?}",
            index.problems
        );
        assert!(
            message("bomb").contains("simplify the pattern"),
            "{:?}",
            index.problems
        );
        assert!(message("typo").contains("source"), "{:?}", index.problems);
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
            SmiObjects::default(),
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
            names(&index.for_pod(&pod("pay", &api, &["api-svc"]))),
            [
                "pay/api-only",
                "pay/by-service",
                "pay/ns-wide",
                "weft-system/mesh",
                "weft-system/mesh-api"
            ]
        );
        assert_eq!(
            names(&index.for_pod(&pod("pay", &web, &[]))),
            ["pay/ns-wide", "weft-system/mesh"]
        );
        assert_eq!(
            names(&index.for_pod(&pod("dev", &web, &[]))),
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
            SmiObjects::default(),
        );
        let ps = index.for_pod(&pod("pay", &BTreeMap::new(), &[]));
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

    /// A refused target reference selects nothing: a DENY naming a Deployment `shop` (or a
    /// Service of another namespace) no longer fails closed on the endpoints of the Service
    /// `shop` of its namespace, an unrelated workload; its status says it applies nowhere. A
    /// policy refused for its rules still fails closed on the Service it targets rightly.
    #[test]
    fn a_refused_target_selects_nothing_and_a_refused_rule_fails_closed_on_its_target() {
        let index = AuthzIndex::new(
            "weft-system",
            &[
                policy(
                    "pay",
                    "deployment",
                    json!({"targetRefs": [{"kind": "Deployment", "group": "apps", "name": "shop"}], "action": "DENY", "rules": [{}]}),
                ),
                policy(
                    "pay",
                    "elsewhere",
                    json!({"targetRef": {"kind": "Service", "group": "", "name": "shop", "namespace": "other"}, "action": "DENY", "rules": [{}]}),
                ),
                policy(
                    "pay",
                    "typo",
                    json!({"targetRefs": [{"kind": "Service", "group": "", "name": "api"},
                                          {"kind": "ServiceEntry", "group": "networking.istio.io", "name": "shop"}],
                        "action": "DENY", "rules": [{"when": [{"key": "bogus", "values": ["x"]}]}]}),
                ),
            ],
            SmiObjects::default(),
        );
        assert_eq!(index.problems.len(), 3, "{:?}", index.problems);
        for name in ["deployment", "elsewhere"] {
            let p = index.problems.iter().find(|p| p.name == name).unwrap();
            assert!(
                p.message.contains("applies it to no workload"),
                "{}",
                p.message
            );
        }
        let typo = index.problems.iter().find(|p| p.name == "typo").unwrap();
        assert!(
            typo.message.contains("denies every request"),
            "{}",
            typo.message
        );
        let shop = index.for_pod(&pod("pay", &BTreeMap::new(), &["shop"]));
        assert!(names(&shop).is_empty(), "{:?}", names(&shop));
        let api = index.for_pod(&pod("pay", &BTreeMap::new(), &["api"]));
        assert_eq!(names(&api), ["pay/typo"]);
        assert_eq!((api[0].action, api[0].rules.len()), (Action::Deny, 1));
    }

    #[test]
    fn gateway_pods_are_selected_by_namespace_labels_and_gateway_targets() {
        let index = AuthzIndex::new(
            "weft-system",
            &[
                policy(
                    "weft-system",
                    "mesh",
                    json!({"action": "DENY", "rules": [{"to": [{"operation": {"paths": ["/debug*"]}}]}]}),
                ),
                policy(
                    "weft-system",
                    "all-ingress",
                    json!({"selector": {"matchLabels": {"istio": "ingressgateway"}}, "action": "DENY", "rules": [{"from": [{"source": {"remoteIpBlocks": ["198.18.200.0/24"]}}]}]}),
                ),
                policy("gw", "ns-wide", json!({"action": "AUDIT", "rules": [{}]})),
                policy(
                    "gw",
                    "by-label",
                    json!({"selector": {"matchLabels": {"istio": "ingressgateway"}}, "rules": [{"to": [{"operation": {"hosts": ["shop.example.com"]}}]}]}),
                ),
                policy(
                    "gw",
                    "by-gateway",
                    json!({"targetRefs": [{"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "shop"}], "action": "DENY", "rules": [{"to": [{"operation": {"paths": ["/admin"]}}]}]}),
                ),
                policy(
                    "gw",
                    "other-gateway",
                    json!({"targetRefs": [{"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "other"}], "rules": [{}]}),
                ),
                // Gateway `shop` of namespace apps: not gw's gateway of that name.
                policy(
                    "apps",
                    "elsewhere",
                    json!({"targetRefs": [{"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "shop"}], "rules": [{}]}),
                ),
                policy(
                    "gw",
                    "istio-gateway",
                    json!({"targetRefs": [{"kind": "Gateway", "group": "networking.istio.io", "name": "shop"}], "rules": [{}]}),
                ),
            ],
            SmiObjects::default(),
        );
        // Refused by name; its target selects nothing (not the endpoints of a Service `shop`).
        let refused: Vec<&str> = index.problems.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(refused, ["istio-gateway"]);
        assert!(
            index.problems[0].message.contains("selector.matchLabels"),
            "{:?}",
            index.problems
        );
        // An Istio ingress gateway pod (`weft gateway install`'s labels).
        let ingress: BTreeMap<String, String> =
            [("istio".to_string(), "ingressgateway".to_string())].into();
        assert_eq!(
            names(&index.for_pod(&pod("gw", &ingress, &["ingressgateway"]))),
            [
                "gw/by-label",
                "gw/ns-wide",
                "weft-system/all-ingress",
                "weft-system/mesh"
            ]
        );
        // The gateway pod the operator deployed for Gateway API Gateway `shop`.
        let shop: BTreeMap<String, String> = [(
            crate::discovery::gateway_api::LABEL_GATEWAY_NAME.to_string(),
            "shop".to_string(),
        )]
        .into();
        assert_eq!(
            names(&index.for_pod(&pod("gw", &shop, &["shop-weft"]))),
            ["gw/by-gateway", "gw/ns-wide", "weft-system/mesh"]
        );
        // apps' own Gateway `shop` is apps/elsewhere's target (and gw's never was).
        assert_eq!(
            names(&index.for_pod(&pod("apps", &shop, &[]))),
            ["apps/elsewhere", "weft-system/mesh"]
        );
    }
}
