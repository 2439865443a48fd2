/* SPDX-License-Identifier: GPL-2.0 */
/* Connection tracking: one LRU entry per flow and endpoint, TCP state by
 * flags, idle timeouts by state. Replies of a tracked flow pass without a
 * policy lookup; ICMP errors about a tracked flow pass as related. IPv6
 * flows have a table of their own (conntrack6), so that IPv4's keys stay
 * 20 bytes; entries, states and timeouts are the same. */
#pragma once

#include "common.h"
#include "config.h"
#include "parse.h"
#include "events.h"

/* One LRU list for the map: per-CPU lists (BPF_F_NO_COMMON_LRU) measured
 * no faster here, and would evict early on a CPU that carries most flows. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536); /* the loader sets the configured size */
	__type(key, struct ct_key);
	__type(value, struct ct_entry);
} conntrack SEC(".maps");

/* The loader sizes it as conntrack (bpf_conntrack_size, per family). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct ct_key6);
	__type(value, struct ct_entry);
} conntrack6 SEC(".maps");

/* How stale last_seen may get: timeouts are seconds to hours, and writing
 * the entry less often keeps it in both directions' CPU caches. */
#define CT_REFRESH_NS SEC_NS

/* Idle timeouts, refreshed by every packet of the flow (ct_timeout). A
 * translation (nat.h) lives as long as the longest of its protocol's, to
 * outlive its flow's tracking. */
#define CT_TIMEOUT_TCP_SYN_SENT (60 * SEC_NS)
#define CT_TIMEOUT_TCP_ESTABLISHED (6 * 3600 * SEC_NS)
#define CT_TIMEOUT_TCP_FIN_WAIT (120 * SEC_NS)
#define CT_TIMEOUT_TCP_CLOSING (10 * SEC_NS)
#define CT_TIMEOUT_UDP_ESTABLISHED (180 * SEC_NS)
#define CT_TIMEOUT_UDP_NEW (60 * SEC_NS)
#define CT_TIMEOUT_OTHER (30 * SEC_NS)

/* A flow's idle timeout, by its protocol and state. */
static __always_inline __u64 ct_timeout(const struct ct_entry *e, __u8 proto)
{
	if (proto == IPPROTO_TCP) {
		switch (e->state) {
		case CT_SYN_SENT:
			return CT_TIMEOUT_TCP_SYN_SENT;
		case CT_ESTABLISHED:
			return CT_TIMEOUT_TCP_ESTABLISHED;
		case CT_FIN_WAIT:
			return CT_TIMEOUT_TCP_FIN_WAIT;
		default: /* closing, closed */
			return CT_TIMEOUT_TCP_CLOSING;
		}
	}
	if (proto == IPPROTO_UDP)
		return e->state == CT_ESTABLISHED ? CT_TIMEOUT_UDP_ESTABLISHED : CT_TIMEOUT_UDP_NEW;
	return CT_TIMEOUT_OTHER;
}

/* Whether `e` has been idle longer than its timeout at `now`. Another CPU
 * may have refreshed last_seen after we read `now`: the difference is
 * signed, or that race would read as an entry idle for 500 years and a
 * live flow would be re-created mid-stream. */
static __always_inline bool ct_expired(const struct ct_entry *e, __u64 now, __u8 proto)
{
	return (__s64)(now - e->last_seen_ns) > (__s64)ct_timeout(e, proto);
}

enum ct_result {
	CT_MISS = 0,
	CT_ORIGINAL,
	CT_REPLY,
};

/* Fills `k` for the flow of (saddr, sport) -> (daddr, dport) on `ifindex`;
 * true when the sender is side a. */
static __always_inline bool ct_key_fill(struct ct_key *k, __be32 saddr, __be32 daddr, __be16 sport,
					__be16 dport, __u8 proto, __u32 ifindex)
{
	bool src_is_a = saddr < daddr || (saddr == daddr && sport <= dport);
	k->addr_a = src_is_a ? saddr : daddr;
	k->addr_b = src_is_a ? daddr : saddr;
	k->port_a = src_is_a ? sport : dport;
	k->port_b = src_is_a ? dport : sport;
	k->proto = proto;
	k->pad[0] = k->pad[1] = k->pad[2] = 0;
	k->ifindex = ifindex;
	return src_is_a;
}

/* Only transitions write: a steady flow reads its entry and leaves it. */
static __always_inline void tcp_advance(struct ct_entry *e, const struct packet *p, bool src_is_a,
					bool original)
{
	if (p->tcp_flags & TCPF_RST) {
		if (e->state != CT_CLOSED)
			e->state = CT_CLOSED;
		return;
	}
	/* A reset flow stays reset: a FIN after the RST must not stretch its
	 * timeout back to FIN_WAIT's. */
	if (e->state == CT_CLOSED)
		return;
	if (p->tcp_flags & TCPF_FIN) {
		__u8 flags = e->flags | (src_is_a ? CT_F_FIN_A : CT_F_FIN_B);
		bool both = (flags & (CT_F_FIN_A | CT_F_FIN_B)) == (CT_F_FIN_A | CT_F_FIN_B);
		__u8 state = both ? CT_CLOSING : CT_FIN_WAIT;
		if (e->flags != flags || e->state != state) {
			e->flags = flags;
			e->state = state;
		}
		return;
	}
	if (!original && e->state == CT_SYN_SENT)
		e->state = CT_ESTABLISHED;
}

/* Whether entry `e` (or none) stands for the packet's flow at `now`: a
 * stale entry, or a closed TCP flow seeing a new SYN, does not (the new
 * flow is judged by policy again). */
static __always_inline struct ct_entry *ct_live(struct ct_entry *e, const struct packet *p,
						__u64 now)
{
	if (!e || ct_expired(e, now, p->proto))
		return NULL;
	bool syn_only = (p->tcp_flags & (TCPF_SYN | TCPF_ACK)) == TCPF_SYN;
	if (p->proto == IPPROTO_TCP && syn_only && e->state >= CT_CLOSING)
		return NULL;
	return e;
}

/* The packet's flow on `ifindex`, live, or NULL (ct_live). Nothing is
 * written; ct_update does that once the caller has accepted the packet. */
static __always_inline struct ct_entry *ct_find(const struct packet *p, __u32 ifindex, __u64 now,
						bool *src_is_a)
{
	struct ct_key k;
	*src_is_a = ct_key_fill(&k, p->saddr, p->daddr, p->sport, p->dport, p->proto, ifindex);
	return ct_live(bpf_map_lookup_elem(&conntrack, &k), p, now);
}

/* Whether (a, pa) sorts before (b, pb): side a of an IPv6 flow. Any
 * total order does, so words are compared as they are stored. */
static __always_inline bool v6_side_a(const union v6addr *a, __be16 pa, const union v6addr *b,
				      __be16 pb)
{
#pragma unroll
	for (int i = 0; i < 4; i++) {
		if (a->w[i] != b->w[i])
			return a->w[i] < b->w[i];
	}
	return pa <= pb;
}

/* ct_key_fill for IPv6. */
static __always_inline bool ct_key6_fill(struct ct_key6 *k, const union v6addr *saddr,
					 const union v6addr *daddr, __be16 sport, __be16 dport,
					 __u8 proto, __u32 ifindex)
{
	bool src_is_a = v6_side_a(saddr, sport, daddr, dport);
	__builtin_memcpy(&k->addr_a, src_is_a ? saddr : daddr, sizeof(k->addr_a));
	__builtin_memcpy(&k->addr_b, src_is_a ? daddr : saddr, sizeof(k->addr_b));
	k->port_a = src_is_a ? sport : dport;
	k->port_b = src_is_a ? dport : sport;
	k->proto = proto;
	k->pad[0] = k->pad[1] = k->pad[2] = 0;
	k->ifindex = ifindex;
	return src_is_a;
}

/* ct_find for IPv6. */
static __always_inline struct ct_entry *ct6_find(const struct packet *p, __u32 ifindex, __u64 now,
						 bool *src_is_a)
{
	struct ct_key6 k;
	*src_is_a = ct_key6_fill(&k, &p->saddr6, &p->daddr6, p->sport, p->dport, p->proto, ifindex);
	return ct_live(bpf_map_lookup_elem(&conntrack6, &k), p, now);
}

/* Refreshes `e` for the packet and advances its state; CT_ORIGINAL or
 * CT_REPLY. */
static __always_inline int ct_update(struct ct_entry *e, const struct packet *p, bool src_is_a,
				     __u64 now)
{
	bool original = src_is_a == !!(e->flags & CT_F_ORIGIN_IS_A);
	if ((__s64)(now - e->last_seen_ns) > (__s64)CT_REFRESH_NS)
		e->last_seen_ns = now;
	if (p->proto == IPPROTO_TCP)
		tcp_advance(e, p, src_is_a, original);
	else if (!original && e->state != CT_ESTABLISHED)
		e->state = CT_ESTABLISHED;
	return original ? CT_ORIGINAL : CT_REPLY;
}

/* Looks the packet's flow up on `ifindex` (in the table of its family)
 * and advances its state, at `now` (flow_clock): the entry was refreshed
 * by this packet when its last_seen_ns is `now`. */
static __always_inline int ct_lookup(const struct packet *p, __u32 ifindex, __u64 now,
				     struct ct_entry **out)
{
	bool src_is_a;
	struct ct_entry *e = p->ipv6 ? ct6_find(p, ifindex, now, &src_is_a)
				     : ct_find(p, ifindex, now, &src_is_a);
	if (!e)
		return CT_MISS;
	*out = e;
	return ct_update(e, p, src_is_a, now);
}

/* Makes local-delivery entry `e` carry receiver `dst` (NULL: none),
 * writing only what changed: the entry's cache line is read by the CPUs
 * of both directions. */
static __always_inline void ct_remember_peer(struct ct_entry *e, const struct endpoint *dst)
{
	if (!dst) {
		if (e->peer_ifindex)
			e->peer_ifindex = 0;
		return;
	}
	if (e->peer_ifindex == dst->ifindex && e->peer_slot == dst->slot &&
	    __builtin_memcmp(e->peer_mac, dst->mac, ETH_ALEN) == 0)
		return;
	e->peer_slot = dst->slot;
	__builtin_memcpy(e->peer_mac, dst->mac, ETH_ALEN);
	e->peer_ifindex = dst->ifindex;
}

/* Makes entry `e` carry the source its replies are turned into
 * (turn_addr, 0: none), writing only what changed. */
static __always_inline void ct_remember_turn(struct ct_entry *e, __be32 addr, __be16 port)
{
	if (e->turn_addr != addr || e->turn_port != port) {
		e->turn_addr = addr;
		e->turn_port = port;
	}
}

/* ct_remember_turn for an IPv6 flow's entry (turn_addr6; `addr` NULL:
 * none). */
static __always_inline void ct6_remember_turn(struct ct_entry *e, const union v6addr *addr,
					      __be16 port)
{
	/* No address of its own for none: from_pod6's stack is full. */
	if (!addr) {
		if (!v6_unspecified(&e->turn_addr6) || e->turn_port) {
			__builtin_memset(&e->turn_addr6, 0, sizeof(e->turn_addr6));
			e->turn_port = 0;
		}
		return;
	}
	if (!v6addr_equal(&e->turn_addr6, addr) || e->turn_port != port) {
		e->turn_addr6 = *addr;
		e->turn_port = port;
	}
}

/* A new flow's entry for endpoint `ep`, the packet's sender (side a when
 * `src_is_a`) being its initiator. */
static __always_inline void ct_entry_init(struct ct_entry *e, const struct packet *p,
					  const struct endpoint *ep, __u8 flags, bool src_is_a)
{
	__u64 now = flow_clock();
	e->last_seen_ns = now;
	e->created_s = now / SEC_NS;
	e->state = CT_NEW;
	e->flags = flags | (src_is_a ? CT_F_ORIGIN_IS_A : 0);
	e->slot = ep->slot;
	__builtin_memcpy(e->pod_mac, ep->mac, ETH_ALEN);
	if (p->proto == IPPROTO_TCP) {
		if (p->tcp_flags & TCPF_RST)
			e->state = CT_CLOSED;
		else if ((p->tcp_flags & (TCPF_SYN | TCPF_ACK)) == TCPF_SYN)
			e->state = CT_SYN_SENT;
		else /* picked up mid-stream (after a flush or an upgrade) */
			e->state = CT_ESTABLISHED;
	}
}

/* Records a new IPv4 flow of endpoint `ep` (on its host veth), the
 * packet's sender being its initiator; `tunnel_peer` for CT_F_TUNNEL. */
static __always_inline void ct_create(const struct packet *p, const struct endpoint *ep, __u8 flags,
				      __be32 tunnel_peer)
{
	struct ct_key k;
	bool src_is_a =
		ct_key_fill(&k, p->saddr, p->daddr, p->sport, p->dport, p->proto, ep->ifindex);
	struct ct_entry e = {.tunnel_peer = tunnel_peer, .pod_ip = ep->ip};
	ct_entry_init(&e, p, ep, flags, src_is_a);
	bpf_map_update_elem(&conntrack, &k, &e, BPF_ANY);
}

/* Records a new IPv6 flow of endpoint `ep`, the packet's sender being its
 * initiator; `from_pod`: the sender is the pod (else it is the receiver).
 * `flags`: CT_F_SERVICE for a flow whose replies are turned (a pod's
 * connection to a service, a NodePort's to its backend), CT_F_TUNNEL with
 * `tunnel_peer` for one whose pod's packets go back through the tunnel.
 * A global function: its key and entry take a stack frame of their own. */
__attribute__((noinline)) int ct6_create(const struct packet *p, const struct endpoint *ep,
					 bool from_pod, __u8 flags, __be32 tunnel_peer)
{
	if (!p || !ep) /* never: the caller's; the verifier asks */
		return 0;
	struct ct_key6 k;
	bool src_is_a = ct_key6_fill(&k, &p->saddr6, &p->daddr6, p->sport, p->dport, p->proto,
				     ep->ifindex);
	struct ct_entry e = {.tunnel_peer = tunnel_peer};
	ct_entry_init(&e, p, ep, flags | (src_is_a == from_pod ? CT_F_POD_IS_A : 0), src_is_a);
	bpf_map_update_elem(&conntrack6, &k, &e, BPF_ANY);
	return 0;
}

/* The entry of the flow tracked on `ifindex` that an ICMP error
 * (unreachable, time exceeded, parameter problem) quotes, or NULL. Such an
 * error passes as part of its flow: path MTU discovery must keep working
 * for pods whose policy would not admit ICMP on its own. */
static __always_inline struct ct_entry *ct_related(struct __sk_buff *skb, const struct packet *p,
						   __u32 ifindex)
{
	struct icmp_quote q;
	if (!icmp_error_quote(skb, p, &q))
		return NULL;
	/* Sent to the quoted packet's sender, as every error is (see
	 * ct6_related). */
	if (p->daddr != q.ip.saddr)
		return NULL;
	struct ct_key k;
	ct_key_fill(&k, q.ip.saddr, q.ip.daddr, q.sport, q.dport, q.ip.protocol, ifindex);
	struct ct_entry *e = bpf_map_lookup_elem(&conntrack, &k);
	return e && !ct_expired(e, flow_clock(), q.ip.protocol) ? e : NULL;
}

/* ct_related for ICMPv6 errors, in conntrack6. */
static __always_inline struct ct_entry *ct6_related(struct __sk_buff *skb, const struct packet *p,
						    __u32 ifindex)
{
	struct icmp6_quote q;
	__be16 sport, dport;
	if (!icmp6_error_quote(skb, p, &q, &sport, &dport))
		return NULL;
	/* An error goes to the sender of the packet it quotes: one sent
	 * anywhere else is no part of the flow (else a pod could send any
	 * address anything, dressed as an error about a flow it has). */
	if (!v6addr_equal(&p->daddr6, (union v6addr *)&q.ip.saddr))
		return NULL;
	struct ct_key6 k;
	ct_key6_fill(&k, (union v6addr *)&q.ip.saddr, (union v6addr *)&q.ip.daddr, sport, dport,
		     q.ip.nexthdr, ifindex);
	struct ct_entry *e = bpf_map_lookup_elem(&conntrack6, &k);
	return e && !ct_expired(e, flow_clock(), q.ip.nexthdr) ? e : NULL;
}
