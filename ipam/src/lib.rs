//! `margay-ipam`: pools cut into blocks that nodes claim, single addresses
//! handed out inside a node's blocks and recorded under the attachment's
//! handle, all in a sled store behind a node-wide lock.
//!
//! - [`block`]: one block and the addresses in it (pure logic);
//! - [`claim`]: which node owns which block, behind a trait;
//! - [`holdings`]: the store's blocks made to agree with the Kubernetes API
//!   (`datastore: kubernetes`, driven by margay-agent);
//! - [`margay_conf::agent`] (in margay-conf): what margay-ipam asks
//!   margay-agent over its socket;
//! - [`store`]: sled, the lock, atomic commits, corruption checks;
//! - [`allocator`]: assign/release/capacity over an open store;
//! - [`handle`]: the per-attachment record;
//! - [`cni`]: the CNI verbs;
//! - [`inspect`]: what the operator commands report;
//! - [`error`]: the failures, and the CNI code each is reported with.

#![warn(missing_docs)]
#![warn(clippy::missing_errors_doc)]

pub mod allocator;
pub mod block;
pub mod claim;
pub mod cni;
pub mod error;
pub mod handle;
pub mod holdings;
pub mod inspect;
pub mod store;

pub use cni::IpamPlugin;
pub use error::IpamError;
