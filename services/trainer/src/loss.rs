//! Training losses over sentence embeddings `[batch, hidden]` (normalized here, so cosine is a dot
//! product), as sentence-transformers defines them:
//! - [`mnrl`]: MultipleNegativesRankingLoss: each anchor's positive must outscore every other
//!   positive in the batch (in-batch negatives) and any explicit hard negatives; cross-entropy over
//!   `scale · cos`, optionally symmetric (positives must find their anchors too);
//! - [`cosine_mse`]: the original project's CosineSimilarityLoss: MSE between cos(a, b) and the
//!   0/1 label;
//! - [`contrastive`]: ContrastiveLoss: `½(y·d² + (1−y)·relu(margin − d)²)` with cosine distance
//!   `d = 1 − cos`.

use tch::{Kind, Reduction, Tensor};

fn normalized(t: &Tensor) -> Tensor {
    t / t.norm_scalaropt_dim(2, [1], true).clamp_min(1e-12)
}

/// Multiple-negatives ranking loss. `negatives`, if given, are one hard negative per anchor.
pub fn mnrl(
    anchors: &Tensor,
    positives: &Tensor,
    negatives: Option<&Tensor>,
    scale: f64,
    symmetric: bool,
) -> Tensor {
    let a = normalized(anchors);
    let p = normalized(positives);
    let candidates = match negatives {
        Some(n) => Tensor::cat(&[p.shallow_clone(), normalized(n)], 0),
        None => p.shallow_clone(),
    };
    let batch = a.size()[0];
    let labels = Tensor::arange(batch, (Kind::Int64, a.device()));
    let scores = a.matmul(&candidates.transpose(0, 1)) * scale;
    let forward = scores.cross_entropy_loss::<Tensor>(&labels, None, Reduction::Mean, -100, 0.0);
    if symmetric {
        let backward = (p.matmul(&a.transpose(0, 1)) * scale).cross_entropy_loss::<Tensor>(
            &labels,
            None,
            Reduction::Mean,
            -100,
            0.0,
        );
        (forward + backward) / 2.0
    } else {
        forward
    }
}

/// Mean squared error between cos(a, b) and `labels` (0/1 floats).
pub fn cosine_mse(a: &Tensor, b: &Tensor, labels: &Tensor) -> Tensor {
    let cos = (normalized(a) * normalized(b)).sum_dim_intlist(1, false, None);
    cos.mse_loss(&labels.to_kind(cos.kind()), Reduction::Mean)
}

/// Margin contrastive loss on cosine distance.
pub fn contrastive(a: &Tensor, b: &Tensor, labels: &Tensor, margin: f64) -> Tensor {
    let cos: Tensor = (normalized(a) * normalized(b)).sum_dim_intlist(1, false, None);
    let distance: Tensor = cos.neg() + 1.0;
    let y = labels.to_kind(distance.kind());
    let positive = &y * distance.square();
    let negative = (y.neg() + 1.0) * (distance.neg() + margin).relu().square();
    ((positive + negative) * 0.5).mean(distance.kind())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(rows: &[[f32; 2]]) -> Tensor {
        let flat: Vec<f32> = rows.iter().flatten().copied().collect();
        Tensor::from_slice(&flat).view([rows.len() as i64, 2])
    }

    fn value(t: &Tensor) -> f64 {
        t.double_value(&[])
    }

    #[test]
    fn mnrl_is_low_when_each_anchor_matches_its_own_positive() {
        let anchors = t(&[[1.0, 0.0], [0.0, 1.0]]);
        let right = t(&[[2.0, 0.0], [0.0, 3.0]]);
        let swapped = t(&[[0.0, 1.0], [1.0, 0.0]]);
        let good = value(&mnrl(&anchors, &right, None, 20.0, false));
        let bad = value(&mnrl(&anchors, &swapped, None, 20.0, false));
        // log(1 + e^-20) and log(1 + e^20).
        assert!(good < 1e-6, "{good}");
        assert!((bad - 20.0).abs() < 1e-4, "{bad}");
        // A hard negative equal to the positive halves the odds: loss log 2.
        let hard = value(&mnrl(&anchors, &right, Some(&right), 20.0, false));
        assert!((hard - 2f64.ln()).abs() < 1e-4, "{hard}");
        let symmetric = value(&mnrl(&anchors, &right, None, 20.0, true));
        assert!(symmetric < 1e-6);
    }

    #[test]
    fn cosine_mse_and_contrastive_follow_their_definitions() {
        let a = t(&[[1.0, 0.0], [1.0, 0.0]]);
        let b = t(&[[1.0, 0.0], [0.0, 1.0]]);
        let labels = Tensor::from_slice(&[1.0f32, 1.0]);
        // cos = [1, 0]: errors [0, 1] → MSE 0.5.
        assert!((value(&cosine_mse(&a, &b, &labels)) - 0.5).abs() < 1e-6);
        // Contrastive, positives: d = [0, 1] → ½·(0 + 1)/2 = 0.25.
        assert!((value(&contrastive(&a, &b, &labels, 0.5)) - 0.25).abs() < 1e-6);
        // Negatives beyond the margin cost nothing; a negative at d = 0 costs ½·margin².
        let negatives = Tensor::from_slice(&[0.0f32, 0.0]);
        assert!((value(&contrastive(&a, &b, &negatives, 0.5)) - 0.0625).abs() < 1e-6);
    }
}
