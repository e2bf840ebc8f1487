//! The JSON API's handlers, each documented by `#[utoipa::path]` so that the OpenAPI description
//! at `/api/openapi.json` is generated from the same code that answers.
//!
//! Every request is checked before any work: empty or overlong texts, `k` outside `1..=api.max_k`,
//! a malformed job id, an unknown job are 4xx with a JSON error naming the problem.

use std::sync::Arc;
use std::time::Instant;

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Extension, Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use base64::Engine;
use medembed_indexer::search::{SearchHit, SearchMode};
use medembed_indexer::tables::{MapPoint, TopicCluster};
use medembed_pipeline::jobs::{self, JobRequest};
use medembed_pipeline::messages::{ArticleSource, Database, JobId, JobSpec};
use medembed_pipeline::status::{StageState, StageStatus};
use medembed_pipeline::store::StoreError;
use medembed_pipeline::{keys, store};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::{Caller, Role};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::state::{AppState, ModelKey, parse_job};

/// The stages of a job in pipeline order, as they report in `jobs/{job}/status/`.
pub const STAGES: [&str; 5] = ["fetch", "clean", "pairs", "train", "index"];

/// Files of a job's model folder the api serves.
const MODEL_FILES: [&str; 4] = [
    "training_curves.png",
    "similarity_distribution.png",
    "README.md",
    "metrics.json",
];

type Shared = State<Arc<AppState>>;

/// A text field that must be non-empty and within `api.max_text_chars`.
fn check_text(field: &str, text: &str, max: usize) -> ApiResult<()> {
    if text.trim().is_empty() {
        return Err(ApiError::invalid(format!("{field} is empty")));
    }
    let chars = text.chars().count();
    if chars > max {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("{field} is {chars} characters; at most {max} (api.max_text_chars)"),
        ));
    }
    Ok(())
}

fn check_k(k: usize, max: usize) -> ApiResult<usize> {
    if k == 0 || k > max {
        return Err(ApiError::invalid(format!(
            "k is {k}; it must be 1..={max} (api.max_k)"
        )));
    }
    Ok(k)
}

// ---------------------------------------------------------------------------------------------
// Search, similarity, neighbours, map, clusters
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SearchRequest {
    /// What to look for, in plain words (a question, a title, an abstract).
    pub query: String,
    /// How many hits (default 10).
    #[serde(default)]
    pub k: Option<usize>,
    /// The job whose corpus and model to search (default: the newest finished job).
    #[serde(default)]
    pub job: Option<String>,
    /// `hybrid` (default: BM25 and the job's embeddings, fused), `dense` or `lexical`.
    #[serde(default)]
    pub mode: SearchMode,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SearchResponse {
    pub job: String,
    pub query: String,
    pub mode: SearchMode,
    pub took_ms: f64,
    pub hits: Vec<SearchHit>,
}

/// Search over a job's corpus: BM25 and the job's own model fused (hybrid, the default), or one
/// of them alone. A PMID, PMCID or DOI finds its article first; so do a quoted phrase and a
/// gene symbol or code, for the articles that contain them.
#[utoipa::path(
    post, path = "/api/search", tag = "search",
    request_body = SearchRequest,
    responses(
        (status = 200, description = "Hits, best first", body = SearchResponse),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 404, description = "Unknown job", body = ErrorBody),
        (status = 409, description = "The job has no index yet", body = ErrorBody),
        (status = 413, description = "Query or body too large", body = ErrorBody),
        (status = 422, description = "Empty query, k out of range, bad job id", body = ErrorBody),
    )
)]
pub async fn search(
    State(state): Shared,
    body: Result<Json<SearchRequest>, JsonRejection>,
) -> ApiResult<Json<SearchResponse>> {
    let Json(request) = body?;
    let limits = &state.settings.api;
    check_text("query", &request.query, limits.max_text_chars)?;
    let k = check_k(request.k.unwrap_or(10), limits.max_k)?;
    let job = state.job_or_newest(request.job.as_deref()).await?;
    let started = Instant::now();
    let hits = search_job(&state, job, &request.query, k, request.mode).await?;
    Ok(Json(SearchResponse {
        job: job.to_string(),
        query: request.query,
        mode: request.mode,
        took_ms: started.elapsed().as_secs_f64() * 1e3,
        hits,
    }))
}

/// The `k` best hits for `query` in `job`: what `POST /api/search` and `medembed search` run.
pub async fn search_job(
    state: &AppState,
    job: JobId,
    query: &str,
    k: usize,
    mode: SearchMode,
) -> ApiResult<Vec<SearchHit>> {
    let loaded = state.indexed(job).await?;
    // Lexical search needs no embedding: it does not wait for the model thread.
    let embedding = match mode {
        SearchMode::Lexical => None,
        SearchMode::Hybrid | SearchMode::Dense => loaded
            .embedder
            .embed(vec![query.to_string()], state.limits.admit_texts(1)?)
            .await?
            .vectors
            .into_iter()
            .next(),
    };
    let query = query.to_string();
    let hits = tokio::task::spawn_blocking(move || {
        let index = loaded.index.as_ref().expect("indexed() checked");
        index.search_text(&query, embedding.as_deref(), k, mode)
    })
    .await
    .map_err(|e| ApiError::internal(format!("search panicked: {e}")))??;
    Ok(hits)
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SimilarityRequest {
    pub a: String,
    pub b: String,
    /// Whose model compares them (default: the newest finished job).
    #[serde(default)]
    pub job: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SimilarityResponse {
    pub job: String,
    /// Cosine similarity of the two embeddings (-1..1).
    pub cosine: f32,
    /// `near-duplicate` (≥ 0.9), `highly similar` (≥ 0.75), `related` (≥ 0.5),
    /// `loosely related` (≥ 0.3) or `unrelated`.
    pub verdict: String,
}

/// The verdict band of a cosine.
pub fn verdict(cosine: f32) -> &'static str {
    match cosine {
        c if c >= 0.9 => "near-duplicate",
        c if c >= 0.75 => "highly similar",
        c if c >= 0.5 => "related",
        c if c >= 0.3 => "loosely related",
        _ => "unrelated",
    }
}

/// How similar two texts are, by a job's model.
#[utoipa::path(
    post, path = "/api/similarity", tag = "search",
    request_body = SimilarityRequest,
    responses(
        (status = 200, body = SimilarityResponse),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 404, description = "Unknown job", body = ErrorBody),
        (status = 409, description = "The job has no model yet", body = ErrorBody),
        (status = 413, description = "A text or the body too large", body = ErrorBody),
        (status = 422, description = "An empty text, a bad job id", body = ErrorBody),
    )
)]
pub async fn similarity(
    State(state): Shared,
    body: Result<Json<SimilarityRequest>, JsonRejection>,
) -> ApiResult<Json<SimilarityResponse>> {
    let Json(request) = body?;
    let max = state.settings.api.max_text_chars;
    check_text("a", &request.a, max)?;
    check_text("b", &request.b, max)?;
    let job = state.job_or_newest(request.job.as_deref()).await?;
    let loaded = state.load(ModelKey::Job(job)).await?;
    let permit = state.limits.admit_texts(2)?;
    let embedded = loaded
        .embedder
        .embed(vec![request.a, request.b], permit)
        .await?;
    let (a, b) = (
        medembed_indexer::vectors::unit(&embedded.vectors[0]),
        medembed_indexer::vectors::unit(&embedded.vectors[1]),
    );
    let cosine = a.iter().zip(&b).map(|(x, y)| x * y).sum::<f32>();
    Ok(Json(SimilarityResponse {
        job: job.to_string(),
        cosine,
        verdict: verdict(cosine).to_string(),
    }))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct JobQuery {
    /// Default: the newest finished job.
    pub job: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MapResponse {
    pub job: String,
    pub points: Vec<MapPoint>,
    pub clusters: Vec<TopicCluster>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ClustersResponse {
    pub job: String,
    /// Silhouette of the clustering when k was chosen by it.
    pub silhouette: Option<f64>,
    pub clusters: Vec<TopicCluster>,
}

async fn indexed_job(
    state: &AppState,
    query: Result<Query<JobQuery>, QueryRejection>,
) -> ApiResult<(JobId, Arc<crate::state::Loaded>)> {
    let Query(query) = query?;
    let job = state.job_or_newest(query.job.as_deref()).await?;
    Ok((job, state.indexed(job).await?))
}

/// The 2-D map of a job's corpus (PCA of the embeddings) with clusters.
#[utoipa::path(
    get, path = "/api/map", tag = "corpus",
    params(JobQuery),
    responses(
        (status = 200, body = MapResponse),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody),
    )
)]
pub async fn map(
    State(state): Shared,
    query: Result<Query<JobQuery>, QueryRejection>,
) -> ApiResult<Json<MapResponse>> {
    let (job, loaded) = indexed_job(&state, query).await?;
    let index = loaded.index.as_ref().expect("indexed() checked");
    Ok(Json(MapResponse {
        job: job.to_string(),
        points: index.map.clone(),
        clusters: index.clusters.clone(),
    }))
}

/// Topic clusters of a job's corpus, labelled by over-represented MeSH descriptors.
#[utoipa::path(
    get, path = "/api/clusters", tag = "corpus",
    params(JobQuery),
    responses(
        (status = 200, body = ClustersResponse),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody),
    )
)]
pub async fn clusters(
    State(state): Shared,
    query: Result<Query<JobQuery>, QueryRejection>,
) -> ApiResult<Json<ClustersResponse>> {
    let (job, loaded) = indexed_job(&state, query).await?;
    let index = loaded.index.as_ref().expect("indexed() checked");
    Ok(Json(ClustersResponse {
        job: job.to_string(),
        silhouette: index.manifest.silhouette,
        clusters: index.clusters.clone(),
    }))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct NeighboursQuery {
    /// The article's id (as in hits and map points).
    pub id: String,
    /// How many (default 10).
    pub k: Option<usize>,
    /// Default: the newest finished job.
    pub job: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct NeighboursResponse {
    pub job: String,
    pub id: String,
    pub hits: Vec<SearchHit>,
}

/// The articles nearest to one article of the corpus.
#[utoipa::path(
    get, path = "/api/neighbours", tag = "corpus",
    params(NeighboursQuery),
    responses(
        (status = 200, body = NeighboursResponse),
        (status = 404, description = "Unknown job or article", body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 422, body = ErrorBody),
    )
)]
pub async fn neighbours(
    State(state): Shared,
    query: Result<Query<NeighboursQuery>, QueryRejection>,
) -> ApiResult<Json<NeighboursResponse>> {
    let Query(query) = query?;
    let k = check_k(query.k.unwrap_or(10), state.settings.api.max_k)?;
    let job = state.job_or_newest(query.job.as_deref()).await?;
    let loaded = state.indexed(job).await?;
    let id = query.id.clone();
    let hits = tokio::task::spawn_blocking(move || {
        let index = loaded.index.as_ref().expect("indexed() checked");
        index.neighbours(&id, k)
    })
    .await
    .map_err(|e| ApiError::internal(format!("search panicked: {e}")))??
    .ok_or_else(|| ApiError::not_found(format!("job {job} has no article {:?}", query.id)))?;
    Ok(Json(NeighboursResponse {
        job: job.to_string(),
        id: query.id,
        hits,
    }))
}

// ---------------------------------------------------------------------------------------------
// OpenAI-compatible embeddings
// ---------------------------------------------------------------------------------------------

/// One text or several.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum EmbeddingInput {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct EmbeddingsRequest {
    pub input: EmbeddingInput,
    /// A job id (its fine-tuned model) or the name of a model folder under `--models-dir`.
    pub model: String,
    /// `float` (default) or `base64` (little-endian f32s, what the openai SDKs ask for).
    #[serde(default)]
    pub encoding_format: Option<String>,
    /// Accepted only when equal to the model's dimension (these models are not Matryoshka).
    #[serde(default)]
    pub dimensions: Option<usize>,
    /// Accepted and ignored.
    #[serde(default)]
    pub user: Option<String>,
}

/// A vector as floats, or base64 of little-endian f32s.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum EmbeddingValue {
    Float(Vec<f32>),
    Base64(String),
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EmbeddingData {
    /// Always `embedding`.
    pub object: String,
    pub index: usize,
    pub embedding: EmbeddingValue,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EmbeddingsUsage {
    pub prompt_tokens: usize,
    pub total_tokens: usize,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EmbeddingsResponse {
    /// Always `list`.
    pub object: String,
    pub data: Vec<EmbeddingData>,
    pub model: String,
    pub usage: EmbeddingsUsage,
}

/// Embeddings in the shape of OpenAI's API, so its SDKs, LangChain and LlamaIndex work as is
/// (point their base URL at `/v1`).
#[utoipa::path(
    post, path = "/v1/embeddings", tag = "embeddings",
    request_body = EmbeddingsRequest,
    responses(
        (status = 200, body = EmbeddingsResponse),
        (status = 400, body = ErrorBody),
        (status = 404, description = "Unknown model", body = ErrorBody),
        (status = 409, description = "The job has no model yet", body = ErrorBody),
        (status = 413, body = ErrorBody),
        (status = 422, body = ErrorBody),
    )
)]
pub async fn embeddings(
    State(state): Shared,
    body: Result<Json<EmbeddingsRequest>, JsonRejection>,
) -> ApiResult<Json<EmbeddingsResponse>> {
    let Json(request) = body?;
    let limits = &state.settings.api;
    let texts = match request.input {
        EmbeddingInput::One(t) => vec![t],
        EmbeddingInput::Many(ts) => ts,
    };
    if texts.is_empty() {
        return Err(ApiError::invalid("input is an empty list"));
    }
    if texts.len() > limits.max_inputs {
        return Err(ApiError::invalid(format!(
            "input has {} texts; at most {} (api.max_inputs)",
            texts.len(),
            limits.max_inputs
        )));
    }
    for (i, text) in texts.iter().enumerate() {
        check_text(&format!("input[{i}]"), text, limits.max_text_chars)?;
    }
    let base64 = match request.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(ApiError::invalid(format!(
                "encoding_format {other:?}: use \"float\" or \"base64\""
            )));
        }
    };
    let key = match request.model.parse::<JobId>() {
        Ok(job) => ModelKey::Job(job),
        Err(_) => ModelKey::Folder(request.model.clone()),
    };
    let loaded = state.load(key).await?;
    if let Some(d) = request.dimensions
        && d != loaded.embedder.dimension()
    {
        return Err(ApiError::invalid(format!(
            "dimensions {d}: model {} gives {} dimensions and cannot shorten them",
            request.model,
            loaded.embedder.dimension()
        )));
    }
    let permit = state.limits.admit_texts(texts.len())?;
    let embedded = loaded.embedder.embed(texts, permit).await?;
    let data = embedded
        .vectors
        .into_iter()
        .enumerate()
        .map(|(index, v)| EmbeddingData {
            object: "embedding".into(),
            index,
            embedding: if base64 {
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                EmbeddingValue::Base64(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                EmbeddingValue::Float(v)
            },
        })
        .collect();
    Ok(Json(EmbeddingsResponse {
        object: "list".into(),
        data,
        model: request.model,
        usage: EmbeddingsUsage {
            prompt_tokens: embedded.tokens,
            total_tokens: embedded.tokens,
        },
    }))
}

// ---------------------------------------------------------------------------------------------
// Who am I
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Serialize, ToSchema)]
pub struct WhoAmI {
    /// The key's name, or `anonymous`.
    pub name: String,
    pub role: Role,
    /// Whether this role may submit jobs.
    pub can_submit: bool,
}

/// The caller's key name and role (what the web UI shows after a key is entered).
#[utoipa::path(
    get, path = "/api/whoami", tag = "jobs",
    responses((status = 200, body = WhoAmI))
)]
pub async fn whoami(Extension(caller): Extension<Caller>) -> Json<WhoAmI> {
    Json(WhoAmI {
        can_submit: caller.role >= Role::Submit,
        name: caller.name,
        role: caller.role,
    })
}

// ---------------------------------------------------------------------------------------------
// Jobs
// ---------------------------------------------------------------------------------------------

/// A new collection job: the same fields as `medembed submit`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubmitRequest {
    /// The literature query, in PubMed search syntax.
    pub query: String,
    /// `pmc` (default: open-access full texts) or `pubmed` (abstracts with MeSH).
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub db: Option<Database>,
    /// First publication date: YYYY, YYYY/MM or YYYY/MM/DD.
    #[serde(default)]
    pub from: Option<String>,
    /// Last publication date.
    #[serde(default)]
    pub to: Option<String>,
    /// Stop after this many articles. Default: 1000 from E-utilities, every article of a
    /// `files:` source.
    #[serde(default)]
    pub max_articles: Option<u64>,
    /// `eutils` (default) or `files:PATH` (a directory or s3:// prefix of bulk XML).
    #[serde(default)]
    pub source: Option<String>,
    #[serde(default)]
    pub open_access_only: Option<bool>,
    #[serde(default)]
    pub cited_by: Option<bool>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SubmitResponse {
    pub id: String,
    /// Where to follow it.
    pub status_url: String,
}

/// Queue a new collection job (the `submit` role). API jobs are limited by the operator:
/// E-utilities, or a `files:` source under `api.allowed_sources`; at most
/// `api.max_articles_per_job` articles; at most `api.max_active_jobs_per_key` pending or running
/// per key and `api.max_active_jobs` in all.
#[utoipa::path(
    post, path = "/api/jobs", tag = "jobs",
    request_body = SubmitRequest,
    responses(
        (status = 201, body = SubmitResponse),
        (status = 400, body = ErrorBody),
        (status = 403, description = "The key may not submit, or the source or an option is not allowed for API jobs", body = ErrorBody),
        (status = 422, description = "A field is invalid (named in the message)", body = ErrorBody),
        (status = 429, description = "Too many active jobs for this key or in all", body = ErrorBody),
        (status = 503, description = "No broker to queue on", body = ErrorBody),
    )
)]
pub async fn submit(
    State(state): Shared,
    Extension(caller): Extension<Caller>,
    body: Result<Json<SubmitRequest>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<SubmitResponse>)> {
    let Json(r) = body?;
    let queue = state.queue.clone().ok_or_else(|| {
        ApiError::unavailable(
            "this api has no broker to queue jobs on (queue.backend is \"memory\"); use `medembed run` or a distributed config",
        )
    })?;
    let request = JobRequest {
        query: r.query,
        db: r.db.unwrap_or_default(),
        from: r.from,
        to: r.to,
        max_articles: r.max_articles,
        source: r.source.unwrap_or_else(|| "eutils".into()),
        open_access_only: r.open_access_only.unwrap_or(true),
        cited_by: r.cited_by.unwrap_or(false),
    };
    let asked_max_articles = request.max_articles;
    let mut spec = request
        .into_spec()
        .map_err(|e| ApiError::invalid(e.to_string()))?;
    within_api_limits(&state, &mut spec, asked_max_articles)?;
    spec.submitted_by = Some(caller.name.clone());
    let _one_at_a_time = state.submit_lock.lock().await;
    check_active_jobs(&state, &caller).await?;
    jobs::submit(state.store.as_ref(), queue.as_ref(), &spec)
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "queueing a job failed");
            ApiError::unavailable(
                "the job could not be queued; try again later (the api's log has the details)",
            )
        })?;
    tracing::info!(job = %spec.job_id, query = %spec.query, key = %caller.name, "job submitted");
    Ok((
        StatusCode::CREATED,
        Json(SubmitResponse {
            id: spec.job_id.to_string(),
            status_url: format!("/api/jobs/{}", spec.job_id),
        }),
    ))
}

fn forbidden(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
}

/// Refuses what the operator does not allow API jobs to do: a source off the allowlist, the
/// options left off, more than `api.max_articles_per_job` asked for. A job that did not ask
/// (`asked_max_articles` None) gets the usual default, capped there.
fn within_api_limits(
    state: &AppState,
    spec: &mut JobSpec,
    asked_max_articles: Option<u64>,
) -> ApiResult<()> {
    let api = &state.settings.api;
    if let ArticleSource::Files { path } = &spec.source {
        state.sources.check(path).map_err(forbidden)?;
    }
    if !spec.open_access_only && !api.allow_not_open_access {
        return Err(forbidden(
            "open_access_only = false is not allowed for API jobs here (api.allow_not_open_access)",
        ));
    }
    if spec.cited_by && !api.allow_cited_by {
        return Err(forbidden(
            "cited_by = true is not allowed for API jobs here (api.allow_cited_by)",
        ));
    }
    let cap = api.max_articles_per_job;
    match asked_max_articles {
        Some(n) if n > cap => Err(ApiError::invalid(format!(
            "max_articles is {n}; API jobs collect at most {cap} (api.max_articles_per_job)"
        ))),
        Some(_) => Ok(()),
        None => {
            spec.max_articles = spec.max_articles.min(cap);
            Ok(())
        }
    }
}

/// 429 when the caller's key, or everyone together, has as many pending or running jobs as
/// allowed.
async fn check_active_jobs(state: &AppState, caller: &Caller) -> ApiResult<()> {
    let api = &state.settings.api;
    let (mut mine, mut all) = (0, 0);
    for spec in jobs::list(state.store.as_ref()).await?.iter().flatten() {
        let stages = stage_statuses(state, spec.job_id).await?;
        if matches!(job_state(&stages), "pending" | "running") {
            all += 1;
            if spec.submitted_by.as_deref() == Some(caller.name.as_str()) {
                mine += 1;
            }
        }
    }
    let wait = std::time::Duration::from_secs(60);
    if mine >= api.max_active_jobs_per_key {
        return Err(ApiError::rate_limited(
            format!(
                "key {:?} has {mine} jobs pending or running; at most {} (api.max_active_jobs_per_key): wait for one to finish",
                caller.name, api.max_active_jobs_per_key
            ),
            wait,
        ));
    }
    if all >= api.max_active_jobs {
        return Err(ApiError::rate_limited(
            format!(
                "{all} jobs are pending or running; at most {} at once (api.max_active_jobs): wait for one to finish",
                api.max_active_jobs
            ),
            wait,
        ));
    }
    Ok(())
}

#[derive(Debug, Serialize, ToSchema)]
pub struct StageSummary {
    pub stage: String,
    /// pending, running, done or failed.
    pub state: String,
    pub done: u64,
    pub total: u64,
    pub unit: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct JobSummary {
    pub id: String,
    pub query: String,
    pub created_at: String,
    /// pending, running, done or failed (of the whole job).
    pub state: String,
    pub stages: Vec<StageSummary>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct JobList {
    /// Newest first.
    pub jobs: Vec<JobSummary>,
}

fn state_name(s: StageState) -> &'static str {
    match s {
        StageState::Pending => "pending",
        StageState::Running => "running",
        StageState::Done => "done",
        StageState::Failed => "failed",
    }
}

/// The state of a whole job from its stages.
fn job_state(stages: &[StageStatus]) -> &'static str {
    if stages.iter().any(|s| s.state == StageState::Failed) {
        "failed"
    } else if stages.last().is_some_and(|s| s.state == StageState::Done) {
        "done"
    } else if stages.iter().any(|s| s.state != StageState::Pending) {
        "running"
    } else {
        "pending"
    }
}

async fn stage_statuses(state: &AppState, job: JobId) -> ApiResult<Vec<StageStatus>> {
    let mut out = Vec::with_capacity(STAGES.len());
    for stage in STAGES {
        out.push(StageStatus::load(state.store.as_ref(), job, stage).await?);
    }
    Ok(out)
}

fn summary(spec: &JobSpec, stages: &[StageStatus]) -> JobSummary {
    JobSummary {
        id: spec.job_id.to_string(),
        query: spec.query.clone(),
        created_at: spec.created_at.clone(),
        state: job_state(stages).to_string(),
        stages: stages
            .iter()
            .map(|s| StageSummary {
                stage: s.stage.clone(),
                state: state_name(s.state).to_string(),
                done: s.done,
                total: s.total,
                unit: s.unit.clone(),
            })
            .collect(),
    }
}

/// Every job, newest first, with each stage's progress.
#[utoipa::path(
    get, path = "/api/jobs", tag = "jobs",
    responses((status = 200, body = JobList), (status = 503, body = ErrorBody))
)]
pub async fn list_jobs(State(state): Shared) -> ApiResult<Json<JobList>> {
    let mut jobs = Vec::new();
    for spec in jobs::list(state.store.as_ref())
        .await?
        .iter()
        .rev()
        .flatten()
    {
        let stages = stage_statuses(&state, spec.job_id).await?;
        jobs.push(summary(spec, &stages));
    }
    Ok(Json(JobList { jobs }))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct JobDetail {
    #[serde(flatten)]
    pub summary: JobSummary,
    /// The job as submitted.
    #[schema(value_type = Object)]
    pub spec: serde_json::Value,
    /// Each stage's full status: timings, counts, warnings, last error (its text for admin
    /// keys only).
    #[schema(value_type = Vec<Object>)]
    pub stage_status: Vec<serde_json::Value>,
    /// Pair statistics (`pairs/stats.json`), once the pairs are built.
    #[schema(value_type = Option<Object>)]
    pub pairs: Option<serde_json::Value>,
    /// Training metrics, baseline vs fine-tuned (`model/metrics.json`), once trained.
    #[schema(value_type = Option<Object>)]
    pub training: Option<serde_json::Value>,
    /// The index manifest, once built.
    #[schema(value_type = Option<Object>)]
    pub index: Option<serde_json::Value>,
    /// Links to the training charts, once trained.
    pub files: Vec<String>,
}

/// What non-admin callers see in place of a stage's last error.
pub const HIDDEN_ERROR: &str =
    "the stage reported an error; its text is shown to admin keys and in the workers' logs";

async fn optional_json(state: &AppState, key: &str) -> ApiResult<Option<serde_json::Value>> {
    match state.store.get(key).await {
        Ok(bytes) => Ok(serde_json::from_slice(&bytes).ok()),
        Err(StoreError::NotFound { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// One job: its spec, every stage's status, pair statistics, training metrics, index manifest.
#[utoipa::path(
    get, path = "/api/jobs/{id}", tag = "jobs",
    params(("id" = String, Path, description = "The job id")),
    responses(
        (status = 200, body = JobDetail),
        (status = 404, body = ErrorBody), (status = 422, body = ErrorBody),
    )
)]
pub async fn job_detail(
    State(state): Shared,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<Json<JobDetail>> {
    let job = parse_job(&id)?;
    let spec = jobs::load_spec(state.store.as_ref(), job)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("job {job} does not exist")))?;
    let stages = stage_statuses(&state, job).await?;
    let training =
        optional_json(&state, &format!("{}metrics.json", keys::model_prefix(job))).await?;
    let files = if training.is_some() {
        MODEL_FILES[..2]
            .iter()
            .map(|f| format!("/api/jobs/{job}/files/{f}"))
            .collect()
    } else {
        Vec::new()
    };
    Ok(Json(JobDetail {
        summary: summary(&spec, &stages),
        spec: serde_json::to_value(&spec).expect("a spec is plain data"),
        stage_status: stages
            .iter()
            .map(|s| {
                let mut s = s.clone();
                if caller.role < Role::Admin && s.last_error.is_some() {
                    // Raw store, broker and NCBI text is for operators.
                    s.last_error = Some(HIDDEN_ERROR.into());
                }
                serde_json::to_value(&s).expect("a status is plain data")
            })
            .collect(),
        pairs: optional_json(&state, &keys::pairs_file(job, "stats.json")).await?,
        training,
        index: optional_json(
            &state,
            &keys::index_file(job, medembed_indexer::stage::MANIFEST),
        )
        .await?,
        files,
    }))
}

/// A file of a job's model folder: the training curves and similarity charts, the model card,
/// the metrics.
#[utoipa::path(
    get, path = "/api/jobs/{id}/files/{name}", tag = "jobs",
    params(
        ("id" = String, Path, description = "The job id"),
        ("name" = String, Path, description = "training_curves.png, similarity_distribution.png, README.md or metrics.json"),
    ),
    responses(
        (status = 200, description = "The file", content_type = "application/octet-stream"),
        (status = 404, body = ErrorBody), (status = 422, body = ErrorBody),
    )
)]
pub async fn job_file(
    State(state): Shared,
    Path((id, name)): Path<(String, String)>,
) -> ApiResult<impl IntoResponse> {
    let job = parse_job(&id)?;
    if !MODEL_FILES.contains(&name.as_str()) {
        return Err(ApiError::not_found(format!(
            "no file {name:?}: one of {}",
            MODEL_FILES.join(", ")
        )));
    }
    let key = format!("{}{name}", keys::model_prefix(job));
    let bytes = store::ObjectStore::get(state.store.as_ref(), &key)
        .await
        .map_err(|e| match e {
            StoreError::NotFound { .. } => {
                ApiError::not_found(format!("job {job} has no {name} (not trained yet?)"))
            }
            other => other.into(),
        })?;
    let content_type = match name.rsplit('.').next() {
        Some("png") => "image/png",
        Some("md") => "text/markdown; charset=utf-8",
        _ => "application/json",
    };
    Ok(([(header::CONTENT_TYPE, content_type)], bytes))
}
