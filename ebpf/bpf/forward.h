/* SPDX-License-Identifier: GPL-2.0 */
/* Local delivery: a packet from one local pod to another goes straight to
 * the destination pod's interface (bpf_redirect_peer), skipping the host
 * stack and the veth transmit path, once the FIB has confirmed that the
 * kernel would route it there. Everything else takes the kernel stack, so
 * host netfilter (masquerade, node firewall) still sees it. */
#pragma once

#include "common.h"
#include "parse.h"

static const __u8 gateway_mac[ETH_ALEN] = {0xee, 0xee, 0xee, 0xee, 0xee, 0xee};

/* The FIB's next hop for the packet is the host veth `dst_ifindex`. */
static __always_inline bool fib_routes_to(struct __sk_buff *skb, const struct packet *p,
					  __u32 dst_ifindex)
{
	struct bpf_fib_lookup f = {};
	f.family = AF_INET;
	f.l4_protocol = p->proto;
	f.sport = p->sport;
	f.dport = p->dport;
	/* tot_len 0: we ask where the packet goes, not whether it fits; a
	 * GSO packet's length would make the FIB answer FRAG_NEEDED. */
	f.tot_len = 0;
	f.ipv4_src = p->saddr;
	f.ipv4_dst = p->daddr;
	f.ifindex = skb->ifindex;
	long rc = bpf_fib_lookup(skb, &f, sizeof(f), 0);
	/* NO_NEIGH is fine: we write the destination MAC ourselves. */
	return (rc == BPF_FIB_LKUP_RET_SUCCESS || rc == BPF_FIB_LKUP_RET_NO_NEIGH) &&
	       f.ifindex == dst_ifindex;
}

/* Rewrites L2 as the host would (gateway MAC to the pod's `mac`),
 * decrements the TTL, and hands the packet to the pod behind host veth
 * `ifindex`. */
static __always_inline int redirect_to_pod(struct __sk_buff *skb, const struct packet *p,
					   __u32 ifindex, const __u8 *mac)
{
	__u32 ttl_off = ETH_HLEN + __builtin_offsetof(struct iphdr, ttl);
	__u32 csum_off = ETH_HLEN + __builtin_offsetof(struct iphdr, check);
	/* ttl and protocol share one 16-bit word of the header checksum. */
	__be16 old_word = bpf_htons(((__u16)p->ttl << 8) | p->proto);
	__be16 new_word = bpf_htons(((__u16)(p->ttl - 1) << 8) | p->proto);
	__u8 ttl = p->ttl - 1;

	if (bpf_l3_csum_replace(skb, csum_off, old_word, new_word, sizeof(new_word)) < 0 ||
	    bpf_skb_store_bytes(skb, ttl_off, &ttl, 1, 0) < 0 ||
	    bpf_skb_store_bytes(skb, 0, mac, ETH_ALEN, 0) < 0 ||
	    bpf_skb_store_bytes(skb, ETH_ALEN, gateway_mac, ETH_ALEN, 0) < 0)
		return TC_ACT_SHOT;
	return bpf_redirect_peer(ifindex, 0);
}
