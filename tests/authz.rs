//! The authorization evaluator as a table of Istio's documented semantics: each case is one
//! or more AuthorizationPolicy specs (YAML as users write them), a request, and the verdict and
//! deciding policy Istio gives. Then the refusals (what weft cannot enforce is an error naming
//! the field), and property tests that a DENY never lets through what it names.

use std::collections::BTreeMap;
use std::net::IpAddr;

use proptest::prelude::*;
use weft::authz::istio::{AuthorizationPolicySpec, SpecError, compile};
use weft::authz::path::normalize;
use weft::authz::{
    Decision, Http, Policy, Prefilter, Reason, Request, Verdict, evaluate, evaluate_prefiltered,
};

const SLEEP: &str = "cluster.local/ns/foo/sa/sleep";

/// A request as a test writes it; `as_request` borrows it as the evaluator's view.
#[derive(Clone, Debug)]
struct Req {
    principal: Option<String>,
    source_ip: IpAddr,
    destination_port: u16,
    sni: Option<String>,
    /// None: a TCP connection.
    http: Option<HttpReq>,
}

#[derive(Clone, Debug)]
struct HttpReq {
    method: String,
    host: String,
    /// As sent, query included; normalized the way the proxy does before evaluating.
    target: String,
    headers: Vec<(String, String)>,
}

fn get(target: &str) -> Req {
    Req {
        principal: Some(SLEEP.into()),
        source_ip: "198.18.0.5".parse().unwrap(),
        destination_port: 8080,
        sni: None,
        http: Some(HttpReq {
            method: "GET".into(),
            host: "httpbin.foo".into(),
            target: target.into(),
            headers: Vec::new(),
        }),
    }
}

fn tcp() -> Req {
    Req {
        http: None,
        ..get("/")
    }
}

impl Req {
    fn from(mut self, principal: &str) -> Self {
        self.principal = Some(principal.into());
        self
    }
    fn plaintext(mut self) -> Self {
        self.principal = None;
        self
    }
    fn method(mut self, m: &str) -> Self {
        self.http.as_mut().unwrap().method = m.into();
        self
    }
    fn host(mut self, h: &str) -> Self {
        self.http.as_mut().unwrap().host = h.into();
        self
    }
    fn header(mut self, k: &str, v: &str) -> Self {
        self.http
            .as_mut()
            .unwrap()
            .headers
            .push((k.into(), v.into()));
        self
    }
    fn port(mut self, p: u16) -> Self {
        self.destination_port = p;
        self
    }
    fn ip(mut self, ip: &str) -> Self {
        self.source_ip = ip.parse().unwrap();
        self
    }
    fn sni(mut self, s: &str) -> Self {
        self.sni = Some(s.into());
        self
    }

    fn decide(&self, policies: &[Policy]) -> Decision {
        let path = self.http.as_ref().map(|h| {
            let path = h.target.split('?').next().unwrap_or_default();
            normalize(path).expect("a readable path").into_owned()
        });
        let no_headers = Vec::new();
        let headers = self.http.as_ref().map_or(&no_headers, |h| &h.headers);
        let request = Request {
            principal: self.principal.as_deref(),
            source_ip: self.source_ip,
            remote_ip: self.source_ip,
            destination_ip: "198.18.0.9".parse().unwrap(),
            destination_port: self.destination_port,
            sni: self.sni.as_deref(),
            http: self.http.as_ref().map(|h| Http {
                method: &h.method,
                host: &h.host,
                path: path.as_deref().unwrap_or_default(),
                headers,
            }),
        };
        let decision = evaluate(policies, &request);
        // The proxy's path (a prefilter per policy set) decides every case the same.
        let prefiltered = evaluate_prefiltered(&Prefilter::new(policies), policies, &request);
        assert_eq!(prefiltered, decision, "prefiltered evaluation of {self:?}");
        decision
    }
}

/// Compiles `(name, yaml)` specs of namespace `foo`; `name` may carry `@dry-run`.
fn policies(specs: &[(&str, &str)]) -> Vec<Policy> {
    specs
        .iter()
        .map(|(name, yaml)| try_compile(name, yaml).unwrap_or_else(|e| panic!("{name}: {e:?}")))
        .collect()
}

fn try_compile(name: &str, yaml: &str) -> Result<Policy, Vec<SpecError>> {
    let (name, dry_run) = match name.strip_suffix("@dry-run") {
        Some(n) => (n, true),
        None => (name, false),
    };
    let spec: AuthorizationPolicySpec = serde_yaml::from_str(yaml).map_err(|e| {
        vec![SpecError {
            field: "spec".into(),
            message: e.to_string(),
        }]
    })?;
    let mut annotations = BTreeMap::new();
    if dry_run {
        annotations.insert("istio.io/dry-run".to_string(), "true".to_string());
    }
    compile("foo", name, &spec, &annotations)
}

/// The verdict and the name of the policy that decided (`-` when none did).
fn verdict(specs: &[(&str, &str)], req: &Req) -> (Verdict, String) {
    let ps = policies(specs);
    let d = req.decide(&ps);
    let by = match d.reason {
        Reason::Denied(r) | Reason::Allowed(r) => ps[r.policy].name.clone(),
        Reason::NoAllowPolicy | Reason::NoAllowMatched => "-".into(),
    };
    (d.verdict, by)
}

use Verdict::{Allow, Deny};

/// A table row: its name, the policies `(name, spec)`, the request, the verdict and who decided.
type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, Req, Verdict, &'a str);

const ALLOW_ALL: &str = "rules: [{}]";
const DENY_ALL: &str = "{}";

#[test]
fn evaluation_order_follows_istio() {
    let deny_admin = "action: DENY\nrules: [{to: [{operation: {paths: [/admin]}}]}]";
    let allow_sleep = "rules: [{from: [{source: {principals: [cluster.local/ns/foo/sa/sleep]}}]}]";
    let allow_other = "rules: [{from: [{source: {principals: [cluster.local/ns/foo/sa/other]}}]}]";
    let cases: Vec<Case> = vec![
        ("no policy allows", vec![], get("/"), Allow, "-"),
        (
            "spec {} denies all",
            vec![("deny-all", DENY_ALL)],
            get("/"),
            Deny,
            "-",
        ),
        (
            "rules [{}] allows all",
            vec![("allow-all", ALLOW_ALL)],
            get("/"),
            Allow,
            "foo/allow-all",
        ),
        (
            "an ALLOW with rules [] allows nothing",
            vec![("p", "rules: []")],
            get("/"),
            Deny,
            "-",
        ),
        (
            "a DENY with no rules denies nothing",
            vec![("p", "action: DENY")],
            get("/"),
            Allow,
            "-",
        ),
        (
            "DENY wins over a matching ALLOW",
            vec![("allow-all", ALLOW_ALL), ("deny-admin", deny_admin)],
            get("/admin"),
            Deny,
            "foo/deny-admin",
        ),
        (
            "a DENY that misses leaves the ALLOW",
            vec![("allow-all", ALLOW_ALL), ("deny-admin", deny_admin)],
            get("/public"),
            Allow,
            "foo/allow-all",
        ),
        (
            "no ALLOW matches: denied",
            vec![("other", allow_other)],
            get("/"),
            Deny,
            "-",
        ),
        (
            "any ALLOW policy may match",
            vec![("other", allow_other), ("sleep", allow_sleep)],
            get("/"),
            Allow,
            "foo/sleep",
        ),
        (
            "a DENY alone allows what it misses",
            vec![("deny-admin", deny_admin)],
            get("/public"),
            Allow,
            "-",
        ),
        (
            "AUDIT never allows",
            vec![
                ("audit", "action: AUDIT\nrules: [{}]"),
                ("other", allow_other),
            ],
            get("/"),
            Deny,
            "-",
        ),
        (
            "AUDIT never denies",
            vec![("audit", "action: AUDIT\nrules: [{}]")],
            get("/"),
            Allow,
            "-",
        ),
        (
            "a dry-run DENY is not enforced",
            vec![("deny-admin@dry-run", deny_admin)],
            get("/admin"),
            Allow,
            "-",
        ),
        (
            "a dry-run ALLOW does not make ALLOW policies exist",
            vec![("other@dry-run", allow_other)],
            get("/"),
            Allow,
            "-",
        ),
    ];
    check(cases);
}

#[test]
fn dry_run_and_audit_are_reported() {
    let ps = policies(&[
        (
            "deny-admin@dry-run",
            "action: DENY\nrules: [{to: [{operation: {paths: [/admin]}}]}]",
        ),
        (
            "audit-admin",
            "action: AUDIT\nrules: [{to: [{operation: {paths: [/admin*]}}]}]",
        ),
    ]);
    let d = get("/admin").decide(&ps);
    assert_eq!(d.verdict, Allow);
    let shadow = d.dry_run.expect("a dry-run verdict");
    assert_eq!(shadow.verdict, Deny);
    assert!(matches!(shadow.reason, Reason::Denied(r) if r.policy == 0));
    assert_eq!(d.audit.map(|r| r.policy), Some(1));
    let d = get("/public").decide(&ps);
    assert_eq!(d.dry_run.map(|s| s.verdict), Some(Allow));
    assert_eq!(d.audit, None);
}

#[test]
fn sources_match_as_istio() {
    let allow = |source: &str| format!("rules: [{{from: [{{source: {source}}}]}}]");
    let deny = |source: &str| format!("action: DENY\nrules: [{{from: [{{source: {source}}}]}}]");
    let cases: Vec<(String, Req, Verdict)> = vec![
        (
            allow("{principals: [cluster.local/ns/foo/sa/sleep]}"),
            get("/"),
            Allow,
        ),
        (
            allow("{principals: [cluster.local/ns/foo/sa/other]}"),
            get("/"),
            Deny,
        ),
        (
            allow("{principals: [spiffe://cluster.local/ns/foo/sa/sleep]}"),
            get("/"),
            Allow,
        ),
        (
            allow("{principals: [cluster.local/ns/foo/*]}"),
            get("/"),
            Allow,
        ),
        (
            allow("{principals: [cluster.local/ns/bar/*]}"),
            get("/"),
            Deny,
        ),
        (allow("{principals: ['*/sa/sleep']}"), get("/"), Allow),
        (allow("{principals: ['*']}"), get("/"), Allow),
        (allow("{principals: ['*']}"), get("/").plaintext(), Deny),
        (
            allow("{principals: [cluster.local/ns/foo/sa/sleep]}"),
            get("/").plaintext(),
            Deny,
        ),
        // Envoy's semantics: a plaintext peer matches every not-value ...
        (
            allow("{notPrincipals: [cluster.local/ns/foo/sa/x]}"),
            get("/").plaintext(),
            Allow,
        ),
        // ... so a DENY on notPrincipals never lets it through.
        (
            deny("{notPrincipals: [cluster.local/ns/foo/sa/sleep]}"),
            get("/").plaintext(),
            Deny,
        ),
        (deny("{notPrincipals: ['*']}"), get("/").plaintext(), Deny),
        (deny("{notPrincipals: ['*']}"), get("/"), Allow),
        (deny("{principals: ['*']}"), get("/").plaintext(), Allow),
        (allow("{namespaces: [foo]}"), get("/"), Allow),
        (allow("{namespaces: [bar]}"), get("/"), Deny),
        (allow("{namespaces: ['fo*']}"), get("/"), Allow),
        (allow("{namespaces: [foo]}"), get("/").plaintext(), Deny),
        (allow("{notNamespaces: [foo]}"), get("/"), Deny),
        (allow("{notNamespaces: [bar]}"), get("/"), Allow),
        (deny("{notNamespaces: [foo]}"), get("/").plaintext(), Deny),
        (allow("{serviceAccounts: [sleep]}"), get("/"), Allow),
        (allow("{serviceAccounts: [foo/sleep]}"), get("/"), Allow),
        (allow("{serviceAccounts: [bar/sleep]}"), get("/"), Deny),
        (
            allow("{serviceAccounts: [sleep]}"),
            get("/").from("cluster.local/ns/bar/sa/sleep"),
            Deny,
        ),
        (allow("{notServiceAccounts: [sleep]}"), get("/"), Deny),
        (allow("{ipBlocks: [198.18.0.0/16]}"), get("/"), Allow),
        (allow("{ipBlocks: [198.18.0.5]}"), get("/"), Allow),
        (allow("{ipBlocks: [198.18.0.6]}"), get("/"), Deny),
        (
            allow("{ipBlocks: ['198.18.0.5/16']}"),
            get("/").ip("198.18.7.7"),
            Allow,
        ),
        (allow("{notIpBlocks: [198.18.0.0/24]}"), get("/"), Deny),
        (
            allow("{ipBlocks: ['2001:db8::/32']}"),
            get("/").ip("2001:db8::1"),
            Allow,
        ),
        (allow("{remoteIpBlocks: [198.18.0.5]}"), get("/"), Allow),
        (allow("{notRemoteIpBlocks: [198.18.0.5]}"), get("/"), Deny),
        // Fields of one source are ANDed, entries of `from` ORed.
        (
            allow("{namespaces: [foo], ipBlocks: [198.19.0.0/16]}"),
            get("/"),
            Deny,
        ),
    ];
    for (spec, req, want) in &cases {
        let (got, _) = verdict(&[("p", spec)], req);
        assert_eq!(got, *want, "{spec} for {req:?}");
    }
    let two_sources =
        "rules: [{from: [{source: {ipBlocks: [198.19.0.0/16]}}, {source: {namespaces: [foo]}}]}]";
    assert_eq!(verdict(&[("p", two_sources)], &get("/")).0, Allow);
}

#[test]
fn operations_match_as_istio() {
    let allow = |op: &str| format!("rules: [{{to: [{{operation: {op}}}]}}]");
    let cases: Vec<(String, Req, Verdict)> = vec![
        (allow("{methods: [GET]}"), get("/"), Allow),
        (allow("{methods: [GET]}"), get("/").method("POST"), Deny),
        (allow("{methods: [get]}"), get("/"), Deny),
        (allow("{notMethods: [GET]}"), get("/"), Deny),
        (allow("{methods: ['*']}"), get("/").method("PATCH"), Allow),
        (allow("{paths: [/info]}"), get("/info"), Allow),
        (allow("{paths: [/info]}"), get("/info/"), Deny),
        (allow("{paths: ['/info*']}"), get("/info/x"), Allow),
        (allow("{paths: ['*.html']}"), get("/a/b.html"), Allow),
        (allow("{paths: ['*']}"), get("/anything"), Allow),
        (allow("{paths: [/info]}"), get("/info?x=1"), Allow),
        (allow("{paths: ['/info?x=1']}"), get("/info?x=1"), Deny),
        (allow("{paths: ['/a/{*}/c']}"), get("/a/b/c"), Allow),
        (allow("{paths: ['/a/{*}/c']}"), get("/a/b/x/c"), Deny),
        (allow("{paths: ['/a/{*}/c']}"), get("/a//c"), Deny),
        (allow("{paths: ['/a/{**}']}"), get("/a/b/c/d"), Allow),
        (allow("{paths: ['/a/{**}']}"), get("/a"), Deny),
        (allow("{notPaths: ['/admin*']}"), get("/admin/users"), Deny),
        (allow("{hosts: [httpbin.foo]}"), get("/"), Allow),
        (
            allow("{hosts: [httpbin.foo]}"),
            get("/").host("httpbin.foo:8000"),
            Allow,
        ),
        (
            allow("{hosts: [httpbin.foo]}"),
            get("/").host("HTTPBIN.Foo"),
            Allow,
        ),
        (
            allow("{hosts: [httpbin.foo]}"),
            get("/").host("httpbin.foo.evil"),
            Deny,
        ),
        (
            allow("{hosts: [httpbin.foo]}"),
            get("/").host("httpbin.foo:x"),
            Deny,
        ),
        (allow("{hosts: ['*.foo']}"), get("/").host("a.FOO"), Allow),
        (allow("{notHosts: [httpbin.foo]}"), get("/"), Deny),
        (allow("{ports: ['8080']}"), get("/"), Allow),
        (allow("{ports: ['8080']}"), get("/").port(9090), Deny),
        (allow("{notPorts: ['8080']}"), get("/"), Deny),
        // Fields of one operation are ANDed.
        (
            allow("{methods: [POST], paths: [/v1/charges]}"),
            get("/v1/charges"),
            Deny,
        ),
        (
            allow("{methods: [POST], paths: [/v1/charges]}"),
            get("/v1/charges").method("POST"),
            Allow,
        ),
    ];
    for (spec, req, want) in &cases {
        let (got, _) = verdict(&[("p", spec)], req);
        assert_eq!(got, *want, "{spec} for {req:?}");
    }
}

#[test]
fn paths_are_normalized_before_matching() {
    let deny = "action: DENY\nrules: [{to: [{operation: {paths: ['/admin', '/admin/*']}}]}]";
    for attack in [
        "/admin",
        "/public/../admin",
        "/public/%2e%2e/admin",
        "/public/%2E%2E/admin/x",
        "//admin",
        "/./admin",
        "/%61dmin",
        "/public%2F..%2Fadmin",
        "/public\\..\\admin",
        "/admin/",
        "/admin?x=/public",
    ] {
        let (got, by) = verdict(&[("allow-all", ALLOW_ALL), ("deny", deny)], &get(attack));
        assert_eq!((got, by.as_str()), (Deny, "foo/deny"), "{attack}");
    }
    // Paths are case-sensitive in Istio: /ADMIN is another path (the app decides what it is).
    assert_eq!(verdict(&[("deny", deny)], &get("/ADMIN")).0, Allow);
    assert_eq!(verdict(&[("deny", deny)], &get("/administrator")).0, Allow);
}

#[test]
fn conditions_match_as_istio() {
    let when = |key: &str, field: &str, values: &str| {
        format!("rules: [{{when: [{{key: '{key}', {field}: {values}}}]}}]")
    };
    let cases: Vec<(String, Req, Verdict)> = vec![
        (
            when("request.headers[x-user]", "values", "[alice]"),
            get("/").header("x-user", "alice"),
            Allow,
        ),
        (
            when("request.headers[X-User]", "values", "[alice]"),
            get("/").header("x-user", "alice"),
            Allow,
        ),
        (
            when("request.headers[x-user]", "values", "[alice]"),
            get("/").header("x-user", "bob"),
            Deny,
        ),
        (
            when("request.headers[x-user]", "values", "[alice]"),
            get("/"),
            Deny,
        ),
        (
            when("request.headers[x-user]", "values", "['*']"),
            get("/").header("x-user", ""),
            Allow,
        ),
        (
            when("request.headers[x-user]", "notValues", "[alice]"),
            get("/"),
            Allow,
        ),
        (when("source.namespace", "values", "[foo]"), get("/"), Allow),
        (
            when("source.namespace", "values", "[foo]"),
            get("/").plaintext(),
            Deny,
        ),
        (
            when("source.principal", "values", "['*/sa/sleep']"),
            get("/"),
            Allow,
        ),
        (
            when("source.ip", "values", "[198.18.0.0/16]"),
            get("/"),
            Allow,
        ),
        (
            when("source.ip", "notValues", "[198.18.0.0/16]"),
            get("/"),
            Deny,
        ),
        (when("remote.ip", "values", "[198.18.0.5]"), get("/"), Allow),
        (
            when("destination.ip", "values", "[198.18.0.9]"),
            get("/"),
            Allow,
        ),
        (
            when("destination.port", "values", "['8080']"),
            get("/"),
            Allow,
        ),
        (
            when("destination.port", "values", "['8080']"),
            get("/").port(1),
            Deny,
        ),
        (
            when("connection.sni", "values", "['*.foo.svc.cluster.local']"),
            get("/").sni("httpbin.foo.svc.cluster.local"),
            Allow,
        ),
        (
            when("connection.sni", "values", "['*.foo.svc.cluster.local']"),
            get("/"),
            Deny,
        ),
    ];
    for (spec, req, want) in &cases {
        let (got, _) = verdict(&[("p", spec)], req);
        assert_eq!(got, *want, "{spec} for {req:?}");
    }
    let two = "rules: [{when: [{key: source.namespace, values: [foo]}, {key: destination.port, values: ['1']}]}]";
    assert_eq!(
        verdict(&[("p", two)], &get("/")).0,
        Deny,
        "conditions are ANDed"
    );
}

#[test]
fn http_fields_on_a_tcp_connection_fail_safe() {
    let cases: Vec<(&str, Req, Verdict)> = vec![
        // ALLOW: a rule with an HTTP-only field matches nothing on TCP.
        ("rules: [{to: [{operation: {paths: [/]}}]}]", tcp(), Deny),
        (
            "rules: [{to: [{operation: {ports: ['8080'], methods: [GET]}}]}]",
            tcp(),
            Deny,
        ),
        (
            "rules: [{when: [{key: 'request.headers[a]', values: [b]}]}]",
            tcp(),
            Deny,
        ),
        (
            "rules: [{to: [{operation: {ports: ['8080']}}]}]",
            tcp(),
            Allow,
        ),
        (
            "rules: [{from: [{source: {namespaces: [foo]}}]}]",
            tcp(),
            Allow,
        ),
        // DENY: the HTTP-only field is ignored, so the rule denies more.
        (
            "action: DENY\nrules: [{to: [{operation: {paths: [/admin]}}]}]",
            tcp(),
            Deny,
        ),
        (
            "action: DENY\nrules: [{to: [{operation: {notMethods: [GET]}}]}]",
            tcp(),
            Deny,
        ),
        (
            "action: DENY\nrules: [{from: [{source: {namespaces: [bar]}}], to: [{operation: {paths: [/admin]}}]}]",
            tcp(),
            Allow,
        ),
    ];
    for (spec, req, want) in &cases {
        let (got, _) = verdict(&[("p", spec)], req);
        assert_eq!(got, *want, "{spec} on TCP");
    }
}

#[test]
fn seed_003_payments_policy() {
    // Seed 003 section 3, as printed: only checkout-api may POST /v1/charges.
    let spec = r#"
selector:
  matchLabels:
    app: payments-api
action: ALLOW
rules:
- from:
  - source:
      principals: ["cluster.local/ns/checkout/sa/checkout-api"]
  to:
  - operation:
      methods: ["POST"]
      paths: ["/v1/charges"]
"#;
    let checkout = "cluster.local/ns/checkout/sa/checkout-api";
    let p = &[("allow-checkout", spec)];
    assert_eq!(
        verdict(p, &get("/v1/charges").from(checkout).method("POST")).0,
        Allow
    );
    assert_eq!(verdict(p, &get("/v1/charges").from(checkout)).0, Deny);
    assert_eq!(verdict(p, &get("/v1/charges").method("POST")).0, Deny);
    assert_eq!(
        verdict(p, &get("/v1/charges").method("POST").plaintext()).0,
        Deny
    );
}

#[test]
fn what_weft_cannot_enforce_is_refused_by_field() {
    let cases: &[(&str, &str)] = &[
        ("action: CUSTOM\nprovider: {name: ext}", "action"),
        ("action: REJECT", "action"),
        ("provider: {name: ext}", "provider"),
        (
            "rules: [{from: [{source: {requestPrincipals: ['*']}}]}]",
            "rules[0].from[0].source.requestPrincipals",
        ),
        (
            "rules: [{when: [{key: 'request.auth.claims[iss]', values: [x]}]}]",
            "rules[0].when[0].key",
        ),
        (
            "rules: [{when: [{key: source.user, values: [x]}]}]",
            "rules[0].when[0].key",
        ),
        (
            "rules: [{when: [{key: 'request.headers[]', values: [x]}]}]",
            "rules[0].when[0].key",
        ),
        ("rules: [{when: [{key: source.ip}]}]", "rules[0].when[0]"),
        (
            "rules: [{from: [{source: {ipBlocks: [198.18.0.0/33]}}]}]",
            "rules[0].from[0].source.ipBlocks[0]",
        ),
        (
            "rules: [{from: [{source: {notIpBlocks: [ten]}}]}]",
            "rules[0].from[0].source.notIpBlocks[0]",
        ),
        (
            "rules: [{to: [{operation: {ports: [http]}}]}]",
            "rules[0].to[0].operation.ports[0]",
        ),
        (
            "rules: [{to: [{operation: {ports: ['70000']}}]}]",
            "rules[0].to[0].operation.ports[0]",
        ),
        (
            "rules: [{to: [{operation: {paths: ['/a/{**}/b']}}]}]",
            "rules[0].to[0].operation.paths[0]",
        ),
        (
            "rules: [{to: [{operation: {paths: ['/a{*}']}}]}]",
            "rules[0].to[0].operation.paths[0]",
        ),
        (
            "rules: [{to: [{operation: {methods: ['']}}]}]",
            "rules[0].to[0].operation.methods[0]",
        ),
        (
            "rules: [{from: [{source: {serviceAccounts: [a/b/c]}}]}]",
            "rules[0].from[0].source.serviceAccounts[0]",
        ),
        ("rules: [{from: [{source: {}}]}]", "rules[0].from[0].source"),
        ("rules: [{from: [{}]}]", "rules[0].from[0].source"),
        (
            "rules: [{to: [{operation: {}}]}]",
            "rules[0].to[0].operation",
        ),
        (
            "targetRefs: [{kind: Gateway, group: networking.istio.io, name: g}]",
            "targetRefs[0]",
        ),
        (
            "targetRefs: [{kind: GatewayClass, group: gateway.networking.k8s.io, name: weft}]",
            "targetRefs[0]",
        ),
        (
            "targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: g, namespace: bar}]",
            "targetRefs[0]",
        ),
        (
            "targetRefs: [{kind: Service, name: s, namespace: bar}]",
            "targetRefs[0]",
        ),
        (
            "selector: {matchLabels: {a: b}}\ntargetRefs: [{kind: Service, name: s}]",
            "selector",
        ),
        ("rules: [{to: [{operation: {pathz: [/]}}]}]", "spec"),
        ("rulez: []", "spec"),
    ];
    for (yaml, field) in cases {
        let errors = try_compile("p", yaml).expect_err(yaml);
        assert!(
            errors.iter().any(|e| e.field == *field),
            "{yaml}: expected an error on {field}, got {errors:?}"
        );
        assert!(errors.iter().all(|e| !e.message.is_empty()));
    }
    let unknown = try_compile("p", "rules: [{to: [{operation: {pathz: [/]}}]}]").unwrap_err();
    assert!(unknown[0].message.contains("pathz"), "{unknown:?}");
    let mut bad_dry_run = BTreeMap::new();
    bad_dry_run.insert("istio.io/dry-run".to_string(), "yes".to_string());
    let errors = compile(
        "foo",
        "p",
        &AuthorizationPolicySpec::default(),
        &bad_dry_run,
    )
    .unwrap_err();
    assert_eq!(errors[0].field, "metadata.annotations[istio.io/dry-run]");
    // Every error is reported at once, not just the first.
    let many = try_compile(
        "p",
        "action: CUSTOM\nrules: [{to: [{operation: {ports: [x]}}]}]",
    )
    .unwrap_err();
    assert_eq!(many.len(), 2, "{many:?}");
}

#[test]
fn a_huge_policy_compiles_and_evaluates() {
    let rules: Vec<String> = (0..10_000)
        .map(|i| format!("{{to: [{{operation: {{paths: [/p{i}], methods: [GET]}}}}]}}"))
        .collect();
    let yaml = format!("rules: [{}]", rules.join(","));
    let ps = policies(&[("huge", &yaml)]);
    assert_eq!(ps[0].rules.len(), 10_000);
    assert_eq!(get("/p9999").decide(&ps).verdict, Allow);
    assert_eq!(get("/p10000").decide(&ps).verdict, Deny);
}

fn check(cases: Vec<Case>) {
    for (name, specs, req, want, by) in cases {
        assert_eq!(verdict(&specs, &req), (want, by.to_string()), "{name}");
    }
}

// === property tests ===

/// Ways a client can spell the same path; the proxy must see through each.
fn disguise(path: &str, tricks: &[u8]) -> String {
    let mut out = String::new();
    for (i, segment) in path.trim_start_matches('/').split('/').enumerate() {
        if i == 0 {
            out.push('/');
        }
        let trick = tricks.get(i).copied().unwrap_or(0) % 7;
        match trick {
            0 => out.push('/'),
            1 => out.push_str("//"),
            2 => out.push_str("/./"),
            3 => out.push_str("/decoy/../"),
            4 => out.push_str("%2F"),
            5 => out.push('\\'),
            _ => out.push_str("/x/%2e%2E/"),
        }
        for (j, b) in segment.bytes().enumerate() {
            if tricks.get(i + j).is_some_and(|t| t % 3 == 0) {
                out.push_str(&format!("%{b:02x}"));
            } else {
                out.push(b as char);
            }
        }
    }
    out
}

fn segment() -> impl Strategy<Value = String> {
    "[a-z]{1,6}"
}

fn target() -> impl Strategy<Value = String> {
    prop::collection::vec(segment(), 1..4).prop_map(|s| format!("/{}", s.join("/")))
}

fn principal() -> impl Strategy<Value = Option<String>> {
    prop::option::of(
        (
            prop::sample::select(vec!["foo", "bar"]),
            prop::sample::select(vec!["a", "b"]),
        )
            .prop_map(|(ns, sa)| format!("cluster.local/ns/{ns}/sa/{sa}")),
    )
}

proptest! {
    /// A DENY on a path denies every spelling of it, whatever ALLOW policies say.
    #[test]
    fn a_deny_on_a_path_denies_every_spelling_of_it(
        path in target(),
        tricks in prop::collection::vec(any::<u8>(), 0..12),
        who in principal(),
        method in prop::sample::select(vec!["GET", "POST", "DELETE"]),
    ) {
        let deny = format!("action: DENY\nrules: [{{to: [{{operation: {{paths: ['{path}']}}}}]}}]");
        let ps = policies(&[("allow-all", ALLOW_ALL), ("deny", &deny)]);
        let mut req = get(&disguise(&path, &tricks)).method(method);
        req.principal = who;
        let d = req.decide(&ps);
        prop_assert_eq!(d.verdict, Deny, "{} as {:?}", path, req);
    }

    /// Adding ALLOW policies never turns a DENY's match into an allow, on HTTP or TCP.
    #[test]
    fn allow_policies_never_override_a_matching_deny(
        deny_ns in prop::sample::select(vec!["foo", "bar"]),
        not in any::<bool>(),
        allow_paths in prop::collection::vec(target(), 0..4),
        who in principal(),
        over_tcp in any::<bool>(),
        path in target(),
    ) {
        let field = if not { "notNamespaces" } else { "namespaces" };
        let deny = format!("action: DENY\nrules: [{{from: [{{source: {{{field}: [{deny_ns}]}}}}]}}]");
        let allows: Vec<String> = allow_paths
            .iter()
            .map(|p| format!("rules: [{{to: [{{operation: {{paths: ['{p}*']}}}}]}}, {{}}]"))
            .collect();
        let mut specs: Vec<(&str, &str)> = vec![("deny", &deny)];
        specs.extend(allows.iter().map(|a| ("allow", a.as_str())));
        let ps = policies(&specs);
        let mut req = if over_tcp { tcp() } else { get(&path) };
        req.principal = who.clone();
        let alone = req.decide(&ps[..1]).verdict;
        let with_allows = req.decide(&ps).verdict;
        if alone == Deny {
            prop_assert_eq!(with_allows, Deny);
        }
        // And the DENY matched exactly when Istio says it should.
        let ns = who.as_deref().map(|p| p.split('/').nth(2).unwrap_or_default());
        let names = ns == Some(deny_ns);
        prop_assert_eq!(alone == Deny, if not { !names } else { names });
    }
}
