//! Istio's `security.istio.io/v1` AuthorizationPolicy spec, read strictly (an unknown field is
//! an error naming it), and compiled into [`super::model`]. Everything the model cannot
//! express is refused with the field's path and what to change: never skipped, never guessed.
//! Which workloads a policy selects (`selector`, `targetRefs`) is discovery's business; this
//! file only checks those fields' shape.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::model::{
    Action, Clause, PathMatch, Policy, PolicyKind, Rule, Segment, StringMatch, Term, parse_ip_block,
};

/// The annotation that turns a policy into a dry run.
pub const DRY_RUN_ANNOTATION: &str = "istio.io/dry-run";

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "control-plane", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthorizationPolicySpec {
    /// The workloads (by pod labels, in the policy's namespace) the policy applies to. Without
    /// `selector` and `targetRefs` it applies to every workload of its namespace, or of the
    /// mesh in the root namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<WorkloadSelector>,
    /// Deprecated single form of `targetRefs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<PolicyTargetReference>,
    /// Services (in the policy's namespace) whose workloads the policy applies to, or Gateway
    /// API Gateways (of its namespace) whose gateway pods it applies to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub target_refs: Vec<PolicyTargetReference>,
    /// ALLOW (the default), DENY or AUDIT. CUSTOM (external authorization) is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// CUSTOM's extension provider; refused with CUSTOM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<serde_json::Value>,
    /// The rules; a request matches the policy when it matches any rule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules: Option<Vec<RuleSpec>>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "control-plane", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadSelector {
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "control-plane", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyTargetReference {
    #[serde(default)]
    pub group: String,
    pub kind: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "control-plane", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuleSpec {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<FromSpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<ToSpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub when: Vec<ConditionSpec>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "control-plane", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FromSpec {
    pub source: Option<SourceSpec>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "control-plane", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ToSpec {
    pub operation: Option<OperationSpec>,
}

macro_rules! string_lists {
    ($(#[$meta:meta])* pub struct $name:ident { $($field:ident),* $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
        #[cfg_attr(feature = "control-plane", derive(schemars::JsonSchema))]
        #[serde(rename_all = "camelCase", deny_unknown_fields)]
        pub struct $name {
            $(#[serde(default, skip_serializing_if = "Vec::is_empty")] pub $field: Vec<String>,)*
        }
    };
}

string_lists! {
    /// Who sends the request. Every field set must match.
    pub struct SourceSpec {
        principals, not_principals, request_principals, not_request_principals,
        namespaces, not_namespaces, service_accounts, not_service_accounts,
        ip_blocks, not_ip_blocks, remote_ip_blocks, not_remote_ip_blocks,
    }
}

string_lists! {
    /// What the request asks for. Every field set must match.
    pub struct OperationSpec {
        hosts, not_hosts, ports, not_ports, methods, not_methods, paths, not_paths,
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "control-plane", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConditionSpec {
    pub key: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_values: Vec<String>,
}

/// One thing the policy says that weft cannot enforce as written: where and what to change.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct SpecError {
    /// The path of the field in the spec, e.g. `rules[0].from[1].source.ipBlocks[2]`.
    pub field: String,
    pub message: String,
}

/// The `when` keys weft evaluates; a key not listed is refused.
pub const SUPPORTED_KEYS: &[&str] = &[
    "source.ip",
    "remote.ip",
    "source.namespace",
    "source.principal",
    "destination.ip",
    "destination.port",
    "connection.sni",
    "request.headers[<name>]",
];

/// Compiles a policy of namespace `namespace`; every error is returned, not just the first.
pub fn compile(
    namespace: &str,
    name: &str,
    spec: &AuthorizationPolicySpec,
    annotations: &BTreeMap<String, String>,
) -> Result<Policy, Vec<SpecError>> {
    let mut errors = Errors::default();
    let action = match spec.action.as_deref() {
        None | Some("ALLOW") => Action::Allow,
        Some("DENY") => Action::Deny,
        Some("AUDIT") => Action::Audit,
        Some("CUSTOM") => {
            errors.push(
                "action",
                "CUSTOM (external authorization) is not supported by weft; use ALLOW or DENY",
            );
            Action::Deny
        }
        Some(other) => {
            errors.push(
                "action",
                format!("{other:?} is not an action; use ALLOW, DENY or AUDIT"),
            );
            Action::Deny
        }
    };
    if spec.provider.is_some() && spec.action.as_deref() != Some("CUSTOM") {
        errors.push("provider", "provider is only for action CUSTOM; remove it");
    }
    if spec.selector.is_some() && (spec.target_ref.is_some() || !spec.target_refs.is_empty()) {
        errors.push(
            "selector",
            "set either selector or targetRefs, not both (as Istio requires)",
        );
    }
    for (i, t) in spec.target_ref.iter().chain(&spec.target_refs).enumerate() {
        let field = if spec.target_ref.is_some() && i == 0 {
            "targetRef".to_string()
        } else {
            format!("targetRefs[{}]", i - usize::from(spec.target_ref.is_some()))
        };
        if let Err(message) = target_kind(t) {
            errors.push(&field, message);
        }
        if t.namespace.as_deref().is_some_and(|n| n != namespace) {
            errors.push(
                &field,
                "namespace must be the policy's own namespace (or left out)",
            );
        }
    }
    let dry_run = match annotations.get(DRY_RUN_ANNOTATION).map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            errors.push(
                format!("metadata.annotations[{DRY_RUN_ANNOTATION}]"),
                format!("{other:?} is not \"true\" or \"false\""),
            );
            false
        }
    };
    let rules = spec
        .rules
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, r)| compile_rule(namespace, r, &format!("rules[{i}]"), &mut errors))
        .collect();
    errors.finish(Policy {
        name: format!("{namespace}/{name}"),
        kind: PolicyKind::AuthorizationPolicy,
        action,
        dry_run,
        rules,
    })
}

#[derive(Default)]
struct Errors(Vec<SpecError>);

impl Errors {
    fn push(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(SpecError {
            field: field.into(),
            message: message.into(),
        });
    }

    fn finish<T>(self, value: T) -> Result<T, Vec<SpecError>> {
        if self.0.is_empty() {
            Ok(value)
        } else {
            Err(self.0)
        }
    }
}

/// A Gateway API Gateway's group: the only Gateway kind a policy can target.
pub const GATEWAY_API_GROUP: &str = "gateway.networking.k8s.io";

/// Whether a target reference of a policy in `namespace` is refused ([`compile`] names why):
/// a kind weft cannot target, or another namespace. Such a reference selects no workload, as in
/// Istio, which attaches a policy only to what a target of a kind it supports names (it refuses
/// some kinds at admission and takes GatewayClass and ServiceEntry targets for ambient
/// waypoints, which weft does not have).
pub fn target_refused(namespace: &str, t: &PolicyTargetReference) -> bool {
    target_kind(t).is_err() || t.namespace.as_deref().is_some_and(|n| n != namespace)
}

/// Whether weft can apply a policy to what `t` names, as Istio allows it outside ambient
/// mode: a `Service` (group `""`; the pods that are its endpoints) or a Gateway API `Gateway`
/// (the gateway pods deployed for it). Everything else is refused with what to write.
fn target_kind(t: &PolicyTargetReference) -> Result<(), String> {
    match (t.group.as_str(), t.kind.as_str()) {
        ("" | "core", "Service") | (GATEWAY_API_GROUP, "Gateway") => Ok(()),
        ("networking.istio.io", "Gateway") => Err(
            "an Istio networking.istio.io Gateway cannot be targeted (Istio does not allow it \
             either); select its gateway pods with selector.matchLabels (e.g. istio: <name>)"
                .into(),
        ),
        (GATEWAY_API_GROUP, "GatewayClass") => Err(
            "a GatewayClass target (Istio's waypoint-wide policies) is not supported; target \
             the Gateway (group gateway.networking.k8s.io) or select its pods"
                .into(),
        ),
        ("networking.istio.io", "ServiceEntry") => Err(
            "a ServiceEntry target (ambient waypoints) is not supported; weft has no waypoints"
                .into(),
        ),
        (group, kind) => Err(format!(
            "kind {kind:?} (group {group:?}) cannot be targeted; target a Service (group \"\") \
             or a Gateway (group gateway.networking.k8s.io)"
        )),
    }
}

fn compile_rule(namespace: &str, r: &RuleSpec, at: &str, errors: &mut Errors) -> Rule {
    let from = r
        .from
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let at = format!("{at}.from[{i}].source");
            match &f.source {
                Some(s) => compile_source(namespace, s, &at, errors),
                None => {
                    errors.push(at, "must be set (a from entry without a source)");
                    Vec::new()
                }
            }
        })
        .collect();
    let to =
        r.to.iter()
            .enumerate()
            .map(|(i, t)| {
                let at = format!("{at}.to[{i}].operation");
                match &t.operation {
                    Some(o) => compile_operation(o, &at, errors),
                    None => {
                        errors.push(at, "must be set (a to entry without an operation)");
                        Vec::new()
                    }
                }
            })
            .collect();
    let when = r
        .when
        .iter()
        .enumerate()
        .filter_map(|(i, c)| compile_condition(c, &format!("{at}.when[{i}]"), errors))
        .collect();
    Rule { from, to, when }
}

/// How one value of a field becomes a term, or why it cannot.
type TermOf<'a> = &'a dyn Fn(&str) -> Result<Term, String>;

/// A field pair (`principals`, `notPrincipals`, its values, theirs, and how a value reads).
type FieldPair<'a> = (&'a str, &'a [String], &'a str, &'a [String], TermOf<'a>);

/// One field pair (`principals`/`notPrincipals`…) into a clause; None when both are empty.
fn clause(
    at: &str,
    (field, values): (&str, &[String]),
    (not_field, not_values): (&str, &[String]),
    errors: &mut Errors,
    term: TermOf<'_>,
) -> Option<Clause> {
    if values.is_empty() && not_values.is_empty() {
        return None;
    }
    let mut terms = |field: &str, values: &[String]| -> Vec<Term> {
        values
            .iter()
            .enumerate()
            .filter_map(|(i, v)| match term(v) {
                Ok(t) => Some(t),
                Err(message) => {
                    errors.push(format!("{at}.{field}[{i}]"), message);
                    None
                }
            })
            .collect()
    };
    Some(Clause {
        any_of: terms(field, values),
        none_of: terms(not_field, not_values),
    })
}

fn compile_source(namespace: &str, s: &SourceSpec, at: &str, errors: &mut Errors) -> Vec<Clause> {
    if !s.request_principals.is_empty() || !s.not_request_principals.is_empty() {
        errors.push(
            format!("{at}.requestPrincipals"),
            "request principals need JWT authentication (RequestAuthentication), which weft does not support yet; remove the field",
        );
    }
    let pairs: [FieldPair<'_>; 5] = [
        (
            "principals",
            &s.principals,
            "notPrincipals",
            &s.not_principals,
            &principal,
        ),
        (
            "namespaces",
            &s.namespaces,
            "notNamespaces",
            &s.not_namespaces,
            &|v| Ok(Term::Namespace(non_empty(v)?)),
        ),
        (
            "serviceAccounts",
            &s.service_accounts,
            "notServiceAccounts",
            &s.not_service_accounts,
            &|v| service_account(namespace, v),
        ),
        (
            "ipBlocks",
            &s.ip_blocks,
            "notIpBlocks",
            &s.not_ip_blocks,
            &|v| ip(v).map(Term::SourceIp),
        ),
        (
            "remoteIpBlocks",
            &s.remote_ip_blocks,
            "notRemoteIpBlocks",
            &s.not_remote_ip_blocks,
            &|v| ip(v).map(Term::RemoteIp),
        ),
    ];
    let clauses: Vec<Clause> = pairs
        .iter()
        .filter_map(|(f, v, nf, nv, term)| clause(at, (f, v), (nf, nv), errors, *term))
        .collect();
    if clauses.is_empty() && s.request_principals.is_empty() && s.not_request_principals.is_empty()
    {
        errors.push(
            at,
            "sets no field; name who the rule is about, or remove the entry",
        );
    }
    clauses
}

fn compile_operation(o: &OperationSpec, at: &str, errors: &mut Errors) -> Vec<Clause> {
    let pairs: [FieldPair<'_>; 4] = [
        ("hosts", &o.hosts, "notHosts", &o.not_hosts, &|v| {
            Ok(Term::Host(non_empty(v)?))
        }),
        ("ports", &o.ports, "notPorts", &o.not_ports, &|v| {
            port(v).map(Term::DestinationPort)
        }),
        ("methods", &o.methods, "notMethods", &o.not_methods, &|v| {
            Ok(Term::Method(non_empty(v)?))
        }),
        ("paths", &o.paths, "notPaths", &o.not_paths, &|v| {
            path(v).map(Term::Path)
        }),
    ];
    let clauses: Vec<Clause> = pairs
        .iter()
        .filter_map(|(f, v, nf, nv, term)| clause(at, (f, v), (nf, nv), errors, *term))
        .collect();
    if clauses.is_empty() {
        errors.push(
            at,
            "sets no field; name what the rule is about, or remove the entry",
        );
    }
    clauses
}

fn compile_condition(c: &ConditionSpec, at: &str, errors: &mut Errors) -> Option<Clause> {
    let key = c.key.as_str();
    type BoxedTerm = Box<dyn Fn(&str) -> Result<Term, String>>;
    let term: BoxedTerm = match key {
        "source.ip" => Box::new(|v| ip(v).map(Term::SourceIp)),
        "remote.ip" => Box::new(|v| ip(v).map(Term::RemoteIp)),
        "destination.ip" => Box::new(|v| ip(v).map(Term::DestinationIp)),
        "destination.port" => Box::new(|v| port(v).map(Term::DestinationPort)),
        "source.namespace" => Box::new(|v| Ok(Term::Namespace(non_empty(v)?))),
        "source.principal" => Box::new(principal),
        "connection.sni" => Box::new(|v| Ok(Term::Sni(non_empty(v)?))),
        k if k.starts_with("request.headers[") => {
            let name = k
                .strip_prefix("request.headers[")
                .and_then(|n| n.strip_suffix(']'))
                .filter(|n| !n.is_empty() && n.bytes().all(is_token_byte));
            let Some(name) = name else {
                errors.push(
                    format!("{at}.key"),
                    format!("{k:?}: write a header as request.headers[<name>]"),
                );
                return None;
            };
            let name = name.to_ascii_lowercase();
            Box::new(move |v| {
                Ok(Term::Header {
                    name: name.clone(),
                    value: non_empty(v)?,
                })
            })
        }
        k if k.starts_with("request.auth.") => {
            errors.push(
                format!("{at}.key"),
                format!("{k:?} needs JWT authentication (RequestAuthentication), which weft does not support yet; remove the condition"),
            );
            return None;
        }
        k => {
            errors.push(
                format!("{at}.key"),
                format!(
                    "{k:?} is not a key weft evaluates; use one of {}",
                    SUPPORTED_KEYS.join(", ")
                ),
            );
            return None;
        }
    };
    if c.values.is_empty() && c.not_values.is_empty() {
        errors.push(at, "needs values or notValues");
        return None;
    }
    clause(
        at,
        ("values", &c.values),
        ("notValues", &c.not_values),
        errors,
        &*term,
    )
}

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn non_empty(v: &str) -> Result<StringMatch, String> {
    if v.is_empty() {
        return Err("an empty value matches nothing; remove it or write \"*\"".into());
    }
    Ok(StringMatch::parse(v))
}

fn principal(v: &str) -> Result<Term, String> {
    let v = v.strip_prefix("spiffe://").unwrap_or(v);
    Ok(Term::Principal(non_empty(v)?))
}

/// `<name>` (in the policy's namespace) or `<namespace>/<name>`, both exact, as Istio.
fn service_account(namespace: &str, v: &str) -> Result<Term, String> {
    let (ns, name) = v.split_once('/').unwrap_or((namespace, v));
    if ns.is_empty() || name.is_empty() || name.contains('/') || v.contains('*') {
        return Err(format!(
            "{v:?}: write a service account as <name> or <namespace>/<name>, without wildcards"
        ));
    }
    Ok(Term::ServiceAccount {
        namespace: ns.to_string(),
        name: name.to_string(),
    })
}

fn ip(v: &str) -> Result<ipnet::IpNet, String> {
    parse_ip_block(v).ok_or_else(|| {
        format!("{v:?} is not an IP address or CIDR block (e.g. 198.18.0.1 or 198.18.0.0/16)")
    })
}

fn port(v: &str) -> Result<u16, String> {
    v.parse::<u16>()
        .map_err(|_| format!("{v:?} is not a port number (0-65535)"))
}

/// A path value: a string form, or a template when it holds `{*}` or `{**}`.
fn path(v: &str) -> Result<PathMatch, String> {
    if !v.contains('{') && !v.contains('}') {
        return Ok(PathMatch::String(non_empty(v)?));
    }
    let Some(rest) = v.strip_prefix('/') else {
        return Err(format!("{v:?}: a path template starts with '/'"));
    };
    let parts: Vec<&str> = rest.split('/').collect();
    let mut segments = Vec::with_capacity(parts.len());
    for (i, part) in parts.iter().enumerate() {
        let segment = match *part {
            "{*}" => Segment::One,
            "{**}" if i + 1 == parts.len() => Segment::Rest,
            "{**}" => return Err(format!("{v:?}: {{**}} may only be the last segment")),
            p if p.contains('{') || p.contains('}') || p.contains('*') => {
                return Err(format!(
                    "{v:?}: in a template, each of {{*}} and {{**}} must be a whole segment, and '*' appears nowhere else"
                ));
            }
            p => Segment::Literal(p.to_string()),
        };
        segments.push(segment);
    }
    Ok(PathMatch::Template(segments))
}
