//! What can go wrong in the dataplane, each with the object at fault.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error("bpffs is not mounted at /sys/fs/bpf and cannot be mounted: {0}")]
    Bpffs(String),
    #[error("BPF root {path}: {reason}")]
    Root { path: PathBuf, reason: String },
    #[error("the dataplane lock could not be taken: {0}")]
    Lock(#[from] margay_conf::lock::LockError),
    #[error("the eBPF object does not parse: {0}")]
    Object(String),
    #[error("loading the eBPF programs failed (is this kernel ≥ 5.10 with BTF?): {0}")]
    Load(String),
    #[error(
        "pinned map {path} has layout {pinned} but this Margay expects {expected}; it holds \
         endpoint state that cannot be converted. Detach every endpoint first \
         (margayctl dataplane detach-all), then re-create the pods"
    )]
    IncompatibleMap {
        path: PathBuf,
        pinned: String,
        expected: String,
    },
    #[error("pinning {path} failed: {reason}")]
    Pin { path: PathBuf, reason: String },
    #[error("map {map}: {reason}")]
    Map { map: String, reason: String },
    #[error("attaching {program} to {ifname} failed: {reason}")]
    Attach {
        program: &'static str,
        ifname: String,
        reason: String,
    },
    #[error("{0}")]
    Check(String),
    /// A file the dataplane keeps beside its pins (under /run/margay).
    #[error("{path}: {reason}")]
    RunState { path: PathBuf, reason: String },
}

impl DataplaneError {
    pub fn map(map: &str, reason: impl std::fmt::Display) -> Self {
        DataplaneError::Map {
            map: map.to_string(),
            reason: reason.to_string(),
        }
    }
}
