//! Runner semantics, over both transports: the in-process queue with the local store, and the
//! real RabbitMQ with the real S3 server (Garage) from `deploy/dev/services up`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use medembed_pipeline::config::{QueueBackend, StoreBackend};
use medembed_pipeline::messages::{JobId, TaskMessage};
use medembed_pipeline::metrics::{RunnerMetrics, render};
use medembed_pipeline::queue::{self, DeadLetter, Queue, RetryPolicy};
use medembed_pipeline::runner::{Outgoing, Stage, StageError, TaskContext, Worker, WorkerOptions};
use medembed_pipeline::status::{StageState, StageStatus};
use medembed_pipeline::store::{self, ObjectStore};
use medembed_pipeline::{messages, testing};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Mode {
    Ok,
    Slow,
    Permanent,
    Retryable,
    Panic,
    /// Fails retryably on the first attempt, then succeeds.
    FlakyOnce,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Probe {
    job_id: JobId,
    part: u32,
    mode: Mode,
}

impl TaskMessage for Probe {
    const QUEUE: &'static str = "probe";
    fn job_id(&self) -> JobId {
        self.job_id
    }
    fn part(&self) -> Option<u32> {
        Some(self.part)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Followup {
    job_id: JobId,
    part: u32,
}

impl TaskMessage for Followup {
    const QUEUE: &'static str = "followup";
    fn job_id(&self) -> JobId {
        self.job_id
    }
}

/// Records when each part was attempted; writes `out/{part}` and publishes a follow-up.
#[derive(Clone, Default)]
struct ProbeStage {
    attempts: Arc<Mutex<HashMap<u32, Vec<Instant>>>>,
    started: Arc<tokio::sync::Notify>,
}

#[async_trait]
impl Stage for ProbeStage {
    type Task = Probe;

    async fn process(&self, task: Probe, ctx: &TaskContext) -> Result<Vec<Outgoing>, StageError> {
        let n = {
            let mut attempts = self.attempts.lock().expect("lock");
            let v = attempts.entry(task.part).or_default();
            v.push(Instant::now());
            v.len()
        };
        self.started.notify_one();
        match task.mode {
            Mode::Permanent => {
                return Err(StageError::permanent(format!(
                    "part {}: bad input",
                    task.part
                )));
            }
            Mode::Retryable => {
                return Err(StageError::retryable(format!(
                    "part {}: upstream 503",
                    task.part
                )));
            }
            Mode::Panic => panic!("part {}: a bug", task.part),
            Mode::FlakyOnce if n == 1 => return Err(StageError::retryable("first try flakes")),
            Mode::Slow => tokio::time::sleep(Duration::from_millis(1500)).await,
            _ => {}
        }
        ctx.store
            .put(
                &format!("out/{:05}", task.part),
                Bytes::from(format!("part {}", task.part)),
            )
            .await?;
        Ok(vec![Outgoing::task(&Followup {
            job_id: task.job_id,
            part: task.part,
        })])
    }
}

/// A store whose writes always fail retryably (an S3 outage).
#[derive(Debug)]
struct BrokenStore;

#[async_trait]
impl ObjectStore for BrokenStore {
    async fn put(&self, key: &str, _: Bytes) -> store::Result<()> {
        Err(store::StoreError::S3 {
            op: "put",
            key: key.into(),
            message: "503 Slow Down".into(),
            retryable: true,
        })
    }
    async fn get(&self, key: &str) -> store::Result<Bytes> {
        Err(store::StoreError::NotFound { key: key.into() })
    }
    async fn head(&self, _: &str) -> store::Result<Option<store::ObjectMeta>> {
        Ok(None)
    }
    async fn list(&self, _: &str) -> store::Result<Vec<store::ObjectMeta>> {
        Ok(vec![])
    }
    async fn delete(&self, _: &str) -> store::Result<()> {
        Ok(())
    }
    async fn ready(&self) -> bool {
        false
    }
}

#[derive(Debug, Clone, Copy)]
enum Transport {
    InProcess,
    RabbitAndS3,
}

struct Harness {
    /// The test's own handle (for AMQP a separate connection from the worker's).
    queue: Arc<dyn Queue>,
    store: Arc<dyn ObjectStore>,
    stage: ProbeStage,
    registry: prometheus::Registry,
    shutdown: CancellationToken,
    worker: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

const RETRY: RetryPolicy = RetryPolicy {
    max_attempts: 4,
    base_delay: Duration::from_millis(300),
    max_delay: Duration::from_secs(5),
};

async fn start(transport: Transport, broken_store: bool) -> Harness {
    let dir = tempfile::tempdir().expect("tempdir");
    let prefix = testing::unique("runner");
    let (qb, sb) = match transport {
        Transport::InProcess => (QueueBackend::Memory, StoreBackend::Local),
        Transport::RabbitAndS3 => (QueueBackend::Amqp, StoreBackend::S3),
    };
    let settings = testing::dev_settings(
        &prefix,
        qb,
        sb,
        dir.path(),
        &[
            ("MEDEMBED__QUEUE__MAX_ATTEMPTS", "4"),
            ("MEDEMBED__QUEUE__RETRY_BASE_DELAY_MS", "300"),
            ("MEDEMBED__QUEUE__PREFETCH", "4"),
        ],
    );
    let store = store::open(&settings.store).await.expect("store");
    let (worker_queue, queue): (Arc<dyn Queue>, Arc<dyn Queue>) = match transport {
        Transport::InProcess => {
            let q = queue::open(&settings.queue).await.expect("queue");
            (q.clone(), q)
        }
        Transport::RabbitAndS3 => (
            queue::open(&settings.queue).await.expect("worker queue"),
            queue::open(&settings.queue).await.expect("test queue"),
        ),
    };
    let registry = prometheus::Registry::new();
    let metrics = RunnerMetrics::register(&registry).expect("metrics");
    let stage = ProbeStage::default();
    let worker_store: Arc<dyn ObjectStore> = if broken_store {
        Arc::new(BrokenStore)
    } else {
        store.clone()
    };
    let options = WorkerOptions {
        concurrency: 4,
        retry: RETRY,
        drain_timeout: Duration::from_secs(10),
    };
    let worker = Worker::new(
        stage.clone(),
        worker_queue.clone(),
        worker_store,
        metrics,
        options,
    );
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    let worker = tokio::spawn(async move {
        worker.run(token).await.expect("worker runs");
        worker_queue.close().await;
    });
    Harness {
        queue,
        store,
        stage,
        registry,
        shutdown,
        worker,
        _dir: dir,
    }
}

impl Harness {
    async fn publish(&self, part: u32, mode: Mode) -> JobId {
        let job_id = JobId::new();
        let task = Probe { job_id, part, mode };
        self.queue
            .publish(Probe::QUEUE, &messages::encode(&task))
            .await
            .expect("publish");
        job_id
    }

    async fn wait_dead_letters(&self, n: usize, timeout: Duration) -> Vec<DeadLetter> {
        let deadline = Instant::now() + timeout;
        let mut got = Vec::new();
        while got.len() < n && Instant::now() < deadline {
            got.extend(
                self.queue
                    .take_dead_letters(Probe::QUEUE, n - got.len())
                    .await
                    .expect("dead letters"),
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        got
    }

    async fn wait_outputs(&self, n: usize, timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let keys: Vec<String> = self
                .store
                .list("out/")
                .await
                .expect("list")
                .into_iter()
                .map(|m| m.key)
                .collect();
            if keys.len() >= n || Instant::now() >= deadline {
                return keys;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn attempts(&self, part: u32) -> Vec<Instant> {
        self.stage
            .attempts
            .lock()
            .expect("lock")
            .get(&part)
            .cloned()
            .unwrap_or_default()
    }

    fn counter(&self, outcome: &str) -> u64 {
        let text = render(&self.registry);
        let needle = format!("medembed_tasks_total{{outcome=\"{outcome}\",stage=\"probe\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&needle))
            .map(|v| v.trim().parse().expect("number"))
            .unwrap_or(0)
    }

    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(20), self.worker)
            .await
            .expect("stops in time")
            .expect("no panic");
        self.queue.close().await;
    }
}

async fn successful_tasks_are_acked_after_their_outputs_and_followups(t: Transport) {
    let h = start(t, false).await;
    for part in 0..20 {
        h.publish(part, Mode::Ok).await;
    }
    let keys = h.wait_outputs(20, Duration::from_secs(30)).await;
    assert_eq!(keys.len(), 20, "{keys:?}");
    // Wait for settling, then check nothing is left to redo and each follow-up was published once.
    let deadline = Instant::now() + Duration::from_secs(10);
    while h.counter("ok") < 20 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(h.counter("ok"), 20);
    assert_eq!(h.queue.depth(Probe::QUEUE).await.expect("depth"), 0);
    assert_eq!(h.queue.depth(Followup::QUEUE).await.expect("depth"), 20);
    for part in 0..20 {
        assert_eq!(h.attempts(part).len(), 1, "part {part} ran more than once");
    }
    h.stop().await;
}

async fn a_task_whose_output_cannot_be_written_is_never_acked(t: Transport) {
    let h = start(t, true).await;
    h.publish(1, Mode::Ok).await;
    let dead = h.wait_dead_letters(1, Duration::from_secs(20)).await;
    assert_eq!(
        dead.len(),
        1,
        "the task must end in the dead-letter queue, not be acked"
    );
    assert_eq!(h.counter("ok"), 0, "no task may count as done");
    assert_eq!(h.attempts(1).len(), 4, "retried up to max_attempts");
    assert!(
        dead[0].reason.contains("503 Slow Down"),
        "{}",
        dead[0].reason
    );
    assert_eq!(
        h.queue.depth(Followup::QUEUE).await.expect("depth"),
        0,
        "no follow-up for a failed task"
    );
    h.stop().await;
}

async fn permanent_failure_is_dead_lettered_after_one_attempt(t: Transport) {
    let h = start(t, false).await;
    let job = h.publish(7, Mode::Permanent).await;
    let dead = h.wait_dead_letters(1, Duration::from_secs(10)).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].attempt, 1);
    assert_eq!(dead[0].reason, "part 7: bad input");
    assert_eq!(h.attempts(7).len(), 1);
    let task: Probe = messages::decode(&dead[0].body).expect("the original task is kept");
    assert_eq!(task.part, 7);
    // The job's status says why.
    let status = StageStatus::load(h.store.as_ref(), job, "probe")
        .await
        .expect("status");
    assert_eq!(status.state, StageState::Failed);
    assert_eq!(
        status.last_error.as_deref(),
        Some("attempt 1: part 7: bad input")
    );
    h.stop().await;
}

async fn retryable_failure_backs_off_then_is_dead_lettered(t: Transport) {
    let h = start(t, false).await;
    h.publish(3, Mode::Retryable).await;
    let dead = h.wait_dead_letters(1, Duration::from_secs(20)).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].attempt, 4);
    assert!(
        dead[0].reason.contains("gave up after 4 attempts")
            && dead[0].reason.contains("upstream 503"),
        "{}",
        dead[0].reason
    );
    let at = h.attempts(3);
    assert_eq!(at.len(), 4);
    let gaps: Vec<Duration> = at.windows(2).map(|w| w[1] - w[0]).collect();
    // 300 ms, 600 ms, 1200 ms: each at least its delay, and growing.
    for (gap, min) in gaps.iter().zip([300, 600, 1200]) {
        assert!(*gap >= Duration::from_millis(min), "gaps {gaps:?}");
    }
    assert!(
        gaps[2] > gaps[1] && gaps[1] > gaps[0],
        "gaps must grow: {gaps:?}"
    );
    assert_eq!(h.counter("retried"), 3);
    assert_eq!(h.counter("dead_lettered"), 1);
    // A flaky task succeeds on its second attempt.
    h.publish(4, Mode::FlakyOnce).await;
    assert_eq!(
        h.wait_outputs(1, Duration::from_secs(10)).await,
        ["out/00004"]
    );
    assert_eq!(h.attempts(4).len(), 2);
    h.stop().await;
}

async fn malformed_unknown_version_and_panics_are_dead_lettered(t: Transport) {
    let h = start(t, false).await;
    h.queue
        .publish(Probe::QUEUE, b"{this is not json")
        .await
        .expect("publish");
    let v99 = format!(
        r#"{{"version":99,"job_id":"{}","part":1,"mode":"ok"}}"#,
        JobId::new()
    );
    h.queue
        .publish(Probe::QUEUE, v99.as_bytes())
        .await
        .expect("publish");
    h.publish(5, Mode::Panic).await;
    let mut dead = h.wait_dead_letters(3, Duration::from_secs(10)).await;
    dead.sort_by(|a, b| a.reason.cmp(&b.reason));
    let reasons: Vec<&str> = dead.iter().map(|d| d.reason.as_str()).collect();
    assert_eq!(dead.len(), 3, "{reasons:?}");
    assert!(
        reasons.iter().any(|r| r.starts_with("malformed message")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.starts_with("unknown message version 99")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("stage panicked: part 5: a bug")),
        "{reasons:?}"
    );
    assert_eq!(h.attempts(5).len(), 1, "a panic is not retried");
    // The worker is still alive and working.
    h.publish(6, Mode::Ok).await;
    assert_eq!(
        h.wait_outputs(1, Duration::from_secs(10)).await,
        ["out/00006"]
    );
    h.stop().await;
}

async fn shutdown_finishes_the_task_in_flight(t: Transport) {
    let h = start(t, false).await;
    h.publish(9, Mode::Slow).await;
    h.stage.started.notified().await;
    let asked = Instant::now();
    h.shutdown.cancel();
    let queue = h.queue.clone();
    let store = h.store.clone();
    let attempts = h.stage.attempts.clone();
    tokio::time::timeout(Duration::from_secs(10), h.worker)
        .await
        .expect("within the drain timeout")
        .expect("no panic");
    assert!(
        asked.elapsed() >= Duration::from_millis(1000),
        "the slow task was waited for"
    );
    assert!(
        store.exists("out/00009").await.expect("exists"),
        "the in-flight task finished"
    );
    // Acked: nothing comes back to the queue once the worker's connection is gone.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(queue.depth(Probe::QUEUE).await.expect("depth"), 0);
    assert_eq!(
        attempts.lock().expect("lock").get(&9).map(Vec::len),
        Some(1)
    );
    queue.close().await;
}

macro_rules! over_both_transports {
    ($($name:ident),* $(,)?) => {
        mod in_process { use super::*; $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $name() { super::$name(Transport::InProcess).await } )* }
        mod rabbitmq_and_s3 { use super::*; $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $name() { super::$name(Transport::RabbitAndS3).await } )* }
    };
}

over_both_transports!(
    successful_tasks_are_acked_after_their_outputs_and_followups,
    a_task_whose_output_cannot_be_written_is_never_acked,
    permanent_failure_is_dead_lettered_after_one_attempt,
    retryable_failure_backs_off_then_is_dead_lettered,
    malformed_unknown_version_and_panics_are_dead_lettered,
    shutdown_finishes_the_task_in_flight,
);
