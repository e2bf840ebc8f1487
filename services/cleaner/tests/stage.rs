//! The clean stage over a local store: outputs, idempotent redelivery, and bad input (a missing
//! part, a part of the wrong shape, pathological text) failing with errors that name the thing.

use std::sync::Arc;

use bytes::Bytes;
use medembed_cleaner::TextRules;
use medembed_cleaner::stage::CleanStage;
use medembed_corpus::clean::{self, CleanPartStats, clean_schema};
use medembed_corpus::raw::{self, raw_schema};
use medembed_corpus::{RawArticle, Section};
use medembed_pipeline::config::Settings;
use medembed_pipeline::messages::{CleanTask, JobId, PairsCheck};
use medembed_pipeline::runner::{Stage, StageError, TaskContext};
use medembed_pipeline::store::{LocalStore, ObjectStore};
use medembed_pipeline::{keys, messages, table};

fn setup() -> (tempfile::TempDir, Arc<dyn ObjectStore>, CleanStage) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(dir.path()).expect("store"));
    let stage = CleanStage::new(
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

fn article(id: &str, abstract_text: &str) -> RawArticle {
    RawArticle {
        id: format!("pmid:{id}"),
        pmid: Some(id.into()),
        title: "Programmed cell death protein 1 blockade in melanoma".into(),
        abstract_text: abstract_text.into(),
        ..RawArticle::default()
    }
}

async fn put_raw(store: &dyn ObjectStore, job: JobId, part: u32, articles: &[RawArticle]) {
    let key = keys::raw_part(job, part);
    let batch = raw::to_batch(&key, articles).expect("batch");
    table::write(store, &key, &raw_schema(), &[batch])
        .await
        .expect("write raw part");
}

#[tokio::test]
async fn a_part_is_cleaned_once_and_a_redelivery_rewrites_the_same_bytes() {
    let (_dir, store, stage) = setup();
    let job = JobId::new();
    let text = "Blockade of programmed cell death protein 1 (PD-1) restores T-cell function [1, 2]. \
                Responses were durable (Fig. 2A-C) in 45 of 120 patients (37.5%; 95% CI 29-46).";
    put_raw(
        store.as_ref(),
        job,
        3,
        &[article("1", text), article("1", text)],
    )
    .await;
    let task = CleanTask {
        job_id: job,
        part: 3,
    };
    let out = stage
        .process(task.clone(), &ctx(&store))
        .await
        .expect("clean");
    assert_eq!(out.len(), 1);
    assert_eq!(
        messages::decode::<PairsCheck>(&out[0].body).expect("check"),
        PairsCheck { job_id: job }
    );

    let key = keys::clean_part(job, 3);
    let first = store.get(&key).await.expect("clean part");
    let rows = clean::from_batches(
        &key,
        &table::decode(&key, first.clone(), &clean_schema()).expect("decode"),
    )
    .expect("rows");
    assert_eq!(rows.len(), 1, "the duplicate is dropped");
    assert_eq!(
        rows[0].abstract_text,
        "Blockade of programmed cell death protein 1 (PD-1) restores T-cell function. \
         Responses were durable in 45 of 120 patients (37.5%; 95% CI 29-46)."
    );
    assert_eq!(rows[0].abbreviations[0].short, "PD-1");
    let stats: CleanPartStats = serde_json::from_slice(
        &store
            .get(&keys::clean_part_stats(job, 3))
            .await
            .expect("stats"),
    )
    .expect("json");
    assert_eq!(
        (stats.input, stats.kept, stats.dropped["duplicate_id"]),
        (2, 1, 1)
    );

    stage
        .process(task, &ctx(&store))
        .await
        .expect("redelivered");
    assert_eq!(
        store.get(&key).await.expect("clean part"),
        first,
        "same bytes on redelivery"
    );
}

#[tokio::test]
async fn a_missing_or_malformed_raw_part_is_a_permanent_error_naming_it() {
    let (_dir, store, stage) = setup();
    let job = JobId::new();
    let missing = stage
        .process(
            CleanTask {
                job_id: job,
                part: 9,
            },
            &ctx(&store),
        )
        .await
        .expect_err("no raw part");
    assert!(
        matches!(&missing, StageError::Permanent(m) if m.contains("part-00009.parquet")),
        "{missing}"
    );

    // Not Parquet at all.
    store
        .put(
            &keys::raw_part(job, 1),
            Bytes::from_static(b"<html>not parquet</html>"),
        )
        .await
        .expect("put");
    let garbage = stage
        .process(
            CleanTask {
                job_id: job,
                part: 1,
            },
            &ctx(&store),
        )
        .await
        .expect_err("garbage");
    assert!(
        matches!(&garbage, StageError::Permanent(m) if m.contains("part-00001.parquet")),
        "{garbage}"
    );

    // Parquet of another table (a clean part where a raw part should be): names the field.
    let key = keys::raw_part(job, 2);
    let batch = clean::to_batch(&key, &[]).expect("batch");
    table::write(store.as_ref(), &key, &clean_schema(), &[batch])
        .await
        .expect("write");
    let wrong = stage
        .process(
            CleanTask {
                job_id: job,
                part: 2,
            },
            &ctx(&store),
        )
        .await
        .expect_err("wrong schema");
    assert!(
        matches!(&wrong, StageError::Permanent(m) if m.contains("part-00002.parquet") && m.contains("format")),
        "{wrong}"
    );
    assert!(
        !store.exists(&keys::clean_part(job, 2)).await.expect("head"),
        "nothing written"
    );
}

#[test]
fn pathological_text_is_cleaned_in_linear_time_without_damage() {
    let rules = TextRules::new();
    // 4 MB of unclosed parentheses, brackets, citation-like lists and figure words.
    let nasty = "((([1,2,3,4,5,6 Fig. Fig. Table (1-(2-(3 http:// www. @@ ".repeat(70_000);
    let out = rules.clean(&nasty);
    assert!(out.len() < nasty.len());
    assert!(!out.contains("  "));
    // A huge abstract of real-looking prose keeps its words.
    let prose =
        "Tumour response was assessed in 45 patients (n = 45) in 2019 (2019). ".repeat(50_000);
    let cleaned = rules.clean(&prose);
    assert_eq!(cleaned.matches("(n = 45)").count(), 50_000);
    let mut settings = Settings::load(None).expect("defaults").clean;
    settings.keep_body = true;
    let many_sections = RawArticle {
        id: "pmid:1".into(),
        title: "A title".into(),
        abstract_text: prose.clone(),
        body_sections: vec![
            Section {
                title: "S".into(),
                text: nasty.clone()
            };
            4
        ],
        ..RawArticle::default()
    };
    let cleaned = medembed_cleaner::Cleaner::new(&settings).clean_article(&many_sections);
    assert_eq!(cleaned.body_sections.len(), 4);
}
