//! What the loader fills in, under the node lock, before freshly loaded
//! programs run: what they read beside the durable maps that older builds
//! did not write (running endpoints' counters slots, IPv6 addresses with
//! their endpoints' MAC and slot, and IPv6 rule lists), and the frontend
//! filter, rebuilt from the frontends.

use std::net::Ipv6Addr;
use std::path::Path;

use crate::abi::{Endpoint, Endpoint6};
use crate::error::DataplaneError;
use crate::{maps, slots};

/// Fills in all of it.
pub(crate) fn fill_in(root: &Path) -> Result<(), DataplaneError> {
    assign_slots(root)?;
    complete_endpoints6(root)?;
    let adopted = adopt_ipv6_routes(root)?;
    if adopted > 0 {
        tracing::info!(
            endpoints = adopted,
            "recorded running endpoints' IPv6 addresses"
        );
    }
    complete_ipv6_policies(root)?;
    maps::rebuild_svc_filter(root)
}

/// Gives every policy an IPv6 rule list: the programs judge IPv6 by that
/// list alone, and a policy without one (an older build's) denies all
/// IPv6, as it did when the programs looked at both.
fn complete_ipv6_policies(root: &Path) -> Result<(), DataplaneError> {
    let policies = maps::policies(root)?;
    let mut policies6 = maps::policies6(root)?;
    let keys = policies
        .keys()
        .collect::<Result<Vec<_>, _>>()
        .map_err(policies.error())?;
    for key in keys {
        if policies6.get(&key, 0).is_err() {
            policies6
                .insert(key, crate::abi::Policy6::default(), 0)
                .map_err(policies6.error())?;
        }
    }
    Ok(())
}

/// Gives every registered endpoint that holds none a counters slot (those
/// an older build registered).
fn assign_slots(root: &Path) -> Result<(), DataplaneError> {
    let mut endpoints = maps::endpoints(root)?;
    let mut counter_slots = maps::counter_slots(root)?;
    for mut ep in maps::values(&endpoints)? {
        if slots::holds(&counter_slots, &ep) {
            continue;
        }
        ep.slot = slots::claim(&mut counter_slots, ep.ifindex)?;
        slots::zero_counters(root, ep.slot)?;
        endpoints
            .insert(ep.ifindex, ep, 0)
            .map_err(endpoints.error())?;
    }
    Ok(())
}

/// Gives every IPv6 entry its endpoint's MAC and counters slot (those an
/// older build wrote carry neither, and a slot may have just been
/// assigned): the programs take a pod's IPv6 packets by this entry alone.
fn complete_endpoints6(root: &Path) -> Result<(), DataplaneError> {
    let mut endpoints6 = maps::endpoints6(root)?;
    for ep in maps::values(&maps::endpoints(root)?)? {
        if let Ok(ep6) = endpoints6.get(&ep.ifindex, 0)
            && !ep6.matches(&ep)
        {
            endpoints6
                .insert(ep.ifindex, Endpoint6::of(&ep, ep6.ipv6()), 0)
                .map_err(endpoints6.error())?;
        }
    }
    Ok(())
}

/// Records the IPv6 addresses of running endpoints registered by a build
/// that had none to record, so that an upgrade does not cut their pods'
/// IPv6 off: the plugin routes each pod address to its host veth (a host
/// route, /128), which is where they are found. An endpoint whose veth
/// carries not exactly one such route is left without (its IPv6 is
/// dropped, as for any pod without an address). Returns how many it
/// recorded.
fn adopt_ipv6_routes(root: &Path) -> Result<usize, DataplaneError> {
    use futures::TryStreamExt;
    use rtnetlink::RouteMessageBuilder;
    use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute};

    let mut endpoints6 = maps::endpoints6(root)?;
    let missing: Vec<Endpoint> = maps::values(&maps::endpoints(root)?)?
        .into_iter()
        .filter(|ep| endpoints6.get(&ep.ifindex, 0).is_err())
        .collect();
    if missing.is_empty() {
        return Ok(0);
    }
    let error = endpoints6.error();
    let fail = |e: String| error(format!("listing IPv6 routes: {e}"));
    let routes = crate::netlink::with_netlink(
        async |h| {
            h.route()
                .get(RouteMessageBuilder::<Ipv6Addr>::new().build())
                .execute()
                .try_collect::<Vec<_>>()
                .await
                .map_err(|e| fail(e.to_string()))
        },
        fail,
    )?;
    let host_route = |m: &rtnetlink::packet_route::route::RouteMessage| {
        let dst = m.attributes.iter().find_map(|a| match a {
            RouteAttribute::Destination(RouteAddress::Inet6(d)) => Some(*d),
            _ => None,
        })?;
        let oif = m.attributes.iter().find_map(|a| match a {
            RouteAttribute::Oif(i) => Some(*i),
            _ => None,
        })?;
        (m.header.destination_prefix_length == 128 && !dst.is_unicast_link_local())
            .then_some((oif, dst))
    };
    let found: Vec<(u32, Ipv6Addr)> = routes.iter().filter_map(host_route).collect();
    let mut adopted = 0;
    for ep in missing {
        let mut theirs = found.iter().filter(|(oif, _)| *oif == ep.ifindex);
        if let (Some((_, ip)), None) = (theirs.next(), theirs.next()) {
            endpoints6
                .insert(ep.ifindex, Endpoint6::of(&ep, *ip), 0)
                .map_err(endpoints6.error())?;
            adopted += 1;
        }
    }
    Ok(adopted)
}
