//! Shared pieces of medembed's end-to-end tests: the `echo` test stage (run as a separate OS
//! process by the `medembed-test-stage` binary) and helpers to start, signal and probe workers.

pub mod api;
pub mod binaries;
pub mod containers;
pub mod deployment;
pub mod fixture_job;
pub mod prometheus;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use medembed_pipeline::config::{QueueBackend, Settings, StoreBackend};
use medembed_pipeline::messages::{self, JobId, TaskMessage};
use medembed_pipeline::queue::{self, Queue};
use medembed_pipeline::runner::{Outgoing, Stage, StageError, TaskContext};
use medembed_pipeline::store::{self, ObjectStore};
use medembed_pipeline::testing;
use serde::{Deserialize, Serialize};

/// A test task: wait `work_ms`, then write `out/{part:05}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EchoTask {
    pub job_id: JobId,
    pub part: u32,
    pub work_ms: u64,
}

impl TaskMessage for EchoTask {
    const QUEUE: &'static str = "echo";
    fn job_id(&self) -> JobId {
        self.job_id
    }
    fn part(&self) -> Option<u32> {
        Some(self.part)
    }
}

/// The key the echo stage writes for `part`.
pub fn output_key(part: u32) -> String {
    format!("out/{part:05}")
}

#[derive(Debug, Default)]
pub struct EchoStage;

#[async_trait]
impl Stage for EchoStage {
    type Task = EchoTask;

    async fn process(
        &self,
        task: EchoTask,
        ctx: &TaskContext,
    ) -> Result<Vec<Outgoing>, StageError> {
        tokio::time::sleep(Duration::from_millis(task.work_ms)).await;
        let body = serde_json::json!({ "part": task.part, "job_id": task.job_id.to_string() });
        ctx.store
            .put(&output_key(task.part), body.to_string().into_bytes().into())
            .await?;
        Ok(Vec::new())
    }
}

/// A free TCP port on 127.0.0.1 (for a child's metrics server).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Starts a worker binary (`env!("CARGO_BIN_EXE_medembed-test-stage")` in a test) as a separate
/// OS process with `env`, its log appended to `log`.
pub fn spawn_worker(bin: &str, env: &[(String, String)], log: &Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("log file");
    Command::new(bin)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("RUST_LOG", "info,lapin=warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn medembed-test-stage")
}

/// Sends `signal` (e.g. "TERM", "KILL") to a child.
pub fn signal(child: &Child, signal: &str) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(child.id().to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{signal} {}", child.id());
}

/// Waits for a child to exit, at most `timeout`; None if it is still running.
pub fn wait_exit(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// A plain HTTP GET against 127.0.0.1:`port`; returns (status, body).
pub fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok((status, body.to_string()))
}

/// Polls `f` every 50 ms until it returns true or `timeout` passes; returns the last result.
pub async fn eventually<F, Fut>(timeout: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if f().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One echo-stage run over the dev RabbitMQ and Garage: its worker environment (own queue and
/// store prefix), the test's own queue and store handles, and a temp dir for the worker log.
#[derive(Debug)]
pub struct EchoRun {
    pub env: Vec<(String, String)>,
    pub queue: Arc<dyn Queue>,
    pub store: Arc<dyn ObjectStore>,
    pub dir: tempfile::TempDir,
}

impl EchoRun {
    /// A run named `name`, with `extra` `MEDEMBED__…` settings for its worker.
    pub async fn new(name: &str, extra: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let (env, settings) = process_env(name, dir.path(), extra);
        let queue = queue::open(&settings.queue).await.expect("queue");
        let store = store::open(&settings.store).await.expect("store");
        Self {
            env,
            queue,
            store,
            dir,
        }
    }

    /// Publishes one echo task per part, each taking `work_ms`.
    pub async fn publish(&self, parts: std::ops::Range<u32>, work_ms: u64) {
        let job_id = JobId::new();
        for part in parts {
            let task = EchoTask {
                job_id,
                part,
                work_ms,
            };
            self.queue
                .publish(EchoTask::QUEUE, &messages::encode(&task))
                .await
                .expect("publish");
        }
    }

    /// The keys the echo stage has written so far.
    pub async fn outputs(&self) -> Vec<String> {
        self.store
            .list("out/")
            .await
            .expect("list")
            .into_iter()
            .map(|m| m.key)
            .collect()
    }

    pub fn log(&self) -> std::path::PathBuf {
        self.dir.path().join("worker.log")
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.log()).unwrap_or_default()
    }
}

/// The environment of worker processes of a test run named `name`: the dev RabbitMQ and Garage
/// under a queue and store prefix of its own, `extra` `MEDEMBED__…` settings on top; and the
/// settings that environment gives.
pub fn process_env(
    name: &str,
    local_root: &Path,
    extra: &[(&str, &str)],
) -> (Vec<(String, String)>, Settings) {
    let mut env = testing::dev_env(
        &testing::unique(name),
        QueueBackend::Amqp,
        StoreBackend::S3,
        local_root,
    );
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let settings = Settings::load_with_env(None, env.clone()).expect("settings");
    (env, settings)
}

/// Runs `rabbitmqctl -q ARG` (e.g. `stop_app`), asserting that it succeeds.
pub fn rabbitmqctl(arg: &str) {
    let status = Command::new("rabbitmqctl")
        .args(["-q", arg])
        .status()
        .expect("rabbitmqctl");
    assert!(status.success(), "rabbitmqctl {arg}");
}

/// Runs `deploy/dev/services ARG` (e.g. `down`, `s3-up`); whether it succeeded.
pub fn dev_services(arg: &str) -> bool {
    Command::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/dev/services"
    ))
    .arg(arg)
    .stdout(Stdio::null())
    .status()
    .is_ok_and(|s| s.success())
}

/// Starts RabbitMQ's app and Garage again when dropped, so that a test that stops them cannot
/// leave them stopped for the tests after it, even when one of its assertions fails.
#[derive(Debug)]
pub struct ServicesGuard;

impl Drop for ServicesGuard {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl")
            .args(["-q", "start_app"])
            .status();
        let _ = dev_services("s3-up");
    }
}
