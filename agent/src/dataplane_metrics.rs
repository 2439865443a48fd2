//! The dataplane's own numbers in `/metrics`, read from its pinned maps at
//! each scrape: packets, bytes and drops by reason summed over the node's
//! endpoints, how full conntrack, the NAT table and the policy peer sets
//! are, and the new flows each NetworkPolicy's rules decided. Read at
//! scrape time rather than copied on a timer, so a scrape is never stale
//! and an idle agent does no work.

use std::path::PathBuf;

use margay_ebpf::DataplaneError;
use margay_ebpf::abi::DROP_REASONS;
use margay_ebpf::inspect;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Direction {
    direction: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Reason {
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PolicyName {
    policy: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MapName {
    map: String,
}

/// Where the node's maps are pinned.
#[derive(Debug, Clone)]
pub struct Source {
    root: PathBuf,
}

impl Source {
    pub fn new(root: PathBuf) -> Source {
        Source { root }
    }

    /// The metrics as OpenMetrics text (without the closing `# EOF`).
    ///
    /// # Errors
    /// A map cannot be opened or read.
    pub fn render(&self) -> Result<String, DataplaneError> {
        let summary = inspect::node_summary(&self.root)?;
        let mut registry = Registry::with_prefix("margay_dataplane");
        let packets = Family::<Direction, Counter>::default();
        let bytes = Family::<Direction, Counter>::default();
        // The counters' index 0 is what left a pod (egress), 1 what reached one.
        for (i, direction) in ["from_pod", "to_pod"].into_iter().enumerate() {
            let label = Direction { direction };
            packets
                .get_or_create(&label)
                .inc_by(summary.counters.packets[i]);
            bytes
                .get_or_create(&label)
                .inc_by(summary.counters.bytes[i]);
        }
        let drops = Family::<Reason, Counter>::default();
        for (reason, count) in DROP_REASONS.iter().zip(summary.counters.drops) {
            if !reason.is_empty() {
                drops.get_or_create(&Reason { reason }).inc_by(count);
            }
        }
        let entries = Family::<MapName, Gauge>::default();
        let capacity = Family::<MapName, Gauge>::default();
        for m in &summary.maps {
            let label = MapName {
                map: m.name.to_string(),
            };
            entries.get_or_create(&label).set(i64::from(m.entries));
            capacity.get_or_create(&label).set(i64::from(m.capacity));
        }
        let endpoints = Gauge::<i64>::default();
        endpoints.set(summary.endpoints as i64);
        registry.register(
            "packets",
            "Packets through the node's pod interfaces, by direction",
            packets,
        );
        registry.register(
            "bytes",
            "Bytes through the node's pod interfaces, by direction",
            bytes,
        );
        registry.register("drops", "Packets the programs dropped, by reason", drops);
        registry.register(
            "map_entries",
            "Entries in the conntrack, NAT and policy peer-set maps",
            entries,
        );
        registry.register(
            "map_capacity",
            "Capacity of the conntrack, NAT and policy peer-set maps",
            capacity,
        );
        registry.register("endpoints", "Pods with the programs attached", endpoints);
        let policy_flows = Family::<PolicyName, Counter>::default();
        for (policy, flows) in inspect::policy_flows(&self.root)? {
            policy_flows
                .get_or_create(&PolicyName { policy })
                .inc_by(flows);
        }
        registry.register(
            "policy_flows",
            "New flows a NetworkPolicy's rules decided (namespace/name)",
            policy_flows,
        );
        let mut text = String::new();
        prometheus_client::encoding::text::encode_registry(&mut text, &registry)
            .expect("writing to a String does not fail");
        Ok(text)
    }
}
