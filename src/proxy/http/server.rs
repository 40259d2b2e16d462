//! Serving one downstream connection as HTTP: HTTP/1.1 (keep-alive; hyper answers pipelined
//! requests one at a time, in order) or HTTP/2 (told apart by its preface, as hyper-util's
//! auto builder does), with HTTP/1 upgrades enabled. Any byte stream will do: a terminated
//! mTLS stream or a plaintext socket with its sniffed prefix. Also the response body the
//! proxy writes (upstream bodies streamed through, or its own short answers), a wrapper that
//! reports when a response body has ended (request metrics), and the idle timeout.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

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
/// which no byte moved for `idle` is closed, as on the L4 path.
pub async fn serve<I, F, Fut>(
    io: I,
    handler: F,
    shutdown: impl Future<Output = ()>,
    idle: Duration,
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
        .header_read_timeout(None)
        .auto_date_header(false);
    builder.http2().auto_date_header(false);
    let (io, activity) = Active::new(io);
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service_fn(handler));
    tokio::pin!(conn);
    tokio::pin!(shutdown);
    tokio::select! {
        r = conn.as_mut() => r,
        () = &mut shutdown => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
        () = activity.idle_for(idle) => Err(format!("no bytes moved for {idle:?}").into()),
    }
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
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

// === impl Observed ===

/// A body that calls `on_end` once: when its last frame has been read, it failed, or it was
/// dropped unfinished (the client went away).
pub struct Observed<B, F: FnOnce()> {
    inner: B,
    on_end: Option<F>,
}

impl<B, F: FnOnce()> Observed<B, F> {
    pub fn new(inner: B, on_end: F) -> Self {
        Observed {
            inner,
            on_end: Some(on_end),
        }
    }

    fn end(&mut self) {
        if let Some(f) = self.on_end.take() {
            f();
        }
    }
}

impl<B, F: FnOnce()> Drop for Observed<B, F> {
    fn drop(&mut self) {
        self.end();
    }
}

impl<B: Body + Unpin, F: FnOnce() + Unpin> Body for Observed<B, F> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            self.end();
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

// === impl Counted ===

/// A body that adds the length of each data frame it passes to a shared counter (access
/// logs' `bytes_received` / `bytes_sent`).
pub struct Counted<B> {
    inner: B,
    bytes: Arc<AtomicU64>,
}

impl<B> Counted<B> {
    pub fn new(inner: B, bytes: Arc<AtomicU64>) -> Self {
        Counted { inner, bytes }
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
        )
        .await;
        assert!(served.is_err());
        assert!(started.elapsed() >= Duration::from_millis(100));
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
}
