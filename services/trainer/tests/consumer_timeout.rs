//! Training outlives RabbitMQ's `consumer_timeout` (the broker closes the channel of a delivery left
//! unacked too long and queues the task again). Here the real broker's timeout is cut to 2 s for
//! the duration of the test (and put back after), and a train task that takes far longer runs
//! through a real worker: the model is published once, the redelivered task only re-queues the
//! index task, nothing is dead-lettered and nothing is trained twice.
//!
//! The timeout is a broker-wide setting, so this test lives alone in its test binary (cargo test
//! runs test binaries one after another).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use medembed_corpus::pairs::{Pair, pair_schema, pairs_to_batch};
use medembed_pipeline::config::{QueueBackend, StoreBackend};
use medembed_pipeline::messages::{self, JobId, TrainTask};
use medembed_pipeline::metrics::RunnerMetrics;
use medembed_pipeline::runner::{Worker, WorkerOptions};
use medembed_pipeline::testing::{dev_settings, unique};
use medembed_pipeline::{keys, queue, store, table};
use medembed_trainer::artifacts::ModelMetrics;
use medembed_trainer::data::read_pairs;
use medembed_trainer::stage::TrainStage;
use tokio_util::sync::CancellationToken;

/// Sets the broker's `consumer_timeout` and how often a channel checks it
/// (`channel_tick_interval`, 60 s by default), both in ms; channels opened afterwards use them.
fn set_consumer_timeout(timeout_ms: u64, tick_ms: u64) {
    for (key, value) in [
        ("consumer_timeout", timeout_ms),
        ("channel_tick_interval", tick_ms),
    ] {
        let status = Command::new("rabbitmqctl")
            .args([
                "eval",
                &format!("application:set_env(rabbit, {key}, {value})."),
            ])
            .status()
            .expect("rabbitmqctl runs");
        assert!(status.success(), "rabbitmqctl eval failed");
    }
}

/// Puts the broker's defaults (30 min, checked every 60 s) back, even when the test fails.
struct RestoreTimeout;
impl Drop for RestoreTimeout {
    fn drop(&mut self) {
        set_consumer_timeout(1_800_000, 60_000);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn training_longer_than_the_consumer_timeout_publishes_once() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let minilm = std::env::var("MEDEMBED_TEST_MODEL_DIR").expect("MEDEMBED_TEST_MODEL_DIR");
    let prefix = unique("train-timeout");
    let settings = dev_settings(
        &prefix,
        QueueBackend::Amqp,
        StoreBackend::S3,
        tmp.path(),
        &[
            ("MEDEMBED__TRAIN__BASE_MODEL", minilm.as_str()),
            ("MEDEMBED__TRAIN__DEVICE", "cpu"),
            ("MEDEMBED__TRAIN__BATCH_SIZE", "8"),
            ("MEDEMBED__TRAIN__MAX_SEQ_LENGTH", "64"),
            ("MEDEMBED__TRAIN__EPOCHS", "4"),
            ("MEDEMBED__QUEUE__PREFETCH", "1"),
        ],
    );
    let store = store::open(&settings.store).await.expect("garage");
    let queue = queue::open(&settings.queue).await.expect("rabbitmq");
    for q in ["train", "index"] {
        queue.declare(q).await.expect("declare");
    }

    let job = JobId::new();
    let seed =
        read_pairs(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/train_small.csv"))
            .expect("seed pairs");
    for (name, rows) in [
        ("train.parquet", &seed[..120]),
        ("val.parquet", &seed[120..150]),
    ] {
        let pairs: Vec<Pair> = rows
            .iter()
            .enumerate()
            .map(|(i, p)| Pair {
                id_a: format!("pmid:{name}{}", 2 * i),
                id_b: format!("pmid:{name}{}", 2 * i + 1),
                text_a: p.text_a.clone(),
                text_b: p.text_b.clone(),
                label: p.label,
                source: "mesh".into(),
                score: 1.0,
            })
            .collect();
        let key = keys::pairs_file(job, name);
        let batch = pairs_to_batch(&key, &pairs).expect("batch");
        table::write(store.as_ref(), &key, &pair_schema(), &[batch])
            .await
            .expect("pairs");
    }

    set_consumer_timeout(2_000, 500);
    let _restore = RestoreTimeout;
    let registry = prometheus::Registry::new();
    let stage = TrainStage::new(&settings, &registry).expect("stage");
    let worker = Worker::new(
        stage,
        queue.clone(),
        store.clone(),
        RunnerMetrics::register(&registry).expect("metrics"),
        WorkerOptions::from_settings(&settings),
    );
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(worker.run(shutdown.clone()));
    let started = Instant::now();
    queue
        .publish("train", &messages::encode(&TrainTask { job_id: job }))
        .await
        .expect("publish");

    // The first run publishes the model and an index task; the task the broker took back comes
    // again, finds the model and queues the index task once more.
    let metrics_key = format!("{}metrics.json", keys::model_prefix(job));
    let mut deadline = Instant::now() + Duration::from_secs(300);
    let mut seen_published = false;
    loop {
        let published = store.exists(&metrics_key).await.expect("head");
        let index = queue.depth("index").await.expect("depth");
        if published && index >= 2 && queue.depth("train").await.expect("depth") == 0 {
            break;
        }
        if published && !seen_published {
            // The redelivered task should follow within seconds of the model.
            seen_published = true;
            deadline = Instant::now() + Duration::from_secs(60);
        }
        assert!(
            Instant::now() < deadline,
            "timed out: model published {published}, index tasks {index} (the broker never took the task back?)"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let took = started.elapsed();
    shutdown.cancel();
    running.await.expect("worker").expect("worker ran");

    let metrics: ModelMetrics =
        serde_json::from_slice(&store.get(&metrics_key).await.expect("metrics")).expect("json");
    println!(
        "trained {} steps in {:.1} s (task took {:.1} s, consumer_timeout 2 s)",
        metrics.optimizer_steps,
        metrics.train_seconds,
        took.as_secs_f64()
    );
    assert!(
        took > Duration::from_secs(10),
        "the training must outlast the timeout for this test to mean anything"
    );
    assert_eq!(metrics.resumes, 0, "trained once, never restarted");
    let outcome = registry
        .gather()
        .into_iter()
        .find(|f| f.name() == "medembed_tasks_total")
        .expect("task counter");
    let dead: f64 = outcome
        .get_metric()
        .iter()
        .filter(|m| m.get_label().iter().any(|l| l.value() == "dead_lettered"))
        .map(|m| m.get_counter().get_value())
        .sum();
    assert_eq!(dead, 0.0, "nothing dead-lettered");
    assert!(
        queue
            .take_dead_letters("train", 10)
            .await
            .expect("dead")
            .is_empty(),
        "no train task in the dead queue"
    );
    queue.close().await;
}
