//! The cluster's IPAMBlock objects judged: which are valid claims, which
//! node holds each block, and why an object is not used. Pure: the IPAM
//! controller, the routes and `margay-ipam blocks` all read this view.
//!
//! An object is a valid claim when its CIDR parses, is a block (no host
//! bits), lies inside a configured pool, its name is the CIDR's
//! ([`block_name`]: so one block has one object), it names a node, and it
//! overlaps no older valid claim. Anything else (a hand-written object, a
//! pool changed under running nodes) is reported and used by no node.

use std::collections::BTreeMap;

use ipnetwork::IpNetwork;
use margay_conf::agent::ApiBlock;
use margay_ipam::block::overlaps;

use crate::crd::{IpamBlock, block_name};

/// One object as judged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockView {
    pub name: String,
    /// `None` when `spec.cidr` is not a CIDR.
    pub cidr: Option<IpNetwork>,
    pub node: String,
    pub uid: String,
    pub resource_version: String,
    /// Why the object is not a valid claim.
    pub invalid: Option<String>,
}

impl BlockView {
    pub fn is_valid(&self) -> bool {
        self.invalid.is_none()
    }

    pub fn to_api_block(&self) -> Option<ApiBlock> {
        Some(ApiBlock {
            name: self.name.clone(),
            cidr: self.cidr?,
            node: self.node.clone(),
            invalid: self.invalid.clone(),
        })
    }
}

/// Judges `objects` against `pools`. Older objects win overlaps (by
/// creation time, then name), so a hand-written object can never take a
/// block from the node that claimed it first.
pub fn judge<'a>(
    objects: impl IntoIterator<Item = &'a IpamBlock>,
    pools: &[IpNetwork],
) -> Vec<BlockView> {
    let mut objects: Vec<&IpamBlock> = objects.into_iter().collect();
    objects.sort_by(|a, b| {
        (&a.metadata.creation_timestamp, &a.metadata.name)
            .cmp(&(&b.metadata.creation_timestamp, &b.metadata.name))
    });
    let mut views: Vec<BlockView> = Vec::with_capacity(objects.len());
    for o in objects {
        let name = o.metadata.name.clone().unwrap_or_default();
        let cidr: Option<IpNetwork> = o.spec.cidr.parse().ok();
        let invalid = match cidr {
            None => Some(format!("spec.cidr {:?} is not a CIDR", o.spec.cidr)),
            Some(c) if c.ip() != c.network() => Some(format!(
                "spec.cidr {c} has host bits set (the block is {}/{})",
                c.network(),
                c.prefix()
            )),
            Some(c) if !block_prefixes(&c).contains(&c.prefix()) => Some(format!(
                "spec.cidr {c}: a block is /{}../{} (ipam.block_size)",
                block_prefixes(&c).start(),
                block_prefixes(&c).end()
            )),
            Some(c) if block_name(&c) != name => Some(format!(
                "its name is not its block's ({}): a block has one object, named after it",
                block_name(&c)
            )),
            Some(c)
                if !pools
                    .iter()
                    .any(|p| p.contains(c.network()) && p.prefix() <= c.prefix()) =>
            {
                Some(format!(
                    "{c} lies outside every pool ({})",
                    pools
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            }
            Some(_) if o.spec.node.is_empty() => Some("spec.node is empty".to_string()),
            Some(c) => views
                .iter()
                .filter(|v| v.is_valid())
                .find(|v| v.cidr.is_some_and(|vc| overlaps(&vc, &c)))
                .map(|v| {
                    format!(
                        "{c} overlaps block {} of node {}, claimed before it",
                        v.name, v.node
                    )
                }),
        };
        views.push(BlockView {
            name,
            cidr,
            node: o.spec.node.clone(),
            uid: o.metadata.uid.clone().unwrap_or_default(),
            resource_version: o.metadata.resource_version.clone().unwrap_or_default(),
            invalid,
        });
    }
    views
}

/// The prefix lengths a block of `cidr`'s family may have: a larger block
/// would not fit what a node keeps of one (`margay_ipam::block::Block`).
fn block_prefixes(cidr: &IpNetwork) -> std::ops::RangeInclusive<u8> {
    match cidr {
        IpNetwork::V4(_) => margay_conf::margay::BLOCK_PREFIXES_V4,
        IpNetwork::V6(_) => margay_conf::margay::BLOCK_PREFIXES_V6,
    }
}

/// Block → node, for the valid claims: what `holdings::reconcile` and the
/// routes take.
pub fn holders(views: &[BlockView]) -> BTreeMap<IpNetwork, String> {
    views
        .iter()
        .filter(|v| v.is_valid())
        .filter_map(|v| Some((v.cidr?, v.node.clone())))
        .collect()
}

/// Every CIDR some object occupies, valid or not, sorted: a new claim
/// avoids them all, so it never overlaps even a bad object.
pub fn occupied(views: &[BlockView]) -> Vec<IpNetwork> {
    let mut all: Vec<IpNetwork> = views.iter().filter_map(|v| v.cidr).collect();
    all.sort_by_key(|c| (c.network(), c.prefix()));
    all
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::Timestamp;

    use super::*;
    use crate::crd::IpamBlockSpec;

    fn object(name: &str, cidr: &str, node: &str, created_s: i64) -> IpamBlock {
        let mut o = IpamBlock::new(
            name,
            IpamBlockSpec {
                cidr: cidr.into(),
                node: node.into(),
            },
        );
        o.metadata.creation_timestamp = Some(Time(Timestamp::from_second(created_s).unwrap()));
        o
    }

    #[test]
    fn objects_are_judged_and_the_older_claim_wins() {
        let pools = ["10.0.0.0/16".parse().unwrap()];
        let objects = [
            object("10-0-0-0-25", "10.0.0.0/25", "mallory", 20),
            object("10-0-0-0-26", "10.0.0.0/26", "a", 10),
            object("10-0-0-64-26", "10.0.0.64/26", "b", 30),
            object("my-block", "10.0.1.0/26", "c", 1),
            object("10-1-0-0-26", "10.1.0.0/26", "c", 1),
            object("10-0-2-5-26", "10.0.2.5/26", "c", 1),
            object("x", "ten/26", "c", 1),
            object("10-0-3-0-26", "10.0.3.0/26", "", 1),
            object("10-0-128-0-17", "10.0.128.0/17", "c", 1),
        ];
        let views = judge(&objects, &pools);
        let verdict = |name: &str| {
            views
                .iter()
                .find(|v| v.name == name)
                .unwrap()
                .invalid
                .clone()
        };
        assert_eq!(verdict("10-0-0-0-26"), None);
        assert_eq!(
            verdict("10-0-0-0-25").unwrap(),
            "10.0.0.0/25 overlaps block 10-0-0-0-26 of node a, claimed before it"
        );
        assert_eq!(
            verdict("10-0-0-64-26"),
            None,
            "only valid claims take a block: the invalid /25 does not"
        );
        assert!(verdict("my-block").unwrap().contains("its name is not"));
        assert!(
            verdict("10-1-0-0-26")
                .unwrap()
                .contains("outside every pool")
        );
        assert!(verdict("10-0-2-5-26").unwrap().contains("host bits"));
        assert!(verdict("x").unwrap().contains("not a CIDR"));
        assert!(verdict("10-0-3-0-26").unwrap().contains("spec.node"));
        assert_eq!(
            verdict("10-0-128-0-17").unwrap(),
            "spec.cidr 10.0.128.0/17: a block is /20../32 (ipam.block_size)",
            "a block too large for a node to hold is refused, not adopted"
        );
        assert_eq!(
            holders(&views),
            BTreeMap::from([
                ("10.0.0.0/26".parse().unwrap(), "a".to_string()),
                ("10.0.0.64/26".parse().unwrap(), "b".to_string())
            ])
        );
        assert_eq!(occupied(&views).len(), 8, "every parseable CIDR is avoided");
    }
}
