//! NodePort throughput, external client -> node A's NodePort -> backend
//! on node B (iperf3), in tunnel mode and in DSR mode, interleaved rounds.
//! Nodes and client are namespaces on one LAN (`margay_tests::cluster`).

use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use margay_tests::cluster::Cluster;
use margay_tests::netns::ChildGuard;
use serde_json::{Value, json};

use crate::throughput::ThroughputReport;

const NODE_PORT: u16 = 30201;
const MODES: [&str; 2] = ["tunnel", "dsr"];

fn iperf(c: &Cluster, seconds: u32) -> Result<f64> {
    crate::interrupt::check()?;
    for _ in 0..50 {
        let out = Command::new("ip")
            .args(["netns", "exec", c.client.name(), "iperf3", "-c"])
            .arg(c.a.addr.to_string())
            .args([
                "-p",
                &NODE_PORT.to_string(),
                "-t",
                &seconds.to_string(),
                "-J",
            ])
            .output()
            .context("iperf3 (apt-get install iperf3)")?;
        let report: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        if let Some(bps) = report
            .pointer("/end/sum_received/bits_per_second")
            .and_then(Value::as_f64)
        {
            return Ok(bps / 1e9);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("iperf3 through the NodePort never completed")
}

pub fn run(rounds: usize, seconds: u32) -> Result<ThroughputReport> {
    let c = Cluster::new(5);
    // The forward direction is tunnelled: leave room for VXLAN's 50 bytes.
    c.client
        .run_ok(&["ip", "link", "set", "eth0", "mtu", "1450"]);
    let (_pod_a, _) = c.a.pod("npa").map_err(|e| anyhow!(e))?;
    let (pod_b, ip_b) = c.b.pod("npb").map_err(|e| anyhow!(e))?;
    let _server = ChildGuard(
        Command::new("ip")
            .args(["netns", "exec", pod_b.name(), "iperf3", "-s", "-p", "5201"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("starting iperf3 -s")?,
    );
    let services = json!({"services": [{"name": "bench/iperf", "vip": "10.96.0.30", "port": 5201,
        "node_port": NODE_PORT, "backends": [format!("{ip_b}:5201")]}]});
    let mut gbits: Vec<(&'static str, Vec<f64>)> = MODES.iter().map(|m| (*m, Vec::new())).collect();
    for _ in 0..rounds {
        for (mode, samples) in gbits.iter_mut() {
            c.attach_data_ifaces(mode).map_err(|e| anyhow!(e))?;
            c.know_each_other(false).map_err(|e| anyhow!(e))?;
            c.apply_on_both("services", services.clone())
                .map_err(|e| anyhow!(e))?;
            samples.push(iperf(&c, seconds)?);
        }
    }
    Ok(ThroughputReport {
        what: "client -> NodePort -> other node",
        baseline: "tunnel",
        rounds,
        seconds,
        gbits,
    })
}
