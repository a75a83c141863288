// SPDX-License-Identifier: GPL-2.0
/* Packet-level engine, kernel side: where a packet's time goes, stage by stage.
 *
 * Receive:  driver -> ip -> tcp -> app      Transmit: tcp -> ip -> qdisc -> driver
 *
 * Every boundary is a timestamp; a stage's time is the difference between two
 * boundaries of the same packet, folded into a log-linear histogram in the
 * kernel (per flow and stage, keyed by socket cookie, and host-wide). Nothing
 * goes to user space per packet.
 *
 * Windows. User space attaches these programs only for short windows (within a
 * CPU budget) unless asked to time continuously. While a window is open
 * (control.open), every packet that starts a stage is timed; after it closes,
 * the programs that end stages stay attached until the packets already started
 * have finished (the `pending` counters say when), so long stages are not cut
 * short. Every start is stamped with the window's generation: an end whose start
 * belongs to an earlier window is not recorded.
 *
 * Matching the same packet across boundaries:
 *  - below TCP (rx driver/ip, tx qdisc/driver) by skb address, in bounded LRU
 *    maps. A start overwrites whatever an earlier skb at that address left
 *    (counted as "reused": that skb never finished), a finish consumes its
 *    entry, and entries older than max_skb_age_ns are not trusted (counted).
 *    TX clones are not a problem there: the address is taken after TCP cloned.
 *  - at and above TCP by (socket, sequence number): every packet a socket has
 *    in a stage has a slot in socket storage (struct lat_probes) holding the
 *    sequence number that finishes it; the end hook finishes every slot it
 *    covers. Retransmissions, GRO merges, coalescing and skb reallocation
 *    cannot confuse a sequence number. When a socket's slots are full the
 *    newest slot takes the packet as well (exact sum, binned at the mean;
 *    counted as merged).
 *
 * Hooks are chosen per kernel by the loader (tcptop/engines/core/latency.py):
 * tracepoints, tp_btf, cgroup_skb here; fentry/kprobe variants on the precise
 * kernel functions where the kernel allows them. Every variant is a thin
 * wrapper around the same handler.
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
const volatile __u8 probe_map = 0;    /* per-socket slots live in the `probes` hash, not socket storage */

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

/* Per flow and stage histograms (~1.1 KiB each), allocated at a flow's first
 * sample in a window and deleted by user space when it takes the window's
 * figures, so the map holds one window's flows; sized by the loader. A full map
 * is counted in LS_FLOWS_FULL (the host-wide histogram still gets the sample). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 65536);
	__type(key, struct lat_key);
	__type(value, struct lat_flow_hist);
} flows SEC(".maps");

/* Per-socket slots (see struct lat_probes). */
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

/* Started minus finished packets (two's complement: a packet may start on one
 * CPU and finish on another), per group of long stages. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, PEND_MAX);
	__type(key, enum lat_pending);
	__type(value, __u64);
} pending SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct lat_control);
} control SEC(".maps");

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

/* Sources of the zero values new entries start from (too big for the stack). */
static struct lat_flow_hist zero_hist;
static struct lat_probes zero_probes;
static const __u8 sub_starts[8] = LAT_SUB_STARTS;

/* The window as this run of a program sees it. */
struct win {
	__u32 gen;
	__u32 open;
};

static __always_inline void stat_add(__u32 idx, __u64 n)
{
	__u64 *v = bpf_map_lookup_elem(&stats, &idx);

	if (v)
		*v += n;
}

static __always_inline void stat_inc(__u32 idx)
{
	stat_add(idx, 1);
}

static __always_inline void pend_add(__u32 idx, __s64 n)
{
	__u64 *v = bpf_map_lookup_elem(&pending, &idx);

	if (v)
		*v += (__u64)n;
}

/* Every program starts here: counts its run (what the budget is spent on) and
 * reads the window. false: no window at all (user space is detaching). */
static __always_inline bool enter(struct win *w)
{
	__u32 zero = 0;
	struct lat_control *c = bpf_map_lookup_elem(&control, &zero);

	stat_inc(LS_RUNS);
	if (!c || !c->gen)
		return false;
	w->gen = c->gen;
	w->open = c->open;
	return true;
}

static __always_inline bool before(__u32 a, __u32 b)
{
	return (__s32)(a - b) < 0;
}

static __always_inline __u32 msb64(__u64 v)
{
	__u32 r, shift;

	r = (v > 0xFFFFFFFFULL) << 5; v >>= r;
	shift = (v > 0xFFFF) << 4; v >>= shift; r |= shift;
	shift = (v > 0xFF) << 3; v >>= shift; r |= shift;
	shift = (v > 0xF) << 2; v >>= shift; r |= shift;
	shift = (v > 0x3) << 1; v >>= shift; r |= shift;
	return r | (__u32)(v >> 1);
}

/* Log-linear bucket of a duration (see latency.h). */
static __always_inline __u32 bucket_of(__u64 ns)
{
	__u32 m, mant, sub = 0, idx, k;

	if (ns < (1ULL << LAT_MIN_SHIFT))
		return 0;
	m = msb64(ns);
	mant = (__u32)(ns >> (m - 6)) & 63;
#pragma unroll
	for (k = 1; k < 8; k++)
		sub += mant >= sub_starts[k];
	idx = 1 + ((m - LAT_MIN_SHIFT) << 3) + sub;
	return idx < LAT_BUCKETS ? idx : LAT_BUCKETS - 1;
}

static __always_inline struct lat_flow_hist *flow_hist(__u64 cookie, __u32 stage)
{
	struct lat_key k = {.cookie = cookie, .stage = stage};
	struct lat_flow_hist *f = bpf_map_lookup_elem(&flows, &k);

	if (f)
		return f;
	/* May fail because the map is full, or because another CPU won the race. */
	bpf_map_update_elem(&flows, &k, &zero_hist, BPF_NOEXIST);
	f = bpf_map_lookup_elem(&flows, &k);
	if (!f)
		stat_inc(LS_FLOWS_FULL);
	return f;
}

/* Keeps `v` within `mask` in a way the compiler cannot fold away, so the
 * verifier sees the bound at the access (a clamp alone it loses). */
static __always_inline __u32 masked(__u32 v, __u32 mask)
{
	asm volatile("%0 &= %1" : "+r"(v) : "i"(mask));
	return v;
}

/* n packets that spent total_ns in `stage` (n > 1: merged slots, binned at
 * their mean), into the host-wide histogram and, when the socket is known
 * (cookie != 0), the flow's. A global function: the verifier checks it once,
 * not once per call site (the slot loops call it up to 16 times). */
__noinline int record_n(__u64 cookie, __u32 stage, __u64 total_ns, __u32 n)
{
	__u32 b = masked(bucket_of(n > 1 ? total_ns / n : total_ns), LAT_BUCKETS - 1);
	struct lat_hist *h = bpf_map_lookup_elem(&host, &stage);
	struct lat_flow_hist *f;

	if (h) {
		h->slots[b] += n;
		h->sum_ns += total_ns;
	}
	if (!cookie)
		return 0;
	f = flow_hist(cookie, stage);
	if (f) {
		__sync_fetch_and_add(&f->slots[b], n);
		__sync_fetch_and_add(&f->sum_ns, total_ns);
		if (!f->groups[b >> 3])
			f->groups[b >> 3] = 1;
	}
	return 0;
}

static __always_inline void record(__u64 cookie, __u32 stage, __u64 ns)
{
	record_n(cookie, stage, ns, 1);
}

/* The cookie the kernel already gave this socket (0: nobody asked yet). Our
 * TCP-level hooks ask (bpf_get_socket_cookie) before any of its data reaches
 * the lower stages, so reading it is enough there, from any program type. */
static __always_inline __u64 cookie_of(const struct sock *sk)
{
	return sk->__sk_common.skc_cookie.counter;
}

/* The socket's slots. `storage`: the program type may use socket storage
 * (tracing, cgroup); kprobe wrappers pass false and always use the hash,
 * which the loader then selects for every program (probe_map). */
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

/* ---- per-socket slots ---------------------------------------------------- */

/* A packet starts a sequence-matched stage: it takes a free slot (slots of a
 * closed window are freed on the way), or joins the newest one. */
static __always_inline void pend_push(struct lat_pend *ring, __u32 slots, __u8 *newest, __u32 seq,
				      __u64 now, __u16 gen, __u32 group)
{
	struct lat_pend *e;
	__u32 i, free = slots;

	for (i = 0; i < slots; i++) {
		e = &ring[i];
		if (e->n && e->gen != gen) {
			e->n = 0;
			stat_inc(LS_EXPIRED);
		}
		if (!e->n && free == slots)
			free = i;
	}
	if (free < slots) {
		e = &ring[free & (slots - 1)];
		e->ts_sum = now;
		e->seq = seq;
		e->n = 1;
		e->gen = gen;
		*newest = free;
	} else {
		e = &ring[*newest & (slots - 1)];
		if (e->n == 0xFFFF)
			return;
		e->ts_sum += now;
		e->seq = seq;
		e->n += 1;
		stat_inc(LS_PROBE_MERGED);
	}
	pend_add(group, 1);
}

/* The packets of a closed window, and (done) those finished: free their slot. */
static __always_inline void pend_free(struct lat_pend *e, __u32 group, bool counted)
{
	if (counted)
		pend_add(group, -(__s64)e->n);
	e->n = 0;
}

/* Free every slot of a closed window; true if `e` still belongs to this one. */
static __always_inline bool pend_live(struct lat_pend *e, __u16 gen)
{
	if (!e->n)
		return false;
	if (e->gen == gen)
		return true;
	e->n = 0;
	stat_inc(LS_EXPIRED);
	return false;
}

/* The stack reached `seq`: every slot whose packet ends at or before it has
 * finished the stage. */
static __always_inline void pend_finish(struct lat_pend *ring, __u32 slots, __u32 seq, __u64 cookie,
					__u32 stage, __u16 gen, __u32 group)
{
	struct lat_pend *e;
	__u64 now = 0;
	__u32 i;

	for (i = 0; i < slots; i++) {
		e = &ring[i];
		if (!pend_live(e, gen) || before(seq, e->seq))
			continue;
		if (!now)
			now = bpf_ktime_get_ns();
		record_n(cookie, stage, e->n * now - e->ts_sum, e->n);
		stat_add(LS_PROBE_DONE, e->n);
		pend_free(e, group, true);
	}
}

/* ---- the TCP header, read with plain loads ------------------------------ */

struct hdr {
	__u32 seq;      /* host order */
	__s32 payload;  /* bytes of data after the TCP header */
};

/* Fill `h` from the TCP header at `th`; `l3_len`: bytes from skb->data to it. */
static __always_inline void read_th(const struct sk_buff *skb, const unsigned char *th, __s32 l3_len,
				    struct hdr *h)
{
	const struct tcphdr *t = RO(struct tcphdr, th);
	__u8 doff = *((const __u8 *)t + 12) >> 4;

	h->seq = bpf_ntohl(t->seq);
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

/* Make sure the socket has its cookie (the lower hooks read it), when a
 * socket's slots are created. kprobe programs cannot ask; they read what others asked. */
static __always_inline void ask_cookie(void *sk, bool helper)
{
	if (helper)
		bpf_get_socket_cookie(sk);
}

/* ---- receive: driver -> ip -> tcp, matched by skb address ------------- */

/* A TCP skb enters the stack while a window is open: it is followed through
 * the per-skb stages to TCP, whenever it gets there. */
static __always_inline void rx_driver_start(const struct sk_buff *skb)
{
	__u64 addr = (__u64)skb, now;
	struct rx_skb *e, n = {};
	struct win w;
	struct hdr h;

	if (!enter(&w) || !w.open || !rx_hdr(skb, &h))
		return;
	now = bpf_ktime_get_ns();
	e = bpf_map_lookup_elem(&rx_skbs, &addr);
	if (e) {
		if ((e->driver_ts | e->ip_ts) && e->gen == w.gen)
			stat_inc(LS_RX_REUSED);
		e->driver_ts = now;
		e->ip_ts = 0;
		e->gen = w.gen;
	} else {
		n.driver_ts = now;
		n.gen = w.gen;
		bpf_map_update_elem(&rx_skbs, &addr, &n, BPF_ANY);
	}
	stat_inc(LS_RX_STARTED);
}

static __always_inline void rx_ip_start(const struct sk_buff *skb)
{
	__u64 addr = (__u64)skb;
	struct rx_skb *e, n = {};
	struct win w;
	struct hdr h;

	if (!enter(&w))
		return;
	e = bpf_map_lookup_elem(&rx_skbs, &addr);
	if (e && e->gen == w.gen && (e->driver_ts | e->ip_ts)) {
		/* Seen again (bridge, VLAN): the IP layer starts at the last core receive. */
		e->ip_ts = bpf_ktime_get_ns();
		return;
	}
	if (!w.open || !rx_hdr(skb, &h))
		return;
	n.ip_ts = bpf_ktime_get_ns();
	n.gen = w.gen;
	bpf_map_update_elem(&rx_skbs, &addr, &n, BPF_ANY);
	stat_inc(LS_RX_STARTED);
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

/* An skb reached TCP: close its driver and IP stages if it was timed. */
static __always_inline void rx_skb_done(const struct sk_buff *skb, struct __sk_buff *ctx,
					const struct win *w)
{
	__u64 addr = (__u64)skb, ip_ts, drv_ts, cookie, now;
	struct rx_skb *e;

	e = bpf_map_lookup_elem(&rx_skbs, &addr);
	if (!e || !(e->ip_ts | e->driver_ts) || e->gen != w->gen) {
		if (w->open)
			stat_inc(LS_RX_UNMATCHED);
		return;
	}
	now = bpf_ktime_get_ns();
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
 * also where a packet is first tied to its flow. While a window is open, a
 * segment with new data starts the rx tcp stage (until its last byte is queued). */
SEC("cgroup_skb/ingress")
int on_tcp_ingress(struct __sk_buff *ctx)
{
	struct bpf_sock *sk = ctx->sk;
	const struct sk_buff *skb;
	struct lat_probes *p;
	struct win w;
	struct hdr h;
	__u32 end;

	if (!enter(&w) || !sk)
		return 1;
	sk = bpf_sk_fullsock(sk);
	if (!sk || sk->protocol != IPPROTO_TCP)
		return 1;
	skb = bpf_cast_to_kern_ctx(ctx);
	if (track_skbs)
		rx_skb_done(skb, ctx, &w);
	if (!w.open || sk->state == TCP_LISTEN || !rx_hdr(skb, &h) || h.payload <= 0)
		return 1;
	end = h.seq + (__u32)h.payload;
	if (!before(RO(struct tcp_sock, skb->sk)->rcv_nxt, end)) /* a duplicate: nothing new to queue */
		return 1;
	p = probes_of(sk, bpf_get_socket_cookie(ctx), true, true);
	if (p)
		pend_push(p->rx_tcp, RX_TCP_SLOTS, &p->newest[0], end, bpf_ktime_get_ns(), w.gen, PEND_RX_TCP);
	return 1;
}

/* ---- receive: tcp -> queued -> read, matched by sequence number -------- */

/* Data queued on the socket: the segments now below rcv_nxt finish the TCP
 * stage, and (while a window is open) the data up to rcv_nxt starts waiting
 * for a read call. */
static __always_inline void rx_queued(const struct sock *sk, bool storage)
{
	const struct tcp_sock *tp = RO(struct tcp_sock, sk);
	__u64 cookie = cookie_of(RO(struct sock, sk));
	struct lat_probes *p;
	struct lat_pend *last;
	__u32 rcv_nxt = tp->rcv_nxt;
	struct win w;

	if (!enter(&w))
		return;
	p = probes_of((void *)sk, cookie, false, storage);
	if (p)
		pend_finish(p->rx_tcp, RX_TCP_SLOTS, rcv_nxt, cookie, RX_TCP, w.gen, PEND_RX_TCP);
	if (!w.open || rcv_nxt == tp->copied_seq)
		return;
	if (!p) {
		ask_cookie((void *)sk, storage);
		p = probes_of((void *)sk, cookie, true, storage);
		if (!p)
			return;
	}
	last = &p->rx_app[p->newest[1] & (RX_APP_SLOTS - 1)];
	if (last->n && last->gen == (__u16)w.gen && last->seq == rcv_nxt)
		return; /* nothing new since the last call (e.g. a FIN) */
	pend_push(p->rx_app, RX_APP_SLOTS, &p->newest[1], rcv_nxt, bpf_ktime_get_ns(), w.gen, PEND_RX_APP);
}

/* tcp_data_ready -> sk->sk_data_ready (the tracepoint fires for every protocol). */
SEC("tp_btf/sk_data_ready")
int BPF_PROG(on_data_ready, const struct sock *sk)
{
	if (sk->sk_protocol != IPPROTO_TCP || sk->__sk_common.skc_state == TCP_LISTEN) {
		struct win w;

		enter(&w); /* counted all the same */
		return 0;
	}
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

/* A read call copied `copied` bytes: copied_seq is already past them. Every
 * packet that now lies below copied_seq was read, by this call if its last byte
 * was among the bytes it copied, else earlier without a call we see (splice,
 * zero-copy receive): dropped and counted. */
static __always_inline void rx_app_done(struct sock *sk, int copied, bool storage)
{
	__u64 cookie = cookie_of(RO(struct sock, sk)), now = 0;
	__u32 seq_after, seq_before, i;
	struct lat_probes *p;
	struct lat_pend *e;
	struct win w;

	if (!enter(&w))
		return;
	p = probes_of(sk, cookie, false, storage);
	if (!p)
		return;
	seq_after = RO(struct tcp_sock, sk)->copied_seq;
	seq_before = seq_after - (__u32)copied;
	for (i = 0; i < RX_APP_SLOTS; i++) {
		e = &p->rx_app[i];
		if (!pend_live(e, w.gen) || before(seq_after, e->seq))
			continue;
		if (before(seq_before, e->seq)) {
			if (!now)
				now = bpf_ktime_get_ns();
			record_n(cookie, RX_APP, e->n * now - e->ts_sum, e->n);
			stat_add(LS_PROBE_DONE, e->n);
		} else {
			stat_add(LS_PROBE_MISSED, e->n);
		}
		pend_free(e, PEND_RX_APP, true);
	}
}

/* A read call returned (sock_recvmsg): copied_seq already covers what it copied. */
SEC("tp_btf/sock_recv_length")
int BPF_PROG(on_recv, struct sock *sk, int ret, int flags)
{
	if (ret <= 0 || (flags & MSG_PEEK) || sk->sk_protocol != IPPROTO_TCP) {
		struct win w;

		enter(&w);
		return 0;
	}
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

/* A round of a write hands bytes to TCP (while a window is open): it starts
 * the tx tcp stage at write_seq, the first byte it appends. A round that
 * appended nothing (it waited for send-buffer space) is restamped, so that
 * wait is not counted as time in TCP. */
static __always_inline void tx_accept(const struct sock *sk, bool storage)
{
	__u64 cookie = cookie_of(RO(struct sock, sk));
	__u32 ws = RO(struct tcp_sock, sk)->write_seq;
	struct lat_probes *p;
	struct lat_pend *last;
	struct win w;

	if (!enter(&w) || !w.open)
		return;
	p = probes_of((void *)sk, cookie, false, storage);
	if (!p) {
		/* Once per socket: the cookie is asked for here so that net_dev_queue
		 * (where the helper refuses skb->sk) can read it. */
		ask_cookie((void *)sk, storage);
		p = probes_of((void *)sk, cookie, true, storage);
		if (!p)
			return;
	}
	last = &p->tx[p->newest[2] & (TX_SLOTS - 1)];
	if (last->n == 1 && last->gen == (__u16)w.gen && last->seq == ws) {
		last->ts_sum = bpf_ktime_get_ns();
		return;
	}
	pend_push(p->tx, TX_SLOTS, &p->newest[2], ws, bpf_ktime_get_ns(), w.gen, PEND_TX_TCP);
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

	if (cookie_of(s)) { /* 0 until something asked: cgroup ingress does on the first packet received */
		tx_accept(s, false);
	} else {
		struct win w;

		enter(&w);
	}
	return 0;
}

/* An outgoing segment [seq, seq + payload) passes: the write rounds whose first
 * byte it carries finish `stage`; those already behind it left unseen. */
static __always_inline void tx_seq_done(void *sk, __u64 cookie, __u32 stage, const struct hdr *h,
					const struct win *w, bool storage)
{
	struct lat_probes *p = probes_of(sk, cookie, false, storage);
	struct lat_pend *e;
	__u64 now = 0;
	__u32 i;

	if (!p)
		return;
	for (i = 0; i < TX_SLOTS; i++) {
		e = &p->tx[i];
		if (!pend_live(e, w->gen))
			continue;
		if (before(e->seq, h->seq)) {
			stat_add(LS_PROBE_MISSED, e->n);
		} else if (h->payload > 0 && before(e->seq, h->seq + (__u32)h->payload)) {
			if (!now)
				now = bpf_ktime_get_ns();
			record_n(cookie, stage, e->n * now - e->ts_sum, e->n);
			stat_add(LS_PROBE_DONE, e->n);
		} else {
			continue;
		}
		pend_free(e, PEND_TX_TCP, true);
	}
}

/* Leaves TCP: the queue_xmit call of __tcp_transmit_skb, with the clone that
 * is actually sent (so clones and retransmissions are separate skbs here). */
static __always_inline void tx_leave_tcp(struct sock *sk, const struct sk_buff *skb, bool storage)
{
	__u64 addr = (__u64)skb, cookie = cookie_of(RO(struct sock, sk));
	struct tx_skb *e, n = {};
	struct win w;
	struct hdr h;

	if (!enter(&w))
		return;
	tx_hdr(skb, &h);
	tx_seq_done(sk, cookie, TX_TCP, &h, &w, storage);
	if (!w.open)
		return;
	e = bpf_map_lookup_elem(&tx_skbs, &addr);
	if (e) {
		e->cookie = cookie;
		e->ip_ts = bpf_ktime_get_ns();
		e->queue_ts = 0;
		e->gen = w.gen;
		return;
	}
	n.cookie = cookie;
	n.ip_ts = bpf_ktime_get_ns();
	n.gen = w.gen;
	bpf_map_update_elem(&tx_skbs, &addr, &n, BPF_ANY);
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

/* A full TCP socket's skb (not a request or time-wait socket's, not another protocol's). */
static __always_inline bool tcp_full_sk(const struct sock *sk)
{
	__u8 state = sk->__sk_common.skc_state;

	return state != TCP_TIME_WAIT && state != TCP_NEW_SYN_RECV && sk->sk_protocol == IPPROTO_TCP;
}

static __always_inline __u16 gso_segs_of(const struct sk_buff *skb)
{
	return RO(struct skb_shared_info, skb->head + skb->end)->gso_segs;
}

/* Handed to the device layer (__dev_queue_xmit), before the qdisc. */
SEC("tp_btf/net_dev_queue")
int BPF_PROG(on_dev_queue, struct sk_buff *skb)
{
	__u64 addr = (__u64)skb, cookie, now, ip_ts = 0;
	struct sock *sk = skb->sk;
	struct tx_skb *e, n = {};
	struct win w;
	struct hdr h;

	if (!enter(&w) || !sk || !tcp_full_sk(sk))
		return 0;
	cookie = cookie_of(sk);
	tx_hdr(skb, &h);
	if (!tx_split_ip && h.payload > 0)
		/* No hook between TCP and IP: the TCP stage runs to here ("tcp+ip"). */
		tx_seq_done(sk, cookie, TX_TCP, &h, &w, true);
	if (!track_skbs)
		return 0;
	e = bpf_map_lookup_elem(&tx_skbs, &addr);
	if (e && e->gen == w.gen && (e->ip_ts || e->queue_ts)) {
		/* Timed since it left TCP (split hook), or an earlier skb at this address
		 * that never reached the driver. */
		if (e->queue_ts) {
			stat_inc(LS_TX_REUSED);
			pend_add(PEND_QDISC, -1);
		}
		ip_ts = e->ip_ts;
	} else if (!w.open) {
		return 0;
	}
	now = bpf_ktime_get_ns();
	if (e) {
		/* skb addresses come back within a few packets: reuse the entry in place (an
		 * update would allocate from the LRU lists every packet) */
		e->cookie = cookie;
		e->ip_ts = 0;
		e->queue_ts = now;
		e->gen = w.gen;
		e->gso_segs = gso_segs_of(skb);
	} else {
		n.cookie = cookie;
		n.queue_ts = now;
		n.gen = w.gen;
		n.gso_segs = gso_segs_of(skb);
		bpf_map_update_elem(&tx_skbs, &addr, &n, BPF_ANY);
	}
	stat_inc(LS_TX_QUEUED);
	if (gso_segs_of(skb) > 1)
		stat_inc(LS_GSO_QUEUED);
	pend_add(PEND_QDISC, 1);
	if (tx_split_ip && ip_ts && now - ip_ts <= max_skb_age_ns)
		record(cookie, TX_IP, now - ip_ts);
	return 0;
}

#define NO_QDISC (~0ULL)

/* The driver starts sending it (dev_hard_start_xmit -> ndo_start_xmit). A TCP skb
 * queued while a window was open finishes its qdisc stage here; every TCP skb
 * that gets here while a window is open starts the driver stage, also one a
 * qdisc made out of a bigger one (which has no qdisc time to give). */
SEC("tp_btf/net_dev_start_xmit")
int BPF_PROG(on_start_xmit, const struct sk_buff *skb, const struct net_device *dev)
{
	__u64 addr = (__u64)skb, now, qdisc_ns = NO_QDISC, cookie;
	struct sock *sk = skb->sk;
	struct drv_slot *slot;
	struct tx_skb *e;
	__u32 zero = 0;
	struct win w;

	if (!enter(&w) || !sk)
		return 0;
	slot = bpf_map_lookup_elem(&drv, &zero);
	if (!slot)
		return 0;
	slot->skb = 0;
	now = bpf_ktime_get_ns();
	e = bpf_map_lookup_elem(&tx_skbs, &addr);
	if (e && e->queue_ts) {
		if (e->gen == w.gen) {
			qdisc_ns = now - e->queue_ts;
			stat_inc(LS_TX_MATCHED);
			if (e->gso_segs > 1)
				stat_inc(LS_GSO_MATCHED);
			pend_add(PEND_QDISC, -1);
		} else {
			stat_inc(LS_EXPIRED);
		}
		e->queue_ts = 0;
		cookie = e->cookie;
		barrier_var(cookie); /* one load per pointer type: the verifier refuses a shared one */
	} else if (w.open && tcp_full_sk(sk)) {
		cookie = cookie_of(sk);
		barrier_var(cookie);
	} else {
		return 0;
	}
	slot->skb = addr;
	slot->ts = now;
	slot->cookie = cookie;
	slot->qdisc_ns = qdisc_ns;
	return 0;
}

/* The driver's transmit routine returned. */
SEC("tp_btf/net_dev_xmit")
int BPF_PROG(on_xmit, struct sk_buff *skb, int rc, struct net_device *dev, unsigned int len)
{
	struct drv_slot *slot;
	__u32 zero = 0;
	struct win w;

	if (!enter(&w))
		return 0;
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
	else if (slot->qdisc_ns != NO_QDISC)
		stat_inc(LS_TX_STALE);
	record(slot->cookie, TX_DRIVER, bpf_ktime_get_ns() - slot->ts);
	return 0;
}

/* ---- flow lifetime ------------------------------------------------------- */

/* Packets of a socket being destroyed will never finish: drop their slots, so
 * the window does not wait for them. */
static __always_inline void drop_ring(struct lat_pend *ring, __u32 slots, __u16 gen, __u32 group)
{
	__u32 i;

	for (i = 0; i < slots; i++) {
		if (!pend_live(&ring[i], gen))
			continue;
		stat_add(LS_PROBE_MISSED, ring[i].n);
		pend_free(&ring[i], group, true);
	}
}

SEC("tp_btf/tcp_destroy_sock")
int BPF_PROG(on_destroy, struct sock *sk)
{
	__u64 cookie = cookie_of(sk);
	struct lat_probes *p;
	struct win w;

	if (!enter(&w))
		return 0;
	p = probes_of(sk, cookie, false, true);
	if (p) {
		drop_ring(p->rx_tcp, RX_TCP_SLOTS, w.gen, PEND_RX_TCP);
		drop_ring(p->rx_app, RX_APP_SLOTS, w.gen, PEND_RX_APP);
		drop_ring(p->tx, TX_SLOTS, w.gen, PEND_TX_TCP);
	}
	if (probe_map && cookie)
		bpf_map_delete_elem(&probes, &cookie);
	return 0;
}
