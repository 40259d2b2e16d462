//! Served-endpoint benchmarks (issue 21 item 12): the operator's endpoints asked over real
//! HTTPS through its own accept loop (`serve_tls_on`, as `weft operator` serves :15012 and
//! :15017), one request after another on one HTTP/2 connection from 127.0.0.1, each timed
//! from send to the whole answer:
//! - the CSR endpoint (`operator::csr::router`, the mesh CA signing a P-256 CSR) with the
//!   TokenReview answered from the cache, and with the cache off so every request reviews. The
//!   review is a stand-in that answers at once ([`InstantTokenReview`]): the real API server's
//!   TokenReview round trip (about a millisecond on the local cluster) adds to the uncached
//!   figure. The rate limits are raised out of the way: this measures cost, not the limits;
//! - AdmissionReviews: the golden review through `weft::webhook::review` behind the same TLS
//!   loop. The injector's own router needs the API server's caches; what it adds per request
//!   (a Store lookup, a metric) is not in this figure;
//! - config-stream pushes: `PUSH_STREAMS` proxy streams (mTLS, their pod's address, each
//!   acking) on the real config routes; the index changes `PUSH_CHANGES` times, each once every
//!   stream has the previous one; pushes/s is snapshots delivered per second, p99 the time from
//!   publication to a stream's arrival;
//! - an HTTP/2 rapid-reset burst (HEADERS + RST_STREAM × 1,000 on one connection): the
//!   operator thread's CPU per burst until the server's GOAWAY(ENHANCE_YOUR_CALM), the figure
//!   the README documents as the bound.
//!
//! The server runs on its own one-thread runtime ("served-op"), the clients on another
//! ("served-cl"); `run.sh` pins the process to one core, so request rates include the
//! client's share of that core.

use std::future::Future;
use std::pin::Pin;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use weft::operator::csr::{
    self, CertPolicy, RateLimiter, ReviewError, Reviewed, TokenReviewCache, TokenReviewer,
};

use super::*;

const SERVED_THREAD: &str = "served-op";
const CLIENT_THREAD: &str = "served-cl";
const TOKEN: &str = "token-of-bench-app";
const BENCH_ID: &str = "spiffe://cluster.local/ns/bench/sa/app";
const PUSH_STREAMS: usize = 100;
const PUSH_CHANGES: usize = 20;
const RESET_BURSTS: usize = 50;
const RESETS_PER_BURST: u32 = 1_000;

/// Stand-in for the API server's TokenReview: [`TOKEN`] is bench/app, at once.
struct InstantTokenReview;

impl TokenReviewer for InstantTokenReview {
    fn review<'a>(
        &'a self,
        token: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<Reviewed, ReviewError>> + Send + 'a>> {
        Box::pin(async move {
            if token != TOKEN {
                return Err(ReviewError::Unauthenticated {
                    reason: "not the bench token".into(),
                });
            }
            Ok(Reviewed {
                namespace: "bench".into(),
                service_account: "app".into(),
                pod: Some("app-0".into()),
            })
        })
    }
}

/// One served port: its address and the CA clients trust.
struct Served {
    addr: SocketAddr,
    ca: Arc<MeshCa>,
    _ca_tx: watch::Sender<Option<Arc<MeshCa>>>,
}

fn serve(
    op: &tokio::runtime::Runtime,
    app: impl FnOnce(watch::Receiver<Option<Arc<MeshCa>>>) -> axum::Router,
    client_certs: bool,
) -> Served {
    let ca = Arc::new(
        MeshCa::generate_root(TRUST_DOMAIN, Duration::from_secs(365 * 86_400)).expect("a root CA"),
    );
    let (ca_tx, ca_rx) = watch::channel(Some(ca.clone()));
    let resolver = Arc::new(ServingCertResolver::default());
    op.spawn(keep_serving_cert(
        resolver.clone(),
        ca_rx.clone(),
        OPERATOR_NAMESPACE.into(),
    ));
    let listener = op
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("a port on 127.0.0.1");
    let addr = listener.local_addr().expect("its address");
    let roots = client_certs.then(|| ca_rx.clone());
    op.spawn(serve_tls_on(listener, resolver.clone(), app(ca_rx), roots));
    let waiting = Instant::now();
    while !resolver.is_loaded() {
        assert!(
            waiting.elapsed() < Duration::from_secs(5),
            "no serving certificate"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    Served {
        addr,
        ca,
        _ca_tx: ca_tx,
    }
}

fn tls_config(ca: &MeshCa, alpn: &[u8]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for der in certificates_from_pem(&ca.roots_pem()).expect("roots") {
        roots.add(der.into()).expect("a root certificate");
    }
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    Arc::new(config)
}

async fn tls_to(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connects");
    tcp.set_nodelay(true).expect("nodelay");
    tokio_rustls::TlsConnector::from(config)
        .connect(
            ServerName::try_from(OPERATOR_SERVER_NAME).expect("a name"),
            tcp,
        )
        .await
        .expect("TLS handshake")
}

/// POSTs `body(i)` to `path` over one HTTP/2 connection, one request at a time, for
/// `seconds` after a warm-up; every answer must be `want`.
fn post_loop(
    cl: &tokio::runtime::Runtime,
    served: &Served,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Fn(usize) -> Bytes,
    want: StatusCode,
    seconds: Duration,
) -> Measured {
    cl.block_on(async {
        let tls = tls_to(served.addr, tls_config(&served.ca, b"h2")).await;
        let (mut send, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                .await
                .expect("HTTP/2 handshake");
        tokio::spawn(connection);
        let mut one = async |i: usize| {
            let mut request = Request::post(format!("https://{OPERATOR_SERVER_NAME}{path}"));
            for (k, v) in headers {
                request = request.header(*k, *v);
            }
            let request = request.body(Full::new(body(i))).expect("a request");
            let response = send.send_request(request).await.expect("an answer");
            let status = response.status();
            let bytes = response
                .into_body()
                .collect()
                .await
                .expect("the whole answer")
                .to_bytes();
            assert_eq!(status, want, "{}", String::from_utf8_lossy(&bytes));
        };
        let warmup = Instant::now();
        let mut i = 0;
        while warmup.elapsed() < Duration::from_millis(500) {
            one(i).await;
            i += 1;
        }
        let mut nanos = Vec::new();
        let start = Instant::now();
        while start.elapsed() < seconds {
            let t = Instant::now();
            one(i).await;
            nanos.push(t.elapsed().as_nanos() as u64);
            i += 1;
        }
        let elapsed = start.elapsed();
        nanos.sort_unstable();
        Measured {
            calls: nanos.len(),
            elapsed,
            nanos,
        }
    })
}

/// CSRs per second over HTTPS, TokenReview cached or not.
fn csr_https(
    op: &tokio::runtime::Runtime,
    cl: &tokio::runtime::Runtime,
    cached: bool,
    seconds: Duration,
) -> serde_json::Value {
    let reviews = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let served = serve(
        op,
        |ca_rx| {
            let mut state = csr::CsrState::new(
                ca_rx,
                Arc::new(Counted(InstantTokenReview, reviews.clone())),
                Arc::new(|_: &str| CertPolicy {
                    trust_domain: TRUST_DOMAIN.into(),
                    max_ttl: Duration::from_secs(86_400),
                }),
            );
            // Out of the way: this measures the work per request, not the limits.
            state.limiter = RateLimiter::new(u32::MAX, 1e12, 16);
            state.admission.per_source = RateLimiter::new(u32::MAX, 1e12, 16);
            state.admission.reviews = RateLimiter::new(u32::MAX, 1e12, 16);
            if !cached {
                state.admission.cache = TokenReviewCache::new(Duration::ZERO, 1);
            }
            csr::router(state)
        },
        true,
    );
    let bodies: Vec<Bytes> = (0..CSR_POOL)
        .map(|_| {
            let key = WorkloadKey::generate().expect("a P-256 key");
            let csr = key.csr_pem(BENCH_ID).expect("a CSR");
            Bytes::from(serde_json::to_vec(&json!({ "csr": csr })).expect("JSON"))
        })
        .collect();
    let bearer = format!("Bearer {TOKEN}");
    let m = post_loop(
        cl,
        &served,
        contract::PATH_CERTIFICATES,
        &[
            ("authorization", bearer.as_str()),
            ("content-type", "application/json"),
        ],
        |i| bodies[i % CSR_POOL].clone(),
        StatusCode::OK,
        seconds,
    );
    let mut v = m.to_json("csr_per_s");
    v["token_reviews"] = json!(reviews.load(Ordering::Relaxed));
    v["token_review"] = json!(if cached {
        "cached (one review, then the cache)"
    } else {
        "uncached (cache off; stand-in reviewer answering at once)"
    });
    v
}

/// Counts the reviews its inner reviewer makes.
struct Counted<R>(R, Arc<std::sync::atomic::AtomicUsize>);

impl<R: TokenReviewer> TokenReviewer for Counted<R> {
    fn review<'a>(
        &'a self,
        token: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<Reviewed, ReviewError>> + Send + 'a>> {
        self.1.fetch_add(1, Ordering::Relaxed);
        self.0.review(token)
    }
}

/// AdmissionReviews per second over HTTPS.
fn webhook_https(
    op: &tokio::runtime::Runtime,
    cl: &tokio::runtime::Runtime,
    seconds: Duration,
) -> serde_json::Value {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(REVIEW_CASE);
    let body = Bytes::from(std::fs::read(dir.join("review.json")).expect("the golden review"));
    let state_text = std::fs::read_to_string(dir.join("state.yaml")).expect("the golden state");
    let case: CaseState = serde_yaml::from_str(&state_text).expect("state.yaml parses");
    let namespace = case.namespace.map(Arc::new);
    let mesh = Arc::new(case.mesh);
    let served = serve(
        op,
        move |_| {
            let settings = Arc::new(InjectorSettings::default());
            axum::Router::new().route(
                contract::PATH_INJECT,
                axum::routing::post(move |body: Bytes| {
                    let (namespace, mesh, settings) =
                        (namespace.clone(), mesh.clone(), settings.clone());
                    async move {
                        let (status, answer) =
                            review(&body, |_| namespace.clone(), &mesh, &settings);
                        (
                            StatusCode::from_u16(status).unwrap_or(StatusCode::OK),
                            answer,
                        )
                    }
                }),
            )
        },
        false,
    );
    let m = post_loop(
        cl,
        &served,
        contract::PATH_INJECT,
        &[("content-type", "application/json")],
        |_| body.clone(),
        StatusCode::OK,
        seconds,
    );
    let mut v = m.to_json("reviews_per_s");
    v["case"] = json!(REVIEW_CASE);
    v
}

/// Snapshot pushes per second to `PUSH_STREAMS` streams over `PUSH_CHANGES` changes.
fn config_pushes(op: &tokio::runtime::Runtime, cl: &tokio::runtime::Runtime) -> serde_json::Value {
    let ca = Arc::new(
        MeshCa::generate_root(TRUST_DOMAIN, Duration::from_secs(365 * 86_400)).expect("a root CA"),
    );
    let views = [
        Arc::new(MeshIndex::build(&mesh_view(PODS_PER_NAMESPACE))),
        Arc::new(MeshIndex::build(&mesh_view(PODS_PER_NAMESPACE + 1))),
    ];
    let (index_tx, index_rx) = watch::channel(views[0].clone());
    let state = DiscoveryState::from_index(
        index_rx,
        DiscoverySettings {
            trust_domain: TRUST_DOMAIN.into(),
            operator_namespace: OPERATOR_NAMESPACE.into(),
            root_namespace: OPERATOR_NAMESPACE.into(),
            cluster_domain: "cluster.local".into(),
        },
        Arc::new(OperatorMetrics::new()),
    );
    let (_ca_tx, ca_rx) = watch::channel(Some(ca.clone()));
    let resolver = Arc::new(ServingCertResolver::default());
    op.spawn(keep_serving_cert(
        resolver.clone(),
        ca_rx.clone(),
        OPERATOR_NAMESPACE.into(),
    ));
    let listener = op
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("a port");
    let addr = listener.local_addr().expect("its address");
    op.spawn(serve_tls_on(
        listener,
        resolver.clone(),
        weft::discovery::server::router(state),
        Some(ca_rx),
    ));
    while !resolver.is_loaded() {
        std::thread::sleep(Duration::from_millis(5));
    }
    // The first PUSH_STREAMS pods, one stream each, from the pod's own address.
    let pods: Vec<(String, String, IpAddr)> = (0..NAMESPACES)
        .flat_map(|n| {
            (0..PODS_PER_NAMESPACE).map(move |i| (namespace_name(n), pod_name(i), pod_ip(n, i)))
        })
        .take(PUSH_STREAMS)
        .collect();
    let sims = simulated_proxies(&ca, &pods);
    let (heard_tx, heard) = mpsc::channel();
    let _guard = cl.enter();
    let gate = Arc::new(Semaphore::new(CONNECT_CONCURRENCY));
    for (proxy, sim) in sims.into_iter().enumerate() {
        cl.spawn(simulated_proxy(
            proxy,
            sim,
            addr,
            gate.clone(),
            heard_tx.clone(),
        ));
    }
    // Every stream's first snapshot.
    let mut first = 0;
    while first < PUSH_STREAMS {
        match heard.recv_timeout(SYNC_TIMEOUT) {
            Ok(Heard::Version { .. }) => first += 1,
            Ok(Heard::Failed { proxy, error }) => panic!("stream {proxy}: {error}"),
            Err(_) => panic!("{first} of {PUSH_STREAMS} streams synced"),
        }
    }
    let mut nanos = Vec::with_capacity(PUSH_STREAMS * PUSH_CHANGES);
    let cpu_before = thread_cpu_ms(SERVED_THREAD);
    let start = Instant::now();
    for change in 1..=PUSH_CHANGES {
        let published = Instant::now();
        index_tx.send_replace(views[change % 2].clone());
        let mut got = 0;
        while got < PUSH_STREAMS {
            match heard.recv_timeout(CONVERGE_TIMEOUT) {
                Ok(Heard::Version { at, .. }) => {
                    nanos.push(at.duration_since(published).as_nanos() as u64);
                    got += 1;
                }
                Ok(Heard::Failed { proxy, error }) => panic!("stream {proxy}: {error}"),
                Err(_) => panic!("change {change}: {got} of {PUSH_STREAMS} streams"),
            }
        }
    }
    let elapsed = start.elapsed();
    let cpu = thread_cpu_ms(SERVED_THREAD) - cpu_before;
    nanos.sort_unstable();
    let m = Measured {
        calls: nanos.len(),
        elapsed,
        nanos,
    };
    let mut v = m.to_json("pushes_per_s");
    v["streams"] = json!(PUSH_STREAMS);
    v["changes"] = json!(PUSH_CHANGES);
    v["snapshot_bytes"] = json!(
        views[0]
            .snapshot_for(&pods[0].0, &pods[0].1)
            .map_or(0, |(_, b)| b.len())
    );
    v["operator_cpu_ms"] = json!(cpu);
    v
}

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap_or(0);
    let mut out = len.to_be_bytes()[1..].to_vec();
    out.extend([kind, flags]);
    out.extend(stream.to_be_bytes());
    out.extend(payload);
    out
}

/// The operator thread's CPU for HTTP/2 rapid-reset bursts, and how each connection ended.
fn rapid_reset(op: &tokio::runtime::Runtime, cl: &tokio::runtime::Runtime) -> serde_json::Value {
    let served = serve(
        op,
        |_| axum::Router::new().route("/", axum::routing::get(|| async { "ok" })),
        false,
    );
    // HPACK: :method GET, :scheme https, :path / (static table), :authority literal.
    let mut block = vec![0x82, 0x87, 0x84, 0x01, OPERATOR_SERVER_NAME.len() as u8];
    block.extend(OPERATOR_SERVER_NAME.as_bytes());
    let mut burst = PREFACE.to_vec();
    burst.extend(frame(0x4, 0, 0, &[]));
    for i in 0..RESETS_PER_BURST {
        let id = 2 * i + 1;
        burst.extend(frame(0x1, 0x4 | 0x1, id, &block));
        burst.extend(frame(0x3, 0, id, &0x8u32.to_be_bytes()));
    }
    let config = tls_config(&served.ca, b"h2");
    let before = thread_cpu_ms(SERVED_THREAD);
    let started = Instant::now();
    let mut calmed = 0;
    for _ in 0..RESET_BURSTS {
        let goaway = cl.block_on(async {
            let mut tls = tls_to(served.addr, config.clone()).await;
            let _ = tls.write_all(&burst).await;
            let mut seen = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut seen)).await;
            // A GOAWAY frame (type 7) whose error code is ENHANCE_YOUR_CALM (0xb).
            let mut rest = &seen[..];
            let mut calm = false;
            while rest.len() >= 9 {
                let len = u32::from_be_bytes([0, rest[0], rest[1], rest[2]]) as usize;
                let Some(payload) = rest.get(9..9 + len) else {
                    break;
                };
                calm |= rest[3] == 0x7 && payload.get(4..8) == Some(&[0, 0, 0, 0xb][..]);
                rest = &rest[9 + len..];
            }
            calm
        });
        calmed += usize::from(goaway);
    }
    let cpu = thread_cpu_ms(SERVED_THREAD) - before;
    json!({
        "bursts": RESET_BURSTS,
        "resets_per_burst": RESETS_PER_BURST,
        "ended_with_enhance_your_calm": calmed,
        "operator_cpu_ms_per_burst": round(cpu / RESET_BURSTS as f64, 2),
        "seconds": round(started.elapsed().as_secs_f64(), 3),
        "note": "operator thread CPU (10 ms ticks, summed over all bursts) incl. each connection's TLS handshake",
    })
}

pub fn served(seconds: Duration) -> serde_json::Value {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let op = runtime(SIDE_NONE, SERVED_THREAD);
    let cl = runtime(SIDE_NONE, CLIENT_THREAD);
    json!({
        "csr_cached": csr_https(&op, &cl, true, seconds),
        "csr_uncached": csr_https(&op, &cl, false, seconds),
        "webhook": webhook_https(&op, &cl, seconds),
        "config_pushes": config_pushes(&op, &cl),
        "rapid_reset": rapid_reset(&op, &cl),
    })
}
