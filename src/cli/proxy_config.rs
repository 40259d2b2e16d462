//! `weft proxy-config routes|clusters|endpoints|egress <pod>`: the outbound tables of one pod's proxy
//! (Istio's `istioctl proxy-config` for weft), read from the snapshot the operator's own index
//! computes for the pod from the cluster now; `weft proxy-status` says whether the proxy has
//! acknowledged that version. Turning a snapshot into rows is pure and table-tested.

use clap::{Args, Subcommand};
use serde::Serialize;

use super::error::CliError;
use super::inventory;
use super::output::{ListArgs, Row, render};
use crate::contract;
use crate::discovery::MeshIndex;
use crate::snapshot::{
    ClientTls, MtlsMode, Protocol, ProxySnapshot, Service, UpstreamSecurity, decode_snapshot,
};

#[derive(Debug, Subcommand)]
pub enum ProxyConfigCommand {
    /// HTTP routes per Service (and per gateway host on a gateway pod): matches and weighted
    /// destinations, in the order tried.
    Routes(PodArgs),
    /// Service ports the proxy knows: protocol, subsets, endpoints.
    Clusters(PodArgs),
    /// Every endpoint, with its Service, subsets and how the proxy dials it.
    Endpoints(PodArgs),
    /// Declared external services (ServiceEntries exported to the pod's namespace) and the
    /// outbound traffic policy for everything else.
    Egress(PodArgs),
}

#[derive(Debug, Args)]
pub struct PodArgs {
    /// The meshed pod.
    pub pod: String,
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
    /// Namespace of mesh-wide policies (the operator's --root-namespace).
    #[arg(long, env = "WEFT_ROOT_NAMESPACE", default_value = contract::DEFAULT_OPERATOR_NAMESPACE)]
    pub root_namespace: String,
    #[command(flatten)]
    pub list: ListArgs,
}

pub async fn run(command: ProxyConfigCommand) -> Result<(), CliError> {
    let (args, which) = match &command {
        ProxyConfigCommand::Routes(a) => (a, Table::Routes),
        ProxyConfigCommand::Clusters(a) => (a, Table::Clusters),
        ProxyConfigCommand::Endpoints(a) => (a, Table::Endpoints),
        ProxyConfigCommand::Egress(a) => (a, Table::Egress),
    };
    let client = inventory::client().await?;
    let view = inventory::mesh_view(
        &client,
        &args.root_namespace,
        &args.list.mesh.weft_namespace,
    )
    .await
    .map_err(CliError::kube("reading the mesh"))?;
    let index = MeshIndex::build(&view);
    let Ok((version, bytes)) = index.snapshot_for(&args.namespace, &args.pod) else {
        println!(
            "Pod {}/{} has no weft proxy config: it is not meshed, or not running yet.",
            args.namespace, args.pod
        );
        return Ok(());
    };
    let snapshot = decode_snapshot(&bytes).map_err(|e| CliError::Output {
        format: "snapshot",
        message: e.to_string(),
    })?;
    eprintln!("Config version {version} (`weft proxy-status` shows whether the proxy acked it)");
    let out = match which {
        Table::Routes => render(&routes(&snapshot), args.list.output)?,
        Table::Clusters => render(&clusters(&snapshot), args.list.output)?,
        Table::Endpoints => render(&endpoints(&snapshot), args.list.output)?,
        Table::Egress => {
            eprintln!(
                "Outbound traffic policy {:?}: destinations declared below pass, others {}",
                snapshot.outbound.policy,
                match snapshot.outbound.policy {
                    crate::snapshot::OutboundPolicy::AllowAny => "pass through",
                    crate::snapshot::OutboundPolicy::RegistryOnly => "are refused",
                }
            );
            render(&egress(&snapshot), args.list.output)?
        }
    };
    match out {
        Some(text) => print!("{text}"),
        None => eprintln!("No entries."),
    }
    Ok(())
}

enum Table {
    Routes,
    Clusters,
    Endpoints,
    Egress,
}

fn services(s: &ProxySnapshot) -> impl Iterator<Item = &Service> {
    s.outbound.services.iter().chain(&s.outbound.headless)
}

fn protocol(svc: &Service) -> &'static str {
    match (svc.protocol, svc.detect_protocol) {
        (Protocol::Http, _) => "http",
        (Protocol::Tcp, true) => "detect",
        (Protocol::Tcp, false) => "tcp",
    }
}

/// One route of one Service (or the Service's default when it has none).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RouteRow {
    pub service: String,
    pub port: u16,
    /// Position in the Service's routes; None for the default.
    pub index: Option<usize>,
    pub name: String,
    #[serde(rename = "match")]
    pub matches: String,
    pub destinations: String,
    /// Timeout, retries, faults, redirect, rewrite and header edits, in one line.
    pub actions: String,
}

impl Row for RouteRow {
    const HEADERS: &'static [&'static str] = &[
        "service",
        "port",
        "#",
        "route",
        "match",
        "destinations",
        "actions",
    ];
    fn cells(&self) -> Vec<String> {
        vec![
            self.service.clone(),
            self.port.to_string(),
            self.index.map_or("-".into(), |i| i.to_string()),
            self.name.clone(),
            self.matches.clone(),
            self.destinations.clone(),
            self.actions.clone(),
        ]
    }
}

/// Every HTTP-capable Service port's routes, in the order the proxy tries them; on a gateway,
/// each listener's virtual hosts too (`service` is `gateway <host>`, `port` the listener's).
pub fn routes(s: &ProxySnapshot) -> Vec<RouteRow> {
    let mut rows = Vec::new();
    for svc in services(s) {
        if protocol(svc) != "tcp" {
            if svc.http.is_empty() {
                rows.push(RouteRow {
                    service: svc.name.clone(),
                    port: svc.port,
                    index: None,
                    name: "(default)".into(),
                    matches: "*".into(),
                    destinations: format!("{}:{} (all endpoints)", svc.name, svc.port),
                    actions: crate::route::Actions::default().summary(),
                });
            } else {
                route_rows(&svc.name, svc.port, &svc.http, &mut rows);
            }
        }
        l4_route_rows(&svc.name, svc.port, &svc.l4, &mut rows);
    }
    for listener in s.gateway.iter().flat_map(|g| &g.listeners) {
        for vhost in &listener.virtual_hosts {
            let host = format!("gateway {}", vhost.domains.join(","));
            route_rows(&host, listener.port, &vhost.routes, &mut rows);
        }
        // Relayed: PASSTHROUGH (by SNI) or TCP, and each terminated TLS server's own routes.
        if let Some(l4) = &listener.l4 {
            let host = match l4.sni_hosts.as_slice() {
                [] => "gateway (tcp)".to_string(),
                names => format!("gateway {} (passthrough)", names.join(",")),
            };
            l4_route_rows(&host, listener.port, &l4.routes, &mut rows);
        }
        for t in &listener.tls {
            if let Some(relay) = &t.relay {
                let host = format!("gateway {} (terminated)", t.hosts.join(","));
                l4_route_rows(&host, listener.port, relay, &mut rows);
            }
        }
    }
    rows
}

/// `tls` then `tcp` routes of a Service port (VirtualService routes, issue 19) or of a
/// gateway's relayed listener, in the order the proxy tries them for a connection it relays;
/// the action column says which kind.
fn l4_route_rows(
    service: &str,
    port: u16,
    table: &crate::route::l4::L4Table,
    rows: &mut Vec<RouteRow>,
) {
    let kinds = [("tls", &table.tls), ("tcp", &table.tcp)];
    let mut index = 0;
    for (kind, routes) in kinds {
        for r in routes {
            rows.push(RouteRow {
                service: service.to_string(),
                port,
                index: Some(index),
                name: r.name.clone(),
                matches: matches_column(&r.matches),
                destinations: destinations_column(&r.destinations),
                actions: format!("{kind} (relayed, no HTTP)"),
            });
            index += 1;
        }
    }
}

/// A route's matches as the table shows them: `*` for none, else each as JSON, or-ed.
fn matches_column<M: Serialize>(matches: &[M]) -> String {
    if matches.is_empty() {
        return "*".to_string();
    }
    matches
        .iter()
        .map(|m| serde_json::to_string(m).unwrap_or_default())
        .collect::<Vec<_>>()
        .join(" or ")
}

/// A route's weighted destinations as `service:port|subset weight`, comma-separated.
fn destinations_column(destinations: &[crate::route::Destination]) -> String {
    destinations
        .iter()
        .map(|d| {
            let subset = d
                .subset
                .as_deref()
                .map(|s| format!("|{s}"))
                .unwrap_or_default();
            format!("{}:{}{subset} {}", d.service, d.port, d.weight)
        })
        .collect::<Vec<_>>()
        .join(", ")
}

pub(crate) fn route_rows(
    host: &str,
    port: u16,
    routes: &[crate::route::HttpRoute],
    rows: &mut Vec<RouteRow>,
) {
    for (i, r) in routes.iter().enumerate() {
        rows.push(RouteRow {
            service: host.to_string(),
            port,
            index: Some(i),
            name: r.name.clone(),
            matches: matches_column(&r.matches),
            destinations: destinations_column(&r.destinations),
            actions: r.actions.summary(),
        });
    }
}

/// One Service port the proxy knows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClusterRow {
    pub service: String,
    pub port: u16,
    /// The ClusterIP; None for a headless Service.
    pub cluster_ip: Option<String>,
    pub protocol: &'static str,
    pub subsets: Vec<String>,
    pub endpoints: usize,
    pub routes: usize,
    /// The DestinationRule's load balancing and outlier detection (`-`: round robin, none),
    /// then each subset's own where it differs.
    pub policy: String,
}

impl Row for ClusterRow {
    const HEADERS: &'static [&'static str] = &[
        "service",
        "port",
        "cluster ip",
        "protocol",
        "subsets",
        "endpoints",
        "routes",
        "policy",
    ];
    fn cells(&self) -> Vec<String> {
        vec![
            self.service.clone(),
            self.port.to_string(),
            self.cluster_ip.clone().unwrap_or_else(|| "None".into()),
            self.protocol.into(),
            if self.subsets.is_empty() {
                "-".into()
            } else {
                self.subsets.join(",")
            },
            self.endpoints.to_string(),
            self.routes.to_string(),
            self.policy.clone(),
        ]
    }
}

pub fn clusters(s: &ProxySnapshot) -> Vec<ClusterRow> {
    services(s)
        .map(|svc| ClusterRow {
            service: svc.name.clone(),
            port: svc.port,
            cluster_ip: svc.cluster_ip.map(|ip| ip.to_string()),
            protocol: protocol(svc),
            subsets: svc.subsets.keys().cloned().collect(),
            endpoints: svc.endpoints.len(),
            routes: svc.http.len(),
            policy: std::iter::once(svc.traffic.summary())
                .chain(
                    svc.subset_traffic
                        .iter()
                        .filter(|(_, p)| **p != svc.traffic)
                        .map(|(name, p)| format!("{name}: {}", p.summary())),
                )
                .collect::<Vec<_>>()
                .join(" | "),
        })
        .collect()
}

/// One endpoint of one Service port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EndpointRow {
    pub endpoint: String,
    pub service: String,
    pub subsets: Vec<String>,
    /// `mtls` (with the identity it must prove) or `plaintext`.
    pub security: String,
    pub workload: Option<String>,
}

impl Row for EndpointRow {
    const HEADERS: &'static [&'static str] =
        &["endpoint", "service", "subsets", "security", "workload"];
    fn cells(&self) -> Vec<String> {
        vec![
            self.endpoint.clone(),
            self.service.clone(),
            if self.subsets.is_empty() {
                "-".into()
            } else {
                self.subsets.join(",")
            },
            self.security.clone(),
            self.workload.clone().unwrap_or_else(|| "-".into()),
        ]
    }
}

pub fn endpoints(s: &ProxySnapshot) -> Vec<EndpointRow> {
    let mut rows = Vec::new();
    for svc in services(s) {
        for (i, ep) in svc.endpoints.iter().enumerate() {
            // What the proxy sends unrouted (a subset's own mode shows in `clusters`).
            let security = match (svc.security_of(ep, None), svc.tls) {
                (UpstreamSecurity::Mtls { identity }, _) => format!("mtls {identity}"),
                (UpstreamSecurity::Plaintext, Some(ClientTls::Disable)) => {
                    "plaintext (DestinationRule tls.mode DISABLE)".into()
                }
                (UpstreamSecurity::Plaintext, _) if ep.mtls_mode_for_port == MtlsMode::Disable => {
                    "plaintext (the server's port is DISABLE)".into()
                }
                (UpstreamSecurity::Plaintext, _) => "plaintext (not meshed)".into(),
                (
                    UpstreamSecurity::Originate {
                        mutual, settings, ..
                    },
                    _,
                ) => format!(
                    "tls {} (DestinationRule tls.mode {}{})",
                    settings.sni.as_deref().unwrap_or(&svc.name),
                    if mutual { "MUTUAL" } else { "SIMPLE" },
                    settings
                        .credential_name
                        .as_deref()
                        .map(|c| format!(", credentialName {c}"))
                        .unwrap_or_default()
                ),
            };
            rows.push(EndpointRow {
                endpoint: ep.addr().to_string(),
                service: format!("{}:{}", svc.name, svc.port),
                subsets: svc
                    .subsets
                    .iter()
                    .filter(|(_, members)| members.contains(&i))
                    .map(|(name, _)| name.clone())
                    .collect(),
                security,
                workload: ep
                    .workload
                    .as_ref()
                    .map(|w| format!("{}/{}", w.namespace, w.name)),
            });
        }
    }
    rows
}

/// One port of one declared external host (docs/egress.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EgressRow {
    pub host: String,
    pub port: u16,
    /// How it is matched: `http` (Host), `tls` (SNI), `tcp` (address only).
    pub protocol: String,
    pub resolution: String,
    pub addresses: Vec<String>,
    /// STATIC endpoints, or `-`: where the app dialled.
    pub targets: Vec<String>,
    /// The ServiceEntry, `namespace/name`.
    pub source: String,
}

impl Row for EgressRow {
    const HEADERS: &'static [&'static str] = &[
        "host",
        "port",
        "protocol",
        "resolution",
        "addresses",
        "targets",
        "service entry",
    ];
    fn cells(&self) -> Vec<String> {
        let list = |l: &[String]| {
            if l.is_empty() {
                "-".into()
            } else {
                l.join(",")
            }
        };
        vec![
            self.host.clone(),
            self.port.to_string(),
            self.protocol.clone(),
            self.resolution.clone(),
            list(&self.addresses),
            list(&self.targets),
            self.source.clone(),
        ]
    }
}

pub fn egress(s: &ProxySnapshot) -> Vec<EgressRow> {
    s.outbound
        .egress
        .iter()
        .flat_map(|e| {
            e.ports.iter().map(move |p| EgressRow {
                host: e.host.clone(),
                port: p.number,
                protocol: serde_plain(&p.protocol),
                resolution: serde_plain(&e.resolution),
                // The allocated address first, marked: the one the proxy's DNS answers.
                addresses: e
                    .allocated
                    .map(|a| format!("{a}(allocated)"))
                    .into_iter()
                    .chain(e.addresses.iter().map(ToString::to_string))
                    .collect(),
                targets: p
                    .endpoints
                    .iter()
                    .map(|ep| ep.addr().to_string())
                    .chain(p.dns_endpoints.iter().map(|ep| match ep.ip() {
                        Some(ip) => std::net::SocketAddr::new(ip, ep.port).to_string(),
                        None => format!("{}:{}", ep.address, ep.port),
                    }))
                    .collect(),
                source: e.source.clone(),
            })
        })
        .collect()
}

/// An enum as the snapshot spells it (`tls`, `STATIC`).
fn serde_plain<T: Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::decode_snapshot;

    fn snapshot() -> ProxySnapshot {
        let json = serde_json::json!({
            "schemaVersion": 1, "version": "v1",
            "identity": "spiffe://cluster.local/ns/shop/sa/productpage",
            "trustDomain": "cluster.local",
            "inbound": {"defaultMode": "PERMISSIVE"},
            "outbound": {"services": [{
                "clusterIp": "198.19.0.20", "port": 9080,
                "name": "reviews.shop.svc.cluster.local", "protocol": "http",
                "endpoints": [
                    {"ip": "198.18.1.5", "port": 9080, "meshed": true,
                     "identity": "spiffe://cluster.local/ns/shop/sa/reviews",
                     "workload": {"name": "reviews-v1", "namespace": "shop"}},
                    {"ip": "198.18.1.6", "port": 9080, "meshed": true,
                     "identity": "spiffe://cluster.local/ns/shop/sa/reviews",
                     "workload": {"name": "reviews-v2", "namespace": "shop"}}],
                "subsets": {"v1": [0], "v2": [1]},
                "traffic": {"loadBalancer": "random"},
                "subsetTraffic": {"v2": {"loadBalancer": {"consistentHash": {"header": "end-user"}},
                    "outlierDetection": {"consecutive5xx": 1, "consecutiveGateway": 0,
                        "intervalMs": 1000, "baseEjectionMs": 180000,
                        "maxEjectionPercent": 100, "minHealthPercent": 0}}},
                "http": [{"name": "shop/reviews", "destinations": [
                    {"service": "reviews.shop.svc.cluster.local", "port": 9080,
                     "subset": "v1", "weight": 90},
                    {"service": "reviews.shop.svc.cluster.local", "port": 9080,
                     "subset": "v2", "weight": 10}]}]
            }, {
                "clusterIp": "198.19.0.21", "port": 5432,
                "name": "db.shop.svc.cluster.local",
                "endpoints": [{"ip": "198.18.1.9", "port": 5432, "meshed": false}]
            }]}
        });
        decode_snapshot(json.to_string().as_bytes()).unwrap()
    }

    #[test]
    fn tcp_and_tls_routes_read_as_rows_of_their_tcp_port_tls_first() {
        let mut s = snapshot();
        let db = &mut s.outbound.services[1];
        db.l4 = serde_json::from_value(serde_json::json!({
            "tcp": [{"name": "shop/db", "matches": [{"port": 5432}], "destinations": [
                {"service": "db.shop.svc.cluster.local", "port": 5432, "subset": "v2", "weight": 100}]}],
            "tls": [{"name": "shop/db", "matches": [{"sniHosts": ["db.example.com"]}], "destinations": [
                {"service": "db.shop.svc.cluster.local", "port": 5432, "weight": 100}]}]
        }))
        .unwrap();
        let rows: Vec<_> = routes(&s)
            .into_iter()
            .filter(|r| r.service == "db.shop.svc.cluster.local")
            .collect();
        assert_eq!(rows.len(), 2, "{rows:?}");
        assert_eq!(rows[0].matches, r#"{"sniHosts":["db.example.com"]}"#);
        assert!(rows[0].actions.starts_with("tls"), "{rows:?}");
        assert_eq!(rows[1].index, Some(1));
        assert_eq!(rows[1].matches, r#"{"port":5432}"#);
        assert_eq!(
            rows[1].destinations,
            "db.shop.svc.cluster.local:5432|v2 100"
        );
        assert!(rows[1].actions.starts_with("tcp"), "{rows:?}");
    }

    #[test]
    fn seed_003s_canary_reads_as_routes_clusters_and_endpoints() {
        let s = snapshot();
        let routes = routes(&s);
        assert_eq!(
            routes.len(),
            1,
            "the TCP Service has no HTTP routes: {routes:?}"
        );
        assert_eq!(routes[0].name, "shop/reviews");
        assert_eq!(
            routes[0].destinations,
            "reviews.shop.svc.cluster.local:9080|v1 90, reviews.shop.svc.cluster.local:9080|v2 10"
        );
        assert_eq!(routes[0].matches, "*");
        assert!(
            routes[0].actions.ends_with("(Istio default)"),
            "{}",
            routes[0].actions
        );

        let clusters = clusters(&s);
        assert_eq!(
            clusters
                .iter()
                .map(|c| (c.service.as_str(), c.protocol, c.endpoints, c.subsets.len()))
                .collect::<Vec<_>>(),
            [
                ("reviews.shop.svc.cluster.local", "http", 2, 2),
                ("db.shop.svc.cluster.local", "tcp", 1, 0)
            ]
        );
        // The DestinationRule's balancing and outlier detection, as the proxy follows them.
        assert_eq!(
            clusters[0].policy,
            "RANDOM | v2: hash(header end-user); eject 1×5xx for 180s×n, ≤100%"
        );
        assert_eq!(clusters[1].policy, "-");

        let endpoints = endpoints(&s);
        assert_eq!(endpoints[1].subsets, ["v2"]);
        assert_eq!(
            endpoints[1].security,
            "mtls spiffe://cluster.local/ns/shop/sa/reviews"
        );
        assert_eq!(endpoints[1].workload.as_deref(), Some("shop/reviews-v2"));
        assert_eq!(endpoints[2].security, "plaintext (not meshed)");
        // The table a user reads.
        let text = super::super::output::table(
            RouteRow::HEADERS,
            &routes.iter().map(Row::cells).collect::<Vec<_>>(),
        );
        assert!(text.starts_with("SERVICE"), "{text}");
        assert!(text.contains("shop/reviews"), "{text}");
    }

    #[test]
    fn the_seeds_service_entry_reads_as_one_tls_port_to_where_the_app_dialled() {
        let mut s = snapshot();
        s.outbound.egress = crate::route::egress::compile(
            "payments",
            "contoso-payments-api",
            &serde_json::json!({
                "hosts": ["api.payments-partner.com"],
                "ports": [{"number": 443, "name": "tls", "protocol": "TLS"}],
                "resolution": "DNS", "location": "MESH_EXTERNAL"
            }),
        )
        .unwrap()
        .services;
        let rows = egress(&s);
        assert_eq!(
            rows[0].cells(),
            [
                "api.payments-partner.com",
                "443",
                "tls",
                "DNS",
                "-",
                "-",
                "payments/contoso-payments-api"
            ]
        );
    }
}
