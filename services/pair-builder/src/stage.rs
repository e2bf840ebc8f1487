//! The pairs stage: a barrier over the whole job. A [`PairsCheck`] does nothing until the fetch
//! is complete (`raw/_manifest.json`) and every part it lists has its clean part; then it loads
//! the corpus, builds the pairs and writes `pairs/{train,val,test}.parquet`,
//! `pairs/eval_{val,test}.parquet`, `pairs/eval_{val,test}_corpus.parquet` (and CSVs if asked),
//! then `pairs/stats.json` last, and publishes the train task.
//!
//! Checks are many (one per clean part, one from the fetcher) and any of them may be duplicated;
//! all are harmless. `stats.json` marks the pairs finished: a later check does nothing. A check
//! the broker *re*delivers and that finds the pairs finished publishes the train task again,
//! since its first run may have died between writing and publishing (the trainer ignores a train
//! task for a job whose model exists).

use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use medembed_corpus::clean::CleanPartStats;
use medembed_corpus::pairs::{
    EvalDocument, EvalQuery, Split, eval_document_schema, eval_query_schema, pair_schema,
};
use medembed_corpus::raw::RawManifest;
use medembed_corpus::rows::rows_to_batch;
use medembed_pipeline::config::{PairSettings, Settings};
use medembed_pipeline::messages::{JobId, PairsCheck, TrainTask};
use medembed_pipeline::runner::{Outgoing, Stage, StageError, TaskContext};
use medembed_pipeline::status::StageStatus;
use medembed_pipeline::store::ObjectStore;
use medembed_pipeline::{keys, table};
use prometheus::{Histogram, HistogramOpts, IntCounterVec, Opts, Registry};

use crate::build::{PairOutputs, Phases, build_pairs};
use crate::corpus::{Corpus, CorpusBuilder, pairing_schema};
use crate::output::{pair_batches, pairs_csv};

pub const STAGE: &str = "pairs";

/// `medembed_pairs_*` metrics.
#[derive(Debug, Clone)]
pub struct PairMetrics {
    pub pairs: IntCounterVec,
    pub build_seconds: Histogram,
}

impl PairMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let pairs = IntCounterVec::new(
            Opts::new(
                "medembed_pairs_written_total",
                "Pairs written, by split (train, val, test) and source (citation, mesh, keyword, random, hard).",
            ),
            &["split", "source"],
        )?;
        let build_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "medembed_pairs_build_duration_seconds",
                "Time to load a job's corpus, build its pairs and write them.",
            )
            .buckets(vec![1.0, 5.0, 15.0, 60.0, 180.0, 600.0, 1800.0]),
        )?;
        registry.register(Box::new(pairs.clone()))?;
        registry.register(Box::new(build_seconds.clone()))?;
        Ok(Self {
            pairs,
            build_seconds,
        })
    }
}

#[derive(Debug)]
pub struct PairStage {
    settings: PairSettings,
    metrics: PairMetrics,
}

impl PairStage {
    /// The stage, its metrics registered in `registry`.
    pub fn new(settings: &Settings, registry: &Registry) -> prometheus::Result<Self> {
        Ok(Self {
            settings: settings.pairs.clone(),
            metrics: PairMetrics::register(registry)?,
        })
    }
}

/// The parts of `manifest` that have no clean part yet.
async fn parts_not_cleaned(
    store: &dyn ObjectStore,
    job: JobId,
    manifest: &RawManifest,
) -> Result<Vec<u32>, StageError> {
    let cleaned: std::collections::HashSet<String> = store
        .list(&keys::clean_prefix(job))
        .await?
        .into_iter()
        .map(|o| o.key)
        .collect();
    Ok(manifest
        .parts
        .iter()
        .map(|p| p.part)
        .filter(|&part| !cleaned.contains(&keys::clean_part(job, part)))
        .collect())
}

/// Reads every clean part, in part order, into a [`Corpus`]; sums the cleaner's drop counts.
pub async fn load_corpus(
    store: &dyn ObjectStore,
    job: JobId,
    manifest: &RawManifest,
    settings: &PairSettings,
) -> Result<(Corpus, CleanPartStats), StageError> {
    let mut builder = CorpusBuilder::new(settings);
    let mut totals = CleanPartStats::default();
    for info in &manifest.parts {
        if let Some(stats) = CleanPartStats::load(store, job, info.part).await? {
            totals.input += stats.input;
            totals.kept += stats.kept;
            totals.abbreviations += stats.abbreviations;
            totals.text_bytes += stats.text_bytes;
            for (reason, n) in stats.dropped {
                *totals.dropped.entry(reason).or_default() += n;
            }
        }
        let key = keys::clean_part(job, info.part);
        let data = store.get(&key).await?;
        // Decoding is CPU work: off the async threads.
        builder = tokio::task::spawn_blocking(move || -> Result<CorpusBuilder, StageError> {
            for batch in table::decode(&key, data, &pairing_schema())? {
                builder.add_batch(&batch);
            }
            Ok(builder)
        })
        .await
        .map_err(|e| StageError::permanent(format!("job {job}: loading clean parts: {e}")))??;
    }
    Ok((builder.finish(), totals))
}

/// Writes every output, `stats.json` last.
async fn write_outputs(
    store: &dyn ObjectStore,
    job: JobId,
    corpus: std::sync::Arc<Corpus>,
    outputs: std::sync::Arc<PairOutputs>,
    settings: &PairSettings,
    (mut clock, started): (Phases, Instant),
) -> Result<(), StageError> {
    for split in Split::ALL {
        let key = keys::pairs_file(job, &format!("{split}.parquet"));
        let (c, o, k) = (corpus.clone(), outputs.clone(), key.clone());
        let data = tokio::task::spawn_blocking(move || -> Result<Bytes, StageError> {
            let mut encoder = table::Encoder::new_plain(&k, &pair_schema())?;
            for batch in pair_batches(&c, &o.pairs[&split]) {
                encoder.write(&batch)?;
            }
            Ok(encoder.finish()?)
        })
        .await
        .map_err(|e| StageError::permanent(format!("job {job}: {key}: {e}")))??;
        store.put(&key, data).await?;
        if settings.write_csv {
            let csv = pairs_csv(&corpus, &outputs.pairs[&split]);
            store
                .put(
                    &keys::pairs_file(job, &format!("{split}.csv")),
                    Bytes::from(csv),
                )
                .await?;
        }
    }
    for split in [Split::Val, Split::Test] {
        let key = keys::pairs_file(job, &format!("eval_{split}.parquet"));
        let queries: &[EvalQuery] = &outputs.eval_queries[&split];
        let batch =
            rows_to_batch(&key, &eval_query_schema(), queries).map_err(StageError::permanent)?;
        table::write(store, &key, &eval_query_schema(), &[batch]).await?;
        let key = keys::pairs_file(job, &format!("eval_{split}_corpus.parquet"));
        let documents: &[EvalDocument] = &outputs.eval_documents[&split];
        let batch = rows_to_batch(&key, &eval_document_schema(), documents)
            .map_err(StageError::permanent)?;
        table::write(store, &key, &eval_document_schema(), &[batch]).await?;
    }
    clock.lap("write");
    let mut stats = outputs.stats.clone();
    stats.phase_seconds.extend(clock.seconds);
    stats.build_seconds = started.elapsed().as_secs_f64();
    let stats = serde_json::to_vec_pretty(&stats).expect("stats are plain data");
    store
        .put(&keys::pairs_file(job, "stats.json"), Bytes::from(stats))
        .await?;
    Ok(())
}

/// Marks the `clean` stage done with the summed per-part counts (the cleaners each know only
/// their own part).
async fn finish_clean_status(
    store: &dyn ObjectStore,
    job: JobId,
    parts: u64,
    totals: &CleanPartStats,
) -> Result<(), StageError> {
    let mut status = StageStatus::load(store, job, "clean").await?;
    status.start();
    status.unit = "parts".into();
    status.done = parts;
    status.total = parts;
    status.counts.insert("articles_in".into(), totals.input);
    status.counts.insert("articles_kept".into(), totals.kept);
    status
        .counts
        .insert("abbreviations".into(), totals.abbreviations);
    status.counts.insert("text_bytes".into(), totals.text_bytes);
    for (reason, n) in &totals.dropped {
        status.counts.insert(format!("dropped_{reason}"), *n);
    }
    status.finish();
    status.save(store, job).await?;
    Ok(())
}

#[async_trait]
impl Stage for PairStage {
    type Task = PairsCheck;

    async fn process(
        &self,
        task: PairsCheck,
        ctx: &TaskContext,
    ) -> Result<Vec<Outgoing>, StageError> {
        let job = task.job_id;
        let store = ctx.store.as_ref();
        let train = vec![Outgoing::task(&TrainTask { job_id: job })];
        if store.exists(&keys::pairs_file(job, "stats.json")).await? {
            return Ok(if ctx.redelivered { train } else { Vec::new() });
        }
        let Some(manifest) = RawManifest::load(store, job).await? else {
            tracing::debug!("fetch not complete yet");
            return Ok(Vec::new());
        };
        let missing = parts_not_cleaned(store, job, &manifest).await?;
        if !missing.is_empty() {
            tracing::debug!(missing = missing.len(), "waiting for clean parts");
            return Ok(Vec::new());
        }

        let started = Instant::now();
        let mut status = StageStatus::load(store, job, STAGE).await?;
        status.start();
        status.unit = "documents".into();
        status.save(store, job).await?;

        let mut clock = Phases::default();
        let (corpus, clean_totals) = load_corpus(store, job, &manifest, &self.settings).await?;
        clock.lap("load");
        finish_clean_status(store, job, manifest.parts.len() as u64, &clean_totals).await?;
        tracing::info!(documents = corpus.len(), "corpus loaded; building pairs");
        let corpus = std::sync::Arc::new(corpus);
        let settings = self.settings.clone();
        let c = corpus.clone();
        let mut outputs = tokio::task::spawn_blocking(move || build_pairs(&c, &settings))
            .await
            .map_err(|e| StageError::permanent(format!("job {job}: building pairs: {e}")))?;
        outputs.stats.cleaner_dropped = clean_totals.dropped.clone();
        // build_pairs timed its own phases; the clock goes on from here with the writing.
        clock.restart();
        let outputs = std::sync::Arc::new(outputs);
        write_outputs(
            store,
            job,
            corpus.clone(),
            outputs.clone(),
            &self.settings,
            (clock, started),
        )
        .await?;

        for (split, by_source) in &outputs.stats.pairs {
            for (source, by_label) in by_source {
                self.metrics
                    .pairs
                    .with_label_values(&[split.as_str(), source.as_str()])
                    .inc_by(by_label.values().sum());
            }
        }
        self.metrics
            .build_seconds
            .observe(started.elapsed().as_secs_f64());
        status.done = corpus.len() as u64;
        status.total = corpus.len() as u64;
        status
            .counts
            .insert("documents".into(), corpus.len() as u64);
        for (split, by_source) in &outputs.stats.pairs {
            let n: u64 = by_source.values().flat_map(|l| l.values()).sum();
            status.counts.insert(format!("pairs_{split}"), n);
        }
        let train_positives: u64 = outputs
            .stats
            .pairs
            .get("train")
            .map(|by_source| by_source.values().filter_map(|l| l.get("1")).sum())
            .unwrap_or(0);
        if train_positives == 0 {
            // Nothing to train on. The job goes on: the trainer publishes the base model
            // unchanged and the corpus is indexed with it (dense and BM25), so the user still
            // gets search; the warning says why and what would help.
            let warning = format!(
                "no positive training pairs from {} documents (see pairs/stats.json): the job is \
                 indexed with the base model, not fine-tuned. {}",
                corpus.len(),
                medembed_corpus::pairs::HOW_TO_GET_PAIRS
            );
            tracing::warn!(job_id = %job, "{warning}");
            status.warnings.push(warning);
        }
        status.finish();
        status.save(store, job).await?;
        tracing::info!(
            documents = corpus.len(),
            seconds = started.elapsed().as_secs_f64(),
            "pairs written"
        );
        Ok(train)
    }
}
