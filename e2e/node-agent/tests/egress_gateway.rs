//! An egress gateway as Istio's egress-gateway task builds one (issue 20 item 7): a gateway
//! installed with `weft gateway install` in its own namespace, a `Gateway` whose server takes
//! the declared host over `ISTIO_MUTUAL` (the variant of the task where sidecars reach the
//! gateway over mesh mTLS), a `DestinationRule` subset for the gateway, and one
//! `VirtualService` bound to `mesh` and the gateway whose `match.gateways` split the two hops:
//! sidecars send the host's requests to the gateway, the gateway sends them out.
//!
//! "Outside the cluster" is the node: this test serves HTTP on the node address 198.18.0.1
//! (port 18080) and records who connects; the ServiceEntry declares `partner.weft.test`
//! (STATIC, the node as its endpoint), which the client's curl resolves to the node
//! (`--resolve`). The external server must see the egress gateway pod as the source, the
//! gateway's metrics count the request (reporter `source`), the client's direct call to the
//! node is refused under REGISTRY_ONLY, and `weft check` names the unmeshed pod that reaches
//! the host without the gateway.
//!
//! A second test does the same with `resolution: DNS` (the form Istio's task uses): the
//! gateway resolves the host through its pod's resolver (CoreDNS) and dials the answer; a
//! declared host that does not resolve gets 503 UH from the gateway, which logs its name.

mod support;

use std::io::{Read, Write};
use std::net::{IpAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::{CURL_CLIENT, Namespace, deployed, wait_for, weft};

const REVISION: &str = "egress-gateway";
const NODE_IP: &str = "198.18.0.1";
const EXTERNAL_PORT: u16 = 18080;
const HOST: &str = "partner.weft.test";
const GATEWAY_NS: &str = "istio-egress";
const GATEWAY: &str = "egressgateway";
const APPS: &str = "egress-apps";
const BYPASS: &str = "egress-bypass";

/// Istio's task, the ISTIO_MUTUAL variant, with the test's host and namespaces.
fn task_yaml() -> String {
    format!(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: partner, namespace: {APPS}}}
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
metadata: {{name: {GATEWAY}, namespace: {GATEWAY_NS}}}
spec:
  selector: {{istio: {GATEWAY}}}
  servers:
  - port: {{number: 443, name: https, protocol: HTTPS}}
    hosts: [{HOST}]
    tls: {{mode: ISTIO_MUTUAL}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: egressgateway-for-partner, namespace: {APPS}}}
spec:
  host: {GATEWAY}.{GATEWAY_NS}.svc.cluster.local
  subsets:
  - name: partner
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: direct-partner-through-egress-gateway, namespace: {APPS}}}
spec:
  hosts: [{HOST}]
  gateways: [{GATEWAY_NS}/{GATEWAY}, mesh]
  http:
  - match:
    - gateways: [mesh]
      port: 80
    route:
    - destination:
        host: {GATEWAY}.{GATEWAY_NS}.svc.cluster.local
        subset: partner
        port: {{number: 443}}
      weight: 100
  - match:
    - gateways: [{GATEWAY_NS}/{GATEWAY}]
      port: 443
    route:
    - destination:
        host: {HOST}
        port: {{number: 80}}
      weight: 100
"#
    )
}

/// Who connected to the external server: (source address, request line and Host).
type Seen = Arc<Mutex<Vec<(IpAddr, String)>>>;

/// An HTTP server on the node address: answers every request 200 and records its source.
/// The listener thread ends with the test process.
fn external_server() -> Seen {
    let listener = TcpListener::bind((NODE_IP, EXTERNAL_PORT)).expect("bind the node address");
    let seen: Seen = Arc::default();
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
                let text = String::from_utf8_lossy(&head).into_owned();
                if let Ok(peer) = stream.peer_addr() {
                    record
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push((peer.ip(), text));
                }
                let _ = stream.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 8\r\nconnection: close\r\n\r\nexternal",
                );
            });
        }
    });
    seen
}

fn ok(out: std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The HTTP status the pod's curl saw for `url` (`000`: no HTTP answer).
fn curl(ns: &Namespace, pod: &str, url: &str) -> String {
    let resolve = format!("{HOST}:80:{NODE_IP}");
    let out = ns.kubectl(&[
        "exec",
        pod,
        "-c",
        "client",
        "--",
        "curl",
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "--max-time",
        "10",
        "--resolve",
        &resolve,
        url,
    ]);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The lines of `text` for `metric` whose labels include every pair of `labels`.
fn series<'a>(text: &'a str, metric: &str, labels: &[(&str, &str)]) -> Vec<&'a str> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{metric}{{")))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .collect()
}

fn value(line: &str) -> f64 {
    line.rsplit(' ')
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

fn sources(seen: &Seen, path: &str) -> Vec<IpAddr> {
    seen.lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .filter(|(_, head)| head.starts_with(&format!("GET {path} ")))
        .map(|(ip, _)| *ip)
        .collect()
}

#[test]
fn declared_traffic_leaves_through_the_egress_gateway_over_mesh_mtls() {
    let c = deployed();
    let seen = external_server();
    c.apply_server_side(&format!(
        r#"
apiVersion: mesh.weft.dev/v1alpha1
kind: MeshConfig
metadata: {{name: {REVISION}, namespace: weft-system}}
spec:
  proxy: {{image: "ghcr.io/weft-mesh/weft:0.1.0"}}
  traffic: {{outboundTrafficPolicy: REGISTRY_ONLY}}
  accessLog: {{enabled: true}}
"#
    ));
    // The revision is read by the operator (REGISTRY_ONLY is not reported unsupported).
    wait_for(
        Duration::from_secs(30),
        || {
            c.ok(&[
                "-n",
                "weft-system",
                "get",
                "meshconfig",
                REVISION,
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Unsupported\")].status}",
            ])
        },
        |s| s == "False",
    );
    let gw_ns = c.namespace(GATEWAY_NS);
    let apps = c.namespace(APPS);
    let bypass = c.namespace(BYPASS);
    c.ok(&[
        "label",
        "namespace",
        APPS,
        &format!("istio.io/rev={REVISION}"),
    ]);
    ok(weft(&[
        "gateway",
        "install",
        "--name",
        GATEWAY,
        "--namespace",
        GATEWAY_NS,
        "--revision",
        REVISION,
    ]));
    c.apply(&task_yaml());
    apps.apply(CURL_CLIENT);
    bypass.apply(CURL_CLIENT);
    gw_ns.ok(&[
        "rollout",
        "status",
        &format!("deployment/{GATEWAY}"),
        "--timeout=180s",
    ]);
    for ns in [&apps, &bypass] {
        ns.ok(&[
            "wait",
            "--for=condition=Ready",
            "pod/client",
            "--timeout=90s",
        ]);
    }
    let gateway_pod = gw_ns.jsonpath(
        &format!("pods -l istio={GATEWAY}"),
        "{.items[0].metadata.name}",
    );
    let gateway_ip: IpAddr = gw_ns
        .jsonpath(&format!("pod {gateway_pod}"), "{.status.podIP}")
        .parse()
        .expect("the gateway pod's IP");
    let client_ip: IpAddr = apps
        .jsonpath("pod client", "{.status.podIP}")
        .parse()
        .expect("the client pod's IP");

    // The gateway routes the host on its listener (`weft proxy-config routes`).
    let routes = ok(weft(&[
        "proxy-config",
        "routes",
        &gateway_pod,
        "-n",
        GATEWAY_NS,
    ]));
    assert!(routes.contains(&format!("gateway {HOST}")), "{routes}");

    // Through the gateway: the external server sees the gateway pod, not the client.
    let url = format!("http://{HOST}/via-gateway");
    let code = wait_for(
        Duration::from_secs(60),
        || curl(&apps, "client", &url),
        |code| code == "200",
    );
    assert_eq!(code, "200");
    let from = sources(&seen, "/via-gateway");
    assert!(!from.is_empty(), "the external server saw no request");
    assert!(
        from.iter().all(|ip| *ip == gateway_ip),
        "the external server must see the egress gateway pod {gateway_ip} as source (client {client_ip}): {from:?}"
    );
    let heads = seen.lock().unwrap_or_else(|p| p.into_inner()).clone();
    assert!(
        heads
            .iter()
            .any(|(_, h)| h.to_ascii_lowercase().contains(&format!("host: {HOST}"))),
        "{heads:?}"
    );

    // The gateway counts it as Istio's gateways do (reporter source), towards the host.
    let gw_metrics = gw_ns.proxy_metrics(&gateway_pod);
    let out = series(
        &gw_metrics,
        "istio_requests_total",
        &[
            ("reporter", "source"),
            ("destination_service", HOST),
            ("response_code", "200"),
        ],
    );
    assert!(
        out.iter().map(|l| value(l)).sum::<f64>() >= 1.0,
        "no gateway series for {HOST}: {}",
        gw_metrics
            .lines()
            .filter(|l| l.starts_with("istio_requests_total"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // The client's sidecar sent it to the gateway over mTLS, the gateway's identity proven.
    let sa = gw_ns.jsonpath(&format!("pod {gateway_pod}"), "{.spec.serviceAccountName}");
    let principal = format!("spiffe://cluster.local/ns/{GATEWAY_NS}/sa/{sa}");
    let client_metrics = apps.proxy_metrics("client");
    let to_gateway = series(
        &client_metrics,
        "istio_requests_total",
        &[
            ("reporter", "source"),
            (
                "destination_service",
                &format!("{GATEWAY}.{GATEWAY_NS}.svc.cluster.local"),
            ),
            ("destination_principal", &principal),
            ("response_code", "200"),
        ],
    );
    assert!(
        !to_gateway.is_empty(),
        "no mTLS series from the client to the gateway ({principal}): {}",
        client_metrics
            .lines()
            .filter(|l| l.starts_with("istio_requests_total"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // Plaintext to the ISTIO_MUTUAL port is not served (from the unmeshed pod).
    let plain = format!("http://{GATEWAY}.{GATEWAY_NS}.svc.cluster.local:443/");
    assert_eq!(curl(&bypass, "client", &plain), "000");

    // The client cannot go around the gateway: REGISTRY_ONLY refuses the node's port.
    let direct = format!("http://{NODE_IP}:{EXTERNAL_PORT}/direct-from-mesh");
    assert_eq!(curl(&apps, "client", &direct), "502");
    assert!(sources(&seen, "/direct-from-mesh").is_empty());

    // An unmeshed pod reaches the host directly; `weft check` names it.
    let around = format!("http://{NODE_IP}:{EXTERNAL_PORT}/around");
    assert_eq!(curl(&bypass, "client", &around), "200");
    let check = weft(&["check"]);
    let text = String::from_utf8_lossy(&check.stdout).into_owned()
        + &String::from_utf8_lossy(&check.stderr);
    let line = text
        .lines()
        .find(|l| l.contains("egress gateway bypass"))
        .unwrap_or_else(|| panic!("weft check has no egress-gateway verdict: {text}"));
    assert!(
        line.contains(&format!(
            "{BYPASS}/client reaches {HOST}:80 directly (no sidecar)"
        )),
        "{line}"
    );
    assert!(
        line.contains(&format!(
            "{HOST}:80 via {GATEWAY}.{GATEWAY_NS}.svc.cluster.local"
        )),
        "{line}"
    );
    assert!(
        !line.contains(&format!("{APPS}/client reaches")),
        "the meshed client goes through the gateway: {line}"
    );
}

// === resolution: DNS (Istio's own egress-gateway task declares its host so) ===

const DNS_GATEWAY_NS: &str = "istio-egress-dns";
const DNS_GATEWAY: &str = "egressgateway-dns";
const DNS_APPS: &str = "egress-dns-apps";
/// A name the cluster's CoreDNS resolves to the node address without any Service or test
/// DNS server: its `kubernetes` plugin runs with `pods insecure` (e2e/cluster/coredns.yaml), so
/// `<a-b-c-d>.<namespace>.pod.cluster.local` answers `a.b.c.d`. It stands for an external
/// host the gateway pod's resolver knows (CoreDNS serves `cluster.local` only here; the
/// node agent implements no `hostAliases`); it is not a Kubernetes Service, so weft treats it
/// as any external name.
const DNS_HOST: &str = "198-18-0-1.egress-dns-apps.pod.cluster.local";
/// A declared host no nameserver knows: the gateway answers 503 for it.
const NX_HOST: &str = "nowhere.weft.test";
/// The entries' port (what the app dials) and their `targetPort` (where the node's server
/// listens, which the gateway dials on the resolved address).
const DNS_PORT: u16 = 8090;
const DNS_TARGET: u16 = 18090;

/// The task with `resolution: DNS` and no endpoints, one VirtualService per host. The entries
/// are exported to their namespace and the gateway's only, so no other test's client sees them.
fn dns_task_yaml() -> String {
    let entry = |name: &str, host: &str| {
        format!(
            r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}, namespace: {DNS_APPS}}}
spec:
  hosts: [{host}]
  location: MESH_EXTERNAL
  resolution: DNS
  exportTo: [".", {DNS_GATEWAY_NS}]
  ports:
  - {{number: {DNS_PORT}, name: http, protocol: HTTP, targetPort: {DNS_TARGET}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: {name}-through-egress-gateway, namespace: {DNS_APPS}}}
spec:
  hosts: [{host}]
  gateways: [{DNS_GATEWAY_NS}/{DNS_GATEWAY}, mesh]
  http:
  - match:
    - gateways: [mesh]
      port: {DNS_PORT}
    route:
    - destination:
        host: {DNS_GATEWAY}.{DNS_GATEWAY_NS}.svc.cluster.local
        subset: external
        port: {{number: 443}}
  - match:
    - gateways: [{DNS_GATEWAY_NS}/{DNS_GATEWAY}]
      port: 443
    route:
    - destination:
        host: {host}
        port: {{number: {DNS_PORT}}}
---
"#
        )
    };
    format!(
        r#"{}{}
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: {DNS_GATEWAY}, namespace: {DNS_GATEWAY_NS}}}
spec:
  selector: {{istio: {DNS_GATEWAY}}}
  servers:
  - port: {{number: 443, name: https, protocol: HTTPS}}
    hosts: [{DNS_HOST}, {NX_HOST}]
    tls: {{mode: ISTIO_MUTUAL}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: egressgateway-for-external, namespace: {DNS_APPS}}}
spec:
  host: {DNS_GATEWAY}.{DNS_GATEWAY_NS}.svc.cluster.local
  subsets:
  - name: external
"#,
        entry("partner-dns", DNS_HOST),
        entry("nowhere", NX_HOST)
    )
}

/// An HTTP server on the node address, port `port`, as [`external_server`].
fn external_server_on(port: u16) -> Seen {
    let listener = TcpListener::bind((NODE_IP, port)).expect("bind the node address");
    let seen: Seen = Arc::default();
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
                if let Ok(peer) = stream.peer_addr() {
                    record
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push((peer.ip(), String::from_utf8_lossy(&head).into_owned()));
                }
                let _ = stream.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 8\r\nconnection: close\r\n\r\nexternal",
                );
            });
        }
    });
    seen
}

/// The HTTP status the pod's curl saw for `url`, with `resolve` pins (`host:port:addr`).
fn curl_pinned(ns: &Namespace, pod: &str, url: &str, resolve: &[String]) -> String {
    curl_pinned_with("-s", ns, pod, url, resolve)
}

/// [`curl_pinned`] with curl's flags `flags` (`-sk`: without verifying the server).
fn curl_pinned_with(
    flags: &str,
    ns: &Namespace,
    pod: &str,
    url: &str,
    resolve: &[String],
) -> String {
    let mut args = vec![
        "exec",
        pod,
        "-c",
        "client",
        "--",
        "curl",
        flags,
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "--max-time",
        "10",
    ];
    for r in resolve {
        args.extend(["--resolve", r.as_str()]);
    }
    args.push(url);
    let out = ns.kubectl(&args);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn a_dns_entry_leaves_through_the_egress_gateway_which_resolves_its_host() {
    let c = deployed();
    let seen = external_server_on(DNS_TARGET);
    c.apply_server_side(&format!(
        r#"
apiVersion: mesh.weft.dev/v1alpha1
kind: MeshConfig
metadata: {{name: {REVISION}, namespace: weft-system}}
spec:
  proxy: {{image: "ghcr.io/weft-mesh/weft:0.1.0"}}
  traffic: {{outboundTrafficPolicy: REGISTRY_ONLY}}
  accessLog: {{enabled: true}}
"#
    ));
    let gw_ns = c.namespace(DNS_GATEWAY_NS);
    let apps = c.namespace(DNS_APPS);
    c.ok(&[
        "label",
        "namespace",
        DNS_APPS,
        &format!("istio.io/rev={REVISION}"),
    ]);
    ok(weft(&[
        "gateway",
        "install",
        "--name",
        DNS_GATEWAY,
        "--namespace",
        DNS_GATEWAY_NS,
        "--revision",
        REVISION,
    ]));
    c.apply(&dns_task_yaml());
    apps.apply(CURL_CLIENT);
    gw_ns.ok(&[
        "rollout",
        "status",
        &format!("deployment/{DNS_GATEWAY}"),
        "--timeout=180s",
    ]);
    apps.ok(&[
        "wait",
        "--for=condition=Ready",
        "pod/client",
        "--timeout=90s",
    ]);
    let gateway_pod = gw_ns.jsonpath(
        &format!("pods -l istio={DNS_GATEWAY}"),
        "{.items[0].metadata.name}",
    );
    let gateway_ip: IpAddr = gw_ns
        .jsonpath(&format!("pod {gateway_pod}"), "{.status.podIP}")
        .parse()
        .expect("the gateway pod's IP");

    // Both entries are accepted, and no VirtualService is refused for their resolution (a
    // gateway route to a DNS host was refused by name before).
    for se in ["partner-dns", "nowhere"] {
        let accepted = wait_for(
            Duration::from_secs(30),
            || {
                apps.jsonpath(
                    &format!("serviceentry {se}"),
                    "{.status.conditions[?(@.type==\"WeftAccepted\")].status}",
                )
            },
            |s| s == "True",
        );
        assert_eq!(accepted, "True", "{se}");
    }
    for vs in [
        "partner-dns-through-egress-gateway",
        "nowhere-through-egress-gateway",
    ] {
        let message = apps.jsonpath(
            &format!("virtualservice {vs}"),
            "{.status.conditions[?(@.type==\"WeftAccepted\")].message}",
        );
        assert!(!message.contains("resolution"), "{vs}: {message}");
    }

    // The client resolves the host through CoreDNS itself (no pin), its sidecar sends the
    // request to the gateway, the gateway resolves the host and dials targetPort there.
    let url = format!("http://{DNS_HOST}:{DNS_PORT}/dns-via-gateway");
    let code = wait_for(
        Duration::from_secs(60),
        || curl_pinned(&apps, "client", &url, &[]),
        |code| code == "200",
    );
    assert_eq!(code, "200");
    let from = sources(&seen, "/dns-via-gateway");
    assert!(!from.is_empty(), "the external server saw no request");
    assert!(
        from.iter().all(|ip| *ip == gateway_ip),
        "the external server must see the egress gateway pod {gateway_ip}: {from:?}"
    );
    let gw_metrics = gw_ns.proxy_metrics(&gateway_pod);
    let out = series(
        &gw_metrics,
        "istio_requests_total",
        &[
            ("reporter", "source"),
            ("destination_service", DNS_HOST),
            ("response_code", "200"),
        ],
    );
    assert!(
        out.iter().map(|l| value(l)).sum::<f64>() >= 1.0,
        "no gateway series for {DNS_HOST}: {gw_metrics}"
    );

    // A declared host that does not resolve: the gateway answers 503 UH and says which.
    let nx = format!("http://{NX_HOST}:{DNS_PORT}/nowhere");
    let pin = [format!("{NX_HOST}:{DNS_PORT}:{NODE_IP}")];
    assert_eq!(curl_pinned(&apps, "client", &nx, &pin), "503");
    assert!(sources(&seen, "/nowhere").is_empty());
    let gw_metrics = gw_ns.proxy_metrics(&gateway_pod);
    let failed = series(
        &gw_metrics,
        "istio_requests_total",
        &[
            ("reporter", "source"),
            ("destination_service", NX_HOST),
            ("response_code", "503"),
            ("response_flags", "UH"),
        ],
    );
    assert!(
        !failed.is_empty(),
        "no 503 UH series for {NX_HOST}: {gw_metrics}"
    );
    let logs = gw_ns.ok(&["logs", &gateway_pod, "-c", "istio-proxy"]);
    assert!(
        logs.lines()
            .any(|l| l.contains(NX_HOST) && l.contains("DNS destination")),
        "the gateway's log names the host that does not resolve: {logs}"
    );

    // The client cannot go around the gateway to the resolved address.
    let direct = format!("http://{NODE_IP}:{DNS_TARGET}/dns-direct");
    assert_eq!(curl_pinned(&apps, "client", &direct, &[]), "502");
    assert!(sources(&seen, "/dns-direct").is_empty());
}

// === TLS passthrough (the task's HTTPS variant): the app's own TLS through the gateway ===

const TLS_GATEWAY_NS: &str = "istio-egress-tls";
const TLS_GATEWAY: &str = "egressgateway-tls";
const TLS_APPS: &str = "egress-tls-apps";
const TLS_HOST: &str = "partner-tls.weft.test";
/// Where the node's TLS server listens (the entry's STATIC endpoint port).
const TLS_TARGET: u16 = 18453;

/// Istio's egress-gateway task, the HTTPS variant (its `tls` routes, a `PASSTHROUGH` server),
/// with the test's host, namespaces and a STATIC entry (the node as its endpoint).
fn tls_task_yaml() -> String {
    format!(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: partner-tls, namespace: {TLS_APPS}}}
spec:
  hosts: [{TLS_HOST}]
  location: MESH_EXTERNAL
  resolution: STATIC
  exportTo: [".", {TLS_GATEWAY_NS}]
  ports:
  - {{number: 443, name: tls, protocol: TLS}}
  endpoints:
  - address: {NODE_IP}
    ports: {{tls: {TLS_TARGET}}}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: {TLS_GATEWAY}, namespace: {TLS_GATEWAY_NS}}}
spec:
  selector: {{istio: {TLS_GATEWAY}}}
  servers:
  - port: {{number: 443, name: tls, protocol: TLS}}
    hosts: [{TLS_HOST}]
    tls: {{mode: PASSTHROUGH}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: egressgateway-for-partner-tls, namespace: {TLS_APPS}}}
spec:
  host: {TLS_GATEWAY}.{TLS_GATEWAY_NS}.svc.cluster.local
  subsets:
  - name: partner
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: direct-partner-tls-through-egress-gateway, namespace: {TLS_APPS}}}
spec:
  hosts: [{TLS_HOST}]
  gateways: [{TLS_GATEWAY_NS}/{TLS_GATEWAY}, mesh]
  tls:
  - match:
    - gateways: [mesh]
      port: 443
      sniHosts: [{TLS_HOST}]
    route:
    - destination:
        host: {TLS_GATEWAY}.{TLS_GATEWAY_NS}.svc.cluster.local
        subset: partner
        port: {{number: 443}}
  - match:
    - gateways: [{TLS_GATEWAY_NS}/{TLS_GATEWAY}]
      port: 443
      sniHosts: [{TLS_HOST}]
    route:
    - destination:
        host: {TLS_HOST}
        port: {{number: 443}}
      weight: 100
"#
    )
}

/// `openssl s_server -www` (200 and a status page for every GET) on the node address with a
/// self-signed certificate for [`TLS_HOST`]; killed when dropped.
struct TlsServer(std::process::Child);

impl Drop for TlsServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn external_tls_server() -> TlsServer {
    use std::process::{Command, Stdio};
    let dir = std::env::temp_dir().join(format!("weft-egress-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let (key, cert) = (dir.join("key.pem"), dir.join("cert.pem"));
    let made = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:P-256", "-nodes", "-days", "1"])
        .args(["-subj", &format!("/CN={TLS_HOST}")])
        .args(["-addext", &format!("subjectAltName=DNS:{TLS_HOST}")])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("openssl req");
    assert!(made.success(), "openssl could not make the certificate");
    let child = Command::new("openssl")
        .args(["s_server", "-quiet", "-www", "-accept"])
        .arg(format!("{NODE_IP}:{TLS_TARGET}"))
        .arg("-cert")
        .arg(&cert)
        .arg("-key")
        .arg(&key)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("openssl s_server");
    TlsServer(child)
}

/// The sum of the series of `metric` with every pair of `labels`.
fn total(text: &str, metric: &str, labels: &[(&str, &str)]) -> f64 {
    series(text, metric, labels).iter().map(|l| value(l)).sum()
}

#[test]
fn a_tls_host_leaves_through_the_egress_gateways_passthrough_server_by_sni() {
    let c = deployed();
    let _server = external_tls_server();
    c.apply_server_side(&format!(
        r#"
apiVersion: mesh.weft.dev/v1alpha1
kind: MeshConfig
metadata: {{name: {REVISION}, namespace: weft-system}}
spec:
  proxy: {{image: "ghcr.io/weft-mesh/weft:0.1.0"}}
  traffic: {{outboundTrafficPolicy: REGISTRY_ONLY}}
  accessLog: {{enabled: true}}
"#
    ));
    let gw_ns = c.namespace(TLS_GATEWAY_NS);
    let apps = c.namespace(TLS_APPS);
    c.ok(&[
        "label",
        "namespace",
        TLS_APPS,
        &format!("istio.io/rev={REVISION}"),
    ]);
    ok(weft(&[
        "gateway",
        "install",
        "--name",
        TLS_GATEWAY,
        "--namespace",
        TLS_GATEWAY_NS,
        "--revision",
        REVISION,
    ]));
    c.apply(&tls_task_yaml());
    apps.apply(CURL_CLIENT);
    gw_ns.ok(&[
        "rollout",
        "status",
        &format!("deployment/{TLS_GATEWAY}"),
        "--timeout=180s",
    ]);
    apps.ok(&[
        "wait",
        "--for=condition=Ready",
        "pod/client",
        "--timeout=90s",
    ]);
    let gateway_pod = gw_ns.jsonpath(
        &format!("pods -l istio={TLS_GATEWAY}"),
        "{.items[0].metadata.name}",
    );

    // The VirtualService is applied as written (its tls routes were refused for sidecars).
    let vs = "virtualservice direct-partner-tls-through-egress-gateway";
    let accepted = wait_for(
        Duration::from_secs(30),
        || {
            apps.jsonpath(
                vs,
                "{.status.conditions[?(@.type==\"WeftAccepted\")].status}",
            )
        },
        |s| s == "True",
    );
    let message = apps.jsonpath(
        vs,
        "{.status.conditions[?(@.type==\"WeftAccepted\")].message}",
    );
    assert_eq!(accepted, "True", "{message}");

    // The app's own TLS, end to end: curl verifies nothing (a self-signed server) but the
    // server's 200 came through the client's sidecar and the gateway, picked by SNI.
    let url = format!("https://{TLS_HOST}/via-gateway");
    let pin = [format!("{TLS_HOST}:443:{NODE_IP}")];
    let code = wait_for(
        Duration::from_secs(60),
        || curl_pinned_with("-sk", &apps, "client", &url, &pin),
        |code| code == "200",
    );
    assert_eq!(code, "200");
    // The client's sidecar relayed it to the gateway's Service, the gateway to the host.
    let client_metrics = apps.proxy_metrics("client");
    let to_gateway = total(
        &client_metrics,
        "istio_tcp_connections_opened_total",
        &[
            ("reporter", "source"),
            (
                "destination_service",
                &format!("{TLS_GATEWAY}.{TLS_GATEWAY_NS}.svc.cluster.local"),
            ),
        ],
    );
    assert!(to_gateway >= 1.0, "{client_metrics}");
    let gw_metrics = gw_ns.proxy_metrics(&gateway_pod);
    let out = total(
        &gw_metrics,
        "istio_tcp_connections_opened_total",
        &[("reporter", "source"), ("destination_service", TLS_HOST)],
    );
    assert!(out >= 1.0, "no gateway series for {TLS_HOST}: {gw_metrics}");

    // Around the gateway: the node's port itself is not declared; REGISTRY_ONLY closes it.
    let direct = format!("https://{NODE_IP}:{TLS_TARGET}/direct");
    assert_eq!(
        curl_pinned_with("-sk", &apps, "client", &direct, &[]),
        "000"
    );
}
