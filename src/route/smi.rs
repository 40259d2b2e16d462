//! SMI's `split.smi-spec.io/v1alpha2` TrafficSplit, read strictly and compiled as OSM applies
//! it: the root Service's traffic, on each of its HTTP ports (declared HTTP or undeclared), is
//! one catch-all route spread over the backend Services by weight, each at the same port
//! number. A backend of weight 0 gets nothing; the weights need not sum to 100.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

use super::compile::{Problem, Registry, Source, by_age};
use super::model::{Destination, HttpRoute, MAX_DESTINATIONS};

pub const KIND: &str = "TrafficSplit";

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrafficSplitSpec {
    /// The root Service clients address (a short name in the split's namespace).
    pub service: String,
    #[serde(default)]
    pub backends: Vec<BackendSpec>,
    /// v1alpha3+'s HTTPRouteGroup matches: not supported yet.
    #[serde(default)]
    pub matches: Option<Value>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BackendSpec {
    pub service: String,
    pub weight: i64,
}

/// One split: its root Service's FQDN and one route per HTTP port of it, plus the backends
/// that do not exist (kept: the proxy answers 503 `NR` for their share).
#[derive(Debug, Clone, PartialEq)]
pub struct CompiledSplit {
    pub root: String,
    pub routes: Vec<(u16, HttpRoute)>,
    pub dangling: Vec<String>,
}

pub fn compile_traffic_split(
    registry: &Registry,
    src: &Source<'_>,
) -> Result<CompiledSplit, String> {
    let spec: TrafficSplitSpec =
        serde_json::from_value(src.spec.clone()).map_err(|e| format!("spec: {e}"))?;
    if spec.matches.is_some() {
        return Err("spec.matches is not supported yet".into());
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
                matches: vec![],
                destinations,
                ..Default::default()
            },
        ));
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
    sources: &[Source<'_>],
    problems: &mut Vec<Problem>,
) -> BTreeMap<String, AppliedSplit> {
    let mut out: BTreeMap<String, AppliedSplit> = BTreeMap::new();
    for src in by_age(sources) {
        match compile_traffic_split(registry, src) {
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
    use serde_json::json;

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
        let ok = compile_traffic_split(&registry(), &src("s", "t", &spec(100, 0))).unwrap();
        assert_eq!(ok.routes[0].1.destinations[1].weight, 0);
        let err = |v: Value| compile_traffic_split(&registry(), &src("s", "t", &v)).unwrap_err();
        assert!(err(spec(0, 0)).contains("weight 0"));
        assert!(err(spec(-1, 10)).contains("backends[0].weight -1"));
        assert!(
            err(json!({"service": "nope", "backends": []}))
                .contains("nope.bookstore.svc.cluster.local")
        );
        assert!(
            err(json!({"service": "bookstore", "backends": [], "matches": []}))
                .contains("spec.matches")
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
        let out = traffic_splits(&r, &[src("s", "t", &spec)], &mut problems);
        let routes = &out["bookstore.bookstore.svc.cluster.local"].routes;
        assert_eq!(routes.iter().map(|(p, _)| *p).collect::<Vec<_>>(), [14001]);
        assert!(
            problems[0]
                .message
                .contains("bookstore-v3.bookstore.svc.cluster.local is not a Service")
        );
    }
}
