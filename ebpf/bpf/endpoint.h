/* SPDX-License-Identifier: GPL-2.0 */
/* The endpoint registry: host veth ifindex -> endpoint, pod IP -> ifindex. */
#pragma once

#include "common.h"

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_ENDPOINTS);
	__type(key, __u32);
	__type(value, struct endpoint);
} endpoints SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_ENDPOINTS);
	__type(key, __be32);
	__type(value, __u32);
} endpoints_by_ip SEC(".maps");

static __always_inline struct endpoint *endpoint_of(__u32 ifindex)
{
	return bpf_map_lookup_elem(&endpoints, &ifindex);
}

/* The host veth of the local pod owning `ip`, or 0. */
static __always_inline __u32 local_endpoint_ifindex(__be32 ip)
{
	__u32 *ifindex = bpf_map_lookup_elem(&endpoints_by_ip, &ip);
	return ifindex ? *ifindex : 0;
}

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_ENDPOINTS);
	__type(key, __u32);
	__type(value, struct endpoint6);
} endpoints6 SEC(".maps");

/* Whether `addr` is the IPv6 address of the pod behind host veth `ifindex`. */
static __always_inline bool endpoint6_owns(__u32 ifindex, const union v6addr *addr)
{
	struct endpoint6 *ep6 = bpf_map_lookup_elem(&endpoints6, &ifindex);
	return ep6 && v6addr_equal(&ep6->ip, addr);
}
