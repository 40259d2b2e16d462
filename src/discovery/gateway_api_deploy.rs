//! Istio-style automated deployment for Gateway API Gateways of weft's classes, run by the
//! leader: per Gateway, the ServiceAccount, Deployment and LoadBalancer Service that
//! `weft gateway install` renders ([`crate::cli::gateway::render`]), named `<gateway>-<class>`
//! and owned by the Gateway; then the statuses: GatewayClass `Accepted`, Gateway `Accepted` /
//! `Programmed` / `addresses` (from the Service's load balancer) / `listeners[]`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Service, ServiceAccount, ServicePort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Client;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use serde_json::{Value, json};
use tokio::sync::watch;

use super::gamma_status::condition;
use super::gateway_api::{GatewayStatus, LABEL_GATEWAY_NAME};
use super::model::MeshIndex;
use crate::api::gateway_api::{GROUP, VERSION};
use crate::contract;
use crate::route::gamma::{ACCEPTED, Condition, REASON_ACCEPTED, RESOLVED_REFS};
use crate::route::gateway_api::{
    CONFLICTED, PROGRAMMED, REASON_ADDRESS_NOT_ASSIGNED, REASON_PROGRAMMED,
};

/// Longest wait for one object's writes.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the leader looks again without a new index (addresses arrive on their own).
const RESYNC: Duration = Duration::from_secs(5);

/// The name of what is deployed for a Gateway: Istio's `<gateway>-<class>`.
pub fn deployment_name(gateway: &str, class: &str) -> String {
    format!("{gateway}-{class}")
}

fn owner(g: &GatewayStatus) -> OwnerReference {
    OwnerReference {
        api_version: format!("{GROUP}/{VERSION}"),
        kind: "Gateway".into(),
        name: g.name.clone(),
        uid: g.uid.clone(),
        controller: Some(true),
        block_owner_deletion: None,
    }
}

/// The objects of one Gateway's gateway: `weft gateway install`'s, named `<gateway>-<class>`,
/// owned by the Gateway, its pods labelled with the Gateway's name, and the Service exposing
/// the listeners' ports (beside the proxy's readiness port).
pub fn render(g: &GatewayStatus) -> (ServiceAccount, Deployment, Service) {
    let name = deployment_name(&g.name, &g.class);
    let spec = crate::cli::gateway::GatewaySpec::new(&name, Some(&g.namespace));
    let (mut account, mut deployment, mut service) = crate::cli::gateway::render(&spec);
    let owners = Some(vec![owner(g)]);
    let label = |labels: &mut Option<BTreeMap<String, String>>| {
        labels
            .get_or_insert_with(BTreeMap::new)
            .insert(LABEL_GATEWAY_NAME.into(), g.name.clone());
    };
    for meta in [
        &mut account.metadata,
        &mut deployment.metadata,
        &mut service.metadata,
    ] {
        meta.owner_references = owners.clone();
        label(&mut meta.labels);
    }
    if let Some(meta) = deployment.spec.template.metadata.as_mut() {
        label(&mut meta.labels);
    }
    if let Some(spec) = service.spec.as_mut() {
        let mut ports = vec![ServicePort {
            name: Some("status-port".into()),
            port: i32::from(contract::PORT_HEALTH),
            target_port: Some(IntOrString::Int(i32::from(contract::PORT_HEALTH))),
            protocol: Some("TCP".into()),
            ..Default::default()
        }];
        for (port, protocol) in &g.ports {
            if *port == contract::PORT_HEALTH {
                continue;
            }
            ports.push(ServicePort {
                name: Some(format!("{}-{port}", protocol.to_ascii_lowercase())),
                port: i32::from(*port),
                target_port: Some(IntOrString::Int(i32::from(*port))),
                protocol: Some("TCP".into()),
                ..Default::default()
            });
        }
        spec.ports = Some(ports);
    }
    (account, deployment, service)
}

fn typed<T: serde::Serialize>(object: &T, api_version: &str, kind: &str) -> Value {
    let mut v = serde_json::to_value(object).unwrap_or(Value::Null);
    v["apiVersion"] = json!(api_version);
    v["kind"] = json!(kind);
    v
}

async fn deploy(client: &Client, g: &GatewayStatus) -> kube::Result<()> {
    let (account, deployment, service) = render(g);
    let name = deployment_name(&g.name, &g.class);
    let params = PatchParams::apply(contract::FIELD_MANAGER).force();
    Api::<ServiceAccount>::namespaced(client.clone(), &g.namespace)
        .patch(
            &name,
            &params,
            &Patch::Apply(typed(&account, "v1", "ServiceAccount")),
        )
        .await?;
    Api::<Deployment>::namespaced(client.clone(), &g.namespace)
        .patch(
            &name,
            &params,
            &Patch::Apply(typed(&deployment, "apps/v1", "Deployment")),
        )
        .await?;
    Api::<Service>::namespaced(client.clone(), &g.namespace)
        .patch(
            &name,
            &params,
            &Patch::Apply(typed(&service, "v1", "Service")),
        )
        .await?;
    Ok(())
}

fn resource(kind: &str, plural: &str) -> ApiResource {
    ApiResource {
        group: GROUP.into(),
        version: VERSION.into(),
        api_version: format!("{GROUP}/{VERSION}"),
        kind: kind.into(),
        plural: plural.into(),
    }
}

/// The Gateway's `status` as weft writes it: conditions, addresses and listeners.
pub fn gateway_status(
    g: &GatewayStatus,
    addresses: &[String],
    previous: &Value,
    now: &str,
) -> Value {
    let programmed = if addresses.is_empty() {
        Condition::no(
            REASON_ADDRESS_NOT_ASSIGNED,
            format!(
                "Service {} has no load balancer address yet",
                deployment_name(&g.name, &g.class)
            ),
        )
    } else if !g.accepted.status {
        Condition::no(
            crate::route::gateway_api::REASON_INVALID,
            g.accepted.message.clone(),
        )
    } else {
        Condition::yes(
            REASON_PROGRAMMED,
            "the gateway is deployed and has an address",
        )
    };
    let conditions = vec![
        condition(ACCEPTED, &g.accepted, g.generation, Some(previous), now),
        condition(PROGRAMMED, &programmed, g.generation, Some(previous), now),
    ];
    let listeners: Vec<Value> = g
        .listeners
        .iter()
        .map(|l| {
            let previous = previous["listeners"]
                .as_array()
                .and_then(|ls| ls.iter().find(|x| x["name"] == l.name.as_str()));
            json!({
                "name": l.name,
                "supportedKinds": l.supported_kinds.iter()
                    .map(|k| json!({"group": GROUP, "kind": k})).collect::<Vec<_>>(),
                "attachedRoutes": l.attached_routes,
                "conditions": [
                    condition(ACCEPTED, &l.accepted, g.generation, previous, now),
                    condition(PROGRAMMED, &l.programmed, g.generation, previous, now),
                    condition(RESOLVED_REFS, &l.resolved_refs, g.generation, previous, now),
                    condition(CONFLICTED, &l.conflicted, g.generation, previous, now),
                ],
            })
        })
        .collect();
    let addresses: Vec<Value> = addresses
        .iter()
        .map(|a| {
            let type_ = if a.parse::<std::net::IpAddr>().is_ok() {
                "IPAddress"
            } else {
                "Hostname"
            };
            json!({"type": type_, "value": a})
        })
        .collect();
    json!({"conditions": conditions, "addresses": addresses, "listeners": listeners})
}

/// `status` without transition times, to compare what is there with what would be written.
fn timeless(mut v: Value) -> Value {
    fn strip(v: &mut Value) {
        match v {
            Value::Object(o) => {
                o.remove("lastTransitionTime");
                o.values_mut().for_each(strip);
            }
            Value::Array(a) => a.iter_mut().for_each(strip),
            _ => {}
        }
    }
    strip(&mut v);
    v
}

fn now() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

async fn write_class(client: &Client, name: &str, generation: Option<i64>) -> kube::Result<()> {
    let api: Api<DynamicObject> =
        Api::all_with(client.clone(), &resource("GatewayClass", "gatewayclasses"));
    let Some(object) = api.get_opt(name).await? else {
        return Ok(());
    };
    let previous = &object.data["status"];
    let accepted = Condition::yes(REASON_ACCEPTED, "implemented by weft");
    let status =
        json!({"conditions": [condition(ACCEPTED, &accepted, generation, Some(previous), &now())]});
    if timeless(status.clone())["conditions"] == timeless(previous.clone())["conditions"] {
        return Ok(());
    }
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(&json!({"status": status})),
    )
    .await?;
    Ok(())
}

async fn write_gateway(client: &Client, g: &GatewayStatus) -> kube::Result<()> {
    let service = Api::<Service>::namespaced(client.clone(), &g.namespace)
        .get_opt(&deployment_name(&g.name, &g.class))
        .await?;
    let addresses: Vec<String> = service
        .and_then(|s| s.status?.load_balancer?.ingress)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|i| i.ip.or(i.hostname))
        .collect();
    let api: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        &g.namespace,
        &resource("Gateway", "gateways"),
    );
    let Some(object) = api.get_opt(&g.name).await? else {
        return Ok(());
    };
    let previous = &object.data["status"];
    let status = gateway_status(g, &addresses, previous, &now());
    let have = timeless(previous.clone());
    let want = timeless(status.clone());
    if ["conditions", "addresses", "listeners"]
        .iter()
        .all(|k| have[k] == want[k])
    {
        return Ok(());
    }
    api.patch_status(
        &g.name,
        &PatchParams::default(),
        &Patch::Merge(&json!({"status": status})),
    )
    .await?;
    Ok(())
}

/// Deploys and reports the Gateways of each new index (and every few seconds, for addresses)
/// while this replica leads.
pub async fn run(
    client: Client,
    leading: Arc<AtomicBool>,
    mut index: watch::Receiver<Arc<MeshIndex>>,
) {
    // What was applied per Gateway this term (its rendered objects), to apply only changes.
    let mut deployed: HashMap<(String, String), Value> = HashMap::new();
    loop {
        if leading.load(Ordering::Acquire) {
            let current = index.borrow_and_update().clone();
            let state = current.gateway_api();
            for (class, generation) in &state.classes {
                match tokio::time::timeout(CALL_TIMEOUT, write_class(&client, class, *generation))
                    .await
                {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        tracing::debug!(class = %class, error = %e, "could not write a GatewayClass status; retried")
                    }
                    Err(_) => {
                        tracing::debug!(class = %class, "GatewayClass status write timed out; retried")
                    }
                }
            }
            for g in &state.gateways {
                if !leading.load(Ordering::Acquire) {
                    break;
                }
                let key = (g.namespace.clone(), g.name.clone());
                let (a, d, s) = render(g);
                let rendered = json!([
                    typed(&a, "v1", "ServiceAccount"),
                    typed(&d, "apps/v1", "Deployment"),
                    typed(&s, "v1", "Service")
                ]);
                if deployed.get(&key) != Some(&rendered) {
                    match tokio::time::timeout(CALL_TIMEOUT, deploy(&client, g)).await {
                        Ok(Ok(())) => {
                            tracing::info!(namespace = %g.namespace, gateway = %g.name, deployment = %deployment_name(&g.name, &g.class), "gateway deployed");
                            deployed.insert(key, rendered);
                        }
                        Ok(Err(e)) => {
                            tracing::warn!(namespace = %g.namespace, gateway = %g.name, error = %e, "could not deploy the gateway; retried")
                        }
                        Err(_) => {
                            tracing::warn!(namespace = %g.namespace, gateway = %g.name, "deploying the gateway timed out; retried")
                        }
                    }
                }
                match tokio::time::timeout(CALL_TIMEOUT, write_gateway(&client, g)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        tracing::debug!(namespace = %g.namespace, gateway = %g.name, error = %e, "could not write a Gateway status; retried")
                    }
                    Err(_) => {
                        tracing::debug!(namespace = %g.namespace, gateway = %g.name, "Gateway status write timed out; retried")
                    }
                }
            }
        } else {
            deployed.clear();
        }
        tokio::select! {
            changed = index.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(RESYNC) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::gateway_api::ListenerStatus;

    fn gateway() -> GatewayStatus {
        let yes = |r| Condition::yes(r, "ok");
        GatewayStatus {
            namespace: "apps".into(),
            name: "shop".into(),
            class: "weft".into(),
            generation: Some(2),
            accepted: yes(REASON_ACCEPTED),
            listeners: vec![ListenerStatus {
                name: "http".into(),
                supported_kinds: vec!["HTTPRoute"],
                attached_routes: 1,
                accepted: yes(REASON_ACCEPTED),
                programmed: yes(REASON_PROGRAMMED),
                resolved_refs: yes("ResolvedRefs"),
                conflicted: Condition::no("NoConflicts", "none"),
            }],
            ports: vec![(80, "HTTP".into()), (8443, "HTTPS".into())],
            uid: "u-1".into(),
        }
    }

    #[test]
    fn the_gateway_gets_installs_objects_named_gateway_class_owned_and_labelled() {
        let (a, d, s) = render(&gateway());
        for meta in [&a.metadata, &d.metadata, &s.metadata] {
            assert_eq!(meta.name.as_deref(), Some("shop-weft"));
            assert_eq!(meta.namespace.as_deref(), Some("apps"));
            let owner = &meta.owner_references.as_ref().expect("owned")[0];
            assert_eq!(
                (owner.kind.as_str(), owner.uid.as_str()),
                ("Gateway", "u-1")
            );
            assert_eq!(
                meta.labels
                    .as_ref()
                    .and_then(|l| l.get(LABEL_GATEWAY_NAME))
                    .map(String::as_str),
                Some("shop")
            );
        }
        let pod = d.spec.template.metadata.as_ref().expect("template");
        assert_eq!(
            pod.labels
                .as_ref()
                .and_then(|l| l.get(LABEL_GATEWAY_NAME))
                .map(String::as_str),
            Some("shop")
        );
        assert_eq!(
            pod.annotations
                .as_ref()
                .and_then(|a| a.get(contract::ANNOTATION_INJECT_TEMPLATES))
                .map(String::as_str),
            Some(contract::TEMPLATE_GATEWAY)
        );
        let ports: Vec<(Option<String>, i32)> = s
            .spec
            .as_ref()
            .and_then(|s| s.ports.clone())
            .unwrap_or_default()
            .into_iter()
            .map(|p| (p.name, p.port))
            .collect();
        assert_eq!(
            ports,
            vec![
                (Some("status-port".into()), i32::from(contract::PORT_HEALTH)),
                (Some("http-80".into()), 80),
                (Some("https-8443".into()), 8443),
            ]
        );
    }

    #[test]
    fn programmed_waits_for_the_load_balancer_address() {
        let g = gateway();
        let pending = gateway_status(&g, &[], &Value::Null, "t0");
        assert_eq!(pending["conditions"][1]["type"], PROGRAMMED);
        assert_eq!(pending["conditions"][1]["status"], "False");
        assert_eq!(
            pending["conditions"][1]["reason"],
            REASON_ADDRESS_NOT_ASSIGNED
        );
        let ready = gateway_status(&g, &["198.19.255.7".into()], &pending, "t1");
        assert_eq!(ready["conditions"][1]["status"], "True");
        assert_eq!(ready["conditions"][1]["lastTransitionTime"], "t1");
        assert_eq!(
            ready["conditions"][0]["lastTransitionTime"], "t0",
            "Accepted did not change"
        );
        assert_eq!(
            ready["addresses"],
            json!([{"type": "IPAddress", "value": "198.19.255.7"}])
        );
        assert_eq!(ready["listeners"][0]["attachedRoutes"], 1);
        assert_eq!(
            ready["listeners"][0]["supportedKinds"],
            json!([{"group": GROUP, "kind": "HTTPRoute"}])
        );
        assert_eq!(
            ready["listeners"][0]["conditions"][0]["observedGeneration"],
            2
        );
    }
}
