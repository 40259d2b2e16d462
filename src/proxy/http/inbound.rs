//! The inbound request pipeline on a terminated HTTP connection: normalize the path (refuse
//! what cannot be normalized), authorize against the policies selecting this workload (DENY,
//! ALLOW; AUDIT and dry-run only logged), forward with the normalized path to the app, and
//! record `istio_requests_total` / `istio_request_duration_milliseconds` per request.

use std::borrow::Cow;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

use super::authz::{
    self as http_authz, ConnectionFacts, DENIED_BODY, HeaderView, log_decision, normalized_path,
    rewrite_path,
};
use super::server::{self, Observed, ResponseBody};
use super::upstream::{TcpConnector, Upstream, forward};
use crate::authz::{Verdict, evaluate};
use crate::proxy::ProxyContext;
use crate::proxy::metrics::{RequestOutcome, RequestRecorder, TcpLabels};
use crate::snapshot::SnapshotIndex;

/// One terminated connection's state, shared by its requests.
struct Inbound {
    ctx: Arc<ProxyContext>,
    /// The config when the connection was accepted; each request reads the current one, so a
    /// new policy applies to open keep-alive and HTTP/2 connections too.
    accepted_with: Arc<SnapshotIndex>,
    facts: ConnectionFacts,
    upstream: Upstream<TcpConnector, Incoming>,
    recorder: Arc<Mutex<RequestRecorder>>,
    /// `:authority` for an HTTP/2 request that names none.
    app_authority: String,
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
    let state = Arc::new(Inbound {
        ctx: ctx.clone(),
        accepted_with: snapshot,
        app_authority: app.addr.to_string(),
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
        let normalized = match normalized_path(&parts) {
            Ok(Cow::Borrowed(_)) => None,
            Ok(Cow::Owned(p)) => Some(p),
            Err(e) => {
                tracing::debug!(path = parts.uri.path(), error = %e, "inbound request refused");
                return self.local(StatusCode::BAD_REQUEST, "Bad Request", grpc, start);
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
            return self.local(StatusCode::FORBIDDEN, DENIED_BODY, grpc, start);
        }
        if let Some(p) = &normalized
            && rewrite_path(&mut parts, p).is_err()
        {
            return self.local(StatusCode::BAD_REQUEST, "Bad Request", grpc, start);
        }
        let req = Request::from_parts(parts, body);
        match forward(&self.upstream, req, &self.app_authority).await {
            Ok(resp) => {
                let outcome = RequestOutcome {
                    status: resp.status().as_u16(),
                    grpc,
                    flags: "-",
                };
                let recorder = self.recorder.clone();
                // Recorded when the last byte of the response body has been handed on.
                resp.map(move |body| {
                    Observed::new(body, move || {
                        if let Ok(mut r) = recorder.lock() {
                            r.record(outcome, start.elapsed());
                        }
                    })
                    .boxed_unsync()
                })
            }
            Err(e) => {
                tracing::debug!(app = %self.app_authority, error = %e, "upstream request failed");
                let flags = e.response_flag();
                let body = "upstream connect error or disconnect/reset before headers";
                let resp = local_reply(StatusCode::SERVICE_UNAVAILABLE, body, grpc);
                self.record(resp.status(), grpc, flags, start);
                resp
            }
        }
    }

    fn local(
        &self,
        status: StatusCode,
        body: &'static str,
        grpc: bool,
        start: Instant,
    ) -> Response<ResponseBody> {
        let resp = local_reply(status, body, grpc);
        self.record(resp.status(), grpc, "-", start);
        resp
    }

    fn record(&self, status: StatusCode, grpc: bool, flags: &'static str, start: Instant) {
        let outcome = RequestOutcome {
            status: status.as_u16(),
            grpc,
            flags,
        };
        if let Ok(mut r) = self.recorder.lock() {
            r.record(outcome, start.elapsed());
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
