//! medembed-corpus owns the records that flow between stages and their Parquet schemas: raw
//! articles (fetcher → cleaner), clean articles (cleaner → pair-builder, indexer) and pairs
//! (pair-builder → trainer). Each schema is spelled out, not inferred, so a change to a contract
//! is a visible change in one place.

pub mod article;
pub mod clean;
pub mod pairs;
pub mod raw;
pub mod rows;

pub use article::{MeshHeading, RawArticle, Reference, Section, SourceFormat};
