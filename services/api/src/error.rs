//! Every error the api returns is JSON, `{"error": {"code", "message"}}`, with a 4xx status for
//! anything the request got wrong (the message names the field or the job) and 5xx only for
//! failures of the service itself (the store unreachable, the encoder gone).

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

/// The body of every error response.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable, machine-readable: `invalid_request`, `malformed_json`, `too_large`, `not_found`,
    /// `not_ready`, `unauthorized`, `forbidden`, `rate_limited`, `busy`, `timeout`,
    /// `unavailable`, `internal`.
    pub code: String,
    /// What was wrong, naming the field, job or limit.
    pub message: String,
}

/// An error with its HTTP status.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Sent as Retry-After (whole seconds, at least 1) on 429 and 503.
    pub retry_after: Option<std::time::Duration>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// The same error, telling the caller when to try again.
    pub fn retry_after(mut self, wait: std::time::Duration) -> Self {
        self.retry_after = Some(wait);
        self
    }

    /// 429 `rate_limited`: a rate or quota of the caller's is used up.
    pub fn rate_limited(message: impl Into<String>, wait: std::time::Duration) -> Self {
        Self::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", message).retry_after(wait)
    }

    /// 503 `busy`: the service is at capacity; the request was not queued.
    pub fn busy(message: impl Into<String>, wait: std::time::Duration) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "busy", message).retry_after(wait)
    }

    /// 422: the request parsed but a field's value is not acceptable.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 409: the job exists but has not got that far (no model or index yet).
    pub fn not_ready(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "not_ready", message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(status = %self.status, message = %self.message, "request failed");
        }
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_string(),
                message: self.message,
            },
        };
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(wait) = self.retry_after {
            let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(secs),
            );
        }
        response
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        let status = rejection.status();
        let code = match &rejection {
            _ if status == StatusCode::PAYLOAD_TOO_LARGE => "too_large",
            JsonRejection::JsonSyntaxError(_) => "malformed_json",
            JsonRejection::MissingJsonContentType(_) => "invalid_request",
            _ => "invalid_request",
        };
        Self::new(status, code, rejection.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            rejection.body_text(),
        )
    }
}

impl From<medembed_pipeline::store::StoreError> for ApiError {
    /// The store's own error (its key layout, raw S3 bodies, local paths) goes to the log only:
    /// callers learn that the store did not answer, not how the deployment is laid out.
    fn from(e: medembed_pipeline::store::StoreError) -> Self {
        tracing::error!(error = %e, "object store request failed");
        Self::unavailable(
            "the object store did not answer; try again later (the api's log has the details)",
        )
    }
}

impl From<crate::embedder::EmbedError> for ApiError {
    fn from(e: crate::embedder::EmbedError) -> Self {
        use crate::embedder::EmbedError;
        match e {
            EmbedError::Busy => Self::busy(e.to_string(), std::time::Duration::from_secs(1)),
            EmbedError::TooManyTokens { .. } => {
                Self::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", e.to_string())
            }
            other => Self::internal(other.to_string()),
        }
    }
}

impl From<medembed_indexer::IndexError> for ApiError {
    fn from(e: medembed_indexer::IndexError) -> Self {
        use medembed_indexer::IndexError;
        match e {
            IndexError::Missing(m) => Self::not_ready(m),
            IndexError::Query(m) => Self::invalid(m),
            IndexError::Store(s) => s.into(),
            other => Self::internal(other.to_string()),
        }
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

#[cfg(test)]
mod tests {
    use super::*;
    use medembed_pipeline::store::StoreError;

    #[test]
    fn store_errors_reach_callers_without_their_raw_text() {
        let e: ApiError = StoreError::S3 {
            op: "get",
            key: "jobs/01ABC/index/vectors.bin".into(),
            message: "<Error><Code>AccessDenied</Code><BucketName>prod-secret</BucketName></Error>"
                .into(),
            retryable: true,
        }
        .into();
        assert_eq!(e.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(e.code, "unavailable");
        for leaked in ["prod-secret", "AccessDenied", "jobs/01ABC", "vectors.bin"] {
            assert!(!e.message.contains(leaked), "{leaked} in {:?}", e.message);
        }
        assert!(e.message.contains("object store"), "{}", e.message);
    }
}
