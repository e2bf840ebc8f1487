//! Writing the pair-builder's outputs: pairs as Arrow columns built straight from the corpus
//! (a document's text is referenced, not copied per pair, until it lands in a batch), encoded
//! batch by batch so a million-document job never holds all pair texts as Arrow at once.

use std::sync::Arc;

use arrow::array::{ArrayRef, Float32Builder, RecordBatch, StringBuilder};
use medembed_corpus::pairs::pair_schema;

use crate::build::{PairRow, Source};
use crate::corpus::Corpus;

/// The two texts of a pair: a title pair's title and its document's text without it, otherwise
/// both documents' texts.
pub fn pair_texts<'a>(corpus: &'a Corpus, row: &PairRow) -> (&'a str, &'a str) {
    let (a, b) = (&corpus.docs[row.a as usize], &corpus.docs[row.b as usize]);
    if row.source == Source::Title.name() {
        (a.title.trim(), b.body())
    } else {
        (&a.text, &b.text)
    }
}

/// Rows per Arrow batch of a pairs file.
pub const BATCH_ROWS: usize = 16 * 1024;

/// The pairs of `rows` as record batches of [`pair_schema`], `BATCH_ROWS` at a time.
pub fn pair_batches<'a>(
    corpus: &'a Corpus,
    rows: &'a [PairRow],
) -> impl Iterator<Item = RecordBatch> + 'a {
    let schema = pair_schema();
    rows.chunks(BATCH_ROWS).map(move |chunk| {
        let text_bytes: usize = chunk
            .iter()
            .map(|r| {
                let (a, b) = pair_texts(corpus, r);
                a.len() + b.len()
            })
            .sum();
        let mut id_a = StringBuilder::with_capacity(chunk.len(), chunk.len() * 12);
        let mut id_b = StringBuilder::with_capacity(chunk.len(), chunk.len() * 12);
        let mut text_a = StringBuilder::with_capacity(chunk.len(), text_bytes / 2 + 1);
        let mut text_b = StringBuilder::with_capacity(chunk.len(), text_bytes / 2 + 1);
        let mut label = Float32Builder::with_capacity(chunk.len());
        let mut source = StringBuilder::with_capacity(chunk.len(), chunk.len() * 8);
        let mut score = Float32Builder::with_capacity(chunk.len());
        for r in chunk {
            let (a, b) = (&corpus.docs[r.a as usize], &corpus.docs[r.b as usize]);
            let (a_text, b_text) = pair_texts(corpus, r);
            id_a.append_value(&a.id);
            id_b.append_value(&b.id);
            text_a.append_value(a_text);
            text_b.append_value(b_text);
            label.append_value(r.label);
            source.append_value(r.source);
            score.append_value(r.score);
        }
        let columns: Vec<ArrayRef> = vec![
            Arc::new(id_a.finish()),
            Arc::new(id_b.finish()),
            Arc::new(text_a.finish()),
            Arc::new(text_b.finish()),
            Arc::new(label.finish()),
            Arc::new(source.finish()),
            Arc::new(score.finish()),
        ];
        RecordBatch::try_new(schema.clone(), columns).expect("the columns follow pair_schema")
    })
}

/// The original project's CSV format: `text1,text2,label`, fields quoted as RFC 4180 wants.
pub fn pairs_csv(corpus: &Corpus, rows: &[PairRow]) -> Vec<u8> {
    fn field(out: &mut Vec<u8>, text: &str) {
        out.push(b'"');
        for b in text.bytes() {
            if b == b'"' {
                out.push(b'"');
            }
            out.push(b);
        }
        out.push(b'"');
    }
    let mut out = b"text1,text2,label\n".to_vec();
    for r in rows {
        let (a, b) = pair_texts(corpus, r);
        field(&mut out, a);
        out.push(b',');
        field(&mut out, b);
        out.extend_from_slice(if r.label > 0.5 { b",1\n" } else { b",0\n" });
    }
    out
}
