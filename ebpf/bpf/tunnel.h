/* SPDX-License-Identifier: GPL-2.0 */
/* Other nodes: where their pods live, and the VXLAN tunnel to them. The
 * tunnel is one kernel VXLAN device in external (metadata) mode per node;
 * the programs choose each packet's far end and network identifier and
 * redirect it there, and the device's own ingress program (from_tunnel)
 * sees what arrives with the identifier and the sender's address. */
#pragma once

#include "common.h"
#include "node.h"
#include "parse.h"
#include "events.h"
#include "forward.h"
#include "reject.h"

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, MAX_NODE_PEERS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct peer_key);
	__type(value, struct peer);
} node_peers SEC(".maps");

/* Their IPv6 pod CIDRs. A pod's IPv6 leaves the node by the stack (by the
 * routes userspace writes from this map); from_net reads it to send a
 * NodePort's flow to a backend on another node. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, MAX_NODE_PEERS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct peer_key6);
	__type(value, struct peer);
} node_peers6 SEC(".maps");

/* The peers' IPv6 addresses on the nodes' network, by their IPv4 ones
 * (those their peer entries name), for the peers that have one: IPv6 DSR
 * tunnels to it. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_NODE_PEERS);
	__type(key, __be32);
	__type(value, union v6addr);
} peer_addrs6 SEC(".maps");

/* The node whose pods' CIDR holds `addr`, or NULL. */
static __always_inline struct peer *peer_of(__be32 addr)
{
	struct peer_key k = {.prefixlen = 32, .addr = addr};
	return bpf_map_lookup_elem(&node_peers, &k);
}

/* The node whose pods' IPv6 CIDR holds `addr`, or NULL. */
static __always_inline struct peer *peer6_of(const union v6addr *addr)
{
	struct peer_key6 k = {.prefixlen = 128, .addr = *addr};
	return bpf_map_lookup_elem(&node_peers6, &k);
}

/* Sends the packet (its Ethernet frame, as is) through the tunnel to
 * `node` with identifier `vni`. SEND_FAILED(DROP_NO_TUNNEL) when the node
 * has no tunnel (a flow's entry or a peer still names the tunnel after it
 * was removed). */
static __always_inline int tunnel_send(struct __sk_buff *skb, __be32 node, __u32 vni)
{
	struct node_config *cfg = node_settings();
	if (!cfg || !cfg->tunnel_ifindex)
		return SEND_FAILED(DROP_NO_TUNNEL);
	struct bpf_tunnel_key key = {
		.remote_ipv4 = bpf_ntohl(node),
		.tunnel_id = vni,
		.tunnel_ttl = 64,
	};
	if (bpf_skb_set_tunnel_key(skb, &key, sizeof(key), BPF_F_ZERO_CSUM_TX) < 0)
		return SEND_FAILED(DROP_ENCAP);
	return bpf_redirect(cfg->tunnel_ifindex, 0);
}

/* tunnel_send with an IPv6 outer header, from `from` (which must be one
 * of this node's addresses) to `node`: what an IPv6 DSR packet takes, its
 * outer source naming the NodePort's address as the IPv4 one does. The
 * UDP checksum is kept (IPv6 wants one). */
static __always_inline int tunnel_send6(struct __sk_buff *skb, const union v6addr *node,
					const union v6addr *from, __u32 vni)
{
	struct node_config *cfg = node_settings();
	if (!cfg || !cfg->tunnel_ifindex)
		return SEND_FAILED(DROP_NO_TUNNEL);
	struct bpf_tunnel_key key = {.tunnel_id = vni, .tunnel_ttl = 64};
	__builtin_memcpy(key.remote_ipv6, node, sizeof(key.remote_ipv6));
	__builtin_memcpy(key.local_ipv6, from, sizeof(key.local_ipv6));
	if (bpf_skb_set_tunnel_key(skb, &key, sizeof(key), BPF_F_TUNINFO_IPV6) < 0)
		return SEND_FAILED(DROP_ENCAP);
	return bpf_redirect(cfg->tunnel_ifindex, 0);
}

/* The IP length of the packet's segments (a GSO packet's: its headers
 * and gso_size of payload; others': the packet's). */
static __always_inline __u32 segment_len(struct __sk_buff *skb, const struct packet *p)
{
	if (!skb->gso_size)
		return skb->len - ETH_HLEN;
	__u32 l4_header = sizeof(struct udphdr);
	if (p->proto == IPPROTO_TCP) {
		__u8 doff;
		if (bpf_skb_load_bytes(skb, p->l4_off + 12, &doff, 1) < 0)
			return skb->len - ETH_HLEN;
		l4_header = (doff >> 4) * 4;
	}
	return p->l4_off - ETH_HLEN + l4_header + skb->gso_size;
}

/* Whether the packet, sent with DF (as every IPv6 packet is), is too big
 * for the tunnel device (a GSO packet: its segments), whose MTU the loader
 * keeps at the data interfaces' less IPv4's encapsulation; that MTU in
 * `*mtu`, less `extra` (an IPv6 outer header's 20 more bytes: the kernel
 * checks segments only without such a difference, so those are measured
 * here). An IPv4 packet without DF is not: its outer packet may be
 * fragmented. */
static __always_inline bool tunnel_too_big(struct __sk_buff *skb, const struct packet *p,
					   __u32 extra, __u32 *mtu)
{
	struct node_config *cfg = node_settings();
	if (!cfg || !cfg->tunnel_ifindex || !(p->ipv6 || p->dont_fragment))
		return false;
	*mtu = 0;
	if (!extra)
		return bpf_check_mtu(skb, cfg->tunnel_ifindex, mtu, 0, BPF_MTU_CHK_SEGS) > 0;
	/* Fills in the device's MTU. */
	if (bpf_check_mtu(skb, cfg->tunnel_ifindex, mtu, 0, 0) < 0)
		return false;
	*mtu -= extra;
	return segment_len(skb, p) > *mtu;
}

/* tunnel_send for a packet of `slot`'s `dir` side, counted (forwarded),
 * unless it is too big for the tunnel (tunnel_too_big): then it is
 * dropped (DROP_TOO_BIG) and its sender told "fragmentation needed" with
 * the tunnel's MTU, by `from` about its packet to `from`:`to_port`
 * (reject_unreachable), back by `path`. Without this the kernel would
 * fragment every full-sized packet's encapsulation, and the far node
 * reassemble it. */
static __always_inline int tunnel_send_fitting(struct __sk_buff *skb, const struct packet *p,
					       __be32 node, __u32 vni, __u32 slot, __u8 dir,
					       __be32 from, __be16 to_port, enum reject_path path)
{
	__u32 mtu;
	if (!tunnel_too_big(skb, p, 0, &mtu))
		return forwarded(tunnel_send(skb, node, vni), p, slot, skb->ifindex, dir);
	return rejected(reject_unreachable(skb, p, ICMP_FRAG_NEEDED, mtu, from, to_port, path), p,
			slot, skb->ifindex, dir, DROP_TOO_BIG);
}

/* What a DSR packet's identifier says: the NodePort it was sent to. */
static __always_inline __u32 vni_dsr(__be16 node_port, __u8 proto)
{
	return VNI_DSR | (proto == IPPROTO_UDP ? VNI_DSR_UDP : 0) | bpf_ntohs(node_port);
}

/* How a pod's packets to `addr` leave the node, decided when their flow
 * is created and kept in its conntrack entry, so that an established
 * packet looks nothing else up: CT_F_TUNNEL for a peer's pods behind the
 * tunnel (the peer's address in `*via`), CT_F_PEER_ROUTED for a peer's
 * pods on our L2, 0 for the host stack. Only the cluster's pods bypass
 * the stack: traffic leaving the cluster meets host netfilter
 * (masquerade, the node's firewall) as before. */
static __always_inline __u8 route_to(__be32 addr, __be32 *via)
{
	struct peer *peer = peer_of(addr);
	if (!peer)
		return 0;
	if (!(peer->flags & PEER_F_ENCAP))
		return CT_F_PEER_ROUTED;
	struct node_config *cfg = node_settings();
	if (!cfg || !cfg->tunnel_ifindex)
		return 0;
	*via = peer->node;
	return CT_F_TUNNEL;
}

/* Sends a pod's packet (of endpoint `slot`) off the node the way route_to
 * chose (`route`, in conntrack flags), and counts it (forwarded). One too
 * big for the tunnel gets
 * its pod "fragmentation needed", unless it was translated to a service's
 * backend: the pod's kernel would not know the quoted destination, and
 * the packet goes fragmented rather than lost. */
static __always_inline int leave_node(struct __sk_buff *skb, const struct packet *p, __u8 route,
				      __be32 via, __u32 slot)
{
	if ((route & CT_F_TUNNEL) && (route & CT_F_SERVICE))
		return forwarded(tunnel_send(skb, via, VNI_POD), p, slot, skb->ifindex, DIR_EGRESS);
	if (route & CT_F_TUNNEL)
		return tunnel_send_fitting(skb, p, via, VNI_POD, slot, DIR_EGRESS, p->daddr, p->dport,
					   REJECT_INTO_POD);
	int verdict = route & CT_F_PEER_ROUTED ? redirect_by_fib(skb, p) : TC_ACT_OK;
	return forwarded(verdict, p, slot, skb->ifindex, DIR_EGRESS);
}
