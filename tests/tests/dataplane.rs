//! The eBPF dataplane end to end: pods added through the CNI driver in
//! `"dataplane": "bpf"` mode, real traffic between namespaces, policies and
//! spoofing, DEL and GC cleanup, the upgrade path.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Command;

use margay_conf::netconf::AttachmentId;
use margay_ebpf::abi;
use margay_ebpf::node::{self, Node, PROGRAMS, Settings};
use margay_ebpf::paths::map_path;
use margay_ebpf::{inspect, maps, policy, registry};
use margay_model::policy::PolicySpec;
use margay_tests::bins::bin;
use margay_tests::bpf::{HASH, LRU_HASH, pretend_another_build_is_pinned};
use margay_tests::cgroup::TestCgroup;
use margay_tests::fixture::{Net, NetSpec, Pod};
use margay_tests::netns::{NetNs, tx_bytes};
use margay_tests::require_root;
use margay_tests::traffic::{self, BulkSender, EchoServer, TcpServer, UdpServer};
use serde_json::json;

fn v4(pod: &Pod) -> Ipv4Addr {
    match pod.ip() {
        IpAddr::V4(a) => a,
        IpAddr::V6(_) => panic!("IPv4 expected"),
    }
}

/// Both programs of `root` are attached to `ifname`.
fn assert_attached(root: &Path, ifname: &str) {
    for (name, kind) in PROGRAMS {
        let id = aya::programs::ProgramInfo::from_pin(root.join("progs").join(name))
            .unwrap()
            .id();
        assert!(
            node::attached(ifname, kind).contains(&id),
            "{name} is attached to {ifname}"
        );
    }
}

fn set_policy(net: &Net, pod: &Pod, spec: &str) {
    let ep = registry::find(net.bpf_root(), &pod.host_ifname())
        .unwrap()
        .expect("registered");
    let spec: PolicySpec = serde_json::from_str(spec).unwrap();
    policy::set(net.bpf_root(), ep.ifindex, &spec).unwrap();
}

#[test]
fn pods_with_programs_reach_each_other_over_tcp_udp_and_icmp() {
    require_root!(pods_with_programs_reach_each_other_over_tcp_udp_and_icmp);
    let net = Net::new(NetSpec::bpf("10.241.1.0/24"));
    let a = net.pod("a");
    let b = net.pod("b");
    for p in [&a, &b] {
        assert_attached(net.bpf_root(), &p.host_ifname());
    }
    let tcp_b = TcpServer::start(Some(&b.ns), "b");
    assert_eq!(
        traffic::request(Some(&a.ns), SocketAddr::new(b.ip(), tcp_b.port)).unwrap(),
        format!("b {}", a.ip())
    );
    let udp_a = UdpServer::start(Some(&a.ns), "a");
    assert_eq!(
        traffic::udp_request(Some(&b.ns), SocketAddr::new(a.ip(), udp_a.port)).unwrap(),
        format!("a {}", b.ip())
    );
    let ping =
        a.ns.run(&["ping", "-c", "2", "-W", "2", &b.ip().to_string()]);
    assert!(
        ping.status.success(),
        "ping: {}",
        String::from_utf8_lossy(&ping.stdout)
    );
    let host = TcpServer::start(None, "host");
    let host_ip = IpAddr::V4(traffic::host_address());
    assert_eq!(
        traffic::request(Some(&a.ns), SocketAddr::new(host_ip, host.port)).unwrap(),
        format!("host {}", a.ip())
    );

    // Pod to pod took the redirect: conntrack marks the flow as delivered locally.
    let flows = inspect::conntrack(net.bpf_root(), None).unwrap();
    assert!(
        flows
            .iter()
            .any(|(k, e)| k.proto == 6 && e.flags & abi::CT_F_LOCAL_DELIVERY != 0),
        "a TCP flow was delivered by bpf_redirect_peer"
    );
    let listing = net.margayctl_ok(&["endpoints", "--json"]);
    let eps: serde_json::Value = serde_json::from_str(&listing).unwrap();
    assert_eq!(eps.as_array().unwrap().len(), 2);
    for ep in eps.as_array().unwrap() {
        assert_eq!(ep["programs"], json!(["from_pod", "to_pod"]), "{listing}");
    }
    let counters = net.margayctl_ok(&["counters", "--endpoint", &a.ip().to_string(), "--json"]);
    let c: serde_json::Value = serde_json::from_str(&counters).unwrap();
    assert!(
        c[0]["from_pod_packets"].as_u64().unwrap() >= 6,
        "{counters}"
    );
    assert!(c[0]["to_pod_packets"].as_u64().unwrap() >= 6, "{counters}");
}

#[test]
fn a_pod_forging_its_source_address_is_blocked_and_counted() {
    require_root!(a_pod_forging_its_source_address_is_blocked_and_counted);
    let net = Net::new(NetSpec::bpf("10.241.2.0/24"));
    let a = net.pod("spoofer");
    let b = net.pod("victim");
    let server = UdpServer::start(Some(&b.ns), "b");
    let forged = Ipv4Addr::new(10, 241, 2, 200);
    for _ in 0..3 {
        traffic::send_forged_udp(&a.ns, forged, v4(&b), server.port).unwrap();
    }
    // An honest datagram after the forged ones: it arrives, so the forged ones had time to.
    assert!(traffic::udp_request(Some(&a.ns), SocketAddr::new(b.ip(), server.port)).is_ok());
    let seen = server.received.lock().unwrap().clone();
    assert_eq!(seen, vec![a.ip()], "only the honest datagram arrived");
    let ep = registry::find(net.bpf_root(), &a.host_ifname())
        .unwrap()
        .unwrap();
    let counters = inspect::counters(net.bpf_root(), ep.ifindex).unwrap();
    assert_eq!(counters.drops[abi::DROP_SPOOF_IP], 3);
    let drops = net.margayctl_ok(&["drops"]);
    assert!(
        drops.contains("spoofed-ip") && drops.contains("10.241.2.200"),
        "{drops}"
    );
    assert!(
        drops.contains(&a.host_ifname()),
        "the drop names the endpoint: {drops}"
    );
}

#[test]
fn a_deny_policy_blocks_new_connections_while_an_allowed_one_flows() {
    require_root!(a_deny_policy_blocks_new_connections_while_an_allowed_one_flows);
    let net = Net::new(NetSpec::bpf("10.241.3.0/24"));
    let client = net.pod("client");
    let server = net.pod("server");
    let echo = EchoServer::start(Some(&server.ns));
    let addr = SocketAddr::new(server.ip(), echo.port());
    let mut long_lived = traffic::connect(Some(&client.ns), addr).unwrap();
    assert_eq!(traffic::round_trip(&mut long_lived, "one").unwrap(), "one");

    set_policy(
        &net,
        &server,
        r#"{"ingress": [{"action": "deny", "protocol": "tcp"}, {"action": "allow"}]}"#,
    );
    let refused = traffic::connect(Some(&client.ns), addr);
    assert!(refused.is_err(), "a new connection is dropped");
    assert_eq!(
        traffic::round_trip(&mut long_lived, "two").unwrap(),
        "two",
        "the established one flows"
    );
    let ep = registry::find(net.bpf_root(), &server.host_ifname())
        .unwrap()
        .unwrap();
    assert!(
        inspect::counters(net.bpf_root(), ep.ifindex).unwrap().drops[abi::DROP_POLICY_INGRESS] >= 1
    );

    // Policies through margayctl, from a YAML file.
    let file = net.dir.path().join("allow.yaml");
    std::fs::write(
        &file,
        "ingress:\n  - action: allow\n    protocol: tcp\n    ports: \"1-65535\"\n",
    )
    .unwrap();
    net.margayctl_ok(&[
        "policy",
        "set",
        "--endpoint",
        &server.ip().to_string(),
        "-f",
        file.to_str().unwrap(),
    ]);
    assert!(
        traffic::connect(Some(&client.ns), addr).is_ok(),
        "allowed again, without re-attaching"
    );
    let shown = net.margayctl_ok(&["policy", "show", "--endpoint", &server.host_ifname()]);
    assert!(
        shown.contains("ports: 1-65535") || shown.contains("ports: '1-65535'"),
        "{shown}"
    );
}

#[test]
fn programs_keep_enforcing_after_every_margay_process_exits() {
    require_root!(programs_keep_enforcing_after_every_margay_process_exits);
    let net = Net::new(NetSpec::bpf("10.241.4.0/24"));
    let a = net.pod("a");
    let b = net.pod("b");
    // The ADDs have returned: no Margay process of ours runs now, only pins.
    let server = TcpServer::start(Some(&b.ns), "b");
    set_policy(&net, &b, r#"{"ingress": []}"#);
    assert!(traffic::request(Some(&a.ns), SocketAddr::new(b.ip(), server.port)).is_err());
    assert_attached(net.bpf_root(), &b.host_ifname());
}

/// Whether any host interface has index `ifindex`.
fn ifindex_in_use(ifindex: u32) -> bool {
    std::fs::read_dir("/sys/class/net")
        .unwrap()
        .flatten()
        .any(|e| {
            std::fs::read_to_string(e.path().join("ifindex"))
                .is_ok_and(|i| i.trim() == ifindex.to_string())
        })
}

#[test]
fn del_leaves_no_link_pin_or_endpoint_entry() {
    require_root!(del_leaves_no_link_pin_or_endpoint_entry);
    let net = Net::new(NetSpec::bpf("10.241.5.0/24"));
    let a = net.pod("a");
    let b = net.pod("b");
    let server = TcpServer::start(Some(&b.ns), "b");
    traffic::request(Some(&a.ns), SocketAddr::new(b.ip(), server.port)).unwrap();
    set_policy(&net, &a, r#"{"egress": [{"action": "allow"}]}"#);
    let (a_if, b_if) = (a.host_ifindex(), b.host_ifindex());
    assert!(
        !inspect::conntrack(net.bpf_root(), Some(a_if))
            .unwrap()
            .is_empty()
    );
    let dump = net.margayctl_ok(&["conntrack", "dump"]);
    assert_eq!(
        dump.lines()
            .next()
            .unwrap()
            .split_whitespace()
            .collect::<Vec<_>>(),
        [
            "IFINDEX",
            "PROTO",
            "SRC",
            "DST",
            "STATE",
            "AGE",
            "IDLE",
            "PATH",
            "REPLIES-AS"
        ],
        "{dump}"
    );
    assert!(
        dump.contains(&format!("local:{b_if}")),
        "a's entry names b's veth: {dump}"
    );

    net.del(&a).unwrap();
    // b's namespace disappears before its DEL (the veth goes with it).
    let b_cid = b.cid.clone();
    drop(b.ns);
    net.rt.del(&b_cid, None, "eth0", "").unwrap();

    let r = net.bpf_root();
    let pins: Vec<_> = std::fs::read_dir(r)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        pins.len(),
        2,
        "only the node's progs/ and maps/ stay: {pins:?}"
    );
    assert!(registry::list(r).unwrap().is_empty(), "no endpoint entries");
    assert_eq!(
        maps::endpoints_by_ip(r).unwrap().keys().count(),
        0,
        "no IP index entries"
    );
    assert_eq!(maps::policies(r).unwrap().keys().count(), 0, "no policies");
    for i in [a_if, b_if] {
        assert!(
            maps::counter_slots(r)
                .unwrap()
                .iter()
                .all(|kv| kv.map(|(_, holder)| holder != i).unwrap_or(true)),
            "no counters slot held by {i}"
        );
    }
    // DEL leaves conntrack alone: removing an endpoint's entries meant
    // walking the whole table, one syscall per entry, on every DEL. What
    // stays is keyed by ifindexes no interface has any more, and the kernel
    // does not hand them out again, so no packet can match it: it is inert
    // until the LRU ages it out, or an operator flushes it.
    let left = inspect::conntrack(r, None).unwrap();
    assert!(
        left.iter().any(|(k, _)| k.ifindex == a_if),
        "DEL did not walk conntrack"
    );
    for (k, _) in &left {
        assert!([a_if, b_if].contains(&k.ifindex), "{k:?}");
        assert!(!ifindex_in_use(k.ifindex), "ifindex {} is dead", k.ifindex);
    }
    let flushed = net.margayctl_ok(&["conntrack", "flush"]);
    assert_eq!(
        flushed.trim(),
        format!("flushed {} conntrack entries", left.len())
    );
    assert!(inspect::conntrack(r, None).unwrap().is_empty());
    net.assert_nothing_left("10.241.5.");
}

#[test]
fn thirty_two_concurrent_adds_all_get_programs() {
    require_root!(thirty_two_concurrent_adds_all_get_programs);
    let net = Net::new(NetSpec::bpf("10.241.6.0/24"));
    let nss: Vec<NetNs> = (0..32).map(|i| NetNs::new(&format!("b{i}"))).collect();
    let results: Vec<serde_json::Value> = std::thread::scope(|s| {
        let handles: Vec<_> = nss
            .iter()
            .enumerate()
            .map(|(i, ns)| {
                let net = &net;
                s.spawn(move || {
                    net.add(ns, &format!("bpf{i}"))
                        .unwrap_or_else(|e| panic!("ADD {i}: {e}"))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for r in &results {
        assert_attached(net.bpf_root(), r["interfaces"][0]["name"].as_str().unwrap());
    }
    assert_eq!(registry::list(net.bpf_root()).unwrap().len(), 32);
    std::thread::scope(|s| {
        for (i, ns) in nss.iter().enumerate() {
            let net = &net;
            s.spawn(move || {
                net.rt
                    .del(&format!("bpf{i}"), Some(&ns.path()), "eth0", "")
                    .unwrap()
            });
        }
    });
    assert!(registry::list(net.bpf_root()).unwrap().is_empty());
    net.assert_nothing_left("10.241.6.");
}

#[test]
fn check_verifies_the_programs_and_gc_removes_stale_endpoints() {
    require_root!(check_verifies_the_programs_and_gc_removes_stale_endpoints);
    let net = Net::new(NetSpec::bpf("10.241.7.0/24"));
    let keep = net.pod("keep");
    let stale = net.pod("stale");
    net.check(&keep).unwrap();
    Node::detach(&keep.host_ifname()).unwrap();
    let err = net.check(&keep).unwrap_err();
    assert_eq!(err.code.number(), 107, "{err}");
    assert!(err.msg.contains("from_pod is not attached"), "{err}");

    net.rt
        .gc(&[AttachmentId {
            container_id: keep.cid.clone(),
            ifname: "eth0".into(),
        }])
        .unwrap();
    let left: Vec<String> = registry::list(net.bpf_root())
        .unwrap()
        .iter()
        .map(|e| e.ifname())
        .collect();
    assert_eq!(
        left,
        vec![keep.host_ifname()],
        "GC unregistered the stale endpoint"
    );
    assert!(
        net.host_veths().iter().all(|v| *v != stale.host_ifname()),
        "and removed its veth"
    );
}

#[test]
fn gc_forgets_endpoints_whose_veth_vanished_without_del() {
    require_root!(gc_forgets_endpoints_whose_veth_vanished_without_del);
    let net = Net::new(NetSpec::bpf("10.232.1.0/24"));
    let keep = net.pod("keep");
    let gone = net.pod("gone");
    set_policy(&net, &gone, r#"{"ingress": []}"#);
    // Counters live in an array by slot, so "gone's counters" are its
    // slot's: what GC must free is the slot, for the next endpoint to zero.
    let gone_slot = registry::find(net.bpf_root(), &gone.host_ifname())
        .unwrap()
        .expect("registered")
        .slot;
    let listed = || -> Vec<String> {
        let eps: serde_json::Value =
            serde_json::from_str(&net.margayctl_ok(&["endpoints", "--json"])).unwrap();
        let mut names: Vec<String> = eps
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["ifname"].as_str().unwrap().to_string())
            .collect();
        names.sort();
        names
    };
    let mut both = vec![keep.host_ifname(), gone.host_ifname()];
    both.sort();
    assert_eq!(listed(), both);

    // The veth goes without a DEL; the runtime still lists both pods.
    margay_tests::netns::run_ok(Command::new("ip").args(["link", "del", &gone.host_ifname()]));
    assert_eq!(listed(), both, "the registry still has it");
    let valid: Vec<AttachmentId> = [&keep, &gone]
        .iter()
        .map(|p| AttachmentId {
            container_id: p.cid.clone(),
            ifname: "eth0".into(),
        })
        .collect();
    net.rt.gc(&valid).unwrap();

    assert_eq!(listed(), vec![keep.host_ifname()]);
    let r = net.bpf_root();
    assert!(
        maps::endpoints_by_ip(r)
            .unwrap()
            .get(&v4(&gone).octets(), 0)
            .is_err(),
        "no IP index entry"
    );
    assert_eq!(maps::policies(r).unwrap().keys().count(), 0, "no policy");
    assert!(
        maps::counter_slots(r).unwrap().get(&gone_slot, 0).is_err(),
        "its counters slot is free"
    );
    assert_eq!(net.allocations(), 2, "IPAM follows the runtime's list");
    net.check(&keep).unwrap();
    net.del(&gone).unwrap();
    net.del(&keep).unwrap();
    net.assert_nothing_left("10.232.1.");
}

#[test]
fn an_unusable_bpf_root_is_a_clear_error_and_leaks_nothing() {
    require_root!(an_unusable_bpf_root_is_a_clear_error_and_leaks_nothing);
    let not_bpffs = tempfile::tempdir().unwrap();
    let net = Net::new(NetSpec {
        extra: json!({"bpf_root": not_bpffs.path()}),
        ..NetSpec::bpf("10.241.8.0/24")
    });
    let ns = NetNs::new("nobpf");
    let err = net.add(&ns, "nobpf-1").unwrap_err();
    assert_eq!(err.code.number(), 106, "{err}");
    assert!(err.msg.contains("not on a bpffs"), "{err}");
    net.assert_nothing_left("10.241.8.");
}

#[test]
fn host_network_service_links_move_to_another_cgroup() {
    require_root!(host_network_service_links_move_to_another_cgroup);
    let root = margay_tests::bpf::BpfRoot::new();
    let r = root.path();
    Node::open(r, &Settings::default()).unwrap();
    let (first, second) = (TestCgroup::new(r), TestCgroup::new(r));
    margay_ebpf::host_lb::attach(r, &first.dir).unwrap();
    // The agent told of another cgroup: each pinned link is replaced by
    // one to it (the old pin set aside meanwhile, never a moment without).
    margay_ebpf::host_lb::attach(r, &second.dir).expect("the links move to the other cgroup");
    assert!(margay_ebpf::host_lb::attached(r));
    let links: Vec<String> = std::fs::read_dir(r.join("links"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        links.iter().all(|l| !l.ends_with("previous")),
        "nothing set aside is left: {links:?}"
    );
}

#[test]
fn upgrades_reuse_compatible_maps_and_move_running_endpoints() {
    require_root!(upgrades_reuse_compatible_maps_and_move_running_endpoints);
    let net = Net::new(NetSpec::bpf("10.241.9.0/24"));
    let a = net.pod("a");
    let b = net.pod("b");
    let server = EchoServer::start(Some(&b.ns));
    let mut conn = traffic::connect(Some(&a.ns), SocketAddr::new(b.ip(), server.port())).unwrap();
    assert_eq!(traffic::round_trip(&mut conn, "before").unwrap(), "before");
    let r = net.bpf_root();
    let prog_id = |name: &str| {
        aya::programs::ProgramInfo::from_pin(r.join("progs").join(name))
            .unwrap()
            .id()
    };
    let old = prog_id("from_pod");

    // Another build's programs are pinned (its fingerprint differs): the
    // next open loads ours, keeps the maps and moves the links over.
    pretend_another_build_is_pinned(r);
    Node::open(r, &Settings::default()).unwrap();
    let new = prog_id("from_pod");
    assert_ne!(old, new, "programs were reloaded");
    assert_attached(r, &a.host_ifname());
    assert_eq!(
        registry::list(r).unwrap().len(),
        2,
        "endpoint entries survived"
    );
    assert_eq!(
        traffic::round_trip(&mut conn, "after").unwrap(),
        "after",
        "the connection survived"
    );

    // A new conntrack size: that map is rebuilt, its flows carried over.
    let flows = |r: &Path| inspect::conntrack(r, None).unwrap();
    let before = flows(r);
    assert!(!before.is_empty());
    let bigger = Settings {
        conntrack_size: 131_072,
        ..Settings::default()
    };
    Node::open(r, &bigger).unwrap();
    assert_eq!(
        maps::Layout::of_pin(&map_path(r, "conntrack"))
            .unwrap()
            .max_entries,
        131_072
    );
    let after = flows(r);
    for flow in &before {
        assert!(after.contains(flow), "{flow:?} was lost: {after:?}");
    }
    assert_attached(r, &b.host_ifname());
    assert_eq!(
        traffic::round_trip(&mut conn, "resized").unwrap(),
        "resized"
    );
}

#[test]
fn a_pinned_map_of_an_unknown_layout_is_refused_clearly() {
    require_root!(a_pinned_map_of_an_unknown_layout_is_refused_clearly);
    let r = margay_tests::bpf::BpfRoot::new();
    std::fs::create_dir_all(r.path().join("maps")).unwrap();
    // What some other build might have left: `endpoints` with 64-byte values.
    margay_tests::bpf::pin_hash_map(&r.path().join("maps/endpoints"), HASH, 4, 64, 1024);
    let err = Node::open(r.path(), &Settings::default())
        .err()
        .expect("refused");
    let msg = err.to_string();
    assert!(
        msg.contains("maps/endpoints") && msg.contains("value 64 B") && msg.contains("value 36 B"),
        "{msg}"
    );
    assert!(
        msg.contains("detach-all"),
        "the error says what to do: {msg}"
    );
    assert!(
        !r.path().join("progs/from_pod").exists(),
        "nothing half-installed"
    );

    // A rebuildable map of another layout is simply replaced.
    let r2 = margay_tests::bpf::BpfRoot::new();
    std::fs::create_dir_all(r2.path().join("maps")).unwrap();
    margay_tests::bpf::pin_hash_map(&r2.path().join("maps/conntrack"), LRU_HASH, 8, 8, 16);
    Node::open(r2.path(), &Settings::default()).unwrap();
    let ct = maps::Layout::of_pin(&map_path(r2.path(), "conntrack")).unwrap();
    let sizes = (
        std::mem::size_of::<abi::CtKey>(),
        std::mem::size_of::<abi::CtEntry>(),
    );
    assert_eq!((ct.key_size as usize, ct.value_size as usize), sizes);
}

#[test]
fn running_flows_survive_a_build_whose_conntrack_entries_are_longer() {
    require_root!(running_flows_survive_a_build_whose_conntrack_entries_are_longer);
    let entry = abi::CtEntry {
        last_seen_ns: 123_456_789,
        created_s: 42,
        state: 2,
        flags: abi::CT_F_ORIGIN_IS_A | abi::CT_F_LOCAL_DELIVERY,
        slot: 9,
        pod_ip: [10, 241, 11, 2],
        pod_mac: [2, 0, 0, 0, 0, 2],
        peer_slot: 10,
        peer_mac: [2, 0, 0, 0, 0, 3],
        ..Default::default()
    };
    // 40-byte entries: without the service their replies are turned into.
    flow_survives_from_layout::<40>(entry);
    // 48-byte entries: an IPv4 service's turn without IPv6's room.
    let mut turn = [0; 16];
    turn[..4].copy_from_slice(&[10, 96, 0, 10]);
    flow_survives_from_layout::<48>(abi::CtEntry {
        turn_port: 80u16.to_be_bytes(),
        turn_addr: turn,
        ..entry
    });
}

/// A flow of `entry`, left by a build whose entries were its first `N`
/// bytes, is read back whole by this build's node.
fn flow_survives_from_layout<const N: usize>(entry: abi::CtEntry) {
    let r = margay_tests::bpf::BpfRoot::new();
    std::fs::create_dir_all(r.path().join("maps")).unwrap();
    let pin = r.path().join("maps/conntrack");
    margay_tests::bpf::pin_hash_map(&pin, LRU_HASH, 20, N as u32, 1024);
    let key = abi::CtKey {
        addr_a: [10, 241, 11, 2],
        addr_b: [10, 241, 11, 3],
        port_a: 4000u16.to_be_bytes(),
        port_b: 80u16.to_be_bytes(),
        proto: 6,
        ifindex: 77,
        ..Default::default()
    };
    let mut old: aya::maps::HashMap<_, abi::CtKey, [u8; N]> = aya::maps::HashMap::try_from(
        aya::maps::Map::LruHashMap(aya::maps::MapData::from_pin(&pin).unwrap()),
    )
    .unwrap();
    // SAFETY: CtEntry is repr(C) plain data; its first N bytes are the
    // earlier layout.
    let bytes: [u8; N] = unsafe { std::mem::transmute_copy(&entry) };
    old.insert(key, bytes, 0).unwrap();
    drop(old);

    Node::open(r.path(), &Settings::default()).unwrap();
    let layout = maps::Layout::of_pin(&pin).unwrap();
    assert_eq!(
        layout.value_size as usize,
        std::mem::size_of::<abi::CtEntry>()
    );
    assert_eq!(
        inspect::conntrack(r.path(), None).unwrap(),
        vec![(key, entry)],
        "the flow of a {N}-byte entry was carried over, what it did not carry read as zero"
    );
}

#[test]
fn a_bulk_transfer_between_local_pods_stays_on_the_redirect_path() {
    require_root!(a_bulk_transfer_between_local_pods_stays_on_the_redirect_path);
    let net = Net::new(NetSpec::bpf("10.241.10.0/24"));
    let client = net.pod("bulkc");
    let server = net.pod("bulks");
    let before = tx_bytes(&server.host_ifname());
    // Large enough for GSO packets, two CPUs and conntrack refreshes: a
    // flow that fell back to the host stack part way (as a conntrack entry
    // re-created mid-stream once made it) would show here.
    let server_ip = server.ip();
    traffic::bulk_transfer(
        &client.ns,
        &server.ns,
        |port| SocketAddr::new(server_ip, port),
        BulkSender::Client,
        1 << 30,
    )
    .unwrap();
    let via_stack = tx_bytes(&server.host_ifname()) - before;
    assert!(
        via_stack < 1 << 20,
        "{via_stack} bytes reached the server through the host stack"
    );
    // The client's entry carries the server's veth: its established
    // packets are delivered on that one lookup (the server's side is
    // consulted once a second), yet the server's counters see them all.
    let server_ifindex = server.host_ifindex();
    let records = inspect::conntrack_records(net.bpf_root(), Some(client.host_ifindex())).unwrap();
    let tcp: Vec<_> = records.iter().filter(|r| r.protocol == 6).collect();
    assert!(!tcp.is_empty(), "no TCP flow tracked: {records:?}");
    for r in tcp {
        assert_eq!(r.path, format!("local:{server_ifindex}"), "{r:?}");
    }
    let received = inspect::counters(net.bpf_root(), server_ifindex).unwrap();
    assert!(
        received.bytes[abi::DIR_INGRESS as usize] >= 1 << 30,
        "the server's ingress counted {} bytes of the 1 GiB sent",
        received.bytes[abi::DIR_INGRESS as usize]
    );
}

#[test]
fn margayctl_says_plainly_when_nothing_is_loaded() {
    let out = Command::new(bin("margayctl"))
        .args(["--bpf-root", "/sys/fs/bpf/no-such-margay-root", "endpoints"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let msg = String::from_utf8_lossy(&out.stderr);
    assert!(
        msg.contains("no Margay dataplane is loaded at /sys/fs/bpf/no-such-margay-root"),
        "{msg}"
    );
    assert!(msg.contains("--bpf-root"), "{msg}");
}

#[test]
fn another_tools_filter_on_the_interface_is_left_alone() {
    require_root!(another_tools_filter_on_the_interface_is_left_alone);
    let root = margay_tests::bpf::BpfRoot::new();
    let veth = margay_tests::netns::HostVeth::new("mgf");
    let name = veth.name.clone();
    let run = |args: &[&str]| margay_tests::netns::run_ok(Command::new(args[0]).args(&args[1..]));
    run(&["tc", "qdisc", "add", "dev", &name, "clsact"]);
    // Another tool's BPF filter, at its own priority (any program will do).
    let mut node = Node::open(root.path(), &Settings::default()).unwrap();
    let mut foreign =
        aya::programs::SchedClassifier::from_pin(root.path().join("progs/to_pod")).unwrap();
    let options = aya::programs::tc::NlOptions {
        priority: 5,
        handle: aya::programs::tc::TcHandle::new(0, 7),
        ..Default::default()
    };
    let id = foreign
        .attach_with_options(
            &name,
            aya::programs::TcAttachType::Ingress,
            aya::programs::tc::TcAttachOptions::Netlink(options),
        )
        .unwrap();
    std::mem::forget(foreign.take_link(id).unwrap());
    node.attach(&name)
        .expect("attaches beside the other filter");
    node.attach(&name)
        .expect("and again, replacing only its own");
    let filters = run(&["tc", "filter", "show", "dev", &name, "ingress"]);
    assert_eq!(filters.matches("name to_pod").count(), 1, "{filters}");
    assert_eq!(filters.matches("name from_pod").count(), 1, "{filters}");
}

/// `margayctl policy sets` as an operator uses it: a set written from a
/// file, a rule naming it, its members changed by writing the file again
/// (the rule stays), the sets shown, and a set no rule names retired.
#[test]
fn sets_from_a_file_decide_who_a_rule_admits() {
    require_root!(sets_from_a_file_decide_who_a_rule_admits);
    let net = Net::new(NetSpec::bpf("10.241.40.0/24"));
    let (a, b, c) = (net.pod("a"), net.pod("b"), net.pod("c"));
    let server = TcpServer::start(Some(&b.ns), "b");
    let to_b = SocketAddr::new(b.ip(), server.port);
    let write_sets = |members: &[Ipv4Addr]| {
        let file = net.dir.path().join("sets.json");
        let members: Vec<_> = members
            .iter()
            .map(|ip| json!({"cidr": format!("{ip}/32")}))
            .collect();
        std::fs::write(&file, json!({"friends": members, "spare": []}).to_string()).unwrap();
        let out = net.margayctl(&["policy", "sets", "-f", file.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    write_sets(&[v4(&a)]);
    set_policy(
        &net,
        &b,
        r#"{"ingress": [{"action": "allow", "set": "friends", "protocol": "tcp", "source": "ops/friends"}]}"#,
    );
    assert!(traffic::request(Some(&a.ns), to_b).is_ok(), "a is a friend");
    assert!(traffic::connect(Some(&c.ns), to_b).is_err(), "c is not");
    write_sets(&[v4(&c)]);
    assert!(
        traffic::connect(Some(&a.ns), to_b).is_err(),
        "a is no longer"
    );
    assert!(traffic::request(Some(&c.ns), to_b).is_ok(), "c is now");

    let shown = net.margayctl(&["--json", "policy", "sets"]);
    let sets: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!(sets["friends"], json!([{"cidr": format!("{}/32", v4(&c))}]));
    let policy = net.margayctl(&["--json", "policy", "show", "--endpoint", &b.host_ifname()]);
    let policy: serde_json::Value = serde_json::from_slice(&policy.stdout).unwrap();
    let rule = &policy[0]["policy"]["ingress"][0];
    assert_eq!(
        (&rule["set"], &rule["source"]),
        (&json!("friends"), &json!("ops/friends"))
    );

    // A file without "spare": it goes; "friends" stays while a rule names it.
    let file = net.dir.path().join("none.json");
    std::fs::write(&file, "{}").unwrap();
    let out = net.margayctl(&["policy", "sets", "-f", file.to_str().unwrap()]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("1 sets retired"),
        "{out:?}"
    );
    let shown = net.margayctl(&["--json", "policy", "sets"]);
    let sets: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert!(
        sets.get("spare").is_none() && sets.get("friends").is_some(),
        "{sets}"
    );
}

/// Sets that do not fit `bpf_ip_set_entries` are refused whole, with the
/// key to raise named: what the node held stays, nothing half-written.
#[test]
fn sets_beyond_the_configured_entries_are_refused_whole() {
    require_root!(sets_beyond_the_configured_entries_are_refused_whole);
    let mut spec = NetSpec::bpf("10.241.41.0/24");
    spec.extra = json!({"bpf_ip_set_entries": 16});
    let net = Net::new(spec);
    let a = net.pod("a");
    let apply = |sets: serde_json::Value| {
        let file = net.dir.path().join("sets.json");
        std::fs::write(&file, sets.to_string()).unwrap();
        net.margayctl(&["policy", "sets", "-f", file.to_str().unwrap()])
    };
    let friends = json!([{"cidr": format!("{}/32", v4(&a))}]);
    let out = apply(json!({ "friends": friends }));
    assert!(out.status.success(), "{out:?}");

    let many: Vec<_> = (0..20)
        .map(|i| json!({"cidr": format!("10.99.0.{i}/32")}))
        .collect();
    let out = apply(json!({ "friends": friends, "many": many }));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "20 more entries fit a map of 16");
    assert!(
        stderr.contains("ip_sets") && stderr.contains("bpf_ip_set_entries"),
        "{stderr}"
    );
    let shown = net.margayctl(&["--json", "policy", "sets"]);
    let sets: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!(sets, json!({ "friends": friends }), "nothing changed");
}
