//! The whole job's corpus in a compact, index-addressed form: documents in clean-part order,
//! their MeSH descriptors and keywords interned to term ids, their references resolved to
//! document indices, and each document's split.
//!
//! Built part by part ([`CorpusBuilder::add`]), so only one clean part is decoded at a time;
//! references are kept as 64-bit id hashes until every document is known (a reference may point
//! to a later part), then resolved. Documents duplicated across parts (same pmid/pmcid/doi, or the
//! same `content_hash`) are dropped here, the first one kept, each drop counted.

use std::collections::BTreeMap;

use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch, StringArray};
use arrow::datatypes::Schema;
use medembed_corpus::article::id_keys;
use medembed_corpus::clean::{self, CleanArticle, clean_schema};
use medembed_corpus::pairs::Split;
use medembed_pipeline::config::PairSettings;
use rustc_hash::{FxHashMap, FxHashSet};
use xxhash_rust::xxh3::xxh3_64;

use crate::split::SplitAssigner;

/// A nullable string cell.
fn optional(array: &StringArray, row: usize) -> Option<&str> {
    array.is_valid(row).then(|| array.value(row))
}

/// The fields of a clean part that pairing reads (no abstract, body or abbreviations).
pub const PAIRING_FIELDS: [&str; 10] = [
    "id",
    "pmid",
    "pmcid",
    "doi",
    "title",
    "mesh",
    "keywords",
    "references",
    "text",
    "content_hash",
];

/// [`clean_schema`] narrowed to [`PAIRING_FIELDS`], to read clean parts with.
pub fn pairing_schema() -> Arc<Schema> {
    let full = clean_schema();
    let indices: Vec<usize> = PAIRING_FIELDS
        .iter()
        .map(|f| full.index_of(f).expect("pairing fields are clean fields"))
        .collect();
    Arc::new(full.project(&indices).expect("valid projection"))
}

/// A term of a document: interned id, and whether it is a major topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Term {
    pub id: u32,
    pub major: bool,
}

/// One kept document.
#[derive(Debug, Clone)]
pub struct Doc {
    pub id: String,
    pub title: String,
    /// The clean text: the title (when `clean.text_fields` has it), then the abstract, ….
    pub text: String,
    pub split: Split,
}

impl Doc {
    /// The text without its leading title: what a title query is searched against, so that the
    /// title never answers itself. The whole text where it does not start with the title.
    pub fn body(&self) -> &str {
        without_title(&self.text, &self.title)
    }

    /// The title as a search query: `None` for a title of fewer than 3 words (a label, not a
    /// question), a document with nothing but its title, or one whose body still holds the
    /// title (it would answer itself).
    pub fn title_query(&self) -> Option<&str> {
        let title = self.title.trim();
        let body = self.body();
        (title.split_whitespace().count() >= 3 && !body.is_empty() && !body.contains(title))
            .then_some(title)
    }
}

/// `text` with a leading `title` sentence removed, with the stop and spaces after it (the
/// cleaner joins the title and the abstract as two sentences); `text` itself where it does not
/// begin with the title as a sentence of its own.
pub fn without_title<'a>(text: &'a str, title: &str) -> &'a str {
    const STOPS: [char; 4] = ['.', '?', '!', ':'];
    let title = title.trim();
    let Some(rest) = text.strip_prefix(title).filter(|_| !title.is_empty()) else {
        return text;
    };
    let sentence_ends = rest.is_empty()
        || rest.starts_with(STOPS)
        || (title.ends_with(STOPS) && rest.starts_with(char::is_whitespace));
    if sentence_ends {
        rest.trim_start_matches(STOPS).trim_start()
    } else {
        text
    }
}

/// The corpus, ready for pairing. Index `i` addresses `docs[i]`, `mesh[i]`, … alike.
#[derive(Debug, Default)]
pub struct Corpus {
    pub docs: Vec<Doc>,
    /// MeSH descriptors per document, sorted by id, check tags left out.
    pub mesh: Vec<Vec<Term>>,
    /// Normalized author keywords per document, sorted by id (`major` is always false).
    pub keywords: Vec<Vec<Term>>,
    /// Documents each document cites, sorted, itself excluded.
    pub references: Vec<Vec<u32>>,
    pub mesh_terms: usize,
    pub keyword_terms: usize,
    pub documents_read: u64,
    /// Cross-part duplicates dropped, by reason.
    pub dropped: BTreeMap<String, u64>,
}

impl Corpus {
    pub fn len(&self) -> usize {
        self.docs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.docs.is_empty()
    }
}

/// Collects documents part by part.
#[derive(Debug)]
pub struct CorpusBuilder {
    corpus: Corpus,
    splits: SplitAssigner,
    check_tags: FxHashSet<String>,
    /// Hash of "pmid:…"/"pmcid:…"/"doi:…" → document index.
    by_id: FxHashMap<u64, u32>,
    content: FxHashSet<u64>,
    mesh_ids: FxHashMap<String, u32>,
    keyword_ids: FxHashMap<String, u32>,
    /// Per document, hashes of the ids of the works it cites.
    pending_references: Vec<Vec<u64>>,
}

/// Author keywords compared case-folded, punctuation as spaces, and a light plural folding
/// ("Tumors" = "tumor", "T-cells" = "t cell"; "virus", "analysis" untouched).
pub fn normalize_keyword(keyword: &str) -> String {
    let mut out = String::with_capacity(keyword.len());
    for word in keyword
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
    {
        let lower = word.to_lowercase();
        let folded = if lower.len() > 4 && lower.ends_with("ies") {
            format!("{}y", &lower[..lower.len() - 3])
        } else if lower.len() > 3
            && lower.ends_with('s')
            && !lower.ends_with("ss")
            && !lower.ends_with("us")
            && !lower.ends_with("is")
        {
            lower[..lower.len() - 1].to_string()
        } else {
            lower
        };
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(&folded);
    }
    out
}

impl CorpusBuilder {
    pub fn new(settings: &PairSettings) -> Self {
        Self {
            corpus: Corpus::default(),
            splits: SplitAssigner::new(settings),
            check_tags: settings
                .check_tags
                .iter()
                .map(|t| t.to_lowercase())
                .collect(),
            by_id: FxHashMap::default(),
            content: FxHashSet::default(),
            mesh_ids: FxHashMap::default(),
            keyword_ids: FxHashMap::default(),
            pending_references: Vec::new(),
        }
    }

    fn drop_doc(&mut self, reason: &str) {
        *self.corpus.dropped.entry(reason.to_string()).or_default() += 1;
    }

    /// Adds clean articles, in order (tests and tools; the stage adds record batches).
    pub fn add(&mut self, articles: Vec<CleanArticle>) {
        let batch =
            clean::to_batch("articles", &articles).expect("clean articles fit the clean schema");
        self.add_batch(&batch);
    }

    /// Adds one record batch with at least the [`PAIRING_FIELDS`] (a clean part read with
    /// [`pairing_schema`]), in row order. Read straight from the Arrow columns: a million articles
    /// with 20 references and a dozen MeSH headings each are not turned into Rust structs.
    pub fn add_batch(&mut self, batch: &RecordBatch) {
        let text = |name: &str| {
            batch
                .column_by_name(name)
                .expect("pairing field")
                .as_string::<i32>()
        };
        let (id, pmid, pmcid, doi) = (text("id"), text("pmid"), text("pmcid"), text("doi"));
        let (title, body, content_hash) = (text("title"), text("text"), text("content_hash"));
        let list = |name: &str| {
            batch
                .column_by_name(name)
                .expect("pairing field")
                .as_list::<i32>()
        };
        let (mesh_list, keyword_list, reference_list) =
            (list("mesh"), list("keywords"), list("references"));
        let mesh_values = mesh_list.values().as_struct();
        let descriptor = mesh_values
            .column_by_name("descriptor")
            .expect("descriptor")
            .as_string::<i32>();
        let major = mesh_values
            .column_by_name("major")
            .expect("major")
            .as_boolean();
        let keyword_values = keyword_list.values().as_string::<i32>();
        let reference_values = reference_list.values().as_struct();
        let reference = |name: &str| {
            reference_values
                .column_by_name(name)
                .expect("reference id")
                .as_string::<i32>()
        };
        let (ref_pmid, ref_pmcid, ref_doi) =
            (reference("pmid"), reference("pmcid"), reference("doi"));

        let mut keys: Vec<u64> = Vec::new();
        let mut lower = String::new();
        for row in 0..batch.num_rows() {
            self.corpus.documents_read += 1;
            keys.clear();
            id_keys(
                optional(pmid, row),
                optional(pmcid, row),
                optional(doi, row),
                &mut keys,
            );
            if keys.iter().any(|k| self.by_id.contains_key(k)) {
                self.drop_doc("duplicate_id");
                continue;
            }
            let content = u64::from_str_radix(content_hash.value(row), 16)
                .unwrap_or_else(|_| xxh3_64(body.value(row).as_bytes()));
            if !self.content.insert(content) {
                self.drop_doc("duplicate_content");
                continue;
            }
            let index = self.corpus.docs.len() as u32;
            for &k in &keys {
                self.by_id.insert(k, index);
            }

            let offsets = mesh_list.value_offsets();
            let mut mesh: Vec<Term> =
                Vec::with_capacity((offsets[row + 1] - offsets[row]) as usize);
            for m in offsets[row] as usize..offsets[row + 1] as usize {
                lower.clear();
                lower.extend(descriptor.value(m).chars().flat_map(char::to_lowercase));
                if self.check_tags.contains(&lower) {
                    continue;
                }
                // By name, not UI: older records (and some PMC metadata) carry no UI, and one
                // descriptor must be one term whichever record it comes from.
                let id = match self.mesh_ids.get(&lower) {
                    Some(&id) => id,
                    None => {
                        let id = self.mesh_ids.len() as u32;
                        self.mesh_ids.insert(lower.clone(), id);
                        id
                    }
                };
                mesh.push(Term {
                    id,
                    major: major.value(m),
                });
            }
            mesh.sort_unstable();
            mesh.dedup_by(|b, a| {
                // The same descriptor twice: keep one, major if either is.
                if a.id == b.id {
                    a.major |= b.major;
                    true
                } else {
                    false
                }
            });

            let offsets = keyword_list.value_offsets();
            let mut keywords: Vec<Term> = Vec::new();
            for k in offsets[row] as usize..offsets[row + 1] as usize {
                let key = normalize_keyword(keyword_values.value(k));
                if key.is_empty() {
                    continue;
                }
                let next = self.keyword_ids.len() as u32;
                let id = *self.keyword_ids.entry(key).or_insert(next);
                keywords.push(Term { id, major: false });
            }
            keywords.sort_unstable();
            keywords.dedup();

            let offsets = reference_list.value_offsets();
            let mut references: Vec<u64> =
                Vec::with_capacity((offsets[row + 1] - offsets[row]) as usize);
            for r in offsets[row] as usize..offsets[row + 1] as usize {
                id_keys(
                    optional(ref_pmid, r),
                    optional(ref_pmcid, r),
                    optional(ref_doi, r),
                    &mut references,
                );
            }

            let doc_id = id.value(row);
            self.corpus.docs.push(Doc {
                id: doc_id.to_string(),
                title: title.value(row).to_string(),
                text: body.value(row).to_string(),
                split: self.splits.split_of(doc_id),
            });
            self.corpus.mesh.push(mesh);
            self.corpus.keywords.push(keywords);
            self.pending_references.push(references);
        }
    }

    /// Resolves references and returns the corpus.
    pub fn finish(mut self) -> Corpus {
        let by_id = std::mem::take(&mut self.by_id);
        self.corpus.references = self
            .pending_references
            .into_iter()
            .enumerate()
            .map(|(i, refs)| {
                let mut cited: Vec<u32> = refs
                    .iter()
                    .filter_map(|k| by_id.get(k).copied())
                    .filter(|&j| j != i as u32)
                    .collect();
                cited.sort_unstable();
                cited.dedup();
                cited
            })
            .collect();
        self.corpus.mesh_terms = self.mesh_ids.len();
        self.corpus.keyword_terms = self.keyword_ids.len();
        self.corpus
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_is_the_text_without_its_title() {
        let doc = |title: &str, text: &str| Doc {
            id: "pmid:1".into(),
            title: title.into(),
            text: text.into(),
            split: Split::Train,
        };
        let d = doc(
            "Tau spreads in mice",
            "Tau spreads in mice. We injected tau fibrils.",
        );
        assert_eq!(d.body(), "We injected tau fibrils.");
        assert_eq!(d.title_query(), Some("Tau spreads in mice"));
        // A title with its own stop, or a question.
        assert_eq!(
            doc("Does tau spread?", "Does tau spread? Yes.").body(),
            "Yes."
        );
        // A text that does not start with the title is whole (text_fields without the title).
        assert_eq!(
            doc("Tau spreads in mice", "We injected.").body(),
            "We injected."
        );
        // Too short to be a query, or nothing but the title.
        assert_eq!(doc("Tau", "Tau. We injected.").title_query(), None);
        assert_eq!(
            doc("Tau spreads in mice", "Tau spreads in mice.").title_query(),
            None
        );
        assert_eq!(doc("", "Text only.").body(), "Text only.");
        // A text that merely begins with the title's words keeps them, and is no title pair.
        let d = doc("A lone article", "A lone article with no relation.");
        assert_eq!(d.body(), "A lone article with no relation.");
        assert_eq!(d.title_query(), None);
        // A body that repeats the title makes no title query either.
        let d = doc(
            "Tau spreads in mice",
            "Tau spreads in mice. Tau spreads in mice, we show.",
        );
        assert_eq!(d.title_query(), None);
    }

    #[test]
    fn keywords_fold_case_punctuation_and_plurals() {
        assert_eq!(normalize_keyword("Tumors"), "tumor");
        assert_eq!(normalize_keyword("tumor"), "tumor");
        assert_eq!(normalize_keyword("T-Cells"), "t cell");
        assert_eq!(normalize_keyword("Therapies"), "therapy");
        assert_eq!(normalize_keyword("virus"), "virus");
        assert_eq!(normalize_keyword("Meta-analysis"), "meta analysis");
        assert_eq!(normalize_keyword("  COVID-19 "), "covid 19");
    }
}
