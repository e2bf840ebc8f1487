//! The BERT encoder: embeddings, then N layers of self-attention (libtorch's fused
//! `scaled_dot_product_attention`) and feed-forward, each with a residual and LayerNorm. No pooler:
//! sentence embeddings pool the last hidden states. Parameter names are Hugging Face's, so a
//! checkpoint loads by name with or without the `bert.` prefix.
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

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> Tensor {
        x.linear(&self.weight, Some(&self.bias))
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
        })
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
            let q = split(x.apply(&layer.query));
            let k = split(x.apply(&layer.key));
            let v = split(x.apply(&layer.value));
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
            let attended = (context.apply(&layer.attention_out).dropout(0.1, train) + &x)
                .apply(&layer.attention_norm);
            let inner = attended
                .apply(&layer.intermediate)
                .gelu(self.gelu_approximate);
            x = (inner.apply(&layer.output).dropout(0.1, train) + &attended)
                .apply(&layer.output_norm);
        }
        x
    }
}
