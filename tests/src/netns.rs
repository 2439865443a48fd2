//! Named network namespaces (`ip netns`), deleted when dropped, and
//! processes inside them, killed when dropped.

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A unique name for a test's object: `<prefix><pid>x<n>`, short enough for
/// interface names when `prefix` is short.
pub fn unique_name(prefix: &str) -> String {
    format!(
        "{prefix}{}x{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A network namespace owned by a test, or one it only enters (a pod's).
#[derive(Debug)]
pub struct NetNs {
    name: String,
    /// Made by the test, and deleted when dropped.
    owned: bool,
}

impl NetNs {
    /// Creates `mgt<tag>…` with its loopback up.
    pub fn new(tag: &str) -> NetNs {
        let name = unique_name(&format!("mgt{tag}-"));
        run_ok(Command::new("ip").args(["netns", "add", &name]));
        let ns = NetNs { name, owned: true };
        ns.run_ok(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// The namespace whose file is `path` (a pod's, bind-mounted by its
    /// runtime), entered but never deleted.
    pub fn existing(path: &std::path::Path) -> NetNs {
        NetNs {
            name: path.to_string_lossy().into_owned(),
            owned: false,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The path a runtime passes as `CNI_NETNS`.
    pub fn path(&self) -> PathBuf {
        if self.owned {
            PathBuf::from("/var/run/netns").join(&self.name)
        } else {
            PathBuf::from(&self.name)
        }
    }

    /// Gives the namespace an `eth0`: one end of a veth pair whose other
    /// end, `name`, is in `from` (the host's namespace for `None`).
    pub fn add_eth0(&self, from: Option<&NetNs>, name: &str) {
        let args = [
            "ip", "link", "add", name, "type", "veth", "peer", "name", "eth0", "netns", &self.name,
        ];
        match from {
            Some(ns) => {
                ns.run_ok(&args);
            }
            None => {
                run_ok(Command::new(args[0]).args(&args[1..]));
            }
        }
    }

    /// Runs a command inside the namespace.
    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("ip netns exec runs")
    }

    /// Runs a command inside the namespace and returns its stdout; panics
    /// with its stderr when it fails.
    pub fn run_ok(&self, args: &[&str]) -> String {
        run_ok(&mut self.command(args))
    }

    /// Starts a long-running command inside the namespace.
    pub fn spawn(&self, args: &[&str]) -> ChildGuard {
        let child = self
            .command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("ip netns exec spawns");
        ChildGuard(child)
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd;
        if self.owned {
            cmd = Command::new("ip");
            cmd.args(["netns", "exec", &self.name]);
        } else {
            cmd = Command::new("nsenter");
            cmd.arg(format!("--net={}", self.name)).arg("--");
        }
        cmd.args(args);
        cmd
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        if !self.owned {
            return;
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// A veth pair in the host's namespace, `<name>` and `<name>p`, deleted
/// (both ends) when dropped.
#[derive(Debug)]
pub struct HostVeth {
    pub name: String,
}

impl HostVeth {
    pub fn new(prefix: &str) -> HostVeth {
        let name = unique_name(prefix);
        run_ok(Command::new("ip").args([
            "link",
            "add",
            &name,
            "type",
            "veth",
            "peer",
            "name",
            &format!("{name}p"),
        ]));
        HostVeth { name }
    }
}

impl Drop for HostVeth {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.name])
            .output();
    }
}

/// A child process killed and reaped when dropped.
#[derive(Debug)]
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A host interface's number, from sysfs.
pub fn ifindex_of(ifname: &str) -> u32 {
    sysfs_number(ifname, "ifindex") as u32
}

/// Bytes a host interface has transmitted, from sysfs.
pub fn tx_bytes(ifname: &str) -> u64 {
    sysfs_number(ifname, "statistics/tx_bytes")
}

fn sysfs_number(ifname: &str, file: &str) -> u64 {
    let path = format!("/sys/class/net/{ifname}/{file}");
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Runs `cmd`, panicking with its stderr when it fails; returns stdout.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
