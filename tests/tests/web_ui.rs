//! The web UI in a real headless Chromium (Debian's `chromium` and `chromium-driver`, driven over
//! WebDriver): each page loads, a search shows ranked results with the searched article first, a
//! similarity is computed, the map draws its points and a click lists neighbours, and a job
//! submitted through the form is listed. The api has keys: without one only the key prompt
//! shows; a read key searches but gets no job form; a submit key submits. Screenshots of each page are saved under
//! `$CARGO_TARGET_TMPDIR/web-ui/` (the test prints where).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use medembed_e2e::api::{TestKeys, serve_api_with};
use medembed_e2e::fixture_job::indexed_job;
use medembed_indexer::search::JobIndex;
use medembed_pipeline::config::{QueueBackend, StoreBackend};
use medembed_pipeline::queue::Queue;
use medembed_pipeline::{store, testing};

struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts chromedriver on a free port and connects a headless Chromium session.
async fn browser() -> (Driver, Client) {
    // The driver speaks plain HTTP, but fantoccini's client is built with TLS support, which
    // wants one process-wide crypto provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let port = medembed_e2e::free_port();
    let driver = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver (Debian package chromium-driver; deploy/dev/test installs it)");
    let driver = Driver(driver);
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": "/usr/bin/chromium",
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,1000"]
        }),
    );
    let started = Instant::now();
    loop {
        match ClientBuilder::rustls()
            .expect("tls")
            .capabilities(caps.clone())
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
        {
            Ok(client) => return (driver, client),
            Err(e) if started.elapsed() < Duration::from_secs(30) => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("connecting to chromedriver: {e}"),
        }
    }
}

/// Waits until `script` (a JS expression) is truthy.
async fn wait_for(client: &Client, what: &str, script: &str) {
    let started = Instant::now();
    loop {
        let value = client
            .execute(&format!("return !!({script});"), vec![])
            .await
            .expect("script runs");
        if value.as_bool() == Some(true) {
            return;
        }
        if started.elapsed() > Duration::from_secs(60) {
            let error = client
                .execute(
                    "return document.querySelector('#error')?.textContent || '';",
                    vec![],
                )
                .await
                .unwrap_or_default();
            panic!("timed out waiting for {what}; page error: {error}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Clicks the element `css` finds.
async fn click(client: &Client, css: &str) {
    client
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .click()
        .await
        .unwrap_or_else(|e| panic!("click {css}: {e}"));
}

/// Types `key` into the key prompt and submits it.
async fn enter_key(client: &Client, key: &str) {
    let field = client
        .find(Locator::Css("#key"))
        .await
        .expect("the key field");
    field.clear().await.expect("clear");
    field.send_keys(key).await.expect("type the key");
    click(client, "#use-key").await;
}

async fn screenshot(client: &Client, name: &str) {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("web-ui");
    std::fs::create_dir_all(&dir).expect("screenshot folder");
    let png = client.screenshot().await.expect("screenshot");
    let path = dir.join(format!("{name}.png"));
    std::fs::write(&path, png).expect("write screenshot");
    println!("screenshot: {}", path.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_page_works_in_headless_chromium() {
    let dir = tempfile::tempdir().expect("tempdir");
    let settings = testing::dev_settings(
        &testing::unique("webui"),
        QueueBackend::Memory,
        StoreBackend::Local,
        &dir.path().join("store"),
        &[("MEDEMBED__FETCH__ARTICLES_PER_PART", "8")],
    );
    let store = store::open(&settings.store).await.expect("store");
    let job = indexed_job(&settings, &store, dir.path()).await;
    let index = JobIndex::load(store.as_ref(), job, 64)
        .await
        .expect("index");
    let article = index
        .documents
        .iter()
        .find(|d| d.title.chars().count() > 40)
        .expect("a fixture article with a long title")
        .clone();

    let keys = TestKeys::new();
    let api = serve_api_with(&settings, store.clone(), None, keys.access()).await;
    let (base, queue) = (api.base.clone(), api.queue.clone());

    let (_driver, client) = browser().await;

    // Without a key: only the key prompt; a wrong key is refused and the prompt stays.
    client.goto(&format!("{base}/")).await.expect("search page");
    wait_for(
        &client,
        "the key prompt alone",
        "!document.querySelector('#key-form').hidden && document.querySelector('#content').hidden",
    )
    .await;
    let options = client
        .execute(
            "return document.querySelector('#job').options.length;",
            vec![],
        )
        .await
        .expect("options");
    assert_eq!(options.as_u64(), Some(0), "no job listed without a key");
    screenshot(&client, "key-prompt").await;
    enter_key(&client, "me_not-a-key").await;
    wait_for(
        &client,
        "the wrong key refused",
        "document.querySelector('#error').textContent.includes('not valid') \
         && !document.querySelector('#key-form').hidden",
    )
    .await;

    // A read key: its role shows, and search works.
    enter_key(&client, &keys.read).await;
    wait_for(
        &client,
        "signed in with the read key",
        "document.querySelector('#who').textContent === 'reader (read)' \
         && !document.querySelector('#content').hidden",
    )
    .await;

    // Search: the article's title finds it first.
    wait_for(
        &client,
        "the job picker",
        "document.querySelector('#job').options.length > 0",
    )
    .await;
    client
        .find(Locator::Css("#query"))
        .await
        .expect("query box")
        .send_keys(&article.title)
        .await
        .expect("type");
    click(&client, "#search-button").await;
    wait_for(
        &client,
        "search results",
        "document.querySelectorAll('#results li.result').length >= 5",
    )
    .await;
    let first = client
        .find(Locator::Css("#results li.result"))
        .await
        .expect("first result");
    assert_eq!(
        first.attr("data-id").await.expect("attr").as_deref(),
        Some(article.id.as_str())
    );
    let scores: Vec<f64> = client
        .execute(
            "return [...document.querySelectorAll('#results .score')].map(e => Number(e.textContent));",
            vec![],
        )
        .await
        .expect("scores")
        .as_array()
        .expect("array")
        .iter()
        .map(|v| v.as_f64().expect("number"))
        .collect();
    assert!(
        scores.windows(2).all(|w| w[0] >= w[1]),
        "ranked: {scores:?}"
    );
    screenshot(&client, "search").await;
    // Hybrid by default: the hits say which rankings found them.
    let meta = client
        .find(Locator::Css("#search-meta"))
        .await
        .expect("meta")
        .text()
        .await
        .expect("text");
    assert!(meta.contains("hybrid search"), "{meta}");

    // The mode switch: each mode's hits come from that ranking alone.
    for (mode, found_by) in [("lexical", "lexical"), ("dense", "dense")] {
        client
            .execute(
                &format!("document.querySelector('#mode').value = '{mode}';"),
                vec![],
            )
            .await
            .expect("select the mode");
        click(&client, "#search-button").await;
        wait_for(
            &client,
            &format!("{mode} results"),
            &format!(
                "document.querySelector('#search-meta').textContent.includes('{mode} search') \
                 && document.querySelectorAll('#results li.result').length > 0"
            ),
        )
        .await;
        let found: Vec<String> = client
            .execute(
                "return [...document.querySelectorAll('#results li.result')].map(e => e.dataset.foundBy);",
                vec![],
            )
            .await
            .expect("found-by")
            .as_array()
            .expect("array")
            .iter()
            .map(|v| v.as_str().expect("string").to_string())
            .collect();
        assert!(found.iter().all(|f| f == found_by), "{mode}: {found:?}");
        let first = client
            .find(Locator::Css("#results li.result"))
            .await
            .expect("first result");
        assert_eq!(
            first.attr("data-id").await.expect("attr").as_deref(),
            Some(article.id.as_str()),
            "{mode} search finds the article by its title first"
        );
    }
    screenshot(&client, "search-dense").await;

    // Similarity: a gauge and a verdict.
    client
        .goto(&format!("{base}/similarity"))
        .await
        .expect("similarity page");
    wait_for(
        &client,
        "the job picker",
        "document.querySelector('#job').options.length > 0",
    )
    .await;
    for (field, text) in [
        ("#text-a", "Checkpoint inhibitors in metastatic melanoma."),
        ("#text-b", "PD-1 antibodies for advanced melanoma patients."),
    ] {
        client
            .find(Locator::Css(field))
            .await
            .expect("textarea")
            .send_keys(text)
            .await
            .expect("type");
    }
    click(&client, "#compare").await;
    wait_for(
        &client,
        "a verdict",
        "document.querySelector('#verdict').textContent.length > 0",
    )
    .await;
    let cosine: f64 = client
        .find(Locator::Css("#cosine-value"))
        .await
        .expect("value")
        .text()
        .await
        .expect("text")
        .parse()
        .expect("a number");
    assert!(cosine > 0.3 && cosine <= 1.0, "{cosine}");
    screenshot(&client, "similarity").await;

    // Map: points drawn; a click on one lists its neighbours.
    client.goto(&format!("{base}/map")).await.expect("map page");
    wait_for(
        &client,
        "map points",
        "Number(document.querySelector('#map').dataset.points) >= 30",
    )
    .await;
    client
        .execute(
            r#"const c = document.querySelector('#map'); const p = map.points[0];
               const [sx, sy] = toScreen(p, c); const r = c.getBoundingClientRect();
               c.dispatchEvent(new MouseEvent('click', {clientX: r.left + sx * r.width / c.width, clientY: r.top + sy * r.height / c.height, bubbles: true}));"#,
            vec![],
        )
        .await
        .expect("click a point");
    wait_for(
        &client,
        "neighbours",
        "document.querySelectorAll('#neighbours li').length >= 5",
    )
    .await;
    wait_for(
        &client,
        "a cluster legend",
        "document.querySelectorAll('#legend li').length >= 2",
    )
    .await;
    screenshot(&client, "map").await;

    // Jobs: the finished job is listed; the read key gets no job form.
    client
        .goto(&format!("{base}/jobs"))
        .await
        .expect("jobs page");
    wait_for(
        &client,
        "the job list",
        &format!(
            "document.querySelector('#jobs tr[data-id=\"{job}\"] .state')?.textContent === 'done'"
        ),
    )
    .await;
    wait_for(
        &client,
        "no job form for a read key",
        "document.querySelector('#submit-form').hidden \
         && !document.querySelector('#submit-not-allowed').hidden",
    )
    .await;
    screenshot(&client, "jobs-read-key").await;

    // Forget the read key, sign in with a submit key: a job submitted through the form appears.
    click(&client, "#forget-key").await;
    wait_for(
        &client,
        "the key prompt again",
        "!document.querySelector('#key-form').hidden",
    )
    .await;
    enter_key(&client, &keys.submit).await;
    wait_for(
        &client,
        "the job form for a submit key",
        "document.querySelector('#who').textContent === 'submitter (submit)' \
         && !document.querySelector('#submit-form').hidden",
    )
    .await;
    client
        .find(Locator::Css("#new-query"))
        .await
        .expect("query")
        .send_keys("tuberculosis drug resistance")
        .await
        .expect("type");
    click(&client, "#submit-job").await;
    wait_for(
        &client,
        "the submission",
        "document.querySelector('#submit-result').textContent.startsWith('queued job')",
    )
    .await;
    wait_for(
        &client,
        "the new job listed",
        "document.querySelectorAll('#jobs tbody tr').length === 2",
    )
    .await;
    assert_eq!(queue.depth("fetch").await.expect("depth"), 1);
    click(&client, &format!("#jobs tr[data-id=\"{job}\"]")).await;
    wait_for(
        &client,
        "job detail",
        "!document.querySelector('#job-detail').hidden",
    )
    .await;
    screenshot(&client, "jobs").await;
    client.close().await.expect("close");
}
