//! The train stage against the real S3 server (Garage, from deploy/dev/services): a job's pairs in
//! the store become a published model folder and an index task; a published model is not trained
//! again; a fresh lease of another trainer defers the task, a stale one is taken over; bad pairs
//! are permanent errors that name the object.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use medembed_corpus::pairs::{Pair, pair_schema, pairs_to_batch};
use medembed_model::testing::write_tiny_random_model;
use medembed_pipeline::config::{QueueBackend, StoreBackend};
use medembed_pipeline::messages::{IndexTask, JobId, TrainTask};
use medembed_pipeline::runner::{Outgoing, Stage, StageError, TaskContext};
use medembed_pipeline::status::{StageState, StageStatus};
use medembed_pipeline::store::{self, ObjectStore};
use medembed_pipeline::testing::{dev_settings, unique};
use medembed_pipeline::{keys, table};
use medembed_trainer::artifacts::ModelMetrics;
use medembed_trainer::data::read_pairs;
use medembed_trainer::stage::TrainStage;

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn ctx(store: &Arc<dyn ObjectStore>, redelivered: bool) -> TaskContext {
    TaskContext {
        store: store.clone(),
        attempt: 1,
        redelivered,
        shutdown: Default::default(),
    }
}

/// Writes seed pairs as the pair-builder would: train (80), val and test (30 each) Parquet.
async fn put_pairs(store: &dyn ObjectStore, job: JobId) {
    let seed = read_pairs(&fixture("train_small.csv")).expect("seed pairs");
    let as_pairs = |rows: &[medembed_trainer::data::LabelledPair], offset: usize| -> Vec<Pair> {
        rows.iter()
            .enumerate()
            .map(|(i, p)| Pair {
                id_a: format!("pmid:{}", offset + 2 * i),
                id_b: format!("pmid:{}", offset + 2 * i + 1),
                text_a: p.text_a.clone(),
                text_b: p.text_b.clone(),
                label: p.label,
                source: if p.label >= 0.5 { "mesh" } else { "random" }.into(),
                score: p.label,
            })
            .collect()
    };
    for (name, rows, offset) in [
        ("train.parquet", &seed[..80], 0),
        ("val.parquet", &seed[80..110], 1000),
        ("test.parquet", &seed[110..140], 2000),
    ] {
        let key = keys::pairs_file(job, name);
        let batch = pairs_to_batch(&key, &as_pairs(rows, offset)).expect("batch");
        table::write(store, &key, &pair_schema(), &[batch])
            .await
            .expect("pairs written");
    }
}

struct Setup {
    _tmp: tempfile::TempDir,
    store: Arc<dyn ObjectStore>,
    stage: TrainStage,
}

async fn setup(lease_secs: &str) -> Setup {
    let tmp = tempfile::tempdir().expect("tempdir");
    let base = tmp.path().join("base");
    let minilm = std::env::var("MEDEMBED_TEST_MODEL_DIR").expect("MEDEMBED_TEST_MODEL_DIR");
    write_tiny_random_model(&base, Path::new(&minilm), 32, 2, 3).expect("tiny model");
    let base = base.display().to_string();
    let settings = dev_settings(
        &unique("train"),
        QueueBackend::Memory,
        StoreBackend::S3,
        tmp.path(),
        &[
            ("MEDEMBED__TRAIN__BASE_MODEL", base.as_str()),
            ("MEDEMBED__TRAIN__DEVICE", "cpu"),
            ("MEDEMBED__TRAIN__BATCH_SIZE", "8"),
            ("MEDEMBED__TRAIN__MAX_SEQ_LENGTH", "32"),
            ("MEDEMBED__TRAIN__LEARNING_RATE", "0.001"),
            ("MEDEMBED__TRAIN__LEASE_SECS", lease_secs),
        ],
    );
    let store = store::open(&settings.store).await.expect("garage");
    let stage = TrainStage::new(&settings, &prometheus::Registry::new()).expect("stage");
    Setup {
        _tmp: tmp,
        store,
        stage,
    }
}

fn is_index_task(out: &[Outgoing], job: JobId) -> bool {
    out.len() == 1
        && out[0].queue == "index"
        && serde_json::from_slice::<serde_json::Value>(&out[0].body).expect("json")["job_id"]
            == job.to_string()
        && medembed_pipeline::messages::decode::<IndexTask>(&out[0].body).is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pairs_in_the_store_become_a_published_model_once() {
    let s = setup("60").await;
    let job = JobId::new();
    put_pairs(s.store.as_ref(), job).await;
    let task = TrainTask { job_id: job };

    let out = s
        .stage
        .process(task.clone(), &ctx(&s.store, false))
        .await
        .expect("trains");
    assert!(is_index_task(&out, job), "queues the index task");
    let model = keys::model_prefix(job);
    let files: Vec<String> = s
        .store
        .list(&model)
        .await
        .expect("list")
        .into_iter()
        .map(|m| m.key[model.len()..].to_string())
        .collect();
    for wanted in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "modules.json",
        "1_Pooling/config.json",
        "README.md",
        "metrics.json",
        "training_log.parquet",
        "training_curves.png",
        "similarity_distribution.png",
    ] {
        assert!(
            files.iter().any(|f| f == wanted),
            "{wanted} missing from {files:?}"
        );
    }
    let metrics: ModelMetrics = serde_json::from_slice(
        &s.store
            .get(&format!("{model}metrics.json"))
            .await
            .expect("metrics"),
    )
    .expect("metrics.json");
    assert_eq!(metrics.data.train_pairs, 80);
    assert!(metrics.optimizer_steps > 0);
    assert!(metrics.baseline.val.queries > 0 && metrics.fine_tuned.val.corpus > 0);
    let status = StageStatus::load(s.store.as_ref(), job, "train")
        .await
        .expect("status");
    assert_eq!(status.state, StageState::Done);
    assert_eq!(status.done, metrics.optimizer_steps as u64);
    assert_eq!(status.unit, "steps");
    assert!(
        !s.store
            .exists(&keys::train_file(job, "lease.json"))
            .await
            .expect("head"),
        "the lease is released"
    );
    let checkpoints = s
        .store
        .list(&keys::train_file(job, "checkpoints/"))
        .await
        .expect("list");
    assert!(checkpoints.iter().any(|m| m.key.ends_with("latest.json")));

    // Published already: a duplicate does nothing, a redelivery re-queues the index task only.
    let again = s
        .stage
        .process(task.clone(), &ctx(&s.store, false))
        .await
        .expect("duplicate");
    assert!(again.is_empty());
    let redelivered = s
        .stage
        .process(task, &ctx(&s.store, true))
        .await
        .expect("redelivery");
    assert!(is_index_task(&redelivered, job));
    let same: ModelMetrics = serde_json::from_slice(
        &s.store
            .get(&format!("{model}metrics.json"))
            .await
            .expect("metrics"),
    )
    .expect("metrics.json");
    assert_eq!(same.created_at, metrics.created_at, "not trained twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_positive_pairs_publish_the_base_model_unchanged_and_say_why() {
    let s = setup("60").await;
    let job = JobId::new();
    put_pairs(s.store.as_ref(), job).await;
    // Only the negatives of the training split are left.
    let key = keys::pairs_file(job, "train.parquet");
    let negatives: Vec<Pair> = table::read(s.store.as_ref(), &key, &pair_schema())
        .await
        .map(|b| medembed_corpus::pairs::pairs_from_batches(&key, &b).expect("pairs"))
        .expect("read")
        .into_iter()
        .filter(|p| p.label < 0.5)
        .collect();
    assert!(!negatives.is_empty());
    let batch = pairs_to_batch(&key, &negatives).expect("batch");
    table::write(s.store.as_ref(), &key, &pair_schema(), &[batch])
        .await
        .expect("written");

    let out = s
        .stage
        .process(TrainTask { job_id: job }, &ctx(&s.store, false))
        .await
        .expect("publishes the base model");
    assert!(is_index_task(&out, job), "the job goes on to be indexed");
    let model = keys::model_prefix(job);
    let metrics: ModelMetrics = store::read_json(s.store.as_ref(), &format!("{model}metrics.json"))
        .await
        .expect("read")
        .expect("metrics.json");
    assert_eq!(metrics.optimizer_steps, 0);
    assert_eq!(metrics.data.train_pairs, negatives.len());
    let reason = metrics.not_trained.expect("says it did not train");
    assert!(reason.contains("no positive training pairs"), "{reason}");
    // A whole model folder (the base weights as the encoder saves them), with a card.
    for file in [
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        "README.md",
    ] {
        assert!(
            s.store
                .exists(&format!("{model}{file}"))
                .await
                .expect("head"),
            "{file}"
        );
    }
    let card = s
        .store
        .get(&format!("{model}README.md"))
        .await
        .expect("card");
    assert!(String::from_utf8_lossy(&card).contains("not fine-tuned"));
    let status = StageStatus::load(s.store.as_ref(), job, "train")
        .await
        .expect("status");
    assert_eq!(status.state, StageState::Done);
    assert!(
        status
            .warnings
            .iter()
            .any(|w| w.starts_with("not trained:")),
        "{:?}",
        status.warnings
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_lease_of_another_trainer_defers_a_stale_one_is_taken_over() {
    let s = setup("60").await;
    let job = JobId::new();
    put_pairs(s.store.as_ref(), job).await;
    let lease_key = keys::train_file(job, "lease.json");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let lease = |age: u64| {
        Bytes::from(format!(
            r#"{{"owner":"trainer-b-42","renewed_unix":{}}}"#,
            now - age
        ))
    };
    s.store.put(&lease_key, lease(5)).await.expect("lease");
    let err = s
        .stage
        .process(TrainTask { job_id: job }, &ctx(&s.store, true))
        .await
        .expect_err("deferred");
    assert!(
        matches!(&err, StageError::Deferred(m) if m.contains("trainer-b-42")),
        "{err}"
    );
    assert!(
        !s.store
            .exists(&format!("{}metrics.json", keys::model_prefix(job)))
            .await
            .expect("head")
    );

    s.store.put(&lease_key, lease(600)).await.expect("lease");
    let out = s
        .stage
        .process(TrainTask { job_id: job }, &ctx(&s.store, true))
        .await
        .expect("a stale lease is taken over");
    assert!(is_index_task(&out, job));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_or_corrupt_pairs_are_permanent_errors_naming_the_object() {
    let s = setup("60").await;
    let job = JobId::new();
    let err = s
        .stage
        .process(TrainTask { job_id: job }, &ctx(&s.store, false))
        .await
        .expect_err("no pairs");
    assert!(
        matches!(&err, StageError::Permanent(m) if m.contains("pairs/train.parquet")),
        "{err}"
    );
    s.store
        .put(
            &keys::pairs_file(job, "train.parquet"),
            Bytes::from_static(b"PAR1 not parquet"),
        )
        .await
        .expect("put");
    let err = s
        .stage
        .process(TrainTask { job_id: job }, &ctx(&s.store, false))
        .await
        .expect_err("corrupt pairs");
    assert!(
        matches!(&err, StageError::Permanent(m) if m.contains("train.parquet")),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_base_model_under_an_s3_prefix_is_downloaded_and_loads() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let minilm = std::env::var("MEDEMBED_TEST_MODEL_DIR").expect("MEDEMBED_TEST_MODEL_DIR");
    let model = tmp.path().join("tiny");
    write_tiny_random_model(&model, Path::new(&minilm), 32, 1, 9).expect("tiny model");
    let prefix = unique("base-model");
    let settings = dev_settings(
        &prefix,
        QueueBackend::Memory,
        StoreBackend::S3,
        tmp.path(),
        &[],
    );
    // The store prefix is the deployment's; an s3:// URL names bucket and key prefix itself.
    let store = store::open(&settings.store).await.expect("garage");
    store::upload_dir(store.as_ref(), &model, "models/tiny", None)
        .await
        .expect("upload");
    let url = format!("s3://{}/{prefix}/models/tiny", settings.store.bucket);
    let hub = medembed_model::hub::Hub::new("http://127.0.0.1:9", &tmp.path().join("hf"), None);
    let dir = medembed_trainer::stage::resolve_base_model(&url, &hub, &settings.store)
        .await
        .expect("s3 base model");
    let text = ["anti-PD-1 therapy"];
    assert_eq!(
        medembed_model::SentenceEncoder::load(&dir, tch::Device::Cpu)
            .expect("downloaded folder loads")
            .encode(&text)
            .expect("encode"),
        medembed_model::SentenceEncoder::load(&model, tch::Device::Cpu)
            .expect("original")
            .encode(&text)
            .expect("encode")
    );
    let missing = format!("s3://{}/{prefix}/models/none", settings.store.bucket);
    let err = medembed_trainer::stage::resolve_base_model(&missing, &hub, &settings.store)
        .await
        .expect_err("empty prefix");
    assert!(
        err.to_string().contains("no objects under that prefix"),
        "{err}"
    );
}
