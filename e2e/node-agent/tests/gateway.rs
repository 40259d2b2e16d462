//! Ingress through weft's gateway on the cluster, as seed 003 section 4 prints it: a gateway
//! installed with `weft gateway install` under the AKS add-on's internal gateway name, the
//! seed's Gateway and VirtualService verbatim, and a client outside the mesh (this test, on
//! the node) reaching the gateway Service's LoadBalancer address with the seed's host (200,
//! answered by productpage over mTLS) and another host (404, Istio's `NR`). The gateway's own
//! metrics say it (reporter `source`), and a client that sends its request head too slowly is
//! cut off (slowloris). Then HTTPS on the same gateway: a `credentialName` Secret served by
//! SNI, replaced under a running gateway (the next handshake shows the new certificate), and
//! a plaintext server's `httpsRedirect`, and a TLS MUTUAL server for another host on the same
//! port (a client certificate from its Secret's `ca.crt` gets 200, none gets no handshake).

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use support::{CURL_CLIENT, Namespace, wait_for, weft};

const GATEWAY_NS: &str = "aks-istio-ingress";
const GATEWAY: &str = "aks-istio-ingressgateway-internal";
const HOST: &str = "shop.internal.contoso.com";
/// The HTTPS test's own gateway, so the two tests can run side by side.
const HTTPS_GATEWAY_NS: &str = "shop-https-gw";
const HTTPS_GATEWAY: &str = "shop-gateway";
/// A second host on the HTTPS gateway's port 443, served with TLS MUTUAL.
const PARTNERS: &str = "partners.contoso.com";

/// Seed 003, section 4, verbatim.
const SEED_003_INGRESS: &str = r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata:
  name: storefront-internal
  namespace: payments
spec:
  selector:
    istio: aks-istio-ingressgateway-internal
  servers:
  - port:
      number: 80
      name: http
      protocol: HTTP
    hosts:
    - "shop.internal.contoso.com"
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: storefront
  namespace: payments
spec:
  hosts:
  - "shop.internal.contoso.com"
  gateways:
  - storefront-internal
  http:
  - route:
    - destination:
        host: productpage
        port:
          number: 9080
"#;

const PRODUCTPAGE: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: productpage}
spec:
  replicas: 1
  selector: {matchLabels: {app: productpage}}
  template:
    metadata: {labels: {app: productpage, version: v1}}
    spec:
      containers:
      - name: app
        image: weft.dev/echo:dev
        ports: [{containerPort: 9080}]
        env:
        - {name: PORT, value: "9080"}
        - {name: MESSAGE, value: productpage}
        - {name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
        readinessProbe: {httpGet: {path: /healthz, port: 9080}, periodSeconds: 1}
---
apiVersion: v1
kind: Service
metadata: {name: productpage, labels: {app: productpage}}
spec:
  selector: {app: productpage}
  ports: [{name: http, port: 9080}]
"#;

fn ok(out: std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `curl` from the node (outside the mesh): "<status> <body>".
fn curl(ip: &str, host: &str) -> String {
    let out = Command::new("curl")
        .args(["-s", "-m", "5", "-o", "-", "-w", " %{http_code}"])
        .args(["-H", &format!("Host: {host}")])
        .arg(format!("http://{ip}/"))
        .output()
        .expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    match text.rsplit_once(' ') {
        Some((body, code)) => format!("{code} {body}"),
        None => text,
    }
}

/// `weft gateway install --name <name> --namespace <namespace>`.
fn install_gateway(name: &str, namespace: &str) {
    ok(weft(&[
        "gateway",
        "install",
        "--name",
        name,
        "--namespace",
        namespace,
    ]));
}

fn ready(ns: &Namespace, what: &str) {
    ns.ok(&["rollout", "status", what, "--timeout=180s"]);
}

#[test]
fn seed_003_storefront_gateway_routes_by_host_from_outside_the_mesh() {
    let c = support::deployed();
    let payments = c.namespace("payments");
    ok(weft(&["namespace", "add", "payments"]));
    payments.apply(PRODUCTPAGE);
    let gw_ns = c.namespace(GATEWAY_NS);
    ok(weft(&[
        "gateway",
        "install",
        "--name",
        GATEWAY,
        "--namespace",
        GATEWAY_NS,
        "--internal",
    ]));
    payments.apply(SEED_003_INGRESS);
    ready(&payments, "deployment/productpage");
    ready(&gw_ns, &format!("deployment/{GATEWAY}"));

    // Seed 003, verify step 5: the gateway Service's LoadBalancer address.
    let ip = wait_for(
        Duration::from_secs(60),
        || {
            gw_ns.jsonpath(
                &format!("service {GATEWAY}"),
                "{.status.loadBalancer.ingress[0].ip}",
            )
        },
        |ip| !ip.is_empty(),
    );

    // The seed's host reaches productpage (the gateway's config may take a moment).
    let answer = wait_for(
        Duration::from_secs(60),
        || curl(&ip, HOST),
        |a| a.starts_with("200 "),
    );
    assert!(answer.contains("productpage"), "{answer}");
    // Another host is no virtual host of the listener: 404.
    assert!(curl(&ip, "other.contoso.com").starts_with("404"));
    // A huge Host header (100 KB) is refused with 431 (request heads are limited to 64 KiB,
    // as Envoy's 60 KiB default); hyper closes with the rest unread, so the client may see
    // the reset instead (000). Never routed (a 404 would be), and the gateway serves on.
    let huge = format!("{}.contoso.com", "a".repeat(100_000));
    let refused = curl(&ip, &huge);
    let shown: String = refused.chars().take(80).collect();
    assert!(
        refused.starts_with("431") || refused.starts_with("000"),
        "a 100 KB Host got {shown:?}"
    );
    assert!(curl(&ip, HOST).starts_with("200 "));
    // Case and a port in Host do not matter (Envoy's host matching).
    assert!(curl(&ip, "Shop.Internal.Contoso.com:80").starts_with("200 "));

    // A meshed pod calls the gateway's Service too (in-cluster ingress): its sidecar speaks
    // plaintext to the gateway, whose listener is plaintext HTTP (PeerAuthentication governs
    // sidecars, not gateway listeners, as in Istio).
    payments.apply(CURL_CLIENT);
    payments.ok(&[
        "wait",
        "--for=condition=Ready",
        "pod/client",
        "--timeout=120s",
    ]);
    let client: serde_json::Value =
        serde_json::from_str(&payments.ok(&["get", "pod", "client", "-o", "json"])).unwrap();
    assert!(support::has_proxy(&client), "the client pod is meshed");
    let inside = wait_for(
        Duration::from_secs(60),
        || {
            let out = payments.kubectl(&[
                "exec",
                "client",
                "-c",
                "client",
                "--",
                "curl",
                "-s",
                "-m",
                "5",
                "-H",
                &format!("Host: {HOST}"),
                &format!("http://{GATEWAY}.{GATEWAY_NS}.svc.cluster.local/"),
            ]);
            String::from_utf8_lossy(&out.stdout).into_owned()
        },
        |a| a.contains("productpage"),
    );
    assert!(inside.contains("productpage"), "{inside}");

    // The gateway reports the requests as a source proxy, over mTLS to productpage.
    let pod = gw_ns.jsonpath(
        &format!("pods -l istio={GATEWAY}"),
        "{.items[0].metadata.name}",
    );
    let metrics = gw_ns.proxy_metrics(&pod);
    let line = metrics
        .lines()
        .find(|l| {
            l.starts_with("istio_requests_total{")
                && l.contains(r#"reporter="source""#)
                && l.contains(r#"destination_service="productpage.payments.svc.cluster.local""#)
                && l.contains(r#"response_code="200""#)
        })
        .unwrap_or_else(|| panic!("no gateway request line in:\n{metrics}"));
    assert!(
        line.contains(&format!(r#"source_workload="{GATEWAY}""#)),
        "{line}"
    );
    assert!(
        line.contains(r#"destination_principal="spiffe://cluster.local/ns/payments/sa/default""#),
        "{line}"
    );
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("istio_requests_total{")
                && l.contains(r#"response_code="404""#)
                && l.contains(r#"response_flags="NR""#)),
        "the 404 is counted with NR"
    );

    // The VirtualService is applied as written (its WeftAccepted condition).
    let accepted = wait_for(
        Duration::from_secs(30),
        || {
            payments.jsonpath(
                "virtualservice storefront",
                r#"{.status.conditions[?(@.type=="WeftAccepted")].status}"#,
            )
        },
        |s| s == "True",
    );
    assert_eq!(accepted, "True");

    // sourceLabels at a gateway hold against the gateway's own pods (Istio's sourceMatchHTTP
    // takes the proxy's labels): of two routes for one host, the one naming other labels is
    // left out and the one naming the gateway's pods answers.
    payments.apply(&format!(
        r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: labelled, namespace: payments}}
spec:
  selector: {{istio: {GATEWAY}}}
  servers:
  - port: {{number: 80, name: http, protocol: HTTP}}
    hosts: [labels.contoso.com]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: labelled, namespace: payments}}
spec:
  hosts: [labels.contoso.com]
  gateways: [labelled]
  http:
  - match: [{{sourceLabels: {{app: nobody}}}}]
    headers: {{response: {{set: {{x-route: other-labels}}}}}}
    route: [{{destination: {{host: productpage, port: {{number: 9080}}}}}}]
  - match: [{{sourceLabels: {{istio: {GATEWAY}}}}}]
    headers: {{response: {{set: {{x-route: gateway-labels}}}}}}
    route: [{{destination: {{host: productpage, port: {{number: 9080}}}}}}]
"#
    ));
    let routed_by = || {
        let out = Command::new("curl")
            .args(["-s", "-m", "5", "-D", "-", "-o", "/dev/null"])
            .args(["-H", "Host: labels.contoso.com"])
            .arg(format!("http://{ip}/"))
            .output()
            .expect("curl runs");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.strip_prefix("x-route: ").map(|v| v.trim().to_string()))
            .unwrap_or_default()
    };
    let route = wait_for(Duration::from_secs(60), routed_by, |r| !r.is_empty());
    assert_eq!(route, "gateway-labels");
    let accepted = wait_for(
        Duration::from_secs(30),
        || {
            payments.jsonpath(
                "virtualservice labelled",
                r#"{.status.conditions[?(@.type=="WeftAccepted")].status}"#,
            )
        },
        |s| !s.is_empty(),
    );
    assert_eq!(accepted, "True");

    // Slowloris: a request head that never ends is cut off by the header timeout (10 s).
    let mut slow = TcpStream::connect((ip.as_str(), 80)).expect("connect to the gateway");
    slow.write_all(b"GET / HTTP/1.1\r\nHost: shop.internal.contoso.com\r\nX-Slow: ")
        .expect("send a partial head");
    slow.set_read_timeout(Some(Duration::from_secs(40))).ok();
    let start = Instant::now();
    let mut buf = [0u8; 512];
    let closed = loop {
        match slow.read(&mut buf) {
            Ok(0) => break true,
            // hyper answers 408 before closing.
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break false,
        }
    };
    assert!(
        closed,
        "the gateway kept a half-sent request open for {:?}",
        start.elapsed()
    );
    assert!(start.elapsed() < Duration::from_secs(40));
}

/// A CA and a leaf for `host` (openssl on the node): (ca.pem, leaf.pem, key.pem) in `dir`.
fn certificate(dir: &std::path::Path, host: &str, serial: u32) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .current_dir(dir)
            .args(args)
            .output()
            .expect("openssl runs");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    if !dir.join("ca.pem").exists() {
        run(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=e2e gateway CA",
        ]);
    }
    run(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        "key.pem",
        "-out",
        "leaf.csr",
        "-subj",
        &format!("/CN={}", host.split(',').next().unwrap_or(host)),
    ]);
    // `host` may list several names, comma-separated: one SAN each, the first as CN.
    let sans: Vec<String> = host.split(',').map(|h| format!("DNS:{h}")).collect();
    std::fs::write(
        dir.join("ext.cnf"),
        format!("subjectAltName={}\n", sans.join(",")),
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "leaf.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-set_serial",
        &serial.to_string(),
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
        "-out",
        "leaf.pem",
    ]);
}

/// The secret `shop-cert` in the gateway's namespace, from `dir`'s leaf and key.
fn tls_secret(ns: &Namespace, dir: &std::path::Path) {
    tls_secret_named(ns, dir, "shop-cert");
}

fn tls_secret_named(ns: &Namespace, dir: &std::path::Path, name: &str) {
    let cert = format!("--cert={}", dir.join("leaf.pem").display());
    let key = format!("--key={}", dir.join("key.pem").display());
    let yaml = ok(ns.kubectl(&[
        "create",
        "secret",
        "tls",
        name,
        &cert,
        &key,
        "--dry-run=client",
        "-o",
        "yaml",
    ]));
    ns.apply(&yaml);
}

/// The serial of the certificate the gateway presents for `host` on `ip:443`, after a
/// request that must answer 200 (curl checks the chain against the test CA).
fn https_serial(ip: &str, host: &str, ca: &std::path::Path) -> Result<String, String> {
    let out = Command::new("curl")
        .args([
            "-s",
            "-m",
            "5",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{certs}",
        ])
        .arg("--cacert")
        .arg(ca)
        .args(["--resolve", &format!("{host}:443:{ip}")])
        .arg(format!("https://{host}/"))
        .output()
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    if !text.starts_with("200 ") {
        return Err(format!("{text} {}", String::from_utf8_lossy(&out.stderr)));
    }
    text.lines()
        .find_map(|l| l.strip_prefix("Serial Number:"))
        .map(|s| s.trim().to_string())
        .ok_or(text)
}

#[test]
fn https_with_a_credential_secret_is_served_by_sni_and_a_new_certificate_is_used_without_a_restart()
{
    let c = support::deployed();
    // Its own namespaces and gateway name: the seed test runs beside it.
    let payments = c.namespace("shop-https");
    ok(weft(&["namespace", "add", "shop-https"]));
    payments.apply(PRODUCTPAGE);
    let gw_ns = c.namespace(HTTPS_GATEWAY_NS);
    install_gateway(HTTPS_GATEWAY, HTTPS_GATEWAY_NS);
    let dir = std::env::temp_dir().join(format!("weft-e2e-gw-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    certificate(&dir, HOST, 1001);
    tls_secret(&gw_ns, &dir);
    payments.apply(
        r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: storefront-https}
spec:
  selector: {istio: shop-gateway}
  servers:
  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: ["shop.internal.contoso.com"]
    tls: {mode: SIMPLE, credentialName: shop-cert}
  - port: {number: 8080, name: http-redirect, protocol: HTTP}
    hosts: ["shop.internal.contoso.com"]
    tls: {httpsRedirect: true}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: storefront-https}
spec:
  hosts: ["shop.internal.contoso.com"]
  gateways: [storefront-https]
  http:
  - route:
    - destination: {host: productpage, port: {number: 9080}}
"#,
    );
    ready(&payments, "deployment/productpage");
    ready(&gw_ns, &format!("deployment/{HTTPS_GATEWAY}"));
    let ip = wait_for(
        Duration::from_secs(60),
        || {
            gw_ns.jsonpath(
                &format!("service {HTTPS_GATEWAY}"),
                "{.status.loadBalancer.ingress[0].ip}",
            )
        },
        |ip| !ip.is_empty(),
    );
    let ca = dir.join("ca.pem");
    let first = wait_for(
        Duration::from_secs(60),
        || https_serial(&ip, HOST, &ca).unwrap_or_else(|e| format!("not yet: {e}")),
        |s| !s.starts_with("not yet"),
    );
    // openssl prints serial 1001 as hex 03:e9.
    assert!(first.contains("3:e9") || first.contains("3e9"), "{first}");

    // A renewed certificate in the same Secret: the next handshakes present it.
    certificate(&dir, HOST, 1002);
    tls_secret(&gw_ns, &dir);
    let second = wait_for(
        Duration::from_secs(60),
        || https_serial(&ip, HOST, &ca).unwrap_or_else(|e| format!("not yet: {e}")),
        |s| s.contains("3:ea") || s.contains("3ea"),
    );
    assert_ne!(first, second);

    // The plaintext server redirects to https (reached on the gateway pod's own address).
    let pod_ip = gw_ns.jsonpath(
        &format!("pods -l istio={HTTPS_GATEWAY}"),
        "{.items[0].status.podIP}",
    );
    let out = Command::new("curl")
        .args([
            "-s",
            "-m",
            "5",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{redirect_url}",
        ])
        .args(["-H", &format!("Host: {HOST}:8080")])
        .arg(format!("http://{pod_ip}:8080/buy?x=1"))
        .output()
        .expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(text, format!("301 https://{HOST}:8080/buy?x=1"));

    // TLS MUTUAL beside SIMPLE on the same port 443, told apart by SNI: the partners' host
    // asks for a client certificate its Secret's ca.crt verifies; the shop's does not.
    let partners = dir.join("partners");
    std::fs::create_dir_all(&partners).unwrap();
    certificate(&partners, PARTNERS, 2001);
    for (from, to) in [
        ("leaf.pem", "tls.crt"),
        ("key.pem", "tls.key"),
        ("ca.pem", "ca.crt"),
    ] {
        std::fs::copy(partners.join(from), partners.join(to)).unwrap();
    }
    // A client certificate from the same CA (no extended key usage: any use).
    certificate(&partners, "client.partners.contoso.com", 2002);
    let yaml = ok(gw_ns.kubectl(&[
        "create",
        "secret",
        "generic",
        "partners-cert",
        "--type=kubernetes.io/tls",
        &format!("--from-file={}", partners.join("tls.crt").display()),
        &format!("--from-file={}", partners.join("tls.key").display()),
        &format!("--from-file={}", partners.join("ca.crt").display()),
        "--dry-run=client",
        "-o",
        "yaml",
    ]));
    gw_ns.apply(&yaml);
    payments.apply(&format!(
        r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: partners-mtls}}
spec:
  selector: {{istio: shop-gateway}}
  servers:
  - port: {{number: 443, name: https-partners, protocol: HTTPS}}
    hosts: ["{PARTNERS}"]
    tls: {{mode: MUTUAL, credentialName: partners-cert}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: partners-mtls}}
spec:
  hosts: ["{PARTNERS}"]
  gateways: [partners-mtls]
  http:
  - route:
    - destination: {{host: productpage, port: {{number: 9080}}}}
"#
    ));
    let call = |with_cert: bool| {
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "-m", "5", "-o", "/dev/null", "-w", "%{http_code}"])
            .arg("--cacert")
            .arg(partners.join("ca.crt"))
            .args(["--resolve", &format!("{PARTNERS}:443:{ip}")]);
        if with_cert {
            cmd.arg("--cert")
                .arg(partners.join("leaf.pem"))
                .arg("--key")
                .arg(partners.join("key.pem"));
        }
        let out = cmd
            .arg(format!("https://{PARTNERS}/"))
            .output()
            .expect("curl runs");
        format!(
            "{} {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr).trim()
        )
    };
    let with_cert = wait_for(
        Duration::from_secs(60),
        || call(true),
        |out| out.starts_with("200"),
    );
    assert!(with_cert.starts_with("200"), "{with_cert}");
    // Without a client certificate the handshake fails (TLS 1.3: curl sees the alert when it
    // reads), so no HTTP status.
    let without = call(false);
    assert!(without.starts_with("000"), "{without}");
    // The SIMPLE server on the same port still asks for none.
    assert!(
        https_serial(&ip, HOST, &ca).is_ok(),
        "the shop's host still answers without a client certificate"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_gateway_server_weft_cannot_serve_is_named_and_the_others_serve() {
    let c = support::deployed();
    let ns = c.namespace("gw-bad-input");
    ns.apply(
        r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: mixed}
spec:
  selector: {istio: nobody}
  servers:
  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: ["*"]
    tls: {mode: OPTIONAL_MUTUAL}
  - port: {number: 8080, name: http, protocol: HTTP}
    hosts: ["*"]
"#,
    );
    let message = wait_for(
        Duration::from_secs(30),
        || {
            ns.jsonpath(
                "gateways.networking.istio.io mixed",
                r#"{.status.conditions[?(@.type=="WeftAccepted")].message}"#,
            )
        },
        |m| !m.is_empty(),
    );
    assert!(
        message.contains("servers[0].tls.mode OPTIONAL_MUTUAL is not supported yet"),
        "{message}"
    );
    assert!(!message.contains("servers[1]"), "{message}");
}

/// One request from the node to the gateway at `ip`: `Ok(())` on a 200. `conn` is a
/// keep-alive connection to reuse (opened when `None`, dropped when the answer says
/// `Connection: close`); `None` for a connection per request.
fn roll_request(
    ip: &str,
    host: &str,
    conn: Option<&mut Option<std::io::BufReader<TcpStream>>>,
) -> Result<(), String> {
    use std::io::BufRead;
    let keep_alive = conn.is_some();
    let mut fresh = None;
    let slot = conn.unwrap_or(&mut fresh);
    if slot.is_none() {
        let addr = format!("{ip}:80").parse().map_err(|e| format!("{e}"))?;
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))
            .map_err(|e| format!("connect: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok();
        *slot = Some(std::io::BufReader::new(s));
    }
    let reader = slot.as_mut().ok_or("no connection")?;
    let close = if keep_alive { "keep-alive" } else { "close" };
    let result = (|| {
        reader
            .get_mut()
            .write_all(
                format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: {close}\r\n\r\n").as_bytes(),
            )
            .map_err(|e| format!("send: {e}"))?;
        let mut status = String::new();
        reader
            .read_line(&mut status)
            .map_err(|e| format!("status line: {e}"))?;
        let mut length = None;
        let mut server_closes = false;
        loop {
            let mut line = String::new();
            reader
                .read_line(&mut line)
                .map_err(|e| format!("headers: {e}"))?;
            let line = line.trim_end().to_ascii_lowercase();
            if line.is_empty() {
                break;
            }
            if let Some(v) = line.strip_prefix("content-length:") {
                length = Some(
                    v.trim()
                        .parse::<usize>()
                        .map_err(|e| format!("content-length: {e}"))?,
                );
            }
            server_closes |= line == "connection: close";
        }
        // The echo app's answers have a length; anything else would desync the next read.
        let length = length.ok_or_else(|| format!("no content-length after {status:?}"))?;
        let mut body = vec![0u8; length];
        reader
            .read_exact(&mut body)
            .map_err(|e| format!("body: {e}"))?;
        if !status.starts_with("HTTP/1.1 200") {
            return Err(format!("answer {:?}", status.trim_end()));
        }
        Ok(server_closes)
    })();
    match result {
        Ok(server_closes) => {
            if server_closes || !keep_alive {
                *slot = None;
            }
            Ok(())
        }
        Err(e) => {
            *slot = None;
            Err(e)
        }
    }
}

/// A gateway replaced by a rolling update while clients outside the mesh send requests, one
/// connection per request and on keep-alive connections: none fails. The old pod, on
/// SIGTERM, goes on accepting for its drain duration (the load balancer still sends it new
/// connections until the endpoint update reaches kube-proxy) and closes each HTTP/1
/// connection after its next response (`Connection: close`), as Envoy's drain does.
#[test]
fn a_gateway_rolled_under_steady_traffic_answers_every_request() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    const NS: &str = "gw-roll";
    const GW: &str = "roll-gateway";
    const ROLL_HOST: &str = "roll.example.test";
    let c = support::deployed();
    let ns = c.namespace(NS);
    ok(weft(&["namespace", "add", NS]));
    ns.apply(PRODUCTPAGE);
    install_gateway(GW, NS);
    ns.apply(&format!(
        r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: roll}}
spec:
  selector: {{istio: {GW}}}
  servers:
  - port: {{number: 80, name: http, protocol: HTTP}}
    hosts: ["{ROLL_HOST}"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: roll}}
spec:
  hosts: ["{ROLL_HOST}"]
  gateways: [roll]
  http:
  - route:
    - destination: {{host: productpage, port: {{number: 9080}}}}
"#
    ));
    ready(&ns, "deployment/productpage");
    ready(&ns, &format!("deployment/{GW}"));
    let ip = wait_for(
        Duration::from_secs(60),
        || {
            ns.jsonpath(
                &format!("service {GW}"),
                "{.status.loadBalancer.ingress[0].ip}",
            )
        },
        |ip| !ip.is_empty(),
    );
    wait_for(
        Duration::from_secs(60),
        || roll_request(&ip, ROLL_HOST, None).err().unwrap_or_default(),
        str::is_empty,
    );
    let before = ns.jsonpath(&format!("pods -l istio={GW}"), "{.items[*].metadata.name}");

    let stop = Arc::new(AtomicBool::new(false));
    let client = |keep_alive: bool, every: Duration| {
        let (ip, stop) = (ip.clone(), stop.clone());
        std::thread::spawn(move || {
            let (mut sent, mut failed) = (0u32, Vec::new());
            let mut conn = None;
            while !stop.load(Ordering::Relaxed) {
                let r = roll_request(&ip, ROLL_HOST, keep_alive.then_some(&mut conn));
                sent += 1;
                if let Err(e) = r {
                    failed.push(e);
                }
                std::thread::sleep(every);
            }
            (sent, failed)
        })
    };
    let per_request = client(false, Duration::from_millis(50));
    let kept_alive = client(true, Duration::from_millis(20));

    std::thread::sleep(Duration::from_secs(2));
    ns.ok(&["rollout", "restart", &format!("deployment/{GW}")]);
    ready(&ns, &format!("deployment/{GW}"));
    // The old pod drains for its drain duration (5 s) and its open requests get as long again.
    let gone = wait_for(
        Duration::from_secs(60),
        || ns.jsonpath(&format!("pods -l istio={GW}"), "{.items[*].metadata.name}"),
        |now| !now.split(' ').any(|p| before.split(' ').any(|b| b == p)),
    );
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::Relaxed);
    let (sent_a, failed_a) = per_request.join().expect("client thread");
    let (sent_b, failed_b) = kept_alive.join().expect("client thread");
    assert!(
        sent_a > 100 && sent_b > 100,
        "{sent_a} and {sent_b} requests sent"
    );
    assert!(
        failed_a.is_empty() && failed_b.is_empty(),
        "rolling {before} to {gone}: {} of {sent_a} requests on new connections failed ({failed_a:?}), {} of {sent_b} on keep-alive connections ({failed_b:?})",
        failed_a.len(),
        failed_b.len()
    );
}

/// TLS passthrough and TCP on a gateway, as Istio's ingress tasks set them up: a TLS server
/// (`mode: PASSTHROUGH`) relays by SNI to a backend that terminates TLS itself (here a
/// second weft gateway with an HTTPS server: the client sees the backend's certificate, so
/// the first gateway never terminated), and a TCP server relays bytes to a meshed Service.
/// The same port 443 also has an HTTPS server (terminated, then HTTP routed by Host) and a
/// TLS SIMPLE server (terminated, then its bytes relayed by a `tcp` route), each picked by
/// the ClientHello's SNI. A name no server has is closed.
#[test]
fn tls_passthrough_relays_by_sni_and_a_tcp_server_relays_bytes() {
    const NS: &str = "gw-l4";
    const EDGE: &str = "edge-gateway";
    const BACKEND: &str = "tls-backend";
    const SECURE: &str = "secure.example.test";
    const WEB: &str = "web.example.test";
    const DB: &str = "db.example.test";
    let c = support::deployed();
    let ns = c.namespace(NS);
    ok(weft(&["namespace", "add", NS]));
    ns.apply(PRODUCTPAGE);
    install_gateway(EDGE, NS);
    install_gateway(BACKEND, NS);
    let dir = std::env::temp_dir().join(format!("weft-e2e-gw-l4-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    certificate(&dir, SECURE, 1003);
    tls_secret(&ns, &dir);
    // The edge's own certificate, for its terminating servers (serial 1004 = 0x3ec).
    certificate(&dir, &format!("{WEB},{DB}"), 1004);
    tls_secret_named(&ns, &dir, "edge-cert");
    ns.apply(&format!(
        r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: terminate}}
spec:
  selector: {{istio: {BACKEND}}}
  servers:
  - port: {{number: 443, name: https, protocol: HTTPS}}
    hosts: ["{SECURE}"]
    tls: {{mode: SIMPLE, credentialName: shop-cert}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: terminate}}
spec:
  hosts: ["{SECURE}"]
  gateways: [terminate]
  http:
  - route:
    - destination: {{host: productpage, port: {{number: 9080}}}}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: edge}}
spec:
  selector: {{istio: {EDGE}}}
  servers:
  - port: {{number: 443, name: tls, protocol: TLS}}
    hosts: ["{SECURE}"]
    tls: {{mode: PASSTHROUGH}}
  - port: {{number: 443, name: https, protocol: HTTPS}}
    hosts: ["{WEB}"]
    tls: {{mode: SIMPLE, credentialName: edge-cert}}
  - port: {{number: 443, name: tls-terminated, protocol: TLS}}
    hosts: ["{DB}"]
    tls: {{mode: SIMPLE, credentialName: edge-cert}}
  - port: {{number: 31400, name: tcp, protocol: TCP}}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: edge-web}}
spec:
  hosts: ["{WEB}"]
  gateways: [edge]
  http:
  - route:
    - destination: {{host: productpage, port: {{number: 9080}}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: edge-db}}
spec:
  hosts: ["{DB}"]
  gateways: [edge]
  tcp:
  - match:
    - port: 443
    route:
    - destination: {{host: productpage, port: {{number: 9080}}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: edge-tls}}
spec:
  hosts: ["{SECURE}"]
  gateways: [edge]
  tls:
  - match:
    - port: 443
      sniHosts: ["{SECURE}"]
    route:
    - destination: {{host: {BACKEND}, port: {{number: 443}}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: edge-tcp}}
spec:
  hosts: ["productpage.{NS}.svc.cluster.local"]
  gateways: [edge]
  tcp:
  - match:
    - port: 31400
    route:
    - destination: {{host: productpage, port: {{number: 9080}}}}
"#
    ));
    ready(&ns, "deployment/productpage");
    ready(&ns, &format!("deployment/{EDGE}"));
    ready(&ns, &format!("deployment/{BACKEND}"));
    let edge_ip = ns.jsonpath(&format!("pods -l istio={EDGE}"), "{.items[0].status.podIP}");

    // TLS passthrough: the certificate is the backend's (serial 1003 = 0x3eb), checked by curl
    // against the test CA, and the answer comes from productpage behind it.
    let ca = dir.join("ca.pem");
    let serial = wait_for(
        Duration::from_secs(90),
        || https_serial(&edge_ip, SECURE, &ca).unwrap_or_else(|e| format!("not yet: {e}")),
        |s| !s.starts_with("not yet"),
    );
    assert!(
        serial.contains("3:eb") || serial.contains("3eb"),
        "{serial}"
    );
    // The same port, another name: the edge terminates with its own certificate (0x3ec) and
    // routes the request by Host.
    let serial = wait_for(
        Duration::from_secs(60),
        || https_serial(&edge_ip, WEB, &ca).unwrap_or_else(|e| format!("not yet: {e}")),
        |s| !s.starts_with("not yet"),
    );
    assert!(
        serial.contains("3:ec") || serial.contains("3ec"),
        "{serial}"
    );
    let edge_https = |name: &str, host: &str| {
        let out = Command::new("curl")
            .args(["-s", "-m", "5", "-o", "-", "-w", " %{http_code}"])
            .arg("--cacert")
            .arg(&ca)
            .args(["--resolve", &format!("{name}:443:{edge_ip}")])
            .args(["-H", &format!("Host: {host}")])
            .arg(format!("https://{name}/"))
            .output()
            .expect("curl runs");
        // Body, then " <code>": an empty body leaves " 404", so only the end is trimmed.
        String::from_utf8_lossy(&out.stdout).trim_end().to_string()
    };
    // HTTP routing after the handshake: the server's Host is routed to productpage ...
    let web = wait_for(
        Duration::from_secs(60),
        || edge_https(WEB, WEB),
        |a| a.ends_with(" 200"),
    );
    assert!(web.contains("productpage"), "{web}");
    // ... and a Host the server does not route is a 404 ...
    let web_other = edge_https(WEB, "nomatch.example.test");
    assert!(web_other.ends_with(" 404"), "{web_other}");
    // ... while TLS SIMPLE relays the terminated bytes whatever they say: productpage
    // answers a request whose Host no route names.
    let relayed = wait_for(
        Duration::from_secs(60),
        || edge_https(DB, "nomatch.example.test"),
        |a| a.ends_with(" 200"),
    );
    assert!(relayed.contains("productpage"), "{relayed}");
    // A name no TLS server of the edge has: closed, nothing relayed.
    let other = Command::new("curl")
        .args([
            "-s",
            "-k",
            "-m",
            "5",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
        ])
        .args(["--resolve", &format!("other.example.test:443:{edge_ip}")])
        .arg("https://other.example.test/")
        .output()
        .expect("curl runs");
    assert!(!other.status.success(), "another SNI was relayed");
    let pod = ns.jsonpath(
        &format!("pods -l istio={EDGE}"),
        "{.items[0].metadata.name}",
    );
    let refused = ns.proxy_metrics(&pod);
    assert!(
        refused
            .lines()
            .any(|l| l.starts_with("weft_connections_refused_total{")
                && l.contains(r#"reason="gateway_sni""#)),
        "the edge did not refuse the unknown name itself:\n{refused}"
    );

    // TCP: the bytes of an HTTP request, relayed to productpage (over mTLS to its sidecar).
    let answer = wait_for(
        Duration::from_secs(60),
        || {
            let mut s = match TcpStream::connect((edge_ip.as_str(), 31400)) {
                Ok(s) => s,
                Err(e) => return format!("connect: {e}"),
            };
            s.set_read_timeout(Some(Duration::from_secs(5))).ok();
            let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: anything\r\nConnection: close\r\n\r\n");
            let mut out = String::new();
            let _ = s.read_to_string(&mut out);
            out
        },
        |a| a.starts_with("HTTP/1.1 200") && a.contains("productpage"),
    );
    assert!(answer.contains("productpage"), "{answer}");

    // The edge counts the relayed connections as a source proxy would.
    let metrics = ns.proxy_metrics(&pod);
    for service in [
        format!("{BACKEND}.{NS}.svc.cluster.local"),
        format!("productpage.{NS}.svc.cluster.local"),
    ] {
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with("istio_tcp_connections_opened_total{")
                    && l.contains(r#"reporter="source""#)
                    && l.contains(&format!(r#"destination_service="{service}""#))),
            "no TCP line for {service} in:\n{metrics}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `curl --path-as-is` from the node (outside the mesh) to `ip:port` with `Host: host`:
/// "<status> <body>" (`000` when no HTTP answer came).
fn node_call(ip: &str, port: u16, host: &str, path: &str) -> String {
    let out = Command::new("curl")
        .args([
            "-s",
            "--path-as-is",
            "-m",
            "5",
            "-o",
            "-",
            "-w",
            " %{http_code}",
        ])
        .args(["-H", &format!("Host: {host}")])
        .arg(format!("http://{ip}:{port}{path}"))
        .output()
        .expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    match text.rsplit_once(' ') {
        Some((body, code)) => format!("{code} {body}"),
        None => text,
    }
}

/// AuthorizationPolicy on an ingress gateway pod, as Istio evaluates it there: policies in the
/// gateway's namespace select its pods by `istio: <name>`; requests are judged after routing's
/// host read and before routing (a DENY by path, normalized first, gives 403 `RBAC: access
/// denied` while other paths get 200; a DENY by ipBlocks refuses one in-cluster client's pod
/// address), an ALLOW that needs a principal refuses a plaintext caller, a TCP listener is
/// judged per connection on its L4 fields (a DENY's HTTP fields are ignored there), and `weft
/// authz explain` on the gateway pod names the deciding policy.
#[test]
fn an_ingress_gateway_enforces_authorization_policy_before_routing() {
    const NS: &str = "gw-authz";
    const APP_NS: &str = "gw-authz-app";
    const GW: &str = "authz-gateway";
    const WEB: &str = "web.example.test";
    let c = support::deployed();
    let ns = c.namespace(NS);
    let app = c.namespace(APP_NS);
    ok(weft(&["namespace", "add", APP_NS]));
    app.apply(PRODUCTPAGE);
    app.apply(CURL_CLIENT);
    install_gateway(GW, NS);
    app.apply(&format!(
        r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: web}}
spec:
  selector: {{istio: {GW}}}
  servers:
  - port: {{number: 80, name: http, protocol: HTTP}}
    hosts: ["{WEB}"]
  - port: {{number: 31400, name: tcp, protocol: TCP}}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: web}}
spec:
  hosts: ["{WEB}"]
  gateways: [web]
  http:
  - route:
    - destination: {{host: productpage, port: {{number: 9080}}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: web-tcp}}
spec:
  hosts: ["productpage.{APP_NS}.svc.cluster.local"]
  gateways: [web]
  tcp:
  - match:
    - port: 31400
    route:
    - destination: {{host: productpage, port: {{number: 9080}}}}
"#
    ));
    ready(&app, "deployment/productpage");
    ready(&ns, &format!("deployment/{GW}"));
    app.ok(&[
        "wait",
        "--for=condition=Ready",
        "pod/client",
        "--timeout=120s",
    ]);
    let gw_ip = ns.jsonpath(&format!("pods -l istio={GW}"), "{.items[0].status.podIP}");
    let gw_pod = ns.jsonpath(&format!("pods -l istio={GW}"), "{.items[0].metadata.name}");
    let client_ip = app.jsonpath("pod client", "{.status.podIP}");
    let from_client = |path: &str| {
        let out = app.kubectl(&[
            "exec",
            "client",
            "-c",
            "client",
            "--",
            "curl",
            "-s",
            "--path-as-is",
            "-m",
            "5",
            "-w",
            " %{http_code}",
            "-H",
            &format!("Host: {WEB}"),
            &format!("http://{GW}.{NS}.svc.cluster.local{path}"),
        ]);
        let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
        match text.rsplit_once(' ') {
            Some((body, code)) => format!("{code} {body}"),
            None => text,
        }
    };

    // Before any policy: HTTP and the TCP listener both reach productpage.
    let first = wait_for(
        Duration::from_secs(90),
        || node_call(&gw_ip, 80, WEB, "/admin/users"),
        |a| a.starts_with("200 "),
    );
    assert!(first.contains("productpage"), "{first}");
    wait_for(
        Duration::from_secs(60),
        || node_call(&gw_ip, 31400, WEB, "/"),
        |a| a.starts_with("200 "),
    );
    wait_for(
        Duration::from_secs(60),
        || from_client("/"),
        |a| a.starts_with("200 "),
    );

    // DENY policies on the gateway pods (selected by their `istio` label, in their namespace).
    ns.apply(&format!(
        r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: deny-admin}}
spec:
  selector: {{matchLabels: {{istio: {GW}}}}}
  action: DENY
  rules:
  - to: [{{operation: {{paths: ["/admin*"]}}}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: deny-client-ip}}
spec:
  selector: {{matchLabels: {{istio: {GW}}}}}
  action: DENY
  rules:
  - from: [{{source: {{ipBlocks: ["{client_ip}/32"]}}}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: deny-tcp}}
spec:
  selector: {{matchLabels: {{istio: {GW}}}}}
  action: DENY
  rules:
  - to: [{{operation: {{ports: ["31400"], paths: ["/never"]}}}}]
"#
    ));
    let denied = wait_for(
        Duration::from_secs(60),
        || node_call(&gw_ip, 80, WEB, "/admin/users"),
        |a| a.starts_with("403 "),
    );
    assert_eq!(denied, "403 RBAC: access denied");
    // Normalized before the policy sees it; other paths still pass.
    assert!(node_call(&gw_ip, 80, WEB, "/shop/../admin").starts_with("403 "));
    assert!(node_call(&gw_ip, 80, WEB, "/shop/%2e%2e/admin").starts_with("403 "));
    let fine = node_call(&gw_ip, 80, WEB, "/shop");
    assert!(
        fine.starts_with("200 ") && fine.contains("productpage"),
        "{fine}"
    );
    // ipBlocks: the TCP peer's address. The meshed client's sidecar calls the gateway from
    // the client pod's address: refused; the node is not.
    let refused = wait_for(
        Duration::from_secs(60),
        || from_client("/"),
        |a| a.starts_with("403 "),
    );
    assert_eq!(refused, "403 RBAC: access denied");
    // The TCP listener: port 31400 is the gateway's `destination.port`, and the DENY's path
    // cannot be known on a connection, so it is ignored and the connection closed.
    let closed = wait_for(
        Duration::from_secs(60),
        || node_call(&gw_ip, 31400, WEB, "/"),
        |a| a.starts_with("000"),
    );
    assert!(closed.starts_with("000"), "{closed}");
    let metrics = ns.proxy_metrics(&gw_pod);
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("istio_requests_total{")
                && l.contains(r#"reporter="source""#)
                && l.contains(r#"response_code="403""#)),
        "the 403s are counted:\n{metrics}"
    );
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("weft_connections_refused_total{")
                && l.contains(r#"reason="rbac_denied""#)),
        "the refused TCP connection is counted:\n{metrics}"
    );
    // The policies are applied as written.
    for name in ["deny-admin", "deny-client-ip", "deny-tcp"] {
        let accepted = wait_for(
            Duration::from_secs(30),
            || {
                ns.jsonpath(
                    &format!("authorizationpolicy {name}"),
                    r#"{.status.conditions[?(@.type=="WeftAccepted")].status}"#,
                )
            },
            |s| s == "True",
        );
        assert_eq!(accepted, "True", "{name}");
    }

    // An ALLOW needing a mesh principal for /private: the node's plaintext request has none.
    ns.apply(&format!(
        r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: private-needs-mesh}}
spec:
  selector: {{matchLabels: {{istio: {GW}}}}}
  rules:
  - to: [{{operation: {{notPaths: ["/private*"]}}}}]
  - from: [{{source: {{principals: ["cluster.local/ns/{APP_NS}/sa/default"]}}}}]
    to: [{{operation: {{paths: ["/private*"]}}}}]
"#
    ));
    let private = wait_for(
        Duration::from_secs(60),
        || node_call(&gw_ip, 80, WEB, "/private/report"),
        |a| a.starts_with("403 "),
    );
    assert_eq!(private, "403 RBAC: access denied");
    assert!(node_call(&gw_ip, 80, WEB, "/shop").starts_with("200 "));

    // `weft authz explain` on the gateway pod: the same policies, the same evaluator.
    let explain = |path: &str| {
        ok(weft(&[
            "authz",
            "explain",
            &gw_pod,
            "-n",
            NS,
            "--from",
            "plaintext",
            "--port",
            "80",
            "--host",
            WEB,
            "--path",
            path,
        ]))
    };
    let admin = explain("/admin");
    assert!(admin.contains("Decision:  DENY"), "{admin}");
    assert!(
        admin.contains(&format!(
            "Because:   rule 0 of DENY policy {NS}/deny-admin matched"
        )),
        "{admin}"
    );
    let private = explain("/private/report");
    assert!(private.contains("Decision:  DENY"), "{private}");
    assert!(
        private.contains("ALLOW policies select the pod and none matched"),
        "{private}"
    );
    let shop = explain("/shop");
    assert!(shop.contains("Decision:  ALLOW"), "{shop}");
    assert!(
        shop.contains(&format!(
            "rule 0 of ALLOW policy {NS}/private-needs-mesh matched"
        )),
        "{shop}"
    );
}
