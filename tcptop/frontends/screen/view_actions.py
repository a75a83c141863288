"""The app's side of the tables beside the flow list (listeners `l`, failures `f`, groups `g`):
switching to them, sorting them, opening groups, and what the other panes say meanwhile.

Mixed into TcptopApp so that app.py keeps to wiring; everything here runs on the UI thread.
"""

from __future__ import annotations

from typing import Any

from tcptop.filter import compile_filter
from tcptop.frontends.screen.failure_rows import FailureRow
from tcptop.frontends.screen.groups import MODE_NAMES, GroupRow, MemberRow
from tcptop.frontends.screen.listener_rows import ListenerRow
from tcptop.frontends.screen.store import Frame
from tcptop.frontends.screen.views import TABLES, ViewFrame, Views
from tcptop.frontends.screen.units import fmt_endpoint
from tcptop.widgets.rows_table import RowsTable
from tcptop.widgets.view_detail import render_failure, render_group, render_listener

_MATCH_ALL = compile_filter(None)
EMPTY_TEXT = {
    "listeners": "no listening sockets match the filter",
    "failures": "no failed connects since tcptop started (or none match the filter)",
    "groups": "no flows match the filter",
}
# What R means in each table: its main kind of trouble, most first.
TROUBLE_SORT = {"listeners": "drops_ps", "failures": "per_s", "groups": "retrans"}


class ViewActions:
    """Actions and message handlers for the side tables; `self` is the TcptopApp."""

    views: Views

    @property
    def rows_table(self) -> RowsTable:
        return self.query_one(RowsTable)  # type: ignore[attr-defined]

    @property
    def side_table(self) -> bool:
        """A table other than the flow list is on screen."""
        return self.views.table != "flows"

    def _filter(self) -> tuple[Any, bool]:
        pred = self.store.view.pred  # type: ignore[attr-defined]
        return pred, pred is _MATCH_ALL

    # -- frames --------------------------------------------------------------------

    def build_views(self, frame: Frame) -> ViewFrame:
        """The worker's half: the side tables of a new frame, under the choice the screen has now."""
        pred, match_all = self._filter()
        return self.views.builder.build(frame, self.views.state, pred, match_all)

    def install_views(self, vf: ViewFrame | None) -> None:
        frame = self.store.frame  # type: ignore[attr-defined]
        if frame is None:
            return
        pred, match_all = self._filter()
        self.views.flows_descending = self.store.descending  # type: ignore[attr-defined]
        if vf is None or vf.flows is not frame:
            vf = self.views.builder.build(frame, self.views.state, pred, match_all)
        self.views.install(vf, pred, match_all)
        if self.side_table:
            self.rows_table.data_changed()

    def views_refilter(self) -> None:
        """The filter changed: the side tables are made again from the frame on screen."""
        pred, match_all = self._filter()
        self.views.rebuild(self.store.frame, pred, match_all)  # type: ignore[attr-defined]
        if self.side_table:
            self.rows_table.data_changed()

    # -- switching ----------------------------------------------------------------

    def _show_table(self) -> None:
        side = self.side_table
        rows = self.rows_table
        self.table.display = not side  # type: ignore[attr-defined]
        rows.display = side
        rows.empty_text = EMPTY_TEXT.get(self.views.table, "")
        rows.reset()
        self.views_refilter()
        (rows if side else self.table).focus()  # type: ignore[attr-defined]
        self._view_changed()  # type: ignore[attr-defined]

    def action_show_view(self, name: str) -> None:
        self.views.set_view("flows" if self.views.state.view == name else name)
        self._show_table()

    def action_group(self) -> None:
        mode = self.views.cycle_group()
        self._show_table()
        self.notify(f"group by {MODE_NAMES[mode]}", timeout=1.5)  # type: ignore[attr-defined]

    def view_summary(self) -> str:
        """The header's words for the side table on screen ("" for the flow list)."""
        table = self.views.table
        if table == "flows":
            return ""
        n = len(self.views.rowset)
        col = self.views.state.column(table)
        arrow = "▼" if self.views.descending else "▲"
        what = {"listeners": f"{n:,} listeners", "failures": f"{n:,} failing destinations",
                "groups": f"{n:,} groups by {MODE_NAMES[self.views.state.group]}"}[table]
        return f"{what}   sort {col.title}{arrow}"

    # -- sorting the side tables (the app's sort actions come here first) ------------

    def side_sort(self, column: str | None = None, step: int = 0, reverse: bool = False,
                  trouble: bool = False) -> bool:
        """Sort the side table on screen; False when the flow list is on screen."""
        if not self.side_table:
            return False
        table = self.views.table
        if reverse:
            self.views.reverse()
        elif trouble:
            self.views.set_sort(TROUBLE_SORT[table], descending=True)
        elif step:
            ids = [c.id for c in TABLES[table][0]]
            cur = ids.index(self.views.sort_column) if self.views.sort_column in ids else 0
            self.views.set_sort(ids[(cur + step) % len(ids)])
        elif column is not None:
            if column == self.views.sort_column:
                self.views.reverse()
            else:
                self.views.set_sort(column)
        self.rows_table.data_changed()
        self._render_panes()  # type: ignore[attr-defined]
        return True

    def on_rows_table_header_clicked(self, msg: RowsTable.HeaderClicked) -> None:
        self.side_sort(column=msg.column_id)

    def on_rows_table_selected(self, msg: RowsTable.Selected) -> None:
        self._render_panes()  # type: ignore[attr-defined]

    def on_rows_table_toggle(self, msg: RowsTable.Toggle) -> None:
        if self.views.table != "groups" or msg.row_id is None:
            return
        table = self.rows_table
        row = table.selected()
        if isinstance(row, MemberRow):
            if msg.open is not False:
                return
            i = self.views.index_of(row.id) or 0
            while i > 0 and isinstance(self.views.row_at(i), MemberRow):
                i -= 1
            row = self.views.row_at(i)
            table.select_index(i)
        self.views.toggle(row.id, msg.open)
        table.data_changed()

    # -- the other panes -----------------------------------------------------------

    def render_side_panes(self) -> None:
        """Detail and waterfall for the selected side row (a group's flow shows as a flow)."""
        from tcptop.widgets.detail import DetailPane
        from tcptop.widgets.waterfall import WaterfallPane

        row = self.rows_table.selected()
        detail = self.query_one(DetailPane)  # type: ignore[attr-defined]
        snap = self.store.snapshot  # type: ignore[attr-defined]
        host = snap.latency if snap else None
        waterfall = self.query_one(WaterfallPane)  # type: ignore[attr-defined]
        if isinstance(row, MemberRow):
            detail.show(row.row, self.store.now)  # type: ignore[attr-defined]
            f = row.row.flow
            waterfall.show(f.latency, host, f"{f.comm} {fmt_endpoint(f.raddr, f.rport, 30)}")
            return
        if isinstance(row, ListenerRow):
            detail.show_other(f"Listener {row.id}", render_listener(row))
        elif isinstance(row, FailureRow):
            detail.show_other("Failed connects", render_failure(row))
        elif isinstance(row, GroupRow):
            detail.show_other(f"Group ({MODE_NAMES[row.id[0]]})", render_group(row))
        else:
            detail.show_other("Detail", "Nothing selected: the table is empty or filtered out.")
        waterfall.show(None, host, "all flows")
