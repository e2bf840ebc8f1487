//! `medembed run` (embedded mode) as a separate process over the sample corpus and the offline
//! MiniLM: stopped with Ctrl-C (SIGINT) once training has checkpointed, run again with the same
//! command, it resumes the same job from the checkpoint to a model and a searchable index, while
//! `medembed watch` follows it to the end. A third run finds the job done. Bad arguments are
//! refused with a message naming them.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn sample_corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../samples/corpus")
}

fn medembed() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_medembed"));
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd
}

/// The README's main job, with enough training steps to stop it in the middle: the loosest
/// pair thresholds (a few more pairs), batches of 2, 20 epochs, a checkpoint every 2 steps.
fn run_sample(data: &Path) -> Command {
    let mut cmd = medembed();
    cmd.arg("--config")
        .arg(sample_corpus().join("../sample.toml"))
        .args(["run", "--source"])
        .arg(format!("files:{}", sample_corpus().display()))
        .arg("--base-model")
        .arg(env!("MEDEMBED_TEST_MODEL_DIR"))
        .arg("--data")
        .arg(data)
        .env("MEDEMBED__PAIRS__MESH_THRESHOLD", "0.02")
        .env("MEDEMBED__PAIRS__KEYWORD_THRESHOLD", "0.01")
        .env("MEDEMBED__TRAIN__DEVICE", "cpu")
        .env("MEDEMBED__TRAIN__MAX_SEQ_LENGTH", "64")
        .env("MEDEMBED__TRAIN__BATCH_SIZE", "2")
        .env("MEDEMBED__TRAIN__EPOCHS", "20")
        .env("MEDEMBED__TRAIN__CHECKPOINT_EVERY_STEPS", "2")
        // Mining is tested elsewhere; here it would only add minutes before each start.
        .env("MEDEMBED__TRAIN__MINED_NEGATIVES", "0")
        .env("MEDEMBED__INDEX__MAX_SEQ_LENGTH", "128");
    cmd
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn wait_with_deadline(mut child: Child, limit: Duration) -> Output {
    let deadline = Instant::now() + limit;
    while child.try_wait().expect("try_wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the process did not end within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    child.wait_with_output().expect("output")
}

/// The one job folder under `data/jobs/`, once there is one.
fn job_dir(data: &Path) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(data.join("jobs"))
        .ok()?
        .map(|e| e.expect("entry").path())
        .collect();
    assert!(dirs.len() <= 1, "one job, not {dirs:?}");
    dirs.pop()
}

#[test]
fn the_sample_job_stops_on_ctrl_c_and_resumes_to_a_searchable_index() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");

    // 1. Start, and stop with SIGINT once training has written a checkpoint.
    let first = run_sample(&data).spawn().expect("medembed run starts");
    let deadline = Instant::now() + Duration::from_secs(600);
    let job = loop {
        if let Some(dir) = job_dir(&data)
            && dir.join("train/checkpoints/latest.json").exists()
        {
            break dir;
        }
        assert!(Instant::now() < deadline, "no checkpoint within 10 min");
        std::thread::sleep(Duration::from_millis(100));
    };
    let job_id = job
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned();
    let killed = Command::new("kill")
        .args(["-INT", &first.id().to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let stopped = wait_with_deadline(first, Duration::from_secs(120));
    let stderr = text(&stopped.stderr);
    assert_eq!(stopped.status.code(), Some(130), "{stderr}");
    assert!(
        stderr.contains("run the same command again to resume"),
        "{stderr}"
    );
    assert!(
        !job.join("model/metrics.json").exists(),
        "stopped before the model was published"
    );

    // 2. The same command resumes the job; `watch` follows it to the end.
    let second = run_sample(&data).spawn().expect("medembed run starts");
    let watch = medembed()
        .args(["watch", &job_id, "--every", "0.2", "--data"])
        .arg(&data)
        .spawn()
        .expect("medembed watch starts");
    let resumed = wait_with_deadline(second, Duration::from_secs(900));
    let (stdout, stderr) = (text(&resumed.stdout), text(&resumed.stderr));
    assert!(resumed.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("resuming job {job_id}")),
        "{stderr}"
    );
    for expected in [
        "done in",
        "articles",
        "pairs     train",
        "training ",
        "nDCG@10",
        "index ",
        "medembed search --data",
    ] {
        assert!(stdout.contains(expected), "{expected:?} in:\n{stdout}");
    }
    let watched = wait_with_deadline(watch, Duration::from_secs(60));
    let watch_err = text(&watched.stderr);
    assert!(watched.status.success(), "{watch_err}");
    assert!(text(&watched.stdout).contains("done"), "{watch_err}");
    // Not a terminal: the stage changes it saw are printed as lines.
    assert!(watch_err.contains("index done"), "{watch_err}");

    // Training went on from the checkpoint, not from scratch.
    let metrics: serde_json::Value =
        serde_json::from_slice(&std::fs::read(job.join("model/metrics.json")).expect("metrics"))
            .expect("json");
    assert!(
        metrics["resumes"].as_u64().expect("resumes") >= 1,
        "{metrics}"
    );
    for file in [
        "model/model.safetensors",
        "model/modules.json",
        "index/_manifest.json",
        "index/documents.parquet",
    ] {
        assert!(job.join(file).is_file(), "{file} missing");
    }

    // 3. Again: nothing left to do.
    let again = run_sample(&data).output().expect("medembed run");
    assert!(again.status.success(), "{}", text(&again.stderr));
    assert!(
        text(&again.stderr).contains("is done already"),
        "{}",
        text(&again.stderr)
    );
    assert_eq!(
        std::fs::read_dir(data.join("jobs")).expect("jobs").count(),
        1
    );

    // 4. The index answers: a title finds its article first.
    let found = medembed()
        .args(["search", "--json", "-k", "3", "--data"])
        .arg(&data)
        .arg("A Novel Coronavirus from Patients with Pneumonia in China, 2019.")
        .output()
        .expect("medembed search");
    assert!(found.status.success(), "{}", text(&found.stderr));
    let hits: serde_json::Value = serde_json::from_slice(&found.stdout).expect("json");
    assert_eq!(hits["job"], job_id.as_str());
    assert_eq!(
        hits["hits"][0]["title"],
        "A Novel Coronavirus from Patients with Pneumonia in China, 2019."
    );

    // 5. `status` reads the same store.
    let status = medembed()
        .args(["status", &job_id, "--data"])
        .arg(&data)
        .output()
        .expect("medembed status");
    let report = text(&status.stdout);
    for stage in ["fetch", "clean", "pairs", "train", "index"] {
        assert!(
            report
                .lines()
                .any(|l| l.trim_start().starts_with(stage) && l.contains(" done")),
            "{stage} done in:\n{report}"
        );
    }
}

#[test]
fn bad_arguments_are_refused_naming_them() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    let refused = |args: &[&str], needle: &str| {
        let out = medembed()
            .arg("run")
            .args(args)
            .arg("--data")
            .arg(&data)
            .output()
            .expect("medembed run");
        let stderr = text(&out.stderr);
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(stderr.contains(needle), "{needle:?} in: {stderr}");
    };
    refused(&[], "--query");
    refused(
        &["--query", "x", "--from", "2024", "--to", "2020"],
        "--from",
    );
    refused(&["--query", "x", "--to", "2020-13"], "--to");
    refused(&["--query", "x", "--max-articles", "0"], "--max-articles");
    refused(&["--source", "ftp://example"], "--source");

    // A missing corpus folder: the fetch task fails for good, naming the path, and the run ends.
    refused(
        &[
            "--source",
            "files:/no/such/corpus",
            "--base-model",
            "/no/model",
        ],
        "/no/such/corpus",
    );

    // A second run on a folder in use.
    std::fs::create_dir_all(&data).expect("mkdir");
    let lock = std::fs::File::create(data.join(".medembed-run.lock")).expect("lock file");
    lock.try_lock().expect("locked");
    refused(&["--query", "x"], "another `medembed run` is using");
}
