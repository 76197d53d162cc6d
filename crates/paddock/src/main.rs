//! `paddock`: the one binary. `paddock server` runs the management plane;
//! the other subcommands are the user's verbs against it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "paddock",
    version,
    about = "Self-service Kubernetes clusters on your own racks"
)]
struct Cli {
    #[command(flatten)]
    global: paddock_cli::Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the management plane: API server, store and controllers.
    Server(ServerArgs),
    #[command(flatten)]
    User(paddock_cli::Command),
}

#[derive(clap::Args)]
struct ServerArgs {
    /// Where the store, certificates and admin kubeconfig live.
    #[arg(long, env = "PADDOCK_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Address and port to serve the API on (TLS).
    #[arg(long, default_value = "127.0.0.1:6443")]
    listen: SocketAddr,
    /// Extra DNS names or IP addresses for the serving certificate.
    #[arg(long = "san")]
    sans: Vec<String>,
    /// Seconds between watch bookmarks.
    #[arg(long, default_value_t = 30, hide = true)]
    bookmark_seconds: u64,
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PADDOCK_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

async fn server(args: ServerArgs) -> anyhow::Result<()> {
    init_tracing();
    let data_dir = args.data_dir.unwrap_or_else(paddock_cli::default_data_dir);
    let mut config = paddock_apiserver::ServerConfig::new(data_dir, args.listen);
    config.sans = args.sans;
    config.bookmark_every = Duration::from_secs(args.bookmark_seconds.max(1));
    let running = paddock_apiserver::start(config)
        .await
        .map_err(anyhow::Error::new)
        .context("starting the server")?;
    eprintln!(
        "paddock server listening on {}\nadmin kubeconfig: {}",
        running.data.url,
        running.data.admin_kubeconfig().display()
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
    running.shutdown();
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Server(args) => match server(args).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::User(cmd) => paddock_cli::run(cmd, cli.global).await,
    }
}
