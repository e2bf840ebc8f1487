//! `medembed submit` and `medembed status` as a user runs them, against the real RabbitMQ and
//! Garage, with a fetch worker taking the job from the queue.

use std::process::Command;
use std::time::{Duration, Instant};

use medembed_fetcher::raw::RawManifest;
use medembed_fetcher::stage::FetchStage;
use medembed_pipeline::config::{QueueBackend, Settings, StoreBackend};
use medembed_pipeline::messages::{CleanTask, FetchTask, JobId, JobSpec, PairsCheck, TaskMessage};
use medembed_pipeline::metrics::RunnerMetrics;
use medembed_pipeline::runner::{Worker, WorkerOptions};
use medembed_pipeline::{keys, queue, store, testing};

const MEDEMBED: &str = env!("CARGO_BIN_EXE_medembed");
const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../fetcher/tests/fixtures");

fn medembed(env: &[(String, String)], args: &[&str]) -> (bool, String, String) {
    let out = Command::new(MEDEMBED)
        .args(args)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env_remove("RUST_BACKTRACE")
        .output()
        .expect("run medembed");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_queues_a_job_that_a_fetch_worker_completes_and_status_reports() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut env = testing::dev_env(
        &testing::unique("cli"),
        QueueBackend::Amqp,
        StoreBackend::S3,
        dir.path(),
    );
    env.push(("MEDEMBED__FETCH__ARTICLES_PER_PART".into(), "10".into()));
    let settings = Settings::load_with_env(None, env.clone()).expect("settings");
    let store = store::open(&settings.store).await.expect("store");
    let queue = queue::open(&settings.queue).await.expect("queue");

    let source = format!("files:{FIXTURES}/pubmed");
    let (ok, stdout, stderr) = medembed(
        &env,
        &[
            "submit",
            "--query",
            "fixtures",
            "--db",
            "pubmed",
            "--source",
            &source,
            "--from",
            "1970",
            "--to",
            "2025/06",
            "--max-articles",
            "25",
        ],
    );
    assert!(ok, "{stderr}");
    let job: JobId = stdout.trim().parse().expect("submit prints the job id");
    let spec: JobSpec =
        serde_json::from_slice(&store.get(&keys::job_spec(job)).await.expect("job.json"))
            .expect("spec");
    assert_eq!(spec.max_articles, 25);
    assert_eq!(queue.depth(FetchTask::QUEUE).await.expect("depth"), 1);
    let (ok, before, _) = medembed(&env, &["status", &job.to_string()]);
    assert!(ok && before.contains("fetch  pending"), "{before}");

    // A fetch worker takes it from the queue.
    let registry = prometheus::Registry::new();
    let stage = FetchStage::new(&settings, &registry).expect("stage");
    let worker = Worker::new(
        stage,
        queue.clone(),
        store.clone(),
        RunnerMetrics::register(&registry).expect("metrics"),
        WorkerOptions::from_settings(&settings),
    );
    let stop = tokio_util::sync::CancellationToken::new();
    let running = tokio::spawn(worker.run(stop.clone()));
    let deadline = Instant::now() + Duration::from_secs(60);
    while !store
        .exists(&keys::raw_manifest(job))
        .await
        .expect("exists")
    {
        assert!(Instant::now() < deadline, "no manifest within 60 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Give the worker a moment to publish the follow-up tasks and ack.
    let deadline = Instant::now() + Duration::from_secs(20);
    while queue.depth(PairsCheck::QUEUE).await.expect("depth") == 0 {
        assert!(Instant::now() < deadline, "no pairs check published");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.cancel();
    running.await.expect("no panic").expect("worker ran");

    let manifest: RawManifest =
        serde_json::from_slice(&store.get(&keys::raw_manifest(job)).await.expect("manifest"))
            .expect("json");
    assert_eq!(manifest.articles, 25, "capped at --max-articles");
    assert_eq!(manifest.parts.len(), 3);
    assert_eq!(
        queue.depth(CleanTask::QUEUE).await.expect("depth"),
        3,
        "one clean task per part"
    );
    assert_eq!(
        queue.depth(FetchTask::QUEUE).await.expect("depth"),
        0,
        "the fetch task was acked"
    );
    let (ok, after, stderr) = medembed(&env, &["status", &job.to_string()]);
    assert!(ok, "{stderr}");
    assert!(
        after.contains("fetch  done") && after.contains("articles=25") && after.contains("parts=3"),
        "{after}"
    );
    let (ok, list, _) = medembed(&env, &["status"]);
    assert!(ok && list.contains(&job.to_string()), "{list}");
    queue.close().await;
}

#[test]
fn bad_arguments_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let env = testing::dev_env(
        &testing::unique("cli-bad"),
        QueueBackend::Amqp,
        StoreBackend::S3,
        dir.path(),
    );
    let cases: &[(&[&str], &str)] = &[
        (
            &["submit", "--query", "x", "--from", "2024", "--to", "2020"],
            "--from: 2024 is after to 2020",
        ),
        (
            &["submit", "--query", "x", "--from", "2024/13"],
            "--from: \"2024/13\" is not a date",
        ),
        (
            &["submit", "--query", "x", "--max-articles", "0"],
            "--max-articles: must be 1..=",
        ),
        (
            &["submit", "--query", "x", "--db", "embase"],
            "invalid value 'embase'",
        ),
        (
            &["submit", "--query", "x", "--source", "ftp://x"],
            "--source: source \"ftp://x\": expected `eutils` or `files:PATH`",
        ),
        (&["submit", "--query", "  "], "--query: is empty"),
        (&["status", "not-a-job"], "not a job id"),
        (&["status", "01JDZ8Q4V5W3XK1N2M3P4R5S6T"], "does not exist"),
    ];
    for (args, expected) in cases {
        let (ok, _, stderr) = medembed(&env, args);
        assert!(!ok, "{args:?} must fail");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
    let mut memory = env.clone();
    memory.push(("MEDEMBED__QUEUE__BACKEND".into(), "memory".into()));
    let (ok, _, stderr) = medembed(&memory, &["submit", "--query", "x"]);
    assert!(
        !ok && stderr.contains("queue.backend is \"memory\""),
        "{stderr}"
    );
}
