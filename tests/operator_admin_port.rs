//! Issue 21 item 5: `/debug/proxies` (every connected proxy's pod, identity and versions,
//! unauthenticated) is served only on the operator's loopback admin port, which
//! `weft proxy-status` reads from inside each replica (`kubectl exec`); the monitoring port,
//! reachable by every pod, no longer lists proxies and says where they went.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use clap::Parser;
use tokio::sync::watch;
use weft::discovery::server::{ADMIN_ADDR, debug_moved_router, debug_router, fetch_proxies};
use weft::discovery::{DiscoverySettings, DiscoveryState, MeshIndex, MeshView, ProxyList};
use weft::kube::metrics::OperatorMetrics;
use weft::operator::run::OperatorArgs;
use weft::operator::serving::{ServingLimits, serve_plain_on};

#[derive(Parser)]
struct Operator {
    #[command(flatten)]
    args: OperatorArgs,
}

fn parse(extra: &[&str]) -> Result<OperatorArgs, String> {
    let argv = std::iter::once("weft-operator").chain(extra.iter().copied());
    Operator::try_parse_from(argv)
        .map(|o| o.args)
        .map_err(|e| e.to_string())
}

#[test]
fn the_admin_port_listens_on_loopback_only() {
    let default = parse(&[]).unwrap();
    assert_eq!(
        default.admin_addr,
        ADMIN_ADDR.parse::<SocketAddr>().unwrap()
    );
    assert!(default.admin_addr.ip().is_loopback());
    assert!(parse(&["--admin-addr", "[::1]:15000"]).is_ok());
    for exposed in ["0.0.0.0:15000", "[::]:15000", "198.18.0.7:15000"] {
        let refused = parse(&["--admin-addr", exposed]).unwrap_err();
        assert!(
            refused.contains("is not a loopback address") && refused.contains("/debug/proxies"),
            "{exposed}: {refused}"
        );
    }
}

async fn serve(app: axum::Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve_plain_on(listener, app, ServingLimits::default()));
    addr
}

#[tokio::test]
async fn proxies_are_read_on_the_admin_port_and_the_monitoring_port_says_where_they_went() {
    let (_index, index) = watch::channel(Arc::new(MeshIndex::build(&MeshView::default())));
    let state = DiscoveryState::from_index(
        index,
        DiscoverySettings {
            trust_domain: "cluster.local".into(),
            operator_namespace: "weft-system".into(),
            root_namespace: "weft-system".into(),
            cluster_domain: "cluster.local".into(),
        },
        Arc::new(OperatorMetrics::new()),
    );
    let admin = serve(debug_router(state, "weft-operator-a".into())).await;
    let monitoring = serve(debug_moved_router()).await;

    // What `weft proxy-status --this-replica` prints inside the replica.
    let body = fetch_proxies(admin).await.unwrap();
    let list: ProxyList = serde_json::from_slice(&body).unwrap();
    assert_eq!(list.instance, "weft-operator-a");
    assert!(list.proxies.is_empty());

    let moved = fetch_proxies(monitoring).await.unwrap_err();
    assert!(
        moved.contains("404") && moved.contains("loopback admin port (127.0.0.1:15000)"),
        "{moved}"
    );
}
