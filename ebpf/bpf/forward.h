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
#include "endpoint.h"

static const __u8 gateway_mac[ETH_ALEN] = {0xee, 0xee, 0xee, 0xee, 0xee, 0xee};

/* Asks the FIB where the packet goes, as if it arrived on the interface
 * it is on; fills `f`. */
static __always_inline long fib_lookup(struct __sk_buff *skb, const struct packet *p,
				       struct bpf_fib_lookup *f)
{
	f->l4_protocol = p->proto;
	f->sport = p->sport;
	f->dport = p->dport;
	/* tot_len 0: we ask where the packet goes, not whether it fits; a
	 * GSO packet's length would make the FIB answer FRAG_NEEDED. */
	f->tot_len = 0;
	if (p->ipv6) {
		f->family = AF_INET6;
		__builtin_memcpy(f->ipv6_src, &p->saddr6, sizeof(f->ipv6_src));
		__builtin_memcpy(f->ipv6_dst, &p->daddr6, sizeof(f->ipv6_dst));
	} else {
		f->family = AF_INET;
		f->ipv4_src = p->saddr;
		f->ipv4_dst = p->daddr;
	}
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

/* The host veth of the local pod an IPv6 packet is for, or 0: where the
 * FIB routes it, if the pod there owns its destination. (IPv6 has no
 * index of endpoints by address: the FIB's answer is the index, and it
 * confirms that the kernel would route the packet there.) */
static __always_inline __u32 local_endpoint6_ifindex(struct __sk_buff *skb,
						     const struct packet *p)
{
	struct bpf_fib_lookup f = {};
	long rc = fib_lookup(skb, p, &f);
	if (rc != BPF_FIB_LKUP_RET_SUCCESS && rc != BPF_FIB_LKUP_RET_NO_NEIGH)
		return 0;
	return endpoint6_owns(f.ifindex, &p->daddr6) ? f.ifindex : 0;
}

/* Does what a router does to a packet it forwards (TTL decremented, with
 * the header checksum; the frame addressed from `smac` to `dmac`), by
 * direct writes: three helper calls fewer per packet than with
 * bpf_skb_store_bytes and bpf_l3_csum_replace, each of which costs a
 * guest that mitigates SRSO ~20 ns. `dmac` NULL: L2 is left to whoever
 * sends it (bpf_redirect_neigh). False when the headers are not in the
 * packet's linear part (parse_packet has found them there already). */
static __always_inline bool forward_rewrite(struct __sk_buff *skb, const __u8 *dmac,
					    const __u8 *smac)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = data + ETH_HLEN;
	if ((void *)(ip + 1) > data_end)
		return false;
	/* RFC 1624's incremental update for a TTL one lower, as the kernel's
	 * ip_decrease_ttl: the TTL is the high byte of its checksummed word. */
	__u32 check = ip->check;
	check += bpf_htons(0x0100);
	ip->check = (__sum16)(check + (check >= 0xffff));
	ip->ttl--;
	if (dmac) {
		__builtin_memcpy(eth->h_dest, dmac, ETH_ALEN);
		__builtin_memcpy(eth->h_source, smac, ETH_ALEN);
	}
	return true;
}

/* Rewrites L2 as the host would (gateway MAC to the pod's `mac`),
 * decrements the TTL, and hands the packet to the pod behind host veth
 * `ifindex`. */
static __always_inline int redirect_to_pod(struct __sk_buff *skb, __u32 ifindex, const __u8 *mac)
{
	if (!forward_rewrite(skb, mac, gateway_mac))
		return SEND_FAILED(DROP_FORWARD);
	return bpf_redirect_peer(ifindex, 0);
}

/* redirect_to_pod for an IPv6 packet: its hop limit decremented (IPv6
 * has no header checksum). The stack takes a packet whose header is not
 * in the linear part. */
static __always_inline int redirect_to_pod6(struct __sk_buff *skb, __u32 ifindex, const __u8 *mac)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct ipv6hdr *ip6 = data + ETH_HLEN;
	if ((void *)(ip6 + 1) > data_end)
		return TC_ACT_OK;
	ip6->hop_limit--;
	__builtin_memcpy(eth->h_dest, mac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, gateway_mac, ETH_ALEN);
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
	if (p->ttl <= 1) /* the stack sends time-exceeded */
		return TC_ACT_OK;
	if (rc == BPF_FIB_LKUP_RET_NO_NEIGH) {
		/* The neighbour subsystem writes L2 (resolving it first). */
		if (!forward_rewrite(skb, NULL, NULL))
			return SEND_FAILED(DROP_FORWARD);
		return bpf_redirect_neigh(f.ifindex, NULL, 0, 0);
	}
	if (!forward_rewrite(skb, f.dmac, f.smac))
		return SEND_FAILED(DROP_FORWARD);
	return bpf_redirect(f.ifindex, 0);
}
