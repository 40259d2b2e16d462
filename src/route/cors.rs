//! CORS as a route carries it and as Envoy's CORS filter applies it: Istio's VirtualService
//! `corsPolicy` and the Gateway API's `CORS` filter both become one [`CorsPolicy`] in the
//! snapshot; the proxy asks [`CorsPolicy::preflight`] whether it answers a request itself and
//! [`CorsPolicy::decorate`] what a forwarded request's response gets. Kube-free, free of HTTP types.
//!
//! ```json
//! "cors": {"allowOrigins": [{"exact": "https://shop.example"}, {"regex": "https://.*\\.shop\\.example"}],
//!          "allowMethods": ["GET", "POST"], "allowHeaders": ["x-token"], "exposeHeaders": ["x-trace"],
//!          "maxAgeSecs": 86400, "allowCredentials": true, "unmatchedPreflights": "IGNORE"}
//! ```
//!
//! Envoy's behaviour, kept here (its `cors_filter.cc`): a request is a CORS request when it
//! has a non-empty `Origin`; an origin is allowed when a matcher matches it or matches `*`; a
//! preflight (OPTIONS with `Origin` and `Access-Control-Request-Method`) from an allowed origin
//! is answered by the proxy with 200 and the `Access-Control-Allow-*` headers, never forwarded;
//! the requested method and headers are not checked (the browser compares them with the lists);
//! a preflight from another origin is forwarded (`FORWARD`, the default) or answered with 200
//! without `Access-Control-Allow-Origin` (`IGNORE`); any other request from an allowed origin
//! is forwarded and its response gets `Access-Control-Allow-Origin: <the origin>` (never `*`),
//! `Access-Control-Allow-Credentials` and `Access-Control-Expose-Headers`, replacing the app's.

use serde::{Deserialize, Serialize};

use super::model::StringMatch;

pub const ALLOW_ORIGIN: &str = "access-control-allow-origin";
pub const ALLOW_CREDENTIALS: &str = "access-control-allow-credentials";
pub const ALLOW_METHODS: &str = "access-control-allow-methods";
pub const ALLOW_HEADERS: &str = "access-control-allow-headers";
pub const EXPOSE_HEADERS: &str = "access-control-expose-headers";
pub const MAX_AGE: &str = "access-control-max-age";
pub const REQUEST_METHOD: &str = "access-control-request-method";
pub const REQUEST_HEADERS: &str = "access-control-request-headers";

/// Most entries in one of a policy's lists (the Gateway API's limit; Istio has none).
pub const MAX_LIST: usize = 64;

/// The methods a policy may list (Istio's validation: RFC 9110's and PATCH), or `*`.
const METHODS: [&str; 10] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH", "*",
];

/// A route's CORS policy. Lists are sent joined by `,` as given; a list that is exactly `*`
/// echoes the preflight's `Access-Control-Request-Method` / `-Headers`, as Envoy does.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CorsPolicy {
    /// Any one allows an origin; none allows no origin (so no CORS headers, ever).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_origins: Vec<StringMatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_methods: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_headers: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expose_headers: Vec<String>,
    /// `Access-Control-Max-Age` of a preflight answer; none: the header is left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age_secs: Option<u64>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_credentials: bool,
    #[serde(default, skip_serializing_if = "UnmatchedPreflights::is_forward")]
    pub unmatched_preflights: UnmatchedPreflights,
}

/// Istio's `unmatchedPreflights`: what becomes of a preflight whose origin is not allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum UnmatchedPreflights {
    /// Sent on to the destination, which may answer it (Istio's default).
    #[default]
    Forward,
    /// Answered by the proxy with 200 and no `Access-Control-Allow-Origin`.
    Ignore,
}

impl UnmatchedPreflights {
    fn is_forward(&self) -> bool {
        *self == UnmatchedPreflights::Forward
    }
}

/// The parts of a request CORS looks at (header values as received; absent or not text: None).
#[derive(Debug, Clone, Copy, Default)]
pub struct CorsRequest<'a> {
    pub method: &'a str,
    pub origin: Option<&'a str>,
    /// `Access-Control-Request-Method`.
    pub request_method: Option<&'a str>,
    /// `Access-Control-Request-Headers`.
    pub request_headers: Option<&'a str>,
}

/// Response headers the proxy sets (lowercase names; values checked when the policy was
/// accepted, or copied from the request's own header values).
pub type CorsHeaders = Vec<(&'static str, String)>;

impl CorsPolicy {
    /// Envoy's test: a matcher that matches the origin, or that matches `*` (so `exact: "*"`
    /// or `regex: ".*"` allows every origin).
    pub fn allows_origin(&self, origin: &str) -> bool {
        self.allow_origins
            .iter()
            .any(|m| m.matches("*") || m.matches(origin))
    }

    /// The proxy's own answer to a preflight (status 200 with these headers), or None when the
    /// request is to be forwarded: not a preflight, or a preflight from an origin that is not
    /// allowed under `FORWARD`.
    pub fn preflight(&self, req: &CorsRequest<'_>) -> Option<CorsHeaders> {
        let origin = req.origin.filter(|o| !o.is_empty())?;
        if req.method != "OPTIONS" {
            return None;
        }
        let asked_method = req.request_method.filter(|m| !m.is_empty())?;
        let allowed = self.allows_origin(origin);
        if !allowed && self.unmatched_preflights == UnmatchedPreflights::Forward {
            return None;
        }
        let mut headers = CorsHeaders::new();
        if allowed {
            headers.push((ALLOW_ORIGIN, origin.to_string()));
        }
        if self.allow_credentials {
            headers.push((ALLOW_CREDENTIALS, "true".to_string()));
        }
        match self.allow_methods.join(",").as_str() {
            "" => {}
            "*" => headers.push((ALLOW_METHODS, asked_method.to_string())),
            methods => headers.push((ALLOW_METHODS, methods.to_string())),
        }
        match self.allow_headers.join(",").as_str() {
            "" => {}
            // Echoed; left out when the preflight names none (the Gateway API's rule).
            "*" => {
                if let Some(asked) = req.request_headers.filter(|h| !h.is_empty()) {
                    headers.push((ALLOW_HEADERS, asked.to_string()));
                }
            }
            names => headers.push((ALLOW_HEADERS, names.to_string())),
        }
        // Envoy's filter names the exposed headers on a preflight too (the Gateway API's
        // conformance test HTTPRouteCORS expects them there).
        if !self.expose_headers.is_empty() {
            headers.push((EXPOSE_HEADERS, self.expose_headers.join(",")));
        }
        if let Some(secs) = self.max_age_secs {
            headers.push((MAX_AGE, secs.to_string()));
        }
        Some(headers)
    }

    /// The headers the response to a forwarded request gets (set over the destination's), for
    /// a request whose `Origin` is allowed; nothing otherwise.
    pub fn decorate(&self, origin: Option<&str>) -> CorsHeaders {
        match origin.filter(|o| !o.is_empty() && self.allows_origin(o)) {
            Some(origin) => self.decorate_allowed(origin),
            None => CorsHeaders::new(),
        }
    }

    /// [`Self::decorate`] for an origin already found allowed ([`Self::allows_origin`]): the
    /// proxy checks it once per request, before the request's header edits.
    pub fn decorate_allowed(&self, origin: &str) -> CorsHeaders {
        let mut headers = vec![(ALLOW_ORIGIN, origin.to_string())];
        if self.allow_credentials {
            headers.push((ALLOW_CREDENTIALS, "true".to_string()));
        }
        if !self.expose_headers.is_empty() {
            headers.push((EXPOSE_HEADERS, self.expose_headers.join(",")));
        }
        headers
    }

    /// One line for `weft proxy-config routes`.
    pub fn summary(&self) -> String {
        let origins: Vec<String> = self
            .allow_origins
            .iter()
            .map(|m| match m {
                StringMatch::Exact(s) => s.clone(),
                StringMatch::Prefix(p) => format!("{p}*"),
                StringMatch::Regex(r) => format!("~{}", r.source()),
            })
            .collect();
        format!("cors {}", origins.join(","))
    }
}

/// Checks what the proxy will put on the wire: methods are Istio's, header names are tokens,
/// lists are bounded. `at` names the policy in the message (`http[0].corsPolicy`).
pub fn validate(at: &str, p: &CorsPolicy) -> Result<(), String> {
    let lists = [
        ("allowOrigins", p.allow_origins.len()),
        ("allowMethods", p.allow_methods.len()),
        ("allowHeaders", p.allow_headers.len()),
        ("exposeHeaders", p.expose_headers.len()),
    ];
    for (field, len) in lists {
        if len > MAX_LIST {
            return Err(format!(
                "{at}.{field} has {len} entries; at most {MAX_LIST} are accepted"
            ));
        }
    }
    for (i, m) in p.allow_origins.iter().enumerate() {
        let empty = match m {
            StringMatch::Exact(s) | StringMatch::Prefix(s) => s.is_empty(),
            StringMatch::Regex(r) => r.source().is_empty(),
        };
        if empty {
            return Err(format!(
                "{at}.allowOrigins[{i}] is empty; give an exact, prefix or regex origin"
            ));
        }
    }
    for (i, m) in p.allow_methods.iter().enumerate() {
        if !METHODS.contains(&m.as_str()) {
            return Err(format!(
                "{at}.allowMethods[{i}] {m:?} is not an HTTP method (GET, HEAD, POST, PUT, DELETE, CONNECT, OPTIONS, TRACE, PATCH or *)"
            ));
        }
    }
    for (field, names) in [
        ("allowHeaders", &p.allow_headers),
        ("exposeHeaders", &p.expose_headers),
    ] {
        for (i, n) in names.iter().enumerate() {
            if !is_token(n) {
                return Err(format!("{at}.{field}[{i}] {n:?} is not a header name"));
            }
        }
    }
    Ok(())
}

/// An HTTP token (RFC 9110): what a header name or method may be.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::model::Pattern;

    fn regex(r: &str) -> StringMatch {
        StringMatch::Regex(Pattern::new(r).unwrap())
    }

    /// The policy of Istio's VirtualService reference example (`corsPolicy` of the ratings
    /// route), with origins of each kind.
    fn istio_example() -> CorsPolicy {
        CorsPolicy {
            allow_origins: vec![
                StringMatch::Exact("https://example.com".into()),
                StringMatch::Prefix("https://dev.".into()),
                regex(r"https://[a-z]+\.shop\.example"),
            ],
            allow_methods: vec!["POST".into(), "GET".into()],
            allow_headers: vec!["X-Foo-Bar".into()],
            expose_headers: vec!["X-Expose".into()],
            max_age_secs: Some(86_400),
            allow_credentials: false,
            unmatched_preflights: UnmatchedPreflights::Forward,
        }
    }

    fn preflight<'a>(origin: &'a str, method: &'a str) -> CorsRequest<'a> {
        CorsRequest {
            method: "OPTIONS",
            origin: Some(origin),
            request_method: Some(method),
            request_headers: None,
        }
    }

    fn get(origin: Option<&str>) -> CorsRequest<'_> {
        CorsRequest {
            method: "GET",
            origin,
            ..CorsRequest::default()
        }
    }

    fn header<'h>(h: &'h CorsHeaders, name: &str) -> Option<&'h str> {
        h.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str())
    }

    #[test]
    fn origins_match_exactly_by_prefix_or_by_whole_regex() {
        let p = istio_example();
        let cases = [
            ("https://example.com", true),
            ("https://example.com.evil", false), // exact is exact
            ("http://example.com", false),       // another scheme is another origin
            ("https://dev.anything", true),      // prefix
            ("https://api.shop.example", true),  // regex
            ("https://api.shop.example.evil", false), // the regex is anchored at both ends
            ("https://API.shop.example", false), // the regex is case-sensitive, as RE2
            ("https://other.example", false),
        ];
        for (origin, want) in cases {
            assert_eq!(p.allows_origin(origin), want, "{origin}");
        }
    }

    #[test]
    fn a_matcher_that_matches_star_allows_every_origin_and_the_origin_is_echoed() {
        for any in [StringMatch::Exact("*".into()), regex(".*")] {
            let p = CorsPolicy {
                allow_origins: vec![any],
                ..CorsPolicy::default()
            };
            let h = p.decorate(Some("https://anyone.example"));
            // Envoy echoes the origin, never `*` (so credentials stay usable).
            assert_eq!(header(&h, ALLOW_ORIGIN), Some("https://anyone.example"));
        }
    }

    #[test]
    fn a_preflight_from_an_allowed_origin_is_answered_with_the_allow_headers() {
        let p = istio_example();
        let mut req = preflight("https://example.com", "POST");
        req.request_headers = Some("x-foo-bar");
        let h = p.preflight(&req).expect("answered by the proxy");
        assert_eq!(header(&h, ALLOW_ORIGIN), Some("https://example.com"));
        assert_eq!(header(&h, ALLOW_METHODS), Some("POST,GET"));
        assert_eq!(header(&h, ALLOW_HEADERS), Some("X-Foo-Bar"));
        assert_eq!(header(&h, MAX_AGE), Some("86400"));
        // Credentials not allowed: the header is left out, not "false".
        assert_eq!(header(&h, ALLOW_CREDENTIALS), None);
        // Expose-Headers is named on the preflight too (what the Gateway API's HTTPRouteCORS
        // conformance test expects; a browser reads it from the actual response).
        assert_eq!(header(&h, EXPOSE_HEADERS), Some("X-Expose"));
    }

    #[test]
    fn a_preflight_for_a_method_not_listed_is_still_answered_and_the_browser_refuses() {
        // Envoy does not compare the requested method with the list: it answers with the
        // list, which does not name DELETE, and the browser does not send the DELETE.
        let p = istio_example();
        let h = p
            .preflight(&preflight("https://example.com", "DELETE"))
            .expect("answered by the proxy");
        assert_eq!(header(&h, ALLOW_METHODS), Some("POST,GET"));
        assert!(!header(&h, ALLOW_METHODS).unwrap().contains("DELETE"));
    }

    #[test]
    fn a_preflight_from_another_origin_is_forwarded_by_default() {
        let p = istio_example();
        assert_eq!(
            p.preflight(&preflight("https://evil.example", "POST")),
            None
        );
    }

    #[test]
    fn unmatched_preflights_ignore_answers_without_allow_origin() {
        let p = CorsPolicy {
            unmatched_preflights: UnmatchedPreflights::Ignore,
            allow_credentials: true,
            ..istio_example()
        };
        let h = p
            .preflight(&preflight("https://evil.example", "POST"))
            .expect("answered by the proxy, not forwarded");
        assert_eq!(header(&h, ALLOW_ORIGIN), None);
        // The rest is sent as Envoy sends it; without Allow-Origin the browser refuses.
        assert_eq!(header(&h, ALLOW_METHODS), Some("POST,GET"));
        // An allowed origin is still answered in full.
        let ok = p
            .preflight(&preflight("https://example.com", "POST"))
            .unwrap();
        assert_eq!(header(&ok, ALLOW_ORIGIN), Some("https://example.com"));
        assert_eq!(header(&ok, ALLOW_CREDENTIALS), Some("true"));
    }

    #[test]
    fn requests_that_are_not_preflights_are_forwarded() {
        let p = istio_example();
        let cases = [
            // No Origin: not a CORS request at all.
            CorsRequest {
                method: "OPTIONS",
                origin: None,
                request_method: Some("POST"),
                request_headers: None,
            },
            // An empty Origin is no Origin (Envoy).
            preflight("", "POST"),
            // OPTIONS without Access-Control-Request-Method: a plain OPTIONS.
            CorsRequest {
                method: "OPTIONS",
                origin: Some("https://example.com"),
                request_method: None,
                request_headers: None,
            },
            preflight("https://example.com", ""),
            // A GET with Access-Control-Request-Method is not a preflight.
            CorsRequest {
                method: "GET",
                origin: Some("https://example.com"),
                request_method: Some("POST"),
                request_headers: None,
            },
        ];
        for req in cases {
            assert_eq!(p.preflight(&req), None, "{req:?}");
        }
    }

    #[test]
    fn an_actual_request_from_an_allowed_origin_gets_allow_origin_credentials_and_expose() {
        let p = CorsPolicy {
            allow_credentials: true,
            expose_headers: vec!["X-Expose".into(), "X-Trace".into()],
            ..istio_example()
        };
        assert_eq!(p.preflight(&get(Some("https://example.com"))), None);
        let h = p.decorate(Some("https://example.com"));
        assert_eq!(
            h,
            vec![
                (ALLOW_ORIGIN, "https://example.com".to_string()),
                (ALLOW_CREDENTIALS, "true".to_string()),
                (EXPOSE_HEADERS, "X-Expose,X-Trace".to_string()),
            ]
        );
    }

    #[test]
    fn a_request_without_origin_or_from_another_origin_is_left_untouched() {
        let p = istio_example();
        assert!(p.decorate(None).is_empty());
        assert!(p.decorate(Some("")).is_empty());
        assert!(p.decorate(Some("https://evil.example")).is_empty());
        // A policy without origins allows none (CORS off: the browser refuses).
        let none = CorsPolicy {
            allow_origins: Vec::new(),
            ..istio_example()
        };
        assert!(none.decorate(Some("https://example.com")).is_empty());
        assert_eq!(
            none.preflight(&preflight("https://example.com", "GET")),
            None
        );
    }

    #[test]
    fn max_age_is_sent_only_when_set() {
        let p = CorsPolicy {
            max_age_secs: None,
            ..istio_example()
        };
        let h = p
            .preflight(&preflight("https://example.com", "GET"))
            .unwrap();
        assert_eq!(header(&h, MAX_AGE), None);
        let five = CorsPolicy {
            max_age_secs: Some(5),
            ..istio_example()
        };
        let h = five
            .preflight(&preflight("https://example.com", "GET"))
            .unwrap();
        assert_eq!(header(&h, MAX_AGE), Some("5"));
    }

    #[test]
    fn star_methods_and_headers_echo_what_the_preflight_asks() {
        let p = CorsPolicy {
            allow_origins: vec![StringMatch::Exact("*".into())],
            allow_methods: vec!["*".into()],
            allow_headers: vec!["*".into()],
            allow_credentials: true,
            ..CorsPolicy::default()
        };
        let mut req = preflight("https://a.example", "PATCH");
        req.request_headers = Some("x-a, x-b");
        let h = p.preflight(&req).unwrap();
        assert_eq!(header(&h, ALLOW_METHODS), Some("PATCH"));
        assert_eq!(header(&h, ALLOW_HEADERS), Some("x-a, x-b"));
        // None asked: Allow-Headers is left out rather than sent empty.
        let h = p
            .preflight(&preflight("https://a.example", "PATCH"))
            .unwrap();
        assert_eq!(header(&h, ALLOW_HEADERS), None);
    }

    #[test]
    fn the_policy_round_trips_and_an_empty_one_serializes_to_nothing_extra() {
        let p = CorsPolicy {
            unmatched_preflights: UnmatchedPreflights::Ignore,
            allow_credentials: true,
            ..istio_example()
        };
        let json = serde_json::to_value(&p).unwrap();
        assert_eq!(json["unmatchedPreflights"], "IGNORE");
        assert_eq!(
            json["allowOrigins"][2]["regex"],
            r"https://[a-z]+\.shop\.example"
        );
        let back: CorsPolicy = serde_json::from_value(json).unwrap();
        assert_eq!(back, p);
        assert_eq!(
            serde_json::to_value(CorsPolicy::default()).unwrap(),
            serde_json::json!({})
        );
    }

    #[test]
    fn validation_names_the_field_to_change() {
        let at = "http[0].corsPolicy";
        let bad = [
            (
                CorsPolicy {
                    allow_methods: vec!["FETCH".into()],
                    ..istio_example()
                },
                "http[0].corsPolicy.allowMethods[0] \"FETCH\"",
            ),
            (
                CorsPolicy {
                    allow_headers: vec!["x bad".into()],
                    ..istio_example()
                },
                "http[0].corsPolicy.allowHeaders[0]",
            ),
            (
                CorsPolicy {
                    expose_headers: vec!["".into()],
                    ..istio_example()
                },
                "http[0].corsPolicy.exposeHeaders[0]",
            ),
            (
                CorsPolicy {
                    allow_origins: vec![StringMatch::Prefix(String::new())],
                    ..istio_example()
                },
                "http[0].corsPolicy.allowOrigins[0] is empty",
            ),
            (
                CorsPolicy {
                    allow_headers: vec!["x".into(); MAX_LIST + 1],
                    ..istio_example()
                },
                "http[0].corsPolicy.allowHeaders has 65 entries",
            ),
        ];
        for (p, want) in bad {
            let e = validate(at, &p).unwrap_err();
            assert!(e.starts_with(want), "{e}");
        }
        assert_eq!(validate(at, &istio_example()), Ok(()));
    }
}
