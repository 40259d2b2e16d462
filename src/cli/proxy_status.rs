//! `weft proxy-status`: every meshed pod with the operator replica it streams from, whether
//! it runs the config that replica would send now (SYNCED) or an older one (STALE), and when
//! its certificate expires. Each replica is asked through the API server's pod proxy
//! (`/debug/proxies` on 15014) and the answers merged; versions are content hashes, so they
//! compare across replicas. Meshed pods no replica knows are listed as NOT CONNECTED.
//!
//! `weft describe pod`: a pod's revision, identity and effective mTLS mode per port, and which
//! policy decided it (the operator's `discovery::policy`, evaluated here from the same objects).

use std::collections::BTreeMap;
use std::sync::Arc;

use clap::Args;
use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::{Api, Client};
use serde::Serialize;

use super::error::CliError;
use super::inventory::{self, MeshArgs};
use super::output::{self, ListArgs, Row};
use crate::api::{MeshConfig, PeerAuthentication};
use crate::contract;
use crate::discovery::{MeshIndex, MeshView, ProxyList, ProxyRecord};

#[derive(Debug, Args)]
pub struct ProxyStatusArgs {
    /// Only pods of this namespace (default: all namespaces).
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    #[command(flatten)]
    pub list: ListArgs,
    /// Print this replica's /debug/proxies (run inside an operator pod by weft proxy-status).
    #[arg(long, hide = true)]
    pub this_replica: bool,
    /// The operator's admin port (its WEFT_ADMIN_ADDR, which an exec'd command inherits).
    #[arg(long, hide = true, env = "WEFT_ADMIN_ADDR", default_value = crate::discovery::server::ADMIN_ADDR)]
    pub admin_addr: std::net::SocketAddr,
}

/// Largest answer read from one replica through exec.
const MAX_REPLICA_ANSWER_BYTES: u64 = 16 * 1024 * 1024;

/// One row of `weft proxy-status`.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyStatusRow {
    pub namespace: String,
    pub pod: String,
    pub revision: String,
    /// SYNCED, STALE, REJECTED, NOT ACKED or NOT CONNECTED.
    pub config: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acked: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub operator: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_expires: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rejected_reason: Option<String>,
    /// What the operator left out of this proxy's config, the proxy lacking a feature the
    /// config uses (an older revision; [`crate::snapshot::compat`]).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub lowered: Vec<String>,
}

impl Row for ProxyStatusRow {
    const HEADERS: &'static [&'static str] = &[
        "name",
        "revision",
        "config",
        "version",
        "operator",
        "cert expires",
    ];

    fn cells(&self) -> Vec<String> {
        let short = |v: &Option<String>| {
            v.as_deref()
                .map(|v| v.trim_start_matches("sha256:").chars().take(12).collect())
                .unwrap_or_else(|| "-".into())
        };
        vec![
            format!("{}.{}", self.pod, self.namespace),
            self.revision.clone(),
            self.config.clone(),
            short(&self.acked),
            self.operator.clone().unwrap_or_else(|| "-".into()),
            self.cert_expires.clone().unwrap_or_else(|| "-".into()),
        ]
    }
}

fn state(record: &ProxyRecord) -> &'static str {
    match (&record.rejected, &record.acked, &record.current) {
        (Some(_), _, _) => "REJECTED",
        (None, None, _) => "NOT ACKED",
        (None, Some(acked), Some(current)) if acked == current => "SYNCED",
        _ => "STALE",
    }
}

/// Merges the replicas' answers with the meshed pods the API server lists. Pure.
pub fn merge(meshed: &[(String, String, String)], answers: &[ProxyList]) -> Vec<ProxyStatusRow> {
    let mut rows: BTreeMap<(String, String), ProxyStatusRow> = BTreeMap::new();
    for (namespace, pod, revision) in meshed {
        rows.insert(
            (namespace.clone(), pod.clone()),
            ProxyStatusRow {
                namespace: namespace.clone(),
                pod: pod.clone(),
                revision: revision.clone(),
                config: "NOT CONNECTED".into(),
                acked: None,
                current: None,
                operator: None,
                cert_expires: None,
                rejected_reason: None,
                lowered: Vec::new(),
            },
        );
    }
    for answer in answers {
        for r in &answer.proxies {
            let key = (r.namespace.clone(), r.pod.clone());
            // Only pods the API server still lists (a stream may outlive its pod briefly).
            let Some(row) = rows.get_mut(&key) else {
                continue;
            };
            // A proxy reconnecting may briefly show on two replicas: keep the synced view.
            if row.config == "SYNCED" {
                continue;
            }
            row.config = state(r).into();
            row.acked = r.acked.clone();
            row.current = r.current.clone();
            row.operator = Some(answer.instance.clone());
            row.cert_expires = r.cert_expires.clone();
            row.rejected_reason = r.rejected.as_ref().map(|x| x.reason.clone());
            row.lowered = r.lowered.clone();
        }
    }
    rows.into_values().collect()
}

fn revision_of(pod: &Pod) -> Option<String> {
    pod.metadata
        .labels
        .as_ref()?
        .get(contract::LABEL_REVISION)
        .cloned()
}

pub async fn proxy_status(args: ProxyStatusArgs) -> Result<(), CliError> {
    if args.this_replica {
        let body = crate::discovery::server::fetch_proxies(args.admin_addr)
            .await
            .map_err(|message| CliError::BadRequest { message })?;
        print!("{}", String::from_utf8_lossy(&body));
        return Ok(());
    }
    let client = inventory::client().await?;
    let pods: Api<Pod> = match &args.namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let meshed: Vec<(String, String, String)> = pods
        .list(&ListParams::default().labels(contract::LABEL_REVISION))
        .await
        .map_err(CliError::kube("listing meshed pods"))?
        .items
        .iter()
        .filter_map(|p| {
            Some((
                p.metadata.namespace.clone()?,
                p.metadata.name.clone()?,
                revision_of(p)?,
            ))
        })
        .collect();
    let answers = ask_replicas(&client, &args.list.mesh.weft_namespace).await?;
    let rows = merge(&meshed, &answers);
    match output::render(&rows, args.list.output)? {
        Some(text) => print!("{text}"),
        None => eprintln!("No meshed pods found."),
    }
    for row in &rows {
        for note in &row.lowered {
            eprintln!(
                "note: {}.{} runs config lowered for its older proxy: {note}",
                row.pod, row.namespace
            );
        }
    }
    Ok(())
}

/// `/debug/proxies` of every operator replica, read inside each through exec.
async fn ask_replicas(client: &Client, namespace: &str) -> Result<Vec<ProxyList>, CliError> {
    let operators: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let replicas = operators
        .list(&ListParams::default().labels("app.kubernetes.io/name=weft-operator"))
        .await
        .map_err(CliError::kube(format!(
            "listing the operator pods in {namespace}"
        )))?;
    let mut answers = Vec::new();
    for pod in replicas.items {
        let Some(name) = pod.metadata.name.clone() else {
            continue;
        };
        match ask_replica(&operators, &name).await {
            Ok(list) => answers.push(list),
            // A replica that is starting or gone: the others still answer.
            Err(e) => eprintln!("warning: operator {name} did not answer: {e}"),
        }
    }
    Ok(answers)
}

async fn ask_replica(operators: &Api<Pod>, name: &str) -> Result<ProxyList, String> {
    use tokio::io::AsyncReadExt;
    let params = kube::api::AttachParams::default()
        .stdin(false)
        .stdout(true)
        .stderr(true);
    let mut process = operators
        .exec(name, ["weft", "proxy-status", "--this-replica"], &params)
        .await
        .map_err(|e| format!("exec (needs pods/exec in its namespace): {e}"))?;
    let (Some(stdout), Some(stderr)) = (process.stdout(), process.stderr()) else {
        return Err("exec gave no output streams".into());
    };
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let (mut stdout, mut stderr) = (
        stdout.take(MAX_REPLICA_ANSWER_BYTES),
        stderr.take(64 * 1024),
    );
    let (read_out, _) = tokio::join!(stdout.read_to_end(&mut out), stderr.read_to_end(&mut err),);
    read_out.map_err(|e| format!("reading its answer: {e}"))?;
    let _ = process.join().await;
    serde_json::from_slice(&out).map_err(|e| {
        format!(
            "unreadable answer ({e}): {}",
            String::from_utf8_lossy(&err).trim()
        )
    })
}

// === describe pod ===

#[derive(Debug, Args)]
pub struct DescribePodArgs {
    /// The pod's name.
    pub pod: String,
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
    /// Namespace of mesh-wide PeerAuthentications (the operator's --root-namespace).
    #[arg(long, env = "WEFT_ROOT_NAMESPACE", default_value = contract::DEFAULT_OPERATOR_NAMESPACE)]
    pub root_namespace: String,
    /// The mesh's trust domain (the operator's --trust-domain).
    #[arg(long, env = "WEFT_TRUST_DOMAIN", default_value = contract::DEFAULT_TRUST_DOMAIN)]
    pub trust_domain: String,
    #[command(flatten)]
    pub mesh: MeshArgs,
}

/// What `weft describe pod` prints, from the same index the operator builds.
pub fn describe(index: &MeshIndex, namespace: &str, pod: &str) -> Option<String> {
    let p = index.pod(namespace, pod)?;
    let mut out = String::new();
    out.push_str(&format!("Pod:        {}/{}\n", p.namespace, p.name));
    out.push_str(&format!("Revision:   {}\n", p.revision));
    out.push_str(&format!("Identity:   {}\n", p.identity));
    out.push_str(&format!("Workload:   {}\n", p.workload.name));
    out.push_str(&format!(
        "mTLS:       {} ({})\n",
        mode_name(p.modes.default_mode),
        p.modes.source
    ));
    let mut ports: Vec<u16> = p.ports.clone();
    ports.extend(p.modes.ports.keys());
    ports.sort();
    ports.dedup();
    if !ports.is_empty() {
        out.push_str("Ports:\n");
        for port in ports {
            let (mode, why) = match p.modes.ports.get(&port) {
                Some((m, why)) => (*m, why.as_str()),
                None => (p.modes.default_mode, p.modes.source.as_str()),
            };
            out.push_str(&format!("  {port:<6} {:<11} {why}\n", mode_name(mode)));
        }
    }
    Some(out)
}

fn mode_name(mode: crate::snapshot::MtlsMode) -> &'static str {
    match mode {
        crate::snapshot::MtlsMode::Permissive => "PERMISSIVE",
        crate::snapshot::MtlsMode::Strict => "STRICT",
        crate::snapshot::MtlsMode::Disable => "DISABLE",
    }
}

pub async fn describe_pod(args: DescribePodArgs) -> Result<(), CliError> {
    let client = inventory::client().await?;
    let pod = Api::<Pod>::namespaced(client.clone(), &args.namespace)
        .get(&args.pod)
        .await
        .map_err(CliError::kube(format!(
            "reading pod {}/{}",
            args.namespace, args.pod
        )))?;
    if revision_of(&pod).is_none() {
        println!(
            "Pod {}/{} has no weft proxy (no {} label): its traffic is not meshed. Enrol its \
             namespace (weft namespace add {}) and restart the pod.",
            args.namespace,
            args.pod,
            contract::LABEL_REVISION,
            args.namespace
        );
        return Ok(());
    }
    let revisions = Api::<MeshConfig>::namespaced(client.clone(), &args.mesh.weft_namespace)
        .list(&ListParams::default())
        .await
        .map_err(CliError::kube("listing revisions"))?
        .items;
    // Istio's API may be absent: no policies then.
    let policies = Api::<PeerAuthentication>::all(client.clone())
        .list(&ListParams::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default();
    let view = MeshView {
        trust_domain: args.trust_domain.clone(),
        root_namespace: args.root_namespace.clone(),
        cluster_domain: "cluster.local".into(),
        pods: vec![Arc::new(pod)],
        revisions: revisions.into_iter().map(Arc::new).collect(),
        peer_authentications: policies.into_iter().map(Arc::new).collect(),
        ..Default::default()
    };
    let index = MeshIndex::build(&view);
    for p in &index.problems {
        eprintln!(
            "warning: {} {}/{} is not applied as written: {}",
            p.kind, p.namespace, p.name, p.message
        );
    }
    match describe(&index, &args.namespace, &args.pod) {
        Some(text) => print!("{text}"),
        None => println!("Pod {}/{} is not meshed.", args.namespace, args.pod),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::stream::Rejected;

    fn record(pod: &str, acked: Option<&str>, current: Option<&str>) -> ProxyRecord {
        ProxyRecord {
            namespace: "pets".into(),
            pod: pod.into(),
            identity: "spiffe://cluster.local/ns/pets/sa/web".into(),
            revision: "stable".into(),
            connected_at: "2026-11-23T00:00:00Z".into(),
            sent: current.map(String::from),
            acked: acked.map(String::from),
            rejected: None,
            current: current.map(String::from),
            cert_expires: Some("2026-11-24T00:00:00Z".into()),
            lowered: Vec::new(),
        }
    }

    #[test]
    fn replicas_answers_merge_into_one_row_per_meshed_pod() {
        let meshed = vec![
            ("pets".to_string(), "a".to_string(), "stable".to_string()),
            ("pets".to_string(), "b".to_string(), "stable".to_string()),
            ("pets".to_string(), "c".to_string(), "stable".to_string()),
            ("pets".to_string(), "d".to_string(), "stable".to_string()),
        ];
        let mut rejected = record("d", Some("v1"), Some("v2"));
        rejected.rejected = Some(Rejected {
            version: "v2".into(),
            reason: "bad".into(),
        });
        let answers = vec![
            ProxyList {
                instance: "op-1".into(),
                proxies: vec![
                    record("a", Some("v1"), Some("v1")),
                    record("gone", Some("v1"), Some("v1")),
                ],
            },
            ProxyList {
                instance: "op-2".into(),
                proxies: vec![record("b", Some("v1"), Some("v2")), rejected],
            },
        ];
        let rows = merge(&meshed, &answers);
        let states: Vec<(&str, &str)> = rows
            .iter()
            .map(|r| (r.pod.as_str(), r.config.as_str()))
            .collect();
        assert_eq!(
            states,
            [
                ("a", "SYNCED"),
                ("b", "STALE"),
                ("c", "NOT CONNECTED"),
                ("d", "REJECTED")
            ]
        );
        assert_eq!(rows[0].operator.as_deref(), Some("op-1"));
        assert_eq!(rows[3].rejected_reason.as_deref(), Some("bad"));
    }

    #[test]
    fn describe_names_the_policy_behind_each_port() {
        let mut view = crate::discovery::model::tests::view();
        view.peer_authentications = vec![Arc::new(
            serde_json::from_value(serde_json::json!({
                "apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
                "metadata": {"namespace": "pets", "name": "db"},
                "spec": {"selector": {"matchLabels": {"app": "db"}}, "mtls": {"mode": "STRICT"},
                         "portLevelMtls": {"9090": {"mode": "DISABLE"}}}
            }))
            .unwrap(),
        )];
        let index = MeshIndex::build(&view);
        let text = describe(&index, "pets", "db-1").unwrap();
        assert!(
            text.contains("Identity:   spiffe://cluster.local/ns/pets/sa/db"),
            "{text}"
        );
        assert!(
            text.contains("8080   STRICT      PeerAuthentication pets/db (workload)"),
            "{text}"
        );
        assert!(text.contains("9090   DISABLE"), "{text}");
        assert!(describe(&index, "pets", "legacy-1").is_none());
    }
}
