//! `bench`: measures Margay against its peers (Debian's reference CNI
//! plugins) in the same run and prints the comparison.
#![allow(clippy::print_stdout)]

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use margay_bench::ipam::{self, IpamBench};
use margay_bench::probe;
use margay_bench::report::{RunInfo, Table};

#[derive(Parser)]
#[command(
    name = "bench",
    version,
    about = "Measure Margay against the reference CNI plugins, in one run"
)]
struct Cli {
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Per-call latency of IPAM ADD and DEL: margay-ipam vs host-local.
    Ipam(IpamArgs),
    /// Pod ADD/DEL latency (sequential, interleaved) and pods/s with
    /// concurrent workers: margay bpf vs margay linux vs ptp+host-local.
    /// Needs root.
    Pods {
        /// Pods per network in the sequential phase.
        #[arg(long, default_value_t = 200)]
        pods: usize,
        /// Concurrent workers in the throughput phase.
        #[arg(long, default_value_t = 8)]
        workers: usize,
        /// Pods per network in the throughput phase.
        #[arg(long, default_value_t = 200)]
        concurrent_pods: usize,
        /// Directory holding margay and margay-ipam [default: this executable's].
        #[arg(long)]
        bin_dir: Option<PathBuf>,
        #[arg(long, default_value = "/usr/lib/cni")]
        peer_dir: PathBuf,
    },
    /// ns/packet of from_pod (BPF_PROG_TEST_RUN): conntrack miss with a
    /// 100-rule policy, and conntrack hit. Needs root.
    Packets {
        /// Repetitions per TestRun call.
        #[arg(long, default_value_t = 1_000_000)]
        repeat: u32,
        /// Rules in the egress policy.
        #[arg(long, default_value_t = 100)]
        rules: usize,
    },
    /// Services: pod -> ClusterIP connect+request latency with 1, 1,000 and
    /// 10,000 services, and time to program 10,000: Margay's eBPF load
    /// balancing vs kube-proxy-style iptables rules. Needs root.
    Services {
        /// Interleaved rounds.
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// Connections per round and side.
        #[arg(long, default_value_t = 200)]
        per_round: usize,
        /// Directory holding margay and margay-ipam [default: this executable's].
        #[arg(long)]
        bin_dir: Option<PathBuf>,
        #[arg(long, default_value = "/usr/lib/cni")]
        peer_dir: PathBuf,
    },
    /// NodePort throughput (iperf3), external client -> node A -> backend
    /// on node B: tunnel vs DSR mode, interleaved rounds. Needs root.
    Nodeport {
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// Seconds per iperf3 run.
        #[arg(long, default_value_t = 3)]
        seconds: u32,
    },
    /// What a packet costs, pod to pod on one node and across nodes:
    /// machine CPU per Gbit of fixed-rate TCP and UDP streams,
    /// connect/request/close and request/response rates and latencies,
    /// saturated throughput; margay bpf vs margay linux vs ptp+host-local,
    /// each on a two-node cluster of its own, interleaved rounds. With
    /// --kubernetes: on two-node local Kubernetes clusters, those and pod
    /// → ClusterIP and external → NodePort with remote backends, Margay
    /// against ptp under kube-proxy. Needs root, iperf3 and the release
    /// binaries beside this one (and for --kubernetes the built cluster
    /// components).
    Datapath(margay_bench::datapath::Options),
    /// Pod start latency through kubelet (created -> Running with an
    /// address) on three local clusters side by side: margay bpf vs margay
    /// linux vs ptp+host-local; then `scripts/cluster up` for 1 and 3
    /// nodes. Needs root and the built cluster components.
    K8sPods {
        /// Interleaved rounds (each side once per round).
        #[arg(long, default_value_t = 10)]
        rounds: usize,
        /// Pods created at once per round and side.
        #[arg(long, default_value_t = 5)]
        per_round: usize,
        /// Timed `up`s of each size, after the pods.
        #[arg(long, default_value_t = 3)]
        up_rounds: usize,
    },
    /// Cluster IPAM (margay-agent) on a local control plane: pod ADD/DEL
    /// with the Kubernetes datastore vs the local one (interleaved), one
    /// API create+update for reference (Calico's per-ADD cost), ADD with a
    /// block claim, concurrent claimants, the agent at rest. Needs root and
    /// the built cluster components.
    ClusterIpam {
        /// Pods per datastore (ADD then DEL each).
        #[arg(long, default_value_t = 200)]
        pods: usize,
        /// ADDs that each claim a block.
        #[arg(long, default_value_t = 50)]
        claims: usize,
        /// Agents claiming at once.
        #[arg(long, default_value_t = 8)]
        claimants: usize,
        /// Directory holding margay and margay-ipam [default: this executable's].
        #[arg(long)]
        bin_dir: Option<PathBuf>,
        #[arg(long, default_value = "/usr/lib/cni")]
        peer_dir: PathBuf,
    },
    /// margay-agent's memory and CPU on a three-node local cluster: at rest,
    /// while a thousand pods are created (some running on the nodes, the
    /// rest bound to Node objects without kubelets), and at rest with them.
    /// Needs root and the built cluster components.
    AgentLoad {
        /// Pods in the cluster.
        #[arg(long, default_value_t = 1000)]
        pods: usize,
        /// Of those, running on each of the three real nodes (at most 100).
        #[arg(long, default_value_t = 100)]
        per_node: usize,
    },
    /// Services from the API: margay-agent vs upstream kube-proxy in
    /// iptables and nftables mode, each on a one-node local cluster, in
    /// interleaved rounds: API change -> first connection through the
    /// ClusterIP, pod -> ClusterIP and node -> ClusterIP connect+request,
    /// with a hundred Services and with many; each proxy's CPU and memory
    /// taking the many in. Needs root and the built cluster components.
    KubeServices {
        /// Services in the second phase (five endpoints each).
        #[arg(long, default_value_t = 10_000)]
        services: usize,
        #[arg(long, default_value_t = 20)]
        rounds: usize,
        /// Connections per client per round.
        #[arg(long, default_value_t = 50)]
        per_round: usize,
    },
    /// NetworkPolicy from the API on a one-node local cluster: change to
    /// enforced (policy created/deleted, pod relabelled) and connection
    /// latency with `--policies` policies over `--pods` pods. Needs root
    /// and the cluster's components (scripts/build-k8s).
    KubePolicy {
        #[arg(long, default_value_t = 1_000)]
        pods: usize,
        #[arg(long, default_value_t = 250)]
        policies: usize,
        #[arg(long, default_value_t = 20)]
        rounds: usize,
        /// Connections to each server per round.
        #[arg(long, default_value_t = 50)]
        per_round: usize,
    },
    /// The measuring end of kube-services, run by it inside a pod or node.
    #[command(hide = true, subcommand)]
    Probe(ProbeCmd),
    /// Pod-to-pod TCP throughput with iperf3: margay bpf vs margay linux vs
    /// ptp+host-local, interleaved rounds, medians. Needs root and iperf3.
    Throughput {
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// Seconds per iperf3 run.
        #[arg(long, default_value_t = 3)]
        seconds: u32,
        /// Directory holding margay and margay-ipam [default: this executable's].
        #[arg(long)]
        bin_dir: Option<PathBuf>,
        #[arg(long, default_value = "/usr/lib/cni")]
        peer_dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum ProbeCmd {
    /// Answer connections on a port until killed.
    Serve {
        #[arg(long)]
        port: u16,
    },
    /// Connect, request, close, `count` times; microseconds each, a line each.
    Latencies {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long)]
        count: usize,
    },
    /// Answer fixed-size requests, one connection at a time, until killed.
    Echo {
        #[arg(long)]
        port: u16,
    },
    /// Connect to an echo server, one request, close, `count` times; JSON
    /// of each one's and the whole run's nanoseconds.
    Crr {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long)]
        count: usize,
    },
    /// `count` requests on one connection to an echo server; JSON as crr.
    Rr {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long)]
        count: usize,
    },
    /// Send datagrams at a fixed rate, paced in 1 ms slices; JSON of what
    /// was sent.
    UdpSend {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long)]
        mbit: f64,
        /// Payload bytes per datagram.
        #[arg(long)]
        length: usize,
        #[arg(long)]
        seconds: f64,
    },
    /// Print "ready", count datagrams on a port from the first until none
    /// came for --idle-ms; JSON of what arrived.
    UdpSink {
        #[arg(long)]
        port: u16,
        #[arg(long, default_value_t = 300)]
        idle_ms: u64,
        #[arg(long, default_value_t = 10_000)]
        within_ms: u64,
    },
    /// Print "ready", try until the address opens or closes, print when
    /// (nanoseconds since the epoch).
    Until {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long, value_enum)]
        awaited: probe::Awaited,
        #[arg(long)]
        within_ms: u64,
        /// A connect attempt that neither opens nor is refused within this
        /// counts as not open (a dropped SYN is never answered).
        #[arg(long, default_value_t = 100)]
        attempt_ms: u64,
    },
}

#[derive(Args)]
struct IpamArgs {
    /// Containers per plugin (each gets one ADD and one DEL).
    #[arg(long, default_value_t = ipam::DEFAULT_CALLS)]
    calls: usize,
    /// Directory holding margay-ipam [default: the directory of this executable].
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Directory holding the reference plugins (host-local).
    #[arg(long, default_value = "/usr/lib/cni")]
    peer_dir: PathBuf,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = margay_bench::interrupt::install() {
        eprintln!("bench: taking SIGINT/SIGTERM over: {e}");
        return ExitCode::FAILURE;
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let info = RunInfo::current();
    match cli.cmd {
        Cmd::Ipam(args) => {
            let report = ipam::run(&IpamBench {
                calls: args.calls,
                warmup: ipam::WARMUP,
                bin_dir: bin_dir_or_own(args.bin_dir)?,
                peer_dir: args.peer_dir,
            })?;
            print_report(cli.json, &report, report.header(), report.table())
        }
        Cmd::Pods {
            pods,
            workers,
            concurrent_pods,
            bin_dir,
            peer_dir,
        } => {
            let report = margay_bench::pods::run(
                bin_dir_or_own(bin_dir)?,
                peer_dir,
                pods,
                workers,
                concurrent_pods,
            )?;
            let what = format!(
                "{pods} pods per network sequentially, {concurrent_pods} with {workers} workers; \
                 ratios are margay/peer (lower latency, higher pods/s is better)"
            );
            print_report(cli.json, &report, info.header(&what), report.table())
        }
        Cmd::Packets { repeat, rules } => {
            let report = margay_bench::packets::run(repeat, rules)?;
            let what = format!(
                "repeat {repeat}, {rules}-rule egress policy, programs loaded in {:.0} ms",
                report.load_ms
            );
            print_report(cli.json, &report, info.header(&what), report.table())
        }
        Cmd::Services {
            rounds,
            per_round,
            bin_dir,
            peer_dir,
        } => {
            let report =
                margay_bench::services::run(bin_dir_or_own(bin_dir)?, peer_dir, rounds, per_round)?;
            let what = format!(
                "{rounds} interleaved rounds of {per_round} connections per side; {}",
                report.iptables_version
            );
            print_report(cli.json, &report, info.header(&what), report.table())
        }
        Cmd::Nodeport { rounds, seconds } => {
            let report = margay_bench::nodeport::run(rounds, seconds)?;
            let what = format!("{rounds} interleaved rounds of {seconds} s");
            print_report(cli.json, &report, info.header(&what), report.table())
        }
        Cmd::Datapath(options) => {
            let bin_dir = bin_dir_or_own(options.bin_dir.clone())?;
            let (rounds, seconds) = (options.rounds, options.seconds);
            let report = margay_bench::datapath::run(options, &bin_dir)?;
            let what = format!(
                "{rounds} interleaved rounds; streams of {seconds} s; CPU less the idle \
                 machine's {:.3} CPU-s/s; ratios are setup/{}",
                report.idle(),
                report.baseline
            );
            print_report(cli.json, &report, info.header(&what), report.table())
        }
        Cmd::K8sPods {
            rounds,
            per_round,
            up_rounds,
        } => {
            let report = margay_bench::k8s_pods::run(rounds, per_round, up_rounds)?;
            let what = format!(
                "{rounds} interleaved rounds of {per_round} pods per side, {up_rounds} ups of each \
                 size; ratios are margay/peer (lower is better)"
            );
            print_report(cli.json, &report, info.header(&what), report.table())
        }
        Cmd::ClusterIpam {
            pods,
            claims,
            claimants,
            bin_dir,
            peer_dir,
        } => {
            let report = margay_bench::cluster_ipam::run(
                bin_dir_or_own(bin_dir)?,
                peer_dir,
                pods,
                claims,
                claimants,
            )?;
            let what = format!(
                "{pods} pods per datastore, interleaved; {claims} claiming ADDs; {claimants} claimants \
                 of 6 blocks each; ratios are to datastore local (lower is better)"
            );
            print_report(cli.json, &report, info.header(&what), report.table())
        }
        Cmd::AgentLoad { pods, per_node } => {
            let report = margay_bench::agent_load::run(pods, per_node)?;
            let what = format!(
                "{pods} pods, {per_node} running on each of 3 nodes, the rest bound to Node objects \
                 without kubelets; each agent watches its own node's pods"
            );
            print_report(cli.json, &report, info.header(&what), report.table())
        }
        Cmd::KubeServices {
            services,
            rounds,
            per_round,
        } => {
            let report = margay_bench::kube_services::run(services, rounds, per_round)?;
            let what = format!(
                "{rounds} interleaved rounds, {per_round} connections per client per round; ratios \
                 are margay/kube-proxy (lower is better)"
            );
            print_report(cli.json, &report, info.header(&what), report.table())
        }
        Cmd::KubePolicy {
            pods,
            policies,
            rounds,
            per_round,
        } => {
            let report = margay_bench::kube_policy::run(pods, policies, rounds, per_round)?;
            let what = format!(
                "{pods} pods, {policies} policies, {rounds} rounds of each change, {per_round} \
                 connections to each server per round; closed = start of the first dropped attempt"
            );
            print_report(cli.json, &report, info.header(&what), report.table())
        }
        Cmd::Probe(cmd) => run_probe(cmd),
        Cmd::Throughput {
            rounds,
            seconds,
            bin_dir,
            peer_dir,
        } => {
            let report =
                margay_bench::throughput::run(bin_dir_or_own(bin_dir)?, peer_dir, rounds, seconds)?;
            let what = format!("{rounds} interleaved rounds of {seconds} s");
            print_report(cli.json, &report, info.header(&what), report.table())
        }
    }
}

fn run_probe(cmd: ProbeCmd) -> Result<()> {
    match cmd {
        ProbeCmd::Serve { port } => probe::serve(port),
        ProbeCmd::Latencies { to, count } => {
            for micros in probe::latencies(to, count)? {
                println!("{micros}");
            }
            Ok(())
        }
        ProbeCmd::Echo { port } => probe::echo(port),
        ProbeCmd::Crr { to, count } => {
            println!("{}", serde_json::to_string(&probe::crr(to, count)?)?);
            Ok(())
        }
        ProbeCmd::Rr { to, count } => {
            println!("{}", serde_json::to_string(&probe::rr(to, count)?)?);
            Ok(())
        }
        ProbeCmd::UdpSend {
            to,
            mbit,
            length,
            seconds,
        } => {
            let sent = probe::udp_send(to, mbit, length, Duration::from_secs_f64(seconds))?;
            println!("{}", serde_json::to_string(&sent)?);
            Ok(())
        }
        ProbeCmd::UdpSink {
            port,
            idle_ms,
            within_ms,
        } => {
            let got = probe::udp_sink(
                port,
                Duration::from_millis(idle_ms),
                Duration::from_millis(within_ms),
                say_ready,
            )?;
            println!("{}", serde_json::to_string(&got)?);
            Ok(())
        }
        ProbeCmd::Until {
            to,
            awaited,
            within_ms,
            attempt_ms,
        } => {
            let attempts = probe::Attempts {
                within: Duration::from_millis(within_ms),
                each: Duration::from_millis(attempt_ms),
            };
            let at = probe::until(to, awaited, attempts, say_ready)?;
            println!("{at}");
            Ok(())
        }
    }
}

/// Tells the parent, which waits for this line, that the probe is set.
fn say_ready() {
    println!("ready");
    let _ = std::io::stdout().flush();
}

/// Prints `report` as JSON, or as `header` over its table.
fn print_report<R: serde::Serialize>(
    json: bool,
    report: &R,
    header: String,
    table: Table,
) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
    } else {
        println!("{header}");
        print!("{}", table.render());
    }
    Ok(())
}

/// `--bin-dir`, else the directory of this executable.
fn bin_dir_or_own(bin_dir: Option<PathBuf>) -> Result<PathBuf> {
    match bin_dir {
        Some(d) => Ok(d),
        None => own_dir(),
    }
}

/// The directory of the running executable (`target/release` when built with
/// `cargo build --release --workspace`, next to the other binaries).
fn own_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the bench executable")?;
    exe.parent()
        .map(PathBuf::from)
        .context("the bench executable has no parent directory")
}
