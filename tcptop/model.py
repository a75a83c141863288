"""The snapshot contract: immutable flows and snapshots, and their JSON form.

Everything downstream of the engine (the `--json` stream, the store, the screen,
replay files) speaks only these types, so this module is the one place where a
field's name, unit and meaning are fixed. It imports nothing from the engine.
"""

from __future__ import annotations

import json
import math
import operator
from dataclasses import dataclass, field, fields
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
        return d


# json.dumps(d, separators=(",", ":")) builds a new encoder at every call; one will do.
_compact = json.JSONEncoder(separators=(",", ":")).encode
_FLOW_FIELDS = tuple(f.name for f in fields(Flow))
_flow_values = operator.attrgetter(*_FLOW_FIELDS)
_STR_FIELDS = frozenset(f.name for f in fields(Flow) if f.type == "str")
_BOOL_FIELDS = frozenset(f.name for f in fields(Flow) if f.type == "bool")
_FLOAT_FIELDS = frozenset(f.name for f in fields(Flow) if f.type == "float")
_REQUIRED_FIELDS = (
    "id", "family", "laddr", "lport", "raddr", "rport", "state", "pid", "comm", "netns",
) + METRICS


@dataclass(frozen=True, slots=True)
class RunInfo:
    """Run-level health: what the engine could not see, so numbers are never silently partial."""

    engine: str = "core"
    flows_evicted: int = 0      # flows the kernel maps had no room for
    events_lost: int = 0        # kernel updates dropped (map full, closed-flow overflow)
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

    def to_dict(self, with_flows: bool = True) -> dict[str, Any]:
        d: dict[str, Any] = {
            "ts": self.ts,
            "interval_s": self.interval_s,
            "seq": self.seq,
            "host": self.host,
            "kernel": self.kernel,
            "flows": [_flow_dict(f, self.ts) for f in self.flows] if with_flows else [],
            "run": self.run.to_dict(),
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
        cache, fresh, parts = self._cache, {}, []
        for f in snap.flows:
            hit = cache.get(f.id)
            if hit is None or hit[0] is not f:
                hit = self._pieces(f)
            fresh[f.id] = hit
            parts.append(f"{hit[1]}{round(f.age_s(snap.ts), 3)!r}{hit[2]}")
        self._cache = fresh
        head = json.dumps(snap.to_dict(with_flows=False), separators=(",", ":"))
        i = head.index('"flows":[') + len('"flows":[')
        return head[:i] + ",".join(parts) + head[i:]


def _flow_dict(f: Flow, ts: float) -> dict[str, Any]:
    d = f.to_dict()
    d["duration_s"] = round(f.age_s(ts), 3)
    return d


def flow_from_dict(d: Mapping[str, Any]) -> Flow:
    """Build a Flow from its JSON form, checking names and types (raises SnapshotFormatError)."""
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
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
                raise SnapshotFormatError(f"flow field {name} is not a number")
            v = float(v)
        elif name in _BOOL_FIELDS:
            if not isinstance(v, bool):
                raise SnapshotFormatError(f"flow field {name} is not true/false")
        elif name in _STR_FIELDS:
            if not isinstance(v, str):
                raise SnapshotFormatError(f"flow field {name} is not a string")
        elif name == "latency":
            if v is not None and not isinstance(v, Mapping):
                raise SnapshotFormatError("flow field latency is not an object")
        elif name == "rtt_hist":
            if not isinstance(v, list) or not all(
                    isinstance(p, list) and len(p) == 2 and all(type(x) is int and x >= 0 for x in p) for p in v):
                raise SnapshotFormatError("flow field rtt_hist is not a list of [bound_us, count] pairs")
            v = tuple(tuple(p) for p in v)
        elif not isinstance(v, int) or isinstance(v, bool):
            raise SnapshotFormatError(f"flow field {name} is not an integer")
        kw[name] = v
    return Flow(**kw)


def snapshot_from_dict(d: Mapping[str, Any]) -> Snapshot:
    """Build a Snapshot from its JSON form (raises SnapshotFormatError)."""
    if not isinstance(d, Mapping):
        raise SnapshotFormatError("snapshot is not a JSON object")
    for k in ("ts", "interval_s", "flows"):
        if k not in d:
            raise SnapshotFormatError(f"snapshot lacks {k}")
    if d.get("delta"):
        raise SnapshotFormatError("a --changes line (only what changed): replay needs full snapshots")
    ts, interval = d["ts"], d["interval_s"]
    for name, v in (("ts", ts), ("interval_s", interval)):
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
            raise SnapshotFormatError(f"snapshot field {name} is not a number")
    if not isinstance(d["flows"], list):
        raise SnapshotFormatError("snapshot field flows is not a list")
    run = d.get("run") or {}
    if not isinstance(run, Mapping):
        raise SnapshotFormatError("snapshot field run is not an object")
    try:
        run_info = RunInfo(
            engine=str(run.get("engine", "replay")),
            flows_evicted=int(run.get("flows_evicted", 0)),
            events_lost=int(run.get("events_lost", 0)),
            hooks=dict(run.get("hooks", {})),
            degraded=tuple(str(x) for x in run.get("degraded", ())),
            timing={str(k): float(v) for k, v in dict(run.get("timing", {})).items()},
        )
    except (TypeError, ValueError) as e:
        raise SnapshotFormatError(f"snapshot field run is malformed: {e}") from None
    latency = d.get("latency")
    if latency is not None and not isinstance(latency, Mapping):
        raise SnapshotFormatError("snapshot field latency is not an object")
    return Snapshot(
        ts=float(ts),
        interval_s=float(interval),
        flows=tuple(flow_from_dict(f) for f in d["flows"]),
        seq=int(d.get("seq", 0)) if isinstance(d.get("seq", 0), int) else 0,
        host=str(d.get("host", "")),
        kernel=str(d.get("kernel", "")),
        run=run_info,
        latency=latency,
    )


def snapshot_from_json(line: str) -> Snapshot:
    try:
        d = json.loads(line)
    except json.JSONDecodeError as e:
        raise SnapshotFormatError(f"not JSON ({e.msg} at column {e.colno})") from None
    return snapshot_from_dict(d)
