//! The indexer's embedding throughput on this CPU next to sentence-transformers' `encode` on the
//! same texts and model, in the same run, all-MiniLM-L6-v2, max length 256, for two kinds of
//! text: 1,000 real abstracts (the seed pairs' texts), and 1,000 short queries (the Alzheimer
//! sample's 317 dev queries, then titles of its corpus), as search encodes them. medembed runs as
//! the embed stage does (`index.*` defaults: length-sorted batches of 16,384 tokens through the
//! packed encoder, precision `auto`, i.e. bf16 on a CPU with bf16 instructions) and also in fp32
//! and bf16; with the MFU of each (`medembed_model::flops`) and the worst cosine between
//! medembed's and sentence-transformers' embeddings. One JSON line per kind of text.
//!
//! `MEDEMBED_BENCH_PYTHON=/path/to/venv/bin/python cargo bench -p medembed-indexer --bench embed_speed`

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use medembed_indexer::model::{EncoderOptions, load_encoder};
use medembed_model::Precision;
use medembed_model::flops::{ModelFlops, cpu_peak_flops};
use medembed_pipeline::config::{ComputeDevice, ComputePrecision, Settings};
use medembed_pipeline::testing::peak_rss_mib;

const TEXTS: usize = 1000;
const MAX_LEN: usize = 256;

/// 1,000 distinct texts of the seed pairs (abstracts).
fn abstracts() -> Vec<String> {
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
    texts
}

/// 1,000 short queries: the Alzheimer sample's dev queries, then its corpus's titles.
fn short_queries() -> Vec<String> {
    let dev = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../samples/alzheimer/dev");
    let field = |file: &str, key: &str| -> Vec<String> {
        std::fs::read_to_string(dev.join(file))
            .expect("the sample's dev set")
            .lines()
            .filter_map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).expect("JSON line");
                v[key]
                    .as_str()
                    .filter(|t| !t.is_empty())
                    .map(str::to_string)
            })
            .collect()
    };
    let mut texts = field("queries.jsonl", "text");
    texts.extend(field("corpus.jsonl", "title"));
    texts.truncate(TEXTS);
    texts
}

fn main() {
    let python = std::env::var("MEDEMBED_BENCH_PYTHON").expect(
        "MEDEMBED_BENCH_PYTHON: a python with sentence-transformers (e.g. a venv outside the project)",
    );
    let minilm = std::env::var("MEDEMBED_TEST_MODEL_DIR").expect("MEDEMBED_TEST_MODEL_DIR");
    let settings = Settings::load_with_env(None, Vec::new())
        .expect("defaults")
        .index;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    for (kind, texts) in [
        ("abstracts", abstracts()),
        ("short queries", short_queries()),
    ] {
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
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
            let seconds = started.elapsed().as_secs_f64();
            let flops = ModelFlops::of(&encoder.folder.config).forward(
                encoder
                    .tokenize(&refs)
                    .expect("tokenize")
                    .iter()
                    .map(Vec::len),
            );
            let used = Precision::for_setting(precision, tch::Device::Cpu);
            let mfu = cpu_peak_flops(used, threads).map(|(peak, _)| flops / seconds / peak);
            (refs.len() as f64 / seconds, vectors, mfu)
        };
        let (auto_rate, auto_vectors, auto_mfu) = measure(settings.precision);
        let (fp32_rate, _, fp32_mfu) = measure(ComputePrecision::Fp32);
        let (bf16_rate, _, bf16_mfu) = measure(ComputePrecision::Bf16);
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
            "texts_kind": kind,
            "model": "all-MiniLM-L6-v2",
            "texts": refs.len(),
            "max_len": MAX_LEN,
            "threads": threads,
            "precision": format!("{:?}", settings.precision).to_lowercase(),
            "embeddings_per_s": auto_rate,
            "embeddings_per_s_fp32": fp32_rate,
            "embeddings_per_s_bf16": bf16_rate,
            "mfu": auto_mfu,
            "mfu_fp32": fp32_mfu,
            "mfu_bf16": bf16_mfu,
            "speedup": auto_rate / theirs_rate,
            "speedup_fp32": fp32_rate / theirs_rate,
            "worst_cosine_vs_baseline": worst_cosine,
            "peak_rss_mib": ours_rss,
            "baseline": baseline,
        });
        println!("{line}");
    }
}
