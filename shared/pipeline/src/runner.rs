//! The stage runner: a [`Stage`] is one trait impl; [`Worker`] owns everything generic around it.
//!
//! For each delivery the worker decodes the message (a bad message is a permanent error), opens
//! the tracing span `task{stage, job_id, part, attempt}`, runs [`Stage::process`], publishes the
//! follow-up tasks with confirms, and only then acks: a task is acknowledged once its outputs are
//! durable in the store and its successors are queued. Errors are settled by class:
//! [`StageError::Retryable`] is retried with exponential backoff until `max_attempts`, then
//! dead-lettered; [`StageError::Permanent`] (and a panic) is dead-lettered at once, with the
//! reason. Outputs are keyed deterministically, so a task that runs twice (a crash after the
//! write, before the ack) overwrites the same objects with the same content.
//!
//! Shutdown: when the token is cancelled the worker stops taking tasks, gives those in flight
//! `drain_timeout` to finish and settle, and returns; anything unfinished is redelivered.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use futures::FutureExt;
use prometheus::{IntCounter, Registry};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::Settings;
use crate::messages::{self, TaskMessage};
use crate::metrics::{HealthServer, RunnerMetrics, outcome};
use crate::queue::{self, Delivery, Queue, QueueError, RetryPolicy};
use crate::status::StageStatus;
use crate::store::{self, ObjectMeta, ObjectStore, StoreError};
use crate::table::TableError;

/// Why a task failed, classified by whether trying again can help.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    /// A hiccup (network, 5xx, 429, broker or store unavailable): retried with backoff.
    #[error("{0}")]
    Retryable(String),
    /// Bad input or a bug: retrying gives the same result, so it is dead-lettered at once.
    #[error("{0}")]
    Permanent(String),
    /// Not a failure: another worker owns the task's job right now (a trainer holding its lease).
    /// Delivered again after the longest retry delay, as the same attempt.
    #[error("deferred: {0}")]
    Deferred(String),
}

impl StageError {
    pub fn retryable(e: impl std::fmt::Display) -> Self {
        Self::Retryable(e.to_string())
    }
    pub fn permanent(e: impl std::fmt::Display) -> Self {
        Self::Permanent(e.to_string())
    }
}

impl From<StoreError> for StageError {
    fn from(e: StoreError) -> Self {
        if e.is_retryable() {
            Self::retryable(e)
        } else {
            Self::permanent(e)
        }
    }
}

impl From<TableError> for StageError {
    fn from(e: TableError) -> Self {
        if e.is_retryable() {
            Self::retryable(e)
        } else {
            Self::permanent(e)
        }
    }
}

impl From<QueueError> for StageError {
    fn from(e: QueueError) -> Self {
        Self::retryable(e)
    }
}

/// A task to publish once the current one succeeded.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub queue: &'static str,
    pub body: Vec<u8>,
}

impl Outgoing {
    pub fn task<T: TaskMessage>(task: &T) -> Self {
        Self {
            queue: T::QUEUE,
            body: messages::encode(task),
        }
    }
}

/// What a stage gets besides its task.
#[derive(Debug, Clone)]
pub struct TaskContext {
    /// The object store; bytes written through it are counted per stage.
    pub store: Arc<dyn ObjectStore>,
    /// 1-based attempt number of this task.
    pub attempt: u32,
    /// The broker delivered this task before (a worker died holding it, or lost its
    /// connection): its earlier run may have written outputs, and may or may not have published
    /// its follow-up tasks.
    pub redelivered: bool,
    /// Cancelled when the worker is asked to stop: a long task (training) checkpoints and
    /// returns [`StageError::Deferred`] instead of running past the drain timeout.
    pub shutdown: CancellationToken,
}

/// One stage of the pipeline. Its queue is `Self::Task::QUEUE`.
#[async_trait]
pub trait Stage: Send + Sync + 'static {
    type Task: TaskMessage;

    /// Does the task: writes its outputs to `ctx.store` (durably, at deterministic keys) and
    /// returns the tasks to publish next.
    async fn process(
        &self,
        task: Self::Task,
        ctx: &TaskContext,
    ) -> Result<Vec<Outgoing>, StageError>;
}

/// Runs a [`Stage`] against a queue until shut down.
pub struct Worker<S: Stage> {
    shared: Arc<Shared<S>>,
    concurrency: usize,
    drain_timeout: Duration,
}

impl<S: Stage> std::fmt::Debug for Worker<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("stage", &S::Task::QUEUE)
            .field("concurrency", &self.concurrency)
            .finish_non_exhaustive()
    }
}

struct Shared<S> {
    stage: S,
    queue: Arc<dyn Queue>,
    store: Arc<dyn ObjectStore>,
    metrics: RunnerMetrics,
    retry: RetryPolicy,
    /// Cancelled with the worker's shutdown token (see [`TaskContext::shutdown`]).
    stopping: CancellationToken,
}

/// How a worker is set up besides its stage.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// Tasks run at once (AMQP prefetch).
    pub concurrency: usize,
    pub retry: RetryPolicy,
    pub drain_timeout: Duration,
}

impl WorkerOptions {
    pub fn from_settings(settings: &Settings) -> Self {
        Self {
            concurrency: usize::from(settings.queue.prefetch),
            retry: RetryPolicy::from_settings(&settings.queue),
            drain_timeout: Duration::from_secs(settings.runner.drain_timeout_secs),
        }
    }
}

impl<S: Stage> Worker<S> {
    pub fn new(
        stage: S,
        queue: Arc<dyn Queue>,
        store: Arc<dyn ObjectStore>,
        metrics: RunnerMetrics,
        options: WorkerOptions,
    ) -> Self {
        let name = S::Task::QUEUE;
        metrics.init_stage(name);
        let store: Arc<dyn ObjectStore> = Arc::new(MeteredStore {
            inner: store,
            written: metrics.store_bytes_written.with_label_values(&[name]),
        });
        Self {
            shared: Arc::new(Shared {
                stage,
                queue,
                store,
                metrics,
                retry: options.retry,
                stopping: CancellationToken::new(),
            }),
            concurrency: options.concurrency.max(1),
            drain_timeout: options.drain_timeout,
        }
    }

    /// Consumes until `shutdown` is cancelled (or the queue closes), then drains.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), QueueError> {
        let name = S::Task::QUEUE;
        let stopping = self.shared.stopping.clone();
        let signal = shutdown.clone();
        tokio::spawn(async move {
            signal.cancelled().await;
            stopping.cancel();
        });
        let mut consumer = self.shared.queue.consume(name).await?;
        let permits = Arc::new(Semaphore::new(self.concurrency));
        let mut running = JoinSet::new();
        tracing::info!(
            stage = name,
            concurrency = self.concurrency,
            "worker started"
        );
        loop {
            // Take a slot before a delivery, so no delivery waits unstarted in this process.
            let permit = tokio::select! {
                p = permits.clone().acquire_owned() => p.expect("the semaphore is never closed"),
                _ = shutdown.cancelled() => break,
            };
            let delivery = tokio::select! {
                d = consumer.next() => d,
                _ = shutdown.cancelled() => break,
            };
            let Some(delivery) = delivery else { break };
            let shared = self.shared.clone();
            running.spawn(async move {
                shared.handle(delivery).await;
                drop(permit);
            });
            while running.try_join_next().is_some() {}
        }
        consumer.cancel().await;
        // Tasks that finished since the last delivery still sit in the set until joined.
        while running.try_join_next().is_some() {}
        let in_flight = running.len();
        if in_flight > 0 {
            tracing::info!(
                stage = name,
                in_flight,
                timeout_s = self.drain_timeout.as_secs(),
                "draining tasks in flight"
            );
        }
        let drained = tokio::time::timeout(self.drain_timeout, async {
            while running.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                stage = name,
                unfinished = running.len(),
                "drain timeout: unfinished tasks will be redelivered"
            );
            running.abort_all();
            while running.join_next().await.is_some() {}
        }
        consumer.close().await;
        tracing::info!(stage = name, "worker stopped");
        Ok(())
    }
}

impl<S: Stage> Shared<S> {
    async fn handle(&self, delivery: Delivery) {
        let name = S::Task::QUEUE;
        let started = Instant::now();
        let task = match messages::decode::<S::Task>(&delivery.body) {
            Ok(task) => task,
            Err(e) => {
                tracing::warn!(stage = name, error = %e, "undecodable message: dead-lettering it");
                self.settle(delivery, Err(StageError::permanent(e)), started)
                    .await;
                return;
            }
        };
        let job_id = task.job_id();
        let span = tracing::info_span!(
            "task",
            stage = name,
            job_id = %task.job_id(),
            part = task.part(),
            attempt = delivery.attempt
        );
        async {
            let gauge = self.metrics.in_flight.with_label_values(&[name]);
            gauge.inc();
            let ctx = TaskContext {
                store: self.store.clone(),
                attempt: delivery.attempt,
                redelivered: delivery.redelivered,
                shutdown: self.stopping.clone(),
            };
            let result = AssertUnwindSafe(self.stage.process(task, &ctx))
                .catch_unwind()
                .await
                .unwrap_or_else(|panic| {
                    Err(StageError::Permanent(format!(
                        "stage panicked: {}",
                        panic_message(&panic)
                    )))
                });
            let result = match result {
                Ok(outputs) => self.publish_all(outputs).await,
                Err(e) => Err(e),
            };
            if let Err(e) = &result
                && !matches!(e, StageError::Deferred(_))
            {
                let permanent = matches!(e, StageError::Permanent(_))
                    || !self.retry.allows_retry_after(delivery.attempt);
                let message = format!("attempt {}: {e}", delivery.attempt);
                StageStatus::record_error(self.store.as_ref(), job_id, name, &message, permanent)
                    .await;
            }
            self.settle(delivery, result, started).await;
            gauge.dec();
        }
        .instrument(span)
        .await;
    }

    async fn publish_all(&self, outputs: Vec<Outgoing>) -> Result<(), StageError> {
        for out in outputs {
            self.queue.publish(out.queue, &out.body).await?;
            tracing::info!(queue = out.queue, "task published");
        }
        Ok(())
    }

    async fn settle(&self, delivery: Delivery, result: Result<(), StageError>, started: Instant) {
        let name = S::Task::QUEUE;
        let attempt = delivery.attempt;
        let (label, settled) = match result {
            Ok(()) => {
                let acked = delivery.ack().await;
                if acked.is_ok() {
                    tracing::info!(
                        duration_ms = started.elapsed().as_millis() as u64,
                        "task done"
                    );
                }
                (outcome::OK, acked)
            }
            Err(StageError::Retryable(reason)) if self.retry.allows_retry_after(attempt) => {
                let delay = self.retry.delay_after(attempt);
                tracing::warn!(error = %reason, retry_in_ms = delay.as_millis() as u64, "task failed; will retry");
                (outcome::RETRIED, delivery.retry(delay, &reason).await)
            }
            Err(StageError::Retryable(reason)) => {
                let reason = format!("gave up after {attempt} attempts: {reason}");
                tracing::error!(error = %reason, "task dead-lettered");
                (outcome::DEAD_LETTERED, delivery.dead_letter(&reason).await)
            }
            Err(StageError::Permanent(reason)) => {
                tracing::error!(error = %reason, "task failed permanently; dead-lettered");
                (outcome::DEAD_LETTERED, delivery.dead_letter(&reason).await)
            }
            Err(StageError::Deferred(reason)) => {
                let delay = self
                    .retry
                    .delays()
                    .last()
                    .copied()
                    .unwrap_or(Duration::from_secs(1));
                tracing::info!(reason = %reason, retry_in_ms = delay.as_millis() as u64, "task deferred");
                (outcome::DEFERRED, delivery.defer(delay, &reason).await)
            }
        };
        if let Err(e) = settled {
            // Not settled: the broker delivers the task again, and its outputs are idempotent.
            tracing::warn!(error = %e, "could not settle the task; it will be redelivered");
        }
        self.metrics.tasks.with_label_values(&[name, label]).inc();
        self.metrics
            .task_duration
            .with_label_values(&[name])
            .observe(started.elapsed().as_secs_f64());
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".to_string())
}

/// Counts bytes written per stage.
#[derive(Debug)]
struct MeteredStore {
    inner: Arc<dyn ObjectStore>,
    written: IntCounter,
}

#[async_trait]
impl ObjectStore for MeteredStore {
    async fn put(&self, key: &str, data: Bytes) -> store::Result<()> {
        let len = data.len() as u64;
        self.inner.put(key, data).await?;
        self.written.inc_by(len);
        Ok(())
    }
    async fn get(&self, key: &str) -> store::Result<Bytes> {
        self.inner.get(key).await
    }
    async fn head(&self, key: &str) -> store::Result<Option<ObjectMeta>> {
        self.inner.head(key).await
    }
    async fn list(&self, prefix: &str) -> store::Result<Vec<ObjectMeta>> {
        self.inner.list(prefix).await
    }
    async fn delete(&self, key: &str) -> store::Result<()> {
        self.inner.delete(key).await
    }
    async fn ready(&self) -> bool {
        self.inner.ready().await
    }
}

/// Why a worker process could not run.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

type StartWorker = Box<
    dyn FnOnce(
            Arc<dyn Queue>,
            Arc<dyn ObjectStore>,
            RunnerMetrics,
            WorkerOptions,
            CancellationToken,
        ) -> futures::future::BoxFuture<'static, Result<(), QueueError>>
        + Send,
>;

/// The stages one process runs, each a [`Worker`] on its own queue, side by side: most worker
/// binaries run one stage; the indexer runs three (index fan-out, embed, build), and embedded
/// mode runs them all.
#[derive(Default)]
pub struct Stages {
    workers: Vec<(&'static str, StartWorker)>,
}

impl std::fmt::Debug for Stages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.workers.iter().map(|(queue, _)| queue))
            .finish()
    }
}

impl Stages {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `stage`, consuming its task's queue.
    pub fn with<S: Stage>(mut self, stage: S) -> Self {
        let start: StartWorker = Box::new(move |queue, store, metrics, options, shutdown| {
            Box::pin(Worker::new(stage, queue, store, metrics, options).run(shutdown))
        });
        self.workers.push((S::Task::QUEUE, start));
        self
    }

    /// Adds every stage of `other` (embedded mode: all the workers' stages in one process).
    pub fn and(mut self, other: Stages) -> Self {
        self.workers.extend(other.workers);
        self
    }

    /// Runs every stage until `shutdown` is cancelled and each has drained; the first error
    /// (a queue that cannot be consumed) is returned after all have stopped.
    pub async fn run(
        self,
        queue: Arc<dyn Queue>,
        store: Arc<dyn ObjectStore>,
        metrics: RunnerMetrics,
        options: WorkerOptions,
        shutdown: CancellationToken,
    ) -> Result<(), QueueError> {
        let runs = self.workers.into_iter().map(|(_, start)| {
            start(
                queue.clone(),
                store.clone(),
                metrics.clone(),
                options.clone(),
                shutdown.clone(),
            )
        });
        let results = futures::future::join_all(runs).await;
        results.into_iter().collect()
    }
}

impl<S: Stage> From<S> for Stages {
    fn from(stage: S) -> Self {
        Stages::new().with(stage)
    }
}

/// Everything a worker binary's `main` needs: opens the queue and store from `settings`, serves
/// `/metrics`, `/healthz` and `/readyz` (from `registry`, where the stages may have registered
/// their own metrics), runs `stages` until SIGTERM/SIGINT, drains, and returns.
pub async fn run_worker(
    settings: &Settings,
    registry: Registry,
    stages: impl Into<Stages>,
) -> Result<(), WorkerError> {
    let stages = stages.into();
    let shutdown = crate::shutdown::on_signal();
    let metrics = RunnerMetrics::register(&registry)?;
    let store = store::open(&settings.store).await?;
    let queue = tokio::select! {
        q = queue::open(&settings.queue) => q?,
        _ = shutdown.cancelled() => return Ok(()),
    };
    // The health server outlives the drain, so /metrics shows it; it stops after the worker.
    let server_stop = CancellationToken::new();
    let server = HealthServer::start(
        settings.server.listen_addr,
        registry,
        Some(queue.clone()),
        store.clone(),
        server_stop.clone(),
    )
    .await?;
    let result = stages
        .run(
            queue.clone(),
            store,
            metrics,
            WorkerOptions::from_settings(settings),
            shutdown,
        )
        .await;
    queue.close().await;
    server_stop.cancel();
    server.stopped().await;
    Ok(result?)
}
