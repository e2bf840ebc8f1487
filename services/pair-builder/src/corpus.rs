//! The whole job's corpus in a compact, index-addressed form: documents in clean-part order,
//! their MeSH descriptors and keywords interned to term ids, their references resolved to
//! document indices, and each document's split.
//!
//! Built part by part ([`CorpusBuilder::add`]), so only one clean part is decoded at a time;
//! references are kept as 64-bit id hashes until every document is known (a reference may point
//! to a later part), then resolved. Documents duplicated across parts (same pmid/pmcid/doi, or the
//! same `content_hash`) are dropped here, the first one kept, each drop counted.

use std::collections::BTreeMap;

use medembed_corpus::clean::CleanArticle;
use medembed_corpus::pairs::Split;
use medembed_pipeline::config::PairSettings;
use rustc_hash::{FxHashMap, FxHashSet};
use xxhash_rust::xxh3::xxh3_64;

use crate::split::SplitAssigner;

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
    pub text: String,
    pub split: Split,
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

fn id_keys(
    pmid: Option<&str>,
    pmcid: Option<&str>,
    doi: Option<&str>,
) -> impl Iterator<Item = u64> {
    [
        pmid.map(|p| xxh3_64(format!("pmid:{}", p.trim()).as_bytes())),
        pmcid.map(|p| {
            let p = p.trim();
            let digits = p
                .strip_prefix("PMC")
                .or_else(|| p.strip_prefix("pmc"))
                .unwrap_or(p);
            xxh3_64(format!("pmcid:{digits}").as_bytes())
        }),
        doi.map(|d| xxh3_64(format!("doi:{}", d.trim().to_lowercase()).as_bytes())),
    ]
    .into_iter()
    .flatten()
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

    /// Adds one clean part's articles, in order.
    pub fn add(&mut self, articles: Vec<CleanArticle>) {
        for a in articles {
            self.corpus.documents_read += 1;
            let keys: Vec<u64> =
                id_keys(a.pmid.as_deref(), a.pmcid.as_deref(), a.doi.as_deref()).collect();
            if keys.iter().any(|k| self.by_id.contains_key(k)) {
                self.drop_doc("duplicate_id");
                continue;
            }
            let content = u64::from_str_radix(&a.content_hash, 16)
                .unwrap_or_else(|_| xxh3_64(a.text.as_bytes()));
            if !self.content.insert(content) {
                self.drop_doc("duplicate_content");
                continue;
            }
            let index = self.corpus.docs.len() as u32;
            for k in keys {
                self.by_id.insert(k, index);
            }

            let mut mesh: Vec<Term> = Vec::with_capacity(a.mesh.len());
            for m in &a.mesh {
                if self.check_tags.contains(&m.descriptor.to_lowercase()) {
                    continue;
                }
                // By name, not UI: older records (and some PMC metadata) carry no UI, and one
                // descriptor must be one term whichever record it comes from.
                let key = m.descriptor.to_lowercase();
                let next = self.mesh_ids.len() as u32;
                let id = *self.mesh_ids.entry(key).or_insert(next);
                mesh.push(Term { id, major: m.major });
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

            let mut keywords: Vec<Term> = Vec::with_capacity(a.keywords.len());
            for k in &a.keywords {
                let key = normalize_keyword(k);
                if key.is_empty() {
                    continue;
                }
                let next = self.keyword_ids.len() as u32;
                let id = *self.keyword_ids.entry(key).or_insert(next);
                keywords.push(Term { id, major: false });
            }
            keywords.sort_unstable();
            keywords.dedup();

            let references: Vec<u64> = a
                .references
                .iter()
                .flat_map(|r| id_keys(r.pmid.as_deref(), r.pmcid.as_deref(), r.doi.as_deref()))
                .collect();

            let split = self.splits.split_of(&a.id);
            self.corpus.docs.push(Doc {
                id: a.id,
                title: a.title,
                text: a.text,
                split,
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
