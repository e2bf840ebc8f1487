//! Fetch → clean → pairs over the real fixture corpus (the PubMed and JATS XML of the fetcher's
//! fixtures, read as a bulk-file source), on the real S3 server and on the local store: the
//! barrier, the outputs and their invariants (no text in two splits, no self-pairs, no duplicate
//! pairs, byte-identical outputs for the same seed).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use medembed_cleaner::stage::CleanStage;
use medembed_corpus::clean::{self, clean_schema};
use medembed_corpus::pairs::{
    EvalDocument, EvalQuery, Pair, PairStats, eval_document_schema, eval_query_schema, pair_schema,
    pairs_from_batches,
};
use medembed_corpus::rows::rows_from_batches;
use medembed_e2e::fixture_job::fixture_corpus;
use medembed_fetcher::stage::FetchStage;
use medembed_pair_builder::stage::PairStage;
use medembed_pipeline::config::{QueueBackend, Settings, StoreBackend};
use medembed_pipeline::messages::{
    ArticleSource, CleanTask, Database, FetchTask, JobId, PairsCheck, TaskMessage, TrainTask,
};
use medembed_pipeline::runner::{Outgoing, Stage, TaskContext};
use medembed_pipeline::status::{StageState, StageStatus};
use medembed_pipeline::store::{self, ObjectStore};
use medembed_pipeline::{keys, messages, table, testing};

fn settings(prefix: &str, backend: StoreBackend, root: &Path, extra: &[(&str, &str)]) -> Settings {
    // The fixture articles are unrelated papers (no citation between them, MeSH overlap at
    // most 0.25): lower thresholds make them pair at all.
    let mut all = vec![
        ("MEDEMBED__FETCH__ARTICLES_PER_PART", "8"),
        ("MEDEMBED__PAIRS__MESH_THRESHOLD", "0.1"),
        ("MEDEMBED__PAIRS__KEYWORD_THRESHOLD", "0.05"),
    ];
    all.extend_from_slice(extra);
    testing::dev_settings(prefix, QueueBackend::Memory, backend, root, &all)
}

async fn new_job(store: &dyn ObjectStore, corpus: &Path) -> JobId {
    let source = ArticleSource::Files {
        path: corpus.display().to_string(),
    };
    testing::put_job(store, source, Database::Pmc, 1000).await
}

fn ctx(store: &Arc<dyn ObjectStore>, redelivered: bool) -> TaskContext {
    TaskContext {
        store: store.clone(),
        attempt: 1,
        redelivered,
        shutdown: Default::default(),
    }
}

fn decoded<T: TaskMessage>(out: &[Outgoing]) -> Vec<T> {
    out.iter()
        .filter(|o| o.queue == T::QUEUE)
        .map(|o| messages::decode::<T>(&o.body).expect("a valid task"))
        .collect()
}

struct Stages {
    fetch: FetchStage,
    clean: CleanStage,
    pairs: PairStage,
}

impl Stages {
    fn new(settings: &Settings) -> Self {
        let registry = prometheus::Registry::new();
        Self {
            fetch: FetchStage::new(settings, &registry).expect("fetch stage"),
            clean: CleanStage::new(settings, &registry).expect("clean stage"),
            pairs: PairStage::new(settings, &registry).expect("pairs stage"),
        }
    }

    /// The whole flow, checking the barrier on the way. Returns the train tasks published.
    async fn run(&self, store: &Arc<dyn ObjectStore>, job: JobId) -> Vec<TrainTask> {
        let fetched = self
            .fetch
            .process(FetchTask { job_id: job }, &ctx(store, false))
            .await
            .expect("fetch");
        let clean_tasks: Vec<CleanTask> = decoded(&fetched);
        assert!(
            clean_tasks.len() >= 3,
            "several parts: {}",
            clean_tasks.len()
        );
        assert_eq!(
            decoded::<PairsCheck>(&fetched).len(),
            1,
            "the fetcher sends a check"
        );

        // Barrier: no pairs while any part is not cleaned.
        let check = PairsCheck { job_id: job };
        let (last, first) = clean_tasks.split_last().expect("parts");
        for task in first {
            let out = self
                .clean
                .process(task.clone(), &ctx(store, false))
                .await
                .expect("clean");
            assert_eq!(decoded::<PairsCheck>(&out), vec![check.clone()]);
            let early = self
                .pairs
                .process(check.clone(), &ctx(store, false))
                .await
                .expect("check");
            assert!(
                early.is_empty(),
                "a check before every part is cleaned does nothing"
            );
        }
        assert!(
            !store
                .exists(&keys::pairs_file(job, "stats.json"))
                .await
                .expect("head")
        );
        self.clean
            .process(last.clone(), &ctx(store, false))
            .await
            .expect("clean last");
        let out = self
            .pairs
            .process(check.clone(), &ctx(store, false))
            .await
            .expect("pairs");
        let train: Vec<TrainTask> = decoded(&out);
        assert_eq!(train, vec![TrainTask { job_id: job }]);

        // Duplicate checks after the pairs are done: nothing, unless redelivered.
        let again = self
            .pairs
            .process(check.clone(), &ctx(store, false))
            .await
            .expect("again");
        assert!(again.is_empty(), "a late duplicate check publishes nothing");
        let redelivered = self
            .pairs
            .process(check, &ctx(store, true))
            .await
            .expect("redelivered");
        assert_eq!(
            decoded::<TrainTask>(&redelivered),
            vec![TrainTask { job_id: job }]
        );
        train
    }
}

async fn read_pairs(store: &dyn ObjectStore, job: JobId, split: &str) -> Vec<Pair> {
    let key = keys::pairs_file(job, &format!("{split}.parquet"));
    let batches = table::read(store, &key, &pair_schema())
        .await
        .expect("pairs file");
    pairs_from_batches(&key, &batches).expect("pairs rows")
}

async fn stats(store: &dyn ObjectStore, job: JobId) -> PairStats {
    serde_json::from_slice(
        &store
            .get(&keys::pairs_file(job, "stats.json"))
            .await
            .expect("stats"),
    )
    .expect("stats json")
}

/// Checks every invariant of the outputs of `job`; returns the pairs by split.
async fn check_outputs(
    store: &dyn ObjectStore,
    job: JobId,
    cap: usize,
) -> BTreeMap<String, Vec<Pair>> {
    let stats = stats(store, job).await;
    let mut all = BTreeMap::new();
    let mut split_of_text: HashMap<String, String> = HashMap::new();
    let mut seen_pairs: HashSet<(String, String, bool)> = HashSet::new();
    let mut positives_per_doc: HashMap<String, usize> = HashMap::new();
    for split in ["train", "val", "test"] {
        let pairs = read_pairs(store, job, split).await;
        let mut counted: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
        for p in &pairs {
            // Title pairs are an article with itself: its title, and its text without it.
            if p.source == "title" {
                assert_eq!(p.id_a, p.id_b, "a title pair is one article");
                assert!(!p.text_b.contains(&p.text_a), "the title leaks: {}", p.id_a);
            } else {
                assert_ne!(p.id_a, p.id_b, "no self-pairs");
            }
            assert_ne!(p.text_a, p.text_b, "no pair of identical texts");
            let key = if p.id_a < p.id_b {
                (p.id_a.clone(), p.id_b.clone())
            } else {
                (p.id_b.clone(), p.id_a.clone())
            };
            // An article's title pair and a relation pair never share a key (one is a self-pair).
            let key = (key.0, key.1, p.source == "title");
            assert!(
                seen_pairs.insert(key),
                "no duplicate pairs: {} {}",
                p.id_a,
                p.id_b
            );
            for text in [&p.text_a, &p.text_b] {
                let first = split_of_text
                    .entry(text.clone())
                    .or_insert(split.to_string());
                assert_eq!(first, split, "a text in two splits");
            }
            match p.source.as_str() {
                "citation" | "mesh" | "keyword" => {
                    assert_eq!(p.label, 1.0);
                    *positives_per_doc.entry(p.id_a.clone()).or_default() += 1;
                    *positives_per_doc.entry(p.id_b.clone()).or_default() += 1;
                }
                "title" => assert_eq!(p.label, 1.0),
                "random" | "hard" => assert_eq!(p.label, 0.0),
                other => panic!("unknown source {other}"),
            }
            *counted
                .entry(p.source.clone())
                .or_default()
                .entry(format!("{}", p.label as u8))
                .or_default() += 1;
        }
        assert_eq!(
            stats.pairs.get(split).cloned().unwrap_or_default(),
            counted,
            "stats.json counts the {split} pairs"
        );
        all.insert(split.to_string(), pairs);
    }
    assert!(
        positives_per_doc.values().all(|&n| n <= cap),
        "the per-document cap holds"
    );
    // The evaluation corpora hold the split's documents only.
    for split in ["val", "test"] {
        let key = keys::pairs_file(job, &format!("eval_{split}_corpus.parquet"));
        let docs: Vec<EvalDocument> = rows_from_batches(
            &key,
            &table::read(store, &key, &eval_document_schema())
                .await
                .expect("eval corpus"),
        )
        .expect("rows");
        assert_eq!(docs.len() as u64, stats.documents_per_split[split]);
        for d in &docs {
            let first = split_of_text
                .entry(d.text.clone())
                .or_insert(split.to_string());
            assert_eq!(first, split, "an evaluation document also in another split");
        }
        let key = keys::pairs_file(job, &format!("eval_{split}.parquet"));
        let queries: Vec<EvalQuery> = rows_from_batches(
            &key,
            &table::read(store, &key, &eval_query_schema())
                .await
                .expect("eval queries"),
        )
        .expect("rows");
        let ids: HashSet<&str> = docs.iter().map(|d| d.id.as_str()).collect();
        for q in &queries {
            // A held-out title, its own document judged 3, every judged document in the split.
            let own = q.query_id.strip_prefix("title:").expect("a title query");
            assert!(ids.contains(own));
            assert_eq!(q.gains.len(), q.relevant_ids.len());
            let gain = |id: &str| {
                q.relevant_ids
                    .iter()
                    .position(|r| r == id)
                    .map(|i| q.gains[i])
            };
            assert_eq!(gain(own), Some(3.0), "{q:?}");
            assert!(q.relevant_ids.iter().all(|r| ids.contains(r.as_str())));
            assert!(q.gains.iter().all(|g| [1.0, 2.0, 3.0].contains(g)), "{q:?}");
        }
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixture_corpus_is_cleaned_and_paired_on_the_s3_server() {
    fixture_corpus_is_cleaned_and_paired(StoreBackend::S3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixture_corpus_is_cleaned_and_paired_on_the_local_store() {
    fixture_corpus_is_cleaned_and_paired(StoreBackend::Local).await;
}

async fn fixture_corpus_is_cleaned_and_paired(backend: StoreBackend) {
    let dir = tempfile::tempdir().expect("tempdir");
    let corpus = fixture_corpus(dir.path());
    let prefix = testing::unique("pairs");
    let settings = settings(&prefix, backend, &dir.path().join("store"), &[]);
    let store = store::open(&settings.store).await.expect("store");
    let job = new_job(store.as_ref(), &corpus).await;
    Stages::new(&settings).run(&store, job).await;

    let stats = stats(store.as_ref(), job).await;
    println!(
        "fixture corpus: {}",
        serde_json::to_string(&stats).expect("json")
    );
    let pairs = check_outputs(store.as_ref(), job, settings.pairs.max_pairs_per_document).await;
    assert!(stats.documents >= 40, "documents: {}", stats.documents);
    assert_eq!(
        stats.documents_per_split.values().sum::<u64>(),
        stats.documents
    );
    let train = &pairs["train"];
    assert!(
        train.iter().any(|p| p.label == 1.0),
        "some positives in train"
    );
    assert!(
        train.iter().any(|p| p.label == 0.0),
        "some negatives in train"
    );

    // Every clean part exists with its stats, and the statuses say done.
    let clean_status = StageStatus::load(store.as_ref(), job, "clean")
        .await
        .expect("status");
    assert_eq!(clean_status.state, StageState::Done);
    assert_eq!(clean_status.done, clean_status.total);
    assert!(clean_status.counts["articles_kept"] >= stats.documents);
    let pairs_status = StageStatus::load(store.as_ref(), job, "pairs")
        .await
        .expect("status");
    assert_eq!(pairs_status.state, StageState::Done);
    assert_eq!(pairs_status.counts["documents"], stats.documents);
    let key = keys::clean_part(job, 0);
    let first = clean::from_batches(
        &key,
        &table::read(store.as_ref(), &key, &clean_schema())
            .await
            .expect("clean part"),
    )
    .expect("rows");
    assert!(
        first
            .iter()
            .all(|a| !a.text.is_empty() && a.content_hash.len() == 16)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_seed_gives_byte_identical_outputs_and_another_seed_other_splits() {
    let dir = tempfile::tempdir().expect("tempdir");
    let corpus = fixture_corpus(dir.path());
    let root = dir.path().join("store");
    let seed_42 = settings(
        "seed",
        StoreBackend::Local,
        &root,
        &[("MEDEMBED__PAIRS__WRITE_CSV", "true")],
    );
    let store = store::open(&seed_42.store).await.expect("local store");

    let mut outputs = Vec::new();
    for _ in 0..2 {
        let job = new_job(store.as_ref(), &corpus).await;
        Stages::new(&seed_42).run(&store, job).await;
        let mut files = BTreeMap::new();
        for o in store
            .list(&format!("jobs/{job}/pairs/"))
            .await
            .expect("list")
        {
            let name = o.key.rsplit('/').next().expect("name").to_string();
            let mut bytes = store.get(&o.key).await.expect("get").to_vec();
            if name == "stats.json" {
                // The only fields allowed to differ: how long the build took.
                let mut s: PairStats = serde_json::from_slice(&bytes).expect("stats");
                s.build_seconds = 0.0;
                s.phase_seconds.clear();
                bytes = serde_json::to_vec(&s).expect("json");
            }
            files.insert(name, bytes);
        }
        outputs.push(files);
    }
    let names: Vec<&String> = outputs[0].keys().collect();
    assert!(
        names.iter().any(|n| *n == "train.csv"),
        "the CSV option writes CSVs: {names:?}"
    );
    assert_eq!(names.len(), 11, "{names:?}");
    for name in names {
        assert!(
            outputs[0][name] == outputs[1][name],
            "pairs/{name} differs between two runs with the same seed"
        );
    }

    let seed_7 = settings(
        "seed",
        StoreBackend::Local,
        &root,
        &[("MEDEMBED__PAIRS__SEED", "7")],
    );
    let job = new_job(store.as_ref(), &corpus).await;
    Stages::new(&seed_7).run(&store, job).await;
    let other = store
        .get(&keys::pairs_file(job, "eval_test_corpus.parquet"))
        .await
        .expect("eval corpus");
    assert!(
        other.as_ref() != outputs[0]["eval_test_corpus.parquet"].as_slice(),
        "another seed splits the documents differently"
    );
}
