//! `medembed eval`: how well search ranks a test collection in the BEIR folder format, the way
//! the field measures retrieval (graded nDCG@10, MRR@10, Recall@100, MAP@100 over the
//! collection's own queries and judgements).
//!
//! Each mode is the search users get: `lexical` is the BM25 index ([`LexicalIndex`]), `dense` the
//! model's embeddings searched exactly ([`VectorIndex::exact`]), `hybrid` the two rankings fused
//! ([`Fusion`]). Documents are embedded as "title text", as BEIR's own dense baselines do; a
//! document whose id is the query's id is never counted as a hit (BEIR's `ignore_identical_ids`).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use medembed_indexer::lexical::{LexicalDocument, LexicalIndex};
use medembed_indexer::search::SearchMode;
use medembed_indexer::vectors::{VectorIndex, Vectors};
use medembed_model::SentenceEncoder;
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
    #[arg(long, value_name = "DIR", required_unless_present = "bm25")]
    model: Option<PathBuf>,
    /// BM25 alone, no model.
    #[arg(long, conflicts_with = "model")]
    bm25: bool,
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
    model: Option<PathBuf>,
    fusion: Fusion,
    results: Vec<ModeResult>,
}

/// Scores the collection and prints the report.
pub fn eval(args: EvalArgs) -> anyhow::Result<()> {
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
    let needs = |m: SearchMode| modes.contains(&m) || modes.contains(&SearchMode::Hybrid);

    let started = Instant::now();
    let lexical = if needs(SearchMode::Lexical) {
        Some(lexical_rankings(&set)?)
    } else {
        None
    };
    let lexical_seconds = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let dense = match (&args.model, needs(SearchMode::Dense)) {
        (Some(model), true) => Some(dense_rankings(&set, model)?),
        _ => None,
    };
    let dense_seconds = started.elapsed().as_secs_f64();

    let mut results = Vec::new();
    for mode in modes {
        let started = Instant::now();
        let rankings: Vec<Vec<(usize, f32)>> = match mode {
            SearchMode::Lexical => lexical.clone().expect("built above"),
            SearchMode::Dense => dense.clone().expect("built above"),
            SearchMode::Hybrid => {
                let lexical = lexical.as_ref().expect("built above");
                let dense = dense.as_ref().expect("built above");
                lexical
                    .iter()
                    .zip(dense)
                    .map(|(l, d)| {
                        fusion
                            .fuse(&[l.as_slice(), d.as_slice()], DEPTH)
                            .into_iter()
                            .map(|f| (f.id, f.score as f32))
                            .collect()
                    })
                    .collect()
            }
        };
        let seconds = started.elapsed().as_secs_f64()
            + match mode {
                SearchMode::Lexical => lexical_seconds,
                SearchMode::Dense => dense_seconds,
                SearchMode::Hybrid => lexical_seconds + dense_seconds,
            };
        results.push(ModeResult {
            mode,
            measures: measure(&set, &rankings),
            seconds,
        });
    }
    let report = EvalReport {
        collection: args.beir.clone(),
        split: args.split.clone(),
        documents: set.corpus.len(),
        queries: set.queries.len(),
        model: args.model.clone(),
        fusion,
        results,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&report);
    }
    Ok(())
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
                "--mode {} needs a model (--model DIR); --bm25 scores the lexical mode only",
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
fn lexical_rankings(set: &BeirSet) -> anyhow::Result<Vec<Vec<(usize, f32)>>> {
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
    let rankings = set
        .queries
        .iter()
        .map(|q| index.search(&q.text, DEPTH))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rankings)
}

/// The model's top `DEPTH` (row, cosine) for every judged query, in query order.
fn dense_rankings(set: &BeirSet, model: &Path) -> anyhow::Result<Vec<Vec<(usize, f32)>>> {
    let encoder = SentenceEncoder::load(model, tch::Device::cuda_if_available())
        .with_context(|| format!("loading the model folder {}", model.display()))?;
    let texts: Vec<String> = set
        .corpus
        .iter()
        .map(|d| match d.title.trim() {
            "" => d.text.clone(),
            title => format!("{title} {}", d.text),
        })
        .collect();
    let mut flat = Vec::with_capacity(texts.len() * encoder.dimension());
    let started = Instant::now();
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
    Ok(rankings)
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
    if let Some(model) = &report.model {
        println!("model: {}", model.display());
    }
    println!(
        "{:<8} {:>8} {:>8} {:>10} {:>8} {:>8}",
        "mode", "nDCG@10", "MRR@10", "Recall@100", "MAP@100", "seconds"
    );
    for r in &report.results {
        println!(
            "{:<8} {:>8.4} {:>8.4} {:>10.4} {:>8.4} {:>8.1}",
            r.mode.name(),
            r.measures.ndcg_at_10,
            r.measures.mrr_at_10,
            r.measures.recall_at_100,
            r.measures.map_at_100,
            r.seconds
        );
    }
}
