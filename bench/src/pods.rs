//! Pod setup and teardown through the CNI driver, exactly as a runtime
//! does it: Margay in bpf and linux mode against Debian's ptp +
//! host-local, in one run. Sequential ADD and DEL latency (interleaved
//! across the three), then pods per second with concurrent workers.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use serde::Serialize;

use crate::network::{Kind, Network, Pod};
use crate::report::{Table, fmt_ms, fmt_ratio};
use crate::stats::{self, Summary};

#[derive(Debug, Serialize)]
pub struct PodsReport {
    pub pods: usize,
    pub workers: usize,
    pub concurrent_pods: usize,
    pub results: Vec<KindResult>,
}

#[derive(Debug, Serialize)]
pub struct KindResult {
    pub kind: &'static str,
    pub add: Summary,
    pub del: Summary,
    /// Pods (ADD + DEL) per second with `workers` threads, median of rounds.
    pub pods_per_second: f64,
    pub pods_per_second_rounds: Vec<f64>,
}

impl PodsReport {
    fn peer(&self) -> &KindResult {
        self.results
            .last()
            .expect("ptp+host-local is measured last")
    }

    pub fn table(&self) -> Table {
        let peer = self.peer();
        let mut t = Table::new([
            "",
            "ADD p50 ms",
            "ADD p99 ms",
            "DEL p50 ms",
            "DEL p99 ms",
            "pods/s",
            "ADD p50 ratio",
            "DEL p50 ratio",
            "pods/s ratio",
        ]);
        for r in &self.results {
            t.row([
                r.kind.to_string(),
                fmt_ms(r.add.p50_ms),
                fmt_ms(r.add.p99_ms),
                fmt_ms(r.del.p50_ms),
                fmt_ms(r.del.p99_ms),
                format!("{:.1}", r.pods_per_second),
                fmt_ratio(stats::ratio(r.add.p50_ms, peer.add.p50_ms)),
                fmt_ratio(stats::ratio(r.del.p50_ms, peer.del.p50_ms)),
                fmt_ratio(stats::ratio(r.pods_per_second, peer.pods_per_second)),
            ]);
        }
        t
    }
}

/// Pods whose `eth0` address is checked (untimed) in the sequential phase.
const VERIFIED_PODS: usize = 3;

/// Pods per second: `count` pods (each one ADD and one DEL) in `elapsed`.
pub fn pods_per_second(count: usize, elapsed: Duration) -> f64 {
    count as f64 / elapsed.as_secs_f64()
}

/// Whether `ip -br addr` output lists `ip` (with any prefix length) on `ifname`.
pub fn br_addr_lists(output: &str, ifname: &str, ip: std::net::Ipv4Addr) -> bool {
    let ip = ip.to_string();
    output.lines().any(|line| {
        let mut fields = line.split_whitespace();
        // `eth0@if12`: the name up to the `@`.
        let name = fields.next().unwrap_or("");
        name.split('@').next() == Some(ifname)
            && fields
                .skip(1) // the operational state
                .any(|a| a.split('/').next() == Some(ip.as_str()))
    })
}

/// Fails unless the pod's `eth0` carries the address its ADD returned.
fn verify_pod_addr(pod: &Pod) -> Result<()> {
    let ip = pod.ip.context("pod not added")?;
    let out = std::process::Command::new("ip")
        .args(["-n", pod.ns.name(), "-br", "addr", "show", "dev", "eth0"])
        .output()
        .context("running ip")?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success() && br_addr_lists(&text, "eth0", ip),
        "{}: eth0 of {} does not carry {ip}: {} {}",
        pod.net.kind.label(),
        pod.ns.name(),
        text.trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// The order of the networks in each round of the interleaved phase: a
/// shuffle per round (xorshift, fixed seed, so runs are comparable), so that
/// every network follows each other one equally often.
struct Order {
    state: u64,
    len: usize,
}

impl Order {
    fn new(len: usize) -> Order {
        Order {
            state: 0x9e37_79b9_7f4a_7c15,
            len,
        }
    }

    fn next_round(&mut self) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.len).collect();
        for i in (1..order.len()).rev() {
            self.state ^= self.state << 13;
            self.state ^= self.state >> 7;
            self.state ^= self.state << 17;
            order.swap(i, (self.state % (i as u64 + 1)) as usize);
        }
        order
    }
}

/// ADD then DEL of `count` pods of `net` by `workers` threads; pods/s.
fn throughput(net: &Network, count: usize, workers: usize) -> Result<f64> {
    let pods: Vec<Pod> = (0..count).map(|_| Pod::prepare(net, "pc")).collect();
    let pods = std::sync::Mutex::new(pods.into_iter().collect::<Vec<_>>());
    let start = Instant::now();
    std::thread::scope(|s| -> Result<()> {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                s.spawn(|| -> Result<()> {
                    loop {
                        let Some(mut pod) = pods.lock().expect("lock").pop() else {
                            return Ok(());
                        };
                        pod.ip = Some(net.add(&pod.ns, &pod.cid)?);
                        net.del(&pod.ns, &pod.cid)?;
                        pod.ip = None;
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().expect("worker")?;
        }
        Ok(())
    })?;
    Ok(pods_per_second(count, start.elapsed()))
}

pub fn run(
    bin_dir: PathBuf,
    peer_dir: PathBuf,
    pods: usize,
    workers: usize,
    concurrent_pods: usize,
) -> Result<PodsReport> {
    let pools = ["10.217.0.0/16", "10.218.0.0/16", "10.219.0.0/16"];
    let nets = Kind::ALL
        .iter()
        .zip(pools)
        .map(|(kind, pool)| Network::new(*kind, pool, &bin_dir, &peer_dir))
        .collect::<Result<Vec<_>>>()?;
    // Warm-up: the first bpf ADD loads the programs once per node.
    for net in &nets {
        for _ in 0..5 {
            let mut pod = Pod::prepare(net, "pw");
            pod.ip = Some(net.add(&pod.ns, &pod.cid)?);
        }
    }
    // Namespaces are made before timing starts: a runtime makes them
    // before it calls CNI.
    let mut prepared: Vec<Vec<Pod>> = nets
        .iter()
        .map(|n| (0..pods).map(|_| Pod::prepare(n, "ps")).collect())
        .collect();
    let mut adds = vec![Vec::with_capacity(pods); nets.len()];
    let mut dels = vec![Vec::with_capacity(pods); nets.len()];
    // Interleaved: pod i of every network before pod i + 1 of any, in an
    // order shuffled per round. A call leaves work behind (the kernel's
    // follow-up on a new veth, a Go plugin's exit) that slows the next one:
    // in a fixed order one network always follows ptp+host-local, measured
    // 0.4 ms slower than when the same binary follows margay.
    let mut order = Order::new(nets.len());
    for i in 0..pods {
        for k in order.next_round() {
            let pod = prepared[k].get_mut(i).expect("prepared");
            adds[k].push(pod.add_timed()?);
        }
    }
    // Untimed: the first pods really carry the address their ADD returned.
    for pod in prepared.iter().flat_map(|p| p.iter().take(VERIFIED_PODS)) {
        verify_pod_addr(pod)?;
    }
    for i in 0..pods {
        for k in order.next_round() {
            let pod = prepared[k].get_mut(i).expect("prepared");
            dels[k].push(pod.del_timed()?);
        }
    }
    drop(prepared);
    let mut rounds = vec![Vec::new(); nets.len()];
    for _ in 0..2 {
        for (k, net) in nets.iter().enumerate() {
            rounds[k].push(throughput(net, concurrent_pods, workers)?);
        }
    }
    let results = nets
        .iter()
        .enumerate()
        .map(|(k, net)| {
            let mut r = rounds[k].clone();
            r.sort_by(f64::total_cmp);
            KindResult {
                kind: net.kind.label(),
                add: Summary::of(&adds[k]).expect("samples"),
                del: Summary::of(&dels[k]).expect("samples"),
                pods_per_second: stats::median(&r).unwrap_or(f64::NAN),
                pods_per_second_rounds: rounds[k].clone(),
            }
        })
        .collect();
    Ok(PodsReport {
        pods,
        workers,
        concurrent_pods,
        results,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_network_follows_every_other_about_equally() {
        let mut order = Order::new(3);
        let mut follows = [[0u32; 3]; 3];
        let mut last = None;
        for _ in 0..3000 {
            for k in order.next_round() {
                if let Some(prev) = last {
                    follows[k][prev] += 1;
                }
                last = Some(k);
            }
        }
        // Within a round no network follows itself, across rounds each may.
        for (k, row) in follows.iter().enumerate() {
            for (prev, n) in row.iter().enumerate() {
                let expected = if k == prev { 333 } else { 1333 };
                assert!(n.abs_diff(expected) < expected / 7, "{follows:?}");
            }
        }
    }

    #[test]
    fn pods_per_second_is_count_over_seconds() {
        assert!((pods_per_second(200, Duration::from_secs(4)) - 50.0).abs() < 1e-9);
        assert!((pods_per_second(3, Duration::from_millis(500)) - 6.0).abs() < 1e-9);
        assert!(pods_per_second(1, Duration::ZERO).is_infinite());
    }

    #[test]
    fn br_addr_lists_matches_interface_and_address() {
        let ip = "10.217.0.5".parse().unwrap();
        let out = "eth0@if1234       UP             10.217.0.5/32 fe80::1/64 \n";
        assert!(br_addr_lists(out, "eth0", ip));
        assert!(br_addr_lists("eth0 UP 10.217.0.5/16\n", "eth0", ip));
        assert!(!br_addr_lists(out, "eth1", ip));
        assert!(!br_addr_lists("eth0@if3 UP 10.217.0.50/32\n", "eth0", ip));
        assert!(!br_addr_lists("eth0@if3 DOWN\n", "eth0", ip));
        assert!(!br_addr_lists("", "eth0", ip));
    }
}
