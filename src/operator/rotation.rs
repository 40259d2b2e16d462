//! Root rotation as a state machine (issue 24 item 4), pure: the state stored in ConfigMap
//! `weft-system/weft-ca-rotation` (so every operator replica and the CLI agree), what each
//! phase means for signing and trust ([`plan`]), when the leader moves on ([`decide`]), and
//! `weft ca rotate --abort` ([`abort`]). `super::rotation_controller` reads the cluster into
//! [`Observed`] and applies the decisions.
//!
//! Phases: (a) `Trusting`: the old root signs, every trust bundle holds both roots, until every
//! connected proxy reports holding both; (b) `Reissuing`: the new root signs, proxies whose
//! certificate is from the old one renew early, until every connected proxy's certificate
//! chains to the new root; (c) `Dropping`: the new root is promoted into Secret `weft-ca` and
//! the old one leaves every bundle, until every connected proxy reports it gone; then `Done`.
//! An abort in (a) ends at once (nothing was signed by the new root); in (b) it goes through
//! `RollingBack` (the old root signs again, both trusted, until every proxy holds an old-root
//! certificate) to `Aborted`.
//!
//! A switch of issuer (`weft ca issuer set`) is the same rotation with [`RotationState::to_issuer`]
//! set: the mesh root is replaced too (it anchors the operator's serving certificates, and the
//! old one signed every workload so far), the new issuer's roots join the new ones once it
//! passed a dry signing (in (a)), it signs from (b) on, and ConfigMap `weft-ca-issuer` is
//! promoted with `weft-ca` when (b) ends.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::pki::IssuerConfig;
use crate::pki::rotation::fingerprints_of_pem;

/// The rotation's state (key [`STATE_KEY`]).
pub const ROTATION_CONFIGMAP: &str = "weft-ca-rotation";
pub const STATE_KEY: &str = "state";
/// What each replica's proxies reported: key = replica (pod) name, value = JSON
/// `{pod: ProxySeen}`; each replica owns its key (server-side apply, its own field manager).
pub const ACKS_CONFIGMAP: &str = "weft-ca-rotation-acks";
/// The new root's certificate and key (`ca.crt`, `ca.key`) while it is not yet in `weft-ca`.
pub const NEXT_CA_SECRET: &str = "weft-ca-next";
/// The `weft.dev/ca-reset` value the leader writes when it promotes the new root: replicas
/// adopt it as they adopt `weft ca reset`'s.
pub const PROMOTION_MARKER_PREFIX: &str = "rotation-";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Phase {
    Trusting,
    Reissuing,
    Dropping,
    RollingBack,
    Done,
    Aborted,
}

impl Phase {
    /// While true, the rotation decides signing and trust; after it, the CA Secret alone does.
    pub fn active(self) -> bool {
        !matches!(self, Phase::Done | Phase::Aborted)
    }

    /// How `weft ca rotate status` and the revisions' condition name it.
    pub fn describe(self) -> &'static str {
        match self {
            Phase::Trusting => "(a) every trust bundle gets the new root beside the old one",
            Phase::Reissuing => "(b) the new root signs; proxies renew their certificates",
            Phase::Dropping => "(c) the old root leaves every trust bundle",
            Phase::RollingBack => {
                "abort: the old root signs again; proxies renew back before the new root goes"
            }
            Phase::Done => "done: the new root is the mesh root",
            Phase::Aborted => "aborted: the old root is still the mesh root",
        }
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

/// One entry of the rotation's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PhaseEntry {
    pub phase: Phase,
    /// RFC 3339.
    pub at: String,
}

/// The rotation as stored (JSON under [`STATE_KEY`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RotationState {
    /// Names this rotation (also in the promotion marker).
    pub id: String,
    pub phase: Phase,
    /// The roots being replaced (PEM): the mesh CA's own roots when the rotation began.
    pub old_roots: Vec<String>,
    /// The roots replacing them (PEM): Secret `weft-ca-next`'s certificate.
    pub new_roots: Vec<String>,
    /// Proxies renew within this many seconds of learning their certificate is from an old
    /// root, each at a uniformly drawn moment (so 1,000 proxies do not ask at once).
    pub renew_within_seconds: u64,
    /// Every phase entered, with when.
    pub history: Vec<PhaseEntry>,
    /// What the current phase waits for, as the leader last saw it.
    #[serde(default)]
    pub waiting_for: String,
    /// A switch of issuer: ConfigMap `weft-ca-issuer`'s data to sign with from (b) on (written
    /// into the ConfigMap when (b) ends). None: the issuer stays, only the builtin root changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_issuer: Option<BTreeMap<String, String>>,
    /// The roots of an external [`Self::to_issuer`] (PEM), recorded by the leader in (a) once
    /// it passed a dry signing; they are in `new_roots` from then on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer_roots: Option<Vec<String>>,
    /// A rotation to a plug-in CA (`weft ca rotate --cacerts <Secret>`): the Secret the user
    /// gave, whose Istio keys the CLI copied into [`NEXT_CA_SECRET`]; when (b) ends the leader
    /// writes them into Secret `cacerts`. None: the new root is a self-signed one for `weft-ca`
    /// (and a `cacerts` in force is retired when (b) ends, see [`retired`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_plugin: Option<String>,
}

impl RotationState {
    pub fn new(
        id: String,
        old_roots: Vec<String>,
        new_roots: Vec<String>,
        renew_within_seconds: u64,
        at: String,
    ) -> Self {
        RotationState {
            id,
            phase: Phase::Trusting,
            old_roots,
            new_roots,
            renew_within_seconds,
            history: vec![PhaseEntry {
                phase: Phase::Trusting,
                at,
            }],
            waiting_for: String::new(),
            to_issuer: None,
            issuer_roots: None,
            to_plugin: None,
        }
    }

    /// The fingerprints of the roots that leave in (c): the old ones not among the new (a new
    /// plug-in CA under the same root as the old keeps it).
    pub fn leaving(&self) -> BTreeSet<String> {
        let new = fingerprints_of_pem(&self.new_roots);
        fingerprints_of_pem(&self.old_roots)
            .into_iter()
            .filter(|f| !new.contains(f))
            .collect()
    }

    /// The issuer this rotation switches to, parsed (None: the builtin root is replaced and
    /// the issuer stays, or `toIssuer` does not parse: the CLI checked it, and the issuer
    /// controller reports it as it reports a broken ConfigMap, while the state stays
    /// readable, so `--abort` works).
    pub fn to_issuer_config(&self) -> Option<IssuerConfig> {
        self.to_issuer
            .as_ref()
            .and_then(|d| IssuerConfig::from_data(d).ok())
    }

    /// Whether an external issuer (Vault, cert-manager) signs workloads from (b) on.
    pub fn to_external(&self) -> bool {
        self.to_issuer_config()
            .is_some_and(|c| !matches!(c, IssuerConfig::Builtin))
    }

    /// The roots every workload certificate must chain to once re-issued: the new issuer's
    /// when it is external, else the new builtin root.
    pub fn reissued_roots(&self) -> Vec<String> {
        if self.to_external() {
            self.issuer_roots.clone().unwrap_or_default()
        } else {
            self.new_roots.clone()
        }
    }

    /// The state once the new issuer's roots are known: they join the new roots (and leave the
    /// old ones, should the new issuer share a root with the old: it is kept, not dropped).
    pub fn with_issuer_roots(&self, roots: Vec<String>) -> Self {
        let mut next = self.clone();
        let joining = fingerprints_of_pem(&roots);
        next.old_roots
            .retain(|pem| fingerprints_of_pem(&[pem]).is_disjoint(&joining));
        let have = fingerprints_of_pem(&next.new_roots);
        for root in &roots {
            if fingerprints_of_pem(&[root]).is_disjoint(&have) {
                next.new_roots.push(root.clone());
            }
        }
        next.issuer_roots = Some(roots);
        next.waiting_for = String::new();
        next
    }

    /// The state after entering `phase` at `at`.
    pub fn entering(&self, phase: Phase, at: String) -> Self {
        let mut next = self.clone();
        next.phase = phase;
        next.history.push(PhaseEntry { phase, at });
        next.waiting_for = String::new();
        next
    }

    /// The promotion marker of this rotation.
    pub fn marker(&self) -> String {
        format!("{PROMOTION_MARKER_PREFIX}{}", self.id)
    }

    /// Parses the ConfigMap's data; None when there is no state.
    pub fn from_data(data: &BTreeMap<String, String>) -> Result<Option<Self>, String> {
        match data.get(STATE_KEY) {
            None => Ok(None),
            Some(text) => serde_json::from_str(text).map(Some).map_err(|e| {
                format!(
                    "ConfigMap {ROTATION_CONFIGMAP} key {STATE_KEY} is not a rotation state ({e}): \
                     delete the ConfigMap if no rotation is under way"
                )
            }),
        }
    }
}

/// ConfigMap `weft-ca-issuer`'s data that decides who signs in `state`'s phase: the new
/// issuer's from (b) on (also in (c), when the ConfigMap already holds it), else None (the
/// ConfigMap decides, as without a rotation).
pub fn issuer_in_force(state: &RotationState) -> Option<&BTreeMap<String, String>> {
    match state.phase {
        Phase::Reissuing | Phase::Dropping => state.to_issuer.as_ref(),
        _ => None,
    }
}

/// The issuer every replica builds and dry-signs with beside the one in force, so its roots
/// are known and trusted before it signs: an external new issuer, during (a).
pub fn issuer_to_prepare(state: &RotationState) -> Option<&BTreeMap<String, String>> {
    match state.phase {
        Phase::Trusting if state.to_external() => state.to_issuer.as_ref(),
        _ => None,
    }
}

/// Which CA signs workload (and serving) certificates in a phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signer {
    /// The CA of Secret `weft-ca` (the old root until the promotion).
    Current,
    /// The CA of Secret `weft-ca-next`.
    Next,
}

/// What a phase means for the CA every replica serves with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub signer: Signer,
    /// Roots trusted beside the signer's own (PEM).
    pub also_trust: Vec<String>,
}

/// Signing and trust in `state`'s phase; None when the rotation is over (the CA Secret alone
/// decides).
pub fn plan(state: &RotationState) -> Option<Plan> {
    let (signer, also_trust) = match state.phase {
        Phase::Trusting | Phase::RollingBack => (Signer::Current, state.new_roots.clone()),
        Phase::Reissuing => (Signer::Next, state.old_roots.clone()),
        // The new root is in `weft-ca` from here on; `weft-ca-next` is the same CA.
        Phase::Dropping => (Signer::Next, Vec::new()),
        Phase::Done | Phase::Aborted => return None,
    };
    Some(Plan { signer, also_trust })
}

/// One proxy as the replicas heard it (see [`ACKS_CONFIGMAP`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxySeen {
    /// The SPIFFE identity of the certificate it polled with.
    pub identity: String,
    /// Fingerprints of the roots it trusts.
    pub bundle: BTreeSet<String>,
    /// Fingerprint of the root its certificate chains to.
    #[serde(default)]
    pub leaf_root: Option<String>,
    /// Unix seconds of its last poll.
    pub seen: i64,
}

/// Merges the replicas' reports: the latest poll of each pod wins.
pub fn merge_acks<'a>(
    replicas: impl IntoIterator<Item = &'a BTreeMap<String, ProxySeen>>,
) -> BTreeMap<String, ProxySeen> {
    let mut merged: BTreeMap<String, ProxySeen> = BTreeMap::new();
    for acks in replicas {
        for (pod, seen) in acks {
            if merged.get(pod).is_none_or(|m| m.seen < seen.seen) {
                merged.insert(pod.clone(), seen.clone());
            }
        }
    }
    merged
}

/// What the leader saw of the cluster this pass.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    pub now: i64,
    /// Proxies polling within this many seconds count as connected.
    pub connected_within: i64,
    /// Whether the root ConfigMap and the webhooks' caBundles hold exactly the plan's bundle
    /// (None while they do; otherwise what differs).
    pub unpublished: Option<String>,
    /// Every proxy heard from, by pod.
    pub proxies: BTreeMap<String, ProxySeen>,
    /// The issuer being switched to, as this replica prepared it ([`issuer_to_prepare`]): its
    /// roots once a dry signing passed, or why not. None: no issuer is being prepared.
    pub next_issuer: Option<Result<Vec<String>, String>>,
}

/// What the leader does this pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Stay in the phase, waiting for what is said.
    Wait(String),
    /// Enter `to`; `promote`: write the new root into Secret `weft-ca` first; `retire_next`:
    /// empty Secret `weft-ca-next` after.
    Enter {
        to: Phase,
        promote: bool,
        retire_next: bool,
    },
    /// Stay in (a), recording the new issuer's roots ([`RotationState::with_issuer_roots`]):
    /// every bundle then gets them, and (a) waits for every proxy to trust them.
    IssuerReady(Vec<String>),
}

/// The leader's rule: move on once the bundles are published and every connected proxy has
/// done what the phase asks of it.
pub fn decide(state: &RotationState, observed: &Observed) -> Decision {
    if !state.phase.active() {
        return Decision::Wait(String::new());
    }
    if state.phase == Phase::Trusting && state.to_external() && state.issuer_roots.is_none() {
        let to = state
            .to_issuer_config()
            .map(|c| c.describe())
            .unwrap_or_default();
        return match &observed.next_issuer {
            Some(Ok(roots)) if !roots.is_empty() => Decision::IssuerReady(roots.clone()),
            Some(Err(problem)) => Decision::Wait(format!(
                "the new issuer ({to}) to pass a dry signing: {problem}"
            )),
            _ => Decision::Wait(format!("the new issuer ({to}) to pass a dry signing")),
        };
    }
    if let Some(what) = &observed.unpublished {
        return Decision::Wait(format!("the trust bundles to be published: {what}"));
    }
    let old = fingerprints_of_pem(&state.old_roots);
    let new = fingerprints_of_pem(&state.new_roots);
    let leaving = state.leaving();
    let reissued = fingerprints_of_pem(&state.reissued_roots());
    let connected: Vec<(&String, &ProxySeen)> = observed
        .proxies
        .iter()
        .filter(|(_, p)| observed.now - p.seen <= observed.connected_within)
        .collect();
    let (lagging, waiting, next): (Vec<&String>, &str, Decision) = match state.phase {
        Phase::Trusting => (
            lagging(&connected, |p| {
                p.bundle.is_superset(&old) && p.bundle.is_superset(&new)
            }),
            "to trust both roots",
            Decision::Enter {
                to: Phase::Reissuing,
                promote: false,
                retire_next: false,
            },
        ),
        Phase::Reissuing => (
            lagging(&connected, |p| {
                p.leaf_root.as_ref().is_some_and(|r| reissued.contains(r))
            }),
            if state.to_external() {
                "to hold a certificate from the new issuer"
            } else {
                "to hold a certificate from the new root"
            },
            Decision::Enter {
                to: Phase::Dropping,
                promote: true,
                retire_next: false,
            },
        ),
        Phase::Dropping => (
            lagging(&connected, |p| {
                p.bundle.is_disjoint(&leaving) && p.bundle.is_superset(&new)
            }),
            "to drop the old root",
            Decision::Enter {
                to: Phase::Done,
                promote: false,
                retire_next: true,
            },
        ),
        Phase::RollingBack => (
            lagging(&connected, |p| {
                p.leaf_root.as_ref().is_some_and(|r| old.contains(r))
            }),
            "to hold a certificate from the old root again",
            Decision::Enter {
                to: Phase::Aborted,
                promote: false,
                retire_next: true,
            },
        ),
        Phase::Done | Phase::Aborted => return Decision::Wait(String::new()),
    };
    if lagging.is_empty() {
        return next;
    }
    let shown: Vec<&str> = lagging.iter().take(5).map(|s| s.as_str()).collect();
    let more = lagging.len().saturating_sub(shown.len());
    Decision::Wait(format!(
        "{} of {} connected proxies {waiting}: {}{}",
        lagging.len(),
        connected.len(),
        shown.join(", "),
        if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        }
    ))
}

fn lagging<'a>(
    connected: &[(&'a String, &ProxySeen)],
    done: impl Fn(&ProxySeen) -> bool,
) -> Vec<&'a String> {
    connected
        .iter()
        .filter(|(_, p)| !done(p))
        .map(|(pod, _)| *pod)
        .collect()
}

/// Why `weft ca rotate --abort` cannot go back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AbortError {
    #[error(
        "the rotation is in phase {0} (the old root is already leaving every trust bundle): it can no longer go back; let it finish, then rotate again to a root you choose"
    )]
    TooLate(Phase),
    #[error("no rotation is under way (the last one is {0}); nothing to abort")]
    NotActive(Phase),
}

/// Marks a Secret weft emptied instead of deleting it (the operator deletes nothing):
/// `weft-ca-next` after a rotation, and `cacerts` after a rotation from a plug-in CA to a
/// self-signed root. A retired Secret is as good as absent.
pub const RETIRED_ANNOTATION: &str = "weft.dev/retired-by";

/// Whether `secret` was retired by a rotation: it carries [`RETIRED_ANNOTATION`] and no data
/// (new data written into it later, e.g. a plug-in CA put back by hand, makes it live again).
pub fn retired(secret: &k8s_openapi::api::core::v1::Secret) -> bool {
    let annotated = secret
        .metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(RETIRED_ANNOTATION));
    let empty = secret.data.as_ref().is_none_or(|d| d.is_empty())
        && secret.string_data.as_ref().is_none_or(|d| d.is_empty());
    annotated && empty
}

/// The phase `--abort` moves to.
pub fn abort(state: &RotationState) -> Result<Phase, AbortError> {
    match state.phase {
        // Nothing was signed by the new root yet: dropping it from the bundles is enough.
        Phase::Trusting => Ok(Phase::Aborted),
        Phase::Reissuing => Ok(Phase::RollingBack),
        Phase::RollingBack => Ok(Phase::RollingBack),
        Phase::Dropping => Err(AbortError::TooLate(state.phase)),
        Phase::Done | Phase::Aborted => Err(AbortError::NotActive(state.phase)),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::pki::MeshCa;
    use crate::pki::rotation::fingerprint;

    fn root() -> (String, String) {
        let ca = MeshCa::generate_root("cluster.local", Duration::from_secs(86_400)).unwrap();
        let pem = ca.own_roots_pem();
        let der = crate::pki::certificates_from_pem(&pem).unwrap().remove(0);
        (pem, fingerprint(&der))
    }

    struct World {
        state: RotationState,
        old: String,
        new: String,
    }

    fn world() -> World {
        let ((old_pem, old), (new_pem, new)) = (root(), root());
        World {
            state: RotationState::new(
                "r1".into(),
                vec![old_pem],
                vec![new_pem],
                10,
                "2026-12-06T08:00:00Z".into(),
            ),
            old,
            new,
        }
    }

    fn proxy(bundle: &[&String], leaf: &String, seen: i64) -> ProxySeen {
        ProxySeen {
            identity: "spiffe://cluster.local/ns/a/sa/b".into(),
            bundle: bundle.iter().map(|s| s.to_string()).collect(),
            leaf_root: Some(leaf.to_string()),
            seen,
        }
    }

    fn observed(proxies: &[(&str, ProxySeen)]) -> Observed {
        Observed {
            now: 1000,
            connected_within: 60,
            unpublished: None,
            proxies: proxies
                .iter()
                .map(|(p, s)| (p.to_string(), s.clone()))
                .collect(),
            next_issuer: None,
        }
    }

    #[test]
    fn each_phase_waits_for_every_connected_proxy_then_moves_on() {
        let w = world();
        let (o, n) = (&w.old, &w.new);
        // (a): one proxy has both roots, one only the old: wait, naming it.
        let a = observed(&[("p1", proxy(&[o, n], o, 990)), ("p2", proxy(&[o], o, 995))]);
        match decide(&w.state, &a) {
            Decision::Wait(why) => {
                assert!(
                    why.contains("1 of 2 connected proxies to trust both roots: p2"),
                    "{why}"
                )
            }
            d => panic!("{d:?}"),
        }
        let a = observed(&[
            ("p1", proxy(&[o, n], o, 990)),
            ("p2", proxy(&[n, o], o, 995)),
        ]);
        assert_eq!(
            decide(&w.state, &a),
            Decision::Enter {
                to: Phase::Reissuing,
                promote: false,
                retire_next: false
            }
        );
        // (b): renewals; the new root goes into weft-ca when all chain to it.
        let b = w.state.entering(Phase::Reissuing, "t".into());
        assert!(matches!(decide(&b, &a), Decision::Wait(_)));
        let renewed = observed(&[
            ("p1", proxy(&[o, n], n, 999)),
            ("p2", proxy(&[o, n], n, 999)),
        ]);
        assert_eq!(
            decide(&b, &renewed),
            Decision::Enter {
                to: Phase::Dropping,
                promote: true,
                retire_next: false
            }
        );
        // (c): done when no connected proxy holds the old root.
        let c = b.entering(Phase::Dropping, "t".into());
        assert!(matches!(decide(&c, &renewed), Decision::Wait(_)));
        let dropped = observed(&[("p1", proxy(&[n], n, 999)), ("p2", proxy(&[n], n, 999))]);
        assert_eq!(
            decide(&c, &dropped),
            Decision::Enter {
                to: Phase::Done,
                promote: false,
                retire_next: true
            }
        );
        let done = c.entering(Phase::Done, "t".into());
        assert_eq!(done.history.len(), 4);
        assert_eq!(plan(&done), None);
    }

    #[test]
    fn a_proxy_gone_quiet_does_not_hold_the_rotation_and_unpublished_bundles_do() {
        let w = world();
        let (o, n) = (&w.old, &w.new);
        let obs = observed(&[
            ("live", proxy(&[o, n], o, 990)),
            // Last heard 100 s ago: away (deleted pod, or a proxy cut off).
            ("away", proxy(&[o], o, 900)),
        ]);
        assert!(matches!(
            decide(&w.state, &obs),
            Decision::Enter {
                to: Phase::Reissuing,
                ..
            }
        ));
        let mut unpublished = obs.clone();
        unpublished.unpublished = Some("webhook weft-validator".into());
        assert_eq!(
            decide(&w.state, &unpublished),
            Decision::Wait("the trust bundles to be published: webhook weft-validator".into())
        );
        // No proxy at all: nothing to wait for.
        assert!(matches!(
            decide(&w.state, &observed(&[])),
            Decision::Enter { .. }
        ));
    }

    #[test]
    fn plans_sign_and_trust_as_the_phases_say() {
        let w = world();
        let at = |p| plan(&w.state.entering(p, "t".into()));
        assert_eq!(
            at(Phase::Trusting),
            Some(Plan {
                signer: Signer::Current,
                also_trust: w.state.new_roots.clone()
            })
        );
        assert_eq!(
            at(Phase::Reissuing),
            Some(Plan {
                signer: Signer::Next,
                also_trust: w.state.old_roots.clone()
            })
        );
        assert_eq!(
            at(Phase::Dropping),
            Some(Plan {
                signer: Signer::Next,
                also_trust: vec![]
            })
        );
        assert_eq!(
            at(Phase::RollingBack).map(|p| p.signer),
            Some(Signer::Current)
        );
        assert_eq!(at(Phase::Aborted), None);
    }

    #[test]
    fn abort_goes_back_in_a_and_b_only_and_rolling_back_ends_when_all_are_back() {
        let w = world();
        let (o, n) = (&w.old, &w.new);
        assert_eq!(abort(&w.state), Ok(Phase::Aborted));
        let b = w.state.entering(Phase::Reissuing, "t".into());
        assert_eq!(abort(&b), Ok(Phase::RollingBack));
        let c = b.entering(Phase::Dropping, "t".into());
        assert_eq!(abort(&c), Err(AbortError::TooLate(Phase::Dropping)));
        assert!(abort(&c).unwrap_err().to_string().contains("let it finish"));
        let done = c.entering(Phase::Done, "t".into());
        assert_eq!(abort(&done), Err(AbortError::NotActive(Phase::Done)));

        let back = b.entering(Phase::RollingBack, "t".into());
        let still_new = observed(&[("p", proxy(&[o, n], n, 999))]);
        assert!(matches!(decide(&back, &still_new), Decision::Wait(_)));
        let renewed_back = observed(&[("p", proxy(&[o, n], o, 999))]);
        assert_eq!(
            decide(&back, &renewed_back),
            Decision::Enter {
                to: Phase::Aborted,
                promote: false,
                retire_next: true
            }
        );
    }

    fn vault_data() -> BTreeMap<String, String> {
        BTreeMap::from([
            ("issuer".to_string(), "vault".to_string()),
            (
                "vault.address".to_string(),
                "http://198.18.0.1:8200".to_string(),
            ),
            ("vault.role".to_string(), "weft".to_string()),
            (
                "vault.tokenSecret".to_string(),
                "weft-vault-token".to_string(),
            ),
        ])
    }

    #[test]
    fn a_switch_to_vault_waits_for_its_dry_signing_then_reissues_from_vault_only() {
        let w = world();
        let (vault_pem, vault) = root();
        let (o, n) = (&w.old, &w.new);
        let mut state = w.state.clone();
        state.to_issuer = Some(vault_data());
        assert!(state.to_external());
        // (a): the new issuer is prepared beside the one in force, which the ConfigMap names.
        assert_eq!(issuer_to_prepare(&state), Some(&vault_data()));
        assert_eq!(issuer_in_force(&state), None);
        // Until Vault passed a dry signing nothing moves, and the wait names Vault's refusal.
        let mut obs = observed(&[("p", proxy(&[o, n], o, 999))]);
        obs.next_issuer = Some(Err("Vault ... permission denied".into()));
        match decide(&state, &obs) {
            Decision::Wait(why) => assert!(
                why.contains("the new issuer (vault at http://198.18.0.1:8200")
                    && why.contains("permission denied"),
                "{why}"
            ),
            d => panic!("{d:?}"),
        }
        obs.next_issuer = Some(Ok(vec![vault_pem.clone()]));
        assert_eq!(
            decide(&state, &obs),
            Decision::IssuerReady(vec![vault_pem.clone()])
        );
        let state = state.with_issuer_roots(vec![vault_pem.clone()]);
        assert_eq!(state.new_roots.len(), 2, "the new mesh root and Vault's");
        assert_eq!(state.reissued_roots(), vec![vault_pem.clone()]);
        // (a) now waits for every proxy to trust Vault's root too.
        assert!(matches!(decide(&state, &obs), Decision::Wait(_)));
        let all = observed(&[("p", proxy(&[o, n, &vault], o, 999))]);
        assert!(matches!(
            decide(&state, &all),
            Decision::Enter {
                to: Phase::Reissuing,
                ..
            }
        ));
        // (b): Vault is in force; a leaf from the new mesh root does not count, one from Vault does.
        let b = state.entering(Phase::Reissuing, "t".into());
        assert_eq!(issuer_in_force(&b), Some(&vault_data()));
        assert_eq!(issuer_to_prepare(&b), None);
        let from_mesh = observed(&[("p", proxy(&[o, n, &vault], n, 999))]);
        match decide(&b, &from_mesh) {
            Decision::Wait(why) => {
                assert!(
                    why.contains("to hold a certificate from the new issuer"),
                    "{why}"
                )
            }
            d => panic!("{d:?}"),
        }
        let from_vault = observed(&[("p", proxy(&[o, n, &vault], &vault, 999))]);
        assert_eq!(
            decide(&b, &from_vault),
            Decision::Enter {
                to: Phase::Dropping,
                promote: true,
                retire_next: false
            }
        );
        // (c): the old mesh root leaves; Vault's and the new mesh root stay.
        let c = b.entering(Phase::Dropping, "t".into());
        assert_eq!(issuer_in_force(&c), Some(&vault_data()));
        let dropped = observed(&[("p", proxy(&[n, &vault], &vault, 999))]);
        assert!(matches!(
            decide(&c, &dropped),
            Decision::Enter {
                to: Phase::Done,
                ..
            }
        ));
        // Rolling back, the ConfigMap (the old issuer) is in force again.
        assert_eq!(
            issuer_in_force(&b.entering(Phase::RollingBack, "t".into())),
            None
        );
    }

    #[test]
    fn a_switch_to_builtin_reissues_from_the_new_mesh_root_and_a_shared_root_is_kept() {
        let w = world();
        let mut state = w.state.clone();
        state.to_issuer = Some(BTreeMap::from([(
            "issuer".to_string(),
            "builtin".to_string(),
        )]));
        assert!(!state.to_external());
        assert_eq!(issuer_to_prepare(&state), None, "nothing to reach");
        assert_eq!(state.reissued_roots(), state.new_roots);
        // An issuer whose root is already trusted (in the old roots): it moves to the new roots,
        // or (c) could never drop it.
        let shared = state.old_roots[0].clone();
        let moved = w.state.with_issuer_roots(vec![shared.clone()]);
        assert!(moved.old_roots.is_empty(), "{:?}", moved.old_roots);
        assert!(moved.new_roots.contains(&shared));
        // A state naming an issuer that does not parse stays readable, so it can be aborted.
        let mut broken = w.state.entering(Phase::Reissuing, "t".into());
        broken.to_issuer = Some(BTreeMap::from([(
            "issuer".to_string(),
            "vault".to_string(),
        )]));
        let data = BTreeMap::from([(
            STATE_KEY.to_string(),
            serde_json::to_string(&broken).unwrap(),
        )]);
        let read = RotationState::from_data(&data).unwrap().unwrap();
        assert_eq!(abort(&read), Ok(Phase::RollingBack));
    }

    #[test]
    fn a_plug_in_ca_under_the_same_root_keeps_it_and_a_new_root_leaves_the_old() {
        let w = world();
        let (o, n) = (&w.old, &w.new);
        // A new intermediate under the old root (new roots = the same root): nothing leaves,
        // (b) is over at once (every leaf already chains to it), and (c) does not wait for the
        // shared root to go, which it never would.
        let mut same = w.state.clone();
        same.new_roots = same.old_roots.clone();
        same.to_plugin = Some("cacerts-next".into());
        assert!(same.leaving().is_empty());
        let obs = observed(&[("p", proxy(&[o], o, 999))]);
        let b = same.entering(Phase::Reissuing, "t".into());
        assert!(matches!(
            decide(&b, &obs),
            Decision::Enter {
                to: Phase::Dropping,
                promote: true,
                ..
            }
        ));
        let c = b.entering(Phase::Dropping, "t".into());
        assert!(matches!(
            decide(&c, &obs),
            Decision::Enter {
                to: Phase::Done,
                ..
            }
        ));
        // An abort of it rolls back at once too: every leaf chains to the root that stays.
        assert!(matches!(
            decide(&b.entering(Phase::RollingBack, "t".into()), &obs),
            Decision::Enter {
                to: Phase::Aborted,
                ..
            }
        ));
        // A new root whose root-cert.pem also carries the old one (Istio's combined bundle):
        // the old root is kept, (c) waits only for the new one to be held.
        let mut combined = w.state.clone();
        combined.new_roots.push(combined.old_roots[0].clone());
        assert!(combined.leaving().is_empty());
        // A new root alone: the old one leaves, and (c) waits until no proxy holds it.
        assert_eq!(w.state.leaving(), BTreeSet::from([o.clone()]));
        let c = w.state.entering(Phase::Dropping, "t".into());
        assert!(matches!(
            decide(&c, &observed(&[("p", proxy(&[o, n], n, 999))])),
            Decision::Wait(_)
        ));
        // The state of a plug-in rotation round-trips, and one written before the field
        // existed reads as a builtin rotation.
        let data = BTreeMap::from([(STATE_KEY.to_string(), serde_json::to_string(&same).unwrap())]);
        assert_eq!(RotationState::from_data(&data), Ok(Some(same.clone())));
        let mut older = serde_json::to_value(&w.state).unwrap();
        older.as_object_mut().unwrap().remove("toPlugin");
        let data = BTreeMap::from([(STATE_KEY.to_string(), older.to_string())]);
        assert_eq!(
            RotationState::from_data(&data).unwrap().unwrap().to_plugin,
            None
        );
    }

    #[test]
    fn a_secret_is_retired_only_when_marked_and_empty() {
        let secret = |annotated: bool, data: bool| {
            let mut s = k8s_openapi::api::core::v1::Secret::default();
            if annotated {
                s.metadata.annotations = Some(BTreeMap::from([(
                    RETIRED_ANNOTATION.to_string(),
                    "rotation-r1".to_string(),
                )]));
            }
            if data {
                s.data = Some(BTreeMap::from([(
                    "ca-cert.pem".to_string(),
                    k8s_openapi::ByteString(b"x".to_vec()),
                )]));
            }
            s
        };
        assert!(retired(&secret(true, false)));
        // New material written into it by hand makes it live again.
        assert!(!retired(&secret(true, true)));
        assert!(!retired(&secret(false, false)));
        assert!(!retired(&secret(false, true)));
    }

    #[test]
    fn the_latest_poll_of_a_pod_wins_across_replicas_and_state_round_trips() {
        let w = world();
        let (o, n) = (&w.old, &w.new);
        let r1 = BTreeMap::from([("p".to_string(), proxy(&[o], o, 10))]);
        let r2 = BTreeMap::from([("p".to_string(), proxy(&[o, n], n, 20))]);
        let merged = merge_acks([&r1, &r2]);
        assert_eq!(merged["p"].seen, 20);
        assert_eq!(merge_acks([&r2, &r1])["p"].seen, 20);

        let data = BTreeMap::from([(
            STATE_KEY.to_string(),
            serde_json::to_string(&w.state).unwrap(),
        )]);
        assert_eq!(RotationState::from_data(&data), Ok(Some(w.state.clone())));
        assert_eq!(RotationState::from_data(&BTreeMap::new()), Ok(None));
        let bad = BTreeMap::from([(STATE_KEY.to_string(), "{".to_string())]);
        assert!(
            RotationState::from_data(&bad)
                .unwrap_err()
                .contains("delete the ConfigMap")
        );
    }
}
