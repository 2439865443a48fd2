//! NetworkPolicy from the API, enforced by the node's programs. Policies,
//! pods and namespaces are watched whole; once all are listed, every
//! change (those closer together than `COALESCE` at once) is translated
//! ([`translate`], pure) and applied in an order that never opens a gap:
//! sets gain their new members first, then each endpoint whose rules
//! changed gets them (one map update per direction), then what no rule
//! names any more goes.
//!
//! A direction whose rules do not fit the programs' list is made to deny
//! everything, with an error, rather than allow what it cannot judge.

pub mod translate;

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use margay_ebpf::ip_set::IpSetTable;
use margay_ebpf::policy::{self as dataplane, RuleNumbers, SourceTable};
use margay_model::policy::PolicySpec;
use tokio::time::Instant;

use crate::cache::Cache;
use crate::metrics::{Metrics, WhatLabel};
use translate::{PolicyTranslation, Skipped, translate};

/// Changes closer together than this are applied at once.
const COALESCE: Duration = Duration::from_millis(2);
/// After a failed apply, the next try waits this long.
const RETRY: Duration = Duration::from_secs(1);

/// Keeps the node's endpoints' policy in step with the API.
pub struct PolicySync {
    pub root: PathBuf,
    pub node_name: String,
    pub policies: Cache<NetworkPolicy>,
    pub pods: Cache<Pod>,
    pub namespaces: Cache<Namespace>,
    pub metrics: Arc<Metrics>,
}

/// What the node holds, as this sync wrote it.
#[derive(Default)]
struct Applied {
    /// The node's sets and sources, read once and kept as written (None
    /// until the first sync, and after a failed one: read again).
    tables: Option<(IpSetTable, SourceTable)>,
    /// Each endpoint's policy, by host-veth ifindex.
    endpoints: HashMap<u32, PolicySpec>,
    skipped: Vec<Skipped>,
}

impl PolicySync {
    pub async fn run(mut self) {
        self.policies.listed().await;
        self.pods.listed().await;
        self.namespaces.listed().await;
        let mut applied = Some(Applied::default());
        let mut changed_at = Some(Instant::now());
        loop {
            if let Some(at) = changed_at {
                tokio::time::sleep(COALESCE).await;
                match self.sync(&mut applied).await {
                    Ok(()) => {
                        self.metrics
                            .sync_latency
                            .get_or_create(&WhatLabel { what: "policy" })
                            .observe(at.elapsed().as_secs_f64());
                        changed_at = None;
                    }
                    Err(e) => {
                        self.metrics
                            .apply_errors
                            .get_or_create(&WhatLabel { what: "policy" })
                            .inc();
                        tracing::error!("policy: {e:#}");
                        tokio::time::sleep(RETRY).await;
                        continue;
                    }
                }
            }
            tokio::select! {
                alive = self.policies.changed() => if !alive { return },
                alive = self.pods.changed() => if !alive { return },
                alive = self.namespaces.changed() => if !alive { return },
            }
            changed_at.get_or_insert_with(Instant::now);
        }
    }

    async fn sync(&self, applied: &mut Option<Applied>) -> anyhow::Result<()> {
        let policies = self.policies.store.state();
        let pods = self.pods.store.state();
        let namespaces = self.namespaces.store.state();
        let (root, node) = (self.root.clone(), self.node_name.clone());
        let mut owned = applied.take().unwrap_or_default();
        let (mut owned, outcome) = tokio::task::spawn_blocking(move || {
            let translation = translate(&policies, &pods, &namespaces, &node);
            let outcome = apply(&root, &translation, &mut owned).map(|()| translation.skipped);
            (owned, outcome)
        })
        .await
        .expect("translating and applying policy does not panic");
        let skipped = match outcome {
            Ok(skipped) => skipped,
            Err(e) => {
                // Part may be written: read the tables again next time.
                owned.tables = None;
                *applied = Some(owned);
                return Err(e);
            }
        };
        for s in skipped.iter().filter(|s| !owned.skipped.contains(s)) {
            tracing::warn!(policy = %s.policy, "not enforced: {}", s.reason);
        }
        *applied = Some(Applied { skipped, ..owned });
        Ok(())
    }
}

/// Applies `translation` to the node: sets, then endpoints, then what is
/// no longer named. `applied` is what the node holds and is kept exact.
fn apply(
    root: &Path,
    translation: &PolicyTranslation,
    applied: &mut Applied,
) -> anyhow::Result<()> {
    let (sets, sources) = match &mut applied.tables {
        Some((sets, sources)) => (sets, sources),
        None => {
            let tables = (IpSetTable::open(root)?, SourceTable::open(root)?);
            let (sets, sources) = applied.tables.insert(tables);
            (sets, sources)
        }
    };
    sets.apply(&translation.sets)?;
    let by_ip: HashMap<IpAddr, &PolicySpec> = translation
        .endpoints
        .iter()
        .flat_map(|e| e.ips.iter().map(move |ip| (*ip, &e.spec)))
        .collect();
    let none = PolicySpec::default();
    let mut live = HashMap::new();
    for ep in margay_ebpf::registry::list(root)? {
        let wanted = by_ip.get(&IpAddr::V4(ep.ipv4())).copied().unwrap_or(&none);
        live.insert(ep.ifindex, ());
        if applied.endpoints.get(&ep.ifindex) == Some(wanted) {
            continue;
        }
        let mut numbers = RuleNumbers {
            sets: Some(sets),
            sources: Some(sources),
        };
        match dataplane::set_numbered(root, ep.ifindex, wanted, &mut numbers) {
            Ok(()) => {
                applied.endpoints.insert(ep.ifindex, wanted.clone());
            }
            Err(e) => {
                // What cannot be written as asked is denied, not allowed.
                tracing::error!(
                    endpoint = ep.ifname(),
                    "policy: {e}; denying the directions it has"
                );
                let deny = PolicySpec {
                    ingress: wanted.ingress.as_ref().map(|_| Vec::new()),
                    egress: wanted.egress.as_ref().map(|_| Vec::new()),
                };
                dataplane::set(root, ep.ifindex, &deny)?;
                applied.endpoints.insert(ep.ifindex, deny);
            }
        }
    }
    applied
        .endpoints
        .retain(|ifindex, _| live.contains_key(ifindex));
    sets.retire(&|name| translation.sets.contains_key(name))?;
    let used: std::collections::HashSet<&str> = translation
        .endpoints
        .iter()
        .flat_map(|e| [&e.spec.ingress, &e.spec.egress])
        .flatten()
        .flatten()
        .filter_map(|r| r.source.as_deref())
        .collect();
    sources.retire(&|name| used.contains(name))?;
    Ok(())
}
