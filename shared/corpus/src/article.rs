//! [`RawArticle`]: one article as the fetcher extracts it, the same shape for PubMed and JATS.

use serde::{Deserialize, Serialize};

/// Which XML format an article came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceFormat {
    Pubmed,
    Jats,
}

/// A titled block of text: a structured-abstract segment (label "BACKGROUND") or a body section.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Section {
    pub title: String,
    pub text: String,
}

/// A MeSH descriptor with its major-topic flag and qualifiers.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct MeshHeading {
    pub descriptor: String,
    /// Descriptor unique id (e.g. D009369), when given.
    pub ui: Option<String>,
    /// The descriptor itself, or any of its qualifiers, is a major topic.
    pub major: bool,
    pub qualifiers: Vec<String>,
}

/// A cited work, by whichever ids the citing article gives.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Reference {
    pub pmid: Option<String>,
    pub pmcid: Option<String>,
    pub doi: Option<String>,
}

impl Reference {
    pub fn is_empty(&self) -> bool {
        self.pmid.is_none() && self.pmcid.is_none() && self.doi.is_none()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RawArticle {
    /// The article's id in the corpus: its PMCID, else `pmid:N`, else `doi:…` (see [`RawArticle::canonical_id`]).
    pub id: String,
    pub format: Option<SourceFormat>,
    pub pmid: Option<String>,
    /// With the "PMC" prefix.
    pub pmcid: Option<String>,
    pub doi: Option<String>,
    pub title: String,
    /// The abstract as one text: segments joined with a space.
    pub abstract_text: String,
    /// Labelled segments of a structured abstract (one unlabelled segment otherwise).
    pub abstract_sections: Vec<Section>,
    /// Full-text body sections (JATS), titles kept apart from the text.
    pub body_sections: Vec<Section>,
    pub keywords: Vec<String>,
    pub mesh: Vec<MeshHeading>,
    pub publication_types: Vec<String>,
    /// `YYYY`, `YYYY-MM` or `YYYY-MM-DD`.
    pub pub_date: Option<String>,
    pub journal: Option<String>,
    /// "Family Given" or a collective name.
    pub authors: Vec<String>,
    pub article_type: Option<String>,
    pub license: Option<String>,
    pub references: Vec<Reference>,
}

impl RawArticle {
    /// About how many bytes the article holds: its text, and a fixed cost per list item. What
    /// the fetcher's byte budgets for buffered articles count.
    pub fn approx_bytes(&self) -> usize {
        const ITEM: usize = 32;
        let sections = |s: &[Section]| {
            s.iter()
                .map(|s| s.title.len() + s.text.len() + ITEM)
                .sum::<usize>()
        };
        self.id.len()
            + self.title.len()
            + self.abstract_text.len()
            + sections(&self.abstract_sections)
            + sections(&self.body_sections)
            + self.keywords.iter().map(|k| k.len() + ITEM).sum::<usize>()
            + self
                .mesh
                .iter()
                .map(|m| {
                    m.descriptor.len()
                        + m.qualifiers.iter().map(String::len).sum::<usize>()
                        + 2 * ITEM
                })
                .sum::<usize>()
            + (self.authors.len() + self.publication_types.len() + self.references.len()) * 2 * ITEM
            + self.authors.iter().map(String::len).sum::<usize>()
            + 256
    }

    /// PMCID if known (full texts are what PMC jobs are about), else `pmid:N`, else `doi:…`;
    /// None when the article has no id at all.
    pub fn canonical_id(&self) -> Option<String> {
        self.pmcid
            .clone()
            .or_else(|| self.pmid.as_ref().map(|p| format!("pmid:{p}")))
            .or_else(|| {
                self.doi
                    .as_ref()
                    .map(|d| format!("doi:{}", d.to_lowercase()))
            })
    }
}

/// "PMC123" for "123", "PMC123" or "pmc123".
pub fn normalize_pmcid(id: &str) -> String {
    let id = id.trim();
    let digits = id
        .strip_prefix("PMC")
        .or_else(|| id.strip_prefix("pmc"))
        .unwrap_or(id);
    format!("PMC{digits}")
}

/// 64-bit hashes of an article's ids ("pmid:N", "pmcid:N" without the PMC prefix, "doi:…" lower
/// case), appended to `out`: the one definition of "the same article" wherever ids are compared
/// (duplicates in the cleaner and the pair-builder, references to corpus articles).
pub fn id_keys(pmid: Option<&str>, pmcid: Option<&str>, doi: Option<&str>, out: &mut Vec<u64>) {
    let hash = |prefix: &[u8], value: &str| {
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        h.update(prefix);
        h.update(value.as_bytes());
        h.digest()
    };
    if let Some(p) = pmid {
        out.push(hash(b"pmid:", p.trim()));
    }
    if let Some(p) = pmcid {
        let p = p.trim();
        let digits = p
            .strip_prefix("PMC")
            .or_else(|| p.strip_prefix("pmc"))
            .unwrap_or(p);
        out.push(hash(b"pmcid:", digits));
    }
    if let Some(d) = doi {
        out.push(hash(b"doi:", &d.trim().to_lowercase()));
    }
}
