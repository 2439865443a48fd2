//! Links: finding, creating (the veth pair, its peer born in the pod's
//! namespace) and deleting them.

use std::fs::File;
use std::os::fd::AsRawFd;

use futures::TryStreamExt;
use margay_conf::CniError;
use rtnetlink::packet_route::link::{InfoData, InfoVeth, LinkAttribute, LinkFlags, LinkMessage};
use rtnetlink::{Handle, LinkMessageBuilder, LinkUnspec, LinkVeth};

use crate::netlink::errno;

/// MAC of every host-side veth, as Calico does: the pod only ever talks to
/// its gateway through it, so one well-known address keeps pods' neighbour
/// tables identical and lets a pod move without stale ARP entries.
pub const HOST_MAC: [u8; 6] = [0xee; 6];

/// What we need to know about a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// The ifindex, in the link's own namespace.
    pub index: u32,
    /// The interface name.
    pub name: String,
    /// The hardware address, when the link has a 6-byte one.
    pub mac: Option<[u8; 6]>,
    /// The MTU, when the kernel reported it.
    pub mtu: Option<u32>,
    /// Whether the link is administratively up (`IFF_UP`).
    pub up: bool,
    /// The `ifalias`: on Margay's host veths, whose attachment it is (see
    /// [`alias`](crate::names::alias)).
    pub alias: Option<String>,
    /// For a veth: the peer's index (in the peer's namespace).
    pub peer_index: Option<u32>,
}

impl From<LinkMessage> for Link {
    fn from(msg: LinkMessage) -> Link {
        let mut link = Link {
            index: msg.header.index,
            name: String::new(),
            mac: None,
            mtu: None,
            up: msg.header.flags.contains(LinkFlags::Up),
            alias: None,
            peer_index: None,
        };
        for attr in msg.attributes {
            match attr {
                LinkAttribute::IfName(n) => link.name = n,
                LinkAttribute::Address(a) => link.mac = a.try_into().ok(),
                LinkAttribute::Mtu(m) => link.mtu = Some(m),
                LinkAttribute::IfAlias(a) => link.alias = Some(a),
                LinkAttribute::Link(i) => link.peer_index = Some(i),
                _ => {}
            }
        }
        link
    }
}

/// The link called `name`, if there is one.
///
/// # Errors
///
/// [`Code::Kernel`](margay_conf::Code::Kernel) when the kernel refuses the
/// lookup for another reason than there being no such link.
pub async fn find(h: &Handle, name: &str) -> Result<Option<Link>, CniError> {
    let found = h
        .link()
        .get()
        .match_name(name.to_string())
        .execute()
        .try_next()
        .await;
    match found {
        Ok(msg) => Ok(msg.map(Link::from)),
        Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
        Err(e) => Err(CniError::kernel(format!("cannot look up link {name}"), e)),
    }
}

/// Every link in the namespace.
///
/// # Errors
///
/// [`Code::Kernel`](margay_conf::Code::Kernel) when the links cannot be
/// listed.
pub async fn list(h: &Handle) -> Result<Vec<Link>, CniError> {
    h.link()
        .get()
        .execute()
        .map_ok(Link::from)
        .try_collect()
        .await
        .map_err(|e| CniError::kernel("cannot list links", e))
}

/// Creates the veth pair in one request: `host` here, up, with [`HOST_MAC`];
/// `pod` directly inside `netns`, down. Creating the peer in place rather
/// than moving it spares a netns move (and its RCU grace period) per pod.
/// The peer cannot be brought up in the same request: the kernel opens it
/// before the pair is linked and refuses with ENOTCONN; [`set_up`] it from
/// inside the namespace.
///
/// # Errors
///
/// [`Code::Kernel`](margay_conf::Code::Kernel) when the kernel refuses the
/// pair, for instance because either name is taken in its namespace.
pub async fn create_veth(
    h: &Handle,
    host: &str,
    pod: &str,
    netns: &File,
    mtu: u32,
) -> Result<(), CniError> {
    let peer = LinkMessageBuilder::<LinkUnspec>::new()
        .name(pod.to_string())
        .mtu(mtu)
        .setns_by_fd(netns.as_raw_fd())
        .build();
    let msg = LinkVeth::new(host, pod)
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
        .mtu(mtu)
        .address(HOST_MAC.to_vec())
        .up()
        .build();
    h.link()
        .add(msg)
        .execute()
        .await
        .map_err(|e| CniError::kernel(format!("cannot create veth {host} with peer {pod}"), e))
}

/// Brings a link up; already up is fine.
///
/// # Errors
///
/// [`Code::Kernel`](margay_conf::Code::Kernel) when the kernel refuses,
/// for instance because link `index` does not exist.
pub async fn set_up(h: &Handle, index: u32) -> Result<(), CniError> {
    h.link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(|e| CniError::kernel(format!("cannot bring link {index} up"), e))
}

/// Sets the link's alias (it cannot be given at creation).
///
/// # Errors
///
/// [`Code::Kernel`](margay_conf::Code::Kernel) when the kernel refuses,
/// for instance because link `index` does not exist.
pub async fn set_alias(h: &Handle, index: u32, alias: &str) -> Result<(), CniError> {
    let msg = LinkUnspec::new_with_index(index)
        .alias(alias.to_string())
        .build();
    h.link()
        .set(msg)
        .execute()
        .await
        .map_err(|e| CniError::kernel(format!("cannot set the alias of link {index}"), e))
}

/// Deletes a link; true if it existed. Deleting either end of a veth
/// removes both, and with them their addresses and routes.
///
/// # Errors
///
/// [`Code::Kernel`](margay_conf::Code::Kernel) when the kernel refuses for
/// another reason than the link being gone already.
pub async fn delete(h: &Handle, index: u32) -> Result<bool, CniError> {
    match h.link().del(index).execute().await {
        Ok(()) => Ok(true),
        Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(false),
        Err(e) => Err(CniError::kernel(format!("cannot delete link {index}"), e)),
    }
}
