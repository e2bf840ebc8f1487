//! The pair-builder's outputs under `jobs/{job}/pairs/`: labelled pairs per split
//! (`{train,val,test}.parquet`), retrieval evaluation sets (`eval_{val,test}.parquet` with the
//! queries and `eval_{val,test}_corpus.parquet` with the documents searched), and `stats.json`.
//! The contract between the pair-builder and the trainer.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use serde::{Deserialize, Serialize};

use crate::rows::{RowsError, list_of, rows_from_batches, rows_to_batch};

/// One of the three document-level splits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Val,
    Test,
}

impl Split {
    pub const ALL: [Split; 3] = [Split::Train, Split::Val, Split::Test];

    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Val => "val",
            Split::Test => "test",
        }
    }
}

impl std::fmt::Display for Split {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A labelled pair of documents.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pair {
    pub id_a: String,
    pub id_b: String,
    pub text_a: String,
    pub text_b: String,
    /// 1.0 = related (positive), 0.0 = unrelated (negative).
    pub label: f32,
    /// `citation`, `mesh`, `keyword`, `title` (positives: `text_a` is the title, `text_b` the
    /// same document without it); `random`, `hard` (negatives).
    pub source: String,
    /// The rule's strength: 1 for a citation, the weighted Jaccard for `mesh`/`keyword`/`hard`,
    /// 0 for `random`.
    pub score: f32,
}

pub fn pair_schema() -> Arc<Schema> {
    let text = |name: &str| Field::new(name, DataType::Utf8, false);
    Arc::new(Schema::new(vec![
        text("id_a"),
        text("id_b"),
        text("text_a"),
        text("text_b"),
        Field::new("label", DataType::Float32, false),
        text("source"),
        Field::new("score", DataType::Float32, false),
    ]))
}

/// A retrieval query of an evaluation set, with its judged documents and their gains. The
/// pair-builder's queries are held-out documents' titles (`query_id` `title:{document id}`),
/// judged against the split's documents without their titles. A corpus document whose id is the
/// `query_id` itself is skipped when ranking (BEIR's `ignore_identical_ids`: a query that is a
/// document's whole text, as in sets made from labelled pairs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalQuery {
    pub query_id: String,
    pub query: String,
    pub relevant_ids: Vec<String>,
    /// The gain of each of `relevant_ids` (graded nDCG); empty = 1 for each.
    pub gains: Vec<f32>,
}

/// The prefix of a title query's id before its document's id, written and read in one place.
const TITLE_QUERY_PREFIX: &str = "title:";

impl EvalQuery {
    /// The id of the title query of document `id`.
    pub fn title_query_id(id: &str) -> String {
        format!("{TITLE_QUERY_PREFIX}{id}")
    }

    /// The document this query was made from: the titled document of a title query, else the
    /// query id itself (a query made from a document's text).
    pub fn own_document_id(&self) -> &str {
        self.query_id
            .strip_prefix(TITLE_QUERY_PREFIX)
            .unwrap_or(&self.query_id)
    }
}

pub fn eval_query_schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new("query_id", DataType::Utf8, false),
        Field::new("query", DataType::Utf8, false),
        Field::new("relevant_ids", list_of(DataType::Utf8), false),
        Field::new("gains", list_of(DataType::Float32), false),
    ]))
}

/// A document of an evaluation corpus: every document of the split.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EvalDocument {
    pub id: String,
    pub text: String,
}

pub fn eval_document_schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("text", DataType::Utf8, false),
    ]))
}

pub fn pairs_to_batch(key: &str, pairs: &[Pair]) -> Result<RecordBatch, RowsError> {
    rows_to_batch(key, &pair_schema(), pairs)
}

pub fn pairs_from_batches(key: &str, batches: &[RecordBatch]) -> Result<Vec<Pair>, RowsError> {
    rows_from_batches(key, batches)
}

/// What to tell a user whose corpus made no training pairs (the pair-builder's warning and the
/// job's summary say the same).
pub const HOW_TO_GET_PAIRS: &str = "articles with a title of 3+ words and an abstract make \
     \"title\" pairs (keep \"title\" in pairs.sources); records with MeSH descriptors, author \
     keywords or reference lists make relation pairs; so do more articles on one topic, or lower \
     pairs.mesh_threshold / pairs.keyword_threshold";

/// `pairs/stats.json`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct PairStats {
    pub version: u32,
    pub seed: u64,
    /// Documents read from the clean parts, and kept after cross-part de-duplication.
    pub documents_read: u64,
    pub documents: u64,
    /// Documents dropped across parts, by reason (`duplicate_id`, `duplicate_content`).
    pub documents_dropped: BTreeMap<String, u64>,
    /// The cleaner's drops, summed over parts, by reason.
    pub cleaner_dropped: BTreeMap<String, u64>,
    pub documents_per_split: BTreeMap<String, u64>,
    /// split → source → label ("0"/"1") → pairs.
    pub pairs: BTreeMap<String, BTreeMap<String, BTreeMap<String, u64>>>,
    /// Candidate pairs not written, by reason (`cross_split`, `per_document_cap`, …).
    pub dropped_pairs: BTreeMap<String, u64>,
    /// Evaluation queries per split.
    pub eval_queries: BTreeMap<String, u64>,
    pub build_seconds: f64,
    /// Seconds per phase (`load`, `positive_candidates`, `split_dedup_cap`, `negatives_and_eval`,
    /// `write`).
    pub phase_seconds: BTreeMap<String, f64>,
}
