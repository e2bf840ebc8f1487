//! The BERT encoder: embeddings, then N layers of self-attention (libtorch's fused
//! `scaled_dot_product_attention`) and feed-forward, each with a residual and LayerNorm. No pooler:
//! sentence embeddings pool the last hidden states. Parameter names are Hugging Face's, so a
//! checkpoint loads by name with or without the `bert.` prefix.
//!
//! **Packed (unpadded) layout**, as MosaicBERT does it ([`Bert::forward_packed`]): a batch is one
//! `[tokens, hidden]` tensor of its real tokens only, sequence after sequence ([`PackedBatch`]).
//! Embeddings, every linear layer, LayerNorm, GELU and dropout run on it, so a title in a batch of
//! abstracts costs its own 20 tokens, not the longest abstract's 256. Padding happens in one place:
//! around attention, which needs `[sequences, heads, longest, head_dim]`. Sequences are packed
//! longest first and cut into [`AttentionGroup`]s of similar length (each at least half its
//! group's longest); each group's Q·K·V rows are scattered into its own padded layout, attended
//! with the padding keys masked, and gathered back, so a title pads at most to twice its length,
//! never to an abstract's. A group whose sequences are equally long skips even that (no scatter,
//! no mask), and a batch of similar lengths is one group. libtorch's SDPA has no variable-length
//! form (flash-attention's varlen kernel is CUDA-only and not a public op); attention is the
//! smaller part of the work (about `longest / 6·hidden` of a layer's FLOPs: 11 % for MiniLM at 256
//! tokens), so the little padding left costs little.
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

impl Layer {
    /// The rest of the layer after attention, on any layout (packed `[tokens, hidden]` or padded
    /// `[batch, seq, hidden]`): output projection + residual + LayerNorm, then the GELU
    /// feed-forward + residual + LayerNorm. Residual sums promote to fp32, so LayerNorm always
    /// sees fp32.
    fn after_attention(
        &self,
        context: &Tensor,
        x: &Tensor,
        kind: Kind,
        gelu_approximate: &str,
        train: bool,
    ) -> Tensor {
        let attended = (self
            .attention_out
            .forward_as(context, kind)
            .dropout(0.1, train)
            + x)
            .apply(&self.attention_norm);
        let inner = self
            .intermediate
            .forward_as(&attended, kind)
            .gelu(gelu_approximate);
        (self.output.forward_as(&inner, kind).dropout(0.1, train) + &attended)
            .apply(&self.output_norm)
    }
}

/// A batch of token id lists in the packed layout of [`Bert::forward_packed`]: only real tokens,
/// sequence after sequence (longest first), with what attention and pooling need to find each
/// sequence again.
#[derive(Debug)]
pub struct PackedBatch {
    /// Every token's id: `[tokens]`.
    pub ids: Tensor,
    /// Each token's position in its own sequence: `[tokens]`.
    pub positions: Tensor,
    /// Each token's sequence (its index in the batch as given): `[tokens]`.
    pub sequence: Tensor,
    /// Row of each sequence's first token, in the batch's order: `[batch]`.
    pub starts: Tensor,
    /// Tokens per sequence, as floats, in the batch's order: `[batch, 1]`.
    pub lengths: Tensor,
    /// The sequences attention pads together, longest first (see [`AttentionGroup`]).
    pub groups: Vec<AttentionGroup>,
    pub batch: i64,
}

/// Sequences of similar length that attention pads to their own longest: a sequence joins the
/// group while it is at least half as long as the group's first (longest). So a title is never
/// padded to an abstract's length, and a batch of similar lengths is one group.
#[derive(Debug)]
pub struct AttentionGroup {
    /// The group's tokens are rows `start .. start + tokens` of the packed batch.
    pub start: i64,
    pub tokens: i64,
    pub sequences: i64,
    pub longest: i64,
    /// Each token's row in the group's padded `[sequences · longest]` layout, and the keys each
    /// sequence may attend to (`[sequences, 1, 1, longest]`, true = token); `None` when every
    /// sequence of the group is `longest` long (nothing to pad or mask).
    pub padding: Option<(Tensor, Tensor)>,
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
        let mut order: Vec<usize> = (0..rows.len()).collect();
        order.sort_by_key(|&s| std::cmp::Reverse(rows[s].len()));
        let total: usize = rows.iter().map(|r| r.len()).sum();
        let mut ids = Vec::with_capacity(total);
        let mut positions = Vec::with_capacity(total);
        let mut sequence = Vec::with_capacity(total);
        let mut starts = vec![0i64; rows.len()];
        let mut lengths = vec![0f32; rows.len()];
        for &s in &order {
            starts[s] = ids.len() as i64;
            lengths[s] = rows[s].len() as f32;
            ids.extend_from_slice(rows[s]);
            positions.extend(0..rows[s].len() as i64);
            sequence.extend(std::iter::repeat_n(s as i64, rows[s].len()));
        }
        // Groups over the sorted order.
        let mut groups = Vec::new();
        let mut first = 0;
        while first < order.len() {
            let longest = rows[order[first]].len();
            let mut end = first + 1;
            while end < order.len() && 2 * rows[order[end]].len() >= longest {
                end += 1;
            }
            let members = &order[first..end];
            groups.push(AttentionGroup::new(
                starts[members[0]],
                members.iter().map(|&s| rows[s].len()).collect(),
                device,
            ));
            first = end;
        }
        let batch_len = rows.len() as i64;
        Self {
            ids: Tensor::from_slice(&ids).to(device),
            positions: Tensor::from_slice(&positions).to(device),
            sequence: Tensor::from_slice(&sequence).to(device),
            starts: Tensor::from_slice(&starts).to(device),
            lengths: Tensor::from_slice(&lengths).view([batch_len, 1]).to(device),
            groups,
            batch: batch_len,
        }
    }

    /// Real tokens in the batch.
    pub fn tokens(&self) -> i64 {
        self.ids.size()[0]
    }

    /// Mean of each sequence's rows of `hidden` (`[tokens, hidden]` → `[batch, hidden]`, in the
    /// batch's order): a sum per segment, divided by the sequence's length.
    pub fn mean_pool(&self, hidden: &Tensor) -> Tensor {
        let width = hidden.size()[1];
        Tensor::zeros([self.batch, width], (hidden.kind(), hidden.device())).index_add(
            0,
            &self.sequence,
            hidden,
        ) / self.lengths.to_kind(hidden.kind())
    }

    /// Each sequence's first row of `hidden` ([CLS]): `[batch, hidden]`, in the batch's order.
    pub fn first_tokens(&self, hidden: &Tensor) -> Tensor {
        hidden.index_select(0, &self.starts)
    }
}

impl AttentionGroup {
    /// The group of sequences of these `lengths` (longest first) whose tokens start at packed
    /// row `start`.
    fn new(start: i64, lengths: Vec<usize>, device: Device) -> Self {
        let longest = lengths[0];
        let tokens: usize = lengths.iter().sum();
        let padding = (tokens != lengths.len() * longest).then(|| {
            let mut padded_rows = Vec::with_capacity(tokens);
            let mut attend = Vec::with_capacity(lengths.len() * longest);
            for (s, &len) in lengths.iter().enumerate() {
                padded_rows.extend((0..len).map(|p| (s * longest + p) as i64));
                attend.extend((0..longest).map(|p| p < len));
            }
            (
                Tensor::from_slice(&padded_rows).to(device),
                Tensor::from_slice(&attend)
                    .view([lengths.len() as i64, 1, 1, longest as i64])
                    .to(device),
            )
        });
        Self {
            start,
            tokens: tokens as i64,
            sequences: lengths.len() as i64,
            longest: longest as i64,
            padding,
        }
    }

    /// Attention of the group's packed Q·K·V rows (`[tokens, 3·hidden]`) → context `[tokens,
    /// hidden]`: scattered into the padded layout (zeros in the padding rows: masked keys),
    /// attended, gathered back.
    fn attend(&self, qkv: &Tensor, heads: i64, dropout: f64) -> Tensor {
        let hidden = qkv.size()[1] / 3;
        let (rows, longest) = (self.sequences, self.longest);
        let padded = match &self.padding {
            Some((padded_rows, _)) => Tensor::zeros(
                [rows * longest, 3 * hidden],
                (qkv.kind(), qkv.device()),
            )
            .index_copy(0, padded_rows, qkv),
            None => qkv.shallow_clone(),
        };
        // [sequences, longest, (q|k|v), heads, head_dim] → [(q|k|v), sequences, heads, longest, head_dim]
        let qkv = padded
            .view([rows, longest, 3, heads, hidden / heads])
            .permute([2, 0, 3, 1, 4]);
        let context = Tensor::scaled_dot_product_attention(
            &qkv.get(0),
            &qkv.get(1),
            &qkv.get(2),
            self.padding.as_ref().map(|(_, attend)| attend),
            dropout,
            false,
            None,
            false,
        )
        .transpose(1, 2)
        .reshape([rows * longest, hidden]);
        match &self.padding {
            Some((padded_rows, _)) => context.index_select(0, padded_rows),
            None => context,
        }
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
        let kind = self.compute;
        let dropout = if train { 0.1 } else { 0.0 };
        for layer in &self.layers {
            let qkv = fused_forward_as([&layer.query, &layer.key, &layer.value], &x, kind);
            let context = if let [group] = batch.groups.as_slice() {
                group.attend(&qkv, self.heads, dropout)
            } else {
                let parts: Vec<Tensor> = batch
                    .groups
                    .iter()
                    .map(|g| g.attend(&qkv.narrow(0, g.start, g.tokens), self.heads, dropout))
                    .collect();
                Tensor::cat(&parts, 0)
            };
            x = layer.after_attention(&context, &x, kind, self.gelu_approximate, train);
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
            x = layer.after_attention(&context, &x, kind, self.gelu_approximate, train);
        }
        x
    }
}
