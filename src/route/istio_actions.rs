//! Istio `HTTPRoute` actions compiled to the route table's [`Actions`]: `redirect`,
//! `rewrite`, `headers` (route and destination), `fault`, `timeout` and `retries`, each
//! field implemented or the VirtualService refused naming it.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

use super::action::{
    Abort, Actions, Delay, Fault, HeaderEdits, MAX_RETRY_ATTEMPTS, PER_MILLION, Redirect, Retries,
    RetryOn, Rewrite,
};
use super::istio::{HttpRouteSpec, set_fields};

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RedirectSpec {
    #[serde(default)]
    pub uri: Option<String>,
    #[serde(default)]
    pub authority: Option<String>,
    #[serde(default)]
    pub port: Option<u32>,
    #[serde(default)]
    pub derive_port: Option<String>,
    #[serde(default)]
    pub scheme: Option<String>,
    #[serde(default)]
    pub redirect_code: Option<u32>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RewriteSpec {
    #[serde(default)]
    pub uri: Option<String>,
    #[serde(default)]
    pub authority: Option<String>,
    #[serde(default)]
    pub uri_regex_rewrite: Option<Value>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetrySpec {
    #[serde(default)]
    pub attempts: Option<i64>,
    #[serde(default)]
    pub per_try_timeout: Option<String>,
    #[serde(default)]
    pub retry_on: Option<String>,
    #[serde(default)]
    pub retry_remote_localities: Option<Value>,
    #[serde(default)]
    pub retry_ignore_previous_hosts: Option<Value>,
    #[serde(default)]
    pub backoff: Option<Value>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultSpec {
    #[serde(default)]
    pub delay: Option<DelaySpec>,
    #[serde(default)]
    pub abort: Option<AbortSpec>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DelaySpec {
    #[serde(default)]
    pub fixed_delay: Option<String>,
    #[serde(default)]
    pub exponential_delay: Option<Value>,
    #[serde(default)]
    pub percentage: Option<PercentSpec>,
    #[serde(default)]
    pub percent: Option<i64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AbortSpec {
    #[serde(default)]
    pub http_status: Option<i64>,
    #[serde(default)]
    pub grpc_status: Option<String>,
    #[serde(default)]
    pub http2_error: Option<Value>,
    #[serde(default)]
    pub percentage: Option<PercentSpec>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PercentSpec {
    #[serde(default)]
    pub value: f64,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeadersSpec {
    #[serde(default)]
    pub request: Option<HeaderOpsSpec>,
    #[serde(default)]
    pub response: Option<HeaderOpsSpec>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderOpsSpec {
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    #[serde(default)]
    pub add: BTreeMap<String, String>,
    #[serde(default)]
    pub remove: Vec<String>,
}

/// A route's actions, or why the VirtualService is refused (a sentence naming the field).
/// `at` is the route's path (`http[2]`).
pub fn compile_actions(at: &str, h: &HttpRouteSpec) -> Result<Actions, String> {
    if h.redirect.is_some() && !h.route.is_empty() {
        return Err(format!(
            "{at} has both redirect and route; Istio takes one of them"
        ));
    }
    if h.redirect.is_some() && h.rewrite.is_some() {
        return Err(format!(
            "{at} has both redirect and rewrite; a redirect is answered, nothing is rewritten"
        ));
    }
    let (request_headers, response_headers) = match &h.headers {
        Some(spec) => header_edits(&format!("{at}.headers"), spec)?,
        None => Default::default(),
    };
    Ok(Actions {
        redirect: h
            .redirect
            .as_ref()
            .map(|r| redirect(&format!("{at}.redirect"), r))
            .transpose()?,
        rewrite: h
            .rewrite
            .as_ref()
            .map(|r| rewrite(&format!("{at}.rewrite"), r))
            .transpose()?,
        timeout_ms: h
            .timeout
            .as_deref()
            .map(|t| millis(&format!("{at}.timeout"), t))
            .transpose()?
            .filter(|ms| *ms > 0),
        retries: h
            .retries
            .as_ref()
            .map(|r| retries(&format!("{at}.retries"), r))
            .transpose()?,
        fault: h
            .fault
            .as_ref()
            .map(|f| fault(&format!("{at}.fault"), f))
            .transpose()?,
        request_headers,
        response_headers,
        // Laid with the destinations (their hosts and ports resolve the same way).
        mirrors: Vec::new(),
        // Istio's `directResponse` is not read yet (the Gateway API's compiler sets it).
        direct_response: None,
        cors: h
            .cors_policy
            .as_ref()
            .map(|c| super::istio::cors_policy(&format!("{at}.corsPolicy"), c))
            .transpose()?,
    })
}

/// A duration in milliseconds (Go syntax, as Istio's `Duration` fields are written).
fn millis(at: &str, text: &str) -> Result<u64, String> {
    crate::duration::parse(text)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .map_err(|e| format!("{at}: {e}"))
}

fn redirect(at: &str, r: &RedirectSpec) -> Result<Redirect, String> {
    if r.derive_port.is_some() {
        return Err(format!("{at}.derivePort is not supported yet; give port"));
    }
    let code = match r.redirect_code {
        None => 301,
        Some(c @ (301 | 302 | 303 | 307 | 308)) => c as u16,
        Some(c) => {
            return Err(format!(
                "{at}.redirectCode {c} is not a redirect status; use 301, 302, 303, 307 or 308"
            ));
        }
    };
    let port = r
        .port
        .map(|p| {
            u16::try_from(p)
                .ok()
                .filter(|p| *p != 0)
                .ok_or(format!("{at}.port {p} is not a port"))
        })
        .transpose()?;
    if let Some(s) = &r.scheme
        && !matches!(s.as_str(), "http" | "https")
    {
        return Err(format!("{at}.scheme {s:?}: use http or https"));
    }
    if let Some(u) = &r.uri {
        uri_value(&format!("{at}.uri"), u)?;
    }
    if let Some(a) = &r.authority {
        authority_value(&format!("{at}.authority"), a)?;
    }
    Ok(Redirect {
        uri: r.uri.clone(),
        authority: r.authority.clone(),
        scheme: r.scheme.clone(),
        port,
        code,
        prefix: None,
    })
}

fn rewrite(at: &str, r: &RewriteSpec) -> Result<Rewrite, String> {
    if r.uri_regex_rewrite.is_some() {
        return Err(format!(
            "{at}.uriRegexRewrite is not supported yet; use uri with a prefix match"
        ));
    }
    if let Some(u) = &r.uri
        && !u.is_empty()
    {
        uri_value(&format!("{at}.uri"), u)?;
    }
    if let Some(a) = &r.authority {
        authority_value(&format!("{at}.authority"), a)?;
    }
    Ok(Rewrite {
        uri: r.uri.clone(),
        authority: r.authority.clone(),
    })
}

/// A path the proxy will put on the request line: starts with `/`, visible ASCII.
fn uri_value(at: &str, u: &str) -> Result<(), String> {
    if !u.starts_with('/') || !u.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "{at} {u:?} is not a path: start with / and use visible ASCII without spaces"
        ));
    }
    Ok(())
}

fn authority_value(at: &str, a: &str) -> Result<(), String> {
    if a.is_empty()
        || !a
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._:[]".contains(&b))
    {
        return Err(format!("{at} {a:?} is not a host[:port]"));
    }
    Ok(())
}

fn retries(at: &str, r: &RetrySpec) -> Result<Retries, String> {
    let unsupported = set_fields(&[
        ("retryRemoteLocalities", r.retry_remote_localities.is_some()),
        (
            "retryIgnorePreviousHosts",
            r.retry_ignore_previous_hosts.is_some(),
        ),
        ("backoff", r.backoff.is_some()),
    ]);
    if let Some(f) = unsupported.first() {
        return Err(format!("{at}.{f} is not supported yet"));
    }
    let attempts = match r.attempts.unwrap_or(0) {
        a if (0..=i64::from(MAX_RETRY_ATTEMPTS)).contains(&a) => a as u32,
        a => {
            return Err(format!(
                "{at}.attempts {a}: give 0 to {MAX_RETRY_ATTEMPTS} (each retry is another request on the destination)"
            ));
        }
    };
    // Istio: the default conditions unless `retryOn` names others; a bare status code in
    // the list makes it retriable (`retriable-status-codes`).
    let mut policy = Retries::istio_default();
    policy.attempts = attempts;
    if let Some(list) = r.retry_on.as_deref().filter(|l| !l.trim().is_empty()) {
        policy.on.clear();
        policy.status_codes.clear();
        for word in list.split(',').map(str::trim).filter(|w| !w.is_empty()) {
            if let Ok(code) = word.parse::<u16>() {
                if !(100..600).contains(&code) {
                    return Err(format!("{at}.retryOn {word}: not an HTTP status"));
                }
                policy.status_codes.push(code);
                continue;
            }
            match RetryOn::parse(word) {
                Some(on) => policy.on.push(on),
                None => {
                    return Err(format!(
                        "{at}.retryOn {word:?} is not a retry condition; use 5xx, gateway-error, reset, connect-failure, retriable-4xx, refused-stream, retriable-status-codes, cancelled, deadline-exceeded, internal, resource-exhausted, unavailable or an HTTP status"
                    ));
                }
            }
        }
        if !policy.status_codes.is_empty() && !policy.on.contains(&RetryOn::RetriableStatusCodes) {
            policy.on.push(RetryOn::RetriableStatusCodes);
        }
        policy.on.sort();
        policy.on.dedup();
    }
    policy.per_try_timeout_ms = r
        .per_try_timeout
        .as_deref()
        .map(|t| millis(&format!("{at}.perTryTimeout"), t))
        .transpose()?
        .filter(|ms| *ms > 0);
    Ok(policy)
}

fn fault(at: &str, f: &FaultSpec) -> Result<Fault, String> {
    let delay = f
        .delay
        .as_ref()
        .map(|d| {
            let at = format!("{at}.delay");
            if d.exponential_delay.is_some() {
                return Err(format!("{at}.exponentialDelay is not supported (Istio does not implement it either); use fixedDelay"));
            }
            let ms = match &d.fixed_delay {
                Some(t) => millis(&format!("{at}.fixedDelay"), t)?,
                None => return Err(format!("{at}.fixedDelay is required")),
            };
            let per_million = match (&d.percentage, d.percent) {
                (Some(p), _) => share(&format!("{at}.percentage.value"), p.value)?,
                (None, Some(p)) => share(&format!("{at}.percent"), p as f64)?,
                (None, None) => PER_MILLION,
            };
            Ok(Delay { ms, per_million })
        })
        .transpose()?;
    let abort = f
        .abort
        .as_ref()
        .map(|a| {
            let at = format!("{at}.abort");
            if a.http2_error.is_some() {
                return Err(format!(
                    "{at}.http2Error is not supported yet; use httpStatus"
                ));
            }
            let status = a
                .http_status
                .map(|s| {
                    u16::try_from(s)
                        .ok()
                        .filter(|s| (200..600).contains(s))
                        .ok_or(format!("{at}.httpStatus {s} is not an HTTP status"))
                })
                .transpose()?;
            let grpc_status = a
                .grpc_status
                .as_deref()
                .map(|g| {
                    grpc_code(g).ok_or(format!(
                        "{at}.grpcStatus {g:?} is not a gRPC status name (such as UNAVAILABLE)"
                    ))
                })
                .transpose()?;
            if status.is_none() && grpc_status.is_none() {
                return Err(format!("{at}: give httpStatus or grpcStatus"));
            }
            let per_million = match &a.percentage {
                Some(p) => share(&format!("{at}.percentage.value"), p.value)?,
                None => PER_MILLION,
            };
            Ok(Abort {
                status,
                grpc_status,
                per_million,
            })
        })
        .transpose()?;
    if delay.is_none() && abort.is_none() {
        return Err(format!("{at}: give delay or abort"));
    }
    Ok(Fault { delay, abort })
}

/// A percentage (0 to 100, fractions allowed) in parts per million.
pub(crate) fn share(at: &str, percent: f64) -> Result<u32, String> {
    if !(0.0..=100.0).contains(&percent) {
        return Err(format!("{at} {percent} is not a percentage from 0 to 100"));
    }
    Ok((percent * 10_000.0).round() as u32)
}

/// gRPC's status codes by the names Istio's `grpcStatus` takes.
fn grpc_code(name: &str) -> Option<u32> {
    const NAMES: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    NAMES.iter().position(|n| *n == name).map(|i| i as u32)
}

/// Request and response header edits of a `headers` field (route or destination level).
pub fn header_edits(at: &str, h: &HeadersSpec) -> Result<(HeaderEdits, HeaderEdits), String> {
    let one = |which: &str, ops: &Option<HeaderOpsSpec>| {
        ops.as_ref()
            .map(|o| edits(&format!("{at}.{which}"), o))
            .transpose()
            .map(Option::unwrap_or_default)
    };
    Ok((one("request", &h.request)?, one("response", &h.response)?))
}

fn edits(at: &str, o: &HeaderOpsSpec) -> Result<HeaderEdits, String> {
    let name = |op: &str, n: &str| -> Result<String, String> {
        let lower = n.to_ascii_lowercase();
        let token = !lower.is_empty()
            && lower
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        if !token {
            return Err(format!("{at}.{op}: {n:?} is not a header name"));
        }
        if matches!(
            lower.as_str(),
            "host" | "content-length" | "transfer-encoding" | "connection"
        ) {
            return Err(format!(
                "{at}.{op}: header {lower} cannot be edited (use rewrite.authority for the host)"
            ));
        }
        Ok(lower)
    };
    let value = |op: &str, n: &str, v: &str| -> Result<String, String> {
        if v.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
            return Err(format!(
                "{at}.{op}.{n}: the value holds a line break or NUL"
            ));
        }
        Ok(v.to_string())
    };
    let map = |op: &str, from: &BTreeMap<String, String>| {
        from.iter()
            .map(|(n, v)| Ok((name(op, n)?, value(op, n, v)?)))
            .collect::<Result<BTreeMap<_, _>, String>>()
    };
    Ok(HeaderEdits {
        set: map("set", &o.set)?,
        add: map("add", &o.add)?,
        remove: o
            .remove
            .iter()
            .map(|n| name("remove", n))
            .collect::<Result<_, _>>()?,
    })
}
