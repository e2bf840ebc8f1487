//! Training pairs from either source the trainer takes: the pair-builder's Parquet
//! (`pairs/{train,val,test}.parquet`, [`medembed_corpus::pairs::Pair`]) or the original project's
//! CSV (`text1,text2,label`, a header row, RFC 4180 quoting), for `medembed train --train FILE`.
//! Bad input names the file and the row.

use std::path::Path;

use std::collections::HashMap;

use medembed_corpus::pairs::{
    EvalDocument, EvalQuery, eval_document_schema, eval_query_schema, pair_schema,
    pairs_from_batches,
};
use medembed_corpus::rows::rows_from_batches;

/// One labelled pair of texts.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelledPair {
    pub text_a: String,
    pub text_b: String,
    /// 1 = related, 0 = unrelated.
    pub label: f32,
    /// How the pair was made (`title`, `citation`, `mesh`, `keyword`, `random`, `hard`; `csv`
    /// for the seed format, which does not say).
    pub source: String,
    /// The documents of the two texts (the pair-builder's ids; empty for CSV): mining keeps a
    /// query's related documents out of its negatives.
    pub id_a: String,
    pub id_b: String,
}

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("{path}: row {row}: {message}")]
    Row {
        path: String,
        row: usize,
        message: String,
    },
}

/// The fold (`0..folds`) of each pair, for held-out evaluation without an abstract on both
/// sides: texts linked by positive pairs form connected components, and a hash of the component
/// picks its fold, so every positive pair of a component lands in the same fold. A negative pair
/// goes with its texts when both sides are in one fold, and is `None` (left out of every fold)
/// when they are not.
///
/// Only positives link texts because random negatives would chain most abstracts into one giant
/// component (in the seed's 1,000 pairs: 674 pairs in one component), and the folds would be
/// one huge and four tiny ones.
pub fn component_folds(pairs: &[LabelledPair], folds: u64) -> Vec<Option<u64>> {
    fn find(parent: &mut [usize], mut i: usize) -> usize {
        while parent[i] != i {
            parent[i] = parent[parent[i]];
            i = parent[i];
        }
        i
    }
    let mut id: HashMap<&str, usize> = HashMap::new();
    for p in pairs {
        for t in [&p.text_a, &p.text_b] {
            let n = id.len();
            id.entry(t.as_str()).or_insert(n);
        }
    }
    let mut parent: Vec<usize> = (0..id.len()).collect();
    for p in pairs.iter().filter(|p| p.label >= 0.5) {
        let (a, b) = (
            find(&mut parent, id[p.text_a.as_str()]),
            find(&mut parent, id[p.text_b.as_str()]),
        );
        parent[a] = b;
    }
    let mut fold_of = |text: &str| {
        let root = find(&mut parent, id[text]);
        xxhash_rust::xxh3::xxh3_64(&root.to_le_bytes()) % folds
    };
    pairs
        .iter()
        .map(|p| {
            let (a, b) = (fold_of(&p.text_a), fold_of(&p.text_b));
            (a == b).then_some(a)
        })
        .collect()
}

/// Reads pairs from a `.parquet` file (pair-builder output) or a CSV file (`text1,text2,label`).
pub fn read_pairs(path: &Path) -> Result<Vec<LabelledPair>, DataError> {
    let name = path.display().to_string();
    let file_error = |message: String| DataError::File {
        path: name.clone(),
        message,
    };
    let bytes = std::fs::read(path).map_err(|e| file_error(e.to_string()))?;
    if path.extension().is_some_and(|e| e == "parquet") {
        let batches = medembed_pipeline::table::decode(&name, bytes.into(), &pair_schema())
            .map_err(|e| file_error(e.to_string()))?;
        let pairs = pairs_from_batches(&name, &batches).map_err(|e| file_error(e.to_string()))?;
        return Ok(pairs
            .into_iter()
            .map(|p| LabelledPair {
                text_a: p.text_a,
                text_b: p.text_b,
                label: p.label,
                source: p.source,
                id_a: p.id_a,
                id_b: p.id_b,
            })
            .collect());
    }
    let mut reader = csv::Reader::from_reader(bytes.as_slice());
    let headers = reader
        .headers()
        .map_err(|e| file_error(e.to_string()))?
        .clone();
    let column = |name: &str| {
        headers
            .iter()
            .position(|h| h.trim() == name)
            .ok_or_else(|| file_error(format!("no {name:?} column (expected text1,text2,label)")))
    };
    let (a, b, l) = (column("text1")?, column("text2")?, column("label")?);
    let mut out = Vec::new();
    for (i, record) in reader.records().enumerate() {
        let row = i + 2; // 1-based, after the header
        let record = record.map_err(|e| DataError::Row {
            path: name.clone(),
            row,
            message: e.to_string(),
        })?;
        let field = |k: usize| record.get(k).unwrap_or("");
        let label: f32 = field(l).trim().parse().map_err(|_| DataError::Row {
            path: name.clone(),
            row,
            message: format!("label {:?} is not a number", field(l)),
        })?;
        if !(0.0..=1.0).contains(&label) {
            return Err(DataError::Row {
                path: name.clone(),
                row,
                message: format!("label {label} is outside 0..1"),
            });
        }
        if field(a).trim().is_empty() || field(b).trim().is_empty() {
            return Err(DataError::Row {
                path: name.clone(),
                row,
                message: "an empty text".into(),
            });
        }
        out.push(LabelledPair {
            text_a: field(a).to_string(),
            text_b: field(b).to_string(),
            label,
            source: "csv".into(),
            id_a: String::new(),
            id_b: String::new(),
        });
    }
    Ok(out)
}

/// Distinct texts, numbered in order of first appearance.
#[derive(Debug, Default)]
pub(crate) struct TextTable<'a> {
    index: HashMap<&'a str, usize>,
    pub texts: Vec<&'a str>,
}

impl<'a> TextTable<'a> {
    /// The number of `text`, new or known.
    pub fn id(&mut self, text: &'a str) -> usize {
        *self.index.entry(text).or_insert_with(|| {
            self.texts.push(text);
            self.texts.len() - 1
        })
    }
}

/// A retrieval evaluation set: queries, each with the ids of its relevant documents, and the
/// corpus they are ranked in (a query's own document, `query_id`, is left out of its ranking).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RetrievalSet {
    pub queries: Vec<EvalQuery>,
    pub corpus: Vec<EvalDocument>,
}

impl RetrievalSet {
    /// The pair-builder's `eval_{split}.parquet` and `eval_{split}_corpus.parquet`.
    pub fn read(queries: &Path, corpus: &Path) -> Result<Self, DataError> {
        fn rows<T: serde::de::DeserializeOwned>(
            path: &Path,
            schema: &arrow::datatypes::Schema,
        ) -> Result<Vec<T>, DataError> {
            let name = path.display().to_string();
            let error = |message: String| DataError::File {
                path: name.clone(),
                message,
            };
            let bytes = std::fs::read(path).map_err(|e| error(e.to_string()))?;
            let batches = medembed_pipeline::table::decode(&name, bytes.into(), schema)
                .map_err(|e| error(e.to_string()))?;
            rows_from_batches(&name, &batches).map_err(|e| error(e.to_string()))
        }
        Ok(Self {
            queries: rows(queries, &eval_query_schema())?,
            corpus: rows(corpus, &eval_document_schema())?,
        })
    }

    /// A set made from labelled pairs (the seed CSV has no eval files): every text of the pairs
    /// is a document, and each anchor of a positive pair is a query whose relevant documents are
    /// its positive partners.
    pub fn from_pairs(pairs: &[LabelledPair]) -> Self {
        let mut table = TextTable::default();
        let mut id_of = |text| format!("doc-{}", table.id(text));
        let mut relevant: Vec<(String, String, Vec<String>)> = Vec::new();
        let mut query_index: HashMap<String, usize> = HashMap::new();
        for pair in pairs {
            let (a, b) = (id_of(&pair.text_a), id_of(&pair.text_b));
            if pair.label < 0.5 || a == b {
                continue;
            }
            let i = *query_index.entry(a.clone()).or_insert_with(|| {
                relevant.push((a.clone(), pair.text_a.clone(), Vec::new()));
                relevant.len() - 1
            });
            if !relevant[i].2.contains(&b) {
                relevant[i].2.push(b);
            }
        }
        let corpus = table
            .texts
            .iter()
            .enumerate()
            .map(|(i, text)| EvalDocument {
                id: format!("doc-{i}"),
                text: text.to_string(),
            })
            .collect();
        Self {
            queries: relevant
                .into_iter()
                .map(|(query_id, query, relevant_ids)| EvalQuery {
                    query_id,
                    query,
                    relevant_ids,
                    gains: Vec::new(),
                })
                .collect(),
            corpus,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(a: &str, b: &str, label: f32) -> LabelledPair {
        LabelledPair {
            text_a: a.into(),
            text_b: b.into(),
            label,
            source: "csv".into(),
            id_a: String::new(),
            id_b: String::new(),
        }
    }

    #[test]
    fn the_seed_csv_reads_and_bad_rows_are_named() {
        let path = Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/seed_positives_16.csv"
        ));
        let pairs = read_pairs(path).expect("seed csv");
        assert_eq!(pairs.len(), 16);
        assert!(pairs.iter().all(|p| p.label == 1.0 && p.text_a.len() > 100));
        // Quoted commas and quotes inside abstracts survive.
        assert!(pairs.iter().any(|p| p.text_a.contains(',')));

        let dir = tempfile::tempdir().expect("tempdir");
        for (body, wanted) in [
            (
                "text1,text2,label\n\"a\",\"b\",maybe\n",
                "row 2: label \"maybe\"",
            ),
            (
                "text1,text2,label\na,b,1\nc,d,7\n",
                "row 3: label 7 is outside",
            ),
            ("text1,text2,label\na,,1\n", "row 2: an empty text"),
            ("sentence,other,score\na,b,1\n", "no \"text1\" column"),
        ] {
            let file = dir.path().join("bad.csv");
            std::fs::write(&file, body).expect("write");
            let err = read_pairs(&file).expect_err(body).to_string();
            assert!(err.contains("bad.csv") && err.contains(wanted), "{err}");
        }
        let missing = read_pairs(&dir.path().join("nope.csv")).expect_err("missing");
        assert!(missing.to_string().contains("nope.csv"));
    }

    #[test]
    fn folds_keep_positive_components_together_and_drop_straddling_negatives() {
        // Components by positives: {a, b, c}, {d, e}, and many singletons joined by negatives.
        let mut pairs = vec![
            pair("a", "b", 1.0),
            pair("b", "c", 1.0),
            pair("d", "e", 1.0),
            pair("a", "c", 0.0),
        ];
        for i in 0..200 {
            pairs.push(pair(&format!("n{i}"), &format!("m{i}"), 1.0));
            pairs.push(pair(&format!("n{i}"), &format!("m{}", i + 1), 0.0));
        }
        let folds = component_folds(&pairs, 5);
        assert_eq!(folds.len(), pairs.len());
        assert!(
            folds[0].is_some() && folds[0] == folds[1],
            "a-b and b-c together"
        );
        assert_eq!(
            folds[3], folds[0],
            "a negative inside one component stays with it"
        );
        // Every text is in one fold only.
        let mut fold_of_text: HashMap<&str, u64> = HashMap::new();
        for (p, f) in pairs.iter().zip(&folds) {
            let Some(f) = f else { continue };
            for t in [p.text_a.as_str(), p.text_b.as_str()] {
                assert_eq!(*fold_of_text.entry(t).or_insert(*f), *f, "{t} in two folds");
            }
        }
        // Negatives between components in different folds are left out, and the chain of
        // negatives does not pull the 200 positive pairs into one fold.
        let dropped = folds.iter().filter(|f| f.is_none()).count();
        assert!(dropped > 100, "{dropped} straddling negatives dropped");
        let mut sizes = [0usize; 5];
        for f in folds.iter().flatten() {
            sizes[*f as usize] += 1;
        }
        assert!(sizes.iter().all(|n| *n > 40), "balanced folds: {sizes:?}");
        assert_eq!(component_folds(&pairs, 5), folds, "same pairs, same folds");
    }

    #[test]
    fn a_retrieval_set_from_pairs_has_each_anchor_as_a_query() {
        let set = RetrievalSet::from_pairs(&[
            pair("x", "y", 1.0),
            pair("x", "z", 1.0),
            pair("x", "w", 0.0),
            pair("y", "z", 1.0),
        ]);
        assert_eq!(set.corpus.len(), 4, "x y z w, each once");
        assert_eq!(set.queries.len(), 2);
        let id = |t: &str| set.corpus.iter().find(|d| d.text == t).expect(t).id.clone();
        assert_eq!(set.queries[0].query_id, id("x"));
        assert_eq!(set.queries[0].relevant_ids, vec![id("y"), id("z")]);
        assert_eq!(set.queries[1].relevant_ids, vec![id("z")]);
    }

    #[test]
    fn pair_builder_parquet_reads() {
        use medembed_corpus::pairs::{Pair, pairs_to_batch};
        let rows = vec![Pair {
            id_a: "pmid:1".into(),
            id_b: "pmid:2".into(),
            text_a: "A".into(),
            text_b: "B".into(),
            label: 1.0,
            source: "mesh".into(),
            score: 0.4,
        }];
        let batch = pairs_to_batch("k", &rows).expect("batch");
        let bytes =
            medembed_pipeline::table::encode("k", &pair_schema(), &[batch]).expect("encode");
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("train.parquet");
        std::fs::write(&file, &bytes).expect("write");
        assert_eq!(
            read_pairs(&file).expect("parquet"),
            vec![LabelledPair {
                text_a: "A".into(),
                text_b: "B".into(),
                label: 1.0,
                source: "mesh".into(),
                id_a: "pmid:1".into(),
                id_b: "pmid:2".into(),
            }]
        );
        std::fs::write(&file, b"garbage").expect("write");
        assert!(
            read_pairs(&file)
                .expect_err("garbage")
                .to_string()
                .contains("train.parquet")
        );
    }
}
