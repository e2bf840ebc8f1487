//! Prometheus metrics of the runner, and the HTTP server every worker runs for `/metrics`,
//! `/healthz` (the process is alive) and `/readyz` (its broker and store answer).
//!
//! Names follow Prometheus conventions: `medembed_` prefix, base units, counters end in
//! `_total`, and labels have bounded values (`stage`, `outcome`), never job ids.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};
use tokio_util::sync::CancellationToken;

use crate::queue::Queue;
use crate::store::ObjectStore;

/// Outcome label values of `medembed_tasks_total`.
pub mod outcome {
    pub const OK: &str = "ok";
    pub const RETRIED: &str = "retried";
    pub const DEAD_LETTERED: &str = "dead_lettered";
    pub const DEFERRED: &str = "deferred";
}

/// The runner's metrics; one value per process, shared by every stage running in it.
#[derive(Debug, Clone)]
pub struct RunnerMetrics {
    pub tasks: IntCounterVec,
    pub task_duration: HistogramVec,
    pub in_flight: IntGaugeVec,
    pub store_bytes_written: IntCounterVec,
}

impl RunnerMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let tasks = IntCounterVec::new(
            Opts::new(
                "medembed_tasks_total",
                "Tasks settled, by stage and outcome (ok, retried, dead_lettered).",
            ),
            &["stage", "outcome"],
        )?;
        let task_duration = HistogramVec::new(
            HistogramOpts::new(
                "medembed_task_duration_seconds",
                "Time from taking a task to settling it.",
            )
            .buckets(vec![
                0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 1800.0, 7200.0, 28800.0,
            ]),
            &["stage"],
        )?;
        let in_flight = IntGaugeVec::new(
            Opts::new("medembed_tasks_in_flight", "Tasks being processed now."),
            &["stage"],
        )?;
        let store_bytes_written = IntCounterVec::new(
            Opts::new(
                "medembed_store_bytes_written_total",
                "Bytes written to the object store.",
            ),
            &["stage"],
        )?;
        registry.register(Box::new(tasks.clone()))?;
        registry.register(Box::new(task_duration.clone()))?;
        registry.register(Box::new(in_flight.clone()))?;
        registry.register(Box::new(store_bytes_written.clone()))?;
        Ok(Self {
            tasks,
            task_duration,
            in_flight,
            store_bytes_written,
        })
    }

    /// Makes the series of a stage visible at zero before its first task, so dashboards and
    /// alerts see the stage from the start.
    pub fn init_stage(&self, stage: &str) {
        for o in [
            outcome::OK,
            outcome::RETRIED,
            outcome::DEAD_LETTERED,
            outcome::DEFERRED,
        ] {
            self.tasks.with_label_values(&[stage, o]);
        }
        self.task_duration.with_label_values(&[stage]);
        self.in_flight.with_label_values(&[stage]);
        self.store_bytes_written.with_label_values(&[stage]);
    }
}

/// The prometheus text exposition of `registry`.
pub fn render(registry: &Registry) -> String {
    let mut buf = Vec::new();
    TextEncoder::new()
        .encode(&registry.gather(), &mut buf)
        .expect("encoding gathered metrics into a Vec does not fail");
    String::from_utf8(buf).expect("the text format is UTF-8")
}

#[derive(Clone)]
struct HealthState {
    registry: Registry,
    queue: Option<Arc<dyn Queue>>,
    store: Arc<dyn ObjectStore>,
}

/// `/metrics` (the text exposition of `registry`), `/healthz` (alive) and `/readyz` (the broker,
/// if there is one, and the store reachable): served by every worker, and by the api beside its
/// own routes.
pub fn health_routes(
    registry: Registry,
    queue: Option<Arc<dyn Queue>>,
    store: Arc<dyn ObjectStore>,
) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .with_state(HealthState {
            registry,
            queue: queue.clone(),
            store: store.clone(),
        })
        .merge(probe_routes(queue, store))
}

/// `/healthz` and `/readyz` alone: what the api serves on its public port, where `/metrics`
/// does not belong.
pub fn probe_routes(queue: Option<Arc<dyn Queue>>, store: Arc<dyn ObjectStore>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(HealthState {
            registry: Registry::new(),
            queue,
            store,
        })
}

/// A bound health/metrics server; [`HealthServer::addr`] is the real port when 0 was asked for.
#[derive(Debug)]
pub struct HealthServer {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl HealthServer {
    /// Binds `addr` and serves until `shutdown` is cancelled.
    pub async fn start(
        addr: SocketAddr,
        registry: Registry,
        queue: Option<Arc<dyn Queue>>,
        store: Arc<dyn ObjectStore>,
        shutdown: CancellationToken,
    ) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
            std::io::Error::new(e.kind(), format!("metrics server: bind {addr}: {e}"))
        })?;
        let addr = listener.local_addr()?;
        let app = health_routes(registry, queue, store);
        let task = tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async move { shutdown.cancelled().await })
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "metrics server failed");
            }
        });
        tracing::info!(%addr, "serving /metrics, /healthz and /readyz");
        Ok(Self { addr, task })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Waits for the server to finish after its shutdown token was cancelled.
    pub async fn stopped(self) {
        let _ = self.task.await;
    }
}

async fn metrics(State(state): State<HealthState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        render(&state.registry),
    )
}

async fn readyz(State(state): State<HealthState>) -> impl IntoResponse {
    let queue_ready = async {
        match &state.queue {
            Some(queue) => Some(queue.ready().await),
            None => None,
        }
    };
    let (queue, store) = tokio::join!(queue_ready, state.store.ready());
    let word = |ok: bool| if ok { "ok" } else { "unreachable" };
    let mut body = String::new();
    if let Some(queue) = queue {
        body.push_str(&format!("queue: {}\n", word(queue)));
    }
    body.push_str(&format!("store: {}\n", word(store)));
    let queue = queue.unwrap_or(true);
    let status = if queue && store {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, body)
}
