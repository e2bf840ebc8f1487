//! Each pair rule on real articles: the fetcher's PubMed and JATS fixtures, parsed and cleaned as
//! the pipeline does. Texts, MeSH headings, keywords and reference lists are the articles' own;
//! the fixture papers do not cite each other, so the citation test adds one reference (by PMID,
//! PMCID or DOI) to a real reference list. All documents go to train here (ratio 1/0/0), so the
//! rules are seen without the split in the way; splits are tested on their own.

use std::collections::HashSet;
use std::path::Path;

use medembed_cleaner::Cleaner;
use medembed_corpus::Reference;
use medembed_corpus::clean::CleanArticle;
use medembed_corpus::pairs::{Split, pairs_from_batches};
use medembed_fetcher::files::read_local;
use medembed_fetcher::xml::Limits;
use medembed_pair_builder::build::{PairRow, build_pairs};
use medembed_pair_builder::corpus::{CorpusBuilder, normalize_keyword};
use medembed_pair_builder::output::{pair_batches, pairs_csv};
use medembed_pipeline::config::{PairSettings, Settings};

fn fixture_articles() -> Vec<CleanArticle> {
    let settings = Settings::load(None).expect("defaults");
    let cleaner = Cleaner::new(&settings.clean);
    let root = format!("{}/../fetcher/tests/fixtures", env!("CARGO_MANIFEST_DIR"));
    let mut out = Vec::new();
    for dir in ["pubmed", "jats"] {
        let raw = read_local(Path::new(&format!("{root}/{dir}")), Limits::default())
            .expect("fixtures parse");
        out.extend(cleaner.clean_part(0, &raw).0);
    }
    // Some fixture files hold the same article (a PMC record in two formats): keep the first, as
    // the pair-builder does.
    let mut seen = HashSet::new();
    out.retain(|a| {
        seen.insert(a.id.clone())
            && a.pmid
                .as_ref()
                .is_none_or(|p| seen.insert(format!("pmid {p}")))
    });
    out
}

fn train_only() -> PairSettings {
    let mut s = Settings::load(None).expect("defaults").pairs;
    s.train_ratio = 1.0;
    s.val_ratio = 0.0;
    s.test_ratio = 0.0;
    s.max_pairs_per_document = 1000;
    s.max_posting = 1_000_000;
    s
}

/// Positive pairs as (id, id, source), ids ordered.
fn positives(
    articles: Vec<CleanArticle>,
    settings: &PairSettings,
) -> Vec<(String, String, String, f32)> {
    let mut builder = CorpusBuilder::new(settings);
    builder.add(articles);
    let corpus = builder.finish();
    let out = build_pairs(&corpus, settings);
    let rows: Vec<PairRow> = out.pairs.values().flatten().copied().collect();
    rows.iter()
        .filter(|r| r.label == 1.0)
        .map(|r| {
            let (a, b) = (&corpus.docs[r.a as usize].id, &corpus.docs[r.b as usize].id);
            let (a, b) = if a < b { (a, b) } else { (b, a) };
            (a.clone(), b.clone(), r.source.to_string(), r.score)
        })
        .collect()
}

#[test]
fn a_citation_between_two_corpus_articles_is_a_pair_by_pmid_pmcid_or_doi() {
    let articles = fixture_articles();
    let citing = articles
        .iter()
        .position(|a| a.id == "PMC10618641")
        .expect("PMC10618641");
    let cited = articles
        .iter()
        .position(|a| a.id == "pmid:29768149")
        .expect("29768149");
    let cited_doi = articles[cited].doi.clone().expect("29768149 has a DOI");
    assert!(
        articles[citing].references.len() > 100,
        "a real reference list"
    );

    let mut settings = train_only();
    settings.sources = vec!["citation".into()];
    let none = positives(articles.clone(), &settings);
    assert!(
        none.is_empty(),
        "the fixture papers do not cite each other: {none:?}"
    );

    for reference in [
        Reference {
            pmid: Some("29768149".into()),
            pmcid: None,
            doi: None,
        },
        Reference {
            pmid: None,
            pmcid: None,
            doi: Some(cited_doi.to_uppercase()),
        },
    ] {
        let mut linked = articles.clone();
        linked[citing].references.push(reference.clone());
        // And one by PMCID, from a PubMed record to a PMC article ("6000000" without prefix).
        linked[cited].references.push(Reference {
            pmid: None,
            pmcid: Some("6000000".into()),
            doi: None,
        });
        let found = positives(linked, &settings);
        assert_eq!(
            found,
            vec![
                (
                    "PMC10618641".to_string(),
                    "pmid:29768149".to_string(),
                    "citation".to_string(),
                    1.0
                ),
                (
                    "PMC6000000".to_string(),
                    "pmid:29768149".to_string(),
                    "citation".to_string(),
                    1.0
                ),
            ],
            "reference {reference:?}"
        );
    }
}

#[test]
fn mesh_pairs_share_topic_descriptors_and_check_tags_alone_never_pair() {
    let articles = fixture_articles();
    let mut settings = train_only();
    settings.sources = vec!["mesh".into()];
    settings.mesh_threshold = 0.01;
    let found = positives(articles.clone(), &settings);
    let check: HashSet<String> = settings
        .check_tags
        .iter()
        .map(|t| t.to_lowercase())
        .collect();
    let topics = |id: &str| -> HashSet<String> {
        articles
            .iter()
            .find(|a| a.id == id)
            .expect("article")
            .mesh
            .iter()
            .map(|m| m.descriptor.to_lowercase())
            .filter(|d| !check.contains(d))
            .collect()
    };
    let all_mesh = |id: &str| -> HashSet<String> {
        articles
            .iter()
            .find(|a| a.id == id)
            .expect("article")
            .mesh
            .iter()
            .map(|m| m.descriptor.to_lowercase())
            .collect()
    };
    let with_mesh: Vec<&CleanArticle> = articles.iter().filter(|a| !a.mesh.is_empty()).collect();
    let mut expected = Vec::new();
    let mut only_check_tags = 0;
    for (i, a) in with_mesh.iter().enumerate() {
        for b in &with_mesh[i + 1..] {
            if !topics(&a.id).is_disjoint(&topics(&b.id)) {
                let (x, y) = if a.id < b.id {
                    (&a.id, &b.id)
                } else {
                    (&b.id, &a.id)
                };
                expected.push((x.clone(), y.clone()));
            } else if !all_mesh(&a.id).is_disjoint(&all_mesh(&b.id)) {
                only_check_tags += 1;
            }
        }
    }
    assert!(
        only_check_tags > 10,
        "real articles sharing only check tags: {only_check_tags}"
    );
    let mut got: Vec<(String, String)> = found
        .iter()
        .map(|(a, b, _, _)| (a.clone(), b.clone()))
        .collect();
    got.sort();
    expected.sort();
    assert!(!expected.is_empty());
    assert_eq!(
        got, expected,
        "a pair exactly when a topic descriptor is shared"
    );
    assert!(
        found
            .iter()
            .all(|(_, _, s, score)| s == "mesh" && *score > 0.0 && *score <= 1.0)
    );

    // At the default threshold, only the strongest overlaps remain, and they are real overlaps.
    settings.mesh_threshold = 0.15;
    let strong = positives(articles.clone(), &settings);
    assert!(strong.len() < got.len());
    for (a, b, _, score) in &strong {
        assert!(*score >= 0.15);
        let shared = topics(a).intersection(&topics(b)).count();
        assert!(shared >= 1, "{a} {b}");
    }
}

#[test]
fn keyword_pairs_join_records_without_mesh_by_normalized_keywords() {
    let articles = fixture_articles();
    let mut settings = train_only();
    settings.sources = vec!["keyword".into()];
    settings.keyword_threshold = 0.01;
    let found = positives(articles.clone(), &settings);
    let keywords = |id: &str| -> HashSet<String> {
        articles
            .iter()
            .find(|a| a.id == id)
            .expect("article")
            .keywords
            .iter()
            .map(|k| normalize_keyword(k))
            .collect()
    };
    let mesh_of = |id: &str| {
        articles
            .iter()
            .find(|a| a.id == id)
            .expect("article")
            .mesh
            .len()
    };
    assert!(!found.is_empty(), "fixture articles share author keywords");
    for (a, b, source, _) in &found {
        assert_eq!(source, "keyword");
        assert_eq!(
            mesh_of(a) + mesh_of(b),
            0,
            "keyword pairs only for records without MeSH"
        );
        let shared: Vec<String> = keywords(a).intersection(&keywords(b)).cloned().collect();
        assert!(!shared.is_empty(), "{a} {b}");
        println!("keyword pair {a} {b}: {shared:?}");
    }
}

#[test]
fn title_pairs_ask_with_the_title_and_answer_with_the_abstract_alone() {
    let articles = fixture_articles();
    let mut settings = train_only();
    settings.sources = vec!["title".into()];
    let mut builder = CorpusBuilder::new(&settings);
    builder.add(articles.clone());
    let corpus = builder.finish();
    let out = build_pairs(&corpus, &settings);
    let rows = &out.pairs[&Split::Train];
    let batches: Vec<_> = pair_batches(&corpus, rows).collect();
    let pairs = pairs_from_batches("train", &batches).expect("pairs");
    let titled: Vec<&CleanArticle> = articles
        .iter()
        .filter(|a| a.title.split_whitespace().count() >= 3 && !a.abstract_text.is_empty())
        .collect();
    assert!(titled.len() >= 20, "the fixtures have titled abstracts");
    let title_pairs: Vec<_> = pairs.iter().filter(|p| p.source == "title").collect();
    assert_eq!(
        title_pairs.len(),
        titled.len(),
        "one pair per titled article"
    );
    for p in &title_pairs {
        let article = titled
            .iter()
            .find(|a| a.id == p.id_a)
            .expect("a titled article");
        assert_eq!(p.id_a, p.id_b, "an article with itself");
        assert_eq!(p.label, 1.0);
        assert_eq!(p.text_a, article.title.trim());
        // The document side is the abstract: the clean text without its title sentence.
        assert_eq!(p.text_b, article.abstract_text, "{}", p.id_a);
        assert!(
            !p.text_b.contains(&p.text_a),
            "{}: the title leaks into its document",
            p.id_a
        );
    }
    // The CSV export writes the same two sides.
    let csv = String::from_utf8(pairs_csv(&corpus, rows)).expect("utf-8");
    let first = title_pairs[0];
    assert!(csv.contains(&format!("\"{}\",\"", first.text_a.replace('"', "\"\""))));
}
