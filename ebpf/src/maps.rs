//! Typed handles on the pinned maps, opened by path (no program load),
//! and the one map written from others' contents: the frontend filter.

use std::ops::{Deref, DerefMut};
use std::path::Path;

use aya::Pod;
use aya::maps::{HashMap, Map, MapData, MapError, MapInfo, PerCpuArray, RingBuf};

use crate::abi::{
    Backend, Backend6, BackendKey, Config, Counters, CtEntry, CtKey, CtKey6, Endpoint, Endpoint6,
    IpSetData, IpSetData6, NameRecord, NatEntry, NatEntry6, NatKey, NatKey6, NodeConfig, Peer,
    Policy, Policy6, PolicyKey, SvcFilter, SvcKey, SvcKey6, SvcMeta, SvcValue,
};
use crate::error::{Cause, DataplaneError};
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

/// A pinned map as an opener opens it: aya's map `M` (which it derefs
/// to) with the name the object gives it, so that its errors name the map
/// it was opened as, never one typed again at each use.
///
/// ```no_run
/// # use margay_ebpf::maps;
/// let mut nat = maps::nat("/sys/fs/bpf/margay".as_ref())?;
/// let keys: Vec<_> = nat.keys().collect::<Result<_, _>>().map_err(nat.error())?;
/// for key in &keys {
///     nat.remove(key).map_err(nat.error())?; // "map nat: …"
/// }
/// # Ok::<(), margay_ebpf::DataplaneError>(())
/// ```
#[derive(Debug)]
pub struct Named<M> {
    name: &'static str,
    map: M,
}

impl<M: TryFrom<Map, Error = MapError>> Named<M> {
    /// Opens map `name` pinned under `root` as an `M`: what each opener
    /// does with its own name.
    fn open(root: &Path, name: &'static str) -> Result<Named<M>, DataplaneError> {
        let fail = |e| DataplaneError::map(name, e);
        let data = MapData::from_pin(map_path(root, name)).map_err(fail)?;
        let map = M::try_from(Map::from_map_data(data).map_err(fail)?).map_err(fail)?;
        Ok(Named { name, map })
    }
}

impl<M> Named<M> {
    /// The map's name, as the object defines it and its pin is named.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// What a failure of this map becomes: [`DataplaneError::Map`] naming
    /// it, with the failure as its cause (`.map_err(map.error())`). The
    /// function holds the name only, not the map, which stays free to use.
    pub fn error<E: Into<Cause>>(&self) -> impl Fn(E) -> DataplaneError + Copy + use<M, E> {
        let name = self.name;
        move |e| DataplaneError::map(name, e)
    }
}

impl<M> Deref for Named<M> {
    type Target = M;

    fn deref(&self) -> &M {
        &self.map
    }
}

impl<M> DerefMut for Named<M> {
    fn deref_mut(&mut self) -> &mut M {
        &mut self.map
    }
}

/// `result` of removing a key, with a key that was not there taken as
/// removed (another writer, or an LRU map's eviction, was first). aya
/// reports that as `bpf_map_delete_elem`'s `ENOENT`, not as
/// [`MapError::KeyNotFound`], which only its lookups give.
pub(crate) fn removed(result: Result<(), MapError>) -> Result<(), MapError> {
    match result {
        Err(MapError::SyscallError(e)) if e.io_error.kind() == std::io::ErrorKind::NotFound => {
            Ok(())
        }
        Err(MapError::KeyNotFound) => Ok(()),
        other => other,
    }
}

/// Map `endpoints`: the registered pods ([`Endpoint`]) by host veth ifindex.
pub type Endpoints = Named<HashMap<MapData, u32, Endpoint>>;
/// Map `endpoints6`: pods' IPv6 addresses ([`Endpoint6`]) by host veth
/// ifindex.
pub type Endpoints6 = Named<HashMap<MapData, u32, Endpoint6>>;
/// Map `endpoints_by_ip`: a local pod's IPv4 address (network order) to
/// its host veth's ifindex, where packets to it are delivered.
pub type EndpointsByIp = Named<HashMap<MapData, [u8; 4], u32>>;
/// Map `policies`: each endpoint direction's IPv4 rules; an entry is what
/// gives the direction a policy.
pub type Policies = Named<HashMap<MapData, PolicyKey, Policy>>;
/// Map `policies6`: the IPv6 rules of the directions that have a policy.
pub type Policies6 = Named<HashMap<MapData, PolicyKey, Policy6>>;
/// Map `conntrack` (LRU): the endpoints' IPv4 flows.
pub type Conntrack = Named<HashMap<MapData, CtKey, CtEntry>>;
/// Map `conntrack6` (LRU): the endpoints' IPv6 flows, with the same entries.
pub type Conntrack6 = Named<HashMap<MapData, CtKey6, CtEntry>>;
/// Map `counters`: per-CPU [`Counters`] by slot (0: the node's).
pub type CountersMap = Named<PerCpuArray<MapData, Counters>>;
/// Map `counter_slots`: which endpoint (ifindex) holds each counters slot,
/// so that no two share one.
pub type CounterSlots = Named<HashMap<MapData, u32, u32>>;
/// Map `svc_filter`: its one [`SvcFilter`], at index 0.
pub type SvcFilterMap = Named<aya::maps::Array<MapData, SvcFilter>>;
/// Map `config`: its one [`Config`], at index 0.
pub type ConfigMap = Named<aya::maps::Array<MapData, Config>>;
/// Map `svc_frontends`: the IPv4 service frontends.
pub type Frontends = Named<HashMap<MapData, SvcKey, SvcValue>>;
/// Map `svc_backends`: IPv4 backends by slot.
pub type Backends = Named<HashMap<MapData, BackendKey, Backend>>;
/// Map `svc_frontends6`: the IPv6 service frontends.
pub type Frontends6 = Named<HashMap<MapData, SvcKey6, SvcValue>>;
/// Map `svc_backends6`: IPv6 backends by slot.
pub type Backends6 = Named<HashMap<MapData, BackendKey, Backend6>>;
/// Map `svc_meta`: frontends' service names by [`SvcValue::id`].
pub type ServiceNames = Named<HashMap<MapData, u32, SvcMeta>>;
/// Map `nat` (LRU): the translations of IPv4 service flows.
pub type Nat = Named<HashMap<MapData, NatKey, NatEntry>>;
/// Map `nat6` (LRU): the translations of IPv6 service flows.
pub type Nat6 = Named<HashMap<MapData, NatKey6, NatEntry6>>;
/// Map `node_addrs`: the node's IPv4 addresses NodePorts answer on, each
/// to the ifindex of the data interface it is on.
pub type NodeAddrs = Named<HashMap<MapData, [u8; 4], u32>>;
/// Map `node_addrs6`: the same for the node's IPv6 addresses.
pub type NodeAddrs6 = Named<HashMap<MapData, [u8; 16], u32>>;
/// Map `peer_addrs6`: a peer's IPv6 address on the nodes' network, by its
/// IPv4 address ([`Peer::node`]).
pub type PeerAddrs6 = Named<HashMap<MapData, [u8; 4], [u8; 16]>>;
/// Map `node_config`: its one [`NodeConfig`], at index 0.
pub type NodeConfigMap = Named<aya::maps::Array<MapData, NodeConfig>>;
/// Map `node_peers` (LPM trie): other nodes' IPv4 pod CIDRs, to the node.
pub type NodePeers = Named<aya::maps::lpm_trie::LpmTrie<MapData, [u8; 4], Peer>>;
/// Map `node_peers6` (LPM trie): other nodes' IPv6 pod CIDRs, to the node.
pub type NodePeers6 = Named<aya::maps::lpm_trie::LpmTrie<MapData, [u8; 16], Peer>>;
/// Map `ip_sets` (LPM trie): the IPv4 members of the policy peer sets,
/// each [`IP_SET_MEMBER`](crate::abi::IP_SET_MEMBER) or
/// [`IP_SET_EXCEPT`](crate::abi::IP_SET_EXCEPT).
pub type IpSets = Named<aya::maps::lpm_trie::LpmTrie<MapData, IpSetData, u32>>;
/// Map `ip_sets6` (LPM trie): the IPv6 members of the policy peer sets.
pub type IpSets6 = Named<aya::maps::lpm_trie::LpmTrie<MapData, IpSetData6, u32>>;
/// Maps `ip_set_names` and `policy_sources`: names by number.
pub type Names = Named<HashMap<MapData, u32, NameRecord>>;
/// Map `flow_events`: the ring of flow events the programs report.
pub type FlowEvents = Named<RingBuf<MapData>>;
/// Map `policy_hits`: per CPU, how many new flows each rule source's rules
/// decided, by source number.
pub type PolicyHits = Named<PerCpuArray<MapData, u64>>;

/// A function opening one pinned map as its type, documented by the
/// attributes given before its name.
macro_rules! opener {
    ($(#[$doc:meta])* $fn:ident, $ty:ty, $name:literal) => {
        $(#[$doc])*
        ///
        /// # Errors
        ///
        #[doc = concat!(
            "[`DataplaneError::Map`] naming `", $name, "` when its pin under `root` ",
            "cannot be opened (nothing loaded there, or no permission) or is not ",
            "a map of this type, key and value size."
        )]
        pub fn $fn(root: &Path) -> Result<$ty, DataplaneError> {
            Named::open(root, $name)
        }
    };
}

opener!(
    /// Opens [`Endpoints`], the registered pods.
    endpoints, Endpoints, "endpoints"
);
opener!(
    /// Opens [`Endpoints6`], the pods' IPv6 addresses.
    endpoints6, Endpoints6, "endpoints6"
);
opener!(
    /// Opens [`EndpointsByIp`], local pods by IPv4 address.
    endpoints_by_ip, EndpointsByIp, "endpoints_by_ip"
);
opener!(
    /// Opens [`Policies`], the endpoints' IPv4 rules.
    policies, Policies, "policies"
);
opener!(
    /// Opens [`Policies6`], the endpoints' IPv6 rules.
    policies6, Policies6, "policies6"
);
opener!(
    /// Opens [`Conntrack`], the IPv4 flows.
    conntrack, Conntrack, "conntrack"
);
opener!(
    /// Opens [`Conntrack6`], the IPv6 flows.
    conntrack6, Conntrack6, "conntrack6"
);
opener!(
    /// Opens [`CountersMap`], the per-CPU counters.
    counters, CountersMap, "counters"
);
opener!(
    /// Opens [`CounterSlots`], which endpoint holds which counters slot.
    counter_slots, CounterSlots, "counter_slots"
);
opener!(
    /// Opens [`SvcFilterMap`]; write it with [`write_svc_filter`].
    svc_filter, SvcFilterMap, "svc_filter"
);
opener!(
    /// Opens [`ConfigMap`], the programs' settings.
    config, ConfigMap, "config"
);
opener!(
    /// Opens the flow-event ring (`flow_events`), which
    /// [`follow_events`](crate::inspect::follow_events) reads.
    flow_events, FlowEvents, "flow_events"
);
opener!(
    /// Opens [`Frontends`], the IPv4 service frontends.
    frontends, Frontends, "svc_frontends"
);
opener!(
    /// Opens [`Backends`], the IPv4 backend slots.
    backends, Backends, "svc_backends"
);
opener!(
    /// Opens [`Frontends6`], the IPv6 service frontends.
    frontends6, Frontends6, "svc_frontends6"
);
opener!(
    /// Opens [`Backends6`], the IPv6 backend slots.
    backends6, Backends6, "svc_backends6"
);
opener!(
    /// Opens [`ServiceNames`] (map `svc_meta`).
    service_names, ServiceNames, "svc_meta"
);
opener!(
    /// Opens [`Nat`], the IPv4 service translations.
    nat, Nat, "nat"
);
opener!(
    /// Opens [`Nat6`], the IPv6 service translations.
    nat6, Nat6, "nat6"
);
opener!(
    /// Opens [`NodeAddrs`], the node's IPv4 NodePort addresses.
    node_addrs, NodeAddrs, "node_addrs"
);
opener!(
    /// Opens [`NodeAddrs6`], the node's IPv6 NodePort addresses.
    node_addrs6, NodeAddrs6, "node_addrs6"
);
opener!(
    /// Opens [`NodeConfigMap`]; change it with [`update_node_config`].
    node_config, NodeConfigMap, "node_config"
);
opener!(
    /// Opens [`IpSets`], the IPv4 set members.
    ip_sets, IpSets, "ip_sets"
);
opener!(
    /// Opens [`IpSets6`], the IPv6 set members.
    ip_sets6, IpSets6, "ip_sets6"
);
opener!(
    /// Opens map `ip_set_names` ([`Names`]): the sets' names by number.
    ip_set_names, Names, "ip_set_names"
);
opener!(
    /// Opens map `policy_sources` ([`Names`]): rule sources' names by number.
    policy_sources, Names, "policy_sources"
);
opener!(
    /// Opens [`PolicyHits`], new flows decided by each rule source.
    policy_hits, PolicyHits, "policy_hits"
);

/// Changes the node settings the programs read with `change`, keeping the
/// rest (the tunnel's and the host sockets' parts are set apart). Nothing
/// is written when `change` changes nothing.
///
/// # Errors
///
/// [`DataplaneError::Map`] naming `node_config` when it cannot be opened,
/// read or written.
pub fn update_node_config(
    root: &Path,
    change: impl FnOnce(&mut NodeConfig),
) -> Result<(), DataplaneError> {
    let mut map = node_config(root)?;
    let fail = map.error();
    let mut config = map.get(&0, 0).map_err(fail)?;
    let before = config;
    change(&mut config);
    if config != before {
        map.set(0, config, 0).map_err(fail)?;
    }
    Ok(())
}
opener!(
    /// Opens [`NodePeers`], other nodes' IPv4 pod CIDRs.
    node_peers, NodePeers, "node_peers"
);
opener!(
    /// Opens [`NodePeers6`], other nodes' IPv6 pod CIDRs.
    node_peers6, NodePeers6, "node_peers6"
);
opener!(
    /// Opens [`PeerAddrs6`], the peers' IPv6 addresses.
    peer_addrs6, PeerAddrs6, "peer_addrs6"
);

/// Every value of `map`.
///
/// # Errors
///
/// [`DataplaneError::Map`] naming `map` when an entry cannot be read.
pub fn values<K: Pod, V: Pod>(
    map: &Named<HashMap<MapData, K, V>>,
) -> Result<Vec<V>, DataplaneError> {
    map.iter()
        .map(|kv| kv.map(|(_, v)| v).map_err(map.error()))
        .collect()
}

/// Writes the frontend filter. Readers may see a mix of the old and the new
/// words, so a bit set in both stays set throughout.
///
/// # Errors
///
/// [`DataplaneError::Map`] naming `svc_filter` when it cannot be opened or
/// written.
pub fn write_svc_filter(root: &Path, filter: &SvcFilter) -> Result<(), DataplaneError> {
    let mut map = svc_filter(root)?;
    map.set(0, *filter, 0).map_err(map.error())
}

/// Sets the frontend filter from the frontends the maps hold: the loader
/// does it for a new filter map before any program reads it (the caller
/// holds the node lock).
///
/// # Errors
///
/// [`DataplaneError::Map`] naming `svc_frontends` or `svc_frontends6` when
/// its keys cannot be read, or `svc_filter` when it cannot be written.
pub fn rebuild_svc_filter(root: &Path) -> Result<(), DataplaneError> {
    let (v4, v6) = (frontends(root)?, frontends6(root)?);
    let keys = v4
        .keys()
        .collect::<Result<Vec<_>, _>>()
        .map_err(v4.error())?;
    let keys6 = v6
        .keys()
        .collect::<Result<Vec<_>, _>>()
        .map_err(v6.error())?;
    let filter: SvcFilter = keys.iter().collect();
    write_svc_filter(root, &filter.union(&keys6.iter().collect()))
}

/// A map's identity as the kernel checks it: what must match for programs
/// built against one definition to use a map made from another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// `BPF_MAP_TYPE_*`; `u32::MAX` for a type aya does not know.
    pub map_type: u32,
    /// Key size, in bytes.
    pub key_size: u32,
    /// Value size, in bytes: what grows when a record gains a field.
    pub value_size: u32,
    /// Capacity: what the settings may change, a durable map's entries
    /// being copied into the new one.
    pub max_entries: u32,
    /// `BPF_F_*` map flags.
    pub flags: u32,
}

impl Layout {
    /// The layout of the map pinned at `path`, to compare with this
    /// build's before the pin is reused.
    ///
    /// # Errors
    ///
    /// [`DataplaneError::Map`] naming `path` when nothing is pinned there or
    /// it is not a map.
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

#[cfg(test)]
mod tests {
    use aya::sys::SyscallError;

    use super::*;

    fn delete_failed(errno: i32) -> Result<(), MapError> {
        Err(SyscallError {
            call: "bpf_map_delete_elem",
            io_error: std::io::Error::from_raw_os_error(errno),
        }
        .into())
    }

    #[test]
    fn removing_a_missing_key_is_no_error_but_other_failures_are() {
        assert!(removed(delete_failed(libc::ENOENT)).is_ok());
        assert!(removed(Err(MapError::KeyNotFound)).is_ok());
        assert!(removed(Ok(())).is_ok());
        assert!(matches!(
            removed(delete_failed(libc::EPERM)),
            Err(MapError::SyscallError(_))
        ));
    }
}
