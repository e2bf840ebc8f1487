//! The acceptance run on real data: all-MiniLM-L6-v2 fine-tuned with MNRL for one epoch on the
//! seed's train_small.csv (1,000 labelled pairs of real abstracts), on the CPU, through the same
//! code as `medembed train`. The seed's own val file shares most abstracts with its train file, so
//! a held-out split is made here: abstracts linked by positive pairs stay together (connected
//! components), and a fifth of the components, chosen by a hash, is held out
//! (`data::component_folds`, fold 0). Training must lower the loss and raise held-out nDCG@10
//! over the base model; the published folder must load and reproduce the reported figure.
//!
//! The learning rate is 1e-5, not the config's 5e-5: MiniLM is already trained for sentence
//! similarity on a billion pairs, and with 400 noisy pairs 5e-5 moves it so far that the outcome
//! depends on the seed (held-out nDCG@10 rises in 6 of 10 fold/seed runs, mean -0.001), while 1e-5
//! raises it in 9 of 10 (mean +0.009; `benches/heldout_folds.rs`, BENCHMARKS.md). On this fold and
//! seed: 0.1855 -> 0.1916.

use std::path::Path;

use medembed_model::SentenceEncoder;
use medembed_model::hub::Hub;
use medembed_pipeline::config::{ComputeDevice, Settings};
use medembed_trainer::data::{LabelledPair, RetrievalSet, component_folds, read_pairs};
use medembed_trainer::eval::{evaluate, lexical_rankings};
use medembed_trainer::standalone::{ProgressLines, StandaloneJob, run};
use tokio_util::sync::CancellationToken;

/// (train, held out): the pairs of component fold 0 of 5 are held out.
fn held_out_split(pairs: &[LabelledPair]) -> (Vec<LabelledPair>, Vec<LabelledPair>) {
    let folds = component_folds(pairs, 5);
    let mut train = Vec::new();
    let mut held_out = Vec::new();
    for (p, fold) in pairs.iter().zip(folds) {
        match fold {
            Some(0) => held_out.push(p.clone()),
            Some(_) => train.push(p.clone()),
            None => {}
        }
    }
    (train, held_out)
}

fn write_csv(path: &Path, pairs: &[LabelledPair]) {
    let mut w = csv::Writer::from_path(path).expect("csv");
    w.write_record(["text1", "text2", "label"]).expect("header");
    for p in pairs {
        w.write_record([
            p.text_a.as_str(),
            p.text_b.as_str(),
            &format!("{}", p.label),
        ])
        .expect("row");
    }
    w.flush().expect("flush");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_epoch_of_mnrl_on_the_seed_pairs_lowers_the_loss_and_raises_held_out_ndcg() {
    let minilm = std::env::var("MEDEMBED_TEST_MODEL_DIR").expect("MEDEMBED_TEST_MODEL_DIR");
    let seed =
        read_pairs(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/train_small.csv"))
            .expect("seed pairs");
    assert_eq!(seed.len(), 1000);
    let (train, held_out) = held_out_split(&seed);
    let texts = |ps: &[LabelledPair]| -> std::collections::HashSet<String> {
        ps.iter()
            .flat_map(|p| [p.text_a.clone(), p.text_b.clone()])
            .collect()
    };
    assert!(
        texts(&train).is_disjoint(&texts(&held_out)),
        "no abstract on both sides"
    );
    println!(
        "{} train pairs, {} held-out pairs",
        train.len(),
        held_out.len()
    );
    assert!(held_out.iter().filter(|p| p.label >= 0.5).count() >= 40);

    let tmp = tempfile::tempdir().expect("tempdir");
    let (train_csv, val_csv) = (tmp.path().join("train.csv"), tmp.path().join("val.csv"));
    write_csv(&train_csv, &train);
    write_csv(&val_csv, &held_out);
    let mut settings = Settings::load_with_env(None, Vec::new())
        .expect("defaults")
        .train;
    settings.base_model = minilm.clone();
    settings.device = ComputeDevice::Cpu;
    settings.epochs = 1;
    settings.batch_size = 16;
    settings.max_seq_length = 128;
    settings.learning_rate = 1e-5;
    // The seed recipe as measured (BENCHMARKS.md, five folds): in-batch negatives only.
    settings.mined_negatives = 0;
    let out = tmp.path().join("model");
    let job = StandaloneJob {
        train: train_csv,
        val: val_csv.clone(),
        test: None,
        out: out.clone(),
        settings: settings.clone(),
    };
    let metrics = run(
        job,
        &Hub::from_env(),
        &Settings::load_with_env(None, Vec::new())
            .expect("defaults")
            .store,
        CancellationToken::new(),
        ProgressLines::default(),
    )
    .await
    .expect("training runs");

    let base = &metrics.baseline.val;
    let tuned = &metrics.fine_tuned.val;
    println!(
        "held-out nDCG@10 {:.4} -> {:.4}, MRR@10 {:.4} -> {:.4}, Spearman {:.4} -> {:.4}, ROC-AUC {:.4} -> {:.4}; {} steps, {:.1} pairs/s",
        base.ndcg_at_10,
        tuned.ndcg_at_10,
        base.mrr_at_10,
        tuned.mrr_at_10,
        base.spearman,
        tuned.spearman,
        base.roc_auc,
        tuned.roc_auc,
        metrics.optimizer_steps,
        metrics.pairs_per_second
    );
    // The published weights are the best by held-out nDCG@10 of the base model (step 0) and the
    // end of the epoch: strictly above the base means the epoch's model won.
    assert!(
        tuned.ndcg_at_10 > base.ndcg_at_10,
        "one epoch raises held-out nDCG@10: {:.4} -> {:.4}",
        base.ndcg_at_10,
        tuned.ndcg_at_10
    );
    assert_eq!(
        metrics.best_step, metrics.optimizer_steps,
        "the end of the epoch is the published model"
    );
    // The model alone (dense): with whole abstracts as queries, BM25 is weak (about 0.10) and
    // holds the fused figure below the dense one.
    assert!(
        tuned.dense_ndcg_at_10 > 0.15 && tuned.roc_auc > 0.6,
        "a working encoder: {tuned:?}"
    );

    let log = medembed_pipeline::table::decode(
        "log",
        std::fs::read(out.join("training_log.parquet"))
            .expect("log")
            .into(),
        &medembed_trainer::artifacts::training_log_schema(),
    )
    .expect("log reads");
    let losses: Vec<f64> = log
        .iter()
        .flat_map(|b| {
            let c = b
                .column_by_name("loss")
                .expect("loss column")
                .as_any()
                .downcast_ref::<arrow::array::Float64Array>()
                .expect("f64")
                .clone();
            c.values().to_vec()
        })
        .collect();
    let third = losses.len() / 3;
    let (first, last) = (
        losses[..third].iter().sum::<f64>() / third as f64,
        losses[losses.len() - third..].iter().sum::<f64>() / third as f64,
    );
    println!("loss, first third {first:.4} -> last third {last:.4}");
    assert!(last < first, "the loss goes down: {first} -> {last}");

    // The published folder is the model that was measured.
    let loaded = SentenceEncoder::load(&out, tch::Device::Cpu).expect("published folder loads");
    let held_out = read_pairs(&val_csv).expect("val");
    let set = RetrievalSet::from_pairs(&held_out);
    let lexical = lexical_rankings(&set).expect("bm25");
    let again = evaluate(&loaded, &set, &lexical, &held_out).expect("eval");
    assert!((again.ndcg_at_10 - tuned.ndcg_at_10).abs() < 1e-6);
    assert!(
        !out.join(".checkpoints").exists(),
        "checkpoints are removed after success"
    );
}
