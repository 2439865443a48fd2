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
//! Attaching is a few netlink requests sent at once (the qdisc, then a
//! create-or-replace of each filter at our priority/handle) on the pinned
//! programs' ids. It does not go through aya's `SchedClassifier`: opening a
//! pinned program that way makes aya probe the kernel's features first (a
//! dozen BTF and program loads, ~0.5 ms of CPU per ADD, competing with IPAM
//! on small nodes).
//!
//! Where the pins are: [`crate::paths`]. This module knows programs and
//! maps only; what the node's interfaces mean (NodePort addresses, the
//! tunnel to other nodes) is the cluster features' above it.
//!
//! ```no_run
//! # use margay_ebpf::node::{Node, Settings};
//! let mut node = Node::open("/sys/fs/bpf/margay".as_ref(), &Settings::default())?;
//! node.attach("mrg0123456789a")?;
//! # Ok::<(), margay_ebpf::DataplaneError>(())
//! ```

use std::cell::OnceCell;
use std::collections::BTreeSet;
use std::ops::Range;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use aya::EbpfLoader;
use aya::programs::tc::{TcError, qdisc_detach_program};
use aya::programs::{
    CgroupSockAddr, CgroupSockAddrAttachType, ProgramInfo, SchedClassifier, TcAttachType,
};
use margay_conf::lock::FileLock;
use rtnetlink::packet_core::{NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST, NetlinkMessage};
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::packet_route::tc::{
    TcAttribute, TcBpfFlags, TcFilterBpfOption, TcHandle, TcMessage, TcOption,
};

use crate::abi::{CALL_FROM_POD6, Config, CtEntry, Endpoint, LOG_INFO};
use crate::error::{Cause, DataplaneError};
use crate::maps::{self, Durability, Layout, PINNED_MAPS};
use crate::object::{DATAPLANE_OBJECT, DATAPLANE_OBJECT_ID};
use crate::paths::{link_path, lock_path, map_path, program_path, set_aside_path};
use crate::{bpffs, link, upgrade};

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
    /// Entries of the policy peer sets, per family (`bpf_ip_set_entries`).
    pub ip_set_entries: u32,
}

impl Settings {
    /// The settings a network configuration asks for.
    pub fn from_conf(conf: &margay_conf::margay::PluginConf) -> Settings {
        use margay_conf::margay::BpfLogLevel;
        Settings {
            conntrack_size: conf.bpf_conntrack_size,
            service_frontends: conf.bpf_service_frontends,
            service_backends: conf.bpf_service_backends,
            ip_set_entries: conf.bpf_ip_set_entries,
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
            // Per family.
            "conntrack" | "conntrack6" => Some(self.conntrack_size),
            // Two translations a flow: forward and reverse.
            "nat" | "nat6" => Some(self.conntrack_size.saturating_mul(2)),
            // Per family, but svc_meta: its ids are both families'.
            "svc_frontends" | "svc_frontends6" | "svc_meta" => Some(self.service_frontends),
            "svc_backends" | "svc_backends6" => Some(self.service_backends),
            "ip_sets" | "ip_sets6" => Some(self.ip_set_entries),
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
            ip_set_entries: 1 << 20,
        }
    }
}

/// The two programs of every endpoint, in attach order.
pub const PROGRAMS: [(&str, TcAttachType); 2] = [
    ("from_pod", TcAttachType::Ingress),
    ("to_pod", TcAttachType::Egress),
];

/// from_pod's IPv6 half, which from_pod tail-calls (map `calls`): loaded
/// and pinned with the others, attached nowhere.
pub const FROM_POD6: &str = "from_pod6";

/// The program of the node's data interfaces (NodePorts).
pub const DATA_IFACE_PROGRAM: (&str, TcAttachType) = ("from_net", TcAttachType::Ingress);
/// The program of the node's tunnel device (traffic from other nodes).
pub const TUNNEL_PROGRAM: (&str, TcAttachType) = ("from_tunnel", TcAttachType::Ingress);
/// The programs of the node's cgroup (services for host-networked clients,
/// [`crate::host_lb`]), by hook.
pub const SOCKET_PROGRAMS: [(&str, CgroupSockAddrAttachType); 8] = [
    ("sock_connect4", CgroupSockAddrAttachType::Connect4),
    ("sock_sendmsg4", CgroupSockAddrAttachType::UDPSendMsg4),
    ("sock_recvmsg4", CgroupSockAddrAttachType::UDPRecvMsg4),
    ("sock_getpeername4", CgroupSockAddrAttachType::GetPeerName4),
    ("sock_connect6", CgroupSockAddrAttachType::Connect6),
    ("sock_sendmsg6", CgroupSockAddrAttachType::UDPSendMsg6),
    ("sock_recvmsg6", CgroupSockAddrAttachType::UDPRecvMsg6),
    ("sock_getpeername6", CgroupSockAddrAttachType::GetPeerName6),
];
/// Every program of a node, in `Node::programs` order: the endpoints' two,
/// then the node's own.
const ALL_PROGRAMS: [(&str, TcAttachType); 4] =
    [PROGRAMS[0], PROGRAMS[1], DATA_IFACE_PROGRAM, TUNNEL_PROGRAM];
/// Where those of an endpoint, a data interface and the tunnel device are
/// in [`ALL_PROGRAMS`].
const ENDPOINT: Range<usize> = 0..2;
const DATA_IFACE: Range<usize> = 2..3;
const TUNNEL: Range<usize> = 3..4;

/// The pinned dataplane of one BPF root.
pub struct Node {
    root: PathBuf,
    /// The pinned programs, in [`ALL_PROGRAMS`] order.
    programs: [ProgramInfo; 4],
    /// The same, opened as aya programs on first use by [`Node::program`]
    /// (which probes kernel features; see the module documentation).
    classifiers: [OnceCell<Option<SchedClassifier>>; 4],
}

/// The programs pinned at `root`, in [`ALL_PROGRAMS`] order.
fn pinned_programs(root: &Path) -> Result<[ProgramInfo; 4], DataplaneError> {
    let open = |(name, _): (&str, TcAttachType)| {
        ProgramInfo::from_pin(program_path(root, name)).map_err(|e| DataplaneError::Root {
            path: root.to_owned(),
            source: format!("program {name} is not pinned here: {e}").into(),
        })
    };
    let [from_pod, to_pod, from_net, from_tunnel] = ALL_PROGRAMS;
    Ok([
        open(from_pod)?,
        open(to_pod)?,
        open(from_net)?,
        open(from_tunnel)?,
    ])
}

fn pin_error(path: &Path, e: impl Into<Cause>) -> DataplaneError {
    DataplaneError::Pin {
        path: path.to_owned(),
        source: e.into(),
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
    /// not pinned there yet (first use, an upgrade, a changed map size)
    /// they are loaded and pinned under a node-wide lock, and running
    /// endpoints are moved onto them; otherwise nothing is loaded or
    /// verified: an ADD only opens pins.
    ///
    /// # Errors
    ///
    /// [`DataplaneError::Bpffs`] or [`DataplaneError::Root`] when `root`
    /// cannot hold pins; [`DataplaneError::Lock`] when the node lock is not
    /// had within 60 s. Loading: [`DataplaneError::Object`] when the
    /// embedded object lacks a map or program; [`DataplaneError::IncompatibleMap`]
    /// when a durable map's records changed; [`DataplaneError::Load`] when
    /// the kernel refuses the programs (pinned maps set aside are put
    /// back); [`DataplaneError::Pin`] when a pin cannot be made, moved or
    /// removed; [`DataplaneError::Map`] when the `config` map cannot be
    /// read or written or a map's entries cannot be carried over or filled
    /// in; [`DataplaneError::Attach`] when a running interface cannot be
    /// moved onto the new programs.
    pub fn open(root: &Path, settings: &Settings) -> Result<Node, DataplaneError> {
        bpffs::ensure_root(root)?;
        if let Some(node) = Self::open_pinned(root, settings)? {
            return Ok(node);
        }
        let _lock = FileLock::acquire(&lock_path(root, ""), Duration::from_secs(60))?;
        // Someone may have installed them while we waited.
        if let Some(node) = Self::open_pinned(root, settings)? {
            return Ok(node);
        }
        install(root, settings)?;
        Self::open_pinned(root, settings)?.ok_or_else(|| DataplaneError::Root {
            path: root.to_owned(),
            source: "programs were pinned but cannot be opened".into(),
        })
    }

    /// The programs pinned at `root`, whatever settings they were loaded
    /// with (for operators' tools, which do not know the network
    /// configuration and must not reload anything).
    ///
    /// # Errors
    ///
    /// [`DataplaneError::Root`] when a program is not pinned under `root`.
    pub fn open_pinned_as_is(root: &Path) -> Result<Node, DataplaneError> {
        Ok(Node {
            root: root.to_owned(),
            programs: pinned_programs(root)?,
            classifiers: Default::default(),
        })
    }

    /// The pinned programs, if they are this build's with these settings.
    fn open_pinned(root: &Path, settings: &Settings) -> Result<Option<Node>, DataplaneError> {
        let Ok(mut config) = maps::config(root) else {
            return Ok(None);
        };
        let current = config.get(&0, 0).map_err(config.error())?;
        let sized_as_configured = PINNED_MAPS.iter().all(|(name, _)| {
            settings.map_size(name).is_none_or(|size| {
                Layout::of_pin(&map_path(root, name)).is_ok_and(|l| l.max_entries == size)
            })
        });
        if current.object_id != DATAPLANE_OBJECT_ID || !sized_as_configured {
            return Ok(None);
        }
        let Ok(programs) = pinned_programs(root) else {
            return Ok(None);
        };
        if current.log_level != settings.log_level {
            let updated = Config {
                log_level: settings.log_level,
                ..current
            };
            config.set(0, updated, 0).map_err(config.error())?;
        }
        Ok(Some(Node {
            root: root.to_owned(),
            programs,
            classifiers: Default::default(),
        }))
    }

    /// Attaches both programs to the host veth `ifname` (creating its
    /// clsact qdisc; one already there is fine). A filter of ours already
    /// there is replaced atomically, so a retried ADD or an upgrade never
    /// leaves the interface without a program.
    ///
    /// # Errors
    ///
    /// [`DataplaneError::Attach`] naming the program when its pin cannot be
    /// opened or its filter cannot be added, or naming `clsact` when
    /// `ifname` does not exist or its clsact qdisc cannot be created.
    pub fn attach(&mut self, ifname: &str) -> Result<(), DataplaneError> {
        self.attach_pinned(ENDPOINT, ifname)
    }

    /// Attaches the pinned programs `which` (of [`ALL_PROGRAMS`]) to
    /// `ifname` by their ids, with its clsact qdisc, in one netlink batch.
    fn attach_pinned(&self, which: Range<usize>, ifname: &str) -> Result<(), DataplaneError> {
        let wanted = &ALL_PROGRAMS[which.clone()];
        let fds = self.programs[which]
            .iter()
            .zip(wanted)
            .map(|(info, (name, _))| {
                info.fd().map_err(|e| DataplaneError::Attach {
                    program: name,
                    ifname: ifname.to_string(),
                    source: format!("the pinned program cannot be opened: {e}").into(),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let programs: Vec<_> = fds
            .iter()
            .zip(wanted)
            .map(|(fd, (name, kind))| (fd.as_fd(), *name, *kind))
            .collect();
        attach_filters(ifname, &programs, true)
    }

    /// Removes the endpoint's filters when its interface still exists
    /// (when it is gone, they went with it).
    ///
    /// # Errors
    ///
    /// [`DataplaneError::Attach`] naming the program when its filter is
    /// there and cannot be removed.
    pub fn detach(ifname: &str) -> Result<(), DataplaneError> {
        for program in PROGRAMS {
            detach_program(program, ifname)?;
        }
        Ok(())
    }

    /// Takes `from_net` off the data interface `ifname`, when both exist.
    ///
    /// # Errors
    ///
    /// [`DataplaneError::Attach`] naming `from_net` when its filter is
    /// there and cannot be removed.
    pub fn detach_data_iface(ifname: &str) -> Result<(), DataplaneError> {
        detach_program(DATA_IFACE_PROGRAM, ifname)
    }

    /// Verifies that both programs of this node are attached to `ifname`:
    /// this node's, not an older build's left on it.
    ///
    /// # Errors
    ///
    /// [`DataplaneError::NotAttached`] naming the first program missing
    /// (all are, when the interface or its qdisc is gone or cannot be read).
    pub fn verify_attached(&self, ifname: &str) -> Result<(), DataplaneError> {
        for (prog, (name, kind)) in self.programs[ENDPOINT].iter().zip(PROGRAMS) {
            if !attached(ifname, kind).contains(&prog.id()) {
                return Err(DataplaneError::NotAttached {
                    program: name,
                    ifname: ifname.to_string(),
                });
            }
        }
        Ok(())
    }

    /// The program named `name` (for tests and benchmarks: `TestRun`).
    pub fn program(&self, name: &str) -> Option<&SchedClassifier> {
        let i = ALL_PROGRAMS.iter().position(|(n, _)| *n == name)?;
        self.classifiers[i]
            .get_or_init(|| SchedClassifier::from_pin(program_path(&self.root, name)).ok())
            .as_ref()
    }

    /// Puts `from_net` on the data interface `ifname` (the NodePort
    /// addresses on it are recorded above, by `nodeport`).
    ///
    /// # Errors
    ///
    /// [`DataplaneError::Attach`] naming the program when its pin cannot be
    /// opened or its filter cannot be added, or naming `clsact` when
    /// `ifname` does not exist or its clsact qdisc cannot be created.
    pub fn attach_data_iface(&mut self, ifname: &str) -> Result<(), DataplaneError> {
        self.attach_pinned(DATA_IFACE, ifname)
    }

    /// Puts `from_tunnel` on the node's tunnel device `ifname`.
    ///
    /// # Errors
    ///
    /// [`DataplaneError::Attach`] naming the program when its pin cannot be
    /// opened or its filter cannot be added, or naming `clsact` when
    /// `ifname` does not exist or its clsact qdisc cannot be created.
    pub fn attach_tunnel(&mut self, ifname: &str) -> Result<(), DataplaneError> {
        self.attach_pinned(TUNNEL, ifname)
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
            source: format!("detaching: {e}").into(),
        }),
    }
}

/// Our filters' place on every clsact: fixed, so that a later attach finds
/// and replaces them rather than stacking a second copy.
const FILTER_PRIORITY: u16 = 1;
const FILTER_HANDLE: u16 = 1;

/// Attaches each `(program, name, direction)` as our direct-action cls_bpf
/// filter on `ifname`, creating the clsact qdisc first when `with_qdisc`.
/// Every request goes out at once on one socket (the kernel handles them in
/// order); a filter already at our place is replaced atomically.
fn attach_filters(
    ifname: &str,
    programs: &[(BorrowedFd<'_>, &'static str, TcAttachType)],
    with_qdisc: bool,
) -> Result<(), DataplaneError> {
    let failed = |program: &'static str, reason: String| DataplaneError::Attach {
        program,
        ifname: ifname.to_string(),
        source: reason.into(),
    };
    let index = nix::net::if_::if_nametoindex(ifname)
        .map_err(|e| failed("clsact", format!("no such interface: {e}")))? as i32;
    let work = async |handle: &rtnetlink::Handle| {
        let qdisc = async {
            if !with_qdisc {
                return Ok(());
            }
            let qdisc = RouteNetlinkMessage::NewQueueDiscipline(clsact_message(index));
            match request(handle, qdisc, NLM_F_CREATE | NLM_F_EXCL).await {
                Err(e) if errno(&e) == Some(libc::EEXIST) => Ok(()),
                other => other.map_err(|e| failed("clsact", e.to_string())),
            }
        };
        let filters = futures::future::try_join_all(programs.iter().map(|(fd, name, kind)| {
            let msg = RouteNetlinkMessage::NewTrafficFilter(filter_message(
                index,
                *kind,
                fd.as_raw_fd(),
                name,
            ));
            async move {
                // NLM_F_CREATE without NLM_F_EXCL: create, or replace ours.
                request(handle, msg, NLM_F_CREATE)
                    .await
                    .map_err(|e| failed(name, e.to_string()))
            }
        }));
        futures::future::try_join(qdisc, filters).await.map(drop)
    };
    crate::netlink::with_netlink(work, |reason| failed("clsact", reason))
}

/// A clsact qdisc on link `index`.
fn clsact_message(index: i32) -> TcMessage {
    let mut msg = TcMessage::with_index(index);
    msg.header.parent = TcHandle::CLSACT;
    msg.header.handle = TcHandle {
        major: 0xffff,
        minor: 0,
    };
    msg.attributes.push(TcAttribute::Kind("clsact".into()));
    msg
}

/// Our direct-action filter running program `fd` on link `index`, at
/// [`FILTER_PRIORITY`]/[`FILTER_HANDLE`] of the `kind` side of its clsact.
fn filter_message(index: i32, kind: TcAttachType, fd: i32, name: &str) -> TcMessage {
    let mut msg = TcMessage::with_index(index);
    msg.header.parent = TcHandle {
        major: 0xffff,
        minor: match kind {
            TcAttachType::Ingress => TcHandle::MIN_INGRESS,
            _ => TcHandle::MIN_EGRESS,
        },
    };
    msg.header.handle = TcHandle {
        major: 0,
        minor: FILTER_HANDLE,
    };
    // Priority in the upper half, protocol ETH_P_ALL (network order) below.
    msg.header.info =
        (u32::from(FILTER_PRIORITY) << 16) | u32::from((libc::ETH_P_ALL as u16).to_be());
    msg.attributes.push(TcAttribute::Kind("bpf".into()));
    msg.attributes.push(TcAttribute::Options(vec![
        TcOption::Bpf(TcFilterBpfOption::ProgFd(fd as u32)),
        TcOption::Bpf(TcFilterBpfOption::ProgName(name.into())),
        TcOption::Bpf(TcFilterBpfOption::Flags(TcBpfFlags::DirectAction)),
    ]));
    msg
}

/// Sends one tc request (a new qdisc or a new filter) and waits for its ack.
async fn request(
    handle: &rtnetlink::Handle,
    msg: RouteNetlinkMessage,
    flags: u16,
) -> Result<(), rtnetlink::Error> {
    let mut req = NetlinkMessage::from(msg);
    req.header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
    let mut response = handle.clone().request(req)?;
    while let Some(reply) = futures::StreamExt::next(&mut response).await {
        if let rtnetlink::packet_core::NetlinkPayload::Error(e) = reply.payload
            && e.code.is_some()
        {
            return Err(rtnetlink::Error::NetlinkError(e));
        }
    }
    Ok(())
}

fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(msg) => Some(-msg.raw_code()),
        _ => None,
    }
}

/// IDs of the programs of the cls_bpf filters on `ifname`'s clsact in
/// direction `kind` (empty when the interface or the qdisc is gone).
pub fn attached(ifname: &str, kind: TcAttachType) -> Vec<u32> {
    filters(ifname, kind).unwrap_or_default()
}

fn filters(ifname: &str, kind: TcAttachType) -> Result<Vec<u32>, String> {
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
fn filter_messages(ifname: &str, kind: TcAttachType) -> Result<Vec<TcMessage>, String> {
    use futures::TryStreamExt;
    let Ok(index) = nix::net::if_::if_nametoindex(ifname) else {
        return Ok(Vec::new());
    };
    crate::netlink::with_netlink(
        async |handle| {
            let mut request = handle.traffic_filter(index as i32).get();
            request = match kind {
                TcAttachType::Ingress => request.ingress(),
                _ => request.egress(),
            };
            // No clsact (or no device any more): nothing attached.
            Ok(request.execute().try_collect().await.unwrap_or_default())
        },
        |reason| reason,
    )
}

/// Loads the object and pins programs and maps. Pinned maps of a matching
/// layout are reused (their contents survive); a rebuildable map of another
/// layout is replaced; a durable one is copied into its replacement when its
/// records are unchanged (only the capacity differs), else this fails
/// clearly rather than hand programs a map they would misread; running
/// flows are copied when their records are unchanged or an earlier layout
/// of them ([`earlier_layout`]), else replaced. Running endpoints' links
/// are then switched atomically to the new programs, after the copies.
fn install(root: &Path, settings: &Settings) -> Result<(), DataplaneError> {
    let object = aya_obj::Object::parse(DATAPLANE_OBJECT)
        .map_err(|e| DataplaneError::Object { source: e.into() })?;
    for dir in ["maps", "progs"] {
        std::fs::create_dir_all(root.join(dir)).map_err(|e| pin_error(&root.join(dir), e))?;
    }
    let mut loader = EbpfLoader::new();
    let mut carried = Vec::new();
    for (name, durability) in PINNED_MAPS {
        let def = object
            .maps
            .get(name)
            .ok_or_else(|| DataplaneError::Object {
                source: format!("map {name} is missing from the object").into(),
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
            let carried_over = pinned.same_records(&expected)
                || (durability == Durability::Flows && earlier_layout(name, &pinned, &expected));
            match (durability, carried_over) {
                (Durability::Rebuildable, _) | (Durability::Flows, false) => {
                    tracing::warn!(map = name, %pinned, %expected, "replacing a pinned map of another layout");
                    remove_pin(&pin)?;
                }
                (Durability::Durable | Durability::Flows, true) => {
                    tracing::warn!(map = name, %pinned, %expected, "carrying a pinned map's entries over into one of the new layout");
                    // Set aside, not removed: should the load fail, it goes
                    // back, and the endpoints' state with it.
                    let aside = set_aside_path(&pin);
                    std::fs::rename(&pin, &aside).map_err(|e| pin_error(&pin, e))?;
                    carried.push((name, aside));
                }
                (Durability::Durable, false) => {
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
            return Err(DataplaneError::Load {
                source: format!("{e:#}").into(),
            });
        }
    };
    for (name, aside) in carried {
        let old = aya::maps::MapData::from_pin(&aside).map_err(|e| DataplaneError::map(name, e))?;
        copy_entries(root, name, old)?;
        remove_pin(&aside)?;
    }
    // What the programs read beside the durable maps, before any runs.
    upgrade::fill_in(root)?;
    let Running {
        endpoints,
        data_ifaces,
        tunnel,
    } = Running::recorded(root);
    // from_pod's IPv6 half: in `calls` before from_pod runs anywhere (an
    // older from_pod running meanwhile does not call it).
    let from_pod6: &mut SchedClassifier = program_of(&mut ebpf, FROM_POD6)?;
    from_pod6.load().map_err(load_error(FROM_POD6))?;
    repin(root, FROM_POD6, |pin| from_pod6.pin(pin))?;
    let from_pod6 = from_pod6
        .fd()
        .map_err(load_error(FROM_POD6))?
        .try_clone()
        .map_err(|e| DataplaneError::Load {
            source: format!("{FROM_POD6}: {e}").into(),
        })?;
    // Only the loader writes `calls`, through the object it loaded: no
    // opener opens it, so its name is spelled here.
    const CALLS: &str = "calls";
    let calls = ebpf.map_mut(CALLS).ok_or_else(|| DataplaneError::Object {
        source: format!("map {CALLS} is missing").into(),
    })?;
    aya::maps::ProgramArray::try_from(calls)
        .and_then(|mut calls| calls.set(CALL_FROM_POD6, &from_pod6, 0))
        .map_err(|e| DataplaneError::map(CALLS, e))?;
    let all = PROGRAMS.iter().map(|p| (*p, &endpoints)).chain([
        (DATA_IFACE_PROGRAM, &data_ifaces),
        (TUNNEL_PROGRAM, &tunnel),
    ]);
    for ((name, kind), running) in all {
        let prog: &mut SchedClassifier = program_of(&mut ebpf, name)?;
        prog.load().map_err(load_error(name))?;
        relink(running, name, kind, prog)?;
        repin(root, name, |pin| prog.pin(pin))?;
    }
    for (name, _) in SOCKET_PROGRAMS {
        let prog: &mut CgroupSockAddr = program_of(&mut ebpf, name)?;
        prog.load().map_err(load_error(name))?;
        // A link to the node's cgroup moves onto the new program in place.
        if let Ok(running) = link::open_pinned(&link_path(root, name)) {
            let fd = prog
                .fd()
                .map_err(|e| DataplaneError::Load { source: e.into() })?;
            link::update(running.as_fd(), fd.as_fd())
                .map_err(|e| pin_error(&link_path(root, name), format!("moving the link: {e}")))?;
            tracing::info!(
                program = name,
                "moved the node's cgroup link onto the new program"
            );
        }
        repin(root, name, |pin| prog.pin(pin))?;
    }
    // Last: the marker that says these pins are complete and this build's.
    let mut config = maps::config(root)?;
    let config_value = Config {
        log_level: settings.log_level,
        object_id: DATAPLANE_OBJECT_ID,
        ..Config::default()
    }
    .with_flow_clock();
    config.set(0, config_value, 0).map_err(config.error())?;
    tracing::info!(root = %root.display(), object = format!("{DATAPLANE_OBJECT_ID:#x}"), "dataplane programs loaded and pinned");
    Ok(())
}

/// Program `name` of the loaded object, as the kind `P` it must be.
fn program_of<'a, P>(ebpf: &'a mut aya::Ebpf, name: &str) -> Result<&'a mut P, DataplaneError>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or_else(|| DataplaneError::Object {
            source: format!("program {name} is missing").into(),
        })?
        .try_into()
        .map_err(|e: aya::programs::ProgramError| DataplaneError::Load { source: e.into() })
}

fn load_error(name: &str) -> impl Fn(aya::programs::ProgramError) -> DataplaneError + '_ {
    move |e| DataplaneError::Load {
        source: format!("{name}: {e:#}").into(),
    }
}

/// Pins program `name` (with `pin`, its kind's) in place of the pin there.
fn repin(
    root: &Path,
    name: &str,
    pin: impl FnOnce(&Path) -> Result<(), aya::pin::PinError>,
) -> Result<(), DataplaneError> {
    let path = program_path(root, name);
    remove_pin(&path)?;
    pin(&path).map_err(|e| pin_error(&path, e))
}

/// The interfaces running each kind of program, as the maps record them.
struct Running {
    /// The endpoints' host veths.
    endpoints: Vec<String>,
    /// Those the NodePort addresses are on.
    data_ifaces: Vec<String>,
    /// The tunnel device the node settings name.
    tunnel: Vec<String>,
}

impl Running {
    /// What the maps of `root` record (a map that cannot be read records
    /// none: there is nothing of it to move).
    fn recorded(root: &Path) -> Running {
        let endpoints = maps::endpoints(root)
            .and_then(|m| maps::values(&m))
            .map(|l| l.iter().map(Endpoint::ifname).collect())
            .unwrap_or_default();
        let data_ifaces = crate::nodeport::data_ifaces(root)
            .map(|l| names_of(l.iter().map(|d| d.ifindex).collect()))
            .unwrap_or_default();
        let tunnel = maps::node_config(root)
            .ok()
            .and_then(|m| m.get(&0, 0).ok())
            .map(|c| names_of(vec![c.tunnel_ifindex]))
            .unwrap_or_default();
        Running {
            endpoints,
            data_ifaces,
            tunnel,
        }
    }
}

/// The names of the interfaces `ifindexes` that exist, each once (0 is
/// none).
fn names_of(ifindexes: Vec<u32>) -> Vec<String> {
    ifindexes
        .into_iter()
        .filter(|&i| i != 0)
        .collect::<BTreeSet<u32>>()
        .into_iter()
        .filter_map(|i| nix::net::if_::if_indextoname(i).ok())
        .map(|n| n.to_string_lossy().into_owned())
        .collect()
}

/// Moves every interface of `ifnames` that carries a filter of ours onto
/// the freshly loaded `prog` (a filter replace: atomic, no packet sees no
/// program).
fn relink(
    ifnames: &[String],
    program: &'static str,
    kind: TcAttachType,
    prog: &SchedClassifier,
) -> Result<(), DataplaneError> {
    for ifname in ifnames {
        if filters(ifname, kind).is_ok_and(|ids| !ids.is_empty()) {
            let fd = prog
                .fd()
                .map_err(|e| DataplaneError::Load { source: e.into() })?;
            attach_filters(ifname, &[(fd.as_fd(), program, kind)], false)?;
            tracing::info!(%ifname, program, "moved a running interface onto the new program");
        }
    }
    Ok(())
}

/// Sizes of earlier layouts of the conntrack entry, each a prefix of
/// today's: fields were only ever added at its end, and every entry the
/// programs wrote zeroed what it did not set, so an old entry read with
/// zeros after it says what it said (no receiver, no service remembered).
const EARLIER_CT_ENTRY_SIZES: [u32; 3] = [32, 40, 48];

/// Whether pinned map `name` holds records of an earlier layout of the
/// expected ones that [`copy_entries`] carries over.
fn earlier_layout(name: &str, pinned: &Layout, expected: &Layout) -> bool {
    matches!(name, "conntrack" | "conntrack6")
        && (pinned.map_type, pinned.key_size, pinned.flags)
            == (expected.map_type, expected.key_size, expected.flags)
        && EARLIER_CT_ENTRY_SIZES.contains(&pinned.value_size)
}

/// Copies the entries of map `name` being carried over (a new capacity,
/// or an earlier layout of running flows) into its replacement.
fn copy_entries(root: &Path, name: &str, old: aya::maps::MapData) -> Result<(), DataplaneError> {
    let value_size = old.info().map(|i| i.value_size()).unwrap_or_default() as usize;
    let old = aya::maps::Map::from_map_data(old).map_err(|e| DataplaneError::map(name, e))?;
    match name {
        "conntrack" => copy_flows(old, value_size, maps::conntrack(root)?),
        "conntrack6" => copy_flows(old, value_size, maps::conntrack6(root)?),
        "nat" => copy(old, maps::nat(root)?),
        "nat6" => copy(old, maps::nat6(root)?),
        "endpoints" => copy(old, maps::endpoints(root)?),
        "endpoints6" => copy(old, maps::endpoints6(root)?),
        "policies6" => copy(old, maps::policies6(root)?),
        "ip_sets" => copy_trie(old, maps::ip_sets(root)?),
        "ip_sets6" => copy_trie(old, maps::ip_sets6(root)?),
        "endpoints_by_ip" => copy(old, maps::endpoints_by_ip(root)?),
        "policies" => copy(old, maps::policies(root)?),
        "svc_frontends" => copy(old, maps::frontends(root)?),
        "svc_backends" => copy(old, maps::backends(root)?),
        "svc_frontends6" => copy(old, maps::frontends6(root)?),
        "svc_backends6" => copy(old, maps::backends6(root)?),
        "svc_meta" => copy(old, maps::service_names(root)?),
        "node_addrs" => copy(old, maps::node_addrs(root)?),
        "node_addrs6" => copy(old, maps::node_addrs6(root)?),
        "peer_addrs6" => copy(old, maps::peer_addrs6(root)?),
        _ => Err(DataplaneError::map(
            name,
            "no way to carry its entries over",
        )),
    }
}

/// Copies the entries of `from`, the set-aside map that `to` replaces;
/// errors about either name `to` (both maps have its name).
fn copy<K: aya::Pod, V: aya::Pod>(
    from: aya::maps::Map,
    to: maps::Named<aya::maps::HashMap<aya::maps::MapData, K, V>>,
) -> Result<(), DataplaneError> {
    copy_converted(from, to, |v: V| v)
}

/// [`copy`] for an LPM trie (the sets' members, whose map is resized with
/// `bpf_ip_set_entries`).
fn copy_trie<K: aya::Pod, V: aya::Pod>(
    from: aya::maps::Map,
    mut to: maps::Named<aya::maps::lpm_trie::LpmTrie<aya::maps::MapData, K, V>>,
) -> Result<(), DataplaneError> {
    let fail = to.error();
    let from = aya::maps::lpm_trie::LpmTrie::<_, K, V>::try_from(from).map_err(fail)?;
    for kv in from.iter() {
        let (k, v) = kv.map_err(fail)?;
        to.insert(&k, v, 0).map_err(fail)?;
    }
    Ok(())
}

/// Copies conntrack entries of `value_size` bytes: today's, or an earlier
/// layout's ([`EARLIER_CT_ENTRY_SIZES`]), zero-extended.
fn copy_flows<K: aya::Pod>(
    from: aya::maps::Map,
    value_size: usize,
    to: maps::Named<aya::maps::HashMap<aya::maps::MapData, K, CtEntry>>,
) -> Result<(), DataplaneError> {
    match value_size {
        32 => copy_converted(from, to, zero_extended::<32>),
        40 => copy_converted(from, to, zero_extended::<40>),
        48 => copy_converted(from, to, zero_extended::<48>),
        _ => copy(from, to),
    }
}

/// Conntrack entry `old`, of an earlier layout `N` bytes long.
fn zero_extended<const N: usize>(old: [u8; N]) -> CtEntry {
    const { assert!(N <= std::mem::size_of::<CtEntry>()) };
    let mut entry = CtEntry::default();
    // SAFETY: CtEntry is repr(C) plain data of at least N bytes (checked
    // above), and any bytes make a valid one.
    unsafe {
        std::ptr::copy_nonoverlapping(old.as_ptr(), (&raw mut entry).cast::<u8>(), N);
    }
    entry
}

fn copy_converted<K: aya::Pod, Old: aya::Pod, V: aya::Pod>(
    from: aya::maps::Map,
    mut to: maps::Named<aya::maps::HashMap<aya::maps::MapData, K, V>>,
    convert: impl Fn(Old) -> V,
) -> Result<(), DataplaneError> {
    let fail = to.error();
    let from = aya::maps::HashMap::<_, K, Old>::try_from(from).map_err(fail)?;
    for kv in from.iter() {
        let (k, v) = kv.map_err(fail)?;
        to.insert(k, convert(v), 0).map_err(fail)?;
    }
    Ok(())
}
