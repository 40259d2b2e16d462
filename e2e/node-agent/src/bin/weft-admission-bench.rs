//! `make bench`, cluster stage (issue: injection): the pod-creation latency weft's injector
//! adds through the real API server. Pods are created with `dryRun=All` (the whole admission
//! chain runs, weft's webhook included, nothing is stored or scheduled), alternating between an
//! enrolled and a plain namespace so both see the same API server and load; the added latency
//! is the enrolled percentile minus the plain one. Writes JSON.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{DeleteParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};

#[derive(Parser)]
struct Args {
    #[arg(long)]
    kubeconfig: PathBuf,
    /// Creations measured per namespace (after the warm-up).
    #[arg(long, default_value_t = 300)]
    pods: usize,
    #[arg(long, default_value_t = 30)]
    warmup: usize,
    #[arg(long)]
    out: PathBuf,
}

const ENROLLED: &str = "weft-bench-enrolled";
const PLAIN: &str = "weft-bench-plain";

fn pod() -> Pod {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"generateName": "bench-", "labels": {"app": "bench"}},
        "spec": {"containers": [{"name": "app", "image": "busybox", "command": ["sleep", "3600"],
                 "ports": [{"containerPort": 8080}],
                 "readinessProbe": {"httpGet": {"path": "/ready", "port": 8080}}}]}
    }))
    .expect("static pod")
}

fn injected(p: &Pod) -> bool {
    p.metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key("weft.dev/status"))
}

async fn namespace(client: &Client, name: &str, labels: serde_json::Value) -> anyhow::Result<()> {
    let api: Api<Namespace> = Api::all(client.clone());
    let _ = api.delete(name, &DeleteParams::default()).await;
    // A namespace still terminating from an earlier run refuses the create for a while.
    let ns: Namespace =
        serde_json::from_value(serde_json::json!({"metadata": {"name": name, "labels": labels}}))?;
    let start = Instant::now();
    loop {
        match api.create(&PostParams::default(), &ns).await {
            Ok(_) => return Ok(()),
            Err(e) if start.elapsed() < Duration::from_secs(120) => {
                tracing::debug!("namespace {name}: {e}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(e).context(format!("creating namespace {name}")),
        }
    }
}

async fn create(api: &Api<Pod>) -> anyhow::Result<(Duration, Pod)> {
    let params = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let started = Instant::now();
    let pod = api.create(&params, &pod()).await?;
    Ok((started.elapsed(), pod))
}

fn summary(samples: &mut [Duration]) -> serde_json::Value {
    samples.sort();
    let ms = |d: Duration| (d.as_secs_f64() * 1e6).round() / 1e3;
    let at = |q: f64| {
        let i = ((q * samples.len() as f64).ceil() as usize).clamp(1, samples.len()) - 1;
        ms(samples[i])
    };
    let mean = samples.iter().map(|d| d.as_secs_f64()).sum::<f64>() / samples.len() as f64;
    serde_json::json!({
        "count": samples.len(),
        "p50_ms": at(0.50), "p90_ms": at(0.90), "p99_ms": at(0.99),
        "mean_ms": (mean * 1e6).round() / 1e3,
    })
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let kubeconfig = Kubeconfig::read_from(&args.kubeconfig)?;
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
    let client = Client::try_from(config)?;
    namespace(
        &client,
        ENROLLED,
        serde_json::json!({"istio-injection": "enabled"}),
    )
    .await?;
    namespace(&client, PLAIN, serde_json::json!({})).await?;
    let enrolled: Api<Pod> = Api::namespaced(client.clone(), ENROLLED);
    let plain: Api<Pod> = Api::namespaced(client.clone(), PLAIN);

    // The injector's caches learn the new namespace within moments; right after an install
    // the `default` tag the label names may not exist yet, and the injector refuses (fails
    // closed, naming the fix) until the operator's first start has made it.
    let start = Instant::now();
    loop {
        let outcome = create(&enrolled).await;
        if matches!(&outcome, Ok((_, pod)) if injected(pod)) {
            break;
        }
        if start.elapsed() > Duration::from_secs(120) {
            let why = match outcome {
                Ok(_) => "created without a proxy".to_string(),
                Err(e) => e.to_string(),
            };
            bail!("pods in {ENROLLED} are not injected after 120 s ({why}): is weft deployed?");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    for _ in 0..args.warmup {
        create(&enrolled).await?;
        create(&plain).await?;
    }
    let (mut with, mut without) = (Vec::new(), Vec::new());
    for i in 0..args.pods {
        // Alternate which goes first, so neither always follows the other.
        let order = if i % 2 == 0 {
            [(&enrolled, true), (&plain, false)]
        } else {
            [(&plain, false), (&enrolled, true)]
        };
        for (api, expect) in order {
            let (took, pod) = create(api).await?;
            if injected(&pod) != expect {
                bail!(
                    "a pod in {} was injected={}",
                    api_ns(expect),
                    injected(&pod)
                );
            }
            if expect { &mut with } else { &mut without }.push(took);
        }
    }
    let (w, wo) = (summary(&mut with), summary(&mut without));
    let added = |q: &str| {
        let v = w[q].as_f64().unwrap_or_default() - wo[q].as_f64().unwrap_or_default();
        (v * 1e3).round() / 1e3
    };
    let result = serde_json::json!({
        "method": "POST pods?dryRun=All through the API server (kube client, HTTP/2 keep-alive), \
                   alternating an enrolled and a plain namespace; weft's webhook answers from \
                   two replicas over TLS",
        "injected": w,
        "not_injected": wo,
        "added_p50_ms": added("p50_ms"),
        "added_p90_ms": added("p90_ms"),
        "added_p99_ms": added("p99_ms"),
    });
    std::fs::write(&args.out, serde_json::to_vec_pretty(&result)?)?;
    println!("{}", serde_json::to_string_pretty(&result)?);
    let namespaces: Api<Namespace> = Api::all(client);
    for name in [ENROLLED, PLAIN] {
        let _ = namespaces.delete(name, &DeleteParams::default()).await;
    }
    Ok(())
}

fn api_ns(enrolled: bool) -> &'static str {
    if enrolled { ENROLLED } else { PLAIN }
}
