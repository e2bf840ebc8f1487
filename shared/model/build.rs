//! An rpath to libtorch's `lib/` (the `LIBTORCH` that torch-sys links against, set by
//! `.cargo/config.toml`), so that tests and binaries load libtorch without LD_LIBRARY_PATH.
//! Every crate that links libtorch uses this one file as its build script (`build = …` in its
//! Cargo.toml). Deployed binaries find libtorch through their image's library path instead.
fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    if let Ok(dir) = std::env::var("LIBTORCH") {
        let lib = std::path::Path::new(&dir).join("lib");
        let lib = lib.canonicalize().unwrap_or(lib);
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    }
}
