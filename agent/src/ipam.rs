//! The node's address blocks through the Kubernetes API (`ipam.datastore:
//! kubernetes`): the agent is the one writer of block ownership on its node.
//!
//! It watches every IPAMBlock, judges them ([`crate::blocks`]) and keeps the
//! IPAM store's blocks those the API gives this node
//! ([`margay_ipam::holdings::reconcile`]); margay-ipam then allocates inside
//! them from its store alone, with no API round trip on an ADD. Around that:
//! - **headroom**: below `ipam_min_free` free addresses of a family it
//!   claims another block (creates the block's object: the name makes the
//!   claim atomic, `AlreadyExists` means another node won it);
//! - **claims on demand**: margay-ipam, out of addresses in a burst, asks
//!   over the agent's socket ([`crate::socket`]) and the claim happens at once;
//! - **release**: a block empty for `empty_block_grace` beyond the headroom
//!   is dropped from the store, then its object deleted with its uid and
//!   resourceVersion as preconditions;
//! - **leaks**: an address whose pod has not existed on this node for
//!   `leak_grace` is released;
//! - **status**: each held block's object reports its use.
//!
//! It claims only while its own Node object exists: a node not registered
//! yet waits, and the blocks of a deleted node are released by the agent
//! holding the GC Lease ([`crate::gc`]), which this one must not fight by
//! claiming them back (they stay fenced in its store until their pods go).
//!
//! Nothing happens before the first full list of the IPAMBlocks (a relist
//! after the API was away replaces the cache whole, so a deletion missed
//! meanwhile is not missed). The controller's own writes enter its cache at
//! once, and objects it deleted are ignored until the watch shows them gone,
//! so a lagging watch never makes it undo its own work.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use ipnetwork::IpNetwork;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher::{self, Event};
use margay_conf::agent::Answer;
use margay_conf::margay::IpamConf;
use margay_ipam::IpamError;
use margay_ipam::allocator::families;
use margay_ipam::claim::first_usable_block;
use margay_ipam::handle::HandleRecord;
use margay_ipam::holdings::{self, BlockUsage, Reconciled};
use margay_ipam::store::Store;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::blocks::{self, BlockView};
use crate::cache::Cache;
use crate::crd::{IpamBlock, IpamBlockStatus};
use crate::health::Health;
use crate::metrics::{FamilyLabel, Metrics, WhatLabel};
use crate::settings::Settings;

/// Events closer together than this are handled in one pass.
const DEBOUNCE: Duration = Duration::from_millis(50);
/// A full pass this often even without events: headroom, leaks, releases.
const RESYNC: Duration = Duration::from_secs(5);
/// Blocks tried per pool before a claim gives up on it (each loss to
/// another node is one).
const CLAIM_ATTEMPTS: usize = 32;
/// How long the store's lock is waited for.
const STORE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the controller publishes: the judged IPAMBlocks, for the routes and
/// `margay-ipam blocks`.
#[derive(Debug, Default)]
pub struct ClusterBlocks {
    /// A full list has been seen.
    pub synced: bool,
    pub views: Vec<BlockView>,
}

/// A claim margay-ipam asked for, answered through `reply`.
#[derive(Debug)]
pub struct ClaimRequest {
    pub family: u8,
    pub reply: oneshot::Sender<Answer>,
}

/// What the controller reads of other objects than IPAMBlocks.
pub struct Caches {
    /// This node's pods, for leaks.
    pub pods: Cache<Pod>,
    /// Every Node: this one's must exist for it to claim.
    pub nodes: Cache<Node>,
}

/// The node's side of the store, read in one visit.
struct Local {
    reconciled: Reconciled,
    usage: Vec<BlockUsage>,
    handles: Vec<HandleRecord>,
}

pub struct IpamController {
    /// For requests (bounded in time).
    api: Api<IpamBlock>,
    /// For the watch.
    watch_api: Api<IpamBlock>,
    conf: IpamConf,
    settings: Arc<Settings>,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    published: watch::Sender<Arc<ClusterBlocks>>,
    caches: Caches,
    /// Every IPAMBlock by name: the watch's, with our own writes applied.
    objects: BTreeMap<String, IpamBlock>,
    /// Uids of objects we deleted that the watch has not shown gone.
    deleted: HashSet<String>,
    synced: bool,
    views: Vec<BlockView>,
    empty_since: HashMap<IpNetwork, Instant>,
    orphaned_since: HashMap<String, Instant>,
    conflicts_reported: BTreeSet<IpNetwork>,
    /// Why claims are refused, as last logged.
    refusal_reported: Option<String>,
    /// When the first change not yet handled was seen.
    dirty_since: Option<Instant>,
}

impl IpamController {
    pub fn new(
        clients: &crate::Clients,
        conf: IpamConf,
        settings: Arc<Settings>,
        metrics: Arc<Metrics>,
        health: Arc<Health>,
        published: watch::Sender<Arc<ClusterBlocks>>,
        caches: Caches,
    ) -> IpamController {
        IpamController {
            api: Api::all(clients.requests.clone()),
            watch_api: Api::all(clients.watches.clone()),
            conf,
            settings,
            metrics,
            health,
            published,
            caches,
            objects: BTreeMap::new(),
            deleted: HashSet::new(),
            synced: false,
            views: Vec::new(),
            empty_since: HashMap::new(),
            orphaned_since: HashMap::new(),
            conflicts_reported: BTreeSet::new(),
            refusal_reported: None,
            dirty_since: None,
        }
    }

    /// Runs until the watch ends (it retries on its own; it ends only when
    /// the agent stops).
    pub async fn run(mut self, mut requests: mpsc::Receiver<ClaimRequest>) {
        // kube-runtime's watcher relists after an outage or a too-old
        // resourceVersion, and backs off between attempts.
        let events =
            watcher::watcher(self.watch_api.clone(), watcher::Config::default()).default_backoff();
        let mut events = std::pin::pin!(events);
        let mut tick = tokio::time::interval(RESYNC);
        let mut listing: Option<BTreeMap<String, IpamBlock>> = None;
        let (mut pods, mut nodes) = (self.caches.pods.clone(), self.caches.nodes.clone());
        loop {
            let due = self.dirty_since.map(|t| t + DEBOUNCE);
            tokio::select! {
                event = events.next() => match event {
                    Some(Ok(event)) => self.on_event(event, &mut listing),
                    Some(Err(e)) => {
                        self.metrics.api_error("ipamblocks watch");
                        tracing::warn!("watching IPAMBlocks: {e} (retrying)");
                    }
                    None => return,
                },
                Some(request) = requests.recv() => {
                    let answer = self.answer(request.family).await;
                    let _ = request.reply.send(answer);
                }
                () = sleep_until(due) => self.converge().await,
                _ = tick.tick() => self.converge().await,
                // A pod of this node came or went (its ADD or DEL changed
                // the store), or a Node did (this one registered or was
                // deleted): a pass soon, not at the next tick.
                Some(()) = async { pods.changed().await.then_some(()) } => self.touch(),
                Some(()) = async { nodes.changed().await.then_some(()) } => self.touch(),
            }
        }
    }

    fn on_event(
        &mut self,
        event: Event<IpamBlock>,
        listing: &mut Option<BTreeMap<String, IpamBlock>>,
    ) {
        match event {
            Event::Init => *listing = Some(BTreeMap::new()),
            Event::InitApply(o) => {
                if let Some(l) = listing.as_mut() {
                    l.insert(o.metadata.name.clone().unwrap_or_default(), o);
                }
            }
            Event::InitDone => {
                let mut all = listing.take().unwrap_or_default();
                let uids: HashSet<String> = all
                    .values()
                    .filter_map(|o| o.metadata.uid.clone())
                    .collect();
                self.deleted.retain(|u| uids.contains(u));
                all.retain(|_, o| !self.is_deleted(o));
                self.objects = all;
                if !self.synced {
                    tracing::info!(objects = self.objects.len(), "IPAMBlocks listed");
                }
                self.synced = true;
            }
            Event::Apply(o) => self.remember(o),
            Event::Delete(o) => {
                let name = o.metadata.name.clone().unwrap_or_default();
                if self.objects.get(&name).map(|c| &c.metadata.uid) == Some(&o.metadata.uid) {
                    self.objects.remove(&name);
                }
                if let Some(uid) = &o.metadata.uid {
                    self.deleted.remove(uid);
                }
            }
        }
        self.touch();
    }

    /// Asks for a pass once the debounce is over.
    fn touch(&mut self) {
        self.dirty_since.get_or_insert_with(Instant::now);
    }

    fn is_deleted(&self, o: &IpamBlock) -> bool {
        o.metadata
            .uid
            .as_ref()
            .is_some_and(|u| self.deleted.contains(u))
    }

    /// Takes `o` (from the watch or from our own write) into the cache.
    fn remember(&mut self, o: IpamBlock) {
        if self.is_deleted(&o) {
            return;
        }
        self.objects
            .insert(o.metadata.name.clone().unwrap_or_default(), o);
        self.judge();
    }

    fn judge(&mut self) {
        self.views = blocks::judge(self.objects.values(), &self.conf.pools);
        self.published.send_replace(Arc::new(ClusterBlocks {
            synced: self.synced,
            views: self.views.clone(),
        }));
    }

    fn me(&self) -> &str {
        &self.settings.node_name
    }

    /// Why this node may not claim now: its Node object is not there (not
    /// yet registered, or deleted: its blocks are being released, and
    /// claiming them back would fight the agent releasing them).
    fn may_not_claim(&self) -> Option<String> {
        if !self.caches.nodes.is_listed() {
            return Some("the Nodes are not listed yet".into());
        }
        let node = self.caches.nodes.store.get(&ObjectRef::new(self.me()));
        node.is_none()
            .then(|| format!("node {} has no Node object", self.me()))
    }

    /// Runs `work` on the store, on a blocking thread (it takes a file
    /// lock and does disk IO).
    async fn with_store<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Store, &IpamConf) -> Result<T, IpamError> + Send + 'static,
    ) -> Result<T, IpamError> {
        let conf = self.conf.clone();
        tokio::task::spawn_blocking(move || {
            let store = Store::open(&conf.data_dir, STORE_TIMEOUT)?;
            work(&store, &conf)
        })
        .await
        .expect("store work does not panic")
    }

    /// Makes the store's blocks the API's and reads the node's use.
    async fn sync_store(&mut self) -> Result<Local, IpamError> {
        let holders = blocks::holders(&self.views);
        let local = self
            .with_store(move |store, conf| {
                Ok(Local {
                    reconciled: holdings::reconcile(store, conf, &holders)?,
                    usage: holdings::usage(store)?,
                    handles: store.handles()?,
                })
            })
            .await?;
        let r = &local.reconciled;
        for c in &r.adopted {
            tracing::info!(block = %c, "block held in the API taken into the store");
        }
        for c in &r.dropped {
            tracing::info!(block = %c, "empty block the API does not give this node dropped from the store");
        }
        for c in &r.outside_pools {
            tracing::warn!(block = %c, "the API gives this node a block outside every pool; not used");
        }
        let now: BTreeSet<IpNetwork> = r.conflicts.iter().map(|c| c.block).collect();
        for c in &r.conflicts {
            if !self.conflicts_reported.contains(&c.block) {
                tracing::error!(
                    block = %c.block,
                    in_use = c.in_use,
                    "block conflict: {}; this node hands out no new address from it, and its {} addresses in use stay until their pods go",
                    c.why,
                    c.in_use
                );
            }
        }
        self.conflicts_reported = now;
        self.metrics.block_conflicts.set(r.conflicts.len() as i64);
        for family in families(&self.conf.pools) {
            let of = || local.usage.iter().filter(move |b| b.family() == family);
            let label = FamilyLabel::of(family);
            self.metrics
                .blocks
                .get_or_create(&label)
                .set(of().count() as i64);
            self.metrics
                .free_addresses
                .get_or_create(&label)
                .set(of().map(|b| i64::from(b.usable)).sum());
            self.metrics
                .used_addresses
                .get_or_create(&label)
                .set(of().map(|b| i64::from(b.used)).sum());
        }
        Ok(local)
    }

    /// One full pass (see the module's documentation).
    async fn converge(&mut self) {
        let started = self.dirty_since.take();
        if !self.synced {
            return;
        }
        tracing::debug!(objects = self.objects.len(), "IPAM pass");
        self.judge();
        let mut local = match self.sync_store().await {
            Ok(l) => l,
            Err(e) => {
                tracing::error!("IPAM store: {e}");
                return;
            }
        };
        let mut claimed = false;
        let refusal = self.may_not_claim();
        if refusal != self.refusal_reported {
            if let Some(why) = &refusal {
                tracing::warn!("claiming no block: {why}");
            }
            self.refusal_reported = refusal.clone();
        }
        let unclaimed = match refusal {
            None => local.reconciled.unclaimed.clone(),
            Some(_) => Vec::new(),
        };
        for cidr in unclaimed {
            // In use here and held by nobody: an object deleted by hand, or
            // a store from before the Kubernetes datastore. Claim it back.
            match self.create(&cidr).await {
                Ok(true) => {
                    tracing::warn!(block = %cidr, "block in use here had no IPAMBlock; claimed it back");
                    claimed = true;
                }
                Ok(false) => {}
                Err(e) => tracing::warn!(block = %cidr, "claiming back a block in use: {e}"),
            }
        }
        for family in families(&self.conf.pools).collect::<Vec<_>>() {
            if free(&local.usage, family) >= self.settings.ipam_min_free
                || self.refusal_reported.is_some()
            {
                continue;
            }
            match self.claim(family).await {
                Ok(Some(_)) => claimed = true,
                Ok(None) => {}
                Err(e) => tracing::warn!("keeping IPv{family} headroom: {e}"),
            }
        }
        if claimed {
            match self.sync_store().await {
                Ok(l) => local = l,
                Err(e) => tracing::error!("IPAM store: {e}"),
            }
        }
        self.release_excess(&local.usage).await;
        self.collect_leaks(&local.handles).await;
        self.report_status(&local.usage).await;
        // Ready once the node could claim: an ADD on it finds addresses
        // (or the pools are full, which waiting does not change).
        if self.refusal_reported.is_none() {
            self.health.ipam_synced();
        }
        if let Some(t) = started {
            self.metrics
                .sync_latency
                .get_or_create(&WhatLabel { what: "ipam" })
                .observe(t.elapsed().as_secs_f64());
        }
    }

    /// Answers margay-ipam, out of IPv`family` addresses.
    async fn answer(&mut self, family: u8) -> Answer {
        if !self.synced {
            return Answer::Unavailable {
                reason: "margay-agent has not listed the IPAMBlocks yet (is the Kubernetes API reachable?)".into(),
            };
        }
        match self.with_store(|store, _| holdings::usage(store)).await {
            Ok(usage) if free(&usage, family) > 0 => return Answer::Ready { block: None },
            Ok(_) => {}
            Err(e) => {
                return Answer::Unavailable {
                    reason: e.to_string(),
                };
            }
        }
        if let Some(reason) = self.may_not_claim() {
            return Answer::Unavailable { reason };
        }
        match self.claim(family).await {
            Ok(Some(block)) => match self.sync_store().await {
                Ok(_) => Answer::Ready { block: Some(block) },
                Err(e) => Answer::Unavailable {
                    reason: e.to_string(),
                },
            },
            Ok(None) => Answer::Exhausted {
                pools: pools_of(&self.conf, family),
            },
            Err(e) => Answer::Unavailable {
                reason: format!("claiming a block in the Kubernetes API: {e}"),
            },
        }
    }

    /// Claims the first free block of the family's pools. `None` when
    /// every block of them is held.
    async fn claim(&mut self, family: u8) -> Result<Option<IpNetwork>, kube::Error> {
        let pools: Vec<IpNetwork> = self
            .conf
            .pools
            .iter()
            .filter(|p| (p.is_ipv4()) == (family == 4))
            .copied()
            .collect();
        for pool in pools {
            let prefix = self.conf.block_prefix(&pool);
            for _ in 0..CLAIM_ATTEMPTS {
                let taken = blocks::occupied(&self.views)
                    .into_iter()
                    .filter(|c| c.is_ipv4() == pool.is_ipv4());
                let Some(cidr) = first_usable_block(&pool, prefix, taken) else {
                    break;
                };
                if self.create(&cidr).await? {
                    tracing::info!(block = %cidr, "claimed a block");
                    return Ok(Some(cidr));
                }
            }
        }
        self.metrics.claim("exhausted");
        Ok(None)
    }

    /// Creates the object claiming `cidr` for this node: false when another
    /// node holds it already (its object is then in the cache).
    async fn create(&mut self, cidr: &IpNetwork) -> Result<bool, kube::Error> {
        let object = IpamBlock::claim(cidr, self.me());
        match self.api.create(&PostParams::default(), &object).await {
            Ok(created) => {
                self.metrics.claim("claimed");
                self.remember(created);
                Ok(true)
            }
            Err(kube::Error::Api(s)) if s.reason == "AlreadyExists" => {
                self.metrics.claim("conflict");
                tracing::info!(block = %cidr, "another node claimed the block first; trying the next");
                let name = object.metadata.name.unwrap_or_default();
                // None: released meanwhile; the next attempt finds it free.
                if let Some(theirs) = self.api.get_opt(&name).await? {
                    self.remember(theirs);
                }
                Ok(false)
            }
            Err(e) => {
                self.metrics.claim("error");
                self.metrics.api_error("ipamblock create");
                Err(e)
            }
        }
    }

    /// Gives back blocks empty for the grace period while the node keeps
    /// its headroom without them.
    async fn release_excess(&mut self, usage: &[BlockUsage]) {
        let now = Instant::now();
        self.empty_since
            .retain(|c, _| usage.iter().any(|b| b.cidr == *c && b.used == 0));
        for b in usage.iter().filter(|b| b.used == 0 && b.fenced.is_none()) {
            self.empty_since.entry(b.cidr).or_insert(now);
        }
        for family in families(&self.conf.pools).collect::<Vec<_>>() {
            let mut free = free(usage, family);
            let mut candidates: Vec<&BlockUsage> = usage
                .iter()
                .filter(|b| b.family() == family && b.used == 0 && b.fenced.is_none())
                .filter(|b| {
                    self.empty_since
                        .get(&b.cidr)
                        .is_some_and(|t| now - *t >= self.settings.empty_block_grace)
                })
                .collect();
            // The highest blocks go first: the pool stays packed low.
            candidates.sort_by_key(|b| std::cmp::Reverse((b.cidr.network(), b.cidr.prefix())));
            for b in candidates {
                if free.saturating_sub(b.capacity) < self.settings.ipam_min_free {
                    continue;
                }
                if self.release(b.cidr).await {
                    free -= b.capacity;
                }
            }
        }
    }

    /// Drops empty block `cidr` from the store, then deletes its object.
    async fn release(&mut self, cidr: IpNetwork) -> bool {
        let Some(view) = self
            .views
            .iter()
            .find(|v| v.cidr == Some(cidr) && v.node == self.me() && v.is_valid())
            .cloned()
        else {
            return false;
        };
        match self
            .with_store(move |store, _| holdings::drop_if_empty(store, &cidr))
            .await
        {
            Ok(true) => {}
            Ok(false) => return false, // An ADD took an address meanwhile.
            Err(e) => {
                tracing::error!(block = %cidr, "IPAM store: {e}");
                return false;
            }
        }
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: Some(view.uid.clone()),
                resource_version: Some(view.resource_version.clone()),
            }),
            ..DeleteParams::default()
        };
        self.empty_since.remove(&cidr);
        match self.api.delete(&view.name, &params).await {
            Ok(_) => {
                tracing::info!(block = %cidr, "released an empty block beyond the headroom");
                self.metrics.blocks_released.inc();
                self.deleted.insert(view.uid);
                self.objects.remove(&view.name);
                self.judge();
                true
            }
            Err(e) => {
                // The store no longer has it but the API still gives it to
                // this node: the next pass takes it back into the store.
                self.metrics.api_error("ipamblock delete");
                tracing::warn!(block = %cidr, "releasing the block in the API: {e}");
                false
            }
        }
    }

    /// Releases addresses whose pod has not existed on this node for the
    /// grace period.
    async fn collect_leaks(&mut self, handles: &[HandleRecord]) {
        if !self.caches.pods.is_listed() {
            return; // No full list of this node's pods yet.
        }
        let now = Instant::now();
        let mut expired = Vec::new();
        let mut seen = HashSet::new();
        for r in handles {
            let (Some(ns), Some(name)) = (&r.pod_namespace, &r.pod_name) else {
                continue; // Not a Kubernetes pod's: CNI GC's business.
            };
            seen.insert(r.handle.clone());
            let pod = self.caches.pods.store.get(&ObjectRef::new(name).within(ns));
            if pod.is_some_and(|p| holds(&p, &r.addresses, self.me())) {
                self.orphaned_since.remove(&r.handle);
                continue;
            }
            let since = *self.orphaned_since.entry(r.handle.clone()).or_insert(now);
            if now - since >= self.settings.leak_grace {
                expired.push(r.handle.clone());
            }
        }
        self.orphaned_since.retain(|h, _| seen.contains(h));
        if expired.is_empty() {
            return;
        }
        let wanted = expired.clone();
        match self
            .with_store(move |store, conf| holdings::release_handles(store, conf, &wanted))
            .await
        {
            Ok(released) => {
                for r in &released {
                    tracing::warn!(handle = %r.handle, addresses = ?r.addresses, "released the address of a pod that no longer exists on this node");
                    self.orphaned_since.remove(&r.handle);
                }
                // Addresses, not handles: a dual-stack pod's handle holds two.
                self.metrics
                    .leaked_addresses_released
                    .inc_by(released.iter().map(|r| r.addresses.len() as u64).sum());
            }
            Err(e) => tracing::error!("IPAM store: {e}"),
        }
    }

    /// Writes each held block's use into its object's status.
    async fn report_status(&mut self, usage: &[BlockUsage]) {
        let mut updated = Vec::new();
        for b in usage {
            let Some(view) = self
                .views
                .iter()
                .find(|v| v.cidr == Some(b.cidr) && v.node == self.me() && v.is_valid())
            else {
                continue;
            };
            let status = IpamBlockStatus {
                used: b.used,
                capacity: b.capacity,
            };
            let current = self.objects.get(&view.name).and_then(|o| o.status.as_ref());
            if current != Some(&status) {
                updated.push((view.name.clone(), status));
            }
        }
        for (name, status) in updated {
            let patch = Patch::Merge(serde_json::json!({ "status": status }));
            match self
                .api
                .patch_status(&name, &PatchParams::default(), &patch)
                .await
            {
                Ok(o) => self.remember(o),
                Err(e) => {
                    self.metrics.api_error("ipamblock status");
                    tracing::debug!(block = %name, "status: {e}");
                }
            }
        }
    }
}

/// Whether pod `p` (on `node`) is the one holding `addresses`: it exists
/// there and either has no address reported yet or reports one of them.
fn holds(p: &Pod, addresses: &[IpAddr], node: &str) -> bool {
    let on_node = p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node);
    let ips: Vec<IpAddr> = p
        .status
        .iter()
        .flat_map(|s| s.pod_ips.iter().flatten())
        .filter_map(|ip| ip.ip.parse().ok())
        .collect();
    on_node && (ips.is_empty() || ips.iter().any(|ip| addresses.contains(ip)))
}

fn free(usage: &[BlockUsage], family: u8) -> u32 {
    usage
        .iter()
        .filter(|b| b.family() == family)
        .map(|b| b.usable)
        .sum()
}

fn pools_of(conf: &IpamConf, family: u8) -> String {
    conf.pools
        .iter()
        .filter(|p| p.is_ipv4() == (family == 4))
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Sleeps until `t`, or forever when there is none.
async fn sleep_until(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}
