//! A model folder as Hugging Face and sentence-transformers write it: `config.json` (the BERT
//! shape), `model.safetensors`, `tokenizer.json`, and the sentence-transformers files
//! (`modules.json`, `1_Pooling/config.json`, `sentence_bert_config.json`). Missing
//! sentence-transformers files mean a plain BERT checkpoint: mean pooling, no normalization, 512
//! tokens.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::{ModelError, Result};

/// `config.json`: the fields of a BERT model that shape it.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
pub struct BertConfig {
    pub vocab_size: i64,
    pub hidden_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    pub intermediate_size: i64,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    pub max_position_embeddings: i64,
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: i64,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default)]
    pub pad_token_id: i64,
    /// Hugging Face's architecture tag; "bert" (what `AutoConfig` needs to read the file).
    #[serde(default = "default_model_type")]
    pub model_type: String,
}

fn default_model_type() -> String {
    "bert".into()
}

fn default_act() -> String {
    "gelu".into()
}
fn default_type_vocab() -> i64 {
    2
}
fn default_eps() -> f64 {
    1e-12
}

/// How token vectors become one sentence vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    Mean,
    Cls,
}

/// Everything read from a model folder.
#[derive(Debug, Clone)]
pub struct ModelFolder {
    pub dir: PathBuf,
    pub config: BertConfig,
    pub pooling: Pooling,
    pub normalize: bool,
    pub max_seq_length: usize,
}

#[derive(Debug, Deserialize)]
struct PoolingConfig {
    #[serde(default)]
    pooling_mode_cls_token: bool,
    #[serde(default)]
    pooling_mode_mean_tokens: bool,
}

#[derive(Debug, Deserialize)]
struct SentenceBertConfig {
    max_seq_length: usize,
}

#[derive(Debug, Deserialize)]
struct Module {
    #[serde(rename = "type")]
    kind: String,
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| ModelError::Format {
                path: path.to_path_buf(),
                message: e.to_string(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(ModelError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

impl ModelFolder {
    pub fn open(dir: &Path) -> Result<Self> {
        let config_path = dir.join("config.json");
        let config: BertConfig = read_json(&config_path)?.ok_or_else(|| ModelError::Io {
            path: config_path.clone(),
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no config.json: not a model folder",
            ),
        })?;
        let pooling = match read_json::<PoolingConfig>(&dir.join("1_Pooling/config.json"))? {
            Some(p) if p.pooling_mode_cls_token && !p.pooling_mode_mean_tokens => Pooling::Cls,
            _ => Pooling::Mean,
        };
        let normalize = read_json::<Vec<Module>>(&dir.join("modules.json"))?
            .is_some_and(|modules| modules.iter().any(|m| m.kind.ends_with("Normalize")));
        let max_seq_length =
            read_json::<SentenceBertConfig>(&dir.join("sentence_bert_config.json"))?
                .map_or(512, |s| s.max_seq_length)
                .min(config.max_position_embeddings as usize);
        Ok(Self {
            dir: dir.to_path_buf(),
            config,
            pooling,
            normalize,
            max_seq_length,
        })
    }
}
