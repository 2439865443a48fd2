//! Services as the operator (or a controller watching the Kubernetes API)
//! declares them, synced into the pinned maps the programs balance with.
//!
//! ```yaml
//! services:
//!   - name: default/web          # namespace/name (and :port-name), for people
//!     vip: 10.96.0.10            # the ClusterIP
//!     port: 80
//!     protocol: tcp              # tcp (default) | udp
//!     backends: ["10.244.0.5:8080", "10.244.1.7:8080"]
//!     affinity_timeout: 10800    # sessionAffinity ClientIP, seconds; absent: none
//!     node_port: 30080           # also on every node address (margayctl node attach)
//!     external_traffic_policy: local  # cluster (default) | local: NodePort to local backends only
//! ```
//!
//! Each service is one ClusterIP frontend, plus a NodePort frontend per
//! node address when it has a `node_port`.
//!
//! [`apply`] makes the maps hold exactly the given set: unchanged services
//! are not touched, a changed one gets its new backends in the other
//! generation's slots and then one frontend update switches it over, so a
//! packet sees either the old set or the new one. Kept backends keep their
//! slots, so client affinity survives a change; connections already running
//! keep their backend, even one that has left the set.
//!
//! ```no_run
//! # use margay_ebpf::service::{apply, ServiceFile};
//! let file: ServiceFile = serde_json::from_str(r#"{"services": []}"#).unwrap();
//! let report = apply("/sys/fs/bpf/margay".as_ref(), &file.services)?;
//! # Ok::<(), margay_ebpf::service::ServiceError>(())
//! ```

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::Path;
use std::time::Duration;

use aya::maps::MapError;
use margay_conf::lock::FileLock;
use serde::{Deserialize, Serialize};

use crate::abi::{
    Backend, BackendKey, SVC_F_AFFINITY, SVC_F_EXTERNAL_LOCAL, SVC_F_LOCAL_ONLY, SVC_F_NODE_PORT,
    SvcFilter, SvcKey, SvcMeta, SvcValue,
};
use crate::error::DataplaneError;
use crate::maps::{self, Layout, map_path};

/// What `margayctl service apply -f` reads.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceFile {
    pub services: Vec<ServiceSpec>,
}

/// One frontend and its backends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    pub name: String,
    pub vip: Ipv4Addr,
    pub port: u16,
    #[serde(default)]
    pub protocol: Protocol,
    #[serde(default)]
    pub backends: Vec<SocketAddrV4>,
    /// ClientIP session affinity, for this many seconds since last use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity_timeout: Option<u32>,
    /// Also reachable at this port on every node address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_port: Option<u16>,
    /// Which backends NodePort traffic may reach.
    #[serde(default, skip_serializing_if = "is_default")]
    pub external_traffic_policy: TrafficPolicy,
}

/// `externalTrafficPolicy`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrafficPolicy {
    /// Any backend.
    #[default]
    Cluster,
    /// This node's backends only; a node without one refuses.
    Local,
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
}

impl Protocol {
    fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
        }
    }

    fn from_number(n: u8) -> Option<Protocol> {
        match n {
            6 => Some(Protocol::Tcp),
            17 => Some(Protocol::Udp),
            _ => None,
        }
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        })
    }
}

/// Longest name kept (the map's field, with its terminating zero).
pub const MAX_NAME: usize = 63;
/// Backends one service can have (slot ordinals are 16 bits).
pub const MAX_BACKENDS: usize = u16::MAX as usize;
/// Kubernetes' own bound on `sessionAffinityConfig.clientIP.timeoutSeconds`.
pub const MAX_AFFINITY_TIMEOUT: u32 = 86_400;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("services[{index}] ({name}): {reason}")]
    Invalid {
        index: usize,
        name: String,
        reason: String,
    },
    #[error("services[{first}] and services[{second}] both claim frontend {frontend}")]
    Duplicate {
        first: usize,
        second: usize,
        frontend: String,
    },
    #[error(
        "map {map} is too small: this set needs {needed} entries and it holds {capacity}; \
         raise {key} in the network configuration (nothing was changed)"
    )]
    Full {
        map: &'static str,
        needed: usize,
        capacity: u32,
        key: &'static str,
    },
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
}

/// What [`apply`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ApplyReport {
    pub added: usize,
    pub updated: usize,
    pub removed: usize,
    pub unchanged: usize,
}

/// A frontend as the maps hold it, for `margayctl service list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FrontendRow {
    pub id: u32,
    pub name: String,
    /// `cluster-ip` or `node-port`.
    pub kind: &'static str,
    pub address: Ipv4Addr,
    pub port: u16,
    pub protocol: Protocol,
    pub backends: Vec<SocketAddrV4>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub affinity_timeout: Option<u32>,
    pub local_only: bool,
}

impl ServiceSpec {
    fn key(&self) -> SvcKey {
        frontend_key(self.vip, self.port, self.protocol)
    }

    fn frontend(&self) -> String {
        format!("{}:{}/{}", self.vip, self.port, self.protocol)
    }

    fn flags(&self) -> u16 {
        if self.affinity_timeout.is_some() {
            SVC_F_AFFINITY
        } else {
            0
        }
    }

    /// The frontends this service makes on a node with `node_addrs`,
    /// whose local pods are `local` (for `external_traffic_policy: local`).
    fn frontends(&self, node_addrs: &[Ipv4Addr], local: &HashSet<Ipv4Addr>) -> Vec<Wanted<'_>> {
        let local_only = self.external_traffic_policy == TrafficPolicy::Local;
        let cluster_ip = Wanted {
            key: self.key(),
            spec: self,
            backends: self.backends.clone(),
            flags: self.flags()
                | if local_only && self.node_port.is_some() {
                    SVC_F_EXTERNAL_LOCAL
                } else {
                    0
                },
            node_port: self.node_port.unwrap_or(0),
        };
        let node_ports = self.node_port.into_iter().flat_map(move |port| {
            let backends: Vec<SocketAddrV4> = self
                .backends
                .iter()
                .filter(|b| !local_only || local.contains(b.ip()))
                .copied()
                .collect();
            let flags =
                self.flags() | SVC_F_NODE_PORT | if local_only { SVC_F_LOCAL_ONLY } else { 0 };
            node_addrs.iter().map(move |addr| Wanted {
                key: frontend_key(*addr, port, self.protocol),
                spec: self,
                backends: backends.clone(),
                flags,
                node_port: 0,
            })
        });
        std::iter::once(cluster_ip).chain(node_ports).collect()
    }

    fn check(&self) -> Result<(), String> {
        if self.name.is_empty() || self.name.len() > MAX_NAME {
            return Err(format!("name: must be 1..={MAX_NAME} bytes"));
        }
        if self.vip.is_unspecified() || self.vip.is_broadcast() || self.vip.is_multicast() {
            return Err(format!("vip: {} cannot be a service address", self.vip));
        }
        if self.port == 0 {
            return Err("port: 0 is not a port".into());
        }
        if self.node_port == Some(0) {
            return Err("node_port: 0 is not a port".into());
        }
        if self.node_port.is_none() && self.external_traffic_policy == TrafficPolicy::Local {
            return Err(
                "external_traffic_policy: local applies to NodePorts; set node_port".into(),
            );
        }
        if self.backends.len() > MAX_BACKENDS {
            return Err(format!(
                "backends: {} is more than {MAX_BACKENDS}",
                self.backends.len()
            ));
        }
        let mut seen = HashSet::new();
        for (i, b) in self.backends.iter().enumerate() {
            if b.ip().is_unspecified() || b.port() == 0 {
                return Err(format!("backends[{i}]: {b} is not a reachable endpoint"));
            }
            if !seen.insert(b) {
                return Err(format!("backends[{i}]: {b} is listed twice"));
            }
        }
        if let Some(t) = self.affinity_timeout
            && !(1..=MAX_AFFINITY_TIMEOUT).contains(&t)
        {
            return Err(format!(
                "affinity_timeout: {t} is outside 1..={MAX_AFFINITY_TIMEOUT} seconds"
            ));
        }
        Ok(())
    }
}

/// Checks a whole set: every service valid, no ClusterIP frontend or
/// NodePort claimed twice.
pub fn validate(specs: &[ServiceSpec]) -> Result<(), ServiceError> {
    let mut frontends: HashMap<SvcKey, usize> = HashMap::new();
    let mut node_ports: HashMap<(u16, Protocol), usize> = HashMap::new();
    for (index, spec) in specs.iter().enumerate() {
        spec.check().map_err(|reason| ServiceError::Invalid {
            index,
            name: spec.name.clone(),
            reason,
        })?;
        if let Some(first) = frontends.insert(spec.key(), index) {
            return Err(ServiceError::Duplicate {
                first,
                second: index,
                frontend: spec.frontend(),
            });
        }
        if let Some(port) = spec.node_port
            && let Some(first) = node_ports.insert((port, spec.protocol), index)
        {
            return Err(ServiceError::Duplicate {
                first,
                second: index,
                frontend: format!("node port {port}/{}", spec.protocol),
            });
        }
    }
    Ok(())
}

fn frontend_key(addr: Ipv4Addr, port: u16, protocol: Protocol) -> SvcKey {
    SvcKey {
        addr: addr.octets(),
        port: port.to_be_bytes(),
        proto: protocol.number(),
        pad: 0,
    }
}

/// A frontend the maps should hold.
struct Wanted<'a> {
    key: SvcKey,
    spec: &'a ServiceSpec,
    backends: Vec<SocketAddrV4>,
    flags: u16,
    /// The ClusterIP frontend's record of the service's NodePort.
    node_port: u16,
}

fn map_err(name: &'static str) -> impl Fn(MapError) -> DataplaneError {
    move |e| DataplaneError::map(name, e)
}

fn backend_of(b: &SocketAddrV4) -> Backend {
    Backend {
        addr: b.ip().octets(),
        port: b.port().to_be_bytes(),
        ..Backend::default()
    }
}

fn socket_of(b: &Backend) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::from(b.addr), u16::from_be_bytes(b.port))
}

fn meta_of(name: &str) -> SvcMeta {
    let mut meta = SvcMeta { name: [0; 64] };
    meta.name[..name.len()].copy_from_slice(name.as_bytes());
    meta
}

fn name_of(meta: &SvcMeta) -> String {
    let end = meta.name.iter().position(|&b| b == 0).unwrap_or(64);
    String::from_utf8_lossy(&meta.name[..end]).into_owned()
}

/// The open service maps of a root.
struct Maps {
    frontends: maps::Frontends,
    backends: maps::Backends,
    names: maps::ServiceNames,
}

/// A service as found in the maps.
struct Installed {
    value: SvcValue,
    backends: Vec<SocketAddrV4>,
    name: String,
}

impl Maps {
    fn open(root: &Path) -> Result<Maps, DataplaneError> {
        Ok(Maps {
            frontends: maps::frontends(root)?,
            backends: maps::backends(root)?,
            names: maps::service_names(root)?,
        })
    }

    fn installed(&self) -> Result<BTreeMap<SvcKey, Installed>, DataplaneError> {
        let mut all = BTreeMap::new();
        for kv in self.frontends.iter() {
            let (key, value) = kv.map_err(map_err("svc_frontends"))?;
            let backends = (0..value.count)
                .map(|ordinal| {
                    let slot = BackendKey {
                        svc_id: value.id,
                        generation: value.generation,
                        ordinal,
                    };
                    self.backends
                        .get(&slot, 0)
                        .map(|b| socket_of(&b))
                        .map_err(map_err("svc_backends"))
                })
                .collect::<Result<_, _>>()?;
            let name = self
                .names
                .get(&value.id, 0)
                .map(|m| name_of(&m))
                .unwrap_or_default();
            all.insert(
                key,
                Installed {
                    value,
                    backends,
                    name,
                },
            );
        }
        Ok(all)
    }

    fn write_slots(
        &mut self,
        id: u32,
        generation: u16,
        backends: &[SocketAddrV4],
    ) -> Result<(), DataplaneError> {
        for (ordinal, b) in backends.iter().enumerate() {
            let slot = BackendKey {
                svc_id: id,
                generation,
                ordinal: ordinal as u16,
            };
            self.backends
                .insert(slot, backend_of(b), 0)
                .map_err(map_err("svc_backends"))?;
        }
        Ok(())
    }

    fn remove_slots(&mut self, id: u32, generation: u16, count: u16) -> Result<(), DataplaneError> {
        for ordinal in 0..count {
            let slot = BackendKey {
                svc_id: id,
                generation,
                ordinal,
            };
            ignore_missing(self.backends.remove(&slot)).map_err(map_err("svc_backends"))?;
        }
        Ok(())
    }
}

fn ignore_missing(r: Result<(), MapError>) -> Result<(), MapError> {
    match r {
        Err(MapError::KeyNotFound) => Ok(()),
        other => other,
    }
}

/// The new slot order of a changed backend set: kept backends stay in
/// their slots (so affinity to them holds), new ones fill the holes of the
/// removed, and the tail moves into holes that remain.
fn reslot(current: &[SocketAddrV4], desired: &[SocketAddrV4]) -> Vec<SocketAddrV4> {
    let wanted: HashSet<&SocketAddrV4> = desired.iter().collect();
    let had: HashSet<&SocketAddrV4> = current.iter().collect();
    let mut added: VecDeque<SocketAddrV4> = desired
        .iter()
        .filter(|b| !had.contains(b))
        .copied()
        .collect();
    let mut slots: Vec<Option<SocketAddrV4>> = current
        .iter()
        .map(|b| wanted.contains(b).then_some(*b))
        .collect();
    for slot in slots.iter_mut().filter(|s| s.is_none()) {
        *slot = added.pop_front();
    }
    slots.extend(added.into_iter().map(Some));
    while let Some(hole) = slots.iter().position(Option::is_none) {
        let last = slots.pop().flatten();
        if hole < slots.len() {
            slots[hole] = last;
        }
    }
    slots.into_iter().flatten().collect()
}

/// Makes the service maps of `root` hold exactly `specs` (and their
/// NodePorts on the node's data-interface addresses). Validates and checks
/// capacity before writing anything; serialised with other applies on the
/// node.
pub fn apply(root: &Path, specs: &[ServiceSpec]) -> Result<ApplyReport, ServiceError> {
    validate(specs)?;
    let _lock = services_lock(root)?;
    let mut maps = Maps::open(root)?;
    let installed = maps.installed()?;
    apply_locked(root, &mut maps, installed, specs)
}

/// Re-applies the installed services for the node's current NodePort
/// addresses (after `node attach` or `detach`): NodePorts open on an
/// address attached after the services were applied, and close on one
/// detached. Everything else is left as it is.
pub fn refresh_node_ports(root: &Path) -> Result<ApplyReport, ServiceError> {
    let _lock = services_lock(root)?;
    let mut maps = Maps::open(root)?;
    let installed = maps.installed()?;
    let specs = installed_specs(&installed);
    apply_locked(root, &mut maps, installed, &specs)
}

fn services_lock(root: &Path) -> Result<FileLock, DataplaneError> {
    Ok(FileLock::acquire(
        &crate::node::lock_path(root, "services"),
        Duration::from_secs(30),
    )?)
}

/// The services the maps hold, as specs: one per ClusterIP frontend, its
/// NodePort from the frontend's record or, for frontends written before
/// that record existed, from a NodePort frontend of the same name.
fn installed_specs(installed: &BTreeMap<SvcKey, Installed>) -> Vec<ServiceSpec> {
    let node_ports: HashMap<(&str, u8), u16> = installed
        .iter()
        .filter(|(_, i)| i.value.flags & SVC_F_NODE_PORT != 0)
        .map(|(k, i)| ((i.name.as_str(), k.proto), u16::from_be_bytes(k.port)))
        .collect();
    let mut specs = Vec::new();
    for (key, i) in installed.iter() {
        let flags = i.value.flags;
        if flags & SVC_F_NODE_PORT != 0 {
            continue;
        }
        let Some(protocol) = Protocol::from_number(key.proto) else {
            continue;
        };
        let node_port = Some(i.value.node_port)
            .filter(|p| *p != 0)
            .or_else(|| node_ports.get(&(i.name.as_str(), key.proto)).copied());
        specs.push(ServiceSpec {
            name: i.name.clone(),
            vip: Ipv4Addr::from(key.addr),
            port: u16::from_be_bytes(key.port),
            protocol,
            backends: i.backends.clone(),
            affinity_timeout: (flags & SVC_F_AFFINITY != 0).then_some(i.value.affinity_timeout_s),
            node_port,
            external_traffic_policy: if flags & SVC_F_EXTERNAL_LOCAL != 0 {
                TrafficPolicy::Local
            } else {
                TrafficPolicy::Cluster
            },
        });
    }
    specs
}

/// [`apply`] once the lock is held and the maps' contents (`installed`)
/// read.
fn apply_locked(
    root: &Path,
    maps: &mut Maps,
    mut installed: BTreeMap<SvcKey, Installed>,
    specs: &[ServiceSpec],
) -> Result<ApplyReport, ServiceError> {
    let node_addrs: Vec<Ipv4Addr> = crate::node::data_ifaces(root)?
        .into_iter()
        .map(|d| d.address)
        .collect();
    let local: HashSet<Ipv4Addr> = crate::registry::list(root)?
        .iter()
        .map(crate::abi::Endpoint::ipv4)
        .collect();
    let wanted: Vec<Wanted> = specs
        .iter()
        .flat_map(|s| s.frontends(&node_addrs, &local))
        .collect();
    let mut seen = HashMap::new();
    for w in &wanted {
        if let Some(other) = seen.insert(w.key, &w.spec.name) {
            return Err(ServiceError::Invalid {
                index: specs
                    .iter()
                    .position(|s| s.name == w.spec.name)
                    .unwrap_or(0),
                name: w.spec.name.clone(),
                reason: format!(
                    "its frontend {}:{}/{} is also {other}'s",
                    Ipv4Addr::from(w.key.addr),
                    u16::from_be_bytes(w.key.port),
                    w.spec.protocol
                ),
            });
        }
    }
    let capacity = |name: &'static str| -> Result<u32, DataplaneError> {
        Ok(Layout::of_pin(&map_path(root, name))?.max_entries)
    };
    let frontend_capacity = capacity("svc_frontends")?;
    if wanted.len() > frontend_capacity as usize {
        return Err(ServiceError::Full {
            map: "svc_frontends",
            needed: wanted.len(),
            capacity: frontend_capacity,
            key: "bpf_service_frontends",
        });
    }
    // A changed frontend briefly holds both generations' slots.
    let in_flight = wanted
        .iter()
        .filter_map(|w| installed.get(&w.key))
        .map(|i| i.backends.len())
        .max()
        .unwrap_or(0);
    let backend_capacity = capacity("svc_backends")?;
    let needed = wanted.iter().map(|w| w.backends.len()).sum::<usize>() + in_flight;
    if needed > backend_capacity as usize {
        return Err(ServiceError::Full {
            map: "svc_backends",
            needed,
            capacity: backend_capacity,
            key: "bpf_service_backends",
        });
    }

    let mut report = ApplyReport::default();
    let keys: BTreeSet<SvcKey> = wanted.iter().map(|w| w.key).collect();
    // The programs skip the frontend lookup for a packet whose filter bit
    // is clear, so the filter covers the old and the new frontends (ClusterIP
    // and NodePort alike) while they change, and only the new ones after.
    let old_filter = filter_of(installed.keys());
    let new_filter = filter_of(keys.iter());
    write_filter(root, &old_filter.union(&new_filter))?;
    // Removals first: they free the room the rest may need.
    let gone: Vec<SvcKey> = installed
        .keys()
        .filter(|k| !keys.contains(k))
        .copied()
        .collect();
    for key in gone {
        let old = installed.remove(&key).expect("listed above");
        ignore_missing(maps.frontends.remove(&key)).map_err(map_err("svc_frontends"))?;
        maps.remove_slots(old.value.id, old.value.generation, old.value.count)?;
        ignore_missing(maps.names.remove(&old.value.id)).map_err(map_err("svc_meta"))?;
        report.removed += 1;
    }

    let mut used_ids: BTreeSet<u32> = installed.values().map(|i| i.value.id).collect();
    let mut next_id = 1u32;
    for w in &wanted {
        let timeout = w.spec.affinity_timeout.unwrap_or(0);
        match installed.get(&w.key) {
            Some(old) => {
                let slots = reslot(&old.backends, &w.backends);
                let same_backends = slots == old.backends;
                let same_settings = old.value.flags == w.flags
                    && old.value.affinity_timeout_s == timeout
                    && old.value.node_port == w.node_port;
                if old.name != w.spec.name {
                    maps.names
                        .insert(old.value.id, meta_of(&w.spec.name), 0)
                        .map_err(map_err("svc_meta"))?;
                }
                if same_backends && same_settings {
                    report.unchanged += 1;
                    continue;
                }
                let generation = if same_backends {
                    old.value.generation
                } else {
                    let next = old.value.generation ^ 1;
                    maps.write_slots(old.value.id, next, &slots)?;
                    next
                };
                let value = SvcValue {
                    count: slots.len() as u16,
                    generation,
                    flags: w.flags,
                    affinity_timeout_s: timeout,
                    node_port: w.node_port,
                    ..old.value
                };
                maps.frontends
                    .insert(w.key, value, 0)
                    .map_err(map_err("svc_frontends"))?;
                if !same_backends {
                    maps.remove_slots(old.value.id, old.value.generation, old.value.count)?;
                }
                report.updated += 1;
            }
            None => {
                while used_ids.contains(&next_id) {
                    next_id += 1;
                }
                let id = next_id;
                used_ids.insert(id);
                maps.write_slots(id, 0, &w.backends)?;
                maps.names
                    .insert(id, meta_of(&w.spec.name), 0)
                    .map_err(map_err("svc_meta"))?;
                let value = SvcValue {
                    id,
                    count: w.backends.len() as u16,
                    flags: w.flags,
                    affinity_timeout_s: timeout,
                    node_port: w.node_port,
                    ..SvcValue::default()
                };
                maps.frontends
                    .insert(w.key, value, 0)
                    .map_err(map_err("svc_frontends"))?;
                report.added += 1;
            }
        }
    }
    write_filter(root, &new_filter)?;
    Ok(report)
}

fn filter_of<'a>(keys: impl Iterator<Item = &'a SvcKey>) -> SvcFilter {
    let mut filter = SvcFilter::default();
    for key in keys {
        filter.set(key);
    }
    filter
}

/// Writes the frontend filter. Readers may see a mix of the old and the new
/// words, so a bit set in both stays set throughout.
fn write_filter(root: &Path, filter: &SvcFilter) -> Result<(), DataplaneError> {
    maps::svc_filter(root)?
        .set(0, *filter, 0)
        .map_err(|e| DataplaneError::map("svc_filter", e))
}

/// Sets the frontend filter from the frontends the maps hold: the loader
/// does it for a new filter map before any program reads it (the caller
/// holds the node lock).
pub fn rebuild_filter(root: &Path) -> Result<(), DataplaneError> {
    let frontends = maps::frontends(root)?;
    let keys = frontends
        .keys()
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| DataplaneError::map("svc_frontends", e))?;
    write_filter(root, &filter_of(keys.iter()))
}

/// Every frontend the maps hold.
pub fn list(root: &Path) -> Result<Vec<FrontendRow>, DataplaneError> {
    let maps = Maps::open(root)?;
    Ok(maps
        .installed()?
        .into_iter()
        .filter_map(|(key, i)| {
            let flags = i.value.flags;
            Some(FrontendRow {
                id: i.value.id,
                name: i.name,
                kind: if flags & SVC_F_NODE_PORT != 0 {
                    "node-port"
                } else {
                    "cluster-ip"
                },
                address: Ipv4Addr::from(key.addr),
                port: u16::from_be_bytes(key.port),
                protocol: Protocol::from_number(key.proto)?,
                backends: i.backends,
                affinity_timeout: (flags & SVC_F_AFFINITY != 0)
                    .then_some(i.value.affinity_timeout_s),
                local_only: flags & SVC_F_LOCAL_ONLY != 0,
            })
        })
        .collect())
}

/// Service names by id, for showing translations.
pub fn names(root: &Path) -> Result<HashMap<u32, String>, DataplaneError> {
    let names = maps::service_names(root)?;
    names
        .iter()
        .map(|kv| {
            kv.map(|(id, meta)| (id, name_of(&meta)))
                .map_err(map_err("svc_meta"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> SocketAddrV4 {
        s.parse().unwrap()
    }

    fn spec(name: &str, port: u16, backends: &[&str]) -> ServiceSpec {
        ServiceSpec {
            name: name.into(),
            vip: Ipv4Addr::new(10, 96, 0, 1),
            port,
            protocol: Protocol::Tcp,
            backends: backends.iter().map(|s| b(s)).collect(),
            affinity_timeout: None,
            node_port: None,
            external_traffic_policy: TrafficPolicy::Cluster,
        }
    }

    #[test]
    fn reslot_keeps_kept_backends_in_their_slots() {
        let cur = [b("1.0.0.1:1"), b("1.0.0.2:1"), b("1.0.0.3:1")];
        // 2 leaves, 4 arrives: 4 takes 2's slot.
        assert_eq!(
            reslot(&cur, &[b("1.0.0.4:1"), b("1.0.0.3:1"), b("1.0.0.1:1")]),
            vec![b("1.0.0.1:1"), b("1.0.0.4:1"), b("1.0.0.3:1")]
        );
        // 1 leaves, nothing arrives: the tail fills the hole.
        assert_eq!(
            reslot(&cur, &[b("1.0.0.2:1"), b("1.0.0.3:1")]),
            vec![b("1.0.0.3:1"), b("1.0.0.2:1")]
        );
        // The last leaves: no hole to fill.
        assert_eq!(
            reslot(&cur, &[b("1.0.0.1:1"), b("1.0.0.2:1")]),
            vec![b("1.0.0.1:1"), b("1.0.0.2:1")]
        );
        // Order in the file alone is not a change.
        assert_eq!(reslot(&cur, &[cur[2], cur[0], cur[1]]), cur.to_vec());
        assert_eq!(reslot(&cur, &[]), Vec::<SocketAddrV4>::new());
        assert_eq!(reslot(&[], &cur), cur.to_vec());
    }

    #[test]
    fn bad_services_are_named() {
        let err = |specs: &[ServiceSpec]| validate(specs).unwrap_err().to_string();
        assert!(err(&[spec("", 80, &[])]).contains("services[0] (): name"));
        assert!(err(&[spec("a", 0, &[])]).contains("port: 0"));
        assert!(err(&[spec("a", 80, &["1.2.3.4:0"])]).contains("backends[0]"));
        assert!(err(&[spec("a", 80, &["1.2.3.4:5", "1.2.3.4:5"])]).contains("listed twice"));
        let mut affinity = spec("a", 80, &[]);
        affinity.affinity_timeout = Some(0);
        assert!(err(&[affinity]).contains("affinity_timeout"));
        let mut np = spec("a", 80, &[]);
        np.node_port = Some(0);
        assert!(err(&[np.clone()]).contains("node_port: 0"));
        np.node_port = None;
        np.external_traffic_policy = TrafficPolicy::Local;
        assert!(err(&[np]).contains("set node_port"));
        let (mut a, mut c) = (spec("a", 80, &[]), spec("c", 81, &[]));
        a.node_port = Some(30080);
        c.node_port = Some(30080);
        assert!(err(&[a, c]).contains("node port 30080/tcp"));
        let dup = err(&[spec("a", 80, &[]), spec("b", 81, &[]), spec("c", 80, &[])]);
        assert!(dup.contains("services[0] and services[2]"), "{dup}");
        assert!(dup.contains("10.96.0.1:80/tcp"), "{dup}");
        let mut udp = spec("c", 80, &[]);
        udp.protocol = Protocol::Udp;
        validate(&[spec("a", 80, &[]), udp]).expect("tcp and udp on one port are two frontends");
    }

    #[test]
    fn the_file_schema_parses_and_refuses_typos() {
        let file: ServiceFile = serde_json::from_str(
            r#"{"services": [{"name": "default/dns", "vip": "10.96.0.10", "port": 53,
                "protocol": "udp", "backends": ["10.244.0.2:53"], "affinity_timeout": 60}]}"#,
        )
        .unwrap();
        assert_eq!(file.services[0].protocol, Protocol::Udp);
        assert_eq!(file.services[0].backends, vec![b("10.244.0.2:53")]);
        assert!(
            serde_json::from_str::<ServiceFile>(
                r#"{"services": [{"name": "a", "vip": "10.96.0.10", "port": 53, "backend": []}]}"#
            )
            .is_err()
        );
    }
}
