//! What a pod's workload is called, as Istio names it (the injector's
//! `ISTIO_META_WORKLOAD_NAME`, the `*_workload` metric labels): shared by the webhook, which
//! derives the canonical service from it, and discovery, which puts it in the snapshot.

use k8s_openapi::api::core::v1::Pod;

use crate::contract;

/// The name of what created the pod: a ReplicaSet's Deployment (its name without the
/// `pod-template-hash` suffix), another controller's name, or the pod's own name prefix.
pub fn workload_name(pod: &Pod) -> String {
    let meta = &pod.metadata;
    let controller = meta
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true));
    let hash = meta
        .labels
        .as_ref()
        .and_then(|l| l.get(contract::LABEL_POD_TEMPLATE_HASH));
    if let Some(owner) = controller {
        if owner.kind == "ReplicaSet"
            && let Some(deployment) = hash.and_then(|h| owner.name.strip_suffix(&format!("-{h}")))
        {
            return deployment.to_string();
        }
        return owner.name.clone();
    }
    let prefix = meta
        .generate_name
        .as_deref()
        .map(|g| g.trim_end_matches('-'))
        .filter(|g| !g.is_empty());
    prefix
        .or(meta.name.as_deref())
        .unwrap_or("unknown")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(json: serde_json::Value) -> Pod {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn a_deployment_a_controller_or_the_pod_names_the_workload() {
        let deployment = pod(serde_json::json!({"metadata": {
            "name": "reviews-v2-5d8f7c9b4-x7k2p", "generateName": "reviews-v2-5d8f7c9b4-",
            "labels": {"pod-template-hash": "5d8f7c9b4", "app": "reviews"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                                 "name": "reviews-v2-5d8f7c9b4", "uid": "u", "controller": true}]}}));
        assert_eq!(workload_name(&deployment), "reviews-v2");
        let job = pod(serde_json::json!({"metadata": {
            "name": "migrate-abcde",
            "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job",
                                 "name": "migrate", "uid": "u", "controller": true}]}}));
        assert_eq!(workload_name(&job), "migrate");
        let bare = pod(serde_json::json!({"metadata": {"name": "debug"}}));
        assert_eq!(workload_name(&bare), "debug");
        let generated = pod(serde_json::json!({"metadata": {"generateName": "tool-"}}));
        assert_eq!(workload_name(&generated), "tool");
    }
}
