"""The flow list's sort order kept from one frame to the next, moved only by the flows that changed.

A frame's order is every flow id ascending by (sort value, flow id). Sorting the 200,000
flows of 100,000 connections costs ~120 ms of Python a refresh; an index kept across
frames costs O(changes · log n) and a copy of the list. Both indexes here give exactly what a full sort gives,
ties included, or say they cannot (`order` returns None) and the store sorts from scratch.

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
from typing import Callable, Iterable

from sortedcontainers import SortedList

from tcptop.frontends.screen.row import Row

_SECOND = itemgetter(1)
_MISSING = object()


class ValueIndex:
    """(sort value, flow id) of every row, ascending, for a column whose value depends on the
    row alone (`key`)."""

    __slots__ = ("_key", "_index", "_keys", "_out")

    def __init__(self, key: Callable[[Row], object], rows: Iterable[Row]) -> None:
        self._key = key
        self._keys = {r.id: key(r) for r in rows}  # flow id -> its sort value in `_index`
        self._index = SortedList(zip(self._keys.values(), self._keys.keys()))
        self._out: list[int] | None = None  # the last order made, while nothing moved since

    def drop(self, fid: int) -> None:
        self._index.remove((self._keys.pop(fid), fid))
        self._out = None

    def place(self, row: Row) -> None:
        """A new row, or one whose value may have changed."""
        fid = row.id
        k = self._key(row)
        keys = self._keys
        was = keys.get(fid, _MISSING)
        if was is _MISSING:
            self._index.add((k, fid))
        elif was != k:
            self._index.remove((was, fid))
            self._index.add((k, fid))
        else:
            return
        keys[fid] = k
        self._out = None

    def order(self, now: float) -> list[int]:
        if self._out is None:
            self._out = list(map(_SECOND, self._index))
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
# Above this many open flows placed or taken out between two frames, the open run's lists
# are made again rather than edited: an edit moves up to n pointers in each (0.1-0.2 ms at
# 200,000), making them walks n scattered entries (~40 ms).
_EDITS_MAX = 128


class _OpenRun:
    """Open flows' (-established_ts, id), ascending: a SortedList (edits in O(log n)), and the
    same as two plain lists a frame reads (`entries` to search, `ids` to copy the order from),
    kept up to date in place while edits are few: making them from the SortedList walks
    every entry, scattered in memory (~40 ms at 200,000)."""

    __slots__ = ("sorted", "entries", "ids", "edits")

    def __init__(self, entries: list[tuple[float, int]]) -> None:
        self.sorted = SortedList(entries)
        self.entries: list[tuple[float, int]] | None = None
        self.ids: list[int] | None = None
        self.edits = 0

    def add(self, e: tuple[float, int]) -> None:
        self.sorted.add(e)
        if self._editable():
            i = bisect_left(self.entries, e)
            self.entries.insert(i, e)
            self.ids.insert(i, e[1])

    def remove(self, e: tuple[float, int]) -> None:
        self.sorted.remove(e)
        if self._editable():
            i = bisect_left(self.entries, e)
            del self.entries[i], self.ids[i]

    def _editable(self) -> bool:
        if self.entries is None:
            return False
        self.edits += 1
        if self.edits > _EDITS_MAX:
            self.entries = self.ids = None
            return False
        return True

    def lists(self) -> tuple[list[tuple[float, int]], list[int]]:
        """(entries, ids) as they are now; the caller only reads them."""
        if self.entries is None:
            self.entries = list(self.sorted)
            self.ids = list(map(_SECOND, self.entries))
        self.edits = 0
        return self.entries, self.ids


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
        self._open = _OpenRun(opened)
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
        entries, ids = self._open.lists()
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
