//! Margay's desired state: what both front ends produce (`margayctl` from
//! files, the agent from the Kubernetes API) and the dataplane (`ebpf`)
//! applies. Kernel-free, so that translations into it are tested without
//! aya, netlink or a kernel.
//!
//! - [`service`]: services, their frontends and backends;
//! - [`peer`]: the other nodes and where their pods are;
//! - [`policy`]: an endpoint's rules, as operators write them;
//! - [`ip_set`]: the sets of addresses rules refer to;
//! - [`protocol`]: the IP protocol services and rules name.
//!
//! Node settings (data interfaces, external service mode, map sizes) are
//! the network configuration's and stay in `margay-conf`.

pub mod ip_set;
pub mod peer;
pub mod policy;
pub mod protocol;
pub mod service;
