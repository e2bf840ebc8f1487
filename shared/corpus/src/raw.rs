//! Raw Parquet parts (`jobs/{job}/raw/part-NNNNN.parquet`): one row per [`RawArticle`], and the
//! manifest written once every part is (`raw/_manifest.json`).
//!
//! The schema is the contract with the cleaner; it is spelled out here (not inferred) so a change
//! is a visible change. Lists of sections, MeSH headings and references are lists of structs.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::datatypes::{DataType, Schema};
use arrow::record_batch::RecordBatch;
use medembed_pipeline::keys;
use medembed_pipeline::messages::JobId;
use medembed_pipeline::runner::StageError;
use medembed_pipeline::store::{ObjectStore, StoreError, read_json};
use serde::{Deserialize, Serialize};

use crate::article::RawArticle;
use crate::rows::{
    RowsError, list, mesh_type, optional_text, reference_type, rows_from_batches, rows_to_batch,
    section_type, text,
};

/// The schema of a raw part.
pub fn raw_schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        text("id"),
        optional_text("format"),
        optional_text("pmid"),
        optional_text("pmcid"),
        optional_text("doi"),
        text("title"),
        text("abstract_text"),
        list("abstract_sections", section_type()),
        list("body_sections", section_type()),
        list("keywords", DataType::Utf8),
        list("mesh", mesh_type()),
        list("publication_types", DataType::Utf8),
        optional_text("pub_date"),
        optional_text("journal"),
        list("authors", DataType::Utf8),
        optional_text("article_type"),
        optional_text("license"),
        list("references", reference_type()),
    ]))
}

/// Articles as one record batch of the raw schema.
pub fn to_batch(key: &str, articles: &[RawArticle]) -> Result<RecordBatch, RowsError> {
    rows_to_batch(key, &raw_schema(), articles)
}

/// Articles back from record batches of the raw schema.
pub fn from_batches(key: &str, batches: &[RecordBatch]) -> Result<Vec<RawArticle>, RowsError> {
    rows_from_batches(key, batches)
}

/// One written raw part.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RawPartInfo {
    pub part: u32,
    pub key: String,
    pub articles: u64,
}

/// `raw/_manifest.json`: the complete list of a job's raw parts. Its presence means fetching is
/// done; the pair-builder's barrier waits for a clean part per part listed here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RawManifest {
    pub version: u32,
    pub job_id: JobId,
    pub parts: Vec<RawPartInfo>,
    pub articles: u64,
    /// Articles not kept, by reason (`no_id`, `duplicate`, `record_too_large`, …).
    pub skipped: BTreeMap<String, u64>,
    /// Problems worth a user's attention (E-utilities warnings, unreadable files).
    pub warnings: Vec<String>,
}

impl RawManifest {
    /// A manifest of `parts`, nothing skipped.
    pub fn new(job_id: JobId, parts: Vec<RawPartInfo>) -> Self {
        Self {
            version: 1,
            job_id,
            articles: parts.iter().map(|p| p.articles).sum(),
            parts,
            skipped: BTreeMap::new(),
            warnings: Vec::new(),
        }
    }

    /// Writes `raw/_manifest.json`.
    pub async fn save(&self, store: &dyn ObjectStore) -> Result<(), StoreError> {
        let body = serde_json::to_vec_pretty(self).expect("a manifest is plain data");
        store
            .put(&keys::raw_manifest(self.job_id), bytes::Bytes::from(body))
            .await
    }

    /// The job's manifest, or None while the fetch is not complete. A manifest that does not
    /// parse is an error naming its key (a bug or a foreign file, never a normal state).
    pub async fn load(store: &dyn ObjectStore, job: JobId) -> Result<Option<Self>, StageError> {
        read_json(store, &keys::raw_manifest(job)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::article::{MeshHeading, Reference, Section, SourceFormat};

    fn sample() -> RawArticle {
        RawArticle {
            id: "PMC1".into(),
            format: Some(SourceFormat::Jats),
            pmid: Some("11".into()),
            pmcid: Some("PMC1".into()),
            doi: None,
            title: "T".into(),
            abstract_text: "A b.".into(),
            abstract_sections: vec![Section {
                title: "Background".into(),
                text: "A b.".into(),
            }],
            body_sections: vec![],
            keywords: vec!["k".into()],
            mesh: vec![MeshHeading {
                descriptor: "Neoplasms".into(),
                ui: Some("D009369".into()),
                major: true,
                qualifiers: vec!["therapy".into()],
            }],
            publication_types: vec![],
            pub_date: Some("2020-01".into()),
            journal: None,
            authors: vec!["Doe J".into()],
            article_type: None,
            license: None,
            references: vec![Reference {
                pmid: Some("5".into()),
                pmcid: None,
                doi: None,
            }],
        }
    }

    #[test]
    fn articles_round_trip_through_parquet_with_the_declared_schema() {
        let articles = vec![
            sample(),
            RawArticle {
                id: "pmid:2".into(),
                ..RawArticle::default()
            },
        ];
        let batch = to_batch("k", &articles).expect("batch");
        assert_eq!(batch.schema().fields().len(), raw_schema().fields().len());
        let bytes = medembed_pipeline::table::encode("k", &raw_schema(), &[batch]).expect("encode");
        let back = medembed_pipeline::table::decode("k", bytes, &raw_schema())
            .expect("decode against the schema");
        assert_eq!(from_batches("k", &back).expect("rows"), articles);
    }
}
