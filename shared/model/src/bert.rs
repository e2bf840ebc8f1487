//! The BERT encoder: embeddings, then N layers of self-attention (libtorch's fused
//! `scaled_dot_product_attention`) and feed-forward, each with a residual and LayerNorm. No pooler:
//! sentence embeddings pool the last hidden states. Parameter names are Hugging Face's, so a
//! checkpoint loads by name with or without the `bert.` prefix.
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
use tch::{Kind, Tensor};

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

    /// Last hidden states `[batch, seq, hidden]` of `input_ids` `[batch, seq]`; `mask` `[batch,
    /// seq]` is 1 for tokens, 0 for padding.
    pub fn forward(&self, input_ids: &Tensor, mask: &Tensor, train: bool) -> Tensor {
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
