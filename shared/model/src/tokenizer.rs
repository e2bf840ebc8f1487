//! Tokenization with the model's own `tokenizer.json` (the tokenizers crate, as Hugging Face
//! does), truncated to the model's maximum sequence length. A folder without `tokenizer.json`
//! (PubMedBERT/BiomedBERT ship only `vocab.txt`) gets the BERT WordPiece tokenizer built from
//! `vocab.txt`, lower-casing as `tokenizer_config.json`'s `do_lower_case` says (default: yes).

use std::path::Path;

use tokenizers::models::wordpiece::WordPiece;
use tokenizers::normalizers::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::processors::bert::BertProcessing;
use tokenizers::{Model, Tokenizer, TruncationParams};

use crate::{ModelError, Result};

#[derive(Debug, Clone)]
pub struct TextTokenizer {
    inner: Tokenizer,
}

impl TextTokenizer {
    pub fn from_folder(dir: &Path, max_len: usize) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        let mut inner = if path.exists() {
            Tokenizer::from_file(&path).map_err(|e| ModelError::Format {
                path: path.clone(),
                message: e.to_string(),
            })?
        } else {
            wordpiece_from_vocab(dir)?
        };
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

#[derive(Debug, serde::Deserialize)]
struct TokenizerConfig {
    #[serde(default = "lower_case_by_default")]
    do_lower_case: bool,
}

fn lower_case_by_default() -> bool {
    true
}

/// The BERT tokenizer from `vocab.txt`: BERT normalizer, BERT pre-tokenizer, WordPiece with
/// `[UNK]` and `##` continuations, `[CLS] … [SEP]` around each text.
fn wordpiece_from_vocab(dir: &Path) -> Result<Tokenizer> {
    let vocab = dir.join("vocab.txt");
    if !vocab.exists() {
        return Err(ModelError::Io {
            path: dir.join("tokenizer.json"),
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "neither tokenizer.json nor vocab.txt in the model folder",
            ),
        });
    }
    let config_path = dir.join("tokenizer_config.json");
    let lowercase = match std::fs::read(&config_path) {
        Ok(bytes) => {
            serde_json::from_slice::<TokenizerConfig>(&bytes)
                .map_err(|e| ModelError::Format {
                    path: config_path.clone(),
                    message: e.to_string(),
                })?
                .do_lower_case
        }
        Err(_) => true,
    };
    let vocab_str = vocab.to_string_lossy().to_string();
    let wordpiece = WordPiece::from_file(&vocab_str)
        .unk_token("[UNK]".into())
        .build()
        .map_err(|e| ModelError::Format {
            path: vocab.clone(),
            message: e.to_string(),
        })?;
    let id = |token: &str| {
        wordpiece
            .token_to_id(token)
            .ok_or_else(|| ModelError::Format {
                path: vocab.clone(),
                message: format!("no {token} token"),
            })
    };
    let (cls, sep) = (id("[CLS]")?, id("[SEP]")?);
    let mut tokenizer = Tokenizer::new(wordpiece);
    tokenizer
        .with_normalizer(Some(BertNormalizer::new(true, true, None, lowercase)))
        .with_pre_tokenizer(Some(BertPreTokenizer))
        .with_post_processor(Some(BertProcessing::new(
            ("[SEP]".into(), sep),
            ("[CLS]".into(), cls),
        )));
    Ok(tokenizer)
}
