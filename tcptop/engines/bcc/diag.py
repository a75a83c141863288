"""sock_diag for TCP (INET_DIAG): every socket of a network namespace with its tcp_info, in one dump.

This is how ss(8) reads the kernel, and it needs neither BTF nor kernel headers: the
messages are UAPI (linux/inet_diag.h, linux/sock_diag.h), and INET_DIAG_INFO carries the
`struct tcp_info` that tcp_get_info() fills, the same function behind getsockopt(TCP_INFO),
so its numbers are TCP_INFO's. The kernel sends its own tcp_info size; fields newer than
the running kernel are simply absent (the record is shorter). Given the file descriptors
of socket-storage maps, each socket's value in them comes along
(INET_DIAG_SK_BPF_STORAGES, kernels >= 5.2): per-socket BPF counters without walking a map.

A netlink socket dumps the namespace it was created in.
"""

from __future__ import annotations

import os
import socket
import struct
from dataclasses import dataclass

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLA_F_NESTED = 0x8000
NLA_TYPE_MASK = 0x3FFF
INET_DIAG_INFO = 2
INET_DIAG_SKMEMINFO = 7
INET_DIAG_SHUTDOWN = 8
INET_DIAG_SK_BPF_STORAGES = 20
INET_DIAG_REQ_SK_BPF_STORAGES = 2
SK_DIAG_BPF_STORAGE_REQ_MAP_FD = 1
SK_DIAG_BPF_STORAGE = 1
SK_DIAG_BPF_STORAGE_MAP_ID = 2
SK_DIAG_BPF_STORAGE_MAP_VALUE = 3

# TCP states (include/net/tcp_states.h; ABI through /proc/net/tcp and INET_DIAG).
TCP_TIME_WAIT, TCP_LISTEN, TCP_NEW_SYN_RECV = 6, 10, 12
SK_MEMINFO_DROPS = 8  # index in INET_DIAG_SKMEMINFO's u32 array: the socket's drop counter (sk_drops)
# Sockets with a tcp_sock: not listeners, time-wait or request sockets.
CONNECTION_STATES = sum(1 << s for s in range(1, 13) if s not in (TCP_TIME_WAIT, TCP_LISTEN, TCP_NEW_SYN_RECV))

_NLH = struct.Struct("=IHHII")
_NLA = struct.Struct("=HH")
_REQ = struct.Struct("=BBBBI48s")
MSG_SIZE = 72  # struct inet_diag_msg

# struct inet_diag_msg, in order: family, state, timer, retrans, sport, dport (network order),
# src[16], dst[16], if, cookie (two u32 = one little-endian u64 here), expires, rqueue,
# wqueue, uid, inode.
MSG = struct.Struct("=BBBB2H16s16sIQIIIII")


@dataclass(slots=True)
class Record:
    """One socket as INET_DIAG reported it: raw parts, decoded by the engine."""

    msg: bytes      # struct inet_diag_msg
    info: bytes     # struct tcp_info, as long as this kernel's (b"" if absent)
    storage: bytes  # the value of the one socket-storage map asked for (b"" if the socket has none)
    shutdown: int   # sk_shutdown: 1 receive side shut (e.g. FIN received), 2 send side (FIN queued)
    skmem: bytes = b""  # u32 SK_MEMINFO_* values, when asked for (listeners: SK_MEMINFO_DROPS)


class DiagError(OSError):
    pass


class DiagSocket:
    """A NETLINK_SOCK_DIAG socket in the namespace that is current when it is made."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_SOCK_DIAG)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self._seq = 0

    def close(self) -> None:
        self.sock.close()

    def dump(self, family: int, states: int = CONNECTION_STATES, storage_fd: int = -1,
             skmem: bool = False) -> list[Record]:
        """Every TCP socket of `family` in one of `states`, with tcp_info (and the value of the
        socket-storage map `storage_fd`, if given; the socket's memory counters with `skmem`)."""
        self._seq += 1
        ext = 1 << (INET_DIAG_INFO - 1)
        if skmem:
            ext |= 1 << (INET_DIAG_SKMEMINFO - 1)
        body = _REQ.pack(family, socket.IPPROTO_TCP, ext, 0, states, b"")
        if storage_fd >= 0:
            fd_attr = _NLA.pack(8, SK_DIAG_BPF_STORAGE_REQ_MAP_FD) + struct.pack("=I", storage_fd)
            body += _NLA.pack(4 + len(fd_attr), INET_DIAG_REQ_SK_BPF_STORAGES | NLA_F_NESTED) + fd_attr
        self.sock.send(_NLH.pack(_NLH.size + len(body), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP,
                                 self._seq, 0) + body)
        out: list[Record] = []
        while True:
            buf = self.sock.recv(1 << 20)
            if not buf:
                raise DiagError(0, "sock_diag: netlink closed the dump")
            if _parse(buf, out):
                return out


def _parse(buf: bytes, out: list[Record]) -> bool:
    """Append the records of one netlink read; True once the dump is done."""
    off, end = 0, len(buf)
    unpack_nlh, unpack_nla = _NLH.unpack_from, _NLA.unpack_from
    while off + 16 <= end:
        mlen, mtype, _, _, _ = unpack_nlh(buf, off)
        if mlen < 16:
            raise DiagError(0, "sock_diag: malformed netlink message")
        if mtype == NLMSG_DONE:
            return True
        if mtype == NLMSG_ERROR:
            err = -struct.unpack_from("=i", buf, off + 16)[0]
            raise DiagError(err, f"sock_diag: {os.strerror(err)}")
        body, stop = off + 16, off + mlen
        info = storage = skmem = b""
        shutdown = 0
        a = body + MSG_SIZE
        while a + 4 <= stop:
            alen, atype = unpack_nla(buf, a)
            if alen < 4:
                break
            atype &= NLA_TYPE_MASK
            if atype == INET_DIAG_INFO:
                info = buf[a + 4:a + alen]
            elif atype == INET_DIAG_SHUTDOWN:
                shutdown = buf[a + 4]
            elif atype == INET_DIAG_SK_BPF_STORAGES:
                storage = _storage_value(buf[a + 4:a + alen])
            elif atype == INET_DIAG_SKMEMINFO:
                skmem = buf[a + 4:a + alen]
            a += (alen + 3) & ~3
        out.append(Record(buf[body:body + MSG_SIZE], info, storage, shutdown, skmem))
        off += (mlen + 3) & ~3
    return False


def _storage_value(nested: bytes) -> bytes:
    """The map value inside INET_DIAG_SK_BPF_STORAGES (one map was asked for)."""
    for atype, payload in _attrs(nested):
        if atype == SK_DIAG_BPF_STORAGE:
            for t, v in _attrs(payload):
                if t == SK_DIAG_BPF_STORAGE_MAP_VALUE:
                    return v
    return b""


def _attrs(buf: bytes):
    a, end = 0, len(buf)
    while a + 4 <= end:
        alen, atype = _NLA.unpack_from(buf, a)
        if alen < 4:
            return
        yield atype & NLA_TYPE_MASK, buf[a + 4:a + alen]
        a += (alen + 3) & ~3


# struct tcp_info (linux/tcp.h, UAPI: fields are only ever appended). Offsets of what the
# engine reads; `present` says whether this kernel's tcp_info reaches a field.
TCP_INFO = struct.Struct("=8B24I4Q6I4Q2I2Q6I2H")
TCPI = {name: i for i, name in enumerate((
    "state", "ca_state", "retransmits", "probes", "backoff", "options", "wscale", "flags",
    "rto", "ato", "snd_mss", "rcv_mss", "unacked", "sacked", "lost", "retrans", "fackets",
    "last_data_sent", "last_ack_sent", "last_data_recv", "last_ack_recv", "pmtu", "rcv_ssthresh",
    "rtt", "rttvar", "snd_ssthresh", "snd_cwnd", "advmss", "reordering", "rcv_rtt", "rcv_space",
    "total_retrans", "pacing_rate", "max_pacing_rate", "bytes_acked", "bytes_received",
    "segs_out", "segs_in", "notsent_bytes", "min_rtt", "data_segs_in", "data_segs_out",
    "delivery_rate", "busy_time", "rwnd_limited", "sndbuf_limited", "delivered", "delivered_ce",
    "bytes_sent", "bytes_retrans", "dsack_dups", "reord_seen", "rcv_ooopack", "snd_wnd", "rcv_wnd",
    "rehash", "total_rto", "total_rto_recoveries"))}
TCPI_END = {"bytes_sent": 208, "snd_wnd": 232, "rcv_wnd": 236, "total_rto": 242}  # first byte after each
# Bytes of tcp_info that change while a connection is idle (ms since the last data/ACK):
# left out when telling whether a connection changed since the last poll.
IDLE_CLOCKS = (44, 60)


def tcp_info(info: bytes) -> tuple:
    """tcp_info as a tuple indexed by TCPI (zeros past the end of this kernel's structure)."""
    if len(info) < TCP_INFO.size:
        info = info + bytes(TCP_INFO.size - len(info))
    return TCP_INFO.unpack_from(info)
