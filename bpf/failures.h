/* The contract between failures.bpf.c and tcptop/engines/core/failures.py, which mirrors it
 * with ctypes. The loader checks every mirrored struct member (name, offset, size) and every
 * enum below against the object's BTF, so the two cannot drift apart; each enum is the type
 * of something here, so that it is in the object's BTF.
 */
#ifndef TCPTOP_FAILURES_H
#define TCPTOP_FAILURES_H

#define FAIL_COMM_LEN 16

/* What a packet-keyed event was: the packet was dropped, or a reset was sent in answer to it. */
enum tuple_kind {
	TK_DROP = 1,
	TK_RESET_SENT = 2,
};

/* Direction of a socket's most recent reset. */
enum reset_dir {
	RD_NONE = 0,
	RD_SENT = 1,     /* last_reset_reason is an enum sk_rst_reason value */
	RD_RECEIVED = 2, /* last_reset_reason is the errno the kernel gave the application */
};

/* Run-level counters, one slot each in the per-CPU `stats` array (its key type). */
enum fail_stat {
	FS_SOCK_FULL = 0,   /* a socket's drop or reset could not be counted: sock_drops_N/sock_events_N full */
	FS_TUPLE_FULL,      /* a packet-keyed event was counted host-wide only (tuple_overflow): the tuple map
	                     * was full, or a reset had neither a full socket nor a packet */
	FS_CONNECT_FULL,    /* a failed connect could not be kept: connect_fails map full */
	FS_DROPS,           /* TCP drops with a reason, all of them */
	FS_RESETS_SENT,     /* resets sent, all of them */
	FS_LISTENERS,       /* listeners the iterators emitted (sanity) */
	FS_ENTERED,         /* entries made in the event maps of any generation: how full the
	                     * current one may be, read between polls to drain it in time */
	FS_MAX,
};

/* Drops of one socket (a flow or a listener) for one reason, in `sock_drops_N`. */
struct sock_drop_key {
	__u64 cookie;
	__u32 reason;           /* enum skb_drop_reason */
	__u32 pad;
};

/* What happened to one socket since the last drain, in `sock_events_N` (cookie-keyed). */
struct sock_events {
	__u64 resets_sent;
	__u64 resets_received;
	__u64 synack_retrans;   /* listeners: SYN-ACKs retransmitted */
	__u64 last_reset_ns;
	__u32 last_reset_reason;
	enum reset_dir last_reset_dir;
};

/* A drop or a sent reset that no full socket could be named for, keyed by the packet's own
 * addresses as they are in its headers (user space matches them to a flow either way round). */
struct tuple_key {
	enum tuple_kind kind;
	__u32 netns;
	__u32 reason;           /* enum skb_drop_reason (TK_DROP) or enum sk_rst_reason (TK_RESET_SENT) */
	__u16 family;
	__u16 sport;
	__u16 dport;
	__u16 pad;
	__u8 saddr[16];
	__u8 daddr[16];
};

/* A connect that never established, keyed by the socket's cookie in `connect_fails_*`: user
 * space names its process through the flow engine's record of the same socket. */
struct connect_fail {
	__u32 netns;
	__s32 err;              /* sk_err: the errno connect() reports */
	__u16 family;
	__u16 dport;
	__u8 daddr[16];
};

/* One listening socket as the iterators saw it at poll time. */
struct listener_record {
	__u64 cookie;
	__u64 sock_ino;         /* socket inode, to find the owning process in /proc */
	__u32 netns;
	__u32 accept_queue;     /* sk_ack_backlog: connections waiting for accept() */
	__u32 accept_queue_max; /* sk_max_ack_backlog: the listen() backlog */
	__u32 syn_queue;        /* request sockets waiting for the handshake's last ACK */
	__u32 drops;            /* the socket's drop counter (what ss -tlm shows as d) */
	__u32 tgid;             /* a process holding it (task_file iterator), 0 when not known */
	__u8 saddr[16];
	__u16 sport;
	__u16 family;
	char comm[FAIL_COMM_LEN];
};

#endif
