//! Forwarding a request to one upstream over a hyper client connection, per downstream
//! connection: opened lazily at the first request (a connection whose every request is
//! denied never reaches the app), HTTP/1.1 for an HTTP/1 downstream (reopened when the app
//! closes it, as `Connection: close` apps do), HTTP/2 with prior knowledge for an HTTP/2
//! downstream (its streams multiplexed on the one connection). Hop-by-hop headers are
//! dropped both ways; bodies and trailers stream through untouched. An HTTP/1
//! `Upgrade: websocket` is tunnelled: once both sides switched protocols the two upgraded
//! streams are copied byte for byte. CONNECT never reaches here (`server` answers it 403).

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hyper::body::{Body, Incoming};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::http::uri::{Authority, PathAndQuery, Scheme, Uri};
use hyper::{Method, Request, Response, StatusCode, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

use crate::proxy::copy::relay;
use crate::proxy::net::connect;

/// Opens a byte stream to the upstream (the inbound side's app).
pub trait Connect: Send + Sync + 'static {
    type Io: AsyncRead + AsyncWrite + Send + Unpin + 'static;
    fn connect(&self) -> impl Future<Output = io::Result<Self::Io>> + Send;
}

/// The inbound upstream: the app at `POD_IP:port`, dialled from `source` (127.0.0.6, which
/// the capture rules let through).
#[derive(Debug, Clone)]
pub struct TcpConnector {
    pub addr: SocketAddr,
    pub source: Option<IpAddr>,
    pub timeout: Duration,
}

impl Connect for TcpConnector {
    type Io = TcpStream;
    fn connect(&self) -> impl Future<Output = io::Result<TcpStream>> + Send {
        connect(self.addr, self.source, self.timeout)
    }
}

/// Why a request got no upstream response; each maps to a status and Envoy's response flag.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("upstream connect failed: {0}")]
    Connect(io::Error),
    #[error("upstream handshake failed: {0}")]
    Handshake(hyper::Error),
    #[error("upstream connection failed: {0}")]
    Upstream(hyper::Error),
    #[error("the upstream connection closed before the request could be sent, twice")]
    NotSent,
}

impl ForwardError {
    /// Envoy's `UF` (upstream connection failure) and `UC` (upstream connection termination).
    pub fn response_flag(&self) -> &'static str {
        match self {
            ForwardError::Connect(_) | ForwardError::Handshake(_) => "UF",
            ForwardError::Upstream(_) | ForwardError::NotSent => "UC",
        }
    }
}

/// One upstream client connection's request handle.
pub enum Sender<B> {
    Http1(hyper::client::conn::http1::SendRequest<B>),
    Http2(hyper::client::conn::http2::SendRequest<B>),
}

/// Opens an HTTP client connection over `io`: HTTP/2 with prior knowledge when `h2`, else
/// HTTP/1.1 with upgrades. Its connection task runs until the upstream closes it.
pub async fn handshake<I, B>(io: I, h2: bool) -> Result<Sender<B>, ForwardError>
where
    I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let io: super::BoxIo = Box::new(io);
    if h2 {
        let io = TokioIo::new(super::coalesce::Coalesce::new(io));
        let (sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .map_err(ForwardError::Handshake)?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream h2 connection ended");
            }
        });
        Ok(Sender::Http2(sender))
    } else {
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(ForwardError::Handshake)?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "upstream h1 connection ended");
            }
        });
        Ok(Sender::Http1(sender))
    }
}

impl<B> Sender<B>
where
    B: Body + Send + 'static,
{
    /// Sends `req`; a request the connection never started (it was closing: the peer ended
    /// its keep-alive just as the request came) is handed back as `Err(Ok(req))`, to be sent
    /// again on a new connection; any other failure is `Err(Err(_))`.
    pub async fn try_send(
        &mut self,
        req: Request<B>,
    ) -> Result<Response<Incoming>, Result<Request<B>, ForwardError>> {
        let sent = match self {
            Sender::Http1(s) => s.try_send_request(req).await,
            Sender::Http2(s) => s.try_send_request(req).await,
        };
        sent.map_err(|mut e| match e.take_message() {
            Some(req) => Ok(req),
            None => Err(ForwardError::Upstream(e.into_error())),
        })
    }
}

/// Where [`forward`] sends a prepared request: one upstream connection per downstream
/// connection (inbound: the app), or an endpoint chosen per request (outbound).
pub trait SendRequest<B>: Send + Sync {
    fn send(
        &self,
        req: Request<B>,
    ) -> impl Future<Output = Result<Response<Incoming>, ForwardError>> + Send;
}

/// The upstream side of one downstream connection: one connection to one address.
pub struct Upstream<C: Connect, B> {
    connector: C,
    sender: Mutex<Option<Sender<B>>>,
}

impl<C, B> Upstream<C, B>
where
    C: Connect,
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    pub fn new(connector: C) -> Self {
        Upstream {
            connector,
            sender: Mutex::new(None),
        }
    }
}

impl<C, B> SendRequest<B> for Upstream<C, B>
where
    C: Connect,
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    /// Sends a request prepared by [`prepare_request`] and returns the upstream's response.
    /// A request the connection never started (the app closed it just then) is sent once
    /// more on a new connection.
    async fn send(&self, req: Request<B>) -> Result<Response<Incoming>, ForwardError> {
        let h2 = req.version() == Version::HTTP_2;
        let mut slot = self.sender.lock().await;
        let alive = match slot.as_mut() {
            Some(Sender::Http2(s)) => s.ready().await.is_ok(),
            // The app closed it (or it was upgraded): the next request opens another.
            Some(Sender::Http1(s)) => s.ready().await.is_ok(),
            None => false,
        };
        if !alive {
            *slot = Some(self.open(h2).await?);
        }
        // An HTTP/1.1 request keeps the connection (`held`) until its response head; HTTP/2
        // streams are independent, so the next request need not wait for this one.
        let (sent, held) = match slot.as_mut() {
            Some(Sender::Http2(s)) => {
                let mut s = Sender::Http2(s.clone());
                drop(slot);
                (s.try_send(req).await, None)
            }
            Some(s) => (s.try_send(req).await, Some(slot)),
            None => unreachable!("opened above"),
        };
        match sent {
            Ok(resp) => Ok(resp),
            Err(Err(e)) => Err(e),
            Err(Ok(req)) => {
                let mut fresh = self.open(h2).await?;
                let sent = fresh.try_send(req).await;
                match held {
                    Some(mut slot) => *slot = Some(fresh),
                    None => *self.sender.lock().await = Some(fresh),
                }
                sent.map_err(|e| e.err().unwrap_or(ForwardError::NotSent))
            }
        }
    }
}

impl<C: Connect, B> Upstream<C, B>
where
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    async fn open(&self, h2: bool) -> Result<Sender<B>, ForwardError> {
        let io = self
            .connector
            .connect()
            .await
            .map_err(ForwardError::Connect)?;
        handshake(io, h2).await
    }
}

/// Headers that belong to one connection, never forwarded (RFC 9110 §7.6.1), besides those
/// the `Connection` header names.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "proxy-connection",
    "keep-alive",
    "transfer-encoding",
    "te",
    "upgrade",
    "proxy-authenticate",
    "proxy-authorization",
];

/// Whether a request asks to leave HTTP: an HTTP/1 `Upgrade: websocket`. (A CONNECT is
/// refused before routing, `server::refuse_connect`.)
pub fn wants_tunnel<B>(req: &Request<B>) -> bool {
    wants_tunnel_head(req.method(), req.version(), req.headers())
}

/// [`wants_tunnel`] of a request's head. Only `Upgrade: websocket` is tunnelled (Istio's
/// default `upgrade_configs`): after a tunnel no request is routed or authorized, so an
/// `h2c` upgrade (or any other) would let a caller past a path policy on the requests it
/// sends next. Any other `Upgrade` is dropped with the hop-by-hop headers and the request
/// forwarded as plain HTTP/1.1, as Envoy does for h2c.
pub fn wants_tunnel_head(method: &Method, version: Version, headers: &HeaderMap) -> bool {
    method != Method::CONNECT
        && version != Version::HTTP_2
        && connection_has(headers, "upgrade")
        && headers
            .get_all(header::UPGRADE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|p| p.trim().eq_ignore_ascii_case("websocket"))
}

fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Drops hop-by-hop headers; keeps `te: trailers` (gRPC needs it) and, for a tunnel, the
/// `Upgrade` header with `Connection: upgrade`.
fn strip_hop_by_hop(headers: &mut HeaderMap, tunnel: bool) {
    // Most heads carry none of them (a keep-alive HTTP/1.1 or an HTTP/2 request): one pass
    // over the names instead of a lookup per hop-by-hop name.
    if !headers
        .keys()
        .any(|name| HOP_BY_HOP.contains(&name.as_str()))
    {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    let trailers = headers
        .get_all(header::TE)
        .iter()
        .any(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    let upgrade = headers.get(header::UPGRADE).cloned();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    if trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    if tunnel && let Some(upgrade) = upgrade {
        headers.insert(header::UPGRADE, upgrade);
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// Makes the Host header say what the request was routed by: the URI's authority (HTTP/2's
/// `:authority`, an HTTP/1.1 absolute-form target) wins over a Host header that differs, as
/// RFC 9112 says, so the upstream never sees another host than the gateway matched.
pub fn align_host(parts: &mut hyper::http::request::Parts) {
    if let Some(authority) = parts.uri.authority()
        && let Ok(v) = hyper::header::HeaderValue::from_str(authority.as_str())
    {
        parts.headers.insert(header::HOST, v);
    }
}

/// Makes an HTTP/2 request an HTTP/1.1 one (a gateway's client spoke h2, the Service behind
/// it speaks HTTP/1.1, as an Envoy gateway's upstream cluster does unless told otherwise): the
/// `:authority` becomes the Host header, and HTTP/2's separate `cookie` fields one `Cookie`
/// header (RFC 9113 8.2.3).
pub fn downgrade_to_http1(parts: &mut hyper::http::request::Parts) {
    if parts.version != Version::HTTP_2 {
        return;
    }
    align_host(parts);
    let cookies: Vec<&[u8]> = parts
        .headers
        .get_all(header::COOKIE)
        .iter()
        .map(|v| v.as_bytes())
        .collect();
    if cookies.len() > 1 {
        let joined = cookies.join(&b"; "[..]);
        if let Ok(v) = hyper::header::HeaderValue::from_bytes(&joined) {
            parts.headers.insert(header::COOKIE, v);
        }
    }
    parts.version = Version::HTTP_11;
}

/// Shapes a downstream request for the upstream connection its version will use: origin-form
/// URI for HTTP/1 (the Host header travels as sent), `http://<authority><path>` for HTTP/2
/// (its `:scheme` and `:authority`; the app behind the sidecar speaks plaintext), hop-by-hop
/// headers dropped.
pub fn prepare_request<B>(req: &mut Request<B>, fallback_authority: &str) {
    let tunnel = wants_tunnel(req);
    prepare(req, tunnel, fallback_authority);
}

/// [`prepare_request`] once whether the request is a tunnel is known.
fn prepare<B>(req: &mut Request<B>, tunnel: bool, fallback_authority: &str) {
    strip_hop_by_hop(req.headers_mut(), tunnel);
    let path = req
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    let uri = if req.version() == Version::HTTP_2 {
        let authority = req
            .uri()
            .authority()
            .cloned()
            .or_else(|| {
                req.headers()
                    .get(header::HOST)
                    .and_then(|h| Authority::try_from(h.as_bytes()).ok())
            })
            .or_else(|| Authority::try_from(fallback_authority).ok());
        let mut parts = hyper::http::uri::Parts::default();
        parts.scheme = Some(Scheme::HTTP);
        parts.authority = authority;
        parts.path_and_query = Some(path);
        Uri::from_parts(parts).ok()
    } else {
        Uri::from_parts({
            let mut parts = hyper::http::uri::Parts::default();
            parts.path_and_query = Some(path);
            parts
        })
        .ok()
    };
    if let Some(uri) = uri {
        *req.uri_mut() = uri;
    }
}

/// Forwards one request through `upstream`, tunnelling it when both sides switch protocols;
/// returns the upstream's response with hop-by-hop headers dropped.
/// A tunnel is closed when no byte moved through it for `idle`.
pub async fn forward<U, B>(
    upstream: &U,
    mut req: Request<B>,
    fallback_authority: &str,
    idle: Duration,
) -> Result<Response<Incoming>, ForwardError>
where
    U: SendRequest<B>,
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let tunnel = wants_tunnel(&req);
    let downstream_upgrade = tunnel.then(|| hyper::upgrade::on(&mut req));
    prepare(&mut req, tunnel, fallback_authority);
    let mut resp = upstream.send(req).await?;
    let switched = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
    if let (Some(downstream), true) = (downstream_upgrade, switched) {
        let upstream_upgrade = hyper::upgrade::on(&mut resp);
        tokio::spawn(async move {
            match tokio::try_join!(downstream, upstream_upgrade) {
                Ok((down, up)) => {
                    // The L4 relay: half-closes each way, idle timeout.
                    let (_, result) = relay(TokioIo::new(down), TokioIo::new(up), idle).await;
                    if let Err(e) = result {
                        tracing::debug!(error = %e, "tunnel ended with an error");
                    }
                }
                Err(e) => tracing::debug!(error = %e, "upgrade failed"),
            }
        });
    }
    strip_hop_by_hop(resp.headers_mut(), switched);
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An app that answers one keep-alive request per connection and then closes it, as an
    /// app whose idle timeout fires just as the next request comes; counts its connections.
    struct ClosesAfterOne(std::sync::Arc<std::sync::atomic::AtomicUsize>);

    impl Connect for ClosesAfterOne {
        type Io = tokio::io::DuplexStream;
        fn connect(&self) -> impl Future<Output = io::Result<Self::Io>> + Send {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let (client, mut server) = tokio::io::duplex(4096);
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n")
                    && server.read(&mut byte).await.is_ok_and(|n| n == 1)
                {
                    head.push(byte[0]);
                }
                let _ = server
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await;
                // Dropped: closed without `Connection: close`.
            });
            std::future::ready(Ok(client))
        }
    }

    /// Each request after the first finds its connection closed by the app and goes on a new
    /// one, never a 503 and never stuck. (Whether the proxy sees the close before sending, or
    /// hyper hands the request back unsent, depends on timing; both must end the same.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_request_on_a_connection_the_app_just_closed_is_sent_again_on_a_new_one() {
        use http_body_util::{BodyExt, Empty};
        use hyper::body::Bytes;
        let connections = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let upstream: Upstream<_, Empty<Bytes>> =
            Upstream::new(ClosesAfterOne(connections.clone()));
        for _ in 0..50 {
            let req = Request::get("/").body(Empty::new()).unwrap();
            let resp = tokio::time::timeout(Duration::from_secs(5), upstream.send(req))
                .await
                .expect("answered, not stuck")
                .expect("a response");
            assert_eq!(resp.status(), StatusCode::OK);
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(&body[..], b"ok");
        }
        assert_eq!(connections.load(std::sync::atomic::Ordering::SeqCst), 50);
    }

    #[test]
    fn an_h2_request_downgraded_carries_its_authority_as_host() {
        let req = Request::get("http://shop.example.com:8443/buy?x=1")
            .version(Version::HTTP_2)
            .body(())
            .unwrap();
        let (mut parts, ()) = req.into_parts();
        downgrade_to_http1(&mut parts);
        assert_eq!(parts.version, Version::HTTP_11);
        assert_eq!(parts.headers[header::HOST], "shop.example.com:8443");
        // A Host that differs from :authority is replaced; h2's cookie fields become one.
        let mut req = Request::get("http://a.example/")
            .version(Version::HTTP_2)
            .header(header::HOST, "b.example")
            .header(header::COOKIE, "a=1")
            .header(header::COOKIE, "b=2")
            .body(())
            .unwrap();
        let (mut p, ()) = std::mem::replace(&mut req, Request::new(())).into_parts();
        downgrade_to_http1(&mut p);
        assert_eq!(p.headers[header::HOST], "a.example");
        assert_eq!(p.headers.get_all(header::COOKIE).iter().count(), 1);
        assert_eq!(p.headers[header::COOKIE], "a=1; b=2");
        let mut req = Request::from_parts(parts, ());
        prepare_request(&mut req, "fallback:80");
        assert_eq!(req.uri(), "/buy?x=1");
    }

    #[test]
    fn hop_by_hop_headers_are_dropped_and_trailers_kept() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        h.insert("te", HeaderValue::from_static("trailers"));
        h.insert("content-type", HeaderValue::from_static("application/grpc"));
        strip_hop_by_hop(&mut h, false);
        let mut names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        names.sort();
        assert_eq!(names, ["content-type", "te"]);
    }

    #[test]
    fn upgrades_keep_their_upgrade_header() {
        let mut req = Request::get("/ws")
            .header("connection", "Upgrade")
            .header("upgrade", "websocket")
            .body(())
            .unwrap();
        assert!(wants_tunnel(&req));
        prepare_request(&mut req, "198.18.0.1:80");
        assert_eq!(req.headers()["upgrade"], "websocket");
        assert_eq!(req.headers()["connection"], "upgrade");
        let plain = Request::get("/").header("upgrade", "h2c").body(()).unwrap();
        assert!(!wants_tunnel(&plain), "Upgrade without Connection: upgrade");
        // CONNECT is never a tunnel here (the server refuses it first).
        let connect = Request::connect("198.18.0.1:443").body(()).unwrap();
        assert!(!wants_tunnel(&connect));
        // An h2c upgrade is never tunnelled (its later requests would skip routing and
        // policy): the upgrade headers go and the request is forwarded as plain HTTP/1.1.
        let mut h2c = Request::get("/public")
            .header("connection", "Upgrade, HTTP2-Settings")
            .header("upgrade", "h2c")
            .header("http2-settings", "AAMAAABkAAQAAP__")
            .body(())
            .unwrap();
        assert!(!wants_tunnel(&h2c));
        prepare_request(&mut h2c, "198.18.0.1:80");
        for name in ["upgrade", "connection", "http2-settings"] {
            assert!(!h2c.headers().contains_key(name), "{name} forwarded");
        }
    }

    #[test]
    fn uris_take_the_shape_of_the_upstream_version() {
        let mut h1 = Request::get("http://api.demo/v1/charges?x=1")
            .body(())
            .unwrap();
        prepare_request(&mut h1, "198.18.0.1:80");
        assert_eq!(h1.uri().to_string(), "/v1/charges?x=1");

        let mut h2 = Request::get("/v1/charges")
            .version(Version::HTTP_2)
            .header("host", "api.demo")
            .body(())
            .unwrap();
        prepare_request(&mut h2, "198.18.0.1:80");
        assert_eq!(h2.uri().to_string(), "http://api.demo/v1/charges");

        let mut bare = Request::get("/").version(Version::HTTP_2).body(()).unwrap();
        prepare_request(&mut bare, "198.18.0.1:80");
        assert_eq!(bare.uri().to_string(), "http://198.18.0.1:80/");
    }
}
