//! Addresses and routes over netlink, with "ensure" semantics: adding what
//! is already there succeeds, so a retried ADD converges instead of failing.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures::TryStreamExt;
use ipnetwork::IpNetwork;
use margay_conf::CniError;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags, AddressHeaderFlags};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteScope};
use rtnetlink::{Handle, RouteMessageBuilder};

use crate::netlink::errno;

/// The pod's IPv4 gateway: link-local, never on the wire. The host veth
/// answers ARP for it by proxy_arp, so every pod has the same gateway
/// whatever node it is on.
pub const GATEWAY_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
/// The pod's IPv6 gateway: the link-local address the host veth derives
/// from its `ee:ee:ee:ee:ee:ee` MAC.
pub const GATEWAY_V6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0xecee, 0xeeff, 0xfeee, 0xeeee);

/// One route as Margay creates or checks it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSpec {
    /// The destination prefix.
    pub dst: IpNetwork,
    /// The next hop, if the route goes through one.
    pub gw: Option<IpAddr>,
    /// The output interface's ifindex (0 when a listed route has none).
    pub oif: u32,
    /// Scope link: the destination is directly on `oif`.
    pub link_scope: bool,
}

impl RouteSpec {
    fn message(&self) -> Result<RouteMessage, CniError> {
        let bad = |e| CniError::kernel(format!("route to {} is malformed", self.dst), e);
        let mut b = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(self.dst.ip(), self.dst.prefix())
            .map_err(bad)?
            .output_interface(self.oif);
        if let Some(gw) = self.gw {
            b = b.gateway(gw).map_err(bad)?;
        }
        if self.link_scope {
            b = b.scope(RouteScope::Link);
        }
        Ok(b.build())
    }
}

/// Adds `ip/prefix` to link `index`; already present is fine.
///
/// # Errors
///
/// [`Code::Kernel`](margay_conf::Code::Kernel) when the kernel refuses the
/// address for another reason than its being there already.
pub async fn ensure_address(
    h: &Handle,
    index: u32,
    ip: IpAddr,
    prefix: u8,
) -> Result<(), CniError> {
    let mut request = h.address().add(index, ip, prefix);
    // The pod's address is IPAM's alone on a link whose other end is the
    // host: detecting duplicates would only keep the pod from using it for
    // a second.
    if ip.is_ipv6() {
        let msg = request.message_mut();
        msg.header.flags |= AddressHeaderFlags::Nodad;
        msg.attributes
            .push(AddressAttribute::Flags(AddressFlags::Nodad));
    }
    match request.execute().await {
        Ok(()) => Ok(()),
        Err(e) if errno(&e) == Some(libc::EEXIST) => Ok(()),
        Err(e) => Err(CniError::kernel(
            format!("cannot add address {ip}/{prefix}"),
            e,
        )),
    }
}

/// Addresses on link `index`.
///
/// # Errors
///
/// [`Code::Kernel`](margay_conf::Code::Kernel) when the addresses cannot be
/// listed.
pub async fn addresses(h: &Handle, index: u32) -> Result<Vec<IpNetwork>, CniError> {
    let msgs: Vec<_> = h
        .address()
        .get()
        .set_link_index_filter(index)
        .execute()
        .try_collect()
        .await
        .map_err(|e| CniError::kernel("cannot list addresses", e))?;
    Ok(msgs
        .into_iter()
        .filter_map(|m| {
            let prefix = m.header.prefix_len;
            m.attributes.into_iter().find_map(|a| match a {
                AddressAttribute::Address(ip) => IpNetwork::new(ip, prefix).ok(),
                _ => None,
            })
        })
        .collect())
}

/// Adds or replaces the route to `spec.dst`.
///
/// # Errors
///
/// [`Code::Kernel`](margay_conf::Code::Kernel) when `spec` cannot be turned
/// into a route message (a gateway of the other family) or the kernel
/// refuses the route, for instance because its gateway is not reachable
/// yet.
pub async fn ensure_route(h: &Handle, spec: &RouteSpec) -> Result<(), CniError> {
    h.route()
        .add(spec.message()?)
        .replace()
        .execute()
        .await
        .map_err(|e| CniError::kernel(format!("cannot add route to {}", spec.dst), e))
}

/// Routes of the main table of one family, as [`RouteSpec`]s.
///
/// # Errors
///
/// [`Code::Kernel`](margay_conf::Code::Kernel) when the routes cannot be
/// listed.
pub async fn routes(h: &Handle, v6: bool) -> Result<Vec<RouteSpec>, CniError> {
    let mut query = RouteMessageBuilder::<Ipv4Addr>::new().build();
    if v6 {
        query.header.address_family = AddressFamily::Inet6;
    }
    let msgs: Vec<RouteMessage> = h
        .route()
        .get(query)
        .execute()
        .try_collect()
        .await
        .map_err(|e| CniError::kernel("cannot list routes", e))?;
    Ok(msgs
        .into_iter()
        .filter_map(|m| {
            let prefix = m.header.destination_prefix_length;
            let link_scope = m.header.scope == RouteScope::Link;
            let (mut dst, mut gw, mut oif) = (None, None, 0);
            for a in m.attributes {
                match a {
                    RouteAttribute::Destination(d) => dst = route_ip(d),
                    RouteAttribute::Gateway(g) => gw = route_ip(g),
                    RouteAttribute::Oif(i) => oif = i,
                    _ => {}
                }
            }
            let dst = dst.unwrap_or(if v6 {
                IpAddr::V6(Ipv6Addr::UNSPECIFIED)
            } else {
                IpAddr::V4(Ipv4Addr::UNSPECIFIED)
            });
            Some(RouteSpec {
                dst: IpNetwork::new(dst, prefix).ok()?,
                gw,
                oif,
                link_scope,
            })
        })
        .collect())
}

fn route_ip(a: RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(v6)),
        _ => None,
    }
}
