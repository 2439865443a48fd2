/* SPDX-License-Identifier: GPL-2.0 */
/* Forwarding without the host stack: a packet from one local pod to
 * another goes straight to the destination pod's interface
 * (bpf_redirect_peer), skipping the host stack and the veth transmit path,
 * once the FIB has confirmed that the kernel would route it there; so does
 * a packet from the LAN for a local pod (from_net). A pod's packet for a
 * peer node's pod on our L2 is routed by the FIB and sent out of the
 * device it names (redirect_by_fib). Everything else takes the kernel
 * stack, so host netfilter (masquerade, node firewall) still sees it. */
#pragma once

#include "common.h"
#include "parse.h"

static const __u8 gateway_mac[ETH_ALEN] = {0xee, 0xee, 0xee, 0xee, 0xee, 0xee};

/* Asks the FIB where the packet goes, as if it arrived on the interface
 * it is on; fills `f`. */
static __always_inline long fib_lookup(struct __sk_buff *skb, const struct packet *p,
				       struct bpf_fib_lookup *f)
{
	f->family = AF_INET;
	f->l4_protocol = p->proto;
	f->sport = p->sport;
	f->dport = p->dport;
	/* tot_len 0: we ask where the packet goes, not whether it fits; a
	 * GSO packet's length would make the FIB answer FRAG_NEEDED. */
	f->tot_len = 0;
	f->ipv4_src = p->saddr;
	f->ipv4_dst = p->daddr;
	f->ifindex = skb->ifindex;
	return bpf_fib_lookup(skb, f, sizeof(*f), 0);
}

/* The FIB's next hop for the packet is the host veth `dst_ifindex`. */
static __always_inline bool fib_routes_to(struct __sk_buff *skb, const struct packet *p,
					  __u32 dst_ifindex)
{
	struct bpf_fib_lookup f = {};
	long rc = fib_lookup(skb, p, &f);
	/* NO_NEIGH is fine: we write the destination MAC ourselves. */
	return (rc == BPF_FIB_LKUP_RET_SUCCESS || rc == BPF_FIB_LKUP_RET_NO_NEIGH) &&
	       f.ifindex == dst_ifindex;
}

/* Decrements the TTL as a router does, with the header checksum. */
static __always_inline int ttl_decrement(struct __sk_buff *skb, const struct packet *p)
{
	__u32 ttl_off = ETH_HLEN + __builtin_offsetof(struct iphdr, ttl);
	__u32 csum_off = ETH_HLEN + __builtin_offsetof(struct iphdr, check);
	/* ttl and protocol share one 16-bit word of the header checksum. */
	__be16 old_word = bpf_htons(((__u16)p->ttl << 8) | p->proto);
	__be16 new_word = bpf_htons(((__u16)(p->ttl - 1) << 8) | p->proto);
	__u8 ttl = p->ttl - 1;
	if (bpf_l3_csum_replace(skb, csum_off, old_word, new_word, sizeof(new_word)) < 0 ||
	    bpf_skb_store_bytes(skb, ttl_off, &ttl, 1, 0) < 0)
		return -1;
	return 0;
}

/* Rewrites L2 as the host would (gateway MAC to the pod's `mac`),
 * decrements the TTL, and hands the packet to the pod behind host veth
 * `ifindex`. */
static __always_inline int redirect_to_pod(struct __sk_buff *skb, const struct packet *p,
					   __u32 ifindex, const __u8 *mac)
{
	if (ttl_decrement(skb, p) < 0 ||
	    bpf_skb_store_bytes(skb, 0, mac, ETH_ALEN, 0) < 0 ||
	    bpf_skb_store_bytes(skb, ETH_ALEN, gateway_mac, ETH_ALEN, 0) < 0)
		return TC_ACT_SHOT;
	return bpf_redirect_peer(ifindex, 0);
}

/* Routes the packet itself, by the FIB, out of the interface it names:
 * for a peer's pod, and for a reply whose source became one of the node's
 * own addresses (a NodePort's), which the stack would drop as a martian,
 * arriving from a veth with a local source. TC_ACT_OK (the stack) when the
 * FIB has no answer we can use, such as a packet too big for the device
 * (the stack then sends the sender the ICMP error). */
static __always_inline int redirect_by_fib(struct __sk_buff *skb, const struct packet *p)
{
	struct bpf_fib_lookup f = {};
	long rc = fib_lookup(skb, p, &f);
	if (rc != BPF_FIB_LKUP_RET_SUCCESS && rc != BPF_FIB_LKUP_RET_NO_NEIGH)
		return TC_ACT_OK;
	if (p->ttl <= 1 || ttl_decrement(skb, p) < 0)
		return TC_ACT_SHOT;
	if (rc == BPF_FIB_LKUP_RET_NO_NEIGH)
		return bpf_redirect_neigh(f.ifindex, NULL, 0, 0);
	if (bpf_skb_store_bytes(skb, 0, f.dmac, ETH_ALEN, 0) < 0 ||
	    bpf_skb_store_bytes(skb, ETH_ALEN, f.smac, ETH_ALEN, 0) < 0)
		return TC_ACT_SHOT;
	return bpf_redirect(f.ifindex, 0);
}
