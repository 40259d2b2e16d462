//! Upstream connections kept for reuse across downstream connections (the outbound side's
//! endpoints): per endpoint one HTTP/2 connection that every HTTP/2 request multiplexes on,
//! and HTTP/1.1 connections parked between requests (the idle ones at most
//! [`MAX_IDLE_PER_KEY`] each after the reaper's sweep): parked as soon as their response head
//! is back, without a task per request, and taken again only once hyper reports them ready
//! (their last response ended).
//! It applies a DestinationRule's `connectionPool.http.maxRequestsPerConnection` (a
//! connection is retired after that many requests) and `idleTimeout` (an idle connection is
//! closed by the pool's reaper). A connection is keyed by everything that was said on it
//! before the first request (address, the identity it proved, the peer metadata sent) and by
//! those two settings.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use hyper::body::{Body, Incoming};
use hyper::client::conn::{http1, http2};
use hyper::{Request, Response};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

use super::upstream::{ForwardError, Sender, handshake};
use crate::route::policy::ConnectionPool;

/// Idle HTTP/1.1 connections kept per key: the reaper's sweep closes the longest idle beyond
/// it. Busy ones (parked with their response still streaming) do not count, so as many
/// requests as are in flight at once each find their connection again.
pub const MAX_IDLE_PER_KEY: usize = 16;

/// The reaper's longest sleep: an idle connection outlives its timeout by at most this (or a
/// quarter of the shortest timeout in use, whichever is less).
const REAP_EVERY: Duration = Duration::from_secs(1);

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
    /// The destination's per-connection settings (DestinationRule `connectionPool.http`).
    pub limits: Limits,
}

/// A destination's per-connection settings, as Istio's `connectionPool.http` gives them to
/// Envoy's cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Limits {
    /// `maxRequestsPerConnection`: a connection is retired (no new request; closed once its
    /// requests end) after carrying this many; 1 is no keep-alive. None: unlimited.
    pub max_requests: Option<u32>,
    /// `idleTimeout`: a connection with no request in flight for this long is closed. None:
    /// the pool's default (the proxy's idle timeout, 1 h as Istio's); zero: never (Envoy's 0).
    pub idle: Option<Duration>,
}

impl Limits {
    /// The per-connection part of a DestinationRule's `connectionPool`.
    pub fn of(pool: &ConnectionPool) -> Limits {
        Limits {
            max_requests: pool.max_requests_per_connection.filter(|n| *n > 0),
            idle: pool.idle_timeout_ms.map(Duration::from_millis),
        }
    }

    /// The idle timeout in force: the destination's, else `default`; zero means never.
    fn idle_or(&self, default: Duration) -> Duration {
        match self.idle {
            Some(d) if d.is_zero() => Duration::MAX,
            Some(d) => d,
            None => default,
        }
    }

    /// Whether a connection that has carried `served` requests takes no more.
    fn spent(&self, served: u32) -> bool {
        self.max_requests.is_some_and(|n| served >= n)
    }
}

/// A connection from [`Pool::get`], to be given back to [`Pool::send`]: the sender and how
/// many requests the connection has carried, this one included.
pub struct Pooled<B> {
    sender: Sender<B>,
    served: u32,
    /// An HTTP/2 connection's use, held while this request waits for its answer's head.
    _busy: Option<Busy>,
}

/// How an HTTP/2 connection is used: requests waiting for their answer's head, and when the
/// last one got it (ns since the pool's epoch). The reaper reads both.
#[derive(Default)]
struct Usage {
    active: AtomicUsize,
    last_ns: AtomicU64,
}

/// One request's hold on an HTTP/2 connection's [`Usage`]; dropping it stamps the time.
struct Busy {
    usage: Arc<Usage>,
    epoch: Instant,
}

impl Busy {
    fn new(usage: &Arc<Usage>, epoch: Instant) -> Busy {
        usage.active.fetch_add(1, Ordering::Relaxed);
        Busy {
            usage: usage.clone(),
            epoch,
        }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let ns = u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.usage.last_ns.store(ns, Ordering::Relaxed);
        self.usage.active.fetch_sub(1, Ordering::Release);
    }
}

impl<B> Parked<B> {
    /// Whether the connection stays parked at `now`: open, and busy (a response still
    /// streaming: its idle time starts over) or idle for less than `idle`.
    fn keep(&mut self, now: Instant, idle: Duration) -> bool {
        if self.sender.is_closed() {
            return false;
        }
        if !self.sender.is_ready() {
            self.since = now;
        }
        now.saturating_duration_since(self.since) < idle
    }
}

/// The HTTP/2 connection every HTTP/2 request to one key multiplexes on.
struct Shared<B> {
    sender: http2::SendRequest<B>,
    served: u32,
    usage: Arc<Usage>,
}

/// A parked HTTP/1.1 connection: since when it is idle (a busy one's is pushed forward
/// whenever the pool sees it busy), and the requests it has carried.
struct Parked<B> {
    since: Instant,
    served: u32,
    sender: http1::SendRequest<B>,
}

/// The pool's tables, looked up on every request: foldhash, not SipHash (keys come from the
/// config, never from a peer, so flooding resistance buys nothing here).
type Map<V> = HashMap<Key, V, foldhash::fast::RandomState>;

struct Inner<B> {
    h2: Mutex<Map<Shared<B>>>,
    h1: Mutex<Map<Vec<Parked<B>>>>,
    /// The idle timeout of a key whose DestinationRule sets none.
    idle: Duration,
    epoch: Instant,
    reaping: AtomicBool,
}

pub struct Pool<B> {
    inner: Arc<Inner<B>>,
}

impl<B> Inner<B> {
    fn lock_h2(&self) -> std::sync::MutexGuard<'_, Map<Shared<B>>> {
        self.h2
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn lock_h1(&self) -> std::sync::MutexGuard<'_, Map<Vec<Parked<B>>>> {
        self.h1
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Closes (drops) every connection idle past its key's timeout and forgets the closed
    /// ones; returns the shortest idle timeout in use, for the next sweep.
    fn reap(&self) -> Duration {
        let mut shortest = self.idle;
        let now_ns = u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.lock_h2().retain(|key, c| {
            let idle = key.limits.idle_or(self.idle);
            shortest = shortest.min(idle);
            // A request that just took this connection holds `active`: never reaped under it.
            let idle_for = Duration::from_nanos(
                now_ns.saturating_sub(c.usage.last_ns.load(Ordering::Relaxed)),
            );
            let in_use = c.usage.active.load(Ordering::Acquire) > 0;
            !c.sender.is_closed() && (in_use || idle_for < idle)
        });
        let now = Instant::now();
        self.lock_h1().retain(|key, list| {
            let idle = key.limits.idle_or(self.idle);
            shortest = shortest.min(idle);
            list.retain_mut(|c| c.keep(now, idle));
            // Oldest first: the longest idle beyond the cap are closed.
            let mut excess = list
                .iter()
                .filter(|c| c.sender.is_ready())
                .count()
                .saturating_sub(MAX_IDLE_PER_KEY);
            list.retain(|c| {
                let close = excess > 0 && c.sender.is_ready();
                excess -= usize::from(close);
                !close
            });
            !list.is_empty()
        });
        shortest
    }
}

impl<B> Pool<B>
where
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    /// A pool whose connections are closed after `idle` unused, unless their destination's
    /// `idleTimeout` says otherwise.
    pub fn new(idle: Duration) -> Self {
        Pool {
            inner: Arc::new(Inner {
                h2: Mutex::new(Map::default()),
                h1: Mutex::new(Map::default()),
                idle,
                epoch: Instant::now(),
                reaping: AtomicBool::new(false),
            }),
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
    ) -> Result<Pooled<B>, ForwardError> {
        if h2 {
            if let Some(pooled) = self.checkout_h2(key) {
                return Ok(pooled);
            }
        } else if let Some(c) = self.checkout_h1(key) {
            return Ok(Pooled {
                sender: Sender::Http1(c.sender),
                served: c.served + 1,
                _busy: None,
            });
        }
        self.fresh(key, h2, connect).await
    }

    /// The shared HTTP/2 connection, counted; the request that spends its
    /// `maxRequestsPerConnection` takes it out of the pool (it closes when its streams end).
    fn checkout_h2(&self, key: &Key) -> Option<Pooled<B>> {
        let mut shared = self.inner.lock_h2();
        let c = shared.get_mut(key).filter(|c| !c.sender.is_closed())?;
        c.served += 1;
        let pooled = Pooled {
            sender: Sender::Http2(c.sender.clone()),
            served: c.served,
            _busy: Some(Busy::new(&c.usage, self.inner.epoch)),
        };
        if key.limits.spent(c.served) {
            shared.remove(key);
        }
        Some(pooled)
    }

    /// A new connection for `key` (an HTTP/2 one replaces the shared one, unless it may carry
    /// only this request).
    async fn fresh<C: Open>(
        &self,
        key: &Key,
        h2: bool,
        connect: C,
    ) -> Result<Pooled<B>, ForwardError> {
        let io = connect().await.map_err(ForwardError::Connect)?;
        let sender = handshake(io, h2).await?;
        self.reap_in_background();
        let mut busy = None;
        if let Sender::Http2(s) = &sender {
            let usage = Arc::new(Usage::default());
            busy = Some(Busy::new(&usage, self.inner.epoch));
            if !key.limits.spent(1) {
                let mut shared = self.inner.lock_h2();
                // Endpoints come and go: forget the connections that have closed, so the
                // pool holds no more than the endpoints in use.
                shared.retain(|_, c| !c.sender.is_closed());
                // Two requests racing here both connect; the later one is kept.
                let c = Shared {
                    sender: s.clone(),
                    served: 1,
                    usage,
                };
                shared.insert(key.clone(), c);
            }
        }
        Ok(Pooled {
            sender,
            served: 1,
            _busy: busy,
        })
    }

    /// Sends `req` on a connection from [`Pool::get`]; an HTTP/1.1 connection goes back to
    /// the pool once its response has ended, unless it has carried its
    /// `maxRequestsPerConnection` (then it is closed). A request the connection never started
    /// (it was closing: the peer ended an idle keep-alive just then) goes once more on a new
    /// connection from `connect`.
    pub async fn send<C: Open>(
        &self,
        key: &Key,
        pooled: Pooled<B>,
        req: Request<B>,
        connect: C,
    ) -> Result<Response<Incoming>, ForwardError> {
        let mut pooled = pooled;
        let h2 = matches!(pooled.sender, Sender::Http2(_));
        let resp = match pooled.sender.try_send(req).await {
            Ok(resp) => resp,
            Err(Err(e)) => return Err(e),
            Err(Ok(req)) => {
                pooled = self.fresh(key, h2, connect).await?;
                pooled
                    .sender
                    .try_send(req)
                    .await
                    .map_err(|e| e.err().unwrap_or(ForwardError::NotSent))?
            }
        };
        if let Sender::Http1(s) = pooled.sender {
            self.park(key, s, pooled.served);
        }
        Ok(resp)
    }

    /// Forgets every connection whose key `live` rejects (a config change made its
    /// destination, endpoint or `connectionPool` settings go away): parked HTTP/1.1 ones are
    /// closed now, a shared HTTP/2 one takes no new request and closes once the requests on it
    /// end. Without this they lingered until their idle timeout (1 h by default).
    pub fn retire(&self, live: impl Fn(&Key) -> bool) -> usize {
        let mut retired = 0;
        self.inner.lock_h2().retain(|key, _| {
            let keep = live(key);
            retired += usize::from(!keep);
            keep
        });
        self.inner.lock_h1().retain(|key, list| {
            let keep = live(key);
            if !keep {
                retired += list.len();
            }
            keep
        });
        retired
    }

    /// The most recently parked connection that is ready for a request (open, its last
    /// response ended, idle for less than its timeout); busy ones stay parked.
    fn checkout_h1(&self, key: &Key) -> Option<Parked<B>> {
        let mut parked = self.inner.lock_h1();
        let list = parked.get_mut(key)?;
        let idle = key.limits.idle_or(self.inner.idle);
        let now = Instant::now();
        list.retain_mut(|c| c.keep(now, idle));
        // An empty list stays (the reaper removes it): the next park needs no key clone.
        let at = list.iter().rposition(|c| c.sender.is_ready())?;
        Some(list.remove(at))
    }

    /// Parks the connection whose response head just came back: busy until that response
    /// ends (hyper's `is_ready`), which [`Pool::checkout_h1`] waits for. One that has carried
    /// its `maxRequestsPerConnection` is dropped instead: dropping the last sender of an
    /// HTTP/1.1 connection closes it once its response has ended (an upgraded one leaves
    /// HTTP, is never ready again and goes at the next look). The list holds at most the
    /// requests in flight at once plus the idle ones the sweep keeps ([`MAX_IDLE_PER_KEY`]).
    fn park(&self, key: &Key, sender: http1::SendRequest<B>, served: u32) {
        if key.limits.spent(served) {
            return;
        }
        let conn = Parked {
            since: Instant::now(),
            served,
            sender,
        };
        let mut parked = self.inner.lock_h1();
        match parked.get_mut(key) {
            Some(list) => list.push(conn),
            None => {
                parked.insert(key.clone(), vec![conn]);
            }
        }
        drop(parked);
        self.reap_in_background();
    }

    /// Starts the pool's reaper once (from inside the runtime): a task that closes idle
    /// connections at their timeout and ends with the pool.
    fn reap_in_background(&self) {
        if self.inner.reaping.swap(true, Ordering::Relaxed) {
            return;
        }
        let weak: Weak<Inner<B>> = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let mut every = REAP_EVERY;
            loop {
                tokio::time::sleep(every).await;
                let Some(inner) = weak.upgrade() else {
                    return;
                };
                let shortest = inner.reap();
                every = (shortest / 4).clamp(Duration::from_millis(5), REAP_EVERY);
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

    /// Connections the in-memory server accepted, and those that ended (either side closed).
    #[derive(Default)]
    struct Counts {
        opened: AtomicUsize,
        closed: AtomicUsize,
    }

    impl Counts {
        fn opened(&self) -> usize {
            self.opened.load(Ordering::SeqCst)
        }
        fn closed(&self) -> usize {
            self.closed.load(Ordering::SeqCst)
        }
    }

    /// A connector to an in-memory HTTP/1.1 + h2 server answering `ok`; counts connections
    /// opened and ended.
    fn connector(
        counts: &Arc<Counts>,
    ) -> impl FnOnce() -> std::future::Ready<io::Result<tokio::io::DuplexStream>> {
        answering(counts, Bytes::from("ok"))
    }

    /// The same server answering `body`.
    fn answering(
        counts: &Arc<Counts>,
        body: Bytes,
    ) -> impl FnOnce() -> std::future::Ready<io::Result<tokio::io::DuplexStream>> {
        let counts = counts.clone();
        move || {
            counts.opened.fetch_add(1, Ordering::SeqCst);
            let (client, server) = tokio::io::duplex(64 * 1024);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |_req| {
                    let body = body.clone();
                    async move { Ok::<_, std::convert::Infallible>(Response::new(Full::new(body))) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(server), service)
                    .await;
                counts.closed.fetch_add(1, Ordering::SeqCst);
            });
            std::future::ready(Ok(client))
        }
    }

    fn key() -> Key {
        limited(Limits::default())
    }

    fn limited(limits: Limits) -> Key {
        Key {
            addr: "198.18.0.7:8080".parse().unwrap(),
            identity: Some("spiffe://cluster.local/ns/demo/sa/server".into()),
            service: Some("api.demo.svc.cluster.local".into()),
            limits,
        }
    }

    async fn call(pool: &Pool<Full<Bytes>>, counts: &Arc<Counts>, h2: bool) -> String {
        call_as(pool, &key(), counts, h2).await
    }

    async fn call_as(
        pool: &Pool<Full<Bytes>>,
        key: &Key,
        counts: &Arc<Counts>,
        h2: bool,
    ) -> String {
        let sender = pool.get(key, h2, connector(counts)).await.unwrap();
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
            .send(key, sender, req, connector(counts))
            .await
            .unwrap();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8_lossy(&body).into_owned()
    }

    /// Waits (up to 2 s) until `n` connections have ended; returns how many had.
    async fn closed_at_least(counts: &Counts, n: usize) -> usize {
        for _ in 0..200 {
            if counts.closed() >= n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        counts.closed()
    }

    #[tokio::test]
    async fn http1_connections_are_parked_and_reused_one_request_at_a_time() {
        let pool = Pool::new(Duration::from_secs(60));
        let counts = Arc::new(Counts::default());
        for _ in 0..5 {
            assert_eq!(call(&pool, &counts, false).await, "ok");
            // The connection task marks it ready once it has read the response's end.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(counts.opened(), 1, "one connection, reused");
        // Two at once need two connections; both are parked afterwards.
        let (a, b) = tokio::join!(call(&pool, &counts, false), call(&pool, &counts, false));
        assert_eq!((a.as_str(), b.as_str()), ("ok", "ok"));
        assert_eq!(counts.opened(), 2);
        assert_eq!(counts.closed(), 0, "parked connections stay open");
    }

    /// A connection is parked with its response head, while the body still streams: no
    /// other request is sent on it until that body has ended, then it is reused.
    #[tokio::test]
    async fn a_connection_whose_response_still_streams_is_not_taken_until_it_ends() {
        let pool = Pool::new(Duration::from_secs(60));
        let counts = Arc::new(Counts::default());
        // Larger than the in-memory pipe and hyper's buffers: the connection stays busy
        // until the body is read.
        let large = Bytes::from(vec![b'x'; 1024 * 1024]);
        let key = key();
        let sender = pool
            .get(&key, false, answering(&counts, large.clone()))
            .await
            .unwrap();
        let req = Request::get("http://api.demo/")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let streaming = pool
            .send(&key, sender, req, answering(&counts, large))
            .await
            .unwrap();
        assert_eq!(
            pool.inner.lock_h1().get(&key).map(Vec::len),
            Some(1),
            "parked at its head"
        );
        // Meanwhile another request takes a new connection.
        assert_eq!(call(&pool, &counts, false).await, "ok");
        assert_eq!(counts.opened(), 2);
        let body = streaming.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body.len(), 1024 * 1024);
        tokio::time::sleep(Duration::from_millis(20)).await;
        // Both are ready now: the next two requests, one after the other, open none.
        for _ in 0..2 {
            assert_eq!(call(&pool, &counts, false).await, "ok");
        }
        assert_eq!(counts.opened(), 2, "no new connection");
        assert_eq!(counts.closed(), 0);
    }

    /// More requests in flight at once than the idle cap: every connection is parked (none
    /// closed, none opened again for the next requests); the sweep then closes the idle ones
    /// beyond the cap.
    #[tokio::test]
    async fn connections_beyond_the_idle_cap_are_kept_while_busy_and_swept_when_idle() {
        let pool = Pool::new(Duration::from_secs(60));
        let counts = Arc::new(Counts::default());
        let n = MAX_IDLE_PER_KEY + 4;
        let calls = (0..n).map(|_| call(&pool, &counts, false));
        for body in futures::future::join_all(calls).await {
            assert_eq!(body, "ok");
        }
        assert_eq!(counts.opened(), n);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(pool.inner.lock_h1().get(&key()).map(Vec::len), Some(n));
        let calls = (0..n).map(|_| call(&pool, &counts, false));
        futures::future::join_all(calls).await;
        assert_eq!(
            counts.opened(),
            n,
            "every request found a parked connection"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        pool.inner.reap();
        let parked = pool.inner.lock_h1().get(&key()).map(Vec::len);
        assert_eq!(parked, Some(MAX_IDLE_PER_KEY));
        assert_eq!(closed_at_least(&counts, 4).await, 4);
    }

    #[tokio::test]
    async fn h2_requests_share_one_connection() {
        let pool = Pool::new(Duration::from_secs(60));
        let counts = Arc::new(Counts::default());
        assert_eq!(call(&pool, &counts, true).await, "ok");
        let calls = (0..8).map(|_| call(&pool, &counts, true));
        for body in futures::future::join_all(calls).await {
            assert_eq!(body, "ok");
        }
        assert_eq!(counts.opened(), 1, "every stream on one connection");
    }

    #[tokio::test]
    async fn a_parked_connection_that_idled_out_is_not_reused() {
        let pool = Pool::new(Duration::from_millis(50));
        let counts = Arc::new(Counts::default());
        assert_eq!(call(&pool, &counts, false).await, "ok");
        tokio::time::sleep(Duration::from_millis(120)).await;
        assert_eq!(call(&pool, &counts, false).await, "ok");
        assert_eq!(counts.opened(), 2);
    }

    #[tokio::test]
    async fn max_requests_per_connection_retires_an_http1_connection_after_n_requests() {
        let pool = Pool::new(Duration::from_secs(60));
        // maxRequestsPerConnection 2: 5 requests one after another take 3 connections, and
        // each spent one is closed, not parked.
        let two = limited(Limits {
            max_requests: Some(2),
            idle: None,
        });
        let counts = Arc::new(Counts::default());
        for _ in 0..5 {
            assert_eq!(call_as(&pool, &two, &counts, false).await, "ok");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(counts.opened(), 3);
        assert_eq!(closed_at_least(&counts, 2).await, 2, "the two spent ones");
        // 1: no keep-alive, a connection per request, each closed after its answer.
        let one = limited(Limits {
            max_requests: Some(1),
            idle: None,
        });
        let counts = Arc::new(Counts::default());
        for _ in 0..4 {
            assert_eq!(call_as(&pool, &one, &counts, false).await, "ok");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(counts.opened(), 4);
        assert_eq!(closed_at_least(&counts, 4).await, 4);
    }

    #[tokio::test]
    async fn max_requests_per_connection_retires_the_shared_h2_connection() {
        let pool = Pool::new(Duration::from_secs(60));
        let three = limited(Limits {
            max_requests: Some(3),
            idle: None,
        });
        let counts = Arc::new(Counts::default());
        for _ in 0..7 {
            assert_eq!(call_as(&pool, &three, &counts, true).await, "ok");
        }
        // Streams 1-3, 4-6, 7: three connections; the two retired ones close once their
        // streams have ended (no sender holds them any more).
        assert_eq!(counts.opened(), 3);
        assert_eq!(closed_at_least(&counts, 2).await, 2);
        let unlimited = Arc::new(Counts::default());
        for _ in 0..7 {
            assert_eq!(call(&pool, &unlimited, true).await, "ok");
        }
        assert_eq!(unlimited.opened(), 1, "0/unset: unlimited");
    }

    /// A key the config no longer names is retired at once: its idle HTTP/1.1 connection and
    /// its shared HTTP/2 one close (they lingered for the pool's 1 h idle timeout); a live
    /// key's connection stays and is reused.
    #[tokio::test]
    async fn retired_keys_close_their_idle_connections_at_once() {
        let pool: Pool<Full<Bytes>> = Pool::new(Duration::from_secs(3600));
        let counts = Arc::new(Counts::default());
        let old = limited(Limits {
            max_requests: Some(100),
            idle: None,
        });
        for h2 in [false, true] {
            for key in [&old, &key()] {
                assert_eq!(call_as(&pool, key, &counts, h2).await, "ok");
                // An HTTP/1.1 connection is parked by a task once its response has ended.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        assert_eq!(counts.opened(), 4);
        assert_eq!(pool.retire(|k| *k != old), 2);
        assert_eq!(closed_at_least(&counts, 2).await, 2);
        for h2 in [false, true] {
            assert_eq!(call_as(&pool, &key(), &counts, h2).await, "ok");
        }
        assert_eq!(counts.opened(), 4, "the live key's connections are reused");
        assert_eq!(counts.closed(), 2);
    }

    #[tokio::test]
    async fn a_destinations_idle_timeout_closes_its_idle_connections() {
        // The pool's default is long; the destination's idleTimeout 60 ms closes its idle
        // connections (HTTP/1.1 parked, HTTP/2 shared) without any further request.
        let pool = Pool::new(Duration::from_secs(60));
        let short = limited(Limits {
            max_requests: None,
            idle: Some(Duration::from_millis(60)),
        });
        let counts = Arc::new(Counts::default());
        assert_eq!(call_as(&pool, &short, &counts, false).await, "ok");
        assert_eq!(call_as(&pool, &short, &counts, true).await, "ok");
        let long = Arc::new(Counts::default());
        assert_eq!(call(&pool, &long, false).await, "ok");
        assert_eq!(call(&pool, &long, true).await, "ok");
        assert_eq!(closed_at_least(&counts, 2).await, 2, "both idled out");
        assert_eq!(long.closed(), 0, "the default 60 s has not passed");
        // Within the timeout a connection is reused (the timeout counts from the last use).
        let counts = Arc::new(Counts::default());
        for _ in 0..4 {
            assert_eq!(call_as(&pool, &short, &counts, true).await, "ok");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(counts.opened(), 1);
        // Limits read from a DestinationRule's compiled connectionPool.
        let rule = ConnectionPool {
            max_requests_per_connection: Some(1),
            idle_timeout_ms: Some(0),
            ..Default::default()
        };
        let limits = Limits::of(&rule);
        assert_eq!(limits.max_requests, Some(1));
        assert_eq!(limits.idle_or(Duration::from_secs(3600)), Duration::MAX);
        assert_eq!(Limits::of(&ConnectionPool::default()), Limits::default());
    }
}
