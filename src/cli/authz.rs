//! `weft authz explain`: which AuthorizationPolicy and rule decide a request to a pod. It builds
//! the pod's policies with the operator's own index ([`MeshIndex`]) and decides with the
//! proxy's own evaluator ([`crate::authz::evaluate`]), so what it explains is what the proxy
//! does with the same objects.

use std::net::IpAddr;
use std::sync::Arc;

use clap::{Args, Subcommand};
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::api::ListParams;

use super::error::CliError;
use super::inventory::{self, MeshArgs};
use crate::api::smi::{HTTPRouteGroup, TCPRoute, TrafficTarget};
use crate::api::{AuthorizationPolicy, MeshConfig};
use crate::authz::model::{Action, Policy, PolicyKind};
use crate::authz::path::normalize;
use crate::authz::{Decision, Http, Reason, Request, RuleRef, Verdict, evaluate};
use crate::contract;
use crate::discovery::{MeshIndex, MeshView};
use crate::snapshot::{Protocol, decode_snapshot};

#[derive(Debug, Subcommand)]
pub enum AuthzCommand {
    /// Explain the verdict on a request (or TCP connection) to a meshed pod.
    Explain(ExplainArgs),
}

#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// The pod that receives the request.
    pub pod: String,
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
    /// Who sends it: a pod (`name` in the same namespace, or `namespace/name`), a principal
    /// (`cluster.local/ns/<ns>/sa/<sa>`), or `plaintext` for a caller without mTLS.
    #[arg(long)]
    pub from: String,
    /// The destination (container) port; default: the pod's first container port.
    #[arg(long)]
    pub port: Option<u16>,
    /// An HTTP request with this method (default GET when --path is given).
    #[arg(long)]
    pub method: Option<String>,
    /// An HTTP request for this path (query allowed; it is normalized as the proxy does).
    #[arg(long)]
    pub path: Option<String>,
    /// The Host the request names (default: the pod's namespace-local name).
    #[arg(long)]
    pub host: Option<String>,
    /// A request header, `name=value`; repeatable.
    #[arg(long = "header", value_parser = parse_header)]
    pub headers: Vec<(String, String)>,
    /// Explain a TCP connection even where the port is HTTP.
    #[arg(long, conflicts_with_all = ["method", "path", "headers", "host"])]
    pub tcp: bool,
    /// Namespace of mesh-wide policies (the operator's --root-namespace).
    #[arg(long, env = "WEFT_ROOT_NAMESPACE", default_value = contract::DEFAULT_OPERATOR_NAMESPACE)]
    pub root_namespace: String,
    /// The mesh's trust domain (the operator's --trust-domain).
    #[arg(long, env = "WEFT_TRUST_DOMAIN", default_value = contract::DEFAULT_TRUST_DOMAIN)]
    pub trust_domain: String,
    #[command(flatten)]
    pub mesh: MeshArgs,
}

fn parse_header(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: write a header as name=value"))?;
    Ok((k.trim().to_ascii_lowercase(), v.to_string()))
}

pub async fn run(command: AuthzCommand) -> Result<(), CliError> {
    match command {
        AuthzCommand::Explain(args) => explain(args).await,
    }
}

async fn explain(args: ExplainArgs) -> Result<(), CliError> {
    let client = inventory::client().await?;
    let ns = args.namespace.as_str();
    let pod = Api::<Pod>::namespaced(client.clone(), ns)
        .get(&args.pod)
        .await
        .map_err(CliError::kube(format!("reading pod {ns}/{}", args.pod)))?;
    let list = ListParams::default();
    let services = Api::<Service>::namespaced(client.clone(), ns)
        .list(&list)
        .await
        .map_err(CliError::kube(format!("listing Services in {ns}")))?
        .items;
    let slices = Api::<EndpointSlice>::namespaced(client.clone(), ns)
        .list(&list)
        .await
        .map_err(CliError::kube(format!("listing EndpointSlices in {ns}")))?
        .items;
    // Istio's and SMI's APIs may be absent: no such policies then.
    let policies = Api::<AuthorizationPolicy>::all(client.clone())
        .list(&list)
        .await
        .map(|l| l.items)
        .unwrap_or_default();
    let traffic_targets = Api::<TrafficTarget>::namespaced(client.clone(), ns)
        .list(&list)
        .await
        .map(|l| l.items)
        .unwrap_or_default();
    let http_route_groups = Api::<HTTPRouteGroup>::namespaced(client.clone(), ns)
        .list(&list)
        .await
        .map(|l| l.items)
        .unwrap_or_default();
    let tcp_routes = Api::<TCPRoute>::namespaced(client.clone(), ns)
        .list(&list)
        .await
        .map(|l| l.items)
        .unwrap_or_default();
    // The revisions say which are in OSM's restrictive mode.
    let revisions = Api::<MeshConfig>::namespaced(client.clone(), &args.mesh.weft_namespace)
        .list(&list)
        .await
        .map_err(CliError::kube("listing revisions"))?
        .items;
    let (principal, source_ip) = match caller(&args.from, ns, &args.trust_domain)? {
        Caller::Pod { namespace, name } => {
            let from = Api::<Pod>::namespaced(client.clone(), &namespace)
                .get(&name)
                .await
                .map_err(CliError::kube(format!("reading pod {namespace}/{name}")))?;
            let sa = from
                .spec
                .as_ref()
                .and_then(|s| s.service_account_name.clone())
                .unwrap_or_else(|| "default".into());
            let meshed = from
                .metadata
                .labels
                .as_ref()
                .is_some_and(|l| l.contains_key(contract::LABEL_REVISION));
            let ip = pod_ip(&from);
            // An unmeshed caller has no proxy, so it arrives in plaintext.
            let principal = meshed.then(|| format!("{}/ns/{namespace}/sa/{sa}", args.trust_domain));
            (principal, ip)
        }
        Caller::Principal(p) => (Some(p), None),
        Caller::Plaintext => (None, None),
    };
    let target_ip = pod_ip(&pod);
    let view = MeshView {
        trust_domain: args.trust_domain.clone(),
        root_namespace: args.root_namespace.clone(),
        cluster_domain: "cluster.local".into(),
        pods: vec![Arc::new(pod.clone())],
        services: services.into_iter().map(Arc::new).collect(),
        slices: slices.into_iter().map(Arc::new).collect(),
        authorization_policies: policies.into_iter().map(Arc::new).collect(),
        traffic_targets: traffic_targets.into_iter().map(Arc::new).collect(),
        http_route_groups: http_route_groups.into_iter().map(Arc::new).collect(),
        tcp_routes: tcp_routes.into_iter().map(Arc::new).collect(),
        revisions: revisions.into_iter().map(Arc::new).collect(),
        ..Default::default()
    };
    let index = MeshIndex::build(&view);
    for p in index
        .problems
        .iter()
        .filter(|p| p.kind == "AuthorizationPolicy")
    {
        eprintln!(
            "warning: {} {}/{} is not applied as written: {}",
            p.kind, p.namespace, p.name, p.message
        );
    }
    let Ok((_, bytes)) = index.snapshot_for(ns, &args.pod) else {
        println!(
            "Pod {ns}/{} has no weft proxy: nothing enforces authorization for it.",
            args.pod
        );
        return Ok(());
    };
    let snapshot = decode_snapshot(&bytes).map_err(|e| CliError::BadRequest {
        message: format!("the pod's config does not decode: {e}"),
    })?;
    let port = match args.port {
        Some(p) => p,
        None => first_port(&pod).ok_or_else(|| CliError::BadRequest {
            message: "the pod declares no container port; pass --port".into(),
        })?,
    };
    let declared_http = snapshot.inbound.protocols.get(&port) == Some(&Protocol::Http);
    let http_asked = args.method.is_some() || args.path.is_some() || !args.headers.is_empty();
    let as_http = !args.tcp && (http_asked || declared_http);
    let target = args.path.clone().unwrap_or_else(|| "/".into());
    let raw_path = target.split('?').next().unwrap_or_default();
    let path = normalize(raw_path).map_err(|e| CliError::BadRequest {
        message: format!("path {raw_path:?}: {e}; the proxy answers such a request with 400"),
    })?;
    let method = args.method.clone().unwrap_or_else(|| "GET".into());
    let host = args
        .host
        .clone()
        .unwrap_or_else(|| format!("{}.{ns}", args.pod));
    // A gateway judges the host as its routing reads it (no port, no trailing dot), and
    // knows a caller's principal only from an ISTIO_MUTUAL handshake.
    let gateway = crate::discovery::routes::is_gateway_pod(&pod);
    let host = if gateway {
        crate::route::gateway::host_without_port(&host).to_string()
    } else {
        host
    };
    if gateway {
        println!(
            "Gateway:   {ns}/{} is a gateway pod: its policies judge each request before routing; \
             a caller has a principal only on an ISTIO_MUTUAL port (elsewhere use --from plaintext)",
            args.pod
        );
    }
    let unspecified: IpAddr = [0, 0, 0, 0].into();
    let request = Request {
        principal: principal.as_deref(),
        source_ip: source_ip.unwrap_or(unspecified),
        remote_ip: source_ip.unwrap_or(unspecified),
        destination_ip: target_ip.unwrap_or(unspecified),
        destination_port: port,
        sni: None,
        http: as_http.then_some(Http {
            method: &method,
            host: &host,
            path: &path,
            headers: &args.headers,
        }),
    };
    let decision = evaluate(&snapshot.inbound.authz, &request);
    print!(
        "{}",
        explain_text(&snapshot.inbound.authz, &request, &decision)
    );
    Ok(())
}

enum Caller {
    Pod { namespace: String, name: String },
    Principal(String),
    Plaintext,
}

fn caller(from: &str, namespace: &str, trust_domain: &str) -> Result<Caller, CliError> {
    if from == "plaintext" {
        return Ok(Caller::Plaintext);
    }
    let principal = from.strip_prefix("spiffe://").unwrap_or(from);
    if principal.contains("/ns/") {
        if !principal.starts_with(&format!("{trust_domain}/")) {
            eprintln!("note: {principal} is not in trust domain {trust_domain}");
        }
        return Ok(Caller::Principal(principal.to_string()));
    }
    let (ns, name) = from.split_once('/').unwrap_or((namespace, from));
    if ns.is_empty() || name.is_empty() || name.contains('/') {
        return Err(CliError::BadRequest {
            message: format!(
                "--from {from:?}: name a pod (name or namespace/name), a principal \
                 (cluster.local/ns/<ns>/sa/<sa>) or plaintext"
            ),
        });
    }
    Ok(Caller::Pod {
        namespace: ns.into(),
        name: name.into(),
    })
}

fn pod_ip(pod: &Pod) -> Option<IpAddr> {
    pod.status.as_ref()?.pod_ip.as_deref()?.parse().ok()
}

fn first_port(pod: &Pod) -> Option<u16> {
    pod.spec
        .as_ref()?
        .containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .find_map(|p| u16::try_from(p.container_port).ok())
}

fn action_name(a: Action) -> &'static str {
    match a {
        Action::Allow => "ALLOW",
        Action::Deny => "DENY",
        Action::Audit => "AUDIT",
    }
}

/// How a policy is named to a person: its kind and name.
fn policy_text(p: &Policy) -> String {
    match p.kind {
        PolicyKind::AuthorizationPolicy => format!("{} policy {}", action_name(p.action), p.name),
        PolicyKind::TrafficTarget => format!("TrafficTarget {}", p.name),
        PolicyKind::RestrictiveMode => format!("OSM restrictive mode of {}", p.name),
    }
}

fn rule_text(policies: &[Policy], r: RuleRef) -> String {
    format!("rule {} of {}", r.rule, policy_text(&policies[r.policy]))
}

fn reason_text(policies: &[Policy], reason: Reason) -> String {
    match reason {
        Reason::Denied(r) | Reason::Allowed(r) => format!("{} matched", rule_text(policies, r)),
        Reason::NoAllowPolicy => "no ALLOW policy selects the pod, and no DENY matched".into(),
        Reason::NoAllowMatched => "ALLOW policies select the pod and none matched (once any \
                                   ALLOW policy selects a workload, what none allows is denied)"
            .into(),
    }
}

/// What `weft authz explain` prints; pure, so its wording is pinned by tests.
pub fn explain_text(policies: &[Policy], request: &Request<'_>, decision: &Decision) -> String {
    let mut out = String::new();
    let from = request
        .principal
        .unwrap_or("a plaintext caller (no principal)");
    match &request.http {
        Some(h) => out.push_str(&format!(
            "Request:   {} {} (Host {}) to port {} from {from}\n",
            h.method, h.path, h.host, request.destination_port
        )),
        None => out.push_str(&format!(
            "Request:   a TCP connection to port {} from {from} (HTTP fields cannot match: an \
             ALLOW rule with one matches nothing, a DENY rule ignores them)\n",
            request.destination_port
        )),
    }
    if policies.is_empty() {
        out.push_str("Policies:  none select the pod\n");
    } else {
        out.push_str("Policies:  (DENY first, then ALLOW; AUDIT and dry-run never decide)\n");
        for p in policies {
            let dry = if p.dry_run { " (dry-run)" } else { "" };
            let what = match p.kind {
                PolicyKind::AuthorizationPolicy => p.name.clone(),
                PolicyKind::TrafficTarget => format!("{} (TrafficTarget)", p.name),
                PolicyKind::RestrictiveMode => format!(
                    "OSM restrictive mode of {}: what nothing allows is denied",
                    p.name
                ),
            };
            out.push_str(&format!(
                "  {:<6} {what}{dry}, {} rule(s)\n",
                action_name(p.action),
                p.rules.len()
            ));
        }
    }
    let verdict = match decision.verdict {
        Verdict::Allow => "ALLOW",
        Verdict::Deny => "DENY (HTTP 403 \"RBAC: access denied\"; a TCP connection is closed)",
    };
    out.push_str(&format!("Decision:  {verdict}\n"));
    out.push_str(&format!(
        "Because:   {}\n",
        reason_text(policies, decision.reason)
    ));
    if let Some(a) = decision.audit {
        out.push_str(&format!("Audit:     {} matched\n", rule_text(policies, a)));
    }
    if let Some(d) = decision.dry_run {
        out.push_str(&format!(
            "Dry run:   the dry-run policies alone would {}: {}\n",
            match d.verdict {
                Verdict::Allow => "allow",
                Verdict::Deny => "deny",
            },
            reason_text(policies, d.reason)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authz::istio::{AuthorizationPolicySpec, compile};

    fn policy(name: &str, yaml: &str) -> Policy {
        let spec: AuthorizationPolicySpec = serde_yaml::from_str(yaml).unwrap();
        compile("payments", name, &spec, &Default::default()).unwrap()
    }

    #[test]
    fn the_explanation_names_the_deciding_rule() {
        let policies = vec![
            policy(
                "deny-debug",
                "action: DENY\nrules: [{to: [{operation: {paths: ['/debug*']}}]}]",
            ),
            policy(
                "allow-checkout",
                "rules: [{from: [{source: {principals: [cluster.local/ns/checkout/sa/checkout-api]}}], to: [{operation: {methods: [POST], paths: [/v1/charges]}}]}]",
            ),
        ];
        let headers: Vec<(String, String)> = Vec::new();
        let request = |method, path| Request {
            principal: Some("cluster.local/ns/checkout/sa/checkout-api"),
            source_ip: [198, 18, 0, 7].into(),
            remote_ip: [198, 18, 0, 7].into(),
            destination_ip: [198, 18, 0, 9].into(),
            destination_port: 8080,
            sni: None,
            http: Some(Http {
                method,
                host: "payments-api.payments",
                path,
                headers: &headers,
            }),
        };
        let post = request("POST", "/v1/charges");
        let text = explain_text(&policies, &post, &evaluate(&policies, &post));
        assert_eq!(
            text,
            "Request:   POST /v1/charges (Host payments-api.payments) to port 8080 from cluster.local/ns/checkout/sa/checkout-api\n\
             Policies:  (DENY first, then ALLOW; AUDIT and dry-run never decide)\n\
             \x20 DENY   payments/deny-debug, 1 rule(s)\n\
             \x20 ALLOW  payments/allow-checkout, 1 rule(s)\n\
             Decision:  ALLOW\n\
             Because:   rule 0 of ALLOW policy payments/allow-checkout matched\n"
        );
        let get = request("GET", "/v1/charges");
        let text = explain_text(&policies, &get, &evaluate(&policies, &get));
        assert!(text.contains("Decision:  DENY (HTTP 403"), "{text}");
        assert!(
            text.contains("ALLOW policies select the pod and none matched"),
            "{text}"
        );
        let debug = request("POST", "/debug/pprof");
        let text = explain_text(&policies, &debug, &evaluate(&policies, &debug));
        assert!(
            text.contains("Because:   rule 0 of DENY policy payments/deny-debug matched"),
            "{text}"
        );
    }

    #[test]
    fn callers_are_read_as_pods_principals_or_plaintext() {
        assert!(matches!(
            caller("plaintext", "a", "cluster.local"),
            Ok(Caller::Plaintext)
        ));
        assert!(matches!(
            caller("spiffe://cluster.local/ns/a/sa/b", "x", "cluster.local"),
            Ok(Caller::Principal(p)) if p == "cluster.local/ns/a/sa/b"
        ));
        assert!(matches!(
            caller("web-1", "pets", "cluster.local"),
            Ok(Caller::Pod { namespace, name }) if namespace == "pets" && name == "web-1"
        ));
        assert!(matches!(
            caller("shop/web-1", "pets", "cluster.local"),
            Ok(Caller::Pod { namespace, .. }) if namespace == "shop"
        ));
        assert!(caller("a/b/c", "pets", "cluster.local").is_err());
    }
}
