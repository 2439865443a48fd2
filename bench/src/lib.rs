//! Library behind the `bench` command, which measures Margay against its
//! peers (Debian's reference CNI plugins) in the same run.
//!
//! Each benchmark lives in its own module and returns a serialisable report;
//! nothing here prints: the binary decides between a table and JSON.

pub mod agent_load;
pub mod cluster_ipam;
pub mod cluster_tasks;
pub mod datapath;
pub mod exec;
pub mod interrupt;
pub mod ipam;
pub mod k8s_pods;
pub mod kube_policy;
pub mod kube_services;
pub mod network;
pub mod nodeport;
pub mod packets;
pub mod pod_probe;
pub mod pods;
pub mod probe;
pub mod procfs;
pub mod report;
pub mod services;
pub mod stats;
pub mod throughput;
