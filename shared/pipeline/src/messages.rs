//! The data contracts between stages: [`JobId`], [`JobSpec`] and the task messages on the queues.
//!
//! Every message travels as one JSON object with an explicit `"version"` field next to the task's
//! own fields. A consumer that meets malformed JSON or a version it does not know refuses it with a
//! [`DecodeError`], which the runner treats as permanent: the message is dead-lettered with the
//! reason and never redelivered in a loop.

use std::fmt;
use std::str::FromStr;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// The message format version this build writes and reads.
pub const MESSAGE_VERSION: u32 = 1;

/// A job's id: a ULID, so ids sort by creation time (`medembed status` lists newest last).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JobId(ulid::Ulid);

impl JobId {
    pub fn new() -> Self {
        Self(ulid::Ulid::new())
    }
    /// Creation time encoded in the id, in milliseconds since the Unix epoch.
    pub fn timestamp_ms(&self) -> u64 {
        self.0.timestamp_ms()
    }
}

impl Default for JobId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Debug for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "JobId({})", self.0)
    }
}

impl FromStr for JobId {
    type Err = DecodeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ulid::Ulid::from_string(s)
            .map(Self)
            .map_err(|e| DecodeError::Malformed(format!("job id {s:?}: {e}")))
    }
}

/// Which NCBI database a job collects from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Database {
    /// PubMed Central: full texts (JATS XML).
    #[default]
    Pmc,
    /// PubMed: citations and abstracts with MeSH (PubMed XML).
    Pubmed,
}

/// Where a job's articles come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum ArticleSource {
    /// NCBI E-utilities (esearch → efetch), for the job's query.
    #[default]
    Eutils,
    /// Bulk files: a local directory or file, or an `s3://bucket/prefix`.
    Files { path: String },
}

impl FromStr for ArticleSource {
    type Err = String;
    /// `eutils` or `files:PATH`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once(':') {
            None if s == "eutils" => Ok(Self::Eutils),
            Some(("files", path)) if !path.is_empty() => Ok(Self::Files {
                path: path.to_string(),
            }),
            _ => Err(format!("source {s:?}: expected `eutils` or `files:PATH`")),
        }
    }
}

fn yes() -> bool {
    true
}

/// What a job collects; stored at `jobs/{job}/job.json`. Later stages add their own settings
/// sections with `#[serde(default)]`, so older job files still read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    pub version: u32,
    pub job_id: JobId,
    /// RFC 3339 creation time.
    pub created_at: String,
    /// The literature query, in E-utilities syntax.
    pub query: String,
    #[serde(default)]
    pub db: Database,
    /// First publication date (YYYY, YYYY/MM or YYYY/MM/DD), inclusive.
    #[serde(default)]
    pub from: Option<String>,
    /// Last publication date, inclusive.
    #[serde(default)]
    pub to: Option<String>,
    /// Stop after this many articles.
    pub max_articles: u64,
    #[serde(default)]
    pub source: ArticleSource,
    /// For PMC: only open-access full texts (adds `"open access"[filter]`), which users may process.
    #[serde(default = "yes")]
    pub open_access_only: bool,
    /// For PubMed: also collect "cited by" links (`pubmed_pubmed_citedin`), not only references.
    #[serde(default)]
    pub cited_by: bool,
    /// The API key (by name) that submitted the job through medembed-api, for its job quotas;
    /// None for jobs submitted by the CLI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub submitted_by: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("malformed message: {0}")]
    Malformed(String),
    #[error("unknown message version {found} (this build reads version {MESSAGE_VERSION})")]
    UnknownVersion { found: u64 },
}

/// A task that travels on a stage queue. `QUEUE` is the stage queue's name without the deployment
/// prefix: the type decides where it goes, so a stage cannot publish to a misspelt queue.
pub trait TaskMessage: Serialize + DeserializeOwned + fmt::Debug + Send + Sync + 'static {
    const QUEUE: &'static str;
    fn job_id(&self) -> JobId;
    /// The part of the job this task covers, for tasks that fan out per part.
    fn part(&self) -> Option<u32> {
        None
    }
}

#[derive(Serialize)]
struct Envelope<'a, T> {
    version: u32,
    #[serde(flatten)]
    task: &'a T,
}

/// Encodes a task as its versioned JSON message body.
pub fn encode<T: TaskMessage>(task: &T) -> Vec<u8> {
    serde_json::to_vec(&Envelope {
        version: MESSAGE_VERSION,
        task,
    })
    .expect("task messages are plain data and always serialize")
}

/// Decodes a message body; any problem is a [`DecodeError`] naming it.
pub fn decode<T: TaskMessage>(body: &[u8]) -> Result<T, DecodeError> {
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| DecodeError::Malformed(e.to_string()))?;
    let serde_json::Value::Object(mut fields) = value else {
        return Err(DecodeError::Malformed("not a JSON object".into()));
    };
    match fields.remove("version") {
        Some(serde_json::Value::Number(n)) if n.as_u64() == Some(u64::from(MESSAGE_VERSION)) => {}
        Some(serde_json::Value::Number(n)) => {
            return Err(match n.as_u64() {
                Some(found) => DecodeError::UnknownVersion { found },
                None => DecodeError::Malformed(format!("version {n} is not a whole number")),
            });
        }
        Some(other) => {
            return Err(DecodeError::Malformed(format!(
                "version {other} is not a number"
            )));
        }
        None => return Err(DecodeError::Malformed("no \"version\" field".into())),
    }
    serde_json::from_value(serde_json::Value::Object(fields))
        .map_err(|e| DecodeError::Malformed(format!("{} task: {e}", T::QUEUE)))
}

macro_rules! job_task {
    ($(#[$doc:meta])* $name:ident, $queue:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct $name {
            pub job_id: JobId,
        }
        impl TaskMessage for $name {
            const QUEUE: &'static str = $queue;
            fn job_id(&self) -> JobId {
                self.job_id
            }
        }
    };
}

macro_rules! part_task {
    ($(#[$doc:meta])* $name:ident, $queue:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct $name {
            pub job_id: JobId,
            pub part: u32,
        }
        impl TaskMessage for $name {
            const QUEUE: &'static str = $queue;
            fn job_id(&self) -> JobId {
                self.job_id
            }
            fn part(&self) -> Option<u32> {
                Some(self.part)
            }
        }
    };
}

job_task!(
    /// Collect the job's articles into `raw/part-*.parquet`.
    FetchTask, "fetch"
);
part_task!(
    /// Clean one raw part into `clean/part-NNNNN.parquet`.
    CleanTask, "clean"
);
job_task!(
    /// Build pairs if every raw part has been cleaned; otherwise do nothing (a barrier check).
    PairsCheck, "pairs"
);
job_task!(
    /// Fine-tune the job's model on its pairs.
    TrainTask, "train"
);
job_task!(
    /// Start indexing: fan out one embed task per clean part.
    IndexTask, "index"
);
part_task!(
    /// Embed one clean part into `index/embeddings/part-NNNNN.parquet`.
    EmbedTask, "embed"
);
job_task!(
    /// Build the vector index if every part is embedded (a barrier check).
    BuildIndexCheck, "build"
);

/// Every task queue, in pipeline order (the indexer's three last).
pub const QUEUES: [&str; 7] = [
    FetchTask::QUEUE,
    CleanTask::QUEUE,
    PairsCheck::QUEUE,
    TrainTask::QUEUE,
    IndexTask::QUEUE,
    EmbedTask::QUEUE,
    BuildIndexCheck::QUEUE,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_carries_the_version() {
        let task = CleanTask {
            job_id: JobId::new(),
            part: 7,
        };
        let body = encode(&task);
        let json: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(json["version"], 1);
        assert_eq!(json["part"], 7);
        assert_eq!(decode::<CleanTask>(&body).expect("decode"), task);
    }

    #[test]
    fn malformed_and_unknown_versions_are_refused_with_the_reason() {
        let id = JobId::new();
        assert!(matches!(
            decode::<FetchTask>(b"{not json"),
            Err(DecodeError::Malformed(_))
        ));
        assert!(matches!(
            decode::<FetchTask>(b"[1,2]"),
            Err(DecodeError::Malformed(_))
        ));
        let no_version = format!(r#"{{"job_id":"{id}"}}"#);
        assert!(
            matches!(decode::<FetchTask>(no_version.as_bytes()), Err(DecodeError::Malformed(m)) if m.contains("version"))
        );
        let v2 = format!(r#"{{"version":2,"job_id":"{id}"}}"#);
        assert_eq!(
            decode::<FetchTask>(v2.as_bytes()),
            Err(DecodeError::UnknownVersion { found: 2 })
        );
        let bad_id = r#"{"version":1,"job_id":"not-a-ulid"}"#;
        assert!(
            matches!(decode::<FetchTask>(bad_id.as_bytes()), Err(DecodeError::Malformed(m)) if m.contains("fetch task"))
        );
        let missing_part = format!(r#"{{"version":1,"job_id":"{id}"}}"#);
        assert!(decode::<CleanTask>(missing_part.as_bytes()).is_err());
    }

    #[test]
    fn sources_parse_and_old_job_files_still_read() {
        assert_eq!("eutils".parse::<ArticleSource>(), Ok(ArticleSource::Eutils));
        assert_eq!(
            "files:/data/pm".parse::<ArticleSource>(),
            Ok(ArticleSource::Files {
                path: "/data/pm".into()
            })
        );
        assert!("ftp:x".parse::<ArticleSource>().is_err());
        assert!("files:".parse::<ArticleSource>().is_err());
        let id = JobId::new();
        let old = format!(
            r#"{{"version":1,"job_id":"{id}","created_at":"2026-01-01T00:00:00Z","query":"q","max_articles":5}}"#
        );
        let spec: JobSpec = serde_json::from_str(&old).expect("old job file");
        assert_eq!(spec.source, ArticleSource::Eutils);
        assert!(spec.open_access_only);
    }

    #[test]
    fn job_ids_sort_by_creation_time() {
        let a = JobId::new();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = JobId::new();
        assert!(a < b);
        assert!(a.to_string() < b.to_string());
        assert_eq!(a.to_string().parse::<JobId>().expect("parse"), a);
    }
}
