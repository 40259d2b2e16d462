//! weft-node-agent: the kubelet of weft's local test cluster. It registers a Node, keeps its
//! Lease, and runs the pods bound to it as processes in their own network and mount namespaces
//! (SPEC §12). `launch` is the internal entry point of each container process; `lb` hands out
//! LoadBalancer addresses.

mod config;
mod images;
mod launch;
mod lb;
mod netns;
mod node;
mod pod;
mod probe;
mod server;
mod spdy;
mod volumes;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "weft-node-agent",
    about = "The node agent of weft's local test cluster"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Register the node and run the pods bound to it.
    Run(Box<config::Config>),
    /// Internal: become a container process (namespaces, mounts, identity) and exec its command.
    /// The launch spec comes as JSON in the environment variable WEFT_LAUNCH_SPEC.
    Launch,
    /// The cluster's LoadBalancer provider: give LoadBalancer Services an address from a pool.
    Lb(lb::LbConfig),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        // Single-threaded on purpose: setns() into a mount namespace needs it.
        Command::Launch => launch::main(),
        Command::Lb(config) => {
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| "info,kube=warn".into()),
                )
                .init();
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(lb::run(config))
        }
        Command::Run(config) => {
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| "info,kube=warn".into()),
                )
                .init();
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(node::run(*config))
        }
    }
}
