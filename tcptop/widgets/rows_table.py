"""The table of the views beside the flow list (listeners, failed destinations, groups): a
line-API table over `Views`, drawing only the rows on screen.

It takes the place of the flow list while one of those views is chosen. Like the flow list,
its cursor is a row id, never an index, so the same listener, destination or group stays
selected across refreshes and re-sorts; a group's flows, when it is open, are drawn under it
indented.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Hashable

from rich.segment import Segment
from rich.style import Style
from textual import events
from textual.geometry import Size
from textual.message import Message
from textual.scroll_view import ScrollView
from textual.strip import Strip

from tcptop.frontends.screen.columns import Column, fit_columns
from tcptop.frontends.screen.keys import GROUP_BINDINGS, TABLE_BINDINGS
from tcptop.frontends.screen.units import printable
from tcptop.frontends.screen.views import Views

_parse_style = lru_cache(maxsize=64)(Style.parse)


class RowsTable(ScrollView, can_focus=True):
    """Rows come from `Views`; line 0 is a header that does not scroll."""

    COMPONENT_CLASSES = {
        "rows-table--header",
        "rows-table--header-sorted",
        "rows-table--cursor",
        "rows-table--member",
        "rows-table--empty",
    }

    BINDINGS = TABLE_BINDINGS + GROUP_BINDINGS

    class Selected(Message):
        def __init__(self, row_id: Hashable | None) -> None:
            super().__init__()
            self.row_id = row_id

    class HeaderClicked(Message):
        def __init__(self, column_id: str) -> None:
            super().__init__()
            self.column_id = column_id

    class Toggle(Message):
        """Open (True), close (False) or flip (None) the selected group."""

        def __init__(self, row_id: Hashable | None, open_: bool | None) -> None:
            super().__init__()
            self.row_id = row_id
            self.open = open_

    def __init__(self, views: Views, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.views = views
        self.cursor_id: Hashable | None = None
        self._cursor_index = 0
        self.follow_top = True
        self.empty_text = "nothing to show"
        self._fit: tuple = ()
        self._columns: list[Column] = []

    @property
    def page_rows(self) -> int:
        return max(1, self.scrollable_content_region.height - 1)

    def columns(self) -> list[Column]:
        width = self.scrollable_content_region.width or self.size.width
        key = (width, self.views.table, self.views.sort_column)
        if key != self._fit:
            self._columns = fit_columns(width, self.views.sort_column, self.views.columns())
            self._fit = key
        return self._columns

    def reset(self) -> None:
        """Another table is shown: start at its top."""
        self.cursor_id = None
        self._cursor_index = 0
        self.follow_top = True
        self.scroll_to(y=0, animate=False, immediate=True)

    def data_changed(self) -> None:
        self.virtual_size = Size(self.scrollable_content_region.width, len(self.views) + 1)
        views = self.views
        n = len(views)
        before = self.cursor_id
        if self.follow_top and n:
            self.cursor_id = views.row_at(0).id
        index = views.index_of(self.cursor_id) if self.cursor_id is not None else None
        if index is None:
            if n == 0:
                self.cursor_id, self._cursor_index = None, 0
            else:
                index = min(self._cursor_index, n - 1)
                self.cursor_id = views.row_at(index).id
        if index is not None:
            self._cursor_index = index
            self._scroll_to_cursor()
        self.refresh()
        if self.cursor_id != before:
            self.post_message(self.Selected(self.cursor_id))

    def selected(self) -> Any | None:
        i = self.views.index_of(self.cursor_id) if self.cursor_id is not None else None
        return self.views.row_at(i) if i is not None else None

    def _scroll_to_cursor(self) -> None:
        top, page, i = int(self.scroll_y), self.page_rows, self._cursor_index
        if i < top:
            self.scroll_to(y=i, animate=False, immediate=True)
        elif i >= top + page:
            self.scroll_to(y=i - page + 1, animate=False, immediate=True)

    def select_index(self, index: int) -> None:
        n = len(self.views)
        if n == 0:
            return
        index = max(0, min(n - 1, index))
        self.follow_top = index == 0 and self.follow_top
        self._cursor_index = index
        new_id = self.views.row_at(index).id
        changed = new_id != self.cursor_id
        self.cursor_id = new_id
        self._scroll_to_cursor()
        self.refresh()
        if changed:
            self.post_message(self.Selected(new_id))

    # -- keys and mouse --------------------------------------------------------------

    def action_cursor(self, delta: int) -> None:
        self.select_index(self._cursor_index + delta)

    def action_page(self, direction: int) -> None:
        self.select_index(self._cursor_index + direction * self.page_rows)

    def action_edge(self, end: int) -> None:
        self.select_index(len(self.views) - 1 if end else 0)
        self.follow_top = not end

    def action_toggle(self, how: str = "flip") -> None:
        self.post_message(self.Toggle(self.cursor_id, {"open": True, "close": False}.get(how)))

    def on_click(self, event: events.Click) -> None:
        offset = event.get_content_offset(self)
        if offset is None:
            return
        x, y = offset
        if y == 0:
            pos = 0
            for col in self.columns():
                if pos <= x < pos + col.width + 1:
                    self.post_message(self.HeaderClicked(col.id))
                    return
                pos += col.width + 1
            return
        self.select_index(int(self.scroll_y) + y - 1)

    # -- painting ------------------------------------------------------------------

    def render_line(self, y: int) -> Strip:
        width = self.scrollable_content_region.width
        if y == 0:
            return self._header(width)
        index = int(self.scroll_y) + y - 1
        views = self.views
        if index >= len(views):
            if index == 0:
                style = self.get_component_rich_style("rows-table--empty")
                return Strip([Segment(f" {self.empty_text}".ljust(width)[:width], style)], width)
            return Strip.blank(width, self.rich_style)
        row = views.row_at(index)
        return self._row(row, width, row.id == self.cursor_id)

    def _header(self, width: int) -> Strip:
        base = self.get_component_rich_style("rows-table--header")
        sorted_style = self.get_component_rich_style("rows-table--header-sorted")
        arrow = "▼" if self.views.descending else "▲"
        segs, used = [], 0
        for col in self.columns():
            title = col.title + (arrow if col.id == self.views.sort_column else "")
            text = (title.rjust(col.width) if col.right else title.ljust(col.width))[: col.width]
            segs.append(Segment(text + " ", base + sorted_style if col.id == self.views.sort_column else base))
            used += col.width + 1
        if used < width:
            segs.append(Segment(" " * (width - used), base))
        return Strip(segs).crop(0, width)

    def _row(self, row: Any, width: int, is_cursor: bool) -> Strip:
        base = self.rich_style
        if getattr(row, "is_member", False):
            base = base + self.get_component_rich_style("rows-table--member")
        if is_cursor:
            base = base + self.get_component_rich_style("rows-table--cursor")
        now = self.views.rowset.now
        segs, used = [], 0
        for col in self.columns():
            text = printable(col.text(row, now))  # names and reasons come from data (a replay file)
            if len(text) > col.width:
                text = text[: col.width - 1] + "…"
            text = text.rjust(col.width) if col.right else text.ljust(col.width)
            style = base
            if col.style is not None:
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
        self.virtual_size = Size(self.scrollable_content_region.width, len(self.views) + 1)
        self._fit = ()
        self._scroll_to_cursor()
