//! What one caller, or all of them together, may ask of the api at once, all from
//! `[api]` settings:
//! - a request rate per key (governor's GCRA: `requests_per_minute` with `request_burst`),
//!   answered 429 with Retry-After above it;
//! - texts waiting for or in an encoder, over every request (`max_queued_texts`): a request that
//!   would exceed it is answered 503 with Retry-After at once, so memory stays bounded however
//!   many requests arrive;
//! - a deadline on every API request (`request_timeout_secs`), answered 503 `timeout`.
//!
//! Job quotas (articles per job, active jobs per key and in all) are checked where jobs are
//! submitted ([`crate::routes::submit`]).

use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use medembed_pipeline::config::ApiSettings;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::ApiError;

/// The api's shared limits.
#[derive(Debug)]
pub struct Limits {
    rate: DefaultKeyedRateLimiter<String>,
    clock: DefaultClock,
    queued_texts: Arc<Semaphore>,
    max_queued_texts: usize,
    /// The most texts admitted at once so far.
    peak_queued_texts: AtomicUsize,
    pub request_timeout: Duration,
}

/// Texts admitted to an encoder; released when the encoder is done with them.
#[derive(Debug)]
pub struct TextPermit {
    _permit: OwnedSemaphorePermit,
}

impl Limits {
    pub fn new(api: &ApiSettings) -> Self {
        let per_minute = NonZeroU32::new(api.requests_per_minute).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(api.request_burst).unwrap_or(NonZeroU32::MIN);
        Self {
            rate: DefaultKeyedRateLimiter::keyed(Quota::per_minute(per_minute).allow_burst(burst)),
            clock: DefaultClock::default(),
            queued_texts: Arc::new(Semaphore::new(api.max_queued_texts)),
            max_queued_texts: api.max_queued_texts,
            peak_queued_texts: AtomicUsize::new(0),
            request_timeout: Duration::from_secs(api.request_timeout_secs),
        }
    }

    /// One request of `key` against its rate; Err(wait) when it must wait.
    pub fn check_rate(&self, key: &str) -> Result<(), Duration> {
        self.rate
            .check_key(&key.to_string())
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }

    /// Texts admitted to the encoders now.
    pub fn queued_texts(&self) -> usize {
        self.max_queued_texts - self.queued_texts.available_permits()
    }

    /// The most texts admitted at once since the api started.
    pub fn peak_queued_texts(&self) -> usize {
        self.peak_queued_texts.load(Ordering::Relaxed)
    }

    /// Room for `texts` more texts in the encoders, or 503 when they are full.
    pub fn admit_texts(&self, texts: usize) -> Result<TextPermit, ApiError> {
        let n = u32::try_from(texts).unwrap_or(u32::MAX);
        self.queued_texts
            .clone()
            .try_acquire_many_owned(n)
            .map(|permit| {
                let queued = self.queued_texts();
                self.peak_queued_texts.fetch_max(queued, Ordering::Relaxed);
                TextPermit { _permit: permit }
            })
            .map_err(|_| {
                ApiError::busy(
                    format!(
                        "the encoders are full ({} of api.max_queued_texts = {} texts waiting); retry after the Retry-After seconds",
                        self.queued_texts(),
                        self.max_queued_texts
                    ),
                    Duration::from_secs(1),
                )
            })
    }
}

/// Middleware: an API request unanswered after `api.request_timeout_secs` is answered 503.
/// Dropping the handler's future drops its place in an encoder's queue too (the texts' permit
/// goes once the encoder has finished them).
pub async fn deadline(State(limits): State<Arc<Limits>>, request: Request, next: Next) -> Response {
    let path = request.uri().path().to_string();
    match tokio::time::timeout(limits.request_timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            tracing::warn!(%path, timeout_s = limits.request_timeout.as_secs(), "request timed out");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "timeout",
                format!(
                    "not answered within {} s (api.request_timeout_secs)",
                    limits.request_timeout.as_secs()
                ),
            )
            .retry_after(Duration::from_secs(1))
            .into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(per_minute: u32, burst: u32, texts: usize) -> ApiSettings {
        let mut api = medembed_pipeline::config::Settings::load_with_env(None, Vec::new())
            .unwrap()
            .api;
        api.requests_per_minute = per_minute;
        api.request_burst = burst;
        api.max_queued_texts = texts;
        api
    }

    #[test]
    fn each_key_has_its_own_rate_and_waits_are_about_one_period() {
        let limits = Limits::new(&api(60, 2, 10));
        assert!(limits.check_rate("a").is_ok());
        assert!(limits.check_rate("a").is_ok());
        let wait = limits.check_rate("a").unwrap_err();
        assert!(wait <= Duration::from_secs(1), "{wait:?}");
        assert!(limits.check_rate("b").is_ok(), "another key is not limited");
    }

    #[tokio::test]
    async fn a_request_past_the_deadline_is_answered_503_timeout() {
        let mut settings = api(600, 60, 10);
        settings.request_timeout_secs = 1;
        let limits = Arc::new(Limits::new(&settings));
        let app = axum::Router::new()
            .route(
                "/slow",
                axum::routing::get(|| async {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    "late"
                }),
            )
            .route("/fast", axum::routing::get(|| async { "ok" }))
            .layer(axum::middleware::from_fn_with_state(limits, deadline));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let client = reqwest::Client::new();
        let fast = client.get(format!("{base}/fast")).send().await.unwrap();
        assert_eq!(fast.status().as_u16(), 200);
        let started = std::time::Instant::now();
        let slow = client.get(format!("{base}/slow")).send().await.unwrap();
        assert!(started.elapsed() < Duration::from_secs(10));
        assert_eq!(slow.status().as_u16(), 503);
        assert!(slow.headers().contains_key("retry-after"));
        let body: serde_json::Value = slow.json().await.unwrap();
        assert_eq!(body["error"]["code"], "timeout");
    }

    #[test]
    fn texts_beyond_the_queue_are_refused_until_permits_return() {
        let limits = Limits::new(&api(600, 60, 10));
        let first = limits.admit_texts(8).unwrap();
        let refused = limits.admit_texts(3).unwrap_err();
        assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(refused.retry_after.is_some());
        assert_eq!(limits.peak_queued_texts(), 8);
        drop(first);
        assert_eq!(limits.queued_texts(), 0);
        assert!(limits.admit_texts(10).is_ok());
        assert_eq!(limits.peak_queued_texts(), 10);
    }
}
