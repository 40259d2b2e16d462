//! `make bench`'s issuer rows (issue 24): CSR signing per second and latency percentiles through
//! HashiCorp Vault v1.21.0 (`vault server -dev` on loopback, e2e/scripts/install-vault.sh) and
//! through cert-manager (a CertificateRequest per CSR in the local cluster's API server, signed by
//! cert-manager v1.21.2's own CA issuer and default approver, e2e/cert-manager/) beside the builtin
//! CA, all through the seam every proxy CSR takes (`pki::issue`: CSR checks, signing, leaf
//! checks), in one run. Needs the local cluster; ignored in `cargo test`. e2e/bench/run.sh runs
//! it (release) in its cluster stage and reads the JSON written to `WEFT_BENCH_ISSUERS_OUT`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use weft::pki::{
    self, CERT_MANAGER_GROUP, CertManagerConfig, CertManagerIssuer, Issuer, IssuerRefKind, MeshCa,
    VaultAuth, VaultConfig, VaultCredentials, VaultIssuer, WorkloadCsr, WorkloadKey,
};

const NS: &str = "weft-bench-cert-manager";
const ID: &str = "spiffe://cluster.local/ns/bench/sa/web";
/// In-flight CSRs: a burst of proxies renewing at once.
const CONCURRENCY: usize = 16;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn kubeconfig() -> PathBuf {
    std::env::var_os("KUBECONFIG")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("e2e/.cluster/kubeconfig"))
}

fn kubectl(args: &[&str]) -> String {
    let versions = std::fs::read_to_string(repo().join("e2e/components/versions.env"))
        .expect("e2e/components/versions.env");
    let k8s = versions
        .lines()
        .find_map(|l| l.strip_prefix("K8S_VERSION="))
        .expect("K8S_VERSION")
        .trim()
        .to_string();
    let home = std::env::var("HOME").expect("HOME");
    let bin = std::env::var("KUBECTL")
        .unwrap_or_else(|_| format!("{home}/.cache/weft-e2e/kubernetes-v{k8s}/kubectl"));
    let out = Command::new(bin)
        .arg("--kubeconfig")
        .arg(kubeconfig())
        .args(args)
        .output()
        .expect("kubectl");
    assert!(
        out.status.success(),
        "kubectl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn sh(dir: &Path, script: &str) {
    let ok = Command::new("bash")
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .status()
        .expect("bash")
        .success();
    assert!(ok, "{script}");
}

/// Vault's port on loopback (not the e2e tests' 18207, so both can run).
const VAULT_ADDR: &str = "127.0.0.1:18217";
const VAULT_TOKEN: &str = "weft-bench-root";

/// A `vault server -dev` configured as docs/pki.md says, and a Vault issuer for it.
async fn vault() -> (Controller, Arc<dyn Issuer>) {
    let out = Command::new("bash")
        .arg(repo().join("e2e/scripts/install-vault.sh"))
        .stderr(Stdio::inherit())
        .output()
        .expect("install-vault.sh");
    assert!(out.status.success(), "install-vault.sh");
    let bin = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let server = Controller(
        Command::new(&bin)
            .args([
                "server",
                "-dev",
                &format!("-dev-listen-address={VAULT_ADDR}"),
                &format!("-dev-root-token-id={VAULT_TOKEN}"),
            ])
            .env("HOME", std::env::temp_dir())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("vault server -dev"),
    );
    let cli = |args: &[&str]| {
        Command::new(&bin)
            .args(args)
            .env("VAULT_ADDR", format!("http://{VAULT_ADDR}"))
            .env("VAULT_TOKEN", VAULT_TOKEN)
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    };
    let started = Instant::now();
    while !cli(&["status"]) {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "vault never started"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    for args in [
        &["secrets", "enable", "pki"][..],
        &["secrets", "tune", "-max-lease-ttl=87600h", "pki"],
        &[
            "write",
            "pki/roles/weft",
            "allow_any_name=true",
            "allow_subdomains=true",
            "key_type=any",
            "allowed_uri_sans=spiffe://cluster.local/*",
        ],
        &[
            "write",
            "pki/root/generate/internal",
            "common_name=osm.root",
            "ttl=87600h",
        ],
    ] {
        assert!(cli(args), "vault {}", args.join(" "));
    }
    let config = VaultConfig {
        address: format!("http://{VAULT_ADDR}"),
        mount: "pki".into(),
        role: "weft".into(),
        auth: VaultAuth::TokenSecret("unused".into()),
        ca_cert_secret: None,
    };
    // A watch keeps its last value after the sender goes: the token stays readable.
    let (_, token) = tokio::sync::watch::channel(Some(VAULT_TOKEN.to_string()));
    let credentials = VaultCredentials::from_config(&config, token);
    let issuer = VaultIssuer::connect(config, credentials, None, "cluster.local", "bench")
        .await
        .expect("Vault issuer");
    (server, Arc::new(issuer))
}

struct Controller(Child);

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `seconds` of `CONCURRENCY` loops signing `csrs` round robin through `issuer`.
async fn measure(
    issuer: Arc<dyn Issuer>,
    csrs: Arc<Vec<String>>,
    seconds: Duration,
) -> serde_json::Value {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..CONCURRENCY {
        let (issuer, csrs) = (issuer.clone(), csrs.clone());
        tasks.push(tokio::spawn(async move {
            let mut took = Vec::new();
            let mut failed = 0u64;
            let mut i = worker;
            while started.elapsed() < seconds {
                let csr = WorkloadCsr {
                    csr_pem: &csrs[i % csrs.len()],
                    spiffe_id: ID,
                    namespace: "bench",
                    service_account: "web",
                    ttl: Duration::from_secs(3600),
                };
                let t = Instant::now();
                match pki::issue(&*issuer, &csr, &[], SystemTime::now()).await {
                    Ok(_) => took.push(t.elapsed()),
                    Err(e) => {
                        failed += 1;
                        eprintln!("{e}");
                    }
                }
                i += CONCURRENCY;
            }
            (took, failed)
        }));
    }
    let mut took = Vec::new();
    let mut failed = 0;
    for task in tasks {
        let (t, f) = task.await.expect("worker");
        took.extend(t);
        failed += f;
    }
    let elapsed = started.elapsed().as_secs_f64();
    took.sort();
    let pct = |p: f64| {
        took.get(((took.len() as f64 * p).ceil() as usize).saturating_sub(1))
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    serde_json::json!({
        "csr_per_s": took.len() as f64 / elapsed,
        "signed": took.len(),
        "failed": failed,
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "concurrency": CONCURRENCY,
        "seconds": elapsed,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the local cluster (e2e/cluster/up.sh); make bench runs it"]
async fn csr_signing_through_cert_manager_beside_the_builtin_ca() {
    let seconds = Duration::from_secs(
        std::env::var("WEFT_BENCH_ISSUER_SECONDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(10),
    );
    let csrs: Arc<Vec<String>> = Arc::new(
        (0..64)
            .map(|_| WorkloadKey::generate().unwrap().csr_pem(ID).unwrap())
            .collect(),
    );

    // The builtin CA, through the same seam.
    let ca = MeshCa::generate_root("cluster.local", pki::DEFAULT_ROOT_VALIDITY).unwrap();
    let builtin = measure(Arc::new(ca), csrs.clone(), seconds).await;

    // Vault, on loopback.
    let (vault_server, vault_issuer) = vault().await;
    let vault = measure(vault_issuer, csrs.clone(), seconds).await;
    drop(vault_server);

    // cert-manager: its CRDs, a CA Issuer in a namespace of the bench's own, its controllers.
    kubectl(&[
        "apply",
        "--server-side",
        "-f",
        repo().join("e2e/cert-manager/crds").to_str().unwrap(),
    ]);
    kubectl(&[
        "wait",
        "--for=condition=Established",
        "crd/certificaterequests.cert-manager.io",
    ]);
    let dir = std::env::temp_dir().join(format!("weft-bench-cm-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    sh(
        &dir,
        "openssl ecparam -name prime256v1 -genkey -noout -out ca.key && \
         openssl req -x509 -new -key ca.key -subj '/CN=weft bench cert-manager CA' -days 2 \
           -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign -out ca.crt",
    );
    let ns_yaml = format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {NS}}}\n");
    std::fs::write(dir.join("ns.yaml"), ns_yaml).unwrap();
    kubectl(&["apply", "-f", dir.join("ns.yaml").to_str().unwrap()]);
    kubectl(&[
        "-n",
        NS,
        "delete",
        "secret",
        "bench-ca",
        "--ignore-not-found",
    ]);
    kubectl(&[
        "-n",
        NS,
        "create",
        "secret",
        "tls",
        "bench-ca",
        &format!("--cert={}", dir.join("ca.crt").display()),
        &format!("--key={}", dir.join("ca.key").display()),
    ]);
    std::fs::write(
        dir.join("issuer.yaml"),
        format!("apiVersion: cert-manager.io/v1\nkind: Issuer\nmetadata: {{name: bench-ca, namespace: {NS}}}\nspec: {{ca: {{secretName: bench-ca}}}}\n"),
    )
    .unwrap();
    kubectl(&["apply", "-f", dir.join("issuer.yaml").to_str().unwrap()]);
    let out = Command::new("bash")
        .arg(repo().join("e2e/scripts/install-cert-manager.sh"))
        .stderr(Stdio::inherit())
        .output()
        .expect("install-cert-manager.sh");
    assert!(out.status.success());
    let bin = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let _controller = Controller(
        Command::new(bin)
            .arg("-kubeconfig")
            .arg(kubeconfig())
            .args(["-namespace", NS])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cert-manager-controller"),
    );

    let config = kube::config::Kubeconfig::read_from(kubeconfig()).expect("kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(config, &Default::default())
        .await
        .expect("kubeconfig");
    let client = kube::Client::try_from(config).expect("client");
    let roots = vec![std::fs::read_to_string(dir.join("ca.crt")).unwrap()];
    let issuer: Arc<dyn Issuer> = Arc::new(CertManagerIssuer::new(
        CertManagerConfig {
            issuer_name: "bench-ca".into(),
            issuer_kind: IssuerRefKind::Issuer,
            issuer_group: CERT_MANAGER_GROUP.into(),
            ca_bundle_secret: "unused".into(),
        },
        roots,
        weft::operator::issuer::certificate_requests_api(client, NS),
        NS,
    ));
    // Until the controller's informers are up, the first requests wait: one must pass first.
    let started = Instant::now();
    loop {
        let csr = WorkloadCsr {
            csr_pem: &csrs[0],
            spiffe_id: ID,
            namespace: "bench",
            service_account: "web",
            ttl: Duration::from_secs(3600),
        };
        match pki::issue(&*issuer, &csr, &[], SystemTime::now()).await {
            Ok(_) => break,
            Err(e) if started.elapsed() < Duration::from_secs(60) => eprintln!("warming up: {e}"),
            Err(e) => panic!("cert-manager never signed: {e}"),
        }
    }
    let cert_manager = measure(issuer, csrs, seconds).await;
    kubectl(&["delete", "namespace", NS, "--wait=false"]);

    let result =
        serde_json::json!({"builtin": builtin, "vault": vault, "cert_manager": cert_manager});
    println!("{result:#}");
    assert!(cert_manager["signed"].as_u64() > Some(0));
    assert_eq!(cert_manager["failed"], 0, "{result}");
    assert_eq!(vault["failed"], 0, "{result}");
    if let Some(out) = std::env::var_os("WEFT_BENCH_ISSUERS_OUT") {
        std::fs::write(out, result.to_string()).expect("WEFT_BENCH_ISSUERS_OUT");
    }
}
