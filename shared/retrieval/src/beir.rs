//! Test collections in the BEIR folder format, the one the field publishes its benchmarks in:
//!
//! ```text
//! DIR/corpus.jsonl      {"_id": "d1", "title": "…", "text": "…"}      one document a line
//! DIR/queries.jsonl     {"_id": "q1", "text": "…"}                    one query a line
//! DIR/qrels/test.tsv    query-id <TAB> corpus-id <TAB> score          a header line, then judgements
//! ```
//!
//! Scores are graded gains (0 = judged not relevant). Only queries with judgements in the split
//! are evaluated, as BEIR does. Every error names the file, and the line where there is one.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use serde_json::Value;

/// What is wrong with a collection folder.
#[derive(Debug, thiserror::Error)]
pub enum BeirError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A line that is not what the format says.
    #[error("{}:{line}: {message}", path.display())]
    Line {
        path: PathBuf,
        line: usize,
        message: String,
    },
    /// A file with nothing to evaluate.
    #[error("{}: {message}", path.display())]
    Empty { path: PathBuf, message: String },
}

pub type Result<T, E = BeirError> = std::result::Result<T, E>;

#[derive(Debug, Clone, PartialEq)]
pub struct BeirDocument {
    pub id: String,
    pub title: String,
    pub text: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct BeirQuery {
    pub id: String,
    pub text: String,
}

/// A collection read for one split: the whole corpus, the split's judged queries (in file order)
/// and their judgements.
#[derive(Debug, Clone)]
pub struct BeirSet {
    pub corpus: Vec<BeirDocument>,
    pub queries: Vec<BeirQuery>,
    /// Query id → judged document id → gain.
    pub qrels: HashMap<String, HashMap<String, f64>>,
}

impl BeirSet {
    /// Reads `dir` with the judgements of `qrels/{split}.tsv`.
    pub fn read(dir: &Path, split: &str) -> Result<Self> {
        let corpus_path = dir.join("corpus.jsonl");
        let queries_path = dir.join("queries.jsonl");
        let qrels_path = dir.join("qrels").join(format!("{split}.tsv"));
        let corpus = read_jsonl(&corpus_path, |line, object| {
            Ok(BeirDocument {
                id: id_field(&corpus_path, line, object)?,
                title: text_field(&corpus_path, line, object, "title", false)?,
                text: text_field(&corpus_path, line, object, "text", true)?,
            })
        })?;
        if corpus.is_empty() {
            return Err(BeirError::Empty {
                path: corpus_path,
                message: "no documents".into(),
            });
        }
        let all_queries = read_jsonl(&queries_path, |line, object| {
            Ok(BeirQuery {
                id: id_field(&queries_path, line, object)?,
                text: text_field(&queries_path, line, object, "text", true)?,
            })
        })?;
        let document_ids: HashSet<&str> = corpus.iter().map(|d| d.id.as_str()).collect();
        let query_ids: HashSet<&str> = all_queries.iter().map(|q| q.id.as_str()).collect();
        let qrels = read_qrels(&qrels_path, &query_ids, &document_ids)?;
        let queries: Vec<BeirQuery> = all_queries
            .into_iter()
            .filter(|q| qrels.contains_key(&q.id))
            .collect();
        if queries.is_empty() {
            return Err(BeirError::Empty {
                path: qrels_path,
                message: "no judgements of any query".into(),
            });
        }
        Ok(Self {
            corpus,
            queries,
            qrels,
        })
    }

    /// Writes the collection to `dir` in the format [`BeirSet::read`] reads, the judgements as
    /// `qrels/{split}.tsv`: documents and queries in their order, judgements sorted by query and
    /// document id, so the same set always makes the same bytes.
    pub fn write(&self, dir: &Path, split: &str) -> Result<()> {
        use std::io::Write;
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| BeirError::Io { path, source }
        };
        let qrels_dir = dir.join("qrels");
        std::fs::create_dir_all(&qrels_dir).map_err(io(&qrels_dir))?;
        let write = |path: PathBuf, lines: &mut dyn Iterator<Item = String>| -> Result<()> {
            let file = std::fs::File::create(&path).map_err(io(&path))?;
            let mut out = std::io::BufWriter::new(file);
            for line in lines {
                writeln!(out, "{line}").map_err(io(&path))?;
            }
            out.flush().map_err(io(&path))
        };
        write(
            dir.join("corpus.jsonl"),
            &mut self.corpus.iter().map(|d| {
                serde_json::json!({"_id": d.id, "title": d.title, "text": d.text}).to_string()
            }),
        )?;
        write(
            dir.join("queries.jsonl"),
            &mut self
                .queries
                .iter()
                .map(|q| serde_json::json!({"_id": q.id, "text": q.text}).to_string()),
        )?;
        let sorted: BTreeMap<&String, BTreeMap<&String, f64>> = self
            .qrels
            .iter()
            .map(|(q, judged)| (q, judged.iter().map(|(d, g)| (d, *g)).collect()))
            .collect();
        let header = std::iter::once("query-id\tcorpus-id\tscore".to_string());
        let judgements = sorted.into_iter().flat_map(|(q, judged)| {
            judged
                .into_iter()
                .map(move |(d, g)| format!("{q}\t{d}\t{g}"))
        });
        write(
            qrels_dir.join(format!("{split}.tsv")),
            &mut header.chain(judgements),
        )
    }

    /// The judgements of `query` as the measures take them.
    pub fn gains(&self, query: &str) -> HashMap<&str, f64> {
        self.qrels
            .get(query)
            .map(|judged| judged.iter().map(|(d, g)| (d.as_str(), *g)).collect())
            .unwrap_or_default()
    }
}

fn open(path: &Path) -> Result<BufReader<std::fs::File>> {
    std::fs::File::open(path)
        .map(BufReader::new)
        .map_err(|source| BeirError::Io {
            path: path.to_path_buf(),
            source,
        })
}

/// The non-blank lines of `path` with their numbers (from 1).
fn non_blank_lines(path: &Path) -> Result<impl Iterator<Item = Result<(usize, String)>> + '_> {
    Ok(open(path)?
        .lines()
        .enumerate()
        .filter_map(move |(i, text)| match text {
            Ok(text) if text.trim().is_empty() => None,
            Ok(text) => Some(Ok((i + 1, text))),
            Err(source) => Some(Err(BeirError::Io {
                path: path.to_path_buf(),
                source,
            })),
        }))
}

fn line_error(path: &Path, line: usize, message: impl Into<String>) -> BeirError {
    BeirError::Line {
        path: path.to_path_buf(),
        line,
        message: message.into(),
    }
}

/// Every non-blank line of a JSON-lines file, parsed as an object and mapped by `row`; ids must
/// be unique.
fn read_jsonl<T>(
    path: &Path,
    row: impl Fn(usize, &serde_json::Map<String, Value>) -> Result<T>,
) -> Result<Vec<T>>
where
    T: HasId,
{
    let mut rows = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for numbered in non_blank_lines(path)? {
        let (line, text) = numbered?;
        let value: Value = serde_json::from_str(&text)
            .map_err(|e| line_error(path, line, format!("not a JSON object: {e}")))?;
        let Value::Object(object) = value else {
            return Err(line_error(path, line, "not a JSON object"));
        };
        let parsed = row(line, &object)?;
        if let Some(first) = seen.insert(parsed.id().to_string(), line) {
            return Err(line_error(
                path,
                line,
                format!("id {:?} again (first on line {first})", parsed.id()),
            ));
        }
        rows.push(parsed);
    }
    Ok(rows)
}

trait HasId {
    fn id(&self) -> &str;
}

impl HasId for BeirDocument {
    fn id(&self) -> &str {
        &self.id
    }
}

impl HasId for BeirQuery {
    fn id(&self) -> &str {
        &self.id
    }
}

/// `_id`: a string, or a number (some collections write numeric ids).
fn id_field(path: &Path, line: usize, object: &serde_json::Map<String, Value>) -> Result<String> {
    match object.get("_id") {
        Some(Value::String(id)) if !id.is_empty() => Ok(id.clone()),
        Some(Value::Number(n)) => Ok(n.to_string()),
        Some(other) => Err(line_error(
            path,
            line,
            format!("\"_id\" must be a non-empty string, not {other}"),
        )),
        None => Err(line_error(path, line, "no \"_id\"")),
    }
}

/// A string field; a missing optional one (a document's title) is empty.
fn text_field(
    path: &Path,
    line: usize,
    object: &serde_json::Map<String, Value>,
    name: &str,
    required: bool,
) -> Result<String> {
    match object.get(name) {
        Some(Value::String(text)) => Ok(text.clone()),
        None | Some(Value::Null) if !required => Ok(String::new()),
        None => Err(line_error(path, line, format!("no \"{name}\""))),
        Some(other) => Err(line_error(
            path,
            line,
            format!("\"{name}\" must be a string, not {other}"),
        )),
    }
}

/// `query-id <TAB> corpus-id <TAB> score` after a header line (recognised by a score that is not
/// a number). Every id must be in the corpus or the queries; a pair judged twice is an error.
fn read_qrels(
    path: &Path,
    queries: &HashSet<&str>,
    documents: &HashSet<&str>,
) -> Result<HashMap<String, HashMap<String, f64>>> {
    let mut qrels: BTreeMap<String, HashMap<String, f64>> = BTreeMap::new();
    for numbered in non_blank_lines(path)? {
        let (line, text) = numbered?;
        let fields: Vec<&str> = text.split('\t').map(str::trim).collect();
        // TREC's four-column form puts an iteration number second.
        let (query, document, score) = match fields.as_slice() {
            [q, d, s] => (*q, *d, *s),
            [q, _, d, s] => (*q, *d, *s),
            _ => {
                return Err(line_error(
                    path,
                    line,
                    format!(
                        "expected query-id, corpus-id and score separated by tabs, got {} field(s)",
                        fields.len()
                    ),
                ));
            }
        };
        let gain: f64 = match score.parse() {
            Ok(gain) => gain,
            Err(_) if line == 1 => continue, // the header
            Err(_) => {
                return Err(line_error(
                    path,
                    line,
                    format!("score {score:?} is not a number"),
                ));
            }
        };
        if !gain.is_finite() {
            return Err(line_error(
                path,
                line,
                format!("score {score:?} is not finite"),
            ));
        }
        if !queries.contains(query) {
            return Err(line_error(
                path,
                line,
                format!("query {query:?} is not in queries.jsonl"),
            ));
        }
        if !documents.contains(document) {
            return Err(line_error(
                path,
                line,
                format!("document {document:?} is not in corpus.jsonl"),
            ));
        }
        let judged = qrels.entry(query.to_string()).or_default();
        if judged.insert(document.to_string(), gain).is_some() {
            return Err(line_error(
                path,
                line,
                format!("query {query:?} judges document {document:?} twice"),
            ));
        }
    }
    Ok(qrels.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folder(corpus: &str, queries: &str, qrels: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("corpus.jsonl"), corpus).unwrap();
        std::fs::write(dir.path().join("queries.jsonl"), queries).unwrap();
        std::fs::create_dir(dir.path().join("qrels")).unwrap();
        std::fs::write(dir.path().join("qrels/test.tsv"), qrels).unwrap();
        dir
    }

    const CORPUS: &str = "{\"_id\": \"d1\", \"title\": \"Tau\", \"text\": \"Tau tangles.\"}\n\
                          {\"_id\": 2, \"text\": \"Amyloid plaques.\", \"metadata\": {}}\n";
    const QUERIES: &str =
        "{\"_id\": \"q1\", \"text\": \"tau\"}\n{\"_id\": \"q2\", \"text\": \"unjudged\"}\n";

    #[test]
    fn a_written_set_reads_back_the_same_and_writes_the_same_bytes() {
        let dir = folder(
            CORPUS,
            QUERIES,
            "query-id\tcorpus-id\tscore\nq1\td1\t2\nq1\t2\t1\n",
        );
        let set = BeirSet::read(dir.path(), "test").unwrap();
        let out = tempfile::tempdir().unwrap();
        set.write(out.path(), "dev").unwrap();
        let back = BeirSet::read(out.path(), "dev").unwrap();
        assert_eq!(back.corpus, set.corpus);
        assert_eq!(back.queries, set.queries);
        assert_eq!(back.qrels, set.qrels);
        let qrels = std::fs::read_to_string(out.path().join("qrels/dev.tsv")).unwrap();
        assert_eq!(qrels, "query-id\tcorpus-id\tscore\nq1\t2\t1\nq1\td1\t2\n");
        let again = tempfile::tempdir().unwrap();
        set.write(again.path(), "dev").unwrap();
        for file in ["corpus.jsonl", "queries.jsonl", "qrels/dev.tsv"] {
            assert_eq!(
                std::fs::read(out.path().join(file)).unwrap(),
                std::fs::read(again.path().join(file)).unwrap(),
                "{file}"
            );
        }
    }

    #[test]
    fn reads_documents_queries_and_graded_judgements() {
        let dir = folder(
            CORPUS,
            QUERIES,
            "query-id\tcorpus-id\tscore\nq1\td1\t2\nq1\t2\t0\n",
        );
        let set = BeirSet::read(dir.path(), "test").unwrap();
        assert_eq!(set.corpus.len(), 2);
        assert_eq!(set.corpus[1].id, "2");
        assert_eq!(set.corpus[1].title, "");
        // q2 has no judgements: not evaluated.
        assert_eq!(
            set.queries,
            vec![BeirQuery {
                id: "q1".into(),
                text: "tau".into()
            }]
        );
        assert_eq!(set.gains("q1"), HashMap::from([("d1", 2.0), ("2", 0.0)]));
    }

    fn error(corpus: &str, queries: &str, qrels: &str) -> String {
        let dir = folder(corpus, queries, qrels);
        BeirSet::read(dir.path(), "test").unwrap_err().to_string()
    }

    #[test]
    fn bad_input_names_the_file_and_the_line() {
        let qrels = "q1\td1\t1\n";
        let e = error(
            &format!("{CORPUS}{{\"_id\": \"d3\", \"text\": \n"),
            QUERIES,
            qrels,
        );
        assert!(e.contains("corpus.jsonl:3: not a JSON object"), "{e}");
        let e = error(CORPUS, "{\"_id\": \"q1\"}\n", qrels);
        assert!(e.contains("queries.jsonl:1: no \"text\""), "{e}");
        let e = error(CORPUS, QUERIES, "q1\td1\t1\nq1\td9\t1\n");
        assert!(
            e.contains("test.tsv:2: document \"d9\" is not in corpus.jsonl"),
            "{e}"
        );
        let e = error(CORPUS, QUERIES, "q1\td1\t1\nq7\td1\t1\n");
        assert!(
            e.contains("test.tsv:2: query \"q7\" is not in queries.jsonl"),
            "{e}"
        );
        let e = error(CORPUS, QUERIES, "q1\td1\t1\nq1\td1\thigh\n");
        assert!(
            e.contains("test.tsv:2: score \"high\" is not a number"),
            "{e}"
        );
        let e = error(CORPUS, QUERIES, "q1 d1 1\n");
        assert!(e.contains("test.tsv:1: expected query-id"), "{e}");
        let e = error(
            "{\"_id\": \"d1\", \"text\": \"a\"}\n{\"_id\": \"d1\", \"text\": \"b\"}\n",
            QUERIES,
            qrels,
        );
        assert!(
            e.contains("corpus.jsonl:2: id \"d1\" again (first on line 1)"),
            "{e}"
        );
        let e = error(CORPUS, QUERIES, "query-id\tcorpus-id\tscore\n");
        assert!(e.contains("test.tsv: no judgements"), "{e}");

        let dir = folder(CORPUS, QUERIES, qrels);
        let e = BeirSet::read(dir.path(), "dev").unwrap_err().to_string();
        assert!(e.contains("qrels/dev.tsv: No such file"), "{e}");
    }
}
