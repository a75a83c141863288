"""The flow store: the latest flows, their rates between snapshots, kept in sorted, filtered order.

The screen asks only "how many rows, and which rows are in this window", so the store
keeps the visible flows in a SortedKeyList and a refresh moves only flows whose sort
key changed (O(changes · log n)). When most keys move at once (sorting by a rate on a
busy host) one sort of everything is cheaper than thousands of remove/add pairs, so
the store rebuilds instead. Reversing the order costs nothing: rows are read from the
other end.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from sortedcontainers import SortedKeyList

from tcptop.columns import COLUMNS, resolve_sort
from tcptop.filter import Predicate, compile_filter
from tcptop.model import Flow, Snapshot

# Sparklines show about a minute; keep enough samples for half-second intervals.
HISTORY_LEN = 120
# Above this many flows, history is kept only for flows on screen and the selection:
# a minute of samples for 100,000 flows would cost hundreds of MiB.
HISTORY_ALL_MAX = 1000
# Rebuild from scratch when more than this share of visible rows changed sort key.
REBUILD_SHARE = 0.25
# Half-life of `Row.retrans_recent`: long enough that a flow sitting out an RTO backoff
# still ranks above one that sent a single zero-window probe, short enough to forget.
RETRANS_HALF_LIFE_S = 10.0


class Row:
    """A flow plus what only consecutive snapshots tell: rates and short history.

    Rates are computed when read, from the previous sighting kept in `prev`: on a busy
    host only the sort column and the rows on screen are ever asked for theirs.
    """

    __slots__ = ("flow", "prev", "dt", "ts", "born", "history", "sort_key", "visible", "retrans_recent")

    def __init__(self, flow: Flow) -> None:
        self.flow = flow
        self.prev: Flow | None = None  # the same connection one snapshot earlier
        self.dt = 0.0                  # seconds between the two sightings
        self.ts = 0.0                  # time of the snapshot the row was last fed
        self.born = False              # first seen, but opened within dt: counters started at zero
        self.history: deque | None = None  # (ts, tx_bps, rx_bps, cwnd, rtt_us)
        self.sort_key: tuple = ()
        self.visible = False
        self.retrans_recent = 0.0  # retransmissions, exponentially decayed (RETRANS_HALF_LIFE_S)

    @property
    def id(self) -> int:
        return self.flow.id

    @property
    def age_s(self) -> float:
        """Connection age at the latest snapshot (an idle flow's object is reused, its age is not)."""
        return self.flow.age_s(self.ts)

    def rate(self, counter: str) -> float | None:
        """Per-second growth of a Flow counter; None while unknown (a flow's first sighting)."""
        prev = self.prev
        if prev is None:
            return getattr(self.flow, counter) / self.dt if self.born else None
        # Counters only grow for one socket cookie; a drop means the engine restarted counting.
        d = getattr(self.flow, counter) - getattr(prev, counter)
        return d / self.dt if d > 0 else 0.0

    tx_bps = property(lambda self: self.rate("bytes_sent"))
    rx_bps = property(lambda self: self.rate("bytes_received"))
    retrans_ps = property(lambda self: self.rate("retrans_packets"))
    fast_ps = property(lambda self: self.rate("fast_retrans"))
    rto_ps = property(lambda self: self.rate("timeouts"))
    read_bps = property(lambda self: self.rate("read_bytes"))
    write_bps = property(lambda self: self.rate("write_bytes"))

    @property
    def wqueue_delta(self) -> int:
        """Send-queue change since the last snapshot, bytes (positive: growing)."""
        base = self.prev.app_wqueue if self.prev is not None else 0
        return self.flow.app_wqueue - base

    def __repr__(self) -> str:
        return f"Row({self.flow.id}, {self.flow.comm!r})"


@dataclass(frozen=True, slots=True)
class Totals:
    """Sums over the shown flows for the header."""

    tx_bps: float = 0.0
    rx_bps: float = 0.0
    retrans_ps: float = 0.0
    retrans_packets: int = 0
    closed: int = 0


class FlowStore:
    """Holds the newest snapshot's flows; the UI thread is its only user."""

    def __init__(self, sort: str | None = None, descending: bool | None = None,
                 filter_expr: str | None = None) -> None:
        self.rows: dict[int, Row] = {}
        self.snapshot: Snapshot | None = None
        self.filter_expr = ""
        self._pred: Predicate = compile_filter(None)
        col = resolve_sort(sort or "tx")
        self.sort_column = col.id
        self.descending = col.descending if descending is None else descending
        self._key = col.key
        self._visible = SortedKeyList(key=_sort_key)
        self.totals = Totals()
        self.watched: set[int] = set()
        if filter_expr:
            self.set_filter(filter_expr)

    # -- reading ----------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._visible)

    @property
    def total(self) -> int:
        return len(self.rows)

    def get(self, flow_id: int) -> Row | None:
        return self.rows.get(flow_id)

    def row_at(self, index: int) -> Row:
        n = len(self._visible)
        if not 0 <= index < n:
            raise IndexError(index)
        return self._visible[n - 1 - index] if self.descending else self._visible[index]

    def window(self, start: int, stop: int) -> list[Row]:
        """Visible rows [start, stop) in display order."""
        n = len(self._visible)
        start, stop = max(0, start), min(n, stop)
        if start >= stop:
            return []
        if self.descending:
            return list(self._visible.islice(n - stop, n - start, reverse=True))
        return list(self._visible.islice(start, stop))

    def index_of(self, flow_id: int) -> int | None:
        """Display position of a flow, or None when it is filtered out or gone."""
        row = self.rows.get(flow_id)
        if row is None or not row.visible:
            return None
        i = self._visible.index(row)
        return len(self._visible) - 1 - i if self.descending else i

    def ids(self) -> list[int]:
        """All visible flow ids in display order (tests and small hosts)."""
        return [r.flow.id for r in self.window(0, len(self._visible))]

    # -- changing the view ------------------------------------------------------

    def set_filter(self, expr: str | None) -> None:
        """Apply a new filter; raises FilterError and keeps the old one when it does not parse."""
        pred = compile_filter(expr)
        self.filter_expr = (expr or "").strip()
        self._pred = pred
        self._rebuild()

    def set_sort(self, column: str, descending: bool | None = None) -> None:
        """Sort by a column id or a Flow field name; each column has its natural direction."""
        col = resolve_sort(column)
        self.sort_column = col.id
        self.descending = col.descending if descending is None else descending
        self._key = col.key
        for row in self.rows.values():
            row.sort_key = (self._key(row), row.flow.id)
        self._rebuild()

    def reverse(self) -> None:
        self.descending = not self.descending

    # -- feeding ----------------------------------------------------------------

    def update(self, snap: Snapshot) -> None:
        """Take a new snapshot: rates from the previous one, then move rows whose key changed."""
        prev_snap = self.snapshot
        dt = snap.ts - prev_snap.ts if prev_snap is not None else 0.0
        if dt <= 0:
            # Same timestamp or a replay that went back: the snapshot's own interval is all we know.
            dt = snap.interval_s if snap.interval_s > 0 else 1.0
        old = self.rows
        rows: dict[int, Row] = {}
        pred = self._pred
        key = self._key
        keep_history = len(snap.flows) <= HISTORY_ALL_MAX
        watched = self.watched
        visible = self._visible
        moved: list[tuple[Row, tuple, bool]] = []  # row, old key, was visible
        tx_sum = rx_sum = re_sum = 0.0
        re_total = closed = 0
        ts = snap.ts
        decay = 0.5 ** (dt / RETRANS_HALF_LIFE_S)

        for f in snap.flows:
            row = old.get(f.id)
            if row is None:
                row = Row(f)
                # Born during this interval: everything it counted happened within dt.
                row.born = prev_snap is not None and f.age_s(ts) <= dt
                if row.born:
                    row.retrans_recent = float(f.retrans_packets)
                was_visible = False
                old_key: tuple = ()
            else:
                row.prev = p = row.flow
                row.flow = f
                row.born = False
                d = f.retrans_packets - p.retrans_packets
                row.retrans_recent = row.retrans_recent * decay + (d if d > 0 else 0)
                was_visible = row.visible
                old_key = row.sort_key
            row.dt = dt
            row.ts = ts
            rows[f.id] = row
            new_key = (key(row), f.id)
            show = pred(f)
            if show != was_visible or new_key != old_key:
                moved.append((row, old_key, was_visible))
            row.sort_key = new_key
            row.visible = show
            if keep_history or f.id in watched:
                if row.history is None:
                    row.history = deque(maxlen=HISTORY_LEN)
                row.history.append((ts, row.tx_bps, row.rx_bps, f.cwnd, f.srtt_us or f.rtt_mean_us))
            if show:
                p = row.prev
                if p is not None:
                    d = f.bytes_sent - p.bytes_sent
                    if d > 0:
                        tx_sum += d
                    d = f.bytes_received - p.bytes_received
                    if d > 0:
                        rx_sum += d
                    d = f.retrans_packets - p.retrans_packets
                    if d > 0:
                        re_sum += d
                elif row.born:
                    tx_sum += f.bytes_sent
                    rx_sum += f.bytes_received
                    re_sum += f.retrans_packets
                re_total += f.retrans_packets
                closed += f.closed

        gone = [r for fid, r in old.items() if fid not in rows and r.visible]
        self.rows = rows
        self.snapshot = snap
        self.totals = Totals(tx_sum / dt, rx_sum / dt, re_sum / dt, re_total, closed)

        if len(moved) + len(gone) > REBUILD_SHARE * max(len(visible), 1) + 16:
            self._rebuild()
            return
        # The list finds a row by its key, so remove under the old key before adding under the new.
        for row in gone:
            visible.remove(_Probe(row, row.sort_key))
        for row, old_key, was_visible in moved:
            if was_visible:
                visible.remove(_Probe(row, old_key))
        for row, _old_key, _was in moved:
            if row.visible:
                visible.add(row)

    def _rebuild(self) -> None:
        pred = self._pred
        if pred is _MATCH_ALL:
            shown = list(self.rows.values())
            for row in shown:
                row.visible = True
        else:
            shown = []
            for row in self.rows.values():
                row.visible = pred(row.flow)
                if row.visible:
                    shown.append(row)
        self._visible = SortedKeyList(shown, key=_sort_key)


_MATCH_ALL = compile_filter(None)


def _sort_key(row: Row | _Probe) -> tuple:
    return row.sort_key


class _Probe:
    """Stands in for a row under its previous key, so SortedKeyList.remove finds it."""

    __slots__ = ("row", "sort_key")

    def __init__(self, row: Row, sort_key: tuple) -> None:
        self.row = row
        self.sort_key = sort_key

    def __eq__(self, other: object) -> bool:
        return other is self.row



__all__ = ["FlowStore", "Row", "Totals", "HISTORY_LEN", "COLUMNS"]
