//! Pod start latency through a real kubelet: from the moment the API
//! server has a Pod to the moment its status says Running with an address,
//! on three one-node clusters side by side (`scripts/cluster up`): Margay
//! in bpf mode, Margay in linux mode and Debian's ptp + host-local as the
//! cluster's CNI. Rounds are interleaved across the three, their order
//! rotated, so the machine's noise falls on all of them alike. Then the
//! time `scripts/cluster up` takes for 1 and 3 nodes.
//!
//! Both instants of a pod are read off one `kubectl get pods --watch`
//! stream per cluster, stamped as each line arrives: the watch's own
//! delay is in both and cancels, and kubectl's start-up is in neither.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use margay_tests::kube::KubeCluster;
use serde::Serialize;

use crate::report::{Table, fmt_ms, fmt_ratio};
use crate::stats::{self, Summary};

/// The clusters compared, as `scripts/cluster up` options. The peer is last.
const SIDES: [(&str, &[&str]); 3] = [
    ("margay bpf", &["--dataplane", "bpf"]),
    ("margay linux", &["--dataplane", "linux"]),
    ("ptp+host-local", &["--cni", "ptp"]),
];

/// How long one round's pods may take to run before the run fails.
const ROUND_TIMEOUT: Duration = Duration::from_secs(180);

#[derive(Debug, Serialize)]
pub struct K8sPodsReport {
    pub rounds: usize,
    pub per_round: usize,
    pub results: Vec<SideResult>,
    /// `scripts/cluster up` (then `down`) of a fresh cluster, interleaved.
    pub up_1_node: Summary,
    pub up_3_nodes: Summary,
}

#[derive(Debug, Serialize)]
pub struct SideResult {
    pub cni: &'static str,
    /// Created (first watch event) -> Running with a pod IP.
    pub start: Summary,
    /// This side's `scripts/cluster up`, the one the pods ran on.
    pub up_ms: f64,
}

impl K8sPodsReport {
    pub fn table(&self) -> Table {
        let peer = self.results.last().expect("the peer is measured last");
        let mut t = Table::new([
            "",
            "pods",
            "start p50 ms",
            "start p99 ms",
            "p50 ratio",
            "p99 ratio",
            "cluster up ms",
        ]);
        for r in &self.results {
            t.row([
                r.cni.to_string(),
                r.start.samples.to_string(),
                fmt_ms(r.start.p50_ms),
                fmt_ms(r.start.p99_ms),
                fmt_ratio(stats::ratio(r.start.p50_ms, peer.start.p50_ms)),
                fmt_ratio(stats::ratio(r.start.p99_ms, peer.start.p99_ms)),
                fmt_ms(r.up_ms),
            ]);
        }
        for (what, s) in [
            ("up 1 node (bpf)", &self.up_1_node),
            ("up 3 nodes (bpf)", &self.up_3_nodes),
        ] {
            t.row([
                what.to_string(),
                format!("{} runs", s.samples),
                fmt_ms(s.p50_ms),
                format!("max {}", fmt_ms(s.max_ms)),
                String::new(),
                String::new(),
                String::new(),
            ]);
        }
        t
    }
}

/// Runs `rounds` rounds of `per_round` pods on each side, then
/// `up_rounds` interleaved 1- and 3-node `up`s.
///
/// # Errors
/// A cluster that does not come up, a pod that does not run in time or
/// two pods of a round with one address.
pub fn run(rounds: usize, per_round: usize, up_rounds: usize) -> Result<K8sPodsReport> {
    ensure!(
        rounds > 0 && per_round > 0 && up_rounds > 0,
        "rounds, pods per round and ups must be positive"
    );
    let mut sides = Vec::new();
    for (cni, args) in SIDES {
        crate::interrupt::check()?;
        let started = Instant::now();
        let cluster = KubeCluster::try_up("bk", &[&["--nodes", "1"], args].concat())
            .map_err(|e| anyhow!(e))?;
        let up = started.elapsed();
        let watch = PodWatch::start(&cluster)?;
        sides.push(Side {
            cni,
            cluster,
            watch,
            up,
            samples: Vec::new(),
        });
    }
    // A first round per side, not counted: it shows each watch is
    // established and puts the image's files in the page cache.
    for side in &mut sides {
        side.round("warm", per_round)?;
    }
    for round in 0..rounds {
        for k in 0..sides.len() {
            let i = (round + k) % sides.len();
            let samples = sides[i].round(&round.to_string(), per_round)?;
            sides[i].samples.extend(samples);
        }
    }
    let results = sides
        .iter()
        .map(|s| SideResult {
            cni: s.cni,
            start: Summary::of(&s.samples).expect("at least one round"),
            up_ms: stats::ms(s.up),
        })
        .collect();
    drop(sides);

    let (mut one, mut three) = (Vec::new(), Vec::new());
    for _ in 0..up_rounds {
        one.push(time_up(&["--nodes", "1"])?);
        three.push(time_up(&["--nodes", "3"])?);
    }
    Ok(K8sPodsReport {
        rounds,
        per_round,
        results,
        up_1_node: Summary::of(&one).expect("at least one"),
        up_3_nodes: Summary::of(&three).expect("at least one"),
    })
}

/// How long `scripts/cluster up ARGS` takes; the cluster is taken down
/// (untimed) before the next.
fn time_up(args: &[&str]) -> Result<Duration> {
    crate::interrupt::check()?;
    let started = Instant::now();
    let cluster = KubeCluster::try_up("bu", args).map_err(|e| anyhow!(e))?;
    let took = started.elapsed();
    drop(cluster);
    Ok(took)
}

struct Side {
    cni: &'static str,
    cluster: KubeCluster,
    watch: PodWatch,
    up: Duration,
    samples: Vec<Duration>,
}

impl Side {
    /// Creates `count` pods in one `kubectl apply`, waits until all run,
    /// deletes them (waiting until kubelet has torn them down) and gives
    /// each one's start latency.
    fn round(&mut self, tag: &str, count: usize) -> Result<Vec<Duration>> {
        crate::interrupt::check()?;
        let names: Vec<String> = (0..count).map(|i| format!("bench-{tag}-{i}")).collect();
        let manifest = pod_list(&names);
        self.cluster.apply(&manifest);
        let deadline = Instant::now() + ROUND_TIMEOUT;
        let started = loop {
            if let Some(all) = self.watch.all_running(&names)? {
                break all;
            }
            if Instant::now() >= deadline {
                bail!(
                    "{}: pods of round {tag} not running after {ROUND_TIMEOUT:?}",
                    self.cni
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut ips: Vec<&str> = started.iter().map(|p| p.ip.as_str()).collect();
        ips.sort_unstable();
        ips.dedup();
        ensure!(
            ips.len() == names.len(),
            "{}: round {tag} gave {} pods only {} addresses",
            self.cni,
            names.len(),
            ips.len()
        );
        self.cluster
            .kubectl(&["delete", "pods", "--all", "--wait=true", "--timeout=120s"]);
        Ok(started.iter().map(|p| p.latency).collect())
    }
}

/// A `v1/List` of bare busybox Pods named `names` that sleep, removed
/// without a grace period.
fn pod_list(names: &[String]) -> String {
    let items: Vec<serde_json::Value> = names
        .iter()
        .map(|name| {
            serde_json::json!({
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": name, "labels": {"app": "bench"}},
                "spec": {
                    "terminationGracePeriodSeconds": 0,
                    "containers": [{
                        "name": "sleep",
                        "image": "localhost/busybox:latest",
                        "imagePullPolicy": "Never",
                        "command": ["sleep", "3600"],
                    }],
                },
            })
        })
        .collect();
    serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items}).to_string()
}

/// One running pod of a round.
struct Started {
    ip: String,
    latency: Duration,
}

/// What the watch saw of one pod: when it first appeared, and when it was
/// first Running with an address.
struct Seen {
    created: Instant,
    running: Option<(Instant, String)>,
}

/// `kubectl get pods --watch` of one cluster, one line per event, read on
/// a thread that stamps each line as it arrives. Killed on drop.
struct PodWatch {
    child: Child,
    seen: Arc<Mutex<HashMap<String, Seen>>>,
    ended: Arc<AtomicBool>,
}

impl PodWatch {
    fn start(cluster: &KubeCluster) -> Result<PodWatch> {
        let mut child = Command::new(cluster.env("KUBECTL"))
            .arg("--kubeconfig")
            .arg(cluster.env("KUBECONFIG"))
            .args([
                "get",
                "pods",
                "--watch",
                "-o",
                r#"jsonpath={.metadata.name} {.status.phase} {.status.podIP}{"\n"}"#,
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting kubectl get pods --watch")?;
        let out = child.stdout.take().expect("stdout is piped");
        let seen = Arc::new(Mutex::new(HashMap::<String, Seen>::new()));
        let ended = Arc::new(AtomicBool::new(false));
        let (seen_w, ended_w) = (seen.clone(), ended.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let now = Instant::now();
                let Ok(line) = line else { break };
                let mut fields = line.split_whitespace();
                let Some(name) = fields.next() else { continue };
                let phase = fields.next().unwrap_or("");
                let ip = fields.next().unwrap_or("");
                let mut seen = seen_w.lock().expect("watch map");
                let pod = seen.entry(name.to_string()).or_insert(Seen {
                    created: now,
                    running: None,
                });
                if phase == "Running" && !ip.is_empty() && pod.running.is_none() {
                    pod.running = Some((now, ip.to_string()));
                }
            }
            ended_w.store(true, Ordering::Relaxed);
        });
        Ok(PodWatch { child, seen, ended })
    }

    /// Each of `names` once all of them ran; `None` while some have not.
    fn all_running(&self, names: &[String]) -> Result<Option<Vec<Started>>> {
        if self.ended.load(Ordering::Relaxed) {
            bail!("kubectl's watch of the pods ended");
        }
        let seen = self.seen.lock().expect("watch map");
        let mut started = Vec::with_capacity(names.len());
        for name in names {
            let Some(Seen {
                created,
                running: Some((running, ip)),
            }) = seen.get(name)
            else {
                return Ok(None);
            };
            started.push(Started {
                ip: ip.clone(),
                latency: running.duration_since(*created),
            });
        }
        Ok(Some(started))
    }
}

impl Drop for PodWatch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pod_list_names_every_pod_once() {
        let names = vec!["bench-0-0".to_string(), "bench-0-1".to_string()];
        let list: serde_json::Value = serde_json::from_str(&pod_list(&names)).unwrap();
        let got: Vec<&str> = list["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["metadata"]["name"].as_str().unwrap())
            .collect();
        assert_eq!(got, ["bench-0-0", "bench-0-1"]);
        assert_eq!(
            list["items"][0]["spec"]["containers"][0]["imagePullPolicy"],
            "Never"
        );
    }
}
