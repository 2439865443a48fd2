//! The `margay` CNI plugin: wires a pod with a veth pair (peer born in the
//! pod's namespace), delegates addressing to IPAM, and hands the endpoint to
//! the configured dataplane.
//!
//! - [`cni`]: the verbs, with rollback on failure;
//! - [`endpoint`]: both sides of the pair and what is configured on each;
//! - [`link`], [`route`], [`sysctl`]: the kernel objects, one module each;
//! - [`netlink`]: connections per namespace;
//! - [`names`]: host-side names derived from the attachment;
//! - [`ipam`]: delegation to the IPAM plugin;
//! - [`dataplane`]: the hook a dataplane programs endpoints through.

#![warn(missing_docs)]
#![warn(clippy::missing_errors_doc)]

pub mod cni;
pub mod dataplane;
pub mod endpoint;
pub mod ipam;
pub mod link;
pub mod names;
pub mod netlink;
pub mod route;
pub mod sysctl;

pub use cni::MargayPlugin;
