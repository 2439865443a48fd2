//! Every path on Kubernetes nodes: two-node local clusters side by side
//! (`scripts/cluster`: real kubelets, API servers and kube-proxies, so the
//! nodes' netfilter holds what a real node's does): pod → pod on one node
//! and across, pod → ClusterIP and external client → node 0's NodePort
//! with the backend on node 1. Margay bpf balancing (NodePorts tunnelled,
//! and in DSR mode), Margay linux under kube-proxy nftables, and Debian's
//! ptp under upstream kube-proxy in iptables and in nftables mode, the
//! baseline.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use margay_tests::kube::KubeCluster;
use margay_tests::netns::ChildGuard;

use super::{DatapathReport, ECHO_PORT, IPERF_PORT, Options, Path, Place, Route, Setup, UDP_PORT};
use crate::cluster_tasks::bound_sleepers;
use crate::pod_probe::ProbePod;

const BASELINE: &str = "ptp + kube-proxy nftables";

const ALL: &[Route] = &[
    Route::SameNode,
    Route::AcrossNodes,
    Route::ClusterIp,
    Route::NodePort,
];

/// A setup: its label, cluster tag, `scripts/cluster up` arguments, and
/// the paths it is measured on (the DSR cluster differs from the tunnel
/// one only on the NodePort path).
const SETUPS: [(&str, &str, &[&str], &[Route]); 5] = [
    ("margay bpf (NodePort tunnel)", "bdt", &[], ALL),
    (
        "margay bpf (NodePort DSR)",
        "bdd",
        &["--external-service-mode", "dsr"],
        &[Route::NodePort],
    ),
    (
        "margay linux + kube-proxy nftables",
        "bdl",
        &["--dataplane", "linux", "--kube-proxy", "nftables"],
        ALL,
    ),
    (
        "ptp + kube-proxy iptables",
        "bdi",
        &["--cni", "ptp", "--kube-proxy", "iptables"],
        ALL,
    ),
    (
        BASELINE,
        "bdn",
        &["--cni", "ptp", "--kube-proxy", "nftables"],
        ALL,
    ),
];

/// The fixed NodePort of each port the measurements use.
fn node_port(port: u16) -> u16 {
    match port {
        IPERF_PORT => 30521,
        UDP_PORT => 30522,
        _ => 30910,
    }
}

/// The Service in front of the server pod: every port the measurements
/// use, each with its [`node_port`].
fn service_manifest() -> String {
    let port = |name: &str, protocol: &str, port: u16| {
        format!(
            "  - {{name: {name}, protocol: {protocol}, port: {port}, targetPort: {port}, \
             nodePort: {}}}\n",
            node_port(port)
        )
    };
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: dp}}\nspec:\n  type: NodePort\n  \
         selector: {{app: dps}}\n  ports:\n{}{}{}",
        port("iperf", "TCP", IPERF_PORT),
        port("udp", "UDP", UDP_PORT),
        port("echo", "TCP", ECHO_PORT),
    )
}

/// One setup's cluster with its pods and servers.
struct Site {
    label: &'static str,
    routes: &'static [Route],
    client: ProbePod,
    /// On node 0, beside the client, and on node 1.
    servers: [ProbePod; 2],
    cluster_ip: Ipv4Addr,
    _running: Vec<ChildGuard>,
    cluster: KubeCluster,
}

impl Site {
    fn up(label: &'static str, tag: &str, args: &[&str], routes: &'static [Route]) -> Result<Site> {
        let cluster = KubeCluster::try_up(tag, &[&["--nodes", "2"], args].concat())
            .map_err(anyhow::Error::msg)
            .with_context(|| format!("{label}: the cluster"))?;
        cluster.apply(&bound_sleepers("dpc", cluster.node_name(0), 1));
        cluster.apply(&bound_sleepers("dpl", cluster.node_name(0), 1));
        cluster.apply(&bound_sleepers("dps", cluster.node_name(1), 1));
        cluster.apply(&service_manifest());
        let client = ProbePod::of(&cluster, "dpc")?;
        let servers = [
            ProbePod::of(&cluster, "dpl")?,
            ProbePod::of(&cluster, "dps")?,
        ];
        let mut running = Vec::new();
        for server in &servers {
            running.extend(Place::nsenter(server.netns()).servers()?);
        }
        let cluster_ip = cluster
            .kubectl(&["get", "service", "dp", "-o", "jsonpath={.spec.clusterIP}"])
            .trim()
            .parse()
            .context("the Service's ClusterIP")?;
        // Thousands of short connections a round: ports in TIME_WAIT may
        // be taken again.
        for place in [
            Place::nsenter(client.netns()),
            Place::netns(cluster.env("EXTERNAL_NETNS")),
        ] {
            let ok = place
                .command("sysctl")
                .args(["-qw", "net.ipv4.tcp_tw_reuse=1"])
                .status()?;
            anyhow::ensure!(ok.success(), "{label}: sysctl tcp_tw_reuse in {place:?}");
        }
        Ok(Site {
            label,
            routes,
            client,
            servers,
            cluster_ip,
            _running: running,
            cluster,
        })
    }

    fn path(&self, route: Route) -> Result<Path> {
        let pod = Place::nsenter(self.client.netns());
        let [local, remote] = &self.servers;
        let (client, server, ip) = match route {
            Route::SameNode => (pod, local, local.ip),
            Route::AcrossNodes => (pod, remote, remote.ip),
            Route::ClusterIp => (pod, remote, self.cluster_ip),
            Route::NodePort => (
                Place::netns(self.cluster.env("EXTERNAL_NETNS")),
                remote,
                self.cluster.env("NODE_IP_0").parse()?,
            ),
        };
        let at = |p: u16| match route {
            Route::NodePort => SocketAddr::from((ip, node_port(p))),
            _ => SocketAddr::from((ip, p)),
        };
        Ok(Path {
            route,
            client,
            server: Place::nsenter(server.netns()),
            iperf: at(IPERF_PORT),
            udp: at(UDP_PORT),
            echo: at(ECHO_PORT),
        })
    }

    /// Its paths, once each answers (the Service programmed everywhere).
    fn setup(&self) -> Result<Setup> {
        let paths = self
            .routes
            .iter()
            .map(|r| self.path(*r))
            .collect::<Result<Vec<_>>>()?;
        for path in &paths {
            let start = Instant::now();
            while let Err(e) = path.transactions("crr", 1) {
                if start.elapsed() > Duration::from_secs(60) {
                    return Err(e.context(format!("{}: {} never answered", self.label, path.echo)));
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        Ok(Setup {
            label: self.label,
            paths,
        })
    }
}

/// Runs every path on the Kubernetes clusters.
pub(super) fn run(options: Options) -> Result<DatapathReport> {
    let sites = SETUPS
        .iter()
        .map(|(label, tag, args, routes)| Site::up(label, tag, args, routes))
        .collect::<Result<Vec<_>>>()?;
    let setups = sites.iter().map(Site::setup).collect::<Result<Vec<_>>>()?;
    super::measure(options, BASELINE, &setups)
}
