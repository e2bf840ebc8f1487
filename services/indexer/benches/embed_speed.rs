//! The indexer's embedding throughput on this CPU next to sentence-transformers' `encode` on the
//! same texts and model, in the same run: 1,000 real abstracts (the seed pairs' texts),
//! all-MiniLM-L6-v2, max length 256. medembed runs as the embed stage does (`index.*` defaults:
//! length-sorted batches of 16,384 padded tokens, precision `auto`, i.e. bf16 on a CPU with AMX
//! tiles) and also in fp32; the worst cosine between medembed's and sentence-transformers'
//! embeddings is reported too. One JSON line.
//!
//! `MEDEMBED_BENCH_PYTHON=/path/to/venv/bin/python cargo bench -p medembed-indexer --bench embed_speed`

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use medembed_indexer::model::{EncoderOptions, load_encoder};
use medembed_pipeline::config::{ComputeDevice, ComputePrecision, Settings};
use medembed_pipeline::testing::peak_rss_mib;

const TEXTS: usize = 1000;
const MAX_LEN: usize = 256;

fn main() {
    let python = std::env::var("MEDEMBED_BENCH_PYTHON").expect(
        "MEDEMBED_BENCH_PYTHON: a python with sentence-transformers (e.g. a venv outside the project)",
    );
    let minilm = std::env::var("MEDEMBED_TEST_MODEL_DIR").expect("MEDEMBED_TEST_MODEL_DIR");
    let seed =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../trainer/tests/fixtures/train_small.csv");
    let mut reader = csv::Reader::from_path(&seed).expect("seed pairs");
    let mut texts: Vec<String> = Vec::new();
    for record in reader.records() {
        let record = record.expect("csv row");
        for field in [0, 1] {
            let text = record[field].to_string();
            if !texts.contains(&text) {
                texts.push(text);
            }
        }
        if texts.len() >= TEXTS {
            break;
        }
    }
    texts.truncate(TEXTS);
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();

    let settings = Settings::load_with_env(None, Vec::new())
        .expect("defaults")
        .index;
    let measure = |precision: ComputePrecision| {
        let encoder = load_encoder(
            Path::new(&minilm),
            EncoderOptions {
                device: ComputeDevice::Cpu,
                precision,
                max_seq_length: MAX_LEN,
                batch_tokens: settings.batch_tokens,
                device_key: "index.device",
            },
        )
        .expect("model loads");
        encoder.encode(&refs[..32]).expect("warm up");
        let started = Instant::now();
        let vectors = encoder.encode(&refs).expect("encode");
        (refs.len() as f64 / started.elapsed().as_secs_f64(), vectors)
    };
    let (auto_rate, auto_vectors) = measure(settings.precision);
    let (fp32_rate, _) = measure(ComputePrecision::Fp32);
    let (bf16_rate, _) = measure(ComputePrecision::Bf16);
    let ours_rss = peak_rss_mib();

    let tmp = tempfile::tempdir().expect("tempdir");
    let texts_json = tmp.path().join("texts.json");
    std::fs::write(&texts_json, serde_json::to_vec(&texts).expect("json")).expect("write");
    let output = Command::new(&python)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/st_encode.py"))
        .arg(&minilm)
        .arg(&texts_json)
        .arg(MAX_LEN.to_string())
        .output()
        .expect("python runs");
    assert!(
        output.status.success(),
        "st_encode.py failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut baseline: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("st_encode.py prints JSON");
    let theirs: Vec<Vec<f32>> =
        serde_json::from_value(baseline["embeddings"].take()).expect("embeddings");
    baseline
        .as_object_mut()
        .expect("object")
        .remove("embeddings");
    let worst_cosine = auto_vectors
        .iter()
        .zip(&theirs)
        .map(|(a, b)| {
            let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
            let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
            dot / (norm(a) * norm(b))
        })
        .fold(1.0f32, f32::min);
    let theirs_rate = baseline["texts_per_s"].as_f64().expect("rate");
    let line = serde_json::json!({
        "name": "indexer_embed_speed",
        "model": "all-MiniLM-L6-v2",
        "texts": refs.len(),
        "max_len": MAX_LEN,
        "threads": std::thread::available_parallelism().map_or(1, |n| n.get()),
        "precision": format!("{:?}", settings.precision).to_lowercase(),
        "embeddings_per_s": auto_rate,
        "embeddings_per_s_fp32": fp32_rate,
        "embeddings_per_s_bf16": bf16_rate,
        "speedup": auto_rate / theirs_rate,
        "speedup_fp32": fp32_rate / theirs_rate,
        "worst_cosine_vs_baseline": worst_cosine,
        "peak_rss_mib": ours_rss,
        "baseline": baseline,
    });
    println!("{line}");
}
