//! The other nodes (peers) as a node must know them: where each is and
//! which pod CIDRs are behind it.
//!
//! ```yaml
//! peers:
//!   - name: node-b
//!     address: 192.168.0.12       # the node's address, the tunnel's far end
//!     pod_cidrs: [10.244.1.0/26]  # its IPAM blocks
//!     encap: false                # true: not on one L2 with us, pods' traffic tunnels
//! ```

use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;
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
    pub pod_cidrs: Vec<Ipv4Network>,
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
        cidr: Ipv4Network,
        other: Ipv4Network,
        other_index: usize,
    },
}

/// Checks a whole set: every address a node's, no pod CIDR behind two
/// peers (or twice behind one).
pub fn check_peers(peers: &[PeerSpec]) -> Result<(), PeerSpecError> {
    let mut all: Vec<(Ipv4Network, usize)> = Vec::new();
    for (index, p) in peers.iter().enumerate() {
        if p.address.is_unspecified() || p.address.is_broadcast() {
            return Err(PeerSpecError::NotANode {
                index,
                name: p.name.clone(),
                address: p.address,
            });
        }
        for &cidr in &p.pod_cidrs {
            if let Some(&(other, other_index)) = all.iter().find(|(o, _)| o.overlaps(cidr)) {
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
    }
}
