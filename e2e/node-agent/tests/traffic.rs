//! Traffic management on the cluster, as the seeds print it: seed 003's DestinationRule
//! subsets and 90/10 VirtualService for reviews v1/v2, then 100/0 draining v2; seed 000's SMI
//! TrafficSplit of the bookstore 80/20. The client is a meshed curl pod; each version of the
//! echo app answers with its version first, so the share is counted from real responses that
//! went through the client's proxy (which picks the destination per request).

mod support;

use std::time::Duration;

use support::{CURL_CLIENT, Namespace, wait_for, weft};

/// Requests per measurement (issue 19: at least 1,000).
const SAMPLE: usize = 1000;
/// Allowed distance of a measured share from its weight, in percentage points.
const TOLERANCE: f64 = 3.0;

/// One version of an app: the echo app answering `<version> from <pod> ...` on `port`.
fn version(app: &str, version: &str, port: u16) -> String {
    format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {app}-{version}}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: {app}, version: {version}}}}}
  template:
    metadata: {{labels: {{app: {app}, version: {version}}}}}
    spec:
      containers:
      - name: app
        image: weft.dev/echo:dev
        ports: [{{containerPort: {port}}}]
        env:
        - {{name: PORT, value: "{port}"}}
        - {{name: MESSAGE, value: {version}}}
        - {{name: POD_NAME, valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}}}
        readinessProbe: {{httpGet: {{path: /healthz, port: {port}}}, periodSeconds: 1}}
"#
    )
}

/// `n` requests to `url` from the client in one exec (curl's URL range `?n=[1-n]`, one
/// connection kept alive), each answer's first word: the version that served it.
fn bodies(ns: &Namespace, url: &str, n: usize) -> Vec<String> {
    bodies_with(ns, url, n, &[])
}

/// The share of `want` among `answers`, in percent, after checking that all `sent` requests
/// were answered by a version.
fn share(answers: &[String], sent: usize, want: &str, versions: &[&str]) -> f64 {
    assert!(
        answers.len() == sent,
        "{} answers of {sent}: {:?}",
        answers.len(),
        &answers[answers.len().saturating_sub(5)..]
    );
    let strangers: Vec<&String> = answers
        .iter()
        .filter(|a| !versions.contains(&a.as_str()))
        .collect();
    assert!(
        strangers.is_empty(),
        "answers not from a version: {strangers:?}"
    );
    let hits = answers.iter().filter(|a| *a == want).count();
    100.0 * hits as f64 / answers.len() as f64
}

/// Waits until `check` holds for a batch of 20 answers (the new config reached the client).
fn converged(ns: &Namespace, url: &str, what: &str, check: impl Fn(&[String]) -> bool) {
    wait_for(
        Duration::from_secs(60),
        || {
            let batch = bodies(ns, url, 20);
            if check(&batch) {
                format!("ok {what}")
            } else {
                format!("{what}: {batch:?}")
            }
        },
        |s| s.starts_with("ok "),
    );
}

/// Seed 003, section 5, verbatim.
const SEED_003_ROUTING: &str = r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: reviews
  namespace: payments
spec:
  host: reviews
  subsets:
  - name: v1
    labels:
      version: v1
  - name: v2
    labels:
      version: v2
  trafficPolicy:
    tls:
      mode: ISTIO_MUTUAL   # use mesh-issued mTLS to the upstream
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
  namespace: payments
spec:
  hosts:
  - reviews
  http:
  - route:
    - destination:
        host: reviews
        subset: v1
      weight: 90
    - destination:
        host: reviews
        subset: v2
      weight: 10
"#;

/// The same VirtualService with other weights.
fn reviews_weights(v1: u32, v2: u32) -> String {
    let seed_vs = SEED_003_ROUTING
        .split("\n---\n")
        .nth(1)
        .expect("the seed's VirtualService");
    // v2's line first: "weight: 10" is also the start of a new "weight: 100".
    seed_vs
        .replace("weight: 10", &format!("weight: {v2}"))
        .replace("weight: 90", &format!("weight: {v1}"))
}

#[test]
fn seed_003_reviews_canary_90_10_then_100_0_drains_v2() {
    let c = support::deployed();
    let ns = c.namespace("payments");
    ns.enrol();
    ns.apply(&version("reviews", "v1", 9080));
    ns.apply(&version("reviews", "v2", 9080));
    ns.apply(
        r#"
apiVersion: v1
kind: Service
metadata: {name: reviews, labels: {app: reviews}}
spec:
  selector: {app: reviews}
  ports: [{name: http, port: 9080}]
"#,
    );
    ns.apply(CURL_CLIENT);
    ns.rolled_out(&["reviews-v1", "reviews-v2"]);
    let url = "http://reviews:9080/";
    // Round robin first: both versions answer.
    converged(&ns, url, "both versions before routing", |b| {
        b.iter().any(|v| v == "v1") && b.iter().any(|v| v == "v2")
    });
    // The subsets, then 100/0, so the first v2 after the seed's 90/10 proves that config
    // arrived.
    ns.apply(
        SEED_003_ROUTING
            .split("\n---\n")
            .next()
            .expect("the DestinationRule"),
    );
    ns.apply(&reviews_weights(100, 0));
    converged(&ns, url, "only v1 under 100/0", |b| {
        b.iter().all(|v| v == "v1")
    });
    ns.apply(SEED_003_ROUTING);
    wait_for(
        Duration::from_secs(60),
        || bodies(&ns, url, 50).join(" "),
        |b| b.contains("v2"),
    );
    let answers = bodies(&ns, url, SAMPLE);
    let v2 = share(&answers, SAMPLE, "v2", &["v1", "v2"]);
    assert!(
        (v2 - 10.0).abs() <= TOLERANCE,
        "v2 got {v2:.1}% of {} requests under 90/10",
        answers.len()
    );
    eprintln!(
        "seed 003 90/10: v2 share {v2:.1}% over {} requests",
        answers.len()
    );
    // Nothing was reported about the seed's resources (ISTIO_MUTUAL is weft's default, and the
    // subsets existed before any route named them).
    let events = ns.ok(&[
        "get",
        "events",
        "--field-selector",
        "reason=PolicyNotApplied",
        "-o",
        "name",
    ]);
    assert!(events.trim().is_empty(), "unexpected warnings: {events}");

    // Moving every weight to v1 drains v2.
    ns.apply(&reviews_weights(100, 0));
    converged(&ns, url, "v2 drained", |b| b.iter().all(|v| v == "v1"));
    let answers = bodies(&ns, url, 200);
    assert_eq!(share(&answers, 200, "v2", &["v1", "v2"]), 0.0);
}

#[test]
fn seed_000_traffic_split_sends_80_20_to_the_bookstore_versions() {
    let c = support::deployed();
    let ns = c.namespace("bookstore");
    ns.enrol();
    ns.apply(&version("bookstore", "v1", 14001));
    ns.apply(&version("bookstore", "v2", 14001));
    // The root Service and bookstore-v1 as the seed implies them; bookstore-v2 verbatim.
    ns.apply(
        r#"
apiVersion: v1
kind: Service
metadata: {name: bookstore, namespace: bookstore}
spec:
  selector: {app: bookstore}
  ports: [{port: 14001}]
---
apiVersion: v1
kind: Service
metadata: {name: bookstore-v1, namespace: bookstore}
spec:
  selector: {app: bookstore, version: v1}
  ports: [{port: 14001}]
---
# bookstore-v2.yaml
# Version 2 of the bookstore service
apiVersion: v1
kind: Service
metadata:
  name: bookstore-v2
  namespace: bookstore
spec:
  selector:
    app: bookstore
    version: v2
  ports:
    - port: 14001
"#,
    );
    ns.apply(CURL_CLIENT);
    ns.rolled_out(&["bookstore-v1", "bookstore-v2"]);
    let url = "http://bookstore:14001/";
    converged(&ns, url, "both versions before the split", |b| {
        b.iter().any(|v| v == "v1") && b.iter().any(|v| v == "v2")
    });
    ns.apply(
        r#"
# traffic-split.yaml
# Split traffic between two versions of the bookstore
apiVersion: split.smi-spec.io/v1alpha2
kind: TrafficSplit
metadata:
  name: bookstore-split
  namespace: bookstore
spec:
  # The root service that receives traffic
  service: bookstore
  backends:
    # Send 80% of traffic to v1
    - service: bookstore-v1
      weight: 80
    # Send 20% of traffic to v2
    - service: bookstore-v2
      weight: 20
"#,
    );
    // Round robin is 50/50: wait until a batch of 100 looks split (v1 >= 70%), then measure.
    wait_for(
        Duration::from_secs(60),
        || {
            let b = bodies(&ns, url, 100);
            format!("{}", b.iter().filter(|v| *v == "v1").count())
        },
        |v1| v1.parse::<usize>().is_ok_and(|n| n >= 70),
    );
    let answers = bodies(&ns, url, SAMPLE);
    let v2 = share(&answers, SAMPLE, "v2", &["v1", "v2"]);
    assert!(
        (v2 - 20.0).abs() <= TOLERANCE,
        "bookstore-v2 got {v2:.1}% of {} requests under 80/20",
        answers.len()
    );
    eprintln!(
        "seed 000 80/20: v2 share {v2:.1}% over {} requests",
        answers.len()
    );
}

/// `n` requests with extra curl arguments (a header), each answer's first word. A newline is
/// written after each answer, as the proxy's own answers (`fault filter abort`) end without one.
fn bodies_with(ns: &Namespace, url: &str, n: usize, extra: &[&str]) -> Vec<String> {
    answers_with(ns, url, n, extra, |l| {
        l.split_whitespace().next().unwrap_or_default().to_string()
    })
}

/// `n` requests with extra curl arguments, `pick` applied to each answer's line; curl's own
/// errors follow as `error: ...`.
fn answers_with(
    ns: &Namespace,
    url: &str,
    n: usize,
    extra: &[&str],
    pick: impl Fn(&str) -> String,
) -> Vec<String> {
    let mut args = vec!["-w", "\n"];
    args.extend_from_slice(extra);
    let out = curl_range(ns, url, n, &args);
    let mut answers: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(pick)
        .collect();
    answers.extend(
        String::from_utf8_lossy(&out.stderr)
            .lines()
            .map(|l| format!("error: {l}")),
    );
    answers
}

/// `n` requests to `url` from the client pod in one curl (its URL range `?n=[1-n]`, one
/// connection kept alive), with curl arguments `args`.
fn curl_range(ns: &Namespace, url: &str, n: usize, args: &[&str]) -> std::process::Output {
    let target = format!("{url}?n=[1-{n}]");
    let mut argv = vec![
        "exec",
        "client",
        "-c",
        "client",
        "--",
        "curl",
        "-sS",
        "--max-time",
        "120",
    ];
    argv.extend_from_slice(args);
    argv.push(&target);
    ns.kubectl(&argv)
}

/// `n` requests, each answer's status code (curl's `%{http_code}`; `000` when none came).
fn codes(ns: &Namespace, url: &str, n: usize) -> Vec<String> {
    let out = curl_range(ns, url, n, &["-o", "/dev/null", "-w", "%{http_code}\n"]);
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

fn count(answers: &[String], word: &str) -> usize {
    answers.iter().filter(|a| *a == word).count()
}

/// Issue 19's route actions with Istio's YAML: a header match sends one user to v2, a 50%
/// fault abort fails about half the requests, retries hide a backend that fails every second
/// request (and `attempts: 0` shows it), and a DestinationRule that turns mTLS off against a
/// STRICT namespace gives 503 `UC` while `weft check` names both resources.
#[test]
fn header_match_fault_abort_retries_and_a_tls_disable_rule_against_strict() {
    let c = support::deployed();
    let ns = c.namespace("shop");
    ns.enrol();
    ns.apply(&version("reviews", "v1", 9080));
    ns.apply(&version("reviews", "v2", 9080));
    // A backend whose every second answer is 503.
    ns.apply(&version("flaky", "v1", 9080).replace(
        "        - {name: MESSAGE, value: v1}",
        "        - {name: MESSAGE, value: v1}\n        - {name: FAIL_EVERY, value: \"2\"}",
    ));
    ns.apply(
        r#"
apiVersion: v1
kind: Service
metadata: {name: reviews}
spec:
  selector: {app: reviews}
  ports: [{name: http, port: 9080}]
---
apiVersion: v1
kind: Service
metadata: {name: flaky}
spec:
  selector: {app: flaky}
  ports: [{name: http, port: 9080}]
"#,
    );
    ns.apply(CURL_CLIENT);
    ns.rolled_out(&["reviews-v1", "reviews-v2", "flaky-v1"]);

    // Istio's "jason" example: one user to v2, everyone else to v1.
    ns.apply(
        r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - match:
    - headers:
        end-user:
          exact: jason
    route:
    - destination: {host: reviews, subset: v2}
  - route:
    - destination: {host: reviews, subset: v1}
"#,
    );
    let url = "http://reviews:9080/";
    converged(&ns, url, "everyone else on v1", |b| {
        b.iter().all(|v| v == "v1")
    });
    let jason = bodies_with(&ns, url, 50, &["-H", "end-user: jason"]);
    assert_eq!(count(&jason, "v2"), 50, "{jason:?}");

    // A fault abort of 50%.
    ns.apply(
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - fault:
      abort:
        percentage: {value: 50}
        httpStatus: 503
    route:
    - destination: {host: reviews, subset: v1}
"#,
    );
    converged(&ns, url, "aborts arrived", |b| {
        b.iter().any(|v| v == "fault")
    });
    let answers = codes(&ns, url, 400);
    assert_eq!(
        count(&answers, "503") + count(&answers, "200"),
        400,
        "{answers:?}"
    );
    let aborted = 100.0 * count(&answers, "503") as f64 / 400.0;
    assert!(
        (aborted - 50.0).abs() <= 10.0,
        "aborted {aborted:.1}% of 400"
    );
    eprintln!("fault abort 50%: {aborted:.1}% of 400 aborted");

    // Retries off: the backend's failures show; three retries on 5xx hide them.
    let flaky = "http://flaky:9080/";
    let retries = |attempts: u32| {
        format!(
            r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: flaky}}
spec:
  hosts: [flaky]
  http:
  - route:
    - destination: {{host: flaky}}
    retries:
      attempts: {attempts}
      retryOn: 5xx
"#
        )
    };
    ns.apply(&retries(0));
    converged(&ns, flaky, "failures visible", |b| {
        b.iter().any(|v| v == "failed")
    });
    let raw = bodies(&ns, flaky, 100);
    let failed = count(&raw, "failed");
    assert!(
        (40..=60).contains(&failed),
        "{failed} of 100 failed without retries"
    );
    ns.apply(&retries(3));
    converged(&ns, flaky, "retries hide failures", |b| {
        b.iter().all(|v| v == "v1")
    });
    let retried = bodies(&ns, flaky, 100);
    assert_eq!(count(&retried, "v1"), 100, "{retried:?}");
    eprintln!("retries: {failed}/100 failed with attempts 0, 0/100 with attempts 3");

    // Seed 003's warning: DISABLE against STRICT is 503 UC, and weft check says why.
    ns.apply(
        r#"
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: strict}
spec:
  mtls: {mode: STRICT}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: flaky-plaintext}
spec:
  host: flaky
  trafficPolicy:
    tls: {mode: DISABLE}
"#,
    );
    wait_for(
        Duration::from_secs(60),
        || bodies_with(&ns, flaky, 20, &[]).join(" "),
        |b| b.split(' ').all(|v| v == "upstream"),
    );
    let out = weft(&["check"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("DestinationRule shop/flaky-plaintext"))
        .unwrap_or_else(|| panic!("weft check names the rule:\n{text}"));
    assert!(line.contains("PeerAuthentication shop/strict"), "{line}");
    assert!(line.contains("503 UC"), "{line}");
    assert!(
        !out.status.success(),
        "a conflict fails weft check:\n{text}"
    );
}

/// `n` requests with extra curl arguments, each answer's pod (weft-echo answers
/// `<version> from <pod> ...`); an answer without one is kept whole.
fn pods_with(ns: &Namespace, url: &str, n: usize, extra: &[&str]) -> Vec<String> {
    answers_with(ns, url, n, extra, |l| {
        match l.split_whitespace().collect::<Vec<_>>()[..] {
            [_, "from", pod, ..] => pod.to_string(),
            _ => l.to_string(),
        }
    })
}

/// Issue 19's DestinationRule traffic policies: outlier detection ejects a pod that answers
/// 5xx (retries off, so nothing else hides it), and a consistent hash on a header keeps each
/// user on one pod of three where round robin spreads them.
#[test]
fn outlier_detection_ejects_a_failing_pod_and_a_consistent_hash_keeps_each_user_on_one_pod() {
    let c = support::deployed();
    let ns = c.namespace("t-balance");
    ns.enrol();
    ns.apply(&version("api", "good", 8080));
    ns.apply(&version("api", "bad", 8080).replace(
        "        - {name: MESSAGE, value: bad}",
        "        - {name: MESSAGE, value: bad}\n        - {name: FAIL_EVERY, value: \"1\"}",
    ));
    ns.apply(&version("sticky", "v1", 8080).replace("replicas: 1", "replicas: 3"));
    ns.apply(
        r#"
apiVersion: v1
kind: Service
metadata: {name: api}
spec:
  selector: {app: api}
  ports: [{name: http, port: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: sticky}
spec:
  selector: {app: sticky}
  ports: [{name: http, port: 8080}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: api}
spec:
  hosts: [api]
  http:
  - route:
    - destination: {host: api}
    retries: {attempts: 0}
"#,
    );
    ns.apply(CURL_CLIENT);
    ns.rolled_out(&["api-good", "api-bad", "sticky-v1"]);

    // Without outlier detection, round robin sends every second request to the broken pod.
    let api = "http://api:8080/";
    converged(&ns, api, "both pods answer", |b| {
        b.iter().any(|v| v == "failed") && b.iter().any(|v| v == "good")
    });
    let before = bodies(&ns, api, 100);
    let failed_before = count(&before, "failed");
    assert!(
        (30..=70).contains(&failed_before),
        "{failed_before} of 100 failed without outlier detection"
    );

    // Istio's outlier detection: one 5xx ejects the pod for 3 minutes.
    ns.apply(
        r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: api}
spec:
  host: api
  trafficPolicy:
    outlierDetection:
      consecutive5xxErrors: 1
      interval: 1s
      baseEjectionTime: 3m
      maxEjectionPercent: 100
"#,
    );
    converged(&ns, api, "the broken pod ejected", |b| {
        b.iter().all(|v| v == "good")
    });
    let after = bodies(&ns, api, 200);
    let failed_after = count(&after, "failed");
    assert_eq!(
        count(&after, "good") + failed_after,
        200,
        "{:?}",
        &after[..10]
    );
    assert!(
        failed_after == 0,
        "{failed_after} of 200 failed with the broken pod ejected"
    );
    eprintln!(
        "outlier detection: {failed_before}/100 failed before, {failed_after}/200 after ejection"
    );
    let out = weft(&["proxy-config", "clusters", "client", "-n", &ns.name]);
    let table = String::from_utf8_lossy(&out.stdout);
    let row = table
        .lines()
        .find(|l| l.starts_with("api.t-balance"))
        .unwrap_or_else(|| panic!("no api row:\n{table}"));
    assert!(row.contains("eject 1×5xx for 180s×n, ≤100%"), "{row}");
    // The rule says it is applied as written (its WeftAccepted condition).
    wait_for(
        Duration::from_secs(60),
        || {
            ns.ok(&[
                "get",
                "destinationrule",
                "api",
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"WeftAccepted\")].status}",
            ])
        },
        |s| s == "True",
    );

    // Round robin spreads one user over the three pods; a consistent hash on x-user keeps
    // each user on one pod, and different users on different pods.
    let sticky = "http://sticky:8080/";
    converged(&ns, sticky, "sticky answers", |b| {
        b.iter().all(|v| v == "v1")
    });
    let spread: std::collections::BTreeSet<String> =
        pods_with(&ns, sticky, 30, &["-H", "x-user: u0"])
            .into_iter()
            .collect();
    assert!(spread.len() >= 2, "round robin used {spread:?}");
    ns.apply(
        r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: sticky}
spec:
  host: sticky
  trafficPolicy:
    loadBalancer:
      consistentHash:
        httpHeaderName: x-user
"#,
    );
    wait_for(
        Duration::from_secs(60),
        || {
            let pods: std::collections::BTreeSet<String> =
                pods_with(&ns, sticky, 20, &["-H", "x-user: u0"])
                    .into_iter()
                    .collect();
            format!("{pods:?}")
        },
        |p| !p.contains(','),
    );
    let mut homes = std::collections::BTreeSet::new();
    for user in 0..12 {
        let header = format!("x-user: u{user}");
        let pods: std::collections::BTreeSet<String> = pods_with(&ns, sticky, 20, &["-H", &header])
            .into_iter()
            .collect();
        assert_eq!(pods.len(), 1, "user u{user} went to {pods:?}");
        homes.extend(pods);
    }
    assert!(homes.len() >= 2, "12 users all hashed to {homes:?}");
    eprintln!(
        "consistent hash: 12 users × 20 requests, each on one pod; {} pods used",
        homes.len()
    );
}

/// `n` requests to `url` at once (curl's `--parallel`, one connection each), each answer's
/// status code.
fn parallel_codes(ns: &Namespace, url: &str, n: usize) -> Vec<String> {
    let out = curl_range(
        ns,
        url,
        n,
        &[
            "--parallel",
            "--parallel-immediate",
            "--parallel-max",
            &n.to_string(),
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}\n",
        ],
    );
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// Istio's circuit-breaking task with the DestinationRule it prints: `maxConnections: 1` and
/// `http1MaxPendingRequests: 1` let one request in flight and one waiting; the others are
/// answered 503 (`UO`, "reset reason: overflow") at once. Without the rule, all succeed.
#[test]
fn connection_pool_limits_answer_overflow_with_503_as_istios_circuit_breaking_task() {
    let c = support::deployed();
    let ns = c.namespace("t-breaker");
    ns.enrol();
    // Each answer takes 300 ms, so concurrent requests overlap.
    ns.apply(&version("httpbin", "v1", 8000).replace(
        "        - {name: MESSAGE, value: v1}",
        "        - {name: MESSAGE, value: v1}\n        - {name: DELAY_MS, value: \"300\"}",
    ));
    ns.apply(
        r#"
apiVersion: v1
kind: Service
metadata: {name: httpbin}
spec:
  selector: {app: httpbin}
  ports: [{name: http, port: 8000}]
"#,
    );
    ns.apply(CURL_CLIENT);
    ns.rolled_out(&["httpbin-v1"]);
    let url = "http://httpbin:8000/get";
    converged(&ns, url, "httpbin answers", |b| b.iter().all(|v| v == "v1"));
    let open = parallel_codes(&ns, url, 10);
    assert_eq!(count(&open, "200"), 10, "without limits: {open:?}");

    // istio.io "Circuit Breaking", its DestinationRule, every field applied (weft retires an
    // upstream connection after maxRequestsPerConnection requests, as Envoy does).
    ns.apply(
        r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: httpbin
spec:
  host: httpbin
  trafficPolicy:
    connectionPool:
      tcp:
        maxConnections: 1
      http:
        http1MaxPendingRequests: 1
        maxRequestsPerConnection: 1
    outlierDetection:
      consecutive5xxErrors: 1
      interval: 1s
      baseEjectionTime: 3m
      maxEjectionPercent: 100
"#,
    );
    let limited = wait_for(
        Duration::from_secs(60),
        || parallel_codes(&ns, url, 10).join(" "),
        |codes| codes.contains("503"),
    );
    let codes: Vec<String> = limited.split(' ').map(str::to_string).collect();
    let (ok, overflow) = (count(&codes, "200"), count(&codes, "503"));
    assert_eq!(ok + overflow, 10, "{codes:?}");
    // One in flight and one waiting get through at once; the rest overflow.
    assert!((1..=4).contains(&ok), "{ok} of 10 succeeded: {codes:?}");
    // The overflow is the proxy's own answer, and the pod was not ejected for it.
    let body = ns.ok(&[
        "exec",
        "client",
        "-c",
        "client",
        "--",
        "sh",
        "-c",
        &format!("for i in 1 2 3 4 5 6; do curl -s {url} & done; wait"),
    ]);
    assert!(body.contains("reset reason: overflow"), "{body}");
    let after = bodies(&ns, url, 5);
    assert_eq!(
        count(&after, "v1"),
        5,
        "sequential requests still succeed: {after:?}"
    );
    let status = wait_for(
        Duration::from_secs(60),
        || {
            ns.ok(&[
                "get",
                "destinationrule",
                "httpbin",
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"WeftAccepted\")].message}",
            ])
        },
        |m| !m.is_empty(),
    );
    assert!(
        !status.contains("maxRequestsPerConnection"),
        "maxRequestsPerConnection is applied, never named as refused: {status}"
    );
    eprintln!(
        "circuit breaking: {ok} of 10 parallel requests succeeded, {overflow} overflowed (503 UO)"
    );
}

/// Requests the `pod`'s proxy counted as a server (reporter `destination`) from `source`.
fn served_from(ns: &Namespace, pod: &str, source: &str) -> u64 {
    ns.proxy_metrics(pod)
        .lines()
        .filter(|l| {
            l.starts_with("istio_requests_total{")
                && l.contains(r#"reporter="destination""#)
                && l.contains(&format!(r#"source_workload="{source}""#))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[test]
fn a_mirror_copies_every_request_to_v2_while_every_answer_comes_from_v1() {
    let c = support::deployed();
    let ns = c.namespace("mirror");
    ns.enrol();
    ns.apply(&version("reviews", "v1", 9080));
    ns.apply(&version("reviews", "v2", 9080));
    ns.apply(
        r#"
apiVersion: v1
kind: Service
metadata: {name: reviews, labels: {app: reviews}}
spec:
  selector: {app: reviews}
  ports: [{name: http, port: 9080}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews, subset: v1}
      weight: 100
    mirror: {host: reviews, subset: v2}
    mirrorPercentage: {value: 100.0}
"#,
    );
    ns.apply(CURL_CLIENT);
    ns.rolled_out(&["reviews-v1", "reviews-v2"]);
    let url = "http://reviews:9080/";
    converged(&ns, url, "only v1 answers", |b| b.iter().all(|v| v == "v1"));
    let v2 = ns.jsonpath("pods -l version=v2", "{.items[0].metadata.name}");
    let before = served_from(&ns, &v2, "client");
    let answers = bodies(&ns, url, 50);
    assert_eq!(share(&answers, 50, "v1", &["v1", "v2"]), 100.0);
    // Each of the 50 reached v2 too, as a copy the client never saw.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let after = loop {
        let n = served_from(&ns, &v2, "client");
        if n >= before + 50 || std::time::Instant::now() > deadline {
            break n;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    assert!(after >= before + 50, "{before} -> {after}");
    // The route says so in `weft proxy-config routes`.
    let out = weft(&["proxy-config", "routes", "client", "-n", "mirror"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("mirror reviews.mirror.svc.cluster.local:9080|v2 100%"),
        "{text}"
    );
}

/// `n` requests from pod `pod` (container `client`), each on a new connection (`Connection:
/// close`): a TCP route picks per connection. Each answer's first word.
fn per_connection(ns: &Namespace, pod: &str, url: &str, n: usize) -> Vec<String> {
    let target = format!("{url}?n=[1-{n}]");
    let out = ns.kubectl(&[
        "exec",
        pod,
        "-c",
        "client",
        "--",
        "curl",
        "-sS",
        "--max-time",
        "120",
        "-H",
        "Connection: close",
        "-w",
        "\n",
        &target,
    ]);
    let mut answers: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.split_whitespace().next().unwrap_or_default().to_string())
        .collect();
    answers.extend(
        String::from_utf8_lossy(&out.stderr)
            .lines()
            .map(|l| format!("error: {l}")),
    );
    answers
}

/// Waits until a batch of 20 connections from `pod` satisfies `check`.
fn converged_from(
    ns: &Namespace,
    pod: &str,
    url: &str,
    what: &str,
    check: impl Fn(&[String]) -> bool,
) {
    wait_for(
        Duration::from_secs(60),
        || {
            let batch = per_connection(ns, pod, url, 20);
            if check(&batch) {
                format!("ok {what}")
            } else {
                format!("{what}: {batch:?}")
            }
        },
        |s| s.starts_with("ok "),
    );
}

/// The echo app's two versions behind a Service port named `port_name` (9000), with the
/// DestinationRule subsets v1/v2 and the given VirtualService spec, and the meshed client.
fn tcp_echo(ns: &Namespace, port_name: &str, vs_spec: &str) {
    ns.apply(&version("echo", "v1", 9000));
    ns.apply(&version("echo", "v2", 9000));
    ns.apply(&format!(
        r#"
apiVersion: v1
kind: Service
metadata: {{name: echo, labels: {{app: echo}}}}
spec:
  selector: {{app: echo}}
  ports: [{{name: {port_name}, port: 9000}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: echo}}
spec:
  host: echo
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: echo}}
spec:
{vs_spec}
"#
    ));
}

/// A VirtualService `tcp` route on a declared TCP port (`tcp-echo`): the proxy relays the
/// bytes (no HTTP termination) to the destination the route picks per connection. A port
/// match sends every connection to v2; then 70/30 weights are measured over 400 connections.
#[test]
fn a_tcp_route_sends_a_tcp_port_to_v2_by_port_then_splits_connections_70_30() {
    let c = support::deployed();
    let ns = c.namespace("tcproute");
    ns.enrol();
    tcp_echo(
        &ns,
        "tcp-echo",
        r#"  hosts: [echo]
  tcp:
  - match: [{port: 9000}]
    route:
    - destination: {host: echo, subset: v2}
"#,
    );
    ns.apply(CURL_CLIENT);
    ns.rolled_out(&["echo-v1", "echo-v2"]);
    let url = "http://echo:9000/";
    converged_from(&ns, "client", url, "every connection to v2", |b| {
        b.len() == 20 && b.iter().all(|v| v == "v2")
    });
    let answers = per_connection(&ns, "client", url, 100);
    assert_eq!(share(&answers, 100, "v2", &["v1", "v2"]), 100.0);
    let out = weft(&["proxy-config", "routes", "client", "-n", "tcproute"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("echo.tcproute.svc.cluster.local:9000|v2 100")
            && text.contains("tcp (relayed"),
        "{text}"
    );
    // The VirtualService is accepted as written.
    let accepted = ns.jsonpath(
        "virtualservice echo",
        "{.status.conditions[?(@.type==\"WeftAccepted\")].status}",
    );
    assert_eq!(accepted, "True");

    // 70/30 by weight, per connection.
    ns.apply(
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: echo}
spec:
  hosts: [echo]
  tcp:
  - route:
    - destination: {host: echo, subset: v1}
      weight: 70
    - destination: {host: echo, subset: v2}
      weight: 30
"#,
    );
    converged_from(&ns, "client", url, "both versions", |b| {
        b.iter().any(|v| v == "v1") && b.iter().any(|v| v == "v2")
    });
    const CONNECTIONS: usize = 400;
    let answers = per_connection(&ns, "client", url, CONNECTIONS);
    let v2 = share(&answers, CONNECTIONS, "v2", &["v1", "v2"]);
    // Binomial(400, 0.3): one standard deviation is 2.3 points; 7 points is three of them.
    assert!(
        (v2 - 30.0).abs() <= 7.0,
        "v2 took {v2:.1}% of {CONNECTIONS} connections, want 30 ± 7"
    );
    eprintln!("tcp route 70/30: v2 share {v2:.1}% over {CONNECTIONS} connections");
}

/// `sourceLabels` (issue 19): the control plane computes each proxy's tables, so only the
/// client whose pod carries `role: tester` has the route to v2; the other one's table lacks it
/// and it goes to v1. `weft proxy-config routes` shows the same difference.
#[test]
fn a_source_labels_route_is_seen_only_by_the_labelled_client() {
    let c = support::deployed();
    let ns = c.namespace("srclabels");
    ns.enrol();
    ns.apply(&version("reviews", "v1", 9080));
    ns.apply(&version("reviews", "v2", 9080));
    ns.apply(
        r#"
apiVersion: v1
kind: Service
metadata: {name: reviews, labels: {app: reviews}}
spec:
  selector: {app: reviews}
  ports: [{name: http, port: 9080}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - match:
    - sourceLabels: {role: tester}
    route:
    - destination: {host: reviews, subset: v2}
  - route:
    - destination: {host: reviews, subset: v1}
"#,
    );
    ns.apply(CURL_CLIENT);
    ns.apply(&CURL_CLIENT.replace(
        "metadata: {name: client, labels: {app: client}}",
        "metadata: {name: tester, labels: {app: client, role: tester}}",
    ));
    ns.rolled_out(&["reviews-v1", "reviews-v2"]);
    ns.ok(&[
        "wait",
        "--for=condition=Ready",
        "pod/tester",
        "--timeout=180s",
    ]);
    let url = "http://reviews:9080/";
    converged_from(&ns, "tester", url, "the tester reaches v2", |b| {
        b.len() == 20 && b.iter().all(|v| v == "v2")
    });
    converged_from(&ns, "client", url, "the client reaches v1", |b| {
        b.len() == 20 && b.iter().all(|v| v == "v1")
    });
    for (pod, want) in [("tester", "v2"), ("client", "v1")] {
        let answers = per_connection(&ns, pod, url, 50);
        assert_eq!(share(&answers, 50, want, &["v1", "v2"]), 100.0, "{pod}");
    }
    let routes = |pod: &str| {
        let out = weft(&["proxy-config", "routes", pod, "-n", "srclabels"]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let (tester, client) = (routes("tester"), routes("client"));
    assert!(
        tester.contains(r#""sourceLabels":{"role":"tester"}"#),
        "{tester}"
    );
    // Every proxy sees every namespace's routes: look at this namespace's Service only.
    let v2 = "reviews.srclabels.svc.cluster.local:9080|v2 100";
    assert!(tester.contains(v2), "{tester}");
    assert!(
        !client.contains(r#""sourceLabels":{"role":"tester"}"#),
        "{client}"
    );
    assert!(!client.contains(v2), "{client}");
    let accepted = ns.jsonpath(
        "virtualservice reviews",
        "{.status.conditions[?(@.type==\"WeftAccepted\")].status}",
    );
    assert_eq!(accepted, "True");
}

/// GAMMA's `RequestMirror` (issue 19 item 4): an HTTPRoute on the reviews Service sends every
/// request to reviews-v1 and a copy to reviews-v2 (the VirtualService mirror's action); the
/// client only ever sees v1, v2's proxy counts the copies, and the route's status is clean.
#[test]
fn a_gamma_request_mirror_copies_every_request_to_v2_while_v1_answers() {
    let c = support::deployed();
    let ns = c.namespace("gammamirror");
    ns.enrol();
    ns.apply(&version("reviews", "v1", 9080));
    ns.apply(&version("reviews", "v2", 9080));
    ns.apply(
        r#"
apiVersion: v1
kind: Service
metadata: {name: reviews, labels: {app: reviews}}
spec:
  selector: {app: reviews}
  ports: [{name: http, port: 9080}]
---
apiVersion: v1
kind: Service
metadata: {name: reviews-v1}
spec:
  selector: {app: reviews, version: v1}
  ports: [{name: http, port: 9080}]
---
apiVersion: v1
kind: Service
metadata: {name: reviews-v2}
spec:
  selector: {app: reviews, version: v2}
  ports: [{name: http, port: 9080}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: reviews}
spec:
  parentRefs:
  - {group: "", kind: Service, name: reviews, port: 9080}
  rules:
  - filters:
    - type: RequestMirror
      requestMirror:
        backendRef: {name: reviews-v2, port: 9080}
    backendRefs:
    - {name: reviews-v1, port: 9080}
"#,
    );
    ns.apply(CURL_CLIENT);
    ns.rolled_out(&["reviews-v1", "reviews-v2"]);
    let url = "http://reviews:9080/";
    converged(&ns, url, "only v1 answers", |b| {
        b.len() == 20 && b.iter().all(|v| v == "v1")
    });
    let v2 = ns.jsonpath("pods -l version=v2", "{.items[0].metadata.name}");
    let before = served_from(&ns, &v2, "client");
    let answers = bodies(&ns, url, 50);
    assert_eq!(share(&answers, 50, "v1", &["v1", "v2"]), 100.0);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let after = loop {
        let n = served_from(&ns, &v2, "client");
        if n >= before + 50 || std::time::Instant::now() > deadline {
            break n;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    assert!(after >= before + 50, "v2 served {before} -> {after} copies");
    let out = weft(&["proxy-config", "routes", "client", "-n", "gammamirror"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("mirror reviews-v2.gammamirror.svc.cluster.local:9080 100%"),
        "{text}"
    );
    let conditions = ns.jsonpath(
        "httproute reviews",
        "{range .status.parents[*].conditions[*]}{.type}={.status} {end}",
    );
    assert!(
        conditions.contains("Accepted=True") && conditions.contains("ResolvedRefs=True"),
        "{conditions}"
    );
    assert!(!conditions.contains("PartiallyInvalid"), "{conditions}");
    eprintln!(
        "GAMMA mirror: 50 of 50 answers from v1, v2 served {} copies",
        after - before
    );
}

/// GAMMA producer and consumer routes (GEP-1426, the conformance suite's MeshConsumerRoute):
/// reviews (v1, v2) lives in `gcons-prod` with a producer HTTPRoute sending everything to
/// reviews-v1; `gcons-cons` holds a consumer route for the same Service (its parent in
/// gcons-prod, the port named by `sectionName`) sending to reviews-v2 of gcons-prod without a
/// ReferenceGrant and setting a response header. Its clients get v2 with the header; the
/// clients of gcons-prod and of a third namespace keep the producer route (v1, no header).
#[test]
fn a_gamma_consumer_route_applies_to_its_own_namespace_and_replaces_the_producer_route_there() {
    let c = support::deployed();
    let prod = c.namespace("gcons-prod");
    let cons = c.namespace("gcons-cons");
    let other = c.namespace("gcons-other");
    for ns in [&prod, &cons, &other] {
        ns.enrol();
    }
    prod.apply(&version("reviews", "v1", 9080));
    prod.apply(&version("reviews", "v2", 9080));
    prod.apply(
        r#"
apiVersion: v1
kind: Service
metadata: {name: reviews, labels: {app: reviews}}
spec:
  selector: {app: reviews}
  ports: [{name: http-reviews, port: 9080}]
---
apiVersion: v1
kind: Service
metadata: {name: reviews-v1}
spec:
  selector: {app: reviews, version: v1}
  ports: [{name: http, port: 9080}]
---
apiVersion: v1
kind: Service
metadata: {name: reviews-v2}
spec:
  selector: {app: reviews, version: v2}
  ports: [{name: http, port: 9080}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: reviews}
spec:
  parentRefs:
  - {group: "", kind: Service, name: reviews, port: 9080}
  rules:
  - backendRefs:
    - {name: reviews-v1, port: 9080}
"#,
    );
    cons.apply(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: reviews-v2}
spec:
  parentRefs:
  - {group: "", kind: Service, name: reviews, namespace: gcons-prod, sectionName: http-reviews}
  rules:
  - filters:
    - type: ResponseHeaderModifier
      responseHeaderModifier:
        set: [{name: x-route, value: consumer}]
    backendRefs:
    - {name: reviews-v2, namespace: gcons-prod, port: 9080}
"#,
    );
    for ns in [&prod, &cons, &other] {
        ns.apply(CURL_CLIENT);
    }
    prod.rolled_out(&["reviews-v1", "reviews-v2"]);
    for ns in [&cons, &other] {
        ns.rolled_out(&[]);
    }
    let url = "http://reviews.gcons-prod:9080/";
    for (ns, want) in [(&prod, "v1"), (&cons, "v2"), (&other, "v1")] {
        converged(ns, url, &format!("{} reaches {want}", ns.name), |b| {
            b.len() == 20 && b.iter().all(|v| v == want)
        });
        let answers = bodies(ns, url, 100);
        assert_eq!(
            share(&answers, 100, want, &["v1", "v2"]),
            100.0,
            "{}",
            ns.name
        );
        let (status, headers, _) = one_exchange(ns, url, &[]);
        assert_eq!(status, 200, "{}", ns.name);
        let marked = header_of(&headers, "x-route");
        assert_eq!(
            marked,
            (want == "v2").then_some("consumer"),
            "{}: {headers:?}",
            ns.name
        );
    }
    // What each proxy was given, as weft shows it.
    for (ns, route) in [
        ("gcons-cons", "gcons-cons/reviews-v2"),
        ("gcons-other", "gcons-prod/reviews"),
    ] {
        let out = weft(&["proxy-config", "routes", "client", "-n", ns]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains(route), "{ns}: {text}");
    }
    let conditions = cons.jsonpath(
        "httproute reviews-v2",
        "{range .status.parents[*].conditions[*]}{.type}={.status}:{.message} {end}",
    );
    assert!(
        conditions.contains("Accepted=True") && conditions.contains("ResolvedRefs=True"),
        "{conditions}"
    );
    assert!(conditions.contains("namespace gcons-cons"), "{conditions}");
}

/// issue 19: `exportTo` and Istio's client-namespace DestinationRule lookup on the cluster.
/// reviews (v1, v2) lives in `xns-svc` with its subsets and a VirtualService exported
/// everywhere (all to v1), and a second one exported only to its own namespace (all to v2);
/// `xns-front` has a DestinationRule of its own for reviews that says subset v1 is the
/// `version: v2` pods (a client namespace's override). Three clients, each proving one
/// rule: xns-svc's sees its private VirtualService first (v2); xns-front's gets the public
/// route and its own namespace's rule (v2 pods); xns-other's neither (v1).
#[test]
fn export_to_and_the_client_namespace_destination_rule_decide_per_client_namespace() {
    let c = support::deployed();
    let svc = c.namespace("xns-svc");
    let front = c.namespace("xns-front");
    let other = c.namespace("xns-other");
    for ns in [&svc, &front, &other] {
        ns.enrol();
    }
    svc.apply(&version("reviews", "v1", 9080));
    svc.apply(&version("reviews", "v2", 9080));
    svc.apply(
        r#"
apiVersion: v1
kind: Service
metadata: {name: reviews, labels: {app: reviews}}
spec:
  selector: {app: reviews}
  ports: [{name: http, port: 9080}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews, subset: v1}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews-own}
spec:
  hosts: [reviews]
  exportTo: ["."]
  http:
  - route:
    - destination: {host: reviews, subset: v2}
"#,
    );
    front.apply(
        r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews-for-front}
spec:
  host: reviews.xns-svc.svc.cluster.local
  exportTo: ["."]
  subsets:
  - {name: v1, labels: {version: v2}}
"#,
    );
    for ns in [&svc, &front, &other] {
        ns.apply(CURL_CLIENT);
    }
    svc.rolled_out(&["reviews-v1", "reviews-v2"]);
    for ns in [&front, &other] {
        ns.rolled_out(&[]);
    }
    let url = "http://reviews.xns-svc:9080/";
    for (ns, want) in [(&svc, "v2"), (&front, "v2"), (&other, "v1")] {
        converged(ns, url, &format!("{} reaches {want}", ns.name), |b| {
            b.len() == 20 && b.iter().all(|v| v == want)
        });
        let answers = bodies(ns, url, 100);
        assert_eq!(
            share(&answers, 100, want, &["v1", "v2"]),
            100.0,
            "{}",
            ns.name
        );
    }
    // What each proxy was given, as weft shows it.
    let routes = |ns: &str| {
        let out = weft(&["proxy-config", "routes", "client", "-n", ns]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let row = "reviews.xns-svc.svc.cluster.local:9080|";
    assert!(
        routes("xns-svc").contains("xns-svc/reviews-own"),
        "{}",
        routes("xns-svc")
    );
    for ns in ["xns-front", "xns-other"] {
        let text = routes(ns);
        assert!(!text.contains("xns-svc/reviews-own"), "{ns}: {text}");
        assert!(text.contains(&format!("{row}v1 100")), "{ns}: {text}");
    }
    let accepted = |ns: &Namespace, kind: &str, name: &str| {
        ns.jsonpath(
            &format!("{kind} {name}"),
            "{.status.conditions[?(@.type==\"WeftAccepted\")].status}",
        )
    };
    assert_eq!(
        accepted(&front, "destinationrule", "reviews-for-front"),
        "True"
    );
    assert_eq!(accepted(&svc, "virtualservice", "reviews-own"), "True");
    // The private one overriding the public one for its namespace is exportTo's purpose,
    // not a conflict: both are accepted.
    assert_eq!(accepted(&svc, "virtualservice", "reviews"), "True");

    // Bad input (issue 19): xns-other's own VirtualService names a subset no rule defines.
    // Its clients get 503 with Istio's flag NR and the status says why; the other
    // namespaces' clients are not disturbed.
    other.apply(
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews-v3}
spec:
  hosts: [reviews.xns-svc.svc.cluster.local]
  exportTo: ["."]
  http:
  - route:
    - destination: {host: reviews.xns-svc.svc.cluster.local, subset: v3}
"#,
    );
    wait_for(
        Duration::from_secs(60),
        || codes(&other, url, 20).join(" "),
        |c| c.split(' ').all(|x| x == "503") && c.split(' ').count() == 20,
    );
    let flagged: u64 = other
        .proxy_metrics("client")
        .lines()
        .filter(|l| {
            l.starts_with("istio_requests_total{")
                && l.contains(r#"reporter="source""#)
                && l.contains(r#"response_code="503""#)
                && l.contains(r#"response_flags="NR""#)
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert!(flagged >= 20, "503s counted with flag NR: {flagged}");
    let message = other.jsonpath(
        "virtualservice reviews-v3",
        "{.status.conditions[?(@.type==\"WeftAccepted\")].message}",
    );
    assert!(
        message.contains(
            r#"subset "v3" of reviews.xns-svc.svc.cluster.local is defined by no DestinationRule"#
        ),
        "{message}"
    );
    for (ns, want) in [(&svc, "v2"), (&front, "v2")] {
        let answers = bodies(ns, url, 50);
        assert_eq!(
            share(&answers, 50, want, &["v1", "v2"]),
            100.0,
            "{}",
            ns.name
        );
    }
}

/// Issue 19's `portLevelSettings`: one Service, two ports to the same pods, and a
/// DestinationRule whose port-level entry differs from its top-level policy, observed per
/// port. (a) TLS: top-level ISTIO_MUTUAL, port 9081 DISABLE, the namespace STRICT: every
/// request to 9080 is answered by the app, every one to 9081 is refused by the server (503,
/// the client proxy's `upstream connect error`). (b) Load balancing: top-level consistent
/// hash on `x-user`, port 9081 ROUND_ROBIN: one user's 40 requests stay on one pod of two on
/// 9080 and reach both pods on 9081.
#[test]
fn port_level_settings_replace_the_tls_mode_and_the_load_balancer_of_one_port() {
    let c = support::deployed();
    let ns = c.namespace("t-ports");
    ns.enrol();
    ns.apply(&version("api", "v1", 9080).replace("replicas: 1", "replicas: 2"));
    ns.apply(
        r#"
apiVersion: v1
kind: Service
metadata: {name: api}
spec:
  selector: {app: api}
  ports:
  - {name: http, port: 9080, targetPort: 9080}
  - {name: http-alt, port: 9081, targetPort: 9080}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: strict}
spec:
  mtls: {mode: STRICT}
"#,
    );
    ns.apply(CURL_CLIENT);
    ns.rolled_out(&["api-v1"]);
    let (main, alt) = ("http://api:9080/", "http://api:9081/");

    // (a) The TLS mode per port.
    ns.apply(
        r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: api}
spec:
  host: api
  trafficPolicy:
    tls: {mode: ISTIO_MUTUAL}
    portLevelSettings:
    - port: {number: 9081}
      tls: {mode: DISABLE}
"#,
    );
    converged(&ns, alt, "port 9081 in plaintext, refused", |b| {
        b.iter().all(|v| v == "upstream")
    });
    let main_codes = codes(&ns, main, 100);
    let alt_codes = codes(&ns, alt, 100);
    assert_eq!(count(&main_codes, "200"), 100, "9080: {main_codes:?}");
    assert_eq!(count(&alt_codes, "503"), 100, "9081: {alt_codes:?}");
    eprintln!(
        "portLevelSettings tls: 9080 100/100 200 (ISTIO_MUTUAL), 9081 100/100 503 (DISABLE vs STRICT)"
    );

    // (b) The load balancer per port.
    ns.apply(
        r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: api}
spec:
  host: api
  trafficPolicy:
    loadBalancer:
      consistentHash: {httpHeaderName: x-user}
    portLevelSettings:
    - port: {number: 9081}
      loadBalancer: {simple: ROUND_ROBIN}
"#,
    );
    let user = ["-H", "x-user: jason"];
    let distinct = |answers: &[String]| {
        let mut pods: Vec<&String> = answers.iter().collect();
        pods.sort();
        pods.dedup();
        pods.len()
    };
    wait_for(
        Duration::from_secs(60),
        || {
            let on_main = pods_with(&ns, main, 20, &user);
            let on_alt = pods_with(&ns, alt, 20, &user);
            let ok = on_main.iter().all(|p| p.starts_with("api-v1-"))
                && distinct(&on_main) == 1
                && on_alt.iter().all(|p| p.starts_with("api-v1-"));
            format!(
                "{} {on_main:?} {on_alt:?}",
                if ok { "ok" } else { "waiting" }
            )
        },
        |s| s.starts_with("ok "),
    );
    let on_main = pods_with(&ns, main, 40, &user);
    let on_alt = pods_with(&ns, alt, 40, &user);
    assert_eq!(on_main.len(), 40, "{on_main:?}");
    assert_eq!(on_alt.len(), 40, "{on_alt:?}");
    assert!(
        on_main
            .iter()
            .chain(&on_alt)
            .all(|p| p.starts_with("api-v1-")),
        "every answer from a pod: {on_main:?} {on_alt:?}"
    );
    assert_eq!(distinct(&on_main), 1, "9080 hashes x-user: {on_main:?}");
    assert_eq!(distinct(&on_alt), 2, "9081 round robin: {on_alt:?}");
    let first = on_alt[0].clone();
    let share = on_alt.iter().filter(|p| **p == first).count();
    assert!(
        (10..=30).contains(&share),
        "round robin spreads 40 requests over 2 pods: {share} on {first}"
    );
    eprintln!(
        "portLevelSettings loadBalancer: 9080 40/40 on one pod (hash), 9081 {share}/40 on {first} (round robin)"
    );
}

/// One request from the client pod with curl arguments `args`: the status, the response's
/// headers (names lowercased) and its body.
fn one_exchange(ns: &Namespace, url: &str, args: &[&str]) -> (u16, Vec<(String, String)>, String) {
    let mut argv = vec![
        "exec",
        "client",
        "-c",
        "client",
        "--",
        "curl",
        "-sS",
        "-i",
        "--max-time",
        "20",
    ];
    argv.extend_from_slice(args);
    argv.push(url);
    let out = ns.kubectl(&argv);
    let text = String::from_utf8_lossy(&out.stdout).replace("\r\n", "\n");
    let (head, body) = text.split_once("\n\n").unwrap_or((text.as_str(), ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, headers, body.to_string())
}

fn header_of<'h>(headers: &'h [(String, String)], name: &str) -> Option<&'h str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// Issue 19's CORS with Istio's `corsPolicy`: the client's proxy answers a preflight from an
/// allowed origin itself (200, the allow headers, the app never sees it), forwards one from
/// another origin untouched, and gives an allowed origin's actual request the app's answer
/// with `Access-Control-Allow-Origin` (and credentials, exposed headers); another origin's
/// request gets no CORS header. A redirecting route's policy answers its preflights and marks
/// its redirects.
#[test]
fn a_cors_policy_answers_allowed_preflights_in_the_client_proxy_and_marks_allowed_origins() {
    let c = support::deployed();
    let ns = c.namespace("cors");
    ns.enrol();
    ns.apply(&version("reviews", "v1", 9080));
    ns.apply(
        r#"
apiVersion: v1
kind: Service
metadata: {name: reviews, labels: {app: reviews}}
spec:
  selector: {app: reviews}
  ports: [{name: http, port: 9080}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - match:
    - uri: {prefix: /old}
    redirect: {uri: /new}
    corsPolicy:
      allowOrigins:
      - exact: https://shop.example
      allowMethods: [GET]
  - route:
    - destination: {host: reviews}
    corsPolicy:
      allowOrigins:
      - exact: https://shop.example
      - regex: "https://.*\\.partner\\.example"
      allowMethods: [POST, GET]
      allowHeaders: [x-token]
      exposeHeaders: [x-served-by]
      maxAge: 24h
      allowCredentials: true
"#,
    );
    ns.apply(CURL_CLIENT);
    ns.rolled_out(&["reviews-v1"]);
    let url = "http://reviews:9080/";
    let preflight = |origin: &str| {
        one_exchange(
            &ns,
            url,
            &[
                "-X",
                "OPTIONS",
                "-H",
                &format!("Origin: {origin}"),
                "-H",
                "Access-Control-Request-Method: POST",
                "-H",
                "Access-Control-Request-Headers: x-token",
            ],
        )
    };
    // The policy reached the client's proxy when a preflight is answered with it.
    wait_for(
        Duration::from_secs(60),
        || format!("{:?}", preflight("https://shop.example")),
        |s| s.contains("access-control-allow-origin"),
    );
    let v1 = ns.jsonpath("pods -l version=v1", "{.items[0].metadata.name}");
    let before = served_from(&ns, &v1, "client");

    // Allowed preflights: answered by the client's proxy, with the policy's headers.
    for _ in 0..5 {
        let (status, headers, body) = preflight("https://shop.example");
        assert_eq!(status, 200, "{headers:?} {body}");
        let h = |n| header_of(&headers, n);
        assert_eq!(
            h("access-control-allow-origin"),
            Some("https://shop.example")
        );
        assert_eq!(h("access-control-allow-methods"), Some("POST,GET"));
        assert_eq!(h("access-control-allow-headers"), Some("x-token"));
        assert_eq!(h("access-control-max-age"), Some("86400"));
        assert_eq!(h("access-control-allow-credentials"), Some("true"));
        // The echo app would have answered "v1 from <pod> ...".
        assert!(body.is_empty(), "the app answered the preflight: {body}");
    }
    // A preflight from another origin is forwarded (unmatchedPreflights FORWARD): the app
    // answers it, without CORS headers.
    let (status, headers, body) = preflight("https://evil.example");
    assert_eq!(status, 200, "{headers:?}");
    assert!(body.starts_with("v1 from"), "{body}");
    assert_eq!(header_of(&headers, "access-control-allow-origin"), None);

    // Actual requests: allowed origins (exact and regex) get the app's answer marked for
    // the browser; another origin and a request without Origin are left as the app sent them.
    for origin in ["https://shop.example", "https://eu.partner.example"] {
        let (status, headers, body) = one_exchange(&ns, url, &["-H", &format!("Origin: {origin}")]);
        assert_eq!(status, 200);
        assert!(body.starts_with("v1 from"), "{body}");
        assert_eq!(
            header_of(&headers, "access-control-allow-origin"),
            Some(origin)
        );
        assert_eq!(
            header_of(&headers, "access-control-allow-credentials"),
            Some("true")
        );
        assert_eq!(
            header_of(&headers, "access-control-expose-headers"),
            Some("x-served-by")
        );
    }
    for args in [&["-H", "Origin: https://evil.example"][..], &[][..]] {
        let (status, headers, body) = one_exchange(&ns, url, args);
        assert_eq!(status, 200);
        assert!(body.starts_with("v1 from"), "{body}");
        assert!(
            headers
                .iter()
                .all(|(n, _)| !n.starts_with("access-control-")),
            "{args:?}: {headers:?}"
        );
    }

    // A redirecting route with a CORS policy: its preflight is answered, not redirected; an
    // allowed origin's request gets the redirect marked for the browser (Envoy's order).
    let old = "http://reviews:9080/old/x";
    let (status, headers, _) = one_exchange(
        &ns,
        old,
        &[
            "-X",
            "OPTIONS",
            "-H",
            "Origin: https://shop.example",
            "-H",
            "Access-Control-Request-Method: GET",
        ],
    );
    assert_eq!(status, 200, "{headers:?}");
    assert_eq!(
        header_of(&headers, "access-control-allow-methods"),
        Some("GET")
    );
    assert_eq!(header_of(&headers, "location"), None);
    let (status, headers, _) = one_exchange(&ns, old, &["-H", "Origin: https://shop.example"]);
    assert_eq!(status, 301, "{headers:?}");
    assert!(
        header_of(&headers, "location").is_some_and(|l| l.ends_with("/new")),
        "{headers:?}"
    );
    assert_eq!(
        header_of(&headers, "access-control-allow-origin"),
        Some("https://shop.example")
    );
    let (status, headers, _) = one_exchange(&ns, old, &["-H", "Origin: https://evil.example"]);
    assert_eq!(status, 301);
    assert_eq!(header_of(&headers, "access-control-allow-origin"), None);

    // The app's proxy served the 1 forwarded preflight and the 4 actual requests, never the 5
    // answered preflights nor the redirected requests.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let after = loop {
        let n = served_from(&ns, &v1, "client");
        if n >= before + 5 || std::time::Instant::now() > deadline {
            break n;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    std::thread::sleep(Duration::from_secs(2));
    let settled = served_from(&ns, &v1, "client");
    assert_eq!((after, settled), (before + 5, before + 5), "from {before}");
    // The route says so in `weft proxy-config routes`.
    let out = weft(&["proxy-config", "routes", "client", "-n", "cors"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("cors https://shop.example"), "{text}");
}
