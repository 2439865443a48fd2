//! What the inspection commands report. Returned as data; the binary
//! prints it as a table or JSON.

use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use ipnetwork::IpNetwork;
use margay_conf::margay::{Datastore, IpamConf};
use serde::Serialize;
use serde_json::Value;

use crate::allocator::Allocator;
use crate::error::IpamError;
use crate::handle::HandleRecord;
use crate::store::Store;
use margay_conf::agent::ApiBlock;

/// One configured pool's use on this node (`margay-ipam pools`).
#[derive(Debug, Serialize)]
pub struct PoolReport {
    /// The pool.
    pub pool: IpNetwork,
    /// Prefix length of the blocks the pool is cut into.
    pub block_prefix: u8,
    /// Blocks of the pool in the store.
    pub blocks_claimed: usize,
    /// Addresses held in those blocks.
    pub addresses_used: u64,
    /// Addresses not held in those blocks, fenced blocks included.
    pub addresses_free_in_claimed_blocks: u64,
    /// Whether an ADD could get an address of the pool now, from a block
    /// or by claiming one; with `datastore: kubernetes`, from a block the
    /// node holds (margay-agent claims new ones, when an ADD asks it).
    pub can_allocate: bool,
}

/// One block of the store (`margay-ipam blocks`).
#[derive(Debug, Serialize)]
pub struct BlockReport {
    /// The block.
    pub cidr: IpNetwork,
    /// The node the store gives it to.
    pub node: String,
    /// Addresses held by a handle.
    pub used: u32,
    /// Addresses that can ever be handed out (reserved ones excluded).
    pub capacity: u32,
    /// Why the node hands out no new address from it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fenced: Option<String>,
    /// What the Kubernetes API says of the block (`datastore: kubernetes`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api: Option<String>,
}

/// Reads the IPAM configuration out of a network configuration or conflist
/// file: the plugin whose `ipam.type` is `margay-ipam`.
///
/// # Errors
///
/// A message naming `path` when the file cannot be read, is not JSON, has
/// no plugin with `ipam.type` `margay-ipam`, or its `ipam` section is
/// invalid.
pub fn conf_from_file(path: &Path) -> Result<IpamConf, String> {
    let text = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let doc: Value =
        serde_json::from_slice(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let plugins = match doc.get("plugins").and_then(Value::as_array) {
        Some(list) => list.clone(),
        None => vec![doc],
    };
    let plugin = plugins
        .iter()
        .find(|p| p.pointer("/ipam/type").and_then(Value::as_str) == Some("margay-ipam"))
        .ok_or_else(|| format!("{}: no plugin uses ipam.type margay-ipam", path.display()))?;
    IpamConf::from_conf(plugin).map_err(|e| format!("{}: {e}", path.display()))
}

/// Each configured pool's use on this node. `store` is `None` when none
/// exists yet (nothing is created): every pool is then reported unused,
/// and able to allocate as an empty store would say, by claiming a block
/// with the local datastore and not with `kubernetes` (where the node holds
/// no block until margay-agent claims one).
///
/// # Errors
///
/// [`IpamError::Io`] or [`IpamError::Corrupt`] when the store cannot be
/// read.
pub fn pools(store: Option<&Store>, conf: &IpamConf) -> Result<Vec<PoolReport>, IpamError> {
    conf.pools
        .iter()
        .map(|pool| {
            let blocks: Vec<_> = match store {
                Some(s) => s
                    .blocks_in(pool)?
                    .into_iter()
                    .filter(|b| pool.contains(b.cidr.network()))
                    .collect(),
                None => Vec::new(),
            };
            let can_allocate = match store {
                Some(s) => Allocator::new(s, &single_pool(conf, pool))
                    .can_allocate(if pool.is_ipv4() { 4 } else { 6 })?,
                None => conf.datastore == Datastore::Local,
            };
            Ok(PoolReport {
                pool: *pool,
                block_prefix: conf.block_prefix(pool),
                blocks_claimed: blocks.len(),
                addresses_used: blocks.iter().map(|b| b.allocations.len() as u64).sum(),
                addresses_free_in_claimed_blocks: blocks.iter().map(|b| u64::from(b.free())).sum(),
                can_allocate,
            })
        })
        .collect()
}

fn single_pool(conf: &IpamConf, pool: &IpNetwork) -> IpamConf {
    IpamConf {
        pools: vec![*pool],
        ..conf.clone()
    }
}

/// Every block of the store; the API's view is added by [`with_api`].
///
/// # Errors
///
/// [`IpamError::Io`] or [`IpamError::Corrupt`] when the store cannot be
/// read.
pub fn blocks(store: &Store) -> Result<Vec<BlockReport>, IpamError> {
    Ok(store
        .all_blocks()?
        .into_iter()
        .map(|b| BlockReport {
            used: b.allocations.len() as u32,
            capacity: b.capacity(),
            cidr: b.cidr,
            node: b.node,
            fenced: b.fenced,
            api: None,
        })
        .collect())
}

/// `blocks` (the store's) beside what the API gives `node`, as margay-agent
/// reports it (`Err`: why it could not be asked): each store block says
/// whether the API gives it to this node, and blocks the API gives the
/// node that the store lacks are listed too.
pub fn with_api(
    mut blocks: Vec<BlockReport>,
    api: Result<Vec<ApiBlock>, String>,
    node: &str,
) -> Vec<BlockReport> {
    let api = match api {
        Ok(api) => api,
        Err(why) => {
            for b in &mut blocks {
                b.api = Some(format!("unknown ({why})"));
            }
            return blocks;
        }
    };
    let say = |a: &ApiBlock| match (&a.invalid, a.node == node) {
        (Some(why), _) => format!("invalid: {why}"),
        (None, true) => "held by this node".to_string(),
        (None, false) => format!("given to node {}", a.node),
    };
    for b in &mut blocks {
        b.api = Some(match api.iter().find(|a| a.cidr == b.cidr) {
            Some(a) => say(a),
            None => "no IPAMBlock".to_string(),
        });
    }
    for a in api.iter().filter(|a| a.node == node) {
        if !blocks.iter().any(|b| b.cidr == a.cidr) {
            blocks.push(BlockReport {
                cidr: a.cidr,
                node: a.node.clone(),
                used: 0,
                capacity: 0,
                fenced: None,
                api: Some(match a.invalid {
                    Some(_) => say(a),
                    None => format!("{}, not yet in the store", say(a)),
                }),
            });
        }
    }
    blocks
}

/// The table rows of `margay-ipam allocations`: addresses, handle,
/// `namespace/pod` (or `-`), node and creation time in RFC 3339.
pub fn allocation_rows(records: &[HandleRecord]) -> Vec<Vec<String>> {
    records
        .iter()
        .map(|r| {
            let pod = match (&r.pod_namespace, &r.pod_name) {
                (Some(ns), Some(name)) => format!("{ns}/{name}"),
                _ => "-".into(),
            };
            let created =
                humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(r.created));
            vec![
                r.addresses
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(","),
                r.handle.clone(),
                pod,
                r.node.clone(),
                created.to_string(),
            ]
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(dir: &Path, datastore: Datastore) -> IpamConf {
        IpamConf {
            pools: vec![
                "10.0.0.0/24".parse().unwrap(),
                "fd00::/120".parse().unwrap(),
            ],
            datastore,
            nodename: "a".into(),
            ..IpamConf::store_only(dir.to_owned())
        }
    }

    #[test]
    fn a_node_without_a_store_is_reported_as_an_empty_store_would_be() {
        for datastore in [Datastore::Local, Datastore::Kubernetes] {
            let dir = tempfile::tempdir().unwrap();
            let conf = conf(dir.path(), datastore);
            let without: Vec<_> = pools(None, &conf)
                .unwrap()
                .into_iter()
                .map(|p| (p.pool, p.blocks_claimed, p.can_allocate))
                .collect();
            assert!(
                !dir.path().join("store").exists(),
                "reporting creates no store"
            );
            let store = Store::open(dir.path(), Duration::from_secs(1)).unwrap();
            let empty: Vec<_> = pools(Some(&store), &conf)
                .unwrap()
                .into_iter()
                .map(|p| (p.pool, p.blocks_claimed, p.can_allocate))
                .collect();
            assert_eq!(without, empty, "{datastore:?}");
        }
    }
}
