//! Synthetic embeddings for the HNSW recall test and the search benchmarks: unit vectors drawn
//! around topic centres (a Gaussian mixture on the sphere), the shape real sentence embeddings of
//! a literature corpus have (many topics, each a cloud), rather than uniform noise, on which no
//! approximate index is meaningful. Queries are fresh draws from the same mixture, not corpus
//! rows.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::vectors::Vectors;

/// `n` vectors of `dim` around `topics` centres; `spread` is the noise per coordinate relative
/// to a centre coordinate's scale (0.5 makes clouds that overlap their neighbours).
pub fn mixture(n: usize, dim: usize, topics: usize, spread: f32, seed: u64) -> Vectors {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let centres = gaussian(topics * dim, &mut ChaCha8Rng::seed_from_u64(0xC0FFEE));
    let scale = 1.0 / (dim as f32).sqrt();
    let mut data = Vec::with_capacity(n * dim);
    for _ in 0..n {
        let topic = rng.random_range(0..topics);
        let centre = &centres[topic * dim..(topic + 1) * dim];
        for &c in centre {
            data.push((c + spread * normal(&mut rng)) * scale);
        }
    }
    Vectors::new(dim, data).expect("whole rows")
}

fn gaussian(n: usize, rng: &mut ChaCha8Rng) -> Vec<f32> {
    (0..n).map(|_| normal(rng)).collect()
}

/// A standard normal draw (Box–Muller).
fn normal(rng: &mut ChaCha8Rng) -> f32 {
    let u: f32 = rng.random_range(f32::EPSILON..1.0);
    let v: f32 = rng.random_range(0.0..1.0);
    (-2.0 * u.ln()).sqrt() * (2.0 * std::f32::consts::PI * v).cos()
}
