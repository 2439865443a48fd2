//! Where a BPF root keeps things: every path under it (and its locks,
//! which cannot live on bpffs) is made here.
//!
//! ```text
//! <root>/progs/{from_pod,to_pod,from_net,from_tunnel,sock_connect4,…}
//! <root>/links/{sock_connect4,sock_sendmsg4,sock_recvmsg4,sock_getpeername4,sock_connect6,…}
//! <root>/maps/{endpoints,endpoints6,endpoints_by_ip,policies,policies6,conntrack,conntrack6,
//!              counters,flow_events,config,svc_frontends,svc_backends,svc_meta,svc_affinity,nat,…}
//! /run/margay/locks/<root, flattened>[.<what>].lock
//! /run/margay/locks/<root, flattened>.<what>.serial
//! ```

use std::path::{Path, PathBuf};

/// Where the roots' lock and serial files live (locks cannot live on bpffs).
const LOCK_DIR: &str = "/run/margay/locks";

/// The pin of map `name`.
pub fn map_path(root: &Path, name: &str) -> PathBuf {
    root.join("maps").join(name)
}

/// The pin of program `name`.
pub fn program_path(root: &Path, name: &str) -> PathBuf {
    root.join("progs").join(name)
}

/// The pin of program `name`'s link to the node's cgroup.
pub fn link_path(root: &Path, name: &str) -> PathBuf {
    root.join("links").join(name)
}

/// Where pin `pin` waits while its replacement is pinned (a map whose
/// entries are carried over, a link replaced). No dot in it: bpffs
/// refuses names with one (EPERM), they are the kernel's.
pub(crate) fn set_aside_path(pin: &Path) -> PathBuf {
    let name = pin.file_name().unwrap_or_default().to_string_lossy();
    pin.with_file_name(format!("{name}-previous"))
}

/// Lock files cannot live on bpffs; one per root, under /run.
/// `what` names the lock ("" for loading, "services" for service applies).
pub(crate) fn lock_path(root: &Path, what: &str) -> PathBuf {
    let flat = flatten(root);
    let name = if what.is_empty() {
        format!("{flat}.lock")
    } else {
        format!("{flat}.{what}.lock")
    };
    Path::new(LOCK_DIR).join(name)
}

/// How many times what `what`'s lock guards was written (service applies
/// count themselves there), beside the lock.
pub(crate) fn serial_path(root: &Path, what: &str) -> PathBuf {
    Path::new(LOCK_DIR).join(format!("{}.{what}.serial", flatten(root)))
}

/// Removes `root`'s lock and serial files, for a root that is gone for
/// good (uninstalled, a test's): they live outside it, under /run, and
/// would outlast it. Missing files are no error.
///
/// # Errors
///
/// The directory's or a file's I/O error other than "not found".
pub fn remove_run_files(root: &Path) -> std::io::Result<()> {
    let dir = Path::new(LOCK_DIR);
    let prefix = format!("{}.", flatten(root));
    let entries = match std::fs::read_dir(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        other => other?,
    };
    for entry in entries {
        let entry = entry?;
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            match std::fs::remove_file(entry.path()) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
    }
    Ok(())
}

fn flatten(root: &Path) -> String {
    root.to_string_lossy()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}
