"""The flow list: a line-API table that draws only the rows on screen.

A DataTable of 10,000 rows takes seconds to fill and O(n) per removal; this widget
asks the store for the visible window on every paint, so a refresh costs the same at
ten flows or a hundred thousand. The cursor is a flow id, never a row index: after a
re-sort or refresh the same connection stays selected and in view.
"""

from __future__ import annotations

from functools import lru_cache

from rich.segment import Segment
from rich.style import Style
from textual import events
from textual.geometry import Size
from textual.message import Message
from textual.scroll_view import ScrollView
from textual.strip import Strip

from tcptop.frontends.screen.columns import COLUMNS, Column, fit_columns
from tcptop.frontends.screen.keys import TABLE_BINDINGS
from tcptop.frontends.screen.row import Row
from tcptop.frontends.screen.store import FlowStore
from tcptop.frontends.screen.units import printable


_parse_style = lru_cache(maxsize=64)(Style.parse)


class FlowTable(ScrollView, can_focus=True):
    """Rows come from a FlowStore; line 0 is a header that does not scroll."""

    COMPONENT_CLASSES = {
        "flow-table--header",
        "flow-table--header-sorted",
        "flow-table--cursor",
        "flow-table--closed",
        "flow-table--empty",
    }

    BINDINGS = TABLE_BINDINGS

    class Selected(Message):
        """The selected flow changed (None: nothing to select)."""

        def __init__(self, flow_id: int | None) -> None:
            super().__init__()
            self.flow_id = flow_id

    class HeaderClicked(Message):
        def __init__(self, column_id: str) -> None:
            super().__init__()
            self.column_id = column_id

    def __init__(self, store: FlowStore, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.store = store
        self.cursor_id: int | None = None
        self._cursor_index = 0
        # Until the user picks a row the cursor stays on the top row, like top(1); after that
        # it follows the chosen connection wherever sorting moves it.
        self.follow_top = True
        self._columns: list[Column] = list(COLUMNS)
        self._columns_width = -1
        self._columns_sort = ""
        self.empty_text = "no flows"

    # -- geometry -----------------------------------------------------------------

    @property
    def page_rows(self) -> int:
        return max(1, self.scrollable_content_region.height - 1)

    def columns(self) -> list[Column]:
        width = self.scrollable_content_region.width or self.size.width
        if width != self._columns_width or self.store.sort_column != self._columns_sort:
            self._columns = fit_columns(width, self.store.sort_column)
            self._columns_width = width
            self._columns_sort = self.store.sort_column
        return self._columns

    def data_changed(self) -> None:
        """The store changed: keep the cursor on its flow, keep it in view, repaint."""
        self.virtual_size = Size(self.scrollable_content_region.width, len(self.store) + 1)
        self._follow_cursor()
        self.refresh()

    def _follow_cursor(self, announce: bool = True) -> None:
        store = self.store
        n = len(store)
        before = self.cursor_id
        if self.follow_top and n:
            self.cursor_id = store.row_at(0).id
        index = store.index_of(self.cursor_id) if self.cursor_id is not None else None
        if index is None:
            # The flow left (gone or filtered out): take whatever is now at its old place.
            if n == 0:
                self.cursor_id = None
                self._cursor_index = 0
            else:
                index = min(self._cursor_index, n - 1)
                self.cursor_id = store.row_at(index).id
        if index is not None:
            self._cursor_index = index
            self._scroll_to_cursor()
        if announce and self.cursor_id != before:
            self.post_message(self.Selected(self.cursor_id))

    def _scroll_to_cursor(self) -> None:
        top = int(self.scroll_y)
        page = self.page_rows
        i = self._cursor_index
        if i < top:
            self.scroll_to(y=i, animate=False, immediate=True)
        elif i >= top + page:
            self.scroll_to(y=i - page + 1, animate=False, immediate=True)

    def select_index(self, index: int) -> None:
        n = len(self.store)
        if n == 0:
            return
        index = max(0, min(n - 1, index))
        self.follow_top = index == 0 and self.follow_top
        self._cursor_index = index
        new_id = self.store.row_at(index).id
        changed = new_id != self.cursor_id
        self.cursor_id = new_id
        self._scroll_to_cursor()
        self.refresh()
        if changed:
            self.post_message(self.Selected(new_id))

    def select_flow(self, flow_id: int) -> bool:
        index = self.store.index_of(flow_id)
        if index is None:
            return False
        self.select_index(index)
        return True

    # -- actions ------------------------------------------------------------------

    def action_cursor(self, delta: int) -> None:
        self.select_index(self._cursor_index + delta)

    def action_page(self, direction: int) -> None:
        self.select_index(self._cursor_index + direction * self.page_rows)

    def action_edge(self, end: int) -> None:
        self.select_index(len(self.store) - 1 if end else 0)
        self.follow_top = not end  # Home: back to following the top row

    def on_click(self, event: events.Click) -> None:
        offset = event.get_content_offset(self)
        if offset is None:
            return
        x, y = offset
        if y == 0:
            column = self._column_at(x)
            if column is not None:
                self.post_message(self.HeaderClicked(column.id))
            return
        self.select_index(int(self.scroll_y) + y - 1)

    def _column_at(self, x: int) -> Column | None:
        pos = 0
        for col in self.columns():
            if pos <= x < pos + col.width + 1:
                return col
            pos += col.width + 1
        return None

    # -- painting -----------------------------------------------------------------

    def render_line(self, y: int) -> Strip:
        width = self.scrollable_content_region.width
        if y == 0:
            return self._header_strip(width)
        index = int(self.scroll_y) + y - 1
        store = self.store
        if index >= len(store):
            if index == 0:
                style = self.get_component_rich_style("flow-table--empty")
                text = f" {self.empty_text}"
                return Strip([Segment(text.ljust(width)[:width], style)], width)
            return Strip.blank(width, self.rich_style)
        row = store.row_at(index)
        return self._row_strip(row, store.now, width, row.id == self.cursor_id)

    def _header_strip(self, width: int) -> Strip:
        base = self.get_component_rich_style("flow-table--header")
        sorted_style = self.get_component_rich_style("flow-table--header-sorted")
        arrow = "▼" if self.store.descending else "▲"
        segs = []
        used = 0
        for col in self.columns():
            if col.id == self.store.sort_column:
                title = col.title + arrow
                text = title.rjust(col.width) if col.right else title.ljust(col.width)
                segs.append(Segment(text[: col.width] + " ", base + sorted_style))
            else:
                text = col.title.rjust(col.width) if col.right else col.title.ljust(col.width)
                segs.append(Segment(text + " ", base))
            used += col.width + 1
        if used < width:
            segs.append(Segment(" " * (width - used), base))
        return Strip(segs).crop(0, width)

    def _row_strip(self, row: Row, now: float, width: int, is_cursor: bool) -> Strip:
        base = self.rich_style
        if row.flow.closed:
            base = base + self.get_component_rich_style("flow-table--closed")
        if is_cursor:
            base = base + self.get_component_rich_style("flow-table--cursor")
        segs = []
        used = 0
        for col in self.columns():
            text = printable(col.text(row, now))
            if len(text) > col.width:
                text = text[: col.width - 1] + "…"
            text = text.rjust(col.width) if col.right else text.ljust(col.width)
            style = base
            if col.style is not None and not row.flow.closed:
                extra = col.style(row)
                if extra:
                    style = base + _parse_style(extra)
            segs.append(Segment(text, style))
            segs.append(Segment(" ", base))
            used += col.width + 1
        if used < width:
            segs.append(Segment(" " * (width - used), base))
        return Strip(segs).crop(0, width)

    def on_resize(self, event: events.Resize) -> None:
        self.virtual_size = Size(self.scrollable_content_region.width, len(self.store) + 1)
        self._columns_width = -1
        self._scroll_to_cursor()
