//! What every handler shares ([`AppState`]): settings, the store, the queue (when the api may
//! submit jobs), the metrics, and the loaded jobs: each with its model on an encoder thread and
//! its index, kept for the `api.cached_jobs` most recently used and loaded once however many
//! requests ask at the same time.
//!
//! The cache cannot be thrashed from outside: a job or model is checked to exist before it takes
//! a place (so requests for unknown ids evict nothing), at most `api.max_concurrent_loads` loads
//! run at once, and a job's model folder, copied from the store to load it, is deleted as soon
//! as the model is in memory.

use std::path::PathBuf;
use std::sync::Arc;

use medembed_indexer::model::{EncoderOptions, fetch_job_model, load_encoder};
use medembed_indexer::search::{JobIndex, read_manifest};
use medembed_pipeline::config::Settings;
use medembed_pipeline::jobs;
use medembed_pipeline::messages::JobId;
use medembed_pipeline::queue::Queue;
use medembed_pipeline::store::ObjectStore;
use tokio::sync::{Mutex, OnceCell, Semaphore};

use crate::auth::Access;
use crate::embedder::Embedder;
use crate::error::{ApiError, ApiResult};
use crate::limits::Limits;
use crate::metrics::ApiMetrics;
use crate::sources::SourceAllowlist;

/// A model the api can embed with: a job's, or a folder under `--models-dir`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ModelKey {
    Job(JobId),
    Folder(String),
}

/// A loaded model, and the job's index when it has one.
#[derive(Debug)]
pub struct Loaded {
    pub embedder: Embedder,
    pub index: Option<JobIndex>,
}

type Slot = Arc<OnceCell<Arc<Loaded>>>;

#[derive(Debug)]
pub struct AppState {
    pub settings: Settings,
    pub store: Arc<dyn ObjectStore>,
    /// None when the api runs without a broker (it can search but not submit).
    pub queue: Option<Arc<dyn Queue>>,
    pub metrics: ApiMetrics,
    /// Extra sentence-transformers folders, embeddable by folder name.
    pub models_dir: Option<PathBuf>,
    /// Who may call the API, and with which role.
    pub access: Access,
    pub limits: Arc<Limits>,
    /// The `files:` prefixes API callers may submit.
    pub sources: SourceAllowlist,
    /// Held while a submission checks the job quotas and queues its job, so that two at once
    /// cannot both take the last place.
    pub submit_lock: Mutex<()>,
    /// Where job models are copied from the store while they load.
    cache: tempfile::TempDir,
    /// Most recently used last.
    loaded: Mutex<Vec<(ModelKey, Slot)>>,
    loads: Semaphore,
}

impl AppState {
    pub fn new(
        settings: Settings,
        store: Arc<dyn ObjectStore>,
        queue: Option<Arc<dyn Queue>>,
        metrics: ApiMetrics,
        models_dir: Option<PathBuf>,
    ) -> std::io::Result<Self> {
        Ok(Self {
            limits: Arc::new(Limits::new(&settings.api)),
            loads: Semaphore::new(settings.api.max_concurrent_loads),
            sources: SourceAllowlist::new(&settings.api.allowed_sources),
            settings,
            store,
            queue,
            metrics,
            models_dir,
            access: Access::local(),
            submit_lock: Mutex::new(()),
            cache: tempfile::Builder::new()
                .prefix("medembed-api-models-")
                .tempdir()?,
            loaded: Mutex::new(Vec::new()),
        })
    }

    /// The same state answering callers with `access` (the default is [`Access::local`]).
    pub fn with_access(mut self, access: Access) -> Self {
        self.access = access;
        self
    }

    fn encoder_options(&self) -> EncoderOptions {
        EncoderOptions {
            device: self.settings.api.device,
            precision: self.settings.api.precision,
            max_seq_length: self.settings.index.max_seq_length,
            batch_tokens: self.settings.index.batch_tokens,
            device_key: "api.device",
        }
    }

    /// The model (and index) for `key`, loading it on first use; at most `api.cached_jobs` stay
    /// loaded, the least recently used dropped first.
    pub async fn load(&self, key: ModelKey) -> ApiResult<Arc<Loaded>> {
        let cached = {
            let mut loaded = self.loaded.lock().await;
            loaded.iter().position(|(k, _)| *k == key).map(|i| {
                let entry = loaded.remove(i);
                let slot = entry.1.clone();
                loaded.push(entry);
                slot
            })
        };
        let slot = match cached {
            Some(slot) => slot,
            None => {
                // Checked before it takes a place: an unknown id evicts nothing.
                self.check_exists(&key).await?;
                let mut loaded = self.loaded.lock().await;
                let slot = match loaded.iter().position(|(k, _)| *k == key) {
                    Some(i) => loaded[i].1.clone(), // loaded by another request meanwhile
                    None => {
                        let slot: Slot = Arc::new(OnceCell::new());
                        loaded.push((key.clone(), slot.clone()));
                        slot
                    }
                };
                let excess = loaded.len().saturating_sub(self.settings.api.cached_jobs);
                loaded.drain(..excess);
                slot
            }
        };
        let result = slot
            .get_or_try_init(|| async {
                let _permit = self
                    .loads
                    .acquire()
                    .await
                    .expect("the semaphore is never closed");
                self.load_uncached(&key).await
            })
            .await;
        if result.is_err() {
            // Not kept: the next request tries again (the job may have finished meanwhile).
            self.loaded.lock().await.retain(|(k, _)| *k != key);
        }
        result.cloned()
    }

    /// 404 unless the job (its spec) or the model folder exists.
    async fn check_exists(&self, key: &ModelKey) -> ApiResult<()> {
        match key {
            ModelKey::Job(job) => {
                if jobs::load_spec(self.store.as_ref(), *job).await?.is_none() {
                    return Err(ApiError::not_found(format!("job {job} does not exist")));
                }
            }
            ModelKey::Folder(name) => {
                if self.model_folder(name).is_none() {
                    return Err(ApiError::not_found(format!("no model {name:?}")));
                }
            }
        }
        Ok(())
    }

    async fn load_uncached(&self, key: &ModelKey) -> ApiResult<Arc<Loaded>> {
        let options = self.encoder_options();
        let max_tokens = self.settings.api.max_tokens_per_request;
        match key {
            ModelKey::Job(job) => {
                let dir = fetch_job_model(self.store.as_ref(), *job, self.cache.path()).await?;
                let copy = dir.clone();
                let encoder = tokio::task::spawn_blocking(move || load_encoder(&dir, options))
                    .await
                    .map_err(|e| ApiError::internal(format!("loading job {job}'s model: {e}")));
                // The model is in memory now (or failed to load): the copy is not needed.
                let _ = std::fs::remove_dir_all(&copy);
                let encoder = encoder??;
                let index = match read_manifest(self.store.as_ref(), *job).await? {
                    Some(_) => Some(
                        JobIndex::load(
                            self.store.as_ref(),
                            *job,
                            self.settings.index.hnsw_expansion_search,
                        )
                        .await?,
                    ),
                    None => None,
                };
                tracing::info!(%job, index = index.is_some(), "job loaded");
                Ok(Arc::new(Loaded {
                    embedder: Embedder::spawn(encoder, &job.to_string(), max_tokens),
                    index,
                }))
            }
            ModelKey::Folder(name) => {
                let dir = self
                    .model_folder(name)
                    .ok_or_else(|| ApiError::not_found(format!("no model {name:?}")))?;
                let encoder = tokio::task::spawn_blocking(move || load_encoder(&dir, options))
                    .await
                    .map_err(|e| ApiError::internal(format!("loading model {name:?}: {e}")))??;
                Ok(Arc::new(Loaded {
                    embedder: Embedder::spawn(encoder, name, max_tokens),
                    index: None,
                }))
            }
        }
    }

    /// `--models-dir/{name}` if it is a model folder; names are plain folder names only.
    pub fn model_folder(&self, name: &str) -> Option<PathBuf> {
        let dir = self.models_dir.as_ref()?;
        if name.is_empty()
            || name.starts_with('.')
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return None;
        }
        let path = dir.join(name);
        path.join("config.json").is_file().then_some(path)
    }

    /// The newest job whose index is built (what a search without `job` uses).
    pub async fn newest_finished_job(&self) -> ApiResult<JobId> {
        let specs = jobs::list(self.store.as_ref()).await?;
        for spec in specs.iter().rev().flatten() {
            if read_manifest(self.store.as_ref(), spec.job_id)
                .await?
                .is_some()
            {
                return Ok(spec.job_id);
            }
        }
        Err(ApiError::not_ready(
            "no job has finished indexing yet: submit one (POST /api/jobs) or name a job",
        ))
    }

    /// A job id given by the user, or the newest finished job.
    pub async fn job_or_newest(&self, job: Option<&str>) -> ApiResult<JobId> {
        match job {
            Some(id) => parse_job(id),
            None => self.newest_finished_job().await,
        }
    }

    /// The loaded job with an index, for search, map and clusters.
    pub async fn indexed(&self, job: JobId) -> ApiResult<Arc<Loaded>> {
        let loaded = self.load(ModelKey::Job(job)).await?;
        if loaded.index.is_none() {
            // The model loaded before the index existed: load again once it is there.
            if read_manifest(self.store.as_ref(), job).await?.is_some() {
                self.loaded
                    .lock()
                    .await
                    .retain(|(k, _)| *k != ModelKey::Job(job));
                return Box::pin(self.indexed(job)).await;
            }
            return Err(ApiError::not_ready(format!(
                "job {job} has no index yet: see GET /api/jobs/{job}"
            )));
        }
        Ok(loaded)
    }
}

/// A job id from a path, query or body, or a 422 naming what was given.
pub fn parse_job(id: &str) -> ApiResult<JobId> {
    id.trim()
        .parse()
        .map_err(|_| ApiError::invalid(format!("job {id:?} is not a job id (a 26-character ULID)")))
}
