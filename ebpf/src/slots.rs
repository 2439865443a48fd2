//! Counters slots: the per-CPU counters array is indexed by slot, an
//! endpoint's entry names its slot, and `counter_slots` says which
//! endpoint (ifindex) holds which, so that no two share one.

use std::path::Path;

use crate::abi::{Counters, Endpoint, MAX_ENDPOINTS};
use crate::error::DataplaneError;
use crate::maps::{self, CounterSlots};

/// Whether `ep` holds the counters slot it names (the slots map agrees).
pub(crate) fn holds(slots: &CounterSlots, ep: &Endpoint) -> bool {
    ep.slot != 0 && slots.get(&ep.slot, 0).ok() == Some(ep.ifindex)
}

/// BPF_NOEXIST: an insert that fails when the key is there, so that two
/// concurrent registrations cannot take one slot.
const NOEXIST: u64 = 1;

/// Takes a free counters slot for `ifindex`, probing from a hash of it. A
/// slot whose holder's interface is gone (its DEL never ran) is taken back.
pub(crate) fn claim(slots: &mut CounterSlots, ifindex: u32) -> Result<u32, DataplaneError> {
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
    Err(slots.error()(
        "every counters slot is taken (more endpoints than the node holds)",
    ))
}

/// Sets every CPU's counters of `slot` to zero.
pub(crate) fn zero_counters(root: &Path, slot: u32) -> Result<(), DataplaneError> {
    let mut counters = maps::counters(root)?;
    let fail = counters.error();
    let cpus = aya::util::nr_cpus().map_err(|(_, e)| fail(e.to_string()))?;
    let zero = aya::maps::PerCpuValues::try_from(vec![Counters::default(); cpus])
        .map_err(|e| fail(e.to_string()))?;
    counters.set(slot, zero, 0).map_err(|e| fail(e.to_string()))
}
