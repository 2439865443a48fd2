//! Margay on a real Kubernetes cluster (`scripts/cluster`): upstream
//! kube-apiserver, controller-manager, scheduler, and kubelet + containerd
//! per node, with Margay installed by `deploy/margay.yaml`'s DaemonSet.
//! Pods are made with `kubectl` and looked at from the node, as an
//! operator would: its veths, routes, IPAM allocations and BPF endpoints.
//!
//! Each test starts a cluster of its own (`KubeCluster`, taken down on
//! drop); `scripts/test` builds the components and images first.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use ipnetwork::Ipv4Network;
use margay_tests::kube::{KubeCluster, wait_for};
use margay_tests::require_root;
use margay_tests::workload::{
    POD_WAIT, PORT, addresses_in, pod_cidr, running_pods, seen_address, web,
};

/// The node's pod-side view: host veths Margay made, /32 routes to pods,
/// IPAM allocations and (bpf) endpoints, each as the set of pod addresses
/// or veth names it holds.
#[derive(Debug)]
struct NodeState {
    veths: BTreeSet<String>,
    routes: BTreeSet<Ipv4Addr>,
    allocations: BTreeSet<Ipv4Addr>,
    endpoints: BTreeSet<Ipv4Addr>,
}

fn node_state(c: &KubeCluster, i: usize, pod_cidr: Ipv4Network) -> NodeState {
    let veths = c
        .on_node_ok(i, &["ip", "-br", "link", "show", "type", "veth"])
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(|n| n.split('@').next().unwrap().to_string())
        .filter(|n| n != "eth0")
        .collect();
    let routes = c
        .on_node_ok(i, &["ip", "-4", "route", "show"])
        .lines()
        .filter_map(|l| l.split_whitespace().next()?.parse::<Ipv4Addr>().ok())
        .filter(|a| pod_cidr.contains(*a))
        .collect();
    let allocations = addresses_in(
        &c.on_node_ok(
            i,
            &[
                "/opt/cni/bin/margay-ipam",
                "--data-dir",
                "/var/lib/cni/margay",
                "allocations",
                "--json",
            ],
        ),
        pod_cidr,
    );
    let endpoints = if c.env("DATAPLANE") == "bpf" {
        addresses_in(
            &c.on_node_ok(i, &["/opt/cni/bin/margayctl", "--json", "endpoints"]),
            pod_cidr,
        )
    } else {
        BTreeSet::new()
    };
    NodeState {
        veths,
        routes,
        allocations,
        endpoints,
    }
}

/// Kills `<node>-containerd` and `<node>-kubelet` and waits until the
/// node's supervisor has started new ones and the node is Ready again.
fn restart_node_daemons(c: &KubeCluster, i: usize) {
    let node = c.node_name(i).to_string();
    for daemon in ["containerd", "kubelet"] {
        let name = format!("{node}-{daemon}");
        let pid = c
            .pid_of(&name)
            .unwrap_or_else(|| panic!("no pid file for {name}"));
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap()),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        wait_for(
            &format!("{name} restarted"),
            Duration::from_secs(30),
            || match c.pid_of(&name) {
                Some(p) if p != pid && std::path::Path::new(&format!("/proc/{p}")).exists() => {
                    Ok(())
                }
                other => Err(format!("pid {other:?}")),
            },
        );
    }
    wait_for(&format!("{node} Ready"), POD_WAIT, || {
        let n = c.kubectl_json(&["get", "node", &node]);
        let ready = n["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Ready" && c["status"] == "True");
        if ready {
            Ok(())
        } else {
            Err(n["status"]["conditions"].to_string())
        }
    });
}

/// Pods of one Deployment get distinct addresses of the pool, reach each
/// other with their own address as the source, reach the node, and work
/// with `kubectl exec` and `logs`; the node holds exactly one veth, route,
/// allocation and (bpf) endpoint per pod. Restarting containerd and
/// kubelet changes nothing; deleting the Deployment leaves nothing.
fn pods_on_one_node(dataplane: &str) {
    let c = KubeCluster::up("k8s", &["--nodes", "1", "--dataplane", dataplane]);
    let pool = pod_cidr(&c);
    c.apply(&web("web", 3));
    let pods = running_pods(&c, "web", 3);

    let ips: BTreeSet<Ipv4Addr> = pods.iter().map(|p| p.ip).collect();
    assert_eq!(ips.len(), 3, "addresses not distinct: {pods:?}");
    assert!(
        ips.iter().all(|a| pool.contains(*a)),
        "{ips:?} not all in {pool}"
    );

    for from in &pods {
        for to in pods.iter().filter(|p| p.name != from.name) {
            assert_eq!(
                seen_address(&c, from, SocketAddrV4::new(to.ip, PORT)).unwrap(),
                from.ip.to_string(),
                "{} → {}",
                from.name,
                to.name
            );
        }
    }
    let node_ip = c.env("NODE_IP_0").to_string();
    c.kubectl(&[
        "exec",
        &pods[0].name,
        "--",
        "ping",
        "-c",
        "1",
        "-W",
        "3",
        &node_ip,
    ]);
    assert!(c.kubectl(&["logs", &pods[0].name]).contains("serving"));

    let state = node_state(&c, 0, pool);
    assert_eq!(state.veths.len(), 3, "{state:?}");
    assert_eq!(state.routes, ips, "{state:?}");
    assert_eq!(state.allocations, ips, "{state:?}");
    if dataplane == "bpf" {
        assert_eq!(state.endpoints, ips, "{state:?}");
    }

    restart_node_daemons(&c, 0);
    assert_eq!(
        running_pods(&c, "web", 3),
        pods,
        "pods changed across the restart"
    );
    // The new kubelet serves `exec` once it has synced its pods again.
    let seen = wait_for("exec after the restart", POD_WAIT, || {
        seen_address(&c, &pods[0], SocketAddrV4::new(pods[1].ip, PORT))
    });
    assert_eq!(seen, pods[0].ip.to_string());

    c.kubectl(&["delete", "deployment", "web", "--wait=true"]);
    wait_for("the pods' network gone from the node", POD_WAIT, || {
        let pods_left = c.kubectl(&["get", "pods", "-o", "name"]);
        let s = node_state(&c, 0, pool);
        if pods_left.trim().is_empty()
            && s.veths.is_empty()
            && s.routes.is_empty()
            && s.allocations.is_empty()
            && s.endpoints.is_empty()
        {
            Ok(())
        } else {
            Err(format!("pods {pods_left:?}, node {s:?}"))
        }
    });
}

#[test]
fn pods_on_one_node_bpf() {
    require_root!(pods_on_one_node_bpf);
    pods_on_one_node("bpf");
}

#[test]
fn pods_on_one_node_linux() {
    require_root!(pods_on_one_node_linux);
    pods_on_one_node("linux");
}

/// Replacing Margay's DaemonSet pod (a new image) loses no packet of a
/// running pod→pod ping: the programs stay attached through their pins.
#[test]
fn daemonset_rollout_keeps_pods_connected() {
    require_root!(daemonset_rollout_keeps_pods_connected);
    let c = KubeCluster::up("k8sro", &["--nodes", "1"]);
    c.apply(&web("web", 2));
    let pods = running_pods(&c, "web", 2);

    // A second tag of the same image, so the rollout replaces the pod.
    c.on_node_ok(
        0,
        &[
            "ctr",
            "-n",
            "k8s.io",
            "images",
            "tag",
            "localhost/margay:latest",
            "localhost/margay:rollout",
        ],
    );
    let ping = Command::new(c.env("KUBECTL"))
        .args([
            "--kubeconfig",
            c.env("KUBECONFIG"),
            "exec",
            &pods[0].name,
            "--",
        ])
        .args(["ping", "-c", "100", "-i", "0.1", &pods[1].ip.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    c.kubectl(&[
        "-n",
        "margay-system",
        "set",
        "image",
        "daemonset/margay-node",
        "*=localhost/margay:rollout",
    ]);
    c.kubectl(&[
        "-n",
        "margay-system",
        "rollout",
        "status",
        "daemonset/margay-node",
        "--timeout=90s",
    ]);
    let out = ping.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("100 packets transmitted, 100 packets received"),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let images = c.kubectl(&[
        "-n",
        "margay-system",
        "get",
        "pods",
        "-o",
        "jsonpath={.items[*].spec.containers[*].image}",
    ]);
    // Every container of the pod (install-cni-watch, margay-agent).
    assert!(
        !images.trim().is_empty()
            && images
                .split_whitespace()
                .all(|i| i == "localhost/margay:rollout"),
        "the rollout did not happen: {images}"
    );
}

/// A ConfigMap chaining `portmap` (refused in bpf mode) fails the new
/// DaemonSet pod's init container with a message naming it, and the node
/// keeps its working conflist: pods still start.
#[test]
fn bad_config_fails_the_install_and_keeps_the_node_working() {
    require_root!(bad_config_fails_the_install_and_keeps_the_node_working);
    let c = KubeCluster::up("k8scf", &["--nodes", "1"]);
    let conflist = c
        .state_dir()
        .join("nodes")
        .join(c.node_name(0))
        .join("fs/cni-conf/10-margay.conflist");
    let before = std::fs::read_to_string(&conflist).unwrap();

    let cm = c.kubectl_json(&["-n", "margay-system", "get", "configmap", "margay-config"]);
    // The template is not JSON (unquoted placeholders): the plugin goes in
    // before the plugins array's closing bracket, the template's last.
    let mut template = cm["data"]["cni_network_config"]
        .as_str()
        .unwrap()
        .to_string();
    let end = template
        .rfind(']')
        .expect("the template has a plugins array");
    template.insert_str(
        end,
        r#", {"type": "portmap", "capabilities": {"portMappings": true}}"#,
    );
    let patch = serde_json::json!({"data": {"cni_network_config": template}});
    c.kubectl(&[
        "-n",
        "margay-system",
        "patch",
        "configmap",
        "margay-config",
        "--type=merge",
        "-p",
        &patch.to_string(),
    ]);
    c.kubectl(&[
        "-n",
        "margay-system",
        "rollout",
        "restart",
        "daemonset/margay-node",
    ]);

    let failed = wait_for("the new install-cni to fail", POD_WAIT, || {
        let list = c.kubectl_json(&["-n", "margay-system", "get", "pods"]);
        list["items"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| {
                let s = &p["status"]["initContainerStatuses"][0];
                [&s["state"]["terminated"], &s["lastState"]["terminated"]]
                    .iter()
                    .any(|t| t["exitCode"].as_i64().is_some_and(|code| code != 0))
            })
            .map(|p| p["metadata"]["name"].as_str().unwrap().to_string())
            .ok_or_else(|| list.to_string())
    });
    let logs = c
        .try_kubectl(&[
            "-n",
            "margay-system",
            "logs",
            &failed,
            "-c",
            "install-cni",
            "--previous",
        ])
        .stdout
        + &c.kubectl(&["-n", "margay-system", "logs", &failed, "-c", "install-cni"]);
    assert!(
        logs.contains("portmap"),
        "install-cni's log does not name portmap: {logs}"
    );
    assert_eq!(
        std::fs::read_to_string(&conflist).unwrap(),
        before,
        "the node's conflist changed"
    );

    c.apply(&web("after", 1));
    running_pods(&c, "after", 1);
}

/// Three nodes come up Ready with Margay on each; `up` again is a no-op;
/// `down` leaves nothing of the cluster on the machine.
#[test]
fn three_nodes_up_again_and_down() {
    require_root!(three_nodes_up_again_and_down);
    let c = KubeCluster::up("k8s3n", &["--nodes", "3"]);
    let ds = c.kubectl_json(&["-n", "margay-system", "get", "daemonset", "margay-node"]);
    assert_eq!(ds["status"]["numberReady"], 3, "{}", ds["status"]);
    let nodes = c.kubectl(&["get", "nodes", "-o", "name"]);
    assert_eq!(nodes.lines().count(), 3, "{nodes}");

    let again = c.script(&["up", "--nodes", "3"], Duration::from_secs(60));
    assert!(
        again.success && again.stdout.contains("nothing to do"),
        "{}{}",
        again.stdout,
        again.stderr
    );

    take_down(&c);
}

/// An `up` killed half-way leaves what `down` removes entirely.
#[test]
fn down_after_an_interrupted_up_leaves_nothing() {
    require_root!(down_after_an_interrupted_up_leaves_nothing);
    let name = margay_tests::netns::unique_name("k8sint");
    let mut up = Command::new(margay_tests::kube::repo_root().join("scripts/cluster"))
        .args(["up", "--nodes", "2"])
        .env("MARGAY_CLUSTER", &name)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap();
    // Past the control plane, while the nodes start (up takes ~20 s).
    std::thread::sleep(Duration::from_secs(8));
    nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(i32::try_from(up.id()).unwrap()),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    up.wait().unwrap();
    let c = KubeCluster::attach(&name);
    take_down(&c);
}

/// `down`, then nothing of the cluster is left: no namespace, host link,
/// state dir, mount or cgroup.
fn take_down(c: &KubeCluster) {
    let host_link = c.host_link().expect("the cluster has a LAN before down");
    let down = c.script(&["down"], Duration::from_secs(120));
    assert!(down.success, "{}{}", down.stdout, down.stderr);
    let prefix = format!("mgc-{}-", c.name());
    let netns = String::from_utf8(
        Command::new("ip")
            .args(["netns", "list"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert!(!netns.contains(&prefix), "network namespaces left: {netns}");
    let links = String::from_utf8(
        Command::new("ip")
            .args(["-br", "link"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert!(
        !links
            .lines()
            .any(|l| l.split([' ', '@']).next() == Some(host_link.as_str())),
        "host link {host_link} left: {links}"
    );
    assert!(!c.state_dir().exists(), "{} left", c.state_dir().display());
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(
        !mounts.contains(&c.name().to_string()),
        "mounts left: {mounts}"
    );
    let cgroups: Vec<String> = std::fs::read_dir("/sys/fs/cgroup")
        .unwrap()
        .flatten()
        .flat_map(|h| std::fs::read_dir(h.path()).into_iter().flatten().flatten())
        .map(|e| e.path().display().to_string())
        .filter(|p| p.contains(&prefix.trim_end_matches('-').to_string()))
        .collect();
    assert!(cgroups.is_empty(), "cgroups left: {cgroups:?}");
}

/// `--kube-proxy MODE` runs upstream kube-proxy on the node beside Margay's
/// programs (the peer later issues measure against): a pod reaches a
/// ClusterIP with its own address seen by the backend, and the external
/// client reaches the Service's NodePort.
fn kube_proxy_serves_services(mode: &str) {
    let c = KubeCluster::up("k8skp", &["--nodes", "1", "--kube-proxy", mode]);
    c.apply(&web("web", 1));
    c.apply(&web("cli", 1));
    c.kubectl(&[
        "expose",
        "deployment",
        "web",
        "--type=NodePort",
        "--port=80",
        "--target-port=8080",
    ]);
    let client = running_pods(&c, "cli", 1).remove(0);
    running_pods(&c, "web", 1);
    let svc = c.kubectl_json(&["get", "service", "web"]);
    let cluster_ip: Ipv4Addr = svc["spec"]["clusterIP"].as_str().unwrap().parse().unwrap();
    let node_port = svc["spec"]["ports"][0]["nodePort"].as_u64().unwrap();

    // kube-proxy programs the Service within a second or so of its creation.
    let seen = wait_for("the ClusterIP to answer", POD_WAIT, || {
        seen_address(&c, &client, SocketAddrV4::new(cluster_ip, 80)).and_then(|s| {
            if s.is_empty() {
                Err("empty answer".into())
            } else {
                Ok(s)
            }
        })
    });
    assert_eq!(
        seen,
        client.ip.to_string(),
        "through {mode} kube-proxy's ClusterIP"
    );

    let request = format!(
        "printf 'GET /cgi-bin/ip HTTP/1.0\\r\\n\\r\\n' | /bin/busybox nc -w 3 {} {node_port}",
        c.env("NODE_IP_0")
    );
    wait_for(
        "the NodePort to answer the external client",
        POD_WAIT,
        || {
            let out = margay_tests::process::run_bounded(
                Command::new("ip").args([
                    "netns",
                    "exec",
                    c.env("EXTERNAL_NETNS"),
                    "sh",
                    "-c",
                    &request,
                ]),
                Duration::from_secs(10),
            );
            if out.stdout.contains("200 OK") {
                Ok(())
            } else {
                Err(format!("{}{}", out.stdout, out.stderr))
            }
        },
    );
}

#[test]
fn kube_proxy_iptables_serves_services() {
    require_root!(kube_proxy_iptables_serves_services);
    kube_proxy_serves_services("iptables");
}

#[test]
fn kube_proxy_nftables_serves_services() {
    require_root!(kube_proxy_nftables_serves_services);
    kube_proxy_serves_services("nftables");
}
