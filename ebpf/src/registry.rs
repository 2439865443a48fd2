//! The endpoint registry in the pinned maps: what an ADD writes before it
//! attaches, and what a DEL removes after it detaches.

use std::net::Ipv6Addr;
use std::path::Path;

use crate::abi::{DIR_EGRESS, DIR_INGRESS, Endpoint, Endpoint6, PolicyKey};
use crate::error::DataplaneError;
use crate::paths::map_path;
use crate::{maps, slots};

/// Writes `ep` (keyed by its host veth ifindex) with a counters slot of its
/// own, its IP index and its pod's IPv6 address (none: the pod sends no
/// IPv6 but neighbour discovery). A new slot's counters start at zero: a
/// recycled slot must not inherit a predecessor's counts; a retried ADD
/// keeps the slot its veth holds, and its counts.
///
/// It writes all of it or none: when a write fails, the entries it wrote
/// are put back as they were (none, or a retried ADD's) and a slot it
/// claimed is freed: a failed ADD leaves no half-registered endpoint,
/// whether or not its caller undoes anything.
///
/// ```no_run
/// # use margay_ebpf::{abi::Endpoint, registry};
/// let ep = Endpoint::new(42, "mrg0123456789a", "10.244.0.5".parse()?, [2, 0, 0, 0, 0, 5]);
/// registry::register("/sys/fs/bpf/margay".as_ref(), &ep, Some("fd00:244::5".parse()?))?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Errors
///
/// [`DataplaneError::Map`] when a map cannot be opened or written
/// (`endpoints6`, `endpoints`, `endpoints_by_ip`, `counters`), or naming
/// `counter_slots` when every counters slot is taken.
pub fn register(root: &Path, ep: &Endpoint, ipv6: Option<Ipv6Addr>) -> Result<(), DataplaneError> {
    let mut endpoints = maps::endpoints(root)?;
    let mut endpoints6 = maps::endpoints6(root)?;
    let mut by_ip = maps::endpoints_by_ip(root)?;
    let mut counter_slots = maps::counter_slots(root)?;
    let mut ep = *ep;
    let before = endpoints.get(&ep.ifindex, 0).ok();
    let before6 = endpoints6.get(&ep.ifindex, 0).ok();
    let before_by_ip = by_ip.get(&ep.ip, 0).ok();
    // A retried ADD keeps the slot it holds.
    let held = before
        .filter(|old| slots::holds(&counter_slots, old))
        .map(|old| old.slot);
    ep.slot = match held {
        Some(slot) => slot,
        None => slots::claim(&mut counter_slots, ep.ifindex)?,
    };
    // The IPv6 entry last: the programs take a pod's IPv6 packets by it
    // alone (it carries the slot), and the endpoint is whole by then.
    let zeroed = match held {
        Some(_) => Ok(()),
        None => slots::zero_counters(root, ep.slot),
    };
    let written = zeroed
        .and_then(|()| {
            endpoints
                .insert(ep.ifindex, ep, 0)
                .map_err(endpoints.error())
        })
        .and_then(|()| by_ip.insert(ep.ip, ep.ifindex, 0).map_err(by_ip.error()))
        .and_then(|()| match ipv6 {
            Some(ip) => endpoints6
                .insert(ep.ifindex, Endpoint6::of(&ep, ip), 0)
                .map_err(endpoints6.error()),
            None => maps::removed(endpoints6.remove(&ep.ifindex)).map_err(endpoints6.error()),
        });
    if written.is_err() {
        put_back(&mut endpoints6, ep.ifindex, before6);
        put_back(&mut by_ip, ep.ip, before_by_ip);
        put_back(&mut endpoints, ep.ifindex, before);
        if held.is_none() {
            // Claimed above for this ifindex (NOEXIST): no one else's.
            let _ = counter_slots.remove(&ep.slot);
        }
    }
    written
}

/// Puts entry `key` of `map` back as it was (`None`: there was none),
/// undoing a registration that failed. Undoing is best effort: the
/// failure that made it needed is what the caller reports, so one of its
/// own is logged.
fn put_back<K: aya::Pod + std::fmt::Debug, V: aya::Pod>(
    map: &mut maps::Named<aya::maps::HashMap<aya::maps::MapData, K, V>>,
    key: K,
    before: Option<V>,
) {
    let undone = match before {
        Some(value) => map.insert(key, value, 0),
        None => maps::removed(map.remove(&key)),
    };
    if let Err(e) = undone {
        tracing::warn!(
            map = map.name(),
            ?key,
            "cannot undo a failed registration: {e}"
        );
    }
}

/// The IPv6 address of the pod behind host veth `ifindex`, if it has one
/// (none also when the endpoint is not registered).
///
/// # Errors
///
/// [`DataplaneError::Map`] naming `endpoints6` when it cannot be opened.
pub fn ipv6_of(root: &Path, ifindex: u32) -> Result<Option<Ipv6Addr>, DataplaneError> {
    Ok(maps::endpoints6(root)?
        .get(&ifindex, 0)
        .ok()
        .map(|e| e.ipv6()))
}

/// The IPv6 addresses of all registered endpoints that have one.
///
/// # Errors
///
/// [`DataplaneError::Map`] naming `endpoints6` when it cannot be opened or
/// read.
pub fn ipv6_addresses(root: &Path) -> Result<Vec<Ipv6Addr>, DataplaneError> {
    Ok(maps::values(&maps::endpoints6(root)?)?
        .iter()
        .map(|e| e.ipv6())
        .collect())
}

/// All registered endpoints, in the map's order.
///
/// # Errors
///
/// [`DataplaneError::Map`] naming `endpoints` when it cannot be opened or
/// read.
pub fn list(root: &Path) -> Result<Vec<Endpoint>, DataplaneError> {
    maps::values(&maps::endpoints(root)?)
}

/// The endpoint whose host veth is `ifname`: by its ifindex while the
/// interface exists (one lookup), else by name over every entry.
///
/// # Errors
///
/// [`DataplaneError::Map`] naming `endpoints` when it cannot be opened or
/// read.
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
/// the name). Returns the endpoint that was registered, if any; `None`
/// also when nothing was ever loaded under `root`.
///
/// # Errors
///
/// [`DataplaneError::Map`] when one of the maps cannot be opened or
/// `endpoints` cannot be read; entries already gone are not an error.
pub fn unregister(root: &Path, ifname: &str) -> Result<Option<Endpoint>, DataplaneError> {
    if !map_path(root, "endpoints").exists() {
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
///
/// # Errors
///
/// [`DataplaneError::Map`] when one of the maps cannot be opened; entries
/// already gone are not an error.
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
    // The IPv6 entry first, as register writes it last.
    let _ = maps::endpoints6(root)?.remove(&ep.ifindex);
    let _ = maps::endpoints(root)?.remove(&ep.ifindex);
    let mut counter_slots = maps::counter_slots(root)?;
    if slots::holds(&counter_slots, ep) {
        let _ = counter_slots.remove(&ep.slot);
    }
    Ok(())
}

/// Deletes conntrack entries of both families, of one endpoint (by host
/// veth ifindex) or all; returns how many. Running flows of the endpoint
/// are judged again as new on their next packet.
///
/// # Errors
///
/// [`DataplaneError::Map`] naming `conntrack` or `conntrack6` when it
/// cannot be opened; entries that cannot be read or deleted are skipped.
pub fn flush_conntrack(root: &Path, ifindex: Option<u32>) -> Result<usize, DataplaneError> {
    let wanted = |i: u32| ifindex.is_none_or(|want| want == i);
    Ok(flush(&mut maps::conntrack(root)?, |k| wanted(k.ifindex))
        + flush(&mut maps::conntrack6(root)?, |k| wanted(k.ifindex)))
}

/// Deletes the entries of `map` whose key is `doomed`; returns how many.
fn flush<K: aya::Pod, V: aya::Pod>(
    map: &mut maps::Named<aya::maps::HashMap<aya::maps::MapData, K, V>>,
    doomed: impl Fn(&K) -> bool,
) -> usize {
    let keys: Vec<K> = map
        .keys()
        .filter_map(Result::ok)
        .filter(|k| doomed(k))
        .collect();
    // An entry may go (evicted, or its flow's own removal) between the
    // listing and its removal: only what this removed is counted.
    keys.iter().filter(|k| map.remove(k).is_ok()).count()
}
