//! Two nodes and an external client (`margay_tests::cluster`). Pods on
//! both nodes; services applied on both, as a controller would; NodePort
//! traffic from the client to a backend on the other node, in tunnel and
//! in DSR mode, the backend logging the client's own address.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use margay_tests::cluster::Cluster;
use margay_tests::driver::first_ipv6;
use margay_tests::netns::NetNs;
use margay_tests::require_root;
use margay_tests::traffic::{self, TcpServer, UdpServer};
use serde_json::{Value, json};

#[test]
fn pods_reach_pods_and_cluster_ips_on_the_other_node_routed_or_tunnelled() {
    require_root!(pods_reach_pods_and_cluster_ips_on_the_other_node_routed_or_tunnelled);
    let c = Cluster::new(1);
    let (pod_a, ip_a) = c.a.pod("pa").unwrap();
    let (pod_b, ip_b) = c.b.pod("pb").unwrap();
    // Pods' first ADD loaded the programs; now the node-level part.
    c.attach_data_ifaces("tunnel").unwrap();
    let server = TcpServer::start(Some(&pod_b), "b");
    let vip = Ipv4Addr::new(10, 96, 30, 10);
    let services = json!({"services": [{"name": "x/web", "vip": vip, "port": 80,
        "backends": [format!("{ip_b}:{}", server.port)]}]});
    c.apply_on_both("services", services).unwrap();

    for encap in [false, true] {
        c.know_each_other(encap).unwrap();
        let direct = traffic::request(Some(&pod_a), SocketAddr::from((ip_b, server.port)))
            .unwrap_or_else(|e| panic!("pod to pod across nodes (encap {encap}): {e}"));
        assert_eq!(direct, format!("b {ip_a}"));
        let via_service = traffic::request(Some(&pod_a), SocketAddr::from((vip, 80)))
            .unwrap_or_else(|e| panic!("ClusterIP to the other node (encap {encap}): {e}"));
        assert_eq!(via_service, format!("b {ip_a}"));
        // The node itself (host-network pods, an API server calling a
        // webhook) reaches the other node's pods too.
        let from_node = traffic::request(Some(&c.a.ns), SocketAddr::from((ip_b, server.port)))
            .unwrap_or_else(|e| panic!("node A to a pod on node B (encap {encap}): {e}"));
        assert_eq!(from_node, format!("b {}", c.a.addr));
    }
    let routes = c.a.ns.run_ok(&["ip", "route", "show", "proto", "77"]);
    assert!(
        routes.contains(&format!("{} ", c.b.pool))
            && routes.contains("encap ip id 1")
            && routes.contains(&format!("dst {}", c.b.addr))
            && routes.contains("dev margay-vx"),
        "a tunnelled peer's pods are routed through the tunnel: {routes}"
    );
    c.know_each_other(false).unwrap();
    let routes = c.a.ns.run_ok(&["ip", "route", "show", "proto", "77"]);
    assert!(
        routes.contains(&format!("{} via {}", c.b.pool, c.b.addr)),
        "{routes}"
    );
    c.a.apply("peers", json!({"peers": []})).unwrap();
    assert_eq!(
        c.a.ns
            .run_ok(&["ip", "route", "show", "proto", "77"])
            .trim(),
        ""
    );
}

/// Packets of `node`'s FORWARD chain counted by the rule tagged `tag`.
fn forwarded(node: &margay_tests::netns::NetNs, tag: &str) -> u64 {
    let listing = node.run_ok(&["iptables", "-L", "FORWARD", "-v", "-n", "-x"]);
    let line = listing
        .lines()
        .find(|l| l.contains(tag))
        .unwrap_or_else(|| panic!("no rule {tag} in {listing}"));
    line.split_whitespace().next().unwrap().parse().unwrap()
}

/// Counts, in `node`'s FORWARD chain, what goes from `src` to `dst`.
fn count_forwarded(node: &margay_tests::netns::NetNs, src: Ipv4Addr, dst: Ipv4Addr, tag: &str) {
    let (src, dst) = (src.to_string(), dst.to_string());
    let rule = ["-s", &src, "-d", &dst, "-m", "comment", "--comment", tag];
    node.run_ok(&[&["iptables", "-I", "FORWARD"][..], &rule[..]].concat());
}

#[test]
fn pods_on_peer_nodes_talk_past_the_host_stack_and_traffic_leaving_the_cluster_meets_netfilter() {
    require_root!(
        pods_on_peer_nodes_talk_past_the_host_stack_and_traffic_leaving_the_cluster_meets_netfilter
    );
    let c = Cluster::new(7);
    let (pod_a, ip_a) = c.a.pod("fa").unwrap();
    let (pod_b, ip_b) = c.b.pod("fb").unwrap();
    c.attach_data_ifaces("tunnel").unwrap();
    c.know_each_other(false).unwrap();
    // The external client routes the pods' CIDR to their node, as a
    // router of a flat network would.
    c.client
        .run_ok(&["ip", "route", "add", c.a.pool, "via", &c.a.addr.to_string()]);
    for node in [&c.a.ns, &c.b.ns] {
        count_forwarded(node, ip_a, ip_b, "mg-a-to-b");
        count_forwarded(node, ip_b, ip_a, "mg-b-to-a");
    }
    count_forwarded(&c.a.ns, ip_a, c.client_addr, "mg-a-to-client");

    let server = TcpServer::start(Some(&pod_b), "b");
    for _ in 0..3 {
        let answer = traffic::request(Some(&pod_a), SocketAddr::from((ip_b, server.port)))
            .unwrap_or_else(|e| panic!("pod to pod across nodes: {e}"));
        assert_eq!(answer, format!("b {ip_a}"));
    }
    // Both ways, both nodes: the programs routed the pods' packets (FIB
    // lookup, redirect out of eth0; from_net into the pod), so no node's
    // forwarding path, netfilter included, saw one.
    for (node, name) in [(&c.a.ns, "A"), (&c.b.ns, "B")] {
        for tag in ["mg-a-to-b", "mg-b-to-a"] {
            assert_eq!(
                forwarded(node, tag),
                0,
                "node {name} forwarded pod-to-pod packets ({tag}) through its stack"
            );
        }
    }
    // What leaves the cluster still takes the stack, where the node's
    // firewall and masquerade rules are.
    let outside = TcpServer::start(Some(&c.client), "ext");
    let answer = traffic::request(
        Some(&pod_a),
        SocketAddr::from((c.client_addr, outside.port)),
    )
    .unwrap_or_else(|e| panic!("pod to a host outside the cluster: {e}"));
    assert_eq!(answer, format!("ext {ip_a}"));
    assert!(
        forwarded(&c.a.ns, "mg-a-to-client") > 0,
        "traffic leaving the cluster bypassed node A's netfilter"
    );
}

/// The client reaches node A's NodePort; the only backend is on node B.
fn node_port_to_the_other_node(mode: &str, subnet: u8) {
    let c = Cluster::new(subnet);
    let (_pod_a, _) = c.a.pod("pa").unwrap();
    let (pod_b, ip_b) = c.b.pod("pb").unwrap();
    c.attach_data_ifaces(mode).unwrap();
    c.know_each_other(false).unwrap();
    let server = TcpServer::start(Some(&pod_b), "b");
    let services = json!({"services": [
        {"name": "x/web", "vip": "10.96.31.10", "port": 80, "node_port": 30080,
         "backends": [format!("{ip_b}:{}", server.port)]},
        {"name": "x/local", "vip": "10.96.31.10", "port": 81, "node_port": 30081,
         "external_traffic_policy": "local", "backends": [format!("{ip_b}:{}", server.port)]},
        // Nothing listens on port 9: the backend answers port unreachable.
        {"name": "x/closed", "vip": "10.96.31.10", "port": 82, "protocol": "udp",
         "node_port": 30082, "backends": [format!("{ip_b}:9")]},
    ]});
    c.apply_on_both("services", services).unwrap();

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
            .unwrap()
            .iter()
            .any(|r| r["translated"] == format!("{}:30080", c.a.addr));
    assert_eq!(
        answered_by_b,
        mode == "dsr",
        "{mode}: {:?}",
        c.b.reverse_translations().unwrap()
    );
    let refused = traffic::udp_request(Some(&c.client), SocketAddr::from((c.a.addr, 30082)))
        .expect_err("nothing listens");
    assert_eq!(
        refused.kind(),
        std::io::ErrorKind::ConnectionRefused,
        "{mode}: the backend's port unreachable reaches the client as the NodePort's ({refused})"
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

#[test]
fn node_ports_reach_local_backends_with_the_client_address_kept() {
    require_root!(node_ports_reach_local_backends_with_the_client_address_kept);
    let c = Cluster::new(4);
    let ((b1, ip1), (b2, ip2)) = (c.a.pod("b1").unwrap(), c.a.pod("b2").unwrap());
    let (t1, t2) = (
        TcpServer::start(Some(&b1), "b1"),
        TcpServer::start(Some(&b2), "b2"),
    );
    let u1 = UdpServer::start(Some(&b1), "b1");
    let vip = "10.96.10.10";
    let far = "10.245.210.9:8080"; // on no node
    c.a.apply(
        "services",
        json!({"services": [
            {"name": "default/web", "vip": vip, "port": 80, "node_port": 30080,
             "backends": [format!("{ip1}:{}", t1.port), format!("{ip2}:{}", t2.port)]},
            {"name": "default/dns", "vip": vip, "port": 53, "protocol": "udp", "node_port": 30053,
             "backends": [format!("{ip1}:{}", u1.port)]},
            {"name": "default/local", "vip": vip, "port": 81, "node_port": 30081,
             "external_traffic_policy": "local", "backends": [format!("{ip2}:{}", t2.port), far]},
            {"name": "default/elsewhere", "vip": vip, "port": 82, "node_port": 30082,
             "external_traffic_policy": "local", "backends": [far]},
            {"name": "default/closed", "vip": vip, "port": 54, "protocol": "udp", "node_port": 30054,
             "backends": [format!("{ip1}:9")]},
        ]}),
    )
    .unwrap();
    let node_ports = || {
        margay_ebpf::service::list(c.a.bpf.path())
            .unwrap()
            .iter()
            .filter(|r| r.kind == "node-port")
            .count()
    };
    assert_eq!(node_ports(), 0, "no data interface yet");
    // Attached after the services were applied: their NodePorts open.
    let attached = c.a.ctl(&["node", "attach", "--iface", "eth0"]).unwrap();
    assert!(attached.contains(&c.a.addr.to_string()), "{attached}");
    let shown: Value =
        serde_json::from_str(&c.a.ctl(&["--json", "node", "show"]).unwrap()).unwrap();
    assert_eq!(shown["data_ifaces"][0]["ifname"], "eth0");
    assert_eq!(node_ports(), 5);

    let node = c.a.addr;
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..20 {
        let answer = traffic::request(Some(&c.client), SocketAddr::from((node, 30080)))
            .expect("the NodePort answers");
        let (who, peer) = answer.split_once(' ').unwrap();
        assert_eq!(
            peer,
            c.client_addr.to_string(),
            "the backend sees the client's own address"
        );
        seen.insert(who.to_string());
    }
    assert_eq!(seen.len(), 2, "{seen:?}");
    let (answer, from) = traffic::in_netns(Some(&c.client), move || {
        let s = std::net::UdpSocket::bind("0.0.0.0:0")?;
        s.set_read_timeout(Some(std::time::Duration::from_secs(2)))?;
        s.send_to(b"hello", SocketAddr::from((node, 30053)))?;
        let mut buf = [0u8; 256];
        let (n, from) = s.recv_from(&mut buf)?;
        Ok::<_, std::io::Error>((String::from_utf8_lossy(&buf[..n]).into_owned(), from))
    })
    .unwrap();
    assert_eq!(answer, format!("b1 {}", c.client_addr));
    assert_eq!(
        from,
        SocketAddr::from((node, 30053)),
        "the reply comes from the NodePort"
    );

    let refused = traffic::udp_request(Some(&c.client), SocketAddr::from((node, 30054)))
        .expect_err("nothing listens");
    assert_eq!(
        refused.kind(),
        std::io::ErrorKind::ConnectionRefused,
        "the backend's port unreachable reaches the client as the NodePort's ({refused})"
    );

    // externalTrafficPolicy: Local: only this node's backend, never the far one.
    for _ in 0..10 {
        let answer = traffic::request(Some(&c.client), SocketAddr::from((node, 30081))).unwrap();
        assert_eq!(answer, format!("b2 {}", c.client_addr));
    }
    let refused = traffic::request(Some(&c.client), SocketAddr::from((node, 30082)))
        .expect_err("no local backend");
    assert_eq!(
        refused.kind(),
        std::io::ErrorKind::ConnectionRefused,
        "{refused}"
    );

    // Detached, the interface is the node's own again.
    c.a.ctl(&["node", "detach", "--iface", "eth0"]).unwrap();
    assert_eq!(
        margay_ebpf::nodeport::data_ifaces(c.a.bpf.path()).unwrap(),
        vec![]
    );
    let filters =
        c.a.ns
            .run_ok(&["tc", "filter", "show", "dev", "eth0", "ingress"]);
    assert!(!filters.contains("from_net"), "{filters}");
    assert_eq!(node_ports(), 0, "the NodePorts closed with it");
    let services = margay_ebpf::service::list(c.a.bpf.path()).unwrap();
    assert_eq!(services.len(), 5, "the ClusterIPs stay: {services:?}");
    assert!(traffic::request(Some(&c.client), SocketAddr::from((node, 30080))).is_err());
}

/// An external client's kernel answering a NodePort's reply with port
/// unreachable (its socket gone): the error follows the flow to the
/// backend, on this node and, through the tunnel, on the other one.
#[test]
fn an_icmp_error_from_an_external_client_reaches_the_backend() {
    require_root!(an_icmp_error_from_an_external_client_reaches_the_backend);
    let c = Cluster::new(6);
    let (pod_a, ip_a) = c.a.pod("pa").unwrap();
    let (pod_b, ip_b) = c.b.pod("pb").unwrap();
    c.attach_data_ifaces("tunnel").unwrap();
    c.know_each_other(false).unwrap();
    let bind = |ns| traffic::in_netns(Some(ns), || std::net::UdpSocket::bind("0.0.0.0:0").unwrap());
    let (local, remote) = (bind(&pod_a), bind(&pod_b));
    let port = |s: &std::net::UdpSocket| s.local_addr().unwrap().port();
    let services = json!({"services": [
        {"name": "x/here", "vip": "10.96.36.10", "port": 53, "protocol": "udp",
         "node_port": 30053, "backends": [format!("{ip_a}:{}", port(&local))]},
        {"name": "x/there", "vip": "10.96.36.10", "port": 54, "protocol": "udp",
         "node_port": 30054, "backends": [format!("{ip_b}:{}", port(&remote))]},
    ]});
    c.apply_on_both("services", services).unwrap();
    for (backend, node_port, where_) in [
        (&local, 30053, "this node"),
        (&remote, 30054, "the other node"),
    ] {
        let err = traffic::backend_talks_after_the_client_left(
            backend,
            Some(&c.client),
            SocketAddr::from((c.a.addr, node_port)),
        )
        .expect_err("the client's socket is gone");
        assert_eq!(
            err.kind(),
            std::io::ErrorKind::ConnectionRefused,
            "backend on {where_}: the client's port unreachable reaches it ({err})"
        );
    }
}

/// A counter of the IPv4 MIB (`/proc/net/snmp`'s "Ip:" lines) in `ns`.
fn ip_counter(ns: &margay_tests::netns::NetNs, name: &str) -> u64 {
    let snmp = ns.run_ok(&["cat", "/proc/net/snmp"]);
    let mut ip = snmp.lines().filter(|l| l.starts_with("Ip:"));
    let (names, values) = (ip.next().unwrap(), ip.next().unwrap());
    let at = names.split_whitespace().position(|n| n == name).unwrap();
    values.split_whitespace().nth(at).unwrap().parse().unwrap()
}

/// 4 MB over TCP from `from` to `to` (an iperf3 server).
fn upload(from: &margay_tests::netns::NetNs, to: SocketAddr, what: &str) {
    let out = from.run(&[
        "iperf3",
        "-c",
        &to.ip().to_string(),
        "-p",
        &to.port().to_string(),
        "-n",
        "4M",
    ]);
    assert!(
        out.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn full_sized_packets_cross_the_tunnel_whole_their_senders_told_its_mtu() {
    require_root!(full_sized_packets_cross_the_tunnel_whole_their_senders_told_its_mtu);
    let c = Cluster::new(8);
    let (pod_a, _) = c.a.pod("pa").unwrap();
    let (pod_b, ip_b) = c.b.pod("pb").unwrap();
    c.attach_data_ifaces("tunnel").unwrap();
    let tunnel_mtu = c.a.ns.run_ok(&["cat", "/sys/class/net/margay-vx/mtu"]);
    assert_eq!(tunnel_mtu.trim(), "1450", "the LAN's 1500 less VXLAN's 50");
    let _server = pod_b.spawn(&["iperf3", "-s", "-p", "5201", "--logfile", "/dev/null"]);
    let services = json!({"services": [{"name": "x/bulk", "vip": "10.96.32.10", "port": 5201,
        "node_port": 30201, "backends": [format!("{ip_b}:5201")]}]});
    c.apply_on_both("services", services).unwrap();
    let fragmented_before = ip_counter(&c.a.ns, "FragCreates");

    // An external client's full-sized segments to a NodePort whose backend
    // is on the other node: node A tunnels them. It tells the client the
    // tunnel's MTU, as a router would, rather than fragment every one.
    c.know_each_other(false).unwrap();
    upload(&c.client, SocketAddr::from((c.a.addr, 30201)), "NodePort");
    let route = c
        .client
        .run_ok(&["ip", "route", "get", &c.a.addr.to_string()]);
    assert!(
        route.contains("mtu 1450"),
        "the client learnt the tunnel's MTU: {route}"
    );

    // In DSR mode too, which tunnels the requests alike.
    c.attach_data_ifaces("dsr").unwrap();
    c.client.run_ok(&["ip", "route", "flush", "cache"]);
    let route = c
        .client
        .run_ok(&["ip", "route", "get", &c.a.addr.to_string()]);
    assert!(!route.contains("mtu"), "the client forgot it: {route}");
    upload(
        &c.client,
        SocketAddr::from((c.a.addr, 30201)),
        "NodePort, DSR",
    );
    let route = c
        .client
        .run_ok(&["ip", "route", "get", &c.a.addr.to_string()]);
    assert!(
        route.contains("mtu 1450"),
        "DSR: the client learnt it: {route}"
    );

    // A pod's to a pod of a peer behind the tunnel: the pod is told.
    c.know_each_other(true).unwrap();
    upload(
        &pod_a,
        SocketAddr::from((ip_b, 5201)),
        "pod to tunnelled peer's pod",
    );
    let counters = c.a.ctl(&["counters"]).unwrap();
    assert!(
        counters.contains("too-big-for-tunnel="),
        "the pod's too-big packets are counted: {counters}"
    );
    let route = pod_a.run_ok(&["ip", "route", "get", &ip_b.to_string()]);
    assert!(route.contains("mtu 1450"), "the pod learnt it: {route}");

    assert_eq!(
        ip_counter(&c.a.ns, "FragCreates") - fragmented_before,
        0,
        "node A fragmented encapsulated packets"
    );
}

/// Asks `addr` over UDP from `ns`; the answer and whom it came from.
fn udp_exchange(ns: &NetNs, addr: SocketAddr) -> std::io::Result<(String, SocketAddr)> {
    traffic::in_netns(Some(ns), move || {
        let any: SocketAddr = if addr.is_ipv6() {
            "[::]:0"
        } else {
            "0.0.0.0:0"
        }
        .parse()
        .unwrap();
        let s = std::net::UdpSocket::bind(any)?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        s.send_to(b"hello", addr)?;
        let mut buf = [0u8; 256];
        let (n, from) = s.recv_from(&mut buf)?;
        Ok((String::from_utf8_lossy(&buf[..n]).into_owned(), from))
    })
}

/// IPv6 on a dual-stack pair: pods reach the other node's pods by a route
/// via its IPv6 address; NodePorts on node A reach a backend on A and one
/// on B (through the tunnel, answered by B itself in DSR mode), the
/// client's own address kept and the replies the NodePort's; refused at
/// once without a backend; the backend's port unreachable reaching the
/// client as the NodePort's; full-sized segments for B answered with the
/// tunnel's MTU (20 bytes less in DSR mode, which tunnels over IPv6).
fn ipv6_node_ports(mode: &str, subnet: u8) {
    let c = Cluster::dual_stack(subnet);
    let [a6, _, client6] = c.lan6.unwrap();
    let (pod_a, res_a) = c.a.add_pod("pa6").unwrap();
    let (pod_b, res_b) = c.b.add_pod("pb6").unwrap();
    let (ip_a, ip_b) = (first_ipv6(&res_a).unwrap(), first_ipv6(&res_b).unwrap());
    c.attach_data_ifaces(mode).unwrap();
    let shown = c.a.ctl(&["node", "show"]).unwrap();
    assert!(
        shown.contains(&a6.to_string()),
        "NodePorts answer on A's IPv6 address: {shown}"
    );
    c.know_each_other(false).unwrap();
    let routes = c.a.ns.run_ok(&["ip", "-6", "route", "show", "proto", "77"]);
    assert!(
        routes.contains(&format!(
            "{} via {}",
            c.b.pool6.unwrap(),
            c.b.addr6.unwrap()
        )),
        "B's IPv6 pods are routed via its IPv6 address: {routes}"
    );
    let any6 = IpAddr::V6(Ipv6Addr::UNSPECIFIED);
    let (tcp_a, tcp_b) = (
        TcpServer::start_on(Some(&pod_a), any6, "a"),
        TcpServer::start_on(Some(&pod_b), any6, "b"),
    );
    let (udp_a, udp_b) = (
        UdpServer::start_on(Some(&pod_a), any6, "a"),
        UdpServer::start_on(Some(&pod_b), any6, "b"),
    );
    let _bulk = pod_b.spawn(&["iperf3", "-s", "-p", "5201", "--logfile", "/dev/null"]);
    let at = |ip: Ipv6Addr, port: u16| SocketAddr::from((ip, port));
    let vip = "fd00:96:5::10";
    let services = json!({"services": [
        {"name": "x/here", "vip": vip, "port": 80, "node_port": 30080,
         "backends": [at(ip_a, tcp_a.port)]},
        {"name": "x/there", "vip": vip, "port": 81, "node_port": 30081,
         "backends": [at(ip_b, tcp_b.port)]},
        {"name": "x/dns-here", "vip": vip, "port": 53, "protocol": "udp", "node_port": 30053,
         "backends": [at(ip_a, udp_a.port)]},
        {"name": "x/dns-there", "vip": vip, "port": 54, "protocol": "udp", "node_port": 30054,
         "backends": [at(ip_b, udp_b.port)]},
        {"name": "x/empty", "vip": vip, "port": 82, "node_port": 30082},
        {"name": "x/bulk", "vip": vip, "port": 5201, "node_port": 30201,
         "backends": [at(ip_b, 5201)]},
        // Nothing listens on port 9 of B.
        {"name": "x/closed", "vip": vip, "port": 55, "protocol": "udp", "node_port": 30055,
         "backends": [at(ip_b, 9)]},
    ]});
    c.apply_on_both("services", services).unwrap();
    assert_eq!(
        traffic::request(Some(&pod_a), at(ip_b, tcp_b.port)).unwrap(),
        format!("b {ip_a}"),
        "pod to pod across the nodes over IPv6"
    );

    for round in 0..3 {
        for (port, who) in [(30080, "a"), (30081, "b")] {
            let answer = traffic::request(Some(&c.client), at(a6, port))
                .unwrap_or_else(|e| panic!("{mode}: TCP to [{a6}]:{port}, round {round}: {e}"));
            assert_eq!(
                answer,
                format!("{who} {client6}"),
                "{mode}: the backend sees the client's own address"
            );
        }
        for (port, who) in [(30053, "a"), (30054, "b")] {
            let (answer, from) = udp_exchange(&c.client, at(a6, port))
                .unwrap_or_else(|e| panic!("{mode}: UDP to [{a6}]:{port}, round {round}: {e}"));
            assert_eq!(answer, format!("{who} {client6}"), "{mode}");
            assert_eq!(
                from,
                at(a6, port),
                "{mode}: the reply comes from the NodePort"
            );
        }
    }
    // Who answered the client: in DSR mode node B itself, as A's NodePort.
    let answered_by_b = |port: u16| {
        c.b.reverse_translations()
            .unwrap()
            .iter()
            .any(|r| r["translated"] == at(a6, port).to_string())
    };
    assert_eq!(
        (answered_by_b(30081), answered_by_b(30054)),
        (mode == "dsr", mode == "dsr"),
        "{mode}: {:?}",
        c.b.reverse_translations().unwrap()
    );
    traffic::assert_refused_at_once(Some(&c.client), at(a6, 30082));
    let closed = traffic::udp_request(Some(&c.client), at(a6, 30055)).unwrap_err();
    assert_eq!(
        closed.kind(),
        std::io::ErrorKind::ConnectionRefused,
        "{mode}: the backend's port unreachable reaches the client as the NodePort's ({closed})"
    );

    // Full-sized segments for B: node A tells the client the tunnel's MTU
    // ("packet too big" from the NodePort) rather than fragment the
    // encapsulation of every one.
    let fragmented_before = ip_counter(&c.a.ns, "FragCreates");
    upload(
        &c.client,
        at(a6, 30201),
        &format!("{mode}: IPv6 NodePort, backend on B"),
    );
    // The LAN's 1500 less VXLAN's 50, or in DSR mode 70 (over IPv6).
    let mtu = if mode == "dsr" { 1430 } else { 1450 };
    let route = c
        .client
        .run_ok(&["ip", "-6", "route", "get", &a6.to_string()]);
    assert!(
        route.contains(&format!("mtu {mtu}")),
        "{mode}: the client learnt the tunnel's MTU: {route}"
    );
    assert_eq!(
        ip_counter(&c.a.ns, "FragCreates") - fragmented_before,
        0,
        "{mode}: node A fragmented encapsulated packets"
    );
}

#[test]
fn ipv6_node_ports_reach_backends_here_and_through_the_tunnel() {
    require_root!(ipv6_node_ports_reach_backends_here_and_through_the_tunnel);
    ipv6_node_ports("tunnel", 5);
}

#[test]
fn ipv6_node_ports_in_dsr_mode_are_answered_by_the_backends_node() {
    require_root!(ipv6_node_ports_in_dsr_mode_are_answered_by_the_backends_node);
    ipv6_node_ports("dsr", 9);
}
