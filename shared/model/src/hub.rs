//! Base models for real users: a local folder, or a Hugging Face hub id
//! (`microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract-fulltext`) fetched over HTTP into a cache,
//! the way the hub serves files: `GET {endpoint}/{repo}/resolve/{revision}/{file}`, usually
//! redirected to a CDN, with an ETag. `HF_ENDPOINT` (default `https://huggingface.co`), `HF_HOME`
//! (default `~/.cache/huggingface`; models go to `$HF_HOME/medembed/{repo}`) and `HF_TOKEN` (sent
//! as a bearer token, for gated or private models) are honoured.
//!
//! A second fetch revalidates each cached file with `If-None-Match` (a 304 keeps the file), so a
//! cached model costs a few small requests and no download; files are written to a temporary name
//! and renamed, so an interrupted download never leaves a truncated file in the cache.

use std::path::{Path, PathBuf};

use reqwest::StatusCode;

use crate::{ModelError, Result};

/// Files of a model folder, and whether a model needs them.
const FILES: &[(&str, bool)] = &[
    ("config.json", true),
    ("model.safetensors", false),
    ("tokenizer.json", false),
    ("vocab.txt", false),
    ("tokenizer_config.json", false),
    ("special_tokens_map.json", false),
    ("modules.json", false),
    ("sentence_bert_config.json", false),
    ("config_sentence_transformers.json", false),
    ("1_Pooling/config.json", false),
];

/// Fetches models from a Hugging Face hub (or a server that answers the same way).
#[derive(Debug, Clone)]
pub struct Hub {
    endpoint: String,
    cache: PathBuf,
    token: Option<String>,
    http: reqwest::Client,
}

impl Hub {
    /// The hub and cache the environment names (`HF_ENDPOINT`, `HF_HOME`, `HF_TOKEN`).
    pub fn from_env() -> Self {
        let home = std::env::var("HF_HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|_| {
                PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| ".".into()))
                    .join(".cache/huggingface")
            });
        Self::new(
            &std::env::var("HF_ENDPOINT").unwrap_or_else(|_| "https://huggingface.co".into()),
            &home,
            std::env::var("HF_TOKEN").ok().filter(|t| !t.is_empty()),
        )
    }

    pub fn new(endpoint: &str, hf_home: &Path, token: Option<String>) -> Self {
        Self {
            endpoint: endpoint.trim_end_matches('/').to_string(),
            cache: hf_home.join("medembed"),
            token,
            http: reqwest::Client::builder()
                .user_agent(concat!("medembed/", env!("CARGO_PKG_VERSION")))
                .build()
                .expect("the HTTP client builds"),
        }
    }

    /// Where fetched models are kept (`$HF_HOME/medembed`).
    pub fn cache_dir(&self) -> &Path {
        &self.cache
    }

    /// A model folder for `spec`: an existing directory as it is, otherwise a hub id fetched
    /// into the cache (revision `main`, or `id@revision`).
    pub async fn resolve(&self, spec: &str) -> Result<PathBuf> {
        let local = Path::new(spec);
        if local.is_dir() {
            return Ok(local.to_path_buf());
        }
        let (repo, revision) = spec.split_once('@').unwrap_or((spec, "main"));
        let valid = repo.split('/').count() == 2
            && repo.split('/').all(|p| {
                !p.is_empty()
                    && p != ".."
                    && p.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            });
        if !valid {
            return Err(ModelError::Hub(format!(
                "{spec:?} is neither a model folder nor a hub id like \"org/name\""
            )));
        }
        self.fetch(repo, revision).await
    }

    /// Downloads (or revalidates) the files of `repo` at `revision`; returns the cached folder.
    pub async fn fetch(&self, repo: &str, revision: &str) -> Result<PathBuf> {
        let dir = self.cache.join(repo).join(revision);
        for &(file, required) in FILES {
            let found = self.fetch_file(repo, revision, file, &dir).await?;
            if required && !found {
                return Err(ModelError::Hub(format!(
                    "{repo}@{revision}: the hub has no {file}"
                )));
            }
        }
        // Older checkpoints (BiomedBERT among them) may ship only the pickled weights.
        if !dir.join("model.safetensors").exists()
            && !self
                .fetch_file(repo, revision, "pytorch_model.bin", &dir)
                .await?
        {
            return Err(ModelError::Hub(format!(
                "{repo}@{revision}: the hub has neither model.safetensors nor pytorch_model.bin"
            )));
        }
        if !dir.join("tokenizer.json").exists() && !dir.join("vocab.txt").exists() {
            return Err(ModelError::Hub(format!(
                "{repo}@{revision}: neither tokenizer.json nor vocab.txt on the hub"
            )));
        }
        Ok(dir)
    }

    /// Fetches one file; false when the hub does not have it (404).
    async fn fetch_file(&self, repo: &str, revision: &str, file: &str, dir: &Path) -> Result<bool> {
        let url = format!("{}/{repo}/resolve/{revision}/{file}", self.endpoint);
        let path = dir.join(file);
        let etag_path = dir.join(format!("{file}.etag"));
        let cached_etag = std::fs::read_to_string(&etag_path)
            .ok()
            .filter(|_| path.exists());
        let mut request = self.http.get(&url);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(etag) = &cached_etag {
            request = request.header(reqwest::header::IF_NONE_MATCH, etag.trim());
        }
        let response = request
            .send()
            .await
            .map_err(|e| ModelError::Hub(format!("GET {url}: {e}")))?;
        match response.status() {
            StatusCode::NOT_MODIFIED => return Ok(true),
            StatusCode::NOT_FOUND => return Ok(false),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                return Err(ModelError::Hub(format!(
                    "GET {url}: {} (a gated or private model: set HF_TOKEN)",
                    response.status()
                )));
            }
            s if !s.is_success() => {
                return Err(ModelError::Hub(format!("GET {url}: {s}")));
            }
            _ => {}
        }
        let etag = response
            .headers()
            .get(reqwest::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = response
            .bytes()
            .await
            .map_err(|e| ModelError::Hub(format!("GET {url}: {e}")))?;
        let parent = path.parent().expect("a file in the model folder");
        let io = |p: &Path| {
            let p = p.to_path_buf();
            move |source| ModelError::Io { path: p, source }
        };
        std::fs::create_dir_all(parent).map_err(io(parent))?;
        let partial = path.with_extension("partial");
        std::fs::write(&partial, &body).map_err(io(&partial))?;
        std::fs::rename(&partial, &path).map_err(io(&path))?;
        match etag {
            Some(etag) => std::fs::write(&etag_path, etag).map_err(io(&etag_path))?,
            None => {
                let _ = std::fs::remove_file(&etag_path);
            }
        }
        Ok(true)
    }
}
