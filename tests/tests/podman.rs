//! Margay under a real container runtime: Debian's podman 4.3 with its CNI
//! backend (libcni, conflist `cniVersion` 1.0.0), runc, and a busybox-static
//! root filesystem. Containers on a Margay network reach each other over
//! TCP, and stopping them leaves nothing behind: no veth, no route, no
//! allocation, no netns, no libcni cache entry.
//!
//! podman is kept off the machine's global state: its own containers.conf
//! (`CONTAINERS_CONF`), storage.conf and registries.conf, `--root`,
//! `--runroot` and `--tmpdir` in a temp dir, file locks instead of the
//! machine-wide `/dev/shm/libpod_lock`, a file events log (no journald), and
//! a cgroup parent named after the test, removed at the end. Machine
//! quirks: cgroup v1 without systemd (`cgroupfs`), and no CAP_SYS_RESOURCE,
//! so podman's default ulimits (raised to the hard maximum) cannot be set:
//! every container gets explicit `--ulimit nofile=4096:4096` and
//! `--ulimit nproc=4096:4096`.

use std::ffi::OsString;
use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use margay_tests::bins::bin;
use margay_tests::netns::unique_name;
use margay_tests::process::{Output, run_bounded};
use margay_tests::require_root;
use serde_json::{Value, json};
use tempfile::TempDir;

/// Every podman call must finish within this.
const PODMAN_TIMEOUT: Duration = Duration::from_secs(60);

/// The port every test container serves on.
const PORT: u16 = 8080;

/// A running container on the test's network.
struct Container {
    name: String,
    id: String,
    ip: Ipv4Addr,
    /// The netns path podman created for it (`/run/netns/netns-…`).
    sandbox: PathBuf,
}

/// One test's private podman and Margay network; removes its containers,
/// leftover links and cgroups when dropped.
struct Podman {
    dir: TempDir,
    /// The network's name, also the prefix of container names and the
    /// cgroup parent.
    net: String,
    /// The pool, a /24: `10.230.<octet>.0/24`.
    octet: u8,
    rootfs: PathBuf,
}

impl Podman {
    /// `slot` tells apart the pools of tests running at the same time in
    /// one process; the pid tells apart concurrent runs.
    fn new(slot: u32) -> Podman {
        assert!(
            Command::new("podman")
                .arg("--version")
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success()),
            "podman is not installed (apt-get install podman runc busybox-static)"
        );
        let octet = u8::try_from((std::process::id() % 120) * 2 + slot % 2 + 10).unwrap();
        let net = unique_name("mgpod");
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();

        // The plugins podman may exec: ours only. podman brings `lo` up
        // itself, so no `loopback` plugin is needed.
        let plugins = root.join("cni");
        std::fs::create_dir(&plugins).unwrap();
        for name in ["margay", "margay-ipam"] {
            symlink(bin(name), plugins.join(name)).unwrap();
        }

        let netconf = root.join("net.d");
        std::fs::create_dir(&netconf).unwrap();
        let conflist = json!({
            "cniVersion": "1.0.0",
            "name": net,
            "plugins": [{
                "type": "margay",
                "dataplane": "linux",
                "nodename": "podman-test",
                "mtu": 1500,
                "ipam": {
                    "type": "margay-ipam",
                    "pools": [format!("10.230.{octet}.0/24")],
                    "data_dir": root.join("ipam"),
                },
            }],
        });
        std::fs::write(
            netconf.join(format!("{net}.conflist")),
            serde_json::to_vec_pretty(&conflist).unwrap(),
        )
        .unwrap();

        std::fs::write(
            root.join("containers.conf"),
            format!(
                "[network]\n\
                 network_backend = \"cni\"\n\
                 cni_plugin_dirs = [{plugins:?}]\n\
                 network_config_dir = {netconf:?}\n\
                 \n\
                 [engine]\n\
                 cgroup_manager = \"cgroupfs\"\n\
                 runtime = \"runc\"\n\
                 events_logger = \"file\"\n\
                 events_logfile_path = {events:?}\n\
                 lock_type = \"file\"\n",
                events = root.join("events.log"),
            ),
        )
        .unwrap();
        std::fs::write(
            root.join("storage.conf"),
            format!(
                "[storage]\ndriver = \"vfs\"\ngraphroot = {:?}\nrunroot = {:?}\n",
                root.join("root"),
                root.join("runroot"),
            ),
        )
        .unwrap();
        std::fs::write(root.join("registries.conf"), "").unwrap();
        std::fs::create_dir(root.join("tmp")).unwrap();

        let rootfs = root.join("rootfs");
        build_rootfs(&rootfs);
        Podman {
            dir,
            net,
            octet,
            rootfs,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `podman` with this test's configuration and storage.
    fn command(&self) -> Command {
        let mut cmd = Command::new("podman");
        for (k, _) in std::env::vars_os() {
            let k_str = k.to_string_lossy();
            if k_str.starts_with("CNI_") || k_str.starts_with("CONTAINER") {
                cmd.env_remove(&k);
            }
        }
        cmd.env("CONTAINERS_CONF", self.path("containers.conf"))
            .env("CONTAINERS_STORAGE_CONF", self.path("storage.conf"))
            .env("CONTAINERS_REGISTRIES_CONF", self.path("registries.conf"))
            .env("TMPDIR", self.path("tmp"));
        cmd.args(self.global_flags());
        cmd
    }

    fn global_flags(&self) -> Vec<OsString> {
        let mut flags: Vec<OsString> = Vec::new();
        for (flag, dir) in [
            ("--root", "root"),
            ("--runroot", "runroot"),
            ("--tmpdir", "tmp"),
        ] {
            flags.push(flag.into());
            flags.push(self.path(dir).into());
        }
        for f in [
            "--storage-driver",
            "vfs",
            "--cgroup-manager",
            "cgroupfs",
            "--events-backend",
            "file",
        ] {
            flags.push(f.into());
        }
        flags
    }

    /// Runs `podman <args>` within [`PODMAN_TIMEOUT`].
    fn run(&self, args: &[&str]) -> Output {
        let mut cmd = self.command();
        cmd.args(args);
        run_bounded(&mut cmd, PODMAN_TIMEOUT)
    }

    /// Runs `podman <args>`, panicking with its stderr when it fails;
    /// returns its stdout, trimmed.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.success,
            "podman {} failed\nstdout: {}\nstderr: {}",
            args.join(" "),
            out.stdout,
            out.stderr
        );
        out.stdout.trim().to_string()
    }

    /// `podman run -d` of a container answering TCP on [`PORT`] with
    /// `hello from <name>`, shut down cleanly by SIGTERM.
    fn start_server(&self, tag: &str) -> Container {
        let name = format!("{}-{tag}", self.net);
        let script = format!(
            "trap 'exit 0' TERM; /bin/nc -ll -p {PORT} -e /bin/echo hello from {name} & wait"
        );
        self.start(&name, &["/bin/sh", "-c", &script])
    }

    /// `podman run -d` on the test's network. `--network` comes before
    /// `--rootfs`: what follows the rootfs path is the command.
    fn start(&self, name: &str, command: &[&str]) -> Container {
        let cgroup_parent = format!("/{}", self.net);
        let rootfs = self.rootfs.to_str().unwrap();
        let mut args = vec![
            "run",
            "-d",
            "--name",
            name,
            "--cgroup-parent",
            &cgroup_parent,
            "--network",
            &self.net,
            "--ulimit",
            "nofile=4096:4096",
            "--ulimit",
            "nproc=4096:4096",
            "--rootfs",
            rootfs,
        ];
        args.extend_from_slice(command);
        let id = self.ok(&args);
        assert_eq!(id.len(), 64, "podman run -d printed {id:?}, not an ID");
        let inspect = self.inspect(name);
        let net = &inspect["NetworkSettings"]["Networks"][&self.net];
        let ip = net["IPAddress"]
            .as_str()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("{name} has no IPv4 address on {}: {net}", self.net));
        let sandbox = PathBuf::from(
            inspect["NetworkSettings"]["SandboxKey"]
                .as_str()
                .unwrap_or_else(|| panic!("{name} has no SandboxKey: {inspect}")),
        );
        Container {
            name: name.to_string(),
            id,
            ip,
            sandbox,
        }
    }

    fn inspect(&self, name: &str) -> Value {
        let text = self.ok(&["inspect", "--type", "container", name]);
        let mut all: Vec<Value> = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("podman inspect {name}: {e}: {text}"));
        assert_eq!(all.len(), 1, "podman inspect {name}: {text}");
        all.remove(0)
    }

    /// Asks `server` for its greeting from inside `client`, retrying while
    /// the server's `nc` may not be listening yet.
    fn request(&self, client: &Container, server: &Container) -> String {
        let ip = server.ip.to_string();
        let port = PORT.to_string();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let out = self.run(&["exec", &client.name, "/bin/nc", "-w", "3", &ip, &port]);
            if out.success && !out.stdout.trim().is_empty() {
                return out.stdout.trim().to_string();
            }
            assert!(
                Instant::now() < deadline,
                "{} could not reach {} at {ip}:{port}\nstdout: {}\nstderr: {}",
                client.name,
                server.name,
                out.stdout,
                out.stderr
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn in_pool(&self, ip: Ipv4Addr) -> bool {
        let o = ip.octets();
        o[..3] == [10, 230, self.octet]
    }

    /// Host links whose alias says they are Margay's on this network:
    /// (name, alias).
    fn host_links(&self) -> Vec<(String, String)> {
        let prefix = format!("margay:{}:", self.net);
        ip_json(&["link", "show"])
            .into_iter()
            .filter_map(|l| {
                let alias = l["ifalias"].as_str()?;
                alias.starts_with(&prefix).then(|| {
                    (
                        l["ifname"].as_str().unwrap_or_default().to_string(),
                        alias.to_string(),
                    )
                })
            })
            .collect()
    }

    /// Host routes (any table) inside the pool.
    fn pool_routes(&self) -> Vec<Value> {
        let pool = format!("10.230.{}.0/24", self.octet);
        ip_json(&["-4", "route", "show", "table", "all", "root", &pool])
    }

    /// `margay-ipam allocations --json` on this network's store.
    fn allocations(&self) -> Vec<Value> {
        let mut cmd = Command::new(bin("margay-ipam"));
        cmd.arg("--data-dir")
            .arg(self.path("ipam"))
            .args(["allocations", "--json"])
            .env_remove("CNI_COMMAND");
        let out = run_bounded(&mut cmd, Duration::from_secs(30));
        assert!(out.success, "margay-ipam allocations: {}", out.stderr);
        serde_json::from_str(&out.stdout)
            .unwrap_or_else(|e| panic!("allocations --json: {e}: {}", out.stdout))
    }

    /// libcni's cached results for this network (`<net>-<id>-<ifname>`).
    fn libcni_cache(&self) -> Vec<String> {
        let prefix = format!("{}-", self.net);
        std::fs::read_dir("/var/lib/cni/results")
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with(&prefix))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// What podman would leave behind on the host for this network, in a
    /// form an assertion can print.
    fn leftovers(&self, containers: &[&Container]) -> Vec<String> {
        let mut left = Vec::new();
        left.extend(
            self.host_links()
                .into_iter()
                .map(|(n, a)| format!("veth {n} ({a})")),
        );
        left.extend(self.pool_routes().into_iter().map(|r| format!("route {r}")));
        left.extend(
            self.allocations()
                .into_iter()
                .map(|a| format!("allocation {a}")),
        );
        left.extend(
            self.libcni_cache()
                .into_iter()
                .map(|c| format!("libcni cache /var/lib/cni/results/{c}")),
        );
        for c in containers {
            if c.sandbox.exists() {
                left.push(format!("netns {}", c.sandbox.display()));
            }
        }
        left
    }

    /// Waits until nothing is left behind; panics with what remains.
    fn assert_nothing_left(&self, containers: &[&Container], why: &str) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let left = self.leftovers(containers);
            if left.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{why}: left behind:\n  {}\nevents:\n{}",
                left.join("\n  "),
                std::fs::read_to_string(self.path("events.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        // Everything podman knows, in its private storage only.
        let _ = self.run(&["rm", "-f", "-a", "-t", "0"]);
        // Links the runtime failed to remove (their routes go with them).
        for (name, _) in self.host_links() {
            let _ = Command::new("ip").args(["link", "del", &name]).output();
        }
        // The cgroup parent: conmon's cgroup stays after the containers'.
        if let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") {
            for h in hierarchies.filter_map(|e| e.ok()) {
                remove_cgroup(&h.path().join(&self.net));
            }
        }
    }
}

/// Removes an (empty) cgroup and its children.
fn remove_cgroup(dir: &Path) {
    if let Ok(children) = std::fs::read_dir(dir) {
        for c in children.filter_map(|e| e.ok()) {
            if c.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup(&c.path());
            }
        }
        let _ = std::fs::remove_dir(dir);
    }
}

/// A root filesystem of busybox-static: `/bin/busybox` with a relative
/// symlink per applet, and the few files a container expects.
fn build_rootfs(rootfs: &Path) {
    let busybox = Path::new("/bin/busybox");
    assert!(
        busybox.is_file(),
        "/bin/busybox is missing (apt-get install busybox-static)"
    );
    for d in ["bin", "etc", "tmp", "proc", "sys", "dev", "run", "root"] {
        std::fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    std::fs::copy(busybox, rootfs.join("bin/busybox")).unwrap();
    let list = Command::new(busybox).arg("--list").output().unwrap();
    assert!(list.status.success(), "busybox --list failed");
    for applet in String::from_utf8_lossy(&list.stdout).split_whitespace() {
        if applet != "busybox" {
            symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
        }
    }
    std::fs::write(rootfs.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    std::fs::write(rootfs.join("etc/group"), "root:x:0:\n").unwrap();
}

/// `ip -j <args>` as JSON objects.
fn ip_json(args: &[&str]) -> Vec<Value> {
    let out = Command::new("ip").arg("-j").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "ip -j {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.stdout.iter().all(u8::is_ascii_whitespace) {
        return Vec::new();
    }
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "ip -j {}: {e}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// Connects from the host to `ip:PORT` and returns what the server said.
fn host_request(ip: Ipv4Addr) -> String {
    let addr = SocketAddr::from((ip, PORT));
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let attempt =
            TcpStream::connect_timeout(&addr, Duration::from_secs(3)).and_then(|mut s| {
                s.set_read_timeout(Some(Duration::from_secs(3)))?;
                let mut text = String::new();
                s.read_to_string(&mut text)?;
                Ok(text)
            });
        match attempt {
            Ok(text) if !text.trim().is_empty() => return text.trim().to_string(),
            other => assert!(
                Instant::now() < deadline,
                "host could not reach {addr}: {other:?}"
            ),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn podman_containers_on_a_margay_network_talk_over_tcp_and_stop_without_leftovers() {
    require_root!(podman_containers_on_a_margay_network_talk_over_tcp_and_stop_without_leftovers);
    let podman = Podman::new(0);
    assert!(
        podman
            .ok(&["network", "ls", "--format", "{{.Name}}"])
            .lines()
            .any(|n| n == podman.net),
        "podman does not list network {}",
        podman.net
    );

    let a = podman.start_server("a");
    let b = podman.start_server("b");

    // Addresses: distinct, from the pool, and what IPAM recorded.
    assert_ne!(a.ip, b.ip);
    for c in [&a, &b] {
        assert!(
            podman.in_pool(c.ip),
            "{} got {} outside the pool",
            c.name,
            c.ip
        );
    }
    let allocations = podman.allocations();
    assert_eq!(allocations.len(), 2, "{allocations:#?}");
    for c in [&a, &b] {
        let alloc = allocations
            .iter()
            .find(|x| x["container_id"] == c.id.as_str())
            .unwrap_or_else(|| panic!("no allocation for {} ({}): {allocations:#?}", c.name, c.id));
        assert_eq!(alloc["network"], podman.net.as_str());
        assert_eq!(alloc["ifname"], "eth0");
        assert_eq!(alloc["addresses"], json!([c.ip.to_string()]), "{alloc}");
    }

    // Host side: one Margay veth per container, named by the plugin's
    // scheme and carrying the attachment in its alias, with a /32 route.
    let links = podman.host_links();
    assert_eq!(links.len(), 2, "{links:?}");
    let routes = podman.pool_routes();
    for c in [&a, &b] {
        let alias = format!("margay:{}:{}:eth0", podman.net, c.id);
        let (veth, _) = links
            .iter()
            .find(|(_, a)| *a == alias)
            .unwrap_or_else(|| panic!("no host veth with alias {alias}: {links:?}"));
        assert!(
            veth.starts_with("mrg") && veth.len() == 14,
            "host veth {veth} of {}",
            c.name
        );
        assert!(
            routes
                .iter()
                .any(|r| r["dst"] == c.ip.to_string().as_str() && r["dev"] == veth.as_str()),
            "no host route {} dev {veth}: {routes:?}",
            c.ip
        );
        assert!(
            c.sandbox.exists(),
            "{} has no netns {}",
            c.name,
            c.sandbox.display()
        );
    }

    // Pod side, as seen from inside: the address and the default route.
    for c in [&a, &b] {
        let addrs = podman.ok(&["exec", &c.name, "/bin/ip", "-4", "addr", "show", "eth0"]);
        assert!(
            addrs.contains(&format!("inet {}/32", c.ip)),
            "{}: {addrs}",
            c.name
        );
        let routes = podman.ok(&["exec", &c.name, "/bin/ip", "-4", "route"]);
        assert!(
            routes.contains("default via 169.254.1.1"),
            "{}: {routes}",
            c.name
        );
    }

    // TCP both ways between the containers, and from the host to each.
    assert_eq!(podman.request(&b, &a), format!("hello from {}", a.name));
    assert_eq!(podman.request(&a, &b), format!("hello from {}", b.name));
    for c in [&a, &b] {
        assert_eq!(host_request(c.ip), format!("hello from {}", c.name));
    }

    // Stop (SIGTERM, handled: a clean exit), then remove.
    podman.ok(&["stop", "-t", "10", &a.name, &b.name]);
    podman.assert_nothing_left(&[&a, &b], "after podman stop");
    podman.ok(&["rm", &a.name, &b.name]);
    assert_eq!(podman.ok(&["ps", "-a", "-q"]), "");
    podman.assert_nothing_left(&[&a, &b], "after podman rm");
}

#[test]
fn podman_container_exiting_by_itself_releases_its_margay_attachment() {
    require_root!(podman_container_exiting_by_itself_releases_its_margay_attachment);
    let podman = Podman::new(1);
    let name = format!("{}-short", podman.net);
    // It exits on its own: conmon's exit command (`podman container
    // cleanup`, with the same configuration) must run Margay's DEL.
    let c = podman.start(&name, &["/bin/sleep", "2"]);
    assert!(podman.in_pool(c.ip), "{} outside the pool", c.ip);
    assert_eq!(podman.host_links().len(), 1, "{:?}", podman.host_links());
    assert_eq!(podman.allocations().len(), 1);

    let code = podman.ok(&["wait", &name]);
    assert_eq!(code, "0", "the container's exit code");
    podman.assert_nothing_left(&[&c], "after the container exited");
    podman.ok(&["rm", &name]);
    podman.assert_nothing_left(&[&c], "after podman rm");
}
