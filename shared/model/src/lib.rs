//! medembed-model owns sentence embeddings with BERT in tch (libtorch): reading a Hugging Face /
//! sentence-transformers model folder ([`folder`]), the BERT encoder ([`bert`]), tokenization
//! ([`tokenizer`]) and batched, padding-thrifty encoding with pooling and normalization
//! ([`encoder`]), and fetching base models from a Hugging Face hub ([`hub`]). Used by the trainer, the indexer and the api.

pub mod bert;
pub mod encoder;
pub mod export;
pub mod folder;
pub mod hub;
pub mod testing;
pub mod tokenizer;
mod torch_pickle;

pub use encoder::SentenceEncoder;

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
}

pub type Result<T, E = ModelError> = std::result::Result<T, E>;
