//! Margay's eBPF dataplane: the programs in `bpf/` (C, built by clang-19),
//! loaded once per node and pinned, attached to every endpoint as clsact
//! filters; per-endpoint state lives in maps keyed by ifindex. It applies
//! the desired state of `margay_model`.
//!
//! Layers, one way down: the cluster features use the kernel objects,
//! never the reverse.
//!
//! Cluster features:
//! - [`registry`]: endpoint entries an ADD writes and a DEL removes;
//! - [`policy`]: an endpoint's rules compiled into the programs' form;
//! - [`ip_set`]: the named address sets policy rules match peers against;
//! - [`service`]: services (frontends and backends) synced into the maps;
//! - [`nodeport`]: the data interfaces and addresses NodePorts answer on;
//! - [`cluster`]: the tunnel to other nodes, where their pods are, the routes;
//! - [`host_lb`]: services for host-networked clients, at connect time;
//! - [`inspect`]: counters, conntrack and flow events, for `margayctl`.
//!
//! Kernel objects:
//! - [`node`]: loading, pinning, upgrading, attaching, detaching;
//! - [`maps`]: typed handles on the pinned maps and their layouts;
//! - `link` (private): pinned cgroup links (what aya does not expose);
//! - [`paths`]: where a BPF root keeps its pins and locks;
//! - [`abi`]: Rust mirrors of `bpf/abi.h`;
//! - [`object`]: the compiled programs, embedded;
//! - [`bpffs`]: the filesystem pins live on.
//!
//! Every failure is a [`DataplaneError`] (or a feature's own error wrapping
//! one) naming the object at fault, with its cause kept: [`error`].

#![warn(missing_docs)]
#![warn(clippy::missing_errors_doc)]

pub mod abi;
pub mod bpffs;
pub mod cluster;
pub mod error;
pub mod host_lb;
pub mod inspect;
pub mod ip_set;
mod link;
pub mod maps;
mod netlink;
pub mod node;
pub mod nodeport;
pub mod object;
pub mod paths;
pub mod policy;
pub mod registry;
pub mod service;
mod slots;
mod upgrade;

pub use error::DataplaneError;
