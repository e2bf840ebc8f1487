//! `medembed`: run the whole pipeline in one process, or submit collection jobs to the workers
//! and follow them.
//!
//! `run` is embedded mode (see [`run`]); `submit` writes `jobs/{job}/job.json` and queues the
//! job's fetch task; `status` and `watch` read what each stage reports in `jobs/{job}/status/`.
//! All use the same settings as the workers (defaults → `--config FILE` → `MEDEMBED__…`
//! environment), so they reach the same broker and store.

mod devset;
mod eval;
mod progress;
mod run;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};
use medembed_api::metrics::ApiMetrics;
use medembed_api::state::AppState;
use medembed_indexer::model::fetch_job_model;
use medembed_indexer::search::SearchMode;
use medembed_model::SentenceEncoder;
use medembed_model::hub::Hub;
use medembed_pipeline::config::{ComputeDevice, QueueBackend, Settings, StoreBackend};
use medembed_pipeline::jobs::{self, JobRequest};
use medembed_pipeline::messages::{Database, JobId, JobSpec, QUEUES};
use medembed_pipeline::status::StageStatus;
use medembed_pipeline::store::{ObjectStore, StoreError};
use medembed_pipeline::{keys, queue, store};
use medembed_trainer::standalone::{ProgressLines, StandaloneJob};
use tokio_util::sync::CancellationToken;

/// medembed: from a biomedical literature query to a fine-tuned embedding model and a semantic
/// search index. Settings: compiled-in defaults, then --config FILE, then MEDEMBED__SECTION__KEY
/// environment variables (see configs/default.toml).
#[derive(Debug, Parser)]
#[command(name = "medembed", version)]
struct Cli {
    /// A TOML settings file layered over the defaults (e.g. configs/distributed.toml).
    #[arg(long, global = true, value_name = "FILE", env = "MEDEMBED_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum Db {
    /// PubMed Central: full texts (JATS).
    Pmc,
    /// PubMed: abstracts with MeSH terms.
    Pubmed,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The main job, with no servers: collect articles for a query, clean them, build training
    /// pairs, fine-tune the base model and index the corpus, all in this process (in-process
    /// queue, local store in --data). Shows progress per stage and ends with a summary. Ctrl-C
    /// stops cleanly; the same command again resumes the job. Offline with the sample corpus:
    /// `medembed run --source files:samples/corpus --base-model .deps/all-MiniLM-L6-v2`.
    Run(run::RunArgs),
    /// Create a collection job and queue it for the workers; prints the job id.
    Submit {
        /// The literature query, in PubMed search syntax (e.g. "cancer immunotherapy").
        #[arg(long)]
        query: String,
        /// Database to collect from.
        #[arg(long, value_enum, default_value = "pmc")]
        db: Db,
        /// First publication date: YYYY, YYYY/MM or YYYY/MM/DD.
        #[arg(long)]
        from: Option<String>,
        /// Last publication date: YYYY, YYYY/MM or YYYY/MM/DD.
        #[arg(long)]
        to: Option<String>,
        /// Stop after this many articles [default: 1000 with eutils; every article of a files:
        /// source].
        #[arg(long, value_name = "N")]
        max_articles: Option<u64>,
        /// `eutils` (NCBI E-utilities, for --query) or `files:PATH` (a directory, file or
        /// s3://bucket/prefix of PubMed .xml.gz, PMC .nxml/.xml or .tar.gz packages).
        #[arg(long, default_value = "eutils")]
        source: String,
        /// For PMC: also collect articles that are not open access (default: open access only,
        /// so that full texts are ones you may process).
        #[arg(long)]
        include_non_open_access: bool,
        /// For PubMed: also collect "cited by" links, not only references.
        #[arg(long)]
        cited_by: bool,
    },
    /// Show each stage of a job: state, progress, counts, timings, last error. Without a job id,
    /// list the jobs, newest last.
    Status {
        /// The job id printed by `submit` or `run`.
        job: Option<String>,
        /// Read the local store of `medembed run` in DIR instead of the configured store.
        #[arg(long, value_name = "DIR")]
        data: Option<PathBuf>,
    },
    /// Follow a job live: one progress bar per stage, until it is done (exit 0) or a stage
    /// fails (exit 1). Works for embedded and distributed jobs alike (it reads the store).
    Watch {
        /// The job id printed by `submit` or `run`.
        job: String,
        /// Read the local store of `medembed run` in DIR instead of the configured store.
        #[arg(long, value_name = "DIR")]
        data: Option<PathBuf>,
        /// Seconds between looks at the store.
        #[arg(long, default_value_t = 1.0)]
        every: f64,
    },
    /// Tasks parked in the stages' dead-letter queues (`<stage>.dead`): a permanent error, a
    /// poison message, or retries used up. `list` shows them with the reason; `requeue` puts them
    /// back on their stage's queue (attempts counted afresh) once the cause is fixed.
    DeadLetters {
        #[command(subcommand)]
        action: DeadLetterAction,
    },
    /// Embed text: one line of stdin in, one JSON array (the embedding) per line out, in order.
    /// Uses the same encoder as the trainer and the index (length-sorted batches; normalized if
    /// the model says so).
    Embed {
        /// A model folder (any sentence-transformers folder), or a job id (its fine-tuned model,
        /// fetched from the store).
        #[arg(long, value_name = "DIR|JOB")]
        model: String,
    },
    /// Score search on a test collection in the BEIR folder format (corpus.jsonl, queries.jsonl,
    /// qrels/test.tsv): nDCG@10 with graded gains, MRR@10, Recall@100 and MAP@100 of BM25, of a
    /// model's dense search and of the two fused (hybrid), side by side. `--bm25` needs no model;
    /// `--job JOB` scores a finished job's own search, and its base model beside it.
    Eval(eval::EvalArgs),
    /// Write a dev set in the BEIR format from a finished job's held-out articles (its test
    /// split, in no training pair): their titles as queries, every other article of the job
    /// judged 2 (citation link) or 1 (MeSH or keyword overlap), training articles included, over
    /// the job's whole corpus. Score it with
    /// `medembed eval --beir DIR --job JOB`. A proxy to compare settings on one corpus with, not
    /// a measure of real questions.
    DevSet(devset::DevSetArgs),
    /// Search a job's corpus by meaning, with the job's own model (the same code as
    /// POST /api/search): prints the hits best first.
    Search {
        /// What to look for, in plain words.
        query: String,
        /// The job to search (default: the newest job whose index is built).
        #[arg(long)]
        job: Option<String>,
        /// How many hits.
        #[arg(short, long, default_value_t = 10)]
        k: usize,
        /// Search the local store of `medembed run` in DIR instead of the configured store.
        #[arg(long, value_name = "DIR")]
        data: Option<PathBuf>,
        /// hybrid: BM25 and the job's embeddings, fused; dense: the embeddings alone; lexical:
        /// BM25 alone.
        #[arg(long, value_enum, default_value = "hybrid")]
        mode: SearchMode,
        /// Print the hits as one JSON object (as the api returns them).
        #[arg(long)]
        json: bool,
    },
    /// Fine-tune a sentence encoder on pair files, without queue or store (the original
    /// project's contrastive_trainer.py). Writes a sentence-transformers model folder with a model
    /// card, metrics.json (base vs fine-tuned), training_log.parquet and charts. Interrupted (or
    /// Ctrl-C), run the same command again to resume from the last checkpoint. Settings not given
    /// here come from [train] in the config (configs/default.toml documents each).
    Train {
        /// Training pairs: the pair-builder's train.parquet, or CSV with text1,text2,label.
        #[arg(long, value_name = "FILE")]
        train: PathBuf,
        /// Validation pairs (same formats): evaluated before, during and after training; the best
        /// checkpoint by val nDCG@10 is the one written.
        #[arg(long, value_name = "FILE")]
        val: PathBuf,
        /// Test pairs, evaluated once at the end for the base and the fine-tuned model.
        #[arg(long, value_name = "FILE")]
        test: Option<PathBuf>,
        /// Base model: a Hugging Face hub id (HF_ENDPOINT, HF_HOME, HF_TOKEN honoured), a local
        /// model folder, or s3://bucket/prefix. Default: train.base_model (BiomedBERT).
        #[arg(long, value_name = "ID|PATH")]
        base_model: Option<String>,
        /// Output folder (created); must not hold a finished model already.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// mnrl (default), cached_mnrl, cosine or contrastive.
        #[arg(long)]
        loss: Option<String>,
        #[arg(long)]
        epochs: Option<usize>,
        #[arg(long)]
        batch_size: Option<usize>,
        /// Tokens per text (longer texts are cut).
        #[arg(long)]
        max_seq_len: Option<usize>,
        #[arg(long)]
        learning_rate: Option<f64>,
        #[arg(long)]
        seed: Option<u64>,
        /// auto (CUDA if present), cpu or cuda.
        #[arg(long)]
        device: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum DeadLetterAction {
    /// Show the parked tasks of every stage (or one), oldest first; they stay parked.
    List {
        /// Only this stage's queue (fetch, clean, pairs, train, index, embed, build).
        #[arg(long)]
        stage: Option<String>,
        /// Most tasks shown per stage.
        #[arg(long, default_value_t = 100)]
        max: usize,
    },
    /// Move parked tasks back to their stage's queue.
    Requeue {
        /// Only this stage's queue.
        #[arg(long)]
        stage: Option<String>,
        /// Most tasks moved per stage.
        #[arg(long, default_value_t = 10_000)]
        max: usize,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let settings = Settings::load(cli.config.as_deref())?;
    match cli.command {
        Command::Submit {
            query,
            db,
            from,
            to,
            max_articles,
            source,
            include_non_open_access,
            cited_by,
        } => {
            if settings.queue.backend == QueueBackend::Memory {
                bail!(
                    "submit queues the job on RabbitMQ, but queue.backend is \"memory\": use a distributed config (queue.backend = \"amqp\", e.g. --config configs/distributed.toml)"
                );
            }
            let request = JobRequest {
                query,
                db: match db {
                    Db::Pmc => Database::Pmc,
                    Db::Pubmed => Database::Pubmed,
                },
                from,
                to,
                max_articles,
                source,
                open_access_only: !include_non_open_access,
                cited_by,
            };
            let spec = request
                .into_spec()
                .map_err(|e| anyhow::anyhow!("--{}: {}", e.field.replace('_', "-"), e.reason))?;
            submit(&settings, &spec).await?;
            println!("{}", spec.job_id);
        }
        Command::Run(args) => run::run(settings, args).await?,
        Command::Eval(args) => Box::pin(eval::eval(settings, args)).await?,
        Command::DevSet(args) => devset::dev_set(settings, args).await?,
        Command::Status {
            job: Some(job),
            data,
        } => {
            let job: JobId = job.parse().context("not a job id")?;
            let store = store::open(&with_data_dir(settings, data).store).await?;
            print!("{}", status_report(store.as_ref(), job).await?);
        }
        Command::Watch { job, data, every } => {
            let job: JobId = job.parse().context("not a job id")?;
            if !(0.05..=3600.0).contains(&every) {
                bail!("--every {every}: must be 0.05..=3600 seconds");
            }
            let store = store::open(&with_data_dir(settings, data).store).await?;
            watch(store.as_ref(), job, Duration::from_secs_f64(every)).await?;
        }
        Command::Train {
            train,
            val,
            test,
            base_model,
            out,
            loss,
            epochs,
            batch_size,
            max_seq_len,
            learning_rate,
            seed,
            device,
        } => {
            let mut s = settings.train.clone();
            if let Some(m) = base_model {
                s.base_model = m;
            }
            if let Some(l) = loss {
                s.loss = l.parse().map_err(anyhow::Error::msg).context("--loss")?;
            }
            if let Some(d) = device {
                s.device = match d.as_str() {
                    "auto" => ComputeDevice::Auto,
                    "cpu" => ComputeDevice::Cpu,
                    "cuda" => ComputeDevice::Cuda,
                    other => bail!("--device {other:?}: use auto, cpu or cuda"),
                };
            }
            s.epochs = epochs.unwrap_or(s.epochs);
            s.batch_size = batch_size.unwrap_or(s.batch_size);
            s.max_seq_length = max_seq_len.unwrap_or(s.max_seq_length);
            s.learning_rate = learning_rate.unwrap_or(s.learning_rate);
            s.seed = seed.unwrap_or(s.seed);
            let job = StandaloneJob {
                train,
                val,
                test,
                out: out.clone(),
                settings: s,
            };
            let stop = CancellationToken::new();
            let on_ctrl_c = stop.clone();
            tokio::spawn(async move {
                if tokio::signal::ctrl_c().await.is_ok() {
                    eprintln!(
                        "train: stopping at the next step (checkpointing); run the same command to resume"
                    );
                    on_ctrl_c.cancel();
                }
            });
            let metrics = medembed_trainer::standalone::run(
                job,
                &Hub::from_env(),
                &settings.store,
                stop,
                ProgressLines::default(),
            )
            .await?;
            println!(
                "model written to {}
  val  nDCG@10 {:.4} -> {:.4}   test nDCG@10 {:.4} -> {:.4}   (hybrid; {} steps in {:.0} s, best step {})",
                out.display(),
                metrics.baseline.val.ndcg_at_10,
                metrics.fine_tuned.val.ndcg_at_10,
                metrics.baseline.test.ndcg_at_10,
                metrics.fine_tuned.test.ndcg_at_10,
                metrics.optimizer_steps,
                metrics.train_seconds,
                metrics.best_step
            );
        }
        Command::DeadLetters { action } => dead_letters(&settings, action).await?,
        Command::Embed { model } => {
            let cache = tempfile::tempdir().context("a temporary folder")?;
            let dir = match model.parse::<JobId>() {
                Ok(job) => {
                    let store = store::open(&settings.store).await?;
                    fetch_job_model(store.as_ref(), job, cache.path()).await?
                }
                Err(_) => PathBuf::from(&model),
            };
            let encoder = SentenceEncoder::load(&dir, tch::Device::cuda_if_available())
                .with_context(|| format!("loading the model folder {}", dir.display()))?;
            let lines: Vec<String> = std::io::stdin()
                .lines()
                .collect::<Result<_, _>>()
                .context("reading stdin")?;
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            // In chunks, so a long input streams out and memory stays bounded.
            for chunk in lines.chunks(1024) {
                let texts: Vec<&str> = chunk.iter().map(String::as_str).collect();
                for vector in encoder.encode(&texts)? {
                    serde_json::to_writer(&mut out, &vector)?;
                    std::io::Write::write_all(&mut out, b"\n")?;
                }
            }
            std::io::Write::flush(&mut out)?;
        }
        Command::Search {
            query,
            job,
            k,
            data,
            mode,
            json,
        } => {
            search(
                with_data_dir(settings, data),
                &query,
                job.as_deref(),
                k,
                mode,
                json,
            )
            .await?;
        }
        Command::Status { job: None, data } => {
            let store = store::open(&with_data_dir(settings, data).store).await?;
            for line in list_jobs(store.as_ref()).await? {
                println!("{line}");
            }
        }
    }
    Ok(())
}

/// `medembed dead-letters list|requeue`.
async fn dead_letters(settings: &Settings, action: DeadLetterAction) -> anyhow::Result<()> {
    if settings.queue.backend == QueueBackend::Memory {
        bail!(
            "dead letters live on RabbitMQ, but queue.backend is \"memory\" (embedded runs stop at the first dead letter and print it)"
        );
    }
    let (stage, max) = match &action {
        DeadLetterAction::List { stage, max } | DeadLetterAction::Requeue { stage, max } => {
            (stage.as_deref(), *max)
        }
    };
    let stages: Vec<&str> = match stage {
        Some(s) if QUEUES.contains(&s) => vec![s],
        Some(s) => bail!(
            "--stage {s:?}: not a stage queue (one of {})",
            QUEUES.join(", ")
        ),
        None => QUEUES.to_vec(),
    };
    let queue = queue::open(&settings.queue).await?;
    let mut total = 0;
    for stage in stages {
        match action {
            DeadLetterAction::List { .. } => {
                for letter in queue.peek_dead_letters(stage, max).await? {
                    total += 1;
                    println!(
                        "{stage:<6} attempt {}  {}\n       reason: {}",
                        letter.attempt,
                        String::from_utf8_lossy(&letter.body),
                        letter.reason
                    );
                }
            }
            DeadLetterAction::Requeue { .. } => {
                // Copy first, then remove the copied ones (the oldest): a failure in between
                // leaves a task both queued and parked (tasks are idempotent), never neither.
                let parked = queue.peek_dead_letters(stage, max).await?;
                for letter in &parked {
                    queue.publish(stage, &letter.body).await?;
                }
                queue.take_dead_letters(stage, parked.len()).await?;
                total += parked.len();
            }
        }
    }
    queue.close().await;
    match action {
        DeadLetterAction::List { .. } => eprintln!("{total} dead-lettered task(s)"),
        DeadLetterAction::Requeue { .. } => eprintln!("{total} task(s) requeued"),
    }
    Ok(())
}

/// `settings` reading the local store of `medembed run` in `data`, if given.
/// A job id given by the user, or the newest job whose index is built.
pub(crate) async fn job_or_newest(
    store: &dyn ObjectStore,
    job: Option<&str>,
) -> anyhow::Result<JobId> {
    if let Some(id) = job {
        return id
            .parse()
            .map_err(|_| anyhow::anyhow!("{id:?} is not a job id"));
    }
    for spec in jobs::list(store).await?.iter().rev().flatten() {
        if medembed_indexer::search::read_manifest(store, spec.job_id)
            .await?
            .is_some()
        {
            return Ok(spec.job_id);
        }
    }
    bail!("no job in this store has finished indexing: run one first (medembed run), or name one")
}

fn with_data_dir(mut settings: Settings, data: Option<PathBuf>) -> Settings {
    if let Some(dir) = data {
        settings.store.backend = StoreBackend::Local;
        settings.store.local_root = dir;
    }
    settings
}

/// `medembed watch`: redraws the job's stages every `every` until it is done or failed.
async fn watch(store: &dyn ObjectStore, job: JobId, every: Duration) -> anyhow::Result<()> {
    let Some(spec) = jobs::load_spec(store, job).await? else {
        bail!("job {job} does not exist in this store");
    };
    eprintln!("job {job}  {:?}", spec.query);
    let mut bars = progress::JobProgress::new();
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        let snapshot = progress::Snapshot::load(store, job).await?;
        bars.update(&snapshot, None);
        if snapshot.done() {
            bars.finish();
            println!("job {job} done");
            return Ok(());
        }
        if let Some(reason) = snapshot.failed {
            bars.finish();
            bail!("job {job} failed: {reason}");
        }
        tokio::select! {
            _ = &mut ctrl_c => {
                bars.finish();
                return Ok(());
            }
            _ = tokio::time::sleep(every) => {}
        }
    }
}

/// `medembed search`: the api's search, in this process.
async fn search(
    settings: Settings,
    query: &str,
    job: Option<&str>,
    k: usize,
    mode: SearchMode,
    json: bool,
) -> anyhow::Result<()> {
    let store = store::open(&settings.store).await?;
    let metrics = ApiMetrics::register(prometheus::Registry::new())?;
    let state = AppState::new(settings, store, None, metrics, None)?;
    let fail = |e: medembed_api::error::ApiError| anyhow::anyhow!("{}", e.message);
    if query.trim().is_empty() {
        bail!("the query is empty");
    }
    if k == 0 || k > state.settings.api.max_k {
        bail!("-k {k}: must be 1..={}", state.settings.api.max_k);
    }
    let job = state.job_or_newest(job).await.map_err(fail)?;
    let hits = medembed_api::routes::search_job(&state, job, query, k, mode)
        .await
        .map_err(fail)?;
    if json {
        println!(
            "{}",
            serde_json::json!({
                "job": job.to_string(), "query": query, "mode": mode, "hits": hits
            })
        );
        return Ok(());
    }
    println!(
        "job {job}: {} hits for {query:?} ({} search)",
        hits.len(),
        mode.name()
    );
    for (rank, hit) in hits.iter().enumerate() {
        println!(
            "{:>3}. {:.3}  {}  [{}]",
            rank + 1,
            hit.score,
            hit.title,
            hit.found_by.join("+")
        );
        if let Some(url) = &hit.url {
            println!("            {url}");
        }
    }
    Ok(())
}

/// Writes the job spec, then queues its fetch task.
async fn submit(settings: &Settings, spec: &JobSpec) -> anyhow::Result<()> {
    let store = store::open(&settings.store).await?;
    let queue = queue::open(&settings.queue).await?;
    let submitted = jobs::submit(store.as_ref(), queue.as_ref(), spec).await;
    queue.close().await;
    Ok(submitted?)
}

/// One line per job: id, creation time, query.
async fn list_jobs(store: &dyn ObjectStore) -> anyhow::Result<Vec<String>> {
    Ok(jobs::list(store)
        .await?
        .into_iter()
        .map(|job| match job {
            Ok(spec) => format!("{}  {}  {:?}", spec.job_id, spec.created_at, spec.query),
            Err(unreadable) => unreadable,
        })
        .collect())
}

/// The human-readable status of a job.
async fn status_report(store: &dyn ObjectStore, job: JobId) -> anyhow::Result<String> {
    let spec: JobSpec = match store.get(&keys::job_spec(job)).await {
        Ok(bytes) => serde_json::from_slice(&bytes)?,
        Err(StoreError::NotFound { .. }) => bail!("job {job} does not exist in this store"),
        Err(e) => return Err(e.into()),
    };
    let mut out = format!(
        "job {job}\n  query {:?}  db {:?}  dates {}..{}  max {}  source {:?}\n",
        spec.query,
        spec.db,
        spec.from.as_deref().unwrap_or("*"),
        spec.to.as_deref().unwrap_or("*"),
        spec.max_articles,
        spec.source
    );
    for stage in progress::STAGES {
        let s = StageStatus::load(store, job, stage).await?;
        let state = progress::state_word(s.state);
        let progress = if s.total > 0 {
            format!("  {}/{} {}", s.done, s.total, s.unit)
        } else {
            String::new()
        };
        let counts: Vec<String> = s.counts.iter().map(|(k, v)| format!("{k}={v}")).collect();
        out.push_str(&format!(
            "  {stage:<6} {state:<8}{progress}  {}\n",
            counts.join(" ")
        ));
        if let (Some(a), Some(b)) = (&s.started_at, &s.finished_at) {
            out.push_str(&format!("         started {a}, finished {b}\n"));
        }
        for w in s.warnings.iter().take(5) {
            out.push_str(&format!("         warning: {w}\n"));
        }
        if let Some(e) = &s.last_error {
            out.push_str(&format!("         last error: {e}\n"));
        }
    }
    Ok(out)
}
