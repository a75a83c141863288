"""The flow list's sort order kept from one frame to the next, moved only by the flows that changed.

A frame's order is every flow id ascending by (sort value, flow id). Sorting the 200,000
flows of 100,000 connections costs ~120 ms of Python a refresh; an index kept across
frames costs O(changes · log n) and a copy of the list. Both indexes here give exactly what
a full sort gives, ties included, or say they cannot (`order` returns None) and the store
sorts from scratch.

Each keeps a plain list of flow ids in order beside a SortedList (`_SortedIds`; for AGE,
of the open flows), edited in place by the few flows that moved between two frames:
making it from the SortedList walks every entry, scattered in memory (20-40 ms at
200,000). A frame's order is made from that list, or is the list itself, lent (the next
edit works on a copy): it never changes once the frame has it.

`ValueIndex` serves a column whose value is the row's alone: a row that did not change
keeps its value and its place.

`AgeIndex` serves AGE, whose value moves with the clock (Flow.age_s): an open flow's age is
`now - established_ts`, so all open flows age alike and keep their order among themselves
(latest establishment first); a closed flow's age stopped at its close, and a flow without
`established_ts` shows the `duration_s` its engine measured: both are fixed for a given Flow
object. The two runs are kept apart, each in its own order, and merged at the frame's time:
each fixed age finds its place among the open flows by binary search, read at `now`.
"""

from __future__ import annotations

from bisect import bisect_left
from math import inf, ulp
from operator import itemgetter
from time import thread_time_ns
from typing import Callable, Iterable

from sortedcontainers import SortedList

from tcptop.frontends.screen.row import Row

_SECOND = itemgetter(1)
_MISSING = object()


# An edit of a run's plain lists costs ~4 µs of Python (its place in the SortedList) and
# ~0.2 ns per pointer it moves (those after its place, in each list: up to 200,000); making
# the lists walks every entry, 20-150 ns each as the entries lie in memory (4 ms at 200,000
# in id order, 20-40 ms scattered), timed (the worker's own CPU time) when made. The copy
# of the ids a frame keeps costs a tenth of the walk.
_EDIT_NS = 4_000
_MOVE_NS = 0.2
_clock = thread_time_ns


class _SortedIds:
    """Entries (sort value, flow id), ascending: a SortedList (edits in O(log n)), and the plain
    list of their ids a frame's order is made from (and, with `with_entries`, of the entries
    themselves, to search). Making the plain lists walks every entry of the SortedList; they
    are edited in place instead while the edits since the last frame cost less than that walk
    took, and dropped beyond, to be made again when next asked for. An entry's place in the
    lists is its place in the SortedList.

    A list of ids lent to a frame (`lend`) is the frame's: the next edit copies it first."""

    __slots__ = ("sorted", "entries", "ids", "walk_ns", "spent_ns", "_lent", "_lists")

    def __init__(self, entries: Iterable[tuple], with_entries: bool = False) -> None:
        self.sorted = SortedList(entries)
        self._lists = 2 if with_entries else 1
        self.entries: list[tuple] | None = None  # None: made again when next asked for
        self.ids: list[int] | None = None
        self.walk_ns = 0   # what making the lists took, last time
        self.spent_ns = 0.0  # what the edits since the last frame cost (estimated)
        self._lent = False  # `ids` is a frame's

    def add(self, e: tuple) -> None:
        self.sorted.add(e)
        if self.ids is not None:
            i = self.sorted.bisect_left(e)
            if self._editable(i):
                self.ids.insert(i, e[1])
                if self.entries is not None:
                    self.entries.insert(i, e)

    def remove(self, e: tuple) -> None:
        i = self.sorted.bisect_left(e) if self.ids is not None else -1
        self.sorted.remove(e)  # (raises before the lists are touched when `e` is not here)
        if self.ids is not None and self._editable(i):
            del self.ids[i]
            if self.entries is not None:
                del self.entries[i]

    def _editable(self, i: int) -> bool:
        """The lists may be edited at `i`; False when they were dropped instead."""
        ids = self.ids
        self.spent_ns += _EDIT_NS + (len(ids) - i) * self._lists * _MOVE_NS
        if self.spent_ns > self.walk_ns:
            self.entries = self.ids = None  # (a frame keeps the list it was lent)
            return False
        if self._lent:
            self.ids = ids.copy()
            self._lent = False
        return True

    def ids_now(self) -> list[int]:
        """The flow ids as they are now, to be read before the next edit."""
        if self.ids is None:
            t = _clock()
            if self._lists == 2:
                self.entries = list(self.sorted)
                self.ids = list(map(_SECOND, self.entries))
            else:
                self.ids = list(map(_SECOND, self.sorted))
            self.walk_ns = _clock() - t
            self._lent = False
        self.spent_ns = 0.0
        return self.ids

    def lend(self) -> list[int]:
        """The flow ids as they are now, for a frame to keep: never edited afterwards."""
        ids = self.ids_now()
        self._lent = True
        return ids


class ValueIndex:
    """(sort value, flow id) of every row, ascending, for a column whose value depends on the
    row alone (`key`). A NaN value (a raw float field of a hand-made replay) sorts nowhere
    consistently: while a row has one, `order` says it cannot promise the order."""

    __slots__ = ("_key", "_run", "_keys", "_nan", "_out")

    def __init__(self, key: Callable[[Row], object], rows: Iterable[Row]) -> None:
        self._key = key
        self._keys = keys = {r.id: key(r) for r in rows}  # flow id -> its sort value in `_run`
        self._nan = {fid for fid, k in keys.items() if k != k}  # ids whose value is NaN: not in `_run`
        self._run = _SortedIds((k, fid) for fid, k in keys.items() if k == k)
        self._out: list[int] | None = None  # the order lent to the last frame, while nothing moved since

    def drop(self, fid: int) -> None:
        self._take(self._keys.pop(fid), fid)
        self._out = None

    def _take(self, k, fid: int) -> None:
        if k == k:
            self._run.remove((k, fid))
        else:
            self._nan.discard(fid)

    def place(self, row: Row) -> None:
        """A new row, or one whose value may have changed."""
        fid = row.id
        k = self._key(row)
        keys = self._keys
        was = keys.get(fid, _MISSING)
        if was is not _MISSING:
            if was == k:
                return
            self._take(was, fid)
        if k == k:
            self._run.add((k, fid))
        else:
            self._nan.add(fid)
        keys[fid] = k
        self._out = None

    def order(self, now: float) -> list[int] | None:
        if self._nan:
            return None
        if self._out is None:
            self._out = self._run.lend()
        return self._out


def _age_entry(f) -> tuple[bool, tuple[float, int]] | None:
    """Where a flow goes in an AgeIndex: (True, (-established_ts, id)) when its age moves with
    the clock, (False, (age, id)) when it is fixed; None when its age is NaN (it sorts nowhere
    consistently). Mirrors Flow.age_s: max(0, (closed_ts or now) - established_ts), or
    duration_s without established_ts."""
    est = f.established_ts
    if est and not f.closed_ts and est == est:
        return True, (-est, f.id)
    age = f.age_s(0.0)  # the clock is not read: closed, or no establishment time (a NaN one gives 0.0)
    return (False, (age, f.id)) if age == age else None


# Above this many fixed ages per open flow, placing each by binary search costs more than a sort.
_FIXED_SHARE = 1 / 32


class AgeIndex:
    """The flows by AGE at any frame's time: open flows by (-established_ts, id), fixed ages by
    (age, id), merged when asked (see the module's docstring)."""

    __slots__ = ("_open", "_fixed", "_where", "_nan", "_moved", "_last")

    def __init__(self, rows: Iterable[Row]) -> None:
        self._where: dict[int, tuple[bool, tuple[float, int]] | None] = {}  # flow id -> _age_entry
        opened, fixed = [], []
        self._nan: set[int] = set()
        for r in rows:
            e = self._where[r.id] = _age_entry(r.flow)
            if e is None:
                self._nan.add(r.id)
            else:
                (opened if e[0] else fixed).append(e[1])
        self._open = _SortedIds(opened, with_entries=True)
        self._fixed = SortedList(fixed)
        self._moved = True
        # (the last merge's places of the fixed ages, the order it made)
        self._last: tuple[list[int], list[int]] | None = None

    def drop(self, fid: int) -> None:
        self._take(self._where.pop(fid), fid)
        self._moved = True

    def _take(self, e, fid: int) -> None:
        if e is None:
            self._nan.discard(fid)
        else:
            (self._open if e[0] else self._fixed).remove(e[1])

    def place(self, row: Row) -> None:
        fid = row.id
        e = _age_entry(row.flow)
        was = self._where.get(fid, _MISSING)
        if was is not _MISSING:
            if was == e:
                return
            self._take(was, fid)
        self._where[fid] = e
        if e is None:
            self._nan.add(fid)
        else:
            (self._open if e[0] else self._fixed).add(e[1])
        self._moved = True

    def order(self, now: float) -> list[int] | None:
        """Flow ids ascending by (age at `now`, id), exactly as a full sort orders them; None
        when that cannot be promised cheaply (a NaN age, many fixed ages, or establishment
        times whose distance to `now` a float cannot hold exactly)."""
        fixed = self._fixed
        if self._nan or len(fixed) > 64 + len(self._open.sorted) * _FIXED_SHARE:
            return None
        ids = self._open.ids_now()
        entries = self._open.entries
        if entries and not _exact_ages(now, -entries[-1][0]):
            return None
        # Open flows established at or after `now` are 0 s old (Flow.age_s clamps): a tie
        # broken by id, among themselves and with fixed ages of 0; they come first in `entries`.
        young = bisect_left(entries, (-now, inf))
        extra = sorted(list(fixed) + [(0.0, fid) for fid in ids[:young]]) if young else fixed
        # Where each fixed age goes among the other open flows, by their ages at `now` (exact:
        # see _exact_ages). Places only grow, so each search starts at the one before. With
        # the same places and nothing moved, the order is the last one.
        places: list[int] = []
        age_at = lambda e: (now + e[0], e[1])  # noqa: E731  (now + -est is now - est, bit for bit)
        lo = young
        for item in extra:
            lo = bisect_left(entries, item, lo, key=age_at)
            places.append(lo)
        last = self._last
        if not self._moved and last is not None and last[0] == places:
            return last[1]
        self._moved = False
        out: list[int] = []  # a new list: `ids` is edited later, frames keep theirs
        start = young
        for (_, fid), at in zip(extra, places):
            if at > start:
                out += ids[start:at]
                start = at
            out.append(fid)
        out += ids[start:]
        self._last = (places, out)
        return out


def _exact_ages(now: float, earliest: float) -> bool:
    """`now - est` is exact in floats for every est >= `earliest` up to `now` (so two open flows
    tie in age only when they tie in establishment time, and `now + -est` is their age): all are
    multiples of the smaller of the two ulps, and the difference stays below 2**53 of them.
    Unix times of this century always pass; small replay timestamps may not."""
    return earliest > 0 and now <= 2.0 ** 53 * min(ulp(now), ulp(earliest))
