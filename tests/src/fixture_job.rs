//! A job over the fixture corpus taken through the real stages up to a built index, for the
//! index, api and web UI tests: fetch (the fetcher's PubMed and JATS fixtures as a bulk-file
//! source), clean, then the offline MiniLM model published as the job's model (standing in for
//! the trainer, which its own tests cover), then index → embed → build.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use medembed_cleaner::stage::CleanStage;
use medembed_fetcher::stage::FetchStage;
use medembed_indexer::stage::{BuildStage, EmbedStage, IndexMetrics, IndexStage};
use medembed_pipeline::config::Settings;
use medembed_pipeline::messages::{
    self, ArticleSource, BuildIndexCheck, CleanTask, Database, EmbedTask, FetchTask, IndexTask,
    JobId, TaskMessage,
};
use medembed_pipeline::runner::{Outgoing, Stage, TaskContext};
use medembed_pipeline::store::{self, ObjectStore};
use medembed_pipeline::{keys, testing};

/// The offline test model (all-MiniLM-L6-v2), linked by `deploy/dev/deps`.
pub fn minilm_dir() -> PathBuf {
    PathBuf::from(env!("MEDEMBED_TEST_MODEL_DIR"))
}

/// The fetcher's PubMed and JATS fixtures, copied into `dir/corpus` (the bulk-file source).
pub fn fixture_corpus(dir: &Path) -> PathBuf {
    let root = dir.join("corpus");
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../services/fetcher/tests/fixtures");
    for sub in ["pubmed", "jats"] {
        std::fs::create_dir_all(root.join(sub)).expect("mkdir");
        for entry in std::fs::read_dir(fixtures.join(sub)).expect("fixtures") {
            let path = entry.expect("entry").path();
            std::fs::copy(&path, root.join(sub).join(path.file_name().expect("name")))
                .expect("copy");
        }
    }
    root
}

pub fn ctx(store: &Arc<dyn ObjectStore>) -> TaskContext {
    testing::task_context(store)
}

pub fn decoded<T: TaskMessage>(out: &[Outgoing]) -> Vec<T> {
    out.iter()
        .filter(|o| o.queue == T::QUEUE)
        .map(|o| messages::decode::<T>(&o.body).expect("a valid task"))
        .collect()
}

/// Publishes MiniLM as `job`'s model, the way the trainer publishes one (`metrics.json` last).
pub async fn publish_minilm(store: &dyn ObjectStore, job: JobId) {
    let dir = tempfile::tempdir().expect("tempdir");
    for entry in walk(&minilm_dir()) {
        let relative = entry.strip_prefix(minilm_dir()).expect("under the model");
        let target = dir.path().join(relative);
        std::fs::create_dir_all(target.parent().expect("parent")).expect("mkdir");
        std::fs::copy(&entry, &target).expect("copy");
    }
    std::fs::write(dir.path().join("metrics.json"), b"{}").expect("marker");
    store::upload_dir(
        store,
        dir.path(),
        &keys::model_prefix(job),
        Some("metrics.json"),
    )
    .await
    .expect("model uploaded");
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// A fetched and cleaned fixture job with MiniLM as its model, not yet indexed.
pub async fn cleaned_job(settings: &Settings, store: &Arc<dyn ObjectStore>, dir: &Path) -> JobId {
    let corpus = fixture_corpus(dir);
    let source = ArticleSource::Files {
        path: corpus.display().to_string(),
    };
    let job = testing::put_job(store.as_ref(), source, Database::Pmc, 1000).await;
    let registry = prometheus::Registry::new();
    let fetch = FetchStage::new(settings, &registry).expect("fetch stage");
    let clean = CleanStage::new(settings, &registry).expect("clean stage");
    let fetched = fetch
        .process(FetchTask { job_id: job }, &ctx(store))
        .await
        .expect("fetch");
    for task in decoded::<CleanTask>(&fetched) {
        clean.process(task, &ctx(store)).await.expect("clean");
    }
    publish_minilm(store.as_ref(), job).await;
    job
}

/// The three index stages.
#[derive(Debug)]
pub struct IndexStages {
    pub index: IndexStage,
    pub embed: EmbedStage,
    pub build: BuildStage,
}

impl IndexStages {
    pub fn new(settings: &Settings) -> Self {
        let metrics = IndexMetrics::register(&prometheus::Registry::new()).expect("metrics");
        Self {
            index: IndexStage,
            embed: EmbedStage::new(&settings.index, metrics.clone()),
            build: BuildStage::new(settings, metrics),
        }
    }

    /// index → every embed → build.
    pub async fn run(&self, store: &Arc<dyn ObjectStore>, job: JobId) {
        let planned = self
            .index
            .process(IndexTask { job_id: job }, &ctx(store))
            .await
            .expect("index task");
        for task in decoded::<EmbedTask>(&planned) {
            self.embed.process(task, &ctx(store)).await.expect("embed");
        }
        self.build
            .process(BuildIndexCheck { job_id: job }, &ctx(store))
            .await
            .expect("build");
    }
}

/// A fixture job taken all the way to a built index.
pub async fn indexed_job(settings: &Settings, store: &Arc<dyn ObjectStore>, dir: &Path) -> JobId {
    let job = cleaned_job(settings, store, dir).await;
    IndexStages::new(settings).run(store, job).await;
    job
}
