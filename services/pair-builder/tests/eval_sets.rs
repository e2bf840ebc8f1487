//! The job's own evaluation sets are query-style: held-out titles as queries, held-out
//! documents without their titles as the corpus, graded self (3) > citation (2) > MeSH (1). Checked
//! on five hand-made articles whose relations are known.

use medembed_corpus::clean::CleanArticle;
use medembed_corpus::pairs::{EvalQuery, Split};
use medembed_corpus::{MeshHeading, Reference};
use medembed_pair_builder::build::build_pairs;
use medembed_pair_builder::corpus::CorpusBuilder;
use medembed_pipeline::config::{PairSettings, Settings};

fn article(n: u32, title: &str, abstract_text: &str, mesh: &[&str], cites: &[u32]) -> CleanArticle {
    CleanArticle {
        id: format!("pmid:{n}"),
        pmid: Some(n.to_string()),
        title: title.into(),
        abstract_text: abstract_text.into(),
        text: format!("{title}. {abstract_text}"),
        mesh: mesh
            .iter()
            .map(|d| MeshHeading {
                descriptor: d.to_string(),
                major: true,
                ..MeshHeading::default()
            })
            .collect(),
        references: cites
            .iter()
            .map(|c| Reference {
                pmid: Some(c.to_string()),
                ..Reference::default()
            })
            .collect(),
        content_hash: format!("{n:016x}"),
        ..CleanArticle::default()
    }
}

/// Every document in val, so the evaluation set holds them all.
fn val_only() -> PairSettings {
    let mut s = Settings::load(None).expect("defaults").pairs;
    s.train_ratio = 0.0;
    s.val_ratio = 1.0;
    s.test_ratio = 0.0;
    s
}

#[test]
fn held_out_titles_are_graded_self_then_citation_then_mesh() {
    let settings = val_only();
    let mut builder = CorpusBuilder::new(&settings);
    builder.add(vec![
        article(
            1,
            "Tau spreads between neurons",
            "We followed tau seeds.",
            &["Tauopathies", "Neurons"],
            &[2],
        ),
        article(
            2,
            "Amyloid plaques in aged mice",
            "Plaques grew with age.",
            &["Plaque, Amyloid"],
            &[],
        ),
        article(
            3,
            "Neuronal tau in tauopathies",
            "Tau aggregates in neurons.",
            &["Tauopathies", "Neurons"],
            &[],
        ),
        article(
            4,
            "Sleep and memory in adults",
            "Sleep loss impairs recall.",
            &["Sleep"],
            &[],
        ),
        // Two words: in the corpus, but no query.
        article(5, "Short title", "Nothing here relates.", &["Diet"], &[]),
    ]);
    let corpus = builder.finish();
    let out = build_pairs(&corpus, &settings);

    let queries = &out.eval_queries[&Split::Val];
    let by_id = |id: &str| -> &EvalQuery {
        queries
            .iter()
            .find(|q| q.query_id == EvalQuery::title_query_id(id))
            .unwrap_or_else(|| panic!("a query for {id}: {queries:?}"))
    };
    assert_eq!(
        queries.len(),
        4,
        "articles 1-4 have titles of 3 words or more"
    );
    let judged = |q: &EvalQuery| -> Vec<(String, f32)> {
        q.relevant_ids
            .iter()
            .cloned()
            .zip(q.gains.iter().copied())
            .collect()
    };
    let one = by_id("pmid:1");
    assert_eq!(one.query, "Tau spreads between neurons");
    // Itself 3, the article it cites 2, the one sharing its MeSH descriptors 1.
    assert_eq!(
        judged(one),
        vec![
            ("pmid:1".into(), 3.0),
            ("pmid:2".into(), 2.0),
            ("pmid:3".into(), 1.0)
        ]
    );
    assert_eq!(
        judged(by_id("pmid:2")),
        vec![("pmid:1".into(), 2.0), ("pmid:2".into(), 3.0)]
    );
    assert_eq!(judged(by_id("pmid:4")), vec![("pmid:4".into(), 3.0)]);

    // The corpus searched: every val document, without its title.
    let documents = &out.eval_documents[&Split::Val];
    assert_eq!(documents.len(), 5);
    let text = |id: &str| {
        &documents
            .iter()
            .find(|d| d.id == id)
            .expect("document")
            .text
    };
    assert_eq!(text("pmid:1"), "We followed tau seeds.");
    assert_eq!(text("pmid:5"), "Nothing here relates.");
    assert!(documents.iter().all(|d| !d.text.contains("Tau spreads")));
}
