//! Nanoseconds per packet of `from_pod`, run by the kernel on crafted
//! frames (BPF_PROG_TEST_RUN): the program as loaded on a node, with a
//! 100-rule egress policy, on the conntrack-miss and conntrack-hit paths.

use std::net::Ipv4Addr;

use anyhow::{Context, Result};
use margay_ebpf::abi::{Endpoint, LOG_OFF};
use margay_ebpf::node::{Node, Settings};
use margay_ebpf::policy::{self, Action, Ports, Protocol, Rule};
use margay_ebpf::registry;
use margay_tests::bpf::{BpfRoot, TC_ACT_OK, TC_ACT_SHOT, run_repeat};
use margay_tests::packet::{L4, POD_MAC, TCP_ACK, TCP_SYN, ipv4};
use serde::Serialize;

use crate::report::Table;

const POD: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 5);
const PEER: Ipv4Addr = Ipv4Addr::new(10, 1, 2, 3);

#[derive(Debug, Serialize)]
pub struct PacketRow {
    pub case: &'static str,
    pub ns_per_packet: f64,
    pub goal_ns: Option<f64>,
    pub runs: u64,
}

#[derive(Debug, Serialize)]
pub struct PacketReport {
    pub rules: usize,
    pub repeat: u32,
    pub rows: Vec<PacketRow>,
}

impl PacketReport {
    pub fn table(&self) -> Table {
        let mut t = Table::new(["from_pod path", "ns/packet", "goal", "met"]);
        for r in &self.rows {
            t.row([
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

/// `rules - 1` rules that never match the benchmark's flow, then `last`.
fn policy_rules(rules: usize, last: Action) -> Vec<Rule> {
    let mut list: Vec<Rule> = (0..rules.saturating_sub(1))
        .map(|i| Rule {
            action: Action::Allow,
            cidr: format!("192.168.{}.0/24", i % 256).parse().expect("valid"),
            protocol: Protocol::Number(6),
            ports: Some(Ports { lo: 1, hi: 1 }),
        })
        .collect();
    list.push(Rule {
        action: last,
        cidr: format!("{PEER}/32").parse().expect("valid"),
        protocol: Protocol::Any,
        ports: None,
    });
    list
}

fn set_egress(root: &std::path::Path, rules: Vec<Rule>) -> Result<()> {
    policy::set(
        root,
        1,
        &policy::PolicySpec {
            ingress: None,
            egress: Some(rules),
        },
    )
    .context("setting the policy")
}

/// Runs the cases; `repeat` runs per TestRun call.
pub fn run(repeat: u32, rules: usize) -> Result<PacketReport> {
    let root = BpfRoot::new();
    let settings = Settings {
        log_level: LOG_OFF,
        ..Settings::default()
    };
    let node = Node::open(root.path(), &settings).context("loading the programs")?;
    // TestRun puts packets on loopback: the endpoint is ifindex 1.
    registry::register(root.path(), &Endpoint::new(1, "lo", POD, POD_MAC))?;
    let frame = |sport: u16, flags: u8| {
        ipv4(
            POD_MAC,
            POD,
            PEER,
            &L4::Tcp {
                sport,
                dport: 443,
                flags,
            },
        )
    };
    let mut rows = Vec::new();

    // Miss, judged by every rule and denied by the last: nothing is
    // inserted, so every repetition takes the same path.
    set_egress(root.path(), policy_rules(rules, Action::Deny))?;
    let (verdict, ns) = run_repeat(&node, "from_pod", &frame(1000, TCP_SYN), 0, repeat);
    anyhow::ensure!(
        verdict == TC_ACT_SHOT,
        "the miss case was not denied ({verdict})"
    );
    rows.push(PacketRow {
        case: "conntrack miss, 100-rule scan, denied",
        ns_per_packet: ns,
        goal_ns: Some(250.0),
        runs: u64::from(repeat),
    });

    // Miss allowed by the last rule: scan and conntrack insert. Each flow is
    // new only once, so these are single runs with fresh source ports,
    // each timed by the kernel.
    set_egress(root.path(), policy_rules(rules, Action::Allow))?;
    let fresh = 20_000u16;
    let mut total = 0.0;
    for sport in 0..fresh {
        crate::interrupt::check()?;
        let (verdict, ns) = run_repeat(&node, "from_pod", &frame(10_000 + sport, TCP_SYN), 0, 1);
        anyhow::ensure!(
            verdict == TC_ACT_OK,
            "the new flow was not allowed ({verdict})"
        );
        total += ns;
    }
    rows.push(PacketRow {
        case: "conntrack miss, 100-rule scan, allowed + insert, single runs",
        ns_per_packet: total / f64::from(fresh),
        goal_ns: None,
        runs: u64::from(fresh),
    });

    // Hit: an established flow's packets.
    let (verdict, _) = run_repeat(&node, "from_pod", &frame(2000, TCP_SYN), 0, 1);
    anyhow::ensure!(verdict == TC_ACT_OK, "the flow was not allowed ({verdict})");
    let (verdict, hit_ns) = run_repeat(&node, "from_pod", &frame(2000, TCP_ACK), 0, repeat);
    anyhow::ensure!(
        verdict == TC_ACT_OK,
        "the established flow was dropped ({verdict})"
    );
    rows.push(PacketRow {
        case: "conntrack hit",
        ns_per_packet: hit_ns,
        goal_ns: Some(100.0),
        runs: u64::from(repeat),
    });

    // Single runs carry a fixed cost a repeated run spreads thin (timer
    // reads, a cold skb): the same hit path, run singly, measures it.
    let ack = frame(2000, TCP_ACK);
    let single_hit = (0..fresh)
        .map(|_| run_repeat(&node, "from_pod", &ack, 0, 1).1)
        .sum::<f64>()
        / f64::from(fresh);
    let overhead = (single_hit - hit_ns).max(0.0);
    rows.push(PacketRow {
        case: "conntrack hit, single runs (calibration)",
        ns_per_packet: single_hit,
        goal_ns: None,
        runs: u64::from(fresh),
    });
    rows.push(PacketRow {
        case: "conntrack miss, allowed + insert, calibrated",
        ns_per_packet: total / f64::from(fresh) - overhead,
        goal_ns: Some(250.0),
        runs: u64::from(fresh),
    });
    Ok(PacketReport {
        rules,
        repeat,
        rows,
    })
}
