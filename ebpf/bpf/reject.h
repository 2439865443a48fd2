/* SPDX-License-Identifier: GPL-2.0 */
/* Answering instead of dropping, with ICMP destination unreachable built
 * in place of the packet and sent straight back: a connection to a
 * service with no backend is refused at once (port unreachable: TCP's
 * connect() fails with ECONNREFUSED, a connected UDP socket reads it)
 * rather than left to time out; a packet too big for the tunnel gets
 * "fragmentation needed" with the tunnel's MTU, as from a router on its
 * path, so the sender's path MTU discovery shrinks what it sends. */
#pragma once

#include "common.h"
#include "parse.h"
#include "forward.h"

#define ICMP_PORT_UNREACH 3
#define ICMP_FRAG_NEEDED 4

/* Two bytes ahead of the Ethernet header put the IP header on a 4-byte
 * boundary, as bpf_csum_diff reads it in words; the frame starts at eth. */
struct icmp_unreachable {
	__u8 align[2];
	struct ethhdr eth;
	struct iphdr ip;
	struct icmphdr icmp;
	__u8 quote[sizeof(struct iphdr) + 8]; /* the offending header + 8 bytes */
};

#define ICMP_UNREACHABLE_LEN (sizeof(struct icmp_unreachable) - 2)

static __always_inline __sum16 csum_fold(__u32 sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__sum16)~sum;
}

/* Where the answer goes. */
enum reject_path {
	REJECT_INTO_POD = 0, /* from a host veth's ingress into its pod */
	REJECT_BACK_OUT,     /* back out of the interface it came in by */
};

/* Replaces the packet with destination unreachable `code` (with `mtu`
 * for fragmentation needed) from `from`, addressed to its sender (the MACs
 * swapped), and sends it back. The quoted header names `from`:`to_port`
 * as its destination: what the sender wrote, before a translation of
 * ours, so its kernel finds the socket. Packets with IP options are not
 * answered (the quote would need their length): SEND_FAILED(DROP_REJECT),
 * as when the answer cannot be written. */
static __always_inline int reject_unreachable(struct __sk_buff *skb, const struct packet *p,
					      __u8 code, __u16 mtu, __be32 from, __be16 to_port,
					      enum reject_path path)
{
	struct icmp_unreachable r = {};
	if (bpf_skb_load_bytes(skb, ETH_HLEN, r.quote, sizeof(r.quote)) < 0 || r.quote[0] != 0x45 ||
	    bpf_skb_load_bytes(skb, 0, r.eth.h_source, ETH_ALEN) < 0)
		return SEND_FAILED(DROP_REJECT);
	struct iphdr *quoted = (struct iphdr *)r.quote;
	if (quoted->daddr != from || (p->proto != IPPROTO_ICMP && p->dport != to_port)) {
		quoted->daddr = from;
		if (p->proto != IPPROTO_ICMP) /* both ports lead TCP's and UDP's header */
			__builtin_memcpy(r.quote + sizeof(struct iphdr) + 2, &to_port, 2);
		quoted->check = 0;
		quoted->check = csum_fold(bpf_csum_diff(0, 0, (__be32 *)quoted, sizeof(*quoted), 0));
	}

	__builtin_memcpy(r.eth.h_dest, p->src_mac, ETH_ALEN);
	r.eth.h_proto = bpf_htons(ETH_P_IP);
	r.ip.version = 4;
	r.ip.ihl = 5;
	r.ip.tot_len = bpf_htons(ICMP_UNREACHABLE_LEN - sizeof(r.eth));
	r.ip.ttl = 64;
	r.ip.protocol = IPPROTO_ICMP;
	r.ip.saddr = from;
	r.ip.daddr = p->saddr;
	r.ip.check = csum_fold(bpf_csum_diff(0, 0, (__be32 *)&r.ip, sizeof(r.ip), 0));
	r.icmp.type = ICMP_DEST_UNREACH;
	r.icmp.code = code;
	r.icmp.un.frag.mtu = bpf_htons(mtu);
	/* icmp header and quote: 36 bytes, a multiple of 4 as csum_diff wants. */
	r.icmp.checksum =
		csum_fold(bpf_csum_diff(0, 0, (__be32 *)&r.icmp, sizeof(r.icmp) + sizeof(r.quote), 0));

	if (bpf_skb_change_tail(skb, ICMP_UNREACHABLE_LEN, 0) < 0 ||
	    bpf_skb_store_bytes(skb, 0, &r.eth, ICMP_UNREACHABLE_LEN, 0) < 0)
		return SEND_FAILED(DROP_REJECT);
	if (path == REJECT_INTO_POD)
		return bpf_redirect_peer(skb->ifindex, 0);
	return bpf_redirect(skb->ifindex, 0);
}

/* "Port unreachable" from the address the packet tried. */
static __always_inline int reject_port_unreachable(struct __sk_buff *skb, const struct packet *p,
						   enum reject_path path)
{
	return reject_unreachable(skb, p, ICMP_PORT_UNREACH, 0, p->daddr, p->dport, path);
}

/* An ICMPv6 error, laid out as reject6 builds it: the offending header and
 * 8 bytes of what follows it (as much as ICMPv6 must quote to name a
 * flow). */
struct icmp6_error {
	__u8 align[2];
	struct ethhdr eth;
	struct ipv6hdr ip;
	struct icmp6hdr icmp;
	__u8 quote[sizeof(struct ipv6hdr) + 8];
};

#define ICMP6_ERROR_LEN (sizeof(struct icmp6_error) - 2)
#define ICMP6_BODY_LEN (sizeof(struct icmp6hdr) + sizeof(struct ipv6hdr) + 8)

/* A TCP reset, laid out as reject6 builds it. */
struct tcp6_reset {
	__u8 align[2];
	struct ethhdr eth;
	struct ipv6hdr ip;
	struct tcphdr tcp;
};

#define TCP6_RESET_LEN (sizeof(struct tcp6_reset) - 2)

/* What reject6 answers, and how. */
struct reject6_how {
	/* Whom the packet's sender addressed (before a translation of ours):
	 * the answer comes from it, and its quote names it, so that the
	 * sender's kernel finds the socket. */
	union v6addr from;
	__be16 to_port;
	__u8 type; /* ICMPV6_DEST_UNREACH (port unreachable) or ICMPV6_PKT_TOOBIG */
	__u8 path; /* enum reject_path */
	__u32 mtu; /* ICMPV6_PKT_TOOBIG's */
};

/* The IPv6 header of a message built here: from `from` to the packet's
 * sender (the Ethernet source is filled in by reply6_send); and the
 * checksum of its pseudo-header (both addresses, `len` bytes of
 * `nexthdr`), every part a multiple of 4 bytes for csum_diff. */
static __always_inline __s64 reply6_header(struct ethhdr *eth, struct ipv6hdr *ip,
					   const struct packet *p, const union v6addr *from,
					   __u16 len, __u8 nexthdr)
{
	__builtin_memcpy(eth->h_dest, p->src_mac, ETH_ALEN);
	eth->h_proto = bpf_htons(ETH_P_IPV6);
	ip->version = 6;
	ip->payload_len = bpf_htons(len);
	ip->nexthdr = nexthdr;
	ip->hop_limit = 64;
	__builtin_memcpy(&ip->saddr, from, sizeof(ip->saddr));
	__builtin_memcpy(&ip->daddr, &p->saddr6, sizeof(ip->daddr));
	__be32 tail[2] = {bpf_htonl(len), bpf_htonl(nexthdr)};
	__s64 sum = bpf_csum_diff(0, 0, (__be32 *)&ip->saddr, 2 * sizeof(ip->saddr), 0);
	return bpf_csum_diff(0, 0, tail, sizeof(tail), sum);
}

/* Replaces the packet with `len` bytes from `frame`, an Ethernet frame
 * from the MAC the packet was sent to, and sends it back by `path`. */
static __always_inline int reply6_send(struct __sk_buff *skb, struct ethhdr *frame, __u32 len,
				       __u8 path)
{
	if (bpf_skb_load_bytes(skb, 0, frame->h_source, ETH_ALEN) < 0 ||
	    bpf_skb_change_tail(skb, len, 0) < 0 || bpf_skb_store_bytes(skb, 0, frame, len, 0) < 0)
		return SEND_FAILED(DROP_REJECT);
	if (path == REJECT_INTO_POD)
		return bpf_redirect_peer(skb->ifindex, 0);
	return bpf_redirect(skb->ifindex, 0);
}

/* A TCP reset answering the segment at p->l4_off, from how->from. */
static __always_inline int reject6_reset(struct __sk_buff *skb, const struct packet *p,
					 const struct reject6_how *how)
{
	struct tcphdr seg;
	if (bpf_skb_load_bytes(skb, p->l4_off, &seg, sizeof(seg)) < 0)
		return SEND_FAILED(DROP_REJECT);
	struct tcp6_reset r = {};
	r.tcp.source = how->to_port;
	r.tcp.dest = seg.source;
	r.tcp.doff = sizeof(r.tcp) / 4;
	r.tcp.rst = 1;
	if (seg.ack) {
		r.tcp.seq = seg.ack_seq;
	} else {
		/* What the segment occupied of the sequence space. */
		__u32 payload = skb->len - ETH_HLEN - sizeof(struct ipv6hdr);
		__u32 hdrs = p->l4_off - ETH_HLEN - sizeof(struct ipv6hdr) + seg.doff * 4;
		__u32 data = payload > hdrs ? payload - hdrs : 0;
		r.tcp.ack_seq = bpf_htonl(bpf_ntohl(seg.seq) + data + seg.syn + seg.fin);
		r.tcp.ack = 1;
	}
	__s64 sum = reply6_header(&r.eth, &r.ip, p, &how->from, sizeof(r.tcp), IPPROTO_TCP);
	r.tcp.check = csum_fold(bpf_csum_diff(0, 0, (__be32 *)&r.tcp, sizeof(r.tcp), sum));
	return reply6_send(skb, &r.eth, TCP6_RESET_LEN, how->path);
}

/* Answers an IPv6 packet, sent back by how->path, with ICMPv6 `how->type`
 * from how->from quoting the packet as its sender sent it (to how->from,
 * how->to_port): port unreachable for a service with no backend, packet
 * too big (with how->mtu) for one too big for the tunnel
 * (reject_unreachable's IPv6 twin). Port unreachable to TCP is a reset
 * instead (RFC 9293's answer to a segment for no connection), which its
 * socket takes as ECONNREFUSED as it takes port unreachable: the answer
 * reaches the sender while its connect() still holds the socket, and IPv6
 * TCP drops an ICMPv6 error arriving then (LockDroppedIcmps), waiting for
 * the SYN's retransmission a second later, where a segment is queued to
 * the socket's backlog and handled as connect() returns. A global
 * function: the answer is built on a stack frame of its own. */
__attribute__((noinline)) int reject6(struct __sk_buff *skb, const struct packet *p,
				      const struct reject6_how *how)
{
	if (!p || !how) /* never: the caller's; the verifier asks */
		return SEND_FAILED(DROP_REJECT);
	if (how->type == ICMPV6_DEST_UNREACH && p->proto == IPPROTO_TCP)
		return reject6_reset(skb, p, how);
	struct icmp6_error r = {};
	if (bpf_skb_load_bytes(skb, ETH_HLEN, r.quote, sizeof(r.quote)) < 0)
		return SEND_FAILED(DROP_REJECT);
	struct ipv6hdr *quoted = (struct ipv6hdr *)r.quote;
	__builtin_memcpy(&quoted->daddr, &how->from, sizeof(quoted->daddr));
	/* The ports follow the header unless extension headers do. */
	if ((p->proto == IPPROTO_TCP || p->proto == IPPROTO_UDP) &&
	    p->l4_off == ETH_HLEN + sizeof(struct ipv6hdr))
		__builtin_memcpy(r.quote + sizeof(struct ipv6hdr) + 2, &how->to_port, 2);
	r.icmp.icmp6_type = how->type;
	if (how->type == ICMPV6_PKT_TOOBIG)
		r.icmp.icmp6_mtu = bpf_htonl(how->mtu);
	else
		r.icmp.icmp6_code = ICMPV6_PORT_UNREACH;
	__s64 sum = reply6_header(&r.eth, &r.ip, p, &how->from, ICMP6_BODY_LEN, IPPROTO_ICMPV6);
	r.icmp.icmp6_cksum = csum_fold(bpf_csum_diff(0, 0, (__be32 *)&r.icmp, ICMP6_BODY_LEN, sum));
	return reply6_send(skb, &r.eth, ICMP6_ERROR_LEN, how->path);
}

/* "Port unreachable" from the address an IPv6 packet tried (it was not
 * translated), back by `path`. */
static __always_inline int reject6_port_unreachable(struct __sk_buff *skb, const struct packet *p,
						    enum reject_path path)
{
	struct reject6_how how = {
		.from = p->daddr6,
		.to_port = p->dport,
		.type = ICMPV6_DEST_UNREACH,
		.path = path,
	};
	return reject6(skb, p, &how);
}
