//! The README demo: Margay installed into temporary CNI directories, three
//! pods started through the CNI driver exactly as a runtime would, in the
//! eBPF dataplane: a TCP connectivity matrix, the programs and counters, a
//! forged packet dropped with its reason, a deny policy blocking one pair,
//! a ClusterIP service balanced by the programs, then everything removed
//! and shown to be gone; then two nodes and an external client, a NodePort
//! reaching a backend on the other node in tunnel and in DSR mode.
#![allow(clippy::print_stdout)] // A demo's job is to print.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use margay_tests::bins::{REFERENCE_PLUGINS, bin};
use margay_tests::bpf::BpfRoot;
use margay_tests::driver::{Runtime, first_ipv4};
use margay_tests::netns::{NetNs, unique_name};
use margay_tests::traffic::{self, TcpServer, UdpServer};
use serde_json::{Value, json};

const POOL: &str = "10.244.0.0/16";

struct Pod {
    name: &'static str,
    ns: NetNs,
    cid: String,
    ip: Ipv4Addr,
    host_ifname: String,
}

fn main() -> ExitCode {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("margay-demo creates network namespaces, veths and BPF pins: run it as root");
        return ExitCode::FAILURE;
    }
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("demo failed: {e}");
            ExitCode::FAILURE
        }
    }
}

fn section(title: &str) {
    println!("\n-- {title} --");
}

/// Copies the binaries into a fresh CNI bin dir and writes the conflist
/// into a fresh conf dir, as an installer would on a node.
fn install(root: &Path, bpf_root: &Path) -> Result<(PathBuf, Value), String> {
    let bin_dir = root.join("opt/cni/bin");
    let conf_dir = root.join("etc/cni/net.d");
    for d in [&bin_dir, &conf_dir] {
        std::fs::create_dir_all(d).map_err(|e| e.to_string())?;
    }
    for name in ["margay", "margay-ipam", "margayctl"] {
        std::fs::copy(bin(name), bin_dir.join(name)).map_err(|e| format!("{name}: {e}"))?;
    }
    let conflist = json!({
        "cniVersion": "1.1.0",
        "name": unique_name("demo"),
        "plugins": [{
            "type": "margay",
            "dataplane": "bpf",
            "bpf_root": bpf_root,
            "bpf_log_level": "info",
            "nodename": "demo-node",
            "mtu": 1500,
            "ipam": {"type": "margay-ipam", "pools": [POOL], "data_dir": root.join("var/lib/cni/margay")},
        }],
    });
    let file = conf_dir.join("10-margay.conflist");
    std::fs::write(&file, serde_json::to_vec_pretty(&conflist).expect("JSON"))
        .map_err(|e| e.to_string())?;
    println!(
        "installed margay, margay-ipam, margayctl -> {}",
        bin_dir.display()
    );
    println!(
        "wrote {} (dataplane: bpf, bpf_root {})",
        file.display(),
        bpf_root.display()
    );
    Ok((bin_dir, conflist))
}

fn margayctl(bin_dir: &Path, bpf_root: &Path, args: &[&str]) -> Result<String, String> {
    let out = Command::new(bin_dir.join("margayctl"))
        .arg("--bpf-root")
        .arg(bpf_root)
        .args(args)
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "margayctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim_end().to_string())
}

/// Prints the TCP matrix between the pods and to the host; returns the
/// cells that failed, as (from, to).
fn matrix(pods: &[Pod], servers: &[TcpServer], host: &TcpServer) -> Vec<(String, String)> {
    let host_ip = IpAddr::V4(traffic::host_address());
    let mut targets: Vec<(String, SocketAddr)> = pods
        .iter()
        .zip(servers)
        .map(|(p, s)| {
            (
                p.name.to_string(),
                SocketAddr::new(IpAddr::V4(p.ip), s.port),
            )
        })
        .collect();
    targets.push((
        format!("host {host_ip}"),
        SocketAddr::new(host_ip, host.port),
    ));
    print!("{:<8}", "from\\to");
    for (t, _) in &targets {
        print!("{t:<22}");
    }
    println!();
    let mut failed = Vec::new();
    for p in pods {
        print!("{:<8}", p.name);
        for (name, addr) in &targets {
            let cell = match traffic::request(Some(&p.ns), *addr) {
                Ok(reply) if reply.ends_with(&p.ip.to_string()) => format!("ok (saw {})", p.ip),
                Ok(reply) => {
                    failed.push((p.name.to_string(), name.clone()));
                    format!("WRONG: {reply}")
                }
                Err(e) => {
                    failed.push((p.name.to_string(), name.clone()));
                    format!("blocked ({})", e.kind())
                }
            };
            print!("{cell:<22}");
        }
        println!();
    }
    failed
}

/// A ClusterIP balanced by the programs (no kube-proxy): pod-b's
/// connections spread over pod-a and pod-c, which see pod-b's own address;
/// a service without backends is refused at once.
fn services(
    file: &Path,
    pods: &[Pod],
    servers: &[TcpServer],
    ctl: &dyn Fn(&[&str]) -> Result<String, String>,
) -> Result<(), String> {
    let vip = Ipv4Addr::new(10, 96, 0, 10);
    section(&format!(
        "a ClusterIP service {vip}:80 -> pod-a, pod-c (eBPF load balancing, no kube-proxy)"
    ));
    let yaml = format!(
        "services:\n  - name: demo/web\n    vip: {vip}\n    port: 80\n    backends: [\"{}:{}\", \"{}:{}\"]\n  - name: demo/nothing-yet\n    vip: {vip}\n    port: 81\n    backends: []\n",
        pods[0].ip, servers[0].port, pods[2].ip, servers[2].port
    );
    std::fs::write(file, &yaml).map_err(|e| e.to_string())?;
    println!("{}", yaml.trim_end());
    println!("$ margayctl service apply -f services.yaml");
    println!(
        "{}",
        ctl(&["service", "apply", "-f", file.to_str().unwrap_or_default()])?
    );
    println!("$ margayctl service list\n{}", ctl(&["service", "list"])?);
    let mut answered = std::collections::BTreeSet::new();
    for i in 1..=6 {
        let answer = traffic::request(Some(&pods[1].ns), SocketAddr::from((vip, 80)))
            .map_err(|e| format!("pod-b -> {vip}:80: {e}"))?;
        println!("pod-b -> {vip}:80  connection {i}: {answer}");
        if !answer.ends_with(&pods[1].ip.to_string()) {
            return Err(format!("the backend saw another client address: {answer}"));
        }
        answered.insert(answer.split(' ').next().unwrap_or_default().to_string());
    }
    println!("(the backend prints the client address it sees: pod-b's own)");
    let started = std::time::Instant::now();
    match traffic::request(Some(&pods[1].ns), SocketAddr::from((vip, 81))) {
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => println!(
            "pod-b -> {vip}:81 (no backends): {e}, after {:.2} ms",
            started.elapsed().as_secs_f64() * 1e3
        ),
        other => return Err(format!("{vip}:81 should be refused, got {other:?}")),
    }
    println!("$ margayctl nat dump\n{}", ctl(&["nat", "dump"])?);
    if answered.len() < 2 {
        return Err(format!("6 connections all went to {answered:?}"));
    }
    Ok(())
}

fn run() -> Result<(), String> {
    let root = tempfile::tempdir().map_err(|e| e.to_string())?;
    let bpf = BpfRoot::new();
    println!("== Margay demo (dataplane: bpf) ==\n");
    let (bin_dir, conflist) = install(root.path(), bpf.path())?;
    let network = conflist["name"].as_str().expect("name").to_string();
    let rt = Runtime::new(
        &conflist,
        vec![bin_dir.clone(), PathBuf::from(REFERENCE_PLUGINS)],
        &root.path().join("cache"),
    );
    let ctl = |args: &[&str]| margayctl(&bin_dir, bpf.path(), args);

    section("ADD three pods");
    let mut pods = Vec::new();
    for name in ["pod-a", "pod-b", "pod-c"] {
        let ns = NetNs::new(name);
        let cid = unique_name(name);
        let start = std::time::Instant::now();
        let result = rt
            .add(
                &cid,
                &ns.path(),
                "eth0",
                &format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=demo;K8S_POD_NAME={name}"),
            )
            .map_err(|e| format!("ADD {name}: {e}"))?;
        let ip = first_ipv4(&result).ok_or("ADD result has no IPv4 address")?;
        let host_ifname = result["interfaces"][0]["name"]
            .as_str()
            .unwrap_or("?")
            .to_string();
        println!(
            "{name}: {ip:<15} host veth {host_ifname}  (ADD took {:.1} ms{})",
            start.elapsed().as_secs_f64() * 1e3,
            if pods.is_empty() {
                ", including the one-time program load"
            } else {
                ""
            }
        );
        pods.push(Pod {
            name,
            ns,
            cid,
            ip,
            host_ifname,
        });
    }

    section("margayctl endpoints");
    println!("{}", ctl(&["endpoints"])?);

    section("TCP connectivity (each server replies with the address it sees)");
    let servers: Vec<TcpServer> = pods
        .iter()
        .map(|p| TcpServer::start(Some(&p.ns), p.name))
        .collect();
    let host = TcpServer::start(None, "host");
    let failed = matrix(&pods, &servers, &host);
    if !failed.is_empty() {
        return Err(format!("connections failed: {failed:?}"));
    }

    section("pod-a forges its source address (raw socket, source 10.244.99.99)");
    let udp = UdpServer::start(Some(&pods[1].ns), "pod-b");
    for _ in 0..3 {
        traffic::send_forged_udp(
            &pods[0].ns,
            Ipv4Addr::new(10, 244, 99, 99),
            pods[1].ip,
            udp.port,
        )
        .map_err(|e| format!("forging: {e}"))?;
    }
    std::thread::sleep(std::time::Duration::from_millis(100));
    println!(
        "datagrams pod-b received: {}",
        udp.received.lock().map(|r| r.len()).unwrap_or(0)
    );
    println!("$ margayctl drops\n{}", ctl(&["drops"])?);
    println!(
        "$ margayctl counters --endpoint {}\n{}",
        pods[0].ip,
        ctl(&["counters", "--endpoint", &pods[0].ip.to_string()])?
    );

    section(&format!(
        "deny pod-a -> pod-c: an ingress policy on pod-c ({})",
        pods[2].ip
    ));
    let policy = root.path().join("pod-c-ingress.yaml");
    std::fs::write(
        &policy,
        format!(
            "ingress:\n  - action: deny\n    cidr: {}/32\n  - action: allow\n",
            pods[0].ip
        ),
    )
    .map_err(|e| e.to_string())?;
    println!(
        "{}",
        std::fs::read_to_string(&policy)
            .unwrap_or_default()
            .trim_end()
    );
    println!(
        "$ margayctl policy set --endpoint {} -f pod-c-ingress.yaml",
        pods[2].host_ifname
    );
    println!(
        "{}",
        ctl(&[
            "policy",
            "set",
            "--endpoint",
            &pods[2].host_ifname,
            "-f",
            policy.to_str().unwrap_or_default()
        ])?
    );
    let failed = matrix(&pods, &servers, &host);
    if failed != [("pod-a".to_string(), "pod-c".to_string())] {
        return Err(format!(
            "expected only pod-a -> pod-c to be blocked, got {failed:?}"
        ));
    }
    println!("$ margayctl drops\n{}", ctl(&["drops"])?);

    services(&root.path().join("services.yaml"), &pods, &servers, &ctl)?;
    drop((servers, host, udp));

    section("DEL the pods");
    for p in &pods {
        rt.del(&p.cid, Some(&p.ns.path()), "eth0", "")
            .map_err(|e| format!("DEL {}: {e}", p.name))?;
        println!("{}: deleted", p.name);
    }
    drop(pods);

    section("what is left");
    let links = Command::new("ip")
        .args(["-o", "link", "show"])
        .output()
        .map_err(|e| e.to_string())?;
    let veths = String::from_utf8_lossy(&links.stdout)
        .lines()
        .filter(|l| l.contains(&format!("alias margay:{network}:")))
        .count();
    let routes = Command::new("ip")
        .args(["-4", "route"])
        .output()
        .map_err(|e| e.to_string())?;
    let pod_routes = String::from_utf8_lossy(&routes.stdout)
        .lines()
        .filter(|l| l.starts_with("10.244."))
        .count();
    let allocations = Command::new(bin_dir.join("margay-ipam"))
        .arg("--data-dir")
        .arg(root.path().join("var/lib/cni/margay"))
        .arg("allocations")
        .output()
        .map_err(|e| e.to_string())?;
    println!("veths of this network: {veths}");
    println!("host routes into {POOL}: {pod_routes}");
    println!(
        "IPAM allocations:\n{}",
        String::from_utf8_lossy(&allocations.stdout).trim_end()
    );
    let endpoints = margay_ebpf::registry::list(bpf.path())
        .map(|l| l.len())
        .unwrap_or(0);
    println!("registered eBPF endpoints: {endpoints}");
    if veths > 0 || pod_routes > 0 || endpoints > 0 {
        return Err(format!(
            "{veths} veth(s), {pod_routes} route(s), {endpoints} endpoint entr(ies) left"
        ));
    }
    println!(
        "\nnothing left behind (the node's programs stay pinned for the next pod; the demo's BPF root goes now)."
    );
    two_nodes()
}

/// Two nodes and an external client (namespaces on one LAN): a NodePort on
/// node A whose only backend is on node B, reached in tunnel mode and in
/// DSR mode; the backend prints the address it sees: the client's own.
fn two_nodes() -> Result<(), String> {
    use margay_tests::cluster::Cluster;
    section("two nodes and an external client (network namespaces on one LAN)");
    let c = Cluster::new(9);
    let (_pod_a, ip_a) = c.a.pod("demo-a")?;
    let (pod_b, ip_b) = c.b.pod("demo-b")?;
    println!(
        "node A {} (pod {ip_a}), node B {} (pod {ip_b}), client {}",
        c.a.addr, c.b.addr, c.client_addr
    );
    let server = TcpServer::start(Some(&pod_b), "pod-on-B");
    let services = json!({"services": [{"name": "demo/nodeport", "vip": "10.96.0.20", "port": 80,
        "node_port": 30080, "backends": [format!("{ip_b}:{}", server.port)]}]});
    for mode in ["tunnel", "dsr"] {
        c.attach_data_ifaces(mode)?;
        c.know_each_other(false)?;
        c.apply_on_both("services", services.clone())?;
        let answer = traffic::request(Some(&c.client), SocketAddr::from((c.a.addr, 30080)))
            .map_err(|e| format!("client -> A:30080 ({mode}): {e}"))?;
        println!(
            "[{mode}] client -> {}:30080 (node A) -> backend on node B: \"{answer}\"",
            c.a.addr
        );
        if !answer.ends_with(&c.client_addr.to_string()) {
            return Err(format!("the backend saw another address: {answer}"));
        }
        let answered_by_b =
            c.b.reverse_translations()?
                .iter()
                .any(|r| r["translated"] == format!("{}:30080", c.a.addr));
        println!(
            "[{mode}] the reply left from {} as {}:30080",
            if answered_by_b {
                "node B, straight to the client,"
            } else {
                "node A, back through the tunnel,"
            },
            c.a.addr
        );
    }
    println!(
        "$ margayctl node show   (on node A)\n{}",
        c.a.ctl(&["node", "show"])?
    );
    Ok(())
}
