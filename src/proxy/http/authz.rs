//! Authorization of HTTP requests: what the evaluator ([`crate::authz`]) is told about a
//! request (a pure mapping from the connection and the request head), and the answers the
//! proxy gives when it refuses one (403 `RBAC: access denied`, as Envoy's RBAC filter says
//! it; 400 for a path that cannot be normalized).

use std::borrow::Cow;
use std::net::SocketAddr;

use hyper::header::{self, HeaderMap, HeaderName};
use hyper::http::request::Parts;
use hyper::http::uri::PathAndQuery;
use hyper::{Method, StatusCode};

use crate::authz::{self, Decision, Headers, Http, Policy, Reason, Request, Verdict};

/// Envoy's body for a request its RBAC filter denies; clients and tests match on it.
pub const DENIED_BODY: &str = "RBAC: access denied";

/// What the connection tells the evaluator, fixed for its lifetime.
#[derive(Debug, Clone)]
pub struct ConnectionFacts {
    /// The peer's SPIFFE identity without `spiffe://`; None on plaintext.
    pub principal: Option<String>,
    pub peer: SocketAddr,
    /// The original destination (pod IP and container port).
    pub destination: SocketAddr,
    pub sni: Option<String>,
}

impl ConnectionFacts {
    /// The request for a TCP connection (no HTTP attributes).
    pub fn tcp_request(&self) -> Request<'_> {
        Request {
            principal: self.principal.as_deref(),
            source_ip: self.peer.ip(),
            remote_ip: self.peer.ip(),
            destination_ip: self.destination.ip(),
            destination_port: self.destination.port(),
            sni: self.sni.as_deref(),
            http: None,
        }
    }
}

/// Request headers as the evaluator reads them: by lower-case name, several values joined
/// by `,`. Values that are one valid UTF-8 string are borrowed; the rest (repeated headers,
/// bytes outside UTF-8, read lossily so a DENY on them still sees them) are joined once.
pub struct HeaderView<'a> {
    map: &'a HeaderMap,
    joined: Vec<(&'a HeaderName, String)>,
}

impl<'a> HeaderView<'a> {
    pub fn new(map: &'a HeaderMap) -> Self {
        // One pass over the fields (a name's values come one after another) finds the names
        // to join, rather than a lookup per name: most requests have none.
        let mut to_join: Vec<&'a HeaderName> = Vec::new();
        let mut previous: Option<&'a HeaderName> = None;
        for (name, value) in map.iter() {
            let repeated = previous == Some(name);
            if (repeated || std::str::from_utf8(value.as_bytes()).is_err())
                && to_join.last() != Some(&name)
            {
                to_join.push(name);
            }
            previous = Some(name);
        }
        let joined = to_join
            .into_iter()
            .map(|name| {
                let all: Vec<Cow<'_, str>> = map
                    .get_all(name)
                    .iter()
                    .map(|v| String::from_utf8_lossy(v.as_bytes()))
                    .collect();
                (name, all.join(","))
            })
            .collect();
        HeaderView { map, joined }
    }
}

impl Headers for HeaderView<'_> {
    fn get(&self, name: &str) -> Option<&str> {
        if let Some((_, v)) = self.joined.iter().find(|(n, _)| n.as_str() == name) {
            return Some(v);
        }
        std::str::from_utf8(self.map.get(name)?.as_bytes()).ok()
    }
}

/// The host a request names: `:authority` (HTTP/2, or an absolute-form HTTP/1 target), else
/// the `Host` header; empty when neither is present.
pub fn request_host(parts: &Parts) -> &str {
    parts
        .uri
        .authority()
        .map(|a| a.as_str())
        .or_else(|| {
            parts
                .headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
        })
        .unwrap_or("")
}

/// The path the policy sees and the app receives: normalized, without the query. A CONNECT
/// has no path (its target is an authority): the empty string, which no path rule but `*`
/// matches.
pub fn normalized_path(parts: &Parts) -> Result<Cow<'_, str>, authz::path::PathError> {
    if parts.method == Method::CONNECT {
        return Ok(Cow::Borrowed(""));
    }
    authz::path::normalize(parts.uri.path())
}

/// The evaluator's view of one request. Pure: table-tested below.
pub fn request<'a>(
    conn: &'a ConnectionFacts,
    parts: &'a Parts,
    path: &'a str,
    headers: &'a HeaderView<'a>,
) -> Request<'a> {
    Request {
        http: Some(Http {
            method: parts.method.as_str(),
            host: request_host(parts),
            path,
            headers,
        }),
        ..conn.tcp_request()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the normalized path is not a valid request target")]
pub struct InvalidTarget;

/// Replaces the request's path with the normalized one, keeping the query, so the app
/// receives the path the policy saw. Fails (400) only if the result is not a valid target.
pub fn rewrite_path(parts: &mut Parts, path: &str) -> Result<(), InvalidTarget> {
    if parts.method == Method::CONNECT || parts.uri.path() == path {
        return Ok(());
    }
    let target = match parts.uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    };
    let pq = PathAndQuery::try_from(target).map_err(|_| InvalidTarget)?;
    let mut uri = std::mem::take(&mut parts.uri).into_parts();
    uri.path_and_query = Some(pq);
    parts.uri = hyper::Uri::from_parts(uri).map_err(|_| InvalidTarget)?;
    Ok(())
}

/// Logs what AUDIT and dry-run policies made of a request; neither changes the verdict.
pub fn log_decision(policies: &[Policy], decision: &Decision, what: &dyn std::fmt::Display) {
    let name = |reason: Reason| match reason {
        Reason::Denied(r) | Reason::Allowed(r) => policies
            .get(r.policy)
            .map(|p| p.name.as_str())
            .unwrap_or("?"),
        Reason::NoAllowPolicy => "(no ALLOW policy)",
        Reason::NoAllowMatched => "(no ALLOW policy matched)",
    };
    if let Some(audit) = decision.audit {
        let policy = policies
            .get(audit.policy)
            .map(|p| p.name.as_str())
            .unwrap_or("?");
        tracing::info!(%policy, rule = audit.rule, request = %what, "authorization audit");
    }
    if let Some(dry) = decision.dry_run {
        let verdict = match dry.verdict {
            Verdict::Allow => "allow",
            Verdict::Deny => "deny",
        };
        tracing::info!(
            policy = name(dry.reason),
            dry_run_verdict = verdict,
            request = %what,
            "authorization dry-run"
        );
    }
    if decision.verdict == Verdict::Deny {
        tracing::debug!(policy = name(decision.reason), request = %what, "authorization denied");
    }
}

/// A response the proxy makes itself: `status`, text/plain `body`.
pub fn local_response(status: StatusCode, body: &'static str) -> hyper::Response<&'static str> {
    let mut resp = hyper::Response::new(body);
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(principal: Option<&str>) -> ConnectionFacts {
        ConnectionFacts {
            principal: principal.map(str::to_string),
            peer: "198.18.0.1:40000".parse().unwrap(),
            destination: "198.18.0.2:8082".parse().unwrap(),
            sni: None,
        }
    }

    #[test]
    fn an_http1_request_maps_to_the_evaluator_request() {
        let conn = facts(Some("cluster.local/ns/demo/sa/client"));
        let req = hyper::Request::post("/public/%2e%2e/v1/charges?id=7")
            .header("host", "api.demo:80")
            .header("x-tenant", "a")
            .header("x-tenant", "b")
            .header("x-raw", &b"caf\xc3\xa9"[..])
            .body(())
            .unwrap();
        let (parts, ()) = req.into_parts();
        let path = normalized_path(&parts).unwrap();
        assert_eq!(path, "/v1/charges");
        let headers = HeaderView::new(&parts.headers);
        let r = request(&conn, &parts, &path, &headers);
        assert_eq!(r.principal, Some("cluster.local/ns/demo/sa/client"));
        assert_eq!(r.source_ip.to_string(), "198.18.0.1");
        assert_eq!(r.remote_ip.to_string(), "198.18.0.1");
        assert_eq!(r.destination_ip.to_string(), "198.18.0.2");
        assert_eq!(r.destination_port, 8082);
        assert_eq!(r.sni, None);
        let http = r.http.unwrap();
        assert_eq!(http.method, "POST");
        assert_eq!(http.host, "api.demo:80");
        assert_eq!(http.path, "/v1/charges");
        assert_eq!(http.headers.get("x-tenant"), Some("a,b"));
        assert_eq!(http.headers.get("x-raw"), Some("café"));
        assert_eq!(http.headers.get("host"), Some("api.demo:80"));
        assert_eq!(http.headers.get("x-absent"), None);
    }

    #[test]
    fn a_header_repeated_among_others_is_read_joined_in_order() {
        let mut map = HeaderMap::new();
        map.append("x-tenant", "a".parse().unwrap());
        map.append("x-other", "1".parse().unwrap());
        map.append("x-tenant", "b".parse().unwrap());
        map.append(
            "x-last",
            hyper::header::HeaderValue::from_bytes(b"\xff").unwrap(),
        );
        map.append("x-tenant", "c".parse().unwrap());
        let view = HeaderView::new(&map);
        assert_eq!(view.get("x-tenant"), Some("a,b,c"));
        assert_eq!(view.get("x-other"), Some("1"));
        assert_eq!(view.get("x-last"), Some("\u{fffd}"));
        assert_eq!(view.joined.len(), 2);
    }

    #[test]
    fn an_http2_request_names_its_authority_and_plaintext_has_no_principal() {
        let conn = facts(None);
        let req = hyper::Request::get("http://api.demo/v1/charges")
            .version(hyper::Version::HTTP_2)
            .body(())
            .unwrap();
        let (parts, ()) = req.into_parts();
        let headers = HeaderView::new(&parts.headers);
        let path = normalized_path(&parts).unwrap();
        let r = request(&conn, &parts, &path, &headers);
        assert_eq!(r.principal, None);
        assert_eq!(r.http.unwrap().host, "api.demo");
        assert_eq!(r.http.unwrap().method, "GET");
    }

    #[test]
    fn the_forwarded_target_is_the_normalized_path_with_its_query() {
        let req = hyper::Request::get("/a/./b//c/%2e%2e/d?x=1&y=%2F")
            .body(())
            .unwrap();
        let (mut parts, ()) = req.into_parts();
        let path = normalized_path(&parts).unwrap().into_owned();
        assert_eq!(path, "/a/b/d");
        rewrite_path(&mut parts, &path).unwrap();
        assert_eq!(parts.uri.to_string(), "/a/b/d?x=1&y=%2F");
        let bad = hyper::Request::get("/a%zz").body(()).unwrap();
        assert!(normalized_path(&bad.into_parts().0).is_err());
    }
}
