//! `medembed search` over a job indexed from the fixture corpus (in a local store, as `medembed
//! run` leaves it): a title finds its article first, `--json` gives the api's shape, and bad
//! arguments are named. `medembed embed --model JOB` embeds with the job's model.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use medembed_e2e::fixture_job::{indexed_job, minilm_dir};
use medembed_indexer::search::JobIndex;
use medembed_model::SentenceEncoder;
use medembed_pipeline::config::{QueueBackend, StoreBackend};
use medembed_pipeline::{store, testing};

fn medembed(args: &[&str], store_root: &Path) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_medembed"))
        .args(args)
        .env("MEDEMBED__STORE__BACKEND", "local")
        .env("MEDEMBED__STORE__LOCAL_ROOT", store_root)
        .output()
        .expect("medembed runs");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_finds_articles_by_title_and_names_bad_arguments() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("data");
    let settings = testing::dev_settings(
        &testing::unique("cli-search"),
        QueueBackend::Memory,
        StoreBackend::Local,
        &root,
        &[("MEDEMBED__FETCH__ARTICLES_PER_PART", "8")],
    );
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).expect("mkdir");
    let (ok, _, stderr) = medembed(
        &["search", "--data", &empty.display().to_string(), "x"],
        &empty,
    );
    assert!(
        !ok && stderr.contains("no job has finished indexing"),
        "{stderr}"
    );

    let store = store::open(&settings.store).await.expect("store");
    let job = indexed_job(&settings, &store, dir.path()).await;
    let index = JobIndex::load(store.as_ref(), job, 64)
        .await
        .expect("index");
    let data = root.display().to_string();
    let probes: Vec<_> = index
        .documents
        .iter()
        .filter(|d| d.title.chars().count() > 40)
        .take(3)
        .collect();
    for d in &probes {
        let (ok, stdout, stderr) =
            medembed(&["search", "--data", &data, "-k", "3", &d.title], &root);
        assert!(ok, "{stderr}");
        let first = stdout.lines().nth(1).expect("a first hit");
        assert!(first.contains(d.title.as_str()), "{stdout}");
        assert_eq!(
            stdout
                .lines()
                .filter(|l| l.trim_start().starts_with(char::is_numeric))
                .count(),
            3
        );
    }
    let (ok, stdout, _) = medembed(
        &[
            "search",
            "--data",
            &data,
            "--json",
            "--job",
            &job.to_string(),
            &probes[0].title,
        ],
        &root,
    );
    assert!(ok);
    let body: serde_json::Value = serde_json::from_str(&stdout).expect("json");
    assert_eq!(body["hits"][0]["id"], probes[0].id.as_str());
    assert_eq!(body["job"], job.to_string());

    for (args, expected) in [
        (vec!["search", "--data", &data, "  "], "the query is empty"),
        (
            vec!["search", "--data", &data, "-k", "0", "x"],
            "-k 0: must be 1..=",
        ),
        (
            vec!["search", "--data", &data, "--job", "nope", "x"],
            "not a job id",
        ),
        (
            vec![
                "search",
                "--data",
                &data,
                "--job",
                "01JDZ8Q4V5W3XK1N2M3P4R5S6T",
                "x",
            ],
            "does not exist",
        ),
    ] {
        let (ok, _, stderr) = medembed(&args, &root);
        assert!(!ok && stderr.contains(expected), "{args:?}: {stderr}");
    }

    // embed --model JOB: the job's model (here MiniLM), fetched from the store.
    let mut child = Command::new(env!("CARGO_BIN_EXE_medembed"))
        .args(["embed", "--model", &job.to_string()])
        .env("MEDEMBED__STORE__BACKEND", "local")
        .env("MEDEMBED__STORE__LOCAL_ROOT", &root)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("medembed starts");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"checkpoint inhibitors\n")
        .expect("write");
    let output = child.wait_with_output().expect("runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let got: Vec<f32> = serde_json::from_str(String::from_utf8_lossy(&output.stdout).trim())
        .expect("one JSON array");
    let want = SentenceEncoder::load(&minilm_dir(), tch::Device::Cpu)
        .expect("minilm")
        .encode(&["checkpoint inhibitors"])
        .expect("encode");
    let cos: f32 = got.iter().zip(&want[0]).map(|(a, b)| a * b).sum();
    assert!(cos > 0.9999, "{cos}");
}
