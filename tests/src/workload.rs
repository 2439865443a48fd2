//! What tests run on a [`KubeCluster`]: busybox web pods that echo the
//! client address they see, found through the API and talked to with
//! `kubectl exec`.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use ipnetwork::Ipv4Network;
use serde_json::Value;

use crate::kube::{KubeCluster, wait_for};

/// How long pods may take to run (the suite shares two cores).
pub const POD_WAIT: Duration = Duration::from_secs(120);
/// The port the test pods serve their address-echo CGI on.
pub const PORT: u16 = 8080;

/// A Deployment of `replicas` busybox pods serving `GET /cgi-bin/ip`, which
/// answers the client's address as the pod saw it. (Debian's busybox-static
/// `wget` crashes, so clients use `nc`.)
pub fn web(name: &str, replicas: u32) -> String {
    deployment(name, replicas, "")
}

/// [`web`], its pods spread evenly over the nodes (at most one more on any
/// node than on another).
pub fn web_across_nodes(name: &str, replicas: u32) -> String {
    deployment(
        name,
        replicas,
        &format!(
            r#"
      topologySpreadConstraints:
      - maxSkew: 1
        topologyKey: kubernetes.io/hostname
        whenUnsatisfiable: DoNotSchedule
        labelSelector: {{matchLabels: {{app: {name}}}}}"#
        ),
    )
}

fn deployment(name: &str, replicas: u32, placement: &str) -> String {
    format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      terminationGracePeriodSeconds: 1{placement}
      containers:
      - name: web
        image: localhost/busybox:latest
        imagePullPolicy: Never
        command: ["sh", "-c", "mkdir -p /www/cgi-bin && printf '#!/bin/sh\\necho\\necho $REMOTE_ADDR\\n' >/www/cgi-bin/ip && chmod +x /www/cgi-bin/ip && echo serving && exec httpd -f -p {PORT} -h /www"]
"#
    )
}

/// A pod as the API reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct Pod {
    pub name: String,
    pub ip: Ipv4Addr,
    pub restarts: u64,
    /// The node it runs on.
    pub node: String,
}

/// The pods of Deployment `app`, once `count` of them run with an address.
pub fn running_pods(c: &KubeCluster, app: &str, count: usize) -> Vec<Pod> {
    wait_for(&format!("{count} running pods of {app}"), POD_WAIT, || {
        let list = c.kubectl_json(&["get", "pods", "-l", &format!("app={app}")]);
        let items = list["items"].as_array().cloned().unwrap_or_default();
        let pods: Vec<Pod> = items
            .iter()
            .filter(|p| {
                p["status"]["phase"] == "Running" && p["metadata"]["deletionTimestamp"].is_null()
            })
            .filter_map(|p| {
                Some(Pod {
                    name: p["metadata"]["name"].as_str()?.to_string(),
                    ip: p["status"]["podIP"].as_str()?.parse().ok()?,
                    restarts: p["status"]["containerStatuses"][0]["restartCount"].as_u64()?,
                    node: p["spec"]["nodeName"].as_str()?.to_string(),
                })
            })
            .collect();
        if pods.len() == count && items.len() == count {
            Ok(pods)
        } else {
            Err(format!("{} of {} running: {list}", pods.len(), items.len()))
        }
    })
}

/// What the echo CGI at `to` says `from`'s address is, or why none came.
pub fn seen_address(c: &KubeCluster, from: &Pod, to: SocketAddrV4) -> Result<String, String> {
    let request = format!(
        "printf 'GET /cgi-bin/ip HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {} {}",
        to.ip(),
        to.port()
    );
    let out = c.try_kubectl(&["exec", &from.name, "--", "sh", "-c", &request]);
    if !out.success {
        return Err(format!("kubectl exec {} → {to}: {}", from.name, out.stderr));
    }
    Ok(out
        .stdout
        .lines()
        .last()
        .unwrap_or_default()
        .trim()
        .trim_matches(['[', ']'])
        .trim_start_matches("::ffff:")
        .to_string())
}

/// Every string in a JSON document that is an address (or a CIDR's
/// address) in `pool`: the tests compare sets of pod addresses, whatever
/// field names a tool's output uses.
pub fn addresses_in(json: &str, pool: Ipv4Network) -> BTreeSet<Ipv4Addr> {
    fn walk(v: &Value, pool: Ipv4Network, out: &mut BTreeSet<Ipv4Addr>) {
        match v {
            Value::String(s) => {
                if let Ok(a) = s.split('/').next().unwrap().parse::<Ipv4Addr>()
                    && pool.contains(a)
                {
                    out.insert(a);
                }
            }
            Value::Array(a) => a.iter().for_each(|v| walk(v, pool, out)),
            Value::Object(m) => m.values().for_each(|v| walk(v, pool, out)),
            _ => {}
        }
    }
    let v: Value = serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {json}"));
    let mut out = BTreeSet::new();
    walk(&v, pool, &mut out);
    out
}

/// The cluster's pod pool.
pub fn pod_cidr(c: &KubeCluster) -> Ipv4Network {
    c.env("POD_CIDR").parse().unwrap()
}
