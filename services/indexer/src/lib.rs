//! medembed-indexer owns the last stage of a job: embedding its corpus with the job's own model
//! and building what search needs, and the loading and searching of that index by the api and
//! the CLI.
//!
//! The stage fans out like the cleaner so that many indexers (GPUs) share a large corpus:
//! an [`messages::IndexTask`](medembed_pipeline::messages::IndexTask) writes the plan and
//! publishes one embed task per clean part; each [`stage::EmbedStage`] task writes
//! `index/embeddings/part-NNNNN.parquet`; every finished part publishes a build check, and the
//! check that finds every part embedded ([`stage::BuildStage`]) builds the index
//! ([`build`]: vectors, exact or HNSW search in [`vectors`], [`clusters`], the 2-D [`map`]),
//! writes it under `index/` with `_manifest.json` last, and marks the job done.
//! [`search::JobIndex`] loads a built index for queries.

pub mod build;
pub mod clusters;
pub mod map;
pub mod model;
pub mod search;
pub mod stage;
pub mod synthetic;
pub mod tables;
pub mod vectors;

/// BM25, shared with the trainer's evaluation: [`medembed_retrieval::lexical`].
pub use medembed_retrieval::lexical;

use medembed_pipeline::runner::StageError;
use medembed_pipeline::store::StoreError;
use medembed_pipeline::table::TableError;

/// What can go wrong indexing or searching; messages name the job, object or setting.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Table(#[from] TableError),
    #[error(transparent)]
    Model(#[from] medembed_model::ModelError),
    /// Something the job has not produced (yet): no model, no index.
    #[error("{0}")]
    Missing(String),
    /// A table or file that does not hold what it should.
    #[error("{0}")]
    Format(String),
    #[error("HNSW index: {0}")]
    Hnsw(String),
    #[error(transparent)]
    Lexical(#[from] medembed_retrieval::lexical::LexicalError),
    /// A query the index cannot answer (a vector of the wrong dimension).
    #[error("{0}")]
    Query(String),
}

pub type Result<T, E = IndexError> = std::result::Result<T, E>;

impl From<IndexError> for StageError {
    fn from(e: IndexError) -> Self {
        match e {
            IndexError::Store(e) => e.into(),
            IndexError::Table(e) => e.into(),
            other => StageError::permanent(other),
        }
    }
}
