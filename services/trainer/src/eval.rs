//! Evaluation of an encoder, the way the trainer reports it for the base model and the fine-tuned
//! one side by side:
//! - retrieval on a [`RetrievalSet`]: every query ranks the whole corpus (its own document left
//!   out) by cosine; nDCG@10, MRR@10, Recall@1/10/100 and MAP@100, averaged over queries;
//! - labelled pairs: Spearman of cosine vs label, ROC-AUC, and the cosines themselves (for the
//!   similarity-distribution chart).

use std::collections::{HashMap, HashSet};

use medembed_model::SentenceEncoder;
use medembed_retrieval::Measures;
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::data::{LabelledPair, RetrievalSet};
use crate::metrics::{roc_auc, spearman};

/// What one evaluation measured.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    pub ndcg_at_10: f64,
    pub mrr_at_10: f64,
    pub recall_at_1: f64,
    pub recall_at_10: f64,
    pub recall_at_100: f64,
    pub map_at_100: f64,
    pub queries: usize,
    pub corpus: usize,
    /// Over labelled pairs; 0 / 0.5 when the split has no pairs of one label.
    pub spearman: f64,
    pub roc_auc: f64,
    pub labelled_pairs: usize,
    /// Cosine of each positive and each negative pair (for the distribution chart; not in
    /// metrics.json).
    #[serde(skip)]
    pub positive_cosines: Vec<f32>,
    #[serde(skip)]
    pub negative_cosines: Vec<f32>,
}

/// Unit-length rows `[n, dim]` of embeddings.
fn unit_rows(vectors: &[Vec<f32>], dim: usize) -> Tensor {
    let flat: Vec<f32> = vectors.iter().flatten().copied().collect();
    let t = Tensor::from_slice(&flat).view([vectors.len() as i64, dim as i64]);
    &t / t.norm_scalaropt_dim(2, [1], true).clamp_min(1e-12)
}

/// Evaluates `encoder` (in eval mode: no dropout) on a split.
pub fn evaluate(
    encoder: &SentenceEncoder,
    set: &RetrievalSet,
    pairs: &[LabelledPair],
) -> medembed_model::Result<EvalReport> {
    let dim = encoder.dimension();
    let mut report = EvalReport {
        queries: set.queries.len(),
        corpus: set.corpus.len(),
        labelled_pairs: pairs.len(),
        ..EvalReport::default()
    };
    if !set.queries.is_empty() && !set.corpus.is_empty() {
        let docs: Vec<&str> = set.corpus.iter().map(|d| d.text.as_str()).collect();
        let queries: Vec<&str> = set.queries.iter().map(|q| q.query.as_str()).collect();
        let docs = unit_rows(&encoder.encode(&docs)?, dim);
        let queries = unit_rows(&encoder.encode(&queries)?, dim);
        let position: HashMap<&str, i64> = set
            .corpus
            .iter()
            .enumerate()
            .map(|(i, d)| (d.id.as_str(), i as i64))
            .collect();
        let k = (101).min(set.corpus.len() as i64);
        let mut all = Vec::with_capacity(set.queries.len());
        // Queries in blocks, so the score matrix stays small on a large corpus.
        for (block, chunk) in set.queries.chunks(256).enumerate() {
            let start = (block * 256) as i64;
            let q = queries.narrow(0, start, chunk.len() as i64);
            let scores = q.matmul(&docs.transpose(0, 1));
            for (row, query) in chunk.iter().enumerate() {
                if let Some(&own) = position.get(query.query_id.as_str()) {
                    let _ = scores.get(row as i64).get(own).fill_(f64::NEG_INFINITY);
                }
            }
            let (_, top) = scores.topk(k, 1, true, true);
            let top: Vec<i64> = Vec::<i64>::try_from(top.flatten(0, -1)).expect("int64 indices");
            for (row, query) in chunk.iter().enumerate() {
                let ranked: Vec<&str> = top[row * k as usize..(row + 1) * k as usize]
                    .iter()
                    .map(|&i| set.corpus[i as usize].id.as_str())
                    .filter(|id| *id != query.query_id)
                    .take(100)
                    .collect();
                let relevant: HashSet<&str> =
                    query.relevant_ids.iter().map(String::as_str).collect();
                all.push(Measures::binary(&ranked, &relevant));
            }
        }
        let mean = Measures::mean(&all);
        report.ndcg_at_10 = mean.ndcg_at_10;
        report.mrr_at_10 = mean.mrr_at_10;
        report.recall_at_1 = mean.recall_at_1;
        report.recall_at_10 = mean.recall_at_10;
        report.recall_at_100 = mean.recall_at_100;
        report.map_at_100 = mean.map_at_100;
    }
    if !pairs.is_empty() {
        let a: Vec<&str> = pairs.iter().map(|p| p.text_a.as_str()).collect();
        let b: Vec<&str> = pairs.iter().map(|p| p.text_b.as_str()).collect();
        let cos = (unit_rows(&encoder.encode(&a)?, dim) * unit_rows(&encoder.encode(&b)?, dim))
            .sum_dim_intlist(1, false, Kind::Float);
        let cos: Vec<f32> = Vec::<f32>::try_from(cos).expect("float cosines");
        let labels: Vec<f64> = pairs.iter().map(|p| f64::from(p.label)).collect();
        let scores: Vec<f64> = cos.iter().map(|&c| f64::from(c)).collect();
        report.spearman = spearman(&scores, &labels);
        report.roc_auc = roc_auc(
            &scores,
            &labels.iter().map(|&l| l >= 0.5).collect::<Vec<_>>(),
        );
        for (c, p) in cos.iter().zip(pairs) {
            if p.label >= 0.5 {
                report.positive_cosines.push(*c);
            } else {
                report.negative_cosines.push(*c);
            }
        }
    }
    Ok(report)
}
