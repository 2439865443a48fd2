//! The node among others: the VXLAN tunnel device, the other nodes (peers,
//! `margay_model::peer`) with their pods' CIDRs, and the routes to those
//! pods.
//!
//! [`apply_peers`] makes the node know exactly these peers: the LPM map the
//! programs find a backend's node in, and a host route to each of their
//! CIDRs, via the peer for peers on the same L2, through the tunnel device
//! for `encap` peers (pods' own traffic to those is tunnelled by
//! `from_pod`; the routes are for the node's). Routes are marked with
//! Margay's route protocol, so those of a removed peer are found and
//! removed and nobody else's are touched.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use aya::maps::lpm_trie::Key;
use futures::TryStreamExt;
use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};
use margay_model::peer::{PeerSpec, PeerSpecError, check_peers};
use rtnetlink::packet_route::link::LinkAttribute;
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteIpTunnel, RouteLwEnCapType, RouteLwTunnelEncap,
    RouteProtocol,
};
use rtnetlink::{LinkMessageBuilder, LinkVxlan, RouteMessageBuilder};
use serde::Serialize;

use crate::abi::{EXT_MODE_DSR, EXT_MODE_TUNNEL, NodeConfig, PEER_F_ENCAP, Peer, VNI_POD};
use crate::error::{Cause, DataplaneError};
use crate::maps;
use crate::node::Node;

/// The tunnel device every node has (VXLAN, external mode: the programs
/// set each packet's far end).
pub const TUNNEL_DEVICE: &str = "margay-vx";
/// IANA's VXLAN port.
pub const VXLAN_PORT: u16 = 4789;
/// What VXLAN over IPv4 adds to a frame: outer Ethernet, IPv4, UDP and
/// VXLAN headers.
pub const VXLAN_OVERHEAD: u32 = 50;
/// How Margay's routes are marked (`ip route show proto 77`).
pub const ROUTE_PROTOCOL: u8 = 77;

pub use margay_conf::margay::ExternalServiceMode as ExternalMode;

/// Why the node's peers could not be set.
#[derive(Debug, thiserror::Error)]
pub enum PeersError {
    /// The peers are refused by `margay_model::peer::check_peers` (which
    /// names the peer); nothing was written.
    #[error(transparent)]
    Invalid(#[from] PeerSpecError),
    /// A map or a route could not be read or written; what was written
    /// before stays, and applying the peers again completes it.
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
}

fn net_error(action: impl std::fmt::Display, e: impl Into<Cause>) -> DataplaneError {
    DataplaneError::Tunnel {
        device: TUNNEL_DEVICE,
        action: action.to_string(),
        source: e.into(),
    }
}

/// Runs the tunnel's netlink work on a connection of the current namespace.
fn netlink<T>(
    work: impl AsyncFnOnce(&rtnetlink::Handle) -> Result<T, DataplaneError>,
) -> Result<T, DataplaneError> {
    crate::netlink::with_netlink(work, |reason| net_error("netlink", reason))
}

/// [`netlink`] for the routes to other nodes' pods, whose failures are
/// theirs, not the tunnel's (a node may have no tunnel).
fn route_netlink<T>(
    work: impl AsyncFnOnce(&rtnetlink::Handle) -> Result<T, DataplaneError>,
) -> Result<T, DataplaneError> {
    crate::netlink::with_netlink(work, |reason| DataplaneError::Route {
        what: "netlink".to_string(),
        source: reason.into(),
    })
}

/// The tunnel's MTU: the smallest of the data interfaces' (those
/// `node_addrs` names) less [`VXLAN_OVERHEAD`], so that what fits the
/// tunnel fits them once encapsulated; `None` when none is known.
fn tunnel_mtu(root: &Path) -> Result<Option<u32>, DataplaneError> {
    let ifindexes: BTreeSet<u32> = maps::values(&maps::node_addrs(root)?)?
        .into_iter()
        .filter(|&i| i != 0)
        .collect();
    let mut smallest: Option<u32> = None;
    for index in ifindexes {
        let mtu = netlink(async |h| {
            let mut links = h.link().get().match_index(index).execute();
            let mut mtu = None;
            while let Some(msg) = links
                .try_next()
                .await
                .map_err(|e| net_error(format!("reading interface {index}"), e))?
            {
                mtu = msg.attributes.iter().find_map(|a| match a {
                    LinkAttribute::Mtu(m) => Some(*m),
                    _ => None,
                });
            }
            Ok(mtu)
        })?;
        if let Some(mtu) = mtu {
            smallest = Some(smallest.map_or(mtu, |s| s.min(mtu)));
        }
    }
    Ok(smallest.map(|m| m.saturating_sub(VXLAN_OVERHEAD)))
}

/// Creates the tunnel device when missing, brings it up with forwarding
/// on and its MTU at the data interfaces' less the encapsulation (the
/// programs answer a packet too big for it with "fragmentation needed"
/// rather than have the kernel fragment its encapsulation), puts
/// `from_tunnel` on it and records it with `mode` in the node's settings.
/// Returns its ifindex. Routes to the pods of `encap` peers told of
/// before are added now.
///
/// # Errors
///
/// [`DataplaneError::Tunnel`] when the device cannot be created, found or
/// brought up, or its forwarding turned on; [`DataplaneError::Attach`] when
/// `from_tunnel` cannot be put on it; [`DataplaneError::Map`] naming
/// `node_addrs` (the data interfaces, for the MTU), `node_config` or a
/// peers' map when it cannot be read or written; [`DataplaneError::Route`]
/// when the routes to peers' pods cannot be listed or written.
pub fn setup_tunnel(
    node: &mut Node,
    root: &Path,
    mode: ExternalMode,
) -> Result<u32, DataplaneError> {
    if nix::net::if_::if_nametoindex(TUNNEL_DEVICE).is_err() {
        netlink(async |h| {
            let link = LinkMessageBuilder::<LinkVxlan>::new(TUNNEL_DEVICE)
                .port(VXLAN_PORT)
                .collect_metadata(true)
                .learning(false)
                .arp(false)
                .up()
                .build();
            match h.link().add(link).execute().await {
                Ok(()) => Ok(()),
                // Another caller made it meanwhile.
                Err(rtnetlink::Error::NetlinkError(m)) if m.raw_code().abs() == libc::EEXIST => {
                    Ok(())
                }
                Err(e) => Err(net_error("creating the VXLAN device", e)),
            }
        })?;
    }
    let ifindex =
        nix::net::if_::if_nametoindex(TUNNEL_DEVICE).map_err(|e| net_error("finding it", e))?;
    let mtu = tunnel_mtu(root)?;
    netlink(async |h| {
        // No ARP: the node's routes through it carry the far end
        // (sync_routes), and an ARP request would carry none, so the
        // device could not send it and the route would never resolve (an
        // older Margay's device gets the flag, and its MTU, here).
        let mut link = LinkMessageBuilder::<LinkVxlan>::new(TUNNEL_DEVICE)
            .index(ifindex)
            .arp(false)
            .up();
        if let Some(mtu) = mtu {
            link = link.mtu(mtu);
        }
        h.link()
            .set(link.build())
            .execute()
            .await
            .map_err(|e| net_error("bringing it up", e))
    })?;
    // Replies to external clients are forwarded from it (redirect_by_fib).
    let forwarding = format!("/proc/sys/net/ipv4/conf/{TUNNEL_DEVICE}/forwarding");
    std::fs::write(&forwarding, "1").map_err(|e| net_error(&forwarding, e))?;
    node.attach_tunnel(TUNNEL_DEVICE)?;
    maps::update_node_config(root, |c| {
        c.tunnel_ifindex = ifindex;
        c.external_mode = match mode {
            ExternalMode::Tunnel => EXT_MODE_TUNNEL,
            ExternalMode::Dsr => EXT_MODE_DSR,
        };
    })?;
    // Peers told of before the device existed get their routes now.
    sync_routes(root)?;
    Ok(ifindex)
}

/// Removes the tunnel device (its filter goes with it) and forgets it;
/// the node's routes through it go with it too.
///
/// # Errors
///
/// [`DataplaneError::Tunnel`] when the device exists and cannot be
/// deleted; [`DataplaneError::Map`] naming `node_config` when `root`
/// exists and it cannot be written.
pub fn teardown_tunnel(root: &Path) -> Result<(), DataplaneError> {
    if let Ok(index) = nix::net::if_::if_nametoindex(TUNNEL_DEVICE) {
        netlink(async |h| match h.link().del(index).execute().await {
            Err(rtnetlink::Error::NetlinkError(m)) if m.raw_code().abs() == libc::ENODEV => Ok(()),
            other => other.map_err(|e| net_error("deleting it", e)),
        })?;
    }
    if root.exists() {
        maps::update_node_config(root, |c| {
            c.tunnel_ifindex = 0;
            c.external_mode = EXT_MODE_TUNNEL;
        })?;
    }
    Ok(())
}

/// The node's external mode and tunnel device index (0: no tunnel).
///
/// # Errors
///
/// [`DataplaneError::Map`] naming `node_config` when it cannot be opened
/// or read.
pub fn tunnel_settings(root: &Path) -> Result<NodeConfig, DataplaneError> {
    let map = maps::node_config(root)?;
    map.get(&0, 0).map_err(map.error())
}

/// What [`apply_peers`] or [`apply_routes`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PeersReport {
    /// Peers' pod CIDRs the node now knows; for [`apply_routes`], those
    /// that got a route.
    pub cidrs: usize,
    /// Margay's routes to peers' pods now in the kernel.
    pub routes: usize,
    /// Pod CIDRs the node forgot (always 0 from [`apply_routes`]).
    pub removed: usize,
    /// `encap` peers that got no route: [`apply_routes`] has no tunnel.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unreachable: Vec<String>,
}

/// Makes the node know exactly `peers` (see the module's documentation).
///
/// ```no_run
/// # use margay_ebpf::cluster;
/// # use margay_model::peer::PeerSpec;
/// let peer = PeerSpec {
///     name: "node-b".into(),
///     address: "192.168.1.12".parse()?,
///     address6: None,
///     pod_cidrs: vec!["10.244.1.0/24".parse()?],
///     encap: false,
/// };
/// let report = cluster::apply_peers("/sys/fs/bpf/margay".as_ref(), &[peer])?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Errors
///
/// [`PeersError::Invalid`] when the peers are refused;
/// [`PeersError::Dataplane`] with [`DataplaneError::Map`] naming
/// `node_peers`, `node_peers6` or `peer_addrs6` when it cannot be read or
/// written, or [`DataplaneError::Route`] when the routes cannot be listed
/// or written.
pub fn apply_peers(root: &Path, peers: &[PeerSpec]) -> Result<PeersReport, PeersError> {
    check_peers(peers)?;
    Ok(sync_peers(root, peers)?)
}

/// [`apply_peers`] once `peers` are checked.
fn sync_peers(root: &Path, peers: &[PeerSpec]) -> Result<PeersReport, DataplaneError> {
    let peer = |p: &PeerSpec| Peer {
        node: p.address.octets(),
        flags: if p.encap { PEER_F_ENCAP } else { 0 },
    };
    let mut wanted4 = Vec::new();
    let mut wanted6 = Vec::new();
    for p in peers {
        for cidr in &p.pod_cidrs {
            let prefix = u32::from(cidr.prefix());
            match cidr {
                IpNetwork::V4(c) => wanted4.push((Key::new(prefix, c.network().octets()), peer(p))),
                IpNetwork::V6(c) => wanted6.push((Key::new(prefix, c.network().octets()), peer(p))),
            }
        }
    }
    let removed = sync_lpm(&mut maps::node_peers(root)?, &wanted4)?
        + sync_lpm(&mut maps::node_peers6(root)?, &wanted6)?;
    sync_peer_addrs6(root, peers)?;
    Ok(PeersReport {
        cidrs: wanted4.len() + wanted6.len(),
        routes: sync_routes(root)?,
        removed,
        unreachable: Vec::new(),
    })
}

/// Makes `peer_addrs6` hold exactly the peers' IPv6 addresses.
fn sync_peer_addrs6(root: &Path, peers: &[PeerSpec]) -> Result<(), DataplaneError> {
    let mut map = maps::peer_addrs6(root)?;
    let fail = map.error();
    let wanted: BTreeMap<[u8; 4], [u8; 16]> = peers
        .iter()
        .filter_map(|p| Some((p.address.octets(), p.address6?.octets())))
        .collect();
    let stale: Vec<[u8; 4]> = map
        .keys()
        .filter_map(Result::ok)
        .filter(|k| !wanted.contains_key(k))
        .collect();
    for k in stale {
        map.remove(&k).map_err(fail)?;
    }
    for (k, v) in wanted {
        map.insert(k, v, 0).map_err(fail)?;
    }
    Ok(())
}

/// Makes the LPM map `map` hold exactly `wanted`; returns how many
/// entries went.
fn sync_lpm<const N: usize>(
    map: &mut maps::Named<aya::maps::lpm_trie::LpmTrie<aya::maps::MapData, [u8; N], Peer>>,
    wanted: &[(Key<[u8; N]>, Peer)],
) -> Result<usize, DataplaneError> {
    let fail = map.error();
    let keep: BTreeSet<(u32, [u8; N])> = wanted
        .iter()
        .map(|(k, _)| (k.prefix_len(), k.data()))
        .collect();
    let stale: Vec<Key<[u8; N]>> = map
        .keys()
        .filter_map(Result::ok)
        .filter(|k| !keep.contains(&(k.prefix_len(), k.data())))
        .collect();
    for k in &stale {
        map.remove(k).map_err(fail)?;
    }
    for (k, v) in wanted {
        map.insert(k, *v, 0).map_err(fail)?;
    }
    Ok(stale.len())
}

/// The peers of a node without the eBPF dataplane (`dataplane: linux`):
/// Margay's routes made exactly a route via each peer on this node's L2 to
/// its pod CIDRs (IPv6's via its IPv6 address: a peer without one gets no
/// IPv6 routes). There is no tunnel device, so `encap` peers get none and
/// are named in the report.
///
/// # Errors
///
/// [`PeersError::Invalid`] when the peers are refused;
/// [`PeersError::Dataplane`] with [`DataplaneError::Route`] when the
/// routes cannot be listed or changed (or [`DataplaneError::Tunnel`],
/// action `netlink`, when no netlink connection can be made).
pub fn apply_routes(peers: &[PeerSpec]) -> Result<PeersReport, PeersError> {
    check_peers(peers)?;
    let routes: Vec<PeerRoute> = peers
        .iter()
        .filter(|p| !p.encap)
        .flat_map(|p| {
            p.pod_cidrs.iter().filter_map(|&cidr| {
                let via: IpAddr = match cidr {
                    IpNetwork::V4(_) => p.address.into(),
                    IpNetwork::V6(_) => p.address6?.into(),
                };
                Some(PeerRoute {
                    cidr,
                    way: Way::Direct(via),
                })
            })
        })
        .collect();
    sync_kernel_routes(&routes)?;
    Ok(PeersReport {
        cidrs: routes.len(),
        routes: routes.len(),
        removed: 0,
        unreachable: peers
            .iter()
            .filter(|p| p.encap)
            .map(|p| p.name.clone())
            .collect(),
    })
}

/// Makes Margay's routes (by protocol) exactly those the known peers
/// need, so that the node's own traffic (host-network pods, the API
/// server calling a webhook pod) reaches their pods as the pods' does:
/// a peer on our L2 by a route via the node; an `encap` peer through the
/// tunnel device, each route carrying the far end and identifier the
/// device needs (it is in external mode), once the device exists
/// (`setup_tunnel` syncs again). IPv6 pod CIDRs are routed so for every
/// packet (the programs hand a pod's IPv6 to the stack): via the peer's
/// IPv6 address on our L2, else through the tunnel to its IPv4 one (an
/// IPv6 route cannot have an IPv4 next hop: the kernel refuses RTA_VIA
/// for IPv6). Returns how many routes there are.
fn sync_routes(root: &Path) -> Result<usize, DataplaneError> {
    let tunnel = nix::net::if_::if_nametoindex(TUNNEL_DEVICE).ok();
    let routes: Vec<PeerRoute> = peers(root)?
        .into_iter()
        .filter_map(|p| {
            let way = match (p.routed_via(), tunnel) {
                (Some(via), _) => Way::Direct(via),
                (None, Some(dev)) => Way::Tunnel(dev, p.node),
                (None, None) => return None,
            };
            Some(PeerRoute { cidr: p.cidr, way })
        })
        .collect();
    sync_kernel_routes(&routes)?;
    Ok(routes.len())
}

/// A route to a peer's pod CIDR.
struct PeerRoute {
    cidr: IpNetwork,
    way: Way,
}

/// How a [`PeerRoute`] reaches its peer.
enum Way {
    /// Via the node's address of the CIDR's family, on our L2.
    Direct(IpAddr),
    /// Through the tunnel device (its ifindex) to the node's IPv4 address.
    Tunnel(u32, Ipv4Addr),
}

impl PeerRoute {
    fn message(&self) -> Result<rtnetlink::packet_route::route::RouteMessage, DataplaneError> {
        // (rtnetlink does not export its error's type.)
        let invalid = |e: &dyn std::fmt::Display| DataplaneError::Route {
            what: format!("route to {}", self.cidr),
            source: e.to_string().into(),
        };
        let builder = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(self.cidr.network(), self.cidr.prefix())
            .map_err(|e| invalid(&e))?
            .protocol(RouteProtocol::Other(ROUTE_PROTOCOL));
        Ok(match self.way {
            Way::Direct(via) => builder.gateway(via).map_err(|e| invalid(&e))?.build(),
            Way::Tunnel(dev, node) => {
                let mut msg = builder.output_interface(dev).build();
                msg.attributes
                    .push(RouteAttribute::EncapType(RouteLwEnCapType::Ip));
                msg.attributes.push(RouteAttribute::Encap(vec![
                    RouteLwTunnelEncap::Ip(RouteIpTunnel::Id(VNI_POD)),
                    RouteLwTunnelEncap::Ip(RouteIpTunnel::Destination(node)),
                    RouteLwTunnelEncap::Ip(RouteIpTunnel::Ttl(64)),
                ]));
                msg
            }
        })
    }
}

/// Makes Margay's routes (by protocol) exactly `routes`, of both families.
fn sync_kernel_routes(routes: &[PeerRoute]) -> Result<(), DataplaneError> {
    let route_error = |what: String, e: rtnetlink::Error| DataplaneError::Route {
        what,
        source: e.into(),
    };
    route_netlink(async |h| {
        let mut ours = Vec::new();
        for request in [
            RouteMessageBuilder::<Ipv4Addr>::new().build(),
            RouteMessageBuilder::<Ipv6Addr>::new().build(),
        ] {
            ours.extend(
                h.route()
                    .get(request)
                    .execute()
                    .try_collect::<Vec<_>>()
                    .await
                    .map_err(|e| route_error("listing routes".into(), e))?
                    .into_iter()
                    .filter(|m| m.header.protocol == RouteProtocol::Other(ROUTE_PROTOCOL)),
            );
        }
        for m in ours {
            let dst = m.attributes.iter().find_map(|a| match a {
                RouteAttribute::Destination(RouteAddress::Inet(d)) => Some(IpAddr::V4(*d)),
                RouteAttribute::Destination(RouteAddress::Inet6(d)) => Some(IpAddr::V6(*d)),
                _ => None,
            });
            let wanted = dst.is_some_and(|d| {
                routes.iter().any(|r| {
                    r.cidr.network() == d && r.cidr.prefix() == m.header.destination_prefix_length
                })
            });
            if !wanted {
                h.route()
                    .del(m)
                    .execute()
                    .await
                    .map_err(|e| route_error("removing a stale peer route".into(), e))?;
            }
        }
        for r in routes {
            h.route()
                .add(r.message()?)
                .replace()
                .execute()
                .await
                .map_err(|e| route_error(format!("route to {}", r.cidr), e))?;
        }
        Ok(())
    })
}

/// A peer's pod CIDR as the programs and routes know it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct PeerCidr {
    /// One of the peer's pod CIDRs.
    pub cidr: IpNetwork,
    /// The peer's address, the tunnel's far end.
    pub node: Ipv4Addr,
    /// Its IPv6 address on the nodes' network, if it has one.
    pub node6: Option<Ipv6Addr>,
    /// Its pods' traffic tunnels.
    pub encap: bool,
}

impl PeerCidr {
    /// The next hop of a route to it without the tunnel: the peer's
    /// address of the CIDR's family, when it is on our L2 and has one.
    pub fn routed_via(&self) -> Option<IpAddr> {
        match self.cidr {
            _ if self.encap => None,
            IpNetwork::V4(_) => Some(self.node.into()),
            IpNetwork::V6(_) => self.node6.map(IpAddr::V6),
        }
    }
}

/// The peers' CIDRs the programs and routes know, sorted.
///
/// # Errors
///
/// [`DataplaneError::Map`] naming `peer_addrs6`, `node_peers` or
/// `node_peers6` when it cannot be opened or read.
pub fn peers(root: &Path) -> Result<Vec<PeerCidr>, DataplaneError> {
    let addrs6 = maps::peer_addrs6(root)?;
    let addrs6: BTreeMap<[u8; 4], [u8; 16]> = addrs6
        .iter()
        .collect::<Result<_, _>>()
        .map_err(addrs6.error())?;
    let entry = |cidr: IpNetwork, v: Peer| PeerCidr {
        cidr,
        node: Ipv4Addr::from(v.node),
        node6: addrs6.get(&v.node).map(|&a| Ipv6Addr::from(a)),
        encap: v.flags & PEER_F_ENCAP != 0,
    };
    let mut all = Vec::new();
    let (v4, v6) = (maps::node_peers(root)?, maps::node_peers6(root)?);
    for kv in v4.iter() {
        let (k, v) = kv.map_err(v4.error())?;
        let cidr =
            Ipv4Network::new(Ipv4Addr::from(k.data()), k.prefix_len() as u8).map_err(v4.error())?;
        all.push(entry(cidr.into(), v));
    }
    for kv in v6.iter() {
        let (k, v) = kv.map_err(v6.error())?;
        let cidr =
            Ipv6Network::new(Ipv6Addr::from(k.data()), k.prefix_len() as u8).map_err(v6.error())?;
        all.push(entry(cidr.into(), v));
    }
    all.sort();
    Ok(all)
}

/// Removes what this root set up: its peers and their routes, and the
/// tunnel device when this root's node settings name it (uninstall).
///
/// # Errors
///
/// [`DataplaneError::Map`] when the peers' maps or `node_config` cannot be
/// read or written; [`DataplaneError::Route`] when the routes cannot be
/// removed; [`DataplaneError::Tunnel`] when the device cannot be deleted.
pub fn forget_all(root: &Path) -> Result<(), DataplaneError> {
    if !root.exists() {
        return Ok(());
    }
    if !peers(root)?.is_empty() {
        sync_peers(root, &[])?;
    }
    if tunnel_settings(root)?.tunnel_ifindex != 0 {
        teardown_tunnel(root)?;
    }
    Ok(())
}
