//! `strata bench …`: benchmarks that start the real programs (Strata, its
//! peers, the clients) side by side and print ratios from one run, so that a
//! number never depends on how busy the machine was on another day.

pub mod perf;

#[derive(clap::Subcommand)]
pub enum BenchCommand {
    /// Registry speed against the CNCF registry and `tar | gzip`: warm
    /// manifests, blob throughput, cold packing, peak memory, single-flight.
    Perf(perf::Args),
}

pub async fn run(command: BenchCommand) -> anyhow::Result<()> {
    match command {
        BenchCommand::Perf(args) => perf::run(args).await,
    }
}
