/* SPDX-License-Identifier: GPL-2.0 */
/* Service load balancing (kube-proxy's job): a connection to a frontend
 * (ClusterIP:port) is given one backend when it starts, by a hash of its
 * tuple or by the client's affinity, and keeps it through its translation
 * entry (nat.h). One hash lookup per packet whatever the number of
 * services. */
#pragma once

#include "common.h"
#include "parse.h"
#include "conntrack.h"
#include "nat.h"

/* Both maps are allocated on demand (BPF_F_NO_PREALLOC): an update then
 * swaps in a fresh element under RCU, so a reader never sees a frontend's
 * count from one update and its generation from another; and a node with
 * few services does not pay for 65536 frontends. Sizes: the loader's. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct svc_key);
	__type(value, struct svc_value);
} svc_frontends SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 262144);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct backend_key);
	__type(value, struct backend);
} svc_backends SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u32);
	__type(value, struct svc_meta);
} svc_meta SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct affinity_key);
	__type(value, struct affinity_value);
} svc_affinity SEC(".maps");

/* IPv6 frontends, their backends and their clients' affinity, as above. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct svc_key6);
	__type(value, struct svc_value);
} svc_frontends6 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 262144);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct backend_key);
	__type(value, struct backend6);
} svc_backends6 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct affinity_key6);
	__type(value, struct affinity_value6);
} svc_affinity6 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct svc_filter);
} svc_filter SEC(".maps");

/* The frontend's bit in svc_filter; ebpf/src/abi.rs computes the same
 * (`svc_filter_bit`) from the same bytes, read as native-endian integers.
 * An IPv6 address counts as the xor of its four words (v6_fold). */
static __always_inline __be32 v6_fold(const union v6addr *a)
{
	return a->w[0] ^ a->w[1] ^ a->w[2] ^ a->w[3];
}

static __always_inline __u32 svc_filter_bit(__be32 addr, __be16 port, __u8 proto)
{
	__u32 h = ((__u32)addr ^ ((__u32)port << 16) ^ proto) * 0x9e3779b1u;
	return h >> 16;
}

/* Whether the packet may be to a service (a TCP or UDP frontend): false
 * skips the frontend lookup, a helper call, for most packets. */
static __always_inline bool maybe_service(const struct packet *p)
{
	if (p->proto != IPPROTO_TCP && p->proto != IPPROTO_UDP)
		return false;
	__u32 zero = 0;
	struct svc_filter *f = bpf_map_lookup_elem(&svc_filter, &zero);
	if (!f)
		return true;
	__be32 daddr = p->ipv6 ? v6_fold(&p->daddr6) : p->daddr;
	__u32 bit = svc_filter_bit(daddr, p->dport, p->proto);
	return (f->bits[(bit / 64) & (SVC_FILTER_BITS / 64 - 1)] >> (bit % 64)) & 1;
}

enum lb_result {
	LB_NONE = 0,    /* not to a frontend */
	LB_TRANSLATED,  /* rewritten to a backend */
	LB_NO_BACKEND,  /* a frontend without backends: reject */
	LB_FAILED,      /* the rewrite failed */
};

/* A translated flow, as the forward path needs it after the policy
 * verdict to record it (lb_record). */
struct lb_flow {
	struct nat_entry fwd;
	__be32 client;
	__be32 frontend;
	__be16 client_port;
	__be16 frontend_port;
	bool is_new;        /* no live translation: record both entries */
	bool check_reverse; /* a live one: make sure its reverse entry names it */
	bool external;   /* the client is not a local pod (NodePort) */
};

/* murmur3's finaliser over the tuple: spreads connections over backends,
 * and picks the same backend again for the same tuple while the backend
 * set is unchanged (so a translation lost to LRU eviction comes back the
 * same). */
static __always_inline __u32 flow_hash(const struct packet *p)
{
	__u32 saddr = p->ipv6 ? v6_fold(&p->saddr6) : p->saddr;
	__u32 daddr = p->ipv6 ? v6_fold(&p->daddr6) : p->daddr;
	__u32 h = saddr ^ (daddr * 0x9e3779b1u);
	h ^= (((__u32)p->sport << 16) | p->dport) * 0x85ebca6bu;
	h ^= p->proto;
	h ^= h >> 16;
	h *= 0x85ebca6bu;
	h ^= h >> 13;
	h *= 0xc2b2ae35u;
	h ^= h >> 16;
	return h;
}

static __always_inline struct backend *backend_at(const struct svc_value *svc, __u16 ordinal)
{
	struct backend_key k = {
		.svc_id = svc->id,
		.generation = svc->generation,
		.ordinal = ordinal,
	};
	return bpf_map_lookup_elem(&svc_backends, &k);
}

/* Whether the backend chosen earlier at `ordinal` still serves `svc`. */
static __always_inline bool backend_serves(const struct svc_value *svc, __u16 ordinal, __be32 addr,
					   __be16 port)
{
	if (ordinal >= svc->count)
		return false;
	struct backend *b = backend_at(svc, ordinal);
	return b && b->addr == addr && b->port == port;
}

/* Whether a client's affinity, last used at `last_used_ns`, still holds.
 * Signed: another CPU may have used it after we read `now`. */
static __always_inline bool affinity_fresh(const struct svc_value *svc, __u64 last_used_ns,
					   __u64 now)
{
	return (__s64)(now - last_used_ns) <= (__s64)(svc->affinity_timeout_s * SEC_NS);
}

/* Chooses a backend of `svc` for a new connection of `client`: the
 * client's affinity when the service has it and the backend still serves,
 * else by `hash`. */
static __always_inline bool lb_choose_for(const struct svc_value *svc, __be32 client, __u32 hash,
					  __u64 now, struct nat_entry *out)
{
	struct affinity_key ak = {.svc_id = svc->id, .client = client};
	bool affinity = svc->flags & SVC_F_AFFINITY;
	if (affinity) {
		struct affinity_value *a = bpf_map_lookup_elem(&svc_affinity, &ak);
		if (a && affinity_fresh(svc, a->last_used_ns, now) &&
		    backend_serves(svc, a->ordinal, a->addr, a->port)) {
			out->addr = a->addr;
			out->port = a->port;
			out->ordinal = a->ordinal;
			a->last_used_ns = now;
			return true;
		}
	}
	if (svc->count == 0)
		return false;
	__u16 ordinal = hash % svc->count;
	struct backend *b = backend_at(svc, ordinal);
	if (!b)
		return false;
	out->addr = b->addr;
	out->port = b->port;
	out->ordinal = ordinal;
	if (affinity) {
		struct affinity_value a = {.last_used_ns = now, .addr = b->addr, .port = b->port,
					   .ordinal = ordinal};
		bpf_map_update_elem(&svc_affinity, &ak, &a, BPF_ANY);
	}
	return true;
}

/* [lb_choose_for] for a packet: its source is the client, its tuple's
 * hash picks. */
static __always_inline bool lb_choose(const struct svc_value *svc, const struct packet *p,
				      __u64 now, struct nat_entry *out)
{
	return lb_choose_for(svc, p->saddr, flow_hash(p), now, out);
}

/* A TCP packet that opens a connection (SYN without ACK). */
static __always_inline bool syn_only(const struct packet *p)
{
	return p->proto == IPPROTO_TCP && (p->tcp_flags & (TCPF_SYN | TCPF_ACK)) == TCPF_SYN;
}

/* Whether a flow keeps the backend of its live translation (of service
 * `svc_id`, last seen at `*last_seen_ns`), refreshing it. A SYN on a known
 * tuple is a retransmission or a reused port: it keeps the backend only
 * while that still serves (`left`: it does not). Other packets keep
 * theirs even after it left the service: established connections to a
 * removed backend drain rather than break.
 *
 * The reverse entry may have been lost to LRU, or taken by another
 * frontend's flow from this client port to the same backend
 * (nat_write_reverse): `*check_reverse` asks for it to be checked at a
 * connection's first packet (a reused port, a retransmission), on every
 * UDP datagram (UDP has no first packet), and once a second. */
static __always_inline bool lb_keeps(const struct svc_value *svc, __u32 svc_id,
				     __u64 *last_seen_ns, const struct packet *p, __u64 now,
				     bool *check_reverse, bool left)
{
	if (svc_id != svc->id || nat_expired(*last_seen_ns, now, p->proto) || left)
		return false;
	if (syn_only(p) || p->proto == IPPROTO_UDP)
		*check_reverse = true;
	if ((__s64)(now - *last_seen_ns) > (__s64)CT_REFRESH_NS) {
		*last_seen_ns = now;
		*check_reverse = true;
	}
	return true;
}

/* The forward half, in from_pod (and from_net) before conntrack: a packet to a frontend
 * gets its flow's backend (the live translation, or a new choice) as
 * destination, and for a hairpin the hairpin address as source. `p` then
 * describes the translated packet, which conntrack and policy judge (as
 * Kubernetes wants: policies name pods, not services). Nothing is
 * recorded yet: lb_record does that once policy has allowed the flow. */
static __always_inline int lb_translate(struct __sk_buff *skb, struct packet *p,
					struct lb_flow *flow)
{
	if (!maybe_service(p))
		return LB_NONE;
	struct svc_key sk = {.addr = p->daddr, .port = p->dport, .proto = p->proto};
	struct svc_value *svc = bpf_map_lookup_elem(&svc_frontends, &sk);
	if (!svc)
		return LB_NONE;

	flow->client = p->saddr;
	flow->client_port = p->sport;
	flow->frontend = p->daddr;
	flow->frontend_port = p->dport;
	struct nat_key fk;
	nat_key_fill(&fk, p->saddr, p->daddr, p->sport, p->dport, p->proto, NAT_FWD);
	struct nat_entry *fwd = bpf_map_lookup_elem(&nat, &fk);
	__u64 now = flow_clock();
	if (fwd && lb_keeps(svc, fwd->svc_id, &fwd->last_seen_ns, p, now, &flow->check_reverse,
			    syn_only(p) && !backend_serves(svc, fwd->ordinal, fwd->addr, fwd->port))) {
		flow->fwd = *fwd;
	} else {
		if (!lb_choose(svc, p, now, &flow->fwd))
			return LB_NO_BACKEND;
		flow->fwd.svc_id = svc->id;
		flow->fwd.last_seen_ns = now;
		flow->fwd.peer = flow->fwd.addr == p->saddr ? HAIRPIN_ADDR : 0;
		flow->is_new = true;
	}
	if (nat_rewrite(skb, p, false, flow->fwd.addr, flow->fwd.port) < 0)
		return LB_FAILED;
	if (flow->fwd.peer && nat_rewrite(skb, p, true, flow->fwd.peer, p->sport) < 0)
		return LB_FAILED;
	return LB_TRANSLATED;
}

/* Records an allowed flow's translation (both entries), or makes sure a
 * known one's reverse entry is still its own. */
static __always_inline void lb_record(const struct lb_flow *flow, __u8 proto)
{
	if (flow->is_new) {
		struct nat_key fk;
		nat_key_fill(&fk, flow->client, flow->frontend, flow->client_port,
			     flow->frontend_port, proto, NAT_FWD);
		bpf_map_update_elem(&nat, &fk, &flow->fwd, BPF_ANY);
	}
	if (flow->is_new || flow->check_reverse)
		nat_write_reverse(&flow->fwd, flow->client, flow->client_port, flow->frontend,
				  flow->frontend_port, proto, flow->external ? NAT_F_AT_BACKEND : 0,
				  !flow->is_new);
}

/* A translated IPv6 flow (lb_flow's). */
struct lb_flow6 {
	struct nat_entry6 fwd;
	union v6addr client;
	union v6addr frontend;
	__be16 client_port;
	__be16 frontend_port;
	bool is_new;
	bool check_reverse;
	bool external;
};

static __always_inline struct backend6 *backend6_at(const struct svc_value *svc, __u16 ordinal)
{
	struct backend_key k = {
		.svc_id = svc->id,
		.generation = svc->generation,
		.ordinal = ordinal,
	};
	return bpf_map_lookup_elem(&svc_backends6, &k);
}

/* backend_serves for IPv6. */
static __always_inline bool backend6_serves(const struct svc_value *svc, __u16 ordinal,
					    const union v6addr *addr, __be16 port)
{
	if (ordinal >= svc->count)
		return false;
	struct backend6 *b = backend6_at(svc, ordinal);
	return b && v6addr_equal(&b->addr, addr) && b->port == port;
}

/* lb_choose_for for IPv6, by packet `p`'s tuple hash (NULL: at random,
 * for a socket). The hash is taken only once affinity has not decided:
 * held across the affinity lookup it costs lb_translate6's stack frame
 * the 32 bytes that from_pod6's calls cannot spare. */
static __always_inline bool lb_choose6_for(const struct svc_value *svc,
					   const union v6addr *client, const struct packet *p,
					   __u64 now, struct nat_entry6 *out)
{
	struct affinity_key6 ak = {.svc_id = svc->id, .client = *client};
	bool affinity = svc->flags & SVC_F_AFFINITY;
	if (affinity) {
		struct affinity_value6 *a = bpf_map_lookup_elem(&svc_affinity6, &ak);
		if (a && affinity_fresh(svc, a->last_used_ns, now) &&
		    backend6_serves(svc, a->ordinal, &a->addr, a->port)) {
			out->addr = a->addr;
			out->port = a->port;
			out->ordinal = a->ordinal;
			a->last_used_ns = now;
			return true;
		}
	}
	if (svc->count == 0)
		return false;
	__u32 hash = p ? flow_hash(p) : bpf_get_prandom_u32();
	__u16 ordinal = hash % svc->count;
	struct backend6 *b = backend6_at(svc, ordinal);
	if (!b)
		return false;
	out->addr = b->addr;
	out->port = b->port;
	out->ordinal = ordinal;
	if (affinity) {
		struct affinity_value6 a = {.last_used_ns = now, .addr = b->addr, .port = b->port,
					    .ordinal = ordinal};
		bpf_map_update_elem(&svc_affinity6, &ak, &a, BPF_ANY);
	}
	return true;
}

/* lb_translate for IPv6 packets (a pod's, or a NodePort's from outside):
 * the same choice and the same keeping of a flow's backend, on IPv6's
 * maps, for a packet the caller found maybe_service. A global function:
 * its keys take a stack frame of their own, not its caller's. */
__attribute__((noinline)) int lb_translate6(struct __sk_buff *skb, struct packet *p,
					    struct lb_flow6 *flow)
{
	if (!p || !flow) /* never: the caller's; the verifier asks */
		return LB_FAILED;
	struct svc_key6 sk = {.addr = p->daddr6, .port = p->dport, .proto = p->proto};
	struct svc_value *svc = bpf_map_lookup_elem(&svc_frontends6, &sk);
	if (!svc)
		return LB_NONE;

	flow->client = p->saddr6;
	flow->client_port = p->sport;
	flow->frontend = p->daddr6;
	flow->frontend_port = p->dport;
	struct nat_key6 fk;
	nat_key6_fill(&fk, &p->saddr6, &p->daddr6, p->sport, p->dport, p->proto, NAT_FWD);
	struct nat_entry6 *fwd = bpf_map_lookup_elem(&nat6, &fk);
	__u64 now = flow_clock();
	if (fwd && lb_keeps(svc, fwd->svc_id, &fwd->last_seen_ns, p, now, &flow->check_reverse,
			    syn_only(p) && !backend6_serves(svc, fwd->ordinal, &fwd->addr, fwd->port))) {
		flow->fwd = *fwd;
	} else {
		if (!lb_choose6_for(svc, &p->saddr6, p, now, &flow->fwd))
			return LB_NO_BACKEND;
		flow->fwd.svc_id = svc->id;
		flow->fwd.last_seen_ns = now;
		if (v6addr_equal(&flow->fwd.addr, &p->saddr6))
			flow->fwd.peer = hairpin_addr6;
		flow->is_new = true;
	}
	if (nat_rewrite6(skb, p, false, &flow->fwd.addr, flow->fwd.port) < 0)
		return LB_FAILED;
	if (!v6_unspecified(&flow->fwd.peer) &&
	    nat_rewrite6(skb, p, true, &flow->fwd.peer, p->sport) < 0)
		return LB_FAILED;
	return LB_TRANSLATED;
}

/* lb_record for IPv6. A global function, for its stack frame (two keys
 * and an entry). */
__attribute__((noinline)) int lb_record6(const struct lb_flow6 *flow, __u32 proto)
{
	if (!flow) /* never: the caller's; the verifier asks */
		return 0;
	if (flow->is_new) {
		struct nat_key6 fk;
		nat_key6_fill(&fk, &flow->client, &flow->frontend, flow->client_port,
			      flow->frontend_port, proto, NAT_FWD);
		bpf_map_update_elem(&nat6, &fk, &flow->fwd, BPF_ANY);
	}
	if (flow->is_new || flow->check_reverse)
		nat_write_reverse6(&flow->fwd, &flow->client, flow->client_port, &flow->frontend,
				   flow->frontend_port, proto,
				   flow->external ? NAT_F_AT_BACKEND : 0, !flow->is_new);
	return 0;
}
