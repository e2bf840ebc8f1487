//! The 2-D map of a corpus for the web UI: PCA of the unit embeddings onto their two main axes
//! (the eigenvectors of the `dim × dim` covariance, so it costs one pass over the vectors even at
//! millions of rows). PCA keeps global structure (distant topics stay apart) and is
//! deterministic; t-SNE and UMAP would separate local clusters better, but no maintained Rust
//! crate does them at this scale, so the map is PCA and the clusters carry the local structure.

use tch::{Kind, Tensor};

use crate::vectors::Vectors;

/// One `[x, y]` per row, each axis scaled to [-1, 1]; the axis signs are fixed so that the
/// largest-magnitude loading is positive (the same corpus always draws the same way up).
pub fn pca_2d(vectors: &Vectors) -> Vec<[f32; 2]> {
    let n = vectors.len();
    if n == 0 {
        return Vec::new();
    }
    if n == 1 {
        return vec![[0.0, 0.0]];
    }
    let _guard = tch::no_grad_guard();
    let x = vectors.to_tensor().to_kind(Kind::Double);
    let centred = &x - x.mean_dim([0i64].as_slice(), true, Kind::Double);
    let covariance = centred.tr().matmul(&centred) / (n as f64 - 1.0);
    let (_values, vecs) = covariance.linalg_eigh("L");
    // eigh sorts eigenvalues ascending: the last two columns are the main axes.
    let dim = vecs.size()[1];
    let mut axes = vecs.narrow(1, dim - 2, 2).flip([1]);
    let biggest = axes.abs().argmax(0, false);
    let signs = axes.gather(0, &biggest.unsqueeze(0), false).sign();
    axes = &axes * signs.where_self(&signs.ne(0.0), &Tensor::ones_like(&signs));
    let projected = centred.matmul(&axes);
    let scale = projected
        .abs()
        .amax([0i64].as_slice(), true)
        .clamp_min(1e-12);
    let scaled = (projected / scale).to_kind(Kind::Float);
    Vec::<f32>::try_from(scaled.flatten(0, -1))
        .expect("float tensor")
        .chunks_exact(2)
        .map(|p| [p[0], p[1]])
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_main_axis_separates_what_differs_most() {
        // Two groups far apart along dimension 0, a little spread along dimension 1.
        let mut data = Vec::new();
        for i in 0..10 {
            let spread = i as f32 * 0.01;
            data.extend_from_slice(&[1.0, spread, 0.2]);
            data.extend_from_slice(&[-1.0, spread, 0.2]);
        }
        let v = Vectors::new(3, data).expect("vectors");
        let points = pca_2d(&v);
        assert_eq!(points.len(), 20);
        for pair in points.chunks(2) {
            assert!(
                pair[0][0] * pair[1][0] < 0.0,
                "groups on opposite sides: {pair:?}"
            );
            assert!((pair[0][0].abs() - 1.0).abs() < 0.05);
        }
        assert!(
            points
                .iter()
                .all(|p| p[0].abs() <= 1.0 && p[1].abs() <= 1.0)
        );
        assert_eq!(pca_2d(&v), points, "deterministic");
        assert!(pca_2d(&Vectors::new(3, Vec::new()).expect("empty")).is_empty());
    }
}
