//! The train stage: takes a job's train task, fine-tunes the base model on `pairs/`, publishes
//! `jobs/{job}/model/` and queues the index task.
//!
//! Training runs for hours, longer than RabbitMQ lets a delivery stay unacknowledged
//! (`consumer_timeout`, 30 min by default). When the broker gives up on the delivery it closes the
//! channel and queues the task again; this worker keeps training (its consumer resubscribes when
//! the task is done, and the ack of the lost delivery is refused locally), so the task comes back
//! once more, sees the published model and only re-queues the index task. Meanwhile another
//! trainer replica may receive it: a **lease** (`train/lease.json`, owner and renewal time,
//! renewed every `lease_secs / 4`) tells it the job is in hands, and it defers the task (same
//! attempt, after the longest retry delay) instead of training twice. A trainer that died leaves a
//! lease that stops being renewed: after `lease_secs` the next delivery takes over and resumes
//! from the last checkpoint. (Two replicas that both find no lease in the same instant both train;
//! the store has no compare-and-swap. They write the same keys with the same content.)
//!
//! Shutdown (SIGTERM) checkpoints at the next step and defers the task, so a restarted trainer
//! resumes where this one stopped.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use medembed_model::SentenceEncoder;
use medembed_model::hub::Hub;
use medembed_pipeline::config::{ComputeDevice, Settings, StoreSettings, TrainSettings};
use medembed_pipeline::keys;
use medembed_pipeline::messages::{IndexTask, JobId, TrainTask};
use medembed_pipeline::runner::{Outgoing, Stage, StageError, TaskContext};
use medembed_pipeline::status::StageStatus;
use medembed_pipeline::store::{self, ObjectStore, StoreError};
use prometheus::{Gauge, GaugeVec, Histogram, HistogramOpts, IntCounter, Opts, Registry};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::artifacts::{
    DataSummary, METRICS_FILE, ModelMetrics, write_model_folder, write_untrained_folder,
};
use crate::checkpoint::StoreCheckpoints;
use crate::data::{LabelledPair, RetrievalSet, read_pairs};
use crate::eval::EvalReport;
use crate::train::{LogRow, Observer, Progress, Run, TrainError, TrainInputs};

/// The trainer's own metrics.
#[derive(Debug, Clone)]
pub struct TrainMetrics {
    pub loss: Gauge,
    pub pairs: IntCounter,
    pub step_duration: Histogram,
    pub eval_ndcg: GaugeVec,
}

impl TrainMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let loss = Gauge::new(
            "medembed_train_loss",
            "Training loss of the last optimizer step.",
        )?;
        let pairs = IntCounter::new(
            "medembed_train_pairs_total",
            "Training pairs processed (forward and backward).",
        )?;
        let step_duration = Histogram::with_opts(
            HistogramOpts::new(
                "medembed_train_step_duration_seconds",
                "Seconds per optimizer step.",
            )
            .buckets(vec![
                0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
            ]),
        )?;
        let eval_ndcg = GaugeVec::new(
            Opts::new(
                "medembed_eval_ndcg_at_10",
                "nDCG@10 of the latest evaluation, by split (val, test) and model (base, tuned).",
            ),
            &["split", "model"],
        )?;
        registry.register(Box::new(loss.clone()))?;
        registry.register(Box::new(pairs.clone()))?;
        registry.register(Box::new(step_duration.clone()))?;
        registry.register(Box::new(eval_ndcg.clone()))?;
        // The series exist from the start, as NaN ("not evaluated yet", which dashboards show
        // as no value), so that a dashboard's query never names a metric that is absent.
        for split in ["val", "test"] {
            for model in ["base", "tuned"] {
                eval_ndcg.with_label_values(&[split, model]).set(f64::NAN);
            }
        }
        Ok(Self {
            loss,
            pairs,
            step_duration,
            eval_ndcg,
        })
    }
}

/// `train/lease.json`: who trains the job, and when they last said so.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Lease {
    owner: String,
    renewed_unix: u64,
}

impl Lease {
    async fn write(&self, store: &dyn ObjectStore, key: &str) -> Result<(), StoreError> {
        let body = serde_json::to_vec(self).expect("a lease is plain data");
        store.put(key, Bytes::from(body)).await
    }
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The train stage.
#[derive(Debug)]
pub struct TrainStage {
    settings: TrainSettings,
    store_settings: StoreSettings,
    metrics: TrainMetrics,
    hub: Hub,
    /// This process, in leases.
    owner: String,
}

impl TrainStage {
    pub fn new(settings: &Settings, registry: &Registry) -> prometheus::Result<Self> {
        Ok(Self {
            settings: settings.train.clone(),
            store_settings: settings.store.clone(),
            metrics: TrainMetrics::register(registry)?,
            hub: Hub::from_env(),
            owner: format!(
                "{}-{}-{:08x}",
                std::env::var("HOSTNAME").unwrap_or_else(|_| "trainer".into()),
                std::process::id(),
                rand::random::<u32>()
            ),
        })
    }

    /// With a given hub (tests serve the model over local HTTP).
    pub fn with_hub(mut self, hub: Hub) -> Self {
        self.hub = hub;
        self
    }
}

/// The libtorch device the settings ask for.
pub fn device(setting: ComputeDevice) -> Result<tch::Device, String> {
    medembed_model::device_for(setting, "train.device").map_err(|e| e.to_string())
}

/// A base model's folder on this machine: a local folder as it is, `s3://bucket/prefix`
/// downloaded into `$HF_HOME/medembed/s3/…`, anything else a hub id fetched by `hub`.
pub async fn resolve_base_model(
    spec: &str,
    hub: &Hub,
    store_settings: &StoreSettings,
) -> Result<PathBuf, StageError> {
    if spec.starts_with("s3://") {
        let (source, prefix) = store::open_s3_url(store_settings, spec).await?;
        let dir = hub
            .cache_dir()
            .join("s3")
            .join(spec.trim_start_matches("s3://"));
        let files = store::download_prefix(&source, &prefix, &dir).await?;
        if files == 0 {
            return Err(StageError::permanent(format!(
                "base model {spec}: no objects under that prefix"
            )));
        }
        return Ok(dir);
    }
    hub.resolve(spec).await.map_err(|e| match e {
        // A hub that cannot be reached may be reachable later; a bad id never is.
        medembed_model::ModelError::Hub(m) if m.contains("GET ") && !m.contains("404") => {
            StageError::Retryable(format!("base model {spec}: {m}"))
        }
        e => StageError::permanent(format!("base model {spec}: {e}")),
    })
}

/// Pairs and evaluation sets of a job, read from `pairs/` (downloaded into `dir`).
async fn load_inputs(
    store: &dyn ObjectStore,
    job: JobId,
    dir: &Path,
) -> Result<TrainInputs, StageError> {
    let fetch = async |name: &str| -> Result<Option<PathBuf>, StageError> {
        let key = keys::pairs_file(job, name);
        match store.get(&key).await {
            Ok(data) => {
                let path = dir.join(name);
                std::fs::write(&path, &data)
                    .map_err(|e| StageError::retryable(format!("{}: {e}", path.display())))?;
                Ok(Some(path))
            }
            Err(StoreError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    };
    let pairs = |path: Option<PathBuf>| -> Result<Vec<LabelledPair>, StageError> {
        path.map_or(Ok(Vec::new()), |p| {
            read_pairs(&p).map_err(StageError::permanent)
        })
    };
    let train = fetch("train.parquet").await?.ok_or_else(|| {
        StageError::permanent(format!(
            "{} is missing: the pair-builder has not written this job's pairs",
            keys::pairs_file(job, "train.parquet")
        ))
    })?;
    let mut inputs = TrainInputs {
        train: pairs(Some(train))?,
        val: pairs(fetch("val.parquet").await?)?,
        test: pairs(fetch("test.parquet").await?)?,
        ..TrainInputs::default()
    };
    for split in ["val", "test"] {
        let queries = fetch(&format!("eval_{split}.parquet")).await?;
        let corpus = fetch(&format!("eval_{split}_corpus.parquet")).await?;
        let set = match (queries, corpus) {
            (Some(q), Some(c)) => RetrievalSet::read(&q, &c).map_err(StageError::permanent)?,
            _ => RetrievalSet::from_pairs(if split == "val" {
                &inputs.val
            } else {
                &inputs.test
            }),
        };
        if split == "val" {
            inputs.val_set = set;
        } else {
            inputs.test_set = set;
        }
    }
    Ok(inputs)
}

/// What the stage sees of a run: metrics at once, the job status every few seconds.
struct StageObserver {
    metrics: TrainMetrics,
    store: Arc<dyn ObjectStore>,
    job: JobId,
    handle: tokio::runtime::Handle,
    status: StageStatus,
    last_save: Instant,
}

impl StageObserver {
    fn save_status(&mut self) {
        // Best effort: a status write must not stop training.
        let _ = self
            .handle
            .block_on(self.status.save(self.store.as_ref(), self.job));
        self.last_save = Instant::now();
    }
}

impl Observer for StageObserver {
    fn step(&mut self, progress: &Progress, row: &LogRow) {
        self.metrics.loss.set(row.loss);
        self.metrics.pairs.inc_by(row.pairs);
        self.metrics
            .step_duration
            .observe(row.pairs as f64 / row.pairs_per_second.max(1e-9));
        self.status.done = progress.step as u64;
        self.status.total = progress.total_steps as u64;
        if self.last_save.elapsed() > Duration::from_secs(5) {
            let per_step = progress.train_seconds / progress.step.max(1) as f64;
            let left = progress.total_steps.saturating_sub(progress.step) as f64 * per_step;
            self.status
                .counts
                .insert("eta_seconds".into(), left.round() as u64);
            self.status
                .counts
                .insert("pairs_seen".into(), progress.pairs_seen);
            self.save_status();
        }
    }

    fn evaluated(&mut self, split: &str, label: &str, report: &EvalReport) {
        let model = if label == "base" { "base" } else { "tuned" };
        self.metrics
            .eval_ndcg
            .with_label_values(&[split, model])
            .set(report.ndcg_at_10);
        tracing::info!(
            split,
            model = label,
            ndcg_at_10 = report.ndcg_at_10,
            mrr_at_10 = report.mrr_at_10,
            "evaluated"
        );
    }

    fn phase(&mut self, what: &str) {
        tracing::info!(job_id = %self.job, "{what}");
    }
}

#[async_trait]
impl Stage for TrainStage {
    type Task = TrainTask;

    async fn process(
        &self,
        task: TrainTask,
        ctx: &TaskContext,
    ) -> Result<Vec<Outgoing>, StageError> {
        let job = task.job_id;
        let store = ctx.store.clone();
        let index = vec![Outgoing::task(&IndexTask { job_id: job })];
        let done_key = format!("{}{METRICS_FILE}", keys::model_prefix(job));
        if store.exists(&done_key).await? {
            // Trained already. A redelivery may come from a run whose index task was never
            // queued (the worker died between publishing the model and queueing), so queue it.
            tracing::info!(job_id = %job, "model already published; not training again");
            return Ok(if ctx.redelivered { index } else { Vec::new() });
        }

        let lease_key = keys::train_file(job, "lease.json");
        if let Some(lease) = store::read_json::<Lease>(store.as_ref(), &lease_key).await?
            && lease.owner != self.owner
        {
            let age = now_unix().saturating_sub(lease.renewed_unix);
            if age < self.settings.lease_secs {
                return Err(StageError::Deferred(format!(
                    "job {job} is being trained by {} (lease renewed {age} s ago)",
                    lease.owner
                )));
            }
            tracing::warn!(job_id = %job, owner = %lease.owner, age_s = age, "taking over a stale lease; resuming from the last checkpoint");
        }
        let lease = Lease {
            owner: self.owner.clone(),
            renewed_unix: now_unix(),
        };
        lease.write(store.as_ref(), &lease_key).await?;
        let renewing = CancellationToken::new();
        let renewer = {
            let renewing = renewing.clone();
            let (store, lease_key, lease) = (store.clone(), lease_key.clone(), lease.clone());
            let every = Duration::from_secs((self.settings.lease_secs / 4).max(1));
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = renewing.cancelled() => break,
                        _ = tokio::time::sleep(every) => {
                            let lease = Lease { renewed_unix: now_unix(), ..lease.clone() };
                            if let Err(e) = lease.write(store.as_ref(), &lease_key).await {
                                tracing::warn!(error = %e, "could not renew the training lease");
                            }
                        }
                    }
                }
            })
        };
        let result = self.train(job, ctx).await;
        renewing.cancel();
        let _ = renewer.await;
        if !matches!(result, Err(StageError::Deferred(_))) {
            let _ = store.delete(&lease_key).await;
        }
        result?;
        Ok(index)
    }
}

impl TrainStage {
    async fn train(&self, job: JobId, ctx: &TaskContext) -> Result<(), StageError> {
        let store = ctx.store.clone();
        let mut status = StageStatus::load(store.as_ref(), job, "train").await?;
        status.start();
        status.unit = "steps".into();
        status.save(store.as_ref(), job).await?;

        let base_model = self.settings.base_model.clone();
        let base_dir = resolve_base_model(&base_model, &self.hub, &self.store_settings).await?;
        let work = tempfile::tempdir().map_err(StageError::retryable)?;
        let inputs = load_inputs(store.as_ref(), job, work.path()).await?;
        let device = device(self.settings.device).map_err(StageError::permanent)?;

        let settings = self.settings.clone();
        let checkpoints = StoreCheckpoints {
            store: store.clone(),
            prefix: keys::train_file(job, "checkpoints"),
            handle: tokio::runtime::Handle::current(),
        };
        let mut observer = StageObserver {
            metrics: self.metrics.clone(),
            store: store.clone(),
            job,
            handle: tokio::runtime::Handle::current(),
            status,
            last_save: Instant::now(),
        };
        let stop = ctx.shutdown.clone();
        let out_dir = work.path().join("model");
        let folder = out_dir.clone();
        // Too few pairs to train on: the job still gets a model (the base one, unchanged) and
        // an index, and says why it was not trained.
        let positives = inputs.train.iter().filter(|p| p.label >= 0.5).count();
        let not_trained = (positives == 0).then(|| {
            format!(
                "no positive training pairs ({} pairs in pairs/train; see pairs/stats.json)",
                inputs.train.len()
            )
        });
        let (metrics, mut observer) = tokio::task::spawn_blocking(move || {
            let result = (|| -> Result<ModelMetrics, StageError> {
                let encoder = SentenceEncoder::load(&base_dir, device)
                    .map_err(|e| StageError::permanent(format!("base model {base_model}: {e}")))?;
                if let Some(reason) = &not_trained {
                    let data = DataSummary::of(&inputs, 0);
                    return write_untrained_folder(
                        &folder,
                        &encoder,
                        &settings,
                        &base_model,
                        data,
                        reason,
                    )
                    .map_err(|e| StageError::retryable(format!("writing the model folder: {e}")));
                }
                let run = Run {
                    settings: &settings,
                    base_model: &base_model,
                    inputs: &inputs,
                    checkpoints: &checkpoints,
                    stop,
                };
                let outcome = run.train(encoder, &mut observer).map_err(|e| match e {
                    TrainError::Interrupted { .. } => StageError::Deferred(e.to_string()),
                    TrainError::Checkpoint(_) => StageError::retryable(e),
                    TrainError::Data(_) | TrainError::Model(_) => StageError::permanent(e),
                })?;
                let data = DataSummary::of(&inputs, outcome.examples);
                write_model_folder(&folder, &outcome, &settings, &base_model, data)
                    .map_err(|e| StageError::retryable(format!("writing the model folder: {e}")))
            })();
            result.map(|m| (m, observer))
        })
        .await
        .map_err(|e| StageError::permanent(format!("training crashed: {e}")))??;

        store::upload_dir(
            store.as_ref(),
            &out_dir,
            &keys::model_prefix(job),
            Some(METRICS_FILE),
        )
        .await?;
        let status = &mut observer.status;
        status
            .counts
            .insert("optimizer_steps".into(), metrics.optimizer_steps as u64);
        status
            .counts
            .insert("best_step".into(), metrics.best_step as u64);
        status
            .counts
            .insert("train_pairs".into(), metrics.data.train_pairs as u64);
        status.counts.remove("eta_seconds");
        if let Some(reason) = &metrics.not_trained {
            status.warnings.push(format!(
                "not trained: {reason}; the base model is published unchanged and the job is \
                 indexed with it"
            ));
        }
        status.finish();
        status.save(store.as_ref(), job).await?;
        tracing::info!(
            job_id = %job,
            steps = metrics.optimizer_steps,
            val_ndcg_base = metrics.baseline.val.ndcg_at_10,
            val_ndcg_tuned = metrics.fine_tuned.val.ndcg_at_10,
            "model published"
        );
        Ok(())
    }
}
