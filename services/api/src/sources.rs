//! Which `files:` sources API callers may submit: only those under a prefix of
//! `api.allowed_sources`, chosen by the operator. A job reads its source with the deployment's
//! own file system and store credentials, and what it reads becomes searchable, so the caller
//! must not pick an arbitrary path or bucket.
//!
//! Local paths are compared after resolving `..` and symlinks (of the longest part of the path
//! that exists here; the rest is normalized by hand and may not climb with `..`). `s3://`
//! sources are compared by bucket and by whole key segments, and may not hold `.`, `..` or empty
//! segments at all: S3 keys have no folders to resolve them against.

use std::path::{Path, PathBuf};

/// An allowlist entry, resolved once at start.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Allowed {
    Local(PathBuf),
    S3 { bucket: String, prefix: Vec<String> },
}

/// The resolved `api.allowed_sources`.
#[derive(Debug, Clone, Default)]
pub struct SourceAllowlist {
    allowed: Vec<Allowed>,
}

impl SourceAllowlist {
    pub fn new(prefixes: &[String]) -> Self {
        let allowed = prefixes
            .iter()
            .filter_map(|p| match p.strip_prefix("s3://") {
                Some(rest) => parse_s3(rest).map(|(bucket, prefix)| Allowed::S3 { bucket, prefix }),
                None => resolve_local(Path::new(p)).map(Allowed::Local),
            })
            .collect();
        Self { allowed }
    }

    pub fn is_empty(&self) -> bool {
        self.allowed.is_empty()
    }

    /// Ok when `path` (the part after `files:`) is under an allowed prefix; the error says why
    /// not, in words for the caller.
    pub fn check(&self, path: &str) -> Result<(), String> {
        if self.allowed.is_empty() {
            return Err(
                "files: sources cannot be submitted through the API here (api.allowed_sources is empty); submit an E-utilities job, or ask the operator"
                    .into(),
            );
        }
        let refused = || {
            format!("files:{path} is not under a source allowed for API jobs (api.allowed_sources)")
        };
        let wanted = match path.strip_prefix("s3://") {
            Some(rest) => {
                let (bucket, key) = parse_s3(rest).ok_or_else(|| {
                    format!(
                        "files:{path}: an s3:// source may not contain `.`, `..` or empty segments (api.allowed_sources is matched by whole segments)"
                    )
                })?;
                Allowed::S3 {
                    bucket,
                    prefix: key,
                }
            }
            None => Allowed::Local(resolve_local(Path::new(path)).ok_or_else(refused)?),
        };
        let ok = self.allowed.iter().any(|allowed| match (allowed, &wanted) {
            (Allowed::Local(root), Allowed::Local(p)) => p.starts_with(root),
            (
                Allowed::S3 { bucket, prefix },
                Allowed::S3 {
                    bucket: b,
                    prefix: p,
                },
            ) => bucket == b && p.starts_with(prefix),
            _ => false,
        });
        if ok { Ok(()) } else { Err(refused()) }
    }
}

/// `bucket/a/b/` as ("bucket", ["a", "b"]); None for an empty bucket or a `.`, `..` or empty
/// segment (a trailing `/` is allowed).
fn parse_s3(rest: &str) -> Option<(String, Vec<String>)> {
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let mut parts = rest.split('/');
    let bucket = parts.next().filter(|b| !b.is_empty())?.to_string();
    let mut prefix = Vec::new();
    for part in parts {
        if part.is_empty() || part == "." || part == ".." {
            return None;
        }
        prefix.push(part.to_string());
    }
    Some((bucket, prefix))
}

/// An absolute path with symlinks and `..` resolved: the longest existing ancestor
/// canonicalized, the rest appended; None for a relative path or a `..` in the part that does
/// not exist.
fn resolve_local(path: &Path) -> Option<PathBuf> {
    if !path.is_absolute() {
        return None;
    }
    let mut existing = path.to_path_buf();
    let mut rest = Vec::new();
    loop {
        if let Ok(real) = existing.canonicalize() {
            let mut out = real;
            for part in rest.iter().rev() {
                out.push(part);
            }
            return Some(out);
        }
        let name = existing.file_name()?.to_os_string();
        rest.push(name);
        // (file_name is None for a path ending in `..`: refused above, as it cannot be
        // resolved against a folder that does not exist.)
        if !existing.pop() {
            return None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_sources_must_resolve_under_an_allowed_folder() {
        let dir = tempfile::tempdir().unwrap();
        let allowed = dir.path().join("corpora");
        let other = dir.path().join("private");
        std::fs::create_dir_all(allowed.join("alz")).unwrap();
        std::fs::create_dir_all(&other).unwrap();
        std::os::unix::fs::symlink(&other, allowed.join("escape")).unwrap();
        let list = SourceAllowlist::new(&[allowed.display().to_string()]);
        let p = |s: &Path| s.display().to_string();
        assert!(list.check(&p(&allowed.join("alz"))).is_ok());
        assert!(list.check(&p(&allowed.join("not-yet/made"))).is_ok());
        for refused in [
            other.clone(),
            allowed.join("../private"),
            allowed.join("alz/../../private"),
            allowed.join("escape"),
            allowed.join("escape/x.xml"),
            allowed.join("missing/../../private"),
            PathBuf::from("corpora/alz"),
            PathBuf::from("/etc/passwd"),
        ] {
            let e = list.check(&p(&refused)).unwrap_err();
            assert!(e.contains("api.allowed_sources"), "{refused:?}: {e}");
        }
        // A sibling whose name only starts with the allowed one is not under it.
        std::fs::create_dir_all(dir.path().join("corpora2")).unwrap();
        assert!(list.check(&p(&dir.path().join("corpora2"))).is_err());
    }

    #[test]
    fn s3_sources_match_bucket_and_whole_segments() {
        let list = SourceAllowlist::new(&["s3://shared/corpora/".to_string()]);
        assert!(list.check("s3://shared/corpora/alz").is_ok());
        assert!(list.check("s3://shared/corpora").is_ok());
        for refused in [
            "s3://shared/corpora2/x",
            "s3://other/corpora/alz",
            "s3://shared/corpora/../secrets",
            "s3://shared/corpora//x",
            "s3://shared",
        ] {
            assert!(list.check(refused).is_err(), "{refused}");
        }
    }

    #[test]
    fn an_empty_allowlist_refuses_every_files_source() {
        let e = SourceAllowlist::new(&[]).check("/data").unwrap_err();
        assert!(e.contains("E-utilities"), "{e}");
    }
}
