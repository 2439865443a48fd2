//! `margay-agent`: Margay's control plane on every node, the main container
//! of the `margay-node` DaemonSet. It watches the Kubernetes API and
//! programs the node through the same declarative models `margayctl` takes
//! from files; Kubernetes types stop here.
//!
//! - [`crd`]: the IPAMBlock custom resource and block names;
//! - [`blocks`]: IPAMBlock objects judged (pure);
//! - [`cache`]: watched objects and whether they are listed yet;
//! - [`ipam`]: the node's blocks — claims, headroom, release, leaks, status;
//! - [`socket`]: where margay-ipam asks for a block;
//! - [`lease`], [`gc`]: one agent releases deleted nodes' blocks;
//! - [`peers`]: routes to the other nodes (translation pure);
//! - [`services`]: Services and EndpointSlices balanced by the programs
//!   (translation pure), health check node ports;
//! - [`http`], [`metrics`], [`dataplane_metrics`], [`health`]: `/livez`,
//!   `/readyz`, `/metrics`;
//! - [`node_conf`], [`settings`]: what the agent is told.
//!
//! Restarting the agent never disturbs the node: nothing is flushed or
//! reloaded at start, and every part applies only after its caches are
//! fully synced, as diffs.

pub mod blocks;
pub mod cache;
pub mod crd;
pub mod dataplane_metrics;
pub mod gc;
pub mod health;
pub mod http;
pub mod ipam;
pub mod lease;
pub mod metrics;
pub mod node_conf;
pub mod peers;
pub mod policy;
pub mod selector;
pub mod services;
pub mod settings;
pub mod socket;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::Api;
use kube::runtime::watcher;
use margay_conf::margay::{Dataplane, Datastore};
use tokio::sync::{mpsc, watch};

use crate::cache::Cache;
use crate::gc::NodeGoneCollector;
use crate::health::Health;
use crate::ipam::{ClusterBlocks, IpamController};
use crate::metrics::Metrics;
use crate::node_conf::NodeConf;
use crate::peers::PeerSync;
use crate::policy::PolicySync;
use crate::services::ServiceSync;
use crate::settings::{ServicesMode, Settings};

/// How long one API request (not a watch) may take before it fails: a
/// claim or a release must never hang the controller behind it.
const API_TIMEOUT: Duration = Duration::from_secs(10);
/// kube-proxy's default health port (`healthzBindAddress`).
const KUBE_PROXY_HEALTH_PORT: u16 = 10256;

/// Two clients on one configuration (in-cluster, or KUBECONFIG).
#[derive(Clone)]
pub struct Clients {
    /// For requests, each bounded by [`API_TIMEOUT`].
    pub requests: kube::Client,
    /// For watches, which stay open for minutes and have kube-runtime's
    /// own idle timeout.
    pub watches: kube::Client,
}

async fn clients() -> anyhow::Result<Clients> {
    let config = kube::Config::infer()
        .await
        .context("configuring the Kubernetes client (in-cluster, or KUBECONFIG)")?;
    let watches = kube::Client::try_from(config.clone()).context("the Kubernetes client")?;
    let mut bounded = config;
    bounded.connect_timeout = Some(API_TIMEOUT);
    bounded.read_timeout = Some(API_TIMEOUT);
    bounded.write_timeout = Some(API_TIMEOUT);
    bounded.reset_reader_on_write = true;
    let requests = kube::Client::try_from(bounded).context("the Kubernetes client")?;
    Ok(Clients { requests, watches })
}

/// Runs the agent until SIGTERM or SIGINT, or until a part of it fails.
///
/// # Errors
/// The conflist cannot be read, the API client cannot be configured, or
/// the health server or the socket cannot be set up.
pub async fn run(settings: Settings) -> anyhow::Result<()> {
    let settings = Arc::new(settings);
    let node = NodeConf::read(&settings.conflist, &settings.node_name)?;
    let clients = clients().await?;
    let metrics = Arc::new(Metrics::default());
    let health = Arc::new(Health::default());
    let mut tasks = tokio::task::JoinSet::new();

    let nodes = Cache::spawn(
        Api::<Node>::all(clients.watches.clone()),
        watcher::Config::default(),
        "nodes",
        metrics.clone(),
    );

    let (blocks_tx, blocks_rx) = watch::channel(Arc::new(ClusterBlocks::default()));
    // ADDs ask (over the socket) that a new pod's policy be in force.
    let (policy_tx, policy_rx) = mpsc::channel(64);
    let mut policy_tx = (node.dataplane == Dataplane::Bpf).then_some(policy_tx);
    if node.ipam.datastore == Datastore::Kubernetes {
        let on_this_node =
            watcher::Config::default().fields(&format!("spec.nodeName={}", settings.node_name));
        let pods = Cache::spawn(
            Api::<Pod>::all(clients.watches.clone()),
            on_this_node,
            "pods",
            metrics.clone(),
        );
        let (claims_tx, claims_rx) = mpsc::channel(64);
        let controller = IpamController::new(
            &clients,
            node.ipam.clone(),
            settings.clone(),
            metrics.clone(),
            health.clone(),
            blocks_tx,
            ipam::Caches {
                pods,
                nodes: nodes.clone(),
            },
        );
        tokio::spawn(controller.run(claims_rx));
        let socket = node.ipam.agent_socket.clone();
        let handlers = socket::Handlers {
            claims: claims_tx,
            blocks: blocks_rx.clone(),
            policy: policy_tx.take(),
        };
        tasks.spawn(async move { socket::serve(&socket, handlers).await });
        let collector = NodeGoneCollector {
            client: clients.requests.clone(),
            namespace: settings.namespace.clone(),
            identity: settings.node_name.clone(),
            grace: settings.node_gone_grace,
            nodes: nodes.clone(),
            blocks: blocks_rx.clone(),
            metrics: metrics.clone(),
        };
        tokio::spawn(collector.run());
    } else {
        tracing::warn!(
            "ipam.datastore is local in {}: blocks are not claimed in the Kubernetes API, and nodes must not share pools",
            settings.conflist.display()
        );
        health.ipam_synced();
    }

    if settings.routes {
        let sync = PeerSync {
            node_name: settings.node_name.clone(),
            dataplane: match node.dataplane {
                Dataplane::Bpf => peers::Dataplane::Bpf(node.bpf_root.clone()),
                Dataplane::Linux => peers::Dataplane::Linux,
            },
            nodes,
            blocks: blocks_rx,
            health: health.clone(),
            metrics: metrics.clone(),
        };
        tokio::spawn(sync.run());
    } else {
        health.routes_synced();
    }

    match (settings.services, node.dataplane) {
        (ServicesMode::KubeProxy, _) => {
            tracing::info!("services: left to kube-proxy (MARGAY_SERVICES=kube-proxy)");
            services::withdraw(&node.bpf_root).await?;
            health.services_synced();
        }
        (_, Dataplane::Linux) => {
            tracing::warn!("services: the linux dataplane balances none; kube-proxy must run");
            services::withdraw(&node.bpf_root).await?;
            health.services_synced();
        }
        (mode, Dataplane::Bpf) => {
            services::serve_host_clients(&node.bpf_root, &settings.cgroup_v2).await?;
            let watch = services::kube_proxy_rules::Watch {
                action: if mode == ServicesMode::ReplaceKubeProxy {
                    services::kube_proxy_rules::Action::Remove
                } else {
                    services::kube_proxy_rules::Action::Report
                },
                interval: settings.kube_proxy_check_interval,
                kube_proxy_health: settings.kube_proxy_health_addr.unwrap_or(SocketAddr::new(
                    settings.health_addr.ip(),
                    KUBE_PROXY_HEALTH_PORT,
                )),
                metrics: metrics.clone(),
            };
            tokio::spawn(watch.run());
            let sync = ServiceSync {
                root: node.bpf_root.clone(),
                node_name: settings.node_name.clone(),
                services: Cache::spawn(
                    Api::<Service>::all(clients.watches.clone()),
                    watcher::Config::default(),
                    "services",
                    metrics.clone(),
                ),
                slices: Cache::spawn(
                    Api::<EndpointSlice>::all(clients.watches.clone()),
                    watcher::Config::default(),
                    "endpointslices",
                    metrics.clone(),
                ),
                health: health.clone(),
                metrics: metrics.clone(),
            };
            tokio::spawn(sync.run());
        }
    }

    if node.dataplane == Dataplane::Bpf {
        let all = || watcher::Config::default();
        let policies = Cache::spawn(
            Api::<NetworkPolicy>::all(clients.watches.clone()),
            all(),
            "networkpolicies",
            metrics.clone(),
        );
        // Peers are pods of every node.
        let pods = Cache::spawn(
            Api::<Pod>::all(clients.watches.clone()),
            all(),
            "pods of all nodes",
            metrics.clone(),
        );
        let namespaces = Cache::spawn(
            Api::<Namespace>::all(clients.watches.clone()),
            all(),
            "namespaces",
            metrics.clone(),
        );
        let sync = PolicySync {
            root: node.bpf_root.clone(),
            node_name: settings.node_name.clone(),
            policies,
            pods,
            namespaces,
            metrics: metrics.clone(),
        };
        tokio::spawn(sync.run(policy_rx));
    }

    let dataplane = (node.dataplane == Dataplane::Bpf)
        .then(|| dataplane_metrics::Source::new(node.bpf_root.clone()));
    let addr = settings.health_addr;
    let (h, m) = (health.clone(), metrics.clone());
    tasks.spawn(async move { http::serve(addr, h, m, dataplane).await });

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: stopping; the node keeps what is programmed"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: stopping; the node keeps what is programmed"),
        Some(done) = tasks.join_next() => {
            return match done {
                Ok(Ok(())) => Err(anyhow::anyhow!("a part of the agent stopped")),
                Ok(Err(e)) => Err(e),
                Err(e) => Err(anyhow::anyhow!("a part of the agent panicked: {e}")),
            };
        }
    }
    Ok(())
}
