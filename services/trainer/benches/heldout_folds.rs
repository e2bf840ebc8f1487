//! Does one epoch of MNRL raise held-out nDCG@10 over the base model, or only on some splits?
//! all-MiniLM-L6-v2 on the seed's train_small.csv (1,000 pairs of real abstracts), split into 5
//! folds by connected component of the texts (no abstract on both sides); for each fold, train on
//! the other four for one epoch (batch 16, length 128, CPU) and evaluate on it. Baseline in the
//! same run: the base model on the same fold. Prints one JSON line.
//!
//! cargo bench -p medembed-trainer --bench heldout_folds

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
    let defaults = Settings::load_with_env(None, Vec::new()).expect("defaults");
    let mut results = Vec::new();
    for fold in 0..FOLDS {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (train, held): (Vec<_>, Vec<_>) =
            pairs.iter().zip(&folds).partition(|(_, f)| **f != fold);
        let train: Vec<&LabelledPair> = train.into_iter().map(|(p, _)| p).collect();
        let held: Vec<&LabelledPair> = held.into_iter().map(|(p, _)| p).collect();
        let (train_csv, val_csv) = (tmp.path().join("train.csv"), tmp.path().join("val.csv"));
        write_csv(&train_csv, &train);
        write_csv(&val_csv, &held);
        let mut settings = defaults.train.clone();
        settings.base_model = minilm.clone();
        settings.device = ComputeDevice::Cpu;
        settings.epochs = 1;
        settings.batch_size = 16;
        settings.max_seq_length = 128;
        let evaluations = Evaluations::default();
        let job = StandaloneJob {
            train: train_csv,
            val: val_csv,
            test: None,
            out: tmp.path().join("model"),
            settings,
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
        eprintln!(
            "fold {fold}: {} train / {} held-out pairs, nDCG@10 {base:.4} -> {epoch_end:.4}",
            train.len(),
            held.len()
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
            "loss": "mnrl",
            "epochs": 1,
            "folds": results,
            "folds_raised": gains.iter().filter(|g| **g > 0.0).count(),
            "mean_gain_ndcg_at_10": gains.iter().sum::<f64>() / gains.len() as f64,
        })
    );
}
