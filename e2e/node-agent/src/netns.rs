//! Pod sandboxes: one network namespace per pod with a routed veth (a /32 per pod, no bridge,
//! so no bridge-netfilter or hairpin trouble), and the pod IP allocator.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use anyhow::{Context, bail};
use tokio::process::Command;

pub struct Ipam {
    base: [u8; 3],
    used: BTreeSet<u8>,
}

impl Ipam {
    /// `pod_cidr` must be a /24 such as 198.18.1.0/24.
    pub fn new(pod_cidr: &str) -> anyhow::Result<Self> {
        let (net, len) = pod_cidr
            .split_once('/')
            .context("pod CIDR needs a prefix length")?;
        if len != "24" {
            bail!("pod CIDR {pod_cidr}: only /24 is supported");
        }
        let o = net.parse::<Ipv4Addr>()?.octets();
        Ok(Self {
            base: [o[0], o[1], o[2]],
            used: BTreeSet::new(),
        })
    }

    pub fn allocate(&mut self) -> anyhow::Result<Ipv4Addr> {
        let host = (2..=254)
            .find(|h| !self.used.contains(h))
            .context("pod CIDR exhausted")?;
        self.used.insert(host);
        Ok(Ipv4Addr::new(
            self.base[0],
            self.base[1],
            self.base[2],
            host,
        ))
    }

    pub fn release(&mut self, ip: Ipv4Addr) {
        self.used.remove(&ip.octets()[3]);
    }
}

pub struct Sandbox {
    pub name: String,
    pub host_veth: String,
    pub ip: Ipv4Addr,
}

async fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .await
        .context("running ip (iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl Sandbox {
    /// Names derive from the pod UID, so a restarted agent finds (and replaces) leftovers.
    pub fn for_pod(uid: &str, ip: Ipv4Addr) -> Self {
        let short: String = uid
            .chars()
            .filter(|c| c.is_ascii_hexdigit())
            .take(10)
            .collect();
        Self {
            name: format!("weft-pod-{short}"),
            host_veth: format!("wv{short}"),
            ip,
        }
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from("/var/run/netns").join(&self.name)
    }

    pub async fn create(&self, node_ip: Ipv4Addr) -> anyhow::Result<()> {
        self.destroy().await;
        let peer = format!("wp{}", &self.host_veth[2..]);
        let ns = self.name.as_str();
        let pod_ip = format!("{}/32", self.ip);
        let node = node_ip.to_string();
        ip(&["netns", "add", ns]).await?;
        ip(&[
            "link",
            "add",
            &self.host_veth,
            "type",
            "veth",
            "peer",
            "name",
            &peer,
        ])
        .await?;
        ip(&["link", "set", &peer, "netns", ns]).await?;
        ip(&["-n", ns, "link", "set", &peer, "name", "eth0"]).await?;
        ip(&["-n", ns, "link", "set", "lo", "up"]).await?;
        ip(&["-n", ns, "addr", "add", &pod_ip, "dev", "eth0"]).await?;
        ip(&["-n", ns, "link", "set", "eth0", "up"]).await?;
        ip(&[
            "-n", ns, "route", "add", &node, "dev", "eth0", "scope", "link",
        ])
        .await?;
        ip(&[
            "-n", ns, "route", "add", "default", "via", &node, "dev", "eth0",
        ])
        .await?;
        // The node address on the host end too: kube-proxy masquerades hairpin traffic (a pod
        // reaching itself through its Service) to the outgoing interface's address.
        ip(&["addr", "add", &format!("{node}/32"), "dev", &self.host_veth]).await?;
        ip(&["link", "set", &self.host_veth, "up"]).await?;
        ip(&[
            "route",
            "replace",
            &pod_ip,
            "dev",
            &self.host_veth,
            "src",
            &node,
        ])
        .await?;
        Ok(())
    }

    pub async fn destroy(&self) {
        let _ = ip(&["route", "del", &format!("{}/32", self.ip)]).await;
        let _ = ip(&["link", "del", &self.host_veth]).await;
        let _ = ip(&["netns", "del", &self.name]).await;
    }
}
