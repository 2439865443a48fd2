//! Blocks of nodes that no longer exist, given back to the pool by the one
//! agent holding the Lease ([`crate::lease`]): a block whose node has had
//! no Node object for `node_gone_grace` is deleted, with its uid and
//! resourceVersion as preconditions (a block claimed again meanwhile stays).
//! The grace covers a node re-registering and a Node object recreated by
//! hand; its pods are gone with it, so their addresses go too.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, DeleteParams, Preconditions};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::cache::Cache;
use crate::crd::IpamBlock;
use crate::ipam::ClusterBlocks;
use crate::lease::{LEASE_DURATION, LeaseLock};
use crate::metrics::Metrics;

/// How often the Lease is renewed and the blocks looked at.
const PERIOD: Duration = Duration::from_secs(5);
const LEASE_NAME: &str = "margay-ipam-gc";

pub struct NodeGoneCollector {
    pub client: kube::Client,
    pub namespace: String,
    pub identity: String,
    pub grace: Duration,
    pub nodes: Cache<Node>,
    pub blocks: watch::Receiver<Arc<ClusterBlocks>>,
    pub metrics: Arc<Metrics>,
}

impl NodeGoneCollector {
    pub async fn run(self) {
        let lock = LeaseLock::new(
            self.client.clone(),
            &self.namespace,
            LEASE_NAME,
            &self.identity,
        );
        let api: Api<IpamBlock> = Api::all(self.client.clone());
        let mut gone_since: HashMap<String, Instant> = HashMap::new();
        let mut leading = false;
        let mut tick = tokio::time::interval(PERIOD);
        loop {
            tick.tick().await;
            let held = match lock.hold().await {
                Ok(held) => held,
                Err(e) => {
                    self.metrics.api_error("lease");
                    tracing::warn!("the IPAM GC Lease: {e}");
                    // Held until it would have expired: better no leader for
                    // a moment than two.
                    false
                }
            };
            if held != leading {
                tracing::info!(
                    "{} the IPAM GC Lease {LEASE_NAME} (valid {LEASE_DURATION:?})",
                    if held { "holding" } else { "no longer holding" }
                );
                leading = held;
                gone_since.clear();
                self.metrics.leader.set(i64::from(held));
            }
            if leading {
                self.pass(&api, &mut gone_since).await;
            }
        }
    }

    async fn pass(&self, api: &Api<IpamBlock>, gone_since: &mut HashMap<String, Instant>) {
        let view = self.blocks.borrow().clone();
        if !view.synced || !self.nodes.is_listed() {
            return;
        }
        let nodes: HashSet<String> = self
            .nodes
            .store
            .state()
            .iter()
            .filter_map(|n| n.metadata.name.clone())
            .collect();
        let now = Instant::now();
        let orphans: Vec<_> = view
            .views
            .iter()
            .filter(|v| !nodes.contains(&v.node))
            .collect();
        gone_since.retain(|uid, _| orphans.iter().any(|v| &v.uid == uid));
        for v in orphans {
            let since = *gone_since.entry(v.uid.clone()).or_insert_with(|| {
                tracing::warn!(
                    block = %v.name,
                    node = %v.node,
                    "IPAMBlock names node {}, which does not exist; released in {:?} unless it appears",
                    v.node,
                    self.grace
                );
                now
            });
            if now - since < self.grace {
                continue;
            }
            let params = DeleteParams {
                preconditions: Some(Preconditions {
                    uid: Some(v.uid.clone()),
                    resource_version: Some(v.resource_version.clone()),
                }),
                ..DeleteParams::default()
            };
            match api.delete(&v.name, &params).await {
                Ok(_) => {
                    tracing::info!(block = %v.name, node = %v.node, "released the block of a deleted node");
                    self.metrics.blocks_released.inc();
                    gone_since.remove(&v.uid);
                }
                Err(e) => {
                    self.metrics.api_error("ipamblock delete");
                    tracing::warn!(block = %v.name, "releasing a deleted node's block: {e}");
                }
            }
        }
    }
}
