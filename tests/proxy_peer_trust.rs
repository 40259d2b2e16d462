//! Peer metadata trust on a real weft-proxy (issue 21 item 3): a server proxy with iptables
//! capture in a network namespace, and mTLS clients in another one that hold certificates of
//! the test CA and send the metadata frame a weft client proxy sends
//! (`weft::proxy::peer_meta::PeerMeta::encode`), naming whatever workload they like. Proves
//! that the server reports a claimed workload only when its snapshot's table of the mesh's
//! workloads has it under the certificate's service account, and measures the proxy's
//! resident memory (VmRSS) while one peer claims 10,000 distinct fabricated workloads.
//! Needs root (network namespaces, iptables), as tests/proxy_netns.rs.

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use weft::proxy::peer_meta::PeerMeta;
use weft::proxy::tls::{TlsContext, WorkloadCert};

const CLIENT_IP: &str = "198.18.0.1";
const SERVER_IP: &str = "198.18.0.2";
const APP_PORT: u16 = 8080;
const CLIENT_ID: &str = "spiffe://cluster.local/ns/demo/sa/client";
const SERVER_ID: &str = "spiffe://cluster.local/ns/demo/sa/server";
/// Another service account of the same namespace, and its workload.
const OTHER_ID: &str = "spiffe://cluster.local/ns/demo/sa/billing";

/// The bound README's security section states: the growth of the proxy's resident memory
/// while one peer claims 10,000 distinct fabricated workloads, after a warm-up.
const RSS_BOUND_KIB: u64 = 4 * 1024;
/// The same with a snapshot from an operator that sends no workload table: the names are
/// believed up to the per-proxy cap of 1,000 (metrics::MAX_PEER_WORKLOADS), the rest
/// reported `unknown` and counted.
const RSS_BOUND_WITHOUT_TABLE_KIB: u64 = 16 * 1024;
const FABRICATED: usize = 10_000;
const WARM_UP: usize = 2_000;

fn workload(name: &str, version: &str) -> Value {
    json!({"name": name, "namespace": "demo", "app": name, "version": version,
           "canonicalService": name, "canonicalRevision": version, "cluster": "Kubernetes"})
}

/// The server's snapshot: one TCP port; `peers` as the operator writes it (sorted by
/// identity, then workload), or absent (an operator from before the table).
fn snapshot(with_table: bool) -> Value {
    let mut s = json!({
        "schemaVersion": 1,
        "version": "server-v1",
        "identity": SERVER_ID,
        "trustDomain": "cluster.local",
        "workload": workload("server", "v1"),
        "inbound": {
            "defaultMode": "STRICT",
            "services": {APP_PORT.to_string(): ["echo.demo.svc.cluster.local"]},
            "protocols": {APP_PORT.to_string(): "tcp"}
        },
        "outbound": {"policy": "ALLOW_ANY"}
    });
    if with_table {
        s["peers"] = json!([
            {"identity": OTHER_ID, "workload": workload("billing", "v1")},
            {"identity": CLIENT_ID, "workload": workload("client", "v1")},
            {"identity": SERVER_ID, "workload": workload("server", "v1")},
        ]);
    }
    s
}

/// What the client's frame says: a workload of namespace demo, app = name, version v1.
fn claim(name: &str) -> PeerMeta {
    PeerMeta {
        workload: name.to_string(),
        namespace: "demo".into(),
        service: Some("echo.demo.svc.cluster.local".into()),
        app: name.to_string(),
        version: "v1".into(),
        canonical_service: name.to_string(),
        canonical_revision: "v1".into(),
        cluster: "Kubernetes".into(),
    }
}

#[test]
fn a_claimed_workload_counts_only_when_it_runs_as_the_certificates_service_account() {
    let mesh = Mesh::start(snapshot(true));
    // Who it is: believed, with the control plane's labels.
    mesh.connect_claiming(&[claim("client")]);
    // A workload of the same namespace that runs as another service account (the namespace
    // alone let this through before), and one nobody runs.
    mesh.connect_claiming(&[claim("billing"), claim("made-up")]);
    let stats = mesh.stats_once_closed(3);
    let by_source = |workload: &str| {
        series(&stats, "istio_tcp_connections_opened_total")
            .iter()
            .filter(|l| l.contains(&format!("source_workload=\"{workload}\",")))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum::<u64>()
    };
    assert_eq!(by_source("client"), 1, "{stats}");
    assert_eq!(by_source("billing"), 0, "{stats}");
    assert_eq!(by_source("made-up"), 0, "{stats}");
    assert_eq!(by_source("unknown"), 2, "{stats}");
    // The namespace is the certificate's either way.
    assert!(
        series(&stats, "istio_tcp_connections_opened_total")
            .iter()
            .all(|l| l.contains("source_workload_namespace=\"demo\"")),
        "{stats}"
    );
}

#[test]
fn ten_thousand_fabricated_workloads_leave_the_proxy_rss_within_its_bound() {
    for (with_table, bound_kib) in [(true, RSS_BOUND_KIB), (false, RSS_BOUND_WITHOUT_TABLE_KIB)] {
        let mesh = Mesh::start(snapshot(with_table));
        // Warm-up: connections claiming the real workload, so buffers, TLS state and the
        // allocator's arenas exist before the measurement.
        let same: Vec<PeerMeta> = (0..WARM_UP).map(|_| claim("client")).collect();
        mesh.connect_claiming(&same);
        let _ = mesh.stats_once_closed(WARM_UP);
        let before = mesh.rss_kib();
        let fabricated: Vec<PeerMeta> = (0..FABRICATED)
            .map(|i| {
                let mut m = claim(&format!("fabricated-{i:05}"));
                m.version = format!("v{i}");
                m.canonical_revision = m.version.clone();
                m
            })
            .collect();
        mesh.connect_claiming(&fabricated);
        let stats = mesh.stats_once_closed(WARM_UP + FABRICATED);
        let after = mesh.rss_kib();
        let grew = after.saturating_sub(before);
        let reported = series(&stats, "istio_tcp_connections_opened_total")
            .iter()
            .filter(|l| l.contains("source_workload=\"fabricated-"))
            .count();
        let overflow = stats
            .lines()
            .find_map(|l| l.strip_prefix("weft_peer_workloads_overflow_total "))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
        eprintln!(
            "{} table: VmRSS {before} KiB before, {after} KiB after {FABRICATED} fabricated workloads (+{grew} KiB); {reported} reported, overflow {overflow}",
            if with_table { "with the" } else { "without a" }
        );
        if with_table {
            assert_eq!(reported, 0, "no fabricated name is reported");
        } else {
            // The cap: the client itself plus 999 fabricated names fill the 1,000.
            assert_eq!(reported, 999, "the cap of 1,000 peer workloads");
            assert_eq!(overflow, (FABRICATED - 999) as u64);
        }
        assert!(
            grew <= bound_kib,
            "VmRSS grew by {grew} KiB (bound {bound_kib} KiB)"
        );
    }
}

/// `name{...} value` lines of one metric.
fn series<'a>(text: &'a str, name: &str) -> Vec<&'a str> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .collect()
}

// === plumbing ===

struct Mesh {
    proxy: Child,
    log: PathBuf,
    tls: Arc<TlsContext>,
    client: Netns,
    server: Netns,
    _dir: Workdir,
}

impl Drop for Mesh {
    fn drop(&mut self) {
        let _ = self.proxy.kill();
        let _ = self.proxy.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- proxy log ---\n{}",
                fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }
}

impl Mesh {
    fn start(snapshot: Value) -> Mesh {
        require_root();
        let dir = Workdir::new();
        let client = Netns::new("ptc");
        let server = Netns::new("pts");
        link(&client, CLIENT_IP, &server, SERVER_IP);
        let bin = dir.bin.display().to_string();
        let init = server
            .exec(&bin, &["init"])
            .output()
            .expect("weft-proxy init");
        assert!(
            init.status.success(),
            "init: {}",
            String::from_utf8_lossy(&init.stderr)
        );
        server.spawn_in(echo_app);

        let ca = TestCa::new("cluster.local root");
        let certs = dir.path.join("server-certs");
        fs::create_dir_all(&certs).expect("cert dir");
        let server_cert = ca.issue(SERVER_ID);
        fs::write(certs.join("cert-chain.pem"), &server_cert.0).expect("cert");
        fs::write(certs.join("key.pem"), &server_cert.1).expect("key");
        fs::write(certs.join("root-cert.pem"), &ca.cert_pem).expect("roots");
        let snapshot_file = dir.path.join("snapshot.json");
        fs::write(&snapshot_file, snapshot.to_string()).expect("snapshot");
        let log = dir.path.join("proxy.log");
        let log_file = fs::File::create(&log).expect("log");
        let proxy = server
            .exec(
                "setpriv",
                &[
                    "--reuid=1337",
                    "--regid=1337",
                    "--clear-groups",
                    &bin,
                    "run",
                    "--cert-dir",
                    &certs.display().to_string(),
                    "--snapshot-file",
                    &snapshot_file.display().to_string(),
                    "--pod-ip",
                    SERVER_IP,
                    "--log-level",
                    "warn",
                ],
            )
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("log"))
            .stderr(log_file)
            .spawn()
            .expect("weft-proxy run");

        let client_cert = ca.issue(CLIENT_ID);
        let cert = WorkloadCert::from_pem(
            client_cert.0.as_bytes(),
            client_cert.1.as_bytes(),
            ca.cert_pem.as_bytes(),
        )
        .expect("client certificate");
        let tls = Arc::new(TlsContext::new(Arc::new(cert)).expect("client TLS"));
        let mesh = Mesh {
            proxy,
            log,
            tls,
            client,
            server,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while mesh.get("127.0.0.1:15021", "/healthz/ready").0 != 200 {
            assert!(Instant::now() < deadline, "the proxy never became ready");
            std::thread::sleep(Duration::from_millis(50));
        }
        mesh
    }

    /// One mTLS connection per claim from the client namespace to the app's port (captured
    /// by the server proxy), each sending the frame, a line, and reading the echo. Eight at a
    /// time.
    fn connect_claiming(&self, claims: &[PeerMeta]) {
        let frames: Arc<Vec<Vec<u8>>> = Arc::new(claims.iter().map(PeerMeta::encode).collect());
        let next = Arc::new(AtomicUsize::new(0));
        let tls = self.tls.clone();
        self.client.run_in(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(4)
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let config = tls.client_config(SERVER_ID).expect("client config");
                let mut tasks = Vec::new();
                for _ in 0..8 {
                    let (frames, next, config) = (frames.clone(), next.clone(), config.clone());
                    tasks.push(tokio::spawn(async move {
                        loop {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            let Some(frame) = frames.get(i) else { return };
                            call(&config, frame)
                                .await
                                .unwrap_or_else(|e| panic!("connection {i}: {e}"));
                        }
                    }));
                }
                for t in tasks {
                    t.await.expect("client task");
                }
            });
        });
    }

    fn get(&self, addr: &'static str, path: &'static str) -> (u16, String) {
        self.server.run_in(move || http_get(addr, path))
    }

    /// The server's metrics once it has seen `connections` close (a connection's metrics are
    /// final when it closes, a moment after the client saw its end).
    fn stats_once_closed(&self, connections: usize) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (_, text) = self.get("127.0.0.1:15020", "/stats/prometheus");
            let closed: u64 = series(&text, "istio_tcp_connections_closed_total")
                .iter()
                .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
                .sum();
            if closed >= connections as u64 {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "{closed} of {connections} closed:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The proxy's resident set (VmRSS of /proc/<pid>/status; `ip netns exec` and setpriv
    /// exec the proxy in place, so the child's pid is the proxy's).
    fn rss_kib(&self) -> u64 {
        let status =
            fs::read_to_string(format!("/proc/{}/status", self.proxy.id())).expect("proxy status");
        assert!(
            status.contains("Name:\tweft-proxy"),
            "pid is not the proxy: {status}"
        );
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    }
}

async fn call(config: &Arc<rustls::ClientConfig>, frame: &[u8]) -> Result<(), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = format!("{SERVER_IP}:{APP_PORT}");
    let tcp = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::net::TcpStream::connect(&addr),
    )
    .await
    .map_err(|_| "connect timed out".to_string())?
    .map_err(|e| e.to_string())?;
    let name = weft::proxy::tls::upstream_server_name(SERVER_IP.parse().map_err(|_| "ip")?);
    let connector = tokio_rustls::TlsConnector::from(config.clone());
    let mut tls = tokio::time::timeout(Duration::from_secs(5), connector.connect(name, tcp))
        .await
        .map_err(|_| "handshake timed out".to_string())?
        .map_err(|e| format!("handshake: {e}"))?;
    let mut sent = frame.to_vec();
    sent.extend_from_slice(b"ping\n");
    tls.write_all(&sent).await.map_err(|e| e.to_string())?;
    let mut got = [0u8; 5];
    tokio::time::timeout(Duration::from_secs(5), tls.read_exact(&mut got))
        .await
        .map_err(|_| "no echo".to_string())?
        .map_err(|e| e.to_string())?;
    if &got != b"ping\n" {
        return Err(format!("echo {got:?}"));
    }
    let _ = tls.shutdown().await;
    Ok(())
}

/// The app: answers each connection's first line with that line, then closes.
fn echo_app() {
    let listener = std::net::TcpListener::bind(("0.0.0.0", APP_PORT)).expect("bind the app's port");
    for stream in listener.incoming().flatten() {
        std::thread::spawn(move || {
            let mut stream = stream;
            let mut buf = [0u8; 64];
            let mut line = Vec::new();
            while !line.ends_with(b"\n") {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => line.extend_from_slice(&buf[..n]),
                }
            }
            let _ = stream.write_all(&line);
        });
    }
}

fn http_get(addr: &str, path: &str) -> (u16, String) {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return (0, String::new());
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/plain\r\nConnection: close\r\n\r\n"
    );
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

fn require_root() {
    let uid = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    assert_eq!(
        uid.as_deref().unwrap_or("?"),
        "0",
        "proxy_peer_trust needs root (network namespaces, iptables)"
    );
}

fn must(cmd: &mut Command) {
    let out = cmd.output().expect("command");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

static SEQ: AtomicUsize = AtomicUsize::new(0);

fn unique(tag: &str) -> String {
    format!(
        "weft-p{}-{}-{tag}",
        std::process::id() % 100_000,
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// A directory UID 1337 can read, with a copy of the proxy binary (the build directory may
/// sit under a home UID 1337 cannot enter).
struct Workdir {
    path: PathBuf,
    bin: PathBuf,
}

impl Workdir {
    fn new() -> Self {
        use std::os::unix::fs::PermissionsExt;
        let path = std::env::temp_dir().join(unique("work"));
        fs::create_dir_all(&path).expect("workdir");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).expect("chmod");
        let bin = path.join("weft-proxy");
        fs::copy(env!("CARGO_BIN_EXE_weft-proxy"), &bin).expect("copy weft-proxy");
        fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).expect("chmod");
        Workdir { path, bin }
    }
}

impl Drop for Workdir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

struct Netns {
    name: String,
}

impl Netns {
    fn new(tag: &str) -> Self {
        let name = unique(tag);
        must(Command::new("ip").args(["netns", "add", &name]));
        must(Command::new("ip").args(["-n", &name, "link", "set", "lo", "up"]));
        Netns { name }
    }

    fn exec(&self, program: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]).args(args);
        cmd
    }

    fn enter(path: &str) {
        let file = fs::File::open(path).unwrap_or_else(|e| panic!("open {path}: {e}"));
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
            .unwrap_or_else(|e| panic!("setns {path}: {e}"));
    }

    /// Runs `f` on a thread inside this namespace and waits for it.
    fn run_in<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::spawn(move || {
            Netns::enter(&path);
            f()
        })
        .join()
        .unwrap_or_else(|_| panic!("thread in netns panicked"))
    }

    /// Starts `f` on a thread inside this namespace and leaves it running.
    fn spawn_in(&self, f: fn()) {
        let path = format!("/var/run/netns/{}", self.name);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            Netns::enter(&path);
            let _ = ready_tx.send(());
            f()
        });
        let _ = ready_rx.recv_timeout(Duration::from_secs(5));
        // The listener binds right after entering; give it a moment.
        std::thread::sleep(Duration::from_millis(100));
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
        "link", "add", "eth0", "netns", &a.name, "type", "veth", "peer", "name", "eth0", "netns",
        &b.name,
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

/// A test CA made with rcgen (the product's CA is `weft::pki`): PEM chain and key per issue.
struct TestCa {
    cert_pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl TestCa {
    fn new(name: &str) -> Self {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let cert = params.self_signed(&key).expect("self-signed");
        TestCa {
            cert_pem: cert.pem(),
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    fn issue(&self, spiffe_id: &str) -> (String, String) {
        use rcgen::{CertificateParams, ExtendedKeyUsagePurpose, KeyPair, SanType};
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.subject_alt_names = vec![SanType::URI(spiffe_id.try_into().expect("spiffe id"))];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        (cert.pem(), key.serialize_pem())
    }
}
