//! NetworkPolicy from the API (`bench kube-policy`): margay-agent on a
//! one-node local cluster holding `pods` pods and `policies` policies.
//!
//! All pods but three are Pod objects of a node without a kubelet, given
//! addresses through their status: peers that selectors match, in ten
//! namespaces of three teams, of fifty apps and five tiers. Every fifth
//! policy isolates the server pod (node 0) with rules naming sets of those
//! peers and ports the client does not use; the others select peers.
//! Measured in interleaved rounds:
//!
//! - change → enforced, for new connections: a policy that lets the
//!   client in is created, then deleted; the client pod gains, then
//!   loses, the label another policy lets in. The client tries all along;
//!   the time from the API's answer to the first exchange that succeeds
//!   (opened) or the first attempt that is dropped (closed: its start, one
//!   [`ATTEMPT`] before it gave up);
//! - connection latency (connect, one request and its answer, close) from
//!   the client to the isolated server, judged by its rules, and to a
//!   server no policy selects;
//! - the agent's CPU time while it takes the pods and policies in, and the
//!   memory it holds with them.
//!
//! `sigs.k8s.io/kube-network-policies` (v0.8.0) is not run where it cannot
//! work: it queues new connections to userspace with nftables' `queue`
//! expression (`pkg/networkpolicy/controller.go`), which a kernel built
//! without `CONFIG_NFT_QUEUE` refuses; [`peer_available`] tries it.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use margay_tests::kube::KubeCluster;
use serde::Serialize;
use serde_json::json;

use crate::cluster_tasks::bound_sleepers;
use crate::pod_probe::{ProbePod, Server, epoch_nanos, seen_after};
use crate::procfs::Process;
use crate::report::{Table, fmt_ms, fmt_ratio};
use crate::stats::{Summary, ratio};

/// The port the servers answer on.
const SERVE_PORT: u16 = 9000;
/// Namespaces of the peer pods.
const NAMESPACES: usize = 10;
/// Peer pods' addresses: from 10.252.0.0 on, routed nowhere.
const PEER_BASE: u32 = 0x0afc_0000;
/// The node the peer pods are bound to, which no kubelet runs.
const GHOST_NODE: &str = "bench-peers";
/// API requests in flight while the peers are created.
const CREATORS: usize = 16;
/// Between two changes, so no sample overlaps another's.
const SPACING: Duration = Duration::from_millis(300);
/// How long one change may take before the run fails.
const CHANGE_WITHIN: Duration = Duration::from_secs(30);
/// A denied connection is dropped, never refused: an attempt not answered
/// within this is taken as not open. Pod to pod on one node answers in
/// well under a millisecond; this is the figures' resolution.
const ATTEMPT: Duration = Duration::from_millis(5);
const NAMESPACE: &str = "default";

#[derive(Debug, Clone, Serialize)]
pub struct KubePolicyReport {
    pub pods: usize,
    pub policies: usize,
    pub rounds: usize,
    pub per_round: usize,
    /// Policy created (allows) / deleted (denies).
    pub policy_opened: Option<Summary>,
    pub policy_closed: Option<Summary>,
    /// Client labelled into / out of an allowing selector.
    pub label_opened: Option<Summary>,
    pub label_closed: Option<Summary>,
    pub to_isolated: Option<Summary>,
    pub to_unselected: Option<Summary>,
    /// The agent taking the pods and policies in.
    pub load_cpu_seconds: f64,
    pub load_wall_seconds: f64,
    pub rss_kib: u64,
    /// Why the peer (kube-network-policies) was not run.
    pub peer_not_run: Option<String>,
}

impl KubePolicyReport {
    pub fn table(&self) -> Table {
        let mut t = Table::new(["", "margay p50/p99", "note"]);
        let pair = |s: &Option<Summary>| {
            s.map_or("-".into(), |s| {
                format!("{}/{}", fmt_ms(s.p50_ms), fmt_ms(s.p99_ms))
            })
        };
        let rows = [
            ("policy created -> first connection", &self.policy_opened),
            ("policy deleted -> first dropped", &self.policy_closed),
            ("label added -> first connection", &self.label_opened),
            ("label removed -> first dropped", &self.label_closed),
            ("pod -> isolated pod (connect+req)", &self.to_isolated),
            ("pod -> unselected pod (connect+req)", &self.to_unselected),
        ];
        for (what, s) in rows {
            t.row([what.to_string(), pair(s), String::new()]);
        }
        if let (Some(a), Some(b)) = (&self.to_isolated, &self.to_unselected) {
            t.row([
                "isolated / unselected".to_string(),
                format!(
                    "{}/{}",
                    fmt_ratio(ratio(a.p50_ms, b.p50_ms)),
                    fmt_ratio(ratio(a.p99_ms, b.p99_ms))
                ),
                String::new(),
            ]);
        }
        t.row([
            "agent taking the pods and policies in".to_string(),
            format!(
                "{:.1} s CPU, {:.1} s wall",
                self.load_cpu_seconds, self.load_wall_seconds
            ),
            format!("{:.1} MiB RSS after", self.rss_kib as f64 / 1024.0),
        ]);
        if let Some(why) = &self.peer_not_run {
            t.row([
                "kube-network-policies".to_string(),
                "not run".to_string(),
                why.clone(),
            ]);
        }
        t
    }
}

/// Runs it: `pods` pods, `policies` policies, `rounds` rounds of the four
/// changes and `per_round` connections to each server.
///
/// # Errors
/// The cluster does not come up, the API refuses a write, a probe fails.
pub fn run(
    pods: usize,
    policies: usize,
    rounds: usize,
    per_round: usize,
) -> Result<KubePolicyReport> {
    ensure!(pods > 3, "--pods: more than 3");
    ensure!(pods < 1 << 16, "--pods: fewer than 65,536 (the peers' /16)");
    ensure!(policies >= 5, "--policies: at least 5");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut bench = Bench::up().await?;
        let started = Instant::now();
        let cpu_before = bench.agent.cpu_ticks()?;
        bench.fill(pods - 3, policies).await?;
        let load_wall_seconds = started.elapsed().as_secs_f64();
        let load_cpu_seconds = (bench.agent.cpu_ticks()? - cpu_before) as f64
            / crate::procfs::clock_ticks_per_second();
        let mut samples: [Vec<Duration>; 6] = Default::default();
        for _ in 0..rounds {
            let [po, pc, lo, lc, iso, open] = &mut samples;
            let (opened, closed) = bench.policy_change().await?;
            po.push(opened);
            pc.push(closed);
            let (opened, closed) = bench.label_change().await?;
            lo.push(opened);
            lc.push(closed);
            iso.extend(bench.admitted_latencies(per_round).await?);
            open.extend(bench.client.latencies(bench.unselected, per_round)?);
        }
        let [po, pc, lo, lc, iso, open] = samples.each_ref().map(|s| Summary::of(s));
        Ok(KubePolicyReport {
            pods,
            policies,
            rounds,
            per_round,
            policy_opened: po,
            policy_closed: pc,
            label_opened: lo,
            label_closed: lc,
            to_isolated: iso,
            to_unselected: open,
            load_cpu_seconds,
            load_wall_seconds,
            rss_kib: bench.agent.rss_kib()?,
            peer_not_run: peer_available().err(),
        })
    })
}

/// Whether this kernel takes nftables' `queue` expression, which
/// kube-network-policies needs; why not, if it does not.
///
/// # Errors
/// The reason, with what was tried.
pub fn peer_available() -> std::result::Result<(), String> {
    let netns = format!("bench-nfq-{}", std::process::id());
    let sh = |args: &[&str]| Command::new("ip").args(args).output();
    let _ = sh(&["netns", "add", &netns]);
    let script = "add table inet t\nadd chain inet t c { type filter hook forward priority 0; }\n\
                  add rule inet t c queue num 100 bypass\n";
    let out = Command::new("ip")
        .args(["netns", "exec", &netns, "nft", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child
                .stdin
                .take()
                .expect("piped")
                .write_all(script.as_bytes())?;
            child.wait_with_output()
        });
    let _ = sh(&["netns", "del", &netns]);
    match out {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(format!(
            "this kernel refuses nftables' queue expression (CONFIG_NFT_QUEUE), which it needs: `nft add rule inet t c queue num 100 bypass`: {}",
            String::from_utf8_lossy(&o.stderr)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
        )),
        Err(e) => Err(format!("nft could not be run: {e}")),
    }
}

/// The cluster, its API, the pods the probes run in, and the agent.
struct Bench {
    _cluster: KubeCluster,
    client: ProbePod,
    isolated: SocketAddrV4,
    unselected: SocketAddrV4,
    _servers: [Server; 2],
    agent: Process,
    pods: Api<Pod>,
    policies: Api<NetworkPolicy>,
    client_kube: kube::Client,
}

impl Bench {
    async fn up() -> Result<Bench> {
        let cluster = KubeCluster::try_up("bkpm", &["--nodes", "1"]).map_err(anyhow::Error::msg)?;
        let node = cluster.node_name(0).to_string();
        for app in ["srv", "open", "cli"] {
            cluster.apply(&bound_sleepers(app, &node, 1));
        }
        let server = ProbePod::of(&cluster, "srv")?;
        let open = ProbePod::of(&cluster, "open")?;
        let client = ProbePod::of(&cluster, "cli")?;
        let servers = [server.serve(SERVE_PORT)?, open.serve(SERVE_PORT)?];
        let config = kube::Config::from_custom_kubeconfig(
            kube::config::Kubeconfig::read_from(cluster.env("KUBECONFIG"))?,
            &Default::default(),
        )
        .await?;
        let kube = kube::Client::try_from(config)?;
        let bench = Bench {
            agent: Process(crate::cluster_tasks::margay_agent(&cluster, 0)?),
            isolated: SocketAddrV4::new(server.ip, SERVE_PORT),
            unselected: SocketAddrV4::new(open.ip, SERVE_PORT),
            client,
            _servers: servers,
            pods: Api::namespaced(kube.clone(), NAMESPACE),
            policies: Api::namespaced(kube.clone(), NAMESPACE),
            client_kube: kube,
            _cluster: cluster,
        };
        for to in [bench.isolated, bench.unselected] {
            bench.wait(to, "open", Duration::from_secs(120))?;
        }
        Ok(bench)
    }

    /// Creates the peers and the policies, the one that lets the labelled
    /// client in last, and waits until the server is isolated.
    async fn fill(&mut self, peers: usize, policies: usize) -> Result<()> {
        let namespaces: Api<Namespace> = Api::all(self.client_kube.clone());
        for n in 0..NAMESPACES {
            let ns: Namespace = serde_json::from_value(json!({"metadata": {
                "name": format!("bg-{n}"),
                "labels": {"team": format!("t-{}", n % 3)},
            }}))?;
            namespaces.create(&PostParams::default(), &ns).await?;
        }
        let nodes: Api<Node> = Api::all(self.client_kube.clone());
        let ghost: Node = serde_json::from_value(json!({"metadata": {"name": GHOST_NODE}}))?;
        nodes.create(&PostParams::default(), &ghost).await?;

        let mut tasks = tokio::task::JoinSet::new();
        for k in 0..CREATORS {
            let kube = self.client_kube.clone();
            tasks.spawn(async move {
                for i in (k..peers).step_by(CREATORS) {
                    peer(&kube, i).await?;
                }
                anyhow::Ok(())
            });
        }
        while let Some(done) = tasks.join_next().await {
            done??;
        }
        for j in 0..policies {
            let (ns, body) = background_policy(j);
            Api::<NetworkPolicy>::namespaced(self.client_kube.clone(), &ns)
                .create(&PostParams::default(), &serde_json::from_value(body)?)
                .await
                .with_context(|| format!("creating policy {j}"))?;
        }
        self.policies
            .create(
                &PostParams::default(),
                &allow_client("by-label", json!({"probe": "yes"})),
            )
            .await?;
        self.wait(self.isolated, "closed", Duration::from_secs(300))
    }

    fn wait(&self, to: SocketAddrV4, awaited: &str, within: Duration) -> Result<()> {
        let out = self.client.until(to, awaited, within)?.wait_with_output()?;
        ensure!(out.status.success(), "{to} never {awaited}");
        Ok(())
    }

    /// A policy letting the client in is created, then deleted: how long
    /// each took to show.
    async fn policy_change(&self) -> Result<(Duration, Duration)> {
        let allow = allow_client("probe", json!({"app": "cli"}));
        let opened = self
            .timed("open", async {
                self.policies.create(&PostParams::default(), &allow).await?;
                Ok(())
            })
            .await?;
        let closed = self
            .timed("closed", async {
                self.policies
                    .delete("probe", &DeleteParams::default())
                    .await?;
                Ok(())
            })
            .await?;
        Ok((opened, closed))
    }

    /// The client pod gains, then loses, the label policy `by-label` lets
    /// in: how long each took to show.
    async fn label_change(&self) -> Result<(Duration, Duration)> {
        let opened = self.timed("open", self.label_client(true)).await?;
        let closed = self.timed("closed", self.label_client(false)).await?;
        Ok((opened, closed))
    }

    /// Gives the client the label policy `by-label` lets in, or takes it.
    async fn label_client(&self, admitted: bool) -> Result<()> {
        let value = if admitted { json!("yes") } else { json!(null) };
        let patch = Patch::Merge(json!({"metadata": {"labels": {"probe": value}}}));
        self.pods
            .patch(&self.client.name, &PatchParams::default(), &patch)
            .await?;
        Ok(())
    }

    /// `count` connections to the isolated server while the label lets
    /// the client in: judged by all the server's rules, the last allowing.
    async fn admitted_latencies(&self, count: usize) -> Result<Vec<Duration>> {
        self.label_client(true).await?;
        self.wait(self.isolated, "open", CHANGE_WITHIN)?;
        let latencies = self.client.latencies(self.isolated, count);
        self.label_client(false).await?;
        self.wait(self.isolated, "closed", CHANGE_WITHIN)?;
        latencies
    }

    /// Starts the client trying the isolated server until it is `awaited`,
    /// makes `change`, and says how long after the API's answer it showed.
    async fn timed(
        &self,
        awaited: &str,
        change: impl std::future::Future<Output = Result<()>>,
    ) -> Result<Duration> {
        tokio::time::sleep(SPACING).await;
        let mut child = self
            .client
            .until_with(self.isolated, awaited, CHANGE_WITHIN, ATTEMPT)?;
        change.await?;
        let seen = seen_after(&mut child, epoch_nanos())
            .with_context(|| format!("the isolated server never {awaited}"))?;
        // A dropped attempt gives up one ATTEMPT after it started.
        Ok(if awaited == "closed" {
            seen.saturating_sub(ATTEMPT)
        } else {
            seen
        })
    }
}

/// Peer pod `i`: in namespace `bg-<i % 10>`, of app `app-<i % 50>` and
/// tier `t-<i % 5>`, with a named port; running on the ghost node with an
/// address of [`PEER_BASE`].
async fn peer(kube: &kube::Client, i: usize) -> Result<()> {
    let ns = format!("bg-{}", i % NAMESPACES);
    let name = format!("p-{i}");
    let api: Api<Pod> = Api::namespaced(kube.clone(), &ns);
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {
            "app": format!("app-{}", i % 50),
            "tier": format!("t-{}", i % 5),
        }},
        "spec": {
            "nodeName": GHOST_NODE,
            "tolerations": [{"operator": "Exists"}],
            "containers": [{
                "name": "c",
                "image": "localhost/busybox:latest",
                "ports": [{"name": "http", "containerPort": 8000 + (i % 3) as i32}],
            }],
        },
    }))?;
    api.create(&PostParams::default(), &pod)
        .await
        .with_context(|| format!("creating pod {ns}/{name}"))?;
    let ip = Ipv4Addr::from(PEER_BASE + i as u32).to_string();
    let status = json!({"status": {
        "phase": "Running",
        "podIP": ip,
        "podIPs": [{"ip": ip}],
    }});
    api.patch_status(&name, &PatchParams::default(), &Patch::Merge(status))
        .await
        .with_context(|| format!("giving pod {ns}/{name} its address"))?;
    Ok(())
}

/// Background policy `j` (its namespace, its body). Every fifth isolates
/// the server for peers by pod and namespace selectors and an address
/// block, on ports the client does not use; the others select peers, half
/// of them with egress to another app's named port.
fn background_policy(j: usize) -> (String, serde_json::Value) {
    let from = json!([
        {
            "podSelector": {"matchLabels": {"tier": format!("t-{}", j % 5)}},
            "namespaceSelector": {"matchLabels": {"team": format!("t-{}", j % 3)}},
        },
        {"podSelector": {"matchExpressions": [
            {"key": "app", "operator": "In", "values": [format!("app-{}", j % 50), format!("app-{}", (j + 7) % 50)]},
        ]}},
        {"ipBlock": {"cidr": format!("10.253.{}.0/24", j % 256), "except": [format!("10.253.{}.128/25", j % 256)]}},
    ]);
    let port = 7000 + j as i32;
    if j.is_multiple_of(5) {
        let body = json!({
            "metadata": {"name": format!("bg-{j}")},
            "spec": {
                "podSelector": {"matchLabels": {"app": "srv"}},
                "ingress": [{"from": from, "ports": [{"port": port}, {"port": "http"}]}],
            },
        });
        return (NAMESPACE.to_string(), body);
    }
    let mut spec = json!({
        "podSelector": {"matchLabels": {"app": format!("app-{}", j % 50)}},
        "ingress": [{"from": from, "ports": [{"port": port}]}],
    });
    if j % 2 == 1 {
        spec["egress"] = json!([{
            "to": [{"podSelector": {"matchLabels": {"app": format!("app-{}", (j + 1) % 50)}}}],
            "ports": [{"port": "http"}],
        }]);
        spec["policyTypes"] = json!(["Ingress", "Egress"]);
    }
    let body = json!({"metadata": {"name": format!("bg-{j}")}, "spec": spec});
    (format!("bg-{}", j % NAMESPACES), body)
}

/// Policy `name` letting pods labelled `labels` reach the server.
fn allow_client(name: &str, labels: serde_json::Value) -> NetworkPolicy {
    let body = json!({
        "metadata": {"name": name},
        "spec": {
            "podSelector": {"matchLabels": {"app": "srv"}},
            "ingress": [{
                "from": [{"podSelector": {"matchLabels": labels}}],
                "ports": [{"port": SERVE_PORT}],
            }],
        },
    });
    serde_json::from_value(body).expect("a valid NetworkPolicy")
}
