//! Writing a [`SentenceEncoder`] as a sentence-transformers model folder, so that Python's
//! `SentenceTransformer(dir)` (and Hugging Face `AutoModel`) load it as they load any hub model:
//!
//! - `config.json` and the tokenizer files, copied from the base model's folder;
//! - `model.safetensors`: the encoder's weights under Hugging Face `BertModel` names (no `bert.`
//!   prefix), plus the base's tensors this encoder does not use (the pooler), unchanged, so that
//!   `BertModel` finds every weight it expects;
//! - `modules.json` (Transformer → Pooling → Normalize if the encoder normalizes),
//!   `sentence_bert_config.json` (the max sequence length trained with),
//!   `config_sentence_transformers.json` (cosine similarity) and `1_Pooling/config.json`.

use std::path::Path;

use tch::{Device, Kind, Tensor};

use crate::encoder::{SentenceEncoder, read_weights};
use crate::folder::Pooling;
use crate::{ModelError, Result};

/// Tokenizer and config files carried over from the base model when it has them.
const COPIED: &[&str] = &[
    "config.json",
    "tokenizer.json",
    "vocab.txt",
    "tokenizer_config.json",
    "special_tokens_map.json",
];

impl SentenceEncoder {
    /// The current weights, on the CPU in fp32, by Hugging Face name.
    pub fn named_weights(&self) -> Vec<(String, Tensor)> {
        let mut weights: Vec<(String, Tensor)> = self
            .vs
            .variables()
            .into_iter()
            .map(|(name, t)| {
                let t = t.detach().to_device(Device::Cpu).to_kind(Kind::Float);
                (name, t.contiguous())
            })
            .collect();
        weights.sort_by(|a, b| a.0.cmp(&b.0));
        weights
    }

    /// Writes the encoder to `dir` as a sentence-transformers model folder (created if needed;
    /// files already there are overwritten).
    pub fn save(&self, dir: &Path) -> Result<()> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| ModelError::Io { path, source }
        };
        let pooling_dir = dir.join("1_Pooling");
        std::fs::create_dir_all(&pooling_dir).map_err(io(&pooling_dir))?;
        let base = &self.folder.dir;
        for file in COPIED {
            let from = base.join(file);
            if from.exists() {
                std::fs::copy(&from, dir.join(file)).map_err(io(&from))?;
            }
        }

        let mut weights = self.named_weights();
        let (_, base_weights) = read_weights(base)?;
        for (name, tensor) in base_weights {
            let used = weights.iter().any(|(n, _)| *n == name);
            if !used && name != "embeddings.position_ids" {
                weights.push((name, tensor.to_kind(Kind::Float).contiguous()));
            }
        }
        let path = dir.join("model.safetensors");
        let partial = dir.join("model.safetensors.partial");
        Tensor::write_safetensors(&weights, &partial)
            .map_err(|e| ModelError::Weights(format!("{}: {e}", partial.display())))?;
        std::fs::rename(&partial, &path).map_err(io(&path))?;

        let mut modules = vec![
            serde_json::json!({"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}),
            serde_json::json!({"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}),
        ];
        if self.folder.normalize {
            modules.push(serde_json::json!({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}));
        }
        let cls = self.folder.pooling == Pooling::Cls;
        let files = [
            ("modules.json", serde_json::Value::Array(modules)),
            (
                "sentence_bert_config.json",
                serde_json::json!({"max_seq_length": self.folder.max_seq_length, "do_lower_case": false}),
            ),
            (
                "config_sentence_transformers.json",
                serde_json::json!({
                    "__version__": {"medembed": env!("CARGO_PKG_VERSION")},
                    "prompts": {},
                    "default_prompt_name": null,
                    "similarity_fn_name": "cosine",
                    "model_type": "SentenceTransformer",
                }),
            ),
            (
                "1_Pooling/config.json",
                serde_json::json!({
                    "word_embedding_dimension": self.dimension(),
                    "pooling_mode_cls_token": cls,
                    "pooling_mode_mean_tokens": !cls,
                    "pooling_mode_max_tokens": false,
                    "pooling_mode_mean_sqrt_len_tokens": false,
                }),
            ),
        ];
        for (name, value) in files {
            let path = dir.join(name);
            let text = serde_json::to_string_pretty(&value).expect("JSON values serialize");
            std::fs::write(&path, text).map_err(io(&path))?;
        }
        Ok(())
    }

    /// Replaces the weights with `weights` (as [`Self::named_weights`] gives them): a
    /// checkpoint restored. Every parameter must be there, with its shape.
    pub fn set_weights(&mut self, weights: &[(String, Tensor)]) -> Result<()> {
        let by_name: std::collections::HashMap<&str, &Tensor> =
            weights.iter().map(|(n, t)| (n.as_str(), t)).collect();
        let _guard = tch::no_grad_guard();
        for (name, mut var) in self.vs.variables() {
            let source = by_name
                .get(name.as_str())
                .ok_or_else(|| ModelError::Weights(format!("no tensor {name:?}")))?;
            if source.size() != var.size() {
                return Err(ModelError::Weights(format!(
                    "{name:?} has shape {:?}, the model {:?}",
                    source.size(),
                    var.size()
                )));
            }
            var.copy_(&source.to_kind(var.kind()).to_device(var.device()));
        }
        Ok(())
    }
}
