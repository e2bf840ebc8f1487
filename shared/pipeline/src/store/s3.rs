//! The S3 store (aws-sdk-s3): AWS S3, MinIO, Garage and other S3-compatible servers.

use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
    retry::RetryConfig, timeout::TimeoutConfig,
};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use aws_smithy_types::error::display::DisplayErrorContext;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};

use super::{ObjectMeta, ObjectStore, Result, StoreError, validate_key};
use crate::config::StoreSettings;

/// An S3 object's body as `std::io::Read`, one network chunk in memory at a time
/// ([`S3Store::reader`]).
pub struct BlockingBody {
    body: ByteStream,
    chunk: Bytes,
    runtime: tokio::runtime::Handle,
}

impl std::fmt::Debug for BlockingBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockingBody").finish_non_exhaustive()
    }
}

impl std::io::Read for BlockingBody {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.chunk.is_empty() {
            match self.runtime.block_on(self.body.next()) {
                Some(Ok(chunk)) => self.chunk = chunk,
                Some(Err(e)) => {
                    return Err(std::io::Error::other(format!(
                        "reading the object body: {}",
                        DisplayErrorContext(e)
                    )));
                }
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk[..n]);
        let _ = self.chunk.split_to(n);
        Ok(n)
    }
}

/// Parts of one multipart upload in flight at once.
const PARALLEL_PARTS: usize = 4;

#[derive(Debug, Clone)]
pub struct S3Store {
    client: Client,
    bucket: String,
    /// Empty, or ends with '/'.
    prefix: String,
    multipart_threshold: u64,
    part_size: u64,
}

impl S3Store {
    /// The object at `key` as a blocking reader that streams it from S3 as it is read: for bulk
    /// files of many GB, which must never be held in memory whole. Opening is retried like any
    /// request; a connection lost mid-body is an I/O error of the read. Read it on a blocking
    /// thread (`spawn_blocking`): each read waits on the runtime that opened it.
    pub async fn reader(&self, key: &str) -> Result<BlockingBody> {
        Ok(BlockingBody {
            body: self.get_body(key).await?,
            chunk: Bytes::new(),
            runtime: tokio::runtime::Handle::current(),
        })
    }

    /// The body of the object at `key`, not yet read.
    async fn get_body(&self, key: &str) -> Result<ByteStream> {
        let full = self.full_key(key)?;
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(&full)
            .send()
            .await
            .map_err(|e| classify("get", key, e))?;
        Ok(out.body)
    }

    pub async fn new(settings: &StoreSettings) -> Result<Self> {
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new(settings.region.clone()))
            .retry_config(RetryConfig::standard().with_max_attempts(settings.max_attempts))
            // Without an attempt timeout a request whose connection stops answering waits
            // forever (seen: a trainer's checkpoint upload hung its task); with it, the attempt
            // fails as a timeout and is retried.
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(std::time::Duration::from_secs(10))
                    .operation_attempt_timeout(std::time::Duration::from_secs(
                        settings.request_timeout_secs,
                    ))
                    .build(),
            );
        if !settings.endpoint.is_empty() {
            loader = loader.endpoint_url(&settings.endpoint);
        }
        if !settings.access_key_id.is_empty() {
            loader = loader.credentials_provider(Credentials::new(
                settings.access_key_id.clone(),
                settings.secret_access_key.expose().to_string(),
                None,
                None,
                "medembed-config",
            ));
        }
        let sdk_config = loader.load().await;
        let config = aws_sdk_s3::config::Builder::from(&sdk_config)
            .force_path_style(settings.path_style)
            // S3-compatible servers differ in their support of the newer default checksums;
            // ask for them only where the API requires them.
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            .build();
        let prefix = settings.prefix.trim_matches('/');
        Ok(Self {
            client: Client::from_conf(config),
            bucket: settings.bucket.clone(),
            prefix: if prefix.is_empty() {
                String::new()
            } else {
                format!("{prefix}/")
            },
            multipart_threshold: settings.multipart_threshold_bytes,
            part_size: settings.multipart_part_size_bytes,
        })
    }

    fn full_key(&self, key: &str) -> Result<String> {
        validate_key(key)?;
        Ok(format!("{}{key}", self.prefix))
    }

    async fn put_multipart(&self, key: &str, full: &str, data: Bytes) -> Result<()> {
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(full)
            .send()
            .await
            .map_err(|e| classify("create multipart upload", key, e))?;
        let upload_id = created.upload_id().unwrap_or_default().to_string();
        let part_size = self.part_size as usize;
        let ranges: Vec<(i32, std::ops::Range<usize>)> = (0..data.len())
            .step_by(part_size)
            .enumerate()
            .map(|(i, start)| (i as i32 + 1, start..(start + part_size).min(data.len())))
            .collect();
        let uploaded: Result<Vec<CompletedPart>> = futures::stream::iter(ranges)
            .map(|(number, range)| {
                let body = ByteStream::from(data.slice(range));
                let upload_id = upload_id.clone();
                async move {
                    let part = self
                        .client
                        .upload_part()
                        .bucket(&self.bucket)
                        .key(full)
                        .upload_id(upload_id)
                        .part_number(number)
                        .body(body)
                        .send()
                        .await
                        .map_err(|e| classify("upload part", key, e))?;
                    Ok(CompletedPart::builder()
                        .set_e_tag(part.e_tag().map(str::to_string))
                        .part_number(number)
                        .build())
                }
            })
            .buffered(PARALLEL_PARTS)
            .try_collect()
            .await;
        let completed = match uploaded {
            Ok(parts) => self
                .client
                .complete_multipart_upload()
                .bucket(&self.bucket)
                .key(full)
                .upload_id(&upload_id)
                .multipart_upload(
                    CompletedMultipartUpload::builder()
                        .set_parts(Some(parts))
                        .build(),
                )
                .send()
                .await
                .map_err(|e| classify("complete multipart upload", key, e))
                .map(|_| ()),
            Err(e) => Err(e),
        };
        if completed.is_err() {
            // Parts of an abandoned upload cost storage until aborted.
            let _ = self
                .client
                .abort_multipart_upload()
                .bucket(&self.bucket)
                .key(full)
                .upload_id(&upload_id)
                .send()
                .await;
        }
        completed
    }
}

/// Maps an SDK error to a [`StoreError`], deciding whether a retry may help.
fn classify<E>(
    op: &'static str,
    key: &str,
    err: SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let (status, code) = match &err {
        SdkError::ServiceError(ctx) => (
            Some(ctx.raw().status().as_u16()),
            ctx.err().code().map(str::to_string),
        ),
        _ => (None, None),
    };
    if status == Some(404) && code.as_deref() != Some("NoSuchBucket") {
        return StoreError::NotFound {
            key: key.to_string(),
        };
    }
    let retryable = match &err {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            true
        }
        SdkError::ServiceError(_) => matches!(status, Some(s) if s >= 500 || s == 429 || s == 408),
        _ => false,
    };
    StoreError::S3 {
        op,
        key: key.to_string(),
        message: DisplayErrorContext(&err).to_string(),
        retryable,
    }
}

#[async_trait]
impl ObjectStore for S3Store {
    async fn put(&self, key: &str, data: Bytes) -> Result<()> {
        let full = self.full_key(key)?;
        if data.len() as u64 > self.multipart_threshold {
            return self.put_multipart(key, &full, data).await;
        }
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(&full)
            .body(ByteStream::from(data))
            .send()
            .await
            .map_err(|e| classify("put", key, e))?;
        Ok(())
    }

    async fn get(&self, key: &str) -> Result<Bytes> {
        let body = self
            .get_body(key)
            .await?
            .collect()
            .await
            .map_err(|e| StoreError::S3 {
                op: "get (read body)",
                key: key.to_string(),
                message: e.to_string(),
                retryable: true,
            })?;
        Ok(body.into_bytes())
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>> {
        let full = self.full_key(key)?;
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(&full)
            .send()
            .await
        {
            Ok(out) => Ok(Some(ObjectMeta {
                key: key.to_string(),
                size: out.content_length().unwrap_or(0).max(0) as u64,
            })),
            Err(e) => match classify("head", key, e) {
                StoreError::NotFound { .. } => Ok(None),
                other => Err(other),
            },
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        let full_prefix = format!("{}{prefix}", self.prefix);
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(&full_prefix)
            .into_paginator()
            .send();
        let mut out = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| classify("list", prefix, e))?;
            for object in page.contents() {
                let Some(key) = object.key().and_then(|k| k.strip_prefix(&self.prefix)) else {
                    continue;
                };
                out.push(ObjectMeta {
                    key: key.to_string(),
                    size: object.size().unwrap_or(0).max(0) as u64,
                });
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    async fn delete(&self, key: &str) -> Result<()> {
        let full = self.full_key(key)?;
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(&full)
            .send()
            .await
            .map_err(|e| classify("delete", key, e))?;
        Ok(())
    }

    async fn ready(&self) -> bool {
        self.client
            .head_bucket()
            .bucket(&self.bucket)
            .send()
            .await
            .is_ok()
    }
}
