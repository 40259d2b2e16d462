//! The CSR endpoint under a flood (issue 21 item 2), over real HTTPS: the accept loop and CSR
//! router as `weft operator` serves :15012, on 127.0.0.1, with the default admission limits.
//! Kubernetes' TokenReview is replaced at the endpoint's seam (`TokenReviewer`) by
//! [`FakeTokenReviewApi`], a fake that answers like the API server after a delay like its
//! round trip; everything else (TLS, HTTP/2, limits, cache, the CA) is the real code.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http2::SendRequest;
use hyper::{Request, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use serde_json::Value;
use tokio::io::AsyncReadExt;
use tokio::sync::watch;
use weft::contract;
use weft::operator::csr::{
    self, CertPolicy, MAX_CONCURRENT_TOKEN_REVIEWS, ReviewError, Reviewed, SOURCE_BURST,
    SOURCE_PER_SECOND, TokenReviewer,
};
use weft::operator::serving::{
    ServingCertResolver, ServingLimits, keep_serving_cert, serve_tls_limited,
};
use weft::pki::{MeshCa, WorkloadKey, certificates_from_pem};

const HOST: &str = "weft-operator.weft-system.svc";
const FLOODER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);
const PROXY: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const WEB_TOKEN: &str = "token-of-pets-web";
const WEB: &str = "spiffe://cluster.local/ns/pets/sa/web";
/// Garbage requests in the flood, all at once over a few HTTP/2 connections.
const FLOOD: usize = 300;

/// A fake of the API server's TokenReview: [`WEB_TOKEN`] is pets/web, anything else is
/// refused with the API server's words, each answer after 100 ms. Counts calls and the most
/// in flight at once.
struct FakeTokenReviewApi(Arc<ReviewCounts>);

#[derive(Default)]
struct ReviewCounts {
    calls: AtomicUsize,
    web_calls: AtomicUsize,
    in_flight: AtomicUsize,
    most_in_flight: AtomicUsize,
}

impl TokenReviewer for FakeTokenReviewApi {
    fn review<'a>(
        &'a self,
        token: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<Reviewed, ReviewError>> + Send + 'a>> {
        Box::pin(async move {
            let counts = &self.0;
            counts.calls.fetch_add(1, Ordering::SeqCst);
            let now = counts.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            counts.most_in_flight.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(100)).await;
            counts.in_flight.fetch_sub(1, Ordering::SeqCst);
            if token != WEB_TOKEN {
                return Err(ReviewError::Unauthenticated {
                    reason: "the API server says: invalid bearer token".into(),
                });
            }
            counts.web_calls.fetch_add(1, Ordering::SeqCst);
            Ok(Reviewed {
                namespace: "pets".into(),
                service_account: "web".into(),
                pod: Some("web-0".into()),
            })
        })
    }
}

struct Endpoint {
    addr: SocketAddr,
    ca: Arc<MeshCa>,
    reviews: Arc<ReviewCounts>,
    _ca_tx: watch::Sender<Option<Arc<MeshCa>>>,
}

impl Endpoint {
    async fn serve() -> Endpoint {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let ca = Arc::new(
            MeshCa::generate_root("cluster.local", Duration::from_secs(86_400)).expect("a root CA"),
        );
        let (ca_tx, ca_rx) = watch::channel(Some(ca.clone()));
        let resolver = Arc::new(ServingCertResolver::default());
        tokio::spawn(keep_serving_cert(
            resolver.clone(),
            ca_rx.clone(),
            "weft-system".into(),
        ));
        let reviews = Arc::new(ReviewCounts::default());
        let state = csr::CsrState::new(
            ca_rx.clone(),
            Arc::new(FakeTokenReviewApi(reviews.clone())),
            Arc::new(|_: &str| CertPolicy {
                trust_domain: "cluster.local".into(),
                max_ttl: Duration::from_secs(3600),
            }),
        );
        let listener = tokio::net::TcpListener::bind((FLOODER, 0))
            .await
            .expect("a port on 127.0.0.1");
        let addr = listener.local_addr().expect("its address");
        tokio::spawn(serve_tls_limited(
            listener,
            resolver.clone(),
            csr::router(state),
            Some(ca_rx),
            ServingLimits::default(),
        ));
        for _ in 0..500 {
            if resolver.is_loaded() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(resolver.is_loaded(), "no serving certificate within 5 s");
        Endpoint {
            addr,
            ca,
            reviews,
            _ca_tx: ca_tx,
        }
    }

    /// An HTTP/2 connection from `source`.
    async fn connect_from(&self, source: Ipv4Addr) -> SendRequest<Full<Bytes>> {
        let mut roots = rustls::RootCertStore::empty();
        for der in certificates_from_pem(&self.ca.roots_pem()).expect("roots") {
            roots.add(der.into()).expect("a root certificate");
        }
        let mut config = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"h2".to_vec()];
        let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
        socket
            .bind(SocketAddr::new(IpAddr::V4(source), 0))
            .expect("binds a loopback source");
        let tcp = socket.connect(self.addr).await.expect("connects");
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from(HOST).expect("a DNS name"), tcp)
            .await
            .expect("TLS handshake");
        let (send, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                .await
                .expect("HTTP/2 handshake");
        tokio::spawn(connection);
        send
    }
}

/// An answer: status, Retry-After if any, JSON body.
struct Answer {
    status: StatusCode,
    retry_after: Option<String>,
    json: Value,
}

async fn ask(connection: &mut SendRequest<Full<Bytes>>, token: &str, body: Vec<u8>) -> Answer {
    connection.ready().await.expect("connection ready");
    let request = Request::post(format!("https://{HOST}{}", contract::PATH_CERTIFICATES))
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("a request");
    let response = connection.send_request(request).await.expect("an answer");
    let status = response.status();
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("the whole answer")
        .to_bytes();
    let json = serde_json::from_slice(&bytes).expect("a JSON answer");
    Answer {
        status,
        retry_after,
        json,
    }
}

fn csr_body() -> Vec<u8> {
    let key = WorkloadKey::generate().expect("a workload key");
    let csr = key.csr_pem(WEB).expect("a CSR");
    serde_json::to_vec(&serde_json::json!({ "csr": csr })).expect("JSON")
}

fn issued(answer: &Answer) -> bool {
    answer.status == StatusCode::OK
        && answer.json["certChain"]
            .as_array()
            .is_some_and(|chain| !chain.is_empty())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_garbage_tokens_does_not_keep_a_proxy_from_its_certificate() {
    let endpoint = Endpoint::serve().await;
    let body = csr_body();
    let started = Instant::now();

    // The flood: garbage tokens, all at once, from one address over three connections.
    let mut flood = Vec::new();
    for _ in 0..3 {
        let connection = endpoint.connect_from(FLOODER).await;
        for i in 0..FLOOD / 3 {
            let (mut connection, body) = (connection.clone(), body.clone());
            flood.push(tokio::spawn(async move {
                ask(&mut connection, &format!("garbage-{i}"), body).await
            }));
        }
    }
    // A proxy elsewhere asks while the flood is in flight.
    let mut proxy = endpoint.connect_from(PROXY).await;
    let answer = ask(&mut proxy, WEB_TOKEN, body.clone()).await;
    assert!(issued(&answer), "{} {}", answer.status, answer.json);

    let mut refused = 0;
    let mut limited = 0;
    for answer in flood {
        let answer = answer.await.expect("the flood's request task");
        match answer.status {
            StatusCode::UNAUTHORIZED => {
                refused += 1;
                let error = answer.json["error"].as_str().unwrap_or_default();
                assert!(
                    !error.contains("invalid bearer token"),
                    "the API server's words stay in the log: {error}"
                );
            }
            StatusCode::TOO_MANY_REQUESTS => {
                limited += 1;
                assert!(answer.retry_after.is_some(), "429 without Retry-After");
            }
            other => panic!("a garbage token got {other}: {}", answer.json),
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    assert_eq!(refused + limited, FLOOD);
    // One address gets its burst, then its rate, of TokenReviews; the rest is refused unread.
    let allowed = f64::from(SOURCE_BURST) + SOURCE_PER_SECOND * elapsed + 1.0;
    assert!(
        (refused as f64) <= allowed,
        "{refused} garbage tokens reviewed in {elapsed:.1} s; one source may cause {allowed:.0}"
    );
    assert!(limited > 0);
    assert!(endpoint.reviews.most_in_flight.load(Ordering::SeqCst) <= MAX_CONCURRENT_TOKEN_REVIEWS);

    // The proxy's next request reuses its review: no second TokenReview for its token.
    let answer = ask(&mut proxy, WEB_TOKEN, body).await;
    assert!(issued(&answer), "{} {}", answer.status, answer.json);
    assert_eq!(endpoint.reviews.web_calls.load(Ordering::SeqCst), 1);
}

/// Idle connections one source opens in [`idle_connections_do_not_keep_a_proxy_from_its_certificate`]:
/// the figure issue 21 names. The test holds 5,000 client sockets and the server up to its
/// per-source cap (1,024): about 6,100 file descriptors (`ulimit -n` is 20,000 here).
const IDLE_CONNECTIONS: usize = 5_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_do_not_keep_a_proxy_from_its_certificate() {
    let endpoint = Endpoint::serve().await;
    let per_source = ServingLimits::DISCOVERY_MAX_CONNECTIONS_PER_SOURCE;
    assert!(IDLE_CONNECTIONS > per_source);

    // One source opens 5,000 connections and says nothing on any of them (no TLS hello).
    let mut idle = Vec::with_capacity(IDLE_CONNECTIONS);
    for n in 0..IDLE_CONNECTIONS {
        let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
        socket
            .bind(SocketAddr::new(IpAddr::V4(FLOODER), 0))
            .expect("binds a loopback source");
        match socket.connect(endpoint.addr).await {
            Ok(tcp) => idle.push(tcp),
            Err(e) => panic!("idle connection {n} could not connect: {e}"),
        }
    }

    // A proxy from elsewhere gets its certificate while they are all open...
    let mut proxy = endpoint.connect_from(PROXY).await;
    let answer = ask(&mut proxy, WEB_TOKEN, csr_body()).await;
    assert!(issued(&answer), "{} {}", answer.status, answer.json);

    // ...because the server holds at most its per-source cap of them: the rest were closed
    // unserved at accept (a read sees the end of the stream, not a TLS answer).
    let mut closed = 0;
    for tcp in &mut idle {
        let mut byte = [0u8; 1];
        match tokio::time::timeout(Duration::from_millis(1), tcp.read(&mut byte)).await {
            Ok(Ok(0)) | Ok(Err(_)) => closed += 1,
            Ok(Ok(_)) => panic!("the server sent bytes unasked on an idle connection"),
            Err(_) => {}
        }
    }
    let held = IDLE_CONNECTIONS - closed;
    println!("{IDLE_CONNECTIONS} idle connections from one source: {held} held, {closed} closed");
    // At most the cap is held (fewer only if the TLS handshake timeout has passed meanwhile).
    assert!(held <= per_source, "{held} held, cap {per_source}");
}
