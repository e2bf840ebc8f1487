//! `medembed eval` as a process on a tiny BEIR folder: BM25's figures as computed by hand, the
//! three modes with a real model, and a clear error naming the file and line for each kind of
//! bad input.

use std::path::Path;
use std::process::Command;

use medembed_e2e::fixture_job::minilm_dir;

fn medembed(args: &[&str]) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_medembed"))
        .arg("eval")
        .args(args)
        .output()
        .expect("medembed runs");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

const CORPUS: &str = r#"{"_id": "d1", "title": "Tau tangles", "text": "Neurofibrillary tangles of tau in Alzheimer disease."}
{"_id": "d2", "title": "Amyloid imaging", "text": "PET imaging of amyloid plaques."}
{"_id": "d3", "title": "Tau PET", "text": "A tracer for tau imaging in the living brain."}
{"_id": "d4", "title": "Insulin resistance", "text": "Diabetes, insulin and the risk of dementia."}
"#;
const QUERIES: &str = r#"{"_id": "q1", "text": "insulin and diabetes"}
{"_id": "q2", "text": "amyloid"}
{"_id": "q3", "text": "a query nobody judged"}
"#;
// q2: d2 is highly relevant (2) and d3 somewhat (1), though d3 never says "amyloid".
const QRELS: &str = "query-id\tcorpus-id\tscore\nq1\td4\t1\nq2\td2\t2\nq2\td3\t1\n";

fn folder(dir: &Path, corpus: &str, queries: &str, qrels: &str) {
    std::fs::create_dir_all(dir.join("qrels")).unwrap();
    std::fs::write(dir.join("corpus.jsonl"), corpus).unwrap();
    std::fs::write(dir.join("queries.jsonl"), queries).unwrap();
    std::fs::write(dir.join("qrels/test.tsv"), qrels).unwrap();
}

fn result<'a>(report: &'a serde_json::Value, mode: &str) -> &'a serde_json::Value {
    report["results"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["mode"] == mode)
        .unwrap_or_else(|| panic!("no {mode} result in {report}"))
}

fn close(value: &serde_json::Value, expected: f64) -> bool {
    (value.as_f64().unwrap() - expected).abs() < 1e-6
}

#[test]
fn bm25_figures_match_hand_computed_values() {
    let dir = tempfile::tempdir().unwrap();
    folder(dir.path(), CORPUS, QUERIES, QRELS);
    let (ok, out, err) = medembed(&["--beir", dir.path().to_str().unwrap(), "--bm25", "--json"]);
    assert!(ok, "{err}");
    let report: serde_json::Value = serde_json::from_str(&out).expect("JSON report");
    assert_eq!(report["documents"], 4);
    // q3 has no judgements: not evaluated.
    assert_eq!(report["queries"], 2);
    assert_eq!(report["results"].as_array().unwrap().len(), 1);
    let bm25 = result(&report, "lexical");
    // q1 finds only d4 (the one relevant): nDCG 1, MRR 1, recall 1, AP 1.
    // q2 finds only d2 (gain 2) of d2, d3: DCG 2, ideal 2 + 1/log2(3); recall 1/2; AP 1/2.
    let q2_ndcg = 2.0 / (2.0 + 1.0 / 3f64.log2());
    assert!(close(&bm25["ndcg_at_10"], (1.0 + q2_ndcg) / 2.0), "{bm25}");
    assert!(close(&bm25["mrr_at_10"], 1.0), "{bm25}");
    assert!(close(&bm25["recall_at_100"], 0.75), "{bm25}");
    assert!(close(&bm25["map_at_100"], 0.75), "{bm25}");

    // The table names the collection and each measure.
    let (ok, out, err) = medembed(&["--beir", dir.path().to_str().unwrap(), "--bm25"]);
    assert!(ok, "{err}");
    assert!(out.contains("4 documents, 2 queries"), "{out}");
    assert!(
        out.contains("nDCG@10") && out.contains("Recall@100"),
        "{out}"
    );
    assert!(out.lines().any(|l| l.starts_with("lexical ")), "{out}");
}

#[test]
fn a_model_scores_lexical_dense_and_hybrid() {
    let dir = tempfile::tempdir().unwrap();
    folder(dir.path(), CORPUS, QUERIES, QRELS);
    let model = minilm_dir();
    let (ok, out, err) = medembed(&[
        "--beir",
        dir.path().to_str().unwrap(),
        "--model",
        model.to_str().unwrap(),
        "--json",
    ]);
    assert!(ok, "{err}");
    let report: serde_json::Value = serde_json::from_str(&out).expect("JSON report");
    let modes: Vec<&str> = report["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["mode"].as_str().unwrap())
        .collect();
    assert_eq!(modes, ["lexical", "dense", "hybrid"]);
    for mode in modes {
        let r = result(&report, mode);
        for measure in ["ndcg_at_10", "mrr_at_10", "recall_at_100", "map_at_100"] {
            let v = r[measure].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&v), "{mode} {measure} = {v}");
        }
    }
    // Dense ranks every document, so it finds d3 for q2 too: recall 1 on both queries.
    assert!(
        close(&result(&report, "dense")["recall_at_100"], 1.0),
        "{report}"
    );
    assert!(
        close(&result(&report, "hybrid")["recall_at_100"], 1.0),
        "{report}"
    );
    assert!(err.contains("embedded 4/4 documents"), "{err}");

    // Only the modes asked for, in the order asked.
    let (ok, out, err) = medembed(&[
        "--beir",
        dir.path().to_str().unwrap(),
        "--model",
        model.to_str().unwrap(),
        "--mode",
        "hybrid,lexical",
        "--fusion",
        "scores",
        "--json",
    ]);
    assert!(ok, "{err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["results"][0]["mode"], "hybrid");
    assert_eq!(report["results"][1]["mode"], "lexical");
    assert_eq!(report["fusion"]["method"], "normalized_scores");
}

#[test]
fn bad_input_is_named_with_its_file_and_line() {
    let cases: [(&str, &str, &str, &str); 6] = [
        (
            "bad JSON",
            "{\"_id\": \"d1\", \"text\": \"a\"}\n{\"_id\": \"d2\", \n",
            "corpus.jsonl:2: not a JSON object",
            QRELS,
        ),
        (
            "a document without text",
            "{\"_id\": \"d1\", \"title\": \"t\"}\n",
            "corpus.jsonl:1: no \"text\"",
            QRELS,
        ),
        (
            "qrels naming an unknown document",
            CORPUS,
            "test.tsv:2: document \"d9\" is not in corpus.jsonl",
            "query-id\tcorpus-id\tscore\nq1\td9\t1\n",
        ),
        (
            "qrels naming an unknown query",
            CORPUS,
            "test.tsv:3: query \"q9\" is not in queries.jsonl",
            "query-id\tcorpus-id\tscore\nq1\td4\t1\nq9\td1\t1\n",
        ),
        (
            "a score that is not a number",
            CORPUS,
            "test.tsv:2: score \"yes\" is not a number",
            "query-id\tcorpus-id\tscore\nq1\td4\tyes\n",
        ),
        (
            "no judgements at all",
            CORPUS,
            "test.tsv: no judgements of any query",
            "query-id\tcorpus-id\tscore\n",
        ),
    ];
    for (what, corpus, expected, qrels) in cases {
        let dir = tempfile::tempdir().unwrap();
        folder(dir.path(), corpus, QUERIES, qrels);
        let (ok, _, err) = medembed(&["--beir", dir.path().to_str().unwrap(), "--bm25"]);
        assert!(!ok, "{what}: should fail");
        assert!(err.contains(expected), "{what}: {err}");
    }

    // A missing file, named.
    let dir = tempfile::tempdir().unwrap();
    folder(dir.path(), CORPUS, QUERIES, QRELS);
    std::fs::remove_file(dir.path().join("queries.jsonl")).unwrap();
    let (ok, _, err) = medembed(&["--beir", dir.path().to_str().unwrap(), "--bm25"]);
    assert!(!ok);
    assert!(err.contains("queries.jsonl: No such file"), "{err}");
    // A split that is not there.
    folder(dir.path(), CORPUS, QUERIES, QRELS);
    let (ok, _, err) = medembed(&[
        "--beir",
        dir.path().to_str().unwrap(),
        "--bm25",
        "--split",
        "dev",
    ]);
    assert!(!ok);
    assert!(err.contains("qrels/dev.tsv: No such file"), "{err}");
    // Modes that need a model, and neither a model nor --bm25.
    let (ok, _, err) = medembed(&[
        "--beir",
        dir.path().to_str().unwrap(),
        "--bm25",
        "--mode",
        "dense",
    ]);
    assert!(!ok);
    assert!(err.contains("--mode dense needs a model"), "{err}");
    let (ok, _, err) = medembed(&["--beir", dir.path().to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("--model"), "{err}");
}
