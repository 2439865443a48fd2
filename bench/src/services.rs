//! Services: Margay's eBPF load balancing against kube-proxy-style iptables
//! rules, in the same run.
//!
//! - connect + request latency from a pod to a ClusterIP with 1, 1,000 and
//!   10,000 services installed, the request hitting the last one: Margay's
//!   pods in bpf mode with `service::apply`, against Margay's pods in linux
//!   mode with a `KUBE-SERVICES`-shaped chain (a rule per service, jumping
//!   to a per-service chain, jumping to a per-endpoint DNAT), loaded by
//!   `iptables-restore`. Samples of the two alternate in rounds.
//! - time to program 10,000 services from nothing: `service::apply`
//!   against `iptables-restore` of the same set, interleaved rounds.

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use margay_ebpf::service;
use margay_model::protocol::Protocol;
use margay_model::service::ServiceSpec;
use margay_tests::netns::{NetNs, unique_name};
use margay_tests::traffic::in_netns;
use serde::Serialize;

use crate::network::{Kind, Network, Pod};
use crate::report::Table;
use crate::stats::{Summary, ratio};

/// The service counts latency is measured at.
pub const SERVICE_COUNTS: [usize; 3] = [1, 1_000, 10_000];
const PORT: u16 = 80;

/// The ClusterIP of service `i` (10.96.0.1, 10.96.0.2, ...).
fn vip(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(0x0a60_0001 + i as u32)
}

/// `count` services, all but the last pointing at a backend that is never
/// reached; the last at `target`.
fn service_set(count: usize, target: SocketAddrV4) -> Vec<ServiceSpec> {
    (0..count)
        .map(|i| ServiceSpec {
            backends: vec![if i + 1 == count {
                target.into()
            } else {
                SocketAddrV4::new(Ipv4Addr::new(10, 255, (i >> 8) as u8, i as u8), 8080).into()
            }],
            ..ServiceSpec::new(format!("bench/svc-{i}"), vip(i).into(), PORT, Protocol::TCP)
        })
        .collect()
}

/// The same set as kube-proxy's iptables mode writes it, under chains of
/// our own (`prefix`), hooked into PREROUTING by `hook`.
struct IptablesServices {
    prefix: String,
    hooked: bool,
}

impl IptablesServices {
    fn new() -> IptablesServices {
        IptablesServices {
            prefix: unique_name("MGB").to_uppercase(),
            hooked: false,
        }
    }

    fn services_chain(&self) -> String {
        format!("{}-SERVICES", self.prefix)
    }

    fn rules(&self, set: &[ServiceSpec]) -> String {
        let mut chains = String::new();
        let mut rules = String::new();
        let top = self.services_chain();
        chains.push_str(&format!(":{top} - [0:0]\n"));
        for (i, s) in set.iter().enumerate() {
            let svc = format!("{}-SVC-{i}", self.prefix);
            let sep = format!("{}-SEP-{i}", self.prefix);
            chains.push_str(&format!(":{svc} - [0:0]\n:{sep} - [0:0]\n"));
            rules.push_str(&format!(
                "-A {top} -d {}/32 -p tcp -m tcp --dport {} -j {svc}\n-A {svc} -j {sep}\n\
                 -A {sep} -p tcp -m tcp -j DNAT --to-destination {}\n",
                s.vip, s.port, s.backends[0]
            ));
        }
        format!("*nat\n{chains}{rules}COMMIT\n")
    }

    /// Replaces our chains with `set` (the PREROUTING hook is added once).
    fn load(&mut self, set: &[ServiceSpec]) -> Result<Duration> {
        self.clear()?;
        let text = self.rules(set);
        let started = Instant::now();
        restore(&text)?;
        let took = started.elapsed();
        if !self.hooked {
            iptables(&[
                "-t",
                "nat",
                "-I",
                "PREROUTING",
                "-j",
                &self.services_chain(),
            ])?;
            self.hooked = true;
        }
        Ok(took)
    }

    /// Removes our hook and chains.
    fn clear(&mut self) -> Result<()> {
        if self.hooked {
            iptables(&[
                "-t",
                "nat",
                "-D",
                "PREROUTING",
                "-j",
                &self.services_chain(),
            ])?;
            self.hooked = false;
        }
        let out = Command::new("iptables-save").args(["-t", "nat"]).output()?;
        let ours: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.strip_prefix(':'))
            .filter_map(|l| l.split(' ').next())
            .filter(|c| c.starts_with(&self.prefix))
            .map(String::from)
            .collect();
        if ours.is_empty() {
            return Ok(());
        }
        // Declaring a chain in a restore flushes it; then it can go.
        let mut text = String::from("*nat\n");
        for c in &ours {
            text.push_str(&format!(":{c} - [0:0]\n"));
        }
        for c in &ours {
            text.push_str(&format!("-X {c}\n"));
        }
        text.push_str("COMMIT\n");
        restore(&text)
    }
}

impl Drop for IptablesServices {
    fn drop(&mut self) {
        let _ = self.clear();
    }
}

fn iptables(args: &[&str]) -> Result<()> {
    let out = Command::new("iptables").args(args).output()?;
    ensure!(
        out.status.success(),
        "iptables {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

fn restore(text: &str) -> Result<()> {
    let mut child = Command::new("iptables-restore")
        .arg("--noflush")
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("iptables-restore (apt-get install iptables)")?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(text.as_bytes())?;
    let out = child.wait_with_output()?;
    ensure!(
        out.status.success(),
        "iptables-restore: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Answers every line with a line, per connection, until dropped. Accepts
/// blocking: a polling accept adds its sleep (and the timer's slack, tens
/// of microseconds) to a random share of the connections, more than the
/// differences measured here.
struct Server {
    listener: Arc<TcpListener>,
    port: u16,
}

impl Server {
    fn start(ns: &NetNs) -> Result<Server> {
        let listener = Arc::new(in_netns(Some(ns), || TcpListener::bind("0.0.0.0:0"))?);
        let port = listener.local_addr()?.port();
        let serving = listener.clone();
        std::thread::spawn(move || {
            // Ends when Drop shuts the listener down.
            while let Ok((conn, _)) = serving.accept() {
                let _ = conn.set_nodelay(true);
                let mut w = match conn.try_clone() {
                    Ok(w) => w,
                    Err(_) => continue,
                };
                let mut line = String::new();
                if BufReader::new(conn).read_line(&mut line).is_ok() {
                    let _ = w.write_all(b"ok\n");
                }
            }
        });
        Ok(Server { listener, port })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Wakes the blocked accept() with an error.
        let _ = nix::sys::socket::shutdown(
            std::os::fd::AsRawFd::as_raw_fd(&*self.listener),
            nix::sys::socket::Shutdown::Read,
        );
    }
}

/// `n` connect + request + answer exchanges from `ns` to `addr`.
fn exchanges(ns: &NetNs, addr: SocketAddr, n: usize) -> Result<Vec<Duration>> {
    in_netns(Some(ns), move || {
        (0..n)
            .map(|_| {
                crate::interrupt::check()?;
                let started = Instant::now();
                let mut conn = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
                conn.set_nodelay(true)?;
                // Closed by RST: thousands of connections leave no
                // TIME_WAIT behind to slow later connects down.
                let abort = libc::linger {
                    l_onoff: 1,
                    l_linger: 0,
                };
                nix::sys::socket::setsockopt(&conn, nix::sys::socket::sockopt::Linger, &abort)?;
                conn.set_read_timeout(Some(Duration::from_secs(2)))?;
                conn.write_all(b"GET\n")?;
                let mut answer = String::new();
                BufReader::new(&conn).read_line(&mut answer)?;
                let took = started.elapsed();
                if answer != "ok\n" {
                    bail!("unexpected answer {answer:?} from {addr}");
                }
                Ok(took)
            })
            .collect()
    })
}

/// One side of the comparison: a client and a server pod on one network.
struct Side<'n> {
    client: Pod<'n>,
    _server_pod: Pod<'n>,
    server: Server,
    server_ip: Ipv4Addr,
}

impl<'n> Side<'n> {
    fn new(net: &'n Network) -> Result<Side<'n>> {
        let mut client = Pod::prepare(net, "svc");
        let mut server_pod = Pod::prepare(net, "svs");
        client.ip = Some(net.add(&client.ns, &client.cid)?);
        let server_ip = net.add(&server_pod.ns, &server_pod.cid)?;
        server_pod.ip = Some(server_ip);
        let server = Server::start(&server_pod.ns)?;
        Ok(Side {
            client,
            _server_pod: server_pod,
            server,
            server_ip,
        })
    }

    fn target(&self) -> SocketAddrV4 {
        SocketAddrV4::new(self.server_ip, self.server.port)
    }
}

#[derive(Debug, Serialize)]
pub struct LatencyRow {
    pub services: usize,
    pub margay: Summary,
    pub iptables: Summary,
}

#[derive(Debug, Serialize)]
pub struct ServicesReport {
    pub rounds: usize,
    pub per_round: usize,
    pub latency: Vec<LatencyRow>,
    /// Seconds to program 10,000 services from nothing, every round.
    pub program_margay_s: Vec<f64>,
    pub program_iptables_s: Vec<f64>,
    pub iptables_version: String,
}

impl ServicesReport {
    pub fn table(&self) -> Table {
        let mut t = Table::new([
            "pod -> ClusterIP, connect+request",
            "margay p50 ms",
            "margay p99 ms",
            "iptables p50 ms",
            "iptables p99 ms",
            "margay/iptables p50",
            "margay p50 vs 1 svc",
            "iptables p50 vs 1 svc",
        ]);
        let base = self.latency.first();
        for row in &self.latency {
            let (m1, i1) = base.map_or((f64::NAN, f64::NAN), |b| {
                (b.margay.p50_ms, b.iptables.p50_ms)
            });
            t.row([
                format!("{} services", row.services),
                format!("{:.3}", row.margay.p50_ms),
                format!("{:.3}", row.margay.p99_ms),
                format!("{:.3}", row.iptables.p50_ms),
                format!("{:.3}", row.iptables.p99_ms),
                format!("{:.2}x", ratio(row.margay.p50_ms, row.iptables.p50_ms)),
                format!("{:.2}x", ratio(row.margay.p50_ms, m1)),
                format!("{:.2}x", ratio(row.iptables.p50_ms, i1)),
            ]);
        }
        let (m, i) = (
            crate::stats::median_of(&self.program_margay_s),
            crate::stats::median_of(&self.program_iptables_s),
        );
        t.row([
            "program 10,000 services (median s)".to_string(),
            format!("{m:.3}"),
            "-".into(),
            format!("{i:.3}"),
            "-".into(),
            format!("{:.3}x", ratio(m, i)),
            "-".into(),
            "-".into(),
        ]);
        t
    }
}

pub fn run(
    bin_dir: std::path::PathBuf,
    peer_dir: std::path::PathBuf,
    rounds: usize,
    per_round: usize,
) -> Result<ServicesReport> {
    let bpf = Network::new(Kind::MargayBpf, "10.212.0.0/24", &bin_dir, &peer_dir)?;
    let linux = Network::new(Kind::MargayLinux, "10.213.0.0/24", &bin_dir, &peer_dir)?;
    let root = bpf.bpf_root().context("a bpf network has a BPF root")?;
    let (margay, peer) = (Side::new(&bpf)?, Side::new(&linux)?);
    let mut rules = IptablesServices::new();
    let clear_margay = || service::apply(root, &[]).map(|_| ());

    // Counts interleave too: every round programs each count in turn, so
    // that what accumulates over a run (conntrack, translations, the
    // client's closed sockets) weighs on every row alike.
    let mut samples: Vec<(Vec<Duration>, Vec<Duration>)> = SERVICE_COUNTS
        .iter()
        .map(|_| (Vec::new(), Vec::new()))
        .collect();
    for round in 0..rounds {
        for (count, (m, i)) in SERVICE_COUNTS.iter().zip(samples.iter_mut()) {
            service::apply(root, &service_set(*count, margay.target()))?;
            rules.load(&service_set(*count, peer.target()))?;
            let last = SocketAddr::from((vip(count - 1), PORT));
            if round == 0 {
                // Warm up both paths (ARP, caches) before counting.
                exchanges(&margay.client.ns, last, 20).context("margay warm-up")?;
                exchanges(&peer.client.ns, last, 20).context("iptables warm-up")?;
            }
            m.extend(
                exchanges(&margay.client.ns, last, per_round)
                    .with_context(|| format!("margay, {count} services"))?,
            );
            i.extend(
                exchanges(&peer.client.ns, last, per_round)
                    .with_context(|| format!("iptables, {count} services"))?,
            );
        }
    }
    let latency = SERVICE_COUNTS
        .iter()
        .zip(&samples)
        .map(|(count, (m, i))| {
            Ok(LatencyRow {
                services: *count,
                margay: Summary::of(m).context("samples")?,
                iptables: Summary::of(i).context("samples")?,
            })
        })
        .collect::<Result<Vec<_>>>()?;

    let big = service_set(10_000, margay.target());
    let (mut program_margay_s, mut program_iptables_s) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        clear_margay()?;
        let started = Instant::now();
        service::apply(root, &big)?;
        program_margay_s.push(started.elapsed().as_secs_f64());
        program_iptables_s.push(rules.load(&big)?.as_secs_f64());
    }
    clear_margay()?;
    rules.clear()?;
    let version = Command::new("iptables").arg("--version").output()?;
    Ok(ServicesReport {
        rounds,
        per_round,
        latency,
        program_margay_s,
        program_iptables_s,
        iptables_version: String::from_utf8_lossy(&version.stdout).trim().to_string(),
    })
}
