//! `margay-install` driven as the install-cni init container runs it:
//! configured by environment, installing into temp CNI dirs.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use margay_tests::bins::{bin, bin_dir};
use margay_tests::bpf::BpfRoot;
use margay_tests::driver::{Runtime, first_ipv4};
use margay_tests::netns::NetNs;
use margay_tests::require_root;
use serde_json::{Value, json};
use tempfile::TempDir;

/// A node's CNI directories, in a temp dir.
struct Node {
    dir: TempDir,
}

impl Node {
    fn new() -> Node {
        Node {
            dir: tempfile::tempdir().unwrap(),
        }
    }
    fn bin(&self) -> PathBuf {
        self.dir.path().join("opt/cni/bin")
    }
    fn conf_dir(&self) -> PathBuf {
        self.dir.path().join("etc/cni/net.d")
    }
    fn conf(&self) -> PathBuf {
        self.conf_dir().join("10-margay.conflist")
    }

    /// margay-install with the directories set and `env` on top, as env vars.
    fn command(&self, env: &[(&str, &str)]) -> Command {
        let mut cmd = Command::new(bin("margay-install"));
        cmd.env("CNI_BIN_DIR", self.bin())
            .env("CNI_CONF_DIR", self.conf_dir())
            .env("MARGAY_SOURCE_DIR", bin_dir())
            .env("NODENAME", "node-x")
            .env("MARGAY_IPAM_DATA_DIR", self.dir.path().join("ipam"))
            .env("MARGAY_DATAPLANE", "linux")
            .env("MARGAY_POOLS", "10.242.0.0/24")
            .envs(env.iter().copied());
        cmd
    }

    fn install(&self, env: &[(&str, &str)]) -> Output {
        self.command(env).output().unwrap()
    }

    fn conflist(&self) -> Value {
        serde_json::from_slice(&std::fs::read(self.conf()).unwrap()).unwrap()
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn ok(o: Output) -> Output {
    assert!(
        o.status.success(),
        "margay-install failed: {}{}",
        String::from_utf8_lossy(&o.stdout),
        stderr(&o)
    );
    o
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

#[test]
fn installs_binaries_and_a_0600_conflist_and_leaves_identical_files_alone() {
    let node = Node::new();
    ok(node.install(&[]));
    for name in ["margay", "margay-ipam", "margayctl"] {
        let p = node.bin().join(name);
        assert_eq!(
            std::fs::read(&p).unwrap(),
            std::fs::read(bin(name)).unwrap(),
            "{name}"
        );
        assert_eq!(mode(&p), 0o755, "{name}");
    }
    assert_eq!(mode(&node.conf()), 0o600);
    let conf = node.conflist();
    assert_eq!(conf["plugins"][0]["type"], "margay");
    assert_eq!(conf["plugins"][0]["nodename"], "node-x");

    let inodes: Vec<u64> = ["margay", "margay-ipam"]
        .iter()
        .map(|n| std::fs::metadata(node.bin().join(n)).unwrap().ino())
        .collect();
    let again = ok(node.install(&[]));
    let out = String::from_utf8_lossy(&again.stdout);
    assert!(
        out.contains("margay is up to date") && out.contains("10-margay.conflist is up to date"),
        "{out}"
    );
    let after: Vec<u64> = ["margay", "margay-ipam"]
        .iter()
        .map(|n| std::fs::metadata(node.bin().join(n)).unwrap().ino())
        .collect();
    assert_eq!(inodes, after, "identical binaries are not rewritten");

    ok(node.install(&[("SKIP_CNI_BINARIES", "margayctl"), ("CNI_MTU", "9000")]));
    assert_eq!(
        node.conflist()["plugins"][0]["mtu"],
        9000,
        "a changed setting is re-rendered"
    );
}

#[test]
fn a_reader_never_sees_a_partial_file() {
    let node = Node::new();
    ok(node.install(&[("SKIP_CNI_BINARIES", "margayctl")]));
    let stop = Arc::new(AtomicBool::new(false));
    let (conf, flag) = (node.conf(), stop.clone());
    let reader = std::thread::spawn(move || {
        let mut reads = 0u32;
        while !flag.load(Ordering::Relaxed) {
            let bytes = std::fs::read(&conf).expect("the conflist is always there");
            let doc: Value = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                panic!(
                    "partial conflist ({e}): {}",
                    String::from_utf8_lossy(&bytes)
                )
            });
            assert!(doc["plugins"][0]["mtu"] == 1400 || doc["plugins"][0]["mtu"] == 1500);
            reads += 1;
        }
        reads
    });
    for i in 0..40 {
        let mtu = if i % 2 == 0 { "1400" } else { "1500" };
        ok(node.install(&[("SKIP_CNI_BINARIES", "margayctl"), ("CNI_MTU", mtu)]));
    }
    stop.store(true, Ordering::Relaxed);
    assert!(reader.join().unwrap() > 40);
    let leftovers: Vec<_> = std::fs::read_dir(node.conf_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers.len(), 1, "no temp files left: {leftovers:?}");
}

#[test]
fn every_placeholder_of_a_template_is_rendered() {
    let node = Node::new();
    let template = r#"{"cniVersion": "1.1.0", "name": "custom", "plugins": [{"type": "margay",
        "dataplane": "__DATAPLANE__", "mtu": __CNI_MTU__, "nodename": "__NODENAME__",
        "log_level": "__LOG_LEVEL__", "bpf_root": "__BPF_ROOT__",
        "ipam": {"type": "margay-ipam", "pools": __POOLS__, "data_dir": "__IPAM_DATA_DIR__"}},
        {"type": "tuning", "sysctl": {"net.core.somaxconn": "512"}}]}"#;
    let file = node.dir.path().join("template.json");
    std::fs::write(&file, template).unwrap();
    ok(node.install(&[
        ("CNI_NETWORK_CONFIG_FILE", file.to_str().unwrap()),
        ("CNI_MTU", "1450"),
        ("MARGAY_POOLS", "10.242.0.0/24,fd42::/64"),
        ("MARGAY_LOG_LEVEL", "debug"),
        ("MARGAY_BPF_ROOT", "/sys/fs/bpf/elsewhere"),
        ("SKIP_CNI_BINARIES", "margayctl"),
    ]));
    let p = &node.conflist()["plugins"][0];
    assert_eq!(p["dataplane"], "linux");
    assert_eq!(p["mtu"], 1450);
    assert_eq!(p["nodename"], "node-x");
    assert_eq!(p["log_level"], "debug");
    assert_eq!(p["bpf_root"], "/sys/fs/bpf/elsewhere");
    assert_eq!(p["ipam"]["pools"], json!(["10.242.0.0/24", "fd42::/64"]));
    assert_eq!(
        p["ipam"]["data_dir"],
        node.dir.path().join("ipam").to_str().unwrap()
    );
    assert_eq!(node.conflist()["name"], "custom");
}

const WITH_PORTMAP: &str = r#"{"cniVersion": "1.0.0", "name": "k8s", "plugins": [
    {"type": "margay", "dataplane": "__DATAPLANE__", "ipam": {"type": "margay-ipam", "pools": __POOLS__}},
    {"type": "portmap", "capabilities": {"portMappings": true}}]}"#;

#[test]
fn host_ports_are_refused_in_bpf_mode_and_the_installed_conflist_stays() {
    let node = Node::new();
    ok(node.install(&[("SKIP_CNI_BINARIES", "margayctl")]));
    let before = std::fs::read(node.conf()).unwrap();
    let refused = node.install(&[
        ("CNI_NETWORK_CONFIG", WITH_PORTMAP),
        ("MARGAY_DATAPLANE", "bpf"),
    ]);
    assert!(!refused.status.success());
    let msg = stderr(&refused);
    assert!(
        msg.contains("hostPorts are not supported with the eBPF dataplane"),
        "{msg}"
    );
    assert!(
        msg.contains("MARGAY_DATAPLANE=linux") && msg.contains("Nothing was written"),
        "{msg}"
    );
    assert_eq!(
        std::fs::read(node.conf()).unwrap(),
        before,
        "the good conflist is untouched"
    );

    // Any plugin advertising portMappings counts, whatever its type.
    let sneaky = WITH_PORTMAP.replace(r#""type": "portmap""#, r#""type": "my-ports""#);
    assert!(
        !node
            .install(&[("CNI_NETWORK_CONFIG", &sneaky), ("MARGAY_DATAPLANE", "bpf")])
            .status
            .success()
    );

    ok(node.install(&[
        ("CNI_NETWORK_CONFIG", WITH_PORTMAP),
        ("MARGAY_DATAPLANE", "linux"),
    ]));
    assert_eq!(
        node.conflist()["plugins"][1]["type"],
        "portmap",
        "portmap is fine in linux mode"
    );
}

#[test]
fn an_invalid_template_is_an_error_and_writes_nothing() {
    let cases = [
        ("{not json", "invalid"),
        (
            r#"{"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "bridge"}]}"#,
            "no plugin of type margay",
        ),
        (
            r#"{"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "margay", "nodename": "__NODE__", "ipam": {"type": "margay-ipam", "pools": __POOLS__}}]}"#,
            "__NODE__",
        ),
        (
            r#"{"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "margay", "mtu": 5, "ipam": {"type": "margay-ipam", "pools": __POOLS__}}]}"#,
            "mtu",
        ),
        (
            r#"{"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "margay", "ipam": {"type": "margay-ipam", "pools": ["10.0.0.1/16"]}}]}"#,
            "ipam.pools[0]",
        ),
    ];
    for (template, needle) in cases {
        let node = Node::new();
        let out = node.install(&[("CNI_NETWORK_CONFIG", template)]);
        assert!(!out.status.success(), "{template}");
        assert!(stderr(&out).contains(needle), "{needle}: {}", stderr(&out));
        assert!(
            !node.bin().exists() && !node.conf_dir().exists(),
            "nothing written for {needle}"
        );
    }
    let node = Node::new();
    let missing = node.install(&[("MARGAY_SOURCE_DIR", "/nonexistent")]);
    assert!(
        stderr(&missing).contains("/nonexistent/margay"),
        "{}",
        stderr(&missing)
    );
    assert!(!node.conf_dir().exists());
}

#[test]
fn dry_run_changes_nothing_and_older_confs_are_removed_when_asked() {
    let node = Node::new();
    let out = ok(node.install(&[("MARGAY_DRY_RUN", "true")]));
    assert!(String::from_utf8_lossy(&out.stdout).contains("would write"));
    assert!(!node.bin().exists() && !node.conf_dir().exists());

    std::fs::create_dir_all(node.conf_dir()).unwrap();
    std::fs::write(node.conf_dir().join("10-calico.conflist"), "{}").unwrap();
    std::fs::write(node.conf_dir().join("99-keep.conf"), "{}").unwrap();
    ok(node.install(&[
        ("MARGAY_REMOVE_CONFS", "10-calico.conflist,10-absent.conf"),
        ("SKIP_CNI_BINARIES", "margayctl"),
    ]));
    assert!(!node.conf_dir().join("10-calico.conflist").exists());
    assert!(node.conf_dir().join("99-keep.conf").exists());
}

#[test]
fn watch_reinstalls_on_change_and_stops_on_sigterm() {
    let node = Node::new();
    let file = node.dir.path().join("template.json");
    let template = watched_template();
    std::fs::write(&file, &template).unwrap();
    let mut child = node
        .command(&[
            ("CNI_NETWORK_CONFIG_FILE", file.to_str().unwrap()),
            ("MARGAY_WATCH", "true"),
            ("MARGAY_WATCH_INTERVAL", "1"),
            ("SKIP_CNI_BINARIES", "margayctl"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let guard = scopeguard(child.id());
    wait_for(|| node.conf().exists(), "the first install");
    std::fs::write(
        &file,
        template.replace("k8s-pod-network", "renamed-network"),
    )
    .unwrap();
    wait_for(
        || std::fs::read_to_string(node.conf()).is_ok_and(|t| t.contains("renamed-network")),
        "the re-render",
    );
    std::fs::remove_file(node.conf()).unwrap();
    wait_for(|| node.conf().exists(), "the conflist restored");
    // Edited by hand (or by another tool): put back as rendered.
    std::fs::write(node.conf(), "{}").unwrap();
    wait_for(
        || std::fs::read_to_string(node.conf()).is_ok_and(|t| t.contains("renamed-network")),
        "the edited conflist restored",
    );
    // A binary replaced by another: put back too.
    let plugin = node.bin().join("margay");
    std::fs::write(&plugin, "#!/bin/sh\nexit 1\n").unwrap();
    wait_for(
        || std::fs::metadata(&plugin).is_ok_and(|m| m.len() > 1000),
        "the replaced binary restored",
    );
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = wait_exit(&mut child, Duration::from_secs(5)).expect("exits on SIGTERM");
    assert!(status.success(), "clean exit: {status}");
    drop(guard);
}

fn watched_template() -> String {
    r#"{"cniVersion": "1.1.0", "name": "k8s-pod-network", "plugins": [{"type": "margay",
        "dataplane": "__DATAPLANE__", "nodename": "__NODENAME__",
        "ipam": {"type": "margay-ipam", "pools": __POOLS__, "data_dir": "__IPAM_DATA_DIR__"}}]}"#
        .to_string()
}

/// Kills the process when dropped (a failed assertion must not leave it).
fn scopeguard(pid: u32) -> impl Drop {
    struct Kill(u32);
    impl Drop for Kill {
        fn drop(&mut self) {
            // SAFETY: signalling our own child; harmless if it is gone.
            unsafe { libc::kill(self.0 as i32, libc::SIGKILL) };
        }
    }
    Kill(pid)
}

fn wait_for(cond: impl Fn() -> bool, what: &str) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn wait_exit(child: &mut std::process::Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

#[test]
fn an_installed_node_runs_pods_in_bpf_mode_and_uninstall_leaves_nothing() {
    require_root!(an_installed_node_runs_pods_in_bpf_mode_and_uninstall_leaves_nothing);
    let node = Node::new();
    let root = BpfRoot::new();
    let out = ok(node.install(&[
        ("MARGAY_DATAPLANE", "bpf"),
        ("MARGAY_BPF_ROOT", root.path().to_str().unwrap()),
    ]));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("eBPF programs loaded and pinned"), "{said}");
    assert!(
        root.path().join("progs/from_pod").exists(),
        "programs preloaded before any pod"
    );

    // A runtime using exactly what was installed.
    let conflist: Value = node.conflist();
    let rt = Runtime::new(&conflist, vec![node.bin()], &node.dir.path().join("cache"));
    let ns = NetNs::new("inst");
    let result = rt.add("installed-1", &ns.path(), "eth0", "").unwrap();
    let ip = first_ipv4(&result).expect("an IPv4 address");
    assert_eq!(ip.octets()[..3], [10, 242, 0]);
    let host_veth = result["interfaces"][0]["name"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(margay_ebpf::registry::list(root.path()).unwrap().len(), 1);

    // Uninstall while the pod runs: its programs go, then everything else.
    let out = ok(node.install(&[("MARGAY_UNINSTALL", "true")]));
    assert!(String::from_utf8_lossy(&out.stdout).contains("detached every endpoint"));
    assert!(!node.conf().exists());
    for name in ["margay", "margay-ipam", "margayctl"] {
        assert!(!node.bin().join(name).exists(), "{name}");
    }
    assert!(!root.path().exists(), "no pins left");
    assert_no_lock_files(root.path());
    assert!(
        margay_ebpf::node::attached(&host_veth, aya::programs::TcAttachType::Ingress).is_empty()
    );
}

#[test]
fn switching_the_dataplane_back_and_forth_is_reversible() {
    require_root!(switching_the_dataplane_back_and_forth_is_reversible);
    let node = Node::new();
    let root = BpfRoot::new();
    let root_env = ("MARGAY_BPF_ROOT", root.path().to_str().unwrap());
    let attached = |veth: &str| {
        !margay_ebpf::node::attached(veth, aya::programs::TcAttachType::Ingress).is_empty()
    };
    let add = |cid: &str, ns: &NetNs| -> String {
        let rt = Runtime::new(
            &node.conflist(),
            vec![node.bin()],
            &node.dir.path().join("cache"),
        );
        let r = rt
            .add(cid, &ns.path(), "eth0", "")
            .unwrap_or_else(|e| panic!("ADD {cid}: {e}"));
        r["interfaces"][0]["name"].as_str().unwrap().to_string()
    };
    let (ns_a, ns_b, ns_c) = (NetNs::new("swa"), NetNs::new("swb"), NetNs::new("swc"));

    ok(node.install(&[("MARGAY_DATAPLANE", "bpf"), root_env]));
    let a = add("switch-a", &ns_a);
    assert!(attached(&a));

    // To linux: running pods keep their programs; new pods get none.
    ok(node.install(&[("MARGAY_DATAPLANE", "linux"), root_env]));
    let b = add("switch-b", &ns_b);
    assert!(attached(&a) && !attached(&b));
    let detach = Command::new(node.bin().join("margayctl"))
        .args([
            "--bpf-root",
            root.path().to_str().unwrap(),
            "dataplane",
            "detach-all",
        ])
        .output()
        .unwrap();
    assert!(detach.status.success(), "{}", stderr(&detach));
    assert!(
        !attached(&a),
        "detach-all takes running pods off the programs"
    );
    let ping = ns_b.run(&["ping", "-c", "1", "-W", "2", &addr_of(&ns_a)]);
    assert!(ping.status.success(), "pods still talk after the switch");

    // And back to bpf: new pods get programs again.
    ok(node.install(&[("MARGAY_DATAPLANE", "bpf"), root_env]));
    let c = add("switch-c", &ns_c);
    assert!(attached(&c));
}

/// Nothing of `root`'s is left under /run/margay/locks (its lock and
/// serial files live outside it).
fn assert_no_lock_files(root: &std::path::Path) {
    let flat: String = root
        .to_string_lossy()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let prefix = format!("{flat}.");
    let left: Vec<String> = std::fs::read_dir("/run/margay/locks")
        .map(|dir| {
            dir.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    let left: Vec<&String> = left
        .iter()
        .filter(|name| name.starts_with(&prefix))
        .collect();
    assert!(left.is_empty(), "lock files left: {left:?}");
}

fn addr_of(ns: &NetNs) -> String {
    let out = ns.run_ok(&["ip", "-4", "-o", "addr", "show", "eth0"]);
    let cidr = out
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .unwrap()
        .to_string();
    cidr.split('/').next().unwrap().to_string()
}

/// A veth pair on the host with an address on one end: a stand-in for a
/// node's NIC, removed when dropped.
struct FakeNic(margay_tests::netns::HostVeth);

impl FakeNic {
    fn new(addr: &str) -> FakeNic {
        let veth = margay_tests::netns::HostVeth::new("mgn");
        let ip = |args: &[&str]| {
            margay_tests::netns::run_ok(std::process::Command::new("ip").args(args));
        };
        ip(&["addr", "add", addr, "dev", &veth.name]);
        ip(&["link", "set", &veth.name, "up"]);
        FakeNic(veth)
    }
}

impl Drop for FakeNic {
    fn drop(&mut self) {
        // The install with a data interface set up the node's tunnel; its
        // uninstall removes it, but not when the test failed before that.
        let _ = std::process::Command::new("ip")
            .args(["link", "del", margay_ebpf::cluster::TUNNEL_DEVICE])
            .output();
    }
}

#[test]
fn data_interfaces_of_the_conflist_get_from_net_and_uninstall_takes_it_off() {
    require_root!(data_interfaces_of_the_conflist_get_from_net_and_uninstall_takes_it_off);
    let node = Node::new();
    let root = BpfRoot::new();
    let nic = FakeNic::new("10.245.121.1/32");
    let template = watched_template().replace(
        r#""dataplane": "__DATAPLANE__","#,
        &format!(
            r#""dataplane": "__DATAPLANE__", "bpf_root": "__BPF_ROOT__", "bpf_data_ifaces": "{}","#,
            nic.0.name
        ),
    );
    let out = ok(node.install(&[
        ("MARGAY_DATAPLANE", "bpf"),
        ("MARGAY_BPF_ROOT", root.path().to_str().unwrap()),
        ("CNI_NETWORK_CONFIG", &template),
    ]));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains(&format!(
            "from_net attached to {}: NodePorts answer on 10.245.121.1",
            nic.0.name
        )),
        "{said}"
    );
    assert!(said.contains("margay-vx up"), "{said}");
    let ifaces = margay_ebpf::nodeport::data_ifaces(root.path()).unwrap();
    assert_eq!(ifaces.len(), 1);
    assert_eq!(ifaces[0].ifname.as_deref(), Some(nic.0.name.as_str()));
    assert!(
        !margay_ebpf::node::attached(&nic.0.name, aya::programs::TcAttachType::Ingress).is_empty()
    );

    let bad = template.replace(&nic.0.name, "eth(");
    let out = node.install(&[
        ("MARGAY_DATAPLANE", "bpf"),
        ("MARGAY_BPF_ROOT", root.path().to_str().unwrap()),
        ("CNI_NETWORK_CONFIG", &bad),
    ]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("bpf_data_ifaces"), "{}", stderr(&out));

    ok(node.install(&[("MARGAY_UNINSTALL", "true")]));
    assert!(!root.path().exists(), "no pins left");
    assert_no_lock_files(root.path());
    assert!(
        margay_ebpf::node::attached(&nic.0.name, aya::programs::TcAttachType::Ingress).is_empty(),
        "from_net is off the NIC"
    );
    assert!(
        nix::net::if_::if_nametoindex(margay_ebpf::cluster::TUNNEL_DEVICE).is_err(),
        "the tunnel device is gone"
    );
}
