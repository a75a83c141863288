/* The contract between latency.bpf.c and tcptop/engines/core/latency.py, which mirrors it
 * with ctypes. The loader checks every mirrored struct member (name, offset, size) and
 * both enums against the object's BTF (each enum is a map's key type, so it is there).
 */
#ifndef TCPTOP_LATENCY_H
#define TCPTOP_LATENCY_H

/* log2 histograms of nanoseconds. Bucket 0 holds [0, 512 ns); bucket b >= 1
 * holds [2^(b+8), 2^(b+9)) ns; the last bucket also takes everything longer
 * (>= 2^39 ns, about 9 minutes). */
#define LAT_BUCKETS 32
#define LAT_BUCKET0_SHIFT 9

/* Stages, in the order a packet goes through them. */
enum lat_stage {
	RX_DRIVER = 0, /* driver hands the skb over -> core receive (IP layer) */
	RX_IP,         /* core receive -> TCP layer (socket found) */
	RX_TCP,        /* TCP layer -> data queued on the socket */
	RX_APP,        /* queued -> copied to the application by a read call */
	TX_TCP,        /* write accepted -> leaves TCP; "tcp+ip" (-> device layer) when no hook splits them */
	TX_IP,         /* leaves TCP -> handed to the device layer (only with a split hook) */
	TX_QDISC,      /* device layer (queued in traffic control) -> driver starts sending */
	TX_DRIVER,     /* the driver's transmit routine */
	LAT_STAGES,
};

/* Host-wide, one per stage in the per-CPU `host` array (its key type), no atomics needed. */
struct lat_hist {
	__u64 slots[LAT_BUCKETS];
	__u64 sum_ns;
	__u64 max_ns;
};

/* One timed byte per socket and boundary, like TCP's own RTT sampling: the
 * first byte of a segment/write is stamped, and the sample completes when the
 * stack reports that byte past the next boundary. ts == 0: nothing timed. */
struct lat_probe {
	__u64 ts;
	__u32 seq;
	__u32 n;  /* bytes timed so far: a socket's first is always timed, later ones when sampled */
};

/* A socket's timed bytes: in socket-local storage (one helper call, no hash,
 * freed with the socket), or, when a kprobe rung is in use (kprobe programs may
 * not use socket storage), in the cookie-keyed `probes` hash. */
struct lat_probes {
	struct lat_probe rx_tcp;  /* entered TCP, waiting to be queued */
	struct lat_probe rx_app;  /* queued, waiting to be read */
	struct lat_probe tx;      /* accepted from a write, waiting to leave TCP / reach the device */
};

/* Per flow, keyed by socket cookie in the `flows` hash map; created at the
 * flow's first sample, so only flows with samples have one. */
struct lat_flow {
	__u32 slots[LAT_STAGES][LAT_BUCKETS];
	__u64 sum_ns[LAT_STAGES];
	__u64 closed_ns;          /* set when the socket is destroyed; user space then deletes the entry */
};

/* A received skb between the driver and TCP, keyed by skb address. */
struct rx_skb {
	__u64 driver_ts; /* 0: no driver hook saw it */
	__u64 ip_ts;     /* 0: not yet (or no longer) in the IP layer */
};

/* A transmitted skb between TCP/IP and the driver, keyed by skb address. */
struct tx_skb {
	__u64 cookie;
	__u64 ip_ts;     /* left TCP (split hook only), 0 otherwise */
	__u64 queue_ts;  /* reached the device layer; 0 once the driver took it */
};

/* Run-level counters, one slot each in the per-CPU `stats` array (its key type). */
/* The per-skb counters (LS_RX_* and LS_TX_*, LS_DRV_UNMATCHED) count sampled skbs only. */
enum lat_stat {
	LS_RX_STARTED = 0, /* TCP skbs a driver hook handed to the stack */
	LS_RX_REUSED,      /* a driver hook found an unfinished entry at its skb address: that
			    * earlier skb never reached TCP (GRO-merged, dropped, forwarded) */
	LS_RX_MATCHED,     /* skbs that reached TCP with their driver/IP timestamps */
	LS_RX_UNMATCHED,   /* skbs that reached TCP without them (unhooked path, or evicted) */
	LS_RX_STALE,       /* entries older than max_skb_age_ns at TCP: not recorded */
	LS_TX_QUEUED,      /* TCP skbs handed to the device layer */
	LS_TX_REUSED,      /* a queued skb's address came back before the driver took it */
	LS_TX_MATCHED,     /* queued skbs the driver started to send */
	LS_TX_STALE,       /* queued longer than max_skb_age_ns: not recorded */
	LS_DRV_UNMATCHED,  /* driver finished an skb it did not start on this CPU (nested xmit) */
	LS_PROBE_DONE,     /* timed bytes that completed a stage */
	LS_PROBE_MISSED,   /* a timed byte passed its boundary unseen (e.g. read by splice): dropped */
	LS_FLOWS_FULL,     /* a flow got no histogram: the flows map was full */
	LS_MAX,
};

#endif
