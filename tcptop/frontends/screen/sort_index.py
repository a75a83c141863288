"""The flow list's sort order kept from one frame to the next, moved only by the flows that changed.

A frame's order is every flow id ascending by (sort value, flow id). Sorting 100,000 rows
costs ~120 ms of Python a refresh; an index kept across frames costs O(changes · log n)
and a walk that makes the list. Both indexes here give exactly what a full sort gives,
ties included, or say they cannot (`order` returns None) and the store sorts from scratch.

`ValueIndex` serves a column whose value is the row's alone: a row that did not change
keeps its value and its place.

`AgeIndex` serves AGE, whose value moves with the clock (Flow.age_s): an open flow's age is
`now - established_ts`, so all open flows age alike and keep their order among themselves
(oldest establishment last); a closed flow's age stopped at its close, and a flow without
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
        self._open = SortedList(opened)
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
        opened, fixed = self._open, self._fixed
        if self._nan or len(fixed) > 64 + len(opened) * _FIXED_SHARE:
            return None
        if opened and not _exact_ages(now, -opened[-1][0]):
            return None
        # Open flows established at or after `now` are 0 s old (Flow.age_s clamps): a tie
        # broken by id, among themselves and with fixed ages of 0.
        young = opened.bisect_left((-now, inf))
        if young:
            extra = sorted(list(fixed) + [(0.0, fid) for _, fid in opened.islice(0, young)])
            entries = list(opened.islice(young))
        else:
            extra = fixed
            entries = list(opened) if fixed else None
        # Where each fixed age goes among the open flows, by their ages at `now` (exact: see
        # _exact_ages). Places only grow, so each search starts at the one before. With the
        # same places and nothing moved, the order is the last one (open flows only: always).
        places: list[int] = []
        if entries is not None:
            age_at = lambda e: (now + e[0], e[1])  # noqa: E731  (now + -est is now - est, bit for bit)
            lo = 0
            for item in extra:
                lo = bisect_left(entries, item, lo, key=age_at)
                places.append(lo)
        last = self._last
        if not self._moved and last is not None and last[0] == places:
            return last[1]
        self._moved = False
        if entries is None:
            self._last = (places, list(map(_SECOND, opened)))
            return self._last[1]
        ids = list(map(_SECOND, entries))
        out: list[int] = []
        start = 0
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
