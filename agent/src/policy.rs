//! NetworkPolicy from the API, enforced by the node's programs. Policies,
//! pods and namespaces are watched whole; once all are listed, every
//! change (those closer together than `COALESCE` at once) is translated
//! ([`translate`], pure) and applied in an order that never opens a gap:
//! sets gain their new members first, then each endpoint whose rules
//! changed gets them (one map update per direction), then what no rule
//! names any more goes.
//!
//! A new pod's ADD asks, over the agent's socket, that its policy be in
//! force before its containers start ([`EndpointRequest`]): the endpoint
//! is then known by the pod's name, and its address by what the ADD
//! registered, before the kubelet writes them into the pod's status.
//!
//! A direction whose rules do not fit the programs' list is made to deny
//! everything, with an error, rather than allow what it cannot judge.

pub mod translate;

use margay_ebpf::error::report;
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::runtime::reflector::ObjectRef;
use margay_conf::agent::Answer;
use margay_ebpf::abi::Endpoint;
use margay_ebpf::ip_set::IpSetTable;
use margay_ebpf::policy::{self as dataplane, RuleNumbers, SourceTable};
use margay_ebpf::registry;
use margay_model::policy::PolicySpec;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::cache::Cache;
use crate::metrics::{Metrics, WhatLabel};
use translate::{LocalAddresses, PodName, PolicyTranslation, Skipped, translate};

/// Changes closer together than this are applied at once.
const COALESCE: Duration = Duration::from_millis(2);
/// After a failed apply, the next try waits this long.
const RETRY: Duration = Duration::from_secs(1);
/// How long an ADD's request waits for its pod to reach the agent's cache
/// (the kubelet's watch may have seen it first).
const POD_WAIT: Duration = Duration::from_secs(5);

/// An ADD's request that pod `namespace/name`'s policy be in force on the
/// endpoint at host veth `ifindex`; answered on `reply`.
pub struct EndpointRequest {
    pub ifindex: u32,
    pub namespace: String,
    pub name: String,
    /// The pod's UID, when the runtime passed it: a pod of the same name
    /// that the cache still holds from before is not this one.
    pub uid: Option<String>,
    pub reply: oneshot::Sender<Answer>,
}

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
    /// Each endpoint's policy as translated, by host-veth ifindex.
    endpoints: HashMap<u32, PolicySpec>,
    /// The endpoints whose policy could not be written and deny instead.
    denied: HashSet<u32>,
    skipped: Vec<Skipped>,
}

impl PolicySync {
    pub async fn run(mut self, mut requests: mpsc::Receiver<EndpointRequest>) {
        self.policies.listed().await;
        self.pods.listed().await;
        self.namespaces.listed().await;
        let mut applied = Some(Applied::default());
        let mut changed_at = Some(Instant::now());
        // The pods that ADDs named, by endpoint, and the ADDs still waiting.
        let mut announced: HashMap<u32, PodName> = HashMap::new();
        let mut waiting: Vec<(EndpointRequest, Instant)> = Vec::new();
        loop {
            if let Some(at) = changed_at {
                tokio::time::sleep(COALESCE).await;
                while let Ok(request) = requests.try_recv() {
                    announce(&mut announced, &mut waiting, request);
                }
                match self.sync(&mut applied, &announced).await {
                    Ok(registered) => {
                        self.metrics
                            .sync_latency
                            .get_or_create(&WhatLabel { what: "policy" })
                            .observe(at.elapsed().as_secs_f64());
                        changed_at = None;
                        announced.retain(|ifindex, _| registered.contains(ifindex));
                        waiting = waiting
                            .into_iter()
                            .filter_map(|w| self.answer_if_applied(w, &registered))
                            .collect();
                    }
                    Err(e) => {
                        self.metrics
                            .apply_errors
                            .get_or_create(&WhatLabel { what: "policy" })
                            .inc();
                        tracing::error!("policy: {}", report(e.as_ref()));
                        for (request, _) in waiting.drain(..) {
                            let _ = request.reply.send(Answer::Unavailable {
                                reason: format!("applying NetworkPolicy: {}", report(e.as_ref())),
                            });
                        }
                        tokio::time::sleep(RETRY).await;
                        continue;
                    }
                }
            }
            let deadline = waiting.iter().map(|(_, since)| *since + POD_WAIT).min();
            tokio::select! {
                alive = self.policies.changed() => if !alive { return },
                alive = self.pods.changed() => if !alive { return },
                alive = self.namespaces.changed() => if !alive { return },
                Some(request) = requests.recv() => {
                    announce(&mut announced, &mut waiting, request);
                }
                () = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                    let now = Instant::now();
                    let (late, still): (Vec<_>, Vec<_>) = waiting
                        .drain(..)
                        .partition(|(_, since)| now - *since >= POD_WAIT);
                    waiting = still;
                    for (request, _) in late {
                        let reason = format!(
                            "pod {}/{} is not in margay-agent's view of the API after {POD_WAIT:?}",
                            request.namespace, request.name
                        );
                        let _ = request.reply.send(Answer::Unavailable { reason });
                    }
                    continue;
                }
            }
            changed_at.get_or_insert_with(Instant::now);
        }
    }

    /// Answers `waiting` if the sync that registered `registered` put its
    /// pod's policy in force; gives it back if its pod is not in the cache
    /// yet.
    fn answer_if_applied(
        &self,
        waiting: (EndpointRequest, Instant),
        registered: &HashSet<u32>,
    ) -> Option<(EndpointRequest, Instant)> {
        let request = &waiting.0;
        let pod = self
            .pods
            .store
            .get(&ObjectRef::new(&request.name).within(&request.namespace));
        let known = pod.is_some_and(|p| {
            request.uid.is_none() || p.metadata.uid.as_deref() == request.uid.as_deref()
        });
        if !known {
            return Some(waiting);
        }
        let answer = if registered.contains(&request.ifindex) {
            Answer::PolicyApplied
        } else {
            Answer::Unavailable {
                reason: format!("no endpoint is registered at ifindex {}", request.ifindex),
            }
        };
        let _ = waiting.0.reply.send(answer);
        None
    }

    /// Translates and applies; the ifindexes of the endpoints registered.
    async fn sync(
        &self,
        applied: &mut Option<Applied>,
        announced: &HashMap<u32, PodName>,
    ) -> anyhow::Result<HashSet<u32>> {
        let policies = self.policies.store.state();
        let pods = self.pods.store.state();
        let namespaces = self.namespaces.store.state();
        let (root, node) = (self.root.clone(), self.node_name.clone());
        let announced = announced.clone();
        let mut owned = applied.take().unwrap_or_default();
        let (mut owned, outcome) = tokio::task::spawn_blocking(move || {
            let outcome =
                registry::list(&root)
                    .map_err(anyhow::Error::from)
                    .and_then(|registered| {
                        let local = local_addresses(&root, &registered, &announced)?;
                        let translation = translate(&policies, &pods, &namespaces, &node, &local);
                        apply(&root, &translation, &registered, &mut owned)?;
                        let registered = registered.iter().map(|e| e.ifindex).collect();
                        Ok((translation.skipped, registered))
                    });
            (owned, outcome)
        })
        .await
        .expect("translating and applying policy does not panic");
        let (skipped, registered) = match outcome {
            Ok(done) => done,
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
        self.metrics.policy_ports_skipped.set(skipped.len() as i64);
        self.metrics
            .policy_endpoints_denied
            .set(owned.denied.len() as i64);
        *applied = Some(Applied { skipped, ..owned });
        Ok(registered)
    }
}

/// Notes the pod an ADD names for its endpoint, and that the ADD waits.
fn announce(
    announced: &mut HashMap<u32, PodName>,
    waiting: &mut Vec<(EndpointRequest, Instant)>,
    request: EndpointRequest,
) {
    announced.insert(
        request.ifindex,
        (request.namespace.clone(), request.name.clone()),
    );
    waiting.push((request, Instant::now()));
}

/// The addresses the announced pods' endpoints were registered with.
fn local_addresses(
    root: &Path,
    registered: &[Endpoint],
    announced: &HashMap<u32, PodName>,
) -> anyhow::Result<LocalAddresses> {
    let mut local = LocalAddresses::new();
    for ep in registered {
        if let Some(pod) = announced.get(&ep.ifindex) {
            let v6 = registry::ipv6_of(root, ep.ifindex)?.map(IpAddr::V6);
            let ips = std::iter::once(IpAddr::V4(ep.ipv4())).chain(v6).collect();
            local.insert(pod.clone(), ips);
        }
    }
    Ok(local)
}

/// Applies `translation` to the node: sets, then endpoints, then what is
/// no longer named. `applied` is what the node holds and is kept exact.
fn apply(
    root: &Path,
    translation: &PolicyTranslation,
    registered: &[Endpoint],
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
    let mut live = HashSet::new();
    for ep in registered {
        let wanted = by_ip.get(&IpAddr::V4(ep.ipv4())).copied().unwrap_or(&none);
        live.insert(ep.ifindex);
        if applied.endpoints.get(&ep.ifindex) == Some(wanted) {
            continue;
        }
        let mut numbers = RuleNumbers {
            sets: Some(sets),
            sources: Some(sources),
        };
        match dataplane::set_numbered(root, ep.ifindex, wanted, &mut numbers) {
            Ok(()) => {
                applied.denied.remove(&ep.ifindex);
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
                applied.denied.insert(ep.ifindex);
            }
        }
        // As translated, also when denied: tried again only when it changes.
        applied.endpoints.insert(ep.ifindex, wanted.clone());
    }
    applied
        .endpoints
        .retain(|ifindex, _| live.contains(ifindex));
    applied.denied.retain(|ifindex| live.contains(ifindex));
    sets.retire(&|name| translation.sets.contains_key(name))?;
    let used: HashSet<&str> = translation
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
