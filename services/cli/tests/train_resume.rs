//! `medembed train` as a separate process, killed with SIGKILL after a checkpoint and started again
//! with the same command: the run continues from the checkpoint's step and ends with the same
//! number of optimizer steps (and the same figures) as an uninterrupted run. Also: bad arguments
//! and bad input files are refused with a message naming them.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use medembed_model::testing::write_tiny_random_model;

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../trainer/tests/fixtures")
        .join(name)
}

fn medembed(out: &Path, base: &Path, extra_env: &[(&str, &str)]) -> Command {
    train_command(&fixture("train_small.csv"), out, base, extra_env)
}

fn train_command(train: &Path, out: &Path, base: &Path, extra_env: &[(&str, &str)]) -> Command {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../trainer/tests/fixtures");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_medembed"));
    cmd.args(["train", "--train"])
        .arg(train)
        .arg("--val")
        .arg(fixtures.join("seed_positives_16.csv"))
        .arg("--base-model")
        .arg(base)
        .arg("--out")
        .arg(out)
        .args([
            "--device",
            "cpu",
            "--max-seq-len",
            "64",
            "--batch-size",
            "8",
            "--epochs",
            "2",
        ])
        .env("MEDEMBED__TRAIN__CHECKPOINT_EVERY_STEPS", "10")
        .envs(extra_env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// Runs `command`, which must fail with `wanted` in its error output.
fn refused(mut command: Command, wanted: &str) {
    let output = command.output().expect("runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && stderr.contains(wanted),
        "{wanted:?}: {stderr}"
    );
}

fn metrics(out: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(out.join("metrics.json")).expect("metrics.json"))
        .expect("metrics.json parses")
}

#[test]
fn a_killed_run_resumes_from_its_checkpoint_to_the_same_end() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let base = tmp.path().join("base");
    let minilm = std::env::var("MEDEMBED_TEST_MODEL_DIR").expect("MEDEMBED_TEST_MODEL_DIR");
    write_tiny_random_model(&base, Path::new(&minilm), 64, 2, 5).expect("tiny model");

    let whole = tmp.path().join("whole");
    let output = medembed(&whole, &base, &[])
        .output()
        .expect("medembed runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let whole_metrics = metrics(&whole);
    let steps = whole_metrics["optimizer_steps"].as_u64().expect("steps");
    assert!(steps > 60, "{steps} steps");

    // Kill the second run once it has checkpointed at step 20 or later.
    let killed = tmp.path().join("killed");
    let mut child = medembed(&killed, &base, &[])
        .spawn()
        .expect("medembed starts");
    let latest = killed.join(".checkpoints/latest.json");
    let deadline = Instant::now() + Duration::from_secs(300);
    let checkpoint_step = loop {
        if let Ok(text) = std::fs::read(&latest)
            && let Ok(json) = serde_json::from_slice::<serde_json::Value>(&text)
            && json["step"].as_u64().unwrap_or(0) >= 20
        {
            child.kill().expect("SIGKILL");
            break json["step"].as_u64().expect("step");
        }
        assert!(
            child.try_wait().expect("wait").is_none(),
            "finished before it could be killed"
        );
        assert!(Instant::now() < deadline, "no checkpoint at step 20");
        std::thread::sleep(Duration::from_millis(5));
    };
    child.wait().expect("reaped");
    assert!(
        !killed.join("metrics.json").exists(),
        "killed before the end"
    );
    assert!(checkpoint_step < steps);

    let output = medembed(&killed, &base, &[])
        .output()
        .expect("medembed runs again");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let resumed_at: u64 = stderr
        .lines()
        .find_map(|l| l.strip_prefix("train: resuming at step "))
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no resume line in:\n{stderr}"));
    assert!(
        resumed_at >= checkpoint_step,
        "resumed at {resumed_at}, checkpoint at {checkpoint_step}"
    );
    let resumed = metrics(&killed);
    assert_eq!(resumed["optimizer_steps"].as_u64(), Some(steps));
    assert_eq!(resumed["resumes"].as_u64(), Some(1));
    assert_eq!(resumed["best_step"], whole_metrics["best_step"]);
    let ndcg = |m: &serde_json::Value| m["fine_tuned"]["val"]["ndcg_at_10"].as_f64().expect("ndcg");
    assert!(
        (ndcg(&resumed) - ndcg(&whole_metrics)).abs() < 1e-9,
        "same run, same result: {} vs {}",
        ndcg(&resumed),
        ndcg(&whole_metrics)
    );
    assert!(
        !killed.join(".checkpoints").exists(),
        "checkpoints removed at the end"
    );

    // A finished folder is not overwritten.
    let again = medembed(&killed, &base, &[]).output().expect("runs");
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already holds a trained model"));
}

#[test]
fn bad_arguments_and_files_are_named() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let base = tmp.path().join("base");
    let minilm = std::env::var("MEDEMBED_TEST_MODEL_DIR").expect("MEDEMBED_TEST_MODEL_DIR");
    write_tiny_random_model(&base, Path::new(&minilm), 32, 1, 5).expect("tiny model");
    let bad_csv = tmp.path().join("bad.csv");
    std::fs::write(&bad_csv, "text1,text2,label\na,b,1\nc,d,yes\n").expect("write");
    let out = tmp.path().join("out");
    for (args, wanted) in [
        (vec!["--loss", "triplet"], "unknown loss \"triplet\""),
        (vec!["--batch-size", "1"], "train.batch_size"),
        (vec!["--device", "tpu"], "--device \"tpu\""),
        (vec!["--epochs", "0"], "train.epochs"),
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_medembed"))
            .args(["train", "--train"])
            .arg(fixture("train_small.csv"))
            .arg("--val")
            .arg(fixture("seed_positives_16.csv"))
            .arg("--base-model")
            .arg(&base)
            .arg("--out")
            .arg(&out)
            .args(&args)
            .output()
            .expect("runs");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            !output.status.success() && stderr.contains(wanted),
            "{args:?}: {stderr}"
        );
    }
    refused(train_command(&bad_csv, &out, &base, &[]), "bad.csv: row 3");
    // A folder of other files is not written into; a file is not a folder.
    let foreign = tmp.path().join("notes");
    std::fs::create_dir_all(&foreign).expect("mkdir");
    std::fs::write(foreign.join("thesis.tex"), "mine").expect("write");
    refused(
        medembed(&foreign, &base, &[]),
        "is not empty (it holds thesis.tex",
    );
    assert_eq!(
        std::fs::read_dir(&foreign).expect("ls").count(),
        1,
        "nothing was written"
    );
    refused(medembed(&bad_csv, &base, &[]), "a file, not a folder");
    refused(
        medembed(&out, Path::new("/nonexistent/model"), &[]),
        "/nonexistent/model",
    );
}
