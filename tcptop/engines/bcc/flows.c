// SPDX-License-Identifier: GPL-2.0
/* BCC flow engine, kernel side: what the kernel does not keep per connection.
 *
 * Compiled by BCC at start-up against whatever kernel headers the host has, which may
 * be another kernel's. So nothing here reads a kernel struct through a layout from
 * those headers: only UAPI contexts the verifier rewrites for the running kernel
 * (struct bpf_sock_ops), tracepoint arguments (BCC builds `args` from the running
 * kernel's tracefs format files) and kprobe arguments. Socket addresses are used as
 * opaque keys, never dereferenced.
 *
 * Everything the kernel keeps (cwnd, bytes, retransmissions, queues, ...) is read at
 * poll time by user space through sock_diag (INET_DIAG with tcp_info), together with
 * each socket's `counters` storage below, so only events are counted here.
 *
 * Options come as -D flags from the loader: MAX_CLOSED, MAX_ADDR_FLOWS, MAX_RTT_FLOWS, and
 * HAVE_TP_* for each tracepoint the running kernel has with the fields used here (BCC
 * compiles a tracepoint's `args` from its format, so a missing one must not be compiled).
 *
 * The one exception to "no kernel struct": the RTT samples' tcp_probe hook (rtt.c, appended
 * by the loader) reads tcp_sock, but only when the loader knows this kernel's offsets (its
 * BTF, or its own headers) and passes them in; otherwise that hook is not compiled at all.
 */
#include <uapi/linux/bpf.h>
#include <linux/ptrace.h> /* struct pt_regs: the kprobe context, an ABI (bpf_user_pt_regs_t) */

#define AF_INET 2
#define AF_INET6 10
#define TCP_CA_RECOVERY 3 /* enum tcp_ca_state; also UAPI as tcpi_ca_state's values */

/* The socket's address, stored so user space can tie address-keyed tracepoint events to the
 * socket. Storing a pointer as a number needs the privilege to leak kernel addresses, which
 * a verifier may refuse: the loader then compiles again with NO_SK_ADDR. Tests redefine
 * SK_ADDR to something every verifier refuses, to run that path on every kernel. */
#ifndef SK_ADDR
#define SK_ADDR(sk) ((u64)(sk))
#endif

/* flow_counters.flags */
#define FLOW_SEEN_BIRTH 1  /* established while we watched: counters cover its life */
#define FLOW_CLIENT 2      /* this end connected */
#define FLOW_SERVER 4      /* this end was accepted */

/* Per socket, in socket-local storage (freed with the socket, so nothing to evict
 * or leak); created by the sock_ops program when a connection is opened, read by
 * user space through sock_diag with the socket's tcp_info. */
#define RTT_BUCKETS 28    /* tcptop/engines/histogram.py: bucket b counts samples below 2 << b us */

struct flow_counters {
	u64 sk_addr;          /* the socket's kernel address: tracepoints name sockets only by it */
	u64 established_ns;   /* bpf_ktime_get_ns() at ESTABLISHED, 0 before */
	u64 rtt_sum_us;       /* sum of sock_ops RTT_CB samples (mrtt): the last-resort RTT hook */
	u32 rtt_samples;
	u32 rto_events;       /* sock_ops RTO_CB: timeouts where tcpi_total_rto is missing */
	u32 flags;            /* FLOW_* */
	u32 pad;
	u32 rtt_hist[RTT_BUCKETS];
};
BPF_SK_STORAGE(counters, struct flow_counters);

/* The final numbers of a connection, taken by the sock_ops state callback as it
 * enters CLOSE (the last moment sock_diag could have shown it). Only what the
 * sock_ops context carries; user space keeps the last polled values of the rest. */
struct closed_record {
	struct flow_counters c;
	u64 now_ns;
	u64 bytes_received;
	u64 bytes_acked;
	u32 old_state;
	u32 snd_cwnd;
	u32 srtt_us;          /* unscaled (the context gives it << 3) */
	u32 rtt_min;
	u32 snd_ssthresh;
	u32 mss_cache;
	u32 packets_out;
	u32 retrans_out;
	u32 lost_out;
	u32 sacked_out;
	u32 total_retrans;
	u32 pad;
};
BPF_HASH(closed, u64, struct closed_record, MAX_CLOSED);

/* Entries into fast recovery, keyed by socket address (the tracepoint gives no
 * cookie). User space ties an address to its socket through flow_counters.sk_addr,
 * or, for sockets older than tcptop, through the 4-tuple kept here. The destroy
 * tracepoint (address + cookie) moves a socket's entry to `closed_addr`, so an
 * address reused by a new socket starts from nothing. */
struct addr_flow {
	u32 recoveries;
	u16 family;
	u16 sport;           /* host order */
	u16 dport;
	u16 pad;
	u8 saddr[16];        /* IPv4: first 4 bytes */
	u8 daddr[16];
};
BPF_HASH(addr_flows, u64, struct addr_flow, MAX_ADDR_FLOWS);
BPF_HASH(closed_addr, u64, struct addr_flow, MAX_CLOSED);

/* Run-level counters (one slot each, per CPU). */
#define STAT_NO_STORAGE 0   /* a new connection got no counters: socket storage allocation failed */
#define STAT_CLOSED_FULL 1  /* a closed flow's final record was dropped: `closed` full */
#define STAT_ADDR_FULL 2    /* a recovery entry was dropped: `addr_flows` or `closed_addr` full */
#define STAT_RTT_FULL 3     /* a socket's RTT samples were dropped: `rtt_flows` or `closed_rtt` full */
#define STAT_MAX 4
BPF_PERCPU_ARRAY(stats, u64, STAT_MAX);

static __always_inline void stat_inc(int idx)
{
	u64 *v = stats.lookup(&idx);

	if (v)
		*v += 1;
}

/* Set by user space before sock_ops is attached: which hook counts RTT samples. The sock_ops
 * RTT callbacks (the last resort: one sample per round trip) are asked for only when they
 * are the one, so otherwise they cost nothing. */
#define CONF_RTT_MODE 0
#define CONF_MAX 1
#define RTT_MODE_NONE 0
#define RTT_MODE_CALLBACKS 1   /* here: sock_ops RTT callbacks, one sample per round trip */
#define RTT_MODE_KPROBE 2      /* rtt.c: kprobe tcp_rtt_estimator */
#define RTT_MODE_TCP_PROBE 3   /* rtt.c: tracepoint tcp_probe */
BPF_ARRAY(config, u32, CONF_MAX);

static __always_inline u32 config_of(int idx)
{
	u32 *v = config.lookup(&idx);

	return v ? *v : 0;
}

static __always_inline u32 rtt_bucket(u32 us)
{
	u32 b = 0;

	/* floor(log2(us)), by halving; 0 and 1 share bucket 0 */
	if (us >= 1 << 16) { b += 16; us >>= 16; }
	if (us >= 1 << 8) { b += 8; us >>= 8; }
	if (us >= 1 << 4) { b += 4; us >>= 4; }
	if (us >= 1 << 2) { b += 2; us >>= 2; }
	if (us >= 1 << 1) { b += 1; }
	return b < RTT_BUCKETS ? b : RTT_BUCKETS - 1;
}

/* In rtt.c, which the loader appends: RTT samples counted by tracepoints or a kprobe. */
static __always_inline void rtt_opened(u64 addr, u64 cookie);
static __always_inline void rtt_destroyed(u64 addr, u64 cookie);

/* ---- sock_ops: connection life, RTT samples, RTO expirations ------------- */

static __always_inline struct flow_counters *open_counters(struct bpf_sock *sk, u32 role)
{
	struct flow_counters *c;

	c = counters.sk_storage_get(sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!c) {
		stat_inc(STAT_NO_STORAGE);
		return 0;
	}
#ifndef NO_SK_ADDR
	c->sk_addr = SK_ADDR(sk);
#endif
	c->flags |= role;
	return c;
}

static __always_inline void closing(struct bpf_sock_ops *skops, struct bpf_sock *sk)
{
	struct flow_counters *c = counters.sk_storage_get(sk, 0, 0);
	struct closed_record r = {};
	u64 cookie;

	if (!c)
		return;
	r.c = *c;
	r.now_ns = bpf_ktime_get_ns();
	r.old_state = skops->args[0];
	r.bytes_received = skops->bytes_received;
	r.bytes_acked = skops->bytes_acked;
	r.snd_cwnd = skops->snd_cwnd;
	r.srtt_us = skops->srtt_us >> 3;
	r.rtt_min = skops->rtt_min;
	r.snd_ssthresh = skops->snd_ssthresh;
	r.mss_cache = skops->mss_cache;
	r.packets_out = skops->packets_out;
	r.retrans_out = skops->retrans_out;
	r.lost_out = skops->lost_out;
	r.sacked_out = skops->sacked_out;
	r.total_retrans = skops->total_retrans;
	cookie = bpf_get_socket_cookie(skops);
	if (closed.update(&cookie, &r))
		stat_inc(STAT_CLOSED_FULL);
#if !defined(HAVE_TP_DESTROY_SOCK) && !defined(NO_SK_ADDR)
	/* No destroy tracepoint to move the kprobe's RTT entry under its cookie: do it here,
	 * where no sample can follow. */
	rtt_destroyed(SK_ADDR(sk), cookie);
#endif
}

static __always_inline u32 wanted_cb(void)
{
	return BPF_SOCK_OPS_RTO_CB_FLAG | BPF_SOCK_OPS_STATE_CB_FLAG |
	       (config_of(CONF_RTT_MODE) == RTT_MODE_CALLBACKS ? BPF_SOCK_OPS_RTT_CB_FLAG : 0);
}

static __always_inline void want_callbacks(struct bpf_sock_ops *skops)
{
	bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags | wanted_cb());
}

/* Another program may set a socket's callback flags outright (bpf_setsockopt
 * TCP_BPF_SOCK_OPS_CB_FLAGS), switching ours off: ask again at the next callback we get. */
static __always_inline void keep_callbacks(struct bpf_sock_ops *skops)
{
	u32 wanted = wanted_cb();

	if ((skops->bpf_sock_ops_cb_flags & wanted) != wanted)
		want_callbacks(skops);
}

int tt_bcc_sockops(struct bpf_sock_ops *skops)
{
	struct bpf_sock *sk = skops->sk;
	struct flow_counters *c;
	u32 op = skops->op;

	/* One read of the context's socket, checked once: each read is a new maybe-NULL pointer. */
	if (!sk)
		return 1;
	switch (op) {
	case BPF_SOCK_OPS_TCP_CONNECT_CB:
		/* Before the SYN: so the SYN-ACK's RTT sample is counted too. */
		want_callbacks(skops);
		open_counters(sk, FLOW_CLIENT);
		return 1;
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
	case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB:
		want_callbacks(skops);
		c = open_counters(sk, op == BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB ? FLOW_CLIENT : FLOW_SERVER);
		if (c) {
			c->established_ns = bpf_ktime_get_ns();
			c->flags |= FLOW_SEEN_BIRTH;
		}
#ifndef NO_SK_ADDR
		rtt_opened(SK_ADDR(sk), bpf_get_socket_cookie(skops));
#else
		rtt_opened(0, bpf_get_socket_cookie(skops));
#endif
		return 1;
	case BPF_SOCK_OPS_RTT_CB:
		c = counters.sk_storage_get(sk, 0, 0);
		keep_callbacks(skops);
		if (c) {
			/* args[0]: the sample (mrtt, us) the estimator just took. Called under
			 * the socket lock: plain increments suffice. */
			u32 b = rtt_bucket(skops->args[0]);

			c->rtt_samples++;
			c->rtt_sum_us += skops->args[0];
			if (b < RTT_BUCKETS)
				c->rtt_hist[b]++;
		}
		return 1;
	case BPF_SOCK_OPS_RTO_CB:
		c = counters.sk_storage_get(sk, 0, 0);
		keep_callbacks(skops);
		if (c)
			__sync_fetch_and_add(&c->rto_events, 1);
		return 1;
	case BPF_SOCK_OPS_STATE_CB:
		/* Called before the state changes: the socket still holds its numbers. */
		if (skops->args[1] == BPF_TCP_CLOSE)
			closing(skops, sk);
		return 1;
	}
	return 1;
}

/* ---- fast recovery, by socket address ----------------------------------- */

static __always_inline void note_recovery(u64 addr, u16 family, u16 sport, u16 dport,
					  const u8 *saddr4, const u8 *daddr4, const u8 *saddr6, const u8 *daddr6)
{
	struct addr_flow *a = addr_flows.lookup(&addr);
	struct addr_flow n = {};

	if (!a) {
		n.family = family;
		n.sport = sport;
		n.dport = dport;
		/* Tracepoint context loads must be aligned; these arrays are not. */
		if (family == AF_INET) {
			bpf_probe_read_kernel(n.saddr, 4, saddr4);
			bpf_probe_read_kernel(n.daddr, 4, daddr4);
		} else {
			bpf_probe_read_kernel(n.saddr, 16, saddr6);
			bpf_probe_read_kernel(n.daddr, 16, daddr6);
		}
		if (addr_flows.insert(&addr, &n))
			stat_inc(STAT_ADDR_FULL);
		a = addr_flows.lookup(&addr);
		if (!a)
			return;
	}
	__sync_fetch_and_add(&a->recoveries, 1);
}

#ifdef HAVE_TP_CONG_STATE_SET
/* The kernel enters Recovery only in tcp_enter_recovery, which also counts the
 * TCPSackRecovery/TCPRenoRecovery MIB: every such state set is one entry. */
TRACEPOINT_PROBE(tcp, tcp_cong_state_set)
{
	if (args->cong_state != TCP_CA_RECOVERY)
		return 0;
	note_recovery((u64)args->skaddr, args->family, args->sport, args->dport,
		      args->saddr, args->daddr, args->saddr_v6, args->daddr_v6);
	return 0;
}
#endif

/* The same entries on kernels without that tracepoint, where kprobes exist:
 * tcp_enter_recovery(struct sock *sk, bool ece_ack), its first argument only. No
 * 4-tuple there: sockets older than tcptop are then tied to theirs when they close. */
int kp_enter_recovery(struct pt_regs *ctx)
{
	struct addr_flow *a;
	struct addr_flow n = {};
	u64 addr = PT_REGS_PARM1(ctx);

	a = addr_flows.lookup(&addr);
	if (!a) {
		if (addr_flows.insert(&addr, &n))
			stat_inc(STAT_ADDR_FULL);
		a = addr_flows.lookup(&addr);
		if (!a)
			return 0;
	}
	__sync_fetch_and_add(&a->recoveries, 1);
	return 0;
}

#ifdef HAVE_TP_DESTROY_SOCK
/* A socket is freed: its address-keyed entries move under its cookie. */
TRACEPOINT_PROBE(tcp, tcp_destroy_sock)
{
	u64 addr = (u64)args->skaddr, cookie = args->sock_cookie;
	struct addr_flow *a = addr_flows.lookup(&addr);

	rtt_destroyed(addr, cookie);
	if (!a)
		return 0;
	if (closed_addr.update(&cookie, a))
		stat_inc(STAT_ADDR_FULL);
	addr_flows.delete(&addr);
	return 0;
}
#endif
