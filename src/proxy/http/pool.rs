//! Upstream connections kept for reuse across downstream connections (the outbound side's
//! endpoints): per endpoint one HTTP/2 connection that every HTTP/2 request multiplexes on,
//! and idle HTTP/1.1 connections parked between requests (at most [`MAX_IDLE_PER_KEY`] each,
//! for at most the idle timeout). A connection is keyed by everything that was said on it
//! before the first request: address, the identity it proved, and the peer metadata sent.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::body::{Body, Incoming};
use hyper::client::conn::{http1, http2};
use hyper::{Request, Response};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

use super::upstream::{ForwardError, Sender, handshake};

/// Idle HTTP/1.1 connections parked per key; more are closed when their request ends.
pub const MAX_IDLE_PER_KEY: usize = 16;

/// Opens a new upstream stream, ready for HTTP (TLS done, peer metadata written): what the
/// pool calls when it has no connection to give.
pub trait Open: FnOnce() -> Self::Opening {
    type Opening: Future<Output = io::Result<Self::Stream>>;
    type Stream: AsyncRead + AsyncWrite + Send + Unpin + 'static;
}

impl<F, Fut, I> Open for F
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = io::Result<I>>,
    I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    type Opening = Fut;
    type Stream = I;
}

/// What makes two upstream connections interchangeable.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    pub addr: SocketAddr,
    /// The SPIFFE identity the endpoint proved (mTLS); None for plaintext.
    pub identity: Option<String>,
    /// The Service host named in the peer metadata sent on the connection.
    pub service: Option<String>,
}

pub struct Pool<B> {
    h2: Mutex<HashMap<Key, http2::SendRequest<B>>>,
    h1: Arc<Mutex<Parked<B>>>,
    idle: Duration,
}

type Parked<B> = HashMap<Key, Vec<(Instant, http1::SendRequest<B>)>>;

impl<B> Pool<B>
where
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    /// A pool whose parked HTTP/1.1 connections are closed after `idle` unused.
    pub fn new(idle: Duration) -> Self {
        Pool {
            h2: Mutex::new(HashMap::new()),
            h1: Arc::new(Mutex::new(HashMap::new())),
            idle,
        }
    }

    /// A pooled connection for `key` that speaks HTTP/2 (`h2`) or HTTP/1.1, or a new one
    /// from `connect` (which returns the stream ready for HTTP: TLS done, peer metadata
    /// written). Nothing is sent yet, so a caller may try another endpoint when this fails.
    pub async fn get<C: Open>(
        &self,
        key: &Key,
        h2: bool,
        connect: C,
    ) -> Result<Sender<B>, ForwardError> {
        if h2 {
            let pooled = self.lock_h2().get(key).filter(|s| !s.is_closed()).cloned();
            if let Some(s) = pooled {
                return Ok(Sender::Http2(s));
            }
        } else if let Some(s) = self.checkout_h1(key) {
            return Ok(Sender::Http1(s));
        }
        self.fresh(key, h2, connect).await
    }

    /// A new connection for `key` (an HTTP/2 one replaces the shared one).
    async fn fresh<C: Open>(
        &self,
        key: &Key,
        h2: bool,
        connect: C,
    ) -> Result<Sender<B>, ForwardError> {
        let io = connect().await.map_err(ForwardError::Connect)?;
        let sender = handshake(io, h2).await?;
        if let Sender::Http2(s) = &sender {
            let mut shared = self.lock_h2();
            // Endpoints come and go: forget the connections that have closed, so the pool
            // holds no more than the endpoints in use.
            shared.retain(|_, s| !s.is_closed());
            // Two requests racing here both connect; the later one is kept.
            shared.insert(key.clone(), s.clone());
        }
        Ok(sender)
    }

    /// Sends `req` on a connection from [`Pool::get`]; an HTTP/1.1 connection goes back to
    /// the pool once its response has ended. A request the connection never started (it was
    /// closing: the peer ended an idle keep-alive just then) goes once more on a new
    /// connection from `connect`.
    pub async fn send<C: Open>(
        &self,
        key: &Key,
        mut sender: Sender<B>,
        req: Request<B>,
        connect: C,
    ) -> Result<Response<Incoming>, ForwardError> {
        let h2 = matches!(sender, Sender::Http2(_));
        let resp = match sender.try_send(req).await {
            Ok(resp) => resp,
            Err(Err(e)) => return Err(e),
            Err(Ok(req)) => {
                sender = self.fresh(key, h2, connect).await?;
                sender
                    .try_send(req)
                    .await
                    .map_err(|e| e.err().unwrap_or(ForwardError::NotSent))?
            }
        };
        if let Sender::Http1(s) = sender {
            self.park_when_ready(key.clone(), s);
        }
        Ok(resp)
    }

    fn lock_h2(&self) -> std::sync::MutexGuard<'_, HashMap<Key, http2::SendRequest<B>>> {
        self.h2
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn lock_h1(&self) -> std::sync::MutexGuard<'_, Parked<B>> {
        self.h1
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The most recently parked connection that is still open and idle.
    fn checkout_h1(&self, key: &Key) -> Option<http1::SendRequest<B>> {
        let mut parked = self.lock_h1();
        let list = parked.get_mut(key)?;
        let fresh_after = Instant::now().checked_sub(self.idle);
        list.retain(|(since, s)| s.is_ready() && fresh_after.is_none_or(|t| *since > t));
        let found = list.pop().map(|(_, s)| s);
        if list.is_empty() {
            parked.remove(key);
        }
        found
    }

    /// Parks the connection once its response has ended (the connection is ready for the
    /// next request); one that was upgraded or closed never becomes ready and is dropped.
    fn park_when_ready(&self, key: Key, mut sender: http1::SendRequest<B>) {
        let idle = self.idle;
        let parked = self.h1.clone();
        tokio::spawn(async move {
            let ready = tokio::time::timeout(idle, sender.ready()).await;
            if !ready.is_ok_and(|r| r.is_ok()) {
                return;
            }
            let mut parked = parked.lock().unwrap_or_else(|p| p.into_inner());
            // Close what idled out and forget what the peers closed (endpoints come and go).
            parked.retain(|_, list| {
                list.retain(|(since, s)| !s.is_closed() && since.elapsed() < idle);
                !list.is_empty()
            });
            let list = parked.entry(key).or_default();
            if list.len() < MAX_IDLE_PER_KEY {
                list.push((Instant::now(), sender));
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::{BodyExt, Full};
    use hyper::body::Bytes;
    use hyper_util::rt::{TokioExecutor, TokioIo};

    use super::*;

    /// A connector to an in-memory HTTP/1.1 + h2 server answering `ok`; counts connections.
    fn connector(
        count: &Arc<AtomicUsize>,
    ) -> impl FnOnce() -> std::future::Ready<io::Result<tokio::io::DuplexStream>> {
        let count = count.clone();
        move || {
            count.fetch_add(1, Ordering::SeqCst);
            let (client, server) = tokio::io::duplex(64 * 1024);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from("ok"))))
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(server), service)
                    .await;
            });
            std::future::ready(Ok(client))
        }
    }

    fn key() -> Key {
        Key {
            addr: "198.18.0.7:8080".parse().unwrap(),
            identity: Some("spiffe://cluster.local/ns/demo/sa/server".into()),
            service: Some("api.demo.svc.cluster.local".into()),
        }
    }

    async fn call(pool: &Pool<Full<Bytes>>, count: &Arc<AtomicUsize>, h2: bool) -> String {
        let sender = pool.get(&key(), h2, connector(count)).await.unwrap();
        let version = if h2 {
            hyper::Version::HTTP_2
        } else {
            hyper::Version::HTTP_11
        };
        let req = Request::get("http://api.demo/")
            .version(version)
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = pool
            .send(&key(), sender, req, connector(count))
            .await
            .unwrap();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8_lossy(&body).into_owned()
    }

    #[tokio::test]
    async fn http1_connections_are_parked_and_reused_one_request_at_a_time() {
        let pool = Pool::new(Duration::from_secs(60));
        let count = Arc::new(AtomicUsize::new(0));
        for _ in 0..5 {
            assert_eq!(call(&pool, &count, false).await, "ok");
            // The connection is parked by a task once its response has ended.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(count.load(Ordering::SeqCst), 1, "one connection, reused");
        // Two at once need two connections; both are parked afterwards.
        let (a, b) = tokio::join!(call(&pool, &count, false), call(&pool, &count, false));
        assert_eq!((a.as_str(), b.as_str()), ("ok", "ok"));
        assert_eq!(count.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn h2_requests_share_one_connection() {
        let pool = Pool::new(Duration::from_secs(60));
        let count = Arc::new(AtomicUsize::new(0));
        assert_eq!(call(&pool, &count, true).await, "ok");
        let calls = (0..8).map(|_| call(&pool, &count, true));
        for body in futures::future::join_all(calls).await {
            assert_eq!(body, "ok");
        }
        assert_eq!(
            count.load(Ordering::SeqCst),
            1,
            "every stream on one connection"
        );
    }

    #[tokio::test]
    async fn a_parked_connection_that_idled_out_is_not_reused() {
        let pool = Pool::new(Duration::from_millis(50));
        let count = Arc::new(AtomicUsize::new(0));
        assert_eq!(call(&pool, &count, false).await, "ok");
        tokio::time::sleep(Duration::from_millis(120)).await;
        assert_eq!(call(&pool, &count, false).await, "ok");
        assert_eq!(count.load(Ordering::SeqCst), 2);
    }
}
