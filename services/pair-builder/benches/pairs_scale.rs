//! Pair-builder at scale: the whole pairs stage (read every clean part, build, write every
//! output) on synthetic corpora with a realistic MeSH distribution (10–15 descriptors per document
//! drawn Zipf-like from 30,000, 20 references each, 600 characters of text; see
//! `medembed_pair_builder::synthetic`) of 100k, 300k and 1M documents, each in its own process so
//! its peak memory is its own. Baseline in the same run: brute-force all-pairs MeSH scoring (what
//! the inverted index avoids) timed on 20,000 documents and extrapolated (it grows with n²).
//! Prints one JSON line per size and one for the baseline.
//! Run: `cargo bench -p medembed-pair-builder --bench pairs_scale`
//! (sizes: `MEDEMBED_BENCH_PAIR_SIZES=100000,300000,1000000`).

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use medembed_corpus::clean::{self, CleanPartStats, clean_schema};
use medembed_corpus::raw::{RawManifest, RawPartInfo};
use medembed_pair_builder::corpus::CorpusBuilder;
use medembed_pair_builder::stage::PairStage;
use medembed_pair_builder::synthetic::SyntheticCorpus;
use medembed_pair_builder::terms::TermIndex;
use medembed_pipeline::config::Settings;
use medembed_pipeline::messages::{JobId, PairsCheck};
use medembed_pipeline::runner::{Stage, TaskContext};
use medembed_pipeline::store::{LocalStore, ObjectStore};
use medembed_pipeline::{keys, table};

const PART: usize = 1000;

/// Writes the synthetic corpus as clean parts plus a manifest, as the fetcher and cleaners would.
async fn write_corpus(store: &dyn ObjectStore, job: JobId, n: usize) {
    let synthetic = SyntheticCorpus::new(n);
    let mut parts = Vec::new();
    for (part, start) in (0..n).step_by(PART).enumerate() {
        let part = part as u32;
        let articles = synthetic.articles(start..(start + PART).min(n));
        let stats = CleanPartStats {
            part,
            input: articles.len() as u64,
            kept: articles.len() as u64,
            ..CleanPartStats::default()
        };
        let key = keys::clean_part(job, part);
        let batch = clean::to_batch(&key, &articles).expect("batch");
        store
            .put(
                &keys::clean_part_stats(job, part),
                Bytes::from(serde_json::to_vec(&stats).expect("json")),
            )
            .await
            .expect("stats");
        table::write(store, &key, &clean_schema(), &[batch])
            .await
            .expect("part");
        parts.push(RawPartInfo {
            part,
            key: keys::raw_part(job, part),
            articles: stats.kept,
        });
    }
    RawManifest::new(job, parts)
        .save(store)
        .await
        .expect("manifest");
}

/// One size, in this process: prints its JSON line.
async fn child(n: usize) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(dir.path()).expect("store"));
    let job = JobId::new();
    let start = Instant::now();
    write_corpus(store.as_ref(), job, n).await;
    let generate_s = start.elapsed().as_secs_f64();
    let rss_before = medembed_pipeline::testing::peak_rss_mib();

    let settings = Settings::load(None).expect("defaults");
    let stage = PairStage::new(&settings, &prometheus::Registry::new()).expect("stage");
    let ctx = TaskContext {
        store: store.clone(),
        attempt: 1,
        redelivered: false,
        shutdown: Default::default(),
    };
    let start = Instant::now();
    let out = stage
        .process(PairsCheck { job_id: job }, &ctx)
        .await
        .expect("pairs");
    let stage_s = start.elapsed().as_secs_f64();
    assert_eq!(out.len(), 1, "the train task");
    let stats: serde_json::Value = serde_json::from_slice(
        &store
            .get(&keys::pairs_file(job, "stats.json"))
            .await
            .expect("stats"),
    )
    .expect("json");
    let pairs: u64 = stats["pairs"]
        .as_object()
        .expect("pairs")
        .values()
        .flat_map(|s| s.as_object().expect("split").values())
        .flat_map(|l| l.as_object().expect("labels").values())
        .map(|v| v.as_u64().expect("count"))
        .sum();
    let output_bytes: u64 = store
        .list(&format!("jobs/{job}/pairs/"))
        .await
        .expect("list")
        .iter()
        .map(|o| o.size)
        .sum();
    println!(
        "{}",
        serde_json::json!({
            "name": "pair_builder_scale",
            "documents": n,
            "stage_seconds": (stage_s * 10.0).round() / 10.0,
            "peak_rss_mib": medembed_pipeline::testing::peak_rss_mib().round(),
            "rss_before_stage_mib": rss_before.round(),
            "pairs": pairs,
            "pairs_by_split": stats["pairs"],
            "phase_seconds": stats["phase_seconds"],
            "output_mib": (output_bytes as f64 / 1048576.0).round(),
            "corpus_generation_seconds": (generate_s * 10.0).round() / 10.0,
            "goal": "under 180 s and 6144 MiB at 1M documents",
        })
    );
}

/// Brute-force all-pairs MeSH scoring on `n` documents: the work the inverted index avoids.
fn brute_force_baseline(n: usize) {
    let settings = Settings::load(None).expect("defaults").pairs;
    let mut builder = CorpusBuilder::new(&settings);
    builder.add(SyntheticCorpus::new(n).articles(0..n));
    let corpus = builder.finish();
    let index = TermIndex::new(
        &corpus.mesh,
        corpus.mesh_terms,
        settings.major_weight,
        usize::MAX,
    );
    let start = Instant::now();
    let mut found = 0u64;
    for a in 0..n {
        for b in a + 1..n {
            if index.score(a, b) >= settings.mesh_threshold as f32 {
                found += 1;
            }
        }
    }
    let s = start.elapsed().as_secs_f64();
    let per_pair = s / (n as f64 * (n as f64 - 1.0) / 2.0);
    let at_1m = per_pair * 1e6 * (1e6 - 1.0) / 2.0;
    let index_start = Instant::now();
    let candidates = TermIndex::new(
        &corpus.mesh,
        corpus.mesh_terms,
        settings.major_weight,
        settings.max_posting,
    )
    .candidates(settings.mesh_threshold as f32, usize::MAX, false);
    let index_s = index_start.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({
            "name": "pair_builder_brute_force_baseline",
            "documents": n,
            "all_pairs_mesh_scoring_seconds": (s * 100.0).round() / 100.0,
            "inverted_index_mesh_candidates_seconds": (index_s * 1000.0).round() / 1000.0,
            "mesh_pairs_all_pairs": found,
            "mesh_pairs_inverted_index": candidates.positives.len(),
            "all_pairs_extrapolated_to_1m_hours": (at_1m / 3600.0 * 10.0).round() / 10.0,
        })
    );
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--child") {
        child(args[i + 1].parse().expect("size")).await;
        return;
    }
    let sizes = std::env::var("MEDEMBED_BENCH_PAIR_SIZES")
        .unwrap_or_else(|_| "100000,300000,1000000".into());
    brute_force_baseline(20_000);
    for n in sizes.split(',') {
        let status = std::process::Command::new(std::env::current_exe().expect("exe"))
            .args(["--child", n.trim()])
            .status()
            .expect("child bench");
        assert!(status.success(), "size {n} failed");
    }
}
