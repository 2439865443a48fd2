//! The endpoint registry in the pinned maps: what an ADD writes before it
//! attaches, and what a DEL removes after it detaches.

use std::path::Path;

use crate::abi::{CtKey, DIR_EGRESS, DIR_INGRESS, Endpoint, PolicyKey};
use crate::error::DataplaneError;
use crate::maps;

/// Writes `ep` (keyed by its host veth ifindex) and its IP index.
pub fn register(root: &Path, ep: &Endpoint) -> Result<(), DataplaneError> {
    let mut endpoints = maps::endpoints(root)?;
    let mut by_ip = maps::endpoints_by_ip(root)?;
    // A recycled ifindex must not inherit a predecessor's counters.
    let mut counters = maps::counters(root)?;
    let _ = counters.remove(&ep.ifindex);
    endpoints
        .insert(ep.ifindex, *ep, 0)
        .map_err(|e| DataplaneError::map("endpoints", e))?;
    by_ip
        .insert(ep.ip, ep.ifindex, 0)
        .map_err(|e| DataplaneError::map("endpoints_by_ip", e))
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

/// The endpoint whose host veth is `ifname`.
pub fn find(root: &Path, ifname: &str) -> Result<Option<Endpoint>, DataplaneError> {
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
/// it still points there), policies and counters.
///
/// Its conntrack entries stay. They are keyed by that ifindex, which the
/// kernel does not hand out again (it allocates them cyclically up to
/// 2^31), so no later endpoint's packet can match them, and they age out
/// of the LRU table. Deleting them here meant walking the whole table, one
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
    let _ = maps::counters(root)?.remove(&ep.ifindex);
    let _ = maps::endpoints(root)?.remove(&ep.ifindex);
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
