//! Choosing for one request, pure: the first route whose matches hold ([`choose_route`]),
//! then one of its destinations by weight ([`pick_weighted`]). Randomness comes from the
//! caller as a number, so tests are deterministic and the proxy needs no lock.

use crate::authz::Headers;

use super::model::{Destination, HttpRoute, RequestMatch};

/// What routing reads of a request.
pub struct RequestView<'a> {
    pub method: &'a str,
    /// The normalized path, without the query.
    pub path: &'a str,
    pub query: Option<&'a str>,
    /// The Service port the client dialled.
    pub port: u16,
    pub headers: &'a dyn Headers,
}

/// The outcome for a table: a route, or none (Istio answers 404 with flag `NR` when a host
/// has routes and none matches).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice<'a> {
    /// `matched`: the condition that took the request (none for a route without matches);
    /// a prefix rewrite replaces what it matched.
    Route {
        index: usize,
        route: &'a HttpRoute,
        matched: Option<&'a RequestMatch>,
    },
    NoRoute,
}

/// One destination picked for a request, with the route that led there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Selected<'a> {
    pub route: usize,
    pub destination: &'a Destination,
}

/// The first route that takes the request, in order.
pub fn choose_route<'a>(routes: &'a [HttpRoute], req: &RequestView<'_>) -> Choice<'a> {
    for (index, route) in routes.iter().enumerate() {
        if route.matches.is_empty() {
            return Choice::Route {
                index,
                route,
                matched: None,
            };
        }
        if let Some(m) = route.matches.iter().find(|m| holds(m, req)) {
            return Choice::Route {
                index,
                route,
                matched: Some(m),
            };
        }
    }
    Choice::NoRoute
}

fn holds(m: &RequestMatch, req: &RequestView<'_>) -> bool {
    if m.port.is_some_and(|p| p != req.port) {
        return false;
    }
    if m.uri.as_ref().is_some_and(|u| !u.matches(req.path)) {
        return false;
    }
    if m.method.as_ref().is_some_and(|x| !x.matches(req.method)) {
        return false;
    }
    let header_ok = |(name, want): (&String, &super::StringMatch)| {
        req.headers.get(name).is_some_and(|v| want.matches(v))
    };
    if !m.headers.iter().all(header_ok) {
        return false;
    }
    if m.without_headers.iter().any(header_ok) {
        return false;
    }
    m.query_params
        .iter()
        .all(|(name, want)| query_param(req.query, name).is_some_and(|v| want.matches(v)))
}

/// The first value of `name` in a query string (`a=1&b=2`), as sent (not percent-decoded,
/// as Envoy compares it); a bare `name` has the empty value.
fn query_param<'q>(query: Option<&'q str>, name: &str) -> Option<&'q str> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then_some(v)
    })
}

/// A destination by weight: `roll` is uniform over `u64`; destinations `usable` says no to (a
/// backend without endpoints) and those of weight 0 are skipped, their share going to the
/// others in proportion. None when no destination is usable.
pub fn pick_weighted(
    destinations: &[Destination],
    roll: u64,
    usable: impl Fn(&Destination) -> bool,
) -> Option<&Destination> {
    let live = || destinations.iter().filter(|d| d.weight > 0 && usable(d));
    let total: u64 = live().map(|d| u64::from(d.weight)).sum();
    if total == 0 {
        return None;
    }
    // Multiply-shift maps the roll onto [0, total) without modulo bias worth speaking of.
    let mut at = ((u128::from(roll) * u128::from(total)) >> 64) as u64;
    for d in live() {
        let w = u64::from(d.weight);
        if at < w {
            return Some(d);
        }
        at -= w;
    }
    None
}

/// A well-mixed 64-bit value from a counter (SplitMix64's finalizer): successive counters
/// give rolls that look independent, so one atomic increment per request is all the
/// randomness weighting needs.
pub fn roll(counter: u64) -> u64 {
    let mut z = counter.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::super::model::{Pattern, StringMatch};
    use super::*;

    fn dest(subset: &str, weight: u32) -> Destination {
        Destination {
            service: "reviews.shop.svc.cluster.local".into(),
            port: 9080,
            subset: Some(subset.into()),
            weight,
            ..Default::default()
        }
    }

    fn route(name: &str, matches: Vec<RequestMatch>, destinations: Vec<Destination>) -> HttpRoute {
        HttpRoute {
            name: name.into(),
            matches,
            destinations,
            ..Default::default()
        }
    }

    fn view<'a>(
        method: &'a str,
        path: &'a str,
        query: Option<&'a str>,
        headers: &'a Vec<(&'a str, &'a str)>,
    ) -> RequestView<'a> {
        RequestView {
            method,
            path,
            query,
            port: 9080,
            headers,
        }
    }

    #[test]
    fn the_first_matching_route_wins_and_conditions_are_anded() {
        let jason = RequestMatch {
            headers: [("end-user".into(), StringMatch::Exact("jason".into()))].into(),
            ..Default::default()
        };
        let api_get = RequestMatch {
            uri: Some(StringMatch::Prefix("/api/".into())),
            method: Some(StringMatch::Exact("GET".into())),
            query_params: [("debug".into(), StringMatch::Exact("1".into()))].into(),
            ..Default::default()
        };
        let not_canary = RequestMatch {
            uri: Some(StringMatch::Regex(Pattern::new("/v[0-9]+/.*").unwrap())),
            without_headers: [("x-canary".into(), StringMatch::Prefix("y".into()))].into(),
            port: Some(9080),
            ..Default::default()
        };
        let routes = vec![
            route("a", vec![jason], vec![dest("v2", 100)]),
            route("b", vec![api_get], vec![dest("v3", 100)]),
            route("c", vec![not_canary], vec![dest("v4", 100)]),
            route("d", vec![], vec![dest("v1", 100)]),
        ];
        let none: Vec<(&str, &str)> = vec![];
        let jason_h = vec![("end-user", "jason")];
        let canary = vec![("x-canary", "yes")];
        let cases: Vec<(RequestView<'_>, usize)> = vec![
            (view("GET", "/", None, &jason_h), 0),
            (view("GET", "/api/x", Some("a=2&debug=1"), &none), 1),
            (view("GET", "/api/x", Some("debug=0"), &none), 3),
            (view("POST", "/api/x", Some("debug=1"), &none), 3),
            (view("GET", "/v2/items", None, &none), 2),
            (view("GET", "/v2/items", None, &canary), 3),
            (view("GET", "/v2", None, &none), 3),
        ];
        for (req, want) in cases {
            match choose_route(&routes, &req) {
                Choice::Route { index, .. } => {
                    assert_eq!(index, want, "{} {} {:?}", req.method, req.path, req.query)
                }
                Choice::NoRoute => panic!("no route for {}", req.path),
            }
        }
        // Without a catch-all, an unmatched request has no route.
        let only_jason = &routes[..1];
        assert_eq!(
            choose_route(only_jason, &view("GET", "/", None, &none)),
            Choice::NoRoute
        );
        // The port condition: a request to another port does not match.
        let mut other = view("GET", "/v2/items", None, &none);
        other.port = 80;
        assert!(matches!(
            choose_route(&routes[2..3], &other),
            Choice::NoRoute
        ));
    }

    #[test]
    fn weights_are_honoured_over_many_rolls_and_unusable_destinations_give_way() {
        let ds = vec![dest("v1", 90), dest("v2", 10)];
        let n = 100_000u64;
        let v2 = (0..n)
            .filter(|i| {
                pick_weighted(&ds, roll(*i), |_| true).and_then(|d| d.subset.as_deref())
                    == Some("v2")
            })
            .count() as f64;
        let share = v2 / n as f64;
        assert!((share - 0.10).abs() < 0.005, "v2 got {share}");
        // Weight 0 and a destination without endpoints get nothing; the rest take it all.
        let ds = vec![dest("v1", 80), dest("v2", 20), dest("v3", 0)];
        for i in 0..1000 {
            let d = pick_weighted(&ds, roll(i), |d| d.subset.as_deref() != Some("v2"));
            assert_eq!(d.and_then(|d| d.subset.as_deref()), Some("v1"));
        }
        assert_eq!(pick_weighted(&ds, roll(7), |_| false), None);
        // Extreme rolls stay in range.
        for r in [0, u64::MAX] {
            assert!(pick_weighted(&ds, r, |_| true).is_some());
        }
    }

    #[test]
    fn tables_are_bounded_and_need_a_weighted_destination() {
        use super::super::model::validate;
        assert!(validate("t", &[route("a", vec![], vec![dest("v1", 1)])]).is_ok());
        let err = validate("t", &[route("a", vec![], vec![])]).unwrap_err();
        assert!(err.contains("has 0 destinations"), "{err}");
        let err = validate("t", &[route("a", vec![], vec![dest("v1", 0)])]).unwrap_err();
        assert!(err.contains("weight 0"), "{err}");
    }

    #[test]
    fn the_json_shape_is_the_documented_one() {
        let json = serde_json::json!({
            "name": "shop/reviews",
            "matches": [{"headers": {"end-user": {"exact": "jason"}},
                         "uri": {"regex": "/r/[a-z]+"}}],
            "destinations": [{"service": "reviews.shop.svc.cluster.local", "port": 9080,
                              "subset": "v2", "weight": 100}]
        });
        let r: HttpRoute = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(serde_json::to_value(&r).unwrap(), json);
        let bomb = serde_json::json!({"name": "x", "matches": [{"uri": {"regex": "(a{1000}){1000}"}}],
                                      "destinations": []});
        assert!(serde_json::from_value::<HttpRoute>(bomb).is_err());
    }
}
