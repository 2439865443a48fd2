/* SPDX-License-Identifier: GPL-2.0 */
/* This node: its settings (map `node_config`: the tunnel device, the
 * external traffic mode) and its addresses on its data interfaces, where
 * NodePorts answer. */
#pragma once

#include "common.h"

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct node_config);
} node_config SEC(".maps");

/* The node's addresses on its data interfaces (`margayctl node attach`),
 * where NodePorts answer: userspace writes a NodePort frontend for each.
 * Value: the interface's ifindex. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_NODE_ADDRS);
	__type(key, __be32);
	__type(value, __u32);
} node_addrs SEC(".maps");

/* Its IPv6 addresses there, as node_addrs. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_NODE_ADDRS);
	__type(key, union v6addr);
	__type(value, __u32);
} node_addrs6 SEC(".maps");

static __always_inline struct node_config *node_settings(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&node_config, &zero);
}
