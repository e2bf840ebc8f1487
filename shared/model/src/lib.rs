//! medembed-model owns sentence embeddings with BERT in tch (libtorch): reading a Hugging Face /
//! sentence-transformers model folder ([`folder`]), the BERT encoder ([`bert`]), tokenization
//! ([`tokenizer`]) and batched, padding-thrifty encoding with pooling and normalization
//! ([`encoder`]), and fetching base models from a Hugging Face hub ([`hub`]). Used by the trainer, the indexer and the api.

pub mod bert;
pub mod encoder;
pub mod export;
pub mod flops;
pub mod folder;
pub mod hub;
pub mod testing;
pub mod tokenizer;
mod torch_pickle;

pub use encoder::SentenceEncoder;

use medembed_pipeline::config::{ComputeDevice, ComputePrecision};

/// The libtorch device a `device` setting asks for; `key` (`train.device`, `index.device`) names
/// the setting when CUDA is asked for but absent.
pub fn device_for(setting: ComputeDevice, key: &str) -> Result<tch::Device> {
    match setting {
        ComputeDevice::Auto => Ok(tch::Device::cuda_if_available()),
        ComputeDevice::Cpu => Ok(tch::Device::Cpu),
        ComputeDevice::Cuda if tch::Cuda::is_available() => Ok(tch::Device::Cuda(0)),
        ComputeDevice::Cuda => Err(ModelError::Device(format!(
            "{key} = \"cuda\" but libtorch sees no CUDA GPU"
        ))),
    }
}

/// The kind the encoder computes dense layers and attention in (weights stay fp32).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    Fp32,
    /// bf16 matmuls with fp32 weights, LayerNorm and sums (mixed precision).
    Bf16,
}

impl Precision {
    /// bf16 where the hardware does it fast (CUDA; a CPU with bf16 matmul instructions), fp32
    /// elsewhere.
    pub fn fastest_for(device: tch::Device) -> Self {
        if device.is_cuda() || cpu_has_fast_bf16() {
            Self::Bf16
        } else {
            Self::Fp32
        }
    }

    /// The precision a `precision` setting asks for on `device`.
    pub fn for_setting(setting: ComputePrecision, device: tch::Device) -> Self {
        match setting {
            ComputePrecision::Auto => Self::fastest_for(device),
            ComputePrecision::Fp32 => Self::Fp32,
            ComputePrecision::Bf16 => Self::Bf16,
        }
    }

    pub fn kind(self) -> tch::Kind {
        match self {
            Self::Fp32 => tch::Kind::Float,
            Self::Bf16 => tch::Kind::BFloat16,
        }
    }
}

/// Whether this CPU has bf16 matmul instructions that oneDNN uses (Linux: `amx_bf16`, AMX tiles
/// on Intel Sapphire Rapids and later, or `avx512_bf16`, on AMD Zen 4 and Intel Cooper Lake and
/// later, in /proc/cpuinfo): there libtorch runs bf16 matmuls 1.5–2.5× as fast as fp32.
pub fn cpu_has_fast_bf16() -> bool {
    std::fs::read_to_string("/proc/cpuinfo")
        .map(|info| {
            info.lines()
                .find(|l| l.starts_with("flags"))
                .is_some_and(|l| {
                    l.split_whitespace()
                        .any(|f| f == "amx_bf16" || f == "avx512_bf16")
                })
        })
        .unwrap_or(false)
}

/// What can go wrong loading or running a model; messages name the file or the tensor.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Format {
        path: std::path::PathBuf,
        message: String,
    },
    #[error("model weights: {0}")]
    Weights(String),
    #[error("model hub: {0}")]
    Hub(String),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    #[error("{0}")]
    Device(String),
}

pub type Result<T, E = ModelError> = std::result::Result<T, E>;
