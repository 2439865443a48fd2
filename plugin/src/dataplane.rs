//! The hook where a dataplane programs an endpoint, chosen by `dataplane`.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::time::Duration;

use margay_conf::agent::{self, Answer, Request};
use margay_conf::env::Attachment;
use margay_conf::margay::{Dataplane as Mode, PluginConf};
use margay_conf::{CniError, Code};
use margay_ebpf::node::{Node, Settings};
use margay_ebpf::paths::map_path;
use margay_ebpf::{DataplaneError, abi, registry};

use crate::endpoint::Endpoint;
use crate::link;
use crate::netlink::Netlink;

/// What a dataplane does beyond the Linux wiring every endpoint gets.
/// Implementations must tolerate being asked to forget what is not there.
/// The errors below are [`Ebpf`]'s; [`Routing`] never fails.
pub trait Dataplane: Sync {
    /// Whether the dataplane can serve ADD on this node, for STATUS: what
    /// it needs of the node and can tell without changing anything.
    ///
    /// # Errors
    ///
    /// [`Code::PluginNotAvailable`] naming what is missing (for eBPF:
    /// kernel BTF, or a `bpf_root` that is not and cannot become a bpffs
    /// directory). The default, for a dataplane that needs nothing, never
    /// fails.
    fn ready(&self) -> Result<(), CniError> {
        Ok(())
    }
    /// Programs the host veth `host_ifname` as soon as it exists, while ADD
    /// goes on with IPAM and the wiring (attaching can wait for a kernel RCU
    /// grace period). Until `register`, the endpoint's traffic is dropped.
    ///
    /// # Errors
    ///
    /// [`Code::Dataplane`] when the dataplane cannot be loaded or opened on
    /// the node, or cannot be attached to `host_ifname`.
    fn attach(&self, host_ifname: &str) -> Result<(), CniError>;
    /// Records the wired endpoint; ADD fails (and unwinds) on error.
    ///
    /// # Errors
    ///
    /// [`Code::Dataplane`] when the endpoint does not fit the dataplane
    /// (for eBPF: no IPv4 address, more than one address of a family, or
    /// no MAC on the pod interface) or cannot be recorded.
    fn register(&self, ep: &Endpoint) -> Result<(), CniError>;
    /// Returns once the registered endpoint's NetworkPolicy is in force,
    /// before the runtime starts the pod's containers; ADD fails (and
    /// unwinds) when that cannot be confirmed.
    ///
    /// # Errors
    ///
    /// [`Code::TryAgainLater`] when margay-agent does not confirm the policy
    /// in force: it answers that it cannot apply it, answers something
    /// else, or takes the request and fails to answer. The default, for a
    /// dataplane without policy, never fails; nor does the eBPF one when no
    /// agent listens, since the agent applies the pod's policy when it runs.
    fn enforce_policy(&self, _ep: &Endpoint, _att: &Attachment) -> Result<(), CniError> {
        Ok(())
    }
    /// Forgets the endpoint on host veth `host_ifname`, whose interface is
    /// being deleted (or is gone) and takes any attached programs with it.
    ///
    /// # Errors
    ///
    /// [`Code::Dataplane`] when the dataplane's record of it cannot be
    /// removed. An endpoint it does not know is not an error.
    fn forget(&self, host_ifname: &str) -> Result<(), CniError>;
    /// Verifies what `attach` and `register` did, for CHECK.
    ///
    /// # Errors
    ///
    /// [`Code::CheckFailed`] when the programs are not attached to the host
    /// veth, or its record is missing, stale or names other addresses;
    /// [`Code::Dataplane`] when the endpoint's addresses do not fit the
    /// dataplane.
    fn check(&self, ep: &Endpoint) -> Result<(), CniError>;
    /// Forgets every endpoint whose host veth no longer exists (it vanished
    /// without a DEL), whichever network it was on: it can never carry
    /// traffic again, but it would hold a registry slot forever. Returns
    /// the host veth names forgotten.
    ///
    /// # Errors
    ///
    /// [`Code::Kernel`] when the host's links cannot be listed;
    /// [`Code::Dataplane`] when the dataplane's records cannot be read or
    /// removed.
    fn forget_vanished(&self, host: &Netlink) -> Result<Vec<String>, CniError>;
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
    fn forget_vanished(&self, _: &Netlink) -> Result<Vec<String>, CniError> {
        Ok(Vec::new())
    }
}

/// Where the kernel describes its own types, which the programs' loading
/// needs (CO-RE).
const KERNEL_BTF: &str = "/sys/kernel/btf/vmlinux";

/// `"dataplane": "bpf"`: `from_pod`/`to_pod` on the host veth, the endpoint
/// in the pinned maps. Programs are loaded once per node; an ADD opens
/// pins, writes two map entries and creates two links.
pub struct Ebpf {
    root: PathBuf,
    settings: Settings,
    /// The node's margay-agent, which enforces the cluster's NetworkPolicy.
    agent: Option<PathBuf>,
}

/// How long ADD waits for margay-agent to put a pod's policy in force
/// (longer than the agent's own limits, so its reason is the one seen).
const POLICY_TIMEOUT: Duration = Duration::from_secs(10);

fn dataplane_error(e: DataplaneError) -> CniError {
    CniError::new(Code::Dataplane, format!("eBPF dataplane: {e}"))
}

impl Dataplane for Ebpf {
    fn ready(&self) -> Result<(), CniError> {
        let not_available = |what: String| CniError::new(Code::PluginNotAvailable, what);
        if !std::path::Path::new(KERNEL_BTF).exists() {
            return Err(not_available(format!(
                "dataplane bpf: the kernel has no BTF ({KERNEL_BTF}), which the programs need"
            )));
        }
        // ADD mounts bpffs at /sys/fs/bpf when it is not (bpffs::ensure_root);
        // anywhere else the root must already be on one.
        let on_bpffs = self.root.starts_with(margay_ebpf::bpffs::BPFFS)
            || self
                .root
                .ancestors()
                .find(|dir| dir.exists())
                .is_some_and(margay_ebpf::bpffs::is_bpffs);
        if !on_bpffs {
            return Err(not_available(format!(
                "bpf_root: {} is not on a bpffs (mount -t bpf bpf /sys/fs/bpf)",
                self.root.display()
            )));
        }
        Ok(())
    }

    fn attach(&self, host_ifname: &str) -> Result<(), CniError> {
        let mut node = Node::open(&self.root, &self.settings).map_err(dataplane_error)?;
        node.attach(host_ifname).map_err(dataplane_error)
    }

    fn register(&self, ep: &Endpoint) -> Result<(), CniError> {
        let (v4, v6) = pod_addresses(&ep.addresses)?;
        let mac = ep.pod.mac.ok_or_else(|| {
            CniError::new(Code::Dataplane, "the pod interface has no MAC address")
        })?;
        registry::register(
            &self.root,
            &abi::Endpoint::new(ep.host.index, &ep.host.name, v4, mac),
            v6,
        )
        .map_err(dataplane_error)
    }

    /// A Kubernetes pod (the runtime names it in `CNI_ARGS`) on a node
    /// whose agent enforces NetworkPolicy is not started until the agent
    /// says its policy is in force: a pod that policy isolates is never
    /// open, not even before the kubelet reports its address. An agent
    /// that runs but cannot confirm it fails the ADD (code 11, the kubelet
    /// retries). Where no agent runs at all (it is restarting, or its
    /// DaemonSet pod cannot start) the node keeps starting pods, as Calico
    /// does: the agent puts their policy in force at its first sync.
    fn enforce_policy(&self, ep: &Endpoint, att: &Attachment) -> Result<(), CniError> {
        let (Some(socket), Some(namespace), Some(name)) =
            (&self.agent, att.args.pod_namespace(), att.args.pod_name())
        else {
            return Ok(());
        };
        let request = Request::Policy {
            ifindex: ep.host.index,
            namespace: namespace.to_string(),
            name: name.to_string(),
            uid: att.args.pod_uid().map(String::from),
        };
        let not_in_force = |why: String| {
            CniError::new(
                Code::TryAgainLater,
                format!("the NetworkPolicy of pod {namespace}/{name} is not in force: {why}"),
            )
            .with_details(
                "The pod is not started before margay-agent has applied its policy; \
                 check the margay-node pod on this node.",
            )
        };
        match agent::ask(socket, &request, POLICY_TIMEOUT) {
            Ok(Answer::PolicyApplied) => Ok(()),
            Ok(Answer::Unavailable { reason }) => Err(not_in_force(reason)),
            Ok(other) => Err(not_in_force(format!("margay-agent answered {other:?}"))),
            Err(e) if !e.connected => {
                tracing::warn!(
                    "{e}; pod {namespace}/{name} starts before its NetworkPolicy is in force (the agent applies it when it runs)"
                );
                Ok(())
            }
            Err(e) => Err(not_in_force(e.to_string())),
        }
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
        let (_, v6) = pod_addresses(&ep.addresses)?;
        match registry::find(&self.root, &ep.host.name).map_err(checked)? {
            Some(entry)
                if entry.ifindex == ep.host.index
                    && ep.addresses.contains(&IpAddr::V4(entry.ipv4())) =>
            {
                let registered = registry::ipv6_of(&self.root, entry.ifindex).map_err(checked)?;
                if registered == v6 {
                    return Ok(());
                }
                Err(CniError::new(
                    Code::CheckFailed,
                    format!(
                        "eBPF endpoint entry of {} has IPv6 address {} where the pod has {}",
                        ep.host.name,
                        registered.map_or("none".into(), |a| a.to_string()),
                        v6.map_or("none".into(), |a| a.to_string()),
                    ),
                ))
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

    fn forget_vanished(&self, host: &Netlink) -> Result<Vec<String>, CniError> {
        if !map_path(&self.root, "endpoints").exists() {
            return Ok(Vec::new()); // Nothing was ever loaded here.
        }
        // The registry before the links: an ADD registers only once its
        // veth exists, so an endpoint registered meanwhile is in the
        // listing, never mistaken for a vanished one.
        let registered = registry::list(&self.root).map_err(dataplane_error)?;
        let live: HashSet<u32> = host
            .run(link::list(&host.handle))?
            .iter()
            .map(|l| l.index)
            .collect();
        let mut forgotten = Vec::new();
        for ep in registered.iter().filter(|ep| !live.contains(&ep.ifindex)) {
            // By ifindex, not name: the same attachment may have been
            // added again since, on a new veth of the same name.
            registry::remove(&self.root, ep).map_err(dataplane_error)?;
            forgotten.push(ep.ifname());
        }
        Ok(forgotten)
    }
}

/// The pod's IPv4 address and its IPv6 one, if any: the programs check a
/// pod's packets against one address of each family, so a pod given more
/// is refused rather than have the others' traffic dropped as spoofed.
fn pod_addresses(addresses: &[IpAddr]) -> Result<(Ipv4Addr, Option<Ipv6Addr>), CniError> {
    let too_many = |family| {
        CniError::new(
            Code::Dataplane,
            format!(
                "the eBPF dataplane gives a pod at most one {family} address, and IPAM gave {}",
                addresses
                    .iter()
                    .map(IpAddr::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )
    };
    let (mut v4, mut v6) = (Vec::new(), Vec::new());
    for a in addresses {
        match a {
            IpAddr::V4(a) => v4.push(*a),
            IpAddr::V6(a) => v6.push(*a),
        }
    }
    match (v4.as_slice(), v6.as_slice()) {
        ([], _) => Err(CniError::new(
            Code::Dataplane,
            "the eBPF dataplane needs an IPv4 address on the pod",
        )),
        ([_, _, ..], _) => Err(too_many("IPv4")),
        (_, [_, _, ..]) => Err(too_many("IPv6")),
        ([v4], v6) => Ok((*v4, v6.first().copied())),
    }
}

/// The dataplane the configuration asks for. There is no silent fallback:
/// asking for eBPF where it cannot run is an error.
///
/// # Errors
///
/// None at present: both dataplanes are built from the configuration
/// alone. An eBPF dataplane that cannot run fails at its first
/// [`Dataplane::attach`] (or [`Dataplane::check`]) instead.
pub fn select(conf: &PluginConf) -> Result<Box<dyn Dataplane>, CniError> {
    match conf.dataplane {
        Mode::Linux => Ok(Box::new(Routing)),
        Mode::Bpf => Ok(Box::new(Ebpf {
            root: conf.bpf_root.clone(),
            settings: Settings::from_conf(conf),
            agent: conf.ipam.agent().map(PathBuf::from),
        })),
    }
}
