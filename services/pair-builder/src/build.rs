//! From a [`Corpus`] to labelled pairs, evaluation sets and statistics.
//!
//! 1. Positives by rule: `citation` (A cites B, both in the corpus), `mesh` (weighted Jaccard of
//!    MeSH descriptors ≥ `mesh_threshold`), `keyword` (the same on normalized author keywords,
//!    for documents without MeSH). And `title`: each document's title (a query, the way users
//!    search) with its own text without the title ([`Doc::body`](crate::corpus::Doc::body)); it
//!    needs nothing but the text, so every corpus trains. Title pairs take no part in steps 2–3.
//! 2. A pair whose documents sit in different splits is dropped (`cross_split`); a pair found by
//!    several rules is kept once, under the strongest rule (citation, then MeSH, then keyword).
//! 3. The per-document cap: pairs are taken best first, the rules taking turns (the best pair
//!    of each rule, then the second best of each, …), and a pair is dropped
//!    (`per_document_cap`) once either document has `max_pairs_per_document` pairs.
//! 4. Negatives per split, `negative_ratio` per positive: pairs sharing no MeSH descriptor and no
//!    keyword and with no citation either way, drawn with a seeded RNG; with `hard_negatives`, up
//!    to half of them are near misses (sharing terms, below the threshold, no citation).
//! 5. Evaluation sets for val and test, query-style: each document of the split with a title
//!    query is a query; the documents searched are the split's documents without their titles;
//!    the judgements grade the query's own document [`SELF_GAIN`], a citation partner
//!    [`CITATION_GAIN`], a MeSH or keyword partner [`TERM_GAIN`] (relations found by the job's
//!    rules, before the cap). So the job's own evaluation asks what its users ask (a short query,
//!    its documents), not how alike two documents are.
//!
//! Every step is deterministic: same corpus, same settings, same seed → the same pairs in the
//! same order.

use std::collections::BTreeMap;

use medembed_corpus::pairs::{EvalDocument, EvalQuery, PairStats, Split};
use medembed_pipeline::config::PairSettings;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rustc_hash::FxHashSet;

use crate::corpus::{Corpus, Term};
use crate::terms::{Scored, TermIndex};

/// Gains of the query-style evaluation sets (and of `medembed dev-set`'s relations): the
/// query's own document, a document citing it or cited by it, one sharing MeSH descriptors or
/// keywords at the pairing thresholds.
pub const SELF_GAIN: f32 = 3.0;
pub const CITATION_GAIN: f32 = 2.0;
pub const TERM_GAIN: f32 = 1.0;

/// The rule that made a positive pair, in priority order (`title` pairs are a document with
/// itself and never compete with the others).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Source {
    Citation,
    Mesh,
    Keyword,
    Title,
}

impl Source {
    pub fn name(self) -> &'static str {
        match self {
            Source::Citation => "citation",
            Source::Mesh => "mesh",
            Source::Keyword => "keyword",
            Source::Title => "title",
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Positive {
    a: u32,
    b: u32,
    source: Source,
    score: f32,
}

#[derive(Debug, Clone, Copy)]
struct Negative {
    a: u32,
    b: u32,
    hard: bool,
    score: f32,
}

/// One output pair, by document index (texts are taken from the corpus when written).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PairRow {
    pub a: u32,
    pub b: u32,
    pub label: f32,
    pub source: &'static str,
    pub score: f32,
}

/// Everything the stage writes.
#[derive(Debug, Default)]
pub struct PairOutputs {
    pub pairs: BTreeMap<Split, Vec<PairRow>>,
    pub eval_queries: BTreeMap<Split, Vec<EvalQuery>>,
    pub eval_documents: BTreeMap<Split, Vec<EvalDocument>>,
    pub stats: PairStats,
}

fn pack(a: u32, b: u32) -> u64 {
    let (a, b) = if a < b { (a, b) } else { (b, a) };
    (u64::from(a) << 32) | u64::from(b)
}

fn shares_term(x: &[Term], y: &[Term]) -> bool {
    let (mut i, mut j) = (0, 0);
    while i < x.len() && j < y.len() {
        match x[i].id.cmp(&y[j].id) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => return true,
        }
    }
    false
}

fn cites(corpus: &Corpus, a: u32, b: u32) -> bool {
    corpus.references[a as usize].binary_search(&b).is_ok()
        || corpus.references[b as usize].binary_search(&a).is_ok()
}

/// Builds the pairs of a corpus.
pub fn build_pairs(corpus: &Corpus, settings: &PairSettings) -> PairOutputs {
    let mut dropped: BTreeMap<String, u64> = BTreeMap::new();
    let wants = |s: &str| settings.sources.iter().any(|x| x == s);
    let keep = settings.max_pairs_per_document.saturating_mul(4);

    let mut clock = Phases::default();
    // 1. Positives by rule.
    let mut candidates: Vec<Positive> = Vec::new();
    if wants("citation") {
        for (a, cited) in corpus.references.iter().enumerate() {
            for &b in cited {
                let a = a as u32;
                candidates.push(Positive {
                    a: a.min(b),
                    b: a.max(b),
                    source: Source::Citation,
                    score: 1.0,
                });
            }
        }
    }
    let mut near_misses: Vec<Scored> = Vec::new();
    let mut term_pairs =
        |sets: &[Vec<Term>], n_terms: usize, major_weight: f64, threshold: f64, source: Source| {
            let found = TermIndex::new(sets, n_terms, major_weight, settings.max_posting)
                .candidates(threshold as f32, keep, settings.hard_negatives);
            candidates.extend(found.positives.iter().map(|p| Positive {
                a: p.a,
                b: p.b,
                source,
                score: p.score,
            }));
            near_misses.extend(found.near_misses);
        };
    if wants("mesh") {
        term_pairs(
            &corpus.mesh,
            corpus.mesh_terms,
            settings.major_weight,
            settings.mesh_threshold,
            Source::Mesh,
        );
    }
    if wants("keyword") {
        // Keywords stand in for MeSH only where a document has none.
        let sets: Vec<Vec<Term>> = corpus
            .mesh
            .iter()
            .zip(&corpus.keywords)
            .map(|(m, k)| if m.is_empty() { k.clone() } else { Vec::new() })
            .collect();
        term_pairs(
            &sets,
            corpus.keyword_terms,
            1.0,
            settings.keyword_threshold,
            Source::Keyword,
        );
    }

    clock.lap("positive_candidates");
    // 2. Within a split only; once per unordered pair, under the strongest rule.
    let split_of = |i: u32| corpus.docs[i as usize].split;
    let before = candidates.len();
    candidates.retain(|p| split_of(p.a) == split_of(p.b));
    count(&mut dropped, "cross_split", before - candidates.len());
    candidates.sort_by_key(|p| (p.a, p.b, p.source));
    let before = candidates.len();
    candidates.dedup_by(|later, first| later.a == first.a && later.b == first.b);
    count(
        &mut dropped,
        "found_by_several_rules",
        before - candidates.len(),
    );

    // 5 (collected now, before the cap): relevance judgments for evaluation.
    let mut relevant: BTreeMap<u32, Vec<(u32, f32)>> = BTreeMap::new();
    for p in &candidates {
        if split_of(p.a) != Split::Train {
            let gain = if p.source == Source::Citation {
                CITATION_GAIN
            } else {
                TERM_GAIN
            };
            relevant.entry(p.a).or_default().push((p.b, gain));
            relevant.entry(p.b).or_default().push((p.a, gain));
        }
    }

    // 3. The per-document cap, best pairs first, the rules taking turns: the best pair of each
    //    rule, then the second best of each, … so that citations (all scored 1) do not crowd out
    //    MeSH and keyword pairs of well-cited documents.
    candidates.sort_by(|x, y| {
        x.source
            .cmp(&y.source)
            .then(y.score.total_cmp(&x.score))
            .then((x.a, x.b).cmp(&(y.a, y.b)))
    });
    let mut turn = Vec::with_capacity(candidates.len());
    let mut rank = 0u32;
    for (i, p) in candidates.iter().enumerate() {
        rank = if i > 0 && candidates[i - 1].source == p.source {
            rank + 1
        } else {
            0
        };
        turn.push(rank);
    }
    let mut order: Vec<usize> = (0..candidates.len()).collect();
    order.sort_by_key(|&i| (turn[i], candidates[i].source));
    let candidates: Vec<Positive> = order.into_iter().map(|i| candidates[i]).collect();
    let cap = settings.max_pairs_per_document as u16;
    let mut per_doc = vec![0u16; corpus.len()];
    let mut positives: Vec<Positive> = Vec::with_capacity(candidates.len());
    let mut capped = 0;
    for p in candidates {
        if per_doc[p.a as usize] >= cap || per_doc[p.b as usize] >= cap {
            capped += 1;
            continue;
        }
        per_doc[p.a as usize] += 1;
        per_doc[p.b as usize] += 1;
        positives.push(p);
    }
    count(&mut dropped, "per_document_cap", capped);
    let positive_set: FxHashSet<u64> = positives.iter().map(|p| pack(p.a, p.b)).collect();

    clock.lap("split_dedup_cap");
    // 4. Negatives per split.
    let mut docs_by_split: BTreeMap<Split, Vec<u32>> =
        Split::ALL.iter().map(|s| (*s, Vec::new())).collect();
    for (i, d) in corpus.docs.iter().enumerate() {
        docs_by_split.entry(d.split).or_default().push(i as u32);
    }
    let mut positives_by_split: BTreeMap<Split, Vec<Positive>> = BTreeMap::new();
    for p in positives {
        positives_by_split.entry(split_of(p.a)).or_default().push(p);
    }
    if wants("title") {
        for (i, d) in corpus.docs.iter().enumerate() {
            if d.title_query().is_some() {
                let i = i as u32;
                positives_by_split
                    .entry(d.split)
                    .or_default()
                    .push(Positive {
                        a: i,
                        b: i,
                        source: Source::Title,
                        score: 1.0,
                    });
            }
        }
    }
    near_misses.retain(|m| {
        split_of(m.a) == split_of(m.b)
            && !positive_set.contains(&pack(m.a, m.b))
            && !cites(corpus, m.a, m.b)
    });
    near_misses.sort_by(|x, y| {
        y.score
            .total_cmp(&x.score)
            .then((x.a, x.b).cmp(&(y.a, y.b)))
    });

    let mut outputs = PairOutputs::default();
    let mut short_of_negatives = 0u64;
    for (split_index, split) in Split::ALL.into_iter().enumerate() {
        let split_positives = positives_by_split.remove(&split).unwrap_or_default();
        let target = (split_positives.len() as f64 * settings.negative_ratio).round() as usize;
        let mut chosen: FxHashSet<u64> = FxHashSet::default();
        let mut negatives: Vec<Negative> = Vec::with_capacity(target);
        if settings.hard_negatives {
            for m in near_misses.iter().filter(|m| split_of(m.a) == split) {
                if negatives.len() >= target / 2 {
                    break;
                }
                if chosen.insert(pack(m.a, m.b)) {
                    negatives.push(Negative {
                        a: m.a,
                        b: m.b,
                        hard: true,
                        score: m.score,
                    });
                }
            }
        }
        let docs = &docs_by_split[&split];
        let mut rng = ChaCha8Rng::seed_from_u64(
            settings.seed ^ (0x9E37_79B9_7F4A_7C15u64.wrapping_mul(split_index as u64 + 1)),
        );
        let mut attempts = 0usize;
        let max_attempts = target.saturating_mul(50) + 1000;
        while negatives.len() < target && docs.len() >= 2 && attempts < max_attempts {
            attempts += 1;
            let a = docs[rng.random_range(0..docs.len())];
            let b = docs[rng.random_range(0..docs.len())];
            if a == b
                || shares_term(&corpus.mesh[a as usize], &corpus.mesh[b as usize])
                || shares_term(&corpus.keywords[a as usize], &corpus.keywords[b as usize])
                || cites(corpus, a, b)
                || positive_set.contains(&pack(a, b))
                || !chosen.insert(pack(a, b))
            {
                continue;
            }
            let (a, b) = if a < b { (a, b) } else { (b, a) };
            negatives.push(Negative {
                a,
                b,
                hard: false,
                score: 0.0,
            });
        }
        short_of_negatives += (target - negatives.len()) as u64;

        // Rows, with counts.
        let counts = outputs
            .stats
            .pairs
            .entry(split.name().to_string())
            .or_default();
        let mut rows = Vec::with_capacity(split_positives.len() + negatives.len());
        let doc = |i: u32| &corpus.docs[i as usize];
        for p in &split_positives {
            *counts
                .entry(p.source.name().to_string())
                .or_default()
                .entry("1".to_string())
                .or_default() += 1;
            rows.push(PairRow {
                a: p.a,
                b: p.b,
                label: 1.0,
                source: p.source.name(),
                score: p.score,
            });
        }
        for n in &negatives {
            let source = if n.hard { "hard" } else { "random" };
            *counts
                .entry(source.to_string())
                .or_default()
                .entry("0".to_string())
                .or_default() += 1;
            rows.push(PairRow {
                a: n.a,
                b: n.b,
                label: 0.0,
                source,
                score: n.score,
            });
        }
        outputs.pairs.insert(split, rows);
        outputs
            .stats
            .documents_per_split
            .insert(split.name().to_string(), docs.len() as u64);

        if split != Split::Train {
            let queries: Vec<EvalQuery> = docs
                .iter()
                .filter_map(|&q| {
                    let d = doc(q);
                    let query = d.title_query()?;
                    let mut judged: BTreeMap<&str, f32> = BTreeMap::new();
                    judged.insert(&d.id, SELF_GAIN);
                    for &(r, gain) in relevant.get(&q).into_iter().flatten() {
                        let best = judged.entry(&doc(r).id).or_insert(gain);
                        *best = best.max(gain);
                    }
                    Some(EvalQuery {
                        query_id: EvalQuery::title_query_id(&d.id),
                        query: query.to_string(),
                        relevant_ids: judged.keys().map(|id| id.to_string()).collect(),
                        gains: judged.values().copied().collect(),
                    })
                })
                .collect();
            outputs
                .stats
                .eval_queries
                .insert(split.name().to_string(), queries.len() as u64);
            outputs.eval_queries.insert(split, queries);
            outputs.eval_documents.insert(
                split,
                docs.iter()
                    .map(|&i| {
                        let d = doc(i);
                        EvalDocument {
                            id: d.id.clone(),
                            text: match d.body() {
                                "" => d.text.clone(),
                                body => body.to_string(),
                            },
                        }
                    })
                    .collect(),
            );
        }
    }
    if short_of_negatives > 0 {
        count(
            &mut dropped,
            "negatives_not_found",
            short_of_negatives as usize,
        );
    }

    clock.lap("negatives_and_eval");
    outputs.stats.phase_seconds = clock.seconds;
    outputs.stats.version = 1;
    outputs.stats.seed = settings.seed;
    outputs.stats.documents_read = corpus.documents_read;
    outputs.stats.documents = corpus.len() as u64;
    outputs.stats.documents_dropped = corpus.dropped.clone();
    outputs.stats.dropped_pairs = dropped;
    outputs
}

/// Seconds spent per phase, for `stats.json` (where a large job spends its time).
#[derive(Debug)]
pub struct Phases {
    last: std::time::Instant,
    pub seconds: BTreeMap<String, f64>,
}

impl Default for Phases {
    fn default() -> Self {
        Self {
            last: std::time::Instant::now(),
            seconds: BTreeMap::new(),
        }
    }
}

impl Phases {
    /// Starts timing anew without recording the time since the previous lap.
    pub fn restart(&mut self) {
        self.last = std::time::Instant::now();
    }

    /// Records the time since the previous lap under `phase`.
    pub fn lap(&mut self, phase: &str) {
        let now = std::time::Instant::now();
        let s = (now - self.last).as_secs_f64();
        *self.seconds.entry(phase.to_string()).or_default() += (s * 1000.0).round() / 1000.0;
        self.last = now;
    }
}

fn count(map: &mut BTreeMap<String, u64>, reason: &str, n: usize) {
    if n > 0 {
        *map.entry(reason.to_string()).or_default() += n as u64;
    }
}
