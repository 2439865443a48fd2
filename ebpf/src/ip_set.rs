//! Sets of addresses (`margay_model::ip_set`) in the pinned LPM tries the
//! programs look rule peers up in (`ip_sets`, `ip_sets6`), each under a
//! number that rules name (`abi::RULE_F_SET`); what a number stands for is
//! kept in `ip_set_names`, so that a restarted writer finds its sets again
//! and keeps their numbers (rules in force name them).
//!
//! ```no_run
//! # use margay_ebpf::ip_set::IpSetTable;
//! # use margay_model::ip_set::IpSets;
//! let mut table = IpSetTable::open("/sys/fs/bpf/margay".as_ref())?;
//! table.apply(&IpSets::new())?;
//! # Ok::<(), margay_ebpf::ip_set::IpSetError>(())
//! ```

use std::collections::{BTreeSet, HashMap};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;

use aya::maps::lpm_trie::Key;
use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};
use margay_model::ip_set::{self as model, IpSets, SetError, SetMember, SetPort};
use margay_model::protocol::Protocol;
use serde::Serialize;

use crate::abi::{
    IP_SET_EXCEPT, IP_SET_MEMBER, IP_SET_PORT_PREFIX, IP_SET6_PORT_PREFIX, IpSetData, IpSetData6,
    NameRecord,
};
use crate::error::DataplaneError;
use crate::maps::{self, Layout};
use crate::paths::map_path;

/// Why the node's sets could not be read or changed. [`IpSetError::Invalid`]
/// and [`IpSetError::Full`] are found before anything is written.
#[derive(Debug, thiserror::Error)]
pub enum IpSetError {
    /// A set is refused by `margay_model::ip_set::validate` (its name, or
    /// a member's port); nothing was written.
    #[error(transparent)]
    Invalid(#[from] SetError),
    /// A trie cannot hold the sets (`bpf_ip_set_entries` is too small);
    /// nothing was written.
    #[error(
        "map {map} is too small: the sets need {needed} entries and it holds {capacity} \
         (nothing was changed; raise bpf_ip_set_entries)"
    )]
    Full {
        /// The trie, `ip_sets` or `ip_sets6`.
        map: &'static str,
        /// Entries it would hold: those held and those added, before any
        /// is taken out.
        needed: usize,
        /// Entries it holds at most.
        capacity: u32,
    },
    /// A map could not be opened, read or written, or `ip_set_names` has no
    /// number left; members written before stay.
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
}

/// What [`IpSetTable::apply`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SetsReport {
    /// Sets that got a number: new on this node.
    pub sets_added: usize,
    /// Members written into the tries, over all sets.
    pub members_added: usize,
    /// Members taken out of the tries, over all sets.
    pub members_removed: usize,
}

/// Names by number in a pinned map (`ip_set_names`, `policy_sources`),
/// with the numbers in use: a number is handed out once and kept while its
/// name is.
pub(crate) struct NameTable {
    map: maps::Names,
    ids: HashMap<String, u32>,
    last: u32,
    /// Numbers are below this.
    limit: u32,
}

impl NameTable {
    pub(crate) fn open(map: maps::Names, limit: u32) -> Result<NameTable, DataplaneError> {
        let mut ids = HashMap::new();
        for kv in map.iter() {
            let (id, record) = kv.map_err(map.error())?;
            ids.insert(record.text(), id);
        }
        let last = ids.values().max().copied().unwrap_or(0);
        Ok(NameTable {
            map,
            ids,
            last,
            limit,
        })
    }

    pub(crate) fn get(&self, name: &str) -> Option<u32> {
        self.ids.get(name).copied()
    }

    /// The number of `name`, handing one out (and recording it) when it
    /// has none.
    pub(crate) fn id_of(&mut self, name: &str) -> Result<u32, DataplaneError> {
        if let Some(id) = self.get(name) {
            return Ok(id);
        }
        let used: BTreeSet<u32> = self.ids.values().copied().collect();
        if used.len() + 1 >= self.limit as usize {
            let full = format!("full: {} names, at most {}", used.len(), self.limit - 1);
            return Err(self.map.error()(full));
        }
        let mut id = self.last;
        loop {
            id = (id + 1) % self.limit;
            if id != 0 && !used.contains(&id) {
                break;
            }
        }
        self.map
            .insert(id, NameRecord::new(name), 0)
            .map_err(self.map.error())?;
        self.ids.insert(name.to_string(), id);
        self.last = id;
        Ok(id)
    }

    pub(crate) fn forget(&mut self, name: &str) -> Result<(), DataplaneError> {
        if let Some(id) = self.ids.remove(name) {
            maps::removed(self.map.remove(&id)).map_err(self.map.error())?;
        }
        Ok(())
    }

    pub(crate) fn names(&self) -> impl Iterator<Item = (&str, u32)> {
        self.ids.iter().map(|(n, id)| (n.as_str(), *id))
    }
}

/// A member as one of the tries holds it.
#[derive(Clone, Copy)]
enum Entry {
    V4(Key<IpSetData>),
    V6(Key<IpSetData6>),
}

fn entry_of(id: u32, member: &SetMember) -> Entry {
    let (port, proto) = member
        .port
        .map_or(([0; 2], 0), |p| (p.port.to_be_bytes(), p.protocol.number()));
    match member.cidr {
        IpNetwork::V4(n) => {
            let prefix = if member.port.is_some() {
                IP_SET_PORT_PREFIX
            } else {
                32 + u32::from(n.prefix())
            };
            Entry::V4(Key::new(
                prefix,
                IpSetData {
                    set_id: id,
                    addr: n.network().octets(),
                    port,
                    proto,
                    pad: 0,
                },
            ))
        }
        IpNetwork::V6(n) => {
            let prefix = if member.port.is_some() {
                IP_SET6_PORT_PREFIX
            } else {
                32 + u32::from(n.prefix())
            };
            Entry::V6(Key::new(
                prefix,
                IpSetData6 {
                    set_id: id,
                    addr: n.network().octets(),
                    port,
                    proto,
                    pad: 0,
                },
            ))
        }
    }
}

/// The member an entry of the IPv4 trie holds, and its set's number.
fn member_of4(key: &Key<IpSetData>, value: u32) -> Option<(u32, SetMember)> {
    let data = key.data();
    let port = (key.prefix_len() == IP_SET_PORT_PREFIX).then(|| SetPort {
        protocol: Protocol::from_number(data.proto).unwrap_or(Protocol::TCP),
        port: u16::from_be_bytes(data.port),
    });
    let prefix = if port.is_some() {
        32
    } else {
        key.prefix_len().checked_sub(32)?
    };
    let cidr = Ipv4Network::new(Ipv4Addr::from(data.addr), u8::try_from(prefix).ok()?).ok()?;
    Some((
        data.set_id,
        SetMember {
            cidr: IpNetwork::V4(cidr),
            except: value == IP_SET_EXCEPT,
            port,
        },
    ))
}

fn member_of6(key: &Key<IpSetData6>, value: u32) -> Option<(u32, SetMember)> {
    let data = key.data();
    let port = (key.prefix_len() == IP_SET6_PORT_PREFIX).then(|| SetPort {
        protocol: Protocol::from_number(data.proto).unwrap_or(Protocol::TCP),
        port: u16::from_be_bytes(data.port),
    });
    let prefix = if port.is_some() {
        128
    } else {
        key.prefix_len().checked_sub(32)?
    };
    let cidr = Ipv6Network::new(Ipv6Addr::from(data.addr), u8::try_from(prefix).ok()?).ok()?;
    Some((
        data.set_id,
        SetMember {
            cidr: IpNetwork::V6(cidr),
            except: value == IP_SET_EXCEPT,
            port,
        },
    ))
}

/// The sets of a root: the tries and names, and what they hold (read
/// once, at open, then kept as they are written).
pub struct IpSetTable {
    root: std::path::PathBuf,
    v4: maps::IpSets,
    v6: maps::IpSets6,
    names: NameTable,
    held: HashMap<u32, BTreeSet<SetMember>>,
}

impl IpSetTable {
    /// Opens the sets of `root` and reads what they hold.
    ///
    /// # Errors
    ///
    /// [`DataplaneError::Map`] naming `ip_sets`, `ip_sets6` or
    /// `ip_set_names` when it cannot be opened or read.
    pub fn open(root: &Path) -> Result<IpSetTable, DataplaneError> {
        let v4 = maps::ip_sets(root)?;
        let v6 = maps::ip_sets6(root)?;
        let names = NameTable::open(maps::ip_set_names(root)?, u32::MAX)?;
        let mut held: HashMap<u32, BTreeSet<SetMember>> = HashMap::new();
        for kv in v4.iter() {
            let (key, value) = kv.map_err(v4.error())?;
            if let Some((id, member)) = member_of4(&key, value) {
                held.entry(id).or_default().insert(member);
            }
        }
        for kv in v6.iter() {
            let (key, value) = kv.map_err(v6.error())?;
            if let Some((id, member)) = member_of6(&key, value) {
                held.entry(id).or_default().insert(member);
            }
        }
        Ok(IpSetTable {
            root: root.to_path_buf(),
            v4,
            v6,
            names,
            held,
        })
    }

    /// The number rules name set `name` by, once applied; `None` for a set
    /// this node does not hold.
    pub fn id(&self, name: &str) -> Option<u32> {
        self.names.get(name)
    }

    /// Makes each set of `sets` hold exactly its members: new sets get a
    /// number, and every member added (of any set) is in before any is
    /// taken out, so an address in a set before and after never leaves
    /// it. Sets not in `sets` stay until [`IpSetTable::retire`] (rules may
    /// still name them). Checks capacity first and writes nothing when the
    /// tries are too small.
    ///
    /// # Errors
    ///
    /// [`IpSetError::Invalid`] when a set is refused;
    /// [`IpSetError::Full`] when a trie cannot take the members added;
    /// [`IpSetError::Dataplane`] with [`DataplaneError::Map`] naming
    /// `ip_sets` or `ip_sets6` when its capacity cannot be read or a member
    /// written or removed, or `ip_set_names` when a new set's number cannot
    /// be recorded or none is left.
    pub fn apply(&mut self, sets: &IpSets) -> Result<SetsReport, IpSetError> {
        model::validate(sets)?;
        let empty = BTreeSet::new();
        // Per set: what it gains and what it loses.
        let diff: Vec<(&str, Vec<SetMember>, Vec<SetMember>)> = sets
            .iter()
            .map(|(name, members)| {
                let wanted: BTreeSet<SetMember> = members.iter().copied().collect();
                let held = self
                    .names
                    .get(name)
                    .and_then(|id| self.held.get(&id))
                    .unwrap_or(&empty);
                (
                    name.as_str(),
                    wanted.difference(held).copied().collect(),
                    held.difference(&wanted).copied().collect(),
                )
            })
            .collect();
        self.check_room(diff.iter().flat_map(|(_, adds, _)| adds))?;
        let mut report = SetsReport::default();
        let mut numbered = Vec::with_capacity(diff.len());
        for (name, adds, removes) in diff {
            if self.names.get(name).is_none() {
                report.sets_added += 1;
            }
            numbered.push((self.names.id_of(name)?, adds, removes));
        }
        for (id, adds, _) in &numbered {
            for member in adds {
                self.write(*id, member)?;
                self.held.entry(*id).or_default().insert(*member);
                report.members_added += 1;
            }
        }
        for (id, _, removes) in &numbered {
            for member in removes {
                self.erase(*id, member)?;
                if let Some(held) = self.held.get_mut(id) {
                    held.remove(member);
                }
                report.members_removed += 1;
            }
        }
        Ok(report)
    }

    /// Removes every set whose name `keep` refuses, members and number;
    /// returns how many. Only for sets no rule names any more: a rule
    /// naming a removed set's number matches no peer.
    ///
    /// # Errors
    ///
    /// [`IpSetError::Dataplane`] with [`DataplaneError::Map`] naming
    /// `ip_sets`, `ip_sets6` or `ip_set_names` when a member or name cannot
    /// be removed; sets removed before stay removed.
    pub fn retire(&mut self, keep: &dyn Fn(&str) -> bool) -> Result<usize, IpSetError> {
        let gone: Vec<(String, u32)> = self
            .names
            .names()
            .filter(|(name, _)| !keep(name))
            .map(|(name, id)| (name.to_string(), id))
            .collect();
        for (name, id) in &gone {
            for member in self.held.remove(id).unwrap_or_default() {
                self.erase(*id, &member)?;
            }
            self.names.forget(name)?;
        }
        Ok(gone.len())
    }

    /// Every set, by name, as the tries hold it (as of this table's last
    /// read or write).
    pub fn sets(&self) -> IpSets {
        self.names
            .names()
            .map(|(name, id)| {
                let members = self.held.get(&id).into_iter().flatten().copied().collect();
                (name.to_string(), members)
            })
            .collect()
    }

    fn write(&mut self, id: u32, member: &SetMember) -> Result<(), DataplaneError> {
        let value = if member.except {
            IP_SET_EXCEPT
        } else {
            IP_SET_MEMBER
        };
        match entry_of(id, member) {
            Entry::V4(key) => self.v4.insert(&key, value, 0).map_err(self.v4.error()),
            Entry::V6(key) => self.v6.insert(&key, value, 0).map_err(self.v6.error()),
        }
    }

    fn erase(&mut self, id: u32, member: &SetMember) -> Result<(), DataplaneError> {
        match entry_of(id, member) {
            Entry::V4(key) => maps::removed(self.v4.remove(&key)).map_err(self.v4.error()),
            Entry::V6(key) => maps::removed(self.v6.remove(&key)).map_err(self.v6.error()),
        }
    }

    /// Fails when the tries cannot take `adds` before removals free room.
    fn check_room<'m>(&self, adds: impl Iterator<Item = &'m SetMember>) -> Result<(), IpSetError> {
        let mut added = [0usize; 2];
        for m in adds {
            added[usize::from(m.cidr.is_ipv6())] += 1;
        }
        let mut held = [0usize; 2];
        for m in self.held.values().flatten() {
            held[usize::from(m.cidr.is_ipv6())] += 1;
        }
        for (family, map) in [self.v4.name(), self.v6.name()].into_iter().enumerate() {
            let capacity = Layout::of_pin(&map_path(&self.root, map))?.max_entries;
            let needed = held[family] + added[family];
            if needed > capacity as usize {
                return Err(IpSetError::Full {
                    map,
                    needed,
                    capacity,
                });
            }
        }
        Ok(())
    }
}
