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
 *    maps, for 1 packet in 2^sample_shift: a hash of the TCP header's sequence
 *    and acknowledgement numbers picks it, and every hook recomputes the same
 *    choice from the header with a few plain loads, so the other packets cost
 *    no map work at all. A start overwrites whatever an earlier skb at that address left
 *    (counted as "reused": that skb never finished), a finish consumes its
 *    entry, and entries older than max_skb_age_ns are not trusted (counted).
 *    TX clones are not a problem there: the address is taken after TCP cloned.
 *  - at and above TCP by (socket, sequence number): one timed byte per socket
 *    and boundary at a time, like TCP's own RTT sampling, kept in socket
 *    storage (no hash lookup on the many events that time nothing). Retransmissions,
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

/* Start-up options, set by the loader by name before load. */
const volatile __u64 max_skb_age_ns = 5000000000ULL; /* per-skb stamps older than this are not trusted
						       * (counted as stale) */
const volatile __u8 tx_split_ip = 0;  /* a hook where TCP hands a segment to IP is attached: tx tcp | ip */
const volatile __u8 track_skbs = 1;   /* the per-skb stages (rx driver/ip, tx ip/qdisc/driver) are on */
const volatile __u8 sample_shift = 0; /* time 1 packet in 2^sample_shift (chosen by a hash of the TCP
				       * header's seq and ack, so every hook agrees without a lookup) */
const volatile __u8 probe_map = 0;    /* timed bytes live in the `probes` hash, not socket storage */

/* Kernel functions every program type may call (6.2+): a typed view of a
 * context or of any kernel address, for plain (fault-safe) loads. The
 * verifier turns both into a register move. */
extern void *bpf_cast_to_kern_ctx(void *obj) __ksym;
extern void *bpf_rdonly_cast(const void *obj, __u32 btf_id) __ksym;

#define RO(type, p) ((type *)bpf_rdonly_cast((const void *)(p), bpf_core_type_id_kernel(type)))

/* Tests build a variant that redefines this to an untrusted pointer, so the verifier
 * refuses one program on every kernel and the loader's per-program fallback runs
 * (tests/kernel/bpf/); kernel builds of one version differ in what they accept. */
#ifndef DATA_READY_SK
#define DATA_READY_SK(sk) (sk)
#endif

/* Per-flow histograms. ~1.1 KiB each, preallocated; sized by the loader.
 * Entries of destroyed sockets are marked and deleted by user
 * space after it has reported them once; a full map is counted in
 * LS_FLOWS_FULL (the host-wide histograms still get the sample). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 8192);
	__type(key, __u64);
	__type(value, struct lat_flow);
} flows SEC(".maps");

/* Timed bytes per socket (see struct lat_probes). */
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct lat_probes);
} sk_probes SEC(".maps");

/* The same, by socket cookie, when probe_map (a kprobe rung is in use);
 * sized by the loader, entries deleted when the socket is destroyed. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 8192);
	__type(key, __u64);
	__type(value, struct lat_probes);
} probes SEC(".maps");

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
	__type(key, enum lat_stage);
	__type(value, struct lat_hist);
} host SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, LS_MAX);
	__type(key, enum lat_stat);
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
static struct lat_probes zero_probes;

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

/* One sample into the host-wide histogram and, when the socket is known
 * (cookie != 0), the flow's (created at its first sample). */
static __always_inline void record(__u64 cookie, __u32 stage, __u64 ns)
{
	__u32 b = bucket_of(ns);
	struct lat_hist *h = bpf_map_lookup_elem(&host, &stage);
	struct lat_flow *f;

	if (h) {
		h->slots[b & (LAT_BUCKETS - 1)] += 1;
		h->sum_ns += ns;
		if (ns > h->max_ns)
			h->max_ns = ns;
	}
	if (!cookie)
		return;
	f = flow_of(cookie, true);
	if (f) {
		/* Masks keep the verifier sure of the bounds (both sizes are powers of 2). */
		__sync_fetch_and_add(&f->slots[stage & (LAT_STAGES - 1)][b & (LAT_BUCKETS - 1)], 1);
		__sync_fetch_and_add(&f->sum_ns[stage & (LAT_STAGES - 1)], ns);
	}
}

/* The cookie the kernel already gave this socket (0: nobody asked yet). Our
 * TCP-level hooks ask (bpf_get_socket_cookie) before any of its data reaches
 * the lower stages, so reading it is enough there, from any program type. */
static __always_inline __u64 cookie_of(const struct sock *sk)
{
	return sk->__sk_common.skc_cookie.counter;
}

/* The socket's timed bytes. `storage`: the program type may use socket
 * storage (tracing, cgroup); kprobe wrappers pass false and always use the
 * hash, which the loader then selects for every program (probe_map). */
static __always_inline struct lat_probes *probes_of(void *sk, __u64 cookie, bool create, bool storage)
{
	struct lat_probes *p;

	if (storage && !probe_map)
		return bpf_sk_storage_get(&sk_probes, sk, 0, create ? BPF_SK_STORAGE_GET_F_CREATE : 0);
	if (!cookie)
		return NULL;
	p = bpf_map_lookup_elem(&probes, &cookie);
	if (p || !create)
		return p;
	bpf_map_update_elem(&probes, &cookie, &zero_probes, BPF_NOEXIST);
	return bpf_map_lookup_elem(&probes, &cookie);
}

/* ---- the TCP header, read with plain loads ------------------------------ */

struct hdr {
	__u32 seq;      /* host order */
	__u32 ack;
	__s32 payload;  /* bytes of data after the TCP header */
};

/* Fill `h` from the TCP header at `th`; `l3_len`: bytes from skb->data to it. */
static __always_inline void read_th(const struct sk_buff *skb, const unsigned char *th, __s32 l3_len,
				    struct hdr *h)
{
	const struct tcphdr *t = RO(struct tcphdr, th);
	__u8 doff = *((const __u8 *)t + 12) >> 4;

	h->seq = bpf_ntohl(t->seq);
	h->ack = bpf_ntohl(t->ack_seq);
	h->payload = (__s32)skb->len - l3_len - (__s32)(doff << 2);
}

/* A received skb whose data starts at the network header (from the driver
 * hand-over to TCP's socket lookup): false if it does not carry TCP. */
static __always_inline bool rx_hdr(const struct sk_buff *skb, struct hdr *h)
{
	unsigned char *data = skb->data;
	__u16 proto = skb->protocol;
	__u32 iphl;

	if (proto == bpf_htons(ETH_P_IP)) {
		const struct iphdr *ip = RO(struct iphdr, data);

		if (ip->protocol != IPPROTO_TCP)
			return false;
		iphl = (*(const __u8 *)ip & 0xF) << 2;
		if (iphl < 20)
			return false;
	} else if (proto == bpf_htons(ETH_P_IPV6)) {
		/* IPv6 with extension headers is left untimed. */
		if (RO(struct ipv6hdr, data)->nexthdr != IPPROTO_TCP)
			return false;
		iphl = 40;
	} else {
		return false;
	}
	read_th(skb, data + iphl, iphl, h);
	return true;
}

/* A transmitted TCP skb (transport header set by TCP). */
static __always_inline void tx_hdr(const struct sk_buff *skb, struct hdr *h)
{
	unsigned char *head = skb->head, *th = head + skb->transport_header;

	read_th(skb, th, th - skb->data, h);
}

/* 1 value in 2^sample_shift, by a multiplicative hash. */
static __always_inline bool sampled_x(__u32 x)
{
	__u32 s = sample_shift;

	if (!s)
		return true;
	return ((x * 0x9E3779B1U) >> ((32 - s) & 31)) == 0;
}

/* Whether this packet is timed: the same answer at every hook it passes. */
static __always_inline bool sampled(const struct hdr *h)
{
	return sampled_x(h->seq ^ (h->ack * 0x85EBCA6BU));
}

/* Make sure the socket has its cookie (the lower hooks read it), when a
 * sample starts. kprobe programs cannot ask; they read what others asked. */
static __always_inline void ask_cookie(void *sk, bool helper)
{
	if (helper)
		bpf_get_socket_cookie(sk);
}

/* ---- receive: driver -> ip -> tcp, matched by skb address ------------- */

static __always_inline void rx_driver_start(const struct sk_buff *skb)
{
	__u64 addr = (__u64)skb, now;
	struct rx_skb *e, n = {};
	struct hdr h;

	if (!rx_hdr(skb, &h) || !sampled(&h))
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
	struct hdr h;

	if (!rx_hdr(skb, &h) || !sampled(&h))
		return;
	e = bpf_map_lookup_elem(&rx_skbs, &addr);
	if (e) {
		/* Seen again (bridge, VLAN): the IP layer starts at the last core receive. */
		e->ip_ts = bpf_ktime_get_ns();
		return;
	}
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

/* A sampled skb reached TCP: close its driver and IP stages. */
static __always_inline void rx_skb_done(const struct sk_buff *skb, struct __sk_buff *ctx, __u64 now)
{
	__u64 addr = (__u64)skb, ip_ts, drv_ts, cookie;
	struct rx_skb *e;

	e = bpf_map_lookup_elem(&rx_skbs, &addr);
	if (!e || !(e->ip_ts | e->driver_ts)) {
		stat_inc(LS_RX_UNMATCHED);
		return;
	}
	ip_ts = e->ip_ts;
	drv_ts = e->driver_ts;
	e->ip_ts = 0;
	e->driver_ts = 0;
	if (now - (ip_ts ? ip_ts : drv_ts) > max_skb_age_ns) {
		stat_inc(LS_RX_STALE);
		return;
	}
	stat_inc(LS_RX_MATCHED);
	cookie = bpf_get_socket_cookie(ctx);
	if (!ip_ts) {
		/* No hook at the IP layer on this kernel: "driver+ip". */
		record(cookie, RX_DRIVER, now - drv_ts);
		return;
	}
	if (drv_ts && drv_ts <= ip_ts)
		record(cookie, RX_DRIVER, ip_ts - drv_ts);
	record(cookie, RX_IP, now - ip_ts);
}

/* TCP layer takes it: cgroup ingress runs inside tcp_v4_rcv/tcp_v6_rcv,
 * right after the socket lookup and before the socket's backlog, so this is
 * also where a packet is first tied to its flow. Starts the rx tcp stage:
 * the segment's last byte is timed if none of the socket's is yet. */
SEC("cgroup_skb/ingress")
int on_tcp_ingress(struct __sk_buff *ctx)
{
	struct bpf_sock *sk = ctx->sk;
	const struct sk_buff *skb;
	struct lat_probes *p;
	__u64 now = 0;
	struct hdr h;
	__u32 end;

	if (!sk)
		return 1;
	/* Both stages ending or starting here time only sampled packets: the
	 * others leave after a few loads. The rx tcp stage times the packets
	 * the per-skb stages time. */
	skb = bpf_cast_to_kern_ctx(ctx);
	if (!rx_hdr(skb, &h) || !sampled(&h))
		return 1;
	sk = bpf_sk_fullsock(sk);
	if (!sk || sk->protocol != IPPROTO_TCP)
		return 1;
	if (track_skbs) {
		now = bpf_ktime_get_ns();
		rx_skb_done(skb, ctx, now);
	}
	if (h.payload <= 0 || sk->state == TCP_LISTEN)
		return 1;
	p = probes_of(sk, bpf_get_socket_cookie(ctx), true, true);
	if (!p || p->rx_tcp.ts)
		return 1;
	end = h.seq + (__u32)h.payload;
	if (!before(RO(struct tcp_sock, skb->sk)->rcv_nxt, end)) /* a duplicate: nothing new to queue */
		return 1;
	p->rx_tcp.seq = end;
	p->rx_tcp.ts = now ? now : bpf_ktime_get_ns();
	return 1;
}

/* ---- receive: tcp -> queued -> read, matched by sequence number -------- */

/* Data queued on the socket: time the TCP stage's timed byte out, and time
 * the last byte queued so far until a read call copies it (if the sampling
 * picks that byte and none of the socket's is timed yet). */
static __always_inline void rx_queued(const struct sock *sk, bool storage)
{
	const struct tcp_sock *tp = RO(struct tcp_sock, sk);
	__u64 cookie = cookie_of(RO(struct sock, sk)), now = 0;
	struct lat_probes *p = probes_of((void *)sk, cookie, false, storage);
	__u32 rcv_nxt = tp->rcv_nxt;

	if (p && p->rx_tcp.ts && !before(rcv_nxt, p->rx_tcp.seq)) {
		now = bpf_ktime_get_ns();
		record(cookie, RX_TCP, now - p->rx_tcp.ts);
		p->rx_tcp.ts = 0;
		stat_inc(LS_PROBE_DONE);
	}
	if ((p && p->rx_app.ts) || rcv_nxt == tp->copied_seq || (p && p->rx_app.n && !sampled_x(rcv_nxt)))
		return;
	if (!p) {
		ask_cookie((void *)sk, storage);
		p = probes_of((void *)sk, cookie, true, storage);
		if (!p)
			return;
	}
	p->rx_app.seq = rcv_nxt;
	p->rx_app.n++;
	p->rx_app.ts = now ? now : bpf_ktime_get_ns();
}

/* tcp_data_ready -> sk->sk_data_ready (the tracepoint fires for every protocol). */
SEC("tp_btf/sk_data_ready")
int BPF_PROG(on_data_ready, const struct sock *sk)
{
	if (sk->sk_protocol != IPPROTO_TCP || sk->__sk_common.skc_state == TCP_LISTEN)
		return 0;
	rx_queued(DATA_READY_SK(sk), true);
	return 0;
}

SEC("fentry/tcp_data_ready")
int BPF_PROG(fe_tcp_data_ready, struct sock *sk)
{
	rx_queued(sk, true);
	return 0;
}

SEC("kprobe/tcp_data_ready")
int BPF_KPROBE(kp_tcp_data_ready, struct sock *sk)
{
	rx_queued(RO(struct sock, sk), false);
	return 0;
}

static __always_inline void rx_app_done(struct sock *sk, int copied, bool storage)
{
	struct lat_probes *p;
	__u32 seq_after;

	p = probes_of(sk, cookie_of(RO(struct sock, sk)), false, storage);
	if (!p || !p->rx_app.ts)
		return;
	seq_after = RO(struct tcp_sock, sk)->copied_seq;
	if (before(seq_after, p->rx_app.seq)) /* not read yet */
		return;
	if (before(seq_after - (__u32)copied, p->rx_app.seq)) {
		record(cookie_of(RO(struct sock, sk)), RX_APP, bpf_ktime_get_ns() - p->rx_app.ts);
		stat_inc(LS_PROBE_DONE);
	} else {
		stat_inc(LS_PROBE_MISSED); /* consumed without a read call (splice, zerocopy) */
	}
	p->rx_app.ts = 0;
}

/* A read call returned (sock_recvmsg): copied_seq already covers what it copied. */
SEC("tp_btf/sock_recv_length")
int BPF_PROG(on_recv, struct sock *sk, int ret, int flags)
{
	if (ret <= 0 || (flags & MSG_PEEK) || sk->sk_protocol != IPPROTO_TCP)
		return 0;
	rx_app_done(sk, ret, true);
	return 0;
}

/* End of tcp_recvmsg (and of splice/tcp_read_sock): copied_seq is updated. */
SEC("fentry/tcp_cleanup_rbuf")
int BPF_PROG(fe_tcp_cleanup_rbuf, struct sock *sk, int copied)
{
	if (copied > 0)
		rx_app_done(sk, copied, true);
	return 0;
}

SEC("kprobe/tcp_cleanup_rbuf")
int BPF_KPROBE(kp_tcp_cleanup_rbuf, struct sock *sk, int copied)
{
	if (copied > 0)
		rx_app_done(sk, copied, false);
	return 0;
}

/* ---- transmit: write accepted -> leaves TCP / device layer, by sequence - */

/* A write hands bytes to TCP: time write_seq, the next byte it appends, if
 * the sampling picks it and none of the socket's is timed yet. Restamped
 * while write_seq stays the same, so time blocked waiting for send-buffer
 * space is not counted as TCP time. */
static __always_inline void tx_accept(const struct sock *sk, bool storage)
{
	__u64 cookie = cookie_of(RO(struct sock, sk));
	struct lat_probes *p = probes_of((void *)sk, cookie, false, storage);
	__u32 ws = RO(struct tcp_sock, sk)->write_seq;

	if (!p) {
		/* Once per socket: the cookie is asked for here so that net_dev_queue
		 * (where the helper refuses skb->sk) can read it. */
		ask_cookie((void *)sk, storage);
		p = probes_of((void *)sk, cookie, true, storage);
		if (!p)
			return;
	}
	if (p->tx.ts) {
		if (p->tx.seq == ws)
			p->tx.ts = bpf_ktime_get_ns();
		return;
	}
	if (p->tx.n && !sampled_x(ws)) /* a socket's first write is always timed */
		return;
	p->tx.seq = ws;
	p->tx.n++;
	p->tx.ts = bpf_ktime_get_ns();
}

/* Each round of tcp_sendmsg_locked's copy loop, before it appends. */
SEC("tp_btf/tcp_sendmsg_locked")
int BPF_PROG(on_sendmsg, const struct sock *sk, const struct msghdr *msg,
	     const struct sk_buff *skb, int size_goal)
{
	tx_accept(sk, true);
	return 0;
}

SEC("fentry/tcp_sendmsg_locked")
int BPF_PROG(fe_tcp_sendmsg_locked, struct sock *sk)
{
	tx_accept(sk, true);
	return 0;
}

SEC("kprobe/tcp_sendmsg_locked")
int BPF_KPROBE(kp_tcp_sendmsg_locked, struct sock *sk)
{
	struct sock *s = RO(struct sock, sk);

	if (cookie_of(s)) /* 0 until something asked: cgroup ingress does on the first packet received */
		tx_accept(s, false);
	return 0;
}

/* Does this outgoing segment carry the socket's timed byte? Completes the
 * sample into `stage` if so; drops it if the segment is already past it. */
static __always_inline void tx_probe_match(void *sk, __u64 cookie, __u32 stage, const struct hdr *h,
					   bool storage)
{
	struct lat_probes *p = probes_of(sk, cookie, false, storage);
	__u32 S;

	if (!p || !p->tx.ts)
		return;
	S = p->tx.seq;
	if (before(S, h->seq)) {
		p->tx.ts = 0; /* it left through a path we do not see */
		stat_inc(LS_PROBE_MISSED);
	} else if (h->payload > 0 && before(S, h->seq + (__u32)h->payload)) {
		record(cookie, stage, bpf_ktime_get_ns() - p->tx.ts);
		p->tx.ts = 0;
		stat_inc(LS_PROBE_DONE);
	}
}

/* Leaves TCP: the queue_xmit call of __tcp_transmit_skb, with the clone that
 * is actually sent (so clones and retransmissions are separate skbs here). */
static __always_inline void tx_leave_tcp(struct sock *sk, const struct sk_buff *skb, bool storage)
{
	__u64 addr = (__u64)skb, cookie = cookie_of(RO(struct sock, sk)), now;
	struct tx_skb *e, n = {};
	struct hdr h;

	tx_hdr(skb, &h);
	tx_probe_match(sk, cookie, TX_TCP, &h, storage);
	if (!sampled(&h))
		return;
	now = bpf_ktime_get_ns();
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
	tx_leave_tcp(sk, skb, true);
	return 0;
}

SEC("fentry/inet6_csk_xmit")
int BPF_PROG(fe_inet6_csk_xmit, struct sock *sk, struct sk_buff *skb)
{
	tx_leave_tcp(sk, skb, true);
	return 0;
}

SEC("kprobe/ip_queue_xmit")
int BPF_KPROBE(kp_ip_queue_xmit, struct sock *sk, struct sk_buff *skb)
{
	tx_leave_tcp(sk, RO(struct sk_buff, skb), false);
	return 0;
}

SEC("kprobe/inet6_csk_xmit")
int BPF_KPROBE(kp_inet6_csk_xmit, struct sock *sk, struct sk_buff *skb)
{
	tx_leave_tcp(sk, RO(struct sk_buff, skb), false);
	return 0;
}

/* ---- transmit: device layer -> qdisc -> driver, by skb address ---------- */

/* Handed to the device layer (__dev_queue_xmit), before the qdisc. */
SEC("tp_btf/net_dev_queue")
int BPF_PROG(on_dev_queue, struct sk_buff *skb)
{
	__u64 addr = (__u64)skb, cookie, now, ip_ts = 0;
	struct sock *sk = skb->sk;
	struct tx_skb *e, n = {};
	struct hdr h;
	__u8 state;

	if (!sk)
		return 0;
	state = sk->__sk_common.skc_state;
	if (state == TCP_TIME_WAIT || state == TCP_NEW_SYN_RECV || sk->sk_protocol != IPPROTO_TCP)
		return 0;
	cookie = cookie_of(sk);
	tx_hdr(skb, &h);
	if (!tx_split_ip && h.payload > 0)
		/* No hook between TCP and IP: the TCP stage runs to here ("tcp+ip"). */
		tx_probe_match(sk, cookie, TX_TCP, &h, true);
	if (!track_skbs || !sampled(&h))
		return 0;
	now = bpf_ktime_get_ns();
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
	if (tx_split_ip && ip_ts && now - ip_ts <= max_skb_age_ns)
		record(cookie, TX_IP, now - ip_ts);
	return 0;
}

/* The driver starts sending it (dev_hard_start_xmit -> ndo_start_xmit). Any
 * skb passes here; the header is only read to repeat the sampling choice (a
 * non-TCP skb that passes it finds no entry). */
SEC("tp_btf/net_dev_start_xmit")
int BPF_PROG(on_start_xmit, const struct sk_buff *skb, const struct net_device *dev)
{
	__u64 addr = (__u64)skb, now;
	struct drv_slot *slot;
	struct tx_skb *e;
	__u32 zero = 0;
	struct hdr h;

	if (!skb->sk)
		return 0;
	tx_hdr(skb, &h);
	if (!sampled(&h))
		return 0;
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
	if (slot->qdisc_ns <= max_skb_age_ns)
		record(slot->cookie, TX_QDISC, slot->qdisc_ns);
	else
		stat_inc(LS_TX_STALE);
	record(slot->cookie, TX_DRIVER, bpf_ktime_get_ns() - slot->ts);
	return 0;
}

/* ---- flow lifetime ------------------------------------------------------- */

SEC("tp_btf/tcp_destroy_sock")
int BPF_PROG(on_destroy, struct sock *sk)
{
	__u64 cookie = cookie_of(sk);
	struct lat_flow *f;

	if (!cookie)
		return 0;
	if (probe_map)
		bpf_map_delete_elem(&probes, &cookie);
	f = flow_of(cookie, false);
	if (f)
		f->closed_ns = bpf_ktime_get_ns();
	return 0;
}
