"""The tables beside the flow list — listeners (`l`), failed connects by destination (`f`), groups
(`g`) — what the screen has chosen for them, how each frame's rows are made, and what is shown.

`ViewState` is the choice (which table, how each sorts, which groups are open); it is replaced,
never changed, so the worker can read it. `build_views` makes a `ViewFrame` from a flow frame
and the snapshot before it (rates need both); it is a pure function, run on the worker with
each snapshot and on the UI thread when a key changes what is shown. `Views` is the UI
thread's side: the state, the newest ViewFrame, and the rows in display order.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable, Hashable, Mapping

from tcptop.filter import Predicate
from tcptop.frontends.screen import failure_rows as fr
from tcptop.frontends.screen import groups as gr
from tcptop.frontends.screen import listener_rows as lr
from tcptop.frontends.screen.columns import Column
from tcptop.frontends.screen.rowset import EMPTY, RowSet, arrange, rearranged
from tcptop.frontends.screen.store import Frame
from tcptop.model import Snapshot

TABLES: dict[str, tuple[tuple[Column, ...], str]] = {
    "listeners": (lr.LISTENER_COLUMNS, lr.DEFAULT_SORT),
    "failures": (fr.FAILURE_COLUMNS, fr.DEFAULT_SORT),
    "groups": (gr.GROUP_COLUMNS, gr.DEFAULT_SORT),
}
COLUMN_BY_ID = {name: {c.id: c for c in cols} for name, (cols, _) in TABLES.items()}


def _default_sorts() -> dict[str, tuple[str, bool]]:
    return {name: (sort, COLUMN_BY_ID[name][sort].descending) for name, (_, sort) in TABLES.items()}


@dataclass(frozen=True, slots=True, eq=False)
class ViewState:
    view: str = "flows"   # "flows", "listeners" or "failures"
    group: str = ""       # grouping of the flows view: "" (none) or one of groups.MODES
    sorts: Mapping[str, tuple[str, bool]] = field(default_factory=_default_sorts)  # table -> (column, descending)
    expanded: frozenset = frozenset()  # ids of open groups

    @property
    def table(self) -> str:
        """The table on screen: "flows", "groups", "listeners" or "failures"."""
        if self.view == "flows":
            return "groups" if self.group else "flows"
        return self.view

    def column(self, table: str) -> Column:
        return COLUMN_BY_ID[table][self.sorts[table][0]]

    def descending(self, table: str) -> bool:
        return self.sorts[table][1]


@dataclass(frozen=True, slots=True, eq=False)
class ViewFrame:
    """The side tables for one flow frame. Nothing in it changes afterwards."""

    state: ViewState
    flows: Frame
    pred: Predicate         # the filter they were made under
    prev: Snapshot | None   # the snapshot before (rates), None for the first
    dt: float
    listeners: RowSet
    failures: RowSet
    groups: RowSet


def _dt(snap: Snapshot, prev: Snapshot | None) -> float:
    dt = snap.ts - prev.ts if prev is not None else 0.0
    return dt if dt > 0 else (snap.interval_s if snap.interval_s > 0 else 1.0)


def build_views(frame: Frame, state: ViewState, pred: Predicate, match_all: bool, prev: Snapshot | None) -> ViewFrame:
    """Listener, destination and (when grouping) group rows of a frame, sorted and filtered."""
    snap = frame.snapshot
    dt = _dt(snap, prev)
    now = snap.ts
    keep: Callable[[Any], bool] = (lambda x: True) if match_all else pred
    before = {x.id: x for x in prev.listeners} if prev is not None else {}
    lrows = {x.id: lr.ListenerRow(x, before.get(x.id), dt) for x in snap.listeners}
    listeners = arrange(lrows, state.column("listeners"), state.descending("listeners"), now,
                        None if match_all else (lambda r: pred(r.listener)))
    failures = arrange(_failure_rows(snap, prev, keep, dt), state.column("failures"), state.descending("failures"), now)
    groups = EMPTY
    if state.group:
        groups = arrange(_group_rows(frame, state.group, prev, pred, match_all, dt), state.column("groups"),
                         state.descending("groups"), now)
    return ViewFrame(state, frame, pred, prev, dt, listeners, failures, groups)


def _failure_rows(snap: Snapshot, prev: Snapshot | None, keep, dt: float) -> dict:
    base = {}
    if prev is not None:
        base = {k: r for k, r in fr.failure_rows(prev, keep, {}, dt).items()}
    return fr.failure_rows(snap, keep, base, dt)


def _group_rows(frame: Frame, mode: str, prev: Snapshot | None, pred, match_all: bool, dt: float) -> dict:
    keep_failure = (lambda x: True) if match_all else pred
    before = None
    if prev is not None:
        before = {}
        for x in prev.failures:
            key = gr.failure_key(mode, x)
            if key is not None and keep_failure(x):
                before[key] = before.get(key, 0) + x.count
    return gr.build_groups(mode, frame.rows, frame.order, pred, match_all, frame.snapshot.failures, keep_failure,
                           before, dt)


class ViewsBuilder:
    """The worker's side: remembers the snapshot before the current one, for rates."""

    def __init__(self) -> None:
        self._cur: Snapshot | None = None
        self._prev: Snapshot | None = None

    def build(self, frame: Frame, state: ViewState, pred: Predicate, match_all: bool) -> ViewFrame:
        snap = frame.snapshot
        if snap is not self._cur:
            self._prev, self._cur = self._cur, snap
        return build_views(frame, state, pred, match_all, self._prev)


class Views:
    """The UI thread's side: what is chosen, the newest ViewFrame, rows in display order."""

    def __init__(self) -> None:
        self.state = ViewState()
        self.frame: ViewFrame | None = None
        self.builder = ViewsBuilder()
        self.flows_descending = True  # the flow list's direction: open groups list their flows in it
        self._display: list[Any] = []

    # -- reading --------------------------------------------------------------

    @property
    def table(self) -> str:
        return self.state.table

    @property
    def rowset(self) -> RowSet:
        if self.frame is None or self.table == "flows":
            return EMPTY
        return getattr(self.frame, self.table)

    def columns(self) -> tuple[Column, ...]:
        return TABLES[self.table][0] if self.table in TABLES else ()

    @property
    def sort_column(self) -> str:
        return self.state.sorts[self.table][0] if self.table in TABLES else ""

    @property
    def descending(self) -> bool:
        return self.state.sorts[self.table][1] if self.table in TABLES else False

    def __len__(self) -> int:
        return len(self._display)

    def row_at(self, index: int) -> Any:
        return self._display[index]

    def index_of(self, row_id: Hashable) -> int | None:
        for i, r in enumerate(self._display):
            if r.id == row_id:
                return i
        return None

    def window(self, start: int, stop: int) -> list[Any]:
        return self._display[max(0, start):stop]

    # -- taking frames ----------------------------------------------------------

    def install(self, vf: ViewFrame, pred: Predicate, match_all: bool) -> None:
        """Show a ViewFrame; one made under another choice (a key pressed meanwhile) is made again."""
        if vf.state is not self.state or vf.pred is not pred:
            vf = build_views(vf.flows, self.state, pred, match_all, vf.prev)
        self.frame = vf
        self._arrange()

    def rebuild(self, flows: Frame | None, pred: Predicate, match_all: bool) -> None:
        """Make the rows again here (the filter or the grouping changed)."""
        if flows is None:
            return
        prev = self.frame.prev if self.frame is not None else None
        self.frame = build_views(flows, self.state, pred, match_all, prev)
        self._arrange()

    def _arrange(self) -> None:
        rs = self.rowset
        rows = [rs.row_at(i) for i in range(len(rs))]
        if self.table == "groups" and self.state.expanded and self.frame is not None:
            flows = self.frame.flows.rows
            descending = self.flows_descending
            out = []
            for g in rows:
                out.append(g)
                if g.id in self.state.expanded:
                    members = reversed(g.members) if descending else g.members
                    out.extend(gr.MemberRow(flows[fid]) for fid in members if fid in flows)
            rows = out
        self._display = rows

    # -- changing the choice ------------------------------------------------------

    def _set(self, **kw) -> None:
        self.state = replace(self.state, **kw)

    def set_view(self, view: str) -> None:
        self._set(view=view)
        self._arrange()

    def cycle_group(self) -> str:
        modes = gr.MODES
        self._set(group=modes[(modes.index(self.state.group) + 1) % len(modes)], view="flows", expanded=frozenset())
        return self.state.group

    def set_sort(self, column_id: str, descending: bool | None = None) -> None:
        table = self.table
        col = COLUMN_BY_ID[table][column_id]
        desc = col.descending if descending is None else descending
        self._set(sorts={**self.state.sorts, table: (col.id, desc)})
        self._resort()

    def reverse(self) -> None:
        table = self.table
        col, desc = self.state.sorts[table]
        self._set(sorts={**self.state.sorts, table: (col, not desc)})
        self._resort()

    def _resort(self) -> None:
        if self.frame is None:
            return
        table = self.table
        rs = rearranged(getattr(self.frame, table), self.state.column(table), self.state.descending(table))
        self.frame = replace(self.frame, state=self.state, **{table: rs})
        self._arrange()

    def toggle(self, group_id: Hashable, open_: bool | None = None) -> bool:
        """Open or close a group's flow list; returns whether it is open now."""
        expanded = set(self.state.expanded)
        now_open = group_id not in expanded if open_ is None else open_
        (expanded.add if now_open else expanded.discard)(group_id)
        self._set(expanded=frozenset(expanded))
        if self.frame is not None:
            self.frame = replace(self.frame, state=self.state)
        self._arrange()
        return now_open
