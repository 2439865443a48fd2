//! Reading the dataplane's state for operators: counters, conntrack and
//! the flow-event ring, as plain records.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::Duration;

use serde::Serialize;

use crate::abi::{
    CT_F_ORIGIN_IS_A, CT_STATES, Counters, CtEntry, CtKey, CtKey6, DROP_POLICY_EGRESS,
    DROP_POLICY_INGRESS, DROP_REASONS, FLOW_EVENT_IPV6, FlowEvent, FlowEvent6, NAT_FWD, NatEntry,
    NatEntry6, NatKey, NatKey6, SOURCE_UNNAMED,
};
use crate::error::DataplaneError;
use crate::maps;

/// An endpoint's counters, summed over CPUs; ifindex 0: the node's slot
/// (slot 0), which counts packets on interfaces with no endpoint: the data
/// interfaces' NodePorts, the tunnel, unregistered veths. An endpoint not
/// registered has none (all zero).
///
/// ```no_run
/// # use margay_ebpf::{abi::DROP_REASONS, inspect};
/// let c = inspect::counters("/sys/fs/bpf/margay".as_ref(), 42)?;
/// let drops: Vec<(&str, u64)> = DROP_REASONS.into_iter().zip(c.drops).filter(|&(_, n)| n > 0).collect();
/// # Ok::<(), margay_ebpf::DataplaneError>(())
/// ```
///
/// # Errors
///
/// [`DataplaneError::Map`] naming `endpoints` or `counters` when it cannot
/// be opened.
pub fn counters(root: &Path, ifindex: u32) -> Result<Counters, DataplaneError> {
    let slot = match ifindex {
        0 => Some(0),
        _ => maps::endpoints(root)?
            .get(&ifindex, 0)
            .ok()
            .map(|ep| ep.slot)
            .filter(|&slot| slot != 0),
    };
    let map = maps::counters(root)?;
    let mut total = Counters::default();
    if let Some(Ok(per_cpu)) = slot.map(|slot| map.get(&slot, 0)) {
        add(&mut total, per_cpu.iter());
    }
    Ok(total)
}

fn add<'a>(total: &mut Counters, counters: impl Iterator<Item = &'a Counters>) {
    for c in counters {
        for d in 0..2 {
            total.packets[d] += c.packets[d];
            total.bytes[d] += c.bytes[d];
        }
        for (t, v) in total.drops.iter_mut().zip(c.drops) {
            *t += v;
        }
    }
}

/// The whole node's dataplane in numbers, for its metrics.
#[derive(Debug, Clone, Default)]
pub struct NodeSummary {
    /// Every slot's counters summed: all endpoints' and the node's own.
    pub counters: Counters,
    /// Endpoints registered.
    pub endpoints: usize,
    /// How full the flow tables and the policy peer sets are.
    pub maps: Vec<MapFill>,
}

/// How full one map is: a flow table near its capacity evicts running
/// flows, a full set trie refuses members.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapFill {
    /// The map, as the object names it.
    pub name: &'static str,
    /// Entries it holds now.
    pub entries: u32,
    /// Entries it can hold.
    pub capacity: u32,
}

/// Reads [`NodeSummary`]: one pass over the counters, the endpoints and
/// the keys of the conntrack, NAT and peer-set maps.
///
/// # Errors
///
/// [`DataplaneError::Map`] naming `counters`, `endpoints`, `conntrack`,
/// `conntrack6`, `nat`, `nat6`, `ip_sets` or `ip_sets6` when it cannot be
/// opened or its layout read.
pub fn node_summary(root: &Path) -> Result<NodeSummary, DataplaneError> {
    let mut counters = Counters::default();
    for per_cpu in maps::counters(root)?.iter().filter_map(Result::ok) {
        add(&mut counters, per_cpu.iter());
    }
    Ok(NodeSummary {
        counters,
        endpoints: maps::endpoints(root)?.keys().count(),
        maps: vec![
            fill(root, &maps::conntrack(root)?, |m| m.keys().count())?,
            fill(root, &maps::conntrack6(root)?, |m| m.keys().count())?,
            fill(root, &maps::nat(root)?, |m| m.keys().count())?,
            fill(root, &maps::nat6(root)?, |m| m.keys().count())?,
            fill(root, &maps::ip_sets(root)?, |m| m.keys().count())?,
            fill(root, &maps::ip_sets6(root)?, |m| m.keys().count())?,
        ],
    })
}

/// How full `map` is, holding the `entries` it counts.
fn fill<M>(
    root: &Path,
    map: &maps::Named<M>,
    entries: impl FnOnce(&M) -> usize,
) -> Result<MapFill, DataplaneError> {
    let layout = maps::Layout::of_pin(&crate::paths::map_path(root, map.name()))?;
    Ok(MapFill {
        name: map.name(),
        entries: entries(map) as u32,
        capacity: layout.max_entries,
    })
}

/// How many new flows the rules of each source (a NetworkPolicy's
/// `namespace/name`) decided, over the node's CPUs, sorted by source.
///
/// # Errors
///
/// [`DataplaneError::Map`] naming `policy_sources` or `policy_hits` when
/// it cannot be opened or read.
pub fn policy_flows(root: &Path) -> Result<Vec<(String, u64)>, DataplaneError> {
    let hits = maps::policy_hits(root)?;
    let names = maps::policy_sources(root)?;
    let mut out = Vec::new();
    for kv in names.iter() {
        let (id, name) = kv.map_err(names.error())?;
        let per_cpu = hits.get(&id, 0).map_err(hits.error())?;
        out.push((name.text(), per_cpu.iter().sum()));
    }
    out.sort();
    Ok(out)
}

/// Monotonic nanoseconds, the clock flow timestamps follow (to a tick).
pub fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

/// A conntrack entry as `margayctl conntrack` shows it: the flow from its
/// initiator, its state and ages, and where its packets go.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct CtRecord {
    /// The endpoint's host veth.
    pub ifindex: u32,
    /// IP protocol number.
    pub protocol: u8,
    /// The initiator, `address:port`.
    pub src: String,
    /// The other side, `address:port`.
    pub dst: String,
    /// The state's name ([`CT_STATES`]); `?` for one this build does not
    /// know.
    pub state: &'static str,
    /// Seconds since the flow began.
    pub age_s: u64,
    /// To the second: entries are refreshed at most once a second.
    pub idle_s: u64,
    /// The endpoint's packets of the flow are redirected to a local pod.
    pub local_delivery: bool,
    /// How the endpoint's packets of the flow leave it: `local:IFINDEX`
    /// (redirected to the local pod behind that host veth; `local` until
    /// the flow's second packet names it), `tunnel:NODE`, `routed` (by the
    /// programs, to a peer's pod on the LAN) or `stack`.
    pub path: String,
    /// The service (`address:port`) the flow's replies are shown as,
    /// as the entry remembers it between lookups of the translation.
    pub replies_as: Option<String>,
}

/// `address:port`, IPv6 in brackets.
fn endpoint_str(addr: impl Into<IpAddr>, port: [u8; 2]) -> String {
    SocketAddr::new(addr.into(), u16::from_be_bytes(port)).to_string()
}

/// A conntrack key of either family, as a record needs it.
pub trait FlowKey {
    /// The endpoint's host veth the entry belongs to.
    fn ifindex(&self) -> u32;
    /// IP protocol number.
    fn proto(&self) -> u8;
    /// Side a and side b, as `address:port`.
    fn sides(&self) -> (String, String);
    /// The service entry `e` of this flow turns its replies into, as
    /// `address:port`, when it knows one.
    fn turn(&self, e: &CtEntry) -> Option<String>;
}

impl FlowKey for CtKey {
    fn ifindex(&self) -> u32 {
        self.ifindex
    }
    fn proto(&self) -> u8 {
        self.proto
    }
    fn sides(&self) -> (String, String) {
        (
            endpoint_str(Ipv4Addr::from(self.addr_a), self.port_a),
            endpoint_str(Ipv4Addr::from(self.addr_b), self.port_b),
        )
    }
    fn turn(&self, e: &CtEntry) -> Option<String> {
        let [a, b, c, d, ..] = e.turn_addr;
        let addr = Ipv4Addr::from([a, b, c, d]);
        (!addr.is_unspecified()).then(|| endpoint_str(addr, e.turn_port))
    }
}

impl FlowKey for CtKey6 {
    fn ifindex(&self) -> u32 {
        self.ifindex
    }
    fn proto(&self) -> u8 {
        self.proto
    }
    fn sides(&self) -> (String, String) {
        (
            endpoint_str(Ipv6Addr::from(self.addr_a), self.port_a),
            endpoint_str(Ipv6Addr::from(self.addr_b), self.port_b),
        )
    }
    fn turn(&self, e: &CtEntry) -> Option<String> {
        let addr = Ipv6Addr::from(e.turn_addr);
        (!addr.is_unspecified()).then(|| endpoint_str(addr, e.turn_port))
    }
}

/// [`CtRecord::path`] of entry `e`.
fn ct_path(e: &CtEntry) -> String {
    use crate::abi::{CT_F_LOCAL_DELIVERY, CT_F_PEER_ROUTED, CT_F_TUNNEL};
    let peer = e.tunnel_peer_or_peer_ifindex;
    if e.flags & CT_F_LOCAL_DELIVERY != 0 {
        match u32::from_ne_bytes(peer) {
            0 => "local".to_string(),
            ifindex => format!("local:{ifindex}"),
        }
    } else if e.flags & CT_F_TUNNEL != 0 {
        format!("tunnel:{}", std::net::Ipv4Addr::from(peer))
    } else if e.flags & CT_F_PEER_ROUTED != 0 {
        "routed".to_string()
    } else {
        "stack".to_string()
    }
}

impl CtRecord {
    /// The record of entry `e` under key `k`, its ages as of `now_ns`
    /// ([`monotonic_ns`]).
    pub fn new(k: &impl FlowKey, e: &CtEntry, now_ns: u64) -> CtRecord {
        let (a, b) = k.sides();
        let (src, dst) = if e.flags & CT_F_ORIGIN_IS_A != 0 {
            (a, b)
        } else {
            (b, a)
        };
        CtRecord {
            ifindex: k.ifindex(),
            protocol: k.proto(),
            src,
            dst,
            state: CT_STATES.get(e.state as usize).copied().unwrap_or("?"),
            age_s: (now_ns / 1_000_000_000).saturating_sub(u64::from(e.created_s)),
            idle_s: now_ns.saturating_sub(e.last_seen_ns) / 1_000_000_000,
            local_delivery: e.flags & crate::abi::CT_F_LOCAL_DELIVERY != 0,
            path: ct_path(e),
            replies_as: k.turn(e),
        }
    }
}

/// Every IPv4 conntrack entry (of one endpoint, when given); entries that
/// cannot be read, as one evicted meanwhile, are left out.
///
/// # Errors
///
/// [`DataplaneError::Map`] naming `conntrack` when it cannot be opened.
pub fn conntrack(
    root: &Path,
    ifindex: Option<u32>,
) -> Result<Vec<(CtKey, CtEntry)>, DataplaneError> {
    Ok(entries(&maps::conntrack(root)?, ifindex))
}

/// Every IPv6 conntrack entry (of one endpoint, when given), as
/// [`conntrack`].
///
/// # Errors
///
/// [`DataplaneError::Map`] naming `conntrack6` when it cannot be opened.
pub fn conntrack6(
    root: &Path,
    ifindex: Option<u32>,
) -> Result<Vec<(CtKey6, CtEntry)>, DataplaneError> {
    Ok(entries(&maps::conntrack6(root)?, ifindex))
}

fn entries<K: aya::Pod + FlowKey>(
    map: &maps::Named<aya::maps::HashMap<aya::maps::MapData, K, CtEntry>>,
    ifindex: Option<u32>,
) -> Vec<(K, CtEntry)> {
    map.iter()
        .filter_map(Result::ok)
        .filter(|(k, _)| ifindex.is_none_or(|i| k.ifindex() == i))
        .collect()
}

/// Every conntrack entry of both families as records, IPv4's first.
///
/// # Errors
///
/// [`DataplaneError::Map`] naming `conntrack` or `conntrack6` when it
/// cannot be opened.
pub fn conntrack_records(
    root: &Path,
    ifindex: Option<u32>,
) -> Result<Vec<CtRecord>, DataplaneError> {
    let now = monotonic_ns();
    let v4 = conntrack(root, ifindex)?;
    let v6 = conntrack6(root, ifindex)?;
    Ok(v4
        .iter()
        .map(|(k, e)| CtRecord::new(k, e, now))
        .chain(v6.iter().map(|(k, e)| CtRecord::new(k, e, now)))
        .collect())
}

/// A service translation, as `margayctl nat dump` shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct NatRecord {
    /// `forward` (client -> frontend, rewritten to the backend) or
    /// `reverse` (backend -> client, rewritten to the frontend).
    pub direction: &'static str,
    /// IP protocol number.
    pub protocol: u8,
    /// The packet as it arrives.
    pub src: String,
    /// The packet's destination as it arrives, `address:port`.
    pub dst: String,
    /// What its destination (forward) or source (reverse) becomes.
    pub translated: String,
    /// Hairpin: what the source (forward) or destination (reverse) becomes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hairpin: Option<IpAddr>,
    /// The service's name, as the caller found it for the frontend's id.
    pub service: String,
    /// Forward entries only: reverse entries are not refreshed (LRU keeps
    /// them by use), so their timestamp says nothing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle_s: Option<u64>,
}

impl NatRecord {
    /// The record of `t`, of service `service` (by
    /// [`names`](crate::service::names)), its idle time as of `now_ns`
    /// ([`monotonic_ns`]).
    pub fn new(t: &Translation, service: String, now_ns: u64) -> NatRecord {
        NatRecord {
            direction: if t.forward { "forward" } else { "reverse" },
            protocol: t.proto,
            src: t.src.to_string(),
            dst: t.dst.to_string(),
            translated: t.translated.to_string(),
            hairpin: t.hairpin,
            service,
            idle_s: t
                .forward
                .then(|| now_ns.saturating_sub(t.last_seen_ns) / 1_000_000_000),
        }
    }
}

/// A service translation of either family (maps `nat` and `nat6`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Translation {
    /// Forward (client -> frontend) or reverse (backend -> client).
    pub forward: bool,
    /// IP protocol number.
    pub proto: u8,
    /// The packet as it arrives.
    pub src: SocketAddr,
    /// The packet's destination as it arrives.
    pub dst: SocketAddr,
    /// What its destination (forward) or source (reverse) becomes.
    pub translated: SocketAddr,
    /// Hairpin: what the source (forward) or destination (reverse) becomes.
    pub hairpin: Option<IpAddr>,
    /// The frontend's number, which [`names`](crate::service::names) maps
    /// to its service's name.
    pub svc_id: u32,
    /// Forward: when a packet last used it, on the flow clock; reverse:
    /// when it was written.
    pub last_seen_ns: u64,
}

impl Translation {
    /// From a key's and an entry's fields, addresses already of their
    /// family.
    fn of(
        kind: u8,
        proto: u8,
        [src, dst, translated]: [(IpAddr, [u8; 2]); 3],
        hairpin: Option<IpAddr>,
        svc_id: u32,
        last_seen_ns: u64,
    ) -> Translation {
        let at = |(addr, port): (IpAddr, [u8; 2])| SocketAddr::new(addr, u16::from_be_bytes(port));
        Translation {
            forward: kind == NAT_FWD,
            proto,
            src: at(src),
            dst: at(dst),
            translated: at(translated),
            hairpin,
            svc_id,
            last_seen_ns,
        }
    }
}

impl From<(NatKey, NatEntry)> for Translation {
    fn from((k, e): (NatKey, NatEntry)) -> Translation {
        let ip = |a: [u8; 4]| IpAddr::from(a);
        Translation::of(
            k.kind,
            k.proto,
            [
                (ip(k.saddr), k.sport),
                (ip(k.daddr), k.dport),
                (ip(e.addr), e.port),
            ],
            (e.peer != [0; 4]).then(|| ip(e.peer)),
            e.svc_id,
            e.last_seen_ns,
        )
    }
}

impl From<(NatKey6, NatEntry6)> for Translation {
    fn from((k, e): (NatKey6, NatEntry6)) -> Translation {
        let ip = |a: [u8; 16]| IpAddr::from(a);
        Translation::of(
            k.kind,
            k.proto,
            [
                (ip(k.saddr), k.sport),
                (ip(k.daddr), k.dport),
                (ip(e.addr), e.port),
            ],
            (e.peer != [0; 16]).then(|| ip(e.peer)),
            e.svc_id,
            e.last_seen_ns,
        )
    }
}

/// Every service translation, of both families; entries that cannot be
/// read, as one evicted meanwhile, are left out.
///
/// # Errors
///
/// [`DataplaneError::Map`] naming `nat` or `nat6` when it cannot be opened.
pub fn nat(root: &Path) -> Result<Vec<Translation>, DataplaneError> {
    let v4 = maps::nat(root)?;
    let v6 = maps::nat6(root)?;
    Ok(v4
        .iter()
        .filter_map(Result::ok)
        .map(Translation::from)
        .chain(v6.iter().filter_map(Result::ok).map(Translation::from))
        .collect())
}

/// A flow event as `margayctl` shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct FlowRecord {
    /// The interface the packet was seen on.
    pub ifindex: u32,
    /// `from-pod` or `to-pod`.
    pub direction: &'static str,
    /// The reason's name ([`DROP_REASONS`]): `allowed` for a traced
    /// verdict, else why it was dropped; `?` for a reason this build does
    /// not know.
    pub verdict: &'static str,
    /// IP protocol number.
    pub protocol: u8,
    /// The packet's source, `address:port`.
    pub src: String,
    /// The packet's destination, `address:port`.
    pub dst: String,
    /// A policy drop: who denied it, `no policy allows` when no rule did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub denied_by: Option<String>,
}

impl FlowRecord {
    fn new(
        ifindex: u32,
        direction: u8,
        reason: u8,
        protocol: u8,
        (src, dst): (String, String),
        source_id: u32,
        source_name: &dyn Fn(u32) -> Option<String>,
    ) -> FlowRecord {
        let by_policy = [DROP_POLICY_EGRESS, DROP_POLICY_INGRESS].contains(&(reason as usize));
        FlowRecord {
            ifindex,
            direction: if direction == 0 { "from-pod" } else { "to-pod" },
            verdict: DROP_REASONS.get(reason as usize).copied().unwrap_or("?"),
            protocol,
            src,
            dst,
            denied_by: by_policy.then(|| match source_id {
                0 => "no policy allows".to_string(),
                SOURCE_UNNAMED => "a deny rule".to_string(),
                id => source_name(id).unwrap_or_else(|| format!("source #{id}")),
            }),
        }
    }

    /// The record of one item of the ring (a `FlowEvent` or, as its family
    /// says, a `FlowEvent6`), rule sources named by `source_name`; None for
    /// one too short to be either.
    fn from_ring(item: &[u8], source_name: &dyn Fn(u32) -> Option<String>) -> Option<FlowRecord> {
        // SAFETY (both reads): the ring holds events written by the
        // programs; the length is checked first and read_unaligned copes
        // with alignment.
        if item.len() >= std::mem::size_of::<FlowEvent6>()
            && item[std::mem::offset_of!(FlowEvent, family)] == FLOW_EVENT_IPV6
        {
            let e = unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<FlowEvent6>()) };
            let src = endpoint_str(Ipv6Addr::from(e.saddr), e.sport);
            let dst = endpoint_str(Ipv6Addr::from(e.daddr), e.dport);
            return Some(Self::new(
                e.ifindex,
                e.direction,
                e.reason,
                e.proto,
                (src, dst),
                e.source_id,
                source_name,
            ));
        }
        if item.len() < std::mem::size_of::<FlowEvent>() {
            return None;
        }
        let e = unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<FlowEvent>()) };
        let src = endpoint_str(Ipv4Addr::from(e.saddr), e.sport);
        let dst = endpoint_str(Ipv4Addr::from(e.daddr), e.dport);
        Some(Self::new(
            e.ifindex,
            e.direction,
            e.reason,
            e.proto,
            (src, dst),
            e.source_id,
            source_name,
        ))
    }
}

/// Reads flow events as they come, calling `each` for every one, until
/// `each` returns false or `timeout` (if any) passes without an event.
/// Events too short to be one are skipped.
///
/// ```no_run
/// # use std::time::Duration;
/// # use margay_ebpf::inspect;
/// // The next 100 policy drops, or fewer if the ring is quiet for 10 s.
/// let mut denied = Vec::new();
/// inspect::follow_events("/sys/fs/bpf/margay".as_ref(), Some(Duration::from_secs(10)), |r| {
///     if r.denied_by.is_some() {
///         denied.push(r);
///     }
///     denied.len() < 100
/// })?;
/// # Ok::<(), margay_ebpf::DataplaneError>(())
/// ```
///
/// # Errors
///
/// [`DataplaneError::Map`] naming `flow_events` or `policy_sources` when it
/// cannot be opened, or `flow_events` when waiting on the ring fails.
pub fn follow_events(
    root: &Path,
    timeout: Option<Duration>,
    mut each: impl FnMut(FlowRecord) -> bool,
) -> Result<(), DataplaneError> {
    let mut ring = maps::flow_events(root)?;
    let sources = maps::policy_sources(root)?;
    let source_name = |id: u32| sources.get(&id, 0).ok().map(|r| r.text());
    loop {
        while let Some(item) = ring.next() {
            let record = FlowRecord::from_ring(&item, &source_name);
            drop(item);
            if let Some(record) = record
                && !each(record)
            {
                return Ok(());
            }
        }
        let mut fds = [libc::pollfd {
            fd: ring.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        let ms = timeout
            .map(|t| t.as_millis().min(i32::MAX as u128) as i32)
            .unwrap_or(-1);
        // SAFETY: one valid pollfd, its count passed alongside.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), 1, ms) };
        if ready == 0 {
            return Ok(());
        }
        if ready < 0 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            return Err(ring.error()(std::io::Error::last_os_error()));
        }
    }
}
