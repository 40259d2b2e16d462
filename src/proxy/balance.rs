//! The client proxy's live state for DestinationRule traffic policies, per destination (host,
//! port, subset): requests in flight per endpoint (least request), outlier ejections, and the
//! connection pool's limits (Envoy's circuit breakers: [`Balancer::admit`]). It orders each
//! request's endpoints with the pure [`crate::route::balance`] and records every try's outcome
//! with [`crate::route::outlier`]. State outlives config changes (an ejected
//! endpoint stays ejected when an unrelated Service changes) and forgets endpoints that left.
//! Destinations without a policy never come here: round robin costs nothing extra.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::authz::Headers;
use crate::route::TrafficPolicy;
use crate::route::balance::{self, HashOn, LoadBalancer};
use crate::route::outlier::{Outcome, Pool};
use crate::route::policy::ConnectionPool;
use crate::snapshot::Endpoint;

/// Destinations remembered at most (each is small; a proxy has few).
const MAX_DESTINATIONS: usize = 4096;

/// What a consistent hash may read of a request.
pub struct RequestKey<'a> {
    pub headers: &'a dyn Headers,
    pub query: Option<&'a str>,
    pub source: IpAddr,
}

#[derive(Default)]
struct Destination {
    /// The endpoints the destination had when last seen, to forget those that left.
    endpoints: Vec<SocketAddr>,
    outlier: Pool<SocketAddr>,
    in_flight: HashMap<SocketAddr, Arc<AtomicU32>>,
    /// The circuit breakers of the limits they were made for (rebuilt when those change).
    gate: Option<(ConnectionPool, Arc<Gate>)>,
}

/// One destination's circuit breakers: requests in flight (`http2MaxRequests`), HTTP/1.1
/// requests holding a connection (`maxConnections`) and those waiting for one
/// (`http1MaxPendingRequests`).
struct Gate {
    requests: Option<Arc<Semaphore>>,
    connections: Option<Arc<Semaphore>>,
    max_pending: Option<usize>,
    pending: std::sync::atomic::AtomicUsize,
}

impl Gate {
    fn new(pool: &ConnectionPool) -> Self {
        let semaphore = |n: Option<u32>| n.map(|n| Arc::new(Semaphore::new(n as usize)));
        Gate {
            requests: semaphore(pool.max_requests),
            connections: semaphore(pool.max_connections),
            max_pending: pool.max_pending.map(|n| n as usize),
            pending: Default::default(),
        }
    }
}

/// A request admitted by a destination's circuit breakers; its place is freed on drop.
pub struct Admitted {
    _request: Option<OwnedSemaphorePermit>,
    _connection: Option<OwnedSemaphorePermit>,
}

/// A limit of `connectionPool` was reached: answer 503 `UO`, as Envoy does.
#[derive(Debug)]
pub struct Overflow;

pub struct Balancer {
    epoch: Instant,
    destinations: Mutex<HashMap<String, Destination>>,
}

impl Default for Balancer {
    fn default() -> Self {
        Balancer {
            epoch: Instant::now(),
            destinations: Mutex::new(HashMap::new()),
        }
    }
}

/// One try in flight on an endpoint (least request counts it until the answer's head).
pub struct InFlight(Arc<AtomicU32>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Names one destination's state.
pub fn destination_key(host: &str, port: u16, subset: Option<&str>) -> String {
    format!("{host}|{port}|{}", subset.unwrap_or(""))
}

impl Balancer {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn with<R>(&self, key: &str, f: impl FnOnce(&mut Destination) -> R) -> R {
        let mut map = self
            .destinations
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if !map.contains_key(key) && map.len() >= MAX_DESTINATIONS {
            // A destination nobody asked for lately is dropped first; simplest: start over.
            map.clear();
        }
        f(map.entry(key.to_string()).or_default())
    }

    /// `candidates` (round-robin order, as the snapshot gives them) in the order `policy`
    /// tries them, without the endpoints outlier detection has ejected. Empty when every
    /// endpoint is ejected (503 `UH`, as Envoy answers).
    pub fn order<'a>(
        &self,
        key: &str,
        policy: &TrafficPolicy,
        candidates: Vec<&'a Endpoint>,
        draw: u64,
        request: &RequestKey<'_>,
    ) -> Vec<&'a Endpoint> {
        let addrs: Vec<SocketAddr> = candidates.iter().map(|e| e.addr()).collect();
        let now = self.now_ms();
        let (usable, loads) = self.with(key, |d| {
            let mut sorted = addrs.clone();
            sorted.sort_unstable();
            if sorted != d.endpoints {
                d.outlier.forget_except(&sorted);
                d.in_flight.retain(|a, _| sorted.binary_search(a).is_ok());
                d.endpoints = sorted;
            }
            let usable = match &policy.outlier_detection {
                Some(od) => d.outlier.usable(od, &addrs, now),
                None => vec![true; addrs.len()],
            };
            let loads: Vec<u32> = match policy.load_balancer {
                Some(LoadBalancer::LeastRequest) => addrs
                    .iter()
                    .map(|a| d.in_flight.get(a).map_or(0, |c| c.load(Ordering::Relaxed)))
                    .collect(),
                _ => Vec::new(),
            };
            (usable, loads)
        });
        let kept: Vec<usize> = (0..candidates.len()).filter(|&i| usable[i]).collect();
        let lb = match &policy.load_balancer {
            None | Some(LoadBalancer::RoundRobin) => {
                return kept.into_iter().map(|i| candidates[i]).collect();
            }
            Some(lb) => lb,
        };
        let identities: Vec<u64> = kept.iter().map(|&i| identity(addrs[i])).collect();
        let kept_loads: Vec<u32> = kept
            .iter()
            .map(|&i| loads.get(i).copied().unwrap_or(0))
            .collect();
        let hash = match lb {
            LoadBalancer::ConsistentHash(on) => hash_key(on, request),
            _ => None,
        };
        let input = balance::Input {
            position: 0,
            draw,
            key: hash,
            identities: &identities,
            loads: &kept_loads,
        };
        balance::order(lb, kept.len(), &input)
            .into_iter()
            .map(|k| candidates[kept[k]])
            .collect()
    }

    /// Admits one request to `key` under `policy`'s connection pool limits: at once when a
    /// place is free; an HTTP/1.1 request waits for a connection when the pending queue has
    /// room; otherwise [`Overflow`]. None when the policy sets no limits.
    pub async fn admit(
        &self,
        key: &str,
        policy: &TrafficPolicy,
        h2: bool,
    ) -> Result<Option<Admitted>, Overflow> {
        let Some(limits) = &policy.connection_pool else {
            return Ok(None);
        };
        let gate = self.with(key, |d| match &d.gate {
            Some((made_for, gate)) if made_for == limits => gate.clone(),
            _ => {
                let gate = Arc::new(Gate::new(limits));
                d.gate = Some((limits.clone(), gate.clone()));
                gate
            }
        });
        let request = match &gate.requests {
            Some(s) => Some(s.clone().try_acquire_owned().map_err(|_| Overflow)?),
            None => None,
        };
        let connection = match (&gate.connections, h2) {
            // HTTP/2 multiplexes: requests, not connections, are what it is limited by.
            (None, _) | (Some(_), true) => None,
            (Some(s), false) => match s.clone().try_acquire_owned() {
                Ok(p) => Some(p),
                Err(_) => {
                    let waiting = gate.pending.fetch_add(1, Ordering::AcqRel);
                    let _leave = Leave(&gate.pending);
                    if gate.max_pending.is_some_and(|max| waiting >= max) {
                        return Err(Overflow);
                    }
                    Some(s.clone().acquire_owned().await.map_err(|_| Overflow)?)
                }
            },
        };
        Ok(Some(Admitted {
            _request: request,
            _connection: connection,
        }))
    }

    /// Counts a try on `addr` in flight until the guard drops (least request only).
    pub fn begin(&self, key: &str, policy: &TrafficPolicy, addr: SocketAddr) -> Option<InFlight> {
        if policy.load_balancer != Some(LoadBalancer::LeastRequest) {
            return None;
        }
        let counter = self.with(key, |d| d.in_flight.entry(addr).or_default().clone());
        counter.fetch_add(1, Ordering::Relaxed);
        Some(InFlight(counter))
    }

    /// Records how a try on `addr` ended, for outlier detection. Returns the ejection's
    /// length in ms when this outcome ejected the endpoint.
    pub fn record(
        &self,
        key: &str,
        policy: &TrafficPolicy,
        addr: SocketAddr,
        outcome: Outcome,
    ) -> Option<u64> {
        let od = policy.outlier_detection.as_ref()?;
        let now = self.now_ms();
        let ejected = self.with(key, |d| {
            let size = d.endpoints.len().max(1);
            d.outlier.record(od, &addr, outcome, now, size)
        });
        if let Some(ms) = ejected {
            tracing::info!(destination = key, endpoint = %addr, seconds = ms / 1000, "outlier detection ejected an endpoint");
        }
        ejected
    }
}

/// Takes a request off the pending count when it stops waiting (admitted, refused or gone).
struct Leave<'a>(&'a std::sync::atomic::AtomicUsize);

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A stable identity of an endpoint for rendezvous hashing: its address's bytes and port.
fn identity(addr: SocketAddr) -> u64 {
    let mut bytes = match addr.ip() {
        IpAddr::V4(ip) => ip.octets().to_vec(),
        IpAddr::V6(ip) => ip.octets().to_vec(),
    };
    bytes.extend_from_slice(&addr.port().to_be_bytes());
    balance::hash_bytes(&bytes)
}

/// The hash of the request's key, or none when the request does not carry it.
fn hash_key(on: &HashOn, r: &RequestKey<'_>) -> Option<u64> {
    match on {
        HashOn::Header(name) => r
            .headers
            .get(name)
            .map(|v| balance::hash_bytes(v.as_bytes())),
        HashOn::Cookie(name) => r
            .headers
            .get("cookie")
            .and_then(|c| cookie(c, name))
            .map(|v| balance::hash_bytes(v.as_bytes())),
        HashOn::SourceIp => Some(balance::hash_bytes(r.source.to_string().as_bytes())),
        HashOn::QueryParameter(name) => r
            .query
            .and_then(|q| query_param(q, name))
            .map(|v| balance::hash_bytes(v.as_bytes())),
    }
}

/// The value of cookie `name` in a `Cookie` header.
fn cookie<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|pair| {
        let (k, v) = pair.trim().split_once('=')?;
        (k == name).then_some(v)
    })
}

/// The (raw) value of query parameter `name`.
fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then_some(v)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::outlier::OutlierDetection;

    struct NoHeaders<'a>(&'a [(&'a str, &'a str)]);
    impl Headers for NoHeaders<'_> {
        fn get(&self, name: &str) -> Option<&str> {
            self.0.iter().find(|(k, _)| *k == name).map(|(_, v)| *v)
        }
    }

    fn endpoints(n: u8) -> Vec<Endpoint> {
        (0..n)
            .map(|i| {
                serde_json::from_value(serde_json::json!({"ip": format!("198.18.7.{}", i + 1), "port": 8080, "meshed": false}))
                    .expect("an endpoint")
            })
            .collect()
    }

    #[test]
    fn ejected_endpoints_are_left_out_until_their_time_is_over_and_a_key_sticks() {
        let b = Balancer::default();
        let eps = endpoints(3);
        let refs: Vec<&Endpoint> = eps.iter().collect();
        let policy = TrafficPolicy {
            load_balancer: Some(LoadBalancer::ConsistentHash(HashOn::Cookie("user".into()))),
            outlier_detection: Some(OutlierDetection {
                consecutive_5xx: 1,
                max_ejection_percent: 100,
                ..OutlierDetection::istio_default()
            }),
            connection_pool: None,
            origination: None,
        };
        let headers = [("cookie", "a=1; user=jason")];
        let req = RequestKey {
            headers: &NoHeaders(&headers),
            query: None,
            source: "198.18.0.9".parse().expect("ip"),
        };
        let key = destination_key("reviews", 9080, None);
        let first = b.order(&key, &policy, refs.clone(), 1, &req)[0].addr();
        for draw in 2..20 {
            assert_eq!(
                b.order(&key, &policy, refs.clone(), draw, &req)[0].addr(),
                first
            );
        }
        assert_eq!(
            b.record(&key, &policy, first, Outcome::Status(503)),
            Some(30_000)
        );
        let now = b.order(&key, &policy, refs.clone(), 1, &req);
        assert_eq!(now.len(), 2);
        assert!(now.iter().all(|e| e.addr() != first));
        // The key's next choice is stable too.
        let second = now[0].addr();
        assert_eq!(
            b.order(&key, &policy, refs.clone(), 7, &req)[0].addr(),
            second
        );
        // The endpoint left and came back: forgotten, so in service again.
        let without: Vec<&Endpoint> = refs.iter().copied().filter(|e| e.addr() != first).collect();
        let _ = b.order(&key, &policy, without, 1, &req);
        assert_eq!(b.order(&key, &policy, refs.clone(), 1, &req).len(), 3);
    }

    #[test]
    fn least_request_avoids_the_busy_endpoint() {
        let b = Balancer::default();
        let eps = endpoints(2);
        let refs: Vec<&Endpoint> = eps.iter().collect();
        let policy = TrafficPolicy {
            load_balancer: Some(LoadBalancer::LeastRequest),
            ..Default::default()
        };
        let req = RequestKey {
            headers: &NoHeaders(&[]),
            query: None,
            source: "198.18.0.9".parse().expect("ip"),
        };
        let key = destination_key("api", 80, None);
        let _ = b.order(&key, &policy, refs.clone(), 0, &req);
        let busy = refs[0].addr();
        let guards: Vec<InFlight> = (0..5)
            .filter_map(|_| b.begin(&key, &policy, busy))
            .collect();
        for draw in 0..50 {
            let d = crate::route::select::roll(draw);
            assert_ne!(
                b.order(&key, &policy, refs.clone(), d, &req)[0].addr(),
                busy
            );
        }
        drop(guards);
        let picks: std::collections::HashSet<SocketAddr> = (0..50)
            .map(|d| {
                b.order(
                    &key,
                    &policy,
                    refs.clone(),
                    crate::route::select::roll(d),
                    &req,
                )[0]
                .addr()
            })
            .collect();
        assert_eq!(picks.len(), 2);
    }

    #[tokio::test]
    async fn connection_pool_limits_queue_http1_and_overflow_with_uo() {
        let b = Balancer::default();
        let key = destination_key("api", 80, None);
        let policy = TrafficPolicy {
            connection_pool: Some(ConnectionPool {
                max_connections: Some(1),
                max_pending: Some(1),
                ..Default::default()
            }),
            ..Default::default()
        };
        let first = b
            .admit(&key, &policy, false)
            .await
            .expect("a free connection");
        assert!(first.is_some());
        // The second waits (pending 1 of 1); a third overflows at once.
        let waiting = {
            let b = &b;
            let key = key.clone();
            let policy = policy.clone();
            async move { b.admit(&key, &policy, false).await.map(|a| a.is_some()) }
        };
        tokio::pin!(waiting);
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(20), waiting.as_mut())
                .await
                .is_err(),
            "the second request waits"
        );
        assert!(
            b.admit(&key, &policy, false).await.is_err(),
            "the third overflows"
        );
        // HTTP/2 is not limited by connections.
        assert!(b.admit(&key, &policy, true).await.is_ok());
        drop(first);
        assert!(
            matches!(waiting.await, Ok(true)),
            "the waiting one got the connection"
        );
        // Requests in flight: http2MaxRequests 2.
        let requests = TrafficPolicy {
            connection_pool: Some(ConnectionPool {
                max_requests: Some(2),
                ..Default::default()
            }),
            ..Default::default()
        };
        let a = b.admit(&key, &requests, true).await.expect("1 of 2");
        let c = b.admit(&key, &requests, false).await.expect("2 of 2");
        assert!(b.admit(&key, &requests, true).await.is_err());
        drop((a, c));
        assert!(b.admit(&key, &requests, true).await.is_ok());
        // No limits: nothing to hold.
        assert!(matches!(
            b.admit(&key, &TrafficPolicy::default(), false).await,
            Ok(None)
        ));
    }

    #[test]
    fn cookies_and_query_parameters_are_read_by_name() {
        assert_eq!(cookie("a=1; user=jason; b=2", "user"), Some("jason"));
        assert_eq!(cookie("username=x", "user"), None);
        assert_eq!(query_param("a=1&user=jason&flag", "user"), Some("jason"));
        assert_eq!(query_param("a=1&flag", "flag"), Some(""));
        assert_eq!(query_param("a=1", "user"), None);
    }
}
