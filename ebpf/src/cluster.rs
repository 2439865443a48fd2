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

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::Path;

use aya::maps::lpm_trie::Key;
use futures::TryStreamExt;
use ipnetwork::Ipv4Network;
use margay_model::peer::{PeerSpec, PeerSpecError, check_peers};
use rtnetlink::packet_route::link::LinkAttribute;
use rtnetlink::packet_route::route::{
    RouteAttribute, RouteIpTunnel, RouteLwEnCapType, RouteLwTunnelEncap, RouteProtocol,
};
use rtnetlink::{LinkMessageBuilder, LinkVxlan, RouteMessageBuilder};
use serde::Serialize;

use crate::abi::{EXT_MODE_DSR, EXT_MODE_TUNNEL, NodeConfig, PEER_F_ENCAP, Peer};
use crate::error::DataplaneError;
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

#[derive(Debug, thiserror::Error)]
pub enum PeersError {
    #[error(transparent)]
    Invalid(#[from] PeerSpecError),
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
}

fn net_error(what: impl std::fmt::Display, e: impl std::fmt::Display) -> DataplaneError {
    DataplaneError::Attach {
        program: "from_tunnel",
        ifname: TUNNEL_DEVICE.to_string(),
        reason: format!("{what}: {e}"),
    }
}

/// Runs netlink work on a connection of the current namespace.
fn netlink<T>(
    work: impl AsyncFnOnce(&rtnetlink::Handle) -> Result<T, DataplaneError>,
) -> Result<T, DataplaneError> {
    crate::netlink::with_netlink(work, |reason| net_error("the tunnel", reason))
}

/// The tunnel's MTU: the smallest of the data interfaces' (those
/// `node_addrs` names) less [`VXLAN_OVERHEAD`], so that what fits the
/// tunnel fits them once encapsulated; `None` when none is known.
fn tunnel_mtu(root: &Path) -> Result<Option<u32>, DataplaneError> {
    let ifindexes: BTreeSet<u32> = maps::values(&maps::node_addrs(root)?, "node_addrs")?
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
/// Returns its ifindex.
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

/// Removes the tunnel device (its filter goes with it) and forgets it.
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
pub fn tunnel_settings(root: &Path) -> Result<NodeConfig, DataplaneError> {
    maps::node_config(root)?
        .get(&0, 0)
        .map_err(|e| DataplaneError::map("node_config", e))
}

/// What [`apply_peers`] or [`apply_routes`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PeersReport {
    pub cidrs: usize,
    pub routes: usize,
    pub removed: usize,
    /// `encap` peers that got no route: [`apply_routes`] has no tunnel.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unreachable: Vec<String>,
}

/// Makes the node know exactly `peers` (see the module's documentation).
pub fn apply_peers(root: &Path, peers: &[PeerSpec]) -> Result<PeersReport, PeersError> {
    check_peers(peers)?;
    Ok(sync_peers(root, peers)?)
}

/// [`apply_peers`] once `peers` are checked.
fn sync_peers(root: &Path, peers: &[PeerSpec]) -> Result<PeersReport, DataplaneError> {
    let mut map = maps::node_peers(root)?;
    let fail = |e: aya::maps::MapError| DataplaneError::map("node_peers", e);
    let wanted: Vec<(Key<[u8; 4]>, Peer)> = peers
        .iter()
        .flat_map(|p| {
            p.pod_cidrs.iter().map(move |c| {
                (
                    Key::new(u32::from(c.prefix()), c.network().octets()),
                    Peer {
                        node: p.address.octets(),
                        flags: if p.encap { PEER_F_ENCAP } else { 0 },
                    },
                )
            })
        })
        .collect();
    let keep: BTreeSet<(u32, [u8; 4])> = wanted
        .iter()
        .map(|(k, _)| (k.prefix_len(), k.data()))
        .collect();
    let stale: Vec<Key<[u8; 4]>> = map
        .keys()
        .filter_map(Result::ok)
        .filter(|k| !keep.contains(&(k.prefix_len(), k.data())))
        .collect();
    let mut report = PeersReport::default();
    for k in &stale {
        map.remove(k).map_err(fail)?;
        report.removed += 1;
    }
    for (k, v) in &wanted {
        map.insert(k, *v, 0).map_err(fail)?;
        report.cidrs += 1;
    }
    report.routes = sync_routes(root)?;
    Ok(report)
}

/// The peers of a node without the eBPF dataplane (`dataplane: linux`):
/// Margay's routes made exactly a route via each peer on this node's L2 to
/// its pod CIDRs. There is no tunnel device, so `encap` peers get none and
/// are named in the report.
///
/// # Errors
/// A peer is invalid, or the routes cannot be listed or changed.
pub fn apply_routes(peers: &[PeerSpec]) -> Result<PeersReport, PeersError> {
    check_peers(peers)?;
    let routes: Vec<PeerRoute> = peers
        .iter()
        .filter(|p| !p.encap)
        .flat_map(|p| p.pod_cidrs.iter().map(|c| PeerRoute::Via(*c, p.address)))
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

/// The network identifier of pod traffic in the tunnel (abi.h `VNI_POD`).
const VNI_POD: u64 = 1;

/// Makes Margay's routes (by protocol) exactly those the known peers
/// need, so that the node's own traffic (host-network pods, the API
/// server calling a webhook pod) reaches their pods as the pods' does:
/// a peer on our L2 by a route via the node; an `encap` peer through the
/// tunnel device, each route carrying the far end and identifier the
/// device needs (it is in external mode), once the device exists
/// (`setup_tunnel` syncs again). Returns how many routes there are.
fn sync_routes(root: &Path) -> Result<usize, DataplaneError> {
    let tunnel = nix::net::if_::if_nametoindex(TUNNEL_DEVICE).ok();
    let routes: Vec<PeerRoute> = peers(root)?
        .into_iter()
        .filter_map(|(cidr, node, encap)| match (encap, tunnel) {
            (false, _) => Some(PeerRoute::Via(cidr, node)),
            (true, Some(dev)) => Some(PeerRoute::Tunnel(cidr, node, dev)),
            (true, None) => None,
        })
        .collect();
    sync_kernel_routes(&routes)?;
    Ok(routes.len())
}

enum PeerRoute {
    /// The CIDR via the node, on our L2.
    Via(Ipv4Network, Ipv4Addr),
    /// The CIDR through the tunnel device (its ifindex) to the node.
    Tunnel(Ipv4Network, Ipv4Addr, u32),
}

impl PeerRoute {
    fn cidr(&self) -> Ipv4Network {
        match self {
            PeerRoute::Via(c, _) | PeerRoute::Tunnel(c, _, _) => *c,
        }
    }

    fn message(&self) -> rtnetlink::packet_route::route::RouteMessage {
        let cidr = self.cidr();
        let builder = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(cidr.network(), cidr.prefix())
            .protocol(RouteProtocol::Other(ROUTE_PROTOCOL));
        match self {
            PeerRoute::Via(_, node) => builder.gateway(*node).build(),
            PeerRoute::Tunnel(_, node, dev) => {
                let mut msg = builder.output_interface(*dev).build();
                msg.attributes
                    .push(RouteAttribute::EncapType(RouteLwEnCapType::Ip));
                msg.attributes.push(RouteAttribute::Encap(vec![
                    RouteLwTunnelEncap::Ip(RouteIpTunnel::Id(VNI_POD)),
                    RouteLwTunnelEncap::Ip(RouteIpTunnel::Destination(*node)),
                    RouteLwTunnelEncap::Ip(RouteIpTunnel::Ttl(64)),
                ]));
                msg
            }
        }
    }
}

/// Makes Margay's routes (by protocol) exactly `routes`.
fn sync_kernel_routes(routes: &[PeerRoute]) -> Result<(), DataplaneError> {
    let route_error =
        |what: String, e: rtnetlink::Error| DataplaneError::Check(format!("{what}: {e}"));
    netlink(async |h| {
        let ours: Vec<_> = h
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute()
            .try_collect::<Vec<_>>()
            .await
            .map_err(|e| route_error("listing routes".into(), e))?
            .into_iter()
            .filter(|m| m.header.protocol == RouteProtocol::Other(ROUTE_PROTOCOL))
            .collect();
        for m in ours {
            let dst = m.attributes.iter().find_map(|a| match a {
                RouteAttribute::Destination(
                    rtnetlink::packet_route::route::RouteAddress::Inet(d),
                ) => Some(*d),
                _ => None,
            });
            let wanted = dst.is_some_and(|d| {
                routes
                    .iter()
                    .map(PeerRoute::cidr)
                    .any(|c| c.network() == d && c.prefix() == m.header.destination_prefix_length)
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
                .add(r.message())
                .replace()
                .execute()
                .await
                .map_err(|e| route_error(format!("route to {}", r.cidr()), e))?;
        }
        Ok(())
    })
}

/// The peers' CIDRs the programs know: (CIDR, node, encap).
pub fn peers(root: &Path) -> Result<Vec<(Ipv4Network, Ipv4Addr, bool)>, DataplaneError> {
    let map = maps::node_peers(root)?;
    let mut all = Vec::new();
    for kv in map.iter() {
        let (k, v) = kv.map_err(|e| DataplaneError::map("node_peers", e))?;
        let cidr = Ipv4Network::new(Ipv4Addr::from(k.data()), k.prefix_len() as u8)
            .map_err(|e| DataplaneError::map("node_peers", e))?;
        all.push((cidr, Ipv4Addr::from(v.node), v.flags & PEER_F_ENCAP != 0));
    }
    all.sort();
    Ok(all)
}

/// Removes what this root set up: its peers and their routes, and the
/// tunnel device when this root's node settings name it (uninstall).
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
