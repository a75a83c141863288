/* The contract between latency.bpf.c and tcptop/engines/core/latency.py, which mirrors it
 * with ctypes. The loader checks every mirrored struct member (name, offset, size) and
 * every enum against the object's BTF (each enum types a map key, so it is there).
 */
#ifndef TCPTOP_LATENCY_H
#define TCPTOP_LATENCY_H

/* Log-linear histograms of nanoseconds: 8 sub-buckets per power of two, spaced
 * (nearly) evenly on a log scale, so no bucket is more than 9.7 % wide and any
 * percentile read from one is within that of the true value.
 *
 * Bucket 0 holds [0, 128 ns). A duration d >= 128 ns with leading bit m (2^m <= d)
 * and the next six bits M (0..63) goes to 1 + 8 * (m - 7) + s, where s is the
 * number of LAT_SUB_STARTS after the first that are <= M; its bucket starts at
 * 2^m * (64 + LAT_SUB_STARTS[s]) / 64. The last bucket also takes everything
 * longer (from ~464 s). tcptop/engines/histogram.py computes the same bounds
 * (a unit test compares the numbers here with it). */
#define LAT_BUCKETS 256
#define LAT_MIN_SHIFT 7
#define LAT_SUB_STARTS {0, 6, 12, 19, 27, 35, 44, 53} /* round(64 * (2^(k/8) - 1)) */
#define LAT_GROUPS (LAT_BUCKETS / 8)                  /* lat_flow_hist.groups */

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

/* Host-wide, one per stage in the per-CPU `host` array (its key type), no atomics needed;
 * cumulative: user space reads differences. */
struct lat_hist {
	__u64 slots[LAT_BUCKETS];
	__u64 sum_ns;
};

/* Per flow and stage, in the `flows` hash; created at the first sample of a
 * window, read and deleted by user space when the window's figures are taken. */
struct lat_key {
	__u64 cookie; /* socket cookie (= Flow.id) */
	__u32 stage;  /* enum lat_stage */
	__u32 pad;
};

struct lat_flow_hist {
	__u64 sum_ns;
	__u8 groups[LAT_GROUPS]; /* non-zero: some bucket in [8g, 8g + 8) is non-empty (user space reads
				  * only those); bytes, so CPUs setting different ones lose none */
	__u32 slots[LAT_BUCKETS];
};

/* Window control, one entry in the `control` array, written by user space. A
 * stage starts timing a packet only while `open`; every start is stamped with
 * `gen`, and an end whose start carries another generation is not recorded
 * (that window closed before the packet finished the stage). */
struct lat_control {
	__u32 gen;
	__u32 open;
};

/* Packets (bytes up to `seq`) waiting to finish a sequence-matched stage: one
 * entry per packet, or `n` merged packets when the socket's slots are full
 * (their exact sum is kept: ts_sum; they are binned at their mean). n == 0: free. */
struct lat_pend {
	__u64 ts_sum;
	__u32 seq;
	__u16 n;
	__u16 gen;
};

#define RX_TCP_SLOTS 8
#define RX_APP_SLOTS 16
#define TX_SLOTS 16

/* A socket's packets in flight through the sequence-matched stages: in
 * socket-local storage (one helper call, no hash, freed with the socket), or,
 * when a kprobe rung is in use (kprobe programs may not use socket storage),
 * in the cookie-keyed `probes` hash. */
struct lat_probes {
	struct lat_pend rx_tcp[RX_TCP_SLOTS]; /* entered TCP (end: seq after the segment), waiting to be queued */
	struct lat_pend rx_app[RX_APP_SLOTS]; /* queued (end: rcv_nxt), waiting to be read */
	struct lat_pend tx[TX_SLOTS];         /* a write round (first byte: seq), waiting to leave TCP */
	__u8 newest[3];                       /* slot last filled in each of the three */
	__u8 pad[5];
};

/* A received skb between the driver and TCP, keyed by skb address. */
struct rx_skb {
	__u64 driver_ts; /* 0: no driver hook saw it */
	__u64 ip_ts;     /* 0: not yet (or no longer) in the IP layer */
	__u32 gen;
	__u32 pad;
};

/* A transmitted skb between TCP/IP and the driver, keyed by skb address. */
struct tx_skb {
	__u64 cookie;
	__u64 ip_ts;     /* left TCP (split hook only), 0 otherwise */
	__u64 queue_ts;  /* reached the device layer; 0 once the driver took it */
	__u32 gen;
	__u16 gso_segs;  /* > 1: a GSO skb a qdisc may split into new skbs */
	__u16 pad;
};

/* Packets started and not yet finished, per group of stages that can take long
 * (summed over CPUs by user space, which waits for them before it detaches the
 * hooks that end them). Per-CPU array `pending` (its key type). */
enum lat_pending {
	PEND_RX_TCP = 0,
	PEND_RX_APP,
	PEND_TX_TCP,
	PEND_QDISC,
	PEND_MAX,
};

/* Run-level counters, one slot each in the per-CPU `stats` array (its key type). */
enum lat_stat {
	LS_RUNS = 0,       /* program runs (all our programs): the engine's cost, counted without bpf_stats */
	LS_RX_STARTED,     /* TCP skbs a driver hook handed to the stack, timed */
	LS_RX_REUSED,      /* a driver hook found an unfinished entry at its skb address: that
			    * earlier skb never reached TCP (GRO-merged, dropped, forwarded) */
	LS_RX_MATCHED,     /* timed skbs that reached TCP with their driver/IP timestamps */
	LS_RX_UNMATCHED,   /* skbs that reached TCP, while a window was open, without them */
	LS_RX_STALE,       /* entries older than max_skb_age_ns at TCP: not recorded */
	LS_TX_QUEUED,      /* TCP skbs handed to the device layer, timed */
	LS_TX_REUSED,      /* a queued skb's address came back before the driver took it */
	LS_TX_MATCHED,     /* queued skbs the driver started to send */
	LS_TX_STALE,       /* queued longer than max_skb_age_ns: not recorded */
	LS_DRV_UNMATCHED,  /* driver finished an skb it did not start on this CPU (nested xmit) */
	LS_PROBE_DONE,     /* sequence-matched packets that completed a stage */
	LS_PROBE_MISSED,   /* ... that passed their boundary unseen (e.g. read by splice): dropped */
	LS_PROBE_MERGED,   /* ... that found their socket's slots full and were merged into the newest */
	LS_EXPIRED,        /* starts found from a window that had closed before they finished */
	LS_FLOWS_FULL,     /* a flow's stage got no histogram: the flows map was full */
	LS_GSO_QUEUED,     /* timed skbs of more than one segment handed to the device layer */
	LS_GSO_MATCHED,    /* ... that the driver started to send under the same address */
	LS_MAX,
};

#endif
