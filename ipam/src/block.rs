//! A block: a small CIDR cut from a pool, owned by one node, inside which
//! that node hands out single addresses. The unit Calico calls an affine
//! block; it keeps routes aggregated per node and allocation node-local.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Block {
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

    pub fn capacity(&self) -> u32 {
        self.size() - self.reserved.len() as u32
    }

    pub fn free(&self) -> u32 {
        self.capacity() - self.allocations.len() as u32
    }

    pub fn address(&self, ordinal: u32) -> IpAddr {
        match self.cidr {
            IpNetwork::V4(n) => IpAddr::V4(Ipv4Addr::from(u32::from(n.network()) + ordinal)),
            IpNetwork::V6(n) => IpAddr::V6(Ipv6Addr::from(
                u128::from(n.network()) + u128::from(ordinal),
            )),
        }
    }

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

    /// Hands the next free address after the cursor to `handle`.
    pub fn allocate(&mut self, handle: &str) -> Option<IpAddr> {
        let size = self.size();
        let ordinal = (0..size)
            .map(|step| (self.cursor + step) % size)
            .find(|o| !self.reserved.contains(o) && !self.allocations.contains_key(o))?;
        self.allocations.insert(ordinal, handle.to_string());
        self.cursor = (ordinal + 1) % size;
        Some(self.address(ordinal))
    }

    /// Gives `ip` to `handle`. Fails with the current holder when taken
    /// (by someone else) or with `None` when it is reserved.
    pub fn assign(&mut self, ip: IpAddr, handle: &str) -> Result<(), Option<String>> {
        let ordinal = self.ordinal(ip).ok_or(None)?;
        if self.reserved.contains(&ordinal) {
            return Err(None);
        }
        match self.allocations.get(&ordinal) {
            Some(holder) if holder != handle => Err(Some(holder.clone())),
            _ => {
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
        assert_eq!(b.assign("10.0.0.0".parse().unwrap(), "x"), Err(None));
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
        assert_eq!(b.assign(ip, "h2"), Err(Some("h1".into())));
        assert!(!b.release(ip, "h2"));
        assert!(b.release(ip, "h1"));
        assert_eq!(b.ordinal("fd00::1".parse().unwrap()), None);
        assert_eq!(b.ordinal("10.0.0.1".parse().unwrap()), None);
    }
}
