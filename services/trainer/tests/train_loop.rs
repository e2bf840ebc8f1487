//! The training loop end to end on a tiny random BERT (2 layers, 32 wide, the real MiniLM
//! tokenizer) and real seed pairs, with checkpoints in a local store: every loss trains, gradient
//! accumulation counts steps right, an interrupted run resumes to the same end as an uninterrupted
//! one, and the published folder is complete and loads back to the same embeddings.
//!
//! Dropout draws from libtorch's one global generator, which the trainer seeds before every pass;
//! tests running side by side in this binary would draw from it in between, so each takes the
//! [`TORCH_RNG`] lock. (One training per process, as in the trainer, needs no lock.)

use std::path::Path;
use std::sync::Arc;

use medembed_corpus::pairs::{EvalDocument, EvalQuery};
use medembed_model::SentenceEncoder;
use medembed_model::testing::write_tiny_random_model;
use medembed_pipeline::config::{ComputeDevice, Settings, TrainLoss, TrainSettings};
use medembed_pipeline::store::LocalStore;
use medembed_trainer::artifacts::{
    DataSummary, ModelMetrics, training_log_schema, write_model_folder,
};
use medembed_trainer::checkpoint::StoreCheckpoints;
use medembed_trainer::data::{LabelledPair, RetrievalSet, read_pairs};
use medembed_trainer::train::{LogRow, Observer, Progress, Quiet, Run, TrainError, TrainInputs};
use tch::Device;
use tokio_util::sync::CancellationToken;

static TORCH_RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn torch_rng() -> std::sync::MutexGuard<'static, ()> {
    TORCH_RNG
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// 120 seed pairs (both labels) for training, the next 40 for val and test.
fn inputs() -> TrainInputs {
    let all = read_pairs(&fixture("train_small.csv")).expect("seed pairs");
    let (train, rest) = all.split_at(120);
    let val: Vec<LabelledPair> = rest[..40].to_vec();
    let test: Vec<LabelledPair> = rest[40..80].to_vec();
    TrainInputs {
        train: train.to_vec(),
        val_set: RetrievalSet::from_pairs(&val),
        test_set: RetrievalSet::from_pairs(&test),
        val,
        test,
    }
}

fn settings(loss: TrainLoss) -> TrainSettings {
    let mut s = Settings::load_with_env(None, Vec::new())
        .expect("defaults")
        .train;
    s.loss = loss;
    s.batch_size = 8;
    s.mini_batch_size = 3;
    s.learning_rate = 2e-3;
    s.max_seq_length = 48;
    s.epochs = 3;
    s.checkpoint_every_steps = 3;
    s.device = ComputeDevice::Cpu;
    s
}

fn tiny_model(dir: &Path) {
    let minilm = std::env::var("MEDEMBED_TEST_MODEL_DIR")
        .expect("MEDEMBED_TEST_MODEL_DIR (run deploy/dev/deps)");
    write_tiny_random_model(dir, Path::new(&minilm), 32, 2, 7).expect("tiny model");
}

struct Setup {
    _tmp: tempfile::TempDir,
    model: std::path::PathBuf,
    checkpoints: StoreCheckpoints,
    runtime: tokio::runtime::Runtime,
}

fn setup() -> Setup {
    let tmp = tempfile::tempdir().expect("tempdir");
    let model = tmp.path().join("base");
    tiny_model(&model);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let checkpoints = StoreCheckpoints {
        store: Arc::new(LocalStore::new(tmp.path().join("store")).expect("store")),
        prefix: "job/train/checkpoints".into(),
        handle: runtime.handle().clone(),
    };
    Setup {
        _tmp: tmp,
        model,
        checkpoints,
        runtime,
    }
}

fn train(
    setup: &Setup,
    settings: &TrainSettings,
    inputs: &TrainInputs,
    stop: CancellationToken,
    observer: &mut dyn Observer,
) -> Result<medembed_trainer::train::TrainOutcome, TrainError> {
    let _enter = setup.runtime.enter();
    let run = Run {
        settings,
        base_model: "tiny",
        inputs,
        checkpoints: &setup.checkpoints,
        stop,
    };
    let encoder = SentenceEncoder::load(&setup.model, Device::Cpu).expect("tiny model loads");
    run.train(encoder, observer)
}

fn mean_loss(rows: &[LogRow]) -> f64 {
    rows.iter().map(|r| r.loss).sum::<f64>() / rows.len() as f64
}

#[test]
fn every_loss_trains_and_the_folder_is_complete() {
    let _rng = torch_rng();
    let inputs = inputs();
    for loss in [
        TrainLoss::Mnrl,
        TrainLoss::CachedMnrl,
        TrainLoss::Cosine,
        TrainLoss::Contrastive,
    ] {
        let setup = setup();
        let s = settings(loss);
        let outcome = train(&setup, &s, &inputs, CancellationToken::new(), &mut Quiet)
            .unwrap_or_else(|e| panic!("{loss:?}: {e}"));
        let p = &outcome.progress;
        // MNRL trains on the ~60 positives (8 per batch), the others on all 120 pairs.
        // (A last batch of a single pair is left out for MNRL: it has no negative.)
        let per_epoch = outcome.examples / 8;
        assert!(p.step >= 3 * per_epoch, "{loss:?}: {} steps", p.step);
        assert_eq!(p.log.len(), p.step);
        let (first, last) = (
            mean_loss(&p.log[..per_epoch]),
            mean_loss(&p.log[p.step - per_epoch..]),
        );
        println!(
            "{loss:?}: {} steps, epoch loss {first:.4} -> {last:.4}",
            p.step
        );
        assert!(last < first, "{loss:?}: loss {first} -> {last}");
        assert!(
            p.log
                .iter()
                .all(|r| r.grad_norm.is_finite() && r.lr >= 0.0 && r.pairs > 0)
        );
        // Base model, then one evaluation per epoch.
        assert_eq!(p.val_history.len(), 4, "{loss:?}");

        let out = setup._tmp.path().join("model");
        let metrics = write_model_folder(
            &out,
            &outcome,
            &s,
            "tiny",
            DataSummary::of(&inputs, outcome.examples),
        )
        .expect("model folder");
        for file in [
            "config.json",
            "model.safetensors",
            "tokenizer.json",
            "modules.json",
            "sentence_bert_config.json",
            "config_sentence_transformers.json",
            "1_Pooling/config.json",
            "README.md",
            "metrics.json",
            "training_log.parquet",
            "training_curves.png",
            "similarity_distribution.png",
        ] {
            assert!(out.join(file).exists(), "{loss:?}: {file} missing");
        }
        for png in ["training_curves.png", "similarity_distribution.png"] {
            let bytes = std::fs::read(out.join(png)).expect("png");
            assert!(bytes.starts_with(b"\x89PNG") && bytes.len() > 5000, "{png}");
        }
        let read: ModelMetrics =
            serde_json::from_slice(&std::fs::read(out.join("metrics.json")).expect("metrics"))
                .expect("metrics.json parses");
        assert_eq!(read.settings, metrics.settings);
        assert_eq!(read.data, metrics.data);
        assert_eq!(read.optimizer_steps, p.step);
        assert_eq!(read.best_step, p.best_step);
        assert!((read.fine_tuned.val.ndcg_at_10 - outcome.final_val.ndcg_at_10).abs() < 1e-12);
        assert!((read.baseline.test.mrr_at_10 - p.baseline_test.mrr_at_10).abs() < 1e-12);
        assert_eq!(read.settings.loss, loss);
        let card = std::fs::read_to_string(out.join("README.md")).expect("card");
        assert!(
            card.contains("| nDCG@10 (hybrid) |") && card.contains(loss.name()),
            "{card}"
        );
        let log = medembed_pipeline::table::decode(
            "log",
            std::fs::read(out.join("training_log.parquet"))
                .expect("log")
                .into(),
            &training_log_schema(),
        )
        .expect("training_log.parquet reads");
        let rows: usize = log.iter().map(|b| b.num_rows()).sum();
        assert_eq!(rows, p.step, "{loss:?}: training_log rows");

        // The folder loads back to the embeddings of the trained encoder.
        let loaded = SentenceEncoder::load(&out, Device::Cpu).expect("published folder loads");
        assert_eq!(loaded.folder.max_seq_length, 48);
        let texts = [inputs.val[0].text_a.as_str(), "PD-1 blockade in melanoma"];
        assert_eq!(
            loaded.encode(&texts).expect("encode"),
            outcome.encoder.encode(&texts).expect("encode")
        );
    }
}

#[test]
fn gradient_accumulation_takes_one_step_per_group_of_batches() {
    let _rng = torch_rng();
    let inputs = inputs();
    let setup = setup();
    let mut s = settings(TrainLoss::Cosine);
    s.epochs = 1;
    s.gradient_accumulation = 4;
    let outcome = train(&setup, &s, &inputs, CancellationToken::new(), &mut Quiet).expect("train");
    // 120 pairs in batches of 8: 15 batches, in groups of 4: 4 steps.
    assert_eq!(outcome.progress.step, 4);
    assert_eq!(
        outcome.progress.log.iter().map(|r| r.pairs).sum::<u64>(),
        120
    );
}

#[test]
fn max_steps_caps_the_steps_over_all_epochs() {
    let _rng = torch_rng();
    let inputs = inputs();
    let setup = setup();
    let mut s = settings(TrainLoss::Cosine);
    // 3 epochs of 15 batches (120 pairs in batches of 8), cut to 20 steps of 2 batches.
    s.gradient_accumulation = 2;
    s.max_steps = 20;
    let outcome = train(&setup, &s, &inputs, CancellationToken::new(), &mut Quiet).expect("train");
    let p = &outcome.progress;
    assert_eq!(p.step, 20);
    // Epochs 1 and 2: 15 batches in 8 steps each (the last of one batch); epoch 3: the 4
    // steps (8 batches) left of the budget.
    let per_epoch: Vec<usize> = (0..3)
        .map(|e| p.log.iter().filter(|r| r.epoch == e).count())
        .collect();
    assert_eq!(per_epoch, [8, 8, 4]);
    assert_eq!(p.log.iter().map(|r| r.pairs).sum::<u64>(), 120 + 120 + 64);
    // The schedule ends at the budget: warmup ceil(0.1 × 20) = 2 steps, then linear decay
    // over 18, so the last step (index 19) runs at 1/18 of the peak (of 24 steps it would be 5/22).
    let last = p.log.last().expect("steps").lr;
    assert!(
        (last - s.learning_rate / 18.0).abs() < 1e-12,
        "last lr {last}"
    );

    // A budget inside the first epoch: the epochs past it are not run at all (no evaluation,
    // no checkpoint each), so the run ends after epoch 1.
    s.max_steps = 5;
    let outcome = train(&setup, &s, &inputs, CancellationToken::new(), &mut Quiet).expect("train");
    let p = &outcome.progress;
    assert_eq!((p.step, p.epoch), (5, 1), "{:?}", p.val_history);
    assert_eq!(p.val_history.len(), 2, "base and the end of epoch 1");
}

/// Stops the run (as SIGTERM or Ctrl-C would) once it reaches `at` steps.
struct StopAt {
    at: usize,
    stop: CancellationToken,
}

impl Observer for StopAt {
    fn step(&mut self, progress: &Progress, _row: &LogRow) {
        if progress.step == self.at {
            self.stop.cancel();
        }
    }
}

#[test]
fn an_interrupted_run_resumes_to_the_same_end() {
    let _rng = torch_rng();
    let inputs = inputs();
    let s = settings(TrainLoss::Mnrl);
    let setup = setup();
    let whole_run = Setup {
        checkpoints: StoreCheckpoints {
            prefix: "whole/checkpoints".into(),
            ..setup.checkpoints.clone()
        },
        model: setup.model.clone(),
        _tmp: tempfile::tempdir().expect("tempdir"),
        runtime: tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime"),
    };
    let whole = train(
        &whole_run,
        &s,
        &inputs,
        CancellationToken::new(),
        &mut Quiet,
    )
    .expect("whole run");

    let stop = CancellationToken::new();
    let mut observer = StopAt {
        at: 5,
        stop: stop.clone(),
    };
    match train(&setup, &s, &inputs, stop, &mut observer) {
        Err(TrainError::Interrupted { step, total }) => {
            assert_eq!(step, 5);
            assert_eq!(total, whole.progress.step);
        }
        other => panic!("expected an interruption, got {other:?}"),
    }
    let resumed =
        train(&setup, &s, &inputs, CancellationToken::new(), &mut Quiet).expect("resumed run");
    assert_eq!(resumed.progress.resumes, 1);
    assert_eq!(resumed.progress.step, whole.progress.step);
    assert_eq!(resumed.progress.log.len(), whole.progress.log.len());
    // Same data order, same dropout, same optimizer state: the same run, step for step.
    for (a, b) in resumed.progress.log.iter().zip(&whole.progress.log) {
        assert_eq!((a.step, a.epoch, a.pairs), (b.step, b.epoch, b.pairs));
        assert!(
            (a.loss - b.loss).abs() < 1e-4,
            "step {}: {} vs {}",
            a.step,
            a.loss,
            b.loss
        );
    }
    assert_eq!(resumed.progress.best_step, whole.progress.best_step);
    let text = [inputs.val[1].text_b.as_str()];
    let (x, y) = (
        resumed.encoder.encode(&text).expect("encode"),
        whole.encoder.encode(&text).expect("encode"),
    );
    let cos: f32 = x[0].iter().zip(&y[0]).map(|(a, b)| a * b).sum();
    assert!(
        cos > 0.9999,
        "resumed and whole runs end with the same model: cos {cos}"
    );

    // A checkpoint of other settings is not resumed.
    let mut other = s.clone();
    other.seed = 7;
    let fresh = train(
        &setup,
        &other,
        &inputs,
        CancellationToken::new(),
        &mut Quiet,
    )
    .expect("other run");
    assert_eq!(fresh.progress.resumes, 0);
}

#[test]
fn mnrl_without_positives_is_a_data_error() {
    let _rng = torch_rng();
    let mut inputs = inputs();
    inputs.train.retain(|p| p.label < 0.5);
    let err = train(
        &setup(),
        &settings(TrainLoss::Mnrl),
        &inputs,
        CancellationToken::new(),
        &mut Quiet,
    )
    .expect_err("no positives");
    assert!(
        matches!(err, TrainError::Data(ref m) if m.contains("no positive pairs")),
        "{err}"
    );
}

#[test]
fn a_run_that_cannot_beat_the_base_model_returns_the_base_weights() {
    let _rng = torch_rng();
    let setup = setup();
    let mut inputs = inputs();
    // A val set the base model already answers perfectly (each query is its document's whole
    // text: cosine 1 and the best BM25), so no step can beat it, however training goes.
    let mut texts: Vec<String> = inputs.val.iter().map(|p| p.text_a.clone()).collect();
    texts.dedup();
    let corpus: Vec<EvalDocument> = texts
        .iter()
        .take(8)
        .enumerate()
        .map(|(i, text)| EvalDocument {
            id: format!("d{i}"),
            text: text.clone(),
        })
        .collect();
    let queries = corpus
        .iter()
        .map(|d| EvalQuery {
            query_id: format!("q{}", d.id),
            query: d.text.clone(),
            relevant_ids: vec![d.id.clone()],
            gains: Vec::new(),
        })
        .collect();
    inputs.val_set = RetrievalSet { queries, corpus };
    let mut s = settings(TrainLoss::Mnrl);
    s.learning_rate = 5e-2;
    s.epochs = 2;
    let outcome = train(&setup, &s, &inputs, CancellationToken::new(), &mut Quiet).expect("trains");
    let p = &outcome.progress;
    assert_eq!(p.baseline_val.ndcg_at_10, 1.0, "{:?}", p.baseline_val);
    assert!(
        p.step > 0 && p.val_history.len() >= 3,
        "trained and evaluated: {p:?}"
    );
    assert_eq!(p.best_step, 0, "{:?}", p.val_history);
    // What the run returns (and the stage publishes) is the base model itself.
    assert_eq!(outcome.final_val.ndcg_at_10, p.baseline_val.ndcg_at_10);
    let base = SentenceEncoder::load(&setup.model, Device::Cpu).expect("base");
    let probe: Vec<&str> = texts.iter().take(3).map(String::as_str).collect();
    let (mut base, mut returned) = (base, outcome.encoder);
    base.set_max_seq_length(s.max_seq_length).expect("length");
    returned
        .set_max_seq_length(s.max_seq_length)
        .expect("length");
    for (a, b) in base
        .encode(&probe)
        .expect("base encodes")
        .iter()
        .zip(returned.encode(&probe).expect("returned encodes"))
    {
        let diff = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max);
        assert!(
            diff < 1e-5,
            "the returned weights are the base's (max diff {diff})"
        );
    }
}
