//! A node's dataplane: the programs and maps loaded once and pinned under
//! the BPF root, then attached to each endpoint's host veth as
//! direct-action `cls_bpf` filters on its clsact qdisc. Filters belong to
//! the device: they run whether or not any Margay process is, and go with
//! the device when the pod goes.
//!
//! Why not TCX links (kernel ≥ 6.6): each TCX attach waits for an RCU grace
//! period while holding RTNL (`tcx_entry_sync`), measured at ~10 ms here,
//! twice per pod, serialising every ADD on the node behind it. A clsact
//! filter is ~0.2 ms and takes no grace period.
//!
//! ```text
//! <root>/progs/{from_pod,to_pod}
//! <root>/maps/{endpoints,endpoints_by_ip,policies,conntrack,counters,flow_events,config,
//!              svc_frontends,svc_backends,svc_meta,svc_affinity,nat}
//! ```
//!
//! ```no_run
//! # use margay_ebpf::node::{Node, Settings};
//! let mut node = Node::open("/sys/fs/bpf/margay".as_ref(), &Settings::default())?;
//! node.attach("mrg0123456789a")?;
//! # Ok::<(), margay_ebpf::DataplaneError>(())
//! ```

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use aya::EbpfLoader;
use aya::programs::tc::{
    NlOptions, SchedClassifierLink, TcAttachOptions, TcError, TcHandle, qdisc_add_clsact,
    qdisc_detach_program,
};
use aya::programs::{SchedClassifier, TcAttachType};
use margay_conf::lock::FileLock;

use crate::abi::{Config, LOG_INFO};
use crate::bpffs;
use crate::error::DataplaneError;
use crate::maps::{self, Durability, Layout, PINNED_MAPS, map_path};
use crate::object::{DATAPLANE_OBJECT, DATAPLANE_OBJECT_ID};

/// Node-wide settings from the network configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// Entries in the conntrack LRU (`bpf_conntrack_size`).
    pub conntrack_size: u32,
    /// `bpf_log_level`: `abi::LOG_OFF`, `LOG_INFO` (drops) or `LOG_DEBUG`.
    pub log_level: u32,
    /// Service frontends the node can hold (`bpf_service_frontends`).
    pub service_frontends: u32,
    /// Service backends, over all services (`bpf_service_backends`).
    pub service_backends: u32,
}

impl Settings {
    /// The settings a network configuration asks for.
    pub fn from_conf(conf: &margay_conf::margay::PluginConf) -> Settings {
        use margay_conf::margay::BpfLogLevel;
        Settings {
            conntrack_size: conf.bpf_conntrack_size,
            service_frontends: conf.bpf_service_frontends,
            service_backends: conf.bpf_service_backends,
            log_level: match conf.bpf_log_level {
                BpfLogLevel::Off => crate::abi::LOG_OFF,
                BpfLogLevel::Info => LOG_INFO,
                BpfLogLevel::Debug => crate::abi::LOG_DEBUG,
            },
        }
    }
}

impl Settings {
    /// The capacity these settings give map `name`, for the maps whose
    /// size is configured (the others keep the object's).
    pub fn map_size(&self, name: &str) -> Option<u32> {
        match name {
            "conntrack" => Some(self.conntrack_size),
            // Two translations a flow: forward and reverse.
            "nat" => Some(self.conntrack_size.saturating_mul(2)),
            "svc_frontends" | "svc_meta" => Some(self.service_frontends),
            "svc_backends" => Some(self.service_backends),
            _ => None,
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            conntrack_size: 65_536,
            log_level: LOG_INFO,
            service_frontends: 65_536,
            service_backends: 262_144,
        }
    }
}

/// The two programs of every endpoint, in attach order.
pub const PROGRAMS: [(&str, TcAttachType); 2] = [
    ("from_pod", TcAttachType::Ingress),
    ("to_pod", TcAttachType::Egress),
];

/// The program of the node's data interfaces (NodePorts).
pub const DATA_IFACE_PROGRAM: (&str, TcAttachType) = ("from_net", TcAttachType::Ingress);
/// The program of the node's tunnel device (traffic from other nodes).
pub const TUNNEL_PROGRAM: (&str, TcAttachType) = ("from_tunnel", TcAttachType::Ingress);
/// The node's own programs, in `Node::node_programs` order.
const NODE_PROGRAMS: [(&str, TcAttachType); 2] = [DATA_IFACE_PROGRAM, TUNNEL_PROGRAM];

/// The pinned dataplane of one BPF root.
pub struct Node {
    programs: [SchedClassifier; 2],
    node_programs: [SchedClassifier; 2],
}

/// Where a durable map waits while its resized replacement is loaded.
fn set_aside_path(root: &Path, name: &str) -> PathBuf {
    root.join("maps").join(format!(".{name}.previous"))
}

fn program_path(root: &Path, name: &str) -> PathBuf {
    root.join("progs").join(name)
}

/// Lock files cannot live on bpffs; one per root, under /run.
fn lock_path(root: &Path) -> PathBuf {
    let flat: String = root
        .to_string_lossy()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    PathBuf::from("/run/margay/locks").join(format!("{flat}.lock"))
}

fn pin_error(path: &Path, e: impl std::fmt::Display) -> DataplaneError {
    DataplaneError::Pin {
        path: path.to_owned(),
        reason: e.to_string(),
    }
}

fn remove_pin(path: &Path) -> Result<(), DataplaneError> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(pin_error(path, e)),
        _ => Ok(()),
    }
}

impl Node {
    /// Opens the dataplane pinned at `root`. When this build's programs are
    /// not pinned there yet (first use, an upgrade, a changed conntrack
    /// size) they are loaded and pinned under a node-wide lock, and running
    /// endpoints are moved onto them; otherwise nothing is loaded or
    /// verified: an ADD only opens pins.
    pub fn open(root: &Path, settings: &Settings) -> Result<Node, DataplaneError> {
        bpffs::ensure_root(root)?;
        if let Some(node) = Self::open_pinned(root, settings)? {
            return Ok(node);
        }
        let _lock = FileLock::acquire(&lock_path(root), Duration::from_secs(60))?;
        // Someone may have installed them while we waited.
        if let Some(node) = Self::open_pinned(root, settings)? {
            return Ok(node);
        }
        install(root, settings)?;
        Self::open_pinned(root, settings)?.ok_or_else(|| DataplaneError::Root {
            path: root.to_owned(),
            reason: "programs were pinned but cannot be opened".into(),
        })
    }

    /// The programs pinned at `root`, whatever settings they were loaded
    /// with (for operators' tools, which do not know the network
    /// configuration and must not reload anything).
    pub fn open_pinned_as_is(root: &Path) -> Result<Node, DataplaneError> {
        let open = |name: &str| {
            SchedClassifier::from_pin(program_path(root, name)).map_err(|e| DataplaneError::Root {
                path: root.to_owned(),
                reason: format!("program {name} is not pinned here: {e}"),
            })
        };
        Ok(Node {
            programs: [open("from_pod")?, open("to_pod")?],
            node_programs: [open(DATA_IFACE_PROGRAM.0)?, open(TUNNEL_PROGRAM.0)?],
        })
    }

    /// The pinned programs, if they are this build's with these settings.
    fn open_pinned(root: &Path, settings: &Settings) -> Result<Option<Node>, DataplaneError> {
        let Ok(mut config) = maps::config(root) else {
            return Ok(None);
        };
        let current = config
            .get(&0, 0)
            .map_err(|e| DataplaneError::map("config", e))?;
        let sized_as_configured = PINNED_MAPS.iter().all(|(name, _)| {
            settings.map_size(name).is_none_or(|size| {
                Layout::of_pin(&map_path(root, name)).is_ok_and(|l| l.max_entries == size)
            })
        });
        if current.object_id != DATAPLANE_OBJECT_ID || !sized_as_configured {
            return Ok(None);
        }
        let open = |name: &str| SchedClassifier::from_pin(program_path(root, name)).ok();
        let (Some(from_pod), Some(to_pod), Some(from_net), Some(from_tunnel)) = (
            open("from_pod"),
            open("to_pod"),
            open(DATA_IFACE_PROGRAM.0),
            open(TUNNEL_PROGRAM.0),
        ) else {
            return Ok(None);
        };
        if current.log_level != settings.log_level {
            let updated = Config {
                log_level: settings.log_level,
                ..current
            };
            config
                .set(0, updated, 0)
                .map_err(|e| DataplaneError::map("config", e))?;
        }
        Ok(Some(Node {
            programs: [from_pod, to_pod],
            node_programs: [from_net, from_tunnel],
        }))
    }

    /// Attaches both programs to the host veth `ifname` (creating its
    /// clsact qdisc; one already there is fine). A filter of ours already
    /// there is replaced atomically, so a retried ADD or an upgrade never
    /// leaves the interface without a program.
    pub fn attach(&mut self, ifname: &str) -> Result<(), DataplaneError> {
        ensure_clsact("clsact", ifname)?;
        for (prog, (name, kind)) in self.programs.iter_mut().zip(PROGRAMS) {
            attach_filter(prog, name, kind, ifname)?;
        }
        Ok(())
    }

    /// Removes the endpoint's filters when its interface still exists
    /// (when it is gone, they went with it).
    pub fn detach(ifname: &str) -> Result<(), DataplaneError> {
        for program in PROGRAMS {
            detach_program(program, ifname)?;
        }
        Ok(())
    }

    /// Verifies that both programs of this node are attached to `ifname`.
    pub fn verify_attached(&self, ifname: &str) -> Result<(), DataplaneError> {
        for (prog, (name, kind)) in self.programs.iter().zip(PROGRAMS) {
            let id = prog
                .info()
                .map_err(|e| DataplaneError::Check(e.to_string()))?
                .id();
            if !attached(ifname, kind).contains(&id) {
                return Err(DataplaneError::Check(format!(
                    "program {name} is not attached to {ifname}"
                )));
            }
        }
        Ok(())
    }

    /// The program named `name` (for tests and benchmarks: `TestRun`).
    pub fn program(&self, name: &str) -> Option<&SchedClassifier> {
        let all = PROGRAMS.iter().chain(&NODE_PROGRAMS);
        let programs = self.programs.iter().chain(&self.node_programs);
        all.zip(programs)
            .find(|((n, _), _)| *n == name)
            .map(|(_, p)| p)
    }

    /// Makes `ifname` one of the node's data interfaces: `from_net` on its
    /// ingress, and its IPv4 addresses recorded as where NodePorts answer
    /// (services applied from now on open NodePorts on them). Returns the
    /// addresses.
    pub fn attach_data_iface(
        &mut self,
        root: &Path,
        ifname: &str,
    ) -> Result<Vec<Ipv4Addr>, DataplaneError> {
        let ifindex =
            nix::net::if_::if_nametoindex(ifname).map_err(|e| DataplaneError::Attach {
                program: DATA_IFACE_PROGRAM.0,
                ifname: ifname.to_string(),
                reason: format!("no such interface: {e}"),
            })?;
        let addrs = ipv4_addresses(ifname)?;
        if addrs.is_empty() {
            return Err(DataplaneError::Attach {
                program: DATA_IFACE_PROGRAM.0,
                ifname: ifname.to_string(),
                reason: "it has no IPv4 address for NodePorts to answer on".into(),
            });
        }
        ensure_clsact(DATA_IFACE_PROGRAM.0, ifname)?;
        let (name, kind) = DATA_IFACE_PROGRAM;
        attach_filter(&mut self.node_programs[0], name, kind, ifname)?;
        let mut map = maps::node_addrs(root)?;
        for a in &addrs {
            map.insert(a.octets(), ifindex, 0)
                .map_err(|e| DataplaneError::map("node_addrs", e))?;
        }
        Ok(addrs)
    }
}

impl Node {
    /// Puts `from_tunnel` on the node's tunnel device `ifname`.
    pub fn attach_tunnel(&mut self, ifname: &str) -> Result<(), DataplaneError> {
        let (name, kind) = TUNNEL_PROGRAM;
        ensure_clsact(name, ifname)?;
        attach_filter(&mut self.node_programs[1], name, kind, ifname)
    }
}

/// Takes `from_net` off `ifname` and forgets its NodePort addresses.
pub fn detach_data_iface(root: &Path, ifname: &str) -> Result<(), DataplaneError> {
    detach_program(DATA_IFACE_PROGRAM, ifname)?;
    let ifindex = nix::net::if_::if_nametoindex(ifname).ok();
    let mut map = maps::node_addrs(root)?;
    let theirs: Vec<[u8; 4]> = map
        .iter()
        .filter_map(Result::ok)
        .filter(|(a, i)| {
            Some(*i) == ifindex
                || ipv4_addresses(ifname).is_ok_and(|l| l.contains(&Ipv4Addr::from(*a)))
        })
        .map(|(a, _)| a)
        .collect();
    for a in theirs {
        let _ = map.remove(&a);
    }
    Ok(())
}

/// A NodePort address of the node and the data interface it is on.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct DataIface {
    pub address: Ipv4Addr,
    pub ifindex: u32,
    /// None when the interface is gone.
    pub ifname: Option<String>,
}

/// The node's data interfaces and NodePort addresses.
pub fn data_ifaces(root: &Path) -> Result<Vec<DataIface>, DataplaneError> {
    let map = maps::node_addrs(root)?;
    let mut all: Vec<DataIface> = map
        .iter()
        .map(|kv| {
            kv.map(|(a, ifindex)| DataIface {
                address: Ipv4Addr::from(a),
                ifindex,
                ifname: nix::net::if_::if_indextoname(ifindex)
                    .ok()
                    .map(|n| n.to_string_lossy().into_owned()),
            })
        })
        .collect::<Result<_, _>>()
        .map_err(|e| DataplaneError::map("node_addrs", e))?;
    all.sort();
    Ok(all)
}

fn ipv4_addresses(ifname: &str) -> Result<Vec<Ipv4Addr>, DataplaneError> {
    let all = nix::ifaddrs::getifaddrs().map_err(|e| DataplaneError::Attach {
        program: DATA_IFACE_PROGRAM.0,
        ifname: ifname.to_string(),
        reason: format!("listing addresses: {e}"),
    })?;
    Ok(all
        .filter(|i| i.interface_name == ifname)
        .filter_map(|i| i.address?.as_sockaddr_in().map(|s| s.ip()))
        .collect())
}

/// Adds a clsact qdisc to `ifname`; one already there is fine.
fn ensure_clsact(program: &'static str, ifname: &str) -> Result<(), DataplaneError> {
    match qdisc_add_clsact(ifname) {
        Err(TcError::NetlinkError(n)) if n.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        Err(e) => Err(DataplaneError::Attach {
            program,
            ifname: ifname.to_string(),
            reason: e.to_string(),
        }),
        Ok(()) => Ok(()),
    }
}

/// Removes our filter for `program` from `ifname`, when both still exist.
fn detach_program(
    (name, kind): (&'static str, TcAttachType),
    ifname: &str,
) -> Result<(), DataplaneError> {
    match qdisc_detach_program(ifname, kind, name) {
        Ok(()) => Ok(()),
        // No filter of ours, or no interface at all (ENODEV).
        Err(TcError::IoError(e))
            if e.kind() == std::io::ErrorKind::NotFound
                || e.raw_os_error() == Some(libc::ENODEV) =>
        {
            Ok(())
        }
        Err(e) => Err(DataplaneError::Attach {
            program: name,
            ifname: ifname.to_string(),
            reason: format!("detaching: {e}"),
        }),
    }
}

/// Our filters' place on every clsact: fixed, so that a later attach finds
/// and replaces them rather than stacking a second copy.
const FILTER_PRIORITY: u16 = 1;
const FILTER_HANDLE: u16 = 1;

fn attach_filter(
    prog: &mut SchedClassifier,
    name: &'static str,
    kind: TcAttachType,
    ifname: &str,
) -> Result<(), DataplaneError> {
    let attach_err = |reason: String| DataplaneError::Attach {
        program: name,
        ifname: ifname.to_string(),
        reason,
    };
    let handle = TcHandle::new(0, FILTER_HANDLE);
    // Ours is replaced in place; another tool's filters are left alone.
    let ours_present = filter_messages(ifname, kind)
        .map_err(attach_err)?
        .iter()
        .any(|m| {
            m.header.info >> 16 == u32::from(FILTER_PRIORITY)
                && m.header.handle.minor == FILTER_HANDLE
        });
    let id = if !ours_present {
        let options = NlOptions {
            priority: FILTER_PRIORITY,
            handle,
            ..NlOptions::default()
        };
        prog.attach_with_options(ifname, kind, TcAttachOptions::Netlink(options))
    } else {
        let ours = SchedClassifierLink::attached(ifname, kind, FILTER_PRIORITY, handle, None)
            .map_err(|e| attach_err(e.to_string()))?;
        prog.attach_to_link(ours)
    }
    .map_err(|e| attach_err(e.to_string()))?;
    let link = prog.take_link(id).map_err(|e| attach_err(e.to_string()))?;
    // The filter belongs to the device; dropping our handle would detach it.
    std::mem::forget(link);
    Ok(())
}

/// IDs of the programs of the cls_bpf filters on `ifname`'s clsact in
/// direction `kind` (empty when the interface or the qdisc is gone).
pub fn attached(ifname: &str, kind: TcAttachType) -> Vec<u32> {
    filters(ifname, kind).unwrap_or_default()
}

fn filters(ifname: &str, kind: TcAttachType) -> Result<Vec<u32>, String> {
    use rtnetlink::packet_route::tc::{TcAttribute, TcFilterBpfOption, TcOption};
    Ok(filter_messages(ifname, kind)?
        .into_iter()
        .flat_map(|m| m.attributes)
        .filter_map(|a| match a {
            TcAttribute::Options(opts) => Some(opts),
            _ => None,
        })
        .flatten()
        .filter_map(|o| match o {
            TcOption::Bpf(TcFilterBpfOption::ProgId(id)) => Some(id),
            _ => None,
        })
        .collect())
}

/// The tc filters on `ifname`'s clsact in direction `kind`, as netlink
/// gives them (none when the interface or the qdisc is gone).
fn filter_messages(
    ifname: &str,
    kind: TcAttachType,
) -> Result<Vec<rtnetlink::packet_route::tc::TcMessage>, String> {
    use futures::TryStreamExt;
    let Ok(index) = nix::net::if_::if_nametoindex(ifname) else {
        return Ok(Vec::new());
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let mut request = handle.traffic_filter(index as i32).get();
        request = match kind {
            TcAttachType::Ingress => request.ingress(),
            _ => request.egress(),
        };
        // No clsact (or no device any more): nothing attached.
        Ok(request.execute().try_collect().await.unwrap_or_default())
    })
}

/// Loads the object and pins programs and maps. Pinned maps of a matching
/// layout are reused (their contents survive); a rebuildable map of another
/// layout is replaced; a durable one is copied into its replacement when its
/// records are unchanged (only the capacity differs), else this fails
/// clearly rather than hand programs a map they would misread. Running
/// endpoints' links are then switched atomically to the new programs.
fn install(root: &Path, settings: &Settings) -> Result<(), DataplaneError> {
    let object = aya_obj::Object::parse(DATAPLANE_OBJECT)
        .map_err(|e| DataplaneError::Object(e.to_string()))?;
    for dir in ["maps", "progs"] {
        std::fs::create_dir_all(root.join(dir)).map_err(|e| pin_error(&root.join(dir), e))?;
    }
    let mut loader = EbpfLoader::new();
    let mut carried = Vec::new();
    for (name, durability) in PINNED_MAPS {
        let def = object.maps.get(name).ok_or_else(|| {
            DataplaneError::Object(format!("map {name} is missing from the object"))
        })?;
        if let Some(size) = settings.map_size(name) {
            loader.map_max_entries(name, size);
        }
        let expected = Layout {
            map_type: def.map_type(),
            key_size: def.key_size(),
            value_size: def.value_size(),
            max_entries: settings.map_size(name).unwrap_or(def.max_entries()),
            flags: def.map_flags(),
        };
        let pin = map_path(root, name);
        if let Ok(pinned) = Layout::of_pin(&pin)
            && pinned != expected
        {
            match durability {
                Durability::Rebuildable => {
                    tracing::warn!(map = name, %pinned, %expected, "replacing a pinned map of another layout");
                    remove_pin(&pin)?;
                }
                Durability::Durable if pinned.same_records(&expected) => {
                    tracing::warn!(map = name, %pinned, %expected, "resizing a pinned map, entries carried over");
                    // Set aside, not removed: should the load fail, it goes
                    // back, and the endpoints' state with it.
                    let aside = set_aside_path(root, name);
                    std::fs::rename(&pin, &aside).map_err(|e| pin_error(&pin, e))?;
                    carried.push((name, aside));
                }
                Durability::Durable => {
                    return Err(DataplaneError::IncompatibleMap {
                        path: pin,
                        pinned: pinned.to_string(),
                        expected: expected.to_string(),
                    });
                }
            }
        }
        loader.map_pin_path(name, pin);
    }
    let mut ebpf = match loader.load(DATAPLANE_OBJECT) {
        Ok(ebpf) => ebpf,
        Err(e) => {
            for (name, aside) in &carried {
                let pin = map_path(root, name);
                let _ = std::fs::remove_file(&pin);
                if let Err(e) = std::fs::rename(aside, &pin) {
                    tracing::error!(map = name, aside = %aside.display(), "cannot put a set-aside map back: {e}");
                }
            }
            return Err(DataplaneError::Load(format!("{e:#}")));
        }
    };
    for (name, aside) in carried {
        let old = aya::maps::MapData::from_pin(&aside).map_err(|e| DataplaneError::map(name, e))?;
        copy_entries(root, name, old)?;
        remove_pin(&aside)?;
    }
    let endpoints: Vec<String> = crate::registry::list(root)
        .map(|l| l.iter().map(crate::abi::Endpoint::ifname).collect())
        .unwrap_or_default();
    let data_ifaces: Vec<String> = data_ifaces(root)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|d| d.ifname)
        .collect();
    let tunnel: Vec<String> = nix::net::if_::if_nametoindex(crate::cluster::TUNNEL_DEVICE)
        .map(|_| vec![crate::cluster::TUNNEL_DEVICE.to_string()])
        .unwrap_or_default();
    let all = PROGRAMS.iter().map(|p| (*p, &endpoints)).chain([
        (DATA_IFACE_PROGRAM, &data_ifaces),
        (TUNNEL_PROGRAM, &tunnel),
    ]);
    for ((name, kind), running) in all {
        let prog: &mut SchedClassifier = ebpf
            .program_mut(name)
            .ok_or_else(|| DataplaneError::Object(format!("program {name} is missing")))?
            .try_into()
            .map_err(|e: aya::programs::ProgramError| DataplaneError::Load(e.to_string()))?;
        prog.load()
            .map_err(|e| DataplaneError::Load(format!("{name}: {e:#}")))?;
        relink(running, name, kind, prog)?;
        let pin = program_path(root, name);
        remove_pin(&pin)?;
        prog.pin(&pin).map_err(|e| pin_error(&pin, e))?;
    }
    // Last: the marker that says these pins are complete and this build's.
    let mut config = maps::config(root)?;
    let config_value = Config {
        log_level: settings.log_level,
        object_id: DATAPLANE_OBJECT_ID,
        ..Config::default()
    };
    config
        .set(0, config_value, 0)
        .map_err(|e| DataplaneError::map("config", e))?;
    tracing::info!(root = %root.display(), object = format!("{DATAPLANE_OBJECT_ID:#x}"), "dataplane programs loaded and pinned");
    Ok(())
}

/// Moves every interface of `ifnames` that carries a filter of ours onto
/// the freshly loaded `prog` (a filter replace: atomic, no packet sees no
/// program).
fn relink(
    ifnames: &[String],
    program: &'static str,
    kind: TcAttachType,
    prog: &mut SchedClassifier,
) -> Result<(), DataplaneError> {
    for ifname in ifnames {
        if filters(ifname, kind).is_ok_and(|ids| !ids.is_empty()) {
            attach_filter(prog, program, kind, ifname)?;
            tracing::info!(%ifname, program, "moved a running interface onto the new program");
        }
    }
    Ok(())
}

/// Copies the entries of a durable map being resized into its replacement.
fn copy_entries(root: &Path, name: &str, old: aya::maps::MapData) -> Result<(), DataplaneError> {
    let old = aya::maps::Map::from_map_data(old).map_err(|e| DataplaneError::map(name, e))?;
    match name {
        "endpoints" => copy(name, old, maps::endpoints(root)?),
        "endpoints_by_ip" => copy(name, old, maps::endpoints_by_ip(root)?),
        "policies" => copy(name, old, maps::policies(root)?),
        "svc_frontends" => copy(name, old, maps::frontends(root)?),
        "svc_backends" => copy(name, old, maps::backends(root)?),
        "svc_meta" => copy(name, old, maps::service_names(root)?),
        "node_addrs" => copy(name, old, maps::node_addrs(root)?),
        _ => Err(DataplaneError::map(
            name,
            "no way to carry its entries over",
        )),
    }
}

fn copy<K: aya::Pod, V: aya::Pod>(
    name: &str,
    from: aya::maps::Map,
    mut to: aya::maps::HashMap<aya::maps::MapData, K, V>,
) -> Result<(), DataplaneError> {
    let fail = |e: aya::maps::MapError| DataplaneError::map(name, e);
    let from = aya::maps::HashMap::<_, K, V>::try_from(from).map_err(fail)?;
    for kv in from.iter() {
        let (k, v) = kv.map_err(fail)?;
        to.insert(k, v, 0).map_err(fail)?;
    }
    Ok(())
}
