//! The `margay` plugin in `linux` mode, driven through a conflist exactly as
//! a runtime drives it, with real namespaces, veths and routes.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::time::Duration;

use margay_conf::lock::FileLock;
use margay_conf::netconf::AttachmentId;
use margay_tests::bins::bin;
use margay_tests::driver::first_ipv4;
use margay_tests::fixture::{Net, NetSpec, Pod};
use margay_tests::netns::NetNs;
use margay_tests::require_root;
use margay_tests::traffic::{self as tcp, TcpServer};
use serde_json::{Value, json};

fn sock(ip: IpAddr, port: u16) -> SocketAddr {
    SocketAddr::new(ip, port)
}

#[test]
fn pods_reach_each_other_and_the_host_over_tcp() {
    require_root!(pods_reach_each_other_and_the_host_over_tcp);
    let net = Net::new(NetSpec::linux("10.240.1.0/24"));
    let a = net.pod("a");
    let b = net.pod("b");
    let server_a = TcpServer::start(Some(&a.ns), "pod-a");
    let server_b = TcpServer::start(Some(&b.ns), "pod-b");
    let host_server = TcpServer::start(None, "host");

    let got = tcp::request(Some(&b.ns), sock(a.ip(), server_a.port)).unwrap();
    assert_eq!(got, format!("pod-a {}", b.ip()), "A sees B's own address");
    let got = tcp::request(Some(&a.ns), sock(b.ip(), server_b.port)).unwrap();
    assert_eq!(got, format!("pod-b {}", a.ip()));
    let host_ip = IpAddr::V4(tcp::host_address());
    let got = tcp::request(Some(&a.ns), sock(host_ip, host_server.port)).unwrap();
    assert_eq!(
        got,
        format!("host {}", a.ip()),
        "the host sees the pod's address"
    );
    let got = tcp::request(None, sock(a.ip(), server_a.port)).unwrap();
    assert!(got.starts_with("pod-a "), "host reaches the pod: {got}");

    // The wiring is the one DESIGN.md fixes.
    let routes = a.ns.run_ok(&["ip", "route"]);
    assert!(
        routes.contains("default via 169.254.1.1 dev eth0"),
        "{routes}"
    );
    assert!(routes.contains("169.254.1.1 dev eth0"), "{routes}");
    let addr = a.ns.run_ok(&["ip", "-4", "-o", "addr", "show", "eth0"]);
    assert!(addr.contains(&format!("{}/32", a.ip())), "{addr}");
    let host = &a.result["interfaces"][0];
    assert_eq!(host["mac"], "ee:ee:ee:ee:ee:ee");
    assert_eq!(host["sandbox"], "");
    let host_name = host["name"].as_str().unwrap();
    assert!(
        host_name.starts_with("mrg") && host_name.len() == 14,
        "{host_name}"
    );
    assert_eq!(
        a.result["interfaces"][1]["sandbox"],
        a.ns.path().to_str().unwrap()
    );
    assert_eq!(a.result["ips"][0]["interface"], 1);
    for (key, want) in [
        (
            format!("/proc/sys/net/ipv4/conf/{host_name}/proxy_arp"),
            "1",
        ),
        (
            format!("/proc/sys/net/ipv4/conf/{host_name}/forwarding"),
            "1",
        ),
        (
            format!("/proc/sys/net/ipv4/neigh/{host_name}/proxy_delay"),
            "0",
        ),
    ] {
        assert_eq!(std::fs::read_to_string(&key).unwrap().trim(), want, "{key}");
    }
    let route = Command::new("ip")
        .args(["route", "show", &format!("{}/32", a.ip())])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&route.stdout).contains(&format!("dev {host_name}")));

    net.del(&a).unwrap();
    net.del(&b).unwrap();
    net.assert_nothing_left("10.240.1.");
}

#[test]
fn repeated_add_keeps_the_address_and_makes_no_second_veth() {
    require_root!(repeated_add_keeps_the_address_and_makes_no_second_veth);
    let net = Net::new(NetSpec::linux("10.240.2.0/24"));
    let pod = net.pod("rep");
    let again = net.add(&pod.ns, &pod.cid).unwrap();
    assert_eq!(again["ips"], pod.result["ips"]);
    assert_eq!(
        again["interfaces"][1]["mac"], pod.result["interfaces"][1]["mac"],
        "same pod link"
    );
    assert_eq!(net.host_veths().len(), 1);
    assert_eq!(net.allocations(), 1);
    net.check(&pod).unwrap();
    net.del(&pod).unwrap();
    net.assert_nothing_left("10.240.2.");
}

#[test]
fn add_with_the_ifname_taken_fails_and_leaks_nothing() {
    require_root!(add_with_the_ifname_taken_fails_and_leaks_nothing);
    let net = Net::new(NetSpec::linux("10.240.3.0/24"));
    let ns = NetNs::new("taken");
    ns.run_ok(&[
        "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "other0",
    ]);
    let err = net.add(&ns, "taken-1").unwrap_err();
    assert_eq!(err.code.number(), 4, "{err}");
    assert!(err.msg.contains("CNI_IFNAME eth0 already exists"), "{err}");
    net.assert_nothing_left("10.240.3.");
    let links = ns.run_ok(&["ip", "-o", "link"]);
    assert!(
        links.contains("eth0") && links.contains("other0"),
        "the pod's own links are untouched"
    );
}

#[test]
fn ipam_failures_leave_nothing_behind() {
    require_root!(ipam_failures_leave_nothing_behind);
    // IPAM refuses (the pool is full): no veth is created.
    let net = Net::new(NetSpec::linux("10.240.4.0/31"));
    let p1 = net.pod("full1");
    let p2 = net.pod("full2");
    let ns = NetNs::new("full3");
    let err = net.add(&ns, "full-3").unwrap_err();
    assert_eq!(err.code.number(), 101, "{err}");
    assert_eq!(net.host_veths().len(), 2);
    assert_eq!(
        ns.run_ok(&["ip", "-o", "link"]).lines().count(),
        1,
        "only lo in the pod"
    );
    net.del(&p1).unwrap();
    net.del(&p2).unwrap();
    net.assert_nothing_left("10.240.4.");

    // IPAM succeeds, then the kernel refuses the pod's IPv6 address (IPv6
    // is disabled in the pod): the veth is removed and IPAM released.
    let dual = Net::new(NetSpec {
        pools: vec!["10.240.5.0/24", "fd00:240:5::/64"],
        ..NetSpec::linux("")
    });
    let ns = NetNs::new("nov6");
    ns.run_ok(&["sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1"]);
    ns.run_ok(&["sysctl", "-q", "-w", "net.ipv6.conf.default.disable_ipv6=1"]);
    let err = dual.add(&ns, "nov6-1").unwrap_err();
    assert_eq!(err.code.number(), 104, "{err}");
    dual.assert_nothing_left("10.240.5.");
    assert_eq!(
        ns.run_ok(&["ip", "-o", "link"]).lines().count(),
        1,
        "no eth0 left in the pod"
    );
}

#[test]
fn del_is_idempotent_and_works_without_the_netns() {
    require_root!(del_is_idempotent_and_works_without_the_netns);
    let net = Net::new(NetSpec::linux("10.240.6.0/24"));
    let twice = net.pod("twice");
    net.del(&twice).unwrap();
    net.del(&twice).unwrap();

    // The namespace is gone (the pod's sandbox was torn down first).
    let gone = net.pod("gone");
    let gone_path = gone.ns.path();
    let gone_cid = gone.cid.clone();
    drop(gone.ns);
    net.rt.del(&gone_cid, Some(&gone_path), "eth0", "").unwrap();

    // containerd sends an empty CNI_NETNS once the sandbox is gone, and
    // the cached result (prevResult) may be missing too.
    let empty = net.pod("empty");
    std::fs::remove_dir_all(net.dir.path().join("cache")).unwrap();
    std::fs::create_dir_all(net.dir.path().join("cache")).unwrap();
    net.rt.del(&empty.cid, None, "eth0", "").unwrap();
    assert_eq!(
        empty.ns.run_ok(&["ip", "-o", "link"]).lines().count(),
        1,
        "eth0 went with the pair"
    );

    net.rt.del("never-added", None, "eth0", "").unwrap();
    net.assert_nothing_left("10.240.6.");
}

#[test]
fn check_passes_after_add_and_names_what_was_removed() {
    require_root!(check_passes_after_add_and_names_what_was_removed);
    let net = Net::new(NetSpec::linux("10.240.7.0/24"));
    let pod = net.pod("chk");
    net.check(&pod).unwrap();
    let host_name = pod.result["interfaces"][0]["name"]
        .as_str()
        .unwrap()
        .to_string();

    let route = format!("{}/32", pod.ip());
    margay_tests::netns::run_ok(Command::new("ip").args(["route", "del", &route]));
    let err = net.check(&pod).unwrap_err();
    assert_eq!(err.code.number(), 107, "{err}");
    assert!(
        err.msg.contains("host route") && err.msg.contains(&route),
        "{err}"
    );

    pod.ns.run_ok(&["ip", "route", "del", "default"]);
    let err = net.check(&pod).unwrap_err();
    assert!(err.msg.contains("pod route to 0.0.0.0/0"), "{err}");

    margay_tests::netns::run_ok(Command::new("ip").args(["link", "del", &host_name]));
    let err = net.check(&pod).unwrap_err();
    assert!(
        err.msg.contains("eth0 is missing") || err.msg.contains(&host_name),
        "{err}"
    );

    net.del(&pod).unwrap();
    net.assert_nothing_left("10.240.7.");
}

#[test]
fn check_fails_when_ipam_lost_the_allocation() {
    require_root!(check_fails_when_ipam_lost_the_allocation);
    let net = Net::new(NetSpec::linux("10.240.8.0/24"));
    let pod = net.pod("lost");
    let handle = format!("{}.{}.eth0", net.name(), pod.cid);
    let out = Command::new(bin("margay-ipam"))
        .arg("--data-dir")
        .arg(net.dir.path().join("ipam"))
        .args(["release", &handle])
        .output()
        .unwrap();
    assert!(out.status.success());
    let err = net.check(&pod).unwrap_err();
    assert!(
        err.msg.contains("IPAM") && err.msg.contains(&handle),
        "{err}"
    );
    net.del(&pod).unwrap();
    net.assert_nothing_left("10.240.8.");
}

#[test]
fn gc_removes_exactly_what_is_not_valid() {
    require_root!(gc_removes_exactly_what_is_not_valid);
    let net = Net::new(NetSpec::linux("10.240.9.0/24"));
    let pods: Vec<Pod> = (0..4).map(|i| net.pod(&format!("gc{i}"))).collect();
    let other = Net::new(NetSpec::linux("10.240.10.0/24"));
    let foreign = other.pod("foreign");

    let keep: Vec<AttachmentId> = pods[..2]
        .iter()
        .map(|p| AttachmentId {
            container_id: p.cid.clone(),
            ifname: "eth0".into(),
        })
        .collect();
    net.rt.gc(&keep).unwrap();
    assert_eq!(net.host_veths().len(), 2);
    assert_eq!(net.allocations(), 2);
    for (i, p) in pods.iter().enumerate() {
        let links = p.ns.run_ok(&["ip", "-o", "link"]);
        assert_eq!(links.contains("eth0"), i < 2, "pod {i}: {links}");
    }
    assert_eq!(
        other.host_veths().len(),
        1,
        "another network's endpoints are not ours to collect"
    );
    for p in &pods[..2] {
        net.check(p).unwrap();
        net.del(p).unwrap();
    }
    other.del(&foreign).unwrap();
    net.assert_nothing_left("10.240.9.");
}

#[test]
fn thirty_two_concurrent_adds_then_dels() {
    require_root!(thirty_two_concurrent_adds_then_dels);
    let net = std::sync::Arc::new(Net::new(NetSpec::linux("10.240.11.0/24")));
    let spawn = |f: &(dyn Fn(usize) + Sync)| {
        std::thread::scope(|s| {
            for i in 0..32 {
                s.spawn(move || f(i));
            }
        })
    };
    let nss: Vec<NetNs> = (0..32).map(|i| NetNs::new(&format!("c{i}"))).collect();
    let results = std::sync::Mutex::new(vec![Value::Null; 32]);
    spawn(&|i| {
        let r = net
            .add(&nss[i], &format!("conc{i}"))
            .unwrap_or_else(|e| panic!("ADD {i}: {e}"));
        results.lock().unwrap()[i] = r;
    });
    let results = results.into_inner().unwrap();
    let ips: Vec<IpAddr> = results
        .iter()
        .map(|r| IpAddr::V4(first_ipv4(r).expect("an IPv4 address")))
        .collect();
    assert_eq!(
        ips.iter().collect::<BTreeSet<_>>().len(),
        32,
        "distinct addresses"
    );
    assert_eq!(net.host_veths().len(), 32);
    // Every pod reaches its neighbour.
    let servers: Vec<TcpServer> = nss
        .iter()
        .map(|ns| TcpServer::start(Some(ns), "pod"))
        .collect();
    for i in 0..32 {
        let j = (i + 1) % 32;
        let got = tcp::request(Some(&nss[i]), sock(ips[j], servers[j].port)).unwrap();
        assert_eq!(got, format!("pod {}", ips[i]));
    }
    spawn(&|i| {
        net.rt
            .del(&format!("conc{i}"), Some(&nss[i].path()), "eth0", "")
            .unwrap_or_else(|e| panic!("DEL {i}: {e}"))
    });
    net.assert_nothing_left("10.240.11.");
}

#[test]
fn chains_with_the_reference_tuning_and_bandwidth_plugins() {
    require_root!(chains_with_the_reference_tuning_and_bandwidth_plugins);
    // Debian's reference plugins (1.1.1) speak CNI up to 1.0.0.
    let net = Net::new(NetSpec {
        version: "1.0.0",
        chained: vec![
            json!({"type": "tuning", "sysctl": {"net.ipv4.conf.eth0.accept_local": "1"}}),
            json!({"type": "bandwidth", "ingressRate": 100_000_000, "ingressBurst": 1_000_000,
                   "egressRate": 100_000_000, "egressBurst": 1_000_000}),
        ],
        ..NetSpec::linux("10.240.12.0/24")
    });
    let pod = net.pod("chain");
    assert_eq!(
        pod.ns
            .run_ok(&["cat", "/proc/sys/net/ipv4/conf/eth0/accept_local"])
            .trim(),
        "1",
        "tuning ran after margay on our interface"
    );
    // bandwidth finds the host veth through our result and shapes it.
    let host_name = pod.result["interfaces"][0]["name"].as_str().unwrap();
    let qdisc =
        margay_tests::netns::run_ok(Command::new("tc").args(["qdisc", "show", "dev", host_name]));
    assert!(
        qdisc.contains("tbf"),
        "bandwidth shaped {host_name}: {qdisc}"
    );
    assert_eq!(
        pod.result["interfaces"][1]["name"], "eth0",
        "later plugins keep our result"
    );
    net.check(&pod).unwrap();
    let server = TcpServer::start(Some(&pod.ns), "shaped");
    assert!(
        tcp::request(None, sock(pod.ip(), server.port))
            .unwrap()
            .starts_with("shaped")
    );
    net.del(&pod).unwrap();
    net.assert_nothing_left("10.240.12.");
}

/// Holds the network's IPAM lock, as a slow IPAM call of another pod would.
fn hold_ipam_lock(net: &Net) -> FileLock {
    FileLock::acquire(
        &net.dir.path().join("ipam").join("ipam.lock"),
        Duration::from_secs(5),
    )
    .unwrap()
}

#[test]
fn a_failed_repeated_add_leaves_the_running_pod_alone() {
    require_root!(a_failed_repeated_add_leaves_the_running_pod_alone);
    let net = Net::new(NetSpec {
        pools: vec!["10.231.1.0/24", "fd00:231:1::/64"],
        ipam_extra: json!({"lock_timeout_ms": 300}),
        ..NetSpec::linux("")
    });
    let pod = net.pod("again");
    let host_name = pod.host_ifname();
    let server = TcpServer::start(Some(&pod.ns), "pod");
    let reachable = || tcp::request(None, sock(pod.ip(), server.port)).is_ok();
    assert!(reachable());

    // IPAM answers "try again later" (another pod holds its lock): the
    // retried ADD fails, and the pod it was retried for keeps running.
    {
        let _held = hold_ipam_lock(&net);
        let err = net.add(&pod.ns, &pod.cid).unwrap_err();
        assert_eq!(err.code.number(), 11, "{err}");
    }
    assert_eq!(net.host_veths(), vec![host_name.clone()], "the veth stays");
    assert_eq!(net.allocations(), 1, "the allocation stays");
    net.check(&pod).unwrap();
    assert!(reachable(), "the pod still answers");

    // IPAM answers with the pod's addresses, then the kernel refuses the
    // IPv6 one (IPv6 is now off on the pod's eth0): neither the veth nor
    // the allocation the pod runs on is rolled back.
    pod.ns
        .run_ok(&["sysctl", "-q", "-w", "net.ipv6.conf.eth0.disable_ipv6=1"]);
    let err = net.add(&pod.ns, &pod.cid).unwrap_err();
    assert_eq!(err.code.number(), 104, "{err}");
    assert_eq!(net.host_veths(), vec![host_name], "the veth stays");
    assert_eq!(net.allocations(), 1, "the allocation stays");
    assert!(reachable(), "the pod still answers over IPv4");

    net.del(&pod).unwrap();
    net.assert_nothing_left("10.231.1.");
}

#[test]
fn gc_reports_try_again_later_when_ipam_is_busy() {
    require_root!(gc_reports_try_again_later_when_ipam_is_busy);
    let net = Net::new(NetSpec {
        ipam_extra: json!({"lock_timeout_ms": 300}),
        ..NetSpec::linux("10.231.2.0/24")
    });
    let pod = net.pod("busy");
    let valid = [AttachmentId {
        container_id: pod.cid.clone(),
        ifname: "eth0".into(),
    }];
    {
        let _held = hold_ipam_lock(&net);
        let err = net.rt.gc(&valid).unwrap_err();
        assert_eq!(err.code.number(), 11, "a retry will do: {err}");
    }
    net.rt.gc(&valid).unwrap();
    net.check(&pod).unwrap();
    net.del(&pod).unwrap();
    net.assert_nothing_left("10.231.2.");
}

#[test]
fn host_local_ipam_adds_and_deletes_without_leftovers() {
    require_root!(host_local_ipam_adds_and_deletes_without_leftovers);
    // Declared before the network, so it outlives the network's cleanup.
    let data_dir = tempfile::tempdir().unwrap();
    // Debian's host-local (1.1.1) speaks CNI up to 1.0.0.
    let net = Net::new(NetSpec {
        version: "1.0.0",
        extra: json!({"ipam": {"type": "host-local", "dataDir": data_dir.path(),
                               "ranges": [[{"subnet": "10.231.3.0/24"}]]}}),
        ..NetSpec::linux("10.231.3.0/24")
    });
    let a = net.pod("hla");
    let b = net.pod("hlb");
    for p in [&a, &b] {
        assert!(p.ip().to_string().starts_with("10.231.3."), "{}", p.ip());
    }
    assert_ne!(a.ip(), b.ip());
    let server = TcpServer::start(Some(&b.ns), "b");
    assert_eq!(
        tcp::request(Some(&a.ns), sock(b.ip(), server.port)).unwrap(),
        format!("b {}", a.ip())
    );
    net.check(&a).unwrap();
    let reserved = || -> Vec<IpAddr> {
        std::fs::read_dir(data_dir.path().join(net.name()))
            .unwrap()
            .filter_map(|e| e.unwrap().file_name().to_str()?.parse().ok())
            .collect()
    };
    let mut held = reserved();
    held.sort();
    let mut want = vec![a.ip(), b.ip()];
    want.sort();
    assert_eq!(held, want, "host-local holds the pods' addresses");

    net.del(&a).unwrap();
    net.del(&b).unwrap();
    assert_eq!(reserved(), Vec::<IpAddr>::new(), "host-local released both");
    net.assert_nothing_left("10.231.3.");
}

/// STATUS in bpf mode tells the runtime the plugin cannot serve ADD when
/// its bpf_root cannot hold pins, naming the key, before any pod fails.
#[test]
fn status_in_bpf_mode_says_when_bpf_root_cannot_hold_pins() {
    require_root!(status_in_bpf_mode_says_when_bpf_root_cannot_hold_pins);
    let elsewhere = tempfile::tempdir().unwrap();
    let net = Net::new(NetSpec {
        extra: serde_json::json!({"bpf_root": elsewhere.path().join("margay")}),
        ..NetSpec::bpf("10.231.5.0/31")
    });
    let err = net.rt.status().unwrap_err();
    assert_eq!(err.code.number(), 50, "{err}");
    assert!(
        err.msg.contains("bpf_root") && err.msg.contains("not on a bpffs"),
        "{err}"
    );
    Net::new(NetSpec::bpf("10.231.6.0/31")).rt.status().unwrap();
}

#[test]
fn status_is_answered_by_ipam() {
    require_root!(status_is_answered_by_ipam);
    let net = Net::new(NetSpec::linux("10.231.4.0/31"));
    net.rt.status().unwrap();
    let p1 = net.pod("st1");
    let p2 = net.pod("st2");
    let err = net.rt.status().unwrap_err();
    assert_eq!(err.code.number(), 50, "{err}");
    assert!(
        err.msg.contains("IPAM") && err.msg.contains("IPv4"),
        "{err}"
    );
    net.del(&p1).unwrap();
    net.rt.status().unwrap();
    net.del(&p2).unwrap();
    net.assert_nothing_left("10.231.4.");
}
