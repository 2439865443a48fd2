//! Where NodePorts answer: the node's data interfaces (`from_net` on
//! their ingress) and their addresses, recorded in `node_addrs` (IPv4)
//! and `node_addrs6` (IPv6, link-local ones left out). Services applied
//! after an address is recorded open their NodePorts on it;
//! `service::refresh_node_ports` opens (or closes) those of services
//! applied before.

use std::net::IpAddr;
use std::path::Path;

use aya::maps::{HashMap, MapData};

use crate::error::DataplaneError;
use crate::maps::{self, Named};
use crate::node::{DATA_IFACE_PROGRAM, Node};

/// A NodePort address of the node and the data interface it is on.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct DataIface {
    /// The address NodePorts answer on.
    pub address: IpAddr,
    /// The data interface it was recorded with (`from_net` runs there).
    pub ifindex: u32,
    /// None when the interface is gone.
    pub ifname: Option<String>,
}

/// Makes `ifname` one of the node's data interfaces: `from_net` on its
/// ingress, and its addresses recorded as where NodePorts answer
/// (services applied from now on open NodePorts on them). Returns the
/// addresses.
///
/// # Errors
///
/// [`DataplaneError::Attach`] when the interface does not exist, its
/// addresses cannot be listed, it has no address a NodePort could answer
/// on (IPv4, or IPv6 beyond link-local), or `from_net` cannot be put on
/// it; [`DataplaneError::Map`] naming `node_addrs` or `node_addrs6` when
/// the addresses cannot be recorded.
pub fn attach(node: &mut Node, root: &Path, ifname: &str) -> Result<Vec<IpAddr>, DataplaneError> {
    let ifindex = nix::net::if_::if_nametoindex(ifname).map_err(|e| DataplaneError::Attach {
        program: DATA_IFACE_PROGRAM.0,
        ifname: ifname.to_string(),
        source: format!("no such interface: {e}").into(),
    })?;
    let addrs = node_port_addresses(ifname)?;
    if addrs.is_empty() {
        return Err(DataplaneError::Attach {
            program: DATA_IFACE_PROGRAM.0,
            ifname: ifname.to_string(),
            source: "it has no IPv4 or global IPv6 address for NodePorts to answer on".into(),
        });
    }
    node.attach_data_iface(ifname)?;
    let (mut v4, mut v6) = (maps::node_addrs(root)?, maps::node_addrs6(root)?);
    for a in &addrs {
        match a {
            IpAddr::V4(a) => v4.insert(a.octets(), ifindex, 0).map_err(v4.error())?,
            IpAddr::V6(a) => v6.insert(a.octets(), ifindex, 0).map_err(v6.error())?,
        }
    }
    Ok(addrs)
}

/// Takes `from_net` off `ifname` and forgets its NodePort addresses.
///
/// # Errors
///
/// [`DataplaneError::Attach`] when `from_net` cannot be taken off (an
/// interface or filter already gone is not an error);
/// [`DataplaneError::Map`] naming `node_addrs` or `node_addrs6` when it
/// cannot be opened or an address removed.
pub fn detach(root: &Path, ifname: &str) -> Result<(), DataplaneError> {
    Node::detach_data_iface(ifname)?;
    let ifindex = nix::net::if_::if_nametoindex(ifname).ok();
    let current = node_port_addresses(ifname).unwrap_or_default();
    // Recorded with this interface's index, or (the interface gone and
    // back with another) one of its addresses.
    let theirs = |(a, i): &(IpAddr, u32)| Some(*i) == ifindex || current.contains(a);
    forget(&mut maps::node_addrs(root)?, theirs)?;
    forget(&mut maps::node_addrs6(root)?, theirs)
}

/// The node's data interfaces and NodePort addresses, IPv4's first.
///
/// # Errors
///
/// [`DataplaneError::Map`] naming `node_addrs` or `node_addrs6` when it
/// cannot be opened or read.
pub fn data_ifaces(root: &Path) -> Result<Vec<DataIface>, DataplaneError> {
    let v4 = recorded(&maps::node_addrs(root)?)?;
    let v6 = recorded(&maps::node_addrs6(root)?)?;
    let mut all: Vec<DataIface> = v4
        .into_iter()
        .chain(v6)
        .map(|(address, ifindex)| DataIface {
            address,
            ifindex,
            ifname: nix::net::if_::if_indextoname(ifindex)
                .ok()
                .map(|n| n.to_string_lossy().into_owned()),
        })
        .collect();
    all.sort();
    Ok(all)
}

/// The addresses (with their interfaces' indexes) a map of them records.
fn recorded<const N: usize>(
    map: &Named<HashMap<MapData, [u8; N], u32>>,
) -> Result<Vec<(IpAddr, u32)>, DataplaneError>
where
    IpAddr: From<[u8; N]>,
{
    map.iter()
        .map(|kv| kv.map(|(a, i)| (IpAddr::from(a), i)))
        .collect::<Result<_, _>>()
        .map_err(map.error())
}

/// Removes the addresses `which` picks from a map of them.
fn forget<const N: usize>(
    map: &mut Named<HashMap<MapData, [u8; N], u32>>,
    which: impl Fn(&(IpAddr, u32)) -> bool,
) -> Result<(), DataplaneError>
where
    IpAddr: From<[u8; N]>,
{
    let gone: Vec<[u8; N]> = map
        .iter()
        .filter_map(Result::ok)
        .filter(|&(a, i)| which(&(IpAddr::from(a), i)))
        .map(|(a, _)| a)
        .collect();
    for a in gone {
        map.remove(&a).map_err(map.error())?;
    }
    Ok(())
}

/// The addresses of `ifname` a NodePort can answer on: its IPv4 ones and
/// its IPv6 ones but link-local (scoped to the link, so no client beyond
/// it could name them).
fn node_port_addresses(ifname: &str) -> Result<Vec<IpAddr>, DataplaneError> {
    let all = nix::ifaddrs::getifaddrs().map_err(|e| DataplaneError::Attach {
        program: DATA_IFACE_PROGRAM.0,
        ifname: ifname.to_string(),
        source: format!("listing addresses: {e}").into(),
    })?;
    Ok(all
        .filter(|i| i.interface_name == ifname)
        .filter_map(|i| {
            let a = i.address?;
            a.as_sockaddr_in()
                .map(|s| IpAddr::V4(s.ip()))
                .or_else(|| a.as_sockaddr_in6().map(|s| IpAddr::V6(s.ip())))
        })
        .filter(|a| !matches!(a, IpAddr::V6(v6) if v6.is_unicast_link_local()))
        .collect())
}

/// What [`attach_data_ifaces`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataIfacesAttached {
    /// Each interface, with the addresses NodePorts now answer on there.
    pub ifaces: Vec<(String, Vec<IpAddr>)>,
    /// The NodePort frontends of services applied before that were opened
    /// (`added`) or closed (`removed`) on them.
    pub node_ports: crate::service::ApplyReport,
}

/// Which step of [`attach_data_ifaces`] failed; what came before it stays.
/// Each shows as its cause, which names the object at fault.
#[derive(Debug, thiserror::Error)]
pub enum DataIfacesError {
    /// `from_net` could not be attached, or the addresses recorded.
    #[error("{source}")]
    Iface {
        /// The interface that failed.
        ifname: String,
        /// [`attach`]'s error.
        #[source]
        source: DataplaneError,
    },
    /// The tunnel to other nodes could not be set up.
    #[error("{source}")]
    Tunnel {
        /// [`setup_tunnel`](crate::cluster::setup_tunnel)'s error.
        #[source]
        source: DataplaneError,
    },
    /// The NodePorts of services already applied could not be opened.
    #[error("{source}")]
    NodePorts {
        /// [`refresh_node_ports`](crate::service::refresh_node_ports)'s error.
        #[source]
        source: crate::service::ServiceError,
    },
}

/// Makes `ifnames` the node's data interfaces, as every caller must for
/// NodePorts to work: [`attach`] on each, the tunnel to other nodes set up
/// in `mode` (a NodePort's backend may be on another node:
/// [`crate::cluster::setup_tunnel`]), and the NodePorts of services applied
/// before opened on the new addresses
/// ([`crate::service::refresh_node_ports`]).
///
/// ```no_run
/// # use margay_ebpf::{cluster::ExternalMode, node::{Node, Settings}, nodeport};
/// # let root = std::path::Path::new("/sys/fs/bpf/margay");
/// let mut node = Node::open(root, &Settings::default())?;
/// let done = nodeport::attach_data_ifaces(&mut node, root, &["eth0".into()], ExternalMode::Tunnel)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Errors
///
/// [`DataIfacesError::Iface`] when [`attach`] fails on an interface (the
/// ones before it stay attached); [`DataIfacesError::Tunnel`] when the
/// tunnel cannot be set up; [`DataIfacesError::NodePorts`] when the
/// NodePorts of applied services cannot be opened on the new addresses.
pub fn attach_data_ifaces(
    node: &mut Node,
    root: &Path,
    ifnames: &[String],
    mode: crate::cluster::ExternalMode,
) -> Result<DataIfacesAttached, DataIfacesError> {
    let mut ifaces = Vec::new();
    for ifname in ifnames {
        let addrs = attach(node, root, ifname).map_err(|source| DataIfacesError::Iface {
            ifname: ifname.clone(),
            source,
        })?;
        ifaces.push((ifname.clone(), addrs));
    }
    crate::cluster::setup_tunnel(node, root, mode)
        .map_err(|source| DataIfacesError::Tunnel { source })?;
    let node_ports = crate::service::refresh_node_ports(root)
        .map_err(|source| DataIfacesError::NodePorts { source })?;
    Ok(DataIfacesAttached { ifaces, node_ports })
}
