//! medembed-api's whole router served on a free local port inside the test process, with an
//! in-process queue for job submissions, and its `/metrics` router on a second port.

use std::path::PathBuf;
use std::sync::Arc;

use medembed_api::auth::{Access, Role};
use medembed_api::metrics::ApiMetrics;
use medembed_api::state::AppState;
use medembed_pipeline::config::Settings;
use medembed_pipeline::queue::{MemoryQueue, Queue, RetryPolicy};
use medembed_pipeline::store::ObjectStore;

/// A running api: its base URL and the queue its job submissions go to.
#[derive(Debug)]
pub struct ServedApi {
    pub base: String,
    /// Where its `/metrics` is served.
    pub metrics_base: String,
    pub queue: Arc<MemoryQueue>,
    pub state: Arc<AppState>,
    _server: tokio::task::JoinHandle<()>,
    _metrics: tokio::task::JoinHandle<()>,
}

/// API keys for tests: one per role, as `(name, role, key)`, and their `api.keys` entries.
#[derive(Debug, Clone)]
pub struct TestKeys {
    pub read: String,
    pub submit: String,
    pub admin: String,
    pub entries: String,
}

impl TestKeys {
    pub fn new() -> Self {
        let (read, a) = medembed_api::auth::new_key("reader", Role::Read);
        let (submit, b) = medembed_api::auth::new_key("submitter", Role::Submit);
        let (admin, c) = medembed_api::auth::new_key("operator", Role::Admin);
        Self {
            read,
            submit,
            admin,
            entries: format!("{a}\n{b}\n{c}"),
        }
    }

    /// Access with these keys, and no anonymous access.
    pub fn access(&self) -> Access {
        Access::with_keys(&self.entries, None).expect("test keys parse")
    }
}

impl Default for TestKeys {
    fn default() -> Self {
        Self::new()
    }
}

/// Serves the api over `store`; `models_dir` holds model folders embeddable by name. Anonymous
/// callers may submit, as on a loopback address without keys ([`Access::local`]).
pub async fn serve_api(
    settings: &Settings,
    store: Arc<dyn ObjectStore>,
    models_dir: Option<PathBuf>,
) -> ServedApi {
    serve_api_with(settings, store, models_dir, Access::local()).await
}

/// [`serve_api`] answering callers with `access`.
pub async fn serve_api_with(
    settings: &Settings,
    store: Arc<dyn ObjectStore>,
    models_dir: Option<PathBuf>,
    access: Access,
) -> ServedApi {
    let queue = Arc::new(MemoryQueue::new(RetryPolicy::from_settings(
        &settings.queue,
    )));
    let state = AppState::new(
        settings.clone(),
        store,
        Some(queue.clone() as Arc<dyn Queue>),
        ApiMetrics::register(prometheus::Registry::new()).expect("metrics"),
        models_dir,
    )
    .expect("api state")
    .with_access(access);
    let state = Arc::new(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a local port");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let metrics_listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a local port");
    let metrics_base = format!("http://{}", metrics_listener.local_addr().expect("addr"));
    let app = medembed_api::router(state.clone());
    let metrics_app = medembed_api::metrics_router(&state);
    let server = tokio::spawn(async move {
        axum::serve(listener, app).await.expect("serve");
    });
    let metrics = tokio::spawn(async move {
        axum::serve(metrics_listener, metrics_app)
            .await
            .expect("serve metrics");
    });
    ServedApi {
        base,
        metrics_base,
        queue,
        state,
        _server: server,
        _metrics: metrics,
    }
}
