//! Which node owns which block.
//!
//! Claims are behind [`BlockClaimer`] because they are the one step that
//! must be agreed cluster-wide when several nodes share pools. The local
//! claimer decides from this node's own store, which is right when each
//! node is given its own pools (or runs alone). With `datastore:
//! kubernetes` the Kubernetes API decides: margay-agent claims blocks there
//! (creating an IPAMBlock object, whose name makes the claim atomic) and
//! writes them into the store, so the store itself claims nothing
//! ([`AgentClaims`]); a node out of addresses asks the agent
//! ([`margay_conf::agent`]).

use ipnetwork::IpNetwork;
use margay_conf::margay::{Datastore, IpamConf};

use crate::error::IpamError;
use crate::store::Store;

/// The claimer `conf.datastore` names: [`LocalClaimer`] for `local`,
/// [`AgentClaims`] for `kubernetes`.
pub fn claimer_for(conf: &IpamConf) -> &'static dyn BlockClaimer {
    match conf.datastore {
        Datastore::Local => &LocalClaimer,
        Datastore::Kubernetes => &AgentClaims,
    }
}

/// Who decides which node owns a block, asked by the
/// [`Allocator`](crate::allocator::Allocator) when the node's own blocks are
/// full or an address outside them is asked for. A claim is returned, not
/// written: the allocator commits the new block with the allocation.
pub trait BlockClaimer {
    /// Claims for `node` the first block of `pool` (of prefix `prefix`) that
    /// no node holds. `None` when every block of the pool is taken.
    ///
    /// # Errors
    ///
    /// [`IpamError::Io`] or [`IpamError::Corrupt`] when the store's blocks
    /// cannot be read.
    fn claim(
        &self,
        store: &Store,
        pool: &IpNetwork,
        prefix: u8,
        node: &str,
    ) -> Result<Option<IpNetwork>, IpamError>;

    /// Claims exactly `block` for `node` (an address inside it was asked
    /// for by name). `Some(why)` when it cannot be had.
    ///
    /// # Errors
    ///
    /// [`IpamError::Io`] or [`IpamError::Corrupt`] when the store's blocks
    /// cannot be read.
    fn claim_block(
        &self,
        store: &Store,
        block: &IpNetwork,
        node: &str,
    ) -> Result<Option<String>, IpamError>;

    /// Whether [`claim`](Self::claim) would find a block, without claiming it.
    ///
    /// # Errors
    ///
    /// [`IpamError::Io`] or [`IpamError::Corrupt`] when the store's blocks
    /// cannot be read.
    fn can_claim(&self, store: &Store, pool: &IpNetwork, prefix: u8) -> Result<bool, IpamError>;
}

/// Claims decided from the local store alone.
#[derive(Debug, Default, Clone, Copy)]
pub struct LocalClaimer;

impl BlockClaimer for LocalClaimer {
    fn claim(
        &self,
        store: &Store,
        pool: &IpNetwork,
        prefix: u8,
        _node: &str,
    ) -> Result<Option<IpNetwork>, IpamError> {
        let taken = store.blocks_in(pool)?;
        Ok(first_usable_block(
            pool,
            prefix,
            taken.iter().map(|b| b.cidr),
        ))
    }

    fn claim_block(
        &self,
        store: &Store,
        block: &IpNetwork,
        _node: &str,
    ) -> Result<Option<String>, IpamError> {
        Ok((!store.blocks_in(block)?.is_empty())
            .then(|| format!("in {block}, which overlaps a block already claimed")))
    }

    fn can_claim(&self, store: &Store, pool: &IpNetwork, prefix: u8) -> Result<bool, IpamError> {
        self.claim(store, pool, prefix, "").map(|b| b.is_some())
    }
}

/// The store claims nothing: blocks are margay-agent's to claim in the
/// Kubernetes API and to write into the store.
#[derive(Debug, Default, Clone, Copy)]
pub struct AgentClaims;

impl BlockClaimer for AgentClaims {
    fn claim(
        &self,
        _store: &Store,
        _pool: &IpNetwork,
        _prefix: u8,
        _node: &str,
    ) -> Result<Option<IpNetwork>, IpamError> {
        Ok(None)
    }

    fn claim_block(
        &self,
        _store: &Store,
        block: &IpNetwork,
        _node: &str,
    ) -> Result<Option<String>, IpamError> {
        Ok(Some(format!(
            "in {block}, which the Kubernetes API does not give this node"
        )))
    }

    fn can_claim(&self, _: &Store, _: &IpNetwork, _: u8) -> Result<bool, IpamError> {
        Ok(false)
    }
}

/// [`first_free_block`], skipping blocks that could hand out no address:
/// with blocks of one address, the pool's network and broadcast addresses.
pub fn first_usable_block(
    pool: &IpNetwork,
    prefix: u8,
    taken: impl IntoIterator<Item = IpNetwork>,
) -> Option<IpNetwork> {
    let mut taken: Vec<IpNetwork> = taken.into_iter().collect();
    loop {
        let candidate = first_free_block(pool, prefix, taken.iter().copied())?;
        if crate::block::Block::new(candidate, "", pool).capacity() > 0 {
            return Some(candidate);
        }
        taken.push(candidate);
        taken.sort_by_key(|c| span(c).0);
    }
}

/// The lowest aligned block of `pool` overlapping none of `taken` (sorted by
/// start address). Blocks of other sizes (an operator changed the block
/// size) are stepped over, never overlapped.
pub fn first_free_block(
    pool: &IpNetwork,
    prefix: u8,
    taken: impl IntoIterator<Item = IpNetwork>,
) -> Option<IpNetwork> {
    let width = bits(pool);
    let size = 1u128 << (width - u32::from(prefix));
    let (start, end) = span(pool);
    let mut candidate = start;
    for t in taken {
        let (ts, te) = span(&t);
        if te < candidate {
            continue;
        }
        if ts > candidate + (size - 1) {
            break;
        }
        // Overlap: the next aligned block after `t`; none when `t` reaches
        // the end of the address space (with blocks of one address,
        // `te / size` is `te` itself, so even the `+ 1` can overflow).
        candidate = (te / size).checked_add(1)?.checked_mul(size)?;
    }
    if candidate.checked_add(size - 1)? > end {
        return None;
    }
    let ip = match pool {
        IpNetwork::V4(_) => std::net::IpAddr::V4((candidate as u32).into()),
        IpNetwork::V6(_) => std::net::IpAddr::V6(candidate.into()),
    };
    IpNetwork::new(ip, prefix).ok()
}

fn bits(n: &IpNetwork) -> u32 {
    if n.is_ipv4() { 32 } else { 128 }
}

/// First and last address of `n`, as integers.
fn span(n: &IpNetwork) -> (u128, u128) {
    let start = match n.network() {
        std::net::IpAddr::V4(a) => u128::from(u32::from(a)),
        std::net::IpAddr::V6(a) => u128::from(a),
    };
    let host_bits = bits(n) - u32::from(n.prefix());
    let last = if host_bits == 128 {
        u128::MAX
    } else {
        start + ((1u128 << host_bits) - 1)
    };
    (start, last)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> IpNetwork {
        s.parse().unwrap()
    }

    #[test]
    fn finds_gaps_and_steps_over_blocks_of_other_sizes() {
        let pool = n("10.0.0.0/24");
        assert_eq!(first_free_block(&pool, 26, []), Some(n("10.0.0.0/26")));
        assert_eq!(
            first_free_block(&pool, 26, [n("10.0.0.0/26"), n("10.0.0.128/26")]),
            Some(n("10.0.0.64/26"))
        );
        assert_eq!(
            first_free_block(&pool, 26, [n("10.0.0.0/27"), n("10.0.0.64/28")]),
            Some(n("10.0.0.128/26")),
            "a /27 and a /28 each make their /26 unusable"
        );
        let full = [
            "10.0.0.0/26",
            "10.0.0.64/26",
            "10.0.0.128/26",
            "10.0.0.192/26",
        ]
        .map(n);
        assert_eq!(first_free_block(&pool, 26, full), None);
        assert_eq!(
            first_free_block(&n("10.0.0.0/30"), 30, []),
            Some(n("10.0.0.0/30"))
        );
    }

    #[test]
    fn blocks_of_one_address_skip_the_pools_network_and_broadcast() {
        let pool = n("10.0.0.0/30");
        assert_eq!(first_usable_block(&pool, 32, []), Some(n("10.0.0.1/32")));
        assert_eq!(
            first_usable_block(&pool, 32, [n("10.0.0.1/32"), n("10.0.0.2/32")]),
            None,
            "10.0.0.3 is the broadcast address"
        );
        assert_eq!(first_usable_block(&pool, 30, []), Some(pool));
    }

    #[test]
    fn works_for_ipv6_and_pools_at_the_top_of_the_space() {
        let pool = n("fd00::/120");
        assert_eq!(
            first_free_block(&pool, 122, [n("fd00::/122")]),
            Some(n("fd00::40/122"))
        );
        let top = n("255.255.255.0/24");
        assert_eq!(
            first_free_block(
                &top,
                26,
                [
                    "255.255.255.0/26",
                    "255.255.255.64/26",
                    "255.255.255.128/26"
                ]
                .map(n)
            ),
            Some(n("255.255.255.192/26"))
        );
        let all = n("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ff00/120");
        assert_eq!(first_free_block(&all, 120, [all]), None);
    }

    #[test]
    fn blocks_of_one_address_at_the_top_of_ipv6_never_wrap_around() {
        let pool = n("ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffc/126");
        let each = [
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffc/128",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffd/128",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe/128",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128",
        ]
        .map(n);
        assert_eq!(
            first_free_block(&pool, 128, each),
            None,
            "a full pool has no free block, not ::/128"
        );
        assert_eq!(
            first_free_block(&pool, 128, [pool]),
            None,
            "a block of another size reaching ffff:…:ffff"
        );
        assert_eq!(
            first_usable_block(&pool, 128, each[..3].iter().copied()),
            Some(each[3])
        );
        assert_eq!(first_usable_block(&pool, 128, each), None);
    }
}
