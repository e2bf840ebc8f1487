//! medembed-pair-builder: the pairs worker. Takes pairs checks; once every raw part of a job is
//! cleaned, builds its training pairs and publishes the train task.

use clap::Parser;
use medembed_pipeline::cli::WorkerArgs;
use medembed_pipeline::{runner, telemetry};

/// Pairs worker of medembed: a barrier over each job's clean parts, then citation, MeSH and
/// keyword pairs with random negatives, split by document into train/val/test. One replica is
/// enough; more are harmless (checks are idempotent).
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
struct Args {
    #[command(flatten)]
    worker: WorkerArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let settings = args.worker.settings()?;
    telemetry::init(&settings.log);
    let registry = prometheus::Registry::new();
    let stage = medembed_pair_builder::stage::PairStage::new(&settings, &registry)?;
    runner::run_worker(&settings, registry, stage).await?;
    Ok(())
}
