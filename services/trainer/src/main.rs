//! medembed-trainer: the train worker. Takes train tasks (one per job), fine-tunes the base model
//! on the job's pairs, publishes `jobs/{job}/model/` and queues the index task. One task at a time
//! (a GPU trains one model); see `stage` for how hours-long tasks live with RabbitMQ's
//! consumer_timeout and with restarts.

use clap::Parser;
use medembed_pipeline::cli::WorkerArgs;
use medembed_pipeline::{runner, telemetry};

/// Train worker of medembed: contrastive fine-tuning of a BERT sentence encoder on a job's pairs
/// (CUDA when present, else CPU), with checkpoints, evaluation and a published model folder.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
struct Args {
    #[command(flatten)]
    worker: WorkerArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut settings = args.worker.settings()?;
    telemetry::init(&settings.log);
    if settings.queue.prefetch != 1 {
        tracing::info!(
            prefetch = settings.queue.prefetch,
            "the trainer takes one task at a time; prefetch set to 1"
        );
        settings.queue.prefetch = 1;
    }
    let device =
        medembed_trainer::stage::device(settings.train.device).map_err(anyhow::Error::msg)?;
    if device.is_cuda() && std::env::var("TORCH_ALLOW_TF32_CUBLAS_OVERRIDE").is_err() {
        tracing::warn!(
            "CUDA without TORCH_ALLOW_TF32_CUBLAS_OVERRIDE=1: fp32 matmuls will not use TF32"
        );
    }
    tracing::info!(device = ?device, base_model = %settings.train.base_model, loss = settings.train.loss.name(), "trainer starting");
    let registry = prometheus::Registry::new();
    let stage = medembed_trainer::stage::TrainStage::new(&settings, &registry)?;
    runner::run_worker(&settings, registry, stage).await?;
    Ok(())
}
