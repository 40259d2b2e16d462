//! A DestinationRule's `outlierDetection`, pure: which endpoints of one destination a client
//! proxy stops sending to, and for how long, from the answers it got (Envoy's consecutive-5xx
//! and consecutive-gateway-error ejection, as Istio configures it). Time is milliseconds on
//! the caller's monotonic clock; the proxy keeps one [`Pool`] per destination.
//!
//! Decisions, as Envoy (split of local-origin errors off, Istio's setting): a connection that
//! cannot be opened or is reset counts as a 503 and a timeout as a 504; any other answer
//! below 500 resets a host's counts. A host reaching a threshold is ejected when no host is,
//! or while fewer than `maxEjectionPercent` of the pool are; it stays out for
//! `baseEjectionTime` × the times it was ejected (at most 300 s, Envoy's default
//! `max_ejection_time`) and comes back when that time is over (Envoy brings it back at the
//! next `interval` sweep: here it is exact). Each `interval` a host spends in service takes
//! one off its ejection count. Below `minHealthPercent` hosts in service, ejections are
//! ignored and every host is used (Envoy's panic mode); Istio's default 0 never does that.

use std::collections::HashMap;
use std::hash::Hash;

use serde::{Deserialize, Serialize};

/// Envoy's `max_ejection_time` default, the longest one ejection lasts.
pub const MAX_EJECTION_MS: u64 = 300_000;

/// The settings, with Istio's defaults filled in by the control plane.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OutlierDetection {
    /// Consecutive 5xx answers (and local failures) that eject a host; 0: off.
    pub consecutive_5xx: u32,
    /// Consecutive 502/503/504 answers (and local failures) that eject a host; 0: off.
    pub consecutive_gateway: u32,
    pub interval_ms: u64,
    pub base_ejection_ms: u64,
    pub max_ejection_percent: u32,
    pub min_health_percent: u32,
}

impl OutlierDetection {
    /// Istio's defaults: 5 consecutive 5xx, gateway errors off, 10 s interval, 30 s base
    /// ejection, at most 10 % ejected, no panic threshold.
    pub fn istio_default() -> Self {
        OutlierDetection {
            consecutive_5xx: 5,
            consecutive_gateway: 0,
            interval_ms: 10_000,
            base_ejection_ms: 30_000,
            max_ejection_percent: 10,
            min_health_percent: 0,
        }
    }

    /// One line for `weft proxy-config`.
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        if self.consecutive_5xx > 0 {
            parts.push(format!("{}×5xx", self.consecutive_5xx));
        }
        if self.consecutive_gateway > 0 {
            parts.push(format!("{}×gateway", self.consecutive_gateway));
        }
        format!(
            "eject {} for {}s×n, ≤{}%",
            if parts.is_empty() {
                "never".to_string()
            } else {
                parts.join("/")
            },
            self.base_ejection_ms / 1000,
            self.max_ejection_percent
        )
    }
}

/// How one try on a host ended, as outlier detection sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The upstream answered with this status.
    Status(u16),
    /// No connection, or it was reset before an answer (Envoy maps it to 503).
    LocalFailure,
    /// No answer in time (Envoy maps it to 504).
    Timeout,
}

impl Outcome {
    fn status(self) -> u16 {
        match self {
            Outcome::Status(s) => s,
            Outcome::LocalFailure => 503,
            Outcome::Timeout => 504,
        }
    }
}

#[derive(Debug, Clone, Default)]
struct Host {
    consecutive_5xx: u32,
    consecutive_gateway: u32,
    /// Out of service until then.
    ejected_until: Option<u64>,
    /// Times ejected, less one per interval in service (the ejection multiplier).
    ejections: u32,
    /// When `ejections` last went down (or the host came back).
    since: u64,
}

/// The hosts of one destination, by key (the proxy uses addresses).
#[derive(Debug, Clone)]
pub struct Pool<K> {
    hosts: HashMap<K, Host>,
}

impl<K> Default for Pool<K> {
    fn default() -> Self {
        Pool {
            hosts: HashMap::new(),
        }
    }
}

impl<K: Hash + Eq + Clone> Pool<K> {
    fn ejected_now(&self, now: u64) -> usize {
        self.hosts
            .values()
            .filter(|h| h.ejected_until.is_some_and(|t| t > now))
            .count()
    }

    /// Whether `host` is out of service at `now`.
    pub fn is_ejected(&self, host: &K, now: u64) -> bool {
        self.hosts
            .get(host)
            .and_then(|h| h.ejected_until)
            .is_some_and(|t| t > now)
    }

    /// Records one try's outcome on `host`, in a pool of `size` hosts. Returns how long the
    /// host is now ejected for (ms), when this outcome ejected it.
    pub fn record(
        &mut self,
        od: &OutlierDetection,
        host: &K,
        outcome: Outcome,
        now: u64,
        size: usize,
    ) -> Option<u64> {
        let ejected_now = self.ejected_now(now);
        let h = self.hosts.entry(host.clone()).or_insert_with(|| Host {
            since: now,
            ..Host::default()
        });
        if let Some(until) = h.ejected_until {
            if until > now {
                // Answers still in flight when it was ejected change nothing.
                return None;
            }
            // Back in service: counts start over.
            h.ejected_until = None;
            h.consecutive_5xx = 0;
            h.consecutive_gateway = 0;
            h.since = until;
        }
        while h.ejections > 0 && now.saturating_sub(h.since) >= od.interval_ms.max(1) {
            h.ejections -= 1;
            h.since += od.interval_ms.max(1);
        }
        let status = outcome.status();
        if status < 500 {
            h.consecutive_5xx = 0;
            h.consecutive_gateway = 0;
            return None;
        }
        h.consecutive_5xx += 1;
        if matches!(status, 502..=504) {
            h.consecutive_gateway += 1;
        } else {
            h.consecutive_gateway = 0;
        }
        let tripped = (od.consecutive_5xx > 0 && h.consecutive_5xx >= od.consecutive_5xx)
            || (od.consecutive_gateway > 0 && h.consecutive_gateway >= od.consecutive_gateway);
        if !tripped {
            return None;
        }
        let allowed = ejected_now == 0
            || size > 0 && (ejected_now * 100 / size) < od.max_ejection_percent as usize;
        if !allowed {
            return None;
        }
        h.ejections += 1;
        let ms = od
            .base_ejection_ms
            .saturating_mul(u64::from(h.ejections))
            .min(MAX_EJECTION_MS.max(od.base_ejection_ms));
        h.ejected_until = Some(now + ms);
        h.since = now + ms;
        h.consecutive_5xx = 0;
        h.consecutive_gateway = 0;
        Some(ms)
    }

    /// Forgets every host but `hosts` (the destination's endpoints in a new config).
    pub fn forget_except(&mut self, hosts: &[K]) {
        self.hosts.retain(|k, _| hosts.contains(k));
    }

    /// Which of `hosts` (the destination's endpoints now) to use at `now`: those in service,
    /// or all of them when fewer than `minHealthPercent` are (panic).
    pub fn usable(&self, od: &OutlierDetection, hosts: &[K], now: u64) -> Vec<bool> {
        let in_service: Vec<bool> = hosts.iter().map(|h| !self.is_ejected(h, now)).collect();
        let healthy = in_service.iter().filter(|u| **u).count();
        let panic = !hosts.is_empty()
            && od.min_health_percent > 0
            && healthy * 100 < hosts.len() * od.min_health_percent as usize;
        if panic {
            vec![true; hosts.len()]
        } else {
            in_service
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn od(c5xx: u32, gateway: u32, max_pct: u32) -> OutlierDetection {
        OutlierDetection {
            consecutive_5xx: c5xx,
            consecutive_gateway: gateway,
            interval_ms: 1_000,
            base_ejection_ms: 10_000,
            max_ejection_percent: max_pct,
            min_health_percent: 0,
        }
    }

    #[test]
    fn consecutive_5xx_eject_and_a_success_in_between_starts_over() {
        let od = od(3, 0, 100);
        let mut pool = Pool::default();
        assert_eq!(pool.record(&od, &"a", Outcome::Status(500), 0, 2), None);
        assert_eq!(pool.record(&od, &"a", Outcome::Status(500), 1, 2), None);
        assert_eq!(pool.record(&od, &"a", Outcome::Status(200), 2, 2), None);
        assert_eq!(pool.record(&od, &"a", Outcome::Status(503), 3, 2), None);
        assert_eq!(pool.record(&od, &"a", Outcome::LocalFailure, 4, 2), None);
        assert!(!pool.is_ejected(&"a", 5));
        // A 4xx is a success for outlier detection.
        assert_eq!(pool.record(&od, &"a", Outcome::Status(404), 5, 2), None);
        for t in 6..8 {
            assert_eq!(pool.record(&od, &"a", Outcome::Timeout, t, 2), None);
        }
        assert_eq!(
            pool.record(&od, &"a", Outcome::Status(500), 8, 2),
            Some(10_000)
        );
        assert!(pool.is_ejected(&"a", 9));
        assert_eq!(pool.usable(&od, &["a", "b"], 9), [false, true]);
        // Back after the base time.
        assert!(!pool.is_ejected(&"a", 10_008));
        assert_eq!(pool.usable(&od, &["a", "b"], 10_008), [true, true]);
    }

    #[test]
    fn gateway_errors_count_only_502_503_504_and_local_failures() {
        let od = od(0, 2, 100);
        let mut pool = Pool::default();
        assert_eq!(pool.record(&od, &"a", Outcome::Status(502), 0, 1), None);
        assert_eq!(pool.record(&od, &"a", Outcome::Status(500), 1, 1), None);
        assert_eq!(pool.record(&od, &"a", Outcome::Status(504), 2, 1), None);
        assert_eq!(
            pool.record(&od, &"a", Outcome::LocalFailure, 3, 1),
            Some(10_000)
        );
        // Off entirely: nothing ejects.
        let off = od_off();
        let mut pool = Pool::default();
        for t in 0..100 {
            assert_eq!(pool.record(&off, &"a", Outcome::Status(503), t, 1), None);
        }
    }

    fn od_off() -> OutlierDetection {
        od(0, 0, 100)
    }

    #[test]
    fn the_ejection_time_grows_with_each_ejection_and_shrinks_with_time_in_service() {
        let od = od(1, 0, 100);
        let mut pool = Pool::default();
        assert_eq!(
            pool.record(&od, &"a", Outcome::Status(500), 0, 1),
            Some(10_000)
        );
        assert_eq!(
            pool.record(&od, &"a", Outcome::Status(500), 10_000, 1),
            Some(20_000)
        );
        assert_eq!(
            pool.record(&od, &"a", Outcome::Status(500), 30_000, 1),
            Some(30_000)
        );
        // 2 intervals in service take two off the count of 3: the next ejection is 2× again.
        assert_eq!(
            pool.record(&od, &"a", Outcome::Status(200), 62_000, 1),
            None
        );
        assert_eq!(
            pool.record(&od, &"a", Outcome::Status(500), 62_001, 1),
            Some(20_000)
        );
        // Capped at 300 s.
        let mut pool = Pool::default();
        let mut t = 0;
        let mut last = 0;
        for _ in 0..40 {
            if let Some(ms) = pool.record(&od, &"a", Outcome::Status(500), t, 1) {
                last = ms;
                t += ms;
            }
        }
        assert_eq!(last, MAX_EJECTION_MS);
    }

    #[test]
    fn at_most_max_ejection_percent_but_always_one() {
        let od = od(1, 0, 10);
        let mut pool = Pool::default();
        // 10 % of 4 hosts is less than one host: the first is ejected anyway, not a second.
        assert!(pool.record(&od, &"a", Outcome::Status(500), 0, 4).is_some());
        assert_eq!(pool.record(&od, &"b", Outcome::Status(500), 1, 4), None);
        let od50 = od_with(50);
        let mut pool = Pool::default();
        assert!(
            pool.record(&od50, &"a", Outcome::Status(500), 0, 4)
                .is_some()
        );
        assert!(
            pool.record(&od50, &"b", Outcome::Status(500), 1, 4)
                .is_some()
        );
        assert_eq!(pool.record(&od50, &"c", Outcome::Status(500), 2, 4), None);
        assert_eq!(
            pool.usable(&od50, &["a", "b", "c", "d"], 3),
            [false, false, true, true]
        );
    }

    fn od_with(max_pct: u32) -> OutlierDetection {
        od(1, 0, max_pct)
    }

    #[test]
    fn below_min_health_percent_every_host_is_used_and_gone_hosts_are_forgotten() {
        let mut od = od(1, 0, 100);
        od.min_health_percent = 60;
        let mut pool = Pool::default();
        pool.record(&od, &"a", Outcome::Status(500), 0, 2);
        // 1 of 2 in service (50 %) < 60 %: panic, both used.
        assert_eq!(pool.usable(&od, &["a", "b"], 1), [true, true]);
        od.min_health_percent = 0;
        assert_eq!(pool.usable(&od, &["a", "b"], 1), [false, true]);
        // "a" left the destination: forgotten.
        pool.forget_except(&["b"]);
        assert_eq!(pool.usable(&od, &["b"], 1), [true]);
        assert!(!pool.is_ejected(&"a", 1));
    }
}
