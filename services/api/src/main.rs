//! medembed-api: the HTTP API and web UI over the jobs in the store.

use std::future::IntoFuture;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use medembed_api::auth::{Access, Role};
use medembed_api::metrics::ApiMetrics;
use medembed_api::state::AppState;
use medembed_pipeline::config::{QueueBackend, Settings};
use medembed_pipeline::{queue, shutdown, store, telemetry};

/// The medembed API and web UI: submit and follow jobs, search a job's corpus by meaning with its
/// own fine-tuned model, compare texts, explore the embedding map, and embed text through an
/// OpenAI-compatible /v1/embeddings. Listens on api.listen_addr (default 127.0.0.1:8080; any
/// other address needs API keys, see `medembed-api key --help`); the OpenAPI description is at
/// /api/openapi.json, the UI at /, and /metrics on server.listen_addr (default 0.0.0.0:9464).
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
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

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Make a new API key: prints the key (give it to the client; it is not stored anywhere)
    /// and its entry for MEDEMBED__API__KEYS or api.keys_file (the entry holds only the key's
    /// SHA-256). To rotate: add the new key's entry, restart, hand out the new key, then remove
    /// the old entry and restart again.
    Key {
        /// The key's name, shown in logs and metrics (letters, digits, '-', '_', '.').
        #[arg(long)]
        name: String,
        /// read: search, similarity, map, clusters, neighbours, embeddings, jobs; submit: read
        /// and submitting jobs; admin: submit and raw error text in job status.
        #[arg(long, value_parser = ["read", "submit", "admin"])]
        role: String,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(Command::Key { name, role }) = &args.command {
        let role = Role::parse(role).expect("clap allows only the three roles");
        let (key, entry) = medembed_api::auth::new_key(name, role);
        // Checked as the api would read it.
        if Access::with_keys(&entry, None).is_err() {
            anyhow::bail!(
                "--name {name:?}: a key's name is 1 to 64 letters, digits, '-', '_' or '.' (it appears in logs and metrics)"
            );
        }
        println!("key:   {key}");
        println!("entry: {entry}");
        eprintln!(
            "Give the key to its user (it is shown only now). Add the entry to api.keys_file or MEDEMBED__API__KEYS."
        );
        return Ok(());
    }
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
    let access = Access::from_settings(&settings.api, settings.api.listen_addr)?;
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
    let metrics_addr = settings.server.listen_addr;
    let state = Arc::new(
        AppState::new(settings, store, queue.clone(), metrics, args.models_dir)?
            .with_access(access),
    );
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    let metrics_listener = tokio::net::TcpListener::bind(metrics_addr)
        .await
        .with_context(|| format!("binding {metrics_addr} (server.listen_addr, for /metrics)"))?;
    tracing::info!(
        addr = %listener.local_addr()?,
        metrics = %metrics_listener.local_addr()?,
        keys = state.access.key_count(),
        anonymous = state.access.anonymous().map_or("none", Role::name),
        "medembed-api listening"
    );
    let metrics_stop = stop.clone();
    let metrics_server = tokio::spawn(
        axum::serve(metrics_listener, medembed_api::metrics_router(&state))
            .with_graceful_shutdown(async move { metrics_stop.cancelled().await })
            .into_future(),
    );
    axum::serve(listener, medembed_api::router(state))
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await?;
    let _ = metrics_server.await;
    if let Some(queue) = queue {
        queue.close().await;
    }
    Ok(())
}
