//! What the agent is told at start: flags, each also an environment
//! variable (how the DaemonSet sets them).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

/// Who balances Services on the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ServicesMode {
    /// Margay, in place of kube-proxy, whose leftover rules on the node it
    /// removes.
    ReplaceKubeProxy,
    /// Margay, with kube-proxy kept running by the platform (a managed
    /// cluster's add-on manager puts it back): its rules are left alone,
    /// and Margay's programs see the packets first.
    BesideKubeProxy,
    /// kube-proxy (or another proxy); Margay balances nothing.
    KubeProxy,
}

#[derive(Debug, Clone, Parser)]
#[command(
    name = "margay-agent",
    version,
    about = "Margay's node agent: cluster IPAM blocks, routes to other nodes and Services from the Kubernetes API"
)]
pub struct Settings {
    /// Print the IPAMBlock CustomResourceDefinition (JSON) and exit.
    #[arg(long)]
    pub print_crd: bool,
    /// This node's name (its Node object).
    #[arg(
        long,
        env = "NODENAME",
        required_unless_present = "print_crd",
        default_value = ""
    )]
    pub node_name: String,
    /// The installed conflist: the agent reads the IPAM section (pools,
    /// block sizes, store, socket) and the BPF root from it.
    #[arg(
        long,
        env = "MARGAY_CONFLIST",
        default_value = "/etc/cni/net.d/10-margay.conflist"
    )]
    pub conflist: PathBuf,
    /// Where /livez, /readyz and /metrics are served: the node's own
    /// address or loopback, never every address.
    #[arg(long, env = "MARGAY_HEALTH_ADDR", default_value = "127.0.0.1:9091")]
    pub health_addr: SocketAddr,
    /// Free addresses of each family the node keeps at hand: below it the
    /// agent claims another block, so an ADD never waits for the API.
    #[arg(long, env = "MARGAY_IPAM_MIN_FREE", default_value_t = 16)]
    pub ipam_min_free: u32,
    /// How long an empty block beyond the headroom stays before it goes
    /// back to the pool.
    #[arg(long, env = "MARGAY_IPAM_EMPTY_BLOCK_GRACE", default_value = "5m", value_parser = humantime::parse_duration)]
    pub empty_block_grace: Duration,
    /// How long an address whose pod no longer exists on this node stays
    /// held before it is released (Calico's default: 15 minutes).
    #[arg(long, env = "MARGAY_IPAM_LEAK_GRACE", default_value = "15m", value_parser = humantime::parse_duration)]
    pub leak_grace: Duration,
    /// How long the blocks of a deleted Node stay held before they are
    /// released (by one agent at a time, the holder of the Lease).
    #[arg(long, env = "MARGAY_IPAM_NODE_GONE_GRACE", default_value = "5m", value_parser = humantime::parse_duration)]
    pub node_gone_grace: Duration,
    /// The namespace of the agents' Lease (the DaemonSet's own).
    #[arg(long, env = "POD_NAMESPACE", default_value = "margay-system")]
    pub namespace: String,
    /// Program routes to the other nodes (off only for agents that claim
    /// blocks without a dataplane, such as tests' extra claimants).
    #[arg(long, env = "MARGAY_AGENT_ROUTES", default_value_t = true, action = clap::ArgAction::Set)]
    pub routes: bool,
    /// Who balances Services (bpf dataplane only; with the linux dataplane
    /// kube-proxy does).
    #[arg(
        long,
        env = "MARGAY_SERVICES",
        value_enum,
        default_value = "replace-kube-proxy"
    )]
    pub services: ServicesMode,
    /// The cgroup v2 directory holding the node's processes, where the
    /// programs that balance host-networked clients' connections are
    /// linked; on a cgroup v1 machine, an empty directory where the agent
    /// mounts the cgroup v2 hierarchy.
    #[arg(long, env = "MARGAY_CGROUP_V2", default_value = "/run/margay/cgroup2")]
    pub cgroup_v2: PathBuf,
    /// How often the node's ruleset is looked at for kube-proxy's rules.
    #[arg(long, env = "MARGAY_KUBE_PROXY_CHECK_INTERVAL", default_value = "1m", value_parser = humantime::parse_duration)]
    pub kube_proxy_check_interval: Duration,
    /// kube-proxy's health address on this node (its `healthzBindAddress`):
    /// something answering there means kube-proxy runs. Default: port 10256
    /// on the health address's IP.
    #[arg(long, env = "MARGAY_KUBE_PROXY_HEALTH_ADDR")]
    pub kube_proxy_health_addr: Option<SocketAddr>,
    /// error, warn, info, debug or trace; or a tracing filter
    /// (`info,kube=debug`).
    #[arg(long, env = "MARGAY_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
}
