//! Serving one downstream connection as HTTP: HTTP/1.1 (keep-alive; hyper answers pipelined
//! requests one at a time, in order) or HTTP/2 (told apart by its preface, as hyper-util's
//! auto builder does), with HTTP/1 upgrades enabled. Any byte stream will do: a terminated
//! mTLS stream or a plaintext socket with its sniffed prefix. Also the response body the
//! proxy writes (upstream bodies streamed through, or its own short answers), a wrapper that
//! counts a response body and reports its end (request metrics), the request and response
//! sizes as Istio's size histograms count them, and the idle timeout.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::BoxFuture;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::proxy::ProxyContext;
use crate::proxy::metrics::grpc_status_value;

/// The largest request head a client may send (HTTP/1: the read buffer holding it; HTTP/2:
/// the header list), as Envoy's `max_request_headers_kb` default of 60 KiB, rounded up:
/// beyond it HTTP/1 gets 431 and HTTP/2 a stream reset. hyper's defaults would buffer about
/// 400 KB (HTTP/1) and 16 MB (HTTP/2) per connection.
pub const MAX_REQUEST_HEAD: usize = 64 * 1024;

/// Every response body the proxy sends downstream.
pub type ResponseBody = UnsyncBoxBody<Bytes, hyper::Error>;

/// A short body the proxy writes itself.
pub fn full(text: &'static str) -> ResponseBody {
    Full::new(Bytes::from_static(text.as_bytes()))
        .map_err(|never: Infallible| match never {})
        .boxed_unsync()
}

/// Serves `io` until the client closes it, handing each request to `handler`; once
/// `shutdown` resolves (the proxy drains) it stops taking new requests (HTTP/2 GOAWAY,
/// HTTP/1 close after the current response) and finishes those in flight. A connection on
/// which no byte moved for `idle` is closed, as on the L4 path. `header_timeout`: how long
/// an HTTP/1 client may take to send a request head (a gateway's defence against slowloris;
/// none for a sidecar, whose clients are its own app).
pub async fn serve<I, F, Fut>(
    io: I,
    handler: F,
    shutdown: impl Future<Output = ()>,
    idle: Duration,
    header_timeout: Option<Duration>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>>
where
    I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    F: Fn(Request<Incoming>) -> Fut + Send + 'static,
    Fut: Future<Output = Result<Response<ResponseBody>, Infallible>> + Send + 'static,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // Like the L4 path, an idle keep-alive connection lasts until the idle timeout: hyper's
    // default 30 s header timeout would close it sooner.
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(header_timeout)
        .max_buf_size(MAX_REQUEST_HEAD)
        .auto_date_header(false);
    builder
        .http2()
        .max_header_list_size(MAX_REQUEST_HEAD as u32)
        .auto_date_header(false);
    let (io, activity) = Active::new(io);
    // An HTTP/2 client's connection gets each response's HEADERS and DATA in one write.
    let io = super::coalesce::Coalesce::when_h2(io);
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service_fn(handler));
    tokio::pin!(conn);
    tokio::pin!(shutdown);
    tokio::select! {
        // The connection first: it is what wakes the task on almost every poll.
        biased;
        r = conn.as_mut() => r,
        () = &mut shutdown => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
        () = activity.idle_for(idle) => Err(format!("no bytes moved for {idle:?}").into()),
    }
}

/// A request handler of any pipeline, boxed ([`serve_pipeline`]), and its answer.
type Handler = Box<dyn Fn(Request<Incoming>) -> Answer + Send + Sync>;
type Answer = BoxFuture<'static, Result<Response<ResponseBody>, Infallible>>;

/// One side's per-request pipeline (inbound, outbound, a gateway's).
pub trait Pipeline: Send + Sync + 'static {
    fn handle(&self, req: Request<Incoming>)
    -> impl Future<Output = Response<ResponseBody>> + Send;

    /// Answers a CONNECT, refused before any route or policy sees it ([`refuse_connect`]),
    /// and records it (metrics, access log) where the side records its own replies.
    fn refuse_connect(&self, req: Request<Incoming>) -> Response<ResponseBody>;
}

/// Serves `io` through `pipeline` until it closes, the proxy drains or it idles out.
///
/// Draining, as Envoy's drain mode does: every HTTP/1 response carries `Connection: close`,
/// so a keep-alive connection closes after its next response (the client's next request
/// opens a new connection, which the load balancer sends to a pod that is not leaving). An
/// HTTP/2 connection gets a GOAWAY as soon as it has a request (streams in progress finish).
/// An idle HTTP/1 connection is closed once the proxy's listeners stop accepting: at once
/// for a sidecar, after `linger` for a gateway, whose ports accept for the drain duration
/// (meanwhile a client sending on it gets its answer with `Connection: close`). A connection
/// accepted while draining is served once, never cut before its first request.
pub async fn serve_pipeline<I, P>(
    ctx: &Arc<ProxyContext>,
    io: I,
    pipeline: Arc<P>,
    side: &str,
    header_timeout: Option<Duration>,
    linger: Duration,
) where
    I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    P: Pipeline,
{
    let side_owned: Arc<str> = Arc::from(side);
    // The version of the last request received (none yet).
    let received = Arc::new(watch::Sender::new(None::<Version>));
    // Boxed, like the stream and the drain signal below: hyper's server is then compiled
    // once for every pipeline (one allocation per request).
    let handler: Handler = {
        let (ctx, received) = (ctx.clone(), received.clone());
        Box::new(move |req: Request<Incoming>| {
            let (pipeline, ctx, received) = (pipeline.clone(), ctx.clone(), received.clone());
            let side = side_owned.clone();
            Box::pin(async move {
                let version = req.version();
                // Only a change is published: the drain waits for the first request.
                received.send_if_modified(|last| {
                    let changed = *last != Some(version);
                    *last = Some(version);
                    changed
                });
                if req.method() == Method::CONNECT {
                    let refused = pipeline.refuse_connect(req);
                    return Ok::<_, Infallible>(refuse_connect(refused, version, &side));
                }
                // Not on an upgrade: its connection becomes the tunnel.
                let close = version < Version::HTTP_2;
                let mut response = pipeline.handle(req).await;
                if close
                    && response.status() != StatusCode::SWITCHING_PROTOCOLS
                    && ctx.is_draining()
                {
                    response
                        .headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("close"));
                }
                Ok::<_, Infallible>(response)
            })
        })
    };
    let idle = ctx.settings.idle_timeout;
    let ctx = ctx.clone();
    let shutdown: BoxFuture<'static, ()> = Box::pin(async move {
        ctx.drained().await;
        let mut received = received.subscribe();
        let Ok(version) = received.wait_for(Option::is_some).await.map(|v| *v) else {
            return;
        };
        if version < Some(Version::HTTP_2) {
            tokio::time::sleep(linger).await;
        }
    });
    let io: super::BoxIo = Box::new(io);
    if let Err(e) = serve(io, handler, shutdown, idle, header_timeout).await {
        tracing::debug!(error = %e, side, "HTTP connection ended with an error");
    }
}

/// The answer to a CONNECT request: 403, as Envoy answers one on Istio's listeners, whose
/// `upgrade_configs` enable only WebSocket (Envoy's CONNECT support is off unless an upgrade
/// config names CONNECT). A tunnel is neither routed nor authorized past its first request,
/// so a CONNECT would carry a client to any address past the mesh's routes and policies.
/// An HTTP/1 connection is closed after it: the client may already be sending the tunnel's
/// bytes, which are not HTTP. `response`: the pipeline's recorded 403
/// ([`Pipeline::refuse_connect`]).
fn refuse_connect(
    mut response: Response<ResponseBody>,
    version: Version,
    side: &str,
) -> Response<ResponseBody> {
    tracing::debug!(
        side,
        "CONNECT refused with 403 (CONNECT is not enabled, as in Istio)"
    );
    if version < Version::HTTP_2 {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

// === impl Active ===

/// A stream that notes when bytes last moved through it.
pub struct Active<S> {
    inner: S,
    activity: Arc<Activity>,
}

pub struct Activity {
    start: Instant,
    /// Milliseconds from `start` to the last read or write.
    last_ms: AtomicU64,
}

impl<S> Active<S> {
    pub fn new(inner: S) -> (Self, Arc<Activity>) {
        let activity = Arc::new(Activity {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
        });
        (
            Active {
                inner,
                activity: activity.clone(),
            },
            activity,
        )
    }
}

impl Activity {
    fn touch(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// Resolves once nothing moved for `idle`.
    pub async fn idle_for(&self, idle: Duration) {
        loop {
            let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let deadline = self.start + last + idle;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Active<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Active<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }
    // Passed through, so hyper writes a response's head and body as one vectored write
    // instead of copying the body behind the head first.
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

// === impl Metered ===

/// What a response body carried, reported when it ends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BodyEnd {
    /// Bytes of its data frames.
    pub data: u64,
    /// Bytes of its trailers, counted as [`fields_size`] counts header fields.
    pub trailers: u64,
    /// The raw `grpc-status` of its trailers, as Envoy reads it ([`grpc_status_value`]).
    ///
    /// [`grpc_status_value`]: crate::proxy::metrics::grpc_status_value
    pub grpc_status: Option<i32>,
    /// gRPC messages in its data, when counted ([`Metered::grpc`]).
    pub messages: u64,
}

/// A response body that counts what passes and calls `on_end` once with it: when its last
/// frame has been read, it failed, or it was dropped unfinished (the client went away).
pub struct Metered<B, F: FnOnce(BodyEnd)> {
    inner: B,
    seen: BodyEnd,
    grpc: Option<GrpcMessages>,
    on_end: Option<F>,
}

impl<B, F: FnOnce(BodyEnd)> Metered<B, F> {
    pub fn new(inner: B, on_end: F) -> Self {
        Metered {
            inner,
            seen: BodyEnd::default(),
            grpc: None,
            on_end: Some(on_end),
        }
    }

    /// Also counts the gRPC messages of the body (a gRPC response).
    pub fn grpc(mut self, on: bool) -> Self {
        self.grpc = on.then(GrpcMessages::default);
        self
    }

    fn end(&mut self) {
        if let Some(f) = self.on_end.take() {
            f(self.seen);
        }
    }
}

impl<B, F: FnOnce(BodyEnd)> Drop for Metered<B, F> {
    fn drop(&mut self) {
        self.end();
    }
}

impl<B: Body + Unpin, F: FnOnce(BodyEnd) + Unpin> Body for Metered<B, F> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    use hyper::body::Buf;
                    self.seen.data += data.remaining() as u64;
                    if let Some(messages) = &mut self.grpc {
                        messages.feed(data.chunk());
                        self.seen.messages = messages.count;
                    }
                } else if let Some(trailers) = frame.trailers_ref() {
                    self.seen.trailers += fields_size(trailers);
                    if let Some(v) = trailers.get(&super::exchange::GRPC_STATUS) {
                        self.seen.grpc_status = Some(grpc_status_value(v.as_bytes()));
                    }
                }
            }
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => self.end(),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

// === sizes ===
//
// istio/proxy's `istio_stats` filter observes `istio_request_bytes` / `istio_response_bytes`
// from Envoy's downstream bytes meter (`wireBytesReceived()` / `wireBytesSent()` of the
// stream): the head, the body and the trailers as they cross the wire. hyper does not expose a
// stream's wire bytes, so weft counts the same parts the way HTTP/1.1 writes them: the start
// line, one `name: value\r\n` per field, the blank line, the body's data (without chunked
// framing) and the trailers. For HTTP/1.1 in the usual `name: value` form that is the wire
// size of the head; for HTTP/2 it is the uncompressed size (Envoy counts HPACK-compressed
// frames), with `:authority` counted as a `host` field.

/// `name: value\r\n` for each field.
pub fn fields_size(fields: &HeaderMap) -> u64 {
    fields
        .iter()
        .map(|(name, value)| (name.as_str().len() + value.len() + 4) as u64)
        .sum()
}

/// `HTTP/1.1` (and `HTTP/1.0`); an HTTP/2 head is counted as HTTP/1.1 would write it.
const VERSION_LEN: u64 = 8;

/// The request head as received: `METHOD target VERSION\r\n`, its fields, the blank line.
pub fn request_head_size(parts: &hyper::http::request::Parts) -> u64 {
    let target = parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.to_string().len(), |p| p.as_str().len());
    let host = match parts.uri.authority() {
        Some(a) if !parts.headers.contains_key(hyper::header::HOST) => {
            ("host: \r\n".len() + a.as_str().len()) as u64
        }
        _ => 0,
    };
    (parts.method.as_str().len() + 1 + target + 1) as u64
        + VERSION_LEN
        + 2
        + fields_size(&parts.headers)
        + host
        + 2
}

/// The response head as forwarded: `VERSION code reason\r\n`, its fields, the blank line.
pub fn response_head_size(status: StatusCode, fields: &HeaderMap) -> u64 {
    let reason = status.canonical_reason().unwrap_or("").len() as u64;
    VERSION_LEN + 1 + 3 + 1 + reason + 2 + fields_size(fields) + 2
}

// === impl GrpcMessages ===

/// Counts the gRPC messages in a body's bytes: each is a 5-byte prefix (compressed flag,
/// big-endian length) and that many bytes, and may be split over data frames any way
/// (gRPC's HTTP/2 protocol spec, "Length-Prefixed-Message"). A message counts when its
/// prefix is complete, as Envoy's gRPC frame inspector counts it.
#[derive(Debug, Default, Clone)]
pub struct GrpcMessages {
    prefix: [u8; 5],
    have: usize,
    /// Bytes of the current message's payload still to come.
    remaining: u64,
    pub count: u64,
}

impl GrpcMessages {
    pub fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.remaining > 0 {
                let skip = bytes
                    .len()
                    .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
                self.remaining -= skip as u64;
                bytes = &bytes[skip..];
                continue;
            }
            let take = (5 - self.have).min(bytes.len());
            self.prefix[self.have..self.have + take].copy_from_slice(&bytes[..take]);
            self.have += take;
            bytes = &bytes[take..];
            if self.have == 5 {
                self.count += 1;
                self.have = 0;
                let len = [
                    self.prefix[1],
                    self.prefix[2],
                    self.prefix[3],
                    self.prefix[4],
                ];
                self.remaining = u64::from(u32::from_be_bytes(len));
            }
        }
    }
}

// === impl Counted ===

/// A body that adds the length of each data frame it passes to a shared counter (access
/// logs' `bytes_received` / `bytes_sent`) and, for gRPC, the messages in it.
pub struct Counted<B> {
    inner: B,
    bytes: Arc<AtomicU64>,
    grpc: Option<(GrpcMessages, Arc<AtomicU64>)>,
}

impl<B> Counted<B> {
    pub fn new(inner: B, bytes: Arc<AtomicU64>) -> Self {
        Counted {
            inner,
            bytes,
            grpc: None,
        }
    }

    /// Also counts gRPC messages into `messages`.
    pub fn grpc(mut self, messages: Arc<AtomicU64>) -> Self {
        self.grpc = Some((GrpcMessages::default(), messages));
        self
    }
}

impl<B: Body + Unpin> Body for Counted<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            use hyper::body::Buf;
            self.bytes
                .fetch_add(data.remaining() as u64, Ordering::Relaxed);
            if let Some((messages, total)) = &mut self.grpc {
                // hyper's bodies are `Bytes`: one contiguous chunk per frame.
                let before = messages.count;
                messages.feed(data.chunk());
                total.fetch_add(messages.count - before, Ordering::Relaxed);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_messages_are_counted_however_the_frames_split_them() {
        let message = |payload: &[u8]| {
            let mut m = vec![0u8];
            m.extend_from_slice(&(payload.len() as u32).to_be_bytes());
            m.extend_from_slice(payload);
            m
        };
        let mut stream = Vec::new();
        for payload in [&b"one"[..], b"", b"three", &[7u8; 300][..]] {
            stream.extend(message(payload));
        }
        // Whole, byte by byte, and in chunks that split prefixes and payloads.
        for chunk in [stream.len(), 1, 2, 3, 7, 64] {
            let mut counted = GrpcMessages::default();
            for piece in stream.chunks(chunk) {
                counted.feed(piece);
            }
            assert_eq!(counted.count, 4, "chunks of {chunk}");
        }
        // A prefix counts as soon as it is complete; its payload may never come.
        let mut cut = GrpcMessages::default();
        cut.feed(&stream[..7]);
        assert_eq!(cut.count, 1);
    }

    /// A stream that takes vectored writes and counts the calls.
    #[derive(Default)]
    struct Vectored {
        calls: usize,
        bytes: Vec<u8>,
    }

    impl tokio::io::AsyncWrite for Vectored {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.calls += 1;
            self.bytes.extend_from_slice(buf);
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            bufs: &[io::IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            self.calls += 1;
            let mut n = 0;
            for b in bufs {
                self.bytes.extend_from_slice(b);
                n += b.len();
            }
            Poll::Ready(Ok(n))
        }
        fn is_write_vectored(&self) -> bool {
            true
        }
        fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// hyper writes a head and a body in one call only to a stream that says it takes
    /// vectored writes: the activity wrapper passes that on, and such a write counts as
    /// activity.
    #[tokio::test]
    async fn vectored_writes_pass_through_and_count_as_activity() {
        use tokio::io::AsyncWriteExt;
        let (mut s, activity) = Active::new(Vectored::default());
        assert!(tokio::io::AsyncWrite::is_write_vectored(&s));
        tokio::time::sleep(Duration::from_millis(30)).await;
        let bufs = [io::IoSlice::new(b"head "), io::IoSlice::new(b"body")];
        let n = s.write_vectored(&bufs).await.unwrap();
        assert_eq!(n, 9);
        assert_eq!(
            (s.inner.calls, s.inner.bytes.as_slice()),
            (1, &b"head body"[..])
        );
        assert!(activity.last_ms.load(Ordering::Relaxed) >= 30);
    }

    #[tokio::test]
    async fn an_idle_connection_is_closed() {
        let (_client, server) = tokio::io::duplex(1024);
        let handler = |_req: Request<Incoming>| async { Ok(Response::new(full("never"))) };
        let started = Instant::now();
        let served = serve(
            server,
            handler,
            std::future::pending(),
            Duration::from_millis(100),
            None,
        )
        .await;
        assert!(served.is_err());
        assert!(started.elapsed() >= Duration::from_millis(100));
    }

    #[tokio::test]
    async fn a_request_head_that_never_ends_is_cut_off_by_the_header_timeout() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut client, server) = tokio::io::duplex(4096);
        let handler = |_req: Request<Incoming>| async { Ok(Response::new(full("never"))) };
        // Bytes keep moving (so the idle timeout never fires); the head never completes.
        let served = tokio::spawn(serve(
            server,
            handler,
            std::future::pending(),
            Duration::from_secs(30),
            Some(Duration::from_millis(200)),
        ));
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        let mut out = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), client.read_to_end(&mut out));
        assert!(read.await.is_ok(), "the connection stayed open");
        let _ = served.await.unwrap();
    }

    /// A pipeline that counts the requests it is handed and answers 200.
    struct Counting(AtomicU64);

    impl Pipeline for Counting {
        fn handle(
            &self,
            _req: Request<Incoming>,
        ) -> impl Future<Output = Response<ResponseBody>> + Send {
            self.0.fetch_add(1, Ordering::Relaxed);
            std::future::ready(Response::new(full("ok")))
        }

        fn refuse_connect(&self, _req: Request<Incoming>) -> Response<ResponseBody> {
            let mut response = Response::new(full(""));
            *response.status_mut() = StatusCode::FORBIDDEN;
            response
        }
    }

    /// CONNECT gets 403 before any pipeline sees it (so it is neither routed nor tunnelled:
    /// it was tunnelled to wherever the app asked), and its HTTP/1 connection is closed; a
    /// GET is handed on as before.
    #[tokio::test]
    async fn connect_is_refused_with_403_before_the_pipeline() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (ctx, _inputs) = ProxyContext::new(Default::default());
        let pipeline = Arc::new(Counting(AtomicU64::new(0)));
        let exchange = |request: &'static [u8]| {
            let (ctx, pipeline) = (ctx.clone(), pipeline.clone());
            async move {
                let (mut client, server) = tokio::io::duplex(4096);
                let served = tokio::spawn(async move {
                    serve_pipeline(&ctx, server, pipeline, "test", None, Duration::ZERO).await
                });
                client.write_all(request).await.unwrap();
                let mut out = String::new();
                let read =
                    tokio::time::timeout(Duration::from_secs(10), client.read_to_string(&mut out));
                assert!(read.await.is_ok(), "the connection stayed open: {out}");
                served.await.unwrap();
                out
            }
        };
        let refused = exchange(
            b"CONNECT 198.18.0.1:443 HTTP/1.1\r\nHost: 198.18.0.1:443\r\n\r\nbytes of a tunnel",
        )
        .await;
        assert!(refused.starts_with("HTTP/1.1 403"), "{refused}");
        assert!(
            refused.to_ascii_lowercase().contains("connection: close"),
            "{refused}"
        );
        assert_eq!(pipeline.0.load(Ordering::Relaxed), 0);
        let served = exchange(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
        assert!(served.starts_with("HTTP/1.1 200"), "{served}");
        assert_eq!(pipeline.0.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn requests_are_served_and_bytes_count_as_activity() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut client, server) = tokio::io::duplex(4096);
        let handler = |req: Request<Incoming>| async move {
            let text = if req.uri().path() == "/a" {
                "A"
            } else {
                "other"
            };
            Ok(Response::new(full(text)))
        };
        let served = tokio::spawn(serve(
            server,
            handler,
            std::future::pending(),
            Duration::from_secs(5),
            None,
        ));
        // Two pipelined requests in one write: answered in order.
        client
            .write_all(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        client.read_to_string(&mut out).await.unwrap();
        let a = out.find("\r\n\r\nA").expect(&out);
        let b = out.find("\r\n\r\nother").expect(&out);
        assert!(a < b, "{out}");
        assert!(served.await.unwrap().is_ok());
    }

    #[test]
    fn heads_are_sized_as_http1_writes_them() {
        let req = Request::post("/v1/charges?id=7")
            .header("host", "api.demo")
            .header("content-length", "2")
            .body(())
            .unwrap();
        let (parts, ()) = req.into_parts();
        let wire = "POST /v1/charges?id=7 HTTP/1.1\r\nhost: api.demo\r\ncontent-length: 2\r\n\r\n";
        assert_eq!(request_head_size(&parts), wire.len() as u64);
        // HTTP/2: `:authority` counts as the host field HTTP/1.1 would send.
        let h2 = Request::get("http://api.demo/")
            .version(hyper::Version::HTTP_2)
            .body(())
            .unwrap();
        let (parts, ()) = h2.into_parts();
        let wire = "GET / HTTP/1.1\r\nhost: api.demo\r\n\r\n";
        assert_eq!(request_head_size(&parts), wire.len() as u64);

        let mut fields = HeaderMap::new();
        fields.insert("content-type", "text/plain".parse().unwrap());
        let wire = "HTTP/1.1 403 Forbidden\r\ncontent-type: text/plain\r\n\r\n";
        assert_eq!(
            response_head_size(StatusCode::FORBIDDEN, &fields),
            wire.len() as u64
        );
    }

    #[tokio::test]
    async fn a_metered_body_reports_data_trailers_and_grpc_status_once() {
        use http_body_util::StreamBody;
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", "7".parse().unwrap());
        let frames: Vec<Result<Frame<Bytes>, Infallible>> = vec![
            Ok(Frame::data(Bytes::from_static(b"hello"))),
            Ok(Frame::data(Bytes::from_static(b"!"))),
            Ok(Frame::trailers(trailers)),
        ];
        let ends = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = ends.clone();
        let body = Metered::new(StreamBody::new(futures::stream::iter(frames)), move |end| {
            seen.lock().unwrap().push(end)
        });
        let collected = body.collect().await.unwrap();
        assert_eq!(collected.to_bytes().as_ref(), b"hello!");
        let ends = ends.lock().unwrap();
        assert_eq!(
            ends.as_slice(),
            [BodyEnd {
                data: 6,
                trailers: "grpc-status: 7\r\n".len() as u64,
                grpc_status: Some(7),
                messages: 0,
            }]
        );
    }
}
