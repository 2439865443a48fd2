//! The other nodes (peers) as a node must know them: where each is and
//! which pod CIDRs are behind it.
//!
//! ```yaml
//! peers:
//!   - name: node-b
//!     address: 192.168.0.12       # the node's address, the tunnel's far end
//!     address6: "2001:db8::12"    # optional: its IPv6 address on the nodes' network
//!     pod_cidrs: [10.244.1.0/26, "fd00:244::/122"]  # its IPAM blocks, of both families
//!     encap: false                # true: not on one L2 with us, pods' traffic tunnels
//! ```

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};

/// What `margayctl node peers -f` reads.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerFile {
    pub peers: Vec<PeerSpec>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerSpec {
    pub name: String,
    pub address: Ipv4Addr,
    /// Its IPv6 address on the nodes' network, if it has one: its IPv6
    /// pod CIDRs are then routed via it when it is on our L2 (else
    /// through the tunnel, to `address`), and IPv6 NodePort replies in DSR
    /// mode come from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address6: Option<Ipv6Addr>,
    /// IPv4 and IPv6.
    pub pod_cidrs: Vec<IpNetwork>,
    /// Not on one L2 with this node: pods' traffic to it tunnels.
    #[serde(default)]
    pub encap: bool,
}

/// What is wrong with a set of peers, naming the peer and its field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerSpecError {
    #[error("peers[{index}] ({name}): {field}: {address} is not a node")]
    NotANode {
        index: usize,
        name: String,
        field: &'static str,
        address: std::net::IpAddr,
    },
    #[error("peers[{index}] ({name}): pod_cidrs: {cidr} overlaps {other} of peers[{other_index}]")]
    Overlap {
        index: usize,
        name: String,
        cidr: IpNetwork,
        other: IpNetwork,
        other_index: usize,
    },
}

/// Checks a whole set: every address a node's, no pod CIDR behind two
/// peers (or twice behind one).
pub fn check_peers(peers: &[PeerSpec]) -> Result<(), PeerSpecError> {
    let mut all: Vec<(IpNetwork, usize)> = Vec::new();
    for (index, p) in peers.iter().enumerate() {
        let not_a_node = |field, address: std::net::IpAddr| PeerSpecError::NotANode {
            index,
            name: p.name.clone(),
            field,
            address,
        };
        if p.address.is_unspecified() || p.address.is_broadcast() {
            return Err(not_a_node("address", p.address.into()));
        }
        if let Some(a) = p.address6
            && (a.is_unspecified()
                || a.is_loopback()
                || a.is_multicast()
                || a.is_unicast_link_local())
        {
            return Err(not_a_node("address6", a.into()));
        }
        for &cidr in &p.pod_cidrs {
            let overlaps = |o: &IpNetwork| match (o, cidr) {
                (IpNetwork::V4(o), IpNetwork::V4(c)) => o.overlaps(c),
                (IpNetwork::V6(o), IpNetwork::V6(c)) => o.overlaps(c),
                _ => false,
            };
            if let Some(&(other, other_index)) = all.iter().find(|(o, _)| overlaps(o)) {
                return Err(PeerSpecError::Overlap {
                    index,
                    name: p.name.clone(),
                    cidr,
                    other,
                    other_index,
                });
            }
            all.push((cidr, index));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peers(json: &str) -> Vec<PeerSpec> {
        serde_json::from_str::<PeerFile>(json).unwrap().peers
    }

    #[test]
    fn the_file_schema_parses_and_refuses_typos() {
        let p = peers(
            r#"{"peers": [{"name": "node-b", "address": "192.168.0.12",
                "pod_cidrs": ["10.244.1.0/26"], "encap": true},
                {"name": "node-c", "address": "192.168.0.13", "pod_cidrs": []}]}"#,
        );
        assert_eq!(p[0].pod_cidrs, vec!["10.244.1.0/26".parse().unwrap()]);
        assert!(p[0].encap);
        assert!(!p[1].encap, "encap defaults to false");
        assert_eq!(
            serde_json::to_value(&p[1]).unwrap(),
            serde_json::json!({"name": "node-c", "address": "192.168.0.13",
                "pod_cidrs": [], "encap": false})
        );
        assert!(
            serde_json::from_str::<PeerFile>(
                r#"{"peers": [{"name": "b", "address": "192.168.0.12", "pod_cidr": []}]}"#
            )
            .is_err()
        );
    }

    #[test]
    fn bad_peers_are_named_with_their_field() {
        let err = |json| check_peers(&peers(json)).unwrap_err().to_string();
        assert_eq!(
            err(r#"{"peers": [{"name": "b", "address": "0.0.0.0", "pod_cidrs": []}]}"#),
            "peers[0] (b): address: 0.0.0.0 is not a node"
        );
        assert_eq!(
            err(r#"{"peers": [
                {"name": "b", "address": "192.168.0.12", "pod_cidrs": ["10.244.1.0/24"]},
                {"name": "c", "address": "192.168.0.13", "pod_cidrs": ["10.244.1.64/26"]}]}"#),
            "peers[1] (c): pod_cidrs: 10.244.1.64/26 overlaps 10.244.1.0/24 of peers[0]"
        );
        assert_eq!(
            err(
                r#"{"peers": [{"name": "b", "address": "192.168.0.12", "address6": "fe80::1",
                "pod_cidrs": []}]}"#
            ),
            "peers[0] (b): address6: fe80::1 is not a node"
        );
        check_peers(&peers(
            r#"{"peers": [
                {"name": "b", "address": "192.168.0.12", "pod_cidrs": ["10.244.1.0/26"]},
                {"name": "c", "address": "192.168.0.13", "pod_cidrs": ["10.244.1.64/26"]}]}"#,
        ))
        .expect("disjoint CIDRs");
        assert_eq!(
            err(r#"{"peers": [
                {"name": "b", "address": "192.168.0.12", "pod_cidrs": ["10.244.1.0/26", "fd00:244::/122"]},
                {"name": "c", "address": "192.168.0.13", "pod_cidrs": ["fd00:244::40/122", "fd00:244::/64"]}]}"#),
            "peers[1] (c): pod_cidrs: fd00:244::/64 overlaps fd00:244::/122 of peers[0]"
        );
        check_peers(&peers(
            r#"{"peers": [{"name": "b", "address": "192.168.0.12",
                           "pod_cidrs": ["10.244.1.0/26", "fd00:244::/122"]}]}"#,
        ))
        .expect("a CIDR of each family");
    }
}
