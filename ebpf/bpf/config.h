/* SPDX-License-Identifier: GPL-2.0 */
/* What the loader sets for every program (map `config`): the log level of
 * flow events, and the calibration of the flow clock. */
#pragma once

#include "common.h"

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct config);
} config SEC(".maps");

static __always_inline __u32 log_level(void)
{
	__u32 zero = 0;
	struct config *c = bpf_map_lookup_elem(&config, &zero);
	return c ? c->log_level : LOG_OFF;
}

#define SEC_NS 1000000000ULL

/* The clock of flow timestamps: CLOCK_MONOTONIC to a kernel tick (what
 * userspace compares them with, ebpf/src/inspect.rs). From jiffies, which
 * the verifier turns into a memory load, scaled by the tick length the
 * loader measured (clock_getres of CLOCK_MONOTONIC_COARSE); the exact clock
 * is a helper call reading the TSC, ~45 ns on a guest, a quarter of an
 * established packet's cost. Timeouts and refreshes are seconds. */
static __always_inline __u64 flow_clock(void)
{
	__u32 zero = 0;
	struct config *c = bpf_map_lookup_elem(&config, &zero);
	if (c && c->jiffy_ns)
		return (bpf_jiffies64() - c->jiffies_at_0) * c->jiffy_ns;
	return bpf_ktime_get_ns();
}
