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
        /// Why the mount failed (the `mount(2)` errno).
        #[source]
        source: Cause,
    },
    /// The BPF root directory (where this node's pins live) is unusable.
    #[error("BPF root {path}: {source}")]
    Root {
        /// The BPF root, as the caller named it.
        path: PathBuf,
        /// Why: it cannot be created, is not on a bpffs, or lacks a pinned
        /// program.
        #[source]
        source: Cause,
    },
    /// Another process holds the dataplane's lock and it could not be taken.
    #[error("the dataplane lock could not be taken: {0}")]
    Lock(#[from] margay_conf::lock::LockError),
    /// The programs' object, built into this binary, lacks what it must have.
    #[error("the eBPF object does not parse: {source}")]
    Object {
        /// What is missing or fails to parse (a map or program named by the
        /// loader).
        #[source]
        source: Cause,
    },
    /// The kernel refused the programs (its verifier's log is in the cause).
    #[error("loading the eBPF programs failed (is this kernel ≥ 5.10 with BTF?): {source}")]
    Load {
        /// aya's error, with the verifier's log when the kernel refused a
        /// program.
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
        /// The pinned map.
        path: PathBuf,
        /// Its layout, as [`Layout`](crate::maps::Layout) shows it.
        pinned: String,
        /// The layout this build's object (with the configured sizes) has.
        expected: String,
    },
    /// A program, map or link could not be pinned, opened or replaced at
    /// `path`.
    #[error("pinning {path} failed: {source}")]
    Pin {
        /// The pin under the BPF root.
        path: PathBuf,
        /// The filesystem's or the kernel's error.
        #[source]
        source: Cause,
    },
    /// Map `map` could not be opened, read or written.
    #[error("map {map}: {source}")]
    Map {
        /// The map's name as the object defines it (`conntrack`,
        /// `svc_frontends`, …), or its pin's path when only that is known.
        map: String,
        /// aya's map error, or what the map cannot take (full, no free
        /// slot).
        #[source]
        source: Cause,
    },
    /// `program` could not be attached to (or detached from) `ifname`, an
    /// interface or a cgroup.
    #[error("attaching {program} to {ifname} failed: {source}")]
    Attach {
        /// The program (`from_pod`, `to_pod`, `from_net`, `from_tunnel`, or
        /// a socket program such as `sock_connect4`), or `clsact` when the
        /// interface or its qdisc failed first, or
        /// [`ALL_SOCKET_PROGRAMS`](crate::host_lb::ALL_SOCKET_PROGRAMS)
        /// when a step all socket programs share failed (the cgroup, mounting
        /// its hierarchy, the links' directory).
        program: &'static str,
        /// The interface's name, or `cgroup <path>`.
        ifname: String,
        /// netlink's, aya's or the system's error.
        #[source]
        source: Cause,
    },
    /// A rule of the policy being set is refused (naming the rule).
    #[error(transparent)]
    Policy(#[from] crate::policy::PolicyError),
    /// A program that should be on an interface is not.
    #[error("program {program} is not attached to {ifname}")]
    NotAttached {
        /// The missing program, as [`PROGRAMS`](crate::node::PROGRAMS) names it.
        program: &'static str,
        /// The interface it is missing from.
        ifname: String,
    },
    /// The tunnel device to other nodes (`cluster::TUNNEL_DEVICE`) could
    /// not be set up, read or removed; `action` says which step.
    #[error("the tunnel {device}: {action}: {source}")]
    Tunnel {
        /// The device, [`TUNNEL_DEVICE`](crate::cluster::TUNNEL_DEVICE).
        device: &'static str,
        /// The step that failed (`creating the VXLAN device`, `bringing it
        /// up`, …).
        action: String,
        /// netlink's or the system's error.
        #[source]
        source: Cause,
    },
    /// The kernel routes to other nodes' pods could not be written or
    /// read; `what` names the route or the listing.
    #[error("routes to other nodes' pods: {what}: {source}")]
    Route {
        /// `route to <cidr>`, or the listing or removal that failed.
        what: String,
        /// netlink's error.
        #[source]
        source: Cause,
    },
    /// The network namespace's cookie, which the socket programs compare
    /// with their socket's, could not be learnt (Linux ≥ 5.14 has it).
    #[error("the network namespace's cookie (SO_NETNS_COOKIE, Linux ≥ 5.14): {source}")]
    NetnsCookie {
        /// The socket's or `getsockopt`'s error (`ENOPROTOOPT` before 5.14).
        #[source]
        source: std::io::Error,
    },
    /// A file the dataplane keeps beside its pins (under /run/margay)
    /// could not be written, such as the services' apply serial.
    #[error("{path}: {source}")]
    RunState {
        /// The file.
        path: PathBuf,
        /// What was being done and the system's error.
        #[source]
        source: Cause,
    },
}

impl DataplaneError {
    /// [`DataplaneError::Map`] for map `map`, with its cause: the one way
    /// this crate builds it, so that every map error names its map.
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
