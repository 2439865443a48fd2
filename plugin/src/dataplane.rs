//! The hook where a dataplane programs an endpoint, chosen by `dataplane`.

use std::net::IpAddr;
use std::path::PathBuf;

use margay_conf::margay::{Dataplane as Mode, PluginConf};
use margay_conf::{CniError, Code};
use margay_ebpf::node::{Node, Settings};
use margay_ebpf::{DataplaneError, abi, registry};

use crate::endpoint::Endpoint;

/// What a dataplane does beyond the Linux wiring every endpoint gets.
/// Implementations must tolerate being asked to forget what is not there.
pub trait Dataplane: Sync {
    /// Programs the host veth `host_ifname` as soon as it exists, while ADD
    /// goes on with IPAM and the wiring (attaching can wait for a kernel RCU
    /// grace period). Until `register`, the endpoint's traffic is dropped.
    fn attach(&self, host_ifname: &str) -> Result<(), CniError>;
    /// Records the wired endpoint; ADD fails (and unwinds) on error.
    fn register(&self, ep: &Endpoint) -> Result<(), CniError>;
    /// Forgets the endpoint on host veth `host_ifname`, whose interface is
    /// being deleted (or is gone) and takes any attached programs with it.
    fn forget(&self, host_ifname: &str) -> Result<(), CniError>;
    /// Verifies what `attach` did.
    fn check(&self, ep: &Endpoint) -> Result<(), CniError>;
}

/// `"dataplane": "linux"`: routes and sysctls only; nothing more to do.
pub struct Routing;

impl Dataplane for Routing {
    fn attach(&self, _: &str) -> Result<(), CniError> {
        Ok(())
    }
    fn register(&self, _: &Endpoint) -> Result<(), CniError> {
        Ok(())
    }
    fn forget(&self, _: &str) -> Result<(), CniError> {
        Ok(())
    }
    fn check(&self, _: &Endpoint) -> Result<(), CniError> {
        Ok(())
    }
}

/// `"dataplane": "bpf"`: `from_pod`/`to_pod` on the host veth, the endpoint
/// in the pinned maps. Programs are loaded once per node; an ADD opens
/// pins, writes two map entries and creates two links.
pub struct Ebpf {
    root: PathBuf,
    settings: Settings,
}

fn dataplane_error(e: DataplaneError) -> CniError {
    CniError::new(Code::Dataplane, format!("eBPF dataplane: {e}"))
}

impl Dataplane for Ebpf {
    fn attach(&self, host_ifname: &str) -> Result<(), CniError> {
        let mut node = Node::open(&self.root, &self.settings).map_err(dataplane_error)?;
        node.attach(host_ifname).map_err(dataplane_error)
    }

    fn register(&self, ep: &Endpoint) -> Result<(), CniError> {
        let Some(IpAddr::V4(ip)) = ep.addresses.iter().find(|a| a.is_ipv4()).copied() else {
            return Err(CniError::new(
                Code::Dataplane,
                "the eBPF dataplane needs an IPv4 address on the pod",
            ));
        };
        let mac = ep.pod.mac.ok_or_else(|| {
            CniError::new(Code::Dataplane, "the pod interface has no MAC address")
        })?;
        registry::register(
            &self.root,
            &abi::Endpoint::new(ep.host.index, &ep.host.name, ip, mac),
        )
        .map_err(dataplane_error)
    }

    fn forget(&self, host_ifname: &str) -> Result<(), CniError> {
        registry::unregister(&self.root, host_ifname)
            .map(drop)
            .map_err(dataplane_error)
    }

    fn check(&self, ep: &Endpoint) -> Result<(), CniError> {
        let checked =
            |e: DataplaneError| CniError::new(Code::CheckFailed, format!("eBPF dataplane: {e}"));
        let node = Node::open(&self.root, &self.settings).map_err(checked)?;
        node.verify_attached(&ep.host.name).map_err(checked)?;
        match registry::find(&self.root, &ep.host.name).map_err(checked)? {
            Some(entry)
                if entry.ifindex == ep.host.index
                    && ep.addresses.contains(&IpAddr::V4(entry.ipv4())) =>
            {
                Ok(())
            }
            Some(entry) => Err(CniError::new(
                Code::CheckFailed,
                format!(
                    "eBPF endpoint entry of {} is stale (ifindex {}, {})",
                    ep.host.name,
                    entry.ifindex,
                    entry.ipv4()
                ),
            )),
            None => Err(CniError::new(
                Code::CheckFailed,
                format!("eBPF endpoint entry of {} is missing", ep.host.name),
            )),
        }
    }
}

/// The dataplane the configuration asks for. There is no silent fallback:
/// asking for eBPF where it cannot run is an error.
pub fn select(conf: &PluginConf) -> Result<Box<dyn Dataplane>, CniError> {
    match conf.dataplane {
        Mode::Linux => Ok(Box::new(Routing)),
        Mode::Bpf => Ok(Box::new(Ebpf {
            root: conf.bpf_root.clone(),
            settings: Settings::from_conf(conf),
        })),
    }
}
