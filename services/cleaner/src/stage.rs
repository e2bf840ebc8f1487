//! The clean stage: a [`CleanTask`] reads `raw/part-NNNNN.parquet`, writes
//! `clean/part-NNNNN.stats.json` then `clean/part-NNNNN.parquet`, and publishes a pairs check.
//!
//! Parts are independent, so any number of cleaners run side by side. A redelivered task rewrites
//! the same two objects with the same content. The stage status `clean` counts finished parts
//! against the manifest; several cleaners write it, the latest writer wins, and each writes the
//! count it just listed, so it only ever moves forward.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use medembed_corpus::clean::{self, CleanPartStats, clean_schema};
use medembed_corpus::raw::{self, RawManifest, raw_schema};
use medembed_pipeline::config::Settings;
use medembed_pipeline::messages::{CleanTask, JobId, PairsCheck};
use medembed_pipeline::runner::{Outgoing, Stage, StageError, TaskContext};
use medembed_pipeline::status::StageStatus;
use medembed_pipeline::store::ObjectStore;
use medembed_pipeline::{keys, table};
use prometheus::{IntCounter, IntCounterVec, Opts, Registry};

use crate::article::Cleaner;

pub const STAGE: &str = "clean";

/// `medembed_clean_*` metrics.
#[derive(Debug, Clone)]
pub struct CleanMetrics {
    pub kept: IntCounter,
    pub dropped: IntCounterVec,
    pub text_bytes: IntCounter,
}

impl CleanMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let kept = IntCounter::new(
            "medembed_clean_articles_kept_total",
            "Articles written to clean parts.",
        )?;
        let dropped = IntCounterVec::new(
            Opts::new(
                "medembed_clean_articles_dropped_total",
                "Articles the cleaner dropped, by reason (too_short, not_text, duplicate_id, duplicate_content).",
            ),
            &["reason"],
        )?;
        let text_bytes = IntCounter::new(
            "medembed_clean_text_bytes_total",
            "Bytes of article text (title, abstract, body) cleaned.",
        )?;
        registry.register(Box::new(kept.clone()))?;
        registry.register(Box::new(dropped.clone()))?;
        registry.register(Box::new(text_bytes.clone()))?;
        Ok(Self {
            kept,
            dropped,
            text_bytes,
        })
    }

    fn record(&self, stats: &CleanPartStats) {
        self.kept.inc_by(stats.kept);
        self.text_bytes.inc_by(stats.text_bytes);
        for (reason, n) in &stats.dropped {
            self.dropped.with_label_values(&[reason]).inc_by(*n);
        }
    }
}

#[derive(Debug)]
pub struct CleanStage {
    cleaner: Arc<Cleaner>,
    metrics: CleanMetrics,
}

impl CleanStage {
    /// The stage, its metrics registered in `registry`.
    pub fn new(settings: &Settings, registry: &Registry) -> prometheus::Result<Self> {
        Ok(Self {
            cleaner: Arc::new(Cleaner::new(&settings.clean)),
            metrics: CleanMetrics::register(registry)?,
        })
    }
}

/// Counts the job's clean parts and records the count in the `clean` status.
async fn update_status(store: &dyn ObjectStore, job: JobId) -> Result<(), StageError> {
    let cleaned = store
        .list(&keys::clean_prefix(job))
        .await?
        .iter()
        .filter(|o| o.key.ends_with(".parquet"))
        .count() as u64;
    let total = RawManifest::load(store, job)
        .await?
        .map(|m| m.parts.len() as u64);
    let mut status = StageStatus::load(store, job, STAGE).await?;
    status.start();
    status.unit = "parts".into();
    status.done = status.done.max(cleaned);
    if let Some(total) = total {
        status.total = total;
        if status.done >= total {
            status.finish();
        }
    }
    status.save(store, job).await?;
    Ok(())
}

#[async_trait]
impl Stage for CleanStage {
    type Task = CleanTask;

    async fn process(
        &self,
        task: CleanTask,
        ctx: &TaskContext,
    ) -> Result<Vec<Outgoing>, StageError> {
        let job = task.job_id;
        let raw_key = keys::raw_part(job, task.part);
        let batches = table::read(ctx.store.as_ref(), &raw_key, &raw_schema()).await?;
        let articles = raw::from_batches(&raw_key, &batches).map_err(StageError::permanent)?;

        let cleaner = self.cleaner.clone();
        let part = task.part;
        // Cleaning is CPU work: off the async threads, so health checks and acks stay prompt.
        let (kept, stats) =
            tokio::task::spawn_blocking(move || cleaner.clean_part(part, &articles))
                .await
                .map_err(|e| {
                    StageError::permanent(format!("job {job}: part {part}: cleaner panicked: {e}"))
                })?;

        let clean_key = keys::clean_part(job, task.part);
        let batch = clean::to_batch(&clean_key, &kept).map_err(StageError::permanent)?;
        // Stats first: a clean part that exists always has its stats.
        let stats_json = serde_json::to_vec_pretty(&stats).expect("stats are plain data");
        ctx.store
            .put(
                &keys::clean_part_stats(job, task.part),
                Bytes::from(stats_json),
            )
            .await?;
        table::write(ctx.store.as_ref(), &clean_key, &clean_schema(), &[batch]).await?;
        self.metrics.record(&stats);
        tracing::info!(
            part = task.part,
            input = stats.input,
            kept = stats.kept,
            dropped = ?stats.dropped,
            "cleaned part"
        );
        update_status(ctx.store.as_ref(), job).await?;
        Ok(vec![Outgoing::task(&PairsCheck { job_id: job })])
    }
}
