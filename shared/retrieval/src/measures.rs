//! The retrieval measures of one query's ranked list, as trec_eval (and so BEIR, through
//! pytrec_eval) defines them:
//! - nDCG@10 with linear graded gains: DCG = Σ gain(rank i) / log2(i + 1) over the top 10, over
//!   the DCG of the judged gains sorted best first;
//! - MRR@10: 1 / the rank of the first relevant document in the top 10, else 0;
//! - Recall@k: the share of the relevant documents found in the top k;
//! - MAP@100: the mean over relevant documents of the precision at each one's rank in the top
//!   100, a relevant document not found counting 0 (so the sum is divided by all relevant).
//!
//! A document is relevant when its gain is above 0; judged documents with gain 0 count as not
//! relevant, and so do documents not judged at all. Binary judgements (the trainer's pairs) are
//! the special case where every relevant document has gain 1.

use std::collections::{HashMap, HashSet};

use serde::Serialize;

/// The measures of one query, or their mean over queries.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct Measures {
    pub ndcg_at_10: f64,
    pub mrr_at_10: f64,
    pub recall_at_1: f64,
    pub recall_at_10: f64,
    pub recall_at_100: f64,
    pub map_at_100: f64,
}

impl Measures {
    /// `ranked`: the retrieved ids, best first; `gains`: the query's judged documents and their
    /// graded relevance. All zero when nothing is relevant.
    pub fn graded(ranked: &[&str], gains: &HashMap<&str, f64>) -> Self {
        let gain = |id: &str| gains.get(id).copied().filter(|g| *g > 0.0).unwrap_or(0.0);
        let relevant = gains.values().filter(|g| **g > 0.0).count();
        if relevant == 0 {
            return Self::default();
        }
        let discount = |i: usize| 1.0 / (i as f64 + 2.0).log2();
        let dcg: f64 = ranked
            .iter()
            .take(10)
            .enumerate()
            .map(|(i, id)| gain(id) * discount(i))
            .sum();
        let mut ideal_gains: Vec<f64> = gains.values().copied().filter(|g| *g > 0.0).collect();
        ideal_gains.sort_by(|a, b| b.total_cmp(a));
        let ideal: f64 = ideal_gains
            .iter()
            .take(10)
            .enumerate()
            .map(|(i, g)| g * discount(i))
            .sum();
        let is_relevant = |id: &&str| gain(id) > 0.0;
        let recall = |k: usize| {
            ranked.iter().take(k).filter(|id| is_relevant(id)).count() as f64 / relevant as f64
        };
        let mrr = ranked
            .iter()
            .take(10)
            .position(&is_relevant)
            .map_or(0.0, |i| 1.0 / (i as f64 + 1.0));
        let mut found = 0.0;
        let mut precision_sum = 0.0;
        for (i, id) in ranked.iter().take(100).enumerate() {
            if is_relevant(id) {
                found += 1.0;
                precision_sum += found / (i as f64 + 1.0);
            }
        }
        Self {
            ndcg_at_10: dcg / ideal,
            mrr_at_10: mrr,
            recall_at_1: recall(1),
            recall_at_10: recall(10),
            recall_at_100: recall(100),
            map_at_100: precision_sum / relevant as f64,
        }
    }

    /// Binary judgements: every id in `relevant` has gain 1.
    pub fn binary(ranked: &[&str], relevant: &HashSet<&str>) -> Self {
        let gains: HashMap<&str, f64> = relevant.iter().map(|id| (*id, 1.0)).collect();
        Self::graded(ranked, &gains)
    }

    /// The mean over queries (all zero for none).
    pub fn mean(all: &[Measures]) -> Self {
        let n = all.len().max(1) as f64;
        let mean = |f: fn(&Measures) -> f64| all.iter().map(f).sum::<f64>() / n;
        Self {
            ndcg_at_10: mean(|m| m.ndcg_at_10),
            mrr_at_10: mean(|m| m.mrr_at_10),
            recall_at_1: mean(|m| m.recall_at_1),
            recall_at_10: mean(|m| m.recall_at_10),
            recall_at_100: mean(|m| m.recall_at_100),
            map_at_100: mean(|m| m.map_at_100),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn binary_measures_match_hand_computed_values() {
        let relevant: HashSet<&str> = ["a", "b"].into();
        // Hits at ranks 1 and 3.
        let m = Measures::binary(&["a", "x", "b", "y"], &relevant);
        let ideal = 1.0 + 1.0 / 3f64.log2();
        assert!(close(m.ndcg_at_10, (1.0 + 0.5) / ideal));
        assert_eq!(m.mrr_at_10, 1.0);
        assert_eq!(m.recall_at_1, 0.5);
        assert_eq!(m.recall_at_10, 1.0);
        assert!(close(m.map_at_100, (1.0 + 2.0 / 3.0) / 2.0));
        // First hit at rank 2; nothing relevant found at all.
        let m = Measures::binary(&["x", "b"], &relevant);
        assert_eq!(m.mrr_at_10, 0.5);
        // b found at rank 2, a not found: AP = (1/2) / 2.
        assert!(close(m.map_at_100, 0.25));
        assert_eq!(
            Measures::binary(&["x", "y"], &relevant),
            Measures::default()
        );
        let perfect = Measures::binary(&["b", "a"], &relevant);
        assert!(close(perfect.ndcg_at_10, 1.0) && close(perfect.map_at_100, 1.0));
        let mean = Measures::mean(&[perfect, Measures::default()]);
        assert!(close(mean.ndcg_at_10, 0.5));
    }

    #[test]
    fn graded_ndcg_uses_linear_gains_and_the_ideal_order() {
        // Judged: a = 2, b = 1, c = 0 (judged, not relevant).
        let gains: HashMap<&str, f64> = [("a", 2.0), ("b", 1.0), ("c", 0.0)].into();
        // Ranked b, c, a: DCG = 1/log2(2) + 0 + 2/log2(4) = 1 + 1 = 2.
        // Ideal a, b: 2/log2(2) + 1/log2(3) = 2 + 0.63093 = 2.63093.
        let m = Measures::graded(&["b", "c", "a"], &gains);
        let ideal = 2.0 + 1.0 / 3f64.log2();
        assert!(close(m.ndcg_at_10, 2.0 / ideal), "{}", m.ndcg_at_10);
        assert!((m.ndcg_at_10 - 0.760_188).abs() < 1e-6);
        // MRR counts the first relevant (b, rank 1); c (gain 0) is not relevant.
        assert_eq!(m.mrr_at_10, 1.0);
        let m = Measures::graded(&["c", "a"], &gains);
        assert_eq!(m.mrr_at_10, 0.5);
        // Recall and MAP ignore the grades: relevant = {a, b}.
        assert_eq!(m.recall_at_10, 0.5);
        assert!(close(m.map_at_100, (1.0 / 2.0) / 2.0));
        // Perfect graded order.
        assert!(close(
            Measures::graded(&["a", "b", "c"], &gains).ndcg_at_10,
            1.0
        ));
        // The swapped order is worse: 1 + 2/log2(3) over the ideal.
        let swapped = Measures::graded(&["b", "a"], &gains).ndcg_at_10;
        assert!(close(swapped, (1.0 + 2.0 / 3f64.log2()) / ideal));
        assert!(swapped < 1.0);
    }

    #[test]
    fn only_the_top_ten_count_for_ndcg_and_mrr_and_the_top_hundred_for_map() {
        let relevant: HashSet<&str> = ["r"].into();
        let filler: Vec<String> = (0..150).map(|i| format!("d{i}")).collect();
        let mut ranked: Vec<&str> = filler.iter().map(String::as_str).collect();
        ranked.insert(10, "r"); // rank 11
        let m = Measures::binary(&ranked, &relevant);
        assert_eq!((m.ndcg_at_10, m.mrr_at_10, m.recall_at_10), (0.0, 0.0, 0.0));
        assert_eq!(m.recall_at_100, 1.0);
        assert!(close(m.map_at_100, 1.0 / 11.0));
        ranked.remove(10);
        ranked.insert(100, "r"); // rank 101
        let m = Measures::binary(&ranked, &relevant);
        assert_eq!((m.recall_at_100, m.map_at_100), (0.0, 0.0));
    }
}
