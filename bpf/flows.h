/* The contract between flows.bpf.c and tcptop/engines/core/flows.py, which mirrors it
 * with ctypes. The loader checks every mirrored struct member (name, offset, size) and
 * every constant below against the object's BTF, so the two cannot drift apart: the
 * constants are enums, and each enum is the type of something here, so that it is in
 * the object's BTF.
 */
#ifndef TCPTOP_FLOWS_H
#define TCPTOP_FLOWS_H

#define TASK_COMM_LEN 16

/* RTT samples per log2 bucket of microseconds: bucket 0 holds [0, 2) us, bucket b >= 1
 * holds [2^b, 2^(b+1)) us, the last bucket also everything longer (tcptop/engines/histogram.py). */
#define RTT_BUCKETS 28

/* flow_counters.flags */
enum flow_flag {
	FLOW_SEEN_BIRTH = 1,    /* we saw SYN_SENT/SYN_RECV -> ESTABLISHED: counters cover the whole life */
	FLOW_CLIENT = 2,        /* this end connected (SYN_SENT -> ESTABLISHED) */
	FLOW_SERVER = 4,        /* this end was accepted (SYN_RECV -> ESTABLISHED) */
	FLOW_RTO_HOOKED = 8,    /* sock_ops RTO callbacks are enabled on this socket */
	FLOW_RTT_SEEDED = 16,   /* last_srtt/last_mdev hold the estimator's state after the last settled segment */
	FLOW_RTT_PENDING = 32,  /* the last segment tcp_probe saw acknowledged new data: a sample unless timestamps are off */
	FLOW_BASES = 64,        /* write_base/read_base are set */
	FLOW_PURGED = 128,      /* the retransmit queue is about to be purged (RST received, RTO expired): packets_out saved */
	FLOW_CLOSED = 256,      /* the final record was sent */
	FLOW_RESET_RCVD = 512,  /* the connection ended on a received RST */
	FLOW_TIMED_OUT = 1024,  /* the connection ended when its retransmission timer expired */
	FLOW_READ_AFTER = 2048, /* closed with unread data in a socket the application still holds */
};

/* Per-socket state that only events can produce, in socket-local storage. What tcp_probe
 * touches at every segment comes first: the storage's data starts 8 bytes into a cache line
 * the lookup reads anyway, so these share it. */
struct flow_counters {
	__u32 last_srtt;         /* srtt_us and mdev_us after the last settled segment */
	__u32 last_mdev;
	enum flow_flag flags;    /* FLOW_* bits */
	__u32 dirty_gen;         /* the poll generation in which a notice was last sent */
	__u32 app_wqueue_max;    /* largest write_seq - snd_una seen before an ACK was processed */
	__u32 rtt_samples;       /* samples the estimator took (settled at the next segment or read) */
	__u64 rtt_sum_us;        /* sum of the estimator's samples */
	__u32 fast_retrans;      /* entries into TCP_CA_Recovery */
	__u32 rto_events;        /* sock_ops RTO_CB count: fallback when tcp_sock.total_rto is absent */
	__u32 rtt_hist[RTT_BUCKETS];
	__u64 established_ns;    /* bpf_ktime_get_ns() when the socket became ESTABLISHED, 0 unknown */
	__u64 digest;            /* hash of the last record sent to user space (0: none) */
	__u64 activity;          /* segments in and out, write_seq, copied_seq, state when that record was read */
	__u64 write_base;        /* write_total() where write_bytes starts counting */
	__u64 read_base;         /* read_total() where read_bytes starts counting */
	__u32 saved_packets_out; /* packets_out before a purge (FLOW_PURGED) */
	__u32 closed_copied_seq; /* copied_seq when the final record was sent (FLOW_READ_AFTER) */
	__u32 pid;               /* tgid of the process that connected */
	char comm[TASK_COMM_LEN];
};

/* What a record is. */
enum record_kind {
	KIND_LIVE = 1,   /* a full socket now */
	KIND_CLOSED = 2, /* the final record, captured as the socket entered CLOSE */
	KIND_LATE = 3,   /* a closed socket's reads after its final record (the application drained it) */
	KIND_TW = 4,     /* a TIME_WAIT or FIN_WAIT2 end the kernel keeps after the socket closed */
	KIND_GONE = 5,   /* a lookup found no socket with that cookie any more */
};

/* flow_record.flags */
enum record_flag {
	REC_HAS_TOTAL_RTO = 1, /* timeouts come from tcp_sock.total_rto (exact, whole life) */
	REC_NO_COUNTERS = 2,   /* socket storage could not be allocated: event counters are missing */
	REC_QUIESCENT = 4,     /* nothing queued, unread, unacknowledged or pending: only an event can change it */
	REC_SEEN_BIRTH = 8,    /* counters cover the whole life */
	REC_CLIENT = 16,
	REC_SERVER = 32,
	REC_RESET_RCVD = 64,
	REC_TIMED_OUT = 128,
	REC_LOOKUP_V4 = 256,   /* an AF_INET6 socket with IPv4-mapped addresses: hashed as IPv4 */
};

/* One connection as the iterator or a lookup (live), the CLOSE transition (closed) or the
 * TIME_WAIT table (tw) saw it. Derived values (flight size, write/read bytes, send queue)
 * are computed where the socket is read, so that each is taken at one instant. */
struct flow_record {
	__u64 cookie;
	__u64 now_ns;            /* bpf_ktime_get_ns() at capture */
	__u64 sock_ino;          /* socket inode, for the /proc owner fallback */
	__u64 bytes_sent;
	__u64 bytes_received;
	__u64 read_bytes;
	__u64 write_bytes;
	__u64 rtt_sum_us;
	__u64 established_ns;
	enum record_kind kind;
	enum record_flag flags;
	__u32 netns;             /* network namespace inode number */
	__u32 pid;               /* the process that connected, 0 if none seen */
	__u32 file_refs;         /* references to the socket's file: moves when it is shared or unshared */
	__u32 snd_cwnd;
	__u32 snd_ssthresh;
	__u32 snd_wnd;
	__u32 rcv_wnd;
	__u32 mss_cache;
	__u32 srtt_us;           /* smoothed RTT, microseconds (already unscaled) */
	__u32 min_rtt_us;
	__u32 flight_size;
	__u32 total_retrans;
	__u32 timeouts;
	__u32 app_wqueue;
	__u32 app_wqueue_max;
	__u32 rtt_samples;
	__u32 fast_retrans;
	__u32 tw_left_ms;        /* KIND_TW: time left on the TIME_WAIT/FIN_WAIT2 timer */
	__u32 rtt_hist[RTT_BUCKETS];
	__u8 saddr[16];
	__u8 daddr[16];
	__u16 sport;
	__u16 dport;
	__u16 family;
	__u8 state;              /* kernel TCP state; for KIND_CLOSED the state it left */
	__u8 ca_state;
	char comm[TASK_COMM_LEN];
};

/* Kinds of notice in the `notices` ring. */
enum notice_kind {
	NOTE_DIRTY = 1, /* a socket had its first event since the last poll (its tuple, to look it up) */
	NOTE_OWNER = 2, /* accept() returned this socket to a process */
	NOTE_EXEC = 3,  /* a process exec()ed: its comm changed */
	NOTE_EXIT = 4,  /* a process (thread group) exited */
	NOTE_FORK = 5,  /* a process forked: pid the parent, cookie the child (its sockets may move) */
};

struct flow_notice {
	__u64 cookie;
	enum notice_kind kind;
	__u32 netns;
	__u32 pid;
	__u16 sport;
	__u16 dport;
	__u16 family;
	__u16 lookup_v4;         /* look the socket up as IPv4 (IPv4-mapped IPv6) */
	__u8 saddr[16];
	__u8 daddr[16];
	char comm[TASK_COMM_LEN];
};

/* A socket to read by lookup (the `wants` array, filled by user space). */
struct flow_want {
	__u64 cookie;
	__u16 sport;             /* local port, host order */
	__u16 dport;
	__u16 lookup_v4;
	__u16 pad;
	__u8 saddr[16];          /* local address (IPv4 in the first 4 bytes) */
	__u8 daddr[16];
};

/* One process holding a socket user space asked about (the task_file walk). */
struct flow_holder {
	__u64 cookie;
	__u64 ino;          /* the socket's inode: the first walk's key (it comes before any cookie is made) */
	__u32 pid;
	__u32 fd;
	char comm[TASK_COMM_LEN];
};

/* Shared with user space through the mmap-ed .bss (not the map's initial value). */
struct flow_ctl {
	__u32 gen;          /* poll generation: a socket sends one NOTE_DIRTY per generation */
	__u32 epoch;        /* bumped to have every record sent again */
	__u32 emit_all;     /* the iterator sends every socket, changed or not (first poll) */
	__u32 walk_budget;  /* the iterator stops (and resumes at the next read) after this many sockets */
	__u32 walk_seen;    /* sockets the iterator visited since user space reset it */
	__u32 n_wants;      /* entries of `wants` the lookup program reads */
	__u32 n_got;        /* records the lookup program wrote to `got` */
	__u32 hz;           /* CONFIG_HZ, for the TIME_WAIT timer (0 unknown) */
	__u32 files_all;    /* the task_file walk reports every TCP socket's holders (by inode), not only owner_wanted's */
};

/* Run-level counters, one slot each in the per-CPU `stats` array (its key type). */
enum tcptop_stat {
	STAT_COUNTERS_FULL = 0, /* socket storage could not be allocated */
	STAT_CLOSED_LOST,       /* a final record was dropped: the closed ring and its rescue refused it */
	STAT_NOTICES_LOST,      /* a notice was dropped: the notices ring and its rescue refused it */
	STAT_GOT_FULL,          /* a lookup found more changed sockets than `got` holds */
	STAT_ITER_SOCKETS,      /* sockets the iterator visited */
	STAT_PROBE_RUNS,        /* tcp_probe runs (sanity) */
	STAT_RESERVE_RESCUED,   /* a ring refused a record and its rescue ring took it */
	STAT_MAX,
};

#endif
