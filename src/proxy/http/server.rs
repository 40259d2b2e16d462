//! Serving one downstream connection as HTTP: HTTP/1.1 (keep-alive; hyper answers pipelined
//! requests one at a time, in order) or HTTP/2 (told apart by its preface, as hyper-util's
//! auto builder does), with HTTP/1 upgrades enabled. Any byte stream will do: a terminated
//! mTLS stream or a plaintext socket with its sniffed prefix. Also the response body the
//! proxy writes (upstream bodies streamed through, or its own short answers) and a wrapper
//! that reports when a response body has ended, for request metrics.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};

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
/// HTTP/1 close after the current response) and finishes those in flight.
pub async fn serve<I, F, Fut>(
    io: I,
    handler: F,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>>
where
    I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    F: Fn(Request<Incoming>) -> Fut + Send + 'static,
    Fut: Future<Output = Result<Response<ResponseBody>, Infallible>> + Send + 'static,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // Like the L4 path, an idle keep-alive connection is the client's to close: hyper's
    // default 30 s header timeout would also close idle keep-alive connections.
    builder
        .http1()
        .header_read_timeout(None)
        .auto_date_header(false);
    builder.http2().auto_date_header(false);
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service_fn(handler));
    tokio::pin!(conn);
    tokio::pin!(shutdown);
    tokio::select! {
        r = conn.as_mut() => r,
        () = &mut shutdown => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
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
