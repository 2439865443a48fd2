//! The node's blocks made to agree with the authority over block ownership
//! when that is not the store (`datastore: kubernetes`: the Kubernetes
//! API's IPAMBlock objects, read by margay-agent).
//!
//! The authority says which node holds which block; the store says which
//! addresses are in use. [`reconcile`] makes the store's blocks exactly the
//! ones the authority gives this node without ever forgetting an address in
//! use: a block in use that the authority gives to nobody, or to another
//! node, is kept but *fenced* (no new address from it) and reported, so the
//! agent can claim it back or raise the alarm; two nodes never hand out
//! addresses of one block.
//!
//! ```no_run
//! # use std::collections::BTreeMap;
//! # use margay_ipam::{holdings, store::Store};
//! # fn f(store: &Store, conf: &margay_conf::margay::IpamConf) -> Result<(), margay_ipam::IpamError> {
//! let api = BTreeMap::from([("10.244.0.0/26".parse().unwrap(), "node-a".to_string())]);
//! let done = holdings::reconcile(store, conf, &api)?;
//! assert!(done.conflicts.is_empty());
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;

use ipnetwork::IpNetwork;
use margay_conf::margay::IpamConf;
use serde::Serialize;

use crate::allocator::Allocator;
use crate::block::{Block, overlaps};
use crate::error::IpamError;
use crate::handle::HandleRecord;
use crate::store::{Changes, Store, block_key};

/// What [`reconcile`] changed and found.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct Reconciled {
    /// Blocks the authority gives the node that the store lacked.
    pub adopted: Vec<IpNetwork>,
    /// Empty blocks the authority does not give the node, dropped.
    pub dropped: Vec<IpNetwork>,
    /// Blocks in use that the authority gives to another node (or that
    /// overlap another node's), fenced: an alarm.
    pub conflicts: Vec<Conflict>,
    /// Blocks in use that the authority gives to nobody, fenced until the
    /// agent claims them back.
    pub unclaimed: Vec<IpNetwork>,
    /// Blocks the authority gives the node outside every configured pool,
    /// not adopted.
    pub outside_pools: Vec<IpNetwork>,
}

/// A block in use on this node that the authority gives to another node
/// (or that overlaps another node's): fenced, so this node hands out no new
/// address of it, and reported as an alarm.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Conflict {
    /// The block, as the store has it.
    pub block: IpNetwork,
    /// Addresses of it in use on this node.
    pub in_use: u32,
    /// Which node the authority gives it to, or which other node's block
    /// it overlaps; also the block's fence reason.
    pub why: String,
}

/// One block of the store, for reports and headroom.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BlockUsage {
    /// The block.
    pub cidr: IpNetwork,
    /// Addresses held by a handle.
    pub used: u32,
    /// Addresses that can ever be handed out (reserved ones excluded).
    pub capacity: u32,
    /// Free addresses the node may hand out (0 when fenced).
    pub usable: u32,
    /// Why the node may hand out no new address from it, when fenced.
    pub fenced: Option<String>,
}

impl BlockUsage {
    /// The block's IP family, 4 or 6: margay-agent keeps headroom and
    /// metrics per family.
    pub fn family(&self) -> u8 {
        if self.cidr.is_ipv4() { 4 } else { 6 }
    }
}

/// Makes the store's blocks those `authority` (block → node) gives
/// `conf.nodename`, as the module's documentation says.
///
/// # Errors
///
/// [`IpamError::Io`] or [`IpamError::Corrupt`] when the store cannot be
/// read or written.
pub fn reconcile(
    store: &Store,
    conf: &IpamConf,
    authority: &BTreeMap<IpNetwork, String>,
) -> Result<Reconciled, IpamError> {
    let me = conf.nodename.as_str();
    let held = store.all_blocks()?;
    let mut done = Reconciled::default();
    let mut changes = Changes::default();
    for mut block in held.iter().cloned() {
        let key = block_key(&block.cidr);
        let verdict = match authority.get(&block.cidr) {
            Some(node) if node == me => Verdict::Held,
            Some(node) => Verdict::Other(format!("the Kubernetes API gives it to node {node}")),
            None => match authority
                .iter()
                .find(|(cidr, _)| overlaps(cidr, &block.cidr))
            {
                Some((cidr, node)) => {
                    Verdict::Other(format!("it overlaps block {cidr} of node {node}"))
                }
                None => Verdict::Unclaimed,
            },
        };
        let fence = match verdict {
            Verdict::Held => None,
            _ if block.is_empty() => {
                changes.blocks.insert(key, None);
                done.dropped.push(block.cidr);
                continue;
            }
            Verdict::Other(why) => {
                done.conflicts.push(Conflict {
                    block: block.cidr,
                    in_use: block.allocations.len() as u32,
                    why: why.clone(),
                });
                Some(why)
            }
            Verdict::Unclaimed => {
                done.unclaimed.push(block.cidr);
                Some("no IPAMBlock object holds it".to_string())
            }
        };
        if block.fenced != fence {
            block.fenced = fence;
            changes.blocks.insert(key, Some(block));
        }
    }
    for (cidr, node) in authority {
        if node != me || held.iter().any(|b| overlaps(&b.cidr, cidr)) {
            continue;
        }
        match conf
            .pools
            .iter()
            .find(|p| p.contains(cidr.network()) && p.prefix() <= cidr.prefix())
        {
            Some(pool) => {
                changes
                    .blocks
                    .insert(block_key(cidr), Some(Block::new(*cidr, me, pool)));
                done.adopted.push(*cidr);
            }
            None => done.outside_pools.push(*cidr),
        }
    }
    store.commit(changes)?;
    Ok(done)
}

enum Verdict {
    Held,
    Other(String),
    Unclaimed,
}

/// Every block of the store with its use.
///
/// # Errors
///
/// [`IpamError::Io`] or [`IpamError::Corrupt`] when the store cannot be
/// read.
pub fn usage(store: &Store) -> Result<Vec<BlockUsage>, IpamError> {
    Ok(store
        .all_blocks()?
        .into_iter()
        .map(|b| BlockUsage {
            cidr: b.cidr,
            used: b.allocations.len() as u32,
            capacity: b.capacity(),
            usable: b.usable(),
            fenced: b.fenced,
        })
        .collect())
}

/// Drops `cidr` from the store if no address of it is in use; true when
/// it was dropped (or was not there).
///
/// # Errors
///
/// [`IpamError::Io`] or [`IpamError::Corrupt`] when the store cannot be
/// read or written.
pub fn drop_if_empty(store: &Store, cidr: &IpNetwork) -> Result<bool, IpamError> {
    let Some(block) = store.block_containing(cidr.network())? else {
        return Ok(true);
    };
    if block.cidr != *cidr || !block.is_empty() {
        return Ok(false);
    }
    let mut changes = Changes::default();
    changes.blocks.insert(block_key(cidr), None);
    store.commit(changes)?;
    Ok(true)
}

/// Releases what each of `handles` holds, in one transaction. Returns the
/// records of the handles that held something, each once with every
/// address it held (a dual-stack pod's two).
///
/// # Errors
///
/// [`IpamError::Io`] or [`IpamError::Corrupt`] when the store cannot be
/// read or written.
pub fn release_handles(
    store: &Store,
    conf: &IpamConf,
    handles: &[String],
) -> Result<Vec<HandleRecord>, IpamError> {
    let mut alloc = Allocator::new(store, conf);
    let mut released = Vec::new();
    for h in handles {
        released.extend(alloc.release(h)?);
    }
    store.commit(alloc.into_changes())?;
    Ok(released)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use margay_conf::margay::Datastore;

    use super::*;

    fn conf(dir: &std::path::Path) -> IpamConf {
        IpamConf {
            pools: vec!["10.0.0.0/24".parse().unwrap()],
            datastore: Datastore::Kubernetes,
            nodename: "a".into(),
            ..IpamConf::store_only(dir.to_owned())
        }
    }

    fn net(s: &str) -> IpNetwork {
        s.parse().unwrap()
    }

    fn handles(released: Vec<HandleRecord>) -> Vec<String> {
        released.into_iter().map(|r| r.handle).collect()
    }

    fn allocate(store: &Store, conf: &IpamConf, handle: &str) -> Result<HandleRecord, IpamError> {
        let mut alloc = Allocator::new(store, conf);
        let r = alloc.assign(HandleRecord::sample(handle), &[])?;
        store.commit(alloc.into_changes())?;
        Ok(r)
    }

    #[test]
    fn the_store_follows_the_authority_and_never_forgets_an_address_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let conf = conf(dir.path());
        let store = Store::open(dir.path(), Duration::from_secs(1)).unwrap();
        assert!(
            matches!(
                allocate(&store, &conf, "h0"),
                Err(IpamError::Exhausted { .. })
            ),
            "the store claims nothing itself"
        );

        let mut api = BTreeMap::from([
            (net("10.0.0.0/26"), "a".to_string()),
            (net("10.0.0.64/26"), "b".to_string()),
            (net("10.0.1.0/26"), "a".to_string()),
        ]);
        let done = reconcile(&store, &conf, &api).unwrap();
        assert_eq!(done.adopted, [net("10.0.0.0/26")]);
        assert_eq!(done.outside_pools, [net("10.0.1.0/26")]);
        let ip = allocate(&store, &conf, "h1").unwrap().addresses[0];
        assert!(net("10.0.0.0/26").contains(ip));

        // Another node is given the block in use: fenced, not shared.
        api.insert(net("10.0.0.0/26"), "b".into());
        let done = reconcile(&store, &conf, &api).unwrap();
        assert_eq!(done.conflicts.len(), 1, "{done:?}");
        assert!(done.conflicts[0].why.contains("node b"), "{done:?}");
        assert!(matches!(
            allocate(&store, &conf, "h2"),
            Err(IpamError::Exhausted { .. })
        ));
        // Nobody holds it: still fenced, reported for the agent to claim back.
        api.remove(&net("10.0.0.0/26"));
        let done = reconcile(&store, &conf, &api).unwrap();
        assert_eq!(done.unclaimed, [net("10.0.0.0/26")]);
        // Back to this node: usable again, the address still held.
        api.insert(net("10.0.0.0/26"), "a".into());
        let done = reconcile(&store, &conf, &api).unwrap();
        assert_eq!(
            done,
            Reconciled {
                outside_pools: vec![net("10.0.1.0/26")],
                ..Reconciled::default()
            }
        );
        assert_ne!(allocate(&store, &conf, "h2").unwrap().addresses[0], ip);

        // Emptied and given away: dropped.
        assert_eq!(
            handles(
                release_handles(&store, &conf, &["h1".into(), "h2".into(), "hx".into()]).unwrap()
            ),
            ["h1", "h2"]
        );
        api.insert(net("10.0.0.0/26"), "b".into());
        let done = reconcile(&store, &conf, &api).unwrap();
        assert_eq!(done.dropped, [net("10.0.0.0/26")]);
        assert!(usage(&store).unwrap().is_empty());
    }

    /// A store in `dir` holding block 10.0.0.0/26 from the API, with one
    /// address assigned to handle `h1`.
    fn one_block_holding_h1(dir: &std::path::Path) -> (IpamConf, Store) {
        let conf = conf(dir);
        let store = Store::open(dir, Duration::from_secs(1)).unwrap();
        let api = BTreeMap::from([(net("10.0.0.0/26"), "a".to_string())]);
        reconcile(&store, &conf, &api).unwrap();
        allocate(&store, &conf, "h1").unwrap();
        (conf, store)
    }

    #[test]
    fn only_an_empty_block_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let (conf, store) = one_block_holding_h1(dir.path());
        assert!(!drop_if_empty(&store, &net("10.0.0.0/26")).unwrap());
        release_handles(&store, &conf, &["h1".into()]).unwrap();
        assert!(drop_if_empty(&store, &net("10.0.0.0/26")).unwrap());
        assert!(usage(&store).unwrap().is_empty());
    }

    #[test]
    fn a_handle_named_twice_is_released_and_reported_once() {
        let dir = tempfile::tempdir().unwrap();
        let (conf, store) = one_block_holding_h1(dir.path());
        assert_eq!(
            handles(release_handles(&store, &conf, &["h1".into(), "h1".into()]).unwrap()),
            ["h1"]
        );
        assert_eq!(store.handle("h1").unwrap(), None);
        assert_eq!(usage(&store).unwrap()[0].used, 0);
    }

    #[test]
    fn a_dual_stack_handle_is_released_with_both_its_addresses() {
        let dir = tempfile::tempdir().unwrap();
        let conf = IpamConf {
            pools: vec![net("10.0.0.0/24"), net("fd00::/120")],
            ..conf(dir.path())
        };
        let store = Store::open(dir.path(), Duration::from_secs(1)).unwrap();
        let api = BTreeMap::from([
            (net("10.0.0.0/26"), "a".to_string()),
            (net("fd00::/122"), "a".to_string()),
        ]);
        reconcile(&store, &conf, &api).unwrap();
        let held = allocate(&store, &conf, "h1").unwrap();
        assert_eq!(held.addresses.len(), 2);
        let released = release_handles(&store, &conf, &["h1".into()]).unwrap();
        assert_eq!(released.len(), 1, "one handle");
        assert_eq!(released[0].addresses, held.addresses, "two addresses");
        assert!(usage(&store).unwrap().iter().all(|b| b.used == 0));
    }
}
