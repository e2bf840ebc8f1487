//! The object-key scheme: every key is a function of (job, stage, part), so a redelivered task
//! writes to the same keys and overwrites its own earlier output.

use crate::messages::JobId;

/// `jobs/{job}/job.json`: the [`crate::messages::JobSpec`].
pub fn job_spec(job: JobId) -> String {
    format!("jobs/{job}/job.json")
}

/// `jobs/{job}/status/{stage}.json`: a stage's progress, counts, timings and last error.
pub fn stage_status(job: JobId, stage: &str) -> String {
    format!("jobs/{job}/status/{stage}.json")
}

/// `jobs/{job}/raw/part-NNNNN.parquet`.
pub fn raw_part(job: JobId, part: u32) -> String {
    format!("jobs/{job}/raw/part-{part:05}.parquet")
}

/// `jobs/{job}/raw/_manifest.json`: written last, once every raw part is.
pub fn raw_manifest(job: JobId) -> String {
    format!("jobs/{job}/raw/_manifest.json")
}

/// `jobs/{job}/clean/part-NNNNN.parquet`.
pub fn clean_part(job: JobId, part: u32) -> String {
    format!("jobs/{job}/clean/part-{part:05}.parquet")
}

/// `jobs/{job}/clean/part-NNNNN.stats.json`: written before its part (see `clean_part`).
pub fn clean_part_stats(job: JobId, part: u32) -> String {
    format!("jobs/{job}/clean/part-{part:05}.stats.json")
}

/// `jobs/{job}/clean/`.
pub fn clean_prefix(job: JobId) -> String {
    format!("jobs/{job}/clean/")
}

/// `jobs/{job}/pairs/{name}`: `train.parquet`, `eval_val.parquet`, `stats.json`, …
pub fn pairs_file(job: JobId, name: &str) -> String {
    format!("jobs/{job}/pairs/{name}")
}

/// `jobs/{job}/model/`: the fine-tuned model, a sentence-transformers folder; `metrics.json` in it
/// is written last.
pub fn model_prefix(job: JobId) -> String {
    format!("jobs/{job}/model/")
}

/// `jobs/{job}/train/{name}`: the trainer's working state (`lease.json`, `checkpoints/…`).
pub fn train_file(job: JobId, name: &str) -> String {
    format!("jobs/{job}/train/{name}")
}

/// `jobs/{job}/index/embeddings/part-NNNNN.parquet`: the embeddings of one clean part.
pub fn embedding_part(job: JobId, part: u32) -> String {
    format!("jobs/{job}/index/embeddings/part-{part:05}.parquet")
}

/// `jobs/{job}/index/embeddings/`.
pub fn embeddings_prefix(job: JobId) -> String {
    format!("jobs/{job}/index/embeddings/")
}

/// `jobs/{job}/index/{name}`: `vectors.f32`, `hnsw.usearch`, `documents.parquet`, `map.parquet`,
/// `clusters.parquet`, and `_manifest.json` written last.
pub fn index_file(job: JobId, name: &str) -> String {
    format!("jobs/{job}/index/{name}")
}

/// Prefix of every object of a job.
pub fn job_prefix(job: JobId) -> String {
    format!("jobs/{job}/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_deterministic_and_sort_by_part() {
        let job: JobId = "01JDZ8Q4V5W3XK1N2M3P4R5S6T".parse().expect("ulid");
        assert_eq!(
            raw_part(job, 7),
            "jobs/01JDZ8Q4V5W3XK1N2M3P4R5S6T/raw/part-00007.parquet"
        );
        assert!(raw_part(job, 9) < raw_part(job, 10));
        assert_eq!(
            stage_status(job, "fetch"),
            "jobs/01JDZ8Q4V5W3XK1N2M3P4R5S6T/status/fetch.json"
        );
    }
}
