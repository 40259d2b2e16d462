//! The proxy's small HTTP servers: readiness on 15021, Prometheus stats and app probes on
//! 15020, and the admin endpoints on 127.0.0.1:15000. Plain HTTP/1.1 through hyper; each
//! request is answered from the context without blocking the data path.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use super::ProxyContext;
use super::app_probe::AppProbers;
use crate::contract::{PATH_APP_HEALTH_PREFIX, PATH_READY, PATH_STATS};

/// A stuck HTTP client must not hold a connection forever.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Which server a listener is; each answers only its own paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Server {
    Health,
    Stats,
    Admin,
}

pub async fn serve(
    ctx: Arc<ProxyContext>,
    listener: TcpListener,
    server: Server,
    probers: Arc<AppProbers>,
) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            // Health keeps answering while draining (it then says 503); the others stop.
            _ = ctx.drained(), if server != Server::Health => return,
        };
        let Ok((stream, _)) = accepted else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let ctx = ctx.clone();
        let probers = probers.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let ctx = ctx.clone();
                let probers = probers.clone();
                async move { Ok::<_, Infallible>(handle(&ctx, server, &probers, req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn reply(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        resp.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    resp
}

fn json(value: &serde_json::Value) -> Response<Full<Bytes>> {
    match serde_json::to_vec_pretty(value) {
        Ok(body) => reply(StatusCode::OK, "application/json", body),
        Err(e) => reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain",
            e.to_string(),
        ),
    }
}

async fn handle(
    ctx: &ProxyContext,
    server: Server,
    probers: &AppProbers,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "GET only\n");
    }
    let path = req.uri().path();
    match (server, path) {
        (Server::Health, PATH_READY) => match ctx.readiness() {
            Ok(()) => reply(StatusCode::OK, "text/plain", "ready\n"),
            Err(why) => reply(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                format!("{why}\n"),
            ),
        },
        (Server::Stats, PATH_STATS) => {
            let accept = req.headers().get(hyper::header::ACCEPT);
            match super::metrics::exposition(&ctx.registry, accept.and_then(|v| v.to_str().ok())) {
                Ok((content_type, text)) => reply(StatusCode::OK, content_type, text),
                Err(e) => reply(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain",
                    e.to_string(),
                ),
            }
        }
        (Server::Stats, p) if p.starts_with(PATH_APP_HEALTH_PREFIX) => {
            let rest = &p[PATH_APP_HEALTH_PREFIX.len()..];
            let Some((container, kind)) = rest.split_once('/') else {
                return reply(
                    StatusCode::NOT_FOUND,
                    "text/plain",
                    "want /app-health/<container>/<livez|readyz|startupz>\n",
                );
            };
            let ip = ctx.settings.pod_ip;
            match probers.probe(container, kind, ip).await {
                Some(Ok(())) => reply(StatusCode::OK, "text/plain", "ok\n"),
                Some(Err(why)) => reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    format!("{why}\n"),
                ),
                None => reply(
                    StatusCode::NOT_FOUND,
                    "text/plain",
                    format!("no {kind} probe for container {container:?}\n"),
                ),
            }
        }
        (Server::Admin, "/config_dump") => {
            let snapshot = ctx.snapshot();
            // A gateway's private keys never leave the proxy, even on loopback.
            let shown = snapshot.as_ref().map(|s| {
                let mut shown = s.snapshot.clone();
                for l in shown.gateway.iter_mut().flat_map(|g| &mut g.listeners) {
                    for t in &mut l.tls {
                        *t = t.redacted();
                    }
                }
                // Nor do the client keys of TLS origination (DestinationRule MUTUAL).
                for c in shown.credentials.values_mut() {
                    if c.private_key.is_some() {
                        c.private_key = Some("(redacted)".into());
                    }
                }
                shown
            });
            json(&serde_json::json!({
                "version": snapshot.as_ref().map(|s| s.version().to_string()),
                "snapshot": shown,
                "activeConnections": ctx.active_connections(),
            }))
        }
        (Server::Admin, "/certs") => {
            let tls = ctx.tls();
            json(&serde_json::json!({
                "certificate": tls.as_ref().map(|t| t.cert.summary()),
            }))
        }
        (Server::Admin, "/ready") => match ctx.readiness() {
            Ok(()) => reply(StatusCode::OK, "text/plain", "ready\n"),
            Err(why) => reply(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                format!("{why}\n"),
            ),
        },
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
    }
}
