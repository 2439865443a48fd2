//! Tests that need root run as root in CI; by hand, unprivileged, they skip
//! with a message nobody can miss.

/// True when the caller may go on. In CI (`CI` set) a missing privilege is a
/// failure, not a skip: CI runs as root, so anything else is a broken setup.
pub fn root_or_skip(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{test} needs root, and CI is set: CI must run the suite as root"
    );
    eprintln!("\n*** SKIPPED {test}: needs root (netns, veth, BPF). Run the suite as root. ***\n");
    false
}

/// Returns from the calling test unless it may go on as root:
/// `require_root!(my_test);` (see [`root_or_skip`]).
#[macro_export]
macro_rules! require_root {
    ($test:ident) => {
        if !$crate::privilege::root_or_skip(stringify!($test)) {
            return;
        }
    };
}
