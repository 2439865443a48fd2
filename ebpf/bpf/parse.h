/* SPDX-License-Identifier: GPL-2.0 */
/* Parsing: Ethernet, IPv4 or IPv6 (with its extension headers) and the
 * first L4 header into a flat summary. */
#pragma once

#include "common.h"

enum parse_result {
	PARSED_IPV4 = 0,
	PARSED_ARP,
	PARSED_IPV6,
	PARSE_FAILED,      /* -> DROP_PARSE */
	PARSE_UNSUPPORTED, /* -> DROP_UNSUPPORTED_L3 */
	PARSE_IPV6_EXT,    /* -> DROP_IPV6_EXT; the addresses are parsed */
};

struct packet {
	__u32 len;
	__be32 saddr; /* IPv4 */
	__be32 daddr;
	__be16 sport; /* ICMP echo: the identifier, in both ports */
	__be16 dport;
	__u8 proto;   /* IPv6: the header after the extension headers */
	__u8 tcp_flags; /* TCPF_* below */
	__u8 icmp_type; /* ICMP or ICMPv6 */
	__u8 ttl;       /* IPv6: the hop limit */
	__u8 fragment; /* a non-first fragment: no L4 header */
	__u8 ipv6;     /* saddr6/daddr6 hold the addresses, saddr/daddr 0 */
	__u8 dont_fragment; /* IPv4's DF */
	__u16 l4_off;  /* from the start of the frame */
	__u8 src_mac[6];
	union v6addr saddr6;
	union v6addr daddr6;
};

#define TCPF_FIN 0x01
#define TCPF_SYN 0x02
#define TCPF_RST 0x04
#define TCPF_ACK 0x10

#define IP_OFFSET_MASK 0x1fff
#define IP_DONT_FRAGMENT 0x4000

/* Extension headers walked before the L4 header; a longer chain is
 * dropped (DROP_IPV6_EXT), never passed unjudged. Four cover what hosts
 * send (hop-by-hop, destination options, routing, fragment). */
#define IPV6_MAX_EXT_HEADERS 4
/* Where an L4 header may start at most: bounds the walk for the verifier. */
#define IPV6_MAX_L4_OFF 512

/* The first L4 header at `l4` into `p` (`icmp_echo`: the echo request and
 * reply types of the packet's ICMP family); false when it is truncated. */
static __always_inline bool parse_l4(struct packet *p, void *l4, void *data_end, __u8 icmp_proto,
				     __u8 echo_request, __u8 echo_reply)
{
	switch (p->proto) {
	case IPPROTO_TCP: {
		struct tcphdr *tcp = l4;
		if ((void *)(tcp + 1) > data_end)
			return false;
		p->sport = tcp->source;
		p->dport = tcp->dest;
		p->tcp_flags = (tcp->fin ? TCPF_FIN : 0) | (tcp->syn ? TCPF_SYN : 0) |
			       (tcp->rst ? TCPF_RST : 0) | (tcp->ack ? TCPF_ACK : 0);
		return true;
	}
	case IPPROTO_UDP: {
		struct udphdr *udp = l4;
		if ((void *)(udp + 1) > data_end)
			return false;
		p->sport = udp->source;
		p->dport = udp->dest;
		return true;
	}
	default:
		break;
	}
	if (p->proto == icmp_proto) {
		/* ICMP and ICMPv6 share the first 8 bytes' layout. */
		struct icmphdr *icmp = l4;
		if ((void *)(icmp + 1) > data_end)
			return false;
		if (icmp->type == echo_request || icmp->type == echo_reply) {
			p->sport = icmp->un.echo.id;
			p->dport = icmp->un.echo.id;
		}
		p->icmp_type = icmp->type;
	}
	return true;
}

static __always_inline int parse_ipv4(struct packet *p, void *data, void *data_end)
{
	struct iphdr *ip = data + ETH_HLEN;
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
	p->fragment = (bpf_ntohs(ip->frag_off) & IP_OFFSET_MASK) != 0;
	p->dont_fragment = (bpf_ntohs(ip->frag_off) & IP_DONT_FRAGMENT) != 0;
	if (p->fragment)
		return PARSED_IPV4;
	p->l4_off = ETH_HLEN + ihl;
	if (!parse_l4(p, (void *)ip + ihl, data_end, IPPROTO_ICMP, ICMP_ECHO, ICMP_ECHOREPLY))
		return PARSE_FAILED;
	return PARSED_IPV4;
}

static __always_inline bool ipv6_is_ext_header(__u8 next)
{
	return next == IPPROTO_HOPOPTS || next == IPPROTO_ROUTING || next == IPPROTO_FRAGMENT ||
	       next == IPPROTO_DSTOPTS || next == IPPROTO_AH;
}

/* The fixed header, then the extension headers up to the L4 one. The
 * first fragment carries the L4 header and is judged by it, as in IPv4;
 * a later one has none. */
static __always_inline int parse_ipv6(struct packet *p, void *data, void *data_end)
{
	struct ipv6hdr *ip6 = data + ETH_HLEN;
	if ((void *)(ip6 + 1) > data_end)
		return PARSE_FAILED;
	if (ip6->version != 6)
		return PARSE_FAILED;
	p->ipv6 = 1;
	__builtin_memcpy(&p->saddr6, &ip6->saddr, sizeof(p->saddr6));
	__builtin_memcpy(&p->daddr6, &ip6->daddr, sizeof(p->daddr6));
	p->ttl = ip6->hop_limit;

	__u8 next = ip6->nexthdr;
	__u32 off = ETH_HLEN + sizeof(*ip6);
#pragma unroll
	for (int i = 0; i < IPV6_MAX_EXT_HEADERS; i++) {
		if (!ipv6_is_ext_header(next))
			break;
		struct ipv6_opt_hdr *ext = data + off;
		if ((void *)(ext + 1) > data_end)
			return PARSE_FAILED;
		if (next == IPPROTO_FRAGMENT) {
			struct ipv6_frag_hdr *frag = data + off;
			if ((void *)(frag + 1) > data_end)
				return PARSE_FAILED;
			if (bpf_ntohs(frag->frag_off) & IPV6_FRAG_OFFSET_MASK) {
				p->proto = frag->nexthdr;
				p->fragment = 1;
				return PARSED_IPV6;
			}
			off += sizeof(*frag);
		} else if (next == IPPROTO_AH) {
			off += (ext->hdrlen + 2) * 4;
		} else {
			off += (ext->hdrlen + 1) * 8;
		}
		next = ext->nexthdr;
		if (off > IPV6_MAX_L4_OFF)
			return PARSE_IPV6_EXT;
	}
	p->proto = next;
	if (ipv6_is_ext_header(next))
		return PARSE_IPV6_EXT;
	p->l4_off = off;
	if (!parse_l4(p, data + off, data_end, IPPROTO_ICMPV6, ICMPV6_ECHO_REQUEST,
		      ICMPV6_ECHO_REPLY))
		return PARSE_FAILED;
	return PARSED_IPV6;
}

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
		return parse_ipv4(p, data, data_end);
	case bpf_htons(ETH_P_IPV6):
		return parse_ipv6(p, data, data_end);
	case bpf_htons(ETH_P_ARP):
		return PARSED_ARP;
	default:
		return PARSE_UNSUPPORTED;
	}
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

/* The header an ICMPv6 error quotes, and the start of its L4 header: TCP
 * and UDP ports, or an echo's identifier. */
struct icmp6_quote {
	struct ipv6hdr ip;
	union {
		struct {
			__be16 sport;
			__be16 dport;
		} ports;
		struct {
			__u8 type;
			__u8 code;
			__sum16 checksum;
			__be16 id;
		} echo;
	};
};

/* Loads the quote of an ICMPv6 error (destination unreachable, packet too
 * big, time exceeded, parameter problem) into `q` with the quoted flow's
 * ports; false for any other packet, and for a quote whose L4 header
 * follows extension headers (not worth chasing). */
static __always_inline bool icmp6_error_quote(struct __sk_buff *skb, const struct packet *p,
					      struct icmp6_quote *q, __be16 *sport, __be16 *dport)
{
	if (p->proto != IPPROTO_ICMPV6 || p->fragment || p->icmp_type < ICMPV6_DEST_UNREACH ||
	    p->icmp_type > ICMPV6_PARAMPROB)
		return false;
	if (bpf_skb_load_bytes(skb, icmp_quote_off(p), q, sizeof(*q)) < 0)
		return false;
	switch (q->ip.nexthdr) {
	case IPPROTO_TCP:
	case IPPROTO_UDP:
		*sport = q->ports.sport;
		*dport = q->ports.dport;
		return true;
	case IPPROTO_ICMPV6:
		if (q->echo.type != ICMPV6_ECHO_REQUEST && q->echo.type != ICMPV6_ECHO_REPLY)
			return false;
		*sport = *dport = q->echo.id;
		return true;
	default:
		return false;
	}
}
