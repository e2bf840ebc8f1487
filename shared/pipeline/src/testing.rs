//! Test support: settings that point at the dev services (`deploy/dev/services up`), each test
//! with its own queue prefix and store prefix so tests run in parallel on one broker and bucket.
//!
//! Endpoints come from the environment the dev-services script prints, and default to what it
//! sets up, so `cargo test` works right after `deploy/dev/services up`.

use std::path::Path;

use bytes::Bytes;

use crate::config::{QueueBackend, Settings, StoreBackend};
use crate::keys;
use crate::messages::{ArticleSource, Database, JobId, JobSpec};
use crate::runner::TaskContext;
use crate::store::ObjectStore;

/// The dev Garage key; not a secret: it only opens the local test server.
pub const DEV_S3_ACCESS_KEY_ID: &str = "GK6d6564656d62656464657600";
pub const DEV_S3_SECRET_ACCESS_KEY: &str =
    "6d6564656d6265642d6465762d7365637265742d6b65792d6e6f742d7265616c";

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

/// The test broker's URL (with its password).
pub fn amqp_url() -> String {
    env_or(
        "MEDEMBED_TEST_AMQP_URL",
        "amqp://guest:guest@127.0.0.1:5672/%2f",
    )
}

/// A name unique to this test run: `{name}-{ulid}` in lower case.
pub fn unique(name: &str) -> String {
    format!("t-{name}-{}", ulid::Ulid::new().to_string().to_lowercase())
}

/// The environment (as `MEDEMBED__…` pairs) for a worker talking to the dev services, with queue
/// prefix and store prefix `prefix`. Handy for child processes too.
pub fn dev_env(
    prefix: &str,
    queue: QueueBackend,
    store: StoreBackend,
    local_root: &Path,
) -> Vec<(String, String)> {
    let backend = |q: QueueBackend| match q {
        QueueBackend::Amqp => "amqp",
        QueueBackend::Memory => "memory",
    };
    let store_backend = match store {
        StoreBackend::Local => "local",
        StoreBackend::S3 => "s3",
    };
    [
        ("MEDEMBED__QUEUE__BACKEND", backend(queue).to_string()),
        ("MEDEMBED__QUEUE__AMQP_URL", amqp_url()),
        ("MEDEMBED__QUEUE__PREFIX", prefix.to_string()),
        ("MEDEMBED__STORE__BACKEND", store_backend.to_string()),
        (
            "MEDEMBED__STORE__LOCAL_ROOT",
            local_root.display().to_string(),
        ),
        ("MEDEMBED__STORE__PREFIX", prefix.to_string()),
        (
            "MEDEMBED__STORE__BUCKET",
            env_or("MEDEMBED_TEST_S3_BUCKET", "medembed-test"),
        ),
        (
            "MEDEMBED__STORE__ENDPOINT",
            env_or("MEDEMBED_TEST_S3_ENDPOINT", "http://127.0.0.1:3900"),
        ),
        (
            "MEDEMBED__STORE__REGION",
            env_or("MEDEMBED_TEST_S3_REGION", "garage"),
        ),
        (
            "MEDEMBED__STORE__ACCESS_KEY_ID",
            env_or("MEDEMBED_TEST_S3_ACCESS_KEY_ID", DEV_S3_ACCESS_KEY_ID),
        ),
        (
            "MEDEMBED__STORE__SECRET_ACCESS_KEY",
            env_or(
                "MEDEMBED_TEST_S3_SECRET_ACCESS_KEY",
                DEV_S3_SECRET_ACCESS_KEY,
            ),
        ),
        ("MEDEMBED__SERVER__LISTEN_ADDR", "127.0.0.1:0".to_string()),
        ("MEDEMBED__RUNNER__DRAIN_TIMEOUT_SECS", "10".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// Settings for the dev services plus `extra` overrides (`MEDEMBED__…` pairs).
pub fn dev_settings(
    prefix: &str,
    queue: QueueBackend,
    store: StoreBackend,
    local_root: &Path,
    extra: &[(&str, &str)],
) -> Settings {
    let mut env = dev_env(prefix, queue, store, local_root);
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    Settings::load_with_env(None, env).expect("test settings are valid")
}

/// Stores a job spec for `source` (a fixed query and dates) and returns the new job's id.
pub async fn put_job(
    store: &dyn ObjectStore,
    source: ArticleSource,
    db: Database,
    max_articles: u64,
) -> JobId {
    let job_id = JobId::new();
    let spec = JobSpec {
        version: 1,
        job_id,
        created_at: "2026-11-25T00:00:00Z".into(),
        query: "cancer immunotherapy".into(),
        db,
        from: Some("2020".into()),
        to: Some("2024".into()),
        max_articles,
        source,
        open_access_only: true,
        cited_by: false,
        submitted_by: None,
    };
    store
        .put(
            &keys::job_spec(job_id),
            Bytes::from(serde_json::to_vec(&spec).expect("a job spec is plain data")),
        )
        .await
        .expect("the test store takes the job spec");
    job_id
}

/// This process's peak resident memory (VmHWM) in MiB, for benchmarks; 0 where unknown.
pub fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// A first delivery's context over `store`: for calling a stage's `process` directly.
pub fn task_context(store: &std::sync::Arc<dyn ObjectStore>) -> TaskContext {
    TaskContext {
        store: store.clone(),
        attempt: 1,
        redelivered: false,
        shutdown: Default::default(),
    }
}
