//! Pod-to-pod TCP throughput (iperf3) on one node: Margay in bpf mode,
//! Margay in linux mode and Debian's ptp + host-local, in interleaved
//! rounds so machine noise hits all three alike; medians reported.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use margay_tests::netns::ChildGuard;
use serde::Serialize;
use serde_json::Value;

use crate::network::{Kind, Network, Pod};
use crate::report::Table;
use crate::stats;

/// Two pods of one network; the first is the client.
struct Setup<'n> {
    pods: [Pod<'n>; 2],
}

impl<'n> Setup<'n> {
    fn new(net: &'n Network) -> Result<Setup<'n>> {
        let mut pods = [Pod::prepare(net, "tpc"), Pod::prepare(net, "tps")];
        for pod in &mut pods {
            pod.ip = Some(net.add(&pod.ns, &pod.cid)?);
        }
        Ok(Setup { pods })
    }

    /// One iperf3 run client -> server; bits per second received.
    fn iperf(&self, seconds: u32) -> Result<f64> {
        crate::interrupt::check()?;
        let [client, server] = &self.pods;
        let server_ip = server.ip.context("the server pod has an address")?;
        let port = "5201";
        let _server = ChildGuard(
            Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    server.ns.name(),
                    "iperf3",
                    "-s",
                    "-1",
                    "-p",
                    port,
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("starting iperf3 -s (apt-get install iperf3)")?,
        );
        for _ in 0..50 {
            let out = Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    client.ns.name(),
                    "iperf3",
                    "-c",
                    &server_ip.to_string(),
                ])
                .args(["-p", port, "-t", &seconds.to_string(), "-J"])
                .output()?;
            let report: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
            if let Some(bps) = report
                .pointer("/end/sum_received/bits_per_second")
                .and_then(Value::as_f64)
            {
                return Ok(bps);
            }
            // The server may not be listening yet.
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("{}: iperf3 never completed", client.net.kind.label())
    }
}

/// Gbit/s of interleaved iperf3 rounds per setup, compared with one of
/// them (`baseline`).
#[derive(Debug, Serialize)]
pub struct ThroughputReport {
    /// What was measured (the table's first header).
    pub what: &'static str,
    pub baseline: &'static str,
    pub rounds: usize,
    pub seconds: u32,
    /// Setup name -> Gbit/s of every round.
    pub gbits: Vec<(&'static str, Vec<f64>)>,
}

impl ThroughputReport {
    pub fn median(&self, name: &str) -> f64 {
        let v = self
            .gbits
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_slice())
            .unwrap_or_default();
        stats::median_of(v)
    }

    pub fn table(&self) -> Table {
        let base = self.median(self.baseline);
        let mut t = Table::new([
            self.what.to_string(),
            "median Gbit/s".into(),
            "min".into(),
            "max".into(),
            format!("vs {}", self.baseline),
        ]);
        for (name, v) in &self.gbits {
            let min = v.iter().copied().fold(f64::INFINITY, f64::min);
            let max = v.iter().copied().fold(0.0, f64::max);
            let m = self.median(name);
            t.row([
                name.to_string(),
                format!("{m:.2}"),
                format!("{min:.2}"),
                format!("{max:.2}"),
                format!("{:.2}x", m / base),
            ]);
        }
        t
    }
}

pub fn run(
    bin_dir: PathBuf,
    peer_dir: PathBuf,
    rounds: usize,
    seconds: u32,
) -> Result<ThroughputReport> {
    let pools = ["10.214.0.0/24", "10.215.0.0/24", "10.216.0.0/24"];
    let nets = Kind::ALL
        .iter()
        .zip(pools)
        .map(|(kind, pool)| Network::new(*kind, pool, &bin_dir, &peer_dir))
        .collect::<Result<Vec<_>>>()?;
    let setups = nets.iter().map(Setup::new).collect::<Result<Vec<_>>>()?;
    let mut gbits: Vec<(&'static str, Vec<f64>)> =
        nets.iter().map(|n| (n.kind.label(), Vec::new())).collect();
    for _ in 0..rounds {
        for (setup, (_, v)) in setups.iter().zip(gbits.iter_mut()) {
            v.push(setup.iperf(seconds)? / 1e9);
        }
    }
    Ok(ThroughputReport {
        what: "pod -> pod TCP (iperf3)",
        baseline: "ptp+host-local",
        rounds,
        seconds,
        gbits,
    })
}
