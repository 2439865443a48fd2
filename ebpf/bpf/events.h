/* SPDX-License-Identifier: GPL-2.0 */
/* Counters per endpoint and the flow-event ring buffer: every drop is
 * counted by reason, and reported with its 5-tuple when logging is on. */
#pragma once

#include "common.h"
#include "config.h"
#include "parse.h"

/* Slot 0: the node's. It counts the packets of the node's own interfaces
 * (data interfaces' NodePorts, the tunnel) and of veths with no endpoint;
 * endpoints hold slots 1..MAX_ENDPOINTS. */
#define NODE_SLOT 0

/* By the endpoint's slot (struct endpoint), or NODE_SLOT. An array: the verifier inlines its lookups,
 * where a hash lookup is a helper call. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, MAX_ENDPOINTS + 1);
	__type(key, __u32);
	__type(value, struct counters);
} counters SEC(".maps");

/* Which endpoint holds which slot (slot -> ifindex); only userspace uses
 * it, to hand out slots (ebpf/src/registry.rs). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_ENDPOINTS + 1);
	__type(key, __u32);
	__type(value, __u32);
} counter_slots SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} flow_events SEC(".maps");

static __always_inline struct counters *counters_of(__u32 slot)
{
	return bpf_map_lookup_elem(&counters, &slot);
}

static __always_inline void emit6(const struct packet *p, __u32 ifindex, __u8 dir, __u8 reason,
				  __u32 source)
{
	struct flow_event6 *e = bpf_ringbuf_reserve(&flow_events, sizeof(*e), 0);
	if (!e)
		return; /* full: the counters still have it */
	e->ts_ns = bpf_ktime_get_ns();
	e->ifindex = ifindex;
	e->reason = reason;
	e->direction = dir;
	e->proto = p->proto;
	e->family = FLOW_EVENT_IPV6;
	__builtin_memcpy(&e->saddr, &p->saddr6, sizeof(e->saddr));
	__builtin_memcpy(&e->daddr, &p->daddr6, sizeof(e->daddr));
	e->sport = p->sport;
	e->dport = p->dport;
	e->source_id = source;
	bpf_ringbuf_submit(e, 0);
}

static __always_inline void emit(const struct packet *p, __u32 ifindex, __u8 dir, __u8 reason,
				 __u32 source)
{
	if (p->ipv6) {
		emit6(p, ifindex, dir, reason, source);
		return;
	}
	struct flow_event *e = bpf_ringbuf_reserve(&flow_events, sizeof(*e), 0);
	if (!e)
		return; /* full: the counters still have it */
	e->ts_ns = bpf_ktime_get_ns();
	e->ifindex = ifindex;
	e->reason = reason;
	e->direction = dir;
	e->proto = p->proto;
	e->family = FLOW_EVENT_IPV4;
	e->saddr = p->saddr;
	e->daddr = p->daddr;
	e->sport = p->sport;
	e->dport = p->dport;
	e->source_id = source;
	bpf_ringbuf_submit(e, 0);
}

static __always_inline void count_allowed(__u32 slot, __u8 dir, __u32 len)
{
	struct counters *c = counters_of(slot);
	if (c) {
		c->packets[dir & 1] += 1;
		c->bytes[dir & 1] += len;
	}
}

/* Counts (in `slot`) and reports (as on `ifindex`) a packet that will not
 * reach its destination, for `reason`; the caller drops it or answers it
 * (reject.h). */
static __always_inline void count_drop_by(const struct packet *p, __u32 slot, __u32 ifindex,
					  __u8 dir, __u8 reason, __u32 source)
{
	struct counters *c = counters_of(slot);
	__u32 at = reason;
	/* One register for the bound and the index: the compiler would
	 * otherwise widen the reason anew for the index, unchecked in the
	 * verifier's eyes. */
	asm volatile("" : "+r"(at));
	if (c && at < DROP_REASON_MAX)
		c->drops[at] += 1;
	if (log_level() >= LOG_INFO)
		emit(p, ifindex, dir, reason, source);
}

static __always_inline void count_drop(const struct packet *p, __u32 slot, __u32 ifindex, __u8 dir,
				       __u8 reason)
{
	count_drop_by(p, slot, ifindex, dir, reason, 0);
}

/* Counts, reports and drops. */
static __always_inline int drop(const struct packet *p, __u32 slot, __u32 ifindex, __u8 dir,
				__u8 reason)
{
	count_drop(p, slot, ifindex, dir, reason);
	return TC_ACT_SHOT;
}

/* The reason a SEND_FAILED verdict carries. */
static __always_inline __u8 send_failure(int verdict)
{
	return SEND_FAILED(0) - verdict;
}

/* A helper's verdict (SEND_FAILED when it could not send the packet on)
 * for a packet its side counted as allowed already, on its entry or by
 * its policy's verdict: only a failure is counted, as a drop for the
 * helper's reason. */
static __always_inline int sent(int verdict, const struct packet *p, __u32 slot, __u32 ifindex,
				__u8 dir)
{
	if (verdict <= SEND_FAILED(0))
		return drop(p, slot, ifindex, dir, send_failure(verdict));
	return verdict;
}

/* sent() for a packet not counted yet: counted as allowed when it went
 * on. So a packet is counted once, after its fate is known. */
static __always_inline int forwarded(int verdict, const struct packet *p, __u32 slot, __u32 ifindex,
				     __u8 dir)
{
	if (verdict > SEND_FAILED(0))
		count_allowed(slot, dir, p->len);
	return sent(verdict, p, slot, ifindex, dir);
}

/* sent() for a helper that answered a packet dropped for `cause` (a
 * reject): counted for the cause when the answer went out, for the
 * helper's reason (reject-failed) when it could not be built: its sender
 * hears nothing. */
static __always_inline int rejected(int verdict, const struct packet *p, __u32 slot, __u32 ifindex,
				    __u8 dir, __u8 cause)
{
	if (verdict > SEND_FAILED(0))
		count_drop(p, slot, ifindex, dir, cause);
	return sent(verdict, p, slot, ifindex, dir);
}

/* drop for a policy's denial: `verdict` (policy.h) names the source of
 * the rule that denied, if one did. */
static __always_inline int drop_denied(const struct packet *p, __u32 slot, __u32 ifindex, __u8 dir,
				       __u8 reason, int verdict)
{
	count_drop_by(p, slot, ifindex, dir, reason, (__u32)verdict >> 8);
	return TC_ACT_SHOT;
}

/* A new flow's verdict, reported only at debug level. */
static __always_inline void trace_new_flow(const struct packet *p, __u32 ifindex, __u8 dir)
{
	if (log_level() >= LOG_DEBUG)
		emit(p, ifindex, dir, REASON_ALLOWED, 0);
}
