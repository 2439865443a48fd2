//! Rust mirrors of `bpf/abi.h`. Its constants, and the names of drop
//! reasons and conntrack states, are generated from it (build.rs); the
//! structs are written here, their sizes asserted on both sides, so a
//! change on one side that is not made on the other fails the build.

use std::net::{Ipv4Addr, Ipv6Addr};

include!(concat!(env!("OUT_DIR"), "/abi_consts.rs"));

/// A registered pod (`struct endpoint`, map `endpoints`, keyed by its host
/// veth's ifindex): what the programs check the pod's packets against and
/// deliver to it with. Without an entry, the veth's traffic is dropped.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Endpoint {
    /// The pod's IPv4 address: the only source its packets may carry.
    /// Network byte order, as `Ipv4Addr::octets` read big-endian.
    pub ip: [u8; 4],
    /// The MAC of the pod's interface: the only source MAC its frames may
    /// carry, and the destination of frames delivered to it.
    pub mac: [u8; 6],
    /// None defined yet; 0.
    pub flags: u16,
    /// The host veth's ifindex; also the key.
    pub ifindex: u32,
    /// The host veth's name, NUL-padded: a DEL finds the entry by it after
    /// the interface is gone.
    pub ifname: [u8; 16],
    /// Its counters' index in the `counters` map, 1..=MAX_ENDPOINTS; 0
    /// until registration hands one out (registry.rs).
    pub slot: u32,
}

impl Endpoint {
    /// The entry of the pod behind host veth `ifindex` named `ifname` (cut
    /// to the kernel's 15 bytes), with no counters slot yet:
    /// [`register`](crate::registry::register) hands one out.
    pub fn new(ifindex: u32, ifname: &str, ip: Ipv4Addr, mac: [u8; 6]) -> Endpoint {
        let mut name = [0u8; 16];
        let n = ifname.len().min(15);
        name[..n].copy_from_slice(&ifname.as_bytes()[..n]);
        Endpoint {
            ip: ip.octets(),
            mac,
            flags: 0,
            ifindex,
            ifname: name,
            slot: 0,
        }
    }

    /// The host veth's name, as stored (bytes that are not UTF-8 replaced).
    pub fn ifname(&self) -> String {
        let end = self.ifname.iter().position(|&b| b == 0).unwrap_or(16);
        String::from_utf8_lossy(&self.ifname[..end]).into_owned()
    }

    /// The pod's IPv4 address.
    pub fn ipv4(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.ip)
    }
}

/// A pod's IPv6 address (`struct endpoint6`, map `endpoints6`), keyed by
/// its host veth's ifindex like [`Endpoint`]. Beside it rather than in it,
/// so that endpoints registered by an IPv4-only build keep their layout; a
/// pod without an entry may send no IPv6 but neighbour discovery. It
/// carries copies of its endpoint's MAC and counters slot, so that the
/// programs judge a pod's IPv6 packet with this one lookup.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Endpoint6 {
    /// The pod's IPv6 address, the only IPv6 source its packets may carry.
    /// Network byte order, as `Ipv6Addr::octets`.
    pub ip: [u8; 16],
    /// None defined yet; 0.
    pub flags: u32,
    /// Its [`Endpoint::mac`].
    pub mac: [u8; 6],
    /// Padding; 0.
    pub reserved: u16,
    /// Its [`Endpoint::slot`].
    pub slot: u32,
}

impl Endpoint6 {
    /// The entry recording `ip` as the IPv6 address of the pod `ep` is.
    pub fn of(ep: &Endpoint, ip: Ipv6Addr) -> Endpoint6 {
        Endpoint6 {
            ip: ip.octets(),
            mac: ep.mac,
            slot: ep.slot,
            ..Endpoint6::default()
        }
    }

    /// Whether it carries `ep`'s MAC and slot (an older build wrote none).
    pub fn matches(&self, ep: &Endpoint) -> bool {
        self.mac == ep.mac && self.slot == ep.slot
    }

    /// The pod's IPv6 address.
    pub fn ipv6(&self) -> Ipv6Addr {
        Ipv6Addr::from(self.ip)
    }
}

/// One IPv4 rule of a direction's list (`struct policy_rule`), as
/// [`compile`](crate::policy::compile) writes it: the programs try a new
/// flow against the rules in order, and the first that matches decides.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PolicyRule {
    /// A CIDR rule: the peer network's address, masked (network order). A
    /// [`RULE_F_SET`] rule: the number of the set the peer must be in
    /// (`set_id`, native order; 0: any peer).
    pub addr: [u8; 4],
    /// A CIDR rule: the network's mask (network order; all zero: any
    /// address). A [`RULE_F_SET`] rule: the number of the rule's source in
    /// `policy_sources` (`source_id`, native order; 0: none).
    pub mask: [u8; 4],
    /// Lowest destination port matched, host order; `port_lo..=port_hi`
    /// narrower than `0..=65535` matches only TCP and UDP.
    pub port_lo: u16,
    /// Highest destination port matched, host order.
    pub port_hi: u16,
    /// IP protocol number the rule is for; 0: any.
    pub proto: u8,
    /// [`POLICY_ALLOW`] or [`POLICY_DENY`].
    pub action: u8,
    /// `RULE_F_*`: [`RULE_F_ANY_FAMILY`], [`RULE_F_SET`].
    pub flags: u8,
    /// Padding, 0: every byte the kernel copies is defined.
    pub pad: u8,
}

/// `struct ip_set_key` after its prefix length (aya's `lpm_trie::Key`
/// holds that): the set's number (native-endian, as in the rules), the
/// address, then a port member's port (big-endian) and protocol. A network
/// member's prefix covers the number and its network; a port member's,
/// all of it ([`IP_SET_PORT_PREFIX`]), so the longest member decides.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IpSetData {
    /// The set's number (native order, as the rules hold it).
    pub set_id: u32,
    /// The member's address, or its network's (network order).
    pub addr: [u8; 4],
    /// A port member's port (network order); 0 for others.
    pub port: [u8; 2],
    /// A port member's IP protocol number; 0 for others.
    pub proto: u8,
    /// Padding, 0.
    pub pad: u8,
}

/// `struct ip_set_key6` after its prefix length: [`IpSetData`] for the
/// IPv6 trie (`ip_sets6`, port members' prefix [`IP_SET6_PORT_PREFIX`]).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IpSetData6 {
    /// The set's number (native order, as the rules hold it).
    pub set_id: u32,
    /// The member's address, or its network's (network order).
    pub addr: [u8; 16],
    /// A port member's port (network order); 0 for others.
    pub port: [u8; 2],
    /// A port member's IP protocol number; 0 for others.
    pub proto: u8,
    /// Padding, 0.
    pub pad: u8,
}

/// `struct name_record`: a set's or a rule source's name, NUL-padded, by
/// its number (maps `ip_set_names`, `policy_sources`). Only userspace reads
/// it: to find its numbers again after a restart, and to show rules.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NameRecord {
    /// The name's bytes, NUL-padded (none after a name of 64 bytes).
    pub name: [u8; 64],
}

impl NameRecord {
    /// `name`, cut to 64 bytes.
    pub fn new(name: &str) -> NameRecord {
        let mut record = NameRecord { name: [0; 64] };
        let len = name.len().min(64);
        record.name[..len].copy_from_slice(&name.as_bytes()[..len]);
        record
    }

    /// The name, up to its first NUL (bytes that are not UTF-8 replaced).
    pub fn text(&self) -> String {
        let end = self.name.iter().position(|&b| b == 0).unwrap_or(64);
        String::from_utf8_lossy(&self.name[..end]).into_owned()
    }
}

/// One IPv6 rule of a direction's list (`struct policy_rule6`): as
/// [`PolicyRule`], with IPv6 addresses.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PolicyRule6 {
    /// A CIDR rule: the peer network's address, masked (network order). A
    /// [`RULE_F_SET`] rule: the set's number in its first 4 bytes (native
    /// order), the rest 0.
    pub addr: [u8; 16],
    /// A CIDR rule: the network's mask (network order). A [`RULE_F_SET`]
    /// rule: the source's number in its first 4 bytes (native order), the
    /// rest 0.
    pub mask: [u8; 16],
    /// Lowest destination port matched, host order, as in [`PolicyRule`].
    pub port_lo: u16,
    /// Highest destination port matched, host order.
    pub port_hi: u16,
    /// IP protocol number the rule is for; 0: any.
    pub proto: u8,
    /// [`POLICY_ALLOW`] or [`POLICY_DENY`].
    pub action: u8,
    /// `RULE_F_*`: [`RULE_F_ANY_FAMILY`], [`RULE_F_SET`].
    pub flags: u8,
    /// Padding, 0.
    pub pad: u8,
}

/// Which rules (`struct policy_key`, maps `policies` and `policies6`): one
/// endpoint's one direction.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PolicyKey {
    /// The endpoint's host veth.
    pub ifindex: u32,
    /// [`DIR_EGRESS`] (from the pod) or [`DIR_INGRESS`] (to the pod).
    pub direction: u32,
}

/// A direction's IPv4 rules (`struct policy`, map `policies`). Its entry is
/// also what gives the direction a policy: without one everything is
/// allowed, with one what no rule allows is denied (both families).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// How many of `rules` are in force, from the first.
    pub count: u32,
    /// Room for later fields; 0.
    pub reserved: u32,
    /// The rules in the operator's order; those past `count` are unused.
    pub rules: [PolicyRule; MAX_POLICY_RULES],
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            count: 0,
            reserved: 0,
            rules: [PolicyRule::default(); MAX_POLICY_RULES],
        }
    }
}

/// A direction's IPv6 rules (`struct policy6`, map `policies6`), judged
/// only when the direction has a [`Policy`] entry; a direction with a
/// policy and no IPv6 list passes no IPv6.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct Policy6 {
    /// How many of `rules` are in force, from the first.
    pub count: u32,
    /// Room for later fields; 0.
    pub reserved: u32,
    /// The rules in the operator's order; those past `count` are unused.
    pub rules: [PolicyRule6; MAX_POLICY_RULES],
}

impl Default for Policy6 {
    fn default() -> Self {
        Policy6 {
            count: 0,
            reserved: 0,
            rules: [PolicyRule6::default(); MAX_POLICY_RULES],
        }
    }
}

/// An IPv4 flow of an endpoint (`struct ct_key`, map `conntrack`),
/// normalised: side a is the lower (address, port), so that both
/// directions of a flow find one entry. Which side began the flow is in
/// the entry ([`CT_F_ORIGIN_IS_A`]).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct CtKey {
    /// Side a's address, the lower (network order).
    pub addr_a: [u8; 4],
    /// Side b's address (network order).
    pub addr_b: [u8; 4],
    /// Side a's port. Network byte order.
    pub port_a: [u8; 2],
    /// Side b's port. Network byte order.
    pub port_b: [u8; 2],
    /// IP protocol number.
    pub proto: u8,
    /// Padding, 0: keys are compared byte by byte.
    pub pad: [u8; 3],
    /// The endpoint's host veth: a flow between two local pods has an
    /// entry for each, each pod's policy applied on its own side.
    pub ifindex: u32,
}

/// `struct ct_key6`: an IPv6 flow of an endpoint (map `conntrack6`),
/// normalised as [`CtKey`]; its entry's [`CT_F_POD_IS_A`] says which side
/// is the pod.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct CtKey6 {
    /// Side a's address, the lower (network order).
    pub addr_a: [u8; 16],
    /// Side b's address (network order).
    pub addr_b: [u8; 16],
    /// Side a's port. Network byte order.
    pub port_a: [u8; 2],
    /// Side b's port. Network byte order.
    pub port_b: [u8; 2],
    /// IP protocol number.
    pub proto: u8,
    /// Padding, 0: keys are compared byte by byte.
    pub pad: [u8; 3],
    /// The endpoint's host veth, as in [`CtKey`].
    pub ifindex: u32,
}

/// A flow's state (`struct ct_entry`, the value of maps `conntrack` and
/// `conntrack6`). It carries what an established packet needs of its
/// endpoint, its receiver and its service, so that such a packet costs one
/// map lookup; there are no per-flow packet counts (updating them would
/// bounce the entry between the CPUs of the two directions).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CtEntry {
    /// When a packet of the flow was last seen, on the flow clock
    /// ([`Config::with_flow_clock`]); its idle timeout runs from here.
    /// Refreshed at most once a second.
    pub last_seen_ns: u64,
    /// The flow clock at creation, in seconds (only shown: the age).
    pub created_s: u32,
    /// `CT_F_TUNNEL`: the node the pod's packets of the flow go to
    /// (network order); `CT_F_LOCAL_DELIVERY`: the receiving pod's host
    /// veth as last seen (native order, 0: not yet).
    pub tunnel_peer_or_peer_ifindex: [u8; 4],
    /// The flow's state, `CT_*` ([`CT_NEW`] to [`CT_CLOSED`]), named by
    /// [`CT_STATES`]: its timeout depends on it.
    pub state: u8,
    /// `CT_F_*`: which side began it and sent FIN, and which way the
    /// pod's packets of it go.
    pub flags: u8,
    /// The endpoint's counters slot.
    pub slot: u16,
    /// The endpoint's pod, as it was registered, so that a packet from the
    /// pod is checked without a lookup of the endpoint (IPv4 entries only;
    /// an IPv6 entry's is unused).
    pub pod_ip: [u8; 4],
    /// The pod's MAC, as it was registered.
    pub pod_mac: [u8; 6],
    /// `CT_F_LOCAL_DELIVERY`: the receiving pod's counters slot and MAC.
    pub peer_slot: u16,
    /// `CT_F_LOCAL_DELIVERY`: the receiving pod's MAC, which a packet
    /// redirected to it is addressed to.
    pub peer_mac: [u8; 6],
    /// The service the flow's replies answer for (network order), as last
    /// looked up: the source they are turned into between lookups; zero
    /// when none is known. An IPv4 entry's address is the first 4 bytes.
    pub turn_port: [u8; 2],
    /// The service's address, with `turn_port`: IPv6's 16 bytes, or
    /// IPv4's 4 followed by zeros.
    pub turn_addr: [u8; 16],
}

/// An endpoint's counters (`struct counters`), one per CPU in map
/// `counters` at the endpoint's slot; slot 0 counts packets on interfaces
/// with no endpoint. [`inspect::counters`](crate::inspect::counters) sums
/// the CPUs.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Packets allowed, by direction ([`DIR_EGRESS`], [`DIR_INGRESS`]).
    pub packets: [u64; 2],
    /// Bytes allowed, by direction.
    pub bytes: [u64; 2],
    /// Packets dropped, by reason (`DROP_*`, named by [`DROP_REASONS`]).
    pub drops: [u64; DROP_REASON_MAX],
}

/// The programs' settings (`struct config`, map `config`, one entry). The
/// loader writes it last: its `object_id` says that the pins are complete
/// and which build's they are.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Config {
    /// What the programs put in the flow-event ring: [`LOG_OFF`] nothing,
    /// [`LOG_INFO`] drops, [`LOG_DEBUG`] drops and every new flow's verdict.
    pub log_level: u32,
    /// Nanoseconds per kernel tick; 0 when unknown (the programs then read
    /// the exact clock).
    pub jiffy_ns: u32,
    /// The kernel's jiffies when CLOCK_MONOTONIC read 0.
    pub jiffies_at_0: u64,
    /// Room for later fields; 0.
    pub reserved: [u32; 2],
    /// Which build's programs are pinned
    /// ([`DATAPLANE_OBJECT_ID`](crate::object::DATAPLANE_OBJECT_ID)); a node
    /// whose pins record another loads this build's.
    pub object_id: u64,
}

impl Config {
    /// The flow clock's calibration for this kernel: the tick length is the
    /// resolution of CLOCK_MONOTONIC_COARSE, and jiffies start 300 s of
    /// ticks before 2^32 (the kernel's INITIAL_JIFFIES, so that 32-bit
    /// jiffies wrap early) when the monotonic clock starts at 0. Flow
    /// timestamps then read as CLOCK_MONOTONIC to within a tick or so.
    pub fn with_flow_clock(self) -> Config {
        let tick = nix::time::clock_getres(nix::time::ClockId::CLOCK_MONOTONIC_COARSE)
            .ok()
            .map(|r| r.tv_sec() as u64 * 1_000_000_000 + r.tv_nsec() as u64)
            .filter(|ns| (1_000_000..=100_000_000).contains(ns));
        match tick {
            Some(ns) => {
                let hz = 1_000_000_000 / ns;
                Config {
                    jiffy_ns: ns as u32,
                    jiffies_at_0: (1u64 << 32).wrapping_sub(300 * hz),
                    ..self
                }
            }
            None => Config {
                jiffy_ns: 0,
                jiffies_at_0: 0,
                ..self
            },
        }
    }
}

/// Which frontends may exist (`struct svc_filter`, map `svc_filter`), by
/// [`FilterKey::filter_bit`]: a packet whose bit is clear is to no service
/// and skips the frontend lookup. It must cover every frontend the maps
/// hold; a false positive costs one lookup.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SvcFilter {
    /// [`SVC_FILTER_BITS`] bits, as 64-bit words: bit `b` is bit `b % 64`
    /// of word `b / 64`.
    pub bits: [u64; SVC_FILTER_BITS / 64],
}

impl Default for SvcFilter {
    fn default() -> Self {
        SvcFilter {
            bits: [0; SVC_FILTER_BITS / 64],
        }
    }
}

impl SvcFilter {
    /// Sets the bit of a frontend of either family.
    pub fn set(&mut self, key: &impl FilterKey) {
        let bit = key.filter_bit() as usize % SVC_FILTER_BITS;
        self.bits[bit / 64] |= 1 << (bit % 64);
    }

    /// The filter with the bits of both: one covering two families'
    /// frontends, or the old and the new set while a change is written.
    pub fn union(&self, other: &SvcFilter) -> SvcFilter {
        let mut out = *self;
        for (o, b) in out.bits.iter_mut().zip(other.bits) {
            *o |= b;
        }
        out
    }
}

/// The filter with the bits of these frontends.
impl<'a, K: FilterKey + 'a> FromIterator<&'a K> for SvcFilter {
    fn from_iter<I: IntoIterator<Item = &'a K>>(keys: I) -> SvcFilter {
        let mut filter = SvcFilter::default();
        for key in keys {
            filter.set(key);
        }
        filter
    }
}

/// A frontend key of either family, as `svc_filter_bit` in lb.h hashes it.
pub trait FilterKey {
    /// The frontend's bit: the address (an IPv6 one folded into the xor of
    /// its four words, lb.h's `v6_fold`) and port as the packet carries
    /// them, read as native-endian integers.
    fn filter_bit(&self) -> u32;
}

fn svc_filter_bit(addr: u32, port: [u8; 2], proto: u8) -> u32 {
    let port = u32::from(u16::from_ne_bytes(port));
    (addr ^ (port << 16) ^ u32::from(proto)).wrapping_mul(0x9e37_79b1) >> 16
}

impl FilterKey for SvcKey {
    fn filter_bit(&self) -> u32 {
        svc_filter_bit(u32::from_ne_bytes(self.addr), self.port, self.proto)
    }
}

impl FilterKey for SvcKey6 {
    fn filter_bit(&self) -> u32 {
        let folded = self
            .addr
            .chunks_exact(4)
            .map(|w| u32::from_ne_bytes([w[0], w[1], w[2], w[3]]))
            .fold(0, |acc, w| acc ^ w);
        svc_filter_bit(folded, self.port, self.proto)
    }
}

/// An IPv4 packet's flow event (`struct flow_event`, in ring
/// `flow_events`): a drop from [`LOG_INFO`] on, and each new flow's verdict
/// at [`LOG_DEBUG`]. [`follow_events`](crate::inspect::follow_events)
/// reads them.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlowEvent {
    /// When the packet was seen, CLOCK_MONOTONIC nanoseconds.
    pub ts_ns: u64,
    /// The interface the packet was seen on: an endpoint's host veth, or
    /// one of the node's.
    pub ifindex: u32,
    /// `enum drop_reason`: a `DROP_*`, or [`REASON_ALLOWED`] for a verdict
    /// that let it pass.
    pub reason: u8,
    /// [`DIR_EGRESS`] (from the pod) or [`DIR_INGRESS`] (to the pod).
    pub direction: u8,
    /// IP protocol number.
    pub proto: u8,
    /// [`FLOW_EVENT_IPV4`]: what tells it from a [`FlowEvent6`] in the ring.
    pub family: u8,
    /// The packet's source address (network order).
    pub saddr: [u8; 4],
    /// The packet's destination address (network order).
    pub daddr: [u8; 4],
    /// The packet's source port (network order).
    pub sport: [u8; 2],
    /// The packet's destination port (network order).
    pub dport: [u8; 2],
    /// A policy drop: the `policy_sources` number of the source whose rule
    /// denied it, [`SOURCE_UNNAMED`] for a rule naming none; 0: no rule
    /// did (none allowed it).
    pub source_id: u32,
}

/// An IPv6 flow event (`struct flow_event6`): begins as [`FlowEvent`] does,
/// `family` telling them apart.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlowEvent6 {
    /// When the packet was seen, CLOCK_MONOTONIC nanoseconds.
    pub ts_ns: u64,
    /// The interface the packet was seen on.
    pub ifindex: u32,
    /// `enum drop_reason`, as in [`FlowEvent`].
    pub reason: u8,
    /// [`DIR_EGRESS`] (from the pod) or [`DIR_INGRESS`] (to the pod).
    pub direction: u8,
    /// IP protocol number.
    pub proto: u8,
    /// [`FLOW_EVENT_IPV6`].
    pub family: u8,
    /// The packet's source address (network order).
    pub saddr: [u8; 16],
    /// The packet's destination address (network order).
    pub daddr: [u8; 16],
    /// The packet's source port (network order).
    pub sport: [u8; 2],
    /// The packet's destination port (network order).
    pub dport: [u8; 2],
    /// As in [`FlowEvent`].
    pub source_id: u32,
}

/// A service frontend: address, port and protocol, as clients reach it
/// (`struct svc_key`, map `svc_frontends`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SvcKey {
    /// The frontend's address: a ClusterIP, a node address (NodePort) or
    /// an external IP (network order).
    pub addr: [u8; 4],
    /// The frontend's port. Network byte order.
    pub port: [u8; 2],
    /// IP protocol number.
    pub proto: u8,
    /// Padding, 0: keys are compared byte by byte.
    pub pad: u8,
}

/// What a frontend leads to (`struct svc_value`, the value of maps
/// `svc_frontends` and `svc_frontends6`): its current backend slots and how
/// to choose among them. Writing it switches the frontend to another
/// generation's slots in one update.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SvcValue {
    /// The frontend's number, which its backend slots and its name
    /// (`svc_meta`) are keyed by; both families share one id space.
    pub id: u32,
    /// Backends in the current generation, in ordinals `0..count`.
    pub count: u16,
    /// The current generation, 0 or 1: a change writes the other one's
    /// slots, then flips this.
    pub generation: u16,
    /// `SVC_F_*`: affinity, local backends only, the frontend's kind.
    pub flags: u16,
    /// On a ClusterIP frontend: its service's NodePort (0: none).
    pub node_port: u16,
    /// With [`SVC_F_AFFINITY`]: how long, in seconds, a client keeps its
    /// backend after its last connection.
    pub affinity_timeout_s: u32,
    /// Room for later fields; 0.
    pub reserved: [u32; 2],
}

/// A backend slot (`struct backend_key`, maps `svc_backends` and
/// `svc_backends6`): one ordinal of one generation of a frontend.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct BackendKey {
    /// The frontend's [`SvcValue::id`].
    pub svc_id: u32,
    /// 0 or 1, as [`SvcValue::generation`].
    pub generation: u16,
    /// The slot, below [`SvcValue::count`]; a backend kept by a change
    /// keeps its ordinal, so client affinity to it holds.
    pub ordinal: u16,
}

/// An IPv4 backend in a slot (`struct backend`, map `svc_backends`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Backend {
    /// The backend's address (network order).
    pub addr: [u8; 4],
    /// The backend's port. Network byte order.
    pub port: [u8; 2],
    /// None defined yet; 0.
    pub flags: u16,
    /// Room for later fields; 0.
    pub reserved: u32,
}

/// An IPv6 service frontend (map `svc_frontends6`, whose values are
/// [`SvcValue`]: the families share one id space).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SvcKey6 {
    /// The frontend's address (network order).
    pub addr: [u8; 16],
    /// The frontend's port. Network byte order.
    pub port: [u8; 2],
    /// IP protocol number.
    pub proto: u8,
    /// Padding, 0: keys are compared byte by byte.
    pub pad: u8,
}

/// An IPv6 backend (map `svc_backends6`, keyed by [`BackendKey`]).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Backend6 {
    /// The backend's address (network order).
    pub addr: [u8; 16],
    /// The backend's port. Network byte order.
    pub port: [u8; 2],
    /// None defined yet; 0.
    pub flags: u16,
    /// Room for later fields; 0.
    pub reserved: u32,
}

/// A frontend's service name (`struct svc_meta`, map `svc_meta`, keyed by
/// [`SvcValue::id`]): what `margayctl service list` shows and errors name,
/// and how services read back from the maps are grouped. The programs
/// never read it.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SvcMeta {
    /// The service's name, NUL-padded.
    pub name: [u8; 64],
}

/// An IPv4 service flow's translation key (`struct nat_key`, map `nat`):
/// the tuple as the packet carries it when it reaches the translation. A
/// flow has two: forward, and reverse for its replies.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct NatKey {
    /// The packet's source address (network order).
    pub saddr: [u8; 4],
    /// The packet's destination address (network order).
    pub daddr: [u8; 4],
    /// The packet's source port (network order).
    pub sport: [u8; 2],
    /// The packet's destination port (network order).
    pub dport: [u8; 2],
    /// IP protocol number.
    pub proto: u8,
    /// [`NAT_FWD`] (client to frontend) or [`NAT_REV`] (backend to client).
    pub kind: u8,
    /// Padding, 0: keys are compared byte by byte.
    pub pad: [u8; 2],
}

/// An IPv4 translation (`struct nat_entry`, map `nat`): what a packet
/// matching its [`NatKey`] is rewritten to.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NatEntry {
    /// Forward: when a packet last used it, on the flow clock
    /// ([`Config::with_flow_clock`]), refreshed at most once a second.
    /// Reverse entries are not refreshed: the LRU keeps them by use.
    pub last_seen_ns: u64,
    /// Forward: the backend's address; reverse: the frontend's (network
    /// order).
    pub addr: [u8; 4],
    /// Hairpin only (0 otherwise): forward, the address the client is
    /// disguised as; reverse, the client's own (network order).
    pub peer: [u8; 4],
    /// Forward: the backend's port; reverse: the frontend's (network order).
    pub port: [u8; 2],
    /// Forward: the backend's slot when it was chosen.
    pub ordinal: u16,
    /// The frontend's [`SvcValue::id`], which names its service.
    pub svc_id: u32,
    /// `NAT_F_*`: [`NAT_F_AT_BACKEND`].
    pub flags: u32,
    /// Room for later fields; 0.
    pub reserved: u32,
}

/// An IPv6 flow's translation key (map `nat6`), as [`NatKey`].
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct NatKey6 {
    /// The packet's source address (network order).
    pub saddr: [u8; 16],
    /// The packet's destination address (network order).
    pub daddr: [u8; 16],
    /// The packet's source port (network order).
    pub sport: [u8; 2],
    /// The packet's destination port (network order).
    pub dport: [u8; 2],
    /// IP protocol number.
    pub proto: u8,
    /// [`NAT_FWD`] or [`NAT_REV`].
    pub kind: u8,
    /// Padding, 0: keys are compared byte by byte.
    pub pad: [u8; 2],
}

/// An IPv6 translation (`struct nat_entry6`, map `nat6`), as [`NatEntry`].
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NatEntry6 {
    /// Forward: when a packet last used it, as in [`NatEntry`].
    pub last_seen_ns: u64,
    /// Forward: the backend's address; reverse: the frontend's.
    pub addr: [u8; 16],
    /// Hairpin only, as in [`NatEntry`].
    pub peer: [u8; 16],
    /// Forward: the backend's port; reverse: the frontend's (network order).
    pub port: [u8; 2],
    /// Forward: the backend's slot when it was chosen.
    pub ordinal: u16,
    /// The frontend's [`SvcValue::id`].
    pub svc_id: u32,
    /// `NAT_F_*`: [`NAT_F_AT_BACKEND`].
    pub flags: u32,
    /// Room for later fields; 0.
    pub reserved: u32,
}

/// The node's own settings the programs read (`struct node_config`, map
/// `node_config`, one entry). Its parts have different writers (the tunnel,
/// host load balancing): change one with
/// [`update_node_config`](crate::maps::update_node_config), which keeps the
/// rest.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodeConfig {
    /// The tunnel device (VXLAN, external mode); 0: none, and packets whose
    /// way is the tunnel are dropped.
    pub tunnel_ifindex: u32,
    /// How NodePort traffic reaches a backend on another node:
    /// [`EXT_MODE_TUNNEL`] or [`EXT_MODE_DSR`].
    pub external_mode: u32,
    /// The node's network namespace (`SO_NETNS_COOKIE`): its sockets get
    /// services balanced at connect time ([`host_lb`](crate::host_lb)); 0:
    /// none do.
    pub host_netns_cookie: u64,
    /// Room for later fields; 0.
    pub reserved: [u32; 4],
}

/// Another node, as the value of maps `node_peers` and `node_peers6`
/// (LPM tries keyed by its pods' CIDRs): where a packet to one of its pods
/// goes (`struct peer`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Peer {
    /// The node's IPv4 address, the tunnel's far end (also for its IPv6
    /// pod CIDRs). Network byte order, as `Ipv4Addr::octets`.
    pub node: [u8; 4],
    /// `PEER_F_*`: [`PEER_F_ENCAP`] when pod traffic to it is tunnelled.
    pub flags: u32,
}

const _: () = {
    use std::mem::size_of;
    assert!(size_of::<Endpoint>() == 36);
    assert!(size_of::<Endpoint6>() == 32);
    assert!(size_of::<PolicyRule6>() == 40);
    assert!(size_of::<Policy6>() == 8 + 40 * MAX_POLICY_RULES);
    assert!(size_of::<CtKey6>() == 44);
    assert!(size_of::<FlowEvent6>() == 56);
    assert!(size_of::<PolicyRule>() == 16);
    assert!(size_of::<Policy>() == 8 + 16 * MAX_POLICY_RULES);
    assert!(size_of::<CtKey>() == 20);
    assert!(size_of::<CtEntry>() == 56);
    assert!(size_of::<Counters>() == 8 * (4 + DROP_REASON_MAX));
    assert!(size_of::<Config>() == 32);
    assert!(size_of::<FlowEvent>() == 32);
    assert!(size_of::<SvcKey>() == 8);
    assert!(size_of::<SvcValue>() == 24);
    assert!(size_of::<BackendKey>() == 8);
    assert!(size_of::<Backend>() == 12);
    assert!(size_of::<SvcKey6>() == 20);
    assert!(size_of::<Backend6>() == 24);
    assert!(size_of::<SvcMeta>() == 64);
    assert!(size_of::<IpSetData>() == 12);
    assert!(size_of::<IpSetData6>() == 24);
    assert!(size_of::<NameRecord>() == 64);
    assert!(size_of::<NatKey>() == 16);
    assert!(size_of::<NatEntry>() == 32);
    assert!(size_of::<NatKey6>() == 40);
    assert!(size_of::<NatEntry6>() == 56);
    assert!(size_of::<NodeConfig>() == 32);
    assert!(size_of::<Peer>() == 8);
    assert!(size_of::<SvcFilter>() == SVC_FILTER_BITS / 8);
};

// SAFETY: all of these are repr(C) plain data with no padding that the
// kernel could not have written (every hole is an explicit field).
unsafe impl aya::Pod for Endpoint {}
unsafe impl aya::Pod for Endpoint6 {}
unsafe impl aya::Pod for PolicyRule6 {}
unsafe impl aya::Pod for Policy6 {}
unsafe impl aya::Pod for CtKey6 {}
unsafe impl aya::Pod for FlowEvent6 {}
unsafe impl aya::Pod for PolicyRule {}
unsafe impl aya::Pod for PolicyKey {}
unsafe impl aya::Pod for Policy {}
unsafe impl aya::Pod for CtKey {}
unsafe impl aya::Pod for CtEntry {}
unsafe impl aya::Pod for Counters {}
unsafe impl aya::Pod for Config {}
unsafe impl aya::Pod for FlowEvent {}
unsafe impl aya::Pod for SvcKey {}
unsafe impl aya::Pod for SvcValue {}
unsafe impl aya::Pod for BackendKey {}
unsafe impl aya::Pod for Backend {}
unsafe impl aya::Pod for SvcKey6 {}
unsafe impl aya::Pod for NatKey6 {}
unsafe impl aya::Pod for NatEntry6 {}
unsafe impl aya::Pod for Backend6 {}
unsafe impl aya::Pod for SvcMeta {}
unsafe impl aya::Pod for IpSetData {}
unsafe impl aya::Pod for IpSetData6 {}
unsafe impl aya::Pod for NameRecord {}
unsafe impl aya::Pod for NatKey {}
unsafe impl aya::Pod for NatEntry {}
unsafe impl aya::Pod for NodeConfig {}
unsafe impl aya::Pod for Peer {}
unsafe impl aya::Pod for SvcFilter {}
