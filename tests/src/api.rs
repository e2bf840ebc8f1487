//! medembed-api's whole router served on a free local port inside the test process, with an
//! in-process queue for job submissions.

use std::path::PathBuf;
use std::sync::Arc;

use medembed_api::metrics::ApiMetrics;
use medembed_api::state::AppState;
use medembed_pipeline::config::Settings;
use medembed_pipeline::queue::{MemoryQueue, Queue, RetryPolicy};
use medembed_pipeline::store::ObjectStore;

/// A running api: its base URL and the queue its job submissions go to.
#[derive(Debug)]
pub struct ServedApi {
    pub base: String,
    pub queue: Arc<MemoryQueue>,
    _server: tokio::task::JoinHandle<()>,
}

/// Serves the api over `store`; `models_dir` holds model folders embeddable by name.
pub async fn serve_api(
    settings: &Settings,
    store: Arc<dyn ObjectStore>,
    models_dir: Option<PathBuf>,
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
    .expect("api state");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a local port");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let app = medembed_api::router(Arc::new(state));
    let server = tokio::spawn(async move {
        axum::serve(listener, app).await.expect("serve");
    });
    ServedApi {
        base,
        queue,
        _server: server,
    }
}
