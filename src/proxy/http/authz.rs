//! Authorization of HTTP requests: what the evaluator ([`crate::authz`]) is told about a
//! request (a pure mapping from the connection and the request head), the answers the proxy
//! gives when it refuses one (403 `RBAC: access denied`, as Envoy's RBAC filter says it; 400
//! for a path that cannot be normalized), and a gateway's check of its requests and
//! connections against the policies that select its pod ([`authorize_gateway`]).

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;

use hyper::header::{self, HeaderMap, HeaderName};
use hyper::http::request::Parts;
use hyper::http::uri::PathAndQuery;
use hyper::{Method, StatusCode};

use super::exchange::{Exchange, Record, Why};
use super::server::ResponseBody;
use crate::authz::{
    self, Decision, Headers, Http, Policy, Reason, Request, Verdict, evaluate_prefiltered,
};
use crate::snapshot::SnapshotIndex;

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

/// Why a gateway refuses a request before routing it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GatewayRefusal {
    /// The path cannot be normalized (or the normalized one is not a valid target): 400.
    BadRequest,
    /// A policy denied it: 403 `RBAC: access denied`; `details` is the access log's
    /// `response_code_details` when the proxy logs requests.
    Denied { details: Option<String> },
}

/// Authorizes one request a gateway listener took (after TLS termination, before routing)
/// against the policies that select the gateway's pod, as a sidecar's inbound side does: the
/// path is normalized first and, when policies apply, the request goes on with that path so
/// the Service receives the path the policy judged. With no policy the request is left as it
/// came (the gateway routes by the normalized path either way). `logs`: whether the denial's
/// access-log details are wanted.
pub fn authorize_gateway(
    facts: &ConnectionFacts,
    snapshot: &Arc<SnapshotIndex>,
    parts: &mut Parts,
    logs: bool,
) -> Result<(), GatewayRefusal> {
    let policies = snapshot.snapshot.inbound.authz.as_slice();
    if policies.is_empty() {
        return Ok(());
    }
    let normalized = match normalized_path(parts) {
        Ok(Cow::Borrowed(_)) => None,
        Ok(Cow::Owned(p)) => Some(p),
        Err(e) => {
            tracing::debug!(path = parts.uri.path(), error = %e, "gateway request refused");
            return Err(GatewayRefusal::BadRequest);
        }
    };
    let path = normalized.as_deref().unwrap_or(parts.uri.path());
    let decision = {
        let headers = HeaderView::new(&parts.headers);
        let request = Request {
            http: Some(Http {
                method: parts.method.as_str(),
                // The host the request is routed by (`shop.example.com.:443` is
                // `shop.example.com`); case is left to the matchers, which ignore it.
                host: crate::route::gateway::host_without_port(request_host(parts)),
                path,
                headers: &headers,
            }),
            ..facts.tcp_request()
        };
        evaluate_prefiltered(snapshot.inbound_prefilter(), policies, &request)
    };
    if decision.audit.is_some() || decision.dry_run.is_some() || decision.verdict == Verdict::Deny {
        let what = format!(
            "{} {path} on gateway port {}",
            parts.method,
            facts.destination.port()
        );
        log_decision(policies, &decision, &what);
    }
    if decision.verdict == Verdict::Deny {
        let details = logs
            .then(|| crate::proxy::access_log::denial_details(policies, decision.reason))
            .flatten();
        return Err(GatewayRefusal::Denied { details });
    }
    if let Some(p) = &normalized {
        rewrite_path(parts, p).map_err(|_| GatewayRefusal::BadRequest)?;
    }
    Ok(())
}

/// The gateway's answer to a request it refused before routing, recorded under `record`
/// (destination `unknown`: no route was chosen): 403 `RBAC: access denied` with the denying
/// policy in the access log's details, as a sidecar answers, or 400.
pub fn gateway_refused(
    exchange: Exchange,
    refusal: GatewayRefusal,
    record: &Record,
) -> hyper::Response<ResponseBody> {
    match refusal {
        GatewayRefusal::BadRequest => exchange.local(
            StatusCode::BAD_REQUEST,
            "Bad Request",
            record,
            Why::default(),
        ),
        GatewayRefusal::Denied { details } => {
            let why = Why {
                details: details.as_deref(),
                ..Why::default()
            };
            exchange.local(StatusCode::FORBIDDEN, DENIED_BODY, record, why)
        }
    }
}

/// Authorizes a connection a gateway's TLS PASSTHROUGH or TCP listener took, once, with the
/// connection's fields only (HTTP fields are unknown: an ALLOW rule using one matches
/// nothing, a DENY rule ignores them, as on a sidecar's TCP port). True: relay it.
pub fn authorize_gateway_connection(facts: &ConnectionFacts, snapshot: &SnapshotIndex) -> bool {
    let policies = snapshot.snapshot.inbound.authz.as_slice();
    if policies.is_empty() {
        return true;
    }
    let decision = authz::evaluate(policies, &facts.tcp_request());
    let what = format!(
        "TCP connection from {} to gateway port {}",
        facts.peer,
        facts.destination.port()
    );
    log_decision(policies, &decision, &what);
    decision.verdict == Verdict::Allow
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

    /// A gateway pod's config with these policies (istio.rs compiles them as the operator does).
    fn gateway_config(policies: &[(&str, &str)]) -> Arc<SnapshotIndex> {
        let mut snapshot: crate::snapshot::ProxySnapshot =
            serde_json::from_value(serde_json::json!({
                "schemaVersion": crate::snapshot::SNAPSHOT_SCHEMA_VERSION,
                "version": "1",
                "identity": "spiffe://cluster.local/ns/gw/sa/ingress",
                "trustDomain": "cluster.local",
                "inbound": {"defaultMode": "PERMISSIVE"}
            }))
            .unwrap();
        snapshot.inbound.authz = policies
            .iter()
            .map(|(name, yaml)| {
                let spec: crate::authz::istio::AuthorizationPolicySpec =
                    serde_yaml::from_str(yaml).unwrap();
                crate::authz::istio::compile("gw", name, &spec, &Default::default()).unwrap()
            })
            .collect();
        Arc::new(SnapshotIndex::new(snapshot))
    }

    fn gateway_facts(principal: Option<&str>, peer: &str) -> ConnectionFacts {
        ConnectionFacts {
            principal: principal.map(str::to_string),
            peer: peer.parse().unwrap(),
            destination: "198.18.3.7:8080".parse().unwrap(),
            sni: None,
        }
    }

    fn gateway_request(target: &str, host: &str) -> Parts {
        hyper::Request::get(target)
            .header("host", host)
            .body(())
            .unwrap()
            .into_parts()
            .0
    }

    #[test]
    fn a_gateway_denies_by_path_host_and_ip_block_before_routing() {
        let config = gateway_config(&[
            (
                "deny-admin",
                "action: DENY\nrules: [{to: [{operation: {paths: ['/admin*']}}]}]",
            ),
            (
                "deny-internal-host",
                "action: DENY\nrules: [{to: [{operation: {hosts: ['internal.example.com']}}]}]",
            ),
            (
                "deny-block",
                "action: DENY\nrules: [{from: [{source: {remoteIpBlocks: ['198.18.200.0/24']}}]}]",
            ),
        ]);
        let client = gateway_facts(None, "198.18.0.1:40000");
        let check = |facts: &ConnectionFacts, target: &str, host: &str| {
            let mut parts = gateway_request(target, host);
            authorize_gateway(facts, &config, &mut parts, true).map(|()| parts.uri.to_string())
        };
        assert_eq!(
            check(&client, "/shop?x=1", "shop.example.com"),
            Ok("/shop?x=1".into())
        );
        let denied = check(&client, "/admin/users", "shop.example.com").unwrap_err();
        assert_eq!(
            denied,
            GatewayRefusal::Denied {
                details: Some(
                    "rbac_access_denied_matched_policy[ns[gw]-policy[deny-admin]-rule[0]]".into()
                )
            }
        );
        // Normalized before the policy: these are /admin to it.
        for sneaky in [
            "/shop/../admin",
            "/shop/%2e%2e/admin",
            "//admin",
            "/%61dmin",
        ] {
            assert!(
                check(&client, sneaky, "shop.example.com").is_err(),
                "{sneaky}"
            );
        }
        // An allowed request goes on with the path the policy judged.
        assert_eq!(
            check(&client, "/a/./b//c?q=%2F", "shop.example.com"),
            Ok("/a/b/c?q=%2F".into())
        );
        assert_eq!(
            check(&client, "/a%zz", "shop.example.com"),
            Err(GatewayRefusal::BadRequest)
        );
        // Hosts: case-insensitive, port and trailing dot ignored, as routing reads the host.
        for host in [
            "internal.example.com",
            "INTERNAL.Example.com",
            "internal.example.com:8080",
            "internal.example.com.",
        ] {
            assert!(check(&client, "/", host).is_err(), "{host}");
        }
        // remoteIpBlocks: the TCP peer (no X-Forwarded-For is trusted).
        let outsider = gateway_facts(None, "198.18.200.9:5555");
        assert!(check(&outsider, "/shop", "shop.example.com").is_err());
        let mut forwarded = gateway_request("/shop", "shop.example.com");
        forwarded
            .headers
            .insert("x-forwarded-for", "198.18.200.9".parse().unwrap());
        assert_eq!(
            authorize_gateway(&client, &config, &mut forwarded, false),
            Ok(()),
            "X-Forwarded-For is not the client address"
        );
    }

    #[test]
    fn a_gateway_caller_without_a_mesh_certificate_has_no_principal() {
        let config = gateway_config(&[
            (
                "only-checkout",
                "rules: [{from: [{source: {principals: [cluster.local/ns/checkout/sa/api]}}]}]",
            ),
            (
                "deny-non-mesh",
                "action: DENY\nrules: [{from: [{source: {notNamespaces: [checkout, shop]}}]}]",
            ),
        ]);
        let check = |principal: Option<&str>| {
            let mut parts = gateway_request("/v1/charges", "partner.example.com");
            authorize_gateway(
                &gateway_facts(principal, "198.18.2.4:40000"),
                &config,
                &mut parts,
                false,
            )
        };
        assert_eq!(check(Some("cluster.local/ns/checkout/sa/api")), Ok(()));
        assert!(check(Some("cluster.local/ns/shop/sa/web")).is_err());
        assert!(check(Some("cluster.local/ns/other/sa/api")).is_err());
        assert!(
            check(None).is_err(),
            "plaintext, SIMPLE or MUTUAL: no principal"
        );
    }

    #[test]
    fn a_gateway_tcp_connection_is_judged_on_its_l4_fields_only() {
        let config = gateway_config(&[
            (
                "deny-block-on-443",
                "action: DENY\nrules: [{from: [{source: {ipBlocks: ['198.18.200.0/24']}}], to: [{operation: {ports: ['8443'], paths: ['/x']}}]}]",
            ),
            (
                "allow-http-only",
                "rules: [{to: [{operation: {paths: ['/public*']}}]}]",
            ),
        ]);
        let conn = |peer: &str, port: u16| ConnectionFacts {
            destination: SocketAddr::new([198, 18, 3, 7].into(), port),
            sni: Some("db.example.com".into()),
            ..gateway_facts(None, peer)
        };
        // The DENY's path is ignored on a connection (matches more): denied on 8443. Judged
        // alone too, where no ALLOW could be what denies it.
        assert!(!authorize_gateway_connection(
            &conn("198.18.200.9:1", 8443),
            &config
        ));
        let deny_only = gateway_config(&[(
            "deny-block-on-443",
            "action: DENY\nrules: [{from: [{source: {ipBlocks: ['198.18.200.0/24']}}], to: [{operation: {ports: ['8443'], paths: ['/x']}}]}]",
        )]);
        assert!(!authorize_gateway_connection(
            &conn("198.18.200.9:1", 8443),
            &deny_only
        ));
        assert!(authorize_gateway_connection(
            &conn("198.18.0.1:1", 8443),
            &deny_only
        ));
        // The only ALLOW uses a path: it matches no connection, so nothing else is allowed.
        assert!(!authorize_gateway_connection(
            &conn("198.18.0.1:1", 8443),
            &config
        ));
        let none = gateway_config(&[]);
        assert!(authorize_gateway_connection(
            &conn("198.18.200.9:1", 8443),
            &none
        ));
        let sni_only = gateway_config(&[(
            "allow-db",
            "rules: [{when: [{key: connection.sni, values: [db.example.com]}]}]",
        )]);
        assert!(authorize_gateway_connection(
            &conn("198.18.0.1:1", 15443),
            &sni_only
        ));
    }
}
