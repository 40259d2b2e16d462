//! weft-proxy: the sidecar proxy (`run`) and its init container (`init`). Thin: parse, then
//! hand over to `weft::proxy::cli`.

use clap::Parser;

fn main() -> std::process::ExitCode {
    weft::proxy::cli::main(weft::proxy::cli::Cli::parse())
}
