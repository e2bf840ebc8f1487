//! medembed-indexer: the index worker. Consumes three queues: `index` (plan a job's index and fan
//! out one embed task per clean part), `embed` (embed one part with the job's model) and `build`
//! (once every part is embedded: vectors, exact or HNSW search, clusters, map; the job is done).
//! Run as many as there are GPUs (or cores) to spare: parts are embedded independently.

use clap::Parser;
use medembed_pipeline::cli::WorkerArgs;
use medembed_pipeline::{runner, telemetry};

/// Index worker of medembed: embeds a job's corpus with its fine-tuned model (CUDA when present,
/// else CPU) and builds the search index, topic clusters and 2-D map the api serves.
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
    let device = medembed_model::device_for(settings.index.device, "index.device")?;
    tracing::info!(device = ?device, "indexer starting");
    let registry = prometheus::Registry::new();
    let stages = medembed_indexer::stage::stages(&settings, &registry)?;
    runner::run_worker(&settings, registry, stages).await?;
    Ok(())
}
