//! Term-overlap pairs (MeSH descriptors, author keywords) without looking at all pairs.
//!
//! Similarity is the weighted Jaccard of two documents' term sets, Σ min(wa, wb) / Σ max(wa, wb),
//! with a term's weight = IDF · (`major_weight` if it is a major topic of that document). Rare
//! descriptors say more than common ones, and a major topic more than a minor one.
//!
//! Candidates come from an inverted index (term → documents). A term in more than `max_posting`
//! documents (e.g. "Neoplasms") generates no candidates: its posting list would pair a large part
//! of the corpus with itself, yet its low IDF rarely decides a pair. It still counts in the score
//! of every pair found through other terms, exactly: scanning the postings accumulates the shared
//! weight of the generating terms; the shared weight of the others is at most the smaller of the
//! two documents' weight in such terms, and only pairs whose bound reaches the threshold merge
//! their (short) lists of such terms to complete the score. Each document scans only the postings
//! after it (each unordered pair once), on all cores, in fixed chunks whose results are joined in
//! order, so the output does not depend on the thread count.
//!
//! (Prefix filtering, which indexes only each document's rarest terms, was tried and measured
//! slower here: with `max_posting` already keeping long lists out, it removed few visits but made
//! every visited pair need a full merge.)

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
    idf: Vec<f32>,
    major_weight: f32,
    /// Postings of the terms that generate candidates: `offsets[t]..offsets[t + 1]` in
    /// `entries`; an entry is a document index, its top bit set if the term is major there.
    offsets: Vec<usize>,
    entries: Vec<u32>,
    generates: Vec<bool>,
    /// Per document: total weight, and the weight of its terms that generate no candidates.
    totals: Vec<f32>,
    stop_totals: Vec<f32>,
    /// Per document, its terms that generate no candidates with their weights, sorted by id:
    /// `stop_offsets[d]..stop_offsets[d + 1]` in `stop_terms`.
    stop_offsets: Vec<usize>,
    stop_terms: Vec<(u32, f32)>,
}

const MAJOR_BIT: u32 = 1 << 31;

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
        let generates: Vec<bool> = df
            .iter()
            .map(|&d| d >= 2 && d as usize <= max_posting)
            .collect();
        let mut offsets = vec![0usize; n_terms + 1];
        for (t, &d) in df.iter().enumerate() {
            offsets[t + 1] = offsets[t] + if generates[t] { d as usize } else { 0 };
        }
        let mut entries = vec![0u32; offsets[n_terms]];
        let mut fill = offsets.clone();
        let major_weight = major_weight as f32;
        let mut totals = vec![0f32; sets.len()];
        let mut stop_totals = vec![0f32; sets.len()];
        let mut stop_offsets = Vec::with_capacity(sets.len() + 1);
        stop_offsets.push(0);
        let mut stop_terms = Vec::new();
        for (doc, set) in sets.iter().enumerate() {
            for t in set {
                let w = idf[t.id as usize] * if t.major { major_weight } else { 1.0 };
                totals[doc] += w;
                let term = t.id as usize;
                if generates[term] {
                    entries[fill[term]] = doc as u32 | if t.major { MAJOR_BIT } else { 0 };
                    fill[term] += 1;
                } else {
                    stop_totals[doc] += w;
                    stop_terms.push((t.id, w));
                }
            }
            stop_offsets.push(stop_terms.len());
        }
        Self {
            sets,
            idf,
            major_weight,
            offsets,
            entries,
            generates,
            totals,
            stop_totals,
            stop_offsets,
            stop_terms,
        }
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

    /// Σ min(wa, wb) over the terms of `a` and `b` that generate no candidates.
    fn stop_shared(&self, a: usize, b: usize) -> f32 {
        let x = &self.stop_terms[self.stop_offsets[a]..self.stop_offsets[a + 1]];
        let y = &self.stop_terms[self.stop_offsets[b]..self.stop_offsets[b + 1]];
        let (mut i, mut j, mut shared) = (0, 0, 0f32);
        while i < x.len() && j < y.len() {
            match x[i].0.cmp(&y[j].0) {
                std::cmp::Ordering::Less => i += 1,
                std::cmp::Ordering::Greater => j += 1,
                std::cmp::Ordering::Equal => {
                    shared += x[i].1.min(y[j].1);
                    i += 1;
                    j += 1;
                }
            }
        }
        shared
    }

    /// Pairs scoring at least `threshold`, best `keep_per_document` per first document; with
    /// `near_misses`, also each document's best pair below the threshold.
    pub fn candidates(
        &self,
        threshold: f32,
        keep_per_document: usize,
        near_misses: bool,
    ) -> Candidates {
        const CHUNK: usize = 2048;
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
                        let mut acc = vec![0f32; n];
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
                                    threshold,
                                    keep_per_document,
                                    near_misses,
                                    &mut acc,
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
        threshold: f32,
        keep: usize,
        near_misses: bool,
        acc: &mut [f32],
        touched: &mut Vec<u32>,
        found: &mut Candidates,
    ) {
        for &t in &self.sets[a] {
            let term = t.id as usize;
            if !self.generates[term] {
                continue;
            }
            let wa = self.weight(t);
            let idf = self.idf[term];
            let postings = &self.entries[self.offsets[term]..self.offsets[term + 1]];
            // Postings are in document order: only documents after `a`.
            let start = postings.partition_point(|&e| (e & !MAJOR_BIT) as usize <= a);
            for &e in &postings[start..] {
                let b = (e & !MAJOR_BIT) as usize;
                let wb = if e & MAJOR_BIT != 0 {
                    idf * self.major_weight
                } else {
                    idf
                };
                if acc[b] == 0.0 {
                    touched.push(b as u32);
                }
                acc[b] += wa.min(wb);
            }
        }
        let mut mine: Vec<Scored> = Vec::new();
        let mut best_miss: Option<Scored> = None;
        for &b in touched.iter() {
            let b = b as usize;
            let acc_b = acc[b];
            acc[b] = 0.0;
            let bound = acc_b + self.stop_totals[a].min(self.stop_totals[b]);
            let upper = bound / (self.totals[a] + self.totals[b] - bound);
            let score = if upper >= threshold {
                let shared = acc_b + self.stop_shared(a, b);
                shared / (self.totals[a] + self.totals[b] - shared)
            } else if near_misses {
                upper
            } else {
                continue;
            };
            let pair = Scored {
                a: a as u32,
                b: b as u32,
                score,
            };
            if score >= threshold {
                mine.push(pair);
            } else if near_misses
                && best_miss.is_none_or(|m| {
                    (score, std::cmp::Reverse(b)) > (m.score, std::cmp::Reverse(m.b as usize))
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
