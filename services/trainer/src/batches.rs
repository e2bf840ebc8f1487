//! Training batches for in-batch-negative losses: positive pairs shuffled by a seed and packed so
//! that no text occurs twice in a batch. A repeated text would be scored as a negative of itself
//! (its own other pair sits among the in-batch negatives), which teaches the model the opposite of
//! what the pairs say; sentence-transformers' NoDuplicatesBatchSampler does the same.
//!
//! Packing is greedy over the shuffled order: a pair that clashes with the batch being filled waits
//! for the next batch. The order depends only on the pairs and the seed, so an interrupted run
//! that resumes at batch N sees the very batches it would have seen.

use std::collections::HashSet;

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

/// Indices into `pairs`, batch by batch; every pair appears exactly once. `pairs` are (text a,
/// text b); the last batch may be smaller.
pub fn no_duplicate_batches(
    pairs: &[(&str, &str)],
    batch_size: usize,
    seed: u64,
) -> Vec<Vec<usize>> {
    let batch_size = batch_size.max(1);
    let mut order: Vec<usize> = (0..pairs.len()).collect();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    let mut batches = Vec::new();
    let mut waiting: Vec<usize> = order;
    while !waiting.is_empty() {
        let mut batch = Vec::with_capacity(batch_size);
        let mut texts: HashSet<&str> = HashSet::new();
        let mut later = Vec::new();
        for i in waiting {
            let (a, b) = pairs[i];
            if batch.len() < batch_size && !texts.contains(a) && !texts.contains(b) {
                texts.insert(a);
                texts.insert(b);
                batch.push(i);
            } else {
                later.push(i);
            }
        }
        batches.push(batch);
        waiting = later;
    }
    batches
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_pair_once_no_text_twice_in_a_batch_same_seed_same_batches() {
        // Hub texts: "x" in five pairs, "y" in three.
        let pairs = [
            ("x", "a"),
            ("x", "b"),
            ("x", "c"),
            ("x", "d"),
            ("x", "e"),
            ("y", "f"),
            ("y", "g"),
            ("y", "h"),
            ("i", "j"),
            ("k", "l"),
        ];
        let batches = no_duplicate_batches(&pairs, 4, 42);
        let mut seen: Vec<usize> = batches.iter().flatten().copied().collect();
        seen.sort_unstable();
        assert_eq!(
            seen,
            (0..pairs.len()).collect::<Vec<_>>(),
            "every pair exactly once"
        );
        for batch in &batches {
            assert!(batch.len() <= 4);
            let mut texts = HashSet::new();
            for &i in batch {
                assert!(
                    texts.insert(pairs[i].0) && texts.insert(pairs[i].1),
                    "a text twice in {batch:?}"
                );
            }
        }
        // "x" is in five pairs, so at least five batches.
        assert!(batches.len() >= 5);
        assert_eq!(batches, no_duplicate_batches(&pairs, 4, 42));
        assert_ne!(batches, no_duplicate_batches(&pairs, 4, 7));
    }
}
