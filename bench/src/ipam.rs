//! `bench ipam`: per-call latency of IPAM ADD and DEL, Margay's `margay-ipam`
//! against the reference `host-local`, in one run.
//!
//! Both plugins are executed exactly as a runtime executes them (see
//! [`crate::exec`]), calls interleaved (Margay, host-local, Margay, ...) so
//! that machine noise hits both alike: a warm-up of ADD+DEL pairs that is not
//! recorded, then N ADDs, then N DELs of the same containers. All state lives
//! in a temporary directory removed when the run ends, successful or not.

use std::collections::HashSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use ipnetwork::IpNetwork;
use serde::Serialize;
use serde_json::{Value, json};

use crate::exec::{CniEnv, PluginRun, run_plugin};
use crate::report::{RunInfo, Table, fmt_ms, fmt_ratio};
use crate::stats::{Summary, pairwise_sum, ratio};

/// Default number of containers per plugin.
pub const DEFAULT_CALLS: usize = 300;
/// Unrecorded ADD+DEL pairs per plugin before measuring.
pub const WARMUP: usize = 10;
/// Margay's IPAM binary.
pub const MARGAY_IPAM: &str = "margay-ipam";
/// The reference IPAM plugin.
pub const HOST_LOCAL: &str = "host-local";

const MARGAY_POOL: &str = "10.210.0.0/16";
const HOST_LOCAL_SUBNET: &str = "10.211.0.0/16";
const NETWORK: &str = "benchnet";
const NETNS: &str = "/var/run/netns/bench-x";
const IFNAME: &str = "eth0";

/// What to run.
#[derive(Debug, Clone)]
pub struct IpamBench {
    /// Containers (ADD and DEL each) per plugin.
    pub calls: usize,
    /// Unrecorded ADD+DEL pairs per plugin first.
    pub warmup: usize,
    /// Directory holding `margay-ipam`.
    pub bin_dir: PathBuf,
    /// Directory holding `host-local`.
    pub peer_dir: PathBuf,
}

/// The result: percentiles per operation and plugin.
#[derive(Debug, Clone, Serialize)]
pub struct IpamReport {
    pub bench: &'static str,
    #[serde(flatten)]
    pub run: RunInfo,
    pub calls: usize,
    pub warmup: usize,
    pub margay_bin: PathBuf,
    pub host_local_bin: PathBuf,
    pub rows: Vec<Row>,
}

/// One operation's figures for both plugins.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// `ADD`, `DEL` or `ADD+DEL` (the sum per container).
    pub op: &'static str,
    pub margay: Summary,
    pub host_local: Summary,
    /// margay p50 / host-local p50.
    pub ratio_p50: f64,
    /// margay p99 / host-local p99.
    pub ratio_p99: f64,
}

impl Row {
    fn new(op: &'static str, margay: &[Duration], host_local: &[Duration]) -> Result<Self> {
        let margay = Summary::of(margay).context("no samples")?;
        let host_local = Summary::of(host_local).context("no samples")?;
        Ok(Self {
            op,
            ratio_p50: ratio(margay.p50_ms, host_local.p50_ms),
            ratio_p99: ratio(margay.p99_ms, host_local.p99_ms),
            margay,
            host_local,
        })
    }
}

impl IpamReport {
    /// One line: what ran, where, how.
    pub fn header(&self) -> String {
        format!(
            "bench ipam: N={} containers per plugin ({} warm-up), kernel {}, command: {}",
            self.calls, self.warmup, self.run.kernel, self.run.command
        )
    }

    /// The latency table (milliseconds).
    pub fn table(&self) -> Table {
        let mut t = Table::new([
            "op (ms)",
            "margay p50",
            "margay p99",
            "host-local p50",
            "host-local p99",
            "p50 ratio",
            "p99 ratio",
        ]);
        for r in &self.rows {
            t.row([
                r.op.to_owned(),
                fmt_ms(r.margay.p50_ms),
                fmt_ms(r.margay.p99_ms),
                fmt_ms(r.host_local.p50_ms),
                fmt_ms(r.host_local.p99_ms),
                fmt_ratio(r.ratio_p50),
                fmt_ratio(r.ratio_p99),
            ]);
        }
        t
    }
}

/// One plugin under test, with the latencies recorded so far.
struct Subject {
    label: &'static str,
    bin: PathBuf,
    config: Vec<u8>,
    pool: IpNetwork,
    add: Vec<Duration>,
    del: Vec<Duration>,
    /// Addresses currently held, to catch an allocator handing one out twice.
    held: HashSet<IpAddr>,
}

impl Subject {
    fn new(label: &'static str, bin: PathBuf, config: &Value, pool: &str) -> Result<Self> {
        Ok(Self {
            label,
            bin,
            config: serde_json::to_vec(config)?,
            pool: pool.parse().with_context(|| format!("bad pool {pool}"))?,
            add: Vec::new(),
            del: Vec::new(),
            held: HashSet::new(),
        })
    }

    fn exec(&self, command: &str, container_id: &str) -> Result<PluginRun> {
        let env = CniEnv {
            command: command.to_owned(),
            container_id: container_id.to_owned(),
            netns: NETNS.to_owned(),
            ifname: IFNAME.to_owned(),
            path: self.bin.parent().unwrap_or(Path::new("/")).to_path_buf(),
            args: String::new(),
        };
        let run = run_plugin(&self.bin, env.vars(), &self.config)?;
        run.check_success(&format!("{} {command} {container_id}", self.label))?;
        Ok(run)
    }

    /// ADD; checks the result holds exactly one IPv4 address, from the pool,
    /// not held by another container.
    fn add(&mut self, container_id: &str) -> Result<(Duration, IpAddr)> {
        let run = self.exec("ADD", container_id)?;
        let what = format!("{} ADD {container_id}", self.label);
        let ip = single_ip(&run.stdout, &self.pool).with_context(|| {
            format!(
                "{what}: unexpected result: {}",
                String::from_utf8_lossy(&run.stdout).trim()
            )
        })?;
        ensure!(
            self.held.insert(ip),
            "{what}: {ip} handed out while still held by another container"
        );
        Ok((run.elapsed, ip))
    }

    /// DEL of a container that ADD gave `ip`.
    fn del(&mut self, container_id: &str, ip: IpAddr) -> Result<Duration> {
        let run = self.exec("DEL", container_id)?;
        self.held.remove(&ip);
        Ok(run.elapsed)
    }
}

/// The one address of an ADD result, which must lie in `pool`.
fn single_ip(stdout: &[u8], pool: &IpNetwork) -> Result<IpAddr> {
    let result: Value = serde_json::from_slice(stdout).context("not JSON")?;
    let ips = result
        .get("ips")
        .and_then(Value::as_array)
        .context("no \"ips\" array")?;
    ensure!(ips.len() == 1, "{} ips, expected exactly 1", ips.len());
    let address = ips[0]
        .get("address")
        .and_then(Value::as_str)
        .context("ips[0] has no \"address\"")?;
    let net: IpNetwork = address
        .parse()
        .with_context(|| format!("bad address {address:?}"))?;
    let ip = net.ip();
    ensure!(ip.is_ipv4(), "{ip} is not IPv4");
    ensure!(pool.contains(ip), "{ip} is outside the pool {pool}");
    Ok(ip)
}

fn find_binary(dir: &Path, name: &str, hint: &str) -> Result<PathBuf> {
    let bin = dir.join(name);
    if !bin.is_file() {
        bail!("{name} not found at {}: {hint}", bin.display());
    }
    Ok(bin)
}

/// The container ID of the `i`-th measured container.
fn container_id(i: usize) -> String {
    format!("bench-{i:06}")
}

/// Runs the benchmark.
pub fn run(opts: &IpamBench) -> Result<IpamReport> {
    ensure!(opts.calls >= 1, "--calls must be at least 1");
    // Both pools are /16s; leave room for the warm-up and block granularity.
    ensure!(opts.calls <= 60_000, "--calls must be at most 60000");

    let margay_bin = find_binary(
        &opts.bin_dir,
        MARGAY_IPAM,
        "build it with cargo build --release --workspace (or pass --bin-dir)",
    )?;
    let host_local_bin = find_binary(
        &opts.peer_dir,
        HOST_LOCAL,
        "install Debian's containernetworking-plugins (or pass --peer-dir)",
    )?;

    // Removed on drop, whichever way this function returns.
    let tmp = tempfile::Builder::new()
        .prefix("margay-bench-ipam-")
        .tempdir()
        .context("creating a temporary directory")?;

    let margay_conf = json!({
        "cniVersion": "1.0.0",
        "name": NETWORK,
        "type": "margay",
        "nodename": "bench",
        "ipam": {
            "type": MARGAY_IPAM,
            "pools": [MARGAY_POOL],
            "data_dir": tmp.path().join("margay"),
        },
    });
    let host_local_conf = json!({
        "cniVersion": "1.0.0",
        "name": NETWORK,
        "type": "ptp",
        "ipam": {
            "type": HOST_LOCAL,
            "ranges": [[{ "subnet": HOST_LOCAL_SUBNET }]],
            "dataDir": tmp.path().join("host-local"),
        },
    });
    let mut margay = Subject::new("margay-ipam", margay_bin.clone(), &margay_conf, MARGAY_POOL)?;
    let mut host_local = Subject::new(
        "host-local",
        host_local_bin.clone(),
        &host_local_conf,
        HOST_LOCAL_SUBNET,
    )?;

    for i in 0..opts.warmup {
        let id = format!("bench-warmup-{i:03}");
        for s in [&mut margay, &mut host_local] {
            let (_, ip) = s.add(&id)?;
            s.del(&id, ip)?;
        }
    }

    let mut margay_ips = Vec::with_capacity(opts.calls);
    let mut host_local_ips = Vec::with_capacity(opts.calls);
    for i in 0..opts.calls {
        let id = container_id(i);
        let (t, ip) = margay.add(&id)?;
        margay.add.push(t);
        margay_ips.push(ip);
        let (t, ip) = host_local.add(&id)?;
        host_local.add.push(t);
        host_local_ips.push(ip);
    }
    for (i, (&margay_ip, &host_local_ip)) in margay_ips.iter().zip(&host_local_ips).enumerate() {
        let id = container_id(i);
        let t = margay.del(&id, margay_ip)?;
        margay.del.push(t);
        let t = host_local.del(&id, host_local_ip)?;
        host_local.del.push(t);
    }

    let rows = vec![
        Row::new("ADD", &margay.add, &host_local.add)?,
        Row::new("DEL", &margay.del, &host_local.del)?,
        Row::new(
            "ADD+DEL",
            &pairwise_sum(&margay.add, &margay.del),
            &pairwise_sum(&host_local.add, &host_local.del),
        )?,
    ];

    tmp.close().context("removing the temporary directory")?;
    Ok(IpamReport {
        bench: "ipam",
        run: RunInfo::current(),
        calls: opts.calls,
        warmup: opts.warmup,
        margay_bin,
        host_local_bin,
        rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool() -> IpNetwork {
        MARGAY_POOL.parse().unwrap()
    }

    #[test]
    fn single_ip_accepts_one_v4_address_in_pool() {
        let out = br#"{"cniVersion":"1.0.0","ips":[{"address":"10.210.0.5/32"}],"routes":[]}"#;
        assert_eq!(
            single_ip(out, &pool()).unwrap(),
            "10.210.0.5".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn single_ip_rejects_bad_results() {
        for out in [
            &br#"{"ips":[]}"#[..],
            br#"{"ips":[{"address":"10.210.0.5/32"},{"address":"10.210.0.6/32"}]}"#,
            br#"{"ips":[{"address":"10.99.0.5/32"}]}"#,
            br#"{"ips":[{"address":"fd00::5/128"}]}"#,
            br#"{"ips":[{"gateway":"10.210.0.1"}]}"#,
            br#"{"code":11,"msg":"busy"}"#,
            b"not json",
        ] {
            assert!(
                single_ip(out, &pool()).is_err(),
                "{}",
                String::from_utf8_lossy(out)
            );
        }
    }

    #[test]
    fn missing_margay_binary_says_how_to_build_it() {
        let dir = tempfile::tempdir().unwrap();
        let err = run(&IpamBench {
            calls: 1,
            warmup: 0,
            bin_dir: dir.path().to_path_buf(),
            peer_dir: dir.path().to_path_buf(),
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("margay-ipam not found"), "{err}");
        assert!(err.contains("cargo build --release --workspace"), "{err}");
    }

    /// Writes an executable stand-in for an IPAM plugin that hands out
    /// `<prefix>.<n>` for container `...-<n>`, or fails on `fail_on`.
    fn fake_plugin(dir: &Path, name: &str, prefix: &str, fail_on: &str) {
        let script = format!(
            r#"#!/bin/sh
cat >/dev/null
if [ "$CNI_COMMAND" = "{fail_on}" ]; then
  echo '{{"cniVersion":"1.0.0","code":11,"msg":"fake failure"}}'
  exit 1
fi
if [ "$CNI_COMMAND" = ADD ]; then
  n=$(expr "${{CNI_CONTAINERID##*-}}" + 0)
  echo '{{"cniVersion":"1.0.0","ips":[{{"address":"{prefix}.'$((n / 256)).$((n % 256 + 1))'/32"}}]}}'
fi
"#
        );
        install_script(&dir.join(name), &script);
    }

    /// Writes an executable script and waits until it can be executed: a
    /// test thread forking meanwhile may briefly hold the written file open
    /// (ETXTBSY).
    fn install_script(path: &Path, script: &str) {
        use std::os::unix::fs::PermissionsExt;
        use std::process::{Command, Stdio};
        std::fs::write(path, script).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
        for _ in 0..100 {
            match Command::new(path)
                .env("CNI_COMMAND", "VERSION")
                .stdin(Stdio::null())
                .output()
            {
                Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                r => {
                    r.unwrap();
                    return;
                }
            }
        }
        panic!("{} stays busy", path.display());
    }

    fn fake_bench(dir: &Path, calls: usize) -> IpamBench {
        IpamBench {
            calls,
            warmup: 2,
            bin_dir: dir.join("bin"),
            peer_dir: dir.join("peer"),
        }
    }

    #[test]
    fn runs_end_to_end_with_stand_in_plugins() {
        let dir = tempfile::tempdir().unwrap();
        for d in ["bin", "peer"] {
            std::fs::create_dir(dir.path().join(d)).unwrap();
        }
        fake_plugin(&dir.path().join("bin"), MARGAY_IPAM, "10.210", "none");
        fake_plugin(&dir.path().join("peer"), HOST_LOCAL, "10.211", "none");
        let report = run(&fake_bench(dir.path(), 5)).unwrap();
        let ops: Vec<_> = report.rows.iter().map(|r| r.op).collect();
        assert_eq!(ops, ["ADD", "DEL", "ADD+DEL"]);
        for r in &report.rows {
            assert_eq!(r.margay.samples, 5);
            assert_eq!(r.host_local.samples, 5);
            assert!(r.margay.p50_ms > 0.0 && r.ratio_p50.is_finite());
        }
        let table = report.table().render();
        assert_eq!(table.lines().count(), 4, "{table}");
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["calls"], 5);
        assert_eq!(json["rows"][2]["op"], "ADD+DEL");
        assert!(json["kernel"].is_string() && json["command"].is_string());
    }

    #[test]
    fn plugin_failure_is_reported_with_its_output() {
        let dir = tempfile::tempdir().unwrap();
        for d in ["bin", "peer"] {
            std::fs::create_dir(dir.path().join(d)).unwrap();
        }
        fake_plugin(&dir.path().join("bin"), MARGAY_IPAM, "10.210", "DEL");
        fake_plugin(&dir.path().join("peer"), HOST_LOCAL, "10.211", "none");
        let err = format!("{:#}", run(&fake_bench(dir.path(), 3)).unwrap_err());
        assert!(
            err.contains("margay-ipam DEL bench-warmup-000 failed"),
            "{err}"
        );
        assert!(err.contains("fake failure"), "{err}");
    }

    #[test]
    fn duplicate_address_is_caught() {
        let dir = tempfile::tempdir().unwrap();
        for d in ["bin", "peer"] {
            std::fs::create_dir(dir.path().join(d)).unwrap();
        }
        fake_plugin(&dir.path().join("bin"), MARGAY_IPAM, "10.210", "none");
        // Always hands out the same address.
        install_script(
            &dir.path().join("peer").join(HOST_LOCAL),
            "#!/bin/sh\ncat >/dev/null\n[ \"$CNI_COMMAND\" = ADD ] && echo '{\"ips\":[{\"address\":\"10.211.0.9/32\"}]}'\nexit 0\n",
        );
        let err = format!("{:#}", run(&fake_bench(dir.path(), 3)).unwrap_err());
        assert!(
            err.contains("10.211.0.9 handed out while still held"),
            "{err}"
        );
    }
}
