//! Evaluation of an encoder, the way the trainer reports it for the base model and the fine-tuned
//! one side by side:
//! - retrieval on a [`RetrievalSet`], scored the way the job's users search: every query ranks
//!   the corpus in the job's default (hybrid) mode, BM25 and the model's cosine fused by
//!   reciprocal rank exactly as the api fuses them (depth [`FUSION_DEPTH`]), and in dense mode
//!   alone; graded nDCG@10, MRR@10, Recall@1/10/100 and MAP@100, averaged over queries. The
//!   pair-builder's sets are query-style (held-out titles against held-out documents without
//!   their titles, graded self > citation > MeSH), so the gain reported is the gain a user's
//!   search sees, and it is what the best checkpoint is chosen by;
//! - labelled pairs: Spearman of cosine vs label, ROC-AUC, and the cosines themselves (for the
//!   similarity-distribution chart).

use std::collections::HashMap;

use medembed_corpus::pairs::EvalQuery;
use medembed_model::SentenceEncoder;
use medembed_retrieval::Measures;
use medembed_retrieval::fusion::{FUSION_DEPTH, Fusion};
use medembed_retrieval::lexical::{LexicalDocument, LexicalError, LexicalIndex};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::data::{LabelledPair, RetrievalSet};
use crate::metrics::{roc_auc, spearman};

/// What one evaluation measured.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    /// The search mode the headline figures below are of: `hybrid` (the job's default).
    #[serde(default)]
    pub mode: String,
    pub ndcg_at_10: f64,
    pub mrr_at_10: f64,
    pub recall_at_1: f64,
    pub recall_at_10: f64,
    pub recall_at_100: f64,
    pub map_at_100: f64,
    /// The same queries in dense mode (the model alone), and BM25 alone (the same for every
    /// model: what the model adds to).
    #[serde(default)]
    pub dense_ndcg_at_10: f64,
    #[serde(default)]
    pub dense_mrr_at_10: f64,
    #[serde(default)]
    pub lexical_ndcg_at_10: f64,
    /// The same rankings judged on relations alone: each title query's own document left out
    /// of its ranking and its judgements, and queries with no other relevant document skipped
    /// (`related_queries` counts the rest). A user's query has no "own" document, so this is
    /// the figure closest to held-out queries judged by relevance (what `medembed dev-set`
    /// builds); the headline above also counts a title finding its own article.
    #[serde(default)]
    pub related_ndcg_at_10: f64,
    #[serde(default)]
    pub related_dense_ndcg_at_10: f64,
    #[serde(default)]
    pub related_lexical_ndcg_at_10: f64,
    #[serde(default)]
    pub related_queries: usize,
    pub queries: usize,
    pub corpus: usize,
    /// Over labelled pairs; 0 / 0.5 when the split has no pairs of one label.
    pub spearman: f64,
    pub roc_auc: f64,
    pub labelled_pairs: usize,
    /// Cosine of each positive and each negative pair (for the distribution chart; not in
    /// metrics.json).
    #[serde(skip)]
    pub positive_cosines: Vec<f32>,
    #[serde(skip)]
    pub negative_cosines: Vec<f32>,
}

/// A ranking of corpus rows, best first, with scores.
pub type Ranking = Vec<(usize, f32)>;

/// Unit-length rows `[n, dim]` of embeddings.
pub(crate) fn unit_rows(vectors: &[Vec<f32>], dim: usize) -> Tensor {
    let flat: Vec<f32> = vectors.iter().flatten().copied().collect();
    let t = Tensor::from_slice(&flat).view([vectors.len() as i64, dim as i64]);
    &t / t.norm_scalaropt_dim(2, [1], true).clamp_min(1e-12)
}

/// BM25's ranking (depth [`FUSION_DEPTH`]) of the set's corpus for every query. It depends on
/// the set alone, so a run computes it once per split.
pub fn lexical_rankings(set: &RetrievalSet) -> Result<Vec<Ranking>, LexicalError> {
    if set.corpus.is_empty() {
        return Ok(vec![Vec::new(); set.queries.len()]);
    }
    let documents: Vec<LexicalDocument> = set
        .corpus
        .iter()
        .map(|d| LexicalDocument {
            abstract_text: d.text.clone(),
            ..LexicalDocument::default()
        })
        .collect();
    let index = LexicalIndex::build(&documents)?;
    set.queries
        .iter()
        .map(|q| index.search(&q.query, FUSION_DEPTH + 1))
        .collect()
}

/// The hybrid ranking of each query: `lexical` and `dense` fused the way the api fuses them.
pub fn fused_rankings(lexical: &[Ranking], dense: &[Ranking]) -> Vec<Ranking> {
    let fusion = Fusion::default();
    lexical
        .iter()
        .zip(dense)
        .map(|(l, d)| {
            fusion
                .fuse(&[l.as_slice(), d.as_slice()], FUSION_DEPTH + 1)
                .into_iter()
                .map(|f| (f.id, f.score as f32))
                .collect()
        })
        .collect()
}

/// A query's judgements as gains by document id (1 where the set gives no grade), without
/// `leave_out`.
fn judged<'a>(query: &'a EvalQuery, leave_out: Option<&str>) -> HashMap<&'a str, f64> {
    query
        .relevant_ids
        .iter()
        .enumerate()
        .filter(|(_, id)| Some(id.as_str()) != leave_out)
        .map(|(i, id)| {
            (
                id.as_str(),
                query.gains.get(i).map_or(1.0, |&g| f64::from(g)),
            )
        })
        .collect()
}

/// The mean measures of `rankings` (one per query of `set`, corpus rows best first) against the
/// set's graded judgements; a document whose id is the query's id is skipped.
pub fn score_rankings(set: &RetrievalSet, rankings: &[Ranking]) -> Measures {
    let all: Vec<Measures> = set
        .queries
        .iter()
        .zip(rankings)
        .map(|(query, ranking)| {
            let ranked: Vec<&str> = ranking
                .iter()
                .map(|&(row, _)| set.corpus[row].id.as_str())
                .filter(|id| *id != query.query_id)
                .take(100)
                .collect();
            Measures::graded(&ranked, &judged(query, None))
        })
        .collect();
    Measures::mean(&all)
}

/// [`score_rankings`] on relations alone: each title query's own document is dropped from its
/// ranking and its judgements, and queries left with no relevant document are skipped. Returns
/// the measures and the number of queries scored.
pub fn score_related(set: &RetrievalSet, rankings: &[Ranking]) -> (Measures, usize) {
    let mut all = Vec::new();
    for (query, ranking) in set.queries.iter().zip(rankings) {
        let own = query.own_document_id();
        let gains = judged(query, Some(own));
        if gains.is_empty() {
            continue;
        }
        let ranked: Vec<&str> = ranking
            .iter()
            .map(|&(row, _)| set.corpus[row].id.as_str())
            .filter(|id| *id != own && *id != query.query_id)
            .take(100)
            .collect();
        all.push(Measures::graded(&ranked, &gains));
    }
    let n = all.len();
    (Measures::mean(&all), n)
}

/// The encoder's cosine ranking (depth [`FUSION_DEPTH`] + 1) of the set's corpus per query.
fn dense_rankings(
    encoder: &SentenceEncoder,
    set: &RetrievalSet,
) -> medembed_model::Result<Vec<Ranking>> {
    let dim = encoder.dimension();
    let docs: Vec<&str> = set.corpus.iter().map(|d| d.text.as_str()).collect();
    let queries: Vec<&str> = set.queries.iter().map(|q| q.query.as_str()).collect();
    let docs = unit_rows(&encoder.encode(&docs)?, dim);
    let queries = unit_rows(&encoder.encode(&queries)?, dim);
    let k = (FUSION_DEPTH as i64 + 1).min(set.corpus.len() as i64);
    let mut out = Vec::with_capacity(set.queries.len());
    // Queries in blocks, so the score matrix stays small on a large corpus.
    for (block, chunk) in set.queries.chunks(256).enumerate() {
        let q = queries.narrow(0, (block * 256) as i64, chunk.len() as i64);
        let (values, top) = q.matmul(&docs.transpose(0, 1)).topk(k, 1, true, true);
        let top: Vec<i64> = Vec::<i64>::try_from(top.flatten(0, -1)).expect("int64 indices");
        let values: Vec<f32> = Vec::<f32>::try_from(values.flatten(0, -1)).expect("float scores");
        for row in 0..chunk.len() {
            let range = row * k as usize..(row + 1) * k as usize;
            out.push(
                top[range.clone()]
                    .iter()
                    .zip(&values[range])
                    .map(|(&i, &v)| (i as usize, v))
                    .collect(),
            );
        }
    }
    Ok(out)
}

/// Evaluates `encoder` (in eval mode: no dropout) on a split; `lexical` is
/// [`lexical_rankings`] of `set`.
pub fn evaluate(
    encoder: &SentenceEncoder,
    set: &RetrievalSet,
    lexical: &[Ranking],
    pairs: &[LabelledPair],
) -> medembed_model::Result<EvalReport> {
    let dim = encoder.dimension();
    let mut report = EvalReport {
        mode: "hybrid".into(),
        queries: set.queries.len(),
        corpus: set.corpus.len(),
        labelled_pairs: pairs.len(),
        ..EvalReport::default()
    };
    if !set.queries.is_empty() && !set.corpus.is_empty() {
        let dense = dense_rankings(encoder, set)?;
        let fused = fused_rankings(lexical, &dense);
        let hybrid = score_rankings(set, &fused);
        report.ndcg_at_10 = hybrid.ndcg_at_10;
        report.mrr_at_10 = hybrid.mrr_at_10;
        report.recall_at_1 = hybrid.recall_at_1;
        report.recall_at_10 = hybrid.recall_at_10;
        report.recall_at_100 = hybrid.recall_at_100;
        report.map_at_100 = hybrid.map_at_100;
        let dense_measures = score_rankings(set, &dense);
        report.dense_ndcg_at_10 = dense_measures.ndcg_at_10;
        report.dense_mrr_at_10 = dense_measures.mrr_at_10;
        report.lexical_ndcg_at_10 = score_rankings(set, lexical).ndcg_at_10;
        let (related, n) = score_related(set, &fused);
        report.related_ndcg_at_10 = related.ndcg_at_10;
        report.related_queries = n;
        report.related_dense_ndcg_at_10 = score_related(set, &dense).0.ndcg_at_10;
        report.related_lexical_ndcg_at_10 = score_related(set, lexical).0.ndcg_at_10;
    }
    if !pairs.is_empty() {
        let a: Vec<&str> = pairs.iter().map(|p| p.text_a.as_str()).collect();
        let b: Vec<&str> = pairs.iter().map(|p| p.text_b.as_str()).collect();
        let cos = (unit_rows(&encoder.encode(&a)?, dim) * unit_rows(&encoder.encode(&b)?, dim))
            .sum_dim_intlist(1, false, Kind::Float);
        let cos: Vec<f32> = Vec::<f32>::try_from(cos).expect("float cosines");
        let labels: Vec<f64> = pairs.iter().map(|p| f64::from(p.label)).collect();
        let scores: Vec<f64> = cos.iter().map(|&c| f64::from(c)).collect();
        report.spearman = spearman(&scores, &labels);
        report.roc_auc = roc_auc(
            &scores,
            &labels.iter().map(|&l| l >= 0.5).collect::<Vec<_>>(),
        );
        for (c, p) in cos.iter().zip(pairs) {
            if p.label >= 0.5 {
                report.positive_cosines.push(*c);
            } else {
                report.negative_cosines.push(*c);
            }
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use medembed_corpus::pairs::{EvalDocument, EvalQuery};

    fn set() -> RetrievalSet {
        let doc = |id: &str| EvalDocument {
            id: id.into(),
            text: format!("text of {id}"),
        };
        RetrievalSet {
            queries: vec![
                // Query-style: a title, its own document judged 3, a MeSH partner 1.
                EvalQuery {
                    query_id: EvalQuery::title_query_id("a"),
                    query: "the title of a".into(),
                    relevant_ids: vec!["a".into(), "b".into()],
                    gains: vec![3.0, 1.0],
                },
                // Made from pairs: the query is document x's text, skipped in its ranking.
                EvalQuery {
                    query_id: "x".into(),
                    query: "text of x".into(),
                    relevant_ids: vec!["y".into()],
                    gains: Vec::new(),
                },
            ],
            corpus: ["a", "b", "c", "x", "y"].into_iter().map(doc).collect(),
        }
    }

    #[test]
    fn graded_hybrid_and_dense_figures_match_hand_computed_values() {
        let set = set();
        let (a, b, c, x, y) = (0, 1, 2, 3, 4);
        let dense = vec![vec![(c, 0.9), (a, 0.8), (b, 0.7)], vec![(x, 1.0), (y, 0.5)]];
        let lexical = vec![vec![(b, 12.0), (a, 9.0)], vec![(y, 3.0)]];
        let log2 = |n: f64| n.log2();
        // Query 1, dense: c, a (3), b (1). DCG = 3/log2 3 + 1/log2 4; ideal = 3 + 1/log2 3.
        let ideal = 3.0 + 1.0 / log2(3.0);
        let q1_dense = (3.0 / log2(3.0) + 1.0 / log2(4.0)) / ideal;
        // Query 2: x is the query itself and skipped, y is first.
        let m = score_rankings(&set, &dense);
        assert!(
            (m.ndcg_at_10 - (q1_dense + 1.0) / 2.0).abs() < 1e-9,
            "{m:?}"
        );
        assert!((m.mrr_at_10 - (0.5 + 1.0) / 2.0).abs() < 1e-9, "{m:?}");

        // Hybrid, RRF k = 60: a 1/62 + 1/62 = 0.0322581, b 1/61 + 1/63 = 0.0322664 (above a),
        // c 1/61. So b (1), a (3), c: DCG = 1 + 3/log2 3.
        let fused = fused_rankings(&lexical, &dense);
        let order: Vec<usize> = fused[0].iter().map(|&(row, _)| row).collect();
        assert_eq!(order, vec![b, a, c]);
        let q1_hybrid = (1.0 + 3.0 / log2(3.0)) / ideal;
        let m = score_rankings(&set, &fused);
        assert!(
            (m.ndcg_at_10 - (q1_hybrid + 1.0) / 2.0).abs() < 1e-9,
            "{m:?}"
        );
        // Recall@1: query 1 finds one of its two relevant documents first, query 2 its only one.
        assert!((m.recall_at_1 - (0.5 + 1.0) / 2.0).abs() < 1e-9, "{m:?}");

        // On relations alone query 1's own document a leaves its ranking and judgements: dense
        // c, b (1) gives 1/log2 3 against an ideal of 1; query 2 still finds y first.
        let (m, n) = score_related(&set, &dense);
        assert_eq!(n, 2);
        assert!(
            (m.ndcg_at_10 - (1.0 / log2(3.0) + 1.0) / 2.0).abs() < 1e-9,
            "{m:?}"
        );
        // Hybrid b, a, c → b first: 1. A query judged on its own document alone is skipped.
        let (m, _) = score_related(&set, &fused);
        assert!((m.ndcg_at_10 - 1.0).abs() < 1e-9, "{m:?}");
        let mut alone = set.clone();
        alone.queries[0].relevant_ids.truncate(1);
        alone.queries[0].gains.truncate(1);
        assert_eq!(score_related(&alone, &fused).1, 1);
    }

    #[test]
    fn bm25_ranks_the_set_corpus_by_query_words() {
        let mut set = set();
        set.corpus[2].text = "tau tangles in neurons".into();
        set.queries[0].query = "neurons with tau".into();
        let lexical = lexical_rankings(&set).expect("bm25");
        assert_eq!(lexical.len(), 2);
        assert_eq!(lexical[0].first().map(|&(row, _)| row), Some(2));
        // Query 2 ("text of x"; "of" is a stop word): the four documents with "text", x first.
        assert_eq!(lexical[1].len(), 4);
        assert_eq!(lexical[1][0].0, 3);
    }
}
