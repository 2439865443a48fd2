//! IPv6 in the bpf dataplane, end to end: dual-stack pods on a node (a
//! namespace of its own, with IPv6 forwarding on as on every dual-stack
//! node), real traffic between them, anti-spoofing, policy, neighbour
//! discovery and duplicate address detection through the programs.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use margay_ebpf::abi;
use margay_ebpf::{host_lb, inspect, registry};
use margay_tests::bins::bin;
use margay_tests::cgroup::TestCgroup;
use margay_tests::cluster::{ClusterNode, Lan};
use margay_tests::driver::{first_ipv4, first_ipv6};
use margay_tests::netns::NetNs;
use margay_tests::require_root;
use margay_tests::traffic::{self, TcpServer, UdpServer};
use serde_json::Value;

/// A dual-stack pod: its namespace and addresses.
struct Pod {
    ns: NetNs,
    v4: Ipv4Addr,
    v6: Ipv6Addr,
    host_ifname: String,
}

/// One node with dual-stack pools `v4` and `v6` (unique to the test).
struct Node {
    node: ClusterNode,
    _lan: Lan,
}

impl Node {
    fn new(v4: &'static str, v6: &'static str) -> Node {
        let lan = Lan::new();
        let node = ClusterNode::with_pools(&lan, Ipv4Addr::new(10, 217, 100, 1), &[v4, v6]);
        Node { node, _lan: lan }
    }

    fn pod(&self, tag: &str) -> Pod {
        let (ns, result) = self.node.add_pod(tag).unwrap();
        let pod = Pod {
            v4: first_ipv4(&result).expect("an IPv4 address"),
            v6: first_ipv6(&result).expect("an IPv6 address"),
            host_ifname: host_ifname(&result),
            ns,
        };
        // Usable at once: no duplicate address detection holds the pod's
        // address or its gateway (the host veth's link-local address).
        assert_not_tentative(&pod.ns, &["dev", "eth0", "scope", "global"]);
        assert_not_tentative(&self.node.ns, &["dev", &pod.host_ifname]);
        pod
    }

    fn root(&self) -> &std::path::Path {
        self.node.bpf.path()
    }

    fn ifindex(&self, pod: &Pod) -> u32 {
        registry::find(self.root(), &pod.host_ifname)
            .unwrap()
            .expect("registered")
            .ifindex
    }

    fn policy(&self, pod: &Pod, spec: &str) {
        let spec: margay_model::policy::PolicySpec = serde_json::from_str(spec).unwrap();
        margay_ebpf::policy::set(self.root(), self.ifindex(pod), &spec).unwrap();
    }

    fn drops(&self, pod: &Pod, reason: usize) -> u64 {
        inspect::counters(self.root(), self.ifindex(pod))
            .unwrap()
            .drops[reason]
    }
}

fn host_ifname(result: &Value) -> String {
    result["interfaces"][0]["name"]
        .as_str()
        .expect("a host interface")
        .to_string()
}

/// Asserts that no IPv6 address `filter` selects in `ns` is tentative.
fn assert_not_tentative(ns: &NetNs, filter: &[&str]) {
    let mut args = vec!["ip", "-6", "addr", "show"];
    args.extend_from_slice(filter);
    args.push("tentative");
    let tentative = ns.run_ok(&args);
    assert!(tentative.trim().is_empty(), "tentative: {tentative}");
}

fn ping(from: &NetNs, to: IpAddr) -> bool {
    from.run(&["ping", "-c", "1", "-W", "1", &to.to_string()])
        .status
        .success()
}

fn v6(ip: Ipv6Addr, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V6(ip), port)
}

const ANY6: IpAddr = IpAddr::V6(Ipv6Addr::UNSPECIFIED);

#[test]
fn a_pod_forging_its_ipv6_source_is_blocked_and_reported() {
    require_root!(a_pod_forging_its_ipv6_source_is_blocked_and_reported);
    let node = Node::new("10.217.1.0/24", "fd00:217:1::/64");
    let a = node.pod("spoof6");
    let b = node.pod("victim6");
    let server = UdpServer::start_on(Some(&b.ns), ANY6, "b");
    // Honest first, so that A has resolved its gateway: the kernel would
    // solicit it from the source of the packet waiting (the forged one),
    // and those solicitations are dropped too.
    assert_eq!(
        traffic::udp_request(Some(&a.ns), v6(b.v6, server.port)).unwrap(),
        format!("b {}", a.v6)
    );
    // The reproduction: A takes an address it was not given and uses it.
    let forged: Ipv6Addr = "fd00:217:1::99".parse().unwrap();
    a.ns.run_ok(&[
        "ip",
        "addr",
        "add",
        &format!("{forged}/128"),
        "dev",
        "eth0",
        "nodad",
    ]);
    let forged_request =
        traffic::udp_request_from(Some(&a.ns), IpAddr::V6(forged), v6(b.v6, server.port));
    assert!(forged_request.is_err(), "no answer to a forged source");
    // An honest datagram after the forged ones: it arrives, so they had time to.
    assert_eq!(
        traffic::udp_request(Some(&a.ns), v6(b.v6, server.port)).unwrap(),
        format!("b {}", a.v6)
    );
    let seen = server.received.lock().unwrap().clone();
    assert_eq!(
        seen,
        vec![IpAddr::V6(a.v6); 2],
        "only the honest datagrams arrived"
    );
    assert!(node.drops(&a, abi::DROP_SPOOF_IP) >= 1);
    let drops = node.node.ctl(&["--json", "drops"]).unwrap();
    let forged_event = drops
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|e| {
            e["event"]["protocol"] == 17
                && e["event"]["src"]
                    .as_str()
                    .unwrap()
                    .starts_with(&format!("[{forged}]:"))
        })
        .unwrap_or_else(|| panic!("a drop event of a forged datagram: {drops}"));
    assert_eq!(forged_event["event"]["verdict"], "spoofed-ip");
    assert_eq!(
        forged_event["event"]["dst"],
        format!("[{}]:{}", b.v6, server.port)
    );
}

#[test]
fn ipv6_between_pods_obeys_policy_as_ipv4_does() {
    require_root!(ipv6_between_pods_obeys_policy_as_ipv4_does);
    let node = Node::new("10.217.2.0/24", "fd00:217:2::/64");
    let a = node.pod("a6");
    let b = node.pod("b6");
    let c = node.pod("c6");
    let tcp_b = TcpServer::start_on(Some(&b.ns), ANY6, "b");
    assert_eq!(
        traffic::request(Some(&a.ns), v6(b.v6, tcp_b.port)).unwrap(),
        format!("b {}", a.v6),
        "B sees A's own IPv6 address"
    );
    assert!(ping(&a.ns, IpAddr::V6(b.v6)), "ping -6 without a policy");

    // The reproduction: deny-all ingress on B stops IPv6 as it stops IPv4.
    node.policy(&b, r#"{"ingress": []}"#);
    assert!(!ping(&a.ns, IpAddr::V4(b.v4)), "IPv4 ping denied");
    assert!(!ping(&a.ns, IpAddr::V6(b.v6)), "IPv6 ping denied");
    assert!(traffic::request(Some(&a.ns), v6(b.v6, tcp_b.port)).is_err());
    assert!(node.drops(&b, abi::DROP_POLICY_INGRESS) >= 3);
    // B's own connections still get their replies.
    let tcp_a = TcpServer::start_on(Some(&a.ns), ANY6, "a");
    assert_eq!(
        traffic::request(Some(&b.ns), v6(a.v6, tcp_a.port)).unwrap(),
        format!("a {}", b.v6),
        "a reply passes deny-all ingress"
    );

    // One IPv6 peer allowed: A's address, not C's.
    node.policy(
        &b,
        &format!(
            r#"{{"ingress": [{{"action": "allow", "cidr": "{}/128"}}]}}"#,
            a.v6
        ),
    );
    assert!(ping(&a.ns, IpAddr::V6(b.v6)), "A is allowed");
    assert!(!ping(&c.ns, IpAddr::V6(b.v6)), "C is not");
    assert!(
        !ping(&a.ns, IpAddr::V4(b.v4)),
        "nor is IPv4, which no rule allows"
    );

    // What operators see: the endpoints' IPv6 addresses and IPv6 flows.
    let listing: Value =
        serde_json::from_str(&node.node.ctl(&["--json", "endpoints"]).unwrap()).unwrap();
    let b_row = listing
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["ifname"] == b.host_ifname.as_str())
        .expect("B is listed");
    assert_eq!(b_row["ipv6"], b.v6.to_string());
    let dump = node
        .node
        .ctl(&["conntrack", "dump", "--endpoint", &b.v6.to_string()])
        .unwrap();
    assert!(
        dump.contains(&format!("[{}]:", a.v6)) && dump.contains(&format!("[{}]:", b.v6)),
        "{dump}"
    );
}

#[test]
fn neighbour_discovery_and_dad_work_through_the_programs() {
    require_root!(neighbour_discovery_and_dad_work_through_the_programs);
    let node = Node::new("10.217.3.0/24", "fd00:217:3::/64");
    // A pod with a policy denying everything both ways still resolves its
    // gateway and answers the node's neighbour probes: the node's ping
    // (always let in) and its reply both need neighbour discovery.
    let a = node.pod("nd6");
    node.policy(&a, r#"{"ingress": [], "egress": []}"#);
    a.ns.run_ok(&["ip", "-6", "neigh", "flush", "dev", "eth0"]);
    node.node
        .ns
        .run_ok(&["ip", "-6", "neigh", "flush", "dev", &a.host_ifname]);
    assert!(
        ping(&node.node.ns, IpAddr::V6(a.v6)),
        "the node reaches the pod"
    );
    let neighbours = a.ns.run_ok(&["ip", "-6", "neigh", "show", "dev", "eth0"]);
    assert!(
        neighbours.contains("fe80::ecee:eeff:feee:eeee") && !neighbours.contains("FAILED"),
        "the pod resolved its gateway: {neighbours}"
    );

    // Duplicate address detection sees a duplicate: the gateway's own
    // address, taken by the pod, is answered for by the host, so it fails.
    a.ns.run_ok(&[
        "ip",
        "addr",
        "add",
        "fe80::ecee:eeff:feee:eeee/64",
        "dev",
        "eth0",
    ]);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let state = a.ns.run_ok(&["ip", "-6", "addr", "show", "dev", "eth0"]);
        let line = state
            .lines()
            .find(|l| l.contains("fe80::ecee:eeff:feee:eeee"))
            .expect("the address is there")
            .to_string();
        if line.contains("dadfailed") {
            break;
        }
        assert!(
            line.contains("tentative") && Instant::now() < deadline,
            "DAD did not detect the duplicate: {line}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // DEL forgets the pod's IPv6 address with the rest.
    let ifindex = node.ifindex(&a);
    assert_eq!(registry::ipv6_of(node.root(), ifindex).unwrap(), Some(a.v6));
    for cid in node.node.rt.cached_container_ids("eth0") {
        node.node.rt.del(&cid, None, "eth0", "").unwrap();
    }
    assert_eq!(registry::ipv6_of(node.root(), ifindex).unwrap(), None);
    assert!(
        margay_ebpf::maps::endpoints6(node.root())
            .unwrap()
            .keys()
            .next()
            .is_none()
    );
}

#[test]
fn an_upgrade_from_an_older_build_keeps_running_pods_ipv6() {
    require_root!(an_upgrade_from_an_older_build_keeps_running_pods_ipv6);
    let node = Node::new("10.217.4.0/24", "fd00:217:4::/64");
    let a = node.pod("old6");
    let b = node.pod("peer6");
    assert!(ping(&a.ns, IpAddr::V6(b.v6)));
    // As older builds left them: A's IPv6 address not recorded (an
    // IPv4-only build), B's without its endpoint's MAC and slot (an IPv6
    // build before they were copied there); and another build's programs
    // pinned.
    let root = node.root();
    let mut endpoints6 = margay_ebpf::maps::endpoints6(root).unwrap();
    endpoints6.remove(&node.ifindex(&a)).unwrap();
    let address_only = abi::Endpoint6 {
        ip: b.v6.octets(),
        ..Default::default()
    };
    endpoints6
        .insert(node.ifindex(&b), address_only, 0)
        .unwrap();
    assert!(
        !ping(&a.ns, IpAddr::V6(b.v6)),
        "without its address, A's IPv6 is dropped"
    );
    let mut config = margay_ebpf::maps::config(root).unwrap();
    let current = config.get(&0, 0).unwrap();
    config
        .set(
            0,
            abi::Config {
                object_id: 0xdead_beef,
                ..current
            },
            0,
        )
        .unwrap();
    // The next ADD on the node loads this build, which finds the running
    // pods' addresses by their host routes.
    let _c = node.pod("new6");
    assert_eq!(
        registry::ipv6_of(root, node.ifindex(&a)).unwrap(),
        Some(a.v6)
    );
    for (pod, ifindex) in [(&a, node.ifindex(&a)), (&b, node.ifindex(&b))] {
        let ep = margay_ebpf::maps::endpoints(root)
            .unwrap()
            .get(&ifindex, 0)
            .unwrap();
        assert_eq!(
            endpoints6.get(&ifindex, 0).unwrap(),
            abi::Endpoint6::of(&ep, pod.v6),
            "the entry carries its endpoint's MAC and slot"
        );
    }
    assert!(ping(&a.ns, IpAddr::V6(b.v6)), "A's IPv6 works again");
    assert!(ping(&b.ns, IpAddr::V6(a.v6)), "B's new flows pass");
}

/// IPv6 services, as an operator declares them with `margayctl service
/// apply`: a pod reaches an IPv6 ClusterIP over TCP and UDP, the backend
/// sees the client's own address and the client the service's (its
/// socket accepts nothing else); a service without backends refuses at
/// once (TCP with a reset, UDP with ICMPv6 port unreachable); a pod
/// reaches itself through a
/// service (hairpin); the backend's policy judges the client.
#[test]
fn ipv6_services_balance_reverse_refuse_and_hairpin() {
    require_root!(ipv6_services_balance_reverse_refuse_and_hairpin);
    let node = Node::new("10.217.6.0/24", "fd00:217:6::/64");
    let a = node.pod("a6s");
    let b = node.pod("b6s");
    let tcp_a = TcpServer::start_on(Some(&a.ns), ANY6, "a");
    let tcp_b = TcpServer::start_on(Some(&b.ns), ANY6, "b");
    let udp_b = UdpServer::start_on(Some(&b.ns), ANY6, "b");
    let vip: Ipv6Addr = "fd00:96:6::10".parse().unwrap();
    let (empty, itself): (Ipv6Addr, Ipv6Addr) = (
        "fd00:96:6::11".parse().unwrap(),
        "fd00:96:6::12".parse().unwrap(),
    );
    let services = serde_json::json!({"services": [
        {"name": "ns/web6", "vip": vip, "port": 80, "backends": [v6(b.v6, tcp_b.port)]},
        {"name": "ns/dns6", "vip": vip, "port": 53, "protocol": "udp",
         "backends": [v6(b.v6, udp_b.port)]},
        {"name": "ns/empty6", "vip": empty, "port": 80},
        {"name": "ns/empty6-dns", "vip": empty, "port": 53, "protocol": "udp"},
        {"name": "ns/self6", "vip": itself, "port": 80, "backends": [v6(a.v6, tcp_a.port)]},
        // Nothing listens on port 9 of B.
        {"name": "ns/closed6", "vip": vip, "port": 54, "protocol": "udp",
         "backends": [v6(b.v6, 9)]},
    ]});
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("services.json");
    apply_more(&node, &file, &services, serde_json::json!([]));

    for round in 0..2 {
        assert_eq!(
            traffic::request(Some(&a.ns), v6(vip, 80)).unwrap(),
            format!("b {}", a.v6),
            "TCP through the ClusterIP, round {round}: the backend sees the client"
        );
        assert_eq!(
            traffic::udp_request(Some(&a.ns), v6(vip, 53)).unwrap(),
            format!("b {}", a.v6),
            "UDP through the ClusterIP, round {round}"
        );
    }
    // The client's entries remember the service their replies are turned
    // into, as IPv4's do: a reply costs that entry's lookup alone (and the
    // second round's replies were turned from it).
    let records = inspect::conntrack_records(node.root(), Some(node.ifindex(&a))).unwrap();
    for (protocol, port) in [(6, 80), (17, 53)] {
        let flow = records
            .iter()
            .find(|r| r.protocol == protocol && r.replies_as.is_some())
            .unwrap_or_else(|| panic!("no flow of protocol {protocol} turned: {records:?}"));
        assert_eq!(flow.replies_as, Some(v6(vip, port).to_string()), "{flow:?}");
    }

    traffic::assert_refused_at_once(Some(&a.ns), v6(empty, 80));
    let refused = traffic::udp_request(Some(&a.ns), v6(empty, 53)).unwrap_err();
    assert_eq!(
        refused.kind(),
        std::io::ErrorKind::ConnectionRefused,
        "UDP: {refused}"
    );
    assert!(node.drops(&a, abi::DROP_NO_BACKEND) >= 2);

    assert_eq!(
        traffic::request(Some(&a.ns), v6(itself, 80)).unwrap(),
        "a 100::a9fe:2a01",
        "a pod reaches itself through its service, from the hairpin address"
    );

    // ICMPv6 errors through a service, both ways: the backend's port
    // unreachable reaches the client's socket as the service's; the
    // client's, about a reply to a socket it closed, reaches the backend's
    // as its own flow's.
    let closed = traffic::udp_request(Some(&a.ns), v6(vip, 54)).unwrap_err();
    assert_eq!(
        closed.kind(),
        std::io::ErrorKind::ConnectionRefused,
        "{closed}"
    );
    let talker = traffic::in_netns(Some(&b.ns), || std::net::UdpSocket::bind("[::]:0").unwrap());
    let talker_port = talker.local_addr().unwrap().port();
    apply_more(
        &node,
        &file,
        &services,
        serde_json::json!(
        {"name": "ns/talk6", "vip": vip, "port": 55, "protocol": "udp",
         "backends": [v6(b.v6, talker_port)]}),
    );
    let gone = traffic::backend_talks_after_the_client_left(&talker, Some(&a.ns), v6(vip, 55))
        .unwrap_err();
    assert_eq!(gone.kind(), std::io::ErrorKind::ConnectionRefused, "{gone}");

    let listing = node.node.ctl(&["--json", "service", "list"]).unwrap();
    assert!(
        listing.contains(&format!("\"{vip}\"")) && listing.contains(&format!("[{}]:", b.v6)),
        "{listing}"
    );

    let translations = node.node.ctl(&["nat", "dump"]).unwrap();
    assert!(
        translations.contains(&format!("[{vip}]:80"))
            && translations.contains(&format!("[{}]:{}", b.v6, tcp_b.port))
            && translations.contains("100::a9fe:2a01"),
        "{translations}"
    );

    // Policy judges the backend pod, as for IPv4.
    node.policy(&b, r#"{"ingress": []}"#);
    assert!(traffic::request(Some(&a.ns), v6(vip, 80)).is_err());
    assert!(node.drops(&b, abi::DROP_POLICY_INGRESS) >= 1);
    node.policy(
        &b,
        &format!(
            r#"{{"ingress": [{{"action": "allow", "cidr": "{}/128"}}]}}"#,
            a.v6
        ),
    );
    assert_eq!(
        traffic::request(Some(&a.ns), v6(vip, 80)).unwrap(),
        format!("b {}", a.v6)
    );
}

/// Host-networked clients (the node's own sockets, in the cgroup the
/// connect-time programs are linked to) reach IPv6 ClusterIPs, TCP and
/// unconnected UDP, and IPv4 ones by their v4-mapped addresses; their
/// sockets name the frontend as whom they spoke to; a frontend without
/// backends refuses the connect.
#[test]
fn host_sockets_reach_ipv6_and_v4_mapped_cluster_ips() {
    require_root!(host_sockets_reach_ipv6_and_v4_mapped_cluster_ips);
    let node = Node::new("10.217.7.0/24", "fd00:217:7::/64");
    let b = node.pod("b6h");
    let tcp = TcpServer::start_on(Some(&b.ns), ANY6, "b");
    let udp = UdpServer::start_on(Some(&b.ns), ANY6, "b");
    let host6: Ipv6Addr = "fd00:217:100::1".parse().unwrap();
    let ns = &node.node.ns;
    ns.run_ok(&[
        "ip",
        "addr",
        "add",
        &format!("{host6}/64"),
        "dev",
        "eth0",
        "nodad",
    ]);
    let vip6: Ipv6Addr = "fd00:96:7::10".parse().unwrap();
    let vip4: Ipv4Addr = "10.96.7.10".parse().unwrap();
    let services = serde_json::json!({"services": [
        {"name": "ns/web6", "vip": vip6, "port": 80, "backends": [v6(b.v6, tcp.port)]},
        {"name": "ns/dns6", "vip": vip6, "port": 53, "protocol": "udp",
         "backends": [v6(b.v6, udp.port)]},
        {"name": "ns/web4", "vip": vip4, "port": 80, "backends": [format!("{}:{}", b.v4, tcp.port)]},
        {"name": "ns/empty6", "vip": vip6, "port": 81},
    ]});
    let dir = tempfile::tempdir().unwrap();
    apply_more(
        &node,
        &dir.path().join("services.json"),
        &services,
        Value::Array(vec![]),
    );
    let cgroup = TestCgroup::new(node.root());
    let (root, cgroup_dir) = (node.root().to_owned(), cgroup.dir.clone());
    traffic::in_netns(Some(ns), move || host_lb::attach(&root, &cgroup_dir))
        .expect("linked in the node's namespace");

    let ask_bin = bin("margay-ask");
    let ask = |protocol: &str, to: SocketAddr| -> Result<(String, String), String> {
        let out = ns.run(&[
            ask_bin.to_str().unwrap(),
            cgroup.dir.to_str().unwrap(),
            protocol,
            &to.to_string(),
        ]);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        match (out.status.success(), stdout.split_once('\n')) {
            (true, Some((answer, from))) => Ok((answer.to_string(), from.trim().to_string())),
            _ => Err(String::from_utf8_lossy(&out.stderr).into_owned()),
        }
    };
    for (protocol, port) in [("tcp", 80), ("udp", 53)] {
        let frontend = v6(vip6, port);
        assert_eq!(
            ask(protocol, frontend).unwrap(),
            (format!("b {host6}"), frontend.to_string()),
            "{protocol} to the IPv6 ClusterIP: the backend answers, the socket names the frontend"
        );
    }
    let mapped = v6(vip4.to_ipv6_mapped(), 80);
    let (answer, from) = ask("tcp", mapped).unwrap();
    assert!(
        answer.starts_with("b ") && answer.ends_with("10.217.100.1"),
        "an IPv6 socket reaches the IPv4 ClusterIP by its v4-mapped address: {answer}"
    );
    assert_eq!(from, mapped.to_string());
    let refused = ask("tcp", v6(vip6, 81)).unwrap_err();
    assert!(
        refused.contains("Operation not permitted"),
        "a frontend without backends refuses the connect: {refused}"
    );
}

/// Applies `services` (a service file) with `more` (a service, or an array
/// of them) added, with `margayctl service apply`.
fn apply_more(node: &Node, file: &std::path::Path, services: &Value, more: Value) {
    let mut all = services.clone();
    let list = all["services"].as_array_mut().unwrap();
    match more {
        Value::Array(more) => list.extend(more),
        one => list.push(one),
    }
    std::fs::write(file, all.to_string()).unwrap();
    node.node
        .ctl(&["service", "apply", "-f", file.to_str().unwrap()])
        .unwrap();
}
