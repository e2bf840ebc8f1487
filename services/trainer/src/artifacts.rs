//! The published model folder: the fine-tuned encoder in the sentence-transformers layout (see
//! [`medembed_model::export`]) plus what a reader of the run wants next to it:
//! `metrics.json` ([`ModelMetrics`], written last: its presence means the folder is complete),
//! `training_log.parquet` (one row per optimizer step), `training_curves.png`,
//! `similarity_distribution.png` and `README.md`, a model card with the base model, data, loss,
//! hyperparameters and the metrics of the base model next to the fine-tuned one.

use std::path::Path;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema};
use medembed_corpus::rows::rows_to_batch;
use medembed_pipeline::config::TrainSettings;
use serde::{Deserialize, Serialize};

use crate::eval::EvalReport;
use crate::train::TrainOutcome;
use medembed_model::SentenceEncoder;

/// The file whose presence marks a complete model folder.
pub const METRICS_FILE: &str = "metrics.json";

/// How many pairs and evaluation items the run had.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DataSummary {
    pub train_pairs: usize,
    /// What the loss trained on (positive pairs for MNRL, all pairs otherwise).
    pub train_examples: usize,
    pub val_pairs: usize,
    pub test_pairs: usize,
    pub val_queries: usize,
    pub val_corpus: usize,
    pub test_queries: usize,
    pub test_corpus: usize,
}

impl DataSummary {
    pub fn of(inputs: &crate::train::TrainInputs, train_examples: usize) -> Self {
        Self {
            train_pairs: inputs.train.len(),
            train_examples,
            val_pairs: inputs.val.len(),
            test_pairs: inputs.test.len(),
            val_queries: inputs.val_set.queries.len(),
            val_corpus: inputs.val_set.corpus.len(),
            test_queries: inputs.test_set.queries.len(),
            test_corpus: inputs.test_set.corpus.len(),
        }
    }
}

/// Base model and fine-tuned model measured on the same split.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SplitReports {
    pub val: EvalReport,
    pub test: EvalReport,
}

/// `metrics.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelMetrics {
    pub base_model: String,
    pub device: String,
    /// What training computed in (`fp32` or `bf16`); the published weights are fp32.
    pub precision: String,
    pub settings: TrainSettings,
    pub data: DataSummary,
    pub optimizer_steps: usize,
    /// The published weights: the step with the best val nDCG@10 (0 = the base model).
    pub best_step: usize,
    pub train_seconds: f64,
    pub pairs_per_second: f64,
    pub resumes: u32,
    /// The hard negatives mined with the base model before training, and what it cost.
    #[serde(default)]
    pub mining: crate::mine::MiningReport,
    pub baseline: SplitReports,
    pub fine_tuned: SplitReports,
    pub created_at: String,
    /// Why the base model was published unchanged, without training (too few pairs); None
    /// when it was trained.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_trained: Option<String>,
}

/// Columns of `training_log.parquet`.
pub fn training_log_schema() -> Arc<Schema> {
    let u = |n: &str| Field::new(n, DataType::UInt64, false);
    let f = |n: &str| Field::new(n, DataType::Float64, false);
    Arc::new(Schema::new(vec![
        u("step"),
        u("epoch"),
        f("loss"),
        f("lr"),
        f("grad_norm"),
        u("pairs"),
        f("pairs_per_second"),
    ]))
}

/// Writes the whole folder to `dir`; `metrics.json` last.
pub fn write_model_folder(
    dir: &Path,
    outcome: &TrainOutcome,
    settings: &TrainSettings,
    base_model: &str,
    data: DataSummary,
) -> anyhow::Result<ModelMetrics> {
    outcome.encoder.save(dir)?;
    let p = &outcome.progress;

    let log_key = dir.join("training_log.parquet").display().to_string();
    let batch = rows_to_batch(&log_key, &training_log_schema(), &p.log)?;
    let bytes = medembed_pipeline::table::encode(&log_key, &training_log_schema(), &[batch])?;
    std::fs::write(dir.join("training_log.parquet"), bytes)?;

    crate::charts::training_curves(&dir.join("training_curves.png"), &p.log, &p.val_history)
        .map_err(|e| anyhow::anyhow!("training_curves.png: {e}"))?;
    crate::charts::similarity_distribution(
        &dir.join("similarity_distribution.png"),
        &[
            (
                "base model (val)",
                p.baseline_cosines.0.as_slice(),
                p.baseline_cosines.1.as_slice(),
            ),
            (
                "fine-tuned (val)",
                outcome.final_val.positive_cosines.as_slice(),
                outcome.final_val.negative_cosines.as_slice(),
            ),
        ],
    )
    .map_err(|e| anyhow::anyhow!("similarity_distribution.png: {e}"))?;

    let metrics = ModelMetrics {
        base_model: base_model.to_string(),
        device: format!("{:?}", outcome.encoder.vs.device()).to_lowercase(),
        precision: p.precision.clone(),
        settings: settings.clone(),
        data,
        optimizer_steps: p.step,
        best_step: p.best_step,
        train_seconds: p.train_seconds,
        pairs_per_second: p.pairs_seen as f64 / p.train_seconds.max(1e-9),
        resumes: p.resumes,
        mining: p.mining.clone(),
        baseline: SplitReports {
            val: p.baseline_val.clone(),
            test: p.baseline_test.clone(),
        },
        fine_tuned: SplitReports {
            val: outcome.final_val.clone(),
            test: outcome.final_test.clone(),
        },
        created_at: medembed_pipeline::status::now_rfc3339(),
        not_trained: None,
    };
    std::fs::write(dir.join("README.md"), model_card(&metrics))?;
    std::fs::write(
        dir.join(METRICS_FILE),
        serde_json::to_vec_pretty(&metrics).expect("metrics serialize"),
    )?;
    Ok(metrics)
}

/// Writes the base model unchanged to `dir` as the job's model, for a job with nothing to
/// train on: the weights, a model card and `metrics.json` that say why (`reason`); no training
/// log or charts. The job goes on to be indexed with it.
pub fn write_untrained_folder(
    dir: &Path,
    encoder: &SentenceEncoder,
    settings: &TrainSettings,
    base_model: &str,
    data: DataSummary,
    reason: &str,
) -> anyhow::Result<ModelMetrics> {
    encoder.save(dir)?;
    let metrics = ModelMetrics {
        base_model: base_model.to_string(),
        device: format!("{:?}", encoder.vs.device()).to_lowercase(),
        precision: String::new(),
        settings: settings.clone(),
        data,
        optimizer_steps: 0,
        best_step: 0,
        train_seconds: 0.0,
        pairs_per_second: 0.0,
        resumes: 0,
        mining: Default::default(),
        baseline: SplitReports::default(),
        fine_tuned: SplitReports::default(),
        created_at: medembed_pipeline::status::now_rfc3339(),
        not_trained: Some(reason.to_string()),
    };
    let card = format!(
        "---\nlibrary_name: sentence-transformers\npipeline_tag: sentence-similarity\ntags:\n- sentence-transformers\n- medembed\nbase_model: {base_model}\n---\n\n\
         # {base_model}, not fine-tuned\n\n\
         medembed published the base model unchanged for this job: {reason}.\n"
    );
    std::fs::write(dir.join("README.md"), card)?;
    std::fs::write(
        dir.join(METRICS_FILE),
        serde_json::to_vec_pretty(&metrics).expect("metrics serialize"),
    )?;
    Ok(metrics)
}

/// The model card: what was trained, on what, how, and how well.
pub fn model_card(m: &ModelMetrics) -> String {
    let s = &m.settings;
    let mut card = format!(
        "---\nlibrary_name: sentence-transformers\npipeline_tag: sentence-similarity\ntags:\n- sentence-transformers\n- feature-extraction\n- biomedical\n- medembed\nbase_model: {base}\n---\n\n\
         # medembed fine-tuned sentence encoder\n\n\
         Fine-tuned from `{base}` by medembed on pairs of biomedical articles (titles as queries \
         for their articles, citation links, shared MeSH descriptors or keywords as positives; \
         hard negatives mined with the base model). Load it with \
         `SentenceTransformer(\"path/to/this/folder\")` or with medembed itself.\n\n\
         ## Data\n\n\
         | | pairs | eval queries | eval corpus |\n|---|---:|---:|---:|\n\
         | train | {train} ({examples} used by the loss) | | |\n\
         | val | {val} | {vq} | {vc} |\n\
         | test | {test} | {tq} | {tc} |\n\n\
         Splits are by document: no abstract is in two splits.\n\n\
         ## Training\n\n\
         | setting | value |\n|---|---|\n\
         | loss | `{loss}` (scale {scale}, symmetric {symmetric}) |\n\
         | epochs | {epochs} |\n| batch size | {batch} (gradient accumulation {accum}) |\n\
         | learning rate | {lr} (AdamW, weight decay {wd}, warmup ratio {wr} / steps {ws}, linear decay) |\n\
         | max gradient norm | {clip} |\n| max sequence length | {len} |\n| seed | {seed} |\n\
         | hard negatives mined | {mined} for {mined_queries} queries in {mined_secs:.1} s ({mined_dropped} dropped as likely positives) |\n\
         | optimizer steps | {steps} (published: step {best}, best val nDCG@10) |\n\
         | device | {device} ({precision} matmuls) |\n| training time | {secs:.1} s ({pps:.1} pairs/s) |\n\n\
         ## Evaluation\n\n\
         Retrieval, query-style: each held-out article's title is a query over the split's \
         articles without their titles, judged 3 for its own article, 2 for a citation link, 1 for \
         shared MeSH descriptors or keywords; ranked in the job's default hybrid search (BM25 and \
         the model fused by reciprocal rank), dense alone below. Labelled pairs: Spearman of cosine \
         vs label and ROC-AUC.\n\n\
         | metric | base val | fine-tuned val | base test | fine-tuned test |\n|---|---:|---:|---:|---:|\n",
        base = m.base_model,
        train = m.data.train_pairs,
        examples = m.data.train_examples,
        val = m.data.val_pairs,
        vq = m.data.val_queries,
        vc = m.data.val_corpus,
        test = m.data.test_pairs,
        tq = m.data.test_queries,
        tc = m.data.test_corpus,
        loss = s.loss.name(),
        scale = s.scale,
        symmetric = s.symmetric,
        epochs = s.epochs,
        batch = s.batch_size,
        accum = s.gradient_accumulation,
        lr = s.learning_rate,
        wd = s.weight_decay,
        wr = s.warmup_ratio,
        ws = s.warmup_steps,
        clip = s.max_grad_norm,
        len = s.max_seq_length,
        seed = s.seed,
        mined = m.mining.negatives,
        mined_queries = m.mining.queries,
        mined_secs = m.mining.seconds,
        mined_dropped = m.mining.dropped_as_likely_positive,
        steps = m.optimizer_steps,
        best = m.best_step,
        device = m.device,
        precision = m.precision,
        secs = m.train_seconds,
        pps = m.pairs_per_second,
    );
    type Measure = fn(&EvalReport) -> f64;
    let rows: [(&str, Measure); 13] = [
        ("nDCG@10 (hybrid)", |r| r.ndcg_at_10),
        ("MRR@10 (hybrid)", |r| r.mrr_at_10),
        ("Recall@1", |r| r.recall_at_1),
        ("Recall@10", |r| r.recall_at_10),
        ("Recall@100", |r| r.recall_at_100),
        ("MAP@100", |r| r.map_at_100),
        ("nDCG@10 (dense)", |r| r.dense_ndcg_at_10),
        ("MRR@10 (dense)", |r| r.dense_mrr_at_10),
        ("nDCG@10 (BM25 alone)", |r| r.lexical_ndcg_at_10),
        ("nDCG@10 on relations alone (hybrid)", |r| {
            r.related_ndcg_at_10
        }),
        ("nDCG@10 on relations alone (dense)", |r| {
            r.related_dense_ndcg_at_10
        }),
        ("Spearman (cosine vs label)", |r| r.spearman),
        ("ROC-AUC", |r| r.roc_auc),
    ];
    for (name, get) in rows {
        card.push_str(&format!(
            "| {name} | {:.4} | {:.4} | {:.4} | {:.4} |\n",
            get(&m.baseline.val),
            get(&m.fine_tuned.val),
            get(&m.baseline.test),
            get(&m.fine_tuned.test)
        ));
    }
    card.push_str(
        "\n![training curves](training_curves.png)\n\n\
         ![similarity distribution](similarity_distribution.png)\n\n\
         `training_log.parquet` has one row per optimizer step (step, epoch, loss, lr, grad_norm, \
         pairs, pairs_per_second); `metrics.json` has every figure above.\n",
    );
    card
}
