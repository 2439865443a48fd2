//! Nanoseconds per packet of `from_pod`, run by the kernel on crafted
//! frames (BPF_PROG_TEST_RUN): the program as loaded on a node, with a
//! 100-rule egress policy, on the conntrack-miss and conntrack-hit paths,
//! for IPv4 and for IPv6 (whose goal is IPv4's figure + 15%); and a new
//! flow judged by [`SET_RULES`] rules naming sets of [`SET_SIZE`]
//! addresses each (an endpoint selected by that many NetworkPolicies whose
//! peers select that many pods); and established flows to a local pod,
//! through a service and a service's replies beside one that leaves by
//! the stack.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::{Context, Result};
use ipnetwork::IpNetwork;
use margay_ebpf::abi::{Endpoint, LOG_OFF};
use margay_ebpf::ip_set::IpSetTable;
use margay_ebpf::node::{Node, Settings};
use margay_ebpf::{policy, registry};
use margay_model::ip_set::{IpSets, SetMember};
use margay_model::policy::{Action, PolicySpec, Ports, Rule};
use margay_model::protocol::Protocol;
use margay_tests::bpf::{BpfRoot, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, run_repeat};
use margay_tests::packet::{L4, POD_MAC, TCP_ACK, TCP_RST, TCP_SYN, ipv4, ipv6};
use serde::Serialize;

use crate::report::Table;

const POD: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 5);
const PEER: Ipv4Addr = Ipv4Addr::new(10, 1, 2, 3);
const POD6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x200, 0, 0, 0, 0, 0, 5);
const PEER6: Ipv6Addr = Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 3);
/// Rules naming sets, and addresses in each set.
pub const SET_RULES: usize = 50;
pub const SET_SIZE: usize = 5_000;

#[derive(Debug, Serialize)]
pub struct PacketRow {
    pub family: &'static str,
    pub case: &'static str,
    pub ns_per_packet: f64,
    pub goal_ns: Option<f64>,
    pub runs: u64,
}

#[derive(Debug, Serialize)]
pub struct PacketReport {
    pub rules: usize,
    pub repeat: u32,
    /// How long loading the programs took (verifier included), ms.
    pub load_ms: f64,
    pub rows: Vec<PacketRow>,
}

impl PacketReport {
    pub fn table(&self) -> Table {
        let mut t = Table::new([
            "family",
            "path (from_pod unless named)",
            "ns/packet",
            "goal",
            "met",
        ]);
        for r in &self.rows {
            t.row([
                r.family.to_string(),
                r.case.to_string(),
                format!("{:.1}", r.ns_per_packet),
                r.goal_ns
                    .map(|g| format!("<= {g:.0}"))
                    .unwrap_or_else(|| "-".into()),
                match r.goal_ns {
                    Some(g) if r.ns_per_packet <= g => "yes".into(),
                    Some(_) => "NO".into(),
                    None => "-".into(),
                },
            ]);
        }
        t
    }
}

/// The benchmark's pod and peer in one family.
#[derive(Clone, Copy)]
struct Family {
    name: &'static str,
    pod: IpAddr,
    peer: IpAddr,
}

const FAMILIES: [Family; 2] = [
    Family {
        name: "IPv4",
        pod: IpAddr::V4(POD),
        peer: IpAddr::V4(PEER),
    },
    Family {
        name: "IPv6",
        pod: IpAddr::V6(POD6),
        peer: IpAddr::V6(PEER6),
    },
];

impl Family {
    fn frame(&self, sport: u16, flags: u8) -> Vec<u8> {
        let l4 = L4::Tcp {
            sport,
            dport: 443,
            flags,
        };
        match (self.pod, self.peer) {
            (IpAddr::V4(pod), IpAddr::V4(peer)) => ipv4(POD_MAC, pod, peer, &l4),
            (IpAddr::V6(pod), IpAddr::V6(peer)) => ipv6(POD_MAC, pod, peer, &l4),
            _ => unreachable!("one family"),
        }
    }

    /// The peer's answer to [`Family::frame`]'s packet (from port 443 to
    /// `dport`), with the node's own MAC as its destination (TestRun's
    /// device, loopback, has an all-zero one), as a data interface gets it.
    fn reply(&self, dport: u16, flags: u8) -> Vec<u8> {
        let l4 = L4::Tcp {
            sport: 443,
            dport,
            flags,
        };
        let mut frame = match (self.pod, self.peer) {
            (IpAddr::V4(pod), IpAddr::V4(peer)) => ipv4(POD_MAC, peer, pod, &l4),
            (IpAddr::V6(pod), IpAddr::V6(peer)) => ipv6(POD_MAC, peer, pod, &l4),
            _ => unreachable!("one family"),
        };
        frame[..6].fill(0);
        frame
    }

    /// `rules - 1` rules of this family that never match the benchmark's
    /// flow, then `last` for the peer.
    fn policy_rules(&self, rules: usize, last: Action) -> Vec<Rule> {
        let never = |i: usize| match self.peer {
            IpAddr::V4(_) => format!("192.168.{}.0/24", i % 256),
            IpAddr::V6(_) => format!("fd00:192:{:x}::/64", i),
        };
        let mut list: Vec<Rule> = (0..rules.saturating_sub(1))
            .map(|i| Rule {
                action: Action::Allow,
                cidr: Some(never(i).parse().expect("valid")),
                protocol: Some(Protocol::TCP),
                ports: Some(Ports { lo: 1, hi: 1 }),
                set: None,
                source: None,
            })
            .collect();
        list.push(Rule {
            action: last,
            cidr: Some(ipnetwork::IpNetwork::from(self.peer)),
            protocol: None,
            ports: None,
            set: None,
            source: None,
        });
        list
    }

    /// [`SET_RULES`] sets of [`SET_SIZE`] addresses of this family, none
    /// of them the peer, and a rule allowing each: a new flow to the peer
    /// is looked up in every set and denied.
    fn set_rules(&self) -> (IpSets, Vec<Rule>) {
        let address = |set: usize, i: usize| -> IpNetwork {
            let n = (set * SET_SIZE + i) as u32;
            match self.peer {
                IpAddr::V4(_) => IpNetwork::from(IpAddr::V4(Ipv4Addr::from(0xac10_0000 + n))),
                IpAddr::V6(_) => IpNetwork::from(IpAddr::V6(Ipv6Addr::new(
                    0xfd00,
                    0x172,
                    0,
                    0,
                    0,
                    0,
                    (n >> 16) as u16,
                    n as u16,
                ))),
            }
        };
        let sets: IpSets = (0..SET_RULES)
            .map(|set| {
                let members = (0..SET_SIZE)
                    .map(|i| SetMember::cidr(address(set, i)))
                    .collect();
                (format!("bench-{set}"), members)
            })
            .collect();
        let rules = (0..SET_RULES)
            .map(|set| Rule {
                action: Action::Allow,
                cidr: None,
                protocol: Some(Protocol::TCP),
                ports: None,
                set: Some(format!("bench-{set}")),
                source: Some(format!("bench/policy-{set}")),
            })
            .collect();
        (sets, rules)
    }
}

fn set_egress(root: &std::path::Path, rules: Vec<Rule>) -> Result<()> {
    set_egress_policy(root, Some(rules))
}

/// The endpoint's egress policy: `None` for none (all allowed).
fn set_egress_policy(root: &std::path::Path, egress: Option<Vec<Rule>>) -> Result<()> {
    policy::set(
        root,
        1,
        &PolicySpec {
            ingress: None,
            egress,
        },
    )
    .context("setting the policy")
}

/// TestRun's repetitions run on one packet, which a redirecting program
/// changes as it goes (a router's TTL decrement): runs of this many
/// repetitions each (the frame's TTL is 64, and its last hops must not
/// take the expiry path), and the median of those.
const TTL_BOUND_REPEAT: u32 = 50;

fn median_of_runs(node: &Node, name: &str, frame: &[u8], runs: usize) -> (u32, f64) {
    let results: Vec<(u32, f64)> = (0..runs)
        .map(|_| run_repeat(node, name, frame, 0, TTL_BOUND_REPEAT))
        .collect();
    let verdict = results[0].0;
    let ns: Vec<f64> = results.iter().map(|r| r.1).collect();
    (verdict, crate::stats::median_of(&ns))
}

/// Runs the cases of each family; `repeat` runs per TestRun call.
pub fn run(repeat: u32, rules: usize) -> Result<PacketReport> {
    let root = BpfRoot::new();
    let settings = Settings {
        log_level: LOG_OFF,
        ..Settings::default()
    };
    let start = std::time::Instant::now();
    let node = Node::open(root.path(), &settings).context("loading the programs")?;
    let load_ms = start.elapsed().as_secs_f64() * 1e3;
    // TestRun puts packets on loopback: the endpoint is ifindex 1.
    registry::register(
        root.path(),
        &Endpoint::new(1, "lo", POD, POD_MAC),
        Some(POD6),
    )?;
    let mut rows = Vec::new();
    for family in FAMILIES {
        rows.extend(family_cases(&node, root.path(), family, repeat, rules)?);
    }
    rows.extend(established_beside_the_stack(&node, root.path())?);
    // IPv6's goal: IPv4's figure for the same case, + 15%.
    let ipv4: Vec<(&str, f64)> = rows
        .iter()
        .filter(|r| r.family == "IPv4")
        .map(|r| (r.case, r.ns_per_packet))
        .collect();
    for r in rows.iter_mut().filter(|r| r.family == "IPv6") {
        r.goal_ns = ipv4
            .iter()
            .find(|(case, _)| *case == r.case)
            .map(|(_, ns)| ns * 1.15);
    }
    Ok(PacketReport {
        rules,
        repeat,
        load_ms,
        rows,
    })
}

/// Another pod of the node, and a service whose backend is off the node,
/// for [`established_beside_the_stack`].
const LOCAL_PEER: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 6);
const LOCAL_PEER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x06];
const SERVICE: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const SERVICE6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 0x10);

/// A TCP frame from `src` to `dst` (of one family).
fn tcp(src: IpAddr, dst: IpAddr, sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let l4 = L4::Tcp {
        sport,
        dport,
        flags,
    };
    match (src, dst) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => ipv4(POD_MAC, src, dst, &l4),
        (IpAddr::V6(src), IpAddr::V6(dst)) => ipv6(POD_MAC, src, dst, &l4),
        _ => unreachable!("one family"),
    }
}

/// A TCP frame from the pod.
fn tcp_from_pod(dst: impl Into<IpAddr>, sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let dst = dst.into();
    let pod = if dst.is_ipv6() {
        IpAddr::V6(POD6)
    } else {
        IpAddr::V4(POD)
    };
    tcp(pod, dst, sport, dport, flags)
}

/// Established flows whose packets do more than pass: `from_pod` to
/// another pod of the node (handed straight to it) and through a service
/// (translated, over IPv4 and IPv6), `to_pod` on a service's reply (turned
/// back into the service's), each beside the flow that leaves by the stack
/// (family_cases'), in interleaved single runs: a repetition would see
/// the frame as the first left it (addressed from the node's MAC, or to
/// the backend, or from the service). Run in a network namespace of the bench's own, where the
/// FIB routes the other pod's address to a veth, as a node's FIB routes a
/// pod's address to its host veth.
fn established_beside_the_stack(node: &Node, root: &std::path::Path) -> Result<Vec<PacketRow>> {
    set_egress_policy(root, None)?;
    let file: margay_model::service::ServiceFile = serde_json::from_value(serde_json::json!({
        "services": [{"name": "bench/web", "vip": SERVICE, "port": 80,
                      "backends": [format!("{PEER}:8080")]},
                     {"name": "bench/web6", "vip": SERVICE6, "port": 80,
                      "backends": [format!("[{PEER6}]:8080")]}]
    }))?;
    margay_ebpf::service::apply(root, &file.services)?;
    let ns = margay_tests::netns::NetNs::new("pkb");
    for cmd in [
        "ip link add pod-b type veth peer name pod-b-eth0",
        "ip link set pod-b-eth0 up",
        "ip link set pod-b up",
        &format!("ip route add {LOCAL_PEER}/32 dev pod-b"),
        // The FIB answers a forwarding lookup only where forwarding is
        // on, as on every node.
        "sysctl -qw net.ipv4.ip_forward=1",
    ] {
        ns.run_ok(&cmd.split(' ').collect::<Vec<_>>());
    }
    let ifindex: u32 = ns
        .run_ok(&["cat", "/sys/class/net/pod-b/ifindex"])
        .trim()
        .parse()
        .context("pod-b's ifindex")?;
    registry::register(
        root,
        &Endpoint::new(ifindex, "pod-b", LOCAL_PEER, LOCAL_PEER_MAC),
        None,
    )?;
    // The backend's answer on a service connection, as it reaches the
    // pod's veth (to_pod turns it back into the service's).
    let service_reply = |backend: IpAddr, pod: IpAddr| tcp(backend, pod, 8080, 7100, TCP_ACK);
    // (family, case, its program, established packet, its verdict, the
    // flow's first packet, from the pod)
    let cases = [
        (
            "IPv4",
            "conntrack hit, to a local pod, single runs (median)",
            "from_pod",
            tcp_from_pod(LOCAL_PEER, 6000, 80, TCP_ACK),
            TC_ACT_REDIRECT,
            tcp_from_pod(LOCAL_PEER, 6000, 80, TCP_SYN),
        ),
        (
            "IPv4",
            "conntrack hit, to a service, single runs (median)",
            "from_pod",
            tcp_from_pod(SERVICE, 7000, 80, TCP_ACK),
            TC_ACT_OK,
            tcp_from_pod(SERVICE, 7000, 80, TCP_SYN),
        ),
        (
            "IPv4",
            "to_pod: a service's reply, conntrack hit, single runs (median)",
            "to_pod",
            service_reply(PEER.into(), POD.into()),
            TC_ACT_OK,
            tcp_from_pod(SERVICE, 7100, 80, TCP_SYN),
        ),
        (
            "IPv4",
            "conntrack hit, by the stack, single runs (median)",
            "from_pod",
            tcp_from_pod(PEER, 2000, 443, TCP_ACK),
            TC_ACT_OK,
            tcp_from_pod(PEER, 2000, 443, TCP_SYN),
        ),
        (
            "IPv6",
            "conntrack hit, to a service, single runs (median)",
            "from_pod",
            tcp_from_pod(SERVICE6, 7000, 80, TCP_ACK),
            TC_ACT_OK,
            tcp_from_pod(SERVICE6, 7000, 80, TCP_SYN),
        ),
        (
            "IPv6",
            "to_pod: a service's reply, conntrack hit, single runs (median)",
            "to_pod",
            service_reply(PEER6.into(), POD6.into()),
            TC_ACT_OK,
            tcp_from_pod(SERVICE6, 7100, 80, TCP_SYN),
        ),
        (
            "IPv6",
            "conntrack hit, by the stack, single runs (median)",
            "from_pod",
            tcp_from_pod(PEER6, 2000, 443, TCP_ACK),
            TC_ACT_OK,
            tcp_from_pod(PEER6, 2000, 443, TCP_SYN),
        ),
    ];
    let runs = 2_000;
    let netns = std::fs::File::open(ns.path()).context("the bench's namespace")?;
    // TestRun runs the program in its caller's namespace: this thread
    // enters the bench's for the runs, and comes back whatever they give.
    let home =
        std::fs::File::open("/proc/thread-self/ns/net").context("this thread's namespace")?;
    nix::sched::setns(&netns, nix::sched::CloneFlags::CLONE_NEWNET)
        .context("entering the bench's namespace")?;
    let runs_there = || -> Result<Vec<Vec<f64>>> {
        for (_, case, _, _, verdict, first) in &cases {
            let (got, _) = run_repeat(node, "from_pod", first, 0, 1);
            anyhow::ensure!(got == *verdict, "{case}: the first packet got {got}");
        }
        let mut times = vec![Vec::with_capacity(runs); cases.len()];
        for _ in 0..runs {
            for ((_, case, program, packet, verdict, _), times) in cases.iter().zip(&mut times) {
                let (got, ns) = run_repeat(node, program, packet, 0, 1);
                anyhow::ensure!(got == *verdict, "{case}: got {got}");
                times.push(ns);
            }
        }
        Ok(times)
    };
    let result = runs_there();
    nix::sched::setns(&home, nix::sched::CloneFlags::CLONE_NEWNET)
        .context("coming back from the bench's namespace")?;
    Ok(cases
        .iter()
        .zip(result?)
        .map(|((family, case, ..), times)| PacketRow {
            family,
            case,
            ns_per_packet: crate::stats::median_of(&times),
            goal_ns: None,
            runs: runs as u64,
        })
        .collect())
}

/// One family's cases, with IPv4's goals.
fn family_cases(
    node: &Node,
    root: &std::path::Path,
    family: Family,
    repeat: u32,
    rules: usize,
) -> Result<Vec<PacketRow>> {
    let frame = |sport, flags| family.frame(sport, flags);
    let mut rows = Vec::new();
    let mut row = |case, ns_per_packet, goal_ns, runs| {
        rows.push(PacketRow {
            family: family.name,
            case,
            ns_per_packet,
            goal_ns,
            runs,
        })
    };

    // Miss, judged by every rule and denied by the last: nothing is
    // inserted, so every repetition takes the same path.
    set_egress(root, family.policy_rules(rules, Action::Deny))?;
    let (verdict, ns) = run_repeat(node, "from_pod", &frame(1000, TCP_SYN), 0, repeat);
    anyhow::ensure!(
        verdict == TC_ACT_SHOT,
        "the miss case was not denied ({verdict})"
    );
    row(
        "conntrack miss, 100-rule scan, denied",
        ns,
        Some(250.0),
        u64::from(repeat),
    );

    // Miss allowed by the last rule: scan and conntrack insert. Each flow is
    // new only once, so these are single runs with fresh source ports,
    // each timed by the kernel.
    set_egress(root, family.policy_rules(rules, Action::Allow))?;
    let fresh = 20_000u16;
    let mut total = 0.0;
    for sport in 0..fresh {
        crate::interrupt::check()?;
        let (verdict, ns) = run_repeat(node, "from_pod", &frame(10_000 + sport, TCP_SYN), 0, 1);
        anyhow::ensure!(
            verdict == TC_ACT_OK,
            "the new flow was not allowed ({verdict})"
        );
        total += ns;
    }
    row(
        "conntrack miss, 100-rule scan, allowed + insert, single runs",
        total / f64::from(fresh),
        None,
        u64::from(fresh),
    );

    // New flows, warm: one flow made new on every repetition. A SYN that
    // carries RST leaves its entry closed, and the next SYN of a closed
    // flow starts a new one: looked up, judged, its entry written again.
    // The single runs above see every cache cold; these see them warm.
    let recreate = frame(5000, TCP_SYN | TCP_RST);
    let (verdict, ns) = run_repeat(node, "from_pod", &recreate, 0, repeat);
    anyhow::ensure!(
        verdict == TC_ACT_OK,
        "the new flow was not allowed ({verdict})"
    );
    row(
        "new flow, 100-rule scan, allowed + insert (warm)",
        ns,
        None,
        u64::from(repeat),
    );
    set_egress_policy(root, None)?;
    let (verdict, ns) = run_repeat(node, "from_pod", &recreate, 0, repeat);
    anyhow::ensure!(
        verdict == TC_ACT_OK,
        "the new flow was not allowed ({verdict})"
    );
    row(
        "new flow, no policy, allowed + insert (warm)",
        ns,
        Some(350.0),
        u64::from(repeat),
    );

    // Hit: an established flow's packets.
    let (verdict, _) = run_repeat(node, "from_pod", &frame(2000, TCP_SYN), 0, 1);
    anyhow::ensure!(verdict == TC_ACT_OK, "the flow was not allowed ({verdict})");
    let (verdict, hit_ns) = run_repeat(node, "from_pod", &frame(2000, TCP_ACK), 0, repeat);
    anyhow::ensure!(
        verdict == TC_ACT_OK,
        "the established flow was dropped ({verdict})"
    );
    row("conntrack hit", hit_ns, Some(60.0), u64::from(repeat));
    row(
        "TestRun's own cost (a program that returns at once)",
        margay_tests::bpf::harness_ns(&frame(2000, TCP_ACK), repeat),
        None,
        u64::from(repeat),
    );
    // The same flow's answers: on the pod's veth (to_pod), and arriving
    // on a data interface (from_net, IPv4), which hands them to the pod.
    let answer = family.reply(2000, TCP_ACK);
    let (verdict, ns) = run_repeat(node, "to_pod", &answer, 0, repeat);
    anyhow::ensure!(
        verdict == TC_ACT_OK,
        "to_pod dropped the answer ({verdict})"
    );
    row("to_pod: conntrack hit", ns, None, u64::from(repeat));
    if family.name == "IPv4" {
        let runs = 2_000;
        let (verdict, ns) = median_of_runs(node, "from_net", &answer, runs);
        anyhow::ensure!(
            verdict == TC_ACT_REDIRECT,
            "from_net did not hand the answer to the pod ({verdict})"
        );
        row(
            "from_net: to a local pod, conntrack hit",
            ns,
            None,
            (runs as u64) * u64::from(TTL_BOUND_REPEAT),
        );
    }

    // Single runs carry a fixed cost a repeated run spreads thin (timer
    // reads, a cold skb): the same hit path, run singly, measures it.
    let ack = frame(2000, TCP_ACK);
    let single_hit = (0..fresh)
        .map(|_| run_repeat(node, "from_pod", &ack, 0, 1).1)
        .sum::<f64>()
        / f64::from(fresh);
    let overhead = (single_hit - hit_ns).max(0.0);
    row(
        "conntrack hit, single runs (calibration)",
        single_hit,
        None,
        u64::from(fresh),
    );
    row(
        "conntrack miss, allowed + insert, calibrated",
        total / f64::from(fresh) - overhead,
        Some(250.0),
        u64::from(fresh),
    );

    // A new flow judged by rules naming sets: the peer is in none, so each
    // set is looked up and the flow denied (nothing inserted: every
    // repetition takes the same path).
    let (sets, rules) = family.set_rules();
    let mut table = IpSetTable::open(root)?;
    table.apply(&sets)?;
    set_egress(root, rules)?;
    let (verdict, ns) = run_repeat(node, "from_pod", &frame(3000, TCP_SYN), 0, repeat);
    anyhow::ensure!(
        verdict == TC_ACT_SHOT,
        "the set case was not denied ({verdict})"
    );
    row(
        "conntrack miss, 50 rules naming sets of 5,000, denied",
        ns,
        None,
        u64::from(repeat),
    );
    table.retire(&|_| false)?;
    Ok(rows)
}
