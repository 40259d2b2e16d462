//! The MeshConfig controller: writes each revision's status (Ready, Reconciled, Unsupported,
//! injected pods, namespaces, tags) and warns, once per conflict, about namespaces whose
//! enrolment labels disagree.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use futures::{Stream, StreamExt};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::controller::Action;

use super::index::{Snapshot, count, namespace_conflict};
use super::{CaHealth, Context, Error, REQUEUE, condition, events, reasons};
use crate::api::{MeshConfig, MeshConfigSpec, MeshConfigStatus, conditions};
use crate::contract;

// === Unsupported fields ===

/// A spec setting this version accepts but does not implement yet; reported in the
/// `Unsupported` condition so it is never silently ignored (SPEC §3).
pub struct UnsupportedSetting {
    /// As the user wrote it, such as `traffic.outboundTrafficPolicy=REGISTRY_ONLY` was until
    /// issue 20 implemented it (docs/egress.md).
    pub setting: &'static str,
    pub is_set: fn(&MeshConfigSpec) -> bool,
}

/// Remove a row when the feature lands; add one when a field is accepted before it works.
/// Empty: every setting of the spec is implemented.
pub const UNSUPPORTED_SETTINGS: &[UnsupportedSetting] = &[];

/// The settings of `spec` this version does not implement, in table order.
pub fn unsupported_settings(spec: &MeshConfigSpec) -> Vec<&'static str> {
    UNSUPPORTED_SETTINGS
        .iter()
        .filter(|u| (u.is_set)(spec))
        .map(|u| u.setting)
        .collect()
}

// === Status ===

/// The status of revision `name` in `snapshot`.
pub fn meshconfig_status(
    name: &str,
    generation: Option<i64>,
    spec: &MeshConfigSpec,
    current: Option<&MeshConfigStatus>,
    snapshot: &Snapshot,
    ca: &CaHealth,
    now: &Time,
) -> MeshConfigStatus {
    let existing = current.map(|s| s.conditions.as_slice()).unwrap_or_default();
    let ready = if ca.loaded {
        condition(
            existing,
            conditions::READY,
            true,
            reasons::CA_READY,
            "the revision can inject pods and its proxies can get certificates".into(),
            generation,
            now,
        )
    } else {
        condition(
            existing,
            conditions::READY,
            false,
            reasons::CA_NOT_READY,
            "the mesh CA is not loaded yet, so proxies of this revision could not get \
             certificates; see the operator's log or `weft check`"
                .into(),
            generation,
            now,
        )
    };
    let reconciled = condition(
        existing,
        conditions::RECONCILED,
        true,
        reasons::RECONCILED,
        format!(
            "status describes generation {}",
            generation.unwrap_or_default()
        ),
        generation,
        now,
    );
    let unsupported = unsupported_settings(spec);
    let unsupported = if unsupported.is_empty() {
        condition(
            existing,
            conditions::UNSUPPORTED,
            false,
            reasons::ALL_FIELDS_SUPPORTED,
            "every setting in the spec is implemented".into(),
            generation,
            now,
        )
    } else {
        condition(
            existing,
            conditions::UNSUPPORTED,
            true,
            reasons::UNSUPPORTED_FIELDS,
            format!(
                "accepted but not implemented by this version of weft yet, so they have no \
                 effect: {}",
                unsupported.join(", ")
            ),
            generation,
            now,
        )
    };
    let degraded = match &ca.problem {
        Some(issue) => condition(
            existing,
            conditions::DEGRADED,
            true,
            issue.reason,
            issue.message.clone(),
            generation,
            now,
        ),
        None => condition(
            existing,
            conditions::DEGRADED,
            false,
            reasons::CA_HEALTHY,
            "the mesh CA Secret is intact".into(),
            generation,
            now,
        ),
    };
    let mut conditions = vec![ready, reconciled, unsupported, degraded];
    // Only while a root rotation is under way (issue 24): it leaves with the rotation.
    if let Some(rotation) = &ca.rotation {
        conditions.push(condition(
            existing,
            conditions::ROOT_ROTATION,
            true,
            &rotation.reason,
            rotation.message.clone(),
            generation,
            now,
        ));
    }
    MeshConfigStatus {
        conditions,
        observed_generation: generation,
        injected_pods: count(snapshot.pods.iter().filter(|p| p.revision == name).count()),
        namespaces: snapshot
            .namespaces
            .iter()
            .filter(|(_, r)| r.revision.as_deref() == Some(name))
            .map(|(ns, _)| ns.clone())
            .collect(),
        proxies: count(
            snapshot
                .pods
                .iter()
                .filter(|p| p.revision == name && p.proxy_ready)
                .count(),
        ),
        tags: snapshot.tags_of(name),
    }
}

// === Controller ===

pub async fn reconcile(mc: Arc<MeshConfig>, ctx: Arc<Context>) -> Result<Action, Error> {
    if mc.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let name = mc.metadata.name.as_deref().ok_or(Error::NoName)?;
    let snapshot = ctx.stores.snapshot(&ctx.settings);
    let status = meshconfig_status(
        name,
        mc.metadata.generation,
        &mc.spec,
        mc.status.as_ref(),
        &snapshot,
        &(ctx.ca_health)(),
        &super::now(),
    );
    super::apply_status::<MeshConfig, _>(&ctx, name, mc.status.as_ref(), &status).await?;
    Ok(Action::requeue(REQUEUE))
}

// === Label conflicts ===

/// Conflicts to report now: those in `current` (namespace → description) not already reported
/// with the same description.
pub fn new_conflicts(
    current: &BTreeMap<String, String>,
    reported: &HashMap<String, String>,
) -> Vec<(String, String)> {
    current
        .iter()
        .filter(|(ns, message)| reported.get(*ns) != Some(*message))
        .map(|(ns, message)| (ns.clone(), message.clone()))
        .collect()
}

/// One Warning Event per namespace whose enrolment labels disagree (SPEC §4). The Event's name
/// is derived from the namespace and the conflict, so a second replica or a restarted operator
/// gets AlreadyExists instead of repeating it.
pub async fn warn_on_conflicts(ctx: Arc<Context>, trigger: impl Stream<Item = ()> + Send) {
    let mut trigger = std::pin::pin!(trigger);
    loop {
        let current: BTreeMap<String, String> = ctx
            .stores
            .namespaces
            .state()
            .iter()
            .filter_map(|ns| {
                let name = ns.metadata.name.clone()?;
                let skip = name == ctx.settings.namespace
                    || contract::NEVER_INJECTED_NAMESPACES.contains(&name.as_str());
                let labels = ns.metadata.labels.as_ref()?;
                let message = namespace_conflict(labels, &ctx.settings.mesh_name)?;
                (!skip).then_some((name, message))
            })
            .collect();
        let pending = match ctx.reported_conflicts.lock() {
            Ok(mut reported) => {
                reported.retain(|ns, _| current.contains_key(ns));
                new_conflicts(&current, &reported)
            }
            Err(_) => Vec::new(),
        };
        for (namespace, message) in pending {
            match publish_conflict(&ctx, &namespace, &message).await {
                Ok(()) => {
                    tracing::warn!(%namespace, "{message}");
                    if let Ok(mut reported) = ctx.reported_conflicts.lock() {
                        reported.insert(namespace, message);
                    }
                }
                Err(e) => tracing::warn!(%namespace, "cannot record the label conflict: {e}"),
            }
        }
        tokio::select! {
            next = trigger.next() => if next.is_none() { return },
            _ = tokio::time::sleep(REQUEUE) => {}
        }
    }
}

async fn publish_conflict(ctx: &Context, namespace: &str, message: &str) -> Result<(), Error> {
    let uid = ctx
        .stores
        .namespaces
        .state()
        .iter()
        .find(|ns| ns.metadata.name.as_deref() == Some(namespace))
        .and_then(|ns| ns.metadata.uid.clone());
    let event = conflict_event(namespace, uid, message, &ctx.settings.instance);
    events::publish(&ctx.client, event)
        .await
        .map_err(Error::kube(format!(
            "creating an Event about namespace {namespace}"
        )))
}

/// The Warning Event about a namespace's conflicting labels; the same conflict gets the same
/// name.
pub fn conflict_event(
    namespace: &str,
    uid: Option<String>,
    message: &str,
    instance: &str,
) -> Event {
    events::warning(
        events::Regarding {
            api_version: "v1",
            kind: "Namespace",
            namespace: None,
            name: namespace,
            uid,
        },
        reasons::CONFLICTING_LABELS,
        "ResolveRevision",
        message,
        instance,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOADED: CaHealth = CaHealth {
        loaded: true,
        problem: None,
        rotation: None,
    };
    use crate::api::meshconfig::{AccessLogSettings, OutboundTrafficPolicy, TrafficSettings};
    use crate::controllers::index::tests::{
        injected, namespace, revisions, tags, with_ready_proxy,
    };

    fn at(s: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(s).unwrap_or_default())
    }

    /// pets: istio-injection=enabled (default → stable); shop: istio.io/rev=prod (→ canary);
    /// legacy: istio.io/rev=stable; pods: 2 stable (one via default), 1 canary via prod.
    fn snapshot() -> Snapshot {
        let namespaces = [
            namespace("pets", &[("istio-injection", "enabled")]),
            namespace("shop", &[("istio.io/rev", "prod")]),
            namespace("legacy", &[("istio.io/rev", "stable")]),
            namespace("other", &[]),
        ];
        let pods = [
            injected("stable", Some("default")),
            with_ready_proxy(injected("stable", None)),
            injected("canary", Some("prod")),
        ];
        Snapshot::build(
            "weft",
            "weft-system",
            revisions(),
            tags(),
            namespaces.iter(),
            pods.iter(),
        )
    }

    fn cond<'a>(
        status: &'a MeshConfigStatus,
        type_: &str,
    ) -> &'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
        status
            .conditions
            .iter()
            .find(|c| c.type_ == type_)
            .unwrap_or_else(|| panic!("no {type_} condition in {status:?}"))
    }

    #[test]
    fn status_counts_what_uses_the_revision() {
        let s = meshconfig_status(
            "stable",
            Some(3),
            &MeshConfigSpec::default(),
            None,
            &snapshot(),
            &LOADED,
            &at(1),
        );
        assert_eq!(s.injected_pods, 2);
        assert_eq!(s.namespaces, ["legacy", "pets"]);
        assert_eq!(s.tags, ["default"]);
        assert_eq!(s.proxies, 1, "one of the two stable pods has a ready proxy");
        assert_eq!(s.observed_generation, Some(3));

        let s = meshconfig_status(
            "canary",
            Some(1),
            &MeshConfigSpec::default(),
            None,
            &snapshot(),
            &LOADED,
            &at(1),
        );
        assert_eq!(
            (s.injected_pods, s.namespaces.as_slice(), s.tags.as_slice()),
            (1, &["shop".to_string()][..], &["prod".to_string()][..])
        );

        let s = meshconfig_status(
            "unused",
            Some(1),
            &MeshConfigSpec::default(),
            None,
            &Snapshot::default(),
            &LOADED,
            &at(1),
        );
        assert_eq!(
            (s.injected_pods, s.namespaces.len(), s.tags.len()),
            (0, 0, 0)
        );
    }

    #[test]
    fn ready_follows_the_ca_and_keeps_its_transition_time() {
        let spec = MeshConfigSpec::default();
        let waiting = meshconfig_status(
            "stable",
            Some(1),
            &spec,
            None,
            &snapshot(),
            &CaHealth::default(),
            &at(1),
        );
        let ready = cond(&waiting, "Ready");
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "CaNotReady")
        );

        let up = meshconfig_status(
            "stable",
            Some(1),
            &spec,
            Some(&waiting),
            &snapshot(),
            &LOADED,
            &at(5),
        );
        assert_eq!(cond(&up, "Ready").status, "True");
        assert_eq!(cond(&up, "Ready").last_transition_time, at(5));
        assert_eq!(cond(&up, "Reconciled").last_transition_time, at(1));

        let again = meshconfig_status(
            "stable",
            Some(2),
            &spec,
            Some(&up),
            &snapshot(),
            &LOADED,
            &at(9),
        );
        assert_eq!(cond(&again, "Ready").last_transition_time, at(5));
        assert_eq!(cond(&again, "Reconciled").observed_generation, Some(2));
        // Nothing changed: the status is identical, so no write happens.
        let same = meshconfig_status(
            "stable",
            Some(2),
            &spec,
            Some(&again),
            &snapshot(),
            &LOADED,
            &at(20),
        );
        assert_eq!(same, again);
    }

    #[test]
    fn a_root_rotation_under_way_is_a_condition_that_leaves_with_it() {
        let spec = MeshConfigSpec::default();
        let rotating = CaHealth {
            rotation: Some(crate::controllers::RotationPhase {
                reason: "Reissuing".into(),
                message: "root rotation r1: (b) the new root signs".into(),
            }),
            ..LOADED
        };
        let during = meshconfig_status(
            "stable",
            Some(1),
            &spec,
            None,
            &snapshot(),
            &rotating,
            &at(1),
        );
        let c = cond(&during, "RootRotation");
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("True", "Reissuing")
        );
        let after = meshconfig_status(
            "stable",
            Some(1),
            &spec,
            Some(&during),
            &snapshot(),
            &LOADED,
            &at(2),
        );
        assert!(after.conditions.iter().all(|c| c.type_ != "RootRotation"));
    }

    #[test]
    fn degraded_carries_the_ca_problem_and_clears_when_it_is_fixed() {
        let spec = MeshConfigSpec::default();
        let healthy =
            meshconfig_status("stable", Some(1), &spec, None, &snapshot(), &LOADED, &at(1));
        assert_eq!(cond(&healthy, "Degraded").status, "False");
        let broken = CaHealth {
            loaded: true,
            problem: Some(crate::controllers::CaIssue {
                reason: "CaSecretCorrupted",
                secret: "weft-ca".into(),
                message: "Secret weft-system/weft-ca is corrupted (no ca.crt)".into(),
            }),
            rotation: None,
        };
        let degraded = meshconfig_status(
            "stable",
            Some(1),
            &spec,
            Some(&healthy),
            &snapshot(),
            &broken,
            &at(4),
        );
        let c = cond(&degraded, "Degraded");
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("True", "CaSecretCorrupted")
        );
        assert!(c.message.contains("no ca.crt"), "{c:?}");
        assert_eq!(c.last_transition_time, at(4));
        // The CA in memory still signs: Ready stays True while the Secret is broken.
        assert_eq!(cond(&degraded, "Ready").status, "True");
        let fixed = meshconfig_status(
            "stable",
            Some(1),
            &spec,
            Some(&degraded),
            &snapshot(),
            &LOADED,
            &at(9),
        );
        assert_eq!(cond(&fixed, "Degraded").status, "False");
        assert_eq!(cond(&fixed, "Degraded").last_transition_time, at(9));
    }

    #[test]
    fn unsupported_settings_are_named() {
        // (spec, expected names)
        let registry_only = MeshConfigSpec {
            traffic: Some(TrafficSettings {
                outbound_traffic_policy: Some(OutboundTrafficPolicy::RegistryOnly),
                enable_permissive_traffic_policy_mode: Some(false),
                ..Default::default()
            }),
            access_log: Some(AccessLogSettings {
                enabled: Some(true),
                format: None,
            }),
            ..Default::default()
        };
        let explicit_defaults = MeshConfigSpec {
            traffic: Some(TrafficSettings {
                outbound_traffic_policy: Some(OutboundTrafficPolicy::AllowAny),
                enable_permissive_traffic_policy_mode: Some(true),
                ..Default::default()
            }),
            access_log: Some(AccessLogSettings {
                enabled: Some(false),
                format: None,
            }),
            ..Default::default()
        };
        let table: [(MeshConfigSpec, Vec<&str>); 3] = [
            (MeshConfigSpec::default(), vec![]),
            (explicit_defaults, vec![]),
            (
                registry_only,
                // REGISTRY_ONLY is enforced since issue 20 (docs/egress.md),
                // enablePermissiveTrafficPolicyMode=false is OSM's restrictive mode,
                // enforced since issue 18 (docs/authz.md), and accessLog.enabled=true is
                // written by the proxies (docs/proxy.md), so none is listed.
                vec![],
            ),
        ];
        for (spec, expected) in table {
            assert_eq!(unsupported_settings(&spec), expected);
            let s = meshconfig_status(
                "stable",
                Some(1),
                &spec,
                None,
                &Snapshot::default(),
                &LOADED,
                &at(1),
            );
            let c = cond(&s, "Unsupported");
            assert_eq!(c.status, if expected.is_empty() { "False" } else { "True" });
            for name in expected {
                assert!(c.message.contains(name), "{}", c.message);
            }
        }
    }

    #[test]
    fn a_conflict_is_reported_once_and_again_only_when_it_changes() {
        let current: BTreeMap<String, String> = [
            ("pets".to_string(), "a".to_string()),
            ("shop".to_string(), "b".to_string()),
        ]
        .into();
        let mut reported = HashMap::new();
        assert_eq!(new_conflicts(&current, &reported).len(), 2);
        reported.insert("pets".to_string(), "a".to_string());
        assert_eq!(
            new_conflicts(&current, &reported),
            [("shop".to_string(), "b".to_string())]
        );
        reported.insert("shop".to_string(), "old".to_string());
        assert_eq!(
            new_conflicts(&current, &reported),
            [("shop".to_string(), "b".to_string())]
        );
        reported.insert("shop".to_string(), "b".to_string());
        assert!(new_conflicts(&current, &reported).is_empty());
    }

    #[test]
    fn the_same_conflict_gets_the_same_event_name() {
        let a = conflict_event("pets", None, "x wins over y", "op-1");
        let b = conflict_event("pets", Some("uid".into()), "x wins over y", "op-2");
        let c = conflict_event("pets", None, "x wins over z", "op-1");
        assert_eq!(a.metadata.name, b.metadata.name);
        assert_ne!(a.metadata.name, c.metadata.name);
        assert_eq!(a.type_.as_deref(), Some("Warning"));
        assert_eq!(a.metadata.namespace.as_deref(), Some("default"));
        assert_eq!(
            a.regarding.and_then(|r| r.kind).as_deref(),
            Some("Namespace")
        );
    }
}
