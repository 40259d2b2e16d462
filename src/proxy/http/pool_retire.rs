//! Closing the pooled upstream connections a new config no longer names, soon after it comes.
//!
//! A pool key holds the destination Service, the endpoint's address and the destination's
//! `connectionPool` settings; after a DestinationRule change (or an endpoint or Service going
//! away) the old key is never asked for again, and its idle connections lingered until their
//! idle timeout (1 h by default). On each new config the keys it does not name are retired
//! ([`super::pool::Pool::retire`]). A key's identity counts too: a connection made with an
//! mTLS identity or an origination credential (CA, client certificate) the config no longer
//! gives is retired.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;

use super::outbound::pool_identity;
use super::pool::{Key, Limits};
use crate::proxy::ProxyContext;
use crate::proxy::originate::Asked;
use crate::snapshot::{Endpoint, ProxySnapshot, UpstreamSecurity};

/// What a config can give a pool key: `(service, endpoint address, limits, identity)`, the
/// identity being the mTLS identity or the origination's config key (its credential's
/// material included, [`crate::proxy::originate::Asked::config_key`]). A None address: any
/// address of that Service (for destinations whose endpoints the config does not list).
type LiveKey<'a> = (&'a str, Option<SocketAddr>, Limits, Option<String>);

fn live_keys(snapshot: &ProxySnapshot) -> HashSet<LiveKey<'_>> {
    let external = snapshot.gateway.iter().flat_map(|g| &g.external);
    let services = snapshot
        .outbound
        .services
        .iter()
        .chain(&snapshot.outbound.headless)
        .chain(external);
    let credentials = &snapshot.credentials;
    let identity = |security: &UpstreamSecurity| match security {
        UpstreamSecurity::Originate {
            mutual,
            host,
            settings,
        } => Some(
            Asked {
                host,
                authority: None,
                mutual: *mutual,
                settings,
                credentials,
            }
            .config_key(),
        ),
        other => pool_identity(other, credentials, None),
    };
    let mut out = HashSet::new();
    for s in services {
        let subsets = std::iter::once(None).chain(
            s.subset_traffic
                .keys()
                .chain(s.subset_tls.keys())
                .map(|k| Some(k.as_str())),
        );
        for subset in subsets {
            let limits = s
                .traffic_of(subset)
                .connection_pool
                .as_ref()
                .map_or_else(Limits::default, Limits::of);
            for ep in &s.endpoints {
                let id = identity(&s.security_of(ep, subset));
                out.insert((s.name.as_str(), Some(ep.addr()), limits, id));
            }
            // Any address: as an endpoint outside the mesh would be talked to.
            let anywhere = Endpoint {
                ip: std::net::IpAddr::from([0, 0, 0, 0]),
                port: s.port,
                identity: None,
                meshed: false,
                mtls_mode_for_port: Default::default(),
                workload: None,
            };
            let id = identity(&s.security_of(&anywhere, subset));
            out.insert((s.name.as_str(), None, limits, id));
        }
    }
    out
}

/// Whether `key` is one `snapshot` can still ask for: its Service names its endpoint, with
/// its limits and its identity (a changed mTLS identity or origination credential retires
/// it). A key without a Service is kept (the config does not say which it is); an endpoint
/// of a DNS destination not laid in yet is judged by its Service, limits and identity alone.
fn is_live(live: &HashSet<LiveKey<'_>>, snapshot: &ProxySnapshot, key: &Key) -> bool {
    let Some(service) = key.service.as_deref() else {
        return true;
    };
    // An origination's key names its SNI after its config key; the SNI follows from the
    // config but for a wildcard host (the request's name), so it is not compared.
    let identity = key
        .identity
        .as_deref()
        .map(|i| i.split(" sni=").next().unwrap_or(i).to_string());
    if live.contains(&(service, Some(key.addr), key.limits, identity.clone())) {
        return true;
    }
    // A gateway's DNS destinations get their endpoints from the resolver after the config
    // arrives: their keys are judged without the address.
    snapshot
        .gateway
        .iter()
        .flat_map(|g| &g.resolve)
        .any(|d| d.host == service)
        && live.contains(&(service, None, key.limits, identity))
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
    /// A pooled connection is made with an identity: the mTLS one the endpoint proved, or an
    /// origination's CA and client certificate. When the config changes it (a new CA in the
    /// credentialName Secret, a pod of another service account), the old key is no longer
    /// live. Before, only the Service, address and limits were compared: a connection
    /// verified with a removed CA stayed in use.
    #[test]
    fn a_key_made_with_another_identity_or_credential_is_not_live() {
        let originating = |ca: &str| {
            let json = serde_json::json!({
                "schemaVersion": 1, "version": "v1",
                "identity": "spiffe://cluster.local/ns/shop/sa/web", "trustDomain": "cluster.local",
                "inbound": {"defaultMode": "PERMISSIVE"},
                "outbound": {"services": [{
                    "clusterIp": "198.19.0.20", "port": 443, "name": "api.shop.svc.cluster.local",
                    "endpoints": [{"ip": "198.18.1.5", "port": 8443, "meshed": false}],
                    "tls": "SIMPLE",
                    "traffic": {"origination": {"credentialName": "api-ca"}}
                }]},
                "credentials": {"api-ca": {"ca": ca}}
            });
            decode_snapshot(json.to_string().as_bytes()).unwrap()
        };
        let key_in = |s: &ProxySnapshot, authority: Option<&str>| {
            let svc = &s.outbound.services[0];
            Key {
                addr: "198.18.1.5:8443".parse().unwrap(),
                identity: pool_identity(
                    &svc.security_of(&svc.endpoints[0], None),
                    &s.credentials,
                    authority,
                ),
                service: Some(svc.name.clone()),
                limits: Limits::default(),
            }
        };
        let live = |s: &ProxySnapshot, k: &Key| is_live(&live_keys(s), s, k);
        let old_ca = originating("-----BEGIN CERTIFICATE-----\nA\n-----END CERTIFICATE-----\n");
        let new_ca = originating("-----BEGIN CERTIFICATE-----\nB\n-----END CERTIFICATE-----\n");
        let old = key_in(&old_ca, None);
        assert!(
            old.identity
                .as_deref()
                .is_some_and(|i| i.starts_with("tls "))
        );
        assert!(live(&old_ca, &old));
        assert!(
            !live(&new_ca, &old),
            "a connection verified with the old CA"
        );
        assert!(live(&new_ca, &key_in(&new_ca, None)));
        // mTLS: the endpoint's identity changed.
        let meshed = |sa: &str| {
            let json = serde_json::json!({
                "schemaVersion": 1, "version": "v1",
                "identity": "spiffe://cluster.local/ns/shop/sa/web", "trustDomain": "cluster.local",
                "inbound": {"defaultMode": "PERMISSIVE"},
                "outbound": {"services": [{
                    "clusterIp": "198.19.0.20", "port": 443, "name": "api.shop.svc.cluster.local",
                    "endpoints": [{"ip": "198.18.1.5", "port": 8443, "meshed": true,
                                   "identity": format!("spiffe://cluster.local/ns/shop/sa/{sa}")}]
                }]}
            });
            decode_snapshot(json.to_string().as_bytes()).unwrap()
        };
        let (api, other) = (meshed("api"), meshed("other"));
        let mtls = key_in(&api, None);
        assert!(live(&api, &mtls));
        assert!(
            !live(&other, &mtls),
            "a connection to the endpoint's old identity"
        );
    }
}
