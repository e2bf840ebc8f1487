//! The pair rules' guarantees on a 20,000-document synthetic corpus with a realistic MeSH
//! distribution and citation graph: no leakage across splits, no self or duplicate pairs, the
//! per-document cap, negatives that are really unrelated, and the same output for the same seed.

use std::collections::{HashMap, HashSet};

use medembed_corpus::pairs::Split;
use medembed_pair_builder::build::{PairOutputs, PairRow, build_pairs};
use medembed_pair_builder::corpus::{Corpus, CorpusBuilder};
use medembed_pair_builder::synthetic::SyntheticCorpus;
use medembed_pair_builder::terms::TermIndex;
use medembed_pipeline::config::{PairSettings, Settings};

fn settings() -> PairSettings {
    Settings::load(None).expect("defaults").pairs
}

fn corpus(settings: &PairSettings, n: usize) -> Corpus {
    let synthetic = SyntheticCorpus::new(n);
    let mut builder = CorpusBuilder::new(settings);
    for start in (0..n).step_by(1000) {
        builder.add(synthetic.articles(start..(start + 1000).min(n)));
    }
    builder.finish()
}

fn all_rows(out: &PairOutputs) -> Vec<(Split, PairRow)> {
    out.pairs
        .iter()
        .flat_map(|(s, rows)| rows.iter().map(move |r| (*s, *r)))
        .collect()
}

#[test]
fn pairs_never_leak_across_splits_and_respect_every_rule() {
    let settings = settings();
    let corpus = corpus(&settings, 20_000);
    let out = build_pairs(&corpus, &settings);
    let rows = all_rows(&out);
    let by_source = |s: &str| rows.iter().filter(|(_, r)| r.source == s).count();
    println!(
        "stats: {}",
        serde_json::to_string(&out.stats).expect("json")
    );
    assert!(
        by_source("citation") > 10_000,
        "citation pairs: {}",
        by_source("citation")
    );
    assert!(
        by_source("mesh") > 1_000,
        "mesh pairs: {}",
        by_source("mesh")
    );
    assert!(out.stats.dropped_pairs["cross_split"] > 0);
    assert!(
        out.stats.dropped_pairs["per_document_cap"] > 0,
        "hubs were capped"
    );

    let mesh = TermIndex::new(
        &corpus.mesh,
        corpus.mesh_terms,
        settings.major_weight,
        usize::MAX,
    );
    let mut seen = HashSet::new();
    let mut per_doc: HashMap<u32, usize> = HashMap::new();
    let mut doc_split: HashMap<u32, Split> = HashMap::new();
    for (split, r) in &rows {
        assert_ne!(r.a, r.b, "self-pair");
        assert!(
            seen.insert((r.a.min(r.b), r.a.max(r.b))),
            "duplicate pair {r:?}"
        );
        for d in [r.a, r.b] {
            assert_eq!(
                corpus.docs[d as usize].split, *split,
                "document in its own split"
            );
            assert_eq!(
                *doc_split.entry(d).or_insert(*split),
                *split,
                "document in two splits"
            );
        }
        let cites = corpus.references[r.a as usize].contains(&r.b)
            || corpus.references[r.b as usize].contains(&r.a);
        match r.source {
            "citation" => assert!(cites, "a citation pair cites"),
            "mesh" => {
                assert!(mesh.score(r.a as usize, r.b as usize) >= settings.mesh_threshold as f32);
                assert!((mesh.score(r.a as usize, r.b as usize) - r.score).abs() < 1e-5);
            }
            "random" => {
                assert!(!cites, "a negative has no citation link");
                let terms = |d: u32| -> HashSet<u32> {
                    corpus.mesh[d as usize].iter().map(|t| t.id).collect()
                };
                assert!(
                    terms(r.a).is_disjoint(&terms(r.b)),
                    "a negative shares no descriptor"
                );
            }
            other => panic!("unexpected source {other}"),
        }
        if r.label == 1.0 {
            *per_doc.entry(r.a).or_default() += 1;
            *per_doc.entry(r.b).or_default() += 1;
        }
    }
    assert!(
        per_doc
            .values()
            .all(|&n| n <= settings.max_pairs_per_document)
    );
    // 1:1 negatives per split.
    for (split, rows) in &out.pairs {
        let positives = rows.iter().filter(|r| r.label == 1.0).count();
        let negatives = rows.len() - positives;
        assert_eq!(positives, negatives, "{split}: negative_ratio 1");
    }
}

#[test]
fn the_same_seed_gives_the_same_pairs_and_hard_negatives_are_near_misses() {
    let mut settings = settings();
    let corpus = corpus(&settings, 5_000);
    let a = build_pairs(&corpus, &settings);
    let b = build_pairs(&corpus, &settings);
    assert_eq!(a.pairs, b.pairs);
    assert_eq!(a.eval_queries, b.eval_queries);

    settings.hard_negatives = true;
    let hard = build_pairs(&corpus, &settings);
    let mesh = TermIndex::new(
        &corpus.mesh,
        corpus.mesh_terms,
        settings.major_weight,
        usize::MAX,
    );
    let rows = all_rows(&hard);
    let hard_rows: Vec<&PairRow> = rows
        .iter()
        .map(|(_, r)| r)
        .filter(|r| r.source == "hard")
        .collect();
    assert!(!hard_rows.is_empty());
    for r in &hard_rows {
        let score = mesh.score(r.a as usize, r.b as usize);
        assert!(
            score > 0.0 && score < settings.mesh_threshold as f32,
            "near miss: {score}"
        );
        assert_eq!(r.label, 0.0);
    }
    for (split, rows) in &hard.pairs {
        let positives = rows.iter().filter(|r| r.label == 1.0).count();
        let hard = rows.iter().filter(|r| r.source == "hard").count();
        assert!(
            hard <= positives / 2,
            "{split}: hard negatives are at most half"
        );
        assert_eq!(rows.len() - positives, positives, "{split}: still 1:1");
    }
}
