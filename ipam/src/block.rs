//! A block: a small CIDR cut from a pool, owned by one node, inside which
//! that node hands out single addresses. The unit Calico calls an affine
//! block; it keeps routes aggregated per node and allocation node-local.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};

/// One block with its allocations, as the store keeps it (JSON under
/// [`block_key`](crate::store::block_key)).
///
/// ```no_run
/// use margay_ipam::block::Block;
///
/// let pool = "10.244.0.0/16".parse().unwrap();
/// let mut block = Block::new("10.244.3.0/26".parse().unwrap(), "node-a", &pool);
/// let ip = block.allocate("k8s-pod-network.abc123.eth0");
/// assert_eq!(ip, Some("10.244.3.0".parse().unwrap()));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Block {
    /// The block's addresses; aligned, inside one pool.
    pub cidr: IpNetwork,
    /// The node whose pods get addresses from this block.
    pub node: String,
    /// Ordinal within the block → handle holding that address.
    pub allocations: BTreeMap<u32, String>,
    /// Where the search for a free ordinal starts. Addresses are handed out
    /// round-robin so a released address is reused as late as possible:
    /// conntrack entries, ARP caches and clients elsewhere may still point
    /// at it for a while.
    pub cursor: u32,
    /// Ordinals never handed out: an IPv4 pool's network and broadcast
    /// addresses and an IPv6 pool's subnet-router anycast address (its
    /// first), which other software still treats specially.
    pub reserved: BTreeSet<u32>,
    /// Why the node may hand out no new address from this block, when the
    /// authority over block ownership (the Kubernetes API) does not give it
    /// to this node. Addresses already held stay held until released.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fenced: Option<String>,
}

/// Whether CIDRs `a` and `b` share an address: one contains the other's
/// first address, as CIDRs are aligned.
pub fn overlaps(a: &IpNetwork, b: &IpNetwork) -> bool {
    a.is_ipv4() == b.is_ipv4() && (a.contains(b.network()) || b.contains(a.network()))
}

/// Why [`Block::assign`] refused an address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// One of the block's [`reserved`](Block::reserved) addresses, this
    /// one: an IPv4 pool's network or broadcast address, an IPv6 pool's
    /// subnet-router anycast address.
    Reserved(IpAddr),
    /// Not an address of the block, which is this one.
    Outside(IpNetwork),
    /// Held by this other handle.
    HeldBy(String),
    /// The block is fenced, for this reason.
    Fenced(String),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Reserved(IpAddr::V4(_)) => {
                write!(f, "reserved (the pool's network or broadcast address)")
            }
            Refusal::Reserved(IpAddr::V6(_)) => write!(
                f,
                "reserved (the pool's subnet-router anycast address, its first)"
            ),
            Refusal::Outside(block) => write!(f, "outside block {block}"),
            Refusal::HeldBy(h) => write!(f, "held by {h}"),
            Refusal::Fenced(why) => write!(f, "in a block this node may not use: {why}"),
        }
    }
}

impl Block {
    /// A new block of `pool` for `node`.
    pub fn new(cidr: IpNetwork, node: &str, pool: &IpNetwork) -> Block {
        let mut block = Block {
            cidr,
            node: node.to_string(),
            allocations: BTreeMap::new(),
            cursor: 0,
            reserved: BTreeSet::new(),
            fenced: None,
        };
        let special = match pool {
            IpNetwork::V4(p) if p.prefix() < 31 => {
                vec![IpAddr::V4(p.network()), IpAddr::V4(p.broadcast())]
            }
            IpNetwork::V6(p) if p.prefix() < 127 => vec![IpAddr::V6(p.network())],
            _ => Vec::new(),
        };
        block.reserved = special
            .into_iter()
            .filter_map(|a| block.ordinal(a))
            .collect();
        block
    }

    /// Number of addresses in the block (block prefixes are ≥ /20 and
    /// ≥ /116, so this fits easily).
    pub fn size(&self) -> u32 {
        let host_bits = match self.cidr {
            IpNetwork::V4(n) => 32 - u32::from(n.prefix()),
            IpNetwork::V6(n) => 128 - u32::from(n.prefix()),
        };
        1 << host_bits
    }

    /// Addresses that can ever be handed out: [`size`](Self::size) less
    /// the reserved ones.
    pub fn capacity(&self) -> u32 {
        self.size() - self.reserved.len() as u32
    }

    /// Addresses no handle holds, counted in a fenced block too; what the
    /// node may hand out is [`usable`](Self::usable).
    pub fn free(&self) -> u32 {
        self.capacity() - self.allocations.len() as u32
    }

    /// Free addresses this node may hand out: none in a fenced block.
    pub fn usable(&self) -> u32 {
        if self.fenced.is_some() {
            0
        } else {
            self.free()
        }
    }

    /// Whether no handle holds an address of it, so it can be dropped
    /// without forgetting an address in use.
    pub fn is_empty(&self) -> bool {
        self.allocations.is_empty()
    }

    /// The address at `ordinal` (0 is the block's first): the inverse of
    /// [`ordinal`](Self::ordinal), to turn an allocation back into an address.
    pub fn address(&self, ordinal: u32) -> IpAddr {
        match self.cidr {
            IpNetwork::V4(n) => IpAddr::V4(Ipv4Addr::from(u32::from(n.network()) + ordinal)),
            IpNetwork::V6(n) => IpAddr::V6(Ipv6Addr::from(
                u128::from(n.network()) + u128::from(ordinal),
            )),
        }
    }

    /// The position of `ip` in the block, the key of
    /// [`allocations`](Self::allocations); `None` when `ip` is outside it.
    pub fn ordinal(&self, ip: IpAddr) -> Option<u32> {
        if !self.cidr.contains(ip) {
            return None;
        }
        match (self.cidr, ip) {
            (IpNetwork::V4(n), IpAddr::V4(a)) => Some(u32::from(a) - u32::from(n.network())),
            (IpNetwork::V6(n), IpAddr::V6(a)) => {
                u32::try_from(u128::from(a) - u128::from(n.network())).ok()
            }
            _ => None,
        }
    }

    /// Hands the next free address after the cursor to `handle` (none
    /// from a fenced block).
    pub fn allocate(&mut self, handle: &str) -> Option<IpAddr> {
        if self.fenced.is_some() {
            return None;
        }
        let size = self.size();
        let ordinal = (0..size)
            .map(|step| (self.cursor + step) % size)
            .find(|o| !self.reserved.contains(o) && !self.allocations.contains_key(o))?;
        self.allocations.insert(ordinal, handle.to_string());
        self.cursor = (ordinal + 1) % size;
        Some(self.address(ordinal))
    }

    /// Gives `ip` to `handle`, unless it is reserved, held by another
    /// handle or in a fenced block. Giving a handle the address it already
    /// holds succeeds, fenced or not, so a retried ADD keeps its address.
    ///
    /// # Errors
    ///
    /// [`Refusal::Reserved`] when `ip` is one of the block's reserved
    /// addresses; [`Refusal::Outside`] when it lies outside the block;
    /// [`Refusal::HeldBy`] when another handle holds it; [`Refusal::Fenced`]
    /// when it is free but the block is fenced.
    pub fn assign(&mut self, ip: IpAddr, handle: &str) -> Result<(), Refusal> {
        let ordinal = self.ordinal(ip).ok_or(Refusal::Outside(self.cidr))?;
        if self.reserved.contains(&ordinal) {
            return Err(Refusal::Reserved(ip));
        }
        match self.allocations.get(&ordinal) {
            Some(holder) if holder != handle => Err(Refusal::HeldBy(holder.clone())),
            Some(_) => Ok(()),
            None if self.fenced.is_some() => {
                Err(Refusal::Fenced(self.fenced.clone().unwrap_or_default()))
            }
            None => {
                self.allocations.insert(ordinal, handle.to_string());
                Ok(())
            }
        }
    }

    /// Frees `ip` if `handle` holds it; true when something was freed.
    pub fn release(&mut self, ip: IpAddr, handle: &str) -> bool {
        match self.ordinal(ip) {
            Some(o) if self.allocations.get(&o).is_some_and(|h| h == handle) => {
                self.allocations.remove(&o);
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNetwork {
        s.parse().unwrap()
    }

    #[test]
    fn round_robin_does_not_reuse_a_released_address_at_once() {
        let pool = net("10.0.0.0/16");
        let mut b = Block::new(net("10.0.1.0/30"), "n", &pool);
        assert_eq!(b.capacity(), 4);
        let a = b.allocate("h1").unwrap();
        let c = b.allocate("h2").unwrap();
        assert_eq!(a.to_string(), "10.0.1.0");
        assert_eq!(c.to_string(), "10.0.1.1");
        assert!(b.release(a, "h1"));
        assert_eq!(b.allocate("h3").unwrap().to_string(), "10.0.1.2");
        assert_eq!(b.allocate("h4").unwrap().to_string(), "10.0.1.3");
        assert_eq!(
            b.allocate("h5").unwrap(),
            a,
            "wraps around to the freed one"
        );
        assert_eq!(b.allocate("h6"), None);
        assert_eq!(b.free(), 0);
    }

    #[test]
    fn pool_edges_are_reserved() {
        let pool = net("10.0.0.0/30");
        let mut b = Block::new(pool, "n", &pool);
        assert_eq!(b.capacity(), 2);
        let got: Vec<String> = std::iter::from_fn(|| b.allocate("h"))
            .map(|a| a.to_string())
            .collect();
        assert_eq!(got, ["10.0.0.1", "10.0.0.2"]);
        assert_eq!(
            b.assign("10.0.0.0".parse().unwrap(), "x"),
            Err(Refusal::Reserved("10.0.0.0".parse().unwrap()))
        );
        let whole_32 = net("10.9.9.9/32");
        assert_eq!(Block::new(whole_32, "n", &whole_32).capacity(), 1);
    }

    #[test]
    fn assign_respects_holders_and_release_checks_the_handle() {
        let pool = net("fd00::/64");
        let first = Block::new(net("fd00::/122"), "n", &pool);
        assert_eq!(
            first.capacity(),
            63,
            "the subnet-router anycast address is reserved"
        );
        let mut b = Block::new(net("fd00::40/122"), "n", &pool);
        assert_eq!(b.size(), 64);
        assert_eq!(b.capacity(), 64);
        let ip: IpAddr = "fd00::45".parse().unwrap();
        b.assign(ip, "h1").unwrap();
        b.assign(ip, "h1").unwrap();
        assert_eq!(b.assign(ip, "h2"), Err(Refusal::HeldBy("h1".into())));
        assert!(!b.release(ip, "h2"));
        assert!(b.release(ip, "h1"));
        assert_eq!(b.ordinal("fd00::1".parse().unwrap()), None);
        assert_eq!(b.ordinal("10.0.0.1".parse().unwrap()), None);
    }

    #[test]
    fn a_refused_address_is_described_as_what_it_is_in_its_family() {
        let v4 = net("10.0.0.0/16");
        let mut b = Block::new(net("10.0.0.0/30"), "n", &v4);
        let refusal = b.assign("10.0.0.0".parse().unwrap(), "h").unwrap_err();
        assert_eq!(
            refusal.to_string(),
            "reserved (the pool's network or broadcast address)"
        );
        let v6 = net("fd00::/64");
        let mut b = Block::new(net("fd00::/122"), "n", &v6);
        let refusal = b.assign("fd00::".parse().unwrap(), "h").unwrap_err();
        assert_eq!(
            refusal.to_string(),
            "reserved (the pool's subnet-router anycast address, its first)"
        );
        let refusal = b.assign("fd00::40".parse().unwrap(), "h").unwrap_err();
        assert_eq!(refusal.to_string(), "outside block fd00::/122");
    }

    #[test]
    fn a_fenced_block_hands_out_nothing_new_but_keeps_and_frees_what_is_held() {
        let pool = net("10.0.0.0/16");
        let mut b = Block::new(net("10.0.1.0/30"), "n", &pool);
        let held = b.allocate("h1").unwrap();
        b.fenced = Some("the API gives it to node m".into());
        assert_eq!(b.usable(), 0);
        assert_eq!(b.free(), 3);
        assert_eq!(b.allocate("h2"), None);
        assert_eq!(
            b.assign("10.0.1.2".parse().unwrap(), "h2"),
            Err(Refusal::Fenced("the API gives it to node m".into()))
        );
        assert_eq!(
            b.assign(held, "h1"),
            Ok(()),
            "a retried ADD keeps its address"
        );
        assert!(b.release(held, "h1"));
        assert!(b.is_empty());
    }
}
