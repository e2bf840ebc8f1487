//! The indexer's tables and their schemas: the embeddings of a clean part
//! (`index/embeddings/part-NNNNN.parquet`), and what the build writes for the api:
//! `index/documents.parquet` (what a search hit shows), `index/map.parquet` (the 2-D map) and
//! `index/clusters.parquet` (topic clusters). Row `i` of documents and map is row `i` of
//! `index/vectors.f32`.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, FixedSizeListArray, Float32Array, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use medembed_corpus::article::MeshHeading;
use medembed_corpus::clean::clean_schema;
use medembed_corpus::rows::{list, optional_text, rows_from_batches, rows_to_batch, text};
use serde::{Deserialize, Serialize};

use crate::{IndexError, Result};

/// `id` and `vector` (FixedSizeList<Float32, dim>): one row per article of a clean part, in its
/// order.
pub fn embedding_schema(dim: usize) -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        text("id"),
        Field::new(
            "vector",
            DataType::FixedSizeList(
                Arc::new(Field::new("item", DataType::Float32, false)),
                dim as i32,
            ),
            false,
        ),
    ]))
}

/// The embeddings of one part as a record batch of [`embedding_schema`].
pub fn embeddings_to_batch(
    ids: &[String],
    vectors: &[Vec<f32>],
    dim: usize,
) -> Result<RecordBatch> {
    if ids.len() != vectors.len() || vectors.iter().any(|v| v.len() != dim) {
        return Err(IndexError::Format(format!(
            "{} ids, {} vectors, expected dimension {dim}",
            ids.len(),
            vectors.len()
        )));
    }
    let values = Float32Array::from(vectors.concat());
    let list = FixedSizeListArray::try_new(
        Arc::new(Field::new("item", DataType::Float32, false)),
        dim as i32,
        Arc::new(values),
        None,
    )
    .map_err(|e| IndexError::Format(e.to_string()))?;
    RecordBatch::try_new(
        embedding_schema(dim),
        vec![
            Arc::new(StringArray::from_iter_values(ids)) as ArrayRef,
            Arc::new(list),
        ],
    )
    .map_err(|e| IndexError::Format(e.to_string()))
}

/// Ids and flat vectors back from batches of [`embedding_schema`].
pub fn embeddings_from_batches(batches: &[RecordBatch]) -> (Vec<String>, Vec<f32>) {
    let mut ids = Vec::new();
    let mut flat = Vec::new();
    for batch in batches {
        let id = batch
            .column(0)
            .as_any()
            .downcast_ref::<StringArray>()
            .expect("schema checked on read");
        let vector = batch
            .column(1)
            .as_any()
            .downcast_ref::<FixedSizeListArray>()
            .expect("schema checked on read");
        ids.extend(id.iter().map(|s| s.unwrap_or_default().to_string()));
        let values = vector
            .values()
            .as_any()
            .downcast_ref::<Float32Array>()
            .expect("Float32 items");
        let start = vector.offset() * vector.value_length() as usize;
        let len = vector.len() * vector.value_length() as usize;
        flat.extend_from_slice(&values.values()[start..start + len]);
    }
    (ids, flat)
}

/// The columns of a clean part the build reads: what a hit shows and what labels clusters (no
/// body text, however long the full texts are).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ArticleRecord {
    pub id: String,
    pub pmid: Option<String>,
    pub pmcid: Option<String>,
    pub doi: Option<String>,
    pub title: String,
    pub abstract_text: String,
    pub mesh: Vec<MeshHeading>,
    pub keywords: Vec<String>,
    pub pub_date: Option<String>,
    pub journal: Option<String>,
}

/// `fields` of the clean schema, in that order.
fn clean_columns(fields: &[&str]) -> Arc<Schema> {
    let clean = clean_schema();
    Arc::new(Schema::new(
        fields
            .iter()
            .map(|name| clean.field_with_name(name).expect("a clean column").clone())
            .collect::<Vec<_>>(),
    ))
}

/// The clean columns of an [`ArticleRecord`].
pub fn article_record_schema() -> Arc<Schema> {
    clean_columns(&[
        "id",
        "pmid",
        "pmcid",
        "doi",
        "title",
        "abstract_text",
        "mesh",
        "keywords",
        "pub_date",
        "journal",
    ])
}

/// The clean columns an embed task reads: `id` and `text` (what the cleaner prepared for
/// embedding).
pub fn embed_input_schema() -> Arc<Schema> {
    clean_columns(&["id", "text"])
}

/// What a search hit shows of an article.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IndexedDocument {
    pub id: String,
    pub pmid: Option<String>,
    pub pmcid: Option<String>,
    pub doi: Option<String>,
    pub title: String,
    /// The start of the abstract (`index.snippet_chars`), cut at a word.
    pub snippet: String,
    pub journal: Option<String>,
    pub pub_date: Option<String>,
}

impl IndexedDocument {
    pub fn of(article: &ArticleRecord, snippet_chars: usize) -> Self {
        Self {
            id: article.id.clone(),
            pmid: article.pmid.clone(),
            pmcid: article.pmcid.clone(),
            doi: article.doi.clone(),
            title: article.title.clone(),
            snippet: snippet(&article.abstract_text, snippet_chars),
            journal: article.journal.clone(),
            pub_date: article.pub_date.clone(),
        }
    }

    /// The article on PMC (full text) when it has a PMCID, else on PubMed, else its DOI.
    pub fn url(&self) -> Option<String> {
        if let Some(pmcid) = &self.pmcid {
            let pmcid = if pmcid.starts_with("PMC") {
                pmcid.clone()
            } else {
                format!("PMC{pmcid}")
            };
            Some(format!("https://pmc.ncbi.nlm.nih.gov/articles/{pmcid}/"))
        } else if let Some(pmid) = &self.pmid {
            Some(format!("https://pubmed.ncbi.nlm.nih.gov/{pmid}/"))
        } else {
            self.doi
                .as_ref()
                .map(|doi| format!("https://doi.org/{doi}"))
        }
    }
}

/// The first `chars` characters of `text`, cut back to a word boundary, with "…" if cut.
pub fn snippet(text: &str, chars: usize) -> String {
    if text.chars().count() <= chars {
        return text.to_string();
    }
    let cut: String = text.chars().take(chars).collect();
    let cut = match cut.rfind(char::is_whitespace) {
        Some(i) if i > chars / 2 => &cut[..i],
        _ => cut.as_str(),
    };
    format!("{}…", cut.trim_end())
}

pub fn document_schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        text("id"),
        optional_text("pmid"),
        optional_text("pmcid"),
        optional_text("doi"),
        text("title"),
        text("snippet"),
        optional_text("journal"),
        optional_text("pub_date"),
    ]))
}

/// One point of the 2-D map.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MapPoint {
    pub id: String,
    pub title: String,
    /// The article's main MeSH descriptor (its first major one, else its first), else its first
    /// keyword; empty when it has neither.
    pub descriptor: String,
    pub cluster: u32,
    pub x: f32,
    pub y: f32,
}

pub fn map_schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        text("id"),
        text("title"),
        text("descriptor"),
        Field::new("cluster", DataType::UInt32, false),
        Field::new("x", DataType::Float32, false),
        Field::new("y", DataType::Float32, false),
    ]))
}

/// A topic cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TopicCluster {
    pub cluster: u32,
    pub size: u64,
    /// Its most over-represented MeSH descriptors / keywords, best first.
    pub labels: Vec<String>,
    /// The mean map position of its members (where the UI writes its label).
    pub x: f32,
    pub y: f32,
}

pub fn cluster_schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new("cluster", DataType::UInt32, false),
        Field::new("size", DataType::UInt64, false),
        list("labels", DataType::Utf8),
        Field::new("x", DataType::Float32, false),
        Field::new("y", DataType::Float32, false),
    ]))
}

/// Rows of one of the tables above as a batch; `key` names the table in errors.
pub fn to_batch<T: Serialize>(key: &str, schema: &Schema, rows: &[T]) -> Result<RecordBatch> {
    rows_to_batch(key, schema, rows).map_err(|e| IndexError::Format(e.to_string()))
}

/// Rows back from batches read with their schema.
pub fn from_batches<T: serde::de::DeserializeOwned>(
    key: &str,
    batches: &[RecordBatch],
) -> Result<Vec<T>> {
    rows_from_batches(key, batches).map_err(|e| IndexError::Format(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embeddings_round_trip_through_parquet() {
        let ids = vec!["PMC1".to_string(), "pmid:2".to_string()];
        let vectors = vec![vec![0.5, -1.0, 2.0], vec![0.0, 1.0, 0.25]];
        let batch = embeddings_to_batch(&ids, &vectors, 3).expect("batch");
        let bytes =
            medembed_pipeline::table::encode("e", &embedding_schema(3), &[batch]).expect("encode");
        let batches = medembed_pipeline::table::decode("e", bytes.clone(), &embedding_schema(3))
            .expect("decode");
        assert_eq!(
            embeddings_from_batches(&batches),
            (ids.clone(), vectors.concat())
        );
        // Read as another dimension, the file is refused with the field named.
        let wrong = medembed_pipeline::table::decode("e", bytes, &embedding_schema(4));
        assert!(wrong.unwrap_err().to_string().contains("vector"));
        assert!(embeddings_to_batch(&ids, &vectors, 4).is_err());
    }

    #[test]
    fn snippets_cut_at_a_word_and_urls_prefer_full_text() {
        assert_eq!(snippet("short", 10), "short");
        assert_eq!(snippet("alpha beta gamma delta", 13), "alpha beta…");
        let mut d = IndexedDocument {
            id: "PMC123".into(),
            pmid: Some("99".into()),
            pmcid: Some("PMC123".into()),
            doi: None,
            title: "t".into(),
            snippet: String::new(),
            journal: None,
            pub_date: None,
        };
        assert_eq!(
            d.url().as_deref(),
            Some("https://pmc.ncbi.nlm.nih.gov/articles/PMC123/")
        );
        d.pmcid = None;
        assert_eq!(
            d.url().as_deref(),
            Some("https://pubmed.ncbi.nlm.nih.gov/99/")
        );
        d.pmid = None;
        d.doi = Some("10.1/x".into());
        assert_eq!(d.url().as_deref(), Some("https://doi.org/10.1/x"));
    }
}
