//! Term-overlap pairs (MeSH descriptors, author keywords) without looking at all pairs.
//!
//! Similarity is the weighted Jaccard of two documents' term sets, Σ min(wa, wb) / Σ max(wa, wb),
//! with a term's weight = IDF · (`major_weight` if it is a major topic of that document). Rare
//! descriptors say more than common ones, and a major topic more than a minor one.
//!
//! Candidates come from prefix filtering (Bayardo et al., "Scaling up all pairs similarity
//! search", WWW 2007) over an inverted index. If J(a, b) ≥ t then the shared weight, counted on
//! a's side, is at least t · W(a). Order every document's terms rarest first; its *prefix* is
//! what remains after taking off the longest tail of common terms weighing less than t · W(a).
//! Two documents with J ≥ t must share a term that is in both prefixes (the first shared term in
//! that order cannot lie in either tail), so indexing and probing prefixes only is exact, and it
//! leaves out of the scan precisely the common terms whose posting lists are long. Every pair
//! found is then scored exactly.
//!
//! A term in more than `max_posting` documents generates no candidates even in a prefix (it still
//! counts in every score): a safety valve for corpora dominated by one descriptor, at the price of
//! pairs that share only such terms among their prefixes. Each document scans only the postings
//! after it (each unordered pair once), on all cores, in fixed chunks whose results are joined in
//! order, so the output does not depend on the thread count.

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::corpus::Term;

/// A scored pair of document indices, `a < b`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scored {
    pub a: u32,
    pub b: u32,
    pub score: f32,
}

/// What [`TermIndex::candidates`] finds.
#[derive(Debug, Default)]
pub struct Candidates {
    /// Pairs at or above the threshold, at most `keep_per_document` per first document.
    pub positives: Vec<Scored>,
    /// Pairs sharing terms but below the threshold (only when asked for), the best one per
    /// first document.
    pub near_misses: Vec<Scored>,
}

#[derive(Debug)]
pub struct TermIndex<'a> {
    sets: &'a [Vec<Term>],
    df: Vec<u32>,
    idf: Vec<f32>,
    major_weight: f32,
    max_posting: usize,
    /// Per document: the sum of its term weights.
    totals: Vec<f32>,
}

/// Prefix postings for one threshold: `offsets[t]..offsets[t + 1]` in `docs` are the documents
/// (ascending) with term `t` in their prefix; `prefixes` likewise per document.
#[derive(Debug)]
struct PrefixIndex {
    offsets: Vec<usize>,
    docs: Vec<u32>,
    prefix_offsets: Vec<usize>,
    prefixes: Vec<u32>,
}

impl<'a> TermIndex<'a> {
    /// `sets[i]` are document i's terms, sorted by id (empty = the document takes no part).
    pub fn new(
        sets: &'a [Vec<Term>],
        n_terms: usize,
        major_weight: f64,
        max_posting: usize,
    ) -> Self {
        let mut df = vec![0u32; n_terms];
        for set in sets {
            for t in set {
                df[t.id as usize] += 1;
            }
        }
        let participants = sets.iter().filter(|s| !s.is_empty()).count().max(1) as f32;
        let idf: Vec<f32> = df
            .iter()
            .map(|&d| {
                if d == 0 {
                    0.0
                } else {
                    (1.0 + participants / d as f32).ln()
                }
            })
            .collect();
        let mut index = Self {
            sets,
            df,
            idf,
            major_weight: major_weight as f32,
            max_posting,
            totals: Vec::new(),
        };
        index.totals = sets
            .iter()
            .map(|set| set.iter().map(|&t| index.weight(t)).sum())
            .collect();
        index
    }

    fn weight(&self, t: Term) -> f32 {
        self.idf[t.id as usize] * if t.major { self.major_weight } else { 1.0 }
    }

    /// The exact weighted Jaccard of documents `a` and `b`.
    pub fn score(&self, a: usize, b: usize) -> f32 {
        let (x, y) = (&self.sets[a], &self.sets[b]);
        let (mut i, mut j, mut shared) = (0, 0, 0f32);
        while i < x.len() && j < y.len() {
            match x[i].id.cmp(&y[j].id) {
                std::cmp::Ordering::Less => i += 1,
                std::cmp::Ordering::Greater => j += 1,
                std::cmp::Ordering::Equal => {
                    shared += self.weight(x[i]).min(self.weight(y[j]));
                    i += 1;
                    j += 1;
                }
            }
        }
        let union = self.totals[a] + self.totals[b] - shared;
        if union <= 0.0 { 0.0 } else { shared / union }
    }

    /// Each document's prefix for `threshold`, as postings.
    fn prefix_index(&self, threshold: f32) -> PrefixIndex {
        let n_terms = self.df.len();
        let generates = |t: u32| {
            let d = self.df[t as usize] as usize;
            d >= 2 && d <= self.max_posting
        };
        let mut prefix_offsets = Vec::with_capacity(self.sets.len() + 1);
        prefix_offsets.push(0);
        let mut prefixes: Vec<u32> = Vec::new();
        let mut counts = vec![0usize; n_terms + 1];
        let mut ordered: Vec<Term> = Vec::new();
        for (doc, set) in self.sets.iter().enumerate() {
            ordered.clear();
            ordered.extend_from_slice(set);
            // Rarest first; ties by id, so the order is one global order.
            ordered.sort_unstable_by_key(|t| (self.df[t.id as usize], t.id));
            let budget = threshold * self.totals[doc];
            let mut tail = 0f32;
            let mut prefix_len = ordered.len();
            while prefix_len > 0 {
                let w = self.weight(ordered[prefix_len - 1]);
                if tail + w >= budget {
                    break;
                }
                tail += w;
                prefix_len -= 1;
            }
            for t in &ordered[..prefix_len] {
                if generates(t.id) {
                    prefixes.push(t.id);
                    counts[t.id as usize + 1] += 1;
                }
            }
            prefix_offsets.push(prefixes.len());
        }
        let mut offsets = counts;
        for t in 0..n_terms {
            offsets[t + 1] += offsets[t];
        }
        let mut docs = vec![0u32; offsets[n_terms]];
        let mut fill = offsets.clone();
        for doc in 0..self.sets.len() {
            for &t in &prefixes[prefix_offsets[doc]..prefix_offsets[doc + 1]] {
                docs[fill[t as usize]] = doc as u32;
                fill[t as usize] += 1;
            }
        }
        PrefixIndex {
            offsets,
            docs,
            prefix_offsets,
            prefixes,
        }
    }

    /// Pairs scoring at least `threshold`, best `keep_per_document` per first document; with
    /// `near_misses`, also each document's best pair below the threshold (among pairs sharing a
    /// prefix term).
    pub fn candidates(
        &self,
        threshold: f32,
        keep_per_document: usize,
        near_misses: bool,
    ) -> Candidates {
        const CHUNK: usize = 2048;
        let index = self.prefix_index(threshold);
        let n = self.sets.len();
        let chunks = n.div_ceil(CHUNK);
        let next = AtomicUsize::new(0);
        let threads = std::thread::available_parallelism()
            .map_or(1, |t| t.get())
            .min(chunks.max(1));
        let mut results: Vec<(usize, Candidates)> = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..threads)
                .map(|_| {
                    scope.spawn(|| {
                        let mut seen = vec![false; n];
                        let mut touched: Vec<u32> = Vec::new();
                        let mut out = Vec::new();
                        loop {
                            let chunk = next.fetch_add(1, Ordering::Relaxed);
                            if chunk >= chunks {
                                break;
                            }
                            let mut found = Candidates::default();
                            for a in chunk * CHUNK..((chunk + 1) * CHUNK).min(n) {
                                self.candidates_of(
                                    a,
                                    &index,
                                    threshold,
                                    keep_per_document,
                                    near_misses,
                                    &mut seen,
                                    &mut touched,
                                    &mut found,
                                );
                            }
                            out.push((chunk, found));
                        }
                        out
                    })
                })
                .collect();
            workers
                .into_iter()
                .flat_map(|w| w.join().expect("a candidate worker panicked"))
                .collect()
        });
        results.sort_by_key(|(chunk, _)| *chunk);
        let mut all = Candidates::default();
        for (_, found) in results {
            all.positives.extend(found.positives);
            all.near_misses.extend(found.near_misses);
        }
        all
    }

    #[allow(clippy::too_many_arguments)]
    fn candidates_of(
        &self,
        a: usize,
        index: &PrefixIndex,
        threshold: f32,
        keep: usize,
        near_misses: bool,
        seen: &mut [bool],
        touched: &mut Vec<u32>,
        found: &mut Candidates,
    ) {
        for &t in &index.prefixes[index.prefix_offsets[a]..index.prefix_offsets[a + 1]] {
            let postings = &index.docs[index.offsets[t as usize]..index.offsets[t as usize + 1]];
            // Postings are in document order: only documents after `a`.
            let start = postings.partition_point(|&d| d as usize <= a);
            for &b in &postings[start..] {
                if !seen[b as usize] {
                    seen[b as usize] = true;
                    touched.push(b);
                }
            }
        }
        let mut mine: Vec<Scored> = Vec::new();
        let mut best_miss: Option<Scored> = None;
        for &b in touched.iter() {
            seen[b as usize] = false;
            let score = self.score(a, b as usize);
            let pair = Scored {
                a: a as u32,
                b,
                score,
            };
            if score >= threshold {
                mine.push(pair);
            } else if near_misses
                && score > 0.0
                && best_miss.is_none_or(|m| {
                    (score, std::cmp::Reverse(b)) > (m.score, std::cmp::Reverse(m.b))
                })
            {
                best_miss = Some(pair);
            }
        }
        touched.clear();
        mine.sort_by(|x, y| y.score.total_cmp(&x.score).then(x.b.cmp(&y.b)));
        mine.truncate(keep);
        found.positives.extend(mine);
        found.near_misses.extend(best_miss);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ids: &[(u32, bool)]) -> Vec<Term> {
        let mut s: Vec<Term> = ids.iter().map(|&(id, major)| Term { id, major }).collect();
        s.sort_unstable();
        s
    }

    #[test]
    fn weighted_jaccard_counts_rare_and_major_terms_more() {
        // Term 0 is everywhere, terms 1 and 2 are rare.
        let sets = vec![
            set(&[(0, false), (1, false)]),
            set(&[(0, false), (1, false)]),
            set(&[(0, false), (2, false)]),
            set(&[(0, false), (2, true)]),
            set(&[(0, false)]),
            set(&[(0, false)]),
        ];
        let index = TermIndex::new(&sets, 3, 2.0, 1000);
        assert!((index.score(0, 1) - 1.0).abs() < 1e-6, "identical sets");
        assert_eq!(index.score(0, 2), index.score(1, 2));
        assert!(index.score(0, 2) < 0.5, "only the common term shared");
        // Major in one of them: min/max of the weights.
        assert!(index.score(2, 3) < 1.0 && index.score(2, 3) > index.score(0, 2));
        assert_eq!(index.score(0, 4), index.score(4, 0));
    }

    #[test]
    fn candidates_match_brute_force_and_skip_nothing_above_the_threshold() {
        // 300 documents, 4-6 terms of 40, deterministic pseudo-random.
        let mut state = 12345u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let sets: Vec<Vec<Term>> = (0..300)
            .map(|_| {
                let k = 4 + (next() % 3) as usize;
                let mut ids: Vec<(u32, bool)> = (0..k)
                    .map(|_| ((next() % 40) as u32, next() % 4 == 0))
                    .collect();
                ids.sort_unstable();
                ids.dedup_by_key(|x| x.0);
                set(&ids)
            })
            .collect();
        // max_posting above every df: candidates must equal the brute force.
        let index = TermIndex::new(&sets, 40, 2.0, 10_000);
        let found = index.candidates(0.3, usize::MAX, false);
        let mut brute = Vec::new();
        for a in 0..sets.len() {
            for b in a + 1..sets.len() {
                if index.score(a, b) >= 0.3 {
                    brute.push((a as u32, b as u32));
                }
            }
        }
        let mut got: Vec<(u32, u32)> = found.positives.iter().map(|p| (p.a, p.b)).collect();
        got.sort_unstable();
        assert!(!brute.is_empty());
        assert_eq!(got, brute);
        // Every pair found with capped postings is a true pair (the bound never admits a wrong one).
        let capped = TermIndex::new(&sets, 40, 2.0, 40);
        let some = capped.candidates(0.3, usize::MAX, false);
        assert!(
            some.positives
                .iter()
                .all(|p| index.score(p.a as usize, p.b as usize) >= 0.3)
        );
    }
}
