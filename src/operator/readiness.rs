//! `/readyz` of the operator (issue 21 item 8): a replica is ready when it holds what it serves
//! with (the CA, a serving certificate, the caches' first lists) and the CA it signs with can
//! be trusted: not expired, and the root it signs under is the one published to proxies. A CA
//! Secret that is corrupted or replaced while a replica runs does not make it unready (it
//! signs with the copy it loaded, SPEC §7, and taking every replica out would take the webhook
//! down): `/readyz` then answers 200 with the reason as a warning, beside the Degraded
//! condition and Event; a replica that must load a corrupted Secret is not ready, with the
//! reason. The operator keeps no CA files (it reads the Secret through the API, where Istio's
//! istiod reads a mounted directory). [`judge`] is the rule, [`watch_ca_material`] applies it
//! on a period, [`router`] answers.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::{Api, Client};
use tokio::sync::watch;

use super::ca_bundle::CaProblem;
use crate::contract;
use crate::pki::{self, CaSource, MeshCa};

/// How often a replica compares its CA with the Secret and the published root.
pub const CHECK_PERIOD: Duration = Duration::from_secs(5);
/// How long a root mismatch may last before the replica stops being ready: the leader
/// republishes the root ConfigMap and replicas adopt a `weft ca reset` within a few seconds,
/// and those moments must not take every replica (and so the webhook) out at once. A corrupted
/// Secret is not waited for: nothing repairs it.
pub const MISMATCH_GRACE: Duration = Duration::from_secs(10);

/// What is wrong with the CA material of a replica that holds a CA.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CaMaterialProblem {
    #[error(
        "Secret {namespace}/{secret} no longer holds usable CA material ({reason}); this replica still signs with the copy it loaded, and weft will not overwrite the Secret: fix it, or run `weft ca reset` to start a new root"
    )]
    SecretCorrupted {
        namespace: String,
        secret: String,
        reason: String,
    },
    #[error(
        "Secret {namespace}/{secret} holds a different root than the one this replica signs under; put the old one back, or replace the root on purpose with `weft ca reset`"
    )]
    SecretRootDiffers { namespace: String, secret: String },
    #[error(
        "ConfigMap {namespace}/{configmap} (the root proxies trust) {detail}, so proxies would refuse the certificates this replica signs; the leader publishes the root again within seconds: if this lasts, find who rewrites it"
    )]
    PublishedRootDiffers {
        namespace: String,
        configmap: &'static str,
        detail: String,
    },
    #[error(
        "the {which} this replica signs with expired at {at}: no certificate it issues is valid; replace the CA (`weft ca reset`, or a renewed Secret cacerts) and restart the operator"
    )]
    Expired { which: &'static str, at: String },
}

impl CaMaterialProblem {
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::SecretCorrupted { .. } => "secret_corrupted",
            Self::SecretRootDiffers { .. } => "secret_root_differs",
            Self::PublishedRootDiffers { .. } => "published_root_differs",
            Self::Expired { .. } => "expired",
        }
    }

    /// Whether the replica still serves correctly with it: a Secret changed under a running
    /// replica leaves the CA it loaded (and proxies trust) intact.
    pub fn keeps_serving(&self) -> bool {
        matches!(
            self,
            Self::SecretCorrupted { .. } | Self::SecretRootDiffers { .. }
        )
    }

    /// Whether it can pass by itself (a republish in progress).
    fn may_pass(&self) -> bool {
        matches!(self, Self::PublishedRootDiffers { .. })
    }
}

/// What readiness reports of the CA material: why the replica must not serve, and what it
/// serves despite.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CaMaterial {
    pub not_ready: Option<CaMaterialProblem>,
    pub warnings: Vec<CaMaterialProblem>,
}

// === the rule ===

/// The certificates of a PEM bundle, as DER, or None if it is not a readable bundle.
fn certificate_set(pem: &str) -> Option<BTreeSet<Vec<u8>>> {
    pki::certificates_from_pem(pem)
        .ok()
        .filter(|c| !c.is_empty())
        .map(|c| c.into_iter().collect())
}

/// Compares the CA a replica signs with (`signing`) at `now` with the data of its Secret
/// (`secret`, None when absent: the leader restores a deleted `weft-ca` from memory) and with
/// the root published in the operator's namespace (`published`, None while not published
/// yet). Every problem found, pure.
pub fn judge(
    signing: &MeshCa,
    namespace: &str,
    secret: Option<&BTreeMap<String, Vec<u8>>>,
    published: Option<&str>,
    now: SystemTime,
) -> Vec<CaMaterialProblem> {
    let mut found = Vec::new();
    for (which, at) in [
        ("root", signing.root_expiry()),
        ("signing certificate chain", signing.chain_expiry()),
    ] {
        if at <= now {
            let at = k8s_openapi::jiff::Timestamp::try_from(at)
                .map(|t| t.to_string())
                .unwrap_or_else(|_| format!("{at:?}"));
            found.push(CaMaterialProblem::Expired { which, at });
            break;
        }
    }
    let secret_name = signing.source().secret_name();
    if let Some(data) = secret {
        let stored = match signing.source() {
            CaSource::PlugIn => MeshCa::from_cacerts_secret(data),
            CaSource::SelfSigned => MeshCa::from_weft_ca_secret(data),
        };
        match stored {
            Err(e) => found.push(CaMaterialProblem::SecretCorrupted {
                namespace: namespace.into(),
                secret: secret_name.into(),
                reason: e.to_string(),
            }),
            // During a root rotation the replica may sign under the new root while the
            // Secret still holds the old one: fine as long as that root is in the bundle.
            Ok(stored)
                if certificate_set(&stored.own_roots_pem())
                    != certificate_set(&signing.own_roots_pem())
                    && !certificate_set(&stored.own_roots_pem())
                        .zip(certificate_set(&signing.roots_pem()))
                        .is_some_and(|(stored, bundle)| stored.is_subset(&bundle)) =>
            {
                found.push(CaMaterialProblem::SecretRootDiffers {
                    namespace: namespace.into(),
                    secret: secret_name.into(),
                });
            }
            Ok(_) => {}
        }
    }
    let detail = match published.map(certificate_set) {
        None => None,
        Some(None) => Some("is not a readable PEM bundle of certificates".to_string()),
        Some(Some(roots)) if Some(&roots) != certificate_set(&signing.roots_pem()).as_ref() => {
            Some(format!(
                "holds {} root(s) that are not the trust bundle this replica signs under",
                roots.len()
            ))
        }
        Some(Some(_)) => None,
    };
    if let Some(detail) = detail {
        found.push(CaMaterialProblem::PublishedRootDiffers {
            namespace: namespace.into(),
            configmap: contract::ROOT_CERT_CONFIGMAP,
            detail,
        });
    }
    found
}

/// Turns each look's findings into what readiness reports: a mismatch of the published root
/// only once it has lasted `grace`, anything else at once.
#[derive(Debug)]
pub struct Debounced {
    grace: Duration,
    mismatch_since: Option<Instant>,
}

impl Debounced {
    pub fn new(grace: Duration) -> Self {
        Debounced {
            grace,
            mismatch_since: None,
        }
    }

    pub fn observe(&mut self, findings: Vec<CaMaterialProblem>, now: Instant) -> CaMaterial {
        let (warnings, failing): (Vec<_>, Vec<_>) =
            findings.into_iter().partition(|p| p.keeps_serving());
        let mut not_ready = None;
        let mut mismatch = false;
        for p in failing {
            if p.may_pass() {
                mismatch = true;
                let since = *self.mismatch_since.get_or_insert(now);
                if now.saturating_duration_since(since) < self.grace {
                    continue;
                }
            }
            not_ready.get_or_insert(p);
        }
        if !mismatch {
            self.mismatch_since = None;
        }
        CaMaterial {
            not_ready,
            warnings,
        }
    }
}

// === the check on the cluster ===

/// Compares the replica's CA with its Secret and the published root every `period` and
/// publishes what readiness should report (see [`Debounced`]). A failed read keeps the last
/// answer: an API server hiccup says nothing about the CA.
pub fn watch_ca_material(
    client: Client,
    namespace: String,
    ca: watch::Receiver<Option<Arc<MeshCa>>>,
    period: Duration,
    grace: Duration,
) -> watch::Receiver<CaMaterial> {
    let (tx, rx) = watch::channel(CaMaterial::default());
    tokio::spawn(async move {
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
        let configmaps: Api<ConfigMap> = Api::namespaced(client, &namespace);
        let mut debounced = Debounced::new(grace);
        loop {
            let signing = ca.borrow().clone();
            if let Some(signing) = signing {
                let read = tokio::join!(
                    secrets.get_opt(signing.source().secret_name()),
                    configmaps.get_opt(contract::ROOT_CERT_CONFIGMAP),
                );
                match read {
                    (Ok(secret), Ok(configmap)) => {
                        let data = secret.as_ref().map(secret_data);
                        let published = configmap
                            .as_ref()
                            .and_then(|c| c.data.as_ref())
                            .and_then(|d| d.get(contract::ROOT_CERT_KEY));
                        let findings = judge(
                            &signing,
                            &namespace,
                            data.as_ref(),
                            published.map(String::as_str),
                            SystemTime::now(),
                        );
                        let report = debounced.observe(findings, Instant::now());
                        tx.send_if_modified(|current| {
                            if *current == report {
                                return false;
                            }
                            for p in report.not_ready.iter() {
                                tracing::warn!(reason = p.metric_label(), "not ready: {p}");
                            }
                            for p in &report.warnings {
                                tracing::warn!(reason = p.metric_label(), "serving with the CA in memory: {p}");
                            }
                            if report == CaMaterial::default() {
                                tracing::info!("CA material agrees with its Secret and the published root again");
                            }
                            *current = report;
                            true
                        });
                    }
                    (Err(e), _) | (_, Err(e)) => {
                        tracing::debug!("checking the CA material: {e}");
                    }
                }
            }
            tokio::time::sleep(period).await;
        }
    });
    rx
}

/// A Secret's data, `stringData` included (as the API server would merge it).
fn secret_data(secret: &Secret) -> BTreeMap<String, Vec<u8>> {
    let mut out: BTreeMap<String, Vec<u8>> = secret
        .data
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect();
    out.extend(
        secret
            .string_data
            .clone()
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.into_bytes())),
    );
    out
}

// === /readyz ===

/// What `/readyz` looks at.
#[derive(Clone)]
pub struct Readiness {
    /// What the replica still waits for (empty when it has everything); set while draining.
    pub waiting_for: Arc<dyn Fn() -> Vec<String> + Send + Sync>,
    /// Why the CA-bundle controller holds no CA (explains a wait for "the mesh CA").
    pub ca_problem: watch::Receiver<Option<CaProblem>>,
    /// From [`watch_ca_material`].
    pub ca_material: watch::Receiver<CaMaterial>,
}

impl Readiness {
    /// Ok with the answer's body when ready (`ready`, and any warning), else the reason a
    /// person reads in the probe's failure.
    pub fn check(&self) -> Result<String, String> {
        let missing = (self.waiting_for)();
        if !missing.is_empty() {
            return Err(match self.ca_problem.borrow().clone() {
                Some(p) => format!("not ready: {p}"),
                None => format!("not ready; waiting for {}", missing.join(", ")),
            });
        }
        let material = self.ca_material.borrow().clone();
        if let Some(p) = material.not_ready {
            return Err(format!("not ready: {p}"));
        }
        let mut body = "ready".to_string();
        for p in material.warnings {
            body.push_str(&format!("\nwarning: {p}"));
        }
        Ok(body)
    }
}

/// `GET /readyz`: 200 `ready` (with any warning on the lines after), or 503 with the reason.
pub fn router(readiness: Readiness) -> Router {
    Router::new().route(
        "/readyz",
        get(move || {
            let answer = readiness.check();
            async move {
                match answer {
                    Ok(body) => (StatusCode::OK, body),
                    Err(why) => (StatusCode::SERVICE_UNAVAILABLE, why),
                }
            }
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const NS: &str = "weft-system";

    fn root() -> MeshCa {
        MeshCa::generate_root("cluster.local", Duration::from_secs(3600 * 24)).unwrap()
    }

    fn data(ca: &MeshCa) -> BTreeMap<String, Vec<u8>> {
        ca.to_secret_data()
            .into_iter()
            .map(|(k, v)| (k, v.into_bytes()))
            .collect()
    }

    fn labels(found: Vec<CaMaterialProblem>) -> Vec<&'static str> {
        found.iter().map(|p| p.metric_label()).collect()
    }

    #[test]
    fn the_ca_material_is_judged_against_the_secret_the_published_root_and_the_clock() {
        let ca = root();
        let other = root();
        let intact = data(&ca);
        let published = ca.roots_pem();
        let now = SystemTime::now();
        let judge = |secret: Option<&BTreeMap<String, Vec<u8>>>, published: Option<&str>| {
            judge(&ca, NS, secret, published, now)
        };

        assert_eq!(judge(Some(&intact), Some(&published)), vec![]);
        // Deleted Secret (restored from memory by the leader), root not published yet.
        assert_eq!(judge(None, None), vec![]);

        let mut garbage = intact.clone();
        garbage.insert(
            "ca.crt".into(),
            b"-----BEGIN CERTIFICATE-----\nnot base64\n".to_vec(),
        );
        let corrupted = judge(Some(&garbage), Some(&published));
        assert_eq!(labels(corrupted.clone()), ["secret_corrupted"]);
        assert!(corrupted[0].keeps_serving());
        let text = corrupted[0].to_string();
        assert!(
            text.contains("Secret weft-system/weft-ca no longer holds usable CA material (")
                && text.contains("weft ca reset"),
            "{text}"
        );
        // Our certificate with another CA's key (the self-check fails), or no key at all.
        let mut mixed = intact.clone();
        mixed.insert("ca.key".into(), data(&other)["ca.key"].clone());
        assert_eq!(labels(judge(Some(&mixed), None)), ["secret_corrupted"]);
        let mut keyless = intact.clone();
        keyless.remove("ca.key");
        assert_eq!(labels(judge(Some(&keyless), None)), ["secret_corrupted"]);
        // A whole, valid CA that is not ours.
        assert_eq!(
            labels(judge(Some(&data(&other)), Some(&published))),
            ["secret_root_differs"]
        );

        // The published root: another one, ours plus another, or not PEM at all.
        for bad in [
            other.roots_pem(),
            format!("{published}{}", other.roots_pem()),
            "root".to_string(),
            String::new(),
        ] {
            let found = judge(Some(&intact), Some(&bad));
            assert_eq!(labels(found.clone()), ["published_root_differs"], "{bad}");
            assert!(!found[0].keeps_serving());
            assert!(
                found[0]
                    .to_string()
                    .contains("ConfigMap weft-system/weft-ca-root-cert (the root proxies trust)")
            );
        }
        // The same roots written differently (no trailing newline) still match.
        assert_eq!(judge(Some(&intact), Some(published.trim_end())), vec![]);
        // Both at once: each is reported.
        assert_eq!(
            labels(judge(Some(&garbage), Some(&other.roots_pem()))),
            ["secret_corrupted", "published_root_differs"]
        );

        // A CA past its NotAfter issues nothing valid.
        let later = ca.root_expiry() + Duration::from_secs(1);
        let expired = super::judge(&ca, NS, Some(&intact), Some(&published), later);
        assert_eq!(labels(expired.clone()), ["expired"]);
        assert!(
            expired[0]
                .to_string()
                .starts_with("the root this replica signs with expired at "),
            "{}",
            expired[0]
        );
    }

    fn published_mismatch() -> CaMaterialProblem {
        CaMaterialProblem::PublishedRootDiffers {
            namespace: NS.into(),
            configmap: contract::ROOT_CERT_CONFIGMAP,
            detail: "x".into(),
        }
    }

    fn corrupted() -> CaMaterialProblem {
        CaMaterialProblem::SecretCorrupted {
            namespace: NS.into(),
            secret: "weft-ca".into(),
            reason: "x".into(),
        }
    }

    #[test]
    fn a_published_mismatch_must_last_the_grace_and_a_changed_secret_only_warns() {
        let start = Instant::now();
        let at = |s: u64| start + Duration::from_secs(s);
        let failing = |p: CaMaterialProblem| CaMaterial {
            not_ready: Some(p),
            warnings: vec![],
        };
        let mut d = Debounced::new(Duration::from_secs(10));
        assert_eq!(
            d.observe(vec![published_mismatch()], at(0)),
            CaMaterial::default()
        );
        assert_eq!(
            d.observe(vec![published_mismatch()], at(9)),
            CaMaterial::default()
        );
        assert_eq!(
            d.observe(vec![published_mismatch()], at(10)),
            failing(published_mismatch())
        );
        // Repaired: ready again, and the next mismatch waits its own grace.
        assert_eq!(d.observe(vec![], at(11)), CaMaterial::default());
        assert_eq!(
            d.observe(vec![corrupted(), published_mismatch()], at(12)),
            CaMaterial {
                not_ready: None,
                warnings: vec![corrupted()],
            }
        );
        let expired = CaMaterialProblem::Expired {
            which: "root",
            at: "then".into(),
        };
        assert_eq!(d.observe(vec![expired.clone()], at(13)), failing(expired));
    }

    fn readiness(
        waiting: Vec<String>,
        material: CaMaterial,
    ) -> (Readiness, watch::Sender<CaMaterial>) {
        let (tx, rx) = watch::channel(material);
        let readiness = Readiness {
            waiting_for: Arc::new(move || waiting.clone()),
            ca_problem: watch::channel(None).1,
            ca_material: rx,
        };
        (readiness, tx)
    }

    #[test]
    fn readyz_names_what_is_missing_or_wrong_and_warns_of_what_it_serves_despite() {
        let (ready, material) = readiness(vec![], CaMaterial::default());
        assert_eq!(ready.check(), Ok("ready".into()));
        material.send_replace(CaMaterial {
            not_ready: None,
            warnings: vec![corrupted()],
        });
        let body = ready.check().unwrap();
        assert!(
            body.starts_with("ready\nwarning: Secret weft-system/weft-ca no longer holds"),
            "{body}"
        );
        material.send_replace(CaMaterial {
            not_ready: Some(published_mismatch()),
            warnings: vec![],
        });
        let why = ready.check().unwrap_err();
        assert!(
            why.starts_with("not ready: ConfigMap weft-system/weft-ca-root-cert"),
            "{why}"
        );
        let (waiting, _) = readiness(vec!["the mesh CA".into()], CaMaterial::default());
        assert_eq!(
            waiting.check(),
            Err("not ready; waiting for the mesh CA".into())
        );
    }
}
