//! Evaluation measures of labelled pairs, as sentence-transformers' EmbeddingSimilarityEvaluator
//! and BinaryClassificationEvaluator define them: Spearman's rank correlation of cosine vs label
//! (average ranks for ties) and ROC-AUC (the probability a positive pair outscores a negative
//! one, ties half). Retrieval measures (nDCG@10, MRR@10, Recall@k, MAP@100) are
//! `medembed_retrieval::Measures`, shared with `medembed eval`.

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
