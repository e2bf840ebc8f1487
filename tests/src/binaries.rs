//! Where the end-to-end tests find the workspace's binaries (the api, the workers, the CLI), and
//! the guard that keeps them from running a stale one.
//!
//! `cargo test` builds a package's real binaries only for that package's own integration tests, so
//! the binaries these tests start come from some earlier `cargo build` (deploy/dev/test builds them
//! all right before the tests). A binary left by an older build would pass or fail for code that
//! is no longer there. So before a binary is started, its dep-info file (`target/<profile>/<bin>.d`,
//! which cargo writes next to it and which lists every source file the build read) is read back,
//! and a binary older than any of those files, or than `Cargo.lock`, is refused with the command
//! that rebuilds it. The check reads file times only: it cannot build, because `cargo test` holds
//! the target dir's lock while its tests run.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// The command that builds every binary the tests start, with the test targets' features (so that
/// nothing is compiled twice by the `cargo test` that follows).
pub const BUILD_COMMAND: &str = "cargo build --workspace --bins --tests";

/// Why a binary cannot be started.
#[derive(Debug, PartialEq, Eq)]
pub enum Unusable {
    /// No such file: never built in this target dir.
    NotBuilt { binary: PathBuf },
    /// Built, but cargo's dep-info file for it is missing or unreadable.
    NoDepInfo { binary: PathBuf, depinfo: PathBuf },
    /// Built before these sources last changed.
    Stale {
        binary: PathBuf,
        newer: Vec<PathBuf>,
    },
}

impl fmt::Display for Unusable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unusable::NotBuilt { binary } => write!(
                f,
                "{} is not built: run `{BUILD_COMMAND}` first (deploy/dev/test does)",
                binary.display()
            ),
            Unusable::NoDepInfo { binary, depinfo } => write!(
                f,
                "{} has no readable dep-info file {}, so it cannot be told fresh: rebuild it with \
                 `{BUILD_COMMAND}` (deploy/dev/test does)",
                binary.display(),
                depinfo.display()
            ),
            Unusable::Stale { binary, newer } => {
                let shown: Vec<String> = newer
                    .iter()
                    .take(3)
                    .map(|p| p.display().to_string())
                    .collect();
                let more = match newer.len().saturating_sub(shown.len()) {
                    0 => String::new(),
                    n => format!(" and {n} more"),
                };
                write!(
                    f,
                    "{} is stale: {}{more} changed after it was built; rebuild with \
                     `{BUILD_COMMAND}` (deploy/dev/test does)",
                    binary.display(),
                    shown.join(", ")
                )
            }
        }
    }
}

/// The target dir's profile folder this test executable runs from
/// (`target/<profile>/deps/<test>-<hash>` → `target/<profile>`).
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test's path");
    exe.parent()
        .and_then(Path::parent)
        .expect("target/<profile>")
        .to_path_buf()
}

/// The workspace binary `name`, built from the current sources; panics with the reason and the
/// command that fixes it otherwise.
pub fn binary(name: &str) -> PathBuf {
    fresh_binary(&profile_dir(), name).unwrap_or_else(|unusable| panic!("{unusable}"))
}

/// `dir/name` if it exists and is newer than every source file its dep-info lists, and than the
/// workspace's `Cargo.lock`.
pub fn fresh_binary(dir: &Path, name: &str) -> Result<PathBuf, Unusable> {
    let binary = dir.join(name);
    let built = match modified(&binary) {
        Some(time) => time,
        None => return Err(Unusable::NotBuilt { binary }),
    };
    let depinfo = dir.join(format!("{name}.d"));
    let sources = match std::fs::read_to_string(&depinfo) {
        Ok(text) => dependencies(&text),
        Err(_) => return Err(Unusable::NoDepInfo { binary, depinfo }),
    };
    if sources.is_empty() {
        return Err(Unusable::NoDepInfo { binary, depinfo });
    }
    let lock = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.lock");
    // A listed file that is gone (a module deleted since) changed the file that named it, whose
    // newer time is what tells; a missing one alone is not a change.
    let newer: Vec<PathBuf> = sources
        .into_iter()
        .chain([lock])
        .filter(|source| modified(source).is_some_and(|changed| changed > built))
        .collect();
    if newer.is_empty() {
        Ok(binary)
    } else {
        Err(Unusable::Stale { binary, newer })
    }
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// The prerequisites of a Makefile-style dep-info file as cargo writes it
/// (`target: dep dep \` with continued lines, spaces in paths escaped as `\ `).
fn dependencies(depinfo: &str) -> Vec<PathBuf> {
    let joined = depinfo.replace("\\\n", " ");
    let mut paths = Vec::new();
    for line in joined.lines() {
        // The first unescaped ": " ends the target.
        let Some((_, deps)) = line.split_once(": ") else {
            continue;
        };
        let mut current = String::new();
        let mut chars = deps.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '\\' if chars.peek() == Some(&' ') => {
                    current.push(' ');
                    chars.next();
                }
                c if c.is_whitespace() => {
                    if !current.is_empty() {
                        paths.push(PathBuf::from(std::mem::take(&mut current)));
                    }
                }
                c => current.push(c),
            }
        }
        if !current.is_empty() {
            paths.push(PathBuf::from(current));
        }
    }
    paths
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::time::Duration;

    #[test]
    fn dep_info_lists_every_prerequisite_with_escaped_spaces() {
        let text = "/t/debug/app: /src/a.rs /src/my\\ dir/b.rs \\\n  /src/c.rs\n\n/src/a.rs:\n";
        assert_eq!(
            dependencies(text),
            ["/src/a.rs", "/src/my dir/b.rs", "/src/c.rs"]
                .map(PathBuf::from)
                .to_vec()
        );
    }

    /// The api's real dep-info file (written by the build deploy/dev/test runs first), next to a
    /// stand-in binary whose time is set before the api's sources last changed: the helper must
    /// refuse it and name an api source, as it would after an edit (or a `touch`) of the api.
    #[test]
    fn a_binary_older_than_an_api_source_is_refused() {
        let real = fresh_binary(&profile_dir(), "medembed-api")
            .unwrap_or_else(|unusable| panic!("the real api binary: {unusable}"));
        let api_source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../services/api/src/lib.rs");
        let api_source = api_source.canonicalize().expect("services/api/src/lib.rs");

        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::copy(
            real.with_file_name("medembed-api.d"),
            dir.path().join("medembed-api.d"),
        )
        .expect("copy the dep-info file");
        let stand_in = File::create(dir.path().join("medembed-api")).expect("stand-in binary");
        let before = modified(&api_source).unwrap() - Duration::from_secs(1);
        stand_in.set_modified(before).expect("set mtime");
        drop(stand_in);

        match fresh_binary(dir.path(), "medembed-api") {
            Err(Unusable::Stale { newer, .. }) => {
                assert!(
                    newer
                        .iter()
                        .any(|p| p.canonicalize().ok().as_ref() == Some(&api_source)),
                    "services/api/src/lib.rs should be named as newer, got {newer:?}"
                );
            }
            other => panic!("a stale api binary must be refused, got {other:?}"),
        }

        // The same stand-in, dated after every source, is accepted.
        let stand_in = File::options()
            .write(true)
            .open(dir.path().join("medembed-api"))
            .unwrap();
        stand_in
            .set_modified(SystemTime::now() + Duration::from_secs(5))
            .unwrap();
        drop(stand_in);
        assert_eq!(
            fresh_binary(dir.path(), "medembed-api"),
            Ok(dir.path().join("medembed-api"))
        );
    }

    #[test]
    fn a_missing_binary_or_dep_info_is_refused_with_the_build_command() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = fresh_binary(dir.path(), "medembed-api").unwrap_err();
        assert!(matches!(missing, Unusable::NotBuilt { .. }));
        assert!(missing.to_string().contains(BUILD_COMMAND), "{missing}");

        File::create(dir.path().join("medembed-api")).unwrap();
        let no_depinfo = fresh_binary(dir.path(), "medembed-api").unwrap_err();
        assert!(
            matches!(no_depinfo, Unusable::NoDepInfo { .. }),
            "{no_depinfo}"
        );
    }
}
