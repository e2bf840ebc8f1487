//! Search latency of the two index kinds on synthetic 768-dimensional embeddings (a mixture of
//! 1,000 topics, see `synthetic`): for each corpus size, the exact index (the baseline, measured
//! in the same run) and the HNSW index with the default settings, built as the index stage builds
//! it (the search expansion calibrated on corpus rows for `index.hnsw_target_recall`), for each
//! way of storing the graph's vectors (f32, f16): one fresh query at a time as the api
//! searches, p50 and p99 latency and recall@10 against exact at the calibrated expansion and at
//! the configured one (`index.hnsw_expansion_search`), build and calibration time, the graph's
//! size with its vectors. At 100k the pure-Rust `hnsw_rs` with the same parameters is measured too (the crate
//! not chosen). One JSON line per size and vector kind.
//!
//! `cargo bench -p medembed-indexer --bench search_speed` (sizes: MEDEMBED_BENCH_SIZES, default
//! `100000,1000000`; kinds: MEDEMBED_BENCH_HNSW_VECTORS, default `f32,f16`; 1M vectors need
//! about 12 GiB of memory and a 10-minute HNSW build per kind on 2 cores).

use std::time::Instant;

use medembed_indexer::synthetic::mixture;
use medembed_indexer::vectors::{HnswParams, VectorIndex, recall};
use medembed_pipeline::config::{HnswVectors, Settings};

const DIM: usize = 768;
const QUERIES: usize = 200;

fn percentile(sorted_ms: &[f64], p: f64) -> f64 {
    let i = ((sorted_ms.len() as f64 - 1.0) * p).round() as usize;
    sorted_ms[i]
}

/// Per-query latencies (ms, sorted) and the results.
fn time_queries(
    index: &VectorIndex,
    queries: &[Vec<f32>],
) -> (Vec<f64>, Vec<Vec<medembed_indexer::vectors::Neighbour>>) {
    // Warm-up: first touches of the memory.
    for q in queries.iter().take(5) {
        index.search(std::slice::from_ref(q), 10).expect("search");
    }
    let mut times = Vec::with_capacity(queries.len());
    let mut results = Vec::with_capacity(queries.len());
    for q in queries {
        let started = Instant::now();
        let found = index.search(std::slice::from_ref(q), 10).expect("search");
        times.push(started.elapsed().as_secs_f64() * 1e3);
        results.extend(found);
    }
    times.sort_by(f64::total_cmp);
    (times, results)
}

fn main() {
    let settings = Settings::load_with_env(None, Vec::new())
        .expect("defaults")
        .index;
    let sizes: Vec<usize> = std::env::var("MEDEMBED_BENCH_SIZES")
        .unwrap_or_else(|_| "100000,1000000".into())
        .split(',')
        .map(|s| {
            s.trim()
                .parse()
                .expect("MEDEMBED_BENCH_SIZES: comma-separated sizes")
        })
        .collect();
    let kinds: Vec<HnswVectors> = std::env::var("MEDEMBED_BENCH_HNSW_VECTORS")
        .unwrap_or_else(|_| "f32,f16".into())
        .split(',')
        .map(|s| match s.trim() {
            "f32" => HnswVectors::F32,
            "f16" => HnswVectors::F16,
            other => panic!("MEDEMBED_BENCH_HNSW_VECTORS: {other:?} is not f32 or f16"),
        })
        .collect();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let queries = mixture(QUERIES, DIM, 1000, 0.6, 2);
    let queries: Vec<Vec<f32>> = (0..QUERIES).map(|i| queries.row(i).to_vec()).collect();
    for n in sizes {
        let corpus = mixture(n, DIM, 1000, 0.6, 1);
        let exact = VectorIndex::exact(&corpus);
        let (exact_ms, truth) = time_queries(&exact, &queries);
        drop(exact);
        for &kind in &kinds {
            let params = HnswParams {
                connectivity: settings.hnsw_connectivity,
                expansion_add: settings.hnsw_expansion_add,
                expansion_search: settings.hnsw_expansion_search,
                vectors: kind,
            };
            let started = Instant::now();
            let hnsw = VectorIndex::build_hnsw(&corpus, params, threads).expect("build");
            let build_s = started.elapsed().as_secs_f64();
            let data_mib = hnsw.data_bytes() as f64 / (1 << 20) as f64;
            // The configured expansion first, then the calibrated one (as the build leaves it).
            let (configured_ms, configured_found) = time_queries(&hnsw, &queries);
            let calibration = hnsw
                .calibrate_expansion(
                    &corpus,
                    settings.hnsw_expansion_search,
                    settings.hnsw_target_recall,
                )
                .expect("calibration")
                .expect("an HNSW index calibrates");
            let (hnsw_ms, found) = time_queries(&hnsw, &queries);
            drop(hnsw);
            let other = (kind == HnswVectors::F32 && n <= 100_000)
                .then(|| hnsw_rs_figures(&corpus, &queries, &truth, params));
            let line = serde_json::json!({
                "name": "index_search_latency",
                "vectors": n,
                "dim": DIM,
                "queries": QUERIES,
                "threads": threads,
                "hnsw": {
                    "vectors": format!("{kind:?}").to_lowercase(),
                    "p50_ms": percentile(&hnsw_ms, 0.5),
                    "p99_ms": percentile(&hnsw_ms, 0.99),
                    "recall_at_10": recall(&found, &truth),
                    "build_s": build_s,
                    "data_mib": data_mib,
                    "connectivity": params.connectivity,
                    "expansion_add": params.expansion_add,
                    "calibration": calibration,
                    "at_configured_expansion": {
                        "expansion_search": params.expansion_search,
                        "p50_ms": percentile(&configured_ms, 0.5),
                        "p99_ms": percentile(&configured_ms, 0.99),
                        "recall_at_10": recall(&configured_found, &truth),
                    },
                },
                "baseline": {
                    "name": "exact (one matrix product per query, libtorch)",
                    "p50_ms": percentile(&exact_ms, 0.5),
                    "p99_ms": percentile(&exact_ms, 0.99),
                    "data_mib": (n * DIM * 4) as f64 / (1 << 20) as f64,
                },
                "hnsw_rs_same_parameters": other,
                "hnsw_speedup_p50": percentile(&exact_ms, 0.5) / percentile(&hnsw_ms, 0.5),
                "peak_rss_mib": medembed_pipeline::testing::peak_rss_mib(),
            });
            println!("{line}");
        }
    }
}

/// The same measurements for `hnsw_rs` (inner-product distance on the unit vectors).
fn hnsw_rs_figures(
    corpus: &medembed_indexer::vectors::Vectors,
    queries: &[Vec<f32>],
    truth: &[Vec<medembed_indexer::vectors::Neighbour>],
    params: HnswParams,
) -> serde_json::Value {
    use hnsw_rs::prelude::{DistDot, Hnsw};
    let started = Instant::now();
    let hnsw: Hnsw<f32, DistDot> = Hnsw::new(
        params.connectivity,
        corpus.len(),
        16,
        params.expansion_add,
        DistDot {},
    );
    let rows: Vec<(&[f32], usize)> = (0..corpus.len()).map(|r| (corpus.row(r), r)).collect();
    hnsw.parallel_insert_slice(&rows);
    let build_s = started.elapsed().as_secs_f64();
    let mut times = Vec::new();
    let mut found = Vec::new();
    for q in queries {
        let started = Instant::now();
        let hits = hnsw.search(q, 10, params.expansion_search);
        times.push(started.elapsed().as_secs_f64() * 1e3);
        found.push(
            hits.iter()
                .map(|h| medembed_indexer::vectors::Neighbour {
                    row: h.d_id,
                    score: 1.0 - h.distance,
                })
                .collect(),
        );
    }
    times.sort_by(f64::total_cmp);
    serde_json::json!({
        "p50_ms": percentile(&times, 0.5),
        "p99_ms": percentile(&times, 0.99),
        "recall_at_10": recall(&found, truth),
        "build_s": build_s,
    })
}
