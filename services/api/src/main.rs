//! medembed-api: the HTTP API and web UI over the jobs in the store.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use medembed_api::metrics::ApiMetrics;
use medembed_api::state::AppState;
use medembed_pipeline::config::{QueueBackend, Settings};
use medembed_pipeline::{queue, shutdown, store, telemetry};

/// The medembed API and web UI: submit and follow jobs, search a job's corpus by meaning with its
/// own fine-tuned model, compare texts, explore the embedding map, and embed text through an
/// OpenAI-compatible /v1/embeddings. Listens on api.listen_addr (default 0.0.0.0:8080); the
/// OpenAPI description is at /api/openapi.json, the UI at /.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
struct Args {
    /// A TOML settings file layered over the defaults (e.g. configs/distributed.toml).
    #[arg(long, value_name = "FILE", env = "MEDEMBED_CONFIG")]
    config: Option<PathBuf>,
    /// Serve the local store of `medembed run` in DIR (default ./medembed-data), with no
    /// broker: search and browse, but not submit.
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// A folder of sentence-transformers model folders, embeddable by folder name through
    /// /v1/embeddings (`"model": "all-MiniLM-L6-v2"`).
    #[arg(long, value_name = "DIR")]
    models_dir: Option<PathBuf>,
    /// Address to listen on (overrides api.listen_addr).
    #[arg(long, value_name = "ADDR")]
    listen: Option<std::net::SocketAddr>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut settings = Settings::load(args.config.as_deref())?;
    if let Some(dir) = &args.data {
        settings.store.backend = medembed_pipeline::config::StoreBackend::Local;
        settings.store.local_root = dir.clone();
        settings.queue.backend = QueueBackend::Memory;
    }
    if let Some(addr) = args.listen {
        settings.api.listen_addr = addr;
    }
    telemetry::init(&settings.log);
    let stop = shutdown::on_signal();
    let store = store::open(&settings.store)
        .await
        .context("opening the store")?;
    let queue = match settings.queue.backend {
        QueueBackend::Amqp => Some(
            queue::open(&settings.queue)
                .await
                .context("connecting to the broker")?,
        ),
        QueueBackend::Memory => None,
    };
    let metrics = ApiMetrics::register(prometheus::Registry::new())?;
    let addr = settings.api.listen_addr;
    let state = Arc::new(AppState::new(
        settings,
        store,
        queue.clone(),
        metrics,
        args.models_dir,
    )?);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    tracing::info!(addr = %listener.local_addr()?, "medembed-api listening");
    axum::serve(listener, medembed_api::router(state))
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await?;
    if let Some(queue) = queue {
        queue.close().await;
    }
    Ok(())
}
