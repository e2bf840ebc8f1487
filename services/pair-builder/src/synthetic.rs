//! A synthetic corpus with a realistic MeSH distribution, for the scale benchmark and the
//! large-corpus tests: 10–15 descriptors per document drawn Zipf-like (s = 1) from 30,000, about a
//! quarter of them major topics, and 20 references per document, most to earlier documents of the
//! corpus (as papers cite older papers), the rest to works outside it. Deterministic per seed.
//!
//! Real corpora have topics, so documents are too: each belongs to one of `topics` research
//! topics with 10 characteristic descriptors (themselves drawn Zipf-like), and takes about half
//! its descriptors from its topic and half from the whole vocabulary; half of its in-corpus
//! references go to earlier documents of its topic.

use medembed_corpus::MeshHeading;
use medembed_corpus::Reference;
use medembed_corpus::clean::CleanArticle;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Parameters of a synthetic corpus.
#[derive(Debug, Clone)]
pub struct SyntheticCorpus {
    pub documents: usize,
    pub descriptors: usize,
    pub references: usize,
    /// Characters of text per document (title + abstract).
    pub text_chars: usize,
    pub topics: usize,
    pub seed: u64,
}

impl SyntheticCorpus {
    pub fn new(documents: usize) -> Self {
        Self {
            documents,
            descriptors: 30_000,
            references: 20,
            text_chars: 600,
            topics: (documents / 500).max(10),
            seed: 1,
        }
    }

    /// Documents `range`, as clean articles; any split of the full range into parts generates the
    /// same documents.
    pub fn articles(&self, range: std::ops::Range<usize>) -> Vec<CleanArticle> {
        let cdf = zipf_cdf(self.descriptors);
        let draw = |rng: &mut ChaCha8Rng| {
            let u: f64 = rng.random();
            cdf.partition_point(|&c| c < u).min(self.descriptors - 1)
        };
        range
            .map(|i| {
                let topic = i % self.topics;
                let mut topic_rng = ChaCha8Rng::seed_from_u64(self.seed ^ 0x7091C ^ topic as u64);
                let topic_descriptors: Vec<usize> = (0..10).map(|_| draw(&mut topic_rng)).collect();
                let mut rng =
                    ChaCha8Rng::seed_from_u64(self.seed.wrapping_mul(0x9E37_79B9) ^ i as u64);
                let k = rng.random_range(10..=15);
                let mut ranks: Vec<usize> = Vec::with_capacity(k);
                while ranks.len() < k {
                    let rank = if rng.random_bool(0.5) {
                        topic_descriptors[rng.random_range(0..topic_descriptors.len())]
                    } else {
                        draw(&mut rng)
                    };
                    if !ranks.contains(&rank) {
                        ranks.push(rank);
                    }
                }
                let mesh = ranks
                    .iter()
                    .map(|r| MeshHeading {
                        descriptor: format!("Descriptor {r}"),
                        ui: Some(format!("D{r:06}")),
                        major: rng.random_bool(0.25),
                        qualifiers: Vec::new(),
                    })
                    .collect();
                let references = (0..self.references)
                    .map(|_| {
                        let pmid = if i >= self.topics && rng.random_bool(0.4) {
                            // An earlier document of the same topic.
                            i - self.topics * rng.random_range(1..=i / self.topics) + 1
                        } else if i > 0 && rng.random_bool(0.67) {
                            rng.random_range(0..i) + 1
                        } else {
                            self.documents + rng.random_range(0..10_000_000)
                        };
                        Reference {
                            pmid: Some(pmid.to_string()),
                            pmcid: None,
                            doi: None,
                        }
                    })
                    .collect();
                let text = words(&mut rng, self.text_chars);
                let title = text.chars().take(80).collect::<String>();
                CleanArticle {
                    id: format!("pmid:{}", i + 1),
                    pmid: Some((i + 1).to_string()),
                    title,
                    abstract_text: text.clone(),
                    mesh,
                    references,
                    content_hash: format!("{:016x}", xxhash_rust::xxh3::xxh3_64(text.as_bytes())),
                    text,
                    ..CleanArticle::default()
                }
            })
            .collect()
    }
}

fn zipf_cdf(n: usize) -> Vec<f64> {
    let mut cdf = Vec::with_capacity(n);
    let mut sum = 0.0;
    for rank in 1..=n {
        sum += 1.0 / rank as f64;
        cdf.push(sum);
    }
    for c in &mut cdf {
        *c /= sum;
    }
    cdf
}

/// Pseudo-words up to `chars` characters.
fn words(rng: &mut ChaCha8Rng, chars: usize) -> String {
    const SYLLABLES: [&str; 16] = [
        "ca", "ri", "no", "ma", "te", "lo", "ph", "sy", "ne", "ur", "on", "co", "ge", "tu", "mo",
        "ra",
    ];
    let mut out = String::with_capacity(chars + 12);
    while out.len() < chars {
        if !out.is_empty() {
            out.push(' ');
        }
        for _ in 0..rng.random_range(2..5) {
            out.push_str(SYLLABLES[rng.random_range(0..SYLLABLES.len())]);
        }
    }
    out.truncate(chars);
    out
}
