//! Rust mirrors of `bpf/abi.h`. Its constants, and the names of drop
//! reasons and conntrack states, are generated from it (build.rs); the
//! structs are written here, their sizes asserted on both sides, so a
//! change on one side that is not made on the other fails the build.

use std::net::{Ipv4Addr, Ipv6Addr};

include!(concat!(env!("OUT_DIR"), "/abi_consts.rs"));

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Endpoint {
    /// Network byte order, as `Ipv4Addr::octets` read big-endian.
    pub ip: [u8; 4],
    pub mac: [u8; 6],
    pub flags: u16,
    pub ifindex: u32,
    pub ifname: [u8; 16],
    /// Its counters' index in the `counters` map, 1..=MAX_ENDPOINTS; 0
    /// until registration hands one out (registry.rs).
    pub slot: u32,
}

impl Endpoint {
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

    pub fn ifname(&self) -> String {
        let end = self.ifname.iter().position(|&b| b == 0).unwrap_or(16);
        String::from_utf8_lossy(&self.ifname[..end]).into_owned()
    }

    pub fn ipv4(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.ip)
    }
}

/// A pod's IPv6 address (`struct endpoint6`), keyed by its host veth's
/// ifindex like [`Endpoint`].
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Endpoint6 {
    /// Network byte order, as `Ipv6Addr::octets`.
    pub ip: [u8; 16],
    pub flags: u32,
    pub reserved: [u32; 3],
}

impl Endpoint6 {
    pub fn new(ip: Ipv6Addr) -> Endpoint6 {
        Endpoint6 {
            ip: ip.octets(),
            ..Endpoint6::default()
        }
    }

    pub fn ipv6(&self) -> Ipv6Addr {
        Ipv6Addr::from(self.ip)
    }
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PolicyRule {
    pub addr: [u8; 4],
    pub mask: [u8; 4],
    pub port_lo: u16,
    pub port_hi: u16,
    pub proto: u8,
    pub action: u8,
    /// `RULE_F_*`.
    pub flags: u8,
    pub pad: u8,
}

/// `struct ip_set_key` after its prefix length (aya's `lpm_trie::Key`
/// holds that): the set's number (native-endian, as in the rules), the
/// address, then a port member's port (big-endian) and protocol.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IpSetData {
    pub set_id: u32,
    pub addr: [u8; 4],
    pub port: [u8; 2],
    pub proto: u8,
    pub pad: u8,
}

/// `struct ip_set_key6` after its prefix length.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IpSetData6 {
    pub set_id: u32,
    pub addr: [u8; 16],
    pub port: [u8; 2],
    pub proto: u8,
    pub pad: u8,
}

/// `struct name_record`: a set's or a rule source's name, NUL-padded.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NameRecord {
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

    pub fn text(&self) -> String {
        let end = self.name.iter().position(|&b| b == 0).unwrap_or(64);
        String::from_utf8_lossy(&self.name[..end]).into_owned()
    }
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PolicyRule6 {
    pub addr: [u8; 16],
    pub mask: [u8; 16],
    pub port_lo: u16,
    pub port_hi: u16,
    pub proto: u8,
    pub action: u8,
    pub flags: u8,
    pub pad: u8,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PolicyKey {
    pub ifindex: u32,
    pub direction: u32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    pub count: u32,
    pub reserved: u32,
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

/// A direction's IPv6 rules (`struct policy6`).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct Policy6 {
    pub count: u32,
    pub reserved: u32,
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

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct CtKey {
    pub addr_a: [u8; 4],
    pub addr_b: [u8; 4],
    /// Network byte order.
    pub port_a: [u8; 2],
    pub port_b: [u8; 2],
    pub proto: u8,
    pub pad: [u8; 3],
    pub ifindex: u32,
}

/// `struct ct_key6`: an IPv6 flow of an endpoint.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct CtKey6 {
    pub addr_a: [u8; 16],
    pub addr_b: [u8; 16],
    /// Network byte order.
    pub port_a: [u8; 2],
    pub port_b: [u8; 2],
    pub proto: u8,
    pub pad: [u8; 3],
    pub ifindex: u32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CtEntry {
    /// Refreshed at most once a second.
    pub last_seen_ns: u64,
    /// The flow clock at creation, in seconds (only shown: the age).
    pub created_s: u32,
    /// `CT_F_TUNNEL`: the node the pod's packets of the flow go to
    /// (network order); `CT_F_LOCAL_DELIVERY`: the receiving pod's host
    /// veth as last seen (native order, 0: not yet).
    pub tunnel_peer_or_peer_ifindex: [u8; 4],
    pub state: u8,
    pub flags: u8,
    /// The endpoint's counters slot.
    pub slot: u16,
    /// The endpoint's pod, as it was registered.
    pub pod_ip: [u8; 4],
    pub pod_mac: [u8; 6],
    /// `CT_F_LOCAL_DELIVERY`: the receiving pod's counters slot and MAC.
    pub peer_slot: u16,
    pub peer_mac: [u8; 6],
    /// The service the flow's replies answer for (network order), as last
    /// looked up: the source they are turned into between lookups; zero
    /// when none is known. An IPv4 entry's address is the first 4 bytes.
    pub turn_port: [u8; 2],
    pub turn_addr: [u8; 16],
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub packets: [u64; 2],
    pub bytes: [u64; 2],
    pub drops: [u64; DROP_REASON_MAX],
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Config {
    pub log_level: u32,
    /// Nanoseconds per kernel tick; 0 when unknown (the programs then read
    /// the exact clock).
    pub jiffy_ns: u32,
    /// The kernel's jiffies when CLOCK_MONOTONIC read 0.
    pub jiffies_at_0: u64,
    pub reserved: [u32; 2],
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

/// Which frontends may exist, by [`svc_filter_bit`].
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SvcFilter {
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

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlowEvent {
    pub ts_ns: u64,
    pub ifindex: u32,
    pub reason: u8,
    pub direction: u8,
    pub proto: u8,
    /// `FLOW_EVENT_IPV4`.
    pub family: u8,
    pub saddr: [u8; 4],
    pub daddr: [u8; 4],
    pub sport: [u8; 2],
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
    pub ts_ns: u64,
    pub ifindex: u32,
    pub reason: u8,
    pub direction: u8,
    pub proto: u8,
    /// `FLOW_EVENT_IPV6`.
    pub family: u8,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub sport: [u8; 2],
    pub dport: [u8; 2],
    /// As in [`FlowEvent`].
    pub source_id: u32,
}

/// A service frontend: address, port and protocol, as clients reach it.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SvcKey {
    pub addr: [u8; 4],
    /// Network byte order.
    pub port: [u8; 2],
    pub proto: u8,
    pub pad: u8,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SvcValue {
    pub id: u32,
    pub count: u16,
    pub generation: u16,
    pub flags: u16,
    /// On a ClusterIP frontend: its service's NodePort (0: none).
    pub node_port: u16,
    pub affinity_timeout_s: u32,
    pub reserved: [u32; 2],
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct BackendKey {
    pub svc_id: u32,
    pub generation: u16,
    pub ordinal: u16,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Backend {
    pub addr: [u8; 4],
    /// Network byte order.
    pub port: [u8; 2],
    pub flags: u16,
    pub reserved: u32,
}

/// An IPv6 service frontend (map `svc_frontends6`, whose values are
/// [`SvcValue`]: the families share one id space).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SvcKey6 {
    pub addr: [u8; 16],
    /// Network byte order.
    pub port: [u8; 2],
    pub proto: u8,
    pub pad: u8,
}

/// An IPv6 backend (map `svc_backends6`, keyed by [`BackendKey`]).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Backend6 {
    pub addr: [u8; 16],
    /// Network byte order.
    pub port: [u8; 2],
    pub flags: u16,
    pub reserved: u32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SvcMeta {
    pub name: [u8; 64],
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct NatKey {
    pub saddr: [u8; 4],
    pub daddr: [u8; 4],
    pub sport: [u8; 2],
    pub dport: [u8; 2],
    pub proto: u8,
    pub kind: u8,
    pub pad: [u8; 2],
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NatEntry {
    pub last_seen_ns: u64,
    pub addr: [u8; 4],
    pub peer: [u8; 4],
    pub port: [u8; 2],
    pub ordinal: u16,
    pub svc_id: u32,
    pub flags: u32,
    pub reserved: u32,
}

/// An IPv6 flow's translation key (map `nat6`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct NatKey6 {
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub sport: [u8; 2],
    pub dport: [u8; 2],
    pub proto: u8,
    pub kind: u8,
    pub pad: [u8; 2],
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NatEntry6 {
    pub last_seen_ns: u64,
    pub addr: [u8; 16],
    pub peer: [u8; 16],
    pub port: [u8; 2],
    pub ordinal: u16,
    pub svc_id: u32,
    pub flags: u32,
    pub reserved: u32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodeConfig {
    pub tunnel_ifindex: u32,
    pub external_mode: u32,
    pub host_netns_cookie: u64,
    pub reserved: [u32; 4],
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Peer {
    /// Network byte order, as `Ipv4Addr::octets`.
    pub node: [u8; 4],
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
