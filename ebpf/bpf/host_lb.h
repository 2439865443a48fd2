/* SPDX-License-Identifier: GPL-2.0 */
/* Services for host-networked clients (kubelet, hostNetwork pods, the
 * node's own processes), balanced when the socket connects rather than per
 * packet: their packets pass no pod's veth, so from_pod never sees them.
 * connect4/6 (and sendmsg4/6, for each datagram of an unconnected UDP
 * socket) replace a frontend address with a backend's before the kernel
 * routes anything; getpeername4/6 and recvmsg4/6 give the application the
 * frontend's address back, from a record per socket and backend. An IPv6
 * socket reaches IPv4 frontends by their v4-mapped addresses. Only sockets of the
 * node's own network namespace are touched: pods keep the per-packet path
 * (policy, drains, affinity by pod address), as with Cilium's
 * socketLB.hostNamespaceOnly. */
#pragma once

#include "common.h"
#include "lb.h"
#include "tunnel.h"

/* What a cgroup sock_addr program answers. */
#define SYS_REJECT 0
#define SYS_PROCEED 1

/* A translated socket's frontend, by the socket and the backend it was
 * given (a UDP socket may send to several frontends). LRU: a closed
 * socket's records age out. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct sock_revnat_key);
	__type(value, struct sock_revnat_value);
} sock_revnat SEC(".maps");

/* The node's own sockets: those of the network namespace userspace
 * recorded (0 until it does, and then nothing is translated). */
static __always_inline bool host_socket(struct bpf_sock_addr *ctx)
{
	struct node_config *cfg = node_settings();
	return cfg && cfg->host_netns_cookie && bpf_get_netns_cookie(ctx) == cfg->host_netns_cookie;
}

/* IPv6 sockets' translations, as sock_revnat. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct sock_revnat_key6);
	__type(value, struct sock_revnat_value6);
} sock_revnat6 SEC(".maps");

enum host_lb_result {
	HOST_LB_NONE,   /* not a frontend */
	HOST_LB_CHOSEN, /* the backend is in the out-parameters */
	HOST_LB_REJECT, /* a frontend without backends */
};

/* The protocol of a socket host_lb balances, or 0. */
static __always_inline __u8 host_lb_protocol(struct bpf_sock_addr *ctx)
{
	__u8 proto = ctx->protocol;
	return proto == IPPROTO_TCP || proto == IPPROTO_UDP ? proto : 0;
}

/* A backend for the socket's connection to IPv4 frontend `*addr`:`*port`,
 * written over them, and the socket's record of the frontend. */
static __always_inline int host_lb_choose4(struct bpf_sock_addr *ctx, __u8 proto, __be32 *addr,
					   __be16 *port)
{
	struct svc_key sk = {.addr = *addr, .port = *port, .proto = proto};
	struct svc_value *svc = bpf_map_lookup_elem(&svc_frontends, &sk);
	if (!svc)
		return HOST_LB_NONE;
	struct nat_entry chosen = {};
	/* The node is one client for affinity (kube-proxy sees its address). */
	if (!lb_choose_for(svc, 0, bpf_get_prandom_u32(), flow_clock(), &chosen))
		return HOST_LB_REJECT;
	struct sock_revnat_key rk = {
		.cookie = bpf_get_socket_cookie(ctx),
		.addr = chosen.addr,
		.port = chosen.port,
	};
	struct sock_revnat_value rv = {.addr = sk.addr, .port = sk.port};
	bpf_map_update_elem(&sock_revnat, &rk, &rv, BPF_ANY);
	*addr = chosen.addr;
	*port = chosen.port;
	return HOST_LB_CHOSEN;
}

/* The frontend the socket asked for whose backend is `*addr`:`*port`,
 * written over them. */
static __always_inline void host_lb_reverse4(struct bpf_sock_addr *ctx, __be32 *addr,
					     __be16 *port)
{
	struct sock_revnat_key rk = {
		.cookie = bpf_get_socket_cookie(ctx),
		.addr = *addr,
		.port = *port,
	};
	struct sock_revnat_value *rv = bpf_map_lookup_elem(&sock_revnat, &rk);
	if (rv) {
		*addr = rv->addr;
		*port = rv->port;
	}
}

/* A frontend address in `ctx` becomes one of its backends'. A frontend
 * without backends refuses the connect (EPERM), as Cilium's socket LB
 * does: there is no packet to answer with an ICMP error. */
static __always_inline int host_lb_translate(struct bpf_sock_addr *ctx)
{
	__u8 proto = host_lb_protocol(ctx);
	if (ctx->user_family != AF_INET || !proto || !host_socket(ctx))
		return SYS_PROCEED;
	/* user_port holds the port in network order in its low 16 bits. */
	__be32 addr = ctx->user_ip4;
	__be16 port = (__be16)ctx->user_port;
	int chosen = host_lb_choose4(ctx, proto, &addr, &port);
	if (chosen == HOST_LB_REJECT)
		return SYS_REJECT;
	if (chosen == HOST_LB_CHOSEN) {
		ctx->user_ip4 = addr;
		ctx->user_port = port;
	}
	return SYS_PROCEED;
}

/* A backend address in `ctx` becomes the frontend this socket asked for. */
static __always_inline int host_lb_reverse(struct bpf_sock_addr *ctx)
{
	if (ctx->user_family != AF_INET || !host_socket(ctx))
		return SYS_PROCEED;
	__be32 addr = ctx->user_ip4;
	__be16 port = (__be16)ctx->user_port;
	host_lb_reverse4(ctx, &addr, &port);
	ctx->user_ip4 = addr;
	ctx->user_port = port;
	return SYS_PROCEED;
}

/* The IPv6 address in `ctx` (read and written a word at a time, as the
 * verifier allows). */
static __always_inline void host_lb_addr6(struct bpf_sock_addr *ctx, union v6addr *a)
{
	a->w[0] = ctx->user_ip6[0];
	a->w[1] = ctx->user_ip6[1];
	a->w[2] = ctx->user_ip6[2];
	a->w[3] = ctx->user_ip6[3];
}

static __always_inline void host_lb_set_addr6(struct bpf_sock_addr *ctx, const union v6addr *a)
{
	ctx->user_ip6[0] = a->w[0];
	ctx->user_ip6[1] = a->w[1];
	ctx->user_ip6[2] = a->w[2];
	ctx->user_ip6[3] = a->w[3];
}

/* ::ffff:a.b.c.d: an IPv6 socket's name for IPv4 address a.b.c.d (a
 * dual-stack socket connecting to an IPv4 ClusterIP). */
static __always_inline bool v4_mapped(const union v6addr *a)
{
	return a->w[0] == 0 && a->w[1] == 0 && a->w[2] == bpf_htonl(0xffff);
}

/* host_lb_translate for IPv6 sockets: IPv6 frontends, and IPv4 ones
 * named as v4-mapped addresses (given an IPv4 backend, v4-mapped). */
static __always_inline int host_lb_translate6(struct bpf_sock_addr *ctx)
{
	__u8 proto = host_lb_protocol(ctx);
	if (ctx->user_family != AF_INET6 || !proto || !host_socket(ctx))
		return SYS_PROCEED;
	union v6addr addr;
	host_lb_addr6(ctx, &addr);
	__be16 port = (__be16)ctx->user_port;
	if (v4_mapped(&addr)) {
		__be32 addr4 = addr.w[3];
		int chosen = host_lb_choose4(ctx, proto, &addr4, &port);
		if (chosen == HOST_LB_REJECT)
			return SYS_REJECT;
		if (chosen == HOST_LB_CHOSEN) {
			ctx->user_ip6[3] = addr4;
			ctx->user_port = port;
		}
		return SYS_PROCEED;
	}
	struct svc_key6 sk = {.addr = addr, .port = port, .proto = proto};
	struct svc_value *svc = bpf_map_lookup_elem(&svc_frontends6, &sk);
	if (!svc)
		return SYS_PROCEED;
	struct nat_entry6 chosen = {};
	union v6addr node = {};
	if (!lb_choose6_for(svc, &node, NULL, flow_clock(), &chosen))
		return SYS_REJECT;
	struct sock_revnat_key6 rk = {
		.cookie = bpf_get_socket_cookie(ctx),
		.addr = chosen.addr,
		.port = chosen.port,
	};
	struct sock_revnat_value6 rv = {.addr = addr, .port = port};
	bpf_map_update_elem(&sock_revnat6, &rk, &rv, BPF_ANY);
	host_lb_set_addr6(ctx, &chosen.addr);
	ctx->user_port = chosen.port;
	return SYS_PROCEED;
}

/* host_lb_reverse for IPv6 sockets. */
static __always_inline int host_lb_reverse6(struct bpf_sock_addr *ctx)
{
	if (ctx->user_family != AF_INET6 || !host_socket(ctx))
		return SYS_PROCEED;
	union v6addr addr;
	host_lb_addr6(ctx, &addr);
	__be16 port = (__be16)ctx->user_port;
	if (v4_mapped(&addr)) {
		__be32 addr4 = addr.w[3];
		host_lb_reverse4(ctx, &addr4, &port);
		ctx->user_ip6[3] = addr4;
		ctx->user_port = port;
		return SYS_PROCEED;
	}
	struct sock_revnat_key6 rk = {
		.cookie = bpf_get_socket_cookie(ctx),
		.addr = addr,
		.port = port,
	};
	struct sock_revnat_value6 *rv = bpf_map_lookup_elem(&sock_revnat6, &rk);
	if (rv) {
		host_lb_set_addr6(ctx, &rv->addr);
		ctx->user_port = rv->port;
	}
	return SYS_PROCEED;
}
