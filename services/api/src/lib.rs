//! medembed-api owns what users talk to: the JSON API ([`routes`]: jobs, search, similarity,
//! neighbours, map, clusters, OpenAI-compatible embeddings), the web UI ([`ui`], plain HTML and
//! JavaScript compiled into the binary, no build step), `/metrics`, `/healthz` and `/readyz`.
//!
//! Layers, as in text-embeddings-inference: the router (handlers check requests and shape
//! responses), the core ([`state::AppState`]: loaded jobs, their indexes), and the models, each
//! on its own thread fed by a channel ([`embedder`]).

pub mod embedder;
pub mod error;
pub mod metrics;
pub mod routes;
pub mod state;
pub mod ui;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::state::AppState;

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "medembed API",
        description = "Semantic search over biomedical literature collected and embedded by medembed jobs, with each job's own fine-tuned model.",
    ),
    tags(
        (name = "search", description = "Search and compare texts"),
        (name = "corpus", description = "A job's corpus: map, clusters, neighbours"),
        (name = "jobs", description = "Collection jobs"),
        (name = "embeddings", description = "OpenAI-compatible embeddings"),
    )
)]
struct ApiDoc;

/// The API routes with their OpenAPI description.
fn api_routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(routes::search))
        .routes(routes!(routes::similarity))
        .routes(routes!(routes::neighbours))
        .routes(routes!(routes::map))
        .routes(routes!(routes::clusters))
        .routes(routes!(routes::embeddings))
        .routes(routes!(routes::submit, routes::list_jobs))
        .routes(routes!(routes::job_detail))
        .routes(routes!(routes::job_file))
}

/// The OpenAPI description served at `/api/openapi.json`.
pub fn openapi() -> utoipa::openapi::OpenApi {
    api_routes().into_openapi()
}

/// The whole service: API, OpenAPI description, web UI, metrics and health.
pub fn router(state: Arc<AppState>) -> Router {
    let (api, doc) = api_routes().split_for_parts();
    let doc = Arc::new(doc);
    let health = medembed_pipeline::metrics::health_routes(
        state.metrics.registry.clone(),
        state.queue.clone(),
        state.store.clone(),
    );
    let metrics = state.metrics.clone();
    let limit = state.settings.api.max_body_bytes;
    api.route(
        "/api/openapi.json",
        axum::routing::get(move || {
            let doc = doc.clone();
            async move { axum::Json(doc.as_ref().clone()) }
        }),
    )
    .fallback(|| async { error::ApiError::not_found("no such endpoint: see /api/openapi.json") })
    .with_state(state)
    .merge(ui::routes())
    .layer(DefaultBodyLimit::max(limit))
    .merge(health)
    .layer(axum::middleware::from_fn_with_state(
        metrics,
        metrics::record,
    ))
    .layer(axum::middleware::map_response(security_headers))
}

/// Headers on every answer. The web UI loads only its own scripts and styles (it has no inline
/// ones), so the Content-Security-Policy allows nothing else; it may not be framed (clickjacking);
/// browsers must not guess content types, and no page address leaks in a Referer. There are no
/// CORS headers: other origins' pages cannot call the API from a browser.
async fn security_headers(mut response: axum::response::Response) -> axum::response::Response {
    use axum::http::{HeaderValue, header};
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
        ),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}
