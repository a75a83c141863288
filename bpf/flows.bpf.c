// SPDX-License-Identifier: GPL-2.0
/* Flow engine, kernel side: what only events can tell, kept per socket, and three
 * ways to read a socket's tcp_sock when user space polls.
 *
 * Values the kernel already keeps are read when user space polls, not counted per
 * packet: bytes moved (bytes_sent/received), bytes the application wrote or read
 * (write_seq and copied_seq against the sequence number of the first data byte),
 * cwnd, windows, retransmissions, timeouts. Only what the kernel does not keep is
 * counted from events, into socket-local storage (`counters`): every RTT sample the
 * estimator takes and the send-queue peak (tcp_probe, once per incoming segment,
 * before it is processed), fast-recovery entries, establishment time and role, the
 * process that connected, and final values before the kernel resets them.
 *
 * A poll reads only sockets that can have changed: the hooks send one notice per
 * socket per poll generation (`notices` ring), user space looks those sockets up by
 * their 4-tuple (`tcptop_lookup`, run with BPF_PROG_TEST_RUN) together with the ones
 * that were not quiescent at the previous read, and the TCP iterator walks a bounded
 * slice of the table per poll as a safety net (whole-table walks cost ~0.6 us per
 * socket here). Every reader sends a record only when it differs from the last one
 * sent (a digest kept per socket). Final records go through the `closed` ring.
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
#define SOCK_STREAM 1
#define TCPHDR_ACK 0x10
#define S_IFMT 00170000
#define S_IFSOCK 0140000
#define TCP_BPF_SOCK_OPS_CB_FLAGS_OPT 1008
#define GOT_MAX 8192

/* Kernel builds of one version differ in what their verifier accepts. Tests build
 * variants of this file that redefine these to something a verifier refuses
 * (tests/kernel/bpf/), so every kernel exercises the loader's per-program fallbacks. */
#ifndef FILES_EXTRA_CHECK
#define FILES_EXTRA_CHECK(sock) 0
#endif
#ifndef FILE_SK
#define FILE_SK(sock) BPF_CORE_READ(sock, sk)
#endif
#ifndef LOOKUP_EXTRA_CHECK
#define LOOKUP_EXTRA_CHECK(w) 0
#endif
#ifndef SETSOCKOPT_SOCK
#define SETSOCKOPT_SOCK(tp) (tp)
#endif

/* Whether the iterator turns on RTO callbacks for sockets that existed before us
 * (bpf_setsockopt TCP_BPF_SOCK_OPS_CB_FLAGS, kernels >= 6.13); set by the loader. */
const volatile bool hook_existing_rto = false;

extern int CONFIG_HZ __kconfig __weak;
/* A read-only typed view of a pointer, free (the verifier inlines it); kernels >= 6.2. */
extern void *bpf_rdonly_cast(const void *obj, __u32 btf_id) __ksym __weak;

/* Shared with user space through the mmap-ed .bss. */
struct flow_ctl ctl = {};

/* Types user space mirrors that no map is typed with: pointers to them put them in BTF. */
struct flow_notice *btf_flow_notice __attribute__((unused));
struct flow_holder *btf_flow_holder __attribute__((unused));

/* Event state lives in the socket itself (socket-local storage): one lookup through
 * sk->sk_bpf_storage on every event, freed with the socket, nothing to evict. A failed
 * allocation is counted in STAT_COUNTERS_FULL and shows as REC_NO_COUNTERS. */
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct flow_counters);
} counters SEC(".maps");

/* Final records, drained every poll; sized by the loader from --max-closed. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 24);
} closed SEC(".maps");

/* Sockets to look at this poll, processes that got sockets or changed; sized by the loader. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 22);
} notices SEC(".maps");

/* Where a record goes when its ring refuses it (see reserve()): rings of their own, with
 * their own locks, drained with the main ones. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 18);
} closed_rescue SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 18);
} notices_rescue SEC(".maps");

/* Sockets user space asks the lookup program about, and the changed ones it found. Mapped
 * into user space, which writes and reads them in place: a busy poll asks about thousands,
 * and batch calls cost ~1 ms each way per 2,000. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, GOT_MAX);
	__type(key, __u32);
	__type(value, struct flow_want);
} wants SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, GOT_MAX);
	__type(key, __u32);
	__type(value, struct flow_record);
} got SEC(".maps");

/* The TIME_WAIT ends the walk last sent (cookie -> substate and expiry): a kernel-held end
 * has no socket storage, and an unchanged one need not cross to user space at every pass. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 262144);
	__type(key, __u64);
	__type(value, __u64);
} tw_sent SEC(".maps");

/* Cookies whose holders the task_file walk reports. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, __u8);
} owner_wanted SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, STAT_MAX);
	__type(key, enum tcptop_stat);
	__type(value, __u64);
} stats SEC(".maps");

/* Scratch for building a record: too large for the 512-byte stack with the rest. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct flow_record);
} scratch SEC(".maps");

/* Kernels before 6.13 keep the file's reference count in f_count. */
struct file___f_count {
	atomic_long_t f_count;
} __attribute__((preserve_access_index));

static __always_inline void stat_inc(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&stats, &idx);

	if (v)
		*v += 1;
}

/* A ring's record. A reservation can be refused with the ring far from full: a sustained
 * churn of 10,000 connections a second lost one final record and 2-4 notices a minute with
 * both rings nearly empty, and a second try at once was refused too (the ring's lock: on
 * kernels where it is a resilient spinlock, a waiter gives up after a timeout or on a
 * suspected deadlock, and on a VM the holder's vCPU can be stalled). The record goes to a
 * rescue ring instead, whose lock is another; user space drains both. */
static __always_inline void *reserve(void *ring, void *rescue, __u64 size)
{
	void *r = bpf_ringbuf_reserve(ring, size, 0);

	if (!r) {
		r = bpf_ringbuf_reserve(rescue, size, 0);
		if (r)
			stat_inc(STAT_RESERVE_RESCUED);
	}
	return r;
}

static __always_inline bool before(__u32 a, __u32 b)
{
	return (__s32)(a - b) < 0;
}

/* The socket's counters; created on first use when `create`. NULL when absent. */
static __always_inline struct flow_counters *counters_of(void *sk, bool create)
{
	struct flow_counters *c;

	c = bpf_sk_storage_get(&counters, sk, 0, create ? BPF_SK_STORAGE_GET_F_CREATE : 0);
	if (!c && create)
		stat_inc(STAT_COUNTERS_FULL);
	return c;
}

static __always_inline __u32 rtt_bucket(__u32 us)
{
	__u32 b = 0;

	/* floor(log2(us)) by halving; bucket 0 takes 0 and 1 */
	if (us >= 1 << 16) { b += 16; us >>= 16; }
	if (us >= 1 << 8) { b += 8; us >>= 8; }
	if (us >= 1 << 4) { b += 4; us >>= 4; }
	if (us >= 1 << 2) { b += 2; us >>= 2; }
	if (us >= 1 << 1) { b += 1; }
	return b < RTT_BUCKETS ? b : RTT_BUCKETS - 1;
}

/* The sample the estimator took since the last settled segment, from its state now, or
 * -1 if it took none. tcp_rtt_estimator() is exact integer arithmetic: with srtt_us
 * scaled by 8, one sample m moves it to srtt + m - srtt/8 (to m*8 from 0), so m follows
 * from the two values. A sample equal to srtt/8 leaves srtt as it was (and mdev too once
 * it is below 4), which is why an ACK that acknowledged new data (FLOW_RTT_PENDING)
 * also counts: with timestamps, the kernel samples every such ACK. */
static __always_inline __s64 pending_sample(const struct flow_counters *c, __u32 srtt, __u32 mdev)
{
	if (!(c->flags & FLOW_RTT_SEEDED) || srtt == 0)
		return -1; /* nothing to compare with, or the estimator was reset (no timestamps) */
	if (c->last_srtt == 0)
		return srtt >> 3;
	if (srtt != c->last_srtt || mdev != c->last_mdev || (c->flags & FLOW_RTT_PENDING))
		return (__s64)srtt - c->last_srtt + (c->last_srtt >> 3);
	return -1;
}

static __always_inline void add_sample(struct flow_counters *c, __s64 m)
{
	__u32 b;

	if (m < 0)
		return;
	c->rtt_samples++;
	c->rtt_sum_us += m;
	b = rtt_bucket(m > 0xffffffff ? 0xffffffff : (__u32)m);
	if (b < RTT_BUCKETS)
		c->rtt_hist[b]++;
}

/* Count the pending sample into the counters and take the estimator's state as the new
 * reference. Only where the socket lock is held (hooks), never from the readers. */
static __always_inline void settle(struct flow_counters *c, __u32 srtt, __u32 mdev)
{
	add_sample(c, pending_sample(c, srtt, mdev));
	c->last_srtt = srtt;
	c->last_mdev = mdev;
	c->flags = (c->flags | FLOW_RTT_SEEDED) & ~FLOW_RTT_PENDING;
}

static __always_inline void note_caller(struct flow_counters *c)
{
	__u64 id = bpf_get_current_pid_tgid();

	c->pid = id >> 32;
	bpf_get_current_comm(c->comm, sizeof(c->comm));
}

static __always_inline bool fin_sent(__u8 state)
{
	/* States entered only after our FIN took its sequence number. */
	return state == TCP_FIN_WAIT1 || state == TCP_FIN_WAIT2 || state == TCP_CLOSING ||
	       state == TCP_LAST_ACK || state == TCP_TIME_WAIT;
}

/* The peer's FIN counts in rcv_nxt, and in copied_seq once read() returned 0. */
static __always_inline __u32 fin_consumed(struct tcp_sock *tp)
{
	struct sock *sk = &tp->inet_conn.icsk_inet.sk;

	return (sk->__sk_common.skc_flags & (1UL << SOCK_DONE)) && tp->copied_seq == tp->rcv_nxt;
}

/* Sequence space the application has used, in 64 bits (the sequence numbers wrap every
 * 4 GiB): bytes_acked plus what is queued and unacknowledged, which counts the SYN of the
 * end that connected and our FIN once queued; and bytes_received less what is queued
 * unread, which counts the peer's FIN (not its SYN) from when it arrived. */
static __always_inline __u64 write_total(struct tcp_sock *tp)
{
	return tp->bytes_acked + (__u32)(tp->write_seq - tp->snd_una);
}

static __always_inline __u64 read_total(struct tcp_sock *tp)
{
	return tp->bytes_received - (__u32)(tp->rcv_nxt - tp->copied_seq);
}

/* Where write_bytes and read_bytes start: seen from its birth, at the first data byte
 * (after the SYN of the end that connected); a connection older than us, from when we
 * first see it. */
static __always_inline void set_bases(struct flow_counters *c, struct tcp_sock *tp, bool birth, bool client)
{
	__u8 state = tp->inet_conn.icsk_inet.sk.__sk_common.skc_state;

	if (birth) {
		c->write_base = client ? 1 : 0;
		c->read_base = 0;
	} else {
		c->write_base = write_total(tp) - fin_sent(state);
		c->read_base = read_total(tp) - fin_consumed(tp);
	}
	c->flags |= FLOW_BASES;
}

static __always_inline __u32 file_refs(struct sock *sk)
{
	struct socket *sock = sk->sk_socket;
	struct file *file;

	if (!sock)
		return 0;
	file = sock->file;
	if (!file)
		return 0;
	if (bpf_core_field_exists(file->f_ref))
		return file->f_ref.refcnt.counter + 1; /* file_ref_t keeps references - 1 */
	return ((struct file___f_count *)file)->f_count.counter;
}

static __always_inline void fill_addrs(struct flow_record *r, struct sock_common *skc, __u16 sport)
{
	r->family = skc->skc_family;
	r->sport = sport;
	r->dport = __builtin_bswap16(skc->skc_dport);
	if (r->family == AF_INET) {
		*(__u32 *)r->saddr = skc->skc_rcv_saddr;
		*(__u32 *)r->daddr = skc->skc_daddr;
		for (int i = 1; i < 4; i++) {
			((__u32 *)r->saddr)[i] = 0;
			((__u32 *)r->daddr)[i] = 0;
		}
	} else {
		for (int i = 0; i < 4; i++) {
			((__u32 *)r->saddr)[i] = skc->skc_v6_rcv_saddr.in6_u.u6_addr32[i];
			((__u32 *)r->daddr)[i] = skc->skc_v6_daddr.in6_u.u6_addr32[i];
		}
		/* dual-stack socket talking IPv4: hashed (and looked up) as IPv4 */
		if (skc->skc_v6_daddr.in6_u.u6_addr32[0] == 0 && skc->skc_v6_daddr.in6_u.u6_addr32[1] == 0 &&
		    skc->skc_v6_daddr.in6_u.u6_addr32[2] == __builtin_bswap32(0xffff))
			r->flags |= REC_LOOKUP_V4;
	}
	r->netns = skc->skc_net.net->ns.inum;
}

/* One full socket's record. `state` is the state to report (for a final record, the one
 * the socket is leaving); `purged`: the retransmit queue is gone, use the saved
 * packets_out. Event counters include a sample the estimator took since the last
 * settled segment, without settling it. */
static __always_inline void fill_record(struct flow_record *r, struct tcp_sock *tp, __u64 cookie,
					struct flow_counters *c, __u8 state, enum record_kind kind)
{
	struct inet_connection_sock *icsk = &tp->inet_conn;
	struct sock *sk = &icsk->icsk_inet.sk;
	struct sock_common *skc = &sk->__sk_common;
	__u32 packets_out, saved_packets_out = 0, q, write_seq, flight, srtt, mdev;
	bool purged = false;
	__s64 m;

	if (c) {
		purged = c->flags & FLOW_PURGED;
		saved_packets_out = c->saved_packets_out;
		/* keep it a value: clang would otherwise merge the two loads below into one
		 * load through a pointer to either object, which the verifier refuses */
		barrier_var(saved_packets_out);
	}

	r->cookie = cookie;
	r->kind = kind;
	r->flags = 0;
	r->now_ns = bpf_ktime_get_ns();
	r->state = state;
	fill_addrs(r, skc, __builtin_bswap16(icsk->icsk_inet.inet_sport));
	r->sock_ino = sk->sk_socket ? sk->sk_socket->file->f_inode->i_ino : 0;
	r->file_refs = file_refs(sk);
	r->tw_left_ms = 0;

	r->snd_cwnd = tp->snd_cwnd;
	r->snd_ssthresh = tp->snd_ssthresh;
	r->snd_wnd = tp->snd_wnd;
	r->rcv_wnd = tp->rcv_wnd;
	r->mss_cache = tp->mss_cache;
	srtt = tp->srtt_us;
	mdev = tp->mdev_us;
	r->srtt_us = srtt >> 3;
	r->min_rtt_us = tp->rtt_min.s[0].v;
	r->total_retrans = tp->total_retrans;
	r->bytes_sent = tp->bytes_sent;
	r->bytes_received = tp->bytes_received;
	r->ca_state = BPF_CORE_READ_BITFIELD(icsk, icsk_ca_state);

	packets_out = purged ? saved_packets_out : tp->packets_out;
	flight = packets_out - (tp->sacked_out + tp->lost_out) + tp->retrans_out;
	r->flight_size = (__s32)flight < 0 ? 0 : flight;

	write_seq = tp->write_seq;
	/* as SIOCOUTQ reports it: the SYN is not application data */
	q = (state == TCP_SYN_SENT || state == TCP_SYN_RECV) ? 0 : write_seq - tp->snd_una;
	r->app_wqueue = q < (1U << 31) ? q : 0;

	if (bpf_core_field_exists(tp->total_rto)) {
		r->timeouts = tp->total_rto;
		r->flags |= REC_HAS_TOTAL_RTO;
	} else {
		r->timeouts = c ? c->rto_events : 0;
	}
	if (!c) {
		r->flags |= REC_NO_COUNTERS;
		r->read_bytes = r->write_bytes = r->rtt_sum_us = r->established_ns = 0;
		r->pid = r->rtt_samples = r->fast_retrans = 0;
		r->app_wqueue_max = r->app_wqueue;
		for (int i = 0; i < RTT_BUCKETS; i++)
			r->rtt_hist[i] = 0;
		for (int i = 0; i < TASK_COMM_LEN; i++)
			r->comm[i] = 0;
		return;
	}
	r->write_bytes = write_total(tp) - c->write_base - fin_sent(state);
	r->read_bytes = read_total(tp) - c->read_base - fin_consumed(tp);
	r->app_wqueue_max = c->app_wqueue_max > r->app_wqueue ? c->app_wqueue_max : r->app_wqueue;
	r->fast_retrans = c->fast_retrans;
	r->established_ns = c->established_ns;
	r->pid = c->pid;
	__builtin_memcpy(r->comm, c->comm, sizeof(r->comm));
	r->rtt_samples = c->rtt_samples;
	r->rtt_sum_us = c->rtt_sum_us;
	for (int i = 0; i < RTT_BUCKETS; i++)
		r->rtt_hist[i] = c->rtt_hist[i];
	m = pending_sample(c, srtt, mdev);
	if (m >= 0) {
		__u32 b = rtt_bucket(m > 0xffffffff ? 0xffffffff : (__u32)m);

		r->rtt_samples++;
		r->rtt_sum_us += m;
		if (b < RTT_BUCKETS)
			r->rtt_hist[b]++;
	}
	if (c->flags & FLOW_SEEN_BIRTH)
		r->flags |= REC_SEEN_BIRTH;
	if (c->flags & FLOW_CLIENT)
		r->flags |= REC_CLIENT;
	if (c->flags & FLOW_SERVER)
		r->flags |= REC_SERVER;
	if (c->flags & FLOW_RESET_RCVD)
		r->flags |= REC_RESET_RCVD;
	if (c->flags & FLOW_TIMED_OUT)
		r->flags |= REC_TIMED_OUT;
}

/* Nothing queued, unread, in flight or due: such a socket changes only through an event
 * that sends a notice (an incoming segment, a state change), so it need not be read
 * again until one does. Only ESTABLISHED qualifies: segments in other states bypass
 * tcp_probe. */
static __always_inline bool quiescent(struct tcp_sock *tp)
{
	struct inet_connection_sock *icsk = &tp->inet_conn;

	return icsk->icsk_inet.sk.__sk_common.skc_state == TCP_ESTABLISHED &&
	       tp->copied_seq == tp->rcv_nxt && tp->write_seq == tp->snd_nxt && tp->snd_una == tp->snd_nxt &&
	       !(BPF_CORE_READ_BITFIELD(icsk, icsk_ack.pending) & ICSK_ACK_TIMER);
}

/* A digest of everything in a record but its capture time, and of the epoch: equal
 * digests mean user space already has this record. */
static __always_inline __u64 digest_of(const struct flow_record *r)
{
	const __u64 *w = (const void *)r;
	const int now = offsetof(struct flow_record, now_ns) / 8;
	__u64 h = 0xcbf29ce484222325ULL ^ ctl.epoch;

#pragma unroll
	for (int i = 0; i < sizeof(*r) / 8; i++) {
		if (i == now)
			continue;
		h = (h ^ w[i]) * 0x100000001b3ULL;
	}
	return h | 1; /* never 0, which means "nothing sent" */
}

/* What moves whenever anything in a record can: a segment in or out (ACKs, data, window
 * updates, retransmissions, probes), the application writing or reading, a state change,
 * the socket losing its file. Equal to the value when the last record was sent means the
 * record is the same, without building it (a walk over idle sockets costs little more than
 * the kernel's own iteration). Not covered: a setsockopt() that changes the MSS alone. */
static __always_inline __u64 activity_of(struct tcp_sock *tp)
{
	struct sock *sk = &tp->inet_conn.icsk_inet.sk;
	__u64 a = ((__u64)tp->segs_in << 32 | tp->segs_out) ^ ((__u64)tp->write_seq << 32 | tp->copied_seq);

	return (a ^ ((__u64)sk->__sk_common.skc_state << 8 | (sk->sk_socket ? 1 : 0)) ^ ((__u64)ctl.epoch << 40)) | 1;
}

/* Fill a live socket's record; return true if user space does not have it yet (and, when
 * `commit`, remember it as sent). */
static __always_inline bool read_live(struct flow_record *r, struct tcp_sock *tp, __u64 cookie, bool commit,
				      bool may_hook)
{
	struct sock *sk = &tp->inet_conn.icsk_inet.sk;
	struct flow_counters *c = counters_of(tp, true);
	__u64 d;

	if (c && !(c->flags & FLOW_BASES))
		set_bases(c, tp, false, false);
	if (c && !ctl.emit_all && c->digest && c->activity == activity_of(tp))
		return false;
	if (may_hook && hook_existing_rto && c && !(c->flags & FLOW_RTO_HOOKED)) {
		/* Sockets older than us never passed an ESTABLISHED callback; ask the kernel
		 * for their RTO callbacks now (kernels >= 6.13). The option replaces the
		 * socket's whole flag set: keep what other sock_ops programs asked for. */
		int cb = tp->bpf_sock_ops_cb_flags;

		if (cb & BPF_SOCK_OPS_RTO_CB_FLAG) {
			c->flags |= FLOW_RTO_HOOKED;
		} else {
			cb |= BPF_SOCK_OPS_RTO_CB_FLAG;
			if (!bpf_setsockopt(SETSOCKOPT_SOCK(tp), SOL_TCP, TCP_BPF_SOCK_OPS_CB_FLAGS_OPT, &cb, sizeof(cb)))
				c->flags |= FLOW_RTO_HOOKED;
		}
	}
	fill_record(r, tp, cookie, c, sk->__sk_common.skc_state, KIND_LIVE);
	if (quiescent(tp))
		r->flags |= REC_QUIESCENT;
	d = digest_of(r);
	if (c && c->digest == d && !ctl.emit_all) {
		c->activity = activity_of(tp);
		return false;
	}
	if (c && commit) {
		c->digest = d;
		c->activity = activity_of(tp);
	}
	return true;
}

static __always_inline void fill_tw(struct flow_record *r, struct tcp_timewait_sock *ttw, __u64 cookie)
{
	struct inet_timewait_sock *tw = &ttw->tw_sk;
	struct sock_common *skc = &tw->__tw_common;
	__u64 left = tw->tw_timer.expires - bpf_jiffies64();
	__u32 hz = CONFIG_HZ ? CONFIG_HZ : ctl.hz;

	__builtin_memset(r, 0, sizeof(*r));
	r->cookie = cookie;
	r->kind = KIND_TW;
	r->now_ns = bpf_ktime_get_ns();
	r->state = tw->tw_substate;
	fill_addrs(r, skc, __builtin_bswap16(tw->tw_sport));
	if ((__s64)left < 0)
		left = 0;
	r->tw_left_ms = hz ? left * 1000 / hz : (__u32)left;
}

static __always_inline void notice_socket(struct sock *sk, __u64 cookie)
{
	struct flow_notice *n = reserve(&notices, &notices_rescue, sizeof(*n));

	if (!n) {
		stat_inc(STAT_NOTICES_LOST);
		return;
	}
	n->kind = NOTE_DIRTY;
	n->cookie = cookie;
	n->pid = 0;
	n->comm[0] = 0;
	n->family = sk->__sk_common.skc_family;
	n->sport = sk->__sk_common.skc_num; /* host order; zeroed only when the socket is unhashed */
	n->dport = __builtin_bswap16(sk->__sk_common.skc_dport);
	n->lookup_v4 = 0;
	if (n->family == AF_INET) {
		*(__u32 *)n->saddr = sk->__sk_common.skc_rcv_saddr;
		*(__u32 *)n->daddr = sk->__sk_common.skc_daddr;
	} else {
		for (int i = 0; i < 4; i++) {
			((__u32 *)n->saddr)[i] = sk->__sk_common.skc_v6_rcv_saddr.in6_u.u6_addr32[i];
			((__u32 *)n->daddr)[i] = sk->__sk_common.skc_v6_daddr.in6_u.u6_addr32[i];
		}
		n->lookup_v4 = sk->__sk_common.skc_v6_daddr.in6_u.u6_addr32[0] == 0 &&
			       sk->__sk_common.skc_v6_daddr.in6_u.u6_addr32[1] == 0 &&
			       sk->__sk_common.skc_v6_daddr.in6_u.u6_addr32[2] == __builtin_bswap32(0xffff);
	}
	n->netns = sk->__sk_common.skc_net.net->ns.inum;
	bpf_ringbuf_submit(n, 0);
}

/* First event of a socket in this poll generation: tell user space to read it. */
static __always_inline void mark_dirty(struct sock *sk, struct flow_counters *c)
{
	__u32 gen = ctl.gen;

	if (c->dirty_gen == gen)
		return;
	c->dirty_gen = gen;
	notice_socket(sk, bpf_get_socket_cookie(sk));
}

/* --- events ---------------------------------------------------------------------- */

/* Once per incoming segment of an ESTABLISHED socket, before the kernel processes it:
 * settle the RTT sample the previous segment gave, note whether this one will give one,
 * take the send queue's peak (between two ACKs it only grows), and mark the socket.
 *
 * Where its time goes (bpf_stats on, redis GET -c 20, 2 runs per request; variants
 * alternated in one invocation with benchmarks/bpf_ab.py, 2026-12-01): an empty program
 * 62-75 ns a run (mostly the stats' own clock reads), the tcp_sock loads +~20 ns (lines
 * tcp_rcv_established reads right after: moved more than added), the storage lookup
 * +~35-45 ns, the rest ~15-40 ns. The lookup's cost is its three dependent loads
 * (sk->sk_bpf_storage, the cache slot, the data), not the helper: the same chain read
 * through bpf_rdonly_cast cost about as much (105 vs 113 ns). On a request-response
 * workload every segment acknowledges new data and so settles a sample, so no segment
 * can skip the writable lookup; creating the storage costs nothing once it exists. A
 * direct-mapped array slot found from the cookie would save ~13 ns a run (measured),
 * but live sockets collide in it and every reader would have to merge two homes of the
 * counters; a hash map keyed by the socket costs more than the storage.
 */
SEC("tp_btf/tcp_probe")
int BPF_PROG(tcptop_probe, struct sock *sk, const struct sk_buff *skb)
{
	struct tcp_skb_cb *cb = (struct tcp_skb_cb *)skb->cb;
	__u32 una, ack, q, srtt, mdev, nxt, wseq;
	struct flow_counters *c;
	struct tcp_sock *tp;

	/* This runs for every segment: every nanosecond counts. The fields are read through a
	 * free cast (tcp_probe fires only for TCP sockets) rather than bpf_skc_to_tcp_sock(),
	 * which costs ~25 ns here. */
	if (bpf_rdonly_cast)
		tp = bpf_rdonly_cast(sk, bpf_core_type_id_kernel(struct tcp_sock));
	else
		tp = bpf_skc_to_tcp_sock(sk);
	if (!tp)
		return 0;
	srtt = tp->srtt_us;
	mdev = tp->mdev_us;
	una = tp->snd_una;
	nxt = tp->snd_nxt;
	wseq = tp->write_seq;
	c = counters_of(sk, true);
	if (!c)
		return 0;
	settle(c, srtt, mdev);
	ack = cb->ack_seq;
	if ((cb->tcp_flags & TCPHDR_ACK) && before(una, ack) && !before(nxt, ack) &&
	    (tp->rx_opt.tstamp_ok || !tp->retrans_out))
		c->flags |= FLOW_RTT_PENDING;
	q = wseq - una;
	if (q > c->app_wqueue_max && q < (1U << 31))
		c->app_wqueue_max = q;
	mark_dirty(sk, c);
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
	c = counters_of(sk, true);
	if (c)
		c->fast_retrans++; /* under the socket lock */
	return 0;
}

/* An RST arrived: the kernel purges the retransmit queue before the socket closes. */
SEC("tp_btf/tcp_receive_reset")
int BPF_PROG(tcptop_reset, struct sock *sk)
{
	struct flow_counters *c = counters_of(sk, false);
	struct tcp_sock *tp;

	if (!c)
		return 0;
	tp = bpf_skc_to_tcp_sock(sk);
	if (!tp)
		return 0;
	c->saved_packets_out = tp->packets_out;
	c->flags |= FLOW_PURGED | FLOW_RESET_RCVD;
	return 0;
}

/* The final record, as the socket leaves `oldstate` for CLOSE: every path to the end
 * (FIN, RST sent or received, timeout, abort, orphan) passes here before
 * tcp_disconnect() or the release of the socket resets ports, addresses and counters. */
static __always_inline void final_record(struct sock *sk, int oldstate)
{
	struct flow_counters *c;
	struct flow_record *r;
	struct tcp_sock *tp;
	__u64 cookie;

	tp = bpf_skc_to_tcp_sock(sk);
	if (!tp)
		return;
	cookie = bpf_get_socket_cookie(sk);
	c = counters_of(sk, true);
	if (c) {
		settle(c, tp->srtt_us, tp->mdev_us);
		if (!(c->flags & FLOW_BASES))
			set_bases(c, tp, false, false);
	}
	r = reserve(&closed, &closed_rescue, sizeof(*r));
	if (!r) {
		stat_inc(STAT_CLOSED_LOST);
		return;
	}
	fill_record(r, tp, cookie, c, oldstate, KIND_CLOSED);
	bpf_ringbuf_submit(r, 0);
	if (!c)
		return;
	c->flags |= FLOW_CLOSED;
	/* A socket the application still holds can be read after it closed (a FIN or RST
	 * came in behind data): tcp_destroy_sock sends what it read then. */
	if (tp->copied_seq != tp->rcv_nxt && sk->sk_socket) {
		c->closed_copied_seq = tp->copied_seq;
		c->flags |= FLOW_READ_AFTER;
	}
}

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(tcptop_state, const struct sock *csk, const int oldstate, const int newstate)
{
	struct sock *sk = (struct sock *)csk;
	struct flow_counters *c;
	struct tcp_sock *tp;
	bool client;

	if (sk->sk_protocol != IPPROTO_TCP)
		return 0;
	switch (newstate) {
	case TCP_SYN_SENT:
		/* connect() runs in the caller's context: remember who (the 4-tuple is not
		 * complete yet, so no notice). */
		c = counters_of(sk, true);
		if (c)
			note_caller(c);
		return 0;
	case TCP_ESTABLISHED:
		if (oldstate != TCP_SYN_SENT && oldstate != TCP_SYN_RECV)
			return 0;
		tp = bpf_skc_to_tcp_sock(sk);
		c = counters_of(sk, true);
		if (!tp || !c)
			return 0;
		client = oldstate == TCP_SYN_SENT;
		c->established_ns = bpf_ktime_get_ns();
		c->flags |= FLOW_SEEN_BIRTH | (client ? FLOW_CLIENT : FLOW_SERVER);
		set_bases(c, tp, true, client);
		/* The handshake's sample, taken before this transition on both ends. */
		c->last_srtt = 0;
		c->last_mdev = tp->mdev_us;
		c->flags |= FLOW_RTT_SEEDED;
		settle(c, tp->srtt_us, tp->mdev_us);
		mark_dirty(sk, c);
		return 0;
	case TCP_CLOSE:
		if (oldstate == TCP_CLOSE || oldstate == TCP_LISTEN || oldstate == TCP_NEW_SYN_RECV)
			return 0;
		final_record(sk, oldstate);
		return 0;
	case TCP_LISTEN:
		return 0; /* a listener is not a connection (the failure engine reads listeners) */
	default:
		/* FIN_WAIT1, CLOSE_WAIT, LAST_ACK, FIN_WAIT2, CLOSING: read it this poll */
		c = counters_of(sk, true);
		if (c)
			mark_dirty(sk, c);
		return 0;
	}
}

/* A closed socket the application still held was read after its final record. */
SEC("tp_btf/tcp_destroy_sock")
int BPF_PROG(tcptop_destroy, struct sock *sk)
{
	struct flow_counters *c = counters_of(sk, false);
	struct flow_record *r;
	struct tcp_sock *tp;

	if (!c || !(c->flags & FLOW_READ_AFTER))
		return 0;
	tp = bpf_skc_to_tcp_sock(sk);
	/* tcp_disconnect() jumps copied_seq to rcv_nxt and clears the peer's port */
	if (!tp || tp->copied_seq == c->closed_copied_seq || sk->__sk_common.skc_dport == 0)
		return 0;
	r = reserve(&closed, &closed_rescue, sizeof(*r));
	if (!r) {
		stat_inc(STAT_CLOSED_LOST);
		return 0;
	}
	fill_record(r, tp, bpf_get_socket_cookie(sk), c, TCP_CLOSE, KIND_LATE);
	bpf_ringbuf_submit(r, 0);
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
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
	case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB:
		bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_RTO_CB_FLAG);
		c = counters_of(sk, true);
		if (c)
			c->flags |= FLOW_RTO_HOOKED;
		return 1;
	case BPF_SOCK_OPS_RTO_CB:
		c = counters_of(sk, true);
		if (!c)
			return 1;
		c->rto_events++;
		if (skops->args[2]) {
			/* expired: tcp_write_err() purges the retransmit queue next */
			c->saved_packets_out = skops->packets_out;
			c->flags |= FLOW_PURGED | FLOW_TIMED_OUT;
		}
		return 1;
	}
	return 1;
}

/* accept() gave a socket to the calling process: its owner, from the fd it returned. */
static __always_inline int note_accept(long fd)
{
	struct task_struct *task = (void *)bpf_get_current_task();
	struct flow_notice *n;
	struct socket *sock;
	struct file **fds;
	struct file *file;
	struct sock *sk;
	__u64 cookie;

	if (fd < 0 || fd >= BPF_CORE_READ(task, files, fdt, max_fds))
		return 0;
	fds = BPF_CORE_READ(task, files, fdt, fd);
	if (bpf_probe_read_kernel(&file, sizeof(file), &fds[fd]) || !file)
		return 0;
	if ((BPF_CORE_READ(file, f_inode, i_mode) & S_IFMT) != S_IFSOCK)
		return 0;
	sock = BPF_CORE_READ(file, private_data);
	sk = BPF_CORE_READ(sock, sk);
	if (!sk || BPF_CORE_READ(sk, sk_protocol) != IPPROTO_TCP)
		return 0;
	cookie = BPF_CORE_READ(sk, __sk_common.skc_cookie.counter);
	if (!cookie)
		return 0;
	n = reserve(&notices, &notices_rescue, sizeof(*n));
	if (!n) {
		stat_inc(STAT_NOTICES_LOST);
		return 0;
	}
	__builtin_memset(n, 0, sizeof(*n));
	n->kind = NOTE_OWNER;
	n->cookie = cookie;
	n->pid = bpf_get_current_pid_tgid() >> 32;
	bpf_get_current_comm(n->comm, sizeof(n->comm));
	bpf_ringbuf_submit(n, 0);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_accept4")
int tcptop_accept4(struct trace_event_raw_sys_exit *ctx)
{
	return note_accept(ctx->ret);
}

SEC("tracepoint/syscalls/sys_exit_accept")
int tcptop_accept(struct trace_event_raw_sys_exit *ctx)
{
	return note_accept(ctx->ret);
}

static __always_inline void notice_process(struct task_struct *task, enum notice_kind kind)
{
	struct flow_notice *n = reserve(&notices, &notices_rescue, sizeof(*n));

	if (!n) {
		stat_inc(STAT_NOTICES_LOST);
		return;
	}
	__builtin_memset(n, 0, sizeof(*n));
	n->kind = kind;
	n->pid = task->tgid;
	__builtin_memcpy(n->comm, task->comm, sizeof(n->comm));
	bpf_ringbuf_submit(n, 0);
}

/* exec() renames a process: its sockets' comm follows. */
SEC("tp_btf/sched_process_exec")
int BPF_PROG(tcptop_exec, struct task_struct *task, pid_t old_pid, struct linux_binprm *bprm)
{
	notice_process(task, NOTE_EXEC);
	return 0;
}

/* A new process shares its parent's sockets: one of the two may let go of them. */
SEC("tp_btf/sched_process_fork")
int BPF_PROG(tcptop_fork, struct task_struct *parent, struct task_struct *child)
{
	struct flow_notice *n;

	if (child->pid != child->tgid)
		return 0; /* a thread: same files, same process */
	n = reserve(&notices, &notices_rescue, sizeof(*n));
	if (!n) {
		stat_inc(STAT_NOTICES_LOST);
		return 0;
	}
	__builtin_memset(n, 0, sizeof(*n));
	n->kind = NOTE_FORK;
	n->pid = parent->tgid;
	n->cookie = child->tgid;
	bpf_ringbuf_submit(n, 0);
	return 0;
}

/* A process is gone: its sockets are closed, or held by another process now. */
SEC("tp_btf/sched_process_exit")
int BPF_PROG(tcptop_exit, struct task_struct *task, bool group_dead)
{
	if (group_dead)
		notice_process(task, NOTE_EXIT);
	return 0;
}

/* --- readers ----------------------------------------------------------------------- */

/* Every socket of the namespace that created the iterator, changed ones only (all with
 * ctl.emit_all), up to ctl.walk_budget sockets per read. */
SEC("iter/tcp")
int tcptop_iter(struct bpf_iter__tcp *ctx)
{
	struct sock_common *skc = ctx->sk_common;
	struct tcp_timewait_sock *tw;
	struct flow_record *r;
	struct tcp_sock *tp;
	__u64 cookie, key, *last;
	__u32 zero = 0;
	__u8 state;

	if (!skc)
		return 0;
	if (ctl.walk_seen >= ctl.walk_budget)
		return 1; /* this socket is shown again at the next read */
	ctl.walk_seen++;
	stat_inc(STAT_ITER_SOCKETS);
	r = bpf_map_lookup_elem(&scratch, &zero);
	if (!r)
		return 0;
	state = skc->skc_state;
	if (state == TCP_TIME_WAIT) {
		tw = bpf_skc_to_tcp_timewait_sock(skc);
		if (!tw)
			return 0;
		cookie = bpf_get_socket_cookie(skc);
		key = tw->tw_sk.tw_timer.expires ^ ((__u64)tw->tw_sk.tw_substate << 56) ^ ctl.epoch;
		last = bpf_map_lookup_elem(&tw_sent, &cookie);
		if (last && *last == key && !ctl.emit_all)
			return 0;
		fill_tw(r, tw, cookie);
		if (bpf_seq_write(ctx->meta->seq, r, sizeof(*r)) == 0)
			bpf_map_update_elem(&tw_sent, &cookie, &key, BPF_ANY);
		return 0;
	}
	if (state == TCP_LISTEN || state == TCP_NEW_SYN_RECV)
		return 0;
	tp = bpf_skc_to_tcp_sock(skc);
	if (!tp)
		return 0;
	if (!read_live(r, tp, bpf_get_socket_cookie(tp), false, true))
		return 0;
	/* A write that does not fit the seq_file buffer is dropped and this socket shown
	 * again after a flush: remember only what was written. */
	if (bpf_seq_write(ctx->meta->seq, r, sizeof(*r)) == 0) {
		struct flow_counters *c = counters_of(tp, false);

		if (c) {
			c->digest = digest_of(r);
			c->activity = activity_of(tp);
		}
	}
	return 0;
}

struct lookup_ctx {
	struct __sk_buff *skb;
};

static long lookup_one(__u32 i, struct lookup_ctx *lc)
{
	struct bpf_sock_tuple t = {};
	struct tcp_timewait_sock *tw;
	struct flow_record *r;
	struct bpf_sock *skc;
	struct flow_want *w;
	struct tcp_sock *tp;
	__u32 slot = ctl.n_got;
	__u32 size;
	__u64 cookie;

	w = bpf_map_lookup_elem(&wants, &i);
	if (!w || LOOKUP_EXTRA_CHECK(w))
		return 1;
	if (slot >= GOT_MAX) {
		stat_inc(STAT_GOT_FULL);
		return 1;
	}
	r = bpf_map_lookup_elem(&got, &slot);
	if (!r)
		return 1;
	/* the tuple as an incoming packet carries it: from the peer to us */
	if (w->lookup_v4) {
		t.ipv4.saddr = *(__u32 *)w->daddr;
		t.ipv4.daddr = *(__u32 *)w->saddr;
		t.ipv4.sport = __builtin_bswap16(w->dport);
		t.ipv4.dport = __builtin_bswap16(w->sport);
		size = sizeof(t.ipv4);
	} else {
		__builtin_memcpy(t.ipv6.saddr, w->daddr, 16);
		__builtin_memcpy(t.ipv6.daddr, w->saddr, 16);
		t.ipv6.sport = __builtin_bswap16(w->dport);
		t.ipv6.dport = __builtin_bswap16(w->sport);
		size = sizeof(t.ipv6);
	}
	skc = bpf_skc_lookup_tcp(lc->skb, &t, size, BPF_F_CURRENT_NETNS, 0);
	cookie = 0;
	if (skc) {
		tw = bpf_skc_to_tcp_timewait_sock(skc);
		if (tw) {
			cookie = tw->tw_sk.__tw_common.skc_cookie.counter;
			if (cookie == w->cookie) {
				fill_tw(r, tw, cookie);
				ctl.n_got = slot + 1;
				bpf_sk_release(skc);
				return 0;
			}
		}
		tp = bpf_skc_to_tcp_sock(skc);
		if (tp) {
			cookie = tp->inet_conn.icsk_inet.sk.__sk_common.skc_cookie.counter;
			if (cookie == w->cookie) {
				/* a listener (a notice from before it listened) is not a connection */
				if (tp->inet_conn.icsk_inet.sk.__sk_common.skc_state != TCP_LISTEN &&
				    read_live(r, tp, cookie, true, false))
					ctl.n_got = slot + 1;
				bpf_sk_release(skc);
				return 0;
			}
		}
		bpf_sk_release(skc);
	}
	/* closed (its final record is in the closed ring), or the tuple belongs to another socket now */
	__builtin_memset(r, 0, sizeof(*r));
	r->cookie = w->cookie;
	r->kind = KIND_GONE;
	ctl.n_got = slot + 1;
	return 0;
}

/* Run by user space (BPF_PROG_TEST_RUN on a dummy packet) inside each network namespace:
 * looks up ctl.n_wants sockets by their 4-tuple and writes changed ones to `got`. */
SEC("tc")
int tcptop_lookup(struct __sk_buff *skb)
{
	struct lookup_ctx lc = { .skb = skb };

	ctl.n_got = 0;
	bpf_loop(ctl.n_wants, lookup_one, &lc, 0);
	return 0;
}

/* Processes holding the sockets in `owner_wanted`, every namespace at once (ss -p's
 * question, without reading every /proc/PID/fd). The socket is read through its file
 * with plain probe reads: some kernel builds take sock->sk for untrusted here. */
SEC("iter/task_file")
int tcptop_files(struct bpf_iter__task_file *ctx)
{
	struct task_struct *task = ctx->task;
	struct file *file = ctx->file;
	struct flow_holder h;
	struct socket *sock;
	struct sock *sk;

	if (!file || !task)
		return 0;
	sock = bpf_sock_from_file(file);
	if (!sock)
		return 0;
	if (FILES_EXTRA_CHECK(sock))
		return 0;
	sk = FILE_SK(sock);
	if (!sk || BPF_CORE_READ(sk, sk_protocol) != IPPROTO_TCP)
		return 0;
	h.cookie = BPF_CORE_READ(sk, __sk_common.skc_cookie.counter);
	if (!ctl.files_all && (!h.cookie || !bpf_map_lookup_elem(&owner_wanted, &h.cookie)))
		return 0;
	h.ino = BPF_CORE_READ(file, f_inode, i_ino);
	h.pid = task->tgid;
	h.fd = ctx->fd;
	__builtin_memcpy(h.comm, task->comm, sizeof(h.comm));
	bpf_seq_write(ctx->meta->seq, &h, sizeof(h));
	return 0;
}
