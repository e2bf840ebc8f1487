//! Rows ⇄ Arrow record batches through serde, against a declared schema: the one way every
//! corpus table (raw, clean, pairs) is converted.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Fields, Schema};
use arrow::record_batch::RecordBatch;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// A table's rows do not fit its schema (a bug or a file from another version).
#[derive(Debug, thiserror::Error)]
#[error("{key}: {message}")]
pub struct RowsError {
    pub key: String,
    pub message: String,
}

/// `List<item>` with non-null elements, as every list column of the corpus is declared.
pub fn list_of(item: DataType) -> DataType {
    DataType::List(Arc::new(Field::new("element", item, false)))
}

/// A non-null UTF-8 column.
pub fn text(name: &str) -> Field {
    Field::new(name, DataType::Utf8, false)
}

/// A nullable UTF-8 column.
pub fn optional_text(name: &str) -> Field {
    Field::new(name, DataType::Utf8, true)
}

/// A non-null list column.
pub fn list(name: &str, item: DataType) -> Field {
    Field::new(name, list_of(item), false)
}

/// A [`crate::Section`]: `{title, text}`.
pub fn section_type() -> DataType {
    DataType::Struct(Fields::from(vec![text("title"), text("text")]))
}

/// A [`crate::MeshHeading`]: `{descriptor, ui?, major, qualifiers}`.
pub fn mesh_type() -> DataType {
    DataType::Struct(Fields::from(vec![
        text("descriptor"),
        optional_text("ui"),
        Field::new("major", DataType::Boolean, false),
        list("qualifiers", DataType::Utf8),
    ]))
}

/// A [`crate::Reference`]: `{pmid?, pmcid?, doi?}`.
pub fn reference_type() -> DataType {
    DataType::Struct(Fields::from(vec![
        optional_text("pmid"),
        optional_text("pmcid"),
        optional_text("doi"),
    ]))
}

/// Rows as one record batch of `schema`; `key` names the table in errors.
pub fn rows_to_batch<T: Serialize>(
    key: &str,
    schema: &Schema,
    rows: &[T],
) -> Result<RecordBatch, RowsError> {
    serde_arrow::to_record_batch(schema.fields(), &rows).map_err(|e| RowsError {
        key: key.to_string(),
        message: e.to_string(),
    })
}

/// Rows back from record batches (already checked against the schema when read).
pub fn rows_from_batches<T: DeserializeOwned>(
    key: &str,
    batches: &[RecordBatch],
) -> Result<Vec<T>, RowsError> {
    let mut out = Vec::new();
    for batch in batches {
        let rows: Vec<T> = serde_arrow::from_record_batch(batch).map_err(|e| RowsError {
            key: key.to_string(),
            message: e.to_string(),
        })?;
        out.extend(rows);
    }
    Ok(out)
}
