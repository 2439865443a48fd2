/* SPDX-License-Identifier: GPL-2.0 */
/* Structures shared with userspace (ebpf/src/abi.rs mirrors them; both
 * sides assert the sizes). Fixed-size values with reserved room, so that a
 * later field does not change a pinned map's layout. The loader compares
 * pinned maps' layouts with these itself (ebpf/src/node.rs), so there is no
 * version number to keep in step. */
#pragma once

#include <linux/types.h>

#define MAX_ENDPOINTS 1024  /* pods a node runs at most (counters slots) */
#define MAX_POLICY_RULES 256 /* rules per endpoint, direction and family */
/* Rule sources the node can count (map policy_hits) and name. */
#define MAX_POLICY_SOURCES 16384
/* A verdict's or drop event's source when the deciding rule names none. */
#define SOURCE_UNNAMED MAX_POLICY_SOURCES

enum direction {
	DIR_EGRESS = 0,  /* from the pod */
	DIR_INGRESS = 1, /* to the pod */
};

/* Why a packet was dropped. Stable numbers: operators script on them.
 * Each comment begins with the name userspace shows (build.rs reads it). */
enum drop_reason {
	REASON_ALLOWED = 0,        /* allowed: trace events only */
	DROP_PARSE = 1,            /* parse: truncated or malformed header */
	DROP_UNSUPPORTED_L3 = 2,   /* unsupported-l3: neither IPv4, IPv6 nor ARP */
	DROP_SPOOF_MAC = 3,        /* spoofed-mac: source MAC is not the endpoint's */
	DROP_SPOOF_IP = 4,         /* spoofed-ip: source IP is not the endpoint's */
	DROP_POLICY_EGRESS = 5,    /* policy-egress: the pod's egress policy denies it */
	DROP_POLICY_INGRESS = 6,   /* policy-ingress: the pod's ingress policy denies it */
	DROP_FRAGMENT = 7,         /* fragment: non-first fragment under a policy */
	DROP_NO_ENDPOINT = 8,      /* no-endpoint: program on an interface with no
				    * endpoint */
	DROP_NO_BACKEND = 9,       /* service-no-backend: a service with no backend,
				    * answered with ICMP port unreachable */
	DROP_NAT = 10,             /* nat-failed: a service translation could not be
				    * written */
	DROP_IPV6_EXT = 11,        /* ipv6-ext-headers: an IPv6 extension header
				    * chain longer than the programs walk
				    * (IPV6_MAX_EXT_HEADERS) */
	DROP_TOO_BIG = 12,         /* too-big-for-tunnel: too big for the tunnel with
				    * DF set, answered with ICMP
				    * fragmentation needed */
	DROP_NO_PROGRAM = 13,      /* no-program: the program for the packet's
				    * family is missing from `calls` (an
				    * incomplete load) */
	DROP_FORWARD = 14,         /* forward-failed: its headers could not be
				    * rewritten to be forwarded (redirected to a
				    * pod or a device) */
	DROP_NO_TUNNEL = 15,       /* no-tunnel: its way is the tunnel and the node
				    * has none */
	DROP_ENCAP = 16,           /* encap-failed: the tunnel's encapsulation
				    * could not be set */
	DROP_REJECT = 17,          /* reject-failed: dropped to be answered (no
				    * backend, too big), and the answer could not
				    * be built */
	DROP_REASON_MAX = 18,      /* how many reasons there are (not one) */
};

/* The programs from_pod hands packets on to (map `calls`, filled by the
 * loader before any endpoint runs from_pod): IPv6's, whose paths are a
 * program of their own so that each family's has the verifier's whole
 * budget (instructions and 512 bytes of stack). */
#define CALL_FROM_POD6 0
#define MAX_CALLS 1 /* entries of map calls */
/* What from_pod tells from_pod6 in skb->cb (which a tail call keeps):
 * its short path looked the packet's flow up and found none. */
#define CB_CT_MISSED 0

/* An IPv6 address as the programs compare it: four words. */
union v6addr {
	__be32 w[4];
	__u8 b[16];
};

struct endpoint {
	__be32 ip;
	__u8 mac[6];     /* the pod's interface MAC */
	__u16 flags;     /* none defined yet */
	__u32 ifindex;   /* the host veth; also the key */
	char ifname[16]; /* the host veth's name: DEL finds entries by it
			  * after the interface is gone */
	__u32 slot;      /* its counters' index, 1..MAX_ENDPOINTS (0: none) */
};

/* A pod's IPv6 address (map endpoints6, keyed like endpoints by the host
 * veth's ifindex). Beside struct endpoint rather than in it, so that the
 * records of endpoints registered by an IPv4-only build keep their layout
 * across an upgrade. No entry: the pod has no IPv6 address and sends no
 * IPv6 but neighbour discovery. Its MAC and counters slot are copies of
 * its struct endpoint's (written with it; the loader completes an older
 * build's entries), so that from_pod6 judges a packet with this one
 * lookup. */
struct endpoint6 {
	union v6addr ip;
	__u32 flags; /* none defined yet */
	__u8 mac[6];
	__u16 reserved;
	__u32 slot;
};

#define POLICY_ALLOW 1 /* a rule's action, and policy_check's verdict */
#define POLICY_DENY 2  /* the same, denying */

struct policy_rule {
	union {
		struct { /* a CIDR rule */
			__be32 addr; /* masked network address */
			__be32 mask;
		};
		struct { /* RULE_F_SET: the peer is in a set */
			__u32 set_id;    /* its ip_sets number; 0: any peer */
			__u32 source_id; /* policy_sources' number of its source; 0: none */
		};
	};
	__u16 port_lo; /* host order; 0..65535 matches any port */
	__u16 port_hi;
	__u8 proto;    /* IPPROTO_*, 0 = any */
	__u8 action;   /* POLICY_ALLOW or POLICY_DENY */
	__u8 flags;    /* RULE_F_* */
	__u8 pad;
};

/* The rule was written without a CIDR, so it is in both families' lists;
 * only `margayctl policy show` reads it, to show it once. */
#define RULE_F_ANY_FAMILY 0x1
/* The rule's peer is a set (or any address, with set 0) and it names its
 * source: set_id and source_id, not addr and mask. */
#define RULE_F_SET 0x2

/* A member of an IP set (map ip_sets, an LPM trie): the set's number,
 * then the address, then, for a member on one port of one address, the
 * port and protocol. A member for a network matches the set's 32 bits and
 * its prefix; one on a port, all of it (IP_SET_PORT_PREFIX). A packet is
 * looked up with all of it, so the longest member decides: an except
 * member takes out what a shorter one put in, a port member adds its
 * port to an address. */
struct ip_set_key {
	__u32 prefixlen;
	__be32 set_id;
	__be32 addr;
	__be16 port;
	__u8 proto;
	__u8 pad;
};
#define IP_SET_PORT_PREFIX (32 + 32 + 16 + 8) /* a member on one port: every bit of the key */

/* The same for IPv6 (map ip_sets6). */
struct ip_set_key6 {
	__u32 prefixlen;
	__be32 set_id;
	union v6addr addr;
	__be16 port;
	__u8 proto;
	__u8 pad;
};
#define IP_SET6_PORT_PREFIX (32 + 128 + 16 + 8) /* IP_SET_PORT_PREFIX for ip_sets6 */

/* An ip_sets entry's value: in the set, or taken out of it. */
#define IP_SET_MEMBER 1
#define IP_SET_EXCEPT 2 /* an except member: taken out of the set */

/* A name, NUL-padded (maps ip_set_names and policy_sources: what a set's
 * or a rule source's number stands for; only userspace reads them). */
struct name_record {
	char name[64];
};

struct policy_key {
	__u32 ifindex;
	__u32 direction;
};

struct policy {
	__u32 count;
	__u32 reserved;
	struct policy_rule rules[MAX_POLICY_RULES];
};

/* A direction's IPv6 rules (map policies6, keyed like policies). A
 * direction has a policy when it has an entry in policies (userspace writes
 * one for every direction with rules, of whichever family); the IPv6 rules
 * of such a direction are here, and when there are none, no IPv6 passes. */
struct policy_rule6 {
	union {
		struct { /* a CIDR rule */
			union v6addr addr; /* masked network address */
			union v6addr mask;
		};
		struct { /* RULE_F_SET, as in policy_rule */
			__u32 set_id;
			__u32 reserved6[3];
			__u32 source_id;
			__u32 reserved6b[3];
		};
	};
	__u16 port_lo; /* host order; 0..65535 matches any port */
	__u16 port_hi;
	__u8 proto;    /* IPPROTO_*, 0 = any */
	__u8 action;   /* POLICY_ALLOW or POLICY_DENY */
	__u8 flags;    /* RULE_F_* */
	__u8 pad;
};

struct policy6 {
	__u32 count;
	__u32 reserved;
	struct policy_rule6 rules[MAX_POLICY_RULES];
};

/* Conntrack key, normalised: side a is the lower (address, port), so both
 * directions of a flow share one entry. Per endpoint (ifindex): a flow
 * between two local pods has one entry for each, each pod's policy being
 * applied once on its own side. */
struct ct_key {
	__be32 addr_a;
	__be32 addr_b;
	__be16 port_a;
	__be16 port_b;
	__u8 proto;
	__u8 pad[3];
	__u32 ifindex;
};

/* The same for IPv6 flows (map conntrack6), whose entries are struct
 * ct_entry with CT_F_POD_IS_A telling which side is the pod. */
struct ct_key6 {
	union v6addr addr_a;
	union v6addr addr_b;
	__be16 port_a;
	__be16 port_b;
	__u8 proto;
	__u8 pad[3];
	__u32 ifindex;
};

enum ct_state {
	CT_NEW = 0,         /* first packet seen */
	CT_SYN_SENT = 1,    /* TCP: SYN seen, no reply yet */
	CT_ESTABLISHED = 2, /* reply seen */
	CT_FIN_WAIT = 3,    /* TCP: one side sent FIN */
	CT_CLOSING = 4,     /* TCP: both sides sent FIN */
	CT_CLOSED = 5,      /* TCP: RST seen */
};

#define CT_F_ORIGIN_IS_A 0x1 /* the flow's initiator is side a */
#define CT_F_FIN_A 0x2 /* TCP: side a sent its FIN */
#define CT_F_FIN_B 0x4 /* TCP: side b sent its FIN */
#define CT_F_LOCAL_DELIVERY 0x8 /* FIB-checked: redirect to a local pod */
#define CT_F_SERVICE 0x10       /* its replies are reverse-translated (nat.h) */
#define CT_F_TUNNEL 0x20        /* the pod's packets of the flow go through
				 * the tunnel to tunnel_peer: the node the
				 * flow came from, or the peer's pod it is to */
#define CT_F_POD_IS_A 0x40      /* IPv6: the endpoint's pod is side a (its
				 * packets are those sent from side a); an
				 * IPv6 entry's pod_ip is unused */
#define CT_F_PEER_ROUTED 0x80   /* the pod's packets of the flow are for a
				 * peer's pod on our L2: routed by the
				 * programs (forward.h), not the host stack */

/* No per-flow packet or byte counts: updating them on every packet bounces
 * the entry's cache line between the CPUs of the two directions (measured:
 * ~5% of pod-to-pod throughput). Per-endpoint counters are per-CPU.
 *
 * An entry carries what an established packet needs of its endpoint (the
 * pod's addresses, to check that a packet from the pod is really its, and
 * the counters slot), so that it costs one map lookup, not three: on
 * guests that mitigate SRSO every helper call costs ~20 ns. Likewise a
 * local receiver (egress_to_local_pod) and the service a reply answers
 * for (turn_*): each spares the established packet lookups. Its creation
 * time is kept in seconds, which is all `margayctl` shows. */
struct ct_entry {
	__u64 last_seen_ns; /* refreshed at most once per CT_REFRESH_NS */
	__u32 created_s;    /* flow clock, in seconds: only shown (AGE) */
	union {
		__be32 tunnel_peer; /* CT_F_TUNNEL: the node the pod's packets go to */
		__u32 peer_ifindex; /* CT_F_LOCAL_DELIVERY: the receiving pod's host
				     * veth, as last seen (0: not yet) */
	};
	__u8 state;
	__u8 flags;
	__u16 slot;         /* the endpoint's counters slot */
	__be32 pod_ip;      /* the endpoint's pod, as registered */
	__u8 pod_mac[6];
	/* CT_F_LOCAL_DELIVERY, with peer_ifindex: the receiving pod's. */
	__u16 peer_slot;
	__u8 peer_mac[6];
	/* The service a reply of the flow answers for, as last looked up
	 * (nat_reverse_reply): the source its replies are turned into
	 * between lookups, 0 (::) when none is known. Last, so that an
	 * upgrade from entries without it carries them over zero-extended;
	 * IPv4's address is the first word of IPv6's, where it was before
	 * IPv6 entries had one. */
	__be16 turn_port;
	union {
		__be32 turn_addr;
		union v6addr turn_addr6;
	};
};

struct counters {
	__u64 packets[2]; /* by enum direction, allowed */
	__u64 bytes[2];
	__u64 drops[DROP_REASON_MAX];
};

#define LOG_OFF 0   /* counters only */
#define LOG_INFO 1  /* drop events */
#define LOG_DEBUG 2 /* drop events and every new flow's verdict */

struct config {
	__u32 log_level;
	__u32 jiffy_ns;      /* nanoseconds per kernel tick (0: not known) */
	__u64 jiffies_at_0;  /* jiffies when CLOCK_MONOTONIC read 0 */
	__u32 reserved[2];
	__u64 object_id; /* which build's programs are pinned */
};

/* Which frontends may exist, by a hash of (address, port, protocol): a
 * packet whose bit is clear is not to a service and skips the frontend
 * lookup. `margayctl service apply` and the loader keep it a superset of
 * the frontends. */
#define SVC_FILTER_BITS 65536
struct svc_filter {
	__u64 bits[SVC_FILTER_BITS / 64];
};

/* Services (lb.h). A frontend is what clients connect to (a ClusterIP and
 * port); its backends sit in slots (id, generation, ordinal) so that an
 * update writes the next generation's slots and then flips the frontend,
 * and no packet sees half of one set and half of the other. */
#define SVC_F_AFFINITY 0x1   /* sessionAffinity: ClientIP */
#define SVC_F_LOCAL_ONLY 0x2 /* a Local traffic policy: local backends only */
#define SVC_F_NODE_PORT 0x4  /* a NodePort on a node address (for listings) */
/* On a ClusterIP frontend: its service's NodePorts are
 * externalTrafficPolicy: Local (userspace's record, as node_port is). */
#define SVC_F_EXTERNAL_LOCAL 0x8
#define SVC_F_EXTERNAL_IP 0x10    /* an external IP or LoadBalancer ingress (for listings) */
/* On a ClusterIP frontend: internalTrafficPolicy: Local (userspace's record;
 * SVC_F_LOCAL_ONLY is set with it). */
#define SVC_F_INTERNAL_LOCAL 0x20

struct svc_key {
	__be32 addr;
	__be16 port;
	__u8 proto;
	__u8 pad;
};

struct svc_value {
	__u32 id;
	__u16 count;      /* backends in the current generation */
	__u16 generation; /* 0 or 1 */
	__u16 flags;      /* SVC_F_* */
	/* On a ClusterIP frontend: its service's NodePort (0: none), so that
	 * userspace can open it on node addresses attached later. */
	__u16 node_port;
	__u32 affinity_timeout_s;
	__u32 reserved[2];
};

struct backend_key {
	__u32 svc_id;
	__u16 generation;
	__u16 ordinal;
};

struct backend {
	__be32 addr;
	__be16 port;
	__u16 flags;
	__u32 reserved;
};

/* What `margayctl service list` shows; never read by the programs. */
struct svc_meta {
	char name[64];
};

struct affinity_key {
	__u32 svc_id;
	__be32 client;
};

struct affinity_value {
	__u64 last_used_ns;
	__be32 addr;
	__be16 port;
	__u16 ordinal;
};

/* IPv6 services: the same records with IPv6 addresses, in maps of their
 * own (svc_frontends6, svc_backends6, svc_affinity6, nat6). A frontend's
 * value is struct svc_value and its backends' slots are keyed by
 * struct backend_key: the two families share one id space. */
struct svc_key6 {
	union v6addr addr;
	__be16 port;
	__u8 proto;
	__u8 pad;
};

struct backend6 {
	union v6addr addr;
	__be16 port;
	__u16 flags;
	__u32 reserved;
};

struct affinity_key6 {
	__u32 svc_id;
	union v6addr client;
};

struct affinity_value6 {
	__u64 last_used_ns;
	union v6addr addr;
	__be16 port;
	__u16 ordinal;
	__u32 reserved;
};

/* Translations of service flows (nat.h), two entries a flow, both keyed by
 * the tuple as the packet carries it when it reaches the translation. */
#define NAT_FWD 1 /* client -> frontend; value: the backend */
#define NAT_REV 2 /* backend -> client (or hairpin address); value: the frontend */

struct nat_key {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 kind; /* NAT_FWD or NAT_REV */
	__u8 pad[2];
};

struct nat_entry {
	__u64 last_seen_ns; /* FWD: refreshed at most once per CT_REFRESH_NS */
	__be32 addr;        /* FWD: the backend; REV: the frontend */
	__be32 peer;        /* hairpin only: FWD: the address the client is
			     * disguised as; REV: the client's own */
	__be16 port;        /* FWD: the backend's; REV: the frontend's */
	__u16 ordinal;      /* FWD: the backend's slot when chosen */
	__u32 svc_id;
	__u32 flags;        /* NAT_F_* */
	__u32 reserved;
};

/* The same for IPv6 flows (map nat6). */
struct nat_key6 {
	union v6addr saddr;
	union v6addr daddr;
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 kind; /* NAT_FWD or NAT_REV */
	__u8 pad[2];
};

struct nat_entry6 {
	__u64 last_seen_ns;
	union v6addr addr; /* FWD: the backend; REV: the frontend */
	union v6addr peer; /* hairpin only, as in nat_entry */
	__be16 port;
	__u16 ordinal;
	__u32 svc_id;
	__u32 flags; /* NAT_F_* */
	__u32 reserved;
};

/* REV: the reply is translated on the backend's side, as it leaves the
 * backend (the client is not a local pod: NodePort). Without it, the
 * client's own endpoint translates (ClusterIP from a pod). */
#define NAT_F_AT_BACKEND 0x1

/* The node's addresses on its data interfaces, where NodePorts answer
 * (key: the address; value: the interface's ifindex). */
#define MAX_NODE_ADDRS 64

/* How NodePort traffic reaches a backend on another node
 * (`bpf_external_service_mode`). */
#define EXT_MODE_TUNNEL 0 /* there and back through the ingress node */
#define EXT_MODE_DSR 1    /* there through the tunnel, back directly */

struct node_config {
	__u32 tunnel_ifindex; /* the VXLAN device (external mode); 0: none */
	__u32 external_mode;  /* EXT_MODE_* */
	/* The node's network namespace (SO_NETNS_COOKIE): its sockets get
	 * services balanced at connect time (host_lb.h); 0: none do. */
	__u64 host_netns_cookie;
	__u32 reserved[4];
};

/* host_lb.h: a host socket's translation, to give the frontend back. */
struct sock_revnat_key {
	__u64 cookie; /* the socket's */
	__be32 addr;  /* the backend's */
	__be16 port;
	__u16 pad;
};

struct sock_revnat_value {
	__be32 addr; /* the frontend's */
	__be16 port;
	__u16 pad;
};

/* The same for IPv6 sockets (map sock_revnat6). */
struct sock_revnat_key6 {
	__u64 cookie;
	union v6addr addr;
	__be16 port;
	__u16 pad[3];
};

struct sock_revnat_value6 {
	union v6addr addr;
	__be16 port;
	__u16 pad;
};

/* Other nodes: their pods' CIDRs (LPM) -> the node's address. */
#define MAX_NODE_PEERS 4096

struct peer_key {
	__u32 prefixlen;
	__be32 addr;
};

struct peer {
	__be32 node;  /* the node's address, the tunnel's far end */
	__u32 flags;  /* PEER_F_* */
};

/* The same for the peers' IPv6 pod CIDRs (map node_peers6): the node is
 * its IPv4 address still, their routes' next hop. */
struct peer_key6 {
	__u32 prefixlen;
	union v6addr addr;
};

#define PEER_F_ENCAP 0x1 /* pod traffic to it goes through the tunnel (not
			  * on one L2 with this node) */

/* VXLAN network identifiers: what a tunnelled packet is. DSR packets
 * carry the NodePort they were sent to (port and protocol), so that the
 * backend's node can answer as the ingress node's NodePort. */
#define VNI_POD 1
#define VNI_DSR 0x800000    /* DSR: the low 16 bits carry the NodePort */
#define VNI_DSR_UDP 0x10000 /* DSR: the NodePort is UDP (else TCP) */
/* What an IPv6 outer header costs beyond the IPv4 one the tunnel
 * device's MTU allows for. */
#define IPV6_OUTER_EXTRA 20

/* Flow events in the ring: a record is struct flow_event or, when its
 * family says so, struct flow_event6; both begin alike. */
#define FLOW_EVENT_IPV4 0
#define FLOW_EVENT_IPV6 6 /* the record is a struct flow_event6 */

struct flow_event {
	__u64 ts_ns;
	__u32 ifindex;
	__u8 reason; /* enum drop_reason; REASON_ALLOWED for traces */
	__u8 direction;
	__u8 proto;
	__u8 family; /* FLOW_EVENT_IPV4 */
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	/* A policy drop: the number of the source (policy_sources) whose rule
	 * denied it, SOURCE_UNNAMED for a rule naming none; 0: no rule did,
	 * none allowed it. */
	__u32 source_id;
};

struct flow_event6 {
	__u64 ts_ns;
	__u32 ifindex;
	__u8 reason;
	__u8 direction;
	__u8 proto;
	__u8 family; /* FLOW_EVENT_IPV6 */
	union v6addr saddr;
	union v6addr daddr;
	__be16 sport;
	__be16 dport;
	__u32 source_id; /* as in flow_event */
};

_Static_assert(sizeof(struct endpoint) == 36, "endpoint layout");
_Static_assert(sizeof(struct endpoint6) == 32, "endpoint6 layout");
_Static_assert(sizeof(struct policy_rule6) == 40, "policy_rule6 layout");
_Static_assert(sizeof(struct policy6) == 8 + 40 * MAX_POLICY_RULES, "policy6 layout");
_Static_assert(sizeof(struct ct_key6) == 44, "ct_key6 layout");
_Static_assert(sizeof(struct flow_event6) == 56, "flow_event6 layout");
_Static_assert(sizeof(struct policy_rule) == 16, "policy_rule layout");
_Static_assert(sizeof(struct policy) == 8 + 16 * MAX_POLICY_RULES, "policy layout");
_Static_assert(sizeof(struct ip_set_key) == 16, "ip_set_key layout");
_Static_assert(sizeof(struct ip_set_key6) == 28, "ip_set_key6 layout");
_Static_assert(sizeof(struct name_record) == 64, "name_record layout");
_Static_assert(sizeof(struct ct_key) == 20, "ct_key layout");
_Static_assert(sizeof(struct ct_entry) == 56, "ct_entry layout");
_Static_assert(sizeof(struct counters) == 8 * (4 + DROP_REASON_MAX), "counters layout");
_Static_assert(sizeof(struct config) == 32, "config layout");
_Static_assert(sizeof(struct flow_event) == 32, "flow_event layout");
_Static_assert(sizeof(struct svc_key) == 8, "svc_key layout");
_Static_assert(sizeof(struct svc_value) == 24, "svc_value layout");
_Static_assert(sizeof(struct backend_key) == 8, "backend_key layout");
_Static_assert(sizeof(struct backend) == 12, "backend layout");
_Static_assert(sizeof(struct svc_meta) == 64, "svc_meta layout");
_Static_assert(sizeof(struct affinity_key) == 8, "affinity_key layout");
_Static_assert(sizeof(struct affinity_value) == 16, "affinity_value layout");
_Static_assert(sizeof(struct nat_key) == 16, "nat_key layout");
_Static_assert(sizeof(struct node_config) == 32, "node_config layout");
_Static_assert(sizeof(struct sock_revnat_key) == 16, "sock_revnat_key layout");
_Static_assert(sizeof(struct sock_revnat_value) == 8, "sock_revnat_value layout");
_Static_assert(sizeof(struct sock_revnat_key6) == 32, "sock_revnat_key6 layout");
_Static_assert(sizeof(struct sock_revnat_value6) == 20, "sock_revnat_value6 layout");
_Static_assert(sizeof(struct peer_key) == 8, "peer_key layout");
_Static_assert(sizeof(struct peer) == 8, "peer layout");
_Static_assert(sizeof(struct peer_key6) == 20, "peer_key6 layout");
_Static_assert(sizeof(struct nat_entry) == 32, "nat_entry layout");
_Static_assert(sizeof(struct svc_key6) == 20, "svc_key6 layout");
_Static_assert(sizeof(struct backend6) == 24, "backend6 layout");
_Static_assert(sizeof(struct affinity_key6) == 20, "affinity_key6 layout");
_Static_assert(sizeof(struct affinity_value6) == 32, "affinity_value6 layout");
_Static_assert(sizeof(struct nat_key6) == 40, "nat_key6 layout");
_Static_assert(sizeof(struct nat_entry6) == 56, "nat_entry6 layout");
_Static_assert(sizeof(struct svc_filter) == SVC_FILTER_BITS / 8, "svc_filter layout");
