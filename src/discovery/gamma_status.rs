//! `status.parents[]` of GAMMA routes, as a Gateway API implementation writes it: one entry
//! per Service parent weft serves, with `controllerName: weft.dev/gateway-controller`, the
//! parent reference echoed, and the `Accepted` and `ResolvedRefs` conditions (plus
//! `PartiallyInvalid` when rules were dropped) at the route's generation. Entries of other
//! controllers are kept as they are. Written by the leader only, when they change.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use kube::Client;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use serde_json::{Value, json};
use tokio::sync::watch;

use super::model::MeshIndex;
use crate::api::gateway_api::{CONTROLLER_NAME, GROUP, VERSION};
use crate::route::gamma::{
    ACCEPTED, Condition, PARTIALLY_INVALID, ParentStatus, RESOLVED_REFS, RouteKind, RouteStatus,
};

/// Longest wait for one route's read and write.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

type RouteKey = (RouteKind, String, String);

fn key(s: &RouteStatus) -> RouteKey {
    (s.kind, s.namespace.clone(), s.name.clone())
}

fn api_resource(kind: RouteKind) -> ApiResource {
    let plural = match kind {
        RouteKind::Http => "httproutes",
        RouteKind::Grpc => "grpcroutes",
        RouteKind::Tls => "tlsroutes",
        RouteKind::Tcp => "tcproutes",
    };
    ApiResource {
        group: GROUP.into(),
        version: VERSION.into(),
        api_version: format!("{GROUP}/{VERSION}"),
        kind: kind.kind().into(),
        plural: plural.into(),
    }
}

/// One condition as `metav1.Condition`; `lastTransitionTime` kept from `previous` (the
/// entry this controller wrote before for the same parent) while the status is unchanged.
pub(super) fn condition(
    type_: &str,
    c: &Condition,
    generation: Option<i64>,
    previous: Option<&Value>,
    now: &str,
) -> Value {
    let status = if c.status { "True" } else { "False" };
    let since = previous
        .and_then(|p| p["conditions"].as_array())
        .and_then(|l| l.iter().find(|x| x["type"] == type_))
        .filter(|x| x["status"] == status)
        .and_then(|x| x["lastTransitionTime"].as_str())
        .unwrap_or(now);
    let mut out = json!({
        "type": type_,
        "status": status,
        "reason": c.reason,
        "message": bounded(&c.message),
        "lastTransitionTime": since,
    });
    if let Some(g) = generation {
        out["observedGeneration"] = json!(g);
    }
    out
}

/// A condition message within the API's 32,768-byte limit, cut on a character boundary.
fn bounded(message: &str) -> String {
    const MAX: usize = 32 * 1024;
    if message.len() <= MAX {
        return message.to_string();
    }
    let mut end = MAX - 3;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &message[..end])
}

fn parent_entry(
    p: &ParentStatus,
    generation: Option<i64>,
    previous: Option<&Value>,
    now: &str,
) -> Value {
    let mut conditions = vec![
        condition(ACCEPTED, &p.accepted, generation, previous, now),
        condition(RESOLVED_REFS, &p.resolved_refs, generation, previous, now),
    ];
    if let Some(c) = &p.partially_invalid {
        conditions.push(condition(PARTIALLY_INVALID, c, generation, previous, now));
    }
    json!({
        "parentRef": p.parent_ref,
        "controllerName": CONTROLLER_NAME,
        "conditions": conditions,
    })
}

/// The route's `status.parents` with weft's entries set to `status` (none when `status` is
/// None) and every other controller's entry kept, in place.
pub fn merged_parents(existing: &Value, status: Option<&RouteStatus>, now: &str) -> Vec<Value> {
    let list = existing.as_array().cloned().unwrap_or_default();
    let ours = |v: &Value| v["controllerName"] == CONTROLLER_NAME;
    let previous_of = |p: &ParentStatus| {
        let want = serde_json::to_value(&p.parent_ref).unwrap_or(Value::Null);
        list.iter()
            .find(|v| ours(v) && v["parentRef"] == want)
            .cloned()
    };
    let mut out: Vec<Value> = list.iter().filter(|v| !ours(v)).cloned().collect();
    if let Some(s) = status {
        for p in &s.parents {
            let previous = previous_of(p);
            out.push(parent_entry(p, s.generation, previous.as_ref(), now));
        }
    }
    out
}

/// True when weft's entries in `existing` already say what `status` says (times aside).
pub fn up_to_date(existing: &Value, status: Option<&RouteStatus>) -> bool {
    let strip = |list: Vec<Value>| -> Vec<Value> {
        list.into_iter()
            .filter(|v| v["controllerName"] == CONTROLLER_NAME)
            .map(|mut v| {
                if let Some(cs) = v["conditions"].as_array_mut() {
                    for c in cs {
                        if let Some(o) = c.as_object_mut() {
                            o.remove("lastTransitionTime");
                        }
                    }
                }
                v
            })
            .collect()
    };
    let have = strip(existing.as_array().cloned().unwrap_or_default());
    let want = strip(merged_parents(&Value::Null, status, ""));
    have == want
}

/// Writes the GAMMA statuses of each new index while this replica leads (started beside the
/// `WeftAccepted` writer, [`super::status::run`]). A route weft stops claiming has its
/// entries removed (within one leadership term; a new leader only writes what it claims).
pub async fn run(
    client: Client,
    leading: Arc<AtomicBool>,
    mut index: watch::Receiver<Arc<MeshIndex>>,
) {
    let mut written: HashMap<RouteKey, RouteStatus> = HashMap::new();
    loop {
        if leading.load(Ordering::Acquire) {
            let current = index.borrow_and_update().clone();
            let statuses: HashMap<RouteKey, &RouteStatus> = current
                .gamma_statuses()
                .iter()
                .map(|s| (key(s), s))
                .collect();
            let gone: Vec<RouteKey> = written
                .keys()
                .filter(|k| !statuses.contains_key(k))
                .cloned()
                .collect();
            let mut work: Vec<(RouteKey, Option<&RouteStatus>)> =
                gone.into_iter().map(|k| (k, None)).collect();
            work.extend(
                statuses
                    .iter()
                    .filter(|(k, s)| written.get(*k) != Some(**s))
                    .map(|(k, s)| (k.clone(), Some(*s))),
            );
            for (k, status) in work {
                if !leading.load(Ordering::Acquire) {
                    break;
                }
                let bounded = tokio::time::timeout(CALL_TIMEOUT, write(&client, &k, status));
                match bounded.await {
                    Ok(Ok(())) => match status {
                        Some(s) => {
                            written.insert(k, s.clone());
                        }
                        None => {
                            written.remove(&k);
                        }
                    },
                    Ok(Err(e)) => {
                        tracing::debug!(kind = k.0.kind(), namespace = %k.1, name = %k.2, error = %e, "could not write a route's status.parents; retried on the next change")
                    }
                    Err(_) => {
                        tracing::debug!(kind = k.0.kind(), namespace = %k.1, name = %k.2, "the API server did not answer in time; retried on the next change")
                    }
                }
            }
        } else {
            written.clear();
        }
        tokio::select! {
            changed = index.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(Duration::from_secs(15)) => {
                if !leading.load(Ordering::Acquire) { written.clear(); }
            }
        }
    }
}

async fn write(client: &Client, k: &RouteKey, status: Option<&RouteStatus>) -> kube::Result<()> {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &k.1, &api_resource(k.0));
    let Some(object) = api.get_opt(&k.2).await? else {
        return Ok(()); // deleted meanwhile
    };
    let existing = &object.data["status"]["parents"];
    if up_to_date(existing, status) {
        return Ok(());
    }
    let now = k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    // The resourceVersion makes the write fail rather than drop another controller's entry
    // written since the read; the next change retries.
    let patch = json!({
        "metadata": {"resourceVersion": object.metadata.resource_version},
        "status": {"parents": merged_parents(existing, status, &now)},
    });
    api.patch_status(&k.2, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::gateway_api::common::ParentReference;
    use crate::route::gamma::{REASON_ACCEPTED, REASON_BACKEND_NOT_FOUND};

    fn status(resolved: bool) -> RouteStatus {
        RouteStatus {
            kind: RouteKind::Http,
            namespace: "shop".into(),
            name: "reviews".into(),
            generation: Some(4),
            uid: None,
            parents: vec![ParentStatus {
                parent_ref: ParentReference {
                    group: Some(String::new()),
                    kind: Some("Service".into()),
                    name: "reviews".into(),
                    ..Default::default()
                },
                accepted: Condition {
                    status: true,
                    reason: REASON_ACCEPTED,
                    message: "ok".into(),
                },
                resolved_refs: Condition {
                    status: resolved,
                    reason: if resolved {
                        "ResolvedRefs"
                    } else {
                        REASON_BACKEND_NOT_FOUND
                    },
                    message: "m".into(),
                },
                partially_invalid: None,
            }],
        }
    }

    #[test]
    fn weft_writes_its_own_parents_and_keeps_other_controllers_entries() {
        let other = json!({"parentRef": {"name": "gw"}, "controllerName": "istio.io/gateway-controller",
                           "conditions": [{"type": "Accepted", "status": "True"}]});
        let existing = json!([other.clone()]);
        let s = status(false);
        let merged = merged_parents(&existing, Some(&s), "2026-12-06T12:00:00Z");
        assert_eq!(merged.len(), 2);
        assert_eq!(
            merged[0], other,
            "another controller's entry is kept as it was"
        );
        let ours = &merged[1];
        assert_eq!(ours["controllerName"], CONTROLLER_NAME);
        assert_eq!(
            ours["parentRef"],
            json!({"group": "", "kind": "Service", "name": "reviews"})
        );
        let conds = ours["conditions"].as_array().unwrap();
        assert_eq!(conds[0]["type"], "Accepted");
        assert_eq!(conds[0]["status"], "True");
        assert_eq!(conds[0]["observedGeneration"], 4);
        assert_eq!(conds[1]["type"], "ResolvedRefs");
        assert_eq!(conds[1]["status"], "False");
        assert_eq!(conds[1]["reason"], REASON_BACKEND_NOT_FOUND);
        assert!(up_to_date(&Value::Array(merged.clone()), Some(&s)));
        assert!(!up_to_date(
            &Value::Array(merged.clone()),
            Some(&status(true))
        ));

        // Fixed: ResolvedRefs flips and gets a new transition time; Accepted keeps its own.
        let later = merged_parents(
            &Value::Array(merged.clone()),
            Some(&status(true)),
            "2026-12-06T13:00:00Z",
        );
        let conds = later[1]["conditions"].as_array().unwrap();
        assert_eq!(conds[0]["lastTransitionTime"], "2026-12-06T12:00:00Z");
        assert_eq!(conds[1]["lastTransitionTime"], "2026-12-06T13:00:00Z");

        // No longer ours to speak for: only the other controller's entry stays.
        let dropped = merged_parents(&Value::Array(later), None, "t");
        assert_eq!(dropped, vec![other]);
    }
}
