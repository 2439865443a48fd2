/* SPDX-License-Identifier: GPL-2.0 */
/* Address translation of service flows: the table of translations (two
 * entries a flow: forward, keyed by what the client sends, and reverse,
 * keyed by what the backend answers) and the in-place rewrite of a
 * packet's addresses and ports with their checksums. */
#pragma once

#include "common.h"
#include "parse.h"
#include "conntrack.h"
#include "ndisc.h"

/* LRU like conntrack; the loader sizes it at twice conntrack (two entries
 * a flow). A lost reverse entry is written again by the next forward
 * packet's refresh (at most CT_REFRESH_NS later). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 131072);
	__type(key, struct nat_key);
	__type(value, struct nat_entry);
} nat SEC(".maps");

/* IPv6 flows' translations, sized like nat. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 131072);
	__type(key, struct nat_key6);
	__type(value, struct nat_entry6);
} nat6 SEC(".maps");

/* The address a pod reaching itself through a service is shown as: a pod
 * does not accept packets from its own address, so the source of a
 * hairpin flow is swapped for this link-local one, which the pod's default
 * route sends back through its host veth. */
#define HAIRPIN_ADDR bpf_htonl(0xa9fe2a01) /* 169.254.42.1 */
/* IPv6's, from the discard-only prefix (RFC 6666: never a host's), with
 * IPv4's in its last word: 100::a9fe:2a01. */
static const union v6addr hairpin_addr6 = {
	.w = {bpf_htonl(0x01000000), 0, 0, bpf_htonl(0xa9fe2a01)},
};

static __always_inline void nat_key_fill(struct nat_key *k, __be32 saddr, __be32 daddr,
					 __be16 sport, __be16 dport, __u8 proto, __u8 kind)
{
	k->saddr = saddr;
	k->daddr = daddr;
	k->sport = sport;
	k->dport = dport;
	k->proto = proto;
	k->kind = kind;
	k->pad[0] = k->pad[1] = 0;
}

static __always_inline void nat_key6_fill(struct nat_key6 *k, const union v6addr *saddr,
					  const union v6addr *daddr, __be16 sport, __be16 dport,
					  __u8 proto, __u8 kind)
{
	k->saddr = *saddr;
	k->daddr = *daddr;
	k->sport = sport;
	k->dport = dport;
	k->proto = proto;
	k->kind = kind;
	k->pad[0] = k->pad[1] = 0;
}

/* Idle timeouts of a translation, as long as the longest of conntrack's
 * for the protocol: a translation must outlive its flow's tracking. */
static __always_inline bool nat_expired(__u64 last_seen_ns, __u64 now, __u8 proto)
{
	__u64 timeout =
		proto == IPPROTO_TCP ? CT_TIMEOUT_TCP_ESTABLISHED : CT_TIMEOUT_UDP_ESTABLISHED;
	return (__s64)(now - last_seen_ns) > (__s64)timeout;
}

static __always_inline __u32 l4_csum_off(const struct packet *p)
{
	return p->l4_off + (p->proto == IPPROTO_TCP ? __builtin_offsetof(struct tcphdr, check)
						    : __builtin_offsetof(struct udphdr, check));
}

/* RFC 1624's incremental update of a header checksum for a 32-bit word
 * that changed from `from` to `to` (words as stored: the sum does not care
 * for byte order). */
static __always_inline __sum16 csum_replace_word(__sum16 check, __be32 from, __be32 to)
{
	__u32 sum = (__u16)~check;
	sum += (__u16)~from + (__u16)~(from >> 16);
	sum += (__u16)to + (__u16)(to >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__sum16)~sum;
}

/* The checksum difference of an IPv6 address changed from `from` to
 * `to`, as bpf_csum_diff(from, 16, to, 16, 0) gives it (a 32-bit
 * ones'-complement sum, for bpf_l4_csum_replace) without the helper call.
 * Inline: a BPF call's return costs as much as a helper's on a host that
 * mitigates SRSO. */
static __always_inline __u32 csum_diff_v6addr(const union v6addr *from, const union v6addr *to)
{
	__u64 sum = (__u32)~from->w[0];
	sum += (__u32)~from->w[1];
	sum += (__u32)~from->w[2];
	sum += (__u32)~from->w[3];
	sum += to->w[0];
	sum += to->w[1];
	sum += to->w[2];
	sum += to->w[3];
	sum = (sum & 0xffffffff) + (sum >> 32);
	sum = (sum & 0xffffffff) + (sum >> 32);
	return (__u32)sum;
}

/* Rewrites the source (or destination) of a TCP or UDP packet to
 * addr:port, fixing the IP and L4 checksums, and keeps `p` in step. The
 * L4 checksum is the helpers' (they handle CHECKSUM_PARTIAL packets, a
 * pod's own offloaded TCP, and UDP's "no checksum" zero with
 * BPF_F_MARK_MANGLED_0); the rest is written in place: the IP checksum
 * is always complete, and each helper call costs ~20 ns on a guest that
 * mitigates SRSO. Returns 0 or <0. */
static __always_inline int nat_rewrite(struct __sk_buff *skb, struct packet *p, bool source,
				       __be32 addr, __be16 port)
{
	__u32 csum_off = l4_csum_off(p);
	__u64 mangled = p->proto == IPPROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0;
	__be32 old_addr = source ? p->saddr : p->daddr;
	__be16 old_port = source ? p->sport : p->dport;

	if (old_addr != addr &&
	    bpf_l4_csum_replace(skb, csum_off, old_addr, addr,
				BPF_F_PSEUDO_HDR | mangled | sizeof(addr)) < 0)
		return -1;
	if (old_port != port &&
	    bpf_l4_csum_replace(skb, csum_off, old_port, port, mangled | sizeof(port)) < 0)
		return -1;
	/* After the helpers, which may have moved the data. */
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct iphdr *ip = data + ETH_HLEN;
	__u32 l4_off = p->l4_off;
	if (l4_off > ETH_HLEN + 60) /* parse_packet's bound, for the verifier */
		return -1;
	/* TCP and UDP both start with the source port, then the destination. */
	__be16 *ports = data + l4_off;
	if ((void *)(ip + 1) > data_end || (void *)(ports + 2) > data_end)
		return -1;
	if (source) {
		ip->check = csum_replace_word(ip->check, ip->saddr, addr);
		ip->saddr = addr;
		ports[0] = port;
		p->saddr = addr;
		p->sport = port;
	} else {
		ip->check = csum_replace_word(ip->check, ip->daddr, addr);
		ip->daddr = addr;
		ports[1] = port;
		p->daddr = addr;
		p->dport = port;
	}
	return 0;
}

/* nat_rewrite for IPv6, which has no header checksum: the address's
 * change is folded into the L4 checksum (its pseudo-header) as one
 * difference over the 16 bytes. */
static __always_inline int nat_rewrite6(struct __sk_buff *skb, struct packet *p, bool source,
					const union v6addr *addr, __be16 port)
{
	__u32 csum_off = l4_csum_off(p);
	__u64 mangled = p->proto == IPPROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0;
	union v6addr *old_addr = source ? &p->saddr6 : &p->daddr6;
	__be16 old_port = source ? p->sport : p->dport;

	if (!v6addr_equal(old_addr, addr)) {
		__u32 diff = csum_diff_v6addr(old_addr, addr);
		if (bpf_l4_csum_replace(skb, csum_off, 0, diff, BPF_F_PSEUDO_HDR | mangled) < 0)
			return -1;
	}
	if (old_port != port &&
	    bpf_l4_csum_replace(skb, csum_off, old_port, port, mangled | sizeof(port)) < 0)
		return -1;
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ipv6hdr *ip6 = data + ETH_HLEN;
	__u32 l4_off = p->l4_off;
	if (l4_off > IPV6_MAX_L4_OFF) /* parse_ipv6's bound, for the verifier */
		return -1;
	__be16 *ports = data + l4_off;
	if ((void *)(ip6 + 1) > data_end || (void *)(ports + 2) > data_end)
		return -1;
	if (source) {
		__builtin_memcpy(&ip6->saddr, addr, sizeof(*addr));
		ports[0] = port;
		p->saddr6 = *addr;
		p->sport = port;
	} else {
		__builtin_memcpy(&ip6->daddr, addr, sizeof(*addr));
		ports[1] = port;
		p->daddr6 = *addr;
		p->dport = port;
	}
	return 0;
}

/* Whether the reverse entry at `k` already says what `rev` says: a known
 * flow's check costs a lookup instead of an update. */
static __always_inline bool nat_reverse_current(const struct nat_key *k,
						const struct nat_entry *rev)
{
	struct nat_entry *cur = bpf_map_lookup_elem(&nat, k);
	return cur && cur->addr == rev->addr && cur->port == rev->port && cur->peer == rev->peer &&
	       cur->flags == rev->flags;
}

/* Writes the reverse entry of a translated flow: what the backend's reply
 * carries (backend -> client, or -> the hairpin address) maps back to the
 * frontend, and for a hairpin to the client's own address.
 *
 * The key is what the backend sees, and two frontends served by one
 * backend (two Services selecting the same pods) share it whenever a
 * client reuses a source port for the other one: the entry is last
 * writer's. `check_first` looks before writing (nat_reverse_current), for
 * a known flow making sure the entry still names its frontend. */
static __always_inline void nat_write_reverse(const struct nat_entry *fwd, __be32 client,
					      __be16 client_port, __be32 frontend,
					      __be16 frontend_port, __u8 proto, __u32 nat_flags,
					      bool check_first)
{
	struct nat_key k;
	nat_key_fill(&k, fwd->addr, fwd->peer ? fwd->peer : client, fwd->port, client_port, proto,
		     NAT_REV);
	struct nat_entry rev = {
		.last_seen_ns = fwd->last_seen_ns,
		.addr = frontend,
		.peer = fwd->peer ? client : 0,
		.port = frontend_port,
		.svc_id = fwd->svc_id,
		.flags = nat_flags,
	};
	if (check_first && nat_reverse_current(&k, &rev))
		return;
	bpf_map_update_elem(&nat, &k, &rev, BPF_ANY);
}

/* Whether a new flow arriving at a local backend (packet: client ->
 * backend) belongs to a translation that its side reverses (NodePort). */
static __always_inline bool nat_reversed_at_backend(const struct packet *p)
{
	if (p->proto != IPPROTO_TCP && p->proto != IPPROTO_UDP)
		return false;
	struct nat_key k;
	nat_key_fill(&k, p->daddr, p->saddr, p->dport, p->sport, p->proto, NAT_REV);
	struct nat_entry *rev = bpf_map_lookup_elem(&nat, &k);
	return rev && (rev->flags & NAT_F_AT_BACKEND);
}

/* DSR on the backend's node: the flow client -> backend came through the
 * tunnel from the node that took it in on `node`:`node_port`; the
 * backend's replies leave from here as that NodePort's. */
static __always_inline void nat_record_dsr(const struct packet *p, __be32 node, __be16 node_port)
{
	if (p->proto != IPPROTO_TCP && p->proto != IPPROTO_UDP)
		return;
	struct nat_key k;
	nat_key_fill(&k, p->daddr, p->saddr, p->dport, p->sport, p->proto, NAT_REV);
	struct nat_entry rev = {
		.addr = node,
		.port = node_port,
		.flags = NAT_F_AT_BACKEND,
	};
	/* Kept while it names this ingress: the same client port may reach
	 * the backend through another node or NodePort later (nat_write_reverse). */
	if (nat_reverse_current(&k, &rev))
		return;
	rev.last_seen_ns = flow_clock();
	bpf_map_update_elem(&nat, &k, &rev, BPF_ANY);
}

enum nat_result {
	NAT_TRANSLATED = 0,
	NAT_NO_ENTRY,
	NAT_FAILED,
};

/* Writes `len` (2 or 4) bytes at `off` of an ICMP error, fixing the
 * checksum at `csum_off`: the quoted IP header's own for a quoted address
 * (which keeps the ICMP checksum right, the header's sum being unchanged),
 * the ICMP checksum for a quoted port, the outer IP header's for an outer
 * address (ICMP has no pseudo-header). All sum-neutral over the packet. */
static __always_inline int icmp_store(struct __sk_buff *skb, __u32 off, __u32 csum_off,
				      __be32 from, __be32 to, __u32 len)
{
	if (from == to)
		return 0;
	if (bpf_l3_csum_replace(skb, csum_off, from, to, len) < 0)
		return -1;
	return bpf_skb_store_bytes(skb, off, &to, len, 0);
}

#define QUOTE_SADDR(p) (icmp_quote_off(p) + __builtin_offsetof(struct iphdr, saddr))
#define QUOTE_DADDR(p) (icmp_quote_off(p) + __builtin_offsetof(struct iphdr, daddr))
#define QUOTE_CSUM(p) (icmp_quote_off(p) + __builtin_offsetof(struct iphdr, check))
#define QUOTE_SPORT(p) (icmp_quote_off(p) + sizeof(struct iphdr))
#define QUOTE_DPORT(p) (icmp_quote_off(p) + sizeof(struct iphdr) + 2)
#define ICMP_CSUM(p) ((p)->l4_off + __builtin_offsetof(struct icmphdr, checksum))
#define OUTER_SADDR (ETH_HLEN + __builtin_offsetof(struct iphdr, saddr))
#define OUTER_DADDR (ETH_HLEN + __builtin_offsetof(struct iphdr, daddr))
#define OUTER_CSUM (ETH_HLEN + __builtin_offsetof(struct iphdr, check))

/* The translation of `kind` (NAT_REV, NAT_FWD) whose key is the reply to
 * the packet an ICMP error quotes (loaded into `q`), or NULL. */
static __always_inline struct nat_entry *icmp_quote_translation(struct __sk_buff *skb,
								const struct packet *p,
								struct icmp_quote *q, __u8 kind)
{
	if (!icmp_error_quote(skb, p, q) ||
	    (q->ip.protocol != IPPROTO_TCP && q->ip.protocol != IPPROTO_UDP))
		return NULL;
	struct nat_key k;
	nat_key_fill(&k, q->ip.daddr, q->ip.saddr, q->dport, q->sport, q->ip.protocol, kind);
	return bpf_map_lookup_elem(&nat, &k);
}

/* An ICMP error quoting a translated flow's packet (client -> backend),
 * from the backend or from a router on the way (port unreachable, needs
 * fragmentation): the client's kernel matches it to a socket by the quote,
 * so the quote must show the frontend the client spoke to, and an error
 * the backend itself sent must come from the frontend. Without this, UDP
 * to a service whose backend has no listener waits for a timeout instead
 * of failing at once, and path MTU discovery through a service breaks.
 * The quote's own L4 checksum is left alone: nobody checks it, and the
 * quote may not even reach it (8 bytes are all a router must return). */
static __always_inline int nat_reverse_icmp_error(struct __sk_buff *skb, struct packet *p)
{
	struct icmp_quote q;
	struct nat_entry *rev = icmp_quote_translation(skb, p, &q, NAT_REV);
	if (!rev)
		return NAT_NO_ENTRY;
	__be32 frontend = rev->addr, client = rev->peer;
	__be16 frontend_port = rev->port;
	if (icmp_store(skb, QUOTE_DADDR(p), QUOTE_CSUM(p), q.ip.daddr, frontend, 4) < 0 ||
	    icmp_store(skb, QUOTE_DPORT(p), ICMP_CSUM(p), q.dport, frontend_port, 2) < 0)
		return NAT_FAILED;
	/* A hairpin: the quote's source and the error's destination are the
	 * hairpin address, the client's own to the client. */
	if (client) {
		if (icmp_store(skb, QUOTE_SADDR(p), QUOTE_CSUM(p), q.ip.saddr, client, 4) < 0 ||
		    icmp_store(skb, OUTER_DADDR, OUTER_CSUM, p->daddr, client, 4) < 0)
			return NAT_FAILED;
		p->daddr = client;
	}
	if (p->saddr == q.ip.daddr) {
		if (icmp_store(skb, OUTER_SADDR, OUTER_CSUM, p->saddr, frontend, 4) < 0)
			return NAT_FAILED;
		p->saddr = frontend;
	}
	return NAT_TRANSLATED;
}

/* The other way: an ICMP error a client sends about a service's reply
 * (frontend -> client, as the client saw it; its socket had gone, say) is
 * about the backend's flow, and goes to the backend, quoting it as the
 * backend sent it. A hairpin's is left as it is. */
static __always_inline int nat_forward_icmp_error(struct __sk_buff *skb, struct packet *p)
{
	struct icmp_quote q;
	struct nat_entry *fwd = icmp_quote_translation(skb, p, &q, NAT_FWD);
	if (!fwd || fwd->peer || p->daddr != q.ip.saddr)
		return NAT_NO_ENTRY;
	__be32 backend = fwd->addr;
	__be16 backend_port = fwd->port;
	if (icmp_store(skb, QUOTE_SADDR(p), QUOTE_CSUM(p), q.ip.saddr, backend, 4) < 0 ||
	    icmp_store(skb, QUOTE_SPORT(p), ICMP_CSUM(p), q.sport, backend_port, 2) < 0 ||
	    icmp_store(skb, OUTER_DADDR, OUTER_CSUM, p->daddr, backend, 4) < 0)
		return NAT_FAILED;
	p->daddr = backend;
	return NAT_TRANSLATED;
}

/* Turns a backend's reply back into the frontend's: source := frontend,
 * and for a hairpin, destination := the client's own address. An ICMP
 * error about the flow is turned likewise (nat_reverse_icmp_error). */
static __always_inline int nat_reverse(struct __sk_buff *skb, struct packet *p)
{
	if (p->proto == IPPROTO_ICMP)
		return nat_reverse_icmp_error(skb, p);
	if (p->proto != IPPROTO_TCP && p->proto != IPPROTO_UDP)
		return NAT_NO_ENTRY;
	struct nat_key k;
	nat_key_fill(&k, p->saddr, p->daddr, p->sport, p->dport, p->proto, NAT_REV);
	struct nat_entry *rev = bpf_map_lookup_elem(&nat, &k);
	if (!rev)
		return NAT_NO_ENTRY;
	__be32 frontend = rev->addr, client = rev->peer;
	__be16 frontend_port = rev->port;
	if (client && nat_rewrite(skb, p, false, client, p->dport) < 0)
		return NAT_FAILED;
	if (nat_rewrite(skb, p, true, frontend, frontend_port) < 0)
		return NAT_FAILED;
	return NAT_TRANSLATED;
}

/* nat_reverse for a reply to the client of the flow of entry `e` (the
 * client's), taking the service the entry remembers (turn_addr) unless
 * `look`: then, at the entry's refresh (once a second), the translation
 * is looked up and remembered again. So a reply costs no lookup of its
 * own between refreshes, a lost translation shows within a second, as
 * the forward path's does (egress_to_service_established), and a new
 * frontend at once: the forward packet that changes it (a SYN, every UDP
 * datagram) sets the entry's turn as it writes the translation. A
 * hairpin's reply, whose destination changes too, is always looked up. */
static __always_inline int nat_reverse_reply(struct __sk_buff *skb, struct packet *p,
					     struct ct_entry *e, bool look)
{
	bool ports = p->proto == IPPROTO_TCP || p->proto == IPPROTO_UDP;
	if (!look && ports && e->turn_addr)
		return nat_rewrite(skb, p, true, e->turn_addr, e->turn_port) < 0 ? NAT_FAILED
										  : NAT_TRANSLATED;
	__be32 daddr = p->daddr;
	int rev = nat_reverse(skb, p);
	if (rev == NAT_TRANSLATED && ports && p->daddr == daddr)
		ct_remember_turn(e, p->saddr, p->sport);
	else if (rev != NAT_FAILED)
		ct_remember_turn(e, 0, 0);
	return rev;
}

/* nat_reverse_current for IPv6. */
static __always_inline bool nat_reverse6_current(const struct nat_key6 *k,
						 const struct nat_entry6 *rev)
{
	struct nat_entry6 *cur = bpf_map_lookup_elem(&nat6, k);
	return cur && v6addr_equal(&cur->addr, &rev->addr) && cur->port == rev->port &&
	       v6addr_equal(&cur->peer, &rev->peer) && cur->flags == rev->flags;
}

/* nat_write_reverse for IPv6. */
static __always_inline void nat_write_reverse6(const struct nat_entry6 *fwd,
					       const union v6addr *client, __be16 client_port,
					       const union v6addr *frontend, __be16 frontend_port,
					       __u8 proto, __u32 nat_flags, bool check_first)
{
	bool hairpin = !v6_unspecified(&fwd->peer);
	struct nat_key6 k;
	nat_key6_fill(&k, &fwd->addr, hairpin ? &fwd->peer : client, fwd->port, client_port, proto,
		      NAT_REV);
	struct nat_entry6 rev = {
		.last_seen_ns = fwd->last_seen_ns,
		.addr = *frontend,
		.port = frontend_port,
		.svc_id = fwd->svc_id,
		.flags = nat_flags,
	};
	if (hairpin)
		rev.peer = *client;
	if (check_first && nat_reverse6_current(&k, &rev))
		return;
	bpf_map_update_elem(&nat6, &k, &rev, BPF_ANY);
}

/* nat_record_dsr for IPv6: the flow came from the node whose NodePort it
 * was sent to, `node`:`node_port` (the tunnel's outer source). */
static __always_inline void nat_record_dsr6(const struct packet *p, const union v6addr *node,
					    __be16 node_port)
{
	if (p->proto != IPPROTO_TCP && p->proto != IPPROTO_UDP)
		return;
	struct nat_key6 k;
	nat_key6_fill(&k, &p->daddr6, &p->saddr6, p->dport, p->sport, p->proto, NAT_REV);
	struct nat_entry6 rev = {
		.addr = *node,
		.port = node_port,
		.flags = NAT_F_AT_BACKEND,
	};
	/* Kept while it names this ingress (nat_record_dsr). */
	if (nat_reverse6_current(&k, &rev))
		return;
	rev.last_seen_ns = flow_clock();
	bpf_map_update_elem(&nat6, &k, &rev, BPF_ANY);
}

/* nat_reversed_at_backend for IPv6. */
static __always_inline bool nat_reversed_at_backend6(const struct packet *p)
{
	if (p->proto != IPPROTO_TCP && p->proto != IPPROTO_UDP)
		return false;
	struct nat_key6 k;
	nat_key6_fill(&k, &p->daddr6, &p->saddr6, p->dport, p->sport, p->proto, NAT_REV);
	struct nat_entry6 *rev = bpf_map_lookup_elem(&nat6, &k);
	return rev && (rev->flags & NAT_F_AT_BACKEND);
}

/* nat_reverse for IPv6 TCP and UDP: a backend's reply to a service
 * connection becomes the frontend's, and a hairpin's goes to the pod's
 * own address. A global function: inline, its two rewrites would grow
 * from_pod6's frame past what the verifier allows beside lb_translate6's
 * (512 bytes for the chain). A client's replies, on its per-packet path,
 * take the entry's turn inline instead (nat_reverse_reply6). */
__attribute__((noinline)) int nat_reverse6(struct __sk_buff *skb, struct packet *p)
{
	if (!p || (p->proto != IPPROTO_TCP && p->proto != IPPROTO_UDP))
		return NAT_NO_ENTRY;
	struct nat_key6 k;
	nat_key6_fill(&k, &p->saddr6, &p->daddr6, p->sport, p->dport, p->proto, NAT_REV);
	struct nat_entry6 *rev = bpf_map_lookup_elem(&nat6, &k);
	if (!rev)
		return NAT_NO_ENTRY;
	union v6addr frontend = rev->addr, client = rev->peer;
	__be16 frontend_port = rev->port;
	if (!v6_unspecified(&client) && nat_rewrite6(skb, p, false, &client, p->dport) < 0)
		return NAT_FAILED;
	if (nat_rewrite6(skb, p, true, &frontend, frontend_port) < 0)
		return NAT_FAILED;
	return NAT_TRANSLATED;
}

/* nat_reverse_reply for IPv6, the turn remembered in turn_addr6. */
static __always_inline int nat_reverse_reply6(struct __sk_buff *skb, struct packet *p,
					      struct ct_entry *e, bool look)
{
	bool ports = p->proto == IPPROTO_TCP || p->proto == IPPROTO_UDP;
	if (!look && ports && !v6_unspecified(&e->turn_addr6))
		return nat_rewrite6(skb, p, true, &e->turn_addr6, e->turn_port) < 0
			       ? NAT_FAILED
			       : NAT_TRANSLATED;
	union v6addr daddr = p->daddr6;
	int rev = nat_reverse6(skb, p);
	if (rev == NAT_TRANSLATED && v6addr_equal(&p->daddr6, &daddr))
		ct6_remember_turn(e, &p->saddr6, p->sport);
	else if (rev != NAT_FAILED)
		ct6_remember_turn(e, NULL, 0);
	return rev;
}

#define QUOTE6_SADDR(p) (icmp_quote_off(p) + __builtin_offsetof(struct ipv6hdr, saddr))
#define QUOTE6_DADDR(p) (icmp_quote_off(p) + __builtin_offsetof(struct ipv6hdr, daddr))
#define QUOTE6_SPORT(p) (icmp_quote_off(p) + sizeof(struct ipv6hdr))
#define QUOTE6_DPORT(p) (icmp_quote_off(p) + sizeof(struct ipv6hdr) + 2)
#define ICMP6_CSUM(p) ((p)->l4_off + __builtin_offsetof(struct icmp6hdr, icmp6_cksum))
#define OUTER6_SADDR (ETH_HLEN + __builtin_offsetof(struct ipv6hdr, saddr))
#define OUTER6_DADDR (ETH_HLEN + __builtin_offsetof(struct ipv6hdr, daddr))

/* Writes address `to` over `from` at `off` of an ICMPv6 error, fixing its
 * checksum, which covers the whole message and, for an outer address
 * (`pseudo`), its pseudo-header. */
static __always_inline int icmp6_store_addr(struct __sk_buff *skb, const struct packet *p,
					    __u32 off, const union v6addr *from,
					    const union v6addr *to, bool pseudo)
{
	if (v6addr_equal(from, to))
		return 0;
	__u32 diff = csum_diff_v6addr(from, to);
	if (bpf_l4_csum_replace(skb, ICMP6_CSUM(p), 0, diff, pseudo ? BPF_F_PSEUDO_HDR : 0) < 0)
		return -1;
	return bpf_skb_store_bytes(skb, off, to, sizeof(*to), 0);
}

/* icmp_quote_translation for IPv6: the translation of `kind` whose key is
 * the reply to the packet an ICMPv6 error quotes (loaded into `q`, its
 * ports into `sport`/`dport`), or NULL. */
static __always_inline struct nat_entry6 *icmp6_quote_translation(struct __sk_buff *skb,
								  const struct packet *p,
								  struct icmp6_quote *q,
								  __be16 *sport, __be16 *dport,
								  __u8 kind)
{
	if (!p || !icmp6_error_quote(skb, p, q, sport, dport) ||
	    (q->ip.nexthdr != IPPROTO_TCP && q->ip.nexthdr != IPPROTO_UDP))
		return NULL;
	struct nat_key6 k;
	nat_key6_fill(&k, (union v6addr *)&q->ip.daddr, (union v6addr *)&q->ip.saddr, *dport,
		      *sport, q->ip.nexthdr, kind);
	return bpf_map_lookup_elem(&nat6, &k);
}

/* nat_reverse_icmp_error for IPv6: an ICMPv6 error quoting a translated
 * flow's packet (client -> backend), from the backend or a router on the
 * way, made to quote the frontend the client spoke to (and to come from it
 * when the backend sent it). A global function: its quote and key take a
 * stack frame of their own. */
__attribute__((noinline)) int nat_reverse_icmp6_error(struct __sk_buff *skb, struct packet *p)
{
	struct icmp6_quote q;
	__be16 sport, dport;
	struct nat_entry6 *rev = icmp6_quote_translation(skb, p, &q, &sport, &dport, NAT_REV);
	if (!rev)
		return NAT_NO_ENTRY;
	union v6addr *qsaddr = (union v6addr *)&q.ip.saddr, *qdaddr = (union v6addr *)&q.ip.daddr;
	union v6addr frontend = rev->addr, client = rev->peer;
	__be16 frontend_port = rev->port;
	if (icmp6_store_addr(skb, p, QUOTE6_DADDR(p), qdaddr, &frontend, false) < 0 ||
	    icmp_store(skb, QUOTE6_DPORT(p), ICMP6_CSUM(p), dport, frontend_port, 2) < 0)
		return NAT_FAILED;
	/* A hairpin: the quote's source and the error's destination are the
	 * hairpin address, the client's own to the client. */
	if (!v6_unspecified(&client)) {
		if (icmp6_store_addr(skb, p, QUOTE6_SADDR(p), qsaddr, &client, false) < 0 ||
		    icmp6_store_addr(skb, p, OUTER6_DADDR, &p->daddr6, &client, true) < 0)
			return NAT_FAILED;
		p->daddr6 = client;
	}
	if (v6addr_equal(&p->saddr6, qdaddr)) {
		if (icmp6_store_addr(skb, p, OUTER6_SADDR, &p->saddr6, &frontend, true) < 0)
			return NAT_FAILED;
		p->saddr6 = frontend;
	}
	return NAT_TRANSLATED;
}

/* nat_forward_icmp_error for IPv6: an error a client sends about a
 * service's reply (frontend -> client) goes to the backend, quoting the
 * reply as the backend sent it. A hairpin's is left as it is. A global
 * function, as nat_reverse_icmp6_error. */
__attribute__((noinline)) int nat_forward_icmp6_error(struct __sk_buff *skb, struct packet *p)
{
	struct icmp6_quote q;
	__be16 sport, dport;
	struct nat_entry6 *fwd = icmp6_quote_translation(skb, p, &q, &sport, &dport, NAT_FWD);
	union v6addr *qsaddr = (union v6addr *)&q.ip.saddr;
	if (!fwd || !v6_unspecified(&fwd->peer) || !v6addr_equal(&p->daddr6, qsaddr))
		return NAT_NO_ENTRY;
	union v6addr backend = fwd->addr;
	__be16 backend_port = fwd->port;
	if (icmp6_store_addr(skb, p, QUOTE6_SADDR(p), qsaddr, &backend, false) < 0 ||
	    icmp_store(skb, QUOTE6_SPORT(p), ICMP6_CSUM(p), sport, backend_port, 2) < 0 ||
	    icmp6_store_addr(skb, p, OUTER6_DADDR, &p->daddr6, &backend, true) < 0)
		return NAT_FAILED;
	p->daddr6 = backend;
	return NAT_TRANSLATED;
}
