//! Who may do what: API keys with roles, checked on every API route before its handler runs.
//!
//! A key is a random bearer token (`Authorization: Bearer me_…`, what the OpenAI SDKs send).
//! The api never holds keys themselves: the operator configures each key's SHA-256 (from
//! `MEDEMBED__API__KEYS` or the mounted `api.keys_file`), with a name (for logs and metrics) and
//! a role. A presented token is hashed and compared with every configured hash in constant time.
//! SHA-256 without salt or stretching is enough because keys are 256 random bits, not passwords.
//!
//! Roles are ordered: `read` < `submit` < `admin`. [`required_role`] is the one table of what
//! each route needs; the UI's static files, `/healthz`, `/readyz` and the OpenAPI description
//! need none.

use std::net::SocketAddr;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use medembed_pipeline::config::{AnonymousAccess, ApiSettings};
use serde::Serialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use utoipa::ToSchema;

use crate::error::ApiError;
use crate::state::AppState;

/// What a caller may do; later variants include the earlier ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Search, similarity, map, clusters, neighbours, embeddings, job list and detail.
    Read,
    /// Read, plus submitting jobs.
    Submit,
    /// Submit, plus operators' views (raw error text in job status).
    Admin,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Submit => "submit",
            Role::Admin => "admin",
        }
    }

    /// `read`, `submit` or `admin`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "read" => Some(Role::Read),
            "submit" => Some(Role::Submit),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

/// The caller of one request, as the handlers see it (a request extension).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The key's configured name, or `anonymous`.
    pub name: String,
    pub role: Role,
}

/// The name requests without a key are counted and limited under.
pub const ANONYMOUS: &str = "anonymous";

/// A configured key: its name, role and the SHA-256 of the token.
#[derive(Clone)]
struct KeyEntry {
    name: String,
    role: Role,
    hash: [u8; 32],
}

impl std::fmt::Debug for KeyEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.name, self.role.name())
    }
}

/// A bad `api.keys` entry, named by its position (never by its content, which may be a secret).
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error(
        "api.keys: entry {index} is not NAME:ROLE:SHA256 (a name of letters, digits, '-', '_' or '.'; role read, submit or admin; 64 hex digits): {reason}"
    )]
    BadEntry { index: usize, reason: &'static str },
    #[error("api.keys: the name {0:?} is used by two keys")]
    DuplicateName(String),
    #[error(
        "refusing to listen on {addr} with no API keys: anyone who reaches it could use it. Configure keys (MEDEMBED__API__KEYS or api.keys_file; `medembed-api key` makes one), listen on 127.0.0.1, or set api.allow_anonymous = \"read\" (or \"submit\") to allow it on purpose"
    )]
    OpenOnNetwork { addr: SocketAddr },
}

/// The keys the api accepts and what a request without one may do.
#[derive(Debug, Clone)]
pub struct Access {
    keys: Vec<KeyEntry>,
    anonymous: Option<Role>,
}

impl Access {
    /// No keys, and anonymous requests may submit: a local, single-user api (the CLI's own use,
    /// and the api on a loopback address when no keys are configured).
    pub fn local() -> Self {
        Self {
            keys: Vec::new(),
            anonymous: Some(Role::Submit),
        }
    }

    /// The access the api serves `addr` with, from `api.keys` and `api.allow_anonymous`:
    /// - keys configured: callers need one, unless `allow_anonymous` names a role;
    /// - no keys, a loopback address: [`Access::local`], unless `allow_anonymous` says less;
    /// - no keys, any other address: refused, unless `allow_anonymous` says "read" or "submit".
    pub fn from_settings(api: &ApiSettings, addr: SocketAddr) -> Result<Self, AccessError> {
        let keys = parse_keys(api.keys.expose())?;
        let configured = match api.allow_anonymous {
            AnonymousAccess::None => None,
            AnonymousAccess::Read => Some(Role::Read),
            AnonymousAccess::Submit => Some(Role::Submit),
        };
        let anonymous = if !keys.is_empty() {
            configured
        } else if addr.ip().is_loopback() {
            configured.or(Some(Role::Submit))
        } else if configured.is_some() {
            configured
        } else {
            return Err(AccessError::OpenOnNetwork { addr });
        };
        Ok(Self { keys, anonymous })
    }

    /// Keys only (tests, and whoever builds the state by hand); `anonymous` as given.
    pub fn with_keys(entries: &str, anonymous: Option<Role>) -> Result<Self, AccessError> {
        Ok(Self {
            keys: parse_keys(entries)?,
            anonymous,
        })
    }

    pub fn key_count(&self) -> usize {
        self.keys.len()
    }

    pub fn anonymous(&self) -> Option<Role> {
        self.anonymous
    }

    /// The caller of a request with these headers, or 401.
    pub fn identify(&self, headers: &HeaderMap) -> Result<Caller, ApiError> {
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return self
                .anonymous
                .map(|role| Caller {
                    name: ANONYMOUS.into(),
                    role,
                })
                .ok_or_else(|| {
                    unauthorized("an API key is required: send `Authorization: Bearer KEY`")
                });
        };
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer ").or(v.strip_prefix("bearer ")))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| unauthorized("the Authorization header is not `Bearer KEY`"))?;
        let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        // Every entry is compared, and each comparison takes the same time whatever matches.
        let mut found = None;
        for entry in &self.keys {
            if bool::from(entry.hash.ct_eq(&hash)) {
                found = Some(entry);
            }
        }
        found
            .map(|e| Caller {
                name: e.name.clone(),
                role: e.role,
            })
            .ok_or_else(|| unauthorized("the API key is not valid"))
    }
}

fn unauthorized(message: &str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
}

/// Entries `NAME:ROLE:SHA256HEX`, separated by newlines or commas; blank lines and `#` comments
/// are skipped.
fn parse_keys(text: &str) -> Result<Vec<KeyEntry>, AccessError> {
    let mut keys: Vec<KeyEntry> = Vec::new();
    let entries = text
        .split(['\n', ','])
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'));
    for (i, entry) in entries.enumerate() {
        let bad = |reason| AccessError::BadEntry {
            index: i + 1,
            reason,
        };
        let mut parts = entry.splitn(3, ':');
        let (Some(name), Some(role), Some(hash)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(bad("not three fields separated by ':'"));
        };
        if name.is_empty()
            || name.len() > 64
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(bad("the name"));
        }
        let role = Role::parse(role).ok_or_else(|| bad("the role"))?;
        let hash = parse_hex(hash).ok_or_else(|| {
            bad("the hash (a key itself in place of its hash? `medembed-api key` prints the entry)")
        })?;
        if keys.iter().any(|k| k.name == name) {
            return Err(AccessError::DuplicateName(name.to_string()));
        }
        keys.push(KeyEntry {
            name: name.to_string(),
            role,
            hash,
        });
    }
    Ok(keys)
}

fn parse_hex(s: &str) -> Option<[u8; 32]> {
    let s = s.trim();
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// A new random key and its `api.keys` entry: `(key, entry)`.
pub fn new_key(name: &str, role: Role) -> (String, String) {
    let bytes: [u8; 32] = rand::random();
    let key = format!(
        "me_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    );
    let entry = key_entry(name, role, &key);
    (key, entry)
}

/// The `api.keys` entry of `key`: `NAME:ROLE:SHA256HEX`.
pub fn key_entry(name: &str, role: Role, key: &str) -> String {
    let hash = Sha256::digest(key.as_bytes());
    let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    format!("{name}:{}:{hex}", role.name())
}

/// The role a request needs, or None for what is open to all (the web UI's files, the probes,
/// the OpenAPI description). Everything else under `/api/` and `/v1/` needs at least `read`.
pub fn required_role(method: &Method, path: &str) -> Option<Role> {
    if path == "/api/openapi.json" {
        return None;
    }
    if path == "/api/jobs" && method == Method::POST {
        return Some(Role::Submit);
    }
    if path.starts_with("/api/") || path.starts_with("/v1/") {
        return Some(Role::Read);
    }
    None
}

/// Middleware on every route: identifies the caller (401), checks the role (403) and the
/// caller's request rate (429), counts the request under the key's name, and hands the
/// [`Caller`] to the handler.
pub async fn authorize(
    State(state): State<std::sync::Arc<AppState>>,
    mut request: Request,
    next: Next,
) -> Response {
    let Some(needed) = required_role(request.method(), request.uri().path()) else {
        return next.run(request).await;
    };
    let caller = match state.access.identify(request.headers()) {
        Ok(caller) => caller,
        Err(e) => {
            state.metrics.count_auth(ANONYMOUS, "unauthorized");
            let mut response = e.into_response();
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"medembed\""),
            );
            return response;
        }
    };
    if caller.role < needed {
        state.metrics.count_auth(&caller.name, "forbidden");
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "this needs the {} role; the key {:?} has {}",
                needed.name(),
                caller.name,
                caller.role.name()
            ),
        )
        .into_response();
    }
    if let Err(wait) = state.limits.check_rate(&caller.name) {
        state.metrics.count_auth(&caller.name, "rate_limited");
        return ApiError::rate_limited(
            format!(
                "key {:?}: more than api.requests_per_minute requests; retry after the Retry-After seconds",
                caller.name
            ),
            wait,
        )
        .into_response();
    }
    state.metrics.count_auth(&caller.name, "allowed");
    // What the handler logs names the key (never the key itself).
    let span = tracing::info_span!("request", key = %caller.name, role = caller.role.name());
    request.extensions_mut().insert(caller);
    tracing::Instrument::instrument(next.run(request), span).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(auth: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(v) = auth {
            h.insert(header::AUTHORIZATION, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn keys_are_found_by_their_hash_and_wrong_or_missing_ones_are_401() {
        let (read_key, read_entry) = new_key("reader", Role::Read);
        let (submit_key, submit_entry) = new_key("ci", Role::Submit);
        assert!(
            !read_entry.contains(&read_key),
            "the entry holds only the hash"
        );
        let access =
            Access::with_keys(&format!("# keys\n{read_entry}, {submit_entry}\n"), None).unwrap();
        assert_eq!(access.key_count(), 2);
        let who = |auth: Option<&str>| access.identify(&headers(auth));
        assert_eq!(
            who(Some(&format!("Bearer {read_key}"))).unwrap(),
            Caller {
                name: "reader".into(),
                role: Role::Read
            }
        );
        assert_eq!(
            who(Some(&format!("Bearer {submit_key}"))).unwrap().role,
            Role::Submit
        );
        for bad in [
            None,
            Some("Bearer me_wrong"),
            Some(read_key.as_str()),
            Some("Basic dXNlcjpwYXNz"),
            Some("Bearer "),
        ] {
            let e = who(bad).unwrap_err();
            assert_eq!(e.status, StatusCode::UNAUTHORIZED, "{bad:?}");
            assert!(!e.message.contains("me_"), "{}", e.message);
        }
    }

    #[test]
    fn bad_entries_are_refused_without_echoing_them() {
        let (key, _) = new_key("x", Role::Read);
        for (text, needle) in [
            ("alice:read", "three fields"),
            ("al ice:read:00", "the name"),
            (
                "alice:owner:0000000000000000000000000000000000000000000000000000000000000000",
                "the role",
            ),
            (&format!("alice:read:{key}") as &str, "the hash"),
        ] {
            let e = Access::with_keys(text, None).unwrap_err().to_string();
            assert!(e.contains(needle), "{text}: {e}");
            assert!(!e.contains(&key), "{e}");
        }
        let (_, a) = new_key("same", Role::Read);
        let (_, b) = new_key("same", Role::Admin);
        assert!(matches!(
            Access::with_keys(&format!("{a}\n{b}"), None),
            Err(AccessError::DuplicateName(_))
        ));
    }

    #[test]
    fn no_keys_is_refused_off_loopback_unless_anonymous_access_is_explicit() {
        let mut api = medembed_pipeline::config::Settings::load_with_env(None, Vec::new())
            .unwrap()
            .api;
        let public: SocketAddr = "0.0.0.0:8080".parse().unwrap();
        let local: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        assert!(matches!(
            Access::from_settings(&api, public),
            Err(AccessError::OpenOnNetwork { .. })
        ));
        assert_eq!(
            Access::from_settings(&api, local).unwrap().anonymous(),
            Some(Role::Submit)
        );
        api.allow_anonymous = AnonymousAccess::Read;
        assert_eq!(
            Access::from_settings(&api, public).unwrap().anonymous(),
            Some(Role::Read)
        );
        let (_, entry) = new_key("k", Role::Read);
        api.keys = medembed_pipeline::config::Secret::new(entry);
        api.allow_anonymous = AnonymousAccess::None;
        let access = Access::from_settings(&api, public).unwrap();
        assert_eq!((access.key_count(), access.anonymous()), (1, None));
    }

    #[test]
    fn only_job_submission_needs_more_than_read() {
        assert_eq!(
            required_role(&Method::POST, "/api/jobs"),
            Some(Role::Submit)
        );
        assert_eq!(required_role(&Method::GET, "/api/jobs"), Some(Role::Read));
        assert_eq!(
            required_role(&Method::POST, "/v1/embeddings"),
            Some(Role::Read)
        );
        for open in ["/", "/app.js", "/healthz", "/readyz", "/api/openapi.json"] {
            assert_eq!(required_role(&Method::GET, open), None, "{open}");
        }
    }
}
