//! One ranking from several (the lexical one and the dense one), by either of the two methods
//! hybrid search commonly uses:
//! - [`Fusion::ReciprocalRank`] (Cormack et al., 2009): a document scores Σ 1 / (k + rank) over the
//!   rankings it is in (ranks from 1). It needs no calibration between BM25 and cosine scores,
//!   which live on unrelated scales.
//! - [`Fusion::NormalizedScores`]: each ranking's scores are min–max normalized to 0..1 over its
//!   own list, and a document scores the weighted sum (missing from a list = 0 there).
//!
//! Ties are broken by the document's best rank in any list, then by the id, so the fused order is
//! deterministic.

use std::collections::HashMap;
use std::hash::Hash;

use serde::{Deserialize, Serialize};

/// How deep each ranking goes before fusion in a job's search (and in the trainer's evaluation of
/// it): deep enough that a document second-best in both lists is not cut before it is fused.
pub const FUSION_DEPTH: usize = 100;

/// How rankings are combined.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "method")]
pub enum Fusion {
    /// Σ 1 / (k + rank); k = 60 is the published default.
    ReciprocalRank { k: f64 },
    /// Σ weight × min–max normalized score; one weight per ranking, in order.
    NormalizedScores { weights: [f64; 2] },
}

impl Default for Fusion {
    fn default() -> Self {
        Fusion::ReciprocalRank { k: 60.0 }
    }
}

/// A document in the fused ranking.
#[derive(Debug, Clone, PartialEq)]
pub struct Fused<T> {
    pub id: T,
    pub score: f64,
    /// Its rank (from 1) in each input ranking, None where that ranking did not find it.
    pub ranks: Vec<Option<usize>>,
}

impl Fusion {
    /// Fuses `rankings` (each: ids with their scores, best first) into one, best first, cut to
    /// `limit`.
    pub fn fuse<T>(&self, rankings: &[&[(T, f32)]], limit: usize) -> Vec<Fused<T>>
    where
        T: Copy + Eq + Hash + Ord,
    {
        let mut fused: HashMap<T, Fused<T>> = HashMap::new();
        for (list, ranking) in rankings.iter().enumerate() {
            let contribution = self.contributions(list, ranking);
            for (rank0, ((id, _), add)) in ranking.iter().zip(contribution).enumerate() {
                let entry = fused.entry(*id).or_insert_with(|| Fused {
                    id: *id,
                    score: 0.0,
                    ranks: vec![None; rankings.len()],
                });
                // A list that names an id twice counts its first (best) place only.
                if entry.ranks[list].is_none() {
                    entry.ranks[list] = Some(rank0 + 1);
                    entry.score += add;
                }
            }
        }
        let mut out: Vec<Fused<T>> = fused.into_values().collect();
        let best_rank = |f: &Fused<T>| {
            f.ranks
                .iter()
                .flatten()
                .min()
                .copied()
                .unwrap_or(usize::MAX)
        };
        out.sort_by(|a, b| {
            b.score
                .total_cmp(&a.score)
                .then_with(|| best_rank(a).cmp(&best_rank(b)))
                .then_with(|| a.id.cmp(&b.id))
        });
        out.truncate(limit);
        out
    }

    /// What each place of ranking number `list` adds to its document's fused score.
    fn contributions<T>(&self, list: usize, ranking: &[(T, f32)]) -> Vec<f64> {
        match *self {
            Fusion::ReciprocalRank { k } => (0..ranking.len())
                .map(|rank0| 1.0 / (k + rank0 as f64 + 1.0))
                .collect(),
            Fusion::NormalizedScores { weights } => {
                let weight = weights.get(list).copied().unwrap_or(0.0);
                let scores = ranking.iter().map(|(_, s)| f64::from(*s));
                let max = scores.clone().fold(f64::NEG_INFINITY, f64::max);
                let min = scores.clone().fold(f64::INFINITY, f64::min);
                scores
                    .map(|s| {
                        // One document, or all equal: each counts fully.
                        let normalized = if max > min {
                            (s - min) / (max - min)
                        } else {
                            1.0
                        };
                        weight * normalized
                    })
                    .collect()
            }
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
    fn reciprocal_rank_fusion_matches_hand_computed_scores() {
        let lexical: &[(u32, f32)] = &[(1, 12.0), (2, 9.0), (3, 1.0)];
        let dense: &[(u32, f32)] = &[(3, 0.9), (1, 0.8), (4, 0.7)];
        let fused = Fusion::ReciprocalRank { k: 60.0 }.fuse(&[lexical, dense], 10);
        let ids: Vec<u32> = fused.iter().map(|f| f.id).collect();
        // 1: 1/61 + 1/62; 3: 1/63 + 1/61; 2: 1/62; 4: 1/63.
        assert_eq!(ids, [1, 3, 2, 4]);
        assert!(close(fused[0].score, 1.0 / 61.0 + 1.0 / 62.0));
        assert!(close(fused[1].score, 1.0 / 63.0 + 1.0 / 61.0));
        assert!(close(fused[2].score, 1.0 / 62.0));
        assert_eq!(fused[0].ranks, [Some(1), Some(2)]);
        assert_eq!(fused[2].ranks, [Some(2), None]);
        assert_eq!(fused[3].ranks, [None, Some(3)]);
        // The limit cuts after fusing.
        let top: Vec<u32> = Fusion::default()
            .fuse(&[lexical, dense], 2)
            .iter()
            .map(|f| f.id)
            .collect();
        assert_eq!(top, [1, 3]);
    }

    #[test]
    fn ties_go_to_the_better_single_rank_then_the_id() {
        // 7 is first in one list, 5 and 6 second in one each: equal sums for 5 and 6.
        let a: &[(u32, f32)] = &[(7, 3.0), (6, 2.0)];
        let b: &[(u32, f32)] = &[(8, 3.0), (5, 2.0)];
        let ids: Vec<u32> = Fusion::default()
            .fuse(&[a, b], 10)
            .iter()
            .map(|f| f.id)
            .collect();
        assert_eq!(ids, [7, 8, 5, 6]);
    }

    #[test]
    fn normalized_scores_are_min_max_scaled_and_weighted() {
        let lexical: &[(u32, f32)] = &[(1, 10.0), (2, 6.0), (3, 2.0)];
        let dense: &[(u32, f32)] = &[(3, 0.9), (2, 0.7), (4, 0.5)];
        let fused = Fusion::NormalizedScores {
            weights: [0.4, 0.6],
        }
        .fuse(&[lexical, dense], 10);
        let by_id: HashMap<u32, f64> = fused.iter().map(|f| (f.id, f.score)).collect();
        // Lexical normalized: 1 → 1, 2 → 0.5, 3 → 0; dense: 3 → 1, 2 → 0.5, 4 → 0.
        assert!(close(by_id[&1], 0.4));
        assert!(close(by_id[&2], 0.4 * 0.5 + 0.6 * 0.5));
        assert!(close(by_id[&3], 0.6));
        assert!(close(by_id[&4], 0.0));
        let ids: Vec<u32> = fused.iter().map(|f| f.id).collect();
        assert_eq!(ids, [3, 2, 1, 4]);
        // A one-document list counts fully.
        let single: &[(u32, f32)] = &[(9, 0.1)];
        let empty: &[(u32, f32)] = &[];
        let fused = Fusion::NormalizedScores {
            weights: [0.5, 0.5],
        }
        .fuse(&[single, empty], 10);
        assert!(close(fused[0].score, 0.5));
    }
}
