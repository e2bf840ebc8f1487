//! Per-stage job status at `jobs/{job}/status/{stage}.json`: state, counts, progress, timings,
//! warnings and the last error. Stages write it as they go; the runner records failures; the CLI
//! and the API read it. Writes are whole-object overwrites of small JSON, so the latest writer wins,
//! which is what a progress report needs.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::keys;
use crate::messages::JobId;
use crate::store::{ObjectStore, StoreError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum StageState {
    #[default]
    Pending,
    Running,
    Done,
    Failed,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct StageStatus {
    pub stage: String,
    pub state: StageState,
    /// RFC 3339 times.
    pub started_at: Option<String>,
    pub updated_at: Option<String>,
    pub finished_at: Option<String>,
    /// Named counts (`articles`, `parts`, `skipped_no_id`, …).
    pub counts: BTreeMap<String, u64>,
    /// Work done and total, in the stage's own unit (`unit`).
    pub done: u64,
    pub total: u64,
    pub unit: String,
    pub warnings: Vec<String>,
    pub last_error: Option<String>,
}

pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .expect("the current time formats as RFC 3339")
}

impl StageStatus {
    /// The stored status, or a pending one if none was written yet.
    pub async fn load(
        store: &dyn ObjectStore,
        job: JobId,
        stage: &str,
    ) -> Result<Self, StoreError> {
        match store.get(&keys::stage_status(job, stage)).await {
            Ok(bytes) => Ok(serde_json::from_slice(&bytes).unwrap_or_else(|_| Self::new(stage))),
            Err(StoreError::NotFound { .. }) => Ok(Self::new(stage)),
            Err(e) => Err(e),
        }
    }

    pub fn new(stage: &str) -> Self {
        Self {
            stage: stage.to_string(),
            ..Self::default()
        }
    }

    pub async fn save(&mut self, store: &dyn ObjectStore, job: JobId) -> Result<(), StoreError> {
        self.updated_at = Some(now_rfc3339());
        let body = serde_json::to_vec_pretty(self).expect("status is plain data");
        store
            .put(&keys::stage_status(job, &self.stage), Bytes::from(body))
            .await
    }

    pub fn start(&mut self) {
        self.state = StageState::Running;
        if self.started_at.is_none() {
            self.started_at = Some(now_rfc3339());
        }
    }

    pub fn finish(&mut self) {
        self.state = StageState::Done;
        self.finished_at = Some(now_rfc3339());
        self.last_error = None;
    }

    /// Records a failure of a stage's task (best effort: a status write must not fail the task).
    pub async fn record_error(
        store: &dyn ObjectStore,
        job: JobId,
        stage: &str,
        error: &str,
        permanent: bool,
    ) {
        let Ok(mut status) = Self::load(store, job, stage).await else {
            return;
        };
        status.last_error = Some(error.to_string());
        if permanent {
            status.state = StageState::Failed;
        }
        let _ = status.save(store, job).await;
    }
}
