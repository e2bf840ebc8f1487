//! Parity with sentence-transformers: the 24 reference texts of
//! `fixtures/all-minilm-l6-v2_embeddings.json` (made by sentence-transformers 6.2.0 on CPU, fp32,
//! from the same all-MiniLM-L6-v2 files) give exactly the same token ids and embeddings with cosine
//! ≥ 0.9999, and the 8 reference pair cosines match to 1e-4. The model folder is the offline copy
//! `deploy/dev/deps` unpacks (`MEDEMBED_TEST_MODEL_DIR`, set by `.cargo/config.toml`).

use std::path::PathBuf;

use medembed_model::SentenceEncoder;
use serde::Deserialize;
use tch::Device;

#[derive(Deserialize)]
struct Reference {
    max_seq_length: usize,
    texts: Vec<ReferenceText>,
    pairs: Vec<ReferencePair>,
}

#[derive(Deserialize)]
struct ReferenceText {
    text: String,
    input_ids: Vec<i64>,
    embedding: Vec<f32>,
}

#[derive(Deserialize)]
struct ReferencePair {
    text_a: String,
    text_b: String,
    cosine: f32,
}

fn model_dir() -> PathBuf {
    let dir = std::env::var("MEDEMBED_TEST_MODEL_DIR").expect(
        "MEDEMBED_TEST_MODEL_DIR (set in .cargo/config.toml; run deploy/dev/deps to fetch the model)",
    );
    let dir = PathBuf::from(dir);
    assert!(
        dir.join("config.json").exists(),
        "{}: run deploy/dev/deps",
        dir.display()
    );
    dir
}

fn reference() -> Reference {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/all-minilm-l6-v2_embeddings.json"
    );
    serde_json::from_slice(&std::fs::read(path).expect("reference fixture"))
        .expect("reference json")
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (na * nb)
}

#[test]
fn token_ids_and_embeddings_match_sentence_transformers() {
    let reference = reference();
    let encoder = SentenceEncoder::load(&model_dir(), Device::Cpu).expect("model loads");
    assert_eq!(encoder.folder.max_seq_length, reference.max_seq_length);
    assert!(
        encoder.folder.normalize,
        "modules.json has a Normalize module"
    );
    assert_eq!(encoder.dimension(), 384);

    let texts: Vec<&str> = reference.texts.iter().map(|t| t.text.as_str()).collect();
    let ids = encoder.tokenize(&texts).expect("tokenize");
    for (got, want) in ids.iter().zip(&reference.texts) {
        assert_eq!(got, &want.input_ids, "token ids of {:?}", want.text);
    }
    assert!(
        ids.iter().any(|i| i.len() == 256),
        "one text is truncated at max_seq_length"
    );

    let embeddings = encoder.encode(&texts).expect("encode");
    let mut worst = 1.0f32;
    for (got, want) in embeddings.iter().zip(&reference.texts) {
        assert_eq!(got.len(), want.embedding.len());
        let c = cosine(got, &want.embedding);
        worst = worst.min(c);
        assert!(c >= 0.9999, "cosine {c} for {:?}", want.text);
    }
    println!("parity: worst embedding cosine over 24 texts = {worst:.7}");

    let mut worst_pair = 0.0f32;
    for pair in &reference.pairs {
        let v = encoder
            .encode(&[&pair.text_a, &pair.text_b])
            .expect("encode pair");
        let c = cosine(&v[0], &v[1]);
        worst_pair = worst_pair.max((c - pair.cosine).abs());
        assert!(
            (c - pair.cosine).abs() <= 1e-4,
            "pair cosine {c} vs {}",
            pair.cosine
        );
    }
    println!("parity: largest pair-cosine difference over 8 pairs = {worst_pair:.2e}");
}

#[test]
fn batching_does_not_change_embeddings() {
    let reference = reference();
    let mut encoder = SentenceEncoder::load(&model_dir(), Device::Cpu).expect("model loads");
    let texts: Vec<&str> = reference.texts.iter().map(|t| t.text.as_str()).collect();
    let together = encoder.encode(&texts).expect("encode");
    // A tiny budget: every text in a batch of its own.
    encoder.token_budget = 1;
    let alone = encoder.encode(&texts).expect("encode");
    for (a, b) in together.iter().zip(&alone) {
        assert!(cosine(a, b) > 0.99999, "padding changed an embedding");
    }
}

#[test]
fn a_folder_without_weights_or_config_is_an_error_naming_the_file() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let err = SentenceEncoder::load(dir, Device::Cpu).expect_err("empty folder");
    assert!(err.to_string().contains("config.json"), "{err}");
    std::fs::copy(model_dir().join("config.json"), dir.join("config.json")).expect("copy");
    std::fs::copy(
        model_dir().join("tokenizer.json"),
        dir.join("tokenizer.json"),
    )
    .expect("copy");
    let err = SentenceEncoder::load(dir, Device::Cpu).expect_err("no weights");
    assert!(err.to_string().contains("model.safetensors"), "{err}");
}

#[test]
fn a_folder_with_only_vocab_txt_tokenizes_like_tokenizer_json() {
    // PubMedBERT ships vocab.txt and no tokenizer.json: the WordPiece tokenizer built from it must
    // give the very ids the model's tokenizer.json gives.
    let reference = reference();
    let tmp = tempfile::tempdir().expect("tempdir");
    for file in [
        "config.json",
        "model.safetensors",
        "vocab.txt",
        "tokenizer_config.json",
        "sentence_bert_config.json",
        "modules.json",
    ] {
        std::fs::copy(model_dir().join(file), tmp.path().join(file)).expect("copy");
    }
    std::fs::create_dir(tmp.path().join("1_Pooling")).expect("mkdir");
    std::fs::copy(
        model_dir().join("1_Pooling/config.json"),
        tmp.path().join("1_Pooling/config.json"),
    )
    .expect("copy");
    let encoder =
        SentenceEncoder::load(tmp.path(), Device::Cpu).expect("loads without tokenizer.json");
    let texts: Vec<&str> = reference.texts.iter().map(|t| t.text.as_str()).collect();
    for (got, want) in encoder
        .tokenize(&texts)
        .expect("tokenize")
        .iter()
        .zip(&reference.texts)
    {
        assert_eq!(got, &want.input_ids, "vocab.txt ids of {:?}", want.text);
    }
}
