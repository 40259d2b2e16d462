//! `weft describe pod`: what applies to one meshed pod, from the snapshot the operator's own
//! index computes for it (the tables its proxy runs): mTLS per port, the routes, subsets and
//! client policies of the Services it calls and which resource set them, the authorization
//! policies it enforces, and DISABLE-against-STRICT conflicts (503 `UC`) naming both sides.
//! The DestinationRules named are those its proxy applies (its namespace's lookup, as
//! `weft check` reads it: [`super::check_traffic::rules_for`]).

use std::collections::BTreeSet;
use std::fmt::Write as _;

use super::check_traffic::{Conflict, client_conflicts, rules_for};
use super::error::CliError;
use super::inventory;
use super::proxy_status::DescribePodArgs;
use crate::authz::{Action, PolicyKind};
use crate::discovery::{MeshIndex, MeshView};
use crate::snapshot::{ClientTls, Service, decode_snapshot};

pub async fn describe_pod(args: DescribePodArgs) -> Result<(), CliError> {
    let client = inventory::client().await?;
    let view = inventory::mesh_view(&client, &args.root_namespace, &args.mesh.weft_namespace)
        .await
        .map_err(CliError::kube("reading the mesh"))?;
    let index = MeshIndex::build(&view);
    match describe(&view, &index, &args.namespace, &args.pod) {
        Some(text) => print!("{text}"),
        None => println!(
            "Pod {}/{} is not a meshed pod the operator knows: it has no weft proxy (its namespace \
             is not enrolled: weft namespace add {}, then restart it), or it is not running yet.",
            args.namespace, args.pod, args.namespace
        ),
    }
    Ok(())
}

/// The whole description, or None when the pod is not meshed.
pub fn describe(view: &MeshView, index: &MeshIndex, namespace: &str, pod: &str) -> Option<String> {
    let mut out = super::proxy_status::describe(index, namespace, pod)?;
    let me = index.pod(namespace, pod)?;
    let (version, bytes) = index.snapshot_for(namespace, pod).ok()?;
    let snapshot = decode_snapshot(&bytes).ok()?;
    let _ = writeln!(out, "Config:     {version}");

    // Outbound: every Service port whose tables something sets.
    let routed: Vec<&Service> = snapshot
        .outbound
        .services
        .iter()
        .chain(&snapshot.outbound.headless)
        .filter(|s| {
            !s.http.is_empty()
                || !s.subsets.is_empty()
                || s.tls.is_some()
                || !s.subset_tls.is_empty()
                || !s.traffic.is_empty()
                || !s.subset_traffic.is_empty()
        })
        .collect();
    out.push_str("Outbound (the Services this pod calls that routing resources change):\n");
    if routed.is_empty() {
        out.push_str("  none: every request goes to any endpoint of its Service\n");
    }
    let rules = rules_for(index, &me.namespace);
    for s in routed {
        let _ = writeln!(out, "  {}:{}", s.name, s.port);
        // Only the rules this pod's proxy applies to the host (another namespace's private
        // rule for it, or one not exported here, is not listed).
        if let Some(r) = rules.get(&s.name).filter(|r| !r.all.is_empty()) {
            let _ = writeln!(out, "    DestinationRule {}", r.all.join(", "));
        }
        if !s.subsets.is_empty() {
            let subsets: Vec<String> = s
                .subsets
                .iter()
                .map(|(name, members)| format!("{name} ({} endpoints)", members.len()))
                .collect();
            let _ = writeln!(out, "    subsets: {}", subsets.join(", "));
        }
        let mut tls: Vec<String> = s.tls.iter().map(|m| tls_name(*m).to_string()).collect();
        tls.extend(
            s.subset_tls
                .iter()
                .map(|(n, m)| format!("{n}: {}", tls_name(*m))),
        );
        if !tls.is_empty() {
            let _ = writeln!(out, "    client tls: {}", tls.join(", "));
        }
        if !s.traffic.is_empty() || !s.subset_traffic.is_empty() {
            let mut policy = vec![s.traffic.summary()];
            policy.extend(
                s.subset_traffic
                    .iter()
                    .filter(|(_, p)| **p != s.traffic)
                    .map(|(n, p)| format!("{n}: {}", p.summary())),
            );
            let _ = writeln!(out, "    policy: {}", policy.join(" | "));
        }
        let mut rows = Vec::new();
        super::proxy_config::route_rows(&s.name, s.port, &s.http, &mut rows);
        for r in rows {
            let _ = writeln!(
                out,
                "    route #{} {} {}: {} -> {}{}",
                r.index.unwrap_or_default(),
                route_kind(view, &r.name),
                r.name,
                r.matches,
                r.destinations,
                if r.actions == "-" {
                    String::new()
                } else {
                    format!(" [{}]", r.actions)
                }
            );
        }
    }

    // Inbound: the policies its proxy enforces (mTLS is above).
    out.push_str("Inbound policies (evaluated by this pod's proxy, in order):\n");
    if snapshot.inbound.authz.is_empty() {
        out.push_str("  none: every request the mTLS mode admits is allowed\n");
    }
    for p in &snapshot.inbound.authz {
        let kind = match p.kind {
            PolicyKind::AuthorizationPolicy => "AuthorizationPolicy",
            PolicyKind::TrafficTarget => "TrafficTarget",
            PolicyKind::RestrictiveMode => "OSM restrictive mode",
        };
        let action = match p.action {
            Action::Allow => "ALLOW",
            Action::Deny => "DENY",
            Action::Audit => "AUDIT",
        };
        let dry = if p.dry_run { " (dry run)" } else { "" };
        let _ = writeln!(out, "  {kind} {} {action}{dry}", p.name);
    }

    // What is not applied as written, of the resources that could concern this pod: those of
    // its namespace and the root namespace, and those named above (as the index reports them
    // in status conditions and Warning Events).
    let shown = |ns: &str, name: &str| {
        let id = format!("{ns}/{name}");
        ns == me.namespace
            || ns == view.root_namespace
            || out.contains(&format!(" {id}\n"))
            || out.contains(&format!(" {id}:"))
            || out.contains(&format!(" {id},"))
    };
    let problems: Vec<String> = index
        .problems
        .iter()
        .filter(|p| shown(&p.namespace, &p.name))
        .map(|p| format!("  {} {}/{}: {}\n", p.kind, p.namespace, p.name, p.message))
        .collect();
    if !problems.is_empty() {
        out.push_str("Not applied as written:\n");
        out.extend(problems);
    }

    // The 503 UC diagnosis: as `weft check` finds it, for this pod as server, or as a client
    // (its namespace's proxies apply the rule).
    let calls: BTreeSet<&str> = snapshot
        .outbound
        .services
        .iter()
        .chain(&snapshot.outbound.headless)
        .map(|s| s.name.as_str())
        .collect();
    let me_id = format!("{}/{}", me.namespace, me.name);
    let found: Vec<Conflict> = client_conflicts(index)
        .into_iter()
        .filter(|c| {
            c.pod == me_id || (calls.contains(c.host.as_str()) && c.clients.contains(&me.namespace))
        })
        .collect();
    if !found.is_empty() {
        out.push_str("Conflicts:\n");
    }
    for c in found {
        let subset = c
            .subset
            .as_deref()
            .map(|s| format!(" (subset {s})"))
            .unwrap_or_default();
        let who = if c.pod == me_id {
            format!(
                "clients in namespace {} get 503 UC calling this pod",
                c.clients.join(", ")
            )
        } else {
            format!("this pod's requests to {} get 503 UC", c.host)
        };
        let _ = writeln!(
            out,
            "  DestinationRule {} sets tls.mode DISABLE for {}{subset}, but {} port {} is STRICT ({}): {who}",
            c.rule, c.host, c.pod, c.target_port, c.source
        );
    }
    Some(out)
}

fn tls_name(m: ClientTls) -> &'static str {
    m.name()
}

/// Which kind of resource a route of `<namespace>/<name>` comes from.
fn route_kind(view: &MeshView, id: &str) -> &'static str {
    let is = |meta: &kube::api::ObjectMeta| {
        meta.namespace
            .as_deref()
            .zip(meta.name.as_deref())
            .is_some_and(|(ns, n)| id.split_once('/') == Some((ns, n)))
    };
    if view.virtual_services.iter().any(|o| is(&o.metadata)) {
        "VirtualService"
    } else if view.traffic_splits.iter().any(|o| is(&o.metadata)) {
        "TrafficSplit"
    } else if view.http_routes.iter().any(|o| is(&o.metadata)) {
        "HTTPRoute"
    } else if view.grpc_routes.iter().any(|o| is(&o.metadata)) {
        "GRPCRoute"
    } else {
        "route"
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::json;

    use super::*;
    use crate::discovery::model::tests::{service, slice, view};

    fn obj<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> Arc<T> {
        Arc::new(serde_json::from_value(v).expect("a test object"))
    }

    fn reviews_pod(name: &str, ip: &str, version: &str) -> Arc<k8s_openapi::api::core::v1::Pod> {
        obj(json!({
            "metadata": {"namespace": "pets", "name": name, "labels": {
                "app": "reviews", "version": version, "weft.dev/revision": "stable"}},
            "spec": {"serviceAccountName": "reviews", "containers": [
                {"name": "app", "ports": [{"containerPort": 8080}]}]},
            "status": {"podIP": ip}
        }))
    }

    /// Seed 003's reviews canary beside a DestinationRule that sends plaintext to `db`, whose
    /// namespace is STRICT (the 503 UC afternoon), and an AuthorizationPolicy on `db`.
    fn mesh() -> MeshView {
        let mut v = view();
        v.pods.push(reviews_pod("reviews-v1", "198.18.2.1", "v1"));
        v.pods.push(reviews_pod("reviews-v2", "198.18.2.2", "v2"));
        v.services
            .push(service("pets", "reviews", "198.19.0.30", "http"));
        v.slices.push(slice(
            "pets",
            "reviews",
            "http",
            &[
                ("198.18.2.1", "reviews-v1", true),
                ("198.18.2.2", "reviews-v2", true),
            ],
        ));
        v.peer_authentications = vec![obj(json!({
            "apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
            "metadata": {"namespace": "pets", "name": "strict"},
            "spec": {"mtls": {"mode": "STRICT"}}
        }))];
        v.authorization_policies = vec![obj(json!({
            "apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
            "metadata": {"namespace": "pets", "name": "db-from-web"},
            "spec": {"selector": {"matchLabels": {"app": "db"}},
                     "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/pets/sa/web"]}}]}]}
        }))];
        v.destination_rules = vec![
            obj(json!({
                "apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
                "metadata": {"namespace": "pets", "name": "reviews",
                             "creationTimestamp": "2026-01-01T00:00:00Z"},
                "spec": {"host": "reviews", "subsets": [
                    {"name": "v1", "labels": {"version": "v1"}},
                    {"name": "v2", "labels": {"version": "v2"}}],
                    "trafficPolicy": {"tls": {"mode": "ISTIO_MUTUAL"}}}
            })),
            obj(json!({
                "apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
                "metadata": {"namespace": "pets", "name": "db-plain",
                             "creationTimestamp": "2026-01-01T00:00:00Z"},
                "spec": {"host": "db.pets.svc.cluster.local",
                         "trafficPolicy": {"tls": {"mode": "DISABLE"},
                                           "loadBalancer": {"simple": "RANDOM"}}}
            })),
        ];
        v.virtual_services = vec![obj(json!({
            "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"namespace": "pets", "name": "reviews",
                         "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"hosts": ["reviews"], "http": [
                {"match": [{"headers": {"end-user": {"exact": "jason"}}}],
                 "route": [{"destination": {"host": "reviews", "subset": "v2"}}]},
                {"route": [
                    {"destination": {"host": "reviews", "subset": "v1"}, "weight": 90},
                    {"destination": {"host": "reviews", "subset": "v2"}, "weight": 10}]}]}
        }))];
        v
    }

    #[test]
    fn a_client_pod_sees_its_routes_subsets_and_the_503_uc_conflict_named() {
        let v = mesh();
        let index = MeshIndex::build(&v);
        let text = describe(&v, &index, "pets", "web-1").expect("web-1 is meshed");
        // The config version moves with every change; the rest is pinned.
        let text: String = text
            .lines()
            .map(|l| {
                if l.starts_with("Config:") {
                    "Config:     <version>"
                } else {
                    l
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        let want = "\
Pod:        pets/web-1
Revision:   stable
Identity:   spiffe://cluster.local/ns/pets/sa/web
Workload:   web-1
mTLS:       STRICT (PeerAuthentication pets/strict (namespace))
Ports:
  8080   STRICT      PeerAuthentication pets/strict (namespace)
Config:     <version>
Outbound (the Services this pod calls that routing resources change):
  db.pets.svc.cluster.local:80
    DestinationRule pets/db-plain
    client tls: DISABLE
    policy: RANDOM
  reviews.pets.svc.cluster.local:80
    DestinationRule pets/reviews
    subsets: v1 (1 endpoints), v2 (1 endpoints)
    client tls: ISTIO_MUTUAL
    route #0 VirtualService pets/reviews: {\"headers\":{\"end-user\":{\"exact\":\"jason\"}}} -> reviews.pets.svc.cluster.local:80|v2 100 [retries 2 on connect-failure,refused-stream,unavailable,cancelled,503 (Istio default)]
    route #1 VirtualService pets/reviews: * -> reviews.pets.svc.cluster.local:80|v1 90, reviews.pets.svc.cluster.local:80|v2 10 [retries 2 on connect-failure,refused-stream,unavailable,cancelled,503 (Istio default)]
Inbound policies (evaluated by this pod's proxy, in order):
  none: every request the mTLS mode admits is allowed
Conflicts:
  DestinationRule pets/db-plain sets tls.mode DISABLE for db.pets.svc.cluster.local, but pets/db-1 port 8080 is STRICT (PeerAuthentication pets/strict (namespace)): this pod's requests to db.pets.svc.cluster.local get 503 UC";
        assert_eq!(text, want, "\n{text}");
    }

    #[test]
    fn a_server_pod_sees_its_authorization_policy_and_the_conflict_from_its_side() {
        let v = mesh();
        let index = MeshIndex::build(&v);
        let text = describe(&v, &index, "pets", "db-1").expect("db-1 is meshed");
        assert!(
            text.contains("Inbound policies (evaluated by this pod's proxy, in order):\n  AuthorizationPolicy pets/db-from-web ALLOW\n"),
            "{text}"
        );
        assert!(
            text.contains("but pets/db-1 port 8080 is STRICT (PeerAuthentication pets/strict (namespace)): clients in namespace pets get 503 UC calling this pod"),
            "{text}"
        );
        // Without the DISABLE rule, nothing is in conflict.
        let mut fixed = v.clone();
        fixed
            .destination_rules
            .retain(|d| d.metadata.name.as_deref() != Some("db-plain"));
        let index = MeshIndex::build(&fixed);
        let text = describe(&fixed, &index, "pets", "db-1").expect("db-1 is meshed");
        assert!(!text.contains("Conflicts:"), "{text}");
        // A resource not applied as written is named with why.
        let mut refused = fixed.clone();
        refused.virtual_services.push(obj(json!({
            "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"namespace": "pets", "name": "db-delegate"},
            "spec": {"hosts": ["db"], "http": [{"delegate": {}, "route": [
                {"destination": {"host": "db"}}]}]}
        })));
        let index = MeshIndex::build(&refused);
        let text = describe(&refused, &index, "pets", "web-1").expect("web-1 is meshed");
        assert!(
            text.contains("Not applied as written:\n  VirtualService pets/db-delegate: http[0].delegate is not supported yet"),
            "{text}"
        );
        // A pod that is not meshed is not described.
        assert_eq!(describe(&fixed, &index, "pets", "legacy-1"), None);
    }
}
