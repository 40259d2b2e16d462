//! Flags of `weft-node-agent run`.

use std::net::Ipv4Addr;
use std::path::PathBuf;

#[derive(clap::Args, Clone, Debug)]
pub struct Config {
    #[arg(long)]
    pub kubeconfig: PathBuf,
    #[arg(long, default_value = "weft-node")]
    pub node_name: String,
    #[arg(long)]
    pub node_ip: Ipv4Addr,
    /// The node's pod CIDR; only /24s are supported (one pod IP per host part).
    #[arg(long)]
    pub pod_cidr: String,
    #[arg(long)]
    pub state_dir: PathBuf,
    #[arg(long)]
    pub images_dir: PathBuf,
    #[arg(long)]
    pub images_file: PathBuf,
    #[arg(long)]
    pub serving_cert: PathBuf,
    #[arg(long)]
    pub serving_key: PathBuf,
    /// CA whose client certificates may use the kubelet API (the API server's).
    #[arg(long)]
    pub client_ca: PathBuf,
    #[arg(long)]
    pub dns_ip: Ipv4Addr,
    #[arg(long, default_value = "cluster.local")]
    pub cluster_domain: String,
    #[arg(long, default_value_t = 10250)]
    pub port: u16,
}
