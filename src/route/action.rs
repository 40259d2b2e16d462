//! What a route does to a request besides choosing its destination, as the snapshot carries
//! it and as pure decisions the proxy (and the CLI) take from it: Istio's `redirect`,
//! `rewrite`, `headers`, `fault`, `timeout`, `retries`, `mirror`/`mirrors` and
//! `directResponse` of an `HTTPRoute`. Kube-free and
//! free of HTTP types: the proxy applies the outcome to its requests.
//!
//! ```json
//! "timeoutMs": 2000,
//! "retries": {"attempts": 3, "perTryTimeoutMs": 500, "on": ["5xx", "connect-failure"], "statusCodes": [409]},
//! "fault": {"abort": {"status": 503, "perMillion": 500000}},
//! "rewrite": {"uri": "/v2/", "authority": "reviews-v2"},
//! "requestHeaders": {"set": {"x-route": "canary"}, "remove": ["x-debug"]}
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::model::StringMatch;

/// Most retries one request may get (Envoy has no hard limit; a route asking for more is
/// refused: each retry is another request on the destination).
pub const MAX_RETRY_ATTEMPTS: u32 = 10;
/// Envoy's retry back-off: a random wait in `[0, base * (2^n - 1)]`, capped.
pub const RETRY_BACKOFF_BASE_MS: u64 = 25;
pub const RETRY_BACKOFF_MAX_MS: u64 = 250;
/// A whole share, for percentages kept as integers (`perMillion`), so tables compare exactly.
pub const PER_MILLION: u32 = 1_000_000;

/// A route's actions. Every field is optional; an empty `Actions` changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Actions {
    /// Answer with a redirect instead of forwarding (the route then has no destinations).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect: Option<Redirect>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewrite: Option<Rewrite>,
    /// The whole request's deadline, retries included (Istio: none by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// None: Istio's default policy ([`Retries::istio_default`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<Retries>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<Fault>,
    #[serde(default, skip_serializing_if = "HeaderEdits::is_empty")]
    pub request_headers: HeaderEdits,
    #[serde(default, skip_serializing_if = "HeaderEdits::is_empty")]
    pub response_headers: HeaderEdits,
    /// Copies of the request sent to other destinations, their answers discarded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mirrors: Vec<Mirror>,
    /// Answer with this status (and body) instead of forwarding, as Istio's `directResponse`
    /// and Envoy's `direct_response` do (the route then has no destinations). The Gateway
    /// API's "no valid backend: 500" is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direct_response: Option<DirectResponse>,
    /// Istio's `corsPolicy`, the Gateway API's `CORS` filter ([`super::cors`]): preflights
    /// answered by the proxy, allowed origins' responses given the `Access-Control-*` headers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cors: Option<super::cors::CorsPolicy>,
}

/// The proxy's own answer for a route: a status and an optional body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DirectResponse {
    pub status: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
}

/// Longest direct response body (Envoy's default `max_direct_response_body_size_bytes`).
pub const MAX_DIRECT_RESPONSE_BODY: usize = 4096;

/// Istio's `mirror` (+ `mirrorPercentage`) or one of `mirrors`, the Gateway API's
/// RequestMirror: a share of requests also goes, as a copy, to `destination` (its `weight`
/// unused); the copy's answer is dropped and the client never waits for it. As Envoy does,
/// the copy's authority gets `-shadow` appended to its host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Mirror {
    pub destination: super::model::Destination,
    pub per_million: u32,
}

/// Envoy's shadow authority: `-shadow` after the host, before any port.
pub fn shadow_authority(authority: &str) -> String {
    match split_host_port(authority) {
        (host, Some(port)) => format!("{host}-shadow:{port}"),
        (host, None) => format!("{host}-shadow"),
    }
}

impl Actions {
    /// The retry policy in force: the route's, else Istio's default.
    pub fn retry_policy(&self) -> Retries {
        self.retries.clone().unwrap_or_else(Retries::istio_default)
    }

    /// One line of what the route does besides routing, for `weft proxy-config routes`.
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        let percent = |pm: u32| format!("{}%", f64::from(pm) / 10_000.0);
        if let Some(r) = &self.redirect {
            parts.push(format!(
                "redirect {} {}{}",
                r.code,
                r.authority.as_deref().unwrap_or(""),
                r.uri.as_deref().unwrap_or("")
            ));
        }
        if let Some(d) = &self.direct_response {
            parts.push(format!("direct response {}", d.status));
        }
        if let Some(f) = &self.fault {
            if let Some(d) = &f.delay {
                parts.push(format!("delay {}ms {}", d.ms, percent(d.per_million)));
            }
            if let Some(a) = &f.abort {
                let what = match (a.status, a.grpc_status) {
                    (Some(s), _) => s.to_string(),
                    (None, Some(g)) => format!("grpc {g}"),
                    (None, None) => "-".into(),
                };
                parts.push(format!("abort {what} {}", percent(a.per_million)));
            }
        }
        if let Some(r) = &self.rewrite {
            let to = [r.uri.as_deref(), r.authority.as_deref()];
            parts.push(format!(
                "rewrite {}",
                to.into_iter().flatten().collect::<Vec<_>>().join(" ")
            ));
        }
        if let Some(ms) = self.timeout_ms {
            parts.push(format!("timeout {ms}ms"));
        }
        let policy = self.retry_policy();
        let on: Vec<String> = policy
            .on
            .iter()
            .filter(|o| **o != RetryOn::RetriableStatusCodes)
            .map(|o| {
                serde_json::to_value(o)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default()
            })
            .chain(policy.status_codes.iter().map(u16::to_string))
            .collect();
        match (policy.attempts, self.retries.is_some()) {
            (0, _) => parts.push("no retries".into()),
            (n, explicit) => parts.push(format!(
                "retries {n} on {}{}",
                on.join(","),
                if explicit { "" } else { " (Istio default)" }
            )),
        }
        if !self.request_headers.is_empty() || !self.response_headers.is_empty() {
            parts.push("header edits".into());
        }
        if let Some(c) = &self.cors {
            parts.push(c.summary());
        }
        for m in &self.mirrors {
            let d = &m.destination;
            let subset = d
                .subset
                .as_deref()
                .map(|s| format!("|{s}"))
                .unwrap_or_default();
            parts.push(format!(
                "mirror {}:{}{subset} {}",
                d.service,
                d.port,
                percent(m.per_million)
            ));
        }
        parts.join("; ")
    }
}

/// Istio's `HTTPRedirect`: a 3xx whose `Location` is the request's URL with the given parts
/// replaced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Redirect {
    /// The new path (the whole path, whatever the match was); the query is kept unless the
    /// new path carries one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// 301 unless given (Istio's default).
    pub code: u16,
    /// The path prefix the route matched, which `uri` replaces, the rest of the path kept
    /// (the Gateway API's `ReplacePrefixMatch`); None: `uri` is the whole path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
}

/// Istio's `HTTPRewrite`: the path (or the prefix a prefix match matched) and the authority
/// the destination receives.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rewrite {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<String>,
}

/// Istio's `Headers.HeaderOperations`, in the order the proxy applies them: remove, then
/// set (replacing), then add (appending). Names are lowercase.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HeaderEdits {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub set: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub add: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

impl HeaderEdits {
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }
}

/// Istio's `HTTPFaultInjection`: a delay and/or an abort, each for a share of requests.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Fault {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<Delay>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<Abort>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Delay {
    pub ms: u64,
    pub per_million: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Abort {
    /// The HTTP status answered; for a gRPC request Envoy maps it to a `grpc-status`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// The gRPC status answered to gRPC requests (HTTP 200, trailers-only), Istio's
    /// `grpcStatus` by name, kept as its code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_status: Option<u32>,
    pub per_million: u32,
}

/// Istio's `HTTPRetry`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Retries {
    /// Retries after the first try (0: none).
    pub attempts: u32,
    /// Each try's deadline; none: only the route's timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_try_timeout_ms: Option<u64>,
    pub on: Vec<RetryOn>,
    /// The statuses `retriable-status-codes` (and a bare status in `retryOn`) name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub status_codes: Vec<u16>,
}

/// Envoy's `x-envoy-retry-on` / `x-envoy-retry-grpc-on` conditions that Istio's `retryOn` takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RetryOn {
    /// Any 5xx, a connect failure, a reset, a refused stream or a per-try timeout.
    #[serde(rename = "5xx")]
    FiveXx,
    /// 502, 503, 504, a connect failure or a per-try timeout.
    GatewayError,
    /// The upstream reset or closed the connection before a response.
    Reset,
    ConnectFailure,
    /// 409.
    #[serde(rename = "retriable-4xx")]
    Retriable4xx,
    /// An HTTP/2 stream the upstream refused (REFUSED_STREAM: never processed).
    RefusedStream,
    /// The statuses listed in `status_codes`.
    RetriableStatusCodes,
    /// gRPC statuses, from the response's headers (trailers-only responses).
    Cancelled,
    DeadlineExceeded,
    Internal,
    ResourceExhausted,
    Unavailable,
}

impl RetryOn {
    /// Istio's `retryOn` word for the condition, None for a word Envoy does not know.
    pub fn parse(word: &str) -> Option<RetryOn> {
        serde_json::from_value(serde_json::Value::String(word.to_string())).ok()
    }
}

/// Checks what the proxy will put on the wire from a route's actions: header names are
/// tokens, values and paths hold no line breaks, shares are at most a whole.
pub fn validate(a: &Actions) -> Result<(), String> {
    validate_edits(&a.request_headers)?;
    validate_edits(&a.response_headers)?;
    if let Some(c) = &a.cors {
        super::cors::validate("cors", c)?;
    }
    let line = |what: &str, v: &str| {
        if v.is_empty() || !v.bytes().all(|b| b.is_ascii_graphic()) {
            Err(format!(
                "{what} {v:?} is empty or holds spaces or control bytes"
            ))
        } else {
            Ok(())
        }
    };
    if let Some(r) = &a.redirect {
        r.uri
            .as_deref()
            .map_or(Ok(()), |u| line("redirect uri", u))?;
        r.authority
            .as_deref()
            .map_or(Ok(()), |u| line("redirect authority", u))?;
        r.scheme
            .as_deref()
            .map_or(Ok(()), |u| line("redirect scheme", u))?;
        if !(300..400).contains(&r.code) {
            return Err(format!("redirect code {} is not a redirect", r.code));
        }
    }
    if let Some(d) = &a.direct_response {
        if !(200..600).contains(&d.status) {
            return Err(format!(
                "direct response status {} is not an HTTP status",
                d.status
            ));
        }
        if d.body
            .as_ref()
            .is_some_and(|b| b.len() > MAX_DIRECT_RESPONSE_BODY)
        {
            return Err(format!(
                "a direct response body is longer than {MAX_DIRECT_RESPONSE_BODY} bytes"
            ));
        }
        if a.redirect.is_some() {
            return Err("a route both redirects and answers directly".into());
        }
    }
    if let Some(r) = &a.rewrite {
        r.uri
            .as_deref()
            .filter(|u| !u.is_empty())
            .map_or(Ok(()), |u| line("rewrite uri", u))?;
        r.authority
            .as_deref()
            .map_or(Ok(()), |u| line("rewrite authority", u))?;
    }
    if let Some(f) = &a.fault {
        let shares = [
            f.delay.as_ref().map(|d| d.per_million),
            f.abort.as_ref().map(|x| x.per_million),
        ];
        if shares.into_iter().flatten().any(|s| s > PER_MILLION) {
            return Err("a fault share is above 100%".into());
        }
        if let Some(x) = &f.abort
            && x.status.is_some_and(|s| !(200..600).contains(&s))
        {
            return Err("a fault abort status is not an HTTP status".into());
        }
        if let Some(x) = &f.abort
            && x.grpc_status.is_some_and(|g| g > 16)
        {
            return Err("a fault abort gRPC status is not a gRPC status (0 to 16)".into());
        }
    }
    Ok(())
}

/// Header names are lowercase tokens; values hold no CR, LF or NUL.
pub fn validate_edits(e: &HeaderEdits) -> Result<(), String> {
    let token = |n: &str| {
        !n.is_empty()
            && n.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || b"!#$%&'*+-.^_`|~".contains(&b)
            })
    };
    let names = e.set.keys().chain(e.add.keys()).chain(e.remove.iter());
    if let Some(bad) = names.into_iter().find(|n| !token(n)) {
        return Err(format!("header name {bad:?} is not a lowercase token"));
    }
    if let Some((n, _)) = e
        .set
        .iter()
        .chain(e.add.iter())
        .find(|(_, v)| v.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0))
    {
        return Err(format!("the value of header {n} holds a line break or NUL"));
    }
    Ok(())
}

/// How one try ended, as far as retrying cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TryOutcome {
    /// The upstream answered with this status (and, for a trailers-only gRPC answer, this
    /// `grpc-status`).
    Response {
        status: u16,
        grpc_status: Option<i32>,
    },
    /// No connection could be opened.
    ConnectFailure,
    /// The connection failed or closed before the response head.
    Reset,
    /// An HTTP/2 stream refused by the upstream.
    RefusedStream,
    /// The per-try deadline passed before the response head.
    PerTryTimeout,
}

impl Retries {
    /// Istio's retry policy for a route that sets none: two retries on connect failures,
    /// refused streams, gRPC `cancelled`/`unavailable` and HTTP 503.
    pub fn istio_default() -> Retries {
        Retries {
            attempts: 2,
            per_try_timeout_ms: None,
            on: vec![
                RetryOn::ConnectFailure,
                RetryOn::RefusedStream,
                RetryOn::Unavailable,
                RetryOn::Cancelled,
                RetryOn::RetriableStatusCodes,
            ],
            status_codes: vec![503],
        }
    }

    /// Whether a try that ended so is tried again (attempts left permitting).
    pub fn retries(&self, outcome: TryOutcome) -> bool {
        self.on
            .iter()
            .any(|on| condition_holds(*on, outcome, &self.status_codes))
    }
}

fn condition_holds(on: RetryOn, outcome: TryOutcome, codes: &[u16]) -> bool {
    use TryOutcome as T;
    const GRPC_CANCELLED: i32 = 1;
    const GRPC_DEADLINE_EXCEEDED: i32 = 4;
    const GRPC_RESOURCE_EXHAUSTED: i32 = 8;
    const GRPC_INTERNAL: i32 = 13;
    const GRPC_UNAVAILABLE: i32 = 14;
    let grpc = |want: i32| matches!(outcome, T::Response { grpc_status: Some(g), .. } if g == want);
    match on {
        RetryOn::FiveXx => match outcome {
            T::Response { status, .. } => (500..600).contains(&status),
            _ => true,
        },
        RetryOn::GatewayError => match outcome {
            T::Response { status, .. } => matches!(status, 502..=504),
            T::ConnectFailure | T::PerTryTimeout => true,
            T::Reset | T::RefusedStream => false,
        },
        RetryOn::Reset => matches!(outcome, T::Reset | T::PerTryTimeout),
        RetryOn::ConnectFailure => outcome == T::ConnectFailure,
        RetryOn::Retriable4xx => matches!(outcome, T::Response { status: 409, .. }),
        RetryOn::RefusedStream => outcome == T::RefusedStream,
        RetryOn::RetriableStatusCodes => {
            matches!(outcome, T::Response { status, .. } if codes.contains(&status))
        }
        RetryOn::Cancelled => grpc(GRPC_CANCELLED),
        RetryOn::DeadlineExceeded => grpc(GRPC_DEADLINE_EXCEEDED),
        RetryOn::Internal => grpc(GRPC_INTERNAL),
        RetryOn::ResourceExhausted => grpc(GRPC_RESOURCE_EXHAUSTED),
        RetryOn::Unavailable => grpc(GRPC_UNAVAILABLE),
    }
}

/// The wait before retry number `n` (1-based), from a uniform `roll`: Envoy's fully jittered
/// exponential back-off.
pub fn backoff_ms(n: u32, roll: u64) -> u64 {
    let ceiling = RETRY_BACKOFF_BASE_MS
        .saturating_mul((1u64 << n.min(16)) - 1)
        .min(RETRY_BACKOFF_MAX_MS);
    ((u128::from(roll) * u128::from(ceiling + 1)) >> 64) as u64
}

/// Whether a share given in parts per million applies to a request, from a uniform `roll`.
pub fn applies(per_million: u32, roll: u64) -> bool {
    ((u128::from(roll) * u128::from(PER_MILLION)) >> 64) < u128::from(per_million)
}

/// The path the destination receives under `rewrite.uri`: a prefix match's matched prefix is
/// replaced (Istio), any other match's whole path. `query` is kept.
pub fn rewritten_path(
    path: &str,
    query: Option<&str>,
    matched: Option<&StringMatch>,
    to: &str,
) -> String {
    let rest = match matched {
        Some(StringMatch::Prefix(p)) if path.starts_with(p.as_str()) => &path[p.len()..],
        _ => "",
    };
    // Envoy joins as written: `/v1/` + `x` or `/` + `` — never an empty path.
    let mut out = format!("{to}{rest}");
    if out.is_empty() {
        out.push('/');
    }
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

/// The `Location` of a redirect: the request's scheme, host and path with the redirect's
/// parts replaced. `host` is the request's authority (its port, if any, is dropped when the
/// redirect names a port or another authority).
pub fn redirect_location(
    r: &Redirect,
    scheme: &str,
    host: &str,
    path: &str,
    query: Option<&str>,
) -> String {
    let from_scheme = scheme;
    let scheme = r.scheme.as_deref().unwrap_or(scheme);
    let (name, port) = split_host_port(host);
    let default_of = |s: &str| match s {
        "http" => Some("80"),
        "https" => Some("443"),
        _ => None,
    };
    let name = r
        .authority
        .as_deref()
        .map_or(name, |a| split_host_port(a).0);
    let port = match (r.port, &r.authority) {
        (Some(p), _) => Some(p.to_string()),
        (None, Some(a)) => split_host_port(a).1.map(str::to_string),
        // Envoy: a scheme change drops the old scheme's default port.
        (None, None) if scheme != from_scheme && port == default_of(from_scheme) => None,
        (None, None) => port.map(str::to_string),
    };
    let default_port = port.is_some() && port.as_deref() == default_of(scheme);
    let mut out = format!("{scheme}://{name}");
    if let Some(p) = port.filter(|_| !default_port) {
        out.push(':');
        out.push_str(&p);
    }
    let replaced = match (&r.uri, &r.prefix) {
        (Some(u), Some(p)) => path
            .strip_prefix(p.as_str())
            .map(|rest| format!("{u}{rest}")),
        _ => None,
    };
    match replaced.as_ref().or(r.uri.as_ref()) {
        Some(u) => {
            out.push_str(u);
            if !u.contains('?')
                && let Some(q) = query
            {
                out.push('?');
                out.push_str(q);
            }
        }
        None => {
            out.push_str(path);
            if let Some(q) = query {
                out.push('?');
                out.push_str(q);
            }
        }
    }
    out
}

/// `host[:port]` (or `[v6]:port`) split at its port.
fn split_host_port(authority: &str) -> (&str, Option<&str>) {
    match authority.rsplit_once(':') {
        Some((h, p))
            if !p.is_empty()
                && p.bytes().all(|b| b.is_ascii_digit())
                && (!h.contains(':') || h.ends_with(']')) =>
        {
            (h, Some(p))
        }
        _ => (authority, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(on: &[RetryOn], codes: &[u16]) -> Retries {
        Retries {
            attempts: 2,
            per_try_timeout_ms: None,
            on: on.to_vec(),
            status_codes: codes.to_vec(),
        }
    }

    fn status(status: u16) -> TryOutcome {
        TryOutcome::Response {
            status,
            grpc_status: None,
        }
    }

    #[test]
    fn retry_conditions_follow_envoys_definitions() {
        use TryOutcome as T;
        let five = policy(&[RetryOn::FiveXx], &[]);
        for o in [
            status(500),
            status(503),
            status(599),
            T::ConnectFailure,
            T::Reset,
            T::RefusedStream,
            T::PerTryTimeout,
        ] {
            assert!(five.retries(o), "5xx retries {o:?}");
        }
        for o in [status(200), status(404), status(409), status(499)] {
            assert!(!five.retries(o), "5xx leaves {o:?}");
        }
        let gateway = policy(&[RetryOn::GatewayError], &[]);
        assert!(gateway.retries(status(502)) && gateway.retries(status(504)));
        assert!(gateway.retries(T::ConnectFailure) && gateway.retries(T::PerTryTimeout));
        assert!(!gateway.retries(status(500)) && !gateway.retries(T::Reset));
        let reset = policy(&[RetryOn::Reset], &[]);
        assert!(
            reset.retries(T::Reset)
                && !reset.retries(T::ConnectFailure)
                && !reset.retries(status(503))
        );
        let connect = policy(&[RetryOn::ConnectFailure], &[]);
        assert!(connect.retries(T::ConnectFailure) && !connect.retries(T::Reset));
        let conflict = policy(&[RetryOn::Retriable4xx], &[]);
        assert!(conflict.retries(status(409)) && !conflict.retries(status(400)));
        let codes = policy(&[RetryOn::RetriableStatusCodes], &[418]);
        assert!(codes.retries(status(418)) && !codes.retries(status(503)));
        let grpc = policy(&[RetryOn::Unavailable, RetryOn::Cancelled], &[]);
        let g = |s| T::Response {
            status: 200,
            grpc_status: Some(s),
        };
        assert!(grpc.retries(g(14)) && grpc.retries(g(1)));
        assert!(!grpc.retries(g(0)) && !grpc.retries(g(7)) && !grpc.retries(status(503)));
    }

    #[test]
    fn istios_default_policy_retries_503_and_connect_failures_only() {
        let d = Retries::istio_default();
        assert_eq!(d.attempts, 2);
        assert!(d.retries(status(503)));
        assert!(d.retries(TryOutcome::ConnectFailure));
        assert!(d.retries(TryOutcome::RefusedStream));
        assert!(!d.retries(status(500)), "a 500 is the app's answer");
        assert!(
            !d.retries(TryOutcome::Reset),
            "a reset may have been processed"
        );
        assert!(!d.retries(TryOutcome::PerTryTimeout));
    }

    #[test]
    fn retry_on_words_parse_as_istio_writes_them() {
        assert_eq!(RetryOn::parse("5xx"), Some(RetryOn::FiveXx));
        assert_eq!(RetryOn::parse("gateway-error"), Some(RetryOn::GatewayError));
        assert_eq!(RetryOn::parse("retriable-4xx"), Some(RetryOn::Retriable4xx));
        assert_eq!(
            RetryOn::parse("retriable-status-codes"),
            Some(RetryOn::RetriableStatusCodes)
        );
        assert_eq!(
            RetryOn::parse("deadline-exceeded"),
            Some(RetryOn::DeadlineExceeded)
        );
        assert_eq!(RetryOn::parse("5XX"), None);
        assert_eq!(RetryOn::parse("sometimes"), None);
    }

    #[test]
    fn a_summary_says_what_the_proxy_will_do() {
        assert_eq!(
            Actions::default().summary(),
            "retries 2 on connect-failure,refused-stream,unavailable,cancelled,503 (Istio default)"
        );
        let a = Actions {
            timeout_ms: Some(2000),
            retries: Some(Retries {
                attempts: 0,
                per_try_timeout_ms: None,
                on: vec![],
                status_codes: vec![],
            }),
            fault: Some(Fault {
                delay: None,
                abort: Some(Abort {
                    status: Some(503),
                    grpc_status: None,
                    per_million: 500_000,
                }),
            }),
            ..Actions::default()
        };
        assert_eq!(a.summary(), "abort 503 50%; timeout 2000ms; no retries");
    }

    #[test]
    fn a_direct_response_is_an_http_status_with_a_bounded_body_and_no_redirect() {
        let direct = |status, body: Option<String>| Actions {
            direct_response: Some(DirectResponse { status, body }),
            ..Actions::default()
        };
        let a = direct(500, None);
        assert_eq!(validate(&a), Ok(()));
        assert!(
            a.summary().starts_with("direct response 500"),
            "{}",
            a.summary()
        );
        // The snapshot's wire form: camelCase, the body left out when there is none.
        let wire = serde_json::to_value(&a).expect("serializes");
        assert_eq!(wire, serde_json::json!({"directResponse": {"status": 500}}));
        let back: Actions = serde_json::from_value(wire).expect("parses");
        assert_eq!(back, a);
        assert!(validate(&direct(99, None)).is_err());
        assert!(validate(&direct(600, None)).is_err());
        let long = "x".repeat(MAX_DIRECT_RESPONSE_BODY + 1);
        assert!(validate(&direct(200, Some(long))).is_err());
        let both = Actions {
            redirect: Some(Redirect {
                uri: Some("/x".into()),
                authority: None,
                scheme: None,
                port: None,
                code: 301,
                prefix: None,
            }),
            ..direct(500, None)
        };
        assert!(validate(&both).is_err());
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        assert_eq!(backoff_ms(1, 0), 0);
        assert_eq!(backoff_ms(1, u64::MAX), 25);
        assert_eq!(backoff_ms(2, u64::MAX), 75);
        assert_eq!(backoff_ms(3, u64::MAX), 175);
        assert_eq!(backoff_ms(4, u64::MAX), 250);
        assert_eq!(backoff_ms(40, u64::MAX), 250);
    }

    #[test]
    fn shares_in_parts_per_million_apply_in_proportion() {
        let hits = (0..100_000u64)
            .filter(|i| applies(PER_MILLION / 2, super::super::select::roll(*i)))
            .count();
        assert!((48_000..52_000).contains(&hits), "{hits}");
        assert!(!applies(0, u64::MAX));
        assert!(applies(PER_MILLION, u64::MAX));
    }

    #[test]
    fn rewrites_replace_the_matched_prefix_or_the_whole_path() {
        let prefix = StringMatch::Prefix("/v1/".into());
        assert_eq!(
            rewritten_path("/v1/ratings", Some("a=1"), Some(&prefix), "/v2/"),
            "/v2/ratings?a=1"
        );
        assert_eq!(
            rewritten_path("/v1/ratings", None, Some(&prefix), "/"),
            "/ratings"
        );
        let exact = StringMatch::Exact("/login".into());
        assert_eq!(
            rewritten_path("/login", None, Some(&exact), "/auth/login"),
            "/auth/login"
        );
        assert_eq!(rewritten_path("/anything", None, None, "/fixed"), "/fixed");
        assert_eq!(
            rewritten_path("/v1", None, Some(&StringMatch::Prefix("/v1".into())), ""),
            "/"
        );
    }

    #[test]
    fn redirects_replace_only_what_they_name() {
        let r = |uri: Option<&str>,
                 authority: Option<&str>,
                 scheme: Option<&str>,
                 port: Option<u16>| Redirect {
            uri: uri.map(Into::into),
            authority: authority.map(Into::into),
            scheme: scheme.map(Into::into),
            port,
            code: 301,
            prefix: None,
        };
        assert_eq!(
            redirect_location(
                &r(
                    Some("/v1/bookRatings"),
                    Some("newratings.default.svc.cluster.local"),
                    None,
                    None
                ),
                "http",
                "ratings:9080",
                "/v1/getProductRatings",
                Some("id=1")
            ),
            "http://newratings.default.svc.cluster.local/v1/bookRatings?id=1"
        );
        assert_eq!(
            redirect_location(
                &r(None, None, Some("https"), None),
                "http",
                "shop:80",
                "/cart",
                None
            ),
            "https://shop/cart"
        );
        assert_eq!(
            redirect_location(
                &r(None, None, Some("https"), Some(443)),
                "http",
                "shop",
                "/cart",
                None
            ),
            "https://shop/cart"
        );
        assert_eq!(
            redirect_location(
                &r(Some("/new?x=1"), None, None, None),
                "http",
                "shop:8080",
                "/old",
                Some("y=2")
            ),
            "http://shop:8080/new?x=1"
        );
        assert_eq!(
            redirect_location(
                &r(None, Some("other:9000"), None, None),
                "http",
                "shop:8080",
                "/a",
                None
            ),
            "http://other:9000/a"
        );
    }

    #[test]
    fn a_shadow_authority_suffixes_the_host_before_the_port() {
        assert_eq!(shadow_authority("reviews:9080"), "reviews-shadow:9080");
        assert_eq!(shadow_authority("reviews"), "reviews-shadow");
        assert_eq!(shadow_authority("[::1]:80"), "[::1]-shadow:80");
    }
}
