/* SPDX-License-Identifier: GPL-2.0 */
/* Parsing: Ethernet, IPv4 and the first L4 header into a flat summary. */
#pragma once

#include "common.h"

enum parse_result {
	PARSED_IPV4 = 0,
	PARSED_ARP,
	PARSED_IPV6,
	PARSE_FAILED,      /* -> DROP_PARSE */
	PARSE_UNSUPPORTED, /* -> DROP_UNSUPPORTED_L3 */
};

struct packet {
	__u32 len;
	__be32 saddr;
	__be32 daddr;
	__be16 sport; /* ICMP echo: the identifier, in both ports */
	__be16 dport;
	__u8 proto;
	__u8 tcp_flags; /* TCPF_* below */
	__u8 icmp_type;
	__u8 ttl;
	__u8 fragment; /* a non-first fragment: no L4 header */
	__u16 l4_off;  /* from the start of the frame */
	__u8 src_mac[6];
};

#define TCPF_FIN 0x01
#define TCPF_SYN 0x02
#define TCPF_RST 0x04
#define TCPF_ACK 0x10

#define IP_OFFSET_MASK 0x1fff

static __always_inline int parse_packet(struct __sk_buff *skb, struct packet *p)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;

	if ((void *)(eth + 1) > data_end)
		return PARSE_FAILED;
	__builtin_memcpy(p->src_mac, eth->h_source, ETH_ALEN);
	p->len = skb->len;

	switch (eth->h_proto) {
	case bpf_htons(ETH_P_IP):
		break;
	case bpf_htons(ETH_P_ARP):
		return PARSED_ARP;
	case bpf_htons(ETH_P_IPV6):
		return PARSED_IPV6;
	default:
		return PARSE_UNSUPPORTED;
	}

	struct iphdr *ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > data_end)
		return PARSE_FAILED;
	if (ip->version != 4 || ip->ihl < 5)
		return PARSE_FAILED;
	__u32 ihl = ip->ihl * 4;
	if ((void *)ip + ihl > data_end)
		return PARSE_FAILED;

	p->saddr = ip->saddr;
	p->daddr = ip->daddr;
	p->proto = ip->protocol;
	p->ttl = ip->ttl;
	p->sport = 0;
	p->dport = 0;
	p->tcp_flags = 0;
	p->icmp_type = 0;
	p->fragment = (bpf_ntohs(ip->frag_off) & IP_OFFSET_MASK) != 0;
	if (p->fragment)
		return PARSED_IPV4;

	void *l4 = (void *)ip + ihl;
	p->l4_off = sizeof(*eth) + ihl;
	switch (ip->protocol) {
	case IPPROTO_TCP: {
		struct tcphdr *tcp = l4;
		if ((void *)(tcp + 1) > data_end)
			return PARSE_FAILED;
		p->sport = tcp->source;
		p->dport = tcp->dest;
		p->tcp_flags = (tcp->fin ? TCPF_FIN : 0) | (tcp->syn ? TCPF_SYN : 0) |
			       (tcp->rst ? TCPF_RST : 0) | (tcp->ack ? TCPF_ACK : 0);
		break;
	}
	case IPPROTO_UDP: {
		struct udphdr *udp = l4;
		if ((void *)(udp + 1) > data_end)
			return PARSE_FAILED;
		p->sport = udp->source;
		p->dport = udp->dest;
		break;
	}
	case IPPROTO_ICMP: {
		struct icmphdr *icmp = l4;
		if ((void *)(icmp + 1) > data_end)
			return PARSE_FAILED;
		if (icmp->type == ICMP_ECHO || icmp->type == ICMP_ECHOREPLY) {
			p->sport = icmp->un.echo.id;
			p->dport = icmp->un.echo.id;
		}
		p->icmp_type = icmp->type;
		break;
	}
	default:
		break;
	}
	return PARSED_IPV4;
}

/* The header an ICMP error quotes: the packet it is about, as that packet
 * was when the error's sender saw it, and its ports. */
struct icmp_quote {
	struct iphdr ip;
	__be16 sport;
	__be16 dport;
};

/* Offset of an ICMP error's quoted IP header, from the frame's start. */
static __always_inline __u32 icmp_quote_off(const struct packet *p)
{
	return p->l4_off + sizeof(struct icmphdr);
}

/* Loads the quote of an ICMP error (destination unreachable, time
 * exceeded, parameter problem) into `q`; false for any other packet, and
 * for a quote with IP options (not worth chasing). */
static __always_inline bool icmp_error_quote(struct __sk_buff *skb, const struct packet *p,
					     struct icmp_quote *q)
{
	if (p->proto != IPPROTO_ICMP || p->fragment)
		return false;
	if (p->icmp_type != ICMP_DEST_UNREACH && p->icmp_type != ICMP_TIME_EXCEEDED &&
	    p->icmp_type != ICMP_PARAMETERPROB)
		return false;
	return bpf_skb_load_bytes(skb, icmp_quote_off(p), q, sizeof(*q)) == 0 && q->ip.ihl == 5;
}
