//! The index stage over the real fixture corpus on the real S3 server (Garage), then the api over
//! real HTTP on that index: searching a fixture article's title finds that article first, the
//! stage's barrier and outputs, and every bad request answered with a 4xx JSON error.

use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine;
use medembed_e2e::api::{ServedApi, serve_api};
use medembed_e2e::fixture_job::{IndexStages, cleaned_job, ctx, decoded, minilm_dir};
use medembed_indexer::build::{IndexManifest, IndexPlan};
use medembed_indexer::search::JobIndex;
use medembed_indexer::stage::{MANIFEST, PLAN};
use medembed_indexer::vectors::IndexKind;
use medembed_model::SentenceEncoder;
use medembed_pipeline::config::{QueueBackend, Settings, StoreBackend};
use medembed_pipeline::messages::{BuildIndexCheck, EmbedTask, IndexTask, JobId};
use medembed_pipeline::queue::{MemoryQueue, Queue};
use medembed_pipeline::runner::Stage;
use medembed_pipeline::status::{StageState, StageStatus};
use medembed_pipeline::store::{self, ObjectStore};
use medembed_pipeline::{keys, testing};
use serde_json::{Value, json};

fn settings(prefix: &str, root: &std::path::Path) -> Settings {
    testing::dev_settings(
        prefix,
        QueueBackend::Memory,
        StoreBackend::S3,
        root,
        &[
            ("MEDEMBED__FETCH__ARTICLES_PER_PART", "8"),
            // This test makes many requests at once; the rate limit is tested in api_security.
            ("MEDEMBED__API__REQUEST_BURST", "10000"),
        ],
    )
}

struct Api {
    base: String,
    client: reqwest::Client,
    queue: Arc<MemoryQueue>,
    _served: ServedApi,
}

impl Api {
    async fn start(settings: &Settings, store: Arc<dyn ObjectStore>) -> Self {
        let served = serve_api(
            settings,
            store,
            minilm_dir().parent().map(|p| p.to_path_buf()),
        )
        .await;
        Self {
            base: served.base.clone(),
            client: reqwest::Client::new(),
            queue: served.queue.clone(),
            _served: served,
        }
    }

    async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let r = self
            .client
            .post(format!("{}{path}", self.base))
            .json(body)
            .send()
            .await
            .expect("request");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        let r = self
            .client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .expect("request");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn post_raw(&self, path: &str, content_type: &str, body: Vec<u8>) -> (u16, Value) {
        let r = self
            .client
            .post(format!("{}{path}", self.base))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .expect("request");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }
}

/// Asserts a 4xx with a JSON error whose message contains `needle`.
fn assert_error(what: &str, (status, body): (u16, Value), expected: u16, needle: &str) {
    assert_eq!(status, expected, "{what}: {body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(needle),
        "{what}: message {message:?} should mention {needle:?}"
    );
    assert!(body["error"]["code"].is_string(), "{what}: {body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_stage_builds_a_searchable_index_and_the_api_serves_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let settings = settings(&testing::unique("index"), dir.path());
    let store = store::open(&settings.store).await.expect("store");
    let job = cleaned_job(&settings, &store, dir.path()).await;
    let stages = IndexStages::new(&settings);

    // The index task plans every part and fans out one embed task per part.
    let planned = stages
        .index
        .process(IndexTask { job_id: job }, &ctx(&store))
        .await
        .expect("index task");
    let embeds = decoded::<EmbedTask>(&planned);
    let plan: IndexPlan =
        serde_json::from_slice(&store.get(&keys::index_file(job, PLAN)).await.expect("plan"))
            .expect("plan json");
    assert_eq!(plan.dim, 384);
    assert!(embeds.len() >= 3, "several parts: {}", embeds.len());
    assert_eq!(
        embeds.iter().map(|t| t.part).collect::<Vec<_>>(),
        plan.parts
    );

    // Barrier: a check before every part is embedded builds nothing.
    let check = BuildIndexCheck { job_id: job };
    let (last, first) = embeds.split_last().expect("parts");
    for task in first {
        let out = stages
            .embed
            .process(task.clone(), &ctx(&store))
            .await
            .expect("embed");
        assert_eq!(decoded::<BuildIndexCheck>(&out), vec![check.clone()]);
        stages
            .build
            .process(check.clone(), &ctx(&store))
            .await
            .expect("early check");
    }
    assert!(
        !store
            .exists(&keys::index_file(job, MANIFEST))
            .await
            .expect("head"),
        "no index before the last part is embedded"
    );
    let status = StageStatus::load(store.as_ref(), job, "index")
        .await
        .expect("status");
    assert_eq!(status.state, StageState::Running);
    assert_eq!(status.done, status.total - 1);
    stages
        .embed
        .process(last.clone(), &ctx(&store))
        .await
        .expect("embed last");
    // A redelivered embed task of a finished part does not embed again; it checks again.
    let again = stages
        .embed
        .process(last.clone(), &ctx(&store))
        .await
        .expect("again");
    assert_eq!(decoded::<BuildIndexCheck>(&again), vec![check.clone()]);
    stages
        .build
        .process(check.clone(), &ctx(&store))
        .await
        .expect("build");

    let manifest: IndexManifest = serde_json::from_slice(
        &store
            .get(&keys::index_file(job, MANIFEST))
            .await
            .expect("manifest"),
    )
    .expect("manifest json");
    assert_eq!(manifest.kind, IndexKind::Exact);
    assert_eq!(manifest.dim, 384);
    assert!(manifest.documents >= 30, "{manifest:?}");
    assert!(manifest.clusters >= 2, "{manifest:?}");
    let status = StageStatus::load(store.as_ref(), job, "index")
        .await
        .expect("status");
    assert_eq!(status.state, StageState::Done, "the job is done");
    assert_eq!(status.counts["documents"], manifest.documents as u64);

    // The index: every document on the map, clusters that add up, and each title finds its
    // article first.
    let index = JobIndex::load(store.as_ref(), job, 64)
        .await
        .expect("index loads");
    assert_eq!(index.map.len(), manifest.documents);
    assert_eq!(
        index.clusters.iter().map(|c| c.size).sum::<u64>(),
        manifest.documents as u64
    );
    assert!(
        index.clusters.iter().any(|c| !c.labels.is_empty()),
        "clusters are labelled: {:?}",
        index.clusters
    );
    let encoder = SentenceEncoder::load(&minilm_dir(), tch::Device::Cpu).expect("minilm");
    let mut title_counts: HashMap<&str, usize> = HashMap::new();
    for d in &index.documents {
        *title_counts.entry(d.title.as_str()).or_default() += 1;
    }
    let probes: Vec<&medembed_indexer::tables::IndexedDocument> = index
        .documents
        .iter()
        .filter(|d| d.title.chars().count() >= 30 && title_counts[d.title.as_str()] == 1)
        .collect();
    assert!(probes.len() >= 10, "{} probe titles", probes.len());
    let titles: Vec<&str> = probes.iter().map(|d| d.title.as_str()).collect();
    let queries = encoder.encode(&titles).expect("encode titles");
    let found = index.search(&queries, 5).expect("search");
    for (d, hits) in probes.iter().zip(&found) {
        assert_eq!(
            hits[0].id, d.id,
            "title {:?} found {:?} first",
            d.title, hits[0].title
        );
    }

    // The same through the api, over HTTP.
    let api = Api::start(&settings, store.clone()).await;
    for d in probes.iter().take(10) {
        let (status, body) = api
            .post("/api/search", &json!({"query": d.title, "k": 3}))
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["job"], job.to_string(), "the newest finished job");
        assert_eq!(body["hits"][0]["id"], d.id.as_str());
        assert!(
            body["hits"][0]["url"]
                .as_str()
                .is_some_and(|u| u.starts_with("https://"))
        );
        assert_eq!(body["hits"].as_array().map(Vec::len), Some(3));
    }
    check_api(&api, job, &encoder, &probes[0].id).await;
    check_modes_and_exact_terms(&api, &index).await;
    check_bad_requests(&api, job).await;
    check_openapi_is_true(&api, job).await;
}

/// Hybrid search by default, each mode on request, and exact terms first: a PMID, a gene symbol
/// or code that one article alone contains, a quoted phrase.
async fn check_modes_and_exact_terms(api: &Api, index: &JobIndex) {
    let lexical = index.lexical.as_ref().expect("the index has a BM25 index");
    let search = |query: String, mode: Option<&'static str>| async move {
        let mut body = json!({"query": query, "k": 10});
        if let Some(mode) = mode {
            body["mode"] = json!(mode);
        }
        let (status, body) = api.post("/api/search", &body).await;
        assert_eq!(status, 200, "{body}");
        body
    };
    let found_by = |hit: &Value| -> Vec<String> {
        hit["found_by"]
            .as_array()
            .expect("found_by")
            .iter()
            .map(|v| v.as_str().expect("a ranking").to_string())
            .collect()
    };

    // Modes: hybrid by default; lexical and dense hits come from that ranking alone.
    let title = index.documents[0].title.clone();
    let hybrid = search(title.clone(), None).await;
    assert_eq!(hybrid["mode"], "hybrid");
    assert!(
        hybrid["hits"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| found_by(h).len() == 2),
        "some hit found by both rankings: {hybrid}"
    );
    for mode in ["lexical", "dense"] {
        let body = search(title.clone(), Some(mode)).await;
        assert_eq!(body["mode"], mode);
        for hit in body["hits"].as_array().expect("hits") {
            assert_eq!(found_by(hit), [mode], "{body}");
        }
    }
    let dense = search(title.clone(), Some("dense")).await;
    assert!(dense["hits"][0]["cosine"].is_number() && dense["hits"][0]["bm25"].is_null());

    // A PMID finds its article first, in hybrid and in lexical search.
    let with_pmid = index
        .documents
        .iter()
        .find(|d| d.pmid.is_some())
        .expect("a document with a PMID");
    for mode in [None, Some("lexical")] {
        let body = search(with_pmid.pmid.clone().unwrap(), mode).await;
        assert_eq!(body["hits"][0]["id"], with_pmid.id.as_str(), "{body}");
        assert_eq!(found_by(&body["hits"][0]), ["exact"]);
    }
    let body = search(format!("PMID: {}", with_pmid.pmid.as_ref().unwrap()), None).await;
    assert_eq!(body["hits"][0]["id"], with_pmid.id.as_str(), "{body}");

    // A gene symbol or code that BM25 finds in one article only: that article first.
    let mut symbols = 0;
    for d in &index.documents {
        for word in d
            .title
            .split(|c: char| c.is_whitespace() || ",;:()[]".contains(c))
        {
            let word = word.trim_matches(|c: char| !c.is_alphanumeric());
            if word.len() < 3 || !medembed_indexer::search::has_exact_terms(word) {
                continue;
            }
            let containing = lexical.search(word, 10).expect("bm25");
            if containing.len() != 1 || index.documents[containing[0].0].id != d.id {
                continue;
            }
            let body = search(word.to_string(), None).await;
            assert_eq!(
                body["hits"][0]["id"],
                d.id.as_str(),
                "{word:?} is only in {:?}: {body}",
                d.title
            );
            symbols += 1;
        }
    }
    assert!(
        symbols >= 1,
        "no title holds a symbol found in one article only"
    );

    // A quoted phrase: the first hit holds it.
    let words: Vec<&str> = title.split_whitespace().take(3).collect();
    let phrase = format!("\"{}\"", words.join(" "));
    let holding: Vec<String> = lexical
        .search(&phrase, 100)
        .expect("phrase")
        .iter()
        .map(|(row, _)| index.documents[*row].id.clone())
        .collect();
    assert!(!holding.is_empty(), "{phrase} is in its own title");
    let body = search(phrase.clone(), None).await;
    let first = body["hits"][0]["id"].as_str().expect("a hit").to_string();
    assert!(holding.contains(&first), "{phrase}: {body}");

    // An unknown mode is a clear 4xx.
    let (status, body) = api
        .post("/api/search", &json!({"query": "tau", "mode": "fuzzy"}))
        .await;
    assert!(status == 400 || status == 422, "{status} {body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("fuzzy"), "{message}");
}

async fn check_api(api: &Api, job: JobId, encoder: &SentenceEncoder, some_id: &str) {
    // Similarity: a text with itself is a near-duplicate; unrelated texts score lower.
    let text = "PD-1 blockade improves survival in advanced melanoma.";
    let (status, same) = api
        .post("/api/similarity", &json!({"a": text, "b": text}))
        .await;
    assert_eq!(status, 200, "{same}");
    assert!(same["cosine"].as_f64().expect("cosine") > 0.999);
    assert_eq!(same["verdict"], "near-duplicate");
    let (_, other) = api
        .post(
            "/api/similarity",
            &json!({"a": text, "b": "Rainfall patterns over the Sahel in the twentieth century.", "job": job.to_string()}),
        )
        .await;
    assert!(other["cosine"].as_f64().expect("cosine") < 0.3, "{other}");

    // Map, clusters, neighbours.
    let (status, map) = api.get(&format!("/api/map?job={job}")).await;
    assert_eq!(status, 200);
    let points = map["points"].as_array().expect("points");
    assert!(points.len() >= 30);
    assert!(
        points
            .iter()
            .all(|p| p["x"].as_f64().is_some_and(|x| x.abs() <= 1.0))
    );
    let (status, clusters) = api.get("/api/clusters").await;
    assert_eq!(status, 200);
    assert_eq!(
        clusters["clusters"].as_array().map(Vec::len),
        map["clusters"].as_array().map(Vec::len)
    );
    let (status, near) = api
        .get(&format!("/api/neighbours?id={some_id}&k=4&job={job}"))
        .await;
    assert_eq!(status, 200, "{near}");
    let hits = near["hits"].as_array().expect("hits");
    assert_eq!(hits.len(), 4);
    assert!(hits.iter().all(|h| h["id"] != some_id), "itself left out");

    // OpenAI-compatible embeddings, by job id and by model folder name: the encoder's vectors.
    let want = encoder.encode(&["alpha", "beta gamma"]).expect("encode");
    for model in [job.to_string(), "all-MiniLM-L6-v2".to_string()] {
        let (status, body) = api
            .post(
                "/v1/embeddings",
                &json!({"input": ["alpha", "beta gamma"], "model": model}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["object"], "list");
        assert!(body["usage"]["prompt_tokens"].as_u64().expect("usage") >= 4);
        for (i, w) in want.iter().enumerate() {
            let got: Vec<f32> = body["data"][i]["embedding"]
                .as_array()
                .expect("floats")
                .iter()
                .map(|v| v.as_f64().expect("f") as f32)
                .collect();
            let cos: f32 = got.iter().zip(w).map(|(a, b)| a * b).sum();
            assert!(cos > 0.9999, "{model} input {i}: cosine {cos}");
        }
    }
    let (status, body) = api
        .post(
            "/v1/embeddings",
            &json!({"input": "alpha", "model": job.to_string(), "encoding_format": "base64"}),
        )
        .await;
    assert_eq!(status, 200);
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(body["data"][0]["embedding"].as_str().expect("base64"))
        .expect("decodes");
    assert_eq!(bytes.len(), 384 * 4);
    let decoded: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let cos: f32 = decoded.iter().zip(&want[0]).map(|(a, b)| a * b).sum();
    assert!(cos > 0.9999, "base64 vector: cosine {cos}");

    // Jobs: listed as done, with detail; a new job is written and queued.
    let (status, list) = api.get("/api/jobs").await;
    assert_eq!(status, 200);
    let listed = list["jobs"]
        .as_array()
        .expect("jobs")
        .iter()
        .find(|j| j["id"] == job.to_string())
        .expect("our job is listed");
    assert_eq!(listed["state"], "done");
    let (status, detail) = api.get(&format!("/api/jobs/{job}")).await;
    assert_eq!(status, 200);
    assert_eq!(
        detail["index"]["documents"],
        map["points"].as_array().map(Vec::len).unwrap_or(0)
    );
    assert_eq!(detail["stage_status"].as_array().map(Vec::len), Some(5));
    let (status, created) = api
        .post(
            "/api/jobs",
            &json!({"query": "malaria vaccines", "from": "2020", "max_articles": 50}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let new_job: JobId = created["id"].as_str().expect("id").parse().expect("ulid");
    assert_eq!(
        api.queue.depth("fetch").await.expect("depth"),
        1,
        "the fetch task is queued"
    );
    let (status, new_detail) = api.get(&format!("/api/jobs/{new_job}")).await;
    assert_eq!(status, 200);
    assert_eq!(new_detail["state"], "pending");
    assert_eq!(new_detail["spec"]["query"], "malaria vaccines");

    // Health and metrics: /metrics on its own port, not the API's.
    let (status, _) = api.get("/metrics").await;
    assert_eq!(status, 404, "the API port does not serve /metrics");
    let metrics = api
        .client
        .get(format!("{}/metrics", api._served.metrics_base))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains(r#"medembed_api_requests_total{endpoint="/api/search",status="200"}"#),
        "{metrics}"
    );
    let ready = api
        .client
        .get(format!("{}/readyz", api.base))
        .send()
        .await
        .expect("readyz");
    assert_eq!(ready.status().as_u16(), 200);

    // Security headers on the UI, the API (also an error) and health; no CORS.
    for path in ["/", "/ui/app.js", "/api/clusters", "/api/nope", "/healthz"] {
        let answer = api
            .client
            .get(format!("{}{path}", api.base))
            .header("origin", "https://elsewhere.example")
            .send()
            .await
            .expect("get");
        let header = |name: &str| {
            answer
                .headers()
                .get(name)
                .map(|v| v.to_str().unwrap().to_string())
        };
        let csp = header("content-security-policy").unwrap_or_default();
        assert!(
            csp.contains("default-src 'self'") && csp.contains("frame-ancestors 'none'"),
            "{path}: {csp:?}"
        );
        assert_eq!(header("x-content-type-options").as_deref(), Some("nosniff"));
        assert_eq!(header("x-frame-options").as_deref(), Some("DENY"));
        assert_eq!(header("referrer-policy").as_deref(), Some("no-referrer"));
        assert_eq!(header("access-control-allow-origin"), None, "{path}");
    }
}

async fn check_bad_requests(api: &Api, job: JobId) {
    let search = |body: Value| async move { api.post("/api/search", &body).await };
    assert_error(
        "empty query",
        search(json!({"query": "  "})).await,
        422,
        "query is empty",
    );
    assert_error(
        "100 KB query",
        search(json!({"query": "a".repeat(100_000)})).await,
        413,
        "at most 20000",
    );
    assert_error(
        "k = 0",
        search(json!({"query": "x", "k": 0})).await,
        422,
        "k is 0",
    );
    assert_error(
        "k = 10^9",
        search(json!({"query": "x", "k": 1_000_000_000u64})).await,
        422,
        "k is 1000000000",
    );
    assert_error(
        "k = -1",
        search(json!({"query": "x", "k": -1})).await,
        422,
        "k",
    );
    assert_error(
        "unknown job",
        search(json!({"query": "x", "job": JobId::new().to_string()})).await,
        404,
        "does not exist",
    );
    assert_error(
        "malformed job id",
        search(json!({"query": "x", "job": "../../etc"})).await,
        422,
        "not a job id",
    );
    assert_error(
        "unknown field",
        search(json!({"query": "x", "kk": 3})).await,
        422,
        "kk",
    );
    assert_error(
        "malformed JSON",
        api.post_raw("/api/search", "application/json", b"{\"query\": ".to_vec())
            .await,
        400,
        "",
    );
    assert_error(
        "not JSON",
        api.post_raw("/api/search", "text/plain", b"query".to_vec())
            .await,
        415,
        "Content-Type",
    );
    assert_error(
        "body over the limit",
        api.post_raw(
            "/api/search",
            "application/json",
            format!("{{\"query\": \"{}\"}}", "b".repeat(2_000_000)).into_bytes(),
        )
        .await,
        413,
        "",
    );
    assert_error(
        "similarity without b",
        api.post("/api/similarity", &json!({"a": "x"})).await,
        422,
        "b",
    );
    assert_error(
        "empty similarity text",
        api.post("/api/similarity", &json!({"a": "x", "b": ""}))
            .await,
        422,
        "b is empty",
    );
    assert_error(
        "neighbours of an unknown article",
        api.get(&format!("/api/neighbours?id=nope&job={job}")).await,
        404,
        "nope",
    );
    assert_error(
        "neighbours without id",
        api.get("/api/neighbours").await,
        400,
        "id",
    );
    assert_error(
        "unknown embedding model",
        api.post(
            "/v1/embeddings",
            &json!({"input": "x", "model": "../secret"}),
        )
        .await,
        404,
        "no model",
    );
    assert_error(
        "empty embedding input",
        api.post(
            "/v1/embeddings",
            &json!({"input": [], "model": job.to_string()}),
        )
        .await,
        422,
        "empty list",
    );
    assert_error(
        "embedding dimensions",
        api.post(
            "/v1/embeddings",
            &json!({"input": "x", "model": job.to_string(), "dimensions": 64}),
        )
        .await,
        422,
        "dimensions 64",
    );
    assert_error(
        "submit without query",
        api.post("/api/jobs", &json!({"query": ""})).await,
        422,
        "query",
    );
    assert_error(
        "submit bad date",
        api.post("/api/jobs", &json!({"query": "x", "to": "2024/13"}))
            .await,
        422,
        "to:",
    );
    assert_error(
        "unknown job detail",
        api.get(&format!("/api/jobs/{}", JobId::new())).await,
        404,
        "does not exist",
    );
    assert_error(
        "file outside the allow-list",
        api.get(&format!("/api/jobs/{job}/files/config.json")).await,
        404,
        "no file",
    );
    assert_error(
        "unknown endpoint",
        api.get("/api/nope").await,
        404,
        "no such endpoint",
    );
}

/// Every operation the OpenAPI description lists answers, with one of the statuses it documents.
async fn check_openapi_is_true(api: &Api, job: JobId) {
    let (status, doc) = api.get("/api/openapi.json").await;
    assert_eq!(status, 200);
    let paths = doc["paths"].as_object().expect("paths");
    assert!(paths.len() >= 9, "{:?}", paths.keys().collect::<Vec<_>>());
    let bodies: HashMap<&str, Value> = [
        ("/api/search", json!({"query": "tumour"})),
        ("/api/similarity", json!({"a": "x", "b": "y"})),
        (
            "/v1/embeddings",
            json!({"input": "x", "model": job.to_string()}),
        ),
        ("/api/jobs", json!({"query": "q"})),
    ]
    .into_iter()
    .collect();
    for (path, item) in paths {
        for (method, operation) in item.as_object().expect("methods") {
            let url = path
                .replace("{id}", &job.to_string())
                .replace("{name}", "README.md");
            let url = if path == "/api/neighbours" {
                format!("{url}?id=x")
            } else {
                url
            };
            let (status, _) = match method.as_str() {
                "get" => api.get(&url).await,
                "post" => api.post(&url, &bodies[path.as_str()]).await,
                other => panic!("undocumented method {other}"),
            };
            let documented: Vec<String> = operation["responses"]
                .as_object()
                .expect("responses")
                .keys()
                .cloned()
                .collect();
            assert!(
                documented.contains(&status.to_string()),
                "{method} {path} answered {status}, documented {documented:?}"
            );
        }
    }
}
