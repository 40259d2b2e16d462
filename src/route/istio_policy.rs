//! Compiles a DestinationRule traffic policy's `loadBalancer`, `outlierDetection` and
//! `connectionPool` into [`TrafficPolicy`], with Istio's defaults; every sub-field weft does
//! not implement is refused by name (the rest of the policy applies).

use serde::Deserialize;
use serde_json::Value;

use super::balance::{HashOn, LoadBalancer};
use super::outlier::OutlierDetection;
use super::policy::{ConnectionPool, TrafficPolicy};

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct LoadBalancerSpec {
    #[serde(default)]
    simple: Option<String>,
    #[serde(default)]
    consistent_hash: Option<ConsistentHashSpec>,
    #[serde(default)]
    locality_lb_setting: Option<Value>,
    #[serde(default)]
    warmup_duration_secs: Option<Value>,
    #[serde(default)]
    warmup: Option<Value>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ConsistentHashSpec {
    #[serde(default)]
    http_header_name: Option<String>,
    #[serde(default)]
    http_cookie: Option<CookieSpec>,
    #[serde(default)]
    use_source_ip: Option<bool>,
    #[serde(default)]
    http_query_parameter_name: Option<String>,
    /// The hashing algorithm's tuning: weft hashes by rendezvous, which needs none; the
    /// semantics (a key keeps its endpoint) are the same, so these are accepted as no-ops.
    #[serde(default)]
    ring_hash: Option<Value>,
    #[serde(default)]
    maglev: Option<Value>,
    #[serde(default)]
    minimum_ring_size: Option<Value>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CookieSpec {
    name: String,
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    ttl: Option<String>,
    #[serde(default)]
    attributes: Option<Value>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct OutlierDetectionSpec {
    #[serde(default)]
    consecutive_errors: Option<Value>,
    #[serde(default)]
    consecutive_5xx_errors: Option<u32>,
    #[serde(default)]
    consecutive_gateway_errors: Option<u32>,
    #[serde(default)]
    interval: Option<String>,
    #[serde(default)]
    base_ejection_time: Option<String>,
    #[serde(default)]
    max_ejection_percent: Option<i64>,
    #[serde(default)]
    min_health_percent: Option<i64>,
    #[serde(default)]
    split_external_local_origin_errors: Option<bool>,
    #[serde(default)]
    consecutive_local_origin_failures: Option<Value>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ConnectionPoolSpec {
    #[serde(default)]
    tcp: Option<TcpPoolSpec>,
    #[serde(default)]
    http: Option<HttpPoolSpec>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct TcpPoolSpec {
    #[serde(default)]
    max_connections: Option<i64>,
    #[serde(default)]
    connect_timeout: Option<String>,
    #[serde(default)]
    tcp_keepalive: Option<Value>,
    #[serde(default)]
    max_connection_duration: Option<Value>,
    #[serde(default)]
    idle_timeout: Option<Value>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct HttpPoolSpec {
    #[serde(default)]
    http1_max_pending_requests: Option<i64>,
    #[serde(default)]
    http2_max_requests: Option<i64>,
    #[serde(default)]
    max_requests_per_connection: Option<i64>,
    #[serde(default)]
    max_retries: Option<Value>,
    #[serde(default)]
    idle_timeout: Option<Value>,
    #[serde(default)]
    h2_upgrade_policy: Option<Value>,
    #[serde(default)]
    use_client_protocol: Option<Value>,
    #[serde(default)]
    max_concurrent_streams: Option<Value>,
}

/// Reads `loadBalancer`, `outlierDetection` and `connectionPool` of the traffic policy at `at`. What cannot be
/// applied is pushed to `refused` (each with its path and what to do instead); what can is
/// returned.
pub fn traffic_policy(
    at: &str,
    load_balancer: Option<&Value>,
    outlier_detection: Option<&Value>,
    connection_pool: Option<&Value>,
    refused: &mut Vec<String>,
) -> TrafficPolicy {
    let mut policy = TrafficPolicy::default();
    if let Some(v) = load_balancer {
        let at = format!("{at}.loadBalancer");
        match serde_json::from_value::<LoadBalancerSpec>(v.clone()) {
            Ok(spec) => policy.load_balancer = compile_lb(&at, &spec, refused),
            Err(e) => refused.push(format!("{at}: {e}")),
        }
    }
    if let Some(v) = outlier_detection {
        let at = format!("{at}.outlierDetection");
        match serde_json::from_value::<OutlierDetectionSpec>(v.clone()) {
            Ok(spec) => match compile_outlier(&at, &spec) {
                Ok(od) => policy.outlier_detection = Some(od),
                Err(e) => refused.push(e),
            },
            Err(e) => refused.push(format!("{at}: {e}")),
        }
    }
    if let Some(v) = connection_pool {
        let at = format!("{at}.connectionPool");
        match serde_json::from_value::<ConnectionPoolSpec>(v.clone()) {
            Ok(spec) => policy.connection_pool = compile_pool(&at, &spec, refused),
            Err(e) => refused.push(format!("{at}: {e}")),
        }
    }
    policy
}

/// A limit Istio types as int32: 0 or absent means Envoy's default (no limit), negative is
/// refused.
fn limit(at: &str, v: Option<i64>, refused: &mut Vec<String>) -> Option<u32> {
    match v {
        None | Some(0) => None,
        Some(n) if n > 0 => Some(u32::try_from(n).unwrap_or(u32::MAX)),
        Some(n) => {
            refused.push(format!("{at} {n} is negative; give a positive number"));
            None
        }
    }
}

fn compile_pool(
    at: &str,
    spec: &ConnectionPoolSpec,
    refused: &mut Vec<String>,
) -> Option<ConnectionPool> {
    let mut pool = ConnectionPool::default();
    if let Some(tcp) = &spec.tcp {
        pool.max_connections = limit(
            &format!("{at}.tcp.maxConnections"),
            tcp.max_connections,
            refused,
        );
        if let Some(t) = &tcp.connect_timeout {
            match millis(&format!("{at}.tcp.connectTimeout"), t) {
                Ok(0) => refused.push(format!("{at}.tcp.connectTimeout must be longer than 0")),
                Ok(ms) => pool.connect_timeout_ms = Some(ms),
                Err(e) => refused.push(e),
            }
        }
        for (field, set) in [
            ("tcpKeepalive", tcp.tcp_keepalive.is_some()),
            (
                "maxConnectionDuration",
                tcp.max_connection_duration.is_some(),
            ),
            ("idleTimeout", tcp.idle_timeout.is_some()),
        ] {
            if set {
                refused.push(format!("{at}.tcp.{field} (not supported yet)"));
            }
        }
    }
    if let Some(http) = &spec.http {
        pool.max_pending = limit(
            &format!("{at}.http.http1MaxPendingRequests"),
            http.http1_max_pending_requests,
            refused,
        );
        pool.max_requests = limit(
            &format!("{at}.http.http2MaxRequests"),
            http.http2_max_requests,
            refused,
        );
        pool.max_requests_per_connection = limit(
            &format!("{at}.http.maxRequestsPerConnection"),
            http.max_requests_per_connection,
            refused,
        );
        if let Some(t) = &http.idle_timeout {
            let at = format!("{at}.http.idleTimeout");
            // 0s is Envoy's "no idle timeout": the connection stays until the peer or a
            // request count closes it (the pool reads idle 0 as never).
            let parsed = t
                .as_str()
                .map(|t| crate::duration::parse(t).map_err(|e| format!("{at}: {e}")));
            match parsed {
                // Below a millisecond would round to 0, which reads as "never": the
                // opposite of what was asked.
                Some(Ok(d)) if !d.is_zero() && d.as_millis() == 0 => refused.push(format!(
                    "{at}: {} is below 1ms (the pool counts whole milliseconds)",
                    t.as_str().unwrap_or_default()
                )),
                Some(Ok(d)) => {
                    pool.idle_timeout_ms = Some(u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
                }
                Some(Err(e)) => refused.push(e),
                None => refused.push(format!("{at}: a duration such as \"30s\"")),
            }
        }
        for (field, set) in [
            ("maxRetries", http.max_retries.is_some()),
            ("h2UpgradePolicy", http.h2_upgrade_policy.is_some()),
            ("useClientProtocol", http.use_client_protocol.is_some()),
            (
                "maxConcurrentStreams",
                http.max_concurrent_streams.is_some(),
            ),
        ] {
            if set {
                refused.push(format!("{at}.http.{field} (not supported yet)"));
            }
        }
    }
    (pool != ConnectionPool::default()).then_some(pool)
}

fn compile_lb(
    at: &str,
    spec: &LoadBalancerSpec,
    refused: &mut Vec<String>,
) -> Option<LoadBalancer> {
    for (field, set) in [
        ("localityLbSetting", spec.locality_lb_setting.is_some()),
        ("warmupDurationSecs", spec.warmup_duration_secs.is_some()),
        ("warmup", spec.warmup.is_some()),
    ] {
        if set {
            refused.push(format!(
                "{at}.{field} (weft has one locality and no slow start)"
            ));
        }
    }
    match (&spec.simple, &spec.consistent_hash) {
        (Some(_), Some(_)) => {
            refused.push(format!(
                "{at}: simple and consistentHash are exclusive; keep one"
            ));
            None
        }
        (Some(simple), None) => match simple.as_str() {
            "UNSPECIFIED" => None,
            "ROUND_ROBIN" => Some(LoadBalancer::RoundRobin),
            "RANDOM" => Some(LoadBalancer::Random),
            // LEAST_CONN is Istio's deprecated name of LEAST_REQUEST.
            "LEAST_REQUEST" | "LEAST_CONN" => Some(LoadBalancer::LeastRequest),
            "PASSTHROUGH" => {
                refused.push(format!(
                    "{at}.simple PASSTHROUGH (weft always picks an endpoint of the Service)"
                ));
                None
            }
            other => {
                refused.push(format!(
                    "{at}.simple {other:?}: use ROUND_ROBIN, RANDOM or LEAST_REQUEST"
                ));
                None
            }
        },
        (None, Some(hash)) => compile_hash(&format!("{at}.consistentHash"), hash, refused),
        (None, None) => None,
    }
}

fn compile_hash(
    at: &str,
    h: &ConsistentHashSpec,
    refused: &mut Vec<String>,
) -> Option<LoadBalancer> {
    let mut keys: Vec<HashOn> = Vec::new();
    if let Some(name) = &h.http_header_name {
        keys.push(HashOn::Header(name.to_ascii_lowercase()));
    }
    if let Some(c) = &h.http_cookie {
        // Envoy generates the cookie when the request has none and a ttl is set; weft does
        // not set cookies, so a request without it is balanced round robin.
        let generates = c
            .ttl
            .as_deref()
            .is_some_and(|t| !matches!(t, "0s" | "0" | ""));
        if generates || c.path.is_some() || c.attributes.is_some() {
            refused.push(format!(
                "{at}.httpCookie ttl/path/attributes (weft hashes on the cookie when the request carries it and never sets one)"
            ));
        }
        keys.push(HashOn::Cookie(c.name.clone()));
    }
    if h.use_source_ip == Some(true) {
        keys.push(HashOn::SourceIp);
    }
    if let Some(q) = &h.http_query_parameter_name {
        keys.push(HashOn::QueryParameter(q.clone()));
    }
    let _tuning = (&h.ring_hash, &h.maglev, &h.minimum_ring_size);
    match keys.len() {
        1 => keys.pop().map(LoadBalancer::ConsistentHash),
        0 => {
            refused.push(format!(
                "{at}: name what to hash (httpHeaderName, httpCookie, useSourceIp or httpQueryParameterName)"
            ));
            None
        }
        _ => {
            refused.push(format!("{at}: hash on one key only (Istio's oneof)"));
            None
        }
    }
}

fn millis(at: &str, text: &str) -> Result<u64, String> {
    crate::duration::parse(text)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .map_err(|e| format!("{at}: {e}"))
}

fn percent(at: &str, v: Option<i64>, default: u32) -> Result<u32, String> {
    match v {
        None => Ok(default),
        Some(p @ 0..=100) => Ok(p as u32),
        Some(p) => Err(format!("{at} {p} is not a percentage (0 to 100)")),
    }
}

fn compile_outlier(at: &str, s: &OutlierDetectionSpec) -> Result<OutlierDetection, String> {
    if s.consecutive_errors.is_some() {
        return Err(format!(
            "{at}.consecutiveErrors is deprecated (it counted 502/503/504): use consecutiveGatewayErrors or consecutive5xxErrors"
        ));
    }
    if s.split_external_local_origin_errors == Some(true)
        || s.consecutive_local_origin_failures.is_some()
    {
        return Err(format!(
            "{at}.splitExternalLocalOriginErrors/consecutiveLocalOriginFailures are not supported: connection failures count as 5xx, as by default"
        ));
    }
    let d = OutlierDetection::istio_default();
    let od = OutlierDetection {
        consecutive_5xx: s.consecutive_5xx_errors.unwrap_or(d.consecutive_5xx),
        consecutive_gateway: s
            .consecutive_gateway_errors
            .unwrap_or(d.consecutive_gateway),
        interval_ms: match &s.interval {
            Some(t) => millis(&format!("{at}.interval"), t)?,
            None => d.interval_ms,
        },
        base_ejection_ms: match &s.base_ejection_time {
            Some(t) => millis(&format!("{at}.baseEjectionTime"), t)?,
            None => d.base_ejection_ms,
        },
        max_ejection_percent: percent(
            &format!("{at}.maxEjectionPercent"),
            s.max_ejection_percent,
            d.max_ejection_percent,
        )?,
        min_health_percent: percent(
            &format!("{at}.minHealthPercent"),
            s.min_health_percent,
            d.min_health_percent,
        )?,
    };
    if od.interval_ms == 0 {
        return Err(format!("{at}.interval must be longer than 0"));
    }
    Ok(od)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn compile(lb: Option<Value>, od: Option<Value>) -> (TrafficPolicy, Vec<String>) {
        let mut refused = Vec::new();
        let p = traffic_policy(
            "trafficPolicy",
            lb.as_ref(),
            od.as_ref(),
            None,
            &mut refused,
        );
        (p, refused)
    }

    #[test]
    fn connection_pool_limits_compile_and_the_rest_is_refused_by_name() {
        // Istio's circuit-breaking task, verbatim.
        let spec = json!({"tcp": {"maxConnections": 1},
                          "http": {"http1MaxPendingRequests": 1, "maxRequestsPerConnection": 1}});
        let mut refused = Vec::new();
        let p = traffic_policy("trafficPolicy", None, None, Some(&spec), &mut refused);
        let pool = p.connection_pool.expect("limits");
        assert_eq!(pool.max_connections, Some(1));
        assert_eq!(pool.max_pending, Some(1));
        assert_eq!(pool.max_requests, None);
        assert_eq!(pool.max_requests_per_connection, Some(1));
        assert!(refused.is_empty(), "{refused:?}");
        assert_eq!(
            pool.summary(),
            "limit connections 1, pending 1, requests/connection 1"
        );
        let spec = json!({"tcp": {"connectTimeout": "30ms", "maxConnections": -1},
                          "http": {"http2MaxRequests": 0, "idleTimeout": "1.5s", "maxRetries": 3,
                                   "maxRequestsPerConnection": 0}});
        let mut refused = Vec::new();
        let p = traffic_policy("trafficPolicy", None, None, Some(&spec), &mut refused);
        let pool = p.connection_pool.expect("limits");
        assert_eq!(pool.connect_timeout_ms, Some(30));
        assert_eq!(pool.idle_timeout_ms, Some(1500));
        // 0 is Istio's unlimited.
        assert_eq!(pool.max_requests_per_connection, None);
        for named in ["maxConnections -1 is negative", "http.maxRetries"] {
            assert!(
                refused.iter().any(|r| r.contains(named)),
                "{named}: {refused:?}"
            );
        }
        assert_eq!(refused.len(), 2, "{refused:?}");
        // Envoy's 0s: no idle timeout; bad values are refused by name.
        let mut refused = Vec::new();
        let spec = json!({"http": {"idleTimeout": "0s"}});
        let p = traffic_policy("trafficPolicy", None, None, Some(&spec), &mut refused);
        assert_eq!(p.connection_pool.and_then(|c| c.idle_timeout_ms), Some(0));
        for (spec, named) in [
            (json!({"idleTimeout": "soon"}), "http.idleTimeout"),
            (json!({"idleTimeout": 5}), "http.idleTimeout: a duration"),
            (json!({"idleTimeout": "500us"}), "500us is below 1ms"),
            (
                json!({"maxRequestsPerConnection": -2}),
                "maxRequestsPerConnection -2 is negative",
            ),
        ] {
            let mut refused = Vec::new();
            let p = traffic_policy(
                "trafficPolicy",
                None,
                None,
                Some(&json!({ "http": spec })),
                &mut refused,
            );
            assert!(p.connection_pool.is_none(), "{spec}");
            assert!(
                refused.iter().any(|r| r.contains(named)),
                "{named}: {refused:?}"
            );
        }
        let mut refused = Vec::new();
        let p = traffic_policy(
            "trafficPolicy",
            None,
            None,
            Some(&json!({"tcp": {"maxConections": 1}})),
            &mut refused,
        );
        assert!(p.connection_pool.is_none());
        assert!(
            refused[0].contains("unknown field `maxConections`"),
            "{refused:?}"
        );
    }

    #[test]
    fn simple_load_balancers_and_hash_keys_compile() {
        for (simple, want) in [
            ("ROUND_ROBIN", Some(LoadBalancer::RoundRobin)),
            ("RANDOM", Some(LoadBalancer::Random)),
            ("LEAST_REQUEST", Some(LoadBalancer::LeastRequest)),
            ("LEAST_CONN", Some(LoadBalancer::LeastRequest)),
            ("UNSPECIFIED", None),
        ] {
            let (p, refused) = compile(Some(json!({"simple": simple})), None);
            assert_eq!(p.load_balancer, want, "{simple}");
            assert!(refused.is_empty(), "{refused:?}");
        }
        let (p, refused) = compile(
            Some(
                json!({"consistentHash": {"httpHeaderName": "X-User", "ringHash": {"minimumRingSize": 1024}}}),
            ),
            None,
        );
        assert_eq!(
            p.load_balancer,
            Some(LoadBalancer::ConsistentHash(HashOn::Header(
                "x-user".into()
            )))
        );
        assert!(refused.is_empty(), "{refused:?}");
        let (p, _) = compile(Some(json!({"consistentHash": {"useSourceIp": true}})), None);
        assert_eq!(
            p.load_balancer,
            Some(LoadBalancer::ConsistentHash(HashOn::SourceIp))
        );
        let (p, refused) = compile(
            Some(json!({"consistentHash": {"httpCookie": {"name": "user", "ttl": "0s"}}})),
            None,
        );
        assert_eq!(
            p.load_balancer,
            Some(LoadBalancer::ConsistentHash(HashOn::Cookie("user".into())))
        );
        assert!(refused.is_empty(), "{refused:?}");
    }

    #[test]
    fn what_weft_cannot_do_is_refused_by_name() {
        let cases = [
            (json!({"simple": "PASSTHROUGH"}), "simple PASSTHROUGH"),
            (json!({"simple": "FASTEST"}), "\"FASTEST\""),
            (
                json!({"simple": "RANDOM", "localityLbSetting": {"enabled": true}}),
                "localityLbSetting",
            ),
            (json!({"consistentHash": {}}), "name what to hash"),
            (
                json!({"consistentHash": {"useSourceIp": true, "httpHeaderName": "x"}}),
                "one key only",
            ),
            (
                json!({"consistentHash": {"httpCookie": {"name": "c", "ttl": "10s"}}}),
                "httpCookie ttl",
            ),
            (
                json!({"simple": "RANDOM", "consistentHash": {"useSourceIp": true}}),
                "exclusive",
            ),
            (json!({"simpel": "RANDOM"}), "unknown field `simpel`"),
        ];
        for (lb, named) in cases {
            let (_, refused) = compile(Some(lb.clone()), None);
            assert!(
                refused.iter().any(|r| r.contains(named)),
                "{lb}: {refused:?}"
            );
            assert!(
                refused
                    .iter()
                    .all(|r| r.starts_with("trafficPolicy.loadBalancer")),
                "{refused:?}"
            );
        }
        // The part that can apply still does.
        let (p, _) = compile(
            Some(json!({"simple": "RANDOM", "warmupDurationSecs": "10s"})),
            None,
        );
        assert_eq!(p.load_balancer, Some(LoadBalancer::Random));
    }

    #[test]
    fn outlier_detection_takes_istios_defaults_and_refuses_bad_values() {
        let (p, refused) = compile(
            None,
            Some(json!({"consecutive5xxErrors": 1, "baseEjectionTime": "3m"})),
        );
        assert!(refused.is_empty(), "{refused:?}");
        let od = p.outlier_detection.unwrap();
        assert_eq!(od.consecutive_5xx, 1);
        assert_eq!(od.consecutive_gateway, 0);
        assert_eq!(od.interval_ms, 10_000);
        assert_eq!(od.base_ejection_ms, 180_000);
        assert_eq!(od.max_ejection_percent, 10);
        assert_eq!(od.min_health_percent, 0);
        // Seed-style: the gateway count, a percent, an interval.
        let (p, _) = compile(
            None,
            Some(
                json!({"consecutiveGatewayErrors": 3, "interval": "1s", "maxEjectionPercent": 100}),
            ),
        );
        let od = p.outlier_detection.unwrap();
        assert_eq!(
            (
                od.consecutive_5xx,
                od.consecutive_gateway,
                od.interval_ms,
                od.max_ejection_percent
            ),
            (5, 3, 1000, 100)
        );
        for (spec, named) in [
            (
                json!({"consecutiveErrors": 5}),
                "consecutiveErrors is deprecated",
            ),
            (json!({"maxEjectionPercent": 120}), "maxEjectionPercent 120"),
            (json!({"interval": "soon"}), "outlierDetection.interval"),
            (json!({"interval": "0s"}), "longer than 0"),
            (
                json!({"splitExternalLocalOriginErrors": true}),
                "splitExternalLocalOriginErrors",
            ),
            (json!({"consecutive5xxErrors": -1}), "outlierDetection"),
        ] {
            let (p, refused) = compile(None, Some(spec.clone()));
            assert!(p.outlier_detection.is_none(), "{spec}");
            assert!(
                refused.iter().any(|r| r.contains(named)),
                "{spec}: {refused:?}"
            );
        }
    }
}
