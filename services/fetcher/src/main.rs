//! medembed-fetcher: the fetch worker. Takes fetch tasks, writes raw Parquet parts.

use clap::Parser;
use medembed_pipeline::cli::WorkerArgs;
use medembed_pipeline::{runner, telemetry};

/// Fetch worker of medembed: turns collection jobs into raw Parquet parts (E-utilities or bulk files).
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
struct Args {
    #[command(flatten)]
    worker: WorkerArgs,
}

/// Parsing builds a small tree per article: many short-lived allocations, where mimalloc is
/// measurably faster than the system allocator (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let settings = args.worker.settings()?;
    telemetry::init(&settings.log);
    let registry = prometheus::Registry::new();
    let stage = medembed_fetcher::stage::FetchStage::new(&settings, &registry)?;
    runner::run_worker(&settings, registry, stage).await?;
    Ok(())
}
