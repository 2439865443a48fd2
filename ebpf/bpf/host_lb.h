/* SPDX-License-Identifier: GPL-2.0 */
/* Services for host-networked clients (kubelet, hostNetwork pods, the
 * node's own processes), balanced when the socket connects rather than per
 * packet: their packets pass no pod's veth, so from_pod never sees them.
 * connect4 (and sendmsg4, for each datagram of an unconnected UDP socket)
 * replaces a frontend address with a backend's before the kernel routes
 * anything; getpeername4 and recvmsg4 give the application the frontend's
 * address back, from a record per socket and backend. Only sockets of the
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

/* A frontend address in `ctx` becomes one of its backends'. A frontend
 * without backends refuses the connect (EPERM), as Cilium's socket LB
 * does: there is no packet to answer with an ICMP error. */
static __always_inline int host_lb_translate(struct bpf_sock_addr *ctx)
{
	if (ctx->user_family != AF_INET || !host_socket(ctx))
		return SYS_PROCEED;
	__u8 proto = ctx->protocol;
	if (proto != IPPROTO_TCP && proto != IPPROTO_UDP)
		return SYS_PROCEED;
	/* user_port holds the port in network order in its low 16 bits. */
	struct svc_key sk = {.addr = ctx->user_ip4, .port = (__be16)ctx->user_port, .proto = proto};
	struct svc_value *svc = bpf_map_lookup_elem(&svc_frontends, &sk);
	if (!svc)
		return SYS_PROCEED;
	struct nat_entry chosen = {};
	/* The node is one client for affinity (kube-proxy sees its address). */
	if (!lb_choose_for(svc, 0, bpf_get_prandom_u32(), flow_clock(), &chosen))
		return SYS_REJECT;
	struct sock_revnat_key rk = {
		.cookie = bpf_get_socket_cookie(ctx),
		.addr = chosen.addr,
		.port = chosen.port,
	};
	struct sock_revnat_value rv = {.addr = sk.addr, .port = sk.port};
	bpf_map_update_elem(&sock_revnat, &rk, &rv, BPF_ANY);
	ctx->user_ip4 = chosen.addr;
	ctx->user_port = chosen.port;
	return SYS_PROCEED;
}

/* A backend address in `ctx` becomes the frontend this socket asked for. */
static __always_inline int host_lb_reverse(struct bpf_sock_addr *ctx)
{
	if (ctx->user_family != AF_INET || !host_socket(ctx))
		return SYS_PROCEED;
	struct sock_revnat_key rk = {
		.cookie = bpf_get_socket_cookie(ctx),
		.addr = ctx->user_ip4,
		.port = (__be16)ctx->user_port,
	};
	struct sock_revnat_value *rv = bpf_map_lookup_elem(&sock_revnat, &rk);
	if (rv) {
		ctx->user_ip4 = rv->addr;
		ctx->user_port = rv->port;
	}
	return SYS_PROCEED;
}
