//! A job's live progress: one bar per stage, drawn from what the stages report in
//! `jobs/{job}/status/`. The same view serves `medembed run` (embedded) and `medembed watch`
//! (either mode: it only reads the store).
//!
//! On a terminal the bars redraw in place; otherwise (a log, a CI job) each stage change is
//! printed as one plain line, so a redirected run still says what happened.

use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use medembed_pipeline::messages::{JobId, QUEUES};
use medembed_pipeline::status::{StageState, StageStatus};
use medembed_pipeline::store::{ObjectStore, StoreError};

/// The stages as users see them, in pipeline order (the indexer's embed and build tasks report
/// under `index`).
pub const STAGES: [&str; 5] = ["fetch", "clean", "pairs", "train", "index"];

/// What the store says about a job at one moment.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// One status per entry of [`STAGES`].
    pub stages: Vec<StageStatus>,
    /// The first stage whose task failed for good, with its error.
    pub failed: Option<String>,
}

impl Snapshot {
    pub async fn load(store: &dyn ObjectStore, job: JobId) -> Result<Self, StoreError> {
        let mut stages = Vec::with_capacity(STAGES.len());
        for stage in STAGES {
            stages.push(StageStatus::load(store, job, stage).await?);
        }
        // A dead-lettered task marks the status of its queue failed; the embed and build
        // queues have statuses of their own only when that happens.
        let mut failed = None;
        for queue in QUEUES {
            let status = match stages.iter().find(|s| s.stage == queue) {
                Some(s) => s.clone(),
                None => StageStatus::load(store, job, queue).await?,
            };
            if status.state == StageState::Failed {
                failed = Some(format!(
                    "{queue}: {}",
                    status.last_error.as_deref().unwrap_or("failed")
                ));
                break;
            }
        }
        Ok(Self { stages, failed })
    }

    /// Whether the last stage has finished: the job is done.
    pub fn done(&self) -> bool {
        self.stages
            .last()
            .is_some_and(|s| s.state == StageState::Done)
    }
}

/// The bars of one job.
#[derive(Debug)]
pub struct JobProgress {
    multi: MultiProgress,
    bars: Vec<ProgressBar>,
    seen: Vec<StageState>,
}

impl Default for JobProgress {
    fn default() -> Self {
        Self::new()
    }
}

impl JobProgress {
    /// Bars on stderr (hidden when stderr is not a terminal).
    pub fn new() -> Self {
        let multi = MultiProgress::new();
        let style = ProgressStyle::with_template(
            "{prefix:>6} {bar:30.cyan/blue} {pos:>7}/{len:<7} {elapsed:>4} {msg}",
        )
        .expect("a valid template")
        .progress_chars("=> ");
        let bars = STAGES
            .iter()
            .map(|stage| {
                let bar = multi.add(ProgressBar::new(0).with_style(style.clone()));
                bar.set_prefix(*stage);
                bar.set_message("pending");
                bar
            })
            .collect();
        Self {
            multi,
            bars,
            seen: vec![StageState::Pending; STAGES.len()],
        }
    }

    /// Redraws from `snapshot`; `train_loss` is the last training loss where the caller knows
    /// it (embedded mode reads it from the trainer's metrics).
    pub fn update(&mut self, snapshot: &Snapshot, train_loss: Option<f64>) {
        for (i, status) in snapshot.stages.iter().enumerate() {
            let bar = &self.bars[i];
            bar.set_length(status.total);
            bar.set_position(status.done.min(status.total));
            let loss = if status.stage == "train" && status.state == StageState::Running {
                train_loss
            } else {
                None
            };
            bar.set_message(describe(status, loss));
            if status.state != self.seen[i] {
                self.seen[i] = status.state;
                match status.state {
                    StageState::Running => {
                        bar.reset_elapsed();
                        bar.enable_steady_tick(Duration::from_millis(500));
                    }
                    StageState::Done | StageState::Failed => {
                        bar.disable_steady_tick();
                        self.println(&format!("{:>6} {}", status.stage, describe(status, None)));
                    }
                    StageState::Pending => {}
                }
            }
        }
    }

    /// A line above the bars (or on stderr when they are hidden).
    pub fn println(&self, line: &str) {
        if self.multi.is_hidden() {
            eprintln!("{line}");
        } else {
            let _ = self.multi.println(line);
        }
    }

    /// Leaves the bars as they are, and stops redrawing them.
    pub fn finish(&self) {
        for bar in &self.bars {
            bar.abandon();
        }
    }
}

/// A stage state as `status` and the bars print it.
pub fn state_word(state: StageState) -> &'static str {
    match state {
        StageState::Pending => "pending",
        StageState::Running => "running",
        StageState::Done => "done",
        StageState::Failed => "FAILED",
    }
}

/// One stage's state in words: `done  44 articles, 2 parts` or `running  loss 0.4120, ETA 35 s`.
pub fn describe(status: &StageStatus, train_loss: Option<f64>) -> String {
    let state = state_word(status.state);
    let mut facts: Vec<String> = Vec::new();
    if status.total > 0 {
        facts.push(format!("{}/{} {}", status.done, status.total, status.unit));
    }
    if let Some(loss) = train_loss {
        facts.push(format!("loss {loss:.4}"));
    }
    for (key, value) in &status.counts {
        // Only what a user follows; the rest is in `medembed status`.
        let shown = matches!(
            key.as_str(),
            "articles"
                | "documents"
                | "pairs_train"
                | "pairs_val"
                | "pairs_test"
                | "pairs_seen"
                | "optimizer_steps"
                | "best_step"
                | "clusters"
        );
        if shown {
            facts.push(format!("{} {value}", key.replace('_', " ")));
        }
        if key == "eta_seconds" && status.state == StageState::Running {
            facts.push(format!("ETA {value} s"));
        }
    }
    if status.state == StageState::Failed
        && let Some(e) = &status.last_error
    {
        facts.push(e.clone());
    }
    if facts.is_empty() {
        state.to_string()
    } else {
        format!("{state}  {}", facts.join(", "))
    }
}
