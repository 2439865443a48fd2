// SPDX-License-Identifier: GPL-2.0
/* Per-endpoint programs on a pod's host veth:
 *   from_pod: TC ingress, traffic leaving the pod;
 *   to_pod:   TC egress, traffic entering the pod.
 * In order: parse, anti-spoofing (from_pod), service translation (from_pod),
 * conntrack, policy, counters, reverse translation of service replies,
 * forwarding. Every drop carries a reason (abi.h).
 *
 * An established flow's packet takes a short path first: one conntrack
 * lookup, whose entry carries what it needs of the endpoint (its
 * addresses, for the anti-spoofing check, and its counters slot). Every
 * other packet takes the full path. */

#include "common.h"
#include "parse.h"
#include "events.h"
#include "endpoint.h"
#include "conntrack.h"
#include "policy.h"
#include "forward.h"
#include "nat.h"
#include "lb.h"
#include "reject.h"

char LICENSE[] SEC("license") = "GPL";

/* How a packet reached a pod's ingress decision. */
enum ingress_path {
	VIA_STACK = 0,       /* routed by the kernel to the host veth */
	VIA_LOCAL_POD = 1,   /* redirected by the sending pod's from_pod */
};

/* A packet to a pod on a flow its conntrack holds (`ct` from ct_lookup). */
static __always_inline int ingress_established(struct __sk_buff *skb, struct packet *p,
					       __u32 ifindex, struct ct_entry *e, int ct)
{
	/* A reply to this pod's own service connection: the backend's
	 * address becomes the service's again. */
	if (ct == CT_REPLY && (e->flags & CT_F_SERVICE) && nat_reverse(skb, p) == NAT_FAILED)
		return drop(p, e->slot, ifindex, DIR_INGRESS, DROP_NAT);
	count_allowed(e->slot, DIR_INGRESS, p->len);
	return TC_ACT_OK;
}

/* The destination pod's side of a packet: conntrack (unless the caller
 * already found no entry), then its ingress policy for a new flow.
 * TC_ACT_OK to deliver, TC_ACT_SHOT when dropped. */
static __always_inline int ingress_verdict(struct __sk_buff *skb, struct packet *p,
					   const struct endpoint *ep, enum ingress_path path,
					   bool ct_missed)
{
	__u32 ifindex = ep->ifindex;
	if (p->fragment) {
		if (policy_of(ifindex, DIR_INGRESS))
			return drop(p, ep->slot, ifindex, DIR_INGRESS, DROP_FRAGMENT);
		count_allowed(ep->slot, DIR_INGRESS, p->len);
		return TC_ACT_OK;
	}
	if (!ct_missed) {
		struct ct_entry *e;
		int ct = ct_lookup(p, ifindex, &e);
		if (ct != CT_MISS)
			return ingress_established(skb, p, ifindex, e, ct);
	}
	if (ct_related(skb, p, ifindex)) {
		count_allowed(ep->slot, DIR_INGRESS, p->len);
		return TC_ACT_OK;
	}
	/* The node itself (kubelet probes, host-network pods) is always let
	 * in, as Kubernetes expects; its packets carry no ingress device. */
	bool from_node = path == VIA_STACK && skb->ingress_ifindex == 0;
	if (!from_node &&
	    policy_check(ifindex, DIR_INGRESS, p->saddr, p->proto, bpf_ntohs(p->dport)) != POLICY_ALLOW)
		return drop(p, ep->slot, ifindex, DIR_INGRESS, DROP_POLICY_INGRESS);
	ct_create(p, ep, path == VIA_LOCAL_POD ? CT_F_LOCAL_DELIVERY : 0);
	trace_new_flow(p, ifindex, DIR_INGRESS);
	count_allowed(ep->slot, DIR_INGRESS, p->len);
	return TC_ACT_OK;
}

/* Hands a packet from one local pod to another, applying the destination's
 * ingress decision first (redirect_peer skips the destination's to_pod). */
static __always_inline int deliver_local(struct __sk_buff *skb, struct packet *p,
					 __u32 dst_ifindex)
{
	struct endpoint *dst = endpoint_of(dst_ifindex);
	if (!dst || p->ttl <= 1) /* the stack sends time-exceeded */
		return TC_ACT_OK;
	int verdict = ingress_verdict(skb, p, dst, VIA_LOCAL_POD, false);
	if (verdict != TC_ACT_OK)
		return verdict;
	return redirect_to_pod(skb, p, dst->ifindex, dst->mac);
}

/* A packet from a pod on a flow its conntrack holds (`ct` from ct_lookup
 * or ct_update), already checked to be the pod's own. */
static __always_inline int egress_established(struct __sk_buff *skb, struct packet *p,
					      __u32 ifindex, struct ct_entry *e, int ct)
{
	count_allowed(e->slot, DIR_EGRESS, p->len);
	/* A service reply sent by the client's own endpoint: the pod reached
	 * itself through the service (hairpin). Translated back, it goes
	 * straight into the pod that sent it. */
	if (ct == CT_REPLY && (e->flags & CT_F_SERVICE)) {
		int rev = nat_reverse(skb, p);
		if (rev == NAT_FAILED)
			return drop(p, e->slot, ifindex, DIR_EGRESS, DROP_NAT);
		if (rev == NAT_REVERSED && p->ttl > 1)
			return redirect_to_pod(skb, p, ifindex, e->pod_mac);
	}
	__u32 dst = (e->flags & CT_F_LOCAL_DELIVERY) ? local_endpoint_ifindex(p->daddr) : 0;
	return dst ? deliver_local(skb, p, dst) : TC_ACT_OK;
}

SEC("classifier")
int from_pod(struct __sk_buff *skb)
{
	struct packet p = {};
	__u32 ifindex = skb->ifindex;
	int parsed = parse_packet(skb, &p);

	/* Short path: a packet of an established flow, not to a service,
	 * carrying the addresses the flow's entry recorded for the pod (so it
	 * passes the anti-spoofing checks below). Nothing is written before
	 * that is known. */
	bool ct_missed = false;
	if (parsed == PARSED_IPV4 && !p.fragment && !maybe_service(&p)) {
		__u64 now = flow_clock();
		bool src_is_a;
		struct ct_entry *e = ct_find(&p, ifindex, now, &src_is_a);
		if (e && e->pod_ip == p.saddr &&
		    __builtin_memcmp(p.src_mac, e->pod_mac, ETH_ALEN) == 0)
			return egress_established(skb, &p, ifindex, e,
						  ct_update(e, &p, src_is_a, now));
		ct_missed = !e;
	}

	struct endpoint *ep = endpoint_of(ifindex);
	if (!ep)
		return drop(&p, 0, 0, DIR_EGRESS, DROP_NO_ENDPOINT);
	__u32 slot = ep->slot;
	if (parsed == PARSE_FAILED)
		return drop(&p, slot, ifindex, DIR_EGRESS, DROP_PARSE);
	if (__builtin_memcmp(p.src_mac, ep->mac, ETH_ALEN) != 0)
		return drop(&p, slot, ifindex, DIR_EGRESS, DROP_SPOOF_MAC);
	if (parsed == PARSE_UNSUPPORTED)
		return drop(&p, slot, ifindex, DIR_EGRESS, DROP_UNSUPPORTED_L3);
	if (parsed != PARSED_IPV4) { /* ARP; IPv6 until it is handled */
		count_allowed(slot, DIR_EGRESS, p.len);
		return TC_ACT_OK;
	}
	if (p.saddr != ep->ip)
		return drop(&p, slot, ifindex, DIR_EGRESS, DROP_SPOOF_IP);

	if (p.fragment) {
		if (policy_of(ifindex, DIR_EGRESS))
			return drop(&p, slot, ifindex, DIR_EGRESS, DROP_FRAGMENT);
		count_allowed(slot, DIR_EGRESS, p.len);
		return TC_ACT_OK;
	}

	struct lb_flow flow = {};
	int lb = lb_from_pod(skb, &p, &flow);
	if (lb == LB_NO_BACKEND) {
		count_drop(&p, slot, ifindex, DIR_EGRESS, DROP_NO_BACKEND);
		return reject_port_unreachable(skb, &p);
	}
	if (lb == LB_FAILED)
		return drop(&p, slot, ifindex, DIR_EGRESS, DROP_NAT);

	/* The short path looked this very tuple up unless it was translated. */
	if (!ct_missed || lb == LB_TRANSLATED) {
		struct ct_entry *e;
		int ct = ct_lookup(&p, ifindex, &e);
		if (ct != CT_MISS) {
			if (lb == LB_TRANSLATED)
				lb_record(&flow, p.proto);
			return egress_established(skb, &p, ifindex, e, ct);
		}
	}
	if (!ct_related(skb, &p, ifindex) &&
	    policy_check(ifindex, DIR_EGRESS, p.daddr, p.proto, bpf_ntohs(p.dport)) != POLICY_ALLOW)
		return drop(&p, slot, ifindex, DIR_EGRESS, DROP_POLICY_EGRESS);

	__u32 dst = local_endpoint_ifindex(p.daddr);
	if (dst && !fib_routes_to(skb, &p, dst))
		dst = 0;
	__u8 ct_flags = dst ? CT_F_LOCAL_DELIVERY : 0;
	if (lb == LB_TRANSLATED) {
		lb_record(&flow, p.proto);
		ct_flags |= CT_F_SERVICE;
	}
	ct_create(&p, ep, ct_flags);
	trace_new_flow(&p, ifindex, DIR_EGRESS);
	count_allowed(slot, DIR_EGRESS, p.len);
	return dst ? deliver_local(skb, &p, dst) : TC_ACT_OK;
}

SEC("classifier")
int to_pod(struct __sk_buff *skb)
{
	struct packet p = {};
	__u32 ifindex = skb->ifindex;
	int parsed = parse_packet(skb, &p);

	/* Short path: a packet of an established flow (its entry stands for
	 * the endpoint: it is dropped with the endpoint's other entries). */
	bool ct_missed = false;
	if (parsed == PARSED_IPV4 && !p.fragment) {
		struct ct_entry *e;
		int ct = ct_lookup(&p, ifindex, &e);
		if (ct != CT_MISS)
			return ingress_established(skb, &p, ifindex, e, ct);
		ct_missed = true;
	}

	struct endpoint *ep = endpoint_of(ifindex);
	if (!ep)
		return drop(&p, 0, 0, DIR_INGRESS, DROP_NO_ENDPOINT);
	switch (parsed) {
	case PARSE_FAILED:
		return drop(&p, ep->slot, ifindex, DIR_INGRESS, DROP_PARSE);
	case PARSE_UNSUPPORTED:
		return drop(&p, ep->slot, ifindex, DIR_INGRESS, DROP_UNSUPPORTED_L3);
	case PARSED_IPV4:
		return ingress_verdict(skb, &p, ep, VIA_STACK, ct_missed);
	default: /* ARP; IPv6 until it is handled */
		count_allowed(ep->slot, DIR_INGRESS, p.len);
		return TC_ACT_OK;
	}
}
