"""The flow store: the latest flows, their rates between snapshots, kept in sorted, filtered order.

Work is split by thread. A `FrameBuilder` runs on the worker: from each snapshot it
makes a `Frame` — rows with their rates, the decayed retransmission count and history,
already sorted and filtered under the view the screen had when the snapshot arrived.
The `FlowStore` lives on the UI thread: taking a frame is swapping a few references, so
a refresh of 100,000 flows does not stand between a key and the screen. Rows are never
changed once made (which rows a filter lets through is the frame's, not the row's), which
is what makes the hand-over safe without locks, and lets a row serve frame after frame
while its connection stays idle: on a real host most rows are not made anew at all.

Order is a plain list of flow ids, ascending by (sort value, flow id), read from the
other end when descending: reversing costs nothing, a window is a slice, a flow's
position is a binary search, and a frame whose flows and order did not change passes the
previous frame's lists on as they are. A re-sort (a key, on the UI thread) computes each row's sort value once and
lets a stable sort over the rows in id order break ties; a filter keeps that order and
only drops rows.

Across frames the builder keeps the sort order of its column in an index (sort_index.py).
The engine hands back the very same Flow object for a connection whose kernel state did
not change, so most flows of a real host are `is`-identical from one snapshot to the next,
and so is their sort value: only flows that changed (or whose rates were not yet settled
at zero) are re-keyed and moved, O(changes · log n) instead of a sort of every row. AGE
moves with the clock, but open flows all age alike: its index keeps them apart from the
fixed ages of closed flows and merges the two at each frame's time. The frame's `order`
list is the index's own list, edited in place since the last frame, or the last frame's
list when nothing moved; it is the frame's from then on (the index edits a copy), so a
frame's order never changes once made, and the index itself never leaves the worker. A
new column, a snapshot where most values changed, or an order the index cannot promise
exactly is sorted from scratch.
"""

from __future__ import annotations

import threading
from bisect import bisect_left, insort
from dataclasses import dataclass
from typing import Callable

from tcptop.frontends.screen.columns import COLUMN_BY_ID, COLUMNS, Column, resolve_sort
from tcptop.frontends.screen.row import HistoryPoint, Row, growth
from tcptop.frontends.screen.sort_index import AgeIndex, ValueIndex
from tcptop.filter import Predicate, compile_filter
from tcptop.model import Snapshot

# Sparklines show about a minute; keep enough samples for half-second intervals.
HISTORY_LEN = 120
# Above this many flows, history is kept only for flows on screen and the selection:
# a minute of samples for 100,000 flows would cost hundreds of MiB.
HISTORY_ALL_MAX = 1000
# Half-life of `Row.retrans_recent`: long enough that a flow sitting out an RTO backoff
# still ranks above one that sent a single zero-window probe, short enough to forget.
RETRANS_HALF_LIFE_S = 10.0


@dataclass(frozen=True, slots=True)
class Totals:
    """Sums over the shown flows for the header."""

    tx_bps: float = 0.0
    rx_bps: float = 0.0
    retrans_ps: float = 0.0
    retrans_packets: int = 0
    closed: int = 0


@dataclass(frozen=True, slots=True, eq=False)
class View:
    """How the screen orders and filters rows; replaced, never changed, so the worker can read it."""

    column: Column
    pred: Predicate
    filter_expr: str = ""


@dataclass(frozen=True, slots=True, eq=False)
class Frame:
    """One snapshot made ready for the screen under `view`; nothing in it changes afterwards."""

    snapshot: Snapshot
    view: View
    rows: dict[int, Row]  # flow id -> row
    by_id: list[int]      # every flow id, ascending: the tie-break order a re-sort starts from
    order: list[int]      # every flow id, ascending by (view.column.key, id)
    shown: list[int]      # `order` without the flows the filter hides
    visible: frozenset[int] | None  # ids the filter lets through; None: all of them
    totals: Totals

    @property
    def ts(self) -> float:
        return self.snapshot.ts


_MATCH_ALL = compile_filter(None)
# Above this share of re-keyed flows one sort is cheaper than moving each.
_REBUILD_SHARE = 0.25


def sort_key(col: Column, now: float) -> Callable[[Row], object]:
    """The column's sort value of a row, read at `now` (only time columns look at the clock)."""
    key = col.key
    return lambda r: key(r, now)


def sort_ids(ids: list[int], rows: dict[int, Row], col: Column, now: float) -> list[int]:
    """Flow ids ascending by (sort value, id): one key call per row; `ids` ascending, so the
    stable sort keeps id order in ties."""
    key = col.key
    return sorted(ids, key=lambda fid: key(rows[fid], now))


def filter_ids(rows: dict[int, Row], order: list[int], pred: Predicate) -> tuple[list[int], frozenset[int] | None]:
    """The flow ids `pred` lets through, in `order`, and as a set (None: every flow).

    The predicate runs over the rows in the order they were made, close to the order the
    flows were created in: walking 100,000 flows in sort order instead is five times slower
    (cache misses)."""
    if pred is _MATCH_ALL:
        return order, None
    ok = frozenset(fid for fid, row in rows.items() if pred(row.flow))
    return [fid for fid in order if fid in ok], ok


# Above this many flows come and gone, the id list is sorted again rather than edited in place.
_INSERT_MAX = 2000


def _moved_ids(by_id: list[int], gone: list[int], new: list[int]) -> list[int]:
    """`by_id` (ascending) without `gone` and with `new`, by binary search: a few flows come
    and go at each refresh of a host of 100,000, and sorting every id costs ~20 ms."""
    out = list(by_id)
    for fid in gone:
        i = bisect_left(out, fid)
        if i < len(out) and out[i] == fid:
            del out[i]
    for fid in new:
        insort(out, fid)
    return out


class _Sums:
    """What a frame's totals sum over the flows its filter lets through, and which those are
    (`visible`; None: every flow)."""

    __slots__ = ("visible", "tx", "rx", "re", "retrans", "closed")

    def __init__(self, visible: set[int] | None, retrans: int = 0, closed: int = 0) -> None:
        self.visible = visible
        self.tx = self.rx = self.re = 0  # bytes and retransmissions since the last sighting
        self.retrans, self.closed = retrans, closed

    def count(self, f, dtx: int, drx: int, dre: int) -> None:
        """A flow the filter lets through, with what it moved since its last sighting."""
        if self.visible is not None:
            self.visible.add(f.id)
        self.tx += dtx
        self.rx += drx
        self.re += dre
        self.retrans += f.retrans_packets
        self.closed += f.closed

    def uncount(self, o: Row) -> None:
        """Take out a row of the last frame (its flow went or is made anew): what it added there."""
        if self.visible is not None:
            if o.id not in self.visible:
                return
            self.visible.discard(o.id)
        self.retrans -= o.flow.retrans_packets
        self.closed -= o.flow.closed


class _RowMaker:
    """Makes a row anew for one build: a new flow, one that changed, or one whose rates or
    retransmission count are still settling; also notes what the sort index must move
    (`changed`) and which rows the next build makes again though their flow is the same
    (`unsettled`)."""

    __slots__ = ("dt", "ts", "first", "incremental", "flow_only", "rate_only", "keep_history", "watched", "decay",
                 "tail", "new_ids", "changed", "unsettled")

    def __init__(self, dt: float, ts: float, first: bool, incremental: bool, depends: str, keep_history: bool,
                 watched) -> None:
        self.dt, self.ts, self.first, self.incremental = dt, ts, first, incremental
        # AGE ("time") moves only with its Flow and the clock, which the index follows itself.
        self.flow_only, self.rate_only = depends in ("flow", "time"), depends == "rate"
        self.keep_history, self.watched = keep_history, watched
        self.decay = 0.5 ** (dt / RETRANS_HALF_LIFE_S)
        self.tail = HISTORY_LEN - 1
        self.new_ids: list[int] = []     # flows not in the last frame
        self.changed: list[Row] = []     # rows whose sort value may differ from the one in the index
        self.unsettled: set[int] = set()

    def __call__(self, f, o: Row | None) -> tuple[Row, int, int, int]:
        """(the row, bytes sent, bytes received, retransmissions since the last sighting)."""
        dt = self.dt
        fid = f.id
        row = Row.__new__(Row)
        row.id = fid
        row.flow = f
        row.dt = dt
        if o is None:
            self.new_ids.append(fid)
            row.prev = None
            history = None
            # Born during this interval: everything it counted happened within dt.
            row.born = not self.first and f.age_s(self.ts) <= dt
            if row.born:
                dtx, drx, dre = f.bytes_sent, f.bytes_received, f.retrans_packets
                row.tx_bps, row.rx_bps, row.retrans_ps = dtx / dt, drx / dt, dre / dt
                row.retrans_recent = float(dre)
            else:
                dtx = drx = dre = 0
                row.tx_bps = row.rx_bps = row.retrans_ps = None
                row.retrans_recent = 0.0
            if self.incremental:
                self.changed.append(row)
        else:
            row.prev = p = o.flow
            row.born = False
            history = o.history
            if p is f and o.prev is f and not o.retrans_recent:
                # Idle at both sightings, made anew only to carry its history on.
                row.tx_bps = row.rx_bps = row.retrans_ps = 0.0
                row.retrans_recent = 0.0
                dtx = drx = dre = 0
            else:
                if self.incremental and not (p is f and (self.flow_only or (self.rate_only and o.prev is f))):
                    self.changed.append(row)  # its sort value may have moved
                dtx = growth(f.bytes_sent, p.bytes_sent)
                drx = growth(f.bytes_received, p.bytes_received)
                dre = growth(f.retrans_packets, p.retrans_packets)
                row.tx_bps, row.rx_bps, row.retrans_ps = dtx / dt, drx / dt, dre / dt
                rr = o.retrans_recent
                row.retrans_recent = rr * self.decay + dre if rr or dre else 0.0
        if self.keep_history or fid in self.watched:
            # A new tuple, not an append: the screen may be drawing the previous one.
            point = HistoryPoint(self.ts, row.tx_bps, row.rx_bps, f.cwnd, f.srtt_us or f.rtt_mean_us)
            history = (history[-self.tail:] if history else ()) + (point,)
        row.history = history
        if row.prev is not f or row.retrans_recent:
            self.unsettled.add(fid)
        return row, dtx, drx, dre


class FrameBuilder:
    """Turns snapshots into frames; keeps the previous frame's rows for rates and history,
    and the order of its sort column (see the module's docstring).

    Used by one thread at a time (the worker, or the UI thread in tests and `FlowStore.update`);
    the lock only guards against the two being mixed up by mistake.
    """

    def __init__(self) -> None:
        self.rows: dict[int, Row] = {}
        self.snapshot: Snapshot | None = None
        self.frame: Frame | None = None
        self._lock = threading.Lock()
        # The order of `self.rows` by `_col`, kept across frames (None: sort from scratch next time).
        self._col: Column | None = None
        self._index: ValueIndex | AgeIndex | None = None  # its order (sort_index.py)
        self._sorted_ids: list[int] | None = None  # or, after a full sort, the ids to make it from
        self.rekeyed = 0                        # sort values computed by the last build (tests)
        self._unsettled: set[int] = set()       # ids of rows a next frame makes anew though their flow is the same
        self._sums_pred: Predicate | None = None  # the filter the last build's totals were summed under

    def build(self, snap: Snapshot, view: View, watched: frozenset[int] | set[int] = frozenset()) -> Frame:
        with self._lock:
            last = self.frame
            if last is not None and snap is self.snapshot and last.view is view:
                return last  # the same snapshot again (replay speed change): same rates, not zero
            frame = self._build(snap, view, watched)
            self.frame = frame
            return frame

    def rearrange(self, frame: Frame, view: View) -> Frame:
        """The same rows under another view (a key changed it while `frame` was being built)."""
        with self._lock:
            if view is frame.view:
                return frame
            if view.column is frame.view.column:
                order = frame.order
            else:
                order = sort_ids(frame.by_id, frame.rows, view.column, frame.ts)
            if view.pred is not frame.view.pred:
                shown, visible = filter_ids(frame.rows, order, view.pred)
            elif frame.visible is None:
                shown, visible = order, None
            else:
                shown, visible = [fid for fid in order if fid in frame.visible], frame.visible
            # Totals stay those of the filter the frame was built with, as after a filter key.
            new = Frame(frame.snapshot, view, frame.rows, frame.by_id, order, shown, visible, frame.totals)
            if self.frame is frame:
                self.frame = new
            return new

    def _build(self, snap: Snapshot, view: View, watched) -> Frame:
        prev_snap = self.snapshot
        dt = snap.ts - prev_snap.ts if prev_snap is not None else 0.0
        if dt <= 0:
            # Same timestamp or a replay that went back: the snapshot's own interval is all we know.
            dt = snap.interval_s if snap.interval_s > 0 else 1.0
        old = self.rows
        last = self.frame
        col = view.column
        incremental = (self._index is not None or self._sorted_ids is not None) and self._col is col
        make = _RowMaker(dt, snap.ts, prev_snap is None, incremental, col.depends,
                         len(snap.flows) <= HISTORY_ALL_MAX, watched)
        gone: list[int] | None = None
        if (snap.changes is not None and not make.keep_history and last is not None and prev_snap is not None
                and last.snapshot is prev_snap and snap.seq == prev_snap.seq + 1 and last.view.pred is view.pred
                and self._sums_pred is view.pred):  # (a re-filtered frame keeps its build's totals)
            rows, sums, gone = self._follow(snap, old, last, make, view.pred, watched)
        else:
            rows, sums = self._walk(snap, old, make, view.pred, watched)
        visible = sums.visible
        self._unsettled = make.unsettled
        self._sums_pred = view.pred
        same_flows = not make.new_ids and len(rows) == len(old) and last is not None and last.rows is old
        if same_flows:
            by_id = last.by_id
        elif gone is not None and last is not None and len(gone) + len(make.new_ids) <= _INSERT_MAX:
            by_id = _moved_ids(last.by_id, gone, make.new_ids)
        else:
            by_id = sorted(rows)
        order = self._order(rows, by_id, old, col, snap.ts, make.changed if incremental else None, gone)
        shown = order if visible is None else [fid for fid in order if fid in visible]
        self.rows = rows
        self.snapshot = snap
        return Frame(snap, view, rows, by_id, order, shown, None if visible is None else frozenset(visible),
                     Totals(sums.tx / dt, sums.rx / dt, sums.re / dt, sums.retrans, sums.closed))

    def _walk(self, snap: Snapshot, old: dict[int, Row], make: "_RowMaker", pred: Predicate, watched):
        """Every flow of the snapshot: an idle row serves again, the others are made anew."""
        rows: dict[int, Row] = {}
        match_all = pred is _MATCH_ALL
        keep_history = make.keep_history
        sums = _Sums(None if match_all else set())
        visible = sums.visible
        re_total = closed = 0  # of the rows that serve again (the many), summed here
        for f in snap.flows:
            fid = f.id
            o = old.get(fid)
            if o is not None and o.flow is f and o.prev is f and not o.retrans_recent and \
                    not (keep_history or fid in watched):
                # Idle, and already so at the last sighting (the engine reused the Flow): the row
                # says what it said (rates zero, the sort value `index` holds), so it serves again.
                rows[fid] = o
                if match_all or pred(f):
                    if visible is not None:
                        visible.add(fid)
                    re_total += f.retrans_packets
                    closed += f.closed
                continue
            row, dtx, drx, dre = make(f, o)
            rows[fid] = row
            if match_all or pred(f):
                sums.count(f, dtx, drx, dre)
        sums.retrans += re_total
        sums.closed += closed
        return rows, sums

    def _follow(self, snap: Snapshot, old: dict[int, Row], last: Frame, make: "_RowMaker", pred: Predicate,
                watched):
        """What `_walk` makes, from the last frame and what the source says changed since its
        snapshot (Snapshot.changes): rows are made for flows that changed, rows still settling
        (rates not yet at zero, retransmissions still decaying) and watched rows; the rest, and
        the totals' sums over them, are the last frame's. At 100,000 flows the walk cost
        ~75 ms a refresh of Python, mostly for idle rows."""
        changed, gone_ids = snap.changes  # type: ignore[misc]
        match_all = pred is _MATCH_ALL
        rows = dict(old)
        sums = _Sums(None if match_all else set(last.visible if last.visible is not None else old),
                     last.totals.retrans_packets, last.totals.closed)
        gone = []
        for fid in gone_ids:
            o = rows.pop(fid, None)
            if o is not None:
                gone.append(fid)
                sums.uncount(o)
        todo = {f.id: f for f in changed}
        for fid in (self._unsettled | watched) if watched else self._unsettled:
            if fid not in todo:
                o = rows.get(fid)
                if o is not None:
                    todo[fid] = o.flow
        for fid, f in todo.items():
            o = old.get(fid)
            if o is not None:
                sums.uncount(o)
            row, dtx, drx, dre = make(f, o)
            rows[fid] = row
            if match_all or pred(f):
                sums.count(f, dtx, drx, dre)
        return rows, sums, gone

    def _order(self, rows: dict[int, Row], by_id: list[int], old: dict[int, Row], col: Column, now: float,
               changed: list[Row] | None, gone: list[int] | None = None) -> list[int]:
        """Flow ids ascending by (col.key, id): the kept index moved by `changed` rows, or a full sort."""
        n = len(rows)
        try:
            if changed is not None and len(changed) <= n * _REBUILD_SHARE:
                index = self._index
                if index is None:
                    # Made when the flows settle after a full sort, not at every full sort:
                    # while most flows keep changing it would only be thrown away. It is
                    # made of the last frame's rows; `changed` says which moved since.
                    index = self._index = _new_index(col, now, map(old.__getitem__, self._sorted_ids))
                    self._sorted_ids = None
                self.rekeyed = len(changed)
                matched = n - sum(1 for r in changed if r.prev is None)  # rows with an old row
                if matched != len(old):  # some flows are gone
                    for fid in (old.keys() - rows.keys()) if gone is None else gone:
                        index.drop(fid)
                for row in changed:
                    index.place(row)
                order = index.order(now)
                if order is not None:
                    return order
                # The index cannot promise this frame's order; it stays, for the frames after.
                self.rekeyed = n
                return sort_ids(by_id, rows, col, now)
            self.rekeyed = n
            self._index = None
            # The index for the next frame, if it needs one, is made from these ids then.
            self._sorted_ids, self._col = (by_id, col) if _indexable(col) else (None, None)
            return sort_ids(by_id, rows, col, now)
        except BaseException:
            self._index, self._sorted_ids, self._col = None, None, None  # sort from scratch next
            raise


_AGE = COLUMN_BY_ID["age"]


def _indexable(col: Column) -> bool:
    """An index can keep this column's order across frames: its value is the row's alone, or AGE
    (which moves with the clock in a way AgeIndex follows; other clock-moving values would not)."""
    return col.depends != "time" or col is _AGE


def _new_index(col: Column, now: float, rows) -> ValueIndex | AgeIndex:
    return AgeIndex(rows) if col is _AGE else ValueIndex(sort_key(col, now), rows)


class FlowStore:
    """What the screen shows: the newest frame's rows in the chosen order. The UI thread is its only user."""

    def __init__(self, sort: str | None = None, descending: bool | None = None,
                 filter_expr: str | None = None) -> None:
        col = resolve_sort(sort or "tx")
        self.view = View(col, _MATCH_ALL)
        self.descending = col.descending if descending is None else descending
        self.builder = FrameBuilder()  # the app's worker feeds it; `update` uses it in place
        self.rows: dict[int, Row] = {}
        self.snapshot: Snapshot | None = None
        self.totals = Totals()
        self.watched: set[int] = set()
        self._frame: Frame | None = None
        self._by_id: list[int] = []   # flow ids: see Frame
        self._order: list[int] = []
        self._shown: list[int] = []
        self._visible: frozenset[int] | None = None  # ids the filter lets through; None: all
        # Orders of this frame's rows by other columns: flipping between two sorts sorts once.
        self._orders: dict[str, list[int]] = {}
        if filter_expr:
            self.set_filter(filter_expr)

    # -- reading ----------------------------------------------------------------

    @property
    def sort_column(self) -> str:
        return self.view.column.id

    @property
    def frame(self) -> Frame | None:
        """The frame on screen (the views beside the flow list are made from it)."""
        return self._frame

    @property
    def filter_expr(self) -> str:
        return self.view.filter_expr

    def __len__(self) -> int:
        return len(self._shown)

    @property
    def total(self) -> int:
        return len(self.rows)

    def get(self, flow_id: int) -> Row | None:
        return self.rows.get(flow_id)

    @property
    def now(self) -> float:
        """The time the shown flows were read (ages are computed against it)."""
        return self.snapshot.ts if self.snapshot is not None else 0.0

    def is_visible(self, flow_id: int) -> bool:
        """The flow is in this frame and the filter lets it through."""
        return flow_id in self.rows and (self._visible is None or flow_id in self._visible)

    def row_at(self, index: int) -> Row:
        n = len(self._shown)
        if not 0 <= index < n:
            raise IndexError(index)
        return self.rows[self._shown[n - 1 - index] if self.descending else self._shown[index]]

    def window(self, start: int, stop: int) -> list[Row]:
        """Visible rows [start, stop) in display order."""
        shown = self._shown
        n = len(shown)
        start, stop = max(0, start), min(n, stop)
        if start >= stop:
            return []
        if self.descending:
            ids = shown[n - start - 1:n - stop - 1 if n - stop else None:-1]
        else:
            ids = shown[start:stop]
        return list(map(self.rows.__getitem__, ids))

    def index_of(self, flow_id: int) -> int | None:
        """Display position of a flow, or None when it is filtered out or gone."""
        row = self.rows.get(flow_id)
        if row is None or not self.is_visible(flow_id):
            return None
        shown, rows = self._shown, self.rows
        key = sort_key(self.view.column, self.now)
        i = bisect_left(shown, (key(row), flow_id), key=lambda fid: (key(rows[fid]), fid))
        if i >= len(shown) or shown[i] != flow_id:
            try:  # a sort value that does not compare consistently (never expected): look it up
                i = shown.index(flow_id)
            except ValueError:
                return None
        return len(shown) - 1 - i if self.descending else i

    def ids(self) -> list[int]:
        """All visible flow ids in display order (tests and small hosts)."""
        return self._shown[::-1] if self.descending else list(self._shown)

    # -- changing the view ------------------------------------------------------

    def set_filter(self, expr: str | None) -> None:
        """Apply a new filter; raises FilterError and keeps the old one when it does not parse."""
        pred = compile_filter(expr)
        self.view = View(self.view.column, pred, (expr or "").strip())
        self._shown, self._visible = filter_ids(self.rows, self._order, pred)

    def set_sort(self, column: str, descending: bool | None = None) -> None:
        """Sort by a column id or a Flow field name; each column has its natural direction."""
        col = resolve_sort(column)
        self.view = View(col, self.view.pred, self.view.filter_expr)
        self.descending = col.descending if descending is None else descending
        self._order = order = self._sorted(col)
        self._shown = self._filtered(order)

    def _filtered(self, order: list[int]) -> list[int]:
        visible = self._visible
        return order if visible is None else [fid for fid in order if fid in visible]

    def _sorted(self, col: Column) -> list[int]:
        order = self._orders.get(col.id)
        if order is None:
            self._orders[col.id] = order = sort_ids(self._by_id, self.rows, col, self.now)
        return order

    def reverse(self) -> None:
        self.descending = not self.descending

    # -- feeding ----------------------------------------------------------------

    def update(self, snap: Snapshot) -> None:
        """Take a new snapshot here and now (tests, and callers without a worker)."""
        self.install(self.builder.build(snap, self.view, self.watched))

    def install(self, frame: Frame) -> Frame | None:
        """Show a frame. Cheap when it was built under the current view; when a key changed the
        view while the frame was being built, its rows are re-sorted or re-filtered here.

        Returns the frame it replaces, the last reference to most of its rows: freeing
        100,000 rows takes tens of ms, which the caller may rather spend on another thread.
        """
        old = self._frame
        self._frame = frame
        self.rows = frame.rows
        self.snapshot = frame.snapshot
        self.totals = frame.totals
        self._by_id = frame.by_id
        view = self.view
        self._orders = {frame.view.column.id: frame.order}
        if frame.view is view:
            self._order, self._shown, self._visible = frame.order, frame.shown, frame.visible
            return old
        self._order = order = self._sorted(view.column)
        if frame.view.pred is not view.pred:
            self._shown, self._visible = filter_ids(frame.rows, order, view.pred)
        elif order is frame.order:
            self._shown, self._visible = frame.shown, frame.visible
        else:
            self._visible = frame.visible
            self._shown = self._filtered(order)
        return old


__all__ = ["FlowStore", "FrameBuilder", "Frame", "View", "Row", "Totals", "HISTORY_LEN", "COLUMNS"]
