/* SPDX-License-Identifier: GPL-2.0 */
#pragma once

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/icmpv6.h>
#include <linux/pkt_cls.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <stdbool.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "abi.h"

#ifndef AF_INET
#define AF_INET 2
#endif
#ifndef AF_INET6
#define AF_INET6 10
#endif

/* <linux/icmp.h> drags in libc's socket headers, which do not build for
 * the BPF target; what we need of it: */
#define ICMP_ECHOREPLY 0
#define ICMP_DEST_UNREACH 3
#define ICMP_ECHO 8
#define ICMP_TIME_EXCEEDED 11
#define ICMP_PARAMETERPROB 12

struct icmphdr {
	__u8 type;
	__u8 code;
	__sum16 checksum;
	union {
		struct {
			__be16 id;
			__be16 sequence;
		} echo;
		__be32 gateway;
		struct {
			__be16 unused;
			__be16 mtu; /* fragmentation needed: the next hop's */
		} frag;
	} un;
};

/* What a helper that sends the packet on (a redirect, the tunnel, an
 * answer in its place) returns when it cannot: the drop's reason (enum
 * drop_reason), which the caller counts with the packet's endpoint and side
 * (forwarded(), sent(), rejected() in events.h). Below every TC_ACT_*
 * verdict, so that a helper's verdict is one int. */
#define SEND_FAILED(reason) (-64 - (int)(reason))

static __always_inline bool v6addr_equal(const union v6addr *a, const union v6addr *b)
{
	return ((a->w[0] ^ b->w[0]) | (a->w[1] ^ b->w[1]) | (a->w[2] ^ b->w[2]) |
		(a->w[3] ^ b->w[3])) == 0;
}

static __always_inline bool v6_unspecified(const union v6addr *a)
{
	return (a->w[0] | a->w[1] | a->w[2] | a->w[3]) == 0;
}

/* What we need of the kernel's own IPv6 headers (net/ipv6.h, net/ndisc.h),
 * which are not exported to userspace. */
struct ipv6_frag_hdr {
	__u8 nexthdr;
	__u8 reserved;
	__be16 frag_off;
	__be32 identification;
};
#define IPV6_FRAG_OFFSET_MASK 0xfff8

#define NDISC_ROUTER_SOLICITATION 133
#define NDISC_ROUTER_ADVERTISEMENT 134
#define NDISC_NEIGHBOUR_SOLICITATION 135
#define NDISC_NEIGHBOUR_ADVERTISEMENT 136
#define NDISC_REDIRECT 137
