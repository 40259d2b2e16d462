//! The evaluator: Istio's order (DENY first, then ALLOW; no ALLOW policy allows; ALLOW
//! policies that all miss deny), AUDIT marks without deciding, dry-run policies decide a
//! shadow verdict of their own. Pure and allocation-free per request. A [`Prefilter`] built
//! once per policy set lets the evaluator skip, without reading them, the rules whose source
//! names peers other than the request's (same decisions; the rules are scattered over the
//! heap, and reading a hundred of them per request costs the proxy cache misses).

use std::net::IpAddr;

use super::model::{Action, Clause, Identity, Policy, Rule, StringMatch, Term};

/// What the evaluator knows of a request or, for TCP, of a connection.
#[derive(Clone, Copy)]
pub struct Request<'a> {
    /// The peer's SPIFFE identity without `spiffe://`; None for a plaintext peer, which then
    /// matches no principal, namespace or service-account value (and every not-value).
    pub principal: Option<&'a str>,
    pub source_ip: IpAddr,
    /// The original client; a sidecar trusts no forwarding header, so it is the peer.
    pub remote_ip: IpAddr,
    pub destination_ip: IpAddr,
    pub destination_port: u16,
    pub sni: Option<&'a str>,
    /// None on a TCP connection.
    pub http: Option<Http<'a>>,
}

#[derive(Clone, Copy)]
pub struct Http<'a> {
    pub method: &'a str,
    /// `:authority` or `Host`, as sent.
    pub host: &'a str,
    /// The normalized path ([`super::path::normalize`]), without the query.
    pub path: &'a str,
    pub headers: &'a dyn Headers,
}

/// Request headers by lower-case name; several values of one header are read joined by `,`.
pub trait Headers {
    fn get(&self, name: &str) -> Option<&str>;
}

/// A list of name/value pairs (the CLI's `--header` flags, tests): the first value of a name
/// (the proxy's header view joins repeated ones).
impl<K: AsRef<str>, V: AsRef<str>> Headers for Vec<(K, V)> {
    fn get(&self, name: &str) -> Option<&str> {
        self.iter()
            .find(|(k, _)| k.as_ref().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_ref())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    Deny,
}

/// Which rule of which policy (indices into the evaluated slice).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RuleRef {
    pub policy: usize,
    pub rule: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// A DENY policy's rule matched.
    Denied(RuleRef),
    /// An ALLOW policy's rule matched.
    Allowed(RuleRef),
    /// No ALLOW policy selects the workload.
    NoAllowPolicy,
    /// ALLOW policies exist and none matched.
    NoAllowMatched,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DryRun {
    pub verdict: Verdict,
    pub reason: Reason,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    pub verdict: Verdict,
    pub reason: Reason,
    /// The first AUDIT rule that matched, if any.
    pub audit: Option<RuleRef>,
    /// What the dry-run policies alone would decide; None when there are none.
    pub dry_run: Option<DryRun>,
}

/// Decides a request against the policies that select the workload.
pub fn evaluate(policies: &[Policy], request: &Request<'_>) -> Decision {
    evaluate_with(None, policies, request)
}

/// [`evaluate`] with the [`Prefilter`] made by [`Prefilter::new`] from this very table: the
/// same decision, sooner. A prefilter made from any other table (another config's, a copy,
/// one of the same shape) is never used: the evaluation then reads every rule, so the
/// decision is still right, only slower (see [`Prefilter::built_from`]).
pub fn evaluate_prefiltered(
    prefilter: &Prefilter,
    policies: &[Policy],
    request: &Request<'_>,
) -> Decision {
    if !prefilter.built_from(policies) {
        return evaluate(policies, request);
    }
    let seen = Seen {
        prefilter,
        principal: request.principal.map(hash),
    };
    evaluate_with(Some(&seen), policies, request)
}

fn evaluate_with(seen: Option<&Seen<'_>>, policies: &[Policy], request: &Request<'_>) -> Decision {
    let (verdict, reason) = decide(seen, policies, request, false);
    let audit = first_match(seen, policies, request, |p| {
        p.action == Action::Audit && !p.dry_run
    });
    let dry_run = policies.iter().any(|p| p.dry_run).then(|| {
        let (verdict, reason) = decide(seen, policies, request, true);
        DryRun { verdict, reason }
    });
    Decision {
        verdict,
        reason,
        audit,
        dry_run,
    }
}

/// Per rule, the peers it can match at all, when its source says so: a rule each of whose
/// `from` alternatives requires the principal to be one of a list of exact identities
/// (`source.principals` without wildcards) matches no request from another peer, whatever
/// else it says. Kept as hashes in one array, so ruling a rule out reads no rule.
///
/// A prefilter names rules by their place in the table it was made from, so it is bound to
/// that table: it records where the table and each policy's rules live and how many there
/// are, and [`evaluate_prefiltered`] uses it only for that same table. The table must stay
/// alive and unchanged as long as the prefilter is used (the proxy makes it inside the config
/// that holds the table, `SnapshotIndex::inbound_prefilter`), so no other table can be at
/// those addresses meanwhile.
#[derive(Debug, Default)]
pub struct Prefilter {
    /// Per policy, per rule: the range of `hashes` holding the principals that rule can
    /// match, or None (the rule is evaluated in full).
    rules: Vec<Vec<Option<(u32, u32)>>>,
    hashes: Vec<u64>,
    /// The table it was made from: its address, and per policy the address and length of
    /// its rules (compared, never dereferenced).
    table: usize,
    policy_rules: Vec<(usize, usize)>,
}

impl Prefilter {
    pub fn new(policies: &[Policy]) -> Prefilter {
        let mut hashes = Vec::new();
        let rules = policies
            .iter()
            .map(|p| {
                p.rules
                    .iter()
                    .map(|rule| {
                        let principals = required_principals(rule)?;
                        let start = u32::try_from(hashes.len()).ok()?;
                        let len = u32::try_from(principals.len()).ok()?;
                        hashes.extend(principals.iter().map(|p| hash(p)));
                        Some((start, len))
                    })
                    .collect()
            })
            .collect();
        Prefilter {
            rules,
            hashes,
            table: policies.as_ptr() as usize,
            policy_rules: policies
                .iter()
                .map(|p| (p.rules.as_ptr() as usize, p.rules.len()))
                .collect(),
        }
    }

    /// Whether this prefilter was made from `policies` itself (not a copy, not another table
    /// of the same shape): the same slice, and each policy's rules the same vector with the
    /// same length. Reads the policies' headers only, which the evaluator reads anyway.
    pub fn built_from(&self, policies: &[Policy]) -> bool {
        self.table == policies.as_ptr() as usize
            && self.policy_rules.len() == policies.len()
            && self
                .policy_rules
                .iter()
                .zip(policies)
                .all(|(&(at, len), p)| at == p.rules.as_ptr() as usize && len == p.rules.len())
    }

    /// Whether rule `rule` of policy `policy` may match a request from `principal` (its
    /// hash): false only when the rule names other peers only.
    fn may_match(&self, policy: usize, rule: usize, principal: Option<u64>) -> bool {
        let Some(Some((start, len))) = self.rules.get(policy).and_then(|r| r.get(rule)) else {
            return true;
        };
        let Some(principal) = principal else {
            // No identity: no principal term matches.
            return false;
        };
        let (start, len) = (*start as usize, *len as usize);
        self.hashes
            .get(start..start + len)
            .is_none_or(|set| set.contains(&principal))
    }
}

/// The exact principals one of which a request must present for `rule` to match, if every
/// `from` alternative holds a clause that allows only such principals; None otherwise.
fn required_principals(rule: &Rule) -> Option<Vec<&str>> {
    if rule.from.is_empty() {
        return None;
    }
    let mut all = Vec::new();
    for alternative in &rule.from {
        // A clause matches only if one of its any_of terms does: with only exact principals
        // there, the request's principal must be one of them.
        let clause = alternative.iter().find(|c| {
            !c.any_of.is_empty()
                && c.any_of
                    .iter()
                    .all(|t| matches!(t, Term::Principal(StringMatch::Exact(_))))
        })?;
        all.extend(clause.any_of.iter().filter_map(|t| match t {
            Term::Principal(StringMatch::Exact(p)) => Some(p.as_str()),
            _ => None,
        }));
    }
    Some(all)
}

/// FNV-1a: short keys, computed once per request and once per rule principal per config.
fn hash(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// One evaluation's use of a prefilter: the request's principal hashed once.
struct Seen<'a> {
    prefilter: &'a Prefilter,
    principal: Option<u64>,
}

fn decide(
    seen: Option<&Seen<'_>>,
    policies: &[Policy],
    request: &Request<'_>,
    dry_run: bool,
) -> (Verdict, Reason) {
    let of = |action: Action| move |p: &Policy| p.action == action && p.dry_run == dry_run;
    if let Some(hit) = first_match(seen, policies, request, of(Action::Deny)) {
        return (Verdict::Deny, Reason::Denied(hit));
    }
    if !policies.iter().any(of(Action::Allow)) {
        return (Verdict::Allow, Reason::NoAllowPolicy);
    }
    match first_match(seen, policies, request, of(Action::Allow)) {
        Some(hit) => (Verdict::Allow, Reason::Allowed(hit)),
        None => (Verdict::Deny, Reason::NoAllowMatched),
    }
}

fn first_match(
    seen: Option<&Seen<'_>>,
    policies: &[Policy],
    request: &Request<'_>,
    which: impl Fn(&Policy) -> bool,
) -> Option<RuleRef> {
    policies
        .iter()
        .enumerate()
        .filter(|(_, p)| which(p))
        .find_map(|(policy, p)| {
            p.rules
                .iter()
                .enumerate()
                .position(|(rule, r)| {
                    seen.is_none_or(|s| s.prefilter.may_match(policy, rule, s.principal))
                        && rule_matches(r, p.action, request)
                })
                .map(|rule| RuleRef { policy, rule })
        })
}

fn rule_matches(rule: &Rule, action: Action, request: &Request<'_>) -> bool {
    if request.http.is_none() && action == Action::Allow && rule.http_only() {
        return false;
    }
    let all = |clauses: &[Clause]| clauses.iter().all(|c| clause_matches(c, request));
    (rule.from.is_empty() || rule.from.iter().any(|s| all(s)))
        && (rule.to.is_empty() || rule.to.iter().any(|o| all(o)))
        && all(&rule.when)
}

fn clause_matches(clause: &Clause, request: &Request<'_>) -> bool {
    if request.http.is_none() && clause.http_only() {
        // Reached only for DENY and AUDIT rules: the clause is ignored (see `Term::http_only`).
        return true;
    }
    (clause.any_of.is_empty() || clause.any_of.iter().any(|t| term_matches(t, request)))
        && !clause.none_of.iter().any(|t| term_matches(t, request))
}

fn term_matches(term: &Term, r: &Request<'_>) -> bool {
    let identity = || r.principal.and_then(Identity::parse);
    match term {
        Term::Principal(m) => r.principal.is_some_and(|p| m.matches(p)),
        Term::Namespace(m) => identity().is_some_and(|id| m.matches(id.namespace)),
        Term::ServiceAccount { namespace, name } => {
            identity().is_some_and(|id| id.namespace == namespace && id.service_account == name)
        }
        Term::SourceIp(net) => net.contains(&r.source_ip),
        Term::RemoteIp(net) => net.contains(&r.remote_ip),
        Term::DestinationIp(net) => net.contains(&r.destination_ip),
        Term::DestinationPort(port) => r.destination_port == *port,
        Term::Sni(m) => r.sni.is_some_and(|s| m.matches(s)),
        Term::Host(m) => r.http.is_some_and(|h| m.matches_host(h.host)),
        Term::Method(m) => r.http.is_some_and(|h| m.matches(h.method)),
        Term::Path(m) => r.http.is_some_and(|h| m.matches(h.path)),
        Term::Header { name, value } => r
            .http
            .and_then(|h| h.headers.get(name))
            .is_some_and(|v| value.matches(v)),
        Term::PathRegex(p) => r.http.is_some_and(|h| p.is_match(h.path)),
        Term::HeaderRegex { name, pattern } => r
            .http
            .and_then(|h| h.headers.get(name))
            .is_some_and(|v| pattern.is_match(v)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authz::model::PolicyKind;

    fn allow_only(principals: &[&str]) -> Vec<Policy> {
        vec![Policy {
            name: "pay/allow".into(),
            kind: PolicyKind::AuthorizationPolicy,
            action: Action::Allow,
            dry_run: false,
            rules: principals
                .iter()
                .map(|p| Rule {
                    from: vec![vec![Clause {
                        any_of: vec![Term::Principal(StringMatch::Exact(p.to_string()))],
                        none_of: Vec::new(),
                    }]],
                    to: Vec::new(),
                    when: Vec::new(),
                })
                .collect(),
        }]
    }

    fn from(principal: &str) -> Request<'_> {
        Request {
            principal: Some(principal),
            source_ip: [198, 18, 0, 4].into(),
            remote_ip: [198, 18, 0, 4].into(),
            destination_ip: [198, 18, 0, 5].into(),
            destination_port: 8080,
            sni: None,
            http: None,
        }
    }

    #[test]
    fn a_prefilter_made_from_another_table_is_never_used() {
        let a = allow_only(&["td/ns/a/sa/a"]);
        // Same shape (one policy, one rule), another principal: a prefilter of `a` would
        // rule b's only rule out for `td/ns/b/sa/b` and deny what `b` allows.
        let b = allow_only(&["td/ns/b/sa/b"]);
        let of_a = Prefilter::new(&a);
        assert!(of_a.built_from(&a));
        assert!(!of_a.built_from(&b));
        let request = from("td/ns/b/sa/b");
        assert_eq!(evaluate(&b, &request).verdict, Verdict::Allow);
        assert_eq!(
            evaluate_prefiltered(&of_a, &b, &request).verdict,
            Verdict::Allow,
            "the prefilter of another table must not decide"
        );
        // A copy of `a` is another table too: the prefilter is not used, the answer is right.
        let copy = a.clone();
        assert!(!of_a.built_from(&copy));
        assert_eq!(
            evaluate_prefiltered(&of_a, &copy, &from("td/ns/a/sa/a")).verdict,
            Verdict::Allow
        );
        // A sub-slice of its table (fewer policies) is not its table.
        let two = [a[0].clone(), b[0].clone()];
        let of_two = Prefilter::new(&two);
        assert!(of_two.built_from(&two));
        assert!(!of_two.built_from(&two[..1]));
        // Its own table: used, and the same decisions as without it.
        for who in ["td/ns/a/sa/a", "td/ns/b/sa/b", "td/ns/c/sa/c"] {
            assert_eq!(
                evaluate_prefiltered(&of_two, &two, &from(who)),
                evaluate(&two, &from(who)),
                "{who}"
            );
        }
    }
}
