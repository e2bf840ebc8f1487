//! Layered settings: compiled-in `configs/default.toml` → optional `--config FILE` → environment
//! `MEDEMBED__SECTION__KEY`.
//!
//! One [`Settings`] value is built at start and passed down; nothing reads the environment later.
//! Every struct denies unknown fields, so a misspelt key fails at start with its name instead of
//! being silently ignored. Secrets live in [`Secret`], whose `Debug` never prints the value, and
//! may only come from the environment or a mounted file (`<key>_file`), never from a config file
//! that ends up in a ConfigMap or a repository.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The compiled-in defaults: the single place where a default value is written down.
pub const DEFAULT_TOML: &str = include_str!("../../../configs/default.toml");

/// Environment variable prefix; sections and keys are separated by `__`.
pub const ENV_PREFIX: &str = "MEDEMBED";

/// Secret keys: (section, key). Each may instead be read from the file named by `<key>_file`.
const SECRET_KEYS: &[(&str, &str)] = &[
    ("queue", "amqp_password"),
    ("store", "secret_access_key"),
    ("api", "keys"),
];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config: {0}")]
    Load(#[from] config::ConfigError),
    #[error("config: {key}: {reason}")]
    Invalid { key: &'static str, reason: String },
    #[error(
        "config file {path}: `{key}` is a secret and must not be written in a config file; set \
         MEDEMBED__{env_key} in the environment or point `{key}_file` at a mounted secret"
    )]
    SecretInFile {
        path: PathBuf,
        key: String,
        env_key: String,
    },
    #[error("config: {key}_file: cannot read secret file {path}: {source}")]
    SecretFile {
        key: String,
        path: PathBuf,
        source: std::io::Error,
    },
}

pub type Result<T, E = ConfigError> = std::result::Result<T, E>;

/// A value that must never appear in logs or `Debug` output.
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    /// The secret itself; call only where it is handed to a client library.
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            f.write_str("\"\"")
        } else {
            f.write_str("[redacted]")
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub queue: QueueSettings,
    pub store: StoreSettings,
    pub ncbi: NcbiSettings,
    pub fetch: FetchSettings,
    pub clean: CleanSettings,
    pub pairs: PairSettings,
    pub train: TrainSettings,
    pub index: IndexSettings,
    pub api: ApiSettings,
    pub runner: RunnerSettings,
    pub server: ServerSettings,
    pub log: LogSettings,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QueueBackend {
    Amqp,
    Memory,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueSettings {
    pub backend: QueueBackend,
    pub amqp_url: String,
    /// Replaces amqp_url's user: one URL for every component, each with its own user.
    pub amqp_username: String,
    pub amqp_password: Secret,
    pub amqp_password_file: String,
    pub prefix: String,
    pub prefetch: u16,
    pub max_attempts: u32,
    pub retry_base_delay_ms: u64,
    pub retry_max_delay_ms: u64,
    pub delivery_limit: u32,
    pub reconnect_initial_delay_ms: u64,
    pub reconnect_max_delay_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreBackend {
    Local,
    S3,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSettings {
    pub backend: StoreBackend,
    pub local_root: PathBuf,
    pub bucket: String,
    pub prefix: String,
    pub endpoint: String,
    pub region: String,
    pub path_style: bool,
    pub access_key_id: String,
    pub secret_access_key: Secret,
    pub secret_access_key_file: String,
    pub multipart_threshold_bytes: u64,
    pub multipart_part_size_bytes: u64,
    pub max_attempts: u32,
    pub request_timeout_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NcbiSettings {
    pub base_url: String,
    pub tool: String,
    pub email: String,
    pub api_key: Secret,
    pub api_key_file: String,
    pub requests_per_second: f64,
    pub max_retries: u32,
    pub retry_base_delay_ms: u64,
    pub timeout_secs: u64,
    pub efetch_batch: usize,
    pub elink_batch: usize,
}

impl NcbiSettings {
    /// The request rate to keep: the configured one, or NCBI's limit for this key.
    pub fn effective_rate(&self) -> f64 {
        if self.requests_per_second > 0.0 {
            self.requests_per_second
        } else if self.api_key.is_empty() {
            3.0
        } else {
            10.0
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FetchSettings {
    pub articles_per_part: usize,
    pub max_part_bytes: u64,
    pub max_buffered_bytes: u64,
    pub max_file_bytes: u64,
    pub max_record_bytes: u64,
    pub max_xml_depth: usize,
}

/// A part of an article that goes into its `text` (what is embedded and paired).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TextField {
    Title,
    Abstract,
    Body,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CleanSettings {
    pub text_fields: Vec<TextField>,
    pub min_text_chars: usize,
    pub min_letter_ratio: f64,
    pub keep_body: bool,
    pub expand_abbreviations: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PairSettings {
    pub seed: u64,
    pub train_ratio: f64,
    pub val_ratio: f64,
    pub test_ratio: f64,
    pub sources: Vec<String>,
    pub mesh_threshold: f64,
    pub keyword_threshold: f64,
    pub major_weight: f64,
    pub check_tags: Vec<String>,
    pub max_posting: usize,
    pub max_pairs_per_document: usize,
    pub negative_ratio: f64,
    pub hard_negatives: bool,
    pub write_csv: bool,
}

/// The training objective (`train.loss`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TrainLoss {
    /// Multiple-negatives ranking: in-batch negatives (and hard negatives if the pairs have them).
    Mnrl,
    /// MNRL with GradCache: the batch is embedded in mini-batches, so a large batch fits in memory.
    CachedMnrl,
    /// MSE between cosine and the 0/1 label (the original project's loss).
    Cosine,
    /// Margin contrastive loss on labelled pairs.
    Contrastive,
}

impl TrainLoss {
    pub fn name(self) -> &'static str {
        match self {
            Self::Mnrl => "mnrl",
            Self::CachedMnrl => "cached_mnrl",
            Self::Cosine => "cosine",
            Self::Contrastive => "contrastive",
        }
    }

    /// Losses that learn from positive pairs only (negatives come from the batch).
    pub fn uses_in_batch_negatives(self) -> bool {
        matches!(self, Self::Mnrl | Self::CachedMnrl)
    }
}

impl std::str::FromStr for TrainLoss {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "mnrl" => Ok(Self::Mnrl),
            "cached_mnrl" => Ok(Self::CachedMnrl),
            "cosine" => Ok(Self::Cosine),
            "contrastive" => Ok(Self::Contrastive),
            other => Err(format!(
                "unknown loss {other:?} (mnrl, cached_mnrl, cosine, contrastive)"
            )),
        }
    }
}

/// Where training runs (`train.device`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ComputeDevice {
    /// CUDA if libtorch sees a GPU, else CPU.
    Auto,
    Cpu,
    Cuda,
}

#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSettings {
    pub base_model: String,
    pub loss: TrainLoss,
    pub epochs: usize,
    /// At most this many optimizer steps in all (0 = every batch of every epoch).
    #[serde(default)]
    pub max_steps: usize,
    pub batch_size: usize,
    pub mini_batch_size: usize,
    pub gradient_accumulation: usize,
    pub learning_rate: f64,
    pub weight_decay: f64,
    pub warmup_ratio: f64,
    pub warmup_steps: usize,
    pub max_grad_norm: f64,
    pub max_seq_length: usize,
    pub seed: u64,
    pub scale: f64,
    pub symmetric: bool,
    pub use_hard_negatives: bool,
    /// Hard negatives mined per training query with the base model (0 = none), drawn from the
    /// best `mine_pool` candidates scoring below `mine_max_relative_score` × the positive's.
    pub mined_negatives: usize,
    pub mine_pool: usize,
    pub mine_max_relative_score: f64,
    pub margin: f64,
    pub eval_every_steps: usize,
    pub checkpoint_every_steps: usize,
    pub device: ComputeDevice,
    pub precision: ComputePrecision,
    pub lease_secs: u64,
}

/// What the encoder computes in while training (`train.precision`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ComputePrecision {
    /// bf16 on CUDA and on CPUs with AMX bf16, fp32 elsewhere.
    Auto,
    Fp32,
    Bf16,
}

/// How the HNSW graph stores its vectors (`index.hnsw_vectors`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum HnswVectors {
    /// 4 bytes per value, as embedded.
    #[default]
    F32,
    /// Half precision: half the memory. (8-bit integers are not offered: USearch's i8 lost too
    /// much, recall@10 0.65 at 1M even at expansion 4,096; BENCHMARKS.md.)
    F16,
}

/// The indexer: embedding a job's corpus, the vector index, topic clusters and the 2-D map.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct IndexSettings {
    pub batch_tokens: usize,
    pub max_seq_length: usize,
    pub device: ComputeDevice,
    pub precision: ComputePrecision,
    pub exact_max_documents: usize,
    pub hnsw_connectivity: usize,
    pub hnsw_expansion_add: usize,
    pub hnsw_expansion_search: usize,
    /// Recall@10 the build calibrates the search expansion for (stored with the index).
    pub hnsw_target_recall: f64,
    pub hnsw_vectors: HnswVectors,
    pub clusters: usize,
    pub max_clusters: usize,
    pub cluster_labels: usize,
    pub snippet_chars: usize,
    pub seed: u64,
}

impl IndexSettings {
    /// Checks the numbers an index cannot be built with; the error names the setting.
    pub fn validate(&self) -> Result<()> {
        let invalid = |key: &'static str, reason: &str| {
            Err(ConfigError::Invalid {
                key,
                reason: reason.to_string(),
            })
        };
        if !(64..=1 << 24).contains(&self.batch_tokens) {
            return invalid("index.batch_tokens", "must be 64..=16777216");
        }
        if !(8..=8192).contains(&self.max_seq_length) {
            return invalid("index.max_seq_length", "must be 8..=8192");
        }
        if !(2..=256).contains(&self.hnsw_connectivity) {
            return invalid("index.hnsw_connectivity", "must be 2..=256");
        }
        if self.hnsw_expansion_add == 0 || self.hnsw_expansion_search == 0 {
            return invalid(
                "index.hnsw_expansion_search",
                "hnsw_expansion_add and hnsw_expansion_search must be at least 1",
            );
        }
        if !(self.hnsw_target_recall > 0.0 && self.hnsw_target_recall <= 1.0) {
            return invalid("index.hnsw_target_recall", "must be in (0, 1]");
        }
        if !(2..=1000).contains(&self.max_clusters) {
            return invalid("index.max_clusters", "must be 2..=1000");
        }
        if self.clusters == 1 || self.clusters > 1000 {
            return invalid(
                "index.clusters",
                "must be 0 (chosen by silhouette) or 2..=1000",
            );
        }
        Ok(())
    }
}

/// `medembed-api`: the HTTP API and web UI, and the limits it puts on requests.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiSettings {
    pub listen_addr: std::net::SocketAddr,
    /// API keys, `NAME:ROLE:SHA256HEX` entries (newline- or comma-separated), from the
    /// environment (`MEDEMBED__API__KEYS`) only: a config file that sets it is refused.
    pub keys: Secret,
    /// A mounted file of key entries, one per line (`#` comments), read at start.
    pub keys_file: String,
    /// The role of requests without a key once keys are configured, or on a non-loopback
    /// address without keys: "none" (401), "read" or "submit".
    pub allow_anonymous: AnonymousAccess,
    /// `files:` prefixes API callers may submit (local folders, `s3://bucket/prefix`).
    pub allowed_sources: Vec<String>,
    /// Whether API callers may ask for `open_access_only = false` / `cited_by = true`.
    pub allow_not_open_access: bool,
    pub allow_cited_by: bool,
    pub max_articles_per_job: u64,
    pub max_active_jobs_per_key: usize,
    pub max_active_jobs: usize,
    pub requests_per_minute: u32,
    pub request_burst: u32,
    pub request_timeout_secs: u64,
    pub max_queued_texts: usize,
    pub max_tokens_per_request: usize,
    pub max_concurrent_loads: usize,
    /// Origins allowed to call the API from a browser (CORS); empty = none.
    pub cors_allowed_origins: Vec<String>,
    pub max_body_bytes: usize,
    pub max_text_chars: usize,
    pub max_k: usize,
    pub max_inputs: usize,
    pub cached_jobs: usize,
    pub device: ComputeDevice,
    pub precision: ComputePrecision,
}

/// What a request without an API key may do (`api.allow_anonymous`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AnonymousAccess {
    None,
    Read,
    Submit,
}

impl ApiSettings {
    pub fn validate(&self) -> Result<()> {
        let invalid = |key: &'static str, reason: &str| {
            Err(ConfigError::Invalid {
                key,
                reason: reason.to_string(),
            })
        };
        if self.max_body_bytes < 1024 {
            return invalid("api.max_body_bytes", "must be at least 1024");
        }
        if self.max_text_chars == 0 || self.max_text_chars > self.max_body_bytes {
            return invalid("api.max_text_chars", "must be 1..=api.max_body_bytes");
        }
        if !(1..=100_000).contains(&self.max_k) {
            return invalid("api.max_k", "must be 1..=100000");
        }
        if !(1..=100_000).contains(&self.max_inputs) {
            return invalid("api.max_inputs", "must be 1..=100000");
        }
        if self.cached_jobs == 0 {
            return invalid("api.cached_jobs", "must be at least 1");
        }
        use crate::jobs::MAX_ARTICLES;
        if !(1..=MAX_ARTICLES).contains(&self.max_articles_per_job) {
            return invalid(
                "api.max_articles_per_job",
                &format!("must be 1..={MAX_ARTICLES}"),
            );
        }
        if self.max_active_jobs == 0 || self.max_active_jobs_per_key == 0 {
            return invalid(
                "api.max_active_jobs",
                "api.max_active_jobs and api.max_active_jobs_per_key must be at least 1",
            );
        }
        if self.requests_per_minute == 0 || self.request_burst == 0 {
            return invalid(
                "api.requests_per_minute",
                "api.requests_per_minute and api.request_burst must be at least 1",
            );
        }
        if !(1..=3600).contains(&self.request_timeout_secs) {
            return invalid("api.request_timeout_secs", "must be 1..=3600");
        }
        if self.max_queued_texts < self.max_inputs {
            return invalid(
                "api.max_queued_texts",
                "must be at least api.max_inputs (one full request must fit)",
            );
        }
        if self.max_tokens_per_request == 0 {
            return invalid("api.max_tokens_per_request", "must be at least 1");
        }
        if self.max_concurrent_loads == 0 {
            return invalid("api.max_concurrent_loads", "must be at least 1");
        }
        for source in &self.allowed_sources {
            if !(source.starts_with('/') || source.starts_with("s3://"))
                || source.split('/').any(|s| s == "..")
            {
                return invalid(
                    "api.allowed_sources",
                    &format!(
                        "{source:?}: each entry is an absolute folder or s3://bucket/prefix, without `..`"
                    ),
                );
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunnerSettings {
    pub drain_timeout_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    pub listen_addr: std::net::SocketAddr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    pub format: LogFormat,
    pub filter: String,
}

impl TrainSettings {
    /// Checks the numbers a run cannot start with; the error names the setting.
    pub fn validate(&self) -> Result<()> {
        let invalid = |key: &'static str, reason: &str| {
            Err(ConfigError::Invalid {
                key,
                reason: reason.to_string(),
            })
        };
        if self.base_model.trim().is_empty() {
            return invalid("train.base_model", "is empty");
        }
        if self.epochs == 0 || self.epochs > 1000 {
            return invalid("train.epochs", "must be 1..=1000");
        }
        if self.batch_size < 2 || self.batch_size > 65_536 {
            return invalid(
                "train.batch_size",
                "must be 2..=65536 (in-batch negatives need a second pair)",
            );
        }
        if self.mini_batch_size == 0 {
            return invalid("train.mini_batch_size", "must be at least 1");
        }
        if self.gradient_accumulation == 0 || self.gradient_accumulation > 1024 {
            return invalid("train.gradient_accumulation", "must be 1..=1024");
        }
        if self.learning_rate.is_nan() || self.learning_rate <= 0.0 || self.learning_rate >= 1.0 {
            return invalid("train.learning_rate", "must be in (0, 1)");
        }
        if !(0.0..1.0).contains(&self.weight_decay) {
            return invalid("train.weight_decay", "must be in [0, 1)");
        }
        if !(0.0..=1.0).contains(&self.warmup_ratio) {
            return invalid("train.warmup_ratio", "must be in [0, 1]");
        }
        if self.max_grad_norm.is_nan() || self.max_grad_norm <= 0.0 {
            return invalid("train.max_grad_norm", "must be above 0");
        }
        if !(8..=8192).contains(&self.max_seq_length) {
            return invalid("train.max_seq_length", "must be 8..=8192");
        }
        if self.scale.is_nan() || self.scale <= 0.0 || self.scale > 1000.0 {
            return invalid("train.scale", "must be in (0, 1000]");
        }
        if self.mined_negatives > 16 {
            return invalid("train.mined_negatives", "must be 0..=16");
        }
        if self.mine_pool == 0 || self.mine_pool > 1000 {
            return invalid("train.mine_pool", "must be 1..=1000");
        }
        if !(self.mine_max_relative_score > 0.0 && self.mine_max_relative_score <= 1.0) {
            return invalid("train.mine_max_relative_score", "must be in (0, 1]");
        }
        if !(0.0..=2.0).contains(&self.margin) {
            return invalid("train.margin", "must be in [0, 2] (cosine distance)");
        }
        if self.lease_secs < 10 {
            return invalid("train.lease_secs", "must be at least 10");
        }
        Ok(())
    }
}

impl Settings {
    /// Defaults → `file` (if any) → the process environment.
    pub fn load(file: Option<&Path>) -> Result<Self> {
        Self::load_with_env(file, std::env::vars())
    }

    /// As [`Settings::load`], with the environment given explicitly (tests, embedded mode).
    pub fn load_with_env(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self> {
        let mut builder = config::Config::builder().add_source(config::File::from_str(
            DEFAULT_TOML,
            config::FileFormat::Toml,
        ));
        if let Some(path) = file {
            reject_secrets_in_file(path)?;
            builder = builder.add_source(config::File::from(path).required(true));
        }
        let env: config::Map<String, String> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with(&format!("{ENV_PREFIX}__")))
            .collect();
        builder = builder.add_source(
            config::Environment::with_prefix(ENV_PREFIX)
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true)
                // Lists from the environment are comma-separated.
                .list_separator(",")
                .with_list_parse_key("pairs.sources")
                .with_list_parse_key("api.allowed_sources")
                .with_list_parse_key("api.cors_allowed_origins")
                .source(Some(env)),
        );
        let mut settings: Settings = builder.build()?.try_deserialize()?;
        settings.read_secret_files()?;
        settings.validate()?;
        Ok(settings)
    }

    fn read_secret_files(&mut self) -> Result<()> {
        read_secret_file(
            "queue.amqp_password",
            &self.queue.amqp_password_file,
            &mut self.queue.amqp_password,
        )?;
        read_secret_file(
            "store.secret_access_key",
            &self.store.secret_access_key_file,
            &mut self.store.secret_access_key,
        )?;
        read_secret_file(
            "ncbi.api_key",
            &self.ncbi.api_key_file,
            &mut self.ncbi.api_key,
        )
    }

    fn validate(&self) -> Result<()> {
        fn invalid(key: &'static str, reason: impl Into<String>) -> ConfigError {
            ConfigError::Invalid {
                key,
                reason: reason.into(),
            }
        }
        let q = &self.queue;
        if q.prefetch == 0 {
            return Err(invalid("queue.prefetch", "must be at least 1"));
        }
        if q.max_attempts == 0 {
            return Err(invalid("queue.max_attempts", "must be at least 1"));
        }
        if q.retry_base_delay_ms == 0 || q.retry_base_delay_ms > q.retry_max_delay_ms {
            return Err(invalid(
                "queue.retry_base_delay_ms",
                "must be at least 1 and at most queue.retry_max_delay_ms",
            ));
        }
        self.train.validate()?;
        self.index.validate()?;
        self.api.validate()?;
        if q.delivery_limit == 0 {
            return Err(invalid("queue.delivery_limit", "must be at least 1"));
        }
        if q.prefix.is_empty()
            || !q
                .prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(invalid(
                "queue.prefix",
                format!("{:?}: use letters, digits, '-', '_' and '.' only", q.prefix),
            ));
        }
        if q.backend == QueueBackend::Amqp
            && !q.amqp_url.starts_with("amqp://")
            && !q.amqp_url.starts_with("amqps://")
        {
            return Err(invalid(
                "queue.amqp_url",
                format!(
                    "{:?} is not an amqp:// or amqps:// URL",
                    redact_url(&q.amqp_url)
                ),
            ));
        }
        let s = &self.store;
        if s.backend == StoreBackend::S3 && s.bucket.is_empty() {
            return Err(invalid("store.bucket", "must be set for the s3 backend"));
        }
        if s.multipart_part_size_bytes < 5 * 1024 * 1024 {
            return Err(invalid(
                "store.multipart_part_size_bytes",
                "S3 requires at least 5 MiB (5242880)",
            ));
        }
        if s.multipart_threshold_bytes < s.multipart_part_size_bytes {
            return Err(invalid(
                "store.multipart_threshold_bytes",
                "must be at least store.multipart_part_size_bytes",
            ));
        }
        if s.request_timeout_secs == 0 {
            return Err(invalid("store.request_timeout_secs", "must be at least 1"));
        }
        if s.max_attempts == 0 {
            return Err(invalid("store.max_attempts", "must be at least 1"));
        }
        if !s.access_key_id.is_empty() && s.secret_access_key.is_empty() {
            return Err(invalid(
                "store.secret_access_key",
                "must be set when store.access_key_id is",
            ));
        }
        let c = &self.clean;
        if c.text_fields.is_empty() {
            return Err(invalid(
                "clean.text_fields",
                "name at least one of \"title\", \"abstract\", \"body\"",
            ));
        }
        if !(0.0..=1.0).contains(&c.min_letter_ratio) {
            return Err(invalid("clean.min_letter_ratio", "must be within 0..1"));
        }
        let p = &self.pairs;
        for (key, ratio) in [
            ("pairs.train_ratio", p.train_ratio),
            ("pairs.val_ratio", p.val_ratio),
            ("pairs.test_ratio", p.test_ratio),
        ] {
            if !(0.0..=1.0).contains(&ratio) {
                return Err(invalid(key, format!("{ratio} is not within 0..1")));
            }
        }
        let sum = p.train_ratio + p.val_ratio + p.test_ratio;
        if (sum - 1.0).abs() > 1e-6 {
            return Err(invalid(
                "pairs.train_ratio",
                format!("train_ratio + val_ratio + test_ratio must be 1, not {sum}"),
            ));
        }
        if p.train_ratio == 0.0 {
            return Err(invalid("pairs.train_ratio", "must be above 0"));
        }
        if let Some(s) = p
            .sources
            .iter()
            .find(|s| !["title", "citation", "mesh", "keyword"].contains(&s.as_str()))
        {
            return Err(invalid(
                "pairs.sources",
                format!(
                    "unknown source {s:?}: use \"title\", \"citation\", \"mesh\" or \"keyword\""
                ),
            ));
        }
        if p.sources.is_empty() {
            return Err(invalid("pairs.sources", "name at least one source"));
        }
        for (key, t) in [
            ("pairs.mesh_threshold", p.mesh_threshold),
            ("pairs.keyword_threshold", p.keyword_threshold),
        ] {
            if !(t > 0.0 && t <= 1.0) {
                return Err(invalid(key, format!("{t} is not within (0, 1]")));
            }
        }
        if !(p.major_weight >= 1.0 && p.major_weight <= 100.0) {
            return Err(invalid("pairs.major_weight", "must be within 1..100"));
        }
        if p.max_posting < 2 {
            return Err(invalid("pairs.max_posting", "must be at least 2"));
        }
        if p.max_pairs_per_document == 0 {
            return Err(invalid(
                "pairs.max_pairs_per_document",
                "must be at least 1",
            ));
        }
        if !(0.0..=100.0).contains(&p.negative_ratio) {
            return Err(invalid("pairs.negative_ratio", "must be within 0..100"));
        }
        let n = &self.ncbi;
        if !(n.base_url.starts_with("http://") || n.base_url.starts_with("https://")) {
            return Err(invalid(
                "ncbi.base_url",
                format!("{:?} is not an http(s) URL", n.base_url),
            ));
        }
        if n.requests_per_second < 0.0
            || n.requests_per_second > 100.0
            || n.requests_per_second.is_nan()
        {
            return Err(invalid(
                "ncbi.requests_per_second",
                "must be between 0 (NCBI's limit) and 100",
            ));
        }
        if n.efetch_batch == 0 || n.efetch_batch > 10_000 {
            return Err(invalid("ncbi.efetch_batch", "must be between 1 and 10000"));
        }
        if n.elink_batch == 0 || n.elink_batch > 1_000 {
            return Err(invalid("ncbi.elink_batch", "must be between 1 and 1000"));
        }
        if n.timeout_secs == 0 {
            return Err(invalid("ncbi.timeout_secs", "must be at least 1"));
        }
        let f = &self.fetch;
        if f.articles_per_part == 0 {
            return Err(invalid("fetch.articles_per_part", "must be at least 1"));
        }
        if f.max_record_bytes < 1024 {
            return Err(invalid("fetch.max_record_bytes", "must be at least 1024"));
        }
        if f.max_xml_depth < 16 {
            return Err(invalid("fetch.max_xml_depth", "must be at least 16"));
        }
        if f.max_part_bytes < 1024 || f.max_buffered_bytes < f.max_record_bytes {
            return Err(invalid(
                "fetch.max_buffered_bytes",
                "fetch.max_part_bytes must be at least 1024 and fetch.max_buffered_bytes at least fetch.max_record_bytes (one record must fit)",
            ));
        }
        if f.max_file_bytes < f.max_record_bytes {
            return Err(invalid(
                "fetch.max_file_bytes",
                "must be at least fetch.max_record_bytes",
            ));
        }
        Ok(())
    }
}

/// Replaces the password of a URL with `***` so that it can be logged.
pub fn redact_url(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://")
        && let Some((userinfo, host)) = rest.split_once('@')
        && let Some((user, _)) = userinfo.split_once(':')
    {
        return format!("{scheme}://{user}:***@{host}");
    }
    url.to_string()
}

fn read_secret_file(key: &str, path: &str, target: &mut Secret) -> Result<()> {
    if path.is_empty() {
        return Ok(());
    }
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::SecretFile {
        key: key.to_string(),
        path: PathBuf::from(path),
        source,
    })?;
    *target = Secret::new(text.trim_end_matches(['\n', '\r']));
    Ok(())
}

fn reject_secrets_in_file(path: &Path) -> Result<()> {
    let file = config::Config::builder()
        .add_source(config::File::from(path).required(true))
        .build()?;
    for (section, key) in SECRET_KEYS {
        if file
            .get::<String>(&format!("{section}.{key}"))
            .is_ok_and(|v| !v.is_empty())
        {
            return Err(ConfigError::SecretInFile {
                path: path.to_path_buf(),
                key: format!("{section}.{key}"),
                env_key: format!("{}__{}", section.to_uppercase(), key.to_uppercase()),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_load_and_match_the_documented_values() {
        let s = Settings::load_with_env(None, env(&[])).expect("defaults load");
        assert_eq!(s.queue.backend, QueueBackend::Amqp);
        assert_eq!(s.queue.prefetch, 2);
        assert_eq!(s.store.backend, StoreBackend::Local);
        assert_eq!(s.runner.drain_timeout_secs, 30);
    }

    #[test]
    fn environment_overrides_file_overrides_defaults() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[queue]\nprefetch = 7\nmax_attempts = 3\n").expect("write");
        let s = Settings::load_with_env(Some(&path), env(&[("MEDEMBED__QUEUE__PREFETCH", "9")]))
            .expect("load");
        assert_eq!(s.queue.prefetch, 9, "env wins over the file");
        assert_eq!(s.queue.max_attempts, 3, "file wins over the defaults");
    }

    #[test]
    fn unknown_key_in_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[queue]\nprefetchh = 7\n").expect("write");
        let err = Settings::load_with_env(Some(&path), env(&[])).expect_err("must fail");
        assert!(err.to_string().contains("prefetchh"), "{err}");
    }

    #[test]
    fn unknown_env_key_is_an_error_naming_it() {
        let err = Settings::load_with_env(None, env(&[("MEDEMBED__STORE__BUCKETT", "x")]))
            .expect_err("must fail");
        assert!(err.to_string().contains("buckett"), "{err}");
    }

    #[test]
    fn invalid_value_is_an_error_naming_the_key() {
        let err = Settings::load_with_env(None, env(&[("MEDEMBED__QUEUE__PREFETCH", "lots")]))
            .expect_err("must fail");
        assert!(err.to_string().contains("queue.prefetch"), "{err}");
        let err = Settings::load_with_env(None, env(&[("MEDEMBED__QUEUE__PREFETCH", "0")]))
            .expect_err("must fail");
        assert!(err.to_string().contains("queue.prefetch"), "{err}");
        let err = Settings::load_with_env(None, env(&[("MEDEMBED__STORE__BACKEND", "ftp")]))
            .expect_err("must fail");
        assert!(err.to_string().contains("store.backend"), "{err}");
        let err =
            Settings::load_with_env(None, env(&[("MEDEMBED__STORE__REQUEST_TIMEOUT_SECS", "0")]))
                .expect_err("must fail");
        assert!(
            err.to_string().contains("store.request_timeout_secs"),
            "{err}"
        );
    }

    #[test]
    fn absurd_pair_and_clean_settings_are_errors_naming_the_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.toml");
        for (toml, key) in [
            ("[pairs]\ntrain_ratio = 0.9\n", "pairs.train_ratio"),
            (
                "[pairs]\nval_ratio = -0.1\ntest_ratio = 0.3\n",
                "pairs.val_ratio",
            ),
            (
                "[pairs]\nsources = [\"citation\", \"vibes\"]\n",
                "pairs.sources",
            ),
            ("[pairs]\nmesh_threshold = 0.0\n", "pairs.mesh_threshold"),
            (
                "[pairs]\nmax_pairs_per_document = 0\n",
                "pairs.max_pairs_per_document",
            ),
            ("[pairs]\nnegative_ratio = 1e9\n", "pairs.negative_ratio"),
            ("[clean]\ntext_fields = []\n", "clean.text_fields"),
            (
                "[clean]\ntext_fields = [\"title\", \"footnotes\"]\n",
                "footnotes",
            ),
            (
                "[clean]\nmin_letter_ratio = 2.0\n",
                "clean.min_letter_ratio",
            ),
        ] {
            std::fs::write(&path, toml).expect("write");
            let err = Settings::load_with_env(Some(&path), env(&[])).expect_err(toml);
            assert!(err.to_string().contains(key), "{toml}: {err}");
        }
        std::fs::write(
            &path,
            "[pairs]\ntrain_ratio = 0.7\nval_ratio = 0.15\ntest_ratio = 0.15\n",
        )
        .expect("write");
        let s = Settings::load_with_env(Some(&path), env(&[])).expect("valid ratios");
        assert_eq!(s.pairs.train_ratio, 0.7);
    }

    #[test]
    fn secrets_are_redacted_in_debug() {
        let s = Settings::load_with_env(
            None,
            env(&[
                ("MEDEMBED__STORE__SECRET_ACCESS_KEY", "hunter2-s3"),
                ("MEDEMBED__STORE__ACCESS_KEY_ID", "GKabc"),
                ("MEDEMBED__QUEUE__AMQP_PASSWORD", "hunter2-amqp"),
            ]),
        )
        .expect("load");
        assert_eq!(s.store.secret_access_key.expose(), "hunter2-s3");
        let debug = format!("{s:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(debug.contains("[redacted]"));
    }

    #[test]
    fn secret_in_config_file_is_refused_but_secret_file_works() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[store]\nsecret_access_key = \"oops\"\n").expect("write");
        let err = Settings::load_with_env(Some(&path), env(&[])).expect_err("must fail");
        assert!(err.to_string().contains("store.secret_access_key"), "{err}");
        assert!(!err.to_string().contains("oops"), "{err}");

        let secret = dir.path().join("secret");
        std::fs::write(&secret, "from-file\n").expect("write");
        std::fs::write(
            &path,
            format!(
                "[store]\nsecret_access_key_file = {:?}\n",
                secret.display().to_string()
            ),
        )
        .expect("write");
        let s = Settings::load_with_env(Some(&path), env(&[])).expect("load");
        assert_eq!(s.store.secret_access_key.expose(), "from-file");
    }

    #[test]
    fn urls_are_redacted() {
        assert_eq!(
            redact_url("amqp://u:pw@h:5672/%2f"),
            "amqp://u:***@h:5672/%2f"
        );
        assert_eq!(redact_url("amqp://u@h"), "amqp://u@h");
    }
}

#[cfg(test)]
mod shipped_files {
    use super::*;

    /// Every preset in configs/ loads: no unknown keys, no secrets, valid values.
    #[test]
    fn every_shipped_config_file_loads() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).expect("configs/") {
            let path = entry.expect("entry").path();
            if path.extension().is_some_and(|e| e == "toml") {
                // distributed.toml names an access key id; its secret comes from the environment.
                let env = vec![(
                    "MEDEMBED__STORE__SECRET_ACCESS_KEY".to_string(),
                    "x".to_string(),
                )];
                Settings::load_with_env(Some(&path), env)
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                seen += 1;
            }
        }
        assert_eq!(seen, 3, "default, embedded and distributed");
    }
}
