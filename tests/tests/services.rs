//! Services in the eBPF dataplane (kube-proxy's job): pods added through
//! the CNI driver in bpf mode, services applied with `margayctl service
//! apply`, real TCP and UDP between namespaces through ClusterIPs.

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use margay_ebpf::abi::{DIR_INGRESS, DROP_NO_BACKEND};
use margay_ebpf::{inspect, registry, service};
use margay_model::protocol::Protocol;
use margay_model::service::ServiceSpec;
use margay_tests::fixture::{Net, NetSpec, Pod};
use margay_tests::netns::{NetNs, run_ok, tx_bytes, unique_name};
use margay_tests::require_root;
use margay_tests::traffic::{self, BulkSender, TcpServer, UdpServer, in_netns};
use serde_json::{Value, json};

fn v4(pod: &Pod) -> Ipv4Addr {
    match pod.ip() {
        IpAddr::V4(a) => a,
        IpAddr::V6(_) => panic!("IPv4 expected"),
    }
}

/// Applies `services` (the `services:` list of a service file) through
/// `margayctl service apply -f`, as an operator or controller would.
fn apply(net: &Net, services: Value) -> Value {
    let file = net.dir.path().join(format!("{}.json", unique_name("svc")));
    std::fs::write(&file, json!({ "services": services }).to_string()).unwrap();
    let out = net.margayctl(&["--json", "service", "apply", "-f", file.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "service apply: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn backend(ip: Ipv4Addr, port: u16) -> String {
    format!("{ip}:{port}")
}

/// A TCP server answering every line it receives with its own name, on a
/// connection kept open: shows which backend carries each request of a
/// connection.
struct NameServer {
    stop: Arc<AtomicBool>,
    port: u16,
}

impl NameServer {
    fn start(ns: &NetNs, name: &str) -> NameServer {
        let listener = in_netns(Some(ns), || {
            std::net::TcpListener::bind("0.0.0.0:0").unwrap()
        });
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let (s, name) = (stop.clone(), name.to_string());
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let name = name.clone();
                        std::thread::spawn(move || answer_lines(conn, &name));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(1)),
                }
            }
        });
        NameServer { stop, port }
    }
}

fn answer_lines(conn: TcpStream, name: &str) {
    let _ = conn.set_nonblocking(false);
    // Small requests and answers: Nagle would hold each for a delayed ACK.
    let _ = conn.set_nodelay(true);
    let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
    let mut writer = conn.try_clone().unwrap();
    for line in BufReader::new(conn).lines() {
        if line.is_err() || writeln!(writer, "{name}").is_err() {
            break;
        }
    }
}

impl Drop for NameServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// `n` pods of `net`, `b0`, `b1`, …, each running the server `start`
/// makes for it under its name.
fn backends<S>(net: &Net, n: usize, start: impl Fn(&NetNs, &str) -> S) -> (Vec<Pod>, Vec<S>) {
    let pods: Vec<Pod> = (0..n).map(|i| net.pod(&format!("b{i}"))).collect();
    let servers = pods
        .iter()
        .enumerate()
        .map(|(i, p)| start(&p.ns, &format!("b{i}")))
        .collect();
    (pods, servers)
}

/// Sends a line on `conn` and reads the answering line.
fn ask(conn: &mut TcpStream) -> String {
    conn.set_nodelay(true).unwrap();
    writeln!(conn, "who").unwrap();
    let mut line = String::new();
    BufReader::new(conn.try_clone().unwrap())
        .read_line(&mut line)
        .unwrap();
    line.trim().to_string()
}

/// From `ns`: UDP to `addr`; the answer and the address it came from.
fn udp_exchange(ns: &NetNs, addr: SocketAddr) -> std::io::Result<(String, SocketAddr)> {
    in_netns(Some(ns), move || {
        let s = std::net::UdpSocket::bind("0.0.0.0:0")?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        s.send_to(b"hello", addr)?;
        let mut buf = [0u8; 256];
        let (n, from) = s.recv_from(&mut buf)?;
        Ok((String::from_utf8_lossy(&buf[..n]).trim().to_string(), from))
    })
}

#[test]
fn cluster_ip_balances_tcp_and_udp_and_replies_come_from_the_service() {
    require_root!(cluster_ip_balances_tcp_and_udp_and_replies_come_from_the_service);
    let net = Net::new(NetSpec::bpf("10.245.1.0/24"));
    let (client, b1, b2) = (net.pod("cli"), net.pod("b1"), net.pod("b2"));
    let (t1, t2) = (
        TcpServer::start(Some(&b1.ns), "b1"),
        TcpServer::start(Some(&b2.ns), "b2"),
    );
    let (u1, u2) = (
        UdpServer::start(Some(&b1.ns), "b1"),
        UdpServer::start(Some(&b2.ns), "b2"),
    );
    let vip = Ipv4Addr::new(10, 96, 1, 10);
    let report = apply(
        &net,
        json!([
            {"name": "default/web", "vip": vip, "port": 80,
             "backends": [backend(v4(&b1), t1.port), backend(v4(&b2), t2.port)]},
            {"name": "default/dns", "vip": vip, "port": 53, "protocol": "udp",
             "backends": [backend(v4(&b1), u1.port), backend(v4(&b2), u2.port)]},
        ]),
    );
    assert_eq!(report["added"], 2);

    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..40 {
        let answer = traffic::request(Some(&client.ns), SocketAddr::from((vip, 80)))
            .expect("a TCP connection to the ClusterIP is answered");
        let (who, peer) = answer.split_once(' ').unwrap();
        // The backend sees the client pod's own address.
        assert_eq!(peer, v4(&client).to_string());
        seen.insert(who.to_string());
    }
    assert_eq!(
        seen.len(),
        2,
        "connections spread over both backends: {seen:?}"
    );

    for _ in 0..10 {
        let (answer, from) = udp_exchange(&client.ns, SocketAddr::from((vip, 53)))
            .expect("a UDP datagram to the ClusterIP is answered");
        assert!(
            answer.starts_with("b1 ") || answer.starts_with("b2 "),
            "{answer}"
        );
        assert_eq!(
            from,
            SocketAddr::from((vip, 53)),
            "the reply comes from the service"
        );
    }

    let listed = net.margayctl(&["--json", "service", "list"]);
    let listed: Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 2);
    let nat = net.margayctl(&["--json", "nat", "dump"]);
    let nat: Vec<Value> = serde_json::from_slice(&nat.stdout).unwrap();
    assert!(
        nat.iter().any(|r| r["direction"] == "forward"
            && r["dst"] == format!("{vip}:80")
            && r["service"] == "default/web"),
        "translations are listed with their service: {nat:?}"
    );
}

#[test]
fn each_connection_keeps_its_backend_and_connections_spread() {
    require_root!(each_connection_keeps_its_backend_and_connections_spread);
    let net = Net::new(NetSpec::bpf("10.245.2.0/24"));
    let client = net.pod("cli");
    let (pods, servers) = backends(&net, 3, NameServer::start);
    let vip = Ipv4Addr::new(10, 96, 2, 10);
    let backends: Vec<String> = pods
        .iter()
        .zip(&servers)
        .map(|(p, s)| backend(v4(p), s.port))
        .collect();
    apply(
        &net,
        json!([{"name": "default/sticky", "vip": vip, "port": 8080, "backends": backends}]),
    );
    let counts = in_netns(Some(&client.ns), move || {
        let mut counts = std::collections::BTreeMap::<String, usize>::new();
        for _ in 0..1000 {
            let mut conn =
                TcpStream::connect_timeout(&SocketAddr::from((vip, 8080)), Duration::from_secs(2))
                    .expect("connects");
            conn.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let first = ask(&mut conn);
            for _ in 0..2 {
                assert_eq!(ask(&mut conn), first, "one connection, one backend");
            }
            *counts.entry(first).or_default() += 1;
        }
        counts
    });
    assert_eq!(counts.len(), 3, "every backend served: {counts:?}");
    for (who, n) in &counts {
        assert!(*n > 200, "{who} got {n} of 1000 connections: {counts:?}");
    }
}

#[test]
fn client_ip_affinity_keeps_new_connections_on_one_backend() {
    require_root!(client_ip_affinity_keeps_new_connections_on_one_backend);
    let net = Net::new(NetSpec::bpf("10.245.3.0/24"));
    let client = net.pod("cli");
    let (pods, servers) = backends(&net, 3, |ns, name| TcpServer::start(Some(ns), name));
    let vip = Ipv4Addr::new(10, 96, 3, 10);
    let backends: Vec<String> = pods
        .iter()
        .zip(&servers)
        .map(|(p, s)| backend(v4(p), s.port))
        .collect();
    apply(
        &net,
        json!([{"name": "default/affine", "vip": vip, "port": 80, "backends": backends,
                "affinity_timeout": 600}]),
    );
    let answers: std::collections::BTreeSet<String> = (0..30)
        .map(|_| {
            traffic::request(Some(&client.ns), SocketAddr::from((vip, 80)))
                .unwrap()
                .split(' ')
                .next()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(answers.len(), 1, "one client, one backend: {answers:?}");
}

/// Two Services selecting the same pod: from one client port, flows to
/// either frontend become the same flow at the backend, so the translation
/// back must follow whichever frontend the client's newest flow used. A
/// busy client reuses its ports like this all the time.
#[test]
fn a_client_port_reused_across_services_of_one_backend_gets_each_services_replies() {
    require_root!(a_client_port_reused_across_services_of_one_backend_gets_each_services_replies);
    let net = Net::new(NetSpec::bpf("10.245.10.0/24"));
    let (client, b) = (net.pod("cli"), net.pod("b"));
    let (tcp, udp) = (
        TcpServer::start(Some(&b.ns), "b"),
        UdpServer::start(Some(&b.ns), "b"),
    );
    let (a_vip, b_vip) = (Ipv4Addr::new(10, 96, 10, 10), Ipv4Addr::new(10, 96, 10, 11));
    let services: Vec<Value> = [a_vip, b_vip]
        .iter()
        .enumerate()
        .flat_map(|(i, vip)| {
            [
                json!({"name": format!("default/web{i}"), "vip": vip, "port": 80,
                       "backends": [backend(v4(&b), tcp.port)]}),
                json!({"name": format!("default/dns{i}"), "vip": vip, "port": 53,
                       "protocol": "udp", "backends": [backend(v4(&b), udp.port)]}),
            ]
        })
        .collect();
    apply(&net, Value::Array(services));

    let mut port = 0;
    for (round, vip) in [a_vip, b_vip, a_vip, b_vip].into_iter().enumerate() {
        let (answer, used) =
            traffic::request_from_port(Some(&client.ns), port, SocketAddrV4::new(vip, 80))
                .unwrap_or_else(|e| panic!("TCP to {vip} from port {port}, round {round}: {e}"));
        assert_eq!(answer, format!("b {}", v4(&client)));
        port = used;
    }

    let sock = in_netns(Some(&client.ns), || {
        std::net::UdpSocket::bind("0.0.0.0:0").unwrap()
    });
    sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    for vip in [a_vip, b_vip, a_vip, b_vip] {
        let to = SocketAddr::from((vip, 53));
        sock.send_to(b"hello", to).unwrap();
        let mut buf = [0u8; 256];
        let (_, from) = sock
            .recv_from(&mut buf)
            .unwrap_or_else(|e| panic!("UDP to {to}: {e}"));
        assert_eq!(from, to, "the answer comes from the service asked");
    }
}

/// A backend with nothing listening on the port answers UDP with an ICMP
/// port unreachable quoting the translated packet: the client's kernel
/// must see it as being about the service, or the client waits for a
/// timeout instead of failing at once.
#[test]
fn an_icmp_error_from_a_backend_reaches_the_client_as_the_services() {
    require_root!(an_icmp_error_from_a_backend_reaches_the_client_as_the_services);
    let net = Net::new(NetSpec::bpf("10.245.11.0/24"));
    let (client, b) = (net.pod("cli"), net.pod("b"));
    let vip = Ipv4Addr::new(10, 96, 11, 10);
    // A port nothing in the backend's namespace listens on.
    let closed = 9;
    apply(
        &net,
        json!([{"name": "default/closed", "vip": vip, "port": 53, "protocol": "udp",
                "backends": [backend(v4(&b), closed)]}]),
    );
    let started = Instant::now();
    let err = traffic::udp_request(Some(&client.ns), SocketAddr::from((vip, 53)))
        .expect_err("nothing answers");
    let took = started.elapsed();
    assert_eq!(
        err.kind(),
        std::io::ErrorKind::ConnectionRefused,
        "the backend's port unreachable reaches the client's socket ({err}, after {took:?})"
    );
}

/// The other way: a service's reply finding the client's socket gone is
/// answered by the client's kernel with port unreachable quoting the reply
/// as it saw it (from the service); the backend must hear of it as being
/// about its own flow.
#[test]
fn an_icmp_error_from_the_client_reaches_the_backend_as_its_own_flows() {
    require_root!(an_icmp_error_from_the_client_reaches_the_backend_as_its_own_flows);
    let net = Net::new(NetSpec::bpf("10.245.12.0/24"));
    let (client, b) = (net.pod("cli"), net.pod("b"));
    let server = in_netns(Some(&b.ns), || {
        std::net::UdpSocket::bind("0.0.0.0:0").unwrap()
    });
    let vip = Ipv4Addr::new(10, 96, 12, 10);
    let port = server.local_addr().unwrap().port();
    apply(
        &net,
        json!([{"name": "default/talk", "vip": vip, "port": 53, "protocol": "udp",
                "backends": [backend(v4(&b), port)]}]),
    );
    let err = traffic::backend_talks_after_the_client_left(
        &server,
        Some(&client.ns),
        SocketAddr::from((vip, 53)),
    )
    .expect_err("the client's socket is gone");
    assert_eq!(
        err.kind(),
        std::io::ErrorKind::ConnectionRefused,
        "the client's port unreachable reaches the backend's socket ({err})"
    );
}

#[test]
fn a_service_without_backends_refuses_at_once_and_says_why() {
    require_root!(a_service_without_backends_refuses_at_once_and_says_why);
    let net = Net::new(NetSpec::bpf("10.245.4.0/24"));
    let client = net.pod("cli");
    let vip = Ipv4Addr::new(10, 96, 4, 10);
    apply(
        &net,
        json!([
            {"name": "default/empty", "vip": vip, "port": 80, "backends": []},
            {"name": "default/empty-udp", "vip": vip, "port": 53, "protocol": "udp", "backends": []},
        ]),
    );
    traffic::assert_refused_at_once(Some(&client.ns), SocketAddr::from((vip, 80)));
    let udp = in_netns(Some(&client.ns), move || {
        let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
        s.connect(SocketAddr::from((vip, 53))).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s.send(b"hello").unwrap();
        s.recv(&mut [0u8; 64])
    });
    assert_eq!(
        udp.expect_err("nothing serves it").kind(),
        std::io::ErrorKind::ConnectionRefused
    );

    let ep = registry::find(net.bpf_root(), &client.host_ifname())
        .unwrap()
        .unwrap();
    assert_eq!(
        inspect::counters(net.bpf_root(), ep.ifindex).unwrap().drops[DROP_NO_BACKEND],
        2
    );
    let drops = net.margayctl(&["drops"]);
    let drops = String::from_utf8_lossy(&drops.stdout);
    assert!(
        drops.contains("service-no-backend") && drops.contains(&format!("{vip}:80")),
        "margayctl drops names the reason and the service: {drops}"
    );
}

#[test]
fn a_pod_reaches_itself_through_its_own_service() {
    require_root!(a_pod_reaches_itself_through_its_own_service);
    let net = Net::new(NetSpec::bpf("10.245.5.0/24"));
    let pod = net.pod("self");
    let server = NameServer::start(&pod.ns, "me");
    let vip = Ipv4Addr::new(10, 96, 5, 10);
    apply(
        &net,
        json!([{"name": "default/self", "vip": vip, "port": 80,
                "backends": [backend(v4(&pod), server.port)]}]),
    );
    for _ in 0..3 {
        let mut conn = traffic::connect(Some(&pod.ns), SocketAddr::from((vip, 80)))
            .expect("hairpin connection");
        assert_eq!(ask(&mut conn), "me");
        assert_eq!(ask(&mut conn), "me");
        // The pod sees the service as its peer, not itself.
        assert_eq!(conn.peer_addr().unwrap(), SocketAddr::from((vip, 80)));
    }
}

/// A "node" beyond the host: a namespace reached through a veth and a host
/// route, where the backend runs outside this node's pods.
struct RemoteHost {
    ns: NetNs,
    addr: Ipv4Addr,
}

impl RemoteHost {
    fn new(host_side: Ipv4Addr, addr: Ipv4Addr) -> RemoteHost {
        let ns = NetNs::new("rem");
        let link = unique_name("mgr");
        ns.add_eth0(None, &link);
        run_ok(Command::new("ip").args(["addr", "add", &format!("{host_side}/32"), "dev", &link]));
        run_ok(Command::new("ip").args(["link", "set", &link, "up"]));
        // The remote's replies enter the node by this link, which must
        // forward them, as a node's uplink does. Only this link: the
        // machine's own ip_forward is not the test's to set. (The test
        // relied on it, and passed only where something else on the
        // machine had turned it on.)
        std::fs::write(format!("/proc/sys/net/ipv4/conf/{link}/forwarding"), "1").unwrap();
        run_ok(Command::new("ip").args(["route", "add", &format!("{addr}/32"), "dev", &link]));
        ns.run_ok(&["ip", "addr", "add", &format!("{addr}/32"), "dev", "eth0"]);
        ns.run_ok(&["ip", "link", "set", "eth0", "up"]);
        ns.run_ok(&[
            "ip",
            "route",
            "add",
            &format!("{host_side}/32"),
            "dev",
            "eth0",
        ]);
        ns.run_ok(&[
            "ip",
            "route",
            "add",
            "default",
            "via",
            &host_side.to_string(),
        ]);
        // Dropping the namespace removes the veth pair and its route.
        RemoteHost { ns, addr }
    }
}

#[test]
fn a_backend_off_the_node_is_reached_and_answers_as_the_service() {
    require_root!(a_backend_off_the_node_is_reached_and_answers_as_the_service);
    let net = Net::new(NetSpec::bpf("10.245.6.0/24"));
    let client = net.pod("cli");
    let remote = RemoteHost::new(
        Ipv4Addr::new(10, 245, 106, 1),
        Ipv4Addr::new(10, 245, 106, 2),
    );
    let tcp = TcpServer::start(Some(&remote.ns), "remote");
    let udp = UdpServer::start(Some(&remote.ns), "remote");
    let vip = Ipv4Addr::new(10, 96, 6, 10);
    apply(
        &net,
        json!([
            {"name": "default/far", "vip": vip, "port": 80,
             "backends": [backend(remote.addr, tcp.port)]},
            {"name": "default/far-udp", "vip": vip, "port": 53, "protocol": "udp",
             "backends": [backend(remote.addr, udp.port)]},
        ]),
    );
    let answer = traffic::request(Some(&client.ns), SocketAddr::from((vip, 80)))
        .expect("the remote backend answers through the ClusterIP");
    assert_eq!(answer, format!("remote {}", v4(&client)));
    let (answer, from) = udp_exchange(&client.ns, SocketAddr::from((vip, 53))).unwrap();
    assert_eq!(answer, format!("remote {}", v4(&client)));
    assert_eq!(from, SocketAddr::from((vip, 53)));
    // The client's entries remember the service their replies are turned
    // into: a reply costs that entry's lookup alone.
    let records = inspect::conntrack_records(net.bpf_root(), Some(client.host_ifindex())).unwrap();
    for (protocol, port) in [(6, 80), (17, 53)] {
        let flow = records
            .iter()
            .find(|r| r.protocol == protocol)
            .unwrap_or_else(|| panic!("no flow of protocol {protocol}: {records:?}"));
        assert_eq!(flow.replies_as, Some(format!("{vip}:{port}")), "{flow:?}");
    }
}

#[test]
fn a_bulk_transfer_from_a_local_backend_stays_on_the_redirect_path() {
    require_root!(a_bulk_transfer_from_a_local_backend_stays_on_the_redirect_path);
    let net = Net::new(NetSpec::bpf("10.245.13.0/24"));
    let (client, server) = (net.pod("cli"), net.pod("srv"));
    let vip = Ipv4Addr::new(10, 96, 13, 10);
    let server_ip = v4(&server);
    let before = tx_bytes(&client.host_ifname());
    // Large enough for GSO packets, two CPUs and conntrack refreshes; the
    // replies are the bulk, each turned back into the service's.
    traffic::bulk_transfer(
        &client.ns,
        &server.ns,
        |port| {
            apply(
                &net,
                json!([{"name": "default/bulk", "vip": vip, "port": 80,
                        "backends": [backend(server_ip, port)]}]),
            );
            SocketAddr::from((vip, 80))
        },
        BulkSender::Server,
        1 << 29,
    )
    .expect("the backend's bulk reaches the client through the service");
    let via_stack = tx_bytes(&client.host_ifname()) - before;
    assert!(
        via_stack < 1 << 20,
        "{via_stack} bytes reached the client through the host stack"
    );
    // The backend's entry carries the client's veth and the service its
    // replies are shown as: each costs that one lookup, rewrite included.
    let records = inspect::conntrack_records(net.bpf_root(), Some(server.host_ifindex())).unwrap();
    let flow = records
        .iter()
        .find(|r| r.protocol == 6)
        .unwrap_or_else(|| panic!("no TCP flow tracked: {records:?}"));
    assert_eq!(
        flow.path,
        format!("local:{}", client.host_ifindex()),
        "{flow:?}"
    );
    assert_eq!(flow.replies_as, Some(format!("{vip}:80")), "{flow:?}");
    let received = inspect::counters(net.bpf_root(), client.host_ifindex()).unwrap();
    assert!(
        received.bytes[DIR_INGRESS as usize] >= 1 << 29,
        "the client's ingress counted {} bytes of the 512 MiB sent",
        received.bytes[DIR_INGRESS as usize]
    );
}

#[test]
fn service_changes_keep_running_connections_and_move_new_ones() {
    require_root!(service_changes_keep_running_connections_and_move_new_ones);
    let net = Net::new(NetSpec::bpf("10.245.7.0/24"));
    let client = net.pod("cli");
    let (pods, servers) = backends(&net, 3, NameServer::start);
    let at = |i: usize| backend(v4(&pods[i]), servers[i].port);
    let vip = Ipv4Addr::new(10, 96, 7, 10);
    let svc = |backends: Vec<String>| {
        json!([
            {"name": "default/moving", "vip": vip, "port": 80, "backends": backends},
            {"name": "default/other", "vip": vip, "port": 81, "backends": [at(2)]},
        ])
    };
    apply(&net, svc(vec![at(0)]));
    let mut long_lived = traffic::connect(Some(&client.ns), SocketAddr::from((vip, 80))).unwrap();
    assert_eq!(ask(&mut long_lived), "b0");

    // b1 joins, the other service is unchanged: b0's connection goes on.
    let report = apply(&net, svc(vec![at(0), at(1)]));
    assert_eq!(
        (report["updated"].as_u64(), report["unchanged"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(ask(&mut long_lived), "b0");

    // b0 leaves: its running connection drains, new ones go to b1.
    apply(&net, svc(vec![at(1)]));
    assert_eq!(
        ask(&mut long_lived),
        "b0",
        "a running connection is not broken"
    );
    for _ in 0..10 {
        let mut fresh = traffic::connect(Some(&client.ns), SocketAddr::from((vip, 80))).unwrap();
        assert_eq!(
            ask(&mut fresh),
            "b1",
            "new connections avoid the removed backend"
        );
    }

    // The service goes: new connections are no longer translated.
    apply(&net, json!([]));
    assert_eq!(service::list(net.bpf_root()).unwrap(), vec![]);
    assert!(traffic::connect(Some(&client.ns), SocketAddr::from((vip, 80))).is_err());
}

#[test]
fn ten_thousand_services_apply_at_once_and_the_last_one_answers() {
    require_root!(ten_thousand_services_apply_at_once_and_the_last_one_answers);
    let net = Net::new(NetSpec::bpf("10.245.8.0/24"));
    let (client, b) = (net.pod("cli"), net.pod("b"));
    let server = TcpServer::start(Some(&b.ns), "last");
    // Setting up the node's maps happens with the first pod; open them.
    let specs: Vec<ServiceSpec> = (0..10_000u32)
        .map(|i| ServiceSpec {
            backends: vec![SocketAddrV4::new(v4(&b), server.port).into()],
            // 10.96.0.1 ..
            ..ServiceSpec::new(
                format!("ns/svc-{i}"),
                Ipv4Addr::from(0x0a60_0000 + i + 1).into(),
                80,
                Protocol::TCP,
            )
        })
        .collect();
    let started = Instant::now();
    let report = service::apply(net.bpf_root(), &specs).unwrap();
    let took = started.elapsed();
    eprintln!("applied 10,000 services in {took:?}");
    assert_eq!(report.added, 10_000);
    let last = specs.last().unwrap().vip;
    assert_eq!(
        traffic::request(Some(&client.ns), SocketAddr::from((last, 80))).unwrap(),
        format!("last {}", v4(&client))
    );
    let again = service::apply(net.bpf_root(), &specs).unwrap();
    assert_eq!(
        again.unchanged, 10_000,
        "a re-apply of the same set writes nothing"
    );
}

/// Changes applied one by one through a kept table (as margay-agent does)
/// leave the maps as a whole apply would: a whole apply of the merged set
/// afterwards, by a fresh table that reads the maps back, finds nothing to
/// do. Also: a pod leaving the node takes its `Local` frontends' backend
/// with it at the next change; a change that claims what another service
/// holds is refused whole; another writer makes the table ask for the
/// whole set.
#[test]
fn changes_applied_one_by_one_leave_the_maps_as_a_whole_apply_would() {
    require_root!(changes_applied_one_by_one_leave_the_maps_as_a_whole_apply_would);
    use margay_ebpf::service::{ChangesApplied, ServiceError, ServiceTable};
    use margay_model::service::{Frontend, TrafficPolicy};
    use std::collections::BTreeMap;

    let net = Net::new(NetSpec::bpf("10.245.14.0/24"));
    let (near, leaving) = (net.pod("near"), net.pod("leave"));
    let root = net.bpf_root();
    let remote = |i: u8| SocketAddr::from((Ipv4Addr::new(10, 244, 9, i), 80));
    let spec = |i: u32, backends: Vec<SocketAddr>| ServiceSpec {
        backends,
        ..ServiceSpec::new(
            format!("ns/s{i}"),
            Ipv4Addr::from(0x0a60_0c00 + i).into(),
            80,
            Protocol::TCP,
        )
    };
    let mut set: BTreeMap<Frontend, ServiceSpec> = (1..=40u32)
        .map(|i| spec(i, vec![remote(i as u8), remote(100)]))
        .map(|s| (s.cluster_ip(), s))
        .collect();
    let mut local = ServiceSpec {
        internal_traffic_policy: TrafficPolicy::Local,
        ..spec(
            41,
            vec![
                SocketAddr::from((v4(&near), 80)),
                SocketAddr::from((v4(&leaving), 80)),
                remote(1),
            ],
        )
    };
    local.node_port = Some(30_141);
    set.insert(local.cluster_ip(), local.clone());

    let mut table = ServiceTable::open(root).unwrap();
    let whole = |set: &BTreeMap<Frontend, ServiceSpec>| set.values().cloned().collect::<Vec<_>>();
    table.apply(&whole(&set)).unwrap();
    let written =
        |table: &mut ServiceTable, changed: &[ServiceSpec], removed: &[Frontend]| match table
            .apply_changes(changed, removed)
            .unwrap()
        {
            ChangesApplied::Written(report) => report,
            ChangesApplied::WholeSetNeeded => panic!("the table wrote the maps last"),
        };
    // Checked by a fresh table, which makes the kept one read the maps
    // back; it then applies the whole set too, and also finds nothing.
    let nothing_left_to_do =
        |table: &mut ServiceTable, set: &BTreeMap<Frontend, ServiceSpec>, step: &str| {
            let fresh = ServiceTable::open(root)
                .unwrap()
                .apply(&whole(set))
                .unwrap();
            let kept = table.apply(&whole(set)).unwrap();
            for report in [fresh, kept] {
                assert_eq!(
                    (report.added, report.updated, report.removed),
                    (0, 0, 0),
                    "{step}: the maps differ from a whole apply"
                );
            }
        };

    // Backends change, a service goes, one comes, one moves to another
    // ClusterIP, and a new one takes the NodePort of one removed, at once.
    let mut changed = vec![
        spec(3, vec![remote(3), remote(200)]),
        spec(50, vec![remote(50)]),
        ServiceSpec {
            node_port: Some(30_141),
            ..spec(51, vec![remote(51)])
        },
    ];
    let moved = spec(7, vec![remote(7)]);
    let moved_to = ServiceSpec {
        vip: Ipv4Addr::new(10, 96, 99, 7).into(),
        ..moved.clone()
    };
    changed.push(moved_to.clone());
    let removed = vec![
        spec(9, vec![]).cluster_ip(),
        moved.cluster_ip(),
        local.cluster_ip(),
    ];
    let report = written(&mut table, &changed, &removed);
    assert_eq!((report.added, report.updated, report.removed), (3, 1, 3));
    for f in &removed {
        set.remove(f);
    }
    for s in &changed {
        set.insert(s.cluster_ip(), s.clone());
    }
    nothing_left_to_do(&mut table, &set, "after the first change");
    let rows = service::list(root).unwrap();
    assert!(!rows.iter().any(|r| r.address == moved.vip));
    assert!(rows.iter().any(|r| r.address == moved_to.vip));

    // The Local service comes back, without the NodePort it had: that is
    // the new service's now, so with it the change is refused. Then a pod
    // leaves the node, and the next change, about another service, drops
    // that pod from the Local one.
    let err = table
        .apply_changes(std::slice::from_ref(&local), &[])
        .map(|_| ())
        .unwrap_err();
    assert!(matches!(err, ServiceError::SharedNodePort { .. }), "{err}");
    let local = ServiceSpec {
        node_port: None,
        ..local
    };
    let local_back = written(&mut table, std::slice::from_ref(&local), &[]);
    assert_eq!(local_back.added, 1);
    set.insert(local.cluster_ip(), local.clone());
    let local_backends = |rows: &[service::FrontendRow]| {
        let mut b = rows
            .iter()
            .find(|r| r.address == local.vip)
            .unwrap()
            .backends
            .clone();
        b.sort();
        b
    };
    let mut both = vec![
        SocketAddr::from((v4(&near), 80)),
        SocketAddr::from((v4(&leaving), 80)),
    ];
    both.sort();
    assert_eq!(local_backends(&service::list(root).unwrap()), both);
    net.del(&leaving).unwrap();
    written(&mut table, &[spec(4, vec![remote(44)])], &[]);
    set.insert(spec(4, vec![]).cluster_ip(), spec(4, vec![remote(44)]));
    assert_eq!(
        local_backends(&service::list(root).unwrap()),
        vec![SocketAddr::from((v4(&near), 80))],
        "the pod that left is no local backend"
    );
    nothing_left_to_do(&mut table, &set, "after a pod left");

    // A change claiming another service's ClusterIP (as an external IP) is
    // refused whole.
    let before = service::list(root).unwrap();
    let thief = ServiceSpec {
        name: "ns/thief".into(),
        external_ips: vec![spec(5, vec![]).vip],
        ..spec(60, vec![remote(60)])
    };
    let err = table
        .apply_changes(&[spec(6, vec![remote(66)]), thief], &[])
        .map(|_| ())
        .unwrap_err();
    assert!(
        matches!(&err, ServiceError::SharedFrontend { name, .. } if name == "ns/thief"),
        "{err}"
    );
    assert_eq!(service::list(root).unwrap(), before, "nothing was written");

    // Another writer: the table cannot tell what a change is a change of.
    service::apply(root, &whole(&set)).unwrap();
    assert_eq!(
        table.apply_changes(&[], &[]).unwrap(),
        ChangesApplied::WholeSetNeeded
    );
    assert_eq!(table.apply(&whole(&set)).unwrap().added, 0);
    assert!(matches!(
        table.apply_changes(&[], &[]).unwrap(),
        ChangesApplied::Written(_)
    ));
}

#[test]
fn a_set_larger_than_the_maps_is_refused_whole_and_bad_files_are_named() {
    require_root!(a_set_larger_than_the_maps_is_refused_whole_and_bad_files_are_named);
    let mut spec = NetSpec::bpf("10.245.9.0/24");
    spec.extra = json!({"bpf_service_frontends": 16, "bpf_service_backends": 16});
    let net = Net::new(spec);
    let _pod = net.pod("p");
    let some = |n: u32| -> Value {
        (0..n)
            .map(|i| json!({"name": format!("ns/s{i}"), "vip": Ipv4Addr::from(0x0a61_0000 + i), "port": 80,
                            "backends": ["10.245.9.200:80"]}))
            .collect()
    };
    apply(&net, some(3));
    let file = net.dir.path().join("too-many.json");
    std::fs::write(&file, json!({"services": some(17)}).to_string()).unwrap();
    let out = net.margayctl(&["service", "apply", "-f", file.to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("svc_frontends") && stderr.contains("bpf_service_frontends"),
        "{stderr}"
    );
    assert_eq!(
        service::list(net.bpf_root()).unwrap().len(),
        3,
        "nothing changed"
    );

    std::fs::write(
        &file,
        r#"{"services": [{"name": "a", "vip": "10.97.0.1", "port": 80, "backends": ["10.0.0.1:0"]}]}"#,
    )
    .unwrap();
    let out = net.margayctl(&["service", "apply", "-f", file.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("services[0] (a): backends[0]"));
    std::fs::write(
        &file,
        r#"{"services": [{"name": "a", "vip": "10.97.0.1", "prot": 80}]}"#,
    )
    .unwrap();
    let out = net.margayctl(&["service", "apply", "-f", file.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("prot"));
    assert_eq!(
        service::list(net.bpf_root()).unwrap().len(),
        3,
        "still nothing changed"
    );
}
