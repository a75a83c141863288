"""Exporter aggregation: snapshots in, one immutable Frame per poll out, counters monotonic.

A group's counters are sums of *deltas*: each poll, every connection adds what its own
counters moved since the poll before to the group it is in now. So a group's counter
never goes down when its connections close (a closed flow's final record is its last
delta) or move to another group (an owner found later, a guessed role), and a group with
no connection left keeps its totals. A connection first seen counts in full: connections
older than tcptop bring their whole life's kernel-kept counts (bytes, retransmissions,
timeouts) with them at the first poll.

The series budget (`max_series`) is a hard cap on what one exposition holds. Every group
costs a fixed number of series (GROUP_SERIES) plus one `tcptop_connections` series per
state it has; a new group is admitted only while the budget has room, else the least
recently active group without a live connection is evicted (its series disappear: that
is a counter reset for Prometheus if it comes back), else the connection is counted in the
overflow group (every label `_overflow_`), which is always budgeted. What does not depend on
the traffic can still grow after groups were admitted (the packet engine's first window
brings its stage histograms, a new service its listener series): then the groups with the
fewest live connections are folded into the overflow group — their totals and connections
move there, their own series disappear — so the cap holds for every exposition.

The exported histogram buckets are a fixed subset of the kernel's own bucket bounds
(powers of two), so every cumulative count is exact: a kernel bucket is never split,
only merged with its neighbours. A kernel bucket whose upper bound is not one of them is
counted in the next exported bucket up.
"""

from __future__ import annotations

import heapq
import operator
import time
from bisect import bisect_left
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

from tcptop.frontends.exporter.failures import FailureSeries, fold
from tcptop.frontends.exporter.groups import OVERFLOW_KEY, GroupKey, endpoint, group_key
from tcptop.model import TCP_STATES, Flow, Snapshot

# Flow fields summed into group counters, in this order everywhere (Frame, metrics).
COUNTER_FIELDS: tuple[str, ...] = (
    "retrans_packets", "fast_retrans", "timeouts",
    "bytes_sent", "bytes_received", "read_bytes", "write_bytes",
    "drops_total", "resets_sent", "resets_received",
)
_counter_values = operator.attrgetter(*COUNTER_FIELDS, "rtt_sum_us")
N_COUNTERS = len(COUNTER_FIELDS)

# Exported histogram bounds: powers of two, in the unit each kernel histogram uses.
RTT_BOUNDS_US: tuple[int, ...] = tuple(1 << k for k in range(3, 22))     # 8 µs .. 2.1 s
STAGE_BOUNDS_NS: tuple[int, ...] = tuple(1 << k for k in range(9, 35))  # 512 ns .. 17.2 s

# Series per group: the counters, tcptop_closed_connections_total, two gauges (zero-window
# connections, send-queue bytes) and the RTT histogram (+Inf, _sum, _count); plus one
# tcptop_connections series per state present, budgeted separately.
GROUP_SERIES = N_COUNTERS + 1 + 2 + len(RTT_BOUNDS_US) + 3
# The overflow group always has room for every state.
OVERFLOW_SERIES = GROUP_SERIES + len(TCP_STATES)
STAGE_SERIES = len(STAGE_BOUNDS_NS) + 3
# Per-connection series of one top-K flow (metrics.FLOW_METRICS).
FLOW_SERIES = 7
# Series that do not depend on the traffic: build info, engine health (besides one per
# hook and one per cause of lost events), the exporter's own counters (metrics.py emits
# exactly these).
FIXED_SERIES = 1 + 2 + 9

ZERO_WINDOW_STATES = frozenset({"ESTABLISHED"})


class Hist:
    """A histogram over fixed bounds: per-bucket counts (the last is +Inf) and the sum."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[int, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def add(self, buckets: Iterable[tuple[int | None, int]]) -> None:
        """Add kernel buckets [(upper bound or None for 'and above', samples), ...]."""
        bounds, counts = self.bounds, self.counts
        for ub, n in buckets:
            if n > 0:
                counts[len(bounds) if ub is None else bisect_left(bounds, ub)] += n

    def cumulative(self) -> tuple[int, ...]:
        out, run = [], 0
        for c in self.counts:
            run += c
            out.append(run)
        return tuple(out)


def bucket_delta(now: Iterable, before: Iterable) -> list[tuple[Any, int]]:
    """Per-bucket growth between two cumulative kernel histograms ([(bound, samples)...])."""
    prev = dict((ub, n) for ub, n in before)
    return [(ub, n - prev.get(ub, 0)) for ub, n in now if n > prev.get(ub, 0)]


@dataclass(frozen=True, slots=True)
class GroupRow:
    key: GroupKey
    counters: tuple[int, ...]       # COUNTER_FIELDS order
    closed: int                     # connections of the group that closed
    rtt: tuple[tuple[int, ...], float] | None  # (cumulative counts per RTT_BOUNDS_US + Inf, sum seconds)
    zero_window: int
    send_queue: int


@dataclass(frozen=True, slots=True)
class StageRow:
    direction: str
    stage: str
    cumulative: tuple[int, ...]     # per STAGE_BOUNDS_NS + Inf
    sum_s: float


@dataclass(frozen=True, slots=True)
class FlowRow:
    labels: tuple[str, str, str, str, str]   # comm, pid, local, remote, netns
    values: tuple[float, ...]                # metrics.FLOW_METRICS order


@dataclass(frozen=True, slots=True)
class Frame:
    """Everything one exposition shows, computed once per poll; never mutated."""

    seq: int
    ts: float
    groups: tuple[GroupRow, ...]
    connections: tuple[tuple[GroupKey, str, int], ...]   # (group, state, live connections)
    stages: tuple[StageRow, ...]
    stage_source: str                # "host" (all packets) or "flows" (the filtered flows)
    flows: tuple[FlowRow, ...]
    run: Any                         # the snapshot's RunInfo
    host: str = ""
    kernel: str = ""
    poll_s: float = 0.0              # time the engine's poll plus this aggregation took
    polls: int = 0
    series: int = 0                  # series the exposition holds
    series_limit: int = 0
    overflowed: int = 0              # connections ever counted in the overflow group
    evicted: int = 0                 # idle groups removed to make room
    folded: int = 0                  # live groups folded into the overflow group when the room shrank
    failures: FailureSeries = FailureSeries()  # listeners, failed connects, unmatched (exporter/failures.py)


class _Tracked:
    """What the aggregator remembers of one connection between polls: the values it last
    counted, and what it adds to its group's gauges while it is live (`live_key` set)."""

    __slots__ = ("flow", "kept", "key", "values", "rtt", "stages", "stage_window", "overflowed", "recent_retrans",
                 "changed_seq",
                 "live_key", "live_state", "live_zero", "live_wqueue")

    def __init__(self) -> None:
        self.flow: Flow | None = None
        self.kept = False
        self.key: GroupKey | None = None
        self.values: tuple[int, ...] = (0,) * (N_COUNTERS + 1)
        self.rtt: tuple = ()
        self.stages: dict[tuple[str, str], tuple] = {}
        self.stage_window = None  # id of the packet-level window last added (latency["window"])
        self.overflowed = False
        self.recent_retrans = 0   # retransmissions since the poll before, as of changed_seq
        self.changed_seq = 0
        self.live_key: GroupKey | None = None
        self.live_state = ""
        self.live_zero = False
        self.live_wqueue = 0


class _Group:
    __slots__ = ("counters", "closed", "rtt", "live", "idle_since")

    def __init__(self) -> None:
        self.counters = [0] * N_COUNTERS
        self.closed = 0
        self.rtt: Hist | None = None
        self.live = 0         # live connections counted in the group now
        self.idle_since = 0   # the poll at which the last one left


def hook_up(status: str) -> int | None:
    """tcptop_engine_hook_up of a hook's run-info status: 1 attached ("ok", "ok: how"), 0 unavailable
    on this kernel, None (no series) when the user switched it off (--latency off)."""
    if status.startswith("off"):
        return None
    return 1 if status == "ok" or status.startswith("ok:") else 0


class Aggregator:
    """Folds snapshots into monotonic group counters, gauges and histograms (one thread).

    An idle connection comes back from the engine as the same Flow object, so a poll costs
    one identity check per unchanged connection: counters and gauges are updated only for
    connections that changed, appeared or left.
    """

    def __init__(self, keep: Callable[[Flow], bool] | None = None, *, remote_mode: str = "auto",
                 top_flows: int = 0, max_series: int = 10000, stages_from_flows: bool | None = None) -> None:
        self.keep = keep
        self.remote_mode = remote_mode
        self.top_flows = top_flows
        self.max_series = max_series
        # Stage histograms: the host-wide ones (every packet) unless a filter limits what is
        # exported; then the sums of the kept flows' own stage histograms.
        self.stages_from_flows = keep is not None if stages_from_flows is None else stages_from_flows
        self._tracks: dict[int, _Tracked] = {}
        self._groups: dict[GroupKey, _Group] = {OVERFLOW_KEY: _Group()}
        self._stages: dict[tuple[str, str], Hist] = {}
        self._host_window = None  # id of the host's packet-level window last added
        # Gauges, kept up to date connection by connection.
        self._conns: dict[tuple[GroupKey, str], int] = {}
        self._zero_window: dict[GroupKey, int] = {}
        self._send_queue: dict[GroupKey, int] = {}
        self._seq = 0
        self.overflowed = 0
        self.evicted = 0
        self.folded = 0
        self._overflow_used = False  # the overflow group is shown once something was counted in it
        self._idle: list[GroupKey] | None = None
        self._failures = FailureSeries()

    # -- budget --------------------------------------------------------------

    def fixed_series(self, snap: Snapshot) -> int:
        return (FIXED_SERIES + sum(hook_up(v) is not None for v in snap.run.hooks.values())
                + max(1, len(snap.run.events_lost_by)) + STAGE_SERIES * len(self._stage_keys(snap))
                + self._failures.series)

    def _group_room(self, snap: Snapshot) -> int:
        """Series left for ordinary groups (the overflow group and top-K flows come first)."""
        return self.max_series - self.fixed_series(snap) - OVERFLOW_SERIES - FLOW_SERIES * self.top_flows

    def _admit(self, key: GroupKey, room: int) -> GroupKey:
        """The group to count a connection in: its own, created if the budget allows."""
        if key in self._groups:
            return key
        # Every ordinary group reserves one tcptop_connections series besides its fixed ones.
        while (len(self._groups)) * (GROUP_SERIES + 1) > room:
            if not self._evict_one():
                return OVERFLOW_KEY
        self._groups[key] = _Group()
        return key

    def _evict_one(self) -> bool:
        """Remove the group idle longest (no live connection); False when every group is live."""
        if self._idle is None:  # computed once per poll, when first needed
            self._idle = sorted((k for k, g in self._groups.items() if not g.live and k != OVERFLOW_KEY),
                                key=lambda k: self._groups[k].idle_since, reverse=True)
        while self._idle:
            k = self._idle.pop()
            g = self._groups.get(k)
            if g is not None and not g.live:
                del self._groups[k]
                self.evicted += 1
                return True
        return False

    # -- one poll --------------------------------------------------------------

    def update(self, snap: Snapshot, engine_s: float = 0.0) -> Frame:
        t0 = time.perf_counter()
        self._seq += 1
        self._idle = None
        self._failures = fold(snap, self.keep)
        tracks = self._tracks
        room = self._group_room(snap)
        flow_stages = self.stages_from_flows
        flows = snap.flows
        present = {f.id for f in flows}
        for gone in [i for i in tracks if i not in present]:  # they left: first, so their groups can be evicted
            self._unlive(tracks.pop(gone))
        for f in flows:
            t = tracks.get(f.id)
            if t is None:
                t = tracks[f.id] = _Tracked()
            elif t.flow is f:
                continue  # unchanged: same counts, same gauges
            self._unlive(t)
            self._count(t, f, room, flow_stages)
            self._live(t, f)
        if not flow_stages:
            self._host_stages(snap)
        for sk in _stage_state(snap.latency):  # every stage the series budget counted is exposed
            if sk not in self._stages:
                self._stages[sk] = Hist(STAGE_BOUNDS_NS)
        room = self._group_room(snap)  # the flows' own stages may have added series
        self._fit_groups(room)
        connections = self._fit_connections(room)
        return self._frame(snap, connections, t0 - engine_s)

    def _live(self, t: _Tracked, f: Flow) -> None:
        """Add a live connection to its group's gauges."""
        if not t.kept or f.closed:
            return
        key = t.live_key = t.key
        self._groups[key].live += 1
        ck = (key, f.state)
        self._conns[ck] = self._conns.get(ck, 0) + 1
        t.live_state = f.state
        t.live_zero = f.rwnd == 0 and f.state in ZERO_WINDOW_STATES
        if t.live_zero:
            self._zero_window[key] = self._zero_window.get(key, 0) + 1
        t.live_wqueue = f.app_wqueue
        if f.app_wqueue:
            self._send_queue[key] = self._send_queue.get(key, 0) + f.app_wqueue

    def _unlive(self, t: _Tracked) -> None:
        """Take a connection's last contribution out of its group's gauges."""
        key = t.live_key
        if key is None:
            return
        t.live_key = None
        _take(self._conns, (key, t.live_state), 1)
        if t.live_zero:
            _take(self._zero_window, key, 1)
        if t.live_wqueue:
            _take(self._send_queue, key, t.live_wqueue)
        g = self._groups.get(key)
        if g is not None:
            g.live -= 1
            if not g.live:
                g.idle_since = self._seq

    def _count(self, t: _Tracked, f: Flow, room: int, flow_stages: bool) -> None:
        """Add what a new or changed connection moved since it was last seen to its group."""
        prev_flow = t.flow
        t.flow = f
        t.kept = kept = self.keep is None or self.keep(f)
        values = _counter_values(f)
        before = t.values
        t.values = values
        rtt_before, t.rtt = t.rtt, f.rtt_hist
        t.recent_retrans = max(0, values[0] - before[0])
        t.changed_seq = self._seq
        if not kept:
            if flow_stages and f.latency:
                t.stages = _flow_stage_state(f.latency)
                t.stage_window = _window_id(f.latency)
            return
        natural = group_key(f, self.remote_mode)
        key = self._admit(natural, room)
        if key == OVERFLOW_KEY and not t.overflowed:
            t.overflowed = True
            self.overflowed += 1
            self._overflow_used = True
        t.key = key
        g = self._groups[key]
        c = g.counters
        for i in range(N_COUNTERS):
            d = values[i] - before[i]
            if d > 0:
                c[i] += d
        if f.ended and (prev_flow is None or not prev_flow.ended):  # TIME_WAIT then closed: once
            g.closed += 1
        if f.rtt_hist and f.rtt_hist != rtt_before:
            if g.rtt is None:
                g.rtt = Hist(RTT_BOUNDS_US)
            g.rtt.add(bucket_delta(f.rtt_hist, rtt_before))
            g.rtt.sum += max(0, values[N_COUNTERS] - before[N_COUNTERS]) / 1e6
        if flow_stages and f.latency:
            now = _flow_stage_state(f.latency)
            window = _window_id(f.latency)
            if window is not None:  # one window's samples: each window is added once, whole
                if window == t.stage_window:
                    return
                t.stage_window, t.stages = window, {}
            for sk, (count, sum_us, buckets) in now.items():
                old = t.stages.get(sk)
                if old is not None and old[2] == buckets:
                    continue
                h = self._stages.get(sk)
                if h is None:
                    h = self._stages[sk] = Hist(STAGE_BOUNDS_NS)
                h.add(bucket_delta(buckets, old[2] if old else ()))
                h.sum += max(0.0, sum_us - (old[1] if old else 0.0)) / 1e6
            t.stages = now

    def _host_stages(self, snap: Snapshot) -> None:
        """Host-wide stage histograms: the engine reports one window's samples at a time (each
        added once, by its id), or, without window ids, cumulative figures since its start."""
        window = _window_id(snap.latency)
        if window is None:
            self._stages = {}
        elif window == self._host_window:
            return
        self._host_window = window
        for sk, (count, sum_us, buckets) in _stage_state(snap.latency).items():
            h = self._stages.get(sk)
            if h is None or window is None:
                h = self._stages[sk] = Hist(STAGE_BOUNDS_NS)
            h.add(buckets)
            h.sum += sum_us / 1e6

    def _stage_keys(self, snap: Snapshot) -> set[tuple[str, str]]:
        """Stages the exposition may hold: the engine reports every stage it measures host-wide,
        and flows carry the same stages, so this is known before the flows are counted."""
        return set(_stage_state(snap.latency)) | set(self._stages)

    def _fit_groups(self, room: int) -> None:
        """Make the admitted groups fit a room that shrank: idle groups are evicted first,
        then the live groups with the fewest connections are folded into the overflow group."""
        over = (len(self._groups) - 1) * (GROUP_SERIES + 1) - room
        if over <= 0:
            return
        n = -(-over // (GROUP_SERIES + 1))
        while n and self._evict_one():
            n -= 1
        if not n:
            return
        live = sorted((k for k in self._groups if k != OVERFLOW_KEY), key=lambda k: self._groups[k].live)
        folding = set(live[:n])
        into = self._groups[OVERFLOW_KEY]
        for k in folding:
            g = self._groups.pop(k)
            into.counters = [a + b for a, b in zip(into.counters, g.counters)]
            into.closed += g.closed
            into.live += g.live
            if g.rtt is not None:
                if into.rtt is None:
                    into.rtt = Hist(RTT_BOUNDS_US)
                into.rtt.counts = [a + b for a, b in zip(into.rtt.counts, g.rtt.counts)]
                into.rtt.sum += g.rtt.sum
            for gauge in (self._zero_window, self._send_queue):
                v = gauge.pop(k, 0)
                if v:
                    gauge[OVERFLOW_KEY] = gauge.get(OVERFLOW_KEY, 0) + v
        for (k, state) in [ck for ck in self._conns if ck[0] in folding]:
            ok = (OVERFLOW_KEY, state)
            self._conns[ok] = self._conns.get(ok, 0) + self._conns.pop((k, state))
        for t in self._tracks.values():
            if t.key in folding:
                t.key = OVERFLOW_KEY
                if t.live_key is not None:
                    t.live_key = OVERFLOW_KEY
                if not t.overflowed:
                    t.overflowed = True
                    self.overflowed += 1
        self.folded += len(folding)
        self._overflow_used = True

    def _fit_connections(self, room: int) -> tuple[tuple[GroupKey, str, int], ...]:
        """(group, state, n) series; what the budget has no room for is counted in the overflow group."""
        allowance = room - (len(self._groups) - 1) * GROUP_SERIES
        own = [(k, n) for k, n in self._conns.items() if k[0] != OVERFLOW_KEY]
        if len(own) <= allowance:
            return tuple((k, s, n) for (k, s), n in self._conns.items())
        conns = dict(self._conns)
        own.sort(key=lambda kn: -kn[1])
        self._overflow_used = True
        for (key, state), n in own[max(allowance, 0):]:
            ok = (OVERFLOW_KEY, state)
            conns[ok] = conns.get(ok, 0) + n
            del conns[(key, state)]
        return tuple((k, s, n) for (k, s), n in conns.items())

    def _frame(self, snap: Snapshot, connections, started: float) -> Frame:
        zero_window, send_queue = self._zero_window, self._send_queue
        groups = tuple(
            GroupRow(key, tuple(g.counters), g.closed,
                     (g.rtt.cumulative(), g.rtt.sum) if g.rtt is not None else None,
                     zero_window.get(key, 0), send_queue.get(key, 0))
            for key, g in self._groups.items() if key != OVERFLOW_KEY or self._overflow_used)
        stages = tuple(StageRow(d, s, h.cumulative(), h.sum) for (d, s), h in sorted(self._stages.items()))
        flows = self._top_flows()
        series = (self.fixed_series(snap) + len(groups) * GROUP_SERIES + len(connections)
                  + FLOW_SERIES * len(flows)
                  - sum(len(RTT_BOUNDS_US) + 3 for g in groups if g.rtt is None))
        return Frame(
            seq=self._seq, ts=snap.ts, groups=groups, connections=connections, stages=stages,
            stage_source="flows" if self.stages_from_flows else "host", flows=flows, run=snap.run,
            host=snap.host, kernel=snap.kernel, polls=self._seq, series=series, series_limit=self.max_series,
            overflowed=self.overflowed, evicted=self.evicted, folded=self.folded, poll_s=time.perf_counter() - started,
            failures=self._failures)

    def _top_flows(self) -> tuple[FlowRow, ...]:
        """The K worst live connections: most retransmissions since the last poll, then the
        largest send queue, then the highest smoothed RTT."""
        if not self.top_flows:
            return ()
        seq = self._seq

        def badness(t: _Tracked) -> tuple[int, int, int]:
            f = t.flow
            return (t.recent_retrans if t.changed_seq == seq else 0, f.app_wqueue, f.srtt_us)
        live = (t for t in self._tracks.values() if t.live_key is not None)
        return tuple(FlowRow((f.comm, str(f.pid), endpoint(f.laddr, f.lport), endpoint(f.raddr, f.rport),
                              str(f.netns)),
                             (f.retrans_packets, f.timeouts, f.bytes_sent, f.bytes_received,
                              f.srtt_us / 1e6, f.cwnd, f.app_wqueue))
                     for f in (t.flow for t in heapq.nlargest(self.top_flows, live, key=badness)))


def _take(d: dict, key, n: int) -> None:
    left = d[key] - n
    if left:
        d[key] = left
    else:
        del d[key]


def _stage_state(latency: Mapping[str, Any] | None) -> dict[tuple[str, str], tuple[int, float, tuple]]:
    """{(direction, stage): (count, sum µs, kernel buckets)} from a latency dict of the contract.

    The sum is mean_us × count: the contract carries the mean rounded to 1 ns, so a stage's
    _sum is exact to within half a nanosecond per sample."""
    out: dict[tuple[str, str], tuple[int, float, tuple]] = {}
    if not latency:
        return out
    for direction in ("rx", "tx"):
        stages = latency.get(direction)
        if not isinstance(stages, Mapping):
            continue
        for stage, s in stages.items():
            if not isinstance(s, Mapping) or "buckets" not in s:
                continue
            count = int(s.get("count") or 0)
            mean = s.get("mean_us") or 0.0
            out[(direction, stage)] = (count, mean * count, tuple((ub, n) for ub, n in s["buckets"]))
    return out


_flow_stage_state = _stage_state


def _window_id(latency: Mapping[str, Any] | None) -> Any:
    """The packet-level window a latency dict's samples are from (None: cumulative figures)."""
    w = latency.get("window") if latency else None
    return w.get("id") if isinstance(w, Mapping) else None
