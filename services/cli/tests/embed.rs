//! `medembed embed --model DIR`: lines on stdin, one JSON array per line out, the same vectors the
//! encoder gives in-process; a folder that is not a model is named in the error.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use medembed_model::SentenceEncoder;

#[test]
fn embeds_each_line_like_the_encoder() {
    let minilm = std::env::var("MEDEMBED_TEST_MODEL_DIR").expect("MEDEMBED_TEST_MODEL_DIR");
    let lines = [
        "Tumour-infiltrating lymphocytes predict response to PD-1 blockade.",
        "",
        "CAR-T cells in relapsed B-cell lymphoma",
    ];
    let mut child = Command::new(env!("CARGO_BIN_EXE_medembed"))
        .args(["embed", "--model", &minilm])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("medembed starts");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(format!("{}\n", lines.join("\n")).as_bytes())
        .expect("write");
    let output = child.wait_with_output().expect("medembed runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let vectors: Vec<Vec<f32>> = String::from_utf8(output.stdout)
        .expect("utf-8")
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON array per line"))
        .collect();
    let expected = SentenceEncoder::load(Path::new(&minilm), tch::Device::Cpu)
        .expect("model")
        .encode(&lines)
        .expect("encode");
    assert_eq!(vectors.len(), 3);
    assert_eq!(vectors, expected);

    let tmp = tempfile::tempdir().expect("tempdir");
    let output = Command::new(env!("CARGO_BIN_EXE_medembed"))
        .args(["embed", "--model"])
        .arg(tmp.path())
        .stdin(Stdio::null())
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && stderr.contains("config.json"),
        "{stderr}"
    );
}
