//! Topic clusters: spherical k-means on the unit embeddings (k-means++ seeding, cosine
//! assignment), k chosen by the silhouette of a sample when not set, and each cluster labelled by
//! the MeSH descriptors (keywords for articles without MeSH) most over-represented in it: the
//! original project's "research trend analysis", on real embeddings.
//!
//! The matrix work runs in libtorch (already linked for the encoder): an assignment step is one
//! `[n, dim] × [dim, k]` product.

use std::collections::HashMap;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tch::{Kind, Tensor};

use crate::vectors::Vectors;

/// Points used to score a candidate k (silhouette is quadratic in them).
const SILHOUETTE_SAMPLE: usize = 2000;
const ITERATIONS: usize = 30;

/// The clusters of an index.
#[derive(Debug, Clone, PartialEq)]
pub struct Clustering {
    pub k: usize,
    /// Cluster of each row.
    pub assignment: Vec<u32>,
    /// Silhouette (cosine distance) of the chosen k on the sample; None when k was not chosen.
    pub silhouette: Option<f64>,
}

/// Spherical k-means: (assignment, centroids `[k, dim]`). Deterministic for a seed.
fn kmeans(x: &Tensor, k: usize, seed: u64) -> (Tensor, Tensor) {
    let n = x.size()[0] as usize;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    // k-means++: each next seed drawn with probability proportional to its distance to the
    // nearest seed so far.
    let mut seeds = vec![rng.random_range(0..n) as i64];
    let mut nearest = Tensor::full([n as i64], f64::INFINITY, (Kind::Float, x.device()));
    while seeds.len() < k {
        let last = x.get(*seeds.last().expect("one seed")).unsqueeze(1);
        let distance = (x.matmul(&last).squeeze_dim(1).neg() + 1.0).clamp_min(0.0);
        nearest = nearest.minimum(&distance);
        let weights = Vec::<f32>::try_from(&nearest).expect("float tensor");
        let total: f64 = weights.iter().map(|&w| f64::from(w)).sum();
        let next = if total <= 0.0 {
            rng.random_range(0..n)
        } else {
            let mut target = rng.random_range(0.0..total);
            let mut chosen = n - 1;
            for (i, &w) in weights.iter().enumerate() {
                target -= f64::from(w);
                if target <= 0.0 {
                    chosen = i;
                    break;
                }
            }
            chosen
        };
        seeds.push(next as i64);
    }
    let mut centroids = x.index_select(0, &Tensor::from_slice(&seeds));
    let mut assignment = x.matmul(&centroids.tr()).argmax(1, false);
    for _ in 0..ITERATIONS {
        let one_hot = assignment.one_hot(k as i64).to_kind(Kind::Float);
        let sums = one_hot.tr().matmul(x);
        let counts = one_hot.sum_dim_intlist(0, false, Kind::Float).unsqueeze(1);
        // An emptied cluster keeps its old centroid.
        let empty = counts.eq(0.0);
        let means = sums / counts.clamp_min(1.0);
        let norms = means.norm_scalaropt_dim(2, [1], true).clamp_min(1e-12);
        centroids = (means / norms).where_self(&empty.logical_not(), &centroids);
        let next = x.matmul(&centroids.tr()).argmax(1, false);
        let changed = next.ne_tensor(&assignment).any().int64_value(&[]) != 0;
        assignment = next;
        if !changed {
            break;
        }
    }
    (assignment, centroids)
}

/// Mean silhouette with cosine distance; points of singleton clusters count 0.
fn silhouette(x: &Tensor, assignment: &Tensor, k: usize) -> f64 {
    let distance = (x.matmul(&x.tr()).neg() + 1.0).clamp_min(0.0);
    let one_hot = assignment.one_hot(k as i64).to_kind(Kind::Float);
    let counts = one_hot.sum_dim_intlist(0, false, Kind::Float);
    // Mean distance from each point to each cluster: [n, k].
    let sums = distance.matmul(&one_hot);
    let own = one_hot.to_kind(Kind::Bool);
    // Its own cluster's mean leaves the point itself out.
    let own_counts = (counts.unsqueeze(0) - one_hot.shallow_clone()).clamp_min(1.0);
    let means = &sums / own_counts;
    let a = means
        .shallow_clone()
        .masked_fill(&own.logical_not(), 0.0)
        .sum_dim_intlist(1, false, Kind::Float);
    let b = means.masked_fill(&own, f64::INFINITY).amin(1, false);
    let singleton = (one_hot.matmul(&counts.unsqueeze(1)).squeeze_dim(1)).le(1.0);
    let s = ((&b - &a) / a.maximum(&b).clamp_min(1e-12)).masked_fill(&singleton, 0.0);
    s.mean(Kind::Double).double_value(&[])
}

/// Clusters the rows of `vectors`: `k` clusters, or (k = 0) the k in 2..=`max_k` with the best
/// silhouette on a sample. Corpora too small to split (under 4 rows) are one cluster.
pub fn cluster(vectors: &Vectors, k: usize, max_k: usize, seed: u64) -> Clustering {
    let n = vectors.len();
    let _guard = tch::no_grad_guard();
    if n < 4 {
        return Clustering {
            k: 1,
            assignment: vec![0; n],
            silhouette: None,
        };
    }
    let x = vectors.to_tensor();
    let (k, silhouette) = if k > 0 {
        (k.min(n), None)
    } else {
        let sample = if n > SILHOUETTE_SAMPLE {
            let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5157);
            let rows: Vec<i64> = rand::seq::index::sample(&mut rng, n, SILHOUETTE_SAMPLE)
                .into_iter()
                .map(|i| i as i64)
                .collect();
            x.index_select(0, &Tensor::from_slice(&rows))
        } else {
            x.shallow_clone()
        };
        let rows = sample.size()[0] as usize;
        // At least about three points per cluster, so a score is not won by splitting pairs.
        let top = max_k.min(rows / 3).max(2);
        let mut best = (2, f64::NEG_INFINITY);
        for k in 2..=top {
            let (assignment, _) = kmeans(&sample, k, seed);
            let score = silhouette(&sample, &assignment, k);
            if score > best.1 + 1e-9 {
                best = (k, score);
            }
        }
        (best.0, Some(best.1))
    };
    let (assignment, _) = kmeans(&x, k, seed);
    let assignment = Vec::<i64>::try_from(&assignment)
        .expect("int64 tensor")
        .into_iter()
        .map(|c| c as u32)
        .collect();
    Clustering {
        k,
        assignment,
        silhouette,
    }
}

/// Up to `count` labels per cluster: the terms (each row's MeSH descriptors, or its keywords)
/// whose share in the cluster most exceeds their share in the corpus, scored by
/// `p_in · ln(p_in / p_all)` (frequent and specific); a term needs two rows in the cluster.
pub fn labels(
    assignment: &[u32],
    k: usize,
    terms: &[Vec<String>],
    count: usize,
) -> Vec<Vec<String>> {
    let n = assignment.len().max(1) as f64;
    let mut overall: HashMap<&str, usize> = HashMap::new();
    let mut within: Vec<HashMap<&str, usize>> = vec![HashMap::new(); k];
    let mut sizes = vec![0usize; k];
    for (row, &c) in assignment.iter().enumerate() {
        sizes[c as usize] += 1;
        let mut seen = std::collections::HashSet::new();
        for term in &terms[row] {
            if seen.insert(term.as_str()) {
                *overall.entry(term).or_default() += 1;
                *within[c as usize].entry(term).or_default() += 1;
            }
        }
    }
    within
        .iter()
        .zip(&sizes)
        .map(|(counts, &size)| {
            let mut scored: Vec<(f64, &str)> = counts
                .iter()
                .filter(|&(_, &c)| c >= 2)
                .map(|(&term, &c)| {
                    let p_in = c as f64 / size.max(1) as f64;
                    let p_all = overall[term] as f64 / n;
                    (p_in * (p_in / p_all).ln(), term)
                })
                .filter(|(score, _)| *score > 0.0)
                .collect();
            scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(b.1)));
            scored
                .into_iter()
                .take(count)
                .map(|(_, t)| t.to_string())
                .collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `groups` tight groups of `per` points around orthogonal directions.
    fn grouped(groups: usize, per: usize, dim: usize) -> Vectors {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let mut data = Vec::new();
        for g in 0..groups {
            for _ in 0..per {
                for d in 0..dim {
                    let centre = if d == g { 1.0 } else { 0.0 };
                    data.push(centre + rng.random_range(-0.05..0.05));
                }
            }
        }
        Vectors::new(dim, data).expect("vectors")
    }

    #[test]
    fn silhouette_finds_the_number_of_groups_and_kmeans_separates_them() {
        let v = grouped(4, 25, 16);
        let c = cluster(&v, 0, 10, 42);
        assert_eq!(c.k, 4);
        assert!(c.silhouette.expect("chosen") > 0.8);
        for g in 0..4 {
            let group = &c.assignment[g * 25..(g + 1) * 25];
            assert!(group.iter().all(|&a| a == group[0]), "group {g} split");
        }
        let distinct: std::collections::HashSet<_> = c.assignment.iter().collect();
        assert_eq!(distinct.len(), 4);
        // Same seed, same clusters.
        assert_eq!(cluster(&v, 0, 10, 42), c);
        // A fixed k is used as given.
        assert_eq!(cluster(&v, 2, 10, 42).k, 2);
        // Tiny corpora are one cluster.
        assert_eq!(cluster(&grouped(1, 3, 4), 0, 10, 42).k, 1);
    }

    #[test]
    fn labels_are_the_over_represented_terms() {
        let assignment = vec![0, 0, 0, 1, 1, 1];
        let t = |xs: &[&str]| xs.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let terms = vec![
            t(&["Humans", "Neoplasms", "Immunotherapy"]),
            t(&["Humans", "Neoplasms", "Immunotherapy"]),
            t(&["Humans", "Neoplasms"]),
            t(&["Humans", "Malaria"]),
            t(&["Humans", "Malaria", "Plasmodium"]),
            t(&["Humans", "Plasmodium"]),
        ];
        let labels = labels(&assignment, 2, &terms, 2);
        assert_eq!(labels[0], vec!["Neoplasms", "Immunotherapy"]);
        assert_eq!(labels[1], vec!["Malaria", "Plasmodium"]);
        // "Humans" is everywhere: it labels nothing.
        assert!(labels.iter().flatten().all(|l| l != "Humans"));
    }
}
