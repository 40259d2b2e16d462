//! The RevisionTag controller: writes each tag's status (the revision it resolves to, Resolved
//! and InUse, the namespaces and pods using it, and the stale pods still running the revision
//! it pointed at before). It only reports: moving a tag never restarts a workload.

use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::controller::Action;

use super::index::{Snapshot, count};
use super::{Context, Error, REQUEUE, condition, reasons};
use crate::api::{RevisionTag, RevisionTagSpec, RevisionTagStatus, conditions};

/// The status of tag `name` in `snapshot`; `operator_namespace` is where MeshConfigs live.
pub fn tag_status(
    name: &str,
    generation: Option<i64>,
    spec: &RevisionTagSpec,
    current: Option<&RevisionTagStatus>,
    snapshot: &Snapshot,
    operator_namespace: &str,
    now: &Time,
) -> RevisionTagStatus {
    let existing = current.map(|s| s.conditions.as_slice()).unwrap_or_default();
    let found = snapshot.revisions.contains(&spec.revision);
    let resolved = if found {
        condition(
            existing,
            conditions::RESOLVED,
            true,
            reasons::REVISION_FOUND,
            format!("points at MeshConfig {:?}", spec.revision),
            generation,
            now,
        )
    } else {
        let known = if snapshot.revisions.is_empty() {
            "none".to_string()
        } else {
            snapshot
                .revisions
                .iter()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        };
        condition(
            existing,
            conditions::RESOLVED,
            false,
            reasons::REVISION_NOT_FOUND,
            format!(
                "MeshConfig {rev:?} does not exist in namespace {operator_namespace}, so pods \
                 selecting this tag are refused. Create MeshConfig {rev:?} or point the tag at \
                 an existing revision (known revisions: {known}): weft tag set {name} \
                 --revision <revision> --overwrite",
                rev = spec.revision,
            ),
            generation,
            now,
        )
    };

    let namespaces: Vec<String> = snapshot
        .namespaces
        .iter()
        .filter(|(_, r)| r.tag.as_deref() == Some(name))
        .map(|(ns, _)| ns.clone())
        .collect();
    let through_tag = || {
        snapshot
            .pods
            .iter()
            .filter(|p| p.tag.as_deref() == Some(name))
    };
    let pods = through_tag().count();
    let stale = through_tag()
        .filter(|p| p.revision != spec.revision)
        .count();
    let in_use = if namespaces.is_empty() && pods == 0 {
        condition(
            existing,
            conditions::IN_USE,
            false,
            reasons::NOT_IN_USE,
            "no namespace label selects this tag and no running pod was injected through it".into(),
            generation,
            now,
        )
    } else {
        let mut message = format!(
            "selected by {} namespace(s); {pods} running pod(s) injected through it",
            namespaces.len()
        );
        if stale > 0 {
            message.push_str(&format!(
                "; {stale} of them still run another revision than {:?} and move on their \
                 next restart",
                spec.revision
            ));
        }
        condition(
            existing,
            conditions::IN_USE,
            true,
            reasons::IN_USE,
            message,
            generation,
            now,
        )
    };

    RevisionTagStatus {
        revision: found.then(|| spec.revision.clone()),
        conditions: vec![resolved, in_use],
        namespaces,
        pods: count(pods),
        stale_pods: count(stale),
    }
}

// === Controller ===

pub async fn reconcile(tag: Arc<RevisionTag>, ctx: Arc<Context>) -> Result<Action, Error> {
    if tag.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let name = tag.metadata.name.as_deref().ok_or(Error::NoName)?;
    let snapshot = ctx.stores.snapshot(&ctx.settings);
    let status = tag_status(
        name,
        tag.metadata.generation,
        &tag.spec,
        tag.status.as_ref(),
        &snapshot,
        &ctx.settings.namespace,
        &super::now(),
    );
    super::apply_status::<RevisionTag, _>(&ctx, name, tag.status.as_ref(), &status).await?;
    Ok(Action::requeue(REQUEUE))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controllers::index::tests::{injected, namespace, revisions, tags};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

    fn at(s: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(s).unwrap_or_default())
    }

    /// Tags default → stable, prod → canary, broken → gone. Namespaces: pets
    /// (istio-injection=enabled), osm (monitored-by=weft), shop (istio.io/rev=prod), legacy
    /// (istio.io/rev=stable, no tag), lost (istio.io/rev=broken). Pods through default: two on
    /// stable, one still on canary (the tag moved); through prod: one on canary.
    fn snapshot() -> Snapshot {
        let namespaces = [
            namespace("pets", &[("istio-injection", "enabled")]),
            namespace("osm", &[("openservicemesh.io/monitored-by", "weft")]),
            namespace("shop", &[("istio.io/rev", "prod")]),
            namespace("legacy", &[("istio.io/rev", "stable")]),
            namespace("lost", &[("istio.io/rev", "broken")]),
        ];
        let pods = [
            injected("stable", Some("default")),
            injected("stable", Some("default")),
            injected("canary", Some("default")),
            injected("canary", Some("prod")),
            injected("stable", None),
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

    fn status(tag: &str, revision: &str, snapshot: &Snapshot) -> RevisionTagStatus {
        let spec = RevisionTagSpec {
            revision: revision.into(),
        };
        tag_status(tag, Some(1), &spec, None, snapshot, "weft-system", &at(1))
    }

    fn cond<'a>(s: &'a RevisionTagStatus, type_: &str) -> &'a Condition {
        s.conditions
            .iter()
            .find(|c| c.type_ == type_)
            .unwrap_or_else(|| panic!("no {type_} condition in {s:?}"))
    }

    #[test]
    fn counts_namespaces_pods_and_stale_pods_per_tag() {
        // (tag, spec.revision, resolved revision, namespaces, pods, stale, Resolved, InUse)
        type Row = (
            &'static str,
            &'static str,
            Option<&'static str>,
            &'static [&'static str],
            i32,
            i32,
            &'static str,
            &'static str,
        );
        let table: [Row; 4] = [
            (
                "default",
                "stable",
                Some("stable"),
                &["osm", "pets"],
                3,
                1,
                "True",
                "True",
            ),
            (
                "prod",
                "canary",
                Some("canary"),
                &["shop"],
                1,
                0,
                "True",
                "True",
            ),
            ("broken", "gone", None, &["lost"], 0, 0, "False", "True"),
            (
                "spare",
                "stable",
                Some("stable"),
                &[],
                0,
                0,
                "True",
                "False",
            ),
        ];
        let snap = snapshot();
        for (tag, rev, resolved, namespaces, pods, stale, is_resolved, in_use) in table {
            let s = status(tag, rev, &snap);
            assert_eq!(s.revision.as_deref(), resolved, "{tag}");
            assert_eq!(s.namespaces, namespaces, "{tag}");
            assert_eq!((s.pods, s.stale_pods), (pods, stale), "{tag}");
            assert_eq!(cond(&s, "Resolved").status, is_resolved, "{tag}");
            assert_eq!(cond(&s, "InUse").status, in_use, "{tag}");
        }
    }

    #[test]
    fn moving_the_tag_makes_its_pods_stale() {
        let snap = snapshot();
        // `weft tag set default --revision canary --overwrite`: the two stable pods are stale
        // now, the canary one is current.
        let s = status("default", "canary", &snap);
        assert_eq!((s.pods, s.stale_pods), (3, 2));
        assert!(
            cond(&s, "InUse")
                .message
                .contains("2 of them still run another revision")
        );
    }

    #[test]
    fn a_tag_to_a_missing_revision_says_what_to_do() {
        let s = status("broken", "gone", &snapshot());
        let resolved = cond(&s, "Resolved");
        assert_eq!(resolved.reason, "RevisionNotFound");
        for needle in [
            "MeshConfig \"gone\"",
            "weft-system",
            "canary, stable",
            "weft tag set broken --revision",
        ] {
            assert!(
                resolved.message.contains(needle),
                "{needle}: {}",
                resolved.message
            );
        }
        assert_eq!(s.revision, None);
    }

    #[test]
    fn counts_are_always_serialized() {
        let s = status("spare", "stable", &Snapshot::default());
        let json = serde_json::to_value(&s).unwrap_or_default();
        assert_eq!(json["pods"], 0);
        assert_eq!(json["stalePods"], 0);
        assert_eq!(json["namespaces"], serde_json::json!([]));
    }

    #[test]
    fn unchanged_status_is_identical_so_nothing_is_written() {
        let snap = snapshot();
        let spec = RevisionTagSpec {
            revision: "stable".into(),
        };
        let first = tag_status(
            "default",
            Some(1),
            &spec,
            None,
            &snap,
            "weft-system",
            &at(1),
        );
        let again = tag_status(
            "default",
            Some(1),
            &spec,
            Some(&first),
            &snap,
            "weft-system",
            &at(50),
        );
        assert_eq!(first, again);
    }
}
