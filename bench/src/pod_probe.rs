//! The cluster benchmarks' ends in pods: `bench probe` run in a pod's
//! network namespace (`nsenter --net`), as a process of its own, so it
//! stands where a workload would (see [`crate::probe`]).

use std::io::{BufRead, BufReader, Read};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail, ensure};
use margay_tests::kube::{KubeCluster, wait_for};

use crate::cluster_tasks::task_pid;

/// A running pod that probes run in.
pub struct ProbePod {
    pub namespace: String,
    pub name: String,
    pub ip: Ipv4Addr,
    /// `/proc/<pid>/ns/net` of its container.
    netns: String,
}

impl ProbePod {
    /// The one running pod labelled `app=<app>`.
    ///
    /// # Errors
    /// It does not run within three minutes.
    pub fn of(c: &KubeCluster, app: &str) -> Result<ProbePod> {
        let (ip, container, namespace, name, node) = wait_for(
            &format!("pod {app} running"),
            Duration::from_secs(180),
            || {
                let pods = c.kubectl_json(&["get", "pods", "-A", "-l", &format!("app={app}")]);
                let pod = &pods["items"][0];
                let ip = pod["status"]["podIP"].as_str();
                let container = pod["status"]["containerStatuses"][0]["containerID"]
                    .as_str()
                    .and_then(|id| id.strip_prefix("containerd://"));
                let meta = |k: &str| pod["metadata"][k].as_str().unwrap_or_default().to_string();
                let node = pod["spec"]["nodeName"].as_str().unwrap_or_default();
                match (pod["status"]["phase"].as_str(), ip, container) {
                    (Some("Running"), Some(ip), Some(container)) => Ok((
                        ip.to_string(),
                        container.to_string(),
                        meta("namespace"),
                        meta("name"),
                        node.to_string(),
                    )),
                    _ => Err(format!("{}", pod["status"])),
                }
            },
        );
        let nodes: usize = c.env("NODES").parse()?;
        let index = (0..nodes)
            .find(|&i| c.node_name(i) == node)
            .with_context(|| format!("pod {app} runs on {node}, not a node of the cluster"))?;
        let pid = task_pid(c, index, &container)?;
        Ok(ProbePod {
            namespace,
            name,
            ip: ip.parse()?,
            netns: format!("/proc/{pid}/ns/net"),
        })
    }

    /// `/proc/<pid>/ns/net` of its container.
    pub fn netns(&self) -> &str {
        &self.netns
    }

    /// `bench probe <args>` in the pod's network namespace.
    pub fn probe(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.netns))
            .arg(std::env::current_exe().expect("own executable"))
            .arg("probe")
            .args(args);
        cmd
    }

    /// `bench probe serve` on `port`, until the returned child is killed.
    ///
    /// # Errors
    /// nsenter cannot be run.
    pub fn serve(&self, port: u16) -> Result<Server> {
        let child = self
            .probe(&["serve", "--port", &port.to_string()])
            .stdout(Stdio::null())
            .spawn()
            .context("nsenter … bench probe serve")?;
        Ok(Server(child))
    }

    /// `bench probe until` `to` is `awaited` ("open" or "closed"), with
    /// attempts of 100 ms; returns once it is trying, for [`first_line`] to
    /// read when it saw it.
    ///
    /// # Errors
    /// The probe does not start.
    pub fn until(&self, to: SocketAddrV4, awaited: &str, within: Duration) -> Result<Child> {
        self.until_with(to, awaited, within, Duration::from_millis(100))
    }

    /// [`ProbePod::until`] with attempts of `attempt` each.
    ///
    /// # Errors
    /// The probe does not start.
    pub fn until_with(
        &self,
        to: SocketAddrV4,
        awaited: &str,
        within: Duration,
        attempt: Duration,
    ) -> Result<Child> {
        let mut child = self
            .probe(&[
                "until",
                "--to",
                &to.to_string(),
                "--awaited",
                awaited,
                "--within-ms",
                &within.as_millis().to_string(),
                "--attempt-ms",
                &attempt.as_millis().to_string(),
            ])
            .stdout(Stdio::piped())
            .spawn()?;
        // Byte by byte: a buffered reader could take the next line too.
        let stdout = child.stdout.as_mut().context("probe's stdout")?;
        let mut line = Vec::new();
        let mut byte = [0u8];
        while stdout.read(&mut byte)? == 1 && byte[0] != b'\n' {
            line.push(byte[0]);
        }
        ensure!(line == b"ready", "the probe did not start");
        Ok(child)
    }

    /// `count` connections to `to` in sequence: connect, one request and
    /// its answer, close; each one's time.
    ///
    /// # Errors
    /// One fails.
    pub fn latencies(&self, to: SocketAddrV4, count: usize) -> Result<Vec<Duration>> {
        let args = latency_args(to, count);
        let out = self
            .probe(&args.iter().map(String::as_str).collect::<Vec<_>>())
            .output()?;
        ensure!(
            out.status.success(),
            "pod probe: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        parse_micros(&out.stdout)
    }
}

/// A `bench probe serve`, stopped when dropped.
pub struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The arguments of `bench probe latencies`.
pub fn latency_args(to: SocketAddrV4, count: usize) -> Vec<String> {
    vec![
        "latencies".into(),
        "--to".into(),
        to.to_string(),
        "--count".into(),
        count.to_string(),
    ]
}

/// `bench probe latencies`' output: one time in µs a line.
///
/// # Errors
/// A line is not a number.
pub fn parse_micros(out: &[u8]) -> Result<Vec<Duration>> {
    String::from_utf8_lossy(out)
        .lines()
        .map(|l| Ok(Duration::from_micros(l.trim().parse()?)))
        .collect()
}

/// The probe's answer: the epoch nanoseconds it printed after "ready".
///
/// # Errors
/// It gave up, or printed something else.
pub fn first_line(child: &mut Child) -> Result<u128> {
    let stdout = child.stdout.as_mut().context("probe's stdout")?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let status = child.wait()?;
    if !status.success() {
        bail!("the probe gave up ({status})");
    }
    Ok(line.trim().parse()?)
}

/// The time from `changed` (epoch nanoseconds, taken after the API
/// answered) to what the probe `child` saw.
///
/// # Errors
/// As [`first_line`].
pub fn seen_after(child: &mut Child, changed: u128) -> Result<Duration> {
    let seen = first_line(child)?;
    Ok(Duration::from_nanos(seen.saturating_sub(changed) as u64))
}

/// Now, in epoch nanoseconds.
pub fn epoch_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}
