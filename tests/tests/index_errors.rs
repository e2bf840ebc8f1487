//! The index stages given bad or missing input: each is a permanent error naming what is wrong
//! (the job, the object, the field), and nothing already written is damaged.

use std::sync::Arc;

use bytes::Bytes;
use medembed_corpus::clean::{self, CleanArticle, clean_schema};
use medembed_corpus::raw::{RawManifest, RawPartInfo};
use medembed_e2e::fixture_job::{IndexStages, ctx, publish_minilm};
use medembed_indexer::stage::MANIFEST;
use medembed_indexer::tables::{embedding_schema, embeddings_to_batch};
use medembed_pipeline::config::{QueueBackend, Settings, StoreBackend};
use medembed_pipeline::messages::{BuildIndexCheck, EmbedTask, IndexTask, JobId};
use medembed_pipeline::runner::{Stage, StageError};
use medembed_pipeline::store::{LocalStore, ObjectStore};
use medembed_pipeline::{keys, table, testing};

fn setup() -> (tempfile::TempDir, Arc<dyn ObjectStore>, Settings) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store: Arc<dyn ObjectStore> =
        Arc::new(LocalStore::new(dir.path().join("store")).expect("store"));
    let settings = testing::dev_settings(
        &testing::unique("index-errors"),
        QueueBackend::Memory,
        StoreBackend::Local,
        &dir.path().join("store"),
        &[],
    );
    (dir, store, settings)
}

fn article(id: &str, text: &str) -> CleanArticle {
    CleanArticle {
        id: id.into(),
        title: text.into(),
        abstract_text: text.into(),
        text: text.into(),
        content_hash: id.into(),
        ..CleanArticle::default()
    }
}

/// A job with two clean parts of two articles each (one id in both) and a manifest.
async fn two_parts(store: &dyn ObjectStore) -> JobId {
    let job = JobId::new();
    let mut parts = Vec::new();
    for part in 0..2u32 {
        // "a0" is in both parts (a duplicate the build keeps once).
        let rows = vec![
            article("a0", "Checkpoint inhibitors in melanoma."),
            article(&format!("b{part}"), "Malaria vaccine trials in children."),
        ];
        let key = keys::clean_part(job, part);
        let batch = clean::to_batch(&key, &rows).expect("batch");
        table::write(store, &key, &clean_schema(), &[batch])
            .await
            .expect("clean part");
        parts.push(RawPartInfo {
            part,
            key: keys::raw_part(job, part),
            articles: 2,
        });
    }
    RawManifest::new(job, parts)
        .save(store)
        .await
        .expect("manifest");
    job
}

fn permanent(result: Result<impl std::fmt::Debug, StageError>, needles: &[&str]) {
    match result {
        Err(StageError::Permanent(message)) => {
            for n in needles {
                assert!(message.contains(n), "{message:?} should name {n:?}");
            }
        }
        other => panic!("expected a permanent error naming {needles:?}, got {other:?}"),
    }
}

#[tokio::test]
async fn missing_inputs_are_named() {
    let (_dir, store, settings) = setup();
    let stages = IndexStages::new(&settings);
    let job = two_parts(store.as_ref()).await;
    // No model yet.
    permanent(
        stages
            .index
            .process(IndexTask { job_id: job }, &ctx(&store))
            .await,
        &[&job.to_string(), "no model"],
    );
    // An embed task before any plan.
    permanent(
        stages
            .embed
            .process(
                EmbedTask {
                    job_id: job,
                    part: 0,
                },
                &ctx(&store),
            )
            .await,
        &["_plan.json"],
    );
    // A model but no manifest.
    let other = JobId::new();
    publish_minilm(store.as_ref(), other).await;
    permanent(
        stages
            .index
            .process(IndexTask { job_id: other }, &ctx(&store))
            .await,
        &["_manifest.json", "fetch has not finished"],
    );
}

#[tokio::test]
async fn corrupt_parts_are_named_and_nothing_is_half_built() {
    let (_dir, store, settings) = setup();
    let stages = IndexStages::new(&settings);
    let job = two_parts(store.as_ref()).await;
    publish_minilm(store.as_ref(), job).await;
    stages
        .index
        .process(IndexTask { job_id: job }, &ctx(&store))
        .await
        .expect("planned");

    // A clean part that is not Parquet: the embed task names it.
    let clean_key = keys::clean_part(job, 1);
    let good = store.get(&clean_key).await.expect("part");
    store
        .put(&clean_key, Bytes::from_static(b"PAR1 not really"))
        .await
        .expect("put");
    permanent(
        stages
            .embed
            .process(
                EmbedTask {
                    job_id: job,
                    part: 1,
                },
                &ctx(&store),
            )
            .await,
        &[&clean_key],
    );
    store.put(&clean_key, good).await.expect("restore");

    // Embeddings of the wrong dimension (another model wrote them): the build names the part
    // and the field, and writes no index.
    stages
        .embed
        .process(
            EmbedTask {
                job_id: job,
                part: 0,
            },
            &ctx(&store),
        )
        .await
        .expect("part 0");
    let wrong = embeddings_to_batch(
        &["a0".to_string(), "b1".to_string()],
        &[vec![0.5; 8], vec![0.25; 8]],
        8,
    )
    .expect("batch");
    let part1 = keys::embedding_part(job, 1);
    table::write(store.as_ref(), &part1, &embedding_schema(8), &[wrong])
        .await
        .expect("write");
    permanent(
        stages
            .build
            .process(BuildIndexCheck { job_id: job }, &ctx(&store))
            .await,
        &[&part1, "vector"],
    );
    assert!(
        !store
            .exists(&keys::index_file(job, MANIFEST))
            .await
            .expect("head"),
        "no manifest after a failed build"
    );

    // Fixed, the build completes; duplicate ids across parts are kept once.
    store.delete(&part1).await.expect("delete");
    stages
        .embed
        .process(
            EmbedTask {
                job_id: job,
                part: 1,
            },
            &ctx(&store),
        )
        .await
        .expect("part 1");
    stages
        .build
        .process(BuildIndexCheck { job_id: job }, &ctx(&store))
        .await
        .expect("build");
    let manifest: serde_json::Value = serde_json::from_slice(
        &store
            .get(&keys::index_file(job, MANIFEST))
            .await
            .expect("manifest"),
    )
    .expect("json");
    assert_eq!(manifest["documents"], 3);
    assert_eq!(manifest["duplicates"], 1);
}
