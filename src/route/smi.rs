//! SMI's TrafficSplit (`split.smi-spec.io/v1alpha2`, and v1alpha4's `matches`), read strictly
//! and compiled as OSM applies it: the root Service's traffic, on each of its HTTP ports
//! (declared HTTP or undeclared), is spread over the backend Services by weight, each at the
//! same port number. A backend of weight 0 gets nothing; the weights need not sum to 100.
//! With `matches` (HTTPRouteGroups of the split's namespace, merged) only the requests that
//! match are split; the others go to the root Service itself, as the SMI spec says.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::compile::{Problem, Registry, Source, by_age};
use super::model::{Destination, HttpRoute, MAX_DESTINATIONS, Pattern, RequestMatch, StringMatch};
use crate::authz::smi::{HttpMatch, HttpRouteGroupSpec};

pub const KIND: &str = "TrafficSplit";

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrafficSplitSpec {
    /// The root Service clients address (a short name in the split's namespace).
    pub service: String,
    #[serde(default)]
    pub backends: Vec<BackendSpec>,
    /// v1alpha3+: references to HTTPRouteGroups; only requests matching one of their
    /// matches are split.
    #[serde(default)]
    pub matches: Vec<MatchRef>,
}

/// A `TypedLocalObjectReference` to an HTTPRouteGroup of the split's namespace.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MatchRef {
    #[serde(default)]
    pub api_group: Option<String>,
    pub kind: String,
    pub name: String,
}

/// The HTTPRouteGroups a split may name, by (namespace, name): their matches as route
/// matches, or why the group cannot be read.
pub type RouteGroups = BTreeMap<(String, String), Result<Vec<RequestMatch>, String>>;

/// Reads the HTTPRouteGroups (strictly, as access control does) into route matches.
pub fn route_groups(sources: &[Source<'_>]) -> RouteGroups {
    sources
        .iter()
        .map(|g| {
            let read = serde_json::from_value::<HttpRouteGroupSpec>(g.spec.clone())
                .map_err(|e| format!("spec: {e}"))
                .and_then(|spec| {
                    spec.matches
                        .iter()
                        .enumerate()
                        .map(|(i, m)| {
                            group_match(m).map_err(|e| format!("matches[{i}] ({}): {e}", m.name))
                        })
                        .collect::<Result<Vec<_>, _>>()
                        .map(|v| v.concat())
                });
            ((g.namespace.to_string(), g.name.to_string()), read)
        })
        .collect()
}

/// One HTTPRouteGroup match as route matches (one per listed method, as a route match takes
/// one method): `pathRegex` against the whole path, `methods` exact or `*`, each header's
/// regex against its whole value (all must hold), as OSM builds Envoy's route matches.
fn group_match(m: &HttpMatch) -> Result<Vec<RequestMatch>, String> {
    let uri = m
        .path_regex
        .as_deref()
        .map(|p| Pattern::new(p).map(StringMatch::Regex))
        .transpose()
        .map_err(|e| format!("pathRegex: {e}"))?;
    let headers = m
        .headers
        .iter()
        .map(|(name, value)| {
            Pattern::new(value)
                .map(|p| (name.to_ascii_lowercase(), StringMatch::Regex(p)))
                .map_err(|e| format!("headers[{name}]: {e}"))
        })
        .collect::<Result<BTreeMap<_, _>, _>>()?;
    let base = RequestMatch {
        uri,
        headers,
        ..Default::default()
    };
    if m.methods.is_empty() || m.methods.iter().any(|x| x == "*") {
        return Ok(vec![base]);
    }
    Ok(m.methods
        .iter()
        .map(|x| RequestMatch {
            method: Some(StringMatch::Exact(x.clone())),
            ..base.clone()
        })
        .collect())
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BackendSpec {
    pub service: String,
    pub weight: i64,
}

/// One split: its root Service's FQDN and its routes per HTTP port (one catch-all route, or
/// the matched split then the root Service for the rest), plus the backends that do not
/// exist (kept: the proxy answers 503 `NR` for their share).
#[derive(Debug, Clone, PartialEq)]
pub struct CompiledSplit {
    pub root: String,
    pub routes: Vec<(u16, HttpRoute)>,
    pub dangling: Vec<String>,
}

pub fn compile_traffic_split(
    registry: &Registry,
    groups: &RouteGroups,
    src: &Source<'_>,
) -> Result<CompiledSplit, String> {
    let spec: TrafficSplitSpec =
        serde_json::from_value(src.spec.clone()).map_err(|e| format!("spec: {e}"))?;
    let mut matches = Vec::new();
    for (i, r) in spec.matches.iter().enumerate() {
        if r.kind != "HTTPRouteGroup"
            || r.api_group
                .as_deref()
                .is_some_and(|g| g != "specs.smi-spec.io")
        {
            return Err(format!(
                "spec.matches[{i}] is a {}{}; a split matches HTTPRouteGroups (specs.smi-spec.io) only",
                r.api_group
                    .as_deref()
                    .map(|g| format!("{g}/"))
                    .unwrap_or_default(),
                r.kind
            ));
        }
        match groups.get(&(src.namespace.to_string(), r.name.clone())) {
            None => {
                return Err(format!(
                    "spec.matches[{i}]: HTTPRouteGroup {}/{} does not exist",
                    src.namespace, r.name
                ));
            }
            Some(Err(e)) => {
                return Err(format!(
                    "spec.matches[{i}]: HTTPRouteGroup {}/{}: {e}",
                    src.namespace, r.name
                ));
            }
            Some(Ok(m)) => matches.extend(m.iter().cloned()),
        }
    }
    if !spec.matches.is_empty() && matches.is_empty() {
        return Err(
            "spec.matches names HTTPRouteGroups without any match; nothing would be split".into(),
        );
    }
    if spec.service.contains('.') {
        return Err(format!(
            "spec.service {:?} must be the short name of a Service in namespace {}",
            spec.service, src.namespace
        ));
    }
    let root = registry.resolve(&spec.service, src.namespace);
    let Some(ports) = registry.ports(&root) else {
        return Err(format!(
            "root service {root} is not a Service weft knows (yet)"
        ));
    };
    if spec.backends.is_empty() || spec.backends.len() > MAX_DESTINATIONS {
        return Err(format!(
            "spec.backends has {} entries; 1 to {MAX_DESTINATIONS} are accepted",
            spec.backends.len()
        ));
    }
    let mut backends = Vec::new();
    for (i, b) in spec.backends.iter().enumerate() {
        let weight = u32::try_from(b.weight).map_err(|_| {
            format!(
                "spec.backends[{i}].weight {} is negative or too large",
                b.weight
            )
        })?;
        if b.service.contains('.') {
            return Err(format!(
                "spec.backends[{i}].service {:?} must be the short name of a Service in namespace {}",
                b.service, src.namespace
            ));
        }
        backends.push((registry.resolve(&b.service, src.namespace), weight));
    }
    if backends.iter().all(|(_, w)| *w == 0) {
        return Err("every backend has weight 0".into());
    }
    let mut dangling = Vec::new();
    let mut routes = Vec::new();
    for port in ports.iter().filter(|p| p.http) {
        let destinations = backends
            .iter()
            .map(|(host, weight)| {
                match registry.ports(host) {
                    None => dangling.push(format!("backend {host} is not a Service weft knows")),
                    Some(ps) if !ps.iter().any(|p| p.port == port.port) => dangling.push(format!(
                        "backend {host} has no port {} (backends are reached at the root's port number)",
                        port.port
                    )),
                    Some(_) => {}
                }
                Destination {
                    service: host.clone(),
                    port: port.port,
                    subset: None,
                    weight: *weight,
                    ..Default::default()
                }
            })
            .collect();
        routes.push((
            port.port,
            HttpRoute {
                name: src.id(),
                matches: matches.clone(),
                destinations,
                ..Default::default()
            },
        ));
        if !matches.is_empty() {
            // The SMI spec: requests the groups do not match go to the root Service itself.
            routes.push((
                port.port,
                HttpRoute {
                    name: src.id(),
                    matches: vec![],
                    destinations: vec![Destination {
                        service: root.clone(),
                        port: port.port,
                        subset: None,
                        weight: 1,
                        ..Default::default()
                    }],
                    ..Default::default()
                },
            ));
        }
    }
    dangling.sort();
    dangling.dedup();
    Ok(CompiledSplit {
        root,
        routes,
        dangling,
    })
}

/// The split that applies to a root Service: which one, and its route per HTTP port.
#[derive(Debug, Clone, PartialEq)]
pub struct AppliedSplit {
    pub namespace: String,
    pub name: String,
    pub routes: Vec<(u16, HttpRoute)>,
}

/// Every TrafficSplit by root Service FQDN. For a root
/// named by several splits the oldest applies and the others are reported.
pub fn traffic_splits(
    registry: &Registry,
    groups: &RouteGroups,
    sources: &[Source<'_>],
    problems: &mut Vec<Problem>,
) -> BTreeMap<String, AppliedSplit> {
    let mut out: BTreeMap<String, AppliedSplit> = BTreeMap::new();
    for src in by_age(sources) {
        match compile_traffic_split(registry, groups, src) {
            Err(e) => problems.push(Problem::new(
                KIND,
                src,
                format!("{e}; the TrafficSplit is not applied"),
            )),
            Ok(split) => {
                if let Some(AppliedSplit {
                    namespace: ns,
                    name,
                    ..
                }) = out.get(&split.root)
                {
                    problems.push(Problem::new(
                        KIND,
                        src,
                        format!(
                            "{} is already split by TrafficSplit {ns}/{name} (older, which applies); this one is not applied",
                            split.root
                        ),
                    ));
                    continue;
                }
                if !split.dangling.is_empty() {
                    problems.push(Problem::new(
                        KIND,
                        src,
                        format!(
                            "{}; requests sent there get 503 (NR) until it exists",
                            split.dangling.join("; ")
                        ),
                    ));
                }
                if split.routes.is_empty() {
                    problems.push(Problem::new(
                        KIND,
                        src,
                        format!(
                            "{} has no HTTP port (declared TCP); nothing is split",
                            split.root
                        ),
                    ));
                    continue;
                }
                out.insert(
                    split.root,
                    AppliedSplit {
                        namespace: src.namespace.to_string(),
                        name: src.name.to_string(),
                        routes: split.routes,
                    },
                );
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::compile::{Resources, compile};
    use serde_json::{Value, json};

    /// Seed 000's bookstore: the root Service and both versions, port 14001 (undeclared).
    fn registry() -> Registry {
        let mut r = Registry::new("cluster.local");
        for s in ["bookstore", "bookstore-v1", "bookstore-v2"] {
            r.add(&format!("{s}.bookstore.svc.cluster.local"), 14001, true);
        }
        r
    }

    fn src<'a>(name: &'a str, created: &'a str, spec: &'a Value) -> Source<'a> {
        Source {
            namespace: "bookstore",
            name,
            created,
            spec,
        }
    }

    #[cfg(feature = "control-plane")]
    #[test]
    fn seed_000_splits_the_bookstore_80_20() {
        let doc: Value = serde_yaml::from_str(
            r#"
# traffic-split.yaml
# Split traffic between two versions of the bookstore
apiVersion: split.smi-spec.io/v1alpha2
kind: TrafficSplit
metadata:
  name: bookstore-split
  namespace: bookstore
spec:
  # The root service that receives traffic
  service: bookstore
  backends:
    # Send 80% of traffic to v1
    - service: bookstore-v1
      weight: 80
    # Send 20% of traffic to v2
    - service: bookstore-v2
      weight: 20
"#,
        )
        .unwrap();
        let spec = doc["spec"].clone();
        let tables = compile(
            &registry(),
            Resources {
                traffic_splits: &[src("bookstore-split", "t", &spec)],
                ..Default::default()
            },
        );
        assert_eq!(tables.problems, []);
        let routes = &tables.http[&("bookstore.bookstore.svc.cluster.local".to_string(), 14001)];
        let d = |s: &str, weight| Destination {
            service: format!("{s}.bookstore.svc.cluster.local"),
            port: 14001,
            subset: None,
            weight,
            ..Default::default()
        };
        assert_eq!(
            routes,
            &[HttpRoute {
                name: "bookstore/bookstore-split".into(),
                matches: vec![],
                destinations: vec![d("bookstore-v1", 80), d("bookstore-v2", 20)],
                ..Default::default()
            }]
        );
    }

    #[test]
    fn weight_zero_is_allowed_but_not_everywhere_and_bad_input_is_named() {
        let spec = |w1: i64, w2: i64| {
            json!({"service": "bookstore", "backends": [
                {"service": "bookstore-v1", "weight": w1}, {"service": "bookstore-v2", "weight": w2}]})
        };
        let ok = compile_traffic_split(
            &registry(),
            &RouteGroups::new(),
            &src("s", "t", &spec(100, 0)),
        )
        .unwrap();
        assert_eq!(ok.routes[0].1.destinations[1].weight, 0);
        let err = |v: Value| {
            compile_traffic_split(&registry(), &RouteGroups::new(), &src("s", "t", &v)).unwrap_err()
        };
        assert!(err(spec(0, 0)).contains("weight 0"));
        assert!(err(spec(-1, 10)).contains("backends[0].weight -1"));
        assert!(
            err(json!({"service": "nope", "backends": []}))
                .contains("nope.bookstore.svc.cluster.local")
        );
        assert!(
            err(json!({"service": "bookstore", "backends": [{"service": "bookstore-v1", "weight": 1}],
                       "matches": [{"kind": "TCPRoute", "name": "t"}]}))
            .contains("spec.matches[0] is a TCPRoute")
        );
        assert!(err(json!({"service": "bookstore", "backend": []})).contains("backend"));
    }

    #[test]
    fn a_virtual_service_wins_and_the_older_split_applies() {
        let a =
            json!({"service": "bookstore", "backends": [{"service": "bookstore-v1", "weight": 1}]});
        let b =
            json!({"service": "bookstore", "backends": [{"service": "bookstore-v2", "weight": 1}]});
        let tables = compile(
            &registry(),
            Resources {
                traffic_splits: &[
                    src("b", "2026-02-01T00:00:00Z", &b),
                    src("a", "2026-01-01T00:00:00Z", &a),
                ],
                ..Default::default()
            },
        );
        let key = ("bookstore.bookstore.svc.cluster.local".to_string(), 14001);
        assert_eq!(tables.http[&key][0].name, "bookstore/a");
        assert_eq!(tables.problems.len(), 1);
        assert!(tables.problems[0].message.contains("bookstore/a"));

        let vs = json!({"hosts": ["bookstore"], "http": [{"route": [{"destination": {"host": "bookstore-v2"}}]}]});
        let tables = compile(
            &registry(),
            Resources {
                virtual_services: &[src("vs", "t", &vs)],
                traffic_splits: &[src("a", "t", &a)],
                ..Default::default()
            },
        );
        assert_eq!(tables.http[&key][0].name, "bookstore/vs");
        assert_eq!(tables.problems.len(), 1, "{:?}", tables.problems);
        assert_eq!(
            (tables.problems[0].kind, tables.problems[0].name.as_str()),
            (KIND, "a")
        );
    }

    #[test]
    fn only_http_ports_are_split_and_missing_backends_are_reported() {
        let mut r = registry();
        r.add("bookstore.bookstore.svc.cluster.local", 5432, false);
        let spec = json!({"service": "bookstore", "backends": [
            {"service": "bookstore-v1", "weight": 50}, {"service": "bookstore-v3", "weight": 50}]});
        let mut problems = Vec::new();
        let out = traffic_splits(
            &r,
            &RouteGroups::new(),
            &[src("s", "t", &spec)],
            &mut problems,
        );
        let routes = &out["bookstore.bookstore.svc.cluster.local"].routes;
        assert_eq!(routes.iter().map(|(p, _)| *p).collect::<Vec<_>>(), [14001]);
        assert!(
            problems[0]
                .message
                .contains("bookstore-v3.bookstore.svc.cluster.local is not a Service")
        );
    }

    /// The SMI spec's A/B example (v1alpha4) on the bookstore: the HTTPRouteGroup's matches
    /// (merged over two groups) take requests to the split, every other request goes to the
    /// root Service; what OSM's Envoy route matches would do, request by request.
    #[cfg(feature = "control-plane")]
    #[test]
    fn v1alpha4_matches_split_only_the_matching_requests_and_the_rest_go_to_the_root() {
        use crate::route::select::{Choice, RequestView, choose_route};
        let docs: Vec<Value> = serde_yaml::Deserializer::from_str(
            r#"
apiVersion: split.smi-spec.io/v1alpha4
kind: TrafficSplit
metadata:
  name: ab-test
  namespace: bookstore
spec:
  service: bookstore
  matches:
  - kind: HTTPRouteGroup
    name: ab-test
  - kind: HTTPRouteGroup
    apiGroup: specs.smi-spec.io
    name: api-readers
  backends:
  - service: bookstore-v1
    weight: 0
  - service: bookstore-v2
    weight: 100
---
apiVersion: specs.smi-spec.io/v1alpha4
kind: HTTPRouteGroup
metadata:
  name: ab-test
  namespace: bookstore
spec:
  matches:
  - name: firefox-users
    headers:
      user-agent: ".*Firefox.*"
---
apiVersion: specs.smi-spec.io/v1alpha4
kind: HTTPRouteGroup
metadata:
  name: api-readers
  namespace: bookstore
spec:
  matches:
  - name: iphone-users
    pathRegex: "/api/.*"
    methods: [GET, HEAD]
    headers:
      user-agent: ".*iPhone.*"
"#,
        )
        .map(|d| Value::deserialize(d).unwrap())
        .collect();
        let specs: Vec<Value> = docs.iter().map(|d| d["spec"].clone()).collect();
        let groups = [
            src("ab-test", "t", &specs[1]),
            src("api-readers", "t", &specs[2]),
        ];
        let tables = compile(
            &registry(),
            Resources {
                traffic_splits: &[src("ab-test", "t", &specs[0])],
                http_route_groups: &groups,
                ..Default::default()
            },
        );
        assert_eq!(tables.problems, []);
        let routes = &tables.http[&("bookstore.bookstore.svc.cluster.local".to_string(), 14001)];
        // firefox-users, then iphone-users once per method; then the root for the rest.
        assert_eq!(routes.len(), 2);
        assert_eq!(routes[0].matches.len(), 3);
        assert_eq!(routes[1].matches, []);
        let host = |r: &HttpRoute| -> Vec<(String, u32)> {
            r.destinations
                .iter()
                .map(|d| (d.service.clone(), d.weight))
                .collect()
        };
        assert_eq!(
            host(&routes[1]),
            [("bookstore.bookstore.svc.cluster.local".to_string(), 1)]
        );
        // (method, path, user-agent) -> the route index that takes it.
        let cases = [
            (
                "GET",
                "/",
                "Mozilla/5.0 (X11; Linux) Gecko/20100101 Firefox/128.0",
                0,
            ),
            ("POST", "/buy", "Firefox", 0),
            ("GET", "/", "curl/8.5", 1),
            (
                "GET",
                "/api/books",
                "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0)",
                0,
            ),
            ("HEAD", "/api/books", "iPhone", 0),
            ("POST", "/api/books", "iPhone", 1),
            // pathRegex matches the whole path, as Envoy's safe_regex route match does.
            ("GET", "/v2/api/books", "iPhone", 1),
            ("GET", "/api/books", "Android", 1),
        ];
        for (method, path, agent, want) in cases {
            let headers = vec![("user-agent", agent)];
            let req = RequestView {
                method,
                path,
                query: None,
                port: 14001,
                headers: &headers,
            };
            match choose_route(routes, &req) {
                Choice::Route { index, .. } => {
                    assert_eq!(index, want, "{method} {path} {agent}")
                }
                Choice::NoRoute => panic!("no route for {method} {path} {agent}"),
            }
        }
    }

    #[test]
    fn a_split_naming_a_missing_or_unreadable_route_group_is_not_applied_and_says_why() {
        let split = json!({"service": "bookstore", "matches": [{"kind": "HTTPRouteGroup", "name": "g"}],
                           "backends": [{"service": "bookstore-v2", "weight": 1}]});
        let compile_with = |group: Option<Value>| {
            let group = group.unwrap_or(Value::Null);
            let sources = if group.is_null() {
                vec![]
            } else {
                vec![src("g", "t", &group)]
            };
            let groups = route_groups(&sources);
            let mut problems = Vec::new();
            let out = traffic_splits(
                &registry(),
                &groups,
                &[src("s", "t", &split)],
                &mut problems,
            );
            assert!(out.is_empty(), "applied despite {problems:?}");
            assert_eq!(problems.len(), 1);
            problems[0].message.clone()
        };
        let m = compile_with(None);
        assert!(
            m.contains("HTTPRouteGroup bookstore/g does not exist"),
            "{m}"
        );
        let m = compile_with(Some(
            json!({"matches": [{"name": "x", "pathRegex": "(a{1000}){1000}"}]}),
        ));
        assert!(m.contains("matches[0] (x): pathRegex"), "{m}");
        let m = compile_with(Some(json!({"matches": [{"name": "x", "host": "a"}]})));
        assert!(m.contains("unknown field `host`"), "{m}");
        let m = compile_with(Some(json!({"matches": []})));
        assert!(m.contains("without any match"), "{m}");
        // A group in another namespace is not the split's.
        let mut problems = Vec::new();
        let other = json!({"matches": [{"name": "x"}]});
        let groups = route_groups(&[Source {
            namespace: "elsewhere",
            name: "g",
            created: "t",
            spec: &other,
        }]);
        traffic_splits(
            &registry(),
            &groups,
            &[src("s", "t", &split)],
            &mut problems,
        );
        assert!(problems[0].message.contains("bookstore/g does not exist"));
    }
}
