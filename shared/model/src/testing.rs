//! Test support: a tiny BERT with random weights, written as a complete sentence-transformers
//! folder (so training mechanics are tested in seconds, not with a real 22M-parameter model).

use std::path::Path;

use tch::{Device, nn};

use crate::Result;
use crate::bert::Bert;
use crate::folder::BertConfig;

/// Writes a random `hidden`-wide, `layers`-deep BERT (2 heads) to `dir`, with the tokenizer files
/// of the model folder `tokenizer_from` (its vocabulary size is kept), mean pooling, normalization
/// and `max_seq_length` 128. Same `seed`, same weights.
pub fn write_tiny_random_model(
    dir: &Path,
    tokenizer_from: &Path,
    hidden: i64,
    layers: i64,
    seed: i64,
) -> Result<()> {
    write_random_model(dir, tokenizer_from, hidden, layers, 2, seed)
}

/// As [`write_tiny_random_model`], any shape: `write_random_model(dir, minilm, 768, 12, 12, s)`
/// is BERT-base-shaped (for benchmarks).
pub fn write_random_model(
    dir: &Path,
    tokenizer_from: &Path,
    hidden: i64,
    layers: i64,
    heads: i64,
    seed: i64,
) -> Result<()> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| crate::ModelError::Io { path, source }
    };
    std::fs::create_dir_all(dir.join("1_Pooling")).map_err(io(dir))?;
    let source = crate::folder::ModelFolder::open(tokenizer_from)?;
    let config = BertConfig {
        vocab_size: source.config.vocab_size,
        hidden_size: hidden,
        num_hidden_layers: layers,
        num_attention_heads: heads,
        intermediate_size: hidden * 4,
        hidden_act: "gelu".into(),
        max_position_embeddings: 512,
        type_vocab_size: 2,
        layer_norm_eps: 1e-12,
        pad_token_id: 0,
        model_type: "bert".into(),
    };
    let write = |name: &str, text: String| {
        std::fs::write(dir.join(name), text).map_err(io(&dir.join(name)))
    };
    write(
        "config.json",
        serde_json::to_string_pretty(&config).expect("config serializes"),
    )?;
    write(
        "modules.json",
        r#"[{"idx":0,"name":"0","path":"","type":"sentence_transformers.models.Transformer"},{"idx":1,"name":"1","path":"1_Pooling","type":"sentence_transformers.models.Pooling"},{"idx":2,"name":"2","path":"2_Normalize","type":"sentence_transformers.models.Normalize"}]"#.into(),
    )?;
    write(
        "sentence_bert_config.json",
        r#"{"max_seq_length": 128, "do_lower_case": false}"#.into(),
    )?;
    write(
        "1_Pooling/config.json",
        format!(
            r#"{{"word_embedding_dimension": {hidden}, "pooling_mode_cls_token": false, "pooling_mode_mean_tokens": true}}"#
        ),
    )?;
    for file in ["tokenizer.json", "vocab.txt", "tokenizer_config.json"] {
        if tokenizer_from.join(file).exists() {
            std::fs::copy(tokenizer_from.join(file), dir.join(file))
                .map_err(io(&dir.join(file)))?;
        }
    }
    tch::manual_seed(seed);
    let vs = nn::VarStore::new(Device::Cpu);
    Bert::new(&vs.root(), &config)?;
    vs.save(dir.join("model.safetensors"))?;
    Ok(())
}
