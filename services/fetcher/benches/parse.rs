//! Parser throughput: ≥ 100 MB of PubMed XML and of JATS, made by repeating the real fixture
//! articles, parsed into `RawArticle`s on one core. Baseline in the same run: a bare quick-xml
//! event scan of the same bytes (the floor any quick-xml-based parser pays). Prints one JSON line
//! per format. Run: `cargo bench -p medembed-fetcher --bench parse`.

use std::io::Cursor;
use std::time::Instant;

use medembed_fetcher::ArticleReader;
use medembed_fetcher::xml::Limits;

/// The allocator the fetcher binary uses, so the figures are the binary's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
const TARGET_BYTES: usize = 100 * 1024 * 1024;

/// Every `<open …>…</close>` element of the fixture files in `dir`.
fn elements(dir: &str, open: &str, close: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(format!("{FIXTURES}/{dir}"))
        .expect("fixtures")
        .map(|e| e.expect("entry").path())
        .collect();
    files.sort();
    for f in files {
        let Ok(text) = std::fs::read_to_string(&f) else {
            continue;
        };
        let mut rest = text.as_str();
        while let Some(start) = rest.find(open) {
            let Some(len) = rest[start..].find(close) else {
                break;
            };
            let end = start + len + close.len();
            out.push(rest[start..end].to_string());
            rest = &rest[end..];
        }
    }
    out
}

fn corpus(root: &str, articles: &[String]) -> Vec<u8> {
    let mut doc = format!("<?xml version=\"1.0\"?>\n<{root}>\n").into_bytes();
    let mut i = 0;
    while doc.len() < TARGET_BYTES {
        doc.extend_from_slice(articles[i % articles.len()].as_bytes());
        doc.push(b'\n');
        i += 1;
    }
    doc.extend_from_slice(format!("</{root}>\n").as_bytes());
    doc
}

fn scan_only(doc: &[u8]) -> usize {
    let mut reader = quick_xml::Reader::from_reader(doc);
    let mut buf = Vec::new();
    let mut events = 0;
    loop {
        match reader.read_event_into(&mut buf) {
            Ok(quick_xml::events::Event::Eof) => return events,
            Ok(_) => events += 1,
            Err(e) => panic!("scan: {e}"),
        }
        buf.clear();
    }
}

fn bench(name: &str, doc: &[u8], jats: bool) {
    let mb = doc.len() as f64 / 1e6;
    let rss_before = medembed_pipeline::testing::peak_rss_mib();
    let started = Instant::now();
    let events = scan_only(doc);
    let scan_s = started.elapsed().as_secs_f64();

    let started = Instant::now();
    let reader = if jats {
        ArticleReader::jats(Cursor::new(doc), name, Limits::default())
    } else {
        ArticleReader::pubmed(Cursor::new(doc), name, Limits::default())
    };
    let mut articles = 0u64;
    let mut chars = 0u64;
    for a in reader {
        let a = a.expect("fixture articles parse");
        articles += 1;
        chars += (a.title.len() + a.abstract_text.len()) as u64;
    }
    let parse_s = started.elapsed().as_secs_f64();
    println!(
        "{{\"name\":\"parse_{name}\",\"input_mb\":{mb:.1},\"articles\":{articles},\"text_chars\":{chars},\"parse_mb_per_s\":{:.1},\"baseline_quick_xml_scan_mb_per_s\":{:.1},\"baseline_events\":{events},\"parse_vs_scan\":{:.2},\"peak_rss_mib\":{:.0},\"peak_rss_mib_before_parse\":{rss_before:.0},\"threads\":1}}",
        mb / parse_s,
        mb / scan_s,
        scan_s / parse_s,
        medembed_pipeline::testing::peak_rss_mib()
    );
}

fn main() {
    let pubmed = corpus(
        "PubmedArticleSet",
        &elements("pubmed", "<PubmedArticle>", "</PubmedArticle>"),
    );
    bench("pubmed", &pubmed, false);
    drop(pubmed);
    let jats = corpus(
        "pmc-articleset",
        &elements("jats", "<article ", "</article>"),
    );
    bench("jats", &jats, true);
}
