//! `medembed train`: the original project's `contrastive_trainer.py --train --val --output`, without
//! a queue or a store. Pairs come from files (the pair-builder's Parquet or the seed's CSV
//! `text1,text2,label`); val and test retrieval sets are made from their labelled pairs; the model
//! folder is written to `--out`, the same folder the train stage publishes. Checkpoints go to
//! `{out}/.checkpoints/`, so running the same command again after an interruption resumes; they
//! are removed once the model is written.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use medembed_model::SentenceEncoder;
use medembed_model::hub::Hub;
use medembed_pipeline::config::{StoreSettings, TrainSettings};
use medembed_pipeline::store::LocalStore;
use tokio_util::sync::CancellationToken;

use crate::artifacts::{DataSummary, METRICS_FILE, ModelMetrics, write_model_folder};
use crate::checkpoint::StoreCheckpoints;
use crate::data::{RetrievalSet, read_pairs};
use crate::eval::EvalReport;
use crate::stage::{device, resolve_base_model};
use crate::train::{LogRow, Observer, Progress, Run, TrainInputs};

/// What `medembed train` was asked to do.
#[derive(Debug, Clone)]
pub struct StandaloneJob {
    pub train: PathBuf,
    pub val: PathBuf,
    pub test: Option<PathBuf>,
    pub out: PathBuf,
    pub settings: TrainSettings,
}

/// Reads the files into training inputs; errors name the file and row.
pub fn read_inputs(job: &StandaloneJob) -> anyhow::Result<TrainInputs> {
    let train = read_pairs(&job.train)?;
    let val = read_pairs(&job.val)?;
    let test = job
        .test
        .as_deref()
        .map(read_pairs)
        .transpose()?
        .unwrap_or_default();
    if train.is_empty() {
        bail!("{}: no pairs", job.train.display());
    }
    Ok(TrainInputs {
        val_set: RetrievalSet::from_pairs(&val),
        test_set: RetrievalSet::from_pairs(&test),
        train,
        val,
        test,
    })
}

/// Progress lines on stderr: each phase, each evaluation, and a step line every few seconds.
#[derive(Debug)]
pub struct ProgressLines {
    last: Instant,
    every: Duration,
}

impl Default for ProgressLines {
    fn default() -> Self {
        Self {
            last: Instant::now(),
            every: Duration::from_secs(5),
        }
    }
}

impl Observer for ProgressLines {
    fn step(&mut self, progress: &Progress, row: &LogRow) {
        if self.last.elapsed() < self.every && progress.step < progress.total_steps {
            return;
        }
        self.last = Instant::now();
        let per_step = progress.train_seconds / progress.step.max(1) as f64;
        let eta = progress.total_steps.saturating_sub(progress.step) as f64 * per_step;
        eprintln!(
            "train: step {}/{} (epoch {})  loss {:.4}  lr {:.2e}  grad norm {:.3}  {:.1} pairs/s  ETA {}s",
            progress.step,
            progress.total_steps,
            row.epoch + 1,
            row.loss,
            row.lr,
            row.grad_norm,
            row.pairs_per_second,
            eta.round()
        );
    }

    fn evaluated(&mut self, split: &str, label: &str, r: &EvalReport) {
        eprintln!(
            "train: {split} ({label}): nDCG@10 {:.4}  MRR@10 {:.4}  Recall@10 {:.4}  Spearman {:.4}  ROC-AUC {:.4}  [{} queries, {} documents, {} pairs]",
            r.ndcg_at_10,
            r.mrr_at_10,
            r.recall_at_10,
            r.spearman,
            r.roc_auc,
            r.queries,
            r.corpus,
            r.labelled_pairs
        );
    }

    fn phase(&mut self, what: &str) {
        eprintln!("train: {what}");
    }
}

/// Trains and writes the model folder to `job.out`. `stop` interrupts at the next step with a
/// checkpoint (the command can then be run again to resume).
pub async fn run(
    job: StandaloneJob,
    hub: &Hub,
    store_settings: &StoreSettings,
    stop: CancellationToken,
    mut observer: impl Observer + Send + 'static,
) -> anyhow::Result<ModelMetrics> {
    job.settings.validate()?;
    if job.out.join(METRICS_FILE).exists() {
        bail!(
            "{} already holds a trained model ({METRICS_FILE}); choose another --out or delete it",
            job.out.display()
        );
    }
    refuse_foreign_folder(&job.out)?;
    let inputs = read_inputs(&job)?;
    observer.phase(&format!(
        "{} train pairs, {} val pairs, {} test pairs",
        inputs.train.len(),
        inputs.val.len(),
        inputs.test.len()
    ));
    let base_dir = resolve_base_model(&job.settings.base_model, hub, store_settings)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let device = device(job.settings.device).map_err(anyhow::Error::msg)?;
    std::fs::create_dir_all(&job.out).with_context(|| format!("creating {}", job.out.display()))?;
    let checkpoints = StoreCheckpoints {
        store: Arc::new(LocalStore::new(&job.out)?),
        prefix: ".checkpoints".into(),
        handle: tokio::runtime::Handle::current(),
    };
    tokio::task::spawn_blocking(move || -> anyhow::Result<ModelMetrics> {
        let encoder = SentenceEncoder::load(&base_dir, device)
            .with_context(|| format!("loading the base model {}", base_dir.display()))?;
        let run = Run {
            settings: &job.settings,
            base_model: &job.settings.base_model,
            inputs: &inputs,
            checkpoints: &checkpoints,
            stop,
        };
        let outcome = run.train(encoder, &mut observer)?;
        let data = DataSummary::of(&inputs, outcome.examples);
        let metrics = write_model_folder(
            &job.out,
            &outcome,
            &job.settings,
            &job.settings.base_model,
            data,
        )?;
        remove_checkpoints(&job.out);
        Ok(metrics)
    })
    .await?
}

/// `out` must be missing, empty, or one of this command's interrupted runs (it holds
/// `.checkpoints/`): the model folder is written over whatever else is there, so a folder of other
/// files is refused, naming one of them, rather than mixed with or overwritten by the model.
fn refuse_foreign_folder(out: &Path) -> anyhow::Result<()> {
    let entries = match std::fs::read_dir(out) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => {
            bail!("--out {}: a file, not a folder", out.display())
        }
        Err(e) => return Err(e).with_context(|| format!("--out {}", out.display())),
    };
    if out.join(".checkpoints").is_dir() {
        return Ok(());
    }
    if let Some(entry) = entries.flatten().next() {
        bail!(
            "--out {} is not empty (it holds {}, and no interrupted run of medembed train): \
             choose a new or empty folder",
            out.display(),
            entry.file_name().to_string_lossy()
        );
    }
    Ok(())
}

fn remove_checkpoints(out: &Path) {
    let _ = std::fs::remove_dir_all(out.join(".checkpoints"));
}
