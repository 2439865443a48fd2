//! IPAM operations on an open store: assign addresses to a handle, release
//! them, report capacity. Reads go to the store, writes gather into
//! [`Changes`] that the caller commits in one transaction.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnetwork::IpNetwork;
use margay_conf::margay::IpamConf;

use crate::block::Block;
use crate::claim::{BlockClaimer, claimer_for};
use crate::error::IpamError;
use crate::handle::HandleRecord;
use crate::store::{Changes, Store, block_key};

/// One operation on an open store. Blocks and handles it changed are read
/// back from its own copies, not the store; every write waits in it until
/// [`into_changes`](Allocator::into_changes) hands them over for one
/// [`Store::commit`], so a failed operation leaves the store as it was.
///
/// ```no_run
/// # use margay_conf::env::Attachment;
/// # use margay_conf::margay::IpamConf;
/// # use margay_ipam::IpamError;
/// use std::time::Duration;
///
/// use margay_ipam::allocator::Allocator;
/// use margay_ipam::handle::HandleRecord;
/// use margay_ipam::store::Store;
///
/// # fn f(conf: &IpamConf, att: &Attachment) -> Result<(), IpamError> {
/// let store = Store::open(&conf.data_dir, Duration::from_millis(conf.lock_timeout_ms))?;
/// let mut alloc = Allocator::new(&store, conf);
/// let record = alloc.assign(HandleRecord::new("k8s-pod-network", att, &conf.nodename), &[])?;
/// store.commit(alloc.into_changes())?;
/// # Ok(()) }
/// ```
pub struct Allocator<'a> {
    store: &'a Store,
    conf: &'a IpamConf,
    claimer: &'a dyn BlockClaimer,
    /// Blocks changed by this operation, by key; read before the store.
    blocks: BTreeMap<Vec<u8>, Block>,
    handles: BTreeMap<String, Option<HandleRecord>>,
}

/// IP families (4, 6) present in the configured pools, IPv4 first: an ADD
/// that names no address gets one of each.
pub fn families(pools: &[IpNetwork]) -> impl Iterator<Item = u8> + '_ {
    [4u8, 6]
        .into_iter()
        .filter(|f| pools.iter().any(|p| family(p) == *f))
}

fn family(n: &IpNetwork) -> u8 {
    if n.is_ipv4() { 4 } else { 6 }
}

impl<'a> Allocator<'a> {
    /// An allocator over `store` that claims blocks as `conf.datastore` says.
    pub fn new(store: &'a Store, conf: &'a IpamConf) -> Self {
        Allocator {
            store,
            conf,
            claimer: claimer_for(conf),
            blocks: BTreeMap::new(),
            handles: BTreeMap::new(),
        }
    }

    /// The writes gathered, to pass to [`Store::commit`]; dropping the
    /// allocator instead discards them.
    pub fn into_changes(self) -> Changes {
        Changes {
            blocks: self.blocks.into_iter().map(|(k, b)| (k, Some(b))).collect(),
            handles: self.handles,
        }
    }

    /// Gives `record` its addresses: exactly `requested` when given, else one
    /// per configured family. A handle that already holds addresses gets
    /// them back unchanged (a retried ADD must not allocate twice), unless
    /// the record under it is another attachment's.
    ///
    /// # Errors
    ///
    /// [`IpamError::HandleTaken`] when the record's handle is another
    /// attachment's; [`IpamError::Exhausted`] when a family has no free
    /// address and no block can be claimed; [`IpamError::OutsidePools`] when
    /// a requested address is in no pool; [`IpamError::Unavailable`] when a
    /// requested address is held, reserved, fenced or in a block this node
    /// cannot have; [`IpamError::Io`] or [`IpamError::Corrupt`] when the
    /// store cannot be read.
    pub fn assign(
        &mut self,
        mut record: HandleRecord,
        requested: &[IpAddr],
    ) -> Result<HandleRecord, IpamError> {
        if let Some(held) = self.handle(&record.handle)? {
            if !held.same_attachment(&record) {
                return Err(IpamError::handle_taken(&held, &record));
            }
            return Ok(held);
        }
        let mut addresses = Vec::new();
        if requested.is_empty() {
            for f in families(&self.conf.pools) {
                addresses.push(self.allocate(f, &record.handle)?);
            }
        } else {
            for ip in requested {
                if !addresses.contains(ip) {
                    self.assign_requested(*ip, &record.handle)?;
                    addresses.push(*ip);
                }
            }
        }
        record.addresses = addresses;
        self.handles
            .insert(record.handle.clone(), Some(record.clone()));
        Ok(record)
    }

    /// Frees what the attachment of `wanted` holds. `None` when it holds
    /// nothing.
    ///
    /// # Errors
    ///
    /// [`IpamError::HandleTaken`] when its handle is another attachment's
    /// (which keeps its addresses); [`IpamError::Io`] or
    /// [`IpamError::Corrupt`] when the store cannot be read.
    pub fn release_attachment(
        &mut self,
        wanted: &HandleRecord,
    ) -> Result<Option<HandleRecord>, IpamError> {
        match self.handle(&wanted.handle)? {
            Some(held) if !held.same_attachment(wanted) => {
                Err(IpamError::handle_taken(&held, wanted))
            }
            Some(_) => self.release(&wanted.handle),
            None => Ok(None),
        }
    }

    /// Frees what `handle` holds, whoever it is. `None` when it held nothing,
    /// or this operation has released it already.
    ///
    /// # Errors
    ///
    /// [`IpamError::Io`] or [`IpamError::Corrupt`] when the store cannot be read.
    pub fn release(&mut self, handle: &str) -> Result<Option<HandleRecord>, IpamError> {
        let Some(record) = self.handle(handle)? else {
            return Ok(None);
        };
        for ip in &record.addresses {
            if let Some(mut block) = self.block_containing(*ip)?
                && block.release(*ip, handle)
            {
                self.blocks.insert(block_key(&block.cidr), block);
            }
        }
        self.handles.insert(handle.to_string(), None);
        Ok(Some(record))
    }

    /// Whether an ADD could get an address of `family_wanted` (4 or 6) now:
    /// a block of this node has a usable address, or the claimer would find
    /// a block.
    ///
    /// # Errors
    ///
    /// [`IpamError::Io`] or [`IpamError::Corrupt`] when the store cannot be read.
    pub fn can_allocate(&self, family_wanted: u8) -> Result<bool, IpamError> {
        for pool in self.pools(family_wanted) {
            let prefix = self.conf.block_prefix(pool);
            if self.own_blocks(pool)?.iter().any(|b| b.usable() > 0)
                || self.claimer.can_claim(self.store, pool, prefix)?
            {
                return Ok(true);
            }
        }
        Ok(false)
    }

    fn pools(&self, f: u8) -> impl Iterator<Item = &'a IpNetwork> + 'a {
        self.conf.pools.iter().filter(move |p| family(p) == f)
    }

    /// This node's blocks in `pool`, with this operation's changes applied.
    fn own_blocks(&self, pool: &IpNetwork) -> Result<Vec<Block>, IpamError> {
        Ok(self
            .store
            .blocks_in(pool)?
            .into_iter()
            .map(|b| self.blocks.get(&block_key(&b.cidr)).cloned().unwrap_or(b))
            .filter(|b| b.node == self.conf.nodename && pool.contains(b.cidr.network()))
            .collect())
    }

    /// The record under `handle`, with this operation's changes applied:
    /// none once it released it.
    fn handle(&self, handle: &str) -> Result<Option<HandleRecord>, IpamError> {
        match self.handles.get(handle) {
            Some(pending) => Ok(pending.clone()),
            None => self.store.handle(handle),
        }
    }

    fn block_containing(&self, ip: IpAddr) -> Result<Option<Block>, IpamError> {
        if let Some(b) = self.blocks.values().find(|b| b.cidr.contains(ip)) {
            return Ok(Some(b.clone()));
        }
        self.store.block_containing(ip)
    }

    /// Next free address of `f`: from this node's blocks in pool order,
    /// else from a newly claimed block.
    fn allocate(&mut self, f: u8, handle: &str) -> Result<IpAddr, IpamError> {
        for pool in self.pools(f) {
            for mut block in self.own_blocks(pool)? {
                if let Some(ip) = block.allocate(handle) {
                    self.blocks.insert(block_key(&block.cidr), block);
                    return Ok(ip);
                }
            }
        }
        for pool in self.pools(f) {
            let prefix = self.conf.block_prefix(pool);
            if let Some(cidr) = self
                .claimer
                .claim(self.store, pool, prefix, &self.conf.nodename)?
            {
                let mut block = Block::new(cidr, &self.conf.nodename, pool);
                if let Some(ip) = block.allocate(handle) {
                    tracing::info!(block = %cidr, "claimed a new block");
                    self.blocks.insert(block_key(&cidr), block);
                    return Ok(ip);
                }
            }
        }
        Err(IpamError::Exhausted {
            family: f,
            pools: self
                .pools(f)
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
        })
    }

    fn assign_requested(&mut self, ip: IpAddr, handle: &str) -> Result<(), IpamError> {
        let pool = self
            .conf
            .pools
            .iter()
            .find(|p| p.contains(ip))
            .ok_or_else(|| IpamError::OutsidePools {
                ip,
                pools: self
                    .conf
                    .pools
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
            })?;
        let mut block = match self.block_containing(ip)? {
            Some(b) if b.node != self.conf.nodename => {
                return Err(IpamError::Unavailable {
                    ip,
                    holder: format!("in block {} of node {}", b.cidr, b.node),
                });
            }
            Some(b) => b,
            None => {
                let prefix = self.conf.block_prefix(pool);
                let cidr = IpNetwork::new(ip, prefix)
                    .and_then(|n| IpNetwork::new(n.network(), prefix))
                    .expect("block prefix fits the family");
                if let Some(why) =
                    self.claimer
                        .claim_block(self.store, &cidr, &self.conf.nodename)?
                {
                    return Err(IpamError::Unavailable { ip, holder: why });
                }
                Block::new(cidr, &self.conf.nodename, pool)
            }
        };
        block
            .assign(ip, handle)
            .map_err(|refusal| IpamError::Unavailable {
                ip,
                holder: refusal.to_string(),
            })?;
        self.blocks.insert(block_key(&block.cidr), block);
        Ok(())
    }
}
