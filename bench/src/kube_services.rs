//! Services from the API (`bench kube-services`): margay-agent against
//! upstream kube-proxy in iptables and in nftables mode, each on a one-node
//! local cluster of its own (Margay the CNI on all three; on the kube-proxy
//! ones with `services: kube-proxy`), up side by side and measured in
//! interleaved rounds:
//!
//! - programming latency: a Service's EndpointSlice goes from no endpoint
//!   to one, and a client pod, trying all along, connects through the
//!   ClusterIP; from the API's answer to the first exchange that succeeds;
//! - pod → ClusterIP and node (host-networked client) → ClusterIP: connect,
//!   one request and its answer, close;
//! - both with a few Services in the cluster and with many (each with five
//!   endpoints), selector-less with hand-written EndpointSlices, so nothing
//!   but the proxies works on them;
//! - the CPU time each proxy spends while the many are created, and the
//!   memory it holds with them.
//!
//! The answering end is `bench probe serve` in a pod, the asking end `bench
//! probe` in a pod's network namespace or on the node in its cgroups (see
//! [`crate::probe`]). kube-proxy keeps its defaults (a 1 s `minSyncPeriod`);
//! samples of one cluster are spaced wider than that, so none waits on it.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, Patch, PatchParams, PostParams};
use margay_tests::kube::KubeCluster;
use serde::Serialize;
use serde_json::json;

use crate::cluster_tasks::bound_sleepers;
use crate::pod_probe::{self, ProbePod, Server, epoch_nanos, seen_after};
use crate::procfs::Process;
use crate::report::{Table, fmt_ms, fmt_ratio};
use crate::stats::{Summary, ratio};

/// The Services in the cluster in the first phase.
pub const FEW: usize = 100;
/// The port `bench probe serve` answers on in the server pod.
const SERVE_PORT: u16 = 9000;
const SERVICE_PORT: u16 = 80;
/// Endpoints of each background Service.
const ENDPOINTS_EACH: u32 = 5;
/// Background endpoints' addresses: from 10.250.0.0 on, routed nowhere.
const BACKGROUND_BASE: u32 = 0x0afa_0000;
/// kube-proxy's default `minSyncPeriod`, and some: no sample waits on it.
const SPACING: Duration = Duration::from_millis(1500);
/// API requests in flight while the background Services are created.
const CREATORS: usize = 16;
const NAMESPACE: &str = "default";

/// Who balances Services in a cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Proxy {
    Margay,
    KubeProxyIptables,
    KubeProxyNftables,
}

impl Proxy {
    const ALL: [Proxy; 3] = [
        Proxy::Margay,
        Proxy::KubeProxyIptables,
        Proxy::KubeProxyNftables,
    ];

    fn label(self) -> &'static str {
        match self {
            Proxy::Margay => "margay (bpf, agent)",
            Proxy::KubeProxyIptables => "kube-proxy iptables",
            Proxy::KubeProxyNftables => "kube-proxy nftables",
        }
    }

    fn up_args(self) -> &'static [&'static str] {
        match self {
            Proxy::Margay => &["--nodes", "1"],
            Proxy::KubeProxyIptables => &["--nodes", "1", "--kube-proxy", "iptables"],
            Proxy::KubeProxyNftables => &["--nodes", "1", "--kube-proxy", "nftables"],
        }
    }
}

/// One proxy's figures at one scale.
#[derive(Debug, Clone, Serialize)]
pub struct Figures {
    pub programming: Option<Summary>,
    pub pod_to_cluster_ip: Option<Summary>,
    pub node_to_cluster_ip: Option<Summary>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Scale {
    pub services: usize,
    /// In [`Proxy::ALL`]'s order.
    pub figures: Vec<Figures>,
}

/// One proxy's cost of taking the many Services in.
#[derive(Debug, Clone, Serialize)]
pub struct Load {
    pub proxy: Proxy,
    /// From the first create to the last Service answering.
    pub wall_seconds: f64,
    pub cpu_seconds: f64,
    pub rss_kib: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct KubeServicesReport {
    pub rounds: usize,
    pub per_round: usize,
    pub scales: Vec<Scale>,
    pub loads: Vec<Load>,
}

impl KubeServicesReport {
    pub fn table(&self) -> Table {
        let mut t = Table::new([
            "",
            "services",
            "margay p50/p99",
            "iptables p50/p99",
            "nftables p50/p99",
            "p50 vs iptables",
            "p50 vs nftables",
            "p99 vs nftables",
        ]);
        let pair = |s: &Option<Summary>| {
            s.map_or("-".into(), |s| {
                format!("{}/{}", fmt_ms(s.p50_ms), fmt_ms(s.p99_ms))
            })
        };
        let vs = |a: &Option<Summary>, b: &Option<Summary>, p99: bool| match (a, b) {
            (Some(a), Some(b)) if p99 => fmt_ratio(ratio(a.p99_ms, b.p99_ms)),
            (Some(a), Some(b)) => fmt_ratio(ratio(a.p50_ms, b.p50_ms)),
            _ => "-".into(),
        };
        type Pick = fn(&Figures) -> &Option<Summary>;
        let rows: [(&str, Pick); 3] = [
            ("API change -> first connection", |f| &f.programming),
            ("pod -> ClusterIP (connect+req)", |f| &f.pod_to_cluster_ip),
            ("node -> ClusterIP (connect+req)", |f| &f.node_to_cluster_ip),
        ];
        for (what, pick) in rows {
            for scale in &self.scales {
                let [m, i, n] = [0, 1, 2].map(|k| pick(&scale.figures[k]));
                t.row([
                    what.to_string(),
                    scale.services.to_string(),
                    pair(m),
                    pair(i),
                    pair(n),
                    vs(m, i, false),
                    vs(m, n, false),
                    vs(m, n, true),
                ]);
            }
        }
        for load in &self.loads {
            t.row([
                format!("{} taking the Services in", load.proxy.label()),
                self.scales.last().map_or(0, |s| s.services).to_string(),
                format!("{:.1} s CPU", load.cpu_seconds),
                format!("{:.1} s wall", load.wall_seconds),
                format!("{:.1} MiB RSS", load.rss_kib as f64 / 1024.0),
                String::new(),
                String::new(),
                String::new(),
            ]);
        }
        t
    }
}

/// A cluster with its proxy, the pods the probes run in, and its API.
struct Contender {
    proxy: Proxy,
    cluster: KubeCluster,
    proxy_process: Process,
    client: ProbePod,
    server_ip: Ipv4Addr,
    _server: Server,
    api: ServiceApi,
    target: SocketAddrV4,
    probe: SocketAddrV4,
    created: usize,
    last_change: Instant,
}

/// Runs it: `rounds` interleaved rounds at [`FEW`] Services and at
/// `services`, `per_round` connections per client per round.
///
/// # Errors
/// A cluster does not come up, the API refuses a write, a probe fails.
pub fn run(services: usize, rounds: usize, per_round: usize) -> Result<KubeServicesReport> {
    ensure!(services > FEW, "--services must be more than {FEW}");
    ensure!(
        services as u32 * ENDPOINTS_EACH < 1 << 16,
        "--services: at most {} (the background endpoints' /16)",
        (1 << 16) / ENDPOINTS_EACH
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut contenders = Proxy::ALL
        .into_iter()
        .map(|p| runtime.block_on(Contender::up(p)))
        .collect::<Result<Vec<_>>>()?;
    let mut scales = Vec::new();
    let mut loads = Vec::new();
    for count in [FEW, services] {
        for c in &mut contenders {
            let cpu_before = c.proxy_process.cpu_ticks()?;
            let start = Instant::now();
            runtime.block_on(c.fill(count))?;
            if count == services {
                let hz = crate::procfs::clock_ticks_per_second();
                loads.push(Load {
                    proxy: c.proxy,
                    wall_seconds: start.elapsed().as_secs_f64(),
                    cpu_seconds: (c.proxy_process.cpu_ticks()? - cpu_before) as f64 / hz,
                    rss_kib: c.proxy_process.rss_kib()?,
                });
            }
        }
        let mut samples: Vec<[Vec<Duration>; 3]> =
            contenders.iter().map(|_| Default::default()).collect();
        for _ in 0..rounds {
            for (c, s) in contenders.iter_mut().zip(&mut samples) {
                s[0].push(runtime.block_on(c.programming_latency())?);
                s[1].extend(c.pod_latencies(per_round)?);
                s[2].extend(c.node_latencies(per_round)?);
            }
        }
        scales.push(Scale {
            services: count,
            figures: samples
                .iter()
                .map(|[p, pod, node]| Figures {
                    programming: Summary::of(p),
                    pod_to_cluster_ip: Summary::of(pod),
                    node_to_cluster_ip: Summary::of(node),
                })
                .collect(),
        });
    }
    Ok(KubeServicesReport {
        rounds,
        per_round,
        scales,
        loads,
    })
}

impl Contender {
    async fn up(proxy: Proxy) -> Result<Contender> {
        let tag = match proxy {
            Proxy::Margay => "bksm",
            Proxy::KubeProxyIptables => "bksi",
            Proxy::KubeProxyNftables => "bksn",
        };
        let cluster = KubeCluster::try_up(tag, proxy.up_args()).map_err(anyhow::Error::msg)?;
        let node = cluster.node_name(0).to_string();
        cluster.apply(&bound_sleepers("srv", &node, 1));
        cluster.apply(&bound_sleepers("cli", &node, 1));
        let server_pod = ProbePod::of(&cluster, "srv")?;
        let client_pod = ProbePod::of(&cluster, "cli")?;
        let server = server_pod.serve(SERVE_PORT)?;
        let proxy_process = match proxy {
            Proxy::Margay => Process(crate::cluster_tasks::margay_agent(&cluster, 0)?),
            _ => Process(
                cluster
                    .pid_of(&format!("{node}-kube-proxy"))
                    .context("kube-proxy's pid")?,
            ),
        };
        let config = kube::Config::from_custom_kubeconfig(
            kube::config::Kubeconfig::read_from(cluster.env("KUBECONFIG"))?,
            &Default::default(),
        )
        .await?;
        let client = kube::Client::try_from(config)?;
        let mut c = Contender {
            proxy,
            proxy_process,
            client: client_pod,
            server_ip: server_pod.ip,
            _server: server,
            api: ServiceApi {
                services: Api::namespaced(client.clone(), NAMESPACE),
                slices: Api::namespaced(client, NAMESPACE),
            },
            target: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0),
            probe: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0),
            created: 0,
            last_change: Instant::now(),
            cluster,
        };
        c.target = c.service("target", &[c.server_ip]).await?;
        c.probe = c.service("probe", &[]).await?;
        c.wait_open(c.target)?;
        Ok(c)
    }

    async fn service(&self, name: &str, endpoints: &[Ipv4Addr]) -> Result<SocketAddrV4> {
        self.api.service(name, endpoints).await
    }

    /// Creates background Services up to `count`, then one that answers,
    /// and waits for it: every one before it is programmed.
    async fn fill(&mut self, count: usize) -> Result<()> {
        let mut tasks = tokio::task::JoinSet::new();
        for k in 0..CREATORS {
            let api = self.api.clone();
            let todo: Vec<usize> = (self.created..count)
                .filter(|i| i % CREATORS == k)
                .collect();
            tasks.spawn(async move {
                for i in todo {
                    api.background(i).await?;
                }
                anyhow::Ok(())
            });
        }
        while let Some(done) = tasks.join_next().await {
            done??;
        }
        self.created = count;
        let last = self
            .service(&format!("last-{count}"), &[self.server_ip])
            .await?;
        self.wait_open(last)
    }

    fn wait_open(&self, to: SocketAddrV4) -> Result<()> {
        self.client
            .until(to, "open", Duration::from_secs(300))?
            .wait_with_output()
            .map_err(anyhow::Error::from)
            .and_then(|out| {
                ensure!(
                    out.status.success(),
                    "{}: {to} never answered",
                    self.proxy.label()
                );
                Ok(())
            })
    }

    /// The probe Service gets the server as its endpoint; how long until the
    /// client pod's first exchange through it. Then back to none.
    async fn programming_latency(&mut self) -> Result<Duration> {
        let spacing = SPACING.saturating_sub(self.last_change.elapsed());
        tokio::time::sleep(spacing).await;
        let mut child = self
            .client
            .until(self.probe, "open", Duration::from_secs(30))?;
        self.set_probe_endpoints(&[self.server_ip]).await?;
        let latency = seen_after(&mut child, epoch_nanos())?;
        tokio::time::sleep(SPACING).await;
        let mut child = self
            .client
            .until(self.probe, "closed", Duration::from_secs(30))?;
        self.set_probe_endpoints(&[]).await?;
        pod_probe::first_line(&mut child)?;
        Ok(latency)
    }

    async fn set_probe_endpoints(&mut self, endpoints: &[Ipv4Addr]) -> Result<()> {
        self.api
            .slices
            .patch(
                "probe",
                &PatchParams::default(),
                &Patch::Merge(json!({"endpoints": endpoint_list(endpoints)})),
            )
            .await
            .context("patching EndpointSlice probe")?;
        self.last_change = Instant::now();
        Ok(())
    }

    fn pod_latencies(&self, count: usize) -> Result<Vec<Duration>> {
        self.client
            .latencies(self.target, count)
            .with_context(|| self.proxy.label())
    }

    fn node_latencies(&self, count: usize) -> Result<Vec<Duration>> {
        let exe = std::env::current_exe()?.display().to_string();
        let args = pod_probe::latency_args(self.target, count);
        let mut cmd = vec!["exec", "0", exe.as_str(), "probe"];
        cmd.extend(args.iter().map(String::as_str));
        let out = self.cluster.script(&cmd, Duration::from_secs(120));
        ensure!(
            out.success,
            "{}: node probe: {}",
            self.proxy.label(),
            out.stderr
        );
        pod_probe::parse_micros(out.stdout.as_bytes())
    }
}

/// The cluster's Services and EndpointSlices (cheap to clone: one per
/// creating task).
#[derive(Clone)]
struct ServiceApi {
    services: Api<Service>,
    slices: Api<EndpointSlice>,
}

impl ServiceApi {
    /// A selector-less Service `name` on [`SERVICE_PORT`] with an
    /// EndpointSlice of `endpoints` on [`SERVE_PORT`]; its ClusterIP.
    async fn service(&self, name: &str, endpoints: &[Ipv4Addr]) -> Result<SocketAddrV4> {
        let svc: Service = serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"ports": [{"name": "p", "port": SERVICE_PORT, "protocol": "TCP"}]},
        }))?;
        let svc = self
            .services
            .create(&PostParams::default(), &svc)
            .await
            .with_context(|| format!("creating Service {name}"))?;
        let slice: EndpointSlice = serde_json::from_value(json!({
            "metadata": {
                "name": name,
                "labels": {
                    "kubernetes.io/service-name": name,
                    "endpointslice.kubernetes.io/managed-by": "bench.margay.dev",
                },
            },
            "addressType": "IPv4",
            "ports": [{"name": "p", "port": SERVE_PORT, "protocol": "TCP"}],
            "endpoints": endpoint_list(endpoints),
        }))?;
        self.slices
            .create(&PostParams::default(), &slice)
            .await
            .with_context(|| format!("creating EndpointSlice {name}"))?;
        let ip = svc
            .spec
            .and_then(|s| s.cluster_ip)
            .with_context(|| format!("Service {name} has no ClusterIP"))?;
        Ok(SocketAddrV4::new(ip.parse()?, SERVICE_PORT))
    }

    /// Background Service `i`: [`ENDPOINTS_EACH`] endpoints routed nowhere.
    async fn background(&self, i: usize) -> Result<()> {
        let endpoints: Vec<Ipv4Addr> = (0..ENDPOINTS_EACH)
            .map(|k| Ipv4Addr::from(BACKGROUND_BASE + i as u32 * ENDPOINTS_EACH + k))
            .collect();
        self.service(&format!("bg-{i}"), &endpoints).await.map(drop)
    }
}

fn endpoint_list(endpoints: &[Ipv4Addr]) -> serde_json::Value {
    endpoints
        .iter()
        .map(|ip| json!({"addresses": [ip.to_string()], "conditions": {"ready": true}}))
        .collect()
}
