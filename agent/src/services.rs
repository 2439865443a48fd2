//! Services from the API, balanced by the node's programs: the agent's
//! kube-proxy. Services and EndpointSlices are watched whole; once both
//! are listed, the objects that changed (those closer together than
//! `COALESCE` at once) are translated into the service model by a
//! [`Translator`] that keeps the rest's translation, and what that changed
//! is applied through a [`ServiceTable`] that remembers what the maps
//! hold: a change costs the Services it touches, not all of them. The
//! first sync, a relist and the periodic `RESYNC` compare everything.
//! A restarted agent lists everything before it applies, so nothing is
//! removed for a moment; a relist after a lost watch replaces the caches
//! whole, so a slice deleted meanwhile is not missed.
//!
//! Host-networked clients (kubelet, hostNetwork pods, the node's own
//! processes) are balanced when their sockets connect, by the programs
//! [`serve_host_clients`] links to the node's cgroup.

pub mod health_check;
pub mod kube_proxy_rules;
pub mod translate;

use margay_ebpf::error::report;
use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::ObjectRef;
use margay_ebpf::service::{ApplyReport, ChangesApplied, ServiceTable};
use tokio::time::Instant;

use crate::cache::Cache;
use crate::health::Health;
use crate::metrics::{Metrics, WhatLabel};
use health_check::HealthChecks;
use translate::{ObjectKey, Skipped, Translator};

/// Changes closer together than this are applied at once: a rollout's
/// burst of slice updates costs one apply, and a lone change waits no
/// longer than this for company.
const COALESCE: Duration = Duration::from_millis(2);
/// After a failed apply, the next try waits this long.
const RETRY: Duration = Duration::from_secs(1);
/// Every so often the whole set is compared with the caches and with what
/// the maps hold (read back), as kube-proxy's periodic full sync: it
/// mends what a missed change or a hand-edited map left wrong.
const RESYNC: Duration = Duration::from_secs(300);

/// Keeps the node's services in sync with the API.
pub struct ServiceSync {
    pub root: PathBuf,
    pub node_name: String,
    pub services: Cache<Service>,
    pub slices: Cache<EndpointSlice>,
    pub health: Arc<Health>,
    pub metrics: Arc<Metrics>,
}

/// What a sync keeps between runs.
struct State {
    translator: Translator,
    /// None until the first apply, and after a failed one or a resync: the
    /// next apply writes the whole set.
    table: Option<ServiceTable>,
    /// Compare every object of the caches with the translation next time.
    look_at_all: bool,
    skipped: BTreeSet<Skipped>,
    checks: HealthChecks,
}

impl ServiceSync {
    pub async fn run(mut self) {
        self.services.listed().await;
        self.slices.listed().await;
        let mut state = Some(State {
            translator: Translator::new(&self.node_name),
            table: None,
            look_at_all: true,
            skipped: BTreeSet::new(),
            checks: HealthChecks::default(),
        });
        let mut changed_at = Some(Instant::now());
        let mut resync = tokio::time::interval_at(Instant::now() + RESYNC, RESYNC);
        loop {
            if let Some(at) = changed_at {
                tokio::time::sleep(COALESCE).await;
                match self.sync(&mut state).await {
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
                        tracing::error!("services: {}", report(e.as_ref()));
                        tokio::time::sleep(RETRY).await;
                        continue;
                    }
                }
            }
            tokio::select! {
                alive = self.services.changed() => if !alive { return },
                alive = self.slices.changed() => if !alive { return },
                _ = resync.tick() => {
                    let state = state.as_mut().expect("put back by every sync");
                    state.table = None;
                    state.look_at_all = true;
                }
            }
            changed_at.get_or_insert_with(Instant::now);
        }
    }

    /// Brings the translation up to date with the caches' changes and
    /// applies what changed.
    async fn sync(&self, state: &mut Option<State>) -> anyhow::Result<()> {
        let mut owned = state.take().expect("put back by every sync");
        let (services, slices) = (self.services.clone(), self.slices.clone());
        let root = self.root.clone();
        // Translating and writing the maps is CPU and syscalls (all of it
        // at the first sync, with ten thousand Services): off the runtime's
        // threads.
        let (mut owned, outcome) = tokio::task::spawn_blocking(move || {
            let outcome = translate_and_apply(&root, &services, &slices, &mut owned);
            (owned, outcome)
        })
        .await
        .expect("translating and applying services does not panic");
        let result = match outcome {
            Ok(report) => {
                self.report(&mut owned, report).await;
                Ok(())
            }
            Err(e) => Err(e),
        };
        *state = Some(owned);
        result
    }

    /// Logs and counts what a sync did, and serves the health checks.
    async fn report(&self, state: &mut State, report: Option<ApplyReport>) {
        let skipped = state.translator.skipped();
        for s in skipped.difference(&state.skipped) {
            tracing::warn!(service = %s.service, "not balanced: {}", s.reason);
        }
        state.checks.set(&state.translator.health_checks()).await;
        let ports = state.translator.spec_count();
        self.metrics.service_ports.set(ports as i64);
        self.metrics.service_ports_skipped.set(skipped.len() as i64);
        if let Some(r) = report {
            tracing::info!(
                ports,
                added = r.added,
                updated = r.updated,
                removed = r.removed,
                "services applied"
            );
        }
        state.skipped = skipped;
        self.health.services_synced();
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

/// The blocking half of a sync: the changed objects translated, and what
/// that changed applied (the whole set when the table is new or cannot
/// tell); `None` when nothing changed.
fn translate_and_apply(
    root: &Path,
    services: &Cache<Service>,
    slices: &Cache<EndpointSlice>,
    state: &mut State,
) -> anyhow::Result<Option<ApplyReport>> {
    let node_addrs: Vec<IpAddr> = margay_ebpf::nodeport::data_ifaces(root)?
        .into_iter()
        .map(|d| d.address)
        .collect();
    let translator = &mut state.translator;
    translator.set_node_addrs(&node_addrs);
    let (service_changes, slice_changes) = (services.take_changes(), slices.take_changes());
    if std::mem::take(&mut state.look_at_all) || service_changes.all || slice_changes.all {
        translator.sync_all(&services.store.state(), &slices.store.state());
    } else {
        for object in service_changes.objects {
            let service = services.store.get(&object);
            translator.set_service(object_key(&object), service);
        }
        for object in slice_changes.objects {
            let slice = slices.store.get(&object);
            translator.set_slice(object_key(&object), slice);
        }
    }
    let delta = translator.finish();
    let result = match &mut state.table {
        Some(_) if delta.is_empty() => return Ok(None),
        Some(table) => match table.apply_changes(&delta.changed, &delta.removed) {
            Ok(ChangesApplied::Written(report)) => Ok(report),
            Ok(ChangesApplied::WholeSetNeeded) => table.apply(&translator.specs()),
            Err(e) => Err(e),
        },
        None => ServiceTable::open(root).and_then(|table| {
            let table = state.table.insert(table);
            table.apply(&translator.specs())
        }),
    };
    if result.is_err() {
        // The translation moved on; the maps may not have: all of it next.
        state.table = None;
    }
    Ok(Some(result?))
}

/// A watched object's `namespace/name`.
fn object_key<K: kube::Resource>(object: &ObjectRef<K>) -> ObjectKey
where
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    Arc::new((
        object.namespace.clone().unwrap_or_default(),
        object.name.clone(),
    ))
}
