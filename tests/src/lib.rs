//! Test support for Margay: find the built binaries, run them exactly as a
//! container runtime does, and own the network namespaces tests create.
//!
//! - [`bins`]: where the workspace's binaries were built;
//! - [`privilege`]: root checks that fail in CI and skip loudly by hand;
//! - [`process`]: one plugin exec with an explicit environment;
//! - [`netns`]: named network namespaces removed on drop;
//! - [`traffic`]: TCP, UDP and forged packets from inside namespaces, in-process;
//! - [`bpf`]: private BPF roots and running programs on crafted packets;
//! - [`packet`]: crafted Ethernet/IPv4 frames;
//! - [`fixture`]: a test network and its pods, cleaned up on drop;
//! - [`cluster`]: nodes as namespaces on one LAN, with an external client;
//! - [`driver`]: a runtime over a conflist (prevResult chaining, result cache).
//! - [`kube`]: a real Kubernetes cluster (`scripts/cluster`), down on drop;
//! - [`host_agent`]: a margay-agent on the host for a node without kubelet;
//! - [`workload`]: web pods on such a cluster, and talking to them.

pub mod bins;
pub mod bpf;
pub mod cgroup;
pub mod cluster;
pub mod driver;
pub mod fixture;
pub mod host_agent;
pub mod kube;
pub mod netns;
pub mod packet;
pub mod privilege;
pub mod process;
pub mod traffic;
pub mod workload;
