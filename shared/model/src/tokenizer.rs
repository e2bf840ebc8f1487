//! Tokenization with the model's own `tokenizer.json` (the tokenizers crate, as Hugging Face
//! does), truncated to the model's maximum sequence length.

use std::path::Path;

use tokenizers::{Tokenizer, TruncationParams};

use crate::{ModelError, Result};

#[derive(Debug, Clone)]
pub struct TextTokenizer {
    inner: Tokenizer,
}

impl TextTokenizer {
    pub fn from_folder(dir: &Path, max_len: usize) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        let mut inner = Tokenizer::from_file(&path).map_err(|e| ModelError::Format {
            path: path.clone(),
            message: e.to_string(),
        })?;
        inner
            .with_truncation(Some(TruncationParams {
                max_length: max_len,
                ..TruncationParams::default()
            }))
            .map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        inner.with_padding(None);
        Ok(Self { inner })
    }

    /// Token ids of each text, with [CLS] … [SEP], truncated.
    pub fn encode(&self, texts: &[&str]) -> Result<Vec<Vec<i64>>> {
        let encodings = self
            .inner
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        Ok(encodings
            .iter()
            .map(|e| e.get_ids().iter().map(|&i| i64::from(i)).collect())
            .collect())
    }
}
