//! margay-agent's footprint (`bench agent-load`): resident memory and CPU of
//! the agents of a three-node local cluster at rest, while a thousand pods
//! are created, and at rest with them.
//!
//! Each node runs `per_node` real pods (bound to it by name: kubelet, CNI
//! ADD, the agent's pod watch and leak check all see them); the rest of the
//! thousand are bound to Node objects that have no kubelet (they stay
//! Pending, tolerating the not-ready taints so nothing evicts them). An
//! agent watches only its own node's pods, so what the others add to its
//! load is the cluster's Nodes and IPAMBlocks, which it does watch whole.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use margay_tests::kube::KubeCluster;
use serde::Serialize;

use crate::cluster_tasks::{bound_sleepers, margay_agent};
use crate::procfs::{Process, cpu_percent};
use crate::report::Table;

/// How long each window of CPU time is.
const WINDOW: Duration = Duration::from_secs(20);
/// Node objects without a kubelet that hold the rest of the pods.
const PAPER_NODES: usize = 7;
const CREATE_TIMEOUT: Duration = Duration::from_secs(900);

#[derive(Debug, Serialize)]
pub struct AgentLoadReport {
    pub pods: usize,
    pub running_pods: usize,
    pub phases: Vec<Phase>,
}

/// The agents over one phase: each node's agent's RSS at its end and CPU
/// over it.
#[derive(Debug, Serialize)]
pub struct Phase {
    pub what: String,
    pub seconds: f64,
    pub rss_mib: Vec<f64>,
    pub cpu_percent: Vec<f64>,
}

impl AgentLoadReport {
    pub fn table(&self) -> Table {
        let mut t = Table::new([
            "",
            "seconds",
            "RSS MiB (per node)",
            "CPU % of a core (per node)",
        ]);
        let list = |v: &[f64]| {
            v.iter()
                .map(|x| format!("{x:.1}"))
                .collect::<Vec<_>>()
                .join(" / ")
        };
        for p in &self.phases {
            t.row([
                p.what.clone(),
                format!("{:.0}", p.seconds),
                list(&p.rss_mib),
                list(&p.cpu_percent),
            ]);
        }
        t
    }
}

/// Watches `agents` while `work` runs (or for [`WINDOW`] when it is `None`).
fn phase(what: &str, agents: &[Process], work: Option<&dyn Fn() -> Result<()>>) -> Result<Phase> {
    let before = agents
        .iter()
        .map(Process::cpu_ticks)
        .collect::<Result<Vec<_>>>()?;
    let start = Instant::now();
    match work {
        Some(w) => w()?,
        None => std::thread::sleep(WINDOW),
    }
    let seconds = start.elapsed().as_secs_f64();
    let after = agents
        .iter()
        .map(Process::cpu_ticks)
        .collect::<Result<Vec<_>>>()?;
    Ok(Phase {
        what: what.to_string(),
        seconds,
        rss_mib: agents
            .iter()
            .map(|a| Ok(a.rss_kib()? as f64 / 1024.0))
            .collect::<Result<_>>()?,
        cpu_percent: before
            .iter()
            .zip(&after)
            .map(|(b, a)| cpu_percent(a - b, seconds))
            .collect(),
    })
}

pub fn run(pods: usize, per_node: usize) -> Result<AgentLoadReport> {
    if per_node * 3 > pods || per_node > 100 {
        bail!("--per-node {per_node}: at most 100 (kubelet's 110 pods) and a third of --pods");
    }
    let c = KubeCluster::try_up("bal", &["--nodes", "3"]).map_err(anyhow::Error::msg)?;
    let agents = (0..3)
        .map(|i| Ok(Process(margay_agent(&c, i)?)))
        .collect::<Result<Vec<_>>>()?;
    let mut phases = vec![phase("at rest, no pods", &agents, None)?];

    let mut manifest = String::new();
    for i in 0..PAPER_NODES {
        manifest.push_str(&format!(
            "---\napiVersion: v1\nkind: Node\nmetadata: {{name: bench-paper-{i}}}\n"
        ));
    }
    let on_paper = pods - 3 * per_node;
    for i in 0..3 {
        manifest.push_str(&bound_sleepers(
            &format!("real-{i}"),
            c.node_name(i),
            per_node,
        ));
    }
    for i in 0..PAPER_NODES {
        let share = on_paper / PAPER_NODES + usize::from(i < on_paper % PAPER_NODES);
        manifest.push_str(&bound_sleepers(
            &format!("paper-{i}"),
            &format!("bench-paper-{i}"),
            share,
        ));
    }
    let create = || -> Result<()> {
        c.apply(&manifest);
        let deadline = Instant::now() + CREATE_TIMEOUT;
        loop {
            let list = c.kubectl_json(&["get", "pods"]);
            let items = list["items"].as_array().cloned().unwrap_or_default();
            let running = items
                .iter()
                .filter(|p| p["status"]["phase"] == "Running")
                .count();
            if items.len() >= pods && running >= 3 * per_node {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "{} pods, {running} running after {CREATE_TIMEOUT:?}",
                    items.len()
                );
            }
            std::thread::sleep(Duration::from_secs(2));
        }
    };
    phases.push(phase(
        &format!("creating {pods} pods ({} running)", 3 * per_node),
        &agents,
        Some(&create),
    )?);
    phases.push(phase(&format!("at rest, {pods} pods"), &agents, None)?);
    Ok(AgentLoadReport {
        pods,
        running_pods: 3 * per_node,
        phases,
    })
}
