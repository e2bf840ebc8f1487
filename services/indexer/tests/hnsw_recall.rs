//! The acceptance check of the HNSW index: recall@10 ≥ 0.98 against exact search on 100,000
//! synthetic vectors, at dimension 384 (MiniLM) and 768 (BERT-base), with the default settings
//! (`index.hnsw_*` in configs/default.toml). Queries are fresh draws, not corpus rows.

use medembed_indexer::synthetic::mixture;
use medembed_indexer::vectors::{HnswParams, VectorIndex, recall};
use medembed_pipeline::config::Settings;

fn check(dim: usize) {
    // Defaults, or MEDEMBED__INDEX__HNSW_* to try others.
    let settings = Settings::load(None).expect("settings").index;
    let params = HnswParams {
        connectivity: settings.hnsw_connectivity,
        expansion_add: settings.hnsw_expansion_add,
        expansion_search: settings.hnsw_expansion_search,
        vectors: settings.hnsw_vectors,
    };
    let corpus = mixture(100_000, dim, 1000, 0.6, 1);
    let queries = mixture(200, dim, 1000, 0.6, 2);
    let queries: Vec<Vec<f32>> = (0..queries.len())
        .map(|i| queries.row(i).to_vec())
        .collect();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let started = std::time::Instant::now();
    let hnsw = VectorIndex::build_hnsw(&corpus, params, threads).expect("build");
    let built = started.elapsed();
    let truth = VectorIndex::exact(&corpus)
        .search(&queries, 10)
        .expect("exact");
    let found = hnsw.search(&queries, 10).expect("hnsw");
    let r = recall(&found, &truth);
    println!("dim {dim}: recall@10 {r:.4} (100k vectors, built in {built:.1?})");
    assert!(r >= 0.98, "dim {dim}: recall@10 {r:.4} < 0.98");
}

#[test]
fn hnsw_recall_at_10_is_at_least_098_at_dim_384() {
    check(384);
}

#[test]
fn hnsw_recall_at_10_is_at_least_098_at_dim_768() {
    check(768);
}
