//! Typed handles on the pinned maps, opened by path (no program load),
//! and the one map written from others' contents: the frontend filter.

use std::path::Path;

use aya::Pod;
use aya::maps::{HashMap, Map, MapData, MapInfo, PerCpuArray, RingBuf};

use crate::abi::{
    Backend, Backend6, BackendKey, Config, Counters, CtEntry, CtKey, CtKey6, Endpoint, Endpoint6,
    IpSetData, IpSetData6, NameRecord, NatEntry, NatEntry6, NatKey, NatKey6, NodeConfig, Peer,
    Policy, Policy6, PolicyKey, SvcFilter, SvcKey, SvcKey6, SvcMeta, SvcValue,
};
use crate::error::DataplaneError;
use crate::paths::map_path;

/// Every map the object defines and Margay pins, with what losing its
/// contents costs. "Durable" maps describe running endpoints and must be
/// carried over an upgrade; "rebuildable" ones refill by themselves.
pub const PINNED_MAPS: [(&str, Durability); 35] = [
    ("endpoints", Durability::Durable),
    ("endpoints6", Durability::Durable),
    ("endpoints_by_ip", Durability::Durable),
    ("policies", Durability::Durable),
    ("policies6", Durability::Durable),
    ("ip_sets", Durability::Durable),
    ("ip_sets6", Durability::Durable),
    ("ip_set_names", Durability::Durable),
    ("policy_sources", Durability::Durable),
    ("svc_frontends", Durability::Durable),
    ("svc_backends", Durability::Durable),
    ("svc_frontends6", Durability::Durable),
    ("svc_backends6", Durability::Durable),
    ("svc_meta", Durability::Durable),
    ("node_addrs", Durability::Durable),
    ("node_addrs6", Durability::Durable),
    ("node_config", Durability::Durable),
    ("node_peers", Durability::Durable),
    ("node_peers6", Durability::Durable),
    ("peer_addrs6", Durability::Durable),
    // Running flows: losing them re-judges every established connection's
    // next packet as a new flow (a server pod whose egress policy does not
    // name its clients would lose its connections) and breaks service
    // replies until the next forward packet.
    ("nat", Durability::Flows),
    ("nat6", Durability::Flows),
    ("svc_affinity", Durability::Rebuildable),
    ("svc_affinity6", Durability::Rebuildable),
    ("conntrack", Durability::Flows),
    ("conntrack6", Durability::Flows),
    ("counters", Durability::Rebuildable),
    // Which endpoint holds which counters slot: endpoints' entries name
    // their slots, so this is as durable as they are.
    ("counter_slots", Durability::Durable),
    // Rebuilt from svc_frontends by the loader.
    ("svc_filter", Durability::Rebuildable),
    ("flow_events", Durability::Rebuildable),
    // Host sockets' frontends: losing them only shows a connected socket
    // its backend's address.
    ("sock_revnat", Durability::Rebuildable),
    ("sock_revnat6", Durability::Rebuildable),
    ("config", Durability::Rebuildable),
    ("policy_hits", Durability::Rebuildable),
    // Refilled by every load, before any endpoint runs from_pod.
    ("calls", Durability::Rebuildable),
];

/// What a new build (or new settings) does with a pinned map whose
/// layout differs from its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Carried over into a map of the new capacity; refused when its
    /// records differ.
    Durable,
    /// Replaced: its contents are rebuilt, or not worth keeping.
    Rebuildable,
    /// Running flows: carried over when the records are the same or an
    /// earlier layout of them (fields are only ever added at the end, and
    /// read as zero where the old entry had none), replaced otherwise.
    Flows,
}

fn open(root: &Path, name: &str) -> Result<Map, DataplaneError> {
    let data = MapData::from_pin(map_path(root, name)).map_err(|e| DataplaneError::map(name, e))?;
    Map::from_map_data(data).map_err(|e| DataplaneError::map(name, e))
}

pub type Endpoints = HashMap<MapData, u32, Endpoint>;
pub type Endpoints6 = HashMap<MapData, u32, Endpoint6>;
pub type EndpointsByIp = HashMap<MapData, [u8; 4], u32>;
pub type Policies = HashMap<MapData, PolicyKey, Policy>;
pub type Policies6 = HashMap<MapData, PolicyKey, Policy6>;
pub type Conntrack = HashMap<MapData, CtKey, CtEntry>;
pub type Conntrack6 = HashMap<MapData, CtKey6, CtEntry>;
pub type CountersMap = PerCpuArray<MapData, Counters>;
pub type CounterSlots = HashMap<MapData, u32, u32>;
pub type SvcFilterMap = aya::maps::Array<MapData, SvcFilter>;
pub type ConfigMap = aya::maps::Array<MapData, Config>;
pub type Frontends = HashMap<MapData, SvcKey, SvcValue>;
pub type Backends = HashMap<MapData, BackendKey, Backend>;
pub type Frontends6 = HashMap<MapData, SvcKey6, SvcValue>;
pub type Backends6 = HashMap<MapData, BackendKey, Backend6>;
pub type ServiceNames = HashMap<MapData, u32, SvcMeta>;
pub type Nat = HashMap<MapData, NatKey, NatEntry>;
pub type Nat6 = HashMap<MapData, NatKey6, NatEntry6>;
pub type NodeAddrs = HashMap<MapData, [u8; 4], u32>;
pub type NodeAddrs6 = HashMap<MapData, [u8; 16], u32>;
pub type PeerAddrs6 = HashMap<MapData, [u8; 4], [u8; 16]>;
pub type NodeConfigMap = aya::maps::Array<MapData, NodeConfig>;
pub type NodePeers = aya::maps::lpm_trie::LpmTrie<MapData, [u8; 4], Peer>;
pub type NodePeers6 = aya::maps::lpm_trie::LpmTrie<MapData, [u8; 16], Peer>;
pub type IpSets = aya::maps::lpm_trie::LpmTrie<MapData, IpSetData, u32>;
pub type IpSets6 = aya::maps::lpm_trie::LpmTrie<MapData, IpSetData6, u32>;
pub type Names = HashMap<MapData, u32, NameRecord>;
pub type PolicyHits = PerCpuArray<MapData, u64>;

macro_rules! opener {
    ($fn:ident, $ty:ty, $name:literal) => {
        pub fn $fn(root: &Path) -> Result<$ty, DataplaneError> {
            <$ty>::try_from(open(root, $name)?).map_err(|e| DataplaneError::map($name, e))
        }
    };
}

opener!(endpoints, Endpoints, "endpoints");
opener!(endpoints6, Endpoints6, "endpoints6");
opener!(endpoints_by_ip, EndpointsByIp, "endpoints_by_ip");
opener!(policies, Policies, "policies");
opener!(policies6, Policies6, "policies6");
opener!(conntrack, Conntrack, "conntrack");
opener!(conntrack6, Conntrack6, "conntrack6");
opener!(counters, CountersMap, "counters");
opener!(counter_slots, CounterSlots, "counter_slots");
opener!(svc_filter, SvcFilterMap, "svc_filter");
opener!(config, ConfigMap, "config");
opener!(flow_events, RingBuf<MapData>, "flow_events");
opener!(frontends, Frontends, "svc_frontends");
opener!(backends, Backends, "svc_backends");
opener!(frontends6, Frontends6, "svc_frontends6");
opener!(backends6, Backends6, "svc_backends6");
opener!(service_names, ServiceNames, "svc_meta");
opener!(nat, Nat, "nat");
opener!(nat6, Nat6, "nat6");
opener!(node_addrs, NodeAddrs, "node_addrs");
opener!(node_addrs6, NodeAddrs6, "node_addrs6");
opener!(node_config, NodeConfigMap, "node_config");
opener!(ip_sets, IpSets, "ip_sets");
opener!(ip_sets6, IpSets6, "ip_sets6");
opener!(ip_set_names, Names, "ip_set_names");
opener!(policy_sources, Names, "policy_sources");
opener!(policy_hits, PolicyHits, "policy_hits");

/// Changes the node settings the programs read with `change`, keeping the
/// rest (the tunnel's and the host sockets' parts are set apart).
pub fn update_node_config(
    root: &Path,
    change: impl FnOnce(&mut NodeConfig),
) -> Result<(), DataplaneError> {
    let mut map = node_config(root)?;
    let fail = |e| DataplaneError::map("node_config", e);
    let mut config = map.get(&0, 0).map_err(fail)?;
    let before = config;
    change(&mut config);
    if config != before {
        map.set(0, config, 0).map_err(fail)?;
    }
    Ok(())
}
opener!(node_peers, NodePeers, "node_peers");
opener!(node_peers6, NodePeers6, "node_peers6");
opener!(peer_addrs6, PeerAddrs6, "peer_addrs6");

/// Every value of `map`, pinned as `name`.
pub fn values<K: Pod, V: Pod>(
    map: &HashMap<MapData, K, V>,
    name: &str,
) -> Result<Vec<V>, DataplaneError> {
    map.iter()
        .map(|kv| kv.map(|(_, v)| v).map_err(|e| DataplaneError::map(name, e)))
        .collect()
}

/// Writes the frontend filter. Readers may see a mix of the old and the new
/// words, so a bit set in both stays set throughout.
pub fn write_svc_filter(root: &Path, filter: &SvcFilter) -> Result<(), DataplaneError> {
    svc_filter(root)?
        .set(0, *filter, 0)
        .map_err(|e| DataplaneError::map("svc_filter", e))
}

/// Sets the frontend filter from the frontends the maps hold: the loader
/// does it for a new filter map before any program reads it (the caller
/// holds the node lock).
pub fn rebuild_svc_filter(root: &Path) -> Result<(), DataplaneError> {
    let keys = frontends(root)?
        .keys()
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| DataplaneError::map("svc_frontends", e))?;
    let keys6 = frontends6(root)?
        .keys()
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| DataplaneError::map("svc_frontends6", e))?;
    let filter: SvcFilter = keys.iter().collect();
    write_svc_filter(root, &filter.union(&keys6.iter().collect()))
}

/// A map's identity as the kernel checks it: what must match for programs
/// built against one definition to use a map made from another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    pub flags: u32,
}

impl Layout {
    pub fn of_pin(path: &Path) -> Result<Layout, DataplaneError> {
        let info = MapInfo::from_pin(path)
            .map_err(|e| DataplaneError::map(&path.display().to_string(), e))?;
        Ok(Layout {
            map_type: info.map_type().map(|t| t as u32).unwrap_or(u32::MAX),
            key_size: info.key_size(),
            value_size: info.value_size(),
            max_entries: info.max_entries(),
            flags: info.map_flags(),
        })
    }

    /// Same records, maybe a different capacity: entries can be copied.
    pub fn same_records(&self, other: &Layout) -> bool {
        (self.map_type, self.key_size, self.value_size, self.flags)
            == (
                other.map_type,
                other.key_size,
                other.value_size,
                other.flags,
            )
    }
}

impl std::fmt::Display for Layout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "(type {}, key {} B, value {} B, {} entries, flags {:#x})",
            self.map_type, self.key_size, self.value_size, self.max_entries, self.flags
        )
    }
}
