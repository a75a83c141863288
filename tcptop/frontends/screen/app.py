"""The tcptop screen: a Textual app fed by a worker thread that polls a SnapshotSource.

Data goes one way: source → worker (FrameBuilder, and the side tables' rows) → FrameReady
message → FlowStore and Views → widgets. The worker is the only caller of the source (live engine or replay); the UI
thread never touches BPF. The worker also does a refresh's heavy part (rates, history,
sorting and filtering every flow) so that the UI thread only swaps a ready frame in: a
key pressed during a refresh of 100,000 flows is not queued behind it. Messages replace
each other when the UI falls behind, so a slow paint skips to the newest frame instead
of queueing stale ones.
"""

from __future__ import annotations

import argparse
import asyncio
import signal

from textual.app import App, ComposeResult
from textual.containers import Horizontal
from textual.message import Message
from textual.reactive import reactive
from textual.widgets import Footer
from textual.worker import get_current_worker

from tcptop.frontends import gc_tuning
from tcptop.frontends.screen import terminal

from tcptop.frontends.screen.columns import COLUMNS, resolve_sort
from tcptop.frontends.screen.keys import APP_BINDINGS
from tcptop.model import Snapshot
from tcptop.frontends.screen.poller import Command, PlaybackStatus, Poller
from tcptop.source import SnapshotSource
from tcptop.frontends.screen.store import FlowStore, Frame
from tcptop.frontends.screen.units import fmt_endpoint, printable
from tcptop.frontends.screen.view_actions import ViewActions
from tcptop.frontends.screen.views import ViewFrame, Views
from tcptop.widgets.detail import DetailPane
from tcptop.widgets.filter_bar import FilterBar
from tcptop.widgets.flow_table import FlowTable
from tcptop.widgets.header import HeaderBar
from tcptop.widgets.help import HelpScreen
from tcptop.widgets.rows_table import RowsTable
from tcptop.widgets.sort_picker import SortPicker
from tcptop.widgets.waterfall import WaterfallPane


class FrameReady(Message):
    """A snapshot made into a frame by the worker; a newer one replaces it if the UI has not got to it yet."""

    def __init__(self, frame: Frame, replay: PlaybackStatus | None, views: ViewFrame | None = None) -> None:
        super().__init__()
        self.frame = frame
        self.replay = replay
        self.views = views

    @property
    def snapshot(self) -> Snapshot:
        return self.frame.snapshot

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, FrameReady)


class SourceFailed(Message):
    def __init__(self, error: str) -> None:
        super().__init__()
        self.error = error


class TcptopApp(ViewActions, App[int]):
    """Top-like view of every TCP connection. `source` is polled on a worker thread."""

    CSS_PATH = "app.tcss"
    TITLE = "tcptop"
    BINDINGS = APP_BINDINGS
    ENABLE_COMMAND_PALETTE = False

    paused: reactive[bool] = reactive(False, init=False)

    def __init__(self, source: SnapshotSource, *, filter_expr: str | None = None, sort: str | None = None,
                 reverse: bool = False, start_paused: bool = False) -> None:
        super().__init__()
        self.source = source
        self.store = FlowStore(sort=sort, filter_expr=filter_expr)  # raises FilterError / UnknownSortField
        if reverse:
            self.store.reverse()
        self.views = Views()
        self.poller = Poller(source, self._build,
                             lambda built, status: self.post_message(FrameReady(built[0], status, built[1])),
                             lambda error: self.post_message(SourceFailed(error)))
        self.is_replay = self.poller.playback is not None
        self.poller.playback_paused = start_paused
        self._pending: tuple[Frame, ViewFrame] | None = None  # newest frame that arrived while paused
        self.replay_status: PlaybackStatus | None = None
        self.source_error = ""
        self.snapshots_applied = 0
        self.set_reactive(TcptopApp.paused, start_paused)

    # -- layout -----------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield HeaderBar(id="header")
        yield FilterBar(id="filter-bar")
        yield FlowTable(self.store, id="flows")
        yield RowsTable(self.views, id="views")
        with Horizontal(id="lower"):
            yield DetailPane(id="detail")
            yield WaterfallPane(id="waterfall")
        yield Footer()

    @property
    def table(self) -> FlowTable:
        return self.query_one(FlowTable)

    def on_mount(self) -> None:
        if self.stop_requested:  # a signal came before the loop ran
            self._quit()
            return
        self.table.focus()
        self.table.empty_text = "waiting for the first snapshot…"
        self._render_panes()
        self.run_worker(self._poll_loop, thread=True, exclusive=True, name="poller", group="poller")

    def on_unmount(self) -> None:
        self.poller.send(Command.STOP)

    def _poll_loop(self) -> None:
        worker = get_current_worker()
        self.poller.run(lambda: worker.is_cancelled)

    # -- data in ---------------------------------------------------------------------

    def on_frame_ready(self, msg: FrameReady) -> None:
        if not self.query(FlowTable):
            return  # a frame that arrives while the app shuts down has no screen to go to
        self.replay_status = msg.replay
        self.source_error = ""
        if self.paused and not self.is_replay:
            self.poller.retire(self._pending)
            self._pending = (msg.frame, msg.views)
            self._render_header()
            return
        self.apply_frame(msg.frame, msg.views)

    def on_source_failed(self, msg: SourceFailed) -> None:
        self.source_error = printable(msg.error)  # an error may quote what a file holds
        self._render_header()
        self.notify(self.source_error, title="source error", severity="error", timeout=5, markup=False)

    def _build(self, snap: Snapshot) -> tuple[Frame, ViewFrame]:
        """Everything a refresh needs, made on the worker: the flow frame and the side tables."""
        frame = self._build_frame(snap)
        return frame, self.build_views(frame)

    def _build_frame(self, snap: Snapshot) -> Frame:
        """The worker's half of a refresh: a frame under the view the screen has now."""
        store = self.store
        frame = store.builder.build(snap, store.view, frozenset(store.watched))
        gc_tuning.fit(len(frame.rows))
        if store.view is not frame.view:  # a key changed the view during the build
            frame = store.builder.rearrange(frame, store.view)
        return frame

    def apply_snapshot(self, snap: Snapshot) -> None:
        """Build a frame here and show it (what the worker does in two halves; for callers without one)."""
        self.apply_frame(self._build_frame(snap))

    def apply_frame(self, frame: Frame, views: ViewFrame | None = None) -> None:
        """Store first, then the widgets, all on the UI thread."""
        table = self.table
        self.poller.retire(self.store.install(frame))
        self.install_views(views)
        self.snapshots_applied += 1
        table.empty_text = "no flows match the filter" if self.store.total else "no TCP connections"
        table.data_changed()
        # The flows on screen (and the selection) are the ones whose history the next frame keeps.
        top = int(table.scroll_y)
        watched = {r.id for r in self.store.window(top, top + table.page_rows)}
        if table.cursor_id is not None:
            watched.add(table.cursor_id)
        self.store.watched = watched
        self._render_panes()

    # -- painting ----------------------------------------------------------------------

    def _render_header(self) -> None:
        waiting = f"source error: {self.source_error}" if self.source_error else ""
        self.query_one(HeaderBar).render_header(self.store, self.paused, self.replay_status, waiting,
                                                self.view_summary())

    def _render_panes(self) -> None:
        self._render_header()
        if self.side_table:
            self.render_side_panes()
            return
        row = self.store.get(self.table.cursor_id) if self.table.cursor_id is not None else None
        if row is not None and not self.store.is_visible(row.id):
            row = None
        self.query_one(DetailPane).show(row, self.store.now)
        snap = self.store.snapshot
        if row is not None:
            f = row.flow
            label = f"{f.comm} {fmt_endpoint(f.raddr, f.rport, 30)}"
            flow_lat = f.latency
        else:
            label, flow_lat = "all flows", None
        self.query_one(WaterfallPane).show(flow_lat, snap.latency if snap else None, label)

    def on_flow_table_selected(self, msg: FlowTable.Selected) -> None:
        if msg.flow_id is not None:
            row = self.store.get(msg.flow_id)
            if row is not None and not row.history:
                self.store.watched.add(msg.flow_id)
        self._render_panes()

    def on_flow_table_header_clicked(self, msg: FlowTable.HeaderClicked) -> None:
        if self.side_sort(column=msg.column_id):
            return
        if msg.column_id == self.store.sort_column:
            self.action_reverse()
        else:
            self._sort(msg.column_id)

    # -- actions ----------------------------------------------------------------------

    def _view_changed(self) -> None:
        self.table.data_changed()
        self._render_panes()

    def _sort(self, column: str, descending: bool | None = None) -> None:
        self.store.set_sort(column, descending)
        self._view_changed()

    def action_pick_sort(self) -> None:
        if self.side_table:
            self.push_screen(SortPicker(self.views.sort_column, self.views.columns()),
                             lambda column: column and self.side_sort(column=column))
            return

        def chosen(column: str | None) -> None:
            if column:
                self._sort(column)

        self.push_screen(SortPicker(self.store.sort_column), chosen)

    def action_sort_step(self, delta: int) -> None:
        if self.side_sort(step=delta):
            return
        ids = [c.id for c in COLUMNS]
        cur = ids.index(self.store.sort_column) if self.store.sort_column in ids else 0
        self._sort(ids[(cur + delta) % len(ids)])

    def action_reverse(self) -> None:
        if self.side_sort(reverse=True):
            return
        self.store.reverse()
        self._view_changed()

    def action_sort_retrans(self) -> None:
        if self.side_sort(trouble=True):
            return
        self._sort("retrans", descending=True)

    def action_sort_drops(self) -> None:
        if self.side_table:
            self.views.set_view("flows")
            if self.views.state.group:
                self.side_sort(column="drops")
                return
            self._show_table()
        self._sort("drops", descending=True)

    def action_filter(self) -> None:
        self.query_one(FilterBar).open(self.store.filter_expr)

    def on_filter_bar_changed(self, msg: FilterBar.Changed) -> None:
        if msg.expr != self.store.filter_expr:
            self.store.set_filter(msg.expr)
            self.views_refilter()
            self._view_changed()

    def on_filter_bar_done(self, msg: FilterBar.Done) -> None:
        self.query_one(FilterBar).close()
        (self.rows_table if self.side_table else self.table).focus()

    def action_clear_filter(self) -> None:
        bar = self.query_one(FilterBar)
        bar.close()
        if self.store.filter_expr:
            self.store.set_filter("")
            self.views_refilter()
            self._view_changed()
        (self.rows_table if self.side_table else self.table).focus()

    def action_toggle_pause(self) -> None:
        self.paused = not self.paused

    def watch_paused(self, paused: bool) -> None:
        self.poller.playback_paused = paused
        self.poller.send(Command.WAKE)
        if not paused and self._pending is not None:
            (frame, views), self._pending = self._pending, None
            self.apply_frame(frame, views)  # jump to now
        self._render_header()

    def action_step(self, delta: int) -> None:
        if not self.is_replay:
            self.notify("step works in --replay", timeout=2)
            return
        if not self.paused:
            self.paused = True
        self.poller.send(Command.STEP_FORWARD if delta > 0 else Command.STEP_BACK)

    def action_speed(self, delta: int) -> None:
        if self.is_replay:
            self.poller.send(Command.FASTER if delta > 0 else Command.SLOWER)

    def action_next_pane(self) -> None:
        first = self.rows_table if self.side_table else self.table
        order = [first, self.query_one(DetailPane), self.query_one(WaterfallPane)]
        focused = self.focused
        i = order.index(focused) if focused in order else -1
        order[(i + 1) % len(order)].focus()

    def action_help(self) -> None:
        self.push_screen(HelpScreen())

    async def action_quit(self) -> None:
        self._quit()

    def _quit(self) -> None:
        self.poller.send(Command.STOP)
        self.exit(0)

    stop_requested = False

    def request_stop(self) -> None:
        """Quit as `q` does; safe to call from a signal handler (the loop runs the quit)."""
        self.stop_requested = True
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # not running yet: on_mount sees the request; or already done
        loop.call_soon_threadsafe(self._quit)


def run(args: argparse.Namespace, source: SnapshotSource) -> int:
    """The screen over `source` (options already checked by the CLI); returns the exit status."""
    app = TcptopApp(source, filter_expr=getattr(args, "filter", None), sort=getattr(args, "sort", None),
                    reverse=bool(getattr(args, "reverse", False)))
    terminal.take_keyboard()
    gc_tuning.tune()

    def on_signal(signum: int, frame: object) -> None:
        # top and htop give the terminal back on TERM and HUP (and on INT from kill: Ctrl-C
        # is a key here): quit as `q` does, so the terminal is restored and the caller
        # detaches everything. A HUP from a closed window leaves nothing to restore, and
        # writes to it would fail.
        if signum == signal.SIGHUP and terminal.hung_up():
            terminal.silence()
        app.request_stop()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)}
    try:
        app.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return app.return_code or 0


__all__ = ["TcptopApp", "run", "FrameReady", "resolve_sort"]
