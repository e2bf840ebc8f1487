//! `medembed eval`: how well search ranks a test collection in the BEIR folder format, the way
//! the field measures retrieval (graded nDCG@10, MRR@10, Recall@100, MAP@100 over the
//! collection's own queries and judgements).
//!
//! Each mode is the search users get: `lexical` is the BM25 index ([`LexicalIndex`]), `dense` the
//! model's embeddings searched exactly ([`VectorIndex::exact`]), `hybrid` the two rankings fused
//! ([`Fusion`]). Documents are embedded as "title text", as BEIR's own dense baselines do; a
//! document whose id is the query's id is never counted as a hit (BEIR's `ignore_identical_ids`).
//!
//! `--job` scores a finished job: when the collection's corpus is the job's corpus (a
//! `medembed dev-set` folder) its lexical, dense and hybrid rows are the job's own search (the
//! api's code, over the job's index); otherwise the job's model is scored over an index built
//! from the folder. Beside them the job's base model, dense and hybrid, shows what fine-tuning
//! added.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use medembed_api::metrics::ApiMetrics;
use medembed_api::state::AppState;
use medembed_indexer::lexical::{LexicalDocument, LexicalIndex};
use medembed_indexer::search::SearchMode;
use medembed_indexer::vectors::{VectorIndex, Vectors};
use medembed_model::SentenceEncoder;
use medembed_pipeline::config::Settings;
use medembed_pipeline::keys;
use medembed_pipeline::messages::JobId;
use medembed_pipeline::store;
use medembed_retrieval::Measures;
use medembed_retrieval::beir::BeirSet;
use medembed_retrieval::fusion::Fusion;
use serde::Serialize;

/// How deep each ranking goes: Recall@100 and MAP@100 need 100.
const DEPTH: usize = 100;

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// A test collection in the BEIR folder format: corpus.jsonl, queries.jsonl and
    /// qrels/<SPLIT>.tsv (query-id, corpus-id, graded score).
    #[arg(long, value_name = "DIR")]
    beir: PathBuf,
    /// The judgements to score against: qrels/<SPLIT>.tsv.
    #[arg(long, default_value = "test")]
    split: String,
    /// A sentence-transformers model folder: scores dense and hybrid search with it, and BM25
    /// beside them.
    #[arg(long, value_name = "DIR", required_unless_present_any = ["bm25", "job"], conflicts_with = "job")]
    model: Option<PathBuf>,
    /// BM25 alone, no model.
    #[arg(long, conflicts_with_all = ["model", "job"])]
    bm25: bool,
    /// A finished job (without a value: the newest job whose index is built): its own search in
    /// each mode (over its index when the folder's corpus is the job's, as `medembed dev-set`
    /// writes it), and its base model beside it.
    #[arg(long, value_name = "JOB", num_args = 0..=1, default_missing_value = "")]
    job: Option<String>,
    /// With --job: the job's store is the local store of `medembed run` in DIR.
    #[arg(long, value_name = "DIR", requires = "job")]
    data: Option<PathBuf>,
    /// With --job: the base model to compare with (default: the job's base model, where that
    /// is a local folder).
    #[arg(long, value_name = "DIR", requires = "job")]
    base_model: Option<PathBuf>,
    /// The modes to score, comma-separated (default: every mode the inputs allow).
    #[arg(long, value_enum, value_delimiter = ',')]
    mode: Vec<SearchMode>,
    /// How hybrid search combines the two rankings: reciprocal rank fusion (k = 60), or
    /// min-max normalized scores (BM25 and cosine weighted equally).
    #[arg(long, value_enum, default_value = "rrf")]
    fusion: FusionMethod,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum FusionMethod {
    Rrf,
    Scores,
}

impl FusionMethod {
    fn fusion(self) -> Fusion {
        match self {
            FusionMethod::Rrf => Fusion::ReciprocalRank { k: 60.0 },
            FusionMethod::Scores => Fusion::NormalizedScores {
                weights: [0.5, 0.5],
            },
        }
    }
}

#[derive(Debug, Serialize)]
struct ModeResult {
    mode: SearchMode,
    /// Whose embeddings: `job` (the job's model), `base` (its base model) or the --model
    /// folder; None for lexical.
    model: Option<String>,
    #[serde(flatten)]
    measures: Measures,
    seconds: f64,
}

#[derive(Debug, Serialize)]
struct EvalReport {
    collection: PathBuf,
    split: String,
    documents: usize,
    queries: usize,
    job: Option<String>,
    /// Whether the job's own index was searched (the folder's corpus is the job's).
    job_index: bool,
    models: Vec<(String, PathBuf)>,
    fusion: Fusion,
    results: Vec<ModeResult>,
}

/// One model's rankings for every judged query, and how long they took.
struct Rankings {
    by_query: Vec<Vec<(usize, f32)>>,
    seconds: f64,
}

/// Scores the collection and prints the report.
pub async fn eval(settings: Settings, args: EvalArgs) -> anyhow::Result<()> {
    let modes = modes(&args)?;
    let set = BeirSet::read(&args.beir, &args.split)
        .with_context(|| format!("reading the BEIR folder {}", args.beir.display()))?;
    eprintln!(
        "eval: {} documents, {} judged queries ({} split)",
        set.corpus.len(),
        set.queries.len(),
        args.split
    );
    let fusion = args.fusion.fusion();
    let wants = |m: SearchMode| modes.contains(&m);
    let mut report = EvalReport {
        collection: args.beir.clone(),
        split: args.split.clone(),
        documents: set.corpus.len(),
        queries: set.queries.len(),
        job: None,
        job_index: false,
        models: Vec::new(),
        fusion,
        results: Vec::new(),
    };
    let result = |mode: SearchMode, model: Option<&str>, r: &Rankings| ModeResult {
        mode,
        model: model.map(str::to_string),
        measures: measure(&set, &r.by_query),
        seconds: r.seconds,
    };

    // The folder's own BM25, unless the job's index answers.
    let mut job_search: Option<JobSearch> = None;
    if let Some(job) = &args.job {
        let search = Box::pin(JobSearch::open(settings, args.data.clone(), job)).await?;
        report.job = Some(search.job.to_string());
        job_search = Some(search);
    }
    let same_corpus = job_search.as_ref().is_some_and(|j| j.holds(&set));
    report.job_index = same_corpus;
    let lexical = match &job_search {
        Some(j) if same_corpus => j.rankings(&set, SearchMode::Lexical).await?,
        _ => lexical_rankings(&set)?,
    };
    if wants(SearchMode::Lexical) {
        report
            .results
            .push(result(SearchMode::Lexical, None, &lexical));
    }
    let fused = |dense: &Rankings| Rankings {
        by_query: lexical
            .by_query
            .iter()
            .zip(&dense.by_query)
            .map(|(l, d)| {
                fusion
                    .fuse(&[l.as_slice(), d.as_slice()], DEPTH)
                    .into_iter()
                    .map(|f| (f.id, f.score as f32))
                    .collect()
            })
            .collect(),
        seconds: lexical.seconds + dense.seconds,
    };
    let dense_modes = wants(SearchMode::Dense) || wants(SearchMode::Hybrid);
    // A model folder's dense and hybrid rows, over the folder's corpus embedded with it.
    let score_model = |label: &str, dir: &Path| -> anyhow::Result<Vec<ModeResult>> {
        let dense = dense_rankings(&set, dir)?;
        let mut rows = Vec::new();
        if wants(SearchMode::Dense) {
            rows.push(result(SearchMode::Dense, Some(label), &dense));
        }
        if wants(SearchMode::Hybrid) {
            rows.push(result(SearchMode::Hybrid, Some(label), &fused(&dense)));
        }
        Ok(rows)
    };

    if let Some(model) = &args.model {
        report.models.push(("model".into(), model.clone()));
        if dense_modes {
            let label = model.display().to_string();
            report.results.extend(score_model(&label, model)?);
        }
    }
    if let Some(job) = &job_search {
        let base = args.base_model.clone().or_else(|| job.base_model_folder());
        match &base {
            Some(base) => report.models.push(("base".into(), base.clone())),
            None => eprintln!(
                "eval: the job's base model ({}) is not a local folder: give --base-model DIR to \
                 score it beside the job's model",
                job.base_model
            ),
        }
        if let (Some(base), true) = (&base, dense_modes) {
            report.results.extend(score_model("base", base)?);
        }
        // Where the job's model is in its store (model_dir is a temporary copy).
        report
            .models
            .push(("job".into(), PathBuf::from(keys::model_prefix(job.job))));
        if same_corpus {
            for mode in [SearchMode::Dense, SearchMode::Hybrid] {
                if wants(mode) {
                    let rankings = job.rankings(&set, mode).await?;
                    report.results.push(result(mode, Some("job"), &rankings));
                }
            }
        } else if dense_modes {
            report.results.extend(score_model("job", &job.model_dir)?);
        }
    }

    // In the order the modes were asked for (a stable sort: models keep their order).
    report
        .results
        .sort_by_key(|r| modes.iter().position(|m| *m == r.mode));
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&report);
    }
    Ok(())
}

/// A finished job, searched the way the api searches it.
struct JobSearch {
    job: JobId,
    state: AppState,
    /// The job's model folder on this machine.
    model_dir: PathBuf,
    /// The base model it was fine-tuned from, as the job's metrics.json names it.
    base_model: String,
    /// The ids of the documents in the job's index.
    documents: HashSet<String>,
    _cache: tempfile::TempDir,
}

impl JobSearch {
    async fn open(settings: Settings, data: Option<PathBuf>, job: &str) -> anyhow::Result<Self> {
        let settings = crate::with_data_dir(settings, data);
        let store = store::open(&settings.store).await?;
        let named = Some(job).filter(|j| !j.is_empty());
        let job = crate::job_or_newest(store.as_ref(), named)
            .await
            .context("--job")?;
        let metrics: Option<medembed_trainer::artifacts::ModelMetrics> = store::read_json(
            store.as_ref(),
            &format!("{}metrics.json", keys::model_prefix(job)),
        )
        .await?;
        let Some(metrics) = metrics else {
            bail!(
                "job {job} has no model in this store (not trained yet, or another store: --data DIR)"
            );
        };
        let cache = tempfile::tempdir()?;
        let model_dir =
            medembed_indexer::model::fetch_job_model(store.as_ref(), job, cache.path()).await?;
        let api_metrics = ApiMetrics::register(prometheus::Registry::new())?;
        let state = AppState::new(settings, store, None, api_metrics, None)?;
        let loaded = state
            .indexed(job)
            .await
            .map_err(|e| anyhow::anyhow!("job {job}: {}", e.message))?;
        let index = loaded.index.as_ref().expect("indexed() loads the index");
        let documents = index.documents.iter().map(|d| d.id.clone()).collect();
        Ok(Self {
            job,
            state,
            model_dir,
            base_model: metrics.base_model,
            documents,
            _cache: cache,
        })
    }

    /// Whether the collection's corpus is exactly the job's corpus.
    fn holds(&self, set: &BeirSet) -> bool {
        set.corpus.len() == self.documents.len()
            && set.corpus.iter().all(|d| self.documents.contains(&d.id))
    }

    fn base_model_folder(&self) -> Option<PathBuf> {
        let path = PathBuf::from(&self.base_model);
        path.is_dir().then_some(path)
    }

    /// The job's search in `mode` for every judged query, as corpus rows of `set`.
    async fn rankings(&self, set: &BeirSet, mode: SearchMode) -> anyhow::Result<Rankings> {
        let row: HashMap<&str, usize> = set
            .corpus
            .iter()
            .enumerate()
            .map(|(i, d)| (d.id.as_str(), i))
            .collect();
        let started = Instant::now();
        let mut by_query = Vec::with_capacity(set.queries.len());
        for query in &set.queries {
            let hits =
                medembed_api::routes::search_job(&self.state, self.job, &query.text, DEPTH, mode)
                    .await
                    .map_err(|e| anyhow::anyhow!("job {}: {}", self.job, e.message))?;
            by_query.push(
                hits.iter()
                    .filter_map(|h| row.get(h.id.as_str()).map(|&r| (r, h.score)))
                    .collect(),
            );
        }
        Ok(Rankings {
            by_query,
            seconds: started.elapsed().as_secs_f64(),
        })
    }
}

/// The modes asked for, checked against what the inputs allow.
fn modes(args: &EvalArgs) -> anyhow::Result<Vec<SearchMode>> {
    let all = if args.bm25 {
        vec![SearchMode::Lexical]
    } else {
        vec![SearchMode::Lexical, SearchMode::Dense, SearchMode::Hybrid]
    };
    if args.mode.is_empty() {
        return Ok(all);
    }
    let mut modes = Vec::new();
    for mode in &args.mode {
        if !all.contains(mode) {
            bail!(
                "--mode {} needs a model (--model DIR or --job JOB); --bm25 scores the lexical mode only",
                mode.name()
            );
        }
        if !modes.contains(mode) {
            modes.push(*mode);
        }
    }
    Ok(modes)
}

/// BM25's top `DEPTH` (row, score) for every judged query, in query order.
fn lexical_rankings(set: &BeirSet) -> anyhow::Result<Rankings> {
    let started = Instant::now();
    let documents: Vec<LexicalDocument> = set
        .corpus
        .iter()
        .map(|d| LexicalDocument {
            title: d.title.clone(),
            abstract_text: d.text.clone(),
            ..LexicalDocument::default()
        })
        .collect();
    let index = LexicalIndex::build(&documents)?;
    let by_query = set
        .queries
        .iter()
        .map(|q| index.search(&q.text, DEPTH))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Rankings {
        by_query,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// The model's top `DEPTH` (row, cosine) for every judged query, in query order.
fn dense_rankings(set: &BeirSet, model: &Path) -> anyhow::Result<Rankings> {
    let started = Instant::now();
    let device = tch::Device::cuda_if_available();
    let mut encoder = SentenceEncoder::load(model, device)
        .with_context(|| format!("loading the model folder {}", model.display()))?;
    // The precision the index stage embeds in (bf16 where the hardware has it), so a model's
    // figures here are those of its job's index.
    encoder.set_precision(medembed_model::Precision::fastest_for(device));
    let texts: Vec<String> = set
        .corpus
        .iter()
        .map(|d| match d.title.trim() {
            "" => d.text.clone(),
            title => format!("{title} {}", d.text),
        })
        .collect();
    let mut flat = Vec::with_capacity(texts.len() * encoder.dimension());
    for (i, chunk) in texts.chunks(512).enumerate() {
        let chunk: Vec<&str> = chunk.iter().map(String::as_str).collect();
        for vector in encoder.encode(&chunk)? {
            flat.extend(vector);
        }
        let done = (i * 512 + chunk.len()).min(texts.len());
        eprintln!(
            "eval: embedded {done}/{} documents ({:.0} s)",
            texts.len(),
            started.elapsed().as_secs_f64()
        );
    }
    let vectors = Vectors::new(encoder.dimension(), flat)?;
    let index = VectorIndex::exact(&vectors);
    let queries: Vec<&str> = set.queries.iter().map(|q| q.text.as_str()).collect();
    let mut rankings = Vec::with_capacity(queries.len());
    // Queries in blocks, so the score matrix stays small on a large corpus.
    for block in queries.chunks(256) {
        let embedded = encoder.encode(block)?;
        for hits in index.search(&embedded, DEPTH)? {
            rankings.push(hits.into_iter().map(|n| (n.row, n.score)).collect());
        }
    }
    Ok(Rankings {
        by_query: rankings,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// The mean measures of `rankings` (one per judged query, rows of the corpus) against the
/// judgements.
fn measure(set: &BeirSet, rankings: &[Vec<(usize, f32)>]) -> Measures {
    let all: Vec<Measures> = set
        .queries
        .iter()
        .zip(rankings)
        .map(|(query, ranking)| {
            let ranked: Vec<&str> = ranking
                .iter()
                .map(|(row, _)| set.corpus[*row].id.as_str())
                .filter(|id| *id != query.id)
                .collect();
            Measures::graded(&ranked, &set.gains(&query.id))
        })
        .collect();
    Measures::mean(&all)
}

fn print_table(report: &EvalReport) {
    println!(
        "{} ({} split): {} documents, {} queries",
        report.collection.display(),
        report.split,
        report.documents,
        report.queries
    );
    if let Some(job) = &report.job {
        println!(
            "job {job}: {}",
            if report.job_index {
                "its own index (the folder's corpus is the job's)"
            } else {
                "its model over an index built from the folder"
            }
        );
    }
    for (name, path) in &report.models {
        println!("{name}: {}", path.display());
    }
    println!(
        "{:<8} {:<6} {:>8} {:>8} {:>10} {:>8} {:>8}",
        "mode", "model", "nDCG@10", "MRR@10", "Recall@100", "MAP@100", "seconds"
    );
    for r in &report.results {
        let model = match (&r.model, report.models.len()) {
            (None, _) => "-",
            (Some(_), 1) if report.job.is_none() => "model",
            (Some(m), _) => m.as_str(),
        };
        println!(
            "{:<8} {:<6} {:>8.4} {:>8.4} {:>10.4} {:>8.4} {:>8.1}",
            r.mode.name(),
            model,
            r.measures.ndcg_at_10,
            r.measures.mrr_at_10,
            r.measures.recall_at_100,
            r.measures.map_at_100,
            r.seconds
        );
    }
}
