//! Two nodes and an external client: each node a network namespace with
//! its own Margay (CNI plugin run inside it, BPF root, IPAM store), all on
//! one L2 segment (a bridge in a namespace of its own). Pods on both
//! nodes; services applied on both, as a controller would; NodePort
//! traffic from the client to a backend on the other node, in tunnel and
//! in DSR mode, the backend logging the client's own address.

use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command;

use margay_tests::bins::bin;
use margay_tests::bpf::BpfRoot;
use margay_tests::driver::{Runtime, first_ipv4};
use margay_tests::netns::{NetNs, unique_name};
use margay_tests::require_root;
use margay_tests::traffic::{self, TcpServer};
use serde_json::{Value, json};
use tempfile::TempDir;

/// One L2 segment: a bridge in a namespace of its own.
struct Lan {
    ns: NetNs,
}

impl Lan {
    fn new() -> Lan {
        let ns = NetNs::new("lan");
        ns.run_ok(&["ip", "link", "add", "br0", "type", "bridge"]);
        ns.run_ok(&["ip", "link", "set", "br0", "up"]);
        Lan { ns }
    }

    /// Plugs `host` into the bridge as its `eth0` with `addr`/24.
    fn plug(&self, host: &NetNs, addr: Ipv4Addr) {
        let port = unique_name("p");
        self.ns.run_ok(&[
            "ip",
            "link",
            "add",
            &port,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            host.name(),
        ]);
        self.ns
            .run_ok(&["ip", "link", "set", &port, "master", "br0", "up"]);
        host.run_ok(&["ip", "addr", "add", &format!("{addr}/24"), "dev", "eth0"]);
        host.run_ok(&["ip", "link", "set", "eth0", "up"]);
    }
}

/// A node: a namespace where Margay's CNI plugin runs, as kubelet would
/// run it on that machine.
struct ClusterNode {
    ns: NetNs,
    addr: Ipv4Addr,
    pool: &'static str,
    dir: TempDir,
    bpf: BpfRoot,
    rt: Runtime,
}

impl ClusterNode {
    fn new(lan: &Lan, addr: Ipv4Addr, pool: &'static str) -> ClusterNode {
        let ns = NetNs::new("node");
        lan.plug(&ns, addr);
        // Like any node, a default route: the pods' gateway 169.254.1.1 is
        // answered by proxy ARP only for addresses the node can route.
        ns.run_ok(&["ip", "route", "add", "default", "dev", "eth0"]);
        for sysctl in [
            "net.ipv4.ip_forward=1",
            "net.ipv4.conf.all.rp_filter=0",
            "net.ipv4.conf.default.rp_filter=0",
        ] {
            ns.run_ok(&["sysctl", "-qw", sysctl]);
        }
        let dir = tempfile::tempdir().unwrap();
        let bpf = BpfRoot::new();
        // The plugin runs inside the node's namespace; `nsenter`, unlike
        // `ip netns exec`, keeps /sys (and the BPF filesystem under it).
        let bin_dir = dir.path().join("bin");
        std::fs::create_dir_all(&bin_dir).unwrap();
        let wrapper = bin_dir.join("margay");
        std::fs::write(
            &wrapper,
            format!(
                "#!/bin/sh\nexec nsenter --net=/var/run/netns/{} {} \"$@\"\n",
                ns.name(),
                bin("margay").display()
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::symlink(bin("margay-ipam"), bin_dir.join("margay-ipam")).unwrap();
        let conflist = json!({"cniVersion": "1.1.0", "name": unique_name("mgcl"), "plugins": [{
            "type": "margay", "dataplane": "bpf", "nodename": ns.name(),
            "bpf_root": bpf.path(), "bpf_log_level": "debug",
            "ipam": {"type": "margay-ipam", "pools": [pool],
                     "data_dir": dir.path().join("ipam")}}]});
        let rt = Runtime::new(&conflist, vec![bin_dir], &dir.path().join("cache"));
        ClusterNode {
            ns,
            addr,
            pool,
            dir,
            bpf,
            rt,
        }
    }

    fn pod(&self, tag: &str) -> (NetNs, Ipv4Addr) {
        let pod = NetNs::new(tag);
        let result = self
            .rt
            .add(&unique_name("cid"), &pod.path(), "eth0", "")
            .unwrap_or_else(|e| panic!("ADD on {}: {e}", self.ns.name()));
        (pod, first_ipv4(&result).unwrap())
    }

    /// `margayctl` inside the node's namespace; its stdout.
    fn ctl(&self, args: &[&str]) -> String {
        let out = Command::new("nsenter")
            .arg(format!("--net=/var/run/netns/{}", self.ns.name()))
            .arg(bin("margayctl"))
            .arg("--bpf-root")
            .arg(self.bpf.path())
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "margayctl {args:?} on {}: {}",
            self.ns.name(),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn apply(&self, what: &str, value: Value) -> String {
        let file = self.dir.path().join(format!("{}.json", unique_name(what)));
        std::fs::write(&file, value.to_string()).unwrap();
        let sub = if what == "peers" { "node" } else { "service" };
        let verb = if what == "peers" { "peers" } else { "apply" };
        self.ctl(&[sub, verb, "-f", file.to_str().unwrap()])
    }

    /// The reverse translations this node holds, as `nat dump` lists them.
    fn reverse_translations(&self) -> Vec<Value> {
        let all: Vec<Value> = serde_json::from_str(&self.ctl(&["--json", "nat", "dump"])).unwrap();
        all.into_iter()
            .filter(|r| r["direction"] == "reverse")
            .collect()
    }
}

impl Drop for ClusterNode {
    fn drop(&mut self) {
        for cid in self.rt.cached_container_ids("eth0") {
            let _ = self.rt.del(&cid, None, "eth0", "");
        }
    }
}

fn peer(node: &ClusterNode, encap: bool) -> Value {
    json!({"name": node.ns.name(), "address": node.addr, "pod_cidrs": [node.pool], "encap": encap})
}

/// Two nodes on one LAN with a pod each, knowing each other; an external
/// client on the LAN.
struct Cluster {
    a: ClusterNode,
    b: ClusterNode,
    client: NetNs,
    client_addr: Ipv4Addr,
    _lan: Lan,
}

impl Cluster {
    fn new(subnet: u8) -> Cluster {
        let lan = Lan::new();
        let at = |host: u8| Ipv4Addr::new(10, 247, subnet, host);
        let pools: [&'static str; 2] = match subnet {
            1 => ["10.248.1.0/24", "10.248.2.0/24"],
            2 => ["10.248.3.0/24", "10.248.4.0/24"],
            _ => ["10.248.5.0/24", "10.248.6.0/24"],
        };
        let a = ClusterNode::new(&lan, at(1), pools[0]);
        let b = ClusterNode::new(&lan, at(2), pools[1]);
        let client = NetNs::new("ext");
        lan.plug(&client, at(100));
        Cluster {
            a,
            b,
            client,
            client_addr: at(100),
            _lan: lan,
        }
    }

    fn know_each_other(&self, encap: bool) {
        self.a
            .apply("peers", json!({"peers": [peer(&self.b, encap)]}));
        self.b
            .apply("peers", json!({"peers": [peer(&self.a, encap)]}));
    }
}

#[test]
fn pods_reach_pods_and_cluster_ips_on_the_other_node_routed_or_tunnelled() {
    require_root!(pods_reach_pods_and_cluster_ips_on_the_other_node_routed_or_tunnelled);
    let c = Cluster::new(1);
    let (pod_a, ip_a) = c.a.pod("pa");
    let (pod_b, ip_b) = c.b.pod("pb");
    for node in [&c.a, &c.b] {
        // Pods' first ADD loaded the programs; now the node-level part.
        node.ctl(&["node", "attach", "--iface", "eth0"]);
    }
    let server = TcpServer::start(Some(&pod_b), "b");
    let vip = Ipv4Addr::new(10, 96, 30, 10);
    let services = json!({"services": [{"name": "x/web", "vip": vip, "port": 80,
        "backends": [format!("{ip_b}:{}", server.port)]}]});
    c.a.apply("services", services.clone());
    c.b.apply("services", services);

    for encap in [false, true] {
        c.know_each_other(encap);
        let direct = traffic::request(Some(&pod_a), SocketAddr::from((ip_b, server.port)))
            .unwrap_or_else(|e| panic!("pod to pod across nodes (encap {encap}): {e}"));
        assert_eq!(direct, format!("b {ip_a}"));
        let via_service = traffic::request(Some(&pod_a), SocketAddr::from((vip, 80)))
            .unwrap_or_else(|e| panic!("ClusterIP to the other node (encap {encap}): {e}"));
        assert_eq!(via_service, format!("b {ip_a}"));
    }
    let routes = c.a.ns.run_ok(&["ip", "route", "show", "proto", "77"]);
    assert_eq!(
        routes.trim(),
        "",
        "tunnelled peers need no routes: {routes}"
    );
    c.know_each_other(false);
    let routes = c.a.ns.run_ok(&["ip", "route", "show", "proto", "77"]);
    assert!(
        routes.contains(&format!("{} via {}", c.b.pool, c.b.addr)),
        "{routes}"
    );
    c.a.apply("peers", json!({"peers": []}));
    assert_eq!(
        c.a.ns
            .run_ok(&["ip", "route", "show", "proto", "77"])
            .trim(),
        ""
    );
}

/// The client reaches node A's NodePort; the only backend is on node B.
fn node_port_to_the_other_node(mode: &str, subnet: u8) {
    let c = Cluster::new(subnet);
    let (_pod_a, _) = c.a.pod("pa");
    let (pod_b, ip_b) = c.b.pod("pb");
    for node in [&c.a, &c.b] {
        node.ctl(&["node", "attach", "--iface", "eth0", "--external-mode", mode]);
    }
    c.know_each_other(false);
    let server = TcpServer::start(Some(&pod_b), "b");
    let services = json!({"services": [
        {"name": "x/web", "vip": "10.96.31.10", "port": 80, "node_port": 30080,
         "backends": [format!("{ip_b}:{}", server.port)]},
        {"name": "x/local", "vip": "10.96.31.10", "port": 81, "node_port": 30081,
         "external_traffic_policy": "local", "backends": [format!("{ip_b}:{}", server.port)]},
    ]});
    c.a.apply("services", services.clone());
    c.b.apply("services", services);

    for _ in 0..5 {
        let answer = traffic::request(Some(&c.client), SocketAddr::from((c.a.addr, 30080)))
            .unwrap_or_else(|e| panic!("NodePort on A, backend on B ({mode}): {e}"));
        assert_eq!(
            answer,
            format!("b {}", c.client_addr),
            "the backend on the other node sees the client's own address"
        );
    }
    // Who answered the client: in DSR mode node B itself, as A's NodePort.
    let answered_by_b =
        c.b.reverse_translations()
            .iter()
            .any(|r| r["translated"] == format!("{}:30080", c.a.addr));
    assert_eq!(
        answered_by_b,
        mode == "dsr",
        "{mode}: {:?}",
        c.b.reverse_translations()
    );
    assert!(
        traffic::request(Some(&c.client), SocketAddr::from((c.a.addr, 30081))).is_err(),
        "externalTrafficPolicy: Local on a node without a local backend refuses"
    );
    assert_eq!(
        traffic::request(Some(&c.client), SocketAddr::from((c.b.addr, 30081))).unwrap(),
        format!("b {}", c.client_addr),
        "and the node with one serves"
    );
}

#[test]
fn node_ports_reach_a_backend_on_another_node_through_the_tunnel() {
    require_root!(node_ports_reach_a_backend_on_another_node_through_the_tunnel);
    node_port_to_the_other_node("tunnel", 2);
}

#[test]
fn node_ports_reach_a_backend_on_another_node_which_answers_directly_in_dsr_mode() {
    require_root!(node_ports_reach_a_backend_on_another_node_which_answers_directly_in_dsr_mode);
    node_port_to_the_other_node("dsr", 3);
}
