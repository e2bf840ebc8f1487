//! Reading [`RawArticle`]s out of XML: [`ArticleReader`] streams PubMed or JATS records; the
//! record types themselves are the corpus contract (`medembed-corpus`).

use std::io::BufRead;

pub use medembed_corpus::article::{
    MeshHeading, RawArticle, Reference, Section, SourceFormat, normalize_pmcid,
};

use crate::xml::{Element, Limits, RecordReader, XmlError};

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
