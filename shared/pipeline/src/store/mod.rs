//! Object storage: one [`ObjectStore`] trait, an S3 implementation (AWS, MinIO, Garage) and a
//! local-directory implementation for embedded mode.
//!
//! Keys are `/`-separated relative paths (`jobs/{job}/raw/part-00003.parquet`). Every stage writes
//! to keys that are deterministic from (job, stage, part), so a redelivered task overwrites an object
//! with the same content: correctness never depends on conditional writes (Garage ignores
//! `If-None-Match`). A put either publishes the whole object or nothing: the local store writes a
//! temp file and renames it; S3 makes an object visible only when its upload completes.

mod local;
mod s3;

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

pub use local::LocalStore;
pub use s3::{BlockingBody, S3Store};

use crate::config::{StoreBackend, StoreSettings};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("object {key:?} not found")]
    NotFound { key: String },
    #[error("invalid object key {key:?}: {reason}")]
    InvalidKey { key: String, reason: &'static str },
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("s3 {op} {key:?}: {message}")]
    S3 {
        op: &'static str,
        key: String,
        message: String,
        retryable: bool,
    },
}

impl StoreError {
    /// Whether trying again later may succeed (a network or server hiccup), as opposed to a bad
    /// key, a missing object or refused credentials.
    pub fn is_retryable(&self) -> bool {
        match self {
            StoreError::NotFound { .. } | StoreError::InvalidKey { .. } => false,
            StoreError::Io { source, .. } => !matches!(
                source.kind(),
                std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::InvalidInput
            ),
            StoreError::S3 { retryable, .. } => *retryable,
        }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Size and identity of a stored object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    pub key: String,
    pub size: u64,
}

#[async_trait]
pub trait ObjectStore: Send + Sync + std::fmt::Debug {
    /// Writes the whole object; once this returns Ok the object is durable and readable.
    async fn put(&self, key: &str, data: Bytes) -> Result<()>;
    /// Reads the whole object; a missing key is [`StoreError::NotFound`].
    async fn get(&self, key: &str) -> Result<Bytes>;
    /// The object's metadata, or None if it does not exist.
    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>>;
    /// Every object whose key starts with `prefix`, sorted by key.
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>>;
    /// Removes the object; removing a missing object is not an error.
    async fn delete(&self, key: &str) -> Result<()>;
    /// Whether the store answers at all (for `/readyz`).
    async fn ready(&self) -> bool;

    /// Whether the object exists.
    async fn exists(&self, key: &str) -> Result<bool> {
        Ok(self.head(key).await?.is_some())
    }
}

/// A small JSON object (a manifest, stats, a status) read and parsed; None when it does not
/// exist. A store hiccup is retryable; JSON that does not parse is a permanent error naming the
/// key (a bug or a foreign file, never a normal state).
pub async fn read_json<T: serde::de::DeserializeOwned>(
    store: &dyn ObjectStore,
    key: &str,
) -> std::result::Result<Option<T>, crate::runner::StageError> {
    match store.get(key).await {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| crate::runner::StageError::permanent(format!("{key}: {e}"))),
        Err(StoreError::NotFound { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// A store for an `s3://bucket/prefix` URL (a source outside the job store: bulk files, a base
/// model), with the endpoint and credentials of `settings`; returns it and the prefix.
pub async fn open_s3_url(settings: &StoreSettings, url: &str) -> Result<(S3Store, String)> {
    let rest = url
        .strip_prefix("s3://")
        .ok_or_else(|| StoreError::InvalidKey {
            key: url.to_string(),
            reason: "not an s3://bucket/prefix URL",
        })?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(StoreError::InvalidKey {
            key: url.to_string(),
            reason: "no bucket in the s3:// URL",
        });
    }
    let mut settings = settings.clone();
    settings.bucket = bucket.to_string();
    settings.prefix = String::new();
    Ok((S3Store::new(&settings).await?, prefix.to_string()))
}

/// Copies every object under `prefix` into `dir` (keys relative to the prefix become paths);
/// returns how many files. Each file is written to a temporary name and renamed.
pub async fn download_prefix(
    store: &dyn ObjectStore,
    prefix: &str,
    dir: &std::path::Path,
) -> Result<usize> {
    let prefix = if prefix.is_empty() || prefix.ends_with('/') {
        prefix.to_string()
    } else {
        format!("{prefix}/")
    };
    let io = |op: &'static str, path: &std::path::Path| {
        let path = path.to_path_buf();
        move |source| StoreError::Io { op, path, source }
    };
    let objects = store.list(&prefix).await?;
    for object in &objects {
        let relative = &object.key[prefix.len()..];
        validate_key(relative)?;
        let path = dir.join(relative);
        let parent = path.parent().unwrap_or(dir);
        std::fs::create_dir_all(parent).map_err(io("create", parent))?;
        let data = store.get(&object.key).await?;
        let partial = path.with_extension("partial");
        std::fs::write(&partial, &data).map_err(io("write", &partial))?;
        std::fs::rename(&partial, &path).map_err(io("rename", &path))?;
    }
    Ok(objects.len())
}

/// Uploads every file under `dir` to `prefix/{relative path}`, in sorted order, `last` (a file
/// name relative to `dir`) after all others: readers that wait for `last` see a complete folder.
pub async fn upload_dir(
    store: &dyn ObjectStore,
    dir: &std::path::Path,
    prefix: &str,
    last: Option<&str>,
) -> Result<usize> {
    fn walk(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) -> std::io::Result<()> {
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            if path.is_dir() {
                walk(&path, out)?;
            } else {
                out.push(path);
            }
        }
        Ok(())
    }
    let mut files = Vec::new();
    walk(dir, &mut files).map_err(|source| StoreError::Io {
        op: "list",
        path: dir.to_path_buf(),
        source,
    })?;
    let relative = |p: &std::path::Path| {
        p.strip_prefix(dir)
            .expect("walked under dir")
            .to_string_lossy()
            .replace('\\', "/")
    };
    files.sort_by_key(|p| (Some(relative(p).as_str()) == last, relative(p)));
    for file in &files {
        let data = std::fs::read(file).map_err(|source| StoreError::Io {
            op: "read",
            path: file.clone(),
            source,
        })?;
        let key = format!("{}/{}", prefix.trim_end_matches('/'), relative(file));
        store.put(&key, Bytes::from(data)).await?;
    }
    Ok(files.len())
}

/// Opens the store the settings describe.
pub async fn open(settings: &StoreSettings) -> Result<Arc<dyn ObjectStore>> {
    Ok(match settings.backend {
        StoreBackend::Local => Arc::new(LocalStore::new(&settings.local_root)?),
        StoreBackend::S3 => Arc::new(S3Store::new(settings).await?),
    })
}

/// Rejects keys that could escape the store's root or that S3 and a filesystem treat differently.
pub(crate) fn validate_key(key: &str) -> Result<()> {
    let invalid = |reason| {
        Err(StoreError::InvalidKey {
            key: key.to_string(),
            reason,
        })
    };
    if key.is_empty() {
        return invalid("empty");
    }
    if key.len() > 1024 {
        return invalid("longer than 1024 bytes");
    }
    if key.starts_with('/') || key.ends_with('/') {
        return invalid("starts or ends with '/'");
    }
    if key.contains('\0') || key.contains('\\') {
        return invalid("contains NUL or '\\'");
    }
    for segment in key.split('/') {
        if segment.is_empty() || segment == "." || segment == ".." {
            return invalid("has an empty, '.' or '..' segment");
        }
        if segment.starts_with(local::TEMP_MARKER) {
            return invalid("uses the store's reserved temp-file prefix");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_that_escape_or_are_ambiguous_are_refused() {
        for bad in [
            "",
            "/abs",
            "a/../b",
            "a//b",
            "a/./b",
            "dir/",
            "a\\b",
            "..",
            "x/.medembed-tmp-1",
        ] {
            assert!(validate_key(bad).is_err(), "{bad:?} should be refused");
        }
        for good in [
            "a",
            "jobs/01J/raw/part-00001.parquet",
            "ünïcödé/ключ/鍵.json",
            "a b/c",
        ] {
            validate_key(good).expect(good);
        }
    }
}
