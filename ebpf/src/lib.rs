//! Margay's eBPF dataplane: the programs in `bpf/` (C, built by clang-19),
//! loaded once per node and pinned, attached to every endpoint as clsact
//! filters; per-endpoint state lives in maps keyed by ifindex.
//!
//! - [`node`]: loading, pinning, upgrading, attaching, detaching;
//! - [`registry`]: endpoint entries an ADD writes and a DEL removes;
//! - [`policy`]: the operator's rule schema and its compiled form;
//! - [`service`]: services (frontends and backends) synced into the maps;
//! - [`cluster`]: the tunnel to other nodes, where their pods are, the routes;
//! - [`inspect`]: counters, conntrack and flow events, for `margayctl`;
//! - [`maps`]: typed handles on the pinned maps and their layouts;
//! - [`abi`]: Rust mirrors of `bpf/abi.h`;
//! - [`bpffs`]: the filesystem pins live on.

pub mod abi;
pub mod bpffs;
pub mod cluster;
pub mod error;
pub mod inspect;
pub mod maps;
mod netlink;
pub mod node;
pub mod object;
pub mod policy;
pub mod registry;
pub mod service;

pub use error::DataplaneError;
