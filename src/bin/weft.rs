use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = weft::cli::Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,kube=warn".into());
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        weft::cli::LogFormat::Json => logs.json().init(),
        weft::cli::LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
    weft::cli::run(cli).await
}
