//! medembed-api owns what users talk to: the JSON API ([`routes`]: jobs, search, similarity,
//! neighbours, map, clusters, OpenAI-compatible embeddings), the web UI ([`ui`], plain HTML and
//! JavaScript compiled into the binary, no build step), `/healthz` and `/readyz`; `/metrics` is
//! served on its own address ([`metrics_router`]), so the API's port never publishes it.
//!
//! Layers, as in text-embeddings-inference: the router (handlers check requests and shape
//! responses), the core ([`state::AppState`]: loaded jobs, their indexes), and the models, each
//! on its own thread fed by a channel ([`embedder`]). In front of every API route: [`auth`]
//! (API keys and roles, per-key rate) and [`limits`] (deadline, bounded encoder queues).

pub mod auth;
pub mod embedder;
pub mod error;
pub mod limits;
pub mod metrics;
pub mod routes;
pub mod sources;
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
    ),
    security(("api_key" = []))
)]
struct ApiDoc;

/// Declares the bearer-key scheme and, on every operation, the answers of the door in front of
/// it: 401 (no key or a wrong one), 403 (a role too low), 429 (the key's rate), 503 (the
/// deadline, or encoders full). Applied to the finished description (the routes' operations
/// exist only once the router has collected them).
struct KeyedAccess;

impl utoipa::Modify for KeyedAccess {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
        use utoipa::openapi::{Ref, ResponseBuilder};
        let components = openapi.components.get_or_insert_with(Default::default);
        let mut scheme = Http::new(HttpAuthScheme::Bearer);
        scheme.description = Some(
            "An API key: `Authorization: Bearer KEY`. Roles: read (search, embeddings, jobs), submit (read + POST /api/jobs), admin (submit + raw error text).".into(),
        );
        components.add_security_scheme("api_key", SecurityScheme::Http(scheme));
        let error = |description: &str| {
            ResponseBuilder::new()
                .description(description)
                .content_ref("application/json", Ref::from_schema_name("ErrorBody"))
                .build()
        };
        for item in openapi.paths.paths.values_mut() {
            for (operation, has_body) in [(&mut item.get, false), (&mut item.post, true)] {
                let Some(operation) = operation else {
                    continue;
                };
                let responses = &mut operation.responses.responses;
                let body_only = [("415", "The body is not application/json")];
                for (code, description) in [
                    ("400", "Malformed JSON or query string"),
                    ("401", "No API key, or one that is not valid"),
                    ("403", "The key's role may not do this"),
                    ("429", "The key's request rate is used up (see Retry-After)"),
                    (
                        "503",
                        "Busy or timed out (see Retry-After), or the store unavailable",
                    ),
                ]
                .into_iter()
                .chain(body_only.into_iter().filter(|_| has_body))
                {
                    responses
                        .entry(code.to_string())
                        .or_insert_with(|| error(description).into());
                }
            }
        }
    }
}

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
        .routes(routes!(routes::whoami))
}

/// The OpenAPI description served at `/api/openapi.json`.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut doc = api_routes().into_openapi();
    utoipa::Modify::modify(&KeyedAccess, &mut doc);
    doc
}

/// The whole service: API, OpenAPI description, web UI and the probes. Every API route is
/// behind [`auth::authorize`] and [`limits::deadline`].
pub fn router(state: Arc<AppState>) -> Router {
    let (api, mut doc) = api_routes().split_for_parts();
    utoipa::Modify::modify(&KeyedAccess, &mut doc);
    let doc = Arc::new(doc);
    let probes = medembed_pipeline::metrics::probe_routes(state.queue.clone(), state.store.clone());
    let metrics = state.metrics.clone();
    let limit = state.settings.api.max_body_bytes;
    let cors = cors_layer(&state.settings.api.cors_allowed_origins);
    api.layer(axum::middleware::from_fn_with_state(
        state.limits.clone(),
        limits::deadline,
    ))
    .route(
        "/api/openapi.json",
        axum::routing::get(move || {
            let doc = doc.clone();
            async move { axum::Json(doc.as_ref().clone()) }
        }),
    )
    .fallback(|| async { error::ApiError::not_found("no such endpoint: see /api/openapi.json") })
    .layer(axum::middleware::from_fn_with_state(
        state.clone(),
        auth::authorize,
    ))
    .with_state(state)
    .merge(ui::routes())
    .layer(DefaultBodyLimit::max(limit))
    .merge(probes)
    .layer(axum::middleware::from_fn_with_state(
        metrics,
        metrics::record,
    ))
    .layer(axum::middleware::map_response(security_headers))
    .layer(cors)
}

/// `/metrics` (with `/healthz` and `/readyz`), for the api's separate metrics address.
pub fn metrics_router(state: &AppState) -> Router {
    medembed_pipeline::metrics::health_routes(
        state.metrics.registry.clone(),
        state.queue.clone(),
        state.store.clone(),
    )
}

/// CORS headers for the configured origins only; none at all when the list is empty, so that
/// browsers keep other sites' pages from calling the API.
fn cors_layer(origins: &[String]) -> tower_http::cors::CorsLayer {
    use axum::http::{HeaderValue, Method, header};
    use tower_http::cors::{AllowOrigin, CorsLayer};
    let origins: Vec<HeaderValue> = origins
        .iter()
        .filter_map(|o| HeaderValue::from_str(o).ok())
        .collect();
    if origins.is_empty() {
        return CorsLayer::new(); // answers no CORS request
    }
    CorsLayer::new()
        .allow_origin(AllowOrigin::list(origins))
        .allow_methods([Method::GET, Method::POST])
        .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
}

/// Headers on every answer. The web UI loads only its own scripts and styles (it has no inline
/// ones), so the Content-Security-Policy allows nothing else (and images from `blob:`, which is
/// how the UI shows charts fetched with the API key); it may not be framed (clickjacking);
/// browsers must not guess content types, and no page address leaks in a Referer. There are no
/// CORS headers: other origins' pages cannot call the API from a browser.
async fn security_headers(mut response: axum::response::Response) -> axum::response::Response {
    use axum::http::{HeaderValue, header};
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' blob:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
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
