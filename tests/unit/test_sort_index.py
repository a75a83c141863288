"""The flow list's order kept across frames by an index that moves only what changed (by a value
column, or by AGE), and always exactly the order a full sort gives (ties by id, closed flows'
ages frozen); a frame's order never changes once the frame is made."""

from __future__ import annotations

import dataclasses
import itertools
import random

import pytest
from factories import make_flow, make_snapshot, next_poll

from tcptop.frontends.screen import sort_index
from tcptop.frontends.screen import store as store_mod
from tcptop.frontends.screen.columns import COLUMN_BY_ID
from tcptop.frontends.screen.store import FlowStore

AGE = COLUMN_BY_ID["age"]
T0 = 1_780_000_000.0  # unix time, as the engines give it (rounded to µs)


def full_sort(store: FlowStore) -> list[int]:
    """What sorting every shown row from scratch gives, in display order."""
    rows = [r for r in store.rows.values() if store.is_visible(r.id)]
    key = store.view.column.key
    asc = [r.id for r in sorted(rows, key=lambda r: (key(r, store.now), r.id))]
    return asc[::-1] if store.descending else asc


def all_flows_sorted(store: FlowStore) -> list[int]:
    """Every flow of the last frame, ascending by (the frame's sort value, id)."""
    key = store.builder.frame.view.column.key
    return [r.id for r in sorted(store.rows.values(), key=lambda r: (key(r, store.now), r.id))]


def from_the_index(store: FlowStore) -> bool:
    """The last frame's order came from the kept index, not a sort of every row."""
    return store.builder.rekeyed < len(store.rows)


def changes_of(base: dict, touched: set[int]):
    """Snapshot.changes as an engine gives them: flows new or changed, ids gone."""
    return tuple(base[i] for i in sorted(touched) if i in base), tuple(i for i in touched if i not in base)


def walks_timed_alike(monkeypatch, ns: int):
    """Every making of an index's lists timed at `ns` (a clock that moves that much a reading),
    so that which frames edit them and which make them again does not depend on the machine:
    with a few hundred flows, edits beyond about ns / 4 µs between two frames make them again."""
    monkeypatch.setattr(sort_index, "_clock", itertools.count(0, ns).__next__)


class RunSpy:
    """How each frame got its order's lists from a _SortedIds: edited in place since the frame
    before, or made again from the SortedList (first, or `dropped` when edits cost too much)."""

    def __init__(self, monkeypatch):
        self.made = self.edited = self.unmoved = self.dropped = 0
        real_now, real_editable = sort_index._SortedIds.ids_now, sort_index._SortedIds._editable

        def ids_now(run):
            if run.ids is None:
                self.made += 1
            elif run.spent_ns:
                self.edited += 1
            else:
                self.unmoved += 1
            return real_now(run)

        def editable(run, i):
            ok = real_editable(run, i)
            self.dropped += not ok
            return ok

        monkeypatch.setattr(sort_index._SortedIds, "ids_now", ids_now)
        monkeypatch.setattr(sort_index._SortedIds, "_editable", editable)


class FramesKept:
    """Every frame made so far, with what its order and shown ids were when it was made."""

    def __init__(self):
        self.frames = []

    def add(self, frame):
        self.frames.append((frame, tuple(frame.order), tuple(frame.shown)))

    def unchanged(self) -> bool:
        return all(tuple(f.order) == order and tuple(f.shown) == shown for f, order, shown in self.frames)


@pytest.mark.parametrize("sort", ["tx", "retrans"])
@pytest.mark.parametrize("descending", [True, False])
def test_value_order_kept_across_frames_equals_a_full_sort(sort, descending, monkeypatch):
    """Sorted by a value column (TX/s: rates that settle to zero; RETRANS: decaying counts, so a
    retransmitting flow moves for frames after): births, closes, flows going, values changing,
    many ties, skipped snapshots, filter and sort changes, a frame where most flows change,
    bursts of births and of changes beyond the edits the order's list is edited for, frames
    where flows only go. Every frame's order is the full sort's, and no frame's order changes
    after it was made."""
    monkeypatch.setattr(store_mod, "HISTORY_ALL_MAX", 10)  # frames follow the source's changes
    walks_timed_alike(monkeypatch, 200_000)  # the order's list edited, or made again (~50 edits)
    spy = RunSpy(monkeypatch)
    rnd = random.Random(20261202 + 2 * descending + (sort == "retrans"))
    ts = T0
    going: dict[int, int] = {}  # closed flow id -> the frame it goes in

    def born(i: int) -> object:
        # few distinct values: ties, broken by id
        return make_flow(i, bytes_sent=rnd.choice([0, 0, 0, 100, 1000]), retrans_packets=int(rnd.random() < 0.05),
                         rport=rnd.choice([80, 443]), established_ts=ts - rnd.choice([0.0, 0.5, 30.0]))

    def changed(i: int) -> object:
        f = base[i]
        grown = dict(bytes_sent=f.bytes_sent + rnd.choice([0, 100, 100, 1000]),
                     retrans_packets=f.retrans_packets + rnd.choice([0] * 9 + [1, 3]))
        if not f.closed and rnd.random() < 0.25:
            going[i] = frame + rnd.randint(1, 3)
            return dataclasses.replace(f, closed=True, state="CLOSE", closed_ts=ts, **grown)
        return dataclasses.replace(f, **grown)

    base: dict[int, object] = {}
    store = FlowStore(sort=sort, descending=descending)
    kept = FramesKept()
    next_id, seq, from_index = 0, 0, 0
    for frame in range(96):
        if frame >= 85:  # quiet (the rows settle), then frames where flows only go
            present = [i for i in base if frame < 90 or rnd.random() > 0.02]
            changing = set()
        else:
            present = [i for i in base if going.get(i, frame + 1) > frame and rnd.random() > 0.01]
            # 300 flows at first; bursts of births beyond the edits the order's list is edited for
            present += range(next_id, next_id + rnd.randint(0, 6) + {0: 300, 45: 40, 70: 15}.get(frame, 0))
            next_id = max(present, default=-1) + 1
            if frame == 40:  # most flows change: sorted from scratch
                changing = set(rnd.sample(sorted(base), len(base) * 2 // 3))
            else:  # values changing: bursts beyond the bound, and near it
                burst = {55: 30, 56: 12, 75: 20}.get(frame, 0)
                changing = set(rnd.sample(sorted(base), min(len(base), rnd.randint(0, 6) + burst)))
        touched = next_poll(base, present, changing, lambda i: changed(i) if i in base else born(i))
        seq += 2 if frame in (25, 50) else 1  # the screen missed a snapshot: the next frame walks
        store.update(make_snapshot(list(base.values()), ts=ts, seq=seq, changes=changes_of(base, touched)))
        from_index += frame_checked(store, kept, frame, sort, "age", descending)
        ts += rnd.choice([1.0, 1.0, 0.5, 2.0])
    assert from_index >= 60  # the path under test was taken: all but the sorts from scratch
    assert spy.edited >= 30 and spy.dropped >= 4, vars(spy)  # lists edited in place, and made again


def frame_checked(store, kept: "FramesKept", frame: int, sort: str, other: str, descending: bool) -> int:
    """The frame just built equals the full sort and leaves earlier frames' orders as they were;
    then the view changes at fixed frames (a filter set and cleared, another sort and back), each
    checked too. 1 if the frame came from the kept index of `sort`."""
    kept.add(store.builder.frame)
    assert store.ids() == full_sort(store), f"frame {frame}"
    assert store.builder.frame.order == all_flows_sorted(store), f"frame {frame}"
    assert kept.unchanged(), f"frame {frame}: an earlier frame's order changed"
    from_index = int(bool(from_the_index(store)) and store.sort_column == sort)
    if frame == 15:
        store.set_filter("port 443")
    elif frame == 30:
        store.set_filter(None)
    elif frame == 35:
        store.set_sort(other)
    elif frame == 36:
        store.set_sort(sort, descending=descending)
    if frame in (15, 30, 35, 36):
        assert store.ids() == full_sort(store)
    return from_index


@pytest.mark.parametrize("descending", [True, False])
def test_age_order_kept_across_frames_equals_a_full_sort(descending, monkeypatch):
    """Births, closes (ages frozen at the close), flows going, ties in establishment time and
    between frozen and moving ages, flows without an establishment time, flows established
    after the snapshot's clock (0 s old), skipped snapshots, filter and sort changes, a frame
    where most flows change, a burst of closes, a burst of births: every frame's order is the
    full sort's, and stays as it was made."""
    monkeypatch.setattr(store_mod, "HISTORY_ALL_MAX", 10)  # frames follow the source's changes
    walks_timed_alike(monkeypatch, 80_000)  # the open run's lists edited, or made again (~20 edits)
    spy = RunSpy(monkeypatch)
    rnd = random.Random(20261202 + descending)
    ts = T0
    closing_due: dict[int, int] = {}  # closed flow id -> the frame it goes in

    def born(i: int) -> object:
        kind = rnd.random()
        common = dict(rport=rnd.choice([80, 443]), comm=rnd.choice("ab"))
        if kind < 0.08:  # no establishment time: the engine's duration_s is its age
            return make_flow(i, established_ts=0.0, duration_s=rnd.choice([0.0, 1.0, 2.5, 7.0]), **common)
        if kind < 0.12:  # established after the snapshot was read (another clock): 0 s old for now
            return make_flow(i, established_ts=ts + rnd.choice([0.25, 1.0, 1.5]), **common)
        # on a quarter-second grid, so that many flows tie, open with open and with closed ones
        return make_flow(i, established_ts=ts - rnd.choice([0.0, 0.25, 1.0, 3.0, 7.5, 30.0]), **common)

    def changed(i: int) -> object:
        f = base[i]
        if not f.closed and rnd.random() < 0.3:
            closing_due[i] = frame + rnd.randint(1, 3)
            return dataclasses.replace(f, closed=True, state="CLOSE", closed_ts=ts - rnd.choice([0.0, 0.25, 0.5]))
        return dataclasses.replace(f, bytes_sent=f.bytes_sent + 100)

    base: dict[int, object] = {}
    store = FlowStore(sort="age", descending=descending)
    kept = FramesKept()
    next_id, seq, from_index = 0, 0, 0
    for frame in range(80):
        present = [i for i in base if closing_due.get(i, frame + 1) > frame and rnd.random() > 0.01]
        # 300 flows at first; once, more births than the open run's lists are edited for (but few enough
        # not to be sorted from scratch)
        present += range(next_id, next_id + rnd.randint(0, 8) + {0: 300, 45: 40}.get(frame, 0))
        next_id = max(present, default=-1) + 1
        if frame == 40:
            changing = set(rnd.sample(sorted(base), len(base) * 2 // 3))  # most flows change: sorted again
        elif frame == 60:
            changing = set(rnd.sample(sorted(base), 150))  # a burst of closes: more frozen ages than the index merges
            for i in changing:
                base[i] = dataclasses.replace(base[i], closed=True, closed_ts=ts)
                closing_due[i] = frame + 2
        else:
            changing = set(rnd.sample(sorted(base), min(len(base), rnd.randint(0, 10))))
        touched = next_poll(base, present, changing, lambda i: changed(i) if i in base else born(i))
        seq += 2 if frame in (25, 50) else 1  # the screen missed a snapshot: the next frame walks
        store.update(make_snapshot(list(base.values()), ts=ts, seq=seq, changes=changes_of(base, touched)))
        from_index += frame_checked(store, kept, frame, "age", "tx", descending)
        ts += rnd.choice([1.0, 1.0, 0.5, 0.25, 2.0])
    assert from_index >= 55  # the path under test was taken: all but the sorts from scratch
    assert spy.edited >= 50 and spy.dropped >= 1, vars(spy)  # lists edited in place, and made again


def test_flows_established_after_the_snapshot_clock_are_0_s_old_and_tie_by_id():
    """Flow.age_s clamps at 0: such flows tie with each other and with closed flows of age 0,
    broken by id, until the clock passes their establishment."""
    flows = [make_flow(5, established_ts=T0 + 2.0),
             make_flow(3, established_ts=T0 - 4.0, closed=True, closed_ts=T0 - 4.0),
             make_flow(4, established_ts=T0 + 1.0), make_flow(9, established_ts=T0 - 1.0),
             make_flow(2, established_ts=T0 - 3.0, closed=True, closed_ts=T0 - 2.5)]
    store = FlowStore(sort="age", descending=False)
    for t in (0.0, 0.0, 0.0):
        store.update(make_snapshot(flows, ts=T0 + t))
    assert from_the_index(store)
    assert store.ids() == [3, 4, 5, 2, 9]
    store.update(make_snapshot(flows, ts=T0 + 1.5))
    assert from_the_index(store)
    assert store.ids() == [3, 5, 2, 4, 9] == full_sort(store)  # 4 is 0.5 s old, as 2 froze: a tie
    store.update(make_snapshot(flows, ts=T0 + 3.0))
    assert store.ids() == [3, 2, 5, 4, 9] == full_sort(store)


def test_an_open_flow_overtakes_a_closed_one_as_the_clock_moves():
    """A closed flow's age stopped; an open one younger at first passes it, tying on the way."""
    flows = [make_flow(1, established_ts=T0 - 10.0, closed=True, closed_ts=T0 - 5.0),  # 5 s, for good
             make_flow(2, established_ts=T0 - 3.0)]
    store = FlowStore(sort="age")  # oldest first
    orders = []
    for t in range(6):
        store.update(make_snapshot(flows, ts=T0 + t))
        orders.append(store.ids())
        assert store.ids() == full_sort(store)
    assert orders == [[1, 2], [1, 2], [2, 1], [2, 1], [2, 1], [2, 1]]  # tie at t=2: ids, read descending


def test_ages_a_float_cannot_tell_apart_still_tie_by_id():
    """With small timestamps (a hand-made replay), now - established_ts rounds: two flows
    established apart can show the same age, and then id decides, as in a full sort. The
    index cannot promise that order, so the frame is sorted from scratch."""
    flows = [make_flow(1, established_ts=1e-17), make_flow(2, established_ts=2e-17)]
    assert 3.0 - 1e-17 == 3.0 - 2e-17
    store = FlowStore(sort="age", descending=False)
    for t in range(4):
        store.update(make_snapshot(flows, ts=3.0))
        assert store.ids() == [1, 2]
    assert not from_the_index(store)


def test_a_nan_duration_sorts_as_a_full_sort_does():
    """A replay may carry a NaN duration_s (Python's json reads NaN): no index can hold it, the
    frame is sorted from scratch, as before."""
    flows = [make_flow(1, established_ts=0.0, duration_s=float("nan")), make_flow(2, established_ts=T0 - 1)]
    store = FlowStore(sort="age")
    for t in range(4):
        store.update(make_snapshot(flows, ts=T0 + t))
    assert sorted(store.ids()) == [1, 2] and not from_the_index(store)


def test_idle_flows_sorted_by_age_are_not_rekeyed_and_the_order_is_passed_on():
    """100 idle open flows: after the first frames nothing is re-keyed and the frame's order is
    the previous frame's list itself (ages moved, order did not)."""
    flows = [make_flow(i, established_ts=T0 - (i * 7919) % 100) for i in range(100)]
    store = FlowStore(sort="age")
    for t in range(3):
        store.update(make_snapshot(flows, ts=T0 + t))
    before = store.builder.frame.order
    store.update(make_snapshot(flows, ts=T0 + 3))
    assert store.builder.rekeyed == 0 and store.builder.frame.order is before
    assert store.ids() == full_sort(store)


def test_a_nan_value_sorts_as_a_full_sort_does_and_the_index_serves_again_without_it():
    """A replay may carry NaN in a raw float field sorted by (here established_ts): no index can
    hold it, so the frame is sorted from scratch, as before the index, whichever rows come, go
    or change to or from NaN; once no row has one, the index serves again."""
    nan = float("nan")
    flows = {i: make_flow(i, established_ts=float(i % 4)) for i in range(20)}
    flows[3] = make_flow(3, established_ts=nan)
    store = FlowStore(sort="established_ts", descending=False)
    for t, change in enumerate([{}, {3: nan, 5: nan}, {5: 1.0, 20: nan}, {3: 2.0, 7: nan}, {7: 0.5, 20: 3.0}, {}]):
        for i, est in change.items():
            flows[i] = make_flow(i, established_ts=est)
        if t == 4:
            del flows[11]
        store.update(make_snapshot(list(flows.values()), ts=T0 + t))
        assert sorted(store.ids()) == sorted(flows)
        assert from_the_index(store) == (t >= 4), t  # (the first frame is always sorted from scratch)
    assert store.ids() == full_sort(store)
