//! Clean Parquet parts (`jobs/{job}/clean/part-NNNNN.parquet`): one row per kept article, text
//! cleaned, abbreviations found, and `text` ready for embedding. The contract between the cleaner
//! and the pair-builder and indexer.
//!
//! Next to each part the cleaner writes `part-NNNNN.stats.json` ([`CleanPartStats`]) first, so a
//! clean part that exists always has its stats.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::datatypes::{DataType, Fields, Schema};
use arrow::record_batch::RecordBatch;
use serde::{Deserialize, Serialize};

use medembed_pipeline::keys;
use medembed_pipeline::messages::JobId;
use medembed_pipeline::runner::StageError;
use medembed_pipeline::store::{ObjectStore, read_json};

use crate::article::{MeshHeading, Reference, Section};
use crate::rows::{
    RowsError, list, mesh_type, optional_text, reference_type, rows_from_batches, rows_to_batch,
    section_type, text,
};

/// A short form defined in the text itself ("PD-1" → "programmed cell death protein 1").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Abbreviation {
    pub short: String,
    pub long: String,
}

/// One cleaned article.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct CleanArticle {
    /// The raw article's canonical id (PMCID, `pmid:N` or `doi:…`).
    pub id: String,
    pub pmid: Option<String>,
    pub pmcid: Option<String>,
    pub doi: Option<String>,
    pub title: String,
    /// The abstract, cleaned.
    pub abstract_text: String,
    /// Full-text sections, cleaned (empty for PubMed records).
    pub body_sections: Vec<Section>,
    pub mesh: Vec<MeshHeading>,
    pub keywords: Vec<String>,
    pub references: Vec<Reference>,
    /// Short forms defined in the title, abstract or body, first definition wins.
    pub abbreviations: Vec<Abbreviation>,
    pub pub_date: Option<String>,
    pub journal: Option<String>,
    /// The text to embed and pair (default: title + abstract).
    pub text: String,
    /// Hex of a 64-bit hash of the normalized `text`: equal content, equal hash, across parts.
    pub content_hash: String,
}

/// The schema of a clean part.
pub fn clean_schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        text("id"),
        optional_text("pmid"),
        optional_text("pmcid"),
        optional_text("doi"),
        text("title"),
        text("abstract_text"),
        list("body_sections", section_type()),
        list("mesh", mesh_type()),
        list("keywords", DataType::Utf8),
        list("references", reference_type()),
        list(
            "abbreviations",
            DataType::Struct(Fields::from(vec![text("short"), text("long")])),
        ),
        optional_text("pub_date"),
        optional_text("journal"),
        text("text"),
        text("content_hash"),
    ]))
}

/// Clean articles as one record batch of the clean schema.
pub fn to_batch(key: &str, articles: &[CleanArticle]) -> Result<RecordBatch, RowsError> {
    rows_to_batch(key, &clean_schema(), articles)
}

/// Clean articles back from record batches of the clean schema.
pub fn from_batches(key: &str, batches: &[RecordBatch]) -> Result<Vec<CleanArticle>, RowsError> {
    rows_from_batches(key, batches)
}

/// `clean/part-NNNNN.stats.json`: what the cleaner kept and dropped in one part.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct CleanPartStats {
    pub part: u32,
    /// Articles read from the raw part.
    pub input: u64,
    /// Articles written to the clean part.
    pub kept: u64,
    /// Articles dropped, by reason (`too_short`, `not_text`, `duplicate_id`, `duplicate_content`).
    pub dropped: BTreeMap<String, u64>,
    /// Abbreviation definitions found.
    pub abbreviations: u64,
    /// Bytes of text (title, abstract, body) read and cleaned.
    pub text_bytes: u64,
}

impl CleanPartStats {
    /// A clean part's stats; None when the part has not been cleaned yet.
    pub async fn load(
        store: &dyn ObjectStore,
        job: JobId,
        part: u32,
    ) -> Result<Option<Self>, StageError> {
        read_json(store, &keys::clean_part_stats(job, part)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_articles_round_trip_through_parquet_with_the_declared_schema() {
        let articles = vec![CleanArticle {
            id: "PMC1".into(),
            pmcid: Some("PMC1".into()),
            title: "T".into(),
            abstract_text: "A.".into(),
            mesh: vec![MeshHeading {
                descriptor: "Neoplasms".into(),
                ui: None,
                major: true,
                qualifiers: vec![],
            }],
            abbreviations: vec![Abbreviation {
                short: "PD-1".into(),
                long: "programmed cell death protein 1".into(),
            }],
            text: "T. A.".into(),
            content_hash: "00ff".into(),
            ..CleanArticle::default()
        }];
        let batch = to_batch("k", &articles).expect("batch");
        let bytes =
            medembed_pipeline::table::encode("k", &clean_schema(), &[batch]).expect("encode");
        let back = medembed_pipeline::table::decode("k", bytes, &clean_schema()).expect("decode");
        assert_eq!(from_batches("k", &back).expect("rows"), articles);
    }
}
