"""The flow engine's shared layouts (bpf/flows.h) as ctypes mirrors, enums and struct formats.

The loader checks every mirror member by member, and every enum, against the object's BTF
(BpfObject.check_mirror / check_enum_mirror), so a change on one side that the other does
not follow stops the load with the member that differs.
"""

from __future__ import annotations

import ctypes
import enum
import struct

TASK_COMM_LEN = 16
RTT_BUCKETS = 28  # RTT_BUCKETS in bpf/flows.h (the mirror check compares rtt_hist's size)


class FlowFlag(enum.IntFlag):
    FLOW_SEEN_BIRTH = 1
    FLOW_CLIENT = 2
    FLOW_SERVER = 4
    FLOW_RTO_HOOKED = 8
    FLOW_RTT_SEEDED = 16
    FLOW_RTT_PENDING = 32
    FLOW_BASES = 64
    FLOW_PURGED = 128
    FLOW_CLOSED = 256
    FLOW_RESET_RCVD = 512
    FLOW_TIMED_OUT = 1024
    FLOW_READ_AFTER = 2048


class RecordKind(enum.IntEnum):
    KIND_LIVE = 1
    KIND_CLOSED = 2
    KIND_LATE = 3
    KIND_TW = 4
    KIND_GONE = 5


class RecordFlag(enum.IntFlag):
    REC_HAS_TOTAL_RTO = 1
    REC_NO_COUNTERS = 2
    REC_QUIESCENT = 4
    REC_SEEN_BIRTH = 8
    REC_CLIENT = 16
    REC_SERVER = 32
    REC_RESET_RCVD = 64
    REC_TIMED_OUT = 128
    REC_LOOKUP_V4 = 256


class NoticeKind(enum.IntEnum):
    NOTE_DIRTY = 1
    NOTE_OWNER = 2
    NOTE_EXEC = 3
    NOTE_EXIT = 4
    NOTE_FORK = 5


class Stat(enum.IntEnum):
    STAT_COUNTERS_FULL = 0
    STAT_CLOSED_LOST = 1
    STAT_NOTICES_LOST = 2
    STAT_GOT_FULL = 3
    STAT_ITER_SOCKETS = 4
    STAT_PROBE_RUNS = 5
    STAT_RESERVE_RESCUED = 6
    STAT_MAX = 7


class FlowCounters(ctypes.Structure):
    _fields_ = [
        ("last_srtt", ctypes.c_uint32),
        ("last_mdev", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("dirty_gen", ctypes.c_uint32),
        ("app_wqueue_max", ctypes.c_uint32),
        ("rtt_samples", ctypes.c_uint32),
        ("rtt_sum_us", ctypes.c_uint64),
        ("fast_retrans", ctypes.c_uint32),
        ("rto_events", ctypes.c_uint32),
        ("rtt_hist", ctypes.c_uint32 * RTT_BUCKETS),
        ("established_ns", ctypes.c_uint64),
        ("digest", ctypes.c_uint64),
        ("activity", ctypes.c_uint64),
        ("write_base", ctypes.c_uint64),
        ("read_base", ctypes.c_uint64),
        ("saved_packets_out", ctypes.c_uint32),
        ("closed_copied_seq", ctypes.c_uint32),
        ("pid", ctypes.c_uint32),
        ("comm", ctypes.c_char * TASK_COMM_LEN),
    ]


class FlowRecord(ctypes.Structure):
    _fields_ = [
        ("cookie", ctypes.c_uint64),
        ("now_ns", ctypes.c_uint64),
        ("sock_ino", ctypes.c_uint64),
        ("bytes_sent", ctypes.c_uint64),
        ("bytes_received", ctypes.c_uint64),
        ("read_bytes", ctypes.c_uint64),
        ("write_bytes", ctypes.c_uint64),
        ("rtt_sum_us", ctypes.c_uint64),
        ("established_ns", ctypes.c_uint64),
        ("kind", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("netns", ctypes.c_uint32),
        ("pid", ctypes.c_uint32),
        ("file_refs", ctypes.c_uint32),
        ("snd_cwnd", ctypes.c_uint32),
        ("snd_ssthresh", ctypes.c_uint32),
        ("snd_wnd", ctypes.c_uint32),
        ("rcv_wnd", ctypes.c_uint32),
        ("mss_cache", ctypes.c_uint32),
        ("srtt_us", ctypes.c_uint32),
        ("min_rtt_us", ctypes.c_uint32),
        ("flight_size", ctypes.c_uint32),
        ("total_retrans", ctypes.c_uint32),
        ("timeouts", ctypes.c_uint32),
        ("app_wqueue", ctypes.c_uint32),
        ("app_wqueue_max", ctypes.c_uint32),
        ("rtt_samples", ctypes.c_uint32),
        ("fast_retrans", ctypes.c_uint32),
        ("tw_left_ms", ctypes.c_uint32),
        ("rtt_hist", ctypes.c_uint32 * RTT_BUCKETS),
        ("saddr", ctypes.c_uint8 * 16),
        ("daddr", ctypes.c_uint8 * 16),
        ("sport", ctypes.c_uint16),
        ("dport", ctypes.c_uint16),
        ("family", ctypes.c_uint16),
        ("state", ctypes.c_uint8),
        ("ca_state", ctypes.c_uint8),
        ("comm", ctypes.c_char * TASK_COMM_LEN),
    ]


class FlowNotice(ctypes.Structure):
    _fields_ = [
        ("cookie", ctypes.c_uint64),
        ("kind", ctypes.c_uint32),
        ("netns", ctypes.c_uint32),
        ("pid", ctypes.c_uint32),
        ("sport", ctypes.c_uint16),
        ("dport", ctypes.c_uint16),
        ("family", ctypes.c_uint16),
        ("lookup_v4", ctypes.c_uint16),
        ("saddr", ctypes.c_uint8 * 16),
        ("daddr", ctypes.c_uint8 * 16),
        ("comm", ctypes.c_char * TASK_COMM_LEN),
    ]


class FlowWant(ctypes.Structure):
    _fields_ = [
        ("cookie", ctypes.c_uint64),
        ("sport", ctypes.c_uint16),
        ("dport", ctypes.c_uint16),
        ("lookup_v4", ctypes.c_uint16),
        ("pad", ctypes.c_uint16),
        ("saddr", ctypes.c_uint8 * 16),
        ("daddr", ctypes.c_uint8 * 16),
    ]


class FlowHolder(ctypes.Structure):
    _fields_ = [
        ("cookie", ctypes.c_uint64),
        ("ino", ctypes.c_uint64),
        ("pid", ctypes.c_uint32),
        ("fd", ctypes.c_uint32),
        ("comm", ctypes.c_char * TASK_COMM_LEN),
    ]


class FlowCtl(ctypes.Structure):
    _fields_ = [
        ("gen", ctypes.c_uint32),
        ("epoch", ctypes.c_uint32),
        ("emit_all", ctypes.c_uint32),
        ("walk_budget", ctypes.c_uint32),
        ("walk_seen", ctypes.c_uint32),
        ("n_wants", ctypes.c_uint32),
        ("n_got", ctypes.c_uint32),
        ("hz", ctypes.c_uint32),
        ("files_all", ctypes.c_uint32),
    ]


MIRRORS = {"flow_record": FlowRecord, "flow_counters": FlowCounters, "flow_notice": FlowNotice,
           "flow_want": FlowWant, "flow_holder": FlowHolder, "flow_ctl": FlowCtl}
ENUM_MIRRORS = {"flow_flag": FlowFlag, "record_kind": RecordKind, "record_flag": RecordFlag,
                "notice_kind": NoticeKind, "tcptop_stat": Stat}

REC_SIZE = ctypes.sizeof(FlowRecord)
NOTICE_SIZE = ctypes.sizeof(FlowNotice)
WANT_SIZE = ctypes.sizeof(FlowWant)
HOLDER_SIZE = ctypes.sizeof(FlowHolder)


def struct_format(mirror: type[ctypes.Structure]) -> struct.Struct:
    """A struct.Struct that unpacks a mirror's bytes into one flat tuple (arrays of integers
    spread out, byte and char arrays as bytes), checked against the mirror's size."""
    codes = {ctypes.c_uint64: "Q", ctypes.c_uint32: "I", ctypes.c_uint16: "H", ctypes.c_uint8: "B"}
    fmt, pos = "<", 0
    for name, ctype in mirror._fields_:
        off = getattr(mirror, name).offset
        if off > pos:
            fmt += f"{off - pos}x"
        if issubclass(ctype, ctypes.Array):
            elem = ctype._type_
            fmt += f"{ctype._length_}s" if elem in (ctypes.c_uint8, ctypes.c_char) else f"{ctype._length_}{codes[elem]}"
        else:
            fmt += codes[ctype]
        pos = off + ctypes.sizeof(ctype)
    if ctypes.sizeof(mirror) > pos:
        fmt += f"{ctypes.sizeof(mirror) - pos}x"
    s = struct.Struct(fmt)
    assert s.size == ctypes.sizeof(mirror), (mirror.__name__, fmt)
    return s


def field_index(mirror: type[ctypes.Structure]) -> dict[str, int]:
    """Position of each member in the tuple struct_format(mirror) unpacks (arrays span several)."""
    out, i = {}, 0
    for name, ctype in mirror._fields_:
        out[name] = i
        spread = issubclass(ctype, ctypes.Array) and ctype._type_ not in (ctypes.c_uint8, ctypes.c_char)
        i += ctype._length_ if spread else 1
    return out


RECORD = struct_format(FlowRecord)
NOTICE = struct_format(FlowNotice)
HOLDER = struct_format(FlowHolder)
WANT = struct_format(FlowWant)
R = field_index(FlowRecord)
N = field_index(FlowNotice)
