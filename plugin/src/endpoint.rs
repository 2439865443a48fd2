//! A pod's endpoint: the veth pair and what is configured on each side.
//!
//! Pod side: `CNI_IFNAME` with the pod's /32 (and /128), a link route to
//! the gateway 169.254.1.1 and a default route via it. Host side: `mrg…`
//! with MAC `ee:ee:ee:ee:ee:ee`, proxy ARP, and a /32 route to the pod.

use std::fs::File;
use std::net::IpAddr;

use ipnetwork::IpNetwork;
use margay_conf::{CniError, Code};

use crate::link::{self, Link};
use crate::netlink::{Netlink, in_netns};
use crate::route::{self, GATEWAY_V4, GATEWAY_V6, RouteSpec};
use crate::sysctl;

/// A wired endpoint.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub host: Link,
    pub pod: Link,
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
    Nothing,
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

/// Looks at both sides without changing anything.
pub fn survey(
    host: &Netlink,
    netns: &File,
    host_name: &str,
    ifname: &str,
) -> Result<Survey, CniError> {
    let host_link = host.run(link::find(&host.handle, host_name))?;
    let pod_link = in_netns(netns, |nl| nl.run(link::find(&nl.handle, ifname)))?;
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
    ))
}

/// Configures both sides of an existing pair for `addresses`; converges
/// what is already there.
pub fn configure(
    host: &Netlink,
    netns: &File,
    host_name: &str,
    ifname: &str,
    alias: &str,
    addresses: &[IpAddr],
) -> Result<Endpoint, CniError> {
    let pod = in_netns(netns, |nl| {
        let h = &nl.handle;
        let pod = nl.run(link::find(h, ifname))?.ok_or_else(|| {
            CniError::kernel(format!("{ifname} vanished from the pod"), "not found")
        })?;
        if !pod.up {
            nl.run(link::set_up(h, pod.index))?;
        }
        for ip in addresses {
            let a = host_addr(*ip);
            nl.run(route::ensure_address(h, pod.index, a.ip(), a.prefix()))?;
        }
        for r in pod_routes(pod.index, addresses) {
            nl.run(route::ensure_route(h, &r))?;
        }
        Ok(pod)
    })?;
    let host_link = host
        .run(link::find(&host.handle, host_name))?
        .ok_or_else(|| CniError::kernel(format!("{host_name} vanished"), "not found"))?;
    host.run(link::set_alias(&host.handle, host_link.index, alias))?;
    sysctl::apply(host_name, addresses.iter().any(IpAddr::is_ipv6))?;
    for r in host_routes(host_link.index, addresses) {
        host.run(route::ensure_route(&host.handle, &r))?;
    }
    Ok(Endpoint {
        host: host_link,
        pod,
        addresses: addresses.to_vec(),
    })
}

fn missing(what: String) -> CniError {
    CniError::new(Code::CheckFailed, what)
}

/// Verifies both sides against `addresses`; the error names the first
/// thing missing. Extra routes or addresses (a later plugin's) are fine.
pub fn check(
    host: &Netlink,
    netns: &File,
    host_name: &str,
    ifname: &str,
    addresses: &[IpAddr],
) -> Result<Endpoint, CniError> {
    let pod = in_netns(netns, |nl| {
        let h = &nl.handle;
        let pod = nl
            .run(link::find(h, ifname))?
            .ok_or_else(|| missing(format!("interface {ifname} is missing from the pod")))?;
        if !pod.up {
            return Err(missing(format!("interface {ifname} in the pod is down")));
        }
        let have = nl.run(route::addresses(h, pod.index))?;
        for ip in addresses {
            if !have.contains(&host_addr(*ip)) {
                return Err(missing(format!(
                    "address {} is missing from {ifname} in the pod",
                    host_addr(*ip)
                )));
            }
        }
        let routes = [
            nl.run(route::routes(h, false))?,
            nl.run(route::routes(h, true))?,
        ]
        .concat();
        for r in pod_routes(pod.index, addresses) {
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
        Ok(pod)
    })?;
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
pub fn remove(host: &Netlink, host_name: &str) -> Result<bool, CniError> {
    match host.run(link::find(&host.handle, host_name))? {
        Some(l) => host.run(link::delete(&host.handle, l.index)),
        None => Ok(false),
    }
}
