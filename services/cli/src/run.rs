//! `medembed run`: the whole pipeline in this process ("embedded" mode).
//!
//! The five workers' stages run side by side over the in-process queue and a local-directory
//! store — the same stage code the distributed workers run, so a job made here is one the
//! api, `medembed search` and `medembed status` read like any other.
//!
//! Resuming: the queue lives in memory, so what survives a stop is the store. Every stage
//! writes its outputs at deterministic keys and skips work already there, and the trainer resumes
//! from its last checkpoint; so a second `run` with the same arguments finds the job (same query,
//! dates, source and limits) and queues the first task whose outputs are missing.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use medembed_pipeline::config::{QueueBackend, Settings, StoreBackend};
use medembed_pipeline::jobs::{self, JobRequest};
use medembed_pipeline::keys;
use medembed_pipeline::messages::{
    self, ArticleSource, Database, FetchTask, IndexTask, JobId, JobSpec, QUEUES, TaskMessage,
    TrainTask,
};
use medembed_pipeline::metrics::RunnerMetrics;
use medembed_pipeline::queue::{MemoryQueue, Queue, RetryPolicy};
use medembed_pipeline::runner::{Stages, WorkerOptions};
use medembed_pipeline::status::{StageState, StageStatus};
use medembed_pipeline::store::{self, ObjectStore};
use medembed_trainer::artifacts::ModelMetrics;
use tokio_util::sync::CancellationToken;

use crate::Db;
use crate::progress::{JobProgress, Snapshot};

/// Arguments of `medembed run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The literature query, in PubMed search syntax (e.g. "cancer immunotherapy"). Needed for
    /// E-utilities; with --source files:… it only names the job.
    #[arg(long, default_value = "")]
    pub query: String,
    /// Database to collect from.
    #[arg(long, value_enum, default_value = "pmc")]
    pub db: Db,
    /// First publication date: YYYY, YYYY/MM or YYYY/MM/DD.
    #[arg(long)]
    pub from: Option<String>,
    /// Last publication date: YYYY, YYYY/MM or YYYY/MM/DD.
    #[arg(long)]
    pub to: Option<String>,
    /// Stop after this many articles [default: 1000 with eutils; every article of a files:
    /// source].
    #[arg(long, value_name = "N")]
    pub max_articles: Option<u64>,
    /// `eutils` (NCBI E-utilities, for --query) or `files:PATH` (a directory, file or
    /// s3://bucket/prefix of PubMed .xml.gz, PMC .nxml/.xml or .tar.gz packages). The samples:
    /// files:samples/alzheimer/corpus (3,690 PubMed records on one topic), files:samples/corpus.
    #[arg(long, default_value = "eutils")]
    pub source: String,
    /// Base model to fine-tune: a Hugging Face hub id, a local model folder or
    /// s3://bucket/prefix. Default: train.base_model (BiomedBERT, from the hub).
    #[arg(long, value_name = "ID|PATH")]
    pub base_model: Option<String>,
    /// The local store: jobs, models and indexes are written under DIR/jobs/.
    #[arg(long, value_name = "DIR", default_value = "./medembed-data")]
    pub data: PathBuf,
    /// Start a new job even if DIR holds one with the same arguments (default: resume it).
    #[arg(long)]
    pub new: bool,
}

/// How a run ended.
enum Outcome {
    Done,
    Interrupted,
    Failed(String),
}

pub async fn run(settings: Settings, args: RunArgs) -> anyhow::Result<()> {
    let settings = embedded_settings(settings, &args);
    std::fs::create_dir_all(&args.data)
        .with_context(|| format!("creating the data folder {}", args.data.display()))?;
    let _lock = lock_data_dir(&args.data)?;
    let store = store::open(&settings.store).await?;

    let request = JobRequest {
        query: args.query.clone(),
        db: match args.db {
            Db::Pmc => Database::Pmc,
            Db::Pubmed => Database::Pubmed,
        },
        from: args.from.clone(),
        to: args.to.clone(),
        max_articles: args.max_articles,
        source: args.source.clone(),
        open_access_only: true,
        cited_by: false,
    };
    let fresh = request
        .into_spec()
        .map_err(|e| anyhow::anyhow!("--{}: {}", e.field.replace('_', "-"), e.reason))?;
    let earlier = if args.new {
        None
    } else {
        same_job(store.as_ref(), &fresh).await?
    };
    let spec = match earlier {
        Some(spec) => {
            eprintln!(
                "resuming job {} (created {}) in {}; --new starts another",
                spec.job_id,
                spec.created_at,
                args.data.display()
            );
            spec
        }
        None => {
            let body = serde_json::to_vec_pretty(&fresh).expect("a job spec is plain data");
            store
                .put(&keys::job_spec(fresh.job_id), body.into())
                .await?;
            eprintln!("job {} in {}", fresh.job_id, args.data.display());
            fresh
        }
    };
    let job = spec.job_id;
    let started = Instant::now();

    forget_failures(store.as_ref(), job).await?;
    let Some(first) = next_task(store.as_ref(), job).await? else {
        eprintln!("job {job} is done already");
        print!(
            "{}",
            summary(store.as_ref(), &spec, &args.data, None).await?
        );
        return Ok(());
    };
    // Only this process uses the folder (the lock says so): a training lease left by a stopped
    // run belongs to nobody.
    let _ = store.delete(&keys::train_file(job, "lease.json")).await;

    let queue = Arc::new(MemoryQueue::new(RetryPolicy::from_settings(
        &settings.queue,
    )));
    for name in QUEUES {
        queue.declare(name).await?;
    }
    queue.publish(first.0, &first.1).await?;

    let registry = prometheus::Registry::new();
    let stages = Stages::new()
        .with(medembed_fetcher::stage::FetchStage::new(
            &settings, &registry,
        )?)
        .with(medembed_cleaner::stage::CleanStage::new(
            &settings, &registry,
        )?)
        .with(medembed_pair_builder::stage::PairStage::new(
            &settings, &registry,
        )?)
        .with(medembed_trainer::stage::TrainStage::new(
            &settings, &registry,
        )?)
        .and(medembed_indexer::stage::stages(&settings, &registry)?);
    let shutdown = CancellationToken::new();
    let workers = tokio::spawn(stages.run(
        queue.clone(),
        store.clone(),
        RunnerMetrics::register(&registry)?,
        WorkerOptions::from_settings(&settings),
        shutdown.clone(),
    ));

    let mut progress = JobProgress::new();
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let outcome = loop {
        tokio::select! {
            _ = &mut ctrl_c => break Outcome::Interrupted,
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
        let snapshot = Snapshot::load(store.as_ref(), job).await?;
        progress.update(&snapshot, gauge(&registry, "medembed_train_loss"));
        if snapshot.done() {
            break Outcome::Done;
        }
        if let Some(reason) = snapshot.failed {
            break Outcome::Failed(reason);
        }
        // In this process a failed task ends up in a dead-letter queue; nothing else will take
        // it, so the run stops with its reason.
        if let Some(reason) = dead_letter(queue.as_ref()).await? {
            break Outcome::Failed(reason);
        }
    };
    progress.finish();
    if matches!(outcome, Outcome::Interrupted) {
        eprintln!("stopping: finishing or checkpointing the tasks in flight…");
    }
    shutdown.cancel();
    workers.await.context("the stages panicked")??;
    match outcome {
        Outcome::Done => {
            print!(
                "{}",
                summary(store.as_ref(), &spec, &args.data, Some(started.elapsed())).await?
            );
            Ok(())
        }
        Outcome::Interrupted => {
            eprintln!("stopped; run the same command again to resume job {job} where it left off");
            std::process::exit(130);
        }
        Outcome::Failed(reason) => bail!(
            "job {job} failed: {reason}\n(fix the cause, e.g. a setting in --config, and run the same command again: finished work is kept)"
        ),
    }
}

/// The user's settings with the embedded queue and store in `args.data`, and `--base-model`.
fn embedded_settings(mut settings: Settings, args: &RunArgs) -> Settings {
    settings.queue.backend = QueueBackend::Memory;
    settings.store.backend = StoreBackend::Local;
    settings.store.local_root = args.data.clone();
    if let Some(model) = &args.base_model {
        settings.train.base_model = model.clone();
    }
    settings
}

/// An exclusive lock on `DIR/.medembed-run.lock`, held while the run lasts (released by the OS
/// when the process ends, however it ends).
fn lock_data_dir(dir: &Path) -> anyhow::Result<File> {
    let path = dir.join(".medembed-run.lock");
    let file = File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => bail!(
            "another `medembed run` is using {} (it holds {}); wait for it or use another --data",
            dir.display(),
            path.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("locking {}", path.display()))
        }
    }
}

/// The newest job in the store asking for exactly what `wanted` asks for.
async fn same_job(store: &dyn ObjectStore, wanted: &JobSpec) -> anyhow::Result<Option<JobSpec>> {
    let same = |s: &JobSpec| {
        s.query == wanted.query
            && s.db == wanted.db
            && s.from == wanted.from
            && s.to == wanted.to
            && s.max_articles == wanted.max_articles
            && s.source == wanted.source
            && s.open_access_only == wanted.open_access_only
            && s.cited_by == wanted.cited_by
    };
    Ok(jobs::list(store)
        .await?
        .into_iter()
        .filter_map(Result::ok)
        .rfind(same))
}

/// Marks the stages that failed in an earlier run as pending again, so that this run tries them
/// afresh (after the user fixed the cause). A pair set that came out empty is deleted: the
/// pair-builder builds it again, with the settings of this run.
async fn forget_failures(store: &dyn ObjectStore, job: JobId) -> anyhow::Result<()> {
    for stage in QUEUES {
        let mut status = StageStatus::load(store, job, stage).await?;
        if status.state != StageState::Failed {
            continue;
        }
        if stage == "pairs" {
            store.delete(&keys::pairs_file(job, "stats.json")).await?;
        }
        status.state = StageState::Pending;
        status.save(store, job).await?;
    }
    Ok(())
}

/// The task to queue so that `job` carries on from what its outputs show: (queue, body), or
/// None when its index is built.
async fn next_task(
    store: &dyn ObjectStore,
    job: JobId,
) -> anyhow::Result<Option<(&'static str, Vec<u8>)>> {
    fn task<T: TaskMessage>(t: T) -> Option<(&'static str, Vec<u8>)> {
        Some((T::QUEUE, messages::encode(&t)))
    }
    let index = StageStatus::load(store, job, "index").await?;
    if index.state == StageState::Done {
        return Ok(None);
    }
    let model_done = format!("{}metrics.json", keys::model_prefix(job));
    Ok(if store.exists(&model_done).await? {
        task(IndexTask { job_id: job })
    } else if store.exists(&keys::pairs_file(job, "stats.json")).await? {
        task(TrainTask { job_id: job })
    } else {
        task(FetchTask { job_id: job })
    })
}

/// The reason of the first dead-lettered task, if any.
async fn dead_letter(queue: &dyn Queue) -> anyhow::Result<Option<String>> {
    for name in QUEUES {
        if let Some(dead) = queue.take_dead_letters(name, 1).await?.into_iter().next() {
            return Ok(Some(format!(
                "{name} task (attempt {}): {}",
                dead.attempt, dead.reason
            )));
        }
    }
    Ok(None)
}

/// The current value of a gauge in `registry`.
fn gauge(registry: &prometheus::Registry, name: &str) -> Option<f64> {
    registry
        .gather()
        .into_iter()
        .find(|family| family.name() == name)
        .and_then(|family| {
            family
                .get_metric()
                .first()
                .map(|m| m.get_gauge().get_value())
        })
}

/// What the job made, and how to use it.
async fn summary(
    store: &dyn ObjectStore,
    spec: &JobSpec,
    data: &Path,
    took: Option<Duration>,
) -> anyhow::Result<String> {
    use std::fmt::Write;
    let job = spec.job_id;
    let mut out = String::new();
    let took = took
        .map(|d| format!(" in {:.0} s", d.as_secs_f64()))
        .unwrap_or_default();
    let what = match (&spec.source, spec.query.is_empty()) {
        (ArticleSource::Files { path }, true) => format!("files:{path}"),
        _ => format!("{:?}", spec.query),
    };
    writeln!(out, "\njob {job} done{took}  ({what})")?;

    let fetch = StageStatus::load(store, job, "fetch").await?;
    let articles = fetch.counts.get("articles").copied().unwrap_or(0);
    let pairs: Option<medembed_corpus::pairs::PairStats> =
        store::read_json(store, &keys::pairs_file(job, "stats.json")).await?;
    match &pairs {
        Some(p) => {
            writeln!(
                out,
                "  articles  {articles} fetched, {} documents after cleaning and de-duplication",
                p.documents
            )?;
            for (split, by_source) in &p.pairs {
                let sources: Vec<String> = by_source
                    .iter()
                    .map(|(source, by_label)| {
                        format!("{source} {}", by_label.values().sum::<u64>())
                    })
                    .collect();
                let total: u64 = by_source.values().flat_map(|l| l.values()).sum();
                writeln!(
                    out,
                    "  pairs     {split:<5} {total:>6}  ({})",
                    sources.join(", ")
                )?;
            }
        }
        None => writeln!(out, "  articles  {articles} fetched")?,
    }
    if matches!(spec.source, ArticleSource::Files { .. }) && fetch.done < fetch.total {
        writeln!(
            out,
            "  limit     --max-articles {} reached: {} of {} files not read to the end (leave \
             --max-articles out to read them all)",
            spec.max_articles,
            fetch.total - fetch.done,
            fetch.total
        )?;
    }

    let metrics: Option<ModelMetrics> =
        store::read_json(store, &format!("{}metrics.json", keys::model_prefix(job))).await?;
    if let Some(reason) = metrics.as_ref().and_then(|m| m.not_trained.as_ref()) {
        let base = metrics.as_ref().map_or("", |m| m.base_model.as_str());
        writeln!(out, "  training  none: {reason}")?;
        writeln!(
            out,
            "            The base model ({base}) is published unchanged and the corpus is indexed \
             with it:\n            search works (BM25 + base model), but it is not fine-tuned to \
             this corpus.\n            To train: {}.",
            medembed_corpus::pairs::HOW_TO_GET_PAIRS
        )?;
    } else if let Some(m) = &metrics {
        writeln!(
            out,
            "  training  {} steps in {:.0} s on {} ({}), base {}; published step {}{}",
            m.optimizer_steps,
            m.train_seconds,
            m.device,
            m.precision,
            m.base_model,
            m.best_step,
            if m.best_step == 0 {
                " (= the base model: training did not beat it on val)"
            } else {
                ""
            }
        )?;
        if m.mining.negatives > 0 {
            writeln!(
                out,
                "            {} hard negatives mined with the base model in {:.0} s",
                m.mining.negatives, m.mining.seconds
            )?;
        }
        writeln!(
            out,
            "            held-out titles as queries over held-out articles, hybrid search (dense alone):"
        )?;
        writeln!(
            out,
            "            {:<22} {:>8} {:>8} {:>10} {:>15}",
            "", "nDCG@10", "MRR@10", "Recall@10", "dense nDCG@10"
        )?;
        for (name, base, tuned) in [
            ("val", &m.baseline.val, &m.fine_tuned.val),
            ("test", &m.baseline.test, &m.fine_tuned.test),
        ] {
            if base.queries == 0 {
                writeln!(
                    out,
                    "            {name}: no evaluation queries (no held-out article with a title)"
                )?;
                continue;
            }
            for (model, r) in [("base", base), ("fine-tuned", tuned)] {
                writeln!(
                    out,
                    "            {:<22} {:>8.4} {:>8.4} {:>10.4} {:>15.4}",
                    format!("{name} {model} ({} q)", r.queries),
                    r.ndcg_at_10,
                    r.mrr_at_10,
                    r.recall_at_10,
                    r.dense_ndcg_at_10
                )?;
            }
        }
    }
    let root = data.join("jobs").join(job.to_string());
    writeln!(
        out,
        "  model     {}  (a sentence-transformers folder)",
        root.join("model").display()
    )?;
    if let Some(index) = medembed_indexer::search::read_manifest(store, job).await? {
        writeln!(
            out,
            "  index     {}  ({} documents, {:?} search, {} topic clusters)",
            root.join("index").display(),
            index.documents,
            index.kind,
            index.clusters
        )?;
    }
    let data = data.display();
    writeln!(out, "\nsearch it:")?;
    writeln!(
        out,
        "  {} search --data {data} \"your question in plain words\"",
        command("medembed")
    )?;
    writeln!(
        out,
        "  {} --data {data}      # web UI and HTTP API on http://localhost:8080",
        command("medembed-api")
    )?;
    Ok(out)
}

/// How to start the program `name` from here, as the summary prints it: its bare name when that
/// is what the PATH finds, otherwise the path of the one built beside this binary (e.g.
/// `target/release/medembed-api`), otherwise the cargo command that builds and runs it.
fn command(name: &str) -> String {
    let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.canonicalize().ok())
        .and_then(|exe| exe.parent().map(Path::to_path_buf))
    else {
        return name.to_string();
    };
    let beside = dir.join(name);
    let on_path = std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path)
            .map(|p| p.join(name))
            .find(|p| p.is_file())
            .and_then(|p| p.canonicalize().ok())
            .is_some_and(|p| p == beside)
    });
    if on_path {
        return name.to_string();
    }
    if beside.is_file() {
        let cwd = std::env::current_dir()
            .ok()
            .and_then(|d| d.canonicalize().ok());
        return match cwd.and_then(|cwd| beside.strip_prefix(cwd).ok().map(Path::to_path_buf)) {
            Some(relative) => relative.display().to_string(),
            None => beside.display().to_string(),
        };
    }
    format!("cargo run --release --bin {name} --")
}
