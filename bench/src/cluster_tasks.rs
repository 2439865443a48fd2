//! Processes of a local cluster's node the benchmarks watch or enter:
//! containers by their containerd task, and pods that only sleep (the
//! benchmarks run their own processes in their network namespaces).

use anyhow::{Context, Result};
use margay_tests::kube::KubeCluster;

/// The host pid of container `id` on node `i`, from the node's containerd.
///
/// # Errors
/// The node's containerd has no such task.
pub fn task_pid(c: &KubeCluster, i: usize, id: &str) -> Result<u32> {
    let tasks = c.on_node_ok(i, &["ctr", "-n", "k8s.io", "task", "ls"]);
    tasks
        .lines()
        .find(|l| l.starts_with(id))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .with_context(|| format!("no task {id} on node {i}: {tasks}"))
}

/// The pid of node `i`'s margay-agent.
///
/// # Errors
/// The agent's container is not running.
pub fn margay_agent(c: &KubeCluster, i: usize) -> Result<u32> {
    let id = c
        .margay_container(i, "margay-agent")
        .map_err(anyhow::Error::msg)?;
    task_pid(c, i, &id)
}

/// A Deployment of `replicas` sleeping busybox pods bound to `node`.
pub fn bound_sleepers(name: &str, node: &str, replicas: usize) -> String {
    format!(
        r#"---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      nodeName: {node}
      terminationGracePeriodSeconds: 1
      tolerations: [{{operator: Exists}}]
      containers:
      - name: sleep
        image: localhost/busybox:latest
        imagePullPolicy: Never
        command: ["sleep", "86400"]
        resources: {{requests: {{cpu: 1m, memory: 1Mi}}}}
"#
    )
}
