//! The inbound request pipeline on a terminated HTTP connection: normalize the path (refuse
//! what cannot be normalized), authorize against the policies selecting this workload (DENY,
//! ALLOW; AUDIT and dry-run only logged), forward with the normalized path to the app, and
//! record `istio_requests_total`, `istio_request_duration_milliseconds`,
//! `istio_request_bytes` / `istio_response_bytes` (with `grpc_response_status` for gRPC)
//! and, when the config turns them on, an access log line per request. A request without
//! `x-request-id` gets a generated one (UUID v4) that the app receives, as Envoy does.

use std::borrow::Cow;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::http::request::Parts;
use hyper::{Request, Response, StatusCode, Version};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

use super::authz::{
    self as http_authz, ConnectionFacts, DENIED_BODY, HeaderView, log_decision, normalized_path,
    rewrite_path,
};
use super::server::{
    self, BodyEnd, Counted, Metered, ResponseBody, request_head_size, response_head_size,
};
use super::upstream::{ForwardError, TcpConnector, Upstream, forward};
use crate::authz::{Verdict, evaluate};
use crate::proxy::ProxyContext;
use crate::proxy::access_log::{Entry, denial_details, known, request_id};
use crate::proxy::metrics::{
    RequestOutcome, RequestRecorder, Sizes, TcpLabels, grpc_status, grpc_status_value,
};
use crate::snapshot::SnapshotIndex;

/// One terminated connection's state, shared by its requests.
struct Inbound {
    ctx: Arc<ProxyContext>,
    /// The config when the connection was accepted; each request reads the current one, so a
    /// new policy applies to open keep-alive and HTTP/2 connections too.
    accepted_with: Arc<SnapshotIndex>,
    facts: ConnectionFacts,
    upstream: Upstream<TcpConnector, Counted<Incoming>>,
    recorder: Arc<Mutex<RequestRecorder>>,
    /// `:authority` for an HTTP/2 request that names none.
    app_authority: String,
    /// What every access log line of this connection says.
    conn_log: Arc<ConnLog>,
}

/// The connection's part of its requests' access log lines.
struct ConnLog {
    app: SocketAddr,
    cluster: String,
    peer: SocketAddr,
    destination: SocketAddr,
    sni: Option<String>,
    source_principal: Option<String>,
    destination_principal: Option<String>,
}

/// One request's part of its access log line, taken before the request is forwarded.
struct RequestLog {
    start: SystemTime,
    method: String,
    /// As the client sent it, with its query (Envoy's `X-ENVOY-ORIGINAL-PATH?:PATH`).
    path: String,
    protocol: &'static str,
    authority: Option<String>,
    user_agent: Option<String>,
    x_forwarded_for: Option<String>,
    request_id: Option<String>,
    received: Arc<AtomicU64>,
    sent: Arc<AtomicU64>,
}

/// What the response said, for the log line.
struct Outcome<'a> {
    code: u16,
    flags: &'a str,
    details: Option<&'a str>,
    failure: Option<&'a str>,
}

impl RequestLog {
    fn new(parts: &Parts, start: SystemTime, received: Arc<AtomicU64>) -> Self {
        let header = |name: &str| {
            parts
                .headers
                .get(name)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        };
        let authority = http_authz::request_host(parts);
        RequestLog {
            start,
            method: parts.method.as_str().to_string(),
            path: parts
                .uri
                .path_and_query()
                .map(|p| p.as_str().to_string())
                .unwrap_or_else(|| parts.uri.to_string()),
            protocol: match parts.version {
                Version::HTTP_09 => "HTTP/0.9",
                Version::HTTP_10 => "HTTP/1.0",
                Version::HTTP_2 => "HTTP/2",
                Version::HTTP_3 => "HTTP/3",
                _ => "HTTP/1.1",
            },
            authority: (!authority.is_empty()).then(|| authority.to_string()),
            user_agent: header("user-agent"),
            x_forwarded_for: header("x-forwarded-for"),
            request_id: header("x-request-id"),
            received,
            sent: Arc::new(AtomicU64::new(0)),
        }
    }

    fn write(
        &self,
        ctx: &ProxyContext,
        conn: &ConnLog,
        out: Outcome<'_>,
        took: std::time::Duration,
    ) {
        ctx.log_access(&Entry {
            method: Some(&self.method),
            path: Some(&self.path),
            protocol: Some(self.protocol),
            response_code: out.code,
            response_flags: out.flags,
            response_code_details: out.details,
            upstream_transport_failure_reason: out.failure,
            bytes_received: self.received.load(Ordering::Relaxed),
            bytes_sent: self.sent.load(Ordering::Relaxed),
            duration: took,
            x_forwarded_for: self.x_forwarded_for.as_deref(),
            user_agent: self.user_agent.as_deref(),
            request_id: self.request_id.as_deref(),
            authority: self.authority.as_deref(),
            upstream_host: Some(conn.app),
            upstream_cluster: Some(&conn.cluster),
            downstream_local_address: Some(conn.destination),
            downstream_remote_address: Some(conn.peer),
            requested_server_name: conn.sni.as_deref(),
            source_principal: conn.source_principal.as_deref(),
            destination_principal: conn.destination_principal.as_deref(),
            ..Entry::new(self.start)
        });
    }
}

/// Serves one downstream connection (already past mTLS and peer metadata) until it closes.
pub async fn serve<I>(
    ctx: &Arc<ProxyContext>,
    io: I,
    facts: ConnectionFacts,
    app: TcpConnector,
    labels: &TcpLabels,
    snapshot: Arc<SnapshotIndex>,
) where
    I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let conn_log = Arc::new(ConnLog {
        app: app.addr,
        cluster: format!("inbound|{}||", app.addr.port()),
        peer: facts.peer,
        destination: facts.destination,
        sni: facts.sni.clone(),
        source_principal: known(&labels.source_principal).map(str::to_string),
        destination_principal: known(&labels.destination_principal).map(str::to_string),
    });
    let state = Arc::new(Inbound {
        ctx: ctx.clone(),
        accepted_with: snapshot,
        app_authority: app.addr.to_string(),
        conn_log,
        facts,
        upstream: Upstream::new(app, ctx.settings.idle_timeout),
        recorder: Arc::new(Mutex::new(ctx.metrics.request_recorder(labels))),
    });
    let handler = move |req: Request<Incoming>| {
        let state = state.clone();
        async move { Ok::<_, Infallible>(state.handle(req).await) }
    };
    let idle = ctx.settings.idle_timeout;
    let ctx = ctx.clone();
    let drained = async move { ctx.drained().await };
    if let Err(e) = server::serve(io, handler, drained, idle).await {
        tracing::debug!(error = %e, "inbound HTTP connection ended with an error");
    }
}

const X_REQUEST_ID: &str = "x-request-id";

fn is_grpc<B>(req: &Request<B>) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

impl Inbound {
    async fn handle(&self, req: Request<Incoming>) -> Response<ResponseBody> {
        let start = Instant::now();
        let grpc = is_grpc(&req);
        let (mut parts, body) = req.into_parts();
        // The head as the client sent it (before the proxy adds an id), for istio_request_bytes.
        let head = request_head_size(&parts);
        // As Envoy's connection manager: a request without an id gets one, and the app sees it.
        if !parts.headers.contains_key(X_REQUEST_ID)
            && let Some(v) = request_id().and_then(|id| HeaderValue::from_str(&id).ok())
        {
            parts.headers.insert(X_REQUEST_ID, v);
        }
        // Request body bytes, read when the request is recorded (its response has ended).
        let received = Arc::new(AtomicU64::new(0));
        let log = self
            .ctx
            .access_log_format()
            .is_some()
            .then(|| RequestLog::new(&parts, SystemTime::now(), received.clone()));
        let body = Counted::new(body, received.clone());
        let req = Req {
            start,
            grpc,
            head,
            received,
        };
        let normalized = match normalized_path(&parts) {
            Ok(Cow::Borrowed(_)) => None,
            Ok(Cow::Owned(p)) => Some(p),
            Err(e) => {
                tracing::debug!(path = parts.uri.path(), error = %e, "inbound request refused");
                return self.local(StatusCode::BAD_REQUEST, "Bad Request", &req, log, None);
            }
        };
        let snapshot = self
            .ctx
            .snapshot()
            .unwrap_or_else(|| self.accepted_with.clone());
        let policies = snapshot.snapshot.inbound.authz.as_slice();
        let path = normalized.as_deref().unwrap_or(parts.uri.path());
        let decision = {
            let headers = HeaderView::new(&parts.headers);
            evaluate(
                policies,
                &http_authz::request(&self.facts, &parts, path, &headers),
            )
        };
        if decision.audit.is_some()
            || decision.dry_run.is_some()
            || decision.verdict == Verdict::Deny
        {
            let what = format!("{} {path}", parts.method);
            log_decision(policies, &decision, &what);
        }
        if decision.verdict == Verdict::Deny {
            let details = log
                .as_ref()
                .and_then(|_| denial_details(policies, decision.reason));
            return self.local(StatusCode::FORBIDDEN, DENIED_BODY, &req, log, details);
        }
        if let Some(p) = &normalized
            && rewrite_path(&mut parts, p).is_err()
        {
            return self.local(StatusCode::BAD_REQUEST, "Bad Request", &req, log, None);
        }
        let request = Request::from_parts(parts, body);
        match forward(&self.upstream, request, &self.app_authority).await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let resp_head = response_head_size(resp.status(), resp.headers());
                // A trailers-only gRPC response carries its status in the headers.
                let head_grpc = resp
                    .headers()
                    .get("grpc-status")
                    .map(|v| grpc_status_value(v.as_bytes()));
                let recorder = self.recorder.clone();
                let logged = log.map(|l| (l, self.ctx.clone(), self.conn_log.clone()));
                // Recorded when the last byte of the response body has been handed on.
                resp.map(move |body| {
                    Metered::new(body, move |end: BodyEnd| {
                        let took = req.start.elapsed();
                        let outcome = RequestOutcome {
                            status,
                            grpc: req.grpc,
                            grpc_status: req.grpc.then(|| match end.grpc_status {
                                Some(s) => s,
                                None => {
                                    head_grpc.unwrap_or_else(|| grpc_status(None, None, status))
                                }
                            }),
                            flags: "-",
                        };
                        let sizes = req.sizes(resp_head + end.data + end.trailers);
                        if let Ok(mut r) = recorder.lock() {
                            r.record(outcome, took, Some(sizes));
                        }
                        if let Some((log, ctx, conn)) = logged {
                            log.sent.store(end.data, Ordering::Relaxed);
                            let out = Outcome {
                                code: status,
                                flags: "-",
                                details: Some("via_upstream"),
                                failure: None,
                            };
                            log.write(&ctx, &conn, out, took);
                        }
                    })
                    .boxed_unsync()
                })
            }
            Err(e) => {
                tracing::debug!(app = %self.app_authority, error = %e, "upstream request failed");
                let flags = e.response_flag();
                let body = "upstream connect error or disconnect/reset before headers";
                let resp = local_reply(StatusCode::SERVICE_UNAVAILABLE, body, req.grpc);
                self.record(&resp, body, &req, flags);
                if let Some(log) = log {
                    let (details, failure) = match &e {
                        ForwardError::Connect(io) => (
                            "upstream_reset_before_response_started{connection_failure}",
                            Some(io.to_string()),
                        ),
                        ForwardError::Handshake(h) => (
                            "upstream_reset_before_response_started{connection_failure}",
                            Some(h.to_string()),
                        ),
                        ForwardError::Upstream(_) => (
                            "upstream_reset_before_response_started{connection_termination}",
                            None,
                        ),
                    };
                    let sent = if req.grpc { 0 } else { body.len() as u64 };
                    log.sent.store(sent, Ordering::Relaxed);
                    let out = Outcome {
                        code: resp.status().as_u16(),
                        flags,
                        details: Some(details),
                        failure: failure.as_deref(),
                    };
                    log.write(&self.ctx, &self.conn_log, out, req.start.elapsed());
                }
                resp
            }
        }
    }

    /// Answers a request the proxy refuses, recording it (`details`: why, for the log).
    fn local(
        &self,
        status: StatusCode,
        body: &'static str,
        req: &Req,
        log: Option<RequestLog>,
        details: Option<String>,
    ) -> Response<ResponseBody> {
        let resp = local_reply(status, body, req.grpc);
        self.record(&resp, body, req, "-");
        if let Some(log) = log {
            // The proxy's own body is what the client receives (gRPC's is empty).
            let sent = if req.grpc { 0 } else { body.len() as u64 };
            log.sent.store(sent, Ordering::Relaxed);
            let out = Outcome {
                code: resp.status().as_u16(),
                flags: "-",
                details: details.as_deref(),
                failure: None,
            };
            log.write(&self.ctx, &self.conn_log, out, req.start.elapsed());
        }
        resp
    }

    /// Records a reply the proxy made itself (`body`: its text, not sent for gRPC).
    fn record(&self, resp: &Response<ResponseBody>, body: &str, req: &Req, flags: &'static str) {
        let status = resp.status().as_u16();
        let header = resp.headers().get("grpc-status").map(|v| v.as_bytes());
        let outcome = RequestOutcome {
            status,
            grpc: req.grpc,
            grpc_status: req.grpc.then(|| grpc_status(None, header, status)),
            flags,
        };
        let sent = if req.grpc { 0 } else { body.len() as u64 };
        let sizes = req.sizes(response_head_size(resp.status(), resp.headers()) + sent);
        if let Ok(mut r) = self.recorder.lock() {
            r.record(outcome, req.start.elapsed(), Some(sizes));
        }
    }
}

/// What one request's metrics need, taken when it arrives.
struct Req {
    start: Instant,
    grpc: bool,
    /// Size of its head ([`request_head_size`]).
    head: u64,
    /// Its body's bytes so far.
    received: Arc<AtomicU64>,
}

impl Req {
    fn sizes(&self, response: u64) -> Sizes {
        Sizes {
            request: self.head + self.received.load(Ordering::Relaxed),
            response,
        }
    }
}

/// A reply the proxy makes itself. For gRPC, as Envoy's local replies do, HTTP 200 with the
/// matching `grpc-status` (403 → 7 PERMISSION_DENIED, 503 → 14 UNAVAILABLE, 400 → 13
/// INTERNAL) and the text as `grpc-message`, in a trailers-only response; otherwise the
/// status with a text/plain body.
pub fn local_reply(status: StatusCode, body: &'static str, grpc: bool) -> Response<ResponseBody> {
    if !grpc {
        return http_authz::local_response(status, body).map(server::full);
    }
    let code = match status {
        StatusCode::FORBIDDEN => "7",
        StatusCode::SERVICE_UNAVAILABLE => "14",
        _ => "13",
    };
    let mut resp = Response::new(server::full(""));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    h.insert("grpc-status", HeaderValue::from_static(code));
    h.insert("grpc-message", HeaderValue::from_static(body));
    resp
}
