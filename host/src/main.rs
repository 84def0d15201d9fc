//! `strata`: the server and its command-line tools.

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::sync::Arc;

use strata::build::Builder;
use strata::config::{self, Config};

#[derive(Parser)]
#[command(name = "strata", version, about = "A container registry that builds images from Nix packages on demand")]
struct Cli {
    /// Configuration file (TOML). Nixery's environment variables apply on top.
    #[arg(long, short, global = true, env = "STRATA_CONFIG")]
    config: Option<PathBuf>,
    /// Log as JSON lines instead of human-readable text.
    #[arg(long, global = true)]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the registry API: `docker pull HOST/shell/git` builds and serves
    /// an image with bash, coreutils and git.
    Serve,
    /// Work with plugins.
    Plugin {
        #[command(subcommand)]
        command: PluginCommand,
    },
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Load a plugin, check its ABI version and exports, and run each hook it
    /// exports on a sample input.
    Check {
        /// The plugin's `.wasm` file.
        file: PathBuf,
    },
}

fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if json {
        fmt.json().init();
    } else {
        fmt.init();
    }
}

fn main() {
    let cli = Cli::parse();
    init_logging(cli.log_json);
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    if let Err(e) = runtime.block_on(run(cli)) {
        eprintln!("strata: {e:#}");
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let cfg = Config::load(cli.config.as_deref(), &config::process_env())?;
    match cli.command {
        Command::Serve => serve(cfg).await,
        Command::Plugin { command: PluginCommand::Check { file } } => {
            let plugin = strata::plugins::load_file(&file, serde_json::Value::Null, &cfg.plugins)?;
            let report = strata::plugins::check_sample(&plugin)?;
            println!("{report}");
            Ok(())
        }
    }
}

async fn serve(cfg: Config) -> anyhow::Result<()> {
    let listen = cfg.listen;
    let builder = Builder::new(Arc::new(cfg)).await?;
    let app = strata::registry::router(builder.clone()).merge(strata::web::router(builder.clone()));
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("listen on {listen}"))?;
    tracing::info!(
        address = %listener.local_addr()?,
        storage = builder.storage.description(),
        "strata serving"
    );
    axum::serve(listener, app).with_graceful_shutdown(shutdown_signal()).await?;
    Ok(())
}

/// SIGTERM or Ctrl-C: stop accepting, finish the responses under way.
async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("shutting down");
}
