//! A real Kubernetes cluster for one test: `scripts/cluster up` under a
//! name of its own (`MARGAY_CLUSTER`), so tests run side by side, and
//! `scripts/cluster down` on drop, even when the test panics.
//!
//! ```no_run
//! use margay_tests::kube::KubeCluster;
//! let c = KubeCluster::up("dp", &["--nodes", "1", "--dataplane", "bpf"]);
//! c.kubectl(&["get", "nodes"]);
//! let veths = c.on_node(0, &["ip", "-br", "link", "show", "type", "veth"]);
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::netns::unique_name;
use crate::process::{Output, run_bounded};

/// `up` builds nothing when the components and images are there (the
/// suite's script builds them first); starting is ~15 s per node on an
/// idle machine, and the suite's other tests share the two cores.
const UP_TIMEOUT: Duration = Duration::from_secs(360);
const DOWN_TIMEOUT: Duration = Duration::from_secs(120);
const KUBECTL_TIMEOUT: Duration = Duration::from_secs(90);

/// One cluster, taken down on drop.
pub struct KubeCluster {
    name: String,
    env: HashMap<String, String>,
}

/// The repository's root (tests/ is one of its crates).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

fn script() -> PathBuf {
    repo_root().join("scripts/cluster")
}

impl KubeCluster {
    /// Starts cluster `<tag><pid>x<n>` with `scripts/cluster up ARGS`, or
    /// panics with its output (having taken down what it made).
    pub fn up(tag: &str, args: &[&str]) -> KubeCluster {
        KubeCluster::try_up(tag, args).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`up`](Self::up), with `up`'s output as the error when it fails.
    ///
    /// # Errors
    /// `scripts/cluster up` failed or wrote no env file.
    pub fn try_up(tag: &str, args: &[&str]) -> Result<KubeCluster, String> {
        let mut c = KubeCluster::attach(&unique_name(tag));
        let out = c.script(&[&["up"], args].concat(), UP_TIMEOUT);
        if !out.success {
            return Err(format!(
                "scripts/cluster up {args:?} (cluster {}):\n{}{}",
                c.name, out.stdout, out.stderr
            ));
        }
        let env = c.state_dir().join("env");
        let text = std::fs::read_to_string(&env).map_err(|e| format!("{}: {e}", env.display()))?;
        c.env = parse_env(&text);
        Ok(c)
    }

    /// Owns cluster `name` as it is (started by someone else, perhaps
    /// half-way): for [`script`](Self::script) and the `down` on drop.
    pub fn attach(name: &str) -> KubeCluster {
        KubeCluster {
            name: name.to_string(),
            env: HashMap::new(),
        }
    }

    /// The link `up` made in the host's namespace, as `status` names it
    /// (`None` once the LAN is gone).
    pub fn host_link(&self) -> Option<String> {
        let out = self.script(&["status"], Duration::from_secs(30));
        let line = out
            .stdout
            .lines()
            .find(|l| l.trim_start().starts_with("LAN "))?;
        let rest = line.split_once(" (")?.1;
        Some(rest.split([')', ',']).next()?.to_string())
    }

    /// The cluster's name (`MARGAY_CLUSTER`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `target/cluster/<name>`: certs, logs, pids, the nodes' directories.
    pub fn state_dir(&self) -> PathBuf {
        repo_root().join("target/cluster").join(&self.name)
    }

    /// A value of the env file `up` wrote (`NODE_IP_0`, `POD_CIDR`, ...).
    pub fn env(&self, key: &str) -> &str {
        self.env
            .get(key)
            .unwrap_or_else(|| panic!("{key} is not in the cluster's env file"))
    }

    /// Runs `scripts/cluster ARGS` for this cluster.
    pub fn script(&self, args: &[&str], timeout: Duration) -> Output {
        let mut cmd = Command::new(script());
        cmd.args(args).env("MARGAY_CLUSTER", &self.name);
        run_bounded(&mut cmd, timeout)
    }

    /// `kubectl ARGS` as the cluster's admin.
    pub fn try_kubectl(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(self.env("KUBECTL"));
        cmd.arg("--kubeconfig")
            .arg(self.env("KUBECONFIG"))
            .args(args);
        run_bounded(&mut cmd, KUBECTL_TIMEOUT)
    }

    /// `kubectl ARGS`'s stdout; panics with its stderr when it fails.
    pub fn kubectl(&self, args: &[&str]) -> String {
        let out = self.try_kubectl(args);
        assert!(
            out.success,
            "kubectl {args:?}: {}{}",
            out.stdout, out.stderr
        );
        out.stdout
    }

    /// `kubectl ARGS -o json`, parsed.
    pub fn kubectl_json(&self, args: &[&str]) -> Value {
        let text = self.kubectl(&[args, &["-o", "json"]].concat());
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("kubectl {args:?}: {e}: {text}"))
    }

    /// Each node's Ready condition and taints, one line per node: what
    /// decides whether a pod can be scheduled, for a test's failure.
    pub fn nodes_state(&self) -> String {
        let out = self.try_kubectl(&[
            "get",
            "nodes",
            "-o",
            "jsonpath={range .items[*]}{.metadata.name}: Ready={.status.conditions[?(@.type==\"Ready\")].status} taints={.spec.taints}{\"\\n\"}{end}",
        ]);
        if out.success {
            out.stdout
        } else {
            format!("(kubectl get nodes failed: {})", out.stderr)
        }
    }

    /// `kubectl apply` of `manifest` (YAML or JSON).
    pub fn apply(&self, manifest: &str) {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), manifest).unwrap();
        self.kubectl(&["apply", "-f", file.path().to_str().unwrap()]);
    }

    /// Runs `cmd` on node `i` in its network, mount and UTS namespaces
    /// (`scripts/cluster exec`): its CNI dirs, bpffs and pods' veths.
    pub fn on_node(&self, i: usize, cmd: &[&str]) -> Output {
        self.script(
            &[&["exec", &i.to_string()], cmd].concat(),
            Duration::from_secs(60),
        )
    }

    /// [`on_node`](Self::on_node)'s stdout; panics when it fails.
    pub fn on_node_ok(&self, i: usize, cmd: &[&str]) -> String {
        let out = self.on_node(i, cmd);
        assert!(out.success, "on node {i}: {cmd:?}: {}", out.stderr);
        out.stdout
    }

    /// The pid of component `name` (`<node>-containerd`, `<node>-kubelet`,
    /// `kube-apiserver`, ...) from its pid file.
    pub fn pid_of(&self, name: &str) -> Option<u32> {
        let text =
            std::fs::read_to_string(self.state_dir().join("pids").join(format!("{name}.pid")))
                .ok()?;
        text.split_whitespace().next()?.parse().ok()
    }

    /// The containerd id of container `name` (`margay-agent`, ...) of the
    /// margay-node pod on node `i`, for `ctr -n k8s.io task ...` there.
    ///
    /// # Errors
    /// There is no such pod or container (yet).
    pub fn margay_container(&self, i: usize, name: &str) -> Result<String, String> {
        let node = self.node_name(i).to_string();
        let pods = self.kubectl_json(&[
            "-n",
            "margay-system",
            "get",
            "pods",
            "--field-selector",
            &format!("spec.nodeName={node}"),
        ]);
        pods["items"][0]["status"]["containerStatuses"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|s| s["name"] == name)
            .and_then(|s| s["containerID"].as_str()?.strip_prefix("containerd://"))
            .map(String::from)
            .ok_or_else(|| format!("no {name} container on {node}: {pods}"))
    }

    /// The pid (in the machine's pid namespace, which the nodes share) of
    /// container `name` of node `i`'s margay-node pod.
    pub fn margay_container_pid(&self, i: usize, name: &str) -> u32 {
        let id = self.margay_container(i, name).unwrap();
        let tasks = self.on_node_ok(i, &["ctr", "-n", "k8s.io", "task", "ls"]);
        tasks
            .lines()
            .find_map(|l| {
                let mut fields = l.split_whitespace();
                (fields.next()? == id).then(|| fields.next()?.parse().ok())?
            })
            .unwrap_or_else(|| panic!("no task {id} ({name}) on node {i}: {tasks}"))
    }

    /// SIGKILLs container `name` of node `i`'s margay-node pod through the
    /// node's own containerd (the machine's process table holds every
    /// cluster's); kubelet starts it again.
    pub fn kill_margay_container(&self, i: usize, name: &str) {
        let id = self.margay_container(i, name).unwrap();
        self.on_node_ok(
            i,
            &["ctr", "-n", "k8s.io", "task", "kill", "-s", "SIGKILL", &id],
        );
    }

    /// The name of node `i` (its Node object).
    pub fn node_name(&self, i: usize) -> &str {
        self.env(&format!("NODE_NAME_{i}"))
    }
}

impl Drop for KubeCluster {
    fn drop(&mut self) {
        // `down` finishes what an interrupted one left: a second try after
        // a timeout (a thousand pods' processes to stop) leaves nothing.
        for attempt in 1..=2 {
            let out = self.script(&["down"], DOWN_TIMEOUT);
            if out.success {
                return;
            }
            eprintln!(
                "scripts/cluster down ({}), attempt {attempt}: {}{}",
                self.name, out.stdout, out.stderr
            );
        }
    }
}

/// The env file's `NAME=value` lines (values as `%q` quoted them: the
/// ones `up` writes are paths, names and addresses, which need no quotes).
fn parse_env(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.starts_with("export "))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Calls `probe` every 200 ms until it gives a value, or panics after
/// `timeout` naming `what` and the probe's last complaint.
pub fn wait_for<T>(what: &str, timeout: Duration, probe: impl FnMut() -> Result<T, String>) -> T {
    wait_for_explained(what, timeout, String::new, probe)
}

/// [`wait_for`], whose panic adds what `explain` says then (the state
/// behind the probe's complaint, too costly to gather on every try).
pub fn wait_for_explained<T>(
    what: &str,
    timeout: Duration,
    explain: impl FnOnce() -> String,
    mut probe: impl FnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match probe() {
            Ok(v) => return v,
            Err(e) if Instant::now() >= deadline => {
                panic!(
                    "gave up after {timeout:?} waiting for {what}: {e}\n{}",
                    explain()
                )
            }
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// A process stopped (SIGSTOP) until dropped (SIGCONT).
pub struct Stopped(nix::unistd::Pid);

impl Stopped {
    pub fn process(pid: u32) -> Stopped {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap());
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
        Stopped(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(self.0, nix::sys::signal::Signal::SIGCONT);
    }
}

/// The value of the first sample of `name` (with these label text bits).
pub fn sample(metrics: &str, name: &str, labels: &str) -> Option<f64> {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| l.starts_with(name) && l.contains(labels))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}
