//! Where NodePorts answer: the node's data interfaces (`from_net` on
//! their ingress) and their IPv4 addresses, recorded in `node_addrs`.
//! Services applied after an address is recorded open their NodePorts on
//! it; `service::refresh_node_ports` opens (or closes) those of services
//! applied before.

use std::net::Ipv4Addr;
use std::path::Path;

use crate::error::DataplaneError;
use crate::maps;
use crate::node::{DATA_IFACE_PROGRAM, Node};

/// A NodePort address of the node and the data interface it is on.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct DataIface {
    pub address: Ipv4Addr,
    pub ifindex: u32,
    /// None when the interface is gone.
    pub ifname: Option<String>,
}

/// Makes `ifname` one of the node's data interfaces: `from_net` on its
/// ingress, and its IPv4 addresses recorded as where NodePorts answer
/// (services applied from now on open NodePorts on them). Returns the
/// addresses.
pub fn attach(node: &mut Node, root: &Path, ifname: &str) -> Result<Vec<Ipv4Addr>, DataplaneError> {
    let ifindex = nix::net::if_::if_nametoindex(ifname).map_err(|e| DataplaneError::Attach {
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
    node.attach_data_iface(ifname)?;
    let mut map = maps::node_addrs(root)?;
    for a in &addrs {
        map.insert(a.octets(), ifindex, 0)
            .map_err(|e| DataplaneError::map("node_addrs", e))?;
    }
    Ok(addrs)
}

/// Takes `from_net` off `ifname` and forgets its NodePort addresses.
pub fn detach(root: &Path, ifname: &str) -> Result<(), DataplaneError> {
    Node::detach_data_iface(ifname)?;
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
