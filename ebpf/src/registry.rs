//! The endpoint registry in the pinned maps: what an ADD writes before it
//! attaches, and what a DEL removes after it detaches.

use std::net::Ipv6Addr;
use std::path::Path;

use crate::abi::{
    Counters, DIR_EGRESS, DIR_INGRESS, Endpoint, Endpoint6, MAX_ENDPOINTS, PolicyKey,
};
use crate::error::DataplaneError;
use crate::maps;

/// Writes `ep` (keyed by its host veth ifindex) with a counters slot of its
/// own, its IP index and its pod's IPv6 address (none: the pod sends no
/// IPv6 but neighbour discovery). The slot's counters start at zero: a
/// recycled slot or ifindex must not inherit a predecessor's counts.
///
/// ```no_run
/// # use margay_ebpf::{abi::Endpoint, registry};
/// let ep = Endpoint::new(42, "mrg0123456789a", "10.244.0.5".parse()?, [2, 0, 0, 0, 0, 5]);
/// registry::register("/sys/fs/bpf/margay".as_ref(), &ep, Some("fd00:244::5".parse()?))?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn register(root: &Path, ep: &Endpoint, ipv6: Option<Ipv6Addr>) -> Result<(), DataplaneError> {
    // The IPv6 address first: the endpoint's traffic is dropped until it
    // is in the registry, so no packet sees it half written.
    let mut endpoints6 = maps::endpoints6(root)?;
    match ipv6 {
        Some(ip) => endpoints6
            .insert(ep.ifindex, Endpoint6::new(ip), 0)
            .map_err(|e| DataplaneError::map("endpoints6", e))?,
        None => {
            let _ = endpoints6.remove(&ep.ifindex);
        }
    }
    let mut endpoints = maps::endpoints(root)?;
    let mut by_ip = maps::endpoints_by_ip(root)?;
    let mut slots = maps::counter_slots(root)?;
    let mut ep = *ep;
    // A retried ADD keeps the slot it holds.
    let held = endpoints
        .get(&ep.ifindex, 0)
        .ok()
        .filter(|old| holds_slot(&slots, old))
        .map(|old| old.slot);
    ep.slot = match held {
        Some(slot) => slot,
        None => claim_slot(&mut slots, ep.ifindex)?,
    };
    zero_counters(root, ep.slot)?;
    endpoints
        .insert(ep.ifindex, ep, 0)
        .map_err(|e| DataplaneError::map("endpoints", e))?;
    by_ip
        .insert(ep.ip, ep.ifindex, 0)
        .map_err(|e| DataplaneError::map("endpoints_by_ip", e))
}

/// Gives every registered endpoint that holds none a counters slot (those
/// an older build registered); the loader runs it under the node lock.
pub fn assign_slots(root: &Path) -> Result<(), DataplaneError> {
    let mut endpoints = maps::endpoints(root)?;
    let mut slots = maps::counter_slots(root)?;
    for mut ep in list(root)? {
        if holds_slot(&slots, &ep) {
            continue;
        }
        ep.slot = claim_slot(&mut slots, ep.ifindex)?;
        zero_counters(root, ep.slot)?;
        endpoints
            .insert(ep.ifindex, ep, 0)
            .map_err(|e| DataplaneError::map("endpoints", e))?;
    }
    Ok(())
}

/// Whether `ep` holds the counters slot it names (the slots map agrees).
fn holds_slot(slots: &maps::CounterSlots, ep: &Endpoint) -> bool {
    ep.slot != 0 && slots.get(&ep.slot, 0).ok() == Some(ep.ifindex)
}

/// BPF_NOEXIST: an insert that fails when the key is there, so that two
/// concurrent registrations cannot take one slot.
const NOEXIST: u64 = 1;

/// Takes a free counters slot for `ifindex`, probing from a hash of it. A
/// slot whose holder's interface is gone (its DEL never ran) is taken back.
fn claim_slot(slots: &mut maps::CounterSlots, ifindex: u32) -> Result<u32, DataplaneError> {
    for i in 0..MAX_ENDPOINTS {
        let slot = (ifindex.wrapping_add(i)) % MAX_ENDPOINTS + 1;
        if slots.insert(slot, ifindex, NOEXIST).is_ok() {
            return Ok(slot);
        }
        match slots.get(&slot, 0) {
            Ok(holder) if holder == ifindex => return Ok(slot),
            Ok(holder) if nix::net::if_::if_indextoname(holder).is_err() => {
                let _ = slots.remove(&slot);
                if slots.insert(slot, ifindex, NOEXIST).is_ok() {
                    return Ok(slot);
                }
            }
            _ => {}
        }
    }
    Err(DataplaneError::map(
        "counter_slots",
        "every counters slot is taken (more endpoints than the node holds)",
    ))
}

fn zero_counters(root: &Path, slot: u32) -> Result<(), DataplaneError> {
    let fail = |e: String| DataplaneError::map("counters", e);
    let cpus = aya::util::nr_cpus().map_err(|(_, e)| fail(e.to_string()))?;
    let zero = aya::maps::PerCpuValues::try_from(vec![Counters::default(); cpus])
        .map_err(|e| fail(e.to_string()))?;
    maps::counters(root)?
        .set(slot, zero, 0)
        .map_err(|e| fail(e.to_string()))
}

/// Records the IPv6 addresses of running endpoints registered by a build
/// that had none to record, so that an upgrade does not cut their pods'
/// IPv6 off: the plugin routes each pod address to its host veth (a host
/// route, /128), which is where they are found. An endpoint whose veth
/// carries not exactly one such route is left without (its IPv6 is
/// dropped, as for any pod without an address). The loader runs it under
/// the node lock; returns how many it recorded.
pub fn adopt_ipv6_routes(root: &Path) -> Result<usize, DataplaneError> {
    use futures::TryStreamExt;
    use rtnetlink::RouteMessageBuilder;
    use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute};

    let mut endpoints6 = maps::endpoints6(root)?;
    let missing: Vec<u32> = list(root)?
        .iter()
        .map(|ep| ep.ifindex)
        .filter(|i| endpoints6.get(i, 0).is_err())
        .collect();
    if missing.is_empty() {
        return Ok(0);
    }
    let fail = |e: String| DataplaneError::map("endpoints6", format!("listing IPv6 routes: {e}"));
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
    for ifindex in missing {
        let mut theirs = found.iter().filter(|(oif, _)| *oif == ifindex);
        if let (Some((_, ip)), None) = (theirs.next(), theirs.next()) {
            endpoints6
                .insert(ifindex, Endpoint6::new(*ip), 0)
                .map_err(|e| DataplaneError::map("endpoints6", e))?;
            adopted += 1;
        }
    }
    Ok(adopted)
}

/// The IPv6 address of the pod behind host veth `ifindex`, if it has one.
pub fn ipv6_of(root: &Path, ifindex: u32) -> Result<Option<Ipv6Addr>, DataplaneError> {
    Ok(maps::endpoints6(root)?
        .get(&ifindex, 0)
        .ok()
        .map(|e| e.ipv6()))
}

/// All registered endpoints.
pub fn list(root: &Path) -> Result<Vec<Endpoint>, DataplaneError> {
    let endpoints = maps::endpoints(root)?;
    endpoints
        .iter()
        .map(|kv| {
            kv.map(|(_, v)| v)
                .map_err(|e| DataplaneError::map("endpoints", e))
        })
        .collect()
}

/// The endpoint whose host veth is `ifname`: by its ifindex while the
/// interface exists (one lookup), else by name over every entry.
pub fn find(root: &Path, ifname: &str) -> Result<Option<Endpoint>, DataplaneError> {
    if let Ok(ifindex) = nix::net::if_::if_nametoindex(ifname)
        && let Ok(ep) = maps::endpoints(root)?.get(&ifindex, 0)
        && ep.ifname() == ifname
    {
        return Ok(Some(ep));
    }
    Ok(list(root)?.into_iter().find(|e| e.ifname() == ifname))
}

/// Removes every entry about the endpoint on host veth `ifname` (see
/// [`remove`]). Works after the interface is gone (the registry remembers
/// the name). Returns the endpoint that was registered, if any.
pub fn unregister(root: &Path, ifname: &str) -> Result<Option<Endpoint>, DataplaneError> {
    if !maps::map_path(root, "endpoints").exists() {
        return Ok(None); // Nothing was ever loaded here.
    }
    let Some(ep) = find(root, ifname)? else {
        return Ok(None);
    };
    remove(root, &ep)?;
    Ok(Some(ep))
}

/// Removes the entries keyed by `ep`'s ifindex: registry, IP index (when
/// it still points there), IPv6 address, policies, and frees its counters
/// slot.
///
/// Its conntrack entries stay, although they name the slot, which a later
/// endpoint may be given. They are keyed by that ifindex, which the
/// kernel does not hand out again (it allocates them cyclically up to
/// 2^31), so no later endpoint's packet can match them, and they age out
/// of the LRU table (the programs are detached before this runs, or the
/// interface is gone). Deleting them here meant walking the whole table, one
/// syscall per entry, on every DEL; [`flush_conntrack`] does that on demand.
pub fn remove(root: &Path, ep: &Endpoint) -> Result<(), DataplaneError> {
    let mut by_ip = maps::endpoints_by_ip(root)?;
    // Only if the address still points here: it may already be a new pod's.
    if by_ip.get(&ep.ip, 0).ok() == Some(ep.ifindex) {
        let _ = by_ip.remove(&ep.ip);
    }
    let mut policies = maps::policies(root)?;
    let mut policies6 = maps::policies6(root)?;
    for direction in [DIR_EGRESS, DIR_INGRESS] {
        let key = PolicyKey {
            ifindex: ep.ifindex,
            direction,
        };
        let _ = policies.remove(&key);
        let _ = policies6.remove(&key);
    }
    let _ = maps::endpoints(root)?.remove(&ep.ifindex);
    let _ = maps::endpoints6(root)?.remove(&ep.ifindex);
    let mut slots = maps::counter_slots(root)?;
    if holds_slot(&slots, ep) {
        let _ = slots.remove(&ep.slot);
    }
    Ok(())
}

/// Deletes conntrack entries of both families, of one endpoint or all;
/// returns how many.
pub fn flush_conntrack(root: &Path, ifindex: Option<u32>) -> Result<usize, DataplaneError> {
    let wanted = |i: u32| ifindex.is_none_or(|want| want == i);
    Ok(flush(maps::conntrack(root)?, |k| wanted(k.ifindex))
        + flush(maps::conntrack6(root)?, |k| wanted(k.ifindex)))
}

/// Deletes the entries of `map` whose key is `doomed`; returns how many.
fn flush<K: aya::Pod, V: aya::Pod>(
    mut map: aya::maps::HashMap<aya::maps::MapData, K, V>,
    doomed: impl Fn(&K) -> bool,
) -> usize {
    let keys: Vec<K> = map
        .keys()
        .filter_map(Result::ok)
        .filter(|k| doomed(k))
        .collect();
    for k in &keys {
        let _ = map.remove(k);
    }
    keys.len()
}
