//! `medembed_api_*` metrics, recorded by one middleware for every route: requests by endpoint
//! (the route's pattern, so cardinality stays bounded) and status, and their latency; and
//! per API key (by its configured name, never the key) how its requests were let through.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

#[derive(Debug, Clone)]
pub struct ApiMetrics {
    pub registry: Registry,
    pub requests: IntCounterVec,
    pub duration: HistogramVec,
    pub by_key: IntCounterVec,
}

impl ApiMetrics {
    pub fn register(registry: Registry) -> prometheus::Result<Self> {
        let requests = IntCounterVec::new(
            Opts::new(
                "medembed_api_requests_total",
                "HTTP requests answered, by endpoint (route pattern) and status code.",
            ),
            &["endpoint", "status"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "medembed_api_request_duration_seconds",
                "Time to answer an HTTP request, by endpoint (route pattern).",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
            ]),
            &["endpoint"],
        )?;
        let by_key = IntCounterVec::new(
            Opts::new(
                "medembed_api_key_requests_total",
                "API requests by key name (`anonymous` without one) and outcome: allowed, unauthorized, forbidden, rate_limited.",
            ),
            &["key", "outcome"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(by_key.clone()))?;
        Ok(Self {
            registry,
            requests,
            duration,
            by_key,
        })
    }

    /// One API request of key `name` and what became of it at the door.
    pub fn count_auth(&self, name: &str, outcome: &str) {
        self.by_key.with_label_values(&[name, outcome]).inc();
    }
}

/// Middleware: counts and times each request under its route pattern (`unmatched` otherwise).
pub async fn record(State(metrics): State<ApiMetrics>, request: Request, next: Next) -> Response {
    let endpoint = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let started = Instant::now();
    let response = next.run(request).await;
    metrics
        .duration
        .with_label_values(&[&endpoint])
        .observe(started.elapsed().as_secs_f64());
    metrics
        .requests
        .with_label_values(&[&endpoint, response.status().as_str()])
        .inc();
    response
}
