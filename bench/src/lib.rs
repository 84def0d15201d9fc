//! `strata-bench …`: benchmarks that start the real programs (Strata, its
//! peers, the clients) side by side and print ratios from one run, so that a
//! number never depends on how busy the machine was on another day.
//!
//! A crate of its own, on top of the `strata` library, so that the product
//! carries no benchmark code (docs/architecture.md).

pub mod layering;
pub mod perf;

#[derive(clap::Subcommand)]
pub enum BenchCommand {
    /// Registry speed against the CNCF registry and `tar | gzip`: warm
    /// manifests, blob throughput, cold packing, peak memory, single-flight.
    Perf(perf::Args),
    /// Bytes a client downloads pulling a series of images, per layering
    /// strategy (single layer, one path per layer, popularity, size).
    Layering(layering::Args),
}

pub async fn run(command: BenchCommand) -> anyhow::Result<()> {
    match command {
        BenchCommand::Perf(args) => perf::run(args).await,
        BenchCommand::Layering(args) => layering::cli(args).await,
    }
}
