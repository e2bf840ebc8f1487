//! The packed (unpadded) encoder against the padded reference on the CPU: the same embeddings in
//! fp32 (max abs difference ≤ 1e-5), the same MNRL gradients (relative difference ≤ 1e-4 in fp32
//! over the whole gradient; ≤ 1e-10 for every parameter in fp64, i.e. the same math), on batches
//! that mix title-length and abstract-length texts (the real seed pairs), for a random tiny BERT
//! and for the real all-MiniLM-L6-v2; mean and [CLS] pooling; a batch with no padding at all (the packed encoder's no-scatter path); and the
//! grouping of similar lengths for attention.

use std::path::PathBuf;

use medembed_model::SentenceEncoder;
use medembed_model::bert::PackedBatch;
use medembed_model::testing::write_tiny_random_model;
use medembed_trainer::loss::mnrl;
use tch::{Device, Tensor};

fn minilm() -> PathBuf {
    PathBuf::from(
        std::env::var("MEDEMBED_TEST_MODEL_DIR")
            .expect("MEDEMBED_TEST_MODEL_DIR (run deploy/dev/deps)"),
    )
}

/// The 16 seed pairs' abstracts, and a title-length query for each (its first 8 words).
fn mixed_texts() -> (Vec<String>, Vec<String>) {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/seed_positives_16.csv"
    );
    let mut queries = Vec::new();
    let mut documents = Vec::new();
    for record in csv::Reader::from_path(path).expect("fixture").records() {
        let record = record.expect("row");
        let words: Vec<&str> = record[0].split_whitespace().take(8).collect();
        queries.push(words.join(" "));
        documents.push(record[1].to_string());
    }
    (queries, documents)
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

/// Packed and padded embeddings of `batch` (eval mode); returns the largest difference.
fn embedding_difference(encoder: &SentenceEncoder, batch: &[&[i64]]) -> f64 {
    let _guard = tch::no_grad_guard();
    let packed = encoder.forward(batch, false);
    let padded = encoder.forward_padded(batch, false);
    assert_eq!(packed.size(), padded.size());
    max_abs_diff(&packed, &padded)
}

/// Every parameter's gradient of the MNRL loss (queries → documents, eval mode so that no dropout
/// differs), through the packed or the padded encoder.
fn mnrl_gradients(
    encoder: &SentenceEncoder,
    queries: &[&[i64]],
    documents: &[&[i64]],
    packed: bool,
) -> Vec<(String, Tensor)> {
    for (_, mut var) in encoder.vs.variables() {
        let mut grad = var.grad();
        if grad.defined() {
            let _ = grad.zero_();
        }
        let _ = var.requires_grad_(true);
    }
    let forward = |batch: &[&[i64]]| {
        if packed {
            encoder.forward(batch, false)
        } else {
            encoder.forward_padded(batch, false)
        }
    };
    let loss = mnrl(&forward(queries), &forward(documents), None, 20.0, false);
    loss.backward();
    let mut grads: Vec<(String, Tensor)> = encoder
        .vs
        .variables()
        .into_iter()
        .map(|(name, var)| (name, var.grad().copy()))
        .collect();
    grads.sort_by(|a, b| a.0.cmp(&b.0));
    grads
}

/// How far the packed gradients are from the padded ones: relative to the whole gradient
/// (`‖packed − padded‖ / ‖padded‖` over every parameter), and the worst single parameter's, with
/// its name.
fn gradient_difference(
    encoder: &SentenceEncoder,
    q: &[&[i64]],
    d: &[&[i64]],
) -> (f64, f64, String) {
    let packed = mnrl_gradients(encoder, q, d, true);
    let padded = mnrl_gradients(encoder, q, d, false);
    assert_eq!(packed.len(), padded.len());
    let largest = padded
        .iter()
        .map(|(_, g)| g.abs().max().double_value(&[]))
        .fold(0.0, f64::max);
    let (mut diff_sq, mut norm_sq) = (0.0, 0.0);
    let mut worst = (0.0, String::new());
    for ((name, a), (_, b)) in packed.iter().zip(&padded) {
        if name.ends_with("key.bias") {
            // The key bias shifts every score of a query alike, which softmax cancels: its true
            // gradient is 0, and what both paths get is float noise, tiny against the rest.
            for g in [a, b] {
                let noise = g.abs().max().double_value(&[]);
                assert!(
                    noise <= 1e-5 * largest,
                    "{name}: {noise:e} against {largest:e}"
                );
            }
            continue;
        }
        let diff = (a - b).norm().double_value(&[]);
        let scale = b.norm().double_value(&[]);
        diff_sq += diff * diff;
        norm_sq += scale * scale;
        if scale == 0.0 {
            assert_eq!(diff, 0.0, "{name}");
            continue;
        }
        if diff / scale > worst.0 {
            worst = (diff / scale, name.clone());
        }
    }
    ((diff_sq / norm_sq).sqrt(), worst.0, worst.1)
}

/// Runs the checks on the model `load` gives (called twice: once for fp32, once for fp64, so
/// that no fp32 gradient is left on the fp64 parameters).
fn check(load: &dyn Fn() -> SentenceEncoder, label: &str) {
    let encoder = &load();
    let (queries, documents) = mixed_texts();
    let q_ids = encoder
        .tokenize(&queries.iter().map(String::as_str).collect::<Vec<_>>())
        .expect("tokenize");
    let d_ids = encoder
        .tokenize(&documents.iter().map(String::as_str).collect::<Vec<_>>())
        .expect("tokenize");
    let q: Vec<&[i64]> = q_ids.iter().map(Vec::as_slice).collect();
    let d: Vec<&[i64]> = d_ids.iter().map(Vec::as_slice).collect();
    // The batch really mixes lengths: short queries among long documents.
    let mut mixed: Vec<&[i64]> = q.iter().zip(&d).flat_map(|(a, b)| [*a, *b]).collect();
    let shortest = mixed.iter().map(|t| t.len()).min().unwrap();
    let longest = mixed.iter().map(|t| t.len()).max().unwrap();
    assert!(longest >= 4 * shortest, "{shortest}..{longest} tokens");

    // Attention pads similar lengths together: the mixed batch makes several groups, each of
    // sequences at least half as long as its longest; equal lengths make one group, unpadded.
    let packed = PackedBatch::new(&mixed, 0, Device::Cpu);
    assert!(packed.groups.len() > 1, "{:?}", packed.groups);
    for g in &packed.groups {
        assert!(g.tokens * 2 >= g.sequences * g.longest, "{g:?}");
    }
    let equal = PackedBatch::new(&[d[0], d[0]], 0, Device::Cpu);
    assert!(equal.groups.len() == 1 && equal.groups[0].padding.is_none());

    let embeddings = embedding_difference(encoder, &mixed);
    assert!(
        embeddings <= 1e-5,
        "{label}: embeddings differ by {embeddings:e}"
    );
    // No padding at all: every sequence equally long.
    let same = [d[0], d[0], d[0]];
    let unpadded = embedding_difference(encoder, &same);
    assert!(
        unpadded <= 1e-5,
        "{label}: equal lengths differ by {unpadded:e}"
    );
    // One text alone, and the order of a batch, change nothing.
    mixed.reverse();
    let reversed = embedding_difference(encoder, &mixed);
    assert!(
        reversed <= 1e-5,
        "{label}: reversed batch differs by {reversed:e}"
    );

    // fp32: the whole gradient within 1e-4, every parameter's within 1e-3. (A parameter whose
    // gradient is a sum with much cancellation, such as the last LayerNorm's bias of a random
    // model, loses more digits to rounding in a different summation order.)
    let (whole, worst, name) = gradient_difference(encoder, &q, &d);
    assert!(
        whole <= 1e-4,
        "{label}: the gradient differs by {whole:e} (relative)"
    );
    assert!(
        worst <= 1e-3,
        "{label}: the gradient of {name} differs by {worst:e} (relative)"
    );
    // fp64: the same math, so every parameter's gradient agrees to rounding.
    let mut in_f64 = load();
    in_f64.vs.double();
    let (whole_f64, worst_f64, name_f64) = gradient_difference(&in_f64, &q, &d);
    assert!(
        worst_f64 <= 1e-10,
        "{label} in fp64: the gradient of {name_f64} differs by {worst_f64:e} (relative)"
    );
    println!(
        "packed vs padded ({label}): embeddings {embeddings:.1e}, equal lengths {unpadded:.1e}; MNRL gradient (relative) fp32 {whole:.1e}, worst parameter {worst:.1e} ({name}); fp64 {whole_f64:.1e}, worst {worst_f64:.1e}; {shortest}..{longest} tokens"
    );
}

#[test]
fn a_random_tiny_bert_packed_matches_padded() {
    let tmp = tempfile::tempdir().expect("tempdir");
    write_tiny_random_model(tmp.path(), &minilm(), 32, 2, 11).expect("tiny model");
    let load = || SentenceEncoder::load(tmp.path(), Device::Cpu).expect("tiny model loads");
    check(&load, "tiny, mean pooling");
}

#[test]
fn cls_pooling_packed_matches_padded() {
    let tmp = tempfile::tempdir().expect("tempdir");
    write_tiny_random_model(tmp.path(), &minilm(), 32, 2, 12).expect("tiny model");
    std::fs::write(
        tmp.path().join("1_Pooling/config.json"),
        r#"{"word_embedding_dimension": 32, "pooling_mode_cls_token": true, "pooling_mode_mean_tokens": false}"#,
    )
    .expect("pooling config");
    let load = || SentenceEncoder::load(tmp.path(), Device::Cpu).expect("loads");
    check(&load, "tiny, [CLS] pooling");
}

#[test]
fn all_minilm_l6_v2_packed_matches_padded() {
    let load = || SentenceEncoder::load(&minilm(), Device::Cpu).expect("MiniLM loads");
    check(&load, "all-MiniLM-L6-v2");
}
