//! Model FLOPs and the hardware's peak, for the benchmarks' MFU (model FLOPs utilization): the
//! FLOPs the model needs for the *real* tokens (padding is waste, not work) per second, over what
//! the device could do.
//!
//! Per real token, a forward pass costs `2 × N` (N = parameters outside the embeddings: every
//! weight is one multiply-add), training `6 × N` (forward, and backward for inputs and weights).
//! Attention adds, per layer and sequence of length `s`, `4 · s² · hidden` forward (Q·Kᵀ and the
//! weighted sum of V), three times that in training. Embedding lookups, LayerNorm and the like are
//! not counted (as is usual: they are memory-bound and small).

use crate::folder::BertConfig;

/// FLOPs of a BERT-shaped model.
#[derive(Debug, Clone, Copy)]
pub struct ModelFlops {
    /// Weights outside the embeddings (the encoder layers' dense layers, biases, LayerNorms).
    pub non_embedding_params: f64,
    layers: f64,
    hidden: f64,
}

impl ModelFlops {
    pub fn of(config: &BertConfig) -> Self {
        let h = config.hidden_size as f64;
        let i = config.intermediate_size as f64;
        // Q, K, V, output: 4 (h² + h); intermediate and output: 2 h·i + i + h; 2 LayerNorms: 4 h.
        let per_layer = 4.0 * (h * h + h) + 2.0 * h * i + i + h + 4.0 * h;
        Self {
            non_embedding_params: per_layer * config.num_hidden_layers as f64,
            layers: config.num_hidden_layers as f64,
            hidden: h,
        }
    }

    /// FLOPs of one forward pass over sequences of these real lengths.
    pub fn forward(&self, lengths: impl IntoIterator<Item = usize>) -> f64 {
        lengths
            .into_iter()
            .map(|s| {
                let s = s as f64;
                2.0 * self.non_embedding_params * s + 4.0 * self.layers * s * s * self.hidden
            })
            .sum()
    }

    /// FLOPs of one training pass (forward and backward) over sequences of these real lengths.
    pub fn training(&self, lengths: impl IntoIterator<Item = usize>) -> f64 {
        3.0 * self.forward(lengths)
    }
}

/// The peak FLOP/s of this machine's CPU cores for `precision`, from its instruction set and clock
/// (Linux `/proc/cpuinfo`), with how it was worked out; `None` where the CPU is not recognized.
///
/// Per core and cycle: fp32 FMA units × lanes × 2 — 32 for AVX2 (two 256-bit FMA units), 64 for
/// AVX-512 on Intel and AMD Zen 5 (`cpu family` 26: two 512-bit units), 32 on AMD Zen 4 (AVX-512
/// runs on 256-bit units); bf16 twice the fp32 figure with `avx512_bf16` (each lane a dot product
/// of two bf16 pairs), 1,024 with Intel AMX tiles. The clock is the one /proc/cpuinfo reports (a VM's nominal clock).
pub fn cpu_peak_flops(precision: crate::Precision, cores: usize) -> Option<(f64, String)> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let field = |key: &str| {
        info.lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split(':').nth(1))
            .map(|v| v.trim().to_string())
    };
    let flags: Vec<String> = field("flags")?
        .split_whitespace()
        .map(str::to_string)
        .collect();
    let has = |f: &str| flags.iter().any(|g| g == f);
    let mhz: f64 = field("cpu MHz")?.parse().ok()?;
    let amd = field("vendor_id").is_some_and(|v| v == "AuthenticAMD");
    let family: u32 = field("cpu family")
        .and_then(|f| f.parse().ok())
        .unwrap_or(0);
    let model = field("model name").unwrap_or_default();
    let (fp32, isa) = if has("avx512f") && (!amd || family >= 26) {
        (64.0, "AVX-512, two 512-bit FMA units")
    } else if has("avx512f") {
        (32.0, "AVX-512 on 256-bit FMA units (AMD Zen 4)")
    } else if has("avx2") && has("fma") {
        (32.0, "AVX2, two 256-bit FMA units")
    } else {
        return None;
    };
    let (per_cycle, how) = match precision {
        crate::Precision::Fp32 => (fp32, format!("fp32: {isa}, {fp32} FLOP/cycle")),
        crate::Precision::Bf16 if has("amx_bf16") => {
            (1024.0, "bf16: AMX tiles, 1024 FLOP/cycle".to_string())
        }
        crate::Precision::Bf16 if has("avx512_bf16") => (
            2.0 * fp32,
            format!("bf16: avx512_bf16 dot products, {} FLOP/cycle", 2.0 * fp32),
        ),
        crate::Precision::Bf16 => (fp32, format!("bf16 without bf16 instructions: {isa}")),
    };
    let peak = per_cycle * mhz * 1e6 * cores as f64;
    Some((
        peak,
        format!("{model} (family {family}), {cores} cores × {mhz:.0} MHz × {how}"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minilm_and_bert_base_have_their_known_sizes() {
        let config = |hidden, layers, heads| BertConfig {
            vocab_size: 30522,
            hidden_size: hidden,
            num_hidden_layers: layers,
            num_attention_heads: heads,
            intermediate_size: 4 * hidden,
            hidden_act: "gelu".into(),
            max_position_embeddings: 512,
            type_vocab_size: 2,
            layer_norm_eps: 1e-12,
            pad_token_id: 0,
            model_type: "bert".into(),
        };
        // BERT-base: 85.05M parameters outside the embeddings (109.48M in all, 23.84M of which
        // embeddings and their LayerNorm, 0.59M the pooler we do not have).
        let base = ModelFlops::of(&config(768, 12, 12));
        assert_eq!(base.non_embedding_params, 85_054_464.0);
        // all-MiniLM-L6-v2: 10.6M parameters outside the embeddings (22.7M in all: its 30,522 × 384
        // word embeddings are half the model).
        let minilm = ModelFlops::of(&config(384, 6, 12));
        assert_eq!(minilm.non_embedding_params, 10_646_784.0);
        // One 128-token sequence through BERT-base: 2·N·128 + 4·12·128²·768.
        let expected = 2.0 * 85_054_464.0 * 128.0 + 4.0 * 12.0 * 128.0 * 128.0 * 768.0;
        assert_eq!(base.forward([128]), expected);
        assert_eq!(base.training([128, 128]), 6.0 * expected);
    }
}
