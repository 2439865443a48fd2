//! The other nodes (peers) as a node must know them: where each is and
//! which pod CIDRs are behind it.
//!
//! ```yaml
//! peers:
//!   - name: node-b
//!     address: 192.168.0.12       # the node's address, the tunnel's far end
//!     pod_cidrs: [10.244.1.0/26, "fd00:244::/122"]  # its IPAM blocks, of both families
//!     encap: false                # true: not on one L2 with us, pods' traffic tunnels
//! ```

use std::net::Ipv4Addr;

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
    /// IPv4 and IPv6: IPv6's are routed via the node's IPv4 address too
    /// (RFC 5549's next hop of the other family: no IPv6 on the nodes'
    /// network needed).
    pub pod_cidrs: Vec<IpNetwork>,
    /// Not on one L2 with this node: pods' traffic to it tunnels.
    #[serde(default)]
    pub encap: bool,
}

/// What is wrong with a set of peers, naming the peer and its field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerSpecError {
    #[error("peers[{index}] ({name}): address: {address} is not a node")]
    NotANode {
        index: usize,
        name: String,
        address: Ipv4Addr,
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
        if p.address.is_unspecified() || p.address.is_broadcast() {
            return Err(PeerSpecError::NotANode {
                index,
                name: p.name.clone(),
                address: p.address,
            });
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
