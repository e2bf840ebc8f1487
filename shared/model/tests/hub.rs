//! Fetching a base model the way the Hugging Face hub serves it, from a local HTTP server that
//! serves the real all-MiniLM-L6-v2 files: `resolve/{revision}/{file}` URLs redirected to a "CDN"
//! path, ETags and 304s, 404 for files the model does not have, 401 without a token for a gated
//! model. The fetched folder loads and embeds like the original.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use medembed_model::SentenceEncoder;
use medembed_model::hub::Hub;

#[derive(Clone)]
struct Served {
    dir: PathBuf,
    bodies: Arc<AtomicUsize>,
    not_modified: Arc<AtomicUsize>,
}

async fn resolve(
    Path((org, name, _revision, file)): Path<(String, String, String, String)>,
    headers: HeaderMap,
) -> Response {
    if org == "gated"
        && headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            != Some("Bearer sekrit")
    {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let _ = name;
    Redirect::temporary(&format!("/cdn/{file}")).into_response()
}

async fn cdn(
    State(served): State<Served>,
    Path(file): Path<String>,
    headers: HeaderMap,
) -> Response {
    let Ok(body) = std::fs::read(served.dir.join(&file)) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let etag = format!(
        "\"{}-{}\"",
        body.len(),
        body.iter().map(|&b| u64::from(b)).sum::<u64>()
    );
    if headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        == Some(etag.as_str())
    {
        served.not_modified.fetch_add(1, Ordering::SeqCst);
        return (StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response();
    }
    served.bodies.fetch_add(1, Ordering::SeqCst);
    ([(header::ETAG, etag)], body).into_response()
}

fn minilm() -> PathBuf {
    PathBuf::from(
        std::env::var("MEDEMBED_TEST_MODEL_DIR")
            .expect("MEDEMBED_TEST_MODEL_DIR (run deploy/dev/deps)"),
    )
}

async fn serve() -> (String, Served) {
    serve_from(minilm()).await
}

/// A hub that serves the files of `dir` for every repository.
async fn serve_from(dir: PathBuf) -> (String, Served) {
    let served = Served {
        dir,
        bodies: Arc::new(AtomicUsize::new(0)),
        not_modified: Arc::new(AtomicUsize::new(0)),
    };
    let app = Router::new()
        .route("/{org}/{name}/resolve/{revision}/{*file}", get(resolve))
        .route("/cdn/{*file}", get(cdn))
        .with_state(served.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await.expect("serve") });
    (format!("http://{addr}"), served)
}

#[tokio::test]
async fn a_hub_model_is_fetched_cached_and_revalidated() {
    let (endpoint, served) = serve().await;
    let home = tempfile::tempdir().expect("tempdir");
    let hub = Hub::new(&endpoint, home.path(), None);

    let dir = hub
        .resolve("sentence-transformers/all-MiniLM-L6-v2")
        .await
        .expect("fetch");
    assert!(dir.starts_with(home.path()));
    for file in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "vocab.txt",
        "modules.json",
        "1_Pooling/config.json",
    ] {
        assert!(dir.join(file).exists(), "{file} fetched");
    }
    let first = served.bodies.load(Ordering::SeqCst);
    assert!(
        first >= 9,
        "every file the model has was downloaded ({first})"
    );
    let original = SentenceEncoder::load(&served.dir, tch::Device::Cpu).expect("original");
    let fetched = SentenceEncoder::load(&dir, tch::Device::Cpu).expect("fetched folder loads");
    let text = ["Checkpoint inhibitors have revolutionized cancer immunotherapy"];
    assert_eq!(
        original.encode(&text).expect("encode"),
        fetched.encode(&text).expect("encode")
    );

    // Again: every cached file is revalidated with its ETag, nothing is downloaded.
    let again = hub
        .resolve("sentence-transformers/all-MiniLM-L6-v2")
        .await
        .expect("refetch");
    assert_eq!(again, dir);
    assert_eq!(
        served.bodies.load(Ordering::SeqCst),
        first,
        "no body sent twice"
    );
    assert_eq!(
        served.not_modified.load(Ordering::SeqCst),
        first,
        "one 304 per cached file"
    );

    // A local folder is used as it is.
    assert_eq!(
        hub.resolve(served.dir.to_str().expect("utf-8"))
            .await
            .expect("local"),
        served.dir
    );
}

#[tokio::test]
async fn gated_models_need_a_token_and_bad_ids_are_refused() {
    let (endpoint, _served) = serve().await;
    let home = tempfile::tempdir().expect("tempdir");
    let err = Hub::new(&endpoint, home.path(), None)
        .resolve("gated/model")
        .await
        .expect_err("no token");
    assert!(err.to_string().contains("HF_TOKEN"), "{err}");
    Hub::new(&endpoint, home.path(), Some("sekrit".into()))
        .resolve("gated/model")
        .await
        .expect("with the token");
    for bad in ["../../etc", "just-a-name", "a/b/c", "org/na me"] {
        let err = Hub::new(&endpoint, home.path(), None)
            .resolve(bad)
            .await
            .expect_err(bad);
        assert!(err.to_string().contains("hub id"), "{bad}: {err}");
    }
}

#[tokio::test]
async fn a_model_with_only_pytorch_model_bin_is_fetched_and_loads() {
    // BiomedBERT-style: config, vocab and the pickled weights, no model.safetensors.
    let repo = tempfile::tempdir().expect("tempdir");
    let fixture =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-bert-pickle");
    for (from, to) in [
        (fixture.join("config.json"), "config.json"),
        (fixture.join("pytorch_model.bin"), "pytorch_model.bin"),
        (minilm().join("vocab.txt"), "vocab.txt"),
        (
            minilm().join("tokenizer_config.json"),
            "tokenizer_config.json",
        ),
    ] {
        std::fs::copy(from, repo.path().join(to)).expect("copy");
    }
    let (endpoint, served) = serve_from(repo.path().to_path_buf()).await;
    let home = tempfile::tempdir().expect("tempdir");
    let hub = Hub::new(&endpoint, home.path(), None);
    let dir = hub.resolve("microsoft/pickle-only").await.expect("fetch");
    assert!(dir.join("pytorch_model.bin").exists());
    assert!(!dir.join("model.safetensors").exists());
    let text = ["BRCA1 and PARP inhibitors"];
    assert_eq!(
        SentenceEncoder::load(&dir, tch::Device::Cpu)
            .expect("fetched folder loads")
            .encode(&text)
            .expect("encode"),
        SentenceEncoder::load(&served.dir, tch::Device::Cpu)
            .expect("served folder loads")
            .encode(&text)
            .expect("encode")
    );

    // Neither weights file: the error says so.
    std::fs::remove_file(repo.path().join("pytorch_model.bin")).expect("rm");
    let err = Hub::new(
        &endpoint,
        tempfile::tempdir().expect("tempdir").path(),
        None,
    )
    .resolve("microsoft/no-weights")
    .await
    .expect_err("no weights");
    assert!(
        err.to_string()
            .contains("neither model.safetensors nor pytorch_model.bin"),
        "{err}"
    );
}
