//! A whole distributed deployment on this machine: the five worker binaries and medembed-api as
//! separate OS processes over the dev RabbitMQ and Garage, each with its own log, under one
//! queue and store prefix of their own. Tests start, kill and restart processes, submit jobs
//! over HTTP and read what the workers wrote.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use medembed_pipeline::config::Settings;
use medembed_pipeline::messages::JobId;
use medembed_pipeline::queue::{self, Queue};
use medembed_pipeline::status::{StageState, StageStatus};
use medembed_pipeline::store::{self, ObjectStore};

use crate::{free_port, wait_exit};

/// The worker binaries, in pipeline order.
pub const WORKERS: [&str; 5] = [
    "medembed-fetcher",
    "medembed-cleaner",
    "medembed-pair-builder",
    "medembed-trainer",
    "medembed-indexer",
];
pub const API: &str = "medembed-api";

/// A workspace binary built from the current sources, next to this test executable (refused with
/// the command to run if it is missing or stale: see [`crate::binaries`]).
pub use crate::binaries::binary;

/// The sample corpus that ships with the project (`samples/corpus`).
pub fn sample_corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../samples/corpus")
}

/// The processes of one deployment, killed when it is dropped.
#[derive(Debug)]
pub struct Deployment {
    pub env: Vec<(String, String)>,
    pub settings: Settings,
    /// The test's own handles on the deployment's queue and store.
    pub queue: Arc<dyn Queue>,
    pub store: Arc<dyn ObjectStore>,
    pub api_port: u16,
    /// The api's keys (it is started with them, and allows `files:` sources of the samples).
    pub keys: crate::api::TestKeys,
    pub dir: tempfile::TempDir,
    /// The `/metrics` port of every process started, by binary (the api's is apart from
    /// `api_port`).
    pub metrics_ports: BTreeMap<String, Vec<u16>>,
    processes: BTreeMap<String, Vec<Child>>,
}

impl Deployment {
    /// A deployment named `name` (its queue and store prefix is unique), with `extra`
    /// `MEDEMBED__…` settings for every process.
    pub async fn new(name: &str, extra: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut all = vec![("MEDEMBED__LOG__FORMAT", "json")];
        all.extend_from_slice(extra);
        let (env, settings) = crate::process_env(name, dir.path(), &all);
        let queue = queue::open(&settings.queue).await.expect("queue");
        for name in medembed_pipeline::messages::QUEUES {
            queue.declare(name).await.expect("declare");
        }
        let store = store::open(&settings.store).await.expect("store");
        Self {
            env,
            settings,
            queue,
            store,
            api_port: free_port(),
            keys: crate::api::TestKeys::new(),
            dir,
            metrics_ports: BTreeMap::new(),
            processes: BTreeMap::new(),
        }
    }

    /// Starts one more process of `bin` (a worker, or the api on `api_port`).
    pub fn start(&mut self, bin: &str) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(bin))
            .expect("log file");
        let port = free_port();
        let mut cmd = Command::new(binary(bin));
        cmd.envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("RUST_LOG", "info,lapin=warn,aws=warn,hyper=warn")
            .env("MEDEMBED__SERVER__LISTEN_ADDR", format!("127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(log);
        if bin == API {
            let samples = sample_corpus()
                .parent()
                .expect("samples/")
                .canonicalize()
                .expect("samples/ exists");
            cmd.arg("--listen")
                .arg(format!("127.0.0.1:{}", self.api_port))
                .env("MEDEMBED__API__KEYS", &self.keys.entries)
                .env(
                    "MEDEMBED__API__ALLOWED_SOURCES",
                    samples.display().to_string(),
                );
        }
        self.metrics_ports
            .entry(bin.to_string())
            .or_default()
            .push(port);
        let child = cmd.spawn().unwrap_or_else(|e| panic!("start {bin}: {e}"));
        self.processes
            .entry(bin.to_string())
            .or_default()
            .push(child);
    }

    /// Starts every worker and the api.
    pub fn start_all(&mut self) {
        for bin in WORKERS {
            self.start(bin);
        }
        self.start(API);
    }

    /// SIGKILLs every process of `bin` and waits for them to be gone.
    pub fn kill(&mut self, bin: &str) {
        for mut child in self.processes.remove(bin).unwrap_or_default() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERMs every process and waits for them to drain and exit (SIGKILL after 60 s).
    pub fn stop_all(&mut self) {
        for children in self.processes.values() {
            for child in children {
                let _ = Command::new("kill")
                    .args(["-TERM", &child.id().to_string()])
                    .status();
            }
        }
        for (_, children) in std::mem::take(&mut self.processes) {
            for mut child in children {
                if wait_exit(&mut child, Duration::from_secs(60)).is_none() {
                    let _ = child.kill();
                    let _ = child.wait();
                }
            }
        }
    }

    pub fn log_path(&self, bin: &str) -> PathBuf {
        self.dir.path().join(format!("{bin}.log"))
    }

    /// The JSON log records of every process of `bin` so far (lines that are not JSON are
    /// skipped: a process killed mid-line).
    pub fn log_records(&self, bin: &str) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.log_path(bin))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The last lines of every log, for a failing assertion's message.
    pub fn log_tails(&self) -> String {
        let mut out = String::new();
        for bin in WORKERS.iter().chain([&API]) {
            let text = std::fs::read_to_string(self.log_path(bin)).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            out.push_str(&format!("--- {bin} ---\n"));
            for line in &lines[lines.len().saturating_sub(15)..] {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }

    pub fn api(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.api_port)
    }

    /// An HTTP client that sends the api's submit key.
    pub fn http(&self) -> reqwest::Client {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {}", self.keys.submit)
                .parse()
                .expect("a header value"),
        );
        reqwest::Client::builder()
            .default_headers(headers)
            .build()
            .expect("client")
    }

    /// Submits a job through `POST /api/jobs` with the submit key (retrying while the api
    /// starts); its id.
    pub async fn submit(&self, request: serde_json::Value) -> JobId {
        let client = self.http();
        for _ in 0..300 {
            if let Ok(response) = client
                .post(self.api("/api/jobs"))
                .json(&request)
                .send()
                .await
            {
                let status = response.status();
                let body: serde_json::Value = response.json().await.expect("json");
                assert!(status.is_success(), "POST /api/jobs: {status} {body}");
                return body["id"].as_str().expect("id").parse().expect("a job id");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the api did not answer within 30 s:\n{}", self.log_tails());
    }

    pub async fn status(&self, job: JobId, stage: &str) -> StageStatus {
        StageStatus::load(self.store.as_ref(), job, stage)
            .await
            .expect("status")
    }

    /// Waits until `job`'s index is built; false after `timeout`.
    pub async fn wait_done(&self, job: JobId, timeout: Duration) -> bool {
        crate::eventually(timeout, || async {
            self.status(job, "index").await.state == StageState::Done
        })
        .await
    }

    /// Waits until `key` exists in the store; false after `timeout`.
    pub async fn wait_for_key(&self, key: &str, timeout: Duration) -> bool {
        crate::eventually(timeout, || async {
            self.store.exists(key).await.unwrap_or(false)
        })
        .await
    }
}

impl Drop for Deployment {
    fn drop(&mut self) {
        for (_, children) in std::mem::take(&mut self.processes) {
            for mut child in children {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// A work unit of a job: its stage and, for a per-part task, the part.
pub type WorkUnit = (String, Option<u64>);

/// How many times workers finished each work unit of a job, read from their JSON log records
/// (the runner logs `task done` after the ack, inside the task's span).
#[derive(Debug, Default)]
pub struct Completions(pub BTreeMap<WorkUnit, usize>);

impl Completions {
    pub fn from_records(records: impl IntoIterator<Item = serde_json::Value>) -> Self {
        let mut done = BTreeMap::new();
        for record in records {
            if record["message"] != "task done" {
                continue;
            }
            let span = &record["span"];
            let stage = span["stage"].as_str().unwrap_or("?").to_string();
            *done.entry((stage, span["part"].as_u64())).or_insert(0) += 1;
        }
        Self(done)
    }

    /// The units a job with `raw_parts` raw parts must finish that were never finished: clean and
    /// embed per part; fetch, pairs, train, index and build once.
    pub fn lost(&self, raw_parts: usize) -> Vec<WorkUnit> {
        let mut expected: Vec<WorkUnit> = Vec::new();
        for part in 0..raw_parts as u64 {
            expected.push(("clean".into(), Some(part)));
            expected.push(("embed".into(), Some(part)));
        }
        for stage in ["fetch", "pairs", "train", "index", "build"] {
            expected.push((stage.into(), None));
        }
        expected
            .into_iter()
            .filter(|u| !self.0.contains_key(u))
            .collect()
    }

    /// Per-part tasks finished more than once (work redone after a kill or a lost ack). Barrier
    /// checks (pairs, build) run once per finished part by design, so they do not count.
    pub fn duplicated(&self) -> usize {
        self.0
            .iter()
            .filter(|((_, part), _)| part.is_some())
            .map(|(_, n)| n - 1)
            .sum()
    }

    /// How many tasks were finished in all.
    pub fn total(&self) -> usize {
        self.0.values().sum()
    }

    /// How many times `stage`'s job-level task was finished.
    pub fn of(&self, stage: &str) -> usize {
        self.0.get(&(stage.to_string(), None)).copied().unwrap_or(0)
    }
}
