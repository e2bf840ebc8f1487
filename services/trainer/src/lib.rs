//! medembed-trainer: the train stage. It fine-tunes a sentence encoder (BERT in tch, from
//! medembed-model) on the pair-builder's pairs and publishes a sentence-transformers model folder.
//!
//! - [`data`]: pairs from Parquet or the seed CSV; retrieval evaluation sets;
//! - [`batches`]: seeded batches without duplicate texts (for in-batch negatives);
//! - [`loss`]: MNRL, cosine MSE, contrastive; [`adamw`]: the optimizer with saveable state;
//!   [`schedule`]: warmup then linear decay;
//! - [`train`]: the loop (gradient accumulation, GradCache, clipping, evaluation, best weights);
//! - [`checkpoint`]: checkpoints in an object store and resume;
//! - [`eval`] and [`metrics`]: retrieval and pair measures;
//! - [`artifacts`] and [`charts`]: the published folder, model card, log and charts;
//! - [`stage`]: the queue stage (lease, consumer-timeout handling, status, metrics);
//! - [`standalone`]: `medembed train --train FILE …` without queue or store.

pub mod adamw;
pub mod artifacts;
pub mod batches;
pub mod charts;
pub mod checkpoint;
pub mod data;
pub mod eval;
pub mod loss;
pub mod metrics;
pub mod mine;
pub mod schedule;
pub mod stage;
pub mod standalone;
pub mod train;
