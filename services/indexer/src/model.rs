//! A job's published model (`jobs/{job}/model/`), copied from the store into a local cache
//! folder once and loaded as a [`SentenceEncoder`]: the indexer embeds the corpus with it and
//! the api embeds queries with it, so both sides of a search use the same model.

use std::path::{Path, PathBuf};

use medembed_model::{Precision, SentenceEncoder};
use medembed_pipeline::config::{ComputeDevice, ComputePrecision};
use medembed_pipeline::keys;
use medembed_pipeline::messages::JobId;
use medembed_pipeline::store::{self, ObjectStore, StoreError};

use crate::{IndexError, Result};

/// The file the trainer writes last into a model folder: a folder with it is complete.
const COMPLETE_MARKER: &str = "metrics.json";

/// How to run an encoder (from `index.*` or `api.*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EncoderOptions {
    pub device: ComputeDevice,
    pub precision: ComputePrecision,
    /// Cut texts at this many tokens (0: the model's own `max_seq_length`).
    pub max_seq_length: usize,
    /// Padded tokens per forward pass.
    pub batch_tokens: usize,
    /// The setting named when CUDA is asked for and absent (`index.device`).
    pub device_key: &'static str,
}

/// `jobs/{job}/model/` in `cache/{job}/`, downloaded unless a complete copy is there already.
pub async fn fetch_job_model(store: &dyn ObjectStore, job: JobId, cache: &Path) -> Result<PathBuf> {
    let dir = cache.join(job.to_string());
    if dir.join(COMPLETE_MARKER).exists() {
        return Ok(dir);
    }
    let marker = format!("{}{COMPLETE_MARKER}", keys::model_prefix(job));
    match store.head(&marker).await? {
        Some(_) => {}
        None => {
            return Err(IndexError::Missing(format!(
                "job {job}: no model at {} (its train stage has not finished)",
                keys::model_prefix(job)
            )));
        }
    }
    // Into a fresh folder, renamed when complete: a crash mid-download leaves no half model.
    let partial = cache.join(format!("{job}.partial"));
    let _ = std::fs::remove_dir_all(&partial);
    std::fs::create_dir_all(&partial).map_err(|source| StoreError::Io {
        op: "create",
        path: partial.clone(),
        source,
    })?;
    store::download_prefix(store, &keys::model_prefix(job), &partial).await?;
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(&partial, &dir).map_err(|source| StoreError::Io {
        op: "rename",
        path: dir.clone(),
        source,
    })?;
    Ok(dir)
}

/// Loads the model folder `dir` for encoding (a blocking call: run it off the async threads).
pub fn load_encoder(dir: &Path, options: EncoderOptions) -> Result<SentenceEncoder> {
    let device = medembed_model::device_for(options.device, options.device_key)?;
    let mut encoder = SentenceEncoder::load(dir, device)?;
    if options.max_seq_length > 0 {
        encoder.set_max_seq_length(options.max_seq_length)?;
    }
    encoder.set_precision(Precision::for_setting(options.precision, device));
    encoder.token_budget = options.batch_tokens.max(1);
    Ok(encoder)
}

/// A job's model, fetched into `cache` and loaded.
pub async fn load_job_model(
    store: &dyn ObjectStore,
    job: JobId,
    cache: &Path,
    options: EncoderOptions,
) -> Result<SentenceEncoder> {
    let dir = fetch_job_model(store, job, cache).await?;
    tokio::task::spawn_blocking(move || load_encoder(&dir, options))
        .await
        .map_err(|e| IndexError::Format(format!("job {job}: loading the model panicked: {e}")))?
}
