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

use super::authz::{HeaderView, normalized_path};
use super::exchange::{ConnLog, Exchange, Record, UpstreamLog, Why};
use super::pool::Key;
use super::server::{self, Counted, ResponseBody};
use super::upstream::{ForwardError, SendRequest, Sender, forward};
use crate::proxy::ProxyContext;
use crate::proxy::metrics::{RequestRecorder, TcpLabels};
use crate::proxy::outbound::{open_endpoint, source_labels};
use crate::route::RequestView;
use crate::snapshot::{Endpoint, OutboundRoute, RequestRoute, Service, SnapshotIndex};

/// The body of every request the outbound side forwards.
pub type RequestBody = Counted<Incoming>;

/// One downstream (app) connection's state, shared by its requests.
struct Outbound {
    ctx: Arc<ProxyContext>,
    /// The Service address the app dialled: each request is routed from it with the current
    /// config, so endpoint changes reach open keep-alive and HTTP/2 connections.
    orig: SocketAddr,
    accepted_with: Arc<SnapshotIndex>,
    conn: Arc<ConnLog>,
    /// The recorder of each label set this connection's requests were reported under.
    recorders: Mutex<Vec<(TcpLabels, Arc<Mutex<RequestRecorder>>)>>,
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
    let conn = Arc::new(ConnLog {
        peer: peer.unwrap_or(orig),
        destination: orig,
        sni: None,
        source_principal: None,
        destination_principal: None,
    });
    let state = Arc::new(Outbound {
        ctx: ctx.clone(),
        orig,
        accepted_with: snapshot,
        conn,
        recorders: Mutex::new(Vec::new()),
    });
    server::serve_pipeline(ctx, io, state, "outbound").await;
}

impl server::Pipeline for Outbound {
    async fn handle(&self, req: Request<Incoming>) -> Response<ResponseBody> {
        let (exchange, parts, body) = Exchange::begin(&self.ctx, req);
        let snapshot = self
            .ctx
            .snapshot()
            .unwrap_or_else(|| self.accepted_with.clone());
        let (service, candidates) = match snapshot.route(self.orig) {
            // A Service address: its routes (if any) pick the destination.
            OutboundRoute::Service { service, endpoints } => {
                let path = normalized_path(&parts).unwrap_or(Cow::Borrowed(parts.uri.path()));
                let headers = HeaderView::new(&parts.headers);
                let view = RequestView {
                    method: parts.method.as_str(),
                    path: &path,
                    query: parts.uri.query(),
                    port: self.orig.port(),
                    headers: &headers,
                };
                match snapshot.route_request(service, endpoints, &view) {
                    RequestRoute::Endpoints { service, endpoints } => (Some(service), endpoints),
                    RequestRoute::NoRoute => {
                        let record = self.no_upstream(&snapshot, service);
                        let why = Why {
                            flags: "NR",
                            details: Some("route_not_found"),
                            failure: None,
                        };
                        return exchange.local(StatusCode::NOT_FOUND, "", &record, why);
                    }
                    RequestRoute::NoDestination(what) => {
                        tracing::debug!(route = %what, "route destination not in the config");
                        let record = self.no_upstream(&snapshot, service);
                        let why = Why {
                            flags: "NR",
                            details: Some("cluster_not_found"),
                            failure: None,
                        };
                        return exchange.local(StatusCode::SERVICE_UNAVAILABLE, "", &record, why);
                    }
                }
            }
            // A pod dialled by its address goes to that pod.
            OutboundRoute::Endpoint { service, endpoint } => (Some(service), vec![endpoint]),
            // The Service went away while the connection was open.
            OutboundRoute::Passthrough | OutboundRoute::Refused => (None, Vec::new()),
        };
        let cluster = match service {
            Some(s) => format!("outbound|{}||{}", self.orig.port(), s.name),
            None => "BlackHoleCluster".to_string(),
        };
        let h2 = parts.version == Version::HTTP_2;
        let mut failed = None;
        let attempts = self.ctx.settings.connect_attempts.max(1);
        for ep in candidates.into_iter().take(attempts) {
            match self.connection(&snapshot, ep, service, h2).await {
                Ok((key, sender, mtls)) => {
                    let labels = source_labels(&self.ctx, &snapshot, service, Some(ep), mtls);
                    let upstream = UpstreamLog {
                        host: Some(ep.addr()),
                        cluster,
                    };
                    let record = self.record(labels, upstream);
                    let picked = Picked {
                        outbound: self,
                        snapshot: &snapshot,
                        endpoint: ep,
                        service,
                        key,
                        sender: tokio::sync::Mutex::new(Some(sender)),
                    };
                    let request = Request::from_parts(parts, body);
                    let authority = service.map_or_else(
                        || ep.addr().to_string(),
                        |s| format!("{}:{}", s.name, self.orig.port()),
                    );
                    let idle = self.ctx.settings.idle_timeout;
                    return match forward(&picked, request, &authority, idle).await {
                        Ok(resp) => exchange.respond(resp, record),
                        Err(e) => {
                            tracing::debug!(endpoint = %ep.addr(), error = %e, "outbound request failed");
                            exchange.failed(&e, &record)
                        }
                    };
                }
                Err(e) => {
                    tracing::debug!(endpoint = %ep.addr(), error = %e, "outbound endpoint unreachable");
                    failed = Some((ep, e));
                }
            }
        }
        match failed {
            Some((ep, e)) => {
                let labels = source_labels(&self.ctx, &snapshot, service, Some(ep), false);
                let upstream = UpstreamLog {
                    host: Some(ep.addr()),
                    cluster,
                };
                exchange.failed(&e, &self.record(labels, upstream))
            }
            None => {
                let labels = source_labels(&self.ctx, &snapshot, service, None, false);
                let record = self.record(
                    labels,
                    UpstreamLog {
                        host: None,
                        cluster,
                    },
                );
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
                exchange.local(status, text, &record, why)
            }
        }
    }
}

impl Outbound {
    /// A connection to `ep` able to carry the request: pooled, or opened now.
    async fn connection(
        &self,
        snapshot: &SnapshotIndex,
        ep: &Endpoint,
        service: Option<&Service>,
        h2: bool,
    ) -> Result<(Key, Sender<RequestBody>, bool), ForwardError> {
        let identity = match ep.security() {
            crate::snapshot::UpstreamSecurity::Mtls { identity } => Some(identity),
            crate::snapshot::UpstreamSecurity::Plaintext => None,
        };
        let mtls = identity.is_some();
        let key = Key {
            addr: ep.addr(),
            identity,
            service: service.map(|s| s.name.clone()),
        };
        let connect = || self.open(snapshot, ep, service);
        let sender = self.ctx.outbound_pool.get(&key, h2, connect).await?;
        Ok((key, sender, mtls))
    }

    /// A new connection to `ep`, ready for HTTP (TLS done, peer metadata sent).
    async fn open(
        &self,
        snapshot: &SnapshotIndex,
        ep: &Endpoint,
        service: Option<&Service>,
    ) -> io::Result<crate::proxy::outbound::Upstream> {
        open_endpoint(&self.ctx, snapshot, ep, service)
            .await
            .map_err(|r| io::Error::other(r.metric_label()))
    }

    /// Where a request that found no upstream is recorded: under the Service dialled.
    fn no_upstream(&self, snapshot: &SnapshotIndex, service: &Service) -> Record {
        let labels = source_labels(&self.ctx, snapshot, Some(service), None, false);
        let cluster = format!("outbound|{}||{}", self.orig.port(), service.name);
        self.record(
            labels,
            UpstreamLog {
                host: None,
                cluster,
            },
        )
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

/// The connection picked for one request, sent on once (with what it takes to open another
/// if that one was closing).
struct Picked<'a> {
    outbound: &'a Outbound,
    snapshot: &'a SnapshotIndex,
    endpoint: &'a Endpoint,
    service: Option<&'a Service>,
    key: Key,
    sender: tokio::sync::Mutex<Option<Sender<RequestBody>>>,
}

impl SendRequest<RequestBody> for Picked<'_> {
    async fn send(&self, req: Request<RequestBody>) -> Result<Response<Incoming>, ForwardError> {
        let sender = self
            .sender
            .lock()
            .await
            .take()
            .ok_or(ForwardError::NotSent)?;
        let connect = || {
            self.outbound
                .open(self.snapshot, self.endpoint, self.service)
        };
        let pool = &self.outbound.ctx.outbound_pool;
        pool.send(&self.key, sender, req, connect).await
    }
}
