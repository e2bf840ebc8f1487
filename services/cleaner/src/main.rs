//! medembed-cleaner: the clean worker. Takes clean tasks (one per raw part), writes clean parts.

use clap::Parser;
use medembed_pipeline::cli::WorkerArgs;
use medembed_pipeline::{runner, telemetry};

/// Clean worker of medembed: raw Parquet parts into clean text, abbreviations and embedding text.
/// Run as many as there are cores to spare: parts are cleaned independently.
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
    let stage = medembed_cleaner::stage::CleanStage::new(&settings, &registry)?;
    runner::run_worker(&settings, registry, stage).await?;
    Ok(())
}
