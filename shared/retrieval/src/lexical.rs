//! The lexical side of search: BM25 over each document's title, abstract and MeSH descriptors,
//! with tantivy, plus exact lookups of the identifiers users paste (a PMID, a PMCID, a DOI).
//!
//! Why it is here at all: exact terms (gene symbols, drug codes, trial ids) are where sentence
//! embeddings blur and a lexical index does not, and on biomedical questions plain BM25 is a
//! strong baseline that a general sentence model often does not beat. Hybrid search fuses the two
//! rankings (`medembed_retrieval::fusion`).
//!
//! The index is built in memory and kept as files ([`LexicalIndex::files`]) with the job's
//! index: one segment, documents in row order, and a fixed segment name, so the same documents
//! give byte-identical files (a redelivered build task rewrites the same objects). Tantivy names
//! segments by random UUIDs; the export renames the one segment in `meta.json` and in the file
//! names, and [`LexicalIndex::from_files`] opens such files again.
//!
//! Text is analyzed the same way at indexing and at query time: split on anything that is not a
//! letter or digit, lowercased, tokens over 40 bytes dropped, Lucene's English stop words removed,
//! Snowball English stemming. Queries are plain words: the query parser's syntax characters are
//! neutralized, except double quotes, which keep a phrase together.

use std::path::Path;

use tantivy::collector::TopDocs;
use tantivy::directory::{Directory, RamDirectory};
use tantivy::index::{SegmentComponent, SegmentId};
use tantivy::indexer::NoMergePolicy;
use tantivy::query::{QueryParser, TermQuery};
use tantivy::schema::{
    FAST, Field, IndexRecordOption, STRING, Schema, TextFieldIndexing, TextOptions,
};
use tantivy::tokenizer::{
    Language, LowerCaser, RemoveLongFilter, SimpleTokenizer, Stemmer, StopWordFilter, TextAnalyzer,
};
use tantivy::{
    DocAddress, Index, IndexReader, IndexSettings, IndexWriter, ReloadPolicy, TantivyDocument, Term,
};

/// A lexical index that could not be built, stored, opened or searched.
#[derive(Debug, thiserror::Error)]
#[error("lexical index: {0}")]
pub struct LexicalError(pub String);

pub type Result<T, E = LexicalError> = std::result::Result<T, E>;

/// The analyzer's name in each index's tokenizer manager.
const ANALYZER: &str = "medembed_english";

/// Memory for the single indexing thread; segments are flushed when it fills.
const WRITER_MEMORY_BYTES: usize = 64 * 1024 * 1024;

/// What the lexical index holds of one document.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LexicalDocument {
    pub pmid: Option<String>,
    pub pmcid: Option<String>,
    pub doi: Option<String>,
    pub title: String,
    pub abstract_text: String,
    /// MeSH descriptor names (or keywords, where an article has no MeSH).
    pub terms: Vec<String>,
}

#[derive(Debug, Clone, Copy)]
struct Fields {
    /// The document's row in the job's index (its position in `documents.parquet`).
    row: Field,
    title: Field,
    abstract_text: Field,
    terms: Field,
    /// PMID, PMCID and DOI, lowercased, untokenized.
    ids: Field,
}

/// The name the exported segment gets (any fixed UUID, in tantivy's simple form).
const SEGMENT_NAME: &str = "00000000000000000000000000000001";

/// The segment files, by component (the delete bitset and the temporary store never exist in a
/// committed index without deletes).
const SEGMENT_COMPONENTS: [SegmentComponent; 6] = [
    SegmentComponent::Postings,
    SegmentComponent::Positions,
    SegmentComponent::FastFields,
    SegmentComponent::FieldNorms,
    SegmentComponent::Terms,
    SegmentComponent::Store,
];

/// Weight of a match in the MeSH descriptors and keywords against one in the title or abstract.
/// On the Alzheimer sample's dev set (148 title queries, BM25 alone) nDCG@10 was 0.084 at 1,
/// 0.094 at 0.5 and 0.098 without them, Recall@100 0.443, 0.474 and 0.462: half weight keeps
/// what MeSH adds to recall (synonyms the abstract does not use) without long descriptor lists
/// outranking the text.
const TERMS_BOOST: f32 = 0.5;

/// A BM25 index over a job's documents, searched by row.
pub struct LexicalIndex {
    directory: RamDirectory,
    index: Index,
    reader: IndexReader,
    fields: Fields,
    parser: QueryParser,
}

impl std::fmt::Debug for LexicalIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LexicalIndex")
            .field("documents", &self.len())
            .finish()
    }
}

fn lexical_error(e: tantivy::TantivyError) -> LexicalError {
    LexicalError(e.to_string())
}

fn analyzer() -> TextAnalyzer {
    TextAnalyzer::builder(SimpleTokenizer::default())
        .filter(RemoveLongFilter::limit(40))
        .filter(LowerCaser)
        .filter(StopWordFilter::new(Language::English).expect("tantivy ships English stop words"))
        .filter(Stemmer::new(Language::English))
        .build()
}

fn schema() -> (Schema, Fields) {
    let mut builder = Schema::builder();
    let text = TextOptions::default().set_indexing_options(
        TextFieldIndexing::default()
            .set_tokenizer(ANALYZER)
            .set_index_option(IndexRecordOption::WithFreqsAndPositions),
    );
    let fields = Fields {
        row: builder.add_u64_field("row", FAST),
        title: builder.add_text_field("title", text.clone()),
        abstract_text: builder.add_text_field("abstract", text.clone()),
        terms: builder.add_text_field("terms", text),
        ids: builder.add_text_field("ids", STRING),
    };
    (builder.build(), fields)
}

impl LexicalIndex {
    /// Indexes `documents` in memory; a document's row is its position in the iterator.
    pub fn build<'a>(documents: impl IntoIterator<Item = &'a LexicalDocument>) -> Result<Self> {
        Self::build_in_commits(documents, usize::MAX)
    }

    /// As [`LexicalIndex::build`], committing every `rows_per_commit` documents (so a test can
    /// make the several segments a large corpus makes when the writer's memory fills).
    fn build_in_commits<'a>(
        documents: impl IntoIterator<Item = &'a LexicalDocument>,
        rows_per_commit: usize,
    ) -> Result<Self> {
        let (schema, fields) = schema();
        let directory = RamDirectory::create();
        let index = Index::create(directory.clone(), schema, IndexSettings::default())
            .map_err(lexical_error)?;
        index.tokenizers().register(ANALYZER, analyzer());
        // One thread, no merges while adding: segments come out in row order, and the one merge
        // below keeps that order.
        let mut writer: IndexWriter = index
            .writer_with_num_threads(1, WRITER_MEMORY_BYTES)
            .map_err(lexical_error)?;
        writer.set_merge_policy(Box::new(NoMergePolicy));
        for (row, document) in documents.into_iter().enumerate() {
            let mut doc = TantivyDocument::default();
            doc.add_u64(fields.row, row as u64);
            doc.add_text(fields.title, &document.title);
            doc.add_text(fields.abstract_text, &document.abstract_text);
            for term in &document.terms {
                doc.add_text(fields.terms, term);
            }
            for id in [&document.pmid, &document.pmcid, &document.doi]
                .into_iter()
                .flatten()
            {
                doc.add_text(fields.ids, id.trim().to_lowercase());
            }
            writer.add_document(doc).map_err(lexical_error)?;
            if (row + 1).is_multiple_of(rows_per_commit) {
                writer.commit().map_err(lexical_error)?;
            }
        }
        writer.commit().map_err(lexical_error)?;
        let mut segments = Self::segments_by_first_row(&index)?;
        if segments.len() > 1 {
            segments.sort();
            let ids: Vec<SegmentId> = segments.into_iter().map(|(_, id)| id).collect();
            writer.merge(&ids).wait().map_err(lexical_error)?;
        }
        writer.wait_merging_threads().map_err(lexical_error)?;
        Self::open(directory, index, fields)
    }

    /// The searchable segments with the row of their first document.
    fn segments_by_first_row(index: &Index) -> Result<Vec<(u64, SegmentId)>> {
        let reader: IndexReader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()
            .map_err(lexical_error)?;
        let searcher = reader.searcher();
        let mut segments = Vec::new();
        for segment in searcher.segment_readers() {
            let rows = segment.fast_fields().u64("row").map_err(lexical_error)?;
            let first = rows.first(0).unwrap_or(u64::MAX);
            segments.push((first, segment.segment_id()));
        }
        Ok(segments)
    }

    fn open(directory: RamDirectory, index: Index, fields: Fields) -> Result<Self> {
        let reader: IndexReader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()
            .map_err(lexical_error)?;
        let mut parser = QueryParser::for_index(
            &index,
            vec![fields.title, fields.abstract_text, fields.terms],
        );
        parser.set_field_boost(fields.terms, TERMS_BOOST);
        Ok(Self {
            directory,
            index,
            reader,
            fields,
            parser,
        })
    }

    /// The index as files (name, bytes): `meta.json` and the one segment's files under a fixed
    /// name. The same documents give the same bytes.
    pub fn files(&self) -> Result<Vec<(String, Vec<u8>)>> {
        let metas = self
            .index
            .searchable_segment_metas()
            .map_err(lexical_error)?;
        let meta_json = self
            .directory
            .atomic_read(Path::new("meta.json"))
            .map_err(|e| LexicalError(format!("meta.json: {e}")))?;
        let mut meta_json =
            String::from_utf8(meta_json).map_err(|e| LexicalError(format!("meta.json: {e}")))?;
        let mut files = Vec::new();
        match metas.as_slice() {
            [] => {}
            [segment] => {
                let simple = segment.id().uuid_string();
                let hyphenated = hyphenated(&simple);
                meta_json = meta_json
                    .replace(&simple, SEGMENT_NAME)
                    .replace(&hyphenated, &hyphenated_name());
                for component in SEGMENT_COMPONENTS {
                    let path = segment.relative_path(component);
                    if !self
                        .directory
                        .exists(&path)
                        .map_err(|e| LexicalError(format!("{}: {e}", path.display())))?
                    {
                        continue;
                    }
                    let bytes = self
                        .directory
                        .open_read(&path)
                        .map_err(|e| LexicalError(format!("{}: {e}", path.display())))?
                        .read_bytes()
                        .map_err(|e| LexicalError(format!("{}: {e}", path.display())))?;
                    let name = path.to_string_lossy().replace(&simple, SEGMENT_NAME);
                    files.push((name, bytes.as_slice().to_vec()));
                }
            }
            more => {
                return Err(LexicalError(format!(
                    "{} segments after the merge, not one",
                    more.len()
                )));
            }
        }
        files.sort();
        files.insert(0, ("meta.json".to_string(), meta_json.into_bytes()));
        Ok(files)
    }

    /// Opens files written by [`LexicalIndex::files`].
    pub fn from_files(files: &[(String, Vec<u8>)]) -> Result<Self> {
        let directory = RamDirectory::create();
        for (name, bytes) in files {
            directory
                .atomic_write(Path::new(name), bytes)
                .map_err(|e| LexicalError(format!("{name}: {e}")))?;
        }
        let index = Index::open(directory.clone()).map_err(lexical_error)?;
        index.tokenizers().register(ANALYZER, analyzer());
        let (expected, fields) = schema();
        if index.schema() != expected {
            return Err(LexicalError(
                "the stored lexical index has another schema than this version builds".into(),
            ));
        }
        Self::open(directory, index, fields)
    }

    /// How many documents are indexed.
    pub fn len(&self) -> usize {
        self.reader.searcher().num_docs() as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The `k` best documents for `query` by BM25: (row, score), best first. A query with no
    /// searchable word (only stop words or punctuation) finds nothing.
    pub fn search(&self, query: &str, k: usize) -> Result<Vec<(usize, f32)>> {
        let cleaned = plain_query(query);
        // No word left after analysis (only stop words or punctuation): the parser would make
        // that a query matching every document.
        if k == 0 || !has_searchable_word(&cleaned) {
            return Ok(Vec::new());
        }
        // Lenient: whatever the parser cannot read is dropped rather than failing the search.
        let (parsed, _ignored) = self.parser.parse_query_lenient(&cleaned);
        self.top(&*parsed, k)
    }

    /// The rows whose PMID, PMCID or DOI is what `query` consists of (e.g. `31234567`,
    /// `PMID: 31234567`, `PMC6543210`, `doi:10.1000/xyz`, `https://doi.org/10.1000/xyz`), in row
    /// order; empty when the query is not an identifier.
    pub fn exact_matches(&self, query: &str) -> Result<Vec<usize>> {
        let Some(id) = identifier(query) else {
            return Ok(Vec::new());
        };
        let term = TermQuery::new(
            Term::from_field_text(self.fields.ids, &id),
            IndexRecordOption::Basic,
        );
        let mut rows: Vec<usize> = self.top(&term, 16)?.into_iter().map(|(r, _)| r).collect();
        rows.sort_unstable();
        Ok(rows)
    }

    fn top(&self, query: &dyn tantivy::query::Query, k: usize) -> Result<Vec<(usize, f32)>> {
        let searcher = self.reader.searcher();
        let top: Vec<(f32, DocAddress)> = searcher
            .search(query, &TopDocs::with_limit(k).order_by_score())
            .map_err(lexical_error)?;
        let mut hits = Vec::with_capacity(top.len());
        for (score, address) in top {
            let rows = searcher
                .segment_reader(address.segment_ord)
                .fast_fields()
                .u64("row")
                .map_err(lexical_error)?;
            let row = rows
                .first(address.doc_id)
                .ok_or_else(|| LexicalError(format!("document {address:?} has no row")))?;
            hits.push((row as usize, score));
        }
        // Equal scores in row order, so the ranking does not depend on segment layout.
        hits.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        Ok(hits)
    }
}

/// Whether the analyzer keeps any token of `text`.
fn has_searchable_word(text: &str) -> bool {
    use tantivy::tokenizer::TokenStream as _;
    let mut analyzer = analyzer();
    let mut stream = analyzer.token_stream(text);
    stream.advance()
}

/// A simple UUID string (32 hex digits) in the hyphenated form serde writes into `meta.json`.
fn hyphenated(simple: &str) -> String {
    format!(
        "{}-{}-{}-{}-{}",
        &simple[0..8],
        &simple[8..12],
        &simple[12..16],
        &simple[16..20],
        &simple[20..32]
    )
}

fn hyphenated_name() -> String {
    hyphenated(SEGMENT_NAME)
}

/// `query` as plain words for the query parser: its operators and syntax characters become
/// spaces (a user's "IL-6 (serum)" or "AND" is not a boolean query), and double quotes stay only
/// when they pair up. A hyphen inside a word stays, so "IL-6" is searched as the phrase "il 6".
pub fn plain_query(query: &str) -> String {
    let keep_quotes = query.matches('"').count().is_multiple_of(2);
    let mut out = String::with_capacity(query.len());
    let mut previous = ' ';
    for c in query.chars() {
        let replaced = match c {
            '"' if keep_quotes => '"',
            '-' if previous.is_alphanumeric() => '-',
            c if c.is_alphanumeric() || c == '.' || c == '_' => c,
            _ => ' ',
        };
        out.push(replaced);
        previous = c;
    }
    // The parser's boolean words, as plain (stop) words.
    out.split(' ')
        .map(|word| match word {
            "AND" | "OR" | "NOT" | "IN" | "TO" => word.to_lowercase(),
            _ => word.to_string(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The identifier `query` consists of, as the index stores it (lowercased), if it is one.
fn identifier(query: &str) -> Option<String> {
    let mut q = query.trim().trim_matches('"').trim().to_lowercase();
    for prefix in [
        "https://doi.org/",
        "http://doi.org/",
        "https://dx.doi.org/",
        "http://dx.doi.org/",
        "doi:",
        "pmid:",
        "pmid",
        "pmcid:",
    ] {
        if let Some(rest) = q.strip_prefix(prefix) {
            q = rest.trim().to_string();
            break;
        }
    }
    let is_pmid = !q.is_empty() && q.len() <= 9 && q.bytes().all(|b| b.is_ascii_digit());
    let is_pmcid = q
        .strip_prefix("pmc")
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    let is_doi = q.starts_with("10.") && q.contains('/') && !q.contains(char::is_whitespace);
    (is_pmid || is_pmcid || is_doi).then_some(q)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(title: &str, abstract_text: &str) -> LexicalDocument {
        LexicalDocument {
            title: title.into(),
            abstract_text: abstract_text.into(),
            ..LexicalDocument::default()
        }
    }

    /// BM25 as tantivy defines it (k1 = 1.2, b = 0.75, idf = ln(1 + (N − n + 0.5) / (n + 0.5))),
    /// computed by hand for a term that only the abstracts contain.
    #[test]
    fn bm25_scores_and_order_match_hand_computed_values() {
        let docs = [
            doc("Alpha", "tau tau protein"),
            doc("Beta", "tau amyloid protein aggregation"),
            doc("Gamma", "amyloid plaques"),
        ];
        let index = LexicalIndex::build(&docs).unwrap();
        assert_eq!(index.len(), 3);
        let hits = index.search("tau", 10).unwrap();
        // N = 3, n = 2: idf = ln(1.6). Abstract lengths 3, 4, 2: avgdl = 3.
        let idf = 1.6f64.ln();
        let bm25 =
            |tf: f64, len: f64| idf * tf * 2.2 / (tf + 1.2 * (1.0 - 0.75 + 0.75 * len / 3.0));
        assert_eq!(hits.iter().map(|h| h.0).collect::<Vec<_>>(), [0, 1]);
        assert!(
            (f64::from(hits[0].1) - bm25(2.0, 3.0)).abs() < 1e-4,
            "{hits:?}"
        );
        assert!(
            (f64::from(hits[1].1) - bm25(1.0, 4.0)).abs() < 1e-4,
            "{hits:?}"
        );
        // Two terms add up: "amyloid plaques" ranks the document holding both first.
        let hits = index.search("amyloid plaques", 10).unwrap();
        assert_eq!(hits.iter().map(|h| h.0).collect::<Vec<_>>(), [2, 1]);
    }

    fn analyze(text: &str) -> Vec<String> {
        use tantivy::tokenizer::TokenStream as _;
        let mut analyzer = analyzer();
        let mut stream = analyzer.token_stream(text);
        let mut tokens = Vec::new();
        while stream.advance() {
            tokens.push(stream.token().text.clone());
        }
        tokens
    }

    #[test]
    fn english_analysis_stems_and_drops_stop_words() {
        assert_eq!(
            analyze("The aggregation of Tau proteins in IL-6 signalling"),
            ["aggreg", "tau", "protein", "il", "6", "signal"]
        );
        let docs = [
            doc("Protein aggregation", "Aggregated tau."),
            doc("Imaging", "PET of plaques."),
        ];
        let index = LexicalIndex::build(&docs).unwrap();
        let rows: Vec<usize> = index
            .search("aggregating proteins", 10)
            .unwrap()
            .iter()
            .map(|h| h.0)
            .collect();
        assert_eq!(rows, [0]);
        assert!(index.search("the of and", 10).unwrap().is_empty());
        assert!(index.search("", 10).unwrap().is_empty());
        assert!(index.search("plaques", 0).unwrap().is_empty());
    }

    #[test]
    fn query_syntax_is_neutralized_and_phrases_kept() {
        assert_eq!(
            plain_query("IL-6 (serum) AND -tau: [x"),
            "IL-6  serum  and  tau   x"
        );
        assert_eq!(
            plain_query("\"tau protein\" levels"),
            "\"tau protein\" levels"
        );
        assert_eq!(plain_query("\"unbalanced quote"), " unbalanced quote");
        let docs = [
            doc("", "protein tau is measured"),
            doc("", "tau protein levels rise"),
        ];
        let index = LexicalIndex::build(&docs).unwrap();
        // Hostile syntax does not fail, and still searches the words.
        for q in [
            "tau AND (",
            "title:tau",
            "-tau",
            "tau^3",
            "[a TO z]",
            "*",
            "\\",
            "\"",
            "::",
        ] {
            index.search(q, 10).unwrap_or_else(|e| panic!("{q:?}: {e}"));
        }
        assert_eq!(index.search("title:tau", 10).unwrap().len(), 2);
        // A quoted phrase matches only where the words are adjacent and in order.
        let rows: Vec<usize> = index
            .search("\"tau protein\"", 10)
            .unwrap()
            .iter()
            .map(|h| h.0)
            .collect();
        assert_eq!(rows, [1]);
    }

    #[test]
    fn exported_files_are_deterministic_and_open_again() {
        let docs: Vec<LexicalDocument> = (0..50)
            .map(|i| doc(&format!("Title {i}"), &format!("tau {i} protein {}", i % 7)))
            .collect();
        let built = LexicalIndex::build(&docs).unwrap();
        let files = built.files().unwrap();
        assert_eq!(files, LexicalIndex::build(&docs).unwrap().files().unwrap());
        assert_eq!(files[0].0, "meta.json");
        assert!(
            files.len() > 3,
            "{:?}",
            files.iter().map(|f| &f.0).collect::<Vec<_>>()
        );
        for (name, _) in &files[1..] {
            assert!(name.starts_with(SEGMENT_NAME), "{name}");
        }
        let reopened = LexicalIndex::from_files(&files).unwrap();
        assert_eq!(reopened.len(), 50);
        assert_eq!(
            reopened.search("tau 3", 100).unwrap(),
            built.search("tau 3", 100).unwrap()
        );

        // Several segments (as a large corpus makes) are merged into one, in row order, and the
        // export is deterministic too.
        let segmented = LexicalIndex::build_in_commits(&docs, 7).unwrap();
        let files = segmented.files().unwrap();
        assert_eq!(
            files,
            LexicalIndex::build_in_commits(&docs, 7)
                .unwrap()
                .files()
                .unwrap()
        );
        let reopened = LexicalIndex::from_files(&files).unwrap();
        assert_eq!(
            reopened.search("tau 3", 100).unwrap(),
            built.search("tau 3", 100).unwrap()
        );

        // Damaged files are an error, not a panic.
        let mut damaged = files.clone();
        damaged[0].1 = b"{not json".to_vec();
        assert!(LexicalIndex::from_files(&damaged).is_err());
    }

    #[test]
    fn identifiers_are_found_exactly() {
        let docs = [
            LexicalDocument {
                pmid: Some("31234567".into()),
                pmcid: Some("PMC6543210".into()),
                doi: Some("10.1016/J.NEURON.2019.01.001".into()),
                ..doc("Tau", "tau")
            },
            LexicalDocument {
                pmid: Some("1234567".into()),
                ..doc("Other", "other")
            },
        ];
        let index = LexicalIndex::build(&docs).unwrap();
        for q in [
            "31234567",
            " PMID: 31234567 ",
            "pmc6543210",
            "PMC6543210",
            "doi:10.1016/j.neuron.2019.01.001",
            "https://doi.org/10.1016/J.Neuron.2019.01.001",
        ] {
            assert_eq!(index.exact_matches(q).unwrap(), [0], "{q}");
        }
        assert_eq!(index.exact_matches("1234567").unwrap(), [1]);
        for q in ["tau", "3123456", "10.1016", "PMC", "1234567890"] {
            assert!(index.exact_matches(q).unwrap().is_empty(), "{q}");
        }
    }
}
