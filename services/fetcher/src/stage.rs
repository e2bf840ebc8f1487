//! The fetch stage: a [`FetchTask`] becomes `raw/part-NNNNN.parquet` files, then
//! `raw/_manifest.json`, then one clean task per part and a pairs check.
//!
//! Resumable: E-utilities jobs first store the full id list (`raw/_ids.json`), so part N always
//! holds the same ids; a redelivered or restarted task keeps every part already written and
//! fetches only the missing ones. (The search history's WebEnv expires after hours, so parts are
//! fetched by id, POSTed, not by WebEnv.) Bulk-file jobs read files in name order, so parts are
//! deterministic too. The manifest is written last: its presence means the fetch is complete.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use medembed_pipeline::config::{FetchSettings, Settings, StoreSettings};
use medembed_pipeline::messages::{
    ArticleSource, CleanTask, Database, FetchTask, JobId, JobSpec, PairsCheck,
};
use medembed_pipeline::runner::{Outgoing, Stage, StageError, TaskContext};
use medembed_pipeline::status::StageStatus;
use medembed_pipeline::store::{ObjectStore, StoreError};
use medembed_pipeline::{keys, table};
use prometheus::{IntCounterVec, Opts, Registry};

use crate::article::{ArticleReader, RawArticle, Reference};
use crate::eutils::{EutilsClient, EutilsError, EutilsMetrics, RateLimiter, parse_date};
use crate::files::{FileKind, read_file};
use crate::xml::{Limits, XmlError};
use medembed_corpus::raw::{RawManifest, RawPartInfo, from_batches, raw_schema, to_batch};

const STAGE: &str = "fetch";

/// `medembed_articles_*` metrics.
#[derive(Debug, Clone)]
pub struct FetchMetrics {
    pub fetched: IntCounterVec,
    pub skipped: IntCounterVec,
}

impl FetchMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let fetched = IntCounterVec::new(
            Opts::new(
                "medembed_articles_fetched_total",
                "Articles written to raw parts, by database (pmc, pubmed, files).",
            ),
            &["db"],
        )?;
        let skipped = IntCounterVec::new(
            Opts::new(
                "medembed_articles_skipped_total",
                "Articles not kept, by reason (no_id, no_text, duplicate, too_large, unreadable).",
            ),
            &["reason"],
        )?;
        registry.register(Box::new(fetched.clone()))?;
        registry.register(Box::new(skipped.clone()))?;
        Ok(Self { fetched, skipped })
    }
}

#[derive(Debug)]
pub struct FetchStage {
    client: EutilsClient,
    efetch_batch: usize,
    elink_batch: usize,
    fetch: FetchSettings,
    store_settings: StoreSettings,
    metrics: FetchMetrics,
}

impl FetchStage {
    /// The stage, its metrics registered in `registry`.
    pub fn new(settings: &Settings, registry: &Registry) -> prometheus::Result<Self> {
        let limiter = Arc::new(RateLimiter::new(settings.ncbi.effective_rate()));
        let eutils_metrics = EutilsMetrics::register(registry)?;
        eutils_metrics
            .rate_limit
            .set(settings.ncbi.effective_rate());
        Ok(Self {
            client: EutilsClient::new(&settings.ncbi, limiter, Some(eutils_metrics)),
            efetch_batch: settings.ncbi.efetch_batch,
            elink_batch: settings.ncbi.elink_batch,
            fetch: settings.fetch.clone(),
            store_settings: settings.store.clone(),
            metrics: FetchMetrics::register(registry)?,
        })
    }

    fn limits(&self) -> Limits {
        Limits {
            max_record_bytes: self.fetch.max_record_bytes,
            max_depth: self.fetch.max_xml_depth,
            max_file_bytes: self.fetch.max_file_bytes,
        }
    }
}

fn eutils_error(e: EutilsError) -> StageError {
    if e.is_retryable() {
        StageError::retryable(e)
    } else {
        StageError::permanent(e)
    }
}

/// Reads `jobs/{job}/job.json`.
pub async fn load_spec(store: &dyn ObjectStore, job: JobId) -> Result<JobSpec, StageError> {
    let key = keys::job_spec(job);
    let bytes = store.get(&key).await.map_err(|e| match e {
        StoreError::NotFound { .. } => {
            StageError::permanent(format!("job {job}: {key} does not exist"))
        }
        other => other.into(),
    })?;
    serde_json::from_slice(&bytes)
        .map_err(|e| StageError::permanent(format!("job {job}: {key}: {e}")))
}

/// Collects articles into parts of `per_part` (or fewer, once they hold `max_part_bytes`),
/// keeping parts that already exist.
struct Parts<'a> {
    job: JobId,
    store: &'a dyn ObjectStore,
    per_part: usize,
    max_part_bytes: u64,
    max_articles: u64,
    accepted: u64,
    buffer: Vec<RawArticle>,
    buffer_bytes: u64,
    seen: HashSet<String>,
    manifest: RawManifest,
    metrics: &'a FetchMetrics,
    db_label: &'static str,
}

impl<'a> Parts<'a> {
    fn skip(&mut self, reason: &str) {
        *self.manifest.skipped.entry(reason.to_string()).or_default() += 1;
        self.metrics.skipped.with_label_values(&[reason]).inc();
    }

    fn full(&self) -> bool {
        self.accepted >= self.max_articles
    }

    /// Keeps an article unless it has no id, no text, or was seen before.
    fn accept(&mut self, article: RawArticle) {
        if self.full() {
            return;
        }
        if article.id.is_empty() {
            return self.skip("no_id");
        }
        if article.title.is_empty()
            && article.abstract_text.is_empty()
            && article.body_sections.is_empty()
        {
            return self.skip("no_text");
        }
        if !self.seen.insert(article.id.clone()) {
            return self.skip("duplicate");
        }
        self.accepted += 1;
        self.buffer_bytes += article.approx_bytes() as u64;
        self.buffer.push(article);
    }

    /// Whether the buffer makes a part: `per_part` articles, or `max_part_bytes` of them.
    fn part_ready(&self) -> bool {
        self.buffer.len() >= self.per_part || self.buffer_bytes >= self.max_part_bytes
    }

    fn record_error(&mut self, e: &XmlError) {
        self.skip(
            if matches!(
                e,
                XmlError::RecordTooLarge { .. } | XmlError::NodeTooLarge { .. }
            ) {
                "too_large"
            } else {
                "unreadable"
            },
        );
        if self.manifest.warnings.len() < 100 {
            self.manifest.warnings.push(e.to_string());
        }
    }

    fn next_part(&self) -> u32 {
        self.manifest.parts.len() as u32
    }

    /// The part `part` if it exists already (a resumed job): its article count.
    async fn existing(&self, part: u32) -> Result<Option<u64>, StageError> {
        let key = keys::raw_part(self.job, part);
        if !self.store.exists(&key).await? {
            return Ok(None);
        }
        let batches = table::read(self.store, &key, &raw_schema()).await?;
        let articles = from_batches(&key, &batches).map_err(StageError::permanent)?;
        Ok(Some(articles.len() as u64))
    }

    /// Writes the buffered articles as the next part (or keeps the existing one).
    async fn flush(&mut self) -> Result<(), StageError> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let part = self.next_part();
        let key = keys::raw_part(self.job, part);
        let articles = std::mem::take(&mut self.buffer);
        self.buffer_bytes = 0;
        let count = match self.existing(part).await? {
            Some(n) => n,
            None => {
                let batch = to_batch(&key, &articles).map_err(StageError::permanent)?;
                table::write(self.store, &key, &raw_schema(), &[batch]).await?;
                self.metrics
                    .fetched
                    .with_label_values(&[self.db_label])
                    .inc_by(articles.len() as u64);
                articles.len() as u64
            }
        };
        self.manifest.parts.push(RawPartInfo {
            part,
            key,
            articles: count,
        });
        self.manifest.articles += count;
        Ok(())
    }
}

#[async_trait]
impl Stage for FetchStage {
    type Task = FetchTask;

    async fn process(
        &self,
        task: FetchTask,
        ctx: &TaskContext,
    ) -> Result<Vec<Outgoing>, StageError> {
        let job = task.job_id;
        let store = ctx.store.as_ref();
        let manifest = match RawManifest::load(store, job).await? {
            // Done before (a redelivery after the manifest was written): publish again, harmlessly.
            Some(manifest) => manifest,
            None => {
                let spec = load_spec(store, job).await?;
                let mut status = StageStatus::load(store, job, STAGE).await?;
                status.start();
                status.save(store, job).await?;
                let db_label = match (&spec.source, spec.db) {
                    (ArticleSource::Files { .. }, _) => "files",
                    (_, Database::Pmc) => "pmc",
                    (_, Database::Pubmed) => "pubmed",
                };
                let mut parts = Parts {
                    job,
                    store,
                    per_part: self.fetch.articles_per_part,
                    max_part_bytes: self.fetch.max_part_bytes,
                    max_articles: spec.max_articles,
                    accepted: 0,
                    buffer: Vec::new(),
                    buffer_bytes: 0,
                    seen: HashSet::new(),
                    manifest: RawManifest {
                        version: 1,
                        job_id: job,
                        parts: vec![],
                        articles: 0,
                        skipped: BTreeMap::new(),
                        warnings: vec![],
                    },
                    metrics: &self.metrics,
                    db_label,
                };
                match &spec.source {
                    ArticleSource::Eutils => {
                        self.fetch_eutils(&spec, &mut parts, &mut status).await?
                    }
                    ArticleSource::Files { path } => {
                        self.fetch_files(path, &mut parts, &mut status).await?
                    }
                }
                let manifest = parts.manifest;
                manifest.save(store).await?;
                status.counts.insert("articles".into(), manifest.articles);
                status
                    .counts
                    .insert("parts".into(), manifest.parts.len() as u64);
                for (reason, n) in &manifest.skipped {
                    status.counts.insert(format!("skipped_{reason}"), *n);
                }
                status.warnings = manifest.warnings.iter().take(20).cloned().collect();
                status.finish();
                status.save(store, job).await?;
                tracing::info!(%job, articles = manifest.articles, parts = manifest.parts.len(), "fetch done");
                manifest
            }
        };
        let mut out: Vec<Outgoing> = manifest
            .parts
            .iter()
            .map(|p| {
                Outgoing::task(&CleanTask {
                    job_id: job,
                    part: p.part,
                })
            })
            .collect();
        out.push(Outgoing::task(&PairsCheck { job_id: job }));
        Ok(out)
    }
}

impl FetchStage {
    async fn fetch_eutils(
        &self,
        spec: &JobSpec,
        parts: &mut Parts<'_>,
        status: &mut StageStatus,
    ) -> Result<(), StageError> {
        let job = spec.job_id;
        let store = parts.store;
        let (db, jats) = match spec.db {
            Database::Pmc => ("pmc", true),
            Database::Pubmed => ("pubmed", false),
        };
        let ids_key = format!("jobs/{job}/raw/_ids.json");
        let ids: Vec<String> = match store.get(&ids_key).await {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| StageError::permanent(format!("{ids_key}: {e}")))?,
            Err(StoreError::NotFound { .. }) => {
                let mut term = spec.query.clone();
                if jats && spec.open_access_only {
                    term = format!("({term}) AND \"open access\"[filter]");
                }
                let from = parse_date(spec.from.as_deref().unwrap_or("1800"), false)
                    .map_err(eutils_error)?;
                let to = match spec.to.as_deref() {
                    Some(t) => parse_date(t, true).map_err(eutils_error)?,
                    None => time::OffsetDateTime::now_utc().date(),
                };
                if from > to {
                    return Err(StageError::permanent(format!(
                        "job {job}: from {:?} is after to {:?}",
                        spec.from, spec.to
                    )));
                }
                let mut warnings = Vec::new();
                let ids = self
                    .client
                    .search_ids(db, &term, from, to, spec.max_articles, &mut warnings)
                    .await
                    .map_err(eutils_error)?;
                parts.manifest.warnings.extend(warnings.iter().cloned());
                status.warnings = warnings;
                store
                    .put(
                        &ids_key,
                        Bytes::from(serde_json::to_vec(&ids).expect("ids")),
                    )
                    .await?;
                ids
            }
            Err(e) => return Err(e.into()),
        };
        if ids.is_empty() {
            parts
                .manifest
                .warnings
                .push(format!("the query {:?} found no articles", spec.query));
        }
        status.total = ids.len() as u64;
        status.unit = "articles".into();
        for chunk in ids.chunks(parts.per_part) {
            let part = parts.next_part();
            if let Some(n) = parts.existing(part).await? {
                parts.manifest.parts.push(RawPartInfo {
                    part,
                    key: keys::raw_part(job, part),
                    articles: n,
                });
                parts.manifest.articles += n;
                for id in chunk {
                    parts.seen.insert(id.clone());
                }
            } else {
                let mut articles = Vec::new();
                for batch in chunk.chunks(self.efetch_batch) {
                    let body = self.client.efetch(db, batch).await.map_err(eutils_error)?;
                    let name = format!("efetch {db} ({} ids from {})", batch.len(), batch[0]);
                    let reader = if jats {
                        ArticleReader::jats(std::io::Cursor::new(body), name, self.limits())
                    } else {
                        ArticleReader::pubmed(std::io::Cursor::new(body), name, self.limits())
                    };
                    for article in reader {
                        match article {
                            Ok(a) => articles.push(a),
                            Err(e) if e.is_record_local() => parts.record_error(&e),
                            // A cut-off or garbled response: fetch it again later.
                            Err(e) => return Err(StageError::retryable(e)),
                        }
                    }
                }
                if !jats {
                    self.add_citations(spec, &mut articles).await?;
                }
                for a in articles {
                    parts.accept(a);
                }
                parts.flush().await?;
            }
            status.done += chunk.len() as u64;
            status
                .counts
                .insert("articles".into(), parts.manifest.articles);
            status.save(store, job).await?;
        }
        Ok(())
    }

    /// PubMed records rarely carry their reference list: ask elink for it (and "cited by" if the
    /// job wants it). Links become references; the pair-builder treats citation pairs as undirected.
    async fn add_citations(
        &self,
        spec: &JobSpec,
        articles: &mut [RawArticle],
    ) -> Result<(), StageError> {
        let pmids: Vec<String> = articles.iter().filter_map(|a| a.pmid.clone()).collect();
        let mut links: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut names = vec!["pubmed_pubmed_refs"];
        if spec.cited_by {
            names.push("pubmed_pubmed_citedin");
        }
        for name in names {
            for batch in pmids.chunks(self.elink_batch) {
                for (id, linked) in self.client.elink(name, batch).await.map_err(eutils_error)? {
                    links.entry(id).or_default().extend(linked);
                }
            }
        }
        for a in articles.iter_mut() {
            let Some(linked) = a.pmid.as_ref().and_then(|p| links.get(p)) else {
                continue;
            };
            for pmid in linked {
                if !a.references.iter().any(|r| r.pmid.as_ref() == Some(pmid)) {
                    a.references.push(Reference {
                        pmid: Some(pmid.clone()),
                        pmcid: None,
                        doi: None,
                    });
                }
            }
        }
        Ok(())
    }

    async fn fetch_files(
        &self,
        path: &str,
        parts: &mut Parts<'_>,
        status: &mut StageStatus,
    ) -> Result<(), StageError> {
        let job = parts.job;
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Item>(256);
        // Articles read but not yet in a part are bounded in bytes, not only in number: the
        // reader waits for room (its permit goes when the article reaches the part buffer).
        let budget = u32::try_from(self.fetch.max_buffered_bytes).unwrap_or(u32::MAX);
        let room = Arc::new(tokio::sync::Semaphore::new(budget as usize));
        let sender = ItemSender {
            tx,
            room: room.clone(),
            budget,
            runtime: tokio::runtime::Handle::current(),
        };
        let limits = self.limits();
        let producer: tokio::task::JoinHandle<Result<(), StageError>> =
            if let Some(rest) = path.strip_prefix("s3://") {
                let bucket = rest.split_once('/').map_or(rest, |(b, _)| b).to_string();
                let (source, prefix) =
                    medembed_pipeline::store::open_s3_url(&self.store_settings, path).await?;
                let files: Vec<String> = source
                    .list(&prefix)
                    .await?
                    .into_iter()
                    .map(|m| m.key)
                    .filter(|k| FileKind::of(k).is_some())
                    .collect();
                status.total = files.len() as u64;
                tokio::spawn(async move {
                    for key in files {
                        let name = format!("s3://{bucket}/{key}");
                        // Streamed as it is parsed: a bulk object of many GB never sits in
                        // memory whole.
                        let body = match source.reader(&key).await {
                            Ok(body) => body,
                            Err(e) if e.is_retryable() => return Err(e.into()),
                            Err(e) => {
                                sender.send(Item::FileError(format!("{name}: {e}")));
                                sender.send(Item::FileDone);
                                continue;
                            }
                        };
                        let sender = sender.clone();
                        let open = tokio::task::spawn_blocking(move || {
                            if let Some(kind) = FileKind::of(&name) {
                                send_file(&name, kind, body, limits, &sender);
                            }
                            sender.send(Item::FileDone)
                        })
                        .await
                        .expect("reader does not panic");
                        if !open {
                            break;
                        }
                    }
                    Ok(())
                })
            } else {
                let files = list_local(std::path::Path::new(path))
                    .map_err(|e| StageError::permanent(format!("source files:{path}: {e}")))?;
                status.total = files.len() as u64;
                tokio::task::spawn_blocking(move || {
                    for file in files {
                        let name = file.display().to_string();
                        let kind = FileKind::of(&name).expect("listed files have a known kind");
                        match std::fs::File::open(&file) {
                            Ok(f) => send_file(&name, kind, f, limits, &sender),
                            Err(e) => {
                                sender.send(Item::FileError(format!("{name}: {e}")));
                            }
                        }
                        if !sender.send(Item::FileDone) {
                            break;
                        }
                    }
                    Ok(())
                })
            };
        status.unit = "files".into();
        while let Some(item) = rx.recv().await {
            match item {
                Item::Article(a, permit) => {
                    parts.accept(*a);
                    drop(permit);
                    if parts.part_ready() {
                        parts.flush().await?;
                        status
                            .counts
                            .insert("articles".into(), parts.manifest.articles);
                        status.save(parts.store, job).await?;
                    }
                }
                Item::RecordError(e) => parts.record_error(&e),
                Item::FileError(e) => {
                    parts.skip("unreadable");
                    if parts.manifest.warnings.len() < 100 {
                        parts.manifest.warnings.push(e);
                    }
                }
                Item::FileDone => status.done += 1,
            }
            if parts.full() {
                break;
            }
        }
        drop(rx);
        // A reader waiting for room must see the channel closed, not wait forever.
        room.close();
        parts.flush().await?;
        match producer.await {
            Ok(result) => result,
            Err(e) => Err(StageError::permanent(format!("file reader failed: {e}"))),
        }
    }
}

/// What the file-reading thread sends to the part writer. An article carries its share of
/// `fetch.max_buffered_bytes` until the writer has taken it.
enum Item {
    Article(Box<RawArticle>, tokio::sync::OwnedSemaphorePermit),
    RecordError(XmlError),
    FileError(String),
    FileDone,
}

/// The reading thread's end of the channel: blocking sends, articles admitted by bytes.
#[derive(Clone)]
struct ItemSender {
    tx: tokio::sync::mpsc::Sender<Item>,
    room: Arc<tokio::sync::Semaphore>,
    /// The room's size (`fetch.max_buffered_bytes`, at most 4 GiB).
    budget: u32,
    runtime: tokio::runtime::Handle,
}

impl ItemSender {
    /// Sends `item` (waiting for room); false once the writer has stopped listening.
    fn send(&self, item: Item) -> bool {
        self.tx.blocking_send(item).is_ok()
    }

    /// Sends an article once its bytes fit the buffer budget; false once the writer stopped.
    fn send_article(&self, article: RawArticle) -> bool {
        // Never more than the whole budget, so that one article always fits.
        let bytes = u32::try_from(article.approx_bytes())
            .unwrap_or(u32::MAX)
            .clamp(1, self.budget);
        match self
            .runtime
            .block_on(self.room.clone().acquire_many_owned(bytes))
        {
            Ok(permit) => self.send(Item::Article(Box::new(article), permit)),
            Err(_) => false, // closed: the writer is done
        }
    }
}

fn send_file(
    name: &str,
    kind: FileKind,
    input: impl std::io::Read,
    limits: Limits,
    tx: &ItemSender,
) {
    let mut each = |r: Result<RawArticle, XmlError>| {
        let _ = match r {
            Ok(a) => tx.send_article(a),
            Err(e) => tx.send(Item::RecordError(e)),
        };
    };
    let mut on_doc = |e: crate::files::FileError| {
        let _ = tx.send(Item::FileError(e.to_string()));
    };
    if let Err(e) = read_file(name, kind, input, limits, &mut each, &mut on_doc) {
        let _ = tx.send(Item::FileError(e.to_string()));
    }
}

/// Deepest folder nesting a `files:` walk goes into, below its root.
pub const MAX_WALK_DEPTH: usize = 32;
/// Most bulk files one `files:` source may list (the PubMed baseline is ~1,300 files; PMC OA
/// bulk packages a few thousand).
pub const MAX_WALK_FILES: usize = 1_000_000;

/// Bulk files under `path` (or `path` itself), sorted by name so parts are deterministic.
///
/// Symbolic links are followed (a corpus folder of links to the real files is common), but each
/// folder is entered once, by its canonical path, so a link loop ends the walk instead of
/// running forever; the walk also stops with an error deeper than [`MAX_WALK_DEPTH`] or past
/// [`MAX_WALK_FILES`] files.
pub fn list_local(path: &std::path::Path) -> std::io::Result<Vec<std::path::PathBuf>> {
    let invalid = |message: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, message);
    if path.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    if !path.is_dir() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "no such file or directory",
        ));
    }
    let mut out = Vec::new();
    let mut entered = std::collections::HashSet::new();
    let mut stack = vec![(path.to_path_buf(), 0usize)];
    while let Some((dir, depth)) = stack.pop() {
        if !entered.insert(dir.canonicalize()?) {
            continue; // reached again through a link
        }
        for entry in std::fs::read_dir(&dir)? {
            let p = entry?.path();
            if p.is_dir() {
                if depth + 1 > MAX_WALK_DEPTH {
                    return Err(invalid(format!(
                        "{}: folders nested deeper than {MAX_WALK_DEPTH} levels",
                        p.display()
                    )));
                }
                stack.push((p, depth + 1));
            } else if FileKind::of(&p.to_string_lossy()).is_some() && p.is_file() {
                if out.len() == MAX_WALK_FILES {
                    return Err(invalid(format!(
                        "more than {MAX_WALK_FILES} bulk files: name a narrower folder"
                    )));
                }
                out.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}
