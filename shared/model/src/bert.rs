//! The BERT encoder: embeddings, then N layers of self-attention (libtorch's fused
//! `scaled_dot_product_attention`) and feed-forward, each with a residual and LayerNorm. No pooler:
//! sentence embeddings pool the last hidden states. Parameter names are Hugging Face's, so a
//! checkpoint loads by name with or without the `bert.` prefix.
//!
//! **Packed (unpadded) layout**, as MosaicBERT does it ([`Bert::forward_packed`]): a batch is one
//! `[tokens, hidden]` tensor of its real tokens only, sequence after sequence ([`PackedBatch`]).
//! Embeddings, every linear layer, LayerNorm, GELU and dropout run on it, so a title in a batch of
//! abstracts costs its own 20 tokens, not the longest abstract's 256. Padding happens in one place:
//! around attention, which needs `[batch, heads, longest, head_dim]`; the packed Q·K·V rows are
//! scattered into that layout, attended with the padding keys masked, and gathered back. A batch
//! whose sequences are all equally long skips even that (no scatter, no mask). Attention is the
//! smaller part of the work (about `longest / 6·hidden` of a layer's FLOPs: 11 % for MiniLM at 256
//! tokens), and libtorch's SDPA has no variable-length form, so padding it costs little.
//!
//! **Fewer kernels:** Q, K and V are one GEMM (their weights concatenated per forward pass: a copy
//! of 3·hidden² values against a GEMM over every token, and the checkpoint keeps Hugging Face's
//! three tensors, so saving and loading need no splitting). Bias+GELU stays two ops: ATen's fused
//! `_addmm_activation` computes the tanh approximation on CUDA, and BERT's GELU is the exact one.
//!
//! Mixed precision ([`Bert::set_compute_kind`] with `Kind::BFloat16`, for CUDA) does what torch's
//! autocast does for these ops: weights stay fp32 (the optimizer's master copy), dense layers and
//! attention compute in bf16, embeddings, residual sums and LayerNorm in fp32. tch's `autocast`
//! cannot pick bf16 (it uses fp16, which needs loss scaling), so the casts are explicit here.
//!
//! Parameters sit in two optimizer groups, as fine-tuning BERT wants them: [`DECAY_GROUP`] (weight
//! matrices and embeddings) and [`NO_DECAY_GROUP`] (biases and LayerNorm), so AdamW's weight decay
//! can be set per group (`set_weight_decay_group`).

use tch::nn::{self, Module};
use tch::{Device, Kind, Tensor};

use crate::folder::BertConfig;
use crate::{ModelError, Result};

/// Optimizer group of weight matrices and embeddings (weight decay applies).
pub const DECAY_GROUP: usize = 0;
/// Optimizer group of biases and LayerNorm parameters (no weight decay).
pub const NO_DECAY_GROUP: usize = 1;

/// A dense layer whose bias is in [`NO_DECAY_GROUP`].
#[derive(Debug)]
struct Linear {
    weight: Tensor,
    bias: Tensor,
}

impl Linear {
    fn new(p: nn::Path, inputs: i64, outputs: i64) -> Self {
        let bound = 1.0 / (inputs as f64).sqrt();
        Self {
            weight: p.var(
                "weight",
                &[outputs, inputs],
                nn::Init::Uniform {
                    lo: -bound,
                    up: bound,
                },
            ),
            bias: p.set_group(NO_DECAY_GROUP).var(
                "bias",
                &[outputs],
                nn::Init::Uniform {
                    lo: -bound,
                    up: bound,
                },
            ),
        }
    }
}

impl Linear {
    /// `x·Wᵀ + b`, computed in `kind` (the output is `kind` too).
    fn forward_as(&self, x: &Tensor, kind: Kind) -> Tensor {
        if kind == Kind::Float {
            x.linear(&self.weight, Some(&self.bias))
        } else {
            x.to_kind(kind)
                .linear(&self.weight.to_kind(kind), Some(&self.bias.to_kind(kind)))
        }
    }
}

/// `x·[Wq; Wk; Wv]ᵀ + [bq; bk; bv]`: Q, K and V of `x` side by side (`[tokens, 3·hidden]`), in
/// one GEMM computed in `kind`.
fn fused_forward_as(parts: [&Linear; 3], x: &Tensor, kind: Kind) -> Tensor {
    let weight = Tensor::cat(&parts.map(|p| &p.weight), 0);
    let bias = Tensor::cat(&parts.map(|p| &p.bias), 0);
    if kind == Kind::Float {
        x.linear(&weight, Some(&bias))
    } else {
        x.to_kind(kind)
            .linear(&weight.to_kind(kind), Some(&bias.to_kind(kind)))
    }
}

#[derive(Debug)]
struct Layer {
    query: Linear,
    key: Linear,
    value: Linear,
    attention_out: Linear,
    attention_norm: nn::LayerNorm,
    intermediate: Linear,
    output: Linear,
    output_norm: nn::LayerNorm,
}

/// A batch of token id lists in the packed layout of [`Bert::forward_packed`]: only real tokens,
/// sequence after sequence, with what attention and pooling need to find each sequence again.
#[derive(Debug)]
pub struct PackedBatch {
    /// Every token's id: `[tokens]`.
    pub ids: Tensor,
    /// Each token's position in its own sequence: `[tokens]`.
    pub positions: Tensor,
    /// Each token's sequence (its row of the batch): `[tokens]`.
    pub sequence: Tensor,
    /// Index of each sequence's first token: `[batch]`.
    pub starts: Tensor,
    /// Tokens per sequence, as floats: `[batch, 1]` (mean pooling divides by it).
    pub lengths: Tensor,
    /// Each token's row in the padded `[batch · longest]` layout attention works in, and the keys
    /// each sequence may attend to (`[batch, 1, 1, longest]`, true = token); `None` when every
    /// sequence is `longest` long, so the packed rows are the padded rows and nothing is masked.
    pub padding: Option<(Tensor, Tensor)>,
    pub batch: i64,
    pub longest: i64,
}

impl PackedBatch {
    /// Packs `batch` onto `device`. An empty id list stands for one `pad` token (the tokenizer
    /// never gives one: every text has at least [CLS] and [SEP]).
    pub fn new(batch: &[&[i64]], pad: i64, device: Device) -> Self {
        let pad = [pad];
        let rows: Vec<&[i64]> = batch
            .iter()
            .map(|ids| if ids.is_empty() { &pad[..] } else { *ids })
            .collect();
        let longest = rows.iter().map(|r| r.len()).max().unwrap_or(1);
        let total: usize = rows.iter().map(|r| r.len()).sum();
        let mut ids = Vec::with_capacity(total);
        let mut positions = Vec::with_capacity(total);
        let mut sequence = Vec::with_capacity(total);
        let mut padded_rows = Vec::with_capacity(total);
        let mut starts = Vec::with_capacity(rows.len());
        let mut lengths = Vec::with_capacity(rows.len());
        let mut attend = Vec::with_capacity(rows.len() * longest);
        for (s, row) in rows.iter().enumerate() {
            starts.push(ids.len() as i64);
            lengths.push(row.len() as f32);
            ids.extend_from_slice(row);
            for p in 0..row.len() {
                positions.push(p as i64);
                sequence.push(s as i64);
                padded_rows.push((s * longest + p) as i64);
            }
            attend.extend((0..longest).map(|p| p < row.len()));
        }
        let batch_len = rows.len() as i64;
        let longest = longest as i64;
        let padding = (total as i64 != batch_len * longest).then(|| {
            (
                Tensor::from_slice(&padded_rows).to(device),
                Tensor::from_slice(&attend)
                    .view([batch_len, 1, 1, longest])
                    .to(device),
            )
        });
        Self {
            ids: Tensor::from_slice(&ids).to(device),
            positions: Tensor::from_slice(&positions).to(device),
            sequence: Tensor::from_slice(&sequence).to(device),
            starts: Tensor::from_slice(&starts).to(device),
            lengths: Tensor::from_slice(&lengths).view([batch_len, 1]).to(device),
            padding,
            batch: batch_len,
            longest,
        }
    }

    /// Real tokens in the batch.
    pub fn tokens(&self) -> i64 {
        self.ids.size()[0]
    }

    /// Mean of each sequence's rows of `hidden` (`[tokens, hidden]` → `[batch, hidden]`): a sum
    /// per segment, divided by the sequence's length.
    pub fn mean_pool(&self, hidden: &Tensor) -> Tensor {
        let width = hidden.size()[1];
        Tensor::zeros([self.batch, width], (hidden.kind(), hidden.device())).index_add(
            0,
            &self.sequence,
            hidden,
        ) / self.lengths.to_kind(hidden.kind())
    }

    /// Each sequence's first row of `hidden` ([CLS]): `[batch, hidden]`.
    pub fn first_tokens(&self, hidden: &Tensor) -> Tensor {
        hidden.index_select(0, &self.starts)
    }
}

#[derive(Debug)]
pub struct Bert {
    word_embeddings: nn::Embedding,
    position_embeddings: nn::Embedding,
    token_type_embeddings: nn::Embedding,
    embeddings_norm: nn::LayerNorm,
    layers: Vec<Layer>,
    heads: i64,
    gelu_approximate: &'static str,
    /// Kind of the dense and attention math: `Float`, or `BFloat16` for mixed precision.
    compute: Kind,
}

impl Bert {
    /// The model's parameters, created under `root` with Hugging Face's names.
    pub fn new(root: &nn::Path, config: &BertConfig) -> Result<Self> {
        if config.hidden_size % config.num_attention_heads != 0 {
            return Err(ModelError::Weights(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                config.hidden_size, config.num_attention_heads
            )));
        }
        let gelu_approximate = match config.hidden_act.as_str() {
            "gelu" => "none",
            "gelu_new" | "gelu_pytorch_tanh" => "tanh",
            other => {
                return Err(ModelError::Weights(format!(
                    "hidden_act {other:?} is not supported (gelu, gelu_new)"
                )));
            }
        };
        let h = config.hidden_size;
        let norm = |p: nn::Path| {
            nn::layer_norm(
                p.set_group(NO_DECAY_GROUP),
                vec![h],
                nn::LayerNormConfig {
                    eps: config.layer_norm_eps,
                    ..Default::default()
                },
            )
        };
        let emb = root / "embeddings";
        let layers = (0..config.num_hidden_layers)
            .map(|i| {
                let l = root / "encoder" / "layer" / i;
                let attention = &l / "attention";
                Layer {
                    query: Linear::new(&attention / "self" / "query", h, h),
                    key: Linear::new(&attention / "self" / "key", h, h),
                    value: Linear::new(&attention / "self" / "value", h, h),
                    attention_out: Linear::new(&attention / "output" / "dense", h, h),
                    attention_norm: norm(&attention / "output" / "LayerNorm"),
                    intermediate: Linear::new(
                        &l / "intermediate" / "dense",
                        h,
                        config.intermediate_size,
                    ),
                    output: Linear::new(&l / "output" / "dense", config.intermediate_size, h),
                    output_norm: norm(&l / "output" / "LayerNorm"),
                }
            })
            .collect();
        Ok(Self {
            word_embeddings: nn::embedding(
                &emb / "word_embeddings",
                config.vocab_size,
                h,
                Default::default(),
            ),
            position_embeddings: nn::embedding(
                &emb / "position_embeddings",
                config.max_position_embeddings,
                h,
                Default::default(),
            ),
            token_type_embeddings: nn::embedding(
                &emb / "token_type_embeddings",
                config.type_vocab_size,
                h,
                Default::default(),
            ),
            embeddings_norm: norm(&emb / "LayerNorm"),
            layers,
            heads: config.num_attention_heads,
            gelu_approximate,
            compute: Kind::Float,
        })
    }

    /// Computes dense layers and attention in `kind` (`Float` or `BFloat16`); weights and
    /// LayerNorm stay fp32.
    pub fn set_compute_kind(&mut self, kind: Kind) {
        self.compute = kind;
    }

    pub fn compute_kind(&self) -> Kind {
        self.compute
    }

    /// Last hidden states `[tokens, hidden]` of a packed batch (see the module docs).
    pub fn forward_packed(&self, batch: &PackedBatch, train: bool) -> Tensor {
        let mut x = (self.word_embeddings.forward(&batch.ids)
            + self.position_embeddings.forward(&batch.positions)
            + self.token_type_embeddings.ws.get(0))
        .apply(&self.embeddings_norm)
        .dropout(0.1, train);
        let hidden = x.size()[1];
        let head_dim = hidden / self.heads;
        let (rows, longest) = (batch.batch, batch.longest);
        let kind = self.compute;
        let dropout = if train { 0.1 } else { 0.0 };
        for layer in &self.layers {
            let qkv = fused_forward_as([&layer.query, &layer.key, &layer.value], &x, kind);
            // Into the padded layout for attention (zeros in the padding rows: masked keys).
            let qkv = match &batch.padding {
                Some((padded_rows, _)) => {
                    Tensor::zeros([rows * longest, 3 * hidden], (qkv.kind(), qkv.device()))
                        .index_copy(0, padded_rows, &qkv)
                }
                None => qkv,
            };
            // [batch, longest, (q|k|v), heads, head_dim] → [(q|k|v), batch, heads, longest, head_dim]
            let qkv = qkv
                .view([rows, longest, 3, self.heads, head_dim])
                .permute([2, 0, 3, 1, 4]);
            let context = Tensor::scaled_dot_product_attention(
                &qkv.get(0),
                &qkv.get(1),
                &qkv.get(2),
                batch.padding.as_ref().map(|(_, attend)| attend),
                dropout,
                false,
                None,
                false,
            )
            .transpose(1, 2)
            .reshape([rows * longest, hidden]);
            // Back to the packed rows.
            let context = match &batch.padding {
                Some((padded_rows, _)) => context.index_select(0, padded_rows),
                None => context,
            };
            // Residual sums promote to fp32, so LayerNorm always sees fp32.
            let attended = (layer
                .attention_out
                .forward_as(&context, kind)
                .dropout(0.1, train)
                + &x)
                .apply(&layer.attention_norm);
            let inner = layer
                .intermediate
                .forward_as(&attended, kind)
                .gelu(self.gelu_approximate);
            x = (layer.output.forward_as(&inner, kind).dropout(0.1, train) + &attended)
                .apply(&layer.output_norm);
        }
        x
    }

    /// The padded reference: last hidden states `[batch, seq, hidden]` of `input_ids` `[batch,
    /// seq]`, `mask` `[batch, seq]` 1 for tokens, 0 for padding; every op on every padded position,
    /// Q, K and V as three GEMMs. [`Bert::forward_packed`] is checked against it (tests) and
    /// measured against it (`train_speed`, `embed_speed`); nothing else uses it.
    pub fn forward_padded(&self, input_ids: &Tensor, mask: &Tensor, train: bool) -> Tensor {
        let (batch, seq) = input_ids.size2().expect("input_ids is [batch, seq]");
        let positions = Tensor::arange(seq, (Kind::Int64, input_ids.device())).unsqueeze(0);
        let token_types = input_ids.zeros_like();
        let mut x = (self.word_embeddings.forward(input_ids)
            + self.position_embeddings.forward(&positions)
            + self.token_type_embeddings.forward(&token_types))
        .apply(&self.embeddings_norm)
        .dropout(0.1, train);
        // Padding keys are masked out: a boolean mask [batch, 1, 1, seq], true = attend.
        let attend = mask.to_kind(Kind::Bool).view([batch, 1, 1, seq]);
        let hidden = x.size()[2];
        let head_dim = hidden / self.heads;
        for layer in &self.layers {
            let split = |t: Tensor| t.view([batch, seq, self.heads, head_dim]).transpose(1, 2);
            let kind = self.compute;
            let q = split(layer.query.forward_as(&x, kind));
            let k = split(layer.key.forward_as(&x, kind));
            let v = split(layer.value.forward_as(&x, kind));
            let dropout = if train { 0.1 } else { 0.0 };
            let context = Tensor::scaled_dot_product_attention(
                &q,
                &k,
                &v,
                Some(&attend),
                dropout,
                false,
                None,
                false,
            )
            .transpose(1, 2)
            .contiguous()
            .view([batch, seq, hidden]);
            // Residual sums promote to fp32, so LayerNorm always sees fp32.
            let attended = (layer
                .attention_out
                .forward_as(&context, kind)
                .dropout(0.1, train)
                + &x)
                .apply(&layer.attention_norm);
            let inner = layer
                .intermediate
                .forward_as(&attended, kind)
                .gelu(self.gelu_approximate);
            x = (layer.output.forward_as(&inner, kind).dropout(0.1, train) + &attended)
                .apply(&layer.output_norm);
        }
        x
    }
}
