//! Checkpoints in an object store (the job's, or a local directory for `medembed train`):
//!
//! ```text
//! {prefix}/step-00000200/weights.safetensors    model weights (fp32, by Hugging Face name)
//! {prefix}/step-00000200/optimizer.safetensors  AdamW moments
//! {prefix}/step-00000200/progress.json          step, epoch, batch, log, evaluations, best
//! {prefix}/latest.json                          {"step": 200, "optimizer_steps": 200}: written last
//! {prefix}/best.safetensors                     the weights with the best val nDCG@10 so far
//! ```
//!
//! `latest.json` is written only after its step's three files, so a crash mid-checkpoint leaves
//! the previous checkpoint in force; older step folders are deleted after the new one is in force.
//! The data order and the random seeds are functions of the step (see [`crate::train`]), so
//! nothing else is needed to resume.

use std::sync::Arc;

use bytes::Bytes;
use medembed_pipeline::store::{ObjectStore, StoreError};
use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::train::{Progress, TrainError};

/// A saved state of a run.
#[derive(Debug)]
pub struct Checkpoint {
    pub progress: Progress,
    pub weights: Vec<(String, Tensor)>,
    pub optimizer: Vec<(String, Tensor)>,
    pub optimizer_steps: i64,
}

/// Where a run keeps its checkpoints. Called from the training thread (blocking).
pub trait CheckpointStore {
    fn load(&self) -> Result<Option<Checkpoint>, TrainError>;
    fn save(&self, checkpoint: &Checkpoint) -> Result<(), TrainError>;
    fn save_best(&self, weights: &[(String, Tensor)]) -> Result<(), TrainError>;
    fn load_best(&self) -> Result<Option<Vec<(String, Tensor)>>, TrainError>;
}

#[derive(Debug, Serialize, Deserialize)]
struct Latest {
    step: usize,
    optimizer_steps: i64,
}

/// Checkpoints under `prefix` in an [`ObjectStore`], driven from a blocking thread through the
/// runtime `handle`.
#[derive(Debug, Clone)]
pub struct StoreCheckpoints {
    pub store: Arc<dyn ObjectStore>,
    pub prefix: String,
    pub handle: tokio::runtime::Handle,
}

fn store_error(e: StoreError) -> TrainError {
    TrainError::Checkpoint(e.to_string())
}

/// Tensors as safetensors bytes.
pub fn tensors_to_bytes(tensors: &[(String, Tensor)]) -> Result<Bytes, TrainError> {
    let file = tempfile::NamedTempFile::new().map_err(|e| TrainError::Checkpoint(e.to_string()))?;
    Tensor::write_safetensors(tensors, file.path())
        .map_err(|e| TrainError::Checkpoint(format!("writing tensors: {e}")))?;
    std::fs::read(file.path())
        .map(Bytes::from)
        .map_err(|e| TrainError::Checkpoint(e.to_string()))
}

/// Tensors from safetensors bytes; `key` names them in errors.
pub fn tensors_from_bytes(key: &str, data: &[u8]) -> Result<Vec<(String, Tensor)>, TrainError> {
    let file = tempfile::NamedTempFile::new().map_err(|e| TrainError::Checkpoint(e.to_string()))?;
    std::fs::write(file.path(), data).map_err(|e| TrainError::Checkpoint(e.to_string()))?;
    Tensor::read_safetensors(file.path()).map_err(|e| TrainError::Checkpoint(format!("{key}: {e}")))
}

impl StoreCheckpoints {
    fn key(&self, name: &str) -> String {
        format!("{}/{name}", self.prefix.trim_end_matches('/'))
    }

    fn step_dir(step: usize) -> String {
        format!("step-{step:08}")
    }

    fn get(&self, key: &str) -> Result<Option<Bytes>, TrainError> {
        match self.handle.block_on(self.store.get(key)) {
            Ok(data) => Ok(Some(data)),
            Err(StoreError::NotFound { .. }) => Ok(None),
            Err(e) => Err(store_error(e)),
        }
    }

    fn put(&self, key: &str, data: Bytes) -> Result<(), TrainError> {
        self.handle
            .block_on(self.store.put(key, data))
            .map_err(store_error)
    }
}

impl CheckpointStore for StoreCheckpoints {
    fn load(&self) -> Result<Option<Checkpoint>, TrainError> {
        let Some(latest) = self.get(&self.key("latest.json"))? else {
            return Ok(None);
        };
        let latest: Latest = serde_json::from_slice(&latest)
            .map_err(|e| TrainError::Checkpoint(format!("{}: {e}", self.key("latest.json"))))?;
        let dir = Self::step_dir(latest.step);
        let read = |name: &str| -> Result<Bytes, TrainError> {
            let key = self.key(&format!("{dir}/{name}"));
            self.get(&key)?
                .ok_or_else(|| TrainError::Checkpoint(format!("{key} is missing")))
        };
        let progress_key = self.key(&format!("{dir}/progress.json"));
        let progress: Progress = serde_json::from_slice(&read("progress.json")?)
            .map_err(|e| TrainError::Checkpoint(format!("{progress_key}: {e}")))?;
        Ok(Some(Checkpoint {
            progress,
            weights: tensors_from_bytes(&dir, &read("weights.safetensors")?)?,
            optimizer: tensors_from_bytes(&dir, &read("optimizer.safetensors")?)?,
            optimizer_steps: latest.optimizer_steps,
        }))
    }

    fn save(&self, checkpoint: &Checkpoint) -> Result<(), TrainError> {
        let step = checkpoint.progress.step;
        let dir = Self::step_dir(step);
        self.put(
            &self.key(&format!("{dir}/weights.safetensors")),
            tensors_to_bytes(&checkpoint.weights)?,
        )?;
        self.put(
            &self.key(&format!("{dir}/optimizer.safetensors")),
            tensors_to_bytes(&checkpoint.optimizer)?,
        )?;
        let progress = serde_json::to_vec(&checkpoint.progress).expect("progress serializes");
        self.put(&self.key(&format!("{dir}/progress.json")), progress.into())?;
        let latest = Latest {
            step,
            optimizer_steps: checkpoint.optimizer_steps,
        };
        self.put(
            &self.key("latest.json"),
            serde_json::to_vec(&latest).expect("serializes").into(),
        )?;
        // Older checkpoints are superseded (best effort: a leftover costs space, not correctness).
        let keep = self.key(&format!("{dir}/"));
        let step_prefix = self.key("step-");
        if let Ok(objects) = self.handle.block_on(self.store.list(&step_prefix)) {
            for object in objects.iter().filter(|o| !o.key.starts_with(&keep)) {
                let _ = self.handle.block_on(self.store.delete(&object.key));
            }
        }
        Ok(())
    }

    fn save_best(&self, weights: &[(String, Tensor)]) -> Result<(), TrainError> {
        self.put(&self.key("best.safetensors"), tensors_to_bytes(weights)?)
    }

    fn load_best(&self) -> Result<Option<Vec<(String, Tensor)>>, TrainError> {
        let key = self.key("best.safetensors");
        self.get(&key)?
            .map(|data| tensors_from_bytes(&key, &data))
            .transpose()
    }
}
