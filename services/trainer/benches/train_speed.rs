//! Training and encoding speed on this CPU, next to sentence-transformers in the same run.
//!
//! For all-MiniLM-L6-v2 and a BERT-base-shaped model (random weights, 768 wide, 12 layers, 12
//! heads): MNRL training at batch 8, max length 256, on the same real seed pairs (the first
//! positives of train_small.csv), after warmup steps, in the trainer's default precision (`auto`:
//! bf16 matmuls on a CPU with AMX, fp32 otherwise); then `encode` of 256 real abstracts in fp32
//! and in bf16, with the worst cosine between the two. The
//! Python side is `st_reference.py`, run with `MEDEMBED_BENCH_PYTHON` (a venv with
//! sentence-transformers, outside the project). Prints one JSON line per model.
//!
//! `cargo bench -p medembed-trainer --bench train_speed`

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use medembed_model::testing::write_random_model;
use medembed_model::{Precision, SentenceEncoder};
use medembed_pipeline::config::{ComputeDevice, Settings, TrainLoss};
use medembed_pipeline::store::LocalStore;
use medembed_pipeline::testing::peak_rss_mib;
use medembed_trainer::checkpoint::StoreCheckpoints;
use medembed_trainer::data::read_pairs;
use medembed_trainer::train::{Quiet, Run, TrainInputs};
use tokio_util::sync::CancellationToken;

const BATCH: usize = 8;
const MAX_LEN: usize = 256;

fn main() {
    let python = std::env::var("MEDEMBED_BENCH_PYTHON").expect(
        "MEDEMBED_BENCH_PYTHON: a python with sentence-transformers (e.g. a venv outside the project)",
    );
    let minilm = std::env::var("MEDEMBED_TEST_MODEL_DIR").expect("MEDEMBED_TEST_MODEL_DIR");
    let tmp = tempfile::tempdir().expect("tempdir");
    let base = tmp.path().join("bert-base-random");
    write_random_model(&base, Path::new(&minilm), 768, 12, 12, 1).expect("random BERT-base");

    let seed =
        read_pairs(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/train_small.csv"))
            .expect("seed pairs");
    let positives: Vec<_> = seed.iter().filter(|p| p.label >= 0.5).cloned().collect();
    let texts: Vec<String> = seed.iter().take(256).map(|p| p.text_a.clone()).collect();
    let texts_json = tmp.path().join("texts.json");
    std::fs::write(&texts_json, serde_json::to_vec(&texts).expect("json")).expect("write");

    for (name, dir, warmup, steps) in [
        ("all-MiniLM-L6-v2", Path::new(&minilm).to_path_buf(), 2, 12),
        ("bert-base-shaped (random)", base.clone(), 1, 4),
    ] {
        let pairs = &positives[..(warmup + steps) * BATCH];
        let pairs_json = tmp.path().join("pairs.json");
        let as_json: Vec<[&str; 2]> = pairs
            .iter()
            .map(|p| [p.text_a.as_str(), p.text_b.as_str()])
            .collect();
        std::fs::write(&pairs_json, serde_json::to_vec(&as_json).expect("json")).expect("write");

        // Ours: the trainer's own loop (no evaluation sets, no checkpoints between steps).
        let mut settings = Settings::load_with_env(None, Vec::new())
            .expect("defaults")
            .train;
        settings.loss = TrainLoss::Mnrl;
        settings.batch_size = BATCH;
        settings.max_seq_length = MAX_LEN;
        settings.epochs = 1;
        settings.checkpoint_every_steps = 0;
        settings.device = ComputeDevice::Cpu;
        let inputs = TrainInputs {
            train: pairs.to_vec(),
            ..TrainInputs::default()
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let checkpoints = StoreCheckpoints {
            store: Arc::new(
                LocalStore::new(tmp.path().join(format!("ckpt-{steps}"))).expect("store"),
            ),
            prefix: "c".into(),
            handle: runtime.handle().clone(),
        };
        let encoder = SentenceEncoder::load(&dir, tch::Device::Cpu).expect("model loads");
        let run = Run {
            settings: &settings,
            base_model: name,
            inputs: &inputs,
            checkpoints: &checkpoints,
            stop: CancellationToken::new(),
        };
        let outcome = {
            let _enter = runtime.enter();
            run.train(encoder, &mut Quiet).expect("training runs")
        };
        let measured = &outcome.progress.log[warmup..];
        let pairs_done: u64 = measured.iter().map(|r| r.pairs).sum();
        let seconds: f64 = measured
            .iter()
            .map(|r| r.pairs as f64 / r.pairs_per_second)
            .sum();
        let ours_train = pairs_done as f64 / seconds;

        let train_precision = outcome.progress.precision.clone();
        let mut encoder = outcome.encoder;
        encoder.set_max_seq_length(MAX_LEN).expect("max len");
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let mut encode = |precision: Precision| {
            encoder.set_precision(precision);
            encoder.encode(&refs[..32]).expect("warm up");
            let start = Instant::now();
            let vectors = encoder.encode(&refs).expect("encode");
            (refs.len() as f64 / start.elapsed().as_secs_f64(), vectors)
        };
        let (fp32_encode, fp32_vectors) = encode(Precision::Fp32);
        let (bf16_encode, bf16_vectors) = encode(Precision::Bf16);
        let worst_cosine = fp32_vectors
            .iter()
            .zip(&bf16_vectors)
            .map(|(a, b)| {
                let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
                let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
                dot / (norm(a) * norm(b))
            })
            .fold(1.0f32, f32::min);
        let ours_encode = fp32_encode.max(bf16_encode);
        let ours_rss = peak_rss_mib();

        let output = Command::new(&python)
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/st_reference.py"))
            .arg(&dir)
            .arg(&pairs_json)
            .arg(&texts_json)
            .args([BATCH, MAX_LEN, warmup, steps].map(|n| n.to_string()))
            .output()
            .expect("python runs");
        assert!(
            output.status.success(),
            "st_reference.py failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let theirs: serde_json::Value = serde_json::from_slice(
            output
                .stdout
                .rsplit(|&b| b == b'\n')
                .find(|l| !l.is_empty())
                .expect("a line"),
        )
        .expect("st_reference.py prints JSON");
        let their_train = theirs["train_pairs_per_s"].as_f64().expect("figure");
        let their_encode = theirs["encode_texts_per_s"].as_f64().expect("figure");
        println!(
            "{}",
            serde_json::json!({
                "name": "trainer_speed",
                "model": name,
                "batch": BATCH,
                "max_len": MAX_LEN,
                "measured_steps": steps,
                "threads": tch::get_num_threads(),
                "train_precision": train_precision,
                "train_pairs_per_s": ours_train,
                "encode_texts_per_s_fp32": fp32_encode,
                "encode_texts_per_s_bf16": bf16_encode,
                "encode_bf16_vs_fp32_worst_cosine": worst_cosine,
                "peak_rss_mib": ours_rss,
                "baseline": {
                    "name": format!("sentence-transformers {}", theirs["sentence_transformers"].as_str().unwrap_or("?")),
                    "torch": theirs["torch"],
                    "train_pairs_per_s": their_train,
                    "encode_texts_per_s": their_encode,
                    "peak_rss_mib": theirs["peak_rss_mib"],
                },
                "train_speedup": ours_train / their_train,
                "encode_speedup": ours_encode / their_encode,
            })
        );
    }
}
