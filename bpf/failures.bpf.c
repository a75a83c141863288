// SPDX-License-Identifier: GPL-2.0
/* Failure engine, kernel side: why connections fail.
 *
 * Every hook here fires only when something goes wrong — a packet dropped with a reason,
 * a reset sent or received, a SYN-ACK retransmitted, an error reported on a socket — so a
 * host where nothing fails pays nothing but the hooks' presence. Listeners' queues and drop
 * counters are kept by the kernel and read by iterators at poll time. Events are counted
 * per socket by cookie (a flow or a listener), or, when no full socket is at hand, per
 * packet 4-tuple for user space to match to its flow. Failed connects are kept by cookie:
 * the error is seen in softirq or timer context (PID 0), so user space names the process
 * from the flow engine's record of the same socket.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include "failures.h"

char LICENSE[] SEC("license") = "GPL";

#define AF_INET 2
#define AF_INET6 10
#define IPPROTO_TCP 6
#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define ECONNRESET 104
#define ECONNREFUSED 111
#define EPIPE 32
#define E2BIG 7
#define IP_OFFSET_MASK 0x1fff

/* As in flows.bpf.c: tests build variants where a socket handed to a helper is an untrusted
 * pointer, as one kernel build's verifier sees the one reached from a file (tests/kernel/bpf/),
 * so that every kernel runs the loader's per-program fallbacks. */
#ifndef FILE_SOCK
#define FILE_SOCK(sock) ((sock)->sk)
#endif
#ifndef FILES_EXTRA_CHECK
#define FILES_EXTRA_CHECK(sock) 0
#endif
#ifndef DROP_SK
#define DROP_SK(sk) (sk)
#endif

/* Which generation of the drained maps (per-socket, packet-keyed, failed connects) events go
 * to (slot 0). User space flips it, waits for an RCU grace period (every program that read the
 * old value has finished), then drains the other one: no count can land in an entry as it is
 * deleted. A map, not a global: libbpf 1.1 does
 * not map .bss into user space for callers without a skeleton. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} tuple_gen SEC(".maps");

/* Per-socket counts since the last drain, two generations (see tuple_gen): user space drains
 * one generation a poll and keeps each socket's totals, so a poll reads only the sockets
 * something happened to since the one before. Sized by the loader. */
struct sock_drops_gen {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 32768);
	__type(key, struct sock_drop_key);
	__type(value, __u64);
};
struct sock_drops_gen sock_drops_0 SEC(".maps");
struct sock_drops_gen sock_drops_1 SEC(".maps");

struct sock_events_gen {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 32768);
	__type(key, __u64);
	__type(value, struct sock_events);
};
struct sock_events_gen sock_events_0 SEC(".maps");
struct sock_events_gen sock_events_1 SEC(".maps");

/* Packet-keyed events since the last drain, two generations (see tuple_gen). */
struct tuples {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, struct tuple_key);
	__type(value, __u64);
};
struct tuples tuples_0 SEC(".maps");
struct tuples tuples_1 SEC(".maps");

/* Packet-keyed events that found no room in the tuple map: reason, or 256 + reason for
 * resets (reasons above 255 share slot 255). They can only be counted host-wide. */
#define OVERFLOW_SLOTS 512
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, OVERFLOW_SLOTS);
	__type(key, __u32);
	__type(value, __u64);
} tuple_overflow SEC(".maps");

/* Connects that failed since the last drain, by socket cookie, two generations (see tuple_gen). */
struct connect_fails {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, struct connect_fail);
};
struct connect_fails connect_fails_0 SEC(".maps");
struct connect_fails connect_fails_1 SEC(".maps");

/* Room to build a listener's record (and what puts its layout in the object's BTF). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct listener_record);
} listener_scratch SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, FS_MAX);
	__type(key, enum fail_stat);
	__type(value, __u64);
} stats SEC(".maps");

static __always_inline void stat_inc(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&stats, &idx);

	if (v)
		*v += 1;
}

static __always_inline bool odd_generation(void)
{
	__u32 zero = 0, *gen = bpf_map_lookup_elem(&tuple_gen, &zero);

	return gen && (*gen & 1);
}

/* A full TCP socket (not a request or TIME_WAIT socket, which carry only sock_common). */
static __always_inline bool full_tcp(const struct sock *sk)
{
	__u16 family;
	__u8 state;

	if (!sk)
		return false;
	family = sk->__sk_common.skc_family;
	if (family != AF_INET && family != AF_INET6)
		return false;
	state = sk->__sk_common.skc_state;
	if (state == TCP_TIME_WAIT || state == TCP_NEW_SYN_RECV)
		return false;
	return sk->sk_protocol == IPPROTO_TCP && sk->sk_type == 1 /* SOCK_STREAM */;
}

static __always_inline __u32 netns_of(const struct sock *sk)
{
	return sk->__sk_common.skc_net.net->ns.inum;
}

/* The cookie the kernel already gave a socket (0 if none yet). Read, not generated: a
 * socket reached through another pointer (skb->sk) is untrusted on some kernel builds,
 * and the helper that generates one would be refused there. */
static __always_inline __u64 known_cookie(const struct sock *sk)
{
	return sk->__sk_common.skc_cookie.counter;
}

static __always_inline void add(__u64 *v)
{
	__sync_fetch_and_add(v, 1);
}

static __always_inline void count_sock_drop(__u64 cookie, __u32 reason)
{
	struct sock_drop_key k = { .cookie = cookie, .reason = reason };
	void *map = odd_generation() ? (void *)&sock_drops_1 : (void *)&sock_drops_0;
	__u64 one = 1, *v;

	v = bpf_map_lookup_elem(map, &k);
	if (v) {
		add(v);
		return;
	}
	if (!bpf_map_update_elem(map, &k, &one, BPF_NOEXIST)) {
		stat_inc(FS_ENTERED);
		return;
	}
	v = bpf_map_lookup_elem(map, &k); /* another CPU inserted it meanwhile */
	if (v)
		add(v);
	else
		stat_inc(FS_SOCK_FULL);
}

static __always_inline struct sock_events *events_of(__u64 cookie)
{
	void *map = odd_generation() ? (void *)&sock_events_1 : (void *)&sock_events_0;
	struct sock_events zero = {}, *e;

	e = bpf_map_lookup_elem(map, &cookie);
	if (e)
		return e;
	if (!bpf_map_update_elem(map, &cookie, &zero, BPF_NOEXIST))
		stat_inc(FS_ENTERED);
	e = bpf_map_lookup_elem(map, &cookie);
	if (!e)
		stat_inc(FS_SOCK_FULL);
	return e;
}

static __always_inline void overflow_inc(__u32 kind, __u32 reason)
{
	__u32 slot = (reason > 255 ? 255 : reason) + (kind == TK_RESET_SENT ? 256 : 0);
	__u64 *v = bpf_map_lookup_elem(&tuple_overflow, &slot);

	if (v)
		*v += 1;
}

static __always_inline void count_tuple(struct tuple_key *k)
{
	void *map = odd_generation() ? (void *)&tuples_1 : (void *)&tuples_0;
	__u64 one = 1, *v;

	v = bpf_map_lookup_elem(map, k);
	if (v) {
		add(v);
		return;
	}
	if (!bpf_map_update_elem(map, k, &one, BPF_NOEXIST)) {
		stat_inc(FS_ENTERED);
		return;
	}
	v = bpf_map_lookup_elem(map, k);
	if (v) {
		add(v);
		return;
	}
	stat_inc(FS_TUPLE_FULL);
	overflow_inc(k->kind, k->reason);
}

/* Count an event by the TCP packet's own addresses and ports. Anything that is not an
 * unfragmented TCP segment over IPv4/IPv6 is not ours and is left alone. */
static __always_inline void count_by_packet(const struct sk_buff *skb, const struct sock *sk,
					    enum tuple_kind kind, __u32 reason)
{
	struct tuple_key k = { .kind = kind, .reason = reason };
	unsigned char *head = skb->head;
	__u16 nh = skb->network_header, proto = bpf_ntohs(skb->protocol);
	__u32 thoff;
	__be16 ports[2];

	if (nh == (__u16)~0U) /* not set yet (dropped before the IP layer): data starts there */
		nh = skb->data - head;
	if (proto == ETH_P_IP) {
		struct iphdr ip;

		if (bpf_probe_read_kernel(&ip, sizeof(ip), head + nh) || ip.version != 4 ||
		    ip.protocol != IPPROTO_TCP || (bpf_ntohs(ip.frag_off) & IP_OFFSET_MASK))
			return;
		k.family = AF_INET;
		__builtin_memcpy(k.saddr, &ip.saddr, 4);
		__builtin_memcpy(k.daddr, &ip.daddr, 4);
		thoff = nh + ip.ihl * 4;
	} else if (proto == ETH_P_IPV6) {
		struct ipv6hdr ip6;

		if (bpf_probe_read_kernel(&ip6, sizeof(ip6), head + nh) || ip6.nexthdr != IPPROTO_TCP)
			return;
		k.family = AF_INET6;
		__builtin_memcpy(k.saddr, &ip6.saddr, 16);
		__builtin_memcpy(k.daddr, &ip6.daddr, 16);
		thoff = nh + sizeof(ip6);
	} else {
		return;
	}
	if (bpf_probe_read_kernel(ports, sizeof(ports), head + thoff))
		return;
	k.sport = bpf_ntohs(ports[0]);
	k.dport = bpf_ntohs(ports[1]);
	if (sk)
		k.netns = netns_of(sk);
	else if (skb->dev)
		k.netns = skb->dev->nd_net.net->ns.inum;
	if (kind == TK_DROP)
		stat_inc(FS_DROPS);
	count_tuple(&k);
}

/* Every drop with a reason (a reason of NOT_SPECIFIED says nothing and is left out). The
 * socket is the one the kernel names (rx_sk), or the packet's owner (skb->sk: the sender on
 * transmit, the early-demuxed receiver on input); without a full socket that already has a
 * cookie, the packet's addresses are kept instead. */
SEC("tp_btf/kfree_skb")
int BPF_PROG(fail_drop, struct sk_buff *skb, void *location, enum skb_drop_reason reason, struct sock *rx_sk)
{
	const struct sock *sk;
	__u64 cookie = 0;

	/* QUEUE_PURGE: what is left in a socket's queues as it is destroyed, which every
	 * orderly close does; not a sign of trouble, and the most frequent drop there is. */
	if (reason <= SKB_DROP_REASON_NOT_SPECIFIED || reason == SKB_DROP_REASON_QUEUE_PURGE || !skb)
		return 0;
	if (rx_sk) {
		sk = rx_sk;
		if (full_tcp(sk) || sk->__sk_common.skc_state == TCP_LISTEN)
			cookie = bpf_get_socket_cookie(DROP_SK(rx_sk));
	} else {
		sk = skb->sk;
		if (sk && full_tcp(sk))
			cookie = known_cookie(sk);
	}
	if (cookie && full_tcp(sk)) {
		stat_inc(FS_DROPS);
		count_sock_drop(cookie, reason);
		return 0;
	}
	count_by_packet(skb, sk, TK_DROP, reason);
	return 0;
}

/* A reset sent: by a full socket (an abort: linger 0, unread data at close, ss -K, a bad
 * segment), or in answer to a packet no full socket owns (sk NULL or TIME_WAIT). */
SEC("tp_btf/tcp_send_reset")
int BPF_PROG(fail_reset_sent, const struct sock *sk, const struct sk_buff *skb, const enum sk_rst_reason reason)
{
	struct sock_events *e;

	if (sk && full_tcp(sk)) {
		stat_inc(FS_RESETS_SENT);
		e = events_of(bpf_get_socket_cookie((struct sock *)sk));
		if (!e)
			return 0;
		add(&e->resets_sent);
		e->last_reset_reason = reason;
		e->last_reset_dir = RD_SENT;
		e->last_reset_ns = bpf_ktime_get_ns();
		return 0;
	}
	if (!skb) {
		stat_inc(FS_RESETS_SENT);
		stat_inc(FS_TUPLE_FULL);
		overflow_inc(TK_RESET_SENT, reason);
		return 0;
	}
	stat_inc(FS_RESETS_SENT);
	count_by_packet(skb, sk, TK_RESET_SENT, reason);
	return 0;
}

/* A valid reset received; the errno is the one tcp_reset() is about to give the application. */
SEC("tp_btf/tcp_receive_reset")
int BPF_PROG(fail_reset_received, struct sock *sk)
{
	struct sock_events *e;
	__u32 err;

	if (!full_tcp(sk))
		return 0;
	switch (sk->__sk_common.skc_state) {
	case TCP_SYN_SENT:
		err = ECONNREFUSED;
		break;
	case TCP_CLOSE_WAIT:
		err = EPIPE;
		break;
	case TCP_CLOSE:
		err = 0; /* already closed: the kernel ignores it */
		break;
	default:
		err = ECONNRESET;
	}
	e = events_of(bpf_get_socket_cookie(sk));
	if (!e)
		return 0;
	add(&e->resets_received);
	e->last_reset_reason = err;
	e->last_reset_dir = RD_RECEIVED;
	e->last_reset_ns = bpf_ktime_get_ns();
	return 0;
}

SEC("tp_btf/tcp_retransmit_synack")
int BPF_PROG(fail_synack, const struct sock *sk, const struct request_sock *req)
{
	struct sock_events *e;

	if (!sk)
		return 0;
	e = events_of(bpf_get_socket_cookie((struct sock *)sk));
	if (e)
		add(&e->synack_retrans);
	return 0;
}

static __always_inline void remote_of(const struct sock *sk, struct connect_fail *f)
{
	const struct sock_common *skc = &sk->__sk_common;

	f->family = skc->skc_family;
	f->dport = bpf_ntohs(skc->skc_dport);
	if (f->family == AF_INET) {
		__builtin_memcpy(f->daddr, &skc->skc_daddr, 4);
	} else {
		for (int i = 0; i < 4; i++)
			((__u32 *)f->daddr)[i] = skc->skc_v6_daddr.in6_u.u6_addr32[i];
	}
}

/* An error the kernel reports to a socket's owner. A connect that never established is one
 * whose socket closed (tcp_done_with_error() sets sk_err, closes, then reports, all under the
 * socket's lock, so connect() cannot consume the error first) before any SYN-ACK set rcv_nxt:
 * refused, timed out, unreachable. Errors of established connections are not failed
 * connects. The application's connect() then disconnects the socket, which reports again with
 * no error and no port: only the first report with both counts. */
SEC("tp_btf/inet_sk_error_report")
int BPF_PROG(fail_error, const struct sock *sk)
{
	struct connect_fail f = {};
	struct tcp_sock *tp;
	__u64 cookie;
	void *map;

	if (!full_tcp(sk) || sk->__sk_common.skc_state != TCP_CLOSE)
		return 0;
	tp = bpf_skc_to_tcp_sock((void *)sk);
	if (!tp || tp->rcv_nxt != 0)
		return 0;
	f.err = sk->sk_err;
	remote_of(sk, &f);
	if (!f.err || !f.dport)
		return 0;
	f.netns = netns_of(sk);
	cookie = bpf_get_socket_cookie((struct sock *)sk);
	map = odd_generation() ? (void *)&connect_fails_1 : (void *)&connect_fails_0;
	switch (bpf_map_update_elem(map, &cookie, &f, BPF_NOEXIST)) {
	case 0:
		stat_inc(FS_ENTERED);
		break;
	case -E2BIG:
		stat_inc(FS_CONNECT_FULL);
		break;
	}
	return 0;
}

/* Fields read with probe reads: the task_file path hands us a socket some kernel builds
 * call untrusted, where direct loads are allowed but helpers are not. */
static __always_inline int emit_listener(struct seq_file *seq, struct sock *sk, __u64 cookie,
					 struct task_struct *owner)
{
	struct inet_connection_sock *icsk = (struct inet_connection_sock *)sk;
	struct listener_record *r;
	__u32 zero = 0;

	r = bpf_map_lookup_elem(&listener_scratch, &zero);
	if (!r)
		return 0;
	__builtin_memset(r, 0, sizeof(*r));
	r->cookie = cookie;
	r->netns = BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum);
	r->family = BPF_CORE_READ(sk, __sk_common.skc_family);
	r->sport = bpf_ntohs(BPF_CORE_READ(icsk, icsk_inet.inet_sport));
	if (r->family == AF_INET) {
		__u32 a = BPF_CORE_READ(sk, __sk_common.skc_rcv_saddr);

		__builtin_memcpy(r->saddr, &a, 4);
	} else {
		BPF_CORE_READ_INTO(&r->saddr, sk, __sk_common.skc_v6_rcv_saddr.in6_u.u6_addr8);
	}
	r->accept_queue = BPF_CORE_READ(sk, sk_ack_backlog);
	r->accept_queue_max = BPF_CORE_READ(sk, sk_max_ack_backlog);
	r->syn_queue = BPF_CORE_READ(icsk, icsk_accept_queue.qlen.counter);
	r->drops = BPF_CORE_READ(sk, sk_drops.counter);
	r->sock_ino = BPF_CORE_READ(sk, sk_socket, file, f_inode, i_ino);
	if (owner) {
		r->tgid = BPF_CORE_READ(owner, tgid);
		BPF_CORE_READ_STR_INTO(&r->comm, owner, comm);
	}
	stat_inc(FS_LISTENERS);
	bpf_seq_write(seq, r, sizeof(*r));
	return 0;
}

/* Listening sockets of the namespace that created the iterator. The TCP iterator walks
 * the whole connection table to reach them (the flow engine's walk does the same). */
SEC("iter/tcp")
int fail_listeners(struct bpf_iter__tcp *ctx)
{
	struct sock_common *skc = ctx->sk_common;
	struct tcp_sock *tp;

	if (!skc)
		return 0;
	/* The TCP iterator shows a namespace's listeners first (the listening hash), then the
	 * connection hash: the first socket that does not listen ends the walk, so a poll
	 * costs the listeners, not every connection on the host. */
	if (skc->skc_state != TCP_LISTEN)
		return 1;
	tp = bpf_skc_to_tcp_sock(skc);
	if (!tp)
		return 0;
	return emit_listener(ctx->meta->seq, (struct sock *)tp, bpf_get_socket_cookie(tp), NULL);
}

/* Every listener with a process that holds it, through the file tables: other namespaces'
 * listeners (one pass over the file tables instead of one hash-table walk per namespace),
 * and the owners of this namespace's, whose values user space takes from fail_listeners. */
SEC("iter/task_file")
int fail_listener_files(struct bpf_iter__task_file *ctx)
{
	struct file *file = ctx->file;
	struct socket *sock;
	struct sock *sk;

	if (!file || !ctx->task)
		return 0;
	sock = bpf_sock_from_file(file);
	if (!sock)
		return 0;
	if (FILES_EXTRA_CHECK(sock))
		return 0;
	sk = FILE_SOCK(sock);
	if (!sk || sk->__sk_common.skc_state != TCP_LISTEN || sk->sk_protocol != IPPROTO_TCP)
		return 0;
	/* The cookie as the socket holds it, not from bpf_get_socket_cookie: some kernel builds
	 * (6.18.44-fc-v1045) take sock->sk for untrusted and refuse it to any helper. 0 where no
	 * one has asked for it yet; user space then walks that namespace once, which sets it. */
	return emit_listener(ctx->meta->seq, sk, BPF_CORE_READ(sk, __sk_common.skc_cookie.counter), ctx->task);
}
