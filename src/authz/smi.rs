//! SMI access control as OSM enforces it in restrictive mode: an `access.smi-spec.io/v1alpha3`
//! TrafficTarget lets source service accounts reach a destination service account on the
//! routes of `specs.smi-spec.io/v1alpha4` HTTPRouteGroups (pathRegex, methods, headers) and
//! TCPRoutes (ports). Each TrafficTarget compiles into an ALLOW [`Policy`] of the same model
//! Istio's policies use, so one evaluator decides both. Specs are read strictly: an unknown
//! field, a missing route group or a bad regex is an error naming it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::istio::SpecError;
use super::model::{Action, Clause, Pattern, Policy, PolicyKind, Rule, StringMatch, Term};

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrafficTargetSpec {
    pub destination: IdentityBinding,
    #[serde(default)]
    pub sources: Vec<IdentityBinding>,
    #[serde(default)]
    pub rules: Vec<TrafficTargetRule>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IdentityBinding {
    pub kind: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrafficTargetRule {
    pub kind: String,
    pub name: String,
    /// Names of the group's matches; empty: all of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRouteGroupSpec {
    #[serde(default)]
    pub matches: Vec<HttpMatch>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpMatch {
    pub name: String,
    /// Exact methods, or `*` for any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// A regex the whole (normalized) path must match; absent: any path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_regex: Option<String>,
    /// Header name -> a regex its whole value must match.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpRouteSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matches: Option<TcpMatch>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpMatch {
    #[serde(default)]
    pub ports: Vec<u16>,
}

/// The route groups a TrafficTarget may name, by (kind, name) in its namespace.
#[derive(Default)]
pub struct Routes<'a> {
    pub http: BTreeMap<&'a str, &'a HttpRouteGroupSpec>,
    pub tcp: BTreeMap<&'a str, &'a TcpRouteSpec>,
}

/// A compiled TrafficTarget: the service account it protects, and its ALLOW policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompiledTarget {
    pub destination_namespace: String,
    pub destination_service_account: String,
    pub policy: Policy,
}

/// Compiles the TrafficTarget `namespace/name`; every error is returned.
pub fn compile_traffic_target(
    namespace: &str,
    name: &str,
    spec: &TrafficTargetSpec,
    routes: &Routes<'_>,
) -> Result<CompiledTarget, Vec<SpecError>> {
    let mut errors = Vec::new();
    let mut err = |field: String, message: String| errors.push(SpecError { field, message });
    let dest = &spec.destination;
    if dest.kind != "ServiceAccount" {
        err(
            "destination.kind".into(),
            format!(
                "{:?}: only ServiceAccount destinations exist in SMI access control",
                dest.kind
            ),
        );
    }
    if dest.namespace.as_deref().is_some_and(|n| n != namespace) {
        err(
            "destination.namespace".into(),
            "a TrafficTarget protects a service account of its own namespace; move it there".into(),
        );
    }
    if spec.sources.is_empty() {
        err(
            "sources".into(),
            "name at least one source ServiceAccount".into(),
        );
    }
    let mut sources = Vec::new();
    for (i, s) in spec.sources.iter().enumerate() {
        if s.kind != "ServiceAccount" {
            err(
                format!("sources[{i}].kind"),
                format!("{:?}: sources are ServiceAccounts", s.kind),
            );
            continue;
        }
        sources.push(Term::ServiceAccount {
            namespace: s.namespace.clone().unwrap_or_else(|| namespace.to_string()),
            name: s.name.clone(),
        });
    }
    if spec.rules.is_empty() {
        err(
            "rules".into(),
            "name the HTTPRouteGroup or TCPRoute whose routes the sources may use".into(),
        );
    }
    let mut operations: Vec<Vec<Clause>> = Vec::new();
    for (i, r) in spec.rules.iter().enumerate() {
        let at = format!("rules[{i}]");
        match r.kind.as_str() {
            "HTTPRouteGroup" => {
                let Some(group) = routes.http.get(r.name.as_str()) else {
                    err(
                        format!("{at}.name"),
                        format!("HTTPRouteGroup {namespace}/{} does not exist", r.name),
                    );
                    continue;
                };
                for wanted in &r.matches {
                    if !group.matches.iter().any(|m| &m.name == wanted) {
                        err(
                            format!("{at}.matches"),
                            format!("HTTPRouteGroup {} has no match named {wanted:?}", r.name),
                        );
                    }
                }
                for (j, m) in group.matches.iter().enumerate() {
                    if !r.matches.is_empty() && !r.matches.contains(&m.name) {
                        continue;
                    }
                    match http_operation(m) {
                        Ok(op) => operations.push(op),
                        Err(message) => {
                            err(format!("HTTPRouteGroup {}: matches[{j}]", r.name), message)
                        }
                    }
                }
            }
            "TCPRoute" => {
                let Some(route) = routes.tcp.get(r.name.as_str()) else {
                    err(
                        format!("{at}.name"),
                        format!("TCPRoute {namespace}/{} does not exist", r.name),
                    );
                    continue;
                };
                let ports: Vec<Term> = route
                    .matches
                    .iter()
                    .flat_map(|m| &m.ports)
                    .map(|p| Term::DestinationPort(*p))
                    .collect();
                // A TCPRoute without ports allows every port.
                operations.push(if ports.is_empty() {
                    Vec::new()
                } else {
                    vec![Clause {
                        any_of: ports,
                        none_of: Vec::new(),
                    }]
                });
            }
            other => err(
                format!("{at}.kind"),
                format!("{other:?}: rules name an HTTPRouteGroup or a TCPRoute"),
            ),
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(CompiledTarget {
        destination_namespace: namespace.to_string(),
        destination_service_account: dest.name.clone(),
        policy: Policy {
            name: format!("{namespace}/{name}"),
            kind: PolicyKind::TrafficTarget,
            action: Action::Allow,
            dry_run: false,
            rules: vec![Rule {
                from: vec![vec![Clause {
                    any_of: sources,
                    none_of: Vec::new(),
                }]],
                to: operations,
                when: Vec::new(),
            }],
        },
    })
}

/// One HTTPRouteGroup match as an operation (an empty one matches every request).
fn http_operation(m: &HttpMatch) -> Result<Vec<Clause>, String> {
    let mut clauses = Vec::new();
    let one = |t: Term| Clause {
        any_of: vec![t],
        none_of: Vec::new(),
    };
    if let Some(p) = &m.path_regex {
        clauses.push(one(Term::PathRegex(
            Pattern::new(p).map_err(|e| format!("pathRegex: {e}"))?,
        )));
    }
    if !m.methods.is_empty() && !m.methods.iter().any(|x| x == "*") {
        clauses.push(Clause {
            any_of: m
                .methods
                .iter()
                .map(|x| Term::Method(StringMatch::Exact(x.clone())))
                .collect(),
            none_of: Vec::new(),
        });
    }
    for (name, value) in &m.headers {
        let pattern = Pattern::new(value).map_err(|e| format!("headers[{name}]: {e}"))?;
        clauses.push(one(Term::HeaderRegex {
            name: name.to_ascii_lowercase(),
            pattern,
        }));
    }
    Ok(clauses)
}

/// What OSM's restrictive mode means for a workload that no TrafficTarget names: an ALLOW
/// policy that matches nothing, so only an explicit allow lets traffic in.
pub fn restrictive_mode(revision: &str) -> Policy {
    Policy {
        name: format!("revision {revision}"),
        kind: PolicyKind::RestrictiveMode,
        action: Action::Allow,
        dry_run: false,
        rules: Vec::new(),
    }
}
