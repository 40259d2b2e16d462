//! Control-plane benchmarks for `make bench` (SPEC §14).
//!
//! - Admission reviews handled by the injector's pure core (`weft::webhook::review`) and
//!   workload CSRs signed by the mesh CA (`MeshCa::sign_workload_csr`), each in a loop on the
//!   calling thread, so the rates are per core when the process is pinned to one CPU
//!   (`e2e/bench/run.sh` pins it with taskset). The review is the golden case
//!   `webhook/cases/probes-http-tcp-grpc`: a Deployment's pod with three containers' worth of
//!   probes in a namespace with `istio-injection=enabled`, so every call decides, injects and
//!   rewrites probes. HTTP and TLS around the handler are not measured there.
//! - Config convergence: the real config routes (`weft::discovery::server::router`) served
//!   over mTLS by the operator's own accept loop on 127.0.0.1, fed a `MeshIndex` of 1,000 meshed
//!   pods through `DiscoveryState::from_index`, and 1,000 simulated proxy streams from this
//!   process, which ask for deltas (`&delta=1`) as weft-proxy does; then two changes (a scale
//!   change and a VirtualService weight change), each timed from its publication to its
//!   arrival on every stream it concerns, with the bytes each stream received for it. The operator and the simulated proxies run on separate tokio runtimes (one
//!   worker thread each), so a counting allocator can tell their heaps apart.
//!
//! - Served endpoints over real HTTPS (`served.rs`): CSRs with the TokenReview cached and
//!   uncached, AdmissionReviews, config-stream pushes, and the CPU an HTTP/2 rapid-reset burst
//!   costs the operator.
//!
//! - Authorization: `weft::authz::evaluate_prefiltered` (the proxy's per-request path) and the
//!   plain `evaluate` over 10 policies of 10 rules, every rule tried, timed in batches of 100.
//!
//! - Routing (issue 19): the client proxy's per-request lookup (`SnapshotIndex::route` then
//!   `route_request`, as src/proxy/http/outbound.rs calls them) on route.sh's table of 20 match
//!   rules the request misses and a 90/10 catch-all, beside the same Service without routes.
//!
//! `cargo bench --bench control_plane -- [--seconds N] [--out FILE] [--only SECTION]` prints
//! one JSON object (and writes it to FILE). It reports and never asserts on speed.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant, SystemTime};

use axum::body::Body;
use futures::StreamExt;
use hyper::{Request, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::{Semaphore, watch};
use weft::api::{MeshConfig, VirtualService};
use weft::contract;
use weft::discovery::{DiscoverySettings, DiscoveryState, MeshIndex, MeshView};
use weft::kube::metrics::OperatorMetrics;
use weft::operator::serving::{ServingCertResolver, keep_serving_cert, serve_tls_on};
use weft::pki::{MeshCa, WorkloadKey, certificates_from_pem};
use weft::snapshot::delta::DELTA_PREFIX;
use weft::snapshot::stream::{Ack, LineDecoder, QUERY_DELTA, QUERY_FEATURES, QUERY_POD};
use weft::webhook::{InjectorSettings, MeshState, review};

#[path = "served.rs"]
mod served;

const REVIEW_CASE: &str = "webhook/cases/probes-http-tcp-grpc";
const TRUST_DOMAIN: &str = "cluster.local";
/// Distinct CSRs signed round-robin (keys are made before timing starts).
const CSR_POOL: usize = 64;

#[derive(Deserialize)]
struct CaseState {
    namespace: Option<Namespace>,
    #[serde(flatten)]
    mesh: MeshState,
}

/// Calls per second and per-call latency percentiles of one timed loop.
struct Measured {
    calls: usize,
    elapsed: Duration,
    nanos: Vec<u64>,
}

impl Measured {
    fn per_second(&self) -> f64 {
        self.calls as f64 / self.elapsed.as_secs_f64()
    }

    fn percentile_ms(&self, p: f64) -> f64 {
        if self.nanos.is_empty() {
            return 0.0;
        }
        let rank = ((p / 100.0) * self.nanos.len() as f64).ceil() as usize;
        self.nanos[rank.clamp(1, self.nanos.len()) - 1] as f64 / 1e6
    }

    fn to_json(&self, rate_key: &str) -> serde_json::Value {
        json!({
            rate_key: round(self.per_second(), 1),
            "calls": self.calls,
            "seconds": round(self.elapsed.as_secs_f64(), 3),
            "p50_ms": round(self.percentile_ms(50.0), 4),
            "p90_ms": round(self.percentile_ms(90.0), 4),
            "p99_ms": round(self.percentile_ms(99.0), 4),
            "max_ms": round(self.percentile_ms(100.0), 4),
        })
    }
}

fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

/// Runs `f` for `warmup`, then for `duration`, timing every call.
fn measure(warmup: Duration, duration: Duration, mut f: impl FnMut(usize)) -> Measured {
    let start = Instant::now();
    let mut i = 0;
    while start.elapsed() < warmup {
        f(i);
        i += 1;
    }
    let mut nanos = Vec::with_capacity(1 << 20);
    let start = Instant::now();
    loop {
        let t = Instant::now();
        f(i);
        nanos.push(t.elapsed().as_nanos() as u64);
        i += 1;
        if start.elapsed() >= duration {
            break;
        }
    }
    let elapsed = start.elapsed();
    nanos.sort_unstable();
    Measured {
        calls: nanos.len(),
        elapsed,
        nanos,
    }
}

fn webhook(seconds: Duration) -> serde_json::Value {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(REVIEW_CASE);
    let body = std::fs::read(dir.join("review.json")).expect("the golden review");
    let state_text = std::fs::read_to_string(dir.join("state.yaml")).expect("the golden state");
    let case: CaseState = serde_yaml::from_str(&state_text).expect("state.yaml parses");
    let namespace = case.namespace.map(Arc::new);
    let settings = InjectorSettings::default();

    // The answer must be a patch, or the loop would measure a refusal.
    let (status, answer) = review(&body, |_| namespace.clone(), &case.mesh, &settings);
    let answer: serde_json::Value = serde_json::from_slice(&answer).expect("JSON answer");
    assert_eq!(status, 200);
    assert!(
        answer["response"]["patch"].is_string(),
        "the benchmark review must be injected: {answer}"
    );

    let m = measure(Duration::from_millis(500), seconds, |_| {
        let (status, out) = review(
            std::hint::black_box(&body),
            |_| namespace.clone(),
            &case.mesh,
            &settings,
        );
        std::hint::black_box((status, out));
    });
    let mut v = m.to_json("reviews_per_s");
    v["review_bytes"] = json!(body.len());
    v["case"] = json!(REVIEW_CASE);
    v
}

fn csr(seconds: Duration) -> serde_json::Value {
    let ca =
        MeshCa::generate_root(TRUST_DOMAIN, Duration::from_secs(365 * 86_400)).expect("a root CA");
    let requests: Vec<(String, String)> = (0..CSR_POOL)
        .map(|i| {
            let id = format!("spiffe://{TRUST_DOMAIN}/ns/bench/sa/workload-{i}");
            let key = WorkloadKey::generate().expect("a P-256 key");
            (key.csr_pem(&id).expect("a CSR"), id)
        })
        .collect();
    let ttl = Duration::from_secs(86_400);
    let m = measure(Duration::from_millis(500), seconds, |i| {
        let (csr, id) = &requests[i % CSR_POOL];
        let issued = ca
            .sign_workload_csr(csr, id, ttl, SystemTime::now())
            .expect("the CA signs a good CSR");
        std::hint::black_box(issued);
    });
    let mut v = m.to_json("csr_per_s");
    v["key"] = json!("ECDSA P-256");
    v
}

// === config convergence ===

const NAMESPACES: usize = 100;
/// Replicas of each namespace's one Deployment (`app`), all behind its Service.
const PODS_PER_NAMESPACE: usize = 10;
const PROXIES: usize = NAMESPACES * PODS_PER_NAMESPACE;
const OPERATOR_NAMESPACE: &str = "weft-system";
/// What the proxies dial: the operator's Service name, as in its serving certificate.
const OPERATOR_SERVER_NAME: &str = "weft-operator.weft-system.svc";
/// Streams opening (TCP + mTLS + HTTP/2 + request) at one time: a ramp, not a thundering herd.
const CONNECT_CONCURRENCY: usize = 64;
const SYNC_TIMEOUT: Duration = Duration::from_secs(30);
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(15);
/// Pause before a memory reading, so acks and write buffers have settled.
const SETTLE: Duration = Duration::from_millis(300);

/// Which part of the convergence run a thread works for; [`CountingAlloc`] keeps one live-heap
/// counter per side. Threads outside the two runtimes (setup, the other benchmarks) count
/// nowhere.
const SIDE_NONE: usize = 0;
const SIDE_OPERATOR: usize = 1;
const SIDE_PROXIES: usize = 2;

thread_local! {
    static SIDE: Cell<usize> = const { Cell::new(SIDE_NONE) };
}
static LIVE: [AtomicIsize; 3] = [const { AtomicIsize::new(0) }; 3];
static PEAK: [AtomicIsize; 3] = [const { AtomicIsize::new(0) }; 3];

/// The system allocator, with live heap bytes counted per side: the operator and the 1,000
/// simulated proxies share this process, and RSS alone cannot tell their memory apart. A block
/// is charged to the side of the thread that allocates it and credited to the side of the
/// thread that frees it; the two runtimes share no heap objects, so the split holds.
struct CountingAlloc;

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

fn account(delta: isize) {
    let side = SIDE.try_with(Cell::get).unwrap_or(SIDE_NONE);
    if side != SIDE_NONE {
        let live = LIVE[side].fetch_add(delta, Ordering::Relaxed) + delta;
        if delta > 0 {
            PEAK[side].fetch_max(live, Ordering::Relaxed);
        }
    }
}

// SAFETY: every call is forwarded to `System` unchanged; the counting touches no heap.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            account(layout.size() as isize);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            account(layout.size() as isize);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        account(-(layout.size() as isize));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            account(new_size as isize - layout.size() as isize);
        }
        p
    }
}

fn live(side: usize) -> isize {
    LIVE[side].load(Ordering::Relaxed)
}

/// A runtime whose threads all count as `side`.
fn runtime(side: usize, name: &str) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name(name)
        .on_thread_start(move || SIDE.with(|s| s.set(side)))
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// VmRSS of this process.
fn rss_kb() -> i64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("VmRSS:")
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            })
        })
        .unwrap_or(0)
}

/// CPU time (user + system) of this process's threads named `name` (the runtimes name theirs),
/// from `/proc/self/task/*/stat`, in clock ticks of 10 ms.
fn thread_cpu_ms(name: &str) -> f64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0.0;
    };
    let mut ticks = 0u64;
    for task in tasks.flatten() {
        let path = task.path();
        let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        if comm.trim_end() != name {
            continue;
        }
        let stat = std::fs::read_to_string(path.join("stat")).unwrap_or_default();
        // Fields after the parenthesised command: state is field 3, utime 14, stime 15.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        ticks += fields
            .get(11)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            + fields
                .get(12)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
    }
    ticks as f64 * 10.0
}

fn kube<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> Arc<T> {
    Arc::new(serde_json::from_value(v).expect("a valid Kubernetes object"))
}

fn namespace_name(n: usize) -> String {
    format!("shop-{n:03}")
}

fn pod_name(i: usize) -> String {
    format!("app-7c9f6d5b8-{i:02}")
}

/// Pod `i` of namespace `n`'s address: a loopback one (all of 127.0.0.0/8 is loopback on
/// Linux), so its simulated proxy can connect from it, as the operator requires of a pod's
/// config stream.
fn pod_ip(n: usize, i: usize) -> IpAddr {
    IpAddr::V4(std::net::Ipv4Addr::new(127, 1, n as u8, i as u8 + 10))
}

/// [`weighted_mesh_view`] before the weight change.
fn mesh_view(first_replicas: usize) -> MeshView {
    weighted_mesh_view(first_replicas, WEIGHT_BEFORE)
}

/// The VirtualService's weight for `shop-000` before and after the weight change.
const WEIGHT_BEFORE: u32 = 90;
const WEIGHT_AFTER: u32 = 100;

/// What the reflectors would hold: `NAMESPACES` namespaces, each with a Deployment `app` of
/// `PODS_PER_NAMESPACE` meshed pods (service account `app`, one Service, one EndpointSlice
/// with every pod ready), except that `shop-000` runs `first_replicas` pods (the first change
/// scales it up by one: a new pod and a new endpoint); and a VirtualService in `shop-000`
/// sending `weight` percent of `app`'s requests to it and the rest to `app.shop-001` (the
/// second change moves the weight; exported to every namespace, Istio's default, so it
/// concerns every proxy).
fn weighted_mesh_view(first_replicas: usize, weight: u32) -> MeshView {
    let (mut pods, mut services, mut slices) = (Vec::new(), Vec::new(), Vec::new());
    for n in 0..NAMESPACES {
        let ns = namespace_name(n);
        let replicas = if n == 0 {
            first_replicas
        } else {
            PODS_PER_NAMESPACE
        };
        let mut endpoints = Vec::new();
        for i in 0..replicas {
            let (name, ip) = (pod_name(i), pod_ip(n, i).to_string());
            pods.push(kube::<Pod>(json!({
                "metadata": {"namespace": ns, "name": name, "labels": {
                    "app": "app", "pod-template-hash": "7c9f6d5b8",
                    contract::LABEL_REVISION: "stable",
                    contract::LABEL_CANONICAL_NAME: "app"}},
                "spec": {"serviceAccountName": "app", "nodeName": format!("node-{}", i % 3),
                         "containers": [{"name": "app", "image": "registry.example/shop/app:1.4.2",
                                         "ports": [{"name": "http", "containerPort": 8080}]}]},
                "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}
            })));
            endpoints.push(json!({
                "addresses": [ip],
                "conditions": {"ready": true, "serving": true, "terminating": false},
                "nodeName": format!("node-{}", i % 3),
                "targetRef": {"kind": "Pod", "namespace": ns, "name": name}
            }));
        }
        services.push(kube::<Service>(json!({
            "metadata": {"namespace": ns, "name": "app"},
            "spec": {"type": "ClusterIP", "clusterIP": format!("198.19.{}.{}", n / 200, n % 200 + 10),
                     "selector": {"app": "app"},
                     "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]}
        })));
        slices.push(kube::<EndpointSlice>(json!({
            "metadata": {"namespace": ns, "name": "app-x7k2p", "labels": {
                "kubernetes.io/service-name": "app",
                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}},
            "addressType": "IPv4",
            "endpoints": endpoints,
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]
        })));
    }
    MeshView {
        trust_domain: TRUST_DOMAIN.into(),
        root_namespace: OPERATOR_NAMESPACE.into(),
        cluster_domain: "cluster.local".into(),
        pods,
        services,
        slices,
        virtual_services: vec![kube::<VirtualService>(json!({
            "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"namespace": namespace_name(0), "name": "app"},
            "spec": {"hosts": ["app"], "http": [{"route": [
                {"destination": {"host": "app"}, "weight": weight},
                {"destination": {"host": format!("app.{}.svc.cluster.local", namespace_name(1))},
                 "weight": 100 - weight}]}]}
        }))],
        revisions: vec![kube::<MeshConfig>(json!({
            "apiVersion": "mesh.weft.dev/v1alpha1", "kind": "MeshConfig",
            "metadata": {"namespace": OPERATOR_NAMESPACE, "name": "stable"},
            "spec": {"mtls": {"mode": "STRICT"}}
        }))],
        ..Default::default()
    }
}

/// Evaluations timed together per sample: one call is a few hundred nanoseconds, too short
/// for a clock read each.
const AUTHZ_BATCH: usize = 100;

/// Policy evaluation per request (issue 18's ≤ 1 µs median for 10 policies of 10 rules): a
/// DENY and 9 ALLOW policies, each rule a principal, a method and a path prefix, against a
/// request that only the last rule of the last policy allows, so every rule is tried.
fn authz(seconds: Duration) -> serde_json::Value {
    use weft::authz::istio::{AuthorizationPolicySpec, compile};
    use weft::authz::{Http, Prefilter, Request, Verdict, evaluate, evaluate_prefiltered};
    let policy = |name: &str, action: &str, n: usize| {
        let rules: Vec<serde_json::Value> = (0..10)
            .map(|r| {
                json!({"from": [{"source": {"principals": [format!("cluster.local/ns/ns{n}/sa/sa{r}")]}}],
                       "to": [{"operation": {"methods": ["GET", "POST"], "paths": [format!("/api/v{r}/*")]}}]})
            })
            .collect();
        let spec: AuthorizationPolicySpec =
            serde_json::from_value(json!({"action": action, "rules": rules})).expect("a spec");
        compile("bench", name, &spec, &Default::default()).expect("compiles")
    };
    let mut policies = vec![policy("deny", "DENY", 99)];
    policies.extend((0..9).map(|n| policy(&format!("allow-{n}"), "ALLOW", n)));
    let headers: Vec<(String, String)> = vec![("user-agent".into(), "bench".into())];
    let request = Request {
        principal: Some("cluster.local/ns/ns8/sa/sa9"),
        source_ip: [198, 18, 0, 4].into(),
        remote_ip: [198, 18, 0, 4].into(),
        destination_ip: [198, 18, 0, 5].into(),
        destination_port: 8080,
        sni: None,
        http: Some(Http {
            method: "POST",
            host: "api.bench.svc.cluster.local",
            path: "/api/v9/charges",
            headers: &headers,
        }),
    };
    // As the proxy evaluates (src/proxy/http/inbound.rs): with the policy set's prefilter,
    // made once per config; and the plain evaluator (`weft authz explain`'s) beside it.
    let prefilter = Prefilter::new(&policies);
    let decision = evaluate(&policies, &request);
    assert_eq!(decision.verdict, Verdict::Allow);
    assert_eq!(
        evaluate_prefiltered(&prefilter, &policies, &request),
        decision
    );
    let m = measure(Duration::from_millis(300), seconds, |_| {
        for _ in 0..AUTHZ_BATCH {
            std::hint::black_box(evaluate_prefiltered(
                std::hint::black_box(&prefilter),
                std::hint::black_box(&policies),
                std::hint::black_box(&request),
            ));
        }
    });
    let full = measure(Duration::from_millis(300), seconds, |_| {
        for _ in 0..AUTHZ_BATCH {
            std::hint::black_box(evaluate(
                std::hint::black_box(&policies),
                std::hint::black_box(&request),
            ));
        }
    });
    let per_eval = |m: &Measured, p: f64| round(m.percentile_ms(p) * 1e6 / AUTHZ_BATCH as f64, 1);
    json!({
        "policies": policies.len(),
        "rules": policies.iter().map(|p| p.rules.len()).sum::<usize>(),
        "evaluations": m.calls * AUTHZ_BATCH,
        "evaluations_per_s": round(m.per_second() * AUTHZ_BATCH as f64, 0),
        "p50_ns": per_eval(&m, 50.0),
        "p99_ns": per_eval(&m, 99.0),
        "without_prefilter_p50_ns": per_eval(&full, 50.0),
        "without_prefilter_p99_ns": per_eval(&full, 99.0),
        "batch": AUTHZ_BATCH,
    })
}

/// Issue 19's route table per request, as the client proxy of route.sh takes it: the
/// snapshot's Service with 20 match rules (a header each, and a path prefix from the second)
/// the request misses, then a 90/10 catch-all over two subsets; beside it the same Service
/// without routes (weft-http's client). The request is fortio's: POST /echo with its headers.
fn route_eval(seconds: Duration) -> serde_json::Value {
    use weft::route::RequestView;
    use weft::snapshot::{OutboundRoute, RequestRoute, SnapshotIndex, decode_snapshot};
    let dest = |subset: &str, weight: u32| json!({"service": "server.bench.svc.cluster.local", "port": 80, "subset": subset, "weight": weight});
    let mut routes = vec![json!({"name": "bench/nr",
        "matches": [{"headers": {"x-bench-nr": {"exact": "1"}}}], "destinations": [dest("missing", 100)]})];
    routes.extend((1..20).map(|i| {
        json!({"name": format!("bench/rule-{i}"),
        "matches": [{"uri": {"prefix": format!("/api/v{i}/")},
                     "headers": {"end-user": {"exact": format!("user-{i}")}}}],
        "destinations": [dest("v2", 100)]})
    }));
    routes.push(json!({"name": "bench/canary", "destinations": [dest("v1", 90), dest("v2", 10)]}));
    let index = |routes: Option<&Vec<serde_json::Value>>| {
        let mut service = json!({"clusterIp": "198.18.250.100", "port": 80,
            "name": "server.bench.svc.cluster.local", "protocol": "http",
            "endpoints": [{"ip": "198.18.250.2", "port": 8090, "meshed": true,
                "identity": "spiffe://cluster.local/ns/bench/sa/server", "mtlsModeForPort": "STRICT",
                "workload": {"name": "server", "namespace": "bench"}}]});
        if let Some(routes) = routes {
            service["subsets"] = json!({"v1": [0], "v2": [0]});
            service["http"] = json!(routes);
        }
        let snapshot = json!({"schemaVersion": 1, "version": "bench-client",
            "identity": "spiffe://cluster.local/ns/bench/sa/client", "trustDomain": "cluster.local",
            "workload": {"name": "client", "namespace": "bench"}, "inbound": {"defaultMode": "PERMISSIVE"},
            "outbound": {"policy": "REGISTRY_ONLY", "services": [service]}});
        SnapshotIndex::new(
            decode_snapshot(&serde_json::to_vec(&snapshot).expect("JSON"))
                .expect("a valid snapshot"),
        )
    };
    let (plain, routed) = (index(None), index(Some(&routes)));
    let mut headers = hyper::HeaderMap::new();
    for (k, v) in [
        ("host", "198.18.250.100"),
        ("user-agent", "fortio.org/fortio-1.69.5"),
        ("content-length", "1024"),
        ("content-type", "application/octet-stream"),
    ] {
        headers.insert(k, v.parse().expect("a header value"));
    }
    let dst: SocketAddr = "198.18.250.100:80".parse().expect("an address");
    // One request as the proxy routes it: the Service by address, then its table. Some(None):
    // routed as dialled (no table); Some(Some(subset)): by the table.
    fn take<'a>(
        index: &'a SnapshotIndex,
        headers: &hyper::HeaderMap,
        dst: SocketAddr,
    ) -> Option<Option<&'a str>> {
        let headers = weft::proxy::http::authz::HeaderView::new(headers);
        let view = RequestView {
            method: "POST",
            path: "/echo",
            query: None,
            port: 80,
            headers: &headers,
        };
        let OutboundRoute::Service { service, endpoints } = index.route(dst) else {
            return None;
        };
        match index.route_request(service, endpoints, &view) {
            RequestRoute::Endpoints { routed, .. } => {
                Some(routed.map(|r| r.destination.subset.as_deref().unwrap_or_default()))
            }
            _ => None,
        }
    }
    // The table is in force: the catch-all takes the request, v1 about 90 times in 100.
    let picks: Vec<Option<&str>> = (0..1000)
        .filter_map(|_| take(&routed, &headers, dst))
        .collect();
    assert_eq!(picks.len(), 1000, "every request routed");
    let v1 = picks.iter().filter(|p| **p == Some("v1")).count();
    assert!((850..=950).contains(&v1), "90/10: {v1} of 1000 to v1");
    assert_eq!(take(&plain, &headers, dst), Some(None));
    let run = |index: &SnapshotIndex| {
        measure(Duration::from_millis(300), seconds, |_| {
            for _ in 0..AUTHZ_BATCH {
                std::hint::black_box(take(std::hint::black_box(index), &headers, dst));
            }
        })
    };
    let (with, without) = (run(&routed), run(&plain));
    let per = |m: &Measured, p: f64| round(m.percentile_ms(p) * 1e6 / AUTHZ_BATCH as f64, 1);
    json!({
        "rules": routes.len(),
        "p50_ns": per(&with, 50.0),
        "p99_ns": per(&with, 99.0),
        "without_routes_p50_ns": per(&without, 50.0),
        "without_routes_p99_ns": per(&without, 99.0),
        "added_p50_ns": round(per(&with, 50.0) - per(&without, 50.0), 1),
        "added_p99_ns": round(per(&with, 99.0) - per(&without, 99.0), 1),
        "batch": AUTHZ_BATCH,
    })
}

/// One simulated proxy: its pod and a TLS client config with its own workload certificate.
struct SimulatedProxy {
    pod: String,
    /// Its pod's address, which it connects from.
    source: IpAddr,
    tls: Arc<rustls::ClientConfig>,
}

/// A key and a workload certificate per proxy, as each pod's CSR client would get them.
fn simulated_proxies(ca: &MeshCa, pods: &[(String, String, IpAddr)]) -> Vec<SimulatedProxy> {
    let mut roots = rustls::RootCertStore::empty();
    for der in certificates_from_pem(&ca.roots_pem()).expect("the root PEM") {
        roots.add(der.into()).expect("a root certificate");
    }
    let roots = Arc::new(roots);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    pods.iter()
        .map(|(ns, pod, source)| {
            let id = contract::spiffe_id(TRUST_DOMAIN, ns, "app");
            let key = WorkloadKey::generate().expect("a P-256 key");
            let issued = ca
                .sign_workload_csr(
                    &key.csr_pem(&id).expect("a CSR"),
                    &id,
                    Duration::from_secs(86_400),
                    SystemTime::now(),
                )
                .expect("the CA signs a good CSR");
            let chain: Vec<CertificateDer<'static>> = issued
                .cert_chain_pem
                .iter()
                .flat_map(|pem| certificates_from_pem(pem).expect("the chain PEM"))
                .map(CertificateDer::from)
                .collect();
            let key = PrivateKeyDer::Pkcs8(key.private_key_der().to_vec().into());
            let mut tls = rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .expect("TLS versions")
                .with_root_certificates(roots.clone())
                .with_client_auth_cert(chain, key)
                .expect("a client certificate");
            tls.alpn_protocols = vec![b"h2".to_vec()];
            SimulatedProxy {
                pod: pod.clone(),
                source: *source,
                tls: Arc::new(tls),
            }
        })
        .collect()
}

/// What a simulated proxy reports to the benchmark.
enum Heard {
    Version {
        proxy: usize,
        version: String,
        at: Instant,
        /// The line's bytes, with its newline: what the stream carried for this version.
        bytes: usize,
        delta: bool,
    },
    Failed {
        proxy: usize,
        error: String,
    },
}

/// The version of a snapshot line, read from its head (the operator writes `schemaVersion`
/// then `version` first, in a delta line too). A real proxy decodes the snapshot (or splices
/// the delta) on its own CPU; 1,000 of them doing it here would share the operator's, and
/// measure JSON parsing instead. The version is the content hash, so matching the expected
/// one proves the right snapshot arrived; that a delta rebuilds exactly the whole snapshot
/// is the unit tests' (`discovery::server`, `proxy::config_stream`).
fn version_of(line: &[u8]) -> Option<String> {
    string_at(line, b"\"version\":\"")
}

/// The string value after `key` in the line's first 256 bytes (a delta line starts with
/// `{"delta":{"base":"…","snapshot":{"schemaVersion":1,"version":"…"`).
fn string_at(line: &[u8], key: &[u8]) -> Option<String> {
    let head = &line[..line.len().min(256)];
    let start = head.windows(key.len()).position(|w| w == key)? + key.len();
    let len = head[start..].iter().position(|&b| b == b'"')?;
    String::from_utf8(head[start..start + len].to_vec()).ok()
}

async fn simulated_proxy(
    proxy: usize,
    sim: SimulatedProxy,
    addr: SocketAddr,
    gate: Arc<Semaphore>,
    heard: mpsc::Sender<Heard>,
) {
    if let Err(error) = follow_config(proxy, sim, addr, gate, &heard).await {
        let _ = heard.send(Heard::Failed { proxy, error });
    }
}

/// What `weft::proxy::config_stream` does on the wire: mTLS with the workload certificate,
/// HTTP/2, `GET /v1/config/stream?pod=…`, newline-delimited snapshots, and an ack
/// (`POST /v1/config/ack` on the same connection) for every one.
async fn follow_config(
    proxy: usize,
    sim: SimulatedProxy,
    addr: SocketAddr,
    gate: Arc<Semaphore>,
    heard: &mpsc::Sender<Heard>,
) -> Result<(), String> {
    let opening = gate.acquire_owned().await.map_err(|e| e.to_string())?;
    let socket = tokio::net::TcpSocket::new_v4().map_err(|e| format!("socket: {e}"))?;
    socket
        .bind(SocketAddr::new(sim.source, 0))
        .map_err(|e| format!("bind {}: {e}", sim.source))?;
    let tcp = socket
        .connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    tcp.set_nodelay(true).map_err(|e| e.to_string())?;
    let name = ServerName::try_from(OPERATOR_SERVER_NAME).map_err(|e| e.to_string())?;
    let tls = tokio_rustls::TlsConnector::from(sim.tls)
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .handshake::<_, Body>(TokioIo::new(tls))
        .await
        .map_err(|e| format!("HTTP/2: {e}"))?;
    tokio::spawn(conn);
    let uri = format!(
        "https://{OPERATOR_SERVER_NAME}{}?{QUERY_POD}={}&{QUERY_DELTA}=1&{QUERY_FEATURES}={}",
        contract::PATH_CONFIG_STREAM,
        sim.pod,
        weft::snapshot::compat::Features::all().query_value()
    );
    let request = Request::get(uri)
        .body(Body::empty())
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("stream request: {e}"))?;
    drop(opening);
    if response.status() != StatusCode::OK {
        let status = response.status();
        let body = axum::body::to_bytes(Body::new(response.into_body()), 64 * 1024)
            .await
            .unwrap_or_default();
        return Err(format!("{status}: {}", String::from_utf8_lossy(&body)));
    }
    let mut body = Body::new(response.into_body()).into_data_stream();
    let mut lines = LineDecoder::default();
    let mut running: Option<String> = None;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| format!("stream broke: {e}"))?;
        for line in lines.push(&chunk).map_err(|e| e.to_string())? {
            let at = Instant::now();
            let version = version_of(&line).ok_or("a snapshot line without a version")?;
            // A delta applies only onto the version this proxy runs (weft-proxy would reopen
            // the stream otherwise): the bench fails rather than count a line no proxy could use.
            let delta = line.starts_with(DELTA_PREFIX);
            if delta && string_at(&line, b"\"base\":\"") != running {
                return Err(format!(
                    "a delta onto {:?}, but this proxy runs {running:?}",
                    string_at(&line, b"\"base\":\"")
                ));
            }
            running = Some(version.clone());
            let ack = Ack {
                pod: sim.pod.clone(),
                version: Some(version.clone()),
                rejected: None,
            };
            let _ = heard.send(Heard::Version {
                proxy,
                version,
                at,
                bytes: line.len() + 1,
                delta,
            });
            let ack = Request::post(format!(
                "https://{OPERATOR_SERVER_NAME}{}",
                contract::PATH_CONFIG_ACK
            ))
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Body::from(
                serde_json::to_vec(&ack).map_err(|e| e.to_string())?,
            ))
            .map_err(|e| e.to_string())?;
            let mut sender = sender.clone();
            tokio::spawn(async move {
                let _ = sender.send_request(ack).await;
            });
        }
    }
    Err("stream ended".into())
}

fn kib_per(bytes: isize, proxies: usize) -> f64 {
    round(bytes as f64 / 1024.0 / proxies.max(1) as f64, 1)
}

fn convergence() -> serde_json::Value {
    let started = Instant::now();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let operator_rt = runtime(SIDE_OPERATOR, "operator");
    let proxies_rt = runtime(SIDE_PROXIES, "proxies");

    // The mesh and the proxies' certificates (setup, not counted on either side).
    let ca = Arc::new(
        MeshCa::generate_root(TRUST_DOMAIN, Duration::from_secs(365 * 86_400)).expect("a root CA"),
    );
    let index = Arc::new(MeshIndex::build(&mesh_view(PODS_PER_NAMESPACE)));
    let pods: Vec<(String, String, IpAddr)> = (0..NAMESPACES)
        .flat_map(|n| {
            (0..PODS_PER_NAMESPACE).map(move |i| (namespace_name(n), pod_name(i), pod_ip(n, i)))
        })
        .collect();
    let snapshot_bytes = index
        .snapshot_for(&pods[0].0, &pods[0].1)
        .expect("a meshed pod")
        .1
        .len();
    let endpoints: usize = index.services().iter().map(|s| s.endpoints.len()).sum();
    let services = index.services().len();
    let sims = simulated_proxies(&ca, &pods);

    // The operator side: the config routes behind the operator's TLS accept loop, as
    // `weft operator` serves them on 15012 (client certificates checked against the mesh
    // roots, the proven SPIFFE ID handed to the handlers).
    let (_ca_tx, ca_rx) = watch::channel(Some(ca.clone()));
    let resolver = Arc::new(ServingCertResolver::default());
    operator_rt.spawn(keep_serving_cert(
        resolver.clone(),
        ca_rx.clone(),
        OPERATOR_NAMESPACE.into(),
    ));
    let (index_tx, index_rx) = watch::channel(index.clone());
    let state = DiscoveryState::from_index(
        index_rx,
        DiscoverySettings {
            trust_domain: TRUST_DOMAIN.into(),
            operator_namespace: OPERATOR_NAMESPACE.into(),
            root_namespace: OPERATOR_NAMESPACE.into(),
            cluster_domain: "cluster.local".into(),
        },
        Arc::new(OperatorMetrics::new()),
    );
    let listener = operator_rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("a listening socket on 127.0.0.1");
    let addr = listener.local_addr().expect("the listener's address");
    operator_rt.spawn(serve_tls_on(
        listener,
        resolver.clone(),
        weft::discovery::server::router(state.clone()),
        Some(ca_rx),
    ));
    let waiting = Instant::now();
    while !resolver.is_loaded() {
        assert!(
            waiting.elapsed() < Duration::from_secs(5),
            "no serving certificate"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(SETTLE);
    let rss_before = rss_kb();
    let (operator_before, proxies_before) = (live(SIDE_OPERATOR), live(SIDE_PROXIES));

    // Every proxy opens its stream and gets its first snapshot.
    let (heard_tx, heard) = mpsc::channel();
    let opened = Instant::now();
    proxies_rt.spawn(async move {
        let gate = Arc::new(Semaphore::new(CONNECT_CONCURRENCY));
        for (proxy, sim) in sims.into_iter().enumerate() {
            tokio::spawn(simulated_proxy(
                proxy,
                sim,
                addr,
                gate.clone(),
                heard_tx.clone(),
            ));
        }
    });
    let mut first: Vec<Option<String>> = vec![None; PROXIES];
    let mut failures: Vec<String> = Vec::new();
    let mut synced = 0;
    while synced + failures.len() < PROXIES {
        let left = SYNC_TIMEOUT.saturating_sub(opened.elapsed());
        match heard.recv_timeout(left) {
            Ok(Heard::Version { proxy, version, .. }) => {
                if first[proxy].is_none() {
                    first[proxy] = Some(version);
                    synced += 1;
                }
            }
            Ok(Heard::Failed { proxy, error }) => {
                failures.push(format!("{}: {error}", pods[proxy].1))
            }
            Err(_) => break,
        }
    }
    let initial_sync = opened.elapsed();
    std::thread::sleep(SETTLE);
    let rss_synced = rss_kb();
    let (operator_synced, proxies_synced) = (live(SIDE_OPERATOR), live(SIDE_PROXIES));

    // Two changes, one after the other: shop-000 scales up by one pod (every proxy gets every
    // ClusterIP Service, so the new endpoint moves every version), then its VirtualService's
    // weight moves (exported everywhere: every version moves again).
    let mut running = first;
    let scale = change(
        &weighted_mesh_view(PODS_PER_NAMESPACE + 1, WEIGHT_BEFORE),
        &pods,
        &index_tx,
        &heard,
        &mut running,
        &mut failures,
    );
    let rss_changed = rss_kb();
    let operator_changed = live(SIDE_OPERATOR);
    let weight = change(
        &weighted_mesh_view(PODS_PER_NAMESPACE + 1, WEIGHT_AFTER),
        &pods,
        &index_tx,
        &heard,
        &mut running,
        &mut failures,
    );

    // The operator's own record: connected proxies and what they acknowledged.
    let listed = state.proxies("bench");
    let acked = listed
        .proxies
        .iter()
        .filter(|p| p.acked.is_some() && p.acked == p.current)
        .count();
    proxies_rt.shutdown_background();
    operator_rt.shutdown_background();
    // `scale` and `weight` hold the replaced indexes until here: freed on this thread.

    failures.truncate(5);
    let m = &scale.measured;
    json!({
        "proxies": PROXIES,
        "namespaces": NAMESPACES,
        "pods_per_namespace": PODS_PER_NAMESPACE,
        "services": services,
        "endpoints": endpoints,
        "snapshot_bytes": snapshot_bytes,
        "bytes_per_proxy_per_change": {
            "scale": scale.bytes_json(),
            "weight": weight.bytes_json(),
            "whole_snapshot": snapshot_bytes,
        },
        "synced": synced,
        "initial_sync_ms": round(initial_sync.as_secs_f64() * 1e3, 1),
        "change": "Deployment app in shop-000 scaled 10 → 11: a new meshed pod and a new ready endpoint in Service app.shop-000",
        "index_build_ms": round(scale.index_build.as_secs_f64() * 1e3, 2),
        "serialize_all_snapshots_ms": round(scale.serialize_all.as_secs_f64() * 1e3, 1),
        "concerned": scale.concerned,
        "converged": m.calls,
        "unexpected_snapshots": scale.unexpected,
        "p50_ms": round(m.percentile_ms(50.0), 2),
        "p90_ms": round(m.percentile_ms(90.0), 2),
        "p99_ms": round(m.percentile_ms(99.0), 2),
        "max_ms": round(m.percentile_ms(100.0), 2),
        "cpu_ms_during_change": {"operator": scale.cpu.0, "proxies": scale.cpu.1},
        "weight_change": weight.to_json(&format!(
            "VirtualService shop-000/app (exported to every namespace) moves app's weight {WEIGHT_BEFORE}/{} → {WEIGHT_AFTER}/{} between app.shop-000 and app.shop-001",
            100 - WEIGHT_BEFORE,
            100 - WEIGHT_AFTER
        )),
        "connected_at_end": listed.proxies.len(),
        "acked_current": acked,
        "failures": failures,
        "memory": {
            "rss_before_mb": round(rss_before as f64 / 1024.0, 1),
            "rss_synced_mb": round(rss_synced as f64 / 1024.0, 1),
            "rss_after_change_mb": round(rss_changed as f64 / 1024.0, 1),
            "rss_kb_per_proxy_both_sides": round((rss_synced - rss_before) as f64 / synced.max(1) as f64, 1),
            "operator_heap_kb_per_proxy": kib_per(operator_synced - operator_before, synced),
            "operator_heap_kb_per_proxy_after_change": kib_per(operator_changed - operator_before, synced),
            "operator_heap_peak_kb_per_proxy_during_change": kib_per(scale.operator_peak - operator_before, synced),
            "proxies_heap_kb_per_proxy": kib_per(proxies_synced - proxies_before, synced),
            "proxies_heap_peak_kb_per_proxy_during_change": kib_per(scale.proxies_peak - proxies_before, synced),
        },
        "operator_threads": 1,
        "proxy_threads": 1,
        "seconds": round(started.elapsed().as_secs_f64(), 2),
        "note": "One process: the operator (weft::discovery::server::router behind weft::operator::serving::serve_tls_on, mTLS on 127.0.0.1, fed by DiscoveryState::from_index) on one tokio worker thread, the simulated proxies (rustls + hyper HTTP/2, one workload certificate each, asking for deltas with delta=1 and acking as weft-proxy does, lines framed with weft's LineDecoder and read for their version and delta base only: decoding 1,000 of them would load the shared CPU with the proxies' work; a delta onto a version the proxy does not run fails the run) on another; pinned to one CPU they share it. Convergence: from publishing the new MeshIndex to a proxy holding the new version's line (a delta after the first line); the operator's debounce (100 ms) and MeshIndex::build (index_build_ms) come before that in a cluster. bytes_per_proxy_per_change: the bytes of the lines each concerned stream received for the change (JSON with newline; HTTP/2 and TLS framing not counted), mean and max; whole_snapshot: one whole line for comparison (what a proxy without delta=1 receives per change). serialize_all_snapshots_ms: MeshIndex::snapshot_for for every proxy once on one thread (whole snapshots); cpu_ms_during_change: CPU of each side's threads from publication to the last arrival (10 ms ticks). RSS per proxy covers both sides; the operator heap figures are the live bytes allocated by the operator's threads (a counting global allocator), before the streams vs after all are synced, per proxy, without allocator overhead."
    })
}

/// One change as the streams saw it.
struct Change {
    concerned: usize,
    measured: Measured,
    unexpected: usize,
    /// Per concerned proxy that converged: the bytes of the lines it received for the change.
    bytes: Vec<usize>,
    deltas: usize,
    wholes: usize,
    index_build: Duration,
    serialize_all: Duration,
    cpu: (f64, f64),
    operator_peak: isize,
    proxies_peak: isize,
    /// The index replaced, held so it is not freed on an operator thread.
    _previous: Arc<MeshIndex>,
}

impl Change {
    fn bytes_json(&self) -> serde_json::Value {
        let mean = self.bytes.iter().sum::<usize>() as f64 / self.bytes.len().max(1) as f64;
        json!({
            "mean": round(mean, 1),
            "max": self.bytes.iter().max().copied().unwrap_or(0),
            "delta_lines": self.deltas,
            "whole_lines": self.wholes,
        })
    }

    fn to_json(&self, what: &str) -> serde_json::Value {
        let m = &self.measured;
        json!({
            "change": what,
            "index_build_ms": round(self.index_build.as_secs_f64() * 1e3, 2),
            "concerned": self.concerned,
            "converged": m.calls,
            "unexpected_snapshots": self.unexpected,
            "p50_ms": round(m.percentile_ms(50.0), 2),
            "p90_ms": round(m.percentile_ms(90.0), 2),
            "p99_ms": round(m.percentile_ms(99.0), 2),
            "max_ms": round(m.percentile_ms(100.0), 2),
            "cpu_ms_during_change": {"operator": self.cpu.0, "proxies": self.cpu.1},
            "bytes_per_proxy": self.bytes_json(),
        })
    }
}

/// Publishes the index of `view` and waits for every stream whose version it moves.
fn change(
    view: &MeshView,
    pods: &[(String, String, IpAddr)],
    index_tx: &watch::Sender<Arc<MeshIndex>>,
    heard: &mpsc::Receiver<Heard>,
    running: &mut [Option<String>],
    failures: &mut Vec<String>,
) -> Change {
    let building = Instant::now();
    let changed = Arc::new(MeshIndex::build(view));
    let index_build = building.elapsed();
    // What the operator's stream tasks will do, once, on this thread: every proxy's snapshot.
    let serializing = Instant::now();
    let expected: Vec<Option<String>> = pods
        .iter()
        .map(|(ns, pod, _)| changed.snapshot_for(ns, pod).ok().map(|(v, _)| v))
        .collect();
    let serialize_all = serializing.elapsed();
    let concerned: HashSet<usize> = (0..pods.len())
        .filter(|&i| running[i].is_some() && expected[i] != running[i])
        .collect();
    PEAK[SIDE_OPERATOR].store(live(SIDE_OPERATOR), Ordering::Relaxed);
    PEAK[SIDE_PROXIES].store(live(SIDE_PROXIES), Ordering::Relaxed);
    let cpu_before = (thread_cpu_ms("operator"), thread_cpu_ms("proxies"));
    let published = Instant::now();
    let previous = index_tx.send_replace(changed);
    let mut pending = concerned.clone();
    let mut nanos = Vec::with_capacity(concerned.len());
    let mut received = vec![0usize; pods.len()];
    let (mut unexpected, mut deltas, mut wholes) = (0, 0, 0);
    let mut heard_one = |proxy: usize, version: String, bytes: usize, delta: bool| {
        received[proxy] += bytes;
        if delta {
            deltas += 1;
        } else {
            wholes += 1;
        }
        running[proxy] = Some(version);
    };
    while !pending.is_empty() {
        let left = CONVERGE_TIMEOUT.saturating_sub(published.elapsed());
        match heard.recv_timeout(left) {
            Ok(Heard::Version {
                proxy,
                version,
                at,
                bytes,
                delta,
            }) => {
                if expected[proxy].as_ref() == Some(&version) && pending.remove(&proxy) {
                    nanos.push(at.duration_since(published).as_nanos() as u64);
                } else {
                    unexpected += 1;
                }
                heard_one(proxy, version, bytes, delta);
            }
            Ok(Heard::Failed { proxy, error }) => {
                pending.remove(&proxy);
                failures.push(format!("{}: {error}", pods[proxy].1));
            }
            Err(_) => break,
        }
    }
    let converged = published.elapsed();
    let cpu = (
        thread_cpu_ms("operator") - cpu_before.0,
        thread_cpu_ms("proxies") - cpu_before.1,
    );
    let operator_peak = PEAK[SIDE_OPERATOR].load(Ordering::Relaxed);
    let proxies_peak = PEAK[SIDE_PROXIES].load(Ordering::Relaxed);
    std::thread::sleep(SETTLE);
    while let Ok(Heard::Version {
        proxy,
        version,
        bytes,
        delta,
        ..
    }) = heard.try_recv()
    {
        unexpected += 1;
        heard_one(proxy, version, bytes, delta);
    }
    let bytes = concerned
        .iter()
        .filter(|&&p| !pending.contains(&p))
        .map(|&p| received[p])
        .collect();
    nanos.sort_unstable();
    Change {
        concerned: concerned.len(),
        measured: Measured {
            calls: nanos.len(),
            elapsed: converged,
            nanos,
        },
        unexpected,
        bytes,
        deltas,
        wholes,
        index_build,
        serialize_all,
        cpu,
        operator_peak,
        proxies_peak,
        _previous: previous,
    }
}

fn main() {
    let mut seconds = 5.0f64;
    let mut out = None;
    let mut only: Option<String> = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--seconds" => {
                seconds = args
                    .next()
                    .and_then(|s| s.parse().ok())
                    .expect("--seconds takes a number");
            }
            "--out" => out = args.next(),
            // One section only (e.g. `--only served`), to measure one part on its own.
            "--only" => only = args.next(),
            // `cargo bench` passes `--bench`; anything else is a filter we do not use.
            _ => {}
        }
    }
    let seconds = Duration::from_secs_f64(seconds);
    let cpu = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("Cpus_allowed_list:")
                    .map(|v| v.trim().to_string())
            })
        })
        .unwrap_or_default();
    let want = |section: &str| only.as_deref().is_none_or(|o| o == section);
    let mut result = json!({ "threads": 1, "cpus_allowed": cpu });
    let sections: [(&str, &dyn Fn() -> serde_json::Value); 6] = [
        ("webhook", &|| webhook(seconds)),
        ("csr", &|| csr(seconds)),
        ("convergence", &convergence),
        ("authz", &|| authz(seconds)),
        ("route_eval", &|| route_eval(seconds)),
        ("served", &|| served::served(seconds)),
    ];
    for (name, run) in sections {
        if want(name) {
            result[name] = run();
        }
    }
    let text = serde_json::to_string_pretty(&result).expect("JSON");
    println!("{text}");
    if let Some(path) = out {
        std::fs::write(&path, format!("{text}\n")).unwrap_or_else(|e| panic!("{path}: {e}"));
    }
}
