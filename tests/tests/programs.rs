//! The eBPF programs run in-process on crafted frames (BPF_PROG_TEST_RUN),
//! loaded and pinned exactly as on a node, each test under its own root.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use margay_ebpf::abi::{
    self, CT_CLOSED, CT_CLOSING, CT_ESTABLISHED, CT_FIN_WAIT, CT_SYN_SENT, DIR_EGRESS, Endpoint,
    PolicyKey,
};
use margay_ebpf::node::{Node, Settings};
use margay_ebpf::{inspect, policy, registry};
use margay_model::policy::PolicySpec;
use margay_tests::bpf::{BpfRoot, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, run, run_output};
use margay_tests::packet::{
    self, Ext, L4, POD_MAC, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN, ipv4, ipv6, ipv6_ext,
};
use margay_tests::require_root;

const POD: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 5);
const PEER: Ipv4Addr = Ipv4Addr::new(10, 1, 2, 3);
const POD6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x200, 0, 0, 0, 0, 0, 5);
const PEER6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x1, 0, 0, 0, 0, 0, 3);
/// The pod's link-local address and the gateway's (the host veth's).
const POD_LL: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0x0a);
const GATEWAY_LL: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0xecee, 0xeeff, 0xfeee, 0xeeee);
/// ff02::1:ff00:5, the pod's solicited-node group; ff02::16, MLDv2 routers.
const SOLICITED: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 1, 0xff00, 5);
const MLD_ROUTERS: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0x16);
const RS: u8 = 133;
const RA: u8 = 134;
const NS: u8 = 135;
const NA: u8 = 136;
const MLD2_REPORT: u8 = 143;
/// TestRun puts the packet on loopback: the endpoint under test is ifindex 1.
const IFINDEX: u32 = 1;
/// A forwarded packet's ingress device (not 0, which means "from the node").
const FORWARDED: u32 = 2;

struct Fixture {
    root: BpfRoot,
    node: Node,
}

impl Fixture {
    fn new() -> Fixture {
        Self::with(Settings::default())
    }

    fn with(settings: Settings) -> Fixture {
        let root = BpfRoot::new();
        let node = Node::open(root.path(), &settings).unwrap_or_else(|e| panic!("load: {e}"));
        registry::register(
            root.path(),
            &Endpoint::new(IFINDEX, "lo", POD, POD_MAC),
            Some(POD6),
        )
        .unwrap();
        Fixture { root, node }
    }

    fn out(&self, l4: L4, dst: Ipv4Addr) -> u32 {
        run(&self.node, "from_pod", &ipv4(POD_MAC, POD, dst, &l4), 0)
    }

    fn inbound(&self, l4: L4, src: Ipv4Addr) -> u32 {
        run(
            &self.node,
            "to_pod",
            &ipv4([2, 0, 0, 0, 0, 0x99], src, POD, &l4),
            FORWARDED,
        )
    }

    fn out6(&self, l4: L4, dst: Ipv6Addr) -> u32 {
        run(&self.node, "from_pod", &ipv6(POD_MAC, POD6, dst, &l4), 0)
    }

    fn inbound6(&self, l4: L4, src: Ipv6Addr) -> u32 {
        run(
            &self.node,
            "to_pod",
            &ipv6([2, 0, 0, 0, 0, 0x99], src, POD6, &l4),
            FORWARDED,
        )
    }

    fn policy(&self, yaml_json: &str) {
        let spec: PolicySpec = serde_json::from_str(yaml_json).unwrap();
        policy::set(self.root.path(), IFINDEX, &spec).unwrap();
    }

    fn drops(&self, reason: usize) -> u64 {
        inspect::counters(self.root.path(), IFINDEX).unwrap().drops[reason]
    }

    fn ct_state(&self, peer: Ipv4Addr) -> Vec<u8> {
        inspect::conntrack(self.root.path(), Some(IFINDEX))
            .unwrap()
            .into_iter()
            .filter(|(k, _)| k.addr_a == peer.octets() || k.addr_b == peer.octets())
            .map(|(_, e)| e.state)
            .collect()
    }
}

fn tcp(sport: u16, dport: u16, flags: u8) -> L4 {
    L4::Tcp {
        sport,
        dport,
        flags,
    }
}

#[test]
fn spoofed_source_ip_and_mac_are_dropped_and_counted() {
    require_root!(spoofed_source_ip_and_mac_are_dropped_and_counted);
    let f = Fixture::new();
    assert_eq!(f.out(tcp(1000, 80, TCP_SYN), PEER), TC_ACT_OK);
    let forged_ip = ipv4(
        POD_MAC,
        Ipv4Addr::new(10, 200, 0, 6),
        PEER,
        &tcp(1000, 80, TCP_SYN),
    );
    assert_eq!(run(&f.node, "from_pod", &forged_ip, 0), TC_ACT_SHOT);
    let forged_mac = ipv4([2, 0, 0, 0, 0, 0x0b], POD, PEER, &tcp(1000, 80, TCP_SYN));
    assert_eq!(run(&f.node, "from_pod", &forged_mac, 0), TC_ACT_SHOT);
    let forged_arp = packet::ether([2, 0, 0, 0, 0, 0x0b], 0x0806, 28);
    assert_eq!(run(&f.node, "from_pod", &forged_arp, 0), TC_ACT_SHOT);
    assert_eq!(f.drops(abi::DROP_SPOOF_IP), 1);
    assert_eq!(f.drops(abi::DROP_SPOOF_MAC), 2);
}

#[test]
fn arp_passes_and_garbage_is_dropped_as_unparseable() {
    require_root!(arp_passes_and_garbage_is_dropped_as_unparseable);
    let f = Fixture::new();
    assert_eq!(
        run(&f.node, "from_pod", &packet::ether(POD_MAC, 0x0806, 28), 0),
        TC_ACT_OK
    );
    // An IPv6 ethertype over a header that is not IPv6's (version 0).
    for prog in ["from_pod", "to_pod"] {
        assert_eq!(
            run(
                &f.node,
                prog,
                &packet::ether(POD_MAC, 0x86dd, 40),
                FORWARDED
            ),
            TC_ACT_SHOT,
            "{prog}"
        );
    }
    let mut truncated = ipv4(POD_MAC, POD, PEER, &tcp(1, 2, TCP_SYN));
    truncated.truncate(14 + 20 + 10); // half a TCP header
    assert_eq!(run(&f.node, "from_pod", &truncated, 0), TC_ACT_SHOT);
    let mut bad_ihl = ipv4(POD_MAC, POD, PEER, &tcp(1, 2, TCP_SYN));
    bad_ihl[14] = 0x43;
    assert_eq!(run(&f.node, "from_pod", &bad_ihl, 0), TC_ACT_SHOT);
    assert_eq!(
        run(&f.node, "from_pod", &packet::ether(POD_MAC, 0x88cc, 40), 0),
        TC_ACT_SHOT
    );
    assert_eq!(f.drops(abi::DROP_PARSE), 4);
    assert_eq!(f.drops(2), 1, "unsupported-l3");
}

#[test]
fn every_rule_kind_allows_and_denies() {
    require_root!(every_rule_kind_allows_and_denies);
    let f = Fixture::new();
    f.policy(
        r#"{"egress": [
            {"action": "deny", "cidr": "10.1.2.99/32"},
            {"action": "allow", "cidr": "10.1.0.0/16", "protocol": "tcp", "ports": "80-81"},
            {"action": "deny", "protocol": "udp", "ports": 53},
            {"action": "allow", "protocol": "udp"},
            {"action": "allow", "protocol": "icmp"}
        ]}"#,
    );
    let cases = [
        (
            tcp(2000, 80, TCP_SYN),
            PEER,
            TC_ACT_OK,
            "tcp port in range, cidr in",
        ),
        (tcp(2001, 81, TCP_SYN), PEER, TC_ACT_OK, "tcp upper bound"),
        (
            tcp(2002, 82, TCP_SYN),
            PEER,
            TC_ACT_SHOT,
            "tcp port out of range: default deny",
        ),
        (
            tcp(2003, 80, TCP_SYN),
            Ipv4Addr::new(10, 2, 0, 1),
            TC_ACT_SHOT,
            "cidr out",
        ),
        (
            tcp(2004, 80, TCP_SYN),
            Ipv4Addr::new(10, 1, 2, 99),
            TC_ACT_SHOT,
            "an earlier deny wins",
        ),
        (
            L4::Udp {
                sport: 3000,
                dport: 53,
            },
            PEER,
            TC_ACT_SHOT,
            "explicit deny",
        ),
        (
            L4::Udp {
                sport: 3001,
                dport: 54,
            },
            PEER,
            TC_ACT_OK,
            "protocol-wide allow",
        ),
        (
            L4::IcmpEcho { kind: 8, id: 7 },
            Ipv4Addr::new(8, 8, 8, 8),
            TC_ACT_OK,
            "icmp",
        ),
    ];
    for (l4, dst, want, what) in cases {
        assert_eq!(f.out(l4, dst), want, "{what}");
    }
    assert_eq!(f.drops(abi::DROP_POLICY_EGRESS), 4);

    f.policy(r#"{"ingress": [{"action": "allow", "protocol": "tcp", "ports": 8080}]}"#);
    assert_eq!(f.inbound(tcp(4000, 8080, TCP_SYN), PEER), TC_ACT_OK);
    assert_eq!(f.inbound(tcp(4001, 8081, TCP_SYN), PEER), TC_ACT_SHOT);
    assert_eq!(
        f.out(tcp(2005, 82, TCP_SYN), PEER),
        TC_ACT_OK,
        "no egress policy now: allow all"
    );
    let node_probe = ipv4([2, 0, 0, 0, 0, 0x99], PEER, POD, &tcp(4002, 9999, TCP_SYN));
    assert_eq!(
        run(&f.node, "to_pod", &node_probe, 0),
        TC_ACT_OK,
        "the node itself is let in"
    );
    f.policy(r#"{"ingress": []}"#);
    assert_eq!(
        f.inbound(tcp(4003, 8080, TCP_SYN), PEER),
        TC_ACT_SHOT,
        "an empty list denies all"
    );
    assert_eq!(f.drops(abi::DROP_POLICY_INGRESS), 2);
}

#[test]
fn replies_of_allowed_flows_pass_by_conntrack_and_policy_changes_hit_new_flows() {
    require_root!(replies_of_allowed_flows_pass_by_conntrack_and_policy_changes_hit_new_flows);
    let f = Fixture::new();
    f.policy(r#"{"ingress": []}"#);
    assert_eq!(f.out(tcp(5000, 443, TCP_SYN), PEER), TC_ACT_OK);
    assert_eq!(
        f.inbound(tcp(443, 5000, TCP_SYN | TCP_ACK), PEER),
        TC_ACT_OK,
        "reply passes deny-all ingress"
    );
    assert_eq!(
        f.inbound(tcp(443, 5001, TCP_SYN | TCP_ACK), PEER),
        TC_ACT_SHOT,
        "not a reply"
    );
    let frag_needed = L4::IcmpError {
        kind: 3,
        quoted: packet::quote(POD, PEER, 6, 5000, 443),
    };
    assert_eq!(
        f.inbound(frag_needed, Ipv4Addr::new(10, 9, 9, 9)),
        TC_ACT_OK,
        "ICMP error about the flow is related"
    );
    let unrelated = L4::IcmpError {
        kind: 3,
        quoted: packet::quote(POD, PEER, 6, 5999, 443),
    };
    assert_eq!(
        f.inbound(unrelated, Ipv4Addr::new(10, 9, 9, 9)),
        TC_ACT_SHOT
    );
    // The pod's own ICMP error about the flow passes as well, and is not
    // tracked as a flow of its own (which would let other errors by).
    let pod_error = L4::IcmpError {
        kind: 3,
        quoted: packet::quote(PEER, POD, 6, 443, 5000),
    };
    assert_eq!(f.out(pod_error.clone(), PEER), TC_ACT_OK);
    f.policy(r#"{"egress": [], "ingress": []}"#);
    assert_eq!(
        f.out(pod_error, Ipv4Addr::new(10, 7, 7, 7)),
        TC_ACT_SHOT,
        "the same error sent to a third party is no part of the flow"
    );
    f.policy(r#"{"ingress": []}"#);
    assert!(
        inspect::conntrack(f.root.path(), Some(IFINDEX))
            .unwrap()
            .iter()
            .all(|(k, _)| k.proto != 1),
        "ICMP errors are not tracked"
    );

    // Policy is data: a change applies to the next new flow, no re-attach.
    f.policy(r#"{"egress": [{"action": "deny"}], "ingress": []}"#);
    assert_eq!(
        f.out(tcp(5002, 443, TCP_SYN), PEER),
        TC_ACT_SHOT,
        "new flow denied"
    );
    assert_eq!(
        f.out(tcp(5000, 443, TCP_ACK), PEER),
        TC_ACT_OK,
        "established flow keeps going"
    );
    f.policy("{}");
    assert_eq!(
        f.out(tcp(5002, 443, TCP_SYN), PEER),
        TC_ACT_OK,
        "policy removed: allowed"
    );
}

#[test]
fn tcp_state_follows_syn_fin_and_rst() {
    require_root!(tcp_state_follows_syn_fin_and_rst);
    let f = Fixture::new();
    assert_eq!(f.out(tcp(6000, 22, TCP_SYN), PEER), TC_ACT_OK);
    assert_eq!(f.ct_state(PEER), [CT_SYN_SENT]);
    f.inbound(tcp(22, 6000, TCP_SYN | TCP_ACK), PEER);
    assert_eq!(f.ct_state(PEER), [CT_ESTABLISHED]);
    f.out(tcp(6000, 22, TCP_ACK), PEER);
    assert_eq!(f.ct_state(PEER), [CT_ESTABLISHED]);
    f.out(tcp(6000, 22, TCP_FIN | TCP_ACK), PEER);
    assert_eq!(f.ct_state(PEER), [CT_FIN_WAIT]);
    f.inbound(tcp(22, 6000, TCP_FIN | TCP_ACK), PEER);
    assert_eq!(f.ct_state(PEER), [CT_CLOSING]);

    let other = Ipv4Addr::new(10, 1, 2, 4);
    f.out(tcp(6001, 22, TCP_SYN), other);
    f.inbound(tcp(22, 6001, TCP_RST | TCP_ACK), other);
    assert_eq!(f.ct_state(other), [CT_CLOSED]);
    f.out(tcp(6001, 22, TCP_FIN | TCP_ACK), other);
    assert_eq!(
        f.ct_state(other),
        [CT_CLOSED],
        "a FIN after the RST changes nothing"
    );
    // A new SYN on the closed tuple is a new flow, judged by policy again.
    f.policy(r#"{"egress": [{"action": "deny", "cidr": "10.1.2.4/32"}, {"action": "allow"}]}"#);
    assert_eq!(f.out(tcp(6001, 22, TCP_SYN), other), TC_ACT_SHOT);
    assert_eq!(
        f.out(tcp(6000, 22, TCP_ACK), PEER),
        TC_ACT_OK,
        "closing flow still tracked"
    );
}

#[test]
fn counters_match_what_was_sent() {
    require_root!(counters_match_what_was_sent);
    let f = Fixture::new();
    let frame = ipv4(
        POD_MAC,
        POD,
        PEER,
        &L4::Udp {
            sport: 7000,
            dport: 7001,
        },
    );
    for _ in 0..10 {
        assert_eq!(run(&f.node, "from_pod", &frame, 0), TC_ACT_OK);
    }
    let reply = ipv4(
        [2, 0, 0, 0, 0, 0x99],
        PEER,
        POD,
        &L4::Udp {
            sport: 7001,
            dport: 7000,
        },
    );
    for _ in 0..3 {
        assert_eq!(run(&f.node, "to_pod", &reply, FORWARDED), TC_ACT_OK);
    }
    let c = inspect::counters(f.root.path(), IFINDEX).unwrap();
    assert_eq!(c.packets, [10, 3]);
    assert_eq!(c.bytes, [10 * frame.len() as u64, 3 * reply.len() as u64]);
    assert!(c.drops.iter().all(|d| *d == 0));
    let ct = inspect::conntrack(f.root.path(), Some(IFINDEX)).unwrap();
    assert_eq!(ct.len(), 1, "one flow, both directions");
    assert_eq!(ct[0].1.state, CT_ESTABLISHED);
}

#[test]
fn an_unregistered_interface_fails_closed() {
    require_root!(an_unregistered_interface_fails_closed);
    let f = Fixture::new();
    registry::unregister(f.root.path(), "lo").unwrap();
    assert_eq!(f.out(tcp(1, 2, TCP_SYN), PEER), TC_ACT_SHOT);
    assert_eq!(
        inspect::counters(f.root.path(), 0).unwrap().drops[8],
        1,
        "no-endpoint, counted on ifindex 0"
    );
}

#[test]
fn drops_are_reported_with_reason_and_tuple() {
    require_root!(drops_are_reported_with_reason_and_tuple);
    let f = Fixture::new();
    f.policy(
        r#"{"egress": [{"action": "deny", "protocol": "tcp", "ports": 25},
                       {"action": "deny", "protocol": "tcp", "ports": 26, "source": "ops/no-26"},
                       {"action": "allow", "protocol": "tcp", "ports": "1-1000"}]}"#,
    );
    assert_eq!(f.out(tcp(8000, 25, TCP_SYN), PEER), TC_ACT_SHOT);
    let mut seen = Vec::new();
    inspect::follow_events(f.root.path(), Some(Duration::from_millis(200)), |e| {
        seen.push(e);
        false
    })
    .unwrap();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].verdict, "policy-egress");
    assert_eq!(seen[0].denied_by.as_deref(), Some("a deny rule"));
    // Which rule's source denied, or that none allowed.
    assert_eq!(f.out(tcp(8002, 26, TCP_SYN), PEER), TC_ACT_SHOT);
    assert_eq!(f.out(tcp(8003, 2000, TCP_SYN), PEER), TC_ACT_SHOT);
    let mut why = Vec::new();
    inspect::follow_events(f.root.path(), Some(Duration::from_millis(200)), |e| {
        why.extend(e.denied_by);
        why.len() < 2
    })
    .unwrap();
    assert_eq!(why, ["ops/no-26", "no policy allows"]);
    assert_eq!(seen[0].src, "10.200.0.5:8000");
    assert_eq!(seen[0].dst, "10.1.2.3:25");
    assert_eq!(seen[0].direction, "from-pod");

    // Off: counted, not reported.
    let quiet = Fixture::with(Settings {
        log_level: abi::LOG_OFF,
        ..Settings::default()
    });
    quiet.policy(r#"{"egress": []}"#);
    assert_eq!(quiet.out(tcp(8001, 25, TCP_SYN), PEER), TC_ACT_SHOT);
    let mut any = false;
    inspect::follow_events(quiet.root.path(), Some(Duration::from_millis(100)), |_| {
        any = true;
        false
    })
    .unwrap();
    assert!(!any);
    assert_eq!(quiet.drops(abi::DROP_POLICY_EGRESS), 1);
}

fn services(f: &Fixture, services: serde_json::Value) {
    let file: margay_model::service::ServiceFile =
        serde_json::from_value(serde_json::json!({ "services": services })).unwrap();
    margay_ebpf::service::apply(f.root.path(), &file.services).unwrap();
}

fn addr_at(frame: &[u8], at: usize) -> Ipv4Addr {
    Ipv4Addr::new(frame[at], frame[at + 1], frame[at + 2], frame[at + 3])
}

fn port_at(frame: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([frame[at], frame[at + 1]])
}

#[test]
fn service_translation_keeps_checksums_right_both_ways() {
    require_root!(service_translation_keeps_checksums_right_both_ways);
    let f = Fixture::new();
    let vip = Ipv4Addr::new(10, 96, 0, 1);
    services(
        &f,
        serde_json::json!([
            {"name": "t/web", "vip": vip, "port": 80, "backends": [format!("{PEER}:8080")]},
            {"name": "t/dns", "vip": vip, "port": 53, "protocol": "udp",
             "backends": [format!("{PEER}:5353")]},
        ]),
    );
    let syn = packet::with_l4_checksum(ipv4(POD_MAC, POD, vip, &tcp(40000, 80, TCP_SYN)));
    let (verdict, out) = run_output(&f.node, "from_pod", &syn, 0);
    assert_eq!(
        verdict, TC_ACT_OK,
        "to the stack: the backend is not a local pod"
    );
    assert_eq!((addr_at(&out, 30), port_at(&out, 36)), (PEER, 8080));
    assert!(packet::checksums_ok(&out), "translated SYN: {out:02x?}");

    let syn_ack = packet::with_l4_checksum(ipv4(
        [2, 0, 0, 0, 0, 0x99],
        PEER,
        POD,
        &tcp(8080, 40000, TCP_SYN | TCP_ACK),
    ));
    let (verdict, out) = run_output(&f.node, "to_pod", &syn_ack, FORWARDED);
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(
        (addr_at(&out, 26), port_at(&out, 34)),
        (vip, 80),
        "the reply is the service's"
    );
    assert!(
        packet::checksums_ok(&out),
        "reverse-translated SYN-ACK: {out:02x?}"
    );

    let udp = L4::Udp {
        sport: 40001,
        dport: 53,
    };
    let dgram = packet::with_l4_checksum(ipv4(POD_MAC, POD, vip, &udp));
    let (_, out) = run_output(&f.node, "from_pod", &dgram, 0);
    assert_eq!((addr_at(&out, 30), port_at(&out, 36)), (PEER, 5353));
    assert!(packet::checksums_ok(&out), "translated UDP: {out:02x?}");
    // UDP without a checksum (zero) stays without one.
    let bare = ipv4(
        POD_MAC,
        POD,
        vip,
        &L4::Udp {
            sport: 40002,
            dport: 53,
        },
    );
    let (_, out) = run_output(&f.node, "from_pod", &bare, 0);
    assert_eq!((port_at(&out, 36), port_at(&out, 40)), (5353, 0));
}

#[test]
fn a_service_without_backends_is_answered_with_port_unreachable() {
    require_root!(a_service_without_backends_is_answered_with_port_unreachable);
    let f = Fixture::new();
    let vip = Ipv4Addr::new(10, 96, 0, 2);
    services(
        &f,
        serde_json::json!([{"name": "t/none", "vip": vip, "port": 80}]),
    );
    let syn = packet::with_l4_checksum(ipv4(POD_MAC, POD, vip, &tcp(40000, 80, TCP_SYN)));
    let (verdict, out) = run_output(&f.node, "from_pod", &syn, 0);
    assert_eq!(verdict, TC_ACT_REDIRECT, "handed back into the pod");
    assert_eq!(out.len(), 14 + 20 + 8 + 28);
    assert_eq!(&out[0..6], &POD_MAC, "addressed to the pod");
    assert_eq!(&out[6..12], &packet::GATEWAY_MAC);
    assert_eq!(
        (addr_at(&out, 26), addr_at(&out, 30), out[23]),
        (vip, POD, 1)
    );
    assert_eq!((out[34], out[35]), (3, 3), "destination unreachable, port");
    assert_eq!(
        &out[42..62],
        &syn[14..34],
        "quotes the refused packet's header"
    );
    assert_eq!(
        &out[62..70],
        &syn[34..42],
        "and its ports and sequence number"
    );
    assert!(packet::checksums_ok(&out), "{out:02x?}");
    assert_eq!(f.drops(abi::DROP_NO_BACKEND), 1);
}

/// A new `bpf_ip_set_entries` resizes the sets' maps and carries their
/// members over (they were left behind, and the sets read as empty).
#[test]
fn set_members_survive_a_new_bpf_ip_set_entries() {
    require_root!(set_members_survive_a_new_bpf_ip_set_entries);
    use margay_ebpf::ip_set::IpSetTable;
    use margay_model::ip_set::IpSets;
    let f = Fixture::new();
    let wanted: IpSets =
        serde_json::from_str(r#"{"web": [{"cidr": "10.1.2.3/32"}, {"cidr": "fd00:1::3/128"}]}"#)
            .unwrap();
    IpSetTable::open(f.root.path())
        .unwrap()
        .apply(&wanted)
        .unwrap();
    let smaller = Settings {
        ip_set_entries: 4096,
        ..Settings::default()
    };
    Node::open(f.root.path(), &smaller).unwrap();
    for name in ["ip_sets", "ip_sets6"] {
        let pin = margay_ebpf::paths::map_path(f.root.path(), name);
        let layout = margay_ebpf::maps::Layout::of_pin(&pin).unwrap();
        assert_eq!(layout.max_entries, 4096, "{name}");
    }
    let mut held = IpSetTable::open(f.root.path()).unwrap().sets();
    for members in held.values_mut() {
        members.sort();
    }
    assert_eq!(held, wanted);
}

/// A policy with a refused rule changes nothing: the endpoint keeps the
/// policy it had in both directions, not a new ingress beside an old
/// egress.
#[test]
fn a_refused_rule_leaves_the_policy_as_it_was() {
    require_root!(a_refused_rule_leaves_the_policy_as_it_was);
    let f = Fixture::new();
    f.policy(r#"{"ingress": [{"action": "allow", "protocol": "tcp", "ports": 80}]}"#);
    let before = policy::get(f.root.path(), IFINDEX).unwrap();
    let spec: PolicySpec = serde_json::from_str(
        r#"{"ingress": [], "egress": [{"action": "allow", "set": "no-such-set"}]}"#,
    )
    .unwrap();
    let err = policy::set(f.root.path(), IFINDEX, &spec).unwrap_err();
    assert!(err.to_string().contains("no-such-set"), "{err}");
    assert_eq!(policy::get(f.root.path(), IFINDEX).unwrap(), before);
    assert_eq!(f.inbound(tcp(5000, 80, TCP_SYN), PEER), TC_ACT_OK);
}

/// A packet whose way is the tunnel on a node that has none (a peer that
/// tunnels, no tunnel device) is dropped for that reason, counted on the
/// node's slot and reported, not lost unexplained.
#[test]
fn a_packet_for_a_missing_tunnel_is_dropped_with_its_reason() {
    require_root!(a_packet_for_a_missing_tunnel_is_dropped_with_its_reason);
    let f = Fixture::new();
    let external = Ipv4Addr::new(203, 0, 113, 7);
    let backend = Ipv4Addr::new(10, 201, 0, 9);
    let peer: margay_model::peer::PeerSpec = serde_json::from_value(serde_json::json!({
        "name": "far", "address": "192.0.2.2", "pod_cidrs": ["10.201.0.0/24"], "encap": true
    }))
    .unwrap();
    margay_ebpf::cluster::apply_peers(f.root.path(), &[peer]).unwrap();
    services(
        &f,
        serde_json::json!([{"name": "t/far", "vip": "10.96.0.9", "port": 80,
                            "external_ips": [external], "backends": [format!("{backend}:8080")]}]),
    );
    let client = Ipv4Addr::new(198, 51, 100, 1);
    let syn = ipv4(
        [2, 0, 0, 0, 0, 0x99],
        client,
        external,
        &tcp(40000, 80, TCP_SYN),
    );
    assert_eq!(run(&f.node, "from_net", &syn, FORWARDED), TC_ACT_SHOT);
    let node = inspect::counters(f.root.path(), 0).unwrap();
    assert_eq!(node.drops[abi::DROP_NO_TUNNEL], 1, "{node:?}");
    assert_eq!(node.packets, [0, 0], "not counted as allowed as well");
    let mut seen = Vec::new();
    inspect::follow_events(f.root.path(), Some(Duration::from_millis(200)), |e| {
        seen.push(e);
        false
    })
    .unwrap();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].verdict, "no-tunnel");
    assert_eq!(seen[0].src, format!("{client}:40000"));
}

fn icmp6(kind: u8) -> L4 {
    L4::IcmpOther { kind }
}

#[test]
fn ipv6_from_a_pod_needs_its_own_source_but_for_neighbour_discovery() {
    require_root!(ipv6_from_a_pod_needs_its_own_source_but_for_neighbour_discovery);
    let f = Fixture::new();
    let udp = L4::Udp {
        sport: 4321,
        dport: 53,
    };
    assert_eq!(f.out6(udp.clone(), PEER6), TC_ACT_OK, "its own address");
    let forged = Ipv6Addr::new(0xfd00, 0x200, 0, 0, 0, 0, 0, 0x99);
    let spoofed = ipv6(POD_MAC, forged, PEER6, &udp);
    assert_eq!(run(&f.node, "from_pod", &spoofed, 0), TC_ACT_SHOT);
    let forged_mac = ipv6([2, 0, 0, 0, 0, 0x0b], POD6, PEER6, &udp);
    assert_eq!(run(&f.node, "from_pod", &forged_mac, 0), TC_ACT_SHOT);
    assert_eq!(f.drops(abi::DROP_SPOOF_MAC), 1);

    // What a host sends as it joins a link, from link-local or :: sources.
    let from = |src: Ipv6Addr, dst: Ipv6Addr, l4: L4| {
        run(&f.node, "from_pod", &ipv6(POD_MAC, src, dst, &l4), 0)
    };
    let unspecified = Ipv6Addr::UNSPECIFIED;
    let joining = [
        (
            unspecified,
            SOLICITED,
            icmp6(NS),
            "duplicate address detection",
        ),
        (
            unspecified,
            MLD_ROUTERS,
            icmp6(MLD2_REPORT),
            "MLD report before an address",
        ),
        (POD_LL, MLD_ROUTERS, icmp6(MLD2_REPORT), "MLD report"),
        (POD_LL, GATEWAY_LL, icmp6(NS), "resolving the gateway"),
        (POD_LL, GATEWAY_LL, icmp6(NA), "answering the gateway"),
        (
            POD_LL,
            Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 2),
            icmp6(RS),
            "router solicitation",
        ),
    ];
    for (src, dst, l4, what) in joining {
        assert_eq!(from(src, dst, l4), TC_ACT_OK, "{what}");
    }
    let forbidden = [
        (POD_LL, GATEWAY_LL, tcp(1, 22, TCP_SYN), "link-local TCP"),
        (
            POD_LL,
            PEER6,
            icmp6(NS),
            "a link-local source to a routed address",
        ),
        (
            POD_LL,
            Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1),
            icmp6(RA),
            "a router advertisement",
        ),
        (
            unspecified,
            PEER6,
            L4::Udp { sport: 1, dport: 2 },
            "UDP from ::",
        ),
    ];
    let n_forbidden = forbidden.len() as u64;
    for (src, dst, l4, what) in forbidden {
        assert_eq!(from(src, dst, l4), TC_ACT_SHOT, "{what}");
    }
    assert_eq!(f.drops(abi::DROP_SPOOF_IP), 1 + n_forbidden);

    // A pod without an IPv6 address sends neighbour discovery and nothing else.
    registry::register(
        f.root.path(),
        &Endpoint::new(IFINDEX, "lo", POD, POD_MAC),
        None,
    )
    .unwrap();
    let new_flow = L4::Udp {
        sport: 4322,
        dport: 53,
    };
    assert_eq!(
        f.out6(new_flow, PEER6),
        TC_ACT_SHOT,
        "no IPv6 address: no IPv6"
    );
    assert_eq!(from(unspecified, SOLICITED, icmp6(NS)), TC_ACT_OK);
}

#[test]
fn ipv6_policy_denies_what_no_rule_allows() {
    require_root!(ipv6_policy_denies_what_no_rule_allows);
    let f = Fixture::new();
    let other = Ipv6Addr::new(0xfd00, 0x2, 0, 0, 0, 0, 0, 7);
    f.policy(
        r#"{"egress": [
            {"action": "allow", "cidr": "10.0.0.0/8"},
            {"action": "deny", "cidr": "fd00:1::99/128"},
            {"action": "allow", "cidr": "fd00:1::/64", "protocol": "tcp", "ports": "80-81"},
            {"action": "allow", "protocol": "icmpv6"}
        ]}"#,
    );
    let cases = [
        (
            tcp(2000, 80, TCP_SYN),
            PEER6,
            TC_ACT_OK,
            "in the CIDR and the ports",
        ),
        (
            tcp(2001, 82, TCP_SYN),
            PEER6,
            TC_ACT_SHOT,
            "a port out of range",
        ),
        (
            tcp(2002, 80, TCP_SYN),
            other,
            TC_ACT_SHOT,
            "out of the CIDR",
        ),
        (
            tcp(2003, 80, TCP_SYN),
            Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 0x99),
            TC_ACT_SHOT,
            "an earlier deny wins",
        ),
        (
            L4::IcmpEcho { kind: 128, id: 9 },
            other,
            TC_ACT_OK,
            "icmpv6 anywhere",
        ),
        (
            L4::Udp { sport: 1, dport: 2 },
            PEER6,
            TC_ACT_SHOT,
            "no rule allows it",
        ),
    ];
    for (l4, dst, want, what) in cases {
        assert_eq!(f.out6(l4, dst), want, "{what}");
    }
    assert_eq!(
        f.out(tcp(2004, 9, TCP_SYN), PEER),
        TC_ACT_OK,
        "IPv4 has its rule"
    );

    f.policy(r#"{"ingress": [{"action": "allow", "cidr": "10.0.0.0/8"}]}"#);
    assert_eq!(
        f.inbound6(tcp(3000, 80, TCP_SYN), PEER6),
        TC_ACT_SHOT,
        "a direction of IPv4 rules denies all IPv6"
    );
    f.policy(r#"{"ingress": [{"action": "allow", "protocol": "tcp", "ports": 80}]}"#);
    assert_eq!(
        f.inbound6(tcp(3001, 80, TCP_SYN), PEER6),
        TC_ACT_OK,
        "a rule without a CIDR is both families'"
    );
    assert_eq!(f.inbound(tcp(3002, 80, TCP_SYN), PEER), TC_ACT_OK);
    f.policy(r#"{"ingress": []}"#);
    assert_eq!(
        f.inbound6(tcp(3003, 80, TCP_SYN), PEER6),
        TC_ACT_SHOT,
        "deny-all"
    );
    let node_probe = ipv6([2, 0, 0, 0, 0, 0x99], PEER6, POD6, &tcp(3004, 80, TCP_SYN));
    assert_eq!(
        run(&f.node, "to_pod", &node_probe, 0),
        TC_ACT_OK,
        "the node is let in"
    );
    assert_eq!(f.drops(abi::DROP_POLICY_EGRESS), 4);
    assert_eq!(f.drops(abi::DROP_POLICY_INGRESS), 2);

    // As set, the policy reads back with the IPv6 rules after IPv4's.
    f.policy(r#"{"egress": [{"action": "deny", "cidr": "fd00::/8"}, {"action": "allow", "cidr": "10.0.0.0/8"}]}"#);
    let shown = policy::get(f.root.path(), IFINDEX).unwrap();
    let cidrs: Vec<String> = shown
        .egress
        .unwrap()
        .iter()
        .map(|r| r.cidr.unwrap().to_string())
        .collect();
    assert_eq!(cidrs, ["10.0.0.0/8", "fd00::/8"]);
}

#[test]
fn a_policy_an_older_build_wrote_without_ipv6_rules_still_denies_ipv6() {
    require_root!(a_policy_an_older_build_wrote_without_ipv6_rules_still_denies_ipv6);
    let f = Fixture::new();
    f.policy(r#"{"egress": [{"action": "allow", "cidr": "10.0.0.0/8"}]}"#);
    assert_eq!(f.out6(tcp(2000, 80, TCP_SYN), PEER6), TC_ACT_SHOT);
    // A build that kept its IPv6 rules apart only where there were some
    // wrote the IPv4 list alone; its programs are pinned.
    let key = PolicyKey {
        ifindex: IFINDEX,
        direction: DIR_EGRESS,
    };
    margay_ebpf::maps::policies6(f.root.path())
        .unwrap()
        .remove(&key)
        .unwrap();
    margay_tests::bpf::pretend_another_build_is_pinned(f.root.path());
    let upgraded = Node::open(f.root.path(), &Settings::default()).unwrap();
    let frame = ipv6(POD_MAC, POD6, PEER6, &tcp(2001, 80, TCP_SYN));
    assert_eq!(
        run(&upgraded, "from_pod", &frame, 0),
        TC_ACT_SHOT,
        "the policy still denies the IPv6 no rule allows"
    );
}

#[test]
fn ipv6_replies_and_errors_of_tracked_flows_pass_a_deny_all_policy() {
    require_root!(ipv6_replies_and_errors_of_tracked_flows_pass_a_deny_all_policy);
    let f = Fixture::new();
    f.policy(r#"{"ingress": []}"#);
    assert_eq!(f.out6(tcp(5000, 443, TCP_SYN), PEER6), TC_ACT_OK);
    assert_eq!(
        f.inbound6(tcp(443, 5000, TCP_SYN | TCP_ACK), PEER6),
        TC_ACT_OK,
        "the reply"
    );
    assert_eq!(
        f.inbound6(tcp(443, 5001, TCP_SYN | TCP_ACK), PEER6),
        TC_ACT_SHOT,
        "not a reply"
    );
    let too_big = |quoted| L4::IcmpError { kind: 2, quoted };
    let router = Ipv6Addr::new(0xfd00, 9, 0, 0, 0, 0, 0, 9);
    assert_eq!(
        f.inbound6(too_big(packet::quote6(POD6, PEER6, 6, 5000, 443)), router),
        TC_ACT_OK,
        "packet too big about the flow is related"
    );
    assert_eq!(
        f.inbound6(too_big(packet::quote6(POD6, PEER6, 6, 5999, 443)), router),
        TC_ACT_SHOT,
        "about another flow"
    );
    // The pod's own error about the flow passes only to the flow's peer:
    // sent anywhere else, it is not part of the flow.
    let unreachable = |quoted| L4::IcmpError { kind: 1, quoted };
    let quoted = || packet::quote6(PEER6, POD6, 6, 443, 5000);
    assert_eq!(
        f.out6(unreachable(quoted()), PEER6),
        TC_ACT_OK,
        "to the peer"
    );
    f.policy(r#"{"ingress": [], "egress": []}"#);
    assert_eq!(
        f.out6(
            unreachable(quoted()),
            Ipv6Addr::new(0xfd00, 7, 0, 0, 0, 0, 0, 7)
        ),
        TC_ACT_SHOT,
        "to a third party"
    );
    assert_eq!(
        f.out6(unreachable(quoted()), PEER6),
        TC_ACT_OK,
        "to the peer, under deny-all"
    );
    f.policy(r#"{"ingress": []}"#);
    // Echo: the reply passes by the identifier, an unasked one does not.
    assert_eq!(f.out6(L4::IcmpEcho { kind: 128, id: 77 }, PEER6), TC_ACT_OK);
    assert_eq!(
        f.inbound6(L4::IcmpEcho { kind: 129, id: 77 }, PEER6),
        TC_ACT_OK
    );
    assert_eq!(
        f.inbound6(L4::IcmpEcho { kind: 128, id: 78 }, PEER6),
        TC_ACT_SHOT
    );
    // A pod's packet spoofed as its peer's half of the flow is no reply.
    let reversed = ipv6(POD_MAC, PEER6, POD6, &tcp(443, 5000, TCP_ACK));
    assert_eq!(run(&f.node, "from_pod", &reversed, 0), TC_ACT_SHOT);

    let records = inspect::conntrack_records(f.root.path(), Some(IFINDEX)).unwrap();
    let tcp_flow = records
        .iter()
        .find(|r| r.protocol == 6)
        .expect("the TCP flow");
    assert_eq!(
        (tcp_flow.src.as_str(), tcp_flow.dst.as_str(), tcp_flow.state),
        ("[fd00:200::5]:5000", "[fd00:1::3]:443", "established")
    );
    assert!(
        records
            .iter()
            .all(|r| r.protocol != 58 || r.src.contains(":77"))
    );
    assert_eq!(
        registry::flush_conntrack(f.root.path(), Some(IFINDEX)).unwrap(),
        2
    );
    assert_eq!(
        f.inbound6(tcp(443, 5000, TCP_ACK), PEER6),
        TC_ACT_SHOT,
        "flushed: the flow is new again"
    );
}

#[test]
fn ipv6_neighbour_discovery_passes_a_deny_all_policy() {
    require_root!(ipv6_neighbour_discovery_passes_a_deny_all_policy);
    let f = Fixture::new();
    f.policy(r#"{"ingress": [], "egress": []}"#);
    let pod = |src, dst, kind| {
        run(
            &f.node,
            "from_pod",
            &ipv6(POD_MAC, src, dst, &icmp6(kind)),
            0,
        )
    };
    assert_eq!(pod(POD6, GATEWAY_LL, NS), TC_ACT_OK);
    assert_eq!(pod(POD_LL, GATEWAY_LL, NA), TC_ACT_OK);
    assert_eq!(
        pod(POD6, PEER6, NS),
        TC_ACT_SHOT,
        "to a routed address: judged"
    );
    let host = |src, dst, kind| {
        let frame = ipv6([2, 0, 0, 0, 0, 0x99], src, dst, &icmp6(kind));
        run(&f.node, "to_pod", &frame, FORWARDED)
    };
    assert_eq!(host(GATEWAY_LL, SOLICITED, NS), TC_ACT_OK);
    assert_eq!(host(GATEWAY_LL, POD_LL, NA), TC_ACT_OK);
    assert_eq!(
        host(PEER6, POD6, NS),
        TC_ACT_SHOT,
        "from a routed address: judged"
    );
    assert!(
        inspect::conntrack6(f.root.path(), None).unwrap().is_empty(),
        "link control is not tracked"
    );
}

#[test]
fn unparseable_ipv6_is_dropped_with_a_reason() {
    require_root!(unparseable_ipv6_is_dropped_with_a_reason);
    let f = Fixture::new();
    let syn = tcp(6000, 80, TCP_SYN);
    let hbh = Ext::Options(0);
    let dst_opts = Ext::Options(60);
    let frame = |exts: &[Ext], l4: &L4| ipv6_ext(POD_MAC, POD6, PEER6, exts, l4);
    // Walked: the L4 header after two extension headers is judged.
    f.policy(r#"{"egress": [{"action": "allow", "protocol": "tcp", "ports": 80}]}"#);
    assert_eq!(
        run(&f.node, "from_pod", &frame(&[hbh, dst_opts], &syn), 0),
        TC_ACT_OK
    );
    assert_eq!(
        run(
            &f.node,
            "from_pod",
            &frame(&[hbh, dst_opts], &tcp(6001, 81, TCP_SYN)),
            0
        ),
        TC_ACT_SHOT,
        "judged by its real ports"
    );
    // The first fragment is judged by its L4 header; later ones carry none.
    let first = Ext::Fragment {
        offset: 0,
        more: true,
    };
    assert_eq!(
        run(
            &f.node,
            "from_pod",
            &frame(&[first], &tcp(6002, 80, TCP_SYN)),
            0
        ),
        TC_ACT_OK
    );
    let later = Ext::Fragment {
        offset: 185,
        more: false,
    };
    assert_eq!(
        run(&f.node, "from_pod", &frame(&[later], &syn), 0),
        TC_ACT_SHOT
    );
    assert_eq!(
        f.drops(abi::DROP_FRAGMENT),
        1,
        "a later fragment under a policy"
    );
    // Longer chains than the programs walk, and truncated headers.
    let five = [hbh, dst_opts, Ext::Options(43), dst_opts, dst_opts];
    assert_eq!(
        run(&f.node, "from_pod", &frame(&five, &syn), 0),
        TC_ACT_SHOT
    );
    let inbound = ipv6_ext([2, 0, 0, 0, 0, 0x99], PEER6, POD6, &five, &syn);
    assert_eq!(run(&f.node, "to_pod", &inbound, FORWARDED), TC_ACT_SHOT);
    assert_eq!(f.drops(abi::DROP_IPV6_EXT), 2);
    let mut truncated = frame(&[], &syn);
    truncated.truncate(14 + 40 + 10);
    assert_eq!(run(&f.node, "from_pod", &truncated, 0), TC_ACT_SHOT);
    let mut cut_ext = frame(&[hbh], &syn);
    cut_ext.truncate(14 + 40 + 4);
    assert_eq!(run(&f.node, "from_pod", &cut_ext, 0), TC_ACT_SHOT);
    assert_eq!(f.drops(abi::DROP_PARSE), 2);

    // No policy: later fragments pass, as IPv4's do.
    f.policy("{}");
    assert_eq!(
        run(&f.node, "from_pod", &frame(&[later], &syn), 0),
        TC_ACT_OK
    );
}

#[test]
fn ipv6_drops_are_reported_with_their_tuple() {
    require_root!(ipv6_drops_are_reported_with_their_tuple);
    let f = Fixture::new();
    f.policy(r#"{"ingress": []}"#);
    assert_eq!(f.inbound6(tcp(8000, 22, TCP_SYN), PEER6), TC_ACT_SHOT);
    let mut seen = Vec::new();
    inspect::follow_events(f.root.path(), Some(Duration::from_millis(200)), |e| {
        seen.push(e);
        false
    })
    .unwrap();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        (seen[0].verdict, seen[0].direction, seen[0].protocol),
        ("policy-ingress", "to-pod", 6)
    );
    assert_eq!(
        (seen[0].src.as_str(), seen[0].dst.as_str()),
        ("[fd00:1::3]:8000", "[fd00:200::5]:22")
    );
}

/// Rules whose peer is a set: members by address, by network less its
/// exceptions, by address on one port; a member added or taken out is in
/// force for the next new flow without the rules changing; both families;
/// rules for any peer that name their source; names shown back.
#[test]
fn rules_naming_sets_judge_peers_by_their_members() {
    require_root!(rules_naming_sets_judge_peers_by_their_members);
    use margay_ebpf::ip_set::IpSetTable;
    use margay_model::ip_set::IpSets;
    let f = Fixture::new();
    let mut sets = IpSetTable::open(f.root.path()).unwrap();
    let mut wanted: IpSets = serde_json::from_str(
        r#"{"web": [{"cidr": "10.1.2.3/32"}, {"cidr": "fd00:1::3/128"}],
            "outside": [{"cidr": "10.0.0.0/8"}, {"cidr": "10.1.0.0/16", "except": true}],
            "http": [{"cidr": "192.168.7.7/32", "port": "tcp/8080"}]}"#,
    )
    .unwrap();
    let report = sets.apply(&wanted).unwrap();
    assert_eq!((report.sets_added, report.members_added), (3, 5));
    f.policy(
        r#"{"ingress": [
            {"action": "allow", "set": "web", "protocol": "tcp", "ports": 80, "source": "shop/web"},
            {"action": "allow", "set": "outside", "protocol": "tcp", "source": "shop/outside"},
            {"action": "allow", "set": "http", "protocol": "tcp", "source": "shop/http"},
            {"action": "allow", "protocol": "udp", "ports": 53, "source": "shop/dns"}
        ]}"#,
    );
    let cases = [
        (
            tcp(3000, 80, TCP_SYN),
            PEER,
            TC_ACT_OK,
            "a member on the rule's port",
        ),
        (
            tcp(3001, 81, TCP_SYN),
            PEER,
            TC_ACT_SHOT,
            "a member on another port",
        ),
        (
            tcp(3002, 80, TCP_SYN),
            Ipv4Addr::new(10, 1, 2, 4),
            TC_ACT_SHOT,
            "not a member, and in the exception",
        ),
        (
            tcp(3003, 22, TCP_SYN),
            Ipv4Addr::new(10, 2, 0, 1),
            TC_ACT_OK,
            "in the network, out of its exception",
        ),
        (
            tcp(3004, 8080, TCP_SYN),
            Ipv4Addr::new(192, 168, 7, 7),
            TC_ACT_OK,
            "a port member on its port",
        ),
        (
            tcp(3005, 8081, TCP_SYN),
            Ipv4Addr::new(192, 168, 7, 7),
            TC_ACT_SHOT,
            "a port member on another port",
        ),
        (
            tcp(3006, 8081, TCP_SYN),
            Ipv4Addr::new(192, 168, 9, 9),
            TC_ACT_SHOT,
            "in no set",
        ),
        (
            L4::Udp {
                sport: 3007,
                dport: 53,
            },
            Ipv4Addr::new(192, 168, 9, 9),
            TC_ACT_OK,
            "any peer",
        ),
    ];
    for (l4, src, verdict, what) in cases {
        assert_eq!(f.inbound(l4, src), verdict, "{what}");
    }
    assert_eq!(
        f.inbound6(tcp(3008, 80, TCP_SYN), PEER6),
        TC_ACT_OK,
        "an IPv6 member"
    );
    assert_eq!(
        f.inbound6(
            tcp(3009, 80, TCP_SYN),
            Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 4)
        ),
        TC_ACT_SHOT,
        "an IPv6 stranger"
    );
    // Each source counts the new flows its rules decided.
    let flows: std::collections::BTreeMap<String, u64> = inspect::policy_flows(f.root.path())
        .unwrap()
        .into_iter()
        .collect();
    let expected = [
        ("shop/dns", 1),
        ("shop/http", 1),
        ("shop/outside", 1),
        ("shop/web", 2),
    ];
    assert_eq!(flows, expected.map(|(p, n)| (p.to_string(), n)).into());

    // Membership changes, rules stay.
    wanted
        .get_mut("web")
        .unwrap()
        .push(serde_json::from_str(r#"{"cidr": "10.1.2.4/32"}"#).unwrap());
    wanted.get_mut("outside").unwrap().retain(|m| !m.except);
    wanted.get_mut("http").unwrap().clear();
    let report = sets.apply(&wanted).unwrap();
    assert_eq!((report.members_added, report.members_removed), (1, 2));
    assert_eq!(
        f.inbound(tcp(3010, 80, TCP_SYN), Ipv4Addr::new(10, 1, 2, 4)),
        TC_ACT_OK,
        "added"
    );
    assert_eq!(
        f.inbound(tcp(3011, 22, TCP_SYN), Ipv4Addr::new(10, 1, 5, 5)),
        TC_ACT_OK,
        "the exception is gone"
    );
    assert_eq!(
        f.inbound(tcp(3012, 8080, TCP_SYN), Ipv4Addr::new(192, 168, 1, 1)),
        TC_ACT_SHOT,
        "an empty set takes no one"
    );

    // Shown back with names; a reopened table finds what it wrote.
    let shown = policy::get(f.root.path(), IFINDEX)
        .unwrap()
        .ingress
        .unwrap();
    assert_eq!(shown[0].set.as_deref(), Some("web"));
    assert_eq!(shown[0].source.as_deref(), Some("shop/web"));
    assert_eq!(
        (shown[3].set.as_deref(), shown[3].source.as_deref()),
        (None, Some("shop/dns"))
    );
    let reopened = IpSetTable::open(f.root.path()).unwrap();
    let mut held = reopened.sets();
    for members in held.values_mut() {
        members.sort();
    }
    for members in wanted.values_mut() {
        members.sort();
    }
    assert_eq!(held, wanted);
    assert_eq!(reopened.id("web"), sets.id("web"), "numbers are kept");

    // A rule naming a set the node lacks is refused, not read as "any".
    let spec: PolicySpec =
        serde_json::from_str(r#"{"egress": [{"action": "allow", "set": "nowhere"}]}"#).unwrap();
    let err = policy::set(f.root.path(), IFINDEX, &spec)
        .unwrap_err()
        .to_string();
    assert!(err.contains(r#"set "nowhere" is not applied"#), "{err}");
    // Retired sets leave the tries and their numbers go.
    assert_eq!(sets.retire(&|name| name != "http").unwrap(), 1);
    assert_eq!(sets.id("http"), None);
}

/// The registry writes an endpoint whole or not at all: a registration
/// that fails leaves the maps as it found them, whether or not its caller
/// undoes anything (the plugin's rollback finds an endpoint by its
/// `endpoints` entry, which a failed registration may never have written);
/// a retried registration keeps its slot's counts.
#[test]
fn a_registration_that_fails_leaves_no_ipv6_entry_behind() {
    require_root!(a_registration_that_fails_leaves_no_ipv6_entry_behind);
    let root = BpfRoot::new();
    let r = root.path();
    let _node = Node::open(r, &Settings::default()).unwrap();
    // Every counters slot held by an interface that exists (the loopback),
    // so that none can be taken back: the slot claim fails.
    let mut slots = margay_ebpf::maps::counter_slots(r).unwrap();
    for slot in 1..=abi::MAX_ENDPOINTS {
        slots.insert(slot, 1, 0).unwrap();
    }
    let ipv6: Ipv6Addr = "fd00:244::5".parse().unwrap();
    let endpoint = |ifindex, ip: [u8; 4]| Endpoint::new(ifindex, "mrgtest", ip.into(), POD_MAC);

    let fresh = endpoint(4242, [10, 244, 0, 5]);
    let e = registry::register(r, &fresh, Some(ipv6)).unwrap_err();
    assert_eq!(
        e.to_string(),
        "map counter_slots: every counters slot is taken (more endpoints than the node holds)"
    );
    assert_eq!(
        registry::ipv6_of(r, fresh.ifindex).unwrap(),
        None,
        "the failed registration left its endpoints6 entry"
    );
    assert!(
        margay_ebpf::maps::endpoints(r)
            .unwrap()
            .get(&4242, 0)
            .is_err()
    );
    assert!(
        margay_ebpf::maps::endpoints_by_ip(r)
            .unwrap()
            .get(&fresh.ip, 0)
            .is_err()
    );

    // An entry that was there before (an earlier ADD's) is put back as it
    // was, whether the failed registration overwrote or removed it.
    let earlier: Ipv6Addr = "fd00:244::6".parse().unwrap();
    margay_ebpf::maps::endpoints6(r)
        .unwrap()
        .insert(
            4243,
            abi::Endpoint6::of(&endpoint(4243, [10, 244, 0, 6]), earlier),
            0,
        )
        .unwrap();
    let retried = endpoint(4243, [10, 244, 0, 6]);
    registry::register(r, &retried, Some(ipv6)).unwrap_err();
    assert_eq!(registry::ipv6_of(r, 4243).unwrap(), Some(earlier));
    registry::register(r, &retried, None).unwrap_err();
    assert_eq!(registry::ipv6_of(r, 4243).unwrap(), Some(earlier));

    // With a slot free, the same registration goes through whole.
    slots.remove(&abi::MAX_ENDPOINTS).unwrap();
    registry::register(r, &fresh, Some(ipv6)).unwrap();
    assert_eq!(registry::ipv6_of(r, fresh.ifindex).unwrap(), Some(ipv6));
    assert_eq!(
        margay_ebpf::maps::endpoints_by_ip(r)
            .unwrap()
            .get(&fresh.ip, 0)
            .unwrap(),
        fresh.ifindex
    );

    // Retried, it keeps its slot and the slot's counts.
    let slot = registry::find(r, "mrgtest").unwrap().unwrap().slot;
    let cpus = aya::util::nr_cpus().unwrap();
    let counted = abi::Counters {
        packets: [1, 0],
        ..Default::default()
    };
    margay_ebpf::maps::counters(r)
        .unwrap()
        .set(
            slot,
            aya::maps::PerCpuValues::try_from(vec![counted; cpus]).unwrap(),
            0,
        )
        .unwrap();
    registry::register(r, &fresh, Some(ipv6)).unwrap();
    assert_eq!(
        inspect::counters(r, fresh.ifindex).unwrap().packets[0],
        cpus as u64,
        "a retried ADD zeroed its counters"
    );

    // A failure at the last write (endpoints6 full) takes back the
    // endpoint, its IP index and the slot it claimed.
    slots.remove(&(abi::MAX_ENDPOINTS - 1)).unwrap();
    let mut endpoints6 = margay_ebpf::maps::endpoints6(r).unwrap();
    for ifindex in 100_000..100_000 + abi::MAX_ENDPOINTS {
        if endpoints6
            .insert(ifindex, abi::Endpoint6::default(), 0)
            .is_err()
        {
            break;
        }
    }
    let late = endpoint(4244, [10, 244, 0, 7]);
    let e = registry::register(r, &late, Some("fd00:244::7".parse().unwrap())).unwrap_err();
    assert!(e.to_string().starts_with("map endpoints6: "), "{e}");
    assert!(
        margay_ebpf::maps::endpoints(r)
            .unwrap()
            .get(&late.ifindex, 0)
            .is_err()
    );
    assert!(
        margay_ebpf::maps::endpoints_by_ip(r)
            .unwrap()
            .get(&late.ip, 0)
            .is_err()
    );
    assert!(
        slots.get(&(abi::MAX_ENDPOINTS - 1), 0).is_err(),
        "the claimed slot is free again"
    );
}
