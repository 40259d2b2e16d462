//! A route's actions ([`crate::route::action`]) applied to hyper's requests and responses: the
//! rewrite and header edits a request gets before it is sent, the header edits of its
//! response, and the proxy's own answers for a redirect, a direct response or an injected
//! fault.

use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::http::request::Parts;
use hyper::http::uri::{PathAndQuery, Uri};
use hyper::{Response, StatusCode};

use super::exchange::{grpc_reply, local_reply};
use super::server::ResponseBody;
use crate::proxy::metrics::grpc_status_from_http;
use crate::route::action::{self, Abort, DirectResponse, HeaderEdits, Redirect};
use crate::route::cors::{self, CorsPolicy, CorsRequest};
use crate::snapshot::Routed;

/// The body of a fault's abort, as Envoy's fault filter answers.
const ABORT_BODY: &str = "fault filter abort";

/// Applies header edits: removes, then sets (replacing), then adds (appending). Names and
/// values were checked when the snapshot was accepted; one that still does not parse is
/// skipped.
pub fn edit_headers(headers: &mut HeaderMap, edits: &HeaderEdits) {
    for name in &edits.remove {
        headers.remove(name.as_str());
    }
    let parsed = |(n, v): (&String, &String)| {
        Some((
            HeaderName::from_bytes(n.as_bytes()).ok()?,
            HeaderValue::from_str(v).ok()?,
        ))
    };
    for (name, value) in edits.set.iter().filter_map(parsed) {
        headers.insert(name, value);
    }
    for (name, value) in edits.add.iter().filter_map(parsed) {
        headers.append(name, value);
    }
}

/// What the destination receives: the route's rewrite, then the destination's and the route's
/// header edits (the route's last, so its `set` wins, as Envoy's enclosing levels do).
pub fn edit_request(parts: &mut Parts, routed: &Routed<'_>) {
    let actions = &routed.route.actions;
    if let Some(rewrite) = &actions.rewrite {
        if let Some(to) = &rewrite.uri {
            let path = action::rewritten_path(
                parts.uri.path(),
                parts.uri.query(),
                routed.matched.and_then(|m| m.uri.as_ref()),
                to,
            );
            set_path(&mut parts.uri, &path);
        }
        if let Some(authority) = &rewrite.authority {
            set_authority(parts, authority);
        }
    }
    edit_headers(&mut parts.headers, &routed.destination.request_headers);
    edit_headers(&mut parts.headers, &actions.request_headers);
}

/// The response's header edits: the destination's, then the route's.
pub fn edit_response<B>(resp: &mut Response<B>, routed: &Routed<'_>) {
    edit_headers(resp.headers_mut(), &routed.destination.response_headers);
    edit_headers(resp.headers_mut(), &routed.route.actions.response_headers);
}

/// The parts of a request a route's CORS policy looks at.
fn cors_request(parts: &Parts) -> CorsRequest<'_> {
    let text = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok());
    CorsRequest {
        method: parts.method.as_str(),
        origin: text(header::ORIGIN.as_str()),
        request_method: text(cors::REQUEST_METHOD),
        request_headers: text(cors::REQUEST_HEADERS),
    }
}

/// The proxy's own answer to a CORS preflight when the route's policy answers it (200, the
/// `Access-Control-Allow-*` headers, no body), as Envoy's CORS filter does; None: forward it.
pub fn cors_preflight(
    parts: &Parts,
    policy: Option<&CorsPolicy>,
) -> Option<Response<ResponseBody>> {
    let headers = policy?.preflight(&cors_request(parts))?;
    let mut resp = local_reply(StatusCode::OK, "", false);
    set_cors_headers(resp.headers_mut(), headers);
    Some(resp)
}

/// The request's `Origin` when the route has a CORS policy that allows it: what its response
/// is to be given ([`cors_response`]), kept before the request's header edits, as Envoy's
/// CORS filter reads it before the router edits the request.
pub fn cors_origin(parts: &Parts, policy: Option<&CorsPolicy>) -> Option<HeaderValue> {
    let policy = policy?;
    let origin = parts.headers.get(header::ORIGIN)?;
    policy
        .allows_origin(origin.to_str().ok()?)
        .then(|| origin.clone())
}

/// A response (forwarded, or the proxy's redirect) gets the route's CORS headers for `origin`
/// (see [`cors_origin`]), replacing the destination's, after the route's header edits.
pub fn cors_response<B>(
    resp: &mut Response<B>,
    policy: Option<&CorsPolicy>,
    origin: Option<&HeaderValue>,
) {
    let (Some(policy), Some(origin)) = (policy, origin) else {
        return;
    };
    // [`cors_origin`] found the origin allowed; it is not matched again.
    let Ok(origin) = origin.to_str() else {
        return;
    };
    set_cors_headers(resp.headers_mut(), policy.decorate_allowed(origin));
}

fn set_cors_headers(map: &mut HeaderMap, headers: cors::CorsHeaders) {
    for (name, value) in headers {
        match HeaderValue::from_str(&value) {
            Ok(v) => {
                map.insert(HeaderName::from_static(name), v);
            }
            Err(_) => tracing::debug!(name, "CORS header value is not a header value; left out"),
        }
    }
}

fn set_path(uri: &mut Uri, path_and_query: &str) {
    let Ok(pq) = PathAndQuery::try_from(path_and_query) else {
        tracing::debug!(
            path = path_and_query,
            "rewritten path does not parse; kept the original"
        );
        return;
    };
    let mut parts = std::mem::take(uri).into_parts();
    parts.path_and_query = Some(pq);
    if let Ok(u) = Uri::from_parts(parts) {
        *uri = u;
    }
}

/// The request's authority: the `Host` header, and the URI's authority when it has one (an
/// HTTP/2 request's `:authority`).
fn set_authority(parts: &mut Parts, authority: &str) {
    let Ok(value) = HeaderValue::from_str(authority) else {
        return;
    };
    if parts.uri.authority().is_some() {
        let mut uri = std::mem::take(&mut parts.uri).into_parts();
        uri.authority = authority.parse().ok();
        if let Ok(u) = Uri::from_parts(uri) {
            parts.uri = u;
        }
    }
    if parts.headers.contains_key(header::HOST) || parts.version != hyper::Version::HTTP_2 {
        parts.headers.insert(header::HOST, value);
    }
}

/// The proxy's redirect answer for `parts`: the status the route names and its `Location`.
pub fn redirect(parts: &Parts, r: &Redirect, grpc: bool) -> Response<ResponseBody> {
    let host = super::authz::request_host(parts);
    let scheme = parts.uri.scheme_str().unwrap_or("http");
    let location = action::redirect_location(r, scheme, host, parts.uri.path(), parts.uri.query());
    let status = StatusCode::from_u16(r.code).unwrap_or(StatusCode::MOVED_PERMANENTLY);
    let mut resp = local_reply(status, "", grpc);
    match HeaderValue::from_str(&location) {
        Ok(v) => {
            resp.headers_mut().insert(header::LOCATION, v);
        }
        Err(_) => tracing::debug!(%location, "redirect location is not a header value"),
    }
    resp
}

/// A route's direct response: its status and body (plain text), or for a gRPC request a
/// trailers-only answer with the status mapped as Envoy maps a local reply. Returns the
/// response and its body's length.
pub fn direct(d: &DirectResponse, grpc: bool) -> (Response<ResponseBody>, u64) {
    let status = StatusCode::from_u16(d.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if grpc {
        return (grpc_reply(grpc_status_from_http(status.as_u16()), ""), 0);
    }
    let body = d.body.clone().unwrap_or_default();
    let sent = body.len() as u64;
    let mut resp = Response::new(http_body_util::BodyExt::boxed_unsync(
        http_body_util::BodyExt::map_err(
            http_body_util::Full::new(hyper::body::Bytes::from(body)),
            |never: std::convert::Infallible| match never {},
        ),
    ));
    *resp.status_mut() = status;
    if sent > 0 {
        resp.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    }
    (resp, sent)
}

/// A fault's abort: its HTTP status, or for a gRPC request (or an abort given as a gRPC
/// status) a trailers-only gRPC answer. Returns the response and its body's length.
pub fn abort(a: &Abort, grpc: bool) -> (Response<ResponseBody>, u64) {
    let status = a.status.and_then(|s| StatusCode::from_u16(s).ok());
    match (grpc, a.grpc_status, status) {
        (false, _, Some(status)) => (
            local_reply(status, ABORT_BODY, false),
            ABORT_BODY.len() as u64,
        ),
        (_, Some(code), _) => (grpc_reply(code as i32, ABORT_BODY), 0),
        (true, None, Some(status)) => (
            grpc_reply(grpc_status_from_http(status.as_u16()), ABORT_BODY),
            0,
        ),
        (_, None, None) => (
            local_reply(StatusCode::SERVICE_UNAVAILABLE, ABORT_BODY, grpc),
            0,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::{Destination, HttpRoute, RequestMatch, StringMatch};

    fn parts(uri: &str, host: &str) -> Parts {
        let (p, ()) = hyper::Request::get(uri)
            .header("host", host)
            .header("x-debug", "1")
            .header("x-keep", "a")
            .body(())
            .unwrap()
            .into_parts();
        p
    }

    #[test]
    fn requests_get_the_rewrite_then_the_destinations_then_the_routes_edits() {
        let m = RequestMatch {
            uri: Some(StringMatch::Prefix("/v1/".into())),
            ..Default::default()
        };
        let route = HttpRoute {
            name: "shop/reviews".into(),
            actions: crate::route::Actions {
                rewrite: Some(crate::route::action::Rewrite {
                    uri: Some("/v2/".into()),
                    authority: Some("reviews-v2:9080".into()),
                }),
                request_headers: HeaderEdits {
                    set: [("x-route".to_string(), "route".to_string())].into(),
                    add: [("x-keep".to_string(), "b".to_string())].into(),
                    remove: vec!["x-debug".into()],
                },
                ..Default::default()
            },
            ..Default::default()
        };
        let dest = Destination {
            request_headers: HeaderEdits {
                set: [("x-route".to_string(), "destination".to_string())].into(),
                ..Default::default()
            },
            ..Default::default()
        };
        let routed = Routed {
            route: &route,
            matched: Some(&m),
            destination: &dest,
        };
        let mut p = parts("/v1/ratings?id=7", "reviews:9080");
        edit_request(&mut p, &routed);
        assert_eq!(p.uri.to_string(), "/v2/ratings?id=7");
        assert_eq!(p.headers["host"], "reviews-v2:9080");
        assert_eq!(p.headers["x-route"], "route", "the route's set wins");
        assert!(!p.headers.contains_key("x-debug"));
        let kept: Vec<_> = p.headers.get_all("x-keep").iter().collect();
        assert_eq!(kept, ["a", "b"]);
    }

    #[test]
    fn a_redirect_answers_with_its_code_and_location() {
        let p = parts("/old/page?x=1", "shop:8080");
        let r = Redirect {
            uri: Some("/new/page".into()),
            authority: None,
            scheme: None,
            port: None,
            code: 302,
            prefix: None,
        };
        let resp = redirect(&p, &r, false);
        assert_eq!(resp.status(), StatusCode::FOUND);
        assert_eq!(resp.headers()["location"], "http://shop:8080/new/page?x=1");
    }

    #[test]
    fn a_direct_response_answers_its_status_and_body_or_a_grpc_status() {
        let d = DirectResponse {
            status: 500,
            body: Some("no backend".into()),
        };
        let (resp, sent) = direct(&d, false);
        assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(sent, "no backend".len() as u64);
        assert_eq!(resp.headers()["content-type"], "text/plain");
        let (resp, sent) = direct(&d, true);
        assert_eq!(resp.status(), StatusCode::OK, "gRPC: trailers-only");
        assert_eq!(sent, 0);
        assert_eq!(
            resp.headers()["grpc-status"],
            grpc_status_from_http(500).to_string().as_str()
        );
    }

    #[test]
    fn aborts_answer_http_or_grpc_as_envoys_fault_filter_does() {
        let http = Abort {
            status: Some(503),
            grpc_status: None,
            per_million: 1,
        };
        let (resp, len) = abort(&http, false);
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(len, ABORT_BODY.len() as u64);
        let (resp, _) = abort(&http, true);
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()["grpc-status"], "14");
        let grpc = Abort {
            status: None,
            grpc_status: Some(7),
            per_million: 1,
        };
        let (resp, _) = abort(&grpc, true);
        assert_eq!(resp.headers()["grpc-status"], "7");
    }

    #[test]
    fn a_cors_route_answers_an_allowed_preflight_and_marks_the_allowed_origins_response() {
        let route = HttpRoute {
            name: "shop/reviews".into(),
            actions: crate::route::Actions {
                cors: Some(crate::route::cors::CorsPolicy {
                    allow_origins: vec![StringMatch::Exact("https://shop.example".into())],
                    allow_methods: vec!["GET".into(), "POST".into()],
                    expose_headers: vec!["x-served-by".into()],
                    allow_credentials: true,
                    max_age_secs: Some(60),
                    ..Default::default()
                }),
                response_headers: HeaderEdits {
                    set: [(
                        "access-control-allow-origin".to_string(),
                        "https://edited.example".to_string(),
                    )]
                    .into(),
                    ..Default::default()
                },
                ..Default::default()
            },
            ..Default::default()
        };
        let dest = Destination::default();
        let routed = Routed {
            route: &route,
            matched: None,
            destination: &dest,
        };
        let request = |method: &str, origin: &str, asked: Option<&str>| {
            let mut b = hyper::Request::builder()
                .method(method)
                .uri("/reviews")
                .header("origin", origin);
            if let Some(m) = asked {
                b = b.header("access-control-request-method", m);
            }
            b.body(()).unwrap().into_parts().0
        };
        let cors = routed.route.actions.cors.as_ref();
        // An allowed preflight: the proxy's 200 with the allow headers.
        let resp = cors_preflight(
            &request("OPTIONS", "https://shop.example", Some("POST")),
            cors,
        )
        .expect("answered by the proxy");
        assert_eq!(resp.status(), StatusCode::OK);
        let h = resp.headers();
        assert_eq!(h["access-control-allow-origin"], "https://shop.example");
        assert_eq!(h["access-control-allow-methods"], "GET,POST");
        assert_eq!(h["access-control-allow-credentials"], "true");
        assert_eq!(h["access-control-max-age"], "60");
        // Another origin's preflight and an actual request are forwarded.
        let evil = request("OPTIONS", "https://evil.example", Some("POST"));
        assert!(cors_preflight(&evil, cors).is_none());
        assert_eq!(cors_origin(&evil, cors), None);
        let get = request("GET", "https://shop.example", None);
        assert!(cors_preflight(&get, cors).is_none());
        // Its response: the route's edits, then CORS over them (Envoy's encode order).
        let origin = cors_origin(&get, cors);
        let mut resp = hyper::Response::new(());
        resp.headers_mut()
            .insert("access-control-allow-origin", HeaderValue::from_static("*"));
        edit_response(&mut resp, &routed);
        cors_response(&mut resp, cors, origin.as_ref());
        let h = resp.headers();
        assert_eq!(h["access-control-allow-origin"], "https://shop.example");
        assert_eq!(h["access-control-allow-credentials"], "true");
        assert_eq!(h["access-control-expose-headers"], "x-served-by");
        // A response to a request from no allowed origin is left as it came.
        let mut resp = hyper::Response::new(());
        cors_response(&mut resp, cors, None);
        assert!(resp.headers().is_empty());
    }
}
