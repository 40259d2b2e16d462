//! How gateways are created and reached (issue 20 items 2 and 5): `weft gateway install`
//! makes seed 003's gateway, the webhook fills its `istio-proxy` as `weft-proxy gateway`, its
//! LoadBalancer Service gets an address from the local cluster's pool, and the node (a client
//! outside the mesh) reaches that address, as seed 003's verify step 5 does.

mod support;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::process::Output;
use std::time::Duration;

use serde_json::Value;
use support::{Namespace, cluster, deployed, repo_root, wait_for, weft};

/// `LB_POOL` of e2e/cluster/env.sh.
const POOL: (Ipv4Addr, u8) = (Ipv4Addr::new(198, 19, 255, 0), 24);
const SEED_GATEWAY: &str = "aks-istio-ingressgateway-internal";

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn in_pool(ip: Ipv4Addr) -> bool {
    let mask = u32::MAX << (32 - POOL.1);
    u32::from(ip) & mask == u32::from(POOL.0)
}

/// The Service's load-balancer address, once the provider has written it.
fn lb_address(ns: &Namespace, service: &str) -> Ipv4Addr {
    let ip = wait_for(
        Duration::from_secs(30),
        || {
            ns.jsonpath(
                &format!("service {service}"),
                "{.status.loadBalancer.ingress[0].ip}",
            )
        },
        |ip| !ip.is_empty(),
    );
    ip.parse()
        .unwrap_or_else(|e| panic!("{service}'s address {ip:?}: {e}"))
}

/// One HTTP/1.1 GET from the node itself (outside every pod and the mesh): status and body.
fn get_from_node(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(3))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("write {addr}: {e}"))?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|e| format!("read {addr}: {e}"))?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no HTTP status from {addr}: {response:?}"))?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

#[test]
fn a_loadbalancer_service_is_reached_from_the_node_at_its_pool_address() {
    let c = cluster();
    let ns = c.namespace("t-gwd-lb");
    ns.apply(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: echo, labels: {app: echo}}
spec:
  containers:
  - name: echo
    image: weft.dev/echo
    env: [{name: PORT, value: "8080"}, {name: MESSAGE, value: "from behind the load balancer"}]
    readinessProbe: {tcpSocket: {port: 8080}, periodSeconds: 1}
---
apiVersion: v1
kind: Service
metadata: {name: echo}
spec:
  type: LoadBalancer
  selector: {app: echo}
  ports: [{name: http, port: 80, targetPort: 8080}]
"#,
    );
    ns.ok(&["wait", "pod/echo", "--for=condition=Ready", "--timeout=60s"]);

    let ip = lb_address(&ns, "echo");
    assert!(in_pool(ip), "{ip} is not in the pool 198.19.255.0/24");
    let cluster_ip = ns.jsonpath("service echo", "{.spec.clusterIP}");
    assert_ne!(ip.to_string(), cluster_ip);
    let cluster_ip: Ipv4Addr = cluster_ip.parse().expect("a ClusterIP");
    assert!(
        !in_pool(cluster_ip) && cluster_ip.octets()[2] < 128,
        "ClusterIP {cluster_ip} outside 198.19.0.0/17"
    );

    // kube-proxy routes the address like the ClusterIP (the endpoints may take a moment).
    let addr = SocketAddr::from((ip, 80));
    let answer = wait_for(
        Duration::from_secs(30),
        || match get_from_node(addr, "/") {
            Ok((status, body)) => format!("{status} {body}"),
            Err(e) => e,
        },
        |a| a.starts_with("200 "),
    );
    assert!(answer.contains("from behind the load balancer"), "{answer}");

    // No longer a LoadBalancer: the address is taken back.
    ns.ok(&[
        "patch",
        "service",
        "echo",
        "--type=merge",
        "-p",
        r#"{"spec":{"type":"ClusterIP"}}"#,
    ]);
    wait_for(
        Duration::from_secs(30),
        || ns.jsonpath("service echo", "{.status.loadBalancer.ingress[0].ip}"),
        |ip| ip.is_empty(),
    );
}

#[test]
fn weft_gateway_install_makes_seed_003s_gateway_injected_and_reachable_from_the_node() {
    let c = deployed();
    let ns = c.namespace("t-gwd-install");
    ns.cluster
        .ok(&["label", "namespace", &ns.name, "istio-injection=enabled"]);

    let out = weft(&[
        "gateway",
        "install",
        "--name",
        SEED_GATEWAY,
        "--namespace",
        &ns.name,
        "--internal",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("service/{SEED_GATEWAY} applied")),
        "{}",
        text(&out)
    );

    // The objects, labelled so that seed 003's Gateway (selector istio: <name>) finds them.
    ns.ok(&["get", "serviceaccount", SEED_GATEWAY]);
    let deployment: Value =
        serde_json::from_str(&ns.ok(&["get", "deployment", SEED_GATEWAY, "-o", "json"]))
            .expect("deployment JSON");
    assert_eq!(deployment["metadata"]["labels"]["istio"], SEED_GATEWAY);
    assert_eq!(deployment["metadata"]["labels"]["istio.io/rev"], "default");
    let service: Value =
        serde_json::from_str(&ns.ok(&["get", "service", SEED_GATEWAY, "-o", "json"]))
            .expect("service JSON");
    assert_eq!(service["spec"]["type"], "LoadBalancer");
    assert_eq!(service["spec"]["selector"]["istio"], SEED_GATEWAY);
    assert_eq!(
        service["metadata"]["annotations"]["service.beta.kubernetes.io/azure-load-balancer-internal"],
        "true"
    );
    let ports: Vec<i64> = service["spec"]["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .filter_map(|p| p["port"].as_i64())
        .collect();
    assert_eq!(ports, [15021, 80, 443]);

    // Running it again changes nothing and succeeds (server-side apply).
    let again = weft(&[
        "gateway",
        "install",
        "--name",
        SEED_GATEWAY,
        "--namespace",
        &ns.name,
        "--internal",
    ]);
    assert!(again.status.success(), "{}", text(&again));

    // The pod: istio-proxy filled as the gateway proxy, no sidecar, no init container.
    let selector = format!("app={SEED_GATEWAY}");
    let pods = wait_for(
        Duration::from_secs(60),
        || ns.jsonpath(&format!("pods -l {selector}"), "{.items[*].metadata.name}"),
        |names| !names.is_empty(),
    );
    let pod_name = pods.split_whitespace().next().expect("a pod").to_string();
    let pod: Value =
        serde_json::from_str(&ns.ok(&["get", "pod", &pod_name, "-o", "json"])).expect("pod JSON");
    let spec = &pod["spec"];
    assert!(
        spec["initContainers"]
            .as_array()
            .is_none_or(|c| c.is_empty()),
        "a gateway gets no init container: {:#}",
        spec["initContainers"]
    );
    let containers = spec["containers"].as_array().expect("containers");
    assert_eq!(containers.len(), 1, "{containers:#?}");
    let proxy = &containers[0];
    assert_eq!(proxy["name"], "istio-proxy");
    assert_eq!(proxy["command"], serde_json::json!(["weft-proxy"]));
    assert_eq!(proxy["args"], serde_json::json!(["gateway"]));
    assert_ne!(proxy["image"], "auto");
    assert_eq!(
        proxy["securityContext"]["capabilities"]["add"],
        serde_json::json!(["NET_BIND_SERVICE"])
    );
    assert_eq!(
        proxy["securityContext"]["capabilities"]["drop"],
        serde_json::json!(["ALL"])
    );
    assert_eq!(proxy["securityContext"]["runAsNonRoot"], true);
    let env: Vec<&str> = proxy["env"]
        .as_array()
        .expect("env")
        .iter()
        .filter_map(|e| e["name"].as_str())
        .collect();
    for wanted in [
        "POD_NAME",
        "POD_NAMESPACE",
        "POD_IP",
        "SERVICE_ACCOUNT",
        "WEFT_DISCOVERY_ADDRESS",
        "WEFT_TRUST_DOMAIN",
    ] {
        assert!(env.contains(&wanted), "{wanted} missing from {env:?}");
    }
    let status: Value = serde_json::from_str(
        pod["metadata"]["annotations"]["weft.dev/status"]
            .as_str()
            .expect("weft.dev/status"),
    )
    .expect("status JSON");
    assert_eq!(status["containers"], serde_json::json!(["istio-proxy"]));

    // The Service's address from the pool, and the gateway's readiness through it, from the
    // node: kube-proxy sends ip:15021 to the gateway pod's /healthz/ready.
    let ip = lb_address(&ns, SEED_GATEWAY);
    assert!(in_pool(ip), "{ip} is not in the pool 198.19.255.0/24");
    let addr = SocketAddr::from((ip, 15021));
    let ready = wait_for(
        Duration::from_secs(120),
        || match get_from_node(addr, "/healthz/ready") {
            Ok((status, _)) => status.to_string(),
            Err(e) => e,
        },
        |s| s == "200",
    );
    assert_eq!(ready, "200");
}

#[test]
fn a_canary_gateway_runs_both_revisions_behind_one_service_address() {
    let c = deployed();
    // Its own revision, with the canary image (deploy.sh installs the same build under it).
    let revision = "t-gwd-canary";
    c.apply_server_side(&format!(
        "apiVersion: mesh.weft.dev/v1alpha1\nkind: MeshConfig\nmetadata: {{name: {revision}, \
         namespace: weft-system}}\nspec:\n  proxy: {{image: \"ghcr.io/weft-mesh/weft-canary:0.2.0\"}}\n"
    ));
    // No enrolment label: the gateway's pods enrol themselves.
    let ns = c.namespace("t-gwd-canary");
    let install = |extra: &[&str]| {
        let mut args = vec![
            "gateway",
            "install",
            "--name",
            "gw",
            "--namespace",
            &ns.name,
        ];
        args.extend_from_slice(extra);
        let out = weft(&args);
        assert!(out.status.success(), "{}", text(&out));
        text(&out)
    };
    install(&[]);
    let canary = install(&["--revision", revision, "--deployment-name", "gw-canary"]);
    assert!(canary.contains("service/gw left as they are"), "{canary}");

    // Two pods, one per revision, both ready behind Service gw.
    ns.ok(&["rollout", "status", "deployment/gw", "--timeout=120s"]);
    ns.ok(&[
        "rollout",
        "status",
        "deployment/gw-canary",
        "--timeout=120s",
    ]);
    let pods: Value = serde_json::from_str(&ns.ok(&["get", "pods", "-l", "app=gw", "-o", "json"]))
        .expect("pods JSON");
    let mut revisions: Vec<(String, String)> = pods["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|p| {
            (
                p["metadata"]["labels"]["weft.dev/revision"]
                    .as_str()
                    .unwrap_or("<not injected>")
                    .to_string(),
                p["spec"]["containers"][0]["image"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect();
    revisions.sort();
    assert_eq!(revisions.len(), 2, "{revisions:?}");
    assert!(
        revisions
            .iter()
            .any(|(r, image)| r == revision && image.contains("weft-canary")),
        "{revisions:?}"
    );
    assert!(
        revisions
            .iter()
            .any(|(r, image)| r != revision && !image.contains("weft-canary")),
        "{revisions:?}"
    );
    let endpoints = wait_for(
        Duration::from_secs(60),
        || {
            ns.jsonpath(
                "endpointslices -l kubernetes.io/service-name=gw",
                "{.items[*].endpoints[?(@.conditions.ready==true)].addresses[0]}",
            )
        },
        |e| e.split_whitespace().count() == 2,
    );
    assert_eq!(endpoints.split_whitespace().count(), 2, "{endpoints}");
    let ip = lb_address(&ns, "gw");
    // kube-proxy programs the address's rules on its own schedule: asked until it answers.
    let ready = wait_for(
        Duration::from_secs(60),
        || {
            format!(
                "{:?}",
                get_from_node(SocketAddr::from((ip, 15021)), "/healthz/ready").map(|(s, _)| s)
            )
        },
        |r| r == "Ok(200)",
    );
    assert_eq!(ready, "Ok(200)");

    // Pods first, then the revision they use.
    let _ = c.kubectl(&[
        "delete",
        "namespace",
        &ns.name,
        "--wait=true",
        "--timeout=90s",
    ]);
    let _ = c.kubectl(&["-n", "weft-system", "delete", "meshconfig", revision]);
}

#[test]
fn the_kustomize_component_renamed_is_what_the_command_installs() {
    let c = cluster();
    // A kustomization outside the repository, renaming the component as its
    // kustomization.yaml says.
    let dir = std::env::temp_dir().join(format!("weft-gwd-kustomize-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let components = repo_root().join("config/components");
    let relative = pathdiff(&components, &dir);
    std::fs::write(
        dir.join("kustomization.yaml"),
        format!(
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n\
             namespace: aks-istio-ingress\n\
             components: [{relative}/gateway, {relative}/gateway-internal]\n\
             namePrefix: aks-\nnameSuffix: -internal\nlabels:\n\
             - pairs: {{app: {SEED_GATEWAY}, istio: {SEED_GATEWAY}}}\n  includeSelectors: true\n"
        ),
    )
    .expect("kustomization.yaml");
    let kustomized = c.ok(&["kustomize", dir.to_str().expect("utf-8 path")]);
    let _ = std::fs::remove_dir_all(&dir);

    let printed = weft(&[
        "gateway",
        "install",
        "--name",
        SEED_GATEWAY,
        "--namespace",
        "aks-istio-ingress",
        "--internal",
        "-o",
        "yaml",
    ]);
    assert!(printed.status.success(), "{}", text(&printed));
    let printed = String::from_utf8_lossy(&printed.stdout).into_owned();
    // The Secret-reading Role and RoleBinding come too; kustomize renames them (and the
    // binding's roleRef) with the rest, the command keeps weft-gateway-secrets: compared by kind.
    let kinds = |v: &[Value]| -> Vec<String> {
        v.iter()
            .map(|o| o["kind"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    let (kustomized, printed) = (objects(c, &kustomized), objects(c, &printed));
    let mut want = kinds(&printed);
    want.sort();
    let mut got = kinds(&kustomized);
    got.sort();
    assert_eq!(got, want);
    assert!(got.contains(&"Role".to_string()) && got.contains(&"RoleBinding".to_string()));
    let workload = |v: Vec<Value>| -> Vec<Value> {
        v.into_iter()
            .filter(|o| {
                ["ServiceAccount", "Deployment", "Service"]
                    .contains(&o["kind"].as_str().unwrap_or_default())
            })
            .collect()
    };
    let kustomized = workload(kustomized);
    assert_eq!(kustomized.len(), 3, "ServiceAccount, Deployment, Service");
    assert_eq!(kustomized, workload(printed));
}

/// The objects of a YAML stream as JSON (kubectl's client-side reading), by kind and name.
fn objects(c: &support::Cluster, yaml: &str) -> Vec<Value> {
    let out = c.kubectl_stdin(
        &["create", "--dry-run=client", "-o", "json", "-f", "-"],
        yaml,
    );
    assert!(out.status.success(), "{}", text(&out));
    // One JSON document per object, one after the other.
    let mut items: Vec<Value> = serde_json::Deserializer::from_slice(&out.stdout)
        .into_iter::<Value>()
        .collect::<Result<_, _>>()
        .expect("kubectl JSON");
    items.sort_by_key(|i| format!("{}/{}", i["kind"], i["metadata"]["name"]));
    items
}

/// `to` relative to `from` (both absolute), for kustomize, which refuses absolute paths.
fn pathdiff(to: &std::path::Path, from: &std::path::Path) -> String {
    let from = from.canonicalize().expect("from");
    let ups = from.components().count() - 1;
    let mut out = "../".repeat(ups);
    out.push_str(
        to.strip_prefix("/")
            .expect("absolute")
            .to_str()
            .expect("utf-8"),
    );
    out
}
