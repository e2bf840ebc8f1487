//! Hard negatives mined with the base model, a step of every run before its first optimizer step.
//!
//! In-batch negatives are mostly easy: on a one-topic corpus, 31 random abstracts rarely look
//! like the answer to a title. So for each training query (an anchor of a positive pair) the base
//! model ranks the run's documents (the partner side of the training pairs: the train split,
//! nothing held out), and a few of the best-ranked ones that are not the query's positives become
//! extra MNRL candidates.
//!
//! The best-ranked documents of a query are also where its unlabelled positives are: a related
//! article no rule linked. So a candidate scoring at or above `mine_max_relative_score` × the
//! positive's score is dropped as a likely false negative (NV-Retriever's TopK-PercPos at 95 %,
//! the guard of sentence-transformers' `mine_hard_negatives`). From the best `mine_pool`
//! candidates that survive, `mined_negatives` are drawn with a generator seeded by the run's seed
//! and the query's text, so the choice depends on nothing else (not the order of the pairs, not
//! the machine): the same data and seed mine the same negatives.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use medembed_model::SentenceEncoder;
use medembed_pipeline::config::TrainSettings;
use rand::SeedableRng;
use rand::seq::index::sample;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::eval::unit_rows;

/// What mining did, for metrics.json and the model card.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MiningReport {
    /// Distinct training queries mined for, and the documents ranked for them.
    pub queries: usize,
    pub documents: usize,
    /// Negatives kept in all, and queries left with fewer than `mined_negatives`.
    pub negatives: usize,
    pub queries_short: usize,
    /// Candidates dropped by the false-negative guard (scoring too close to the positive).
    pub dropped_as_likely_positive: usize,
    pub seconds: f64,
}

/// The mining settings of a run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MineSettings {
    pub per_query: usize,
    pub pool: usize,
    pub max_relative_score: f32,
    pub seed: u64,
}

impl MineSettings {
    pub fn of(settings: &TrainSettings) -> Self {
        Self {
            per_query: settings.mined_negatives,
            pool: settings.mine_pool.max(settings.mined_negatives),
            max_relative_score: settings.mine_max_relative_score as f32,
            seed: settings.seed,
        }
    }
}

/// One query's negatives from its ranking (`ranked`: candidate ids with scores, best first):
/// candidates in `positives` are skipped, those scoring at or above `max_relative_score` ×
/// `positive_score` dropped (counted in the second value), and `per_query` drawn from the best
/// `pool` survivors by `rng`, returned in rank order.
pub fn choose_negatives(
    ranked: &[(usize, f32)],
    positive_score: f32,
    positives: &HashSet<usize>,
    settings: &MineSettings,
    rng: &mut ChaCha8Rng,
) -> (Vec<usize>, usize) {
    let ceiling = settings.max_relative_score * positive_score;
    let mut dropped = 0;
    let mut survivors = Vec::with_capacity(settings.pool);
    for &(candidate, score) in ranked {
        if positives.contains(&candidate) {
            continue;
        }
        if score >= ceiling {
            dropped += 1;
            continue;
        }
        survivors.push(candidate);
        if survivors.len() == settings.pool {
            break;
        }
    }
    let n = settings.per_query.min(survivors.len());
    let mut picked = sample(rng, survivors.len(), n).into_vec();
    picked.sort_unstable();
    (picked.into_iter().map(|i| survivors[i]).collect(), dropped)
}

/// Mines negatives for `queries` among `documents` (text ids into `texts`, the run's text
/// table); `positives` are each query's known positives (its partners, and every text of a
/// document related to its own), never taken as negatives. A map from query to its negatives
/// (text ids), in rank order.
pub fn mine(
    encoder: &SentenceEncoder,
    texts: &[String],
    queries: &[usize],
    documents: &[usize],
    positives: &HashMap<usize, HashSet<usize>>,
    settings: &MineSettings,
) -> medembed_model::Result<(HashMap<usize, Vec<usize>>, MiningReport)> {
    let started = Instant::now();
    let mut queries = queries.to_vec();
    queries.sort_unstable();
    queries.dedup();
    let mut documents = documents.to_vec();
    documents.sort_unstable();
    documents.dedup();
    let mut report = MiningReport {
        queries: queries.len(),
        documents: documents.len(),
        ..MiningReport::default()
    };
    let mut mined = HashMap::new();
    if settings.per_query == 0 || documents.len() < 2 {
        report.seconds = started.elapsed().as_secs_f64();
        return Ok((mined, report));
    }
    let dim = encoder.dimension();
    let embed = |ids: &[usize]| -> medembed_model::Result<tch::Tensor> {
        let batch: Vec<&str> = ids.iter().map(|&i| texts[i].as_str()).collect();
        Ok(unit_rows(&encoder.encode(&batch)?, dim))
    };
    let docs = embed(&documents)?;
    let row_of: HashMap<usize, i64> = documents
        .iter()
        .enumerate()
        .map(|(row, &id)| (id, row as i64))
        .collect();
    // Deep enough that the guard and the query's own positives leave a pool to draw from.
    let depth = (settings.pool * 3 + 8).min(documents.len()) as i64;
    for chunk in queries.chunks(256) {
        let q = embed(chunk)?;
        let scores = q.matmul(&docs.transpose(0, 1));
        let (values, top) = scores.topk(depth, 1, true, true);
        let top: Vec<i64> = Vec::<i64>::try_from(top.flatten(0, -1)).expect("int64 indices");
        let values: Vec<f32> = Vec::<f32>::try_from(values.flatten(0, -1)).expect("scores");
        for (i, &query) in chunk.iter().enumerate() {
            let none = HashSet::new();
            let own = positives.get(&query).unwrap_or(&none);
            // The positive the guard compares with: the query's best-scoring one among the
            // documents.
            let positive_score = own
                .iter()
                .filter_map(|p| row_of.get(p))
                .map(|&row| scores.double_value(&[i as i64, row]) as f32)
                .fold(f32::NEG_INFINITY, f32::max);
            if positive_score == f32::NEG_INFINITY {
                report.queries_short += 1;
                continue;
            }
            let range = i * depth as usize..(i + 1) * depth as usize;
            let ranked: Vec<(usize, f32)> = top[range.clone()]
                .iter()
                .zip(&values[range])
                .map(|(&row, &score)| (documents[row as usize], score))
                .collect();
            let mut rng = ChaCha8Rng::seed_from_u64(
                settings.seed ^ xxhash_rust::xxh3::xxh3_64(texts[query].as_bytes()),
            );
            let (negatives, dropped) =
                choose_negatives(&ranked, positive_score, own, settings, &mut rng);
            report.dropped_as_likely_positive += dropped;
            report.negatives += negatives.len();
            if negatives.len() < settings.per_query {
                report.queries_short += 1;
            }
            mined.insert(query, negatives);
        }
    }
    report.seconds = started.elapsed().as_secs_f64();
    Ok((mined, report))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(per_query: usize, pool: usize) -> MineSettings {
        MineSettings {
            per_query,
            pool,
            max_relative_score: 0.95,
            seed: 7,
        }
    }

    #[test]
    fn the_guard_drops_candidates_too_close_to_the_positive() {
        // Positive 1 (id 9) scores 0.80: the ceiling is 0.76.
        let ranked = [
            (9, 0.80),
            (1, 0.79),
            (2, 0.76),
            (3, 0.7599),
            (4, 0.5),
            (5, 0.4),
        ];
        let positives = HashSet::from([9]);
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let (negatives, dropped) =
            choose_negatives(&ranked, 0.80, &positives, &settings(2, 2), &mut rng);
        // 1 (0.79) and 2 (exactly 0.76) are likely positives; the best two below are 3 and 4.
        assert_eq!(dropped, 2);
        assert_eq!(negatives, vec![3, 4]);
        // Nothing survives: none, and all counted.
        let (negatives, dropped) =
            choose_negatives(&ranked[..3], 0.80, &positives, &settings(2, 2), &mut rng);
        assert!(negatives.is_empty());
        assert_eq!(dropped, 2);
    }

    #[test]
    fn the_draw_is_seeded_and_from_the_pool_only() {
        let ranked: Vec<(usize, f32)> = (0..40).map(|i| (i, 0.5 - i as f32 * 0.01)).collect();
        let positives = HashSet::new();
        let draw = |seed: u64| {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            choose_negatives(&ranked, 0.9, &positives, &settings(3, 10), &mut rng).0
        };
        let first = draw(3);
        assert_eq!(first, draw(3), "same seed, same negatives");
        assert_eq!(first.len(), 3);
        assert!(first.iter().all(|&c| c < 10), "from the best 10: {first:?}");
        assert!(first.windows(2).all(|w| w[0] < w[1]), "in rank order");
        let others: HashSet<Vec<usize>> = (0..20).map(draw).collect();
        assert!(others.len() > 5, "other seeds draw otherwise: {others:?}");
    }
}
