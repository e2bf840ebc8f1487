//! Cleaner throughput on one core: the text of the real fixture articles (titles, abstracts and
//! body sections of every PubMed and JATS fixture), repeated to ≥ 64 MB, cleaned article by
//! article exactly as the clean stage does (every rule, abbreviation finding, filters, `text`).
//! Baseline in the same run: a naive multi-pass regex cleaner of the kind the original project
//! used (one `replace_all` per rule: parenthesized numbers, brackets, URLs, emails, whitespace),
//! which does less and is wrong more often, on the same text. Prints one JSON line.
//! Run: `cargo bench -p medembed-cleaner --bench clean_text`.

use std::path::Path;
use std::time::Instant;

use medembed_cleaner::Cleaner;
use medembed_fetcher::RawArticle;
use medembed_fetcher::files::read_local;
use medembed_fetcher::xml::Limits;
use medembed_pipeline::config::Settings;
use regex::Regex;

const TARGET_BYTES: u64 = 64 * 1024 * 1024;

fn fixture_articles() -> Vec<RawArticle> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../fetcher/tests/fixtures");
    ["pubmed", "jats"]
        .iter()
        .flat_map(|dir| {
            read_local(Path::new(&format!("{root}/{dir}")), Limits::default())
                .expect("fixtures parse")
        })
        .collect()
}

fn text_bytes(a: &RawArticle) -> u64 {
    (a.title.len()
        + a.abstract_text.len()
        + a.body_sections
            .iter()
            .map(|s| s.title.len() + s.text.len())
            .sum::<usize>()) as u64
}

fn main() {
    let articles = fixture_articles();
    let per_round: u64 = articles.iter().map(text_bytes).sum();
    let rounds = TARGET_BYTES.div_ceil(per_round) as usize;
    // Distinct ids per round, so the within-part duplicate check does not drop the repeats
    // before they are cleaned (content duplicates are still found: that work is measured too).
    let corpus: Vec<RawArticle> = (0..rounds)
        .flat_map(|r| {
            articles.iter().map(move |a| {
                let mut a = a.clone();
                a.id = format!("{}-{r}", a.id);
                a.pmid = None;
                a.pmcid = None;
                a.doi = None;
                a
            })
        })
        .collect();
    let bytes: u64 = corpus.iter().map(text_bytes).sum();
    let mb = bytes as f64 / 1e6;

    let cleaner = Cleaner::new(&Settings::load(None).expect("defaults").clean);
    // One warm-up part, then the measured run, parts of 500 as the stage cleans them.
    let _ = cleaner.clean_part(0, &corpus[..500.min(corpus.len())]);
    let start = Instant::now();
    let mut kept = 0;
    for (i, part) in corpus.chunks(500).enumerate() {
        kept += cleaner.clean_part(i as u32, part).0.len();
    }
    let cleaner_s = start.elapsed().as_secs_f64();

    let naive = [
        Regex::new(r"\([^()]*\d[^()]*\)").expect("regex"),
        Regex::new(r"\[[^\]]*\]").expect("regex"),
        Regex::new(r"https?://\S+|www\.\S+").expect("regex"),
        Regex::new(r"\S+@\S+").expect("regex"),
        Regex::new(r"\s+").expect("regex"),
    ];
    let start = Instant::now();
    let mut naive_chars = 0usize;
    for a in &corpus {
        for text in std::iter::once(&a.title)
            .chain(std::iter::once(&a.abstract_text))
            .chain(a.body_sections.iter().map(|s| &s.text))
        {
            let mut t = text.clone();
            for (i, re) in naive.iter().enumerate() {
                t = re
                    .replace_all(&t, if i == 4 { " " } else { "" })
                    .into_owned();
            }
            naive_chars += t.len();
        }
    }
    let naive_s = start.elapsed().as_secs_f64();
    assert!(kept > 0 && naive_chars > 0);

    println!(
        "{}",
        serde_json::json!({
            "name": "cleaner_throughput",
            "input_mb": (mb * 10.0).round() / 10.0,
            "articles": corpus.len(),
            "cores": 1,
            "cleaner_mb_per_s": (mb / cleaner_s * 10.0).round() / 10.0,
            "baseline_naive_multipass_regex_mb_per_s": (mb / naive_s * 10.0).round() / 10.0,
            "goal_mb_per_s": 50,
        })
    );
}
