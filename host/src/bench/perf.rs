//! `strata bench perf` (in progress).

#[derive(clap::Args)]
pub struct Args {}

pub async fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("strata bench perf is not implemented yet")
}
