//! The whole distributed pipeline: the five worker binaries and medembed-api as separate OS
//! processes over the real RabbitMQ and Garage. A job over the sample corpus is submitted with
//! `POST /api/jobs` and run twice with the same seed: once with no faults, once with every fault
//! an operator meets — SIGKILL of the cleaner mid-part and of the trainer after a checkpoint (both
//! restarted), a broker restart, the S3 server down for 20 s and a poison message in a stage
//! queue. The faulted job must complete with outputs identical to the fault-free one, nothing
//! lost, and the poison message in the dead-letter queue. During the fault-free run a real
//! Prometheus scrapes every process: all targets must be up, and every Grafana dashboard query
//! must parse and read only metrics that were scraped.
//!
//! Alone in its test binary: it stops RabbitMQ and Garage for everyone on the machine (cargo
//! runs test binaries one after another).

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use medembed_e2e::deployment::{API, Completions, Deployment, WORKERS, binary, sample_corpus};
use medembed_e2e::prometheus::{Prometheus, dashboard_queries, metric_names_in};
use medembed_e2e::{ServicesGuard, dev_services, rabbitmqctl};
use medembed_pipeline::keys;
use medembed_pipeline::messages::{JobId, QUEUES};

/// Settings for both runs: the offline MiniLM as base model, small parts (so the cleaner and
/// the indexer fan out), the loosest pair thresholds (the sample's articles are unrelated, see
/// samples/sample.toml), a dozen small training steps (enough to kill the trainer in the middle;
/// the title pairs alone would make hundreds over 20 epochs, each checkpoint a ~270 MB upload),
/// frequent checkpoints, a short training lease (a restarted trainer takes over the killed one's
/// job), quick retries.
const SETTINGS: &[(&str, &str)] = &[
    ("MEDEMBED__PAIRS__MESH_THRESHOLD", "0.02"),
    ("MEDEMBED__PAIRS__KEYWORD_THRESHOLD", "0.01"),
    (
        "MEDEMBED__TRAIN__BASE_MODEL",
        env!("MEDEMBED_TEST_MODEL_DIR"),
    ),
    ("MEDEMBED__TRAIN__DEVICE", "cpu"),
    ("MEDEMBED__TRAIN__MAX_SEQ_LENGTH", "64"),
    ("MEDEMBED__TRAIN__BATCH_SIZE", "2"),
    ("MEDEMBED__TRAIN__EPOCHS", "20"),
    ("MEDEMBED__TRAIN__MAX_STEPS", "12"),
    ("MEDEMBED__TRAIN__CHECKPOINT_EVERY_STEPS", "2"),
    ("MEDEMBED__TRAIN__LEASE_SECS", "10"),
    ("MEDEMBED__INDEX__MAX_SEQ_LENGTH", "128"),
    ("MEDEMBED__INDEX__DEVICE", "cpu"),
    ("MEDEMBED__FETCH__ARTICLES_PER_PART", "6"),
    ("MEDEMBED__QUEUE__RETRY_BASE_DELAY_MS", "1000"),
    ("MEDEMBED__QUEUE__RETRY_MAX_DELAY_MS", "8000"),
    ("MEDEMBED__QUEUE__MAX_ATTEMPTS", "8"),
    ("MEDEMBED__STORE__MAX_ATTEMPTS", "3"),
];

const POISON: &[u8] = b"{\"this is\": \"not a clean task\"";
/// The fetch task (queued by the api) and the poison message.
const PUBLISHED_BY_TEST: usize = 2;

fn job_request() -> serde_json::Value {
    serde_json::json!({
        "query": "sample corpus",
        "source": format!("files:{}", sample_corpus().display()),
        "max_articles": 1000,
    })
}

/// A digest of every data file the job wrote (parts, pairs, model weights, index), by key
/// relative to the job. Timing-dependent files (status, manifests with timestamps, logs,
/// checkpoints) are left out.
async fn outputs(d: &Deployment, job: JobId) -> BTreeMap<String, u64> {
    let prefix = keys::job_prefix(job);
    let mut out = BTreeMap::new();
    for meta in d.store.list(&prefix).await.expect("list") {
        let key = meta
            .key
            .strip_prefix(&prefix)
            .expect("under the job")
            .to_string();
        let data = key.ends_with(".parquet") && !key.contains("training_log")
            || key.ends_with(".safetensors")
            || key.ends_with(".f32")
            || key.starts_with("index/lexical/");
        if data && !key.starts_with("train/") {
            let bytes = d.store.get(&meta.key).await.expect("get");
            out.insert(key, xxhash_rust::xxh3::xxh3_64(&bytes));
        }
    }
    out
}

/// Per work unit, how many times a worker of `d` finished it.
fn completions(d: &Deployment) -> Completions {
    Completions::from_records(WORKERS.iter().flat_map(|bin| d.log_records(bin)))
}

/// Prometheus scraping every process of `d` and RabbitMQ's per-queue metrics.
async fn scrape(d: &Deployment) -> Prometheus {
    let workers: Vec<String> = d
        .metrics_ports
        .iter()
        .filter(|(bin, _)| bin.as_str() != API)
        .flat_map(|(_, ports)| ports.iter().map(|p| format!("127.0.0.1:{p}")))
        .collect();
    Prometheus::start(&[
        ("medembed-workers", workers, "/metrics"),
        (
            "medembed-api",
            d.metrics_ports[API]
                .iter()
                .map(|p| format!("127.0.0.1:{p}"))
                .collect(),
            "/metrics",
        ),
        (
            "rabbitmq",
            vec!["127.0.0.1:15692".to_string()],
            "/metrics/detailed?family=queue_coarse_metrics",
        ),
    ])
    .await
}

/// What an operator sees of `d` in Prometheus: every target up, and every dashboard query
/// parses and reads only metrics that were scraped.
async fn check_monitoring(prometheus: &Prometheus) {
    let all_up = medembed_e2e::eventually(Duration::from_secs(30), || async {
        let targets = prometheus.targets().await;
        targets.len() == WORKERS.len() + 2 && targets.iter().all(|(_, health)| health == "up")
    })
    .await;
    assert!(all_up, "targets: {:?}", prometheus.targets().await);
    let scraped = prometheus.metric_names().await;
    let dashboards = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/grafana/dashboards");
    let queries = dashboard_queries(std::path::Path::new(dashboards));
    assert!(queries.len() >= 10, "{queries:?}");
    let mut problems = Vec::new();
    for (panel, expr) in &queries {
        if let Err(e) = prometheus.query(expr).await {
            problems.push(format!("panel {panel:?}: {expr}: {e}"));
        }
        let missing: Vec<String> = metric_names_in(expr)
            .into_iter()
            .filter(|name| !scraped.contains(name))
            .collect();
        if !missing.is_empty() {
            problems.push(format!(
                "panel {panel:?} reads {missing:?}, which no process exports"
            ));
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
    println!(
        "monitoring: {} targets up, {} dashboard queries parse and read scraped metrics",
        WORKERS.len() + 2,
        queries.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_survives_kills_a_broker_restart_an_s3_outage_and_poison_with_identical_outputs() {
    // 1. Fault-free.
    let started = Instant::now();
    let mut clean_run = Deployment::new("pipeline-clean", SETTINGS).await;
    clean_run.start_all();
    let prometheus = scrape(&clean_run).await;
    let reference_job = clean_run.submit(job_request()).await;
    assert!(
        clean_run
            .wait_done(reference_job, Duration::from_secs(900))
            .await,
        "job {reference_job} not done within 15 min:\n{}",
        clean_run.log_tails()
    );
    let fault_free_s = started.elapsed().as_secs_f64();
    check_monitoring(&prometheus).await;
    drop(prometheus);
    let reference = outputs(&clean_run, reference_job).await;
    clean_run.stop_all();
    let raw_parts = reference.keys().filter(|k| k.starts_with("raw/")).count();
    assert!(raw_parts >= 5, "the sample fans out: {reference:#?}");
    for expected in [
        "pairs/train.parquet",
        "pairs/val.parquet",
        "pairs/test.parquet",
        "model/model.safetensors",
        "index/vectors.f32",
        "index/documents.parquet",
        "index/lexical/meta.json",
    ] {
        assert!(reference.contains_key(expected), "{expected} missing");
    }
    assert_eq!(
        reference.keys().filter(|k| k.starts_with("clean/")).count(),
        raw_parts
    );
    assert_eq!(
        reference
            .keys()
            .filter(|k| k.starts_with("index/embeddings/"))
            .count(),
        raw_parts
    );

    // 2. The same job with faults.
    let _guard = ServicesGuard;
    let started = Instant::now();
    let mut d = Deployment::new("pipeline-faults", SETTINGS).await;
    d.start_all();
    let job = d.submit(job_request()).await;
    d.queue
        .publish("clean", POISON)
        .await
        .expect("publish the poison message");

    // SIGKILL the cleaner mid-run: once some parts are clean, not all.
    let clean_prefix = keys::clean_prefix(job);
    let store = d.store.clone();
    let clean_parts = || {
        let (store, prefix) = (store.clone(), clean_prefix.clone());
        async move {
            store
                .list(&prefix)
                .await
                .map(|l| l.iter().filter(|m| m.key.ends_with(".parquet")).count())
                .unwrap_or(0)
        }
    };
    let deadline = Instant::now() + Duration::from_secs(300);
    while clean_parts().await < 1 {
        assert!(
            Instant::now() < deadline,
            "no clean part:\n{}",
            d.log_tails()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    d.kill("medembed-cleaner");
    let at_kill = clean_parts().await;
    assert!(
        at_kill < raw_parts,
        "the kill landed mid-run ({at_kill}/{raw_parts})"
    );
    d.start("medembed-cleaner");

    // Restart the broker while the cleaner and the pair-builder work.
    rabbitmqctl("stop_app");
    tokio::time::sleep(Duration::from_secs(3)).await;
    rabbitmqctl("start_app");

    // SIGKILL the trainer once it has checkpointed; a new one takes over the job.
    let checkpoint = keys::train_file(job, "checkpoints/latest.json");
    assert!(
        d.wait_for_key(&checkpoint, Duration::from_secs(600)).await,
        "no training checkpoint:\n{}",
        d.log_tails()
    );
    d.kill("medembed-trainer");
    d.start("medembed-trainer");

    // The S3 server down for 20 s while the new trainer resumes.
    assert!(dev_services("down"), "stop Garage");
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert!(dev_services("s3-up"), "start Garage");
    let last_fault_over = Instant::now();

    assert!(
        d.wait_done(job, Duration::from_secs(900)).await,
        "faulted job {job} not done within 15 min:\n{}",
        d.log_tails()
    );
    let faulted_s = started.elapsed().as_secs_f64();
    let recovery_s = last_fault_over.elapsed().as_secs_f64();

    // Same outputs, byte for byte.
    let faulted = outputs(&d, job).await;
    assert_eq!(
        faulted.keys().collect::<Vec<_>>(),
        reference.keys().collect::<Vec<_>>(),
        "the same files"
    );
    let differing: Vec<&String> = faulted
        .iter()
        .filter(|(k, v)| reference.get(*k) != Some(v))
        .map(|(k, _)| k)
        .collect();
    assert!(differing.is_empty(), "files differ: {differing:?}");

    // An operator sees it with `medembed dead-letters list`, and `requeue` hands it back to the
    // (still running) cleaner, which parks it again.
    let cli = |args: &[&str]| {
        let out = Command::new(binary("medembed"))
            .args(args)
            .envs(d.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .output()
            .expect("medembed");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // `status` and `watch` read the distributed job from the store, as for an embedded one.
    let job_id = job.to_string();
    let (report, _) = cli(&["status", &job_id]);
    assert!(
        report.lines().filter(|l| l.contains(" done")).count() >= 5,
        "{report}"
    );
    let (watched, bars) = cli(&["watch", &job_id, "--every", "0.2"]);
    assert!(watched.contains(&format!("job {job_id} done")), "{watched}");
    assert!(bars.contains("train done"), "{bars}");

    let (listed, summary) = cli(&["dead-letters", "list"]);
    assert!(listed.contains("not a clean task"), "{listed}");
    assert!(summary.contains("1 dead-lettered task"), "{summary}");
    let (_, requeued) = cli(&["dead-letters", "requeue", "--stage", "clean"]);
    assert!(requeued.contains("1 task(s) requeued"), "{requeued}");
    let parked_again = medembed_e2e::eventually(Duration::from_secs(60), || async {
        d.queue
            .peek_dead_letters("clean", 10)
            .await
            .is_ok_and(|l| l.len() == 1)
    })
    .await;
    assert!(
        parked_again,
        "the requeued poison message was not parked again"
    );

    // The poison message, and only it, sits in a dead-letter queue.
    let mut dead = Vec::new();
    for queue in QUEUES {
        for letter in d.queue.take_dead_letters(queue, 10).await.expect("dead") {
            dead.push((queue, letter));
        }
    }
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].0, "clean");
    assert_eq!(dead[0].1.body, POISON);

    // The api serves the job's index: a title finds its article.
    let title = "A Novel Coronavirus from Patients with Pneumonia in China, 2019.";
    let hits: serde_json::Value = d
        .http()
        .post(d.api("/api/search"))
        .json(&serde_json::json!({ "query": title, "k": 3, "job": job.to_string() }))
        .send()
        .await
        .expect("search")
        .json()
        .await
        .expect("json");
    assert_eq!(hits["hits"][0]["title"], title, "{hits}");

    // Every work unit of the job was done; how many were done twice.
    let done = completions(&d);
    let lost = done.lost(raw_parts);
    let tasks_completed = done.total();
    let duplicated = done.duplicated();
    let published_by_workers: usize = WORKERS
        .iter()
        .map(|bin| {
            d.log_records(bin)
                .iter()
                .filter(|r| r["message"] == "task published")
                .count()
        })
        .sum();
    d.stop_all();
    println!(
        "tasks_published={} tasks_completed={tasks_completed} lost={} duplicated={duplicated} dead_lettered={} recovery_s={recovery_s:.1} fault_free_s={fault_free_s:.1} faulted_s={faulted_s:.1}",
        published_by_workers + PUBLISHED_BY_TEST,
        lost.len(),
        dead.len()
    );
    assert!(lost.is_empty(), "never completed: {lost:?}");
}
