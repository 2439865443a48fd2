//! A margay-agent run on the host against a [`KubeCluster`]'s API server,
//! for a node that has no kubelet: the extra block claimants the tests set
//! against the real nodes, and the agent the benchmarks measure. It has a
//! conflist, IPAM store and socket of its own, programs no routes, and a
//! Node object made for it (an agent claims only for a node that exists);
//! both go when it is dropped.
//!
//! ```no_run
//! # use margay_tests::{host_agent::HostAgent, kube::KubeCluster};
//! # let c = KubeCluster::up("x", &["--nodes", "0"]);
//! let agent = HostAgent::start(&c, "claimant-0", &["10.160.0.0/20"], 26, 100);
//! let blocks = agent.blocks();
//! ```

use std::collections::BTreeSet;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use serde_json::{Value, json};

use crate::bins::bin;
use crate::kube::KubeCluster;

pub struct HostAgent {
    node: String,
    kubeconfig: String,
    kubectl: String,
    dir: tempfile::TempDir,
    min_free: u32,
    empty_block_grace: &'static str,
    health: SocketAddr,
    child: Option<Child>,
}

impl HostAgent {
    /// Starts an agent for `node` claiming blocks of `block_size` from
    /// `pools`, keeping `min_free` addresses at hand.
    pub fn start(
        c: &KubeCluster,
        node: &str,
        pools: &[&str],
        block_size: u8,
        min_free: u32,
    ) -> HostAgent {
        let mut agent = HostAgent {
            node: node.to_string(),
            kubeconfig: c.env("KUBECONFIG").to_string(),
            kubectl: c.env("KUBECTL").to_string(),
            dir: tempfile::tempdir().expect("a temporary directory"),
            min_free,
            empty_block_grace: "5m",
            health: free_port(),
            child: None,
        };
        let conflist = json!({
            "cniVersion": "1.0.0",
            "name": "k8s-pod-network",
            "plugins": [{
                "type": "margay",
                "dataplane": "linux",
                "nodename": node,
                "ipam": agent.ipam_section(pools, block_size),
            }]
        });
        std::fs::write(agent.conflist(), conflist.to_string()).expect("writing the conflist");
        c.apply(&format!(
            "apiVersion: v1\nkind: Node\nmetadata: {{name: {node}, labels: {{margay.dev/host-agent: \"true\"}}}}\n"
        ));
        agent.restart();
        agent
    }

    /// The `ipam` section of the agent's conflist, for a network whose
    /// ADDs this agent is to serve.
    pub fn ipam_section(&self, pools: &[&str], block_size: u8) -> Value {
        json!({
            "type": "margay-ipam",
            "datastore": "kubernetes",
            "pools": pools,
            "block_size": block_size,
            "data_dir": self.dir.path().join("ipam"),
            "agent_socket": self.dir.path().join("agent.sock"),
            "lock_timeout_ms": 30000,
        })
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    pub fn min_free(&self) -> u32 {
        self.min_free
    }

    pub fn conflist(&self) -> PathBuf {
        self.dir.path().join("10-margay.conflist")
    }

    /// Starts it (again, after [`kill`](Self::kill)).
    pub fn restart(&mut self) {
        self.kill();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("agent.log"))
            .expect("the agent's log file");
        let child = Command::new(bin("margay-agent"))
            .env_clear()
            .env("KUBECONFIG", &self.kubeconfig)
            .env("NODENAME", &self.node)
            .env("MARGAY_CONFLIST", self.conflist())
            .env("MARGAY_HEALTH_ADDR", self.health.to_string())
            .env("MARGAY_AGENT_ROUTES", "false")
            .env("MARGAY_IPAM_MIN_FREE", self.min_free.to_string())
            .env("MARGAY_IPAM_EMPTY_BLOCK_GRACE", self.empty_block_grace)
            .env("MARGAY_LOG_LEVEL", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("margay-agent starts");
        self.child = Some(child);
    }

    /// Restarts it keeping `min_free` addresses at hand, giving back empty
    /// blocks beyond that after `empty_block_grace` (`"1s"`).
    pub fn restart_with(&mut self, min_free: u32, empty_block_grace: &'static str) {
        self.min_free = min_free;
        self.empty_block_grace = empty_block_grace;
        self.restart();
    }

    /// SIGKILL, as a crash would end it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    /// How many claims it lost to another node (its log says each).
    pub fn lost_races(&self) -> usize {
        self.log()
            .matches("another node claimed the block first")
            .count()
    }

    /// `margay-ipam blocks --json` over its store: each block with what the
    /// API says of it.
    pub fn blocks(&self) -> Vec<Value> {
        let out = Command::new(bin("margay-ipam"))
            .arg("--conf")
            .arg(self.conflist())
            .args(["blocks", "--json"])
            .output()
            .expect("margay-ipam runs");
        assert!(
            out.status.success(),
            "margay-ipam blocks: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("margay-ipam blocks --json prints JSON")
    }

    /// The blocks of its store once they are exactly those the API gives
    /// it and hold at least its headroom; `Err` says how far it is.
    pub fn settled(&self, c: &KubeCluster) -> Result<BTreeSet<String>, String> {
        let list = c.kubectl_json(&["get", "ipamblocks"]);
        let held: BTreeSet<String> = list["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|o| o["spec"]["node"] == self.node.as_str())
            .filter_map(|o| o["spec"]["cidr"].as_str().map(String::from))
            .collect();
        let blocks = self.blocks();
        let stored: BTreeSet<String> = blocks
            .iter()
            .filter_map(|b| b["cidr"].as_str().map(String::from))
            .collect();
        let capacity: u64 = blocks.iter().filter_map(|b| b["capacity"].as_u64()).sum();
        if stored == held && capacity >= u64::from(self.min_free) {
            Ok(stored)
        } else {
            Err(format!(
                "{}: API {held:?}, store {stored:?} ({capacity} addresses of {} wanted)\n{}",
                self.node,
                self.min_free,
                self.log()
            ))
        }
    }

    /// Where it serves /livez, /readyz and /metrics.
    pub fn health_addr(&self) -> SocketAddr {
        self.health
    }
}

impl Drop for HostAgent {
    fn drop(&mut self) {
        self.kill();
        let _ = Command::new(&self.kubectl)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(["delete", "node", &self.node, "--wait=false"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A loopback port nobody listens on now.
fn free_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding a loopback port");
    listener.local_addr().expect("its address")
}
