//! Parquet tables over the object store (arrow + parquet, zstd).
//!
//! Every stage reads its input with the schema it expects; a file written by another version that
//! lacks a field or has it with another type fails with an error naming the file and the field,
//! instead of a panic deep inside a stage. Extra fields in the file are ignored, so a newer writer
//! can add columns without breaking older readers.

use std::sync::Arc;

use arrow::datatypes::{DataType, Schema};
use arrow::record_batch::RecordBatch;
use bytes::Bytes;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::{ArrowWriter, ProjectionMask};
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

use crate::store::{ObjectStore, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("parquet file {key:?}: missing field {field:?}")]
    MissingField { key: String, field: String },
    #[error("parquet file {key:?}: field {field:?} is {found}, expected {expected}")]
    FieldType {
        key: String,
        field: String,
        expected: String,
        found: String,
    },
    #[error("parquet file {key:?}: field {field:?} has nulls but must not")]
    Nullable { key: String, field: String },
    #[error("parquet file {key:?}: {message}")]
    Format { key: String, message: String },
    #[error("parquet file {key:?}: batch schema does not match the table schema: {message}")]
    Write { key: String, message: String },
}

impl TableError {
    /// Only store hiccups are worth retrying; a file of the wrong shape stays wrong.
    pub fn is_retryable(&self) -> bool {
        matches!(self, TableError::Store(e) if e.is_retryable())
    }
}

pub type Result<T, E = TableError> = std::result::Result<T, E>;

/// Rows per row group: small enough to stream, large enough to compress well.
const ROW_GROUP_ROWS: usize = 64 * 1024;

/// Encodes batches as one zstd-compressed Parquet file.
pub fn encode(key: &str, schema: &Arc<Schema>, batches: &[RecordBatch]) -> Result<Bytes> {
    let mut encoder = Encoder::new(key, schema)?;
    for batch in batches {
        encoder.write(batch)?;
    }
    encoder.finish()
}

/// A Parquet file encoded batch by batch, for tables too large to hold as Arrow all at once:
/// each batch can be dropped once written (only the compressed bytes accumulate).
pub struct Encoder {
    key: String,
    writer: ArrowWriter<Vec<u8>>,
}

impl std::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encoder")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl Encoder {
    pub fn new(key: &str, schema: &Arc<Schema>) -> Result<Self> {
        Self::with_dictionary(key, schema, true)
    }

    /// Dictionary encoding off: for tables of long, mostly distinct texts (training pairs), where
    /// building a dictionary costs time and soon falls back to plain encoding anyway.
    pub fn new_plain(key: &str, schema: &Arc<Schema>) -> Result<Self> {
        Self::with_dictionary(key, schema, false)
    }

    fn with_dictionary(key: &str, schema: &Arc<Schema>, dictionary: bool) -> Result<Self> {
        let props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(
                ZstdLevel::try_new(3).expect("3 is a valid zstd level"),
            ))
            .set_dictionary_enabled(dictionary)
            .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
            .build();
        let writer = ArrowWriter::try_new(Vec::new(), schema.clone(), Some(props))
            .map_err(|e| write_error(key, e))?;
        Ok(Self {
            key: key.to_string(),
            writer,
        })
    }

    pub fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        self.writer
            .write(batch)
            .map_err(|e| write_error(&self.key, e))
    }

    pub fn finish(self) -> Result<Bytes> {
        let buf = self
            .writer
            .into_inner()
            .map_err(|e| write_error(&self.key, e))?;
        Ok(Bytes::from(buf))
    }
}

fn write_error(key: &str, e: parquet::errors::ParquetError) -> TableError {
    TableError::Write {
        key: key.to_string(),
        message: e.to_string(),
    }
}

/// Writes `batches` as one Parquet object at `key`; returns the bytes written.
pub async fn write(
    store: &dyn ObjectStore,
    key: &str,
    schema: &Arc<Schema>,
    batches: &[RecordBatch],
) -> Result<u64> {
    let data = encode(key, schema, batches)?;
    let len = data.len() as u64;
    store.put(key, data).await?;
    Ok(len)
}

/// Decodes a Parquet file, checks it against `expected` and returns its batches with exactly the
/// expected fields, in the expected order.
pub fn decode(key: &str, data: Bytes, expected: &Schema) -> Result<Vec<RecordBatch>> {
    let format = |e: &dyn std::fmt::Display| TableError::Format {
        key: key.to_string(),
        message: e.to_string(),
    };
    let builder = ParquetRecordBatchReaderBuilder::try_new(data).map_err(|e| format(&e))?;
    let found = builder.schema().clone();
    let mut indices = Vec::with_capacity(expected.fields().len());
    for field in expected.fields() {
        let Ok(index) = found.index_of(field.name()) else {
            return Err(TableError::MissingField {
                key: key.to_string(),
                field: field.name().clone(),
            });
        };
        let actual = found.field(index);
        if !same_type(actual.data_type(), field.data_type()) {
            return Err(TableError::FieldType {
                key: key.to_string(),
                field: field.name().clone(),
                expected: field.data_type().to_string(),
                found: actual.data_type().to_string(),
            });
        }
        indices.push(index);
    }
    // Decode only the expected columns: a reader that needs a few fields of a wide table (the
    // pair-builder reads no body text) does not pay for the rest.
    let mask = ProjectionMask::roots(builder.parquet_schema(), indices.iter().copied());
    let mut roots = indices.clone();
    roots.sort_unstable();
    let order: Vec<usize> = indices
        .iter()
        .map(|i| roots.binary_search(i).expect("every index is a root"))
        .collect();
    let reader = builder
        .with_projection(mask)
        .with_batch_size(8192)
        .build()
        .map_err(|e| format(&e))?;
    let target = Arc::new(expected.clone());
    let mut out = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| format(&e))?;
        let projected = batch.project(&order).map_err(|e| format(&e))?;
        for (field, column) in expected.fields().iter().zip(projected.columns()) {
            if !field.is_nullable() && column.null_count() > 0 {
                return Err(TableError::Nullable {
                    key: key.to_string(),
                    field: field.name().clone(),
                });
            }
        }
        // Re-label with the expected schema (nullability and metadata as the reader declares).
        let batch = RecordBatch::try_new(target.clone(), projected.columns().to_vec())
            .map_err(|e| format(&e))?;
        out.push(batch);
    }
    Ok(out)
}

/// Reads the Parquet object at `key` (see [`decode`]).
pub async fn read(
    store: &dyn ObjectStore,
    key: &str,
    expected: &Schema,
) -> Result<Vec<RecordBatch>> {
    let data = store.get(key).await?;
    decode(key, data, expected)
}

/// Types equal up to the nullability and names of nested fields, which writers choose freely.
fn same_type(a: &DataType, b: &DataType) -> bool {
    match (a, b) {
        (DataType::List(x), DataType::List(y))
        | (DataType::LargeList(x), DataType::LargeList(y)) => {
            same_type(x.data_type(), y.data_type())
        }
        (DataType::FixedSizeList(x, n), DataType::FixedSizeList(y, m)) => {
            n == m && same_type(x.data_type(), y.data_type())
        }
        (DataType::Struct(xs), DataType::Struct(ys)) => {
            xs.len() == ys.len()
                && xs
                    .iter()
                    .zip(ys.iter())
                    .all(|(x, y)| x.name() == y.name() && same_type(x.data_type(), y.data_type()))
        }
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{ArrayRef, Int64Array, ListBuilder, StringArray, StringBuilder};
    use arrow::datatypes::Field;

    fn sample() -> (Arc<Schema>, RecordBatch) {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Utf8, false),
            Field::new("year", DataType::Int64, true),
            Field::new(
                "mesh",
                DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))),
                false,
            ),
        ]));
        let mut mesh = ListBuilder::new(StringBuilder::new());
        mesh.values().append_value("Neoplasms");
        mesh.append(true);
        mesh.append(true);
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(vec!["PMC1", "PMC2"])),
            Arc::new(Int64Array::from(vec![Some(2020), None])),
            Arc::new(mesh.finish()),
        ];
        let batch = RecordBatch::try_new(schema.clone(), columns).expect("batch");
        (schema, batch)
    }

    #[test]
    fn round_trip_and_projection() {
        let (schema, batch) = sample();
        let data = encode("t.parquet", &schema, std::slice::from_ref(&batch)).expect("encode");
        let back = decode("t.parquet", data.clone(), &schema).expect("decode");
        assert_eq!(back, vec![batch.clone()]);
        // A reader that wants fewer fields, in another order, gets just those.
        let narrow = Schema::new(vec![
            Field::new("year", DataType::Int64, true),
            Field::new("id", DataType::Utf8, false),
        ]);
        let back = decode("t.parquet", data, &narrow).expect("decode narrow");
        assert_eq!(back[0].num_columns(), 2);
        assert_eq!(back[0].schema().field(0).name(), "year");
    }

    #[test]
    fn schema_mismatch_names_the_file_and_field() {
        let (schema, batch) = sample();
        let data = encode("jobs/x/raw/part-00001.parquet", &schema, &[batch]).expect("encode");
        let missing = Schema::new(vec![Field::new("abstract", DataType::Utf8, false)]);
        let err =
            decode("jobs/x/raw/part-00001.parquet", data.clone(), &missing).expect_err("missing");
        let msg = err.to_string();
        assert!(
            msg.contains("jobs/x/raw/part-00001.parquet") && msg.contains("abstract"),
            "{msg}"
        );
        let wrong = Schema::new(vec![Field::new("year", DataType::Utf8, true)]);
        let err = decode("f.parquet", data.clone(), &wrong).expect_err("type");
        assert!(
            matches!(&err, TableError::FieldType { field, .. } if field == "year"),
            "{err}"
        );
        let not_null = Schema::new(vec![Field::new("year", DataType::Int64, false)]);
        let err = decode("f.parquet", data, &not_null).expect_err("nulls");
        assert!(
            matches!(&err, TableError::Nullable { field, .. } if field == "year"),
            "{err}"
        );
    }

    #[test]
    fn garbage_is_a_format_error_not_a_panic() {
        let (schema, _) = sample();
        let err = decode(
            "junk.parquet",
            Bytes::from_static(b"PAR1 this is not parquet"),
            &schema,
        )
        .expect_err("junk");
        assert!(matches!(err, TableError::Format { .. }), "{err}");
        assert!(!err.is_retryable());
    }
}
