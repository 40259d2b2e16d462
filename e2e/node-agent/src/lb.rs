//! `weft-node-agent lb`: the local cluster's LoadBalancer provider (test tooling, as
//! cloud-provider-kind or MetalLB are for kind). It gives every `type: LoadBalancer` Service an
//! address from a pool (`LB_POOL` in e2e/cluster/env.sh) in `status.loadBalancer.ingress`;
//! kube-proxy then DNATs that address like the ClusterIP, and the node routes the pool.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;

use anyhow::{Context as _, bail};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use kube::api::{Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use serde_json::json;

#[derive(clap::Args, Clone, Debug)]
pub struct LbConfig {
    /// A kubeconfig allowed to list/watch Services and patch services/status.
    #[arg(long)]
    pub kubeconfig: PathBuf,
    /// The IPv4 CIDR addresses are handed out from (outside the API server's ClusterIP range).
    #[arg(long)]
    pub pool: String,
}

/// Field manager of the status writes, so `kubectl get svc -o yaml --show-managed-fields`
/// says who set the address.
const FIELD_MANAGER: &str = "weft-e2e-lb";

// === The pool (pure) ===

/// The addresses of the pool and which Service (`namespace/name`) holds each.
#[derive(Debug)]
pub struct Pool {
    first: u32,
    last: u32,
    held: BTreeMap<Ipv4Addr, String>,
}

impl Pool {
    /// Host addresses of an IPv4 CIDR (network and broadcast addresses left out for /30 and
    /// wider, so the pool reads like a subnet).
    pub fn new(cidr: &str) -> anyhow::Result<Self> {
        let (address, length) = cidr
            .split_once('/')
            .with_context(|| format!("--pool {cidr:?} is not a CIDR such as 198.19.255.0/24"))?;
        let address: Ipv4Addr = address
            .parse()
            .with_context(|| format!("--pool {cidr:?}: {address:?} is not an IPv4 address"))?;
        let length: u32 = length
            .parse()
            .ok()
            .filter(|l| *l <= 32)
            .with_context(|| format!("--pool {cidr:?}: the prefix length is 0 to 32"))?;
        let mask = if length == 0 {
            0
        } else {
            u32::MAX << (32 - length)
        };
        let network = u32::from(address) & mask;
        let broadcast = network | !mask;
        let (first, last) = if length <= 30 {
            (network + 1, broadcast - 1)
        } else {
            (network, broadcast)
        };
        if first > last {
            bail!("--pool {cidr:?} holds no address");
        }
        Ok(Self {
            first,
            last,
            held: BTreeMap::new(),
        })
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        (self.first..=self.last).contains(&u32::from(ip))
    }

    /// The address `service` keeps: the one its status already shows (a restart of this
    /// controller must not move addresses), else the one it asks for in the deprecated
    /// `spec.loadBalancerIP`, else the lowest free one. `None` when the pool is exhausted.
    pub fn assign(
        &mut self,
        service: &str,
        current: Option<Ipv4Addr>,
        requested: Option<Ipv4Addr>,
    ) -> Option<Ipv4Addr> {
        let free_or_ours =
            |pool: &Self, ip: Ipv4Addr| pool.held.get(&ip).is_none_or(|who| who == service);
        let wanted = [requested, current]
            .into_iter()
            .flatten()
            .find(|ip| self.contains(*ip) && free_or_ours(self, *ip));
        let ip = match wanted {
            Some(ip) => ip,
            None => match self.held.iter().find(|(_, who)| *who == service) {
                Some((ip, _)) => *ip,
                None => (self.first..=self.last)
                    .map(Ipv4Addr::from)
                    .find(|ip| !self.held.contains_key(ip))?,
            },
        };
        self.release(service);
        self.held.insert(ip, service.to_string());
        Some(ip)
    }

    pub fn release(&mut self, service: &str) {
        self.held.retain(|_, who| who != service);
    }
}

// === The controller ===

/// What the Service's status should say.
#[derive(Debug, PartialEq, Eq)]
enum Want {
    Address(Ipv4Addr),
    /// Not (or no longer) a LoadBalancer of ours, but its status holds a pool address.
    Clear,
    Nothing,
}

fn key(service: &Service) -> String {
    format!(
        "{}/{}",
        service.namespace().unwrap_or_default(),
        service.name_any()
    )
}

fn is_ours(service: &Service) -> bool {
    service.spec.as_ref().is_some_and(|s| {
        s.type_.as_deref() == Some("LoadBalancer") && s.load_balancer_class.is_none()
    })
}

fn status_ips(service: &Service) -> Vec<Ipv4Addr> {
    service
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|i| i.ip.as_deref()?.parse().ok())
        .collect()
}

fn decide(pool: &mut Pool, service: &Service) -> Want {
    let key = key(service);
    let current = status_ips(service);
    if !is_ours(service) {
        pool.release(&key);
        return if current.iter().any(|ip| pool.contains(*ip)) {
            Want::Clear
        } else {
            Want::Nothing
        };
    }
    let requested = service
        .spec
        .as_ref()
        .and_then(|s| s.load_balancer_ip.as_deref())
        .and_then(|ip| ip.parse().ok());
    match pool.assign(&key, current.first().copied(), requested) {
        Some(ip) if current == [ip] => Want::Nothing,
        Some(ip) => Want::Address(ip),
        None => {
            tracing::warn!(service = %key, "LoadBalancer pool exhausted; the Service stays pending");
            Want::Nothing
        }
    }
}

async fn write(api_client: &Client, service: &Service, want: Want) {
    let body = match want {
        Want::Nothing => return,
        Want::Address(ip) => json!({"status": {"loadBalancer": {"ingress": [
            {"ip": ip.to_string(), "ipMode": "VIP"}
        ]}}}),
        Want::Clear => json!({"status": {"loadBalancer": {"ingress": null}}}),
    };
    let namespace = service.namespace().unwrap_or_default();
    let api: Api<Service> = Api::namespaced(api_client.clone(), &namespace);
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    };
    match api
        .patch_status(&service.name_any(), &params, &Patch::Merge(&body))
        .await
    {
        Ok(_) => tracing::info!(service = %key(service), status = %body, "LoadBalancer status set"),
        // A Service deleted meanwhile, or a transient error: the watch brings it back.
        Err(error) => {
            tracing::warn!(service = %key(service), %error, "LoadBalancer status not set")
        }
    }
}

pub async fn run(config: LbConfig) -> anyhow::Result<()> {
    let mut pool = Pool::new(&config.pool)?;
    let kubeconfig = Kubeconfig::read_from(&config.kubeconfig)?;
    let client_config =
        kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
    let client = Client::try_from(client_config)?;
    let api: Api<Service> = Api::all(client.clone());
    let mut events = watcher(api, watcher::Config::default()).boxed();
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    // A (re)list: first record every address already handed out, then assign the rest, so a
    // new Service never takes an address a Service later in the list already shows.
    let mut listing: Option<Vec<Service>> = None;
    tracing::info!(pool = %config.pool, "LoadBalancer provider running");
    loop {
        let event = tokio::select! {
            _ = sigterm.recv() => return Ok(()),
            event = events.next() => event,
        };
        match event {
            None => bail!("the Service watch ended"),
            Some(Err(error)) => tracing::warn!(%error, "Service watch error; retrying"),
            Some(Ok(watcher::Event::Init)) => listing = Some(Vec::new()),
            Some(Ok(watcher::Event::InitApply(service))) => {
                listing.get_or_insert_with(Vec::new).push(service)
            }
            Some(Ok(watcher::Event::InitDone)) => {
                let services = listing.take().unwrap_or_default();
                pool.held.clear();
                let mut seen = BTreeSet::new();
                for service in services.iter().filter(|s| is_ours(s)) {
                    if let Some(ip) = status_ips(service).first().copied()
                        && pool.contains(ip)
                        && seen.insert(ip)
                    {
                        pool.held.insert(ip, key(service));
                    }
                }
                for service in &services {
                    let want = decide(&mut pool, service);
                    write(&client, service, want).await;
                }
            }
            Some(Ok(watcher::Event::Apply(service))) => {
                let want = decide(&mut pool, &service);
                write(&client, &service, want).await;
            }
            Some(Ok(watcher::Event::Delete(service))) => pool.release(&key(&service)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        LoadBalancerIngress, LoadBalancerStatus, ServiceSpec, ServiceStatus,
    };

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn service(name: &str, type_: &str, status_ip: Option<&str>) -> Service {
        let mut s = Service::default();
        s.metadata.namespace = Some("ns".into());
        s.metadata.name = Some(name.into());
        s.spec = Some(ServiceSpec {
            type_: Some(type_.into()),
            ..Default::default()
        });
        s.status = status_ip.map(|i| ServiceStatus {
            load_balancer: Some(LoadBalancerStatus {
                ingress: Some(vec![LoadBalancerIngress {
                    ip: Some(i.into()),
                    ..Default::default()
                }]),
            }),
            ..Default::default()
        });
        s
    }

    #[test]
    fn the_pool_hands_out_its_host_addresses_lowest_first_and_keeps_them() {
        let mut pool = Pool::new("198.19.255.0/24").unwrap();
        assert!(!pool.contains(ip("198.19.255.0")) && !pool.contains(ip("198.19.255.255")));
        assert_eq!(pool.assign("a", None, None), Some(ip("198.19.255.1")));
        assert_eq!(pool.assign("b", None, None), Some(ip("198.19.255.2")));
        // Asking again keeps the address; a freed one is reused.
        assert_eq!(pool.assign("a", None, None), Some(ip("198.19.255.1")));
        pool.release("a");
        assert_eq!(pool.assign("c", None, None), Some(ip("198.19.255.1")));
        // A held address is not given to someone asking for it.
        assert_eq!(
            pool.assign("d", None, Some(ip("198.19.255.2"))),
            Some(ip("198.19.255.3"))
        );
        // An address outside the pool is never handed out.
        assert_eq!(
            pool.assign("e", Some(ip("198.19.0.7")), None),
            Some(ip("198.19.255.4"))
        );
    }

    #[test]
    fn an_exhausted_pool_leaves_the_service_pending() {
        let mut pool = Pool::new("198.19.255.0/31").unwrap();
        assert!(pool.assign("a", None, None).is_some());
        assert!(pool.assign("b", None, None).is_some());
        assert_eq!(pool.assign("c", None, None), None);
        assert!(Pool::new("198.19.255.0").is_err());
        assert!(Pool::new("x/24").is_err());
    }

    #[test]
    fn only_loadbalancer_services_get_an_address_and_a_former_one_is_cleared() {
        let mut pool = Pool::new("198.19.255.0/24").unwrap();
        assert_eq!(
            decide(&mut pool, &service("gw", "LoadBalancer", None)),
            Want::Address(ip("198.19.255.1"))
        );
        assert_eq!(
            decide(
                &mut pool,
                &service("gw", "LoadBalancer", Some("198.19.255.1"))
            ),
            Want::Nothing
        );
        assert_eq!(
            decide(&mut pool, &service("web", "ClusterIP", None)),
            Want::Nothing
        );
        assert_eq!(
            decide(&mut pool, &service("gw", "ClusterIP", Some("198.19.255.1"))),
            Want::Clear
        );
        // Its address is free again.
        assert_eq!(pool.assign("other", None, None), Some(ip("198.19.255.1")));
        let mut classed = service("x", "LoadBalancer", None);
        if let Some(spec) = classed.spec.as_mut() {
            spec.load_balancer_class = Some("example.com/other".into());
        }
        assert_eq!(decide(&mut pool, &classed), Want::Nothing);
    }
}
