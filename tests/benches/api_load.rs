//! `/api/search` under load: the api (this build) serving a job indexed from the fixture corpus
//! with MiniLM, driven by `wrk` (Debian package) with 8 connections for 20 s, each request a
//! different real article title; requests/s and latency percentiles. Baseline in the same run:
//! the same searches called in-process one after another (`routes::search_job`, no HTTP, no
//! concurrency), which shows what HTTP costs and what the model thread's batching of concurrent
//! queries gains. One JSON line.
//!
//! `cargo bench -p medembed-e2e --bench api_load`

use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use medembed_api::metrics::ApiMetrics;
use medembed_api::state::AppState;
use medembed_e2e::api::{TestKeys, serve_api_with};
use medembed_e2e::fixture_job::indexed_job;
use medembed_indexer::search::JobIndex;
use medembed_indexer::search::SearchMode;
use medembed_pipeline::config::{QueueBackend, StoreBackend};
use medembed_pipeline::{store, testing};

const CONNECTIONS: usize = 8;
const SECONDS: u64 = 20;

/// wrk's latency line for a percentile ("99%   12.34ms") in milliseconds.
fn latency_ms(report: &str, percentile: &str) -> f64 {
    let line = report
        .lines()
        .find(|l| l.trim_start().starts_with(percentile))
        .unwrap_or_else(|| panic!("no {percentile} line in wrk's report:\n{report}"));
    let value = line.split_whitespace().nth(1).expect("a value");
    let (number, unit) = value.split_at(value.find(|c: char| c.is_alphabetic()).expect("a unit"));
    let number: f64 = number.parse().expect("a number");
    match unit {
        "us" => number / 1e3,
        "ms" => number,
        "s" => number * 1e3,
        other => panic!("unit {other}"),
    }
}

fn main() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let settings = testing::dev_settings(
            &testing::unique("bench-api"),
            QueueBackend::Memory,
            StoreBackend::Local,
            &dir.path().join("store"),
            &[
                ("MEDEMBED__FETCH__ARTICLES_PER_PART", "8"),
                // Every request passes the key check and the rate limiter, set high enough
                // that it never refuses: what they cost is part of the figure.
                ("MEDEMBED__API__REQUESTS_PER_MINUTE", "100000000"),
                ("MEDEMBED__API__REQUEST_BURST", "1000000"),
            ],
        );
        let store = store::open(&settings.store).await.expect("store");
        let job = indexed_job(&settings, &store, dir.path()).await;
        let index = JobIndex::load(store.as_ref(), job, 64).await.expect("index");
        let titles: Vec<String> = index.documents.iter().map(|d| d.title.clone()).collect();
        let documents = titles.len();

        let state = Arc::new(
            AppState::new(
                settings.clone(),
                store.clone(),
                None,
                ApiMetrics::register(prometheus::Registry::new()).expect("metrics"),
                None,
            )
            .expect("state"),
        );
        // Baseline: in-process, sequential (after loading the job), in the mode wrk's requests
        // get (the default, hybrid).
        medembed_api::routes::search_job(&state, job, &titles[0], 10, SearchMode::Hybrid)
            .await
            .expect("warm up");
        let rounds = 5;
        let started = Instant::now();
        for _ in 0..rounds {
            for t in &titles {
                medembed_api::routes::search_job(&state, job, t, 10, SearchMode::Hybrid)
                    .await
                    .expect("search");
            }
        }
        let in_process = (rounds * titles.len()) as f64 / started.elapsed().as_secs_f64();

        let keys = TestKeys::new();
        let api = serve_api_with(&settings, store.clone(), None, keys.access()).await;
        let addr = api.base.trim_start_matches("http://").to_string();

        let bodies: Vec<String> = titles
            .iter()
            .map(|t| serde_json::json!({"query": t, "k": 10, "job": job.to_string()}).to_string())
            .collect();
        let lua = format!(
            "local bodies = {{{}}}\nlocal i = 0\nrequest = function()\n  i = i % #bodies + 1\n  return wrk.format(\"POST\", \"/api/search\", {{[\"Content-Type\"] = \"application/json\", [\"Authorization\"] = \"Bearer {}\"}}, bodies[i])\nend\n",
            bodies
                .iter()
                .map(|b| format!("{b:?}"))
                .collect::<Vec<_>>()
                .join(", "),
            keys.read
        );
        let script = dir.path().join("search.lua");
        std::fs::write(&script, lua).expect("lua");
        let report = tokio::task::spawn_blocking(move || {
            Command::new("wrk")
                .args([
                    "-t2",
                    &format!("-c{CONNECTIONS}"),
                    &format!("-d{SECONDS}s"),
                    "--latency",
                    "-s",
                ])
                .arg(&script)
                .arg(format!("http://{addr}/api/search"))
                .output()
                .expect("wrk (Debian package wrk) runs")
        })
        .await
        .expect("wrk");
        let report = String::from_utf8_lossy(&report.stdout).into_owned();
        let requests_per_s: f64 = report
            .lines()
            .find(|l| l.starts_with("Requests/sec:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no Requests/sec in wrk's report:\n{report}"));
        let errors = report.contains("Non-2xx") || report.contains("Socket errors");
        assert!(!errors, "wrk saw errors:\n{report}");
        let line = serde_json::json!({
            "name": "api_search_load",
            "endpoint": "POST /api/search",
            "model": "all-MiniLM-L6-v2",
            "documents": documents,
            "k": 10,
            "connections": CONNECTIONS,
            "seconds": SECONDS,
            "requests_per_s": requests_per_s,
            "p50_ms": latency_ms(&report, "50%"),
            "p90_ms": latency_ms(&report, "90%"),
            "p99_ms": latency_ms(&report, "99%"),
            "threads": std::thread::available_parallelism().map_or(1, |n| n.get()),
            "baseline": {
                "name": "search_job in-process, sequential (no HTTP)",
                "searches_per_s": in_process,
            },
        });
        println!("{line}");
    });
}
