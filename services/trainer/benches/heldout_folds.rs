//! Does one epoch of MNRL raise held-out nDCG@10 over the base model on every split, or only on
//! some? all-MiniLM-L6-v2 on the seed's train_small.csv (1,000 pairs of real abstracts), split
//! into 5 folds by connected component of the positive pairs (`data::component_folds`: no abstract
//! on both sides); for each fold, train on the other four for one epoch (the acceptance test's
//! recipe: batch 16, length 128, learning rate 1e-5, CPU) and evaluate on it. Baseline in the same
//! run: the base model on the same fold. Prints one JSON line.
//!
//! cargo bench -p medembed-trainer --bench heldout_folds
//!
//! `MEDEMBED__TRAIN__*` variables override the recipe (e.g. `MEDEMBED__TRAIN__LEARNING_RATE=5e-5`,
//! `MEDEMBED__TRAIN__EVAL_EVERY_STEPS=10` to see the curve), `MEDEMBED_BENCH_FOLDS=0,2` runs some
//! folds only.

use std::path::Path;
use std::sync::{Arc, Mutex};

use medembed_model::hub::Hub;
use medembed_pipeline::config::{ComputeDevice, Settings};
use medembed_trainer::data::{LabelledPair, component_folds, read_pairs};
use medembed_trainer::eval::EvalReport;
use medembed_trainer::standalone::{StandaloneJob, run};
use medembed_trainer::train::Observer;
use tokio_util::sync::CancellationToken;

const FOLDS: u64 = 5;

/// Keeps every val evaluation: (label, nDCG@10).
#[derive(Clone, Default)]
struct Evaluations(Arc<Mutex<Vec<(String, f64)>>>);

impl Observer for Evaluations {
    fn evaluated(&mut self, split: &str, label: &str, report: &EvalReport) {
        if split == "val" {
            self.0
                .lock()
                .expect("lock")
                .push((label.to_string(), report.ndcg_at_10));
        }
    }
}

fn write_csv(path: &Path, pairs: &[&LabelledPair]) {
    let mut w = csv::Writer::from_path(path).expect("csv");
    w.write_record(["text1", "text2", "label"]).expect("header");
    for p in pairs {
        w.write_record([p.text_a.as_str(), p.text_b.as_str(), &p.label.to_string()])
            .expect("row");
    }
    w.flush().expect("flush");
}

#[tokio::main]
async fn main() {
    let minilm = std::env::var("MEDEMBED_TEST_MODEL_DIR")
        .unwrap_or_else(|_| env!("MEDEMBED_TEST_MODEL_DIR").to_string());
    let pairs =
        read_pairs(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/train_small.csv"))
            .expect("seed pairs");
    let folds = component_folds(&pairs, FOLDS);
    let defaults = Settings::load(None).expect("settings");
    let mut recipe = defaults.train.clone();
    let unset = |name: &str| std::env::var(format!("MEDEMBED__TRAIN__{name}")).is_err();
    if unset("BATCH_SIZE") {
        recipe.batch_size = 16;
    }
    if unset("MAX_SEQ_LENGTH") {
        recipe.max_seq_length = 128;
    }
    if unset("LEARNING_RATE") {
        recipe.learning_rate = 1e-5;
    }
    recipe.base_model = minilm.clone();
    recipe.device = ComputeDevice::Cpu;
    recipe.epochs = 1;
    let only: Option<Vec<u64>> = std::env::var("MEDEMBED_BENCH_FOLDS").ok().map(|v| {
        v.split(',')
            .map(|f| f.trim().parse().expect("fold number"))
            .collect()
    });
    let mut results = Vec::new();
    for fold in (0..FOLDS).filter(|f| only.as_ref().is_none_or(|o| o.contains(f))) {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (train, held): (Vec<_>, Vec<_>) = pairs
            .iter()
            .zip(&folds)
            .filter(|(_, f)| f.is_some())
            .partition(|(_, f)| **f != Some(fold));
        let train: Vec<&LabelledPair> = train.into_iter().map(|(p, _)| p).collect();
        let held: Vec<&LabelledPair> = held.into_iter().map(|(p, _)| p).collect();
        let (train_csv, val_csv) = (tmp.path().join("train.csv"), tmp.path().join("val.csv"));
        write_csv(&train_csv, &train);
        write_csv(&val_csv, &held);
        let evaluations = Evaluations::default();
        let job = StandaloneJob {
            train: train_csv,
            val: val_csv,
            test: None,
            out: tmp.path().join("model"),
            settings: recipe.clone(),
        };
        let metrics = run(
            job,
            &Hub::from_env(),
            &defaults.store,
            CancellationToken::new(),
            evaluations.clone(),
        )
        .await
        .expect("training runs");
        let seen = evaluations.0.lock().expect("lock").clone();
        let epoch_end = seen
            .iter()
            .rev()
            .find(|(label, _)| label.starts_with("step"))
            .map(|(_, ndcg)| *ndcg)
            .expect("an evaluation after training");
        let base = metrics.baseline.val.ndcg_at_10;
        let trajectory: Vec<String> = seen
            .iter()
            .map(|(label, ndcg)| format!("{label} {ndcg:.4}"))
            .collect();
        eprintln!(
            "fold {fold}: {} train / {} held-out pairs, nDCG@10 {base:.4} -> {epoch_end:.4} ({})",
            train.len(),
            held.len(),
            trajectory.join(", ")
        );
        results.push(serde_json::json!({
            "fold": fold,
            "train_pairs": train.len(),
            "held_out_pairs": held.len(),
            "held_out_queries": metrics.baseline.val.queries,
            "base_ndcg_at_10": base,
            "one_epoch_ndcg_at_10": epoch_end,
        }));
    }
    let gains: Vec<f64> = results
        .iter()
        .map(|r| {
            r["one_epoch_ndcg_at_10"].as_f64().unwrap_or(0.0)
                - r["base_ndcg_at_10"].as_f64().unwrap_or(0.0)
        })
        .collect();
    println!(
        "{}",
        serde_json::json!({
            "name": "trainer_heldout_folds",
            "model": "all-MiniLM-L6-v2",
            "loss": recipe.loss.name(),
            "epochs": recipe.epochs,
            "batch_size": recipe.batch_size,
            "max_seq_length": recipe.max_seq_length,
            "learning_rate": recipe.learning_rate,
            "seed": recipe.seed,
            "folds": results,
            "folds_raised": gains.iter().filter(|g| **g > 0.0).count(),
            "mean_gain_ndcg_at_10": gains.iter().sum::<f64>() / gains.len() as f64,
        })
    );
}
