//! The api's door, over real HTTP: every route of the OpenAPI description with no key, a wrong
//! key, a `read`, a `submit` and an `admin` key (401/403/2xx, each documented); `files:` sources
//! outside the allowlist refused (also through `..` and a symlink); quotas and per-key rates
//! answered 429 with Retry-After; a full encoder queue answered 503 without queueing more;
//! raw error text only for admin keys; and the api binary itself refusing an open network
//! address, serving /metrics apart and making keys.

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use medembed_e2e::api::{ServedApi, TestKeys, serve_api_with};
use medembed_e2e::fixture_job::{indexed_job, minilm_dir};
use medembed_pipeline::config::{QueueBackend, Settings, StoreBackend};
use medembed_pipeline::messages::JobId;
use medembed_pipeline::queue::Queue;
use medembed_pipeline::status::{StageState, StageStatus};
use medembed_pipeline::store::{self, ObjectStore};
use medembed_pipeline::testing;
use serde_json::{Value, json};

fn settings(name: &str, root: &std::path::Path, extra: &[(&str, &str)]) -> Settings {
    let mut all = vec![("MEDEMBED__FETCH__ARTICLES_PER_PART", "8")];
    all.extend_from_slice(extra);
    testing::dev_settings(
        &testing::unique(name),
        QueueBackend::Memory,
        StoreBackend::Local,
        root,
        &all,
    )
}

/// One HTTP answer: status, the Retry-After and WWW-Authenticate headers, and the JSON body.
#[derive(Debug)]
struct Answer {
    status: u16,
    retry_after: Option<u64>,
    www_authenticate: bool,
    body: Value,
}

async fn call(
    base: &str,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: Option<&Value>,
) -> Answer {
    let client = reqwest::Client::new();
    let url = format!("{base}{path}");
    let mut request = match method {
        "get" => client.get(url),
        "post" => client.post(url),
        other => panic!("method {other}"),
    };
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    if let Some(body) = body {
        request = request.json(body);
    }
    let response = request.send().await.expect("request");
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
    };
    let retry_after = header("retry-after").map(|v| v.parse().expect("seconds"));
    let www_authenticate = header("www-authenticate").is_some();
    let status = response.status().as_u16();
    let bytes = response.bytes().await.expect("body");
    Answer {
        status,
        retry_after,
        www_authenticate,
        body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    }
}

fn error_code(answer: &Answer) -> &str {
    answer.body["error"]["code"].as_str().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_each_role_as_documented() {
    let dir = tempfile::tempdir().expect("tempdir");
    let allowed = dir.path().join("corpora");
    let private = dir.path().join("private");
    std::fs::create_dir_all(allowed.join("alz")).unwrap();
    std::fs::create_dir_all(&private).unwrap();
    std::os::unix::fs::symlink(&private, allowed.join("escape")).unwrap();
    let allowed_env = format!("{},s3://shared/corpora", allowed.display());
    let settings = settings(
        "api-roles",
        &dir.path().join("store"),
        &[
            ("MEDEMBED__API__ALLOWED_SOURCES", &allowed_env),
            ("MEDEMBED__API__MAX_ACTIVE_JOBS_PER_KEY", "100"),
            ("MEDEMBED__API__MAX_ACTIVE_JOBS", "100"),
        ],
    );
    assert_eq!(
        settings.api.allowed_sources.len(),
        2,
        "a list from the environment"
    );
    let store = store::open(&settings.store).await.expect("store");
    let job = indexed_job(&settings, &store, dir.path()).await;
    let keys = TestKeys::new();
    let api = serve_api_with(
        &settings,
        store.clone(),
        minilm_dir().parent().map(|p| p.to_path_buf()),
        keys.access(),
    )
    .await;
    let base = api.base.as_str();

    // The description is open, and declares the bearer scheme for every operation.
    let doc = call(base, "get", "/api/openapi.json", None, None).await;
    assert_eq!(doc.status, 200);
    let doc = doc.body;
    assert_eq!(
        doc["components"]["securitySchemes"]["api_key"]["scheme"], "bearer",
        "{}",
        doc["components"]
    );
    assert!(
        doc["security"][0].get("api_key").is_some(),
        "{}",
        doc["security"]
    );

    let bodies: HashMap<&str, Value> = [
        (
            "/api/search",
            json!({"query": "tumour", "job": job.to_string()}),
        ),
        (
            "/api/similarity",
            json!({"a": "x", "b": "y", "job": job.to_string()}),
        ),
        (
            "/v1/embeddings",
            json!({"input": "x", "model": job.to_string()}),
        ),
        ("/api/jobs", json!({"query": "malaria vaccines"})),
    ]
    .into_iter()
    .collect();
    let paths = doc["paths"].as_object().expect("paths");
    let mut checked = 0;
    for (path, item) in paths {
        for (method, operation) in item.as_object().expect("methods") {
            let url = path
                .replace("{id}", &job.to_string())
                .replace("{name}", "README.md");
            let url = match path.as_str() {
                "/api/neighbours" => format!("{url}?id=x&job={job}"),
                "/api/map" | "/api/clusters" => format!("{url}?job={job}"),
                _ => url,
            };
            let body = bodies.get(path.as_str());
            let submits = path == "/api/jobs" && method == "post";
            let documented: Vec<String> = operation["responses"]
                .as_object()
                .expect("responses")
                .keys()
                .cloned()
                .collect();
            for (who, key, expected) in [
                ("no key", None, 401),
                ("a wrong key", Some("me_not-a-key"), 401),
                (
                    "the read key",
                    Some(keys.read.as_str()),
                    if submits { 403 } else { 200 },
                ),
                (
                    "the submit key",
                    Some(keys.submit.as_str()),
                    if submits { 201 } else { 200 },
                ),
            ] {
                let answer = call(base, method, &url, key, body).await;
                let ok = if expected == 200 {
                    // Past the door: what the handler answers (a 404 for neighbours of an
                    // unknown id, say), but no refusal and no server error.
                    ![401, 403, 429].contains(&answer.status) && answer.status < 500
                } else {
                    answer.status == expected
                };
                assert!(
                    ok,
                    "{method} {path} with {who}: {} {}",
                    answer.status, answer.body
                );
                assert!(
                    documented.contains(&answer.status.to_string()),
                    "{method} {path} answered {}, documented {documented:?}",
                    answer.status
                );
                if answer.status == 401 {
                    assert!(answer.www_authenticate, "{method} {path}: WWW-Authenticate");
                    assert_eq!(error_code(&answer), "unauthorized");
                }
                if answer.status == 403 {
                    assert_eq!(error_code(&answer), "forbidden");
                    assert!(
                        answer.body.to_string().contains("submit role"),
                        "{}",
                        answer.body
                    );
                }
                checked += 1;
            }
        }
    }
    assert!(checked >= 4 * 10, "{checked} calls");

    // The UI's pages and the probes stay open.
    for path in ["/", "/jobs", "/ui/app.js", "/healthz", "/readyz"] {
        let r = reqwest::get(format!("{base}{path}")).await.expect("get");
        assert_eq!(r.status().as_u16(), 200, "{path}");
    }

    // Who am I, per key.
    for (key, name, role, can_submit) in [
        (&keys.read, "reader", "read", false),
        (&keys.submit, "submitter", "submit", true),
        (&keys.admin, "operator", "admin", true),
    ] {
        let who = call(base, "get", "/api/whoami", Some(key), None).await;
        assert_eq!(
            (
                who.body["name"].as_str(),
                who.body["role"].as_str(),
                who.body["can_submit"].as_bool()
            ),
            (Some(name), Some(role), Some(can_submit)),
            "{}",
            who.body
        );
    }

    // Sources: only under the allowlist, after `..` and symlinks are resolved.
    let submit = |request: Value| {
        let key = keys.submit.clone();
        async move { call(base, "post", "/api/jobs", Some(&key), Some(&request)).await }
    };
    let inside =
        submit(json!({"query": "", "source": format!("files:{}", allowed.join("alz").display())}))
            .await;
    assert_eq!(inside.status, 201, "{}", inside.body);
    let spec = store::ObjectStore::get(
        store.as_ref(),
        &format!("jobs/{}/job.json", inside.body["id"].as_str().unwrap()),
    )
    .await
    .expect("spec");
    let spec: Value = serde_json::from_slice(&spec).unwrap();
    assert_eq!(spec["submitted_by"], "submitter");
    assert_eq!(
        spec["max_articles"], 10000,
        "a files: job is capped at api.max_articles_per_job"
    );
    assert_eq!(
        submit(json!({"query": "", "source": "files:s3://shared/corpora/alz"}))
            .await
            .status,
        201
    );
    for refused in [
        private.display().to_string(),
        allowed.join("../private").display().to_string(),
        allowed.join("alz/../../private").display().to_string(),
        allowed.join("escape").display().to_string(),
        allowed.join("escape/a.xml").display().to_string(),
        "/etc".to_string(),
        "relative/corpora".to_string(),
        "s3://other-bucket/corpora".to_string(),
        "s3://shared/corpora/../secrets".to_string(),
    ] {
        let answer = submit(json!({"query": "", "source": format!("files:{refused}")})).await;
        assert_eq!(answer.status, 403, "files:{refused}: {}", answer.body);
        assert!(
            answer.body.to_string().contains("api.allowed_sources"),
            "{refused}: {}",
            answer.body
        );
    }
    for (request, status, needle) in [
        (
            json!({"query": "q", "open_access_only": false}),
            403,
            "api.allow_not_open_access",
        ),
        (
            json!({"query": "q", "cited_by": true}),
            403,
            "api.allow_cited_by",
        ),
        (
            json!({"query": "q", "max_articles": 10001}),
            422,
            "api.max_articles_per_job",
        ),
    ] {
        let answer = submit(request.clone()).await;
        assert_eq!(answer.status, status, "{request}: {}", answer.body);
        assert!(answer.body.to_string().contains(needle), "{}", answer.body);
    }

    // Raw error text (an S3 body here) is shown to admin keys only.
    let raw = "<Error><Code>AccessDenied</Code><BucketName>prod-private</BucketName></Error>";
    let mut status = StageStatus::load(store.as_ref(), job, "fetch")
        .await
        .expect("status");
    status.last_error = Some(format!("s3 get jobs/x/raw/part-0: {raw}"));
    status.save(store.as_ref(), job).await.expect("save");
    let path = format!("/api/jobs/{job}");
    for key in [&keys.read, &keys.submit] {
        let detail = call(base, "get", &path, Some(key), None).await;
        assert_eq!(detail.status, 200);
        let text = detail.body.to_string();
        assert!(
            !text.contains("AccessDenied") && !text.contains("prod-private"),
            "{text}"
        );
        assert!(text.contains(medembed_api::routes::HIDDEN_ERROR), "{text}");
    }
    let detail = call(base, "get", &path, Some(&keys.admin), None).await;
    assert!(
        detail.body.to_string().contains("AccessDenied"),
        "admins see it"
    );

    // Requests are counted under the key's name, never the key.
    let metrics = reqwest::get(format!("{}/metrics", api.metrics_base))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains(r#"medembed_api_key_requests_total{key="reader",outcome="allowed"}"#),
        "{metrics}"
    );
    assert!(
        metrics
            .contains(r#"medembed_api_key_requests_total{key="anonymous",outcome="unauthorized"}"#),
        "{metrics}"
    );
    for key in [&keys.read, &keys.submit, &keys.admin] {
        assert!(!metrics.contains(key.as_str()));
    }
}

/// Marks `job` finished (its index stage done), so that it no longer counts as active.
async fn finish(store: &Arc<dyn ObjectStore>, job: &str) {
    let job: JobId = job.parse().expect("job id");
    let mut status = StageStatus::new("index");
    status.state = StageState::Done;
    status.save(store.as_ref(), job).await.expect("save");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_and_rates_answer_429_with_retry_after() {
    let dir = tempfile::tempdir().expect("tempdir");
    let settings = settings(
        "api-quotas",
        dir.path(),
        &[
            ("MEDEMBED__API__REQUESTS_PER_MINUTE", "60"),
            ("MEDEMBED__API__REQUEST_BURST", "5"),
            ("MEDEMBED__API__MAX_ACTIVE_JOBS_PER_KEY", "2"),
            ("MEDEMBED__API__MAX_ACTIVE_JOBS", "3"),
        ],
    );
    let store = store::open(&settings.store).await.expect("store");
    let keys = TestKeys::new();
    let api: ServedApi = serve_api_with(&settings, store.clone(), None, keys.access()).await;
    let base = api.base.as_str();

    // Per-key rate: a burst of 5, then 429 with Retry-After; other keys are not held back.
    for i in 0..5 {
        let answer = call(base, "get", "/api/jobs", Some(&keys.read), None).await;
        assert_eq!(answer.status, 200, "request {i}");
    }
    let limited = call(base, "get", "/api/jobs", Some(&keys.read), None).await;
    assert_eq!(limited.status, 429, "{}", limited.body);
    assert_eq!(error_code(&limited), "rate_limited");
    assert!(
        limited.retry_after.is_some_and(|s| (1..=2).contains(&s)),
        "{limited:?}"
    );
    assert_eq!(
        call(base, "get", "/api/jobs", Some(&keys.admin), None)
            .await
            .status,
        200
    );

    // Active jobs: at most 2 per key and 3 in all.
    let job = json!({"query": "malaria vaccines"});
    let mut mine = Vec::new();
    for _ in 0..2 {
        let answer = call(base, "post", "/api/jobs", Some(&keys.submit), Some(&job)).await;
        assert_eq!(answer.status, 201, "{}", answer.body);
        mine.push(answer.body["id"].as_str().unwrap().to_string());
    }
    let third = call(base, "post", "/api/jobs", Some(&keys.submit), Some(&job)).await;
    assert_eq!(third.status, 429, "{}", third.body);
    assert!(
        third
            .body
            .to_string()
            .contains("api.max_active_jobs_per_key"),
        "{}",
        third.body
    );
    assert!(third.retry_after.is_some());
    let admins = call(base, "post", "/api/jobs", Some(&keys.admin), Some(&job)).await;
    assert_eq!(
        admins.status, 201,
        "another key has its own quota: {}",
        admins.body
    );
    let full = call(base, "post", "/api/jobs", Some(&keys.admin), Some(&job)).await;
    assert_eq!(full.status, 429, "{}", full.body);
    assert!(
        full.body.to_string().contains("api.max_active_jobs)"),
        "{}",
        full.body
    );
    // A finished job frees its place.
    finish(&store, &mine[0]).await;
    let again = call(base, "post", "/api/jobs", Some(&keys.submit), Some(&job)).await;
    assert_eq!(again.status, 201, "{}", again.body);
    assert_eq!(
        api.queue.depth("fetch").await.expect("depth"),
        4,
        "only accepted jobs queued"
    );
}

/// Resident memory of this process, in MiB.
fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    kb / 1024.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_encoder_queue_answers_503_and_queues_nothing_more() {
    let dir = tempfile::tempdir().expect("tempdir");
    let settings = settings(
        "api-busy",
        dir.path(),
        &[
            ("MEDEMBED__API__MAX_INPUTS", "8"),
            ("MEDEMBED__API__MAX_QUEUED_TEXTS", "16"),
            ("MEDEMBED__API__MAX_TOKENS_PER_REQUEST", "1500"),
            ("MEDEMBED__API__REQUESTS_PER_MINUTE", "100000"),
            ("MEDEMBED__API__REQUEST_BURST", "10000"),
            ("MEDEMBED__INDEX__MAX_SEQ_LENGTH", "256"),
        ],
    );
    let store = store::open(&settings.store).await.expect("store");
    let keys = TestKeys::new();
    let api = serve_api_with(
        &settings,
        store,
        minilm_dir().parent().map(|p| p.to_path_buf()),
        keys.access(),
    )
    .await;
    let model = minilm_dir()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .to_string();
    // ~120 tokens each: 8 of them are within the token limit, and take a while to encode.
    let text = "Amyloid beta plaques and tau tangles accumulate in the hippocampus of patients \
                with Alzheimer disease, and microglial activation follows. "
        .repeat(4);
    let body = json!({"input": vec![text.clone(); 8], "model": model});
    let warm = call(
        &api.base,
        "post",
        "/v1/embeddings",
        Some(&keys.read),
        Some(&body),
    )
    .await;
    assert_eq!(warm.status, 200, "{}", warm.body);

    let before = rss_mib();
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let (base, key, body) = (api.base.clone(), keys.read.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            call(&base, "post", "/v1/embeddings", Some(&key), Some(&body)).await
        }));
    }
    let (mut ok, mut busy) = (0, 0);
    for task in tasks {
        let answer = task.await.expect("task");
        match answer.status {
            200 => {
                assert_eq!(answer.body["data"].as_array().map(Vec::len), Some(8));
                ok += 1;
            }
            503 => {
                assert_eq!(error_code(&answer), "busy", "{}", answer.body);
                assert!(answer.retry_after.is_some());
                busy += 1;
            }
            other => panic!("{other}: {}", answer.body),
        }
    }
    let after = rss_mib();
    println!(
        "encoder queue flood: {ok} embedded, {busy} refused 503, peak {} queued texts (limit 16), RSS {before:.0} → {after:.0} MiB",
        api.state.limits.peak_queued_texts()
    );
    assert!(ok >= 2 && busy >= 1, "{ok} ok, {busy} busy");
    assert!(
        api.state.limits.peak_queued_texts() <= 16,
        "never more than api.max_queued_texts waiting"
    );
    // The model thread sends each answer before it drops the request's permit, so the last
    // permits may come back just after the last answer (seen under load).
    let returned = medembed_e2e::eventually(Duration::from_secs(10), || async {
        api.state.limits.queued_texts() == 0
    })
    .await;
    assert!(
        returned,
        "every permit came back: {} still held",
        api.state.limits.queued_texts()
    );

    // Over the token limit: 8 texts of 256 tokens each (after truncation) is 2048 > 1500.
    let long = json!({"input": vec!["word ".repeat(600); 8], "model": model});
    let refused = call(
        &api.base,
        "post",
        "/v1/embeddings",
        Some(&keys.read),
        Some(&long),
    )
    .await;
    assert_eq!(refused.status, 413, "{}", refused.body);
    assert!(
        refused
            .body
            .to_string()
            .contains("api.max_tokens_per_request"),
        "{}",
        refused.body
    );
}

#[test]
fn the_api_binary_refuses_an_open_address_without_keys_and_serves_metrics_apart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let api = medembed_e2e::binaries::binary("medembed-api");
    let (port, metrics_port) = (medembed_e2e::free_port(), medembed_e2e::free_port());
    let output = Command::new(&api)
        .args(["--data", &dir.path().display().to_string()])
        .args(["--listen", &format!("0.0.0.0:{port}")])
        .env(
            "MEDEMBED__SERVER__LISTEN_ADDR",
            format!("127.0.0.1:{metrics_port}"),
        )
        .output()
        .expect("run medembed-api");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("refusing to listen on 0.0.0.0"), "{stderr}");

    // A key made by the binary itself.
    let made = Command::new(&api)
        .args(["key", "--name", "ci", "--role", "read"])
        .output()
        .expect("medembed-api key");
    assert!(made.status.success());
    let stdout = String::from_utf8_lossy(&made.stdout);
    let field = |name: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|| panic!("{name} in {stdout}"))
    };
    let (key, entry) = (field("key:"), field("entry:"));
    assert!(
        entry.starts_with("ci:read:") && !entry.contains(&key),
        "{entry}"
    );

    let mut child = Command::new(&api)
        .args(["--data", &dir.path().display().to_string()])
        .args(["--listen", &format!("0.0.0.0:{port}")])
        .env(
            "MEDEMBED__SERVER__LISTEN_ADDR",
            format!("127.0.0.1:{metrics_port}"),
        )
        .env("MEDEMBED__API__KEYS", &entry)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start medembed-api");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let base = format!("http://127.0.0.1:{port}");
        let up = medembed_e2e::eventually(Duration::from_secs(30), || async {
            reqwest::get(format!("{base}/healthz")).await.is_ok()
        })
        .await;
        assert!(up, "medembed-api did not start");
        let get = |url: String, key: Option<String>| async move {
            let mut r = reqwest::Client::new().get(url);
            if let Some(key) = key {
                r = r.bearer_auth(key);
            }
            r.send().await.expect("get").status().as_u16()
        };
        assert_eq!(get(format!("{base}/api/jobs"), None).await, 401);
        assert_eq!(
            get(format!("{base}/api/jobs"), Some(key.clone())).await,
            200
        );
        assert_eq!(get(format!("{base}/metrics"), Some(key.clone())).await, 404);
        let metrics = reqwest::get(format!("http://127.0.0.1:{metrics_port}/metrics"))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text");
        assert!(
            metrics.contains("medembed_api_key_requests_total"),
            "{metrics}"
        );
    });
    let _ = child.kill();
    let _ = child.wait();
}
