//! VirtualService `tls[]` and `tcp[]` routes of one Service port as the snapshot carries them,
//! and the pure choice the proxy makes per connection on its L4 path (no HTTP termination):
//! `tls` routes by the ClientHello's SNI first, then `tcp` routes, first match wins; no match
//! keeps the Service as dialled (Istio's default filter chain).
//!
//! ```json
//! "l4": {
//!   "tls": [{"name": "shop/db", "matches": [{"sniHosts": ["db.example.com"]}],
//!            "destinations": [{"service": "db.shop.svc.cluster.local", "port": 443, "weight": 100}]}],
//!   "tcp": [{"name": "shop/db", "matches": [{"port": 5432}],
//!            "destinations": [{"service": "db.shop.svc.cluster.local", "port": 5432,
//!                              "subset": "v2", "weight": 100}]}]
//! }
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::model::{Destination, MAX_DESTINATIONS, MAX_ROUTES};

/// The L4 routes of one Service port.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct L4Table {
    /// Tried first, when the client opened with a TLS ClientHello naming a server.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tls: Vec<L4Route>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tcp: Vec<L4Route>,
}

impl L4Table {
    pub fn is_empty(&self) -> bool {
        self.tls.is_empty() && self.tcp.is_empty()
    }
}

/// One `tcp[]` or `tls[]` route: the connections it takes and where they go, by weight.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct L4Route {
    /// `<namespace>/<name>` of the VirtualService.
    pub name: String,
    /// Any one of these; none means every connection (a `tcp` route only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<L4Match>,
    pub destinations: Vec<Destination>,
}

/// Istio's `L4MatchAttributes` / `TLSMatchAttributes`: every condition given must hold.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct L4Match {
    /// The Service port dialled (already true of the table it is in; kept for display).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// The address the app dialled falls in one of these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub destination_subnets: Vec<IpNet>,
    /// `tls` routes: the SNI is one of these (lowercase; `*.x` takes any name under `x`, `*`
    /// any name).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sni_hosts: Vec<String>,
    /// The client pods these apply to. The control plane leaves a match out of the tables of
    /// proxies whose pod lacks them ([`super::source`]); the proxy never reads them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub source_labels: BTreeMap<String, String>,
    /// Istio's `sourceNamespace`: only client pods of this namespace (filtered like
    /// `source_labels`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_namespace: Option<String>,
}

impl L4Match {
    /// Whether a connection to `dst` with server name `sni` is taken.
    pub fn holds(&self, dst: SocketAddr, sni: Option<&str>) -> bool {
        let subnet = self.destination_subnets.is_empty()
            || self
                .destination_subnets
                .iter()
                .any(|n| n.contains(&dst.ip()));
        let server = self.sni_hosts.is_empty()
            || sni.is_some_and(|s| self.sni_hosts.iter().any(|h| sni_matches(h, s)));
        self.port.is_none_or(|p| p == dst.port()) && subnet && server
    }
}

impl L4Route {
    fn takes(&self, dst: SocketAddr, sni: Option<&str>) -> bool {
        self.matches.is_empty() || self.matches.iter().any(|m| m.holds(dst, sni))
    }
}

/// Istio's SNI wildcard: `*.example.com` takes every name under `example.com` (one label or
/// more: `a.example.com`, `a.b.example.com`), never `example.com` itself; `*` takes any name.
/// Names compare case-insensitively.
pub fn sni_matches(pattern: &str, name: &str) -> bool {
    let name = name.trim_end_matches('.');
    if pattern == "*" {
        return true;
    }
    match pattern.strip_prefix("*.") {
        Some(suffix) => {
            name.len() > suffix.len() + 1
                && name[name.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
                && name.as_bytes()[name.len() - suffix.len() - 1] == b'.'
        }
        None => pattern.eq_ignore_ascii_case(name),
    }
}

/// Which kind of route took a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Tls,
    Tcp,
}

/// The route that takes a connection to `dst` (the address the app dialled) whose client
/// opened with a ClientHello naming `sni` (None: no ClientHello read, or one without SNI):
/// the first `tls` route that matches, else the first `tcp` route. None: the Service as
/// dialled.
pub fn choose<'a>(
    table: &'a L4Table,
    dst: SocketAddr,
    sni: Option<&str>,
) -> Option<(&'a L4Route, Kind)> {
    if let Some(sni) = sni
        && let Some(r) = table.tls.iter().find(|r| r.takes(dst, Some(sni)))
    {
        return Some((r, Kind::Tls));
    }
    table
        .tcp
        .iter()
        .find(|r| r.takes(dst, None))
        .map(|r| (r, Kind::Tcp))
}

/// Checks a table the way the proxy needs it: bounded, every route with 1 to
/// [`MAX_DESTINATIONS`] destinations and some weight, every `tls` match naming a server.
pub fn validate(at: &str, table: &L4Table) -> Result<(), String> {
    for (kind, routes) in [("tls", &table.tls), ("tcp", &table.tcp)] {
        if routes.len() > MAX_ROUTES {
            return Err(format!(
                "{at}.{kind} has {} routes; at most {MAX_ROUTES} are accepted",
                routes.len()
            ));
        }
        for (i, r) in routes.iter().enumerate() {
            let at = format!("{at}.{kind}[{i}] ({})", r.name);
            if r.destinations.is_empty() || r.destinations.len() > MAX_DESTINATIONS {
                return Err(format!(
                    "{at} has {} destinations; 1 to {MAX_DESTINATIONS} are accepted",
                    r.destinations.len()
                ));
            }
            if r.destinations.iter().all(|d| d.weight == 0) {
                return Err(format!("{at} gives every destination weight 0"));
            }
            if kind == "tls"
                && (r.matches.is_empty() || r.matches.iter().any(|m| m.sni_hosts.is_empty()))
            {
                return Err(format!("{at}: every tls match names sniHosts"));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dest(subset: &str) -> Destination {
        Destination {
            service: "db.shop.svc.cluster.local".into(),
            port: 5432,
            subset: Some(subset.into()),
            weight: 100,
            ..Default::default()
        }
    }

    fn route(name: &str, matches: Vec<L4Match>) -> L4Route {
        L4Route {
            name: name.into(),
            matches,
            destinations: vec![dest(name)],
        }
    }

    #[test]
    fn sni_wildcards_take_names_under_the_suffix_as_istio_documents() {
        for (pattern, name, want) in [
            ("db.example.com", "db.example.com", true),
            ("db.example.com", "DB.Example.com", true),
            ("db.example.com", "db.example.com.", true),
            ("db.example.com", "x.db.example.com", false),
            ("*.com", "foo.example.com", true),
            ("*.com", "example.com", true),
            ("*.example.com", "a.example.com", true),
            ("*.example.com", "a.b.example.com", true),
            ("*.example.com", "example.com", false),
            ("*.example.com", "aexample.com", false),
            ("*.example.com", ".example.com", false),
            ("*", "anything.at.all", true),
        ] {
            assert_eq!(sni_matches(pattern, name), want, "{pattern} vs {name}");
        }
    }

    #[test]
    fn tls_routes_by_sni_first_then_tcp_routes_first_match_wins_else_the_service() {
        let dst: SocketAddr = "198.19.0.10:5432".parse().unwrap();
        let other: SocketAddr = "198.19.1.10:5432".parse().unwrap();
        let table = L4Table {
            tls: vec![
                route(
                    "tls-a",
                    vec![L4Match {
                        sni_hosts: vec!["a.example.com".into()],
                        ..Default::default()
                    }],
                ),
                route(
                    "tls-wild",
                    vec![L4Match {
                        sni_hosts: vec!["*.example.com".into()],
                        destination_subnets: vec!["198.19.0.0/24".parse().unwrap()],
                        ..Default::default()
                    }],
                ),
            ],
            tcp: vec![
                route(
                    "tcp-subnet",
                    vec![L4Match {
                        destination_subnets: vec!["198.19.1.10/32".parse().unwrap()],
                        ..Default::default()
                    }],
                ),
                route(
                    "tcp-port",
                    vec![L4Match {
                        port: Some(5432),
                        ..Default::default()
                    }],
                ),
            ],
        };
        let name =
            |sni: Option<&str>, dst| choose(&table, dst, sni).map(|(r, k)| (r.name.as_str(), k));
        for (sni, to, want) in [
            (Some("a.example.com"), dst, Some(("tls-a", Kind::Tls))),
            (Some("b.example.com"), dst, Some(("tls-wild", Kind::Tls))),
            // The wildcard's subnet does not hold: the tcp routes decide.
            (
                Some("b.example.com"),
                other,
                Some(("tcp-subnet", Kind::Tcp)),
            ),
            (Some("elsewhere.org"), dst, Some(("tcp-port", Kind::Tcp))),
            (None, other, Some(("tcp-subnet", Kind::Tcp))),
            (None, dst, Some(("tcp-port", Kind::Tcp))),
            (None, "198.19.0.10:3306".parse().unwrap(), None),
        ] {
            assert_eq!(name(sni, to), want, "{sni:?} to {to}");
        }
        // A tcp route without matches takes everything left.
        let all = L4Table {
            tcp: vec![route("all", vec![])],
            ..Default::default()
        };
        assert_eq!(
            choose(&all, other, Some("x")).map(|(r, _)| r.name.as_str()),
            Some("all")
        );
        assert_eq!(choose(&L4Table::default(), dst, Some("x")), None);
    }

    #[test]
    fn validation_refuses_what_the_proxy_could_not_serve() {
        let mut t = L4Table {
            tcp: vec![route("ok", vec![])],
            ..Default::default()
        };
        assert_eq!(validate("svc", &t), Ok(()));
        t.tcp[0].destinations[0].weight = 0;
        assert!(validate("svc", &t).unwrap_err().contains("weight 0"));
        t.tcp[0].destinations.clear();
        assert!(validate("svc", &t).unwrap_err().contains("0 destinations"));
        let t = L4Table {
            tls: vec![route("no-sni", vec![L4Match::default()])],
            ..Default::default()
        };
        assert!(validate("svc", &t).unwrap_err().contains("sniHosts"));
        // The JSON the snapshot carries reads back the same.
        let t = L4Table {
            tcp: vec![route(
                "json",
                vec![L4Match {
                    port: Some(5432),
                    destination_subnets: vec!["198.18.0.0/15".parse().unwrap()],
                    ..Default::default()
                }],
            )],
            ..Default::default()
        };
        let text = serde_json::to_string(&t).unwrap();
        assert!(
            text.contains(r#""destinationSubnets":["198.18.0.0/15"]"#),
            "{text}"
        );
        assert_eq!(serde_json::from_str::<L4Table>(&text).unwrap(), t);
    }
}
