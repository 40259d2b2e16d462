//! Several ServiceEntries declaring one host: which of them a proxy of a namespace uses and how
//! the entries of one namespace merge, as Istio's SidecarScope does (`appendSidecarServices`,
//! `canMergeServices`, and `selectServices`' own-namespace rule).
//!
//! Each entry keeps its own `exportTo`: a proxy sees only the entries exported to its
//! namespace. Among those, one namespace owns the host: the proxy's own, else the namespace of
//! the first entry exported to it by name, else of the first exported to `*` (oldest first in
//! each, Istio's `servicesExportedToNamespace` order). The owner's oldest visible entry is the
//! host's declaration; a newer visible entry of that namespace merges into it (the port numbers
//! it lacks; endpoints and addresses of a port both declare alike) only when it has the same
//! resolution, the same `exportTo` and the same `workloadSelector`; otherwise that proxy does
//! not use it ([`conflicts`] names it on the newer entry).

use std::collections::BTreeMap;

use super::egress::{Export, ExternalService};

/// One ServiceEntry's declaration of one host, as the merge reads it.
#[derive(Debug, Clone, Copy)]
pub struct Declaration<'a> {
    pub export: &'a Export,
    pub selector: Option<&'a BTreeMap<String, String>>,
    pub service: &'a ExternalService,
}

/// Why `newer` does not merge into `older` (same host and namespace), or None when it does.
fn refusal(older: &Declaration<'_>, newer: &Declaration<'_>) -> Option<String> {
    let (o, n) = (older.service, newer.service);
    if o.resolution != n.resolution {
        return Some(format!(
            "resolution {}, this one says {}",
            upper(&o.resolution),
            upper(&n.resolution)
        ));
    }
    if older.export != newer.export {
        return Some(format!(
            "exportTo {}, this one says {}",
            export_text(older.export),
            export_text(newer.export)
        ));
    }
    if older.selector != newer.selector {
        return Some("another workloadSelector".to_string());
    }
    None
}

/// Whether some namespace sees both.
fn overlap(a: &Export, b: &Export) -> bool {
    match (a, b) {
        (Export::All, Export::All) => true,
        (Export::All, Export::Namespaces(n)) | (Export::Namespaces(n), Export::All) => {
            !n.is_empty()
        }
        (Export::Namespaces(x), Export::Namespaces(y)) => x.intersection(y).next().is_some(),
    }
}

fn export_text(e: &Export) -> String {
    match e {
        Export::All => "*".to_string(),
        Export::Namespaces(n) if n.is_empty() => "~".to_string(),
        Export::Namespaces(n) => n.iter().cloned().collect::<Vec<_>>().join(","),
    }
}

/// A value as its YAML spells it, upper case (`STATIC`, `HTTP`), for messages.
fn upper<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_ascii_uppercase))
        .unwrap_or_default()
}

/// What of the newer entries is not used, per newer entry: `(index, message)`, `decls` oldest
/// first. A newer entry is judged against the oldest entry of its host and namespace that some
/// namespace sees together with it (the one a proxy seeing both takes as the declaration).
pub fn conflicts(decls: &[Declaration<'_>]) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (i, newer) in decls.iter().enumerate() {
        let n = newer.service;
        let Some(older) = decls[..i].iter().find(|o| {
            o.service.host == n.host
                && o.service.namespace == n.namespace
                && overlap(o.export, newer.export)
        }) else {
            continue;
        };
        let o = older.service;
        let host = &n.host;
        if let Some(why) = refusal(older, newer) {
            out.push((
                i,
                format!(
                    "host {host} is declared by the older ServiceEntry {} with {why}: entries of one namespace for one host merge only with the same resolution, exportTo and workloadSelector (as Istio merges them), so a proxy that sees both uses the older one's declaration of {host} and not this one's",
                    o.source
                ),
            ));
            continue;
        }
        for p in &n.ports {
            if let Some(op) = o
                .ports
                .iter()
                .find(|op| op.number == p.number && op.protocol != p.protocol)
            {
                out.push((
                    i,
                    format!(
                        "host {host} port {} is declared by the older ServiceEntry {} with protocol {}, this one says {}: this port of this entry is not used",
                        p.number,
                        o.source,
                        upper(&op.protocol),
                        upper(&p.protocol)
                    ),
                ));
            }
        }
    }
    out
}

/// Per host, the declarations a proxy of `namespace` uses, as indices into `decls` (oldest
/// first): the host's declaration first, then the newer ones merged into it. Hosts in the order
/// of their declaration.
pub fn pick(decls: &[Declaration<'_>], namespace: &str) -> Vec<Vec<usize>> {
    // Istio's order: the proxy's own namespace, then entries exported to it by name, then `*`.
    let rank = |d: &Declaration<'_>| match d.export {
        _ if d.service.namespace == namespace => 0,
        Export::Namespaces(_) => 1,
        Export::All => 2,
    };
    let mut owner: BTreeMap<&str, (u8, usize)> = BTreeMap::new();
    for (i, d) in decls.iter().enumerate() {
        if !d.export.visible_in(namespace) {
            continue;
        }
        let r = rank(d);
        let best = owner.entry(d.service.host.as_str()).or_insert((r, i));
        if r < best.0 {
            *best = (r, i);
        }
    }
    let mut out: Vec<Vec<usize>> = owner
        .into_values()
        .map(|(_, first)| {
            let base = &decls[first];
            let mut merged = vec![first];
            merged.extend((first + 1..decls.len()).filter(|&j| {
                let d = &decls[j];
                d.service.host == base.service.host
                    && d.service.namespace == base.service.namespace
                    && d.export.visible_in(namespace)
                    && refusal(base, d).is_none()
            }));
            merged
        })
        .collect();
    out.sort_by_key(|m| m[0]);
    out
}

/// The declarations `picked` (one host, [`pick`]) as one service: the first, with the port
/// numbers it lacks from the newer ones and the endpoints and addresses of a port both declare
/// with one protocol.
pub fn merge(decls: &[Declaration<'_>], picked: &[usize]) -> Option<ExternalService> {
    let (first, rest) = picked.split_first()?;
    let mut out = decls.get(*first)?.service.clone();
    for d in rest.iter().filter_map(|&i| decls.get(i)) {
        for p in &d.service.ports {
            match out.ports.iter_mut().find(|o| o.number == p.number) {
                Some(o) if o.protocol != p.protocol => {}
                Some(o) => {
                    for ep in &p.endpoints {
                        if !o.endpoints.contains(ep) {
                            o.endpoints.push(ep.clone());
                        }
                    }
                    for ep in &p.dns_endpoints {
                        if !o.dns_endpoints.contains(ep) {
                            o.dns_endpoints.push(ep.clone());
                        }
                    }
                }
                None => out.ports.push(p.clone()),
            }
        }
        for a in &d.service.addresses {
            if !out.addresses.contains(a) {
                out.addresses.push(*a);
            }
        }
    }
    Some(out)
}

/// The table of a proxy of `namespace`: one service per host it sees ([`pick`], [`merge`]).
pub fn table(decls: &[Declaration<'_>], namespace: &str) -> Vec<ExternalService> {
    pick(decls, namespace)
        .iter()
        .filter_map(|picked| merge(decls, picked))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::egress::{CompiledEntry, compile};
    use serde_json::{Value, json};

    fn entry(ns: &str, name: &str, spec: Value) -> CompiledEntry {
        compile(ns, name, &spec).unwrap()
    }

    fn decls(entries: &[CompiledEntry]) -> Vec<Declaration<'_>> {
        entries
            .iter()
            .flat_map(|e| {
                e.services.iter().map(move |service| Declaration {
                    export: &e.export,
                    selector: e.selector.as_ref(),
                    service,
                })
            })
            .collect()
    }

    /// (source, port numbers, endpoint addresses) of each service of the table.
    fn seen(entries: &[CompiledEntry], ns: &str) -> Vec<(String, Vec<u16>, Vec<String>)> {
        table(&decls(entries), ns)
            .into_iter()
            .map(|s| {
                (
                    s.source,
                    s.ports.iter().map(|p| p.number).collect(),
                    s.ports
                        .iter()
                        .flat_map(|p| &p.endpoints)
                        .map(|e| e.addr().to_string())
                        .collect(),
                )
            })
            .collect()
    }

    fn http(n: u16) -> Value {
        json!({"number": n, "name": format!("http-{n}"), "protocol": "HTTP"})
    }

    /// Two entries of one namespace for one host with different exportTo do not merge: each is
    /// seen only where its own exportTo says (the private one's port never reaches another
    /// namespace), and a proxy seeing both uses the older one alone, as Istio's
    /// canMergeServices (exportTo must be equal).
    #[test]
    fn entries_with_different_export_to_do_not_merge_and_each_keeps_its_own_visibility() {
        let entries = [
            entry(
                "shop",
                "private",
                json!({"hosts": ["partner.weft.test"], "resolution": "STATIC", "exportTo": ["."],
                    "ports": [http(80)], "endpoints": [{"address": "198.18.0.1"}]}),
            ),
            entry(
                "shop",
                "public",
                json!({"hosts": ["partner.weft.test"], "resolution": "STATIC",
                    "ports": [http(8080)], "endpoints": [{"address": "198.18.0.2"}]}),
            ),
            entry(
                "shop",
                "public-2",
                json!({"hosts": ["partner.weft.test"], "resolution": "STATIC",
                    "ports": [http(9090)], "endpoints": [{"address": "198.18.0.3"}]}),
            ),
        ];
        // Another namespace: only the public entries, merged (same exportTo).
        assert_eq!(
            seen(&entries, "pets"),
            [(
                "shop/public".to_string(),
                vec![8080, 9090],
                vec!["198.18.0.2:8080".to_string(), "198.18.0.3:9090".into()]
            )]
        );
        // Its own namespace sees all three: the older private entry, alone.
        assert_eq!(
            seen(&entries, "shop"),
            [(
                "shop/private".to_string(),
                vec![80],
                vec!["198.18.0.1:80".to_string()]
            )]
        );
        let named = conflicts(&decls(&entries));
        assert_eq!(named.len(), 2, "{named:?}");
        assert_eq!(named[0].0, 1);
        assert!(
            named[0]
                .1
                .contains("shop/private with exportTo shop, this one says *"),
            "{named:?}"
        );
        assert_eq!(named[1].0, 2);
    }

    /// A proxy takes its own namespace's entry of a host, else the first exported to it by
    /// name, else the oldest exported to `*`; another namespace's ports are not added (Istio
    /// merges only within one namespace). Entries of one namespace with the same resolution,
    /// exportTo and selector merge ports and endpoints.
    #[test]
    fn the_owner_namespace_is_the_proxys_own_then_named_then_public() {
        let entries = [
            entry(
                "old",
                "public",
                json!({"hosts": ["partner.weft.test"], "resolution": "STATIC",
                    "ports": [http(80)], "endpoints": [{"address": "198.18.0.1"}]}),
            ),
            entry(
                "named",
                "to-pets",
                json!({"hosts": ["partner.weft.test"], "resolution": "STATIC", "exportTo": ["pets"],
                    "ports": [http(443)], "endpoints": [{"address": "198.18.0.2"}]}),
            ),
            entry(
                "pets",
                "own",
                json!({"hosts": ["partner.weft.test"], "resolution": "STATIC", "exportTo": ["."],
                    "ports": [http(80)], "endpoints": [{"address": "198.18.0.3"}]}),
            ),
            entry(
                "pets",
                "own-2",
                json!({"hosts": ["partner.weft.test"], "resolution": "STATIC", "exportTo": ["."],
                    "ports": [http(80), http(81)], "endpoints": [{"address": "198.18.0.4"}]}),
            ),
        ];
        assert_eq!(
            seen(&entries, "pets"),
            [(
                "pets/own".to_string(),
                vec![80, 81],
                vec![
                    "198.18.0.3:80".to_string(),
                    "198.18.0.4:80".into(),
                    "198.18.0.4:81".into()
                ]
            )]
        );
        // Without pets' own entries, the one exported to pets by name wins over the older `*`.
        assert_eq!(
            seen(&entries[..2], "pets"),
            [(
                "named/to-pets".to_string(),
                vec![443],
                vec!["198.18.0.2:443".to_string()]
            )]
        );
        assert_eq!(
            seen(&entries, "shop"),
            [(
                "old/public".to_string(),
                vec![80],
                vec!["198.18.0.1:80".to_string()]
            )]
        );
        assert!(conflicts(&decls(&entries)).is_empty());
    }
}
