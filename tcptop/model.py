"""The snapshot contract: immutable flows and snapshots, and their JSON form.

Everything downstream of the engine (the `--json` stream, the store, the screen,
replay files) speaks only these types, so this module is the one place where a
field's name, unit and meaning are fixed. It imports nothing from the engine.
"""

from __future__ import annotations

import json
import operator
from dataclasses import MISSING as dataclasses_MISSING, dataclass, field, fields
from types import MappingProxyType
from typing import Any, Mapping

# The sixteen flow-level metrics of the seed, in the seed's order, under the
# names the JSON contract uses. Integers except duration_s (seconds, float).
METRICS: tuple[str, ...] = (
    "flight_size",      # segments in flight: packets_out - (sacked_out + lost_out) + retrans_out
    "rwnd",             # receive window the peer advertises to us, bytes (snd_wnd)
    "cwnd",             # congestion window, segments
    "mss",              # sending MSS, bytes
    "retrans_packets",  # segments retransmitted over the connection's life
    "bytes_sent",       # data bytes sent, retransmissions included
    "bytes_received",   # data bytes received
    "fast_retrans",     # fast-recovery episodes entered (CA state -> Recovery)
    "timeouts",         # retransmission timeouts (RTO expirations)
    "app_wqueue",       # bytes written by the application, not yet acknowledged
    "app_wqueue_max",   # largest app_wqueue seen since the flow was first seen
    "rtt_samples",      # RTT samples the kernel's estimator took
    "rtt_sum_us",       # sum of those samples, microseconds
    "read_bytes",       # bytes returned to the application by read/recv calls
    "write_bytes",      # bytes accepted from the application by write/send calls
    "duration_s",       # seconds since the connection was established
)

# The seed's original metric names, for the help screen's glossary.
SEED_NAMES: Mapping[str, str] = {
    "flight_size": "FlightSize",
    "rwnd": "RWND",
    "cwnd": "CWND",
    "mss": "MSS",
    "retrans_packets": "RePackets",
    "bytes_sent": "BSent",
    "bytes_received": "BReceived",
    "fast_retrans": "fastRetrans",
    "timeouts": "Timeout",
    "app_wqueue": "CurAppWQueue",
    "app_wqueue_max": "MaxAppWQueue",
    "rtt_samples": "SampleRTT",
    "rtt_sum_us": "SumRTT",
    "read_bytes": "ReadByte",
    "write_bytes": "WriteByte",
    "duration_s": "Duration",
}


# Kernel TCP states (include/net/tcp_states.h): number -> the name Flow.state carries.
TCP_STATES: Mapping[int, str] = {
    1: "ESTABLISHED", 2: "SYN_SENT", 3: "SYN_RECV", 4: "FIN_WAIT1", 5: "FIN_WAIT2",
    6: "TIME_WAIT", 7: "CLOSE", 8: "CLOSE_WAIT", 9: "LAST_ACK", 10: "LISTEN",
    11: "CLOSING", 12: "NEW_SYN_RECV",
}
# How ss(8) spells each state: what the screen shows, and what a filter also accepts.
SS_STATE_NAMES: Mapping[str, str] = {
    "ESTABLISHED": "ESTAB", "SYN_SENT": "SYN-SENT", "SYN_RECV": "SYN-RECV",
    "FIN_WAIT1": "FIN-WAIT-1", "FIN_WAIT2": "FIN-WAIT-2", "TIME_WAIT": "TIME-WAIT",
    "CLOSE": "CLOSED", "CLOSE_WAIT": "CLOSE-WAIT", "LAST_ACK": "LAST-ACK",
    "LISTEN": "LISTEN", "CLOSING": "CLOSING", "NEW_SYN_RECV": "SYN-RECV",
}
# Congestion-avoidance states (enum tcp_ca_state): number -> Flow.ca_state.
CA_STATES: Mapping[int, str] = {0: "open", 1: "disorder", 2: "cwr", 3: "recovery", 4: "loss"}


class SnapshotFormatError(ValueError):
    """A JSON snapshot that does not follow the contract (e.g. a corrupt replay line)."""


# The one empty reason table every flow without drops shares (immutable, so sharing is safe).
NO_COUNTS: Mapping[str, int] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Flow:
    """One TCP connection as seen at one instant. Shared, never mutated."""

    id: int                 # socket cookie: unique for the life of the host's boot
    family: str             # "ipv4" or "ipv6"
    laddr: str
    lport: int
    raddr: str
    rport: int
    state: str              # kernel TCP state name, e.g. "ESTABLISHED"
    pid: int                # owning process (0 when unknown)
    comm: str
    netns: int              # network namespace inode number
    # the sixteen metrics
    flight_size: int
    rwnd: int
    cwnd: int
    mss: int
    retrans_packets: int
    bytes_sent: int
    bytes_received: int
    fast_retrans: int
    timeouts: int
    app_wqueue: int
    app_wqueue_max: int
    rtt_samples: int
    rtt_sum_us: int
    read_bytes: int
    write_bytes: int
    duration_s: float       # age when this flow was captured; an unchanged flow is reused
                            # across snapshots, so its age now is age_s(snapshot.ts)
    # useful extras
    srtt_us: int = 0        # smoothed RTT, microseconds
    min_rtt_us: int = 0
    rcv_wnd: int = 0        # window we advertise to the peer, bytes
    ssthresh: int = 0
    ca_state: str = "open"  # open, disorder, cwr, recovery, loss
    closed: bool = False    # connection is gone; kept a few snapshots so it can be seen
    since_start: bool = False  # counters that need events only cover tcptop's run
    cgroup: str = ""        # cgroup v2 path of the owning process
    container: str = ""     # container id found in that path, if any
    latency: Mapping[str, Any] | None = None  # packet-level stages (packet engine)
    # Unix times of establishment (or first sight, with since_start) and of the
    # close. The engine reuses the Flow of an unchanged connection across
    # snapshots, so its age is computed against the snapshot's time, not stored.
    established_ts: float = 0.0
    closed_ts: float = 0.0
    # "client" (this end connected), "server" (it was accepted), "" (not known: older than tcptop).
    role: str = ""
    # RTT samples by bucket: (upper bound in µs, samples) of each non-empty bucket, ascending;
    # the bounds are the engine's (tcptop/engines/histogram.py). Empty when not measured.
    rtt_hist: tuple[tuple[int, int], ...] = ()
    # A closed connection's end the kernel still keeps (state TIME_WAIT, or FIN_WAIT2 after
    # the application closed): unix time at which its timer drops it; 0 for other flows.
    tw_expires_ts: float = 0.0
    # Why it fails (the failure engine), whole life as far as tcptop saw it. `drops`: packets of
    # this connection the kernel dropped, by the kernel's reason (enum skb_drop_reason names
    # without SKB_DROP_REASON_; drops without a reason are not counted). Resets each way, and
    # the most recent one's reason: "sent REASON" (enum sk_rst_reason without SK_RST_REASON_)
    # or "received ERRNO" (what the kernel gave the application), "" when none.
    drops: Mapping[str, int] = field(default_factory=lambda: NO_COUNTS)
    resets_sent: int = 0
    resets_received: int = 0
    last_reset_reason: str = ""

    @property
    def drops_total(self) -> int:
        return sum(self.drops.values()) if self.drops else 0

    @property
    def ended(self) -> bool:
        """Over for its application: closed, or only the kernel's end is left (TIME_WAIT, an
        orphaned FIN_WAIT2) until its timer drops it."""
        return self.closed or self.tw_expires_ts > 0

    def age_s(self, now_ts: float) -> float:
        """Seconds since establishment as of `now_ts` (a snapshot's ts); fixed once closed."""
        if not self.established_ts:
            return self.duration_s
        return max(0.0, (self.closed_ts or now_ts) - self.established_ts)

    @property
    def key(self) -> int:
        return self.id

    @property
    def rtt_mean_us(self) -> float:
        """Mean of the RTT samples, or the smoothed RTT when there were none."""
        if self.rtt_samples:
            return self.rtt_sum_us / self.rtt_samples
        return float(self.srtt_us)

    def to_dict(self) -> dict[str, Any]:
        d = dict(zip(_FLOW_FIELDS, _flow_values(self)))  # all in C: --json encodes every flow
        if d["latency"] is None:
            del d["latency"]
        d["drops"] = dict(d["drops"])
        return d


# json.dumps(d, separators=(",", ":")) builds a new encoder at every call; one will do.
_compact = json.JSONEncoder(separators=(",", ":")).encode
FLOW_FIELDS = _FLOW_FIELDS = tuple(f.name for f in fields(Flow))
_flow_values = operator.attrgetter(*_FLOW_FIELDS)
_STR_FIELDS = frozenset(f.name for f in fields(Flow) if f.type == "str")
_BOOL_FIELDS = frozenset(f.name for f in fields(Flow) if f.type == "bool")
_FLOAT_FIELDS = frozenset(f.name for f in fields(Flow) if f.type == "float")
_REQUIRED_FIELDS = (
    "id", "family", "laddr", "lport", "raddr", "rport", "state", "pid", "comm", "netns",
) + METRICS


@dataclass(frozen=True, slots=True)
class Listener:
    """One listening socket at one poll: its queues and what it dropped. Shared, never mutated.

    It answers the filter language like a flow does (no remote end, state LISTEN)."""

    id: int                 # socket cookie
    family: str
    laddr: str              # "0.0.0.0" / "::" for a wildcard bind
    lport: int
    pid: int                # a process holding it (0 when unknown)
    comm: str
    netns: int
    container: str
    accept_queue: int       # connections established, waiting for accept() (ss Recv-Q)
    accept_queue_max: int   # the backlog listen() was given (ss Send-Q)
    syn_queue: int          # handshakes waiting for their last ACK (request sockets)
    drops: int              # the socket's own drop counter (ss -tlm "d"): SYNs and handshakes dropped,
                            # mostly because the accept queue was full (ListenDrops)
    synack_retrans: int     # SYN-ACKs retransmitted since tcptop started
    drop_reasons: Mapping[str, int] = field(default_factory=lambda: NO_COUNTS)  # packets dropped with this listener named, by reason

    raddr = property(lambda self: "")
    rport = property(lambda self: 0)
    state = property(lambda self: "LISTEN")
    closed = property(lambda self: False)

    def to_dict(self) -> dict[str, Any]:
        d = {f: getattr(self, f) for f in _LISTENER_FIELDS}
        d["drop_reasons"] = dict(self.drop_reasons)
        return d


_LISTENER_FIELDS = tuple(f.name for f in fields(Listener))


@dataclass(frozen=True, slots=True)
class Failure:
    """Connects the kernel failed (they never established), by process, destination and errno, since
    tcptop started. A connect the application gave up on itself (closed while still connecting) is
    not one: the kernel reports no error for it. Shared, never mutated."""

    pid: int                # the process that called connect()
    comm: str
    netns: int
    raddr: str
    rport: int
    reason: str             # the kernel's errno name, what connect() reported: ECONNREFUSED, ETIMEDOUT, ...
    count: int

    # It answers the filter language like a flow that never got past SYN_SENT.
    laddr = property(lambda self: "")
    lport = property(lambda self: 0)
    state = property(lambda self: "SYN_SENT")
    closed = property(lambda self: False)
    family = property(lambda self: "ipv6" if ":" in self.raddr else "ipv4")

    def to_dict(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in _FAILURE_FIELDS}


_FAILURE_FIELDS = tuple(f.name for f in fields(Failure))


@dataclass(frozen=True, slots=True)
class RunInfo:
    """Run-level health: what the engine could not see, so numbers are never silently partial."""

    engine: str = "core"
    flows_evicted: int = 0      # flows the kernel maps had no room for
    events_lost: int = 0        # kernel updates dropped (map full, closed-flow overflow)
    # events_lost by cause, every cause the engine counts (zeros too; empty in replays of files
    # written before it existed): which map or ring had no room says what to raise.
    events_lost_by: Mapping[str, int] = field(default_factory=dict)
    hooks: Mapping[str, str] = field(default_factory=dict)  # hook -> "ok" or why not
    degraded: tuple[str, ...] = ()  # human sentences: metric and reason
    # Milliseconds each part of the poll took (e.g. "kernel_read", "decode"); empty in replays
    # of files written before it existed.
    timing: Mapping[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "engine": self.engine,
            "flows_evicted": self.flows_evicted,
            "events_lost": self.events_lost,
            "events_lost_by": dict(self.events_lost_by),
            "hooks": dict(self.hooks),
            "degraded": list(self.degraded),
            "timing": dict(self.timing),
        }


@dataclass(frozen=True, slots=True)
class Snapshot:
    """All flows at one poll. `ts` is unix time; `interval_s` the time since the previous poll."""

    ts: float
    interval_s: float
    flows: tuple[Flow, ...]
    seq: int = 0
    host: str = ""
    kernel: str = ""
    run: RunInfo = field(default_factory=RunInfo)
    latency: Mapping[str, Any] | None = None  # host-wide packet-level stages
    listeners: tuple[Listener, ...] = ()
    failures: tuple[Failure, ...] = ()
    # Drops and sent resets since start that no flow or listener could be named for, by
    # reason: {"drops": {REASON: n}, "resets_sent": {REASON: n}}.
    unmatched: Mapping[str, Mapping[str, int]] = field(default_factory=lambda: NO_COUNTS)
    # (flows new or changed since this source's previous snapshot, ids it no longer lists), when
    # the source knows (an engine does; a replay does not): a consumer that saw every snapshot
    # finds what changed without a pass over 100,000 flows. Not part of the JSON contract.
    changes: tuple[tuple[Flow, ...], tuple[int, ...]] | None = field(default=None, compare=False, repr=False)

    def to_dict(self, with_flows: bool = True) -> dict[str, Any]:
        d: dict[str, Any] = {
            "ts": self.ts,
            "interval_s": self.interval_s,
            "seq": self.seq,
            "host": self.host,
            "kernel": self.kernel,
            "flows": [_flow_dict(f, self.ts) for f in self.flows] if with_flows else [],
            "run": self.run.to_dict(),
            "listeners": [x.to_dict() for x in self.listeners],
            "failures": [x.to_dict() for x in self.failures],
            "unmatched": {k: dict(v) for k, v in self.unmatched.items()},
        }
        if self.latency is not None:
            d["latency"] = self.latency
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))


class JsonEncoder:
    """Encodes a stream of snapshots exactly as Snapshot.to_json does, reusing the text of
    flows that did not change: the engine hands the same Flow object back for an idle
    connection, and only its age has to be written anew."""

    _AGE = '"duration_s":0'

    def __init__(self) -> None:
        self._cache: dict[int, tuple[Flow, str, str]] = {}

    def _pieces(self, f: Flow) -> tuple[Flow, str, str]:
        d = f.to_dict()
        d["duration_s"] = 0  # placeholder in the key's own position
        text = _compact(d)
        i = text.index(self._AGE) + len(self._AGE) - 1
        return f, text[:i], text[i + 1:]

    def encode(self, snap: Snapshot) -> str:
        return "".join(self.parts(snap))

    def parts(self, snap: Snapshot, **more: Any) -> list[str]:
        """The line in three parts, for a writer that writes them in turn: the flows' text,
        ~90 MB at 100,000 flows, is not copied again to join them. `more`: keys after the
        snapshot's own."""
        head = json.dumps({**snap.to_dict(with_flows=False), **more}, separators=(",", ":"))
        i = head.index('"flows":[') + len('"flows":[')
        return [head[:i], self._flows_text(snap.flows, snap.ts), head[i:]]

    def _flows_text(self, flows: tuple[Flow, ...], ts: float) -> str:
        """The flows' texts joined by commas, each with its age as of `ts`; the cache keeps
        this snapshot's flows."""
        cache, fresh, parts = self._cache, {}, []
        for f in flows:
            hit = cache.get(f.id)
            if hit is None or hit[0] is not f:
                hit = self._pieces(f)
            fresh[f.id] = hit
            parts.append(f"{hit[1]}{round(f.age_s(ts), 3)!r}{hit[2]}")
        self._cache = fresh
        return ",".join(parts)


def _flow_dict(f: Flow, ts: float) -> dict[str, Any]:
    d = f.to_dict()
    d["duration_s"] = round(f.age_s(ts), 3)
    return d


# What a replay line may carry, checked field by field so a file can never put a value on
# screen that the live engine could not have produced: every integer of the contract is a
# kernel counter, id or size (0 to 2**64 - 1; ports 0 to 65535), every float a time or
# age (finite, 0 to 2**64 s). Fields a newer tcptop adds are ignored; fields an older
# one did not write take their defaults.
U64_MAX = 2**64 - 1
_INT_RANGES: Mapping[str, int] = {"lport": 65535, "rport": 65535}  # also listeners' and failed connects'
# Numbers the screen reads from a latency stage; other keys are left to newer writers.
_STAGE_NUMBERS = ("count", "p50_us", "p90_us", "p99_us", "mean_us", "max_us")


def _bad(where: str, name: str, what: str) -> SnapshotFormatError:
    return SnapshotFormatError(f"{where} field {name} is {what}")


def _range(hi: int) -> str:
    return f"out of range (0 to {'2^64-1' if hi == U64_MAX else hi})"


def _check_int(where: str, name: str, v: Any, hi: int = U64_MAX) -> int:
    if type(v) is not int:  # bool is an int to Python, not to the contract
        raise _bad(where, name, "not an integer")
    if not 0 <= v <= hi:
        raise _bad(where, name, _range(hi))
    return v


def _check_float(where: str, name: str, v: Any) -> float:
    if type(v) not in (int, float):
        raise _bad(where, name, "not a number")
    if not 0 <= v <= U64_MAX:
        raise _bad(where, name, _range(U64_MAX))
    return float(v)


def _check_str(where: str, name: str, v: Any) -> str:
    if not isinstance(v, str):
        raise _bad(where, name, "not a string")
    return v


def _check_latency(where: str, v: Any) -> Mapping[str, Any] | None:
    """The packet-level stages: {direction: {stage: {"count", "p50_us", ..., "buckets"}}}."""
    if v is None:
        return None
    if not isinstance(v, Mapping):
        raise _bad(where, "latency", "not an object")
    for direction in ("rx", "tx"):
        stages = v.get(direction)
        if stages is None:
            continue
        if not isinstance(stages, Mapping) or not all(isinstance(st, Mapping) for st in stages.values()):
            raise _bad(where, f"latency.{direction}", "not an object of stages")
        for key, stage in stages.items():
            name = f"latency.{direction}.{_name(key)}"
            for k in _STAGE_NUMBERS:
                x = stage.get(k)
                if x is not None:
                    _check_int(where, f"{name}.{k}", x) if k == "count" else _check_float(where, f"{name}.{k}", x)
            buckets = stage.get("buckets", [])
            if not isinstance(buckets, list) or not all(
                    isinstance(b, list) and len(b) == 2 and (b[0] is None or _is_u64(b[0])) and _is_u64(b[1])
                    for b in buckets):
                raise _bad(where, f"{name}.buckets", "not a list of [bound_ns, samples] pairs")
    return v


def _name(key: str) -> str:
    """A key from the file as an error message names it: printable and short, on one line."""
    shown = "".join(c if c.isprintable() else "?" for c in key[:30])
    return shown + ("..." if len(key) > 30 else "")


def _is_u64(v: Any) -> bool:
    return type(v) is int and 0 <= v <= U64_MAX


def flow_from_dict(d: Mapping[str, Any]) -> Flow:
    """Build a Flow from its JSON form, checking names, types and ranges (raises SnapshotFormatError)."""
    if not isinstance(d, Mapping):
        raise SnapshotFormatError("flow is not an object")
    missing = [k for k in _REQUIRED_FIELDS if k not in d]
    if missing:
        raise SnapshotFormatError(f"flow lacks {', '.join(missing)}")
    kw: dict[str, Any] = {}
    for name in _FLOW_FIELDS:
        if name not in d:
            continue
        v = d[name]
        if name in _FLOAT_FIELDS:
            v = _check_float("flow", name, v)
        elif name in _BOOL_FIELDS:
            if not isinstance(v, bool):
                raise _bad("flow", name, "not true/false")
        elif name in _STR_FIELDS:
            _check_str("flow", name, v)
        elif name == "latency":
            _check_latency("flow", v)
        elif name == "drops":
            v = _counts("flow", name, v)
        elif name == "rtt_hist":
            if not isinstance(v, list) or not all(
                    isinstance(p, list) and len(p) == 2 and all(_is_u64(x) for x in p) for p in v):
                raise _bad("flow", name, "not a list of [bound_us, count] pairs")
            v = tuple(tuple(p) for p in v)
        else:
            _check_int("flow", name, v, _INT_RANGES.get(name, U64_MAX))
        kw[name] = v
    return Flow(**kw)


def _counts(where: str, name: str, v: Any) -> Mapping[str, int]:
    """A {reason: count} table: names are strings, counts kernel counters (0 to 2**64 - 1)."""
    if not isinstance(v, Mapping) or not all(isinstance(k, str) and _is_u64(n) for k, n in v.items()):
        raise _bad(where, name, "not an object of counts")
    return MappingProxyType(dict(v)) if v else NO_COUNTS


def _record(d: Any, cls: type, where: str) -> Any:
    """A Listener or Failure from its JSON form, every field checked against its declared type."""
    if not isinstance(d, Mapping):
        raise SnapshotFormatError(f"{where} is not an object")
    kw: dict[str, Any] = {}
    for f in fields(cls):
        if f.name not in d:
            if f.default is dataclasses_MISSING and f.default_factory is dataclasses_MISSING:
                raise SnapshotFormatError(f"{where} lacks {f.name}")
            continue
        v = d[f.name]
        if f.type == "str":
            kw[f.name] = _check_str(where, f.name, v)
        elif f.type == "int":
            kw[f.name] = _check_int(where, f.name, v, _INT_RANGES.get(f.name, U64_MAX))
        else:
            kw[f.name] = _counts(where, f.name, v)
    return cls(**kw)


def _records(d: Mapping[str, Any], name: str, cls: type, where: str) -> tuple:
    v = d.get(name, [])
    if not isinstance(v, list):
        raise _bad("snapshot", name, "not a list")
    return tuple(_record(x, cls, where) for x in v)


def _unmatched(v: Any) -> Mapping[str, Mapping[str, int]]:
    if not isinstance(v, Mapping):
        raise _bad("snapshot", "unmatched", "not an object")
    return MappingProxyType({k: _counts("unmatched", _name(k), t) for k, t in v.items()}) if v else NO_COUNTS  # type: ignore[return-value]


def _run_from_dict(run: Any) -> RunInfo:
    if not isinstance(run, Mapping):
        raise _bad("snapshot", "run", "not an object")
    hooks = run.get("hooks", {})
    if not isinstance(hooks, Mapping) or not all(isinstance(x, str) for x in hooks.values()):
        raise _bad("run", "hooks", "not an object of strings")
    degraded = run.get("degraded", [])
    if not isinstance(degraded, list) or not all(isinstance(x, str) for x in degraded):
        raise _bad("run", "degraded", "not a list of strings")
    return RunInfo(
        engine=_check_str("run", "engine", run.get("engine", "replay")),
        flows_evicted=_check_int("run", "flows_evicted", run.get("flows_evicted", 0)),
        events_lost=_check_int("run", "events_lost", run.get("events_lost", 0)),
        events_lost_by=_lost_by(run.get("events_lost_by", {})),
        hooks=dict(hooks),
        degraded=tuple(degraded),
        timing=_timing(run.get("timing", {})),
    )


def _lost_by(lost: Any) -> dict[str, int]:
    if not isinstance(lost, Mapping):
        raise _bad("run", "events_lost_by", "not an object")
    return {str(k): _check_int("run", f"events_lost_by.{k}", v) for k, v in lost.items()}


def _timing(timing: Any) -> dict[str, float]:
    if not isinstance(timing, Mapping) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in timing.values()):
        raise _bad("run", "timing", "not an object of numbers")
    return {str(k): float(v) for k, v in timing.items()}


def snapshot_from_dict(d: Mapping[str, Any]) -> Snapshot:
    """Build a Snapshot from its JSON form (raises SnapshotFormatError)."""
    if not isinstance(d, Mapping):
        raise SnapshotFormatError("snapshot is not a JSON object")
    for k in ("ts", "interval_s", "flows"):
        if k not in d:
            raise SnapshotFormatError(f"snapshot lacks {k}")
    if d.get("delta"):
        raise SnapshotFormatError("a --changes line (only what changed): replay needs full snapshots")
    if not isinstance(d["flows"], list):
        raise _bad("snapshot", "flows", "not a list")
    return Snapshot(
        ts=_check_float("snapshot", "ts", d["ts"]),
        interval_s=_check_float("snapshot", "interval_s", d["interval_s"]),
        flows=tuple(flow_from_dict(f) for f in d["flows"]),
        seq=_check_int("snapshot", "seq", d.get("seq", 0)),
        host=_check_str("snapshot", "host", d.get("host", "")),
        kernel=_check_str("snapshot", "kernel", d.get("kernel", "")),
        run=_run_from_dict({} if d.get("run") is None else d["run"]),
        latency=_check_latency("snapshot", d.get("latency")),
        listeners=_records(d, "listeners", Listener, "listener"),
        failures=_records(d, "failures", Failure, "failure"),
        unmatched=_unmatched(d.get("unmatched", {})),
    )


def _no_constant(name: str) -> Any:
    raise SnapshotFormatError(f"not JSON ({name} is not a number)")


def snapshot_from_json(line: str) -> Snapshot:
    """Decode one `--json` line. Anything that is not a snapshot raises SnapshotFormatError with
    a one-line reason; the work is linear in the line's length (json is C; every field is
    checked once) and so is the memory."""
    try:
        d = json.loads(line, parse_constant=_no_constant)
    except json.JSONDecodeError as e:
        raise SnapshotFormatError(f"not JSON ({e.msg} at column {e.colno})") from None
    except SnapshotFormatError:
        raise
    except RecursionError:
        raise SnapshotFormatError("not a snapshot (JSON nested too deep)") from None
    except ValueError as e:  # e.g. an integer of more than 4300 digits
        raise SnapshotFormatError(f"not JSON ({str(e).splitlines()[0][:80]})") from None
    return snapshot_from_dict(d)
