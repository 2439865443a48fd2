//! A pod's endpoint: the veth pair and what is configured on each side.
//!
//! Pod side: `CNI_IFNAME` with the pod's /32 (and /128), a link route to
//! the gateway 169.254.1.1 and a default route via it. Host side: `mrg…`
//! with MAC `ee:ee:ee:ee:ee:ee`, proxy ARP, and a /32 route to the pod.

use std::fs::File;
use std::net::IpAddr;

use futures::future::{try_join, try_join_all};
use ipnetwork::IpNetwork;
use margay_conf::{CniError, Code};
use rtnetlink::Handle;

use crate::link::{self, Link};
use crate::netlink::Netlink;
use crate::route::{self, GATEWAY_V4, GATEWAY_V6, RouteSpec};
use crate::sysctl;

/// A wired endpoint: what the dataplane registers and the ADD result
/// reports.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// The host side, `mrg…`, in the host's namespace.
    pub host: Link,
    /// The pod side, `CNI_IFNAME`, as seen from the pod's namespace.
    pub pod: Link,
    /// The pod's addresses, as IPAM gave them.
    pub addresses: Vec<IpAddr>,
}

/// What ADD found of this attachment before changing anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Existing {
    /// No pair of ours: create one. Whatever IPAM holds for the attachment
    /// is not in use by a wired pod.
    Nothing,
    /// The pair from an earlier ADD of this attachment is intact: converge
    /// it rather than tear it down (a retried ADD must not break the pod),
    /// and leave its allocation alone if this ADD fails.
    OurPair,
}

/// Both sides as [`survey`] saw them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Survey {
    /// Neither our host veth nor `ifname` in the pod exists.
    Nothing,
    /// Our host veth and `ifname` in the pod exist and are each other's
    /// peers.
    OurPair,
    /// `ifname` exists in the pod but is not the peer of our host veth.
    ForeignPodIfname,
    /// Our host veth exists but its pod side is gone.
    StaleHost(Link),
}

impl Survey {
    /// Whether a working pair of ours was there (for rollback decisions).
    pub fn existing(&self) -> Existing {
        match self {
            Survey::OurPair => Existing::OurPair,
            _ => Existing::Nothing,
        }
    }
}

fn host_addr(ip: IpAddr) -> IpNetwork {
    IpNetwork::from(ip)
}

/// Routes the pod needs: gateway on-link, default via the gateway.
pub fn pod_routes(pod_index: u32, addresses: &[IpAddr]) -> Vec<RouteSpec> {
    let mut routes = Vec::new();
    if addresses.iter().any(IpAddr::is_ipv4) {
        routes.push(RouteSpec {
            dst: IpNetwork::from(IpAddr::V4(GATEWAY_V4)),
            gw: None,
            oif: pod_index,
            link_scope: true,
        });
        routes.push(RouteSpec {
            dst: "0.0.0.0/0".parse().expect("valid"),
            gw: Some(IpAddr::V4(GATEWAY_V4)),
            oif: pod_index,
            link_scope: false,
        });
    }
    if addresses.iter().any(IpAddr::is_ipv6) {
        routes.push(RouteSpec {
            dst: "::/0".parse().expect("valid"),
            gw: Some(IpAddr::V6(GATEWAY_V6)),
            oif: pod_index,
            link_scope: false,
        });
    }
    routes
}

/// Routes the host needs: one host route per pod address via the veth.
pub fn host_routes(host_index: u32, addresses: &[IpAddr]) -> Vec<RouteSpec> {
    addresses
        .iter()
        .map(|ip| RouteSpec {
            dst: host_addr(*ip),
            gw: None,
            oif: host_index,
            link_scope: true,
        })
        .collect()
}

/// Looks at both sides (`pod` is the connection in the pod's namespace)
/// without changing anything; ADD does it while IPAM allocates.
///
/// # Errors
///
/// [`Code::Kernel`] when either link cannot be looked up.
pub fn survey(
    host: &Netlink,
    pod: &Handle,
    host_name: &str,
    ifname: &str,
) -> Result<Survey, CniError> {
    let (host_link, pod_link) = host.run(try_join(
        link::find(&host.handle, host_name),
        link::find(pod, ifname),
    ))?;
    Ok(match (host_link, pod_link) {
        (Some(h), Some(p)) if p.peer_index == Some(h.index) && h.peer_index == Some(p.index) => {
            Survey::OurPair
        }
        (_, Some(_)) => Survey::ForeignPodIfname,
        (Some(stale), None) => Survey::StaleHost(stale),
        (None, None) => Survey::Nothing,
    })
}

/// Acts on what [`survey`] found before ADD creates the pair: a foreign
/// `ifname` in the pod is an error; a stale host veth is removed.
///
/// # Errors
///
/// [`Code::InvalidEnvironment`] when `ifname` exists in the pod but is not
/// our veth's peer; [`Code::Kernel`] when the stale host veth cannot be
/// deleted.
pub fn prepare(host: &Netlink, found: Survey, ifname: &str) -> Result<Existing, CniError> {
    match found {
        Survey::ForeignPodIfname => Err(CniError::new(
            Code::InvalidEnvironment,
            format!("CNI_IFNAME {ifname} already exists in the pod's network namespace"),
        )
        .with_details("the runtime must name an interface that does not exist yet")),
        Survey::StaleHost(stale) => {
            tracing::warn!(link = %stale.name, "removing a host veth whose pod side is gone");
            host.run(link::delete(&host.handle, stale.index))?;
            Ok(Existing::Nothing)
        }
        Survey::Nothing => Ok(Existing::Nothing),
        Survey::OurPair => Ok(Existing::OurPair),
    }
}

/// Creates the pair: host side `host_name` here, pod side `ifname` in the pod.
///
/// # Errors
///
/// [`Code::Kernel`] when the kernel refuses the pair, for instance because
/// `host_name` already exists or `netns` is gone.
pub fn create(
    host: &Netlink,
    netns: &File,
    host_name: &str,
    ifname: &str,
    mtu: u32,
) -> Result<(), CniError> {
    host.run(link::create_veth(
        &host.handle,
        host_name,
        ifname,
        netns,
        mtu,
    ))?;
    // Before the pod end comes up and gives the pair a carrier, which is
    // when the host end's link-local address (the pod's IPv6 gateway)
    // would start its second of duplicate address detection.
    sysctl::skip_dad(host_name);
    Ok(())
}

/// Both ends of an existing pair, readied with what does not depend on the
/// addresses, so that ADD does it while IPAM allocates: the pod end up, the
/// host end's alias and IPv4 sysctls. Converges what is already there.
///
/// # Errors
///
/// [`Code::Kernel`] when either end cannot be found (it vanished) or looked
/// up, the pod end cannot be brought up, the alias cannot be set or a
/// sysctl cannot be written.
pub fn ready(
    host: &Netlink,
    pod: &Handle,
    host_name: &str,
    ifname: &str,
    alias: &str,
) -> Result<(Link, Link), CniError> {
    let pod_end = async {
        let mut p = link::find(pod, ifname).await?.ok_or_else(|| {
            CniError::kernel(format!("{ifname} vanished from the pod"), "not found")
        })?;
        if !p.up {
            link::set_up(pod, p.index).await?;
            p.up = true;
        }
        Ok(p)
    };
    let host_end = async {
        let h = link::find(&host.handle, host_name)
            .await?
            .ok_or_else(|| CniError::kernel(format!("{host_name} vanished"), "not found"))?;
        if h.alias.as_deref() != Some(alias) {
            link::set_alias(&host.handle, h.index, alias).await?;
        }
        Ok::<_, CniError>(h)
    };
    let (host_link, pod_link) = host.run(try_join(host_end, pod_end))?;
    sysctl::apply_v4(host_name)?;
    Ok((host_link, pod_link))
}

/// Gives a [`ready`] pair its `addresses`: on the pod end the addresses,
/// the gateway's link route and the default routes; on the host end a route
/// per address (and the IPv6 sysctls when there is one). Every request goes
/// out at once, the pod's in order (the kernel handles a socket's requests
/// in order, so the gateway route exists before the default route needs
/// it): one round trip, not one per object. Converges what is already
/// there.
///
/// # Errors
///
/// [`Code::Kernel`] when an IPv6 sysctl cannot be written or the kernel
/// refuses an address or a route.
pub fn configure(
    host: &Netlink,
    pod: &Handle,
    (host_link, pod_link): (Link, Link),
    addresses: &[IpAddr],
) -> Result<Endpoint, CniError> {
    if addresses.iter().any(IpAddr::is_ipv6) {
        sysctl::apply_v6(&host_link.name)?;
    }
    let pod_side = try_join_all(
        addresses
            .iter()
            .map(|ip| {
                let a = host_addr(*ip);
                Box::pin(route::ensure_address(
                    pod,
                    pod_link.index,
                    a.ip(),
                    a.prefix(),
                )) as std::pin::Pin<Box<dyn std::future::Future<Output = _>>>
            })
            .chain(
                pod_routes(pod_link.index, addresses)
                    .into_iter()
                    .map(|r| Box::pin(async move { route::ensure_route(pod, &r).await }) as _),
            ),
    );
    let host_side = try_join_all(
        host_routes(host_link.index, addresses)
            .into_iter()
            .map(|r| async move { route::ensure_route(&host.handle, &r).await }),
    );
    host.run(try_join(pod_side, host_side))?;
    Ok(Endpoint {
        host: host_link,
        pod: pod_link,
        addresses: addresses.to_vec(),
    })
}

fn missing(what: String) -> CniError {
    CniError::new(Code::CheckFailed, what)
}

/// Verifies both sides against `addresses`; the error names the first
/// thing missing. Extra routes or addresses (a later plugin's) are fine.
///
/// # Errors
///
/// [`Code::CheckFailed`] naming the first thing missing or wrong: an
/// interface, its link state, its pairing, an address, a route or a
/// sysctl; [`Code::Kernel`] when links, addresses or routes cannot be
/// listed.
pub fn check(
    host: &Netlink,
    pod: &Handle,
    host_name: &str,
    ifname: &str,
    addresses: &[IpAddr],
) -> Result<Endpoint, CniError> {
    let pod_link = host
        .run(link::find(pod, ifname))?
        .ok_or_else(|| missing(format!("interface {ifname} is missing from the pod")))?;
    if !pod_link.up {
        return Err(missing(format!("interface {ifname} in the pod is down")));
    }
    let have = host.run(route::addresses(pod, pod_link.index))?;
    for ip in addresses {
        if !have.contains(&host_addr(*ip)) {
            return Err(missing(format!(
                "address {} is missing from {ifname} in the pod",
                host_addr(*ip)
            )));
        }
    }
    let routes = [
        host.run(route::routes(pod, false))?,
        host.run(route::routes(pod, true))?,
    ]
    .concat();
    for r in pod_routes(pod_link.index, addresses) {
        if !routes
            .iter()
            .any(|have| have.dst == r.dst && have.gw == r.gw && have.oif == r.oif)
        {
            return Err(missing(format!(
                "pod route to {} via {ifname} is missing",
                r.dst
            )));
        }
    }
    let pod = pod_link;
    let host_link = host
        .run(link::find(&host.handle, host_name))?
        .ok_or_else(|| missing(format!("host veth {host_name} is missing")))?;
    if !host_link.up {
        return Err(missing(format!("host veth {host_name} is down")));
    }
    if pod.peer_index != Some(host_link.index) {
        return Err(missing(format!(
            "{ifname} in the pod is not paired with host veth {host_name}"
        )));
    }
    let routes = [
        host.run(route::routes(&host.handle, false))?,
        host.run(route::routes(&host.handle, true))?,
    ]
    .concat();
    for r in host_routes(host_link.index, addresses) {
        if !routes
            .iter()
            .any(|have| have.dst == r.dst && have.oif == r.oif)
        {
            return Err(missing(format!(
                "host route to {} via {host_name} is missing",
                r.dst
            )));
        }
    }
    if let Some(wrong) = sysctl::verify(host_name, addresses.iter().any(IpAddr::is_ipv6)) {
        return Err(missing(wrong));
    }
    Ok(Endpoint {
        host: host_link,
        pod,
        addresses: addresses.to_vec(),
    })
}

/// Removes the pair by its host side (which takes the pod side, addresses
/// and routes with it); true if it existed.
///
/// # Errors
///
/// [`Code::Kernel`] when the host veth cannot be looked up or deleted.
pub fn remove(host: &Netlink, host_name: &str) -> Result<bool, CniError> {
    match host.run(link::find(&host.handle, host_name))? {
        Some(l) => host.run(link::delete(&host.handle, l.index)),
        None => Ok(false),
    }
}
