//! What a packet costs (`bench datapath`): Margay in bpf mode against
//! Margay in linux mode and Debian's ptp + host-local, each on a two-node
//! cluster of its own (node namespaces on one LAN, the plugins run inside
//! them as a kubelet would run them), measured in interleaved rounds,
//! medians reported:
//!
//! - CPU per Gbit: a TCP stream and a UDP stream at a fixed rate below
//!   saturation (iperf3 `-b`); the whole machine's busy CPU time over the
//!   run (/proc/stat: the softirq work of forwarding is no process's),
//!   less what the machine spends in as long when nothing runs (measured
//!   every round), per Gbit received;
//! - transactions, netperf's TCP_CRR and TCP_RR in shape: connect, one
//!   16-byte request and its answer, close; and request/answer on one open
//!   connection (`bench probe crr`/`rr` against `bench probe echo`):
//!   per second, p50 and p99;
//! - throughput at saturation (iperf3 unpaced), with its spread.
//!
//! Paths: pod → pod on one node, and pod → pod on another node, routed on
//! the LAN.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use margay_tests::cluster::{Lan, in_node_wrapper};
use margay_tests::netns::{ChildGuard, NetNs};
use serde::Serialize;
use serde_json::{Value, json};

use crate::network::{Kind, Network, Pod};
use crate::probe::Transactions;
use crate::procfs::{clock_ticks_per_second, machine_busy_ticks};
use crate::report::{Table, fmt_ratio};
use crate::stats::{median_of, percentile};

const IPERF_PORT: u16 = 5201;
const ECHO_PORT: u16 = 9100;
/// UDP datagrams: a full frame's payload at the pods' MTU of 1500.
const UDP_LENGTH: &str = "1400";

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
    /// Directory holding margay, margay-ipam and margayctl [default: this
    /// executable's].
    #[arg(long)]
    #[serde(skip)]
    pub bin_dir: Option<PathBuf>,
    #[arg(long, default_value = "/usr/lib/cni")]
    #[serde(skip)]
    pub peer_dir: PathBuf,
}

/// A path through the dataplane.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Route {
    /// Pod to pod, both on one node.
    SameNode,
    /// Pod to pod on another node, routed on the LAN.
    AcrossNodes,
}

impl Route {
    const ALL: [Route; 2] = [Route::SameNode, Route::AcrossNodes];

    fn label(self) -> &'static str {
        match self {
            Route::SameNode => "pod→pod, same node",
            Route::AcrossNodes => "pod→pod, across nodes",
        }
    }
}

/// One fixed-rate or saturating stream.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Stream {
    /// The whole machine's busy CPU time during the run.
    pub busy_cpu_s: f64,
    pub elapsed_s: f64,
    /// What the receiver got.
    pub gbit: f64,
    /// UDP only: datagrams the receiver never got, percent.
    pub lost_percent: Option<f64>,
}

impl Stream {
    /// CPU milliseconds per Gbit received, less `idle` CPU-s per second.
    fn cpu_ms_per_gbit(&self, idle: f64) -> f64 {
        (self.busy_cpu_s - idle * self.elapsed_s).max(0.0) / self.gbit * 1e3
    }
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
    fn tcp_cpu(&self, idle: f64) -> f64 {
        median_of(
            &self
                .tcp
                .iter()
                .map(|s| s.cpu_ms_per_gbit(idle))
                .collect::<Vec<_>>(),
        )
    }

    fn udp_cpu(&self, idle: f64) -> f64 {
        median_of(
            &self
                .udp
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
            "vs ptp".into(),
            format!("UDP {} Mbit/s: CPU ms/Gbit", o.udp_mbit),
            "vs ptp".into(),
            "lost %".into(),
            "CRR conn/s".into(),
            "vs ptp".into(),
            "CRR p50/p99 µs".into(),
            "RR p50/p99 µs".into(),
            "RR/s vs ptp".into(),
            "saturated Gbit/s (min-max)".into(),
            "vs ptp".into(),
        ]);
        for row in &self.rows {
            let Some(base) = self
                .rows
                .iter()
                .find(|r| r.route == row.route && r.setup == Kind::PtpHostLocal.label())
            else {
                continue;
            };
            let (sat, min, max) = row.saturation();
            let crr = |r: &Row| median_by(&r.crr, |x| x.per_second);
            let rr = |r: &Row| median_by(&r.rr, |x| x.per_second);
            t.row([
                row.route.label().to_string(),
                row.setup.to_string(),
                format!("{:.1}", row.tcp_cpu(idle)),
                fmt_ratio(row.tcp_cpu(idle) / base.tcp_cpu(idle)),
                format!("{:.1}", row.udp_cpu(idle)),
                fmt_ratio(row.udp_cpu(idle) / base.udp_cpu(idle)),
                format!("{:.2}", row.udp_lost()),
                format!("{:.0}", crr(row)),
                fmt_ratio(crr(row) / crr(base)),
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
                fmt_ratio(rr(row) / rr(base)),
                format!("{sat:.2} ({min:.2}-{max:.2})"),
                fmt_ratio(sat / base.saturation().0),
            ]);
        }
        t
    }
}

/// One setup's two-node cluster: nodes on a LAN of their own, a network
/// on each, and routes between them.
struct Site {
    kind: Kind,
    nets: [Network; 2],
    addrs: [Ipv4Addr; 2],
    pools: [String; 2],
    margayctl: PathBuf,
    nodes: [NetNs; 2],
    dir: tempfile::TempDir,
    _lan: Lan,
}

impl Site {
    /// Nodes at 10.246.`index`.1 and .2, pods from 10.245.`2*index`.0/24
    /// and the next /24.
    fn new(kind: Kind, index: u8, bin_dir: &Path, peer_dir: &Path) -> Result<Site> {
        let lan = Lan::new();
        let addrs = [1, 2].map(|host| Ipv4Addr::new(10, 246, index, host));
        let pools = [0, 1].map(|i| format!("10.245.{}.0/24", 2 * index + i));
        let nodes = addrs.map(|addr| lan.node(addr));
        let nets = [
            Network::on_node(kind, &pools[0], bin_dir, peer_dir, &nodes[0])?,
            Network::on_node(kind, &pools[1], bin_dir, peer_dir, &nodes[1])?,
        ];
        Ok(Site {
            kind,
            nets,
            addrs,
            pools,
            margayctl: bin_dir.join("margayctl"),
            nodes,
            dir: tempfile::tempdir()?,
            _lan: lan,
        })
    }

    /// Each node told of the other's pods: by routes, or (Margay in bpf
    /// mode, whose programs the first pod loaded) as margay-agent would,
    /// with `margayctl node peers` and `node attach` of eth0.
    fn link(&self) -> Result<()> {
        let dir = self.dir.path();
        for (me, other) in [(0, 1), (1, 0)] {
            let node = &self.nodes[me];
            let (addr, pool) = (self.addrs[other].to_string(), &self.pools[other]);
            let Some(root) = self.nets[me].bpf_root() else {
                node.run_ok(&["ip", "route", "add", pool, "via", &addr, "dev", "eth0"]);
                continue;
            };
            let peers = json!({"peers": [{"name": format!("node{other}"), "address": addr,
                "pod_cidrs": [pool], "encap": false}]});
            let file = dir.join(format!("peers{me}.json"));
            std::fs::write(&file, peers.to_string())?;
            let ctl = format!("margayctl{me}");
            in_node_wrapper(dir, node, &ctl, &self.margayctl)?;
            let file = file.to_str().context("a UTF-8 path")?;
            for args in [
                ["node", "peers", "-f", file, "", ""],
                [
                    "node",
                    "attach",
                    "--iface",
                    "eth0",
                    "--external-mode",
                    "tunnel",
                ],
            ] {
                let args: Vec<&str> = args.into_iter().filter(|a| !a.is_empty()).collect();
                let out = Command::new(dir.join(&ctl))
                    .arg("--bpf-root")
                    .arg(root)
                    .args(&args)
                    .output()
                    .context("margayctl")?;
                ensure!(
                    out.status.success(),
                    "margayctl {args:?}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        Ok(())
    }
}

/// A site's pods: a client and a server on the first node, a server on
/// the second, the servers running iperf3 and `bench probe echo`.
struct Pods<'s> {
    site: &'s Site,
    client: Pod<'s>,
    servers: [Pod<'s>; 2],
    _running: Vec<ChildGuard>,
}

impl<'s> Pods<'s> {
    fn new(site: &'s Site) -> Result<Pods<'s>> {
        let mut client = Pod::prepare(&site.nets[0], "dpc");
        let mut servers = [
            Pod::prepare(&site.nets[0], "dpl"),
            Pod::prepare(&site.nets[1], "dpr"),
        ];
        for pod in std::iter::once(&mut client).chain(servers.iter_mut()) {
            pod.ip = Some(pod.net.add(&pod.ns, &pod.cid)?);
        }
        site.link()?;
        // The client makes thousands of short connections a round: ports
        // in TIME_WAIT may be taken again.
        client
            .ns
            .run_ok(&["sysctl", "-qw", "net.ipv4.tcp_tw_reuse=1"]);
        let own = std::env::current_exe().context("this executable")?;
        let mut running = Vec::new();
        for server in &servers {
            for args in [
                vec![
                    "iperf3".to_string(),
                    "-s".into(),
                    "-p".into(),
                    IPERF_PORT.to_string(),
                ],
                vec![
                    own.to_string_lossy().into_owned(),
                    "probe".into(),
                    "echo".into(),
                    "--port".into(),
                    ECHO_PORT.to_string(),
                ],
            ] {
                running.push(ChildGuard(
                    Command::new("ip")
                        .args(["netns", "exec", server.ns.name()])
                        .args(&args)
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .spawn()
                        .with_context(|| format!("starting {args:?}"))?,
                ));
            }
        }
        Ok(Pods {
            site,
            client,
            servers,
            _running: running,
        })
    }

    fn server(&self, route: Route) -> Result<Ipv4Addr> {
        let pod = match route {
            Route::SameNode => &self.servers[0],
            Route::AcrossNodes => &self.servers[1],
        };
        pod.ip.context("the server pod has an address")
    }

    fn label(&self) -> &'static str {
        self.site.kind.label()
    }

    /// An iperf3 run from the client (`extra`: its rate and protocol
    /// options), with the machine's busy CPU over it.
    fn stream(&self, route: Route, seconds: u32, extra: &[&str]) -> Result<Stream> {
        crate::interrupt::check()?;
        let to = self.server(route)?.to_string();
        // The server may still be starting (first round) or finishing the
        // last test's report.
        for _ in 0..50 {
            let ticks = machine_busy_ticks()?;
            let start = Instant::now();
            let out = Command::new("ip")
                .args(["netns", "exec", self.client.ns.name(), "iperf3", "-c", &to])
                .args([
                    "-p",
                    &IPERF_PORT.to_string(),
                    "-t",
                    &seconds.to_string(),
                    "-J",
                ])
                .args(extra)
                .output()
                .context("iperf3 (apt-get install iperf3)")?;
            let elapsed_s = start.elapsed().as_secs_f64();
            let busy_cpu_s =
                machine_busy_ticks()?.saturating_sub(ticks) as f64 / clock_ticks_per_second();
            let report: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
            let udp = extra.contains(&"-u");
            let end = if udp { "/end/sum" } else { "/end/sum_received" };
            let bytes = report
                .pointer(&format!("{end}/bytes"))
                .and_then(Value::as_f64);
            if let Some(bytes) = bytes.filter(|b| *b > 0.0) {
                // UDP's summary counts what was sent; the receiver got
                // that less what was lost.
                let lost_percent = report
                    .pointer("/end/sum/lost_percent")
                    .and_then(Value::as_f64)
                    .filter(|_| udp);
                let received = bytes * (1.0 - lost_percent.unwrap_or(0.0) / 100.0);
                return Ok(Stream {
                    busy_cpu_s,
                    elapsed_s,
                    gbit: received * 8.0 / 1e9,
                    lost_percent,
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("{}: iperf3 to {to} never completed", self.label())
    }

    /// `bench probe crr` or `rr` from the client.
    fn transactions(&self, route: Route, mode: &str, count: usize) -> Result<TransactionRound> {
        crate::interrupt::check()?;
        let to = SocketAddr::from((self.server(route)?, ECHO_PORT)).to_string();
        let own = std::env::current_exe().context("this executable")?;
        let out = Command::new("ip")
            .args(["netns", "exec", self.client.ns.name()])
            .arg(own)
            .args(["probe", mode, "--to", &to, "--count", &count.to_string()])
            .output()
            .context("bench probe")?;
        ensure!(
            out.status.success(),
            "{}: bench probe {mode} to {to}: {}",
            self.label(),
            String::from_utf8_lossy(&out.stderr)
        );
        TransactionRound::of(&serde_json::from_slice(&out.stdout).context("bench probe's JSON")?)
    }
}

/// The machine's busy CPU-s per second while the benchmark sleeps.
fn idle_cpu(seconds: u32) -> Result<f64> {
    let ticks = machine_busy_ticks()?;
    let start = Instant::now();
    let until = start + Duration::from_secs(seconds.into());
    while Instant::now() < until {
        crate::interrupt::check()?;
        std::thread::sleep(Duration::from_millis(100));
    }
    let busy = machine_busy_ticks()?.saturating_sub(ticks) as f64 / clock_ticks_per_second();
    Ok(busy / start.elapsed().as_secs_f64())
}

/// Runs the benchmark, Margay's binaries taken from `bin_dir`.
pub fn run(options: Options, bin_dir: &Path) -> Result<DatapathReport> {
    let sites = Kind::ALL
        .iter()
        .zip(1u8..)
        .map(|(kind, i)| Site::new(*kind, i, bin_dir, &options.peer_dir))
        .collect::<Result<Vec<_>>>()?;
    let pods = sites.iter().map(Pods::new).collect::<Result<Vec<_>>>()?;
    let mut rows: Vec<Row> = Route::ALL
        .iter()
        .flat_map(|route| {
            pods.iter().map(|p| Row {
                route: *route,
                setup: p.label(),
                tcp: Vec::new(),
                udp: Vec::new(),
                saturated: Vec::new(),
                crr: Vec::new(),
                rr: Vec::new(),
            })
        })
        .collect();
    let tcp_rate = format!("{}G", options.tcp_gbit);
    let udp_rate = format!("{}M", options.udp_mbit);
    let mut idle = Vec::new();
    for round in 0..options.rounds {
        idle.push(idle_cpu(options.seconds)?);
        // Each round starts with another setup, so none is always the one
        // that runs right after the idle pause.
        let order: Vec<usize> = (0..pods.len()).map(|i| (i + round) % pods.len()).collect();
        for route in Route::ALL {
            for &i in &order {
                let p = &pods[i];
                let row = rows
                    .iter_mut()
                    .find(|r| r.route == route && r.setup == p.label())
                    .context("a row per setup and path")?;
                // Paced by the kernel (the socket's pacing rate, which TCP
                // applies itself) rather than by iperf3's `-b`.
                row.tcp
                    .push(p.stream(route, options.seconds, &["--fq-rate", &tcp_rate])?);
                row.udp.push(p.stream(
                    route,
                    options.seconds,
                    &["-u", "-b", &udp_rate, "-l", UDP_LENGTH],
                )?);
                row.crr.push(p.transactions(route, "crr", options.crr)?);
                row.rr.push(p.transactions(route, "rr", options.rr)?);
                row.saturated.push(p.stream(route, options.seconds, &[])?);
            }
        }
    }
    Ok(DatapathReport {
        options,
        idle_cpu: idle,
        rows,
    })
}
