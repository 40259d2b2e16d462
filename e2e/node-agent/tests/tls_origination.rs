//! TLS origination (DestinationRule `tls.mode` SIMPLE / MUTUAL), as Istio's egress
//! TLS-origination task and its egress-gateway variant do it (issues 19 and 20): the app sends
//! plain HTTP (`curl http://partner.tlsorig.test`), its sidecar (or the egress gateway on its
//! hop out) opens TLS to the server and verifies it with the CA of a `credentialName` Secret
//! read in the proxy's namespace, or of a `caCertificates` file mounted into the proxy's
//! container; MUTUAL presents the Secret's (or the files') client certificate.
//!
//! "Outside the cluster" is the node: `openssl s_server -www` (which answers every GET with 200
//! and a status page) on the node address 198.18.0.1, ports 18443 (server certificate only),
//! 18444 (client certificate required, `-Verify`) and 18445 (the gateway's), with
//! certificates of a test CA made here; a second CA stands for a wrong one. The ServiceEntry
//! maps the app's port 80 to targetPort 18443 as the task maps 80 to 443; the client's curl
//! resolves the declared names to the node (`--resolve`). Every server speaks TLS only: a 200
//! is an originated, verified TLS connection; a server the CA does not vouch for is a 503.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use support::{CURL_CLIENT, Namespace, deployed, wait_for, weft};

const REVISION: &str = "tls-origination";
/// The node address (e2e/cluster/env.sh NODE_IP): "outside the cluster".
const NODE_IP: &str = "198.18.0.1";
const HOST: &str = "partner.tlsorig.test";
const GW_HOST: &str = "gw-partner.tlsorig.test";
/// The host whose rule reads certificate files (the server's certificate holds it too).
const FILES_HOST: &str = "files.tlsorig.test";
const SIMPLE_PORT: u16 = 18443;
const MUTUAL_PORT: u16 = 18444;
const GATEWAY_PORT: u16 = 18445;
const APPS: &str = "tlsorig-apps";
const GW_APPS: &str = "tlsorig-gw-apps";
const GATEWAY_NS: &str = "tlsorig-egress";
const GATEWAY: &str = "egressgateway-tls";

fn run(dir: &Path, args: &[&str]) {
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
}

/// A CA (`<name>-ca.pem`/`.key`) in `dir`.
fn ca(dir: &Path, name: &str) {
    run(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &format!("{name}-ca.key"),
            "-out",
            &format!("{name}-ca.pem"),
            "-days",
            "2",
            "-subj",
            &format!("/CN=e2e {name} CA"),
        ],
    );
}

/// A leaf (`<name>.pem`/`.key`) signed by CA `by`, for the DNS names `sans`.
fn leaf(dir: &Path, name: &str, by: &str, sans: &[&str]) {
    run(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
            "-subj",
            &format!("/CN={}", sans[0]),
        ],
    );
    let ext: Vec<String> = sans.iter().map(|s| format!("DNS:{s}")).collect();
    std::fs::write(
        dir.join(format!("{name}.cnf")),
        format!("subjectAltName={}\n", ext.join(",")),
    )
    .expect("write the extension file");
    run(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{by}-ca.pem"),
            "-CAkey",
            &format!("{by}-ca.key"),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &format!("{name}.cnf"),
            "-out",
            &format!("{name}.pem"),
        ],
    );
}

/// The certificates of a test: the partner's CA and server certificate (every host), our
/// client CA and client certificate, and a CA that vouches for nothing here.
fn certificates(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("weft-tlsorig-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    ca(&dir, "partner");
    ca(&dir, "client");
    ca(&dir, "wrong");
    leaf(&dir, "server", "partner", &[HOST, GW_HOST, FILES_HOST]);
    leaf(&dir, "client", "client", &["client.tlsorig.test"]);
    dir
}

/// An `openssl s_server -www` on the node address, stopped when dropped.
struct External(Child);

impl Drop for External {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The partner's server on `port`; with `mutual`, a client certificate of our client CA is
/// required (no certificate, no handshake).
fn external(dir: &Path, port: u16, mutual: bool) -> External {
    let mut cmd = Command::new("openssl");
    cmd.current_dir(dir)
        .args(["s_server", "-quiet", "-www", "-accept"])
        .arg(format!("{NODE_IP}:{port}"))
        .args(["-cert", "server.pem", "-key", "server.key"]);
    if mutual {
        cmd.args(["-Verify", "1", "-CAfile", "client-ca.pem"]);
    }
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("openssl s_server");
    let server = External(child);
    // From the node itself, over TLS with the partner's CA, the server answers 200.
    let mut args = vec![
        "-s".to_string(),
        "-o".into(),
        "/dev/null".into(),
        "-w".into(),
        "%{http_code}".into(),
        "--max-time".into(),
        "5".into(),
        "--cacert".into(),
        dir.join("partner-ca.pem").display().to_string(),
        "--resolve".into(),
        format!("{HOST}:{port}:{NODE_IP}"),
    ];
    if mutual {
        args.extend([
            "--cert".into(),
            dir.join("client.pem").display().to_string(),
            "--key".into(),
            dir.join("client.key").display().to_string(),
        ]);
    }
    args.push(format!("https://{HOST}:{port}/"));
    wait_for(
        Duration::from_secs(20),
        || {
            let out = Command::new("curl").args(&args).output().expect("curl");
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        },
        |code| code == "200",
    );
    server
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

/// (HTTP status, body) of the client pod's plain-HTTP curl of `url`, `host:port` pinned to
/// the node address.
fn curl(ns: &Namespace, host: &str, port: u16, url: &str) -> (String, String) {
    curl_from(ns, "client", host, port, url)
}

/// [`curl`] from pod `pod` (its container `client`).
fn curl_from(ns: &Namespace, pod: &str, host: &str, port: u16, url: &str) -> (String, String) {
    let resolve = format!("{host}:{port}:{NODE_IP}");
    let out = ns.kubectl(&[
        "exec",
        pod,
        "-c",
        "client",
        "--",
        "curl",
        "-s",
        "-w",
        "\n%{http_code}",
        "--max-time",
        "10",
        "--resolve",
        &resolve,
        url,
    ]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", text.as_str()));
    (code.trim().to_string(), body.to_string())
}

/// A `kubernetes.io/tls` Secret `name` in `ns`: our client certificate and key, and `ca` as
/// `ca.crt` (the CA the server is verified with).
fn secret(c: &support::Cluster, dir: &Path, ns: &str, name: &str, ca: &str) {
    let file = |f: &str| dir.join(f).display().to_string();
    c.ok(&[
        "-n",
        ns,
        "create",
        "secret",
        "generic",
        name,
        "--type=kubernetes.io/tls",
        &format!("--from-file=tls.crt={}", file("client.pem")),
        &format!("--from-file=tls.key={}", file("client.key")),
        &format!("--from-file=ca.crt={}", file(&format!("{ca}-ca.pem"))),
    ]);
}

/// The grant `weft gateway install` makes in a gateway namespace, for a client namespace: the
/// operator may read its TLS Secrets (docs/egress.md, "TLS origination").
fn grant(ns: &Namespace) {
    ns.apply(
        r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: weft-gateway-secrets}
rules: [{apiGroups: [""], resources: [secrets], verbs: [get, list, watch]}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: weft-gateway-secrets}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: weft-gateway-secrets}
subjects: [{kind: ServiceAccount, name: weft-operator, namespace: weft-system}]
"#,
    );
}

fn revision(c: &support::Cluster) {
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
}

/// Calls `f` until `ok` holds of its answer or `limit` passes; the last answer.
fn until(
    limit: Duration,
    mut f: impl FnMut() -> (String, String),
    ok: impl Fn(&(String, String)) -> bool,
) -> (String, String) {
    let start = std::time::Instant::now();
    loop {
        let got = f();
        if ok(&got) || start.elapsed() > limit {
            return got;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn weft_accepted(ns: &Namespace, what: &str) -> String {
    wait_for(
        Duration::from_secs(30),
        || {
            ns.jsonpath(
                what,
                "{.status.conditions[?(@.type==\"WeftAccepted\")].status}/{.status.conditions[?(@.type==\"WeftAccepted\")].message}",
            )
        },
        |s| !s.starts_with('/'),
    )
}

#[test]
fn a_sidecar_originates_simple_and_mutual_tls_for_a_declared_host_and_fails_closed() {
    let c = deployed();
    let dir = certificates("sidecar");
    let _simple = external(&dir, SIMPLE_PORT, false);
    let _mutual = external(&dir, MUTUAL_PORT, true);
    revision(c);
    let apps = c.namespace(APPS);
    c.ok(&[
        "label",
        "namespace",
        APPS,
        &format!("istio.io/rev={REVISION}"),
    ]);
    grant(&apps);
    secret(c, &dir, APPS, "partner-client", "partner");
    secret(c, &dir, APPS, "wrong-ca", "wrong");
    apps.apply(&format!(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: partner}}
spec:
  hosts: [{HOST}]
  location: MESH_EXTERNAL
  resolution: DNS
  ports:
  - {{number: 80, name: http-port, protocol: HTTP, targetPort: {SIMPLE_PORT}}}
  - {{number: 8080, name: http-mutual, protocol: HTTP, targetPort: {MUTUAL_PORT}}}
  - {{number: 8081, name: http-wrong-ca, protocol: HTTP, targetPort: {SIMPLE_PORT}}}
  - {{number: 8082, name: http-wrong-san, protocol: HTTP, targetPort: {SIMPLE_PORT}}}
  - {{number: 8083, name: http-simple-to-mutual, protocol: HTTP, targetPort: {MUTUAL_PORT}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: originate-tls-for-partner}}
spec:
  host: {HOST}
  # This namespace's alone: a rule every namespace sees needs the Secret in each namespace
  # whose proxies could use it, and names the ones that lack it (WeftAccepted False).
  exportTo: ["."]
  trafficPolicy:
    portLevelSettings:
    - port: {{number: 80}}
      tls: {{mode: SIMPLE, credentialName: partner-client}}
    - port: {{number: 8080}}
      tls: {{mode: MUTUAL, credentialName: partner-client}}
    - port: {{number: 8081}}
      tls: {{mode: SIMPLE, credentialName: wrong-ca}}
    - port: {{number: 8082}}
      tls: {{mode: SIMPLE, credentialName: partner-client, subjectAltNames: [other.tlsorig.test]}}
    - port: {{number: 8083}}
      tls: {{mode: SIMPLE, credentialName: partner-client}}
"#
    ));
    apps.apply(CURL_CLIENT);
    apps.ok(&[
        "wait",
        "--for=condition=Ready",
        "pod/client",
        "--timeout=90s",
    ]);

    // SIMPLE: the app's plain HTTP on port 80 leaves as TLS to 18443, verified with the
    // Secret's ca.crt; the answer is the TLS server's status page.
    let (code, body) = until(
        Duration::from_secs(60),
        || curl(&apps, HOST, 80, &format!("http://{HOST}/")),
        |(code, _)| code == "200",
    );
    assert_eq!(code, "200");
    assert!(body.contains("Cipher"), "not the TLS server's page: {body}");
    // MUTUAL: the server requires our client certificate; it gets it.
    let (code, _) = until(
        Duration::from_secs(30),
        || curl(&apps, HOST, 8080, &format!("http://{HOST}:8080/")),
        |(code, _)| code == "200",
    );
    assert_eq!(code, "200");
    // Fail closed: a CA that does not vouch for the server, a name it does not hold, SIMPLE
    // to a server that wants a client certificate: 503, never a plaintext request.
    for port in [8081, 8082, 8083] {
        let (code, body) = curl(&apps, HOST, port, &format!("http://{HOST}:{port}/"));
        assert_eq!(code, "503", "port {port}: {body}");
    }
    let accepted = weft_accepted(&apps, "destinationrule originate-tls-for-partner");
    assert!(accepted.starts_with("True/"), "{accepted}");

    // The client's sidecar counts them under the declared host (reporter source).
    let metrics = apps.proxy_metrics("client");
    let ok_series = metrics
        .lines()
        .filter(|l| l.starts_with("istio_requests_total{"))
        .filter(|l| {
            l.contains(&format!("destination_service=\"{HOST}\""))
                && l.contains("response_code=\"200\"")
        })
        .count();
    assert!(ok_series >= 1, "{metrics}");

    // Certificate files in the proxy's container (Istio's caCertificates, clientCertificate,
    // privateKey), mounted from the same Secret with Istio's userVolume annotations: SIMPLE
    // verified with the CA file, MUTUAL presenting the client files, a missing file refused
    // (503, not plaintext), files beside credentialName refused by name on the rule.
    apps.apply(&format!(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: files}}
spec:
  hosts: [files.tlsorig.test]
  location: MESH_EXTERNAL
  resolution: DNS
  ports:
  - {{number: 80, name: http-simple, protocol: HTTP, targetPort: {SIMPLE_PORT}}}
  - {{number: 8080, name: http-mutual, protocol: HTTP, targetPort: {MUTUAL_PORT}}}
  - {{number: 8081, name: http-missing, protocol: HTTP, targetPort: {SIMPLE_PORT}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: originate-with-files}}
spec:
  host: files.tlsorig.test
  exportTo: ["."]
  trafficPolicy:
    portLevelSettings:
    - port: {{number: 80}}
      tls: {{mode: SIMPLE, caCertificates: /etc/partner/ca.crt}}
    - port: {{number: 8080}}
      tls:
        mode: MUTUAL
        caCertificates: /etc/partner/ca.crt
        clientCertificate: /etc/partner/tls.crt
        privateKey: /etc/partner/tls.key
    - port: {{number: 8081}}
      tls: {{mode: SIMPLE, caCertificates: /etc/partner/missing.crt}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: files-and-secret}}
spec:
  host: both.tlsorig.test
  exportTo: ["."]
  trafficPolicy:
    tls: {{mode: SIMPLE, caCertificates: /etc/partner/ca.crt, credentialName: partner-client}}
---
apiVersion: v1
kind: Pod
metadata:
  name: files-client
  labels: {{app: files-client}}
  annotations:
    sidecar.istio.io/userVolume: '{{"partner-certs":{{"secret":{{"secretName":"partner-client"}}}}}}'
    sidecar.istio.io/userVolumeMount: '{{"partner-certs":{{"mountPath":"/etc/partner","readOnly":true}}}}'
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: client
    image: curlimages/curl
    command: [sleep, "86400"]
"#
    ));
    apps.ok(&[
        "wait",
        "--for=condition=Ready",
        "pod/files-client",
        "--timeout=90s",
    ]);
    let files = |port: u16| {
        curl_from(
            &apps,
            "files-client",
            "files.tlsorig.test",
            port,
            &format!("http://files.tlsorig.test:{port}/"),
        )
    };
    let (code, body) = until(Duration::from_secs(60), || files(80), |(c, _)| c == "200");
    assert_eq!(code, "200", "SIMPLE with caCertificates: {body}");
    assert!(body.contains("Cipher"), "not the TLS server's page: {body}");
    let (code, body) = until(Duration::from_secs(30), || files(8080), |(c, _)| c == "200");
    assert_eq!(code, "200", "MUTUAL with the client files: {body}");
    let (code, body) = files(8081);
    assert_eq!(code, "503", "a missing caCertificates file: {body}");
    let accepted = weft_accepted(&apps, "destinationrule originate-with-files");
    assert!(accepted.starts_with("True/"), "{accepted}");
    let refused = weft_accepted(&apps, "destinationrule files-and-secret");
    assert!(
        refused.starts_with("False/") && refused.contains("exclude each other"),
        "{refused}"
    );
    // The client pod without the mount: the same rule's files are not in its proxy's
    // container, so its requests are refused, never sent unverified.
    let (code, _) = until(
        Duration::from_secs(30),
        || {
            curl(
                &apps,
                "files.tlsorig.test",
                80,
                "http://files.tlsorig.test/",
            )
        },
        |(code, _)| code != "000",
    );
    assert_eq!(code, "503");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Istio's egress-gateway TLS-origination task: sidecar → gateway over mesh mTLS
/// (ISTIO_MUTUAL), gateway → the partner over TLS it originates (SIMPLE), the CA read from a
/// Secret of the gateway's namespace. The originating rule lives in the gateway's namespace,
/// exported there only (`exportTo: ["."]`): the sidecars never originate to the partner's
/// HTTPS port, so they need no Secret (a rule they see would ask for one in theirs).
#[test]
fn an_egress_gateway_originates_tls_on_its_hop_out() {
    let c = deployed();
    let dir = certificates("gateway");
    let _server = external(&dir, GATEWAY_PORT, false);
    revision(c);
    let gw_ns = c.namespace(GATEWAY_NS);
    let apps = c.namespace(GW_APPS);
    c.ok(&[
        "label",
        "namespace",
        GW_APPS,
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
    secret(c, &dir, GATEWAY_NS, "partner-ca", "partner");
    c.apply(&format!(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: gw-partner, namespace: {GW_APPS}}}
spec:
  hosts: [{GW_HOST}]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports:
  - {{number: 80, name: http, protocol: HTTP}}
  - {{number: 443, name: https, protocol: HTTPS}}
  endpoints:
  - address: {NODE_IP}
    ports: {{https: {GATEWAY_PORT}}}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: {GATEWAY}, namespace: {GATEWAY_NS}}}
spec:
  selector: {{istio: {GATEWAY}}}
  servers:
  - port: {{number: 443, name: https, protocol: HTTPS}}
    hosts: [{GW_HOST}]
    tls: {{mode: ISTIO_MUTUAL}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: egressgateway-for-partner, namespace: {GW_APPS}}}
spec:
  host: {GATEWAY}.{GATEWAY_NS}.svc.cluster.local
  subsets:
  - name: partner
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: direct-partner-through-egress-gateway, namespace: {GW_APPS}}}
spec:
  hosts: [{GW_HOST}]
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
  - match:
    - gateways: [{GATEWAY_NS}/{GATEWAY}]
      port: 443
    route:
    - destination:
        host: {GW_HOST}
        port: {{number: 443}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: originate-tls-for-partner, namespace: {GATEWAY_NS}}}
spec:
  host: {GW_HOST}
  exportTo: ["."]
  trafficPolicy:
    portLevelSettings:
    - port: {{number: 443}}
      tls: {{mode: SIMPLE, credentialName: partner-ca}}
"#
    ));
    apps.apply(CURL_CLIENT);
    gw_ns.ok(&[
        "rollout",
        "status",
        &format!("deployment/{GATEWAY}"),
        "--timeout=180s",
    ]);
    apps.ok(&[
        "wait",
        "--for=condition=Ready",
        "pod/client",
        "--timeout=90s",
    ]);
    let gateway_pod = gw_ns.jsonpath(
        &format!("pods -l istio={GATEWAY}"),
        "{.items[0].metadata.name}",
    );

    // The app's plain HTTP goes to the gateway over mTLS, and from there over TLS the
    // gateway originates, verified with the CA of its own namespace's Secret.
    let (code, body) = until(
        Duration::from_secs(90),
        || curl(&apps, GW_HOST, 80, &format!("http://{GW_HOST}/")),
        |(code, _)| code == "200",
    );
    assert_eq!(code, "200");
    assert!(body.contains("Cipher"), "not the TLS server's page: {body}");
    // The gateway sent it to the host (reporter source, as Istio's gateways report).
    let gw_metrics = gw_ns.proxy_metrics(&gateway_pod);
    let sent = gw_metrics
        .lines()
        .filter(|l| l.starts_with("istio_requests_total{"))
        .filter(|l| {
            l.contains(&format!("destination_service=\"{GW_HOST}\""))
                && l.contains("response_code=\"200\"")
        })
        .count();
    assert!(sent >= 1, "{gw_metrics}");
    let accepted = weft_accepted(&gw_ns, "destinationrule originate-tls-for-partner");
    assert!(accepted.starts_with("True/"), "{accepted}");

    // Without the CA (the Secret gone), the gateway refuses the hop: 503, not plaintext.
    gw_ns.ok(&["delete", "secret", "partner-ca"]);
    let (code, _) = until(
        Duration::from_secs(60),
        || curl(&apps, GW_HOST, 80, &format!("http://{GW_HOST}/")),
        |(code, _)| code != "200",
    );
    assert_eq!(code, "503");
    let _ = std::fs::remove_dir_all(&dir);
}
