//! One raw part → one clean part: every text field through the [`TextRules`], abbreviations found,
//! `text` assembled from the configured fields, and records that are too short, not text-like or
//! duplicates dropped, each drop counted by reason.
//!
//! Duplicates are found within a part here (same pmid/pmcid/doi, or the same normalized content);
//! the fetcher already keeps ids unique across a job, and the pair-builder, which reads every
//! part, drops content duplicates across parts by `content_hash`.

use std::collections::HashSet;

use medembed_corpus::article::id_keys;
use medembed_corpus::clean::{CleanArticle, CleanPartStats};
use medembed_corpus::{RawArticle, Section};
use medembed_pipeline::config::{CleanSettings, TextField};

use crate::abbrev::{expand, find_abbreviations};
use crate::text::{TextRules, normalize_unicode};

/// Drop reasons, as counted in [`CleanPartStats::dropped`] and the metrics.
pub mod reason {
    pub const TOO_SHORT: &str = "too_short";
    pub const NOT_TEXT: &str = "not_text";
    pub const DUPLICATE_ID: &str = "duplicate_id";
    pub const DUPLICATE_CONTENT: &str = "duplicate_content";
}

/// The article cleaner: rules compiled once, settings fixed.
#[derive(Debug, Clone)]
pub struct Cleaner {
    rules: TextRules,
    settings: CleanSettings,
}

impl Cleaner {
    pub fn new(settings: &CleanSettings) -> Self {
        Self {
            rules: TextRules::new(),
            settings: settings.clone(),
        }
    }

    pub fn rules(&self) -> &TextRules {
        &self.rules
    }

    /// Cleans one part's articles, in order.
    pub fn clean_part(
        &self,
        part: u32,
        articles: &[RawArticle],
    ) -> (Vec<CleanArticle>, CleanPartStats) {
        let mut stats = CleanPartStats {
            part,
            input: articles.len() as u64,
            ..CleanPartStats::default()
        };
        let mut seen_ids: HashSet<u64> = HashSet::new();
        let mut ids: Vec<u64> = Vec::new();
        let mut seen_content: HashSet<u64> = HashSet::new();
        let mut kept = Vec::with_capacity(articles.len());
        for raw in articles {
            stats.text_bytes += text_bytes(raw);
            let article = self.clean_article(raw);
            ids.clear();
            id_keys(
                article.pmid.as_deref(),
                article.pmcid.as_deref(),
                article.doi.as_deref(),
                &mut ids,
            );
            let drop = if article.text.chars().count() < self.settings.min_text_chars {
                Some(reason::TOO_SHORT)
            } else if letter_ratio(&article.text) < self.settings.min_letter_ratio {
                Some(reason::NOT_TEXT)
            } else if ids.iter().any(|id| seen_ids.contains(id)) {
                Some(reason::DUPLICATE_ID)
            } else if !seen_content.insert(content_hash(&article.text)) {
                Some(reason::DUPLICATE_CONTENT)
            } else {
                None
            };
            if let Some(reason) = drop {
                *stats.dropped.entry(reason.to_string()).or_default() += 1;
                continue;
            }
            seen_ids.extend(&ids);
            stats.abbreviations += article.abbreviations.len() as u64;
            kept.push(article);
        }
        stats.kept = kept.len() as u64;
        (kept, stats)
    }

    /// Cleans one article (no filtering).
    pub fn clean_article(&self, raw: &RawArticle) -> CleanArticle {
        let style = self.rules.citation_style(
            std::iter::once(raw.abstract_text.as_str())
                .chain(raw.body_sections.iter().map(|s| s.text.as_str())),
        );
        let clean = |t: &str| self.rules.clean_article_text(t, style);
        let title = clean(&raw.title);
        let mut abstract_text = clean(&raw.abstract_text);
        let wants_body =
            self.settings.keep_body || self.settings.text_fields.contains(&TextField::Body);
        let mut body_sections: Vec<Section> = if wants_body {
            raw.body_sections
                .iter()
                .map(|s| Section {
                    title: clean(&s.title),
                    text: clean(&s.text),
                })
                .filter(|s| !s.text.is_empty())
                .collect()
        } else {
            Vec::new()
        };

        let mut abbreviations = Vec::new();
        find_abbreviations(&title, &mut abbreviations);
        find_abbreviations(&abstract_text, &mut abbreviations);
        for s in &body_sections {
            find_abbreviations(&s.text, &mut abbreviations);
        }
        if self.settings.expand_abbreviations && !abbreviations.is_empty() {
            abstract_text = expand(&abstract_text, &abbreviations);
            for s in &mut body_sections {
                s.text = expand(&s.text, &abbreviations);
            }
        }

        let mut text = String::new();
        for field in &self.settings.text_fields {
            match field {
                TextField::Title => push_sentence(&mut text, &title),
                TextField::Abstract => push_sentence(&mut text, &abstract_text),
                TextField::Body => {
                    for s in &body_sections {
                        push_sentence(&mut text, &s.text);
                    }
                }
            }
        }
        if !self.settings.keep_body {
            body_sections.clear();
        }
        let content_hash = format!("{:016x}", content_hash(&text));
        CleanArticle {
            id: raw.id.clone(),
            pmid: raw.pmid.clone(),
            pmcid: raw.pmcid.clone(),
            doi: raw.doi.clone(),
            title,
            abstract_text,
            body_sections,
            mesh: raw.mesh.clone(),
            keywords: raw
                .keywords
                .iter()
                .map(|k| crate::text::tidy(&normalize_unicode(k)))
                .filter(|k| !k.is_empty())
                .collect(),
            references: raw.references.clone(),
            abbreviations,
            pub_date: raw.pub_date.clone(),
            journal: raw.journal.clone(),
            text,
            content_hash,
        }
    }
}

/// Appends `part` to `text` as a sentence of its own: a title without a final stop gets one.
fn push_sentence(text: &mut String, part: &str) {
    if part.is_empty() {
        return;
    }
    if !text.is_empty() {
        if !text.ends_with(['.', '?', '!', ':']) {
            text.push('.');
        }
        text.push(' ');
    }
    text.push_str(part);
}

fn text_bytes(raw: &RawArticle) -> u64 {
    (raw.title.len()
        + raw.abstract_text.len()
        + raw
            .body_sections
            .iter()
            .map(|s| s.title.len() + s.text.len())
            .sum::<usize>()) as u64
}

/// Letters over non-space characters; 0 for empty text.
fn letter_ratio(text: &str) -> f64 {
    let (mut letters, mut total) = (0usize, 0usize);
    for c in text.chars().filter(|c| !c.is_whitespace()) {
        total += 1;
        if c.is_alphabetic() {
            letters += 1;
        }
    }
    if total == 0 {
        0.0
    } else {
        letters as f64 / total as f64
    }
}

/// A hash of the text's words, lower-cased, punctuation and spacing ignored: the same abstract
/// from PubMed and from PMC (different dashes, a stray space) hashes the same.
pub fn content_hash(text: &str) -> u64 {
    let mut normalized = String::with_capacity(text.len());
    for word in text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
    {
        if !normalized.is_empty() {
            normalized.push(' ');
        }
        normalized.extend(word.chars().flat_map(char::to_lowercase));
    }
    xxhash_rust::xxh3::xxh3_64(normalized.as_bytes())
}
