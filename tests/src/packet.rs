//! Crafted Ethernet/IPv4 and IPv6 frames for program tests and benchmarks.

use std::net::{Ipv4Addr, Ipv6Addr};

pub const POD_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];
pub const GATEWAY_MAC: [u8; 6] = [0xee; 6];

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// The transport part of a frame.
#[derive(Debug, Clone)]
pub enum L4 {
    Tcp {
        sport: u16,
        dport: u16,
        flags: u8,
    },
    Udp {
        sport: u16,
        dport: u16,
    },
    /// Echo request (type 8) or reply (type 0).
    IcmpEcho {
        kind: u8,
        id: u16,
    },
    /// An ICMP error (type 3, 11, 12; ICMPv6 1..=4) quoting `quoted` (IP
    /// header + 8 bytes).
    IcmpError {
        kind: u8,
        quoted: Vec<u8>,
    },
    /// Any other ICMP or ICMPv6 message (neighbour discovery, …): its type
    /// and 16 bytes of zeros.
    IcmpOther {
        kind: u8,
    },
}

/// The L4 protocol number (ICMP's as IPv4 has it) and header of `l4`.
fn l4_bytes(l4: &L4) -> (u8, Vec<u8>) {
    match l4 {
        L4::Tcp {
            sport,
            dport,
            flags,
        } => {
            let mut h = vec![0u8; 20];
            h[0..2].copy_from_slice(&sport.to_be_bytes());
            h[2..4].copy_from_slice(&dport.to_be_bytes());
            h[12] = 5 << 4;
            h[13] = *flags;
            h[14..16].copy_from_slice(&64240u16.to_be_bytes());
            (6u8, h)
        }
        L4::Udp { sport, dport } => {
            let mut h = vec![0u8; 8];
            h[0..2].copy_from_slice(&sport.to_be_bytes());
            h[2..4].copy_from_slice(&dport.to_be_bytes());
            h[4..6].copy_from_slice(&8u16.to_be_bytes());
            (17u8, h)
        }
        L4::IcmpEcho { kind, id } => {
            let mut h = vec![0u8; 8];
            h[0] = *kind;
            h[4..6].copy_from_slice(&id.to_be_bytes());
            (1u8, h)
        }
        L4::IcmpError { kind, quoted } => {
            let mut h = vec![0u8; 8];
            h[0] = *kind;
            h.extend_from_slice(quoted);
            (1u8, h)
        }
        L4::IcmpOther { kind } => {
            let mut h = vec![0u8; 24];
            h[0] = *kind;
            (1u8, h)
        }
    }
}

/// An Ethernet + IPv4 frame from `src_mac`.
pub fn ipv4(src_mac: [u8; 6], src: Ipv4Addr, dst: Ipv4Addr, l4: &L4) -> Vec<u8> {
    let (proto, payload) = l4_bytes(l4);
    let mut frame = Vec::with_capacity(14 + 20 + payload.len());
    frame.extend_from_slice(&GATEWAY_MAC);
    frame.extend_from_slice(&src_mac);
    frame.extend_from_slice(&0x0800u16.to_be_bytes());
    let ip_start = frame.len();
    frame.extend_from_slice(&ip_header(src, dst, proto, 20 + payload.len(), 64));
    debug_assert_eq!(frame.len() - ip_start, 20);
    frame.extend_from_slice(&payload);
    frame
}

/// An IPv6 extension header before the L4 one.
#[derive(Debug, Clone, Copy)]
pub enum Ext {
    /// Hop-by-hop (0), routing (43) or destination options (60), 8 bytes.
    Options(u8),
    /// A fragment header: `offset` in 8-byte units, `more` fragments.
    Fragment { offset: u16, more: bool },
}

/// An Ethernet + IPv6 frame from `src_mac`, with extension headers `exts`
/// (in order) before `l4`; ICMP messages are ICMPv6's (58).
pub fn ipv6_ext(src_mac: [u8; 6], src: Ipv6Addr, dst: Ipv6Addr, exts: &[Ext], l4: &L4) -> Vec<u8> {
    let (proto, l4) = l4_bytes(l4);
    let proto = if proto == 1 { 58 } else { proto };
    let kind = |e: &Ext| match e {
        Ext::Options(k) => *k,
        Ext::Fragment { .. } => 44,
    };
    let mut payload = Vec::new();
    for (i, e) in exts.iter().enumerate() {
        let next = exts.get(i + 1).map_or(proto, kind);
        let mut h = [0u8; 8];
        h[0] = next;
        if let Ext::Fragment { offset, more } = e {
            h[2..4].copy_from_slice(&((offset << 3) | u16::from(*more)).to_be_bytes());
        }
        payload.extend_from_slice(&h);
    }
    payload.extend_from_slice(&l4);
    let mut frame = Vec::with_capacity(14 + 40 + payload.len());
    frame.extend_from_slice(&GATEWAY_MAC);
    frame.extend_from_slice(&src_mac);
    frame.extend_from_slice(&0x86ddu16.to_be_bytes());
    frame.extend_from_slice(&ipv6_header(
        src,
        dst,
        exts.first().map_or(proto, kind),
        payload.len(),
        64,
    ));
    frame.extend_from_slice(&payload);
    frame
}

/// An Ethernet + IPv6 frame from `src_mac`.
pub fn ipv6(src_mac: [u8; 6], src: Ipv6Addr, dst: Ipv6Addr, l4: &L4) -> Vec<u8> {
    ipv6_ext(src_mac, src, dst, &[], l4)
}

/// A 40-byte IPv6 header.
pub fn ipv6_header(
    src: Ipv6Addr,
    dst: Ipv6Addr,
    next: u8,
    payload_len: usize,
    hop_limit: u8,
) -> [u8; 40] {
    let mut h = [0u8; 40];
    h[0] = 0x60;
    h[4..6].copy_from_slice(&(payload_len as u16).to_be_bytes());
    h[6] = next;
    h[7] = hop_limit;
    h[8..24].copy_from_slice(&src.octets());
    h[24..40].copy_from_slice(&dst.octets());
    h
}

/// What an ICMPv6 error quotes of a TCP or UDP packet: its IPv6 header
/// and the ports.
pub fn quote6(src: Ipv6Addr, dst: Ipv6Addr, proto: u8, sport: u16, dport: u16) -> Vec<u8> {
    let mut q = ipv6_header(src, dst, proto, 20, 64).to_vec();
    q.extend_from_slice(&sport.to_be_bytes());
    q.extend_from_slice(&dport.to_be_bytes());
    q.extend_from_slice(&[0; 4]);
    q
}

/// A 20-byte IPv4 header with a valid checksum.
pub fn ip_header(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, total_len: usize, ttl: u8) -> [u8; 20] {
    let mut h = [0u8; 20];
    h[0] = 0x45;
    h[2..4].copy_from_slice(&(total_len as u16).to_be_bytes());
    h[8] = ttl;
    h[9] = proto;
    h[12..16].copy_from_slice(&src.octets());
    h[16..20].copy_from_slice(&dst.octets());
    let sum: u32 = h
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum();
    let folded = !(((sum & 0xffff) + (sum >> 16)) as u16);
    h[10..12].copy_from_slice(&folded.to_be_bytes());
    h
}

/// What an ICMP error quotes of a TCP or UDP packet: its IP header and the
/// first 8 bytes (the ports) of its transport header.
pub fn quote(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, sport: u16, dport: u16) -> Vec<u8> {
    let mut q = ip_header(src, dst, proto, 40, 64).to_vec();
    q.extend_from_slice(&sport.to_be_bytes());
    q.extend_from_slice(&dport.to_be_bytes());
    q.extend_from_slice(&[0; 4]);
    q
}

/// An Ethernet frame of another type (ARP 0x0806, IPv6 0x86dd, …).
pub fn ether(src_mac: [u8; 6], ethertype: u16, payload_len: usize) -> Vec<u8> {
    let mut frame = Vec::new();
    frame.extend_from_slice(&GATEWAY_MAC);
    frame.extend_from_slice(&src_mac);
    frame.extend_from_slice(&ethertype.to_be_bytes());
    frame.resize(14 + payload_len, 0);
    frame
}

/// The one's-complement sum of `bytes` as 16-bit words, unfolded.
fn sum16(bytes: &[u8]) -> u32 {
    bytes
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum()
}

fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// Offset of the TCP/UDP/ICMP checksum field in an Ethernet + IPv4 frame.
fn l4_checksum_offset(frame: &[u8]) -> Option<usize> {
    let l4 = 14 + usize::from(frame[14] & 0x0f) * 4;
    match frame[23] {
        6 => Some(l4 + 16),
        17 => Some(l4 + 6),
        1 => Some(l4 + 2),
        _ => None,
    }
}

/// The L4 sum of an Ethernet + IPv4 frame: with the pseudo-header for TCP
/// and UDP, without for ICMP.
fn l4_sum(frame: &[u8]) -> u32 {
    let l4 = 14 + usize::from(frame[14] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([frame[16], frame[17]]));
    let segment = &frame[l4..14 + total];
    let mut sum = sum16(segment);
    if frame[23] != 1 {
        sum += sum16(&frame[26..34]) + u32::from(frame[23]) + segment.len() as u32;
    }
    sum
}

/// `frame` with a correct TCP, UDP or ICMP checksum.
pub fn with_l4_checksum(mut frame: Vec<u8>) -> Vec<u8> {
    let at = l4_checksum_offset(&frame).expect("TCP, UDP or ICMP");
    frame[at..at + 2].copy_from_slice(&[0, 0]);
    let sum = !fold(l4_sum(&frame));
    frame[at..at + 2].copy_from_slice(&sum.to_be_bytes());
    frame
}

/// Whether the IPv4 header checksum and the TCP/UDP/ICMP checksum of an
/// Ethernet + IPv4 frame are right.
pub fn checksums_ok(frame: &[u8]) -> bool {
    let ihl = usize::from(frame[14] & 0x0f) * 4;
    fold(sum16(&frame[14..14 + ihl])) == 0xffff && fold(l4_sum(frame)) == 0xffff
}
