//! medembed-fetcher: the first stage. It owns turning NCBI data into [`RawArticle`]s.
//!
//! Built so far: the streaming parsers for PubMed XML (`PubmedArticleSet`, `MedlineCitationSet`)
//! and JATS (PMC efetch `pmc-articleset`, single `.nxml` files, OAI-PMH records), with bounded
//! memory and refusal of hostile input ([`xml`]). The E-utilities client, bulk-file source, raw
//! Parquet writer and the stage itself come next (issue 3).

pub mod article;
pub mod eutils;
pub mod files;
pub mod jats;
pub mod pubmed;
pub mod stage;
pub mod xml;

pub use medembed_corpus::raw;

pub use article::{ArticleReader, MeshHeading, RawArticle, Reference, Section, SourceFormat};
