// SPDX-License-Identifier: GPL-2.0
/* Packet-level engine, kernel side: where a packet's time goes, stage by stage.
 *
 * Receive:  driver -> ip -> tcp -> app      Transmit: tcp -> ip -> qdisc -> driver
 *
 * Every boundary is a timestamp; a stage's time is the difference between two
 * boundaries of the same packet, folded into a log2 histogram in the kernel
 * (per flow, keyed by socket cookie, and host-wide). Nothing goes to user
 * space per packet.
 *
 * Matching the same packet across boundaries:
 *  - below TCP (rx driver/ip, tx qdisc/driver) by skb address, in bounded LRU
 *    maps. A start overwrites whatever an earlier skb at that address left
 *    (counted as "reused": that skb never finished), a finish consumes its
 *    entry, and entries older than max_skb_age_ns are not trusted (counted).
 *    TX clones are not a problem there: the address is taken after TCP cloned.
 *  - at and above TCP by (socket, sequence number): one timed byte per socket
 *    and boundary at a time, like TCP's own RTT sampling. Retransmissions,
 *    GRO merges and skb reallocation cannot confuse a sequence number; a timed
 *    byte that passes its boundary unseen is dropped and counted.
 *
 * Hooks are chosen per kernel by the loader (tcptop/latency.py): tracepoints,
 * tp_btf, cgroup_skb here; fentry/kprobe variants on the precise kernel
 * functions where the kernel allows them. Every variant is a thin wrapper
 * around the same handler.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include "latency.h"

char LICENSE[] SEC("license") = "GPL";

#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define IPPROTO_TCP 6
#define MSG_PEEK 2
enum { ST_TIME_WAIT = 6, ST_LISTEN = 10, ST_NEW_SYN_RECV = 12 };

/* Set by the loader before load (the only .rodata variable: see latency.h). */
const volatile struct lat_config cfg = {
	.max_skb_age_ns = 5000000000ULL,
	.tx_split_ip = 0,
	.track_skbs = 1,
};
#define max_skb_age_ns cfg.max_skb_age_ns
#define tx_split_ip cfg.tx_split_ip
#define track_skbs cfg.track_skbs

/* Kernel functions every program type may call (6.2+): a typed view of a
 * context or of any kernel address, for plain (fault-safe) loads. */
extern void *bpf_cast_to_kern_ctx(void *obj) __ksym;
extern void *bpf_rdonly_cast(const void *obj, __u32 btf_id) __ksym;

#define RO(type, p) ((type *)bpf_rdonly_cast((const void *)(p), bpf_core_type_id_kernel(type)))

/* Per-flow histograms and timed bytes. ~1.1 KiB each, preallocated; sized by
 * the loader (--max-flows). Entries of destroyed sockets are marked and
 * deleted by user space after it has reported them once; a full map is
 * counted in LS_FLOWS_FULL (the host-wide histograms still get the sample). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 8192);
	__type(key, __u64);
	__type(value, struct lat_flow);
} flows SEC(".maps");

/* Received skbs between the driver and TCP. In flight at once: the backlog
 * queues (netdev_max_backlog, 1000 per CPU) plus GRO lists; 16k covers that
 * with room, and LRU drops the oldest (never-finished) entries first. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, struct rx_skb);
} rx_skbs SEC(".maps");

/* Transmitted skbs between TCP/IP and the driver: what qdiscs hold (default
 * txqueuelen 1000 per queue) plus what is in flight in the stack. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, struct tx_skb);
} tx_skbs SEC(".maps");

/* Host-wide histograms, one per stage. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, LAT_STAGES);
	__type(key, __u32);
	__type(value, struct lat_hist);
} host SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, LS_MAX);
	__type(key, __u32);
	__type(value, __u64);
} stats SEC(".maps");

/* The skb the driver is sending on this CPU: ndo_start_xmit runs with bottom
 * halves off, so start and end of the driver stage share a CPU and need no
 * hash map. */
struct drv_slot {
	__u64 skb;
	__u64 ts;
	__u64 cookie;
	__u64 qdisc_ns;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct drv_slot);
} drv SEC(".maps");

/* Source of the zero value a new flow entry starts from (too big for the stack). */
static struct lat_flow zero_flow;

static __always_inline void stat_inc(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&stats, &idx);

	if (v)
		*v += 1;
}

static __always_inline bool before(__u32 a, __u32 b)
{
	return (__s32)(a - b) < 0;
}

/* log2 bucket of a duration (see latency.h). */
static __always_inline __u32 bucket_of(__u64 ns)
{
	__u64 v = ns;
	__u32 r, shift;

	if (ns < (1ULL << LAT_BUCKET0_SHIFT))
		return 0;
	r = (v > 0xFFFFFFFFULL) << 5; v >>= r;
	shift = (v > 0xFFFF) << 4; v >>= shift; r |= shift;
	shift = (v > 0xFF) << 3; v >>= shift; r |= shift;
	shift = (v > 0xF) << 2; v >>= shift; r |= shift;
	shift = (v > 0x3) << 1; v >>= shift; r |= shift;
	r |= (v >> 1);
	r -= LAT_BUCKET0_SHIFT - 1;
	return r < LAT_BUCKETS ? r : LAT_BUCKETS - 1;
}

/* One sample into the host-wide histogram and, when known, the flow's. */
static __always_inline void record(struct lat_flow *f, __u32 stage, __u64 ns)
{
	__u32 b = bucket_of(ns);
	struct lat_hist *h = bpf_map_lookup_elem(&host, &stage);

	if (h) {
		h->slots[b & (LAT_BUCKETS - 1)] += 1;
		h->sum_ns += ns;
		if (ns > h->max_ns)
			h->max_ns = ns;
	}
	if (f) {
		/* Masks keep the verifier sure of the bounds (both sizes are powers of 2). */
		__sync_fetch_and_add(&f->slots[stage & (LAT_STAGES - 1)][b & (LAT_BUCKETS - 1)], 1);
		__sync_fetch_and_add(&f->sum_ns[stage & (LAT_STAGES - 1)], ns);
	}
}

static __always_inline struct lat_flow *flow_of(__u64 cookie, bool create)
{
	struct lat_flow *f = bpf_map_lookup_elem(&flows, &cookie);

	if (f || !create)
		return f;
	/* May fail because the map is full, or because another CPU won the race. */
	bpf_map_update_elem(&flows, &cookie, &zero_flow, BPF_NOEXIST);
	f = bpf_map_lookup_elem(&flows, &cookie);
	if (!f)
		stat_inc(LS_FLOWS_FULL);
	return f;
}

/* The cookie the kernel already gave this socket (0: nobody asked yet). Our
 * TCP-level hooks ask (bpf_get_socket_cookie) before any of its data reaches
 * the lower stages, so reading it is enough there, from any program type. */
static __always_inline __u64 cookie_of(const struct sock *sk)
{
	return sk->__sk_common.skc_cookie.counter;
}

/* Whether an skb whose data starts at the network header carries TCP. */
static __always_inline bool l4_is_tcp(const struct sk_buff *skb)
{
	unsigned char *data = skb->data;
	__u16 proto = skb->protocol;
	__u8 l4 = 0;

	if (proto == bpf_htons(ETH_P_IP))
		bpf_probe_read_kernel(&l4, 1, data + 9);
	else if (proto == bpf_htons(ETH_P_IPV6))
		bpf_probe_read_kernel(&l4, 1, data + 6);
	return l4 == IPPROTO_TCP;
}

/* ---- receive: driver -> ip -> tcp, matched by skb address ------------- */

static __always_inline void rx_driver_start(const struct sk_buff *skb)
{
	__u64 addr = (__u64)skb, now;
	struct rx_skb *e, n = {};

	if (!l4_is_tcp(skb))
		return;
	now = bpf_ktime_get_ns();
	e = bpf_map_lookup_elem(&rx_skbs, &addr);
	if (e) {
		if (e->driver_ts | e->ip_ts)
			stat_inc(LS_RX_REUSED);
		e->driver_ts = now;
		e->ip_ts = 0;
	} else {
		n.driver_ts = now;
		bpf_map_update_elem(&rx_skbs, &addr, &n, BPF_ANY);
	}
	stat_inc(LS_RX_STARTED);
}

static __always_inline void rx_ip_start(const struct sk_buff *skb)
{
	__u64 addr = (__u64)skb;
	struct rx_skb *e, n = {};

	e = bpf_map_lookup_elem(&rx_skbs, &addr);
	if (e) {
		/* Seen again (bridge, VLAN): the IP layer starts at the last core receive. */
		e->ip_ts = bpf_ktime_get_ns();
		return;
	}
	if (!l4_is_tcp(skb))
		return;
	n.ip_ts = bpf_ktime_get_ns();
	bpf_map_update_elem(&rx_skbs, &addr, &n, BPF_ANY);
}

/* Driver hand-over: whichever entry point this driver uses. */
SEC("tp_btf/netif_rx")
int BPF_PROG(on_netif_rx, struct sk_buff *skb)
{
	rx_driver_start(skb);
	return 0;
}

SEC("tp_btf/napi_gro_receive_entry")
int BPF_PROG(on_gro_receive, const struct sk_buff *skb)
{
	rx_driver_start(skb);
	return 0;
}

SEC("tp_btf/napi_gro_frags_entry")
int BPF_PROG(on_gro_frags, const struct sk_buff *skb)
{
	rx_driver_start(skb);
	return 0;
}

SEC("tp_btf/netif_receive_skb_entry")
int BPF_PROG(on_receive_entry, const struct sk_buff *skb)
{
	rx_driver_start(skb);
	return 0;
}

SEC("tp_btf/netif_receive_skb_list_entry")
int BPF_PROG(on_receive_list_entry, const struct sk_buff *skb)
{
	rx_driver_start(skb);
	return 0;
}

/* IP layer takes it. The tracepoint fires in __netif_receive_skb_core, just
 * before taps, tc ingress and the protocol handler; ip_rcv/ipv6_rcv are the
 * precise points where the kernel lets us attach to them. */
SEC("tp_btf/netif_receive_skb")
int BPF_PROG(on_netif_receive, struct sk_buff *skb)
{
	rx_ip_start(skb);
	return 0;
}

SEC("fentry/ip_rcv")
int BPF_PROG(fe_ip_rcv, struct sk_buff *skb)
{
	rx_ip_start(skb);
	return 0;
}

SEC("fentry/ipv6_rcv")
int BPF_PROG(fe_ipv6_rcv, struct sk_buff *skb)
{
	rx_ip_start(skb);
	return 0;
}

SEC("kprobe/ip_rcv")
int BPF_KPROBE(kp_ip_rcv, struct sk_buff *skb)
{
	rx_ip_start(RO(struct sk_buff, skb));
	return 0;
}

SEC("kprobe/ipv6_rcv")
int BPF_KPROBE(kp_ipv6_rcv, struct sk_buff *skb)
{
	rx_ip_start(RO(struct sk_buff, skb));
	return 0;
}

/* Stamp the segment's last byte when it enters TCP, if none is timed yet. */
static __always_inline void rx_tcp_arm(struct __sk_buff *skb, struct bpf_sock *sk,
				       struct lat_flow *f, __u64 now)
{
	struct bpf_tcp_sock *tp;
	__u8 h[12], vihl = 0, nh = 0;
	__u32 iphl, doff, seq, end;
	__s32 payload;

	if (bpf_skb_load_bytes(skb, 0, &vihl, 1))
		return;
	if ((vihl >> 4) == 4) {
		iphl = (vihl & 0xF) << 2;
	} else {
		/* IPv6 with extension headers is left untimed. */
		if (bpf_skb_load_bytes(skb, 6, &nh, 1) || nh != IPPROTO_TCP)
			return;
		iphl = 40;
	}
	if (iphl < 20 || iphl > 60 || bpf_skb_load_bytes(skb, iphl + 4, h, sizeof(h)))
		return;
	doff = (h[8] >> 4) << 2;
	payload = (__s32)skb->len - (__s32)iphl - (__s32)doff;
	if (payload <= 0)
		return;
	seq = ((__u32)h[0] << 24) | ((__u32)h[1] << 16) | ((__u32)h[2] << 8) | h[3];
	end = seq + (__u32)payload;
	tp = bpf_tcp_sock(sk);
	if (!tp || !before(tp->rcv_nxt, end)) /* a duplicate: nothing new to queue */
		return;
	f->rx_tcp.seq = end;
	f->rx_tcp.ts = now;
}

/* TCP layer takes it: cgroup ingress runs inside tcp_v4_rcv/tcp_v6_rcv,
 * right after the socket lookup and before the socket's backlog, so this is
 * also where a packet is first tied to its flow. */
SEC("cgroup_skb/ingress")
int on_tcp_ingress(struct __sk_buff *skb)
{
	struct bpf_sock *sk = skb->sk;
	struct lat_flow *f = NULL;
	struct rx_skb *e;
	__u64 addr, now, ip_ts, drv_ts;

	if (!sk)
		return 1;
	sk = bpf_sk_fullsock(sk);
	if (!sk || sk->protocol != IPPROTO_TCP)
		return 1;
	now = bpf_ktime_get_ns();
	addr = (__u64)bpf_cast_to_kern_ctx(skb);
	if (sk->state != ST_LISTEN)
		f = flow_of(bpf_get_socket_cookie(skb), true);
	if (!track_skbs)
		goto tcp_stage;
	e = bpf_map_lookup_elem(&rx_skbs, &addr);
	if (e && (e->ip_ts | e->driver_ts)) {
		ip_ts = e->ip_ts;
		drv_ts = e->driver_ts;
		e->ip_ts = 0;
		e->driver_ts = 0;
		if (now - (ip_ts ? ip_ts : drv_ts) > max_skb_age_ns) {
			stat_inc(LS_RX_STALE);
		} else if (!ip_ts) {
			/* No hook at the IP layer on this kernel: "driver+ip". */
			stat_inc(LS_RX_MATCHED);
			record(f, RX_DRIVER, now - drv_ts);
		} else {
			stat_inc(LS_RX_MATCHED);
			if (drv_ts && drv_ts <= ip_ts)
				record(f, RX_DRIVER, ip_ts - drv_ts);
			record(f, RX_IP, now - ip_ts);
		}
	} else {
		stat_inc(LS_RX_UNMATCHED);
	}
tcp_stage:
	if (f && !f->rx_tcp.ts)
		rx_tcp_arm(skb, sk, f, now);
	return 1;
}

/* ---- receive: tcp -> queued -> read, matched by sequence number -------- */

/* Data queued on the socket: time the TCP stage's timed byte out, and time
 * the last byte queued so far until a read call copies it. */
static __always_inline void rx_queued(const struct sock *sk, __u64 cookie)
{
	struct tcp_sock *tp;
	struct lat_flow *f;
	__u32 rcv_nxt;
	__u64 now;

	f = flow_of(cookie, true);
	if (!f)
		return;
	tp = RO(struct tcp_sock, sk);
	rcv_nxt = tp->rcv_nxt;
	now = bpf_ktime_get_ns();
	if (f->rx_tcp.ts && !before(rcv_nxt, f->rx_tcp.seq)) {
		record(f, RX_TCP, now - f->rx_tcp.ts);
		f->rx_tcp.ts = 0;
		stat_inc(LS_PROBE_DONE);
	}
	if (!f->rx_app.ts && rcv_nxt != tp->copied_seq) {
		f->rx_app.seq = rcv_nxt;
		f->rx_app.ts = now;
	}
}

/* tcp_data_ready -> sk->sk_data_ready (the tracepoint fires for every protocol). */
SEC("tp_btf/sk_data_ready")
int BPF_PROG(on_data_ready, const struct sock *sk)
{
	if (sk->sk_protocol != IPPROTO_TCP || sk->__sk_common.skc_state == ST_LISTEN)
		return 0;
	rx_queued(sk, bpf_get_socket_cookie((void *)sk));
	return 0;
}

SEC("fentry/tcp_data_ready")
int BPF_PROG(fe_tcp_data_ready, struct sock *sk)
{
	rx_queued(sk, bpf_get_socket_cookie(sk));
	return 0;
}

SEC("kprobe/tcp_data_ready")
int BPF_KPROBE(kp_tcp_data_ready, struct sock *sk)
{
	struct sock *s = RO(struct sock, sk);
	__u64 cookie = cookie_of(s);

	if (cookie) /* cgroup ingress asked for it when the data arrived */
		rx_queued(s, cookie);
	return 0;
}

static __always_inline void rx_app_done(struct sock *sk, int copied)
{
	struct lat_flow *f;
	__u32 seq_after;

	f = flow_of(cookie_of(sk), false);
	if (!f || !f->rx_app.ts)
		return;
	seq_after = RO(struct tcp_sock, sk)->copied_seq;
	if (before(seq_after, f->rx_app.seq)) /* not read yet */
		return;
	if (before(seq_after - (__u32)copied, f->rx_app.seq)) {
		record(f, RX_APP, bpf_ktime_get_ns() - f->rx_app.ts);
		stat_inc(LS_PROBE_DONE);
	} else {
		stat_inc(LS_PROBE_MISSED); /* consumed without a read call (splice, zerocopy) */
	}
	f->rx_app.ts = 0;
}

/* A read call returned (sock_recvmsg): copied_seq already covers what it copied. */
SEC("tp_btf/sock_recv_length")
int BPF_PROG(on_recv, struct sock *sk, int ret, int flags)
{
	if (ret <= 0 || (flags & MSG_PEEK) || sk->sk_protocol != IPPROTO_TCP)
		return 0;
	rx_app_done(sk, ret);
	return 0;
}

/* End of tcp_recvmsg (and of splice/tcp_read_sock): copied_seq is updated. */
SEC("fentry/tcp_cleanup_rbuf")
int BPF_PROG(fe_tcp_cleanup_rbuf, struct sock *sk, int copied)
{
	if (copied > 0)
		rx_app_done(sk, copied);
	return 0;
}

SEC("kprobe/tcp_cleanup_rbuf")
int BPF_KPROBE(kp_tcp_cleanup_rbuf, struct sock *sk, int copied)
{
	if (copied > 0)
		rx_app_done(RO(struct sock, sk), copied);
	return 0;
}

/* ---- transmit: write accepted -> leaves TCP / device layer, by sequence - */

/* A write hands bytes to TCP: time write_seq, the next byte it appends.
 * Restamped while write_seq stays the same, so time blocked waiting for
 * send-buffer space is not counted as TCP time. */
static __always_inline void tx_accept(const struct sock *sk, __u64 cookie)
{
	struct lat_flow *f = flow_of(cookie, true);
	__u32 ws;

	if (!f)
		return;
	ws = RO(struct tcp_sock, sk)->write_seq;
	if (!f->tx.ts || f->tx.seq == ws) {
		f->tx.seq = ws;
		f->tx.ts = bpf_ktime_get_ns();
	}
}

/* Each round of tcp_sendmsg_locked's copy loop, before it appends. */
SEC("tp_btf/tcp_sendmsg_locked")
int BPF_PROG(on_sendmsg, const struct sock *sk, const struct msghdr *msg,
	     const struct sk_buff *skb, int size_goal)
{
	tx_accept(sk, bpf_get_socket_cookie((void *)sk));
	return 0;
}

SEC("fentry/tcp_sendmsg_locked")
int BPF_PROG(fe_tcp_sendmsg_locked, struct sock *sk)
{
	tx_accept(sk, bpf_get_socket_cookie(sk));
	return 0;
}

SEC("kprobe/tcp_sendmsg_locked")
int BPF_KPROBE(kp_tcp_sendmsg_locked, struct sock *sk)
{
	struct sock *s = RO(struct sock, sk);
	__u64 cookie = cookie_of(s);

	if (cookie) /* 0 until something asked: cgroup ingress does on the first packet received */
		tx_accept(s, cookie);
	return 0;
}

/* Does this outgoing segment carry the flow's timed byte? Completes the
 * sample into `stage` if so; drops it if the segment is already past it. */
static __always_inline void tx_probe_match(struct lat_flow *f, __u32 stage,
					   const struct sk_buff *skb, __u64 now)
{
	unsigned char *head = skb->head, *data = skb->data, *th;
	__u32 seq, doff, S;
	__s32 payload;
	__u8 h[13];

	if (!f || !f->tx.ts)
		return;
	th = head + skb->transport_header;
	if (bpf_probe_read_kernel(h, sizeof(h), th))
		return;
	seq = ((__u32)h[4] << 24) | ((__u32)h[5] << 16) | ((__u32)h[6] << 8) | h[7];
	doff = (h[12] >> 4) << 2;
	payload = (__s32)skb->len - (__s32)(th - data) - (__s32)doff;
	S = f->tx.seq;
	if (before(S, seq)) {
		f->tx.ts = 0; /* it left through a path we do not see */
		stat_inc(LS_PROBE_MISSED);
	} else if (payload > 0 && before(S, seq + (__u32)payload)) {
		record(f, stage, now - f->tx.ts);
		f->tx.ts = 0;
		stat_inc(LS_PROBE_DONE);
	}
}

/* Leaves TCP: the queue_xmit call of __tcp_transmit_skb, with the clone that
 * is actually sent (so clones and retransmissions are separate skbs here). */
static __always_inline void tx_leave_tcp(const struct sock *sk, const struct sk_buff *skb)
{
	__u64 addr = (__u64)skb, cookie = cookie_of(sk), now = bpf_ktime_get_ns();
	struct tx_skb *e, n = {};

	if (cookie)
		tx_probe_match(flow_of(cookie, false), TX_TCP, skb, now);
	e = bpf_map_lookup_elem(&tx_skbs, &addr);
	if (e) {
		e->cookie = cookie;
		e->ip_ts = now;
	} else {
		n.cookie = cookie;
		n.ip_ts = now;
		bpf_map_update_elem(&tx_skbs, &addr, &n, BPF_ANY);
	}
}

SEC("fentry/ip_queue_xmit")
int BPF_PROG(fe_ip_queue_xmit, struct sock *sk, struct sk_buff *skb)
{
	tx_leave_tcp(sk, skb);
	return 0;
}

SEC("fentry/inet6_csk_xmit")
int BPF_PROG(fe_inet6_csk_xmit, struct sock *sk, struct sk_buff *skb)
{
	tx_leave_tcp(sk, skb);
	return 0;
}

SEC("kprobe/ip_queue_xmit")
int BPF_KPROBE(kp_ip_queue_xmit, struct sock *sk, struct sk_buff *skb)
{
	tx_leave_tcp(RO(struct sock, sk), RO(struct sk_buff, skb));
	return 0;
}

SEC("kprobe/inet6_csk_xmit")
int BPF_KPROBE(kp_inet6_csk_xmit, struct sock *sk, struct sk_buff *skb)
{
	tx_leave_tcp(RO(struct sock, sk), RO(struct sk_buff, skb));
	return 0;
}

/* ---- transmit: device layer -> qdisc -> driver, by skb address ---------- */

/* Handed to the device layer (__dev_queue_xmit), before the qdisc. */
SEC("tp_btf/net_dev_queue")
int BPF_PROG(on_dev_queue, struct sk_buff *skb)
{
	__u64 addr = (__u64)skb, cookie, now, ip_ts = 0;
	struct sock *sk = skb->sk;
	struct lat_flow *f = NULL;
	struct tx_skb *e, n = {};
	__u8 state;

	if (!sk)
		return 0;
	state = sk->__sk_common.skc_state;
	if (state == ST_TIME_WAIT || state == ST_NEW_SYN_RECV || sk->sk_protocol != IPPROTO_TCP)
		return 0;
	cookie = cookie_of(sk);
	now = bpf_ktime_get_ns();
	if (!track_skbs)
		goto tcp_stage;
	e = bpf_map_lookup_elem(&tx_skbs, &addr);
	if (e) {
		if (e->queue_ts)
			stat_inc(LS_TX_REUSED);
		ip_ts = e->ip_ts;
		e->cookie = cookie;
		e->ip_ts = 0;
		e->queue_ts = now;
	} else {
		n.cookie = cookie;
		n.queue_ts = now;
		bpf_map_update_elem(&tx_skbs, &addr, &n, BPF_ANY);
	}
	stat_inc(LS_TX_QUEUED);
tcp_stage:
	if (cookie)
		f = flow_of(cookie, false);
	if (tx_split_ip) {
		if (ip_ts && now - ip_ts <= max_skb_age_ns)
			record(f, TX_IP, now - ip_ts);
	} else {
		/* No hook between TCP and IP: the TCP stage runs to here ("tcp+ip"). */
		tx_probe_match(f, TX_TCP, skb, now);
	}
	return 0;
}

/* The driver starts sending it (dev_hard_start_xmit -> ndo_start_xmit). */
SEC("tp_btf/net_dev_start_xmit")
int BPF_PROG(on_start_xmit, const struct sk_buff *skb, const struct net_device *dev)
{
	__u64 addr = (__u64)skb, now;
	struct drv_slot *slot;
	struct tx_skb *e;
	__u32 zero = 0;

	slot = bpf_map_lookup_elem(&drv, &zero);
	if (!slot)
		return 0;
	e = bpf_map_lookup_elem(&tx_skbs, &addr);
	if (!e || !e->queue_ts) { /* not a TCP skb we queued (or a GSO segment of one) */
		slot->skb = 0;
		return 0;
	}
	now = bpf_ktime_get_ns();
	slot->skb = addr;
	slot->ts = now;
	slot->cookie = e->cookie;
	slot->qdisc_ns = now - e->queue_ts;
	e->queue_ts = 0;
	stat_inc(LS_TX_MATCHED);
	return 0;
}

/* The driver's transmit routine returned. */
SEC("tp_btf/net_dev_xmit")
int BPF_PROG(on_xmit, struct sk_buff *skb, int rc, struct net_device *dev, unsigned int len)
{
	struct lat_flow *f = NULL;
	struct drv_slot *slot;
	__u32 zero = 0;

	slot = bpf_map_lookup_elem(&drv, &zero);
	if (!slot || !slot->skb)
		return 0;
	if (slot->skb != (__u64)skb) {
		stat_inc(LS_DRV_UNMATCHED);
		slot->skb = 0;
		return 0;
	}
	slot->skb = 0;
	if (slot->cookie)
		f = flow_of(slot->cookie, false);
	if (slot->qdisc_ns <= max_skb_age_ns)
		record(f, TX_QDISC, slot->qdisc_ns);
	else
		stat_inc(LS_TX_STALE);
	record(f, TX_DRIVER, bpf_ktime_get_ns() - slot->ts);
	return 0;
}

/* ---- flow lifetime ------------------------------------------------------- */

SEC("tp_btf/tcp_destroy_sock")
int BPF_PROG(on_destroy, struct sock *sk)
{
	struct lat_flow *f = flow_of(cookie_of(sk), false);

	if (f)
		f->closed_ns = bpf_ktime_get_ns();
	return 0;
}
