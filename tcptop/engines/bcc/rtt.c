// SPDX-License-Identifier: GPL-2.0
/* BCC flow engine, kernel side, continued: every RTT sample the kernel's estimator takes.
 *
 * Appended to flows.c by the loader (one BCC module: it uses flows.c's stats, config and
 * rtt_bucket, and flows.c's sock_ops and tcp_destroy_sock handlers call rtt_opened() and
 * rtt_destroyed()). rtt_samples, rtt_sum_us and rtt_hist count every call of
 * tcp_rtt_estimator() (RFC 4898 CountRTT/SumRTT), the same samples as the CO-RE engine,
 * through the best hook this kernel offers (user space attaches one, and says which in
 * config[CONF_RTT_MODE]):
 * - kprobe tcp_rtt_estimator(sk, mrtt_us): each sample as it is taken;
 * - tracepoint tcp:tcp_probe, once per incoming segment of an ESTABLISHED socket before the
 *   kernel processes it: the change of srtt_us/mdev_us since the previous segment gives the
 *   sample that segment made the estimator take, as bpf/flows.bpf.c does (pending_sample()
 *   says why that is exact). This reads tcp_sock and the skb's tcp_skb_cb, so it is compiled
 *   only with this kernel's offsets (-DTCP_LAYOUT with -DOFF_*, from its BTF, or
 *   -DTCP_LAYOUT_HEADERS when the headers are its own). A peek program that user space runs
 *   at polls (BPF_PROG_TEST_RUN) adds the sample the last segment gave, as the CO-RE
 *   engine's readers do;
 * - else flows.c's sock_ops RTT callbacks (one sample per round trip).
 *
 * Tracepoints and kprobes cannot reach socket storage, so the counts live in a hash: keyed by
 * the socket's cookie with tcp_probe (the tie to sock_diag's records; inet_sock_set_state,
 * which names no cookie, reads it from the socket), by its address with the kprobe (which
 * has nothing else; sock_ops adds the cookie of a socket it sees opening). When the socket
 * is destroyed, its entry moves under its cookie into closed_rtt, drained at polls.
 */

#define RTT_SEEDED 1   /* last_srtt/last_mdev hold the estimator's state after the last settled segment */
#define RTT_PENDING 2  /* the last segment acknowledged new data: a sample unless timestamps are off */
#define TCP_CLOSE_ 7
#define IPPROTO_TCP_ 6
#define TCPHDR_ACK_ 0x10
#define PEEK_NONE 0
#define PEEK_STALE 0xffffffff

struct rtt_flow {
	u64 sk_addr;       /* the socket's address (0: not known yet) */
	u64 cookie;        /* the socket's cookie (0: not known yet) */
	u64 rtt_sum_us;
	u32 rtt_samples;
	u32 last_srtt;     /* tcp_probe: srtt_us and mdev_us after the last settled segment */
	u32 last_mdev;
	u32 flags;         /* RTT_* */
	u32 rtt_hist[RTT_BUCKETS];
};
BPF_HASH(rtt_flows, u64, struct rtt_flow, MAX_RTT_FLOWS);
BPF_HASH(closed_rtt, u64, struct rtt_flow, MAX_CLOSED);

static __always_inline void add_sample(struct rtt_flow *f, s64 m)
{
	u32 b;

	if (m < 0)
		return;
	f->rtt_samples++;
	f->rtt_sum_us += m;
	b = rtt_bucket(m > 0xffffffff ? 0xffffffff : (u32)m);
	if (b < RTT_BUCKETS)
		f->rtt_hist[b]++;
}

/* The entry under `key`, created (empty) if there is none or `fresh`. */
static __always_inline struct rtt_flow *rtt_flow_at(u64 key, u64 addr, u64 cookie, bool fresh)
{
	struct rtt_flow *f = rtt_flows.lookup(&key);
	struct rtt_flow n = {};

	if (f && !fresh)
		return f;
	n.sk_addr = addr;
	n.cookie = cookie;
	if (rtt_flows.update(&key, &n)) {
		stat_inc(STAT_RTT_FULL);
		return 0;
	}
	return rtt_flows.lookup(&key);
}

/* A socket is destroyed (or, for the kprobe's entries where that tracepoint is missing,
 * closed): its entry moves under its cookie, for user space to take. */
static __always_inline void rtt_destroyed(u64 addr, u64 cookie)
{
	u64 key = config_of(CONF_RTT_MODE) == RTT_MODE_KPROBE ? addr : cookie;
	struct rtt_flow *f = rtt_flows.lookup(&key);

	if (!f)
		return;
	if (closed_rtt.update(&cookie, f))
		stat_inc(STAT_RTT_FULL);
	rtt_flows.delete(&key);
}

/* sock_ops saw a connection established; the handshake's sample was just taken, on either
 * end. With tcp_probe: a fresh entry whose first settle counts srtt/8, which is that sample
 * as long as no later segment was processed (each goes through tcp_probe first). With the
 * kprobe: the sample is counted already; the entry gets its cookie (or, if it held another
 * socket's, whose destruction was missed, starts afresh). */
static __always_inline void rtt_opened(u64 addr, u64 cookie)
{
	struct rtt_flow *f;

	switch (config_of(CONF_RTT_MODE)) {
	case RTT_MODE_TCP_PROBE:
		f = rtt_flow_at(cookie, addr, cookie, true);
		if (f)
			f->flags = RTT_SEEDED;
		return;
	case RTT_MODE_KPROBE:
		if (!addr)
			return;
		f = rtt_flow_at(addr, addr, cookie, false);
		if (f && f->cookie && f->cookie != cookie)
			f = rtt_flow_at(addr, addr, cookie, true);
		if (f)
			f->cookie = cookie;
		return;
	}
}

/* ---- kprobe: each sample as the estimator takes it ---------------------- */

int kp_rtt_estimator(struct pt_regs *ctx)
{
	u64 addr = PT_REGS_PARM1(ctx);
	struct rtt_flow *f = rtt_flow_at(addr, addr, 0, false);

	if (f)
		add_sample(f, (long)PT_REGS_PARM2(ctx)); /* under the socket lock */
	return 0;
}

/* ---- tcp_probe: the estimator's state, segment by segment --------------- */

#if defined(TCP_LAYOUT) || defined(TCP_LAYOUT_HEADERS)
#ifdef TCP_LAYOUT_HEADERS
/* This kernel's own headers: their layouts are right. */
#include <net/sock.h>
#include <net/tcp.h>
#define OFF_SRTT offsetof(struct tcp_sock, srtt_us)
#define OFF_MDEV offsetof(struct tcp_sock, mdev_us)
#define OFF_RETRANS_OUT offsetof(struct tcp_sock, retrans_out)
#define OFF_SKB_CB offsetof(struct sk_buff, cb)
#define OFF_CB_ACK_SEQ offsetof(struct tcp_skb_cb, ack_seq)
#define OFF_CB_FLAGS offsetof(struct tcp_skb_cb, tcp_flags)
#define OFF_SK_COOKIE offsetof(struct sock_common, skc_cookie)

static __always_inline bool tstamp_ok(u64 sk)
{
	struct tcp_options_received o = {};

	bpf_probe_read_kernel(&o, sizeof(o), (void *)(sk + offsetof(struct tcp_sock, rx_opt)));
	return o.tstamp_ok;
}
#else
/* Offsets from this kernel's BTF (-DOFF_*=...); tstamp_ok is a bit of a byte. */
static __always_inline bool tstamp_ok(u64 sk)
{
	u8 v = 0;

	bpf_probe_read_kernel(&v, 1, (void *)(sk + OFF_TSTAMP_OK_BYTE));
	return v & TSTAMP_OK_MASK;
}
#endif

static __always_inline u32 read_u32(u64 base, u64 off)
{
	u32 v = 0;

	bpf_probe_read_kernel(&v, sizeof(v), (void *)(base + off));
	return v;
}

/* The sample the estimator took since the last settled segment, from its state now, or -1 if
 * it took none. tcp_rtt_estimator() is exact integer arithmetic: with srtt_us scaled by 8,
 * one sample m moves it to srtt + m - srtt/8 (to m*8 from 0), so m follows from the two
 * values. A sample equal to srtt/8 leaves srtt as it was (and mdev too once it is below 4),
 * which is why an ACK that acknowledged new data (RTT_PENDING) also counts: with timestamps,
 * or nothing retransmitted, the kernel samples every such ACK. */
static __always_inline s64 pending_sample(const struct rtt_flow *f, u32 srtt, u32 mdev)
{
	if (!(f->flags & RTT_SEEDED) || srtt == 0)
		return -1; /* nothing to compare with, or the estimator was reset */
	if (f->last_srtt == 0)
		return srtt >> 3;
	if (srtt != f->last_srtt || mdev != f->last_mdev || (f->flags & RTT_PENDING))
		return (s64)srtt - f->last_srtt + (f->last_srtt >> 3);
	return -1;
}

/* Count the pending sample and take the estimator's state as the new reference: only in
 * hooks that run under the socket lock. */
static __always_inline void settle(struct rtt_flow *f, u64 sk)
{
	u32 srtt = read_u32(sk, OFF_SRTT), mdev = read_u32(sk, OFF_MDEV);

	add_sample(f, pending_sample(f, srtt, mdev));
	f->last_srtt = srtt;
	f->last_mdev = mdev;
	f->flags = (f->flags | RTT_SEEDED) & ~RTT_PENDING;
}

static __always_inline bool seq_before(u32 a, u32 b)
{
	return (s32)(a - b) < 0;
}

TRACEPOINT_PROBE(tcp, tcp_probe)
{
	u64 sk = (u64)args->skaddr, cb = (u64)args->skbaddr + OFF_SKB_CB, cookie = args->sock_cookie;
	u32 una = args->snd_una, nxt = args->snd_nxt, ack;
	struct rtt_flow *f = rtt_flow_at(cookie, sk, cookie, false);
	u8 flags = 0;

	if (!f)
		return 0;
	f->sk_addr = sk;
	settle(f, sk);
	bpf_probe_read_kernel(&flags, 1, (void *)(cb + OFF_CB_FLAGS));
	ack = read_u32(cb, OFF_CB_ACK_SEQ);
	if ((flags & TCPHDR_ACK_) && seq_before(una, ack) && !seq_before(nxt, ack) &&
	    (tstamp_ok(sk) || !read_u32(sk, OFF_RETRANS_OUT)))
		f->flags |= RTT_PENDING;
	return 0;
}

/* A connection closes: count the sample its last segment gave. Its cookie was made when its
 * entry was (by tcp_probe or sock_ops), so a socket without one has no entry. */
TRACEPOINT_PROBE(sock, inet_sock_set_state)
{
	u64 sk = (u64)args->skaddr, cookie = 0;
	struct rtt_flow *f;

	if (args->protocol != IPPROTO_TCP_ || args->newstate != TCP_CLOSE_)
		return 0;
	bpf_probe_read_kernel(&cookie, sizeof(cookie), (void *)(sk + OFF_SK_COOKIE));
	if (!cookie)
		return 0;
	f = rtt_flows.lookup(&cookie);
	if (f)
		settle(f, sk);
	return 0;
}

/* Run by user space at a poll (BPF_PROG_TEST_RUN) for one socket: args are its cookie and the
 * rtt_samples user space read. Returns the sample its last segment gave, plus 1 (PEEK_NONE:
 * none), or PEEK_STALE if the entry moved on, its address is not known, or no longer holds
 * that socket (a probe read of a freed socket is safe, and checked by the cookie). */
int tt_bcc_rtt_peek(struct bpf_raw_tracepoint_args *ctx)
{
	u64 cookie = ctx->args[0], sk, got = 0;
	struct rtt_flow *f = rtt_flows.lookup(&cookie);
	s64 m;

	if (!f || f->rtt_samples != (u32)ctx->args[1] || !f->sk_addr)
		return PEEK_STALE;
	sk = f->sk_addr;
	bpf_probe_read_kernel(&got, sizeof(got), (void *)(sk + OFF_SK_COOKIE));
	if (got != cookie)
		return PEEK_STALE;
	m = pending_sample(f, read_u32(sk, OFF_SRTT), read_u32(sk, OFF_MDEV));
	if (m < 0)
		return PEEK_NONE;
	return m >= 0xfffffffe ? 0xfffffffe : (u32)m + 1;
}
#endif /* TCP_LAYOUT || TCP_LAYOUT_HEADERS */
