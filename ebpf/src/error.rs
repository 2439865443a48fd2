//! What can go wrong in the dataplane, each with the object at fault.

use std::path::PathBuf;

/// The cause of a failure whose source is one of several kinds (netlink,
/// a syscall, a file), kept whole so that callers can walk to it.
pub type Cause = Box<dyn std::error::Error + Send + Sync>;

/// A failure of the dataplane: loading, pinning and attaching the
/// programs, reading and writing their maps, the tunnel and routes to other
/// nodes. Each names the object at fault and keeps its cause as its
/// [`source`](std::error::Error::source); the message shows the cause too,
/// so printing the message alone loses nothing ([`report`] prints a chain
/// without repeating it).
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    /// bpffs is not at /sys/fs/bpf and mounting it failed.
    #[error("bpffs is not mounted at /sys/fs/bpf and cannot be mounted: {source}")]
    Bpffs {
        #[source]
        source: Cause,
    },
    /// The BPF root directory (where this node's pins live) is unusable.
    #[error("BPF root {path}: {source}")]
    Root {
        path: PathBuf,
        #[source]
        source: Cause,
    },
    /// Another process holds the dataplane's lock and it could not be taken.
    #[error("the dataplane lock could not be taken: {0}")]
    Lock(#[from] margay_conf::lock::LockError),
    /// The programs' object, built into this binary, lacks what it must have.
    #[error("the eBPF object does not parse: {source}")]
    Object {
        #[source]
        source: Cause,
    },
    /// The kernel refused the programs (its verifier's log is in the cause).
    #[error("loading the eBPF programs failed (is this kernel ≥ 5.10 with BTF?): {source}")]
    Load {
        #[source]
        source: Cause,
    },
    /// A pinned map has a layout this build cannot carry its entries over
    /// from.
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
    /// A program, map or link could not be pinned, opened or replaced at
    /// `path`.
    #[error("pinning {path} failed: {source}")]
    Pin {
        path: PathBuf,
        #[source]
        source: Cause,
    },
    /// Map `map` could not be opened, read or written.
    #[error("map {map}: {source}")]
    Map {
        map: String,
        #[source]
        source: Cause,
    },
    /// `program` could not be attached to (or detached from) `ifname`, an
    /// interface or a cgroup.
    #[error("attaching {program} to {ifname} failed: {source}")]
    Attach {
        program: &'static str,
        ifname: String,
        #[source]
        source: Cause,
    },
    /// A rule of the policy being set is refused (naming the rule).
    #[error(transparent)]
    Policy(#[from] crate::policy::PolicyError),
    /// A program that should be on an interface is not.
    #[error("program {program} is not attached to {ifname}")]
    NotAttached {
        program: &'static str,
        ifname: String,
    },
    /// The tunnel device to other nodes (`cluster::TUNNEL_DEVICE`) could
    /// not be set up, read or removed; `action` says which step.
    #[error("the tunnel {device}: {action}: {source}")]
    Tunnel {
        device: &'static str,
        action: String,
        #[source]
        source: Cause,
    },
    /// The kernel routes to other nodes' pods could not be written or
    /// read; `what` names the route or the listing.
    #[error("routes to other nodes' pods: {what}: {source}")]
    Route {
        what: String,
        #[source]
        source: Cause,
    },
    /// The network namespace's cookie, which the socket programs compare
    /// with their socket's, could not be learnt (Linux ≥ 5.14 has it).
    #[error("the network namespace's cookie (SO_NETNS_COOKIE, Linux ≥ 5.14): {source}")]
    NetnsCookie {
        #[source]
        source: std::io::Error,
    },
    /// A file the dataplane keeps beside its pins (under /run/margay).
    #[error("{path}: {source}")]
    RunState {
        path: PathBuf,
        #[source]
        source: Cause,
    },
}

impl DataplaneError {
    /// [`DataplaneError::Map`] for map `map`, with its cause.
    pub fn map(map: &str, source: impl Into<Cause>) -> Self {
        DataplaneError::Map {
            map: map.to_string(),
            source: source.into(),
        }
    }
}

/// `error` and its causes as one line, outermost first, each cause shown
/// unless the message before it already ends with it (this crate's errors
/// show their cause in their message): what a binary prints.
///
/// ```
/// use std::error::Error;
/// let missing = std::io::Error::from(std::io::ErrorKind::NotFound);
/// let e = margay_ebpf::DataplaneError::map("conntrack", missing);
/// // The cause is kept, and shown once.
/// assert!(e.source().unwrap().downcast_ref::<std::io::Error>().is_some());
/// assert_eq!(margay_ebpf::error::report(&e), "map conntrack: entity not found");
/// ```
pub fn report(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        let shown = e.to_string();
        if !text.ends_with(&shown) {
            text.push_str(": ");
            text.push_str(&shown);
        }
        cause = e.source();
    }
    text
}
