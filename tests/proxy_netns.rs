//! weft-proxy with real traffic: two network namespaces joined by a veth pair (198.18.0.1 the
//! client pod, 198.18.0.2 the server pod), `weft-proxy init` programming real iptables capture
//! in both, a plaintext echo app in the server pod, and the proxies running as UID 1337.
//! Needs root, `ip`, `iptables-restore` and `setpriv`; without them each test fails and says
//! so (`e2e/scripts/install-netns-tools.sh` installs the tools).

// The client snapshot below is one large `json!` literal.
#![recursion_limit = "256"]
#![cfg(feature = "proxy")]

use std::time::Duration;

use support::*;

const CLIENT_ID: &str = "spiffe://cluster.local/ns/demo/sa/client";
const SERVER_ID: &str = "spiffe://cluster.local/ns/demo/sa/server";
/// `x-request-id: <UUID>\r\n`, which the client's proxy adds to a request without one.
const X_REQUEST_ID_FIELD: usize = "x-request-id: ".len() + 36 + 2;

// === capture rules ===

#[test]
fn init_programs_the_capture_rules_and_is_idempotent() {
    require_privileges();
    let dir = Workdir::new();
    let ns = Netns::new("init");
    let first = ns.weft_init(&dir, &["--exclude-inbound-ports", "8080,9090"]);
    assert!(first.status.success(), "init failed: {}", first.describe());
    assert!(
        first.stdout_text().contains("-j REDIRECT --to-ports 15006"),
        "init prints the rules it applied: {}",
        first.describe()
    );
    let after_first = ns.iptables_nat();
    for rule in [
        "-A PREROUTING -p tcp -j WEFT_INBOUND",
        "-A OUTPUT -p tcp -j WEFT_OUTPUT",
        "-A WEFT_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006",
        "-A WEFT_REDIRECT -p tcp -j REDIRECT --to-ports 15001",
        "-A WEFT_INBOUND -p tcp -m tcp --dport 8080 -j RETURN",
        "-A WEFT_INBOUND -p tcp -m tcp --dport 15021 -j RETURN",
        "-A WEFT_OUTPUT -s 127.0.0.6/32 -o lo -j RETURN",
        "-A WEFT_OUTPUT -m owner --uid-owner 1337 -j RETURN",
        "-A WEFT_OUTPUT -j WEFT_REDIRECT",
    ] {
        assert_eq!(
            count_lines(&after_first, rule),
            1,
            "{rule} in:\n{after_first}"
        );
    }

    let second = ns.weft_init(&dir, &["--exclude-inbound-ports", "8080,9090"]);
    assert!(
        second.status.success(),
        "second init failed: {}",
        second.describe()
    );
    assert_eq!(rule_lines(&ns.iptables_nat()), rule_lines(&after_first));
}

#[test]
fn init_without_net_admin_fails_with_a_clear_message() {
    require_privileges();
    let dir = Workdir::new();
    let ns = Netns::new("nocap");
    let out = ns.weft_init_as_proxy_user(&dir);
    assert!(!out.status.success(), "init succeeded without NET_ADMIN");
    assert!(
        out.stderr_text().contains("NET_ADMIN"),
        "{}",
        out.describe()
    );
}

// === mTLS between two proxies ===

#[test]
fn a_meshed_client_reaches_the_server_over_mutual_tls() {
    require_privileges();
    let ca = TestCa::new("cluster.local root");
    let mesh = Mesh::start(MeshSpec::new(&ca, "STRICT"));

    assert_eq!(
        mesh.call_service(b"hello through the mesh"),
        Ok(b"hello through the mesh".to_vec())
    );

    let server = mesh.server_stats_once_closed();
    let opened = metric_lines(&server, "istio_tcp_connections_opened_total");
    assert!(
        opened.iter().any(|l| l.contains("reporter=\"destination\"")
            && l.contains(&format!("source_principal=\"{CLIENT_ID}\""))
            && l.contains(&format!("destination_principal=\"{SERVER_ID}\""))
            // From the client's peer metadata, checked against the certificate and config.
            && l.contains("source_workload=\"client\"")
            && l.contains("source_workload_namespace=\"demo\"")
            && l.contains("destination_service=\"echo.demo.svc.cluster.local\"")
            && l.contains("connection_security_policy=\"mutual_tls\"")),
        "server metrics:\n{server}"
    );
    // The metadata frame is the proxies' business: the app got exactly the 22 bytes sent.
    assert_eq!(
        metric_value(&server, "istio_tcp_received_bytes_total", "mutual_tls"),
        Some(22),
        "server metrics:\n{server}"
    );
    assert!(has_metric(
        &server,
        "weft_tls_handshakes_total{direction=\"inbound\",result=\"success\"}"
    ));

    let client = mesh.client_stats();
    assert!(
        metric_lines(&client, "istio_tcp_connections_opened_total")
            .iter()
            .any(|l| l.contains("reporter=\"source\"")
                && l.contains("destination_service=\"echo.demo.svc.cluster.local\"")
                && l.contains(&format!("destination_principal=\"{SERVER_ID}\""))
                // Istio's source reporter does not say; the principals show the mTLS.
                && l.contains("connection_security_policy=\"unknown\"")),
        "client metrics:\n{client}"
    );
}

/// The server proxy counted a plaintext connection refused (or closed) on a STRICT port.
fn assert_refused_plaintext_on_strict(mesh: &Mesh) {
    let server = mesh.server_stats();
    assert!(
        has_metric(
            &server,
            "weft_connections_refused_total{direction=\"inbound\",reason=\"plaintext_on_strict\"}"
        ),
        "server metrics:\n{server}"
    );
}

#[test]
fn strict_refuses_plaintext_from_an_unmeshed_client() {
    require_privileges();
    let ca = TestCa::new("cluster.local root");
    let mesh = Mesh::start(MeshSpec::new(&ca, "STRICT"));

    assert!(mesh.call_pod_directly(b"let me in").is_err());

    assert_refused_plaintext_on_strict(&mesh);
    assert_eq!(mesh.app_connections(), 0);
}

#[test]
fn permissive_accepts_both_mutual_tls_and_plaintext() {
    require_privileges();
    let ca = TestCa::new("cluster.local root");
    let mesh = Mesh::start(MeshSpec::new(&ca, "PERMISSIVE"));

    assert_eq!(mesh.call_service(b"meshed"), Ok(b"meshed".to_vec()));
    assert_eq!(mesh.call_pod_directly(b"plain"), Ok(b"plain".to_vec()));

    let server = mesh.server_stats_once_closed();
    let opened = metric_lines(&server, "istio_tcp_connections_opened_total");
    assert!(
        opened
            .iter()
            .any(|l| l.contains("connection_security_policy=\"mutual_tls\"")),
        "{server}"
    );
    assert!(
        opened
            .iter()
            .any(|l| l.contains("connection_security_policy=\"none\"")
                && l.contains("source_principal=\"unknown\"")),
        "{server}"
    );
}

/// A plaintext connection accepted while the port was PERMISSIVE is closed when the port turns
/// STRICT, TCP and HTTP keep-alive alike: STRICT holds for open connections, not only new ones.
#[test]
fn strict_closes_plaintext_connections_accepted_while_permissive() {
    use std::io::{ErrorKind, Read, Write};
    require_privileges();
    let ca = TestCa::new("cluster.local root");
    let mut mesh = Mesh::start(MeshSpec::new(&ca, "PERMISSIVE"));
    let (mut tcp, mut http) = mesh.hold_plaintext();

    tcp.write_all(b"before").unwrap();
    let mut buf = [0u8; 4096];
    let n = tcp.read(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"before");
    http.write_all(b"GET /first HTTP/1.1\r\nhost: api\r\n\r\n")
        .unwrap();
    let mut reply = Vec::new();
    while !String::from_utf8_lossy(&reply).contains("GET /first") {
        let n = http.read(&mut buf).unwrap();
        assert!(n > 0, "closed before the reply");
        reply.extend_from_slice(&buf[..n]);
    }
    assert!(
        reply.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&reply)
    );

    mesh.update_server_snapshot(|s| s["inbound"]["defaultMode"] = "STRICT".into());
    // The proxy reloads its snapshot within a second; both connections then end.
    for (name, s) in [("tcp", &mut tcp), ("http", &mut http)] {
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        match s.read(&mut buf) {
            Ok(0) => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
            other => panic!("{name}: the plaintext connection is still open: {other:?}"),
        }
    }
    assert!(mesh.call_pod_directly(b"after").is_err());
    assert_refused_plaintext_on_strict(&mesh);
    assert!(
        mesh.server_log()
            .contains("the port no longer accepts plaintext"),
        "{}",
        mesh.server_log()
    );
}

#[test]
fn a_flood_of_silent_and_half_open_connections_leaves_the_proxy_serving() {
    require_privileges();
    let ca = TestCa::new("cluster.local root");
    let mesh = Mesh::start(MeshSpec::new(&ca, "STRICT"));
    // 300 connections to the server pod that never finish: half send nothing (a silent or
    // server-first client), half stop after the first bytes of a TLS record (a half-open
    // handshake). All held open at once, from the client pod, bypassing its proxy.
    let held = mesh.open_stalled_connections(300);
    // Meanwhile a meshed client is served as usual.
    for i in 0..5 {
        let msg = format!("during the flood {i}");
        assert_eq!(mesh.call_service(msg.as_bytes()), Ok(msg.into_bytes()));
    }
    // Every stalled connection is refused by the sniffer's timeout (STRICT takes no
    // plaintext), none reaches the app, and none is left open in the proxy.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let refused = loop {
        let stats = mesh.server_stats();
        let n: u64 = metric_lines(&stats, "weft_connections_refused_total")
            .iter()
            .filter(|l| l.contains("direction=\"inbound\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum();
        if n >= 300 || std::time::Instant::now() > deadline {
            break (n, stats);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(refused.0 >= 300, "refusals: {}\n{}", refused.0, refused.1);
    assert_eq!(
        mesh.app_connections(),
        5,
        "only the meshed calls reached the app"
    );
    assert_eq!(
        metric_value(&mesh.server_stats(), "weft_active_connections", ""),
        Some(0),
        "no connection left open"
    );
    drop(held);
    assert_eq!(mesh.call_service(b"after"), Ok(b"after".to_vec()));
}

#[test]
fn a_client_certificate_from_another_trust_domain_is_refused() {
    require_privileges();
    let ca = TestCa::new("cluster.local root");
    let foreign = TestCa::new("other.local root");
    let mut spec = MeshSpec::new(&ca, "STRICT");
    // The stranger even trusts our root, so only the server's check can stop it.
    spec.client_cert = foreign.issue("spiffe://other.local/ns/demo/sa/client");
    spec.client_roots = format!("{}{}", foreign.cert_pem, ca.cert_pem);
    spec.client_trust_domain = "other.local";
    spec.client_identity = "spiffe://other.local/ns/demo/sa/client";
    let mesh = Mesh::start(spec);

    assert!(mesh.call_service(b"hello").is_err());

    let server = mesh.server_stats();
    assert!(
        has_metric(
            &server,
            "weft_tls_handshakes_total{direction=\"inbound\",result=\"failure\"}"
        ),
        "server metrics:\n{server}"
    );
    assert!(!server.contains("mutual_tls"), "server metrics:\n{server}");
    assert_eq!(mesh.app_connections(), 0);
}

#[test]
fn a_server_with_the_wrong_identity_is_refused_by_the_client_proxy() {
    require_privileges();
    let ca = TestCa::new("cluster.local root");
    let mut spec = MeshSpec::new(&ca, "STRICT");
    spec.server_cert = ca.issue("spiffe://cluster.local/ns/demo/sa/impostor");
    spec.server_identity = "spiffe://cluster.local/ns/demo/sa/impostor";
    let mesh = Mesh::start(spec);

    assert!(mesh.call_service(b"secret").is_err());

    let client = mesh.client_stats();
    assert!(
        has_metric(
            &client,
            "weft_tls_handshakes_total{direction=\"outbound\",result=\"failure\"}"
        ),
        "client metrics:\n{client}"
    );
    assert_eq!(mesh.app_connections(), 0);
}

#[test]
fn http_requests_are_counted_with_istio_request_metrics() {
    require_privileges();
    let ca = TestCa::new("cluster.local root");
    let mesh = Mesh::start(MeshSpec::new(&ca, "STRICT"));

    assert_eq!(mesh.get_web("/"), Ok((200, "ok".to_string())));
    assert_eq!(mesh.get_web("/missing").map(|(s, _)| s), Ok(404));

    let server = mesh.server_stats_once_closed();
    let requests = metric_lines(&server, "istio_requests_total");
    for code in ["200", "404"] {
        assert!(
            requests
                .iter()
                .any(|l| l.contains("reporter=\"destination\"")
                    && l.contains(&format!("source_principal=\"{CLIENT_ID}\""))
                    && l.contains("source_workload=\"client\"")
                    && l.contains("destination_service=\"web.demo.svc.cluster.local\"")
                    && l.contains("connection_security_policy=\"mutual_tls\"")
                    && l.contains(&format!("response_code=\"{code}\""))),
            "server metrics:\n{server}"
        );
    }
    assert!(server.contains("istio_request_duration_milliseconds_bucket{"));
    let client = mesh.client_stats();
    assert!(
        metric_lines(&client, "istio_requests_total")
            .iter()
            .any(|l| l.contains("reporter=\"source\"")
                && l.contains("destination_service=\"web.demo.svc.cluster.local\"")
                && l.contains("response_code=\"200\"")),
        "client metrics:\n{client}"
    );
}

/// The client proxy keeps its upstream connection to the server between requests; the
/// server labels each request by its current config, not by the one the connection was
/// accepted under (the e2e failure: a headless Service the client already knew and the
/// server learnt a moment later stayed `destination_service="server"` for good).
#[test]
fn requests_on_a_kept_connection_are_labelled_by_the_current_config() {
    require_privileges();
    let ca = TestCa::new("cluster.local root");
    let mut mesh = Mesh::start(MeshSpec::new(&ca, "STRICT"));
    let api = "destination_service=\"api.demo.svc.cluster.local\"";
    let renamed = "destination_service=\"api-renamed.demo.svc.cluster.local\"";
    let series = |stats: &str, service: &str| {
        sample(
            stats,
            "istio_requests_total",
            &["reporter=\"destination\"", service],
        )
    };
    let call = |mesh: &Mesh| {
        let replies = mesh
            .api_h1(Via::Mesh, &[("GET", "/kept")])
            .expect("through the mesh");
        assert!(replies.iter().all(|r| r.status == 200), "{replies:?}");
    };
    call(&mesh);
    assert_eq!(series(&mesh.server_stats(), api), Some(1.0));

    // The Service the client names is no longer the port's: the port's only one is.
    mesh.update_server_snapshot(|s| {
        s["inbound"]["services"][API_PORT.to_string()] =
            serde_json::json!(["api-renamed.demo.svc.cluster.local"]);
    });
    let stats = wait_for(|| {
        call(&mesh);
        let stats = mesh.server_stats();
        series(&stats, renamed).map(|_| stats)
    });
    // One connection carried them all (else a new connection would be labelled anew anyway).
    let handshakes = "weft_tls_handshakes_total{direction=\"inbound\",result=\"success\"}";
    assert_eq!(
        sample(&stats, handshakes, &[]),
        Some(1.0),
        "server metrics:\n{stats}"
    );
    assert!(series(&stats, api).is_some(), "server metrics:\n{stats}");
}

#[test]
fn outbound_http_sends_each_request_to_an_endpoint_of_its_own() {
    require_privileges();
    let ca = TestCa::new("cluster.local root");
    let mesh = Mesh::start(MeshSpec::new(&ca, "STRICT"));

    // Four requests on one keep-alive connection to a Service whose two endpoints are two
    // different apps: round robin per request sends two to each.
    let targets = [
        ("GET", "/one"),
        ("GET", "/two"),
        ("GET", "/three"),
        ("GET", "/four"),
    ];
    let replies = mesh.api_h1(Via::Mixed, &targets).expect("through the mesh");
    assert!(replies.iter().all(|r| r.status == 200), "{replies:?}");
    let from_web = replies.iter().filter(|r| r.body == "ok").count();
    assert_eq!(from_web, 2, "two of four to the web app: {replies:?}");
    assert_eq!(mesh.api_seen().len(), 2, "two of four to the api app");

    // The source reporter counts requests, with the endpoint's workload, and no TCP series.
    let client = mesh.client_stats();
    let mixed = "destination_service=\"mixed.demo.svc.cluster.local\"";
    let source = [
        "reporter=\"source\"",
        mixed,
        "destination_workload=\"server\"",
        "response_code=\"200\"",
        // Istio's source reporter does not say; the principals show the mTLS.
        "connection_security_policy=\"unknown\"",
        "destination_principal=\"spiffe://cluster.local/ns/demo/sa/server\"",
        "request_protocol=\"http\"",
    ];
    assert_eq!(
        sample(&client, "istio_requests_total", &source),
        Some(4.0),
        "client metrics:\n{client}"
    );
    assert!(
        !client.contains("istio_tcp_connections_opened_total{"),
        "HTTP traffic has no TCP series:\n{client}"
    );
    // The destination reporter counts all four; the web port's two are reported under the
    // Service the client named (the server's config lists `mixed` for that port only).
    let server = mesh.server_stats_once_closed();
    let destination = [
        "reporter=\"destination\"",
        "source_workload=\"client\"",
        "response_code=\"200\"",
    ];
    assert_eq!(
        metric_lines(&server, "istio_requests_total")
            .iter()
            .filter(|l| destination.iter().all(|n| l.contains(n)))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>(),
        4.0,
        "server metrics:\n{server}"
    );
    assert_eq!(
        sample(&server, "istio_requests_total", &[destination[0], mixed]),
        Some(2.0),
        "server metrics:\n{server}"
    );
    assert!(
        !server.contains("istio_tcp_connections_opened_total{"),
        "HTTP traffic has no TCP series:\n{server}"
    );
}

#[test]
fn routes_pick_subsets_by_match_and_weight_per_request() {
    require_privileges();
    let ca = TestCa::new("cluster.local root");
    let mesh = Mesh::start(MeshSpec::new(&ca, "STRICT"));

    // One keep-alive connection: a query match, a 75/25 split, a missing subset, no route.
    let split = vec![("GET", "/split"); 400];
    let mut requests = vec![("GET", "/who?user=jason")];
    requests.extend(split);
    requests.extend([("GET", "/missing-subset"), ("GET", "/elsewhere")]);
    let replies = mesh
        .api_h1(Via::Routed, &requests)
        .expect("through the mesh");
    // The api app answers `<METHOD> <target>`, the web app `ok`.
    assert_eq!(
        (replies[0].status, replies[0].body.as_str()),
        (200, "GET /who?user=jason")
    );
    let to_web = replies[1..401].iter().filter(|r| r.body == "ok").count();
    let to_api = replies[1..401]
        .iter()
        .filter(|r| r.body == "GET /split")
        .count();
    let others: Vec<_> = replies[1..401]
        .iter()
        .filter(|r| r.body != "ok" && r.body != "GET /split")
        .collect();
    assert!(
        others.is_empty(),
        "every request answered by an app: {others:?}"
    );
    // 75% of 400 is 300; four standard deviations (sd 8.7) either side.
    assert!((265..=335).contains(&to_web), "web got {to_web} of 400");
    assert_eq!(to_web + to_api, 400);
    // Envoy's answers: a route to a subset the config lacks, and no route at all (flag NR).
    assert_eq!(replies[401].status, 503, "{:?}", replies[401]);
    assert_eq!(replies[402].status, 404, "{:?}", replies[402]);

    // Reported under the destination Service the route chose, and NR for the other two.
    let client = mesh.client_stats();
    let mixed = "destination_service=\"mixed.demo.svc.cluster.local\"";
    let ok = sample(
        &client,
        "istio_requests_total",
        &[mixed, "response_code=\"200\""],
    );
    assert_eq!(ok, Some(401.0), "client metrics:\n{client}");
    let routed = "destination_service=\"routed.demo.svc.cluster.local\"";
    for code in ["503", "404"] {
        let nr = [
            routed,
            "response_flags=\"NR\"",
            &format!("response_code=\"{code}\""),
        ];
        assert_eq!(
            sample(&client, "istio_requests_total", &nr),
            Some(1.0),
            "client metrics:\n{client}"
        );
    }
}

#[test]
fn route_actions_retry_time_out_inject_faults_redirect_rewrite_and_edit_headers() {
    require_privileges();
    let ca = TestCa::new("cluster.local root");
    let mesh = Mesh::start(MeshSpec::new(&ca, "STRICT"));

    // The api app fails every second `/flaky*` request with 503 (one counter for all).
    let mut requests = vec![("GET", "/flaky-retried"); 20];
    requests.extend(vec![("GET", "/flaky-default"); 20]);
    requests.extend(vec![("GET", "/flaky-raw"); 20]);
    requests.extend([
        ("GET", "/slow"),
        ("GET", "/abort"),
        ("GET", "/old/page?x=1"),
        ("GET", "/v1/headers"),
    ]);
    let replies = mesh
        .api_h1(Via::Routed, &requests)
        .expect("through the mesh");
    let failed =
        |range: std::ops::Range<usize>| replies[range].iter().filter(|r| r.status == 503).count();
    // Retries (explicit, and Istio's default of two on 503) hide the failures, and the
    // retried request carries its body again.
    assert_eq!(failed(0..20), 0, "{:?}", &replies[0..20]);
    assert_eq!(failed(20..40), 0, "{:?}", &replies[20..40]);
    assert!(
        replies[0..40].iter().all(|r| r.body.ends_with("body={}")),
        "{:?}",
        &replies[0..40]
    );
    // attempts 0: every second request fails, as the app answered it.
    assert_eq!(failed(40..60), 10, "{:?}", &replies[40..60]);
    // The route's timeout (300 ms) against an app that takes 2 s.
    assert_eq!(
        (replies[60].status, replies[60].body.as_str()),
        (504, "upstream request timeout")
    );
    // A fault's abort never reaches the app.
    assert_eq!(
        (replies[61].status, replies[61].body.as_str()),
        (418, "fault filter abort")
    );
    // A redirect keeps the host and the query.
    assert_eq!(replies[62].status, 301);
    assert_eq!(
        replies[62].location.as_deref(),
        Some("http://api.demo/new?x=1")
    );
    // The app receives the rewritten path and the edited headers; the client the response's.
    let edited = &replies[63];
    assert_eq!(edited.status, 200, "{edited:?}");
    assert!(edited.body.starts_with("GET /v2/headers\n"), "{edited:?}");
    assert!(edited.body.contains("\nx-route: canary"), "{edited:?}");
    assert!(edited.body.contains("\nx-dest: api"), "{edited:?}");
    assert!(!edited.body.contains("x-debug"), "{edited:?}");
    assert_eq!(edited.served_by.as_deref(), Some("weft"));
    let seen = mesh.api_seen();
    assert!(!seen.iter().any(|s| s.contains("/abort")), "{seen:?}");
    assert!(!seen.iter().any(|s| s.contains("/old")), "{seen:?}");
    // 20 + 20 retried requests took two tries each; the raw ones one each.
    let flaky = seen.iter().filter(|s| s.contains("/flaky")).count();
    assert_eq!(flaky, 100, "{seen:?}");

    let client = mesh.client_stats();
    let mixed = "destination_service=\"mixed.demo.svc.cluster.local\"";
    for (code, flags, n) in [("504", "UT", 1.0), ("418", "FI", 1.0), ("503", "-", 10.0)] {
        let labels = [
            mixed,
            &format!("response_code=\"{code}\""),
            &format!("response_flags=\"{flags}\""),
        ];
        assert_eq!(
            sample(&client, "istio_requests_total", &labels),
            Some(n),
            "{code} {flags}:\n{client}"
        );
    }
}

#[test]
fn a_destination_rule_disable_against_a_strict_server_is_503_uc_and_allowed_when_permissive() {
    require_privileges();
    let ca = TestCa::new("cluster.local root");
    // Seed 003's warning: the client proxy sends plaintext, the STRICT server refuses it.
    let strict = Mesh::start(MeshSpec::new(&ca, "STRICT"));
    let replies = strict
        .api_h1(Via::TlsDisabled, &[("GET", "/v1/charges")])
        .expect("a reply from the client proxy");
    assert_eq!(replies[0].status, 503, "{replies:?}");
    let client = strict.client_stats();
    let labels = [
        "destination_service=\"api-plain.demo.svc.cluster.local\"",
        "response_code=\"503\"",
        "response_flags=\"UC\"",
    ];
    assert!(
        sample(&client, "istio_requests_total", &labels).is_some_and(|n| n >= 1.0),
        "{client}"
    );
    drop(strict);
    // The same rule against a PERMISSIVE server: plaintext is accepted.
    let permissive = Mesh::start(MeshSpec::new(&ca, "PERMISSIVE"));
    let replies = permissive
        .api_h1(Via::TlsDisabled, &[("GET", "/v1/charges")])
        .expect("through the mesh");
    assert_eq!(
        (replies[0].status, replies[0].body.as_str()),
        (200, "GET /v1/charges")
    );
}

#[test]
fn an_undeclared_port_is_sniffed_and_a_service_without_endpoints_answers_503() {
    require_privileges();
    let ca = TestCa::new("cluster.local root");
    let mesh = Mesh::start(MeshSpec::new(&ca, "STRICT"));

    // No declared protocol: the client's first bytes are HTTP, so requests are counted.
    let replies = mesh
        .api_h1(Via::Sniffed, &[("GET", "/sniffed")])
        .expect("through the mesh");
    assert_eq!((replies[0].status, replies[0].body.as_str()), (200, "ok"));
    // The echo Service declares nothing either, but its bytes are not HTTP: a TCP relay.
    assert_eq!(
        mesh.call_service(b"plain bytes"),
        Ok(b"plain bytes".to_vec())
    );
    // A Service without endpoints: Envoy's answer and flag.
    let replies = mesh.api_h1(Via::Empty, &[("GET", "/")]).expect("a reply");
    assert_eq!(
        (replies[0].status, replies[0].body.as_str()),
        (503, "no healthy upstream")
    );

    let client = mesh.client_stats();
    let auto = "destination_service=\"web-auto.demo.svc.cluster.local\"";
    assert_eq!(
        sample(
            &client,
            "istio_requests_total",
            &[auto, "response_code=\"200\""]
        ),
        Some(1.0),
        "client metrics:\n{client}"
    );
    assert!(
        metric_lines(&client, "istio_tcp_connections_opened_total")
            .iter()
            .all(|l| !l.contains(auto)),
        "{client}"
    );
    assert!(
        metric_lines(&client, "istio_tcp_connections_opened_total")
            .iter()
            .any(|l| l.contains("destination_service=\"echo.demo.svc.cluster.local\"")),
        "{client}"
    );
    let empty = [
        "destination_service=\"empty.demo.svc.cluster.local\"",
        "response_code=\"503\"",
        "response_flags=\"UH\"",
    ];
    assert_eq!(
        sample(&client, "istio_requests_total", &empty),
        Some(1.0),
        "{client}"
    );
}

#[test]
fn a_renewed_certificate_serves_new_connections_without_dropping_open_ones() {
    require_privileges();
    let ca = TestCa::new("cluster.local root");
    let mesh = Mesh::start(MeshSpec::new(&ca, "STRICT"));
    let mut open = mesh.open_service_connection();
    assert_eq!(exchange(&mut open, b"one"), Ok(b"one".to_vec()));
    let before = mesh.server_cert_serial();

    mesh.rotate_server_cert(&ca.issue(SERVER_ID));

    assert_ne!(mesh.wait_for_server_cert_other_than(&before), before);
    assert_eq!(exchange(&mut open, b"two"), Ok(b"two".to_vec()));
    assert_eq!(mesh.call_service(b"three"), Ok(b"three".to_vec()));
}

#[test]
fn sigterm_stops_new_connections_and_the_proxy_exits_after_draining() {
    require_privileges();
    let ca = TestCa::new("cluster.local root");
    let mut mesh = Mesh::start(MeshSpec::new(&ca, "PERMISSIVE"));
    assert_eq!(mesh.call_service(b"before"), Ok(b"before".to_vec()));

    let status = mesh.stop_server_proxy(Duration::from_secs(15));
    assert!(status.success(), "proxy exited with {status}");
    assert!(mesh.call_service(b"after").is_err());
}

// === HTTP layer and authorization (issue 18) ===

/// Seed 003's policy, for this test's client: only it may `POST /v1/charges`.
fn allow_client_to_post_charges() -> serde_json::Value {
    policy(
        "allow-charges",
        serde_json::json!({
            "action": "ALLOW",
            "rules": [{
                "from": [{"source": {"principals": ["cluster.local/ns/demo/sa/client"]}}],
                "to": [{"operation": {"methods": ["POST"], "paths": ["/v1/charges"]}}]
            }]
        }),
    )
}

#[test]
fn http_authorization_lets_one_principal_post_and_denies_the_rest() {
    require_privileges();
    let ca = TestCa::new("cluster.local root");
    let mut spec = MeshSpec::new(&ca, "PERMISSIVE");
    spec.server_authz = vec![allow_client_to_post_charges()];
    let mesh = Mesh::start(spec);

    // Three requests on one keep-alive connection, each decided on its own.
    let replies = mesh
        .api_h1(
            Via::Mesh,
            &[
                ("POST", "/v1/charges"),
                ("GET", "/v1/charges"),
                ("POST", "/v1/charges?id=7"),
            ],
        )
        .unwrap();
    let summary: Vec<(u16, &str)> = replies
        .iter()
        .map(|r| (r.status, r.body.as_str()))
        .collect();
    assert_eq!(
        summary,
        [
            (200, "POST /v1/charges"),
            (403, "RBAC: access denied"),
            (200, "POST /v1/charges?id=7"),
        ]
    );
    assert_eq!(replies[1].content_type, "text/plain");
    // An unmeshed caller under PERMISSIVE has no principal: denied.
    let plain = mesh
        .api_h1(Via::Plaintext, &[("POST", "/v1/charges")])
        .unwrap();
    assert_eq!(
        (plain[0].status, plain[0].body.as_str()),
        (403, "RBAC: access denied")
    );
    // Denied requests never reached the app.
    assert_eq!(
        mesh.api_seen(),
        ["POST /v1/charges", "POST /v1/charges?id=7"]
    );
    // The echo port is TCP: the ALLOW rule names HTTP fields, so it matches no connection
    // there (Istio's safe direction) and the connection is closed.
    assert!(mesh.call_service(b"tcp").is_err());

    let server = mesh.server_stats();
    let requests = metric_lines(&server, "istio_requests_total");
    let series = |code: &str, security: &str| {
        requests.iter().any(|l| {
            l.contains("reporter=\"destination\"")
                && l.contains("destination_service=\"api.demo.svc.cluster.local\"")
                && l.contains("request_protocol=\"http\"")
                && l.contains(&format!("response_code=\"{code}\""))
                && l.contains(&format!("connection_security_policy=\"{security}\""))
        })
    };
    assert!(series("200", "mutual_tls"), "{server}");
    assert!(series("403", "mutual_tls"), "{server}");
    assert!(series("403", "none"), "{server}");
    // Request and response sizes: the heads as HTTP/1.1 wrote them plus the bodies. The test
    // client sends `host` and `content-length` and a 2-byte body, to which the client's proxy
    // adds `x-request-id` (a UUID, as Envoy's outbound sidecar does); the app answers with
    // `content-length` and `date` (29 characters) and `<METHOD> <target>`.
    let allowed = [
        "response_code=\"200\"",
        "connection_security_policy=\"mutual_tls\"",
        "grpc_response_status=\"\"",
    ];
    let request = |target: &str| {
        format!("POST {target} HTTP/1.1\r\nhost: api.demo\r\ncontent-length: 2\r\n\r\n{{}}").len()
            + X_REQUEST_ID_FIELD
    };
    let response = |body: &str| {
        let date = "date: Sun, 06 Dec 2026 01:45:00 GMT\r\n";
        format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n{date}\r\n{body}",
            body.len()
        )
        .len()
    };
    assert_eq!(
        sample(&server, "istio_request_bytes_count", &allowed),
        Some(2.0),
        "{server}"
    );
    assert_eq!(
        sample(&server, "istio_request_bytes_sum", &allowed),
        Some((request("/v1/charges") + request("/v1/charges?id=7")) as f64),
        "{server}"
    );
    assert_eq!(
        sample(&server, "istio_response_bytes_count", &allowed),
        Some(2.0)
    );
    assert_eq!(
        sample(&server, "istio_response_bytes_sum", &allowed),
        Some((response("POST /v1/charges") + response("POST /v1/charges?id=7")) as f64),
        "{server}"
    );
    // A denied request: its head (the body was never read) and the proxy's own answer.
    let denied = [
        "response_code=\"403\"",
        "connection_security_policy=\"mutual_tls\"",
    ];
    assert_eq!(
        sample(&server, "istio_request_bytes_sum", &denied),
        Some(
            ("GET /v1/charges HTTP/1.1\r\nhost: api.demo\r\ncontent-length: 2\r\n\r\n".len()
                + X_REQUEST_ID_FIELD) as f64
        ),
        "{server}"
    );
    assert_eq!(
        sample(&server, "istio_response_bytes_sum", &denied),
        Some(
            "HTTP/1.1 403 Forbidden\r\ncontent-type: text/plain\r\n\r\nRBAC: access denied".len()
                as f64
        ),
        "{server}"
    );
    assert!(
        requests
            .iter()
            .any(|l| l.contains(&format!("source_principal=\"{CLIENT_ID}\""))
                && l.contains("source_workload=\"client\"")),
        "{server}"
    );
    // Terminated HTTP connections are reported per request, with no TCP series.
    assert!(
        !metric_lines(&server, "istio_tcp_connections_opened_total")
            .iter()
            .any(|l| l.contains("api.demo")),
        "{server}"
    );
    assert!(
        has_metric(
            &server,
            "weft_connections_refused_total{direction=\"inbound\",reason=\"rbac_denied\"}"
        ),
        "{server}"
    );
}

#[test]
fn http_authorization_denies_another_identity() {
    require_privileges();
    let ca = TestCa::new("cluster.local root");
    let mut spec = MeshSpec::new(&ca, "STRICT");
    spec.client_cert = ca.issue("spiffe://cluster.local/ns/demo/sa/other");
    spec.client_identity = "spiffe://cluster.local/ns/demo/sa/other";
    spec.server_authz = vec![allow_client_to_post_charges()];
    let mesh = Mesh::start(spec);

    let replies = mesh.api_h1(Via::Mesh, &[("POST", "/v1/charges")]).unwrap();
    assert_eq!(
        (replies[0].status, replies[0].body.as_str()),
        (403, "RBAC: access denied")
    );
    assert!(mesh.api_seen().is_empty());
}

#[test]
fn a_deny_on_admin_holds_against_path_tricks_and_the_app_gets_the_normalized_path() {
    require_privileges();
    let ca = TestCa::new("cluster.local root");
    let mut spec = MeshSpec::new(&ca, "STRICT");
    spec.server_authz = vec![policy(
        "deny-admin",
        serde_json::json!({
            "action": "DENY",
            "rules": [{"to": [{"operation": {"paths": ["/admin", "/admin/*"]}}]}]
        }),
    )];
    // The api port is declared HTTP; the web port is left to sniffing.
    spec.server_protocols = serde_json::json!({"8082": "http"});
    let mesh = Mesh::start(spec);

    let replies = mesh
        .api_h1(
            Via::Mesh,
            &[
                ("GET", "/admin"),
                ("GET", "/public/%2e%2e/admin"),
                ("GET", "//admin"),
                ("GET", "/public/..%2Fadmin/users"),
                ("GET", "/public/./a//b?x=1"),
                ("GET", "/a%zz"),
            ],
        )
        .unwrap();
    let statuses: Vec<u16> = replies.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [403, 403, 403, 403, 200, 400], "{replies:?}");
    assert_eq!(replies[4].body, "GET /public/a/b?x=1");
    assert_eq!(mesh.api_seen(), ["GET /public/a/b?x=1"]);

    // Pipelined requests (one write) are answered in order, a denial in the middle too.
    let raw = mesh
        .api_raw(
            Via::Mesh,
            b"GET /p1 HTTP/1.1\r\nHost: api\r\n\r\nGET /admin HTTP/1.1\r\nHost: api\r\n\r\n\
              GET /p3 HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n",
        )
        .unwrap();
    let at = |needle: &str| {
        raw.find(needle)
            .unwrap_or_else(|| panic!("{needle} in {raw}"))
    };
    assert!(at("GET /p1") < at("RBAC: access denied"), "{raw}");
    assert!(at("RBAC: access denied") < at("GET /p3"), "{raw}");

    // HTTP/1 Upgrade is tunnelled once both sides switched.
    assert_eq!(
        mesh.api_upgrade(b"ping over the tunnel"),
        Ok(b"ping over the tunnel".to_vec())
    );
    // A sniffed HTTP port with an app that closes after each response.
    assert_eq!(mesh.get_web("/"), Ok((200, "ok".to_string())));
    assert_eq!(mesh.get_web("/admin").map(|(s, _)| s), Ok(403));
    // Non-HTTP bytes on an undeclared port stay L4, where the DENY's HTTP-only field
    // (paths) is ignored, as Istio does: it denies every connection (the safe direction).
    assert!(mesh.call_service(b"hello").is_err());
    assert_eq!(mesh.app_connections(), 0);
}

#[test]
fn http2_streams_of_one_connection_get_their_own_verdicts_and_grpc_trailers_arrive() {
    require_privileges();
    let ca = TestCa::new("cluster.local root");
    let mut spec = MeshSpec::new(&ca, "PERMISSIVE");
    spec.server_authz = vec![allow_client_to_post_charges()];
    let mesh = Mesh::start(spec);

    let replies = mesh
        .api_h2(
            Via::Mesh,
            &[
                ("POST", "/v1/charges", ""),
                ("GET", "/v1/charges", ""),
                ("POST", "/v1/charges", "application/grpc"),
                ("POST", "/v1/refunds", "application/grpc"),
            ],
        )
        .unwrap();
    assert_eq!(
        (replies[0].status, replies[0].body.as_str()),
        (200, "POST /v1/charges")
    );
    assert_eq!(
        (replies[1].status, replies[1].body.as_str()),
        (403, "RBAC: access denied")
    );
    // gRPC: the app's body and trailers arrive intact.
    assert_eq!(replies[2].status, 200);
    assert_eq!(replies[2].body, "hello");
    assert_eq!(replies[2].grpc_status.as_deref(), Some("0"));
    // A denied gRPC call gets Envoy's answer: HTTP 200, grpc-status 7 (PERMISSION_DENIED).
    assert_eq!(replies[3].status, 200);
    assert_eq!(replies[3].grpc_status.as_deref(), Some("7"));

    let plain = mesh
        .api_h2(
            Via::Plaintext,
            &[("POST", "/v1/charges", ""), ("GET", "/", "")],
        )
        .unwrap();
    assert!(plain.iter().all(|r| r.status == 403), "{plain:?}");

    // Streaming both ways: each message is echoed while the request is still open.
    let (echoes, status) = mesh.api_grpc_stream(&["one", "two", "three"]).unwrap();
    assert_eq!(echoes, ["one", "two", "three"]);
    assert_eq!(status, "0");

    let server = mesh.server_stats();
    // The unary call and the stream: grpc-status 0 from the app's trailers.
    let ok = [
        "request_protocol=\"grpc\"",
        "response_code=\"200\"",
        "connection_security_policy=\"mutual_tls\"",
        "grpc_response_status=\"0\"",
    ];
    assert_eq!(
        sample(&server, "istio_requests_total", &ok),
        Some(2.0),
        "{server}"
    );
    assert_eq!(
        sample(&server, "istio_request_bytes_count", &ok),
        Some(2.0),
        "{server}"
    );
    assert_eq!(
        sample(&server, "istio_response_bytes_count", &ok),
        Some(2.0),
        "{server}"
    );
    // HTTP/2 heads are counted as HTTP/1.1 would write them, `:authority` as `host`. The
    // client's unary call has a 5-byte body ("hello", so hyper adds content-length), the
    // stream 3 messages ("one" "two" "three"); the app echoes them with `content-type` and
    // `date` headers and trailers `grpc-status: 0`, `grpc-message: echoed`.
    let head = "POST /v1/charges HTTP/1.1\r\ncontent-type: application/grpc\r\nte: trailers\r\n\
                host: api.demo\r\n\r\n"
        .len()
        + X_REQUEST_ID_FIELD;
    let requests = (head + "content-length: 5\r\n".len() + 5) + (head + 11);
    assert_eq!(
        sample(&server, "istio_request_bytes_sum", &ok),
        Some(requests as f64),
        "{server}"
    );
    let reply = "HTTP/1.1 200 OK\r\ncontent-type: application/grpc\r\n\
                 date: Sun, 06 Dec 2026 01:45:00 GMT\r\n\r\n\
                 grpc-status: 0\r\ngrpc-message: echoed\r\n"
        .len();
    assert_eq!(
        sample(&server, "istio_response_bytes_sum", &ok),
        Some((reply + 5 + reply + 11) as f64),
        "{server}"
    );
    // The denied call: the proxy's trailers-only answer, entirely its own bytes.
    let denied = ["request_protocol=\"grpc\"", "grpc_response_status=\"7\""];
    assert_eq!(
        sample(&server, "istio_requests_total", &denied),
        Some(1.0),
        "{server}"
    );
    let answer = "HTTP/1.1 200 OK\r\ncontent-type: application/grpc\r\n\
                  grpc-status: 7\r\ngrpc-message: RBAC: access denied\r\n\r\n";
    assert_eq!(
        sample(&server, "istio_response_bytes_sum", &denied),
        Some(answer.len() as f64),
        "{server}"
    );
    // Plain HTTP on the same connection: the label is there, empty.
    let http = [
        "request_protocol=\"http\"",
        "response_code=\"200\"",
        "grpc_response_status=\"\"",
    ];
    assert_eq!(
        sample(&server, "istio_requests_total", &http),
        Some(1.0),
        "{server}"
    );
    assert_eq!(
        sample(&server, "istio_response_bytes_count", &http),
        Some(1.0)
    );
}

#[test]
fn a_tcp_port_with_a_deny_policy_closes_the_connection() {
    require_privileges();
    let ca = TestCa::new("cluster.local root");
    let mut spec = MeshSpec::new(&ca, "STRICT");
    spec.server_authz = vec![policy(
        "deny-echo",
        serde_json::json!({
            "action": "DENY",
            "rules": [{
                "from": [{"source": {"principals": ["cluster.local/ns/demo/sa/client"]}}],
                "to": [{"operation": {"ports": ["8080"]}}]
            }]
        }),
    )];
    spec.server_protocols = serde_json::json!({"8080": "tcp"});
    let mesh = Mesh::start(spec);

    assert!(mesh.call_service(b"let me in").is_err());
    assert_eq!(mesh.app_connections(), 0);
    let server = mesh.server_stats();
    assert!(
        has_metric(
            &server,
            "weft_connections_refused_total{direction=\"inbound\",reason=\"rbac_denied\"}"
        ),
        "{server}"
    );
    // Another port of the same workload is not named by the policy.
    let replies = mesh.api_h1(Via::Mesh, &[("GET", "/ok")]).unwrap();
    assert_eq!(replies[0].status, 200);
}

#[test]
fn access_logs_follow_the_snapshot_json_per_request_and_text_per_tcp_connection() {
    require_privileges();
    let ca = TestCa::new("cluster.local root");
    let mut spec = MeshSpec::new(&ca, "PERMISSIVE");
    spec.server_authz = vec![
        allow_client_to_post_charges(),
        policy(
            "deny-refunds",
            serde_json::json!({
                "action": "DENY",
                "rules": [{"to": [{"operation": {"paths": ["/v1/refunds"]}}]}]
            }),
        ),
    ];
    spec.server_access_log = serde_json::json!({"format": "json"});
    let mut mesh = Mesh::start(spec);

    let replies = mesh
        .api_h1(
            Via::Mesh,
            &[("POST", "/v1/charges?id=7"), ("POST", "/v1/refunds")],
        )
        .unwrap();
    assert_eq!(replies[0].status, 200);
    assert_eq!(replies[1].status, 403);
    let json_lines = |log: &str| -> Vec<serde_json::Value> {
        log.lines()
            .filter(|l| l.starts_with('{'))
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    };
    let lines = wait_for(|| {
        let lines = json_lines(&mesh.server_log());
        (lines.len() >= 2).then_some(lines)
    });
    let allowed = lines
        .iter()
        .find(|l| l["response_code"] == 200)
        .unwrap_or_else(|| panic!("{lines:?}"));
    assert_eq!(allowed["method"], "POST");
    assert_eq!(allowed["path"], "/v1/charges?id=7");
    assert_eq!(allowed["protocol"], "HTTP/1.1");
    assert_eq!(allowed["response_flags"], "-");
    assert_eq!(allowed["response_code_details"], "via_upstream");
    assert_eq!(allowed["upstream_cluster"], "inbound|8082||");
    assert_eq!(allowed["upstream_host"], "198.18.0.2:8082");
    assert_eq!(allowed["source_principal"], CLIENT_ID);
    assert_eq!(allowed["destination_principal"], SERVER_ID);
    assert_eq!(allowed["route_name"], serde_json::Value::Null);
    // The proxy made an id (the client sent none).
    assert_eq!(
        allowed["request_id"].as_str().map(str::len),
        Some(36),
        "{allowed}"
    );
    assert!(
        allowed["start_time"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z'))
    );
    let denied = lines
        .iter()
        .find(|l| l["response_code"] == 403)
        .unwrap_or_else(|| panic!("{lines:?}"));
    assert_eq!(denied["path"], "/v1/refunds");
    assert_eq!(
        denied["response_code_details"],
        "rbac_access_denied_matched_policy[ns[demo]-policy[deny-refunds]-rule[0]]"
    );
    assert_eq!(denied["bytes_sent"], "RBAC: access denied".len());
    assert_eq!(mesh.api_seen(), ["POST /v1/charges?id=7"]);

    // CONNECT is refused with 403 before any route or policy, on either side, and recorded
    // as Envoy records it: a log line with details `upgrade_failed` and a request sample.
    let connect = b"CONNECT 198.18.0.2:9 HTTP/1.1\r\nHost: 198.18.0.2:9\r\n\r\n";
    let refused = mesh.api_raw(Via::Plaintext, connect).unwrap();
    assert!(refused.starts_with("HTTP/1.1 403"), "{refused}");
    let line = wait_for(|| {
        json_lines(&mesh.server_log())
            .into_iter()
            .find(|l| l["method"] == "CONNECT")
    });
    assert_eq!(line["response_code"], 403, "{line}");
    assert_eq!(line["response_code_details"], "upgrade_failed", "{line}");
    assert_eq!(line["upstream_cluster"], "inbound|8082||", "{line}");
    let refused = mesh.api_raw(Via::Mesh, connect).unwrap();
    assert!(refused.starts_with("HTTP/1.1 403"), "{refused}");
    let unknown = [
        "reporter=\"source\"",
        "destination_service=\"unknown\"",
        "response_code=\"403\"",
    ];
    let client = mesh.client_stats();
    assert_eq!(
        sample(&client, "istio_requests_total", &unknown),
        Some(1.0),
        "{client}"
    );
    assert_eq!(mesh.api_seen(), ["POST /v1/charges?id=7"]);

    // Text, and no policies: the echo port's TCP connection is relayed and logged at its end.
    // A new snapshot, no restart.
    mesh.update_server_snapshot(|s| {
        s["accessLog"] = serde_json::json!({"format": "text"});
        s["inbound"]["authz"] = serde_json::json!([]);
    });
    let tcp_line = wait_for(|| {
        if mesh.call_service(b"hello").ok()? != b"hello" {
            return None;
        }
        std::thread::sleep(Duration::from_millis(200));
        // The last one: a connection made before the new snapshot landed may have been
        // denied by the old policies and logged first.
        mesh.server_log()
            .lines()
            .rfind(|l| l.starts_with('[') && l.contains("inbound|8080||"))
            .filter(|l| !l.contains("rbac_access_denied"))
            .map(str::to_string)
    });
    assert!(
        tcp_line.contains("\"- - -\" 0 - - - \"-\" 5 5 "),
        "{tcp_line}"
    );
    assert!(
        tcp_line.contains("\"198.18.0.2:8080\" inbound|8080|| - 198.18.0.2:8080 198.18.0.1:"),
        "{tcp_line}"
    );
    assert!(
        tcp_line.ends_with(&format!(" {CLIENT_ID} {SERVER_ID}")),
        "{tcp_line}"
    );

    // Off again: no further lines.
    mesh.update_server_snapshot(|s| s["accessLog"] = serde_json::Value::Null);
    std::thread::sleep(Duration::from_millis(2500));
    let before = mesh
        .server_log()
        .lines()
        .filter(|l| l.starts_with('['))
        .count();
    assert_eq!(mesh.call_service(b"quiet").unwrap(), b"quiet");
    std::thread::sleep(Duration::from_millis(500));
    let after = mesh
        .server_log()
        .lines()
        .filter(|l| l.starts_with('['))
        .count();
    assert_eq!(before, after, "{}", mesh.server_log());
}

/// Polls `f` until it answers (at most 15 s: the proxy reloads its snapshot file every 1 s).
fn wait_for<T>(mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(std::time::Instant::now() < deadline, "timed out");
        std::thread::sleep(Duration::from_millis(200));
    }
}

// === plumbing ===

mod support {
    use std::fs;
    use std::io::{Read, Write};
    use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, ExitStatus, Output, Stdio};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    pub use self::api::{Reply, Via};
    pub use self::certs::TestCa;
    use super::{CLIENT_ID, SERVER_ID};

    const CLIENT_IP: &str = "198.18.0.1";
    const SERVER_IP: &str = "198.18.0.2";
    /// The echo Service's ClusterIP: inside the client pod's subnet so it routes, then iptables
    /// sends it to the client proxy, which knows it from the snapshot.
    const CLUSTER_IP: &str = "198.18.0.100";
    const SERVICE_PORT: u16 = 80;
    const APP_PORT: u16 = 8080;
    /// The `web` Service (HTTP) and its app in the server pod.
    const WEB_CLUSTER_IP: &str = "198.18.0.101";
    const WEB_PORT: u16 = 8081;
    /// The `api` Service (HTTP/1.1 and h2, a hyper app) and its app in the server pod; the
    /// client pod's init excludes the port, so a direct call is an unmeshed client's.
    const API_CLUSTER_IP: &str = "198.18.0.102";
    pub const API_PORT: u16 = 8082;
    /// The `mixed` Service (HTTP): two endpoints, the web app and the api app, so which one
    /// answered shows where each request went.
    const MIXED_CLUSTER_IP: &str = "198.18.0.103";
    /// The `web-auto` Service: the web app on a port that declares no protocol (sniffed).
    const AUTO_CLUSTER_IP: &str = "198.18.0.104";
    /// The `empty` Service (HTTP) has no endpoints.
    const EMPTY_CLUSTER_IP: &str = "198.18.0.105";
    /// The `routed` Service: no endpoints of its own, routes to `mixed`'s subsets.
    const ROUTED_CLUSTER_IP: &str = "198.18.0.106";
    /// A Service of the api app whose DestinationRule says `tls.mode: DISABLE`.
    const DISABLED_CLUSTER_IP: &str = "198.18.0.107";
    const IO_TIMEOUT: Duration = Duration::from_secs(5);

    static SEQ: AtomicUsize = AtomicUsize::new(0);

    fn unique(tag: &str) -> String {
        format!(
            "weft-t{}-{}-{tag}",
            std::process::id() % 100_000,
            SEQ.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// Fails (never skips) with what is missing: these tests are part of the suite.
    pub fn require_privileges() {
        let uid = Command::new("id")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
        assert_eq!(
            uid.as_deref().unwrap_or("?"),
            "0",
            "proxy_netns tests need root (network namespaces, iptables); run them as root"
        );
        let have = |tool: &str| {
            Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false)
        };
        let tools = ["ip", "iptables-restore", "iptables-save", "setpriv"];
        if tools.iter().any(|t| !have(t)) {
            let script =
                Path::new(env!("CARGO_MANIFEST_DIR")).join("e2e/scripts/install-netns-tools.sh");
            let _ = Command::new("bash").arg(script).status();
        }
        for tool in tools {
            assert!(
                have(tool),
                "{tool} is missing: run e2e/scripts/install-netns-tools.sh"
            );
        }
    }

    // === impl Workdir ===

    /// A directory UID 1337 can read: the proxy binary, certificates, snapshots, logs.
    pub struct Workdir {
        pub path: PathBuf,
        pub bin: PathBuf,
    }

    impl Workdir {
        pub fn new() -> Self {
            use std::os::unix::fs::PermissionsExt;
            let path = std::env::temp_dir().join(unique("work"));
            fs::create_dir_all(&path).unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
            // The build directory may sit under a home UID 1337 cannot enter.
            let bin = path.join("weft-proxy");
            fs::copy(env!("CARGO_BIN_EXE_weft-proxy"), &bin).unwrap();
            fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).unwrap();
            Workdir { path, bin }
        }

        pub fn subdir(&self, name: &str) -> PathBuf {
            let p = self.path.join(name);
            fs::create_dir_all(&p).unwrap();
            p
        }
    }

    impl Drop for Workdir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.path);
        }
    }

    // === impl Netns ===

    pub struct Netns {
        pub name: String,
    }

    pub trait OutputExt {
        fn stdout_text(&self) -> String;
        fn stderr_text(&self) -> String;
        fn describe(&self) -> String;
    }

    impl OutputExt for Output {
        fn stdout_text(&self) -> String {
            String::from_utf8_lossy(&self.stdout).into_owned()
        }
        fn stderr_text(&self) -> String {
            String::from_utf8_lossy(&self.stderr).into_owned()
        }
        fn describe(&self) -> String {
            format!(
                "{}\nstdout:\n{}\nstderr:\n{}",
                self.status,
                self.stdout_text(),
                self.stderr_text()
            )
        }
    }

    fn run(cmd: &mut Command) -> Output {
        cmd.output()
            .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
    }

    fn must(cmd: &mut Command) {
        let out = run(cmd);
        assert!(out.status.success(), "{cmd:?} failed: {}", out.describe());
    }

    impl Netns {
        pub fn new(tag: &str) -> Self {
            let name = unique(tag);
            must(Command::new("ip").args(["netns", "add", &name]));
            let ns = Netns { name };
            must(Command::new("ip").args(["-n", &ns.name, "link", "set", "lo", "up"]));
            ns
        }

        pub fn exec(&self, program: &str, args: &[&str]) -> Command {
            let mut cmd = Command::new("ip");
            cmd.args(["netns", "exec", &self.name, program]).args(args);
            cmd
        }

        pub fn weft_init(&self, dir: &Workdir, args: &[&str]) -> Output {
            let bin = dir.bin.to_string_lossy().into_owned();
            run(&mut self.exec(&bin, &[&["init"], args].concat()))
        }

        pub fn weft_init_as_proxy_user(&self, dir: &Workdir) -> Output {
            let bin = dir.bin.to_string_lossy().into_owned();
            run(&mut self.exec(
                "setpriv",
                &[
                    "--reuid=1337",
                    "--regid=1337",
                    "--clear-groups",
                    &bin,
                    "init",
                ],
            ))
        }

        pub fn iptables_nat(&self) -> String {
            let out = run(&mut self.exec("iptables-save", &["-t", "nat"]));
            assert!(out.status.success(), "iptables-save: {}", out.describe());
            out.stdout_text()
        }

        /// Runs `f` on a thread inside this namespace: sockets it opens live here.
        pub fn run_in<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
            let path = format!("/var/run/netns/{}", self.name);
            std::thread::spawn(move || {
                let file = fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
                nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                    .unwrap_or_else(|e| panic!("setns {path}: {e}"));
                f()
            })
            .join()
            .unwrap_or_else(|_| panic!("thread in netns panicked"))
        }
    }

    impl Drop for Netns {
        fn drop(&mut self) {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.name])
                .status();
        }
    }

    fn link(a: &Netns, a_ip: &str, b: &Netns, b_ip: &str) {
        must(Command::new("ip").args([
            "link", "add", "eth0", "netns", &a.name, "type", "veth", "peer", "name", "eth0",
            "netns", &b.name,
        ]));
        for (ns, ip) in [(a, a_ip), (b, b_ip)] {
            must(Command::new("ip").args([
                "-n",
                &ns.name,
                "addr",
                "add",
                &format!("{ip}/24"),
                "dev",
                "eth0",
            ]));
            must(Command::new("ip").args(["-n", &ns.name, "link", "set", "eth0", "up"]));
        }
    }

    // === impl Proxy ===

    pub struct Proxy {
        child: Option<Child>,
        log: PathBuf,
        ns: String,
        cert_dir: PathBuf,
    }

    impl Proxy {
        fn start(
            ns: &Netns,
            dir: &Workdir,
            name: &str,
            cert: &certs::Issued,
            roots: &str,
            snapshot: &serde_json::Value,
            pod_ip: &str,
        ) -> Proxy {
            let certs = dir.subdir(&format!("{name}-certs"));
            fs::write(certs.join("cert-chain.pem"), &cert.chain_pem).unwrap();
            fs::write(certs.join("key.pem"), &cert.key_pem).unwrap();
            fs::write(certs.join("root-cert.pem"), roots).unwrap();
            let snapshot_file = dir.path.join(format!("{name}-snapshot.json"));
            fs::write(&snapshot_file, snapshot.to_string()).unwrap();
            let log = dir.path.join(format!("{name}.log"));
            let log_file = fs::File::create(&log).unwrap();
            let child = ns
                .exec(
                    "setpriv",
                    &[
                        "--reuid=1337",
                        "--regid=1337",
                        "--clear-groups",
                        &dir.bin.to_string_lossy(),
                        "run",
                        "--cert-dir",
                        &certs.to_string_lossy(),
                        "--snapshot-file",
                        &snapshot_file.to_string_lossy(),
                        "--pod-ip",
                        pod_ip,
                        "--drain-duration",
                        "1s",
                        "--log-level",
                        "weft=debug,info",
                    ],
                )
                .stdin(Stdio::null())
                .stdout(log_file.try_clone().unwrap())
                .stderr(log_file)
                .spawn()
                .unwrap();
            let mut proxy = Proxy {
                child: Some(child),
                log,
                ns: ns.name.clone(),
                cert_dir: certs,
            };
            proxy.wait_ready(ns);
            proxy
        }

        fn log_text(&self) -> String {
            fs::read_to_string(&self.log).unwrap_or_default()
        }

        fn wait_ready(&mut self, ns: &Netns) {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if let Some(child) = self.child.as_mut()
                    && let Ok(Some(status)) = child.try_wait()
                {
                    panic!(
                        "proxy in {} exited with {status}:\n{}",
                        self.ns,
                        self.log_text()
                    );
                }
                let status =
                    ns.run_in(|| http_get("127.0.0.1:15021", "/healthz/ready").map(|(s, _)| s));
                if status.as_ref().is_ok_and(|s| *s == 200) {
                    return;
                }
                assert!(
                    Instant::now() < deadline,
                    "proxy in {} never became ready ({status:?}):\n{}",
                    self.ns,
                    self.log_text()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }

        /// SIGTERM, then wait for the exit.
        fn terminate(&mut self, limit: Duration) -> ExitStatus {
            let mut child = self.child.take().expect("proxy already stopped");
            must(Command::new("kill").args(["-TERM", &child.id().to_string()]));
            let deadline = Instant::now() + limit;
            loop {
                if let Ok(Some(status)) = child.try_wait() {
                    return status;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    panic!(
                        "proxy did not exit within {limit:?} of SIGTERM:\n{}",
                        self.log_text()
                    );
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    impl Drop for Proxy {
        fn drop(&mut self) {
            if let Some(mut child) = self.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
            if std::thread::panicking() {
                eprintln!("--- proxy log ({}) ---\n{}", self.ns, self.log_text());
            }
        }
    }

    // === impl Mesh ===

    /// What differs between the mesh tests.
    pub struct MeshSpec {
        pub server_mode: &'static str,
        pub client_cert: certs::Issued,
        pub client_roots: String,
        pub client_identity: &'static str,
        pub client_trust_domain: &'static str,
        pub server_cert: certs::Issued,
        pub server_identity: &'static str,
        pub server_roots: String,
        /// Compiled authorization policies for the server's snapshot (`inbound.authz`).
        pub server_authz: Vec<serde_json::Value>,
        /// The server's `inbound.protocols` (container port -> tcp | http).
        pub server_protocols: serde_json::Value,
        /// The server's `accessLog` (null: off).
        pub server_access_log: serde_json::Value,
    }

    impl MeshSpec {
        pub fn new(ca: &TestCa, server_mode: &'static str) -> Self {
            MeshSpec {
                server_mode,
                client_cert: ca.issue(CLIENT_ID),
                client_roots: ca.cert_pem.clone(),
                client_identity: CLIENT_ID,
                client_trust_domain: "cluster.local",
                server_cert: ca.issue(SERVER_ID),
                server_identity: SERVER_ID,
                server_roots: ca.cert_pem.clone(),
                server_authz: Vec::new(),
                server_protocols: serde_json::json!({}),
                server_access_log: serde_json::Value::Null,
            }
        }
    }

    /// A client pod and a server pod, each with iptables capture and a proxy; an echo app on
    /// the server pod's port 8080, published as `echo.demo` at 198.18.0.100:80. The client
    /// pod's init excludes outbound port 8080, so a direct call to the pod IP is an unmeshed
    /// client's plaintext.
    pub struct Mesh {
        // Fields drop in order: proxies before their namespaces.
        _client_proxy: Proxy,
        server_proxy: Proxy,
        server_snapshot: serde_json::Value,
        app_connections: Arc<AtomicUsize>,
        api_seen: Arc<Mutex<Vec<String>>>,
        client: Netns,
        server: Netns,
        _dir: Workdir,
    }

    impl Mesh {
        pub fn start(spec: MeshSpec) -> Mesh {
            let dir = Workdir::new();
            let client = Netns::new("client");
            let server = Netns::new("server");
            link(&client, CLIENT_IP, &server, SERVER_IP);

            let excluded = format!("{APP_PORT},{API_PORT}");
            let init = client.weft_init(&dir, &["--exclude-outbound-ports", &excluded]);
            assert!(init.status.success(), "client init: {}", init.describe());
            let init = server.weft_init(&dir, &[]);
            assert!(init.status.success(), "server init: {}", init.describe());

            let app_connections = Arc::new(AtomicUsize::new(0));
            start_echo_app(&server, app_connections.clone());
            start_http_app(&server);
            let api_seen = api::start(&server);

            let server_snapshot = serde_json::json!({
                "schemaVersion": 1,
                "version": "server-v1",
                "identity": spec.server_identity,
                "trustDomain": "cluster.local",
                "workload": {"name": "server", "namespace": "demo"},
                "inbound": {
                    "defaultMode": spec.server_mode,
                    // Two Services target the web port: the client's word picks one.
                    "services": {
                        APP_PORT.to_string(): ["echo.demo.svc.cluster.local"],
                        WEB_PORT.to_string(): ["web.demo.svc.cluster.local",
                                               "web-peers.demo.svc.cluster.local",
                                               "web-auto.demo.svc.cluster.local",
                                               "mixed.demo.svc.cluster.local"],
                        API_PORT.to_string(): ["api.demo.svc.cluster.local"]
                    },
                    "protocols": spec.server_protocols,
                    "authz": spec.server_authz
                },
                "outbound": {"policy": "ALLOW_ANY"},
                "accessLog": spec.server_access_log
            });
            let client_snapshot = serde_json::json!({
                "schemaVersion": 1,
                "version": "client-v1",
                "identity": spec.client_identity,
                "trustDomain": spec.client_trust_domain,
                "workload": {"name": "client", "namespace": "demo"},
                "inbound": {"defaultMode": "PERMISSIVE"},
                "outbound": {
                    "policy": "REGISTRY_ONLY",
                    "services": [{
                        "clusterIp": CLUSTER_IP, "port": SERVICE_PORT,
                        "name": "echo.demo.svc.cluster.local",
                        "endpoints": [{
                            "ip": SERVER_IP, "port": APP_PORT, "meshed": true,
                            // What the control plane says the server is; the cert must match.
                            "identity": SERVER_ID,
                            "mtlsModeForPort": spec.server_mode,
                            "workload": {"name": "server", "namespace": "demo"}
                        }]
                    }, {
                        "clusterIp": WEB_CLUSTER_IP, "port": SERVICE_PORT,
                        "name": "web.demo.svc.cluster.local", "protocol": "http",
                        "endpoints": [{
                            "ip": SERVER_IP, "port": WEB_PORT, "meshed": true,
                            "identity": SERVER_ID, "mtlsModeForPort": spec.server_mode
                        }]
                    }, {
                        "clusterIp": API_CLUSTER_IP, "port": SERVICE_PORT,
                        "name": "api.demo.svc.cluster.local", "protocol": "http",
                        "endpoints": [{
                            "ip": SERVER_IP, "port": API_PORT, "meshed": true,
                            "identity": SERVER_ID, "mtlsModeForPort": spec.server_mode
                        }]
                    }, {
                        "clusterIp": MIXED_CLUSTER_IP, "port": SERVICE_PORT,
                        "name": "mixed.demo.svc.cluster.local", "protocol": "http",
                        "subsets": {"web": [0], "api": [1]},
                        "endpoints": [{
                            "ip": SERVER_IP, "port": WEB_PORT, "meshed": true,
                            "identity": SERVER_ID, "mtlsModeForPort": spec.server_mode,
                            "workload": {"name": "server", "namespace": "demo"}
                        }, {
                            "ip": SERVER_IP, "port": API_PORT, "meshed": true,
                            "identity": SERVER_ID, "mtlsModeForPort": spec.server_mode,
                            "workload": {"name": "server", "namespace": "demo"}
                        }]
                    }, {
                        "clusterIp": ROUTED_CLUSTER_IP, "port": SERVICE_PORT,
                        "name": "routed.demo.svc.cluster.local", "protocol": "http",
                        "endpoints": [],
                        // As a VirtualService over mixed's DestinationRule subsets compiles.
                        "http": [{
                            "name": "demo/routed",
                            "matches": [{"queryParams": {"user": {"exact": "jason"}}}],
                            "destinations": [{"service": "mixed.demo.svc.cluster.local",
                                              "port": SERVICE_PORT, "subset": "api",
                                              "weight": 100}]
                        }, {
                            "name": "demo/routed",
                            "matches": [{"uri": {"prefix": "/split"}}],
                            "destinations": [
                                {"service": "mixed.demo.svc.cluster.local",
                                 "port": SERVICE_PORT, "subset": "web", "weight": 75},
                                {"service": "mixed.demo.svc.cluster.local",
                                 "port": SERVICE_PORT, "subset": "api", "weight": 25}]
                        }, {
                            // Route actions (issue 19): retries, timeout, fault, redirect,
                            // rewrite and header edits, each on a path of its own.
                            "name": "demo/retried",
                            "matches": [{"uri": {"prefix": "/flaky-retried"}}],
                            "retries": {"attempts": 3, "on": ["5xx"]},
                            "destinations": [{"service": "mixed.demo.svc.cluster.local",
                                              "port": SERVICE_PORT, "subset": "api",
                                              "weight": 100}]
                        }, {
                            "name": "demo/not-retried",
                            "matches": [{"uri": {"prefix": "/flaky-raw"}}],
                            "retries": {"attempts": 0, "on": []},
                            "destinations": [{"service": "mixed.demo.svc.cluster.local",
                                              "port": SERVICE_PORT, "subset": "api",
                                              "weight": 100}]
                        }, {
                            "name": "demo/default-retries",
                            "matches": [{"uri": {"prefix": "/flaky-default"}}],
                            "destinations": [{"service": "mixed.demo.svc.cluster.local",
                                              "port": SERVICE_PORT, "subset": "api",
                                              "weight": 100}]
                        }, {
                            "name": "demo/timed",
                            "matches": [{"uri": {"prefix": "/slow"}}],
                            "timeoutMs": 300,
                            "destinations": [{"service": "mixed.demo.svc.cluster.local",
                                              "port": SERVICE_PORT, "subset": "api",
                                              "weight": 100}]
                        }, {
                            "name": "demo/faulty",
                            "matches": [{"uri": {"prefix": "/abort"}}],
                            "fault": {"abort": {"status": 418, "perMillion": 1000000}},
                            "destinations": [{"service": "mixed.demo.svc.cluster.local",
                                              "port": SERVICE_PORT, "subset": "api",
                                              "weight": 100}]
                        }, {
                            "name": "demo/moved",
                            "matches": [{"uri": {"prefix": "/old"}}],
                            "redirect": {"uri": "/new", "code": 301}
                        }, {
                            "name": "demo/rewritten",
                            "matches": [{"uri": {"prefix": "/v1/"}}],
                            "rewrite": {"uri": "/v2/"},
                            "requestHeaders": {"set": {"x-route": "canary"}, "remove": ["x-debug"]},
                            "responseHeaders": {"add": {"x-served-by": "weft"}},
                            "destinations": [{"service": "mixed.demo.svc.cluster.local",
                                              "port": SERVICE_PORT, "subset": "api",
                                              "weight": 100,
                                              "requestHeaders": {"set": {"x-dest": "api"}}}]
                        }, {
                            "name": "demo/routed",
                            "matches": [{"uri": {"exact": "/missing-subset"}}],
                            "destinations": [{"service": "mixed.demo.svc.cluster.local",
                                              "port": SERVICE_PORT, "subset": "v9",
                                              "weight": 100}]
                        }]
                    }, {
                        "clusterIp": AUTO_CLUSTER_IP, "port": SERVICE_PORT,
                        "name": "web-auto.demo.svc.cluster.local", "detectProtocol": true,
                        "endpoints": [{
                            "ip": SERVER_IP, "port": WEB_PORT, "meshed": true,
                            "identity": SERVER_ID, "mtlsModeForPort": spec.server_mode
                        }]
                    }, {
                        "clusterIp": DISABLED_CLUSTER_IP, "port": SERVICE_PORT,
                        "name": "api-plain.demo.svc.cluster.local", "protocol": "http",
                        "tls": "DISABLE",
                        "endpoints": [{
                            "ip": SERVER_IP, "port": API_PORT, "meshed": true,
                            "identity": SERVER_ID, "mtlsModeForPort": spec.server_mode
                        }]
                    }, {
                        "clusterIp": EMPTY_CLUSTER_IP, "port": SERVICE_PORT,
                        "name": "empty.demo.svc.cluster.local", "protocol": "http",
                        "endpoints": []
                    }]
                }
            });
            let server_proxy = Proxy::start(
                &server,
                &dir,
                "server",
                &spec.server_cert,
                &spec.server_roots,
                &server_snapshot,
                SERVER_IP,
            );
            let client_proxy = Proxy::start(
                &client,
                &dir,
                "client",
                &spec.client_cert,
                &spec.client_roots,
                &client_snapshot,
                CLIENT_IP,
            );
            Mesh {
                _client_proxy: client_proxy,
                server_proxy,
                server_snapshot,
                app_connections,
                api_seen,
                client,
                server,
                _dir: dir,
            }
        }

        /// Changes the server proxy's snapshot file (with a new version); the proxy reloads it
        /// within its reload interval (1 s), without a restart.
        pub fn update_server_snapshot(&mut self, change: impl FnOnce(&mut serde_json::Value)) {
            change(&mut self.server_snapshot);
            static UPDATES: AtomicUsize = AtomicUsize::new(1);
            let version = format!("server-v{}", UPDATES.fetch_add(1, Ordering::SeqCst) + 1);
            self.server_snapshot["version"] = serde_json::Value::String(version);
            let file = self._dir.path.join("server-snapshot.json");
            fs::write(file, self.server_snapshot.to_string()).unwrap();
        }

        /// Everything the server proxy wrote (stdout: access logs; stderr: its own logs).
        pub fn server_log(&self) -> String {
            self.server_proxy.log_text()
        }

        /// The app in the client pod calls the echo Service (captured by the client proxy).
        pub fn call_service(&self, msg: &[u8]) -> Result<Vec<u8>, String> {
            let msg = msg.to_vec();
            self.client
                .run_in(move || echo_call(&format!("{CLUSTER_IP}:{SERVICE_PORT}"), &msg))
        }

        /// An unmeshed caller: straight to the server pod's IP, bypassing the client proxy.
        /// The app in the client pod sends `GET path` to the `web` Service.
        pub fn get_web(&self, path: &str) -> Result<(u16, String), String> {
            let path = path.to_string();
            self.client
                .run_in(move || http_get(&format!("{WEB_CLUSTER_IP}:{SERVICE_PORT}"), &path))
        }

        pub fn call_pod_directly(&self, msg: &[u8]) -> Result<Vec<u8>, String> {
            let msg = msg.to_vec();
            self.client
                .run_in(move || echo_call(&format!("{SERVER_IP}:{APP_PORT}"), &msg))
        }

        /// Two plaintext connections straight to the server pod, opened from the client pod and
        /// left to the test: one to the echo app (TCP), one to the api app (HTTP).
        pub fn hold_plaintext(&self) -> (TcpStream, TcpStream) {
            self.client.run_in(|| {
                let open = |port: u16| {
                    let addr: SocketAddr = format!("{SERVER_IP}:{port}").parse().unwrap();
                    let s =
                        TcpStream::connect_timeout(&addr, IO_TIMEOUT).expect("connect to the pod");
                    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
                    s
                };
                (open(APP_PORT), open(API_PORT))
            })
        }

        /// HTTP/1.1 requests `(method, target)` in order on one keep-alive connection to the
        /// api app, through the mesh or straight to the pod (plaintext).
        pub fn api_h1(&self, via: Via, requests: &[(&str, &str)]) -> Result<Vec<Reply>, String> {
            let addr = self.api_addr(via);
            let requests = api::owned(requests);
            self.client.run_in(move || api::h1(addr, requests))
        }

        /// HTTP/2 (prior knowledge) requests `(method, target, content-type)` sent at once as
        /// streams of one connection.
        pub fn api_h2(
            &self,
            via: Via,
            requests: &[(&str, &str, &str)],
        ) -> Result<Vec<Reply>, String> {
            let addr = self.api_addr(via);
            let requests = requests
                .iter()
                .map(|(m, t, c)| (m.to_string(), t.to_string(), c.to_string()))
                .collect();
            self.client.run_in(move || api::h2(addr, requests))
        }

        /// A gRPC-style bidirectional stream over h2 through the mesh: each message must come
        /// back before the next is sent; returns the echoes and the response's `grpc-status`.
        pub fn api_grpc_stream(&self, messages: &[&str]) -> Result<(Vec<String>, String), String> {
            let addr = self.api_addr(Via::Mesh);
            let messages = messages.iter().map(|m| m.to_string()).collect();
            self.client.run_in(move || api::grpc_stream(addr, messages))
        }

        /// A WebSocket-style upgrade through the mesh to the api app's `/ws`, then `msg` echoed.
        pub fn api_upgrade(&self, msg: &[u8]) -> Result<Vec<u8>, String> {
            let addr = self.api_addr(Via::Mesh);
            let msg = msg.to_vec();
            self.client.run_in(move || api::upgrade(addr, &msg))
        }

        /// Writes `bytes` to the api app (through the mesh or straight to the pod) at once and
        /// reads until the connection closes.
        pub fn api_raw(&self, via: Via, bytes: &[u8]) -> Result<String, String> {
            let addr = self.api_addr(via);
            let bytes = bytes.to_vec();
            self.client.run_in(move || {
                let mut s =
                    TcpStream::connect_timeout(&addr, IO_TIMEOUT).map_err(|e| e.to_string())?;
                s.set_read_timeout(Some(IO_TIMEOUT))
                    .map_err(|e| e.to_string())?;
                s.write_all(&bytes).map_err(|e| e.to_string())?;
                let mut out = Vec::new();
                s.read_to_end(&mut out).map_err(|e| e.to_string())?;
                Ok(String::from_utf8_lossy(&out).into_owned())
            })
        }

        /// Request targets as the api app received them (`METHOD /path?query`).
        pub fn api_seen(&self) -> Vec<String> {
            self.api_seen.lock().map(|v| v.clone()).unwrap_or_default()
        }

        fn api_addr(&self, via: Via) -> SocketAddr {
            match via {
                Via::Mesh => format!("{API_CLUSTER_IP}:{SERVICE_PORT}"),
                Via::Plaintext => format!("{SERVER_IP}:{API_PORT}"),
                Via::Mixed => format!("{MIXED_CLUSTER_IP}:{SERVICE_PORT}"),
                Via::Sniffed => format!("{AUTO_CLUSTER_IP}:{SERVICE_PORT}"),
                Via::Empty => format!("{EMPTY_CLUSTER_IP}:{SERVICE_PORT}"),
                Via::Routed => format!("{ROUTED_CLUSTER_IP}:{SERVICE_PORT}"),
                Via::TlsDisabled => format!("{DISABLED_CLUSTER_IP}:{SERVICE_PORT}"),
            }
            .parse()
            .unwrap()
        }

        pub fn server_stats(&self) -> String {
            stats(&self.server)
        }

        pub fn client_stats(&self) -> String {
            stats(&self.client)
        }

        /// Server stats once every connection it opened is also closed (metrics of a
        /// connection are final when it closes, a moment after the client saw its end).
        pub fn server_stats_once_closed(&self) -> String {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let text = self.server_stats();
                let total = |name: &str| {
                    metric_lines(&text, name)
                        .iter()
                        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
                        .sum::<u64>()
                };
                // HTTP connections have no TCP series: none in flight is the sign for them.
                let opened = total("istio_tcp_connections_opened_total");
                let active = total("weft_active_connections");
                let some = opened > 0 || total("istio_requests_total") > 0;
                if (some && active == 0 && opened == total("istio_tcp_connections_closed_total"))
                    || Instant::now() > deadline
                {
                    return text;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }

        /// Connections the echo app has accepted.
        pub fn app_connections(&self) -> usize {
            self.app_connections.load(Ordering::SeqCst)
        }

        pub fn stop_server_proxy(&mut self, limit: Duration) -> ExitStatus {
            self.server_proxy.terminate(limit)
        }

        /// A connection from the client app to the echo Service, kept open by the caller.
        pub fn open_service_connection(&self) -> TcpStream {
            self.client.run_in(|| {
                let addr: SocketAddr = format!("{CLUSTER_IP}:{SERVICE_PORT}").parse().unwrap();
                let s =
                    TcpStream::connect_timeout(&addr, IO_TIMEOUT).expect("connect to the service");
                s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
                s
            })
        }

        /// `n` connections from the client pod straight to the server pod's app port that
        /// stall: even ones send nothing, odd ones only a TLS record header.
        pub fn open_stalled_connections(&self, n: usize) -> Vec<TcpStream> {
            self.client.run_in(move || {
                let addr: SocketAddr = format!("{SERVER_IP}:{APP_PORT}").parse().unwrap();
                (0..n)
                    .map(|i| {
                        let mut s = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
                            .expect("connect to the server pod");
                        if i % 2 == 1 {
                            s.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00]).unwrap();
                        }
                        s
                    })
                    .collect()
            })
        }

        /// Replaces the server pod's certificate files the way a renewal would (atomically).
        pub fn rotate_server_cert(&self, cert: &certs::Issued) {
            let dir = &self.server_proxy.cert_dir;
            for (name, text) in [
                ("key.pem", &cert.key_pem),
                ("cert-chain.pem", &cert.chain_pem),
            ] {
                let tmp = dir.join(format!(".{name}.tmp"));
                fs::write(&tmp, text).unwrap();
                fs::rename(&tmp, dir.join(name)).unwrap();
            }
        }

        /// The serial of the certificate the server proxy serves, from its admin `/certs`.
        pub fn server_cert_serial(&self) -> String {
            let (_, body) = self
                .server
                .run_in(|| http_get("127.0.0.1:15000", "/certs"))
                .unwrap_or_else(|e| panic!("/certs: {e}"));
            let json: serde_json::Value =
                serde_json::from_str(&body).unwrap_or_else(|e| panic!("/certs: {e}: {body}"));
            json["certificate"]["serial"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        }

        /// Waits until the server proxy serves a certificate other than `old`.
        pub fn wait_for_server_cert_other_than(&self, old: &str) -> String {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let serial = self.server_cert_serial();
                if serial != old || Instant::now() > deadline {
                    return serial;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    /// An AuthorizationPolicy of namespace `demo` (its spec as JSON), compiled the way
    /// discovery compiles it, as the snapshot carries it.
    pub fn policy(name: &str, spec: serde_json::Value) -> serde_json::Value {
        let spec: weft::authz::istio::AuthorizationPolicySpec =
            serde_json::from_value(spec).expect("policy spec");
        let compiled = weft::authz::istio::compile("demo", name, &spec, &Default::default())
            .unwrap_or_else(|e| panic!("policy {name}: {e:?}"));
        serde_json::to_value(compiled).unwrap()
    }

    fn stats(ns: &Netns) -> String {
        ns.run_in(|| http_get("127.0.0.1:15020", "/stats/prometheus"))
            .map(|(_, body)| body)
            .unwrap_or_else(|e| panic!("stats: {e}"))
    }

    /// The app: echoes every byte back, half-closes when the caller does.
    /// An HTTP/1.1 app: `/missing` is 404, anything else 200 `ok`; then it closes.
    fn start_http_app(ns: &Netns) {
        let listener =
            ns.run_in(|| TcpListener::bind(("0.0.0.0", WEB_PORT)).expect("bind web app"));
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                std::thread::spawn(move || {
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n")
                        && stream.read(&mut byte).is_ok_and(|n| n == 1)
                    {
                        head.push(byte[0]);
                    }
                    let status = if head.starts_with(b"GET /missing ") {
                        "404 Not Found"
                    } else {
                        "200 OK"
                    };
                    let _ = write!(
                        stream,
                        "HTTP/1.1 {status}\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
                    );
                });
            }
        });
    }

    fn start_echo_app(ns: &Netns, connections: Arc<AtomicUsize>) {
        let listener =
            ns.run_in(|| TcpListener::bind(("0.0.0.0", APP_PORT)).expect("bind echo app"));
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                connections.fetch_add(1, Ordering::SeqCst);
                std::thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    loop {
                        match stream.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                if stream.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                            }
                        }
                    }
                    let _ = stream.shutdown(Shutdown::Write);
                });
            }
        });
    }

    /// Sends `msg` on an open connection and reads the same number of bytes back.
    pub fn exchange(s: &mut TcpStream, msg: &[u8]) -> Result<Vec<u8>, String> {
        s.write_all(msg).map_err(|e| format!("write: {e}"))?;
        let mut out = vec![0u8; msg.len()];
        s.read_exact(&mut out).map_err(|e| format!("read: {e}"))?;
        Ok(out)
    }

    fn echo_call(addr: &str, msg: &[u8]) -> Result<Vec<u8>, String> {
        let addr: SocketAddr = addr.parse().map_err(|e| format!("{e}"))?;
        let mut s =
            TcpStream::connect_timeout(&addr, IO_TIMEOUT).map_err(|e| format!("connect: {e}"))?;
        s.set_read_timeout(Some(IO_TIMEOUT))
            .map_err(|e| e.to_string())?;
        s.write_all(msg).map_err(|e| format!("write: {e}"))?;
        s.shutdown(Shutdown::Write)
            .map_err(|e| format!("shutdown: {e}"))?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).map_err(|e| format!("read: {e}"))?;
        if out.is_empty() && !msg.is_empty() {
            return Err("connection closed without an answer".into());
        }
        Ok(out)
    }

    fn http_get(addr: &str, path: &str) -> Result<(u16, String), String> {
        let addr: SocketAddr = addr.parse().map_err(|e| format!("{e}"))?;
        let mut s = TcpStream::connect_timeout(&addr, IO_TIMEOUT).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(IO_TIMEOUT))
            .map_err(|e| e.to_string())?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").map_err(|e| e.to_string())?;
        let mut text = String::new();
        s.read_to_string(&mut text).map_err(|e| e.to_string())?;
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or("no status line")?;
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        Ok((status, body))
    }

    // === reading metrics and rules ===

    pub fn metric_lines<'a>(text: &'a str, name: &str) -> Vec<&'a str> {
        text.lines()
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
            .collect()
    }

    /// Whether a sample `name{labels}` exists with a value above zero.
    pub fn has_metric(text: &str, series: &str) -> bool {
        text.lines().any(|l| {
            l.strip_prefix(series)
                .and_then(|v| v.trim().parse::<f64>().ok())
                .is_some_and(|v| v > 0.0)
        })
    }

    /// The value of the one sample of `name` whose labels contain `needle`.
    pub fn metric_value(text: &str, name: &str, needle: &str) -> Option<u64> {
        let lines: Vec<&str> = metric_lines(text, name)
            .into_iter()
            .filter(|l| l.contains(needle))
            .collect();
        match lines.as_slice() {
            [one] => one.rsplit(' ').next()?.parse().ok(),
            _ => None,
        }
    }

    /// The value of the one sample of `name` (exactly; `name_sum` is not `name`) whose line
    /// contains every needle.
    pub fn sample(text: &str, name: &str, needles: &[&str]) -> Option<f64> {
        let lines: Vec<&str> = metric_lines(text, name)
            .into_iter()
            .filter(|l| needles.iter().all(|n| l.contains(n)))
            .collect();
        match lines.as_slice() {
            [one] => one.rsplit(' ').next()?.parse().ok(),
            _ => None,
        }
    }

    pub fn count_lines(text: &str, line: &str) -> usize {
        text.lines().filter(|l| l.trim() == line).count()
    }

    /// The rules of an `iptables-save` dump, without comments and counters.
    pub fn rule_lines(text: &str) -> Vec<String> {
        text.lines()
            .filter(|l| l.starts_with("-A ") || l.starts_with(':'))
            .map(|l| l.split(" [").next().unwrap_or(l).to_string())
            .collect()
    }

    /// The api app (a hyper server, HTTP/1.1 and h2) and hyper clients run inside a pod.
    pub mod api {
        use std::convert::Infallible;
        use std::net::SocketAddr;
        use std::sync::{Arc, Mutex};
        use std::time::Duration;

        use futures::channel::mpsc;
        use http_body_util::combinators::UnsyncBoxBody;
        use http_body_util::{BodyExt, Full, StreamBody};
        use hyper::body::{Bytes, Frame, Incoming};
        use hyper::header::{HeaderMap, HeaderValue};
        use hyper::{Request, Response};
        use hyper_util::rt::{TokioExecutor, TokioIo};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        use super::{API_PORT, Netns};

        const TIMEOUT: Duration = Duration::from_secs(10);

        #[derive(Debug, Clone, Copy)]
        pub enum Via {
            /// From the client pod's app to the api Service: captured, mTLS between proxies.
            Mesh,
            /// Straight to the server pod's IP, bypassing the client proxy: plaintext.
            Plaintext,
            /// The `mixed` Service: the web app and the api app are its two endpoints.
            Mixed,
            /// The `web-auto` Service (no declared protocol) in front of the web app.
            Sniffed,
            /// The `empty` Service: no endpoints.
            Empty,
            /// The `routed` Service: routes to the subsets of `mixed`.
            Routed,
            /// The `api-plain` Service: a DestinationRule turned mTLS off towards it.
            TlsDisabled,
        }

        /// One response as a client saw it.
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub struct Reply {
            pub status: u16,
            pub content_type: String,
            pub body: String,
            /// From the trailers, or the headers of a trailers-only response.
            pub grpc_status: Option<String>,
            /// `location` and `x-served-by`, when present.
            pub location: Option<String>,
            pub served_by: Option<String>,
        }

        type AppBody = UnsyncBoxBody<Bytes, hyper::Error>;

        /// Starts the app on the server pod's API_PORT; returns what it receives. `/ws` with
        /// `Upgrade` switches protocols and echoes bytes; `application/grpc` requests are
        /// echoed frame by frame as they arrive, then trailers `grpc-status: 0`; anything
        /// else is answered `200 <METHOD> <target>`.
        pub fn start(ns: &Netns) -> Arc<Mutex<Vec<String>>> {
            let listener = ns.run_in(|| {
                std::net::TcpListener::bind(("0.0.0.0", API_PORT)).expect("bind api app")
            });
            listener.set_nonblocking(true).unwrap();
            let seen = Arc::new(Mutex::new(Vec::new()));
            let record = seen.clone();
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                    loop {
                        let Ok((stream, _)) = listener.accept().await else {
                            continue;
                        };
                        let seen = record.clone();
                        tokio::spawn(async move {
                            let service =
                                hyper::service::service_fn(move |req| handle(req, seen.clone()));
                            let _ =
                                hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                                    .serve_connection_with_upgrades(TokioIo::new(stream), service)
                                    .await;
                        });
                    }
                });
            });
            seen
        }

        async fn handle(
            mut req: Request<Incoming>,
            seen: Arc<Mutex<Vec<String>>>,
        ) -> Result<Response<AppBody>, Infallible> {
            let target = req
                .uri()
                .path_and_query()
                .map(|p| p.as_str().to_string())
                .unwrap_or_default();
            if let Ok(mut seen) = seen.lock() {
                seen.push(format!("{} {target}", req.method()));
            }
            if req.uri().path() == "/ws" && req.headers().contains_key("upgrade") {
                let upgrade = hyper::upgrade::on(&mut req);
                tokio::spawn(async move {
                    let Ok(upgraded) = upgrade.await else { return };
                    let mut io = TokioIo::new(upgraded);
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = io.read(&mut buf).await {
                        if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
                let resp = Response::builder()
                    .status(101)
                    .header("connection", "upgrade")
                    .header("upgrade", "websocket")
                    .body(full(""))
                    .unwrap();
                return Ok(resp);
            }
            let grpc = req
                .headers()
                .get("content-type")
                .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
            if grpc {
                let (tx, rx) = mpsc::unbounded::<Result<Frame<Bytes>, hyper::Error>>();
                let mut body = req.into_body();
                tokio::spawn(async move {
                    while let Some(frame) = body.frame().await {
                        let Ok(frame) = frame else { return };
                        if let Ok(data) = frame.into_data() {
                            let _ = tx.unbounded_send(Ok(Frame::data(data)));
                        }
                    }
                    let mut trailers = HeaderMap::new();
                    trailers.insert("grpc-status", HeaderValue::from_static("0"));
                    trailers.insert("grpc-message", HeaderValue::from_static("echoed"));
                    let _ = tx.unbounded_send(Ok(Frame::trailers(trailers)));
                });
                let resp = Response::builder()
                    .header("content-type", "application/grpc")
                    .body(StreamBody::new(rx).boxed_unsync())
                    .unwrap();
                return Ok(resp);
            }
            let mut text = format!("{} {target}", req.method());
            let path = req.uri().path().to_string();
            if path.ends_with("/headers") {
                // The request's headers as received, one `name: value` per line.
                let mut lines: Vec<String> = req
                    .headers()
                    .iter()
                    .map(|(n, v)| format!("{n}: {}", String::from_utf8_lossy(v.as_bytes())))
                    .collect();
                lines.sort();
                text = format!("{text}\n{}", lines.join("\n"));
            }
            // The request body must have come whole (a retry replays it).
            let body = req.into_body().collect().await.map(|b| b.to_bytes());
            let status = if path.starts_with("/flaky") {
                // Every second request fails, across all `/flaky*` paths.
                static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
                let n = CALLS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if n.is_multiple_of(2) { 503 } else { 200 }
            } else {
                200
            };
            if path.starts_with("/slow") {
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            if let Ok(b) = body
                && path.starts_with("/flaky")
            {
                text = format!("{text} body={}", String::from_utf8_lossy(&b));
            }
            let mut resp = Response::new(
                Full::new(Bytes::from(text))
                    .map_err(|never| match never {})
                    .boxed_unsync(),
            );
            *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
            Ok(resp)
        }

        fn full(text: &'static str) -> AppBody {
            Full::new(Bytes::from_static(text.as_bytes()))
                .map_err(|never| match never {})
                .boxed_unsync()
        }

        pub fn owned(requests: &[(&str, &str)]) -> Vec<(String, String)> {
            requests
                .iter()
                .map(|(m, t)| (m.to_string(), t.to_string()))
                .collect()
        }

        /// Runs `f` on a runtime on this thread (which is inside the client pod's namespace,
        /// so the sockets it opens are too), within TIMEOUT.
        fn block_on<T>(
            f: impl std::future::Future<Output = Result<T, String>>,
        ) -> Result<T, String> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            rt.block_on(async {
                tokio::time::timeout(TIMEOUT, f)
                    .await
                    .map_err(|_| "timed out".to_string())?
            })
        }

        async fn reply(resp: Response<Incoming>) -> Result<Reply, String> {
            let status = resp.status().as_u16();
            let header = |name: &str| {
                resp.headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string)
            };
            let content_type = header("content-type").unwrap_or_default();
            let head_grpc = header("grpc-status");
            let location = header("location");
            let served_by = header("x-served-by");
            let collected = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| format!("body: {e}"))?;
            let grpc_status = collected
                .trailers()
                .and_then(|t| t.get("grpc-status"))
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
                .or(head_grpc);
            let body = String::from_utf8_lossy(&collected.to_bytes()).into_owned();
            Ok(Reply {
                status,
                content_type,
                body,
                grpc_status,
                location,
                served_by,
            })
        }

        pub fn h1(addr: SocketAddr, requests: Vec<(String, String)>) -> Result<Vec<Reply>, String> {
            block_on(async move {
                let tcp = tokio::net::TcpStream::connect(addr)
                    .await
                    .map_err(|e| format!("connect: {e}"))?;
                let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                    .await
                    .map_err(|e| format!("handshake: {e}"))?;
                tokio::spawn(conn);
                let mut replies = Vec::new();
                for (method, target) in requests {
                    send.ready().await.map_err(|e| format!("not ready: {e}"))?;
                    let req = Request::builder()
                        .method(method.as_str())
                        .uri(target.as_str())
                        .header("host", "api.demo")
                        .body(Full::new(Bytes::from_static(b"{}")))
                        .map_err(|e| e.to_string())?;
                    let resp = send
                        .send_request(req)
                        .await
                        .map_err(|e| format!("{method} {target}: {e}"))?;
                    replies.push(reply(resp).await?);
                }
                Ok(replies)
            })
        }

        async fn h2_connect(
            addr: SocketAddr,
        ) -> Result<hyper::client::conn::http2::SendRequest<AppBodyOut>, String> {
            let tcp = tokio::net::TcpStream::connect(addr)
                .await
                .map_err(|e| format!("connect: {e}"))?;
            let (send, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
                    .await
                    .map_err(|e| format!("h2 handshake: {e}"))?;
            tokio::spawn(conn);
            Ok(send)
        }

        type AppBodyOut = UnsyncBoxBody<Bytes, Infallible>;

        pub fn h2(
            addr: SocketAddr,
            requests: Vec<(String, String, String)>,
        ) -> Result<Vec<Reply>, String> {
            block_on(async move {
                let send = h2_connect(addr).await?;
                let calls = requests.into_iter().map(|(method, target, content_type)| {
                    let mut send = send.clone();
                    async move {
                        let mut req = Request::builder()
                            .method(method.as_str())
                            .uri(format!("http://api.demo{target}"))
                            .version(hyper::Version::HTTP_2);
                        if !content_type.is_empty() {
                            req = req
                                .header("content-type", content_type)
                                .header("te", "trailers");
                        }
                        let req = req
                            .body(Full::new(Bytes::from_static(b"hello")).boxed_unsync())
                            .map_err(|e| e.to_string())?;
                        let resp = send
                            .send_request(req)
                            .await
                            .map_err(|e| format!("{method} {target}: {e}"))?;
                        reply(resp).await
                    }
                });
                futures::future::join_all(calls).await.into_iter().collect()
            })
        }

        pub fn grpc_stream(
            addr: SocketAddr,
            messages: Vec<String>,
        ) -> Result<(Vec<String>, String), String> {
            block_on(async move {
                let mut send = h2_connect(addr).await?;
                let (tx, rx) = mpsc::unbounded::<Result<Frame<Bytes>, Infallible>>();
                let req = Request::post("http://api.demo/v1/charges")
                    .version(hyper::Version::HTTP_2)
                    .header("content-type", "application/grpc")
                    .header("te", "trailers")
                    .body(StreamBody::new(rx).boxed_unsync())
                    .map_err(|e| e.to_string())?;
                let mut messages = messages.into_iter();
                let first = messages.next().unwrap_or_default();
                let _ = tx.unbounded_send(Ok(Frame::data(Bytes::from(first))));
                let resp = send
                    .send_request(req)
                    .await
                    .map_err(|e| format!("stream: {e}"))?;
                let mut body = resp.into_body();
                let mut echoes = Vec::new();
                let mut next = messages.next();
                loop {
                    let frame = body
                        .frame()
                        .await
                        .ok_or("the stream ended without trailers")?
                        .map_err(|e| format!("frame: {e}"))?;
                    if let Some(data) = frame.data_ref() {
                        echoes.push(String::from_utf8_lossy(data).into_owned());
                        // Only now, with the request still open, the next message.
                        match next.take() {
                            Some(m) => {
                                let _ = tx.unbounded_send(Ok(Frame::data(Bytes::from(m))));
                                next = messages.next();
                            }
                            None => tx.close_channel(),
                        }
                    } else if let Some(trailers) = frame.trailers_ref() {
                        let status = trailers
                            .get("grpc-status")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("?")
                            .to_string();
                        return Ok((echoes, status));
                    }
                }
            })
        }

        pub fn upgrade(addr: SocketAddr, msg: &[u8]) -> Result<Vec<u8>, String> {
            let msg = msg.to_vec();
            block_on(async move {
                let mut s = tokio::net::TcpStream::connect(addr)
                    .await
                    .map_err(|e| format!("connect: {e}"))?;
                s.write_all(
                    b"GET /ws HTTP/1.1\r\nHost: api.demo\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
                )
                .await
                .map_err(|e| e.to_string())?;
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    let n = s.read(&mut byte).await.map_err(|e| e.to_string())?;
                    if n == 0 {
                        return Err(format!(
                            "closed during the head: {}",
                            String::from_utf8_lossy(&head)
                        ));
                    }
                    head.push(byte[0]);
                }
                if !head.starts_with(b"HTTP/1.1 101") {
                    return Err(format!("no upgrade: {}", String::from_utf8_lossy(&head)));
                }
                s.write_all(&msg).await.map_err(|e| e.to_string())?;
                let mut echo = vec![0u8; msg.len()];
                s.read_exact(&mut echo).await.map_err(|e| e.to_string())?;
                Ok(echo)
            })
        }
    }

    mod certs {
        use rcgen::{
            BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
            SanType,
        };

        /// A test CA made with rcgen (the product's CA is `weft::pki`).
        pub struct TestCa {
            pub cert_pem: String,
            issuer: Issuer<'static, KeyPair>,
        }

        pub struct Issued {
            pub chain_pem: String,
            pub key_pem: String,
        }

        impl TestCa {
            pub fn new(name: &str) -> Self {
                let key = KeyPair::generate().unwrap();
                let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
                params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
                params
                    .distinguished_name
                    .push(rcgen::DnType::CommonName, name);
                let cert = params.self_signed(&key).unwrap();
                TestCa {
                    cert_pem: cert.pem(),
                    issuer: Issuer::new(params, key),
                }
            }

            pub fn issue(&self, spiffe_id: &str) -> Issued {
                let key = KeyPair::generate().unwrap();
                let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
                params.subject_alt_names = vec![SanType::URI(spiffe_id.try_into().unwrap())];
                params.extended_key_usages = vec![
                    ExtendedKeyUsagePurpose::ServerAuth,
                    ExtendedKeyUsagePurpose::ClientAuth,
                ];
                let cert = params.signed_by(&key, &self.issuer).unwrap();
                Issued {
                    chain_pem: cert.pem(),
                    key_pem: key.serialize_pem(),
                }
            }
        }
    }
}
