/* SPDX-License-Identifier: GPL-2.0 */
/* Policy: per endpoint and direction, an ordered list of rules; the first
 * match decides. No policy: everything allowed. A policy: what no rule
 * allows is denied. Data, not code: a change is one map update, in force
 * for the next new flow. A direction's IPv6 rules are a list of their own
 * (policies6), judged only when the direction has a policy (policies).
 *
 * A rule's peer is a CIDR, or a set of the node (ip_sets, ip_sets6): a
 * NetworkPolicy peer over thousands of pods is one set that changes member
 * by member, looked up once per new flow and rule. */
#pragma once

#include "common.h"

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 2 * MAX_ENDPOINTS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct policy_key);
	__type(value, struct policy);
} policies SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 2 * MAX_ENDPOINTS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct policy_key);
	__type(value, struct policy6);
} policies6 SEC(".maps");

/* Whether a rule's protocol and port range admit a flow of `proto` to
 * `dport`. Port ranges only constrain TCP and UDP; a rule with a narrowed
 * range never matches another protocol. */
static __always_inline bool rule_admits(__u8 rule_proto, __u16 port_lo, __u16 port_hi, __u32 proto,
					__u32 dport)
{
	if (rule_proto && rule_proto != proto)
		return false;
	if (proto == IPPROTO_TCP || proto == IPPROTO_UDP)
		return dport >= port_lo && dport <= port_hi;
	return port_lo == 0 && port_hi == 0xffff;
}

/* Members over all sets (as Calico's default: nothing is allocated until
 * used). */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 1048576);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct ip_set_key);
	__type(value, __u32);
} ip_sets SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 1048576);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct ip_set_key6);
	__type(value, __u32);
} ip_sets6 SEC(".maps");

/* Userspace's records of what set and source numbers stand for. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u32);
	__type(value, struct name_record);
} ip_set_names SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_POLICY_SOURCES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u32);
	__type(value, struct name_record);
} policy_sources SEC(".maps");

/* New flows decided by the rules of each source (a NetworkPolicy), by
 * source number: per-policy counters for /metrics. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, MAX_POLICY_SOURCES);
	__type(key, __u32);
	__type(value, __u64);
} policy_hits SEC(".maps");

static __always_inline void count_source(__u32 source_id)
{
	__u64 *n = bpf_map_lookup_elem(&policy_hits, &source_id);
	if (n)
		*n += 1;
}

/* Whether `peer` (on `dport` of `proto`) is in set `set_id`: 1 or 0. A
 * global function, verified once on its own: inlined into the rule loop it
 * multiplied the loop's states past the verifier's limit. */
__attribute__((noinline)) int ip_set_has(__u32 set_id, __be32 peer, __u32 proto, __u32 dport)
{
	struct ip_set_key k = {
		.prefixlen = IP_SET_PORT_PREFIX,
		.set_id = set_id,
		.addr = peer,
		.port = bpf_htons(dport),
		.proto = proto,
	};
	__u32 *v = bpf_map_lookup_elem(&ip_sets, &k);
	return v && *v == IP_SET_MEMBER;
}

/* A policy_check verdict: POLICY_ALLOW or POLICY_DENY in the low byte,
 * above it the source number of the rule that decided: 0 when none did,
 * SOURCE_UNNAMED for a rule that names no source. */
static __always_inline bool policy_denies(int verdict)
{
	return (verdict & 0xff) != POLICY_ALLOW;
}

static __always_inline struct policy *policy_of(__u32 ifindex, __u32 dir)
{
	struct policy_key k = {.ifindex = ifindex, .direction = dir};
	return bpf_map_lookup_elem(&policies, &k);
}

/* The verdict (policy_denies) on a new flow to/from `peer` on the
 * endpoint's `dir` side.
 *
 * A global (non-inlined) function: the verifier checks its bounded loop
 * once, on its own, instead of once per call site (3x fewer states at load
 * time). Arguments are scalars, as global functions require. */
__attribute__((noinline)) int policy_check(__u32 ifindex, __u32 dir, __be32 peer, __u32 proto,
					   __u32 dport)
{
	struct policy *pol = policy_of(ifindex, dir);
	if (!pol)
		return POLICY_ALLOW;
	__u32 n = pol->count;
	/* Unrolled by 4: the loop's own compare-and-branch was a third of
	 * each rule's instructions (a 100-rule scan: ~25 ns less). */
#pragma clang loop unroll_count(4)
	for (__u32 i = 0; i < MAX_POLICY_RULES; i++) {
		if (i >= n)
			break;
		const struct policy_rule *r = &pol->rules[i];
		if (r->flags & RULE_F_SET) {
			if (r->set_id && !ip_set_has(r->set_id, peer, proto, dport))
				continue;
		} else if ((peer & r->mask) != r->addr) {
			continue;
		}
		if (!rule_admits(r->proto, r->port_lo, r->port_hi, proto, dport))
			continue;
		__u32 source = SOURCE_UNNAMED;
		if ((r->flags & RULE_F_SET) && r->source_id) {
			count_source(r->source_id);
			source = r->source_id;
		}
		return r->action | (source << 8);
	}
	return POLICY_DENY;
}

/* What policy_check6 judges: a global function takes at most five
 * arguments, and an address is four words. */
struct policy_query6 {
	union v6addr peer;
	__u32 ifindex;
	__u32 dir;
	__u32 proto;
	__u32 dport;
};

/* ip_set_has for the IPv6 peer of `q` (a global function takes scalars
 * and pointers, and an address is four words). */
__attribute__((noinline)) int ip_set6_has(__u32 set_id, const struct policy_query6 *q)
{
	if (!q)
		return 0;
	struct ip_set_key6 k = {
		.prefixlen = IP_SET6_PORT_PREFIX,
		.set_id = set_id,
		.port = bpf_htons(q->dport),
		.proto = q->proto,
	};
	__builtin_memcpy(&k.addr, &q->peer, sizeof(k.addr));
	__u32 *v = bpf_map_lookup_elem(&ip_sets6, &k);
	return v && *v == IP_SET_MEMBER;
}

/* policy_check for an IPv6 flow. A direction without a policy allows
 * everything; with one but no IPv6 rules (all IPv4, or a deny-all), it
 * denies all IPv6. A direction with a policy has an IPv6 list, empty or
 * not (policy::set writes both families' lists, the loader gives one to
 * a policy an older build wrote without), so that one lookup tells. */
__attribute__((noinline)) int policy_check6(const struct policy_query6 *q)
{
	if (!q)
		return POLICY_DENY;
	struct policy_key k = {.ifindex = q->ifindex, .direction = q->dir};
	struct policy6 *pol = bpf_map_lookup_elem(&policies6, &k);
	if (!pol)
		return POLICY_ALLOW;
	__u32 proto = q->proto, dport = q->dport;
	__be32 p0 = q->peer.w[0], p1 = q->peer.w[1], p2 = q->peer.w[2], p3 = q->peer.w[3];
	__u32 n = pol->count;
	/* Unrolled as IPv4's; the first word alone tells most rules apart. */
#pragma clang loop unroll_count(4)
	for (__u32 i = 0; i < MAX_POLICY_RULES; i++) {
		if (i >= n)
			break;
		const struct policy_rule6 *r = &pol->rules[i];
		if (r->flags & RULE_F_SET) {
			if (r->set_id && !ip_set6_has(r->set_id, q))
				continue;
		} else {
			if ((p0 & r->mask.w[0]) != r->addr.w[0])
				continue;
			if ((((p1 & r->mask.w[1]) ^ r->addr.w[1]) |
			     ((p2 & r->mask.w[2]) ^ r->addr.w[2]) |
			     ((p3 & r->mask.w[3]) ^ r->addr.w[3])) != 0)
				continue;
		}
		if (!rule_admits(r->proto, r->port_lo, r->port_hi, proto, dport))
			continue;
		__u32 source = SOURCE_UNNAMED;
		if ((r->flags & RULE_F_SET) && r->source_id) {
			count_source(r->source_id);
			source = r->source_id;
		}
		return r->action | (source << 8);
	}
	return POLICY_DENY;
}

/* The caller's side of policy_check6: `peer` is the other end of the flow. */
static __always_inline int policy_judge6(__u32 ifindex, __u32 dir, const union v6addr *peer,
					 const struct packet *p)
{
	struct policy_query6 q = {
		.ifindex = ifindex,
		.dir = dir,
		.proto = p->proto,
		.dport = bpf_ntohs(p->dport),
	};
	__builtin_memcpy(&q.peer, peer, sizeof(q.peer));
	return policy_check6(&q);
}
