"""A sorted, filtered list of rows for the views beside the flow list (listeners, failed
destinations, groups): what one refresh shows, in display order.

The flow list has its own store, tuned to keep 100,000 rows in order across frames. These
views hold what a person reads in a screen or a few — listeners, destinations, groups — so
each frame sorts its rows afresh on the worker, under the sort the screen had then, and a
key re-sorts on the UI thread. Rows never change once made; a RowSet never changes either.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Hashable, Sequence

from tcptop.frontends.screen.columns import Column


@dataclass(frozen=True, slots=True, eq=False)
class RowSet:
    """Rows by id; `order` the ids ascending by (sort value, tie-break); `descending` reads it
    from the other end, so reversing costs nothing."""

    rows: dict[Hashable, Any]
    order: list[Hashable]
    column: Column
    descending: bool
    now: float

    def __len__(self) -> int:
        return len(self.order)

    def row_at(self, index: int) -> Any:
        n = len(self.order)
        if not 0 <= index < n:
            raise IndexError(index)
        return self.rows[self.order[n - 1 - index] if self.descending else self.order[index]]

    def ids(self) -> list[Hashable]:
        return self.order[::-1] if self.descending else list(self.order)

    def index_of(self, row_id: Hashable) -> int | None:
        try:
            i = self.order.index(row_id)
        except ValueError:
            return None
        return len(self.order) - 1 - i if self.descending else i


def arrange(rows: dict[Hashable, Any], column: Column, descending: bool, now: float,
            keep: Callable[[Any], bool] | None = None) -> RowSet:
    """The rows `keep` lets through, ordered by the column's sort value; ties by each row's `tie`."""
    key = column.key
    ids: Sequence[Hashable] = [rid for rid, r in rows.items() if keep is None or keep(r)]
    order = sorted(ids, key=lambda rid: (key(rows[rid], now), rows[rid].tie))
    return RowSet(rows, order, column, descending, now)


def rearranged(rs: RowSet, column: Column | None = None, descending: bool | None = None) -> RowSet:
    """The same rows under another sort (a key on the UI thread); the filter's choice is kept."""
    column = column or rs.column
    descending = rs.descending if descending is None else descending
    if column is rs.column:
        return RowSet(rs.rows, rs.order, column, descending, rs.now)
    key = column.key
    order = sorted(rs.order, key=lambda rid: (key(rs.rows[rid], rs.now), rs.rows[rid].tie))
    return RowSet(rs.rows, order, column, descending, rs.now)


EMPTY = RowSet({}, [], Column("none", "", 1, lambda r, now: 0, lambda r, now: ""), False, 0.0)
