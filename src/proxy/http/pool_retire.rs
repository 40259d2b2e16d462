//! Closing the pooled upstream connections a new config no longer names, soon after it comes.
//!
//! A pool key holds the destination Service, the endpoint's address and the destination's
//! `connectionPool` settings; after a DestinationRule change (or an endpoint or Service going
//! away) the old key is never asked for again, and its idle connections lingered until their
//! idle timeout (1 h by default). On each new config the keys it does not name are retired
//! ([`super::pool::Pool::retire`]).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;

use super::pool::{Key, Limits};
use crate::proxy::ProxyContext;
use crate::snapshot::ProxySnapshot;

/// The `(service, endpoint address, limits)` a config can give a pool key.
fn live_keys(snapshot: &ProxySnapshot) -> HashSet<(&str, SocketAddr, Limits)> {
    let external = snapshot.gateway.iter().flat_map(|g| &g.external);
    let services = snapshot
        .outbound
        .services
        .iter()
        .chain(&snapshot.outbound.headless)
        .chain(external);
    let mut out = HashSet::new();
    for s in services {
        let limits = |t: &crate::route::TrafficPolicy| {
            t.connection_pool
                .as_ref()
                .map_or_else(Limits::default, Limits::of)
        };
        let all: Vec<Limits> = std::iter::once(limits(&s.traffic))
            .chain(s.subset_traffic.values().map(limits))
            .collect();
        for ep in &s.endpoints {
            for l in &all {
                out.insert((s.name.as_str(), ep.addr(), *l));
            }
        }
    }
    out
}

/// Whether `key` is one `snapshot` can still ask for. A key without a Service is kept (the
/// config does not say which it is); an endpoint of a DNS destination not laid in yet is
/// judged by its Service and limits alone.
fn is_live(
    live: &HashSet<(&str, SocketAddr, Limits)>,
    snapshot: &ProxySnapshot,
    key: &Key,
) -> bool {
    let Some(service) = key.service.as_deref() else {
        return true;
    };
    if live.contains(&(service, key.addr, key.limits)) {
        return true;
    }
    // A gateway's DNS destinations get their endpoints from the resolver after the config
    // arrives: their keys are judged without the address.
    snapshot
        .gateway
        .iter()
        .flat_map(|g| &g.resolve)
        .any(|d| d.host == service)
        && live
            .iter()
            .any(|(s, _, l)| *s == service && *l == key.limits)
}

/// The keys of `snapshot` kept, the others retired; how many connections were.
pub fn retire_for(ctx: &ProxyContext, snapshot: &ProxySnapshot) -> usize {
    let live = live_keys(snapshot);
    ctx.outbound_pool
        .retire(|key| is_live(&live, snapshot, key))
}

/// Runs for the proxy's life: on each new config, retires the pool keys it does not name.
pub async fn run(ctx: Arc<ProxyContext>) {
    let mut changes = ctx.snapshot_changes();
    while changes.changed().await.is_ok() {
        let current = changes.borrow_and_update().clone();
        if let Some(current) = current {
            let retired = retire_for(&ctx, &current.snapshot);
            if retired > 0 {
                tracing::debug!(
                    retired,
                    "pooled connections the new config no longer names closed"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::decode_snapshot;

    fn snapshot(pool: serde_json::Value, endpoint: &str) -> ProxySnapshot {
        let json = serde_json::json!({
            "schemaVersion": 1, "version": "v1",
            "identity": "spiffe://cluster.local/ns/shop/sa/web", "trustDomain": "cluster.local",
            "inbound": {"defaultMode": "PERMISSIVE"},
            "outbound": {"services": [{
                "clusterIp": "198.19.0.20", "port": 80, "name": "api.shop.svc.cluster.local",
                "endpoints": [{"ip": endpoint, "port": 8080, "meshed": false}],
                "traffic": {"connectionPool": pool}
            }]}
        });
        decode_snapshot(json.to_string().as_bytes()).unwrap()
    }

    fn key(addr: &str, limits: Limits) -> Key {
        Key {
            addr: addr.parse().unwrap(),
            identity: None,
            service: Some("api.shop.svc.cluster.local".into()),
            limits,
        }
    }

    /// After a DestinationRule change the old settings' key is no longer live (its idle
    /// connections are retired), the new one is; an endpoint that went away is not live; a key
    /// without a Service is kept.
    #[test]
    fn a_key_is_live_while_the_config_names_its_service_endpoint_and_limits() {
        let before = snapshot(serde_json::json!({}), "198.18.1.5");
        let after = snapshot(
            serde_json::json!({"maxRequestsPerConnection": 1}),
            "198.18.1.5",
        );
        let moved = snapshot(serde_json::json!({}), "198.18.1.6");
        let old = key("198.18.1.5:8080", Limits::default());
        let new = key(
            "198.18.1.5:8080",
            Limits {
                max_requests: Some(1),
                idle: None,
            },
        );
        let live = |s: &ProxySnapshot, k: &Key| is_live(&live_keys(s), s, k);
        assert!(live(&before, &old));
        assert!(!live(&after, &old), "the old connectionPool's key");
        assert!(live(&after, &new));
        assert!(!live(&moved, &old), "an endpoint that went away");
        let anonymous = Key {
            service: None,
            ..old.clone()
        };
        assert!(live(&moved, &anonymous));
    }
}
