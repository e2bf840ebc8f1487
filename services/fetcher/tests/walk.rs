//! The `files:` walk over a local folder: symbolic links are followed but a link loop does not
//! run forever or list a file twice, and absurdly deep nesting is refused with the path.

use std::os::unix::fs::symlink;

use medembed_fetcher::stage::{MAX_WALK_DEPTH, list_local};

#[test]
fn a_link_loop_ends_and_every_file_is_listed_once() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("sub")).unwrap();
    std::fs::write(root.join("a.xml.gz"), b"").unwrap();
    std::fs::write(root.join("sub/b.xml"), b"").unwrap();
    std::fs::write(root.join("sub/notes.txt"), b"").unwrap();
    symlink(root, root.join("sub/back")).unwrap(); // a loop: sub/back/sub/back/…
    symlink(root.join("sub"), root.join("again")).unwrap(); // the same folder twice
    let files = list_local(root).expect("walk");
    let mut names: Vec<String> = files
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["a.xml.gz", "b.xml"], "{files:?}");
}

#[test]
fn nesting_deeper_than_the_limit_is_refused_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let mut deep = dir.path().to_path_buf();
    for level in 0..=MAX_WALK_DEPTH {
        deep = deep.join(format!("d{level}"));
    }
    std::fs::create_dir_all(&deep).unwrap();
    std::fs::write(deep.join("x.xml"), b"").unwrap();
    let err = list_local(dir.path()).expect_err("too deep");
    let message = err.to_string();
    assert!(
        message.contains(&format!("deeper than {MAX_WALK_DEPTH} levels"))
            && message.contains(&format!("d{MAX_WALK_DEPTH}")),
        "{message}"
    );
    // At the limit it is fine.
    let ok = tempfile::tempdir().unwrap();
    let mut at_limit = ok.path().to_path_buf();
    for level in 0..MAX_WALK_DEPTH {
        at_limit = at_limit.join(format!("d{level}"));
    }
    std::fs::create_dir_all(&at_limit).unwrap();
    std::fs::write(at_limit.join("x.xml"), b"").unwrap();
    assert_eq!(list_local(ok.path()).expect("walk").len(), 1);
}
