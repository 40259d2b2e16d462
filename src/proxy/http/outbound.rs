//! The outbound request pipeline: a connection from the app to a Service port that speaks
//! HTTP is served as HTTP, and each request goes to an endpoint chosen for it from the current
//! config (the Service's routes, if it has any, pick a destination Service or subset by match
//! and weight ([`crate::route`]); then round robin over its endpoints, the next one tried
//! when no connection to one can be opened, before anything was sent) over a pooled upstream connection: mTLS
//! with peer metadata to a meshed endpoint, plaintext otherwise. The mesh hop speaks the
//! app's HTTP version, so the server's proxy hands the app what the client sent. Each request
//! is recorded by its [`Exchange`] with the source reporter's labels of its endpoint.

use std::borrow::Cow;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode, Version};
use tokio::io::{AsyncRead, AsyncWrite};

use http_body_util::Either;
use hyper::http::request::Parts;
use tokio::time::{Duration, Instant};

use super::actions;
use super::authz::{self as http_authz, ConnectionFacts, HeaderView, normalized_path};
use super::exchange::{ConnLog, Exchange, Record, UpstreamLog, Why};
use super::pool::{Key, Limits, Pooled};
use super::replay::{Recorder, Recording, TryBody};
use super::server::{self, Counted, ResponseBody};
use super::upstream::{ForwardError, SendRequest, forward, wants_tunnel_head};
use crate::proxy::metrics::{RequestRecorder, TcpLabels, grpc_status_value};
use crate::proxy::originate::{Alpn, Asked};
use crate::proxy::outbound::{open_endpoint, source_labels};
use crate::proxy::{ProxyContext, balance};
use crate::route::action::Mirror;
use crate::route::{RequestView, Retries, TryOutcome, action, outlier};
use crate::snapshot::{
    Endpoint, OutboundRoute, RequestRoute, Routed, Service, SnapshotIndex, UpstreamSecurity,
};

/// The body of every request the outbound side forwards: the app's, recorded for a retry, or
/// a retry's replay.
pub type RequestBody = TryBody;

/// A gateway server's `tls.httpsRedirect`: the same URL with `https` (the port dropped
/// when it was http's default), 301.
static HTTPS_REDIRECT: std::sync::LazyLock<crate::route::action::Redirect> =
    std::sync::LazyLock::new(|| crate::route::action::Redirect {
        uri: None,
        authority: None,
        scheme: Some("https".into()),
        port: None,
        code: 301,
        prefix: None,
    });

/// Mirrored copies in flight at once, per proxy; more are not sent (a debug line says so).
static MIRRORS_IN_FLIGHT: std::sync::LazyLock<Arc<tokio::sync::Semaphore>> =
    std::sync::LazyLock::new(|| Arc::new(tokio::sync::Semaphore::new(256)));
/// Istio's retry policy of a route that sets none ([`Retries::istio_default`]), made once.
static ISTIO_DEFAULT_RETRIES: std::sync::LazyLock<Retries> =
    std::sync::LazyLock::new(Retries::istio_default);
/// How long one mirrored copy may take, answer included.
const MIRROR_TIMEOUT: Duration = Duration::from_secs(15);

/// Why a CORS preflight was answered by the proxy (Envoy's response code details).
const CORS_ANSWERED: Why<'static> = Why {
    flags: "",
    details: Some("cors_response"),
    failure: None,
};

/// How a connection's requests find their route table.
#[derive(Debug, Clone)]
enum Front {
    /// A sidecar's app dialled this Service address: each request is routed from it with the
    /// current config, so endpoint changes reach open keep-alive and HTTP/2 connections.
    Mesh(SocketAddr),
    /// A client reached this gateway listener port: the request's host picks the virtual
    /// host of the listener in the current config ([`crate::route::gateway`]); on a TLS port,
    /// only among the hosts of the server its handshake picked.
    Gateway(u16, Option<Arc<[String]>>),
}

impl Front {
    fn port(&self) -> u16 {
        match self {
            Front::Mesh(orig) => orig.port(),
            Front::Gateway(port, _) => *port,
        }
    }
}

/// One downstream connection's state (the app's, or a gateway client's), shared by its
/// requests.
struct Outbound {
    ctx: Arc<ProxyContext>,
    front: Front,
    accepted_with: Arc<SnapshotIndex>,
    conn: Arc<ConnLog>,
    /// The recorder of each label set this connection's requests were reported under.
    recorders: Mutex<Vec<(TcpLabels, Arc<Mutex<RequestRecorder>>)>>,
    /// Where requests answered by an endpoint were recorded, under the current config.
    answered: Mutex<Answered>,
    /// A gateway connection's facts: its requests are authorized against the policies that
    /// select the gateway's pod before routing ([`http_authz::authorize_gateway`]); None on
    /// a sidecar's outbound side (its app's requests are authorized by the server's proxy).
    authz: Option<ConnectionFacts>,
}

/// The [`Record`] of each (Service, endpoint, mTLS) this connection's answered requests went
/// to, made once per config instead of once per request (a label set is some twenty strings).
/// Keyed by the addresses of the Service and endpoint inside `snapshot`, which it keeps alive,
/// so a key never names another config's entries; a request under another config replaces
/// the whole table.
#[derive(Default)]
struct Answered {
    snapshot: Option<Arc<SnapshotIndex>>,
    records: Vec<AnsweredKey>,
}

struct AnsweredKey {
    /// Addresses, only ever compared.
    service: usize,
    endpoint: usize,
    mtls: bool,
    /// The proxy's certificate when the labels were made (they name its identity over mTLS).
    tls: Option<Arc<crate::proxy::tls::TlsContext>>,
    record: Record,
}

/// Serves one connection from the app until it closes.
pub async fn serve<I>(
    ctx: &Arc<ProxyContext>,
    io: I,
    orig: SocketAddr,
    peer: Option<SocketAddr>,
    snapshot: Arc<SnapshotIndex>,
) where
    I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let front = Front::Mesh(orig);
    serve_front(ctx, io, front, orig, peer, snapshot, None, None).await;
}

/// Serves one connection a gateway listener accepted (`facts.destination`: the pod address
/// and listener port) until it closes; `server_hosts`: on a TLS port, the hosts of the server
/// the handshake picked.
pub async fn serve_gateway<I>(
    ctx: &Arc<ProxyContext>,
    io: I,
    facts: ConnectionFacts,
    snapshot: Arc<SnapshotIndex>,
    server_hosts: Option<Arc<[String]>>,
) where
    I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (local, peer) = (facts.destination, Some(facts.peer));
    let front = Front::Gateway(local.port(), server_hosts);
    let header_timeout = Some(crate::proxy::gateway::HEADER_TIMEOUT);
    serve_front(
        ctx,
        io,
        front,
        local,
        peer,
        snapshot,
        header_timeout,
        Some(facts),
    )
    .await;
}

/// One request a sidecar took for a declared external host that a mesh VirtualService routes
/// (`service`: the address-less Service holding those routes; Istio's egress-gateway
/// pattern): routed and sent as a request to a Service address is (egress-gw helper's hunk).
#[allow(clippy::too_many_arguments)]
pub async fn serve_routed(
    ctx: &Arc<ProxyContext>,
    exchange: Exchange,
    parts: Parts,
    body: Counted<Incoming>,
    snapshot: &Arc<SnapshotIndex>,
    service: &Service,
    orig: SocketAddr,
    conn: Arc<ConnLog>,
) -> Response<ResponseBody> {
    let out = Outbound {
        ctx: ctx.clone(),
        front: Front::Mesh(orig),
        accepted_with: snapshot.clone(),
        conn,
        recorders: Mutex::new(Vec::new()),
        answered: Mutex::new(Answered::default()),
        authz: None,
    };
    let decided = {
        let path = normalized_path(&parts).unwrap_or(Cow::Borrowed(parts.uri.path()));
        let headers = HeaderView::new(&parts.headers);
        let view = RequestView {
            method: parts.method.as_str(),
            path: &path,
            query: parts.uri.query(),
            port: orig.port(),
            headers: &headers,
        };
        snapshot.route_request(service, Vec::new(), &view)
    };
    out.routed(exchange, parts, body, snapshot, Some(service), decided)
        .await
}

#[allow(clippy::too_many_arguments)]
async fn serve_front<I>(
    ctx: &Arc<ProxyContext>,
    io: I,
    front: Front,
    destination: SocketAddr,
    peer: Option<SocketAddr>,
    snapshot: Arc<SnapshotIndex>,
    header_timeout: Option<Duration>,
    authz: Option<ConnectionFacts>,
) where
    I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let conn = Arc::new(ConnLog {
        peer: peer.unwrap_or(destination),
        destination,
        sni: authz.as_ref().and_then(|f| f.sni.clone()),
        // A gateway's ISTIO_MUTUAL client, proven by its certificate.
        source_principal: authz
            .as_ref()
            .and_then(|f| f.principal.as_ref())
            .map(|p| format!("spiffe://{p}")),
        destination_principal: None,
    });
    // A gateway's ports accept for the drain duration: its idle keep-alive connections
    // stay that long ([`server::serve_pipeline`]).
    let (side, linger) = match front {
        Front::Mesh(_) => ("outbound", Duration::ZERO),
        Front::Gateway(..) => ("gateway", ctx.settings.drain_duration),
    };
    let state = Arc::new(Outbound {
        ctx: ctx.clone(),
        front,
        accepted_with: snapshot,
        conn,
        recorders: Mutex::new(Vec::new()),
        answered: Mutex::new(Answered::default()),
        authz,
    });
    server::serve_pipeline(ctx, io, state, side, header_timeout, linger).await;
}

impl server::Pipeline for Outbound {
    /// Recorded before any route: its destination is `unknown`, as Istio reports a request
    /// no route took.
    fn refuse_connect(&self, req: Request<Incoming>) -> Response<ResponseBody> {
        let (exchange, _, _) = Exchange::begin(&self.ctx, req);
        let snapshot = self
            .ctx
            .snapshot()
            .unwrap_or_else(|| self.accepted_with.clone());
        exchange.refused_upgrade(&self.unrouted(&snapshot))
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<ResponseBody> {
        let (exchange, mut parts, body) = Exchange::begin(&self.ctx, req);
        let snapshot = self
            .ctx
            .snapshot()
            .unwrap_or_else(|| self.accepted_with.clone());
        // A gateway authorizes before routing (gw-authz helper's hunk).
        if let Some(facts) = &self.authz
            && let Err(refusal) =
                http_authz::authorize_gateway(facts, &snapshot, &mut parts, exchange.logs())
        {
            return http_authz::gateway_refused(exchange, refusal, &self.unrouted(&snapshot));
        }
        {
            let mut answered = self.answered.lock().unwrap_or_else(|p| p.into_inner());
            if !answered
                .snapshot
                .as_ref()
                .is_some_and(|s| Arc::ptr_eq(s, &snapshot))
            {
                *answered = Answered {
                    snapshot: Some(snapshot.clone()),
                    records: Vec::new(),
                };
            }
        }
        match self.decide(&snapshot, &parts) {
            Some((dialled, decided)) => {
                self.routed(exchange, parts, body, &snapshot, dialled, decided)
                    .await
            }
            // The Service went away while the connection was open.
            None => {
                let route = Route {
                    snapshot: &snapshot,
                    service: None,
                    candidates: Vec::new(),
                    routed: None,
                    cors_origin: None,
                };
                self.send(exchange, parts, body, route).await
            }
        }
    }
}

impl Outbound {
    /// What the route table (a Service's, or a gateway virtual host's) decides for a request,
    /// and the Service a request that finds no upstream is recorded under; none: the dialled
    /// address is no longer a Service.
    fn decide<'s>(
        &self,
        snapshot: &'s SnapshotIndex,
        parts: &Parts,
    ) -> Option<(Option<&'s Service>, RequestRoute<'s>)> {
        let path = normalized_path(parts).unwrap_or(Cow::Borrowed(parts.uri.path()));
        let headers = HeaderView::new(&parts.headers);
        let view = RequestView {
            method: parts.method.as_str(),
            path: &path,
            query: parts.uri.query(),
            port: self.front.port(),
            headers: &headers,
        };
        match &self.front {
            Front::Mesh(orig) => match snapshot.route(*orig) {
                // A Service address: its routes (if any) pick the destination.
                OutboundRoute::Service { service, endpoints } => Some((
                    Some(service),
                    snapshot.route_request(service, endpoints, &view),
                )),
                // A pod dialled by its address goes to that pod.
                OutboundRoute::Endpoint { service, endpoint } => Some((
                    Some(service),
                    RequestRoute::Endpoints {
                        service,
                        endpoints: vec![endpoint],
                        routed: None,
                    },
                )),
                OutboundRoute::Passthrough | OutboundRoute::Refused => None,
            },
            Front::Gateway(port, server_hosts) => {
                let authority = parts
                    .uri
                    .authority()
                    .map(|a| a.as_str())
                    .or_else(|| parts.headers.get(hyper::header::HOST)?.to_str().ok())
                    .unwrap_or("");
                let vhost = snapshot
                    .snapshot
                    .gateway
                    .as_ref()
                    .and_then(|g| g.listener(*port))
                    .and_then(|l| match server_hosts {
                        Some(hosts) => l.virtual_host_within(hosts, authority),
                        None => l.virtual_host(authority),
                    });
                Some(match vhost {
                    // The server's `tls.httpsRedirect`: Envoy's 301 to https.
                    Some(vhost) if vhost.https_redirect => {
                        (None, RequestRoute::Redirect(&HTTPS_REDIRECT, None))
                    }
                    Some(vhost) => (None, snapshot.route_table(&vhost.routes, &view)),
                    // No virtual host names the request's host: Envoy's 404 NR.
                    None => (None, RequestRoute::NoRoute),
                })
            }
        }
    }
}

impl Outbound {
    /// Acts on what the route table decided: a local answer (redirect, no route, no
    /// destination, an injected fault), or the request sent on its way.
    async fn routed(
        &self,
        mut exchange: Exchange,
        mut parts: Parts,
        body: Counted<Incoming>,
        snapshot: &SnapshotIndex,
        dialled: Option<&Service>,
        decided: RequestRoute<'_>,
    ) -> Response<ResponseBody> {
        let record = || match dialled {
            Some(service) => self.no_upstream(snapshot, service),
            None => self.unrouted(snapshot),
        };
        let (service, candidates, routed) = match decided {
            RequestRoute::Endpoints {
                service,
                endpoints,
                routed,
            } => (service, endpoints, routed),
            RequestRoute::Redirect(redirect, cors) => {
                // The route's CORS policy first (Istio's filter order: CORS, then the router
                // that redirects): a preflight it answers is not redirected, and an allowed
                // origin's redirect carries the CORS headers, as Envoy's does.
                if let Some(resp) = actions::cors_preflight(&parts, cors) {
                    return exchange.local_response(resp, 0, &record(), CORS_ANSWERED);
                }
                let mut resp = actions::redirect(&parts, redirect, exchange.is_grpc());
                let origin = actions::cors_origin(&parts, cors);
                actions::cors_response(&mut resp, cors, origin.as_ref());
                return exchange.local_response(resp, 0, &record(), Why::default());
            }
            RequestRoute::Direct(direct) => {
                let (resp, sent) = actions::direct(direct, exchange.is_grpc());
                let why = Why {
                    details: Some("direct_response"),
                    ..Why::default()
                };
                return exchange.local_response(resp, sent, &record(), why);
            }
            RequestRoute::NoRoute => {
                let why = Why {
                    flags: "NR",
                    details: Some("route_not_found"),
                    failure: None,
                };
                return exchange.local(StatusCode::NOT_FOUND, "", &record(), why);
            }
            RequestRoute::NoDestination(what) => {
                tracing::debug!(route = %what, "route destination not in the config");
                let why = Why {
                    flags: "NR",
                    details: Some("cluster_not_found"),
                    failure: None,
                };
                return exchange.local(StatusCode::SERVICE_UNAVAILABLE, "", &record(), why);
            }
        };
        let mut cors_origin = None;
        if let Some(routed) = &routed {
            if let Some(fault) = &routed.route.actions.fault {
                if let Some(d) = &fault.delay
                    && action::applies(d.per_million, snapshot.roll())
                {
                    tokio::time::sleep(Duration::from_millis(d.ms)).await;
                    exchange.flag("DI");
                }
                if let Some(a) = &fault.abort
                    && action::applies(a.per_million, snapshot.roll())
                {
                    let record = self.no_upstream(snapshot, service);
                    let (resp, sent) = actions::abort(a, exchange.is_grpc());
                    let why = Why {
                        flags: "FI",
                        details: Some("fault_filter_abort"),
                        failure: None,
                    };
                    return exchange.local_response(resp, sent, &record, why);
                }
            }
            // The route's CORS policy, after the fault (Istio's filter order: fault, CORS,
            // router): a preflight it answers is not forwarded.
            let cors = routed.route.actions.cors.as_ref();
            if let Some(resp) = actions::cors_preflight(&parts, cors) {
                let record = self.no_upstream(snapshot, service);
                return exchange.local_response(resp, 0, &record, CORS_ANSWERED);
            }
            cors_origin = actions::cors_origin(&parts, cors);
            actions::edit_request(&mut parts, routed);
        }
        // A gateway's client may speak h2 to it; the Service gets HTTP/1.1 unless the request
        // is gRPC (which is h2 end to end).
        if matches!(self.front, Front::Gateway(..)) {
            if parts.version != Version::HTTP_2 {
                super::upstream::align_host(&mut parts);
            } else if !exchange.is_grpc() {
                super::upstream::downgrade_to_http1(&mut parts);
            }
        }
        let route = Route {
            snapshot,
            service: Some(service),
            candidates,
            routed,
            cors_origin,
        };
        self.send(exchange, parts, body, route).await
    }
}

/// `admit` bounded by the route's deadline, if it has one.
async fn admit_by<F: std::future::Future>(
    deadline: Option<Instant>,
    admit: F,
) -> Result<F::Output, tokio::time::error::Elapsed> {
    match deadline {
        Some(d) => tokio::time::timeout_at(d, admit).await,
        None => Ok(admit.await),
    }
}

/// How outlier detection sees a try: an answer's status, or Envoy's local-origin mapping.
fn outlier_outcome(outcome: TryOutcome) -> outlier::Outcome {
    match outcome {
        TryOutcome::Response { status, .. } => outlier::Outcome::Status(status),
        TryOutcome::ConnectFailure | TryOutcome::Reset | TryOutcome::RefusedStream => {
            outlier::Outcome::LocalFailure
        }
        TryOutcome::PerTryTimeout => outlier::Outcome::Timeout,
    }
}

/// Where one request goes, decided once: the Service and the endpoints to try in order, and
/// the route that took it.
struct Route<'a> {
    snapshot: &'a SnapshotIndex,
    service: Option<&'a Service>,
    candidates: Vec<&'a Endpoint>,
    routed: Option<Routed<'a>>,
    /// The request's `Origin`, when the route's CORS policy allows it.
    cors_origin: Option<hyper::header::HeaderValue>,
}

/// One endpoint to try and how to talk to it (the DestinationRule's TLS mode, else auto-mTLS;
/// its `connectTimeout`, else the proxy's).
struct Target<'a> {
    ep: &'a Endpoint,
    service: Option<&'a Service>,
    security: UpstreamSecurity,
    connect_timeout: Option<Duration>,
    /// `connectionPool.http` maxRequestsPerConnection / idleTimeout (the pool applies them).
    limits: Limits,
    /// The name the request asked for (Host or `:authority`): the SNI of a TLS origination
    /// to a wildcard host ([`crate::proxy::originate::Asked::authority`]).
    authority: Option<&'a str>,
}

/// Where a mirrored copy goes: `ep` of the mirror destination, with that destination's own
/// TLS mode and `connectionPool` (connectTimeout, maxRequestsPerConnection, idleTimeout), as
/// for a routed request (it took the defaults before).
fn mirror_target<'a>(
    service: &'a Service,
    ep: &'a Endpoint,
    subset: Option<&str>,
    authority: Option<&'a str>,
) -> Target<'a> {
    let pool = service.traffic_of(subset).connection_pool.as_ref();
    Target {
        authority,
        ep,
        service: Some(service),
        security: service.security_of(ep, subset),
        connect_timeout: pool
            .and_then(|c| c.connect_timeout_ms)
            .map(Duration::from_millis),
        limits: pool.map_or_else(Limits::default, Limits::of),
    }
}

/// How a try ended without a response.
enum TryError {
    Forward(ForwardError),
    /// The per-try or the route's deadline passed first.
    Timeout,
}

/// What a retry needs of the request: its head as the first try sent it.
struct Head {
    method: hyper::Method,
    uri: hyper::Uri,
    version: Version,
    headers: hyper::HeaderMap,
}

impl Head {
    fn of(parts: &Parts) -> Head {
        Head {
            method: parts.method.clone(),
            uri: parts.uri.clone(),
            version: parts.version,
            headers: parts.headers.clone(),
        }
    }

    fn request(&self, body: RequestBody) -> Request<RequestBody> {
        let mut req = Request::new(body);
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.version_mut() = self.version;
        *req.headers_mut() = self.headers.clone();
        req
    }
}

impl Outbound {
    /// Sends the request on the route's endpoints in turn. A connection that cannot be opened
    /// is tried on the next endpoint (nothing was sent), up to `connect_attempts`; a try whose
    /// outcome the route's retry policy names (Istio's default policy without a route) is sent
    /// again, its body replayed, on the next endpoint after Envoy's back-off; the route's
    /// timeout bounds it all until the response head (504 `UT`).
    async fn send(
        &self,
        mut exchange: Exchange,
        parts: Parts,
        body: Counted<Incoming>,
        route: Route<'_>,
    ) -> Response<ResponseBody> {
        let Route {
            snapshot,
            service,
            candidates,
            routed,
            cors_origin,
        } = route;
        let subset = routed
            .as_ref()
            .and_then(|r| r.destination.subset.as_deref());
        // A DestinationRule's load balancing and outlier detection, when it sets either.
        let traffic = service
            .map(|s| (s, s.traffic_of(subset)))
            .filter(|(_, t)| !t.is_empty())
            .map(|(s, t)| (balance::destination_key(&s.name, s.port, subset), t));
        let candidates = match &traffic {
            Some((key, policy)) => {
                let headers = HeaderView::new(&parts.headers);
                let request = balance::RequestKey {
                    headers: &headers,
                    query: parts.uri.query(),
                    source: self.conn.peer.ip(),
                };
                let draw = snapshot.roll();
                self.ctx
                    .balancer
                    .order(key, policy, candidates, draw, &request)
            }
            None => candidates,
        };
        let cluster = || match service {
            Some(s) => format!("outbound|{}||{}", s.port, s.name),
            None => "BlackHoleCluster".to_string(),
        };
        if candidates.is_empty() {
            let labels = source_labels(&self.ctx, snapshot, service, None, false);
            let upstream = UpstreamLog {
                host: None,
                cluster: cluster(),
            };
            let record = self.record(labels, upstream);
            // Envoy's answers: a Service without endpoints has no healthy upstream; a
            // destination the config no longer knows is the black hole.
            let (status, text, flags) = match service {
                Some(_) => (StatusCode::SERVICE_UNAVAILABLE, "no healthy upstream", "UH"),
                None => (StatusCode::BAD_GATEWAY, "Bad Gateway", "-"),
            };
            let why = Why {
                flags,
                details: Some("no_healthy_upstream"),
                failure: None,
            };
            return exchange.local(status, text, &record, why);
        }
        let h2 = parts.version == Version::HTTP_2;
        // The destination's circuit breakers (connectionPool): held until the answer's head.
        // The route's timeout counts from here: waiting for a connection (the pending queue)
        // is part of it, as in Envoy.
        let deadline = routed
            .as_ref()
            .and_then(|r| r.route.actions.timeout_ms)
            .map(|ms| Instant::now() + Duration::from_millis(ms));
        let _admitted = match &traffic {
            Some((key, p)) => match admit_by(deadline, self.ctx.balancer.admit(key, p, h2)).await {
                Ok(Ok(admitted)) => admitted,
                Err(_elapsed) => {
                    let labels = source_labels(&self.ctx, snapshot, service, None, false);
                    let record = self.record(
                        labels,
                        UpstreamLog {
                            host: None,
                            cluster: cluster(),
                        },
                    );
                    let why = Why {
                        flags: "UT",
                        details: Some("upstream_response_timeout"),
                        failure: None,
                    };
                    return exchange.local(
                        StatusCode::GATEWAY_TIMEOUT,
                        "upstream request timeout",
                        &record,
                        why,
                    );
                }
                Ok(Err(balance::Overflow)) => {
                    let labels = source_labels(&self.ctx, snapshot, service, None, false);
                    let record = self.record(
                        labels,
                        UpstreamLog {
                            host: None,
                            cluster: cluster(),
                        },
                    );
                    let why = Why {
                        flags: "UO",
                        details: Some("upstream_reset_before_response_started{overflow}"),
                        failure: None,
                    };
                    return exchange.local(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "upstream connect error or disconnect/reset before headers. reset reason: overflow",
                        &record,
                        why,
                    );
                }
            },
            None => None,
        };
        let connect_timeout = traffic
            .as_ref()
            .and_then(|(_, p)| p.connection_pool.as_ref())
            .and_then(|c| c.connect_timeout_ms)
            .map(Duration::from_millis);
        let limits = traffic
            .as_ref()
            .and_then(|(_, p)| p.connection_pool.as_ref())
            .map_or_else(Limits::default, Limits::of);
        // Borrowed, not cloned: a policy is two vectors, and most requests take it as is.
        let policy: &Retries = match routed
            .as_ref()
            .and_then(|r| r.route.actions.retries.as_ref())
        {
            Some(r) => r,
            None => &ISTIO_DEFAULT_RETRIES,
        };
        // A tunnel (Upgrade, CONNECT) leaves HTTP once sent: never tried twice.
        let tunnel = wants_tunnel_head(&parts.method, parts.version, &parts.headers);
        let attempts = if tunnel { 0 } else { policy.attempts };
        let per_try = policy.per_try_timeout_ms.map(Duration::from_millis);
        let mirrors: &[Mirror] = routed.as_ref().map_or(&[], |r| &r.route.actions.mirrors);
        let head = (attempts > 0 || !mirrors.is_empty()).then(|| Head::of(&parts));
        // Read only where a TLS origination needs it (an endpoint's own security is mTLS or
        // plaintext).
        let asked = service
            .is_some_and(|s| s.originates(subset))
            .then(|| asked_name(&parts.uri, &parts.headers))
            .flatten();
        let (recording, recorder) = Recording::new(body);
        let mut first = Some((parts, recording));
        let connect_budget = self.ctx.settings.connect_attempts.max(1);
        let (mut connect_failures, mut retries, mut next) = (0usize, 0u32, 0usize);
        loop {
            let ep = candidates[next % candidates.len()];
            next += 1;
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            let limit = match (left, per_try) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let target = Target {
                ep,
                service,
                security: service.map_or_else(|| ep.security(), |s| s.security_of(ep, subset)),
                connect_timeout,
                limits,
                authority: asked.as_deref(),
            };
            let mtls = matches!(target.security, UpstreamSecurity::Mtls { .. });
            let in_flight = traffic
                .as_ref()
                .and_then(|(key, p)| self.ctx.balancer.begin(key, p, ep.addr()));
            let once = self.try_once(snapshot, &target, h2, &mut first, head.as_ref(), &recorder);
            let result = match limit {
                Some(limit) => tokio::time::timeout(limit, once)
                    .await
                    .unwrap_or(Err(TryError::Timeout)),
                None => once.await,
            };
            let outcome = match &result {
                Ok(resp) => TryOutcome::Response {
                    status: resp.status().as_u16(),
                    grpc_status: resp
                        .headers()
                        .get(&super::exchange::GRPC_STATUS)
                        .map(|v| grpc_status_value(v.as_bytes())),
                },
                Err(TryError::Forward(ForwardError::Connect(_) | ForwardError::Handshake(_))) => {
                    TryOutcome::ConnectFailure
                }
                Err(TryError::Forward(_)) => TryOutcome::Reset,
                Err(TryError::Timeout) => TryOutcome::PerTryTimeout,
            };
            drop(in_flight);
            if let Some((key, p)) = &traffic {
                self.ctx
                    .balancer
                    .record(key, p, ep.addr(), outlier_outcome(outcome));
            }
            let expired = deadline.is_some_and(|d| Instant::now() >= d);
            if outcome == TryOutcome::ConnectFailure && first.is_some() && !expired {
                connect_failures += 1;
                if connect_failures < connect_budget.min(candidates.len()) {
                    continue;
                }
            }
            let replayable = first.is_some() || recorder.can_replay();
            let retry = policy.retries(outcome);
            if retries < attempts && retry && replayable && !expired {
                retries += 1;
                let wait = Duration::from_millis(action::backoff_ms(retries, snapshot.roll()));
                let wait = deadline.map_or(wait, |d| {
                    wait.min(d.saturating_duration_since(Instant::now()))
                });
                tokio::time::sleep(wait).await;
                continue;
            }
            if retry && retries > 0 && retries == attempts {
                // Envoy: the retries were spent and the last answer is a retriable one.
                exchange.flag("URX");
            }
            let mtls = mtls && outcome != TryOutcome::ConnectFailure;
            let record = self.answered_record(snapshot, service, ep, mtls, cluster);
            return match result {
                Ok(mut resp) => {
                    if let Some(r) = &routed {
                        actions::edit_response(&mut resp, r);
                        actions::cors_response(
                            &mut resp,
                            r.route.actions.cors.as_ref(),
                            cors_origin.as_ref(),
                        );
                    }
                    if let Some(head) = &head {
                        self.mirror(snapshot, mirrors, head, h2, &recorder);
                    }
                    exchange.respond(resp, record)
                }
                Err(TryError::Forward(e)) => {
                    tracing::debug!(endpoint = %ep.addr(), error = %e, "outbound request failed");
                    exchange.failed(&e, &record)
                }
                Err(TryError::Timeout) => {
                    let why = Why {
                        flags: "UT",
                        details: Some("upstream_response_timeout"),
                        failure: None,
                    };
                    exchange.local(
                        StatusCode::GATEWAY_TIMEOUT,
                        "upstream request timeout",
                        &record,
                        why,
                    )
                }
            };
        }
    }

    /// One try on `ep`: the first sends the app's request (its body recorded as it streams),
    /// later ones the same head and the recorded body.
    async fn try_once(
        &self,
        snapshot: &SnapshotIndex,
        target: &Target<'_>,
        h2: bool,
        first: &mut Option<(Parts, Recording)>,
        head: Option<&Head>,
        recorder: &Recorder,
    ) -> Result<Response<Incoming>, TryError> {
        let (key, sender) = connection(&self.ctx, snapshot, target, h2)
            .await
            .map_err(TryError::Forward)?;
        let (ep, service) = (target.ep, target.service);
        let request = match first.take() {
            Some((parts, body)) => Request::from_parts(parts, Either::Left(body)),
            None => match (head, recorder.replay()) {
                (Some(head), Some(body)) => head.request(Either::Right(body)),
                _ => return Err(TryError::Forward(ForwardError::NotSent)),
            },
        };
        let picked = Picked {
            ctx: &self.ctx,
            snapshot,
            target,
            key,
            sender: tokio::sync::Mutex::new(Some(sender)),
            h2,
        };
        // The fallback `:authority` of an HTTP/2 request that names none (nor a Host):
        // made only for such a request, as `prepare_request` reads it only then.
        let unnamed = request.version() == Version::HTTP_2
            && request.uri().authority().is_none()
            && !request.headers().contains_key(hyper::header::HOST);
        let authority = match service {
            _ if !unnamed => String::new(),
            Some(s) => format!("{}:{}", s.name, s.port),
            None => ep.addr().to_string(),
        };
        let idle = self.ctx.settings.idle_timeout;
        forward(&picked, request, &authority, idle)
            .await
            .map_err(TryError::Forward)
    }

    /// Sends a copy of the request to each mirror its share picks, in the background: the
    /// copy's answer is dropped, the client never waits for it. The body is the recorded one;
    /// a body too large to record (or still streaming) is not mirrored.
    fn mirror(
        &self,
        snapshot: &SnapshotIndex,
        mirrors: &[Mirror],
        head: &Head,
        h2: bool,
        recorder: &Recorder,
    ) {
        for m in mirrors {
            if !action::applies(m.per_million, snapshot.roll()) {
                continue;
            }
            let Some(body) = recorder.replay() else {
                tracing::debug!(mirror = %m.destination.service, "request body not recorded: not mirrored");
                continue;
            };
            let mut request = head.request(Either::Right(body));
            let asked = asked_name(&head.uri, &head.headers);
            shadow(&mut request);
            let ctx = self.ctx.clone();
            let Some(current) = ctx.snapshot() else {
                continue;
            };
            let destination = m.destination.clone();
            // Copies in flight are bounded: a slow mirror costs the proxy nothing more.
            let Ok(permit) = MIRRORS_IN_FLIGHT.clone().try_acquire_owned() else {
                tracing::debug!(mirror = %destination.service, "too many mirrored copies in flight: not mirrored");
                continue;
            };
            tokio::spawn(async move {
                let _permit = permit;
                let Some((service, endpoints)) = current.mirror_endpoints(&destination) else {
                    return;
                };
                let Some(ep) = endpoints.first().copied() else {
                    return;
                };
                let target =
                    mirror_target(service, ep, destination.subset.as_deref(), asked.as_deref());
                let Ok((key, sender)) = connection(&ctx, &current, &target, h2).await else {
                    return;
                };
                let picked = Picked {
                    ctx: &ctx,
                    snapshot: &current,
                    target: &target,
                    key,
                    sender: tokio::sync::Mutex::new(Some(sender)),
                    h2,
                };
                let authority = format!("{}:{}", service.name, service.port);
                let idle = ctx.settings.idle_timeout;
                let copy = async {
                    let resp = forward(&picked, request, &authority, idle).await?;
                    // Read and drop the answer frame by frame, so its connection can serve
                    // again; nothing of it is kept.
                    let mut body = resp.into_body();
                    while let Some(frame) = http_body_util::BodyExt::frame(&mut body).await {
                        if frame.is_err() {
                            break;
                        }
                    }
                    Ok::<(), ForwardError>(())
                };
                let _ = tokio::time::timeout(MIRROR_TIMEOUT, copy).await;
            });
        }
    }

    /// Where a request that found no upstream is recorded: under the Service dialled.
    fn no_upstream(&self, snapshot: &SnapshotIndex, service: &Service) -> Record {
        let labels = source_labels(&self.ctx, snapshot, Some(service), None, false);
        let cluster = format!("outbound|{}||{}", service.port, service.name);
        self.record(
            labels,
            UpstreamLog {
                host: None,
                cluster,
            },
        )
    }

    /// Where a request no route table took is recorded: a gateway host no virtual host
    /// names (Istio reports its destination service as `unknown`).
    fn unrouted(&self, snapshot: &SnapshotIndex) -> Record {
        let labels = source_labels(&self.ctx, snapshot, None, None, false).with_service("unknown");
        let upstream = UpstreamLog {
            host: None,
            cluster: "-".to_string(),
        };
        self.record(labels, upstream)
    }

    /// Where a request `ep` answered (or failed) is recorded: made once per Service,
    /// endpoint and mTLS under one config ([`Answered`]), as [`source_labels`] and
    /// [`Outbound::record`] would make it.
    fn answered_record(
        &self,
        snapshot: &SnapshotIndex,
        service: Option<&Service>,
        ep: &Endpoint,
        mtls: bool,
        cluster: impl FnOnce() -> String,
    ) -> Record {
        let service_ptr = service.map_or(0, |s| std::ptr::from_ref(s) as usize);
        let endpoint_ptr = std::ptr::from_ref(ep) as usize;
        // The labels name the proxy's identity only over mTLS.
        let tls = if mtls { self.ctx.tls() } else { None };
        let same_tls = |a: &Option<Arc<_>>| match (a, &tls) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        };
        let mut answered = self.answered.lock().unwrap_or_else(|p| p.into_inner());
        let current = answered
            .snapshot
            .as_deref()
            .is_some_and(|s| std::ptr::eq(s, snapshot));
        if current
            && let Some(known) = answered.records.iter().find(|k| {
                k.service == service_ptr
                    && k.endpoint == endpoint_ptr
                    && k.mtls == mtls
                    && same_tls(&k.tls)
            })
        {
            return known.record.clone();
        }
        let labels = source_labels(&self.ctx, snapshot, service, Some(ep), mtls);
        let upstream = UpstreamLog {
            host: Some(ep.addr()),
            cluster: cluster(),
        };
        let record = self.record(labels, upstream);
        if current {
            // A connection reaches few endpoints; a table grown past a Service's worth of
            // them starts over rather than being searched at length.
            if answered.records.len() >= 64 {
                answered.records.clear();
            }
            answered.records.push(AnsweredKey {
                service: service_ptr,
                endpoint: endpoint_ptr,
                mtls,
                tls,
                record: record.clone(),
            });
        }
        record
    }

    /// The recorder of `labels` on this connection (made once per label set).
    fn record(&self, labels: TcpLabels, upstream: UpstreamLog) -> Record {
        let recorder = {
            let mut recorders = self.recorders.lock().unwrap_or_else(|p| p.into_inner());
            match recorders.iter().find(|(l, _)| *l == labels) {
                Some((_, r)) => r.clone(),
                None => {
                    let r = Arc::new(Mutex::new(self.ctx.metrics.request_recorder(&labels)));
                    recorders.push((labels, r.clone()));
                    r
                }
            }
        };
        Record {
            recorder,
            conn: self.conn.clone(),
            upstream,
        }
    }
}

/// A connection to `target` able to carry the request: pooled, or opened now.
async fn connection(
    ctx: &Arc<ProxyContext>,
    snapshot: &SnapshotIndex,
    target: &Target<'_>,
    h2: bool,
) -> Result<(Key, Pooled<RequestBody>), ForwardError> {
    let identity = pool_identity(
        &target.security,
        &snapshot.snapshot.credentials,
        target.authority,
    );
    let key = Key {
        addr: target.ep.addr(),
        identity,
        service: target.service.map(|s| s.name.clone()),
        limits: target.limits,
    };
    let connect = || open(ctx, snapshot, target, h2);
    let sender = ctx.outbound_pool.get(&key, h2, connect).await?;
    Ok((key, sender))
}

/// What tells connections to one address apart besides the Service and limits: the mTLS
/// identity proved, or an originated TLS's key (SNI, names, and the credential's material:
/// a changed CA or certificate is another connection, [`Asked::key`]); None for plaintext.
pub fn pool_identity(
    security: &UpstreamSecurity,
    credentials: &std::collections::BTreeMap<String, crate::snapshot::TlsCredential>,
    authority: Option<&str>,
) -> Option<String> {
    match security {
        UpstreamSecurity::Mtls { identity } => Some(identity.clone()),
        UpstreamSecurity::Plaintext => None,
        UpstreamSecurity::Originate {
            mutual,
            host,
            settings,
        } => Some(
            Asked {
                host,
                authority,
                mutual: *mutual,
                settings,
                credentials,
            }
            .key(),
        ),
    }
}

/// The name a request asks for: its `:authority` or Host, without the port.
fn asked_name(uri: &hyper::Uri, headers: &hyper::HeaderMap) -> Option<String> {
    let authority = uri.authority().map(|a| a.host().to_string());
    authority.or_else(|| {
        let host = headers.get(hyper::header::HOST)?.to_str().ok()?;
        let parsed: hyper::http::uri::Authority = host.parse().ok()?;
        Some(parsed.host().to_string())
    })
}

/// A new connection to `target`, ready for HTTP (TLS done, peer metadata sent), speaking
/// HTTP/2 when `h2` (an originated TLS announces it by ALPN).
async fn open(
    ctx: &Arc<ProxyContext>,
    snapshot: &SnapshotIndex,
    target: &Target<'_>,
    h2: bool,
) -> io::Result<crate::proxy::outbound::Upstream> {
    let security = target.security.clone();
    let open = open_endpoint(
        ctx,
        snapshot,
        target.ep,
        target.service,
        security,
        Alpn::of_http(h2),
        target.authority,
    );
    let opened = match target.connect_timeout {
        Some(limit) => tokio::time::timeout(limit, open).await.map_err(|_| {
            io::Error::new(io::ErrorKind::TimedOut, "connectionPool.tcp.connectTimeout")
        })?,
        None => open.await,
    };
    opened.map_err(|r| io::Error::other(r.metric_label()))
}

/// A mirrored copy's authority (Host header, and `:authority` for HTTP/2): Envoy's
/// `-shadow` suffix, so the destination can tell copies from real requests.
fn shadow<B>(req: &mut Request<B>) {
    if let Some(host) = req
        .headers()
        .get(hyper::header::HOST)
        .and_then(|h| h.to_str().ok())
        && let Ok(v) = hyper::header::HeaderValue::from_str(&action::shadow_authority(host))
    {
        req.headers_mut().insert(hyper::header::HOST, v);
    }
    if let Some(authority) = req.uri().authority().map(|a| a.as_str().to_string()) {
        let mut parts = req.uri().clone().into_parts();
        parts.authority = action::shadow_authority(&authority).parse().ok();
        if let Ok(uri) = hyper::Uri::from_parts(parts) {
            *req.uri_mut() = uri;
        }
    }
}

/// The connection picked for one request, sent on once (with what it takes to open another
/// if that one was closing).
struct Picked<'a> {
    ctx: &'a Arc<ProxyContext>,
    snapshot: &'a SnapshotIndex,
    target: &'a Target<'a>,
    key: Key,
    sender: tokio::sync::Mutex<Option<Pooled<RequestBody>>>,
    /// The pooled connection speaks HTTP/2: a fresh one (the pooled one closed) must too.
    h2: bool,
}

impl SendRequest<RequestBody> for Picked<'_> {
    async fn send(&self, req: Request<RequestBody>) -> Result<Response<Incoming>, ForwardError> {
        let sender = self
            .sender
            .lock()
            .await
            .take()
            .ok_or(ForwardError::NotSent)?;
        let connect = || open(self.ctx, self.snapshot, self.target, self.h2);
        let pool = &self.ctx.outbound_pool;
        pool.send(&self.key, sender, req, connect).await
    }
}

#[cfg(test)]
mod mirror_tests {
    use super::*;

    /// A mirrored copy takes its destination's DestinationRule connectionPool (the subset's
    /// over the host's), not the defaults: maxRequestsPerConnection 1 and a 250 ms idle
    /// timeout reach its pool key.
    #[test]
    fn a_mirror_target_takes_its_destinations_connection_pool() {
        let json = serde_json::json!({
            "clusterIp": "198.19.0.30", "port": 80, "name": "shadow.shop.svc.cluster.local",
            "endpoints": [{"ip": "198.18.1.30", "port": 8080, "meshed": false}],
            "subsets": {"v2": [0]},
            "traffic": {"connectionPool": {"connectTimeoutMs": 700, "maxRequestsPerConnection": 1,
                                           "idleTimeoutMs": 250}},
            "subsetTraffic": {"v2": {"connectionPool": {"maxRequestsPerConnection": 3}}}
        });
        let service: Service = serde_json::from_value(json).unwrap();
        let ep = &service.endpoints[0];
        let host = mirror_target(&service, ep, None, None);
        assert_eq!(
            host.limits,
            Limits {
                max_requests: Some(1),
                idle: Some(Duration::from_millis(250)),
            }
        );
        assert_eq!(host.connect_timeout, Some(Duration::from_millis(700)));
        let subset = mirror_target(&service, ep, Some("v2"), None);
        assert_eq!(subset.limits.max_requests, Some(3));
    }
}
