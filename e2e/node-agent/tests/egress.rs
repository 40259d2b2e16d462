//! Egress lock-down as seed 003 section 6 writes it (issue 20 items 6 and 8): a revision with
//! `outboundTrafficPolicy: REGISTRY_ONLY` (weft's MeshConfig carries what the seed's shared
//! Istio ConfigMap says: REGISTRY_ONLY and access logs on) and the seed's ServiceEntry for
//! `api.payments-partner.com:443` (`protocol: TLS`, `resolution: DNS`), applied verbatim.
//!
//! "Outside the cluster" is the node: the test runs a TLS server (`openssl s_server -www`,
//! which answers 200) on the node address 198.18.0.1, port 443 (the seed's port, so the entry
//! applies unchanged). The client pod's curl resolves both the declared name and an undeclared
//! one (`example.com`, the seed's verify step 4) to that address (`--resolve`, a hosts entry
//! for one command: the node agent does not implement `hostAliases`), so no byte ever leaves
//! 198.18.0.0/16 whatever the proxy decides. The proxy must tell them apart by SNI alone.

mod support;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use support::{Namespace, deployed, wait_for, weft};

const REVISION: &str = "egress-lockdown";
/// The node address (e2e/cluster/env.sh NODE_IP): "outside the cluster".
const NODE_IP: &str = "198.18.0.1";

/// Seed 003 section 6, verbatim.
const SEED_SERVICE_ENTRY: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: contoso-payments-api
  namespace: payments
spec:
  hosts:
  - api.payments-partner.com
  ports:
  - number: 443
    name: tls
    protocol: TLS
  resolution: DNS
  location: MESH_EXTERNAL
"#;

/// The issue's bad input: a wildcard host cannot be resolved by DNS (Istio refuses it).
const WILDCARD_DNS: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: wildcard-dns
  namespace: payments
spec:
  hosts:
  - "*.payments-partner.com"
  ports:
  - number: 443
    name: tls
    protocol: TLS
  resolution: DNS
"#;

const CLIENT: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: productpage, labels: {app: productpage}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: client
    image: curlimages/curl
    command: [sleep, "86400"]
"#;

/// The external server, stopped (its own process) when dropped.
struct External {
    child: Child,
    dir: std::path::PathBuf,
}

impl Drop for External {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A TLS server on the node address, port 443, with a self-signed certificate for the
/// declared name; `-www` answers every GET with 200 and a status page.
fn external_tls_server() -> External {
    external_tls_server_on(443)
}

/// The same on another port (each test its own, so they can run side by side).
fn external_tls_server_on(port: u16) -> External {
    let dir = std::env::temp_dir().join(format!("weft-egress-{}-{port}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let made = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ])
        .args(["-subj", "/CN=api.payments-partner.com", "-days", "1"])
        .args(["-addext", "subjectAltName=DNS:api.payments-partner.com"])
        .arg("-keyout")
        .arg(dir.join("key.pem"))
        .arg("-out")
        .arg(dir.join("cert.pem"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("openssl req");
    assert!(
        made.success(),
        "openssl could not make the server certificate"
    );
    let child = Command::new("openssl")
        .args(["s_server", "-quiet", "-www", "-accept"])
        .arg(format!("{NODE_IP}:{port}"))
        .arg("-cert")
        .arg(dir.join("cert.pem"))
        .arg("-key")
        .arg(dir.join("key.pem"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("openssl s_server");
    let server = External { child, dir };
    // From the node itself (no proxy in the way), the server answers 200.
    wait_for(
        Duration::from_secs(20),
        || curl_from_node_on("api.payments-partner.com", port),
        |code| code == "200",
    );
    server
}

fn curl_from_node_on(host: &str, port: u16) -> String {
    let out = Command::new("curl")
        .args([
            "-sk",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "5",
        ])
        .arg("--resolve")
        .arg(format!("{host}:{port}:{NODE_IP}"))
        .arg(format!("https://{host}:{port}/"))
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The HTTP status curl saw from the client pod for `url`, `host` resolved to the node
/// address on `port` (`000`: no HTTP answer, the connection was closed).
fn curl_from_pod(ns: &Namespace, host: &str, port: u16, url: &str) -> String {
    let resolve = format!("{host}:{port}:{NODE_IP}");
    let out = ns.kubectl(&[
        "exec",
        "productpage",
        "-c",
        "client",
        "--",
        "curl",
        "-sk",
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

#[test]
fn registry_only_blocks_undeclared_hosts_and_lets_the_seeds_service_entry_through_by_sni() {
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
    // REGISTRY_ONLY is no longer reported as unsupported.
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
    let ns = c.namespace("payments");
    ns.cluster.ok(&[
        "label",
        "namespace",
        "payments",
        &format!("istio.io/rev={REVISION}"),
    ]);
    ns.apply(SEED_SERVICE_ENTRY);
    ns.apply(CLIENT);
    ns.ok(&[
        "wait",
        "--for=condition=Ready",
        "pod/productpage",
        "--timeout=90s",
    ]);

    // The declared host, told apart by SNI only (the same address and port as the next).
    let declared = wait_for(
        Duration::from_secs(30),
        || {
            curl_from_pod(
                &ns,
                "api.payments-partner.com",
                443,
                "https://api.payments-partner.com/",
            )
        },
        |code| code == "200",
    );
    assert_eq!(declared, "200");
    // Seed 003 verify step 4: an undeclared host MUST fail (502 or 000, not 200).
    let undeclared = curl_from_pod(&ns, "example.com", 443, "https://example.com/");
    assert_eq!(
        undeclared, "000",
        "TLS to an undeclared host is closed, not answered"
    );
    // Plain HTTP to an undeclared host: the proxy's own 502 (Istio's block_all route).
    let http = curl_from_pod(&ns, "example.com", 80, "http://example.com/");
    assert_eq!(http, "502");

    // Counted as Istio counts them, in the client proxy's /stats/prometheus.
    let metrics = ns.proxy_metrics("productpage");
    let blocked_tcp = series(
        &metrics,
        "istio_tcp_connections_opened_total",
        &[
            ("reporter", "source"),
            ("destination_service_name", "BlackHoleCluster"),
        ],
    );
    assert!(
        blocked_tcp.iter().map(|l| value(l)).sum::<f64>() >= 1.0,
        "no BlackHoleCluster TCP series: {blocked_tcp:?}"
    );
    let blocked_http = series(
        &metrics,
        "istio_requests_total",
        &[
            ("destination_service_name", "BlackHoleCluster"),
            ("destination_service", "example.com"),
            ("response_code", "502"),
        ],
    );
    assert_eq!(blocked_http.len(), 1, "{blocked_http:?}");
    assert_eq!(value(blocked_http[0]), 1.0);
    let allowed = series(
        &metrics,
        "istio_tcp_connections_opened_total",
        &[
            ("destination_service", "api.payments-partner.com"),
            ("destination_service_name", "api.payments-partner.com"),
            ("destination_service_namespace", "payments"),
        ],
    );
    assert!(
        !allowed.is_empty(),
        "the declared host is labelled by its name"
    );
    // `weft proxy-config egress` shows the pod's table and its policy.
    let shown = weft(&["proxy-config", "egress", "productpage", "-n", "payments"]);
    let (table, policy) = (
        String::from_utf8_lossy(&shown.stdout),
        String::from_utf8_lossy(&shown.stderr),
    );
    assert!(shown.status.success(), "{policy}");
    assert!(policy.contains("RegistryOnly"), "{policy}");
    let row = table
        .lines()
        .find(|l| l.starts_with("api.payments-partner.com"))
        .unwrap_or_else(|| panic!("no row for the declared host: {table}"));
    for cell in ["443", "tls", "DNS", "payments/contoso-payments-api"] {
        assert!(row.contains(cell), "{row}");
    }
    // And logged: the access log (on in this revision) names the black hole.
    let logs = ns.ok(&["logs", "productpage", "-c", "weft-proxy"]);
    assert!(
        logs.contains("BlackHoleCluster"),
        "no access log line for the refusal"
    );

    // Bad input: a wildcard host with resolution DNS is refused as Istio refuses it, by name,
    // and the declared host keeps working.
    ns.apply(WILDCARD_DNS);
    let condition = wait_for(
        Duration::from_secs(30),
        || {
            ns.ok(&[
                "get", "serviceentry", "wildcard-dns", "-o",
                "jsonpath={.status.conditions[?(@.type==\"WeftAccepted\")].status} {.status.conditions[?(@.type==\"WeftAccepted\")].message}",
            ])
        },
        |s| s.starts_with("False"),
    );
    assert!(condition.contains("hosts[0]"), "{condition}");
    assert!(condition.contains("hosts must be FQDN"), "{condition}");
    let seed_accepted = ns.ok(&[
        "get",
        "serviceentry",
        "contoso-payments-api",
        "-o",
        "jsonpath={.status.conditions[?(@.type==\"WeftAccepted\")].status}",
    ]);
    assert_eq!(seed_accepted, "True");
    assert_eq!(
        curl_from_pod(
            &ns,
            "pay.payments-partner.com",
            443,
            "https://pay.payments-partner.com/"
        ),
        "000",
        "the refused wildcard declares nothing"
    );
    assert_eq!(
        curl_from_pod(
            &ns,
            "api.payments-partner.com",
            443,
            "https://api.payments-partner.com/"
        ),
        "200"
    );
}

// === DNS proxying (issue 20 item 6, DNS) ===

/// The pod opts in as with Istio: ProxyConfig `proxyMetadata.ISTIO_META_DNS_CAPTURE: "true"`.
const DNS_CLIENT: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: dns-client
  labels: {app: dns-client}
  annotations:
    proxy.istio.io/config: |
      proxyMetadata:
        ISTIO_META_DNS_CAPTURE: "true"
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: client
    image: curlimages/curl
    command: [sleep, "86400"]
"#;

/// Names CoreDNS does not know (`.weft.test`): only the proxy's DNS server can answer them.
/// `partner-api` is STATIC with the node as its endpoint and no `addresses`, so the operator
/// allocates it an address; `dns-only` is `resolution: DNS` without addresses (allocated too,
/// but the proxy finds no real address for it through CoreDNS).
const DNS_ENTRIES: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: partner-api, namespace: dns-egress}
spec:
  hosts: [partner-api.weft.test]
  ports: [{number: 8443, name: tls, protocol: TLS}]
  resolution: STATIC
  location: MESH_EXTERNAL
  endpoints: [{address: 198.18.0.1}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: dns-only, namespace: dns-egress}
spec:
  hosts: [dns-only.weft.test]
  ports: [{number: 8443, name: tls, protocol: TLS}]
  resolution: DNS
  location: MESH_EXTERNAL
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: named-endpoints, namespace: dns-egress}
spec:
  hosts: [named-endpoints.weft.test]
  ports: [{number: 8443, name: tls, protocol: TLS}]
  resolution: DNS
  location: MESH_EXTERNAL
  endpoints:
  - address: nowhere.weft.test
  - address: partner-node.dns-egress.svc.cluster.local
---
# A name CoreDNS resolves to the node (the "external" partner): a headless Service without
# selector and its EndpointSlice.
apiVersion: v1
kind: Service
metadata: {name: partner-node, namespace: dns-egress}
spec:
  clusterIP: None
  ports: [{name: tls, port: 8443}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: partner-node
  namespace: dns-egress
  labels: {kubernetes.io/service-name: partner-node}
addressType: IPv4
ports: [{name: tls, port: 8443}]
endpoints: [{addresses: [198.18.0.1]}]
"#;

/// `curl -w '%{http_code} %{remote_ip}'` from the DNS client, the name resolved by the pod's
/// resolver (no `--resolve` unless `pin` gives one); the output and curl's stderr.
fn curl_dns(ns: &Namespace, url: &str, pin: Option<&str>) -> (String, String) {
    let mut args = vec![
        "exec",
        "dns-client",
        "-c",
        "client",
        "--",
        "curl",
        "-skS",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code} %{remote_ip}",
        "--max-time",
        "10",
    ];
    if let Some(pin) = pin {
        args.extend(["--resolve", pin]);
    }
    args.push(url);
    let out = ns.kubectl(&args);
    (
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        String::from_utf8_lossy(&out.stderr).trim().to_string(),
    )
}

/// In the allocation slice docs/egress.md names (198.19.240.0/21).
fn allocated(ip: &str) -> bool {
    ip.parse::<std::net::Ipv4Addr>()
        .map(|a| {
            let o = a.octets();
            o[0] == 198 && o[1] == 19 && (240..=247).contains(&o[2])
        })
        .unwrap_or(false)
}

#[test]
fn dns_capture_answers_declared_hosts_from_the_table_and_forwards_the_rest_to_coredns() {
    let c = deployed();
    // 8443 stands for the partner; 10443 is a second external server no entry declares.
    let _partner = external_tls_server_on(8443);
    let _other = external_tls_server_on(10443);
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
    let ns = c.namespace("dns-egress");
    ns.cluster.ok(&[
        "label",
        "namespace",
        "dns-egress",
        &format!("istio.io/rev={REVISION}"),
    ]);
    ns.apply(DNS_ENTRIES);
    ns.apply(DNS_CLIENT);
    ns.ok(&[
        "wait",
        "--for=condition=Ready",
        "pod/dns-client",
        "--timeout=90s",
    ]);
    let init_args = ns.ok(&[
        "get",
        "pod",
        "dns-client",
        "-o",
        "jsonpath={.spec.initContainers[0].args}",
    ]);
    assert!(init_args.contains("--capture-dns"), "{init_args}");

    // The declared host, which CoreDNS does not know, resolves (through the proxy) to its
    // allocated address, and the connection to that address reaches the entry's endpoint.
    let reached = wait_for(
        Duration::from_secs(30),
        || curl_dns(&ns, "https://partner-api.weft.test:8443/", None).0,
        |out| out.starts_with("200 "),
    );
    let vip = reached.split(' ').nth(1).unwrap_or_default().to_string();
    assert!(allocated(&vip), "{reached}");
    // The pod's resolver agrees a second time (same answer while the config is the same).
    let (again, _) = curl_dns(&ns, "https://partner-api.weft.test:8443/", None);
    assert_eq!(again, reached);
    // A resolution: DNS host is answered from the table too (its own allocated address); the
    // proxy then asks CoreDNS for the real address, finds none, and closes the connection.
    let (dns_only, err) = curl_dns(&ns, "https://dns-only.weft.test:8443/", None);
    let dns_vip = dns_only.split(' ').nth(1).unwrap_or_default();
    assert!(
        dns_only.starts_with("000 ") && allocated(dns_vip) && dns_vip != vip,
        "{dns_only} {err}"
    );

    // A DNS entry with endpoints goes to them, not to the host: the first endpoint's name
    // does not resolve, the second (a name CoreDNS knows) is the node, where the partner is.
    let (named, err) = curl_dns(&ns, "https://named-endpoints.weft.test:8443/", None);
    let named_vip = named.split(' ').nth(1).unwrap_or_default();
    assert!(
        named.starts_with("200 ") && allocated(named_vip) && named_vip != dns_vip,
        "{named} {err}"
    );
    // Every other name is CoreDNS's: a Service name resolves to its ClusterIP...
    let (api, err) = curl_dns(&ns, "https://kubernetes.default.svc/", None);
    assert!(api.ends_with(" 198.19.0.1"), "{api} {err}");
    // ...and a name nobody declares does not resolve at all (CoreDNS has no such name: the
    // local cluster's CoreDNS serves cluster.local only).
    let (nowhere, err) = curl_dns(&ns, "https://nowhere.weft.test:8443/", None);
    assert!(nowhere.starts_with("000"), "{nowhere}");
    assert!(err.contains("Could not resolve host"), "{err}");
    // An undeclared host that does resolve is still refused under REGISTRY_ONLY (the server
    // answers the node itself).
    assert_eq!(curl_from_node_on("undeclared.weft.test", 10443), "200");
    let (blocked, err) = curl_dns(
        &ns,
        "https://undeclared.weft.test:10443/",
        Some("undeclared.weft.test:10443:198.18.0.1"),
    );
    assert!(blocked.starts_with("000"), "{blocked} {err}");
    // `weft proxy-config egress` shows the allocated address beside the host.
    let shown = weft(&["proxy-config", "egress", "dns-client", "-n", "dns-egress"]);
    let table = String::from_utf8_lossy(&shown.stdout);
    let row = table
        .lines()
        .find(|l| l.starts_with("partner-api.weft.test"))
        .unwrap_or_else(|| panic!("no row: {table}"));
    assert!(row.contains(&vip), "{row}");
}
