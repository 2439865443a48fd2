//! What a packet costs (`bench datapath`), measured the same way on every
//! path, in interleaved rounds, medians reported:
//!
//! - CPU per Gbit: a TCP stream and a UDP stream at a fixed rate below
//!   saturation (TCP paced by the kernel, `iperf3 --fq-rate`; UDP by `bench
//!   probe udp-send`, which sleeps between 1 ms slices: iperf3's own `-b`
//!   pacing spins at random); the whole machine's busy CPU time over the
//!   run (/proc/stat: the softirq work of forwarding is no process's), less
//!   what the machine spends in as long when nothing runs (measured every
//!   round), per Gbit received;
//! - transactions, netperf's TCP_CRR and TCP_RR in shape: connect, one
//!   16-byte request and its answer, close; and request/answer on one open
//!   connection (`bench probe crr`/`rr` against `bench probe echo`):
//!   per second, p50 and p99;
//! - throughput at saturation (iperf3 unpaced), with its spread.
//!
//! The paths: pod → pod on one node and across nodes, on two-node clusters
//! of network namespaces whose nodes run nothing else ([`pods`]: Margay
//! bpf, Margay linux, ptp + host-local, no netfilter on the nodes); with
//! `--kubernetes`, those and pod → ClusterIP and external client →
//! NodePort, each with its backend on the other node, on two-node local
//! Kubernetes clusters ([`kube`]: Margay bpf with tunnel and with DSR
//! NodePorts, against upstream kube-proxy in iptables and nftables mode
//! over ptp, whose rules put every node's forwarding through netfilter as
//! on a real node).

pub mod kube;
pub mod pods;

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use margay_tests::netns::ChildGuard;
use serde::Serialize;
use serde_json::Value;

use crate::probe::{Datagrams, Transactions};
use crate::procfs::{clock_ticks_per_second, machine_busy_ticks};
use crate::report::{Table, fmt_ratio};
use crate::stats::{median_of, percentile};

/// The ports the servers listen on: iperf3 (TCP), the UDP sink, the echo
/// server.
pub const IPERF_PORT: u16 = 5201;
pub const UDP_PORT: u16 = 5202;
pub const ECHO_PORT: u16 = 9100;
/// UDP datagrams: a full frame's payload at the pods' MTU of 1500, with
/// room for a tunnel's header.
const UDP_LENGTH: usize = 1400;

/// What `bench datapath` runs.
#[derive(Debug, Clone, Serialize, clap::Args)]
pub struct Options {
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// Seconds per stream.
    #[arg(long, default_value_t = 5)]
    pub seconds: u32,
    /// Rate of the fixed-rate TCP stream, Gbit/s.
    #[arg(long, default_value_t = 2.0)]
    pub tcp_gbit: f64,
    /// Rate of the fixed-rate UDP stream, Mbit/s.
    #[arg(long, default_value_t = 500.0)]
    pub udp_mbit: f64,
    /// Connections per round of connect/request/close.
    #[arg(long, default_value_t = 2000)]
    pub crr: usize,
    /// Requests per round on one connection.
    #[arg(long, default_value_t = 10000)]
    pub rr: usize,
    /// On two-node local Kubernetes clusters (real kubelets, kube-proxy):
    /// the pod paths, and the Service paths (pod → ClusterIP, external →
    /// NodePort, backends on another node).
    #[arg(long)]
    pub kubernetes: bool,
    /// Only the setups whose label contains one of these (e.g. `--only
    /// "margay bpf" --only ptp`), to look at one closely; ratios need the
    /// baseline among them.
    #[arg(long)]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub only: Vec<String>,
    /// Directory holding margay, margay-ipam and margayctl [default: this
    /// executable's].
    #[arg(long)]
    #[serde(skip)]
    pub bin_dir: Option<std::path::PathBuf>,
    #[arg(long, default_value = "/usr/lib/cni")]
    #[serde(skip)]
    pub peer_dir: std::path::PathBuf,
}

/// A path through the dataplane.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Route {
    /// Pod to pod, both on one node.
    SameNode,
    /// Pod to pod on another node, routed on the LAN.
    AcrossNodes,
    /// Pod to a ClusterIP whose one backend runs on another node.
    ClusterIp,
    /// A client outside the cluster to a node's NodePort, the backend on
    /// another node.
    NodePort,
}

impl Route {
    fn label(self) -> &'static str {
        match self {
            Route::SameNode => "pod→pod, same node",
            Route::AcrossNodes => "pod→pod, across nodes",
            Route::ClusterIp => "pod→ClusterIP, remote backend",
            Route::NodePort => "external→NodePort, remote backend",
        }
    }
}

/// Where a benchmark's process runs: a network namespace it enters.
#[derive(Debug, Clone)]
pub struct Place(Vec<String>);

impl Place {
    /// A named namespace (`ip netns`).
    pub fn netns(name: &str) -> Place {
        Place(vec![
            "ip".into(),
            "netns".into(),
            "exec".into(),
            name.into(),
        ])
    }

    /// A namespace by its path (`/proc/<pid>/ns/net` of a container).
    pub fn nsenter(path: &str) -> Place {
        Place(vec!["nsenter".into(), format!("--net={path}")])
    }

    fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new(&self.0[0]);
        cmd.args(&self.0[1..]).arg(program);
        cmd
    }

    /// `bench probe <args>` here.
    fn probe(&self) -> Result<Command> {
        let own = std::env::current_exe().context("this executable")?;
        let mut cmd = self.command(own);
        cmd.arg("probe");
        Ok(cmd)
    }

    /// iperf3's and the echo server's processes here, until dropped.
    pub fn servers(&self) -> Result<Vec<ChildGuard>> {
        let iperf = self
            .command("iperf3")
            .args(["-s", "-p", &IPERF_PORT.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("iperf3 -s (apt-get install iperf3)")?;
        let iperf = ChildGuard(iperf);
        let echo = self
            .probe()?
            .args(["echo", "--port", &ECHO_PORT.to_string()])
            .stdout(Stdio::null())
            .spawn()
            .context("bench probe echo")?;
        Ok(vec![iperf, ChildGuard(echo)])
    }
}

/// One client → server path of a setup: where each end runs and the
/// addresses the client aims at (a pod's, a ClusterIP, a NodePort).
#[derive(Debug, Clone)]
pub struct Path {
    pub route: Route,
    pub client: Place,
    /// Where the UDP sink is started for each stream.
    pub server: Place,
    pub iperf: SocketAddr,
    pub udp: SocketAddr,
    pub echo: SocketAddr,
}

/// One setup (a dataplane on its cluster) and the paths it is measured on.
pub struct Setup {
    pub label: &'static str,
    pub paths: Vec<Path>,
}

/// One fixed-rate or saturating stream.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Stream {
    /// The whole machine's busy CPU time during the run.
    pub busy_cpu_s: f64,
    pub elapsed_s: f64,
    /// What the receiver got.
    pub gbit: f64,
    /// UDP only: datagrams sent that the receiver never got, percent.
    pub lost_percent: Option<f64>,
}

impl Stream {
    /// CPU milliseconds per Gbit received, less `idle` CPU-s per second.
    fn cpu_ms_per_gbit(&self, idle: f64) -> f64 {
        (self.busy_cpu_s - idle * self.elapsed_s).max(0.0) / self.gbit * 1e3
    }
}

/// The machine's busy CPU time over `f`, and its wall time.
fn with_cpu<T>(f: impl FnOnce() -> Result<T>) -> Result<(T, f64, f64)> {
    let ticks = machine_busy_ticks()?;
    let start = Instant::now();
    let out = f()?;
    let elapsed = start.elapsed().as_secs_f64();
    let busy = machine_busy_ticks()?.saturating_sub(ticks) as f64 / clock_ticks_per_second();
    Ok((out, busy, elapsed))
}

/// One round of transactions.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct TransactionRound {
    pub per_second: f64,
    pub p50_us: f64,
    pub p99_us: f64,
}

impl TransactionRound {
    fn of(t: &Transactions) -> Result<TransactionRound> {
        let mut sorted = t.nanos.clone();
        sorted.sort_unstable();
        let us = |p| percentile(&sorted, p).map(|n| n as f64 / 1e3);
        ensure!(t.total_nanos > 0, "an empty run of transactions");
        Ok(TransactionRound {
            per_second: sorted.len() as f64 / (t.total_nanos as f64 / 1e9),
            p50_us: us(50.0).context("no transactions")?,
            p99_us: us(99.0).context("no transactions")?,
        })
    }
}

impl Path {
    /// An iperf3 TCP run from the client (`extra`: its rate options), with
    /// the machine's busy CPU over it.
    fn tcp_stream(&self, seconds: u32, extra: &[&str]) -> Result<Stream> {
        crate::interrupt::check()?;
        // The server may still be starting (first round) or finishing the
        // last test's report.
        for _ in 0..50 {
            let (out, busy_cpu_s, elapsed_s) = with_cpu(|| {
                self.client
                    .command("iperf3")
                    .args(["-c", &self.iperf.ip().to_string()])
                    .args(["-p", &self.iperf.port().to_string()])
                    .args(["-t", &seconds.to_string(), "-J"])
                    .args(extra)
                    .output()
                    .context("iperf3 (apt-get install iperf3)")
            })?;
            let report: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
            let bytes = report
                .pointer("/end/sum_received/bytes")
                .and_then(Value::as_f64);
            if let Some(bytes) = bytes.filter(|b| *b > 0.0) {
                return Ok(Stream {
                    busy_cpu_s,
                    elapsed_s,
                    gbit: bytes * 8.0 / 1e9,
                    lost_percent: None,
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("iperf3 to {} never completed", self.iperf)
    }

    /// `bench probe udp-send` at `mbit` to a `udp-sink` started on the
    /// server for it, with the machine's busy CPU over both.
    fn udp_stream(&self, seconds: u32, mbit: f64) -> Result<Stream> {
        crate::interrupt::check()?;
        let mut sink = self
            .server
            .probe()?
            .args(["udp-sink", "--port", &UDP_PORT.to_string()])
            .stdout(Stdio::piped())
            .spawn()
            .context("bench probe udp-sink")?;
        let mut lines = BufReader::new(sink.stdout.take().context("the sink's stdout")?).lines();
        let sink = ChildGuard(sink);
        ensure!(
            lines.next().transpose()?.as_deref() == Some("ready"),
            "bench probe udp-sink did not start"
        );
        let ((sent, got), busy_cpu_s, elapsed_s) = with_cpu(|| {
            let out = self
                .client
                .probe()?
                .args(["udp-send", "--to", &self.udp.to_string()])
                .args(["--mbit", &mbit.to_string()])
                .args(["--length", &UDP_LENGTH.to_string()])
                .args(["--seconds", &seconds.to_string()])
                .output()
                .context("bench probe udp-send")?;
            ensure!(
                out.status.success(),
                "bench probe udp-send to {}: {}",
                self.udp,
                String::from_utf8_lossy(&out.stderr)
            );
            let sent: Datagrams = serde_json::from_slice(&out.stdout)?;
            let got: Datagrams = serde_json::from_str(
                &lines
                    .next()
                    .transpose()?
                    .with_context(|| format!("the sink on {} counted nothing", self.udp))?,
            )?;
            Ok((sent, got))
        })?;
        drop(sink);
        ensure!(sent.datagrams > 0, "udp-send to {} sent nothing", self.udp);
        Ok(Stream {
            busy_cpu_s,
            elapsed_s,
            gbit: got.bytes as f64 * 8.0 / 1e9,
            lost_percent: Some(
                100.0 * sent.datagrams.saturating_sub(got.datagrams) as f64 / sent.datagrams as f64,
            ),
        })
    }

    /// `bench probe crr` or `rr` from the client.
    fn transactions(&self, mode: &str, count: usize) -> Result<TransactionRound> {
        crate::interrupt::check()?;
        let out = self
            .client
            .probe()?
            .args([mode, "--to", &self.echo.to_string()])
            .args(["--count", &count.to_string()])
            .output()
            .context("bench probe")?;
        ensure!(
            out.status.success(),
            "bench probe {mode} to {}: {}",
            self.echo,
            String::from_utf8_lossy(&out.stderr)
        );
        TransactionRound::of(&serde_json::from_slice(&out.stdout).context("bench probe's JSON")?)
    }
}

/// Every round's figures of one setup on one path.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub route: Route,
    pub setup: &'static str,
    pub tcp: Vec<Stream>,
    pub udp: Vec<Stream>,
    pub saturated: Vec<Stream>,
    pub crr: Vec<TransactionRound>,
    pub rr: Vec<TransactionRound>,
}

impl Row {
    fn cpu(streams: &[Stream], idle: f64) -> f64 {
        median_of(
            &streams
                .iter()
                .map(|s| s.cpu_ms_per_gbit(idle))
                .collect::<Vec<_>>(),
        )
    }

    fn udp_lost(&self) -> f64 {
        median_of(
            &self
                .udp
                .iter()
                .filter_map(|s| s.lost_percent)
                .collect::<Vec<_>>(),
        )
    }

    fn saturation(&self) -> (f64, f64, f64) {
        let rates: Vec<f64> = self
            .saturated
            .iter()
            .map(|s| s.gbit / s.elapsed_s)
            .collect();
        let min = rates.iter().copied().fold(f64::INFINITY, f64::min);
        let max = rates.iter().copied().fold(0.0, f64::max);
        (median_of(&rates), min, max)
    }
}

fn median_by(rounds: &[TransactionRound], f: impl Fn(&TransactionRound) -> f64) -> f64 {
    median_of(&rounds.iter().map(f).collect::<Vec<_>>())
}

#[derive(Debug, Serialize)]
pub struct DatapathReport {
    pub options: Options,
    /// The setup the others are compared with.
    pub baseline: &'static str,
    /// Busy CPU-s per second of the idle machine, each round.
    pub idle_cpu: Vec<f64>,
    pub rows: Vec<Row>,
}

impl DatapathReport {
    /// The median idle rate the streams' CPU is corrected by.
    pub fn idle(&self) -> f64 {
        median_of(&self.idle_cpu)
    }

    pub fn table(&self) -> Table {
        let idle = self.idle();
        let o = &self.options;
        let mut t = Table::new([
            "path".to_string(),
            "setup".into(),
            format!("TCP {} Gbit/s: CPU ms/Gbit", o.tcp_gbit),
            "vs base".into(),
            format!("UDP {} Mbit/s: CPU ms/Gbit", o.udp_mbit),
            "vs base".into(),
            "lost %".into(),
            "CRR conn/s".into(),
            "vs base".into(),
            "CRR p50/p99 µs".into(),
            "RR p50/p99 µs".into(),
            "RR/s vs base".into(),
            "saturated Gbit/s (min-max)".into(),
            "vs base".into(),
        ]);
        for row in &self.rows {
            // Without the baseline among the setups (`--only`), no ratios.
            let base = self
                .rows
                .iter()
                .find(|r| r.route == row.route && r.setup == self.baseline);
            let ratio =
                |f: &dyn Fn(&Row) -> f64| base.map_or("-".into(), |b| fmt_ratio(f(row) / f(b)));
            let (sat, min, max) = row.saturation();
            let crr = |r: &Row| median_by(&r.crr, |x| x.per_second);
            let rr = |r: &Row| median_by(&r.rr, |x| x.per_second);
            let tcp = |r: &Row| Row::cpu(&r.tcp, idle);
            let udp = |r: &Row| Row::cpu(&r.udp, idle);
            t.row([
                row.route.label().to_string(),
                row.setup.to_string(),
                format!("{:.1}", tcp(row)),
                ratio(&tcp),
                format!("{:.1}", udp(row)),
                ratio(&udp),
                format!("{:.2}", row.udp_lost()),
                format!("{:.0}", crr(row)),
                ratio(&crr),
                format!(
                    "{:.0}/{:.0}",
                    median_by(&row.crr, |x| x.p50_us),
                    median_by(&row.crr, |x| x.p99_us)
                ),
                format!(
                    "{:.0}/{:.0}",
                    median_by(&row.rr, |x| x.p50_us),
                    median_by(&row.rr, |x| x.p99_us)
                ),
                ratio(&rr),
                format!("{sat:.2} ({min:.2}-{max:.2})"),
                ratio(&|r: &Row| r.saturation().0),
            ]);
        }
        t
    }
}

/// The machine's busy CPU-s per second while the benchmark sleeps.
fn idle_cpu(seconds: u32) -> Result<f64> {
    let ((), busy, elapsed) = with_cpu(|| {
        let until = Instant::now() + Duration::from_secs(seconds.into());
        while Instant::now() < until {
            crate::interrupt::check()?;
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    })?;
    Ok(busy / elapsed)
}

/// Runs the benchmark: on network namespaces, or with `--kubernetes` on
/// local clusters; Margay's binaries taken from `bin_dir`.
///
/// # Errors
/// A setup does not come up, or a measurement fails.
pub fn run(options: Options, bin_dir: &std::path::Path) -> Result<DatapathReport> {
    if options.kubernetes {
        kube::run(options)
    } else {
        pods::run(options, bin_dir)
    }
}

/// `rounds` interleaved rounds over `setups` (those `--only` names), every
/// path of each.
fn measure(options: Options, baseline: &'static str, setups: &[Setup]) -> Result<DatapathReport> {
    let setups: Vec<&Setup> = setups
        .iter()
        .filter(|s| options.only.is_empty() || options.only.iter().any(|o| s.label.contains(o)))
        .collect();
    ensure!(!setups.is_empty(), "--only names none of the setups");
    let mut rows: Vec<Row> = Vec::new();
    for setup in &setups {
        for path in &setup.paths {
            rows.push(Row {
                route: path.route,
                setup: setup.label,
                tcp: Vec::new(),
                udp: Vec::new(),
                saturated: Vec::new(),
                crr: Vec::new(),
                rr: Vec::new(),
            });
        }
    }
    // Grouped by path, each path's setups together.
    rows.sort_by_key(|r| r.route as u8);
    let tcp_rate = format!("{}G", options.tcp_gbit);
    let mut idle = Vec::new();
    for round in 0..options.rounds {
        idle.push(idle_cpu(options.seconds)?);
        // Each round starts with another setup, so none is always the one
        // that runs right after the idle pause.
        let order = (0..setups.len()).map(|i| setups[(i + round) % setups.len()]);
        let order: Vec<&Setup> = order.collect();
        for route in [
            Route::SameNode,
            Route::AcrossNodes,
            Route::ClusterIp,
            Route::NodePort,
        ] {
            for setup in &order {
                let Some(path) = setup.paths.iter().find(|p| p.route == route) else {
                    continue;
                };
                let row = rows
                    .iter_mut()
                    .find(|r| r.route == route && r.setup == setup.label)
                    .context("a row per setup and path")?;
                let context = || format!("{}, {}", setup.label, route.label());
                row.tcp.push(
                    path.tcp_stream(options.seconds, &["--fq-rate", &tcp_rate])
                        .with_context(context)?,
                );
                row.udp.push(
                    path.udp_stream(options.seconds, options.udp_mbit)
                        .with_context(context)?,
                );
                row.crr.push(
                    path.transactions("crr", options.crr)
                        .with_context(context)?,
                );
                row.rr
                    .push(path.transactions("rr", options.rr).with_context(context)?);
                row.saturated.push(
                    path.tcp_stream(options.seconds, &[])
                        .with_context(context)?,
                );
            }
        }
    }
    Ok(DatapathReport {
        options,
        baseline,
        idle_cpu: idle,
        rows,
    })
}
