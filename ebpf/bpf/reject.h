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
 * ours, so its kernel finds the socket. Packets with IP options are
 * dropped instead (the quote would need their length). */
static __always_inline int reject_unreachable(struct __sk_buff *skb, const struct packet *p,
					      __u8 code, __u16 mtu, __be32 from, __be16 to_port,
					      enum reject_path path)
{
	struct icmp_unreachable r = {};
	if (bpf_skb_load_bytes(skb, ETH_HLEN, r.quote, sizeof(r.quote)) < 0 || r.quote[0] != 0x45 ||
	    bpf_skb_load_bytes(skb, 0, r.eth.h_source, ETH_ALEN) < 0)
		return TC_ACT_SHOT;
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
		return TC_ACT_SHOT;
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
