//! The endpoint registry in the pinned maps: what an ADD writes before it
//! attaches, and what a DEL removes after it detaches.

use std::path::Path;

use crate::abi::{Counters, CtKey, DIR_EGRESS, DIR_INGRESS, Endpoint, MAX_ENDPOINTS, PolicyKey};
use crate::error::DataplaneError;
use crate::maps;

/// Writes `ep` (keyed by its host veth ifindex) with a counters slot of its
/// own, and its IP index. The slot's counters start at zero: a recycled
/// slot or ifindex must not inherit a predecessor's counts.
pub fn register(root: &Path, ep: &Endpoint) -> Result<(), DataplaneError> {
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
/// it still points there), policies, and frees its counters slot.
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
    for direction in [DIR_EGRESS, DIR_INGRESS] {
        let _ = policies.remove(&PolicyKey {
            ifindex: ep.ifindex,
            direction,
        });
    }
    let _ = maps::endpoints(root)?.remove(&ep.ifindex);
    let mut slots = maps::counter_slots(root)?;
    if holds_slot(&slots, ep) {
        let _ = slots.remove(&ep.slot);
    }
    Ok(())
}

/// Deletes conntrack entries, of one endpoint or all; returns how many.
pub fn flush_conntrack(root: &Path, ifindex: Option<u32>) -> Result<usize, DataplaneError> {
    let mut ct = maps::conntrack(root)?;
    let doomed: Vec<CtKey> = ct
        .keys()
        .filter_map(Result::ok)
        .filter(|k| ifindex.is_none_or(|i| k.ifindex == i))
        .collect();
    for k in &doomed {
        let _ = ct.remove(k);
    }
    Ok(doomed.len())
}
