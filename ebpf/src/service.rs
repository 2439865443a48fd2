//! Services (`margay_model::service`) synced into the pinned maps the
//! programs balance with.
//!
//! [`apply`] makes the maps hold exactly the given set: unchanged services
//! are not touched, a changed one gets its new backends in the other
//! generation's slots and then one frontend update switches it over, so a
//! packet sees either the old set or the new one. Kept backends keep their
//! slots, so client affinity survives a change; connections already running
//! keep their backend, even one that has left the set.
//!
//! ```no_run
//! # use margay_ebpf::service::apply;
//! # use margay_model::service::ServiceFile;
//! let file: ServiceFile = serde_json::from_str(r#"{"services": []}"#).unwrap();
//! let report = apply("/sys/fs/bpf/margay".as_ref(), &file.services)?;
//! # Ok::<(), margay_ebpf::service::ServiceError>(())
//! ```

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use margay_conf::lock::FileLock;
use margay_model::protocol::Protocol;
use margay_model::service::{
    self as model, Frontend, PROTOCOLS, ServiceSpec, ServiceSpecError, TrafficPolicy,
};
use serde::Serialize;

use crate::abi::{
    Backend, Backend6, BackendKey, SVC_F_AFFINITY, SVC_F_EXTERNAL_IP, SVC_F_EXTERNAL_LOCAL,
    SVC_F_INTERNAL_LOCAL, SVC_F_LOCAL_ONLY, SVC_F_NODE_PORT, SvcFilter, SvcKey, SvcKey6, SvcMeta,
    SvcValue,
};
use crate::error::DataplaneError;
use crate::maps::{self, Layout};
use crate::paths::{lock_path, map_path, serial_path};
use crate::{nodeport, registry};

/// Why services could not be applied. Every variant but
/// [`ServiceError::Dataplane`] is found before anything is written.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The set is refused by `margay_model::service::validate`: a service
    /// is invalid, or two claim one frontend or NodePort.
    #[error(transparent)]
    Invalid(#[from] ServiceSpecError),
    /// A NodePort frontend on a node address is another service's
    /// frontend (only the node's addresses tell).
    #[error("services[{index}] ({name}): its frontend {frontend} is also {other}'s")]
    SharedFrontend {
        /// The service's index in the list being written.
        index: usize,
        /// The service's name.
        name: String,
        /// The frontend both would have.
        frontend: Frontend,
        /// The name of the service that has it.
        other: String,
    },
    /// A NodePort is another service's (on a node with no NodePort
    /// address it is no frontend yet, but would be one on each).
    #[error("services[{index}] ({name}): its node port {port}/{protocol} is also {other}'s")]
    SharedNodePort {
        /// The service's index in the change.
        index: usize,
        /// The service's name.
        name: String,
        /// The NodePort.
        port: u16,
        /// Its protocol.
        protocol: Protocol,
        /// The name of the service that has it.
        other: String,
    },
    /// A map cannot hold the frontends or backend slots the set needs.
    #[error(
        "map {map} is too small: this set needs {needed} entries and it holds {capacity}; \
         raise {key} in the network configuration (nothing was changed)"
    )]
    Full {
        /// `svc_frontends`, `svc_backends`, or their IPv6 twins.
        map: &'static str,
        /// Entries it would need at once: a changed frontend briefly holds
        /// both generations' slots.
        needed: usize,
        /// Entries it holds at most.
        capacity: u32,
        /// The network configuration's setting that sizes it.
        key: &'static str,
    },
    /// A map could not be opened, read or written, the services lock was
    /// not had within 30 s, or the apply's serial could not be written.
    /// Part of the set may be written; the next apply reads the maps again.
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
}

impl ServiceError {
    /// Whether the apply that failed was refused before it wrote anything.
    fn wrote_nothing(&self) -> bool {
        !matches!(self, ServiceError::Dataplane(_))
    }
}

/// What [`apply`] did, counted in frontends (a service has one per
/// address it answers on).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ApplyReport {
    /// Frontends the maps did not hold.
    pub added: usize,
    /// Frontends whose backends or settings changed.
    pub updated: usize,
    /// Frontends no service has any more.
    pub removed: usize,
    /// Frontends left as they were (a renamed service's only get the new
    /// name).
    pub unchanged: usize,
}

/// A frontend as the maps hold it, for `margayctl service list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FrontendRow {
    /// The frontend's number ([`SvcValue::id`]), which translations name.
    pub id: u32,
    /// Its service's name.
    pub name: String,
    /// `cluster-ip`, `node-port` or `external-ip`.
    pub kind: &'static str,
    /// The address clients reach it at.
    pub address: IpAddr,
    /// The port clients reach it at.
    pub port: u16,
    /// Its protocol.
    pub protocol: Protocol,
    /// The current generation's backends, in slot order.
    pub backends: Vec<SocketAddr>,
    /// With client affinity: how long a client keeps its backend, seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub affinity_timeout: Option<u32>,
    /// A `Local` traffic policy applies: its backends are this node's only.
    pub local_only: bool,
}

/// A frontend the maps should hold.
struct Wanted<'a> {
    frontend: Frontend,
    /// The service making it, and where it is in the caller's list.
    spec: &'a ServiceSpec,
    index: usize,
    backends: Vec<SocketAddr>,
    flags: u16,
    /// The ClusterIP frontend's record of the service's NodePort.
    node_port: u16,
}

/// What the frontends of a service depend on besides the service: the
/// node's NodePort addresses, and which backends are local (for the
/// `Local` traffic policies).
#[derive(Debug, PartialEq, Eq)]
struct Scope {
    node_addrs: Vec<IpAddr>,
    local: HashSet<IpAddr>,
}

impl Scope {
    fn read(root: &Path) -> Result<Scope, DataplaneError> {
        let node_addrs: Vec<IpAddr> = nodeport::data_ifaces(root)?
            .into_iter()
            .map(|d| d.address)
            .collect();
        // A backend is local when it is a pod here or the node itself (a
        // host-networked backend).
        let mut local: HashSet<IpAddr> = registry::list(root)?
            .iter()
            .map(|e| IpAddr::V4(e.ipv4()))
            .chain(node_addrs.iter().copied())
            .collect();
        local.extend(registry::ipv6_addresses(root)?.into_iter().map(IpAddr::V6));
        Ok(Scope { node_addrs, local })
    }
}

/// Whether the frontends of `spec` depend on which backends are local.
fn scoped_to_local(spec: &ServiceSpec) -> bool {
    spec.internal_traffic_policy == TrafficPolicy::Local
        || spec.external_traffic_policy == TrafficPolicy::Local
}

/// The frontends `spec` (the caller's `index`th) makes in `scope`.
fn frontends<'a>(index: usize, spec: &'a ServiceSpec, scope: &Scope) -> Vec<Wanted<'a>> {
    let scoped = |policy: TrafficPolicy| -> Vec<SocketAddr> {
        spec.backends
            .iter()
            .filter(|b| policy == TrafficPolicy::Cluster || scope.local.contains(&b.ip()))
            .copied()
            .collect()
    };
    let affinity = if spec.affinity_timeout.is_some() {
        SVC_F_AFFINITY
    } else {
        0
    };
    let internal_local = spec.internal_traffic_policy == TrafficPolicy::Local;
    let external_local = spec.external_traffic_policy == TrafficPolicy::Local;
    let cluster_ip = Wanted {
        frontend: spec.cluster_ip(),
        spec,
        index,
        backends: scoped(spec.internal_traffic_policy),
        flags: affinity
            | flag(external_local, SVC_F_EXTERNAL_LOCAL)
            | flag(internal_local, SVC_F_INTERNAL_LOCAL | SVC_F_LOCAL_ONLY),
        node_port: spec.node_port.unwrap_or(0),
    };
    let external_backends = scoped(spec.external_traffic_policy);
    let external_flags = affinity | flag(external_local, SVC_F_LOCAL_ONLY);
    let externals = spec
        .node_port_frontends(&scope.node_addrs)
        .map(|f| (f, SVC_F_NODE_PORT))
        .chain(spec.external_frontends().map(|f| (f, SVC_F_EXTERNAL_IP)))
        .map(|(frontend, kind)| Wanted {
            frontend,
            spec,
            index,
            backends: external_backends.clone(),
            flags: external_flags | kind,
            node_port: 0,
        });
    std::iter::once(cluster_ip).chain(externals).collect()
}

fn flag(on: bool, flag: u16) -> u16 {
    if on { flag } else { 0 }
}

/// A frontend's key, in the map of its family.
enum Key {
    V4(SvcKey),
    V6(SvcKey6),
}

fn key_of(frontend: &Frontend) -> Key {
    let port = frontend.port.to_be_bytes();
    let proto = frontend.protocol.number();
    match frontend.addr {
        IpAddr::V4(a) => Key::V4(SvcKey {
            addr: a.octets(),
            port,
            proto,
            pad: 0,
        }),
        IpAddr::V6(a) => Key::V6(SvcKey6 {
            addr: a.octets(),
            port,
            proto,
            pad: 0,
        }),
    }
}

/// The frontend a key holds, when it is on a service's protocol.
fn frontend_of(addr: IpAddr, port: [u8; 2], proto: u8) -> Option<Frontend> {
    Some(Frontend {
        addr,
        port: u16::from_be_bytes(port),
        protocol: Protocol::from_number(proto).filter(|p| PROTOCOLS.contains(p))?,
    })
}

/// The frontend filter with the bits of `frontends`.
fn filter_of<'a>(frontends: impl IntoIterator<Item = &'a Frontend>) -> SvcFilter {
    let mut filter = SvcFilter::default();
    for frontend in frontends {
        match key_of(frontend) {
            Key::V4(k) => filter.set(&k),
            Key::V6(k) => filter.set(&k),
        }
    }
    filter
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

/// The open service maps of a root: each family's frontends and backends,
/// and the names of both.
struct Maps {
    frontends: maps::Frontends,
    backends: maps::Backends,
    frontends6: maps::Frontends6,
    backends6: maps::Backends6,
    names: maps::ServiceNames,
}

/// A service as found in the maps.
struct Installed {
    value: SvcValue,
    backends: Vec<SocketAddr>,
    name: String,
}

impl Installed {
    /// What the new frontend `w` wants becomes, under id `id`.
    fn new(id: u32, w: &Wanted) -> Installed {
        Installed {
            value: SvcValue {
                id,
                count: w.backends.len() as u16,
                flags: w.flags,
                affinity_timeout_s: w.spec.affinity_timeout.unwrap_or(0),
                node_port: w.node_port,
                ..SvcValue::default()
            },
            backends: w.backends.clone(),
            name: w.spec.name.clone(),
        }
    }
}

fn slot_key(id: u32, generation: u16, ordinal: u16) -> BackendKey {
    BackendKey {
        svc_id: id,
        generation,
        ordinal,
    }
}

impl Maps {
    fn open(root: &Path) -> Result<Maps, DataplaneError> {
        Ok(Maps {
            frontends: maps::frontends(root)?,
            backends: maps::backends(root)?,
            frontends6: maps::frontends6(root)?,
            backends6: maps::backends6(root)?,
            names: maps::service_names(root)?,
        })
    }

    /// Every frontend of both families, with its backends and name.
    fn installed(&self) -> Result<BTreeMap<Frontend, Installed>, DataplaneError> {
        let mut found = Vec::new();
        for kv in self.frontends.iter() {
            let (key, value) = kv.map_err(self.frontends.error())?;
            let addr = IpAddr::V4(key.addr.into());
            found.extend(frontend_of(addr, key.port, key.proto).map(|f| (f, value)));
        }
        for kv in self.frontends6.iter() {
            let (key, value) = kv.map_err(self.frontends6.error())?;
            let addr = IpAddr::V6(key.addr.into());
            found.extend(frontend_of(addr, key.port, key.proto).map(|f| (f, value)));
        }
        let mut all = BTreeMap::new();
        for (frontend, value) in found {
            let backends = (0..value.count)
                .map(|ordinal| self.backend(frontend.addr, value.id, value.generation, ordinal))
                .collect::<Result<_, _>>()?;
            let name = self
                .names
                .get(&value.id, 0)
                .map(|m| name_of(&m))
                .unwrap_or_default();
            all.insert(
                frontend,
                Installed {
                    value,
                    backends,
                    name,
                },
            );
        }
        Ok(all)
    }

    /// The backend in a slot of a service of `vip`'s family.
    fn backend(
        &self,
        vip: IpAddr,
        id: u32,
        generation: u16,
        ordinal: u16,
    ) -> Result<SocketAddr, DataplaneError> {
        let slot = slot_key(id, generation, ordinal);
        Ok(match vip {
            IpAddr::V4(_) => {
                let b = self.backends.get(&slot, 0).map_err(self.backends.error())?;
                SocketAddr::new(Ipv4Addr::from(b.addr).into(), u16::from_be_bytes(b.port))
            }
            IpAddr::V6(_) => {
                let b = self
                    .backends6
                    .get(&slot, 0)
                    .map_err(self.backends6.error())?;
                SocketAddr::new(
                    std::net::Ipv6Addr::from(b.addr).into(),
                    u16::from_be_bytes(b.port),
                )
            }
        })
    }

    fn insert_frontend(
        &mut self,
        frontend: &Frontend,
        value: SvcValue,
    ) -> Result<(), DataplaneError> {
        match key_of(frontend) {
            Key::V4(k) => self
                .frontends
                .insert(k, value, 0)
                .map_err(self.frontends.error()),
            Key::V6(k) => self
                .frontends6
                .insert(k, value, 0)
                .map_err(self.frontends6.error()),
        }
    }

    fn remove_frontend(&mut self, frontend: &Frontend) -> Result<(), DataplaneError> {
        match key_of(frontend) {
            Key::V4(k) => maps::removed(self.frontends.remove(&k)).map_err(self.frontends.error()),
            Key::V6(k) => {
                maps::removed(self.frontends6.remove(&k)).map_err(self.frontends6.error())
            }
        }
    }

    fn write_slots(
        &mut self,
        id: u32,
        generation: u16,
        backends: &[SocketAddr],
    ) -> Result<(), DataplaneError> {
        for (ordinal, b) in backends.iter().enumerate() {
            let slot = slot_key(id, generation, ordinal as u16);
            let port = b.port().to_be_bytes();
            match b.ip() {
                IpAddr::V4(a) => {
                    let backend = Backend {
                        addr: a.octets(),
                        port,
                        ..Backend::default()
                    };
                    self.backends
                        .insert(slot, backend, 0)
                        .map_err(self.backends.error())?
                }
                IpAddr::V6(a) => {
                    let backend = Backend6 {
                        addr: a.octets(),
                        port,
                        ..Backend6::default()
                    };
                    self.backends6
                        .insert(slot, backend, 0)
                        .map_err(self.backends6.error())?
                }
            }
        }
        Ok(())
    }

    /// Removes `count` slots of a service of `vip`'s family.
    fn remove_slots(
        &mut self,
        vip: IpAddr,
        id: u32,
        generation: u16,
        count: u16,
    ) -> Result<(), DataplaneError> {
        for ordinal in 0..count {
            let slot = slot_key(id, generation, ordinal);
            match vip {
                IpAddr::V4(_) => {
                    maps::removed(self.backends.remove(&slot)).map_err(self.backends.error())?
                }
                IpAddr::V6(_) => {
                    maps::removed(self.backends6.remove(&slot)).map_err(self.backends6.error())?
                }
            }
        }
        Ok(())
    }
}

/// The new slot order of a changed backend set: kept backends stay in
/// their slots (so affinity to them holds), new ones fill the holes of the
/// removed, and the tail moves into holes that remain.
fn reslot(current: &[SocketAddr], desired: &[SocketAddr]) -> Vec<SocketAddr> {
    let wanted: HashSet<&SocketAddr> = desired.iter().collect();
    let had: HashSet<&SocketAddr> = current.iter().collect();
    let mut added: VecDeque<SocketAddr> = desired
        .iter()
        .filter(|b| !had.contains(b))
        .copied()
        .collect();
    let mut slots: Vec<Option<SocketAddr>> = current
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
/// node. A writer that applies again and again keeps a [`ServiceTable`].
///
/// # Errors
///
/// [`ServiceError::Invalid`] when the set is refused;
/// [`ServiceError::SharedFrontend`] when a service's NodePort on a node
/// address is another's frontend; [`ServiceError::Full`] when a map is too
/// small (nothing is written for these); [`ServiceError::Dataplane`] when
/// a map cannot be opened, read or written, the services lock is not had
/// within 30 s, or the apply's serial cannot be written
/// ([`DataplaneError::RunState`]).
pub fn apply(root: &Path, specs: &[ServiceSpec]) -> Result<ApplyReport, ServiceError> {
    ServiceTable::open(root)?.apply(specs)
}

/// Re-applies the installed services for the node's current NodePort
/// addresses (after `node attach` or `detach`): NodePorts open on an
/// address attached after the services were applied, and close on one
/// detached. Everything else is left as it is. The services are read back
/// from the maps, which for one with a `Local` internal traffic policy and
/// no NodePort or external-IP frontend yet hold its local backends only:
/// its NodePorts open with those until the set is applied again.
///
/// # Errors
///
/// [`ServiceError::SharedFrontend`] when a NodePort on a new address is
/// another service's frontend; [`ServiceError::Full`] when a map is too
/// small (nothing is written for these); [`ServiceError::Dataplane`] as for
/// [`apply`].
pub fn refresh_node_ports(root: &Path) -> Result<ApplyReport, ServiceError> {
    let mut table = ServiceTable::open(root)?;
    let _lock = services_lock(root)?;
    let specs = installed_specs(&table.view()?.frontends);
    table.write(|maps, held| write_whole(root, maps, held, &specs))
}

/// The service maps of a root and what they hold, kept by a writer that
/// applies many times (margay-agent), so that an apply reads nothing from
/// the maps and writes only what changed, and a change
/// ([`ServiceTable::apply_changes`]) costs the services it names, not all
/// of them: with ten thousand services, reading every frontend back, or
/// even looking at every one, would cost more than the change.
///
/// Every apply, from any writer, counts itself in a serial file beside the
/// services lock; a table whose last apply is not the latest reads the
/// maps again (someone ran `margayctl service apply` meanwhile).
///
/// ```no_run
/// # use margay_ebpf::service::ServiceTable;
/// let mut table = ServiceTable::open("/sys/fs/bpf/margay".as_ref())?;
/// table.apply(&[])?;
/// table.apply(&[])?; // reads nothing, writes nothing
/// # Ok::<(), margay_ebpf::service::ServiceError>(())
/// ```
pub struct ServiceTable {
    root: PathBuf,
    maps: Maps,
    /// What the maps hold, as of apply `serial`; None: read it first.
    held: Option<Held>,
    serial: u64,
}

/// What the maps hold.
struct Held {
    frontends: BTreeMap<Frontend, Installed>,
    ids: Ids,
    /// The services that made the frontends, when this table wrote them.
    /// None when read back from the maps, which tell what is there but not
    /// which service made each NodePort and external frontend.
    applied: Option<Applied>,
}

/// The services a table wrote, and what it wrote them for: enough to
/// change some of them without looking at the others.
struct Applied {
    /// By ClusterIP frontend (unique in a valid set).
    services: HashMap<Frontend, AppliedService>,
    /// The services whose frontends depend on which backends are local.
    scoped_to_local: HashMap<Frontend, ServiceSpec>,
    /// By NodePort, protocol and family (IPv6's or not).
    node_ports: HashMap<NodePort, Frontend>,
    scope: Scope,
}

/// A NodePort as services claim it: its port and protocol, once per
/// family (true: IPv6's).
type NodePort = (u16, Protocol, bool);

fn node_port_of(spec: &ServiceSpec) -> Option<NodePort> {
    spec.node_port
        .map(|port| (port, spec.protocol, spec.vip.is_ipv6()))
}

struct AppliedService {
    /// Every frontend it made.
    keys: Vec<Frontend>,
    node_port: Option<NodePort>,
}

impl Applied {
    fn new(specs: &[ServiceSpec], wanted: &[Wanted], scope: Scope) -> Applied {
        let mut applied = Applied {
            services: HashMap::with_capacity(specs.len()),
            scoped_to_local: HashMap::new(),
            node_ports: HashMap::new(),
            scope,
        };
        applied.record(specs, wanted);
        applied
    }

    /// Records `specs` as written, with the frontends `wanted` (made from
    /// them, each naming its spec by index) as theirs.
    fn record(&mut self, specs: &[ServiceSpec], wanted: &[Wanted]) {
        let mut keys: Vec<Vec<Frontend>> = vec![Vec::new(); specs.len()];
        for w in wanted {
            keys[w.index].push(w.frontend);
        }
        for (spec, keys) in specs.iter().zip(keys) {
            self.insert(spec, keys);
        }
    }

    fn insert(&mut self, spec: &ServiceSpec, keys: Vec<Frontend>) {
        let node_port = node_port_of(spec);
        if let Some(port) = node_port {
            self.node_ports.insert(port, spec.cluster_ip());
        }
        if scoped_to_local(spec) {
            self.scoped_to_local.insert(spec.cluster_ip(), spec.clone());
        }
        self.services
            .insert(spec.cluster_ip(), AppliedService { keys, node_port });
    }

    fn remove(&mut self, cluster_ip: &Frontend) {
        let Some(gone) = self.services.remove(cluster_ip) else {
            return;
        };
        if let Some(port) = gone.node_port {
            self.node_ports.remove(&port);
        }
        self.scoped_to_local.remove(cluster_ip);
    }

    /// Fails when one of `changed` takes a NodePort of a service that the
    /// change does not name (by ClusterIP frontend, in `named`).
    fn check_node_ports(
        &self,
        changed: &[ServiceSpec],
        named: &HashSet<Frontend>,
        frontends: &BTreeMap<Frontend, Installed>,
    ) -> Result<(), ServiceError> {
        for (index, spec) in changed.iter().enumerate() {
            if let Some(claim @ (port, _, _)) = node_port_of(spec)
                && let Some(owner) = self.node_ports.get(&claim)
                && !named.contains(owner)
            {
                return Err(ServiceError::SharedNodePort {
                    index,
                    name: spec.name.clone(),
                    port,
                    protocol: spec.protocol,
                    other: frontends
                        .get(owner)
                        .map(|i| i.name.clone())
                        .unwrap_or_default(),
                });
            }
        }
        Ok(())
    }
}

/// What [`ServiceTable::apply_changes`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangesApplied {
    /// Written; the report counts the frontends of the services looked at.
    Written(ApplyReport),
    /// The maps were written by another writer since this table last
    /// applied (or it never has), so it cannot tell what the change is a
    /// change of; or the node's NodePort addresses changed, so every
    /// NodePort service changes: nothing was written; apply the whole set.
    WholeSetNeeded,
}

impl ServiceTable {
    /// Opens the pinned service maps of `root`. What they hold is read at
    /// the first apply, under the services lock.
    ///
    /// # Errors
    ///
    /// [`ServiceError::Dataplane`] with [`DataplaneError::Map`] naming
    /// `svc_frontends`, `svc_backends`, `svc_frontends6`, `svc_backends6` or
    /// `svc_meta` when it cannot be opened.
    pub fn open(root: &Path) -> Result<ServiceTable, ServiceError> {
        Ok(ServiceTable {
            root: root.to_path_buf(),
            maps: Maps::open(root)?,
            held: None,
            serial: 0,
        })
    }

    /// [`apply`] through this table: the maps are read only when another
    /// writer applied since this table did.
    ///
    /// # Errors
    ///
    /// As [`apply`]'s.
    pub fn apply(&mut self, specs: &[ServiceSpec]) -> Result<ApplyReport, ServiceError> {
        model::validate(specs)?;
        let _lock = services_lock(&self.root)?;
        self.view()?;
        let root = self.root.clone();
        self.write(|maps, held| write_whole(&root, maps, held, specs))
    }

    /// Changes the set this table last applied: each of `changed` replaces
    /// the service of its ClusterIP frontend (or is added), and the services
    /// of the ClusterIP frontends `removed` go. Only these services'
    /// frontends are looked at and written, so a change costs the same
    /// with ten services or ten thousand (when the node's local pods
    /// changed since, the services with a `Local` traffic policy are
    /// written again too).
    ///
    /// # Errors
    ///
    /// [`ServiceError::Invalid`] when a changed service is refused;
    /// [`ServiceError::SharedNodePort`] or [`ServiceError::SharedFrontend`]
    /// when one claims a NodePort or frontend of a service left as it is;
    /// [`ServiceError::Full`] when a map is too small (nothing is written
    /// for these); [`ServiceError::Dataplane`] as for [`apply`].
    pub fn apply_changes(
        &mut self,
        changed: &[ServiceSpec],
        removed: &[Frontend],
    ) -> Result<ChangesApplied, ServiceError> {
        model::validate(changed)?;
        let _lock = services_lock(&self.root)?;
        let scope = Scope::read(&self.root)?;
        let held = self.view()?;
        let Some(applied) = held
            .applied
            .as_ref()
            .filter(|a| a.scope.node_addrs == scope.node_addrs)
        else {
            return Ok(ChangesApplied::WholeSetNeeded);
        };
        let named = cluster_ips(changed, removed);
        applied.check_node_ports(changed, &named, &held.frontends)?;
        let mut touched = changed.to_vec();
        if scope.local != applied.scope.local {
            touched.extend(
                applied
                    .scoped_to_local
                    .iter()
                    .filter(|(f, _)| !named.contains(*f))
                    .map(|(_, spec)| spec.clone()),
            );
        }
        let root = self.root.clone();
        self.write(|maps, held| write_changes(&root, maps, held, &touched, removed, scope))
            .map(ChangesApplied::Written)
    }

    /// What the maps hold, read again unless this table made them so.
    /// Called with the lock held.
    fn view(&mut self) -> Result<&Held, DataplaneError> {
        let serial = read_serial(&self.root);
        if self.held.is_none() || serial != self.serial {
            let frontends = self.maps.installed()?;
            let used: HashSet<u32> = frontends.values().map(|i| i.value.id).collect();
            self.held = Some(Held {
                ids: Ids {
                    last: used.iter().max().copied().unwrap_or(0),
                    used,
                },
                frontends,
                applied: None,
            });
            self.serial = serial;
        }
        Ok(self.held.as_ref().expect("read above"))
    }

    /// Runs `write` on what the maps hold (read by [`Self::view`]) and
    /// counts the apply. Called with the lock held.
    fn write(
        &mut self,
        write: impl FnOnce(&mut Maps, &mut Held) -> Result<ApplyReport, ServiceError>,
    ) -> Result<ApplyReport, ServiceError> {
        let mut held = self.held.take().expect("read by view");
        let result = write(&mut self.maps, &mut held);
        if let Err(e) = &result
            && e.wrote_nothing()
        {
            self.held = Some(held);
            return result;
        }
        // After a failed write part of the set may be written: what the
        // maps hold is kept only when it is known to be exact.
        self.held = result.is_ok().then_some(held);
        self.serial = self.serial.max(read_serial(&self.root)) + 1;
        write_serial(&self.root, self.serial)?;
        result
    }
}

fn services_lock(root: &Path) -> Result<FileLock, DataplaneError> {
    Ok(FileLock::acquire(
        &lock_path(root, "services"),
        Duration::from_secs(30),
    )?)
}

fn read_serial(root: &Path) -> u64 {
    std::fs::read_to_string(serial_path(root, "services"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

fn write_serial(root: &Path, serial: u64) -> Result<(), DataplaneError> {
    let path = serial_path(root, "services");
    std::fs::write(&path, format!("{serial}\n")).map_err(|e| DataplaneError::RunState {
        source: format!("writing the services' serial: {e}").into(),
        path,
    })
}

/// The services the maps hold, as specs: one per ClusterIP frontend, its
/// NodePort from the frontend's record or, for frontends written before
/// that record existed, from a NodePort frontend of the same name and
/// family; its external IPs from the external-IP frontends of its name,
/// port and family (names need not be unique: a file may give a dual-stack
/// service's two halves one name).
///
/// Its backends are the ClusterIP frontend's, which with a `Local` internal
/// traffic policy are the local ones only (maybe none): then those of its
/// NodePort and external-IP frontends are added, which are all of them
/// unless the external policy is `Local` too. When such a service has no
/// NodePort or external-IP frontend held (a node without a NodePort
/// address yet), its other backends are nowhere in the maps, and NodePorts
/// opened from the spec get the local ones until the set is applied again.
fn installed_specs(installed: &BTreeMap<Frontend, Installed>) -> Vec<ServiceSpec> {
    let node_ports: HashMap<(&str, Protocol, bool), u16> = installed
        .iter()
        .filter(|(_, i)| i.value.flags & SVC_F_NODE_PORT != 0)
        .map(|(f, i)| ((i.name.as_str(), f.protocol, f.addr.is_ipv6()), f.port))
        .collect();
    // By name, protocol, port (the NodePort's for NodePort frontends) and
    // family: each frontend's address and backends.
    type Tie<'a> = (&'a str, Protocol, u16, bool);
    let mut node_port_frontends: HashMap<Tie, Vec<&[SocketAddr]>> = HashMap::new();
    let mut external_frontends: HashMap<Tie, Vec<(IpAddr, &[SocketAddr])>> = HashMap::new();
    for (f, i) in installed {
        let tie = (i.name.as_str(), f.protocol, f.port, f.addr.is_ipv6());
        if i.value.flags & SVC_F_NODE_PORT != 0 {
            node_port_frontends
                .entry(tie)
                .or_default()
                .push(&i.backends);
        } else if i.value.flags & SVC_F_EXTERNAL_IP != 0 {
            external_frontends
                .entry(tie)
                .or_default()
                .push((f.addr, &i.backends));
        }
    }
    let mut specs = Vec::new();
    for (&frontend, i) in installed.iter() {
        let flags = i.value.flags;
        if flags & (SVC_F_NODE_PORT | SVC_F_EXTERNAL_IP) != 0 {
            continue;
        }
        let name = i.name.as_str();
        let v6 = frontend.addr.is_ipv6();
        let node_port = Some(i.value.node_port)
            .filter(|p| *p != 0)
            .or_else(|| node_ports.get(&(name, frontend.protocol, v6)).copied());
        let externals = external_frontends
            .remove(&(name, frontend.protocol, frontend.port, v6))
            .unwrap_or_default();
        let mut backends = i.backends.clone();
        if flags & SVC_F_INTERNAL_LOCAL != 0 {
            let node_port_ones = node_port
                .and_then(|port| node_port_frontends.get(&(name, frontend.protocol, port, v6)));
            let others = node_port_ones
                .into_iter()
                .flatten()
                .copied()
                .chain(externals.iter().map(|(_, b)| *b));
            let mut seen: HashSet<SocketAddr> = backends.iter().copied().collect();
            for b in others.flatten() {
                if seen.insert(*b) {
                    backends.push(*b);
                }
            }
        }
        let policy = |local: u16| {
            if flags & local != 0 {
                TrafficPolicy::Local
            } else {
                TrafficPolicy::Cluster
            }
        };
        specs.push(ServiceSpec {
            name: i.name.clone(),
            vip: frontend.addr,
            port: frontend.port,
            protocol: frontend.protocol,
            backends,
            affinity_timeout: (flags & SVC_F_AFFINITY != 0).then_some(i.value.affinity_timeout_s),
            node_port,
            external_ips: externals.iter().map(|(addr, _)| *addr).collect(),
            external_traffic_policy: policy(SVC_F_EXTERNAL_LOCAL),
            internal_traffic_policy: policy(SVC_F_INTERNAL_LOCAL),
        });
    }
    specs
}

/// Makes the maps hold the frontends of `specs` (a valid set) and nothing
/// else.
fn write_whole(
    root: &Path,
    maps: &mut Maps,
    held: &mut Held,
    specs: &[ServiceSpec],
) -> Result<ApplyReport, ServiceError> {
    let scope = Scope::read(root)?;
    let wanted: Vec<Wanted> = specs
        .iter()
        .enumerate()
        .flat_map(|(index, spec)| frontends(index, spec, &scope))
        .collect();
    let replaced: HashSet<Frontend> = held.frontends.keys().copied().collect();
    let report = write_frontends(root, maps, held, &wanted, &replaced)?;
    held.applied = Some(Applied::new(specs, &wanted, scope));
    Ok(report)
}

/// Writes `changed` (valid among themselves) over the services they
/// replace and removes those at the ClusterIP frontends `removed`, in
/// `scope`; every other service is left as it is and not looked at.
fn write_changes(
    root: &Path,
    maps: &mut Maps,
    held: &mut Held,
    changed: &[ServiceSpec],
    removed: &[Frontend],
    scope: Scope,
) -> Result<ApplyReport, ServiceError> {
    let applied = held
        .applied
        .as_ref()
        .expect("only on a set this table applied");
    let named = cluster_ips(changed, removed);
    let replaced: HashSet<Frontend> = named
        .iter()
        .filter_map(|f| applied.services.get(f))
        .flat_map(|a| a.keys.iter().copied())
        .collect();
    let wanted: Vec<Wanted> = changed
        .iter()
        .enumerate()
        .flat_map(|(index, spec)| frontends(index, spec, &scope))
        .collect();
    let report = write_frontends(root, maps, held, &wanted, &replaced)?;
    let applied = held.applied.as_mut().expect("checked above");
    for f in &named {
        applied.remove(f);
    }
    applied.record(changed, &wanted);
    applied.scope = scope;
    Ok(report)
}

/// The ClusterIP frontends a change names: those of the services it
/// writes and those it removes.
fn cluster_ips(changed: &[ServiceSpec], removed: &[Frontend]) -> HashSet<Frontend> {
    changed
        .iter()
        .map(ServiceSpec::cluster_ip)
        .chain(removed.iter().copied())
        .collect()
}

/// Writes the frontends `wanted` in place of those at `replaced` (the
/// frontends of the services being written): a replaced frontend not
/// wanted is removed, a wanted one written where it differs. Checks first
/// (a wanted frontend held by a service not being written, map capacity),
/// and writes nothing when a check fails.
fn write_frontends(
    root: &Path,
    maps: &mut Maps,
    held: &mut Held,
    wanted: &[Wanted],
    replaced: &HashSet<Frontend>,
) -> Result<ApplyReport, ServiceError> {
    let Held {
        frontends: installed,
        ids,
        ..
    } = held;
    let seen = unshared(installed, wanted, replaced)?;
    for v6 in [false, true] {
        check_capacity(root, maps, installed, wanted, replaced, v6)?;
    }

    let mut report = ApplyReport::default();
    // The programs skip the frontend lookup for a packet whose filter bit
    // is clear, so the filter covers the old and the new frontends (ClusterIP
    // and NodePort alike) while they change, and only what is held after.
    let during = filter_of(installed.keys().chain(seen.iter()));
    maps::write_svc_filter(root, &during)?;
    // Removals first: they free the room the rest may need.
    for key in replaced.iter().filter(|k| !seen.contains(k)) {
        if let Some(old) = installed.remove(key) {
            remove_frontend(maps, ids, key, &old)?;
            report.removed += 1;
        }
    }
    for w in wanted {
        match installed.get_mut(&w.frontend) {
            Some(old) => {
                if update_frontend(maps, old, w)? {
                    report.updated += 1;
                } else {
                    report.unchanged += 1;
                }
            }
            None => {
                installed.insert(w.frontend, add_frontend(maps, ids, w)?);
                report.added += 1;
            }
        }
    }
    maps::write_svc_filter(root, &filter_of(installed.keys()))?;
    Ok(report)
}

/// The frontends `wanted` makes, once none is made twice nor held by a
/// service other than those being `replaced`.
fn unshared(
    installed: &BTreeMap<Frontend, Installed>,
    wanted: &[Wanted],
    replaced: &HashSet<Frontend>,
) -> Result<HashSet<Frontend>, ServiceError> {
    let mut seen: HashMap<Frontend, &str> = HashMap::with_capacity(wanted.len());
    for w in wanted {
        let other = match seen.insert(w.frontend, &w.spec.name) {
            Some(other) => Some(other.to_string()),
            None => installed
                .get(&w.frontend)
                .filter(|_| !replaced.contains(&w.frontend))
                .map(|i| i.name.clone()),
        };
        if let Some(other) = other {
            return Err(ServiceError::SharedFrontend {
                index: w.index,
                name: w.spec.name.clone(),
                frontend: w.frontend,
                other,
            });
        }
    }
    Ok(seen.into_keys().collect())
}

/// Takes frontend `key` (held as `old`) out of the maps, its backend slots
/// and name with it, and frees its id.
fn remove_frontend(
    maps: &mut Maps,
    ids: &mut Ids,
    key: &Frontend,
    old: &Installed,
) -> Result<(), ServiceError> {
    maps.remove_frontend(key)?;
    maps.remove_slots(
        key.addr,
        old.value.id,
        old.value.generation,
        old.value.count,
    )?;
    maps::removed(maps.names.remove(&old.value.id)).map_err(maps.names.error())?;
    ids.used.remove(&old.value.id);
    Ok(())
}

/// Makes held frontend `old` what `w` wants; false when it already was.
/// New backends are written in the other generation's slots and the
/// frontend switched to them in one write, so a packet meets the old set or
/// the new one, never a mix.
fn update_frontend(maps: &mut Maps, old: &mut Installed, w: &Wanted) -> Result<bool, ServiceError> {
    let timeout = w.spec.affinity_timeout.unwrap_or(0);
    let slots = reslot(&old.backends, &w.backends);
    let same_backends = slots == old.backends;
    let same_settings = old.value.flags == w.flags
        && old.value.affinity_timeout_s == timeout
        && old.value.node_port == w.node_port;
    if old.name != w.spec.name {
        maps.names
            .insert(old.value.id, meta_of(&w.spec.name), 0)
            .map_err(maps.names.error())?;
        old.name.clone_from(&w.spec.name);
    }
    if same_backends && same_settings {
        return Ok(false);
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
    maps.insert_frontend(&w.frontend, value)?;
    if !same_backends {
        let vip = w.frontend.addr;
        maps.remove_slots(vip, old.value.id, old.value.generation, old.value.count)?;
    }
    old.value = value;
    old.backends = slots;
    Ok(true)
}

/// Writes the new frontend `w` wants, under an id of its own: its backend
/// slots and name before the frontend that leads to them.
fn add_frontend(maps: &mut Maps, ids: &mut Ids, w: &Wanted) -> Result<Installed, ServiceError> {
    let id = ids.take();
    maps.write_slots(id, 0, &w.backends)?;
    maps.names
        .insert(id, meta_of(&w.spec.name), 0)
        .map_err(maps.names.error())?;
    let installed = Installed::new(id, w);
    maps.insert_frontend(&w.frontend, installed.value)?;
    Ok(installed)
}

/// Fails, naming the map and its setting, when the frontends and backend
/// slots of family `v6` (false: IPv4's) would not fit after writing
/// `wanted` in place of `replaced`.
fn check_capacity(
    root: &Path,
    maps: &Maps,
    installed: &BTreeMap<Frontend, Installed>,
    wanted: &[Wanted],
    replaced: &HashSet<Frontend>,
    v6: bool,
) -> Result<(), ServiceError> {
    let ours = |f: &Frontend| f.addr.is_ipv6() == v6;
    let (frontends_map, backends_map) = if v6 {
        (maps.frontends6.name(), maps.backends6.name())
    } else {
        (maps.frontends.name(), maps.backends.name())
    };
    let capacity = |name: &'static str| -> Result<u32, DataplaneError> {
        Ok(Layout::of_pin(&map_path(root, name))?.max_entries)
    };
    let wanted: Vec<&Wanted> = wanted.iter().filter(|w| ours(&w.frontend)).collect();
    let frontend_capacity = capacity(frontends_map)?;
    let frontends_after = installed.keys().filter(|f| ours(f)).count()
        - replaced.iter().filter(|f| ours(f)).count()
        + wanted.len();
    if frontends_after > frontend_capacity as usize {
        return Err(ServiceError::Full {
            map: frontends_map,
            needed: frontends_after,
            capacity: frontend_capacity,
            key: "bpf_service_frontends",
        });
    }
    // A changed frontend briefly holds both generations' slots.
    let in_flight = wanted
        .iter()
        .filter_map(|w| installed.get(&w.frontend))
        .map(|i| i.backends.len())
        .max()
        .unwrap_or(0);
    let slots = |keys: &mut dyn Iterator<Item = &Frontend>| -> usize {
        keys.filter(|k| ours(k))
            .filter_map(|k| installed.get(k))
            .map(|i| i.backends.len())
            .sum()
    };
    let kept_slots = slots(&mut installed.keys()) - slots(&mut replaced.iter());
    let backend_capacity = capacity(backends_map)?;
    let needed = kept_slots + wanted.iter().map(|w| w.backends.len()).sum::<usize>() + in_flight;
    if needed > backend_capacity as usize {
        return Err(ServiceError::Full {
            map: backends_map,
            needed,
            capacity: backend_capacity,
            key: "bpf_service_backends",
        });
    }
    Ok(())
}

/// The service ids in use, and the last one handed out: ids are not
/// reused at once, so a new service inherits no affinity of an old one.
struct Ids {
    used: HashSet<u32>,
    last: u32,
}

impl Ids {
    /// An id no frontend holds: the one after the last handed out, or the
    /// next free one after it (0 means none).
    fn take(&mut self) -> u32 {
        let mut id = self.last;
        loop {
            id = id.wrapping_add(1).max(1);
            if self.used.insert(id) {
                self.last = id;
                return id;
            }
        }
    }
}

/// Every frontend the maps hold, by frontend; frontends on a protocol no
/// service has are left out.
///
/// # Errors
///
/// [`DataplaneError::Map`] naming `svc_frontends`, `svc_backends`,
/// `svc_frontends6`, `svc_backends6` or `svc_meta` when it cannot be
/// opened or read, or a frontend's backend slot is missing.
pub fn list(root: &Path) -> Result<Vec<FrontendRow>, DataplaneError> {
    let maps = Maps::open(root)?;
    Ok(maps
        .installed()?
        .into_iter()
        .map(|(frontend, i)| {
            let flags = i.value.flags;
            FrontendRow {
                id: i.value.id,
                name: i.name,
                kind: if flags & SVC_F_NODE_PORT != 0 {
                    "node-port"
                } else if flags & SVC_F_EXTERNAL_IP != 0 {
                    "external-ip"
                } else {
                    "cluster-ip"
                },
                address: frontend.addr,
                port: frontend.port,
                protocol: frontend.protocol,
                backends: i.backends,
                affinity_timeout: (flags & SVC_F_AFFINITY != 0)
                    .then_some(i.value.affinity_timeout_s),
                local_only: flags & SVC_F_LOCAL_ONLY != 0,
            }
        })
        .collect())
}

/// Service names by [`SvcValue::id`], for showing translations.
///
/// # Errors
///
/// [`DataplaneError::Map`] naming `svc_meta` when it cannot be opened or
/// read.
pub fn names(root: &Path) -> Result<HashMap<u32, String>, DataplaneError> {
    let names = maps::service_names(root)?;
    names
        .iter()
        .map(|kv| {
            kv.map(|(id, meta)| (id, name_of(&meta)))
                .map_err(names.error())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> SocketAddr {
        s.parse().unwrap()
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
        assert_eq!(reslot(&cur, &[]), Vec::<SocketAddr>::new());
        assert_eq!(reslot(&[], &cur), cur.to_vec());
    }

    /// The maps' frontends as `write_whole` leaves them for `specs`.
    fn installed_for(specs: &[ServiceSpec], scope: &Scope) -> BTreeMap<Frontend, Installed> {
        specs
            .iter()
            .enumerate()
            .flat_map(|(index, spec)| frontends(index, spec, scope))
            .enumerate()
            .map(|(id, w)| (w.frontend, Installed::new(id as u32 + 1, &w)))
            .collect()
    }

    /// What a frontend does: its service's name, its flags and NodePort
    /// record, and its backends (in any order).
    fn behaviour(
        installed: &BTreeMap<Frontend, Installed>,
    ) -> BTreeMap<Frontend, (String, u16, u16, Vec<SocketAddr>)> {
        installed
            .iter()
            .map(|(f, i)| {
                let mut backends = i.backends.clone();
                backends.sort();
                let what = (i.name.clone(), i.value.flags, i.value.node_port, backends);
                (*f, what)
            })
            .collect()
    }

    /// The services read back from the maps make the same frontends again
    /// (what `refresh_node_ports` relies on).
    fn read_back_makes_the_same_frontends(specs: &[ServiceSpec], scope: &Scope) {
        let installed = installed_for(specs, scope);
        let again = installed_for(&installed_specs(&installed), scope);
        assert_eq!(behaviour(&again), behaviour(&installed));
    }

    #[test]
    fn a_dual_stack_service_under_one_name_keeps_each_familys_external_ips() {
        let scope = Scope {
            node_addrs: vec!["192.168.0.1".parse().unwrap(), "fd00:1::1".parse().unwrap()],
            local: HashSet::new(),
        };
        let half = |vip: &str, backend: &str, external: &str| ServiceSpec {
            backends: vec![b(backend)],
            external_ips: vec![external.parse().unwrap()],
            node_port: Some(30_080),
            ..ServiceSpec::new("web", vip.parse().unwrap(), 80, Protocol::TCP)
        };
        let specs = [
            half("10.96.0.1", "10.244.1.1:8080", "192.0.2.1"),
            half("fd00:96::1", "[fd00:244::1]:8080", "2001:db8::1"),
        ];
        read_back_makes_the_same_frontends(&specs, &scope);
        let read = installed_specs(&installed_for(&specs, &scope));
        assert_eq!(read[0].external_ips, specs[0].external_ips);
        assert_eq!(read[1].external_ips, specs[1].external_ips);
    }

    #[test]
    fn a_local_clusterip_frontend_does_not_narrow_its_nodeports_when_read_back() {
        let scope = Scope {
            node_addrs: vec!["192.168.0.1".parse().unwrap()],
            local: HashSet::from(["10.244.0.5".parse().unwrap()]),
        };
        let spec = |name: &str, vip: &str, node_port: u16, backends: &[&str]| ServiceSpec {
            backends: backends.iter().map(|s| b(s)).collect(),
            node_port: Some(node_port),
            external_ips: vec![format!("192.0.2.{}", node_port % 100).parse().unwrap()],
            internal_traffic_policy: TrafficPolicy::Local,
            ..ServiceSpec::new(name, vip.parse().unwrap(), 80, Protocol::TCP)
        };
        let specs = [
            spec(
                "ns/some-local",
                "10.96.0.1",
                30_001,
                &["10.244.0.5:80", "10.244.9.1:80", "10.244.9.2:80"],
            ),
            // No backend on this node: the ClusterIP frontend holds none.
            spec("ns/none-local", "10.96.0.2", 30_002, &["10.244.9.3:80"]),
            ServiceSpec {
                external_traffic_policy: TrafficPolicy::Local,
                ..spec(
                    "ns/all-local",
                    "10.96.0.3",
                    30_003,
                    &["10.244.0.5:80", "10.244.9.4:80"],
                )
            },
        ];
        read_back_makes_the_same_frontends(&specs, &scope);
        let read = installed_specs(&installed_for(&specs, &scope));
        let mut backends = read[1].backends.clone();
        backends.sort();
        assert_eq!(backends, specs[1].backends);
    }
}
