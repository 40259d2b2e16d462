//! A DestinationRule's `loadBalancer`, pure: the order in which one request tries the
//! endpoints of its destination. Round robin and random rotate the list; least request takes
//! the less loaded of two random picks (Envoy's power of two choices, Istio's default
//! `LEAST_REQUEST`); a consistent hash orders endpoints by rendezvous hashing of the request's
//! key, so a key keeps its endpoint while it stays and moves only when it leaves. The proxy
//! supplies the draws, the loads and the key; nothing here reads a clock or a lock.

use serde::{Deserialize, Serialize};

/// How one Service (or subset) spreads requests over its endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum LoadBalancer {
    RoundRobin,
    Random,
    LeastRequest,
    ConsistentHash(HashOn),
}

/// What a consistent hash is computed from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum HashOn {
    /// A request header's value (lowercase name).
    Header(String),
    /// A cookie's value.
    Cookie(String),
    /// The caller's IP address.
    SourceIp,
    /// A query parameter's value.
    QueryParameter(String),
}

/// What the balancer reads of one request and its candidates.
pub struct Input<'a> {
    /// The round-robin position of this request (the caller's counter).
    pub position: usize,
    /// A uniform draw for this request.
    pub draw: u64,
    /// The hash of the request's key, when the policy hashes and the request has the key
    /// (without it, a consistent hash falls back to round robin, as Envoy picks randomly).
    pub key: Option<u64>,
    /// Each candidate's identity for hashing (its address as bytes), in candidate order.
    pub identities: &'a [u64],
    /// Each candidate's requests in flight, in candidate order (least request only).
    pub loads: &'a [u32],
}

/// The order in which to try `n` candidates (indexes into them): the first is the pick, the
/// rest are where a failed connection or a retry goes next.
pub fn order(lb: &LoadBalancer, n: usize, input: &Input<'_>) -> Vec<usize> {
    if n == 0 {
        return Vec::new();
    }
    match lb {
        LoadBalancer::RoundRobin => rotation(n, input.position % n),
        LoadBalancer::Random => rotation(n, (input.draw % n as u64) as usize),
        LoadBalancer::LeastRequest => {
            // Two distinct random candidates; the one with fewer requests in flight first
            // (the first drawn on a tie), the rest in rotation after it.
            let a = (input.draw % n as u64) as usize;
            let first = if n == 1 {
                a
            } else {
                let b = (a + 1 + ((input.draw >> 32) % (n as u64 - 1)) as usize) % n;
                let load = |i: usize| input.loads.get(i).copied().unwrap_or(0);
                if load(b) < load(a) { b } else { a }
            };
            rotation(n, first)
        }
        LoadBalancer::ConsistentHash(_) => match input.key {
            Some(key) => {
                let mut ranked: Vec<(u64, usize)> = (0..n)
                    .map(|i| {
                        (
                            mix(key ^ input.identities.get(i).copied().unwrap_or(i as u64)),
                            i,
                        )
                    })
                    .collect();
                // Highest score first; the index breaks ties so the order is total.
                ranked.sort_unstable_by(|x, y| y.0.cmp(&x.0).then(x.1.cmp(&y.1)));
                ranked.into_iter().map(|(_, i)| i).collect()
            }
            None => rotation(n, input.position % n),
        },
    }
}

fn rotation(n: usize, start: usize) -> Vec<usize> {
    (0..n).map(|k| (start + k) % n).collect()
}

/// A 64-bit finalizer (SplitMix64's): spreads keys and identities uniformly.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A stable 64-bit hash of bytes (FNV-1a, then mixed): a hash key or an endpoint identity.
/// Stable across processes and versions, so every proxy maps a key to the same endpoint.
pub fn hash_bytes(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input<'a>(
        position: usize,
        draw: u64,
        key: Option<u64>,
        ids: &'a [u64],
        loads: &'a [u32],
    ) -> Input<'a> {
        Input {
            position,
            draw,
            key,
            identities: ids,
            loads,
        }
    }

    #[test]
    fn round_robin_and_random_rotate_every_candidate_once() {
        let ids = [1, 2, 3, 4];
        let rr = order(&LoadBalancer::RoundRobin, 4, &input(5, 0, None, &ids, &[]));
        assert_eq!(rr, [1, 2, 3, 0]);
        let random = order(&LoadBalancer::Random, 4, &input(0, 7, None, &ids, &[]));
        assert_eq!(random, [3, 0, 1, 2]);
        assert!(order(&LoadBalancer::Random, 0, &input(0, 7, None, &[], &[])).is_empty());
    }

    #[test]
    fn least_request_takes_the_less_loaded_of_two_picks() {
        let ids = [1, 2, 3];
        // Over many draws with one endpoint busy, it is first far less often than a third.
        let loads = [0, 50, 0];
        let busy_first = (0..3000u64)
            .filter(|d| {
                let draw = crate::route::select::roll(*d);
                order(
                    &LoadBalancer::LeastRequest,
                    3,
                    &input(0, draw, None, &ids, &loads),
                )[0] == 1
            })
            .count();
        // It is first only when both picks are itself, which distinct picks never are.
        assert_eq!(busy_first, 0);
        // Equal loads: every endpoint is picked, roughly evenly.
        let mut seen = [0usize; 3];
        for d in 0..3000u64 {
            let draw = crate::route::select::roll(d);
            seen[order(
                &LoadBalancer::LeastRequest,
                3,
                &input(0, draw, None, &ids, &[0, 0, 0]),
            )[0]] += 1;
        }
        assert!(seen.iter().all(|&c| (800..1200).contains(&c)), "{seen:?}");
        assert_eq!(
            order(
                &LoadBalancer::LeastRequest,
                1,
                &input(0, 9, None, &ids, &[4])
            ),
            [0]
        );
    }

    #[test]
    fn a_consistent_hash_keeps_a_key_on_its_endpoint_and_moves_few_keys_when_one_leaves() {
        let lb = LoadBalancer::ConsistentHash(HashOn::Header("x-user".into()));
        let ids: Vec<u64> = (0..5u64)
            .map(|i| hash_bytes(&[198, 18, 0, i as u8]))
            .collect();
        let keys: Vec<u64> = (0..1000)
            .map(|k| hash_bytes(format!("user-{k}").as_bytes()))
            .collect();
        let pick = |ids: &[u64], key: u64, position: usize| {
            ids[order(
                &lb,
                ids.len(),
                &input(position, position as u64, Some(key), ids, &[]),
            )[0]]
        };
        // The same key, whatever the request's position or draw, goes to the same endpoint.
        for &k in &keys[..50] {
            assert_eq!(pick(&ids, k, 0), pick(&ids, k, 17));
        }
        // Spread: every endpoint gets some keys.
        let mut per = std::collections::HashMap::new();
        for &k in &keys {
            *per.entry(pick(&ids, k, 0)).or_insert(0) += 1;
        }
        assert_eq!(per.len(), 5, "{per:?}");
        assert!(per.values().all(|&c| c > 120), "{per:?}");
        // Endpoint 2 leaves: only its keys move.
        let fewer: Vec<u64> = ids.iter().copied().filter(|&i| i != ids[2]).collect();
        let moved = keys
            .iter()
            .filter(|&&k| pick(&ids, k, 0) != ids[2] && pick(&ids, k, 0) != pick(&fewer, k, 0))
            .count();
        assert_eq!(moved, 0);
        // No key: round robin.
        assert_eq!(order(&lb, 3, &input(4, 0, None, &ids[..3], &[])), [1, 2, 0]);
    }
}
