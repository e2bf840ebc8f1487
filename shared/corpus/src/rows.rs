//! Rows ⇄ Arrow record batches through serde, against a declared schema: the one way every
//! corpus table (raw, clean, pairs) is converted.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema};
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
