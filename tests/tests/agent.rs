//! margay-agent on a real cluster (`scripts/cluster`, three nodes unless
//! said): address blocks claimed through the Kubernetes API so nodes never
//! share an address, routes between nodes from Node objects, health and
//! metrics, and what happens when the agent or the API server goes away.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use ipnetwork::{IpNetwork, Ipv4Network};
use margay_tests::host_agent::HostAgent;
use margay_tests::kube::{KubeCluster, Stopped, sample, wait_for};
use margay_tests::require_root;
use margay_tests::workload::{
    POD_WAIT, PORT, Pod, busybox_pod, http_get, pod_cidr, running_pods, seen_address,
    web_across_nodes,
};
use serde_json::Value;

/// An IPAMBlock object as the API has it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ApiBlock {
    name: String,
    cidr: IpNetwork,
    node: String,
}

fn api_blocks(c: &KubeCluster) -> Vec<ApiBlock> {
    let list = c.kubectl_json(&["get", "ipamblocks"]);
    list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|o| ApiBlock {
            name: o["metadata"]["name"].as_str().unwrap().to_string(),
            cidr: o["spec"]["cidr"].as_str().unwrap().parse().unwrap(),
            node: o["spec"]["node"].as_str().unwrap().to_string(),
        })
        .collect()
}

/// No two objects share an address.
fn assert_disjoint(blocks: &[ApiBlock]) {
    for (i, a) in blocks.iter().enumerate() {
        for b in &blocks[i + 1..] {
            assert!(
                !a.cidr.contains(b.cidr.network()) && !b.cidr.contains(a.cidr.network()),
                "{a:?} and {b:?} overlap: a block is held twice"
            );
        }
    }
}

/// `margay-ipam blocks --json` on node `i`: the store's blocks with what
/// the API says of each.
fn node_blocks(c: &KubeCluster, i: usize) -> Vec<Value> {
    let out = c.on_node_ok(i, &["/opt/cni/bin/margay-ipam", "blocks", "--json"]);
    serde_json::from_str::<Vec<Value>>(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// Pods of a Deployment spread over three nodes get distinct addresses,
/// each from a block the API gives its own node; pods on different nodes
/// reach each other with their own address as the source; every node's
/// store agrees with the API; the agent is ready and reports its blocks
/// and the dataplane's counters on the node's address.
#[test]
fn pods_on_three_nodes_get_addresses_of_their_nodes_blocks_and_talk_across() {
    require_root!(pods_on_three_nodes_get_addresses_of_their_nodes_blocks_and_talk_across);
    let c = KubeCluster::up("agt", &["--nodes", "3"]);
    let pool = pod_cidr(&c);
    c.apply(&web_across_nodes("web", 6));
    let pods = running_pods(&c, "web", 6);

    let ips: BTreeSet<Ipv4Addr> = pods.iter().map(|p| p.ip).collect();
    assert_eq!(ips.len(), 6, "addresses not distinct: {pods:?}");
    let blocks = api_blocks(&c);
    assert_disjoint(&blocks);
    for p in &pods {
        assert!(pool.contains(p.ip), "{p:?} outside {pool}");
        let b = blocks
            .iter()
            .find(|b| b.cidr.contains(p.ip.into()))
            .unwrap_or_else(|| panic!("{p:?} is in no IPAMBlock: {blocks:?}"));
        assert_eq!(b.node, p.node, "{p:?} has an address of {b:?}");
    }
    let nodes: BTreeSet<&str> = pods.iter().map(|p| p.node.as_str()).collect();
    assert_eq!(
        nodes.len(),
        3,
        "the pods spread over the three nodes: {pods:?}"
    );

    // Across nodes, both ways, the server seeing the client pod itself.
    let one_per_node: BTreeMap<&str, &Pod> = pods.iter().map(|p| (p.node.as_str(), p)).collect();
    for from in one_per_node.values() {
        for to in one_per_node.values().filter(|p| p.node != from.node) {
            let seen = seen_address(&c, from, SocketAddrV4::new(to.ip, PORT))
                .unwrap_or_else(|e| panic!("{} → {}: {e}", from.name, to.name));
            assert_eq!(seen, from.ip.to_string(), "{} → {}", from.name, to.name);
        }
    }

    for i in 0..3 {
        let node = c.node_name(i).to_string();
        let held: BTreeSet<String> = blocks
            .iter()
            .filter(|b| b.node == node)
            .map(|b| b.cidr.to_string())
            .collect();
        let store = node_blocks(&c, i);
        let stored: BTreeSet<String> = store
            .iter()
            .map(|b| b["cidr"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(
            stored, held,
            "node {i}'s store is what the API gives it: {store:?}"
        );
        for b in &store {
            assert_eq!(b["api"], "held by this node", "{b}");
            assert!(b.get("fenced").is_none(), "{b}");
        }

        let addr = format!("{}:9091", c.env(&format!("NODE_IP_{i}")));
        assert_eq!(http_get(&c, i, &addr, "/readyz").unwrap(), "ok\n");
        // The agent reads the store on its passes, which a pod's coming
        // triggers: its figures follow the ADDs within a moment.
        let pods_here = pods.iter().filter(|p| p.node == node).count() as f64;
        let metrics = wait_for("the agent's IPAM figures", Duration::from_secs(15), || {
            let metrics = http_get(&c, i, &addr, "/metrics")?;
            let blocks = sample(&metrics, "margay_ipam_blocks", "ipv4");
            let used = sample(&metrics, "margay_ipam_used_addresses", "ipv4");
            if blocks == Some(held.len() as f64) && used >= Some(pods_here) {
                Ok(metrics)
            } else {
                Err(metrics)
            }
        });
        assert!(
            sample(&metrics, "margay_dataplane_packets_total", "from_pod") > Some(0.0),
            "{metrics}"
        );
        assert!(
            http_get(&c, i, "127.0.0.2:9091", "/livez").is_err(),
            "only the node's own address serves"
        );
    }
}

/// A node on another subnet (another rack, routed, no shared L2) is
/// reached through the VXLAN tunnel, one on the same subnet directly, over
/// IPv4 and IPv6 (the cluster is dual-stack: IPv6 goes via the peer's IPv6
/// address, or through the IPv4 tunnel), and pods on all three talk with
/// their own addresses of either family as the source.
#[test]
fn a_node_on_another_subnet_is_reached_through_the_tunnel() {
    require_root!(a_node_on_another_subnet_is_reached_through_the_tunnel);
    let c = KubeCluster::up(
        "agx",
        &[
            "--nodes",
            "3",
            "--remote-nodes",
            "1",
            "--dual-stack",
            "--margay-config",
            "mtu=1450",
        ],
    );
    c.apply(&web_across_nodes("web", 3));
    let pods = running_pods(&c, "web", 3);
    let blocks = api_blocks(&c);
    let routes = c.on_node_ok(0, &["ip", "route", "show", "proto", "77"])
        + &c.on_node_ok(0, &["ip", "-6", "route", "show", "proto", "77"]);
    for b in blocks.iter().filter(|b| b.node != c.node_name(0)) {
        let via = match (b.node == c.node_name(1), b.cidr.is_ipv4()) {
            (true, true) => format!("via {} dev eth0", c.env("NODE_IP_1")),
            (true, false) => format!("via {} dev eth0", c.env("NODE_IP6_1")),
            (false, _) => format!("dst {} ttl 64 tos 0 dev margay-vx", c.env("NODE_IP_2")),
        };
        let line = routes
            .lines()
            .find(|l| l.starts_with(&format!("{} ", b.cidr)))
            .unwrap_or_else(|| panic!("no route to {b:?}: {routes}"));
        assert!(line.contains(&via), "{b:?}: {line}");
    }
    for from in &pods {
        for to in pods.iter().filter(|p| p.node != from.node) {
            let to6 = to.ip6.expect("a dual-stack pod has an IPv6 address");
            let from6 = from.ip6.expect("a dual-stack pod has an IPv6 address");
            for (to, from_ip) in [
                (SocketAddr::from((to.ip, PORT)), from.ip.to_string()),
                (SocketAddr::from((to6, PORT)), from6.to_string()),
            ] {
                let seen = seen_address(&c, from, to)
                    .unwrap_or_else(|e| panic!("{} ({}) → {to}: {e}", from.name, from.node));
                assert_eq!(seen, from_ip, "{} → {to}", from.name);
            }
        }
    }
}

/// Eight agents claim blocks of one pool at the same moment, beside the
/// three real nodes: no block is held twice, every claimant's store holds
/// exactly what the API gives it. One of them killed with SIGKILL in the
/// middle of its claims and started again leaks nothing: whatever it had
/// claimed is in its store after the restart, and nothing is held twice.
#[test]
fn eight_claimants_at_once_hold_no_block_twice_even_when_one_is_killed() {
    require_root!(eight_claimants_at_once_hold_no_block_twice_even_when_one_is_killed);
    let c = KubeCluster::up("agc", &["--nodes", "3"]);
    let before = api_blocks(&c).len();
    assert!(before >= 3, "each real node holds a block: {before}");
    // Seven blocks' worth of headroom each: 56 of the pool's 64 blocks,
    // all wanted at once, from the lowest free ones up.
    let pool = pod_cidr(&c).to_string();
    let started = Instant::now();
    let mut claimants: Vec<HostAgent> = (0..8)
        .map(|i| HostAgent::start(&c, &format!("claimant-{i}"), &[&pool], 26, 7 * 62))
        .collect();
    // Killed in the middle of its claims: after its first, before its seventh.
    wait_for("claimant-3's first claim", POD_WAIT, || {
        if claimants[3].log().contains("claimed a block") {
            Ok(())
        } else {
            Err(claimants[3].log())
        }
    });
    claimants[3].kill();
    let settle =
        |a: &HostAgent| wait_for(&format!("{} settled", a.node()), POD_WAIT, || a.settled(&c));
    let mut settled = BTreeMap::new();
    for a in claimants.iter().filter(|a| a.is_running()) {
        settled.insert(a.node().to_string(), settle(a));
    }
    let took = started.elapsed();
    claimants[3].restart();
    settled.insert(claimants[3].node().to_string(), settle(&claimants[3]));

    let all = api_blocks(&c);
    assert_disjoint(&all);
    for (node, blocks) in &settled {
        assert_eq!(blocks.len(), 7, "{node}: {blocks:?}");
    }
    let lost_races: usize = claimants.iter().map(HostAgent::lost_races).sum();
    eprintln!(
        "8 claimants: {} blocks claimed in {took:?} ({:.0} claims/s), {lost_races} lost races",
        all.len() - before,
        (all.len() - before) as f64 / took.as_secs_f64()
    );
    for i in 0..3 {
        let node = c.node_name(i).to_string();
        assert!(
            all.iter().any(|b| b.node == node),
            "{node} still holds its blocks"
        );
    }

    // Less headroom wanted: the empty blocks beyond it go back to the pool,
    // from the highest down, until one block's worth is left.
    claimants[0].restart_with(62, "1s");
    let kept = wait_for("claimant-0's empty blocks released", POD_WAIT, || {
        let kept = claimants[0].settled(&c)?;
        if kept.len() == 1 {
            Ok(kept)
        } else {
            Err(format!("{kept:?}"))
        }
    });
    let lowest = settled["claimant-0"]
        .iter()
        .map(|b| b.parse::<Ipv4Network>().unwrap())
        .min_by_key(|b| b.network())
        .unwrap();
    assert_eq!(kept.into_iter().next().unwrap(), lowest.to_string());
}

/// A hand-written IPAMBlock overlapping a held block is refused by every
/// agent (the older claim wins), and one naming a node that does not exist
/// is released after the grace period by the agent holding the Lease; an
/// address whose pod does not exist is released after its grace period,
/// and running pods' are kept; a deleted Node's blocks are released too.
#[test]
fn hand_written_blocks_are_refused_or_released_and_nothing_is_double_used() {
    require_root!(hand_written_blocks_are_refused_or_released_and_nothing_is_double_used);
    let c = KubeCluster::up(
        "agh",
        &[
            "--nodes",
            "2",
            "--margay-config",
            "ipam_node_gone_grace=10s",
            "--margay-config",
            "ipam_leak_grace=10s",
        ],
    );
    let node0 = c.node_name(0).to_string();
    let node1 = c.node_name(1).to_string();
    let held = api_blocks(&c)
        .into_iter()
        .find(|b| b.node == node0)
        .expect("node 0 holds a block");
    // The /25 around node 0's /26, given to node 1 by hand.
    let IpNetwork::V4(held4) = held.cidr else {
        panic!("a single-stack cluster's block is IPv4: {held:?}")
    };
    let wide = Ipv4Network::new(held4.network(), held4.prefix() - 1).unwrap();
    let wide = Ipv4Network::new(wide.network(), wide.prefix()).unwrap();
    let name = |n: &Ipv4Network| {
        format!(
            "{}-{}",
            n.network().to_string().replace('.', "-"),
            n.prefix()
        )
    };
    let ghost_block = {
        let pool = pod_cidr(&c);
        let last = u32::from(pool.broadcast()) - 63;
        Ipv4Network::new(Ipv4Addr::from(last), 26).unwrap()
    };
    let object = |n: &Ipv4Network, node: &str| {
        format!(
            "apiVersion: margay.dev/v1\nkind: IPAMBlock\nmetadata: {{name: {}}}\nspec: {{cidr: {n}, node: {node}}}\n",
            name(n)
        )
    };
    c.apply(&object(&wide, &node1));
    c.apply(&object(&ghost_block, "ghost"));

    wait_for("node 1 refusing the overlapping block", POD_WAIT, || {
        let blocks = node_blocks(&c, 1);
        let row = blocks.iter().find(|b| b["cidr"] == wide.to_string());
        match row.map(|b| (b["api"].as_str().unwrap_or(""), b["capacity"].as_u64())) {
            Some((api, Some(0))) if api.starts_with("invalid: ") && api.contains("overlaps") => {
                Ok(())
            }
            _ => Err(format!("{blocks:?}")),
        }
    });
    assert!(
        node_blocks(&c, 0)
            .iter()
            .any(|b| b["cidr"] == held.cidr.to_string() && b["api"] == "held by this node"),
        "node 0 keeps its block"
    );
    // Pods on node 0 still get addresses of its own block.
    c.apply(&web_across_nodes("web", 2));
    let pods = running_pods(&c, "web", 2);
    for p in &pods {
        let b = api_blocks(&c)
            .into_iter()
            .filter(|b| b.name != name(&wide))
            .find(|b| b.cidr.contains(p.ip.into()))
            .unwrap_or_else(|| panic!("{p:?} in no valid block"));
        assert_eq!(b.node, p.node);
    }

    // An address held for a pod the API never had (margay's own ADD
    // refuses such a pod: see kube_policy): released after its grace.
    let leaked = add_directly(
        &c,
        0,
        "leak",
        "K8S_POD_NAMESPACE=default;K8S_POD_NAME=never-was",
        "margay-ipam",
    );
    let allocations =
        |i: usize| c.on_node_ok(i, &["/opt/cni/bin/margay-ipam", "allocations", "--json"]);
    assert!(allocations(0).contains(&format!("\"{leaked}\"")));
    wait_for(
        "the leaked address released",
        Duration::from_secs(90),
        || {
            let now = allocations(0);
            if now.contains(&format!("\"{leaked}\"")) {
                Err(now)
            } else {
                Ok(())
            }
        },
    );
    for p in &pods {
        let i = usize::from(p.node != node0);
        assert!(
            allocations(i).contains(&format!("\"{}\"", p.ip)),
            "{p:?}: a running pod's address is kept"
        );
    }
    del_directly(&c, 0, "leak");

    wait_for(
        "the ghost's block released",
        Duration::from_secs(90),
        || {
            let left: Vec<ApiBlock> = api_blocks(&c)
                .into_iter()
                .filter(|b| b.node == "ghost")
                .collect();
            if left.is_empty() {
                Ok(())
            } else {
                Err(format!("{left:?}"))
            }
        },
    );
    assert!(
        api_blocks(&c).iter().any(|b| b.cidr == IpNetwork::V4(wide)),
        "an invalid block of a node that exists is left for its author"
    );

    // A real Node deleted (its kubelet and agent still running): its blocks
    // go after the grace period, and its agent does not claim them back.
    c.kubectl(&["delete", "node", &node1]);
    let of_node1 = || -> Vec<ApiBlock> {
        api_blocks(&c)
            .into_iter()
            .filter(|b| b.node == node1)
            .collect()
    };
    wait_for(
        "the deleted node's blocks released",
        Duration::from_secs(90),
        || {
            let left = of_node1();
            if left.is_empty() {
                Ok(())
            } else {
                Err(format!("{left:?}"))
            }
        },
    );
    std::thread::sleep(Duration::from_secs(7));
    assert_eq!(of_node1(), [], "the deleted node's agent claimed again");
    assert!(
        api_blocks(&c)
            .iter()
            .any(|b| b.cidr == held.cidr && b.node == node0),
        "node 0 keeps its block"
    );
}

/// A ping between pods on two nodes loses nothing while the agents are
/// killed and come back, and while the API server is stopped; with the API
/// away, a new pod's ADD on a node with free addresses still succeeds.
#[test]
fn agent_restarts_and_an_api_outage_disturb_no_running_pod() {
    require_root!(agent_restarts_and_an_api_outage_disturb_no_running_pod);
    let c = KubeCluster::up("agr", &["--nodes", "2"]);
    c.apply(&web_across_nodes("web", 2));
    let pods = running_pods(&c, "web", 2);
    let (a, b) = (&pods[0], &pods[1]);
    assert_ne!(a.node, b.node);
    let ping = Pinger::start(&c, a, b.ip);

    // Every agent killed at once; kubelet starts them again.
    for i in 0..2 {
        c.kill_margay_container(i, "margay-agent");
    }
    for i in 0..2 {
        let addr = format!("{}:9091", c.env(&format!("NODE_IP_{i}")));
        wait_for(&format!("node {i}'s agent ready again"), POD_WAIT, || {
            http_get(&c, i, &addr, "/readyz")
        });
    }

    // The API server stopped: nothing answers the agents.
    let apiserver = c.pid_of("kube-apiserver").expect("the apiserver runs");
    let stopped = Stopped::process(apiserver);
    std::thread::sleep(Duration::from_secs(3));
    let added = add_directly(&c, 0, "outage", "", "margay");
    assert!(
        pod_cidr(&c).contains(added),
        "ADD without the API got {added}"
    );
    drop(stopped);
    wait_for("the API back", POD_WAIT, || {
        c.try_kubectl(&["get", "--raw", "/readyz"])
            .success
            .then_some(())
            .ok_or_else(|| "not ready".to_string())
    });
    del_directly(&c, 0, "outage");

    let (sent, lost) = ping.stop();
    assert!(sent >= 20, "the ping ran: {sent} sent");
    assert_eq!(lost, 0, "{lost} of {sent} pings lost");
}

/// A ping from a pod (its own container, so no `kubectl exec` stream that
/// an API outage would cut) counted from its log.
struct Pinger<'a> {
    c: &'a KubeCluster,
    pod: String,
}

impl<'a> Pinger<'a> {
    fn start(c: &'a KubeCluster, from: &Pod, to: Ipv4Addr) -> Pinger<'a> {
        let pod = format!("pinger-{}", std::process::id());
        c.apply(&busybox_pod(
            &pod,
            &from.node,
            &format!(r#" ["ping", "-i", "0.2", "{to}"]"#),
        ));
        wait_for("the pinger running", POD_WAIT, || {
            let log = c.try_kubectl(&["logs", &pod]);
            if log.stdout.contains("seq=") {
                Ok(())
            } else {
                Err(log.stderr)
            }
        });
        Pinger { c, pod }
    }

    /// Stops it: (sent, lost), from the sequence numbers it printed.
    fn stop(self) -> (u64, u64) {
        let log = self.c.kubectl(&["logs", &self.pod]);
        let seqs: Vec<u64> = log
            .lines()
            .filter_map(|l| l.split("seq=").nth(1)?.split(' ').next()?.parse().ok())
            .collect();
        let last = *seqs.iter().max().unwrap_or(&0);
        // The last few may still be in flight.
        let expected: BTreeSet<u64> = (0..last.saturating_sub(2)).collect();
        let got: BTreeSet<u64> = seqs.into_iter().collect();
        let lost = expected.difference(&got).count() as u64;
        (last, lost)
    }
}

impl Drop for Pinger<'_> {
    fn drop(&mut self) {
        let _ = self
            .c
            .try_kubectl(&["delete", "pod", &self.pod, "--wait=false"]);
    }
}

/// CNI ADD of `plugin` (margay, or its IPAM alone) on node `i` as its
/// runtime would run it (the installed conflist and binaries), for a
/// namespace `name` made there, with `CNI_ARGS` `args`; the address it got.
fn add_directly(c: &KubeCluster, i: usize, name: &str, args: &str, plugin: &str) -> Ipv4Addr {
    let script = format!(
        "set -e; ip netns add {name}; \
         jq '.plugins[0] + {{name: .name, cniVersion: .cniVersion}}' /etc/cni/net.d/10-margay.conflist | \
         CNI_COMMAND=ADD CNI_CONTAINERID={name} CNI_NETNS=/run/netns/{name} CNI_IFNAME=eth0 \
         CNI_ARGS='{args}' CNI_PATH=/opt/cni/bin /opt/cni/bin/{plugin}"
    );
    let out = c.on_node_ok(i, &["bash", "-c", &script]);
    let result: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    result["ips"][0]["address"]
        .as_str()
        .and_then(|a| a.split('/').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no address in {result}"))
}

fn del_directly(c: &KubeCluster, i: usize, name: &str) {
    let script = format!(
        "set -e; \
         jq '.plugins[0] + {{name: .name, cniVersion: .cniVersion}}' /etc/cni/net.d/10-margay.conflist | \
         CNI_COMMAND=DEL CNI_CONTAINERID={name} CNI_NETNS=/run/netns/{name} CNI_IFNAME=eth0 \
         CNI_PATH=/opt/cni/bin /opt/cni/bin/margay; ip netns del {name}"
    );
    c.on_node_ok(i, &["bash", "-c", &script]);
}
