//! Scale-out of the clean stage: one vs three `medembed-cleaner` processes over the real
//! RabbitMQ and Garage, on a synthetic bulk corpus of 20,000 PubMed articles (real articles from
//! the sample corpus, each copied under new PMIDs with a distinct first sentence so that none is
//! a duplicate). The fetcher turns the corpus into raw parts first; then the cleaners start and
//! the clock runs until every part is clean. Each cleaner takes one task at a time (prefetch 1),
//! so the comparison is between processes, not threads. Prints one JSON line.
//!
//! cargo build --release --workspace --bins && cargo bench -p medembed-e2e --bench clean_scale_out

use std::time::{Duration, Instant};

use medembed_e2e::deployment::{Deployment, sample_corpus};
use medembed_pipeline::jobs::{self, JobRequest};
use medembed_pipeline::keys;
use medembed_pipeline::messages::JobId;

const ARTICLES: usize = 20_000;
const PER_FILE: usize = 500;

/// The `<PubmedArticle>` elements of the sample corpus that have an abstract.
fn sample_articles() -> Vec<String> {
    let mut out = Vec::new();
    let dir = sample_corpus().join("pubmed");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("sample corpus")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "xml"))
        .collect();
    files.sort();
    for path in files {
        let xml = std::fs::read_to_string(&path).expect("read");
        for chunk in xml.split("<PubmedArticle>").skip(1) {
            let Some((article, _)) = chunk.split_once("</PubmedArticle>") else {
                continue;
            };
            if article.contains("<AbstractText") && article.contains("<PMID") {
                out.push(article.to_string());
            }
        }
    }
    out
}

/// `article` as PMID `pmid`, its abstract opened by a sentence of its own.
fn variant(article: &str, pmid: usize) -> String {
    let start = article.find("<PMID").expect("PMID");
    let end = start + article[start..].find("</PMID>").expect("PMID end") + "</PMID>".len();
    let mut out = format!(
        "{}<PMID Version=\"1\">{pmid}</PMID>{}",
        &article[..start],
        &article[end..]
    );
    // Other ids of the original (PMC, DOI) would make every copy the same article.
    if let (Some(a), Some(b)) = (out.find("<ArticleIdList>"), out.find("</ArticleIdList>")) {
        out.replace_range(a..b + "</ArticleIdList>".len(), "");
    }
    let open = out.find("<AbstractText").expect("abstract");
    let close = open + out[open..].find('>').expect("tag end") + 1;
    out.insert_str(
        close,
        &format!("Synthetic record {pmid} repeats a published abstract for load tests. "),
    );
    format!("<PubmedArticle>{out}</PubmedArticle>")
}

fn write_corpus(dir: &std::path::Path) {
    let articles = sample_articles();
    assert!(articles.len() >= 10, "{} sample abstracts", articles.len());
    std::fs::create_dir_all(dir).expect("mkdir");
    for file in 0..ARTICLES / PER_FILE {
        let mut xml = String::from("<?xml version=\"1.0\" ?>\n<PubmedArticleSet>\n");
        for i in 0..PER_FILE {
            let n = file * PER_FILE + i;
            xml.push_str(&variant(&articles[n % articles.len()], 90_000_000 + n));
            xml.push('\n');
        }
        xml.push_str("</PubmedArticleSet>\n");
        std::fs::write(dir.join(format!("synthetic-{file:03}.xml")), xml).expect("write");
    }
}

/// Seconds `cleaners` processes take to clean a fresh job over the corpus in `corpus`.
async fn clean_seconds(corpus: &std::path::Path, cleaners: usize) -> (f64, usize) {
    let mut d = Deployment::new(
        &format!("scale-{cleaners}"),
        &[
            ("MEDEMBED__QUEUE__PREFETCH", "1"),
            ("MEDEMBED__FETCH__ARTICLES_PER_PART", "500"),
            ("MEDEMBED__LOG__FILTER", "warn"),
        ],
    )
    .await;
    let spec = JobRequest {
        query: String::new(),
        db: Default::default(),
        from: None,
        to: None,
        max_articles: Some(ARTICLES as u64),
        source: format!("files:{}", corpus.display()),
        open_access_only: true,
        cited_by: false,
    }
    .into_spec()
    .expect("spec");
    let job: JobId = spec.job_id;
    jobs::submit(d.store.as_ref(), d.queue.as_ref(), &spec)
        .await
        .expect("submit");
    d.start("medembed-fetcher");
    assert!(
        d.wait_for_key(&keys::raw_manifest(job), Duration::from_secs(1800))
            .await,
        "no raw parts:\n{}",
        d.log_tails()
    );
    let parts = d
        .store
        .list(&format!("jobs/{job}/raw/part-"))
        .await
        .expect("list")
        .len();
    // The fetcher queues the clean tasks after the manifest: wait for all of them.
    let queued = medembed_e2e::eventually(Duration::from_secs(120), || async {
        d.queue.depth("clean").await.unwrap_or(0) >= parts as u64
    })
    .await;
    assert!(queued, "clean tasks not queued:\n{}", d.log_tails());
    d.stop_all();

    let started = Instant::now();
    for _ in 0..cleaners {
        d.start("medembed-cleaner");
    }
    let clean_prefix = keys::clean_prefix(job);
    loop {
        let cleaned = d
            .store
            .list(&clean_prefix)
            .await
            .expect("list")
            .iter()
            .filter(|m| m.key.ends_with(".parquet"))
            .count();
        if cleaned >= parts {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(3600),
            "{cleaned}/{parts} after an hour:\n{}",
            d.log_tails()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    d.stop_all();
    (seconds, parts)
}

#[tokio::main]
async fn main() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let corpus = tmp.path().join("corpus");
    write_corpus(&corpus);
    let (one, parts) = clean_seconds(&corpus, 1).await;
    let (three, _) = clean_seconds(&corpus, 3).await;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "{}",
        serde_json::json!({
            "name": "clean_scale_out",
            "articles": ARTICLES,
            "parts": parts,
            "cores": cores,
            "baseline_one_cleaner_s": (one * 100.0).round() / 100.0,
            "three_cleaners_s": (three * 100.0).round() / 100.0,
            "baseline_articles_per_s": (ARTICLES as f64 / one).round(),
            "three_cleaners_articles_per_s": (ARTICLES as f64 / three).round(),
            "speedup": (one / three * 100.0).round() / 100.0,
        })
    );
}
