// SPDX-License-Identifier: GPL-2.0
/* The dataplane's programs:
 *   from_pod: TC ingress of a pod's host veth, traffic leaving the pod;
 *   from_pod6: its IPv6 half, tail-called by from_pod (map `calls`);
 *   to_pod:   TC egress of a pod's host veth, traffic entering the pod;
 *   from_net: TC ingress of a node's data interface (NodePorts);
 *   from_tunnel: TC ingress of the node's VXLAN device (other nodes);
 *   sock_connect4, sock_sendmsg4, sock_recvmsg4, sock_getpeername4 and
 *   their IPv6 twins: the node's cgroup, services for host-networked
 *   clients (host_lb.h).
 * In order: parse, anti-spoofing (from_pod), service translation (from_pod),
 * conntrack, policy, counters, reverse translation of service replies,
 * forwarding. Every drop carries a reason (abi.h).
 *
 * An established flow's packet on a pod's veth takes a short path first:
 * one conntrack lookup, whose entry carries what it needs of the endpoint
 * (its addresses, for the anti-spoofing check, and its counters slot).
 * from_pod takes it only for a packet that cannot be to a service (its
 * svc_filter bit is clear: a ClusterIP or NodePort packet is translated
 * before its flow is looked up). Every other packet takes the full path.
 *
 * A flow's entry also carries the way the pod's packets of it leave the
 * node (route_to, tunnel.h): to a local pod, through the tunnel, routed to
 * a peer's pod on our L2 without the host stack, or by the stack.
 *
 * A pod's IPv6 takes the kernel stack after the pod's own verdict
 * (anti-spoofing, service translation, conntrack, policy), but for flows
 * that came through the tunnel, whose packets go back the same way:
 * from_tunnel hands IPv6 straight to its pod, as IPv4. NodePorts of IPv6
 * reach other nodes' backends through the tunnel in both external modes
 * (from_net_v6). Neighbour discovery passes like ARP (ndisc.h).
 *
 * Counters are by slot: an endpoint's own, or slot 0 for the node's
 * interfaces (data interfaces, the tunnel) and veths with no endpoint;
 * flow events still name the interface. */

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
#include "tunnel.h"
#include "ndisc.h"
#include "host_lb.h"

char LICENSE[] SEC("license") = "GPL";

/* The programs from_pod hands packets on to (abi.h's CALL_*). */
struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(max_entries, MAX_CALLS);
	__type(key, __u32);
	__type(value, __u32);
} calls SEC(".maps");

/* How a packet reached a pod's ingress decision. */
enum ingress_path {
	VIA_STACK = 0,       /* routed by the kernel to the host veth */
	VIA_LOCAL_POD = 1,   /* redirected by the sending pod's from_pod */
	VIA_TUNNEL = 2,      /* from another node, through the tunnel */
	VIA_NET = 3,         /* from the LAN, redirected by from_net */
};

/* A packet to a pod on a flow its conntrack holds (`ct` from ct_lookup).
 * `look`: the translation of a service's reply is looked up, not taken
 * from the entry (nat_reverse_reply). */
static __always_inline int ingress_established(struct __sk_buff *skb, struct packet *p,
					       __u32 ifindex, struct ct_entry *e, int ct, bool look)
{
	/* A reply to this pod's own service connection: the backend's
	 * address becomes the service's again. */
	if (ct == CT_REPLY && (e->flags & CT_F_SERVICE) &&
	    nat_reverse_reply(skb, p, e, look) == NAT_FAILED)
		return drop(p, e->slot, ifindex, DIR_INGRESS, DROP_NAT);
	count_allowed(e->slot, DIR_INGRESS, p->len);
	return TC_ACT_OK;
}

/* The destination pod's side of a packet whose flow its conntrack does
 * not hold (the caller looked; a fragment is not looked up): its ingress
 * policy, for a new flow. TC_ACT_OK to deliver, TC_ACT_SHOT when dropped.
 * `tunnel_peer`: the node a tunnelled flow's replies go back to (0: they
 * take the usual way). */
static __always_inline int ingress_verdict(struct __sk_buff *skb, struct packet *p,
					   const struct endpoint *ep, enum ingress_path path,
					   __be32 tunnel_peer)
{
	__u32 ifindex = ep->ifindex;
	if (p->fragment) {
		if (policy_of(ifindex, DIR_INGRESS))
			return drop(p, ep->slot, ifindex, DIR_INGRESS, DROP_FRAGMENT);
		count_allowed(ep->slot, DIR_INGRESS, p->len);
		return TC_ACT_OK;
	}
	if (ct_related(skb, p, ifindex)) {
		/* About this pod's service connection: it must name the service. */
		if (nat_reverse_icmp_error(skb, p) == NAT_FAILED)
			return drop(p, ep->slot, ifindex, DIR_INGRESS, DROP_NAT);
		count_allowed(ep->slot, DIR_INGRESS, p->len);
		return TC_ACT_OK;
	}
	/* The node itself (kubelet probes, host-network pods) is always let
	 * in, as Kubernetes expects; its packets carry no ingress device. */
	bool from_node = path == VIA_STACK && skb->ingress_ifindex == 0;
	if (!from_node) {
		int verdict =
			policy_check(ifindex, DIR_INGRESS, p->saddr, p->proto, bpf_ntohs(p->dport));
		if (policy_denies(verdict))
			return drop_denied(p, ep->slot, ifindex, DIR_INGRESS, DROP_POLICY_INGRESS,
					   verdict);
	}
	__u8 flags = path == VIA_LOCAL_POD ? CT_F_LOCAL_DELIVERY : 0;
	/* A NodePort flow: this backend's replies go back as the service. */
	if (path != VIA_LOCAL_POD && nat_reversed_at_backend(p))
		flags |= CT_F_SERVICE;
	/* The way the pod's replies will leave the node. */
	__be32 via = tunnel_peer;
	if (tunnel_peer)
		flags |= CT_F_TUNNEL;
	else if (path != VIA_LOCAL_POD)
		flags |= route_to(p->saddr, &via);
	ct_create(p, ep, flags, via);
	trace_new_flow(p, ifindex, DIR_INGRESS);
	count_allowed(ep->slot, DIR_INGRESS, p->len);
	return TC_ACT_OK;
}

/* Hands a packet to the local pod behind host veth `dst_ifindex`, applying
 * its ingress decision first (redirect_peer skips its to_pod); the stack
 * takes what it cannot. An established flow's entry stands for the
 * endpoint (to_pod's short path) and carries its MAC: such a packet costs
 * that one lookup after the address's. `tunnel_peer`: see ingress_verdict. */
static __always_inline int deliver_to_pod(struct __sk_buff *skb, struct packet *p,
					  __u32 dst_ifindex, enum ingress_path path,
					  __be32 tunnel_peer)
{
	if (!dst_ifindex || p->ttl <= 1) /* the stack sends time-exceeded */
		return TC_ACT_OK;
	if (!p->fragment) {
		struct ct_entry *e;
		__u64 now = flow_clock();
		int ct = ct_lookup(p, dst_ifindex, now, &e);
		if (ct != CT_MISS) {
			int verdict = ingress_established(skb, p, dst_ifindex, e, ct,
							  e->last_seen_ns == now);
			if (verdict != TC_ACT_OK)
				return verdict;
			return sent(redirect_to_pod(skb, dst_ifindex, e->pod_mac), p, e->slot,
				    dst_ifindex, DIR_INGRESS);
		}
	}
	struct endpoint *dst = endpoint_of(dst_ifindex);
	if (!dst)
		return TC_ACT_OK;
	int verdict = ingress_verdict(skb, p, dst, path, tunnel_peer);
	if (verdict != TC_ACT_OK)
		return verdict;
	return sent(redirect_to_pod(skb, dst->ifindex, dst->mac), p, dst->slot, dst->ifindex,
		    DIR_INGRESS);
}

/* A pod's packet for somewhere off this node that no flow's entry
 * carries the way of (route_to). */
static __always_inline int to_elsewhere(struct __sk_buff *skb, const struct packet *p, __u32 slot)
{
	__be32 via = 0;
	return leave_node(skb, p, route_to(p->daddr, &via), via, slot);
}

/* A packet of an established flow between two pods of this node, from
 * the pod of entry `e` (`ct` its direction). The receiver's side (its
 * endpoint, its entry and its policy's verdict) is consulted when
 * `consult`: the entry was just refreshed (at most once a second, which
 * also keeps the receiver's entry alive), the packet changes a TCP flow's
 * state, or the receiver is not known yet. Between those the entry
 * carries the receiver as last consulted, and for a reply that the
 * receiver turns back into a service's (a backend's to a client of this
 * node) the service as well: the packet costs this one entry's lookup. */
static __always_inline int egress_to_local_pod(struct __sk_buff *skb, struct packet *p,
					       struct ct_entry *e, int ct, bool consult)
{
	if (p->tcp_flags & (TCPF_SYN | TCPF_FIN | TCPF_RST))
		consult = true;
	if (!consult && e->peer_ifindex) {
		if (p->ttl <= 1) /* the stack sends time-exceeded */
			return TC_ACT_OK;
		if (ct == CT_REPLY && e->turn_addr &&
		    nat_rewrite(skb, p, true, e->turn_addr, e->turn_port) < 0)
			return drop(p, e->peer_slot, e->peer_ifindex, DIR_INGRESS, DROP_NAT);
		return forwarded(redirect_to_pod(skb, e->peer_ifindex, e->peer_mac), p, e->peer_slot,
				 e->peer_ifindex, DIR_INGRESS);
	}
	__u32 dst_ifindex = local_endpoint_ifindex(p->daddr);
	struct endpoint *dst = dst_ifindex ? endpoint_of(dst_ifindex) : NULL;
	if (!dst) { /* gone since the flow began: the stack's to route */
		ct_remember_peer(e, NULL);
		return TC_ACT_OK;
	}
	if (p->ttl <= 1) /* the stack sends time-exceeded */
		return TC_ACT_OK;
	/* The receiver is remembered only when its side let the packet in on
	 * its entry: not when it had none (a new flow, judged by its policy),
	 * nor for a hairpin (whose destination its entry changes). A reply is
	 * remembered with the source it was given (a service's, or its own). */
	struct ct_entry *theirs;
	int their_ct = ct_lookup(p, dst->ifindex, flow_clock(), &theirs);
	int verdict;
	if (their_ct != CT_MISS) {
		__be32 saddr = p->saddr, daddr = p->daddr;
		__be16 sport = p->sport;
		verdict = ingress_established(skb, p, dst->ifindex, theirs, their_ct, true);
		bool remember = verdict == TC_ACT_OK && p->daddr == daddr;
		ct_remember_peer(e, remember ? dst : NULL);
		if (remember && ct == CT_REPLY) {
			bool turned = p->saddr != saddr || p->sport != sport;
			ct_remember_turn(e, turned ? p->saddr : 0, turned ? p->sport : 0);
		}
		/* A client's packet through a service: the backend's replies
		 * are turned into the service this packet was for (a client
		 * port may reach one backend through two services in turn). */
		if (remember && ct == CT_ORIGINAL && (e->flags & CT_F_SERVICE))
			ct_remember_turn(theirs, e->turn_addr, e->turn_port);
	} else {
		verdict = ingress_verdict(skb, p, dst, VIA_LOCAL_POD, 0);
		ct_remember_peer(e, NULL);
	}
	if (verdict != TC_ACT_OK)
		return verdict;
	return sent(redirect_to_pod(skb, dst->ifindex, dst->mac), p, dst->slot, dst->ifindex,
		    DIR_INGRESS);
}

/* Where a backend's reply, turned into the service's on the backend's own
 * side (entry `e`'s pod, host veth `ifindex`), goes: straight back into
 * the pod for a hairpin (the entry knows the pod), to a client pod of this
 * node, else by the FIB (a NodePort's client outside). A sending helper's
 * verdict (the caller counts it: forwarded). */
static __always_inline int backend_reply_way(struct __sk_buff *skb, const struct packet *p,
					     const struct ct_entry *e, __u32 ifindex)
{
	if (p->daddr == e->pod_ip)
		return p->ttl > 1 ? redirect_to_pod(skb, ifindex, e->pod_mac) : TC_ACT_OK;
	__u32 dst = local_endpoint_ifindex(p->daddr);
	struct endpoint *client = dst ? endpoint_of(dst) : NULL;
	if (client)
		return p->ttl > 1 ? redirect_to_pod(skb, client->ifindex, client->mac) : TC_ACT_OK;
	return redirect_by_fib(skb, p);
}

/* A pod's packet on a flow its conntrack holds (`ct` from ct_lookup or
 * ct_update), already checked to be the pod's own. `consult`: see
 * egress_to_local_pod. */
static __always_inline int egress_established(struct __sk_buff *skb, struct packet *p,
					      __u32 ifindex, struct ct_entry *e, int ct,
					      bool consult)
{
	/* A backend's reply translated on its own side: to an external
	 * client (NodePort), or to this very pod, which reached itself
	 * through a service (hairpin) and takes it straight back. */
	if (ct == CT_REPLY && (e->flags & CT_F_SERVICE)) {
		/* Looked up every time: the same client port may reach this
		 * backend through another node or NodePort at any moment
		 * (nat_record_dsr), which only the translation tells. */
		int rev = nat_reverse(skb, p);
		if (rev == NAT_FAILED)
			return drop(p, e->slot, ifindex, DIR_EGRESS, DROP_NAT);
		int verdict = rev == NAT_TRANSLATED ? backend_reply_way(skb, p, e, ifindex) : TC_ACT_OK;
		return forwarded(verdict, p, e->slot, ifindex, DIR_EGRESS);
	}
	if (e->flags & CT_F_LOCAL_DELIVERY) {
		/* The receiver's side counts its own verdict. */
		count_allowed(e->slot, DIR_EGRESS, p->len);
		return egress_to_local_pod(skb, p, e, ct, consult);
	}
	/* The way chosen when the flow began (route_to). */
	return leave_node(skb, p, e->flags, e->tunnel_peer, e->slot);
}

/* The short path of a pod's packet on an established TCP connection
 * through a service: the connection's translation (the NAT entry of the
 * client's tuple, taken while it is fresh: when it is due its refresh,
 * once a second, the long path checks the frontend still exists and the
 * reverse entry is still the connection's) and the translated flow's
 * conntrack entry, which must carry the pod's addresses. Two lookups, and
 * nothing written before both are found. SYNs (a backend must still serve
 * a new connection), UDP (whose reverse entry is checked on every
 * datagram) and hairpin flows take the long path. SHORT_PATH_MISSED when
 * the long path must take the packet. */
#define SHORT_PATH_MISSED -1
static __always_inline int egress_to_service_established(struct __sk_buff *skb, struct packet *p,
							 __u32 ifindex, __u64 now)
{
	if (p->proto != IPPROTO_TCP || (p->tcp_flags & TCPF_SYN))
		return SHORT_PATH_MISSED;
	struct nat_key fk;
	nat_key_fill(&fk, p->saddr, p->daddr, p->sport, p->dport, p->proto, NAT_FWD);
	struct nat_entry *fwd = bpf_map_lookup_elem(&nat, &fk);
	if (!fwd || fwd->peer || (__s64)(now - fwd->last_seen_ns) > (__s64)CT_REFRESH_NS)
		return SHORT_PATH_MISSED;
	__be32 backend = fwd->addr;
	__be16 backend_port = fwd->port;
	struct ct_key k;
	bool src_is_a =
		ct_key_fill(&k, p->saddr, backend, p->sport, backend_port, p->proto, ifindex);
	struct ct_entry *e = ct_live(bpf_map_lookup_elem(&conntrack, &k), p, now);
	if (!e || e->pod_ip != p->saddr || __builtin_memcmp(p->src_mac, e->pod_mac, ETH_ALEN) != 0)
		return SHORT_PATH_MISSED;
	if (nat_rewrite(skb, p, false, backend, backend_port) < 0)
		return drop(p, e->slot, ifindex, DIR_EGRESS, DROP_NAT);
	int ct = ct_update(e, p, src_is_a, now);
	return egress_established(skb, p, ifindex, e, ct, e->last_seen_ns == now);
}

/* What an IPv6 packet on endpoint `ep`'s `dir` side needs no flow for:
 * link control passes, a later fragment passes unless a policy applies
 * (it carries no ports to judge). TC_ACT_OK or TC_ACT_SHOT (counted) for
 * those; V6_JUDGE for the rest. */
#define V6_JUDGE -1
static __always_inline int v6_flowless(const struct packet *p, __u32 ifindex, __u32 slot, __u8 dir)
{
	if (v6_link_control(p))
		return TC_ACT_OK;
	if (!p->fragment)
		return V6_JUDGE;
	if (policy_of(ifindex, dir))
		return drop(p, slot, ifindex, dir, DROP_FRAGMENT);
	return TC_ACT_OK;
}

/* An IPv6 packet from a pod, allowed (on the flow of entry `e`, or NULL):
 * counted, and sent on the way its flow's packets go: back through the
 * tunnel to the node a flow came from (CT_F_TUNNEL: a NodePort's flow
 * another node took in, a peer's pod's), else by the stack. */
static __always_inline int egress6_allowed(struct __sk_buff *skb, const struct packet *p,
					   const struct ct_entry *e, __u32 slot)
{
	int verdict = TC_ACT_OK;
	if (e && (e->flags & CT_F_TUNNEL))
		verdict = tunnel_send(skb, e->tunnel_peer, VNI_POD);
	return forwarded(verdict, p, slot, skb->ifindex, DIR_EGRESS);
}

/* A reply of an IPv6 service flow (`e`, CT_F_SERVICE): the
 * backend's source becomes the service's again (on the client pod's
 * ingress, or on the backend's egress for a NodePort's client outside,
 * whom the stack then routes it to). For a hairpin (a pod that
 * reached itself through a service; its reply leaves it for the hairpin
 * address) the reply is the pod's own to take back, straight into it:
 * through the stack it would arrive at its own to_pod as a new flow from
 * the service. TC_ACT_OK when the stack takes it on. On the client's
 * ingress the entry's turn serves unless `look` (nat_reverse_reply); a
 * backend's egress looks its translation up every time, as IPv4's
 * (egress_established). */
static __always_inline int reverse_reply6(struct __sk_buff *skb, struct packet *p,
					  struct ct_entry *e, __u32 ifindex, __u8 dir, bool look)
{
	int rev = dir == DIR_INGRESS ? nat_reverse_reply6(skb, p, e, look) : nat_reverse6(skb, p);
	if (rev == NAT_FAILED)
		return drop(p, e->slot, ifindex, dir, DROP_NAT);
	count_allowed(e->slot, dir, p->len);
	if (rev == NAT_TRANSLATED && dir == DIR_EGRESS && endpoint6_owns(ifindex, &p->daddr6))
		return p->ttl > 1 ? redirect_to_pod6(skb, ifindex, e->pod_mac) : TC_ACT_OK;
	return TC_ACT_OK;
}

/* Entry `e` of a flow whose packet was translated as `flow`: its replies
 * answer for this frontend now (the entry may have been another's, for the
 * same client port and backend), a hairpin's are looked up; as IPv4's
 * (from_pod). A global function: from_pod6's stack has no room. */
__attribute__((noinline)) int ct6_remember_frontend(struct ct_entry *e,
						    const struct lb_flow6 *flow)
{
	if (!e || !flow) /* never: the caller's; the verifier asks */
		return 0;
	if (v6_unspecified(&flow->fwd.peer))
		ct6_remember_turn(e, &flow->frontend, flow->frontend_port);
	else
		ct6_remember_turn(e, NULL, 0);
	return 0;
}

/* An IPv6 packet from the pod behind host veth `ifindex` (counters
 * `slot`), once its MAC is known to be the pod's: its source must be the
 * pod's address (`owned`) or, for neighbour discovery, a link-local or
 * unspecified one; then what needs no flow (v6_flowless), tracked flows
 * and errors about them pass, and a new flow needs the egress policy's
 * leave. A packet to a service's frontend is translated to a backend
 * first (lb_translate6), and policy judges the backend. `ct_missed`: the
 * short path looked the flow up and found none; `service`: the packet may
 * be to a frontend (maybe_service). */
static __always_inline int from_pod_v6(struct __sk_buff *skb, struct packet *p, __u32 ifindex,
				       __u32 slot, bool owned, int parsed, bool ct_missed,
				       bool service)
{
	if (!owned && !v6_pod_link_source_ok(p))
		return drop(p, slot, ifindex, DIR_EGRESS, DROP_SPOOF_IP);
	if (parsed == PARSE_IPV6_EXT)
		return drop(p, slot, ifindex, DIR_EGRESS, DROP_IPV6_EXT);
	int flowless = v6_flowless(p, ifindex, slot, DIR_EGRESS);
	if (flowless == TC_ACT_SHOT)
		return flowless;
	if (flowless == TC_ACT_OK)
		goto allowed;
	struct lb_flow6 flow = {};
	/* Calls only for what may need them (a frontend's bit, an error). */
	int lb = service ? lb_translate6(skb, p, &flow) : LB_NONE;
	if (lb == LB_NO_BACKEND)
		return rejected(reject6_port_unreachable(skb, p, REJECT_INTO_POD), p, slot, ifindex,
				DIR_EGRESS, DROP_NO_BACKEND);
	if (lb == LB_FAILED)
		return drop(p, slot, ifindex, DIR_EGRESS, DROP_NAT);
	/* An error this pod's kernel sends about a service's reply is the
	 * backend's to hear (its own ingress then passes it as related). */
	if (lb == LB_NONE && p->proto == IPPROTO_ICMPV6 &&
	    nat_forward_icmp6_error(skb, p) == NAT_FAILED)
		return drop(p, slot, ifindex, DIR_EGRESS, DROP_NAT);
	struct ct_entry *e;
	/* The short path looked this very tuple up unless it was translated. */
	if (!ct_missed || lb == LB_TRANSLATED) {
		int ct = ct_lookup(p, ifindex, flow_clock(), &e);
		if (ct != CT_MISS) {
			if (lb == LB_TRANSLATED) {
				lb_record6(&flow, p->proto);
				ct6_remember_frontend(e, &flow);
			}
			if (ct == CT_REPLY && (e->flags & CT_F_SERVICE))
				return reverse_reply6(skb, p, e, ifindex, DIR_EGRESS, true);
			return egress6_allowed(skb, p, e, slot);
		}
	}
	/* An error about a tracked flow passes as part of it, untracked, the
	 * way the flow's replies go; about a NodePort's flow this pod serves,
	 * it is turned here as they are (the translation's reverse entry is
	 * this node's only then: a client pod's is on the client's node). */
	struct ct_entry *related = ct6_related(skb, p, ifindex);
	if (related) {
		if ((related->flags & CT_F_SERVICE) &&
		    nat_reverse_icmp6_error(skb, p) == NAT_FAILED)
			return drop(p, slot, ifindex, DIR_EGRESS, DROP_NAT);
		return egress6_allowed(skb, p, related, slot);
	}
	int verdict = policy_judge6(ifindex, DIR_EGRESS, &p->daddr6, p);
	if (policy_denies(verdict))
		return drop_denied(p, slot, ifindex, DIR_EGRESS, DROP_POLICY_EGRESS, verdict);
	/* The flow's entry is made from the endpoint's record, looked up only
	 * now: a denied flow costs one lookup fewer. */
	struct endpoint *ep = endpoint_of(ifindex);
	if (!ep)
		return drop(p, slot, ifindex, DIR_EGRESS, DROP_NO_ENDPOINT);
	if (lb == LB_TRANSLATED)
		lb_record6(&flow, p->proto);
	ct6_create(p, ep, true, lb == LB_TRANSLATED ? CT_F_SERVICE : 0, 0);
	trace_new_flow(p, ifindex, DIR_EGRESS);
allowed:
	count_allowed(slot, DIR_EGRESS, p->len);
	return TC_ACT_OK;
}

/* An IPv6 packet to the pod whose flow the short path did not find: what
 * needs no flow (v6_flowless) and errors about a tracked flow pass, the
 * node is let in, and a new flow needs the ingress policy's leave. A
 * NodePort's flow (its translation reversed on this node) is marked for
 * its replies to be turned; `tunnel_peer`: the node a tunnelled flow's
 * replies go back to (0: they take the stack). */
static __always_inline int to_pod_v6(struct __sk_buff *skb, struct packet *p,
				     const struct endpoint *ep, __be32 tunnel_peer)
{
	__u32 ifindex = ep->ifindex, slot = ep->slot;
	int flowless = v6_flowless(p, ifindex, slot, DIR_INGRESS);
	if (flowless == TC_ACT_SHOT)
		return flowless;
	if (flowless == TC_ACT_OK)
		goto allowed;
	if (ct6_related(skb, p, ifindex)) {
		/* About this pod's service connection: it must name the service. */
		if (nat_reverse_icmp6_error(skb, p) == NAT_FAILED)
			return drop(p, slot, ifindex, DIR_INGRESS, DROP_NAT);
		goto allowed;
	}
	/* The node itself is let in, as for IPv4 (ingress_verdict). */
	bool from_node = skb->ingress_ifindex == 0;
	if (!from_node) {
		int verdict = policy_judge6(ifindex, DIR_INGRESS, &p->saddr6, p);
		if (policy_denies(verdict))
			return drop_denied(p, slot, ifindex, DIR_INGRESS, DROP_POLICY_INGRESS,
					   verdict);
	}
	__u8 flags = nat_reversed_at_backend6(p) ? CT_F_SERVICE : 0;
	if (tunnel_peer)
		flags |= CT_F_TUNNEL;
	ct6_create(p, ep, false, flags, tunnel_peer);
	trace_new_flow(p, ifindex, DIR_INGRESS);
allowed:
	count_allowed(slot, DIR_INGRESS, p->len);
	return TC_ACT_OK;
}

/* deliver_to_pod for IPv6: hands a packet to the local pod behind host
 * veth `dst_ifindex` (local_endpoint6_ifindex), its ingress decision
 * taken first (to_pod_v6, with `tunnel_peer`); the stack takes what it
 * cannot. */
static __always_inline int deliver_to_pod6(struct __sk_buff *skb, struct packet *p,
					   __u32 dst_ifindex, __be32 tunnel_peer)
{
	if (p->ttl <= 1) /* the stack sends time-exceeded */
		return TC_ACT_OK;
	struct ct_entry *e;
	__u64 now = flow_clock();
	int ct = ct_lookup(p, dst_ifindex, now, &e);
	if (ct != CT_MISS) {
		if (ct == CT_REPLY && (e->flags & CT_F_SERVICE)) {
			int verdict = reverse_reply6(skb, p, e, dst_ifindex, DIR_INGRESS,
						     e->last_seen_ns == now);
			if (verdict != TC_ACT_OK)
				return verdict;
		} else {
			count_allowed(e->slot, DIR_INGRESS, p->len);
		}
		return redirect_to_pod6(skb, dst_ifindex, e->pod_mac);
	}
	struct endpoint *ep = endpoint_of(dst_ifindex);
	if (!ep)
		return TC_ACT_OK;
	int verdict = to_pod_v6(skb, p, ep, tunnel_peer);
	if (verdict != TC_ACT_OK)
		return verdict;
	return redirect_to_pod6(skb, dst_ifindex, ep->mac);
}

/* egress_to_service_established for IPv6: the NAT entry of the client's
 * tuple while it is fresh, then the translated flow's conntrack entry,
 * whose pod side must be the sender. Inline, as IPv4's: a BPF call's
 * return costs as much as a helper's on a host that mitigates SRSO. */
static __always_inline int egress_to_service6_established(struct __sk_buff *skb,
							  struct packet *p, __u32 ifindex,
							  __u64 now)
{
	if (p->proto != IPPROTO_TCP || (p->tcp_flags & TCPF_SYN))
		return SHORT_PATH_MISSED;
	/* The keys in blocks of their own: their stack is free again for
	 * drop()'s event, in from_pod's frame. */
	union v6addr backend;
	__be16 backend_port;
	{
		struct nat_key6 fk;
		nat_key6_fill(&fk, &p->saddr6, &p->daddr6, p->sport, p->dport, p->proto, NAT_FWD);
		struct nat_entry6 *fwd = bpf_map_lookup_elem(&nat6, &fk);
		if (!fwd || !v6_unspecified(&fwd->peer) ||
		    (__s64)(now - fwd->last_seen_ns) > (__s64)CT_REFRESH_NS)
			return SHORT_PATH_MISSED;
		backend = fwd->addr;
		backend_port = fwd->port;
	}
	bool src_is_a;
	struct ct_entry *e;
	{
		struct ct_key6 k;
		src_is_a = ct_key6_fill(&k, &p->saddr6, &backend, p->sport, backend_port, p->proto,
					ifindex);
		e = ct_live(bpf_map_lookup_elem(&conntrack6, &k), p, now);
	}
	if (!e || src_is_a != !!(e->flags & CT_F_POD_IS_A) ||
	    __builtin_memcmp(p->src_mac, e->pod_mac, ETH_ALEN) != 0)
		return SHORT_PATH_MISSED;
	if (nat_rewrite6(skb, p, false, &backend, backend_port) < 0)
		return drop(p, e->slot, ifindex, DIR_EGRESS, DROP_NAT);
	ct_update(e, p, src_is_a, now);
	count_allowed(e->slot, DIR_EGRESS, p->len);
	return TC_ACT_OK;
}

/* IPv6's short paths, in from_pod before the tail call: an established
 * connection's through a service (egress_to_service6_established), or a
 * flow not to a service whose entry says the pod is the sender. A service
 * flow's (CT_F_SERVICE: its replies are turned) and everything else is
 * from_pod6's, told in cb whether this looked the flow up and missed.
 * SHORT_PATH_MISSED when the packet is from_pod6's. */
static __always_inline int from_pod_v6_established(struct __sk_buff *skb, struct packet *p,
						   int parsed, __u32 ifindex)
{
	skb->cb[CB_CT_MISSED] = 0;
	if (parsed != PARSED_IPV6 || p->fragment)
		return SHORT_PATH_MISSED;
	__u64 now = flow_clock();
	if (maybe_service(p))
		return egress_to_service6_established(skb, p, ifindex, now);
	bool src_is_a;
	struct ct_entry *e = ct6_find(p, ifindex, now, &src_is_a);
	if (e && src_is_a == !!(e->flags & CT_F_POD_IS_A) && !(e->flags & CT_F_SERVICE) &&
	    __builtin_memcmp(p->src_mac, e->pod_mac, ETH_ALEN) == 0) {
		ct_update(e, p, src_is_a, now);
		return egress6_allowed(skb, p, e, e->slot);
	}
	skb->cb[CB_CT_MISSED] = !e;
	return SHORT_PATH_MISSED;
}

/* An IPv4 packet from the pod, once its MAC is known to be the pod's and
 * the short path did not take it (`ct_missed`: it looked the flow up and
 * found none): its source must be the pod's address; a later fragment
 * passes unless a policy applies; a packet to a service's frontend is
 * translated to a backend first (lb_translate) and policy judges the
 * backend; tracked flows and errors about them pass, and a new flow needs
 * the egress policy's leave, then goes to a local pod straight or leaves
 * the node the way its flow's entry records. */
static __always_inline int from_pod_v4(struct __sk_buff *skb, struct packet *p,
				       const struct endpoint *ep, bool ct_missed)
{
	__u32 ifindex = ep->ifindex, slot = ep->slot;
	if (p->saddr != ep->ip)
		return drop(p, slot, ifindex, DIR_EGRESS, DROP_SPOOF_IP);

	if (p->fragment) {
		if (policy_of(ifindex, DIR_EGRESS))
			return drop(p, slot, ifindex, DIR_EGRESS, DROP_FRAGMENT);
		count_allowed(slot, DIR_EGRESS, p->len);
		return TC_ACT_OK;
	}

	struct lb_flow flow = {};
	int lb = lb_translate(skb, p, &flow);
	if (lb == LB_NO_BACKEND)
		return rejected(reject_port_unreachable(skb, p, REJECT_INTO_POD), p, slot, ifindex,
				DIR_EGRESS, DROP_NO_BACKEND);
	if (lb == LB_FAILED)
		return drop(p, slot, ifindex, DIR_EGRESS, DROP_NAT);
	/* An error this pod's kernel sends about a service's reply is the
	 * backend's to hear (its own ingress then passes it as related). */
	if (lb == LB_NONE && nat_forward_icmp_error(skb, p) == NAT_FAILED)
		return drop(p, slot, ifindex, DIR_EGRESS, DROP_NAT);

	/* The short path looked this very tuple up unless it was translated. */
	if (!ct_missed || lb == LB_TRANSLATED) {
		struct ct_entry *e;
		int ct = ct_lookup(p, ifindex, flow_clock(), &e);
		if (ct != CT_MISS) {
			if (lb == LB_TRANSLATED) {
				lb_record(&flow, p->proto);
				/* Its replies are this frontend's now (the entry
				 * may have been another's, for the same client
				 * port and backend); a hairpin's are looked up. */
				bool hairpin = flow.fwd.peer != 0;
				ct_remember_turn(e, hairpin ? 0 : flow.frontend,
						 hairpin ? 0 : flow.frontend_port);
			}
			return egress_established(skb, p, ifindex, e, ct, true);
		}
	}
	/* An ICMP error about a tracked flow passes as part of that flow and
	 * is not a flow of its own: tracking it (ports 0/0) would let every
	 * other ICMP error between the two addresses past policy. */
	struct ct_entry *related = ct_related(skb, p, ifindex);
	if (!related) {
		int verdict =
			policy_check(ifindex, DIR_EGRESS, p->daddr, p->proto, bpf_ntohs(p->dport));
		if (policy_denies(verdict))
			return drop_denied(p, slot, ifindex, DIR_EGRESS, DROP_POLICY_EGRESS, verdict);
	}

	__u32 dst = local_endpoint_ifindex(p->daddr);
	if (dst && !fib_routes_to(skb, p, dst))
		dst = 0;
	/* An error about a NodePort flow this pod serves, for the client
	 * outside, goes the way the flow's replies go (egress_established):
	 * back through the tunnel to the node that took the flow in, which
	 * turns it; or turned here (DSR, a local backend) and routed by us.
	 * A local client's own ingress turns it. */
	if (related && !dst) {
		if (related->flags & CT_F_TUNNEL)
			return forwarded(tunnel_send(skb, related->tunnel_peer, VNI_POD), p, slot,
					 ifindex, DIR_EGRESS);
		int rev = nat_reverse_icmp_error(skb, p);
		if (rev == NAT_FAILED)
			return drop(p, slot, ifindex, DIR_EGRESS, DROP_NAT);
		if (rev == NAT_TRANSLATED)
			return forwarded(redirect_by_fib(skb, p), p, slot, ifindex, DIR_EGRESS);
		return to_elsewhere(skb, p, slot);
	}
	__u8 ct_flags = dst ? CT_F_LOCAL_DELIVERY : 0;
	__be32 via = 0;
	if (!dst)
		ct_flags |= route_to(p->daddr, &via);
	if (lb == LB_TRANSLATED) {
		lb_record(&flow, p->proto);
		ct_flags |= CT_F_SERVICE;
	}
	if (!related) {
		ct_create(p, ep, ct_flags, via);
		trace_new_flow(p, ifindex, DIR_EGRESS);
	}
	if (!dst)
		return leave_node(skb, p, ct_flags, via, slot);
	/* The receiver's side counts its own verdict. */
	count_allowed(slot, DIR_EGRESS, p->len);
	return deliver_to_pod(skb, p, dst, VIA_LOCAL_POD, 0);
}

SEC("classifier")
int from_pod(struct __sk_buff *skb)
{
	struct packet p = {};
	__u32 ifindex = skb->ifindex;
	int parsed = parse_packet(skb, &p);

	/* Short path: a packet of an established flow carrying the addresses
	 * the flow's entry recorded for the pod (so it passes the
	 * anti-spoofing checks below). Nothing is written before that is
	 * known. */
	bool ct_missed = false;
	if (parsed == PARSED_IPV4 && !p.fragment && maybe_service(&p)) {
		int verdict = egress_to_service_established(skb, &p, ifindex, flow_clock());
		if (verdict != SHORT_PATH_MISSED)
			return verdict;
	} else if (parsed == PARSED_IPV4 && !p.fragment) {
		__u64 now = flow_clock();
		bool src_is_a;
		struct ct_entry *e = ct_find(&p, ifindex, now, &src_is_a);
		if (e && e->pod_ip == p.saddr &&
		    __builtin_memcmp(p.src_mac, e->pod_mac, ETH_ALEN) == 0) {
			int ct = ct_update(e, &p, src_is_a, now);
			return egress_established(skb, &p, ifindex, e, ct, e->last_seen_ns == now);
		}
		ct_missed = !e;
	} else if (parsed == PARSED_IPV6 || parsed == PARSE_IPV6_EXT) {
		int verdict = from_pod_v6_established(skb, &p, parsed, ifindex);
		if (verdict != SHORT_PATH_MISSED)
			return verdict;
		bpf_tail_call(skb, &calls, CALL_FROM_POD6);
		return drop(&p, 0, ifindex, DIR_EGRESS, DROP_NO_PROGRAM);
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
	if (parsed == PARSED_ARP) {
		count_allowed(slot, DIR_EGRESS, p.len);
		return TC_ACT_OK;
	}
	return from_pod_v4(skb, &p, ep, ct_missed);
}

/* from_pod's IPv6 half, tail-called for the IPv6 packets its short paths
 * did not take (CALL_FROM_POD6): the endpoint's checks and from_pod_v6.
 * The pod's IPv6 entry carries its MAC and slot, so one lookup judges the
 * sender; a pod without one (no IPv6 address) is known by its endpoint. */
SEC("classifier")
int from_pod6(struct __sk_buff *skb)
{
	struct packet p = {};
	__u32 ifindex = skb->ifindex;
	int parsed = parse_packet(skb, &p);
	bool ct_missed = skb->cb[CB_CT_MISSED];
	bool service = parsed == PARSED_IPV6 && !p.fragment && maybe_service(&p);
	/* Scalars past the branches: the verifier then walks from_pod_v6 once
	 * for both kinds of record. */
	__u32 slot;
	bool mac_ok, owned = false;
	struct endpoint6 *ep6 = bpf_map_lookup_elem(&endpoints6, &ifindex);
	if (ep6) {
		slot = ep6->slot;
		mac_ok = __builtin_memcmp(p.src_mac, ep6->mac, ETH_ALEN) == 0;
		owned = v6addr_equal(&ep6->ip, &p.saddr6);
	} else {
		struct endpoint *ep = endpoint_of(ifindex);
		if (!ep)
			return drop(&p, 0, 0, DIR_EGRESS, DROP_NO_ENDPOINT);
		slot = ep->slot;
		mac_ok = __builtin_memcmp(p.src_mac, ep->mac, ETH_ALEN) == 0;
	}
	if (!mac_ok)
		return drop(&p, slot, ifindex, DIR_EGRESS, DROP_SPOOF_MAC);
	return from_pod_v6(skb, &p, ifindex, slot, owned, parsed, ct_missed, service);
}

SEC("classifier")
int to_pod(struct __sk_buff *skb)
{
	struct packet p = {};
	__u32 ifindex = skb->ifindex;
	int parsed = parse_packet(skb, &p);

	/* Short path: a packet of an established flow (its entry stands for
	 * the endpoint: an endpoint's entries name its slot, and no packet
	 * meets them once the endpoint is gone, its programs detached). */
	if (parsed == PARSED_IPV4 && !p.fragment) {
		struct ct_entry *e;
		__u64 now = flow_clock();
		int ct = ct_lookup(&p, ifindex, now, &e);
		if (ct != CT_MISS)
			return ingress_established(skb, &p, ifindex, e, ct, e->last_seen_ns == now);
	} else if (parsed == PARSED_IPV6 && !p.fragment) {
		struct ct_entry *e;
		__u64 now = flow_clock();
		int ct = ct_lookup(&p, ifindex, now, &e);
		if (ct != CT_MISS) {
			/* A reply to this pod's own service connection. */
			if (ct == CT_REPLY && (e->flags & CT_F_SERVICE))
				return reverse_reply6(skb, &p, e, ifindex, DIR_INGRESS,
						      e->last_seen_ns == now);
			count_allowed(e->slot, DIR_INGRESS, p.len);
			return TC_ACT_OK;
		}
	}

	struct endpoint *ep = endpoint_of(ifindex);
	if (!ep)
		return drop(&p, 0, 0, DIR_INGRESS, DROP_NO_ENDPOINT);
	switch (parsed) {
	case PARSE_FAILED:
		return drop(&p, ep->slot, ifindex, DIR_INGRESS, DROP_PARSE);
	case PARSE_UNSUPPORTED:
		return drop(&p, ep->slot, ifindex, DIR_INGRESS, DROP_UNSUPPORTED_L3);
	case PARSE_IPV6_EXT:
		return drop(&p, ep->slot, ifindex, DIR_INGRESS, DROP_IPV6_EXT);
	case PARSED_IPV4:
		return ingress_verdict(skb, &p, ep, VIA_STACK, 0);
	case PARSED_IPV6:
		return to_pod_v6(skb, &p, ep, 0);
	default: /* ARP */
		count_allowed(ep->slot, DIR_INGRESS, p.len);
		return TC_ACT_OK;
	}
}

/* A packet from the LAN to this node (another node's pod, or the node
 * itself) for one of this node's pods goes straight to the pod, its
 * ingress decision taken here as from_tunnel does, without the host stack.
 * Everything else is the node's and takes the stack. */
static __always_inline int from_net_to_pod(struct __sk_buff *skb, struct packet *p)
{
	if (skb->pkt_type != PACKET_HOST)
		return TC_ACT_OK;
	return deliver_to_pod(skb, p, local_endpoint_ifindex(p->daddr), VIA_NET, 0);
}

/* from_net for IPv6: a NodePort's flow gets its backend (lb_translate6)
 * and the stack routes it to a local one, whose to_pod marks it for its
 * replies to be turned (to_pod_v6); to another node's it goes through the
 * tunnel, to come back the same way; in DSR mode, to be answered from
 * there, it tunnels over IPv6 from the NodePort's address (which the
 * backend's node learns from the outer header, as IPv4's) to the peer's
 * IPv6 address (peer_addrs6; a peer without one gets tunnel mode). An
 * ICMPv6 error about a NodePort's reply follows the flow to its backend.
 * Everything else passes. */
static __always_inline int from_net_v6(struct __sk_buff *skb, struct packet *p)
{
	__u32 ifindex = skb->ifindex;
	struct lb_flow6 flow = {.external = true};
	int lb = maybe_service(p) ? lb_translate6(skb, p, &flow) : LB_NONE;
	switch (lb) {
	case LB_NONE: {
		if (p->proto != IPPROTO_ICMPV6)
			return TC_ACT_OK;
		int fwd = nat_forward_icmp6_error(skb, p);
		if (fwd == NAT_FAILED)
			return drop(p, NODE_SLOT, ifindex, DIR_INGRESS, DROP_NAT);
		if (fwd != NAT_TRANSLATED)
			return TC_ACT_OK;
		break;
	}
	case LB_NO_BACKEND:
		return rejected(reject6_port_unreachable(skb, p, REJECT_BACK_OUT), p, NODE_SLOT,
				ifindex, DIR_INGRESS, DROP_NO_BACKEND);
	case LB_FAILED:
		return drop(p, NODE_SLOT, ifindex, DIR_INGRESS, DROP_NAT);
	default:
		lb_record6(&flow, p->proto);
		break;
	}
	struct peer *peer = peer6_of(&p->daddr6);
	struct node_config *cfg = node_settings();
	union v6addr *dsr_to = NULL;
	if (peer && lb == LB_TRANSLATED && cfg && cfg->external_mode == EXT_MODE_DSR)
		dsr_to = bpf_map_lookup_elem(&peer_addrs6, &peer->node);
	__u32 mtu;
	/* The client hears "packet too big" from the NodePort (an error
	 * about the flow is small). */
	if (peer && lb == LB_TRANSLATED &&
	    tunnel_too_big(skb, p, dsr_to ? IPV6_OUTER_EXTRA : 0, &mtu)) {
		struct reject6_how how = {
			.from = flow.frontend,
			.to_port = flow.frontend_port,
			.type = ICMPV6_PKT_TOOBIG,
			.path = REJECT_BACK_OUT,
			.mtu = mtu,
		};
		return rejected(reject6(skb, p, &how), p, NODE_SLOT, ifindex, DIR_INGRESS,
				DROP_TOO_BIG);
	}
	int verdict = TC_ACT_OK;
	if (dsr_to)
		verdict = tunnel_send6(skb, dsr_to, &flow.frontend,
				       vni_dsr(flow.frontend_port, p->proto));
	else if (peer)
		verdict = tunnel_send(skb, peer->node, VNI_POD);
	return forwarded(verdict, p, NODE_SLOT, ifindex, DIR_INGRESS);
}

/* NodePorts on a data interface: a connection from outside to the node's
 * address and a NodePort gets a backend, as a pod's connection to a
 * ClusterIP does, its source kept (the backend sees the real client); the
 * kernel then routes it to the backend, whose to_pod applies its ingress
 * policy and whose from_pod turns the replies back into the NodePort's.
 * ICMP errors about such a flow follow it to the backend. Other packets
 * for a local pod go to it directly (from_net_to_pod). Everything else is
 * the node's own traffic and passes untouched. IPv6: from_net_v6. */
SEC("classifier")
int from_net(struct __sk_buff *skb)
{
	struct packet p = {};
	__u32 ifindex = skb->ifindex;
	int parsed = parse_packet(skb, &p);
	if (parsed == PARSED_IPV6 && !p.fragment)
		return from_net_v6(skb, &p);
	if (parsed != PARSED_IPV4 || p.fragment)
		return TC_ACT_OK;
	struct lb_flow flow = {.external = true};
	int lb = lb_translate(skb, &p, &flow);
	switch (lb) {
	case LB_NONE: {
		/* An error the client's kernel sends about a NodePort's reply
		 * goes to the backend, as the rest of its flow does. */
		int fwd = nat_forward_icmp_error(skb, &p);
		if (fwd == NAT_FAILED)
			return drop(&p, NODE_SLOT, ifindex, DIR_INGRESS, DROP_NAT);
		if (fwd != NAT_TRANSLATED)
			return from_net_to_pod(skb, &p);
		break;
	}
	case LB_NO_BACKEND:
		return rejected(reject_port_unreachable(skb, &p, REJECT_BACK_OUT), &p, NODE_SLOT,
				ifindex, DIR_INGRESS, DROP_NO_BACKEND);
	case LB_FAILED:
		return drop(&p, NODE_SLOT, ifindex, DIR_INGRESS, DROP_NAT);
	default:
		lb_record(&flow, p.proto);
		break;
	}
	/* A backend on another node: through the tunnel, to come back the
	 * same way (tunnel) or to be answered from there (DSR). */
	struct peer *peer = local_endpoint_ifindex(p.daddr) ? NULL : peer_of(p.daddr);
	struct node_config *cfg = node_settings();
	if (!peer || !cfg)
		return forwarded(TC_ACT_OK, &p, NODE_SLOT, ifindex, DIR_INGRESS);
	if (lb != LB_TRANSLATED) /* an ICMP error about the flow: small */
		return forwarded(tunnel_send(skb, peer->node, VNI_POD), &p, NODE_SLOT, ifindex,
				 DIR_INGRESS);
	__u32 vni = cfg->external_mode == EXT_MODE_DSR ? vni_dsr(flow.frontend_port, p.proto)
						       : VNI_POD;
	/* The client hears "fragmentation needed" from the NodePort. */
	return tunnel_send_fitting(skb, &p, peer->node, vni, NODE_SLOT, DIR_INGRESS, flow.frontend,
				   flow.frontend_port, REJECT_BACK_OUT);
}

/* What comes out of the tunnel: packets for this node's pods (from
 * another node's pods, or NodePort traffic another node took in), and in
 * tunnel mode the replies to NodePort flows this node took in. */
SEC("classifier")
int from_tunnel(struct __sk_buff *skb)
{
	struct bpf_tunnel_key key = {};
	struct packet p = {};
	/* An IPv6 outer header: an IPv6 NodePort's DSR packet (tunnel_send6). */
	bool outer6 = false;
	if (bpf_skb_get_tunnel_key(skb, &key, sizeof(key), 0) < 0) {
		if (bpf_skb_get_tunnel_key(skb, &key, sizeof(key), BPF_F_TUNINFO_IPV6) < 0)
			return TC_ACT_OK;
		outer6 = true;
	}
	int parsed = parse_packet(skb, &p);
	__be32 from_node = outer6 ? 0 : bpf_htonl(key.remote_ipv4);
	/* IPv6 through the tunnel (a peer's pods' beyond our L2 or without
	 * an IPv6 address, a NodePort's flow another node took in): for a
	 * local pod it is delivered as IPv4 is (its replies go back through
	 * the tunnel: a NodePort's flow must return to the node that took it
	 * in); a NodePort's reply is turned back into the NodePort's. The stack takes the rest, as a frame for
	 * this host: from a device without neighbours, addressed to none, it
	 * would not forward it as another host's. */
	if (parsed == PARSED_IPV6 || parsed == PARSE_IPV6_EXT) {
		bpf_skb_change_type(skb, PACKET_HOST);
		if (parsed != PARSED_IPV6 || p.fragment)
			return TC_ACT_OK;
		__u32 dst = local_endpoint6_ifindex(skb, &p);
		/* DSR: this node answers as the ingress node's NodePort. */
		if (dst && outer6 && (key.tunnel_id & VNI_DSR))
			nat_record_dsr6(&p, (union v6addr *)key.remote_ipv6,
					bpf_htons(key.tunnel_id & 0xffff));
		if (dst)
			return deliver_to_pod6(skb, &p, dst, from_node);
		int rev = p.proto == IPPROTO_ICMPV6 ? nat_reverse_icmp6_error(skb, &p)
						    : nat_reverse6(skb, &p);
		if (rev == NAT_FAILED)
			return drop(&p, NODE_SLOT, skb->ifindex, DIR_INGRESS, DROP_NAT);
		return TC_ACT_OK;
	}
	if (parsed != PARSED_IPV4 || outer6)
		return TC_ACT_OK;
	__u32 dst = local_endpoint_ifindex(p.daddr);
	if (dst) {
		bool dsr = key.tunnel_id & VNI_DSR;
		/* DSR: this node answers as the ingress node's NodePort. */
		if (dsr)
			nat_record_dsr(&p, from_node, bpf_htons(key.tunnel_id & 0xffff));
		return deliver_to_pod(skb, &p, dst, VIA_TUNNEL, dsr ? 0 : from_node);
	}
	int rev = nat_reverse(skb, &p);
	if (rev == NAT_FAILED)
		return drop(&p, NODE_SLOT, skb->ifindex, DIR_INGRESS, DROP_NAT);
	if (rev == NAT_TRANSLATED)
		return sent(redirect_by_fib(skb, &p), &p, NODE_SLOT, skb->ifindex, DIR_INGRESS);
	/* For the node itself (a pod's reply to the node's own traffic): the
	 * frame is addressed to the sending pod's gateway MAC, not to this
	 * device, and the stack would drop it as another host's. */
	bpf_skb_change_type(skb, PACKET_HOST);
	return TC_ACT_OK;
}

SEC("cgroup/connect4")
int sock_connect4(struct bpf_sock_addr *ctx)
{
	return host_lb_translate(ctx);
}

SEC("cgroup/sendmsg4")
int sock_sendmsg4(struct bpf_sock_addr *ctx)
{
	return host_lb_translate(ctx);
}

SEC("cgroup/recvmsg4")
int sock_recvmsg4(struct bpf_sock_addr *ctx)
{
	return host_lb_reverse(ctx);
}

SEC("cgroup/getpeername4")
int sock_getpeername4(struct bpf_sock_addr *ctx)
{
	return host_lb_reverse(ctx);
}

SEC("cgroup/connect6")
int sock_connect6(struct bpf_sock_addr *ctx)
{
	return host_lb_translate6(ctx);
}

SEC("cgroup/sendmsg6")
int sock_sendmsg6(struct bpf_sock_addr *ctx)
{
	return host_lb_translate6(ctx);
}

SEC("cgroup/recvmsg6")
int sock_recvmsg6(struct bpf_sock_addr *ctx)
{
	return host_lb_reverse6(ctx);
}

SEC("cgroup/getpeername6")
int sock_getpeername6(struct bpf_sock_addr *ctx)
{
	return host_lb_reverse6(ctx);
}
