//! Evaluation measures, as sentence-transformers' InformationRetrievalEvaluator and
//! EmbeddingSimilarityEvaluator / BinaryClassificationEvaluator define them:
//! - retrieval over a ranked list per query: nDCG@k (binary relevance), MRR@k, Recall@k, MAP@k
//!   (average precision over the top k, divided by min(k, relevant));
//! - labelled pairs: Spearman's rank correlation of cosine vs label (average ranks for ties) and
//!   ROC-AUC (the probability a positive pair outscores a negative one, ties half).

use std::collections::HashSet;

/// Retrieval measures of one query: `ranked` are the retrieved ids, best first (the query's own
/// document already left out); `relevant` the ids that should be found.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Retrieval {
    pub ndcg_at_10: f64,
    pub mrr_at_10: f64,
    pub recall_at_1: f64,
    pub recall_at_10: f64,
    pub recall_at_100: f64,
    pub map_at_100: f64,
}

impl Retrieval {
    pub fn of(ranked: &[&str], relevant: &HashSet<&str>) -> Self {
        if relevant.is_empty() {
            return Self::default();
        }
        let hit = |i: usize| ranked.get(i).is_some_and(|id| relevant.contains(id));
        let recall = |k: usize| {
            (0..k.min(ranked.len())).filter(|&i| hit(i)).count() as f64 / relevant.len() as f64
        };
        let dcg: f64 = (0..10.min(ranked.len()))
            .filter(|&i| hit(i))
            .map(|i| 1.0 / (i as f64 + 2.0).log2())
            .sum();
        let ideal: f64 = (0..10.min(relevant.len()))
            .map(|i| 1.0 / (i as f64 + 2.0).log2())
            .sum();
        let mrr = (0..10.min(ranked.len()))
            .find(|&i| hit(i))
            .map_or(0.0, |i| 1.0 / (i as f64 + 1.0));
        let mut hits = 0.0;
        let mut precision_sum = 0.0;
        for i in 0..100.min(ranked.len()) {
            if hit(i) {
                hits += 1.0;
                precision_sum += hits / (i as f64 + 1.0);
            }
        }
        Self {
            ndcg_at_10: dcg / ideal,
            mrr_at_10: mrr,
            recall_at_1: recall(1),
            recall_at_10: recall(10),
            recall_at_100: recall(100),
            map_at_100: precision_sum / relevant.len().min(100) as f64,
        }
    }

    /// The mean over queries.
    pub fn mean(all: &[Retrieval]) -> Self {
        let n = all.len().max(1) as f64;
        let sum = |f: fn(&Retrieval) -> f64| all.iter().map(f).sum::<f64>() / n;
        Self {
            ndcg_at_10: sum(|r| r.ndcg_at_10),
            mrr_at_10: sum(|r| r.mrr_at_10),
            recall_at_1: sum(|r| r.recall_at_1),
            recall_at_10: sum(|r| r.recall_at_10),
            recall_at_100: sum(|r| r.recall_at_100),
            map_at_100: sum(|r| r.map_at_100),
        }
    }
}

/// Ranks 1..n with ties sharing their average rank.
fn average_ranks(values: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| values[a].total_cmp(&values[b]));
    let mut ranks = vec![0.0; values.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && values[order[j + 1]] == values[order[i]] {
            j += 1;
        }
        let rank = (i + j) as f64 / 2.0 + 1.0;
        for &k in &order[i..=j] {
            ranks[k] = rank;
        }
        i = j + 1;
    }
    ranks
}

/// Spearman's rank correlation; 0 when either side is constant.
pub fn spearman(x: &[f64], y: &[f64]) -> f64 {
    let (rx, ry) = (average_ranks(x), average_ranks(y));
    let n = rx.len() as f64;
    let (mx, my) = (rx.iter().sum::<f64>() / n, ry.iter().sum::<f64>() / n);
    let cov: f64 = rx.iter().zip(&ry).map(|(a, b)| (a - mx) * (b - my)).sum();
    let vx: f64 = rx.iter().map(|a| (a - mx).powi(2)).sum();
    let vy: f64 = ry.iter().map(|b| (b - my).powi(2)).sum();
    if vx == 0.0 || vy == 0.0 {
        0.0
    } else {
        cov / (vx * vy).sqrt()
    }
}

/// ROC-AUC of `scores` for binary `labels` (true = positive), from ranks (Mann–Whitney U);
/// 0.5 when one class is missing.
pub fn roc_auc(scores: &[f64], labels: &[bool]) -> f64 {
    let ranks = average_ranks(scores);
    let positives = labels.iter().filter(|&&l| l).count() as f64;
    let negatives = labels.len() as f64 - positives;
    if positives == 0.0 || negatives == 0.0 {
        return 0.5;
    }
    let rank_sum: f64 = ranks
        .iter()
        .zip(labels)
        .filter(|(_, l)| **l)
        .map(|(r, _)| r)
        .sum();
    (rank_sum - positives * (positives + 1.0) / 2.0) / (positives * negatives)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retrieval_measures_match_hand_computed_values() {
        let relevant: HashSet<&str> = ["a", "b"].into();
        // Hits at ranks 1 and 3.
        let r = Retrieval::of(&["a", "x", "b", "y"], &relevant);
        let ideal = 1.0 + 1.0 / 3f64.log2();
        assert!((r.ndcg_at_10 - (1.0 + 0.5) / ideal).abs() < 1e-12);
        assert_eq!(r.mrr_at_10, 1.0);
        assert_eq!(r.recall_at_1, 0.5);
        assert_eq!(r.recall_at_10, 1.0);
        assert!((r.map_at_100 - (1.0 + 2.0 / 3.0) / 2.0).abs() < 1e-12);
        // First hit at rank 2; nothing relevant found at all.
        let r = Retrieval::of(&["x", "b"], &relevant);
        assert_eq!(r.mrr_at_10, 0.5);
        assert_eq!(Retrieval::of(&["x", "y"], &relevant), Retrieval::default());
        let perfect = Retrieval::of(&["b", "a"], &relevant);
        assert!(
            (perfect.ndcg_at_10 - 1.0).abs() < 1e-12 && (perfect.map_at_100 - 1.0).abs() < 1e-12
        );
        let mean = Retrieval::mean(&[perfect, Retrieval::default()]);
        assert!((mean.ndcg_at_10 - 0.5).abs() < 1e-12);
    }

    #[test]
    fn spearman_and_auc_match_hand_computed_values() {
        assert!((spearman(&[1.0, 2.0, 3.0], &[10.0, 20.0, 30.0]) - 1.0).abs() < 1e-12);
        assert!((spearman(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0]) + 1.0).abs() < 1e-12);
        // Ties: ranks [1.5, 1.5, 3] vs [1, 2, 3] → 0.866…
        assert!((spearman(&[0.0, 0.0, 1.0], &[1.0, 2.0, 3.0]) - 0.75f64.sqrt()).abs() < 1e-12);
        assert_eq!(spearman(&[1.0, 1.0], &[0.0, 1.0]), 0.0);
        assert_eq!(
            roc_auc(&[0.9, 0.8, 0.3, 0.1], &[true, true, false, false]),
            1.0
        );
        assert_eq!(
            roc_auc(&[0.1, 0.3, 0.8, 0.9], &[true, true, false, false]),
            0.0
        );
        // One of four positive–negative orderings wrong, one tie: (2 + 0.5) / 4.
        assert_eq!(
            roc_auc(&[0.9, 0.5, 0.5, 0.7], &[true, true, false, false]),
            0.625
        );
        assert_eq!(roc_auc(&[0.1, 0.2], &[true, true]), 0.5);
    }
}
