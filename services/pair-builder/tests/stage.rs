//! The pairs stage's barrier and its bad input: checks before the fetch is complete, corrupt
//! manifests and clean parts (permanent errors naming the object), and a corpus with nothing to
//! train on (the job stops with the reason in its status, no train task).

use std::sync::Arc;

use bytes::Bytes;
use medembed_corpus::clean::{self, CleanArticle, clean_schema};
use medembed_corpus::raw::{RawManifest, RawPartInfo};
use medembed_pair_builder::stage::PairStage;
use medembed_pipeline::config::Settings;
use medembed_pipeline::messages::{JobId, PairsCheck};
use medembed_pipeline::runner::{Stage, StageError, TaskContext};
use medembed_pipeline::status::{StageState, StageStatus};
use medembed_pipeline::store::{LocalStore, ObjectStore};
use medembed_pipeline::{keys, table};

fn setup() -> (tempfile::TempDir, Arc<dyn ObjectStore>, PairStage) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(dir.path()).expect("store"));
    let stage = PairStage::new(
        &Settings::load(None).expect("defaults"),
        &prometheus::Registry::new(),
    )
    .expect("stage");
    (dir, store, stage)
}

fn ctx(store: &Arc<dyn ObjectStore>) -> TaskContext {
    TaskContext {
        store: store.clone(),
        attempt: 1,
        redelivered: false,
        shutdown: Default::default(),
    }
}

async fn put_manifest(store: &dyn ObjectStore, job: JobId, parts: u32) {
    let parts = (0..parts)
        .map(|part| RawPartInfo {
            part,
            key: keys::raw_part(job, part),
            articles: 1,
        })
        .collect();
    RawManifest::new(job, parts)
        .save(store)
        .await
        .expect("manifest");
}

#[tokio::test]
async fn checks_before_the_fetch_or_cleaning_completes_do_nothing() {
    let (_dir, store, stage) = setup();
    let job = JobId::new();
    let check = PairsCheck { job_id: job };
    assert!(
        stage
            .process(check.clone(), &ctx(&store))
            .await
            .expect("no manifest")
            .is_empty()
    );
    put_manifest(store.as_ref(), job, 2).await;
    assert!(
        stage
            .process(check, &ctx(&store))
            .await
            .expect("no clean parts")
            .is_empty()
    );
    assert!(
        store
            .list(&format!("jobs/{job}/pairs/"))
            .await
            .expect("list")
            .is_empty()
    );
}

#[tokio::test]
async fn a_corrupt_manifest_or_clean_part_is_a_permanent_error_naming_it() {
    let (_dir, store, stage) = setup();
    let job = JobId::new();
    store
        .put(
            &keys::raw_manifest(job),
            Bytes::from_static(b"{\"parts\": 7"),
        )
        .await
        .expect("put");
    let err = stage
        .process(PairsCheck { job_id: job }, &ctx(&store))
        .await
        .expect_err("bad manifest");
    assert!(
        matches!(&err, StageError::Permanent(m) if m.contains("_manifest.json")),
        "{err}"
    );

    let job = JobId::new();
    put_manifest(store.as_ref(), job, 1).await;
    store
        .put(&keys::clean_part(job, 0), Bytes::from(vec![0u8; 4096]))
        .await
        .expect("put");
    let err = stage
        .process(PairsCheck { job_id: job }, &ctx(&store))
        .await
        .expect_err("bad part");
    assert!(
        matches!(&err, StageError::Permanent(m) if m.contains("clean/part-00000.parquet")),
        "{err}"
    );
    assert!(
        !store
            .exists(&keys::pairs_file(job, "stats.json"))
            .await
            .expect("head")
    );
}

#[tokio::test]
async fn a_corpus_with_nothing_to_train_on_goes_on_to_the_trainer_with_a_warning() {
    let (_dir, store, stage) = setup();
    let job = JobId::new();
    put_manifest(store.as_ref(), job, 1).await;
    let key = keys::clean_part(job, 0);
    let lonely = CleanArticle {
        id: "pmid:1".into(),
        pmid: Some("1".into()),
        title: "A lone article".into(),
        text: "A lone article with no relation to any other.".into(),
        content_hash: "0000000000000001".into(),
        ..CleanArticle::default()
    };
    let batch = clean::to_batch(&key, &[lonely]).expect("batch");
    table::write(store.as_ref(), &key, &clean_schema(), &[batch])
        .await
        .expect("write");

    let out = stage
        .process(PairsCheck { job_id: job }, &ctx(&store))
        .await
        .expect("built");
    // The train task still goes out: the trainer publishes the base model and the job is
    // indexed with it.
    assert_eq!(out.len(), 1, "one train task");
    let status = StageStatus::load(store.as_ref(), job, "pairs")
        .await
        .expect("status");
    assert_eq!(status.state, StageState::Done);
    assert_eq!(status.last_error, None);
    assert!(
        status
            .warnings
            .iter()
            .any(|w| w.contains("no positive training pairs") && w.contains("base model")),
        "{:?}",
        status.warnings
    );
    for name in ["stats.json", "train.parquet"] {
        assert!(
            store
                .exists(&keys::pairs_file(job, name))
                .await
                .expect("head"),
            "{name}"
        );
    }
}
