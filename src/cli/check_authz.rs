//! `weft check`'s authorization warnings: Service ports that ALLOW policies (or OSM's
//! restrictive mode) leave reachable by nothing, and HTTP-only rules on ports not declared HTTP.
//! Pure functions over the pods of a built [`MeshIndex`], so they judge exactly the compiled
//! policies each proxy gets.

use std::collections::BTreeMap;

use super::check::Verdict;
use crate::authz::model::{Action, Clause, Policy, PolicyKind, Rule, Term};
use crate::discovery::MeshIndex;
use crate::discovery::model::MeshedPod;
use crate::snapshot::Protocol;

pub const UNREACHABLE: &str = "Service ports some ALLOW rule can reach";
pub const HTTP_ON_TCP: &str = "HTTP rules only on HTTP ports";
/// Lines per check before the rest is summed up in one line (a mesh-wide policy can make
/// the same finding on every workload).
const MAX_LINES: usize = 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// ALLOW policies select the pod and no ALLOW rule can apply to the port.
    Unreachable,
    /// An ALLOW rule with HTTP-only fields applies to a port not declared HTTP.
    AllowHttpOnTcp,
    /// A DENY rule with HTTP-only fields applies to a port not declared HTTP.
    DenyHttpOnTcp,
}

/// One warning: the pods of one workload with the same finding on the same port are one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    pub kind: Kind,
    pub namespace: String,
    pub workload: String,
    /// Sorted pod names.
    pub pods: Vec<String>,
    pub port: u16,
    /// What is wrong, after `<ns>/<pod> port N: `.
    pub detail: String,
    pub hint: String,
}

/// Whether a rule's port constraints (`ports`/`notPorts` of an operation, `destination.port`
/// of a condition) let it apply to a request on `port`. Nothing else is judged: a rule that
/// passes *could* apply, so a finding built on "no rule applies" is never a false alarm.
pub fn applies_to_port(rule: &Rule, port: u16) -> bool {
    let open = |clauses: &[Clause]| !clauses.iter().any(|c| excludes_port(c, port));
    (rule.to.is_empty() || rule.to.iter().any(|operation| open(operation))) && open(&rule.when)
}

/// A clause excludes a port when it lists ports without it, or lists it as a not-value. All
/// terms of a clause name one attribute, so a clause of ports holds only port terms.
fn excludes_port(clause: &Clause, port: u16) -> bool {
    let this = Term::DestinationPort(port);
    let is_port = |t: &Term| matches!(t, Term::DestinationPort(_));
    (!clause.any_of.is_empty()
        && clause.any_of.iter().all(is_port)
        && !clause.any_of.contains(&this))
        || clause.none_of.contains(&this)
}

/// The HTTP-only fields a rule uses, by the names users write.
fn http_fields(rule: &Rule) -> Vec<&'static str> {
    let mut names: Vec<&'static str> = rule
        .from
        .iter()
        .chain(&rule.to)
        .flatten()
        .chain(&rule.when)
        .flat_map(|c| c.any_of.iter().chain(&c.none_of))
        .filter_map(|t| match t {
            Term::Host(_) => Some("hosts"),
            Term::Method(_) => Some("methods"),
            Term::Path(_) => Some("paths"),
            Term::Header { .. } => Some("request.headers"),
            Term::PathRegex(_) => Some("pathRegex"),
            Term::HeaderRegex { .. } => Some("headers"),
            _ => None,
        })
        .collect();
    names.sort_unstable();
    names.dedup();
    names
}

/// How a policy is named to a person.
fn policy_text(p: &Policy) -> String {
    let action = match p.action {
        Action::Allow => "ALLOW",
        Action::Deny => "DENY",
        Action::Audit => "AUDIT",
    };
    let dry = if p.dry_run { " (dry-run)" } else { "" };
    match p.kind {
        PolicyKind::AuthorizationPolicy => format!("{action} policy {}{dry}", p.name),
        PolicyKind::TrafficTarget => format!("TrafficTarget {}", p.name),
        PolicyKind::RestrictiveMode => format!("OSM restrictive mode of {}", p.name),
    }
}

const DECLARE_HTTP: &str = "declare the Service port HTTP (name it `http`, `http-<suffix>`, \
                            `http2` or `grpc`, or set `appProtocol: http`)";

/// Every finding of both checks, for the given meshed pods, in a stable order.
pub fn findings<'a>(pods: impl IntoIterator<Item = &'a MeshedPod>) -> Vec<Finding> {
    // (kind, namespace, workload, port, detail) -> (hint, pods)
    type Key = (Kind, String, String, u16, String);
    let mut grouped: BTreeMap<Key, (String, Vec<String>)> = BTreeMap::new();
    for pod in pods {
        for (kind, port, detail, hint) in pod_findings(pod) {
            let key = (
                kind,
                pod.namespace.clone(),
                pod.workload.name.clone(),
                port,
                detail,
            );
            grouped
                .entry(key)
                .or_insert_with(|| (hint, Vec::new()))
                .1
                .push(pod.name.clone());
        }
    }
    grouped
        .into_iter()
        .map(
            |((kind, namespace, workload, port, detail), (hint, mut pods))| {
                pods.sort();
                Finding {
                    kind,
                    namespace,
                    workload,
                    pods,
                    port,
                    detail,
                    hint,
                }
            },
        )
        .collect()
}

/// One pod's findings: (kind, port, detail, hint).
fn pod_findings(pod: &MeshedPod) -> Vec<(Kind, u16, String, String)> {
    let mut out = Vec::new();
    // Only Service target ports: that is where callers come from, and where the fixes apply.
    let ports: Vec<u16> = pod.services.keys().copied().collect();

    // (a) Dry-run ALLOW policies never make "ALLOW policies exist" true, so they are left out.
    let allows: Vec<&Policy> = pod
        .authz
        .iter()
        .filter(|p| p.action == Action::Allow && !p.dry_run)
        .collect();
    if !allows.is_empty() {
        let names: Vec<String> = allows.iter().map(|p| policy_text(p)).collect();
        let only_restrictive = allows
            .iter()
            .all(|p| p.kind != PolicyKind::AuthorizationPolicy);
        for &port in &ports {
            if allows
                .iter()
                .flat_map(|p| &p.rules)
                .any(|r| applies_to_port(r, port))
            {
                continue;
            }
            let detail = format!(
                "ALLOW policies select it ({}) and none allows anything on this port, so all \
                 its traffic is denied (Istio's rule: once an ALLOW policy selects a workload, \
                 what no ALLOW rule allows is denied)",
                names.join(", ")
            );
            let hint = if only_restrictive {
                format!(
                    "add a TrafficTarget whose destination is service account {} (with a \
                     TCPRoute or HTTPRouteGroup covering port {port}), or turn restrictive mode \
                     off; `weft authz explain {} -n {} --from <caller> --port {port}` shows the \
                     verdict",
                    pod.service_account, pod.name, pod.namespace
                )
            } else {
                format!(
                    "add a rule that allows this port (a rule without `to`, or with {port} in \
                     its `ports`), or remove the policy; `weft authz explain {} -n {} --from \
                     <caller> --port {port}` shows the verdict",
                    pod.name, pod.namespace
                )
            };
            out.push((Kind::Unreachable, port, detail, hint));
        }
    }

    // (b) A port the proxy does not know as HTTP is sniffed: what it does not detect as HTTP is
    // a TCP connection, on which HTTP-only fields cannot be known.
    for &port in &ports {
        if pod.protocols.get(&port) == Some(&Protocol::Http) {
            continue;
        }
        for p in &pod.authz {
            for (i, rule) in p.rules.iter().enumerate() {
                if !rule.http_only() || !applies_to_port(rule, port) {
                    continue;
                }
                let fields = http_fields(rule).join(", ");
                let would = if p.dry_run { "would " } else { "" };
                let not_declared = format!(
                    "rule {i} of {} uses HTTP fields ({fields}) and port {port} is not declared \
                     HTTP: a connection weft does not detect as HTTP from its first bytes (TLS \
                     the app terminates, a binary or server-first protocol) is TCP, where",
                    policy_text(p)
                );
                let (kind, detail, fix) = match p.action {
                    Action::Allow => (
                        Kind::AllowHttpOnTcp,
                        format!(
                            "{not_declared} this ALLOW rule {would}match nothing (Istio's rule)"
                        ),
                        match p.kind {
                            PolicyKind::AuthorizationPolicy => {
                                "or add `ports` to the rule naming only the HTTP ports"
                            }
                            _ => "or allow this port with a TCPRoute",
                        },
                    ),
                    Action::Deny => (
                        Kind::DenyHttpOnTcp,
                        format!(
                            "{not_declared} those fields are ignored (Istio's safe direction), so \
                             this DENY rule {would}deny every such connection its other \
                             conditions match"
                        ),
                        "or add `ports` to the rule naming only the HTTP ports",
                    ),
                    // AUDIT never changes a verdict.
                    Action::Audit => continue,
                };
                out.push((kind, port, detail, format!("{DECLARE_HTTP}, {fix}")));
            }
        }
    }
    out
}

/// The `weft check` lines of both checks: a pass line when a check finds nothing.
pub fn verdicts(findings: &[Finding]) -> Vec<Verdict> {
    let mut out = Vec::new();
    for (check, kinds, pass) in [
        (
            UNREACHABLE,
            &[Kind::Unreachable][..],
            "no Service port of a pod that ALLOW policies select is left without a rule",
        ),
        (
            HTTP_ON_TCP,
            &[Kind::AllowHttpOnTcp, Kind::DenyHttpOnTcp][..],
            "no rule with HTTP fields applies to a Service port not declared HTTP",
        ),
    ] {
        let of: Vec<&Finding> = findings
            .iter()
            .filter(|f| kinds.contains(&f.kind))
            .collect();
        if of.is_empty() {
            out.push(Verdict::pass(check, pass));
            continue;
        }
        for f in of.iter().take(MAX_LINES) {
            out.push(Verdict::warn(check, line(f), f.hint.clone()));
        }
        if of.len() > MAX_LINES {
            out.push(Verdict::warn(
                check,
                format!("{} more like these", of.len() - MAX_LINES),
                "fix the ones above and run weft check again",
            ));
        }
    }
    out
}

/// `<ns>/<pod> port N: <detail>`, naming how many more pods of the workload share it.
fn line(f: &Finding) -> String {
    let first = f.pods.first().map(String::as_str).unwrap_or_default();
    let more = match f.pods.len() {
        0 | 1 => String::new(),
        n => format!(" (and {} more pod(s) of workload {})", n - 1, f.workload),
    };
    format!(
        "{}/{first}{more} port {}: {}",
        f.namespace, f.port, f.detail
    )
}

/// Both checks over a built index.
pub fn check(index: &MeshIndex) -> Vec<Verdict> {
    verdicts(&findings(index.meshed_pods()))
}

#[cfg(test)]
mod tests {
    use super::super::check::Status;
    use super::*;
    use crate::authz::istio::{AuthorizationPolicySpec, compile};
    use crate::discovery::policy::Effective;
    use crate::snapshot::{MtlsMode, WorkloadMeta};

    fn policy(name: &str, yaml: &str) -> Policy {
        let spec: AuthorizationPolicySpec = serde_yaml::from_str(yaml).unwrap();
        compile("pay", name, &spec, &Default::default()).unwrap()
    }

    /// A pod of workload `api` behind a Service on 8080 (HTTP when `http`) and 5432 (not).
    fn pod(name: &str, http: bool, authz: Vec<Policy>) -> MeshedPod {
        let host = |s: &str| vec![format!("{s}.pay.svc.cluster.local")];
        MeshedPod {
            namespace: "pay".into(),
            name: name.into(),
            service_account: "api".into(),
            revision: "stable".into(),
            identity: "spiffe://cluster.local/ns/pay/sa/api".into(),
            workload: WorkloadMeta {
                name: "api".into(),
                namespace: "pay".into(),
                ..Default::default()
            },
            modes: Effective {
                default_mode: MtlsMode::Permissive,
                source: String::new(),
                ports: BTreeMap::new(),
            },
            ports: vec![8080, 5432, 9090],
            services: [(8080, host("api")), (5432, host("db"))].into(),
            protocols: if http {
                [(8080, Protocol::Http)].into()
            } else {
                BTreeMap::new()
            },
            authz,
            gateway: None,
        }
    }

    /// (kind, port) of every finding.
    type Found = Vec<(Kind, u16)>;

    fn summary(pod: &MeshedPod) -> Found {
        findings([pod]).iter().map(|f| (f.kind, f.port)).collect()
    }

    const ALLOW_ALL: &str = "rules: [{}]";
    const ALLOW_FROM: &str =
        "rules: [{from: [{source: {principals: [cluster.local/ns/shop/sa/web]}}]}]";
    const ALLOW_8080: &str = "rules: [{to: [{operation: {ports: ['8080']}}]}]";
    const ALLOW_NOT_5432: &str = "rules: [{to: [{operation: {notPorts: ['5432']}}]}]";
    const ALLOW_WHEN_8080: &str = "rules: [{when: [{key: destination.port, values: ['8080']}]}]";
    const ALLOW_POST: &str =
        "rules: [{to: [{operation: {methods: [POST], paths: [/v1/charges]}}]}]";
    const ALLOW_POST_8080: &str =
        "rules: [{to: [{operation: {ports: ['8080'], methods: [POST]}}]}]";
    const DENY_ADMIN: &str = "action: DENY\nrules: [{to: [{operation: {paths: ['/admin*']}}]}]";
    const DENY_ALL: &str = "action: DENY\nrules: [{}]";
    const AUDIT_PATHS: &str = "action: AUDIT\nrules: [{to: [{operation: {paths: ['/x']}}]}]";

    #[test]
    fn ports_no_allow_rule_can_reach_are_found_and_nothing_else() {
        use Kind::*;
        let one = |yaml: &str| vec![policy("p", yaml)];
        let cases: Vec<(&str, Vec<Policy>, Found)> = vec![
            ("no policy", vec![], vec![]),
            (
                "spec: {} denies all",
                one("{}"),
                vec![(Unreachable, 5432), (Unreachable, 8080)],
            ),
            ("rules: [{}] allows all", one(ALLOW_ALL), vec![]),
            (
                "a rule without `to` allows every port",
                one(ALLOW_FROM),
                vec![],
            ),
            (
                "ports lists 8080 only",
                one(ALLOW_8080),
                vec![(Unreachable, 5432)],
            ),
            (
                "notPorts leaves 8080",
                one(ALLOW_NOT_5432),
                vec![(Unreachable, 5432)],
            ),
            (
                "destination.port in when",
                one(ALLOW_WHEN_8080),
                vec![(Unreachable, 5432)],
            ),
            (
                "a second ALLOW policy covers the other port",
                vec![
                    policy("a", ALLOW_8080),
                    policy("b", "rules: [{to: [{operation: {notPorts: ['8080']}}]}]"),
                ],
                vec![],
            ),
            ("DENY-only policies never black-hole", one(DENY_ALL), vec![]),
            (
                "a dry-run ALLOW does not enforce",
                vec![Policy {
                    dry_run: true,
                    ..policy("p", "{}")
                }],
                vec![],
            ),
            (
                "restrictive mode without a TrafficTarget",
                vec![crate::authz::smi::restrictive_mode("stable")],
                vec![(Unreachable, 5432), (Unreachable, 8080)],
            ),
        ];
        for (story, authz, want) in cases {
            assert_eq!(summary(&pod("api-1", true, authz)), want, "{story}");
        }
    }

    #[test]
    fn http_rules_on_ports_not_declared_http_are_found() {
        use Kind::*;
        let one = |yaml: &str| vec![policy("p", yaml)];
        let cases: Vec<(&str, bool, Vec<Policy>, Found)> = vec![
            (
                "methods scoped to the HTTP port (5432 is then left to nothing)",
                true,
                one(ALLOW_POST_8080),
                vec![(Unreachable, 5432)],
            ),
            (
                "methods and paths apply to every port, 5432 is not HTTP",
                true,
                one(ALLOW_POST),
                vec![(AllowHttpOnTcp, 5432)],
            ),
            (
                "neither port declared HTTP",
                false,
                one(ALLOW_POST),
                vec![(AllowHttpOnTcp, 5432), (AllowHttpOnTcp, 8080)],
            ),
            (
                "ports scope the rule to 8080, which is not HTTP",
                false,
                one(ALLOW_POST_8080),
                vec![(Unreachable, 5432), (AllowHttpOnTcp, 8080)],
            ),
            (
                "a DENY with paths on the TCP port",
                true,
                one(DENY_ADMIN),
                vec![(DenyHttpOnTcp, 5432)],
            ),
            ("AUDIT never decides", false, one(AUDIT_PATHS), vec![]),
            ("no HTTP fields", false, one(ALLOW_FROM), vec![]),
        ];
        for (story, http, authz, want) in cases {
            assert_eq!(summary(&pod("api-1", http, authz)), want, "{story}");
        }
    }

    #[test]
    fn the_lines_name_pod_port_policy_rule_and_fix_and_only_warn() {
        let pods = [
            pod("api-2", true, vec![policy("charges", ALLOW_POST)]),
            pod("api-1", true, vec![policy("charges", ALLOW_POST)]),
        ];
        let lines = verdicts(&findings(&pods));
        assert!(lines.iter().all(|v| v.status != Status::Fail), "{lines:?}");
        assert_eq!(
            lines[0],
            Verdict::pass(UNREACHABLE, lines[0].detail.clone())
        );
        assert_eq!(lines.len(), 2, "one line for both replicas: {lines:?}");
        let warn = &lines[1];
        assert_eq!(warn.status, Status::Warn);
        assert!(
            warn.detail.starts_with(
                "pay/api-1 (and 1 more pod(s) of workload api) port 5432: rule 0 of ALLOW \
                 policy pay/charges uses HTTP fields (methods, paths) and port 5432 is not \
                 declared HTTP"
            ),
            "{}",
            warn.detail
        );
        assert!(
            warn.detail
                .ends_with("this ALLOW rule match nothing (Istio's rule)")
        );
        let hint = warn.hint.as_deref().unwrap_or_default();
        assert!(
            hint.contains("`http-<suffix>`") && hint.contains("add `ports`"),
            "{hint}"
        );

        let deny = verdicts(&findings([&pod(
            "api-1",
            true,
            vec![policy("d", DENY_ADMIN)],
        )]));
        assert!(
            deny[1]
                .detail
                .contains("this DENY rule deny every such connection"),
            "{:?}",
            deny[1]
        );

        let empty = verdicts(&findings([&pod("api-1", true, vec![policy("lock", "{}")])]));
        assert_eq!(empty[0].status, Status::Warn);
        assert!(
            empty[0].detail.starts_with(
                "pay/api-1 port 5432: ALLOW policies select it (ALLOW policy pay/lock) and none \
                 allows anything on this port, so all its traffic is denied"
            ),
            "{:?}",
            empty[0]
        );
        assert!(
            empty[0]
                .hint
                .as_deref()
                .unwrap_or_default()
                .contains("remove the policy")
        );
        let osm = verdicts(&findings([&pod(
            "api-1",
            true,
            vec![crate::authz::smi::restrictive_mode("stable")],
        )]));
        assert!(
            osm[0]
                .hint
                .as_deref()
                .unwrap_or_default()
                .contains("add a TrafficTarget"),
            "{:?}",
            osm[0]
        );
    }

    #[test]
    fn many_findings_are_capped_with_a_count() {
        let pods: Vec<MeshedPod> = (0..30)
            .map(|i| {
                let mut p = pod(&format!("api-{i}"), true, vec![policy("lock", "{}")]);
                p.workload.name = format!("w{i}");
                p
            })
            .collect();
        let lines = verdicts(&findings(&pods));
        let unreachable: Vec<&Verdict> = lines.iter().filter(|v| v.check == UNREACHABLE).collect();
        assert_eq!(unreachable.len(), MAX_LINES + 1);
        assert_eq!(unreachable[MAX_LINES].detail, "40 more like these");
    }

    #[test]
    fn the_index_feeds_the_checks() {
        use crate::discovery::model::tests::view;
        // db-1 is behind Service db (port named http) and db-peers, both on 8080.
        let mut v = view();
        v.authorization_policies = vec![std::sync::Arc::new(
            serde_json::from_value(serde_json::json!({
                "apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
                "metadata": {"namespace": "pets", "name": "db-9090-only"},
                "spec": {"selector": {"matchLabels": {"app": "db"}},
                         "rules": [{"to": [{"operation": {"ports": ["9090"], "methods": ["GET"]}}]}]}
            }))
            .unwrap(),
        )];
        let lines = check(&MeshIndex::build(&v));
        assert_eq!(lines[0].status, Status::Warn, "{lines:?}");
        assert!(
            lines[0]
                .detail
                .starts_with("pets/db-1 port 8080: ALLOW policies select it"),
            "{lines:?}"
        );
        assert_eq!(
            lines[1].status,
            Status::Pass,
            "8080 is HTTP, and the rule is for 9090: {lines:?}"
        );
        assert!(
            check(&MeshIndex::build(&view()))
                .iter()
                .all(|l| l.status == Status::Pass)
        );
    }
}
