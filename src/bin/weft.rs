use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    weft::cli::run(weft::cli::Cli::parse()).await
}
