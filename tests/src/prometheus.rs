//! A real Prometheus server (Debian's `prometheus` package) scraping given targets every second,
//! for tests that check what operators will see: targets up, dashboard queries that parse and
//! name metrics the workers export.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::free_port;

/// A running Prometheus; killed when dropped.
#[derive(Debug)]
pub struct Prometheus {
    pub base: String,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts Prometheus with one scrape job per (job name, targets, metrics path).
    pub async fn start(jobs: &[(&str, Vec<String>, &str)]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = String::from("global:\n  scrape_interval: 1s\nscrape_configs:\n");
        for (name, targets, path) in jobs {
            let (path, query) = path.split_once('?').unwrap_or((path, ""));
            config.push_str(&format!(
                "  - job_name: {name}\n    metrics_path: {path}\n    static_configs:\n      - targets: {targets:?}\n"
            ));
            if let Some((key, value)) = query.split_once('=') {
                config.push_str(&format!("    params:\n      {key}: [{value}]\n"));
            }
        }
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).expect("write config");
        let port = free_port();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("log")).expect("log"))
            .spawn()
            .expect("start prometheus (Debian package `prometheus`)");
        let base = format!("http://127.0.0.1:{port}");
        let me = Self {
            base,
            child,
            _dir: dir,
        };
        let ready = crate::eventually(Duration::from_secs(60), || async {
            reqwest::get(format!("{}/-/ready", me.base))
                .await
                .is_ok_and(|r| r.status().is_success())
        })
        .await;
        assert!(ready, "prometheus did not become ready: {}", me.log());
        me
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("log")).unwrap_or_default()
    }

    /// `(scrape url, health)` of every active target.
    pub async fn targets(&self) -> Vec<(String, String)> {
        let body: serde_json::Value = reqwest::get(format!("{}/api/v1/targets", self.base))
            .await
            .expect("targets")
            .json()
            .await
            .expect("json");
        body["data"]["activeTargets"]
            .as_array()
            .map(|targets| {
                targets
                    .iter()
                    .map(|t| {
                        (
                            t["scrapeUrl"].as_str().unwrap_or("?").to_string(),
                            t["health"].as_str().unwrap_or("?").to_string(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Runs `expr` as an instant query; Err with Prometheus' message when it does not parse.
    pub async fn query(&self, expr: &str) -> Result<serde_json::Value, String> {
        let body: serde_json::Value = reqwest::Client::new()
            .get(format!("{}/api/v1/query", self.base))
            .query(&[("query", expr)])
            .send()
            .await
            .map_err(|e| e.to_string())?
            .json()
            .await
            .map_err(|e| e.to_string())?;
        if body["status"] == "success" {
            Ok(body["data"].clone())
        } else {
            Err(body["error"].as_str().unwrap_or("error").to_string())
        }
    }

    /// Every metric name Prometheus has scraped so far.
    pub async fn metric_names(&self) -> BTreeSet<String> {
        let body: serde_json::Value =
            reqwest::get(format!("{}/api/v1/label/__name__/values", self.base))
                .await
                .expect("names")
                .json()
                .await
                .expect("json");
        body["data"]
            .as_array()
            .map(|names| {
                names
                    .iter()
                    .filter_map(|n| n.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every PromQL expression of the Grafana dashboards in `dir`, with its panel's title.
pub fn dashboard_queries(dir: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .expect("dashboards")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    for file in files {
        let dashboard: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&file).expect("read")).expect("json");
        for panel in dashboard["panels"].as_array().into_iter().flatten() {
            for target in panel["targets"].as_array().into_iter().flatten() {
                if let Some(expr) = target["expr"].as_str() {
                    let title = panel["title"].as_str().unwrap_or("?");
                    out.push((title.to_string(), expr.to_string()));
                }
            }
        }
    }
    out
}

/// The metric names an expression reads (`medembed_*` and `rabbitmq_*`), as Prometheus stores
/// them (a histogram's `_bucket` series included).
pub fn metric_names_in(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let rest = &expr[i..];
        let starts = (rest.starts_with("medembed_") || rest.starts_with("rabbitmq_"))
            && (i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_'));
        if starts {
            let len = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            out.insert(rest[..len].to_string());
            i += len;
        } else {
            i += 1;
        }
    }
    out
}
