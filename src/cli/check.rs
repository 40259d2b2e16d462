//! `weft check`: is the mesh installed and healthy? One line per check, `✓` when it holds, `✗`
//! when it does not (the exit code is then non-zero) and `‼` for what needs attention but
//! breaks nothing; every line that is not `✓` carries a hint saying what to do. Each verdict
//! is a pure function of what the cluster answered; the API calls are the thin layer at the
//! end of the file.

use std::collections::BTreeMap;
use std::time::Duration;

use clap::Args;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Container, Namespace, Pod, PodSpec, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::version::Info;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, Client};
use serde::Serialize;

use super::check_authz;
use super::check_traffic;
use super::error::CliError;
use super::inventory::{self, Analysis, Catalog, Enrolment, Inventory, MeshArgs, Resolution};
use crate::contract;
use crate::discovery::MeshIndex;
use crate::operator::ca_bundle::{MUTATING_WEBHOOK, VALIDATING_WEBHOOK};
use crate::operator::leader::{LEASE_DURATION_SECONDS, LEASE_NAME};
use crate::pki;

/// The oldest Kubernetes weft supports (CEL rules, `matchConditions`, sidecar containers).
pub const MIN_KUBERNETES: (u32, u32) = (1, 29);
/// The operator's Deployment and the label its pods carry.
pub const OPERATOR_DEPLOYMENT: &str = "weft-operator";
pub const OPERATOR_SELECTOR: &str = "app.kubernetes.io/name=weft-operator";
/// A Lease renewed within its duration plus this is live (client clocks drift a little).
const LEASE_SLACK: Duration = Duration::from_secs(5);
/// How long the dry-run probe in a fresh namespace waits for the operator's caches to see it.
const PROBE_PATIENCE: Duration = Duration::from_secs(15);

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Fail when the mesh root certificate expires within this many days.
    #[arg(long, env = "WEFT_CHECK_MIN_CERT_DAYS", default_value_t = 30)]
    pub min_cert_days: u32,
    /// Namespace of mesh-wide authorization policies (the operator's --root-namespace).
    #[arg(long, env = "WEFT_ROOT_NAMESPACE", default_value = contract::DEFAULT_OPERATOR_NAMESPACE)]
    pub root_namespace: String,
    #[command(flatten)]
    pub mesh: MeshArgs,
}

// === Verdicts ===

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pass,
    /// Needs attention, but nothing is broken: does not fail `weft check`.
    Warn,
    Fail,
}

impl Status {
    pub fn symbol(self) -> &'static str {
        match self {
            Status::Pass => "✓",
            Status::Warn => "‼",
            Status::Fail => "✗",
        }
    }
}

/// One line of `weft check`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Verdict {
    pub check: &'static str,
    pub status: Status,
    pub detail: String,
    /// What to do; set whenever the status is not `Pass`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

impl Verdict {
    pub fn pass(check: &'static str, detail: impl Into<String>) -> Self {
        Verdict {
            check,
            status: Status::Pass,
            detail: detail.into(),
            hint: None,
        }
    }

    pub fn fail(check: &'static str, detail: impl Into<String>, hint: impl Into<String>) -> Self {
        Verdict {
            check,
            status: Status::Fail,
            detail: detail.into(),
            hint: Some(hint.into()),
        }
    }

    pub fn warn(check: &'static str, detail: impl Into<String>, hint: impl Into<String>) -> Self {
        Verdict {
            status: Status::Warn,
            ..Verdict::fail(check, detail, hint)
        }
    }

    /// `✓ check: detail`, and the hint on an indented line below.
    pub fn render(&self) -> String {
        let mut out = format!("{} {}: {}\n", self.status.symbol(), self.check, self.detail);
        if let Some(hint) = &self.hint {
            out.push_str(&format!("    hint: {hint}\n"));
        }
        out
    }
}

const API: &str = "Kubernetes API";
const CRDS: &str = "CRDs";
const OPERATOR: &str = "operator pods ready";
const LEADER: &str = "leader elected";
const WEBHOOK: &str = "injector reachable";
const CA_BUNDLE: &str = "webhook caBundle is the mesh root";
const ROOT_VALIDITY: &str = "root certificate valid";
const CA_SECRET: &str = "mesh CA Secret";
const LABELS: &str = "namespace labels agree";
const RESOLVES: &str = "enrolled namespaces resolve";
const STALE: &str = "pods on their namespace's revision";
const INVENTORY: &str = "mesh inventory";

const INSTALL_HINT: &str = "install weft: kubectl apply --server-side -k config/default";

/// Kubernetes `major.minor` from the version endpoint; cloud providers append to the minor
/// (`29+`).
pub fn kubernetes_version(info: &Info) -> Option<(u32, u32)> {
    let digits = |s: &str| {
        let d: String = s.chars().take_while(char::is_ascii_digit).collect();
        d.parse().ok()
    };
    Some((digits(&info.major)?, digits(&info.minor)?))
}

pub fn api_server(answer: Result<&Info, String>) -> Verdict {
    let (min_major, min_minor) = MIN_KUBERNETES;
    match answer {
        Err(e) => Verdict::fail(
            API,
            format!("the API server did not answer: {e}"),
            "check the kubeconfig (KUBECONFIG, kubectl config current-context) and that the \
             cluster is up",
        ),
        Ok(info) => match kubernetes_version(info) {
            Some(v) if v >= MIN_KUBERNETES => {
                Verdict::pass(API, format!("reachable, Kubernetes {}", info.git_version))
            }
            Some(_) => Verdict::fail(
                API,
                format!(
                    "Kubernetes {} is older than weft supports",
                    info.git_version
                ),
                format!("upgrade the cluster to Kubernetes {min_major}.{min_minor} or newer"),
            ),
            None => Verdict::fail(
                API,
                format!(
                    "cannot read the version {:?}.{:?} the API server reports",
                    info.major, info.minor
                ),
                format!("weft needs Kubernetes {min_major}.{min_minor} or newer"),
            ),
        },
    }
}

/// Installed and current: the cluster serves the same versions with the same schemas as the
/// CRDs this `weft` generates (`weft crds`).
pub fn crd(
    expected: &CustomResourceDefinition,
    served: Option<&CustomResourceDefinition>,
) -> Verdict {
    let name = expected.metadata.name.clone().unwrap_or_default();
    let Some(served) = served else {
        return Verdict::fail(CRDS, format!("{name} is not installed"), INSTALL_HINT);
    };
    let schemas = |crd: &CustomResourceDefinition| -> BTreeMap<String, serde_json::Value> {
        crd.spec
            .versions
            .iter()
            .map(|v| {
                let schema = v
                    .schema
                    .as_ref()
                    .and_then(|s| serde_json::to_value(s).ok())
                    .unwrap_or_default();
                (v.name.clone(), schema)
            })
            .collect()
    };
    let (want, have) = (schemas(expected), schemas(served));
    if want.keys().ne(have.keys()) {
        return Verdict::fail(
            CRDS,
            format!(
                "{name} serves versions {} but this weft has {}",
                have.keys().cloned().collect::<Vec<_>>().join(", "),
                want.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
            "apply the CRDs of this weft version: kubectl apply --server-side -k config/crd",
        );
    }
    let differing: Vec<&str> = want
        .iter()
        .filter(|(version, schema)| have.get(*version) != Some(*schema))
        .map(|(version, _)| version.as_str())
        .collect();
    if !differing.is_empty() {
        return Verdict::fail(
            CRDS,
            format!(
                "{name} is installed with another schema ({}) than this weft's",
                differing.join(", ")
            ),
            "apply the CRDs of this weft version (kubectl apply --server-side -k config/crd), \
             or use the weft CLI of the installed version",
        );
    }
    Verdict::pass(CRDS, format!("{name} installed and current"))
}

pub fn operator_pods(deployment: Option<&Deployment>, namespace: &str) -> Verdict {
    let Some(deployment) = deployment else {
        return Verdict::fail(
            OPERATOR,
            format!("Deployment {namespace}/{OPERATOR_DEPLOYMENT} does not exist"),
            INSTALL_HINT,
        );
    };
    let desired = deployment.spec.replicas.unwrap_or(1);
    let ready = deployment
        .status
        .as_ref()
        .and_then(|s| s.ready_replicas)
        .unwrap_or(0);
    if desired == 0 {
        return Verdict::fail(
            OPERATOR,
            format!("Deployment {namespace}/{OPERATOR_DEPLOYMENT} is scaled to 0"),
            format!("kubectl -n {namespace} scale deployment/{OPERATOR_DEPLOYMENT} --replicas=2"),
        );
    }
    if ready < desired {
        return Verdict::fail(
            OPERATOR,
            format!("{ready} of {desired} replicas Ready"),
            format!(
                "see why: kubectl -n {namespace} get pods -l {OPERATOR_SELECTOR}, then kubectl \
                 -n {namespace} logs <pod> (its /readyz on port {} names what it waits for)",
                contract::PORT_MONITORING
            ),
        );
    }
    Verdict::pass(OPERATOR, format!("{ready} of {desired} replicas Ready"))
}

/// A replica holds the Lease, renews it, and is one of the operator pods running now.
pub fn leader(
    lease: Option<&Lease>,
    operator_pods: &[String],
    now: Timestamp,
    namespace: &str,
) -> Verdict {
    let logs = format!("kubectl -n {namespace} logs -l {OPERATOR_SELECTOR} | grep -i lease");
    let Some(spec) = lease.and_then(|l| l.spec.as_ref()) else {
        return Verdict::fail(
            LEADER,
            format!("Lease {namespace}/{LEASE_NAME} does not exist: no replica ever led"),
            format!("the operator replicas create it when they start; {logs}"),
        );
    };
    let Some(holder) = spec.holder_identity.as_deref().filter(|h| !h.is_empty()) else {
        return Verdict::fail(
            LEADER,
            format!("nobody holds Lease {namespace}/{LEASE_NAME}"),
            format!("a running replica takes it within seconds; if not, {logs}"),
        );
    };
    let duration = spec
        .lease_duration_seconds
        .and_then(|s| u64::try_from(s).ok())
        .unwrap_or(LEASE_DURATION_SECONDS as u64);
    let renewed_ago = spec.renew_time.as_ref().map(|t| {
        Duration::from_secs(u64::try_from(now.as_second() - t.0.as_second()).unwrap_or(0))
    });
    match renewed_ago {
        Some(ago) if ago <= Duration::from_secs(duration) + LEASE_SLACK => {}
        _ => {
            return Verdict::fail(
                LEADER,
                format!("{holder} holds Lease {LEASE_NAME} but stopped renewing it"),
                format!("another replica takes over after {duration} s; if none does, {logs}"),
            );
        }
    }
    if !operator_pods.iter().any(|p| p == holder) {
        return Verdict::fail(
            LEADER,
            format!("Lease {LEASE_NAME} is held by {holder}, which is not a running operator pod"),
            format!("kubectl -n {namespace} get pods -l {OPERATOR_SELECTOR}; {logs}"),
        );
    }
    Verdict::pass(LEADER, format!("{holder} holds Lease {LEASE_NAME}"))
}

/// Where the dry-run pod of the injector check is created.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProbeTarget {
    /// An existing namespace enrolled in a revision that exists.
    Enrolled(String),
    /// No such namespace: a temporary one with this label.
    Temporary { label: (String, String) },
    /// Nothing to inject with: no tag `default` and no revision at all.
    NoRevision,
}

/// An enrolled namespace whose value resolves (a pod there must be injected), else a label for
/// a temporary namespace: `istio-injection=enabled` when the `default` tag resolves, else
/// `istio.io/rev=<a revision>`.
pub fn probe_target(analysis: &Analysis, weft_namespace: &str) -> ProbeTarget {
    let enrolled = analysis.namespaces.iter().find(|ns| {
        ns.name != weft_namespace
            && !contract::NEVER_INJECTED_NAMESPACES.contains(&ns.name.as_str())
            && matches!(ns.resolution, Some(Resolution::Revision { .. }))
    });
    if let Some(ns) = enrolled {
        return ProbeTarget::Enrolled(ns.name.clone());
    }
    temporary_label(&analysis.catalog)
        .map(|label| ProbeTarget::Temporary { label })
        .unwrap_or(ProbeTarget::NoRevision)
}

fn temporary_label(catalog: &Catalog) -> Option<(String, String)> {
    if matches!(
        catalog.resolve(contract::DEFAULT_TAG),
        Resolution::Revision { .. }
    ) {
        return Some((contract::LABEL_ISTIO_INJECTION.into(), "enabled".into()));
    }
    let revision = catalog.revisions.iter().next()?;
    Some((contract::LABEL_ISTIO_REV.into(), revision.clone()))
}

/// The dry-run pod: never stored, never run.
pub fn probe_pod() -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some("weft-check-probe".into()),
            labels: Some(BTreeMap::from([("app".into(), "weft-check".into())])),
            ..Default::default()
        },
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "probe".into(),
                image: Some("weft-check-probe".into()),
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// What the API server answered to the dry-run creation in `namespace`.
pub fn injection(namespace: &str, answer: Result<&Pod, String>) -> Verdict {
    match answer {
        Ok(pod) => match inventory::injected(&pod.metadata) {
            Some(injected) => Verdict::pass(
                WEBHOOK,
                format!(
                    "a dry-run pod in namespace {namespace} was injected (revision {})",
                    injected.revision.as_deref().unwrap_or("unknown")
                ),
            ),
            None => Verdict::fail(
                WEBHOOK,
                format!(
                    "a dry-run pod in enrolled namespace {namespace} was admitted without a proxy"
                ),
                format!(
                    "check that MutatingWebhookConfiguration {MUTATING_WEBHOOK} exists and \
                     selects the namespace: kubectl get mutatingwebhookconfiguration \
                     {MUTATING_WEBHOOK} -o yaml"
                ),
            ),
        },
        Err(e) => {
            let hint = if e.contains("x509") || e.contains("certificate") {
                "the API server does not trust the webhook's certificate: see the caBundle check"
            } else if e.contains("no endpoints") || e.contains("connection refused") {
                "no operator replica serves the webhook: see the operator pods check"
            } else {
                "kubectl get events -n weft-system, and the operator logs"
            };
            Verdict::fail(
                WEBHOOK,
                format!("a dry-run pod in namespace {namespace} was refused: {e}"),
                hint,
            )
        }
    }
}

/// Every entry of one webhook configuration: (entry name, caBundle).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WebhookBundles {
    pub configuration: &'static str,
    /// `None` when the configuration does not exist.
    pub entries: Option<Vec<(String, Option<Vec<u8>>)>>,
}

/// Every entry of both webhook configurations trusts exactly the mesh root (compared as
/// certificates, so line endings or ordering of whitespace do not matter).
pub fn ca_bundle(root_pem: Option<&str>, configurations: &[WebhookBundles]) -> Verdict {
    let Some(root) = root_pem.and_then(|r| pki::certificates_from_pem(r).ok()) else {
        return Verdict::fail(
            CA_BUNDLE,
            "no mesh root is published yet, so there is nothing to compare with",
            "see the mesh CA Secret check; the operator publishes the root once its CA loads",
        );
    };
    let mut wrong = Vec::new();
    for config in configurations {
        let Some(entries) = &config.entries else {
            return Verdict::fail(
                CA_BUNDLE,
                format!(
                    "webhook configuration {} does not exist",
                    config.configuration
                ),
                INSTALL_HINT,
            );
        };
        for (entry, bundle) in entries {
            let certs = bundle
                .as_deref()
                .and_then(|b| std::str::from_utf8(b).ok())
                .and_then(|b| pki::certificates_from_pem(b).ok());
            if certs.as_ref() != Some(&root) {
                wrong.push(format!("{}/{entry}", config.configuration));
            }
        }
    }
    if wrong.is_empty() {
        return Verdict::pass(CA_BUNDLE, "every webhook entry trusts the mesh root");
    }
    Verdict::fail(
        CA_BUNDLE,
        format!("caBundle is not the mesh root in {}", wrong.join(", ")),
        "the operator's leader rewrites it within seconds; if it stays wrong, see the leader \
         check and the operator logs",
    )
}

/// The earliest expiry of the root bundle is more than `min_days` away.
pub fn root_validity(root_pem: Option<&str>, now: Timestamp, min_days: u32) -> Verdict {
    let Some(root_pem) = root_pem else {
        return Verdict::fail(
            ROOT_VALIDITY,
            "no mesh root is published yet",
            "see the mesh CA Secret check",
        );
    };
    let not_after = pki::certificates_from_pem(root_pem)
        .ok()
        .filter(|certs| !certs.is_empty())
        .and_then(|certs| {
            certs
                .iter()
                .map(|der| {
                    x509_parser::parse_x509_certificate(der)
                        .ok()
                        .map(|(_, c)| c.validity().not_after.timestamp())
                })
                .collect::<Option<Vec<i64>>>()
        })
        .and_then(|ends| ends.into_iter().min());
    let Some(not_after) = not_after else {
        return Verdict::fail(
            ROOT_VALIDITY,
            format!(
                "the published root ({}) is not readable PEM",
                contract::ROOT_CERT_CONFIGMAP
            ),
            "see the mesh CA Secret check; `weft ca reset` starts a new root",
        );
    };
    let expires = Timestamp::from_second(not_after)
        .map(|t| t.to_string())
        .unwrap_or_else(|_| not_after.to_string());
    let days_left = (not_after - now.as_second()).div_euclid(86_400);
    if days_left < i64::from(min_days) {
        let detail = if not_after <= now.as_second() {
            format!("the mesh root expired at {expires}")
        } else {
            format!("the mesh root expires in {days_left} days ({expires})")
        };
        return Verdict::fail(
            ROOT_VALIDITY,
            detail,
            "rotate the root before it expires (a new plug-in CA in Secret cacerts, or \
             `weft ca reset`); every proxy then needs a restart",
        );
    }
    Verdict::pass(
        ROOT_VALIDITY,
        format!("for {days_left} more days (until {expires})"),
    )
}

/// The Secret the operator signs with is readable and holds the root proxies trust.
pub fn ca_secret(
    cacerts: Option<&BTreeMap<String, Vec<u8>>>,
    weft_ca: Option<&BTreeMap<String, Vec<u8>>>,
    published_root: Option<&str>,
    namespace: &str,
) -> Verdict {
    let (secret, loaded) = match (cacerts, weft_ca) {
        (Some(data), _) => (
            pki::PLUGIN_CA_SECRET,
            pki::MeshCa::from_cacerts_secret(data),
        ),
        (None, Some(data)) => (pki::WEFT_CA_SECRET, pki::MeshCa::from_weft_ca_secret(data)),
        (None, None) if published_root.is_some() => {
            return Verdict::fail(
                CA_SECRET,
                format!(
                    "Secret {namespace}/{} is missing but a root is published; weft will not \
                     replace a root silently",
                    pki::WEFT_CA_SECRET
                ),
                "restore the Secret from a backup, or run `weft ca reset` (every proxy then \
                 needs a restart)",
            );
        }
        (None, None) => {
            return Verdict::fail(
                CA_SECRET,
                format!("no CA Secret in {namespace} yet"),
                "the operator creates weft-ca on its first start: see the operator pods check",
            );
        }
    };
    match loaded {
        Err(e) => Verdict::fail(
            CA_SECRET,
            format!("Secret {namespace}/{secret} is corrupted: {e}"),
            "fix the Secret, or run `weft ca reset` to start a new root (every proxy then \
             needs a restart)",
        ),
        Ok(ca) => match published_root {
            // The published bundle holds this root, beside any external issuer's and, during
            // a root rotation, the other root of the rotation (issue 24).
            Some(root) if !root.contains(ca.roots_pem().trim()) => Verdict::fail(
                CA_SECRET,
                format!(
                    "Secret {namespace}/{secret} holds a different root than the one proxies \
                     trust ({})",
                    contract::ROOT_CERT_CONFIGMAP
                ),
                "restore the Secret the root came from, or run `weft ca reset`",
            ),
            _ => Verdict::pass(CA_SECRET, format!("Secret {namespace}/{secret} loads")),
        },
    }
}

/// Namespaces whose enrolment labels disagree (the controllers also put a Warning Event on them).
pub fn label_conflicts(namespaces: &[ObjectMeta], mesh_name: &str) -> Verdict {
    let conflicts: Vec<String> = namespaces
        .iter()
        .filter_map(|ns| {
            let labels = ns.labels.as_ref()?;
            let message = crate::controllers::index::namespace_conflict(labels, mesh_name)?;
            Some(format!(
                "{}: {message}",
                ns.name.as_deref().unwrap_or_default()
            ))
        })
        .collect();
    if conflicts.is_empty() {
        return Verdict::pass(LABELS, "no namespace carries conflicting enrolment labels");
    }
    Verdict::fail(
        LABELS,
        format!(
            "{} namespace(s) with conflicting labels; {}",
            conflicts.len(),
            conflicts.join("; ")
        ),
        "remove the label you do not mean (kubectl label namespace <name> <key>-), or set it \
         with `weft namespace add`",
    )
}

/// Enrolled namespaces whose tag or revision does not exist: their new pods are refused.
pub fn unresolved(analysis: &Analysis) -> Verdict {
    let broken: Vec<String> = analysis
        .namespaces
        .iter()
        .filter_map(|ns| {
            let Enrolment::Enrolled { label, .. } = &ns.enrolment else {
                return None;
            };
            match ns.resolution.as_ref()? {
                Resolution::Revision { .. } => None,
                Resolution::TagToMissingRevision { tag, revision } => Some(format!(
                    "{} ({label}: tag {tag} points at missing revision {revision})",
                    ns.name
                )),
                Resolution::Unknown => {
                    Some(format!("{} ({label}: no such tag or revision)", ns.name))
                }
            }
        })
        .collect();
    if broken.is_empty() {
        return Verdict::pass(RESOLVES, "every enrolled namespace resolves to a revision");
    }
    Verdict::fail(
        RESOLVES,
        format!("new pods are refused in {}", broken.join(", ")),
        format!(
            "create the tag or revision (weft tag set <tag> --revision <revision>), or enrol \
             the namespace in one that exists. {}",
            analysis.catalog.describe()
        ),
    )
}

/// Pods injected by another revision than the one they would get now: they move on restart.
pub fn stale_pods(analysis: &Analysis) -> Verdict {
    let stale: Vec<String> = analysis
        .pods
        .iter()
        .filter(|p| p.is_stale())
        .map(|p| format!("{}/{}", p.namespace, p.name))
        .collect();
    if stale.is_empty() {
        return Verdict::pass(
            STALE,
            "no pod runs a revision its namespace moved away from",
        );
    }
    Verdict::warn(
        STALE,
        format!(
            "{} pod(s) run an older revision than their namespace resolves to: {}",
            stale.len(),
            super::output::list_cell(&stale)
        ),
        "restart their workloads when ready (kubectl rollout restart deployment -n <namespace>); \
         `weft revision list` shows which revision each runs",
    )
}

/// What `weft check` analyses: namespaces and pods being deleted are left out (a namespace
/// a test or a rollout is tearing down is no finding).
pub fn without_terminating(mut inventory: Inventory) -> Inventory {
    let terminating: Vec<String> = inventory
        .namespaces
        .iter()
        .filter(|ns| ns.deletion_timestamp.is_some())
        .filter_map(|ns| ns.name.clone())
        .collect();
    inventory
        .namespaces
        .retain(|ns| ns.deletion_timestamp.is_none());
    inventory.pods.retain(|p| {
        p.deletion_timestamp.is_none()
            && !terminating.iter().any(|t| Some(t) == p.namespace.as_ref())
    });
    inventory
}

// === Running the checks (the thin cluster layer) ===

pub async fn run(args: CheckArgs) -> Result<(), CliError> {
    let client = inventory::client().await?;
    let mut failed = 0;
    let mut report = |v: Verdict| {
        if v.status == Status::Fail {
            failed += 1;
        }
        print!("{}", v.render());
    };
    let version = client.apiserver_version().await.map_err(|e| e.to_string());
    let api = api_server(version.as_ref().map_err(Clone::clone));
    let reachable = version.is_ok();
    report(api);
    if reachable {
        for verdict in checks(&client, &args).await {
            report(verdict);
        }
    }
    if failed > 0 {
        return Err(CliError::ChecksFailed { failed });
    }
    println!("All checks passed.");
    Ok(())
}

async fn checks(client: &Client, args: &CheckArgs) -> Vec<Verdict> {
    let ns = args.mesh.weft_namespace.as_str();
    let mut out = Vec::new();

    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for expected in crate::api::crds() {
        let name = expected.metadata.name.clone().unwrap_or_default();
        out.push(match crds.get_opt(&name).await {
            Ok(served) => crd(&expected, served.as_ref()),
            Err(e) => failed_call(CRDS, format!("reading CRD {name}"), e),
        });
    }

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    out.push(match deployments.get_opt(OPERATOR_DEPLOYMENT).await {
        Ok(d) => operator_pods(d.as_ref(), ns),
        Err(e) => failed_call(
            OPERATOR,
            format!("reading Deployment {OPERATOR_DEPLOYMENT}"),
            e,
        ),
    });

    let leases: Api<Lease> = Api::namespaced(client.clone(), ns);
    out.push(
        match (
            leases.get_opt(LEASE_NAME).await,
            running_operators(client, ns).await,
        ) {
            (Ok(lease), Ok(pods)) => leader(lease.as_ref(), &pods, Timestamp::now(), ns),
            (Err(e), _) => failed_call(LEADER, format!("reading Lease {LEASE_NAME}"), e),
            (_, Err(e)) => failed_call(LEADER, "listing the operator pods".into(), e),
        },
    );

    let root = published_root(client, ns).await;
    out.push(ca_secret_check(client, ns, root.as_deref()).await);
    out.push(match webhook_bundles(client).await {
        Ok(configurations) => ca_bundle(root.as_deref(), &configurations),
        Err(e) => failed_call(CA_BUNDLE, "reading the webhook configurations".into(), e),
    });
    out.push(root_validity(
        root.as_deref(),
        Timestamp::now(),
        args.min_cert_days,
    ));

    match inventory::load(client, &args.mesh, true).await {
        Ok(inv) => {
            let inv = without_terminating(inv);
            let analysis = inv.analyse();
            out.push(probe_injector(client, &probe_target(&analysis, ns)).await);
            out.push(label_conflicts(&inv.namespaces, &args.mesh.mesh_name));
            out.push(unresolved(&analysis));
            out.push(stale_pods(&analysis));
        }
        Err(e) => out.push(Verdict::fail(
            INVENTORY,
            format!("cannot read the mesh: {e}"),
            "the injector, label and stale-pod checks need weft's CRDs and read access to \
             namespaces and pods",
        )),
    }
    out.push(super::check_issuer::check(client, ns).await);
    out.extend(authorization(client, args).await);
    out
}

/// The authorization checks over the index the operator would build from the same objects
/// (as `weft authz explain` builds it). They only warn, so a read that fails is a warning too.
async fn authorization(client: &Client, args: &CheckArgs) -> Vec<Verdict> {
    match super::inventory::mesh_view(client, &args.root_namespace, &args.mesh.weft_namespace).await
    {
        Ok(view) => {
            let index = MeshIndex::build(&view);
            let mut out = check_authz::check(&index);
            out.extend(check_traffic::check(&index));
            // Pods without a proxy (no revision label), still running.
            let unmeshed: Vec<String> = view
                .pods
                .iter()
                .filter(|p| {
                    let labels = p.metadata.labels.as_ref();
                    !labels.is_some_and(|l| l.contains_key(contract::LABEL_REVISION))
                        && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
                })
                .filter_map(|p| {
                    let m = &p.metadata;
                    Some(format!(
                        "{}/{}",
                        m.namespace.as_deref()?,
                        m.name.as_deref()?
                    ))
                })
                .collect();
            out.push(super::check_egress::check(
                &index,
                &unmeshed,
                &args.mesh.weft_namespace,
            ));
            out
        }
        Err(e) => [
            check_authz::UNREACHABLE,
            check_authz::HTTP_ON_TCP,
            check_traffic::TLS_CONFLICT,
            super::check_egress::EGRESS_BYPASS,
        ]
        .into_iter()
        .map(|check| {
            Verdict::warn(
                check,
                format!("not checked: {e}"),
                "these checks read pods, Services, EndpointSlices, MeshConfigs and \
                     authorization policies in every namespace; run weft check as a cluster \
                     admin",
            )
        })
        .collect(),
    }
}

/// A failed API call as a verdict, with what to do about a refusal.
fn failed_call(check: &'static str, action: String, e: kube::Error) -> Verdict {
    let hint = match &e {
        kube::Error::Api(s) if s.code == 403 => {
            "your kubeconfig's user may not do this; run weft check as a cluster admin"
        }
        _ => "retry; if it persists, check the API server",
    };
    Verdict::fail(check, format!("{action}: {e}"), hint)
}

async fn running_operators(client: &Client, ns: &str) -> Result<Vec<String>, kube::Error> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    Ok(pods
        .list(&ListParams::default().labels(OPERATOR_SELECTOR))
        .await?
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        .filter_map(|p| p.metadata.name)
        .collect())
}

/// The root proxies trust: ConfigMap `weft-ca-root-cert` in the weft namespace, else the CA
/// Secret's root.
async fn published_root(client: &Client, ns: &str) -> Option<String> {
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    if let Ok(Some(cm)) = configmaps.get_opt(contract::ROOT_CERT_CONFIGMAP).await
        && let Some(root) = cm.data.and_then(|mut d| d.remove(contract::ROOT_CERT_KEY))
    {
        return Some(root);
    }
    let (cacerts, weft_ca) = ca_secrets(client, ns).await.ok()?;
    let text = |data: BTreeMap<String, Vec<u8>>, key: &str| {
        data.get(key)
            .and_then(|b| String::from_utf8(b.clone()).ok())
    };
    match (cacerts, weft_ca) {
        (Some(data), _) => text(data, pki::PLUGIN_ROOT_CERT_KEY),
        (None, Some(data)) => text(data, pki::WEFT_CA_CERT_KEY),
        (None, None) => None,
    }
}

type SecretData = Option<BTreeMap<String, Vec<u8>>>;

async fn ca_secrets(client: &Client, ns: &str) -> Result<(SecretData, SecretData), kube::Error> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let data = |s: Option<Secret>| {
        s.map(|s| {
            s.data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0))
                .collect()
        })
    };
    // A cacerts a rotation retired (emptied, weft.dev/retired-by) is as good as absent.
    let cacerts = secrets
        .get_opt(pki::PLUGIN_CA_SECRET)
        .await?
        .filter(|s| !crate::operator::rotation::retired(s));
    let weft_ca = secrets.get_opt(pki::WEFT_CA_SECRET).await?;
    Ok((data(cacerts), data(weft_ca)))
}

async fn ca_secret_check(client: &Client, ns: &str, root: Option<&str>) -> Verdict {
    match ca_secrets(client, ns).await {
        Ok((cacerts, weft_ca)) => ca_secret(cacerts.as_ref(), weft_ca.as_ref(), root, ns),
        // Reading Secrets is often reserved to admins: say so instead of failing.
        Err(kube::Error::Api(s)) if s.code == 403 => Verdict::warn(
            CA_SECRET,
            format!("not checked: your user may not read Secrets in {ns}"),
            "run weft check as a cluster admin to check the CA Secret",
        ),
        Err(e) => failed_call(CA_SECRET, format!("reading the CA Secrets in {ns}"), e),
    }
}

async fn webhook_bundles(client: &Client) -> Result<Vec<WebhookBundles>, kube::Error> {
    let mutating: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let validating: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
    let injector = mutating.get_opt(MUTATING_WEBHOOK).await?.map(|c| {
        c.webhooks
            .unwrap_or_default()
            .into_iter()
            .map(|w| (w.name, w.client_config.ca_bundle.map(|b| b.0)))
            .collect()
    });
    let validator = validating.get_opt(VALIDATING_WEBHOOK).await?.map(|c| {
        c.webhooks
            .unwrap_or_default()
            .into_iter()
            .map(|w| (w.name, w.client_config.ca_bundle.map(|b| b.0)))
            .collect()
    });
    Ok(vec![
        WebhookBundles {
            configuration: MUTATING_WEBHOOK,
            entries: injector,
        },
        WebhookBundles {
            configuration: VALIDATING_WEBHOOK,
            entries: validator,
        },
    ])
}

/// A dry-run pod creation through the API server, which calls the injector like for any pod.
async fn probe_injector(client: &Client, target: &ProbeTarget) -> Verdict {
    match target {
        ProbeTarget::Enrolled(ns) => {
            let answer = dry_run_pod(client, ns).await;
            injection(ns, answer.as_ref().map_err(Clone::clone))
        }
        ProbeTarget::NoRevision => Verdict::fail(
            WEBHOOK,
            "not probed: there is no revision (MeshConfig) to inject",
            "the operator creates revision `stable` and tag `default` on its first start: see \
             the operator pods check",
        ),
        ProbeTarget::Temporary { label } => {
            let name = temporary_namespace_name();
            let namespaces: Api<Namespace> = Api::all(client.clone());
            let namespace = Namespace {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    labels: Some(BTreeMap::from([
                        label.clone(),
                        ("app.kubernetes.io/managed-by".into(), "weft-check".into()),
                    ])),
                    ..Default::default()
                },
                ..Default::default()
            };
            if let Err(e) = namespaces.create(&PostParams::default(), &namespace).await {
                return failed_call(
                    WEBHOOK,
                    format!("creating the temporary namespace {name} to probe in"),
                    e,
                );
            }
            // The operator's caches and the namespace's default ServiceAccount appear shortly
            // after the namespace: retry until the pod is injected or time is up.
            let started = std::time::Instant::now();
            let verdict = loop {
                let answer = dry_run_pod(client, &name).await;
                let verdict = injection(&name, answer.as_ref().map_err(Clone::clone));
                if verdict.status == Status::Pass || started.elapsed() >= PROBE_PATIENCE {
                    break verdict;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            };
            if let Err(e) = namespaces.delete(&name, &DeleteParams::default()).await {
                eprintln!("warning: could not delete the temporary namespace {name}: {e}");
            }
            verdict
        }
    }
}

async fn dry_run_pod(client: &Client, ns: &str) -> Result<Pod, String> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let params = PostParams {
        dry_run: true,
        field_manager: Some(contract::FIELD_MANAGER.into()),
    };
    pods.create(&params, &probe_pod())
        .await
        .map_err(|e| match e {
            kube::Error::Api(s) => s.message,
            e => e.to_string(),
        })
}

fn temporary_namespace_name() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    format!("weft-check-{:05x}", (nanos ^ std::process::id()) & 0xfffff)
}

#[cfg(test)]
mod tests {
    use super::super::inventory::fixtures::{inventory, namespace, pod};
    use super::*;
    use k8s_openapi::api::apps::v1::{DeploymentSpec, DeploymentStatus};
    use k8s_openapi::api::coordination::v1::LeaseSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;

    fn info(major: &str, minor: &str) -> Info {
        Info {
            major: major.into(),
            minor: minor.into(),
            git_version: format!("v{major}.{minor}.0"),
            ..Default::default()
        }
    }

    #[test]
    fn the_api_server_must_run_a_supported_kubernetes() {
        assert_eq!(api_server(Ok(&info("1", "37"))).status, Status::Pass);
        assert_eq!(api_server(Ok(&info("1", "29+"))).status, Status::Pass);
        let old = api_server(Ok(&info("1", "28")));
        assert_eq!(old.status, Status::Fail);
        assert!(old.hint.unwrap().contains("1.29"));
        assert_eq!(api_server(Ok(&info("", "x"))).status, Status::Fail);
        let down = api_server(Err("connection refused".into()));
        assert!(down.detail.contains("connection refused") && down.hint.is_some());
    }

    #[test]
    fn crds_must_be_installed_with_this_weft_schema() {
        let expected = crate::api::crds().remove(0);
        assert_eq!(crd(&expected, Some(&expected)).status, Status::Pass);
        let missing = crd(&expected, None);
        assert!(missing.detail.contains("not installed"), "{missing:?}");
        let mut older = expected.clone();
        if let Some(schema) = older.spec.versions[0]
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
        {
            schema.description = Some("an older weft".into());
        }
        let stale = crd(&expected, Some(&older));
        assert_eq!(stale.status, Status::Fail);
        assert!(stale.detail.contains("another schema"), "{stale:?}");
        let mut renamed = expected.clone();
        renamed.spec.versions[0].name = "v1beta9".into();
        assert!(crd(&expected, Some(&renamed)).detail.contains("v1beta9"));
    }

    fn deployment(replicas: i32, ready: i32) -> Deployment {
        Deployment {
            spec: DeploymentSpec {
                replicas: Some(replicas),
                ..Default::default()
            },
            status: Some(DeploymentStatus {
                ready_replicas: Some(ready),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn every_operator_replica_must_be_ready() {
        let ns = "weft-system";
        assert_eq!(
            operator_pods(Some(&deployment(2, 2)), ns).status,
            Status::Pass
        );
        let one = operator_pods(Some(&deployment(2, 1)), ns);
        assert_eq!(
            (one.status, one.detail.as_str()),
            (Status::Fail, "1 of 2 replicas Ready")
        );
        assert_eq!(
            operator_pods(Some(&deployment(0, 0)), ns).status,
            Status::Fail
        );
        assert!(
            operator_pods(None, ns)
                .hint
                .unwrap()
                .contains("config/default")
        );
    }

    fn lease(holder: Option<&str>, renewed: i64) -> Lease {
        Lease {
            metadata: ObjectMeta::default(),
            spec: Some(LeaseSpec {
                holder_identity: holder.map(String::from),
                lease_duration_seconds: Some(15),
                renew_time: Some(MicroTime(Timestamp::from_second(renewed).unwrap())),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn a_running_replica_must_hold_and_renew_the_lease() {
        let now = Timestamp::from_second(1_000).unwrap();
        let pods = ["op-a".to_string(), "op-b".to_string()];
        let ns = "weft-system";
        let v = |l: Option<&Lease>| leader(l, &pods, now, ns);
        assert_eq!(v(Some(&lease(Some("op-a"), 995))).status, Status::Pass);
        assert!(v(None).detail.contains("does not exist"));
        assert!(v(Some(&lease(None, 995))).detail.contains("nobody holds"));
        assert!(
            v(Some(&lease(Some(""), 995)))
                .detail
                .contains("nobody holds")
        );
        assert!(
            v(Some(&lease(Some("op-a"), 900)))
                .detail
                .contains("stopped renewing")
        );
        assert!(
            v(Some(&lease(Some("op-gone"), 999)))
                .detail
                .contains("not a running operator pod")
        );
    }

    #[test]
    fn the_probe_goes_to_an_enrolled_namespace_that_resolves_else_a_temporary_one() {
        let analysis = inventory(
            vec![
                namespace("weft-system", &[("istio-injection", "enabled")]),
                namespace("broken", &[("istio.io/rev", "nope")]),
                namespace("pets", &[("istio.io/rev", "prod")]),
            ],
            Vec::new(),
        )
        .analyse();
        assert_eq!(
            probe_target(&analysis, "weft-system"),
            ProbeTarget::Enrolled("pets".into())
        );

        let plain = inventory(vec![namespace("shop", &[])], Vec::new()).analyse();
        assert_eq!(
            probe_target(&plain, "weft-system"),
            ProbeTarget::Temporary {
                label: ("istio-injection".into(), "enabled".into())
            }
        );
        let mut no_default = inventory(Vec::new(), Vec::new());
        no_default.tags.clear();
        assert_eq!(
            probe_target(&no_default.analyse(), "weft-system"),
            ProbeTarget::Temporary {
                label: ("istio.io/rev".into(), "canary".into())
            }
        );
        no_default.revisions.clear();
        assert_eq!(
            probe_target(&no_default.analyse(), "weft-system"),
            ProbeTarget::NoRevision
        );
    }

    #[test]
    fn the_dry_run_pod_must_come_back_injected() {
        let mut injected = probe_pod();
        injected.metadata = pod("pets", "weft-check-probe", &[], Some(("stable", None)));
        let ok = injection("pets", Ok(&injected));
        assert_eq!(ok.status, Status::Pass);
        assert!(ok.detail.contains("revision stable"));
        let plain = injection("pets", Ok(&probe_pod()));
        assert!(plain.detail.contains("without a proxy"), "{plain:?}");
        let refused = injection(
            "pets",
            Err(
                "failed calling webhook: tls: x509: certificate signed by unknown authority".into(),
            ),
        );
        assert!(refused.hint.unwrap().contains("caBundle"));
    }

    fn root(days: u64) -> String {
        pki::MeshCa::generate_root("cluster.local", Duration::from_secs(days * 86_400))
            .unwrap()
            .roots_pem()
    }

    #[test]
    fn every_webhook_entry_must_trust_the_root() {
        let root = root(3650);
        let other = self::root(3650);
        let entries = |bundles: &[Option<&str>]| WebhookBundles {
            configuration: MUTATING_WEBHOOK,
            entries: Some(
                bundles
                    .iter()
                    .enumerate()
                    .map(|(i, b)| (format!("entry-{i}"), b.map(|b| b.as_bytes().to_vec())))
                    .collect(),
            ),
        };
        let ok = ca_bundle(Some(&root), &[entries(&[Some(&root), Some(&root)])]);
        assert_eq!(ok.status, Status::Pass);
        let bad = ca_bundle(Some(&root), &[entries(&[Some(&root), Some(&other), None])]);
        assert_eq!(bad.status, Status::Fail);
        assert!(
            bad.detail.contains("entry-1")
                && bad.detail.contains("entry-2")
                && !bad.detail.contains("entry-0"),
            "{bad:?}"
        );
        let absent = WebhookBundles {
            configuration: VALIDATING_WEBHOOK,
            entries: None,
        };
        assert!(
            ca_bundle(Some(&root), &[absent])
                .detail
                .contains("does not exist")
        );
        assert_eq!(ca_bundle(None, &[]).status, Status::Fail);
        // A bundle that differs only in whitespace is the same root.
        let padded = format!("\n{root}\n");
        assert_eq!(
            ca_bundle(Some(&root), &[entries(&[Some(&padded)])]).status,
            Status::Pass
        );
    }

    #[test]
    fn the_root_must_outlive_the_minimum() {
        let now = Timestamp::now();
        let long = root_validity(Some(&root(3650)), now, 30);
        assert_eq!(long.status, Status::Pass, "{long:?}");
        let short = root_validity(Some(&root(10)), now, 30);
        assert_eq!(short.status, Status::Fail);
        assert!(
            short.detail.contains("expires in 9 days")
                || short.detail.contains("expires in 10 days"),
            "{short:?}"
        );
        assert_eq!(root_validity(Some(&root(10)), now, 5).status, Status::Pass);
        assert_eq!(root_validity(Some("not pem"), now, 30).status, Status::Fail);
        assert_eq!(root_validity(None, now, 30).status, Status::Fail);
    }

    #[test]
    fn the_ca_secret_must_load_and_hold_the_published_root() {
        let ca = pki::MeshCa::generate_root("cluster.local", pki::DEFAULT_ROOT_VALIDITY).unwrap();
        let data: BTreeMap<String, Vec<u8>> = ca
            .to_secret_data()
            .into_iter()
            .map(|(k, v)| (k, v.into_bytes()))
            .collect();
        let roots = ca.roots_pem();
        let ns = "weft-system";
        assert_eq!(
            ca_secret(None, Some(&data), Some(&roots), ns).status,
            Status::Pass
        );
        let other = root(3650);
        assert!(
            ca_secret(None, Some(&data), Some(&other), ns)
                .detail
                .contains("different root")
        );
        // During a root rotation's phase (b) the new root comes first, the Secret's after.
        let rotating = format!("{other}{roots}");
        assert_eq!(
            ca_secret(None, Some(&data), Some(&rotating), ns).status,
            Status::Pass
        );
        let mut corrupted = data.clone();
        corrupted.insert("ca.key".into(), b"garbage".to_vec());
        assert!(
            ca_secret(None, Some(&corrupted), Some(&roots), ns)
                .detail
                .contains("corrupted")
        );
        assert!(
            ca_secret(None, None, Some(&roots), ns)
                .hint
                .unwrap()
                .contains("weft ca reset")
        );
        assert_eq!(ca_secret(None, None, None, ns).status, Status::Fail);
    }

    #[test]
    fn conflicting_and_unresolvable_enrolments_are_named() {
        let inv = inventory(
            vec![
                namespace(
                    "mixed",
                    &[("istio-injection", "enabled"), ("istio.io/rev", "nope")],
                ),
                namespace(
                    "agree",
                    &[("istio-injection", "enabled"), ("istio.io/rev", "default")],
                ),
                namespace("lost", &[("istio.io/rev", "nope")]),
                namespace("dangling", &[("istio.io/rev", "broken")]),
                namespace("pets", &[("istio.io/rev", "prod")]),
            ],
            Vec::new(),
        );
        let conflicts = label_conflicts(&inv.namespaces, "weft");
        assert_eq!(conflicts.status, Status::Fail);
        assert!(
            conflicts.detail.starts_with("1 namespace(s)") && conflicts.detail.contains("mixed: "),
            "{conflicts:?}"
        );
        let broken = unresolved(&inv.analyse());
        assert_eq!(broken.status, Status::Fail);
        assert!(
            broken
                .detail
                .contains("lost (istio.io/rev=nope: no such tag or revision)")
                && broken.detail.contains("dangling")
                && !broken.detail.contains("pets"),
            "{broken:?}"
        );
        let calm = inventory(
            vec![namespace("pets", &[("istio.io/rev", "prod")])],
            Vec::new(),
        );
        assert_eq!(
            label_conflicts(&calm.namespaces, "weft").status,
            Status::Pass
        );
        assert_eq!(unresolved(&calm.analyse()).status, Status::Pass);
    }

    #[test]
    fn stale_pods_warn_without_failing_and_terminating_namespaces_are_ignored() {
        let mut leaving = namespace("leaving", &[("istio.io/rev", "prod")]);
        leaving.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            Timestamp::now(),
        ));
        let inv = inventory(
            vec![namespace("pets", &[("istio.io/rev", "prod")]), leaving],
            vec![
                pod("pets", "old", &[], Some(("stable", Some("prod")))),
                pod("pets", "new", &[], Some(("canary", Some("prod")))),
                pod("leaving", "old", &[], Some(("stable", Some("prod")))),
            ],
        );
        let inv = without_terminating(inv);
        assert_eq!(inv.namespaces.len(), 1);
        let stale = stale_pods(&inv.analyse());
        assert_eq!(stale.status, Status::Warn);
        assert!(stale.detail.contains("1 pod(s)") && stale.detail.contains("pets/old"));
        assert!(!stale.detail.contains("leaving"), "{stale:?}");
    }

    #[test]
    fn lines_carry_a_symbol_and_failing_ones_a_hint() {
        assert_eq!(
            Verdict::pass(LEADER, "op-a holds Lease weft-operator").render(),
            "✓ leader elected: op-a holds Lease weft-operator\n"
        );
        assert_eq!(
            Verdict::fail(OPERATOR, "1 of 2 replicas Ready", "look").render(),
            "✗ operator pods ready: 1 of 2 replicas Ready\n    hint: look\n"
        );
        assert!(Verdict::warn(STALE, "x", "y").render().starts_with("‼ "));
    }
}
