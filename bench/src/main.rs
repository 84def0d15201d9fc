//! `strata-bench`: Strata and its peers side by side, printed as ratios
//! (docs/performance.md, docs/layering.md).

use clap::Parser;

#[derive(Parser)]
#[command(name = "strata-bench", version, about = "Benchmarks: start Strata and its peers side by side and print ratios")]
struct Cli {
    #[command(subcommand)]
    command: strata_bench::BenchCommand,
}

fn main() {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    if let Err(e) = runtime.block_on(strata_bench::run(cli.command)) {
        eprintln!("strata-bench: {e:#}");
        std::process::exit(1);
    }
}
