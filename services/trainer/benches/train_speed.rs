//! Training and encoding speed on this CPU, next to sentence-transformers in the same run, with
//! model FLOPs utilization (MFU: model FLOPs of the real tokens per second over the CPU's peak,
//! `medembed_model::flops`).
//!
//! Three cases, for all-MiniLM-L6-v2 and a BERT-base-shaped model (random weights, 768 wide, 12
//! layers, 12 heads), MNRL training at batch 8, max length 256, through the trainer's own loop
//! after warmup steps, in fp32 and in the trainer's default precision (`auto`: bf16 matmuls where
//! the CPU has bf16 instructions), then `encode` in fp32 and in bf16:
//! - **fixed length**: the first positives of train_small.csv (abstract → abstract, all longer
//!   than 256 tokens), encoding 256 of those abstracts;
//! - **mixed length**: title → abstract pairs of the Alzheimer sample's corpus (samples/alzheimer/
//!   dev), encoding 256 of the sample's dev queries (short queries, as search sends them);
//! - **pair mix**: the default job's mix of sources, three abstract → abstract pairs (the dev
//!   set's judged citation and MeSH relations) to two title → abstract pairs (about the default
//!   job's proportion on the sample), so one side of a batch mixes titles with abstracts: the case
//!   where padding to the batch's longest text costs most. Encoding as in the mixed case.
//!
//! Beside them, MNRL forward and backward alone (fp32) through the packed encoder and through the
//! padded reference (`SentenceEncoder::forward_padded`): the unpadding's own effect.
//!
//! The Python side is `st_reference.py` (fp32, its defaults), run with `MEDEMBED_BENCH_PYTHON` (a
//! venv with sentence-transformers, outside the project). Prints one JSON line per case and model.
//!
//! `cargo bench -p medembed-trainer --bench train_speed`

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use medembed_model::flops::{ModelFlops, cpu_peak_flops};
use medembed_model::testing::write_random_model;
use medembed_model::{Precision, SentenceEncoder};
use medembed_pipeline::config::{ComputeDevice, ComputePrecision, Settings, TrainLoss};
use medembed_pipeline::store::LocalStore;
use medembed_pipeline::testing::peak_rss_mib;
use medembed_trainer::checkpoint::StoreCheckpoints;
use medembed_trainer::data::{LabelledPair, read_pairs};
use medembed_trainer::loss::mnrl;
use medembed_trainer::train::{Quiet, Run, TrainInputs};
use tokio_util::sync::CancellationToken;

const BATCH: usize = 8;
const MAX_LEN: usize = 256;

/// Pairs to train on and texts to encode.
struct Case {
    name: &'static str,
    pairs: Vec<LabelledPair>,
    texts: Vec<String>,
}

fn cases() -> Vec<Case> {
    let seed =
        read_pairs(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/train_small.csv"))
            .expect("seed pairs");
    let fixed = Case {
        name: "fixed length (abstract → abstract)",
        pairs: seed.iter().filter(|p| p.label >= 0.5).cloned().collect(),
        texts: seed.iter().take(256).map(|p| p.text_a.clone()).collect(),
    };
    let dev = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../samples/alzheimer/dev");
    let lines = |file: &str| -> Vec<serde_json::Value> {
        std::fs::read_to_string(dev.join(file))
            .expect("the sample's dev set")
            .lines()
            .map(|l| serde_json::from_str(l).expect("JSON line"))
            .collect()
    };
    let pair = |a: &str, b: &str, source: &str| LabelledPair {
        text_a: a.to_string(),
        text_b: b.to_string(),
        label: 1.0,
        source: source.into(),
        id_a: String::new(),
        id_b: String::new(),
    };
    let corpus = lines("corpus.jsonl");
    let titled: Vec<(&str, &str, &str)> = corpus
        .iter()
        .filter_map(|d| {
            let title = d["title"].as_str().filter(|t| !t.is_empty())?;
            let text = d["text"].as_str().filter(|t| !t.is_empty())?;
            Some((d["_id"].as_str()?, title, text))
        })
        .collect();
    let title_pairs: Vec<LabelledPair> = titled
        .iter()
        .map(|(_, title, text)| pair(title, text, "title"))
        .collect();
    let queries: Vec<String> = lines("queries.jsonl")
        .iter()
        .take(256)
        .map(|q| q["text"].as_str().expect("query text").to_string())
        .collect();

    // The default job's mix: relation pairs (abstract → abstract: the dev set's judged citation and
    // MeSH relations) and title pairs, three to two, interleaved, no text twice. The anchor side
    // of a batch mixes abstracts with titles, which the padded encoder pads to the abstracts'
    // length.
    let abstracts: std::collections::HashMap<&str, &str> =
        titled.iter().map(|(id, _, text)| (*id, *text)).collect();
    let relations = std::fs::read_to_string(dev.join("qrels/test.tsv")).expect("the dev qrels");
    let mut used = std::collections::HashSet::new();
    let mut relation_pairs = Vec::new();
    for line in relations.lines().skip(1) {
        let mut fields = line.split('\t');
        let (Some(q), Some(d)) = (fields.next(), fields.next()) else {
            continue;
        };
        if let (Some(a), Some(b)) = (abstracts.get(q), abstracts.get(d))
            && !used.contains(q)
            && !used.contains(d)
        {
            used.insert(q);
            used.insert(d);
            relation_pairs.push(pair(a, b, "relation"));
        }
    }
    let mut unused_titles = titled
        .iter()
        .filter(|(id, _, _)| !used.contains(id))
        .map(|(_, title, text)| pair(title, text, "title"));
    let mut mix = Vec::new();
    for chunk in relation_pairs.chunks(3) {
        mix.extend_from_slice(chunk);
        mix.extend(unused_titles.by_ref().take(2));
    }
    let mixed = Case {
        name: "mixed length (title → abstract)",
        pairs: title_pairs,
        texts: queries.clone(),
    };
    let pair_mix = Case {
        name: "pair mix (3 abstract → abstract : 2 title → abstract)",
        pairs: mix,
        texts: queries,
    };
    vec![fixed, mixed, pair_mix]
}

/// Model FLOPs of training on `pairs` and of encoding `texts`, per pair and per text, with the
/// real tokens of each (as the tokenizer cuts them at MAX_LEN).
struct Work {
    train_flops_per_pair: f64,
    train_tokens_per_pair: f64,
    encode_flops_per_text: f64,
    encode_tokens_per_text: f64,
}

fn work(encoder: &SentenceEncoder, pairs: &[LabelledPair], texts: &[String]) -> Work {
    let flops = ModelFlops::of(&encoder.folder.config);
    let lengths = |texts: Vec<&str>| -> Vec<usize> {
        encoder
            .tokenize(&texts)
            .expect("tokenize")
            .iter()
            .map(Vec::len)
            .collect()
    };
    let pair_lengths = lengths(
        pairs
            .iter()
            .flat_map(|p| [p.text_a.as_str(), p.text_b.as_str()])
            .collect(),
    );
    let text_lengths = lengths(texts.iter().map(String::as_str).collect());
    let per = |total: f64, n: usize| total / n.max(1) as f64;
    Work {
        train_flops_per_pair: per(flops.training(pair_lengths.iter().copied()), pairs.len()),
        train_tokens_per_pair: per(pair_lengths.iter().sum::<usize>() as f64, pairs.len()),
        encode_flops_per_text: per(flops.forward(text_lengths.iter().copied()), texts.len()),
        encode_tokens_per_text: per(text_lengths.iter().sum::<usize>() as f64, texts.len()),
    }
}

/// MFU of `flops_per_s` in `precision` on this CPU's `threads` cores (None: CPU not recognized).
fn mfu(flops_per_s: f64, precision: Precision, threads: usize) -> Option<f64> {
    cpu_peak_flops(precision, threads).map(|(peak, _)| flops_per_s / peak)
}

/// Pairs per second of the trainer's own loop on `pairs` (the steps after `warmup`), in
/// `precision`; and the trained encoder.
fn train_rate(
    dir: &Path,
    name: &str,
    pairs: &[LabelledPair],
    precision: ComputePrecision,
    warmup: usize,
    scratch: &Path,
) -> (f64, String, SentenceEncoder) {
    let mut settings = Settings::load_with_env(None, Vec::new())
        .expect("defaults")
        .train;
    settings.loss = TrainLoss::Mnrl;
    settings.batch_size = BATCH;
    settings.max_seq_length = MAX_LEN;
    settings.epochs = 1;
    settings.checkpoint_every_steps = 0;
    settings.device = ComputeDevice::Cpu;
    settings.precision = precision;
    let inputs = TrainInputs {
        train: pairs.to_vec(),
        ..TrainInputs::default()
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let store = scratch.join(format!("ckpt-{}", std::process::id()));
    let checkpoints = StoreCheckpoints {
        store: Arc::new(LocalStore::new(&store).expect("store")),
        prefix: format!("c-{name}-{precision:?}"),
        handle: runtime.handle().clone(),
    };
    let encoder = SentenceEncoder::load(dir, tch::Device::Cpu).expect("model loads");
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
    (
        pairs_done as f64 / seconds,
        outcome.progress.precision.clone(),
        outcome.encoder,
    )
}

/// Pairs per second of MNRL forward and backward alone (no optimizer) over `pairs` in batches of
/// BATCH, through the packed encoder or the padded reference: the unpadding's own effect, in the
/// same run.
fn encoder_pass_rate(encoder: &SentenceEncoder, pairs: &[LabelledPair], packed: bool) -> f64 {
    let side = |texts: Vec<&str>| encoder.tokenize(&texts).expect("tokenize");
    let a = side(pairs.iter().map(|p| p.text_a.as_str()).collect());
    let b = side(pairs.iter().map(|p| p.text_b.as_str()).collect());
    let forward = |ids: &[Vec<i64>]| {
        let batch: Vec<&[i64]> = ids.iter().map(Vec::as_slice).collect();
        if packed {
            encoder.forward(&batch, true)
        } else {
            encoder.forward_padded(&batch, true)
        }
    };
    let pass = |from: usize, to: usize| {
        mnrl(
            &forward(&a[from..to]),
            &forward(&b[from..to]),
            None,
            20.0,
            false,
        )
        .backward();
    };
    pass(0, BATCH);
    let started = Instant::now();
    for from in (BATCH..pairs.len()).step_by(BATCH) {
        pass(from, (from + BATCH).min(pairs.len()));
    }
    (pairs.len() - BATCH) as f64 / started.elapsed().as_secs_f64()
}

fn main() {
    let python = std::env::var("MEDEMBED_BENCH_PYTHON").expect(
        "MEDEMBED_BENCH_PYTHON: a python with sentence-transformers (e.g. a venv outside the project)",
    );
    let minilm = std::env::var("MEDEMBED_TEST_MODEL_DIR").expect("MEDEMBED_TEST_MODEL_DIR");
    let tmp = tempfile::tempdir().expect("tempdir");
    let base = tmp.path().join("bert-base-random");
    write_random_model(&base, Path::new(&minilm), 768, 12, 12, 1).expect("random BERT-base");
    let threads = tch::get_num_threads() as usize;
    let auto = Precision::for_setting(ComputePrecision::Auto, tch::Device::Cpu);
    let peak = |p: Precision| cpu_peak_flops(p, threads).map(|(f, how)| (f / 1e9, how));

    for case in cases() {
        let texts_json = tmp.path().join("texts.json");
        std::fs::write(&texts_json, serde_json::to_vec(&case.texts).expect("json")).expect("write");
        for (name, dir, warmup, steps) in [
            ("all-MiniLM-L6-v2", Path::new(&minilm).to_path_buf(), 2, 12),
            ("bert-base-shaped (random)", base.clone(), 2, 6),
        ] {
            let pairs = &case.pairs[..(warmup + steps) * BATCH];
            let pairs_json = tmp.path().join("pairs.json");
            let as_json: Vec<[&str; 2]> = pairs
                .iter()
                .map(|p| [p.text_a.as_str(), p.text_b.as_str()])
                .collect();
            std::fs::write(&pairs_json, serde_json::to_vec(&as_json).expect("json"))
                .expect("write");

            let (fp32_train, _, _) = train_rate(
                &dir,
                name,
                pairs,
                ComputePrecision::Fp32,
                warmup,
                tmp.path(),
            );
            let (auto_train, auto_name, mut encoder) = train_rate(
                &dir,
                name,
                pairs,
                ComputePrecision::Auto,
                warmup,
                tmp.path(),
            );
            encoder.set_max_seq_length(MAX_LEN).expect("max len");
            let w = work(&encoder, pairs, &case.texts);
            encoder.set_precision(Precision::Fp32);
            let padded_pass = encoder_pass_rate(&encoder, pairs, false);
            let packed_pass = encoder_pass_rate(&encoder, pairs, true);
            let refs: Vec<&str> = case.texts.iter().map(String::as_str).collect();
            let mut encode = |precision: Precision| {
                encoder.set_precision(precision);
                encoder.encode(&refs[..32]).expect("warm up");
                let start = Instant::now();
                encoder.encode(&refs).expect("encode");
                refs.len() as f64 / start.elapsed().as_secs_f64()
            };
            let fp32_encode = encode(Precision::Fp32);
            let bf16_encode = encode(Precision::Bf16);
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
            let train_mfu = |pairs_per_s: f64, p: Precision| {
                mfu(pairs_per_s * w.train_flops_per_pair, p, threads)
            };
            let encode_mfu = |texts_per_s: f64, p: Precision| {
                mfu(texts_per_s * w.encode_flops_per_text, p, threads)
            };
            println!(
                "{}",
                serde_json::json!({
                    "name": "trainer_speed",
                    "case": case.name,
                    "model": name,
                    "batch": BATCH,
                    "max_len": MAX_LEN,
                    "measured_steps": steps,
                    "threads": threads,
                    "real_tokens_per_pair": w.train_tokens_per_pair,
                    "real_tokens_per_encoded_text": w.encode_tokens_per_text,
                    "cpu_peak_gflops": {"fp32": peak(Precision::Fp32), "bf16": peak(Precision::Bf16)},
                    "train_fp32": {
                        "pairs_per_s": fp32_train,
                        "real_tokens_per_s": fp32_train * w.train_tokens_per_pair,
                        "mfu": train_mfu(fp32_train, Precision::Fp32),
                        "speedup_vs_baseline": fp32_train / their_train,
                    },
                    "train_default": {
                        "precision": auto_name,
                        "pairs_per_s": auto_train,
                        "real_tokens_per_s": auto_train * w.train_tokens_per_pair,
                        "mfu": train_mfu(auto_train, auto),
                        "speedup_vs_baseline": auto_train / their_train,
                    },
                    "fp32_forward_backward_pairs_per_s": {
                        "packed": packed_pass,
                        "padded_reference": padded_pass,
                        "speedup": packed_pass / padded_pass,
                    },
                    "encode_fp32": {
                        "texts_per_s": fp32_encode,
                        "mfu": encode_mfu(fp32_encode, Precision::Fp32),
                        "speedup_vs_baseline": fp32_encode / their_encode,
                    },
                    "encode_bf16": {
                        "texts_per_s": bf16_encode,
                        "mfu": encode_mfu(bf16_encode, Precision::Bf16),
                        "speedup_vs_baseline": bf16_encode / their_encode,
                    },
                    "peak_rss_mib": ours_rss,
                    "baseline": {
                        "name": format!("sentence-transformers {} (fp32)", theirs["sentence_transformers"].as_str().unwrap_or("?")),
                        "torch": theirs["torch"],
                        "train_pairs_per_s": their_train,
                        "train_mfu": train_mfu(their_train, Precision::Fp32),
                        "encode_texts_per_s": their_encode,
                        "encode_mfu": encode_mfu(their_encode, Precision::Fp32),
                        "peak_rss_mib": theirs["peak_rss_mib"],
                    },
                })
            );
        }
    }
}
