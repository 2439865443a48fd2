//! Routes to the other nodes' pods, from the API: each other Node's
//! InternalIP is a peer, its IPAMBlocks are the peer's pod CIDRs; a peer on
//! this node's own subnet is reached directly, one on another subnet
//! through the VXLAN tunnel (Calico's CrossSubnet). The translation
//! ([`desired`]) is a pure function; [`PeerSync`] applies it through the
//! same peers model `margayctl node peers -f` takes, whenever Nodes or
//! blocks change.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ipnetwork::{IpNetwork, Ipv4Network};
use k8s_openapi::api::core::v1::Node;
use margay_model::peer::PeerSpec;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::cache::Cache;
use crate::health::Health;
use crate::ipam::ClusterBlocks;
use crate::metrics::{Metrics, WhatLabel};

/// A Node as the routes need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeAddress {
    pub name: String,
    /// Its first IPv4 InternalIP.
    pub address: Option<Ipv4Addr>,
    /// Its first IPv6 InternalIP (a dual-stack node's).
    pub address6: Option<Ipv6Addr>,
}

impl NodeAddress {
    pub fn of(node: &Node) -> NodeAddress {
        let internal = || {
            node.status
                .iter()
                .flat_map(|s| s.addresses.iter().flatten())
                .filter(|a| a.type_ == "InternalIP")
        };
        NodeAddress {
            name: node.metadata.name.clone().unwrap_or_default(),
            address: internal().find_map(|a| a.address.parse().ok()),
            address6: internal().find_map(|a| a.address.parse().ok()),
        }
    }
}

/// The peers this node (`me`, on `my_subnet`) should know: every other
/// node with an IPv4 address and blocks (of either family: IPv6's are
/// routed via its IPv6 address when it has one, else through the tunnel),
/// sorted by name. A node without an
/// address yet, or without blocks, gets no routes.
pub fn desired(
    me: &str,
    my_subnet: Option<Ipv4Network>,
    nodes: &[NodeAddress],
    holders: &BTreeMap<IpNetwork, String>,
) -> Vec<PeerSpec> {
    let mut peers: Vec<PeerSpec> = nodes
        .iter()
        .filter(|n| n.name != me)
        .filter_map(|n| {
            let address = n.address?;
            let pod_cidrs: Vec<IpNetwork> = holders
                .iter()
                .filter(|(_, holder)| **holder == n.name)
                .map(|(cidr, _)| *cidr)
                .collect();
            (!pod_cidrs.is_empty()).then(|| PeerSpec {
                name: n.name.clone(),
                address,
                address6: n.address6,
                pod_cidrs,
                encap: my_subnet.is_some_and(|s| !s.contains(address)),
            })
        })
        .collect();
    peers.sort_by(|a, b| a.name.cmp(&b.name));
    peers
}

/// The subnet of the interface holding `address` on this host.
pub fn subnet_of(address: Ipv4Addr) -> Option<Ipv4Network> {
    let addrs = nix::ifaddrs::getifaddrs().ok()?;
    for a in addrs {
        let (Some(ip), Some(mask)) = (a.address, a.netmask) else {
            continue;
        };
        let (Some(ip), Some(mask)) = (ip.as_sockaddr_in(), mask.as_sockaddr_in()) else {
            continue;
        };
        if ip.ip() == address {
            return Ipv4Network::with_netmask(address, mask.ip()).ok();
        }
    }
    None
}

/// Where the peers go.
#[derive(Debug, Clone)]
pub enum Dataplane {
    /// The eBPF dataplane's peer map (its BPF root) and routes, direct or
    /// through the tunnel.
    Bpf(PathBuf),
    /// Direct routes alone: peers on another subnet are unreachable.
    Linux,
}

/// Keeps the node's peers in sync.
pub struct PeerSync {
    pub node_name: String,
    pub dataplane: Dataplane,
    pub nodes: Cache<Node>,
    pub blocks: watch::Receiver<Arc<ClusterBlocks>>,
    pub health: Arc<Health>,
    pub metrics: Arc<Metrics>,
}

/// After a failed apply, the next try waits this long.
const RETRY: Duration = Duration::from_secs(2);
/// Changes closer together than this are applied at once.
const DEBOUNCE: Duration = Duration::from_millis(50);

impl PeerSync {
    pub async fn run(mut self) {
        self.nodes.listed().await;
        let mut applied: Option<Vec<PeerSpec>> = None;
        let mut changed_at = Some(Instant::now());
        loop {
            if let Some(at) = changed_at {
                tokio::time::sleep(DEBOUNCE).await;
                match self.sync(&applied).await {
                    Ok(Some(now)) => {
                        applied = Some(now);
                        self.metrics
                            .sync_latency
                            .get_or_create(&WhatLabel { what: "routes" })
                            .observe(at.elapsed().as_secs_f64());
                        changed_at = None;
                    }
                    Ok(None) => changed_at = None,
                    Err(e) => {
                        tracing::error!("routes to other nodes: {e}");
                        tokio::time::sleep(RETRY).await;
                        continue;
                    }
                }
            }
            tokio::select! {
                alive = self.nodes.changed() => if !alive { return },
                r = self.blocks.changed() => if r.is_err() { return },
            }
            changed_at.get_or_insert_with(Instant::now);
        }
    }

    /// Applies the desired peers when they differ from `applied`: the new
    /// set, or `None` when nothing was to be done (not synced, or unchanged).
    async fn sync(&self, applied: &Option<Vec<PeerSpec>>) -> anyhow::Result<Option<Vec<PeerSpec>>> {
        let view = self.blocks.borrow().clone();
        if !view.synced {
            return Ok(None);
        }
        let nodes: Vec<NodeAddress> = self
            .nodes
            .store
            .state()
            .iter()
            .map(|n| NodeAddress::of(n))
            .collect();
        let my_subnet = nodes
            .iter()
            .find(|n| n.name == self.node_name)
            .and_then(|n| n.address)
            .and_then(subnet_of);
        let peers = desired(
            &self.node_name,
            my_subnet,
            &nodes,
            &crate::blocks::holders(&view.views),
        );
        if applied.as_ref() == Some(&peers) {
            return Ok(None);
        }
        let dataplane = self.dataplane.clone();
        let wanted = peers.clone();
        let report = tokio::task::spawn_blocking(move || match dataplane {
            Dataplane::Bpf(root) => margay_ebpf::cluster::apply_peers(&root, &wanted),
            Dataplane::Linux => margay_ebpf::cluster::apply_routes(&wanted),
        })
        .await
        .expect("applying peers does not panic")?;
        if !report.unreachable.is_empty() {
            tracing::error!(
                nodes = ?report.unreachable,
                "nodes on another subnet are unreachable for pods: the linux dataplane has no tunnel (use the bpf dataplane)"
            );
        }
        tracing::info!(
            peers = peers.len(),
            cidrs = report.cidrs,
            routes = report.routes,
            removed = report.removed,
            "routes to other nodes applied"
        );
        self.health.routes_synced();
        Ok(Some(peers))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, ip: Option<&str>) -> NodeAddress {
        NodeAddress {
            name: name.into(),
            address: ip.map(|i| i.parse().unwrap()),
            address6: None,
        }
    }

    #[test]
    fn peers_are_the_other_nodes_with_their_blocks_tunnelled_across_subnets() {
        let b6: Ipv6Addr = "2001:db8::11".parse().unwrap();
        let nodes = [
            node("a", Some("192.168.0.10")),
            NodeAddress {
                address6: Some(b6),
                ..node("b", Some("192.168.0.11"))
            },
            node("c", Some("192.168.7.12")),
            node("d", None),
            node("e", Some("192.168.0.14")),
        ];
        let holders: BTreeMap<IpNetwork, String> = [
            ("10.0.0.0/26", "a"),
            ("10.0.0.64/26", "b"),
            ("10.0.1.0/26", "b"),
            ("10.0.2.0/26", "c"),
            ("10.0.3.0/26", "d"),
            ("10.0.9.0/26", "gone"),
            ("fd00::/122", "b"),
        ]
        .into_iter()
        .map(|(c, n)| (c.parse().unwrap(), n.to_string()))
        .collect();
        let peers = desired(
            "a",
            Some("192.168.0.0/24".parse().unwrap()),
            &nodes,
            &holders,
        );
        let summary: Vec<(String, Vec<String>, bool)> = peers
            .iter()
            .map(|p| {
                (
                    p.name.clone(),
                    p.pod_cidrs.iter().map(ToString::to_string).collect(),
                    p.encap,
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                (
                    "b".into(),
                    vec![
                        "10.0.0.64/26".into(),
                        "10.0.1.0/26".into(),
                        "fd00::/122".into()
                    ],
                    false
                ),
                ("c".into(), vec!["10.0.2.0/26".into()], true),
            ],
            "blocks of both families; no route to itself, to a node without an address or \
             blocks, or for a gone node's block"
        );
        assert_eq!(
            (peers[0].address6, peers[1].address6),
            (Some(b6), None),
            "a dual-stack node's IPv6 address goes with it"
        );
        assert!(
            desired("a", None, &nodes, &holders)
                .iter()
                .all(|p| !p.encap),
            "an unknown subnet routes directly"
        );
    }
}
