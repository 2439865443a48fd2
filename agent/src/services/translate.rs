//! Services and EndpointSlices translated into the service model, as
//! kube-proxy reads them: [`translate`] is a pure function of the API
//! objects, the node's name and its addresses; a [`Translator`] gives the
//! same, kept up to date one change at a time.
//!
//! One [`ServiceSpec`] per IPv4 Service port. What cannot be balanced, or
//! claims a frontend that an older Service's port holds, is left out with
//! a reason ([`Skipped`]), so one bad Service never holds back the others.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Service, ServicePort};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use margay_model::protocol::Protocol;
use margay_model::service::{
    Frontend, MAX_AFFINITY_TIMEOUT, MAX_BACKENDS, MAX_NAME, ServiceSpec, TrafficPolicy,
};

/// The label that names an EndpointSlice's Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Services with this label belong to another proxy (kube-proxy leaves
/// them alone too).
pub const SERVICE_PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";
/// `sessionAffinityConfig.clientIP.timeoutSeconds` when unset.
const DEFAULT_AFFINITY_TIMEOUT: u32 = 10_800;

/// What the node should balance, from the API.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Translation {
    /// Valid as a set (`margay_model::service::validate` accepts it).
    pub specs: Vec<ServiceSpec>,
    pub skipped: Vec<Skipped>,
    /// The `healthCheckNodePort`s this node answers on.
    pub health_checks: Vec<HealthCheck>,
}

/// The EndpointSlice address types balanced.
const FAMILIES: [&str; 2] = ["IPv4", "IPv6"];

/// A Service (or one of its ports) left out, and why.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Skipped {
    /// `namespace/name` or `namespace/name:port`.
    pub service: String,
    pub reason: String,
}

/// A `healthCheckNodePort` of an `externalTrafficPolicy: Local` Service,
/// with how many of its ready endpoints run on this node: an external load
/// balancer sends traffic only to nodes that answer 200.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct HealthCheck {
    pub port: u16,
    pub namespace: String,
    pub name: String,
    pub local_endpoints: usize,
}

/// An endpoint address as kube-proxy judges it.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    addr: IpAddr,
    ready: bool,
    serving: bool,
    terminating: bool,
    local: bool,
}

/// Translates every Service into the model, for node `node` whose
/// addresses are `node_addrs` (its NodePorts answer there). Of two Service
/// ports that claim one frontend, the older Service's keeps it.
pub fn translate(
    services: &[Arc<Service>],
    slices: &[Arc<EndpointSlice>],
    node: &str,
    node_addrs: &[IpAddr],
) -> Translation {
    let mut translator = Translator::new(node);
    translator.set_node_addrs(node_addrs);
    translator.sync_all(services, slices);
    translator.finish();
    translator.translation()
}

/// `(namespace, name)` of a Service, or of an EndpointSlice: shared, as
/// several maps of a [`Translator`] hold it (ten thousand Services).
pub type ObjectKey = Arc<(String, String)>;

/// [`translate`] kept up to date change by change, the way kube-proxy's
/// change trackers do: told which Services and EndpointSlices changed, it
/// translates those Services alone, settles frontend claims among the
/// Services that share a frontend with them, and says which specs changed
/// ([`Delta`]). A change to one of ten thousand Services costs one.
///
/// ```
/// # use margay_agent::services::translate::Translator;
/// let mut translator = Translator::new("node-a");
/// translator.sync_all(&[], &[]);
/// let delta = translator.finish();
/// assert!(delta.changed.is_empty() && delta.removed.is_empty());
/// ```
pub struct Translator {
    node: String,
    node_addrs: Vec<IpAddr>,
    services: HashMap<ObjectKey, Arc<Service>>,
    /// The IPv4 and IPv6 slices of each Service, by name (most have one
    /// of each family it has).
    slices: HashMap<ObjectKey, Vec<Arc<EndpointSlice>>>,
    /// The Service each known slice counts for.
    slice_owner: HashMap<ObjectKey, ObjectKey>,
    /// What each Service gives besides its specs (those are in `claims`),
    /// for those it gives anything.
    notes: HashMap<ObjectKey, ServiceNotes>,
    claims: Claims,
    /// Services changed since the last [`Translator::finish`].
    dirty: HashSet<ObjectKey>,
}

/// Which specs changed in a [`Translator::finish`]: `changed` replace the
/// spec of their ClusterIP frontend (or are new), the specs of the
/// ClusterIP frontends `removed` are gone. What `ServiceTable::apply_changes`
/// takes.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Delta {
    pub changed: Vec<ServiceSpec>,
    pub removed: Vec<Frontend>,
}

impl Delta {
    pub fn is_empty(&self) -> bool {
        self.changed.is_empty() && self.removed.is_empty()
    }
}

/// What one Service gives before claims are settled across Services.
#[derive(Debug, Default)]
struct ServiceTranslation {
    /// Each valid on its own.
    specs: Vec<ServiceSpec>,
    notes: ServiceNotes,
}

/// What of a Service is left out, and its health check.
#[derive(Debug, Default)]
struct ServiceNotes {
    skipped: Vec<Skipped>,
    health_check: Option<HealthCheck>,
}

impl Translator {
    pub fn new(node: &str) -> Translator {
        Translator {
            node: node.to_string(),
            node_addrs: Vec::new(),
            services: HashMap::new(),
            slices: HashMap::new(),
            slice_owner: HashMap::new(),
            notes: HashMap::new(),
            claims: Claims::default(),
            dirty: HashSet::new(),
        }
    }

    /// The node's NodePort addresses; a change re-translates everything.
    pub fn set_node_addrs(&mut self, node_addrs: &[IpAddr]) {
        if self.node_addrs != node_addrs {
            self.node_addrs = node_addrs.to_vec();
            self.dirty.extend(self.services.keys().cloned());
        }
    }

    /// Service `key` is now `service` (None: deleted). The watch caches
    /// replace an object on every change, so the same `Arc` is no change.
    pub fn set_service(&mut self, key: ObjectKey, service: Option<Arc<Service>>) {
        let same = match (&service, self.services.get(&key)) {
            (Some(new), Some(old)) => Arc::ptr_eq(new, old),
            (None, None) => true,
            _ => false,
        };
        if same {
            return;
        }
        match service {
            Some(s) => self.services.insert(key.clone(), s),
            None => self.services.remove(&key),
        };
        self.dirty.insert(key);
    }

    /// EndpointSlice `key` is now `slice` (None: deleted).
    pub fn set_slice(&mut self, key: ObjectKey, slice: Option<Arc<EndpointSlice>>) {
        let owner: Option<ObjectKey> = slice.as_deref().and_then(|s| {
            let service = s.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL)?;
            let owner = (key.0.clone(), service.clone());
            // The Service's own key when it is known: one copy of the names.
            let known = self.services.get_key_value(&owner).map(|(k, _)| k.clone());
            FAMILIES
                .contains(&s.address_type.as_str())
                .then(|| known.unwrap_or_else(|| Arc::new(owner)))
        });
        let old_owner = self.slice_owner.get(&key);
        if let (Some(new), Some(owner), Some(old_owner)) = (&slice, &owner, old_owner)
            && owner == old_owner
            && self.slices[owner].iter().any(|old| Arc::ptr_eq(old, new))
        {
            return;
        }
        let by_name = |s: &Arc<EndpointSlice>| s.metadata.name.as_deref() == Some(key.1.as_str());
        if let Some(old_owner) = self.slice_owner.remove(&key) {
            if let Some(of_owner) = self.slices.get_mut(&old_owner) {
                of_owner.retain(|s| !by_name(s));
                if of_owner.is_empty() {
                    self.slices.remove(&old_owner);
                }
            }
            self.dirty.insert(old_owner);
        }
        if let (Some(slice), Some(owner)) = (slice, owner) {
            let of_owner = self.slices.entry(owner.clone()).or_default();
            let at = of_owner.partition_point(|s| s.metadata.name < slice.metadata.name);
            of_owner.insert(at, slice);
            self.slice_owner.insert(key, owner.clone());
            self.dirty.insert(owner);
        }
    }

    /// Takes the whole of both caches (after a relist, or to start): what
    /// is not in them any more is deleted, what is the same object as
    /// before is no change.
    pub fn sync_all(&mut self, services: &[Arc<Service>], slices: &[Arc<EndpointSlice>]) {
        for key in unlisted(self.services.keys(), services) {
            self.set_service(key, None);
        }
        for service in services {
            self.set_service(key_of(&service.metadata), Some(service.clone()));
        }
        for key in unlisted(self.slice_owner.keys(), slices) {
            self.set_slice(key, None);
        }
        for slice in slices {
            self.set_slice(key_of(&slice.metadata), Some(slice.clone()));
        }
    }

    /// Translates the Services changed since the last call, settles the
    /// claims they touch, and says which specs changed.
    pub fn finish(&mut self) -> Delta {
        let dirty = std::mem::take(&mut self.dirty);
        let mut touched: Vec<ClaimKey> = Vec::new();
        let mut before: BTreeMap<Arc<Rank>, Option<ServiceSpec>> = BTreeMap::new();
        for key in &dirty {
            for (rank, gone) in self.claims.withdraw(key) {
                touched.extend(gone.keys.iter().copied());
                let balanced = gone.balanced().cloned();
                before.insert(rank, balanced);
            }
            let Some(service) = self.services.get(key) else {
                self.notes.remove(key);
                continue;
            };
            let slices: Vec<&EndpointSlice> = self
                .slices
                .get(key)
                .into_iter()
                .flat_map(|s| s.iter().map(AsRef::as_ref))
                .collect();
            let ServiceTranslation { specs, notes } =
                translate_service(service, &slices, &self.node);
            let age = service.metadata.creation_timestamp.clone();
            for (port, spec) in specs.into_iter().enumerate() {
                let rank = Arc::new(Rank {
                    created: age.clone(),
                    service: key.clone(),
                    port,
                });
                let claimant = Claimant::new(spec, &self.node_addrs);
                touched.extend(claimant.keys.iter().copied());
                before.entry(rank.clone()).or_insert(None);
                self.claims.offer(rank, claimant);
            }
            if notes.skipped.is_empty() && notes.health_check.is_none() {
                self.notes.remove(key);
            } else {
                self.notes.insert(key.clone(), notes);
            }
        }
        for (rank, outcome) in self.claims.settle(&touched) {
            before.entry(rank).or_insert(outcome);
        }
        let mut delta = Delta::default();
        for (rank, old) in before {
            let new = self.claims.balanced(&rank);
            match (old, new) {
                (Some(old), Some(new)) if old == *new => {}
                (old, new) => {
                    if let Some(old) = old
                        && new.is_none_or(|n| n.cluster_ip() != old.cluster_ip())
                    {
                        delta.removed.push(old.cluster_ip());
                    }
                    delta.changed.extend(new.cloned());
                }
            }
        }
        delta.changed.sort_by(|a, b| a.name.cmp(&b.name));
        delta.removed.sort();
        delta
    }

    /// Every spec balanced, by name.
    pub fn specs(&self) -> Vec<ServiceSpec> {
        let mut specs: Vec<ServiceSpec> = self.claims.all_balanced().cloned().collect();
        specs.sort_by(|a, b| a.name.cmp(&b.name));
        specs
    }

    /// How many specs are balanced.
    pub fn spec_count(&self) -> usize {
        // Every spec is judged by the end of a finish.
        self.claims.claimants.len() - self.claims.clashing.len()
    }

    /// Everything left out, and why.
    pub fn skipped(&self) -> BTreeSet<Skipped> {
        self.notes
            .values()
            .flat_map(|n| n.skipped.iter().cloned())
            .chain(self.claims.clashes())
            .collect()
    }

    /// The health checks this node answers, by port.
    pub fn health_checks(&self) -> Vec<HealthCheck> {
        let mut checks: Vec<HealthCheck> = self
            .notes
            .values()
            .filter_map(|n| n.health_check.clone())
            .collect();
        checks.sort();
        checks
    }

    /// The whole translation, as [`translate`] gives it.
    pub fn translation(&self) -> Translation {
        Translation {
            specs: self.specs(),
            skipped: self.skipped().into_iter().collect(),
            health_checks: self.health_checks(),
        }
    }
}

fn key_of(meta: &ObjectMeta) -> ObjectKey {
    Arc::new((
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    ))
}

/// The keys among `known` of objects that `listed` no longer has.
fn unlisted<'a, K: kube::Resource>(
    known: impl Iterator<Item = &'a ObjectKey>,
    listed: &[Arc<K>],
) -> Vec<ObjectKey> {
    let listed: HashSet<ObjectKey> = listed.iter().map(|o| key_of(o.meta())).collect();
    known.filter(|k| !listed.contains(*k)).cloned().collect()
}

/// What a spec needs to itself: a frontend, or a NodePort (on every node
/// address, and reserved even on a node without one), once per family
/// (true: IPv6's): a dual-stack Service's two specs share theirs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum ClaimKey {
    Frontend(Frontend),
    NodePort(u16, Protocol, bool),
}

/// The order claims are settled in: older Services first, then by name,
/// then a Service's ports in its order.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Rank {
    created: Option<Time>,
    service: ObjectKey,
    port: usize,
}

/// A spec that wants its claim keys, and whether it got them.
#[derive(Debug)]
struct Claimant {
    spec: ServiceSpec,
    /// In the order they are judged: its ClusterIP, external IPs and
    /// NodePort frontends, then its NodePort.
    keys: Vec<ClaimKey>,
    judgement: Judgement,
}

/// Whether a spec got its claim keys.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Judgement {
    /// Offered since the last settling.
    Pending,
    Balanced,
    /// Left out, and why.
    Clash(String),
}

impl Claimant {
    fn new(spec: ServiceSpec, node_addrs: &[IpAddr]) -> Claimant {
        let keys = std::iter::once(spec.cluster_ip())
            .chain(spec.external_frontends())
            .chain(spec.node_port_frontends(node_addrs))
            .map(ClaimKey::Frontend)
            .chain(
                spec.node_port
                    .map(|p| ClaimKey::NodePort(p, spec.protocol, spec.vip.is_ipv6())),
            )
            .collect();
        Claimant {
            spec,
            keys,
            judgement: Judgement::Pending,
        }
    }

    fn balanced(&self) -> Option<&ServiceSpec> {
        (self.judgement == Judgement::Balanced).then_some(&self.spec)
    }
}

/// Every spec of every Service with the keys it wants, and which got them:
/// in rank order, a spec gets all its keys or none, and none that a spec
/// before it got.
#[derive(Default)]
struct Claims {
    claimants: BTreeMap<Arc<Rank>, Claimant>,
    by_service: HashMap<ObjectKey, Vec<Arc<Rank>>>,
    /// Who wants each key.
    /// Those judged [`Judgement::Clash`].
    clashing: BTreeSet<Arc<Rank>>,
    /// Who wants each key, in rank order (most keys: one spec).
    wanted: HashMap<ClaimKey, Vec<Arc<Rank>>>,
}

impl Claims {
    /// Takes Service `service`'s specs out; returns them.
    fn withdraw(&mut self, service: &ObjectKey) -> Vec<(Arc<Rank>, Claimant)> {
        let mut out = Vec::new();
        for rank in self.by_service.remove(service).unwrap_or_default() {
            let claimant = self.claimants.remove(&rank).expect("listed by service");
            self.clashing.remove(&rank);
            for key in &claimant.keys {
                if let Some(wanting) = self.wanted.get_mut(key) {
                    if let Ok(at) = wanting.binary_search(&rank) {
                        wanting.remove(at);
                    }
                    if wanting.is_empty() {
                        self.wanted.remove(key);
                    }
                }
            }
            out.push((rank, claimant));
        }
        out
    }

    /// Adds a spec; it is judged by the next [`Claims::settle`] that
    /// touches one of its keys.
    fn offer(&mut self, rank: Arc<Rank>, claimant: Claimant) {
        for key in &claimant.keys {
            let wanting = self.wanted.entry(*key).or_default();
            if let Err(at) = wanting.binary_search(&rank) {
                wanting.insert(at, rank.clone());
            }
        }
        self.by_service
            .entry(rank.service.clone())
            .or_default()
            .push(rank.clone());
        self.claimants.insert(rank, claimant);
    }

    /// Judges again every spec that shares a key, directly or through
    /// others, with `touched`: outside that group nothing can change.
    /// Returns each spec judged, with its balanced form before.
    fn settle(&mut self, touched: &[ClaimKey]) -> Vec<(Arc<Rank>, Option<ServiceSpec>)> {
        let mut keys: HashSet<ClaimKey> = HashSet::new();
        let mut group: BTreeSet<Arc<Rank>> = BTreeSet::new();
        let mut queue: Vec<ClaimKey> = touched.to_vec();
        while let Some(key) = queue.pop() {
            if !keys.insert(key) {
                continue;
            }
            for rank in self.wanted.get(&key).into_iter().flatten() {
                if group.insert(rank.clone()) {
                    queue.extend(self.claimants[rank].keys.iter().copied());
                }
            }
        }
        let mut taken: HashMap<ClaimKey, &str> = HashMap::new();
        let mut outcomes = Vec::with_capacity(group.len());
        for rank in &group {
            let claimant = &self.claimants[rank];
            let mut mine = HashSet::new();
            let mut outcome = Judgement::Balanced;
            for key in &claimant.keys {
                if let Some(other) = taken.get(key) {
                    outcome = Judgement::Clash(format!("{key} is already {other}'s"));
                    break;
                }
                if !mine.insert(*key) {
                    outcome = Judgement::Clash(format!("{key} is listed twice"));
                    break;
                }
            }
            if outcome == Judgement::Balanced {
                for key in &claimant.keys {
                    taken.insert(*key, &claimant.spec.name);
                }
            }
            outcomes.push(outcome);
        }
        let mut settled = Vec::with_capacity(group.len());
        for (rank, outcome) in group.into_iter().zip(outcomes) {
            let claimant = self.claimants.get_mut(&rank).expect("in the group");
            let before = claimant.balanced().cloned();
            if matches!(outcome, Judgement::Clash(_)) {
                self.clashing.insert(rank.clone());
            } else {
                self.clashing.remove(&rank);
            }
            claimant.judgement = outcome;
            settled.push((rank, before));
        }
        settled
    }

    fn balanced(&self, rank: &Rank) -> Option<&ServiceSpec> {
        self.claimants.get(rank)?.balanced()
    }

    fn all_balanced(&self) -> impl Iterator<Item = &ServiceSpec> {
        self.claimants.values().filter_map(Claimant::balanced)
    }

    fn clashes(&self) -> impl Iterator<Item = Skipped> + '_ {
        self.clashing.iter().filter_map(|rank| {
            let claimant = &self.claimants[rank];
            let Judgement::Clash(reason) = &claimant.judgement else {
                return None;
            };
            Some(Skipped {
                service: claimant.spec.name.clone(),
                reason: reason.clone(),
            })
        })
    }
}

impl std::fmt::Display for ClaimKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClaimKey::Frontend(frontend) => frontend.fmt(f),
            ClaimKey::NodePort(port, protocol, _) => write!(f, "node port {port}/{protocol}"),
        }
    }
}

/// One Service's specs (each valid on its own), what of it is left out,
/// and its health check.
fn translate_service(
    service: &Service,
    slices: &[&EndpointSlice],
    node: &str,
) -> ServiceTranslation {
    let namespace = service.metadata.namespace.clone().unwrap_or_default();
    let name = service.metadata.name.clone().unwrap_or_default();
    let whole = format!("{namespace}/{name}");
    let mut skipped = Vec::new();
    let mut skip = |service: String, reason: &str| {
        skipped.push(Skipped {
            service,
            reason: reason.to_string(),
        });
    };
    let left_out = |service: String, reason: &str| ServiceTranslation {
        specs: Vec::new(),
        notes: ServiceNotes {
            skipped: vec![Skipped {
                service,
                reason: reason.to_string(),
            }],
            health_check: None,
        },
    };
    if service
        .metadata
        .labels
        .as_ref()
        .is_some_and(|l| l.contains_key(SERVICE_PROXY_NAME_LABEL))
    {
        return left_out(whole, "labelled for another proxy (service-proxy-name)");
    }
    let Some(spec) = &service.spec else {
        return left_out(whole, "no spec");
    };
    let kind = spec.type_.as_deref().unwrap_or("ClusterIP");
    if kind == "ExternalName" {
        return left_out(whole, "type ExternalName has nothing to balance");
    }
    let cluster_ips: Vec<&str> = spec
        .cluster_ips
        .iter()
        .flatten()
        .map(String::as_str)
        .chain(spec.cluster_ip.as_deref())
        .collect();
    if cluster_ips.contains(&"None") {
        return left_out(whole, "headless: clients reach the pods directly");
    }
    // A dual-stack Service has a ClusterIP of each family: a service of
    // the model each, the first (its primary family's) first.
    let mut vips: Vec<IpAddr> = Vec::new();
    for ip in cluster_ips
        .iter()
        .filter_map(|ip| ip.parse::<IpAddr>().ok())
    {
        if !vips.iter().any(|v| v.is_ipv6() == ip.is_ipv6()) {
            vips.push(ip);
        }
    }
    if vips.is_empty() {
        return left_out(whole, "no ClusterIP");
    }
    let node_ports_open = kind == "NodePort" || kind == "LoadBalancer";
    let mut external_ips: Vec<IpAddr> = spec
        .external_ips
        .iter()
        .flatten()
        .filter_map(|ip| ip.parse().ok())
        .collect();
    if kind == "LoadBalancer" {
        let ingress = service
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref());
        // ipMode Proxy: the load balancer proxies to the NodePorts itself and
        // the IP must not be answered on the node (as kube-proxy does).
        external_ips.extend(
            ingress
                .into_iter()
                .flatten()
                .filter(|i| i.ip_mode.as_deref() != Some("Proxy"))
                .filter_map(|i| i.ip.as_deref()?.parse::<IpAddr>().ok()),
        );
    }
    let external_ips: BTreeSet<IpAddr> = external_ips.into_iter().collect();
    let affinity_timeout = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
        spec.session_affinity_config
            .as_ref()
            .and_then(|c| c.client_ip.as_ref())
            .and_then(|c| c.timeout_seconds)
            .and_then(|t| u32::try_from(t).ok())
            .unwrap_or(DEFAULT_AFFINITY_TIMEOUT)
            .clamp(1, MAX_AFFINITY_TIMEOUT)
    });
    let policy = |p: &Option<String>| match p.as_deref() {
        Some("Local") => TrafficPolicy::Local,
        _ => TrafficPolicy::Cluster,
    };
    let external_policy = policy(&spec.external_traffic_policy);
    let internal_policy = policy(&spec.internal_traffic_policy);

    // Counted for the health check in the primary family alone: a
    // dual-stack pod is one endpoint.
    let mut local_endpoints: BTreeSet<IpAddr> = BTreeSet::new();
    let mut translated = Vec::new();
    for (vip, port) in vips
        .iter()
        .flat_map(|vip| spec.ports.iter().flatten().map(move |port| (*vip, port)))
    {
        let family = if vip.is_ipv6() { "IPv6" } else { "IPv4" };
        let slices: Vec<&EndpointSlice> = slices
            .iter()
            .copied()
            .filter(|s| s.address_type == family)
            .collect();
        let port_name = port.name.as_deref().filter(|n| !n.is_empty());
        let port_label = match port_name {
            Some(p) => format!("{whole}:{p}"),
            None => whole.clone(),
        };
        // The second family's services say which they are.
        let label = if vip == vips[0] {
            port_label
        } else {
            format!("{port_label} ({family})")
        };
        let protocol_name = port.protocol.as_deref().unwrap_or("TCP");
        let protocol = match protocol_name {
            "TCP" => Protocol::TCP,
            "UDP" => Protocol::UDP,
            other => {
                skip(label, &format!("protocol {other} is not balanced"));
                continue;
            }
        };
        let Ok(service_port) = u16::try_from(port.port) else {
            skip(label, &format!("port {} is not a port", port.port));
            continue;
        };
        let chosen = serving(&candidates(&slices, port, protocol_name, node));
        if chosen.len() > MAX_BACKENDS {
            skip(
                label,
                &format!("{} endpoints, more than {MAX_BACKENDS}", chosen.len()),
            );
            continue;
        }
        if vip == vips[0] {
            local_endpoints.extend(
                chosen
                    .iter()
                    .filter(|(_, local)| *local)
                    .map(|(b, _)| b.ip()),
            );
        }
        let backends: Vec<SocketAddr> = chosen.into_iter().map(|(b, _)| b).collect();
        let external_ips: Vec<IpAddr> = external_ips
            .iter()
            .filter(|a| a.is_ipv6() == vip.is_ipv6())
            .copied()
            .collect();
        let node_port = port
            .node_port
            .filter(|_| node_ports_open)
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p != 0);
        let has_external = node_port.is_some() || !external_ips.is_empty();
        let model = ServiceSpec {
            backends,
            affinity_timeout,
            node_port,
            external_ips,
            // Local without an external frontend means nothing (the API
            // refuses it on a ClusterIP Service; the model too).
            external_traffic_policy: if has_external {
                external_policy
            } else {
                TrafficPolicy::Cluster
            },
            internal_traffic_policy: internal_policy,
            ..ServiceSpec::new(spec_name(&label), vip, service_port, protocol)
        };
        if let Err(e) = model.check() {
            skip(label, &e.to_string());
            continue;
        }
        translated.push(model);
    }
    let mut health_check = None;
    if external_policy == TrafficPolicy::Local
        && let Some(port) = spec
            .health_check_node_port
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p != 0)
    {
        health_check = Some(HealthCheck {
            port,
            namespace,
            name,
            local_endpoints: local_endpoints.len(),
        });
    }
    ServiceTranslation {
        specs: translated,
        notes: ServiceNotes {
            skipped,
            health_check,
        },
    }
}

/// The endpoints of `slices` for service port `port`: the slices' port of
/// the same name and protocol gives each slice's target port (a named
/// `targetPort` may resolve differently per pod).
fn candidates(
    slices: &[&EndpointSlice],
    port: &ServicePort,
    protocol: &str,
    node: &str,
) -> Vec<(Candidate, u16)> {
    let wanted_name = port.name.as_deref().unwrap_or_default();
    let mut out = Vec::new();
    for slice in slices {
        let Some(target) = slice.ports.iter().flatten().find_map(|p| {
            let same_name = p.name.as_deref().unwrap_or_default() == wanted_name;
            let same_protocol = p.protocol.as_deref().unwrap_or("TCP") == protocol;
            (same_name && same_protocol)
                .then_some(p.port)
                .flatten()
                .and_then(|n| u16::try_from(n).ok())
                .filter(|n| *n != 0)
        }) else {
            continue;
        };
        for endpoint in &slice.endpoints {
            out.extend(
                judge(endpoint, node)
                    .into_iter()
                    .map(|candidate| (candidate, target)),
            );
        }
    }
    out
}

/// An endpoint's addresses with its conditions, as kube-proxy reads them:
/// unset `ready` and `serving` mean yes, unset `terminating` no.
fn judge(endpoint: &Endpoint, node: &str) -> Vec<Candidate> {
    let conditions = endpoint.conditions.as_ref();
    let ready = conditions.and_then(|c| c.ready).unwrap_or(true);
    let serving = conditions.and_then(|c| c.serving).unwrap_or(ready);
    let terminating = conditions.and_then(|c| c.terminating).unwrap_or(false);
    let local = endpoint.node_name.as_deref() == Some(node);
    endpoint
        .addresses
        .iter()
        .filter_map(|a| a.parse::<IpAddr>().ok())
        .map(|addr| Candidate {
            addr,
            ready,
            serving,
            terminating,
            local,
        })
        .collect()
}

/// The backends that serve: the ready endpoints, or when there is none,
/// the terminating ones still serving (so a rollout's last pod finishes
/// its connections' successors instead of refusing them). Sorted, each
/// once, with whether it runs on this node.
fn serving(candidates: &[(Candidate, u16)]) -> Vec<(SocketAddr, bool)> {
    let pick = |keep: &dyn Fn(&Candidate) -> bool| -> BTreeMap<SocketAddr, bool> {
        candidates
            .iter()
            .filter(|(c, _)| keep(c))
            .map(|(c, port)| (SocketAddr::new(c.addr, *port), c.local))
            .collect()
    };
    let mut chosen = pick(&|c| c.ready && !c.terminating);
    if chosen.is_empty() {
        chosen = pick(&|c| c.serving && c.terminating);
    }
    chosen.into_iter().collect()
}

/// A model name (at most [`MAX_NAME`] bytes): the label itself, or when
/// it is longer its start and a hash of the whole, so names stay unique.
fn spec_name(label: &str) -> String {
    if label.len() <= MAX_NAME {
        return label.to_string();
    }
    // FNV-1a: stable across runs and builds (the maps keep names).
    let hash = label.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let mut cut = MAX_NAME - 17;
    while !label.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}~{hash:016x}", &label[..cut])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::net::Ipv4Addr;

    fn service(name: &str, spec: serde_json::Value) -> Arc<Service> {
        service_with(name, spec, json!({}), json!({}))
    }

    fn service_with(
        name: &str,
        spec: serde_json::Value,
        status: serde_json::Value,
        labels: serde_json::Value,
    ) -> Arc<Service> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"namespace": "ns", "name": name, "labels": labels,
                             "creationTimestamp": "2026-01-01T00:00:00Z"},
                "spec": spec,
                "status": status,
            }))
            .unwrap(),
        )
    }

    /// A slice of service `svc`: `ports` as (name, port, protocol),
    /// endpoints as (address, node, ready, serving, terminating).
    fn slice(
        svc: &str,
        family: &str,
        ports: &[(&str, i32, &str)],
        endpoints: &[(&str, &str, bool, bool, bool)],
    ) -> Arc<EndpointSlice> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"namespace": "ns", "name": format!("{svc}-{}", endpoints.len()),
                             "labels": {SERVICE_NAME_LABEL: svc}},
                "addressType": family,
                "ports": ports.iter().map(|(n, p, proto)| json!({"name": n, "port": p, "protocol": proto})).collect::<Vec<_>>(),
                "endpoints": endpoints.iter().map(|(a, node, ready, serving, terminating)| json!({
                    "addresses": [a], "nodeName": node,
                    "conditions": {"ready": ready, "serving": serving, "terminating": terminating},
                })).collect::<Vec<_>>(),
            }))
            .unwrap(),
        )
    }

    fn sock(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    const NODE: [IpAddr; 1] = [IpAddr::V4(Ipv4Addr::new(192, 168, 0, 10))];

    #[test]
    fn every_kind_of_frontend_of_a_load_balancer_service_is_translated() {
        let web = service_with(
            "web",
            json!({"type": "LoadBalancer", "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
                   "ports": [{"name": "http", "port": 80, "targetPort": "web", "nodePort": 30080},
                             {"name": "dns", "port": 53, "protocol": "UDP", "nodePort": 30053}],
                   "externalIPs": ["203.0.113.9"],
                   "sessionAffinity": "ClientIP",
                   "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}},
                   "externalTrafficPolicy": "Local", "healthCheckNodePort": 32000,
                   "internalTrafficPolicy": "Local"}),
            json!({"loadBalancer": {"ingress": [{"ip": "198.51.100.1"},
                                                 {"ip": "198.51.100.2", "ipMode": "Proxy"},
                                                 {"hostname": "lb.example"}]}}),
            json!({}),
        );
        let slices = [
            // The named target port resolves to 8080 in one slice, 8081 in
            // the other; one address is in both slices.
            slice(
                "web",
                "IPv4",
                &[("http", 8080, "TCP"), ("dns", 5353, "UDP")],
                &[
                    ("10.244.0.5", "n0", true, true, false),
                    ("10.244.1.5", "n1", true, true, false),
                    ("10.244.1.6", "n1", false, true, true),
                ],
            ),
            slice(
                "web",
                "IPv4",
                &[("http", 8081, "TCP")],
                &[
                    ("10.244.0.5", "n0", true, true, false),
                    ("10.244.2.7", "n2", true, true, false),
                ],
            ),
            slice(
                "web",
                "IPv6",
                &[("http", 8080, "TCP")],
                &[("fd00::5", "n0", true, true, false)],
            ),
        ];
        let t = translate(&[web], &slices, "n0", &NODE);
        assert_eq!(t.skipped, []);
        let [dns, http] = &t.specs[..] else {
            panic!("{:?}", t.specs)
        };
        assert_eq!(http.name, "ns/web:http");
        assert_eq!(http.vip, Ipv4Addr::new(10, 96, 0, 10));
        assert_eq!((http.port, http.protocol), (80, Protocol::TCP));
        assert_eq!(
            http.backends,
            [
                sock("10.244.0.5:8080"),
                sock("10.244.0.5:8081"),
                sock("10.244.1.5:8080"),
                sock("10.244.2.7:8081")
            ],
            "ready endpoints of every IPv4 slice at their slice's port; not the terminating one"
        );
        assert_eq!(http.node_port, Some(30080));
        assert_eq!(
            http.external_ips,
            [
                Ipv4Addr::new(198, 51, 100, 1),
                Ipv4Addr::new(203, 0, 113, 9)
            ],
            "externalIPs and ingress IPs, not those the load balancer proxies itself"
        );
        assert_eq!(http.affinity_timeout, Some(60));
        assert_eq!(http.external_traffic_policy, TrafficPolicy::Local);
        assert_eq!(http.internal_traffic_policy, TrafficPolicy::Local);
        assert_eq!(
            (dns.name.as_str(), dns.port, dns.protocol),
            ("ns/web:dns", 53, Protocol::UDP)
        );
        assert_eq!(
            dns.backends,
            [sock("10.244.0.5:5353"), sock("10.244.1.5:5353")]
        );
        assert_eq!(
            t.health_checks,
            [HealthCheck {
                port: 32000,
                namespace: "ns".into(),
                name: "web".into(),
                local_endpoints: 1
            }]
        );
        margay_model::service::validate(&t.specs).unwrap();
    }

    #[test]
    fn terminating_endpoints_serve_only_when_none_is_ready() {
        let svc = || {
            service(
                "api",
                json!({"clusterIP": "10.96.0.11", "ports": [{"port": 443}]}),
            )
        };
        let draining = slice(
            "api",
            "IPv4",
            &[("", 8443, "TCP")],
            &[
                ("10.244.0.8", "n0", false, true, true),
                ("10.244.0.9", "n0", false, false, true),
            ],
        );
        let t = translate(&[svc()], std::slice::from_ref(&draining), "n0", &NODE);
        assert_eq!(t.specs[0].name, "ns/api");
        assert_eq!(
            t.specs[0].backends,
            [sock("10.244.0.8:8443")],
            "serving, terminating: used"
        );
        let ready = slice(
            "api",
            "IPv4",
            &[("", 8443, "TCP")],
            &[("10.244.1.2", "n1", true, true, false)],
        );
        let t = translate(&[svc()], &[draining, ready], "n0", &NODE);
        assert_eq!(
            t.specs[0].backends,
            [sock("10.244.1.2:8443")],
            "a ready one wins"
        );
        let t = translate(&[svc()], &[], "n0", &NODE);
        assert_eq!(t.specs[0].backends, [], "no slice: a frontend that refuses");
    }

    /// A dual-stack Service is a service of each family, the second named
    /// as such: each with the endpoints of its family's slices and its
    /// family's external IPs; both keep the one NodePort, whose frontends
    /// are on the node's (IPv4) addresses.
    #[test]
    fn a_dual_stack_service_is_a_service_of_each_family() {
        let web = service_with(
            "web",
            json!({"type": "LoadBalancer", "ipFamilies": ["IPv6", "IPv4"],
                   "clusterIP": "fd00:96::10", "clusterIPs": ["fd00:96::10", "10.96.0.10"],
                   "externalIPs": ["203.0.113.7", "2001:db8::7"],
                   "ports": [{"name": "http", "port": 80, "nodePort": 30080}]}),
            json!({}),
            json!({}),
        );
        let slices = [
            slice(
                "web",
                "IPv4",
                &[("http", 8080, "TCP")],
                &[("10.244.0.5", "n0", true, true, false)],
            ),
            slice(
                "web",
                "IPv6",
                &[("http", 8080, "TCP")],
                &[
                    ("fd00:244::5", "n0", true, true, false),
                    ("fd00:244::6", "n1", true, true, false),
                ],
            ),
        ];
        // The node's NodePorts answer on its address of each family.
        let node_addrs = [NODE[0], "2001:db8:1::10".parse().unwrap()];
        let t = translate(&[web], &slices, "n0", &node_addrs);
        let names: Vec<&str> = t.specs.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            ["ns/web:http", "ns/web:http (IPv4)"],
            "the primary family first"
        );
        let (v6, v4) = (&t.specs[0], &t.specs[1]);
        assert_eq!(v6.vip, "fd00:96::10".parse::<IpAddr>().unwrap());
        assert_eq!(
            v6.backends,
            [sock("[fd00:244::5]:8080"), sock("[fd00:244::6]:8080")]
        );
        assert_eq!(v6.external_ips, ["2001:db8::7".parse::<IpAddr>().unwrap()]);
        assert_eq!(v4.vip, "10.96.0.10".parse::<IpAddr>().unwrap());
        assert_eq!(v4.backends, [sock("10.244.0.5:8080")]);
        assert_eq!(v4.external_ips, ["203.0.113.7".parse::<IpAddr>().unwrap()]);
        assert_eq!((v4.node_port, v6.node_port), (Some(30080), Some(30080)));
        assert!(t.skipped.is_empty(), "{:?}", t.skipped);
        margay_model::service::validate(&t.specs).expect("a valid set");
    }

    #[test]
    fn what_cannot_be_balanced_is_skipped_with_a_reason() {
        let services = [
            service_with(
                "theirs",
                json!({"clusterIP": "10.96.0.20", "ports": [{"port": 80}]}),
                json!({}),
                json!({SERVICE_PROXY_NAME_LABEL: "other"}),
            ),
            service(
                "headless",
                json!({"clusterIP": "None", "ports": [{"port": 80}]}),
            ),
            service(
                "alias",
                json!({"type": "ExternalName", "externalName": "example.com"}),
            ),
            service("noip", json!({"clusterIP": "", "ports": [{"port": 80}]})),
            service(
                "mixed",
                json!({"clusterIP": "10.96.0.21", "ports": [{"name": "a", "port": 80},
                                                             {"name": "s", "port": 90, "protocol": "SCTP"}]}),
            ),
        ];
        let t = translate(&services, &[], "n0", &NODE);
        assert_eq!(
            t.specs.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
            ["ns/mixed:a"]
        );
        let skipped: Vec<(&str, &str)> = t
            .skipped
            .iter()
            .map(|s| (s.service.as_str(), s.reason.as_str()))
            .collect();
        assert_eq!(
            skipped,
            [
                ("ns/alias", "type ExternalName has nothing to balance"),
                ("ns/headless", "headless: clients reach the pods directly"),
                ("ns/mixed:s", "protocol SCTP is not balanced"),
                ("ns/noip", "no ClusterIP"),
                (
                    "ns/theirs",
                    "labelled for another proxy (service-proxy-name)"
                ),
            ]
        );
    }

    #[test]
    fn of_two_services_claiming_one_external_ip_the_older_keeps_it() {
        let mut newer: Service = (*service(
            "newer",
            json!({"clusterIP": "10.96.0.31", "ports": [{"port": 80}], "externalIPs": ["203.0.113.1"]}),
        ))
        .clone();
        newer.metadata.creation_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                "2026-02-01T00:00:00Z".parse().unwrap(),
            ));
        let older = service(
            "older",
            json!({"clusterIP": "10.96.0.30", "ports": [{"port": 80}], "externalIPs": ["203.0.113.1"]}),
        );
        // A NodePort on the node's own address as an external IP: the same frontend.
        let on_node = service(
            "on-node",
            json!({"type": "NodePort", "clusterIP": "10.96.0.32", "ports": [{"port": 30099, "nodePort": 30099}],
                   "externalIPs": ["192.168.0.10"]}),
        );
        let t = translate(&[Arc::new(newer), older, on_node], &[], "n0", &NODE);
        assert_eq!(
            t.specs.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
            ["ns/older"]
        );
        assert_eq!(
            t.skipped,
            [
                Skipped {
                    service: "ns/newer".into(),
                    reason: "203.0.113.1:80/tcp is already ns/older's".into()
                },
                Skipped {
                    service: "ns/on-node".into(),
                    reason: "192.168.0.10:30099/tcp is listed twice".into()
                },
            ]
        );
        margay_model::service::validate(&t.specs).unwrap();
    }

    #[test]
    fn long_names_are_cut_with_a_hash_that_keeps_them_apart() {
        let long = "n".repeat(63);
        let a = spec_name(&format!("{long}/{long}:http"));
        let b = spec_name(&format!("{long}/{long}:https"));
        assert!(a.len() <= MAX_NAME && b.len() <= MAX_NAME, "{a} {b}");
        assert_ne!(a, b);
        assert_eq!(spec_name("ns/web:http"), "ns/web:http");
    }

    /// A change translated on its own, and the deltas applied one after
    /// another, give what translating everything again gives: services
    /// coming and going, slices moving between services, external IPs and
    /// NodePorts contested among services of different ages, the node's
    /// addresses changing.
    #[test]
    fn changes_translated_one_by_one_equal_translating_everything() {
        // xorshift: the same sequence on every run.
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let make_service = |i: u64, variant: u64| {
            let mut svc = (*service(
                &format!("s{i}"),
                json!({"type": if variant.is_multiple_of(3) { "NodePort" } else { "ClusterIP" },
                       "clusterIP": format!("10.96.0.{}", i + 1),
                       "ports": [{"name": "a", "port": 80, "nodePort": 30000 + variant % 4},
                                 {"name": "b", "port": 81, "protocol": "UDP"}],
                       "externalIPs": [format!("203.0.113.{}", variant % 5)]}),
            ))
            .clone();
            svc.metadata.creation_timestamp = Some(Time(
                format!("2026-01-01T00:00:{:02}Z", i % 7).parse().unwrap(),
            ));
            Arc::new(svc)
        };
        let make_slice = |name: u64, owner: u64, variant: u64| {
            let mut sl = (*slice(
                &format!("s{owner}"),
                "IPv4",
                &[("a", 8080, "TCP"), ("b", 5353, "UDP")],
                &[
                    (
                        &format!("10.1.{owner}.{}", variant % 3 + 1),
                        "n0",
                        true,
                        true,
                        false,
                    ),
                    (
                        &format!("10.1.{owner}.9"),
                        "n1",
                        variant.is_multiple_of(2),
                        true,
                        variant.is_multiple_of(2),
                    ),
                ],
            ))
            .clone();
            sl.metadata.name = Some(format!("slice-{name}"));
            Arc::new(sl)
        };
        let mut services: BTreeMap<u64, Arc<Service>> = BTreeMap::new();
        let mut slices: BTreeMap<u64, Arc<EndpointSlice>> = BTreeMap::new();
        let mut node_addrs = NODE.to_vec();
        let mut translator = Translator::new("n0");
        translator.set_node_addrs(&node_addrs);
        let mut applied: BTreeMap<Frontend, ServiceSpec> = BTreeMap::new();
        for step in 0..600 {
            match next(10) {
                0..=3 => {
                    let i = next(12);
                    let s = make_service(i, next(1000));
                    services.insert(i, s.clone());
                    translator.set_service(Arc::new(("ns".into(), format!("s{i}"))), Some(s));
                }
                4 => {
                    let i = next(12);
                    services.remove(&i);
                    translator.set_service(Arc::new(("ns".into(), format!("s{i}"))), None);
                }
                5..=7 => {
                    let k = next(16);
                    let sl = make_slice(k, next(12), next(1000));
                    slices.insert(k, sl.clone());
                    translator.set_slice(Arc::new(("ns".into(), format!("slice-{k}"))), Some(sl));
                }
                8 => {
                    let k = next(16);
                    slices.remove(&k);
                    translator.set_slice(Arc::new(("ns".into(), format!("slice-{k}"))), None);
                }
                _ => {
                    node_addrs = if node_addrs.len() == 1 {
                        vec![NODE[0], Ipv4Addr::new(203, 0, 113, next(5) as u8).into()]
                    } else {
                        NODE.to_vec()
                    };
                    translator.set_node_addrs(&node_addrs);
                }
            }
            // Several changes at once, as a coalesced sync takes them.
            if next(3) != 0 {
                continue;
            }
            let delta = translator.finish();
            for gone in &delta.removed {
                assert!(
                    applied.remove(gone).is_some(),
                    "step {step}: {gone} was not applied"
                );
            }
            for spec in delta.changed {
                applied.insert(spec.cluster_ip(), spec);
            }
            let services: Vec<_> = services.values().cloned().collect();
            let slices: Vec<_> = slices.values().cloned().collect();
            let whole = translate(&services, &slices, "n0", &node_addrs);
            assert_eq!(translator.translation(), whole, "step {step}");
            let mut by_name: Vec<ServiceSpec> = applied.values().cloned().collect();
            by_name.sort_by(|a, b| a.name.cmp(&b.name));
            assert_eq!(by_name, whole.specs, "step {step}: the deltas applied");
            margay_model::service::validate(&whole.specs).unwrap();
        }
    }
}
