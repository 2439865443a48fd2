//! The networks benchmarks compare: Margay in bpf and linux mode, and
//! Debian's ptp + host-local, each with its own name, pool and state
//! directories, driven through the same CNI driver a test uses.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use margay_tests::bpf::BpfRoot;
use margay_tests::cluster::in_node_wrapper;
use margay_tests::driver::{Runtime, first_ipv4};
use margay_tests::netns::{NetNs, unique_name};
use serde_json::{Value, json};
use tempfile::TempDir;

/// The pods' MTU, every plugin's alike.
pub const POD_MTU: u32 = 1500;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    MargayBpf,
    MargayLinux,
    PtpHostLocal,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::MargayBpf, Kind::MargayLinux, Kind::PtpHostLocal];

    pub fn label(self) -> &'static str {
        match self {
            Kind::MargayBpf => "margay bpf",
            Kind::MargayLinux => "margay linux",
            Kind::PtpHostLocal => "ptp+host-local",
        }
    }
}

/// One network; its pods are the caller's to delete.
pub struct Network {
    pub kind: Kind,
    pub rt: Runtime,
    _dir: TempDir,
    _bpf: Option<BpfRoot>,
}

impl Network {
    /// `pool` is a /16 of its own; `bin_dir` holds margay and margay-ipam,
    /// `peer_dir` the reference plugins.
    pub fn new(kind: Kind, pool: &str, bin_dir: &Path, peer_dir: &Path) -> Result<Network> {
        Self::build(kind, pool, bin_dir, peer_dir, None, None)
    }

    /// A network whose plugins run inside `node`, a node's namespace, as
    /// that node's kubelet would run them.
    pub fn on_node(
        kind: Kind,
        pool: &str,
        bin_dir: &Path,
        peer_dir: &Path,
        node: &NetNs,
    ) -> Result<Network> {
        Self::build(kind, pool, bin_dir, peer_dir, None, Some(node))
    }

    /// A Margay network whose `ipam` section is `ipam` (a host agent's, for
    /// the Kubernetes datastore).
    pub fn with_ipam(
        kind: Kind,
        pool: &str,
        bin_dir: &Path,
        peer_dir: &Path,
        ipam: Value,
    ) -> Result<Network> {
        Self::build(kind, pool, bin_dir, peer_dir, Some(ipam), None)
    }

    fn build(
        kind: Kind,
        pool: &str,
        bin_dir: &Path,
        peer_dir: &Path,
        ipam: Option<Value>,
        node: Option<&NetNs>,
    ) -> Result<Network> {
        let dir = tempfile::tempdir()?;
        let (bin_dir, peer_dir) = match node {
            Some(node) => {
                let wrappers = dir.path().join("bin");
                std::fs::create_dir_all(&wrappers)?;
                for (name, from) in [
                    ("margay", bin_dir),
                    ("margay-ipam", bin_dir),
                    ("ptp", peer_dir),
                    ("host-local", peer_dir),
                ] {
                    in_node_wrapper(&wrappers, node, name, &from.join(name))?;
                }
                (wrappers.clone(), wrappers)
            }
            None => (bin_dir.to_path_buf(), peer_dir.to_path_buf()),
        };
        let bpf = (kind == Kind::MargayBpf).then(BpfRoot::new);
        let (version, plugin, cni_path): (&str, Value, Vec<PathBuf>) = match kind {
            Kind::MargayBpf | Kind::MargayLinux => {
                let ipam = ipam.unwrap_or_else(|| {
                    json!({"type": "margay-ipam", "pools": [pool], "data_dir": dir.path().join("ipam"),
                           "lock_timeout_ms": 60000})
                });
                let mut p = json!({"type": "margay", "nodename": "bench", "mtu": POD_MTU,
                    "dataplane": if kind == Kind::MargayBpf { "bpf" } else { "linux" },
                    "bpf_log_level": "off", "ipam": ipam});
                if let Some(root) = &bpf {
                    p["bpf_root"] = root.path().to_string_lossy().into_owned().into();
                }
                ("1.1.0", p, vec![bin_dir, peer_dir])
            }
            Kind::PtpHostLocal => (
                // Debian's plugins (1.1.1) speak CNI up to 1.0.0.
                "1.0.0",
                json!({"type": "ptp", "ipMasq": false, "mtu": POD_MTU,
                       "ipam": {"type": "host-local", "ranges": [[{"subnet": pool}]],
                                "routes": [{"dst": "0.0.0.0/0"}],
                                "dataDir": dir.path().join("host-local")}}),
                vec![peer_dir],
            ),
        };
        let list =
            json!({"cniVersion": version, "name": unique_name("mgbench"), "plugins": [plugin]});
        let rt = Runtime::new(&list, cni_path, &dir.path().join("cache"));
        Ok(Network {
            kind,
            rt,
            _dir: dir,
            _bpf: bpf,
        })
    }

    /// Where a bpf network's programs and maps are pinned.
    pub fn bpf_root(&self) -> Option<&Path> {
        self._bpf.as_ref().map(BpfRoot::path)
    }

    /// ADD of `cid` in `ns`; the pod's IPv4 address.
    pub fn add(&self, ns: &NetNs, cid: &str) -> Result<std::net::Ipv4Addr> {
        let result = self
            .rt
            .add(cid, &ns.path(), "eth0", "")
            .with_context(|| format!("{}: ADD {cid}", self.kind.label()))?;
        let ips = result["ips"].as_array().map_or(0, Vec::len);
        anyhow::ensure!(
            ips == 1,
            "{}: ADD {cid}: expected one IP in the result, got {ips}: {result}",
            self.kind.label()
        );
        first_ipv4(&result).context("ADD result without an IPv4 address")
    }

    pub fn del(&self, ns: &NetNs, cid: &str) -> Result<()> {
        self.rt
            .del(cid, Some(&ns.path()), "eth0", "")
            .with_context(|| format!("{}: DEL {cid}", self.kind.label()))
    }
}

/// A pod that is DELeted (best effort) when dropped, so an aborted run
/// leaves nothing.
pub struct Pod<'n> {
    pub net: &'n Network,
    pub ns: NetNs,
    pub cid: String,
    pub ip: Option<std::net::Ipv4Addr>,
}

impl<'n> Pod<'n> {
    /// A fresh namespace, not yet added (creating it is not what we time).
    pub fn prepare(net: &'n Network, tag: &str) -> Pod<'n> {
        Pod {
            net,
            ns: NetNs::new(tag),
            cid: unique_name("bench"),
            ip: None,
        }
    }

    /// ADDs it; how long the ADD took.
    pub fn add_timed(&mut self) -> Result<std::time::Duration> {
        let start = std::time::Instant::now();
        self.ip = Some(self.net.add(&self.ns, &self.cid)?);
        Ok(start.elapsed())
    }

    /// DELs it; how long the DEL took.
    pub fn del_timed(&mut self) -> Result<std::time::Duration> {
        let start = std::time::Instant::now();
        self.net.del(&self.ns, &self.cid)?;
        self.ip = None;
        Ok(start.elapsed())
    }
}

impl Drop for Pod<'_> {
    fn drop(&mut self) {
        if self.ip.is_some() {
            let _ = self.net.del(&self.ns, &self.cid);
        }
    }
}
