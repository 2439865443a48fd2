//! The pod → pod paths: Margay bpf, Margay linux and ptp + host-local, each
//! on a two-node cluster of network namespaces on a LAN of its own (the
//! plugins run inside the nodes as a kubelet would run them): a client and
//! a server pod on the first node, a server pod on the second. Beside
//! them, what no network costs: client and servers in one namespace,
//! over loopback, the ceiling any dataplane's same-node figures meet; once
//! at loopback's own MTU (64 KiB segments, fewer and larger than any pod
//! sends) and once at the pods' MTU, the ceiling at equal segment size.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, ensure};
use margay_tests::cluster::{Lan, in_node_wrapper};
use margay_tests::netns::{ChildGuard, NetNs};
use serde_json::json;

use super::{DatapathReport, ECHO_PORT, IPERF_PORT, Options, Place, Route, Setup, UDP_PORT};
use crate::network::{Kind, Network, POD_MTU, Pod};

/// One setup's two-node cluster: nodes on a LAN of their own, a network
/// on each, and routes between them.
struct Site {
    kind: Kind,
    nets: [Network; 2],
    addrs: [Ipv4Addr; 2],
    pools: [String; 2],
    margayctl: PathBuf,
    nodes: [NetNs; 2],
    dir: tempfile::TempDir,
    _lan: Lan,
}

impl Site {
    /// Nodes at 10.246.`index`.1 and .2, pods from 10.245.`2*index`.0/24
    /// and the next /24.
    fn new(kind: Kind, index: u8, bin_dir: &Path, peer_dir: &Path) -> Result<Site> {
        let lan = Lan::new();
        let addrs = [1, 2].map(|host| Ipv4Addr::new(10, 246, index, host));
        let pools = [0, 1].map(|i| format!("10.245.{}.0/24", 2 * index + i));
        let nodes = addrs.map(|addr| lan.node(addr));
        let nets = [
            Network::on_node(kind, &pools[0], bin_dir, peer_dir, &nodes[0])?,
            Network::on_node(kind, &pools[1], bin_dir, peer_dir, &nodes[1])?,
        ];
        Ok(Site {
            kind,
            nets,
            addrs,
            pools,
            margayctl: bin_dir.join("margayctl"),
            nodes,
            dir: tempfile::tempdir()?,
            _lan: lan,
        })
    }

    /// Each node told of the other's pods: by routes, or (Margay in bpf
    /// mode, whose programs the first pod loaded) as margay-agent would,
    /// with `margayctl node peers` and `node attach` of eth0.
    fn link(&self) -> Result<()> {
        let dir = self.dir.path();
        for (me, other) in [(0, 1), (1, 0)] {
            let node = &self.nodes[me];
            let (addr, pool) = (self.addrs[other].to_string(), &self.pools[other]);
            let Some(root) = self.nets[me].bpf_root() else {
                node.run_ok(&["ip", "route", "add", pool, "via", &addr, "dev", "eth0"]);
                continue;
            };
            let peers = json!({"peers": [{"name": format!("node{other}"), "address": addr,
                "pod_cidrs": [pool], "encap": false}]});
            let file = dir.join(format!("peers{me}.json"));
            std::fs::write(&file, peers.to_string())?;
            let ctl = format!("margayctl{me}");
            in_node_wrapper(dir, node, &ctl, &self.margayctl)?;
            let file = file.to_str().context("a UTF-8 path")?;
            for args in [
                ["node", "peers", "-f", file, "", ""],
                [
                    "node",
                    "attach",
                    "--iface",
                    "eth0",
                    "--external-mode",
                    "tunnel",
                ],
            ] {
                let args: Vec<&str> = args.into_iter().filter(|a| !a.is_empty()).collect();
                let out = Command::new(dir.join(&ctl))
                    .arg("--bpf-root")
                    .arg(root)
                    .args(&args)
                    .output()
                    .context("margayctl")?;
                ensure!(
                    out.status.success(),
                    "margayctl {args:?}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        Ok(())
    }
}

/// A site's pods: a client and a server on the first node, a server on
/// the second, the servers running iperf3 and `bench probe echo`.
struct Pods<'s> {
    site: &'s Site,
    client: Pod<'s>,
    servers: [Pod<'s>; 2],
    _running: Vec<ChildGuard>,
}

impl<'s> Pods<'s> {
    fn new(site: &'s Site) -> Result<Pods<'s>> {
        let mut client = Pod::prepare(&site.nets[0], "dpc");
        let mut servers = [
            Pod::prepare(&site.nets[0], "dpl"),
            Pod::prepare(&site.nets[1], "dpr"),
        ];
        for pod in std::iter::once(&mut client).chain(servers.iter_mut()) {
            pod.ip = Some(pod.net.add(&pod.ns, &pod.cid)?);
        }
        site.link()?;
        // The client makes thousands of short connections a round: ports
        // in TIME_WAIT may be taken again.
        client
            .ns
            .run_ok(&["sysctl", "-qw", "net.ipv4.tcp_tw_reuse=1"]);
        let mut running = Vec::new();
        for server in &servers {
            running.extend(Place::netns(server.ns.name()).servers()?);
        }
        Ok(Pods {
            site,
            client,
            servers,
            _running: running,
        })
    }

    fn setup(&self) -> Result<Setup> {
        let path = |route, server: &Pod| -> Result<super::Path> {
            let ip = server.ip.context("the server pod has an address")?;
            let at = |port| SocketAddr::from((ip, port));
            Ok(super::Path {
                route,
                client: Place::netns(self.client.ns.name()),
                server: Place::netns(server.ns.name()),
                iperf: at(IPERF_PORT),
                udp: at(UDP_PORT),
                echo: at(ECHO_PORT),
            })
        };
        Ok(Setup {
            label: self.site.kind.label(),
            paths: vec![
                path(Route::SameNode, &self.servers[0])?,
                path(Route::AcrossNodes, &self.servers[1])?,
            ],
        })
    }
}

/// Client and servers in one namespace, over loopback.
struct Loopback {
    ns: NetNs,
    label: &'static str,
    _running: Vec<ChildGuard>,
}

impl Loopback {
    /// Loopback at its own MTU, or at `mtu`.
    fn new(mtu: Option<u32>) -> Result<Loopback> {
        let ns = NetNs::new("dpo");
        ns.run_ok(&["sysctl", "-qw", "net.ipv4.tcp_tw_reuse=1"]);
        let label = match mtu {
            Some(mtu) => {
                ns.run_ok(&["ip", "link", "set", "lo", "mtu", &mtu.to_string()]);
                "no network (loopback at the pods' MTU)"
            }
            None => "no network (loopback, ceiling)",
        };
        let running = Place::netns(ns.name()).servers()?;
        Ok(Loopback {
            ns,
            label,
            _running: running,
        })
    }

    fn setup(&self) -> Setup {
        let at = |port| SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let here = Place::netns(self.ns.name());
        Setup {
            label: self.label,
            paths: vec![super::Path {
                route: Route::SameNode,
                client: here.clone(),
                server: here,
                iperf: at(IPERF_PORT),
                udp: at(UDP_PORT),
                echo: at(ECHO_PORT),
            }],
        }
    }
}

/// Runs the pod paths, Margay's binaries taken from `bin_dir`.
pub(super) fn run(options: Options, bin_dir: &Path) -> Result<DatapathReport> {
    let sites = Kind::ALL
        .iter()
        .zip(1u8..)
        .map(|(kind, i)| Site::new(*kind, i, bin_dir, &options.peer_dir))
        .collect::<Result<Vec<_>>>()?;
    let pods = sites.iter().map(Pods::new).collect::<Result<Vec<_>>>()?;
    let loopbacks = [Loopback::new(None)?, Loopback::new(Some(POD_MTU))?];
    let mut setups = pods.iter().map(Pods::setup).collect::<Result<Vec<_>>>()?;
    setups.extend(loopbacks.iter().map(Loopback::setup));
    super::measure(options, Kind::PtpHostLocal.label(), &setups)
}
