//! Services from the API, balanced by the node's programs: the agent's
//! kube-proxy. Services and EndpointSlices are watched whole; once both
//! are listed, every change (those closer together than [`COALESCE`] at
//! once) is translated ([`translate`], pure) into the service model and
//! applied as a diff through a [`ServiceTable`] that remembers what the
//! maps hold. A restarted agent lists everything before it applies, so
//! nothing is removed for a moment; a relist after a lost watch replaces
//! the caches whole, so a slice deleted meanwhile is not missed.
//!
//! Host-networked clients (kubelet, hostNetwork pods, the node's own
//! processes) are balanced when their sockets connect, by the programs
//! [`serve_host_clients`] links to the node's cgroup.

pub mod health_check;
pub mod kube_proxy_rules;
pub mod translate;

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use margay_ebpf::service::{ApplyReport, ServiceTable};
use margay_model::service::ServiceSpec;
use tokio::time::Instant;

use crate::cache::Cache;
use crate::health::Health;
use crate::metrics::{Metrics, WhatLabel};
use health_check::HealthChecks;
use translate::{Skipped, Translation, translate};

/// Changes closer together than this are applied at once: a rollout's
/// burst of slice updates costs one apply, and a lone change waits no
/// longer than this for company.
const COALESCE: Duration = Duration::from_millis(10);
/// After a failed apply, the next try waits this long.
const RETRY: Duration = Duration::from_secs(1);

/// Keeps the node's services in sync with the API.
pub struct ServiceSync {
    pub root: PathBuf,
    pub node_name: String,
    pub services: Cache<Service>,
    pub slices: Cache<EndpointSlice>,
    pub health: Arc<Health>,
    pub metrics: Arc<Metrics>,
}

/// What the last successful apply made the node hold.
#[derive(Default)]
struct Applied {
    specs: Vec<ServiceSpec>,
    skipped: BTreeSet<Skipped>,
}

impl ServiceSync {
    pub async fn run(mut self) {
        self.services.listed().await;
        self.slices.listed().await;
        let mut table: Option<ServiceTable> = None;
        let mut applied: Option<Applied> = None;
        let mut checks = HealthChecks::default();
        let mut changed_at = Some(Instant::now());
        loop {
            if let Some(at) = changed_at {
                tokio::time::sleep(COALESCE).await;
                match self.sync(&mut table, &mut applied, &mut checks).await {
                    Ok(()) => {
                        self.metrics
                            .sync_latency
                            .get_or_create(&WhatLabel { what: "services" })
                            .observe(at.elapsed().as_secs_f64());
                        changed_at = None;
                    }
                    Err(e) => {
                        self.metrics
                            .apply_errors
                            .get_or_create(&WhatLabel { what: "services" })
                            .inc();
                        tracing::error!("services: {e:#}");
                        tokio::time::sleep(RETRY).await;
                        continue;
                    }
                }
            }
            tokio::select! {
                alive = self.services.changed() => if !alive { return },
                alive = self.slices.changed() => if !alive { return },
            }
            changed_at.get_or_insert_with(Instant::now);
        }
    }

    /// Translates the caches and applies what changed since `applied`.
    async fn sync(
        &self,
        table: &mut Option<ServiceTable>,
        applied: &mut Option<Applied>,
        checks: &mut HealthChecks,
    ) -> anyhow::Result<()> {
        let services = self.services.store.state();
        let slices = self.slices.store.state();
        let root = self.root.clone();
        let node = self.node_name.clone();
        let mut owned = table.take();
        let previous = applied.take();
        // Translating ten thousand Services and writing the maps is CPU and
        // syscalls: off the runtime's threads.
        let (owned, previous, outcome) = tokio::task::spawn_blocking(move || {
            let outcome =
                translate_and_apply(&root, &node, &services, &slices, &mut owned, &previous);
            (owned, previous, outcome)
        })
        .await
        .expect("translating and applying services does not panic");
        *table = owned;
        let (translation, report) = match outcome {
            Ok(done) => done,
            Err(e) => {
                *applied = previous;
                return Err(e);
            }
        };
        let before = previous.map(|p| p.skipped).unwrap_or_default();
        let skipped: BTreeSet<Skipped> = translation.skipped.iter().cloned().collect();
        for s in skipped.difference(&before) {
            tracing::warn!(service = %s.service, "not balanced: {}", s.reason);
        }
        checks.set(&translation.health_checks).await;
        self.metrics
            .service_ports
            .set(translation.specs.len() as i64);
        self.metrics.service_ports_skipped.set(skipped.len() as i64);
        if let Some(r) = report {
            tracing::info!(
                ports = translation.specs.len(),
                added = r.added,
                updated = r.updated,
                removed = r.removed,
                "services applied"
            );
        }
        *applied = Some(Applied {
            specs: translation.specs,
            skipped,
        });
        self.health.services_synced();
        Ok(())
    }
}

/// Links the connect-time programs to the node's cgroup v2 directory
/// `cgroup` (mounting the hierarchy there on a cgroup v1 node), so
/// host-networked clients reach Services too. Kept as they are when
/// already linked there.
///
/// # Errors
/// The programs are not pinned, `cgroup` is unusable, or the kernel
/// refuses (it names which).
pub async fn serve_host_clients(root: &Path, cgroup: &Path) -> anyhow::Result<()> {
    let (root, cgroup) = (root.to_path_buf(), cgroup.to_path_buf());
    tokio::task::spawn_blocking(move || margay_ebpf::host_lb::attach(&root, &cgroup))
        .await
        .expect("linking the connect-time programs does not panic")
        .context("services for host-networked clients (MARGAY_CGROUP_V2)")
}

/// Makes the node balance nothing (kube-proxy does, or the node was
/// switched to the linux dataplane): the connect-time programs unlinked and
/// every frontend removed, so no stale Service outlives the switch in the
/// maps of a node that once ran the bpf dataplane.
///
/// # Errors
/// A link's pin cannot be removed, or the service maps cannot be written.
pub async fn withdraw(root: &Path) -> anyhow::Result<()> {
    let root = root.to_path_buf();
    tokio::task::spawn_blocking(move || {
        if !root.exists() {
            return Ok(());
        }
        margay_ebpf::host_lb::detach(&root).context("unlinking the connect-time programs")?;
        if margay_ebpf::service::list(&root).is_ok_and(|frontends| !frontends.is_empty()) {
            let report = margay_ebpf::service::apply(&root, &[])
                .context("removing the services from the maps")?;
            tracing::info!(
                frontends = report.removed,
                "services: every frontend removed (Margay balances none)"
            );
        }
        Ok(())
    })
    .await
    .expect("withdrawing the services does not panic")
}

/// The blocking half of a sync: the node's NodePort addresses read, the
/// caches translated, and the result applied unless it is what the node
/// already holds (`None` report).
fn translate_and_apply(
    root: &Path,
    node: &str,
    services: &[Arc<Service>],
    slices: &[Arc<EndpointSlice>],
    table: &mut Option<ServiceTable>,
    previous: &Option<Applied>,
) -> anyhow::Result<(Translation, Option<ApplyReport>)> {
    let node_addrs: Vec<Ipv4Addr> = margay_ebpf::nodeport::data_ifaces(root)?
        .into_iter()
        .map(|d| d.address)
        .collect();
    let translation = translate(services, slices, node, &node_addrs);
    if previous
        .as_ref()
        .is_some_and(|p| p.specs == translation.specs)
    {
        return Ok((translation, None));
    }
    let table = match table {
        Some(t) => t,
        None => table.insert(ServiceTable::open(root)?),
    };
    let report = table.apply(&translation.specs)?;
    Ok((translation, Some(report)))
}
