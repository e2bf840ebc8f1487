//! The text rules: what the cleaner removes from and normalizes in a piece of article text.
//!
//! Order matters and is fixed: Unicode is normalized first (NFKC, every dash to `-`, odd spaces to
//! a space, invisible characters out), so the removal rules only ever see one kind of dash; then
//! figure/table references, citation markers, URLs and emails are removed; last, whitespace and
//! the punctuation left around a removal are tidied ("shown in (Fig. 2)." → "shown in.").
//!
//! What must stay is as important as what goes: parenthesized years "(2019)", statistics
//! "(n = 45)", "(95% CI 1.2-3.4)", "(P < 0.05)", measurements "(10 mg/kg)", enumerations
//! "(1) we measured …", and scales "(grade 1-3)" are kept. A parenthesized number list is taken
//! for a citation only when it looks like one: a list or range of small integers, or a single
//! one right before punctuation, not after a word that counts things ("stage (1-3)").

use std::borrow::Cow;

use regex::Regex;
use unicode_normalization::char::canonical_combining_class;
use unicode_normalization::{IsNormalized, UnicodeNormalization, is_nfkc_quick};

/// Words after which a parenthesized number is a value, not a citation.
const COUNTING_WORDS: &[&str] = &[
    "grade", "grades", "stage", "stages", "score", "scores", "scale", "type", "types", "class",
    "phase", "level", "levels", "step", "steps", "group", "groups", "range", "day", "days", "week",
    "weeks", "year", "years", "visit", "cycle", "cycles", "arm", "cohort", "n", "no", "number",
    "lane", "lanes", "patient", "patients", "case", "cases", "item", "items", "question",
    "equation", "eq", "eqs",
];

/// How an article marks its citations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CitationStyle {
    /// "[12]", "[1-3]": parenthesized numbers are values, never citations.
    Brackets,
    /// "(12)", "(1-3)", or no numeric citations seen: parenthesized numbers are judged one by one.
    Parentheses,
}

/// The compiled rules; build once, use from any thread.
#[derive(Debug, Clone)]
pub struct TextRules {
    /// Citation markers in brackets or parentheses, and figure/table references (parenthesized
    /// or bare): one pass finds them all; [`TextRules::remove_markers`] decides per match.
    markers: Regex,
    /// The bracketed-citation part of `markers` alone, to judge an article's citation style.
    bracket_citation: Regex,
    url: Regex,
    email: Regex,
}

impl Default for TextRules {
    fn default() -> Self {
        Self::new()
    }
}

impl TextRules {
    pub fn new() -> Self {
        // A figure/table reference: "Fig. 2A-C", "Figs. 1 and 2", "Table S1", "Figures 3b and 4".
        let label = r"(?:Fig(?:ure)?s?\.?|FIG(?:URE)?S?\.?|Tables?|TABLES?)";
        let number = r"S?[0-9]{1,3}[A-Za-z]?(?:\s*-\s*S?[0-9]{0,3}[A-Za-z]?)?";
        let more = r"(?:\s*(?:,|and|&)\s*S?[0-9]{1,3}[A-Za-z]?(?:\s*-\s*S?[0-9]{0,3}[A-Za-z]?)?)*";
        let figure = format!(
            r"(?:(?:Supplementary|Supplemental|Suppl\.|Extended Data|Additional file [0-9]+:?)\s+)?{label}\s*{number}{more}"
        );
        // [1], [1, 2], [1-3], [4-6,9] (en dashes too: the style is judged before normalizing)
        let bracket_citation = r"\[\s*[0-9]{1,4}(?:\s*[-,\u{2013}]\s*[0-9]{1,4})*\s*\]";
        let markers = [
            bracket_citation.to_string(),
            // (1), (1, 2), (1-3): decided in remove_markers
            r"\(\s*[0-9]{1,3}(?:\s*[-,]\s*[0-9]{1,3})*\s*\)".to_string(),
            // "(see Figure 3; …": the "(" stays, the rest of the group is tidied
            format!(r"\(\s*(?:see|See|cf\.|e\.g\.,?)\s+{figure}(?-u:\b)"),
            // Fig. 2A-C, Figure 3, Table S1, Supplementary Fig. 4, in running text or in
            // parentheses: "(Figure 2; p = 0.004)" keeps "(p = 0.004)", and tidy drops "()"
            format!(r"(?-u:\b){figure}(?-u:\b)"),
        ]
        .join("|");
        Self {
            markers: Regex::new(&markers).expect("the marker pattern is valid"),
            bracket_citation: Regex::new(bracket_citation).expect("the bracket pattern is valid"),
            url: Regex::new(r#"(?:(?-u:\b)[a-zA-Z][a-zA-Z0-9+.-]*://|(?-u:\b)www\.)[^\s<>"]+"#)
                .expect("the URL pattern is valid"),
            email: Regex::new(r"(?-u:\b)[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}(?-u:\b)")
                .expect("the email pattern is valid"),
        }
    }

    /// Applies every rule: normalize, remove markers, URLs and emails, tidy. Parenthesized
    /// numbers may be citations (see [`TextRules::clean_article_text`]).
    pub fn clean(&self, text: &str) -> String {
        self.clean_article_text(text, CitationStyle::Parentheses)
    }

    /// As [`TextRules::clean`], knowing how the article marks citations: an article that cites
    /// in brackets ("[12]") never cites in parentheses, so there "(1-5)" is always a value.
    pub fn clean_article_text(&self, text: &str, style: CitationStyle) -> String {
        let normalized = normalize_unicode(text);
        let without_markers = self.remove_markers(&normalized, style);
        let without_urls = self.remove_urls(&without_markers);
        let without_emails = self.remove_emails(&without_urls);
        tidy(&without_emails)
    }

    /// How an article marks citations, judged from all its text.
    pub fn citation_style<'a>(&self, texts: impl IntoIterator<Item = &'a str>) -> CitationStyle {
        let uses_brackets = texts
            .into_iter()
            .any(|t| t.contains('[') && self.bracket_citation.is_match(t));
        if uses_brackets {
            CitationStyle::Brackets
        } else {
            CitationStyle::Parentheses
        }
    }

    fn remove_markers<'a>(&self, text: &'a str, style: CitationStyle) -> Cow<'a, str> {
        let mut out = String::new();
        let mut last = 0;
        for m in self.markers.find_iter(text) {
            let s = m.as_str();
            let opens_group = s.starts_with('(');
            let numeric_group = opens_group
                && s[1..]
                    .trim_start()
                    .starts_with(|c: char| c.is_ascii_digit());
            if numeric_group
                && (style == CitationStyle::Brackets
                    || !is_parenthesized_citation(text, m.start(), m.end()))
            {
                continue;
            }
            if out.is_empty() {
                out.reserve(text.len());
            }
            out.push_str(&text[last..m.start()]);
            // "(see Figure 3; n = 4)": the group goes on after the reference.
            out.push_str(if opens_group && !numeric_group {
                "("
            } else {
                " "
            });
            last = m.end();
        }
        if last == 0 {
            return Cow::Borrowed(text);
        }
        out.push_str(&text[last..]);
        Cow::Owned(out)
    }

    fn remove_urls<'a>(&self, text: &'a str) -> Cow<'a, str> {
        if !text.contains("://") && !text.contains("www.") {
            return Cow::Borrowed(text);
        }
        let mut out = String::with_capacity(text.len());
        let mut last = 0;
        for m in self.url.find_iter(text) {
            // Sentence punctuation after a URL is not part of it: "see https://x.org/a)."
            let url = m
                .as_str()
                .trim_end_matches(['.', ',', ';', ':', ')', ']', '\'']);
            out.push_str(&text[last..m.start()]);
            out.push(' ');
            last = m.start() + url.len();
        }
        out.push_str(&text[last..]);
        Cow::Owned(out)
    }

    fn remove_emails<'a>(&self, text: &'a str) -> Cow<'a, str> {
        if !text.contains('@') {
            return Cow::Borrowed(text);
        }
        self.email.replace_all(text, " ")
    }
}

/// A parenthesized integer list at `start..end` of `text` is a citation when it is a list or a
/// range, or a single number right before punctuation; never after a counting word.
fn is_parenthesized_citation(text: &str, start: usize, end: usize) -> bool {
    let inner = &text[start + 1..end - 1];
    let before = text[..start].trim_end();
    let previous_word = before
        .rsplit(|c: char| !c.is_alphanumeric())
        .next()
        .unwrap_or("");
    if before.is_empty()
        || before.ends_with(|c: char| c.is_ascii_digit() || c == '=')
        || COUNTING_WORDS.contains(&previous_word.to_lowercase().as_str())
    {
        // At the start of the text, after a number ("45 (42-49)") or a counting word
        // ("grade (1-3)"): an enumeration, an interval or a value.
        return false;
    }
    if inner.contains('-') {
        let numbers: Vec<u32> = inner
            .split(['-', ','])
            .filter_map(|n| n.trim().parse().ok())
            .collect();
        // "(3-1)" is a score, not a range of references.
        return numbers.windows(2).all(|w| w[0] < w[1]);
    }
    if inner.contains(',') {
        return true;
    }
    let after = text[end..].trim_start();
    after.is_empty() || after.starts_with(['.', ',', ';', ':'])
}

/// NFKC, every dash and minus to `-`, odd spaces to a space, invisible characters removed.
/// ASCII text (most of it) passes through untouched.
pub fn normalize_unicode(text: &str) -> Cow<'_, str> {
    if text.is_ascii() {
        return Cow::Borrowed(text);
    }
    let nfkc: Cow<'_, str> = if non_ascii_is_nfkc(text) {
        Cow::Borrowed(text)
    } else {
        Cow::Owned(text.nfkc().collect())
    };
    // Copy ASCII runs whole; only the other characters are looked at one by one.
    let mut out = String::with_capacity(nfkc.len());
    let mut rest: &str = &nfkc;
    while let Some(i) = rest.bytes().position(|b| !b.is_ascii()) {
        out.push_str(&rest[..i]);
        let c = rest[i..]
            .chars()
            .next()
            .expect("a character starts at a non-ASCII byte");
        match c {
            '\u{2010}'..='\u{2015}' | '\u{2212}' | '\u{FE58}' | '\u{FE63}' | '\u{FF0D}' => {
                out.push('-')
            }
            '\u{00AD}' | '\u{200B}'..='\u{200D}' | '\u{2060}' | '\u{FEFF}' => {}
            c if c.is_whitespace() => out.push(' '),
            c => out.push(c),
        }
        rest = &rest[i + c.len_utf8()..];
    }
    out.push_str(rest);
    Cow::Owned(out)
}

/// Whether NFKC leaves `text` as it is, looking only at its non-ASCII characters (ASCII is
/// always NFKC and never combines): each must be NFKC on its own and not a combining mark.
fn non_ascii_is_nfkc(text: &str) -> bool {
    text.chars().filter(|c| !c.is_ascii()).all(|c| {
        canonical_combining_class(c) == 0 && is_nfkc_quick(std::iter::once(c)) == IsNormalized::Yes
    })
}

/// Collapses whitespace and repairs the punctuation a removal leaves: no space before `.,;:)]`
/// or after `([`, no empty `()`/`[]`, no doubled `,`/`;` before a sentence end.
pub fn tidy(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut pending_space = false;
    for c in text.chars() {
        if c.is_whitespace() {
            pending_space = !out.is_empty();
            continue;
        }
        match c {
            '.' | ',' | ';' | ':' | ')' | ']' | '!' | '?' => {
                // "in (Fig. 2)." → "in ." → "in."; ", ." → "."; "(,)" → "()".
                if matches!(c, '.' | ';' | ':' | ',') {
                    while out.ends_with([',', ';']) && !out.ends_with("..") {
                        out.pop();
                        while out.ends_with(' ') {
                            out.pop();
                        }
                    }
                }
                if matches!(c, ')' | ']') {
                    // "(p = 0.002; Figure 1)" → "(p = 0.002; )" → "(p = 0.002)".
                    while out.ends_with([',', ';', ':']) {
                        out.pop();
                        while out.ends_with(' ') {
                            out.pop();
                        }
                    }
                }
                if matches!(c, ',' | ';' | ':') && out.ends_with(['(', '[']) {
                    // "(Figure 2; p = 0.004)" → "(; p = 0.004)" → "(p = 0.004)".
                    continue;
                }
                if (c == ')' && out.ends_with('(')) || (c == ']' && out.ends_with('[')) {
                    out.pop();
                    while out.ends_with(' ') {
                        out.pop();
                    }
                    pending_space = !out.is_empty();
                    continue;
                }
                pending_space = false;
                out.push(c);
            }
            _ => {
                if pending_space && !out.ends_with(['(', '[']) {
                    out.push(' ');
                }
                pending_space = false;
                out.push(c);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clean(s: &str) -> String {
        TextRules::new().clean(s)
    }

    #[test]
    fn tidy_repairs_what_removals_leave() {
        assert_eq!(tidy("shown in  ."), "shown in.");
        assert_eq!(tidy("a ( ) b"), "a b");
        assert_eq!(tidy("a [ ] , b"), "a, b");
        assert_eq!(tidy("x ,  ."), "x.");
        assert_eq!(tidy("  (  a  )  "), "(a)");
    }

    #[test]
    fn unicode_is_normalized() {
        assert_eq!(
            clean("IL\u{2011}6 \u{2013} TNF\u{2212}\u{03B1}"),
            "IL-6 - TNF-\u{03B1}"
        );
        assert_eq!(clean("10\u{00A0}mg\u{200B}/kg"), "10 mg/kg");
        assert_eq!(clean("\u{FB01}brosis"), "fibrosis");
        assert_eq!(clean("co\u{00AD}operation"), "cooperation");
    }
}
