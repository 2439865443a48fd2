//! Cluster IPAM's costs (`bench cluster-ipam`), against the API server of
//! a local cluster's control plane (`scripts/cluster up --nodes 0`) with
//! margay-agents run on the host for nodes without kubelets:
//!
//! - pod ADD and DEL with `datastore: kubernetes` (an agent keeping
//!   headroom) beside `datastore: local`, interleaved, both bpf: the API is
//!   off the ADD path, so they should match;
//! - for reference, what Calico's IPAM pays on every ADD: one create and
//!   one update of an object on this API server, in sequence;
//! - an ADD that must claim a block first (no headroom, blocks of one
//!   address: every ADD asks the agent, which claims in the API);
//! - eight agents claiming at once: claims/s and races lost;
//! - the agent's resident memory and CPU, at rest after the ADDs.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};
use margay_tests::host_agent::HostAgent;
use margay_tests::kube::{KubeCluster, repo_root, wait_for};
use serde::Serialize;

use crate::network::{Kind, Network, Pod};
use crate::procfs::{Process, cpu_percent};
use crate::report::{Table, fmt_ms, fmt_ratio};
use crate::stats::{Summary, ratio};

const POOL_LOCAL: &str = "10.221.0.0/16";
const POOL_KUBERNETES: &str = "10.222.0.0/16";
const POOL_CLAIMS: &str = "10.223.0.0/16";
const POOL_CLAIMANTS: &str = "10.224.0.0/20";
/// How long the agent is watched at rest.
const REST: Duration = Duration::from_secs(20);

#[derive(Debug, Serialize)]
pub struct ClusterIpamReport {
    pub pods: usize,
    pub add_local: Summary,
    pub add_kubernetes: Summary,
    pub del_local: Summary,
    pub del_kubernetes: Summary,
    /// One create and one update on the API server (Calico's per-ADD cost).
    pub api_create_update: Summary,
    /// ADD that claimed a block through the agent first.
    pub add_with_claim: Summary,
    pub claimants: usize,
    pub concurrent_blocks: usize,
    pub concurrent_seconds: f64,
    pub lost_races: usize,
    pub agent_rss_kib: u64,
    pub agent_cpu_percent_at_rest: f64,
}

impl ClusterIpamReport {
    pub fn table(&self) -> Table {
        let mut t = Table::new(["", "p50", "p99", "p50 vs local", "p99 vs local"]);
        let rows = [
            ("ADD, datastore local", &self.add_local),
            ("ADD, datastore kubernetes", &self.add_kubernetes),
            ("DEL, datastore local", &self.del_local),
            ("DEL, datastore kubernetes", &self.del_kubernetes),
            (
                "API create+update (Calico's per ADD)",
                &self.api_create_update,
            ),
            ("ADD claiming a block first", &self.add_with_claim),
        ];
        for (what, s) in rows {
            let base = if what.starts_with("DEL") {
                &self.del_local
            } else {
                &self.add_local
            };
            t.row([
                what.to_string(),
                fmt_ms(s.p50_ms),
                fmt_ms(s.p99_ms),
                fmt_ratio(ratio(s.p50_ms, base.p50_ms)),
                fmt_ratio(ratio(s.p99_ms, base.p99_ms)),
            ]);
        }
        t.row([
            format!("{} agents claiming at once", self.claimants),
            format!(
                "{} blocks in {:.2} s",
                self.concurrent_blocks, self.concurrent_seconds
            ),
            format!(
                "{:.0} claims/s",
                self.concurrent_blocks as f64 / self.concurrent_seconds
            ),
            format!("{} races lost", self.lost_races),
            String::new(),
        ]);
        t.row([
            "agent at rest".to_string(),
            format!("{} MiB RSS", self.agent_rss_kib / 1024),
            format!("{:.2}% of a core", self.agent_cpu_percent_at_rest),
            String::new(),
            String::new(),
        ]);
        t
    }
}

pub fn run(
    bin_dir: std::path::PathBuf,
    peer_dir: std::path::PathBuf,
    pods: usize,
    claims: usize,
    claimants: usize,
) -> Result<ClusterIpamReport> {
    let c = KubeCluster::try_up("bci", &["--nodes", "0"]).map_err(anyhow::Error::msg)?;
    let manifest = repo_root().join("deploy/margay.yaml");
    c.kubectl(&["apply", "-f", manifest.to_str().context("a UTF-8 path")?]);

    // The node "bench": its agent keeps headroom for every pod of the run.
    let agent = HostAgent::start(&c, "bench", &[POOL_KUBERNETES], 26, pods as u32 + 64);
    wait_for(
        "the bench agent's headroom",
        Duration::from_secs(120),
        || agent.settled(&c),
    );
    let local = Network::new(Kind::MargayBpf, POOL_LOCAL, &bin_dir, &peer_dir)?;
    let api = Network::with_ipam(
        Kind::MargayBpf,
        POOL_KUBERNETES,
        &bin_dir,
        &peer_dir,
        agent.ipam_section(&[POOL_KUBERNETES], 26),
    )?;
    let nets = [&local, &api];
    for net in nets {
        for _ in 0..5 {
            let mut pod = Pod::prepare(net, "cw");
            pod.ip = Some(net.add(&pod.ns, &pod.cid)?);
        }
    }
    // Pod i of each network, side by side.
    let mut pairs: Vec<[Pod; 2]> = (0..pods)
        .map(|_| nets.map(|n| Pod::prepare(n, "ci")))
        .collect();
    let mut adds = [Vec::new(), Vec::new()];
    let mut dels = [Vec::new(), Vec::new()];
    for (i, pair) in pairs.iter_mut().enumerate() {
        // Alternate which goes first: a call leaves work behind for the next.
        for k in if i % 2 == 0 { [0, 1] } else { [1, 0] } {
            adds[k].push(pair[k].add_timed()?);
        }
    }
    let (agent_rss_kib, agent_cpu_percent_at_rest) = at_rest(&agent)?;
    for (i, pair) in pairs.iter_mut().enumerate() {
        for k in if i % 2 == 0 { [1, 0] } else { [0, 1] } {
            dels[k].push(pair[k].del_timed()?);
        }
    }
    drop(pairs);
    // The claiming phase's agent is node "bench" too.
    drop(agent);

    let api_create_update = api_round_trips(&c, pods)?;

    // No headroom and blocks of one address: every ADD makes the agent claim.
    let claimer = HostAgent::start(&c, "bench", &[POOL_CLAIMS], 32, 0);
    let claiming = Network::with_ipam(
        Kind::MargayBpf,
        POOL_CLAIMS,
        &bin_dir,
        &peer_dir,
        claimer.ipam_section(&[POOL_CLAIMS], 32),
    )?;
    // Untimed: the first ADD on a fresh BPF root loads the programs.
    let mut claimed_pods = vec![Pod::prepare(&claiming, "cw")];
    claimed_pods[0].add_timed()?;
    let mut add_with_claim = Vec::new();
    for _ in 0..claims {
        let mut pod = Pod::prepare(&claiming, "cc");
        add_with_claim.push(pod.add_timed()?);
        claimed_pods.push(pod);
    }
    drop(claimed_pods);

    let started = Instant::now();
    let racing: Vec<HostAgent> = (0..claimants)
        .map(|i| HostAgent::start(&c, &format!("claimant-{i}"), &[POOL_CLAIMANTS], 26, 6 * 62))
        .collect();
    for a in &racing {
        wait_for(
            &format!("{} settled", a.node()),
            Duration::from_secs(180),
            || a.settled(&c),
        );
    }
    let concurrent_seconds = started.elapsed().as_secs_f64();
    let lost_races = racing.iter().map(HostAgent::lost_races).sum();

    Ok(ClusterIpamReport {
        pods,
        add_local: Summary::of(&adds[0]).context("no samples")?,
        add_kubernetes: Summary::of(&adds[1]).context("no samples")?,
        del_local: Summary::of(&dels[0]).context("no samples")?,
        del_kubernetes: Summary::of(&dels[1]).context("no samples")?,
        api_create_update,
        add_with_claim: Summary::of(&add_with_claim).context("no samples")?,
        claimants,
        concurrent_blocks: claimants * 6,
        concurrent_seconds,
        lost_races,
        agent_rss_kib,
        agent_cpu_percent_at_rest,
    })
}

/// The agent's resident set and its CPU use over [`REST`] of idleness.
fn at_rest(agent: &HostAgent) -> Result<(u64, f64)> {
    let process = Process(agent.pid().context("the agent runs")?);
    let before = process.cpu_ticks()?;
    std::thread::sleep(REST);
    let ticks = process.cpu_ticks()? - before;
    Ok((process.rss_kib()?, cpu_percent(ticks, REST.as_secs_f64())))
}

/// `n` times: create an object, then update it, as Calico's IPAM writes an
/// IPAMHandle and its block on every ADD; each pair timed as one.
fn api_round_trips(c: &KubeCluster, n: usize) -> Result<Summary> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let config = kube::Config::from_custom_kubeconfig(
            kube::config::Kubeconfig::read_from(c.env("KUBECONFIG"))?,
            &kube::config::KubeConfigOptions::default(),
        )
        .await?;
        let api: Api<ConfigMap> = Api::namespaced(kube::Client::try_from(config)?, "default");
        let mut samples = Vec::with_capacity(n);
        for i in 0..n {
            let name = format!("bench-handle-{i}");
            let object = ConfigMap {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    ..ObjectMeta::default()
                },
                ..ConfigMap::default()
            };
            let start = Instant::now();
            api.create(&PostParams::default(), &object).await?;
            let patch = Patch::Merge(serde_json::json!({"data": {"used": i.to_string()}}));
            api.patch(&name, &PatchParams::default(), &patch).await?;
            samples.push(start.elapsed());
            api.delete(&name, &DeleteParams::default()).await?;
        }
        Summary::of(&samples).context("no samples")
    })
}
