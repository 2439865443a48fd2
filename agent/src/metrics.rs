//! The agent's own Prometheus metrics (`/metrics`): IPAM, services, API
//! sync and errors. The dataplane's counters are read at scrape time
//! ([`crate::dataplane_metrics`]).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FamilyLabel {
    pub family: &'static str,
}

impl FamilyLabel {
    pub fn of(family: u8) -> FamilyLabel {
        FamilyLabel {
            family: if family == 4 { "ipv4" } else { "ipv6" },
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WhatLabel {
    pub what: &'static str,
}

/// Every metric the agent keeps itself.
pub struct Metrics {
    pub registry: Registry,
    pub blocks: Family<FamilyLabel, Gauge>,
    pub free_addresses: Family<FamilyLabel, Gauge>,
    pub used_addresses: Family<FamilyLabel, Gauge>,
    pub block_conflicts: Gauge,
    pub claims: Family<ResultLabel, Counter>,
    pub blocks_released: Counter,
    pub leaked_addresses_released: Counter,
    pub api_errors: Family<WhatLabel, Counter>,
    pub sync_latency: Family<WhatLabel, Histogram>,
    pub leader: Gauge,
    pub service_ports: Gauge,
    pub service_ports_skipped: Gauge,
    pub apply_errors: Family<WhatLabel, Counter>,
    pub policy_ports_skipped: Gauge,
    pub policy_endpoints_denied: Gauge,
    pub kube_proxy_rules: Gauge,
    pub kube_proxy_running: Gauge,
}

fn latency_histogram() -> Histogram {
    // 1 ms .. ~16 s.
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.001, 2.0, 15,
    ))
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("margay");
        let m = Metrics {
            blocks: Family::default(),
            free_addresses: Family::default(),
            used_addresses: Family::default(),
            block_conflicts: Gauge::default(),
            claims: Family::default(),
            blocks_released: Counter::default(),
            leaked_addresses_released: Counter::default(),
            api_errors: Family::default(),
            sync_latency: Family::new_with_constructor(latency_histogram),
            leader: Gauge::default(),
            service_ports: Gauge::default(),
            service_ports_skipped: Gauge::default(),
            apply_errors: Family::default(),
            policy_ports_skipped: Gauge::default(),
            policy_endpoints_denied: Gauge::default(),
            kube_proxy_rules: Gauge::default(),
            kube_proxy_running: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register(
            "ipam_blocks",
            "Address blocks this node holds (IPAMBlock objects it uses)",
            m.blocks.clone(),
        );
        registry.register(
            "ipam_free_addresses",
            "Addresses this node can hand out without claiming a block",
            m.free_addresses.clone(),
        );
        registry.register(
            "ipam_used_addresses",
            "Addresses in use by this node's pods",
            m.used_addresses.clone(),
        );
        registry.register(
            "ipam_block_conflicts",
            "Blocks in use here that the Kubernetes API gives another node (fenced: an alarm)",
            m.block_conflicts.clone(),
        );
        registry.register(
            "ipam_claims",
            "Block claims by result (claimed, conflict: another node won the name, exhausted, error)",
            m.claims.clone(),
        );
        registry.register(
            "ipam_blocks_released",
            "Empty blocks beyond the headroom given back to the pool",
            m.blocks_released.clone(),
        );
        registry.register(
            "ipam_leaked_addresses_released",
            "Addresses released because their pod no longer exists on this node",
            m.leaked_addresses_released.clone(),
        );
        registry.register(
            "api_errors",
            "Kubernetes API calls and watches that failed, by what they were for",
            m.api_errors.clone(),
        );
        registry.register(
            "sync_latency_seconds",
            "From a change seen in the API to the node programmed for it",
            m.sync_latency.clone(),
        );
        registry.register(
            "ipam_gc_leader",
            "1 while this agent holds the Lease and collects deleted nodes' blocks",
            m.leader.clone(),
        );
        registry.register(
            "service_ports",
            "Service ports the node balances (a ClusterIP frontend each, with its NodePorts and external IPs)",
            m.service_ports.clone(),
        );
        registry.register(
            "service_ports_skipped",
            "Service ports left out (another proxy's, headless, IPv6-only, SCTP, or clashing with an older Service); the agent's log says why",
            m.service_ports_skipped.clone(),
        );
        registry.register(
            "apply_errors",
            "Applies to the node that failed (and are retried), by what they were for",
            m.apply_errors.clone(),
        );
        registry.register(
            "policy_skipped",
            "NetworkPolicy ports (or whole policies) not enforced, what they would allow staying denied; the agent's log says why",
            m.policy_ports_skipped.clone(),
        );
        registry.register(
            "policy_endpoints_denied",
            "Pods whose rules could not be written as asked (more than a direction holds) and that deny all in those directions",
            m.policy_endpoints_denied.clone(),
        );
        registry.register(
            "kube_proxy_rules",
            "1 while kube-proxy's rules are on the node (nftables or iptables-nft)",
            m.kube_proxy_rules.clone(),
        );
        registry.register(
            "kube_proxy_running",
            "1 while kube-proxy runs on the node (it answers on its health address, or put its rules back after they were removed) although Margay balances Services",
            m.kube_proxy_running.clone(),
        );
        Metrics { registry, ..m }
    }
}

impl Metrics {
    pub fn api_error(&self, what: &'static str) {
        self.api_errors.get_or_create(&WhatLabel { what }).inc();
    }

    pub fn claim(&self, result: &'static str) {
        self.claims.get_or_create(&ResultLabel { result }).inc();
    }
}
