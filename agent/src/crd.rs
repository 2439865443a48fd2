//! The IPAMBlock custom resource (`ipamblocks.margay.dev`): one object per
//! block of a pool that a node has claimed, named after the block's CIDR.
//!
//! Names make claims atomic: two nodes that want the same block both create
//! the object of that name, and the API server lets exactly one succeed
//! (the other gets `AlreadyExists`). Releasing an empty block deletes its
//! object with the uid and resourceVersion the releaser saw as
//! preconditions, so a block re-claimed meanwhile is never deleted.
//!
//! ```
//! use margay_agent::crd::block_name;
//! assert_eq!(block_name(&"10.244.3.64/26".parse().unwrap()), "10-244-3-64-26");
//! assert_eq!(block_name(&"fd00:217::40/122".parse().unwrap()), "fd00-217-0-0-0-0-0-40-122");
//! ```

use ipnetwork::IpNetwork;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Which node holds a block.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[kube(
    group = "margay.dev",
    version = "v1",
    kind = "IPAMBlock",
    root = "IpamBlock",
    plural = "ipamblocks",
    singular = "ipamblock",
    shortname = "ipb",
    status = "IpamBlockStatus",
    doc = "A block of pod addresses claimed by one node; named after its CIDR, so a claim is the object's creation.",
    printcolumn = r#"{"name": "CIDR", "type": "string", "jsonPath": ".spec.cidr"}"#,
    printcolumn = r#"{"name": "Node", "type": "string", "jsonPath": ".spec.node"}"#,
    printcolumn = r#"{"name": "Used", "type": "integer", "jsonPath": ".status.used"}"#,
    printcolumn = r#"{"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}"#
)]
pub struct IpamBlockSpec {
    /// The block, as a CIDR (`10.244.3.64/26`).
    pub cidr: String,
    /// The node whose pods get addresses from the block.
    pub node: String,
}

/// What the holding node reports of the block.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct IpamBlockStatus {
    /// Addresses of the block in use on its node.
    pub used: u32,
    /// Addresses the block can hand out.
    pub capacity: u32,
}

/// The object name of block `cidr`: its address and prefix length joined
/// by dashes, IPv6 with every group written out (no `::`), so the name is
/// a valid object name and the same for every writer.
pub fn block_name(cidr: &IpNetwork) -> String {
    let address = match cidr.network() {
        std::net::IpAddr::V4(a) => a
            .octets()
            .iter()
            .map(u8::to_string)
            .collect::<Vec<_>>()
            .join("-"),
        std::net::IpAddr::V6(a) => a
            .segments()
            .iter()
            .map(|s| format!("{s:x}"))
            .collect::<Vec<_>>()
            .join("-"),
    };
    format!("{address}-{}", cidr.prefix())
}

impl IpamBlock {
    /// The object that claims `cidr` for `node`.
    pub fn claim(cidr: &IpNetwork, node: &str) -> IpamBlock {
        IpamBlock::new(
            &block_name(cidr),
            IpamBlockSpec {
                cidr: cidr.to_string(),
                node: node.to_string(),
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use kube::CustomResourceExt;

    use super::*;

    #[test]
    fn the_crd_is_cluster_scoped_and_named_as_deploy_expects() {
        let crd = IpamBlock::crd();
        assert_eq!(crd.metadata.name.as_deref(), Some("ipamblocks.margay.dev"));
        assert_eq!(crd.spec.scope, "Cluster");
        assert_eq!(crd.spec.names.kind, "IPAMBlock");
        let version = &crd.spec.versions[0];
        assert!(
            version.subresources.as_ref().unwrap().status.is_some(),
            "status is a subresource: nodes report use without touching the claim"
        );
    }

    #[test]
    fn names_are_distinct_per_block_and_valid_object_names() {
        let names: Vec<String> = ["10.0.0.0/26", "10.0.0.0/25", "10.0.0.64/26", "fd00::/122"]
            .iter()
            .map(|c| block_name(&c.parse().unwrap()))
            .collect();
        assert_eq!(
            names,
            [
                "10-0-0-0-26",
                "10-0-0-0-25",
                "10-0-0-64-26",
                "fd00-0-0-0-0-0-0-0-122"
            ]
        );
        for n in &names {
            assert!(
                n.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            );
        }
    }
}
