/* The contract between flows.bpf.c and tcptop/engines/core/flows.py, which mirrors it
 * with ctypes. The loader checks every mirrored struct member (name, offset, size) and
 * every constant below against the object's BTF, so the two cannot drift apart: the
 * constants are enums, and each enum is the type of something here, so that it is in
 * the object's BTF.
 */
#ifndef TCPTOP_FLOWS_H
#define TCPTOP_FLOWS_H

#define TASK_COMM_LEN 16

/* flow_counters.flags */
enum flow_flag {
	FLOW_SEEN_BIRTH = 1, /* we saw SYN_SENT/SYN_RECV -> ESTABLISHED: event counters cover the whole life */
	FLOW_RTT_HOOKED = 2, /* sock_ops RTT callbacks are enabled on this socket */
};

/* flow_record.flags */
enum record_flag {
	REC_CLOSED = 1,        /* captured when the kernel destroyed the socket */
	REC_HAS_TOTAL_RTO = 2, /* timeouts come from tcp_sock.total_rto (exact, whole life) */
	REC_NO_COUNTERS = 4,   /* socket storage could not be allocated: event counters are missing */
};

/* Per-socket counters that only events can produce (kept in the `counters` hash map). */
struct flow_counters {
	__u64 read_bytes;      /* sum of positive sock_recvmsg returns (MSG_PEEK excluded) */
	__u64 write_bytes;     /* sum of positive sock_sendmsg returns */
	__u64 rtt_sum_us;      /* sum of RTT samples (sock_ops RTT_CB mrtt) */
	__u64 established_ns;  /* bpf_ktime_get_ns() when the socket became ESTABLISHED, 0 unknown */
	__u32 rtt_samples;
	__u32 fast_retrans;    /* entries into TCP_CA_Recovery */
	__u32 rto_events;      /* sock_ops RTO_CB count: fallback when tcp_sock.total_rto is absent */
	__u32 app_wqueue_max;  /* max of write_seq - snd_una seen at the end of send calls */
	__u32 pid;             /* tgid of the last process that sent, received or connected */
	enum flow_flag flags;  /* FLOW_* bits */
	char comm[TASK_COMM_LEN];
};

/* Kinds of iterator output: a full record, or only "still here, unchanged". */
enum record_kind {
	KIND_FULL = 1,
	KIND_SAME = 2,
};

/* A socket whose record is unchanged since the last poll gets only the head of its
 * record, up to and including `flags` (kind KIND_SAME): idle connections cost 16 bytes
 * and no decoding in user space. */
#define SAME_SIZE 16

/* One connection as the iterator (live) or the destroy hook (closed) saw it. */
struct flow_record {
	__u64 cookie;
	enum record_kind kind; /* KIND_FULL, or KIND_SAME in a SAME_SIZE head */
	enum record_flag flags; /* REC_* bits */
	__u64 bytes_sent;
	__u64 bytes_received;
	__u64 bytes_acked;
	__u64 now_ns;          /* bpf_ktime_get_ns() at capture */
	__u64 sock_ino;        /* socket inode, to find the owning process in /proc */
	struct flow_counters c;
	__u32 netns;           /* network namespace inode number */
	__u32 snd_cwnd;
	__u32 snd_ssthresh;
	__u32 snd_wnd;
	__u32 rcv_wnd;
	__u32 mss_cache;
	__u32 srtt_us;         /* smoothed RTT, microseconds (already unscaled) */
	__u32 min_rtt_us;
	__u32 packets_out;
	__u32 sacked_out;
	__u32 lost_out;
	__u32 retrans_out;
	__u32 total_retrans;
	__u32 write_seq;
	__u32 snd_una;
	__u32 total_rto;
	__u32 uid;
	__u32 epoch;           /* full_epoch when captured */
	__u8 saddr[16];
	__u8 daddr[16];
	__u16 sport;
	__u16 dport;
	__u16 family;
	__u8 state;
	__u8 ca_state;
};

/* Run-level counters, one slot each in the per-CPU `stats` array (its key type). */
enum tcptop_stat {
	STAT_COUNTERS_FULL = 0, /* an event found no counters slot: the map was full */
	STAT_CLOSED_FULL,       /* a closed flow's final record was dropped: closed map full */
	STAT_ITER_SOCKETS,      /* sockets the iterator emitted (sanity) */
	STAT_MAX,
};

#endif
