//! The inbound request pipeline on a terminated HTTP connection: normalize the path (refuse
//! what cannot be normalized), authorize against the policies selecting this workload (DENY,
//! ALLOW; AUDIT and dry-run only logged), and forward with the normalized path to the app;
//! each request is recorded by its [`Exchange`] (destination reporter).

use std::borrow::Cow;
use std::sync::{Arc, Mutex, PoisonError};

use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite};

use super::authz::{
    self as http_authz, ConnectionFacts, DENIED_BODY, HeaderView, log_decision, normalized_path,
    rewrite_path,
};
use super::exchange::{ConnLog, Exchange, Record, UpstreamLog, Why};
use super::server::{self, Counted, ResponseBody};
use super::upstream::{TcpConnector, Upstream, forward};
use crate::authz::{Verdict, evaluate_prefiltered};
use crate::proxy::ProxyContext;
use crate::proxy::access_log::{denial_details, known};
use crate::proxy::inbound_labels::LabelSource;
use crate::proxy::metrics::TcpLabels;
use crate::snapshot::SnapshotIndex;

/// One terminated connection's state, shared by its requests.
struct Inbound {
    ctx: Arc<ProxyContext>,
    facts: ConnectionFacts,
    /// What the connection brings to its metric labels besides the config.
    labels: LabelSource,
    upstream: Upstream<TcpConnector, Counted<Incoming>>,
    /// `:authority` for an HTTP/2 request that names none.
    app_authority: String,
    /// The config the last request ran under, and where requests are recorded under it.
    current: Mutex<Current>,
}

/// Each request reads the current config, so a new policy applies to open keep-alive and
/// HTTP/2 connections too, and is counted under the labels that config gives the connection
/// (a Service the client names but our config did not list yet, when it was accepted).
struct Current {
    snapshot: Arc<SnapshotIndex>,
    labels: TcpLabels,
    record: Record,
}

/// Serves one downstream connection (already past mTLS and peer metadata) until it closes.
pub async fn serve<I>(
    ctx: &Arc<ProxyContext>,
    io: I,
    facts: ConnectionFacts,
    app: TcpConnector,
    labels: LabelSource,
    snapshot: Arc<SnapshotIndex>,
) where
    I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let first = labels.labels(ctx, &snapshot);
    let conn = Arc::new(ConnLog {
        peer: facts.peer,
        destination: facts.destination,
        sni: facts.sni.clone(),
        source_principal: known(&first.source_principal).map(str::to_string),
        destination_principal: known(&first.destination_principal).map(str::to_string),
    });
    let record = Record {
        recorder: Arc::new(Mutex::new(ctx.metrics.request_recorder(&first))),
        conn,
        upstream: UpstreamLog {
            host: Some(app.addr),
            cluster: format!("inbound|{}||", app.addr.port()),
        },
    };
    let state = Arc::new(Inbound {
        ctx: ctx.clone(),
        app_authority: app.addr.to_string(),
        facts,
        labels,
        upstream: Upstream::new(app),
        current: Mutex::new(Current {
            snapshot,
            labels: first,
            record,
        }),
    });
    server::serve_pipeline(ctx, io, state, "inbound", None, std::time::Duration::ZERO).await;
}

impl Inbound {
    /// The current config (the last one seen, if the proxy has none now) and where a request
    /// under it is recorded: a new recorder when that config labels the connection anew.
    fn current(&self) -> (Arc<SnapshotIndex>, Record) {
        let latest = self.ctx.snapshot();
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(latest) = latest
            && !Arc::ptr_eq(&latest, &current.snapshot)
        {
            let labels = self.labels.labels(&self.ctx, &latest);
            if labels != current.labels {
                let recorder = self.ctx.metrics.request_recorder(&labels);
                current.record.recorder = Arc::new(Mutex::new(recorder));
                current.labels = labels;
            }
            current.snapshot = latest;
        }
        (current.snapshot.clone(), current.record.clone())
    }
}

impl server::Pipeline for Inbound {
    fn refuse_connect(&self, req: Request<Incoming>) -> Response<ResponseBody> {
        let (exchange, _, _) = Exchange::begin(&self.ctx, req);
        exchange.refused_upgrade(&self.current().1)
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<ResponseBody> {
        let (exchange, mut parts, body) = Exchange::begin(&self.ctx, req);
        let (snapshot, record) = self.current();
        let bad_request = |exchange: Exchange| {
            exchange.local(
                StatusCode::BAD_REQUEST,
                "Bad Request",
                &record,
                Why::default(),
            )
        };
        let normalized = match normalized_path(&parts) {
            Ok(Cow::Borrowed(_)) => None,
            Ok(Cow::Owned(p)) => Some(p),
            Err(e) => {
                tracing::debug!(path = parts.uri.path(), error = %e, "inbound request refused");
                return bad_request(exchange);
            }
        };
        let policies = snapshot.snapshot.inbound.authz.as_slice();
        let path = normalized.as_deref().unwrap_or(parts.uri.path());
        let decision = {
            let headers = HeaderView::new(&parts.headers);
            let request = http_authz::request(&self.facts, &parts, path, &headers);
            evaluate_prefiltered(snapshot.inbound_prefilter(), policies, &request)
        };
        if decision.audit.is_some()
            || decision.dry_run.is_some()
            || decision.verdict == Verdict::Deny
        {
            let what = format!("{} {path}", parts.method);
            log_decision(policies, &decision, &what);
        }
        if decision.verdict == Verdict::Deny {
            let details = exchange
                .logs()
                .then(|| denial_details(policies, decision.reason))
                .flatten();
            let why = Why {
                details: details.as_deref(),
                ..Why::default()
            };
            return exchange.local(StatusCode::FORBIDDEN, DENIED_BODY, &record, why);
        }
        if let Some(p) = &normalized
            && rewrite_path(&mut parts, p).is_err()
        {
            return bad_request(exchange);
        }
        let request = Request::from_parts(parts, body);
        let idle = self.ctx.settings.idle_timeout;
        match forward(&self.upstream, request, &self.app_authority, idle).await {
            Ok(resp) => exchange.respond(resp, record),
            Err(e) => {
                tracing::debug!(app = %self.app_authority, error = %e, "upstream request failed");
                exchange.failed(&e, &record)
            }
        }
    }
}
