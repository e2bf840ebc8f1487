//! Jobs as users make and list them: a [`JobRequest`] (what `medembed submit` and
//! `POST /api/jobs` take) checked into a [`JobSpec`], [`submit`] (spec first, then the fetch
//! task), and reading specs back. One place, so the CLI and the api accept exactly the same jobs
//! with the same errors.

use bytes::Bytes;
use time::Date;

use crate::keys;
use crate::messages::{
    self, ArticleSource, Database, FetchTask, JobId, JobSpec, MESSAGE_VERSION, TaskMessage,
};
use crate::queue::{Queue, QueueError};
use crate::status::now_rfc3339;
use crate::store::{ObjectStore, StoreError};

/// Most articles one job may ask for.
pub const MAX_ARTICLES: u64 = 10_000_000;

/// A job as a user asks for it; every field but the query has a default.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct JobRequest {
    pub query: String,
    #[serde(default)]
    pub db: Database,
    #[serde(default)]
    pub from: Option<String>,
    #[serde(default)]
    pub to: Option<String>,
    /// Stop after this many articles. None: 1000 from E-utilities (a query can match
    /// millions), and every article of a `files:` source (the user chose those files).
    #[serde(default)]
    pub max_articles: Option<u64>,
    /// `eutils` or `files:PATH`.
    #[serde(default = "default_source")]
    pub source: String,
    #[serde(default = "yes")]
    pub open_access_only: bool,
    #[serde(default)]
    pub cited_by: bool,
}

/// Articles collected from E-utilities when the request does not say.
pub const DEFAULT_EUTILS_ARTICLES: u64 = 1000;

fn default_source() -> String {
    "eutils".into()
}
fn yes() -> bool {
    true
}

/// A request that cannot become a job: `field` is the offending field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct JobRequestError {
    pub field: &'static str,
    pub reason: String,
}

fn invalid(field: &'static str, reason: impl Into<String>) -> JobRequestError {
    JobRequestError {
        field,
        reason: reason.into(),
    }
}

/// Parses `YYYY`, `YYYY/MM` or `YYYY/MM/DD` (also with `-`); `end` picks the last day of a year
/// or month instead of the first. The error says what was wrong with `value`.
pub fn parse_date(value: &str, end: bool) -> Result<Date, String> {
    let bad = || format!("{value:?} is not a date (YYYY, YYYY/MM or YYYY/MM/DD)");
    let parts: Vec<&str> = value.trim().split(['/', '-']).collect();
    let num = |i: usize| {
        parts
            .get(i)
            .map(|p| p.parse::<u32>().map_err(|_| bad()))
            .transpose()
    };
    let year = num(0)?.ok_or_else(bad)? as i32;
    let month = num(1)?;
    let day = num(2)?;
    if parts.len() > 3 || !(1000..=9999).contains(&year) {
        return Err(bad());
    }
    let month_of = |m: u32| time::Month::try_from(m as u8).map_err(|_| bad());
    let date = match (month, day, end) {
        (None, _, false) => Date::from_calendar_date(year, time::Month::January, 1),
        (None, _, true) => Date::from_calendar_date(year, time::Month::December, 31),
        (Some(m), None, false) => Date::from_calendar_date(year, month_of(m)?, 1),
        (Some(m), None, true) => {
            let month = month_of(m)?;
            Date::from_calendar_date(year, month, month.length(year))
        }
        (Some(m), Some(d), _) => Date::from_calendar_date(year, month_of(m)?, d as u8),
    };
    date.map_err(|_| bad())
}

impl JobRequest {
    /// The request checked and turned into a new job's spec (a fresh id, created now).
    pub fn into_spec(self) -> Result<JobSpec, JobRequestError> {
        let source: ArticleSource = self.source.parse().map_err(|e| invalid("source", e))?;
        if self.query.trim().is_empty() && source == ArticleSource::Eutils {
            return Err(invalid("query", "is empty: E-utilities needs a query"));
        }
        if self.query.len() > 10_000 {
            return Err(invalid(
                "query",
                format!("is {} bytes; at most 10000", self.query.len()),
            ));
        }
        let max_articles = self.max_articles.unwrap_or(match source {
            ArticleSource::Eutils => DEFAULT_EUTILS_ARTICLES,
            ArticleSource::Files { .. } => MAX_ARTICLES,
        });
        if max_articles == 0 || max_articles > MAX_ARTICLES {
            return Err(invalid(
                "max_articles",
                format!("must be 1..={MAX_ARTICLES}"),
            ));
        }
        let first = self
            .from
            .as_deref()
            .map(|d| parse_date(d, false))
            .transpose()
            .map_err(|e| invalid("from", e))?;
        let last = self
            .to
            .as_deref()
            .map(|d| parse_date(d, true))
            .transpose()
            .map_err(|e| invalid("to", e))?;
        if let (Some(a), Some(b)) = (first, last)
            && a > b
        {
            return Err(invalid(
                "from",
                format!(
                    "{} is after to {}",
                    self.from.unwrap_or_default(),
                    self.to.unwrap_or_default()
                ),
            ));
        }
        Ok(JobSpec {
            version: MESSAGE_VERSION,
            job_id: JobId::new(),
            created_at: now_rfc3339(),
            query: self.query,
            db: self.db,
            from: self.from,
            to: self.to,
            max_articles,
            source,
            open_access_only: self.open_access_only,
            cited_by: self.cited_by,
            submitted_by: None,
        })
    }
}

/// Why a job could not be submitted.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("writing the job spec: {0}")]
    Store(#[from] StoreError),
    #[error("queueing the fetch task: {0}")]
    Queue(#[from] QueueError),
}

/// Writes the job spec, then queues its fetch task (in that order: a worker must find the spec).
pub async fn submit(
    store: &dyn ObjectStore,
    queue: &dyn Queue,
    spec: &JobSpec,
) -> Result<(), SubmitError> {
    let body = serde_json::to_vec_pretty(spec).expect("a job spec is plain data");
    store
        .put(&keys::job_spec(spec.job_id), Bytes::from(body))
        .await?;
    let task = FetchTask {
        job_id: spec.job_id,
    };
    queue
        .publish(FetchTask::QUEUE, &messages::encode(&task))
        .await?;
    Ok(())
}

/// The spec of `job`; None if the store has no such job.
pub async fn load_spec(store: &dyn ObjectStore, job: JobId) -> Result<Option<JobSpec>, StoreError> {
    match store.get(&keys::job_spec(job)).await {
        Ok(bytes) => Ok(serde_json::from_slice(&bytes).ok()),
        Err(StoreError::NotFound { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Every job in the store, oldest first (ids sort by creation time); a `job.json` that does not
/// parse is returned as its key and the reason.
pub async fn list(store: &dyn ObjectStore) -> Result<Vec<Result<JobSpec, String>>, StoreError> {
    let mut jobs = Vec::new();
    for meta in store.list("jobs/").await? {
        // Only `jobs/{id}/job.json`, not files of that name deeper in a job's folders.
        if !meta.key.ends_with("/job.json") || meta.key.matches('/').count() != 2 {
            continue;
        }
        let bytes = store.get(&meta.key).await?;
        jobs.push(
            serde_json::from_slice::<JobSpec>(&bytes)
                .map_err(|e| format!("{}: unreadable: {e}", meta.key)),
        );
    }
    jobs.sort_by_key(|j| j.as_ref().map(|s| s.job_id).ok());
    Ok(jobs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(query: &str) -> JobRequest {
        serde_json::from_value(serde_json::json!({ "query": query })).expect("minimal request")
    }

    #[test]
    fn requests_become_specs_or_name_the_bad_field() {
        let spec = request("cancer immunotherapy").into_spec().expect("valid");
        assert_eq!(spec.max_articles, 1000);
        assert_eq!(spec.source, ArticleSource::Eutils);
        assert!(spec.open_access_only);
        let field = |r: JobRequest| r.into_spec().unwrap_err().field;
        assert_eq!(field(request("  ")), "query");
        let mut r = request("q");
        r.max_articles = Some(0);
        assert_eq!(field(r), "max_articles");
        let mut r = request("");
        r.source = "files:/data/baseline".into();
        let spec = r.clone().into_spec().expect("files");
        assert_eq!(
            spec.max_articles, MAX_ARTICLES,
            "files: reads every article by default"
        );
        r.max_articles = Some(50);
        assert_eq!(r.into_spec().expect("files").max_articles, 50);
        let mut r = request("q");
        r.from = Some("2024/13".into());
        assert_eq!(field(r), "from");
        let mut r = request("q");
        r.from = Some("2024".into());
        r.to = Some("2020".into());
        assert_eq!(field(r), "from");
        let mut r = request("q");
        r.source = "ftp:x".into();
        assert_eq!(field(r), "source");
        // Bulk files need no query.
        let mut r = request("");
        r.source = "files:/data".into();
        assert!(r.into_spec().is_ok());
        assert!(serde_json::from_str::<JobRequest>(r#"{"query":"q","bogus":1}"#).is_err());
    }

    #[test]
    fn dates_parse_with_start_and_end_of_period() {
        let d = |s, end| parse_date(s, end).map(|d| d.to_string());
        assert_eq!(d("2020", false).as_deref(), Ok("2020-01-01"));
        assert_eq!(d("2024", true).as_deref(), Ok("2024-12-31"));
        assert_eq!(d("2024/02", true).as_deref(), Ok("2024-02-29"));
        assert_eq!(d("2024-03-05", false).as_deref(), Ok("2024-03-05"));
        assert!(d("2024/02/30", false).is_err());
        assert!(d("99", false).is_err());
        assert!(d("2024/1/2/3", false).is_err());
    }
}
