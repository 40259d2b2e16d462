//! Authorization on the cluster, as the seeds print it: seed 003's AuthorizationPolicy (only
//! checkout-api may POST /v1/charges to payments) and seed 000's OSM restrictive mode with an
//! SMI TrafficTarget (bookbuyer may POST /buy and GET /books). Clients are meshed pods with
//! curl, so every answer is a real status code from the server side's proxy.

mod support;

use std::sync::OnceLock;
use std::time::Duration;

use support::{Cluster, Namespace, wait_for, weft};

/// A curl client pod (`sleep`, exec'd into) running as `service_account`.
fn client(name: &str, service_account: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: ServiceAccount
metadata: {{name: {service_account}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: {name}, labels: {{app: {name}}}}}
spec:
  serviceAccountName: {service_account}
  terminationGracePeriodSeconds: 1
  containers:
  - name: client
    image: curlimages/curl
    command: [sleep, "86400"]
"#
    )
}

/// The server: the echo app as `app`, behind a Service whose port is named `http`.
fn server(app: &str, service_account: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: ServiceAccount
metadata: {{name: {service_account}}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {app}}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: {app}}}}}
  template:
    metadata: {{labels: {{app: {app}}}}}
    spec:
      serviceAccountName: {service_account}
      containers:
      - name: app
        image: weft.dev/echo:dev
        ports: [{{name: http, containerPort: 8080}}]
        env: [{{name: POD_NAME, valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}}}]
        readinessProbe: {{httpGet: {{path: /healthz, port: 8080}}, periodSeconds: 1}}
---
apiVersion: v1
kind: Service
metadata: {{name: {app}}}
spec:
  selector: {{app: {app}}}
  ports: [{{name: http, port: 80, targetPort: 8080}}]
"#
    )
}

/// `curl -X method url` from `pod`'s client: the status code and body, or `000` and curl's
/// complaint when no HTTP answer came (a refused or reset connection).
fn call(ns: &Namespace, pod: &str, method: &str, url: &str) -> String {
    let out = ns.kubectl(&[
        "exec",
        pod,
        "-c",
        "client",
        "--",
        "curl",
        "-sS",
        "--path-as-is",
        "--max-time",
        "10",
        "-X",
        method,
        "-w",
        " %{http_code}",
        url,
    ]);
    let body = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let status = body.rsplit(' ').next().unwrap_or_default().to_string();
    if status == "000" || body.is_empty() {
        return format!("000 {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    format!("{status} {}", body.trim_end_matches(&status).trim())
}

/// Waits until `pod`'s call answers with `want` (a status code) and returns the answer.
fn expect(ns: &Namespace, pod: &str, method: &str, url: &str, want: &str) -> String {
    wait_for(
        Duration::from_secs(60),
        || call(ns, pod, method, url),
        |answer| answer.starts_with(want),
    )
}

fn ready(ns: &Namespace, what: &str) {
    ns.ok(&["wait", "--for=condition=Ready", what, "--timeout=180s"]);
}

#[test]
fn seed_003_only_checkout_api_may_post_charges() {
    let c = support::deployed();
    let payments = c.namespace("payments");
    let checkout = c.namespace("checkout");
    let outside = c.namespace("t-authz-outside");
    for ns in [&payments, &checkout] {
        let out = weft(&["namespace", "add", &ns.name]);
        assert!(
            out.status.success(),
            "weft namespace add {}: {}",
            ns.name,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    payments.apply(&server("payments-api", "payments-api"));
    checkout.apply(&client("checkout-api", "checkout-api"));
    checkout.apply(&client("reporting", "reporting"));
    outside.apply(&client("outsider", "outsider"));
    payments.ok(&[
        "rollout",
        "status",
        "deployment/payments-api",
        "--timeout=180s",
    ]);
    for (ns, pod) in [
        (&checkout, "pod/checkout-api"),
        (&checkout, "pod/reporting"),
        (&outside, "pod/outsider"),
    ] {
        ready(ns, pod);
    }
    let url = "http://payments-api.payments/v1/charges";
    // No policy yet: every caller gets through (PERMISSIVE, no ALLOW policy).
    expect(&checkout, "reporting", "GET", url, "200");

    // Seed 003 section 3, the AuthorizationPolicy exactly as printed.
    c.apply(
        r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: payments-allow-checkout
  namespace: payments
spec:
  action: ALLOW
  rules:
  - from:
    - source:
        # SPIFFE identity, not IP — survives pod reschedules
        principals: ["cluster.local/ns/checkout/sa/checkout-api"]
    to:
    - operation:
        methods: ["POST"]
        paths: ["/v1/charges"]
"#,
    );
    let denied = expect(&checkout, "checkout-api", "GET", url, "403");
    assert!(denied.contains("RBAC: access denied"), "{denied}");
    expect(&checkout, "checkout-api", "POST", url, "200");
    // The path the policy judged, however it is spelled.
    expect(
        &checkout,
        "checkout-api",
        "POST",
        "http://payments-api.payments/v1/x/../charges",
        "200",
    );
    expect(
        &checkout,
        "checkout-api",
        "POST",
        "http://payments-api.payments/v1/charges/",
        "403",
    );
    expect(&checkout, "reporting", "POST", url, "403");
    // PERMISSIVE lets the plaintext caller connect, and it has no principal: denied.
    expect(&outside, "outsider", "POST", url, "403");

    // What weft authz explain says is what the proxy did.
    let pod = payments.jsonpath("pods -l app=payments-api", "{.items[0].metadata.name}");
    let explain = |from: &str, method: &str| {
        let out = weft(&[
            "authz",
            "explain",
            &pod,
            "-n",
            "payments",
            "--from",
            from,
            "--method",
            method,
            "--path",
            "/v1/charges",
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let allowed = explain("checkout/checkout-api", "POST");
    assert!(allowed.contains("Decision:  ALLOW"), "{allowed}");
    assert!(
        allowed
            .contains("Because:   rule 0 of ALLOW policy payments/payments-allow-checkout matched"),
        "{allowed}"
    );
    let refused = explain("checkout/reporting", "POST");
    assert!(refused.contains("Decision:  DENY"), "{refused}");
    assert!(refused.contains("none matched"), "{refused}");

    // Seed 003's namespace STRICT next to it: the plaintext caller cannot even connect.
    c.apply(
        r#"
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: default
  namespace: payments
spec:
  mtls:
    mode: STRICT
"#,
    );
    expect(&outside, "outsider", "POST", url, "000");
    expect(&checkout, "checkout-api", "POST", url, "200");
}

/// A revision of this file's own in OSM's restrictive mode, so no other test sees it.
const RESTRICTIVE: &str = "t-authz-osm";

fn restrictive_revision() -> &'static Cluster {
    static REV: OnceLock<()> = OnceLock::new();
    let c = support::deployed();
    REV.get_or_init(|| {
        c.apply_server_side(&format!(
                "apiVersion: mesh.weft.dev/v1alpha1\nkind: MeshConfig\nmetadata: {{name: {RESTRICTIVE}, namespace: weft-system}}\nspec:\n  proxy: {{image: \"ghcr.io/weft-mesh/weft:0.1.0\"}}\n  traffic: {{enablePermissiveTrafficPolicyMode: false}}\n"
            ));
        // The revision is accepted whole: nothing of it reported unsupported.
        wait_for(
            Duration::from_secs(60),
            || {
                c.ok(&[
                    "-n", "weft-system", "get", "meshconfig", RESTRICTIVE, "-o",
                    "jsonpath={.status.conditions[?(@.type==\"Unsupported\")].status}",
                ])
            },
            |s| s == "False",
        );
    });
    c
}

#[test]
fn seed_000_restrictive_mode_allows_only_the_traffic_target_routes() {
    let c = restrictive_revision();
    let bookstore = c.namespace("bookstore");
    let bookbuyer = c.namespace("bookbuyer");
    for ns in [&bookstore, &bookbuyer] {
        ns.cluster.ok(&[
            "label",
            "namespace",
            &ns.name,
            &format!("istio.io/rev={RESTRICTIVE}"),
        ]);
    }
    bookstore.apply(&server("bookstore", "default"));
    bookbuyer.apply(&client("bookbuyer", "default"));
    bookbuyer.apply(&client("thief", "thief"));
    bookstore.ok(&[
        "rollout",
        "status",
        "deployment/bookstore",
        "--timeout=180s",
    ]);
    ready(&bookbuyer, "pod/bookbuyer");
    ready(&bookbuyer, "pod/thief");
    let (buy, books) = (
        "http://bookstore.bookstore/buy",
        "http://bookstore.bookstore/books",
    );
    // "Now all traffic is denied by default."
    expect(&bookbuyer, "bookbuyer", "GET", books, "403");

    // Seed 000 step 5, as printed.
    c.apply(
        r#"
# traffic-access.yaml
# Allow bookbuyer to access the bookstore service
apiVersion: access.smi-spec.io/v1alpha3
kind: TrafficTarget
metadata:
  name: bookstore-access
  namespace: bookstore
spec:
  # The service that is being accessed
  destination:
    kind: ServiceAccount
    name: default
    namespace: bookstore
  # The services that are allowed to access it
  sources:
    - kind: ServiceAccount
      name: default
      namespace: bookbuyer
  # The routes that are allowed
  rules:
    - kind: HTTPRouteGroup
      name: bookstore-routes
      matches:
        - buy-books
        - get-books
---
# Define which HTTP routes are allowed
apiVersion: specs.smi-spec.io/v1alpha4
kind: HTTPRouteGroup
metadata:
  name: bookstore-routes
  namespace: bookstore
spec:
  matches:
    - name: buy-books
      pathRegex: /buy
      methods:
        - POST
    - name: get-books
      pathRegex: /books
      methods:
        - GET
"#,
    );
    // "Now only the bookbuyer can call the bookstore's /buy (POST) and /books (GET)."
    expect(&bookbuyer, "bookbuyer", "POST", buy, "200");
    expect(&bookbuyer, "bookbuyer", "GET", books, "200");
    expect(&bookbuyer, "bookbuyer", "GET", buy, "403");
    expect(&bookbuyer, "bookbuyer", "DELETE", books, "403");
    expect(&bookbuyer, "thief", "POST", buy, "403");
}

/// The `PolicyNotApplied` Warning Events of `ns`, their messages joined.
fn policy_events(ns: &Namespace) -> String {
    ns.ok(&[
        "get",
        "events",
        "--field-selector",
        "reason=PolicyNotApplied",
        "-o",
        "jsonpath={range .items[*]}{.involvedObject.name}: {.message}{\"\\n\"}{end}",
    ])
}

/// The `WeftAccepted` condition of `kind/name` in `ns` as "<status>: <message>" (empty
/// until the operator has written it).
fn weft_accepted(ns: &Namespace, kind: &str, name: &str) -> String {
    ns.ok(&[
        "get",
        kind,
        name,
        "-o",
        "jsonpath={range .status.conditions[?(@.type==\"WeftAccepted\")]}{.status}: {.message}{end}",
    ])
}

/// An AuthorizationPolicy named `name` for the `api` workload of `ns` with this spec.
fn policy(ns: &Namespace, name: &str, spec: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}, namespace: {}}}\nspec:\n{spec}\n",
        ns.name
    )
}

#[test]
fn bad_policies_are_refused_by_name_fail_closed_and_leave_the_rest_of_the_mesh_flowing() {
    let c = support::deployed();
    let bad = c.namespace("t-authz-bad");
    let bystander = c.namespace("t-authz-bystander");
    for ns in [&bad, &bystander] {
        let out = weft(&["namespace", "add", &ns.name]);
        assert!(
            out.status.success(),
            "weft namespace add {}: {}",
            ns.name,
            String::from_utf8_lossy(&out.stderr)
        );
        ns.apply(&server("api", "api"));
        ns.apply(&client("caller", "caller"));
    }
    for ns in [&bad, &bystander] {
        ns.ok(&["rollout", "status", "deployment/api", "--timeout=180s"]);
        ready(ns, "pod/caller");
    }
    let url = |ns: &Namespace, path: &str| format!("http://api.{}{path}", ns.name);
    expect(&bad, "caller", "GET", &url(&bad, "/"), "200");
    let principal = format!("cluster.local/ns/{}/sa/caller", bad.name);

    // Each bad policy: an Event that names what to change, the selected workload fails
    // closed (403), and another namespace's traffic keeps flowing. Removing it restores 200.
    let cases: [(&str, String, &str); 3] = [
        (
            "custom",
            "  action: CUSTOM\n  provider: {name: ext-authz}\n  rules: [{}]".to_string(),
            "CUSTOM",
        ),
        (
            "typo",
            format!("  rules:\n  - from:\n    - source: {{principalz: [\"{principal}\"]}}"),
            "principalz",
        ),
        (
            "bad-cidr",
            "  rules:\n  - from:\n    - source: {ipBlocks: [\"198.18.0.0/33\"]}".to_string(),
            "198.18.0.0/33",
        ),
    ];
    for (name, spec, named) in &cases {
        c.apply(&policy(&bad, name, spec));
        let events = wait_for(
            Duration::from_secs(60),
            || policy_events(&bad),
            |e| {
                e.lines()
                    .any(|l| l.starts_with(&format!("{name}:")) && l.contains(named))
            },
        );
        assert!(events.contains(named), "{events}");
        // The policy's own status says the same (Istio's per-component condition shape).
        let status = wait_for(
            Duration::from_secs(60),
            || weft_accepted(&bad, "authorizationpolicy", name),
            |s| s.starts_with("False: "),
        );
        assert!(status.contains(named), "{name}: {status}");
        expect(&bad, "caller", "GET", &url(&bad, "/"), "403");
        expect(&bystander, "caller", "GET", &url(&bystander, "/"), "200");
        bad.ok(&["delete", "authorizationpolicy", name]);
        expect(&bad, "caller", "GET", &url(&bad, "/"), "200");
    }

    // A huge policy (10,000 rules) is applied as written: its last rule still decides.
    let rules: String = (0..10_000)
        .map(|i| format!("  - to: [{{operation: {{paths: [\"/p{i}\"]}}}}]\n"))
        .collect();
    // Server-side apply: client-side apply would copy it into an annotation, which is
    // limited to 256 KiB.
    c.apply_server_side(&policy(
        &bad,
        "huge",
        &format!("  rules:\n{}", rules.trim_end()),
    ));
    expect(&bad, "caller", "GET", &url(&bad, "/p9999"), "200");
    let status = wait_for(
        Duration::from_secs(60),
        || weft_accepted(&bad, "authorizationpolicy", "huge"),
        |s| !s.is_empty(),
    );
    assert_eq!(status, "True: applied as written");
    expect(&bad, "caller", "GET", &url(&bad, "/nope"), "403");
    expect(
        &bystander,
        "caller",
        "GET",
        &url(&bystander, "/nope"),
        "200",
    );
    bad.ok(&["delete", "authorizationpolicy", "huge"]);
    expect(&bad, "caller", "GET", &url(&bad, "/nope"), "200");

    // A regex bomb in an SMI HTTPRouteGroup: refused by name on the TrafficTarget that uses
    // it (SMI's CRDs have no status: an Event), nothing crashes, traffic keeps flowing.
    c.apply(&format!(
        "apiVersion: specs.smi-spec.io/v1alpha4\nkind: HTTPRouteGroup\nmetadata: {{name: bomb, namespace: {ns}}}\nspec:\n  matches: [{{name: m, pathRegex: '((a{{100}}){{100}}){{100}}'}}]\n---\napiVersion: access.smi-spec.io/v1alpha3\nkind: TrafficTarget\nmetadata: {{name: bomb, namespace: {ns}}}\nspec:\n  destination: {{kind: ServiceAccount, name: api, namespace: {ns}}}\n  sources: [{{kind: ServiceAccount, name: caller, namespace: {ns}}}]\n  rules: [{{kind: HTTPRouteGroup, name: bomb, matches: [m]}}]\n",
        ns = bad.name
    ));
    let events = wait_for(
        Duration::from_secs(60),
        || policy_events(&bad),
        |e| e.lines().any(|l| l.starts_with("bomb:")),
    );
    assert!(events.contains("simplify the pattern"), "{events}");
    expect(&bad, "caller", "GET", &url(&bad, "/"), "200");
    expect(&bystander, "caller", "GET", &url(&bystander, "/"), "200");
}

/// Istio's egress-gateway pattern with an AuthorizationPolicy on the egress gateway: only one
/// namespace's workloads may leave. Two meshed client namespaces send a declared external
/// host's requests to the egress gateway over mesh mTLS (its `ISTIO_MUTUAL` port, as
/// `tests/egress_gateway.rs` sets it up, with this test's own revision, host and node port);
/// an ALLOW policy on the gateway pods names one client namespace, which the gateway reads
/// from the client's verified certificate: that client's requests reach the external server
/// on the node, the other's get 403 from the gateway. `weft authz explain` on the gateway pod
/// agrees.
#[test]
fn an_egress_gateway_lets_only_the_allowed_namespace_leave() {
    use std::io::{Read, Write};
    const REVISION: &str = "gw-authz-egress";
    const NODE_IP: &str = "198.18.0.1";
    const EXTERNAL_PORT: u16 = 18081;
    const HOST: &str = "partner-authz.weft.test";
    const GW_NS: &str = "gw-authz-egress";
    const GW: &str = "egress-authz";
    const ALLOWED: &str = "gw-authz-leavers";
    const OTHERS: &str = "gw-authz-stayers";
    let c = support::deployed();
    // The external server: answers 200 and counts what reached it, by path.
    let listener =
        std::net::TcpListener::bind((NODE_IP, EXTERNAL_PORT)).expect("bind the node address");
    let seen: std::sync::Arc<std::sync::Mutex<Vec<String>>> = Default::default();
    let record = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let record = record.clone();
            std::thread::spawn(move || {
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
                    match stream.read(&mut buf) {
                        Ok(n) if n > 0 => head.extend_from_slice(&buf[..n]),
                        _ => return,
                    }
                }
                let line = String::from_utf8_lossy(&head)
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .to_string();
                record.lock().unwrap_or_else(|p| p.into_inner()).push(line);
                let _ = stream.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 8\r\nconnection: close\r\n\r\nexternal",
                );
            });
        }
    });
    let reached = |path: &str| {
        seen.lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .any(|l| l.starts_with(&format!("GET {path} ")))
    };
    c.apply_server_side(&format!(
        r#"
apiVersion: mesh.weft.dev/v1alpha1
kind: MeshConfig
metadata: {{name: {REVISION}, namespace: weft-system}}
spec:
  proxy: {{image: "ghcr.io/weft-mesh/weft:0.1.0"}}
  traffic: {{outboundTrafficPolicy: REGISTRY_ONLY}}
"#
    ));
    let gw_ns = c.namespace(GW_NS);
    let allowed = c.namespace(ALLOWED);
    let others = c.namespace(OTHERS);
    for ns in [ALLOWED, OTHERS] {
        c.ok(&[
            "label",
            "namespace",
            ns,
            &format!("istio.io/rev={REVISION}"),
        ]);
    }
    let out = weft(&[
        "gateway",
        "install",
        "--name",
        GW,
        "--namespace",
        GW_NS,
        "--revision",
        REVISION,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    gw_ns.apply(&format!(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: partner}}
spec:
  hosts: [{HOST}]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports:
  - {{number: 80, name: http, protocol: HTTP}}
  endpoints:
  - address: {NODE_IP}
    ports: {{http: {EXTERNAL_PORT}}}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: {GW}}}
spec:
  selector: {{istio: {GW}}}
  servers:
  - port: {{number: 443, name: https, protocol: HTTPS}}
    hosts: [{HOST}]
    tls: {{mode: ISTIO_MUTUAL}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: egress-for-partner}}
spec:
  host: {GW}.{GW_NS}.svc.cluster.local
  subsets:
  - name: partner
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: partner-through-egress}}
spec:
  hosts: [{HOST}]
  gateways: [{GW_NS}/{GW}, mesh]
  http:
  - match:
    - gateways: [mesh]
      port: 80
    route:
    - destination:
        host: {GW}.{GW_NS}.svc.cluster.local
        subset: partner
        port: {{number: 443}}
  - match:
    - gateways: [{GW_NS}/{GW}]
      port: 443
    route:
    - destination:
        host: {HOST}
        port: {{number: 80}}
"#
    ));
    for ns in [&allowed, &others] {
        ns.apply(&client("client", "leaver"));
    }
    gw_ns.ok(&[
        "rollout",
        "status",
        &format!("deployment/{GW}"),
        "--timeout=180s",
    ]);
    for ns in [&allowed, &others] {
        ready(ns, "pod/client");
    }
    let gw_pod = gw_ns.jsonpath(&format!("pods -l istio={GW}"), "{.items[0].metadata.name}");
    let curl = |ns: &Namespace, path: &str| {
        let out = ns.kubectl(&[
            "exec",
            "client",
            "-c",
            "client",
            "--",
            "curl",
            "-sS",
            "--max-time",
            "10",
            "--resolve",
            &format!("{HOST}:80:{NODE_IP}"),
            "-w",
            " %{http_code}",
            &format!("http://{HOST}{path}"),
        ]);
        let body = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let status = body.rsplit(' ').next().unwrap_or_default().to_string();
        format!("{status} {}", body.trim_end_matches(&status).trim())
    };

    // Without a policy both namespaces leave through the gateway.
    for (ns, path) in [(&allowed, "/before-allowed"), (&others, "/before-others")] {
        wait_for(
            Duration::from_secs(90),
            || curl(ns, path),
            |a| a.starts_with("200 "),
        );
        assert!(reached(path), "{path} did not reach the external server");
    }

    // Only the allowed namespace may leave: the gateway reads it from the caller's certificate.
    gw_ns.apply(&format!(
        r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: only-leavers}}
spec:
  selector: {{matchLabels: {{istio: {GW}}}}}
  rules:
  - from: [{{source: {{namespaces: ["{ALLOWED}"]}}}}]
"#
    ));
    // Until the policy reaches the gateway the polls may still leave: each uses its own path.
    let mut attempt = 0;
    let refused = wait_for(
        Duration::from_secs(60),
        || {
            attempt += 1;
            curl(&others, &format!("/while-propagating-{attempt}"))
        },
        |a| a.starts_with("403 "),
    );
    assert_eq!(refused, "403 RBAC: access denied");
    let denied = curl(&others, "/after-others");
    assert_eq!(denied, "403 RBAC: access denied");
    assert!(
        !reached("/after-others"),
        "a denied request reached the external server"
    );
    let left = curl(&allowed, "/after-allowed");
    assert_eq!(left, "200 external");
    assert!(reached("/after-allowed"));

    // The explanation on the gateway pod names the same policy for the same callers.
    let explain = |from: &str| {
        let out = weft(&[
            "authz", "explain", &gw_pod, "-n", GW_NS, "--from", from, "--port", "443", "--host",
            HOST, "--path", "/",
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let yes = explain(&format!("{ALLOWED}/client"));
    assert!(yes.contains("Gateway:   "), "{yes}");
    assert!(
        yes.contains(&format!(
            "Because:   rule 0 of ALLOW policy {GW_NS}/only-leavers matched"
        )),
        "{yes}"
    );
    let no = explain(&format!("{OTHERS}/client"));
    assert!(no.contains("Decision:  DENY"), "{no}");
}
