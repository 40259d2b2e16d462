//! `sourceLabels` and `sourceNamespace`: which routes one client proxy gets. A VirtualService
//! match with `sourceLabels` (`http`, `tcp` or `tls`) applies only to clients whose pod carries
//! every one of those labels, and one with `sourceNamespace` only to clients of that namespace
//! (Istio's `sourceMatchHTTP`); the control plane leaves the other matches out of each proxy's
//! tables (and a route with none left), so the proxy never evaluates them. Kube-free.

use std::collections::{BTreeMap, BTreeSet};

use super::l4::{L4Route, L4Table};
use super::model::HttpRoute;
use crate::snapshot::Service;

pub type Labels = BTreeMap<String, String>;

/// The client condition of one match: every label, and the namespace when given.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Selector {
    pub labels: Labels,
    pub namespace: Option<String>,
}

impl Selector {
    fn of(labels: &Labels, namespace: &Option<String>) -> Self {
        Selector {
            labels: labels.clone(),
            namespace: namespace.clone(),
        }
    }

    fn is_empty(&self) -> bool {
        self.labels.is_empty() && self.namespace.is_none()
    }

    /// Whether a pod of `namespace` with `labels` is one this names.
    pub fn holds(&self, namespace: &str, labels: &Labels) -> bool {
        selects(&self.labels, labels) && self.namespace.as_deref().is_none_or(|n| n == namespace)
    }
}

/// Whether a pod with `labels` is one `want` names (every label of `want`, same value).
pub fn selects(want: &Labels, labels: &Labels) -> bool {
    want.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// The client condition of every match of a Service's routes (empty ones included).
fn conditions(svc: &Service) -> impl Iterator<Item = Selector> + '_ {
    let http = svc
        .http
        .iter()
        .flat_map(|r| &r.matches)
        .map(|m| Selector::of(&m.source_labels, &m.source_namespace));
    let l4 = svc
        .l4
        .tls
        .iter()
        .chain(&svc.l4.tcp)
        .flat_map(|r| &r.matches)
        .map(|m| Selector::of(&m.source_labels, &m.source_namespace));
    http.chain(l4)
}

/// Every distinct client condition (`sourceLabels`, `sourceNamespace`) of the Services'
/// routes, in a stable order. Empty when no route names any: then every proxy gets the same
/// tables.
pub fn selectors<'a>(services: impl IntoIterator<Item = &'a Service>) -> Vec<Selector> {
    let mut out = BTreeSet::new();
    for svc in services {
        out.extend(conditions(svc).filter(|s| !s.is_empty()));
    }
    out.into_iter().collect()
}

/// Which of `selectors` a pod of `namespace` with `labels` is named by: pods with the same
/// answer get the same tables.
pub fn signature(selectors: &[Selector], namespace: &str, labels: &Labels) -> Vec<bool> {
    selectors
        .iter()
        .map(|s| s.holds(namespace, labels))
        .collect()
}

/// Whether any route of the Service names its clients (only those Services differ between
/// proxies).
pub fn labelled(svc: &Service) -> bool {
    conditions(svc).any(|s| !s.is_empty())
}

/// The HTTP routes a client pod of `namespace` with `labels` gets: matches naming other pods
/// left out, and a route whose every match is left out with them. A route without matches
/// stays.
pub fn http_for(routes: &[HttpRoute], namespace: &str, labels: &Labels) -> Vec<HttpRoute> {
    routes
        .iter()
        .filter_map(|r| {
            if r.matches.is_empty() {
                return Some(r.clone());
            }
            let matches: Vec<_> = r
                .matches
                .iter()
                .filter(|m| {
                    Selector::of(&m.source_labels, &m.source_namespace).holds(namespace, labels)
                })
                .cloned()
                .collect();
            (!matches.is_empty()).then(|| HttpRoute {
                matches,
                ..r.clone()
            })
        })
        .collect()
}

fn l4_for(routes: &[L4Route], namespace: &str, labels: &Labels) -> Vec<L4Route> {
    routes
        .iter()
        .filter_map(|r| {
            if r.matches.is_empty() {
                return Some(r.clone());
            }
            let matches: Vec<_> = r
                .matches
                .iter()
                .filter(|m| {
                    Selector::of(&m.source_labels, &m.source_namespace).holds(namespace, labels)
                })
                .cloned()
                .collect();
            (!matches.is_empty()).then(|| L4Route {
                matches,
                ..r.clone()
            })
        })
        .collect()
}

/// The Service entry as a client pod of `namespace` with `labels` gets it.
pub fn service_for(svc: &Service, namespace: &str, labels: &Labels) -> Service {
    if !labelled(svc) {
        return svc.clone();
    }
    Service {
        http: http_for(&svc.http, namespace, labels),
        l4: L4Table {
            tls: l4_for(&svc.l4.tls, namespace, labels),
            tcp: l4_for(&svc.l4.tcp, namespace, labels),
        },
        ..svc.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::l4::L4Match;
    use crate::route::{Destination, RequestMatch};

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn to(subset: &str) -> Vec<Destination> {
        vec![Destination {
            service: "reviews.shop.svc.cluster.local".into(),
            port: 9080,
            subset: Some(subset.into()),
            weight: 100,
            ..Default::default()
        }]
    }

    fn http(name: &str, sources: &[Labels]) -> HttpRoute {
        HttpRoute {
            name: name.into(),
            matches: sources
                .iter()
                .map(|l| RequestMatch {
                    source_labels: l.clone(),
                    ..Default::default()
                })
                .collect(),
            destinations: to(name),
            ..Default::default()
        }
    }

    #[test]
    fn each_client_gets_the_matches_its_labels_select_and_routes_without_any_left_go() {
        let tester = labels(&[("app", "client"), ("role", "tester")]);
        let plain = labels(&[("app", "client")]);
        let routes = vec![
            http("v2-for-testers", &[labels(&[("role", "tester")])]),
            // Two matches: one for testers, one for every pod (no labels).
            http("either", &[labels(&[("role", "tester")]), Labels::new()]),
            http("v1", &[]),
        ];
        let names = |rs: &[HttpRoute]| -> Vec<(String, usize)> {
            rs.iter()
                .map(|r| (r.name.clone(), r.matches.len()))
                .collect()
        };
        for (who, pod, want) in [
            (
                "tester",
                &tester,
                vec![
                    ("v2-for-testers".to_string(), 1),
                    ("either".to_string(), 2),
                    ("v1".to_string(), 0),
                ],
            ),
            (
                "plain",
                &plain,
                vec![("either".to_string(), 1), ("v1".to_string(), 0)],
            ),
        ] {
            assert_eq!(names(&http_for(&routes, "shop", pod)), want, "{who}");
        }
        // A selector holds only with every label at its value.
        assert!(!selects(
            &labels(&[("role", "tester"), ("app", "x")]),
            &tester
        ));
        assert!(selects(&Labels::new(), &plain));
    }

    #[test]
    fn services_with_labelled_routes_differ_per_signature_and_l4_routes_filter_alike() {
        let svc = |http: Vec<HttpRoute>, tcp: Vec<L4Route>| Service {
            cluster_ip: Some("198.19.0.21".parse().unwrap()),
            port: 9080,
            name: "reviews.shop.svc.cluster.local".into(),
            protocol: Default::default(),
            detect_protocol: false,
            endpoints: vec![],
            subsets: Default::default(),
            http,
            tls: None,
            subset_tls: Default::default(),
            traffic: Default::default(),
            subset_traffic: Default::default(),
            l4: L4Table { tls: vec![], tcp },
        };
        let plain = svc(vec![http("v1", &[])], vec![]);
        let tcp = |name: &str, l: Labels| L4Route {
            name: name.into(),
            matches: vec![L4Match {
                source_labels: l,
                ..Default::default()
            }],
            destinations: to(name),
        };
        let labelled_svc = svc(
            vec![],
            vec![
                tcp("tester", labels(&[("role", "tester")])),
                tcp("canary", labels(&[("track", "canary")])),
            ],
        );
        assert!(!labelled(&plain) && labelled(&labelled_svc));
        let sel = selectors([&plain, &labelled_svc]);
        let by_labels = |l: Labels| Selector {
            labels: l,
            namespace: None,
        };
        assert_eq!(
            sel,
            [
                by_labels(labels(&[("role", "tester")])),
                by_labels(labels(&[("track", "canary")]))
            ]
        );
        assert_eq!(
            signature(&sel, "shop", &labels(&[("role", "tester"), ("app", "c")])),
            [true, false]
        );
        let got = service_for(&labelled_svc, "shop", &labels(&[("track", "canary")]));
        assert_eq!(got.l4.tcp.len(), 1);
        assert_eq!(got.l4.tcp[0].name, "canary");
        assert_eq!(service_for(&plain, "shop", &Labels::new()), plain);
    }

    /// Istio's `sourceMatchHTTP`: `sourceNamespace` holds only for clients of that namespace,
    /// and together with `sourceLabels` both must hold.
    #[test]
    fn source_namespace_keeps_a_match_for_clients_of_that_namespace_only() {
        let in_ns = |name: &str, ns: &str, l: Labels| HttpRoute {
            name: name.into(),
            matches: vec![RequestMatch {
                source_labels: l,
                source_namespace: Some(ns.into()),
                ..Default::default()
            }],
            destinations: to(name),
            ..Default::default()
        };
        let routes = vec![
            in_ns("from-front", "front", Labels::new()),
            in_ns("front-testers", "front", labels(&[("role", "tester")])),
            http("v1", &[]),
        ];
        let names = |ns: &str, l: &Labels| -> Vec<String> {
            http_for(&routes, ns, l)
                .into_iter()
                .map(|r| r.name)
                .collect()
        };
        let tester = labels(&[("role", "tester")]);
        assert_eq!(
            names("front", &tester),
            ["from-front", "front-testers", "v1"]
        );
        assert_eq!(names("front", &Labels::new()), ["from-front", "v1"]);
        assert_eq!(names("back", &tester), ["v1"], "another namespace's tester");
        let svc = Service {
            cluster_ip: Some("198.19.0.21".parse().unwrap()),
            port: 9080,
            name: "reviews.shop.svc.cluster.local".into(),
            protocol: Default::default(),
            detect_protocol: false,
            endpoints: vec![],
            subsets: Default::default(),
            http: routes.clone(),
            tls: None,
            subset_tls: Default::default(),
            traffic: Default::default(),
            subset_traffic: Default::default(),
            l4: L4Table {
                tls: vec![],
                tcp: vec![L4Route {
                    name: "tcp-from-back".into(),
                    matches: vec![L4Match {
                        source_namespace: Some("back".into()),
                        ..Default::default()
                    }],
                    destinations: to("v2"),
                }],
            },
        };
        assert!(labelled(&svc));
        let sel = selectors([&svc]);
        assert_eq!(sel.len(), 3, "{sel:?}");
        // Two pods of different namespaces with the same labels get different tables.
        assert_ne!(
            signature(&sel, "front", &Labels::new()),
            signature(&sel, "back", &Labels::new())
        );
        assert_eq!(service_for(&svc, "front", &Labels::new()).l4.tcp, []);
        assert_eq!(service_for(&svc, "back", &Labels::new()).l4.tcp.len(), 1);
    }
}
