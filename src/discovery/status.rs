//! The `WeftAccepted` condition weft writes into the status of every Istio policy and route it
//! compiles (PeerAuthentication, AuthorizationPolicy, DestinationRule, VirtualService,
//! ServiceEntry, Gateway): `True`
//! when the object is applied as written, `False` with what to change when it is not. Computed
//! from the index's problems (pure), written by the leader only when it changes.
//!
//! The condition follows Istio's own per-component conditions on these kinds (ambient's
//! `ZtunnelAccepted`, `WaypointAccepted`): one entry of `status.conditions`, other entries
//! (Istio's, another controller's) kept as they are. SMI's CRDs have no status subresource;
//! their problems stay Warning Events only.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use kube::{Client, Resource};
use serde_json::{Value, json};
use tokio::sync::watch;

use super::model::{MeshIndex, MeshView};
use super::policy::PolicyProblem;

/// The condition type (as `kubectl wait --for=condition=WeftAccepted` names it).
pub const CONDITION: &str = "WeftAccepted";
/// Reasons: applied as written, or not (the message says what to change).
pub const REASON_ACCEPTED: &str = "Accepted";
pub const REASON_NOT_APPLIED: &str = "NotApplied";
/// Longest wait for one object's read and write.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Kubernetes caps a condition message at 32,768 bytes.
const MAX_MESSAGE: usize = 32 * 1024;

/// One object whose status weft owns a condition of.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
}

/// What the object's `WeftAccepted` condition should say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub generation: Option<i64>,
    pub accepted: bool,
    pub message: String,
}

/// The objects of `view` that carry the condition, with their generation.
pub fn targets(view: &MeshView) -> Vec<(ObjectKey, Option<i64>)> {
    fn keys<K: Resource>(kind: &'static str, objects: &[Arc<K>]) -> Vec<(ObjectKey, Option<i64>)> {
        objects
            .iter()
            .filter_map(|o| {
                let m = o.meta();
                Some((
                    ObjectKey {
                        kind,
                        namespace: m.namespace.clone()?,
                        name: m.name.clone()?,
                    },
                    m.generation,
                ))
            })
            .collect()
    }
    let mut all = keys("PeerAuthentication", &view.peer_authentications);
    all.extend(keys("AuthorizationPolicy", &view.authorization_policies));
    all.extend(keys("DestinationRule", &view.destination_rules));
    all.extend(keys("VirtualService", &view.virtual_services));
    all.extend(keys("ServiceEntry", &view.service_entries));
    all.extend(keys("Gateway", &view.istio_gateways));
    all
}

/// Each target's verdict: accepted unless a problem names it; the problems' messages, in
/// order and each once, are the message.
pub fn verdicts(
    targets: &[(ObjectKey, Option<i64>)],
    problems: &[PolicyProblem],
) -> BTreeMap<ObjectKey, Verdict> {
    let mut out: BTreeMap<ObjectKey, Verdict> = targets
        .iter()
        .map(|(k, generation)| {
            (
                k.clone(),
                Verdict {
                    generation: *generation,
                    accepted: true,
                    message: "applied as written".into(),
                },
            )
        })
        .collect();
    let mut messages: BTreeMap<&ObjectKey, Vec<&str>> = BTreeMap::new();
    for p in problems {
        let key = ObjectKey {
            kind: p.kind,
            namespace: p.namespace.clone(),
            name: p.name.clone(),
        };
        if let Some((k, _)) = out.get_key_value(&key) {
            let list = messages.entry(k).or_default();
            if !list.contains(&p.message.as_str()) {
                list.push(&p.message);
            }
        }
    }
    let messages: Vec<(ObjectKey, String)> = messages
        .into_iter()
        .map(|(k, list)| (k.clone(), truncate(list.join("; "))))
        .collect();
    for (k, message) in messages {
        if let Some(v) = out.get_mut(&k) {
            v.accepted = false;
            v.message = message;
        }
    }
    out
}

fn truncate(mut s: String) -> String {
    if s.len() > MAX_MESSAGE {
        let mut end = MAX_MESSAGE - 3;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push_str("...");
    }
    s
}

/// The object's `status.conditions` with weft's entry set to `verdict` and the others kept.
/// `lastTransitionTime` changes only when the condition's status does.
pub fn merged_conditions(existing: &Value, verdict: &Verdict, now: &str) -> Vec<Value> {
    let list = existing.as_array().cloned().unwrap_or_default();
    let status = if verdict.accepted { "True" } else { "False" };
    let previous = list.iter().find(|c| c["type"] == CONDITION);
    let since = match previous {
        Some(c) if c["status"] == status => {
            c["lastTransitionTime"].as_str().unwrap_or(now).to_string()
        }
        _ => now.to_string(),
    };
    let mut condition = json!({
        "type": CONDITION,
        "status": status,
        "reason": if verdict.accepted { REASON_ACCEPTED } else { REASON_NOT_APPLIED },
        "message": verdict.message,
        "lastTransitionTime": since,
    });
    if let Some(g) = verdict.generation {
        condition["observedGeneration"] = json!(g);
    }
    let mut out: Vec<Value> = list
        .into_iter()
        .filter(|c| c["type"] != CONDITION)
        .collect();
    out.push(condition);
    out
}

/// True when `existing` already says what `verdict` says (so nothing is written).
pub fn up_to_date(existing: &Value, verdict: &Verdict) -> bool {
    let Some(c) = existing
        .as_array()
        .and_then(|l| l.iter().find(|c| c["type"] == CONDITION))
    else {
        return false;
    };
    c["status"] == if verdict.accepted { "True" } else { "False" }
        && c["message"] == verdict.message.as_str()
        && c["observedGeneration"].as_i64() == verdict.generation
}

fn api_resource(kind: &str) -> Option<ApiResource> {
    let (group, plural) = match kind {
        "PeerAuthentication" => ("security.istio.io", "peerauthentications"),
        "AuthorizationPolicy" => ("security.istio.io", "authorizationpolicies"),
        "DestinationRule" => ("networking.istio.io", "destinationrules"),
        "VirtualService" => ("networking.istio.io", "virtualservices"),
        "ServiceEntry" => ("networking.istio.io", "serviceentries"),
        "Gateway" => ("networking.istio.io", "gateways"),
        _ => return None,
    };
    Some(ApiResource {
        group: group.into(),
        version: "v1".into(),
        api_version: format!("{group}/v1"),
        kind: kind.into(),
        plural: plural.into(),
    })
}

/// Writes the verdicts of each new index while this replica leads. What it wrote is
/// remembered per leadership term, so an unchanged verdict costs nothing; a new leader
/// reads each object once and writes only where the condition differs.
pub async fn run(
    client: Client,
    leading: Arc<AtomicBool>,
    mut index: watch::Receiver<Arc<MeshIndex>>,
) {
    // Gateway API Gateways: their deployments and statuses, the same leadership.
    tokio::spawn(super::gateway_api_deploy::run(
        client.clone(),
        leading.clone(),
        index.clone(),
    ));
    // GAMMA routes' status.parents: the same leadership, the same indexes.
    tokio::spawn(super::gamma_status::run(
        client.clone(),
        leading.clone(),
        index.clone(),
    ));
    let mut written: HashMap<ObjectKey, Verdict> = HashMap::new();
    loop {
        if leading.load(Ordering::Acquire) {
            let current = index.borrow_and_update().clone();
            let verdicts = current.verdicts();
            written.retain(|k, _| verdicts.contains_key(k));
            for (key, verdict) in verdicts {
                if written.get(key) == Some(verdict) {
                    continue;
                }
                // Leadership may end while a long list is written: stop at once.
                if !leading.load(Ordering::Acquire) {
                    break;
                }
                let bounded = tokio::time::timeout(CALL_TIMEOUT, write(&client, key, verdict));
                match bounded.await.unwrap_or_else(|_| {
                    Err(kube::Error::Service(
                        "the API server did not answer in time".into(),
                    ))
                }) {
                    Ok(()) => {
                        written.insert(key.clone(), verdict.clone());
                    }
                    Err(e) => {
                        tracing::debug!(kind = key.kind, namespace = %key.namespace, name = %key.name, error = %e, "could not write the WeftAccepted condition; retried on the next change")
                    }
                }
            }
        } else {
            written.clear();
        }
        // A new index, or a periodic look (leadership may have moved, a write may have failed).
        tokio::select! {
            changed = index.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(Duration::from_secs(15)) => {
                if !leading.load(Ordering::Acquire) { written.clear(); }
            }
        }
    }
}

async fn write(client: &Client, key: &ObjectKey, verdict: &Verdict) -> kube::Result<()> {
    let Some(resource) = api_resource(key.kind) else {
        return Ok(());
    };
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &key.namespace, &resource);
    let object = match api.get_opt(&key.name).await? {
        Some(o) => o,
        None => return Ok(()), // deleted meanwhile
    };
    let existing = &object.data["status"]["conditions"];
    if up_to_date(existing, verdict) {
        return Ok(());
    }
    let now = k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let patch = json!({
        "metadata": {"resourceVersion": object.metadata.resource_version},
        "status": {"conditions": merged_conditions(existing, verdict, &now)},
    });
    api.patch_status(&key.name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(kind: &'static str, name: &str) -> ObjectKey {
        ObjectKey {
            kind,
            namespace: "shop".into(),
            name: name.into(),
        }
    }

    fn problem(kind: &'static str, name: &str, message: &str) -> PolicyProblem {
        PolicyProblem {
            kind,
            namespace: "shop".into(),
            name: name.into(),
            message: message.into(),
        }
    }

    #[test]
    fn an_object_without_problems_is_accepted_and_one_with_problems_says_each_once() {
        let targets = vec![
            (key("AuthorizationPolicy", "good"), Some(3)),
            (key("AuthorizationPolicy", "bad"), Some(1)),
            (key("VirtualService", "bad"), None),
        ];
        let problems = vec![
            problem(
                "AuthorizationPolicy",
                "bad",
                "action CUSTOM is not supported",
            ),
            problem(
                "AuthorizationPolicy",
                "bad",
                "action CUSTOM is not supported",
            ),
            problem(
                "AuthorizationPolicy",
                "bad",
                "rules[0].from[0]: unknown field typo",
            ),
            // A problem of an SMI kind or of an object not in the view writes nothing.
            problem("TrafficTarget", "bad", "x"),
            problem("AuthorizationPolicy", "gone", "x"),
        ];
        let v = verdicts(&targets, &problems);
        assert_eq!(v.len(), 3);
        let good = &v[&key("AuthorizationPolicy", "good")];
        assert!(good.accepted);
        assert_eq!(good.generation, Some(3));
        let bad = &v[&key("AuthorizationPolicy", "bad")];
        assert!(!bad.accepted);
        assert_eq!(
            bad.message,
            "action CUSTOM is not supported; rules[0].from[0]: unknown field typo"
        );
        assert!(v[&key("VirtualService", "bad")].accepted);
    }

    #[test]
    fn the_condition_replaces_only_its_own_entry_and_keeps_its_transition_time() {
        let existing = json!([
            {"type": "Reconciled", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"},
            {"type": CONDITION, "status": "False", "message": "old", "lastTransitionTime": "2026-02-02T00:00:00Z"},
        ]);
        let refused = Verdict {
            generation: Some(2),
            accepted: false,
            message: "new reason".into(),
        };
        let merged = merged_conditions(&existing, &refused, "2026-12-06T09:00:00Z");
        assert_eq!(merged.len(), 2);
        assert_eq!(merged[0]["type"], "Reconciled");
        assert_eq!(merged[1]["status"], "False");
        assert_eq!(merged[1]["reason"], REASON_NOT_APPLIED);
        assert_eq!(merged[1]["message"], "new reason");
        assert_eq!(merged[1]["observedGeneration"], 2);
        // Same status: the transition time stays.
        assert_eq!(merged[1]["lastTransitionTime"], "2026-02-02T00:00:00Z");
        assert!(up_to_date(&Value::Array(merged.clone()), &refused));

        let accepted = Verdict {
            accepted: true,
            message: "applied as written".into(),
            ..refused.clone()
        };
        assert!(!up_to_date(&Value::Array(merged.clone()), &accepted));
        let flipped = merged_conditions(&Value::Array(merged), &accepted, "2026-12-06T09:00:00Z");
        assert_eq!(flipped[1]["status"], "True");
        assert_eq!(flipped[1]["reason"], REASON_ACCEPTED);
        assert_eq!(flipped[1]["lastTransitionTime"], "2026-12-06T09:00:00Z");
        // No status yet.
        let first = merged_conditions(&Value::Null, &accepted, "t");
        assert_eq!(first.len(), 1);
        assert!(!up_to_date(&Value::Null, &accepted));
    }

    #[test]
    fn a_huge_message_is_cut_below_the_kubernetes_limit_on_a_char_boundary() {
        let long = "é".repeat(MAX_MESSAGE);
        let cut = truncate(long);
        assert!(cut.len() <= MAX_MESSAGE);
        assert!(cut.ends_with("..."));
    }
}
