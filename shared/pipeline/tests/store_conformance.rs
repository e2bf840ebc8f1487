//! One conformance suite for both object stores: the local directory and S3 (the dev Garage).

use std::sync::Arc;

use bytes::Bytes;
use medembed_pipeline::config::{QueueBackend, StoreBackend};
use medembed_pipeline::store::{self, LocalStore, ObjectStore, StoreError};
use medembed_pipeline::testing;

const BIG: usize = 200 * 1024 * 1024;

fn big_object() -> Bytes {
    // Not a repeated pattern, so a part uploaded twice or out of order would show.
    let mut data = vec![0u8; BIG];
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for chunk in data.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    Bytes::from(data)
}

async fn conformance(store: &dyn ObjectStore) {
    // put / get / head
    store
        .put("a/1.json", Bytes::from_static(b"one"))
        .await
        .expect("put");
    assert_eq!(
        store.get("a/1.json").await.expect("get"),
        Bytes::from_static(b"one")
    );
    let meta = store.head("a/1.json").await.expect("head").expect("exists");
    assert_eq!(meta.size, 3);
    assert!(store.exists("a/1.json").await.expect("exists"));

    // overwrite replaces the whole object
    store
        .put("a/1.json", Bytes::from_static(b"uno!"))
        .await
        .expect("overwrite");
    assert_eq!(
        store.get("a/1.json").await.expect("get"),
        Bytes::from_static(b"uno!")
    );

    // list by prefix, sorted, exact prefix semantics
    for key in ["a/2.json", "ab/3.json", "b/4.json", "a/deep/er/5.json"] {
        store
            .put(key, Bytes::from(key.as_bytes().to_vec()))
            .await
            .expect("put");
    }
    let keys = |v: Vec<store::ObjectMeta>| v.into_iter().map(|m| m.key).collect::<Vec<_>>();
    assert_eq!(
        keys(store.list("a/").await.expect("list")),
        ["a/1.json", "a/2.json", "a/deep/er/5.json"]
    );
    assert_eq!(
        keys(store.list("a").await.expect("list")),
        ["a/1.json", "a/2.json", "a/deep/er/5.json", "ab/3.json"]
    );
    assert_eq!(
        keys(store.list("a/deep/").await.expect("list")),
        ["a/deep/er/5.json"]
    );
    assert!(store.list("nothing/").await.expect("list").is_empty());

    // missing key: typed NotFound; head None; delete idempotent
    match store.get("a/missing.json").await {
        Err(StoreError::NotFound { key }) => assert_eq!(key, "a/missing.json"),
        other => panic!("expected NotFound, got {other:?}"),
    }
    assert!(store.head("a/missing.json").await.expect("head").is_none());
    store.delete("a/2.json").await.expect("delete");
    store.delete("a/2.json").await.expect("delete again");
    assert!(!store.exists("a/2.json").await.expect("exists"));

    // unicode keys
    let unicode = "ünïcödé/статья/論文 1.json";
    store
        .put(unicode, Bytes::from_static("μ-opioid".as_bytes()))
        .await
        .expect("put unicode");
    assert_eq!(
        store.get(unicode).await.expect("get unicode"),
        Bytes::from_static("μ-opioid".as_bytes())
    );
    assert_eq!(keys(store.list("ünïcödé/").await.expect("list")), [unicode]);

    // invalid keys are refused with the key named, before touching storage
    let err = store
        .put("../escape", Bytes::new())
        .await
        .expect_err("refused");
    assert!(err.to_string().contains("../escape"), "{err}");

    // a 200 MiB object (multipart on S3)
    let data = big_object();
    store
        .put("big/object.bin", data.clone())
        .await
        .expect("put 200 MiB");
    assert_eq!(
        store
            .head("big/object.bin")
            .await
            .expect("head")
            .expect("exists")
            .size,
        BIG as u64
    );
    let back = store.get("big/object.bin").await.expect("get 200 MiB");
    assert!(back == data, "200 MiB object came back different");
    store.delete("big/object.bin").await.expect("delete big");
}

#[tokio::test]
async fn local_store_conforms() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = LocalStore::new(dir.path()).expect("store");
    conformance(&store).await;
    // No temp files are left behind.
    let leftovers: Vec<_> = walk(dir.path())
        .into_iter()
        .filter(|p| p.contains(".medembed-tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

fn walk(root: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(root).expect("read_dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path.display().to_string());
        }
    }
    out
}

#[tokio::test]
async fn s3_store_conforms() {
    let dir = tempfile::tempdir().expect("tempdir");
    let settings = testing::dev_settings(
        &testing::unique("store"),
        QueueBackend::Memory,
        StoreBackend::S3,
        dir.path(),
        &[],
    );
    let store: Arc<dyn ObjectStore> = store::open(&settings.store).await.expect("open s3");
    assert!(
        store.ready().await,
        "the dev S3 server must be up: deploy/dev/services up"
    );
    conformance(store.as_ref()).await;
    // Another prefix sees none of it.
    let other = testing::dev_settings(
        &testing::unique("other"),
        QueueBackend::Memory,
        StoreBackend::S3,
        dir.path(),
        &[],
    );
    let other = store::open(&other.store).await.expect("open");
    assert!(other.list("a").await.expect("list").is_empty());
}

#[tokio::test]
async fn unreachable_s3_is_a_retryable_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let settings = testing::dev_settings(
        "unreachable",
        QueueBackend::Memory,
        StoreBackend::S3,
        dir.path(),
        &[
            ("MEDEMBED__STORE__ENDPOINT", "http://127.0.0.1:9"),
            ("MEDEMBED__STORE__MAX_ATTEMPTS", "1"),
        ],
    );
    let store = store::open(&settings.store).await.expect("open");
    let err = store
        .put("k", Bytes::from_static(b"x"))
        .await
        .expect_err("no server there");
    assert!(err.is_retryable(), "{err}");
    assert!(!store.ready().await);
}

#[tokio::test]
async fn wrong_s3_credentials_are_a_permanent_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let settings = testing::dev_settings(
        "badkey",
        QueueBackend::Memory,
        StoreBackend::S3,
        dir.path(),
        &[
            ("MEDEMBED__STORE__SECRET_ACCESS_KEY", "wrong"),
            ("MEDEMBED__STORE__MAX_ATTEMPTS", "1"),
        ],
    );
    let store = store::open(&settings.store).await.expect("open");
    let err = store
        .put("k", Bytes::from_static(b"x"))
        .await
        .expect_err("refused");
    assert!(!err.is_retryable(), "{err}");
}
