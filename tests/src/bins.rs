//! Where the workspace's binaries are.

use std::path::PathBuf;

/// The directory the binaries were built into: the profile directory the
/// running test executable lives under (`target/<profile>/deps/..`), or
/// `MARGAY_BIN_DIR` when set.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("MARGAY_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("the test executable has a path");
    let mut dir = exe
        .parent()
        .expect("executables live in a directory")
        .to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

/// The path of binary `name`, which must have been built.
pub fn bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.is_file(),
        "{} is missing: build the workspace binaries first (cargo build --workspace --bins)",
        path.display()
    );
    path
}

/// Debian's reference plugins (containernetworking-plugins).
pub const REFERENCE_PLUGINS: &str = "/usr/lib/cni";

/// `CNI_PATH` for tests: our binaries first, then the reference plugins.
pub fn cni_path() -> Vec<PathBuf> {
    vec![bin_dir(), PathBuf::from(REFERENCE_PLUGINS)]
}
