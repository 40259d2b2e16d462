//! The operator's HTTPS ports answer a body over a route's limit completely over HTTP/2 and
//! HTTP/1.1, and the connection keeps serving: the CSR endpoint with its JSON 413, the webhook
//! with a well-formed AdmissionReview that denies the request naming the limit (under the
//! request's uid when the body's beginning holds it), so the API server shows users the reason.
//! The real accept loop (`serve_tls_on`, as `weft operator` serves :15012 and :15017) on
//! 127.0.0.1 with the CSR router (limit 64 KiB) and the webhook router (limit 3 MiB), asked by
//! curl and by hyper's client over rustls.

use std::convert::Infallible;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::Output;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Bytes, Frame};
use hyper::client::conn::http2::SendRequest;
use hyper::{Request, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use serde_json::Value;
use tokio::sync::watch;
use weft::contract;
use weft::kube::metrics::OperatorMetrics;
use weft::operator::csr::{self, CertPolicy, RateLimiter, ReviewError, Reviewed, TokenReviewer};
use weft::operator::injector::{self, InjectorState};
use weft::operator::serving::{
    DRAIN_MAX_BYTES, ServingCertResolver, keep_serving_cert, serve_tls_on,
};
use weft::pki::{MAX_REQUEST_BYTES, MeshCa, WorkloadKey, certificates_from_pem};
use weft::webhook::{InjectorSettings, MAX_REVIEW_BODY_BYTES};

/// A name on the operator's serving certificate; curl and hyper resolve it to 127.0.0.1.
const HOST: &str = "weft-operator.weft-system.svc";
/// Over both limits, under what the server reads of an unread body after answering.
const OVER_LIMIT: usize = 5 * 1024 * 1024;
const WEB_TOKEN: &str = "token-of-pets-web";
const WEB: &str = "spiffe://cluster.local/ns/pets/sa/web";
/// How often each curl case runs: the HTTP/1.1 failure (a TCP reset overtaking the 413)
/// showed in about one run of four.
const CURL_RUNS: usize = 4;

/// The TokenReview stand-in: [`WEB_TOKEN`] is pets/web, any other token is refused.
struct OneToken;

impl TokenReviewer for OneToken {
    fn review<'a>(
        &'a self,
        token: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<Reviewed, ReviewError>> + Send + 'a>> {
        Box::pin(async move {
            if token != WEB_TOKEN {
                return Err(ReviewError::Unauthenticated {
                    reason: "unknown token".into(),
                });
            }
            Ok(Reviewed {
                namespace: "pets".into(),
                service_account: "web".into(),
                pod: Some("web-0".into()),
            })
        })
    }
}

/// One of the operator's ports, served on 127.0.0.1, and files for curl.
struct Port {
    port: u16,
    ca: Arc<MeshCa>,
    dir: PathBuf,
    /// The CA stays current while the port is served.
    _ca_tx: watch::Sender<Option<Arc<MeshCa>>>,
}

impl Port {
    /// `client_roots`: ask for optional client certificates, as :15012 does.
    async fn serve(
        app: impl FnOnce(watch::Receiver<Option<Arc<MeshCa>>>) -> axum::Router,
        client_roots: bool,
    ) -> Port {
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
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a port on 127.0.0.1");
        let port = listener.local_addr().expect("its address").port();
        let router = app(ca_rx.clone());
        tokio::spawn(serve_tls_on(
            listener,
            resolver.clone(),
            router,
            client_roots.then_some(ca_rx),
        ));
        for _ in 0..500 {
            if resolver.is_loaded() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(resolver.is_loaded(), "no serving certificate within 5 s");

        let dir =
            std::env::temp_dir().join(format!("weft-body-limits-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        std::fs::write(dir.join("roots.pem"), ca.roots_pem()).expect("roots.pem");
        std::fs::write(dir.join("over-limit"), vec![b' '; OVER_LIMIT]).expect("the big body");
        Port {
            port,
            ca,
            dir,
            _ca_tx: ca_tx,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("https://{HOST}:{}{path}", self.port)
    }

    /// curl's options for one transfer: `protocol`, trusting the mesh roots, `HOST` resolved
    /// to 127.0.0.1, POSTing the file `body` to `path`; prints the status and whether a new
    /// connection was opened (`%{num_connects}`), and writes the answer to `<out>`.
    fn curl_transfer(&self, protocol: &str, path: &str, body: &str, out: &str) -> Vec<String> {
        let file = |name: &str| self.dir.join(name).display().to_string();
        [
            protocol,
            "--cacert",
            &file("roots.pem"),
            "--resolve",
            &format!("{HOST}:{}:127.0.0.1", self.port),
            "-H",
            &format!("Authorization: Bearer {WEB_TOKEN}"),
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            &format!("@{}", file(body)),
            "-o",
            &file(out),
            "-w",
            "%{http_code} %{num_connects}\\n",
            &self.url(path),
        ]
        .map(String::from)
        .to_vec()
    }

    /// Runs curl: an over-limit POST to `path`, then (`--next`) the normal request in the file
    /// `normal` to `normal_path`. Returns the exit status output and the two answers.
    async fn curl(
        &self,
        protocol: &str,
        path: &str,
        normal_path: &str,
        normal: &str,
    ) -> (Output, Vec<u8>, Vec<u8>) {
        let mut args = vec!["-sS".to_string(), "-v".to_string()];
        args.extend(self.curl_transfer(protocol, path, "over-limit", "over-limit.out"));
        args.push("--next".into());
        args.extend(self.curl_transfer(protocol, normal_path, normal, "normal.out"));
        let _ = std::fs::remove_file(self.dir.join("over-limit.out"));
        let _ = std::fs::remove_file(self.dir.join("normal.out"));
        let output = tokio::process::Command::new("curl")
            .args(&args)
            .output()
            .await
            .expect("curl runs (install curl to run this test)");
        let read = |name: &str| std::fs::read(self.dir.join(name)).unwrap_or_default();
        (output, read("over-limit.out"), read("normal.out"))
    }

    /// An HTTP/2 connection from hyper's client over rustls (ALPN h2 only).
    async fn h2(&self) -> SendRequest<BoxBody<Bytes, Infallible>> {
        let mut roots = rustls::RootCertStore::empty();
        for der in certificates_from_pem(&self.ca.roots_pem()).expect("roots") {
            roots.add(der.into()).expect("a root certificate");
        }
        let mut config = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"h2".to_vec()];
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .expect("connects");
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from(HOST).expect("a DNS name"), tcp)
            .await
            .expect("TLS handshake");
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        let (send, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                .await
                .expect("HTTP/2 handshake");
        tokio::spawn(connection);
        send
    }
}

impl Drop for Port {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// POSTs `body` on `connection`; the status and the whole answer, or why the exchange failed.
async fn post(
    connection: &mut SendRequest<BoxBody<Bytes, Infallible>>,
    path: &str,
    body: BoxBody<Bytes, Infallible>,
) -> Result<(StatusCode, Value), String> {
    connection
        .ready()
        .await
        .map_err(|e| format!("connection not ready: {e}"))?;
    let request = Request::post(format!("https://{HOST}{path}"))
        .header("authorization", format!("Bearer {WEB_TOKEN}"))
        .header("content-type", "application/json")
        .body(body)
        .map_err(|e| e.to_string())?;
    let response = connection
        .send_request(request)
        .await
        .map_err(|e| format!("no answer: {e}"))?;
    let status = response.status();
    let bytes = response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("answer body cut off: {e}"))?
        .to_bytes();
    let json = serde_json::from_slice(&bytes).map_err(|e| {
        format!(
            "answer is not JSON ({e}): {}",
            String::from_utf8_lossy(&bytes)
        )
    })?;
    Ok((status, json))
}

fn full(bytes: Vec<u8>) -> BoxBody<Bytes, Infallible> {
    Full::new(Bytes::from(bytes)).boxed()
}

/// `size` bytes in 64 KiB chunks with no Content-Length: the server only learns the size by
/// reading. `taken` counts the bytes the client has taken to send.
fn streamed(size: usize, taken: Arc<AtomicUsize>) -> BoxBody<Bytes, Infallible> {
    let chunk = Bytes::from(vec![b' '; 64 * 1024]);
    let chunks = (0..size.div_ceil(chunk.len())).map(move |_| {
        taken.fetch_add(chunk.len(), Ordering::SeqCst);
        Ok::<_, Infallible>(Frame::data(chunk.clone()))
    });
    StreamBody::new(futures::stream::iter(chunks)).boxed()
}

/// `bytes` in 64 KiB chunks with no Content-Length.
fn streamed_bytes(bytes: Vec<u8>) -> BoxBody<Bytes, Infallible> {
    let chunks: Vec<Result<Frame<Bytes>, Infallible>> = bytes
        .chunks(64 * 1024)
        .map(|chunk| Ok(Frame::data(Bytes::copy_from_slice(chunk))))
        .collect();
    StreamBody::new(futures::stream::iter(chunks)).boxed()
}

/// What `taken` settles at: once it has not moved for half a second (at most 20 s).
async fn settled(taken: &AtomicUsize) -> usize {
    let mut last = taken.load(Ordering::SeqCst);
    let mut still = Duration::ZERO;
    for _ in 0..400 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = taken.load(Ordering::SeqCst);
        still = if now == last {
            still + Duration::from_millis(50)
        } else {
            Duration::ZERO
        };
        if still >= Duration::from_millis(500) {
            break;
        }
        last = now;
    }
    last
}

fn error_of(json: &Value) -> &str {
    json["error"].as_str().unwrap_or_default()
}

/// Asserts that every curl run got the refusal (`refused_status`, its JSON as `refused_ok`
/// wants) and then the normal answer, over the same connection on HTTP/2.
async fn assert_curl(
    port: &Port,
    path: &str,
    refused_status: &str,
    refused_ok: impl Fn(&Value) -> bool,
    normal_path: &str,
    normal: &str,
    normal_ok: impl Fn(&[u8]) -> bool,
) {
    for protocol in ["--http2", "--http1.1"] {
        for run in 0..CURL_RUNS {
            let (output, refused, answered) = port.curl(protocol, path, normal_path, normal).await;
            let stdout = String::from_utf8_lossy(&output.stdout);
            let stderr = String::from_utf8_lossy(&output.stderr);
            let context = format!("{protocol} run {run}: stdout {stdout}\nstderr {stderr}");
            // Exit 92 is the HTTP/2 stream error, 55 the HTTP/1.1 broken pipe.
            assert_eq!(output.status.code(), Some(0), "{context}");
            let lines: Vec<&str> = stdout.lines().collect();
            assert_eq!(lines.len(), 2, "{context}");
            assert!(
                lines[0].starts_with(&format!("{refused_status} ")),
                "{context}"
            );
            let json: Value = serde_json::from_slice(&refused).unwrap_or_else(|e| {
                panic!(
                    "{context}\nthe refusal is not JSON ({e}): {}",
                    String::from_utf8_lossy(&refused)
                )
            });
            assert!(refused_ok(&json), "{context}\n{json}");
            assert!(
                normal_ok(&answered),
                "{context}\n{}",
                String::from_utf8_lossy(&answered)
            );
            if protocol == "--http2" {
                // The normal request reused the connection of the refused one.
                assert!(lines[1].ends_with(" 0"), "{context}");
                assert!(stderr.contains("Re-using existing connection"), "{context}");
            }
            let status = lines[1].split(' ').next().unwrap_or_default();
            assert!(status.starts_with('2'), "{context}");
        }
    }
}

fn csr_body() -> Vec<u8> {
    let key = WorkloadKey::generate().expect("a workload key");
    let csr = key.csr_pem(WEB).expect("a CSR");
    serde_json::to_vec(&serde_json::json!({ "csr": csr })).expect("JSON")
}

fn csr_router(ca: watch::Receiver<Option<Arc<MeshCa>>>) -> axum::Router {
    let mut state = csr::CsrState::new(
        ca,
        Arc::new(OneToken),
        Arc::new(|_: &str| CertPolicy {
            trust_domain: "cluster.local".into(),
            max_ttl: Duration::from_secs(3600),
        }),
    );
    // Every curl run and hyper exchange asks for a certificate from 127.0.0.1: no rate limit
    // here, per identity or per source.
    state.limiter = RateLimiter::new(1_000, 1_000.0, 10);
    state.admission.per_source = RateLimiter::new(1_000, 1_000.0, 10);
    csr::router(state)
}

fn issued(answer: &Value) -> bool {
    answer["certChain"]
        .as_array()
        .is_some_and(|chain| !chain.is_empty())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csr_port_answers_an_over_limit_body_with_the_json_413_on_http2_and_http1() {
    let port = Port::serve(csr_router, true).await;
    std::fs::write(port.dir.join("csr.json"), csr_body()).expect("csr.json");
    const { assert!(OVER_LIMIT > MAX_REQUEST_BYTES && (OVER_LIMIT as u64) < DRAIN_MAX_BYTES) };
    let says = format!("over the limit of {MAX_REQUEST_BYTES} bytes");

    assert_curl(
        &port,
        contract::PATH_CERTIFICATES,
        "413",
        |json| error_of(json).contains(&says),
        contract::PATH_CERTIFICATES,
        "csr.json",
        |answer| serde_json::from_slice(answer).is_ok_and(|json| issued(&json)),
    )
    .await;

    // hyper's HTTP/2 client: with and without Content-Length, and after each a certificate
    // issued on the same connection.
    let mut connection = port.h2().await;
    let issue = async |connection: &mut SendRequest<_>, after: &str| {
        let (status, json) = post(connection, contract::PATH_CERTIFICATES, full(csr_body()))
            .await
            .unwrap_or_else(|e| panic!("after {after}: {e}"));
        assert_eq!(status, StatusCode::OK, "after {after}: {json}");
        assert!(issued(&json), "after {after}: {json}");
    };
    for (what, body) in [
        ("declared", full(vec![b' '; OVER_LIMIT])),
        ("streamed", streamed(OVER_LIMIT, Arc::default())),
    ] {
        let (status, json) = post(&mut connection, contract::PATH_CERTIFICATES, body)
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{what}: {json}");
        assert!(error_of(&json).contains(&says), "{what}: {json}");
        issue(&mut connection, what).await;
    }

    // A body longer than the server reads after answering: the complete 413 first, then the
    // server stops reading (the client can no longer send), and the connection still serves.
    let taken = Arc::new(AtomicUsize::new(0));
    let past = DRAIN_MAX_BYTES as usize + 4 * 1024 * 1024;
    let (status, json) = post(
        &mut connection,
        contract::PATH_CERTIFICATES,
        streamed(past, taken.clone()),
    )
    .await
    .unwrap_or_else(|e| panic!("past the drain: {e}"));
    assert_eq!(
        status,
        StatusCode::PAYLOAD_TOO_LARGE,
        "past the drain: {json}"
    );
    let sent = settled(&taken).await;
    assert!(
        sent > DRAIN_MAX_BYTES as usize && sent < past,
        "the client could send {sent} of {past} bytes; the server reads {DRAIN_MAX_BYTES}"
    );
    issue(&mut connection, "past the drain").await;
}

/// The webhook router with empty caches: the API server's address is closed, so nothing is
/// ever listed, and a review is answered from an empty mesh.
fn webhook_router() -> axum::Router {
    let config = kube::Config::new("http://127.0.0.1:9".parse().expect("a URI"));
    let client = kube::Client::try_from(config).expect("a client");
    let (pods, _writer) = kube::runtime::reflector::store();
    let state = InjectorState::start(
        &client,
        InjectorSettings::default(),
        "weft".into(),
        "weft-operator-0".into(),
        pods,
        Arc::new(OperatorMetrics::new()),
    );
    injector::router(state)
}

fn review() -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("webhook/cases/rule1-namespace-istio-injection-enabled/review.json");
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// An AdmissionReview answer to `review()`'s request.
fn reviewed(answer: &Value) -> bool {
    let asked: Value = serde_json::from_slice(&review()).expect("review.json is JSON");
    answer["kind"] == "AdmissionReview"
        && answer["response"]["uid"] == asked["request"]["uid"]
        && !asked["request"]["uid"].is_null()
}

/// The denial of an oversized review: a well-formed AdmissionReview, `allowed: false`, a 413
/// status naming the limit and `size`, under `uid`.
fn denied_as_too_large(answer: &Value, uid: &str, size: &str) -> bool {
    let response = &answer["response"];
    let message = response["status"]["message"].as_str().unwrap_or_default();
    answer["apiVersion"] == "admission.k8s.io/v1"
        && answer["kind"] == "AdmissionReview"
        && response["uid"] == uid
        && response["allowed"] == false
        && response["status"]["code"] == 413
        && message.contains(size)
        && message.contains(&format!("at most {MAX_REVIEW_BODY_BYTES} bytes"))
}

/// `review()` padded with whitespace past the limit: still one valid AdmissionReview, its uid
/// at the beginning as the API server writes it.
fn oversized_review() -> Vec<u8> {
    let mut body = review();
    body.resize(OVER_LIMIT, b' ');
    body
}

fn uid_of_review() -> String {
    let asked: Value = serde_json::from_slice(&review()).expect("review.json is JSON");
    asked["request"]["uid"]
        .as_str()
        .expect("review.json has a uid")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_port_denies_an_over_limit_review_with_a_well_formed_review_on_http2_and_http1() {
    let port = Port::serve(|_| webhook_router(), false).await;
    std::fs::write(port.dir.join("review.json"), review()).expect("review.json");
    std::fs::write(port.dir.join("over-limit"), oversized_review()).expect("the big review");
    const { assert!(OVER_LIMIT > MAX_REVIEW_BODY_BYTES) };
    let uid = uid_of_review();

    // curl sends Content-Length: the size is named, the uid read from the beginning.
    assert_curl(
        &port,
        contract::PATH_INJECT,
        "200",
        |json| denied_as_too_large(json, &uid, &format!("is {OVER_LIMIT} bytes")),
        contract::PATH_INJECT,
        "review.json",
        |answer| serde_json::from_slice(answer).is_ok_and(|json| reviewed(&json)),
    )
    .await;

    // Every webhook route, with and without Content-Length, with and without a uid to echo,
    // then a review on the same HTTP/2 connection.
    let mut connection = port.h2().await;
    for path in [
        contract::PATH_INJECT,
        contract::PATH_VALIDATE,
        contract::PATH_DEFAULT_MESHCONFIG,
    ] {
        for (what, body, uid, says) in [
            (
                "declared",
                full(oversized_review()),
                uid.as_str(),
                format!("is {OVER_LIMIT} bytes"),
            ),
            (
                "streamed",
                streamed_bytes(oversized_review()),
                uid.as_str(),
                format!("is over {MAX_REVIEW_BODY_BYTES} bytes"),
            ),
            (
                "declared, not a review",
                full(vec![b' '; OVER_LIMIT]),
                "",
                format!("is {OVER_LIMIT} bytes"),
            ),
            (
                "streamed, not a review",
                streamed(OVER_LIMIT, Arc::default()),
                "",
                format!("is over {MAX_REVIEW_BODY_BYTES} bytes"),
            ),
        ] {
            let (status, json) = post(&mut connection, path, body)
                .await
                .unwrap_or_else(|e| panic!("{path} {what}: {e}"));
            assert_eq!(status, StatusCode::OK, "{path} {what}: {json}");
            assert!(
                denied_as_too_large(&json, uid, &says),
                "{path} {what}: {json}"
            );
            let (status, json) = post(&mut connection, contract::PATH_INJECT, full(review()))
                .await
                .unwrap_or_else(|e| panic!("after {path} {what}: {e}"));
            assert_eq!(status, StatusCode::OK, "after {path} {what}: {json}");
            assert!(reviewed(&json), "after {path} {what}: {json}");
        }
    }
}
