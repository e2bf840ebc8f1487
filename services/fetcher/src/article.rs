//! [`RawArticle`]: one article as the fetcher extracts it, the same shape for PubMed and JATS.

use std::io::BufRead;

use serde::{Deserialize, Serialize};

use crate::xml::{Element, Limits, RecordReader, XmlError};

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

/// Turns year / month (number or "Nov") / day into `YYYY[-MM[-DD]]`; None without a year.
pub fn format_date(year: Option<&str>, month: Option<&str>, day: Option<&str>) -> Option<String> {
    let year = year?.trim();
    if year.len() != 4 || !year.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let month = month.and_then(|m| {
        let m = m.trim();
        m.parse::<u32>()
            .ok()
            .filter(|n| (1..=12).contains(n))
            .or_else(|| {
                const NAMES: [&str; 12] = [
                    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov",
                    "dec",
                ];
                let lower = m.to_ascii_lowercase();
                NAMES
                    .iter()
                    .position(|n| lower.starts_with(n))
                    .map(|i| i as u32 + 1)
            })
    });
    let day = day
        .and_then(|d| d.trim().parse::<u32>().ok())
        .filter(|d| (1..=31).contains(d));
    Some(match (month, day) {
        (Some(m), Some(d)) => format!("{year}-{m:02}-{d:02}"),
        (Some(m), None) => format!("{year}-{m:02}"),
        _ => year.to_string(),
    })
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

/// Streams the articles of one XML document (PubMed or JATS), one [`RawArticle`] at a time.
pub struct ArticleReader<R: BufRead> {
    records: RecordReader<R>,
    parse: fn(&Element) -> RawArticle,
}

impl<R: BufRead> std::fmt::Debug for ArticleReader<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArticleReader")
            .field("records", &self.records)
            .finish_non_exhaustive()
    }
}

impl<R: BufRead> ArticleReader<R> {
    /// PubMed XML: `PubmedArticleSet`, `MedlineCitationSet`. `source_name` names it in errors.
    pub fn pubmed(input: R, source_name: impl Into<String>, limits: Limits) -> Self {
        Self {
            records: RecordReader::new(input, source_name, crate::pubmed::RECORDS, limits),
            parse: crate::pubmed::parse_record,
        }
    }

    /// JATS: `pmc-articleset`, a single `.nxml` article, OAI-PMH records.
    pub fn jats(input: R, source_name: impl Into<String>, limits: Limits) -> Self {
        Self {
            records: RecordReader::new(input, source_name, crate::jats::RECORDS, limits),
            parse: crate::jats::parse_article,
        }
    }
}

impl<R: BufRead> Iterator for ArticleReader<R> {
    type Item = Result<RawArticle, XmlError>;
    fn next(&mut self) -> Option<Self::Item> {
        self.records.next_record().transpose().map(|r| {
            r.map(|e| {
                let mut article = (self.parse)(&e);
                article.id = article.canonical_id().unwrap_or_default();
                article
            })
        })
    }
}
