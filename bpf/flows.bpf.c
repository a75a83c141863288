// SPDX-License-Identifier: GPL-2.0
/* Flow engine, kernel side: per-socket counters from events, and a TCP
 * iterator that reports every socket's tcp_sock state once per poll.
 *
 * Values the kernel already keeps (cwnd, bytes, retransmissions, ...) are read
 * from tcp_sock by the iterator, so they are exactly what TCP_INFO reports.
 * Only what the kernel does not keep is counted here from events: bytes moved
 * by read/write calls, RTT samples, fast-recovery entries, the send-queue peak
 * and the establishment time. Those live in `counters`, socket-local storage.
 * Kernel constants (TCP_ESTABLISHED, TCP_CA_Recovery, ...) come from vmlinux.h.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "flows.h"

char LICENSE[] SEC("license") = "GPL";

#define AF_INET 2
#define AF_INET6 10
#define IPPROTO_TCP 6
#define SOL_TCP 6
#define MSG_PEEK 2
#define TCP_BPF_SOCK_OPS_CB_FLAGS_OPT 1008


/* Kernel builds of one version differ in what their verifier accepts (one refuses
 * bpf_skc_to_tcp_sock() on sock->sk reached from a file). Tests build variants of this
 * file that redefine these two to an untrusted pointer (tests/kernel/bpf/), so every
 * kernel exercises the loader's per-program fallbacks. */
#ifndef FILE_SOCK
#define FILE_SOCK(sock) ((sock)->sk)
#endif
#ifndef SETSOCKOPT_SOCK
#define SETSOCKOPT_SOCK(tp) (tp)
#endif

/* Whether the iterator turns on RTT callbacks for sockets that existed before
 * us (bpf_setsockopt TCP_BPF_SOCK_OPS_CB_FLAGS); set by the loader. */
const volatile bool hook_existing_rtt = false;

/* Inode number of tcptop's own network namespace, set by the loader. */
const volatile __u32 host_netns = 0;

/* Bumped by user space to have every socket's full record sent again
 * (e.g. after it lost track of a flow); part of each record, so a new value
 * makes every record differ from the last one sent. */
__u32 full_epoch = 0;

/* Event counters live in the socket itself (socket-local storage): one lookup
 * through sk->sk_bpf_storage instead of a hash of the cookie on every event,
 * and the kernel frees them with the socket, so nothing can leak or go stale.
 * Bounded by the number of sockets; a failed allocation (socket option memory
 * exhausted) is counted in STAT_COUNTERS_FULL and shows as REC_NO_COUNTERS. */
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct flow_counters);
} counters SEC(".maps");

/* Final records of destroyed sockets, drained by user space every poll. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, struct flow_record);
} closed SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, STAT_MAX);
	__type(key, enum tcptop_stat);
	__type(value, __u64);
} stats SEC(".maps");

/* The record last written for each socket, to send only changes (see SAME_SIZE).
 * Socket-local, so it goes away with the socket and needs no bound. */
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct flow_record);
} last_sent SEC(".maps");

/* Scratch for building a record: too large for the 512-byte stack with the rest. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct flow_record);
} scratch SEC(".maps");

static __always_inline void stat_inc(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&stats, &idx);

	if (v)
		*v += 1;
}

/* Hot paths read typed tp_btf pointers directly (CO-RE relocated loads), which
 * costs far less than a bpf_probe_read_kernel() call per field. */
static __always_inline bool is_tcp(struct sock *sk)
{
	__u16 family = sk->__sk_common.skc_family;

	if (family != AF_INET && family != AF_INET6)
		return false;
	return sk->sk_protocol == IPPROTO_TCP && sk->sk_type == 1 /* SOCK_STREAM */;
}

/* The socket's counters, created on first use. NULL when they cannot be allocated. */
static __always_inline struct flow_counters *counters_of(void *sk)
{
	struct flow_counters *c;

	c = bpf_sk_storage_get(&counters, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!c)
		stat_inc(STAT_COUNTERS_FULL);
	return c;
}

static __always_inline void note_caller(struct flow_counters *c)
{
	__u64 id = bpf_get_current_pid_tgid();

	if (c->pid != (__u32)(id >> 32)) {
		c->pid = id >> 32;
		bpf_get_current_comm(c->comm, sizeof(c->comm));
	}
}


SEC("tp_btf/sock_send_length")
int BPF_PROG(tcptop_send, struct sock *sk, int ret, int flags)
{
	struct flow_counters *c;
	struct tcp_sock *tp;
	__u32 q;

	if (ret <= 0 || !is_tcp(sk))
		return 0;
	c = counters_of(sk);
	if (!c)
		return 0;
	__sync_fetch_and_add(&c->write_bytes, ret);
	note_caller(c);
	/* The send queue peaks when a send call returns (only sends grow it). */
	tp = bpf_skc_to_tcp_sock(sk);
	if (!tp)
		return 0;
	q = tp->write_seq - tp->snd_una;
	if (q > c->app_wqueue_max && q < (1U << 31))
		c->app_wqueue_max = q;
	return 0;
}

SEC("tp_btf/sock_recv_length")
int BPF_PROG(tcptop_recv, struct sock *sk, int ret, int flags)
{
	struct flow_counters *c;

	if (ret <= 0 || (flags & MSG_PEEK) || !is_tcp(sk))
		return 0;
	c = counters_of(sk);
	if (!c)
		return 0;
	__sync_fetch_and_add(&c->read_bytes, ret);
	note_caller(c);
	return 0;
}

SEC("tp_btf/tcp_cong_state_set")
int BPF_PROG(tcptop_cong, struct sock *sk, const u8 ca_state)
{
	struct inet_connection_sock *icsk = (struct inet_connection_sock *)sk;
	struct flow_counters *c;
	__u8 old;

	if (ca_state != TCP_CA_Recovery)
		return 0;
	/* The tracepoint fires before the new state is stored. */
	old = BPF_CORE_READ_BITFIELD_PROBED(icsk, icsk_ca_state);
	if (old == TCP_CA_Recovery)
		return 0;
	c = counters_of(sk);
	if (c)
		__sync_fetch_and_add(&c->fast_retrans, 1);
	return 0;
}

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(tcptop_state, const struct sock *csk, const int oldstate, const int newstate)
{
	struct sock *sk = (struct sock *)csk;
	struct flow_counters *c;

	if (sk->sk_protocol != IPPROTO_TCP)
		return 0;
	if (newstate == TCP_SYN_SENT) {
		/* connect() runs in the owner's context: remember who. */
		c = counters_of(sk);
		if (c)
			note_caller(c);
		return 0;
	}
	if (newstate != TCP_ESTABLISHED ||
	    (oldstate != TCP_SYN_SENT && oldstate != TCP_SYN_RECV))
		return 0;
	c = counters_of(sk);
	if (!c)
		return 0;
	c->established_ns = bpf_ktime_get_ns();
	c->flags |= FLOW_SEEN_BIRTH;
	return 0;
}

/* Direct loads through the typed pointer (no helper call per field); the
 * kernel turns them into fault-safe loads, and CO-RE relocates each offset. */
static __always_inline void fill_record(struct flow_record *r, struct tcp_sock *tp, __u64 cookie,
					struct flow_counters *c)
{
	struct inet_connection_sock *icsk = &tp->inet_conn;
	struct sock *sk = &icsk->icsk_inet.sk;
	struct sock_common *skc = &sk->__sk_common;

	r->cookie = cookie;
	r->kind = KIND_FULL;
	r->epoch = full_epoch;
	r->now_ns = bpf_ktime_get_ns();
	r->family = skc->skc_family;
	r->state = skc->skc_state;
	/* inet_sport, not skc_num: unhashing a closing socket zeroes skc_num. */
	r->sport = __builtin_bswap16(icsk->icsk_inet.inet_sport);
	r->dport = __builtin_bswap16(skc->skc_dport);
	if (r->family == AF_INET) {
		*(__u32 *)r->saddr = skc->skc_rcv_saddr;
		*(__u32 *)r->daddr = skc->skc_daddr;
	} else {
		for (int i = 0; i < 4; i++) {
			((__u32 *)r->saddr)[i] = skc->skc_v6_rcv_saddr.in6_u.u6_addr32[i];
			((__u32 *)r->daddr)[i] = skc->skc_v6_daddr.in6_u.u6_addr32[i];
		}
	}
	r->netns = skc->skc_net.net->ns.inum;
	r->uid = sk->sk_uid.val;
	r->sock_ino = sk->sk_socket ? sk->sk_socket->file->f_inode->i_ino : 0;

	r->snd_cwnd = tp->snd_cwnd;
	r->snd_ssthresh = tp->snd_ssthresh;
	r->snd_wnd = tp->snd_wnd;
	r->rcv_wnd = tp->rcv_wnd;
	r->mss_cache = tp->mss_cache;
	r->srtt_us = tp->srtt_us >> 3;
	r->min_rtt_us = tp->rtt_min.s[0].v;
	r->packets_out = tp->packets_out;
	r->sacked_out = tp->sacked_out;
	r->lost_out = tp->lost_out;
	r->retrans_out = tp->retrans_out;
	r->total_retrans = tp->total_retrans;
	r->bytes_sent = tp->bytes_sent;
	r->bytes_received = tp->bytes_received;
	r->bytes_acked = tp->bytes_acked;
	r->write_seq = tp->write_seq;
	r->snd_una = tp->snd_una;
	r->ca_state = BPF_CORE_READ_BITFIELD(icsk, icsk_ca_state);
	r->flags = 0;
	if (bpf_core_field_exists(tp->total_rto)) {
		r->total_rto = tp->total_rto;
		r->flags |= REC_HAS_TOTAL_RTO;
	} else {
		r->total_rto = 0;
	}
	if (c) {
		r->c = *c;
	} else {
		__builtin_memset(&r->c, 0, sizeof(r->c));
		r->flags |= REC_NO_COUNTERS;
	}
}

/* Equal in everything but the capture time. */
static __always_inline bool same_record(const struct flow_record *a, const struct flow_record *b)
{
	const __u64 *x = (const void *)a, *y = (const void *)b;
	const int now = offsetof(struct flow_record, now_ns) / 8;

#pragma unroll
	for (int i = 0; i < sizeof(*a) / 8; i++)
		if (i != now && x[i] != y[i])
			return false;
	return true;
}

/* Write one socket's record, or a short "unchanged" marker if it equals the last
 * one sent. `owner` (may be NULL) names a process holding the socket. */
static __always_inline int emit(struct seq_file *seq, struct tcp_sock *tp, bool may_setsockopt,
				struct task_struct *owner)
{
	struct flow_record *r, *last;
	struct flow_counters *c;
	__u32 zero = 0;
	__u64 cookie;

	r = bpf_map_lookup_elem(&scratch, &zero);
	if (!r)
		return 0;
	cookie = bpf_get_socket_cookie(tp);
	/* Every socket gets counters here, so a full map shows up as flows
	 * without them (REC_NO_COUNTERS), which user space can count exactly. */
	c = counters_of(tp);
	if (may_setsockopt && hook_existing_rtt && c && !(c->flags & FLOW_RTT_HOOKED)) {
		/* Sockets older than us never passed an ESTABLISHED callback; ask
		 * the kernel for their RTT callbacks now (kernels >= 6.13). */
		int cb = 1 /* RTO */ | 8 /* RTT */;

		if (!bpf_setsockopt(SETSOCKOPT_SOCK(tp), SOL_TCP, TCP_BPF_SOCK_OPS_CB_FLAGS_OPT, &cb, sizeof(cb)))
			c->flags |= FLOW_RTT_HOOKED;
	}
	fill_record(r, tp, cookie, c);
	if (owner && !r->c.pid) {
		r->c.pid = owner->tgid;
		__builtin_memcpy(r->c.comm, owner->comm, sizeof(r->c.comm));
	}
	stat_inc(STAT_ITER_SOCKETS);
	last = bpf_sk_storage_get(&last_sent, tp, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (last && last->kind == KIND_FULL && same_record(last, r)) {
		r->kind = KIND_SAME;
		bpf_seq_write(seq, r, SAME_SIZE);
		return 0;
	}
	/* A write that does not fit the seq_file buffer is dropped and this
	 * socket is shown again after a flush: remember only what was written. */
	if (bpf_seq_write(seq, r, sizeof(*r)) == 0 && last)
		*last = *r;
	return 0;
}

/* Every socket of the namespace that created the iterator (orphans included). */
SEC("iter/tcp")
int tcptop_iter(struct bpf_iter__tcp *ctx)
{
	struct sock_common *skc = ctx->sk_common;
	struct tcp_sock *tp;

	if (!skc)
		return 0;
	tp = bpf_skc_to_tcp_sock(skc);
	if (!tp) /* TIME_WAIT and request sockets carry no tcp_sock */
		return 0;
	if (tp->inet_conn.icsk_inet.sk.__sk_common.skc_state == TCP_LISTEN)
		return 0;
	return emit(ctx->meta->seq, tp, true, NULL);
}

/* TCP sockets of other namespaces, found through the processes that hold them.
 * The TCP iterator walks the whole connection hash table once per namespace
 * (~2 ms on a host with 262,144 buckets); walking file tables covers every
 * container at once, and names each socket's owner on the way. */
SEC("iter/task_file")
int tcptop_files(struct bpf_iter__task_file *ctx)
{
	struct file *file = ctx->file;
	struct tcp_sock *tp;
	struct socket *sock;
	struct sock *sk;

	if (!file || !ctx->task)
		return 0;
	sock = bpf_sock_from_file(file);
	if (!sock)
		return 0;
	sk = FILE_SOCK(sock);
	if (!sk || sk->__sk_common.skc_net.net->ns.inum == host_netns)
		return 0; /* the TCP iterator covers our own namespace */
	tp = bpf_skc_to_tcp_sock(sk);
	if (!tp || tp->inet_conn.icsk_inet.sk.__sk_common.skc_state == TCP_LISTEN)
		return 0;
	return emit(ctx->meta->seq, tp, false, ctx->task);
}

SEC("tp_btf/tcp_destroy_sock")
int BPF_PROG(tcptop_destroy, struct sock *sk)
{
	struct flow_counters *c;
	struct tcp_sock *tp;
	struct flow_record *r;
	__u32 zero = 0;
	__u64 cookie;

	if (!is_tcp(sk))
		return 0;
	cookie = bpf_get_socket_cookie(sk);
	c = bpf_sk_storage_get(&counters, sk, 0, 0);
	/* Keep only sockets that were connections: tracked by us, or with an RTT. */
	tp = bpf_skc_to_tcp_sock(sk);
	if (!tp || (!c && tp->srtt_us == 0))
		return 0;
	r = bpf_map_lookup_elem(&scratch, &zero);
	tp = bpf_skc_to_tcp_sock(sk);
	if (!r || !tp)
		return 0;
	fill_record(r, tp, cookie, c);
	r->state = TCP_CLOSE;
	r->flags |= REC_CLOSED;
	if (bpf_map_update_elem(&closed, &cookie, r, BPF_ANY))
		stat_inc(STAT_CLOSED_FULL);
	return 0;
}

SEC("sockops")
int tcptop_sockops(struct bpf_sock_ops *skops)
{
	struct bpf_sock *sk = skops->sk;
	struct flow_counters *c;

	if (!sk)
		return 1;
	switch (skops->op) {
	case BPF_SOCK_OPS_TCP_CONNECT_CB: /* active opens: catch the SYN-ACK's sample too */
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
	case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB:
		bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags |
					  BPF_SOCK_OPS_RTT_CB_FLAG | BPF_SOCK_OPS_RTO_CB_FLAG);
		c = counters_of(sk);
		if (c)
			c->flags |= FLOW_RTT_HOOKED;
		return 1;
	case BPF_SOCK_OPS_RTT_CB:
		c = counters_of(sk);
		if (!c)
			return 1;
		/* args[0] is the sample (mrtt, us) the estimator just took. */
		__sync_fetch_and_add(&c->rtt_samples, 1);
		__sync_fetch_and_add(&c->rtt_sum_us, skops->args[0]);
		return 1;
	case BPF_SOCK_OPS_RTO_CB:
		c = counters_of(sk);
		if (c)
			__sync_fetch_and_add(&c->rto_events, 1);
		return 1;
	}
	return 1;
}
