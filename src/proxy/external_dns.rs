//! An egress gateway's `resolution: DNS` destinations (docs/egress.md, "Egress gateway"): the
//! names of the config's `gateway.resolve`, resolved through the pod's nameservers as Envoy's
//! STRICT_DNS cluster resolves them, re-resolved on the answer's TTL, and laid into the running
//! config as those destinations' endpoints.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::ProxyContext;
use super::dns::{self, Lookup};
use crate::snapshot::{Endpoint, ProxySnapshot, SnapshotIndex};

/// A name is resolved again after its answer's TTL, but never sooner than this (Envoy's
/// `dns_min_refresh_rate`: a TTL of 0 must not turn into a query per request)...
pub const MIN_REFRESH: Duration = Duration::from_secs(5);
/// ... nor later than this (Istio's default `dnsRefreshRate`), so a long TTL does not pin an
/// address for hours.
pub const MAX_REFRESH: Duration = Duration::from_secs(60);
/// After a failed lookup (no nameserver answered), the next try.
pub const RETRY: Duration = Duration::from_secs(5);

/// Puts the running config back with resolved endpoints: a clone of the sender the config
/// sources use, so the data path sees one config at a time, whoever made it.
pub struct Republisher {
    tx: watch::Sender<Option<Arc<SnapshotIndex>>>,
}

impl Republisher {
    pub(super) fn new(tx: watch::Sender<Option<Arc<SnapshotIndex>>>) -> Self {
        Republisher { tx }
    }

    /// Replaces `was` by `next` unless another config came meanwhile (that one is laid next).
    fn replace(&self, was: &Arc<SnapshotIndex>, next: SnapshotIndex) -> bool {
        self.tx.send_if_modified(|current| match current {
            Some(c) if Arc::ptr_eq(c, was) => {
                *current = Some(Arc::new(next));
                true
            }
            _ => false,
        })
    }
}

/// What the resolver knows of one name.
#[derive(Debug, Clone, Default)]
struct Known {
    /// The addresses in use: the last answer's, kept through failed lookups, emptied by
    /// NXDOMAIN (Envoy does the same).
    ips: Vec<IpAddr>,
    /// When to resolve it again; None: never resolved yet (due now).
    due: Option<Instant>,
    /// The last outcome logged, so a steady state is logged once, not every refresh.
    logged: String,
}

/// The names of the current config and their addresses.
pub struct Resolver {
    servers: Vec<SocketAddr>,
    names: HashMap<String, Known>,
}

impl Resolver {
    pub fn new(servers: Vec<SocketAddr>) -> Self {
        Resolver {
            servers,
            names: HashMap::new(),
        }
    }

    /// Forgets names the config no longer has, then resolves every name of `wanted` that is
    /// due (a new one at once).
    pub async fn refresh(&mut self, wanted: &BTreeSet<String>, now: Instant) {
        self.names.retain(|n, _| wanted.contains(n));
        for name in wanted {
            let known = self.names.entry(name.clone()).or_default();
            if known.due.is_some_and(|d| d > now) {
                continue;
            }
            // An endpoint given as an IP is its own answer (`dns::lookup`).
            let outcome = dns::lookup(&self.servers, name).await;
            let (wait, said) = match outcome {
                Lookup::Found { mut ips, ttl } => {
                    // A nameserver that rotates its answer must not make every refresh a
                    // new config (a whole snapshot republished, balancer state reset).
                    ips.sort_unstable();
                    ips.dedup();
                    let wait = Duration::from_secs(u64::from(ttl)).clamp(MIN_REFRESH, MAX_REFRESH);
                    let said = format!("{ips:?}");
                    if said != known.logged {
                        tracing::info!(host = %name, addresses = ?ips, ttl, "egress gateway: DNS destination resolved");
                    }
                    known.ips = ips;
                    (wait, said)
                }
                Lookup::NotFound => {
                    let said = "not found".to_string();
                    if said != known.logged {
                        tracing::warn!(host = %name, "egress gateway: DNS destination does not resolve (NXDOMAIN or no A record); its requests get 503 UH until it does");
                    }
                    known.ips.clear();
                    (MIN_REFRESH, said)
                }
                Lookup::Failed(why) => {
                    let said = format!("failed: {why}");
                    if said != known.logged {
                        tracing::warn!(host = %name, reason = why, kept = ?known.ips, "egress gateway: DNS destination could not be resolved; its last addresses stay in use (503 UH without any)");
                    }
                    (RETRY, said)
                }
            };
            known.logged = said;
            known.due = Some(Instant::now() + wait);
        }
    }

    /// When the next name is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.names.values().filter_map(|k| k.due).min()
    }

    pub fn addresses(&self, name: &str) -> &[IpAddr] {
        self.names.get(name).map(|k| &k.ips[..]).unwrap_or_default()
    }
}

/// The names `index`'s gateway config asks to resolve.
fn wanted(index: &SnapshotIndex) -> BTreeSet<String> {
    index
        .snapshot
        .gateway
        .iter()
        .flat_map(|g| &g.resolve)
        .map(|d| d.name.clone())
        .collect()
}

/// `index`'s config with each DNS destination's endpoints set to its name's addresses; None
/// when every one has them already.
pub fn laid(index: &SnapshotIndex, resolver: &Resolver) -> Option<ProxySnapshot> {
    let endpoints_of = |d: &crate::route::gateway::DnsDestination| -> Vec<Endpoint> {
        resolver
            .addresses(&d.name)
            .iter()
            .map(|ip| Endpoint {
                ip: *ip,
                port: d.target_port,
                identity: None,
                meshed: false,
                mtls_mode_for_port: Default::default(),
                workload: None,
            })
            .collect()
    };
    // A host and port's endpoints: those of each of its destinations, in order.
    let mut by_port: Vec<((&str, u16), Vec<Endpoint>)> = Vec::new();
    for d in &index.snapshot.gateway.as_ref()?.resolve {
        let key = (d.host.as_str(), d.port);
        match by_port.iter_mut().find(|(k, _)| *k == key) {
            Some((_, eps)) => eps.extend(endpoints_of(d)),
            None => by_port.push((key, endpoints_of(d))),
        }
    }
    let service = |s: &crate::snapshot::Service| {
        by_port
            .iter()
            .find(|((host, port), _)| s.name == *host && s.port == *port)
            .map(|(_, eps)| eps)
    };
    let stale = index
        .snapshot
        .outbound
        .headless
        .iter()
        .any(|s| service(s).is_some_and(|eps| s.endpoints != *eps));
    if !stale {
        return None;
    }
    let mut next = index.snapshot.clone();
    for s in &mut next.outbound.headless {
        if let Some(eps) = service(s) {
            s.endpoints = eps.clone();
        }
    }
    Some(next)
}

/// Runs for the gateway's life: on each new config and each due name, resolves, and puts the
/// config back with the addresses laid in. The nameservers are the pod's (its resolv.conf:
/// CoreDNS in a ClusterFirst pod), as Envoy's resolver reads them.
pub async fn run(ctx: Arc<ProxyContext>, republish: Republisher) {
    let text = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    run_with(ctx, republish, dns::upstreams_of(&text)).await
}

pub async fn run_with(ctx: Arc<ProxyContext>, republish: Republisher, servers: Vec<SocketAddr>) {
    let mut changes = ctx.snapshot_changes();
    let mut resolver = Resolver::new(servers);
    loop {
        let current = changes.borrow_and_update().clone();
        if let Some(current) = current {
            if let Some(next) = laid(&current, &resolver) {
                // A new config arrives with its DNS destinations empty: lay the addresses
                // already known at once, not after this turn's lookups (seconds with a slow
                // nameserver, every request 503 UH meanwhile). Republishing wakes `changes`,
                // and that turn refreshes what is due.
                republish.replace(&current, SnapshotIndex::new(next));
            } else {
                resolver.refresh(&wanted(&current), Instant::now()).await;
                if let Some(next) = laid(&current, &resolver) {
                    // A config that came while resolving wins; it is laid on the next turn.
                    republish.replace(&current, SnapshotIndex::new(next));
                }
            }
        }
        let due = resolver.next_due();
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { return },
            () = tokio::time::sleep_until(due.unwrap_or_else(Instant::now)), if due.is_some() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::gateway::{DnsDestination, GatewayConfig};
    use crate::snapshot::{Protocol, Service};
    use std::net::Ipv4Addr;

    /// A gateway config with one external DNS destination per (name, port): the Service the
    /// operator sends without endpoints.
    fn index(names: &[(&str, u16)]) -> SnapshotIndex {
        let mut snapshot: ProxySnapshot = serde_json::from_value(serde_json::json!({
            "schemaVersion": 1, "version": "1",
            "identity": "spiffe://cluster.local/ns/istio-egress/sa/gw",
            "trustDomain": "cluster.local",
            "inbound": {"defaultMode": "PERMISSIVE"}
        }))
        .expect("a minimal snapshot");
        let mut gateway = GatewayConfig::default();
        for (name, port) in names {
            gateway.external.push(Service {
                cluster_ip: None,
                port: *port,
                name: name.to_string(),
                protocol: Protocol::Http,
                detect_protocol: false,
                endpoints: Vec::new(),
                subsets: Default::default(),
                http: Vec::new(),
                tls: None,
                subset_tls: Default::default(),
                traffic: Default::default(),
                subset_traffic: Default::default(),
                l4: Default::default(),
            });
            gateway.resolve.push(DnsDestination {
                host: name.to_string(),
                port: *port,
                name: name.to_string(),
                target_port: 18080,
            });
        }
        snapshot.gateway = Some(gateway);
        SnapshotIndex::new(snapshot)
    }

    fn endpoints(index: &SnapshotIndex, name: &str) -> Vec<String> {
        index
            .service_named(name, 80)
            .map(|s| s.endpoints.iter().map(|e| e.addr().to_string()).collect())
            .unwrap_or_default()
    }

    #[tokio::test]
    async fn names_are_resolved_laid_in_as_endpoints_and_dropped_when_gone() {
        let server = dns::test_upstream();
        let mut resolver = Resolver::new(vec![server]);
        let index = index(&[("partner.weft.test", 80), ("nx.weft.test", 80)]);
        assert!(
            endpoints(&index, "partner.weft.test").is_empty(),
            "nothing before resolving"
        );
        let now = Instant::now();
        resolver.refresh(&wanted(&index), now).await;
        assert_eq!(
            resolver.addresses("partner.weft.test"),
            [IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1))]
        );
        assert!(resolver.addresses("nx.weft.test").is_empty());
        // The test nameserver's TTL is 60 s: the answer is due again at MAX_REFRESH at most;
        // the NXDOMAIN name is tried again sooner.
        let due = resolver.next_due().expect("due");
        assert!(due <= Instant::now() + MIN_REFRESH, "NXDOMAIN retried soon");
        let partner_due = resolver.names["partner.weft.test"].due.expect("due");
        assert!(partner_due > now + MAX_REFRESH - Duration::from_secs(1));
        let next = SnapshotIndex::new(laid(&index, &resolver).expect("new endpoints"));
        assert_eq!(endpoints(&next, "partner.weft.test"), ["198.18.0.1:18080"]);
        assert!(endpoints(&next, "nx.weft.test").is_empty());
        assert!(
            next.snapshot.gateway.as_ref().unwrap().resolve.len() == 2,
            "the names stay for the next refresh"
        );
        assert!(
            laid(&next, &resolver).is_none(),
            "nothing changed: no new config"
        );
        // Not due yet: not asked again (a nameserver that does not answer would be kept).
        resolver.servers.clear();
        resolver.refresh(&wanted(&next), Instant::now()).await;
        assert_eq!(resolver.addresses("partner.weft.test").len(), 1);
        // Due and no nameserver answers: the last addresses stay (Envoy keeps its hosts).
        resolver.refresh(&wanted(&next), partner_due).await;
        assert_eq!(resolver.addresses("partner.weft.test").len(), 1);
        assert_eq!(
            resolver.names["partner.weft.test"].logged,
            "failed: no nameserver answered"
        );
        // A name the config no longer has is forgotten.
        resolver.refresh(&BTreeSet::new(), Instant::now()).await;
        assert!(resolver.names.is_empty());
    }

    /// A DNS entry with endpoints: one destination per endpoint for the same host and port,
    /// their addresses together are its endpoints; an IP endpoint needs no nameserver.
    #[tokio::test]
    async fn the_endpoints_of_one_host_are_every_destinations_addresses() {
        let mut snapshot = index(&[("partner.weft.test", 80)]).snapshot;
        let resolve = &mut snapshot.gateway.as_mut().expect("a gateway").resolve;
        resolve.push(DnsDestination {
            host: "partner.weft.test".into(),
            port: 80,
            name: "198.18.0.9".into(),
            target_port: 9090,
        });
        resolve.push(DnsDestination {
            host: "partner.weft.test".into(),
            port: 80,
            name: "nx.weft.test".into(),
            target_port: 9091,
        });
        let index = SnapshotIndex::new(snapshot);
        // No nameserver at all: the IP one is there all the same.
        let mut resolver = Resolver::new(Vec::new());
        resolver.refresh(&wanted(&index), Instant::now()).await;
        let next = SnapshotIndex::new(laid(&index, &resolver).expect("new endpoints"));
        assert_eq!(endpoints(&next, "partner.weft.test"), ["198.18.0.9:9090"]);
        let mut resolver = Resolver::new(vec![dns::test_upstream()]);
        resolver.refresh(&wanted(&index), Instant::now()).await;
        let next = SnapshotIndex::new(laid(&index, &resolver).expect("new endpoints"));
        assert_eq!(
            endpoints(&next, "partner.weft.test"),
            ["198.18.0.1:18080", "198.18.0.9:9090"]
        );
        assert!(laid(&next, &resolver).is_none(), "steady: no new config");
    }

    #[tokio::test]
    async fn the_running_config_gets_the_endpoints_and_a_newer_config_is_never_overwritten() {
        let (ctx, inputs) = ProxyContext::new(Default::default());
        let republish = inputs.snapshot.republisher();
        let first = Arc::new(index(&[("partner.weft.test", 80)]));
        republish.tx.send_replace(Some(first.clone()));
        let task = tokio::spawn(run_with(
            ctx.clone(),
            inputs.snapshot.republisher(),
            vec![dns::test_upstream()],
        ));
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let current = ctx.snapshot().expect("a config");
            if endpoints(&current, "partner.weft.test") == ["198.18.0.1:18080"] {
                assert_eq!(current.version(), "1");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the endpoints were never laid in"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // A replacement made for a config that is no longer current is refused.
        let newer = Arc::new(index(&[]));
        republish.tx.send_replace(Some(newer.clone()));
        assert!(!republish.replace(&first, index(&[("partner.weft.test", 80)])));
        assert!(Arc::ptr_eq(&ctx.snapshot().unwrap(), &newer));
        task.abort();
    }
}
