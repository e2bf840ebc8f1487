//! Two files of the Alzheimer sample (191 real PubMed records) with their MeSH headings, author
//! keywords, reference lists and comment/correction links stripped:
//! - with the default pair sources they still train, on their titles (query-style pairs);
//! - with the relation sources alone (`citation`, `mesh`, `keyword`) they make no pairs, and
//!   there is no dead end: the job is done, searchable in every mode (and by `medembed eval
//!   --job` over its own index), and says in its summary, status and model card that it did not
//!   train and why. A `files:` source is read whole by default; a given --max-articles that
//!   stops it part-way is named in the summary.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn sample_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../samples/alzheimer/corpus")
        .join(name)
}

/// `xml` without every `<tag …>…</tag>` element.
fn strip(xml: &str, tag: &str) -> String {
    let (open, close) = (format!("<{tag}"), format!("</{tag}>"));
    let mut out = String::with_capacity(xml.len());
    let mut rest = xml;
    while let Some(start) = rest.find(&open) {
        out.push_str(&rest[..start]);
        let end = rest[start..]
            .find(&close)
            .unwrap_or_else(|| panic!("unclosed <{tag}>"));
        rest = &rest[start + end + close.len()..];
    }
    out.push_str(rest);
    out
}

/// Two sample files, stripped of everything the pair-builder pairs by, as plain .xml.
fn bare_corpus(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    for name in ["pubmed_0_to_99.xml.gz", "pubmed_100_to_199.xml.gz"] {
        let mut xml = String::new();
        flate2::read::GzDecoder::new(std::fs::File::open(sample_file(name)).unwrap())
            .read_to_string(&mut xml)
            .unwrap();
        assert!(
            xml.contains("<MeshHeadingList>"),
            "{name} has MeSH to strip"
        );
        for tag in [
            "MeshHeadingList",
            "KeywordList",
            "ReferenceList",
            "CommentsCorrectionsList",
        ] {
            xml = strip(&xml, tag);
        }
        assert!(!xml.contains("<DescriptorName") && !xml.contains("<Reference>"));
        std::fs::write(dir.join(name.trim_end_matches(".gz")), xml).unwrap();
    }
}

/// The pair sources that need relations: the bare corpus makes no pairs with them.
const RELATION_SOURCES: (&str, &str) = ("MEDEMBED__PAIRS__SOURCES", "citation,mesh,keyword");

fn medembed(args: &[&str], data: &Path) -> Output {
    medembed_with(args, data, &[RELATION_SOURCES])
}

fn medembed_with(args: &[&str], data: &Path, envs: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_medembed"))
        .args(args)
        .envs(envs.iter().copied())
        .arg("--data")
        .arg(data)
        .env("MEDEMBED__TRAIN__DEVICE", "cpu")
        .env("MEDEMBED__INDEX__MAX_SEQ_LENGTH", "128")
        .output()
        .expect("medembed runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn run(corpus: &Path, data: &Path, extra: &[&str]) -> (String, String) {
    run_with(corpus, data, extra, &[RELATION_SOURCES])
}

fn run_with(corpus: &Path, data: &Path, extra: &[&str], envs: &[(&str, &str)]) -> (String, String) {
    let source = format!("files:{}", corpus.display());
    let mut args = vec![
        "run",
        "--source",
        &source,
        "--base-model",
        env!("MEDEMBED_TEST_MODEL_DIR"),
    ];
    args.extend(extra);
    let out = medembed_with(&args, data, envs);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(
        out.status.success(),
        "medembed run failed:\n{stderr}\n{stdout}"
    );
    (stdout, stderr)
}

fn job_id(data: &Path) -> String {
    let mut jobs: Vec<String> = std::fs::read_dir(data.join("jobs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    jobs.pop().unwrap()
}

#[test]
fn a_corpus_without_mesh_or_references_is_indexed_with_the_base_model() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = tmp.path().join("bare");
    bare_corpus(&corpus);
    let data = tmp.path().join("data");
    let (summary, stderr) = run(&corpus, &data, &[]);
    let job = job_id(&data);

    // Done, with every record read (91 + 100 in the two files; no --max-articles: a files:
    // source is read whole).
    assert!(summary.contains(&format!("job {job} done")), "{summary}");
    assert!(summary.contains("articles  191 fetched"), "{summary}");
    assert!(!summary.contains("--max-articles"), "{summary}");
    // It says that it did not train, why, and what would help.
    for expected in [
        "training  none: no positive training pairs",
        "published unchanged",
        "not fine-tuned",
        "MeSH descriptors, author keywords or reference lists",
        "index ",
    ] {
        assert!(
            summary.contains(expected),
            "{expected:?} in:\n{summary}\n{stderr}"
        );
    }
    let metrics: serde_json::Value = serde_json::from_slice(
        &std::fs::read(data.join("jobs").join(&job).join("model/metrics.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(metrics["optimizer_steps"], 0);
    assert!(
        metrics["not_trained"]
            .as_str()
            .is_some_and(|r| r.contains("no positive training pairs")),
        "{metrics}"
    );
    let status = medembed(&["status", &job], &data);
    let status_text = text(&status.stdout);
    assert!(status.status.success(), "{}", text(&status.stderr));
    assert!(status_text.contains("not trained"), "{status_text}");
    assert!(!status_text.contains("FAILED"), "{status_text}");

    // Searchable in every mode; hybrid finds by both rankings.
    for mode in ["hybrid", "dense", "lexical"] {
        let out = medembed(
            &[
                "search",
                "--json",
                "--mode",
                mode,
                "amyloid beta plaques in mouse brain",
            ],
            &data,
        );
        assert!(out.status.success(), "{mode}: {}", text(&out.stderr));
        let found: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let hits = found["hits"].as_array().unwrap();
        assert_eq!(hits.len(), 10, "{mode}: {found}");
        if mode == "hybrid" {
            assert!(
                hits.iter()
                    .any(|h| h["found_by"] == serde_json::json!(["lexical", "dense"])),
                "{found}"
            );
        }
    }
    // The summary's printed search command works as printed (the binary's own path).
    let line = summary
        .lines()
        .find(|l| l.contains(" search --data "))
        .expect("a search command");
    let program = line.split_whitespace().next().unwrap();
    assert!(
        Path::new(program).is_file(),
        "{program} is the medembed binary"
    );

    // `medembed eval --job` over a collection whose corpus is the job's own (every indexed
    // document, as dense search with a large k lists them): the job's index answers. Queries
    // are three documents' titles under other ids, each judging its own document relevant.
    let out = medembed(
        &[
            "search", "--json", "--mode", "dense", "-k", "1000", "anything",
        ],
        &data,
    );
    let all: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let documents = all["hits"].as_array().unwrap();
    assert_eq!(documents.len(), 185, "every indexed document");
    let beir = tmp.path().join("beir");
    std::fs::create_dir_all(beir.join("qrels")).unwrap();
    let line = |v: serde_json::Value| v.to_string() + "\n";
    let corpus_lines: String = documents
        .iter()
        .map(|d| {
            line(serde_json::json!({"_id": d["id"], "title": d["title"], "text": d["snippet"]}))
        })
        .collect();
    std::fs::write(beir.join("corpus.jsonl"), corpus_lines).unwrap();
    let picked = [&documents[3], &documents[60], &documents[150]];
    let queries: String = picked
        .iter()
        .enumerate()
        .map(|(i, d)| line(serde_json::json!({"_id": format!("q{i}"), "text": d["title"]})))
        .collect();
    std::fs::write(beir.join("queries.jsonl"), queries).unwrap();
    let qrels: String = picked
        .iter()
        .enumerate()
        .map(|(i, d)| format!("q{i}\t{}\t1\n", d["id"].as_str().unwrap()))
        .collect();
    std::fs::write(
        beir.join("qrels/test.tsv"),
        format!("query-id\tcorpus-id\tscore\n{qrels}"),
    )
    .unwrap();
    let out = medembed(
        &[
            "eval",
            "--beir",
            beir.to_str().unwrap(),
            "--job",
            &job,
            "--json",
        ],
        &data,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["job_index"], true, "{report}");
    let rows: Vec<(String, String)> = report["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["mode"].as_str().unwrap().into(),
                r["model"].as_str().unwrap_or("-").into(),
            )
        })
        .collect();
    let row = |m: &str, model: &str| (m.to_string(), model.to_string());
    assert_eq!(
        rows,
        [
            row("lexical", "-"),
            row("dense", "base"),
            row("dense", "job"),
            row("hybrid", "base"),
            row("hybrid", "job")
        ]
    );
    // A title finds its own article first by BM25, and in the job's own hybrid search.
    for r in report["results"].as_array().unwrap() {
        if r["model"] != "base" && r["mode"] != "dense" {
            assert!((r["mrr_at_10"].as_f64().unwrap() - 1.0).abs() < 1e-9, "{r}");
        }
    }
    // A corpus with no relations has no dev set, and says why.
    let out = medembed(
        &["dev-set", "--out", tmp.path().join("dev").to_str().unwrap()],
        &data,
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("no held-out article has a citation, MeSH or keyword relation"),
        "{}",
        text(&out.stderr)
    );

    // --max-articles, given, stops a files: source part-way, and the summary says so.
    let limited = tmp.path().join("limited");
    let (summary, _) = run(&corpus, &limited, &["--max-articles", "50"]);
    assert!(summary.contains("articles  50 fetched"), "{summary}");
    assert!(
        summary.contains("--max-articles 50 reached: 2 of 2 files not read to the end"),
        "{summary}"
    );
}

#[test]
fn a_corpus_without_mesh_or_references_trains_on_its_titles() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = tmp.path().join("bare");
    bare_corpus(&corpus);
    let data = tmp.path().join("data");
    // The default sources; a short step budget (the test is about what trains, not how well);
    // mining (off by default) on, to cover it over title pairs.
    let (summary, stderr) = run_with(
        &corpus,
        &data,
        &[],
        &[
            ("MEDEMBED__TRAIN__MAX_STEPS", "2"),
            ("MEDEMBED__TRAIN__MINED_NEGATIVES", "1"),
        ],
    );
    let job = job_id(&data);
    assert!(summary.contains(&format!("job {job} done")), "{summary}");
    assert!(!summary.contains("not fine-tuned"), "{summary}\n{stderr}");
    let root = data.join("jobs").join(&job);
    let stats: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root.join("pairs/stats.json")).unwrap()).unwrap();
    let train = stats["pairs"]["train"].as_object().unwrap();
    let titles = train["title"]["1"].as_u64().unwrap();
    assert!(titles > 100, "{stats}");
    assert!(
        ["citation", "mesh", "keyword"]
            .iter()
            .all(|s| !train.contains_key(*s)),
        "only title pairs: {stats}"
    );
    let metrics: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root.join("model/metrics.json")).unwrap()).unwrap();
    assert_eq!(metrics["optimizer_steps"], 2, "{metrics}");
    assert!(metrics.get("not_trained").is_none(), "{metrics}");
    // Negatives mined for the queries the two steps of 32 reach (the guard may leave one
    // without), and a query-style evaluation in the default (hybrid) mode.
    assert_eq!(metrics["mining"]["queries"], 64, "{metrics}");
    assert!(
        metrics["mining"]["negatives"].as_u64().unwrap() >= 50,
        "{metrics}"
    );
    let val = &metrics["baseline"]["val"];
    assert_eq!(val["mode"], "hybrid", "{metrics}");
    assert!(val["queries"].as_u64().unwrap() >= 5, "{metrics}");
    assert!(
        val["ndcg_at_10"].as_f64().unwrap() > 0.3,
        "titles find their articles: {val}"
    );
    assert!(summary.contains("hard negatives mined"), "{summary}");
}
