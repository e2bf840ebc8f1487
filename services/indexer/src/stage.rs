//! The three index stages and their metrics. One `medembed-indexer` process runs all three.
//!
//! - [`IndexStage`] (`index` queue, from the trainer): checks the model, writes
//!   `index/_plan.json` (the parts to embed: every part of the raw manifest; the dimension) and
//!   publishes one embed task per part.
//! - [`EmbedStage`] (`embed`): embeds one clean part's `text` with the job's model
//!   (length-sorted, token-budget batches) into `index/embeddings/part-NNNNN.parquet`, then
//!   publishes a build check. A part already embedded is not embedded again.
//! - [`BuildStage`] (`build`): a barrier like the pair-builder's. A check does nothing until every
//!   planned part is embedded; then it builds the index and writes `vectors.f32`,
//!   `hnsw.usearch` (HNSW only), `documents.parquet`, `map.parquet`, `clusters.parquet`, the
//!   BM25 index's files under `lexical/`, and `_manifest.json` last, and marks the `index` status (the job) done. A check that finds the
//!   manifest does nothing. Checks may be duplicated or race; the build is deterministic, so two
//!   racing builds write the same objects.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use medembed_corpus::raw::RawManifest;
use medembed_model::SentenceEncoder;
use medembed_pipeline::config::{IndexSettings, Settings};
use medembed_pipeline::messages::{BuildIndexCheck, EmbedTask, IndexTask, JobId};
use medembed_pipeline::runner::{Outgoing, Stage, StageError, TaskContext};
use medembed_pipeline::status::StageStatus;
use medembed_pipeline::store::{ObjectStore, read_json};
use medembed_pipeline::{keys, table};
use prometheus::{Histogram, HistogramOpts, IntCounter, Registry};

use crate::build::{BuildInput, CheckTags, IndexManifest, IndexPlan, build};
use crate::model::{EncoderOptions, load_job_model};
use crate::tables::{
    ArticleRecord, article_record_schema, cluster_schema, document_schema, embed_input_schema,
    embedding_schema, embeddings_from_batches, embeddings_to_batch, from_batches, map_schema,
    to_batch,
};

pub const STAGE: &str = "index";

pub const PLAN: &str = "_plan.json";
pub const MANIFEST: &str = "_manifest.json";
pub const VECTORS: &str = "vectors.f32";
pub const HNSW: &str = "hnsw.usearch";
pub const DOCUMENTS: &str = "documents.parquet";
pub const MAP: &str = "map.parquet";
pub const CLUSTERS: &str = "clusters.parquet";
/// The folder of the BM25 index's files (`index/lexical/meta.json`, …).
pub const LEXICAL: &str = "lexical";

/// `medembed_embed*` and `medembed_index_*` metrics.
#[derive(Debug, Clone)]
pub struct IndexMetrics {
    pub embeddings: IntCounter,
    pub embed_batch_seconds: Histogram,
    pub build_seconds: Histogram,
}

impl IndexMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let embeddings = IntCounter::new(
            "medembed_embeddings_total",
            "Texts embedded by the indexer.",
        )?;
        let embed_batch_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "medembed_embed_batch_duration_seconds",
                "Time of one forward pass of the indexer's encoder (one token-budget batch).",
            )
            .buckets(vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
        )?;
        let build_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "medembed_index_build_duration_seconds",
                "Time to build a job's index (vectors, search structure, clusters, map) and write it.",
            )
            .buckets(vec![0.5, 2.0, 10.0, 30.0, 120.0, 600.0, 1800.0, 7200.0]),
        )?;
        registry.register(Box::new(embeddings.clone()))?;
        registry.register(Box::new(embed_batch_seconds.clone()))?;
        registry.register(Box::new(build_seconds.clone()))?;
        Ok(Self {
            embeddings,
            embed_batch_seconds,
            build_seconds,
        })
    }
}

/// The three stages of one indexer process, sharing its metrics and settings.
pub fn stages(
    settings: &Settings,
    registry: &Registry,
) -> prometheus::Result<medembed_pipeline::runner::Stages> {
    let metrics = IndexMetrics::register(registry)?;
    Ok(medembed_pipeline::runner::Stages::new()
        .with(IndexStage)
        .with(EmbedStage::new(&settings.index, metrics.clone()))
        .with(BuildStage::new(settings, metrics)))
}

async fn load_plan(store: &dyn ObjectStore, job: JobId) -> Result<IndexPlan, StageError> {
    read_json(store, &keys::index_file(job, PLAN))
        .await?
        .ok_or_else(|| {
            StageError::permanent(format!(
                "job {job}: no {} (the index task has not run)",
                keys::index_file(job, PLAN)
            ))
        })
}

/// The planned parts that have no embeddings yet.
async fn parts_not_embedded(
    store: &dyn ObjectStore,
    job: JobId,
    plan: &IndexPlan,
) -> Result<Vec<u32>, StageError> {
    let done: std::collections::HashSet<String> = store
        .list(&keys::embeddings_prefix(job))
        .await?
        .into_iter()
        .map(|o| o.key)
        .collect();
    Ok(plan
        .parts
        .iter()
        .copied()
        .filter(|&p| !done.contains(&keys::embedding_part(job, p)))
        .collect())
}

/// Records embedding progress in the `index` status (parts done of planned).
async fn record_progress(
    store: &dyn ObjectStore,
    job: JobId,
    plan: &IndexPlan,
) -> Result<(), StageError> {
    let missing = parts_not_embedded(store, job, plan).await?.len() as u64;
    let mut status = StageStatus::load(store, job, STAGE).await?;
    if status.state == medembed_pipeline::status::StageState::Done {
        return Ok(());
    }
    status.start();
    status.unit = "parts".into();
    status.total = plan.parts.len() as u64;
    status.done = status.done.max(status.total - missing);
    status.save(store, job).await?;
    Ok(())
}

/// The `index` task: plan and fan out.
#[derive(Debug)]
pub struct IndexStage;

#[async_trait]
impl Stage for IndexStage {
    type Task = IndexTask;

    async fn process(
        &self,
        task: IndexTask,
        ctx: &TaskContext,
    ) -> Result<Vec<Outgoing>, StageError> {
        let job = task.job_id;
        let store = ctx.store.as_ref();
        let config_key = format!("{}config.json", keys::model_prefix(job));
        let config: serde_json::Value = read_json(store, &config_key).await?.ok_or_else(|| {
            StageError::permanent(format!(
                "job {job}: no model at {} (its train stage has not finished)",
                keys::model_prefix(job)
            ))
        })?;
        let dim = config["hidden_size"]
            .as_u64()
            .filter(|&d| d > 0)
            .ok_or_else(|| {
                StageError::permanent(format!("{config_key}: no positive hidden_size"))
            })? as usize;
        let manifest = RawManifest::load(store, job).await?.ok_or_else(|| {
            StageError::permanent(format!(
                "job {job}: no {} (the fetch has not finished)",
                keys::raw_manifest(job)
            ))
        })?;
        let plan = IndexPlan {
            parts: manifest.parts.iter().map(|p| p.part).collect(),
            dim,
        };
        let body = serde_json::to_vec_pretty(&plan).expect("plan is plain data");
        store
            .put(&keys::index_file(job, PLAN), Bytes::from(body))
            .await?;
        record_progress(store, job, &plan).await?;
        tracing::info!(parts = plan.parts.len(), dim, "index planned");
        let mut out: Vec<Outgoing> = plan
            .parts
            .iter()
            .map(|&part| Outgoing::task(&EmbedTask { job_id: job, part }))
            .collect();
        // No parts: nothing will send the check, so this task does.
        if out.is_empty() {
            out.push(Outgoing::task(&BuildIndexCheck { job_id: job }));
        }
        Ok(out)
    }
}

/// The `embed` task: one clean part's embeddings.
pub struct EmbedStage {
    options: EncoderOptions,
    metrics: IndexMetrics,
    /// Model folders copied from the store.
    cache: tempfile::TempDir,
    /// The last job's model: consecutive tasks are almost always of one job.
    loaded: tokio::sync::Mutex<Option<(JobId, Arc<Mutex<SentenceEncoder>>)>>,
}

impl std::fmt::Debug for EmbedStage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbedStage")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl EmbedStage {
    pub fn new(settings: &IndexSettings, metrics: IndexMetrics) -> Self {
        Self {
            options: EncoderOptions {
                device: settings.device,
                precision: settings.precision,
                max_seq_length: settings.max_seq_length,
                batch_tokens: settings.batch_tokens,
                device_key: "index.device",
            },
            metrics,
            cache: tempfile::Builder::new()
                .prefix("medembed-indexer-models-")
                .tempdir()
                .expect("a temporary folder for model copies"),
            loaded: tokio::sync::Mutex::new(None),
        }
    }

    async fn encoder(
        &self,
        store: &dyn ObjectStore,
        job: JobId,
    ) -> Result<Arc<Mutex<SentenceEncoder>>, StageError> {
        let mut loaded = self.loaded.lock().await;
        if let Some((loaded_job, encoder)) = loaded.as_ref()
            && *loaded_job == job
        {
            return Ok(encoder.clone());
        }
        *loaded = None;
        let cache: PathBuf = self.cache.path().to_path_buf();
        let encoder = Arc::new(Mutex::new(
            load_job_model(store, job, &cache, self.options).await?,
        ));
        *loaded = Some((job, encoder.clone()));
        Ok(encoder)
    }
}

#[async_trait]
impl Stage for EmbedStage {
    type Task = EmbedTask;

    async fn process(
        &self,
        task: EmbedTask,
        ctx: &TaskContext,
    ) -> Result<Vec<Outgoing>, StageError> {
        let job = task.job_id;
        let store = ctx.store.as_ref();
        let plan = load_plan(store, job).await?;
        let out_key = keys::embedding_part(job, task.part);
        let check = vec![Outgoing::task(&BuildIndexCheck { job_id: job })];
        if store.exists(&out_key).await? {
            tracing::info!(part = task.part, "part already embedded");
            record_progress(store, job, &plan).await?;
            return Ok(check);
        }
        let clean_key = keys::clean_part(job, task.part);
        let batches = table::read(store, &clean_key, &embed_input_schema()).await?;
        let rows: Vec<(String, String)> = batches
            .iter()
            .flat_map(|b| {
                let col = |i: usize| {
                    b.column(i)
                        .as_any()
                        .downcast_ref::<arrow::array::StringArray>()
                        .expect("utf8 column, checked on read")
                        .clone()
                };
                let (ids, texts) = (col(0), col(1));
                (0..b.num_rows())
                    .map(move |r| (ids.value(r).to_string(), texts.value(r).to_string()))
                    .collect::<Vec<_>>()
            })
            .collect();
        let encoder = self.encoder(store, job).await?;
        let histogram = self.metrics.embed_batch_seconds.clone();
        let dim = plan.dim;
        let part = task.part;
        let texts: Vec<String> = rows.iter().map(|(_, t)| t.clone()).collect();
        let vectors = tokio::task::spawn_blocking(move || {
            let encoder = encoder.lock().expect("the encoder lock is never poisoned");
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            encoder.encode_observed(&refs, |_, took| histogram.observe(took.as_secs_f64()))
        })
        .await
        .map_err(|e| {
            StageError::permanent(format!("job {job}: part {part}: encoder panicked: {e}"))
        })?
        .map_err(|e| StageError::permanent(format!("job {job}: part {part}: {e}")))?;
        if vectors.first().is_some_and(|v| v.len() != dim) {
            return Err(StageError::permanent(format!(
                "job {job}: the model gives dimension {}, the plan says {dim}",
                vectors[0].len()
            )));
        }
        let ids: Vec<String> = rows.into_iter().map(|(id, _)| id).collect();
        let batch = embeddings_to_batch(&ids, &vectors, dim)?;
        table::write(store, &out_key, &embedding_schema(dim), &[batch]).await?;
        self.metrics.embeddings.inc_by(ids.len() as u64);
        tracing::info!(part, texts = ids.len(), "part embedded");
        record_progress(store, job, &plan).await?;
        Ok(check)
    }
}

/// The `build` check: the barrier, then the index.
#[derive(Debug)]
pub struct BuildStage {
    settings: IndexSettings,
    check_tags: CheckTags,
    metrics: IndexMetrics,
}

impl BuildStage {
    pub fn new(settings: &Settings, metrics: IndexMetrics) -> Self {
        Self {
            settings: settings.index.clone(),
            check_tags: CheckTags::new(&settings.pairs.check_tags),
            metrics,
        }
    }
}

/// Every planned part's embeddings and articles, in plan order.
async fn load_inputs(
    store: &dyn ObjectStore,
    job: JobId,
    plan: &IndexPlan,
) -> Result<BuildInput, StageError> {
    let mut input = BuildInput {
        dim: plan.dim,
        ..BuildInput::default()
    };
    for &part in &plan.parts {
        let key = keys::embedding_part(job, part);
        let batches = table::read(store, &key, &embedding_schema(plan.dim)).await?;
        let (ids, vectors) = embeddings_from_batches(&batches);
        let clean_key = keys::clean_part(job, part);
        let batches = table::read(store, &clean_key, &article_record_schema()).await?;
        let articles: Vec<ArticleRecord> = from_batches(&clean_key, &batches)?;
        if articles.len() != ids.len() {
            return Err(StageError::permanent(format!(
                "job {job}: {key} has {} rows but {clean_key} has {}",
                ids.len(),
                articles.len()
            )));
        }
        input.ids.extend(ids);
        input.vectors.extend(vectors);
        input.articles.extend(articles);
    }
    Ok(input)
}

#[async_trait]
impl Stage for BuildStage {
    type Task = BuildIndexCheck;

    async fn process(
        &self,
        task: BuildIndexCheck,
        ctx: &TaskContext,
    ) -> Result<Vec<Outgoing>, StageError> {
        let job = task.job_id;
        let store = ctx.store.as_ref();
        if store.exists(&keys::index_file(job, MANIFEST)).await? {
            return Ok(Vec::new());
        }
        let plan = load_plan(store, job).await?;
        let missing = parts_not_embedded(store, job, &plan).await?;
        if !missing.is_empty() {
            tracing::debug!(missing = missing.len(), "parts still to embed");
            return Ok(Vec::new());
        }
        let timer = self.metrics.build_seconds.start_timer();
        let input = load_inputs(store, job, &plan).await?;
        let (settings, check_tags) = (self.settings.clone(), self.check_tags.clone());
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let built =
            tokio::task::spawn_blocking(move || build(job, input, &settings, &check_tags, threads))
                .await
                .map_err(|e| {
                    StageError::permanent(format!("job {job}: index build panicked: {e}"))
                })??;

        store
            .put(
                &keys::index_file(job, VECTORS),
                Bytes::from(built.vectors.to_bytes()),
            )
            .await?;
        if let Some(graph) = built.index.hnsw_bytes()? {
            store
                .put(&keys::index_file(job, HNSW), Bytes::from(graph))
                .await?;
        }
        for (name, schema, batch) in [
            (
                DOCUMENTS,
                document_schema(),
                to_batch(DOCUMENTS, &document_schema(), &built.documents)?,
            ),
            (MAP, map_schema(), to_batch(MAP, &map_schema(), &built.map)?),
            (
                CLUSTERS,
                cluster_schema(),
                to_batch(CLUSTERS, &cluster_schema(), &built.clusters)?,
            ),
        ] {
            table::write(store, &keys::index_file(job, name), &schema, &[batch]).await?;
        }
        let mut manifest: IndexManifest = built.manifest;
        for (name, bytes) in built.lexical.files().map_err(crate::IndexError::from)? {
            store
                .put(
                    &keys::index_file(job, &format!("{LEXICAL}/{name}")),
                    Bytes::from(bytes),
                )
                .await?;
            manifest.lexical_files.push(name);
        }
        manifest.build_seconds = timer.stop_and_record();
        let body = serde_json::to_vec_pretty(&manifest).expect("manifest is plain data");
        store
            .put(&keys::index_file(job, MANIFEST), Bytes::from(body))
            .await?;

        let mut status = StageStatus::load(store, job, STAGE).await?;
        status.start();
        status.unit = "parts".into();
        status.total = plan.parts.len() as u64;
        status.done = status.total;
        status
            .counts
            .insert("documents".into(), manifest.documents as u64);
        status
            .counts
            .insert("duplicates".into(), manifest.duplicates as u64);
        status
            .counts
            .insert("clusters".into(), manifest.clusters as u64);
        status
            .counts
            .insert("dimension".into(), manifest.dim as u64);
        status.finish();
        status.save(store, job).await?;
        tracing::info!(
            documents = manifest.documents,
            kind = ?manifest.kind,
            clusters = manifest.clusters,
            seconds = manifest.build_seconds,
            "index built: job done"
        );
        Ok(Vec::new())
    }
}
