//! The learning-rate schedule sentence-transformers uses by default: linear warmup from 0 to the
//! peak over `warmup` steps, then linear decay to 0 at `total` steps.

/// Learning rate at optimizer step `step` (0-based).
pub fn linear_warmup_decay(peak: f64, step: usize, warmup: usize, total: usize) -> f64 {
    if step < warmup {
        return peak * (step as f64 + 1.0) / warmup as f64;
    }
    let remaining = total.saturating_sub(step) as f64;
    let span = total.saturating_sub(warmup).max(1) as f64;
    peak * (remaining / span).clamp(0.0, 1.0)
}

/// Warmup steps from a ratio of the total (the ratio wins over a step count when both are set).
pub fn warmup_steps(total: usize, ratio: Option<f64>, steps: usize) -> usize {
    ratio
        .map_or(steps, |r| (total as f64 * r).ceil() as usize)
        .min(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warms_up_then_decays_to_zero() {
        let lr: Vec<f64> = (0..10)
            .map(|s| linear_warmup_decay(1.0, s, 2, 10))
            .collect();
        assert_eq!(lr[0], 0.5);
        assert_eq!(lr[1], 1.0);
        assert_eq!(lr[2], 1.0);
        assert!(lr[2..].windows(2).all(|w| w[1] < w[0]), "{lr:?}");
        assert_eq!(linear_warmup_decay(1.0, 10, 2, 10), 0.0);
        assert_eq!(
            linear_warmup_decay(1.0, 3, 0, 0),
            0.0,
            "no steps: no learning"
        );
        assert_eq!(warmup_steps(1000, Some(0.1), 5), 100);
        assert_eq!(warmup_steps(1000, None, 5), 5);
        assert_eq!(warmup_steps(10, None, 50), 10);
    }
}
