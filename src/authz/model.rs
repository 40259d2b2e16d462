//! The compiled form of authorization policies, as they travel in a proxy's snapshot: every
//! field of Istio's `Source`, `Operation` and `Condition` becomes a [`Clause`] over one
//! attribute (any of its values, none of its not-values), so the evaluator knows one shape.
//! Nothing here parses user input: [`super::istio`] does, and refuses what it cannot express.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Action {
    Allow,
    Deny,
    /// Marks a matching request for audit; never changes the verdict.
    Audit,
}

/// Where a policy comes from: all kinds are evaluated together, by the same rules.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum PolicyKind {
    /// Istio's `AuthorizationPolicy`.
    #[default]
    AuthorizationPolicy,
    /// An SMI `TrafficTarget` (OSM's restrictive mode).
    TrafficTarget,
    /// OSM's restrictive mode itself (`traffic.enablePermissiveTrafficPolicyMode: false`): an
    /// ALLOW policy that matches nothing, so what nothing allows is denied.
    RestrictiveMode,
}

/// One policy that selects this proxy's workload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// `namespace/name` (for restrictive mode, the revision): how logs, metrics and `weft
    /// authz explain` name the policy.
    pub name: String,
    #[serde(default, skip_serializing_if = "is_default")]
    pub kind: PolicyKind,
    pub action: Action,
    /// `istio.io/dry-run: "true"`: evaluated and reported, never enforced.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
    /// A policy matches when any rule matches. None: an ALLOW policy with no rules allows
    /// nothing (Istio's `spec: {}` denies all); a DENY policy with none denies nothing.
    pub rules: Vec<Rule>,
}

/// A rule matches when a source, an operation and every condition match.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    /// Any of these (each a conjunction of clauses) must match; empty: any source.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<Vec<Clause>>,
    /// Any of these must match; empty: any operation.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<Vec<Clause>>,
    /// Every one must match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub when: Vec<Clause>,
}

/// One attribute's constraint: at least one of `any_of` matches (when it is not empty) and none
/// of `none_of` does. All terms of a clause name the same attribute.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Clause {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub any_of: Vec<Term>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub none_of: Vec<Term>,
}

/// A test of one attribute of a request against one value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Term {
    /// The peer's SPIFFE identity without `spiffe://`, e.g. `cluster.local/ns/a/sa/b`.
    Principal(StringMatch),
    /// The namespace in the peer's identity.
    Namespace(StringMatch),
    /// The namespace and service account in the peer's identity, both exact.
    ServiceAccount {
        namespace: String,
        name: String,
    },
    /// The address of the connection's peer.
    SourceIp(IpNet),
    /// The original client address; a sidecar trusts no forwarding header, so the peer's.
    RemoteIp(IpNet),
    DestinationIp(IpNet),
    DestinationPort(u16),
    /// The server name the client asked for in TLS.
    Sni(StringMatch),
    // HTTP only: on a TCP connection these cannot be known (see `Term::http_only`).
    /// The `Host`/`:authority`, case-insensitive; an exact value also matches it with a port.
    Host(StringMatch),
    Method(StringMatch),
    /// The normalized path, without its query.
    Path(PathMatch),
    /// A request header by lower-case name.
    Header {
        name: String,
        value: StringMatch,
    },
    /// The normalized path against a user's regex (SMI's `pathRegex`).
    PathRegex(Pattern),
    /// A request header by lower-case name against a user's regex (SMI's `headers`).
    HeaderRegex {
        name: String,
        pattern: Pattern,
    },
}

impl Term {
    /// Whether the term needs an HTTP request. Istio's rule for such a term on a TCP
    /// connection: an ALLOW rule holding one matches nothing; in a DENY or AUDIT rule the
    /// term is ignored (the rule matches more, the safe direction).
    pub fn http_only(&self) -> bool {
        matches!(
            self,
            Term::Host(_)
                | Term::Method(_)
                | Term::Path(_)
                | Term::Header { .. }
                | Term::PathRegex(_)
                | Term::HeaderRegex { .. }
        )
    }
}

impl Clause {
    pub fn http_only(&self) -> bool {
        self.any_of.iter().chain(&self.none_of).any(Term::http_only)
    }
}

impl Rule {
    pub fn http_only(&self) -> bool {
        self.from
            .iter()
            .chain(&self.to)
            .flatten()
            .chain(&self.when)
            .any(Clause::http_only)
    }
}

/// Istio's string forms: `abc` exact, `abc*` prefix, `*abc` suffix, `*` any present value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum StringMatch {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Present,
}

impl StringMatch {
    pub fn parse(value: &str) -> Self {
        if value == "*" {
            StringMatch::Present
        } else if let Some(suffix) = value.strip_prefix('*') {
            StringMatch::Suffix(suffix.to_string())
        } else if let Some(prefix) = value.strip_suffix('*') {
            StringMatch::Prefix(prefix.to_string())
        } else {
            StringMatch::Exact(value.to_string())
        }
    }

    pub fn matches(&self, value: &str) -> bool {
        match self {
            // Identities and paths that differ mostly differ at their end (`…/sa/a` vs
            // `…/sa/b`): the last byte settles most misses without a full comparison.
            StringMatch::Exact(s) => {
                value.len() == s.len()
                    && value.as_bytes().last() == s.as_bytes().last()
                    && value == s
            }
            StringMatch::Prefix(s) => value.starts_with(s.as_str()),
            StringMatch::Suffix(s) => value.ends_with(s.as_str()),
            StringMatch::Present => true,
        }
    }

    /// Host matching: ASCII case-insensitive, and an exact host also matches `host:port`.
    pub fn matches_host(&self, host: &str) -> bool {
        let eq = |a: &str, b: &str| a.eq_ignore_ascii_case(b);
        match self {
            StringMatch::Exact(s) => {
                eq(host, s)
                    || host.len() > s.len()
                        && host.is_char_boundary(s.len())
                        && eq(&host[..s.len()], s)
                        && host[s.len()..]
                            .strip_prefix(':')
                            .is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
            }
            StringMatch::Prefix(s) => {
                host.len() >= s.len() && host.is_char_boundary(s.len()) && eq(&host[..s.len()], s)
            }
            StringMatch::Suffix(s) => {
                let at = host.len().wrapping_sub(s.len());
                host.len() >= s.len() && host.is_char_boundary(at) && eq(&host[at..], s)
            }
            StringMatch::Present => true,
        }
    }
}

/// A path rule: a string form, or a template with `{*}` (one segment) and a final `{**}`
/// (the rest of the path, possibly empty), as Istio's path templates.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum PathMatch {
    String(StringMatch),
    Template(Vec<Segment>),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Segment {
    Literal(String),
    /// `{*}`: exactly one non-empty segment.
    One,
    /// `{**}`: everything after the previous `/`, possibly empty; only last.
    Rest,
}

impl PathMatch {
    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::String(m) => m.matches(path),
            PathMatch::Template(segments) => {
                let Some(mut rest) = path.strip_prefix('/') else {
                    return false;
                };
                for (i, segment) in segments.iter().enumerate() {
                    if *segment == Segment::Rest {
                        return true;
                    }
                    let (head, tail) = match rest.split_once('/') {
                        Some((h, t)) => (h, Some(t)),
                        None => (rest, None),
                    };
                    let ok = match segment {
                        Segment::Literal(l) => head == l,
                        Segment::One => !head.is_empty(),
                        Segment::Rest => true,
                    };
                    if !ok {
                        return false;
                    }
                    match tail {
                        Some(t) => rest = t,
                        // The path ends here: it matches when the template does too.
                        None => return i + 1 == segments.len(),
                    }
                }
                false
            }
        }
    }
}

/// The parts of a SPIFFE identity path that policies name: `<td>/ns/<ns>/sa/<sa>`.
pub struct Identity<'a> {
    pub namespace: &'a str,
    pub service_account: &'a str,
}

impl<'a> Identity<'a> {
    /// Reads `ns` and `sa` as Istio's matchers do (`.*/ns/<ns>/…/sa/<sa>(/…)?`).
    pub fn parse(principal: &'a str) -> Option<Self> {
        let segment = |key: &str| {
            let at = principal.find(key)? + key.len();
            let rest = &principal[at..];
            Some(rest.split('/').next().unwrap_or(rest))
        };
        Some(Identity {
            namespace: segment("/ns/")?,
            service_account: segment("/sa/")?,
        })
    }
}

/// `198.18.2.3` (one address) or `198.18.0.0/16`, as Istio's ipBlocks take them.
pub fn parse_ip_block(value: &str) -> Option<IpNet> {
    if let Ok(ip) = value.parse::<IpAddr>() {
        return Some(IpNet::from(ip));
    }
    value.parse::<IpNet>().ok().map(|n| n.trunc())
}

/// A user's regular expression, matched against a whole value (anchored at both ends) with the
/// `regex` crate (linear time, no backtracking) under a compiled-size limit, so a pattern can
/// neither run away per request nor blow up memory. It travels as its source and is compiled
/// again, under the same limits, wherever it is read.
#[derive(Clone, Debug)]
pub struct Pattern {
    source: String,
    regex: regex::Regex,
}

/// Compiled size a user pattern may take (the `regex` crate's default is 10 MiB).
pub const PATTERN_SIZE_LIMIT: usize = 256 * 1024;
/// Longest pattern source accepted.
pub const PATTERN_MAX_LEN: usize = 4096;

impl Pattern {
    pub fn new(source: &str) -> Result<Self, String> {
        if source.len() > PATTERN_MAX_LEN {
            return Err(format!(
                "the pattern is {} bytes long; at most {PATTERN_MAX_LEN} are accepted",
                source.len()
            ));
        }
        let regex = regex::RegexBuilder::new(&format!("^(?:{source})$"))
            .size_limit(PATTERN_SIZE_LIMIT)
            .dfa_size_limit(PATTERN_SIZE_LIMIT)
            .nest_limit(64)
            .build()
            .map_err(|e| match e {
                regex::Error::CompiledTooBig(_) => format!(
                    "{source:?} compiles to more than {} KiB; simplify the pattern",
                    PATTERN_SIZE_LIMIT / 1024
                ),
                e => format!("{source:?} is not a valid regular expression: {e}"),
            })?;
        Ok(Pattern {
            source: source.to_string(),
            regex,
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn is_match(&self, value: &str) -> bool {
        self.regex.is_match(value)
    }
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Eq for Pattern {}

impl Serialize for Pattern {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.source)
    }
}

impl<'de> Deserialize<'de> for Pattern {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let source = String::deserialize(d)?;
        Pattern::new(&source).map_err(serde::de::Error::custom)
    }
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}
