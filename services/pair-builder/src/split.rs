//! Document-level splits. Each document goes to exactly one split, decided by a seeded hash of
//! its id alone, so the assignment does not depend on the order documents arrive in, on the
//! other documents, or on the machine: the same seed puts the same document in the same split in
//! every run. Pairs are then made only within a split, so no text is ever in two splits (the
//! original project split pairs, and 256 of its 360 test abstracts also sat in train).

use medembed_corpus::pairs::Split;
use medembed_pipeline::config::PairSettings;
use xxhash_rust::xxh3::xxh3_64_with_seed;

#[derive(Debug, Clone)]
pub struct SplitAssigner {
    seed: u64,
    train: f64,
    val: f64,
}

impl SplitAssigner {
    pub fn new(settings: &PairSettings) -> Self {
        Self {
            seed: settings.seed,
            train: settings.train_ratio,
            val: settings.val_ratio,
        }
    }

    pub fn split_of(&self, id: &str) -> Split {
        // The top 53 bits as a uniform number in [0, 1).
        let u = (xxh3_64_with_seed(id.as_bytes(), self.seed) >> 11) as f64 / (1u64 << 53) as f64;
        if u < self.train {
            Split::Train
        } else if u < self.train + self.val {
            Split::Val
        } else {
            Split::Test
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use medembed_pipeline::config::Settings;

    #[test]
    fn splits_follow_the_ratios_and_the_seed() {
        let mut settings = Settings::load(None).expect("defaults").pairs;
        let a = SplitAssigner::new(&settings);
        let ids: Vec<String> = (0..100_000).map(|i| format!("pmid:{i}")).collect();
        let count =
            |s: &SplitAssigner, split: Split| ids.iter().filter(|i| s.split_of(i) == split).count();
        let train = count(&a, Split::Train);
        let val = count(&a, Split::Val);
        assert!((79_000..81_000).contains(&train), "train {train}");
        assert!((9_500..10_500).contains(&val), "val {val}");
        // Same seed, same split; another seed moves documents.
        assert!(
            ids.iter()
                .all(|i| a.split_of(i) == SplitAssigner::new(&settings).split_of(i))
        );
        settings.seed += 1;
        let b = SplitAssigner::new(&settings);
        let moved = ids
            .iter()
            .filter(|i| a.split_of(i) != b.split_of(i))
            .count();
        assert!(moved > 20_000, "a new seed reshuffles ({moved} moved)");
    }
}
