//! A test's own CNI network: unique name, its own pool, IPAM store, result
//! cache and (in bpf mode) BPF root; pods added through the driver. Dropping
//! it DELs whatever it still has and garbage-collects the rest, so a failed
//! test leaves nothing behind.

use std::net::IpAddr;
use std::process::Command;

use margay_conf::CniError;
use serde_json::{Value, json};
use tempfile::TempDir;

use crate::bins::{bin, cni_path};
use crate::bpf::BpfRoot;
use crate::driver::{Runtime, first_ipv4};
use crate::netns::{NetNs, unique_name};

/// What a test network is made of.
pub struct NetSpec<'a> {
    pub version: &'a str,
    /// margay-ipam pools; must be unique to the test (host routes are global).
    pub pools: Vec<&'a str>,
    /// `"linux"` or `"bpf"`.
    pub dataplane: &'a str,
    /// Extra keys of the margay plugin's configuration (an `ipam` key
    /// replaces the whole section).
    pub extra: Value,
    /// Extra keys of the margay-ipam section (`lock_timeout_ms`, ...).
    pub ipam_extra: Value,
    /// Plugins chained after margay.
    pub chained: Vec<Value>,
}

impl<'a> NetSpec<'a> {
    pub fn linux(pool: &'a str) -> NetSpec<'a> {
        NetSpec {
            version: "1.1.0",
            pools: vec![pool],
            dataplane: "linux",
            extra: json!({}),
            ipam_extra: json!({}),
            chained: vec![],
        }
    }

    pub fn bpf(pool: &'a str) -> NetSpec<'a> {
        NetSpec {
            dataplane: "bpf",
            ..Self::linux(pool)
        }
    }
}

pub struct Net {
    pub dir: TempDir,
    pub rt: Runtime,
    /// Present in bpf mode.
    pub bpf_root: Option<BpfRoot>,
}

pub struct Pod {
    pub ns: NetNs,
    pub cid: String,
    pub result: Value,
}

impl Pod {
    pub fn ip(&self) -> IpAddr {
        IpAddr::V4(first_ipv4(&self.result).expect("an IPv4 address"))
    }

    /// The host veth's name, from the ADD result.
    pub fn host_ifname(&self) -> String {
        self.result["interfaces"][0]["name"]
            .as_str()
            .expect("a host interface")
            .to_string()
    }

    /// The host veth's ifindex.
    pub fn host_ifindex(&self) -> u32 {
        crate::netns::ifindex_of(&self.host_ifname())
    }
}

impl Net {
    pub fn new(spec: NetSpec) -> Net {
        let dir = tempfile::tempdir().unwrap();
        let bpf_root = (spec.dataplane == "bpf").then(BpfRoot::new);
        let mut margay = json!({"type": "margay", "dataplane": spec.dataplane, "nodename": "test-node",
            "ipam": {"type": "margay-ipam", "pools": spec.pools,
                     "data_dir": dir.path().join("ipam"), "lock_timeout_ms": 30000}});
        margay["ipam"]
            .as_object_mut()
            .unwrap()
            .extend(spec.ipam_extra.as_object().cloned().unwrap_or_default());
        if let Some(root) = &bpf_root {
            margay["bpf_root"] = root.path().to_str().unwrap().into();
        }
        margay
            .as_object_mut()
            .unwrap()
            .extend(spec.extra.as_object().cloned().unwrap_or_default());
        let plugins: Vec<Value> = std::iter::once(margay).chain(spec.chained).collect();
        let list =
            json!({"cniVersion": spec.version, "name": unique_name("mgnet"), "plugins": plugins});
        let rt = Runtime::new(&list, cni_path(), &dir.path().join("cache"));
        Net { dir, rt, bpf_root }
    }

    pub fn name(&self) -> &str {
        &self.rt.list.name
    }

    pub fn add(&self, ns: &NetNs, cid: &str) -> Result<Value, CniError> {
        self.rt.add(
            cid,
            &ns.path(),
            "eth0",
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=test;K8S_POD_NAME=pod",
        )
    }

    pub fn pod(&self, tag: &str) -> Pod {
        let ns = NetNs::new(tag);
        let cid = unique_name("cid");
        let result = self
            .add(&ns, &cid)
            .unwrap_or_else(|e| panic!("ADD {cid}: {e}"));
        Pod { ns, cid, result }
    }

    pub fn del(&self, pod: &Pod) -> Result<(), CniError> {
        self.rt.del(&pod.cid, Some(&pod.ns.path()), "eth0", "")
    }

    pub fn check(&self, pod: &Pod) -> Result<(), CniError> {
        self.rt.check(&pod.cid, &pod.ns.path(), "eth0", "")
    }

    /// The network's BPF root (bpf mode).
    pub fn bpf_root(&self) -> &std::path::Path {
        self.bpf_root.as_ref().expect("a bpf network").path()
    }

    /// `margayctl --bpf-root <this network's>` with `args`.
    pub fn margayctl(&self, args: &[&str]) -> std::process::Output {
        Command::new(bin("margayctl"))
            .arg("--bpf-root")
            .arg(self.bpf_root())
            .args(args)
            .output()
            .expect("margayctl runs")
    }

    /// `margayctl` that must succeed; its stdout.
    pub fn margayctl_ok(&self, args: &[&str]) -> String {
        let out = self.margayctl(args);
        assert!(
            out.status.success(),
            "margayctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Number of IPAM allocations in the network's store.
    pub fn allocations(&self) -> usize {
        let out = Command::new(bin("margay-ipam"))
            .arg("--data-dir")
            .arg(self.dir.path().join("ipam"))
            .args(["allocations", "--json"])
            .output()
            .unwrap();
        serde_json::from_slice::<Vec<Value>>(&out.stdout)
            .map(|v| v.len())
            .unwrap_or(0)
    }

    /// Host veths that belong to this network (by their alias).
    pub fn host_veths(&self) -> Vec<String> {
        host_links_with_alias(&format!("margay:{}:", self.name()))
    }

    /// Host routes into the test's pool.
    pub fn host_routes(&self, pool_prefix: &str) -> Vec<String> {
        let out = Command::new("ip").args(["-4", "route"]).output().unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.starts_with(pool_prefix))
            .map(String::from)
            .collect()
    }

    pub fn assert_nothing_left(&self, pool_prefix: &str) {
        assert_eq!(self.host_veths(), Vec::<String>::new(), "no veth left");
        assert_eq!(
            self.host_routes(pool_prefix),
            Vec::<String>::new(),
            "no route left"
        );
        assert_eq!(self.allocations(), 0, "no allocation left");
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for cid in self.rt.cached_container_ids("eth0") {
            let _ = self.rt.del(&cid, None, "eth0", "");
        }
        let _ = self.rt.gc(&[]);
    }
}

/// Host links whose alias starts with `prefix`.
pub fn host_links_with_alias(prefix: &str) -> Vec<String> {
    let out = Command::new("ip")
        .args(["-o", "link", "show"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(&format!("alias {prefix}")))
        .filter_map(|l| {
            l.split(": ")
                .nth(1)
                .map(|n| n.split('@').next().unwrap().to_string())
        })
        .collect()
}
