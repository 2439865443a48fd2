//! What tests run on a [`KubeCluster`]: busybox web pods that echo the
//! client address they see, found through the API and talked to with
//! `kubectl exec`.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use ipnetwork::Ipv4Network;
use serde_json::Value;

use crate::kube::{KubeCluster, wait_for, wait_for_explained};
use crate::netns::NetNs;

/// How long pods may take to run (the suite shares two cores).
pub const POD_WAIT: Duration = Duration::from_secs(120);
/// The port the test pods serve their address-echo CGI on.
pub const PORT: u16 = 8080;

/// A Deployment of `replicas` busybox pods serving `GET /cgi-bin/ip`, which
/// answers the client's address as the pod saw it, and `GET /cgi-bin/who`,
/// which answers the pod's name and then that address. (Debian's
/// busybox-static `wget` crashes, so clients use `nc`.)
pub fn web(name: &str, replicas: u32) -> String {
    Web::default().manifest(name, replicas)
}

/// [`web`], its pods spread evenly over the nodes (at most one more on any
/// node than on another).
pub fn web_across_nodes(name: &str, replicas: u32) -> String {
    Web {
        placement: spread(name),
        ..Web::default()
    }
    .manifest(name, replicas)
}

/// [`web`], every pod on node `node`.
pub fn web_on_node(name: &str, replicas: u32, node: &str) -> String {
    Web {
        placement: format!("\n      nodeName: {node}"),
        ..Web::default()
    }
    .manifest(name, replicas)
}

/// [`web_across_nodes`], a pod ready only once it answers (a readiness
/// probe), and rolled one pod at a time, the old one going only once the
/// new one is ready: a Deployment a rolling update must not interrupt.
pub fn web_rolled_safely(name: &str, replicas: u32) -> String {
    Web {
        placement: spread(name),
        strategy: "\n  strategy: {rollingUpdate: {maxUnavailable: 0, maxSurge: 1}}".into(),
        probe: format!(
            r#"
        readinessProbe:
          httpGet: {{path: /cgi-bin/ip, port: {PORT}}}
          periodSeconds: 1"#
        ),
    }
    .manifest(name, replicas)
}

fn spread(name: &str) -> String {
    format!(
        r#"
      topologySpreadConstraints:
      - maxSkew: 1
        topologyKey: kubernetes.io/hostname
        whenUnsatisfiable: DoNotSchedule
        labelSelector: {{matchLabels: {{app: {name}}}}}"#
    )
}

/// What a web Deployment adds to the plain one: YAML lines for the
/// Deployment's spec, the pod's spec and the container.
#[derive(Default)]
struct Web {
    strategy: String,
    placement: String,
    probe: String,
}

impl Web {
    fn manifest(&self, name: &str, replicas: u32) -> String {
        let Web {
            strategy,
            placement,
            probe,
        } = self;
        format!(
            r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}}}
spec:{strategy}
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
        command: ["sh", "-c", "mkdir -p /www/cgi-bin && printf '#!/bin/sh\\necho\\necho $REMOTE_ADDR\\n' >/www/cgi-bin/ip && printf '#!/bin/sh\\necho\\necho $(hostname) $REMOTE_ADDR\\n' >/www/cgi-bin/who && chmod +x /www/cgi-bin/ip /www/cgi-bin/who && echo serving && exec httpd -f -p {PORT} -h /www"]{probe}
"#
        )
    }
}

/// A pod as the API reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct Pod {
    pub name: String,
    pub ip: Ipv4Addr,
    /// Its IPv6 address, in a dual-stack cluster.
    pub ip6: Option<Ipv6Addr>,
    pub restarts: u64,
    /// The node it runs on.
    pub node: String,
}

/// The pods of Deployment `app`, once `count` of them run with an address.
pub fn running_pods(c: &KubeCluster, app: &str, count: usize) -> Vec<Pod> {
    let what = format!("{count} running pods of {app}");
    let explain = || format!("nodes:\n{}", c.nodes_state());
    wait_for_explained(&what, POD_WAIT, explain, || {
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
                    ip6: p["status"]["podIPs"]
                        .as_array()?
                        .iter()
                        .find_map(|ip| ip["ip"].as_str()?.parse().ok()),
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

/// Pod `pod`'s network namespace, entered through one of its node's
/// containerd tasks (`/proc/PID/ns/net`; the runtime's `/run/netns` files
/// are mounts of the node's own mount namespace), found by the pod's
/// address: for sockets a test opens inside the pod, such as a UDP server
/// busybox cannot be.
pub fn pod_netns(c: &KubeCluster, pod: &Pod) -> NetNs {
    let nodes: usize = c.env("NODES").parse().unwrap();
    let i = (0..nodes)
        .find(|&i| c.node_name(i) == pod.node)
        .unwrap_or_else(|| panic!("{} runs on no node of the cluster", pod.name));
    let tasks = c.on_node_ok(i, &["ctr", "-n", "k8s.io", "task", "ls"]);
    let inet = format!("inet {}/", pod.ip);
    tasks
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u32>().ok())
        .map(|pid| NetNs::existing(std::path::Path::new(&format!("/proc/{pid}/ns/net"))))
        .find(|ns| {
            String::from_utf8_lossy(&ns.run(&["ip", "-4", "-o", "addr", "show"]).stdout)
                .contains(&inet)
        })
        .unwrap_or_else(|| {
            panic!(
                "no task on {} is in {}'s namespace: {tasks}",
                pod.node, pod.name
            )
        })
}

/// What the echo CGI at `to` says `from`'s address is, or why none came.
pub fn seen_address(
    c: &KubeCluster,
    from: &Pod,
    to: impl Into<SocketAddr>,
) -> Result<String, String> {
    let to = to.into();
    let request = format!(
        "printf 'GET /cgi-bin/ip HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {} {}",
        to.ip(),
        to.port()
    );
    let out = c.try_kubectl(&["exec", &from.name, "--", "sh", "-c", &request]);
    if !out.success {
        return Err(format!("kubectl exec {} → {to}: {}", from.name, out.stderr));
    }
    Ok(plain_address(out.stdout.lines().last().unwrap_or_default()))
}

/// An address as busybox httpd's CGI gives it (`[::ffff:10.0.0.1]` for an
/// IPv4 client), plain.
fn plain_address(s: &str) -> String {
    s.trim()
        .trim_matches(['[', ']'])
        .trim_start_matches("::ffff:")
        .to_string()
}

/// One answer of `GET /cgi-bin/who`: which pod answered, and the client
/// address it saw; `None` when the request failed.
pub type Who = Option<(String, String)>;

/// The shell loop of `count` `GET /cgi-bin/who` requests to `to` with `nc`
/// (`nc` the command naming it), one `answer:` line each.
fn who_loop(nc: &str, to: SocketAddr, count: usize) -> String {
    format!(
        "for i in $(seq {count}); do r=$(printf 'GET /cgi-bin/who HTTP/1.0\\r\\n\\r\\n' | {nc} -w 2 {} {} | tail -n 1); echo \"answer:$r\"; done",
        to.ip(),
        to.port()
    )
}

fn parse_who(out: &str) -> Vec<Who> {
    out.lines()
        .filter_map(|l| l.strip_prefix("answer:"))
        .map(|a| {
            let (pod, seen) = a.trim().split_once(' ')?;
            Some((pod.to_string(), plain_address(seen)))
        })
        .collect()
}

/// `count` requests from pod `from` to `to`, each a new connection.
pub fn who_from_pod(
    c: &KubeCluster,
    from: &Pod,
    to: impl Into<SocketAddr>,
    count: usize,
) -> Vec<Who> {
    let out = c.try_kubectl(&[
        "exec",
        &from.name,
        "--",
        "sh",
        "-c",
        &who_loop("nc", to.into(), count),
    ]);
    parse_who(&out.stdout)
}

/// `count` requests from the cluster's external client (a namespace on
/// the LAN, no Kubernetes on it) to `to`.
pub fn who_from_outside(c: &KubeCluster, to: impl Into<SocketAddr>, count: usize) -> Vec<Who> {
    let out = crate::process::run_bounded(
        std::process::Command::new("ip").args([
            "netns",
            "exec",
            c.env("EXTERNAL_NETNS"),
            "sh",
            "-c",
            &who_loop("/bin/busybox nc", to.into(), count),
        ]),
        Duration::from_secs(30 + 3 * count as u64),
    );
    parse_who(&out.stdout)
}

/// An HTTP GET from node `i`'s own namespace (bash's /dev/tcp: nothing to
/// install): the status line and the body.
pub fn http_get_status(
    c: &KubeCluster,
    i: usize,
    addr: &str,
    path: &str,
) -> Result<(String, String), String> {
    let (host, port) = addr.split_once(':').unwrap();
    let script = format!(
        "exec 3<>/dev/tcp/{host}/{port} && printf 'GET {path} HTTP/1.0\\r\\n\\r\\n' >&3 && cat <&3"
    );
    let out = c.on_node(i, &["bash", "-c", &script]);
    if !out.success {
        return Err(out.stderr);
    }
    // The headers end at the first empty line: "\r\n\r\n", or a bare
    // "\n" where a busybox CGI script ends them.
    let (head, body) = ["\r\n\r\n", "\r\n\n", "\n\n"]
        .iter()
        .filter_map(|end| Some((out.stdout.find(end)?, end.len())))
        .min()
        .map(|(at, len)| (&out.stdout[..at], &out.stdout[at + len..]))
        .ok_or("no HTTP response")?;
    let status = head.lines().next().unwrap_or_default().to_string();
    Ok((status, body.to_string()))
}

/// [`http_get_status`]'s body, when the status is 200.
pub fn http_get(c: &KubeCluster, i: usize, addr: &str, path: &str) -> Result<String, String> {
    let (status, body) = http_get_status(c, i, addr, path)?;
    if status.contains(" 200 ") {
        Ok(body)
    } else {
        Err(format!("{status}\n{body}"))
    }
}

/// A busybox pod `name` on node `node` running `command` (the YAML after
/// `command:`, a flow list or block list items on the lines below).
pub fn busybox_pod(name: &str, node: &str, command: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  nodeName: {node}
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: localhost/busybox:latest
    imagePullPolicy: Never
    command:{command}
"#
    )
}

/// A pod that requests `GET /cgi-bin/who` from a target every tenth of a
/// second, each a new connection, for as long as it runs: its log counts
/// the answers and the failures (a pod of its own, so no `kubectl exec`
/// stream that an agent restart or an API outage could cut).
pub struct RequestLoop<'a> {
    c: &'a KubeCluster,
    pod: String,
}

impl<'a> RequestLoop<'a> {
    /// Starts the loop on node `node` and waits for its first answer.
    pub fn start(c: &'a KubeCluster, name: &str, node: &str, to: SocketAddrV4) -> RequestLoop<'a> {
        let pod = format!("{name}-{}", std::process::id());
        c.apply(&busybox_pod(
            &pod,
            node,
            &format!(
                r#"
    - sh
    - -c
    - |
      while true; do
        r=$(printf 'GET /cgi-bin/who HTTP/1.0\r\n\r\n' | nc -w 2 {ip} {port} | tail -n 1)
        echo "answer:$r"
        sleep 0.1
      done"#,
                ip = to.ip(),
                port = to.port()
            ),
        ));
        let looping = RequestLoop { c, pod };
        wait_for("the request loop answered", POD_WAIT, || {
            let answers = looping.answers();
            if answers.iter().any(Option::is_some) {
                Ok(())
            } else {
                Err(format!("{answers:?}"))
            }
        });
        looping
    }

    /// Every answer so far, from the pod's log.
    pub fn answers(&self) -> Vec<Who> {
        parse_who(&self.c.try_kubectl(&["logs", &self.pod]).stdout)
    }

    /// The answers from the first that succeeded on (the loop's start may
    /// precede the Service).
    pub fn since_first_answer(&self) -> Vec<Who> {
        self.answers()
            .into_iter()
            .skip_while(Option::is_none)
            .collect()
    }
}

impl Drop for RequestLoop<'_> {
    fn drop(&mut self) {
        let _ = self
            .c
            .try_kubectl(&["delete", "pod", &self.pod, "--wait=false"]);
    }
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
