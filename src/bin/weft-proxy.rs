use clap::Parser;

/// weft-proxy: weft's sidecar proxy and its init container.
#[derive(Debug, Parser)]
#[command(name = "weft-proxy", version, about)]
struct Args {}

fn main() {
    let _ = Args::parse();
}
