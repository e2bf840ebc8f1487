//! The NCBI E-utilities client: esearch (with history, split by date when a search holds more than
//! PubMed's 10,000-id window), efetch in batches, elink for citations.
//!
//! One [`RateLimiter`] per process spaces requests evenly (3/s without an API key, 10/s with one):
//! even spacing, not bursts, because NCBI counts requests per second. Every request carries `tool`,
//! `email` and `api_key`. HTTP 429, 5xx, timeouts and the rate-limit JSON body (which can come with
//! HTTP 200) are retried with exponential backoff and jitter, honouring `Retry-After`. An `<ERROR>`
//! body is a permanent error; `ErrorList`/`WarningList` entries become warnings for the job status.

use std::collections::BTreeMap;
use std::io::Cursor;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use medembed_pipeline::config::NcbiSettings;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};
use time::Date;

use crate::xml::{Element, Limits, RecordReader};

/// PubMed and PMC return at most this many ids for one search.
pub const SEARCH_WINDOW: u64 = 9_999;

#[derive(Debug, thiserror::Error)]
pub enum EutilsError {
    #[error("E-utilities {endpoint}: HTTP {status}: {snippet}")]
    Http {
        endpoint: &'static str,
        status: u16,
        snippet: String,
    },
    #[error("E-utilities {endpoint}: gave up after {attempts} attempts: {last}")]
    GaveUp {
        endpoint: &'static str,
        attempts: u32,
        last: String,
    },
    #[error("E-utilities {endpoint}: NCBI error: {message}")]
    Ncbi {
        endpoint: &'static str,
        message: String,
    },
    #[error("E-utilities {endpoint}: unreadable response: {message}")]
    Parse {
        endpoint: &'static str,
        message: String,
    },
    #[error("E-utilities: invalid date {value:?} (use YYYY, YYYY/MM or YYYY/MM/DD)")]
    Date { value: String },
}

impl EutilsError {
    /// Whether the task should be tried again later (the service was unavailable for a while).
    pub fn is_retryable(&self) -> bool {
        matches!(self, EutilsError::GaveUp { .. })
    }
}

pub type Result<T, E = EutilsError> = std::result::Result<T, E>;

/// Spaces requests evenly across every task of the process, 2% under `rate`: requests leave
/// exactly on schedule but arrive with network jitter, and a server counting requests per second
/// must never see one too many.
#[derive(Debug)]
pub struct RateLimiter {
    interval: Duration,
    next: tokio::sync::Mutex<tokio::time::Instant>,
}

impl RateLimiter {
    pub fn new(requests_per_second: f64) -> Self {
        Self {
            interval: Duration::from_secs_f64(1.0 / (requests_per_second * 0.98)),
            next: tokio::sync::Mutex::new(tokio::time::Instant::now()),
        }
    }

    /// Waits for this caller's slot.
    pub async fn acquire(&self) {
        let slot = {
            let mut next = self.next.lock().await;
            let now = tokio::time::Instant::now();
            let slot = (*next).max(now);
            *next = slot + self.interval;
            slot
        };
        tokio::time::sleep_until(slot).await;
    }
}

/// The `medembed_eutils_*` metrics.
#[derive(Debug, Clone)]
pub struct EutilsMetrics {
    pub requests: IntCounterVec,
    pub retries: IntCounterVec,
    pub duration: HistogramVec,
    /// The request rate this process holds itself to (for dashboards: rate vs limit).
    pub rate_limit: prometheus::Gauge,
}

impl EutilsMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let requests = IntCounterVec::new(
            Opts::new(
                "medembed_eutils_requests_total",
                "E-utilities requests by endpoint and HTTP status (\"error\" = no response).",
            ),
            &["endpoint", "status"],
        )?;
        let retries = IntCounterVec::new(
            Opts::new(
                "medembed_eutils_retries_total",
                "E-utilities retries by reason (http_429, http_5xx, rate_limit_body, transport).",
            ),
            &["reason"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "medembed_eutils_request_duration_seconds",
                "Duration of one E-utilities request.",
            )
            .buckets(vec![0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0]),
            &["endpoint"],
        )?;
        let rate_limit = prometheus::Gauge::new(
            "medembed_eutils_rate_limit_per_second",
            "E-utilities requests per second this process allows itself (NCBI: 3, or 10 with a key).",
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(retries.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(rate_limit.clone()))?;
        // Series exist from the start (at zero), so dashboards and alerts see them before the
        // first request.
        for endpoint in ["esearch", "efetch", "elink"] {
            duration.with_label_values(&[endpoint]);
            requests.with_label_values(&[endpoint, "200"]);
        }
        for reason in ["http_429", "http_5xx", "rate_limit_body", "transport"] {
            retries.with_label_values(&[reason]);
        }
        Ok(Self {
            requests,
            retries,
            duration,
            rate_limit,
        })
    }
}

/// What one esearch returned.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SearchResult {
    pub count: u64,
    pub ids: Vec<String>,
    pub web_env: Option<String>,
    pub query_key: Option<String>,
    /// `ErrorList` (e.g. PhraseNotFound) and `WarningList` entries.
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct EutilsClient {
    http: reqwest::Client,
    base_url: String,
    identity: Vec<(String, String)>,
    limiter: Arc<RateLimiter>,
    max_retries: u32,
    retry_base: Duration,
    metrics: Option<EutilsMetrics>,
}

impl EutilsClient {
    pub fn new(
        settings: &NcbiSettings,
        limiter: Arc<RateLimiter>,
        metrics: Option<EutilsMetrics>,
    ) -> Self {
        let mut identity = vec![("tool".to_string(), settings.tool.clone())];
        if !settings.email.is_empty() {
            identity.push(("email".to_string(), settings.email.clone()));
        }
        if !settings.api_key.is_empty() {
            identity.push(("api_key".to_string(), settings.api_key.expose().to_string()));
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(settings.timeout_secs))
            .user_agent(concat!("medembed/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("a TLS client with default settings builds");
        Self {
            http,
            base_url: settings.base_url.trim_end_matches('/').to_string(),
            identity,
            limiter,
            max_retries: settings.max_retries,
            retry_base: Duration::from_millis(settings.retry_base_delay_ms),
            metrics,
        }
    }

    fn count_request(&self, endpoint: &str, status: &str, started: Instant) {
        if let Some(m) = &self.metrics {
            m.requests.with_label_values(&[endpoint, status]).inc();
            m.duration
                .with_label_values(&[endpoint])
                .observe(started.elapsed().as_secs_f64());
        }
    }

    fn count_retry(&self, reason: &str) {
        if let Some(m) = &self.metrics {
            m.retries.with_label_values(&[reason]).inc();
        }
    }

    /// POSTs `params` to `{endpoint}.fcgi` with rate limiting and retries; returns the body.
    pub async fn request(
        &self,
        endpoint: &'static str,
        params: &[(&str, String)],
    ) -> Result<Bytes> {
        let url = format!("{}/{endpoint}.fcgi", self.base_url);
        let mut form: Vec<(&str, &str)> = params.iter().map(|(k, v)| (*k, v.as_str())).collect();
        form.extend(self.identity.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let mut attempt = 0;
        loop {
            attempt += 1;
            self.limiter.acquire().await;
            let started = Instant::now();
            let (reason, retry_after, last) = match self.http.post(&url).form(&form).send().await {
                Err(e) => {
                    self.count_request(endpoint, "error", started);
                    ("transport", None, e.to_string())
                }
                Ok(response) => {
                    let status = response.status().as_u16();
                    let retry_after = response
                        .headers()
                        .get(reqwest::header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .map(Duration::from_secs);
                    let body = response.bytes().await;
                    self.count_request(endpoint, &status.to_string(), started);
                    match body {
                        Err(e) => ("transport", None, e.to_string()),
                        Ok(_) if status == 429 => ("http_429", retry_after, "HTTP 429".to_string()),
                        Ok(_) if status >= 500 => {
                            ("http_5xx", retry_after, format!("HTTP {status}"))
                        }
                        Ok(body) if is_rate_limit_body(&body) => (
                            "rate_limit_body",
                            retry_after,
                            "API rate limit exceeded".to_string(),
                        ),
                        Ok(body) if status >= 400 => {
                            return Err(EutilsError::Http {
                                endpoint,
                                status,
                                snippet: snippet(&body),
                            });
                        }
                        Ok(body) => return Ok(body),
                    }
                }
            };
            if attempt > self.max_retries {
                return Err(EutilsError::GaveUp {
                    endpoint,
                    attempts: attempt,
                    last,
                });
            }
            self.count_retry(reason);
            let backoff = self
                .retry_base
                .saturating_mul(1 << (attempt - 1).min(16))
                .min(Duration::from_secs(60));
            let jitter =
                Duration::from_millis(rand::random_range(0..=backoff.as_millis() as u64 / 2));
            let delay = retry_after.unwrap_or(Duration::ZERO).max(backoff + jitter);
            tracing::warn!(
                endpoint,
                attempt,
                reason,
                delay_ms = delay.as_millis() as u64,
                "E-utilities request failed; retrying"
            );
            tokio::time::sleep(delay).await;
        }
    }

    /// One esearch call.
    pub async fn esearch(
        &self,
        db: &str,
        term: &str,
        dates: Option<(Date, Date)>,
        retstart: u64,
        retmax: u64,
    ) -> Result<SearchResult> {
        let mut params = vec![
            ("db", db.to_string()),
            ("term", term.to_string()),
            ("usehistory", "y".to_string()),
            ("retstart", retstart.to_string()),
            ("retmax", retmax.to_string()),
        ];
        if let Some((from, to)) = dates {
            params.push(("datetype", "pdat".to_string()));
            params.push(("mindate", ncbi_date(from)));
            params.push(("maxdate", ncbi_date(to)));
        }
        let body = self.request("esearch", &params).await?;
        parse_esearch(&body)
    }

    /// Every id matching `term` in `[from, to]`, up to `max`, in a stable order. A date range with
    /// more results than one search can page through is split in halves until each piece fits.
    pub async fn search_ids(
        &self,
        db: &str,
        term: &str,
        from: Date,
        to: Date,
        max: u64,
        warnings: &mut Vec<String>,
    ) -> Result<Vec<String>> {
        let mut ids = Vec::new();
        let mut ranges = vec![(from, to)];
        while let Some((a, b)) = ranges.pop() {
            if ids.len() as u64 >= max {
                break;
            }
            let want = (max - ids.len() as u64).min(SEARCH_WINDOW);
            let first = self.esearch(db, term, Some((a, b)), 0, want).await?;
            for w in &first.warnings {
                if !warnings.contains(w) {
                    warnings.push(w.clone());
                }
            }
            if first.count > SEARCH_WINDOW && want == SEARCH_WINDOW && a < b {
                // Too many to page through: split, newest half first (popped last = searched first).
                let mid = a + (b - a) / 2;
                ranges.push((a, mid));
                ranges.push((mid.next_day().unwrap_or(mid), b));
                continue;
            }
            if first.count > SEARCH_WINDOW && a == b {
                warnings.push(format!(
                    "{} has {} results on one day; only the first {SEARCH_WINDOW} are collected",
                    ncbi_date(a),
                    first.count
                ));
            }
            ids.extend(first.ids);
        }
        ids.truncate(max as usize);
        Ok(ids)
    }

    /// efetch of `ids` as XML (PubMed XML or JATS, by `db`).
    pub async fn efetch(&self, db: &str, ids: &[String]) -> Result<Bytes> {
        let params = [
            ("db", db.to_string()),
            ("id", ids.join(",")),
            ("retmode", "xml".to_string()),
        ];
        let body = self.request("efetch", &params).await?;
        if let Some(message) = ncbi_error(&body) {
            return Err(EutilsError::Ncbi {
                endpoint: "efetch",
                message,
            });
        }
        Ok(body)
    }

    /// elink `linkname` (e.g. `pubmed_pubmed_refs`) for each id: id → linked ids.
    pub async fn elink(
        &self,
        linkname: &str,
        ids: &[String],
    ) -> Result<BTreeMap<String, Vec<String>>> {
        let (from, to) = linkname
            .split_once('_')
            .map(|(a, rest)| (a, rest.split('_').next().unwrap_or(a)))
            .unwrap_or(("pubmed", "pubmed"));
        let mut params = vec![
            ("dbfrom", from.to_string()),
            ("db", to.to_string()),
            ("linkname", linkname.to_string()),
        ];
        // One `id` parameter per id: NCBI then answers with one LinkSet per id.
        params.extend(ids.iter().map(|id| ("id", id.clone())));
        let body = self.request("elink", &params).await?;
        parse_elink(&body)
    }
}

fn is_rate_limit_body(body: &[u8]) -> bool {
    let head = &body[..body.len().min(256)];
    let text = String::from_utf8_lossy(head);
    text.trim_start().starts_with('{') && text.contains("API rate limit exceeded")
}

fn snippet(body: &[u8]) -> String {
    String::from_utf8_lossy(&body[..body.len().min(200)])
        .trim()
        .to_string()
}

/// The message of an `<ERROR>` element, if the body is an E-utilities error.
fn ncbi_error(body: &[u8]) -> Option<String> {
    let head = String::from_utf8_lossy(&body[..body.len().min(4096)]);
    let start = head.find("<ERROR>")? + "<ERROR>".len();
    let end = head[start..]
        .find("</ERROR>")
        .map(|e| start + e)
        .unwrap_or(head.len());
    Some(head[start..end].trim().to_string())
}

/// Reads a small E-utilities response as one element tree.
fn response_tree(
    endpoint: &'static str,
    body: &[u8],
    root: &'static [&'static str],
) -> Result<Element> {
    let limits = Limits {
        max_record_bytes: 256 * 1024 * 1024,
        max_depth: 64,
        ..Limits::default()
    };
    let mut reader = RecordReader::new(Cursor::new(body), endpoint, root, limits);
    match reader.next_record() {
        Ok(Some(tree)) => Ok(tree),
        Ok(None) => Err(EutilsError::Parse {
            endpoint,
            message: format!("no <{}> element: {}", root[0], snippet(body)),
        }),
        Err(e) => Err(EutilsError::Parse {
            endpoint,
            message: e.to_string(),
        }),
    }
}

/// Parses an esearch response.
pub fn parse_esearch(body: &[u8]) -> Result<SearchResult> {
    if is_rate_limit_body(body) {
        return Err(EutilsError::Parse {
            endpoint: "esearch",
            message: "API rate limit exceeded".into(),
        });
    }
    let tree = response_tree("esearch", body, &["eSearchResult"])?;
    if let Some(error) = tree.child("ERROR") {
        return Err(EutilsError::Ncbi {
            endpoint: "esearch",
            message: error.text(),
        });
    }
    let count = tree
        .child("Count")
        .map(Element::text)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| EutilsError::Parse {
            endpoint: "esearch",
            message: "no <Count>".into(),
        })?;
    let mut warnings = Vec::new();
    for list in ["ErrorList", "WarningList"] {
        if let Some(l) = tree.child(list) {
            for item in l.elements() {
                warnings.push(format!("{}: {}", item.name, item.text()));
            }
        }
    }
    Ok(SearchResult {
        count,
        ids: tree
            .child("IdList")
            .map(|l| l.children_named("Id").map(Element::text).collect())
            .unwrap_or_default(),
        web_env: tree.child("WebEnv").map(Element::text),
        query_key: tree.child("QueryKey").map(Element::text),
        warnings,
    })
}

/// Parses an elink response: for each LinkSet, its source id → the linked ids.
pub fn parse_elink(body: &[u8]) -> Result<BTreeMap<String, Vec<String>>> {
    let tree = response_tree("elink", body, &["eLinkResult"])?;
    if let Some(error) = tree.child("ERROR") {
        return Err(EutilsError::Ncbi {
            endpoint: "elink",
            message: error.text(),
        });
    }
    let mut out = BTreeMap::new();
    for set in tree.children_named("LinkSet") {
        let from: Vec<String> = set
            .child("IdList")
            .map(|l| l.children_named("Id").map(Element::text).collect())
            .unwrap_or_default();
        let linked: Vec<String> = set
            .children_named("LinkSetDb")
            .flat_map(|db| {
                db.children_named("Link")
                    .filter_map(|l| l.child("Id").map(Element::text))
                    .collect::<Vec<_>>()
            })
            .collect();
        for id in from {
            out.entry(id)
                .or_insert_with(Vec::new)
                .extend(linked.iter().cloned());
        }
    }
    Ok(out)
}

/// `YYYY/MM/DD`, as E-utilities wants dates.
pub fn ncbi_date(d: Date) -> String {
    format!("{:04}/{:02}/{:02}", d.year(), u8::from(d.month()), d.day())
}

/// Parses `YYYY`, `YYYY/MM` or `YYYY/MM/DD` (see [`medembed_pipeline::jobs::parse_date`]).
pub fn parse_date(value: &str, end: bool) -> Result<Date> {
    medembed_pipeline::jobs::parse_date(value, end).map_err(|_| EutilsError::Date {
        value: value.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_parse_and_format() {
        let d = |s, end| ncbi_date(parse_date(s, end).expect(s));
        assert_eq!(d("2020", false), "2020/01/01");
        assert_eq!(d("2024", true), "2024/12/31");
        assert_eq!(d("2024/02", true), "2024/02/29");
        assert_eq!(d("2021-03-04", false), "2021/03/04");
        for bad in ["", "20", "2020/13", "2020/02/30", "abc", "2020/01/01/01"] {
            assert!(parse_date(bad, false).is_err(), "{bad}");
        }
    }

    #[test]
    fn rate_limit_bodies_are_recognised() {
        assert!(is_rate_limit_body(
            br#"{"error":"API rate limit exceeded","count":"11"}"#
        ));
        assert!(!is_rate_limit_body(
            b"<eSearchResult>API rate limit exceeded</eSearchResult>"
        ));
    }

    #[test]
    fn error_bodies_are_found() {
        assert_eq!(
            ncbi_error(b"<eFetchResult><ERROR>Invalid id</ERROR></eFetchResult>").as_deref(),
            Some("Invalid id")
        );
        assert_eq!(ncbi_error(b"<PubmedArticleSet/>"), None);
    }

    #[tokio::test(start_paused = true)]
    async fn the_rate_limiter_spaces_requests_evenly() {
        let limiter = RateLimiter::new(10.0);
        let start = tokio::time::Instant::now();
        for _ in 0..21 {
            limiter.acquire().await;
        }
        // 21 slots at 1/9.8 s spacing: the last at 20/9.8 s.
        let elapsed = start.elapsed().as_secs_f64();
        assert!((elapsed - 20.0 / 9.8).abs() < 0.001, "{elapsed}");
    }
}
