//! [`SentenceEncoder`]: a model folder loaded for embedding. Texts are tokenized, sorted by length
//! and cut into batches by a token budget; each batch runs through the packed encoder (real tokens
//! only, see [`crate::bert`]), and sorting keeps the one padded step, attention, close to the real
//! lengths too; embeddings are pooled (mean over real tokens, or [CLS]) and L2-normalized when the
//! model says so; results come back in input order.
//!
//! On CPU everything is fp32. On CUDA the encoder computes in bf16 (see [`crate::bert`]); TF32 for
//! the remaining fp32 matmuls is switched on by `TORCH_ALLOW_TF32_CUBLAS_OVERRIDE=1` in the
//! environment (the GPU images set it: libtorch reads it once, before any Rust code could run).

use std::path::Path;

use tch::{Device, Kind, Tensor, nn};

use crate::bert::{Bert, PackedBatch};
use crate::folder::{ModelFolder, Pooling};
use crate::tokenizer::TextTokenizer;
use crate::{ModelError, Result};

#[derive(Debug)]
pub struct SentenceEncoder {
    pub folder: ModelFolder,
    pub tokenizer: TextTokenizer,
    pub vs: nn::VarStore,
    pub bert: Bert,
    /// Most padded tokens (batch × longest) per forward pass.
    pub token_budget: usize,
}

impl SentenceEncoder {
    /// Loads a model folder onto `device`.
    pub fn load(dir: &Path, device: Device) -> Result<Self> {
        let folder = ModelFolder::open(dir)?;
        let tokenizer = TextTokenizer::from_folder(dir, folder.max_seq_length)?;
        let mut vs = nn::VarStore::new(device);
        let mut bert = Bert::new(&vs.root(), &folder.config)?;
        load_weights(&mut vs, dir)?;
        // CUDA computes in bf16 by default; on a CPU fp32 is the default (parity with
        // sentence-transformers to 1e-7), bf16 on request (`set_precision`).
        if device.is_cuda() {
            bert.set_compute_kind(Kind::BFloat16);
        }
        Ok(Self {
            folder,
            tokenizer,
            vs,
            bert,
            token_budget: 16_384,
        })
    }

    /// Computes dense layers and attention in `precision` from now on.
    pub fn set_precision(&mut self, precision: crate::Precision) {
        self.bert.set_compute_kind(precision.kind());
    }

    /// Cuts texts at `tokens` (the model's own limit still applies).
    pub fn set_max_seq_length(&mut self, tokens: usize) -> Result<()> {
        let tokens = tokens.min(self.folder.config.max_position_embeddings as usize);
        self.tokenizer = TextTokenizer::from_folder(&self.folder.dir, tokens)?;
        self.folder.max_seq_length = tokens;
        Ok(())
    }

    pub fn dimension(&self) -> usize {
        self.folder.config.hidden_size as usize
    }

    /// Token ids, as the model sees them.
    pub fn tokenize(&self, texts: &[&str]) -> Result<Vec<Vec<i64>>> {
        self.tokenizer.encode(texts)
    }

    /// One embedding per text, in input order.
    pub fn encode(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        self.encode_observed(texts, |_, _| {})
    }

    /// As [`SentenceEncoder::encode`], calling `on_batch(texts, time)` after each forward pass
    /// (the indexer's batch-duration metric).
    pub fn encode_observed(
        &self,
        texts: &[&str],
        on_batch: impl FnMut(usize, std::time::Duration),
    ) -> Result<Vec<Vec<f32>>> {
        let ids = self.tokenize(texts)?;
        self.encode_tokens(&ids, on_batch)
    }

    /// Embeddings of texts already tokenized ([`SentenceEncoder::tokenize`]), in order.
    pub fn encode_tokens(
        &self,
        ids: &[Vec<i64>],
        mut on_batch: impl FnMut(usize, std::time::Duration),
    ) -> Result<Vec<Vec<f32>>> {
        let mut order: Vec<usize> = (0..ids.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(ids[i].len()));
        let mut out: Vec<Vec<f32>> = vec![Vec::new(); ids.len()];
        let _guard = tch::no_grad_guard();
        let mut start = 0;
        while start < order.len() {
            // Longest first: the batch's first text sets its padded length.
            let longest = ids[order[start]].len().max(1);
            let size = (self.token_budget / longest)
                .max(1)
                .min(order.len() - start);
            let batch: Vec<&[i64]> = order[start..start + size]
                .iter()
                .map(|&i| ids[i].as_slice())
                .collect();
            let started = std::time::Instant::now();
            let vectors = self.embed_batch(&batch)?;
            on_batch(size, started.elapsed());
            for (row, &i) in order[start..start + size].iter().enumerate() {
                out[i] = vectors[row].clone();
            }
            start += size;
        }
        Ok(out)
    }

    /// Sentence embeddings `[batch, hidden]` of token id lists (as a tensor, for training), through
    /// the packed encoder: no work on padding outside attention.
    pub fn forward(&self, batch: &[&[i64]], train: bool) -> Tensor {
        let packed = PackedBatch::new(batch, self.folder.config.pad_token_id, self.vs.device());
        let hidden = self.bert.forward_packed(&packed, train);
        let pooled = match self.folder.pooling {
            Pooling::Cls => packed.first_tokens(&hidden),
            Pooling::Mean => packed.mean_pool(&hidden),
        };
        self.normalized(pooled)
    }

    /// As [`SentenceEncoder::forward`], through the padded reference encoder
    /// ([`Bert::forward_padded`]): for tests and benchmarks that compare the two.
    pub fn forward_padded(&self, batch: &[&[i64]], train: bool) -> Tensor {
        let longest = batch.iter().map(|b| b.len()).max().unwrap_or(1).max(1);
        let pad = self.folder.config.pad_token_id;
        let mut flat = Vec::with_capacity(batch.len() * longest);
        let mut mask = Vec::with_capacity(batch.len() * longest);
        for ids in batch {
            flat.extend_from_slice(ids);
            flat.extend(std::iter::repeat_n(pad, longest - ids.len()));
            mask.extend(std::iter::repeat_n(1i64, ids.len()));
            mask.extend(std::iter::repeat_n(0i64, longest - ids.len()));
        }
        let device = self.vs.device();
        let shape = [batch.len() as i64, longest as i64];
        let input = Tensor::from_slice(&flat).view(shape).to(device);
        let mask = Tensor::from_slice(&mask).view(shape).to(device);
        let hidden = self.bert.forward_padded(&input, &mask, train);
        let pooled = match self.folder.pooling {
            Pooling::Cls => hidden.select(1, 0),
            Pooling::Mean => {
                let m = mask.unsqueeze(-1).to_kind(hidden.kind());
                (hidden * &m).sum_dim_intlist(1, false, None)
                    / m.sum_dim_intlist(1, false, None).clamp_min(1e-9)
            }
        };
        self.normalized(pooled)
    }

    /// L2-normalized rows if the model folder says so (sentence-transformers' Normalize module).
    fn normalized(&self, pooled: Tensor) -> Tensor {
        if self.folder.normalize {
            let norm = pooled.norm_scalaropt_dim(2, [1], true).clamp_min(1e-12);
            pooled / norm
        } else {
            pooled
        }
    }

    fn embed_batch(&self, batch: &[&[i64]]) -> Result<Vec<Vec<f32>>> {
        let embeddings = self
            .forward(batch, false)
            .to_kind(Kind::Float)
            .to(Device::Cpu);
        let flat: Vec<f32> = Vec::<f32>::try_from(embeddings.flatten(0, -1))?;
        Ok(flat.chunks(self.dimension()).map(<[f32]>::to_vec).collect())
    }
}

/// The tensors of a model folder's weights file: `model.safetensors`, or else the pickled
/// `pytorch_model.bin` older checkpoints ship; names without the `bert.` prefix.
pub fn read_weights(dir: &Path) -> Result<(std::path::PathBuf, Vec<(String, Tensor)>)> {
    let safetensors = dir.join("model.safetensors");
    let pickle = dir.join("pytorch_model.bin");
    let (path, tensors) = if safetensors.exists() || !pickle.exists() {
        let tensors = Tensor::read_safetensors(&safetensors)
            .map_err(|e| ModelError::Weights(format!("{}: {e}", safetensors.display())))?;
        (safetensors, tensors)
    } else {
        let tensors = crate::torch_pickle::read_state_dict(&pickle)?;
        (pickle, tensors)
    };
    let tensors = tensors
        .into_iter()
        .map(|(name, t)| (name.strip_prefix("bert.").unwrap_or(&name).to_string(), t))
        .collect();
    Ok((path, tensors))
}

/// Copies the folder's weights into `vs` by name (`bert.` prefix or not; pooler and buffers such
/// as `position_ids` are not parameters here). Every parameter must be found, with its shape.
fn load_weights(vs: &mut nn::VarStore, dir: &Path) -> Result<()> {
    let (path, tensors) = read_weights(dir)?;
    let mut by_name: std::collections::HashMap<String, Tensor> = tensors.into_iter().collect();
    let _guard = tch::no_grad_guard();
    for (name, mut var) in vs.variables() {
        let source = by_name.remove(&name).ok_or_else(|| {
            ModelError::Weights(format!("{}: no tensor {name:?}", path.display()))
        })?;
        if source.size() != var.size() {
            return Err(ModelError::Weights(format!(
                "{}: {name:?} has shape {:?}, the config says {:?}",
                path.display(),
                source.size(),
                var.size()
            )));
        }
        var.copy_(&source.to_kind(var.kind()));
    }
    Ok(())
}
