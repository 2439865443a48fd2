//! A small cluster on one machine: nodes are network namespaces, each with
//! its own Margay (the CNI plugin run inside it, a BPF root, an IPAM
//! store), on one L2 segment (a bridge in a namespace of its own), with an
//! external client beside them. For the multi-node tests, the demo and the
//! benchmarks.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::process::Command;

use serde_json::{Value, json};
use tempfile::TempDir;

use crate::bins::bin;
use crate::bpf::BpfRoot;
use crate::driver::{Runtime, first_ipv4};
use crate::netns::{NetNs, unique_name};

/// One L2 segment: a bridge in a namespace of its own.
pub struct Lan {
    pub ns: NetNs,
}

impl Default for Lan {
    fn default() -> Self {
        Self::new()
    }
}

impl Lan {
    pub fn new() -> Lan {
        let ns = NetNs::new("lan");
        ns.run_ok(&["ip", "link", "add", "br0", "type", "bridge"]);
        ns.run_ok(&["ip", "link", "set", "br0", "up"]);
        // A switch, not a firewall: a host with br_netfilter loaded (Docker
        // loads it) would run every frame crossing the bridge through
        // iptables and conntrack, a cost no real LAN has (it cut DSR
        // throughput in `bench nodeport` by ~8%). Absent module: nothing
        // to turn off.
        for t in ["iptables", "ip6tables", "arptables"] {
            let _ = ns.run(&["sysctl", "-qw", &format!("net.bridge.bridge-nf-call-{t}=0")]);
        }
        Lan { ns }
    }

    /// Plugs `host` into the bridge as its `eth0` with `addr`/24.
    pub fn plug(&self, host: &NetNs, addr: Ipv4Addr) {
        let port = unique_name("p");
        host.add_eth0(Some(&self.ns), &port);
        self.ns
            .run_ok(&["ip", "link", "set", &port, "master", "br0", "up"]);
        host.run_ok(&["ip", "addr", "add", &format!("{addr}/24"), "dev", "eth0"]);
        host.run_ok(&["ip", "link", "set", "eth0", "up"]);
    }

    /// Gives `host`, plugged in, `addr`/64 on its `eth0` too, usable at
    /// once (no duplicate address detection: the test owns the segment).
    pub fn plug6(&self, host: &NetNs, addr: Ipv6Addr) {
        host.run_ok(&[
            "ip",
            "addr",
            "add",
            &format!("{addr}/64"),
            "dev",
            "eth0",
            "nodad",
        ]);
    }

    /// A node's namespace on this segment at `addr`: forwarding on, no
    /// reverse-path filter, and like any node a default route (the pods'
    /// gateway 169.254.1.1 is answered by proxy ARP only for addresses the
    /// node can route).
    pub fn node(&self, addr: Ipv4Addr) -> NetNs {
        let ns = NetNs::new("node");
        self.plug(&ns, addr);
        ns.run_ok(&["ip", "route", "add", "default", "dev", "eth0"]);
        for (key, value) in [
            ("net/ipv4/ip_forward", "1"),
            ("net/ipv4/conf/all/rp_filter", "0"),
            ("net/ipv4/conf/default/rp_filter", "0"),
            ("net/ipv6/conf/all/forwarding", "1"),
        ] {
            ns.run_ok(&["sh", "-c", &format!("echo {value} > /proc/sys/{key}")]);
        }
        ns
    }
}

/// Writes `dir/name`, an executable that runs `target` inside `node`'s
/// network namespace, as a CNI plugin on that machine would run. Through
/// `nsenter`, which unlike `ip netns exec` keeps /sys (and the BPF
/// filesystem under it).
///
/// # Errors
/// The file cannot be written.
pub fn in_node_wrapper(
    dir: &std::path::Path,
    node: &NetNs,
    name: &str,
    target: &std::path::Path,
) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let wrapper = dir.join(name);
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexec nsenter --net=/var/run/netns/{} {} \"$@\"\n",
            node.name(),
            target.display()
        ),
    )?;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755))
}

/// A node: a namespace where Margay's CNI plugin runs, as kubelet would
/// run it on that machine.
pub struct ClusterNode {
    pub ns: NetNs,
    pub addr: Ipv4Addr,
    pub pool: &'static str,
    /// Its IPv6 pod CIDR, when its pods are dual-stack.
    pub pool6: Option<&'static str>,
    /// Its IPv6 address on the LAN, when it has one.
    pub addr6: Option<Ipv6Addr>,
    pub dir: TempDir,
    pub bpf: BpfRoot,
    pub rt: Runtime,
}

impl ClusterNode {
    pub fn new(lan: &Lan, addr: Ipv4Addr, pool: &'static str) -> ClusterNode {
        Self::with_pools(lan, addr, &[pool])
    }

    /// A node whose pods get an address from each of `pools` (the first
    /// is its IPv4 pod CIDR, `pool`, the second its IPv6 one, `pool6`);
    /// IPv6 forwarding is on, as on every dual-stack node.
    pub fn with_pools(lan: &Lan, addr: Ipv4Addr, pools: &[&'static str]) -> ClusterNode {
        let (pool, pool6) = (pools[0], pools.get(1).copied());
        let ns = lan.node(addr);
        let dir = tempfile::tempdir().unwrap();
        let bpf = BpfRoot::new();
        let bin_dir = dir.path().join("bin");
        std::fs::create_dir_all(&bin_dir).unwrap();
        in_node_wrapper(&bin_dir, &ns, "margay", &bin("margay")).unwrap();
        std::os::unix::fs::symlink(bin("margay-ipam"), bin_dir.join("margay-ipam")).unwrap();
        let conflist = json!({"cniVersion": "1.1.0", "name": unique_name("mgcl"), "plugins": [{
            "type": "margay", "dataplane": "bpf", "nodename": ns.name(),
            "bpf_root": bpf.path(), "bpf_log_level": "debug",
            "ipam": {"type": "margay-ipam", "pools": pools,
                     "data_dir": dir.path().join("ipam")}}]});
        let rt = Runtime::new(&conflist, vec![bin_dir], &dir.path().join("cache"));
        ClusterNode {
            ns,
            addr,
            pool,
            pool6,
            addr6: None,
            dir,
            bpf,
            rt,
        }
    }

    /// A pod on this node: its namespace and address.
    pub fn pod(&self, tag: &str) -> Result<(NetNs, Ipv4Addr), String> {
        let (pod, result) = self.add_pod(tag)?;
        let ip = first_ipv4(&result).ok_or("the ADD result has no IPv4 address")?;
        Ok((pod, ip))
    }

    /// A pod on this node: its namespace and the ADD result.
    pub fn add_pod(&self, tag: &str) -> Result<(NetNs, Value), String> {
        let pod = NetNs::new(tag);
        let result = self
            .rt
            .add(&unique_name("cid"), &pod.path(), "eth0", "")
            .map_err(|e| format!("ADD on {}: {e}", self.ns.name()))?;
        Ok((pod, result))
    }

    /// `margayctl` inside the node's namespace; its stdout.
    pub fn ctl(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new("nsenter")
            .arg(format!("--net=/var/run/netns/{}", self.ns.name()))
            .arg(bin("margayctl"))
            .arg("--bpf-root")
            .arg(self.bpf.path())
            .args(args)
            .output()
            .map_err(|e| format!("nsenter: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "margayctl {args:?} on {}: {}",
                self.ns.name(),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `margayctl service apply` (`what` "services") or `node peers`
    /// ("peers") of `value`, written to a file.
    pub fn apply(&self, what: &str, value: Value) -> Result<String, String> {
        let file = self.dir.path().join(format!("{}.json", unique_name(what)));
        std::fs::write(&file, value.to_string()).unwrap();
        let sub = if what == "peers" { "node" } else { "service" };
        let verb = if what == "peers" { "peers" } else { "apply" };
        self.ctl(&[sub, verb, "-f", file.to_str().unwrap()])
    }

    /// The reverse translations this node holds, as `nat dump` lists them.
    pub fn reverse_translations(&self) -> Result<Vec<Value>, String> {
        let all: Vec<Value> = serde_json::from_str(&self.ctl(&["--json", "nat", "dump"])?)
            .map_err(|e| e.to_string())?;
        Ok(all
            .into_iter()
            .filter(|r| r["direction"] == "reverse")
            .collect())
    }
}

impl Drop for ClusterNode {
    fn drop(&mut self) {
        for cid in self.rt.cached_container_ids("eth0") {
            let _ = self.rt.del(&cid, None, "eth0", "");
        }
    }
}

/// `node` as a peer entry of a peers file.
pub fn peer(node: &ClusterNode, encap: bool) -> Value {
    let pod_cidrs: Vec<&str> = std::iter::once(node.pool).chain(node.pool6).collect();
    let mut peer = json!({"name": node.ns.name(), "address": node.addr, "pod_cidrs": pod_cidrs,
                          "encap": encap});
    if let Some(a) = node.addr6 {
        peer["address6"] = json!(a);
    }
    peer
}

/// Two nodes on one LAN with a pod each, knowing each other; an external
/// client on the LAN.
pub struct Cluster {
    pub a: ClusterNode,
    pub b: ClusterNode,
    pub client: NetNs,
    pub client_addr: Ipv4Addr,
    /// The nodes' and the client's IPv6 addresses on the LAN (a dual-stack
    /// cluster's), in that order.
    pub lan6: Option<[Ipv6Addr; 3]>,
    _lan: Lan,
}

impl Cluster {
    /// Nodes at 10.247.`subnet`.1 and .2, the client at .100; each node's
    /// pods from a /24 of 10.248 of its own.
    pub fn new(subnet: u8) -> Cluster {
        Self::build(subnet, false)
    }

    /// [`Cluster::new`], dual-stack: the nodes at fd00:247:`subnet`::1 and
    /// ::2 too, the client at ::100, pods with an address of each family
    /// (IPv6 from fd00:248:1::/64 and fd00:248:2::/64).
    pub fn dual_stack(subnet: u8) -> Cluster {
        Self::build(subnet, true)
    }

    fn build(subnet: u8, dual_stack: bool) -> Cluster {
        let lan = Lan::new();
        let at = |host: u8| Ipv4Addr::new(10, 247, subnet, host);
        let pools: [&'static str; 2] = match subnet {
            1 => ["10.248.1.0/24", "10.248.2.0/24"],
            2 => ["10.248.3.0/24", "10.248.4.0/24"],
            3 => ["10.248.5.0/24", "10.248.6.0/24"],
            4 => ["10.248.7.0/24", "10.248.8.0/24"],
            _ => ["10.248.9.0/24", "10.248.10.0/24"],
        };
        let pools6 = ["fd00:248:1::/64", "fd00:248:2::/64"];
        let pools_of = |k: usize| -> Vec<&'static str> {
            std::iter::once(pools[k])
                .chain(dual_stack.then_some(pools6[k]))
                .collect()
        };
        let mut a = ClusterNode::with_pools(&lan, at(1), &pools_of(0));
        let mut b = ClusterNode::with_pools(&lan, at(2), &pools_of(1));
        let client = NetNs::new("ext");
        lan.plug(&client, at(100));
        let lan6 = dual_stack.then(|| {
            let at6 = |host: u16| Ipv6Addr::new(0xfd00, 0x247, subnet.into(), 0, 0, 0, 0, host);
            let lan6 = [at6(1), at6(2), at6(0x100)];
            for (host, addr) in [&a.ns, &b.ns, &client].into_iter().zip(lan6) {
                lan.plug6(host, addr);
            }
            (a.addr6, b.addr6) = (Some(lan6[0]), Some(lan6[1]));
            lan6
        });
        Cluster {
            a,
            b,
            client,
            client_addr: at(100),
            lan6,
            _lan: lan,
        }
    }

    /// Each node told of the other (`encap`: through the tunnel).
    /// Makes `eth0` each node's data interface (`margayctl node attach`),
    /// NodePorts reaching other nodes in `mode` (`tunnel` or `dsr`).
    pub fn attach_data_ifaces(&self, mode: &str) -> Result<(), String> {
        for node in [&self.a, &self.b] {
            node.ctl(&["node", "attach", "--iface", "eth0", "--external-mode", mode])?;
        }
        Ok(())
    }

    /// Applies `value` as `what` (services, peers) on both nodes, as a
    /// controller running on each would.
    pub fn apply_on_both(&self, what: &str, value: Value) -> Result<(), String> {
        self.a.apply(what, value.clone())?;
        self.b.apply(what, value)?;
        Ok(())
    }

    pub fn know_each_other(&self, encap: bool) -> Result<(), String> {
        self.a
            .apply("peers", json!({"peers": [peer(&self.b, encap)]}))?;
        self.b
            .apply("peers", json!({"peers": [peer(&self.a, encap)]}))?;
        Ok(())
    }
}
