// SPDX-License-Identifier: GPL-2.0
/* BCC packet-level engine, kernel side: the device-layer stages, timed by skb address.
 *
 *   rx driver: the driver hands an skb over (netif_rx, napi_gro_*_entry, netif_receive_skb*_entry)
 *              -> core receive takes it (netif_receive_skb), where IP starts
 *   tx qdisc:  handed to the device layer (net_dev_queue) -> the driver starts sending (net_dev_start_xmit)
 *   tx driver: net_dev_start_xmit -> net_dev_xmit (same CPU: the driver runs with bottom halves off)
 *
 * Only tracepoint arguments are read (their layout comes from the running kernel's tracefs):
 * the skb address, used as an opaque key. These tracepoints name no socket and no transport
 * protocol, so the stages cover every packet of the host, not only TCP, and belong to no
 * flow. Histograms stay in the kernel, in the CO-RE engine's log-linear buckets of
 * nanoseconds (bpf/latency.h, tcptop/engines/histogram.py): bucket 0 is [0, 128 ns), then
 * 8 sub-buckets per power of two, none more than 9.7 % wide.
 *
 * 1 packet in SAMPLE is timed: every SAMPLE-th on each CPU at a stage's first hook, which
 * alone writes the map; the end hooks find only those (a miss is a cheap lookup). A counter,
 * not a hash of the address: the slab hands the same addresses back in a rhythm.
 *
 * Options as -D flags: HAVE_TP_<event> for each tracepoint this kernel has, MAX_SKB_AGE_NS,
 * SAMPLE (a power of two).
 */
#include <uapi/linux/bpf.h>

#define BUCKETS 256
#define MIN_SHIFT 7

#define RX_DRIVER 0
#define TX_QDISC 1
#define TX_DRIVER 2
#define STAGES 3

struct hist {
	u64 slots[BUCKETS];
	u64 sum_ns;
	u64 max_ns;
};
BPF_PERCPU_ARRAY(host, struct hist, STAGES);

/* skbs between two boundaries, by address: a driver queue's worth and more; LRU drops the
 * oldest, which are those that never reached the next boundary (GRO-merged, dropped). */
BPF_TABLE("lru_hash", u64, u64, rx_skbs, 16384);
BPF_TABLE("lru_hash", u64, u64, tx_skbs, 16384);

/* One counter per first hook (a loopback packet passes both, and would always land on
 * the same parity of a shared one). */
#define TICK_RX 0
#define TICK_TX 1
BPF_PERCPU_ARRAY(ticks, u32, 2);

/* Whether this CPU's next packet at a first hook is one of the 1 in SAMPLE timed. */
static __always_inline bool sampled(int which)
{
	u32 *t = ticks.lookup(&which);

	if (!t)
		return false;
	*t += 1;
	return (*t & (SAMPLE - 1)) == 0;
}

struct drv_slot {
	u64 skb;
	u64 ts;
};
BPF_PERCPU_ARRAY(drv, struct drv_slot, 1);

#define LS_RX_STARTED 0   /* sampled skbs a driver handed over */
#define LS_RX_MATCHED 1   /* of those, taken by core receive */
#define LS_TX_QUEUED 2    /* sampled skbs handed to the device layer */
#define LS_TX_MATCHED 3   /* of those, started by a driver */
#define LS_STALE 4        /* older than MAX_SKB_AGE_NS at the end: not recorded */
#define LS_DRV_UNMATCHED 5 /* a driver finished an skb it did not start on this CPU */
#define LS_MAX 6
BPF_PERCPU_ARRAY(stats, u64, LS_MAX);

static __always_inline void stat_inc(int idx)
{
	u64 *v = stats.lookup(&idx);

	if (v)
		*v += 1;
}

/* Log-linear bucket of a duration, as bucket_of() in bpf/latency.bpf.c: the position m of
 * its leading bit (by halving) picks the power of two, the next six bits M pick one of its
 * 8 sub-buckets (how many of the sub-bucket starts 6, 12, 19, 27, 35, 44, 53 are <= M). */
static __always_inline u32 bucket_of(u64 ns)
{
	u64 v = ns;
	u32 m = 0, mant, sub, idx;

	if (ns < (1ULL << MIN_SHIFT))
		return 0;
	if (v >> 32) { m += 32; v >>= 32; }
	if (v >> 16) { m += 16; v >>= 16; }
	if (v >> 8) { m += 8; v >>= 8; }
	if (v >> 4) { m += 4; v >>= 4; }
	if (v >> 2) { m += 2; v >>= 2; }
	if (v >> 1) { m += 1; }
	mant = (u32)(ns >> (m - 6)) & 63;
	sub = (mant >= 6) + (mant >= 12) + (mant >= 19) + (mant >= 27) + (mant >= 35) + (mant >= 44) + (mant >= 53);
	idx = 1 + ((m - MIN_SHIFT) << 3) + sub;
	return idx < BUCKETS ? idx : BUCKETS - 1;
}

static __always_inline void record(int stage, u64 ns)
{
	struct hist *h = host.lookup(&stage);
	u32 b = bucket_of(ns);

	if (!h)
		return;
	h->slots[b & (BUCKETS - 1)] += 1;
	h->sum_ns += ns;
	if (ns > h->max_ns)
		h->max_ns = ns;
}

static __always_inline void rx_start(u64 skb)
{
	u64 now;

	if (!sampled(TICK_RX))
		return;
	now = bpf_ktime_get_ns();

	rx_skbs.update(&skb, &now);
	stat_inc(LS_RX_STARTED);
}

#define RX_ENTRY(event)                            \
	TRACEPOINT_PROBE(net, event)               \
	{                                          \
		rx_start((u64)args->skbaddr);      \
		return 0;                          \
	}

#ifdef HAVE_TP_netif_rx
RX_ENTRY(netif_rx)
#endif
#ifdef HAVE_TP_napi_gro_receive_entry
RX_ENTRY(napi_gro_receive_entry)
#endif
#ifdef HAVE_TP_napi_gro_frags_entry
RX_ENTRY(napi_gro_frags_entry)
#endif
#ifdef HAVE_TP_netif_receive_skb_entry
RX_ENTRY(netif_receive_skb_entry)
#endif
#ifdef HAVE_TP_netif_receive_skb_list_entry
RX_ENTRY(netif_receive_skb_list_entry)
#endif

#ifdef HAVE_TP_netif_receive_skb
TRACEPOINT_PROBE(net, netif_receive_skb)
{
	u64 skb = (u64)args->skbaddr, now;
	u64 *ts = rx_skbs.lookup(&skb);

	if (!ts)
		return 0;
	now = bpf_ktime_get_ns();
	if (now - *ts <= MAX_SKB_AGE_NS) {
		record(RX_DRIVER, now - *ts);
		stat_inc(LS_RX_MATCHED);
	} else {
		stat_inc(LS_STALE);
	}
	rx_skbs.delete(&skb);
	return 0;
}
#endif

#ifdef HAVE_TP_net_dev_queue
TRACEPOINT_PROBE(net, net_dev_queue)
{
	u64 skb = (u64)args->skbaddr, now;

	if (!sampled(TICK_TX))
		return 0;
	now = bpf_ktime_get_ns();
	tx_skbs.update(&skb, &now);
	stat_inc(LS_TX_QUEUED);
	return 0;
}
#endif

#ifdef HAVE_TP_net_dev_start_xmit
TRACEPOINT_PROBE(net, net_dev_start_xmit)
{
	u64 skb = (u64)args->skbaddr, now;
	u64 *ts = tx_skbs.lookup(&skb);
	struct drv_slot *slot;
	int zero = 0;

	if (!ts) /* not one of the sampled packets */
		return 0;
	now = bpf_ktime_get_ns();
	if (now - *ts <= MAX_SKB_AGE_NS) {
		record(TX_QDISC, now - *ts);
		stat_inc(LS_TX_MATCHED);
	} else {
		stat_inc(LS_STALE);
	}
	tx_skbs.delete(&skb);
	/* The driver stage times the same packets. */
	slot = drv.lookup(&zero);
	if (slot) {
		slot->skb = skb;
		slot->ts = now;
	}
	return 0;
}
#endif

#ifdef HAVE_TP_net_dev_xmit
TRACEPOINT_PROBE(net, net_dev_xmit)
{
	struct drv_slot *slot;
	int zero = 0;

	slot = drv.lookup(&zero);
	if (!slot || !slot->skb)
		return 0;
	if (slot->skb == (u64)args->skbaddr)
		record(TX_DRIVER, bpf_ktime_get_ns() - slot->ts);
	else
		stat_inc(LS_DRV_UNMATCHED);
	slot->skb = 0;
	return 0;
}
#endif
