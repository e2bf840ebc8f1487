//! The training loop: contrastive fine-tuning of a [`SentenceEncoder`] on labelled pairs, with
//! evaluation, checkpoints and resume.
//!
//! A run is a pure function of (base model, pairs, settings): the data order of epoch `e` comes
//! from `seed + e` ([`no_duplicate_batches`]), and libtorch's generator (dropout) is re-seeded from
//! (seed, step, micro-batch) before every forward pass. So a checkpoint needs no RNG state: a run
//! resumed at step N draws exactly what the uninterrupted run drew from step N on, and ends with
//! the same number of optimizer steps (and, on the CPU, the same weights).
//!
//! Per optimizer step: `gradient_accumulation` batches, each backpropagated with its loss divided
//! by their number; gradients clipped to `max_grad_norm`; AdamW with linear warmup and decay.
//! `cached_mnrl` embeds each batch in `mini_batch_size` chunks twice (GradCache): once without a
//! graph to compute the loss and its gradient with respect to the embeddings, then chunk by chunk
//! with a graph, backpropagating those gradients, so memory holds one chunk's activations while
//! the loss sees the whole batch.
//!
//! Evaluation on val runs before training (the base model), at the end of each epoch and every
//! `eval_every_steps`; the best weights by val nDCG@10 (the base model included) are kept and are
//! what the run returns.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use medembed_model::{ModelError, Precision, SentenceEncoder};
use medembed_pipeline::config::{TrainLoss, TrainSettings};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tch::Tensor;
use tokio_util::sync::CancellationToken;

use crate::adamw::AdamW;
use crate::batches::no_duplicate_batches;
use crate::checkpoint::{Checkpoint, CheckpointStore};
use crate::data::{LabelledPair, RetrievalSet, TextTable};
use crate::eval::{EvalReport, Ranking, evaluate, lexical_rankings};
use crate::loss::{contrastive, cosine_mse, mnrl};
use crate::mine::{MineSettings, MiningReport, mine};
use crate::schedule::{linear_warmup_decay, warmup_steps};

/// Everything a run learns from and is measured on.
#[derive(Debug, Clone, Default)]
pub struct TrainInputs {
    pub train: Vec<LabelledPair>,
    pub val: Vec<LabelledPair>,
    pub test: Vec<LabelledPair>,
    pub val_set: RetrievalSet,
    pub test_set: RetrievalSet,
}

/// One row of `training_log.parquet`: one optimizer step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogRow {
    pub step: u64,
    pub epoch: u64,
    pub loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
    /// Pairs in this step's batches.
    pub pairs: u64,
    pub pairs_per_second: f64,
}

/// A val evaluation during the run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalPoint {
    pub step: usize,
    pub ndcg_at_10: f64,
}

/// Where a run stands; saved with every checkpoint.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// Hash of the settings and data: a checkpoint of another run is never resumed.
    pub fingerprint: String,
    /// Optimizer steps done, of `total_steps`.
    pub step: usize,
    pub total_steps: usize,
    /// The epoch being trained and the batches of it already done.
    pub epoch: usize,
    pub batch_in_epoch: usize,
    pub pairs_seen: u64,
    /// Seconds spent training (not evaluating), summed over resumes.
    pub train_seconds: f64,
    pub log: Vec<LogRow>,
    pub val_history: Vec<EvalPoint>,
    /// Step of the best val nDCG@10 so far (0: the base model).
    pub best_step: usize,
    pub best_ndcg: f64,
    pub baseline_val: EvalReport,
    pub baseline_test: EvalReport,
    /// The base model's val cosines (positive, negative), for the distribution chart.
    pub baseline_cosines: (Vec<f32>, Vec<f32>),
    /// How many times this run was resumed from a checkpoint.
    pub resumes: u32,
    /// What the matmuls computed in (`fp32`, `bf16`); evaluation is always fp32.
    #[serde(default)]
    pub precision: String,
    /// The hard-negative mining before the first step.
    #[serde(default)]
    pub mining: MiningReport,
}

/// BM25's rankings of the val and test sets: the same for every evaluation of a run.
struct Lexical {
    val: Vec<Ranking>,
    test: Vec<Ranking>,
}

impl Lexical {
    fn of(inputs: &TrainInputs) -> Result<Self, TrainError> {
        let rank = |set| lexical_rankings(set).map_err(|e| TrainError::Data(e.to_string()));
        Ok(Self {
            val: rank(&inputs.val_set)?,
            test: rank(&inputs.test_set)?,
        })
    }
}

/// What a finished run hands back: the encoder with the best weights, and how it went.
#[derive(Debug)]
pub struct TrainOutcome {
    pub encoder: SentenceEncoder,
    pub progress: Progress,
    pub final_val: EvalReport,
    pub final_test: EvalReport,
    pub examples: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The pairs cannot train anything (none, no positives for MNRL, …): permanent.
    #[error("training data: {0}")]
    Data(String),
    #[error(transparent)]
    Model(#[from] ModelError),
    /// Reading or writing a checkpoint failed (a store hiccup: retryable).
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    /// Asked to stop; the last checkpoint holds the progress.
    #[error("interrupted at step {step} of {total}; the checkpoint resumes it")]
    Interrupted { step: usize, total: usize },
}

/// Told what a run does as it goes (metrics, job status, a progress line).
pub trait Observer {
    /// After each optimizer step.
    fn step(&mut self, _progress: &Progress, _row: &LogRow) {}
    /// After each evaluation; `split` is `val` or `test`, `label` `base`, `step N` or `final`.
    fn evaluated(&mut self, _split: &str, _label: &str, _report: &EvalReport) {}
    /// A phase begins (`tokenizing`, `evaluating the base model`, …).
    fn phase(&mut self, _what: &str) {}
}

/// An observer that ignores everything.
#[derive(Debug, Default)]
pub struct Quiet;
impl Observer for Quiet {}

/// One training example: indices into the run's text table.
#[derive(Debug, Clone)]
struct Example {
    a: usize,
    b: usize,
    /// Hard negatives: mined ones first, then the pair-builder's.
    negatives: Vec<usize>,
    label: f32,
}

/// Which text of an example a forward pass embeds.
#[derive(Debug, Clone, Copy)]
enum Side {
    Anchor,
    Partner,
    /// The k-th hard negative; only for batches whose every example has more than k.
    Negative(usize),
}

impl Side {
    fn of(self, e: &Example) -> usize {
        match self {
            Side::Anchor => e.a,
            Side::Partner => e.b,
            Side::Negative(k) => e.negatives[k],
        }
    }
}

/// The examples a loss trains on, with texts de-duplicated into one table.
struct Examples {
    texts: Vec<String>,
    tokens: Vec<Vec<i64>>,
    items: Vec<Example>,
    mining: MiningReport,
}

impl Examples {
    fn build(
        settings: &TrainSettings,
        pairs: &[LabelledPair],
        encoder: &SentenceEncoder,
    ) -> Result<Self, TrainError> {
        let mut table = TextTable::default();
        let mut id = |t| table.id(t);
        let mut items = Vec::new();
        if settings.loss.uses_in_batch_negatives() {
            // One hard negative per anchor, the first the pair-builder wrote for it.
            let mut hard: HashMap<&str, &str> = HashMap::new();
            if settings.use_hard_negatives {
                for p in pairs.iter().filter(|p| p.label < 0.5 && p.source == "hard") {
                    hard.entry(p.text_a.as_str()).or_insert(p.text_b.as_str());
                }
            }
            for p in pairs.iter().filter(|p| p.label >= 0.5) {
                let negatives = hard.get(p.text_a.as_str()).map(|n| id(n));
                items.push(Example {
                    a: id(&p.text_a),
                    b: id(&p.text_b),
                    negatives: negatives.into_iter().collect(),
                    label: 1.0,
                });
            }
            if items.is_empty() {
                return Err(TrainError::Data(format!(
                    "no positive pairs among {} training pairs: {} learns from positives",
                    pairs.len(),
                    settings.loss.name()
                )));
            }
        } else {
            for p in pairs {
                items.push(Example {
                    a: id(&p.text_a),
                    b: id(&p.text_b),
                    negatives: Vec::new(),
                    label: p.label,
                });
            }
            if items.is_empty() {
                return Err(TrainError::Data("no training pairs".into()));
            }
        }
        let tokens = encoder.tokenize(&table.texts)?;
        Ok(Self {
            texts: table.texts.iter().map(|t| t.to_string()).collect(),
            tokens,
            items,
            mining: MiningReport::default(),
        })
    }

    /// Mines hard negatives ([`crate::mine`]) with `encoder` (the base weights: a resumed run
    /// mines the same ones again) for the queries of the examples in `used` (those the run's
    /// batches train on: a step budget mines only for what it reaches), among the documents of
    /// every positive example, and puts them before the pair-builder's negatives.
    fn mine_negatives(
        &mut self,
        settings: &TrainSettings,
        pairs: &[LabelledPair],
        encoder: &SentenceEncoder,
        used: &[usize],
    ) -> Result<(), TrainError> {
        if !settings.loss.uses_in_batch_negatives() || settings.mined_negatives == 0 {
            return Ok(());
        }
        // The documents of each text, and the documents related to each (positive pairs of two
        // documents: citation, MeSH, keyword), so that a query's related documents, in any of
        // their texts, are never its negatives.
        let index: HashMap<&str, usize> = self
            .texts
            .iter()
            .enumerate()
            .map(|(i, t)| (t.as_str(), i))
            .collect();
        let mut texts_of_doc: HashMap<&str, HashSet<usize>> = HashMap::new();
        let mut related: HashMap<&str, HashSet<&str>> = HashMap::new();
        for p in pairs.iter().filter(|p| p.label >= 0.5) {
            for (id, text) in [(&p.id_a, &p.text_a), (&p.id_b, &p.text_b)] {
                if !id.is_empty() {
                    texts_of_doc
                        .entry(id)
                        .or_default()
                        .insert(index[text.as_str()]);
                }
            }
            if !p.id_a.is_empty() && !p.id_b.is_empty() {
                related.entry(&p.id_a).or_default().insert(&p.id_b);
                related.entry(&p.id_b).or_default().insert(&p.id_a);
            }
        }
        let mut positives: HashMap<usize, HashSet<usize>> = HashMap::new();
        for p in pairs.iter().filter(|p| p.label >= 0.5) {
            let (a, b) = (index[p.text_a.as_str()], index[p.text_b.as_str()]);
            let known = positives.entry(a).or_default();
            known.insert(b);
            // Its own document's other texts (its full text beside a title's body), and every
            // text of a related document.
            let own = std::iter::once(p.id_a.as_str());
            for doc in own.chain(related.get(p.id_a.as_str()).into_iter().flatten().copied()) {
                known.extend(texts_of_doc.get(doc).into_iter().flatten());
            }
        }
        let queries: Vec<usize> = used.iter().map(|&i| self.items[i].a).collect();
        // One text per training document: the answer side of its title pair (its text without
        // the title, what title queries are trained to find), else the first partner text of it;
        // pairs without ids (CSV) bring every partner text.
        let mut chosen: HashMap<&str, usize> = HashMap::new();
        let mut documents: Vec<usize> = Vec::new();
        for p in pairs.iter().filter(|p| p.label >= 0.5) {
            let b = index[p.text_b.as_str()];
            if p.id_b.is_empty() {
                documents.push(b);
            } else if p.source == "title" {
                chosen.insert(&p.id_b, b);
            } else {
                chosen.entry(&p.id_b).or_insert(b);
            }
        }
        documents.extend(chosen.into_values());
        let (mined, report) = mine(
            encoder,
            &self.texts,
            &queries,
            &documents,
            &positives,
            &MineSettings::of(settings),
        )?;
        for e in &mut self.items {
            if let Some(found) = mined.get(&e.a) {
                let mut negatives = found.clone();
                negatives.extend(e.negatives.iter().filter(|n| !found.contains(n)));
                e.negatives = negatives;
            }
        }
        self.mining = report;
        Ok(())
    }

    /// The batches of epoch `epoch` (indices into `items`).
    fn batches(&self, settings: &TrainSettings, epoch: usize) -> Vec<Vec<usize>> {
        let seed = settings.seed.wrapping_add(epoch as u64);
        if settings.loss.uses_in_batch_negatives() {
            let pairs: Vec<(&str, &str)> = self
                .items
                .iter()
                .map(|e| (self.texts[e.a].as_str(), self.texts[e.b].as_str()))
                .collect();
            // A batch of one pair has no negative to learn from (its loss is 0): left out.
            no_duplicate_batches(&pairs, settings.batch_size, seed)
                .into_iter()
                .filter(|b| b.len() >= 2)
                .collect()
        } else {
            let mut order: Vec<usize> = (0..self.items.len()).collect();
            order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
            order
                .chunks(settings.batch_size)
                .map(<[usize]>::to_vec)
                .collect()
        }
    }
}

/// A fingerprint of what determines a run.
fn fingerprint(settings: &TrainSettings, base_model: &str, inputs: &TrainInputs) -> String {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(
        serde_json::to_string(settings)
            .expect("settings serialize")
            .as_bytes(),
    );
    h.update(base_model.as_bytes());
    for p in &inputs.train {
        h.update(p.text_a.as_bytes());
        h.update(&[0]);
        h.update(p.text_b.as_bytes());
        h.update(&p.label.to_le_bytes());
    }
    format!("{:016x}", h.digest())
}

/// libtorch's seed for one forward pass: a function of where in the run it happens.
fn pass_seed(seed: u64, step: usize, micro: usize, part: usize) -> i64 {
    // splitmix64 of the mixed coordinates.
    let mut z = seed
        ^ (step as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ (micro as u64).wrapping_mul(0xBF58_476D_1CE4_E5B9)
        ^ (part as u64).wrapping_mul(0x94D0_49BB_1331_11EB);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)) as i64 & i64::MAX
}

/// The run: settings, data, model, and where checkpoints go.
pub struct Run<'a> {
    pub settings: &'a TrainSettings,
    /// As the user named it (hub id, path, s3 URL): part of the fingerprint and the model card.
    pub base_model: &'a str,
    pub inputs: &'a TrainInputs,
    pub checkpoints: &'a dyn CheckpointStore,
    pub stop: CancellationToken,
}

impl std::fmt::Debug for Run<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Run")
            .field("base_model", &self.base_model)
            .field("loss", &self.settings.loss)
            .field("train_pairs", &self.inputs.train.len())
            .finish_non_exhaustive()
    }
}

impl Run<'_> {
    /// Trains `encoder` (freshly loaded base weights), resuming from the latest checkpoint if
    /// there is one of this run.
    pub fn train(
        &self,
        mut encoder: SentenceEncoder,
        observer: &mut dyn Observer,
    ) -> Result<TrainOutcome, TrainError> {
        let s = self.settings;
        encoder.set_max_seq_length(s.max_seq_length)?;
        encoder.set_precision(Precision::for_setting(s.precision, encoder.vs.device()));
        observer.phase(&format!(
            "training on {:?} in {:?}",
            encoder.vs.device(),
            encoder.bert.compute_kind()
        ));
        let lexical = Lexical::of(self.inputs)?;
        observer.phase("tokenizing");
        let mut examples = Examples::build(s, &self.inputs.train, &encoder)?;
        let accumulation = s.gradient_accumulation;
        let mut epochs: Vec<Vec<Vec<usize>>> =
            (0..s.epochs).map(|e| examples.batches(s, e)).collect();
        if s.max_steps > 0 {
            // The step budget: keep the batches of the first max_steps steps, in training
            // order (a step is a group of `accumulation` batches, never across epochs).
            let mut left = s.max_steps;
            for batches in &mut epochs {
                batches.truncate(left * accumulation);
                left -= batches.len().div_ceil(accumulation);
            }
            // Epochs past the budget would train nothing but still end with an evaluation
            // and a checkpoint each.
            while epochs.len() > 1 && epochs.last().is_some_and(Vec::is_empty) {
                epochs.pop();
            }
        }
        let total_steps: usize = epochs.iter().map(|b| b.len().div_ceil(accumulation)).sum();
        if s.mined_negatives > 0 && s.loss.uses_in_batch_negatives() {
            observer.phase("mining hard negatives with the base model");
            let used: Vec<usize> = epochs.iter().flatten().flatten().copied().collect();
            examples.mine_negatives(s, &self.inputs.train, &encoder, &used)?;
            let m = &examples.mining;
            observer.phase(&format!(
                "{} hard negatives mined for {} queries among {} documents in {:.0} s ({} \
                 candidates dropped as likely positives)",
                m.negatives, m.queries, m.documents, m.seconds, m.dropped_as_likely_positive
            ));
        }
        let warmup = if s.warmup_steps > 0 {
            warmup_steps(total_steps, None, s.warmup_steps)
        } else {
            warmup_steps(total_steps, Some(s.warmup_ratio), 0)
        };
        let mut optimizer = AdamW::new(&encoder.vs, s.weight_decay);
        let fingerprint = fingerprint(s, self.base_model, self.inputs);

        let mut progress = match self.checkpoints.load()? {
            Some(checkpoint) if checkpoint.progress.fingerprint == fingerprint => {
                encoder.set_weights(&checkpoint.weights)?;
                optimizer
                    .load_state(&checkpoint.optimizer, checkpoint.optimizer_steps)
                    .map_err(TrainError::Checkpoint)?;
                let mut progress = checkpoint.progress;
                progress.resumes += 1;
                observer.phase(&format!(
                    "resuming at step {} of {}",
                    progress.step, progress.total_steps
                ));
                progress
            }
            found => {
                if found.is_some() {
                    observer
                        .phase("a checkpoint of another run (other settings or data) is ignored");
                }
                observer.phase("evaluating the base model");
                let baseline_val =
                    self.evaluate(&mut encoder, &lexical, "val", "base", observer)?;
                let baseline_test =
                    self.evaluate(&mut encoder, &lexical, "test", "base", observer)?;
                let progress = Progress {
                    fingerprint: fingerprint.clone(),
                    total_steps,
                    best_step: 0,
                    best_ndcg: baseline_val.ndcg_at_10,
                    baseline_cosines: (
                        baseline_val.positive_cosines.clone(),
                        baseline_val.negative_cosines.clone(),
                    ),
                    val_history: vec![EvalPoint {
                        step: 0,
                        ndcg_at_10: baseline_val.ndcg_at_10,
                    }],
                    baseline_val,
                    baseline_test,
                    ..Progress::default()
                };
                self.checkpoints.save_best(&encoder.named_weights())?;
                self.save(&progress, &encoder, &optimizer)?;
                progress
            }
        };

        progress.mining = examples.mining.clone();
        progress.precision = match encoder.bert.compute_kind() {
            tch::Kind::BFloat16 => "bf16".into(),
            _ => "fp32".into(),
        };
        observer.phase("training");
        let mut since_eval = false;
        while progress.epoch < epochs.len() {
            let batches = &epochs[progress.epoch];
            while progress.batch_in_epoch < batches.len() {
                if self.stop.is_cancelled() {
                    self.save(&progress, &encoder, &optimizer)?;
                    return Err(TrainError::Interrupted {
                        step: progress.step,
                        total: total_steps,
                    });
                }
                let started = Instant::now();
                let end = (progress.batch_in_epoch + accumulation).min(batches.len());
                let group = &batches[progress.batch_in_epoch..end];
                optimizer.zero_grad();
                let mut loss = 0.0;
                let mut pairs = 0;
                for (micro, batch) in group.iter().enumerate() {
                    let items: Vec<Example> =
                        batch.iter().map(|&i| examples.items[i].clone()).collect();
                    loss += self.backward(
                        &encoder,
                        &examples,
                        &items,
                        progress.step,
                        micro,
                        group.len(),
                    );
                    pairs += items.len();
                }
                let grad_norm = optimizer.clip_grad_norm(s.max_grad_norm);
                let lr = linear_warmup_decay(s.learning_rate, progress.step, warmup, total_steps);
                optimizer.step(lr);
                let seconds = started.elapsed().as_secs_f64();
                progress.step += 1;
                progress.batch_in_epoch = end;
                progress.pairs_seen += pairs as u64;
                progress.train_seconds += seconds;
                let row = LogRow {
                    step: progress.step as u64,
                    epoch: progress.epoch as u64,
                    loss,
                    lr,
                    grad_norm,
                    pairs: pairs as u64,
                    pairs_per_second: pairs as f64 / seconds.max(1e-9),
                };
                progress.log.push(row.clone());
                observer.step(&progress, &row);
                since_eval = true;
                let epoch_done = progress.batch_in_epoch == batches.len();
                if s.eval_every_steps > 0 && progress.step % s.eval_every_steps == 0 && !epoch_done
                {
                    self.evaluate_and_keep_best(&mut encoder, &lexical, &mut progress, observer)?;
                    since_eval = false;
                    self.save(&progress, &encoder, &optimizer)?;
                } else if s.checkpoint_every_steps > 0
                    && progress.step % s.checkpoint_every_steps == 0
                    && !epoch_done
                {
                    self.save(&progress, &encoder, &optimizer)?;
                }
            }
            if since_eval {
                self.evaluate_and_keep_best(&mut encoder, &lexical, &mut progress, observer)?;
                since_eval = false;
            }
            progress.epoch += 1;
            progress.batch_in_epoch = 0;
            self.save(&progress, &encoder, &optimizer)?;
        }

        let best = self
            .checkpoints
            .load_best()?
            .ok_or_else(|| TrainError::Checkpoint("the best weights are missing".into()))?;
        encoder.set_weights(&best)?;
        observer.phase(&format!(
            "evaluating the best model (step {})",
            progress.best_step
        ));
        let final_val = self.evaluate(&mut encoder, &lexical, "val", "final", observer)?;
        let final_test = self.evaluate(&mut encoder, &lexical, "test", "final", observer)?;
        encoder.set_precision(Precision::Fp32);
        Ok(TrainOutcome {
            encoder,
            progress,
            final_val,
            final_test,
            examples: examples.items.len(),
        })
    }

    fn evaluate(
        &self,
        encoder: &mut SentenceEncoder,
        lexical: &Lexical,
        split: &str,
        label: &str,
        observer: &mut dyn Observer,
    ) -> Result<EvalReport, TrainError> {
        let (set, pairs, lexical) = match split {
            "val" => (&self.inputs.val_set, &self.inputs.val, &lexical.val),
            _ => (&self.inputs.test_set, &self.inputs.test, &lexical.test),
        };
        if set.queries.is_empty() && pairs.is_empty() {
            // No such split (`medembed train` without --test): nothing to report.
            return Ok(EvalReport::default());
        }
        // Always in fp32, whatever the training precision: the figures are those of the published
        // (fp32) weights as anyone loading them computes them.
        let training = encoder.bert.compute_kind();
        encoder.set_precision(Precision::Fp32);
        let report = evaluate(encoder, set, lexical, pairs);
        encoder.bert.set_compute_kind(training);
        let report = report?;
        observer.evaluated(split, label, &report);
        Ok(report)
    }

    fn evaluate_and_keep_best(
        &self,
        encoder: &mut SentenceEncoder,
        lexical: &Lexical,
        progress: &mut Progress,
        observer: &mut dyn Observer,
    ) -> Result<(), TrainError> {
        let label = format!("step {}", progress.step);
        let report = self.evaluate(encoder, lexical, "val", &label, observer)?;
        progress.val_history.push(EvalPoint {
            step: progress.step,
            ndcg_at_10: report.ndcg_at_10,
        });
        if report.ndcg_at_10 > progress.best_ndcg {
            progress.best_ndcg = report.ndcg_at_10;
            progress.best_step = progress.step;
            self.checkpoints.save_best(&encoder.named_weights())?;
        }
        Ok(())
    }

    fn save(
        &self,
        progress: &Progress,
        encoder: &SentenceEncoder,
        optimizer: &AdamW,
    ) -> Result<(), TrainError> {
        self.checkpoints.save(&Checkpoint {
            progress: progress.clone(),
            weights: encoder.named_weights(),
            optimizer: optimizer.state(),
            optimizer_steps: optimizer.steps,
        })
    }

    /// Forward and backward of one batch, its loss divided by `parts` (the batches of this
    /// optimizer step); returns that share of the loss.
    fn backward(
        &self,
        encoder: &SentenceEncoder,
        examples: &Examples,
        items: &[Example],
        step: usize,
        micro: usize,
        parts: usize,
    ) -> f64 {
        let s = self.settings;
        let side = |pick: Side, chunk: &[Example]| -> Vec<&[i64]> {
            chunk
                .iter()
                .map(|e| examples.tokens[pick.of(e)].as_slice())
                .collect()
        };
        // Hard-negative slots every example of the batch fills.
        let slots = items.iter().map(|e| e.negatives.len()).min().unwrap_or(0);
        let seed = |part: usize| tch::manual_seed(pass_seed(s.seed, step, micro, part));
        let scale = 1.0 / parts as f64;
        match s.loss {
            TrainLoss::Mnrl | TrainLoss::Cosine | TrainLoss::Contrastive => {
                seed(0);
                let a = encoder.forward(&side(Side::Anchor, items), true);
                let b = encoder.forward(&side(Side::Partner, items), true);
                let loss = match s.loss {
                    TrainLoss::Mnrl => {
                        let n: Vec<Tensor> = (0..slots)
                            .map(|k| encoder.forward(&side(Side::Negative(k), items), true))
                            .collect();
                        let n = (slots > 0).then(|| Tensor::cat(&n, 0));
                        mnrl(&a, &b, n.as_ref(), s.scale, s.symmetric)
                    }
                    _ => {
                        let labels: Vec<f32> = items.iter().map(|e| e.label).collect();
                        let labels = Tensor::from_slice(&labels).to(a.device());
                        if s.loss == TrainLoss::Cosine {
                            cosine_mse(&a, &b, &labels)
                        } else {
                            contrastive(&a, &b, &labels, s.margin)
                        }
                    }
                };
                let loss = loss * scale;
                loss.backward();
                loss.double_value(&[])
            }
            TrainLoss::CachedMnrl => {
                let chunks: Vec<&[Example]> = items.chunks(s.mini_batch_size).collect();
                let sides: Vec<Side> = [Side::Anchor, Side::Partner]
                    .into_iter()
                    .chain((0..slots).map(Side::Negative))
                    .collect();
                // 1. Embeddings of the whole batch, without a graph.
                let reps: Vec<Tensor> = sides
                    .iter()
                    .enumerate()
                    .map(|(k, pick)| {
                        let _guard = tch::no_grad_guard();
                        let parts: Vec<Tensor> = chunks
                            .iter()
                            .enumerate()
                            .map(|(c, chunk)| {
                                seed(1 + c * sides.len() + k);
                                encoder.forward(&side(*pick, chunk), true)
                            })
                            .collect();
                        Tensor::cat(&parts, 0).detach().set_requires_grad(true)
                    })
                    .collect();
                // 2. The loss over the whole batch and its gradient per embedding.
                let negatives = (slots > 0).then(|| Tensor::cat(&reps[2..], 0));
                let loss =
                    mnrl(&reps[0], &reps[1], negatives.as_ref(), s.scale, s.symmetric) * scale;
                loss.backward();
                // 3. Chunk by chunk with a graph (same dropout), backpropagating those gradients.
                for (k, pick) in sides.iter().enumerate() {
                    let grad = reps[k].grad();
                    let mut offset = 0;
                    for (c, chunk) in chunks.iter().enumerate() {
                        seed(1 + c * sides.len() + k);
                        let embedded = encoder.forward(&side(*pick, chunk), true);
                        let g = grad.narrow(0, offset, chunk.len() as i64);
                        (embedded * g).sum(tch::Kind::Float).backward();
                        offset += chunk.len() as i64;
                    }
                }
                loss.double_value(&[])
            }
        }
    }
}
