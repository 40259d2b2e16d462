//! Control-plane micro-benchmarks for `make bench` (SPEC §14): admission reviews handled by
//! the injector's pure core (`weft::webhook::review`) and workload CSRs signed by the mesh CA
//! (`MeshCa::sign_workload_csr`), each in a loop on the calling thread, so the rates are per
//! core when the process is pinned to one CPU (`e2e/bench/run.sh` pins it with taskset).
//!
//! The review is the golden case `webhook/cases/probes-http-tcp-grpc`: a Deployment's pod
//! with three containers' worth of probes in a namespace with `istio-injection=enabled`, so
//! every call decides, injects and rewrites probes. HTTP and TLS around the handler are not
//! measured here.
//!
//! `cargo bench --bench control_plane -- [--seconds N] [--out FILE]` prints one JSON object
//! (and writes it to FILE). It reports and never asserts on speed.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use k8s_openapi::api::core::v1::Namespace;
use serde::Deserialize;
use serde_json::json;
use weft::pki::{MeshCa, WorkloadKey};
use weft::webhook::{InjectorSettings, MeshState, review};

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

fn main() {
    let mut seconds = 5.0f64;
    let mut out = None;
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
    let result = json!({
        "threads": 1,
        "cpus_allowed": cpu,
        "webhook": webhook(seconds),
        "csr": csr(seconds),
    });
    let text = serde_json::to_string_pretty(&result).expect("JSON");
    println!("{text}");
    if let Some(path) = out {
        std::fs::write(&path, format!("{text}\n")).unwrap_or_else(|e| panic!("{path}: {e}"));
    }
}
