//! medembed-trainer: the train stage. It owns fine-tuning a sentence encoder on the pair-builder's
//! pairs. Built so far: reading pairs from Parquet or the seed CSV ([`data`]), batches without duplicate texts ([`batches`]), the losses ([`loss`]), the evaluation measures ([`metrics`]) and the
//! learning-rate schedule ([`schedule`]). The training loop, evaluation runs, checkpoints,
//! artifacts, the stage and the `medembed train` command come next (issue 5).

pub mod batches;
pub mod data;
pub mod loss;
pub mod metrics;
pub mod schedule;
