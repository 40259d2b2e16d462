//! A Gateway API Gateway on the cluster (issue 20 item 4): a GatewayClass naming weft's
//! controller, a Gateway with an HTTP listener and an HTTPS listener whose certificate Secret
//! does not exist, and an HTTPRoute to an echo Service. The operator deploys the gateway
//! (`<gateway>-<class>`), the Gateway gets the Service's LoadBalancer address and
//! `Programmed=True`; the node (outside the mesh) reaches the route's hostname (200) and not
//! another (404); the HTTPS listener says `ResolvedRefs=False` / `InvalidCertificateRef`
//! while the HTTP one serves.

mod support;

use std::process::Command;
use std::time::Duration;

use support::{wait_for, weft};

const NS: &str = "gwapi-shop";
const HOST: &str = "shop.gwapi.example";

const OBJECTS: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: shop}
spec:
  gatewayClassName: weft
  listeners:
  - {name: http, port: 80, protocol: HTTP}
  - name: https
    port: 443
    protocol: HTTPS
    tls:
      mode: Terminate
      certificateRefs: [{kind: Secret, name: no-such-secret}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: shop}
spec:
  parentRefs: [{name: shop}]
  hostnames: ["shop.gwapi.example"]
  rules:
  - backendRefs: [{name: echo, port: 8080}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: echo}
spec:
  replicas: 1
  selector: {matchLabels: {app: echo}}
  template:
    metadata: {labels: {app: echo}}
    spec:
      containers:
      - name: app
        image: weft.dev/echo:dev
        ports: [{containerPort: 8080}]
        env:
        - {name: PORT, value: "8080"}
        - {name: MESSAGE, value: gateway-api-echo}
        readinessProbe: {httpGet: {path: /healthz, port: 8080}, periodSeconds: 1}
---
apiVersion: v1
kind: Service
metadata: {name: echo}
spec:
  selector: {app: echo}
  ports: [{name: http, port: 8080}]
"#;

const CLASS: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: weft}
spec: {controllerName: weft.dev/gateway-controller}
"#;

/// `curl` from the node: "<status> <body>".
fn curl(ip: &str, host: &str) -> String {
    let out = Command::new("curl")
        .args(["-s", "-m", "5", "-o", "-", "-w", " %{http_code}"])
        .args(["-H", &format!("Host: {host}")])
        .arg(format!("http://{ip}/"))
        .output()
        .expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    match text.rsplit_once(' ') {
        Some((body, code)) => format!("{code} {body}"),
        None => text,
    }
}

#[test]
fn a_gateway_api_gateway_is_deployed_addressed_and_routes_by_hostname() {
    let c = support::deployed();
    c.apply(CLASS);
    let ns = c.namespace(NS);
    let out = weft(&["namespace", "add", NS]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The grant an HTTPS listener's certificate needs (docs/gateway.md): the operator may not
    // grant itself Secrets, so the user does, before the Gateway, as `weft gateway install`
    // does for an Istio gateway. Without it the operator would be refused (lifecycle step 5).
    ns.ok(&[
        "create",
        "role",
        "weft-gateway-secrets",
        "--verb=get,list,watch",
        "--resource=secrets",
    ]);
    ns.ok(&[
        "create",
        "rolebinding",
        "weft-gateway-secrets",
        "--role=weft-gateway-secrets",
        "--serviceaccount=weft-system:weft-operator",
    ]);
    ns.apply(OBJECTS);

    // The GatewayClass is accepted by weft.
    wait_for(
        Duration::from_secs(60),
        || {
            c.ok(&[
                "get",
                "gatewayclass",
                "weft",
                "-o",
                r#"jsonpath={.status.conditions[?(@.type=="Accepted")].status}"#,
            ])
        },
        |s| s == "True",
    );
    // The operator deploys the gateway, named <gateway>-<class>.
    wait_for(
        Duration::from_secs(60),
        || {
            let out = ns.kubectl(&["get", "deployment", "shop-weft", "-o", "name"]);
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        },
        |s| !s.is_empty(),
    );
    ns.ok(&[
        "rollout",
        "status",
        "deployment/shop-weft",
        "--timeout=180s",
    ]);
    ns.ok(&["rollout", "status", "deployment/echo", "--timeout=180s"]);
    let owner = ns.jsonpath(
        "deployment shop-weft",
        "{.metadata.ownerReferences[0].kind}/{.metadata.ownerReferences[0].name}",
    );
    assert_eq!(owner, "Gateway/shop");

    // Its address is the Service's LoadBalancer address, and it is Programmed.
    let ip = wait_for(
        Duration::from_secs(90),
        || ns.jsonpath("gateway shop", "{.status.addresses[0].value}"),
        |ip| !ip.is_empty(),
    );
    let lb = ns.jsonpath("service shop-weft", "{.status.loadBalancer.ingress[0].ip}");
    assert_eq!(ip, lb);
    wait_for(
        Duration::from_secs(30),
        || {
            ns.jsonpath(
                "gateway shop",
                r#"{.status.conditions[?(@.type=="Programmed")].status}"#,
            )
        },
        |s| s == "True",
    );

    // The route's hostname reaches echo from the node; another hostname is 404.
    let answer = wait_for(
        Duration::from_secs(90),
        || curl(&ip, HOST),
        |a| a.starts_with("200 "),
    );
    assert!(answer.contains("gateway-api-echo"), "{answer}");
    assert!(
        curl(&ip, "other.gwapi.example").starts_with("404"),
        "another host"
    );

    // The HTTPS listener lacks its Secret: ResolvedRefs=False, InvalidCertificateRef; the
    // HTTP listener serves, with the route attached.
    let https = ns.jsonpath(
        "gateway shop",
        r#"{.status.listeners[?(@.name=="https")].conditions[?(@.type=="ResolvedRefs")]}"#,
    );
    let https: serde_json::Value = serde_json::from_str(&https).expect("a condition");
    assert_eq!(https["status"], "False", "{https}");
    assert_eq!(https["reason"], "InvalidCertificateRef", "{https}");
    let http_programmed = ns.jsonpath(
        "gateway shop",
        r#"{.status.listeners[?(@.name=="http")].conditions[?(@.type=="Programmed")].status}"#,
    );
    assert_eq!(http_programmed, "True");
    let attached = ns.jsonpath(
        "gateway shop",
        r#"{.status.listeners[?(@.name=="http")].attachedRoutes}"#,
    );
    assert_eq!(attached, "1");

    // The route's status names the Gateway parent, written by weft.
    let parent = wait_for(
        Duration::from_secs(30),
        || {
            ns.jsonpath(
                "httproute shop",
                r#"{.status.parents[?(@.controllerName=="weft.dev/gateway-controller")].conditions[?(@.type=="Accepted")].status}"#,
            )
        },
        |s| s == "True",
    );
    assert_eq!(parent, "True");
}
