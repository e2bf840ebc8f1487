//! The run's charts, as PNG (plotters, with an embedded DejaVu Sans so no system fonts are
//! needed):
//! - `training_curves.png`: loss, learning rate and val nDCG@10 over optimizer steps;
//! - `similarity_distribution.png`: histograms of cosine for positive vs negative val pairs, for
//!   the base model and the fine-tuned one (what the original project drew from random numbers).

use std::path::Path;
use std::sync::Once;

use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::train::{EvalPoint, LogRow};

const FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The only failure is a malformed font, which the tests would catch.
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

type ChartResult = Result<(), String>;

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// Loss, learning rate and val nDCG@10 against the step, one panel each.
pub fn training_curves(path: &Path, log: &[LogRow], val: &[EvalPoint]) -> ChartResult {
    register_font();
    let root = BitMapBackend::new(path, (1500, 450)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let panels = root.split_evenly((1, 3));
    let last_step = log.last().map_or(1, |r| r.step).max(1) as f64;
    let loss: Vec<(f64, f64)> = log.iter().map(|r| (r.step as f64, r.loss)).collect();
    let lr: Vec<(f64, f64)> = log.iter().map(|r| (r.step as f64, r.lr)).collect();
    let ndcg: Vec<(f64, f64)> = val.iter().map(|p| (p.step as f64, p.ndcg_at_10)).collect();
    for (area, (title, points, colour)) in panels.iter().zip([
        ("training loss", loss, BLUE),
        ("learning rate", lr, GREEN),
        ("val nDCG@10", ndcg, RED),
    ]) {
        let (lo, hi) = points
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &(_, y)| {
                (lo.min(y), hi.max(y))
            });
        let (lo, hi) = if lo.is_finite() { (lo, hi) } else { (0.0, 1.0) };
        let pad = ((hi - lo) * 0.1).max(1e-9);
        let mut chart = ChartBuilder::on(area)
            .caption(title, ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(70)
            .build_cartesian_2d(0.0..last_step, (lo - pad)..(hi + pad))
            .map_err(err)?;
        // Learning rates are tiny numbers: scientific notation keeps their labels apart.
        let y_format = |v: &f64| {
            if hi.abs() < 0.01 {
                format!("{v:.1e}")
            } else {
                format!("{v:.3}")
            }
        };
        chart
            .configure_mesh()
            .x_desc("optimizer step")
            .x_label_formatter(&|v| format!("{v:.0}"))
            .y_label_formatter(&y_format)
            .label_style(("sans-serif", 13))
            .draw()
            .map_err(err)?;
        chart
            .draw_series(LineSeries::new(points.clone(), colour.stroke_width(2)))
            .map_err(err)?;
        if points.len() < 30 {
            chart
                .draw_series(points.iter().map(|&p| Circle::new(p, 3, colour.filled())))
                .map_err(err)?;
        }
    }
    root.present().map_err(err)
}

/// Cosines of positive and negative pairs as overlaid histograms; one panel per model.
pub fn similarity_distribution(path: &Path, panels: &[(&str, &[f32], &[f32])]) -> ChartResult {
    register_font();
    const BINS: usize = 40;
    let root = BitMapBackend::new(path, (1000, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let areas = root.split_evenly((1, panels.len().max(1)));
    let (lo, hi) = panels
        .iter()
        .flat_map(|(_, p, n)| p.iter().chain(n.iter()))
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &c| {
            (lo.min(f64::from(c)), hi.max(f64::from(c)))
        });
    let (lo, hi) = if lo.is_finite() {
        (lo.min(0.0), hi.max(1.0))
    } else {
        (-1.0, 1.0)
    };
    let width = (hi - lo) / BINS as f64;
    let histogram = |values: &[f32]| -> Vec<f64> {
        let mut counts = vec![0.0; BINS];
        for &v in values {
            let bin = (((f64::from(v) - lo) / width) as usize).min(BINS - 1);
            counts[bin] += 1.0;
        }
        let total = values.len().max(1) as f64;
        counts.iter().map(|c| c / total).collect()
    };
    for (area, (title, positives, negatives)) in areas.iter().zip(panels) {
        let (pos, neg) = (histogram(positives), histogram(negatives));
        let top = pos
            .iter()
            .chain(&neg)
            .copied()
            .fold(0.0, f64::max)
            .max(0.01)
            * 1.1;
        let mut chart = ChartBuilder::on(area)
            .caption(*title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(56)
            .build_cartesian_2d(lo..hi, 0.0..top)
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("cosine similarity")
            .y_desc("share of pairs")
            .label_style(("sans-serif", 13))
            .draw()
            .map_err(err)?;
        for (counts, colour, label, n) in [
            (&pos, GREEN, "positive pairs", positives.len()),
            (&neg, RED, "negative pairs", negatives.len()),
        ] {
            chart
                .draw_series(counts.iter().enumerate().map(|(i, &c)| {
                    let x0 = lo + i as f64 * width;
                    Rectangle::new([(x0, 0.0), (x0 + width, c)], colour.mix(0.45).filled())
                }))
                .map_err(err)?
                .label(format!("{label} ({n})"))
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 12, y + 5)], colour.mix(0.45).filled())
                });
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font(("sans-serif", 13))
            .draw()
            .map_err(err)?;
    }
    root.present().map_err(err)
}
