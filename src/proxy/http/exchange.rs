//! One request's bookkeeping from its arrival to the end of its response, the same on the
//! inbound and the outbound side: a request id for a request without one (as Envoy's
//! connection manager adds it, the app sees it), the request's size, the proxy's own replies
//! (gRPC-shaped for gRPC), and at the response's last byte `istio_requests_total`, the
//! request histograms and, when the config turns them on, an access log line.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::http::request::Parts;
use hyper::{Request, Response, StatusCode, Version};
use tokio::time::Instant;

use super::authz::{self as http_authz};
use super::server::{
    self, BodyEnd, Counted, Metered, ResponseBody, request_head_size, response_head_size,
};
use super::upstream::ForwardError;
use crate::proxy::ProxyContext;
use crate::proxy::access_log::{Entry, request_id_text};
use crate::proxy::metrics::{
    RequestOutcome, RequestRecorder, Sizes, grpc_status, grpc_status_from_http, grpc_status_value,
};

/// Header names made once: a lookup by `&str` parses and classifies the name on every call.
static X_REQUEST_ID: header::HeaderName = header::HeaderName::from_static("x-request-id");
pub(super) static GRPC_STATUS: header::HeaderName = header::HeaderName::from_static("grpc-status");

/// What every access log line of one downstream connection says.
pub struct ConnLog {
    pub peer: SocketAddr,
    pub destination: SocketAddr,
    pub sni: Option<String>,
    pub source_principal: Option<String>,
    pub destination_principal: Option<String>,
}

/// Where a request went: the access log's upstream fields.
#[derive(Debug, Clone)]
pub struct UpstreamLog {
    pub host: Option<SocketAddr>,
    /// Istio's cluster name: `inbound|<port>||`, `outbound|<port>||<host>`.
    pub cluster: String,
}

/// Where one request is recorded: the series of its upstream and its log line's fields.
#[derive(Clone)]
pub struct Record {
    pub recorder: Arc<Mutex<RequestRecorder>>,
    pub conn: Arc<ConnLog>,
    pub upstream: UpstreamLog,
}

/// Why the proxy answered a request itself, for the metrics and the log line.
#[derive(Debug, Clone, Copy, Default)]
pub struct Why<'a> {
    /// Envoy's response flags (`-` when empty).
    pub flags: &'static str,
    pub details: Option<&'a str>,
    pub failure: Option<&'a str>,
}

/// One request, from its arrival until its response ends.
pub struct Exchange {
    ctx: Arc<ProxyContext>,
    start: Instant,
    grpc: bool,
    /// Size of its head as the client sent it ([`request_head_size`]).
    head: u64,
    /// Its body's bytes so far.
    received: Arc<AtomicU64>,
    /// Its gRPC messages so far (gRPC only: no allocation for other requests).
    messages: Option<Arc<AtomicU64>>,
    log: Option<RequestLog>,
    /// Flags the request earned before its answer (`DI`: a fault delayed it; `URX`: its
    /// retries were spent), joined to the answer's own.
    earlier_flags: Vec<&'static str>,
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
}

/// What the response said, for the log line.
struct Outcome<'a> {
    code: u16,
    flags: &'a str,
    details: Option<&'a str>,
    failure: Option<&'a str>,
    sent: u64,
}

impl Exchange {
    /// Takes a request as it arrives: gives it an id if it has none and counts its body.
    pub fn begin(
        ctx: &Arc<ProxyContext>,
        req: Request<Incoming>,
    ) -> (Self, Parts, Counted<Incoming>) {
        let start = Instant::now();
        let grpc = is_grpc(&req);
        let (mut parts, body) = req.into_parts();
        // The head as the client sent it (before the proxy adds an id), for istio_request_bytes.
        let head = request_head_size(&parts);
        if !parts.headers.contains_key(&X_REQUEST_ID)
            && let Some(v) = request_id_text().and_then(|id| HeaderValue::from_bytes(&id).ok())
        {
            parts.headers.insert(X_REQUEST_ID.clone(), v);
        }
        let received = Arc::new(AtomicU64::new(0));
        let log = ctx
            .access_log_format()
            .is_some()
            .then(|| RequestLog::new(&parts, SystemTime::now()));
        let messages = grpc.then(|| Arc::new(AtomicU64::new(0)));
        let mut body = Counted::new(body, received.clone());
        if let Some(messages) = &messages {
            body = body.grpc(messages.clone());
        }
        let exchange = Exchange {
            ctx: ctx.clone(),
            start,
            grpc,
            head,
            received,
            messages,
            log,
            earlier_flags: Vec::new(),
        };
        (exchange, parts, body)
    }

    pub fn is_grpc(&self) -> bool {
        self.grpc
    }

    /// Whether the access log is on for this request (what a caller computes only for it).
    pub fn logs(&self) -> bool {
        self.log.is_some()
    }

    fn sizes(&self, response: u64, response_messages: u64) -> Sizes {
        Sizes {
            request: self.head + self.received.load(Ordering::Relaxed),
            response,
            request_messages: self
                .messages
                .as_ref()
                .map_or(0, |m| m.load(Ordering::Relaxed)),
            response_messages,
        }
    }

    /// Marks the request with a flag Envoy would give it besides its answer's own.
    pub fn flag(&mut self, flag: &'static str) {
        self.earlier_flags.push(flag);
    }

    /// Envoy's flags of the answer: the earlier ones and the answer's own, joined by `,`.
    fn flags(&self, own: &'static str) -> &'static str {
        let own = if own.is_empty() { "-" } else { own };
        if self.earlier_flags.is_empty() {
            return own;
        }
        let mut all = self.earlier_flags.join(",");
        if own != "-" {
            all.push(',');
            all.push_str(own);
        }
        interned(all)
    }

    /// Answers with the proxy's own reply (`details`: why, for the log line), recorded now.
    pub fn local(
        self,
        status: StatusCode,
        body: &'static str,
        record: &Record,
        why: Why<'_>,
    ) -> Response<ResponseBody> {
        let resp = local_reply(status, body, self.grpc);
        // The proxy's own body is what the client receives (gRPC's is empty).
        let sent = if self.grpc { 0 } else { body.len() as u64 };
        self.local_response(resp, sent, record, why)
    }

    /// Answers with a reply the proxy made (`sent`: its body's length), recorded now.
    pub fn local_response(
        self,
        resp: Response<ResponseBody>,
        sent: u64,
        record: &Record,
        why: Why<'_>,
    ) -> Response<ResponseBody> {
        let flags = self.flags(why.flags);
        let code = resp.status().as_u16();
        let header = resp.headers().get(&GRPC_STATUS).map(|v| v.as_bytes());
        let outcome = RequestOutcome {
            status: code,
            grpc: self.grpc,
            grpc_status: self.grpc.then(|| grpc_status(None, header, code)),
            flags,
        };
        let sizes = self.sizes(response_head_size(resp.status(), resp.headers()) + sent, 0);
        let took = self.start.elapsed();
        if let Ok(mut r) = record.recorder.lock() {
            r.record(outcome, took, Some(sizes));
        }
        if let Some(log) = &self.log {
            let out = Outcome {
                code,
                flags,
                details: why.details,
                failure: why.failure,
                sent,
            };
            log.write(&self.ctx, record, out, self.received(), took);
        }
        resp
    }

    /// Answers a request refused before routing and policy: a CONNECT, which Envoy answers
    /// on Istio's listeners with 403 and details `upgrade_failed` (no upgrade config names
    /// it). Never a gRPC reply: the refusal is of the method, whatever the content type.
    pub fn refused_upgrade(self, record: &Record) -> Response<ResponseBody> {
        let resp = local_reply(StatusCode::FORBIDDEN, "", false);
        let why = Why {
            details: Some("upgrade_failed"),
            ..Why::default()
        };
        self.local_response(resp, 0, record, why)
    }

    /// Answers a request whose upstream gave no response (Envoy's 503 and flag).
    pub fn failed(self, e: &ForwardError, record: &Record) -> Response<ResponseBody> {
        let (details, failure) = match e {
            ForwardError::Connect(io) => (
                "upstream_reset_before_response_started{connection_failure}",
                Some(io.to_string()),
            ),
            ForwardError::Handshake(h) => (
                "upstream_reset_before_response_started{connection_failure}",
                Some(h.to_string()),
            ),
            ForwardError::Upstream(_) | ForwardError::NotSent => (
                "upstream_reset_before_response_started{connection_termination}",
                None,
            ),
        };
        self.local(
            StatusCode::SERVICE_UNAVAILABLE,
            "upstream connect error or disconnect/reset before headers",
            record,
            Why {
                flags: e.response_flag(),
                details: Some(details),
                failure: failure.as_deref(),
            },
        )
    }

    /// Hands on the upstream's response; it is recorded when its last byte has been passed
    /// to the client (or the client went away).
    pub fn respond(self, resp: Response<Incoming>, record: Record) -> Response<ResponseBody> {
        let status = resp.status().as_u16();
        let resp_head = response_head_size(resp.status(), resp.headers());
        // A trailers-only gRPC response carries its status in the headers.
        let head_grpc = resp
            .headers()
            .get(&GRPC_STATUS)
            .map(|v| grpc_status_value(v.as_bytes()));
        let grpc = self.grpc;
        let flags = self.flags("-");
        resp.map(move |body| {
            Metered::new(body, move |end: BodyEnd| {
                let took = self.start.elapsed();
                let outcome = RequestOutcome {
                    status,
                    grpc: self.grpc,
                    grpc_status: self.grpc.then(|| match end.grpc_status {
                        Some(s) => s,
                        None => head_grpc.unwrap_or_else(|| grpc_status(None, None, status)),
                    }),
                    flags,
                };
                let sizes = self.sizes(resp_head + end.data + end.trailers, end.messages);
                if let Ok(mut r) = record.recorder.lock() {
                    r.record(outcome, took, Some(sizes));
                }
                if let Some(log) = &self.log {
                    let out = Outcome {
                        code: status,
                        flags,
                        details: Some("via_upstream"),
                        failure: None,
                        sent: end.data,
                    };
                    log.write(&self.ctx, &record, out, self.received(), took);
                }
            })
            .grpc(grpc)
            .boxed_unsync()
        })
    }

    fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }
}

/// A joined flag set as a `&'static str` (metric series keep their flags by reference). The
/// sets are combinations of Envoy's few flags the proxy sets, so the table stays small.
fn interned(flags: String) -> &'static str {
    static SEEN: Mutex<BTreeSet<&'static str>> = Mutex::new(BTreeSet::new());
    let mut seen = SEEN.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(known) = seen.get(flags.as_str()) {
        return known;
    }
    let leaked: &'static str = Box::leak(flags.into_boxed_str());
    seen.insert(leaked);
    leaked
}

fn is_grpc<B>(req: &Request<B>) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

impl RequestLog {
    fn new(parts: &Parts, start: SystemTime) -> Self {
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
            request_id: header(X_REQUEST_ID.as_str()),
        }
    }

    fn write(
        &self,
        ctx: &ProxyContext,
        record: &Record,
        out: Outcome<'_>,
        received: u64,
        took: std::time::Duration,
    ) {
        let (conn, upstream) = (&record.conn, &record.upstream);
        ctx.log_access(&Entry {
            method: Some(&self.method),
            path: Some(&self.path),
            protocol: Some(self.protocol),
            response_code: out.code,
            response_flags: out.flags,
            response_code_details: out.details,
            upstream_transport_failure_reason: out.failure,
            bytes_received: received,
            bytes_sent: out.sent,
            duration: took,
            x_forwarded_for: self.x_forwarded_for.as_deref(),
            user_agent: self.user_agent.as_deref(),
            request_id: self.request_id.as_deref(),
            authority: self.authority.as_deref(),
            upstream_host: upstream.host,
            upstream_cluster: Some(&upstream.cluster),
            downstream_local_address: Some(conn.destination),
            downstream_remote_address: Some(conn.peer),
            requested_server_name: conn.sni.as_deref(),
            source_principal: conn.source_principal.as_deref(),
            destination_principal: conn.destination_principal.as_deref(),
            ..Entry::new(self.start)
        });
    }
}

/// A reply the proxy makes itself. For gRPC, as Envoy's local replies do, HTTP 200 with the
/// matching `grpc-status` (403 → 7 PERMISSION_DENIED, 503 → 14 UNAVAILABLE, 502 → 14, 400 →
/// 13 INTERNAL) and the text as `grpc-message`, in a trailers-only response; otherwise the
/// status with a text/plain body.
pub fn local_reply(status: StatusCode, body: &'static str, grpc: bool) -> Response<ResponseBody> {
    if !grpc {
        return http_authz::local_response(status, body).map(server::full);
    }
    grpc_reply(grpc_status_from_http(status.as_u16()), body)
}

/// A trailers-only gRPC answer: HTTP 200 with `grpc-status` `code` and `grpc-message`.
pub fn grpc_reply(code: i32, message: &'static str) -> Response<ResponseBody> {
    let mut resp = Response::new(server::full(""));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    h.insert(GRPC_STATUS.clone(), HeaderValue::from(code));
    h.insert("grpc-message", HeaderValue::from_static(message));
    resp
}
