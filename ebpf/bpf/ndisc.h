/* SPDX-License-Identifier: GPL-2.0 */
/* IPv6 link control: neighbour discovery and multicast listener messages
 * on the link between a pod and its host veth. They are to IPv6 what ARP
 * is to IPv4, and pass the same way, without conntrack or policy: a pod
 * whose policy denies everything must still find its gateway and answer
 * the host's neighbour probes. Only link-scoped ones: the same types sent
 * to a routed address are judged like any packet. */
#pragma once

#include "common.h"
#include "parse.h"

/* fe80::/10 */
static __always_inline bool v6_link_local(const union v6addr *a)
{
	return (a->b[0] == 0xfe) && ((a->b[1] & 0xc0) == 0x80);
}

/* ff02::/16 */
static __always_inline bool v6_link_multicast(const union v6addr *a)
{
	return a->b[0] == 0xff && (a->b[1] & 0x0f) == 0x02;
}

/* Neighbour discovery (RFC 4861) or multicast listener discovery (RFC
 * 2710, 3810) to a link-scoped destination. */
static __always_inline bool v6_link_control(const struct packet *p)
{
	if (p->proto != IPPROTO_ICMPV6 || p->fragment)
		return false;
	__u8 t = p->icmp_type;
	bool control = (t >= ICMPV6_MGM_QUERY && t <= NDISC_REDIRECT) || t == ICMPV6_MLD2_REPORT;
	return control && (v6_link_local(&p->daddr6) || v6_link_multicast(&p->daddr6));
}

/* Whether a pod may send this packet from a source that is not its own
 * address: a link-local or unspecified one, which the kernel uses before
 * and beside its addresses, for what a host sends as it joins a link:
 * router solicitation, neighbour solicitation and advertisement (duplicate
 * address detection sends its solicitations from ::), and multicast
 * listener reports (RFC 3810 allows :: for those too). Never for router
 * advertisements, redirects or listener queries: a pod is not a router. */
static __always_inline bool v6_pod_link_source_ok(const struct packet *p)
{
	if (!v6_link_local(&p->saddr6) && !v6_unspecified(&p->saddr6))
		return false;
	if (!v6_link_control(p))
		return false;
	switch (p->icmp_type) {
	case NDISC_ROUTER_SOLICITATION:
	case NDISC_NEIGHBOUR_SOLICITATION:
	case NDISC_NEIGHBOUR_ADVERTISEMENT:
	case ICMPV6_MGM_REPORT:
	case ICMPV6_MGM_REDUCTION:
	case ICMPV6_MLD2_REPORT:
		return true;
	default:
		return false;
	}
}
