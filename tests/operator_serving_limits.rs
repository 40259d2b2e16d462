//! The operator's served ports hold their limits against abusive clients (issue 21 item 1): the
//! real accept loop (`serve_tls_limited`, as `weft operator` serves :15012 and :15017) on
//! 127.0.0.1 with limits scaled down so each story runs in seconds, asked over real TLS by
//! clients that misbehave on purpose (raw bytes and raw HTTP/2 frames where a well-behaved
//! client library would not misbehave). Every assertion is about what the server did (closed,
//! refused, answered), never about how fast.

use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use http_body_util::{BodyExt, Empty, StreamBody};
use hyper::body::{Bytes, Frame};
use hyper::{Request, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::client::TlsStream;
use weft::operator::serving::{
    H2_MAX_CONCURRENT_STREAMS, H2_MAX_HEADER_LIST_BYTES, ServingCertResolver, ServingLimits,
    keep_serving_cert, serve_tls_limited,
};
use weft::pki::{MeshCa, certificates_from_pem};

/// A name on the operator's serving certificate.
const HOST: &str = "weft-operator.weft-system.svc";
/// The abusive clients' source address; the legitimate client comes from [`OTHER_SOURCE`]
/// (all of 127.0.0.0/8 is loopback on Linux).
const ABUSER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);
const OTHER_SOURCE: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
/// Guard against a test hanging when the server fails to act: far longer than any limit used.
const GUARD: Duration = Duration::from_secs(15);

/// One served port: the accept loop with `limits`, a plain route, a streaming route and a
/// count of requests that reached the router.
struct Port {
    addr: SocketAddr,
    ca: Arc<MeshCa>,
    handled: Arc<AtomicUsize>,
    _ca_tx: watch::Sender<Option<Arc<MeshCa>>>,
}

impl Port {
    async fn serve(limits: ServingLimits) -> Port {
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
        let listener = tokio::net::TcpListener::bind((ABUSER, 0))
            .await
            .expect("a port on 127.0.0.1");
        let addr = listener.local_addr().expect("its address");
        let handled = Arc::new(AtomicUsize::new(0));
        let counted = handled.clone();
        let app = Router::new()
            .route("/", get(|| async { "ok" }))
            .route(
                "/upload",
                axum::routing::post(
                    |body: Result<Bytes, axum::extract::rejection::BytesRejection>| async move {
                        match body {
                            Ok(body) => (StatusCode::OK, format!("got {}", body.len())),
                            Err(refused) => (refused.status(), refused.body_text()),
                        }
                    },
                ),
            )
            .route(
                "/stream",
                get(|| async {
                    // Like the config stream's heartbeat: a little, often, for a long time.
                    let ticks = futures::stream::unfold(0, |n| async move {
                        if n == 10 {
                            return None;
                        }
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        Some((Ok::<_, Infallible>(Bytes::from_static(b".")), n + 1))
                    });
                    Body::from_stream(ticks)
                }),
            )
            .layer(axum::middleware::from_fn(
                move |request: axum::extract::Request, next: axum::middleware::Next| {
                    counted.fetch_add(1, Ordering::SeqCst);
                    next.run(request)
                },
            ));
        tokio::spawn(serve_tls_limited(
            listener,
            resolver.clone(),
            app,
            None,
            limits,
        ));
        for _ in 0..500 {
            if resolver.is_loaded() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(resolver.is_loaded(), "no serving certificate within 5 s");
        Port {
            addr,
            ca,
            handled,
            _ca_tx: ca_tx,
        }
    }

    /// A TCP connection from `source`.
    async fn tcp_from(&self, source: Ipv4Addr) -> TcpStream {
        let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
        socket
            .bind(SocketAddr::new(IpAddr::V4(source), 0))
            .expect("binds a loopback source");
        socket.connect(self.addr).await.expect("connects")
    }

    /// A TLS connection from `source` offering `alpn`.
    async fn tls_from(&self, source: Ipv4Addr, alpn: &[u8]) -> TlsStream<TcpStream> {
        self.try_tls_from(source, alpn)
            .await
            .expect("TLS handshake")
    }

    /// The same, or why the server would not (a refused connection is closed in the handshake).
    async fn try_tls_from(
        &self,
        source: Ipv4Addr,
        alpn: &[u8],
    ) -> Result<TlsStream<TcpStream>, String> {
        let mut roots = rustls::RootCertStore::empty();
        for der in certificates_from_pem(&self.ca.roots_pem()).expect("roots") {
            roots.add(der.into()).expect("a root certificate");
        }
        let mut config = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![alpn.to_vec()];
        let tcp = self.tcp_from(source).await;
        tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from(HOST).expect("a DNS name"), tcp)
            .await
            .map_err(|e| format!("TLS handshake: {e}"))
    }

    /// GET `path` as a well-behaved HTTP/2 client from `source`: the status and the body, or
    /// why there was none.
    async fn get_from(&self, source: Ipv4Addr, path: &str) -> Result<(StatusCode, Bytes), String> {
        let tls = self.try_tls_from(source, b"h2").await?;
        let (mut send, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                .await
                .map_err(|e| format!("HTTP/2 handshake: {e}"))?;
        tokio::spawn(connection);
        let request = Request::get(format!("https://{HOST}{path}"))
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        let response = send
            .send_request(request)
            .await
            .map_err(|e| format!("no answer: {e}"))?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("body cut off: {e}"))?
            .to_bytes();
        Ok((status, body))
    }
}

/// Reads until the peer closes: `Ok(bytes read)` on EOF or a reset, `Err` if still open after
/// [`GUARD`].
async fn closed_by_server<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) -> Result<usize, ()> {
    let read_all = async {
        let mut total = 0;
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return total,
                Ok(n) => total += n,
            }
        }
    };
    tokio::time::timeout(GUARD, read_all).await.map_err(|_| ())
}

fn limits() -> ServingLimits {
    ServingLimits {
        tls_handshake_timeout: Duration::from_secs(2),
        header_read_timeout: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(10),
        ..ServingLimits::with_caps(64, 8)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slowloris_is_closed_within_the_header_timeout_and_others_are_served() {
    let port = Port::serve(limits()).await;

    // HTTP/1.1, one byte of a never-ending request head at a time: the server hangs up long
    // before the head could end (hyper's header read timeout).
    let tls = port.tls_from(ABUSER, b"http/1.1").await;
    let (mut read, mut write) = tokio::io::split(tls);
    let head = format!(
        "GET / HTTP/1.1\r\nhost: {HOST}\r\n{}",
        "x-slow: y\r\n".repeat(20)
    );
    let trickle = async {
        for (sent, byte) in head.bytes().enumerate() {
            if write.write_all(&[byte]).await.is_err() || write.flush().await.is_err() {
                return sent;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        head.len()
    };
    let (sent, closed) = tokio::join!(trickle, closed_by_server(&mut read));
    closed.expect("the server closes the slow connection");
    assert!(
        sent < head.len(),
        "the client could send its whole {}-byte head, one byte per 100 ms, against a 1 s header timeout",
        head.len()
    );

    // TLS done, then silence: no first request within the header timeout.
    let mut silent = port.tls_from(ABUSER, b"http/1.1").await;
    assert!(
        closed_by_server(&mut silent).await.is_ok(),
        "silent HTTP/1.1 client left open"
    );

    // The same on HTTP/2: the preface and SETTINGS, then never a request. The server's own
    // SETTINGS come back, then the connection ends.
    let mut h2 = port.tls_from(ABUSER, b"h2").await;
    h2.write_all(&h2_preface()).await.expect("preface sent");
    assert!(
        closed_by_server(&mut h2).await.is_ok(),
        "HTTP/2 client without a request left open"
    );

    // Meanwhile anyone else is served.
    let (status, body) = port.get_from(OTHER_SOURCE, "/").await.expect("served");
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"ok"[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_from_one_source_do_not_keep_another_client_out() {
    let limits = limits();
    let per_source = limits.max_connections_per_source;
    let port = Port::serve(ServingLimits {
        // The held connections must outlive the test's checks.
        tls_handshake_timeout: Duration::from_secs(30),
        header_read_timeout: Duration::from_secs(30),
        ..limits
    })
    .await;

    // The abuser opens its cap's worth of idle connections, then as many again.
    let mut held = Vec::new();
    for _ in 0..per_source {
        held.push(port.tcp_from(ABUSER).await);
    }
    // Accepted in order, so every connection past the cap is closed unserved.
    for extra in 0..per_source * 3 {
        let mut over = port.tcp_from(ABUSER).await;
        assert!(
            closed_by_server(&mut over).await.is_ok(),
            "connection {} from one source left open (cap {per_source})",
            per_source + extra + 1
        );
    }

    // Another source is served meanwhile.
    let (status, _) = port.get_from(OTHER_SOURCE, "/").await.expect("served");
    assert_eq!(status, StatusCode::OK);

    // The abuser's slots come back when its connections close.
    drop(held);
    let mut served = None;
    for _ in 0..50 {
        // The server notices the closes asynchronously; a refused try is closed at once.
        if let Ok(answer) = port.get_from(ABUSER, "/").await {
            served = Some(answer.0);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(served, Some(StatusCode::OK));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_is_closed_but_a_slow_stream_is_not() {
    let port = Port::serve(ServingLimits {
        idle_timeout: Duration::from_secs(1),
        header_read_timeout: Duration::from_secs(10),
        ..limits()
    })
    .await;

    // A stream that sends a byte every 300 ms for 3 s outlives the 1 s idle timeout: bytes
    // move, as on the config stream with its heartbeat.
    let (status, body) = port.get_from(ABUSER, "/stream").await.expect("the stream");
    assert_eq!((status, &body[..]), (StatusCode::OK, &b".........."[..]));

    // An HTTP/2 connection that asked once and then says nothing is closed.
    let tls = port.tls_from(ABUSER, b"h2").await;
    let (mut send, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .expect("HTTP/2 handshake");
    let connection = tokio::spawn(connection);
    let response = send
        .send_request(
            Request::get(format!("https://{HOST}/"))
                .body(Empty::<Bytes>::new())
                .expect("a request"),
        )
        .await
        .expect("answered");
    assert_eq!(response.status(), StatusCode::OK);
    drop(response);
    let ended = tokio::time::timeout(GUARD, connection).await;
    assert!(ended.is_ok(), "idle HTTP/2 connection still open");
}

// === raw HTTP/2 ===

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const CANCEL: u32 = 0x8;
const ENHANCE_YOUR_CALM: u32 = 0xb;
const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;
const SETTINGS_MAX_HEADER_LIST_SIZE: u16 = 0x6;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).expect("a small frame");
    let mut out = len.to_be_bytes()[1..].to_vec();
    out.extend([kind, flags]);
    out.extend(stream.to_be_bytes());
    out.extend(payload);
    out
}

/// The client preface and an empty SETTINGS frame.
fn h2_preface() -> Vec<u8> {
    let mut out = PREFACE.to_vec();
    out.extend(frame(SETTINGS, 0, 0, &[]));
    out
}

/// `GET /` (HPACK: :method GET, :scheme https, :path / from the static table; :authority
/// as a literal).
fn get_root_headers() -> Vec<u8> {
    let mut block = vec![
        0x82,
        0x87,
        0x84,
        0x01,
        u8::try_from(HOST.len()).unwrap_or(0),
    ];
    block.extend(HOST.as_bytes());
    block
}

/// The next frame: `(type, flags, stream, payload)`, or `None` once the connection ends.
async fn read_frame<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
) -> Option<(u8, u8, u32, Vec<u8>)> {
    let mut head = [0u8; 9];
    stream.read_exact(&mut head).await.ok()?;
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let id = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
    let mut payload = vec![0u8; len];
    stream.read_exact(&mut payload).await.ok()?;
    Some((head[3], head[4], id, payload))
}

fn settings_of(payload: &[u8]) -> Vec<(u16, u32)> {
    payload
        .chunks_exact(6)
        .map(|s| {
            (
                u16::from_be_bytes([s[0], s[1]]),
                u32::from_be_bytes([s[2], s[3], s[4], s[5]]),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_limits_are_announced_and_a_rapid_reset_burst_is_cut_off() {
    let port = Port::serve(limits()).await;
    let mut tls = port.tls_from(ABUSER, b"h2").await;
    tls.write_all(&h2_preface()).await.expect("preface sent");

    // The server announces its stream and header-list limits first.
    let (kind, _, _, payload) = read_frame(&mut tls).await.expect("the server's SETTINGS");
    assert_eq!(kind, SETTINGS);
    let announced = settings_of(&payload);
    assert!(
        announced.contains(&(SETTINGS_MAX_CONCURRENT_STREAMS, H2_MAX_CONCURRENT_STREAMS))
            && announced.contains(&(SETTINGS_MAX_HEADER_LIST_SIZE, H2_MAX_HEADER_LIST_BYTES)),
        "{announced:?}"
    );

    // The 2023 rapid reset: open a stream and cancel it at once, a thousand times in one go.
    const BURST: u32 = 1_000;
    let headers = get_root_headers();
    let mut burst = Vec::new();
    for i in 0..BURST {
        let id = 2 * i + 1;
        burst.extend(frame(HEADERS, END_HEADERS | END_STREAM, id, &headers));
        burst.extend(frame(RST_STREAM, 0, id, &CANCEL.to_be_bytes()));
    }
    // The server may close while the burst is still being written.
    let _ = tls.write_all(&burst).await;
    let mut goaway = None;
    let read_frames = async {
        while let Some((kind, _, _, payload)) = read_frame(&mut tls).await {
            if kind == GOAWAY && payload.len() >= 8 {
                goaway = Some(u32::from_be_bytes([
                    payload[4], payload[5], payload[6], payload[7],
                ]));
            }
        }
    };
    tokio::time::timeout(GUARD, read_frames)
        .await
        .expect("the server ends the connection");
    assert_eq!(goaway, Some(ENHANCE_YOUR_CALM), "GOAWAY(ENHANCE_YOUR_CALM)");
    let handled = port.handled.load(Ordering::SeqCst);
    assert!(
        handled < BURST as usize / 2,
        "{handled} of {BURST} cancelled streams reached the router"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_trickled_past_the_body_timeout_is_answered_before_it_ends() {
    let port = Port::serve(ServingLimits {
        body_read_timeout: Duration::from_secs(1),
        ..limits()
    })
    .await;
    let tls = port.tls_from(ABUSER, b"h2").await;
    let (mut send, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .expect("HTTP/2 handshake");
    tokio::spawn(connection);

    // A byte every 200 ms, 100 of them: 20 s of upload against a 1 s body timeout.
    const BYTES: usize = 100;
    let sent = Arc::new(AtomicUsize::new(0));
    let counted = sent.clone();
    let trickle = futures::stream::unfold(0, move |n| {
        let counted = counted.clone();
        async move {
            if n == BYTES {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            counted.fetch_add(1, Ordering::SeqCst);
            Some((
                Ok::<_, Infallible>(Frame::data(Bytes::from_static(b"x"))),
                n + 1,
            ))
        }
    });
    let request = Request::post(format!("https://{HOST}/upload"))
        .body(StreamBody::new(trickle).boxed())
        .expect("a request");
    send.ready().await.expect("ready");
    let response = tokio::time::timeout(GUARD, send.send_request(request))
        .await
        .expect("answered before the guard")
        .expect("an answer");
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let sent = sent.load(Ordering::SeqCst);
    assert!(
        sent < BYTES,
        "the whole trickled body was read ({sent} bytes)"
    );
    let text = response
        .into_body()
        .collect()
        .await
        .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
        .unwrap_or_default();
    assert!(text.contains("not received within 1 s"), "{text}");

    // A body sent at once is read whole.
    let (status, body) = {
        let tls = port.tls_from(OTHER_SOURCE, b"h2").await;
        let (mut send, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                .await
                .expect("HTTP/2 handshake");
        tokio::spawn(connection);
        let request = Request::post(format!("https://{HOST}/upload"))
            .body(http_body_util::Full::new(Bytes::from(vec![b'x'; 100_000])).boxed())
            .expect("a request");
        let response = send.send_request(request).await.expect("an answer");
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        (status, body)
    };
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"got 100000"[..]));
}
